"""Fine-tuning with the Hugging Face Trainer, MLflow tracking, system metrics and progress events.

:func:`train_classifier` is the one entry point: prepared data + settings in, a new immutable
registry version out. It reports progress by calling ``listener(TrainingEvent)``; the CLI renders
those events with Rich, tests collect them in a list. Nothing here prints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ._atomic import atomic_write_json
from .config import Settings
from .data import read_prepared, write_prepared
from .errors import ConfigError, HotelbotError
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
    """A thin wrapper: one run per training; logging failures are logged, never fatal."""

    def __init__(self, tracking_uri: str, experiment: str = EXPERIMENT) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id: str | None = None
        self._mlflow: Any = None

    @contextlib.contextmanager
    def run(self, run_name: str, tags: dict[str, str] | None = None) -> Iterator["MlflowTracker"]:
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables"
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_experiment(self.experiment)
            active = mlflow.start_run(run_name=run_name, tags=tags or {})
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
    return ds.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
                  batched=True, remove_columns=["text"])


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


def train_classifier(
    settings: Settings,
    data_dir: Path,
    registry: ModelRegistry,
    listener: Listener | None = None,
    *,
    force: bool = False,
) -> TrainResult:
    """Fine-tune ``settings.training.base_model`` on the prepared data; publish a new registry version."""
    prepared = read_prepared(data_dir)
    cfg = settings.training
    config_record = {"training_config": cfg.to_dict(), "validation_metric": settings.validation.metric}
    if not force:
        match = registry.find_matching(prepared.fingerprint, config_record)
        if match is not None:
            raise AlreadyTrainedError(match.name)
    emit = listener or (lambda event: None)

    import torch
    from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments, set_seed

    from .evaluation import classification_metrics
    from .modeling import ClassifierConfig, SentenceClassifier, load_base_encoder, resolve_base_model, save_classifier, save_torch_file, should_freeze

    emit(TrainingEvent("status", message=f"resolving base model {cfg.base_model}"))
    resolved = resolve_base_model(cfg.base_model, settings.paths.models_dir)
    set_seed(cfg.seed)
    tokenizer, encoder = load_base_encoder(resolved)
    pooling = cfg.pooling or resolved.pooling
    labels = list(prepared.labels)
    label_to_id = {label: i for i, label in enumerate(labels)}
    model = SentenceClassifier(
        encoder,
        ClassifierConfig(labels=labels, pooling=pooling, query_prefix=resolved.query_prefix,
                         max_length=cfg.max_length, dropout=cfg.dropout, base_model=cfg.base_model),
    )
    frozen = model.freeze_word_embeddings() if should_freeze(cfg.freeze_embeddings, encoder) else 0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_ds = _tokenized(prepared.train, tokenizer, resolved.query_prefix, cfg.max_length, label_to_id)
    val_ds = _tokenized(prepared.validation, tokenizer, resolved.query_prefix, cfg.max_length, label_to_id)

    def compute_metrics(pred) -> dict[str, float]:
        y_pred = [labels[i] for i in pred.predictions.argmax(axis=-1)]
        y_true = [labels[i] for i in pred.label_ids]
        full = classification_metrics(y_true, y_pred, labels, settings.validation.metric)
        return {k: full[k] for k in SCALAR_METRICS}

    monitor = SystemMonitor()
    tracker = MlflowTracker(settings.paths.tracking_uri)
    start = time.monotonic()
    with registry.staging() as staged, tracker.run(run_name=f"classifier-{prepared.fingerprint[:8]}",
                                                   tags={"hotelbot.component": "classifier"}):
        tracker.log_params({**cfg.to_dict(), "num_labels": len(labels), "train_size": len(prepared.train),
                            "validation_size": len(prepared.validation), "dataset_fingerprint": prepared.fingerprint,
                            "frozen_parameters": frozen, "trainable_parameters": trainable,
                            "base_model_location": resolved.location})
        steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
        args = TrainingArguments(
            output_dir=str(staged / ".trainer"),
            num_train_epochs=cfg.epochs,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=max(cfg.batch_size, 32),
            learning_rate=cfg.learning_rate,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup_ratio,
            lr_scheduler_type="linear",
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="steps",
            logging_steps=max(1, min(10, steps_per_epoch // 2)),
            report_to="none",
            seed=cfg.seed,
            data_seed=cfg.seed,
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        callbacks = _callbacks(listener, tracker, monitor, settings.validation.metric,
                               cfg.early_stopping_patience, cfg.epochs)
        trainer_cls = _make_trainer_class()
        trainer_cls.head_learning_rate = cfg.head_learning_rate
        trainer = trainer_cls(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                              data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
                              callbacks=callbacks)
        # The Trainer prints raw log dicts to stdout when tqdm is off: stdout is for results (--json).
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        best = callbacks[1]
        best.restore(model)
        duration = time.monotonic() - start
        model.eval()

        emit(TrainingEvent("status", message="evaluating the best epoch and saving the version"))
        with torch.inference_mode():
            output = trainer.predict(val_ds)
        y_pred = [labels[i] for i in output.predictions.argmax(axis=-1)]
        y_true = [labels[i] for i in output.label_ids]
        metrics = classification_metrics(y_true, y_pred, labels, settings.validation.metric)
        tracker.log_metrics({f"final_{k}": metrics[k] for k in SCALAR_METRICS}, step=trainer.state.global_step)

        shutil.rmtree(staged / ".trainer", ignore_errors=True)
        save_classifier(model, tokenizer, staged / "model")
        save_torch_file(model, staged / "intent_classifier.pt")
        write_prepared(prepared, staged / "data")
        atomic_write_json(staged / "metrics.json", metrics)
        atomic_write_json(staged / "training_history.json", {"epochs": best.history,
                                                             "log": trainer.state.log_history})
        metadata = {
            "kind": "intent-classifier",
            "components": ["classifier"],
            "parent": None,
            "base_model": {"spec": cfg.base_model, "location": resolved.location,
                           "query_prefix": resolved.query_prefix, "pooling": pooling},
            "labels": labels,
            "dataset_fingerprint": prepared.fingerprint,
            "dataset": {k: prepared.summary.get(k) for k in ("source", "train_size", "validation_size", "num_labels")},
            "config": config_record,
            "metrics": {**{k: metrics[k] for k in SCALAR_METRICS}, "overall_score": metrics["overall_score"],
                        "metric": metrics["metric"], "best_epoch": best.best_epoch,
                        **{k: metrics[k] for k in ("in_scope_accuracy", "out_of_scope_recall") if k in metrics}},
            "training": {"duration_seconds": round(duration, 2), "epochs_run": trainer.state.epoch,
                         "steps": trainer.state.global_step, "frozen_parameters": frozen,
                         "trainable_parameters": trainable},
            "mlflow_run_id": tracker.run_id,
            "mlflow_tracking_uri": settings.paths.tracking_uri,
            "library_versions": library_versions(),
            "hardware": hardware(monitor),
        }
        info = registry.publish(staged, metadata)
        tracker.set_tags({"hotelbot.version": info.name})
    monitor.close()
    log.info("trained %s: %s=%.4f in %.1fs", info.name, metrics["metric"], metrics["overall_score"], duration)
    emit(TrainingEvent("end", trainer.state.global_step, trainer.state.max_steps, trainer.state.epoch or 0.0,
                       cfg.epochs, metrics={k: metrics[k] for k in SCALAR_METRICS}, message=info.name))
    return TrainResult(info, metrics, duration, tracker.run_id, best.history)


__all__ = ["TrainingEvent", "TrainResult", "train_classifier", "AlreadyTrainedError"]
