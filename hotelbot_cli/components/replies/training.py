"""Training and judging the reply pipeline.

:func:`train_replies` fits the sentence ranker on the prepared reply pairs (the same split the generator
uses: a pair's source document and reference reply say which retrieved sentence answers it, see
:func:`~.ranking.answer_label`), scores the whole pipeline, and publishes a new version carrying over the
source version's other components plus ``replies/``. The source version must hold a knowledge base; its
analyzer (intent classifier, entities) is what the pipeline routes with.

:func:`evaluate_pipeline` is what training records and `hotelbot validate` recomputes:

- on the reply evaluation set (``datasets/reply_eval_es.jsonl``: questions written from the documents, each
  with the facts a correct reply must contain): ``fact_accuracy`` (share of questions whose reply states
  every expected fact), ``fact_recall`` (share of expected facts stated), ``unsupported_fact_rate`` (share of
  replies stating a number, time, price, e-mail, phone, URL or name that neither the passages they cite nor
  the message contain; recomputed here from the cited chunks with the stricter check, which also counts
  capitalised words opening a sentence, not taken from the pipeline's own answer),
  ``doc_accuracy`` (share of grounded replies citing the expected document), ``rejected_rate``, latency;
- the same for the nearest-training-reply baseline (the reply of the most similar training message; its
  "sources" are the passages retrieved for the question), computed in the same run;
- on the reply pairs' validation split: ``relevance`` (cosine of reply and reference, embedded with the
  knowledge base's query encoder) and ROUGE-L for both;
- the ranker alone on the validation questions that have an answering sentence: top-1 accuracy and MRR,
  beside ranking by embedding cosine only and taking the first sentence of the top chunk.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..._io import sha256_file
from ...data import OUT_OF_SCOPE
from ...errors import DataError
from ...training.events import TrainingEvent, emitter
from ..base import ComponentResult, training_run
from ..compose import has_component, publish_component, recorded_files, source_version
from ..generator.data import ReplyPair, load_reply_data, read_prepared_replies, write_prepared_replies
from ..generator.metrics import corpus_rouge_l
from .evalset import DEFAULT_EVAL, EvalQuestion, evaluation_set, read_eval_file
from .facts import contains_fact, fact_keys, unsupported_facts
from .pipeline import (
    EVAL_FILE,
    REPLIES_DIR,
    ReplyModel,
    ReplyPipeline,
    ReplySettings,
    embed_sentences,
    intent_ranking,
    knowledge_fingerprint,
)
from .policy import DEFAULT_POLICY, Policy
from .ranking import FEATURES, FeatureBuilder, SentenceRanker, answer_labels, sentences_of
from .tuning import TuningConfig

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import ModelRegistry, VersionInfo
    from ...training.events import Listener

COMPONENT = "replies"
EXPERIMENT = "hotelbot-replies"
DATA_DIR = "data"  # the reply pairs the ranker was trained and scored on, inside replies/
MAX_SAMPLES = 12


def analyzer_fingerprint(info: VersionInfo) -> str:
    """What the replies' routing depends on besides the knowledge base: the checksums of the version's
    analyzing components' files (intent classifier, entities, sentiment), "" without any."""
    from ...pipeline.analyze import Analyzer  # loads the component table

    files = sorted(
        (rel, sha) for name in Analyzer.analyzing_components(info) for rel, sha in recorded_files(info, name).items()
    )
    return hashlib.sha256(json.dumps(files).encode()).hexdigest() if files else ""


def recorded_knowledge_fingerprint(info: VersionInfo) -> str:
    """:func:`~.pipeline.knowledge_fingerprint` of the version's knowledge base, from its index.json."""
    try:
        return knowledge_fingerprint(json.loads((info.path / "knowledge" / "index.json").read_text("utf-8")))
    except (OSError, ValueError):
        return ""


# ---------------------------------------------------------------------------- ranker training data


def message_intents(pipeline: ReplyPipeline, pairs: Sequence[ReplyPair]) -> list[Any]:
    """What the doc prior reads for each pair, as at inference: the classifier's ranking when the version has
    one (its confidence, not the pair's label, so training sees the classifier's mistakes), else the label."""
    if pipeline.analyzer is None or not pairs:
        return [p.intent for p in pairs]
    return [
        intent_ranking(row) or p.intent for p, row in zip(pairs, pipeline.analyzer.analyze([p.message for p in pairs]))
    ]


