"""The out-of-scope detector a version chooses on validation: softmax threshold or nearest neighbours (kNN)."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import TINY_INTENTS, clone_version
from hotelbot_cli.cli.app import app
from hotelbot_cli.data import OUT_OF_SCOPE, Example
from hotelbot_cli.errors import DataError, ModelError
from hotelbot_cli.runtime.detector import KNN, MEMORY_FILE, SOFTMAX, OutOfScopeDetector, kth_similarity, unit_rows
from hotelbot_cli.training.oos_detector import check_mode

runner = CliRunner()

OOS = ["cuánto es 2 más 2", "escríbeme un poema", "quién ganó el mundial de 1986", "receta de tortilla",
       "precio del bitcoin", "cómo arreglo mi coche", "traduce esto al inglés", "qué es la fotosíntesis",
       "cuéntame un chiste de programadores", "capital de mongolia", "mejor lenguaje de programación",
       "haz mis deberes de física"]
FAR = ["zzzz qqqq xxxx", "el teorema de pitágoras demuestra", "¿tienen wifi gratis?"]
PROBES = OOS[:4] + [t for ts in TINY_INTENTS.values() for t in ts[:2]] + FAR


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def doc(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# ------------------------------------------------------------------ the detector on its own


def test_kth_similarity_is_the_kth_largest_cosine():
    memory = unit_rows([[1, 0], [0, 1], [1, 1], [-1, 0]])
    sims = kth_similarity(np.array([[2.0, 0.0]]), memory, 1)
    assert sims[0] == pytest.approx(1.0)
    assert kth_similarity(np.array([[2.0, 0.0]]), memory, 2)[0] == pytest.approx(np.sqrt(0.5))
    assert kth_similarity(np.array([[2.0, 0.0]]), memory, 3)[0] == pytest.approx(0.0, abs=1e-7)
    assert kth_similarity(np.array([[2.0, 0.0]]), memory, 99)[0] == pytest.approx(-1.0)  # k past the memory: the last


def test_detector_decides_on_the_score_its_method_reads(tmp_path):
    softmax = OutOfScopeDetector(SOFTMAX, 0.5)
    assert softmax.decide("wifi_info", 0.4) == (OUT_OF_SCOPE, True)
    assert softmax.decide("wifi_info", 0.6, similarity=0.0) == ("wifi_info", False)  # similarity ignored
    assert not softmax.needs_embedding and softmax.softmax_threshold == 0.5
    knn = OutOfScopeDetector(KNN, 0.8, 1, unit_rows([[1.0, 0.0]]))
    assert knn.needs_embedding and knn.softmax_threshold is None
    assert knn.decide("wifi_info", 0.99, similarity=0.7) == (OUT_OF_SCOPE, True)  # confident, but far from training
    assert knn.decide("wifi_info", 0.10, similarity=0.9) == ("wifi_info", False)
    with pytest.raises(ModelError):
        knn.decide("wifi_info", 0.9)  # no embedding: refuses rather than guessing
    assert knn.labels(["a", "b"], [0.9, 0.9], [0.9, 0.1]) == ["a", OUT_OF_SCOPE]
    assert OutOfScopeDetector(SOFTMAX, None).decide("a", 0.0) == ("a", False)


def test_detector_spec_is_read_strictly(tmp_path):
    np.save(tmp_path / MEMORY_FILE, unit_rows([[1.0, 0.0], [0.0, 1.0]]), allow_pickle=False)
    loaded = OutOfScopeDetector.from_spec({"method": KNN, "threshold": 0.7, "k": 2, "memory": MEMORY_FILE}, tmp_path)
    assert loaded.memory.shape == (2, 2) and loaded.k == 2 and loaded.to_spec()["memory_size"] == 2
    for bad in ({"method": "magic"}, {"method": KNN, "threshold": 0.7, "k": 0},
                {"method": KNN, "threshold": "high", "k": 1}, {"method": KNN, "threshold": 3.0, "k": 1},
                {"method": KNN, "threshold": 0.7, "k": 1, "memory": "../outside.npy"},
                {"method": KNN, "threshold": 0.7, "k": 1, "memory": "other.npy"}):
        with pytest.raises(ModelError):
            OutOfScopeDetector.from_spec(bad, tmp_path)
    np.save(tmp_path / MEMORY_FILE, np.array([None, {"a": 1}], dtype=object), allow_pickle=True)
    assert np.load(tmp_path / MEMORY_FILE, allow_pickle=True) is not None  # a real pickled array ...
    with pytest.raises(ModelError, match="cannot read"):  # ... that the detector never unpickles
        OutOfScopeDetector.from_spec({"method": KNN, "threshold": 0.7, "k": 1, "memory": MEMORY_FILE}, tmp_path)
    np.save(tmp_path / MEMORY_FILE, np.array([["a", "b"]]), allow_pickle=False)
    with pytest.raises(ModelError, match="float matrix"):
        OutOfScopeDetector.from_spec({"method": KNN, "threshold": 0.7, "k": 1, "memory": MEMORY_FILE}, tmp_path)


def test_knn_needs_out_of_scope_validation_texts_and_a_known_mode():
    inside = [Example("hola", "greeting")]
    check_mode("auto", inside)
    check_mode("softmax", inside)
    with pytest.raises(DataError, match="out_of_scope texts in the validation"):
        check_mode("knn", inside)
    with pytest.raises(DataError, match="joint"):
        check_mode("knn", inside + [Example("receta", OUT_OF_SCOPE)], joint=True)
    with pytest.raises(DataError):
        check_mode("nearest", inside)


# ------------------------------------------------------------------ a version that chose kNN, end to end


@pytest.fixture
def knn_version(tmp_path, isolated_env, fast_train_env, monkeypatch):
    """(v0001: trained with TRAINING_OOS_DETECTOR=knn, v0002: its copy whose kNN threshold is the median
    similarity of the probe texts, so that some are out of scope and some not, train's --json)."""
    from hotelbot_cli.registry import ModelRegistry
    from hotelbot_cli.runtime import TorchPredictor

    data = tmp_path / "oos.json"
    data.write_text(json.dumps({"intents": {**TINY_INTENTS, "out_of_scope": OOS}}, ensure_ascii=False), "utf-8")
    assert run("prepare", data).exit_code == 0
    monkeypatch.setenv("TRAINING_OOS_DETECTOR", "knn")
    trained = doc(run("train", "--json"))
    registry = ModelRegistry(isolated_env / "registry")
    predictor = TorchPredictor.from_version(registry.get(trained["version"]))
    sims = sorted({round(p.similarity, 4) for p in predictor.predict(PROBES)})
    middle = len(sims) // 2
    threshold = (sims[middle - 1] + sims[middle]) / 2  # between two distinct similarities: no probe sits on it

    def set_threshold(staged):
        config = json.loads((staged / "model" / "classifier.json").read_text())
        config["oos_detector"]["threshold"] = threshold
        (staged / "model" / "classifier.json").write_text(json.dumps(config))

    copy = clone_version(registry, trained["version"], set_threshold)
    return registry.get(trained["version"]).path, copy.path, threshold, trained


def test_a_knn_version_stores_its_memory_and_records_both_detectors(knn_version):
    path, _, _, trained = knn_version
    meta = json.loads((path / "metadata.json").read_text())
    detector = meta["out_of_scope_detector"]
    # forced: kNN even though on this tiny split no threshold beats the classifier's own out_of_scope answers
    assert detector["method"] == KNN and detector["k"] in (1, 5, 10, 20) and "threshold" in detector
    assert set(detector["validation"]) == {SOFTMAX, KNN} and "reason" in detector
    assert meta["out_of_scope_threshold"] is None and trained["out_of_scope_threshold"] is None
    assert trained["out_of_scope_detector"] == detector  # train --json tells scripts what was chosen
    config = json.loads((path / "model" / "classifier.json").read_text())
    assert config["oos_detector"] == {"method": KNN, "threshold": detector["threshold"], "k": detector["k"],
                                      "memory": MEMORY_FILE}
    memory = np.load(path / "model" / MEMORY_FILE, allow_pickle=False)
    in_scope_train = sum(1 for line in (path / "data" / "train.jsonl").read_text().splitlines()
                         if json.loads(line)["intent"] != OUT_OF_SCOPE)
    assert memory.shape[0] == in_scope_train == detector["memory_size"]
    assert np.allclose(np.linalg.norm(memory, axis=1), 1.0, atol=1e-5)
    assert f"model/{MEMORY_FILE}" in meta["files"]  # checksummed like every file
    runtime = json.loads((path / "model" / "runtime.json").read_text())
    assert runtime["outputs"] == ["logits", "embedding"]
    # the validation metrics recorded are the kNN detector's
    assert meta["metrics"]["macro_f1"] == pytest.approx(detector["validation"][KNN]["macro_f1"])


def test_every_runtime_applies_the_knn_detector(knn_version):
    from hotelbot_cli.registry import VersionInfo
    from hotelbot_cli.runtime import OnnxPredictor, TorchPredictor

    _, path, threshold, _ = knn_version
    info = VersionInfo(path.name, path, json.loads((path / "metadata.json").read_text()))
    texts = PROBES
    torch_p = TorchPredictor.from_version(info)
    answers = {"torch": torch_p.predict(texts)}
    for runtime in ("onnx-fp32", "onnx-int8"):
        answers[runtime] = OnnxPredictor.from_version(info, runtime).predict(texts)
    assert torch_p.detector.threshold == threshold
    for name, predictions in answers.items():
        for p in predictions:
            assert p.similarity is not None and p.to_dict()["out_of_scope_similarity"] == p.similarity
            assert p.fallback == (p.similarity < threshold), (name, p)
            assert p.intent == (OUT_OF_SCOPE if p.fallback else p.top_k[0]["intent"])
    fp32 = [p.similarity for p in answers["onnx-fp32"]]
    np.testing.assert_allclose(fp32, [p.similarity for p in answers["torch"]], atol=1e-4)
    np.testing.assert_allclose([p.similarity for p in answers["onnx-int8"]], fp32, atol=0.05)
    assert torch_p.predict_labels(texts) == [p.intent for p in answers["torch"]]
    assert 0 < sum(p.fallback for p in answers["torch"]) < len(texts)
    int8 = OnnxPredictor.from_version(info, "onnx-int8")
    streamed = [f.result(timeout=30).to_dict() for f in int8.submit_each(texts)]  # serve's streaming path
    assert streamed == [p.to_dict() for p in int8.predict(texts)]
    rechecked = OnnxPredictor.from_model_dir(path / "model", "onnx-int8", recheck_margin=1.0)  # every text on fp32
    np.testing.assert_allclose([p.similarity for p in rechecked.predict(texts)], fp32, atol=1e-4)


def test_predict_validate_report_and_serve_use_the_knn_detector(knn_version, tmp_path):
    from hotelbot_cli.registry import ModelRegistry
    from hotelbot_cli.serving import ServeSettings, create_app

    _, path, threshold, trained = knn_version
    predicted = doc(run("predict", "zzzz qqqq xxxx", "--version", path.name, "--json"))
    similarity = predicted["predictions"][0]["out_of_scope_similarity"]
    assert doc(run("validate", path.name, "--json"))["metrics"]["argmax"]["accuracy"] is not None  # the plain-
    validated = doc(run("validate", trained["version"], "--json"))  # argmax figures beside those with a threshold
    assert validated["metrics"]["out_of_scope_detector"]["method"] == KNN
    assert validated["metrics"]["out_of_scope_threshold"] is None
    assert validated["overall_score"] == pytest.approx(trained["overall_score"], abs=0.02)
    shown = run("validate", path.name)
    assert shown.exit_code == 0 and "kNN detector" in shown.output and f"{threshold:.3f}" in shown.output
    report = tmp_path / "report.md"
    assert run("report", trained["version"], "--format", "md", "--output", report).exit_code == 0
    assert "out_of_scope detector: kNN" in report.read_text()
    registry = ModelRegistry(path.parent.parent)
    assert run("deploy", path.name).exit_code == 0
    with TestClient(create_app(registry, ServeSettings(watch_interval_s=0))) as client:
        ready = client.get("/ready").json()
        assert ready["out_of_scope_detector"]["method"] == KNN and ready["out_of_scope_threshold"] is None
        answer = client.post("/classify", json={"text": "zzzz qqqq xxxx"}).json()
    assert answer["out_of_scope_similarity"] == pytest.approx(similarity, abs=0.05)  # int8 serving vs predict
    assert answer["fallback"] == (answer["out_of_scope_similarity"] < ready["out_of_scope_detector"]["threshold"])


def test_auto_records_both_detectors_and_knn_without_out_of_scope_is_refused(tmp_path, isolated_env, fast_train_env,
                                                                             monkeypatch):
    data = tmp_path / "oos.json"
    data.write_text(json.dumps({"intents": {**TINY_INTENTS, "out_of_scope": OOS}}, ensure_ascii=False), "utf-8")
    assert run("prepare", data).exit_code == 0
    trained = doc(run("train", "--json"))
    meta = json.loads((isolated_env / "registry/versions" / trained["version"] / "metadata.json").read_text())
    detector = meta["out_of_scope_detector"]
    assert detector["mode"] == "auto" and set(detector["validation"]) == {SOFTMAX, KNN}
    chosen, other = detector["validation"][detector["method"]], detector["validation"][
        KNN if detector["method"] == SOFTMAX else SOFTMAX]
    if detector["method"] == KNN:  # auto keeps kNN only when it scores higher; a tie keeps the softmax
        assert chosen["macro_f1"] > other["macro_f1"]
    else:
        assert chosen["macro_f1"] >= other["macro_f1"] and "not above" in detector["reason"]
    model_dir = isolated_env / "registry/versions" / trained["version"] / "model"
    assert (model_dir / MEMORY_FILE).exists() == (detector["method"] == KNN)
    assert ("oos_detector" in json.loads((model_dir / "classifier.json").read_text())) == (detector["method"] == KNN)
    outputs = json.loads((model_dir / "runtime.json").read_text())["outputs"]
    assert outputs == (["logits", "embedding"] if detector["method"] == KNN else ["logits"])

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"intents": TINY_INTENTS}, ensure_ascii=False), "utf-8")
    assert run("prepare", plain).exit_code == 0
    before = sorted(p.name for p in (isolated_env / "registry/versions").iterdir())
    refused = run("train", "--oos-detector", "knn", "--force")
    assert refused.exit_code != 0 and "out_of_scope texts in the validation" in refused.output
    assert sorted(p.name for p in (isolated_env / "registry/versions").iterdir()) == before
    bad = run("train", "--oos-detector", "nearest")
    assert bad.exit_code != 0 and "oos_detector must be auto, softmax or knn" in bad.output



