"""The component interface end to end: a toy component registered from outside the package (this file is its
whole "package") is trained, carried over, validated, deployed, used by predict and rolled back through the
same CLI and library code as the built-in ones, with no change anywhere else."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import pytest
from typer.testing import CliRunner

from hotelbot_cli.cli.app import app
from hotelbot_cli.components import Component, ComponentResult, TrainRequest, registered, registered_temporarily
from hotelbot_cli.components.base import scored_result, training_run
from hotelbot_cli.components.compose import components_of, publish_component
from hotelbot_cli.errors import DataError, HotelbotError
from hotelbot_cli.registry import ModelRegistry

runner = CliRunner()
TOY_TEXTS = ["hola buenos días", "quiero una habitación doble", "¿a qué hora es el desayuno?",
             "necesito un taxi al aeropuerto", "la ducha no funciona"]
TOY_VOCABULARY = {w for t in TOY_TEXTS for w in t.lower().split()}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


class WordListComponent(Component):
    """Learns the vocabulary of its texts; scores the share of validation words it knows; answers, per
    message, how many of its words it knows."""

    name = "toy"
    model_type = "toy"
    kind = "toy-word-list"
    experiment = "hotelbot-toy"
    paths = ("toy",)
    prepare_hint = "write toy.txt"
    metric = "word_coverage"
    gated = True
    analyzes = True

    def __init__(self, data: Path) -> None:
        self.data = data

    def prepared_data(self, settings: Any, documents: Path | None = None) -> Path | None:
        return self.data if self.data.is_file() else None

    def train(self, request: TrainRequest) -> ComponentResult:
        path = Path(request.data or self.data)
        if not path.is_file():
            raise DataError(f"no toy data in {path}")
        texts = [t for t in path.read_text("utf-8").splitlines() if t.strip()]
        prepared = SimpleNamespace(fingerprint=hashlib.sha256("\n".join(texts).encode()).hexdigest(),
                                   train=texts[:-1], validation=texts[-1:])
        config = {"lowercase": True}
        with training_run(request.settings, request.registry, self.name, self.experiment, prepared, config, {},
                          force=request.force) as (tracker, monitor):
            words = sorted({w for t in prepared.train for w in t.lower().split()})
            metrics = {"metric": self.metric, "overall_score": _coverage(words, prepared.validation),
                       "words": len(words)}
            summary = {"dataset_fingerprint": prepared.fingerprint, "config": config, "metrics": metrics}

            def write(target: Path) -> None:
                target.mkdir(parents=True, exist_ok=True)
                (target / "words.json").write_text(json.dumps({"words": words, "validation": prepared.validation}))

            info, carried = publish_component(request.registry, self.name, self.kind, source=request.source,
                                              write=write, metrics=metrics, history={}, summary=summary,
                                              monitor=monitor, tracker=tracker, listener=request.listener)
        return scored_result(self.name, info, metrics, 0.0, tracker.run_id, [], carried)

    def _words(self, info: Any) -> dict[str, Any]:
        return json.loads((info.path / "toy" / "words.json").read_text())

    def score(self, info: Any, settings: Any) -> dict[str, Any]:
        saved = self._words(info)
        return {"metric": self.metric, "overall_score": _coverage(saved["words"], saved["validation"])}

    def smoke(self, info: Any, settings: Any, texts_count: int) -> dict[str, Any]:
        words = self._words(info)["words"]
        if not words:
            raise HotelbotError(f"{info.name}'s toy knows no word")
        return {"words": len(words)}

    def load(self, info: Any, settings: Any = None, loaded: Any = None) -> Any:
        return set(self._words(info)["words"])

    def empty_analysis(self) -> dict[str, Any]:
        return {"toy_known_words": None}

    def analyze(self, loaded: Any, texts: Sequence[str], rows: list[dict[str, Any]], *, top_k: int,
                batch_size: int) -> None:
        for row, text in zip(rows, texts):
            row["toy_known_words"] = sum(w in loaded for w in text.lower().split())


def _coverage(words: Sequence[str], texts: Sequence[str]) -> float:
    known = set(words)
    tokens = [w for t in texts for w in t.lower().split()]
    return sum(w in known for w in tokens) / max(len(tokens), 1)


@pytest.fixture
def toy(tmp_path):
    data = tmp_path / "toy.txt"
    data.write_text("\n".join(TOY_TEXTS + ["quiero una doble para hoy"]), "utf-8")
    with registered_temporarily(WordListComponent(data)) as component:
        yield component
    assert "toy" not in [c.name for c in registered()]


def test_a_registered_component_is_trained_carried_over_deployed_and_rolled_back(toy, registry_copy, fast_train_env,
                                                                                 tiny_data):
    registry: ModelRegistry = registry_copy  # v0001 (classifier), v0002 (its clone)
    assert run("prepare", tiny_data).exit_code == 0

    # trained through the CLI, carrying over the classifier of the newest version
    result = run("train", "--model-type", "toy", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["component"] == "toy" and doc["version"] == "v0003" and doc["carried_from"] == "v0002"
    assert doc["overall_score"] == pytest.approx(3 / 5)  # "quiero una doble para hoy": "para", "hoy" unknown
    v3 = registry.get("v0003")
    assert components_of(v3) == ["classifier", "toy"] and registry.verify("v0003") == []
    assert (v3.path / "toy" / "metrics.json").is_file() and v3.metadata["toy"]["metrics"]["words"] == len(TOY_VOCABULARY)

    # the same data and config again: nothing to do, no new version
    again = run("train", "--model-type", "toy", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] is True
    assert len(registry.list_versions()) == 3

    # a new classifier carries the toy over, byte for byte
    retrained = run("train", "--force", "--json")
    assert retrained.exit_code == 0, retrained.output
    v4 = registry.get(json.loads(retrained.stdout)["version"])
    assert components_of(v4) == ["toy", "classifier"]  # the carried ones first, then the one trained
    assert v4.metadata["toy"]["carried_from"] == "v0003"
    toy_files = {k: v for k, v in v3.metadata["files"].items() if k.startswith("toy/")}
    assert toy_files and {k: v for k, v in v4.metadata["files"].items() if k.startswith("toy/")} == toy_files

    # validate scores it and gates on it; deploy smoke-tests it; predict answers with it
    validated = run("validate", v4.name, "--json")
    assert validated.exit_code == 0, validated.output
    assert json.loads(validated.stdout)["components"]["toy"]["overall_score"] == pytest.approx(0.6)
    assert run("deploy", "v0001").exit_code == 0
    deployed = run("deploy", v4.name, "--json")
    assert deployed.exit_code == 0, deployed.output
    assert json.loads(deployed.stdout)["smoke"]["toy"] == {"words": len(TOY_VOCABULARY)}
    predicted = json.loads(run("predict", "quiero una habitación", "--json").stdout)
    assert predicted["model_version"] == v4.name and predicted["predictions"][0]["toy_known_words"] == 3

    # a failing gate of the toy blocks its deploy (exit 3)
    blocked = run("validate", v4.name, "--min-score", "0.7")
    assert blocked.exit_code == 3 and "toy word_coverage 0.6000 < MIN_VALIDATION_SCORE 0.7000" in blocked.stderr

    # rollback moves every component together
    rolled = run("rollback", "--json")
    assert rolled.exit_code == 0, rolled.output
    assert registry.current_name() == "v0001" and components_of(registry.get("v0001")) == ["classifier"]


def test_train_all_includes_a_registered_component_with_prepared_data(toy, registry_copy, fast_train_env, tiny_data):
    assert run("prepare", tiny_data).exit_code == 0
    result = run("train", "--model-type", "all", "--json")
    assert result.exit_code == 0, result.output
    status = {s["component"]: s["status"] for s in json.loads(result.stdout)["steps"]}
    assert status["classifier"] == "unchanged" and status["toy"] == "trained"  # the template's classifier: same data
    assert list(status)[-1] == "toy"  # registered after the built-in ones: trained last
    final = registry_copy.get(json.loads(result.stdout)["final_version"])
    assert components_of(final) == ["classifier", "toy"]


def test_unknown_names_and_clashes_are_refused(toy):
    from hotelbot_cli.components import get, register

    with pytest.raises(ValueError, match="already registered"):
        register(WordListComponent(Path("x")))
    with pytest.raises(DataError, match="unknown component 'nope'"):
        get("nope")
    assert run("train", "--model-type", "nope").exit_code == 2
