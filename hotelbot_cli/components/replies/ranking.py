"""The sentence ranker: which sentence of the retrieved passages answers the guest's question.

The knowledge base's chunks are cut into sentences (:func:`sentences_of`); every sentence is embedded once,
at training time, with the knowledge base's own embedding model. For a question, the candidates are the
sentences of its top retrieved chunks, each described by a few features (:data:`FEATURES`): the embedding
cosine of question and sentence, its chunk's retrieval score and rank, lexical overlap with the sentence
and its heading (IDF-weighted, over stems), whether the sentence holds what the question asks for (a time
for "¿a qué hora...?", a price for "¿cuánto...?", a number, a contact), its position, its length, and how
often the predicted intent's questions are answered by the sentence's document (a prior counted on the
training pairs).

:class:`SentenceRanker` is a linear model over those features trained with a listwise loss (softmax over
one question's candidates, cross-entropy on the sentence that answers it), full-batch gradient descent
with L2, in numpy: seconds to train, microseconds to score, JSON to store. The sentence that answers a
training question is the one of its source document's candidates that shares the most with the
reference reply (facts first, then words): :func:`answer_label`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .facts import WORD, extract_facts, fact_keys, fold

if TYPE_CHECKING:
    from ..knowledge.documents import Chunk

# What the doc prior reads: one intent, or the classifier's ranking [(intent, confidence), ...] (None: no intent)
Intents = str | Sequence[tuple[str, float]] | None

FEATURES = (
    "cosine",
    "chunk_score",
    "chunk_rank",
    "overlap",
    "idf_overlap",
    "heading_overlap",
    "time_answer",
    "price_answer",
    "number_answer",
    "contact_answer",
    "first_in_chunk",
    "log_length",
    "doc_prior",
    "has_fact",
    "cosine_gap",
    "chunk_best_cosine_gap",
    "cosine_rank_in_chunk",
    "chunk_bm25",
    "chunk_idf_overlap",
    "lexical_rank",
    "lexical_score",
)
STOPWORDS = frozenset(
    fold(w)
    for w in """
a al algo algun alguna alguno ante antes aqui asi como con cual cuales cuando de del desde donde el ella ellos
en entre era es esa ese eso esta este esto estan estoy fue ha hay la las le les lo los mas me mi mis muy nada
ni no nos o os otra otro para pero poco por porque puede pueden puedo que quiero se sea ser si sin sobre son
su sus tambien te tengo tiene tienen todo todos tu un una uno unos unas usted ustedes vez y ya hola buenas
buenos dias tardes noches gracias favor porfa quisiera queria necesito hotel
""".split()
)
ASKS_TIME = re.compile(
    r"\b(hora|horas|horario|cuando|abre|abren|cierra|cierran|hasta que|a partir de|temprano|tarde)\b"
)
ASKS_PRICE = re.compile(
    r"\b(cuanto|cuesta|cuestan|precio|precios|cobran|cobra|tarifa|pagar|pago|gratis|gratuito|suplemento|vale)\b"
)
ASKS_NUMBER = re.compile(
    r"\b(cuantos|cuantas|cuanto|numero|planta|piso|edad|anos|minutos|kilometros|km|metros|dias|noches)\b"
)
ASKS_CONTACT = re.compile(
    r"\b(llamar|llamo|contactar|contacto|telefono|correo|email|mail|escribir|escribo|hablar|reservar|reserva|cancelar|pedir|solicitar|avisar)\b"
)
MONEY = re.compile(r"\d\s*(€|euros?\b|eur\b)|\bgratu|\bgratis\b|\bsin coste\b|%", re.IGNORECASE)
CONTACT = re.compile(r"@|\bmarque|\bmarcando|\bextensi|\brecepci|\bllam", re.IGNORECASE)
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[¿¡«\"(]?[A-ZÁÉÍÓÚÑÜ0-9])")
ABBREVIATION = re.compile(r"(?:^|\s)(?:Sr|Sra|Srta|Dr|Dra|D|Dña|Avda|Av|C|núm|Núm|n|pág|aprox|etc|p\. ej)\.$")
LIST_ITEM = re.compile(r"^(?:[-*•]|\d+[.)])\s")
BULLET = re.compile(r"\s+(?=(?:[-*•]|\d+\.)\s)")


@dataclass(frozen=True)
class Sentence:
    id: str  # "<chunk id>#<index>"
    chunk_id: str
    doc: str
    heading: str
    index: int  # position in its chunk
    text: str

    def passage(self) -> str:
        """What is embedded: the heading, then the sentence (the heading says what "it" is)."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "chunk_id": self.chunk_id,
            "doc": self.doc,
            "heading": self.heading,
            "index": self.index,
            "text": self.text,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sentence:
        return cls(
            str(data["id"]),
            str(data["chunk_id"]),
            str(data["doc"]),
            str(data["heading"]),
            int(data["index"]),
            str(data["text"]),
        )


