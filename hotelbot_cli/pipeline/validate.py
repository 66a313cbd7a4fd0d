"""Validation: every scored component of a version on its own validation split, the gate
(MIN_VALIDATION_SCORE for each, no per-intent regression of the primary component against the deployed
version), and K-fold cross-validation of the intent classifier.

The components scored and gated are the registered ones with ``gated`` set
(:mod:`hotelbot_cli.components`); the ``primary`` one (the intent classifier) is validated with its
runtime comparison and its comparison with the deployed version, and its metrics are the result's
headline ``metrics``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import atomic_write_json
from ..components import get as get_component
from ..components import registered
from ..components.compose import components_of, recorded_files
from ..config import TrainingConfig, ValidationConfig
from ..data import (
    DATASET_FILE,
    TRAIN_FILE,
    VALIDATION_FILE,
    read_jsonl_examples,
    read_prepared,
    read_test_set,
    shared_texts,
)
from ..errors import DataError, HotelbotError, IntegrityError, RegistryError
from ..evaluation import METRIC_KEYS, Comparison, classification_metrics, compare
from ..export import compare_runtimes
from ..registry.store import utc_now
from ..runtime import load_predictor
from ..runtime.detector import KNN, SOFTMAX
from ..training.classify import fit_classifier
from ..training.events import TrainingEvent, emitter
from ..training.oos_detector import choose_for_fit
from ..training.tracking import MlflowTracker

if TYPE_CHECKING:
    from ..registry import VersionInfo


log = logging.getLogger("hotelbot.validation")
DEFAULT_TEST_SET = Path("datasets/hotel_intents_es_test.jsonl")
CV_METRICS = METRIC_KEYS + ("in_scope_accuracy", "out_of_scope_recall")
MISSES_SHOWN = 20  # test-set mistakes listed in `validate --test` (the JSON lists every one)


def check_test_set(
    registry: Any, settings: Any, version: str | None = None, path: Path | None = None
) -> dict[str, Any]:
    """What `validate --test` scores, checked before anything runs: the version, the test set (``path``, else
    the one its training data was prepared with, recorded in its data/dataset.json, else the shipped default)
    and notes. DataError when there is no test set, when it names an intent the classifier lacks, or when the
    version was trained or validated on any of its texts."""
    info = registry.require_intact(registry.resolve(version or settings.model_version).name)
    if primary_component(info) is None:
        raise RegistryError(f"version {info.name} has no intent classifier to test")
    recorded: dict[str, Any] = {}
    try:
        recorded = json.loads((info.path / "data" / DATASET_FILE).read_text("utf-8")).get("test_set") or {}
    except (OSError, ValueError):
        pass
    notes: list[str] = []
    if path is None:
        candidate = Path(recorded["path"]) if recorded.get("path") else DEFAULT_TEST_SET
        if not candidate.is_file():
            raise DataError(
                f"no independent test set for {info.name} ({candidate} not found)",
                hint="give one: hotelbot validate --test --test-set FILE (JSONL of {text, intent})",
            )
        path = candidate
    test = read_test_set(Path(path))
    if (
        recorded.get("sha256")
        and Path(recorded.get("path", "")).resolve() == test.path
        and recorded["sha256"] != test.sha256
    ):
        notes.append(f"{path} changed since {info.name}'s data was prepared")
    unknown = sorted({e.intent for e in test.examples} - set(info.metadata.get("labels") or []))
    if info.metadata.get("labels") and unknown:
        raise DataError(
            f"{path}: intent(s) {info.name}'s classifier does not know: {', '.join(unknown)}",
            hint="test a version trained on these intents, or drop them from the test set",
        )
    trained = [e for name in (TRAIN_FILE, VALIDATION_FILE) for e in read_jsonl_examples(info.path / "data" / name)]
    seen = [e.text for e in shared_texts(test.examples, trained)]
    if seen:
        raise DataError(
            f"{info.name} was trained or validated on {len(seen)} text(s) of the test set {path}: "
            + "; ".join(repr(s) for s in seen[:3]),
            hint="a test set must stay unseen: retrain on data prepared against it (hotelbot prepare)",
        )
    return {"info": info, "test": test, "path": Path(path), "notes": notes}


def evaluate_test_set(
    registry: Any,
    settings: Any,
    version: str | None = None,
    path: Path | None = None,
    checked: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`validate --test`: the version's intent classifier on the independent test set (:func:`check_test_set`,
    or ``checked``, its result), as served (the runtime and out-of-scope rule predict/serve use). Never
    recorded as the version's validation and never gated: choosing a version by it would make it a second
    validation split."""
    checked = checked or check_test_set(registry, settings, version, path)
    info, test, path, notes = checked["info"], checked["test"], checked["path"], checked["notes"]
    predictor = load_predictor(info)
    texts, truth = [e.text for e in test.examples], [e.intent for e in test.examples]
    predicted = predictor.predict_labels(texts)
    metrics = classification_metrics(truth, predicted, predictor.labels, settings.validation.metric)
    misses = [{"text": x, "intent": y, "predicted": p} for x, y, p in zip(texts, truth, predicted) if y != p]
    return {
        "version": info.name,
        "test_set": str(path),
        "sha256": test.sha256,
        "runtime": predictor.runtime,
        "out_of_scope_threshold": predictor.threshold,
        "out_of_scope_detector": predictor.detector.to_spec(),
        "notes": notes,
        "misses": misses,
        **metrics,
    }


