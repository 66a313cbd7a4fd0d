"""Hyperparameter search with Optuna: every trial is a real fine-tune and a nested MLflow run.

The search space covers the encoder and head learning rates, epochs, batch size, warmup and weight
decay; each trial calibrates its own out-of-scope threshold, so the score it reports already includes
the threshold.

The study lives in an Optuna RDB storage (``--hpo-storage URL``; default a sqlite file under HOTELBOT_HOME),
named after the data, the base model and the fixed part of the config (:func:`study_name`), so:

- a search killed half-way resumes where it stopped: running the same command again counts the trials
  already finished and runs only the rest (a trial that was running when its process died is marked
  failed by its stopped heartbeat and retried once);
- several processes, on one machine or several sharing a database server, work on one study: each runs
  trials until the study holds ``trials`` finished ones (``--hpo-worker`` processes only run trials);
- a median pruner stops a trial whose validation score after an epoch is below the median of the
  earlier trials at that epoch (after a few complete trials); pruned trials count as finished.

The published model is the study's best trial: kept in memory when this process ran it, else trained
again with its parameters (same seed, same data).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Collection

from ..config import TrainingConfig, redact_url
from ..data import Example
from ..errors import ConfigError
from .classify import fit_classifier
from .events import TrainingEvent, emitter
from .tracking import MlflowTracker

log = logging.getLogger("hotelbot.hpo")

SEARCHED = ("learning_rate", "head_learning_rate", "epochs", "batch_size", "warmup_ratio", "weight_decay")
HEARTBEAT_SECONDS = 10  # a running trial writes a heartbeat this often ...
GRACE_SECONDS = 60  # ... and one silent for this long died with its process: marked failed, retried once
PRUNER_STARTUP_TRIALS = 2  # no pruning before this many trials completed
PRUNER_WARMUP_EPOCHS = 2  # nor on a trial's first evaluation (optuna prunes from step >= this; epochs count from 1)
STORAGE_ATTEMPTS = 3  # opening the storage: tries (processes creating a new database at once race)


def suggest(trial: Any, cfg: TrainingConfig) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-4, log=True),
        "head_learning_rate": trial.suggest_float("head_learning_rate", 5e-4, 1e-2, log=True),
        "epochs": trial.suggest_int("epochs", 1, max(2, cfg.epochs)),
        "batch_size": trial.suggest_categorical("batch_size", [8, 16, 32]),
        "warmup_ratio": trial.suggest_float("warmup_ratio", 0.0, 0.2),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
    }


def study_name(fingerprint: str, cfg: TrainingConfig, metric: str, parent: str | None) -> str:
    """The same data, base model, fixed config and metric give the same study (so a rerun resumes it)."""
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in SEARCHED}
    digest = hashlib.sha256(
        json.dumps({"config": fixed, "metric": metric, "parent": parent}, sort_keys=True, default=str).encode()
    ).hexdigest()[:8]
    return f"classifier-{fingerprint[:12]}-{digest}"


def open_study(storage_url: str, name: str, seed: int) -> Any:
    """The study ``name`` in ``storage_url`` (created when new), with a TPE sampler and a median pruner."""
    import optuna  # only an HPO run pays for importing optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage_url.startswith("sqlite:///"):
        Path(storage_url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in optuna's words: no stderr noise
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(
                    storage_url,
                    heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                    engine_kwargs={"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else {},
                )
            return optuna.create_study(
                study_name=name,
                storage=storage,
                direction="maximize",
                load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=seed),
                pruner=optuna.pruners.MedianPruner(
                    n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS
                ),
            )
        except Exception as exc:  # noqa: BLE001 - sqlalchemy and optuna raise many types for a bad URL
            # Processes starting together on a new database race to create its tables: the losers retry.
            if type(exc).__name__ in ("IntegrityError", "OperationalError") and attempt + 1 < STORAGE_ATTEMPTS:
                time.sleep(1.0 + attempt)
                continue
            detail = redact_url(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            raise ConfigError(
                f"cannot use the HPO storage {redact_url(storage_url)}: {detail}",
                hint="--hpo-storage takes an SQLAlchemy URL, e.g. sqlite:///hpo.db or postgresql://user@host/db",
            ) from None
    raise AssertionError("unreachable")


def finished_trials(study: Any) -> list[Any]:
    import optuna

    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]


def _pruning_callback(trial: Any, metric: str, pruned: dict[str, bool]) -> Any:
    """Reports the validation ``metric`` after each epoch; stops the fit when the pruner says so."""
    from transformers import TrainerCallback

    class PruneCallback(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            score = (metrics or {}).get(f"eval_{metric}")
            if score is None or not math.isfinite(float(score)):
                return
            trial.report(float(score), step=int(round(state.epoch or 0)))
            if trial.should_prune():
                pruned["yes"] = True
                control.should_training_stop = True

    return PruneCallback()


@dataclass
class HpoRequest:
    """What a search needs besides the data: the config, the metric and where the study lives."""

    cfg: TrainingConfig
    metric: str
    models_dir: Path
    trials: int  # finished trials (complete + pruned) the study should hold
    storage: str
    study: str
    parent_dir: Path | None = None


def run_hpo(
    request: HpoRequest,
    train: list[Example],
    validation: list[Example],
    labels: list[str],
    *,
    listener=None,
    tracker=None,
    monitor=None,
    publish: bool = True,
):
    """Run trials of the shared study until it holds ``request.trials`` finished ones; return (FitResult of the
    study's best trial or None without ``publish``, its config, summary dict)."""
    import optuna

    emit = emitter(listener)
    study = open_study(request.storage, request.study, request.cfg.seed)
    cfg, metric = request.cfg, request.metric
    mine: dict[int, Any] = {}  # trial number -> its fit (only the best one's model is kept)
    best_here: dict[str, Any] = {"number": None, "score": -math.inf}
    ran: set[int] = set()  # the trials this process ran

    def fit(trial_cfg: TrainingConfig, callbacks=(), child=None):
        return fit_classifier(
            trial_cfg,
            metric,
            train,
            validation,
            labels,
            request.models_dir,
            listener=listener,
            tracker=child,
            monitor=monitor,
            parent_dir=request.parent_dir,
            extra_callbacks=callbacks,
        )

    def objective(trial: Any) -> float:
        ran.add(trial.number)
        params = suggest(trial, cfg)
        trial_cfg = replace(cfg, **params)
        done = len(finished_trials(study))
        emit(
            TrainingEvent(
                "status",
                message=f"HPO trial {trial.number} ({done + 1}/{request.trials} in study "
                f"{request.study}): "
                + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()),
            )
        )
        pruned: dict[str, bool] = {}
        callbacks = [_pruning_callback(trial, metric, pruned)]
        child = MlflowTracker(tracker.tracking_uri) if tracker is not None else None
        if child is not None:
            with child.run(
                run_name=f"trial-{trial.number}",
                tags={"hotelbot.hpo_trial": str(trial.number), "hotelbot.hpo_study": request.study},
                nested=True,
            ):
                child.log_params(params)
                result = fit(trial_cfg, callbacks, child)
                child.log_metrics({"trial_score": result.metrics[metric]}, step=result.steps)
                child.set_tags({"hotelbot.hpo_pruned": bool(pruned)})
            trial.set_user_attr("mlflow_run_id", child.run_id)
        else:
            result = fit(trial_cfg, callbacks)
        score = float(result.metrics[metric])
        trial.set_user_attr("threshold", result.threshold)
        if pruned:
            emit(TrainingEvent("status", message=f"HPO trial {trial.number} pruned (below the median)"))
            raise optuna.TrialPruned()
        if score > best_here["score"]:
            mine.clear()
            mine[trial.number] = result  # keep only this process's best model in memory
            best_here.update(number=trial.number, score=score)
        return score

    def enough(study: Any, trial: Any) -> None:
        if len(finished_trials(study)) >= request.trials:
            study.stop()

    if len(finished_trials(study)) < request.trials:
        study.optimize(objective, n_trials=None, callbacks=[enough], catch=())
    summary = summarize(study, request, ran_here=ran, kept=set(mine))
    if not publish:
        return None, cfg, summary
    best = best_trial(study, set(mine))
    if best is None:
        raise ConfigError(f"HPO study {request.study}: no trial completed (all were pruned or failed)")
    best_cfg = replace(cfg, **{k: v for k, v in best.params.items() if k in SEARCHED})
    if best.number in mine:
        return mine[best.number], best_cfg, summary
    emit(
        TrainingEvent(
            "status",
            message=f"HPO: the best trial ({best.number}) ran in another process or an "
            "earlier run: training it again with its parameters",
        )
    )
    summary["best_retrained"] = True
    return fit(best_cfg), best_cfg, summary


