"""MLflow tracking: one run per training, nested under an active parent run; logging never fails a training.
Under torchrun/accelerate only the main process opens runs (training.distributed)."""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Iterator

from ..config import redact_url
from ..errors import ConfigError
from . import mlflow_hub
from .distributed import is_main_process

log = logging.getLogger("hotelbot.training")
DEFAULT_EXPERIMENT = "hotelbot-classifier"


class MlflowTracker:
    """A thin wrapper: one run per training; logging failures are logged, never fatal. A run started while
    another is active is nested under it (a child run in the parent's experiment)."""

    def __init__(self, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id: str | None = None
        self._mlflow: Any = None

    @contextlib.contextmanager
    def run(self, run_name: str, tags: dict[str, str] | None = None, nested: bool = False) -> Iterator[MlflowTracker]:
        if not is_main_process():  # torchrun/accelerate: one run per training, the main process's
            yield self
            return
        mlflow = mlflow_hub.import_mlflow()
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        try:
            # inside another run (train --model-type all, HPO): a child run in the parent's experiment
            nested = nested or mlflow.active_run() is not None
            if not nested:
                mlflow.set_tracking_uri(self.tracking_uri)
                mlflow.set_experiment(self.experiment)
            active = mlflow.start_run(run_name=run_name, tags=tags or {}, nested=nested)
        except Exception as exc:  # noqa: BLE001 - mlflow raises many types for a bad URI
            raise ConfigError(
                f"cannot use MLflow tracking store {self.tracking_uri}: {str(exc).splitlines()[0]}",
                hint="set MLFLOW_TRACKING_URI or HOTELBOT_HOME",
            ) from None
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
        clean = {
            k.replace("/", "_") if k.startswith("eval/") else k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if clean:
            self._safe("log_metrics", clean, step=step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._safe("set_tags", {k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path) -> None:
        self._safe("log_artifact", str(path))

    def log_dataset(self, name: str, fingerprint: str, source: Path | str, sizes: dict[str, int] | None = None) -> None:
        """``mlflow.log_input`` of the training data (training.mlflow_hub.log_dataset); a failure is logged."""
        if self._mlflow is None:
            return
        try:
            mlflow_hub.log_dataset(name, fingerprint, source, sizes=sizes)
        except Exception as exc:  # noqa: BLE001
            log.warning("mlflow log_input failed: %s", exc)

    def register_version(self, registry: Any, info: Any) -> dict[str, Any] | None:
        """Log and register the published version as this run's MLflow model (training.mlflow_hub); None when
        turned off (HOTELBOT_MLFLOW_REGISTRY=off), outside a run, or failed (a warning: the version stands)."""
        if self._mlflow is None or not mlflow_hub.enabled():
            return None
        try:
            with mlflow_hub.bounded_requests():
                return mlflow_hub.log_version_model(registry, info)
        except Exception as exc:  # noqa: BLE001 - mlflow raises many types; the version is published already
            line = redact_url(mlflow_hub.first_line(exc))
            log.warning("MLflow model not logged for %s: %s", getattr(info, "name", info), line)
            return {"error": line[:300]}
