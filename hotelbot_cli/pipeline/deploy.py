"""Deploy, rollback, backups, verification and notifications over the registry.

Every operation takes the registry's OS lock (so two deploys never interleave), first repairs what a
killed writer may have left, and switches the deployed version with ONE atomic replace of
``current.json``. A SIGKILL at any point therefore leaves the old state or the new one.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import subprocess
import urllib.error
import urllib.request
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator

from .._io import atomic_write_json, hashing_once
from ..components import registered
from ..components.compose import components_of
from ..config import Settings
from ..errors import (
    DeployVerificationError,
    GateFailedError,
    HotelbotError,
    IntegrityError,
    RegistryError,
    RolledBackError,
)
from ..registry import ModelRegistry, VersionInfo
from ..registry.backups import backup_problems, create_backup, list_backups, record_name, restore_from_backup
from ..registry.store import ALIASES, check_version_name, crashpoint, utc_now
from ..training.mlflow_hub import AliasSync, sync_aliases
from .validate import gate_components, primary_component, validate_version

log = logging.getLogger("hotelbot.deployment")


@dataclass
class OperationResult:
    action: str  # deploy | rollback | noop
    version: str | None
    previous: str | None
    changed: bool = True
    backup: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    smoke: dict[str, Any] | None = None
    restored_from_backup: bool = False
    notifications: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    event_id: str = ""
    canary: dict[str, Any] | None = None  # the canary started, promoted or ended (pipeline.canary)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


# ---------------------------------------------------------------- notifications


def notify(settings: Settings, event: dict[str, Any]) -> list[str]:
    """Send ``event`` to the configured webhook and/or shell command. Failures are returned and logged,
    never raised: a broken notifier must not block or undo a deploy."""
    cfg = settings.deployment
    problems = []
    body = json.dumps(event, ensure_ascii=False).encode("utf-8")
    if cfg.notify_webhook:
        request = urllib.request.Request(
            cfg.notify_webhook, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=cfg.notify_timeout_seconds) as response:
                if response.status >= 300:
                    problems.append(f"webhook answered HTTP {response.status}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            problems.append(f"webhook failed: {exc}")
    if cfg.notify_command:
        try:
            done = subprocess.run(
                cfg.notify_command,
                shell=True,
                input=body,
                capture_output=True,
                timeout=cfg.notify_timeout_seconds,
                check=False,
            )
            if done.returncode != 0:
                problems.append(
                    f"notify command exited {done.returncode}: {done.stderr.decode(errors='replace').strip()[:200]}"
                )
        except (subprocess.TimeoutExpired, OSError) as exc:
            problems.append(f"notify command failed: {exc}")
    for problem in problems:
        log.warning("notification for %s failed: %s", event.get("event"), problem)
    return problems


# Events recorded without a change of the deployed state (the others move the MLflow aliases).
STATE_KEPT = frozenset({"gate_failed", "canary_smoke_failed", "canary_worse", "drift_alert"})


def record_event(registry: ModelRegistry, settings: Settings, event: dict[str, Any]) -> list[str]:
    """Append to history.jsonl, then notify (the history line is written even if notifying fails); after a
    change of the deployed state, point the MLflow Model Registry aliases at it (production, previous,
    canary: training.mlflow_hub). Returns the problems (notification or MLflow), never raises them."""
    event = {"event_id": event.get("event_id") or uuid.uuid4().hex[:12], **event}
    registry.append_history(event)
    problems = notify(settings, {**event, "at": utc_now(), "registry": str(registry.root)})
    if event.get("event") not in STATE_KEPT:
        pending = _ALIAS_SYNC.get()
        if pending is not None:  # inside exclusive(): synced once the registry lock is released
            pending.append((registry, settings.paths.tracking_uri, problems))
        else:
            problems += sync_aliases(registry, settings.paths.tracking_uri)
    return problems


def record_once(registry: ModelRegistry, settings: Settings, ledger: str, key: str, event: dict[str, Any]) -> bool:
    """(The registry lock held.) :func:`record_event` unless ``key`` is already in the registry's JSON file
    ``ledger`` ({key: when}), which then remembers it: an alert sent once however many server workers (and
    restarts) find the same thing. True when recorded now."""
    path = registry.root / ledger
    try:
        done = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        done = {}
    if not isinstance(done, dict):
        done = {}
    if key in done:
        return False
    atomic_write_json(path, {**done, key: utc_now()})
    record_event(registry, settings, event)
    return True


# ---------------------------------------------------------------- checks


def _release_memory() -> None:
    """Free what the last component loaded, and hand glibc's freed heap back to the system (without it the
    next component's model lands beside the freed one instead of in its place)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def smoke_check(info: VersionInfo, settings: Settings) -> dict[str, Any]:
    """Load ``info``'s components exactly as predict/serve do and run each on a few texts (the classifier on
    its validation texts, a search of the knowledge base, a reply of the generator, ...): every registered
    component the version holds, through its ``smoke``. The primary component's figures are the top-level
    keys, the others' are under their names.

    Raises IntegrityError/ModelError when one cannot load, HotelbotError when its answers are unusable.
    """
    present = components_of(info)
    result: dict[str, Any] = {}
    for component in registered():
        if component.name not in present or not component.served(info):  # nothing loads what is not served
            continue
        checked = component.smoke(info, settings, settings.deployment.smoke_texts)
        if component.primary:
            result.update(checked)
        else:
            result[component.name] = checked
        _release_memory()  # one component's model at a time: the next one reuses its memory
    return result


