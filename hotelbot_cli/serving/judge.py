"""The canary's automatic judgement: compare the canary with the stable version on their live figures
(:meth:`~.metrics.VersionMetrics.snapshot`, summed over workers) and abort it when it is worse, or promote it
after enough healthy answers when its deploy asked for that (``deploy --canary P --auto-promote N``).

:func:`judge` is pure (figures in, a :class:`Verdict` out); :func:`act` carries a verdict out through
:mod:`hotelbot_cli.pipeline.canary` (the registry lock makes it happen once however many workers judge: the
others find no canary any more), recording the figures in history.jsonl and the notifications.

The rules (thresholds in ``deployment_config``, see :class:`~hotelbot_cli.config.DeploymentConfig`), applied
once each version has answered ``canary_min_requests`` messages:

- fallback rate (out-of-scope answers / answers) and error rate (5xx / requests): worse when the canary's rate
  exceeds the stable one's by more than the tolerance AND Fisher's exact test, one-sided (the canary's rate
  is higher), gives p < ``canary_alpha``;
- mean confidence: worse when lower than the stable one's by more than ``canary_max_confidence_drop``;
- p95 latency (from the histogram's buckets): worse when above ``canary_max_latency_ratio`` times the stable
  one's (and at least one bucket higher).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import HotelbotError

logger = logging.getLogger(__name__)

WAIT, ABORT, PROMOTE = "wait", "abort", "promote"


@dataclass
class Verdict:
    decision: str  # wait | abort | promote
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "reasons": self.reasons, "figures": self.figures}


def fisher_greater(bad_a: int, n_a: int, bad_b: int, n_b: int) -> float:
    """One-sided p-value of Fisher's exact test that a's rate of ``bad`` is higher than b's."""
    from scipy.stats import fisher_exact  # on use

    if n_a <= 0 or n_b <= 0:
        return 1.0
    return float(fisher_exact([[bad_a, n_a - bad_a], [bad_b, n_b - bad_b]], alternative="greater")[1])


