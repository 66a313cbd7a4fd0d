"""The reply pipeline: one grounded, checked reply per guest message.

For each message: the version's analyzer gives the intent and the entities; the policy (:mod:`.policy`)
picks the kind of reply; grounded answers come from the knowledge base (top chunks, their sentences ranked
by the trained :class:`~.ranking.SentenceRanker`); a version's response generator may phrase informational
answers when the replies were trained to use it. Every reply then passes the fact check
(:func:`~.facts.unsupported_facts`) against the passages it cites and the message: a generated reply that
fails is replaced by the extractive answer; anything else that fails is replaced by the policy's
``no_answer``. Each answer says which path it took (``kind``), what it cites (``sources``) and the check.

Files of the ``replies/`` directory of a version: ``ranker.json`` (weights, feature statistics, settings,
the knowledge base's fingerprint), ``sentences.jsonl`` + ``sentence_vectors.npy`` (the knowledge base's
sentences and their embeddings), ``question_layers.safetensors`` (the tuned question layers, :mod:`.question`;
absent in replies trained without them, whose cosines use the search vector), ``policy.json``, ``eval.jsonl``
(the reply evaluation set it was scored on), ``metrics.json``, ``training_history.json``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..._io import atomic_write_json
from ...data import OUT_OF_SCOPE, clean_messages
from ...errors import ModelError, RegistryError
from .facts import unsupported_facts
from .policy import Policy, ask_for, entity_slots, is_question, render
from .question import QUESTION_FILE, QuestionChange, QuestionLayers
from ..knowledge.lexical import BM25
from .ranking import CONTACT, FeatureBuilder, Intents, Sentence, SentenceRanker, sentences_of, stems

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import VersionInfo
    from ..knowledge.kb import KnowledgeBase, SearchHit

log = logging.getLogger("hotelbot.replies")

REPLIES_DIR = "replies"
RANKER_FILE = "ranker.json"
SENTENCES_FILE = "sentences.jsonl"
VECTORS_FILE = "sentence_vectors.npy"
POLICY_FILE = "policy.json"
EVAL_FILE = "eval.jsonl"
RANKER_FORMAT = "hotelbot-replies/1"
HOW_CHUNKS = 10  # chunks searched for an action's how-to sentence (computed once per intent)
HOW_TOP = 3  # of its best ranked sentences, the first with a contact is the how-to
DIRECT_CONTACT = re.compile(r"@|\bmarque\b|\bmarcando\b|\+?\d[\d ]{6,}\d", re.IGNORECASE)


# A message asking several questions may get one more sentence per question, up to this many characters.
QUESTIONS_MAX_CHARS = 480
QUESTION_WEIGHT = 0.75  # a question's own ranking against the whole message's, when picking its sentence
MAX_QUESTIONS = 4  # the first questions of a message that asks more (each costs a query embedding)
# pieces of a message: after a sentence's end (with what may follow it: "?!", ")", an emoji), or before "¿"
QUESTION_END = re.compile(r"(?<=[?.!])[^\w¿]*\s+|(?=¿)")


def question_parts(text: str) -> list[str]:
    """The questions of a message that asks several: its pieces holding a "?" with at least three words, or
    two when it opens with "¿" ("¿Tienen parking?", "¿Y si las nuevas fechas son más caras?"), each once, the
    first :data:`MAX_QUESTIONS`; [] when it asks one or none."""
    pieces = [p.strip() for p in QUESTION_END.split(text) if p and p.strip()]
    asked = [p for p in pieces if "?" in p and len(p.split()) >= (2 if p.startswith("¿") else 3)]
    asked = list(dict.fromkeys(asked))[:MAX_QUESTIONS]
    return asked if len(asked) >= 2 else []


@dataclass(frozen=True)
class ReplySettings:
    """How answers are built (stored with the ranker; ``replies_config``-free defaults that training may tune)."""

    candidate_chunks: int = 4  # chunks whose sentences compete: the dense retrieval's best ...
    lexical_chunks: int = 2  # ... plus BM25's best that dense retrieval missed (0 in replies trained before it)
    second_sentence_ratio: float = 0.5  # add a runner-up sentence when its probability is this close to the best's
    max_sentences: int = 2  # training chooses both on its pairs (:func:`training.tune_selection`)
    max_chars: int = 320  # a runner-up is added only while the reply stays this short (a chat message)
    use_generator: bool = False  # phrase informational answers with the version's generator (fact-checked)
    # A message the classifier sends to out_of_scope is answered from the documents anyway when its best chunk
    # scores at least this (training sets it: the 95th percentile of the out-of-scope training messages' best
    # scores, so that 1 in 20 of those would be answered); None: never.
    out_of_scope_grounding: float | None = None
    # A grounded answer whose best chunk scores below this is not given (the policy's no_answer instead): the
    # documents do not cover the message. Training sets it to the 5th percentile of its answerable messages'
    # best scores; None: always answer.
    min_grounding_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate_chunks": self.candidate_chunks,
            "lexical_chunks": self.lexical_chunks,
            "second_sentence_ratio": self.second_sentence_ratio,
            "max_sentences": self.max_sentences,
            "max_chars": self.max_chars,
            "use_generator": self.use_generator,
            "out_of_scope_grounding": self.out_of_scope_grounding,
            "min_grounding_score": self.min_grounding_score,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplySettings:
        threshold, floor = data.get("out_of_scope_grounding"), data.get("min_grounding_score")
        return cls(
            int(data.get("candidate_chunks", 4)),
            int(data.get("lexical_chunks", 0)),
            float(data.get("second_sentence_ratio", 0.5)),
            int(data.get("max_sentences", 2)),
            int(data.get("max_chars", 320)),
            bool(data.get("use_generator", False)),
            None if threshold is None else float(threshold),
            None if floor is None else float(floor),
        )


@dataclass
class ReplyModel:
    """What training stores: the ranker, its feature statistics, the sentences and their vectors, the policy."""

    ranker: SentenceRanker
    features: FeatureBuilder
    sentences: list[Sentence]
    vectors: np.ndarray
    policy: Policy
    settings: ReplySettings
    knowledge_fingerprint: str
    question: QuestionChange | None = None  # the tuned question layers' change, None: frozen cosines

    def save(self, target: Path, extra: Mapping[str, Any] | None = None) -> None:
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            target / RANKER_FILE,
            {
                "format": RANKER_FORMAT,
                "ranker": self.ranker.to_dict(),
                "features": self.features.to_dict(),
                "settings": self.settings.to_dict(),
                "knowledge_fingerprint": self.knowledge_fingerprint,
                "question_layers": self.question.record if self.question is not None else None,
                **(extra or {}),
            },
        )
        (target / SENTENCES_FILE).write_text(
            "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in self.sentences), "utf-8"
        )
        with open(target / VECTORS_FILE, "wb") as handle:
            np.save(handle, self.vectors.astype(np.float32), allow_pickle=False)
        atomic_write_json(target / POLICY_FILE, self.policy.raw)
        if self.question is not None:
            self.question.save(target / QUESTION_FILE)

    @classmethod
    def load(cls, directory: Path) -> ReplyModel:
        try:
            record = json.loads((directory / RANKER_FILE).read_text("utf-8"))
            if record.get("format") != RANKER_FORMAT:
                raise ModelError(
                    f"{directory / RANKER_FILE} is not a {RANKER_FORMAT} file",
                    hint="retrain it: hotelbot train --model-type replies",
                )
            sentences = [
                Sentence.from_dict(json.loads(line))
                for line in (directory / SENTENCES_FILE).read_text("utf-8").splitlines()
                if line.strip()
            ]
            vectors = np.load(directory / VECTORS_FILE, allow_pickle=False)
            ranker = SentenceRanker.from_dict(record["ranker"])
            features = FeatureBuilder.from_dict(record["features"])
            settings = ReplySettings.from_dict(record.get("settings") or {})
        except (OSError, KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as exc:
            raise ModelError(
                f"cannot read the reply model in {directory}: {exc}",
                hint="retrain it: hotelbot train --model-type replies",
            ) from None
        if len(vectors) != len(sentences):
            raise ModelError(f"{directory}: {len(sentences)} sentences but {len(vectors)} vectors")
        question = QuestionChange.load(directory / QUESTION_FILE) if (directory / QUESTION_FILE).is_file() else None
        return cls(
            ranker,
            features,
            sentences,
            vectors,
            Policy.load(directory / POLICY_FILE),
            settings,
            str(record.get("knowledge_fingerprint") or ""),
            question,
        )


def knowledge_fingerprint(index: Mapping[str, Any]) -> str:
    """What the sentences depend on, from a knowledge base's index.json (a loaded one's ``manifest``): the
    documents' chunks and the embedding model."""
    return f"{index.get('fingerprint')}:{(index.get('embedding_model') or {}).get('fingerprint')}"


