"""`train --model-type all` (hotelbot_cli.pipeline): one chain of versions that ends with every prepared
component, one MLflow parent run with a child run per component, and unchanged components reused (copied
into the chain when they were trained in an older version) instead of trained again."""

import json

import pytest
from typer.testing import CliRunner

from conftest import REPO
from hotelbot_cli.cli.app import app
from hotelbot_cli.components.compose import adopt_component, components_of
from hotelbot_cli.errors import IntegrityError
from hotelbot_cli.registry import ModelRegistry

SHIPPED_SENTIMENT = REPO / "datasets" / "sentimiento_es.jsonl"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def tiny_sentiment(path, per_label=10):
    rows = [json.loads(line) for line in SHIPPED_SENTIMENT.read_text("utf-8").splitlines()]
    picked = [r for label in ("positive", "neutral", "negative") for r in [x for x in rows if x["label"] == label][:per_label]]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), "utf-8")
    return path


def test_all_is_one_mlflow_parent_run_with_a_child_per_component(tiny_data, isolated_env, fast_train_env,
                                                                   mlflow_uri, one_torch_thread, tmp_path):
    from mlflow.tracking import MlflowClient

    assert run("prepare", tiny_data).exit_code == 0
    prepared = run("prepare", "--sentiment", tiny_sentiment(tmp_path / "s.jsonl"))
    assert prepared.exit_code == 0, prepared.output
    result = run("train", "--model-type", "all", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    status = {s["component"]: s["status"] for s in doc["steps"]}
    assert status == {"classifier": "trained", "knowledge": "skipped", "entities": "skipped",
                      "sentiment": "trained", "generator": "skipped", "replies": "skipped"}
    final = ModelRegistry(isolated_env / "registry").get(doc["final_version"])
    assert components_of(final) == ["classifier", "sentiment"]

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(doc["mlflow_run_id"])
    assert client.get_experiment(parent.info.experiment_id).name == "hotelbot-all"
    assert parent.info.status == "FINISHED" and parent.data.tags["hotelbot.version"] == final.name
    assert parent.data.tags["hotelbot.sentiment.status"] == "trained"
    assert {"classifier_overall_score", "sentiment_overall_score"} <= set(parent.data.metrics)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["hotelbot.component"] for r in children) == ["classifier", "sentiment"]
    child_ids = {r.info.run_id for r in children}
    sentiment_run = final.metadata["sentiment"]["mlflow_run_id"]
    assert sentiment_run in child_ids and final.metadata["mlflow_run_id"] in child_ids

    again = run("train", "--model-type", "all", "--json")  # nothing changed: nothing trained, no new version
    assert again.exit_code == 0, again.output
    doc2 = json.loads(again.stdout)
    assert doc2["final_version"] == final.name
    assert [s["status"] for s in doc2["steps"] if s["component"] in ("classifier", "sentiment")] == ["unchanged"] * 2
    assert len(ModelRegistry(isolated_env / "registry").list_versions()) == 2


def test_all_without_intent_data_fails_before_any_run(isolated_env, fast_train_env):
    result = run("train", "--model-type", "all")
    assert result.exit_code == 1 and "hotelbot prepare" in result.stderr
    assert not list((isolated_env / "registry").glob("versions/*"))


# ------------------------------------------------------------------ adopting an unchanged component


@pytest.fixture
def two_lines(trained_template, isolated_env, tiny_model, mlflow_uri, tmp_path, one_torch_thread):
    """v0001 classifier; v0002 = v0001 + sentiment; v0003 = a retrained classifier without sentiment."""
    import shutil

    from conftest import clone_version
    from hotelbot_cli.config import load_settings
    from hotelbot_cli.components.sentiment.classifier import train_sentiment

    shutil.copytree(trained_template, isolated_env / "registry", symlinks=True)
    registry = ModelRegistry(isolated_env / "registry")
    settings = load_settings(env={"HOTELBOT_HOME": str(isolated_env / "home"), "MLFLOW_TRACKING_URI": mlflow_uri,
                                  "HOTELBOT_BASE_MODEL": str(tiny_model), "TRAINING_EPOCHS": "3",
                                  "TRAINING_BATCH_SIZE": "8"},
                             path_overrides={"registry": isolated_env / "registry"})
    data = tiny_sentiment(tmp_path / "s.jsonl")
    train_sentiment(settings, data, registry, source="v0001")

    def other_head(staged):
        meta = staged / "metrics.json"
        meta.write_text(meta.read_text("utf-8").replace("{", '{"note": "retrained", ', 1), "utf-8")
    clone_version(registry, "v0001", mutate=other_head)
    return registry, settings, data


