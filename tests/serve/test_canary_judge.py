"""The canary's automatic judgement on live figures (serving.judge), without a server."""

import json

import pytest

from hotelbot_cli.config import DeploymentConfig
from hotelbot_cli.errors import ConfigError
from hotelbot_cli.serving.judge import ABORT, PROMOTE, WAIT, fisher_greater, judge, p95
from hotelbot_cli.serving.metrics import VersionMetrics

CFG = DeploymentConfig(canary_min_requests=100)


def figures(answers, fallbacks=0, errors=0, confidence=0.9, latency=0.01, requests=None):
    buckets = [(0.005, 0.0), (0.01, 0.0), (0.025, 0.0), (0.1, 0.0), (float("inf"), 0.0)]
    buckets = [(b, float(answers) if b >= latency else 0.0) for b, _ in buckets]
    return {"answers": answers, "requests": requests if requests is not None else answers, "fallbacks": fallbacks,
            "errors": errors, "confidence_sum": confidence * answers, "latency_buckets": buckets}


def test_waits_for_enough_answers_from_both_versions():
    verdict = judge(figures(500), figures(99, fallbacks=99), CFG)
    assert verdict.decision == WAIT and "canary 99" in verdict.reasons[0]
    assert judge(figures(99), figures(500, fallbacks=400), CFG).decision == WAIT


def test_a_canary_that_falls_back_far_more_is_aborted_with_its_figures():
    verdict = judge(figures(400, fallbacks=20), figures(200, fallbacks=60), CFG)
    assert verdict.decision == ABORT and "fallback rate 0.300 vs 0.050" in verdict.reasons[0]
    assert verdict.figures["fallback_rate_p_value"] < 1e-6
    assert verdict.figures["canary"]["fallback_rate"] == pytest.approx(0.3)


def test_a_small_or_not_significant_difference_is_not_an_abort():
    assert judge(figures(400, fallbacks=20), figures(200, fallbacks=14), CFG).decision == WAIT  # +0.02 < 0.05
    few = DeploymentConfig(canary_min_requests=10)
    # +0.1 is beyond the tolerance, but 2 of 10 against 10 of 100 is what chance gives: p ~ 0.26
    verdict = judge(figures(100, fallbacks=10), figures(10, fallbacks=2), few)
    assert verdict.decision == WAIT and verdict.figures["fallback_rate_p_value"] > 0.1


def test_errors_confidence_and_latency_each_abort():
    assert "error rate" in judge(figures(300), figures(300, errors=30), CFG).reasons[0]
    assert "mean confidence" in judge(figures(300, confidence=0.9), figures(300, confidence=0.7), CFG).reasons[0]
    slow = judge(figures(300, latency=0.01), figures(300, latency=0.1), CFG)
    assert slow.decision == ABORT and "p95 latency" in slow.reasons[0]


def test_a_canary_failing_every_request_is_aborted_though_it_answers_nothing():
    broken = {"answers": 0, "requests": 300, "errors": 300, "fallbacks": 0, "confidence_sum": 0.0,
              "latency_buckets": []}
    verdict = judge(figures(300), broken, CFG)
    assert verdict.decision == ABORT and "error rate 1.000 vs 0.000" in verdict.reasons[0]


def test_one_latency_bucket_up_is_not_an_abort():
    assert judge(figures(300, latency=0.0099), figures(300, latency=0.0101), CFG).decision == WAIT


def test_figures_since_the_canary_started():
    from hotelbot_cli.serving.judge import since

    before, now = figures(1000, fallbacks=10), figures(1300, fallbacks=100)
    delta = since(now, before)
    assert delta["answers"] == 300 and delta["fallbacks"] == 90
    assert dict(delta["latency_buckets"])[0.01] == 300.0
    assert since(now, None)["answers"] == 1300


def test_auto_promote_after_n_healthy_answers():
    assert judge(figures(300), figures(150), CFG, auto_promote=200).decision == WAIT
    verdict = judge(figures(300), figures(250), CFG, auto_promote=200)
    assert verdict.decision == PROMOTE and "250 canary answers" in verdict.reasons[0]
    assert judge(figures(300), figures(250, fallbacks=200), CFG, auto_promote=200).decision == ABORT


