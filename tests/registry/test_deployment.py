"""deploy / rollback / verify / history / backups / notifications, through the CLI and the library."""

import json
import sys

from typer.testing import CliRunner

from conftest import clone_version, flip_byte
from hotelbot_cli.cli.app import app
from hotelbot_cli.registry.backups import list_backups

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def doc(result):
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout)


def history(registry):
    path = registry.root / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def break_head(staged):
    """Make every prediction the same intent: same files, valid checksums, a much worse model."""
    from safetensors.torch import load_file, save_file

    path = staged / "model" / "model.safetensors"
    state = load_file(str(path))
    state["head.weight"].zero_()
    state["head.bias"].zero_()
    state["head.bias"][0] = 10.0
    save_file(state, str(path))
    from hotelbot_cli.export import drop_export

    drop_export(staged / "model")  # the ONNX export was made from the old weights: this clone runs on torch


def test_deploy_switches_and_predict_follows(registry_copy):
    result = run("deploy", "v0001", "--reason", "first", "--json")
    assert result.exit_code == 0, result.output
    d = doc(result)
    assert (d["action"], d["version"], d["previous"]) == ("deploy", "v0001", None)
    assert d["gate"]["passed"] and d["smoke"]["texts"] > 0
    assert registry_copy.current_name() == "v0001"
    assert (registry_copy.root / "current").resolve() == (registry_copy.root / "versions/v0001").resolve()
    assert doc(run("predict", "hola", "--json"))["model_version"] == "v0001"
    events = history(registry_copy)
    assert [e["event"] for e in events] == ["deploy"]
    assert events[0]["from"] is None and events[0]["to"] == "v0001" and events[0]["reason"] == "first"
    assert events[0]["user"] and events[0]["at"] and events[0]["scores"]["overall_score"] >= 0


def test_deploy_backs_up_previous_and_rollback_restores(registry_copy):
    assert run("deploy", "v0001").exit_code == 0
    result = run("deploy", "v0002", "--json")
    assert result.exit_code == 0, result.output
    d = doc(result)
    assert d["previous"] == "v0001" and d["backup"]["version"] == "v0001"
    assert (registry_copy.backup_dir / d["backup"]["record"]).is_file() and d["backup"]["kind"] == "pinned"
    listing = doc(run("versions", "--json"))
    assert listing["current"] == "v0002" and listing["previous"] == ["v0001"]
    assert [b["version"] for b in listing["backups"]] == ["v0001"]

    result = run("rollback", "--reason", "guests complain", "--json")
    assert result.exit_code == 0, result.output
    d = doc(result)
    assert (d["action"], d["version"], d["previous"]) == ("rollback", "v0001", "v0002")
    assert registry_copy.current_name() == "v0001"
    assert doc(run("predict", "hola", "--json"))["model_version"] == "v0001"
    assert [e["event"] for e in history(registry_copy)] == ["deploy", "deploy", "rollback"]
    assert history(registry_copy)[-1]["reason"] == "guests complain"

    # the stack is now empty: nothing more to roll back to
    result = run("rollback")
    assert result.exit_code == 1 and "nothing to roll back to" in result.stderr


def test_rollback_with_nothing_deployed(registry_copy):
    result = run("rollback")
    assert result.exit_code == 1 and "nothing to roll back to" in result.stderr
    assert history(registry_copy) == []


def test_rollback_to_named_version_and_bad_names(registry_copy):
    assert run("deploy", "v0002").exit_code == 0
    assert doc(run("rollback", "--to", "v0001", "--json"))["version"] == "v0001"
    for bad in ("../versions/v0001", "v1", "/etc"):
        result = run("rollback", "--to", bad)
        assert result.exit_code == 1 and "invalid version name" in result.stderr
    assert registry_copy.current_name() == "v0001"


def test_deploy_defaults_to_newest_validated(registry_copy):
    result = run("deploy")
    assert result.exit_code == 1 and "no validated version" in result.stderr
    assert run("validate", "v0001").exit_code == 0
    assert doc(run("deploy", "--json"))["version"] == "v0001"
    again = doc(run("deploy", "v0001", "--json"))
    assert again["action"] == "noop" and again["changed"] is False