def test_exports_carry_the_knn_detector(knn_version, tmp_path, monkeypatch):
    import re

    from hotelbot_cli.registry import ModelRegistry

    _, path, threshold, _ = knn_version
    registry = ModelRegistry(path.parent.parent)
    for fmt in ("hf", "onnx", "pt"):
        facts = doc(run("export", path.name, "--format", fmt, tmp_path / fmt, "--json"))
        where = tmp_path / fmt if fmt == "pt" else tmp_path / fmt / "classifier"  # pt: one model, at the root
        assert (where / MEMORY_FILE).is_file(), (fmt, facts)
    head = json.loads((tmp_path / "hf" / "classifier" / "head.json").read_text("utf-8"))
    assert head["out_of_scope_detector"]["threshold"] == threshold and head["out_of_scope_label"] == OUT_OF_SCOPE
    assert "nearest neighbours" in (tmp_path / "hf" / "classifier" / "README.md").read_text("utf-8")
    from hotelbot_cli.runtime import OnnxPredictor, TorchPredictor

    info = registry.get(path.name)
    for fmt, reference in (("hf", TorchPredictor.from_version(info)), ("onnx", OnnxPredictor.from_version(info))):
        card = (tmp_path / fmt / "classifier" / "README.md").read_text("utf-8")
        snippet = re.findall(r"```python\n(.*?)```", card, re.S)[0]
        monkeypatch.chdir(tmp_path / fmt)
        namespace = {}
        exec(compile(snippet, f"{fmt}/README.md", "exec"), namespace)  # the card's own code, as a user runs it
        expected = reference.predict(namespace["texts"])
        assert namespace["answers"] == [p.intent for p in expected], fmt
        np.testing.assert_allclose(namespace["scores"], [p.similarity for p in expected], atol=0.05)


