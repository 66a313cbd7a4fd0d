"""Grounded replies: the reply pipeline (intent-aware, grounded in the knowledge base, fact-checked) and the
sentence ranker it answers with. ``train --model-type replies`` trains the ranker on the prepared reply pairs
and scores the pipeline on the reply evaluation set; its files live in ``replies/``, its summary in
``metadata["replies"]``. Gated: deploy refuses a version whose unsupported-fact rate is above
``validation_config.max_unsupported_fact_rate`` (default 0) or whose fact accuracy is below
``validation_config.min_fact_accuracy`` (default 0.6).

Modules: evalset.py (the evaluation set: reading it, which one training uses), facts.py (facts and the
check), ranking.py (sentences, features, the ranker), policy.py (what kind of reply each intent gets;
templates), pipeline.py (:class:`ReplyPipeline`), training.py (fit, evaluate, publish)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import HotelbotError, ModelError
from ..base import Component, ComponentResult, TrainRequest, recorded_metrics, report_common
from ..generator.data import default_data_path  # the replies train on the generator's prepared reply pairs
from ..knowledge import KnowledgeBaseComponent
from .evalset import DEFAULT_EVAL, evaluation_set

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import VersionInfo

SMOKE_MESSAGE = "¿a qué hora es el desayuno?"
REPORT_METRICS = (
    ("fact_accuracy", "fact accuracy"),
    ("fact_recall", "fact recall"),
    ("unsupported_fact_rate", "unsupported-fact rate"),
)


class RepliesComponent(Component):
    name = "replies"
    model_type = "replies"
    kind = "replies"
    experiment = "hotelbot-replies"
    description = "grounded replies (intent-aware, sentence ranker over the knowledge base, fact-checked)"
    paths = ("replies",)
    prepare_hint = (
        "hotelbot prepare --replies FILE --reply-eval EVAL (and --documents DIR); without --reply-eval, "
        f"{DEFAULT_EVAL} of the working directory is the evaluation set"
    )
    metric = "fact_accuracy"
    gated = True
    evaluation_key = "replies"
    train_options = ("use_generator", "reply_eval", "frozen_questions")

    def prepared_data(self, settings: Settings, documents: Path | None = None) -> Path | None:
        path = default_data_path(settings)
        has_documents = KnowledgeBaseComponent().prepared_data(settings, documents) is not None
        return path if path.is_dir() and has_documents and evaluation_set(path) is not None else None

    def train(self, request: TrainRequest) -> ComponentResult:
        from .training import train_replies  # numpy, the encoders: on use

        data = Path(request.data) if request.data else default_data_path(request.settings)
        return train_replies(
            request.settings,
            data,
            request.registry,
            listener=request.listener,
            force=request.force,
            source=request.source,
            eval_file=request.options.get("reply_eval"),
            use_generator=bool(request.options.get("use_generator")),
            tune_questions=not request.options.get("frozen_questions"),
        )

    def gate_failures(self, metrics: dict[str, Any], validation: Any) -> list[str]:
        """Unsupported-fact rate <= MAX_UNSUPPORTED_FACT_RATE and fact accuracy >= MIN_FACT_ACCURACY (its own
        floor: MIN_VALIDATION_SCORE is the classifiers')."""
        failures = []
        accuracy, floor = float(metrics["overall_score"]), validation.min_fact_accuracy
        if accuracy < floor:
            failures.append(f"replies fact_accuracy {accuracy:.4f} < MIN_FACT_ACCURACY {floor:.4f}")
        limit = validation.max_unsupported_fact_rate
        rate = metrics.get("unsupported_fact_rate")
        if not isinstance(rate, (int, float)) or rate > limit:
            failures.append(f"replies unsupported_fact_rate {rate} > MAX_UNSUPPORTED_FACT_RATE {limit:.4f}")
        return failures

    def gate_label(self, validation: Any) -> str:
        return (
            f"gate fact accuracy >= {validation.min_fact_accuracy:.2f}, unsupported-fact rate <= "
            f"{validation.max_unsupported_fact_rate:.2f}"
        )

    def _stale(self, info: VersionInfo) -> bool:
        """Whether the knowledge base (documents or embedding model) or the analyzer (classifier, entities,
        sentiment) changed since the replies were trained and scored: their recorded figures no longer hold."""
        from .training import analyzer_fingerprint, recorded_knowledge_fingerprint  # numpy: on use

        summary = info.metadata.get(self.name) or {}
        return summary.get("knowledge_fingerprint") != recorded_knowledge_fingerprint(info) or summary.get(
            "analyzer_fingerprint", ""
        ) != analyzer_fingerprint(info)

    def recorded_score(self, info: VersionInfo) -> dict[str, Any] | None:
        """``replies/metrics.json``, unless the knowledge base changed since (what training measured no longer holds)."""
        if self._stale(info):
            return None
        return recorded_metrics(info, self.name, ("overall_score", "unsupported_fact_rate"))

    def score(self, info: VersionInfo, settings: Settings) -> dict[str, Any] | None:
        from .training import evaluate_version  # numpy, the encoders: on use

        return evaluate_version(info, settings)

    def score_view(self, metrics: dict[str, Any], gate: str) -> dict[str, Any]:
        base = metrics.get("baseline") or {}
        return {
            "line": f"replies: fact accuracy {metrics['fact_accuracy']:.4f}, unsupported-fact rate "
            f"{metrics['unsupported_fact_rate']:.4f} (nearest training reply: "
            f"{base.get('fact_accuracy', 0):.4f}, {base.get('unsupported_fact_rate', 0):.4f})  {gate}",
            "table": None,
        }

    def smoke(self, info: VersionInfo, settings: Settings, texts_count: int) -> dict[str, Any]:
        """Load the reply model's own files with the knowledge base and answer from the documents; the analyzing
        components it routes with are smoke-tested on their own (loading them twice cost deploy seconds)."""
        from .pipeline import ReplyPipeline  # numpy, the knowledge base: on use

        answer = ReplyPipeline.from_version(info, settings, analyzer=False).reply([SMOKE_MESSAGE])[0]
        if not str(answer.get("reply", "")).strip():
            raise HotelbotError(f"{info.name}'s reply pipeline returned an empty reply")
        return {"reply_chars": len(answer["reply"]), "kind": answer["kind"]}

    def load(self, info: VersionInfo, settings: Settings | None = None, loaded: dict[str, Any] | None = None) -> Any:
        from .pipeline import ReplyPipeline  # numpy, the knowledge base: on use

        return ReplyPipeline.from_version(info, settings, loaded)

    def warm_up(self, loaded: Any, version: str, text: str) -> None:
        if not loaded.reply([text])[0].get("reply", "").strip():
            raise ModelError(f"version {version}'s reply pipeline returned an empty reply")

    def report_section(self, path: Path, metadata: dict[str, Any]) -> dict[str, Any] | None:
        summary = metadata.get(self.name)
        metrics_path = Path(path) / "replies" / "metrics.json"
        if not isinstance(summary, dict) or not metrics_path.is_file():
            return None
        metrics = json.loads(metrics_path.read_text("utf-8"))
        base = metrics.get("baseline") or {}
        rows = [{"metric": label, "replies": metrics.get(k), "baseline": base.get(k)} for k, label in REPORT_METRICS]
        pairs = metrics.get("validation_pairs") or {}
        if pairs:
            rows += [
                {
                    "metric": "relevance (validation pairs)",
                    "replies": pairs.get("relevance"),
                    "baseline": pairs.get("baseline_relevance"),
                },
                {
                    "metric": "ROUGE-L (validation pairs)",
                    "replies": pairs.get("rouge_l"),
                    "baseline": pairs.get("baseline_rouge_l"),
                },
            ]
        return {
            "kind": "replies",
            "headline": {k: metrics.get(k) for k, _ in REPORT_METRICS},
            "rows": rows,
            "ranker": metrics.get("ranker"),
            "question_layers": metrics.get("question_layers"),
            "kinds": metrics.get("kinds"),
            "num_questions": metrics.get("num_questions"),
            "samples": (metrics.get("samples") or [])[:5],
            "knowledge_version": summary.get("knowledge_version"),
            **report_common({**summary, "training": {"duration_seconds": summary.get("training_seconds")}}),
        }

    def evaluate(
        self, info: VersionInfo, settings: Settings, options: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[str]]:
        return None, []  # scored (and gated) through score()


__all__ = ["RepliesComponent"]