def split_sentences(text: str) -> list[str]:
    """Sentences of a chunk's text: split after . ! ? before a capital/digit/opening mark (not after an
    abbreviation such as "Sr." or "Avda."), and before list items."""
    out: list[str] = []
    units: list[str] = []  # paragraphs and list items, their hard-wrapped lines joined
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            units.append("")
        elif units and units[-1] and not LIST_ITEM.match(stripped):
            units[-1] += " " + stripped
        else:
            units.append(stripped)
    for unit in units:
        for part in BULLET.split(unit):
            pieces: list[str] = []
            for piece in SENTENCE_END.split(part.strip()):
                if pieces and ABBREVIATION.search(pieces[-1]):
                    pieces[-1] += " " + piece
                else:
                    pieces.append(piece)
            for sentence in pieces:
                sentence = sentence.strip().lstrip("-*• ").strip()
                if len(sentence) >= 3 and any(c.isalnum() for c in sentence):
                    out.append(sentence)
    return out


def sentences_of(chunks: Sequence[Chunk]) -> list[Sentence]:
    return [
        Sentence(f"{c.id}#{i}", c.id, c.doc, c.heading, i, s)
        for c in chunks
        for i, s in enumerate(split_sentences(c.text))
    ]


def stems(text: str) -> list[str]:
    """Content-word stems: folded, stopwords dropped, cut to 5 characters (habitación/habitaciones -> habit)."""
    return [w[:5] for w in (fold(x) for x in WORD.findall(text)) if len(w) > 2 and w not in STOPWORDS]


def answer_labels(reply: str, candidates: Sequence[Sentence], source_doc: str | None) -> list[int]:
    """Indexes of the candidates that answer the question whose reference reply is ``reply``, best first: among
    the source document's candidates, the one sharing the most facts with the reply (then the best stem F1),
    then, greedily, any other sharing a reply fact not yet covered (a reply often draws on two sentences).
    Empty when none shares a fact or a quarter of its stems (the reply does not draw on these sentences)."""
    reply_facts = fact_keys(reply)
    reply_stems = set(stems(reply))
    scored = []
    for i, s in enumerate(candidates):
        if source_doc and s.doc != source_doc:
            continue
        facts = reply_facts & fact_keys(s.text)
        mine = set(stems(s.text))
        common = len(mine & reply_stems)
        f1 = 2 * common / (len(mine) + len(reply_stems)) if common else 0.0
        if facts or f1 >= 0.25:
            scored.append(((len(facts), f1), i, facts))
    if not scored:
        return []
    scored.sort(key=lambda item: (-item[0][0], -item[0][1], item[1]))
    chosen, covered = [scored[0][1]], set(scored[0][2])
    for _, i, facts in scored[1:]:
        if facts - covered:
            chosen.append(i)
            covered |= facts
    return chosen


def answer_label(reply: str, candidates: Sequence[Sentence], source_doc: str | None) -> int | None:
    """The best of :func:`answer_labels`, None when there is none."""
    labels = answer_labels(reply, candidates, source_doc)
    return labels[0] if labels else None