def test_choose_detector_keeps_knn_only_when_it_scores_higher(monkeypatch):
    """choose_detector on crafted embeddings: out_of_scope texts far from every training text, in-scope ones near
    theirs, and a classifier (the probabilities) that answers every text in scope."""
    from hotelbot_cli.training import oos_detector

    labels = ["a", "b", OUT_OF_SCOPE]
    train = [Example(f"a{i}", "a") for i in range(3)] + [Example(f"b{i}", "b") for i in range(3)]
    validation = [Example("va", "a"), Example("vb", "b"), Example("vo1", OUT_OF_SCOPE), Example("vo2", OUT_OF_SCOPE)]
    vectors = {**{f"a{i}": [1.0, 0.1 * i, 0.0] for i in range(3)}, **{f"b{i}": [0.0, 1.0, 0.1 * i] for i in range(3)},
               "va": [1.0, 0.05, 0.0], "vb": [0.0, 1.0, 0.05], "vo1": [0.1, 0.1, 1.0], "vo2": [0.0, 0.2, 1.0]}
    probs = {"va": [0.9, 0.05, 0.05], "vb": [0.05, 0.9, 0.05], "vo1": [0.5, 0.45, 0.05], "vo2": [0.45, 0.5, 0.05]}

    def fake_embed(model, tokenizer, texts, batch_size=64):
        return (np.array([probs.get(t, [1 / 3] * 3) for t in texts]), np.array([vectors[t] for t in texts]))

    monkeypatch.setattr(oos_detector, "embed_examples", fake_embed)
    softmax_metrics = {"macro_f1": 0.4, "accuracy": 0.5, "in_scope_accuracy": 1.0, "out_of_scope_recall": 0.0}
    chosen = oos_detector.choose_detector(None, None, train, validation, labels, "macro_f1", None, softmax_metrics)
    assert chosen.method == KNN and chosen.spec["k"] in (1, 5) and chosen.metrics["out_of_scope_recall"] == 1.0
    assert chosen.memory.shape == (6, 3) and chosen.metrics["out_of_scope_detector"] == chosen.spec
    assert "above the softmax" in chosen.record["reason"]
    tie = oos_detector.choose_detector(None, None, train, validation, labels, "macro_f1", 0.6,
                                       {**softmax_metrics, "macro_f1": chosen.metrics["macro_f1"]})
    assert tie.method == SOFTMAX and tie.spec is None and tie.memory is None  # a tie keeps the softmax
    off = oos_detector.choose_detector(None, None, train, validation, labels, "macro_f1", None, softmax_metrics,
                                       calibrate=False)
    assert off.method == SOFTMAX and "calibrate_oos_threshold is false" in off.record["reason"]
    with pytest.raises(DataError, match="calibrate_oos_threshold"):
        check_mode(KNN, validation, calibrate=False)


