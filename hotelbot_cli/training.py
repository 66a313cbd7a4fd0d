"""Fine-tuning with the Hugging Face Trainer, MLflow tracking, system metrics and progress events.

:func:`train_classifier` is the one entry point: prepared data + settings in, a new immutable
registry version out. It reports progress by calling ``listener(TrainingEvent)``; the CLI renders
those events with Rich, tests collect them in a list. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ._atomic import atomic_write_json
from .config import Settings, TrainingConfig
from .data import (TRAIN_FILE, VALIDATION_FILE, Example, PreparedData, read_jsonl_examples, read_prepared,
                   write_prepared)
from .data import fingerprint as fingerprint_examples
from .components import FitStats
from .errors import ConfigError, DataError, HotelbotError
from .registry import ModelRegistry, VersionInfo

log = logging.getLogger("hotelbot.training")
EXPERIMENT = "hotelbot-classifier"
SCALAR_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "weighted_f1")


@dataclass
class TrainingEvent:
    """One thing worth showing: kind is begin, step, evaluate, end or status."""

    kind: str
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    total_epochs: int = 0
    loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    system: dict[str, float] = field(default_factory=dict)
    message: str = ""


Listener = Callable[[TrainingEvent], None]


@dataclass
class TrainResult:
    version: VersionInfo
    metrics: dict[str, Any]
    duration_seconds: float
    mlflow_run_id: str | None
    history: list[dict[str, Any]]


class AlreadyTrainedError(HotelbotError):
    """Same data fingerprint and config as an existing version (train --force retrains)."""

    exit_code = 0

    def __init__(self, version: str) -> None:
        super().__init__(f"version {version} was trained on the same data with the same config; "
                         "nothing to do (use --force to train again)")
        self.version = version


# ---------------------------------------------------------------- system metrics


class SystemMonitor:
    """CPU %, RAM and process RSS via psutil; GPU utilisation and memory via pynvml when a GPU exists."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)
        self._nvml = None
        self._gpus: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._gpus = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - no driver / no GPU: CPU metrics only
            self._gpus = []

    def sample(self) -> dict[str, float]:
        vm = self._psutil.virtual_memory()
        out = {
            "system/cpu_percent": float(self._psutil.cpu_percent(None)),
            "system/ram_used_mb": vm.used / 2**20,
            "system/ram_percent": float(vm.percent),
            "system/process_rss_mb": self._process.memory_info().rss / 2**20,
        }
        for i, handle in enumerate(self._gpus):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                out[f"system/gpu{i}_utilization_percent"] = float(util.gpu)
                out[f"system/gpu{i}_memory_used_mb"] = mem.used / 2**20
                out[f"system/gpu{i}_memory_percent"] = 100.0 * mem.used / max(mem.total, 1)
            except Exception:  # noqa: BLE001
                continue
        return out

    def gpu_names(self) -> list[str]:
        names = []
        for handle in self._gpus:
            try:
                name = self._nvml.nvmlDeviceGetName(handle)
                names.append(name.decode() if isinstance(name, bytes) else str(name))
            except Exception:  # noqa: BLE001
                names.append("unknown GPU")
        return names

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()


# ---------------------------------------------------------------- MLflow


