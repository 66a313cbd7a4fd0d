"""The response generator: an encoder-decoder trained on (message, reply) pairs, grounded on the knowledge
base's passages when the version has one. Its files live in ``generator/``, its summary in
``metadata["generator"]``. It has no gate score: deploy checks that it loads and replies.

Modules: data.py (reply pairs: validation, split, storage), metrics.py (BLEU, ROUGE-L, perplexity),
model.py (settings, spec, restricted vocabulary, building/saving/loading the model), inputs.py (model
inputs, batches, token NLL), responder.py (the Responder and evaluation), training.py (fit + publish)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import HotelbotError, ModelError
from ..base import Component, ComponentResult, TrainRequest, report_common
from .data import COMPONENT, EXPERIMENT, GENERATOR_DIR, default_data_path

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import VersionInfo

SMOKE_MESSAGE = "¿a qué hora es el desayuno?"
REPORT_METRICS = (
    ("bleu", "BLEU"),
    ("rouge_l", "ROUGE-L"),
    ("relevance", "relevance"),
    ("exact_match", "exact match"),
    ("perplexity", "perplexity"),
)


class GeneratorComponent(Component):
    name = COMPONENT
    model_type = "generator"
    distributed = True  # fits on the Trainer: torchrun / accelerate launch
    kind = "response-generator"
    experiment = EXPERIMENT
    description = "response generator (encoder-decoder, grounded on the knowledge base)"
    paths = (GENERATOR_DIR,)
    prepare_hint = "hotelbot prepare --replies FILE"
    metric = "relevance"
    evaluation_key = "generator"
    export_formats = ("hf",)

    def prepared_data(self, settings: Settings, documents: Path | None = None) -> Path | None:
        path = default_data_path(settings)
        return path if path.is_dir() else None  # the shipped file is not "prepared"

    def train(self, request: TrainRequest) -> ComponentResult:
        from .training import train_generator  # (the same package) torch and the Trainer: on use

        data = Path(request.data) if request.data else default_data_path(request.settings)
        return train_generator(
            request.settings,
            data,
            request.registry,
            listener=request.listener,
            force=request.force,
            source=request.source,
        )

    def evaluate(
        self, info: VersionInfo, settings: Settings, options: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """BLEU, ROUGE-L, perplexity and relevance beside the retrieval-only baseline (re-generates the
        validation replies; reported, not gated)."""
        from .responder import evaluate_version  # (the same package) on use

        return evaluate_version(info, models_dir=settings.paths.models_dir), []

    def evaluation_lines(self, result: dict[str, Any]) -> dict[str, list[str]]:
        g, b = result["generator"], result["retrieval_baseline"]
        return {
            "stdout": [],
            "stderr": [
                f"generator: BLEU {g['bleu']:.2f} ROUGE-L {g['rouge_l']:.4f} perplexity {g['perplexity']:.2f} "
                f"relevance {g['relevance']:.4f} (retrieval-only: BLEU {b['bleu']:.2f} ROUGE-L {b['rouge_l']:.4f} "
                f"relevance {b['relevance']:.4f})"
            ],
            "warnings": [],
        }

    def smoke(self, info: VersionInfo, settings: Settings, texts_count: int) -> dict[str, Any]:
        answer = self.load(info, settings).reply([SMOKE_MESSAGE])[0]
        if not str(answer.get("reply", "")).strip():
            raise HotelbotError(f"{info.name}'s response generator returned an empty reply")
        return {"reply_chars": len(answer["reply"])}

    def load(self, info: VersionInfo, settings: Settings | None = None, loaded: dict[str, Any] | None = None) -> Any:
        from .responder import Responder  # (the same package) torch: on use

        return Responder.from_version(
            info, settings.paths.models_dir if settings is not None else None, knowledge=(loaded or {}).get("knowledge")
        )

    def served(self, info: VersionInfo) -> bool:
        """/reply answers through the reply model, which uses the generator only when it was trained to
        (``train --model-type replies --use-generator``): else nothing served reads it, and loading it would
        cost seconds and hundreds of MB."""
        replies = info.path / "replies" / "ranker.json"
        if not replies.is_file():
            return False
        try:
            return bool((json.loads(replies.read_text("utf-8")).get("settings") or {}).get("use_generator"))
        except (OSError, ValueError):
            return False

    def warm_up(self, loaded: Any, version: str, text: str) -> None:
        if not loaded.reply([text])[0].get("reply", "").strip():
            raise ModelError(f"version {version}'s response generator returned an empty reply")

    def export(self, info: VersionInfo, fmt: str, target: Path, settings: Settings) -> dict[str, Any]:
        from .model import export_generator  # (the same package) on use

        return export_generator(info.path / GENERATOR_DIR, settings.paths.models_dir, target, info.name)

    def report_section(self, path: Path, metadata: dict[str, Any]) -> dict[str, Any] | None:
        generator = metadata.get(self.name)
        metrics_path = Path(path) / GENERATOR_DIR / "metrics.json"
        if not isinstance(generator, dict) or not metrics_path.is_file():
            return None
        metrics = json.loads(metrics_path.read_text("utf-8"))
        g, b = metrics.get("generator") or {}, metrics.get("retrieval_baseline") or {}
        return {
            "kind": "generation",
            "headline": {k: g.get(k) for k, _ in REPORT_METRICS if g.get(k) is not None},
            "baseline": {k: b.get(k) for k, _ in REPORT_METRICS if b.get(k) is not None},
            "rows": [
                {"metric": label, "generator": g.get(k), "baseline": b.get(k)}
                for k, label in REPORT_METRICS
                if g.get(k) is not None
            ],
            "architecture": generator.get("architecture"),
            "grounded": generator.get("grounded"),
            "knowledge_version": generator.get("knowledge_version"),
            "grounding": metrics.get("grounding"),
            "generation": metrics.get("generation") or generator.get("generation"),
            "num_examples": metrics.get("num_examples"),
            "bleu_signature": metrics.get("bleu_signature"),
            "samples": (metrics.get("samples") or [])[:5],
            **report_common(generator),
        }


__all__ = ["GeneratorComponent"]
