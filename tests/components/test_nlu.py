"""The joint NLU model (`train --model-type nlu`): one encoder, three heads, one pass per message.

One tiny joint training per module (``built``: the shipped entity and sentiment files, the tiny intent set);
each test works on its own copy of that registry."""

import json
import os
import shutil
import subprocess
import sys
import unicodedata

import pytest
from conftest import REPO, TINY_INTENTS
from typer.testing import CliRunner

from hotelbot_cli.cli.app import app
from hotelbot_cli.components import TrainRequest, by_model_type
from hotelbot_cli.components.compose import carry_over, components_of
from hotelbot_cli.components.nlu import joint_head
from hotelbot_cli.components.nlu.runtime import JointRunner
from hotelbot_cli.config import load_settings
from hotelbot_cli.data import clean_text, clean_text_with_offsets, prepare_dataset
from hotelbot_cli.errors import DataError
from hotelbot_cli.pipeline.analyze import Analyzer
from hotelbot_cli.registry import ModelRegistry

SHIPPED_ENTITIES = REPO / "datasets" / "entidades_es.jsonl"
SHIPPED_SENTIMENT = REPO / "datasets" / "sentimiento_es.jsonl"
HEAVY = ("torch", "transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _settings(root, tiny_model, mlflow_uri, **extra):
    env = {"HOTELBOT_HOME": str(root / "home"), "MLFLOW_TRACKING_URI": mlflow_uri,
           "HOTELBOT_BASE_MODEL": str(tiny_model), "TRAINING_EPOCHS": "8", "TRAINING_BATCH_SIZE": "16",
           "TRAINING_LEARNING_RATE": "0.002", **extra}
    return load_settings(env=env, path_overrides={"registry": root / "registry", "data": root / "data" / "processed"})


def _prepare_all(root, settings):
    data = root / "tiny.json"
    data.write_text(json.dumps({"intents": TINY_INTENTS}, ensure_ascii=False), "utf-8")
    prepare_dataset(data, settings.paths.data, settings.data)
    for name, path in (("entities", SHIPPED_ENTITIES), ("sentiment", SHIPPED_SENTIMENT)):
        component = by_model_type(name)
        component.write_split(component.prepare_split(path, 0.2, 42), root / "data" / name)


@pytest.fixture(scope="module")
def built(tiny_model, mlflow_uri, tmp_path_factory):
    root = tmp_path_factory.mktemp("nlu")
    settings = _settings(root, tiny_model, mlflow_uri)
    _prepare_all(root, settings)
    registry = ModelRegistry(settings.paths.registry)
    result = by_model_type("nlu").train(TrainRequest(settings, registry))
    return {"root": root, "result": result, "settings": settings}


@pytest.fixture
def workdir(built, isolated_env, monkeypatch, tiny_model):
    """A copy of the built workspace as the current directory (registry/, data/), tiny-model settings."""
    for name in ("registry", "data"):
        shutil.copytree(built["root"] / name, isolated_env / name, symlinks=True)
    monkeypatch.setenv("HOTELBOT_REGISTRY", str(isolated_env / "registry"))
    monkeypatch.setenv("HOTELBOT_DATA", str(isolated_env / "data" / "processed"))
    monkeypatch.setenv("HOTELBOT_BASE_MODEL", str(tiny_model))
    monkeypatch.setenv("TRAINING_EPOCHS", "2")
    monkeypatch.setenv("TRAINING_BATCH_SIZE", "16")
    monkeypatch.setenv("MIN_VALIDATION_SCORE", "0.0")
    return isolated_env


# ---------------------------------------------------------------------------------------- cleaning offsets
@pytest.mark.parametrize("raw", ["  hola   qué tal ", "cafe\u0301 con leche", "hola\u200bmundo", "a\tb\nc", "", "ñ"])
def test_clean_text_with_offsets_matches_clean_text_and_maps_each_char_back(raw):
    cleaned, offsets = clean_text_with_offsets(raw)
    assert cleaned == clean_text(raw) and len(offsets) == len(cleaned)
    for ch, (start, end) in zip(cleaned, offsets):
        source = unicodedata.normalize("NFC", raw[start:end])
        assert ch in source or (ch == " " and not source.strip()) or unicodedata.category(raw[start]) in ("Cc", "Cf")


# ---------------------------------------------------------------------------------------- training and layout
def test_nlu_publishes_one_version_whose_three_components_are_heads_of_one_model(built):
    result = built["result"]
    info = result.version
    assert result.component == "nlu" and components_of(info) == ["classifier", "entities", "sentiment"]
    config = json.loads((info.path / "model" / "classifier.json").read_text("utf-8"))
    assert config["tasks"]["sentiment"]["labels"] == ["negative", "neutral", "positive"]
    assert config["tasks"]["entities"]["tags"][0] == "O" and config["tasks"]["task_weights"]["entities"] == 1.0
    for name, output in (("entities", "token_logits"), ("sentiment", "sentiment_logits")):
        head = joint_head(info, name)
        assert head["output"] == output and head["model"] == "model"
        assert not (info.path / name / "model.safetensors").exists()  # no encoder of its own
        metrics = json.loads((info.path / name / "metrics.json").read_text("utf-8"))
        assert metrics["overall_score"] == info.metadata[name]["metrics"]["overall_score"]
        assert info.metadata[name]["joint"] is True
    runtime = json.loads((info.path / "model" / "runtime.json").read_text("utf-8"))
    assert runtime["outputs"] == ["logits", "sentiment_logits", "token_logits"]
    for name in ("onnx-fp32", "onnx-int8"):
        assert set(runtime["runtimes"][name]["tasks"]) == {"sentiment_macro_f1", "entities_micro_f1"}
    nlu = info.metadata["nlu"]
    assert set(nlu["tasks"]) == {"intents", "sentiment", "entities"} and "mixing" in nlu
    assert nlu["nlu_score"] == pytest.approx(sum(t["score"] for t in nlu["tasks"].values()) / 3)
    assert info.metadata["out_of_scope_threshold"] == info.metadata["nlu"]["tasks"]["intents"].get(
        "out_of_scope_threshold", info.metadata["out_of_scope_threshold"])
    assert result.document["tasks"]["entities"]["micro_f1"] == nlu["tasks"]["entities"]["score"]
    # the fit learned something on every task (the tiny model, 8 epochs)
    assert nlu["tasks"]["intents"]["score"] > 0.5 and nlu["tasks"]["sentiment"]["score"] > 0.4
    assert nlu["tasks"]["entities"]["score"] > 0.2


def test_training_the_same_data_again_is_refused_unless_forced(workdir, monkeypatch):
    monkeypatch.setenv("TRAINING_EPOCHS", "8")  # the settings `built` trained with
    monkeypatch.setenv("TRAINING_LEARNING_RATE", "0.002")
    result = CliRunner().invoke(app, ["train", "--model-type", "nlu", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["skipped"] is True and doc["version"] == "v0001"


# ---------------------------------------------------------------------------------------- one pass, same answers
MESSY = ["Soy  Ana, de la habitación 305 y  el wifi no va ", "cafe\u0301 para dos personas el 15/08/2026, gracias",
         "hola"]


def test_one_pass_answers_the_three_tasks_like_the_classifier_and_with_raw_offsets(workdir):
    registry = ModelRegistry(workdir / "registry")
    analyzer = Analyzer.from_registry(registry, "v0001")
    runner = JointRunner.attached(analyzer.classifier)
    assert runner is not None and analyzer.entities.runner is runner and analyzer.sentiment.runner is runner
    calls = []
    original = runner._run
    runner._run = lambda texts: calls.append(list(texts)) or original(texts)
    rows = analyzer.analyze(MESSY, top_k=2)
    assert len(calls) == 1  # intents, entities and sentiment from ONE pass
    plain = analyzer.classifier.predict(MESSY, top_k=2)  # /classify's answer
    for row, p, text in zip(rows, plain, MESSY):
        assert set(row) == {"text", "intent", "confidence", "top_k", "fallback", "entities", "sentiment"}
        assert (row["intent"], row["confidence"], row["top_k"], row["fallback"]) == (p.intent, p.confidence,
                                                                                      p.top_k, p.fallback)
        assert row["sentiment"]["label"] in ("negative", "neutral", "positive")
        assert 0.0 <= row["sentiment"]["confidence"] <= 1.0
        for entity in row["entities"]:
            assert text[entity["start"]:entity["end"]] == entity["text"]
            assert set(entity) == {"type", "text", "start", "end", "confidence"}


def test_torch_and_onnx_fp32_give_the_same_joint_answers(workdir, monkeypatch):
    registry = ModelRegistry(workdir / "registry")
    answers = {}
    for runtime in ("torch", "onnx-fp32"):
        monkeypatch.setenv("HOTELBOT_RUNTIME", runtime)
        rows = Analyzer.from_registry(registry, "v0001").analyze(MESSY)
        answers[runtime] = rows
    for a, b in zip(answers["torch"], answers["onnx-fp32"]):
        assert a["intent"] == b["intent"] and a["confidence"] == pytest.approx(b["confidence"], abs=1e-4)
        assert a["sentiment"]["label"] == b["sentiment"]["label"]
        assert [(e["type"], e["start"], e["end"]) for e in a["entities"]] == \
               [(e["type"], e["start"], e["end"]) for e in b["entities"]]


def _python(code: str, cwd) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                         env=dict(os.environ), timeout=180)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_predict_and_serve_of_a_joint_version_import_neither_torch_nor_transformers(workdir):
    code = ("import sys, json\nfrom typer.testing import CliRunner\nfrom hotelbot_cli.cli.app import app\n"
            "r = CliRunner().invoke(app, ['predict', 'Soy Ana de la 305', '--version', 'v0001', '--json'])\n"
            "assert r.exit_code == 0, r.output\n"
            "from hotelbot_cli.registry import ModelRegistry\n"
            "from hotelbot_cli.serving.models import ModelHolder\nfrom hotelbot_cli.serving.metrics import Metrics\n"
            "from hotelbot_cli.serving.settings import ServeSettings\n"
            "holder = ModelHolder(ModelRegistry('registry'), ServeSettings(), Metrics())\n"
            "model = holder._load('v0001')\n"
            "rows = model.analyzer.analyze(['Soy Ana de la 305'])\n"
            f"print(json.dumps({{'doc': json.loads(r.stdout), 'rows': rows, "
            f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))")
    result = json.loads(_python(code, workdir))
    assert result["heavy"] == []
    row = result["doc"]["predictions"][0]
    assert set(row) == {"text", "intent", "confidence", "top_k", "fallback", "entities", "sentiment"}
    assert result["rows"][0]["intent"] == row["intent"] and result["rows"][0]["sentiment"] == row["sentiment"]


# ---------------------------------------------------------------------------------------- gates, report, deploy
def test_validate_and_deploy_gate_every_task_of_the_joint_model(workdir, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["validate", "v0001", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    info = ModelRegistry(workdir / "registry").get("v0001")
    for name in ("entities", "sentiment"):  # scored on each head's own split, on the version's runtime
        scored = doc["components"][name]
        assert scored["metric"] == info.metadata[name]["metrics"]["metric"] and 0.0 <= scored["overall_score"] <= 1.0
        assert scored["metrics"]["data_source"].endswith(f"{name}/data/validation.jsonl") and scored["passed"] is True
    monkeypatch.setenv("MIN_VALIDATION_SCORE", "0.95")  # above the tiny model's entity score
    blocked = runner.invoke(app, ["deploy", "v0001"])
    assert blocked.exit_code != 0 and "entities" in blocked.stderr
    assert ModelRegistry(workdir / "registry").current_name() is None
    monkeypatch.setenv("MIN_VALIDATION_SCORE", "0.0")
    deployed = runner.invoke(app, ["deploy", "v0001", "--json"])
    assert deployed.exit_code == 0, deployed.output
    from hotelbot_cli.reporting import build_report

    report = build_report(ModelRegistry(workdir / "registry"), "v0001", measure_latency=False, figures=False,
                          min_score=0.0).to_dict()
    assert set(report["components"]) == {"entities", "sentiment"}
    entities = report["components"]["entities"]
    assert entities["headline"]["metric"] == "micro_f1"
    assert {r["label"] for r in entities["rows"]} == set(info.metadata["entities"]["labels"])


# ---------------------------------------------------------------------------------------- carry-over rules
def test_retraining_the_classifier_alone_refuses_to_orphan_the_joint_heads(workdir, tmp_path):
    registry = ModelRegistry(workdir / "registry")
    before = sorted(p.name for p in (workdir / "registry" / "versions").iterdir())
    with pytest.raises(DataError, match="heads of its joint NLU model") as caught:
        carry_over(registry, tmp_path / "staged", "classifier", source="v0001")
    assert "--model-type nlu" in caught.value.hint
    result = CliRunner().invoke(app, ["train", "--model-type", "classifier"])
    assert result.exit_code == 1 and "joint NLU model" in result.stderr
    assert sorted(p.name for p in (workdir / "registry" / "versions").iterdir()) == before


def test_incremental_nlu_extends_the_intent_head_and_keeps_the_other_heads(workdir):
    extra = workdir / "extra.json"
    more = dict(TINY_INTENTS)
    more["spa_info"] = ["a qué hora abre el spa", "hay spa en el hotel", "precio del spa", "el spa está abierto",
                        "reservar masaje en el spa", "horario del spa", "spa incluido", "dónde está el spa",
                        "quiero ir al spa", "circuito de spa", "spa para dos", "spa mañana"]
    extra.write_text(json.dumps({"intents": more}, ensure_ascii=False), "utf-8")
    runner = CliRunner()
    assert runner.invoke(app, ["prepare", str(extra)]).exit_code == 0
    result = runner.invoke(app, ["train", "--model-type", "nlu", "--incremental", "--from", "v0001", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    info = ModelRegistry(workdir / "registry").get(doc["version"])
    assert info.metadata["parent"] == "v0001" and "spa_info" in info.metadata["labels"]
    assert info.metadata["labels"][:4] == ModelRegistry(workdir / "registry").get("v0001").metadata["labels"]
    assert components_of(info) == ["classifier", "entities", "sentiment"]


def test_all_trains_the_joint_model_when_configured(workdir, monkeypatch):
    monkeypatch.setenv("TRAINING_JOINT_NLU", "true")
    result = CliRunner().invoke(app, ["train", "--model-type", "all", "--force", "--json"])
    assert result.exit_code == 0, result.output
    steps = {s["component"]: s["status"] for s in json.loads(result.stdout)["steps"]}
    assert steps["nlu"] == "trained"
    assert steps["classifier"] == steps["entities"] == steps["sentiment"] == "provided"


def test_all_with_separate_models_replaces_the_joint_heads_it_retrains(workdir):
    result = CliRunner().invoke(app, ["train", "--model-type", "all", "--force", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    steps = {s["component"]: s for s in doc["steps"]}
    assert "nlu" not in steps and steps["classifier"]["status"] == "trained"  # not chosen: no step
    registry = ModelRegistry(workdir / "registry")
    first = registry.get(steps["classifier"]["version"])
    assert first.metadata["carried_over"]["dropped"] == ["entities", "sentiment"]
    assert components_of(first) == ["classifier"]
    final = registry.get(doc["final_version"])
    assert components_of(final) == ["classifier", "entities", "sentiment"]
    for name in ("entities", "sentiment"):
        assert joint_head(final, name) is None and by_model_type(name).runs_on(final) is None
    assert "nlu" not in final.metadata