def test_gate_failure_changes_nothing_and_exits_3(registry_copy, monkeypatch):
    assert run("deploy", "v0001").exit_code == 0
    before = (registry_copy.root / "current.json").read_text()
    monkeypatch.setenv("MIN_VALIDATION_SCORE", "1.0")
    result = run("deploy", "v0002")
    if json.loads((registry_copy.root / "validations/v0002.json").read_text())["overall_score"] < 1.0:
        assert result.exit_code == 3 and "not deployed" in result.stderr
        assert (registry_copy.root / "current.json").read_text() == before
        assert list_backups(registry_copy) == []
        assert history(registry_copy)[-1]["event"] == "gate_failed"


def test_per_intent_regression_blocks_deploy(registry_copy):
    assert run("deploy", "v0001").exit_code == 0
    bad = clone_version(registry_copy, "v0001", break_head)
    result = run("deploy", bad.name, "--min-score", "0")
    assert result.exit_code == 3
    assert "regressions vs v0001" in result.stderr
    assert registry_copy.current_name() == "v0001"
    # a generous tolerance lets it through
    assert run("deploy", bad.name, "--min-score", "0", "--tolerance", "1.0").exit_code == 0


def test_failed_verification_auto_rolls_back_with_exit_4(registry_copy, monkeypatch):
    import hotelbot_cli.pipeline.deploy as deployment
    from hotelbot_cli.errors import ModelError

    assert run("deploy", "v0001").exit_code == 0

    def broken_smoke(info, settings):
        raise ModelError(f"{info.name} does not load")

    monkeypatch.setattr(deployment, "smoke_check", broken_smoke)
    result = run("deploy", "v0002")
    assert result.exit_code == 4 and "restored v0001" in result.stderr
    assert registry_copy.current_name() == "v0001"
    assert registry_copy.current_state()["previous"] == []
    assert history(registry_copy)[-1]["event"] == "auto_rollback"

    monkeypatch.setenv("ENABLE_AUTO_ROLLBACK", "false")
    result = run("deploy", "v0002")
    assert result.exit_code == 1 and "hotelbot rollback" in result.stderr
    assert registry_copy.current_name() == "v0002"


def test_corruption_is_detected_and_refused(registry_copy):
    assert run("deploy", "v0001").exit_code == 0
    assert doc(run("verify", "--json"))["ok"] is True
    # tokenizer.json: read by every runtime (an ONNX predict hashes only the files it reads, never
    # model.safetensors; tests/inference/test_onnx.py covers which files each runtime checks).
    flip_byte(registry_copy.root / "versions/v0002/model/tokenizer.json")
    result = run("verify", "--json")
    assert result.exit_code == 1
    assert any("v0002/model/tokenizer.json: checksum mismatch" in p for p in doc(result)["problems"])
    for args in (("deploy", "v0002"), ("predict", "hola", "--version", "v0002"), ("rollback", "--to", "v0002")):
        result = run(*args)
        assert result.exit_code == 1 and ("checksum" in result.stderr or "corrupt" in result.stderr), args
    assert registry_copy.current_name() == "v0001"


def test_rollback_rebuilds_a_corrupt_version_from_its_backup(registry_copy):
    assert run("deploy", "v0001").exit_code == 0
    assert run("deploy", "v0002").exit_code == 0  # backs up v0001
    weights = registry_copy.root / "versions/v0001/model/model.safetensors"
    weights.unlink()
    weights.write_bytes(b"garbage")  # the file replaced (a new file, as editors and copies write them)
    result = run("rollback", "--json")
    assert result.exit_code == 0, result.output
    d = doc(result)
    assert d["version"] == "v0001" and d["restored_from_backup"] is True
    assert registry_copy.verify("v0001") == []


def test_a_blob_changed_in_place_is_refused_everywhere_it_is_shared(registry_copy):
    """Versions share identical files (hard links to one stored blob): bytes changed IN PLACE change every
    version holding them, and no backup can bring them back (README: what a backup does not protect
    against). Every command refuses them with one clear line."""
    assert run("deploy", "v0001").exit_code == 0
    assert run("deploy", "v0002").exit_code == 0  # backs up v0001
    weights = registry_copy.root / "versions/v0001/model/model.safetensors"
    weights.chmod(0o644)  # blobs are read-only; a user with the rights can still write into one
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    problems = doc(run("verify", "--json"))["problems"]
    assert "v0001/model/model.safetensors: checksum mismatch (corrupt or modified)" in problems
    assert "v0002/model/model.safetensors: checksum mismatch (corrupt or modified)" in problems
    result = run("rollback")
    assert result.exit_code == 1 and "no backup can rebuild it" in result.stderr and "corrupt" in result.stderr
    assert registry_copy.current_name() == "v0002"


