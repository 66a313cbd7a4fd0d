"""MLflow as the team's hub: each trained intent model is an MLflow model in the Model Registry, and the
registry's deployed state is mirrored as aliases.

- :func:`log_version_model` (called by a classifier training, inside its run) logs the version as a pyfunc
  model (:mod:`hotelbot_cli.mlflow_model`: the project's own predictor on the version's chosen runtime; the
  model refers to the version in the filesystem registry instead of copying its weights) and registers it
  as a new version of ``hotelbot-intent`` (HOTELBOT_MLFLOW_MODEL_NAME) tagged ``hotelbot_version=vNNNN``;
- :func:`log_dataset` records the training data set (its fingerprint as digest) with ``mlflow.log_input``;
- :func:`sync_aliases` (called after every change of the deployed state: deploy, rollback, canary start,
  promote and abort, auto-rollback) points the aliases ``production``, ``previous`` and ``canary`` at the
  model versions of those hotelbot versions (registering one that has none yet, e.g. a version whose
  classifier was carried over), and removes an alias that no longer applies.

The filesystem registry stays the source of truth: every MLflow call here is best effort, with short HTTP
timeouts and no retries, and its failure is returned as a warning, never raised. HOTELBOT_MLFLOW_REGISTRY=off
turns models and aliases off (metrics are still tracked).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..config import redact_url

if TYPE_CHECKING:
    from ..registry import ModelRegistry, VersionInfo


MODEL_NAME_ENV = "HOTELBOT_MLFLOW_MODEL_NAME"
DEFAULT_MODEL_NAME = "hotelbot-intent"
SWITCH_ENV = "HOTELBOT_MLFLOW_REGISTRY"
VERSION_TAG = "hotelbot_version"
CLASSIFIER_TAG = "hotelbot_classifier_sha256"
REGISTRATION_EXPERIMENT = "hotelbot-registry"  # runs that register a version no training registered
ALIASES = ("production", "previous", "canary")
REFERENCE_ARTIFACT = "hotelbot"  # the pyfunc model's one artifact: hotelbot.json
CLASSIFIER_KEY = "model/classifier.json"  # whose recorded checksum identifies the version
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
MODEL_FILE = Path(__file__).resolve().parent.parent / "mlflow_model.py"


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "on").strip().lower() not in ("0", "off", "false", "no")


def model_name() -> str:
    return os.environ.get(MODEL_NAME_ENV, "").strip() or DEFAULT_MODEL_NAME


@contextlib.contextmanager
def bounded_requests(timeout_seconds: int = 10) -> Iterator[None]:
    """A down or slow tracking server costs seconds, not MLflow's default minutes of retries."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_seconds))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def import_mlflow() -> Any:
    """The mlflow module, imported the one way the project uses it: no "🏃 View run ... at: URL" line on stdout
    when a run on a server ends (stdout is for results, --json), and no INFO chatter from mlflow, alembic
    ("Creating initial MLflow database tables") or sqlalchemy."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow

    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def first_line(exc: BaseException) -> str:
    """An exception as one line (its first), or its type's name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def reference(registry: ModelRegistry, info: VersionInfo) -> dict[str, Any]:
    """What the pyfunc model's artifact records: the registry, the version, its classifier's checksum."""
    return {
        "format": "hotelbot-mlflow-model/1",
        "registry": str(Path(registry.root).resolve()),
        "version": info.name,
        "classifier_sha256": _classifier_sha(info),
    }


