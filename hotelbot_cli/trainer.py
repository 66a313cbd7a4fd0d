"""``ModelTrainer``: the seed's Python API as a thin facade over the hotelbot library.

The seed's quick-start runs unchanged apart from its import line::

    from hotelbot_cli.trainer import ModelTrainer

    trainer = ModelTrainer()
    trainer.prepare_training_data("datasets/")
    trainer.train_models("all")
    results = trainer.validate_models()
    if results['overall_score'] > 0.8:
        trainer.deploy_models()
    else:
        ...
    # on an exception: trainer.rollback_to_previous_version()

Every method calls the same library functions as the CLI; errors are HotelbotError subclasses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .components import registered
from .config import Settings, load_settings
from .data import SUPPORTED_SUFFIXES, TEST_SET_SUFFIX, prepare_dataset
from .errors import DataError
from .evaluation import top_confusions
from .pipeline.deploy import backup_current, deploy, rollback
from .pipeline.train import train
from .pipeline.validate import validate_version
from .registry import ModelRegistry

INTENT_FILE_NAMES = ("hotel_intents_es.json", "intents.json", "intents.jsonl", "intents.csv")


class ModelTrainer:
    """The seed's ModelTrainer over hotelbot: prepare, train, validate, deploy, back up, roll back."""

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        registry: str | Path | None = None,
        profile: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or load_settings(
            config_file=Path(config_path) if config_path else None,
            profile=profile,
            path_overrides={"registry": registry},
        )
        self.registry = ModelRegistry(self.settings.paths.registry)
        self.last_version: str | None = None
        self.last_validation: dict[str, Any] | None = None

    # ------------------------------------------------------------ data
    @staticmethod
    def _intent_file(path: Path) -> Path:
        if path.is_file():
            return path
        if not path.is_dir():
            raise DataError(f"{path}: no such file or directory")
        for name in INTENT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        found = sorted(
            p
            for p in path.iterdir()
            if p.suffix.lower() in SUPPORTED_SUFFIXES
            and "holdout" not in p.name
            and not p.name.endswith(TEST_SET_SUFFIX)
        )
        if len(found) == 1:
            return found[0]
        raise DataError(
            f"{path}: found {len(found)} candidate intent files; name one "
            f"({', '.join(INTENT_FILE_NAMES)}) or pass the file itself"
        )

    def prepare_training_data(self, documents_dir: str | Path = "datasets/") -> dict[str, Any]:
        """Validate, clean and split the intent data found at ``documents_dir`` (a file or a directory)."""
        prepared = prepare_dataset(self._intent_file(Path(documents_dir)), self.settings.paths.data, self.settings.data)
        return prepared.to_summary()

    # ------------------------------------------------------------ training
    def train_models(self, model_type: str = "all", *, force: bool = False) -> dict[str, Any]:
        """Train ``model_type`` (a registered component's model type: classifier, embeddings, entities,
        sentiment, generator, ...) on its data, or "all": the classifier then every component whose data is
        prepared, under one MLflow parent run. The same library entry point as `hotelbot train --model-type`
        (:func:`hotelbot_cli.pipeline.train.train`)."""
        steps = train(self.settings, self.registry, model_type, force=force).steps
        self.last_version = steps[-1].version  # the end of the chain (the pipeline's final_version)
        primary = {c.name for c in registered() if c.primary}
        classifier = next((s.result for s in steps if s.component in primary and s.result is not None), None)
        return {
            "version": self.last_version,
            "skipped": all(s.status != "trained" for s in steps),
            "steps": [s.to_dict() for s in steps],
            **({"metrics": classifier.metrics} if classifier is not None else {}),
        }

    # ------------------------------------------------------------ validation
    def validate_models(self, version: str | None = None) -> dict[str, Any]:
        """Validation metrics of ``version`` (default: the one just trained, else the newest) with 'overall_score'."""
        name = version or self.last_version or "latest"
        result = validate_version(self.registry, name, self.settings)
        self.last_validation = result.to_dict()
        return {
            **result.metrics,
            "overall_score": result.overall_score,
            "passed": result.passed,
            "version": result.version,
            "comparison": result.comparison.to_dict() if result.comparison else None,
        }

    # ------------------------------------------------------------ deployment
    def deploy_models(self, version: str | None = None, reason: str = "") -> dict[str, Any]:
        return deploy(self.registry, self.settings, version or self.last_version, reason).to_dict()

    def backup_current_models(self, reason: str = "manual backup") -> dict[str, Any]:
        return backup_current(self.registry, self.settings, reason)

    def rollback_to_previous_version(self, reason: str = "", to: str | None = None) -> dict[str, Any]:
        return rollback(self.registry, self.settings, to, reason).to_dict()

    # ------------------------------------------------------------ reports
    def generate_training_report(self, version: str | None = None) -> dict[str, Any]:
        """A structured summary of a version: metrics, weakest intents, comparison with the deployed one.

        (The HTML/Markdown report with plots is `hotelbot report`, a separate issue.)
        """
        info = self.registry.resolve(version or self.last_version or "latest")
        metrics = json.loads((info.path / "metrics.json").read_text("utf-8"))
        worst = sorted(metrics["per_intent"].items(), key=lambda kv: kv[1]["f1"])[:5]
        current = self.registry.current_name()
        current_metrics = self.registry.get(current).metrics if current and current != info.name else None
        return {
            "version": info.name,
            "created_at": info.manifest.created_at,
            "training": info.metadata.get("training"),
            "metrics": {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1", "overall_score")},
            "weakest_intents": [{"intent": k, **v} for k, v in worst],
            "top_confusions": [{"true": t, "predicted": p, "count": n} for t, p, n in top_confusions(metrics)],
            "deployed_version": current,
            "delta_vs_deployed": (
                {k: metrics[k] - current_metrics[k] for k in ("accuracy", "macro_f1") if k in current_metrics}
                if current_metrics
                else None
            ),
        }