def test_backups_are_pruned_to_the_configured_count(registry_copy, monkeypatch):
    monkeypatch.setenv("HOTELBOT_BACKUPS_TO_KEEP", "2")
    clone_version(registry_copy, "v0001")
    clone_version(registry_copy, "v0001")
    for version in ("v0001", "v0002", "v0003", "v0004"):
        assert run("deploy", version).exit_code == 0
    assert [b["version"] for b in list_backups(registry_copy)] == ["v0002", "v0003"]


def test_notifications_command_gets_json_and_failures_never_block(registry_copy, tmp_path, monkeypatch):
    sink = tmp_path / "events.jsonl"
    monkeypatch.setenv("HOTELBOT_NOTIFY_COMMAND", f"cat >> {sink}; echo >> {sink}")
    assert run("deploy", "v0001").exit_code == 0
    event = json.loads(sink.read_text().splitlines()[0])
    assert event["event"] == "deploy" and event["to"] == "v0001" and "registry" in event

    monkeypatch.setenv("HOTELBOT_NOTIFY_COMMAND", "exit 7")
    monkeypatch.setenv("HOTELBOT_NOTIFY_WEBHOOK", "http://127.0.0.1:9/unreachable")
    result = run("deploy", "v0002")
    assert result.exit_code == 0 and "notification failed" in result.stderr
    assert registry_copy.current_name() == "v0002"
    result = run("rollback", "--json")
    assert result.exit_code == 0 and len(doc(result)["notifications"]) == 2


def test_history_command(registry_copy):
    assert run("deploy", "v0001", "--reason", "go").exit_code == 0
    events = doc(run("history", "--json"))["events"]
    assert [e["event"] for e in events] == ["deploy"]
    assert "deploy" in run("history").stdout


def test_auto_deploy_on_success(registry_copy, tiny_data, fast_train_env, monkeypatch):
    monkeypatch.setenv("AUTO_DEPLOY_ON_SUCCESS", "true")
    assert run("prepare", tiny_data).exit_code == 0
    result = run("train", "--json", "--force")
    assert result.exit_code == 0, result.output
    d = doc(result)
    assert d["deployed"]["version"] == d["version"] and registry_copy.current_name() == d["version"]