def _usable_vectors(
    pipeline: ReplyPipeline, pairs: Sequence[ReplyPair], cross_fitted: Mapping[str, np.ndarray] | None
) -> tuple[list[ReplyPair], Any, Any]:
    """The pairs with a source, their search vectors and sentence-cosine vectors (:meth:`ReplyPipeline.message_vectors`)."""
    usable = [p for p in pairs if p.source]
    if not usable:
        return [], [], []
    vectors, cosines = pipeline.message_vectors([p.message for p in usable], cross_fitted)
    return usable, vectors, cosines


def ranking_groups(
    pipeline: ReplyPipeline, pairs: Sequence[ReplyPair], cross_fitted: Mapping[str, np.ndarray] | None = None
) -> tuple[list[tuple[np.ndarray, list[int]]], list[Any], list[ReplyPair]]:
    """(features, answering indexes, best first) per pair whose answer is among its candidates, those Candidates,
    and those pairs. ``cross_fitted``: cosine vectors given per message (see :func:`fit_ranking`)."""
    usable, vectors, cosines = _usable_vectors(pipeline, pairs, cross_fitted)
    intents = message_intents(pipeline, usable)
    groups, found_all, answered = [], [], []
    for pair, vector, cosine, intent in zip(usable, vectors, cosines, intents):
        found = pipeline.candidates(pair.message, intent, vector, cosine_vector=cosine)
        labels = answer_labels(pair.reply, found.sentences, pair.source)
        if labels:
            groups.append((found.features, labels))
            found_all.append(found)
            answered.append(pair)
    return groups, found_all, answered


def ranker_metrics(
    ranker: SentenceRanker, groups: Sequence[tuple[np.ndarray, list[int]]], found: Sequence[Any]
) -> dict[str, Any]:
    """Top-1 accuracy and MRR of the best answering sentence, beside cosine-only and first-sentence ranking."""
    if not groups:
        return {"questions": 0}
    cos = FEATURES.index("cosine")
    top1 = mrr = top1_cos = top1_first = 0.0
    for (x, labels), f in zip(groups, found):
        y = labels[0]
        order = list(np.argsort(-ranker.scores(x), kind="stable"))
        top1 += order[0] == y
        mrr += 1.0 / (order.index(y) + 1)
        top1_cos += int(np.argmax(x[:, cos])) == y
        first = (
            next(i for i, s in enumerate(f.sentences) if s.chunk_id == f.hits[0].chunk.id)
            if any(s.chunk_id == f.hits[0].chunk.id for s in f.sentences)
            else -1
        )
        top1_first += first == y
    n = len(groups)
    return {
        "questions": n,
        "top1_accuracy": round(top1 / n, 6),
        "mrr": round(mrr / n, 6),
        "baseline_cosine_top1": round(top1_cos / n, 6),
        "baseline_first_sentence_top1": round(top1_first / n, 6),
    }


SELECTION_GRID = [(ratio, most) for most in (1, 2, 3) for ratio in (0.0, 0.15, 0.3, 0.5, 0.7)]
SHORT_REPLY_CHARS = 250  # "a short reply": the longest mean reply length the selection may choose


def _fact_recall(reply: str, reference: str) -> float | None:
    """Share of the reference reply's facts (numbers, times, e-mails...) the reply states; None when it has none."""
    wanted = fact_keys(reference)
    if not wanted:
        return None
    stated = fact_keys(reply)
    return len(wanted & stated) / len(wanted)