def test_statistics_helpers():
    assert fisher_greater(30, 100, 5, 100) < 1e-4 < fisher_greater(5, 100, 30, 100)
    assert fisher_greater(0, 0, 1, 10) == 1.0
    assert p95([(0.01, 90.0), (0.1, 96.0), (1.0, 100.0)]) == 0.1
    assert p95([]) is None and p95([(0.1, 0.0)]) is None


def test_version_metrics_snapshot_sums_what_was_observed():
    metrics = VersionMetrics()
    for _ in range(3):
        metrics.observe_answer("v1", "wifi_info", 0.8, False)
    metrics.observe_answer("v1", "out_of_scope", 0.3, True)
    metrics.observe_request("v1", "/classify", 200, 0.004)
    metrics.observe_request("v1", "/classify", 500, 0.2)
    metrics.observe_answer("v2", None, None, False)  # no classifier: not an answer
    snap = metrics.snapshot()
    assert snap["v1"]["answers"] == 4 and snap["v1"]["fallbacks"] == 1 and snap["v1"]["errors"] == 1
    assert snap["v1"]["requests"] == 2 and snap["v1"]["confidence_sum"] == pytest.approx(2.7)
    assert p95(snap["v1"]["latency_buckets"]) == 0.25 and "v2" not in snap


def test_judgement_thresholds_are_checked():
    for bad in ({"canary_min_requests": 0}, {"canary_alpha": 0.0}, {"canary_max_latency_ratio": 0.5},
                {"canary_max_fallback_increase": 1.5}):
        with pytest.raises(ConfigError):
            DeploymentConfig(**bad)


# ------------------------------------------------------------------ drift
def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    from hotelbot_cli.serving.drift import psi

    reference = {"a": 0.5, "b": 0.3, "c": 0.2}
    assert psi({"a": 50, "b": 30, "c": 20}, reference) == 0.0
    assert 0 < psi({"a": 550, "b": 270, "c": 180}, reference) < 0.1  # a little change
    assert psi({"a": 5, "b": 5, "c": 90}, reference) > 0.25  # guests ask something else
    assert psi({"d": 100}, reference) > 1  # an intent validation never saw
    assert psi({}, reference) == 0.0
    # out_of_scope is the fallback rule's, not the PSI's: 5 % fallbacks alone is no drift
    assert psi({"a": 475, "b": 285, "c": 190, "out_of_scope": 50}, {**reference}) == 0.0


def test_psi_does_not_read_sampling_noise_as_drift():
    """Two samples of the same 29-intent distribution (500 live answers, 615 validation texts): the raw PSI is
    about 0.1 from noise alone; less its expected bias it stays well below the 0.25 alert."""
    import random

    from hotelbot_cli.serving.drift import psi

    rng = random.Random(0)
    intents = [f"i{j}" for j in range(29)]
    reference_counts = {i: 0 for i in intents}
    for _ in range(615):
        reference_counts[rng.choice(intents)] += 1
    shares = {i: c / 615 for i, c in reference_counts.items()}
    scores = []
    for _ in range(20):
        live = {i: 0 for i in intents}
        for _ in range(500):
            live[rng.choice(intents)] += 1
        scores.append(psi(live, shares, 615))
    assert max(scores) < 0.1


def test_drift_reasons_need_enough_answers_and_a_real_shift(tmp_path):
    from hotelbot_cli.serving.drift import drift_figures, is_drifting, reference_of

    (tmp_path / "data").mkdir()
    rows = [{"text": f"t{i}", "intent": intent} for i, intent in enumerate(["a"] * 5 + ["b"] * 4 + ["out_of_scope"])]
    (tmp_path / "data" / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    reference = reference_of(tmp_path)
    assert reference == {"intents": {"a": 0.5, "b": 0.4, "out_of_scope": 0.1}, "fallback_rate": 0.1, "size": 10}
    assert reference_of(tmp_path / "nothing") is None
    cfg = DeploymentConfig(drift_min_answers=100)
    same = drift_figures({"answers": 100, "fallbacks": 10, "intents": {"a": 50, "b": 40, "out_of_scope": 10}}, reference)
    assert is_drifting(same, cfg) == []
    shifted = drift_figures({"answers": 100, "fallbacks": 40, "intents": {"a": 10, "b": 50, "out_of_scope": 40}},
                            reference)
    reasons = is_drifting(shifted, cfg)
    assert len(reasons) == 2 and "PSI" in reasons[0] and "fallback rate 0.400 vs 0.100" in reasons[1]
    assert is_drifting({**shifted, "answers": 99}, cfg) == []  # too few answers to say
