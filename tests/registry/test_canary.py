"""Gradual deploys in the registry: `deploy --canary`, `canary status|promote|abort`, rollback during a canary,
bad input refused with nothing changed, and SIGKILL at every point of promote/abort leaving stable or canary."""

import json
import signal

import pytest
from typer.testing import CliRunner

from conftest import flip_byte
from hotelbot_cli.cli.app import app

from test_crash_safety import assert_consistent, hotelbot

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def doc(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def state(registry):
    return json.loads((registry.root / "current.json").read_text())


def events(registry):
    return [e["event"] for e in doc(cli("history", "--json"))["events"]]


@pytest.fixture
def canary_running(registry_copy):
    assert cli("deploy", "v0001").exit_code == 0
    started = doc(cli("deploy", "v0002", "--canary", "10", "--reason", "friday", "--json"))
    return registry_copy, started


def test_deploy_canary_records_stable_canary_weight_and_start_at_once(canary_running):
    registry, started = canary_running
    assert started["action"] == "canary_start" and started["version"] == "v0002" and started["previous"] == "v0001"
    now = state(registry)
    assert now["version"] == "v0001" and now["canary"]["version"] == "v0002" and now["canary"]["weight"] == 10
    assert now["canary"]["started_at"] and now["canary"]["reason"] == "friday"
    assert started["gate"]["passed"] and started["smoke"]  # the usual gate and smoke test ran
    status = doc(cli("canary", "status", "--json"))
    assert status == {"stable": "v0001", "canary": now["canary"], "deployed_at": now["deployed_at"], "judgement": None,
                      "last_judgement": None}
    shown = cli("canary", "status")
    assert shown.exit_code == 0 and "v0002 answers 10% of conversations" in shown.output
    assert events(registry)[-1] == "canary_start"
    listing = doc(cli("versions", "--json"))
    assert listing["current"] == "v0001" and listing["canary"] == now["canary"]  # deployed: still the stable one
    assert [r["version"] for r in listing["versions"] if r["canary"]] == ["v0002"]
    assert "~ canary answering 10%" in cli("versions").output


def test_promote_makes_the_canary_the_deployed_version(canary_running):
    registry, _ = canary_running
    promoted = doc(cli("canary", "promote", "--json"))
    assert promoted["action"] == "canary_promote" and promoted["version"] == "v0002"
    assert promoted["backup"]["version"] == "v0001"
    now = state(registry)
    assert now["version"] == "v0002" and "canary" not in now and now["previous"][-1] == "v0001"
    assert events(registry)[-1] == "canary_promote"
    assert doc(cli("rollback", "--json"))["version"] == "v0001"  # and one command takes it back


@pytest.mark.parametrize("how", [("canary", "abort"), ("rollback",)])
def test_abort_and_rollback_during_a_canary_return_to_stable(canary_running, how):
    registry, _ = canary_running
    ended = doc(cli(*how, "--reason", "bad answers", "--json"))
    assert ended["action"] == "canary_abort" and ended["version"] == "v0001" and ended["previous"] == "v0002"
    now = state(registry)
    assert now["version"] == "v0001" and "canary" not in now
    assert events(registry)[-1] == "canary_abort"
    assert (registry.root / "versions" / "v0002").is_dir()  # the canary's version is kept
    assert doc(cli("canary", "status", "--json"))["canary"] is None


def unchanged(registry, before, result, phrase):
    assert result.exit_code == 1, result.output
    assert phrase in result.output and len(result.output.strip().splitlines()) <= 2, result.output
    assert (registry.root / "current.json").read_bytes() == before


def test_bad_canary_input_is_one_line_exit_1_and_changes_nothing(registry_copy):
    assert cli("deploy", "v0001").exit_code == 0
    before = (registry_copy.root / "current.json").read_bytes()
    for percent in ("0", "100", "-5"):
        unchanged(registry_copy, before, cli("deploy", "v0002", "--canary", percent), "1 to 99")
    unchanged(registry_copy, before, cli("deploy", "v0099", "--canary", "10"), "not found")
    unchanged(registry_copy, before, cli("deploy", "v0001", "--canary", "10"), "is the deployed version")
    unchanged(registry_copy, before, cli("canary", "promote"), "no canary is running")
    unchanged(registry_copy, before, cli("canary", "abort"), "no canary is running")
    lone = cli("deploy", "v0002", "--auto-promote", "100")
    assert lone.exit_code == 2 and "--auto-promote goes with --canary" in lone.output
    assert (registry_copy.root / "current.json").read_bytes() == before
    corrupt = registry_copy.get("v0002").path / "model" / "classifier.json"
    flip_byte(corrupt)
    unchanged(registry_copy, before, cli("deploy", "v0002", "--canary", "10"), "v0002")
    history = events(registry_copy)
    assert "canary_start" not in history


def test_a_running_canary_blocks_a_second_one_and_a_plain_deploy(canary_running):
    registry, _ = canary_running
    from conftest import clone_version

    clone_version(registry, "v0001")  # v0003
    before = (registry.root / "current.json").read_bytes()
    unchanged(registry, before, cli("deploy", "v0003", "--canary", "5"), "already running")
    unchanged(registry, before, cli("deploy", "v0003"), "is running")
    unchanged(registry, before, cli("rollback", "--to", "v0003"), "is running")
    assert cli("deploy", "v0001").exit_code == 0  # deploying the stable version again is the usual no-op


def test_nothing_deployed_means_no_canary(registry_copy):
    result = cli("deploy", "v0002", "--canary", "10")
    assert result.exit_code == 1 and "nothing is deployed" in result.output
    assert not (registry_copy.root / "current.json").exists()


@pytest.mark.parametrize("command,point", [(("canary", "promote"), "before-switch"),
                                           (("canary", "promote"), "after-state-switch"),
                                           (("canary", "abort"), "before-switch"),
                                           (("canary", "abort"), "after-state-switch")])
def test_sigkill_during_promote_or_abort_leaves_stable_or_canary(canary_running, command, point):
    registry, _ = canary_running
    proc = hotelbot(*command, crash_at=point)
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, f"the process did not reach {point}"
    now = state(registry)
    if point == "before-switch":  # nothing written: the canary still runs beside the stable version
        assert now["version"] == "v0001" and now["canary"]["version"] == "v0002"
    elif command[1] == "promote":
        assert now["version"] == "v0002" and "canary" not in now
    else:
        assert now["version"] == "v0001" and "canary" not in now
    assert_consistent(registry, {"v0001", "v0002"})
    # the next command works
    follow = cli("canary", command[1]) if "canary" in now else cli("canary", "status")
    assert follow.exit_code == 0, follow.output
    assert "canary" not in state(registry)


def test_auto_deploy_after_training_waits_for_a_running_canary(canary_running, tiny_data, fast_train_env,
                                                               monkeypatch):
    registry, _ = canary_running
    monkeypatch.setenv("AUTO_DEPLOY_ON_SUCCESS", "true")
    assert cli("prepare", tiny_data).exit_code == 0
    before = state(registry)
    result = cli("train", "--json", "--force")
    assert result.exit_code == 0, result.output  # the training succeeded: the deploy is what waits
    trained = json.loads(result.stdout)
    assert trained["deployed"]["action"] == "skipped" and "canary of v0002" in trained["deployed"]["reason"]
    assert "canary of v0002 is running" in " ".join(result.output.split())  # (the warning may wrap)
    assert state(registry) == before
