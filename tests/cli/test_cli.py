"""CLI tests through typer.testing.CliRunner: exit codes, --json documents, nothing written on errors."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hotelbot_cli.cli.app import app

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def tree(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else []


def test_help_lists_every_command_and_examples():
    result = run("--help")
    assert result.exit_code == 0
    commands = ("prepare", "train", "validate", "predict", "deploy", "rollback", "versions", "verify", "history",
                "models", "config", "serve", "search", "report", "reply", "export", "gc", "migrate")
    for command in commands:
        assert command in result.output
    for command in commands:
        sub = run(command, "--help")
        assert sub.exit_code == 0 and "Examples" in sub.output, command


def test_help_does_not_import_heavy_libraries():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom hotelbot_cli.cli.app import app\n"
            "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0\n"
            "r = CliRunner().invoke(app, ['versions', '--json'])\nassert r.exit_code == 0, r.output\n"
            "heavy = [m for m in ('torch', 'transformers', 'mlflow', 'sklearn', 'datasets', 'onnxruntime', 'onnx') "
            "if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_prepare_writes_split_and_json_summary(tiny_data, isolated_env):
    result = run("prepare", tiny_data, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["num_labels"] == 4 and doc["train_size"] + doc["validation_size"] == 48
    assert len(doc["fingerprint"]) == 64
    assert (isolated_env / "data/processed/train.jsonl").exists()


def test_prepare_dry_run_writes_nothing(tiny_data, isolated_env):
    result = run("prepare", tiny_data, "--dry-run")
    assert result.exit_code == 0
    assert tree(isolated_env / "data") == []


@pytest.mark.parametrize("content,fragment", [
    ('{"text": "hola", "intent": "greeting"}\n{broken\n', "line 2"),
    ('{"text": "", "intent": "greeting"}\n{"text": "chao", "intent": "goodbye"}\n', "empty text"),
    ('{"text": "hola", "intent": "greeting"}\n{"text": "hola", "intent": "goodbye"}\n', "labelled"),
    ('{"text": "hola", "intent": "greeting"}\n', "at least 2"),
])
def test_prepare_bad_input_exits_1_with_one_line_and_writes_nothing(tmp_path, isolated_env, content, fragment):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content, "utf-8")
    result = run("prepare", bad, "--output", isolated_env / "out")
    assert result.exit_code == 1
    assert fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (isolated_env / "out").exists()


def test_prepare_missing_file(isolated_env):
    result = run("prepare", "nope.json")
    assert result.exit_code == 1 and "file not found" in result.stderr


def test_all_trains_what_is_built_and_says_what_is_skipped(isolated_env, fast_train_env):
    result = run("train", "--model-type", "all")
    assert "every other component whose data is" in result.stderr
    assert result.exit_code == 1 and "hotelbot prepare" in result.stderr  # no data prepared in this test


def test_train_without_prepared_data_says_what_to_run(isolated_env, fast_train_env):
    result = run("train")
    assert result.exit_code == 1 and "hotelbot prepare" in result.stderr


def test_usage_error_is_exit_2():
    assert run("train", "--model-type", "nonsense").exit_code == 2


def test_bad_config_value_is_one_line_exit_1(isolated_env, monkeypatch):
    monkeypatch.setenv("TRAINING_EPOCHS", "many")
    result = run("config")
    assert result.exit_code == 1 and "expected int" in result.stderr


def test_config_shows_precedence(tmp_path, isolated_env, monkeypatch):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"training_config": {"epochs": 9, "batch_size": 2}}))
    monkeypatch.setenv("TRAINING_BATCH_SIZE", "3")
    doc = json.loads(run("config", "--config", cfg, "--json").stdout)
    assert doc["training_config"]["epochs"] == 9 and doc["training_config"]["batch_size"] == 3
    assert doc["sources"][-1] == "env"


def test_versions_on_empty_registry(isolated_env):
    result = run("versions", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"registry": "registry", "current": None, "previous": [], "canary": None,
                                         "versions": [], "backups": []}


def test_predict_and_validate_without_a_model_exit_1(isolated_env):
    for args in (("predict", "hola"), ("validate",)):
        result = run(*args)
        assert result.exit_code == 1
        assert "hotelbot train" in result.stderr


def test_predict_rejects_bad_version_names(isolated_env):
    result = run("predict", "hola", "--version", "../../etc")
    assert result.exit_code == 1 and "invalid version name" in result.stderr


@pytest.fixture
def trained(tiny_data, isolated_env, fast_train_env):
    assert run("prepare", tiny_data).exit_code == 0
    result = run("train", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_train_json_validate_predict_versions(trained, isolated_env):
    assert trained["version"] == "v0001" and trained["skipped"] is False
    assert 0 <= trained["metrics"]["macro_f1"] <= 1 and trained["history"]
    meta = json.loads((isolated_env / "registry/versions/v0001/metadata.json").read_text())
    for key in ("dataset_fingerprint", "base_model", "config", "metrics", "library_versions", "hardware",
                "training", "files", "labels", "mlflow_run_id"):
        assert key in meta, key
    assert "model/model.safetensors" in meta["files"] and "model/embeddings.safetensors" in meta["files"]
    # the self-contained .pt is no longer a version file: `hotelbot export --format pt` writes it
    assert "intent_classifier.pt" not in meta["files"]
    assert (isolated_env / "logs/training.log").read_text().count("trained v0001") == 1

    # same data + config: skipped, says which version matches; --force trains again
    again = run("train", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout) == {
        "version": "v0001", "skipped": True, "reason": json.loads(again.stdout)["reason"]}

    result = run("validate", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["version"] == "v0001" and doc["passed"] is True
    assert set(doc["metrics"]["per_intent"]) == {"greeting", "get_news", "wifi_info", "breakfast_info"}
    assert doc["metrics"]["confusion_matrix"]["labels"]
    assert doc["overall_score"] == pytest.approx(trained["metrics"]["macro_f1"])
    assert list((isolated_env / "reports/validation_reports").glob("v0001-*.json"))
    assert "v0001" in (isolated_env / "logs/validation.log").read_text()
    listing = json.loads(run("versions", "--json").stdout)
    assert [v["version"] for v in listing["versions"]] == ["v0001"]
    assert listing["versions"][0]["validated_passed"] is True

    gate = run("validate", "--min-score", "1.01")
    assert gate.exit_code == 1  # out of range is a config error, not a gate
    gate = run("validate", "--json", "--min-score", "1.0")
    if json.loads(gate.stdout)["overall_score"] < 1.0:
        assert gate.exit_code == 3 and "gate failed" in gate.stderr

    result = run("predict", "dime las noticias", "clave del wifi", "--top-k", "2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model_version"] == "v0001"
    assert [p["text"] for p in doc["predictions"]] == ["dime las noticias", "clave del wifi"]
    for p in doc["predictions"]:
        assert set(p) == {"text", "intent", "confidence", "top_k", "fallback", "entities", "sentiment"}
        assert len(p["top_k"]) == 2 and p["entities"] == [] and p["sentiment"] is None  # classifier-only version
        assert p["fallback"] is False  # the tiny set has no out_of_scope intent: no threshold
        assert p["intent"] == p["top_k"][0]["intent"] and 0 < p["confidence"] <= 1

    result = run("predict", "-", "--json", input="hola\n\nbuenos días\n")
    assert [p["text"] for p in json.loads(result.stdout)["predictions"]] == ["hola", "buenos días"]



def test_validate_test_scores_the_independent_test_set_without_gating(trained, isolated_env, tmp_path):
    test_set = tmp_path / "test.jsonl"
    rows = [("hola amigos", "greeting"), ("noticias del mundo hoy", "get_news"), ("la red del wifi", "wifi_info"),
            ("desayuno a qué hora", "breakfast_info"), ("buenísimas tardes", "greeting")]
    test_set.write_text("".join(json.dumps({"text": x, "intent": y}, ensure_ascii=False) + "\n" for x, y in rows), "utf-8")
    result = run("validate", "--test", "--test-set", str(test_set), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    tested = doc["test"]
    assert tested["version"] == "v0001" and tested["test_set"] == str(test_set) and tested["num_examples"] == 5
    assert tested["accuracy"] == pytest.approx(1 - len(tested["misses"]) / 5)
    assert all(m["intent"] != m["predicted"] for m in tested["misses"]) and tested["runtime"]
    assert doc["overall_score"] == pytest.approx(trained["metrics"]["macro_f1"])  # the validation is unchanged
    text = run("validate", "--test", "--test-set", str(test_set))
    assert text.exit_code == 0 and "test set" in text.stdout and "not gated" in text.stdout

    seen = tmp_path / "seen.jsonl"  # a text the version was trained on: not a test set
    seen.write_text('{"text": "hola", "intent": "greeting"}\n{"text": "la red del wifi", "intent": "wifi_info"}\n')
    result = run("validate", "--test", "--test-set", str(seen))
    assert result.exit_code == 1 and "was trained or validated on 1 text(s) of the test set" in result.stderr
    reports = sorted((isolated_env / "reports/validation_reports").glob("*.json"))
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"text": "quiero un masaje", "intent": "spa_booking"}\n{"text": "hola amigos", "intent": "greeting"}\n')
    result = run("validate", "--test", "--test-set", str(unknown))
    assert result.exit_code == 1 and "does not know: spa_booking" in result.stderr
    assert sorted((isolated_env / "reports/validation_reports").glob("*.json")) == reports  # checked first: nothing recorded
    result = run("validate", "--test-set", str(test_set))
    assert result.exit_code == 2 and "--test-set goes with --test" in result.stderr
    result = run("validate", "--test")  # the tiny data was prepared without a test set; none shipped here
    assert result.exit_code == 1 and "no independent test set" in result.stderr


def test_prepare_refuses_data_overlapping_its_test_set_and_writes_nothing(tiny_data, isolated_env):
    test_set = tiny_data.with_name("tiny_intents_test.jsonl")
    test_set.write_text('{"text": "Hola, buenas!", "intent": "greeting"}\n{"text": "wifi roto", "intent": "wifi_info"}\n',
                        "utf-8")
    result = run("prepare", str(tiny_data))
    assert result.exit_code == 1 and "1 training text(s) also in the independent test set" in result.stderr
    assert not (isolated_env / "data").exists()
    test_set.write_text('{"text": "hola a todos", "intent": "greeting"}\n{"text": "wifi roto", "intent": "wifi_info"}\n',
                        "utf-8")
    result = run("prepare", str(tiny_data), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test_set"]["examples"] == 2
    recorded = json.loads((isolated_env / "data/processed/dataset.json").read_text("utf-8"))
    assert recorded["test_set"]["path"] == str(test_set)
    result = run("prepare", "--documents", str(tiny_data.parent), "--test-set", str(test_set))
    assert result.exit_code == 2 and "--test-set applies to intent data" in result.stderr


def test_predict_refuses_a_corrupt_version(trained, isolated_env):
    # tokenizer.json is read by the torch and the ONNX runtime alike (an ONNX predict never hashes
    # model.safetensors: see tests/inference/test_onnx.py for the files each runtime checks).
    weights = isolated_env / "registry/versions/v0001/model/tokenizer.json"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run("predict", "hola")
    assert result.exit_code == 1 and "checksum" in result.stderr


def test_gate_failure_exits_3(trained, monkeypatch):
    monkeypatch.setenv("MIN_VALIDATION_SCORE", "1.0")
    result = run("validate", "--json")
    doc = json.loads(result.stdout)
    assert (result.exit_code == 3) == (doc["overall_score"] < 1.0)
    assert doc["passed"] is (doc["overall_score"] >= 1.0)


def test_root_path_options_override_env_and_do_not_leak(tmp_path, isolated_env, monkeypatch):
    monkeypatch.setenv("HOTELBOT_REPORTS", "from-env")
    doc = json.loads(run("--reports", tmp_path / "r", "--logs", tmp_path / "l", "--home", tmp_path / "h",
                         "config", "--json").stdout)
    assert doc["paths"]["reports"] == str(tmp_path / "r") and doc["paths"]["logs"] == str(tmp_path / "l")
    assert doc["paths"]["mlflow_tracking_uri"] != f"sqlite:///{tmp_path / 'h' / 'mlflow.db'}"  # env URI wins
    assert json.loads(run("config", "--json").stdout)["paths"]["reports"] == "from-env"
    uri = json.loads(run("--mlflow-uri", "sqlite:///x.db", "config", "--json").stdout)["paths"]["mlflow_tracking_uri"]
    assert uri == "sqlite:///x.db"


def test_live_progress_shows_only_the_metrics_a_model_reports(monkeypatch):
    from hotelbot_cli.cli.train import RichProgress
    from hotelbot_cli.training.events import TrainingEvent

    lines = []
    progress = RichProgress()
    # the console is the CLI's shared stderr console: patch it for this test only
    monkeypatch.setattr(progress.progress.console, "log", lambda text, **kw: lines.append(text))
    progress(TrainingEvent("evaluate", 10, 20, 1.0, 2, metrics={"loss": 2.5}))  # the generator: loss only
    progress(TrainingEvent("evaluate", 20, 20, 2.0, 2, metrics={"loss": 0.5, "accuracy": 0.9, "macro_f1": 0.8},
                           message="stopping early"))
    assert lines == ["epoch 1: eval loss 2.5000",
                     "epoch 2: eval loss 0.5000  accuracy 0.9000  macro-F1 0.8000  (stopping early)"]