def best_trial(study: Any, kept: set[int]) -> Any:
    """The study's best complete trial, chosen the same way for the summary and the published model: the
    highest score; among equal scores one whose model this process holds (no retraining), then the earliest."""
    import optuna

    complete = [t for t in finished_trials(study) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    return min(complete, key=lambda t: (-float(t.value), t.number not in kept, t.number))


def summarize(study: Any, request: HpoRequest, ran_here: set[int], kept: Collection[int] = ()) -> dict[str, Any]:
    """The study's finished trials, its best trial and where it is stored (the version's metadata "hpo")."""
    import optuna

    finished = finished_trials(study)
    rows = [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "params": t.params,
            "score": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
            "last_reported": (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None),
            "threshold": t.user_attrs.get("threshold"),
            "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            "ran_here": t.number in ran_here,
        }
        for t in finished
    ]
    complete = [r for r in rows if r["score"] is not None]
    chosen = best_trial(study, set(kept))
    best = next((r for r in rows if chosen is not None and r["trial"] == chosen.number), None)
    return {
        "trials": rows,
        "best_trial": best["trial"] if best else None,
        "best_params": best["params"] if best else None,
        "best_score": best["score"] if best else None,
        "metric": request.metric,
        "study": request.study,
        "storage": redact_url(request.storage),
        "finished": len(rows),
        "pruned": sum(r["state"] == "pruned" for r in rows),
        "complete": len(complete),
        "ran_here": len(ran_here & {r["trial"] for r in rows}),
    }
