"""Hyperparameter search with Optuna: every trial is a real fine-tune and a nested MLflow run.

The search space covers the encoder and head learning rates, epochs, batch size, warmup and weight
decay; each trial calibrates its own out-of-scope threshold, so the score it reports already includes
the threshold. The best trial's model is kept in memory and becomes the published version (no
retraining), and its parameters are saved for later `train` runs on the same data (see components/intents/train.py).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import TrainingConfig
from ..data import Example
from .classify import fit_classifier
from .events import TrainingEvent, emitter
from .tracking import MlflowTracker

log = logging.getLogger("hotelbot.hpo")


def suggest(trial: Any, cfg: TrainingConfig) -> dict[str, Any]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-4, log=True),
        "head_learning_rate": trial.suggest_float("head_learning_rate", 5e-4, 1e-2, log=True),
        "epochs": trial.suggest_int("epochs", 1, max(2, cfg.epochs)),
        "batch_size": trial.suggest_categorical("batch_size", [8, 16, 32]),
        "warmup_ratio": trial.suggest_float("warmup_ratio", 0.0, 0.2),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.1),
    }


def run_hpo(cfg: TrainingConfig, metric: str, train: list[Example], validation: list[Example], labels: list[str],
            models_dir: Path, trials: int, *, listener=None, tracker=None, monitor=None, parent_dir=None):
    """Run ``trials`` Optuna trials; return (best FitResult, best config, summary dict)."""
    import optuna  # only an HPO run pays for importing optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    emit = emitter(listener)
    best: dict[str, Any] = {"fit": None, "cfg": cfg}
    rows: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        params = suggest(trial, cfg)
        trial_cfg = replace(cfg, **params)
        emit(TrainingEvent("status", message=f"HPO trial {trial.number + 1}/{trials}: " +
                           ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())))
        child = MlflowTracker(tracker.tracking_uri) if tracker is not None else None
        if child is not None:
            with child.run(run_name=f"trial-{trial.number}", tags={"hotelbot.hpo_trial": str(trial.number)},
                           nested=True):
                child.log_params(params)
                fit = fit_classifier(trial_cfg, metric, train, validation, labels, models_dir, listener=listener,
                                     tracker=child, monitor=monitor, parent_dir=parent_dir)
                child.log_metrics({"trial_score": fit.metrics[metric]}, step=fit.steps)
        else:
            fit = fit_classifier(trial_cfg, metric, train, validation, labels, models_dir, listener=listener,
                                 monitor=monitor, parent_dir=parent_dir)
        score = float(fit.metrics[metric])
        rows.append({"trial": trial.number, "params": params, "score": score, "threshold": fit.threshold,
                     "mlflow_run_id": child.run_id if child is not None else None})
        if best["fit"] is None or score > best["fit"].metrics[metric]:
            best["fit"], best["cfg"] = fit, trial_cfg  # keep only the best model in memory
        return score

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    study.optimize(objective, n_trials=trials)
    summary = {"trials": rows, "best_trial": study.best_trial.number, "best_params": study.best_trial.params,
               "best_score": study.best_value, "metric": metric}
    return best["fit"], best["cfg"], summary
