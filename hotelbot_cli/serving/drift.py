"""Drift: do guests still ask what the served version was validated on?

The reference is the version's validation split (``data/validation.jsonl``): its intent distribution and its
out_of_scope share. The live side is what the version answered (``hotelbot_version_intents_total``, summed
over workers). The population stability index over the in-scope intents (out_of_scope is the fallback
rule's, below),

    PSI = sum over intents of (live - reference) * ln(live / reference)

is the usual drift score: below 0.1 little change, 0.1-0.25 some, above 0.25 a shift worth a look (Siddiqi,
"Credit Risk Scorecards", 2006). Shares are smoothed with half a count per intent (an intent missing on one
side counts without dividing by zero), and the PSI that sampling alone gives two samples of the same
distribution, about (k - 1)(1/N + 1/M) for k intents and N, M messages, is subtracted: with 29 intents, 500
live answers and 615 validation texts that is 0.10, which would otherwise read as drift. ``/metrics`` exposes it per version (``hotelbot_version_intent_psi``,
``hotelbot_version_fallback_rate`` beside ``hotelbot_version_reference_fallback_rate``), and `serve` records
and notifies a ``drift_alert`` once per version (``drift_alerts.json`` in the registry: once across workers
and restarts) when, after ``drift_min_answers`` answers, the PSI is above ``drift_max_psi`` or the fallback
rate exceeds the reference's by more than ``drift_max_fallback_increase``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from ..data import OUT_OF_SCOPE

PSEUDO_COUNT = 0.5
ALERTS_FILE = "drift_alerts.json"


def reference_of(version_dir: Path) -> dict[str, Any] | None:
    """{"intents": {intent: share}, "fallback_rate": out_of_scope share, "size"} of a version's validation split;
    None when it has none (a version without a classifier)."""
    path = Path(version_dir) / "data" / "validation.jsonl"
    counts: dict[str, int] = {}
    try:
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                intent = json.loads(line).get("intent")
                if isinstance(intent, str):
                    counts[intent] = counts.get(intent, 0) + 1
    except (OSError, ValueError):
        return None
    total = sum(counts.values())
    if not total:
        return None
    return {
        "intents": {k: v / total for k, v in counts.items()},
        "fallback_rate": counts.get(OUT_OF_SCOPE, 0) / total,
        "size": total,
    }


def psi(live: Mapping[str, float], reference: Mapping[str, float], reference_size: int = 0) -> float:
    """The population stability index of ``live`` counts against ``reference`` shares (of ``reference_size``
    messages; 0: exact shares) over the in-scope intents, smoothed and less its sampling bias (module
    docstring); 0 when it is within that bias."""
    intents = sorted((set(live) | set(reference)) - {OUT_OF_SCOPE})
    k = len(intents)
    n = sum(float(live.get(i, 0.0)) for i in intents)
    ref_total = sum(float(reference.get(i, 0.0)) for i in intents)
    if n <= 0 or k < 2 or ref_total <= 0:
        return 0.0
    m = reference_size * ref_total  # in-scope reference messages
    score = 0.0
    for intent in intents:
        p = (float(live.get(intent, 0.0)) + PSEUDO_COUNT) / (n + PSEUDO_COUNT * k)
        share = float(reference.get(intent, 0.0)) / ref_total
        q = (share * m + PSEUDO_COUNT) / (m + PSEUDO_COUNT * k) if m else max(share, 1e-4)
        score += (p - q) * math.log(p / q)
    bias = (k - 1) * (1.0 / n + (1.0 / m if m else 0.0))
    return max(0.0, score - bias)


def drift_figures(live: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """{"answers", "psi", "fallback_rate", "reference_fallback_rate", "top_shifts": [(intent, live, ref), ...]}."""
    intents = live.get("intents") or {}
    answers = float(live.get("answers") or 0.0)
    total = sum(intents.values()) or 1.0
    shifts = sorted(
        (
            (i, intents.get(i, 0.0) / total, reference["intents"].get(i, 0.0))
            for i in set(intents) | set(reference["intents"])
        ),
        key=lambda t: -abs(t[1] - t[2]),
    )
    return {
        "answers": int(answers),
        "psi": round(psi(intents, reference["intents"], reference.get("size", 0)), 6),
        "fallback_rate": (live.get("fallbacks", 0.0) / answers) if answers else None,
        "reference_fallback_rate": reference["fallback_rate"],
        "top_shifts": [(i, round(a, 4), round(b, 4)) for i, a, b in shifts[:5]],
    }


def is_drifting(figures: Mapping[str, Any], cfg: Any) -> list[str]:
    """The reasons for an alert (empty: none) once ``drift_min_answers`` answers are in."""
    if figures["answers"] < cfg.drift_min_answers:
        return []
    reasons = []
    if figures["psi"] > cfg.drift_max_psi:
        reasons.append(
            f"intent distribution PSI {figures['psi']:.3f} > {cfg.drift_max_psi} against the validation "
            f"split (largest shifts: "
            + ", ".join(f"{i} {a:.1%} vs {b:.1%}" for i, a, b in figures["top_shifts"][:3])
            + ")"
        )
    rate, ref = figures["fallback_rate"], figures["reference_fallback_rate"]
    if rate is not None and rate - ref > cfg.drift_max_fallback_increase:
        reasons.append(f"fallback rate {rate:.3f} vs {ref:.3f} in validation (> +{cfg.drift_max_fallback_increase})")
    return reasons


def gauge_lines(snapshot: Mapping[str, Any], references: Mapping[str, Any]) -> list[str]:
    """Prometheus gauges of each served version with a reference (computed from the merged counters)."""
    lines = [
        "# HELP hotelbot_version_intent_psi Population stability index of the answered intents against the "
        "version's validation split.",
        "# TYPE hotelbot_version_intent_psi gauge",
        "# HELP hotelbot_version_fallback_rate Out-of-scope fallbacks per answer since the server started.",
        "# TYPE hotelbot_version_fallback_rate gauge",
        "# HELP hotelbot_version_reference_fallback_rate The out_of_scope share of the version's validation split.",
        "# TYPE hotelbot_version_reference_fallback_rate gauge",
    ]
    for version, reference in sorted(references.items()):
        live = snapshot.get(version)
        if reference is None or not live or not live.get("answers"):
            continue
        figures = drift_figures(live, reference)
        label = f'{{model_version="{version}"}}'
        lines += [
            f"hotelbot_version_intent_psi{label} {figures['psi']}",
            f"hotelbot_version_fallback_rate{label} {figures['fallback_rate']}",
            f"hotelbot_version_reference_fallback_rate{label} {figures['reference_fallback_rate']}",
        ]
    return lines


__all__ = ["ALERTS_FILE", "drift_figures", "gauge_lines", "is_drifting", "psi", "reference_of"]
