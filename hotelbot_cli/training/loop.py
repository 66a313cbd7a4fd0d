"""The ONE Hugging Face Trainer loop every fit shares (intent classifier, sentiment, entities, generator):
two learning rates (pretrained weights and new ones), evaluation each epoch, the best epoch's trainable
weights kept in memory and restored, early stopping, progress events and MLflow metrics.

The defaults are the encoder fits' (a new ``head.`` with ``cfg.head_learning_rate``, the model's own loss,
the highest validation metric wins, one prediction pass at the end); the generator overrides them (its
token NLL, the lowest validation loss wins, a second learning rate for its pretrained weights).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence, cast

from ..errors import ConfigError
from .distributed import COLLECTIVE_TIMEOUT_SECONDS, leave_if_secondary, training_on_cpu
from .events import Listener, TrainingEvent, emitter
from .monitor import SystemMonitor
from .tracking import MlflowTracker

# The metrics an "evaluate" event carries to the progress display (besides the loss).
EVENT_METRICS = (
    "accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "weighted_f1",
    "sentiment_macro_f1",
    "entities_micro_f1",
    "nlu_score",
)


# derive_metrics(eval metrics) -> further "eval_..." metrics, added before the best epoch is judged.
DeriveMetrics = Callable[[Mapping[str, Any]], Mapping[str, float]]
# learning_rate_of(parameter name, parameter) -> its own learning rate, None for ``args.learning_rate``.
LearningRateOf = Callable[[str, Any], "float | None"]
# batch_loss(model, inputs) -> the batch's mean loss (a scalar tensor), instead of the model's own loss.
BatchLoss = Callable[[Any, Mapping[str, Any]], Any]


class LoopCallbacks(NamedTuple):
    """The loop's own Trainer callbacks; iterating gives them in the order the Trainer must call them."""

    progress: Any  # progress events and per-step MLflow metrics
    best: Any  # BestModelCallback: history, best_epoch, best_score, restore(model)


def progress_callbacks(
    listener: Listener | None,
    tracker: MlflowTracker | None,
    monitor: SystemMonitor,
    metric: str,
    patience: int,
    total_epochs: int,
    *,
    greater_is_better: bool = True,
    derive_metrics: DeriveMetrics | None = None,
) -> LoopCallbacks:
    """``metric``: the validation metric (without "eval_") whose best epoch is kept: the highest, or the
    lowest when not ``greater_is_better`` (ties keep the earlier epoch). ``derive_metrics`` adds metrics
    to each evaluation's (in place) before they are judged and recorded."""
    from transformers import TrainerCallback

    emit = emitter(listener)

    class ProgressAndMetricsCallback(TrainerCallback):
        """Progress events for the UI, per-step loss/lr and system metrics for MLflow."""

        def on_train_begin(self, args, state, control, **kwargs):
            emit(TrainingEvent("begin", 0, state.max_steps, 0.0, total_epochs, system=monitor.sample()))

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = dict(logs or {})
            system = monitor.sample()
            if tracker is not None:
                tracker.log_metrics(
                    {**{k: v for k, v in logs.items() if not k.startswith("eval_")}, **system}, step=state.global_step
                )
            if "loss" in logs:
                emit(
                    TrainingEvent(
                        "step",
                        state.global_step,
                        state.max_steps,
                        state.epoch or 0.0,
                        total_epochs,
                        loss=float(logs["loss"]),
                        system=system,
                    )
                )

        def on_step_end(self, args, state, control, **kwargs):
            emit(TrainingEvent("step", state.global_step, state.max_steps, state.epoch or 0.0, total_epochs))

    class BestModelCallback(TrainerCallback):
        """Keep the best epoch's trainable weights in memory and stop after ``patience`` bad epochs.

        Saving a full checkpoint each epoch would write hundreds of MB for a large-vocabulary model; the
        frozen embeddings never change, so keeping a copy of only the trainable tensors is enough.
        """

        def __init__(self) -> None:
            self.best_score = -math.inf if greater_is_better else math.inf
            self.best_epoch = 0.0
            self.best_state: dict[str, Any] | None = None
            self.bad_epochs = 0
            self.history: list[dict[str, Any]] = []

        def improves(self, score: float) -> bool:
            return score > self.best_score if greater_is_better else score < self.best_score

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            if derive_metrics is not None and metrics is not None:
                metrics.update(derive_metrics(metrics))
            metrics = metrics or {}
            score = float(metrics.get(f"eval_{metric}", -math.inf if greater_is_better else math.inf))
            record = {
                "epoch": state.epoch,
                "step": state.global_step,
                **{k[5:]: float(v) for k, v in metrics.items() if k.startswith("eval_")},
            }
            self.history.append(record)
            if tracker is not None:
                tracker.log_metrics(
                    {f"eval_{k}": v for k, v in record.items() if k not in ("epoch", "step")}, step=state.global_step
                )
            if self.improves(score):
                self.best_score, self.best_epoch, self.bad_epochs = score, state.epoch, 0
                self.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            else:
                self.bad_epochs += 1
                if patience and self.bad_epochs >= patience:
                    control.should_training_stop = True
            emit(
                TrainingEvent(
                    "evaluate",
                    state.global_step,
                    state.max_steps,
                    state.epoch or 0.0,
                    total_epochs,
                    metrics={k: v for k, v in record.items() if k in EVENT_METRICS + ("loss",)},
                    message="stopping early" if control.should_training_stop else "",
                )
            )

        def restore(self, model: Any) -> None:
            if self.best_state is None:
                return
            params = dict(model.named_parameters())
            import torch

            with torch.no_grad():
                for name, value in self.best_state.items():
                    params[name].copy_(value)

    return LoopCallbacks(ProgressAndMetricsCallback(), BestModelCallback())


