"""prepare -> train -> validate -> predict on the SHIPPED dataset, through the CLI, with a tiny BERT
trained from scratch (tokenizer learned from the training file only). The held-out sentences in
datasets/hotel_intents_es_holdout.json were never seen by the tokenizer or the model."""

import json

from typer.testing import CliRunner

from hotelbot_cli.cli.app import app
from conftest import HOLDOUT, SHIPPED, build_tiny_model

runner = CliRunner()


def test_shipped_dataset_end_to_end_beats_chance_widely(tmp_path, isolated_env, monkeypatch):
    intents = json.loads(SHIPPED.read_text("utf-8"))["intents"]
    assert len(intents) == 29 and min(len(v) for v in intents.values()) >= 40
    base = build_tiny_model(tmp_path / "tiny-e2e", [t for ts in intents.values() for t in ts], hidden=96)

    result = runner.invoke(app, ["prepare", str(SHIPPED), "--json"])
    assert result.exit_code == 0, result.output
    prepared = json.loads(result.stdout)
    assert prepared["num_labels"] == 29

    result = runner.invoke(app, ["train", "--base-model", str(base), "--epochs", "15", "--batch-size", "32",
                                 "--learning-rate", "0.003", "--head-learning-rate", "0.003", "--patience", "3",
                                 "--json"])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)

    # validate re-scores the version on the runtime it serves with (chosen at train time by speed among
    # those within the accuracy tolerance, so it can differ run to run); on torch it reproduces train's
    # own figure exactly, on ONNX it stays within the tolerance.
    result = runner.invoke(app, ["validate", "--min-score", "0.3", "--json"], env={"HOTELBOT_RUNTIME": "torch"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["overall_score"] == trained["overall_score"]
    result = runner.invoke(app, ["validate", "--min-score", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    validation = json.loads(result.stdout)
    assert abs(validation["overall_score"] - trained["overall_score"]) <= 0.02

    holdout = json.loads(HOLDOUT.read_text("utf-8"))
    texts = [r["text"] for r in holdout]
    result = runner.invoke(app, ["predict", *texts, "--json"])
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    accuracy = sum(p["intent"] == r["intent"] for p, r in zip(predictions, holdout)) / len(holdout)
    chance = 1 / 29
    print(f"held-out accuracy {accuracy:.3f}, validation macro-F1 {validation['overall_score']:.3f}")
    assert accuracy > 10 * chance, f"held-out accuracy {accuracy:.3f} vs chance {chance:.3f}"

    # the independent test set that prepare found beside the shipped data, scored as served
    assert prepared["test_set"]["examples"] >= 15 * 29
    result = runner.invoke(app, ["validate", "--test", "--min-score", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    tested = json.loads(result.stdout)["test"]
    assert tested["num_examples"] == prepared["test_set"]["examples"] and tested["test_set"].endswith("_test.jsonl")
    assert tested["accuracy"] > 10 * chance and len(tested["misses"]) == round((1 - tested["accuracy"]) * tested["num_examples"])
