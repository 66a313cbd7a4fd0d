"""Gradual deploys: a canary version beside the deployed (stable) one.

The registry's deployed state (``current.json``) holds the stable version as always and, while a canary
runs, ``canary``: {"version", "weight" (percent of conversations it answers), "started_at", "event_id",
"reason"}. Every operation here is one atomic replace of that file under the registry lock (see
:mod:`.deploy`), so a SIGKILL leaves the state before or after it, never a mix:

- :func:`start_canary`: the usual gate and smoke test of the canary version, then stable + canary + weight
  + start time written at once; refused when nothing is deployed, when a canary already runs, for the
  deployed version itself, and for a weight outside 1-99 (before anything is read or written).
- :func:`promote_canary`: the canary becomes the deployed version (the stable one backed up and recorded as
  previous, as a deploy does).
- :func:`abort_canary`: back to the stable version alone (``rollback`` during a canary does this).
- :func:`canary_status`: the state, for ``hotelbot canary status``.

Every step is appended to history.jsonl and notified like deploys.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..config import Settings
from ..errors import ConfigError, GateFailedError, HotelbotError, IntegrityError, RegistryError
from ..registry import ModelRegistry
from ..registry.backups import create_backup
from ..registry.store import crashpoint, utc_now
from .deploy import (
    CANARY,
    OperationResult,
    end_canary,
    exclusive,
    gate_version,
    log,
    record_event,
    record_once,
    running_canary,
    smoke_check,
)

MIN_WEIGHT, MAX_WEIGHT = 1, 99


def check_weight(weight: Any) -> int:
    """A canary's share of conversations: a whole percent from 1 to 99."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise ConfigError(
            f"--canary takes a whole percent from {MIN_WEIGHT} to {MAX_WEIGHT}, got {weight!r}",
            hint="100 is a plain deploy: hotelbot deploy VERSION",
        )
    return weight


def start_canary(
    registry: ModelRegistry, settings: Settings, version: str, weight: int, reason: str = "", auto_promote: int = 0
) -> OperationResult:
    """Gate and smoke-test ``version``, then let it answer ``weight`` percent of conversations beside the
    deployed version (``auto_promote`` > 0: `serve` promotes it after that many healthy answers). Nothing
    changes when any check fails."""
    weight = check_weight(weight)
    if isinstance(auto_promote, bool) or not isinstance(auto_promote, int) or auto_promote < 0:
        raise ConfigError(f"--auto-promote takes a number of canary answers (>= 1), got {auto_promote!r}")
    with exclusive(registry, settings) as (repaired, state):
        stable = state.get("version")
        if stable is None:
            raise RegistryError(
                "nothing is deployed, so there is no stable version for a canary to run beside",
                hint=f"deploy it fully: hotelbot deploy {version}",
            )
        running = running_canary(state)
        if running is not None:
            raise RegistryError(
                f"a canary of {running['version']} ({running['weight']}%) is already running",
                hint="hotelbot canary promote, or hotelbot canary abort, first",
            )
        target = registry.resolve(version)
        if target.name == stable:
            raise RegistryError(f"{target.name} is the deployed version; a canary must be another version")
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
                    "from": stable,
                    "to": target.name,
                    "canary": weight,
                    "reason": reason,
                    "scores": gate,
                },
            )
            raise GateFailedError(f"{target.name} not started as a canary: " + "; ".join(gate["failures"]))
        try:
            smoke = smoke_check(target, settings)  # it must load and answer before any guest reaches it
        except HotelbotError as exc:
            record_event(
                registry,
                settings,
                {
                    "event_id": event_id,
                    "event": "canary_smoke_failed",
                    "from": stable,
                    "to": target.name,
                    "canary": weight,
                    "reason": str(exc),
                    "scores": gate,
                },
            )
            raise
        canary = {
            "version": target.name,
            "weight": weight,
            "started_at": utc_now(),
            "event_id": event_id,
            "reason": reason,
            **({"auto_promote": auto_promote} if auto_promote else {}),
        }
        crashpoint("before-switch")
        registry.write_current_state({**state, CANARY: canary, "event_id": event_id, "action": "canary_start"})
        crashpoint("after-switch")
        notes = record_event(
            registry,
            settings,
            {
                "event_id": event_id,
                "event": "canary_start",
                "from": stable,
                "to": target.name,
                "canary": weight,
                "reason": reason,
                "scores": gate,
            },
        )
        return OperationResult(
            "canary_start", target.name, stable, True, None, gate, smoke, False, notes, repaired, event_id, canary
        )


def _expect(running: dict[str, Any], expected_event_id: str | None) -> None:
    """(The lock held.) An automatic decision applies to the canary it judged, not to one started since."""
    if expected_event_id is not None and running.get("event_id") != expected_event_id:
        raise RegistryError(
            f"the canary changed since it was judged (now {running['version']}, "
            f"started {running.get('started_at')}); not applied"
        )