def head_learning_rate(rate: float) -> LearningRateOf:
    """The encoder fits' rule: the new head's parameters (``head.*``) learn at ``rate``."""
    return lambda name, param: rate if name.startswith("head.") else None


def _make_trainer_class(learning_rate_of: LearningRateOf, batch_loss: BatchLoss | None = None):
    from transformers import Trainer

    class HotelbotTrainer(Trainer):
        """Two learning rates: ``args.learning_rate`` and the one ``learning_rate_of`` gives a parameter."""

        def create_optimizer(self, model=None):
            import torch

            if self.optimizer is None:
                model = self.model if model is None else model
                decay = set(self.get_decay_parameter_names(model))
                # One group per (own learning rate or None, decays), in the order parameters first appear.
                groups: dict[tuple[float | None, bool], list[Any]] = {}
                for name, param in model.named_parameters():
                    if param.requires_grad:
                        groups.setdefault((learning_rate_of(name, param), name in decay), []).append(param)
                self.optimizer = torch.optim.AdamW(
                    [
                        {
                            "params": params,
                            "lr": self.args.learning_rate if rate is None else rate,
                            "weight_decay": self.args.weight_decay if decays else 0.0,
                        }
                        for (rate, decays), params in groups.items()
                    ],
                    lr=self.args.learning_rate,
                )
            return self.optimizer

    if batch_loss is None:
        return HotelbotTrainer

    class OwnLossTrainer(HotelbotTrainer):
        """The loss is ``batch_loss(model, inputs)``: a mean over the batch, not normalised by
        ``num_items_in_batch``, so the Trainer scales it for gradient accumulation itself."""

        loss_is_scaled_for_ga = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = cast(BatchLoss, batch_loss)(model, inputs)  # not None: checked above (mypy loses it here)
            return (loss, {"loss": loss}) if return_outputs else loss

    return OwnLossTrainer


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): there, autocast to bf16 trains the
    packaged e5 about 1.5x faster; elsewhere it would be emulated, and slower than float32."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and bool(check()) for check in checks)


def check_precision(cfg: Any, auto_bf16: bool = False) -> str:
    """The precision to train with: ``cfg.precision``, with ``auto`` resolved (bf16 where ``auto_bf16`` (the
    intent classifier) on a CPU with native bfloat16, see :func:`cpu_has_bf16`; fp32 otherwise), when this
    machine can train with it (fp16 needs CUDA; bf16 on CUDA needs a GPU with bf16); ConfigError otherwise. The
    pipeline and the HPO worker call it before anything is trained or logged."""
    precision = getattr(cfg, "precision", "fp32")
    if precision == "fp32":
        return precision
    import torch

    on_gpu = torch.cuda.is_available() and not training_on_cpu()
    if precision == "auto":
        return "bf16" if auto_bf16 and not on_gpu and cpu_has_bf16() else "fp32"
    if precision == "fp16" and not on_gpu:
        raise ConfigError(
            "--fp16 needs a CUDA GPU"
            + (
                " and torch sees none"
                if not torch.cuda.is_available()
                else f" (HOTELBOT_DEVICE={os.environ.get('HOTELBOT_DEVICE')})"
            ),
            hint="use --bf16 on a CPU, or neither",
        )
    if precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError("--bf16: this GPU has no bfloat16 support", hint="use --fp16 instead")
    return precision