def validate_components(info: VersionInfo, settings: Any, recorded: bool = False) -> dict[str, dict[str, Any]]:
    """Scores of the version's gated components other than the primary one (entities, sentiment, ...), each
    on its own validation split, reloaded from disk: {name: metrics with "metric" and "overall_score"}.
    With ``recorded`` (the deploy gate), the score training recorded for the same split and files where
    there is one (``Component.recorded_score``), marked ``"source": "recorded"``."""
    present = components_of(info)
    out: dict[str, dict[str, Any]] = {}
    for component in registered():
        if component.gated and not component.primary and component.name in present:
            kept = component.recorded_score(info) if recorded else None
            scored = {**kept, "source": "recorded"} if kept is not None else component.score(info, settings)
            if scored is not None:
                out[component.name] = scored
    return out


def gate_components(info: VersionInfo, settings: Any) -> dict[str, Any]:
    """The deploy gate for the components other than the primary one: each one's overall_score on its own
    validation split (as training recorded it) must reach MIN_VALIDATION_SCORE."""
    scores = validate_components(info, settings, recorded=True)
    failures = [f for name, m in scores.items() for f in get_component(name).gate_failures(m, settings.validation)]
    return {
        "components": {
            name: {"metric": m["metric"], "overall_score": m["overall_score"]} for name, m in scores.items()
        },
        "failures": failures,
        "passed": not failures,
    }


def primary_component(info: VersionInfo) -> Any:
    """The version's primary component (the intent classifier) when it holds one, else None."""
    present = components_of(info)
    return next((c for c in registered() if c.primary and c.name in present), None)


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
    not_compared: str | None = None  # why the deployed version could not be compared with
    validation: Any = None  # the ValidationConfig whose limits the components' gates apply (default: min_score only)
    # what the classifier's answers depend on (:func:`evaluation_key`), and the validation whose answers a
    # deploy's gate reused instead of running the classifier again (None: evaluated now)
    evaluation_key: str | None = None
    reused_from: str | None = None

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
        out = (
            []
            if self.classifier_passed
            else [f"{self.metrics['metric']} {self.overall_score:.4f} < MIN_VALIDATION_SCORE {self.min_score:.4f}"]
        )
        limits = self.validation or ValidationConfig(min_validation_score=self.min_score)
        out += [f for name, m in self.components.items() for f in get_component(name).gate_failures(m, limits)]
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
            "not_compared": self.not_compared,
            "evaluation_key": self.evaluation_key,
            "reused_from": self.reused_from,
            "components": {
                name: {
                    "metric": m["metric"],
                    "overall_score": m["overall_score"],
                    "passed": not get_component(name).gate_failures(
                        m, self.validation or ValidationConfig(min_validation_score=self.min_score)
                    ),
                    "metrics": m,
                }
                for name, m in self.components.items()
            },
        }