def gate_version(registry: ModelRegistry, settings: Settings, name: str) -> dict[str, Any]:
    """Every gated component (classifier, entities, sentiment, ...) must reach MIN_VALIDATION_SCORE on its
    own validation split, and the primary one (the classifier) must not regress per intent against the
    deployed version. Components without a score (the knowledge base, the generator) are checked by the
    smoke test."""
    info = registry.get(name)
    if primary_component(info) is None:
        scored = gate_components(info, settings)
        return {
            "version": name,
            "overall_score": None,
            "metric": None,
            "min_validation_score": settings.validation.min_validation_score,
            "passed": scored["passed"],
            "failures": scored["failures"],
            "regressions": {},
            "compared_with": None,
            "skipped": "no classifier component",
            "reused_from": None,
            "components": scored["components"],
        }
    result = validate_version(registry, name, settings, gate=True)
    failures = list(result.failures)
    regressions: dict[str, float] = {}
    if result.comparison is not None:
        regressions = result.comparison.regressions(settings.deployment.regression_tolerance)
        if regressions:
            worst = sorted(regressions.items(), key=lambda kv: kv[1])[:5]
            failures.append(
                f"per-intent F1 regressions vs {result.comparison.reference_version} beyond "
                f"{settings.deployment.regression_tolerance:.2f}: " + ", ".join(f"{k} {v:+.3f}" for k, v in worst)
            )
    return {
        "version": name,
        "overall_score": result.overall_score,
        "metric": result.metrics["metric"],
        "min_validation_score": result.min_score,
        "passed": not failures,
        "failures": failures,
        "regressions": regressions,
        "compared_with": result.comparison.reference_version if result.comparison else None,
        "not_compared": result.not_compared,
        "reused_from": result.reused_from,
        "components": {
            k: {"metric": m["metric"], "overall_score": m["overall_score"]} for k, m in result.components.items()
        },
    }


def newest_validated(registry: ModelRegistry) -> VersionInfo:
    for info in reversed(registry.list_versions()):
        record = registry.validation_of(info.name)
        if record and record.get("passed"):
            return info
    raise RegistryError(
        "no validated version to deploy",
        hint="run `hotelbot validate [VERSION]` first, or name the version: `hotelbot deploy v0003`",
    )


# ---------------------------------------------------------------- operations


# The MLflow alias syncs that record_event asked for inside exclusive(): (registry, tracking URI, the problems
# list of the event, extended in place with the sync's warnings).
_ALIAS_SYNC: ContextVar[list[tuple[ModelRegistry, str, list[str]]] | None] = ContextVar(
    "hotelbot_alias_sync", default=None
)


@contextlib.contextmanager
def exclusive(
    registry: ModelRegistry, settings: Settings, moves_aliases: bool = True
) -> Iterator[tuple[list[str], dict[str, Any]]]:
    """Hold the registry lock; first repair what a killed writer left; yield (repairs, deployed state).
    Each file is hashed once in the block (checked, gated, smoke-tested: one read, see ``hashing_once``).
    A change of the deployed state moves the MLflow aliases after the lock is released (MLflow calls never
    hold other deploys or the servers' judgements waiting)."""
    # a helper loads MLflow meanwhile (moves_aliases False: an operation that keeps the deployed state)
    aliases = AliasSync(settings.paths.tracking_uri, spawn=None if moves_aliases else False)
    pending: list[tuple[ModelRegistry, str, list[str]]] = []
    token = _ALIAS_SYNC.set(pending)
    try:
        with registry.lock(timeout=settings.deployment.lock_timeout_seconds), hashing_once():
            repaired = registry.repair()
            yield repaired, registry.current_state()
    finally:
        _ALIAS_SYNC.reset(token)
        if pending:  # the state as it is now: one sync for the block, its warnings on the last event's list
            target, uri, problems = pending[-1]
            problems += aliases.sync(target, uri)
        else:
            aliases.close()


