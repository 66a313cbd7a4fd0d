"""Metrics, gates and comparisons (scikit-learn; no hub-fetched metric scripts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .data import OUT_OF_SCOPE

METRIC_KEYS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1")


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str],
                           metric: str = "macro_f1") -> dict[str, Any]:
    """Accuracy, macro/weighted P/R/F1, per-intent P/R/F1/support, confusion matrix, overall_score.

    ``labels`` fixes the order of the per-intent table and the confusion matrix; predictions of a label
    outside it (e.g. an older model's intent) count as errors.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(labels)
    extra = sorted(set(y_pred) - set(labels))
    all_labels = labels + extra
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=all_labels)
    out: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "weighted_f1": float(weighted[2]),
        "num_examples": len(y_true),
        "per_intent": {
            label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, label in enumerate(labels)
        },
        "confusion_matrix": {"labels": all_labels, "matrix": matrix.tolist()},
    }
    if OUT_OF_SCOPE in labels:
        in_scope = [(t, p_) for t, p_ in zip(y_true, y_pred) if t != OUT_OF_SCOPE]
        oos = [p_ for t, p_ in zip(y_true, y_pred) if t == OUT_OF_SCOPE]
        out["in_scope_accuracy"] = sum(t == p_ for t, p_ in in_scope) / len(in_scope) if in_scope else None
        out["out_of_scope_recall"] = sum(p_ == OUT_OF_SCOPE for p_ in oos) / len(oos) if oos else None
    out["metric"] = metric
    out["overall_score"] = float(out[metric])
    return out


def top_confusions(metrics: dict[str, Any], limit: int = 5) -> list[tuple[str, str, int]]:
    """The most frequent (true, predicted, count) mistakes."""
    cm = metrics["confusion_matrix"]
    pairs = []
    for i, true in enumerate(cm["labels"]):
        for j, pred in enumerate(cm["labels"]):
            if i != j and cm["matrix"][i][j]:
                pairs.append((true, pred, int(cm["matrix"][i][j])))
    return sorted(pairs, key=lambda t: (-t[2], t[0], t[1]))[:limit]


@dataclass
class Comparison:
    """How a candidate's metrics differ from a reference model's on the same data."""

    reference_version: str
    deltas: dict[str, float]
    per_intent_f1_deltas: dict[str, float] = field(default_factory=dict)

    def regressions(self, tolerance: float) -> dict[str, float]:
        return {k: v for k, v in self.per_intent_f1_deltas.items() if v < -tolerance}

    def to_dict(self) -> dict[str, Any]:
        return {"reference_version": self.reference_version, "deltas": self.deltas,
                "per_intent_f1_deltas": self.per_intent_f1_deltas}


def compare(candidate: dict[str, Any], reference: dict[str, Any], reference_version: str) -> Comparison:
    deltas = {k: candidate[k] - reference[k] for k in METRIC_KEYS + ("overall_score",) if k in candidate and k in reference}
    per_intent = {
        label: stats["f1"] - reference["per_intent"][label]["f1"]
        for label, stats in candidate["per_intent"].items()
        if label in reference.get("per_intent", {})
    }
    return Comparison(reference_version, deltas, per_intent)


@dataclass
class ValidationResult:
    """``metrics`` are the intent classifier's ({} for a version without one); ``components`` hold the other
    scored components' metrics (entities, sentiment), each on its own validation split. Every one of them
    must reach ``min_score`` to pass."""

    version: str
    metrics: dict[str, Any]
    min_score: float
    data_source: str
    comparison: Comparison | None = None
    validated_at: str = ""
    components: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def overall_score(self) -> float:
        """The classifier's overall_score; without a classifier, the lowest component score."""
        if self.metrics:
            return float(self.metrics["overall_score"])
        return min(float(m["overall_score"]) for m in self.components.values())

    @property
    def classifier_passed(self) -> bool:
        return not self.metrics or float(self.metrics["overall_score"]) >= self.min_score

    @property
    def failures(self) -> list[str]:
        out = [] if self.classifier_passed else [
            f"{self.metrics['metric']} {self.overall_score:.4f} < MIN_VALIDATION_SCORE {self.min_score:.4f}"]
        out += [f"{name} {m['metric']} {m['overall_score']:.4f} < MIN_VALIDATION_SCORE {self.min_score:.4f}"
                for name, m in self.components.items() if m["overall_score"] < self.min_score]
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "overall_score": self.overall_score,
            "metric": self.metrics["metric"] if self.metrics else "lowest component score",
            "min_validation_score": self.min_score,
            "passed": self.passed,
            "failures": self.failures,
            "data_source": self.data_source,
            "validated_at": self.validated_at,
            "metrics": self.metrics,
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "components": {name: {"metric": m["metric"], "overall_score": m["overall_score"],
                                  "passed": m["overall_score"] >= self.min_score, "metrics": m}
                           for name, m in self.components.items()},
        }