def test_pipeline_copies_an_unchanged_component_into_the_chain(two_lines):
    from hotelbot_cli.components import TrainRequest, get
    from hotelbot_cli.pipeline.train import _run_step

    registry, settings, data = two_lines
    outcome = _run_step(get("sentiment"), TrainRequest(settings, registry, data, "v0003", False, None, {}))
    assert outcome.status == "unchanged" and outcome.reused_from == "v0002"
    new = registry.get(outcome.version)
    assert outcome.version == "v0004" and components_of(new) == ["classifier", "sentiment"]
    assert registry.verify("v0004") == []
    files = lambda info, prefix: {k: v for k, v in info.metadata["files"].items() if k.startswith(prefix)}  # noqa: E731
    assert files(new, "sentiment/") == files(registry.get("v0002"), "sentiment/")
    assert files(new, "metrics.json") == files(registry.get("v0003"), "metrics.json")  # v0003's classifier
    assert new.metadata["adopted"] == {"component": "sentiment", "from": "v0002"}
    assert new.metadata["sentiment"]["dataset_fingerprint"] == registry.get("v0002").metadata["sentiment"]["dataset_fingerprint"]
    # the chain already holds that exact component: nothing new is published
    assert adopt_component(registry, "v0004", "sentiment", "v0002").name == "v0004"
    assert len(registry.list_versions()) == 4


def test_adopt_refuses_a_corrupt_donor_and_publishes_nothing(two_lines):
    registry, _, _ = two_lines
    donor = registry.get("v0002")
    weights = next(p for p in (donor.path / "sentiment").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(IntegrityError, match="sentiment of v0002"):
        adopt_component(registry, "v0003", "sentiment", "v0002")
    assert len(registry.list_versions()) == 3
    assert not list((registry.root / ".staging").glob("build-*"))


def _sentiment_result(info):
    from hotelbot_cli.components.base import scored_result

    metrics = {"overall_score": 0.93, "metric": "macro_f1"}
    return scored_result("sentiment", info, metrics, 1.0, None, [], {"from": None, "components": []})


def _generator_result(info):
    from hotelbot_cli.components.generator.training import generator_result

    scores = {"bleu": 12.0, "rouge_l": 0.2, "perplexity": 9.0, "relevance": 0.71, "exact_match": 0.0}
    metrics = {"generator": scores, "retrieval_baseline": {k: v for k, v in scores.items() if k != "perplexity"}}
    return generator_result(info, metrics, 1.0, None, [], {"from": None, "components": []})


def _knowledge_result(info):
    from hotelbot_cli.components import ComponentResult

    return ComponentResult("knowledge", info, {"chunks": 98}, 1.0, None, [], {})


@pytest.mark.parametrize("component,result,expected", [
    ("sentiment", _sentiment_result, ("sentiment_overall_score", 0.93)),
    ("generator", _generator_result, ("generator_relevance", 0.71)),
    ("knowledge", _knowledge_result, None),
])
def test_the_parent_run_logs_each_steps_headline_score_under_its_own_name(component, result, expected, tmp_path):
    from hotelbot_cli.pipeline.train import StepOutcome, headline_score
    from hotelbot_cli.registry import VersionInfo

    info = VersionInfo("v0002", tmp_path, {"components": [component]})
    outcome = StepOutcome(component, "trained", "v0002", result=result(info))
    assert headline_score(outcome) == expected
    assert headline_score(StepOutcome(component, "unchanged", "v0001")) is None
