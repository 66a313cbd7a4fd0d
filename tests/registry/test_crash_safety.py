"""Kill real deploy/rollback subprocesses with SIGKILL at every named point of the operation, and at
seeded random moments, then check the registry is in the old or the new state and the next commands
work. The named points are hooks in the code (registry.store.crashpoint): the process really dies there."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from hotelbot_cli.cli.app import app

runner = CliRunner()
DEPLOY_POINTS = ["mid-backup", "before-switch", "after-state-switch", "after-switch", "after-history"]
ROLLBACK_POINTS = ["before-switch", "after-state-switch", "after-switch"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def hotelbot(*args, crash_at=None):
    env = dict(os.environ)
    if crash_at:
        env["HOTELBOT_TEST_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, "-m", "hotelbot_cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def assert_consistent(registry, allowed):
    state = json.loads((registry.root / "current.json").read_text()) if (registry.root / "current.json").exists() \
        else {"version": None}
    assert state["version"] in allowed, state
    # the next command works and agrees with the state
    listing = cli("versions", "--json")
    assert listing.exit_code == 0, listing.output
    assert json.loads(listing.stdout)["current"] == state["version"]
    if state["version"]:
        predicted = cli("predict", "hola", "--json")
        assert predicted.exit_code == 0, predicted.output
        assert json.loads(predicted.stdout)["model_version"] == state["version"]
    # a writer repairs leftovers; afterwards every checksum holds and nothing half-written remains
    verify = cli("verify", "--json")
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout)["ok"] is True
    return state["version"]


def settle(registry):
    """Run one more writer (a no-op deploy of the current version) so repair() runs, then check leftovers."""
    current = registry.current_name()
    if current:
        assert cli("deploy", current).exit_code == 0
        link = registry.root / "current"
        assert link.resolve() == (registry.root / "versions" / current).resolve()
    assert not list(registry.root.glob(".*.tmp"))
    assert not list((registry.root / "backup").glob("*.tmp")) if (registry.root / "backup").exists() else True
    assert not any((registry.root / ".staging").iterdir()) if (registry.root / ".staging").exists() else True


@pytest.mark.parametrize("point", DEPLOY_POINTS)
def test_deploy_killed_at_each_point_leaves_old_or_new(registry_copy, point):
    assert cli("deploy", "v0001").exit_code == 0
    proc = hotelbot("deploy", "v0002", crash_at=point)
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, f"the process did not reach {point}"
    version = assert_consistent(registry_copy, {"v0001", "v0002"})
    if point in ("mid-backup", "before-switch"):
        assert version == "v0001"
    else:
        assert version == "v0002"
    settle(registry_copy)
    # and the operation can simply be run again
    assert cli("deploy", "v0002").exit_code == 0 and registry_copy.current_name() == "v0002"


@pytest.mark.parametrize("point", ROLLBACK_POINTS)
def test_rollback_killed_at_each_point_leaves_old_or_new(registry_copy, point):
    assert cli("deploy", "v0001").exit_code == 0
    assert cli("deploy", "v0002").exit_code == 0
    proc = hotelbot("rollback", crash_at=point)
    proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL
    version = assert_consistent(registry_copy, {"v0001", "v0002"})
    assert version == ("v0002" if point == "before-switch" else "v0001")
    settle(registry_copy)


def test_deploy_and_rollback_killed_at_random_moments(registry_copy):
    assert cli("deploy", "v0001").exit_code == 0
    rng = random.Random(1234)
    for round_ in range(3):
        target = "v0002" if registry_copy.current_name() == "v0001" else "v0001"
        proc = hotelbot("deploy", target)
        time.sleep(rng.uniform(0.5, 4.0))  # not a synchronisation: a random moment to kill at
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert_consistent(registry_copy, {"v0001", "v0002"})
        settle(registry_copy)