def backup_current(registry: ModelRegistry, settings: Settings, reason: str = "manual backup") -> dict[str, Any]:
    with exclusive(registry, settings, moves_aliases=False) as (_, state):
        current = state.get("version")
        if current is None:
            raise RegistryError("nothing is deployed, so there is nothing to back up")
        registry.require_intact(current)
        return create_backup(registry, current, reason, settings.deployment.backups_to_keep)


def deploy(
    registry: ModelRegistry, settings: Settings, version: str | None = None, reason: str = ""
) -> OperationResult:
    """Gate, back up current, switch, verify; auto-rollback (exit 4) when verification fails."""
    cfg = settings.deployment
    with exclusive(registry, settings) as (repaired, old_state):
        current = old_state.get("version")
        target = registry.resolve(version) if version else newest_validated(registry)
        if target.name == current:
            return OperationResult("noop", target.name, current, changed=False, repaired=repaired)
        running = running_canary(old_state)
        if running is not None:
            raise RegistryError(
                f"a canary of {running['version']} ({running['weight']}%) is running beside {current}",
                hint="hotelbot canary promote, or hotelbot canary abort, first",
            )
        registry.require_intact(target.name)
        event_id = uuid.uuid4().hex[:12]

        gate = gate_version(registry, settings, target.name)
        if not gate["passed"]:
            record_event(
                registry,
                settings,
                {
                    "event_id": event_id,
                    "event": "gate_failed",
                    "from": current,
                    "to": target.name,
                    "reason": reason,
                    "scores": gate,
                },
            )
            raise GateFailedError(f"{target.name} not deployed: " + "; ".join(gate["failures"]))

        backup = None
        if current and cfg.enable_model_backup:
            try:
                backup = create_backup(registry, current, f"before deploying {target.name}", cfg.backups_to_keep)
            except IntegrityError as exc:  # replacing a corrupt version must stay possible: say so, go on
                backup = {"version": current, "skipped": str(exc)}
                log.warning("no backup of %s: %s", current, exc)
        crashpoint("before-switch")
        new_state = {
            "version": target.name,
            "previous": [*old_state.get("previous", []), current] if current else old_state.get("previous", []),
            "deployed_at": utc_now(),
            "event_id": event_id,
            "action": "deploy",
        }
        registry.write_current_state(new_state)
        crashpoint("after-switch")

        try:
            smoke = smoke_check(registry.get(target.name), settings)
        except HotelbotError as exc:
            if cfg.enable_auto_rollback:
                registry.write_current_state(old_state)
                record_event(
                    registry,
                    settings,
                    {
                        "event_id": event_id,
                        "event": "auto_rollback",
                        "from": target.name,
                        "to": current,
                        "reason": str(exc),
                        "scores": gate,
                    },
                )
                raise RolledBackError(
                    f"deployed {target.name} but it failed verification ({exc}); "
                    f"restored {current or 'the empty state'}"
                ) from None
            record_event(
                registry,
                settings,
                {
                    "event_id": event_id,
                    "event": "deploy_unverified",
                    "from": current,
                    "to": target.name,
                    "reason": str(exc),
                    "scores": gate,
                },
            )
            raise DeployVerificationError(
                f"deployed {target.name} but it failed verification ({exc}); "
                "ENABLE_AUTO_ROLLBACK is off: run `hotelbot rollback`"
            ) from None

        notes = record_event(
            registry,
            settings,
            {
                "event_id": event_id,
                "event": "deploy",
                "from": current,
                "to": target.name,
                "reason": reason,
                "scores": gate,
            },
        )
        crashpoint("after-history")
        return OperationResult(
            "deploy", target.name, current, True, backup, gate, smoke, False, notes, repaired, event_id
        )


def _named(registry: ModelRegistry, name: str) -> str:
    """A version name or alias (registry.ALIASES) as a version name; a name without its version directory
    stays a name (rollback may restore it from a backup)."""
    return registry.resolve(name).name if name in ALIASES else check_version_name(name)