def validate_version(
    registry: Any, version: str | None, settings: Any, data_dir: Any = None, gate: bool = False
) -> ValidationResult:
    """Evaluate a saved version on a validation split; compare with the deployed version if any.

    The split is the version's own (stored at train time) unless ``data_dir`` names a prepared directory.
    The other gated components (entities, sentiment, ...), when present, are scored on their own stored
    validation splits. ``gate`` (deploy): what the gate needs and nothing more: the classifier evaluated
    with the runtime it serves with and compared with the deployed one, the other components' recorded
    scores, no int8-vs-fp32 comparison (``hotelbot validate`` reports it).
    The result is recorded in the registry (``validations/``) and under ``reports/validation_reports/``.
    """
    info = registry.require_intact(registry.resolve(version or settings.model_version).name)
    components = validate_components(info, settings, recorded=gate)
    if primary_component(info) is None:
        if not components:
            scored = ", ".join(c.name for c in registered() if c.gated)
            raise RegistryError(f"version {info.name} has no component to validate (scored: {scored})")
        result = ValidationResult(
            info.name,
            {},
            settings.validation.min_validation_score,
            f"{info.name}: each component's own validation split",
            None,
            utc_now(),
            components,
            validation=settings.validation,
        )
        return _record(registry, settings, result)
    if data_dir is not None:
        examples = read_prepared(Path(data_dir)).validation
        source = str(data_dir)
    else:
        examples = read_jsonl_examples(info.path / "data" / VALIDATION_FILE)
        source = f"{info.name}/data/validation.jsonl"
    texts = [e.text for e in examples]
    truth = [e.intent for e in examples]
    primary = primary_component(info)
    data_sha = None if data_dir is not None else info.manifest.files.get(f"data/{VALIDATION_FILE}")
    key = evaluation_key(info, primary.name, data_sha, settings.validation.metric)
    reused = _recorded_answers(registry, key, primary.name, settings.validation.metric) if gate else None
    if reused is not None:  # the same classifier files judged on the same texts by the same code: same answers
        reused_from, metrics = reused
    else:
        reused_from, metrics = None, _evaluate(info, examples, settings, gate)
    comparison, not_compared = None, None
    current = registry.current_name()
    if current and current != info.name and primary_component(registry.get(current)) is not None:
        try:
            deployed = registry.require_intact(current)
        except IntegrityError as exc:  # a corrupt deployed model must not block deploying a good one
            not_compared = f"the deployed {current} fails its checksums ({exc}); not compared"
        else:
            own = recorded_files(info, primary.name)
            if own and recorded_files(deployed, primary.name) == own:
                # the same classifier files (carried over by a component-only training): the same answers on
                # the same texts, so the deployed one need not be loaded and run again (~2 s of a deploy)
                ref_metrics = metrics
            else:
                deployed_key = evaluation_key(deployed, primary.name, data_sha, settings.validation.metric)
                recorded = (
                    _recorded_answers(registry, deployed_key, primary.name, settings.validation.metric)
                    if gate
                    else None
                )
                ref_metrics = (
                    recorded[1]
                    if recorded is not None
                    else classification_metrics(
                        truth,
                        load_predictor(deployed).predict_labels(texts),
                        list(metrics["per_intent"]),
                        settings.validation.metric,
                    )
                )
            comparison = compare(metrics, ref_metrics, current)
    result = ValidationResult(
        info.name,
        metrics,
        settings.validation.min_validation_score,
        source,
        comparison,
        utc_now(),
        components,
        not_compared,
        settings.validation,
        key,
        reused_from,
    )
    return _record(registry, settings, result)


def _evaluate(info: VersionInfo, examples: list[Any], settings: Any, gate: bool) -> dict[str, Any]:
    """The classifier's metrics on ``examples`` with the runtime predict/serve use (model/runtime.json,
    HOTELBOT_RUNTIME); outside the gate also int8 against fp32 and the answers without the threshold."""
    texts = [e.text for e in examples]
    truth = [e.intent for e in examples]
    predictor = load_predictor(info)
    metrics = classification_metrics(
        truth, predictor.predict_labels(texts), predictor.labels, settings.validation.metric
    )
    metrics["out_of_scope_threshold"] = predictor.threshold
    metrics["out_of_scope_detector"] = predictor.detector.to_spec()
    metrics["runtime"] = predictor.runtime
    # int8 against fp32 (and their difference in points vs the tolerance) on the same texts
    metrics["runtimes"] = (
        None
        if gate
        else compare_runtimes(info, examples, tolerance_points=settings.validation.runtime_tolerance_points)
    )
    if predictor.detector.threshold is not None and not gate:  # the gate judges the answers as served
        argmax = classification_metrics(
            truth, predictor.predict_labels(texts, apply_threshold=False), predictor.labels, settings.validation.metric
        )
        metrics["argmax"] = {k: argmax[k] for k in CV_METRICS if k in argmax}
    return metrics