def p95_bucket(buckets: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(lower, upper) edges of the histogram bucket holding the 95th percentile (cumulative counts, +Inf last);
    None without observations. A p95 past the last finite edge is (that edge, that edge)."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    lower = 0.0
    for bound, count in buckets:
        if count >= 0.95 * total:
            return (lower, bound) if math.isfinite(bound) else (lower, lower)
        lower = bound
    return (lower, lower)


def p95(buckets: list[tuple[float, float]]) -> float | None:
    """The upper edge of the bucket holding the 95th percentile (see :func:`p95_bucket`)."""
    edges = p95_bucket(buckets)
    return None if edges is None else edges[1]


def since(now: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, Any]:
    """A version's figures counted since ``baseline`` (an earlier snapshot entry of it): the counters and the
    cumulative buckets minus the baseline's, so that a canary is judged on what happened while it ran."""
    base = baseline or {}
    out: dict[str, Any] = {
        k: float(now.get(k, 0.0)) - float(base.get(k, 0.0))
        for k in ("requests", "errors", "answers", "fallbacks", "confidence_sum")
    }
    before = dict(base.get("latency_buckets") or [])
    out["latency_buckets"] = [(b, c - before.get(b, 0.0)) for b, c in now.get("latency_buckets") or []]
    return out


def _rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def judge(stable: Mapping[str, Any], canary: Mapping[str, Any], cfg: Any, auto_promote: int = 0) -> Verdict:
    """The verdict on ``canary`` against ``stable`` (their figures since the canary started: :func:`since`);
    ``cfg``: the deployment config; ``auto_promote``: promote after that many canary answers without a worse
    figure. The error rate is judged once each version has had ``canary_min_requests`` requests (a canary that
    fails every request answers nothing), the answer figures once each has given that many answers."""
    n_c, n_s = int(canary.get("answers", 0)), int(stable.get("answers", 0))
    r_c, r_s = int(canary.get("requests", 0)), int(stable.get("requests", 0))
    f_c, f_s = int(canary.get("fallbacks", 0)), int(stable.get("fallbacks", 0))
    e_c, e_s = int(canary.get("errors", 0)), int(stable.get("errors", 0))
    lat_c, lat_s = (
        p95_bucket(list(canary.get("latency_buckets", []))),
        p95_bucket(list(stable.get("latency_buckets", []))),
    )
    figures: dict[str, Any] = {
        "canary": {
            "answers": n_c,
            "requests": r_c,
            "fallback_rate": _rate(f_c, n_c),
            "error_rate": _rate(e_c, r_c),
            "mean_confidence": _rate(canary.get("confidence_sum", 0.0), n_c),
            "p95_latency_s": None if lat_c is None else lat_c[1],
        },
        "stable": {
            "answers": n_s,
            "requests": r_s,
            "fallback_rate": _rate(f_s, n_s),
            "error_rate": _rate(e_s, r_s),
            "mean_confidence": _rate(stable.get("confidence_sum", 0.0), n_s),
            "p95_latency_s": None if lat_s is None else lat_s[1],
        },
        "min_requests": cfg.canary_min_requests,
    }
    enough_requests = min(r_c, r_s) >= cfg.canary_min_requests
    enough_answers = min(n_c, n_s) >= cfg.canary_min_requests
    if not enough_requests and not enough_answers:
        return Verdict(
            WAIT,
            [f"waiting for {cfg.canary_min_requests} requests from each version (canary {r_c}, stable {r_s})"],
            figures,
        )
    c, s = figures["canary"], figures["stable"]
    reasons = []
    checks = []
    if enough_answers:
        checks.append(("fallback rate", f_c, n_c, f_s, n_s, cfg.canary_max_fallback_increase))
    if enough_requests:
        checks.append(("error rate", e_c, r_c, e_s, r_s, cfg.canary_max_error_increase))
    for what, bad_c, total_c, bad_s, total_s, tolerance in checks:
        rate_c, rate_s = bad_c / total_c, bad_s / total_s
        p_value = fisher_greater(bad_c, total_c, bad_s, total_s)
        figures[f"{what.replace(' ', '_')}_p_value"] = p_value
        if rate_c - rate_s > tolerance and p_value < cfg.canary_alpha:
            reasons.append(
                f"{what} {rate_c:.3f} vs {rate_s:.3f} (+{rate_c - rate_s:.3f} > {tolerance}; Fisher's exact "
                f"test, one-sided, p={p_value:.2g} < {cfg.canary_alpha})"
            )
    if (
        enough_answers
        and c["mean_confidence"] is not None
        and s["mean_confidence"] is not None
        and s["mean_confidence"] - c["mean_confidence"] > cfg.canary_max_confidence_drop
    ):
        reasons.append(
            f"mean confidence {c['mean_confidence']:.3f} vs {s['mean_confidence']:.3f} "
            f"(-{s['mean_confidence'] - c['mean_confidence']:.3f} > {cfg.canary_max_confidence_drop})"
        )
    # latency from bucket edges, conservatively: the canary's p95 bucket must START above ratio x the END of the
    # stable one's (adjacent buckets are up to 2.5x apart: one bucket up is not evidence)
    if (
        enough_requests
        and lat_c is not None
        and lat_s is not None
        and lat_c[0] > cfg.canary_max_latency_ratio * lat_s[1]
    ):
        reasons.append(f"p95 latency above {lat_c[0]}s vs at most {lat_s[1]}s (> {cfg.canary_max_latency_ratio}x)")
    if reasons:
        return Verdict(ABORT, reasons, figures)
    if auto_promote and enough_answers and n_c >= auto_promote:
        return Verdict(
            PROMOTE, [f"{n_c} canary answers without a worse figure (auto-promote after {auto_promote})"], figures
        )
    return Verdict(WAIT, ["no worse figure so far"], figures)


def act(verdict: Verdict, registry: Any, settings: Any, running: Mapping[str, Any]) -> str | None:
    """Carry out a verdict on the ``running`` canary (its state entry): an abort (with ``enable_auto_rollback``;
    without, a ``canary_worse`` event reported once) or a promote. Returns what was done ("abort", "promote",
    "reported"), None when nothing was (waiting, or the canary changed or ended meanwhile: the lock and its
    ``event_id`` make one worker act on the canary it judged)."""
    from ..pipeline.canary import abort_canary, promote_canary, report_worse  # the deploy pipeline

    if verdict.decision == WAIT:
        return None
    version, event_id = running.get("version"), running.get("event_id")
    reason = f"automatic: {'; '.join(verdict.reasons)}"
    try:
        if verdict.decision == ABORT and not settings.deployment.enable_auto_rollback:
            if report_worse(registry, settings, dict(running), verdict.to_dict()):
                logger.warning(
                    "canary %s is worse (%s); ENABLE_AUTO_ROLLBACK is off: not aborted",
                    version,
                    "; ".join(verdict.reasons),
                )
                return "reported"
            return None
        if verdict.decision == ABORT:
            abort_canary(
                registry,
                settings,
                reason,
                event="canary_auto_abort",
                details=verdict.to_dict(),
                expected_event_id=event_id,
            )
        else:
            promote_canary(
                registry,
                settings,
                reason,
                event="canary_auto_promote",
                details=verdict.to_dict(),
                expected_event_id=event_id,
            )
    except HotelbotError as exc:  # another worker (or a person) acted first, or the canary changed
        logger.info("canary %s: %s not applied (%s)", version, verdict.decision, exc)
        return None
    logger.warning(
        "canary %s %s: %s", version, "aborted" if verdict.decision == ABORT else "promoted", "; ".join(verdict.reasons)
    )
    return verdict.decision


__all__ = ["ABORT", "PROMOTE", "Verdict", "WAIT", "act", "fisher_greater", "judge", "p95", "p95_bucket", "since"]