@contextlib.contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's own progress bars ("Downloading artifacts") and notices ("Created version '3' of model ...") off
    the terminal while it logs and registers a model: the command reports what happened in its own words."""
    before = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = before


def log_version_model(registry: ModelRegistry, info: VersionInfo) -> dict[str, Any]:
    """(Inside an active MLflow run.) Log ``info`` as this run's pyfunc model "model" and register it;
    returns {"name", "version", "uri"}. Raises whatever mlflow raises."""
    from .. import __version__  # the package root: only when a model is logged

    mlflow = import_mlflow()
    with tempfile.TemporaryDirectory(prefix="hotelbot-mlflow-") as tmp:
        ref = Path(tmp) / "hotelbot.json"
        ref.write_text(json.dumps(reference(registry, info), indent=2), "utf-8")
        with quiet_mlflow():  # and "add type hints", "no input example": the signature below types it
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_FILE),
                artifacts={REFERENCE_ARTIFACT: str(ref)},
                pip_requirements=[f"hotelbot-cli=={__version__}", f"mlflow-skinny=={mlflow.__version__}"],
                signature=mlflow.models.infer_signature(model_input=["hola"], params={"top_k": 3}),
                tags={VERSION_TAG: info.name},
            )
    with quiet_mlflow():
        registered = mlflow.register_model(
            logged.model_uri,
            model_name(),
            await_registration_for=0,
            tags={VERSION_TAG: info.name, CLASSIFIER_TAG: _classifier_sha(info)},
        )
    return {
        "name": registered.name,
        "version": str(registered.version),
        "uri": f"models:/{registered.name}/{registered.version}",
    }


def log_dataset(
    name: str, fingerprint: str, source: Path | str, context: str = "training", sizes: dict[str, int] | None = None
) -> None:
    """(Inside an active MLflow run.) ``mlflow.log_input`` of the data set: its name, source path and
    fingerprint (the digest), the split sizes as tags. Raises whatever mlflow raises."""
    mlflow = import_mlflow()
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local path, either way
        warnings.simplefilter("ignore", UserWarning)
        located = resolve_dataset_source(str(Path(source).resolve()))
    # mlflow marks Dataset.profile @abstractmethod without ABCMeta, and MetaDataset leaves it out
    dataset = MetaDataset(located, name=name, digest=fingerprint[:32])  # type: ignore[abstract]
    tags = {"fingerprint": fingerprint, **{k: str(v) for k, v in (sizes or {}).items()}}
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context=context, tags=tags)
            return
        except Exception:  # noqa: BLE001 - two runs logging one new data set at once race on the store's
            if attempt == 2:  # unique key (seen with `mlflow server` on sqlite): the loser tries again
                raise
            time.sleep(0.5 * (attempt + 1))


def _classifier_sha(info: VersionInfo) -> str:
    return info.manifest.files.get(CLASSIFIER_KEY) or ""


def _model_version(client: Any, registry: ModelRegistry, version: str, tracking_uri: str) -> str:
    """The MLflow model version registered for hotelbot ``version`` (its tags: the version name and its
    classifier's checksum, so another registry's version of the same name is not taken for it), else one
    registered now."""
    name = model_name()
    sha = _classifier_sha(registry.get(version))
    found = [
        v
        for v in client.search_model_versions(f"name = '{name}' and tags.{VERSION_TAG} = '{version}'")
        if (v.tags or {}).get(CLASSIFIER_TAG) == sha
    ]
    if found:
        return str(max(int(v.version) for v in found))
    mlflow = import_mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    experiment = client.get_experiment_by_name(REGISTRATION_EXPERIMENT)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(REGISTRATION_EXPERIMENT, artifact_location=_artifact_location(tracking_uri))
    )
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"register-{version}", tags={"hotelbot.version": version}
    ):
        return log_version_model(registry, registry.get(version))["version"]


def _artifact_location(tracking_uri: str) -> str | None:
    """Beside a local sqlite store (not ./mlruns of whatever directory a deploy runs in); a server's default
    (None) otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return None


def desired_aliases(state: dict[str, Any]) -> dict[str, str | None]:
    """Each alias's hotelbot version in a deployed state (None: the alias is removed)."""
    current = state.get("version")
    previous = [v for v in state.get("previous") or [] if v and v != current]
    canary = state.get("canary") if isinstance(state.get("canary"), dict) else None
    return {
        "production": current,
        "previous": previous[-1] if previous else None,
        "canary": canary.get("version") if canary else None,
    }


def sync_aliases(registry: ModelRegistry, tracking_uri: str) -> list[str]:
    """Point the aliases at the registry's deployed state; returns warnings (empty: done or turned off)."""
    if not enabled():
        return []
    try:
        with bounded_requests():
            import_mlflow()
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri)  # the registry: MLFLOW_REGISTRY_URI, else the same
            name = model_name()
            for alias, version in desired_aliases(registry.current_state()).items():
                if version is None:
                    with contextlib.suppress(MlflowException):  # no such alias (or model) yet: nothing to remove
                        client.delete_registered_model_alias(name, alias)
                    continue
                client.set_registered_model_alias(name, alias, _model_version(client, registry, version, tracking_uri))
    except ImportError:  # a serve-only install: its deploys and canary decisions have no MLflow to tell
        return (
            []
            if not os.environ.get("MLFLOW_TRACKING_URI")
            else ["MLflow is not installed here: the Model Registry aliases were not updated"]
        )
    except Exception as exc:  # noqa: BLE001 - mlflow and its HTTP client raise many types
        line = first_line(exc)
        return [redact_url(f"MLflow aliases not updated ({tracking_uri}): {line[:300]}")]
    return []