# What else decides a classifier's answers besides its files and the texts: the runtime's settings ...
ANSWER_ENV = ("HOTELBOT_RUNTIME", "HOTELBOT_DEVICE", "HOTELBOT_ONNX_THREADS", "HOTELBOT_RUNTIME_RECHECK_MARGIN")
# ... and the libraries that compute them.
ANSWER_PACKAGES = ("onnxruntime", "numpy", "tokenizers", "torch", "transformers")
PACKAGE_DIR = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    """sha256 over this package's source files: another hotelbot build may answer differently."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _machine() -> dict[str, Any]:
    """What of this machine may change the numbers: the architecture, the CPU's instruction-set flags (int8
    kernels differ with them), the core count (the default thread count)."""
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text("utf-8", errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[-1].split()))
                break
    return {
        "arch": platform.machine(),
        "cpu_flags": hashlib.sha256(flags.encode()).hexdigest(),
        "cores": os.cpu_count(),
    }


@functools.lru_cache(maxsize=1)
def _libraries() -> dict[str, str | None]:
    """The installed versions of :data:`ANSWER_PACKAGES` (None: not installed)."""
    packages: dict[str, str | None] = {}
    for name in ANSWER_PACKAGES:
        try:
            packages[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            packages[name] = None
    return packages


def evaluation_key(info: VersionInfo, component: str, data_sha: str | None, metric: str) -> str | None:
    """A digest of everything the classifier's answers on a validation split depend on: its files' recorded
    checksums, the split's checksum, the metric, the runtime's environment settings, the versions of the
    libraries that compute the answers, the machine (:func:`_machine`) and hotelbot's own source. Two
    evaluations with the same key give the same metrics. None when it cannot be known (a split from outside the version,
    a version without recorded files)."""
    files = recorded_files(info, component)
    if data_sha is None or not files:
        return None
    parts = {
        "files": dict(sorted(files.items())),
        "data": data_sha,
        "metric": metric,
        "env": {name: os.environ.get(name, "") for name in ANSWER_ENV},
        "packages": _libraries(),
        "machine": _machine(),
        "code": _code_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _recorded_answers(registry: Any, key: str | None, component: str, metric: str) -> tuple[str, dict[str, Any]] | None:
    """(the version that was evaluated, its classifier metrics) of a recorded validation with evaluation
    ``key``, or None. A record counts only when its version is still in the registry and the key computed
    again from that version's recorded checksums is the same (a record left over from a rebuilt or restored
    version, or edited, is not believed)."""
    if key is None:
        return None
    for record in registry.validation_records():
        metrics = record.get("metrics")
        if record.get("evaluation_key") != key or not isinstance(metrics, dict) or not metrics.get("per_intent"):
            continue
        try:
            source = registry.get(str(record.get("version")))
        except HotelbotError:  # pruned, or a malformed name
            continue
        own_data = source.manifest.files.get(f"data/{VALIDATION_FILE}")
        if source.manifest.corrupt or evaluation_key(source, component, own_data, metric) != key:
            continue
        return str(record.get("reused_from") or source.name), metrics  # where it was measured
    return None


@dataclass
class VersionValidation:
    """`hotelbot validate`: the gated scores (``result``; None when the version holds no gated component) and
    what the other components measured without a gate (``evaluations``, by their evaluation_key)."""

    version: str
    result: ValidationResult | None
    evaluations: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.result is None or self.result.passed

    def to_dict(self) -> dict[str, Any]:
        if self.result is None:
            return {"version": self.version, **self.evaluations}
        return {**self.result.to_dict(), **self.evaluations}


def validate(
    registry: Any, settings: Any, version: str | None = None, data: Any = None, options: dict[str, Any] | None = None
) -> VersionValidation:
    """Everything `hotelbot validate` reports about a version: every component's ungated evaluation (each
    registered component with an evaluation_key that the version holds; ``options`` such as kb_eval go to
    them), then the gated scores (:func:`validate_version`). A version without a gated component passes and
    its evaluations are recorded as its validation."""
    info = registry.require_intact(registry.resolve(version or settings.model_version).name)
    present = components_of(info)
    evaluations: dict[str, Any] = {c.evaluation_key: None for c in registered() if c.evaluation_key}
    warnings: list[str] = []
    for component in registered():
        if component.evaluation_key and component.name in present:
            document, said = component.evaluate(info, settings, options or {})
            evaluations[component.evaluation_key] = document
            warnings += said
    if not any(c.gated and c.name in present for c in registered()):
        registry.record_validation(
            info.name, {"version": info.name, "passed": True, **evaluations, "validated_at": utc_now()}
        )
        return VersionValidation(info.name, None, evaluations, warnings)
    result = validate_version(registry, info.name, settings, data)
    log.info(
        "%s %s=%.4f min=%.2f passed=%s%s",
        result.version,
        result.to_dict()["metric"],
        result.overall_score,
        result.min_score,
        result.passed,
        "".join(f" {k}={v['overall_score']:.4f}" for k, v in result.components.items()),
    )
    return VersionValidation(info.name, result, evaluations, warnings)


def _record(registry: Any, settings: Any, result: ValidationResult) -> ValidationResult:
    registry.record_validation(result.version, result.to_dict())
    stamp = result.validated_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    atomic_write_json(
        Path(settings.paths.reports) / "validation_reports" / f"{result.version}-{stamp}.json", result.to_dict()
    )
    return result


def cross_validate(
    registry: Any, version: str | None, settings: Any, folds: int, listener: Any = None
) -> dict[str, Any]:
    """Stratified K-fold CV with the version's training config over its full data (train + validation).

    Each fold fine-tunes a fresh model from the base model (nothing is published) and chooses its out-of-scope
    detector on the fold's held-out part as ``train`` does (``training_config.oos_detector``: the softmax
    threshold, or the kNN detector over the fold's training texts), so that the figures are those of the
    procedure that trained the version. Returns the mean and standard deviation of every metric, per-fold
    scores (with the detector each fold chose), how often each detector was chosen, and the confusion matrix
    summed over folds.
    """
    import numpy as np  # numpy and scikit-learn only for a cross-validation
    from sklearn.model_selection import StratifiedKFold

    if folds < 2:
        raise DataError("--cv needs at least 2 folds")
    info = registry.resolve(version or settings.model_version)
    examples = read_jsonl_examples(info.path / "data" / TRAIN_FILE) + read_jsonl_examples(
        info.path / "data" / VALIDATION_FILE
    )
    y = [e.intent for e in examples]
    smallest = min(y.count(label) for label in set(y))
    if smallest < folds:
        raise DataError(f"--cv {folds}: the smallest intent has only {smallest} examples; use at most {smallest} folds")
    cfg = TrainingConfig.from_dict(
        (info.metadata.get("config") or {}).get("training_config") or settings.training.to_dict()
    )
    labels = sorted(set(y))
    emit = emitter(listener)
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
            fit = fit_classifier(
                cfg, settings.validation.metric, train, validation, labels, settings.paths.models_dir, listener=listener
            )
            detector = choose_for_fit(fit, cfg, train, validation, settings.validation.metric)
            fold_metrics = detector.metrics
            cm = fold_metrics["confusion_matrix"]
            index = {label: i for i, label in enumerate(cm["labels"])}
            for a, true in enumerate(labels):
                for b, pred in enumerate(labels):
                    if true in index and pred in index:
                        matrix[a, b] += cm["matrix"][index[true]][index[pred]]
            row = {k: fold_metrics.get(k) for k in CV_METRICS + ("overall_score",)}
            row["out_of_scope_detector"] = detector.method
            row["out_of_scope_threshold"] = detector.record.get("threshold")
            if detector.record.get("k") is not None:
                row["out_of_scope_knn_k"] = detector.record["k"]
            per_fold.append(row)
            tracker.log_metrics({f"fold_{k}": v for k, v in row.items() if isinstance(v, float)}, step=fold)
        summary = {}
        for key in CV_METRICS + ("overall_score",):
            values = [r[key] for r in per_fold if r.get(key) is not None]
            if values:
                summary[key] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    "min": float(np.min(values)),
                    "max": float(np.max(values)),
                }
        tracker.log_metrics({f"cv_mean_{k}": v["mean"] for k, v in summary.items()}, step=folds)
    return {
        "version": info.name,
        "folds": folds,
        "examples": len(examples),
        "metric": settings.validation.metric,
        "summary": summary,
        "per_fold": per_fold,
        "out_of_scope_detector": {
            "mode": cfg.oos_detector,
            "chosen": {m: sum(r["out_of_scope_detector"] == m for r in per_fold) for m in (SOFTMAX, KNN)},
        },
        "confusion_matrix": {"labels": labels, "matrix": matrix.tolist()},
        "mlflow_run_id": tracker.run_id,
    }