def rollback(registry: ModelRegistry, settings: Settings, to: str | None = None, reason: str = "") -> OperationResult:
    """Restore the previous deployed version (or ``to``) after checking its checksums and that it loads.
    While a canary runs, rolling back (without ``to``) aborts the canary: guests go back to the stable version."""
    with exclusive(registry, settings) as (repaired, state):
        current = state.get("version")
        running = running_canary(state)
        if running is not None:
            if to is not None:
                raise RegistryError(
                    f"a canary of {running['version']} is running: `hotelbot rollback` without --to aborts it first"
                )
            return end_canary(
                registry, settings, state, running, reason or "rollback during the canary", "canary_abort", repaired
            )
        previous = list(state.get("previous", []))
        if to is None:
            candidates = [v for v in reversed(previous) if v != current]
            if not candidates:
                raise RegistryError(
                    "nothing to roll back to: no earlier deployed version is recorded",
                    hint="name one with `hotelbot rollback --to VERSION`",
                )
            target_name = candidates[0]
        else:
            target_name = _named(registry, to)
            if target_name == current:
                raise RegistryError(f"{target_name} is already the deployed version")

        restored = False
        try:
            target = registry.require_intact(target_name)
        except IntegrityError:
            target = restore_from_backup(registry, target_name)
            restored = True
        except RegistryError:
            if not any(r["version"] == target_name for r in list_backups(registry)):
                raise
            target = restore_from_backup(registry, target_name)
            restored = True
        smoke = smoke_check(target, settings)

        if target_name in previous:
            cut = len(previous) - 1 - previous[::-1].index(target_name)
            new_previous = previous[:cut]
        else:
            new_previous = [*previous, current] if current else previous
        event_id = uuid.uuid4().hex[:12]
        crashpoint("before-switch")
        registry.write_current_state(
            {
                "version": target_name,
                "previous": new_previous,
                "deployed_at": utc_now(),
                "event_id": event_id,
                "action": "rollback",
            }
        )
        crashpoint("after-switch")
        notes = record_event(
            registry,
            settings,
            {
                "event_id": event_id,
                "event": "rollback",
                "from": current,
                "to": target_name,
                "reason": reason,
                "restored_from_backup": restored,
            },
        )
        return OperationResult(
            "rollback", target_name, current, True, None, None, smoke, restored, notes, repaired, event_id
        )


# ---------------------------------------------------------------- canaries (see pipeline.canary)

CANARY = "canary"  # the key of current.json that holds a running canary


def running_canary(state: dict[str, Any]) -> dict[str, Any] | None:
    """The canary of a deployed state ({"version", "weight", "started_at", ...}), None when none runs."""
    canary = state.get(CANARY)
    return canary if isinstance(canary, dict) and canary.get("version") else None


def end_canary(
    registry: ModelRegistry,
    settings: Settings,
    state: dict[str, Any],
    running: dict[str, Any],
    reason: str,
    event: str,
    repaired: list[str],
    details: dict[str, Any] | None = None,
) -> OperationResult:
    """(The lock held.) Back to the stable version alone: ``state`` without its canary, one atomic write;
    ``event`` (canary_abort, canary_auto_abort) recorded and notified. The canary's version stays."""
    event_id = uuid.uuid4().hex[:12]
    stable = state.get("version")
    crashpoint("before-switch")
    registry.write_current_state(
        {**{k: v for k, v in state.items() if k != CANARY}, "event_id": event_id, "action": event}
    )
    crashpoint("after-switch")
    notes = record_event(
        registry,
        settings,
        {
            "event_id": event_id,
            "event": event,
            "from": running["version"],
            "to": stable,
            "canary": running.get("weight"),
            "reason": reason,
            "canary_started_at": running.get("started_at"),
            **({"judgement": details} if details else {}),
        },
    )
    return OperationResult(
        event, stable, running["version"], True, None, None, None, False, notes, repaired, event_id, running
    )


def verify_registry(registry: ModelRegistry) -> dict[str, list[str]]:
    """Recompute every checksum of every version and backup (a pinned backup: every blob it refers to; a legacy
    archive: its own sha256); {name: problems} (empty lists: intact)."""
    report: dict[str, list[str]] = {}
    for info in registry.list_versions():
        report[info.name] = (
            [f"{info.name}/metadata.json: missing or unreadable"]
            if info.manifest.corrupt
            else registry.verify(info.name)
        )
    checked: dict[str, bool] = {}
    for record in list_backups(registry):
        report[f"backup/{record.get('archive') or record_name(record)}"] = backup_problems(registry, record, checked)
    state_version = registry.current_name()
    if state_version and state_version not in report:
        report["current"] = [f"current.json points to {state_version}, which does not exist"]
    return report


def history(registry: ModelRegistry, limit: int | None = None) -> list[dict[str, Any]]:
    path = registry.root / "history.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text("utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-append is skipped, never fatal
    return events[-limit:] if limit else events