def tune_selection(
    pipeline: ReplyPipeline, pairs: Sequence[ReplyPair], cross_fitted: Mapping[str, np.ndarray] | None = None
) -> tuple[ReplySettings, dict[str, Any]]:
    """How many sentences an answer quotes: of the (second_sentence_ratio, max_sentences) of :data:`SELECTION_GRID`
    whose replies to ``pairs`` (those with a source) average at most :data:`SHORT_REPLY_CHARS` characters, the one
    stating most of the reference replies' facts (ties: the shorter)."""
    usable, vectors, cosines = _usable_vectors(pipeline, pairs, cross_fitted)
    settings = pipeline.model.settings
    if not usable:
        return settings, {"pairs": 0}
    ranked = [
        pipeline.rank(pipeline.candidates(p.message, i, v, cosine_vector=c))
        for p, v, c, i in zip(usable, vectors, cosines, message_intents(pipeline, usable))
    ]
    results = {}
    for ratio, most in SELECTION_GRID:
        trial = replace(settings, second_sentence_ratio=ratio, max_sentences=most)
        replies = [" ".join(s.text for s in pipeline.select(r, trial)) for r in ranked]
        recalls = [x for x in (_fact_recall(reply, p.reply) for reply, p in zip(replies, usable)) if x is not None]
        results[(ratio, most)] = (
            float(np.mean(recalls)) if recalls else 0.0,
            float(np.mean([len(r) for r in replies])),
        )
    allowed = [k for k in SELECTION_GRID if results[k][1] <= SHORT_REPLY_CHARS] or [(0.7, 1)]
    ratio, most = max(allowed, key=lambda k: (round(results[k][0], 6), -results[k][1]))
    return replace(settings, second_sentence_ratio=ratio, max_sentences=most), {
        "pairs": len(usable),
        "chosen": {"second_sentence_ratio": ratio, "max_sentences": most},
        "short_reply_chars": SHORT_REPLY_CHARS,
        "grid": {
            f"{r}/{m}": {"fact_recall": round(v[0], 6), "mean_chars": round(v[1], 1)} for (r, m), v in results.items()
        },
    }


def fit_ranking(
    pipeline: ReplyPipeline,
    train: Sequence[ReplyPair],
    validation: Sequence[ReplyPair],
    listener: Listener | None = None,
    cross_fitted: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], int]:
    """What training fits: the pipeline's sentence ranker on the ``train`` pairs' answering sentences, then the
    selection tuned on them (``validation`` stays unseen). Sets ``pipeline.model``'s ranker and settings; returns
    the ranker's validation metrics (:func:`ranker_metrics`, with the selection) and the training questions used.
    ``cross_fitted``: the training messages' sentence-cosine vectors from question layers tuned without them
    (:func:`~.tuning.tune_question_layers`), so that the ranker does not learn to trust an over-fitted cosine."""
    emit = emitter(listener)
    emit(TrainingEvent("status", message="labelling the answering sentence of each training question"))
    train_groups, _, _ = ranking_groups(pipeline, train, cross_fitted)
    val_groups, val_found, _ = ranking_groups(pipeline, validation)
    if not train_groups:
        raise DataError(
            "no training question's answer is among its retrieved sentences",
            hint='the reply pairs need a "source" document that the knowledge base holds',
        )
    emit(TrainingEvent("status", message=f"fitting the sentence ranker on {len(train_groups)} questions"))
    pipeline.model.ranker = SentenceRanker.fit(train_groups)
    ranking = ranker_metrics(pipeline.model.ranker, val_groups, val_found)
    pipeline.model.settings, selection = tune_selection(pipeline, train, cross_fitted)
    ranking["selection"] = selection
    return ranking, len(train_groups)


def min_grounding_score(kb: Any, train: Sequence[ReplyPair], quantile: float = 0.05) -> float | None:
    """The best-chunk score below which a grounded answer is not given: the ``quantile`` of the best scores of
    the training messages the documents answer (those with a source); None with fewer than 20 of them."""
    messages = [p.message for p in train if p.source]
    if len(messages) < 20:
        return None
    scores = [hits[0].score for hits in kb.search_many(messages, 1) if hits]
    return round(float(np.quantile(scores, quantile)), 6)


def out_of_scope_grounding(kb: Any, train: Sequence[ReplyPair], quantile: float = 0.95) -> float | None:
    """The best-chunk score above which a message classified out_of_scope is answered from the documents: the
    ``quantile`` of the out-of-scope training messages' (no source) best scores; None with fewer than 5 of them."""
    messages = [p.message for p in train if p.intent == OUT_OF_SCOPE and not p.source]
    if len(messages) < 5:
        return None
    scores = [hits[0].score for hits in kb.search_many(messages, 1) if hits]
    return round(float(np.quantile(scores, quantile)), 6)


