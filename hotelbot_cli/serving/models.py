"""The deployed model: :class:`LoadedModel` (one loaded version), :class:`ModelHolder` (loads every
component of the registry's deployed version and swaps it in when ``current`` moves) and the watcher
task that polls the registry.

While a gradual deploy runs (``hotelbot deploy VERSION --canary PERCENT``), the canary version is loaded too
and :meth:`ModelHolder.pick` sends each conversation (by its key: the same key, the same model) to it or to
the stable one. The new version is loaded beside the old one, checked (checksums + one smoke prediction), then the
reference is swapped; a request that already took the old model finishes with it. A failed load keeps
the old model, is logged, and is counted in ``/metrics``. The primary component is loaded with
:func:`~hotelbot_cli.runtime.load_predictor`: a version with an ONNX export is served by onnxruntime +
tokenizers and torch/transformers are never imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, cast

from .._io import atomic_write_json
from ..components import registered
from ..components.compose import components_of
from ..data import OUT_OF_SCOPE
from ..errors import HotelbotError, ModelError, ServeError
from ..pipeline.analyze import Analyzer
from ..pipeline.canary import JUDGEMENT_FILE
from ..pipeline.deploy import record_once
from ..registry import ModelRegistry, VersionInfo
from ..registry.store import utc_now
from ..runtime import apply_fallback, load_predictor
from .drift import ALERTS_FILE as DRIFT_ALERTS_FILE, drift_figures, is_drifting, reference_of
from .judge import act, judge, since
from .metrics import Metrics
from .settings import ServeSettings

logger = logging.getLogger(__name__)

THRESHOLD_KEY = "out_of_scope_threshold"
TRAIN_AND_DEPLOY = "run `hotelbot train` then `hotelbot deploy`"
SMOKE_TEXT = "hola"
# The components whose answers /search and /reply return (the other endpoints serve the primary component
# and every analyzing one).
KNOWLEDGE = "knowledge"
GENERATOR = "generator"
REPLIES = "replies"
JUDGEMENT_EVERY_S = 5.0  # how often a "wait" verdict is written for `canary status`
DRIFT_EVERY_S = 10.0  # how often the served versions' drift is checked


def out_of_scope_threshold(metadata: Mapping[str, Any]) -> float | None:
    """The version's ``out_of_scope_threshold`` (a number in [0, 1]), or None when it has none."""
    value = metadata.get(THRESHOLD_KEY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ModelError(f"{THRESHOLD_KEY} in the version's metadata must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One loaded version. Immutable: a hot swap replaces the whole object, never its fields."""

    predictor: Any  # a runtime.Predictor (torch or ONNX); None for a version holding only a knowledge base
    version: str
    threshold: float | None = None
    knowledge: Any = None  # hotelbot_cli.knowledge.KnowledgeBase when the version has one
    analyzer: Any = None  # hotelbot_cli.analysis.Analyzer: classifier + entity + sentiment models (those present)
    responder: Any = None  # hotelbot_cli.generation.Responder when the version has a response generator
    replies: Any = None  # components.replies.ReplyPipeline when the version has a reply model (/reply)
    loaded_at: float = field(default_factory=time.time)

    def answer(self, prediction: Any) -> dict[str, Any]:
        """The response object for one prediction, with the out-of-scope fallback applied."""
        if getattr(prediction, "fallback", False):  # the predictor already applied the model's own threshold
            intent, fallback = OUT_OF_SCOPE, True
        else:
            intent, fallback = apply_fallback(prediction.intent, prediction.confidence, self.threshold)
        out = {
            "intent": intent,
            "confidence": prediction.confidence,
            "top_k": prediction.top_k,
            "model_version": self.version,
            "fallback": fallback,
        }
        if getattr(prediction, "similarity", None) is not None:  # the kNN detector's score
            out["out_of_scope_similarity"] = prediction.similarity
        return out


def conversation_bucket(key: str | None, salt: str = "") -> int:
    """0-99, the same for the same conversation key while the canary (``salt``: its event id, which clients
    never see, so they cannot pick their model) runs: HMAC-SHA256; a random one without a key."""
    if not key:
        return secrets.randbelow(100)
    digest = hmac.new(salt.encode("utf-8"), key.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _load_version(info: VersionInfo) -> Any:
    """The version's runtime (runtime.json / HOTELBOT_RUNTIME): ONNX serves without importing torch."""
    return load_predictor(info)


class ModelHolder:
    """The deployed model, reloaded when the registry's ``current`` moves.

    ``model`` is a plain attribute read (atomic under the GIL); only :meth:`refresh` writes it, under a
    lock, after the new version has loaded and answered a smoke prediction.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        settings: ServeSettings,
        metrics: Metrics,
        loader: Callable[[VersionInfo], Any] = _load_version,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self._loader = loader
        self._lock = threading.Lock()
        self.model: LoadedModel | None = None
        self.last_error: str | None = None
        self._failed: str | None = None  # the target that failed to load: not retried until current moves
        self._warned: str | None = None
        self.canary: LoadedModel | None = None  # a gradual deploy's second version (pipeline.canary)
        self.canary_weight = 0  # percent of conversations it answers
        self.canary_salt = ""  # its event id: the conversation buckets' HMAC key
        self._canary_failed: str | None = None
        self._deploy_settings: Any = None  # load_settings() on the first judgement
        self._judged_at = -math.inf
        self._baseline: tuple[Any, dict[str, Any]] | None = None  # (canary event id, figures when first served)
        self.canary_error: str | None = None  # why the running canary is not served (until it ends)
        self._drift_at = -math.inf
        self._drift_alerted: set[str] = set()  # versions this process already alerted on (or found alerted)

    def refresh(self) -> bool:
        """Load the deployed version (and a running canary) if not the ones loaded. True when either changed."""
        with self._lock:
            loaded = self.model.version if self.model else None
            try:
                state = self.registry.current_state()
            except (HotelbotError, OSError) as exc:  # e.g. unreadable deployed state: keep what we have
                self._warn_once(
                    f"cannot read the deployed version of {self.registry.root} ({exc}); "
                    f"{'still serving ' + loaded if loaded else 'no model is loaded'}"
                )
                if self.model is None:
                    self.last_error = f"cannot read the deployed version: {exc}"
                return False
            changed = self._refresh_stable(state.get("version"), loaded)
            return self._refresh_canary(state.get("canary")) or changed

    def _refresh_stable(self, target: str | None, loaded: str | None) -> bool:
        if target == loaded:  # includes a rollback to the loaded version after a failed deploy
            self._failed = None
            self._warned = None
            self.last_error = None
            return False
        if target is None:  # nothing deployed (any more): keep answering with what we have, if anything
            if loaded:
                self._warn_once(
                    f"the registry {self.registry.root} has no deployed version any more; still serving {loaded}"
                )
            return False
        if target == self._failed:
            return False
        if self.canary is not None and self.canary.version == target:
            new = self.canary  # a promoted canary: already loaded and answering, no second load
        else:
            try:
                new = self._load(target)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old model
                self._failed = target
                self.last_error = f"version {target} failed to load: {exc}"
                self.metrics.load_failed()
                logger.error(
                    "could not load %s (%s); %s",
                    target,
                    exc,
                    f"still serving {loaded}" if loaded else "no model is loaded",
                )
                return False
        self.model = new
        self._failed = None
        self._warned = None
        self.last_error = None
        self.metrics.model_loaded(target)
        logger.info("serving model %s%s", target, f" (was {loaded})" if loaded else "")
        return True

    def _refresh_canary(self, spec: Any) -> bool:
        """Follow the deployed state's canary: load a new one beside the stable model, drop an ended one. A
        canary that fails to load is not served (every conversation stays on the stable model) and logged."""
        version = spec.get("version") if isinstance(spec, dict) else None
        weight = int(spec.get("weight") or 0) if version else 0
        if version is None or self.model is None or version == self.model.version:
            changed = self.canary is not None
            if changed:
                logger.info(
                    "canary %s ended; every conversation on %s",
                    cast(LoadedModel, self.canary).version,  # changed: there is one
                    self.model.version if self.model else None,
                )
            self.canary, self.canary_weight, self._canary_failed, self.canary_error = None, 0, None, None
            return changed
        if self.canary is not None and self.canary.version == version:
            changed = weight != self.canary_weight
            self.canary_weight = weight
            self._mark_start(spec)  # the same version started again (another event): judged from now
            return changed
        if version == self._canary_failed:
            return False
        self.canary, self.canary_weight = None, 0  # a different canary: the old one stops taking traffic now
        try:
            canary = self._load(version)
        except Exception as exc:  # noqa: BLE001 - a broken canary never takes traffic
            self._canary_failed = version
            self.canary_error = f"canary {version} failed to load: {exc}"
            self.metrics.load_failed()
            logger.error(
                "could not load the canary %s (%s); every conversation stays on %s", version, exc, self.model.version
            )
            return False
        self.canary, self.canary_weight, self._canary_failed, self.canary_error = canary, weight, None, None
        self.canary_salt = str(spec.get("event_id") or spec.get("started_at") or "")
        self._mark_start(spec)
        logger.info("canary %s answers %d%% of conversations beside %s", version, weight, self.model.version)
        return True

    def _mark_start(self, spec: Mapping[str, Any]) -> None:
        """The figures when this process began serving the canary ``spec`` describes: what it is judged from."""
        key = spec.get("event_id") or spec.get("started_at")
        if self._baseline is None or self._baseline[0] != key:
            try:
                self._baseline = (key, self.metrics.versions.snapshot())
            except Exception:  # noqa: BLE001 - unreadable metrics: judge on everything since start
                self._baseline = (key, {})

    def _settings(self) -> Any:
        """The deployment config the judge and the drift check read (thresholds, auto-rollback, notifications),
        loaded on first use."""
        if self._deploy_settings is None:
            from ..config import load_settings  # only a server that judges or checks drift needs it

            self._deploy_settings = load_settings()
        return self._deploy_settings

    def judge_canary(self) -> str | None:
        """The running canary's verdict on its live figures since it started (serving.judge: the counters minus
        those this process saw when it first served this canary, so a restarted canary or the stable version's
        earlier traffic do not count), carried out (abort, auto-promote, or a report when auto-rollback is off)
        and written for `canary status` (``canary_judgement.json``, at most every JUDGEMENT_EVERY_S seconds, or
        when it acted). Returns what was done, None when nothing was."""
        canary, stable = self.canary, self.model
        if canary is None or stable is None:
            return None
        settings = self._settings()
        running = self.registry.current_state().get("canary") or {}
        if running.get("version") != canary.version:
            return None  # ended since the last refresh
        self._mark_start(running)  # (normally done when it was loaded)
        snapshot = self.metrics.versions.snapshot()
        base = self._baseline[1] if self._baseline is not None else {}
        verdict = judge(
            since(snapshot.get(stable.version, {}), base.get(stable.version)),
            since(snapshot.get(canary.version, {}), base.get(canary.version)),
            settings.deployment,
            int(running.get("auto_promote") or 0),
        )
        done = act(verdict, self.registry, settings, running)
        now = time.monotonic()
        if done or now - self._judged_at >= JUDGEMENT_EVERY_S:
            self._judged_at = now
            with contextlib.suppress(OSError):  # a read-only registry: the verdict still acts, status lacks it
                atomic_write_json(
                    self.registry.root / JUDGEMENT_FILE,
                    {
                        **verdict.to_dict(),
                        "acted": done,
                        "canary": canary.version,
                        "stable": stable.version,
                        "event_id": running.get("event_id"),
                        "at": utc_now(),
                        "pid": os.getpid(),
                    },
                )
        return done if done in ("abort", "promote") else None

    def check_drift(self) -> list[str]:
        """The served versions' drift (serving.drift): a ``drift_alert`` recorded in history.jsonl and notified
        ONCE per version (``drift_alerts.json`` in the registry, under its lock: once across workers and
        restarts), at most every DRIFT_EVERY_S seconds. Returns the versions alerted now."""
        now = time.monotonic()
        if now - self._drift_at < DRIFT_EVERY_S:
            return []
        self._drift_at = now
        settings = self._settings()
        snapshot = self.metrics.versions.snapshot()
        alerted = []
        for model in (self.model, self.canary):
            reference = self.metrics.references.get(model.version) if model is not None else None
            if (
                model is None
                or reference is None
                or model.version in self._drift_alerted
                or model.version not in snapshot
            ):
                continue
            figures = drift_figures(snapshot[model.version], reference)
            reasons = is_drifting(figures, settings.deployment)
            if not reasons:
                continue
            with self.registry.lock(timeout=settings.deployment.lock_timeout_seconds):
                if record_once(
                    self.registry,
                    settings,
                    DRIFT_ALERTS_FILE,
                    model.version,
                    {
                        "event": "drift_alert",
                        "from": model.version,
                        "to": model.version,
                        "reason": "; ".join(reasons),
                        "drift": figures,
                    },
                ):
                    alerted.append(model.version)
                    logger.warning("drift on %s: %s", model.version, "; ".join(reasons))
            self._drift_alerted.add(model.version)
        return alerted

    def pick(self, key: str | None = None, part: str | None = None) -> LoadedModel | None:
        """The model that answers conversation ``key``: the canary for ``canary_weight`` percent of keys (the
        same key always gets the same model while the canary runs), else the stable one; no key: a random
        bucket. Read without the lock: ``model``, ``canary`` and ``canary_weight`` are plain attribute reads."""
        canary, weight, stable = self.canary, self.canary_weight, self.model
        if canary is None or stable is None or weight <= 0:
            return stable
        if part is not None and getattr(canary, part) is None and getattr(stable, part) is not None:
            return stable  # the canary cannot answer this endpoint (e.g. no knowledge base): the stable one does
        return canary if conversation_bucket(key, self.canary_salt) < weight else stable

    def _warn_once(self, message: str) -> None:
        if message != self._warned:  # the watcher polls every second: say it once, not every second
            self._warned = message
            logger.warning(message)

    def _load(self, name: str) -> LoadedModel:
        """Load every registered component the version holds (the primary one through ``loader``), each
        answering one smoke text before the swap (which also loads what loads lazily)."""
        info = self.registry.require_intact(name)
        threshold = out_of_scope_threshold(info.metadata)
        present = components_of(info)
        parts: dict[str, Any] = {}
        for component in registered():
            if component.name not in present or not component.served(info):
                continue
            loaded = self._loader(info) if component.primary else component.load(info, None, parts)
            if component.primary and self.settings.torch_threads and getattr(loaded, "_torch", None) is not None:
                loaded._torch.set_num_threads(self.settings.torch_threads)
            component.warm_up(loaded, name, SMOKE_TEXT)
            parts[component.name] = loaded
        analyzing = {c: parts[c] for c in Analyzer.analyzing_components(info)}
        analyzer = Analyzer(info.name, analyzing) if analyzing else None
        primary = next((parts[c.name] for c in registered() if c.primary and c.name in parts), None)
        model = LoadedModel(
            primary, info.name, threshold, parts.get(KNOWLEDGE), analyzer, parts.get(GENERATOR), parts.get(REPLIES)
        )
        if primary is not None:
            smoke = primary.predict([SMOKE_TEXT], top_k=self.settings.top_k)
            if len(smoke) != 1 or not 0.0 <= float(smoke[0].confidence) <= 1.0:
                raise ModelError(f"version {name} gave a malformed smoke prediction")
        if analyzer is not None and len(analyzer.analyze([SMOKE_TEXT], top_k=self.settings.top_k)) != 1:
            raise ModelError(f"version {name} gave a malformed smoke analysis")
        self.metrics.references[info.name] = reference_of(info.path)  # what drift is measured against (if served)
        return model

    def unavailable(self) -> ServeError:
        detail = (
            self.last_error + f"; deploy a working version ({TRAIN_AND_DEPLOY})"
            if self.last_error
            else f"no version is deployed in the registry {self.registry.root}: {TRAIN_AND_DEPLOY}"
        )
        return ServeError(503, "no model is loaded", detail)


async def watch_registry(holder: ModelHolder, interval: float) -> None:
    """Poll the registry every ``interval`` seconds and swap in a newly deployed version (until cancelled)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(holder.refresh)
        except Exception:  # noqa: BLE001 - the watcher must outlive a bad poll
            logger.exception("model watcher: polling the registry failed")
        try:
            # (mypy types the right operand of `and` in the context of the left one, bool)
            if holder.canary is not None and await asyncio.to_thread(holder.judge_canary):  # type: ignore[arg-type]
                await asyncio.to_thread(holder.refresh)  # follow the abort/promote at once
        except Exception:  # noqa: BLE001 - a failed judgement must not stop the watcher
            logger.exception("model watcher: judging the canary failed")
        try:
            await asyncio.to_thread(holder.check_drift)
        except Exception:  # noqa: BLE001 - a failed drift check must not stop the watcher
            logger.exception("model watcher: checking drift failed")
