"""The report and the version's MLflow run: the system metrics logged during training (read) and the
report files (logged as artifacts). mlflow is imported only when a run is actually read or written."""

from __future__ import annotations

from pathlib import Path

from ..training.mlflow_hub import import_mlflow
from .report import SYSTEM_SERIES, Report


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///") :]
        return Path(rest.split("?", 1)[0])
    return None


def _system_series(uri: str, run_id: str) -> dict[str, list[tuple[float, float]]]:
    """The system metrics (CPU, RAM, GPU) of MLflow run ``run_id``: (timestamp in seconds, value) per key,
    oldest first; keys without points are left out. Raises whatever mlflow raises."""
    import_mlflow()
    from mlflow.tracking import MlflowClient  # heavy: only when a run is read

    client = MlflowClient(uri)
    keys = set(client.get_run(run_id).data.metrics)
    wanted = [k for k in SYSTEM_SERIES if k in keys] + sorted(
        k for k in keys if k.startswith("system/gpu") and k.endswith(("_utilization_percent", "_memory_used_mb"))
    )
    series = {}
    for key in wanted:
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
        if points:
            series[key] = [(m.timestamp / 1000.0, float(m.value)) for m in points]
    return series


def log_report_artifacts(report: Report, paths: dict[str, Path], artifact_path: str = "report") -> str | None:
    """Attach the written files to the version's MLflow run. Returns None, or why it could not (non-fatal)."""
    uri, run_id = report.mlflow.get("tracking_uri"), report.mlflow.get("run_id")
    if not uri or not run_id:
        return "no MLflow run recorded for this version; the report was not logged as an artifact"
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():
        return f"the MLflow store {db} does not exist; the report was not logged as an artifact"
    try:
        import_mlflow()
        from mlflow.tracking import MlflowClient  # heavy: only when a run is written to

        client = MlflowClient(uri)
        for path in paths.values():
            if path.is_dir():
                client.log_artifacts(run_id, str(path), f"{artifact_path}/{path.name}")
            elif path.is_file():
                client.log_artifact(run_id, str(path), artifact_path)
    except Exception as exc:  # noqa: BLE001 - a report that is written but not attached is still a report
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"could not log the report to MLflow run {run_id}: {first}"
    return None