# ---------------------------------------------------------------------------- the pipeline's evaluation


def _cited_passages(pipeline: ReplyPipeline, answer: dict[str, Any]) -> list[str]:
    chunks = pipeline.knowledge.chunks
    return [chunks[s["chunk_id"]].passage() for s in answer.get("sources", []) if s.get("chunk_id") in chunks]


def _fact_block(
    replies: Sequence[str],
    questions: Sequence[EvalQuestion],
    sources: Sequence[Sequence[str]],
    wording: Sequence[str] = (),
) -> dict[str, Any]:
    """Fact accuracy, recall and the unsupported-fact rate (strict oracle) of ``replies`` to ``questions``, each
    reply judged against its ``sources`` (+ the question, + ``wording``: the policy's own texts, which the
    policy check already keeps free of facts, so that their words do not count as names)."""
    complete = recall = total = unsupported = 0
    for reply, q, passages in zip(replies, questions, sources):
        stated = [contains_fact(reply, f) for f in q.facts]
        complete += all(stated)
        recall += sum(stated)
        total += len(stated)
        unsupported += bool(unsupported_facts(reply, [*passages, q.question, *wording], strict=True))
    n = max(len(questions), 1)
    return {
        "fact_accuracy": round(complete / n, 6),
        "fact_recall": round(recall / max(total, 1), 6),
        "unsupported_fact_rate": round(unsupported / n, 6),
    }


class NearestReply:
    """The baseline: the reply of the training message nearest to a message by the knowledge base's query
    encoder (the training messages are embedded once)."""

    def __init__(self, knowledge: Any, train: Sequence[ReplyPair]) -> None:
        self.knowledge = knowledge
        self.train = list(train)
        self.vectors = knowledge.embed_queries([p.message for p in self.train])

    def for_vectors(self, vectors: np.ndarray) -> list[str]:
        """The replies for messages already embedded with the same encoder."""
        return [self.train[int(i)].reply for i in np.argmax(vectors @ self.vectors.T, axis=1)]

    def __call__(self, messages: Sequence[str]) -> list[str]:
        return self.for_vectors(self.knowledge.embed_queries(list(messages)))


def evaluate_pipeline(
    pipeline: ReplyPipeline,
    questions: Sequence[EvalQuestion],
    train: Sequence[ReplyPair],
    validation: Sequence[ReplyPair],
) -> dict[str, Any]:
    """See the module docstring. ``overall_score`` is ``fact_accuracy``."""
    texts = [q.question for q in questions]
    start = time.monotonic()
    answers = pipeline.reply(texts)
    seconds = (time.monotonic() - start) / max(len(texts), 1)
    cited = [_cited_passages(pipeline, a) for a in answers]
    ours = _fact_block([a["reply"] for a in answers], questions, cited, pipeline.model.policy.texts())
    grounded = [(a, q) for a, q in zip(answers, questions) if a["kind"] in ("grounded", "generated") and q.doc]
    ours.update(
        {
            "doc_accuracy": round(
                sum(any(s["doc"] == q.doc for s in a["sources"]) for a, q in grounded) / max(len(grounded), 1), 6
            ),
            "rejected_rate": round(sum(bool(a.get("rejected")) for a in answers) / max(len(answers), 1), 6),
            "kinds": {k: sum(a["kind"] == k for a in answers) for k in sorted({a["kind"] for a in answers})},
            "seconds_per_reply": round(seconds, 4),
        }
    )
    retrieved = [
        [h.chunk.passage() for h in hs]
        for hs in pipeline.knowledge.search_many(texts, pipeline.model.settings.candidate_chunks)
    ]
    nearest = NearestReply(pipeline.knowledge, train)
    base = _fact_block(nearest(texts), questions, retrieved)

    relevance: dict[str, Any] = {}
    if validation:
        messages = [p.message for p in validation]
        references = [p.reply for p in validation]
        ours_val = [a["reply"] for a in pipeline.reply(messages)]
        base_val = nearest(messages)
        encode = pipeline.knowledge.embed_queries
        ref = encode(references)
        relevance = {
            "pairs": len(validation),
            "relevance": round(float(np.mean(np.sum(encode(ours_val) * ref, axis=1))), 6),
            "rouge_l": round(corpus_rouge_l(ours_val, references), 6),
            "baseline_relevance": round(float(np.mean(np.sum(encode(base_val) * ref, axis=1))), 6),
            "baseline_rouge_l": round(corpus_rouge_l(base_val, references), 6),
        }
    return {
        "metric": "fact_accuracy",
        "overall_score": ours["fact_accuracy"],
        **ours,
        "num_questions": len(questions),
        "baseline": base,
        "validation_pairs": relevance,
        "generator_used": pipeline.responder is not None,
        "samples": [
            {
                "message": a["message"],
                "reply": a["reply"],
                "kind": a["kind"],
                "intent": a["intent"],
                "expected_facts": list(q.facts),
                "missing_facts": [f for f in q.facts if not contains_fact(a["reply"], f)],
                "sources": [f"{s['doc']} > {s['heading']}" for s in a["sources"]],
            }
            for a, q in list(zip(answers, questions))[:MAX_SAMPLES]
        ],
    }