def test_a_second_deploy_waits_for_the_lock_then_fails_clearly(registry_copy, monkeypatch):
    import subprocess

    monkeypatch.setenv("HOTELBOT_LOCK_TIMEOUT", "0.5")
    with registry_copy.lock():
        done = subprocess.run([sys.executable, "-m", "hotelbot_cli", "deploy", "v0001"], capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 1
    assert "another hotelbot process is changing the registry" in done.stderr
    assert registry_copy.current_name() is None


def test_facade_runs_the_seed_quick_start(registry_copy, tiny_data, fast_train_env):
    from hotelbot_cli.trainer import ModelTrainer

    trainer = ModelTrainer()
    trainer.prepare_training_data(str(tiny_data))
    trained = trainer.train_models("all", force=True)
    assert [(s["component"], s["status"]) for s in trained["steps"]] == [
        ("classifier", "trained"), ("knowledge", "skipped"), ("entities", "skipped"), ("sentiment", "skipped"),
        ("generator", "skipped"), ("replies", "skipped")]  # only the intent data is prepared here
    assert trained["metrics"]["overall_score"] >= 0
    results = trainer.validate_models()
    assert 0 <= results["overall_score"] <= 1 and results["version"] == trained["version"]
    deployed = trainer.deploy_models()
    assert deployed["version"] == trained["version"]
    report = trainer.generate_training_report()
    assert report["version"] == trained["version"] and report["weakest_intents"]
    assert trainer.backup_current_models()["version"] == trained["version"]
    rolled = trainer.rollback_to_previous_version(reason="test", to="v0001")
    assert rolled["version"] == "v0001"


def test_the_gate_does_not_run_the_deployed_classifier_again_when_the_files_are_the_same(registry_copy, monkeypatch):
    """v0002 is a clone of v0001 (a component-only training carries the classifier over like this): the gate's
    comparison with the deployed v0001 reuses the new version's answers (all deltas 0) instead of loading and
    running the same model again; a version with another classifier is still run against it."""
    from hotelbot_cli.config import load_settings
    from hotelbot_cli.pipeline import validate as module

    assert run("deploy", "v0001").exit_code == 0
    loaded = []
    real = module.load_predictor
    monkeypatch.setattr(module, "load_predictor", lambda info, *a, **k: loaded.append(info.name) or real(info, *a, **k))
    forget_validations(registry_copy)  # no recorded answers to reuse (see the test below)
    result = module.validate_version(registry_copy, "v0002", load_settings(), gate=True)
    assert loaded == ["v0002"]  # the deployed v0001 was not loaded
    assert result.comparison.reference_version == "v0001"
    assert set(result.comparison.per_intent_f1_deltas.values()) == {0.0}
    other = clone_version(registry_copy, "v0001", break_head)  # another classifier: compared for real
    loaded.clear()
    forget_validations(registry_copy)
    module.validate_version(registry_copy, other.name, load_settings(), gate=True)
    assert loaded == [other.name, "v0001"]


def forget_validations(registry):
    for path in (registry.root / "validations").glob("*.json"):
        path.unlink()


def test_the_gate_reuses_recorded_answers_of_the_same_classifier_on_the_same_texts(registry_copy, monkeypatch):
    """Deploying v0001 records its gate's answers with an evaluation key (its classifier files' checksums, the
    split's, the runtime settings, the libraries, the code). The gate of v0002 (the same files and split: a
    component-only training) reuses them without loading a model, and says so; `hotelbot validate` still
    evaluates; another key (a runtime setting, another classifier) is evaluated for real, and a version with
    another classifier reuses the deployed one's recorded answers on the same split."""
    from hotelbot_cli.config import load_settings
    from hotelbot_cli.pipeline import validate as module

    deployed = doc(run("deploy", "v0001", "--json"))
    assert deployed["gate"]["reused_from"] is None  # nothing recorded yet: evaluated
    recorded = registry_copy.validation_of("v0001")
    assert recorded["evaluation_key"] and recorded["reused_from"] is None
    loaded = []
    real = module.load_predictor
    monkeypatch.setattr(module, "load_predictor", lambda info, *a, **k: loaded.append(info.name) or real(info, *a, **k))

    result = module.validate_version(registry_copy, "v0002", load_settings(), gate=True)
    assert loaded == [] and result.reused_from == "v0001"
    assert result.evaluation_key == recorded["evaluation_key"]
    assert result.metrics == recorded["metrics"] and result.passed
    gate = module_gate(registry_copy, "v0002")
    assert gate["reused_from"] == "v0001" and gate["passed"]

    module.validate_version(registry_copy, "v0002", load_settings())  # `hotelbot validate`: always measured
    assert loaded[0] == "v0002"

    loaded.clear()
    monkeypatch.setenv("HOTELBOT_ONNX_THREADS", "1")  # a runtime setting changes the key: evaluated again
    again = module.validate_version(registry_copy, "v0002", load_settings(), gate=True)
    assert loaded == ["v0002"] and again.reused_from is None and again.evaluation_key != recorded["evaluation_key"]
    assert again.metrics["per_intent"] == recorded["metrics"]["per_intent"]  # and the same answers
    monkeypatch.delenv("HOTELBOT_ONNX_THREADS")

    other = clone_version(registry_copy, "v0001", break_head)  # another classifier on the same split
    loaded.clear()
    worse = module.validate_version(registry_copy, other.name, load_settings(), gate=True)
    assert loaded == [other.name]  # evaluated; the deployed v0001's answers come from its record
    assert worse.comparison.reference_version == "v0001" and worse.comparison.regressions(0.05)

    # a record whose version's files do not give its key (left from a rebuilt version, restored, or edited)
    # is not believed: v0001's key and answers filed under the other classifier's version
    forget_validations(registry_copy)
    registry_copy.record_validation(other.name, {**recorded, "version": other.name})
    loaded.clear()
    fresh = module.validate_version(registry_copy, "v0002", load_settings(), gate=True)
    assert loaded[0] == "v0002" and fresh.reused_from is None


def module_gate(registry, name):
    from hotelbot_cli.config import load_settings
    from hotelbot_cli.pipeline.deploy import gate_version

    return gate_version(registry, load_settings(), name)