def training_arguments(cfg: Any, output_dir: str, train_size: int, *, logs_per_epoch: int = 2, **overrides: Any) -> Any:
    """The TrainingArguments every hotelbot fit shares (classifier, entities, generator): evaluation each
    epoch, no checkpoints on disk (the best epoch is kept in memory), seeded data order, linear decay
    after warmup, no tqdm and no reporters (the Rich display and MLflow get their own callbacks)."""
    import torch
    from transformers import TrainingArguments

    steps_per_epoch = math.ceil(train_size / cfg.batch_size)
    precision = check_precision(cfg)
    settings: dict[str, Any] = dict(
        output_dir=output_dir,
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
        logging_steps=max(1, min(10, steps_per_epoch // logs_per_epoch)),
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # bf16 without CUDA is the CPU's autocast, which the Trainer only allows with use_cpu
        use_cpu=training_on_cpu() or (precision == "bf16" and not torch.cuda.is_available()),
        ddp_timeout=COLLECTIVE_TIMEOUT_SECONDS,  # as training.distributed's own: whichever joins first sets it
    )
    return TrainingArguments(**{**settings, **overrides})


@dataclass
class TrainedEncoder:
    trainer: Any
    best: Any  # the BestModelCallback: history, best_epoch
    duration: float  # training only, seconds
    validation: Any  # trainer.predict(validation) with the best epoch's weights; None without that pass


def train_best_epoch(
    cfg: Any,
    model: Any,
    scratch_prefix: str,
    train_ds: Any,
    val_ds: Any,
    collator: Any,
    compute_metrics: Callable[[Any], dict[str, float]] | None,
    metric: str,
    *,
    listener: Listener | None,
    tracker: MlflowTracker | None,
    monitor: SystemMonitor,
    extra_callbacks: Sequence[Any] = (),
    greater_is_better: bool = True,
    derive_metrics: DeriveMetrics | None = None,
    learning_rate_of: LearningRateOf | None = None,
    batch_loss: BatchLoss | None = None,
    predict_validation: bool = True,
    **argument_overrides: Any,
) -> TrainedEncoder:
    """Fine-tune ``model`` with two learning rates, early stopping on validation ``metric`` (the highest
    wins, the lowest when not ``greater_is_better``), the best epoch's weights restored, then (with
    ``predict_validation``) one prediction pass over the validation split.

    ``learning_rate_of`` defaults to :func:`head_learning_rate` with ``cfg.head_learning_rate``;
    ``batch_loss`` (default: the model's own loss) and ``derive_metrics`` are described at their types.
    ``argument_overrides`` go to :func:`training_arguments` (``greater_is_better`` is the loop's rule, not
    a TrainingArguments one: no ``metric_for_best_model`` is set)."""
    import tempfile

    import torch
    from transformers import PrinterCallback

    emit = emitter(listener)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=scratch_prefix) as scratch:
        args = training_arguments(cfg, scratch, len(train_ds), **argument_overrides)
        callbacks = progress_callbacks(
            listener,
            tracker,
            monitor,
            metric,
            cfg.early_stopping_patience,
            cfg.epochs,
            greater_is_better=greater_is_better,
            derive_metrics=derive_metrics,
        )
        rule = learning_rate_of if learning_rate_of is not None else head_learning_rate(cfg.head_learning_rate)
        trainer_cls = _make_trainer_class(rule, batch_loss)
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            data_collator=collator,
            compute_metrics=compute_metrics,
            callbacks=[*callbacks, *extra_callbacks],
        )
        # The Trainer prints raw log dicts to stdout when tqdm is off: stdout is for results (--json).
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        # Mixed precision: accelerate wrapped model.forward in autocast; the unwrapped forward is what the
        # saved model, the ONNX export and inference run (else the export traces bf16 casts).
        from accelerate.utils import extract_model_from_parallel

        extract_model_from_parallel(model, keep_fp32_wrapper=False)
        callbacks.best.restore(model)
        duration = time.monotonic() - start
        model.eval()
        output = None
        if predict_validation:
            emit(TrainingEvent("status", message="evaluating the best epoch"))
            with torch.inference_mode():
                output = trainer.predict(val_ds)
    leave_if_secondary()  # under torchrun/accelerate: the main process alone goes on to publish
    return TrainedEncoder(trainer, callbacks.best, duration, output)


@dataclass
class FitStats:
    """What every component's fit (classifier, entities, sentiment, generator) reports about its Trainer
    run; their result classes extend it, and :func:`training_summary` reads it."""

    history: list[dict[str, Any]]  # per-epoch validation metrics
    log_history: list[dict[str, Any]]  # the Trainer's log
    steps: int
    epochs_run: float
    best_epoch: float
    duration: float
    frozen: int  # parameters
    trainable: int
    precision: str  # what the Trainer ran with: fp32, bf16 or fp16 (training_config.precision "auto" resolved)

    @staticmethod
    def of(
        trainer: Any, history: list[dict[str, Any]], best_epoch: float, duration: float, frozen: int, trainable: int
    ) -> dict[str, Any]:
        """The FitStats fields of a finished ``trainer`` run, as keyword arguments for a result class."""
        return {
            "history": history,
            "log_history": trainer.state.log_history,
            "steps": trainer.state.global_step,
            "epochs_run": trainer.state.epoch or 0.0,
            "best_epoch": best_epoch,
            "duration": duration,
            "frozen": frozen,
            "trainable": trainable,
            "precision": "bf16" if trainer.args.bf16 else ("fp16" if trainer.args.fp16 else "fp32"),
        }


def training_summary(fit: FitStats, **extra: Any) -> dict[str, Any]:
    """The "training" block of a component's metadata, from a fit result."""
    return {
        "duration_seconds": round(fit.duration, 2),
        "epochs_run": fit.epochs_run,
        "steps": fit.steps,
        "frozen_parameters": fit.frozen,
        "trainable_parameters": fit.trainable,
        "precision": fit.precision,
        **extra,
    }