def validate_version(registry: Any, version: str | None, settings: Any, data_dir: Any = None) -> ValidationResult:
    """Evaluate a saved version on a validation split; compare with the deployed version if any.

    The split is the version's own (stored at train time) unless ``data_dir`` names a prepared directory.
    The entity and sentiment models, when present, are scored on their own stored validation splits.
    The result is recorded in the registry (``validations/``) and under ``reports/validation_reports/``.
    """
    from pathlib import Path

    from .analysis import validate_components
    from .components import components_of
    from .data import read_jsonl_examples, read_prepared
    from .errors import RegistryError
    from .inference import load_predictor
    from .onnx_runtime import compare_runtimes
    from .registry.store import utc_now

    info = registry.require_intact(registry.resolve(version or settings.model_version).name)
    components = validate_components(info, settings.validation.metric)
    if "classifier" not in components_of(info):
        if not components:
            raise RegistryError(f"version {info.name} has no classifier, entity or sentiment model to validate")
        result = ValidationResult(info.name, {}, settings.validation.min_validation_score,
                                  f"{info.name}: each component's own validation split", None, utc_now(), components)
        return _record(registry, settings, result)
    if data_dir is not None:
        examples = read_prepared(Path(data_dir)).validation
        source = str(data_dir)
    else:
        examples = read_jsonl_examples(info.path / "data" / "validation.jsonl")
        source = f"{info.name}/data/validation.jsonl"
    texts = [e.text for e in examples]
    truth = [e.intent for e in examples]
    predictor = load_predictor(info)  # the runtime predict/serve use (model/runtime.json, HOTELBOT_RUNTIME)
    metrics = classification_metrics(truth, predictor.predict_labels(texts), predictor.labels,
                                     settings.validation.metric)
    metrics["out_of_scope_threshold"] = predictor.threshold
    metrics["runtime"] = predictor.runtime
    # int8 against fp32 (and their difference in points vs the tolerance) on the same texts
    metrics["runtimes"] = compare_runtimes(info, examples,
                                           tolerance_points=settings.validation.runtime_tolerance_points)
    if predictor.threshold is not None:
        argmax = classification_metrics(truth, predictor.predict_labels(texts, apply_threshold=False),
                                        predictor.labels, settings.validation.metric)
        metrics["argmax"] = {k: argmax[k] for k in CV_METRICS if k in argmax}
    comparison = None
    current = registry.current_name()
    from .components import has_component

    if current and current != info.name and has_component(registry.get(current), "classifier"):
        reference = load_predictor(registry.require_intact(current))
        ref_metrics = classification_metrics(truth, reference.predict_labels(texts), predictor.labels,
                                             settings.validation.metric)
        comparison = compare(metrics, ref_metrics, current)
    result = ValidationResult(info.name, metrics, settings.validation.min_validation_score, source, comparison,
                              utc_now(), components)
    return _record(registry, settings, result)


def _record(registry: Any, settings: Any, result: ValidationResult) -> ValidationResult:
    from pathlib import Path

    from ._atomic import atomic_write_json

    registry.record_validation(result.version, result.to_dict())
    stamp = result.validated_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    atomic_write_json(Path(settings.paths.reports) / "validation_reports" / f"{result.version}-{stamp}.json",
                      result.to_dict())
    return result


CV_METRICS = METRIC_KEYS + ("in_scope_accuracy", "out_of_scope_recall")


def cross_validate(registry: Any, version: str | None, settings: Any, folds: int, listener: Any = None) -> dict[str, Any]:
    """Stratified K-fold CV with the version's training config over its full data (train + validation).

    Each fold fine-tunes a fresh model from the base model (nothing is published). Returns the mean and
    standard deviation of every metric, per-fold scores, and the confusion matrix summed over folds.
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from .config import TrainingConfig
    from .data import read_jsonl_examples
    from .errors import DataError
    from .training import MlflowTracker, TrainingEvent, fit_classifier

    if folds < 2:
        raise DataError("--cv needs at least 2 folds")
    info = registry.resolve(version or settings.model_version)
    examples = read_jsonl_examples(info.path / "data" / "train.jsonl") + \
        read_jsonl_examples(info.path / "data" / "validation.jsonl")
    y = [e.intent for e in examples]
    smallest = min(y.count(label) for label in set(y))
    if smallest < folds:
        raise DataError(f"--cv {folds}: the smallest intent has only {smallest} examples; use at most {smallest} folds")
    cfg = TrainingConfig.from_dict((info.metadata.get("config") or {}).get("training_config")
                                   or settings.training.to_dict())
    labels = sorted(set(y))
    emit = listener or (lambda event: None)
    per_fold: list[dict[str, Any]] = []
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    tracker = MlflowTracker(settings.paths.tracking_uri)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    with tracker.run(run_name=f"cv{folds}-{info.name}", tags={"hotelbot.component": "classifier-cv"}):
        tracker.log_params({**cfg.to_dict(), "folds": folds, "version": info.name})
        for fold, (train_idx, val_idx) in enumerate(splitter.split(np.zeros(len(y)), y)):
            emit(TrainingEvent("status", message=f"fold {fold + 1}/{folds}"))
            train = [examples[i] for i in train_idx]
            validation = [examples[i] for i in val_idx]
            fit = fit_classifier(cfg, settings.validation.metric, train, validation, labels,
                                 settings.paths.models_dir, listener=listener)
            cm = fit.metrics["confusion_matrix"]
            index = {label: i for i, label in enumerate(cm["labels"])}
            for a, true in enumerate(labels):
                for b, pred in enumerate(labels):
                    if true in index and pred in index:
                        matrix[a, b] += cm["matrix"][index[true]][index[pred]]
            row = {k: fit.metrics.get(k) for k in CV_METRICS + ("overall_score",)}
            row["out_of_scope_threshold"] = fit.threshold
            per_fold.append(row)
            tracker.log_metrics({f"fold_{k}": v for k, v in row.items() if isinstance(v, float)}, step=fold)
        summary = {}
        for key in CV_METRICS + ("overall_score",):
            values = [r[key] for r in per_fold if r.get(key) is not None]
            if values:
                summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                                "min": float(np.min(values)), "max": float(np.max(values))}
        tracker.log_metrics({f"cv_mean_{k}": v["mean"] for k, v in summary.items()}, step=folds)
    return {"version": info.name, "folds": folds, "examples": len(examples), "metric": settings.validation.metric,
            "summary": summary, "per_fold": per_fold,
            "confusion_matrix": {"labels": labels, "matrix": matrix.tolist()}, "mlflow_run_id": tracker.run_id}