# ---------------------------------------------------------------------------- training


def fit_replies(
    pipeline: ReplyPipeline,
    train: Sequence[ReplyPair],
    validation: Sequence[ReplyPair],
    tuning: TuningConfig | None,
    listener: Listener | None = None,
) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """Everything training fits on the pipeline: the question layers (``tuning``; None: frozen cosines), then the
    ranker on their cross-fitted cosines and the selection (:func:`fit_ranking`). Returns the ranker's metrics,
    its training questions, and what the metrics record of the question layers."""
    pipeline.question = pipeline.model.question = None
    questions = _tune_questions(pipeline, train, tuning, emitter(listener))
    cross_fitted = questions.pop("cross_fitted", None)
    ranking, train_questions = fit_ranking(pipeline, train, validation, listener, cross_fitted=cross_fitted)
    return ranking, train_questions, questions


def _tune_questions(
    pipeline: ReplyPipeline, train: Sequence[ReplyPair], tuning: TuningConfig | None, emit: Any
) -> dict[str, Any]:
    """Fine-tune the question layers on ``train``'s messages with an answering sentence and put them in the
    pipeline (and its model); returns what the metrics record, with "cross_fitted" when they were tuned."""
    from .tuning import can_tune, tune_question_layers  # the torch part: on use

    if tuning is None:
        return {"tuned": False, "reason": "--frozen-questions"}
    kb = pipeline.knowledge
    if not can_tune(kb.embedder):
        return {"tuned": False, "reason": f"{kb.model.spec} has no BERT layers to tune"}
    groups, found, answered = ranking_groups(pipeline, train)
    if len(groups) < 2 * tuning.folds:
        return {"tuned": False, "reason": f"{len(groups)} training questions with an answering sentence"}
    row_of = {s.id: i for i, s in enumerate(pipeline.model.sentences)}
    examples = [
        (pair.message, [row_of[f.sentences[i].id] for i in labels])
        for (_, labels), f, pair in zip(groups, found, answered)
    ]
    emit(
        TrainingEvent(
            "status",
            message=f"fine-tuning the question encoder's top layers on {len(examples)} questions "
            f"(all of them, then each of {tuning.folds} folds without its questions)",
        )
    )
    tuned = tune_question_layers(kb, examples, pipeline.model.vectors, tuning)
    pipeline.question, pipeline.model.question = tuned.layers, tuned.layers.stored
    return {"tuned": True, **tuned.summary, "cross_fitted": tuned.cross_fitted}


@dataclass
class _Prepared:
    """What training_run's repeat check and MLflow parameters read."""

    train: list[ReplyPair]
    validation: list[ReplyPair]
    fingerprint: str