def promote_canary(
    registry: ModelRegistry,
    settings: Settings,
    reason: str = "",
    event: str = "canary_promote",
    details: dict[str, Any] | None = None,
    expected_event_id: str | None = None,
) -> OperationResult:
    """The canary becomes the deployed version: the stable one is backed up and recorded as previous.
    ``expected_event_id``: only that canary (an automatic decision), else refused."""
    cfg = settings.deployment
    with exclusive(registry, settings) as (repaired, state):
        running = running_canary(state)
        if running is None:
            raise RegistryError(
                "no canary is running, so there is nothing to promote",
                hint="start one: hotelbot deploy VERSION --canary 10",
            )
        _expect(running, expected_event_id)
        stable, target = state.get("version"), running["version"]
        registry.require_intact(target)
        backup = None
        if stable and cfg.enable_model_backup:
            try:
                backup = create_backup(registry, stable, f"before promoting the canary {target}", cfg.backups_to_keep)
            except IntegrityError as exc:
                backup = {"version": stable, "skipped": str(exc)}
                log.warning("no backup of %s: %s", stable, exc)
        event_id = uuid.uuid4().hex[:12]
        previous = [*state.get("previous", []), stable] if stable else list(state.get("previous", []))
        crashpoint("before-switch")
        registry.write_current_state(
            {"version": target, "previous": previous, "deployed_at": utc_now(), "event_id": event_id, "action": event}
        )
        crashpoint("after-switch")
        notes = record_event(
            registry,
            settings,
            {
                "event_id": event_id,
                "event": event,
                "from": stable,
                "to": target,
                "canary": running["weight"],
                "reason": reason,
                "canary_started_at": running.get("started_at"),
                **({"judgement": details} if details else {}),
            },
        )
        return OperationResult(
            event, target, stable, True, backup, None, None, False, notes, repaired, event_id, running
        )


def abort_canary(
    registry: ModelRegistry,
    settings: Settings,
    reason: str = "",
    event: str = "canary_abort",
    details: dict[str, Any] | None = None,
    expected_event_id: str | None = None,
) -> OperationResult:
    """Back to the stable version alone; the canary version stays in the registry. ``expected_event_id``: as
    :func:`promote_canary`'s."""
    with exclusive(registry, settings) as (repaired, state):
        running = running_canary(state)
        if running is None:
            raise RegistryError("no canary is running, so there is nothing to abort")
        _expect(running, expected_event_id)
        return end_canary(registry, settings, state, running, reason, event, repaired, details)


JUDGEMENT_FILE = "canary_judgement.json"  # serve's latest verdict on the running canary (serving.judge)
WORSE_FILE = "canary_worse.json"  # canaries found worse while ENABLE_AUTO_ROLLBACK was off: reported once


def report_worse(registry: ModelRegistry, settings: Settings, running: dict[str, Any], details: dict[str, Any]) -> bool:
    """A canary found worse but not aborted (auto-rollback off): a ``canary_worse`` event recorded and notified
    once per canary (across workers: under the registry lock, ``canary_worse.json``). True when reported now."""
    with exclusive(registry, settings, moves_aliases=False) as (_, state):  # the deployed state stays
        now = running_canary(state)
        if now is None or now.get("event_id") != running.get("event_id"):
            return False
        return record_once(
            registry,
            settings,
            WORSE_FILE,
            str(running.get("event_id")),
            {
                "event": "canary_worse",
                "from": running["version"],
                "to": state.get("version"),
                "canary": running.get("weight"),
                "judgement": details,
                "reason": "worse than the stable version; ENABLE_AUTO_ROLLBACK is off: not aborted (hotelbot canary abort)",
            },
        )


def canary_status(registry: ModelRegistry) -> dict[str, Any]:
    """{"stable", "canary": {"version", "weight", "started_at", ...} | None, "deployed_at", "judgement": serve's
    latest verdict on this canary ({"decision", "reasons", "figures", "at", "acted"}) | None, "last_judgement":
    without a running canary, serve's last verdict on the one before (e.g. the abort that ended it) | None}."""
    state = registry.current_state()
    running = running_canary(state)
    try:
        latest = json.loads((registry.root / JUDGEMENT_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        latest = None
    latest = latest if isinstance(latest, dict) and isinstance(latest.get("decision"), str) else None
    judgement = (
        latest if running is not None and latest and latest.get("event_id") == running.get("event_id") else None
    )  # about an earlier canary, or none yet
    return {
        "stable": state.get("version"),
        CANARY: running,
        "deployed_at": state.get("deployed_at"),
        "judgement": judgement,
        "last_judgement": latest if running is None else None,
    }


__all__ = [
    "CANARY",
    "abort_canary",
    "canary_status",
    "check_weight",
    "promote_canary",
    "running_canary",
    "start_canary",
]