class MlflowTracker:
    """A thin wrapper: one run per training; logging failures are logged, never fatal. A run started while
    another is active is nested under it (a child run in the parent's experiment)."""

    def __init__(self, tracking_uri: str, experiment: str = EXPERIMENT) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id: str | None = None
        self._mlflow: Any = None

    @contextlib.contextmanager
    def run(self, run_name: str, tags: dict[str, str] | None = None, nested: bool = False) -> Iterator["MlflowTracker"]:
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables"
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            # inside another run (train --model-type all, HPO): a child run in the parent's experiment
            nested = nested or mlflow.active_run() is not None
            if not nested:
                mlflow.set_tracking_uri(self.tracking_uri)
                mlflow.set_experiment(self.experiment)
            active = mlflow.start_run(run_name=run_name, tags=tags or {}, nested=nested)
        except Exception as exc:  # noqa: BLE001 - mlflow raises many types for a bad URI
            raise ConfigError(f"cannot use MLflow tracking store {self.tracking_uri}: {str(exc).splitlines()[0]}",
                              hint="set MLFLOW_TRACKING_URI or HOTELBOT_HOME") from None
        self._mlflow = mlflow
        self.run_id = active.info.run_id
        status = "FAILED"
        try:
            yield self
            status = "FINISHED"
        finally:
            with contextlib.suppress(Exception):
                mlflow.end_run(status=status)

    def _safe(self, fn: str, *args: Any, **kwargs: Any) -> None:
        if self._mlflow is None:
            return
        try:
            getattr(self._mlflow, fn)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            log.warning("mlflow %s failed: %s", fn, exc)

    def log_params(self, params: dict[str, Any]) -> None:
        self._safe("log_params", {k: str(v)[:500] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {k.replace("/", "_") if k.startswith("eval/") else k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if clean:
            self._safe("log_metrics", clean, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._safe("set_tags", {k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path) -> None:
        self._safe("log_artifact", str(path))


# ---------------------------------------------------------------- Trainer callbacks


def _callbacks(listener: Listener | None, tracker: MlflowTracker | None, monitor: SystemMonitor,
               metric: str, patience: int, total_epochs: int) -> list[Any]:
    from transformers import TrainerCallback

    emit = listener or (lambda event: None)

    class ProgressAndMetricsCallback(TrainerCallback):
        """Progress events for the UI, per-step loss/lr and system metrics for MLflow."""

        def on_train_begin(self, args, state, control, **kwargs):
            emit(TrainingEvent("begin", 0, state.max_steps, 0.0, total_epochs, system=monitor.sample()))

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            system = monitor.sample()
            if tracker is not None:
                tracker.log_metrics({**{k: v for k, v in logs.items() if not k.startswith("eval_")}, **system},
                                    step=state.global_step)
            if "loss" in logs:
                emit(TrainingEvent("step", state.global_step, state.max_steps, state.epoch or 0.0, total_epochs,
                                   loss=float(logs["loss"]), system=system))

        def on_step_end(self, args, state, control, **kwargs):
            emit(TrainingEvent("step", state.global_step, state.max_steps, state.epoch or 0.0, total_epochs))

    class BestModelCallback(TrainerCallback):
        """Keep the best epoch's trainable weights in memory and stop after ``patience`` bad epochs.

        Saving a full checkpoint each epoch would write hundreds of MB for a large-vocabulary model; the
        frozen embeddings never change, so keeping a copy of only the trainable tensors is enough.
        """

        def __init__(self) -> None:
            self.best_score = -math.inf
            self.best_epoch = 0.0
            self.best_state: dict[str, Any] | None = None
            self.bad_epochs = 0
            self.history: list[dict[str, Any]] = []

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            metrics = metrics or {}
            score = float(metrics.get(f"eval_{metric}", -math.inf))
            record = {"epoch": state.epoch, "step": state.global_step,
                      **{k[5:]: float(v) for k, v in metrics.items() if k.startswith("eval_")}}
            self.history.append(record)
            if tracker is not None:
                tracker.log_metrics({f"eval_{k}": v for k, v in record.items() if k not in ("epoch", "step")},
                                    step=state.global_step)
            if score > self.best_score:
                self.best_score, self.best_epoch, self.bad_epochs = score, state.epoch, 0
                self.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            else:
                self.bad_epochs += 1
                if patience and self.bad_epochs >= patience:
                    control.should_training_stop = True
            emit(TrainingEvent("evaluate", state.global_step, state.max_steps, state.epoch or 0.0, total_epochs,
                               metrics={k: v for k, v in record.items() if k in SCALAR_METRICS + ("loss",)},
                               message="stopping early" if control.should_training_stop else ""))

        def restore(self, model: Any) -> None:
            if self.best_state is None:
                return
            params = dict(model.named_parameters())
            import torch

            with torch.no_grad():
                for name, value in self.best_state.items():
                    params[name].copy_(value)

    return [ProgressAndMetricsCallback(), BestModelCallback()]


# ---------------------------------------------------------------- training


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("hotelbot-cli", "torch", "transformers", "tokenizers", "datasets", "scikit-learn", "mlflow-skinny",
                 "mlflow", "safetensors", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def hardware(monitor: SystemMonitor) -> dict[str, Any]:
    import psutil
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": monitor.gpu_names(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def _tokenized(examples, tokenizer, prefix: str, max_length: int, label_to_id: dict[str, int]):
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # the Rich bar is the progress display; stderr stays readable in CI logs
    ds = Dataset.from_dict({"text": [prefix + e.text for e in examples],
                            "label": [label_to_id[e.intent] for e in examples]})

    def encode(batch):
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        out["length"] = [len(ids) for ids in out["input_ids"]]  # for group_by_length; the collator drops it
        return out
    return ds.map(encode, batched=True, remove_columns=["text"])


def _make_trainer_class():
    from transformers import Trainer

    class HotelbotTrainer(Trainer):
        """Two learning rates: the pretrained encoder's and a larger one for the new head."""

        head_learning_rate: float = 3e-3

        def create_optimizer(self, model=None):
            import torch

            if self.optimizer is None:
                model = self.model if model is None else model
                decay = set(self.get_decay_parameter_names(model))
                groups: dict[tuple[bool, bool], list[Any]] = {}
                for name, param in model.named_parameters():
                    if param.requires_grad:
                        groups.setdefault((name.startswith("head."), name in decay), []).append(param)
                self.optimizer = torch.optim.AdamW(
                    [
                        {"params": params,
                         "lr": self.head_learning_rate if is_head else self.args.learning_rate,
                         "weight_decay": self.args.weight_decay if decays else 0.0}
                        for (is_head, decays), params in groups.items()
                    ],
                    lr=self.args.learning_rate,
                )
            return self.optimizer

    return HotelbotTrainer


def training_arguments(cfg: Any, output_dir: str, train_size: int, *, logs_per_epoch: int = 2,
                       **overrides: Any) -> Any:
    """The TrainingArguments every hotelbot fit shares (classifier, entities, generator): evaluation each
    epoch, no checkpoints on disk (the best epoch is kept in memory), seeded data order, linear decay
    after warmup, no tqdm and no reporters (the Rich display and MLflow get their own callbacks)."""
    import torch
    from transformers import TrainingArguments

    steps_per_epoch = math.ceil(train_size / cfg.batch_size)
    settings: dict[str, Any] = dict(
        output_dir=output_dir, num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=max(cfg.batch_size, 32), learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio, lr_scheduler_type="linear",
        eval_strategy="epoch", save_strategy="no", logging_strategy="steps",
        logging_steps=max(1, min(10, steps_per_epoch // logs_per_epoch)), report_to="none", seed=cfg.seed,
        data_seed=cfg.seed, disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    return TrainingArguments(**{**settings, **overrides})


@dataclass
class TrainedEncoder:
    trainer: Any
    best: Any            # the BestModelCallback: history, best_epoch
    duration: float      # training only, seconds
    validation: Any      # trainer.predict(validation) with the best epoch's weights


def train_best_epoch(cfg: Any, model: Any, scratch_prefix: str, train_ds: Any, val_ds: Any, collator: Any,
                     compute_metrics: Callable[[Any], dict[str, float]], metric: str, *,
                     listener: "Listener | None", tracker: "MlflowTracker | None", monitor: "SystemMonitor",
                     extra_callbacks: Sequence[Any] = (), **argument_overrides: Any) -> TrainedEncoder:
    """Fine-tune an encoder with a new head (two learning rates), early stopping on validation ``metric``,
    the best epoch's weights restored, then one prediction pass over the validation split."""
    import tempfile

    import torch
    from transformers import PrinterCallback

    emit = listener or (lambda event: None)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=scratch_prefix) as scratch:
        args = training_arguments(cfg, scratch, len(train_ds), **argument_overrides)
        callbacks = _callbacks(listener, tracker, monitor, metric, cfg.early_stopping_patience, cfg.epochs)
        trainer_cls = _make_trainer_class()
        trainer_cls.head_learning_rate = cfg.head_learning_rate
        trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                              data_collator=collator, compute_metrics=compute_metrics,
                              callbacks=callbacks + list(extra_callbacks))
        # The Trainer prints raw log dicts to stdout when tqdm is off: stdout is for results (--json).
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        best = callbacks[1]
        best.restore(model)
        duration = time.monotonic() - start
        model.eval()
        emit(TrainingEvent("status", message="evaluating the best epoch"))
        with torch.inference_mode():
            output = trainer.predict(val_ds)
    return TrainedEncoder(trainer, best, duration, output)


# ---------------------------------------------------------------- out-of-scope threshold


def calibrate_threshold(probs: Any, y_true: list[str], labels: list[str], metric: str) -> tuple[float | None, dict]:
    """Choose the confidence threshold that maximises ``metric`` over all intents, out_of_scope included.

    Below the threshold a prediction becomes out_of_scope. Only meaningful when the validation split
    has out_of_scope examples; otherwise returns (None, argmax metrics). Ties go to the lowest threshold.
    """
    import numpy as np

    from .data import OUT_OF_SCOPE
    from .evaluation import classification_metrics

    probs = np.asarray(probs)
    argmax = [labels[i] for i in probs.argmax(axis=1)]
    base = classification_metrics(y_true, argmax, labels, metric)
    if OUT_OF_SCOPE not in labels or OUT_OF_SCOPE not in y_true:
        return None, base
    confidence = probs.max(axis=1)
    best_t, best_score = 0.0, base[metric]
    for t in np.unique(np.round(confidence, 3)):
        if t <= 0 or t >= 1:
            continue
        pred = [OUT_OF_SCOPE if c < t else p for p, c in zip(argmax, confidence)]
        score = classification_metrics(y_true, pred, labels, metric)[metric]
        if score > best_score + 1e-12:
            best_t, best_score = float(t), score
    return (best_t if best_t > 0 else None), base


def apply_threshold(probs: Any, labels: list[str], threshold: float | None) -> list[str]:
    import numpy as np

    from .data import OUT_OF_SCOPE

    probs = np.asarray(probs)
    argmax = [labels[i] for i in probs.argmax(axis=1)]
    if threshold is None:
        return argmax
    return [OUT_OF_SCOPE if c < threshold else p for p, c in zip(argmax, probs.max(axis=1))]


# ---------------------------------------------------------------- fitting


@dataclass
class FitResult(FitStats):
    model: Any
    tokenizer: Any
    resolved: Any
    labels: list[str]
    metrics: dict[str, Any]            # with the out-of-scope threshold applied
    argmax_metrics: dict[str, Any]     # plain argmax, for comparison
    threshold: float | None


def _softmax(logits: Any) -> Any:
    import numpy as np

    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _initial_model(cfg: TrainingConfig, labels: list[str], models_dir: Path, parent_dir: Path | None):
    """A fresh classifier on the base model, or (incremental) the parent's weights with its head extended."""
    import torch

    from .modeling import (ClassifierConfig, SentenceClassifier, load_base_encoder, load_classifier,
                           resolve_base_model)

    if parent_dir is not None:
        parent, tokenizer = load_classifier(parent_dir)
        old = parent.classifier_config
        missing = [label for label in old.labels if label not in labels]
        if missing:
            raise DataError(f"incremental training keeps every intent of the parent; missing from the data: "
                            f"{', '.join(missing)}")
        new_labels = list(old.labels) + [label for label in labels if label not in old.labels]
        model = SentenceClassifier(parent.encoder, ClassifierConfig(
            labels=new_labels, pooling=old.pooling, query_prefix=old.query_prefix, max_length=cfg.max_length,
            dropout=cfg.dropout, base_model=old.base_model))
        with torch.no_grad():  # old rows kept, new rows freshly initialised
            model.head.weight[: len(old.labels)] = parent.head.weight
            model.head.bias[: len(old.labels)] = parent.head.bias
        resolved = {"spec": old.base_model, "location": str(parent_dir), "query_prefix": old.query_prefix,
                    "pooling": old.pooling}
        return model, tokenizer, resolved
    base = resolve_base_model(cfg.base_model, models_dir)
    tokenizer, encoder = load_base_encoder(base)
    model = SentenceClassifier(encoder, ClassifierConfig(
        labels=list(labels), pooling=cfg.pooling or base.pooling, query_prefix=base.query_prefix,
        max_length=cfg.max_length, dropout=cfg.dropout, base_model=cfg.base_model))
    resolved = {"spec": cfg.base_model, "location": base.location, "query_prefix": base.query_prefix,
                "pooling": cfg.pooling or base.pooling}
    return model, tokenizer, resolved


def fit_classifier(cfg: TrainingConfig, metric: str, train: list[Example], validation: list[Example],
                   labels: list[str], models_dir: Path, *, listener: Listener | None = None,
                   tracker: MlflowTracker | None = None, monitor: SystemMonitor | None = None,
                   parent_dir: Path | None = None, extra_callbacks: Sequence[Any] = ()) -> FitResult:
    """Fine-tune one classifier (no registry involved): used by train, HPO trials and CV folds.

    ``extra_callbacks`` are further Trainer callbacks (benchmarks use one to snapshot each epoch).
    """
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, set_seed

    from .evaluation import classification_metrics
    from .modeling import should_freeze

    monitor = monitor or SystemMonitor()
    set_seed(cfg.seed)
    model, tokenizer, resolved = _initial_model(cfg, labels, models_dir, parent_dir)
    labels = list(model.classifier_config.labels)
    label_to_id = {label: i for i, label in enumerate(labels)}
    frozen = model.freeze_word_embeddings() if should_freeze(cfg.freeze_embeddings, model.encoder) else 0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if cfg.class_weights:
        counts = np.bincount([label_to_id[e.intent] for e in train], minlength=len(labels)).astype("float64")
        weights = len(train) / (len(labels) * np.maximum(counts, 1.0))
        model.class_weights = torch.tensor(weights, dtype=torch.float32)
    prefix = model.classifier_config.query_prefix
    train_ds = _tokenized(train, tokenizer, prefix, cfg.max_length, label_to_id)
    val_ds = _tokenized(validation, tokenizer, prefix, cfg.max_length, label_to_id)

    def compute_metrics(pred) -> dict[str, float]:
        y_pred = [labels[i] for i in pred.predictions.argmax(axis=-1)]
        y_true = [labels[i] for i in pred.label_ids]
        full = classification_metrics(y_true, y_pred, labels, metric)
        return {k: full[k] for k in SCALAR_METRICS}

    run = train_best_epoch(
        cfg, model, "hotelbot-trainer-", train_ds, val_ds, DataCollatorWithPadding(tokenizer), compute_metrics,
        metric, listener=listener, tracker=tracker, monitor=monitor, extra_callbacks=extra_callbacks,
        # Random batches padded to their longest text spend ~1.5x the real tokens on short chatbot
        # messages; grouping similar lengths (still shuffled, seeded) trains on fewer pad tokens.
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", length_column_name="length")
    output = run.validation
    probs = _softmax(np.asarray(output.predictions, dtype="float64"))
    y_true = [labels[i] for i in output.label_ids]
    threshold, argmax_metrics = (calibrate_threshold(probs, y_true, labels, metric) if cfg.calibrate_oos_threshold
                                 else (None, classification_metrics(y_true, apply_threshold(probs, labels, None),
                                                                    labels, metric)))
    model.classifier_config.oos_threshold = threshold
    metrics = classification_metrics(y_true, apply_threshold(probs, labels, threshold), labels, metric)
    metrics["out_of_scope_threshold"] = threshold
    return FitResult(model=model, tokenizer=tokenizer, resolved=resolved, labels=labels, metrics=metrics,
                     argmax_metrics=argmax_metrics, threshold=threshold,
                     **FitStats.of(run.trainer, run.best.history, run.best.best_epoch, run.duration, frozen,
                                   trainable))


# ---------------------------------------------------------------- the train command


def _merge_with_parent(prepared: PreparedData, parent: VersionInfo) -> tuple[list[Example], list[Example]]:
    """New data added to the parent's: union by text; a text may not change its intent."""
    parent_train = read_jsonl_examples(parent.path / "data" / TRAIN_FILE)
    parent_val = read_jsonl_examples(parent.path / "data" / VALIDATION_FILE)
    known = {e.text: e.intent for e in parent_train + parent_val}
    for e in prepared.train + prepared.validation:
        if e.text in known and known[e.text] != e.intent:
            raise DataError(f"text {e.text!r} is {e.intent!r} in the new data but {known[e.text]!r} in "
                            f"{parent.name}'s data; fix one of them")
    seen = set(known)
    train = parent_train + [e for e in prepared.train if e.text not in seen]
    seen |= {e.text for e in prepared.train}
    validation = parent_val + [e for e in prepared.validation if e.text not in seen]
    return train, validation


def export_inference(fit: FitResult, model_dir: Path, validation: list[Example], tolerance_points: float,
                     recheck_margin: float | None = None) -> dict[str, Any]:
    """ONNX fp32 + int8 export of the staged model and the runtime choice (onnx_runtime.export_onnx).

    The PyTorch weights stay the source of truth: an export failure is logged and the version runs on torch.
    """
    from .onnx_runtime import DEFAULT_RECHECK_MARGIN, export_onnx

    margin = DEFAULT_RECHECK_MARGIN if recheck_margin is None else recheck_margin
    try:
        return export_onnx(fit.model, fit.tokenizer, model_dir, validation, tolerance_points, recheck_margin=margin)
    except (HotelbotError, ImportError) as exc:
        log.warning("ONNX export failed (%s); the version runs on torch", exc)
        return {"runtime": "torch", "error": str(exc)}


def best_config_path(settings: Settings, fingerprint: str) -> Path:
    base = settings.training.base_model.replace("/", "_").replace(":", "_")
    return settings.paths.home / "hpo" / f"best-{fingerprint[:16]}-{base}.json"


def train_classifier(
    settings: Settings,
    data_dir: Path,
    registry: ModelRegistry,
    listener: Listener | None = None,
    *,
    force: bool = False,
    incremental_from: str | None = None,
    hpo_trials: int = 0,
    use_best_config: bool = True,
    write_report: bool = True,
) -> TrainResult:
    """Fine-tune on the prepared data (optionally from a parent version, optionally with HPO) and publish."""
    emit = listener or (lambda event: None)
    prepared = read_prepared(data_dir)
    cfg = settings.training
    parent = None
    train, validation, fingerprint = prepared.train, prepared.validation, prepared.fingerprint
    if incremental_from is not None:
        parent = registry.require_intact(registry.resolve(incremental_from or None).name)
        train, validation = _merge_with_parent(prepared, parent)
        fingerprint = fingerprint_examples(train, validation)
    labels = sorted({e.intent for e in train + validation})

    best_file = best_config_path(settings, fingerprint)
    if use_best_config and not hpo_trials and best_file.exists():
        best = json.loads(best_file.read_text("utf-8"))
        cfg = replace(cfg, **{k: v for k, v in best["params"].items() if k in cfg.to_dict()})
        emit(TrainingEvent("status", message=f"using the HPO best config from {best_file}"))

    config_record = {"training_config": cfg.to_dict(), "validation_metric": settings.validation.metric,
                     "parent": parent.name if parent else None, "hpo_trials": hpo_trials}
    if not force:
        match = registry.find_matching(fingerprint, config_record)
        if match is not None:
            raise AlreadyTrainedError(match.name)

    metric = settings.validation.metric
    monitor = SystemMonitor()
    tracker = MlflowTracker(settings.paths.tracking_uri)
    parent_dir = parent.path / "model" if parent else None
    hpo_summary = None
    with tracker.run(run_name=f"classifier-{fingerprint[:8]}", tags={"hotelbot.component": "classifier"}):
        tracker.log_params({**cfg.to_dict(), "num_labels": len(labels), "train_size": len(train),
                            "validation_size": len(validation), "dataset_fingerprint": fingerprint,
                            "parent": parent.name if parent else "", "hpo_trials": hpo_trials})
        if hpo_trials:
            from .hpo import run_hpo

            fit, cfg, hpo_summary = run_hpo(cfg, metric, train, validation, labels, settings.paths.models_dir,
                                            hpo_trials, listener=listener, tracker=tracker, monitor=monitor,
                                            parent_dir=parent_dir)
            atomic_write_json(best_file, {"fingerprint": fingerprint, "base_model": cfg.base_model,
                                          "params": hpo_summary["best_params"], "score": hpo_summary["best_score"],
                                          "metric": metric})
            hpo_summary["saved_to"] = str(best_file)
            config_record["training_config"] = cfg.to_dict()
        else:
            fit = fit_classifier(cfg, metric, train, validation, labels, settings.paths.models_dir,
                                 listener=listener, tracker=tracker, monitor=monitor, parent_dir=parent_dir)
        metrics = fit.metrics
        tracker.log_metrics({f"final_{k}": metrics[k] for k in SCALAR_METRICS}, step=fit.steps)
        if fit.threshold is not None:
            tracker.log_metrics({"out_of_scope_threshold": fit.threshold}, step=fit.steps)

        emit(TrainingEvent("status", message="saving the version"))
        from .modeling import save_classifier, save_torch_file

        with registry.staging() as staged:
            save_classifier(fit.model, fit.tokenizer, staged / "model")
            save_torch_file(fit.model, staged / "intent_classifier.pt")
            split = PreparedData(train, validation, fit.labels, fingerprint,
                                 {**prepared.summary, "train_size": len(train), "validation_size": len(validation),
                                  "examples": len(train) + len(validation)}, prepared.warnings)
            write_prepared(split, staged / "data")
            atomic_write_json(staged / "metrics.json", {**metrics, "argmax": {
                k: fit.argmax_metrics[k] for k in SCALAR_METRICS + ("in_scope_accuracy", "out_of_scope_recall")
                if k in fit.argmax_metrics}})
            atomic_write_json(staged / "training_history.json", {"epochs": fit.history, "log": fit.log_history,
                                                                 "hpo": hpo_summary})
            emit(TrainingEvent("status", message="exporting ONNX (fp32 + int8) and choosing the runtime"))
            inference = export_inference(fit, staged / "model", validation, settings.validation.runtime_tolerance_points,
                                         settings.validation.runtime_recheck_margin)
            if "runtimes" in inference:
                from .onnx_runtime import describe_choice

                emit(TrainingEvent("status", message=describe_choice(inference)))
            from .components import carry_over

            carried = carry_over(registry, staged, "classifier")  # a version is a snapshot of every component
            metadata = {
                "kind": "intent-classifier",
                "components": carried["components"],
                "carried_over": carried["carried_over"],
                **{k: v for k, v in carried.items() if k not in ("components", "carried_over", "parent")},
                "parent": parent.name if parent else None,
                "base_model": fit.resolved,
                "labels": fit.labels,
                "out_of_scope_threshold": fit.threshold,
                "dataset_fingerprint": fingerprint,
                "dataset": {"source": prepared.summary.get("source"), "train_size": len(train),
                            "validation_size": len(validation), "num_labels": len(fit.labels)},
                "config": config_record,
                "metrics": {**{k: metrics[k] for k in SCALAR_METRICS}, "overall_score": metrics["overall_score"],
                            "metric": metrics["metric"], "best_epoch": fit.best_epoch,
                            **{k: metrics[k] for k in ("in_scope_accuracy", "out_of_scope_recall") if k in metrics}},
                "training": {"duration_seconds": round(fit.duration, 2), "epochs_run": fit.epochs_run,
                             "steps": fit.steps, "frozen_parameters": fit.frozen,
                             "trainable_parameters": fit.trainable, "class_weights": cfg.class_weights,
                             "hpo": hpo_summary},
                "inference": inference,
                "mlflow_run_id": tracker.run_id,
                "mlflow_tracking_uri": settings.paths.tracking_uri,
                "library_versions": library_versions(),
                "hardware": hardware(monitor),
            }
            report = None
            if write_report:
                from .reporting import build_report_from_dir, write_report_files

                emit(TrainingEvent("status", message="writing the training report"))
                try:
                    report = build_report_from_dir(staged, metadata, registry,
                                                   min_score=settings.validation.min_validation_score)
                    write_report_files(report, staged / "report")
                except Exception as exc:  # noqa: BLE001 - a report must never lose a trained model
                    log.warning("training report failed: %s", exc)
                    report = None
            info = registry.publish(staged, metadata)
        tracker.set_tags({"hotelbot.version": info.name})
        if report is not None:
            from .reporting import write_training_report

            write_training_report(registry, info.name, settings.paths.reports, report=report)
    monitor.close()
    log.info("trained %s: %s=%.4f in %.1fs", info.name, metrics["metric"], metrics["overall_score"], fit.duration)
    emit(TrainingEvent("end", fit.steps, fit.steps, fit.epochs_run, cfg.epochs,
                       metrics={k: metrics[k] for k in SCALAR_METRICS}, message=info.name))
    return TrainResult(info, metrics, fit.duration, tracker.run_id, fit.history)


__all__ = ["TrainingEvent", "TrainResult", "train_classifier", "fit_classifier", "AlreadyTrainedError",
           "calibrate_threshold", "apply_threshold"]