def embed_sentences(kb: KnowledgeBase, sentences: Sequence[Sentence]) -> np.ndarray:
    return (
        kb.embedder.embed([s.passage() for s in sentences], kind="passage")
        if sentences
        else np.zeros((0, kb.model.dim), dtype=np.float32)
    )


def intent_ranking(row: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The classifier's [(intent, confidence), ...] of an analysis row ([] without a classifier)."""
    return [(str(r["intent"]), float(r["confidence"])) for r in row.get("top_k") or []]


@dataclass
class Candidates:
    """One message's competing sentences with their features."""

    hits: list[SearchHit]
    sentences: list[Sentence]
    features: np.ndarray
    chunk_of: dict[str, SearchHit]


class ReplyPipeline:
    """A version's reply path: analyzer (may be None), knowledge base, reply model, generator (optional)."""

    def __init__(
        self, version: str, knowledge: KnowledgeBase, model: ReplyModel, analyzer: Any = None, responder: Any = None
    ) -> None:
        self.version = version
        self.knowledge = knowledge
        self.model = model
        self.analyzer = analyzer
        self.responder = responder if model.settings.use_generator else None
        self._by_chunk: dict[str, list[int]] = {}
        for i, s in enumerate(model.sentences):
            self._by_chunk.setdefault(s.chunk_id, []).append(i)
        if model.knowledge_fingerprint != knowledge_fingerprint(knowledge.manifest):
            # The knowledge base was rebuilt after the ranker was trained: rank its current sentences.
            log.warning(
                "version %s: the knowledge base changed since the replies were trained; its sentences are "
                "embedded again (retrain: hotelbot train --model-type replies)",
                version,
            )
            sentences = sentences_of(knowledge.chunk_list)
            model.sentences, model.vectors = sentences, embed_sentences(knowledge, sentences)
            self._by_chunk = {}
            for i, s in enumerate(sentences):
                self._by_chunk.setdefault(s.chunk_id, []).append(i)
        self.question = self._question_layers(version)
        self._how_cache: dict[str, tuple[list[SearchHit], list[Sentence]]] = {}
        self._lexical = BM25([stems(c.passage()) for c in knowledge.chunk_list])
        self._chunk_index = {c.id: i for i, c in enumerate(knowledge.chunk_list)}

    def _question_layers(self, version: str) -> QuestionLayers | None:
        """The model's tuned question layers on the query encoder's base weights; None without them, or (with a
        warning) when the knowledge base's encoder is no longer the one they were tuned on."""
        if self.model.question is None:
            return None
        try:
            return self.model.question.apply(self.knowledge.upper_weights())
        except ModelError as exc:
            log.warning(
                "version %s: %s; its sentence cosines use the search vector (retrain: hotelbot train "
                "--model-type replies)",
                version,
                exc,
            )
            return None

    def message_vectors(
        self, texts: Sequence[str], cross_fitted: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(search vectors, sentence-cosine vectors) of ``texts``: the knowledge base's query vectors, and the
        tuned question layers' vectors (the same vectors without them). ``cross_fitted``: a text's cosine vector
        given instead (training: from layers that did not see that text)."""
        if self.question is None:
            vectors = self.knowledge.embed_queries(texts)
            return vectors, vectors
        vectors, states = self.knowledge.embed_queries_with_states(texts)
        given = cross_fitted or {}
        cosines = vectors.copy()
        run = [i for i, t in enumerate(texts) if t not in given]  # the layers run only where no vector is given
        if run:
            cosines[run] = self.question.encode([states[i] for i in run])
        for i, text in enumerate(texts):
            if text in given:
                cosines[i] = given[text]
        return vectors, cosines

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_version(
        cls,
        info: VersionInfo,
        settings: Settings | None = None,
        loaded: Mapping[str, Any] | None = None,
        *,
        analyzer: bool = True,
    ) -> ReplyPipeline:
        """``loaded``: the version's components already loaded (serve's knowledge base, analyzer parts).
        ``analyzer`` False: route without intents (every message grounded), e.g. deploy's smoke test of the
        reply model's own files, the analyzing components being smoke-tested on their own."""
        from ...pipeline.analyze import Analyzer  # the analyzer loads the component table
        from ..knowledge.kb import INDEX_FILE, KNOWLEDGE_DIR, KnowledgeBase  # kb imports the encoders

        directory = info.path / REPLIES_DIR
        if not (directory / RANKER_FILE).is_file():
            raise RegistryError(
                f"version {info.name} has no reply model", hint="train one: hotelbot train --model-type replies"
            )
        loaded = dict(loaded or {})
        models_dir = settings.paths.models_dir if settings is not None else None
        knowledge = loaded.get("knowledge")
        if knowledge is None:
            if not (info.path / KNOWLEDGE_DIR / INDEX_FILE).is_file():
                raise RegistryError(
                    f"version {info.name} has replies but no knowledge base",
                    hint="hotelbot train --model-type embeddings, then --model-type replies",
                )
            knowledge = KnowledgeBase.from_version(info, models_dir)
        model = ReplyModel.load(directory)
        analyzing = {n: loaded[n] for n in Analyzer.analyzing_components(info) if n in loaded}
        names = Analyzer.analyzing_components(info) if analyzer else []
        routing = None
        if names:
            routing = (
                Analyzer(info.name, analyzing)
                if set(analyzing) == set(names)
                else Analyzer.from_version(info, settings, preloaded=analyzing)
            )
        responder = loaded.get("generator")
        if responder is None and model.settings.use_generator and (info.path / "generator").is_dir():
            from ..generator.responder import Responder  # heavy: torch, only when the replies use it

            responder = Responder.from_version(info, models_dir, knowledge=knowledge)
        return cls(info.name, knowledge, model, routing, responder)

    # ------------------------------------------------------------------ ranking
    def candidates(
        self,
        message: str,
        intent: Intents,
        vector: np.ndarray,
        chunks: int | None = None,
        hits: Sequence[SearchHit] | None = None,
        cosine_vector: np.ndarray | None = None,
    ) -> Candidates:
        """The sentences of the top chunks for ``message`` (its query ``vector``), with their features: the
        dense retrieval's best ``chunks`` (default the settings' candidate_chunks), then the settings'
        lexical_chunks best by BM25 over stems that dense retrieval ranked lower (a guest's exact word, e.g.
        "consigna", that the embedding misses); or the chunks ``hits`` as given (one question of a message that
        asks several, ranked among the whole message's chunks). ``intent``: the intent or the classifier's
        ranking [(intent, confidence), ...], for the document prior. ``cosine_vector``: the message's vector for
        the sentence cosines (:meth:`message_vectors`), default ``vector``."""
        settings = self.model.settings
        chunk_list, k = self.knowledge.chunk_list, chunks or settings.candidate_chunks
        given = hits is not None
        every = (
            []
            if hits is not None
            else self.knowledge.search_vectors(vector[None, :], len(chunk_list) if settings.lexical_chunks else k)[0]
        )
        hits = list(hits) if hits is not None else every[:k]
        lexical = self._lexical.scores(stems(message))
        matched = lexical > 0  # a chunk sharing no stem with the message is unranked (0), not ranked by KB order
        order = np.argsort(-lexical, kind="stable")
        lexical_rank = np.zeros(len(chunk_list), dtype=np.int64)
        lexical_rank[order] = np.arange(1, len(chunk_list) + 1)
        lexical_rank[~matched] = 0
        lexical_score = lexical / lexical.max() if matched.any() else np.zeros(len(chunk_list))
        if settings.lexical_chunks and matched.any() and not given:
            taken = {h.chunk.id for h in hits}
            by_id = {h.chunk.id: h for h in every}
            extra = [chunk_list[i].id for i in order if matched[i] and chunk_list[i].id not in taken]
            hits = hits + [by_id[c] for c in extra[: settings.lexical_chunks]]
        rows = [i for h in hits for i in self._by_chunk.get(h.chunk.id, [])]
        sentences = [self.model.sentences[i] for i in rows]
        chunk_of = {h.chunk.id: h for h in hits}
        cosines = (
            self.model.vectors[rows] @ (vector if cosine_vector is None else cosine_vector) if rows else np.zeros(0)
        )
        features = self.model.features.features(
            message,
            intent,
            sentences,
            cosines,
            [chunk_of[s.chunk_id].score for s in sentences],
            [chunk_of[s.chunk_id].rank for s in sentences],
            [int(lexical_rank[self._chunk_index[s.chunk_id]]) for s in sentences],
            [float(lexical_score[self._chunk_index[s.chunk_id]]) for s in sentences],
        )
        return Candidates(hits, sentences, features, chunk_of)

    def rank(self, found: Candidates) -> list[tuple[Sentence, float]]:
        """Candidates, best first, with their softmax probability among the message's candidates."""
        if not found.sentences:
            return []
        scores = self.model.ranker.scores(found.features)
        p = np.exp(scores - scores.max())
        p /= p.sum()
        order = np.argsort(-p, kind="stable")
        return [(found.sentences[i], float(p[i])) for i in order]

    def select(self, ranked: Sequence[tuple[Sentence, float]], settings: ReplySettings | None = None) -> list[Sentence]:
        """The best sentence, plus the next ones (up to ``max_sentences``) whose probability is at least
        ``second_sentence_ratio`` of the best one's (guests often ask two things at once); grouped by chunk
        in the best sentence's order, each chunk's sentences in document order."""
        settings = settings or self.model.settings
        if not ranked:
            return []
        best, p_best = ranked[0]
        chosen, length = [best], len(best.text)
        for s, p in ranked[1 : settings.max_sentences]:
            if p >= settings.second_sentence_ratio * p_best and length + 1 + len(s.text) <= settings.max_chars:
                chosen.append(s)
                length += 1 + len(s.text)
        chunks = list(dict.fromkeys(s.chunk_id for s in chosen))
        return sorted(chosen, key=lambda s: (chunks.index(s.chunk_id), s.index))

    def _each_question(
        self,
        message: str,
        intent: Intents,
        found: Candidates,
        ranked: Sequence[tuple[Sentence, float]],
        chosen: list[Sentence],
    ) -> list[Sentence]:
        """For a message that asks several things (:func:`question_parts`), add each question's own best
        sentence when the reply does not hold it yet, while the reply stays within :data:`QUESTIONS_MAX_CHARS`
        ("¿Se puede sin pagar nada? ¿Y si las nuevas fechas son más caras?" gets the free-change sentence and
        the price-difference one). A question's best sentence is ranked among the whole message's candidates
        by a weighted geometric mean of the ranker's probability for the question (weight
        :data:`QUESTION_WEIGHT`) and for the whole message (the question alone lacks the message's context:
        "¿y si son más caras?"); when that sentence is in the reply already, the question is answered."""
        parts = question_parts(message)
        if not parts:
            return chosen
        whole = {s.id: p for s, p in ranked}
        picks: list[tuple[float, Sentence]] = []  # (the question's own probability, its sentence)
        for part, vector, cosine in zip(parts, *self.message_vectors(parts)):
            own = self.rank(self.candidates(part, intent, vector, hits=found.hits, cosine_vector=cosine))
            if own:
                weight = {s.id: p**QUESTION_WEIGHT * whole.get(s.id, 0.0) ** (1.0 - QUESTION_WEIGHT) for s, p in own}
                picks.append(max(((p, s) for s, p in own), key=lambda x: weight[x[1].id]))
        # what the whole message chose, then each question's sentence, the most confident first, within the length
        chosen, length = list(chosen), sum(len(s.text) + 1 for s in chosen) - 1
        for _, best in sorted(picks, key=lambda x: -x[0]):
            if best not in chosen and length + 1 + len(best.text) <= QUESTIONS_MAX_CHARS:
                chosen.append(best)
                length += 1 + len(best.text)
        chunks = list(dict.fromkeys(s.chunk_id for s in chosen))
        return sorted(chosen, key=lambda s: (chunks.index(s.chunk_id), s.index))

    # ------------------------------------------------------------------ answers
    def _sources(self, sentences: Sequence[Sentence], chunk_of: Mapping[str, SearchHit]) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for s in sentences:
            hit = chunk_of[s.chunk_id]
            entry = out.setdefault(
                s.chunk_id,
                {
                    "doc": s.doc,
                    "heading": s.heading,
                    "chunk_id": s.chunk_id,
                    "score": round(float(hit.score), 6),
                    "sentences": [],
                },
            )
            entry["sentences"].append(s.text)
        return list(out.values())

    def _how(self, intent: str, query: str) -> tuple[list[Sentence], dict[str, SearchHit]]:
        """The document sentence that says how to do ``intent`` (its policy's ``how`` query, over the top
        :data:`HOW_CHUNKS` chunks): of the :data:`HOW_TOP` best ranked, the first that gives a way to reach
        someone (an e-mail or phone, "marque"/"marcando"), else the first naming one (recepción, "llame"),
        else the best; once per intent. The query is the policy's own wording, not a guest's message: its
        cosines use the search vector, not the question layers (tuned on guests' messages, they sent
        book_room's "cómo hacer una reserva de habitación" to the cancellation sentence)."""
        if intent not in self._how_cache:
            vector = self.knowledge.embed_queries([query])[0]
            found = self.candidates(query, intent, vector, HOW_CHUNKS)
            ranked = [s for s, _ in self.rank(found)]
            direct = [s for s in ranked[:HOW_TOP] if DIRECT_CONTACT.search(s.text)]
            named = [s for s in ranked[:HOW_TOP] if CONTACT.search(s.text)]
            self._how_cache[intent] = (found.hits, (direct or named or ranked)[:1])
        hits, sentences = self._how_cache[intent]
        return sentences, {h.chunk.id: h for h in hits}

    def reply(self, messages: Sequence[str]) -> list[dict[str, Any]]:
        """One answer per message: {"message", "reply", "kind", "intent", "confidence", "entities", "sources",
        "check": {"passed", "unsupported"}} (+ "rejected" when a generated reply failed the check)."""
        cleaned = clean_messages(messages)
        rows = self.analyzer.analyze(list(messages)) if self.analyzer is not None else [{} for _ in messages]
        vectors, cosines = self.message_vectors(cleaned)
        answers = [
            self._answer(m, c, row, vectors[i], cosines[i])
            for i, (m, c, row) in enumerate(zip(messages, cleaned, rows))
        ]
        self._phrase_with_generator(answers, cleaned)
        return answers

    def _answer(
        self, message: str, cleaned: str, row: Mapping[str, Any], vector: np.ndarray, cosine: np.ndarray
    ) -> dict[str, Any]:
        intent = row.get("intent")
        entities = list(row.get("entities") or [])
        policy = self.model.policy
        rule = policy.of(intent)
        out_of_scope = bool(row.get("fallback")) or intent == OUT_OF_SCOPE
        kind = "fallback" if out_of_scope else rule.kind
        if kind == "action" and rule.questions == "grounded" and is_question(message):
            kind = "grounded"
        threshold = self.model.settings.out_of_scope_grounding
        if out_of_scope and threshold is not None and not rule.reply:
            best = self.knowledge.search_vectors(vector[None, :], 1)[0]
            if best and best[0].score >= threshold:  # about the hotel after all: answer from its documents
                kind = "grounded"
        slots = entity_slots(message, entities)
        sentences: list[Sentence] = []
        chunk_of: dict[str, SearchHit] = {}
        found = None
        if kind == "social":
            text = render(rule.reply, slots)
        elif kind == "fallback":
            text = render(rule.reply, slots) if rule.reply else policy.fallback
        elif kind == "action":
            sentences, chunk_of = self._how(str(intent), rule.how)
            parts = [render(rule.reply, slots), " ".join(s.text for s in sentences), ask_for(policy, rule.needs, slots)]
            text = " ".join(p for p in parts if p)
        else:
            found = self.candidates(cleaned, intent_ranking(row) or intent, vector, cosine_vector=cosine)
            floor = self.model.settings.min_grounding_score
            covered = bool(found.hits) and (floor is None or found.hits[0].score >= floor)
            ranked = self.rank(found) if covered else []
            sentences = self.select(ranked)
            if sentences:
                sentences = self._each_question(cleaned, intent_ranking(row) or intent, found, ranked, sentences)
            chunk_of = found.chunk_of
            text = " ".join(s.text for s in sentences)
            if not text:  # the documents do not cover it: say so rather than quote the nearest sentence
                kind, text = "no_answer", policy.no_answer
        answer = {
            "message": message,
            "reply": text,
            "kind": kind,
            "intent": intent,
            "confidence": row.get("confidence"),
            "entities": entities,
            "sources": self._sources(sentences, chunk_of),
        }
        # the generator reads the embedding search's passages, as it was trained (not the lexical extras)
        answer["_hits"] = found.hits[: self.model.settings.candidate_chunks] if found is not None else []
        self._check(answer, cleaned, [chunk_of[c].chunk.passage() for c in {s.chunk_id for s in sentences}])
        return answer

    def _check(self, answer: dict[str, Any], message: str, passages: Sequence[str]) -> None:
        bad = unsupported_facts(answer["reply"], [*passages, message])
        if bad:  # never sent: say so and answer with the safe reply instead
            answer["rejected"] = [
                {"reply": answer["reply"], "kind": answer["kind"], "unsupported": [f.to_dict() for f in bad]}
            ]
            answer.update(reply=self.model.policy.no_answer, kind="no_answer", sources=[])
        answer["check"] = {"passed": True, "unsupported": []}

    def _phrase_with_generator(self, answers: list[dict[str, Any]], cleaned: Sequence[str]) -> None:
        """With ``use_generator``: informational answers phrased by the generator, kept only when every fact
        of the generated reply is in the passages it was given (or the message)."""
        todo = [i for i, a in enumerate(answers) if a["kind"] == "grounded" and a["_hits"]]
        if self.responder is not None and todo:
            generated = self.responder.reply(
                [answers[i]["message"] for i in todo], hits=[answers[i]["_hits"] for i in todo]
            )
            for i, g in zip(todo, generated):
                a = answers[i]
                passages = [h.chunk.passage() for h in a["_hits"]]
                bad = unsupported_facts(g["reply"], [*passages, cleaned[i]])
                if not g["reply"].strip() or bad:
                    a.setdefault("rejected", []).append(
                        {"reply": g["reply"], "kind": "generated", "unsupported": [f.to_dict() for f in bad]}
                    )
                    continue
                a.update(
                    reply=g["reply"],
                    kind="generated",
                    sources=[
                        {
                            "doc": h.chunk.doc,
                            "heading": h.chunk.heading,
                            "chunk_id": h.chunk.id,
                            "score": round(float(h.score), 6),
                            "sentences": [],
                        }
                        for h in a["_hits"]
                    ],
                )
        for a in answers:
            a.pop("_hits", None)


__all__ = [
    "REPLIES_DIR",
    "ReplyModel",
    "ReplyPipeline",
    "ReplySettings",
    "embed_sentences",
    "intent_ranking",
    "knowledge_fingerprint",
]