def train_replies(
    settings: Settings,
    data: Path,
    registry: ModelRegistry,
    *,
    listener: Listener | None = None,
    force: bool = False,
    source: str | None = None,
    eval_file: Path | None = None,
    policy_file: Path | None = None,
    use_generator: bool = False,
    tune_questions: bool = True,
) -> ComponentResult:
    """``tune_questions``: fine-tune the question layers (:mod:`.tuning`; skipped, with a note in the metrics, for
    an encoder without the BERT layers they run); False: the sentence cosines use the frozen search vector."""
    from ...pipeline.analyze import Analyzer  # loads the component table
    from ..knowledge.kb import KnowledgeBase  # imports the encoders

    emit = emitter(listener)
    start = time.monotonic()
    source_info = source_version(registry, source)
    if source_info is None or not has_component(source_info, "knowledge"):
        raise DataError(
            f"the replies answer from a knowledge base, and {source_info.name if source_info else 'the registry'} "
            "has none",
            hint="hotelbot prepare --documents DIR && hotelbot train --model-type embeddings",
        )
    if use_generator and not has_component(source_info, "generator"):
        raise DataError(
            f"--use-generator: {source_info.name} has no response generator",
            hint="hotelbot train --model-type generator first",
        )
    eval_file = evaluation_set(Path(data), eval_file)
    if eval_file is None:
        raise DataError(
            f"no reply evaluation set: none was prepared with the reply pairs, and {DEFAULT_EVAL} is missing",
            hint='give one with --reply-eval FILE (JSONL: {"question", "facts": [...]}), or store it with the '
            "pairs: hotelbot prepare --replies FILE --reply-eval EVAL",
        )
    questions = read_eval_file(eval_file)
    policy_path = Path(policy_file) if policy_file is not None else DEFAULT_POLICY
    policy = Policy.load(policy_path)
    prepared = load_reply_data(Path(data), settings.data)
    kb = KnowledgeBase.from_version(source_info, settings.paths.models_dir)
    reply_settings = ReplySettings(use_generator=use_generator)
    tuning = TuningConfig() if tune_questions else None
    fingerprint = hashlib.sha256(
        "|".join(
            [
                prepared.fingerprint,
                sha256_file(eval_file),
                sha256_file(policy_path),
                knowledge_fingerprint(kb.manifest),
                analyzer_fingerprint(source_info),
                json.dumps(reply_settings.to_dict()),
                json.dumps(tuning.to_dict() if tuning is not None else None),
            ]
        ).encode()
    ).hexdigest()
    config = {
        "features": list(FEATURES),
        **reply_settings.to_dict(),
        "question_layers": tuning.to_dict() if tuning is not None else None,
    }
    frame = _Prepared(prepared.train, prepared.validation, fingerprint)
    with training_run(
        settings,
        registry,
        COMPONENT,
        EXPERIMENT,
        frame,
        config,
        {"knowledge_version": source_info.name, "eval_questions": len(questions), **config},
        force=force,
    ) as (tracker, monitor):
        emit(TrainingEvent("status", message=f"cutting {len(kb.chunk_list)} chunks into sentences and embedding them"))
        sentences = sentences_of(kb.chunk_list)
        vectors = embed_sentences(kb, sentences)
        builder = FeatureBuilder.fit(sentences, [(p.intent, p.source) for p in prepared.train])
        reply_settings = replace(
            reply_settings,
            out_of_scope_grounding=out_of_scope_grounding(kb, prepared.train),
            min_grounding_score=min_grounding_score(kb, prepared.train),
        )
        zero = SentenceRanker(np.zeros(len(FEATURES)), np.zeros(len(FEATURES)), np.ones(len(FEATURES)))
        model = ReplyModel(
            zero, builder, sentences, vectors, policy, reply_settings, knowledge_fingerprint(kb.manifest)
        )
        names = Analyzer.analyzing_components(source_info)
        analyzer = Analyzer.from_version(source_info, settings) if names else None
        responder = None
        if use_generator:
            from ..generator.responder import Responder  # heavy: torch

            responder = Responder.from_version(source_info, settings.paths.models_dir, knowledge=kb)
        pipeline = ReplyPipeline(source_info.name, kb, model, analyzer, responder)
        ranking, train_questions, questions_info = fit_replies(
            pipeline, prepared.train, prepared.validation, tuning, listener
        )
        emit(TrainingEvent("status", message=f"scoring the replies on {len(questions)} evaluation questions"))
        metrics = evaluate_pipeline(pipeline, questions, prepared.train, prepared.validation)
        metrics["ranker"] = {**ranking, "train_questions": train_questions}
        metrics["question_layers"] = questions_info
        duration = time.monotonic() - start
        tracker.log_metrics(
            {
                k: v
                for k, v in {
                    "fact_accuracy": metrics["fact_accuracy"],
                    "fact_recall": metrics["fact_recall"],
                    "unsupported_fact_rate": metrics["unsupported_fact_rate"],
                    "baseline_fact_accuracy": metrics["baseline"]["fact_accuracy"],
                    "ranker_top1": ranking.get("top1_accuracy"),
                    "ranker_mrr": ranking.get("mrr"),
                    "relevance": metrics["validation_pairs"].get("relevance"),
                }.items()
                if v is not None
            },
            step=0,
        )
        summary = {
            "dataset_fingerprint": fingerprint,
            "config": config,
            "knowledge_version": source_info.name,
            "knowledge_fingerprint": knowledge_fingerprint(kb.manifest),
            "sentences": len(sentences),
            "analyzer_fingerprint": analyzer_fingerprint(source_info),
            "eval_file": str(eval_file),
            "eval_sha256": sha256_file(eval_file),
            "policy": str(policy_path),
            "train_questions": train_questions,
            "fact_accuracy": metrics["fact_accuracy"],
            "unsupported_fact_rate": metrics["unsupported_fact_rate"],
            "mlflow_run_id": tracker.run_id,
            "training_seconds": round(duration, 3),
        }

        def write(target: Path) -> None:
            model.save(target, {"trained_on": source_info.name})
            shutil.copyfile(eval_file, target / EVAL_FILE)
            write_prepared_replies(prepared, target / DATA_DIR)  # validate re-scores on the same pairs

        info, carried = publish_component(
            registry,
            COMPONENT,
            "replies",
            source=source_info.name,
            write=write,
            metrics=metrics,
            history={"ranker": ranking},
            summary=summary,
            monitor=monitor,
            tracker=tracker,
            listener=listener,
        )
    base = metrics["baseline"]
    line = (
        f"trained replies {info.name} in {duration:.1f}s: fact accuracy {metrics['fact_accuracy']:.3f} "
        f"(nearest training reply {base['fact_accuracy']:.3f}), unsupported-fact rate "
        f"{metrics['unsupported_fact_rate']:.3f} ({base['unsupported_fact_rate']:.3f}); ranker top-1 "
        f"{ranking.get('top1_accuracy', 0):.3f} (cosine only {ranking.get('baseline_cosine_top1', 0):.3f})"
    )
    document = {
        "component": COMPONENT,
        "version": info.name,
        "skipped": False,
        "duration_seconds": round(duration, 2),
        "mlflow_run_id": tracker.run_id,
        "metric": "fact_accuracy",
        "overall_score": metrics["fact_accuracy"],
        "metrics": {k: v for k, v in metrics.items() if k != "samples"},
        "components": info.metadata.get("components"),
        "carried_from": carried.get("from"),
        "carried_components": carried.get("components"),
    }
    return ComponentResult(
        COMPONENT,
        info,
        metrics,
        duration,
        tracker.run_id,
        [ranking],
        document,
        [line],
        notes=[f"saved to {info.path}; MLflow run {tracker.run_id}"],
        score=("replies_fact_accuracy", float(metrics["fact_accuracy"])),
        carried_from=carried.get("from"),
        carried_components=list(carried.get("components") or []),
    )


def evaluate_version(info: VersionInfo, settings: Settings, eval_file: Path | None = None) -> dict[str, Any]:
    """Re-score a version's replies on the evaluation set and the reply pairs it was trained with (stored in
    ``replies/``), or on ``eval_file``."""
    pipeline = ReplyPipeline.from_version(info, settings)
    questions = read_eval_file(Path(eval_file) if eval_file else info.path / REPLIES_DIR / EVAL_FILE)
    pairs = read_prepared_replies(info.path / REPLIES_DIR / DATA_DIR)
    return evaluate_pipeline(pipeline, questions, pairs.train, pairs.validation)


__all__ = [
    "COMPONENT",
    "DEFAULT_EVAL",
    "EvalQuestion",
    "NearestReply",
    "evaluate_pipeline",
    "evaluate_version",
    "fit_ranking",
    "fit_replies",
    "read_eval_file",
    "train_replies",
]