class FeatureBuilder:
    """Turns (question, intent, candidates) into the feature matrix. Holds the statistics it needs: stem
    IDF over every sentence, the doc prior per intent (counts from the training pairs, add-one smoothed)."""

    def __init__(
        self,
        idf: Mapping[str, float],
        doc_prior: Mapping[str, Mapping[str, float]],
        docs: Sequence[str],
        mean_chunk_stems: float = 40.0,
    ) -> None:
        self.idf = dict(idf)
        self.doc_prior = {k: dict(v) for k, v in doc_prior.items()}
        self.docs = list(docs)
        self.mean_chunk_stems = float(mean_chunk_stems)
        self._default_idf = max(self.idf.values(), default=1.0)

    @classmethod
    def fit(cls, sentences: Sequence[Sentence], pairs: Sequence[tuple[str | None, str | None]]) -> FeatureBuilder:
        """``pairs``: (intent, source document) of the training questions."""
        df: Counter[str] = Counter()
        for s in sentences:
            df.update(set(stems(s.passage())))
        n = max(len(sentences), 1)
        idf = {w: math.log((n + 1) / (c + 1)) + 1.0 for w, c in df.items()}
        docs = sorted({s.doc for s in sentences})
        counts: dict[str, Counter[str]] = {}
        for intent, doc in pairs:
            if intent and doc:
                counts.setdefault(intent, Counter())[doc] += 1
        prior = {intent: {d: (c[d] + 1) / (sum(c.values()) + len(docs)) for d in docs} for intent, c in counts.items()}
        chunk_stems: Counter[str] = Counter()
        for s in sentences:
            chunk_stems[s.chunk_id] += len(stems(s.text))
        mean = sum(chunk_stems.values()) / max(len(chunk_stems), 1)
        return cls(idf, prior, docs, mean)

    def to_dict(self) -> dict[str, Any]:
        return {
            "idf": self.idf,
            "doc_prior": self.doc_prior,
            "docs": self.docs,
            "mean_chunk_stems": self.mean_chunk_stems,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureBuilder:
        return cls(data["idf"], data["doc_prior"], data["docs"], data.get("mean_chunk_stems", 40.0))

    def _chunk_features(
        self, q_stems: set[str], q_weight: float, candidates: Sequence[Sentence], cosines: np.ndarray
    ) -> dict[str, tuple[float, float, float]]:
        """Per chunk: (BM25 of the question over the chunk's heading + sentences, relative to the best candidate
        chunk's; IDF-weighted share of the question's stems the chunk holds; the chunk's best sentence cosine)."""
        bags: dict[str, Counter[str]] = {}
        best: dict[str, float] = {}
        for s, cos in zip(candidates, cosines):
            bag = bags.get(s.chunk_id)
            if bag is None:
                bag = bags[s.chunk_id] = Counter(stems(s.heading))
            bag.update(stems(s.text))
            best[s.chunk_id] = max(best.get(s.chunk_id, -1.0), float(cos))
        k1, b = 1.2, 0.75
        bm25 = {}
        for chunk, bag in bags.items():
            length = sum(bag.values()) or 1
            bm25[chunk] = sum(
                self.idf.get(w, self._default_idf)
                * bag[w]
                * (k1 + 1)
                / (bag[w] + k1 * (1 - b + b * length / self.mean_chunk_stems))
                for w in q_stems
                if bag[w]
            )
        top = max(bm25.values(), default=0.0) or 1.0
        return {
            c: (
                bm25[c] / top,
                sum(self.idf.get(w, self._default_idf) for w in q_stems if bags[c][w]) / q_weight,
                best[c],
            )
            for c in bags
        }

    def prior(self, intents: Intents, doc: str) -> float:
        """log P(doc | the message's intents) - log P(doc) (uniform): ``intents`` is one intent (certain) or the
        classifier's ranking [(intent, confidence), ...], whose unassigned mass goes to the uniform prior."""
        uniform = 1.0 / max(len(self.docs), 1)
        ranking = [(intents, 1.0)] if isinstance(intents, str) else list(intents or [])
        known = [(i, min(max(float(c), 0.0), 1.0)) for i, c in ranking if i in self.doc_prior]
        mass = min(sum(c for _, c in known), 1.0)
        p = sum(c * self.doc_prior[i].get(doc, uniform) for i, c in known) + (1.0 - mass) * uniform
        return math.log(max(p, 1e-12)) - math.log(uniform)

    def features(
        self,
        question: str,
        intent: Intents,
        candidates: Sequence[Sentence],
        cosines: np.ndarray,
        chunk_scores: Sequence[float],
        chunk_ranks: Sequence[int],
        lexical_ranks: Sequence[int] | None = None,
        lexical_scores: Sequence[float] | None = None,
    ) -> np.ndarray:
        """One row of :data:`FEATURES` per candidate. ``lexical_ranks``/``lexical_scores``: its chunk's rank and
        score (over the best chunk's) by BM25 over every chunk (absent: rank 0 and score 0, as if unranked)."""
        q = fold(question)
        q_stems = set(stems(question))
        q_weight = sum(self.idf.get(w, self._default_idf) for w in q_stems) or 1.0
        asks = (
            bool(ASKS_TIME.search(q)),
            bool(ASKS_PRICE.search(q)),
            bool(ASKS_NUMBER.search(q)),
            bool(ASKS_CONTACT.search(q)),
        )
        chunk = self._chunk_features(q_stems, q_weight, candidates, cosines)
        top_cos = float(np.max(cosines)) if len(candidates) else 0.0
        rank_in_chunk: dict[str, int] = {}
        order_in_chunk = {}
        for i in sorted(range(len(candidates)), key=lambda i: -float(cosines[i])):
            c = candidates[i].chunk_id
            rank_in_chunk[c] = rank_in_chunk.get(c, 0) + 1
            order_in_chunk[i] = rank_in_chunk[c]
        rows = []
        lexical_ranks = list(lexical_ranks) if lexical_ranks is not None else [0] * len(candidates)
        lexical_scores = list(lexical_scores) if lexical_scores is not None else [0.0] * len(candidates)
        for i, (s, cos, score, rank) in enumerate(zip(candidates, cosines, chunk_scores, chunk_ranks)):
            bm25, chunk_overlap, chunk_best = chunk[s.chunk_id]
            s_stems = set(stems(s.text))
            h_stems = set(stems(s.heading))
            facts = extract_facts(s.text)
            kinds = {f.kind for f in facts}
            common = q_stems & s_stems
            rows.append(
                [
                    float(cos),
                    float(score),
                    1.0 / rank,
                    len(common) / max(len(q_stems), 1),
                    sum(self.idf.get(w, self._default_idf) for w in common) / q_weight,
                    len(q_stems & h_stems) / max(len(q_stems), 1),
                    float(asks[0] and "time" in kinds),
                    float(asks[1] and bool(MONEY.search(s.text))),
                    float(asks[2] and bool(kinds & {"number", "time"})),
                    float(asks[3] and bool(CONTACT.search(s.text) or kinds & {"email", "phone"})),
                    float(s.index == 0),
                    math.log1p(len(s.text)) / 6.0,
                    self.prior(intent, s.doc),
                    float(bool(kinds - {"name"})),
                    float(cos) - top_cos,
                    chunk_best - top_cos,
                    1.0 / order_in_chunk[i],
                    bm25,
                    chunk_overlap,
                    1.0 / lexical_ranks[i] if lexical_ranks[i] else 0.0,
                    float(lexical_scores[i]),
                ]
            )
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))