HELPER_MODULE = "hotelbot_cli.cli._alias_helper"
HELPER_URI_ENV = "HOTELBOT_ALIAS_HELPER_URI"  # the tracking URI, for the helper
HELPER_TIMEOUT_SECONDS = 120  # a helper that has not answered by then: the aliases are reported not moved


class AliasSync:
    """Moves the aliases once a registry operation (deploy, rollback, canary) has changed the deployed state.

    Importing MLflow and opening its store cost a fresh process ~2.5 s, most of a deploy that reuses its gate's
    answers. So, where this process has not imported MLflow yet (a CLI command, a server worker deciding a
    canary), a helper process (:mod:`hotelbot_cli.cli._alias_helper`) starts importing it when the operation
    starts, on another core, and moves the aliases when :meth:`sync` asks: the operation still returns only
    once they are moved, with the same warnings, and a server worker never holds MLflow in its own memory.
    Where MLflow is loaded already (a process that trained, the tests) or off, or the helper cannot start or
    dies, the aliases are moved in this process as before."""

    def __init__(self, tracking_uri: str, spawn: bool | None = None) -> None:
        """``spawn``: start the helper (None: when MLflow is on and not imported by this process yet)."""
        self.tracking_uri = tracking_uri
        self.moved_by: str | None = None  # after sync(): "helper" or "this process"
        self._helper: subprocess.Popen[str] | None = None
        if not enabled() or (spawn is None and "mlflow" in sys.modules) or spawn is False:
            return
        package_parent = str(Path(__file__).resolve().parents[2])  # the child imports this very package
        env = dict(os.environ)
        env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env[HELPER_URI_ENV] = tracking_uri  # not on the command line: `ps` shows that to every local user
        with contextlib.suppress(OSError, ValueError):
            self._helper = subprocess.Popen(
                # -P: nothing from the working directory shadows the package or its libraries
                [sys.executable, "-P", "-m", HELPER_MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                text=True,
            )

    def sync(self, registry: ModelRegistry, tracking_uri: str) -> list[str]:
        """:func:`sync_aliases`, by the helper when one runs for this tracking URI; never raises."""
        helper, self._helper = self._helper, None
        if helper is not None and tracking_uri == self.tracking_uri:
            try:
                out, _ = helper.communicate(
                    json.dumps({"registry": str(Path(registry.root).resolve())}) + "\n", timeout=HELPER_TIMEOUT_SECONDS
                )
                if helper.returncode == 0:
                    warnings_ = [str(w) for w in json.loads(out.strip().splitlines()[-1])["warnings"]]
                    self.moved_by = "helper"
                    return warnings_
            except subprocess.TimeoutExpired:
                self._stop(helper)
                return [
                    redact_url(f"MLflow aliases not updated ({tracking_uri}): no answer in {HELPER_TIMEOUT_SECONDS} s")
                ]
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                self._stop(helper)
        elif helper is not None:
            self._stop(helper)
        self.moved_by = "this process"  # no helper, or it died or answered wrongly
        return sync_aliases(registry, tracking_uri)

    def close(self) -> None:
        """Stop the helper of an operation that changed nothing (its aliases need no move)."""
        helper, self._helper = self._helper, None
        if helper is not None:
            self._stop(helper)

    @staticmethod
    def _stop(helper: subprocess.Popen[str]) -> None:
        helper.kill()
        with contextlib.suppress(OSError, ValueError):  # pipes already closed by an interrupted communicate()
            helper.communicate()


def serve_alias_helper(tracking_uri: str, request: str) -> list[str]:
    """The helper's work (:mod:`hotelbot_cli.cli._alias_helper`) once asked: ``request`` is the JSON line
    {"registry": root}; returns :func:`sync_aliases`' warnings."""
    from ..registry import ModelRegistry  # only the helper process needs it (at run time; typing above)

    return sync_aliases(ModelRegistry(Path(json.loads(request)["registry"])), tracking_uri)


def preload(tracking_uri: str) -> None:
    """Import MLflow and open its store for ``tracking_uri`` (what the helper does while it waits); never raises:
    a failure shows again, as a warning, when the aliases are moved."""
    try:
        import_mlflow()
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=tracking_uri)
    except Exception:  # noqa: BLE001, S110 - best effort: sync_aliases reports the same failure
        pass


__all__ = [
    "ALIASES",
    "AliasSync",
    "DEFAULT_MODEL_NAME",
    "MODEL_NAME_ENV",
    "SWITCH_ENV",
    "VERSION_TAG",
    "bounded_requests",
    "desired_aliases",
    "enabled",
    "first_line",
    "import_mlflow",
    "log_dataset",
    "log_version_model",
    "model_name",
    "preload",
    "reference",
    "serve_alias_helper",
    "sync_aliases",
]