def test_the_fast_threshold_search_agrees_with_scikit_learns():
    import random

    from hotelbot_cli.training.calibration import best_threshold
    from hotelbot_cli.training.oos_detector import fast_best_threshold

    rng = random.Random(3)
    labels = ["a", "b", "c", OUT_OF_SCOPE]
    for trial in range(5):
        y_true = [rng.choice(labels) for _ in range(120)]
        argmax = [t if rng.random() < 0.7 else rng.choice(labels[:3]) for t in y_true]
        scores = [round(rng.uniform(0.3, 0.99) - (0.2 if t == OUT_OF_SCOPE else 0.0), 4) for t in y_true]
        for metric in ("macro_f1", "accuracy"):
            from hotelbot_cli.evaluation import classification_metrics

            base = classification_metrics(y_true, argmax, labels, metric)[metric]
            assert fast_best_threshold(scores, argmax, y_true, labels, metric, base) == \
                best_threshold(scores, argmax, y_true, labels, metric, base), (trial, metric)


def test_cross_validation_chooses_each_folds_detector_as_the_version_was_trained(knn_version):
    # v0001 was trained with oos_detector knn: every fold calibrates a kNN detector over its own training texts
    result = doc(run("validate", "v0001", "--cv", "2", "--json"))
    assert result["out_of_scope_detector"] == {"mode": KNN, "chosen": {SOFTMAX: 0, KNN: 2}}
    for fold in result["per_fold"]:
        assert fold["out_of_scope_detector"] == KNN and fold["out_of_scope_knn_k"] in (1, 5, 10, 20)
        threshold = fold["out_of_scope_threshold"]  # a similarity (None: on this tiny split none beats argmax)
        assert threshold is None or -1.0 <= threshold <= 1.0
        assert 0.0 <= fold["out_of_scope_recall"] <= 1.0
    assert np.sum(result["confusion_matrix"]["matrix"]) == result["examples"]