@dataclass
class SentenceRanker:
    """A linear scorer over standardized :data:`FEATURES`."""

    weights: np.ndarray
    bias_mean: np.ndarray
    scale: np.ndarray
    names: tuple[str, ...] = FEATURES  # the features it reads, a subset of FEATURES (older rankers read fewer)

    def scores(self, x: np.ndarray) -> np.ndarray:
        if self.names != FEATURES:
            x = x[:, [FEATURES.index(n) for n in self.names]]
        return ((x - self.bias_mean) / self.scale) @ self.weights

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.names),
            "weights": self.weights.tolist(),
            "mean": self.bias_mean.tolist(),
            "scale": self.scale.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SentenceRanker:
        names = tuple(data.get("features") or [])
        unknown = [n for n in names if n not in FEATURES]
        if not names or unknown:
            raise ValueError(
                f"the ranker reads features this hotelbot does not compute ({', '.join(unknown) or 'none listed'}): "
                "retrain it (hotelbot train --model-type replies)"
            )
        if not len(data["weights"]) == len(data["mean"]) == len(data["scale"]) == len(names):
            raise ValueError(
                f"the ranker's weights, means and scales do not match its {len(names)} features: "
                "retrain it (hotelbot train --model-type replies)"
            )
        return cls(
            np.asarray(data["weights"], dtype=np.float64),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["scale"], dtype=np.float64),
            names,
        )

    @classmethod
    def fit(
        cls,
        groups: Sequence[tuple[np.ndarray, int | Sequence[int]]],
        *,
        l2: float = 1e-2,
        steps: int = 600,
        learning_rate: float = 0.5,
    ) -> SentenceRanker:
        """Listwise training on ``groups``: (candidate features, index or indexes of the answering candidates;
        several share the target probability equally)."""
        if not groups:
            raise ValueError("no training question has an answering sentence among its candidates")
        stacked = np.concatenate([x for x, _ in groups])
        mean, scale = stacked.mean(axis=0), stacked.std(axis=0)
        scale[scale < 1e-9] = 1.0
        width = max(len(x) for x, _ in groups)
        x = np.zeros((len(groups), width, len(FEATURES)))  # candidates padded to the longest list, masked out
        mask = np.zeros((len(groups), width), dtype=bool)
        target = np.zeros((len(groups), width))
        for i, (features, y) in enumerate(groups):
            x[i, : len(features)] = (features - mean) / scale
            mask[i, : len(features)] = True
            answers = [y] if isinstance(y, (int, np.integer)) else list(y)
            target[i, answers] = 1.0 / len(answers)
        w = np.zeros(len(FEATURES))
        for _ in range(steps):
            s = np.where(mask, x @ w, -np.inf)
            p = np.exp(s - s.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            w -= learning_rate * (l2 * w + np.einsum("gc,gcf->f", p - target, x) / len(groups))
        return cls(w, mean, scale)


__all__ = [
    "FEATURES",
    "FeatureBuilder",
    "Sentence",
    "SentenceRanker",
    "answer_label",
    "answer_labels",
    "sentences_of",
    "split_sentences",
    "stems",
]
