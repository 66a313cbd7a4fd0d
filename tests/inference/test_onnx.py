"""ONNX export, the onnxruntime predictor, runtime choice, and the torch-free predict path.

A session template registry holds the tiny trained v0001 (as training made it), v0002 = v0001 with
the ONNX export (exported here when training does not already do it), and v0003 = v0001 without any
ONNX file (a version from before the export existed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import clone_version, flip_byte
from hotelbot_cli.errors import ConfigError, DataError, IntegrityError
from hotelbot_cli.export import compare_runtimes
from hotelbot_cli.export.graph import graph_files
from hotelbot_cli.runtime import ONNX_FP32, ONNX_INT8, RUNTIME_FILE, RUNTIMES, TORCH, OnnxPredictor, choose_runtime

WITH_ONNX, WITHOUT_ONNX = "v0002", "v0003"
ONNX_NAMES = ("model.onnx", "model.onnx.data", "model.int8.onnx", "model.int8.onnx.data",
              "model.int8.onnx.embeddings.data", RUNTIME_FILE)
TEXTS = ["hola", "quiero ver las noticias de hoy", "¿cuál es la CLAVE del wifi? 😀", "desayuno   buffet\tmañana",
         " ".join(["noticias del día y la clave del wifi"] * 20),  # longer than max_length: truncated
         "ñandú ¡olé! çà et là"]
HEAVY = ("torch", "transformers", "sklearn", "mlflow", "datasets", "onnx")


def _add_onnx(staged: Path) -> None:
    from hotelbot_cli.data import read_jsonl_examples
    from hotelbot_cli.export import export_onnx, graph
    from hotelbot_cli.modeling import load_classifier

    if (staged / "model" / RUNTIME_FILE).exists():  # training already exported it
        return
    model, tokenizer = load_classifier(staged / "model")
    threshold = graph.EXTERNAL_DATA_THRESHOLD
    graph.EXTERNAL_DATA_THRESHOLD = 64 * 1024  # the tiny model's larger weights go to model.onnx.data too
    try:
        export_onnx(model, tokenizer, staged / "model",
                    read_jsonl_examples(staged / "data" / "validation.jsonl"), latency_runs=5)
    finally:
        graph.EXTERNAL_DATA_THRESHOLD = threshold


def _drop_onnx(staged: Path) -> None:
    from hotelbot_cli.export import drop_export

    drop_export(staged / "model")
    assert not [p for p in (staged / "model").iterdir() if ".onnx" in p.name or p.name == RUNTIME_FILE]


@pytest.fixture(scope="session")
def onnx_template(trained_template, tmp_path_factory) -> Path:
    from hotelbot_cli.registry import ModelRegistry

    root = tmp_path_factory.mktemp("onnx-template") / "registry"
    shutil.copytree(trained_template, root, symlinks=True)
    registry = ModelRegistry(root)
    assert clone_version(registry, "v0001", _add_onnx).name == WITH_ONNX
    assert clone_version(registry, "v0001", _drop_onnx).name == WITHOUT_ONNX
    return root


@pytest.fixture
def onnx_registry(onnx_template, isolated_env, monkeypatch):
    from hotelbot_cli.registry import ModelRegistry

    root = isolated_env / "registry"
    shutil.copytree(onnx_template, root, symlinks=True)
    monkeypatch.setenv("HOTELBOT_REGISTRY", str(root))
    monkeypatch.delenv("HOTELBOT_RUNTIME", raising=False)
    return ModelRegistry(root)


def _torch_predictor(registry, name):
    from hotelbot_cli.runtime import TorchPredictor

    return TorchPredictor.from_version(registry.get(name))


# ------------------------------------------------------------------ export


def test_export_writes_both_graphs_with_dynamic_axes_and_records_the_choice(onnx_registry):
    import onnx
    import onnxruntime as ort

    info = onnx_registry.get(WITH_ONNX)
    model = info.path / "model"
    spec = json.loads((model / RUNTIME_FILE).read_text("utf-8"))
    assert spec["runtime"] in RUNTIMES and spec["tolerance_points"] == 0.5
    assert set(spec["runtimes"]) == set(RUNTIMES)
    assert spec["runtime"] == choose_runtime(spec["runtimes"], spec["tolerance_points"])
    assert spec["runtimes"][ONNX_FP32]["max_abs_prob_diff_vs_torch"] < 1e-4
    assert spec["validation_examples"] > 0 and spec["runtimes"][TORCH]["accuracy"] is not None
    assert spec["runtimes"][ONNX_INT8]["size_bytes"] < spec["runtimes"][ONNX_FP32]["size_bytes"]
    # int8 alone within the gate serves alone; outside it, with its close calls re-run on fp32
    int8 = spec["runtimes"][ONNX_INT8]
    if spec["recheck"] is None:
        assert "recheck" not in int8 and OnnxPredictor.from_model_dir(model, ONNX_INT8).recheck is None
    else:
        assert 100 * (spec["runtimes"][TORCH]["accuracy"] - int8["without_recheck"]["accuracy"]) > 0.5
        assert OnnxPredictor.from_model_dir(model, ONNX_INT8).recheck.margin == spec["recheck"]["margin"]
    # Immutable versions: everything the export wrote is checksummed like the rest.
    written = {f"model/{n}" for n in ONNX_NAMES if (model / n).exists()}
    assert {"model/model.onnx", "model/model.int8.onnx", f"model/{RUNTIME_FILE}"} <= written
    # the word embeddings: the fp32 graph reads them in place from the PyTorch weights' embeddings.safetensors
    # (the same bytes: stored once, one blob for every version that froze them); int8's quantized matrix is
    # alone in its own data file. runtime.json names every file each graph reads.
    for name, place in (("model.onnx", "embeddings.safetensors"), ("model.int8.onnx", "model.int8.onnx.embeddings.data")):
        graph = onnx.load(str(model / name), load_external_data=False)
        places = {i.name: {e.key: e.value for e in i.external_data}.get("location") for i in graph.graph.initializer}
        assert {k for k, v in places.items() if v == place} == {
            k for k in places if "word_embeddings" in k and not k.endswith(("_scale", "_zero_point"))}, places
        runtime = ONNX_FP32 if name == "model.onnx" else ONNX_INT8
        assert set(spec["files"][runtime]) == {name} | {v for v in places.values() if v}
    assert not (model / "model.onnx.embeddings.data").exists()
    assert written <= set(info.metadata["files"])
    assert onnx_registry.verify(WITH_ONNX) == []
    for name in ("model.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(model / name), providers=["CPUExecutionProvider"])
        inputs = {i.name: i.shape for i in session.get_inputs()}
        assert set(inputs) == {"input_ids", "attention_mask"}
        assert all(isinstance(d, str) for shape in inputs.values() for d in shape)  # batch, sequence: dynamic
        out = session.get_outputs()[0]
        assert out.name == "logits" and out.shape[1] == len(info.metadata["labels"])


def test_outlier_inputs_are_measured_and_their_matmuls_kept_fp32_in_the_int8_graph(onnx_registry, tmp_path):
    """Dynamic int8 gives an activation one scale set by its largest value: inputs with outlier features
    (max/rms ~100 on e5's early FFN output projections) lose most of their precision, so those
    MatMuls stay fp32."""
    import onnx

    from hotelbot_cli.export.graph import _probe_feed
    from hotelbot_cli.export.quantize import OUTLIER_RATIO, _outlier_inputs, _quantize
    from hotelbot_cli.modeling import load_classifier
    from hotelbot_cli.runtime import RuntimeClassifierConfig

    model_dir = onnx_registry.get(WITH_ONNX).path / "model"
    spec = json.loads((model_dir / RUNTIME_FILE).read_text("utf-8"))
    assert spec["outlier_ratio_cutoff"] == OUTLIER_RATIO
    assert all(ratio >= OUTLIER_RATIO for ratio in spec["kept_fp32"].values())
    fp32 = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    weighted = [n.name for n in fp32.graph.node if n.op_type in ("MatMul", "Attention")
                and {n.input[1]} <= {i.name for i in fp32.graph.initializer}]
    _, tokenizer = load_classifier(model_dir)
    cfg = RuntimeClassifierConfig.from_file(model_dir / "classifier.json")
    work = tmp_path / "model.onnx"
    shutil.copy(model_dir / "model.onnx", work)
    for data in graph_files(model_dir / "model.onnx")[1:]:  # every external data file the graph reads
        shutil.copy(model_dir / data, tmp_path / data)
    ratios = _outlier_inputs(work, [_probe_feed(tokenizer, cfg, [t]) for t in TEXTS])
    assert set(ratios) == set(weighted) and all(r >= 1.0 for r in ratios.values())
    assert not list(tmp_path.glob("*.tmp"))  # the probe graph is gone
    keep = weighted[:1]
    _quantize(work, tmp_path / "q.onnx", keep)
    nodes = {n.name: n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert nodes.get(keep[0]) in ("MatMul", "Attention")  # left in fp32
    assert not any(nodes.get(name) in ("MatMul", "Attention") for name in weighted[1:])  # quantized


@pytest.mark.parametrize("ratios,expected", [
    ({"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}, []),
    ({"a": 10.0, "b": 99.0, "c": 30.0, "d": 60.0}, ["b"]),           # at most a quarter of the nodes
    ({f"n{i}": 100.0 + i for i in range(8)}, ["n6", "n7"]),          # the worst ones
])
def test_keep_fp32_takes_the_worst_outliers_up_to_a_share(ratios, expected):
    from hotelbot_cli.export.quantize import _keep_fp32

    assert _keep_fp32(ratios, cutoff=60.0, share=0.25) == expected


@pytest.mark.parametrize("int8_alone_passes", [True, False])
def test_int8_alone_serves_when_it_passes_the_gate_else_with_its_close_calls_rechecked(
        onnx_registry, tmp_path, monkeypatch, int8_alone_passes):
    from hotelbot_cli.data import read_jsonl_examples
    from hotelbot_cli.export import drop_export, export_onnx
    from hotelbot_cli.modeling import load_classifier
    from hotelbot_cli.runtime import selection

    info = onnx_registry.get(WITH_ONNX)
    model_dir = tmp_path / "v0099" / "model"
    shutil.copytree(info.path / "model", model_dir)
    drop_export(model_dir)
    real = selection._qualifies

    def gate(measurements, name, tolerance):  # int8 alone: as the test says; with its recheck: the real gate
        if name == ONNX_INT8 and "recheck" not in measurements.get(name, {}):
            return int8_alone_passes
        return real(measurements, name, tolerance)

    monkeypatch.setattr(selection, "_qualifies", gate)
    model, tokenizer = load_classifier(model_dir)
    validation = read_jsonl_examples(info.path / "data" / "validation.jsonl")
    spec = export_onnx(model, tokenizer, model_dir, validation, latency_runs=2, recheck_margin=1.0)
    int8 = spec["runtimes"][ONNX_INT8]
    if int8_alone_passes:
        assert spec["runtime"] in (ONNX_INT8, ONNX_FP32, TORCH) and spec["recheck"] is None and "recheck" not in int8
        assert OnnxPredictor.from_model_dir(model_dir, ONNX_INT8).recheck is None
        return
    # margin 1.0: every text is a close call, so the served int8 answers are fp32's
    assert spec["recheck"] == {"runtime": ONNX_FP32, "file": "model.onnx", "margin": 1.0}
    assert int8["recheck"]["rate"] == 1.0 and int8["agreement_with_torch"] == 1.0
    assert int8["accuracy"] == spec["runtimes"][TORCH]["accuracy"]
    assert set(int8["without_recheck"]) == {"accuracy", "agreement_with_torch", "max_abs_prob_diff_vs_torch"}
    assert OnnxPredictor.from_model_dir(model_dir, ONNX_INT8).recheck.margin == 1.0  # what predict/serve load
    monkeypatch.setenv("HOTELBOT_RUNTIME_RECHECK_MARGIN", "0")  # the operator's override at load time
    assert OnnxPredictor.from_model_dir(model_dir, ONNX_INT8).recheck is None
    monkeypatch.setenv("HOTELBOT_RUNTIME_RECHECK_MARGIN", "0.2")
    assert OnnxPredictor.from_model_dir(model_dir, ONNX_INT8).recheck.margin == 0.2
    monkeypatch.setenv("HOTELBOT_RUNTIME_RECHECK_MARGIN", "lots")
    with pytest.raises(ConfigError, match="HOTELBOT_RUNTIME_RECHECK_MARGIN"):
        OnnxPredictor.from_model_dir(model_dir, ONNX_INT8)


def test_export_refuses_a_directory_without_the_saved_classifier(tmp_path):
    from hotelbot_cli.errors import ModelError
    from hotelbot_cli.export import export_onnx

    with pytest.raises(ModelError, match="save_classifier"):
        export_onnx(object(), object(), tmp_path, [])


# ------------------------------------------------------------------ same ids, same probabilities


def test_tokenizers_only_ids_equal_the_hf_tokenizer(onnx_registry):
    model_dir = onnx_registry.get(WITH_ONNX).path / "model"
    torch_p = _torch_predictor(onnx_registry, WITH_ONNX)
    onnx_p = OnnxPredictor.from_model_dir(model_dir, ONNX_FP32)
    for batch in (TEXTS, TEXTS[:1], TEXTS[4:5]):
        ids, mask = onnx_p.encode(batch)
        enc = torch_p.tokenizer([torch_p.config.query_prefix + t for t in map(_clean, batch)], padding=True,
                                truncation=True, max_length=torch_p.config.max_length, return_tensors="np")
        assert ids.tolist() == enc["input_ids"].tolist()
        assert mask.tolist() == enc["attention_mask"].tolist()
    assert ids.shape[1] == torch_p.config.max_length  # the long text really was truncated


def _clean(text):
    from hotelbot_cli.data import clean_text

    return clean_text(text)


def _unigram_tokenizer_dir(out: Path, padding_side: str = "right") -> Path:
    """A small SentencePiece-style Unigram tokenizer (the kind e5 uses), saved as HF saves it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import shipped_sentences

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(shipped_sentences(), trainers.UnigramTrainer(vocab_size=300, special_tokens=special,
                                                                        unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", padding_side=padding_side)
    fast.save_pretrained(str(out))
    return out


UNIGRAM_TEXTS = TEXTS + ["query: xyz ☃ 漢字 ᚠᛇ 😀😀 q", "hola <mask> mundo", "w" * 40, "a", "¿¡?!...",
                         "ñandú ÇÀ ﬁ ①②"]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_unigram_subset_tokenizer_gives_the_hf_ids(tmp_path, padding_side):
    """The fast Unigram path (a per-batch model of only the pieces in the batch) is exact: the same ids
    and mask as the HF tokenizer, from tokenizer.json and from the export's index, unknown characters,
    added tokens typed in the text, truncation and either padding side included."""
    from transformers import AutoTokenizer

    from hotelbot_cli.runtime.tokenizers import UnigramSubsetEncoder, load_text_encoder, write_unigram_index

    model_dir = _unigram_tokenizer_dir(tmp_path, padding_side)
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    from_json = load_text_encoder(model_dir, 12)
    assert write_unigram_index(model_dir)
    from_index = load_text_encoder(model_dir, 12)
    assert isinstance(from_json, UnigramSubsetEncoder) and isinstance(from_index, UnigramSubsetEncoder)
    texts = [_clean(t) for t in UNIGRAM_TEXTS]
    for batch in [texts, texts[:1], texts[6:7], texts[2:5]] + [[t] for t in texts]:
        want = hf(batch, padding=True, truncation=True, max_length=12, return_tensors="np")
        for encoder in (from_json, from_index):
            ids, mask = encoder.encode(batch)
            assert ids.tolist() == want["input_ids"].tolist(), batch
            assert mask.tolist() == want["attention_mask"].tolist(), batch
    assert from_index._full is not None  # "<mask>" in a text went through the whole tokenizer


def test_e5_unigram_subset_equals_the_whole_tokenizer(model_cache):
    """The default model's tokenizer (250k pieces, e5's normalizer and pre-tokenizer): same ids as the
    whole `tokenizers` tokenizer the HF tokenizer wraps."""
    e5 = Path(model_cache) / "multilingual-e5-small"
    if not (e5 / "tokenizer.json").is_file():
        pytest.skip("the converted packaged e5 is not in the model cache")
    from hotelbot_cli.runtime.tokenizers import (FullEncoder, UnigramSubsetEncoder, load_fast_tokenizer,
                                                 load_text_encoder)

    fast = load_text_encoder(e5, 16)
    assert isinstance(fast, UnigramSubsetEncoder)
    whole = FullEncoder(load_fast_tokenizer(e5, 16))
    texts = ["query: " + _clean(t) for t in UNIGRAM_TEXTS]
    for batch in (texts, texts[:1], texts[-4:]):
        got, want = fast.encode(batch), whole.encode(batch)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


def test_onnx_probabilities_and_predictions_match_torch(onnx_registry):
    info = onnx_registry.get(WITH_ONNX)
    torch_p = _torch_predictor(onnx_registry, WITH_ONNX)
    fp32 = OnnxPredictor.from_version(info, ONNX_FP32)
    int8 = OnnxPredictor.from_version(info, ONNX_INT8)
    expected = torch_p.probabilities(TEXTS, batch_size=4).numpy()
    got = fp32.probabilities(TEXTS, batch_size=4)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(int8.probabilities(TEXTS), expected, atol=0.1)
    for got, want in zip(fp32.predict(TEXTS, top_k=2), torch_p.predict(TEXTS, top_k=2)):
        assert (got.text, got.intent, got.fallback) == (want.text, want.intent, want.fallback)
        assert [r["intent"] for r in got.top_k] == [r["intent"] for r in want.top_k]
        assert [r["confidence"] for r in got.top_k] == pytest.approx([r["confidence"] for r in want.top_k], abs=1e-4)
    assert fp32.predict_labels(TEXTS) == torch_p.predict_labels(TEXTS)
    assert (fp32.labels, fp32.version, fp32.threshold, fp32.query_prefix, fp32.max_length) == \
        (torch_p.labels, torch_p.version, torch_p.threshold, torch_p.query_prefix, torch_p.max_length)
    assert fp32.probabilities([]).shape == (0, len(fp32.labels))


def test_int8_answers_do_not_depend_on_the_other_texts_of_a_batch(onnx_registry):
    """Dynamic int8 scales activations per tensor: batched, a text's answer would depend on its batch-mates
    (what serve's micro-batching puts together). The int8 predictor must answer each text alone."""
    int8 = OnnxPredictor.from_version(onnx_registry.get(WITH_ONNX), ONNX_INT8)
    together = int8.probabilities(TEXTS, batch_size=32)
    alone = np.concatenate([int8.probabilities([t]) for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert [p.to_dict() for p in int8.predict(TEXTS)] == [int8.predict([t])[0].to_dict() for t in TEXTS]


def test_int8_parallel_lanes_and_per_text_futures_give_the_same_answers(onnx_registry, monkeypatch):
    """int8 runs its texts as single-threaded passes side by side (one lane per core of the thread budget);
    serve's streaming path takes one future per text. Neither may change an answer."""
    monkeypatch.setenv("HOTELBOT_ONNX_THREADS", "3")
    int8 = OnnxPredictor.from_version(onnx_registry.get(WITH_ONNX), ONNX_INT8)
    assert int8.lanes == 3 and int8.streams
    serial = OnnxPredictor.from_version(onnx_registry.get(WITH_ONNX), ONNX_INT8)
    serial.lanes = 1
    texts = TEXTS * 3
    np.testing.assert_array_equal(int8.probabilities(texts), serial.probabilities(texts))
    futures = int8.submit_each(texts, top_k=2)
    assert [f.result(timeout=30).to_dict() for f in futures] == [p.to_dict() for p in serial.predict(texts, top_k=2)]
    with pytest.raises(DataError):
        int8.submit_each(["hola", "  "])
    assert not OnnxPredictor.from_version(onnx_registry.get(WITH_ONNX), ONNX_FP32).streams  # fp32 batches
    monkeypatch.setenv("HOTELBOT_ONNX_THREADS", "-1")
    with pytest.raises(ConfigError):
        OnnxPredictor.from_version(onnx_registry.get(WITH_ONNX), ONNX_INT8)


def test_int8_close_calls_are_rerun_on_fp32_and_clear_ones_are_not(onnx_registry, monkeypatch):
    """int8 differs from fp32 by up to ~0.3 in a probability, so its answer can flip only when it is a
    close call: such texts are re-run on fp32 (whose answer is kept), the rest keep int8's answer."""
    from hotelbot_cli.runtime import Recheck

    monkeypatch.setenv("HOTELBOT_ONNX_THREADS", "2")
    model_dir = onnx_registry.get(WITH_ONNX).path / "model"
    plain = OnnxPredictor.from_model_dir(model_dir, ONNX_INT8, recheck_margin=0)
    fp32 = OnnxPredictor.from_model_dir(model_dir, ONNX_FP32)
    assert plain.recheck is None
    texts = TEXTS * 2
    int8_p, fp32_p = plain.probabilities(texts), fp32.probabilities(texts)
    top2 = np.sort(int8_p, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    margin = float(np.median(gap))  # about half the texts are close calls
    close = gap < margin
    assert close.any() and not close.all()
    for threshold in (None, float(np.median(top2[:, 1]))):
        plain.config.oos_threshold = fp32.config.oos_threshold = threshold
        guarded = OnnxPredictor.from_model_dir(model_dir, ONNX_INT8, recheck_margin=margin)
        guarded.config.oos_threshold = threshold
        expect_close = close | (np.abs(top2[:, 1] - threshold) < margin if threshold is not None else False)
        got = guarded.probabilities(texts)
        np.testing.assert_allclose(got[expect_close], fp32_p[expect_close], atol=1e-5)  # fp32's answer
        np.testing.assert_array_equal(got[~expect_close], int8_p[~expect_close])  # int8's own
        assert (guarded.recheck.checked, guarded.recheck.rerun) == (len(texts), int(expect_close.sum()))
        futures = guarded.submit_each(texts, top_k=2)  # serve's streaming path: the same answers
        assert [f.result(timeout=30).to_dict() for f in futures] == [p.to_dict() for p in guarded.predict(texts, top_k=2)]
    everything = OnnxPredictor.from_model_dir(model_dir, ONNX_INT8, recheck_margin=1.0)
    np.testing.assert_allclose(everything.probabilities(texts), fp32_p, atol=1e-5)
    assert everything.recheck.rate == 1.0
    with pytest.raises(ConfigError):
        Recheck(model_dir / "model.onnx", 0.0)


@pytest.mark.parametrize("probs,threshold,margin,close", [
    ([0.7, 0.2, 0.1], None, 0.3, False),   # gap 0.5
    ([0.5, 0.3, 0.2], None, 0.3, True),    # gap 0.2
    ([0.7, 0.2, 0.1], 0.5, 0.3, True),     # 0.2 from the out-of-scope threshold
    ([0.9, 0.05, 0.05], 0.5, 0.3, False),
    ([0.9, 0.05, 0.05], 0.65, 0.3, True),
])
def test_a_close_call_is_a_small_top2_gap_or_a_confidence_near_the_threshold(tmp_path, probs, threshold, margin, close):
    from hotelbot_cli.runtime import Recheck

    recheck = Recheck(tmp_path / "never-opened.onnx", margin)
    assert recheck.needed(np.array(probs, dtype=np.float32), threshold) is close
    assert (recheck.checked, recheck.rerun, recheck.rate) == (1, int(close), float(close))


def test_out_of_scope_threshold_applies_as_in_torch(onnx_registry):
    from hotelbot_cli.data import OUT_OF_SCOPE
    from hotelbot_cli.errors import DataError

    info = onnx_registry.get(WITH_ONNX)
    torch_p = _torch_predictor(onnx_registry, WITH_ONNX)
    onnx_p = OnnxPredictor.from_version(info, ONNX_FP32)
    top = onnx_p.probabilities(TEXTS).max(axis=1)
    threshold = float(np.median(top))  # some texts above, some below
    torch_p.config.oos_threshold = onnx_p.config.oos_threshold = threshold
    got, want = onnx_p.predict(TEXTS), torch_p.predict(TEXTS)
    assert [(p.intent, p.fallback) for p in got] == [(p.intent, p.fallback) for p in want]
    assert any(p.fallback and p.intent == OUT_OF_SCOPE for p in got) and not all(p.fallback for p in got)
    assert all(p.top_k[0]["intent"] != OUT_OF_SCOPE for p in got)  # the ranking still names the real intents
    assert onnx_p.predict_labels(TEXTS) == torch_p.predict_labels(TEXTS)
    assert OUT_OF_SCOPE not in onnx_p.predict_labels(TEXTS, apply_threshold=False)
    with pytest.raises(DataError, match="text 2 is empty"):
        onnx_p.predict(["hola", "  \t"])


# ------------------------------------------------------------------ choosing the runtime


def _m(acc, ms, **extra):
    return {"accuracy": acc, "latency_ms_p50": ms, **extra}


@pytest.mark.parametrize("measurements,tolerance,expected", [
    ({TORCH: _m(0.90, 20), ONNX_FP32: _m(0.90, 8), ONNX_INT8: _m(0.897, 3)}, 0.5, ONNX_INT8),   # -0.3 points
    ({TORCH: _m(0.90, 20), ONNX_FP32: _m(0.90, 8), ONNX_INT8: _m(0.89, 3)}, 0.5, ONNX_FP32),    # -1.0 point
    ({TORCH: _m(0.90, 20), ONNX_FP32: _m(0.90, 8), ONNX_INT8: _m(0.89, 3)}, 1.0, ONNX_INT8),    # looser tolerance
    ({TORCH: _m(0.90, 20), ONNX_FP32: _m(0.90, 8, usable=False), ONNX_INT8: _m(0.80, 3)}, 0.5, TORCH),
    ({TORCH: _m(0.90, 2), ONNX_FP32: _m(0.90, 8), ONNX_INT8: _m(0.90, 3)}, 0.5, TORCH),         # torch fastest
    ({TORCH: _m(0.90, 20), ONNX_FP32: _m(0.95, 8), ONNX_INT8: _m(0.95, 8)}, 0.0, ONNX_INT8),    # tie: smaller
    ({TORCH: _m(0.90, 20), ONNX_FP32: _m(0.90, 6.6), ONNX_INT8: _m(0.90, 7.0)}, 0.5, ONNX_INT8),  # within 10 %
    ({TORCH: _m(0.90, 20), ONNX_FP32: _m(0.90, 6.0), ONNX_INT8: _m(0.90, 7.0)}, 0.5, ONNX_FP32),  # 17 % slower
    ({TORCH: _m(0.90, 7.5), ONNX_FP32: _m(0.90, 8), ONNX_INT8: _m(0.85, 3)}, 0.5, ONNX_FP32),   # fp32 ties torch
    ({TORCH: _m(None, 20), ONNX_FP32: _m(None, 8), ONNX_INT8: _m(None, 3)}, 0.5, ONNX_FP32),    # nothing to check int8 on
    ({TORCH: _m(0.90, 20)}, 0.5, TORCH),
])
def test_choose_runtime_is_the_fastest_within_tolerance(measurements, tolerance, expected):
    assert choose_runtime(measurements, tolerance) == expected


def test_train_says_which_runtime_and_why_int8_was_not_chosen():
    from hotelbot_cli.runtime import describe_choice

    runtimes = {TORCH: {"accuracy": 0.9561, "latency_ms_p50": 12.3}, ONNX_FP32: {"accuracy": 0.9561, "latency_ms_p50": 8.2},
                ONNX_INT8: {"accuracy": 0.9467, "latency_ms_p50": 3.2}}
    gated = describe_choice({"runtime": ONNX_FP32, "tolerance_points": 0.5, "runtimes": runtimes})
    assert gated.startswith("runtime onnx-fp32 (8.2 ms per text, +0.00 points vs torch); int8 was -0.94 points")
    assert "0.5-point gate" in gated and "HOTELBOT_RUNTIME_TOLERANCE" in gated
    chosen = describe_choice({"runtime": ONNX_INT8, "tolerance_points": 0.5,
                              "runtimes": {**runtimes, ONNX_INT8: {"accuracy": 0.9592, "latency_ms_p50": 3.2}}})
    assert chosen == "runtime onnx-int8 (3.2 ms per text, +0.31 points vs torch)"
    rechecked = describe_choice({"runtime": ONNX_INT8, "tolerance_points": 0.5, "runtimes": {
        **runtimes, ONNX_INT8: {"accuracy": 0.9561, "latency_ms_p50": 3.4, "recheck": {"margin": 0.3, "rate": 0.044}}}})
    assert rechecked == ("runtime onnx-int8 (3.4 ms per text, +0.00 points vs torch, 4.4% of validation texts were "
                         "close calls re-run on fp32)")
    assert describe_choice({"runtime": TORCH}) == "runtime torch"


def test_compare_runtimes_records_int8_against_fp32(onnx_registry, monkeypatch):
    from hotelbot_cli.data import read_jsonl_examples

    info = onnx_registry.get(WITH_ONNX)
    examples = read_jsonl_examples(info.path / "data" / "validation.jsonl")
    result = compare_runtimes(info, examples, include_torch=True)
    assert result["available"] and result["examples"] == len(examples)
    assert set(result["accuracy"]) == {TORCH, ONNX_FP32, ONNX_INT8}
    assert result["accuracy"][ONNX_FP32] == result["accuracy"][TORCH]
    delta = 100 * (result["accuracy"][ONNX_INT8] - result["accuracy"][ONNX_FP32])
    assert result["int8_minus_fp32_points"] == pytest.approx(delta)
    assert result["int8_within_tolerance"] == (-delta <= result["tolerance_points"])
    assert 0.0 <= result["int8_agreement_with_fp32"] <= 1.0
    monkeypatch.setenv("HOTELBOT_RUNTIME_RECHECK_MARGIN", "1.0")  # int8 as it would serve with every text rechecked
    recheck = compare_runtimes(info, examples)["int8_recheck"]
    assert recheck["margin"] == 1.0 and recheck["rate"] == 1.0
    assert 0.0 <= recheck["accuracy_without"] <= 1.0 and 0.0 <= recheck["agreement_with_fp32_without"] <= 1.0
    plain = compare_runtimes(onnx_registry.get(WITHOUT_ONNX), examples)
    assert plain["available"] is False and plain["runtime"] == TORCH and plain["accuracy"] == {}


# ------------------------------------------------------------------ the factory and the fast checksum path


def test_factory_follows_runtime_json_and_the_env_override(onnx_registry, monkeypatch):
    from hotelbot_cli.runtime import TorchPredictor, load_predictor, predictor_from_registry

    recorded = json.loads((onnx_registry.get(WITH_ONNX).path / "model" / RUNTIME_FILE).read_text())["runtime"]
    chosen = predictor_from_registry(onnx_registry, WITH_ONNX)
    assert chosen.runtime == recorded and chosen.version == WITH_ONNX
    assert isinstance(chosen, TorchPredictor) == (recorded == TORCH)
    for runtime, kind in ((ONNX_FP32, OnnxPredictor), (ONNX_INT8, OnnxPredictor), (TORCH, TorchPredictor)):
        monkeypatch.setenv("HOTELBOT_RUNTIME", runtime)
        predictor = predictor_from_registry(onnx_registry, WITH_ONNX)
        assert isinstance(predictor, kind) and predictor.runtime == runtime
        assert load_predictor(onnx_registry.get(WITH_ONNX)).runtime == runtime
    # A version without ONNX files runs on torch, whatever is asked.
    assert isinstance(predictor_from_registry(onnx_registry, WITHOUT_ONNX), TorchPredictor)
    monkeypatch.setenv("HOTELBOT_RUNTIME", ONNX_INT8)
    assert isinstance(predictor_from_registry(onnx_registry, WITHOUT_ONNX), TorchPredictor)
    monkeypatch.setenv("HOTELBOT_RUNTIME", "tensorflow")
    with pytest.raises(ConfigError, match="HOTELBOT_RUNTIME"):
        predictor_from_registry(onnx_registry, WITH_ONNX)


def _corrupt(path: Path) -> None:
    flip_byte(path, 0xFF)


@pytest.mark.parametrize("name", ["model.int8.onnx", "model.int8.onnx.data", "model.int8.onnx.embeddings.data",
                                  "model.onnx", "model.onnx.data", "embeddings.safetensors",
                                  "tokenizer.json", "classifier.json", RUNTIME_FILE])
def test_onnx_path_refuses_a_version_whose_read_files_are_corrupt(onnx_registry, monkeypatch, name):
    """Every file a graph reads is checked, its own and the word embeddings it shares with the PyTorch
    weights (embeddings.safetensors, read in place by the fp32 graph)."""
    from hotelbot_cli.runtime import predictor_from_registry

    runtime = ONNX_FP32 if name.startswith(("model.onnx", "embeddings")) else ONNX_INT8
    monkeypatch.setenv("HOTELBOT_RUNTIME", runtime)
    path = onnx_registry.get(WITH_ONNX).path / "model" / name
    if not path.exists():
        pytest.skip(f"this export has no {name}")
    _corrupt(path)
    if name == RUNTIME_FILE:
        monkeypatch.delenv("HOTELBOT_RUNTIME")  # runtime.json is what decides: it is checked before it is read
    with pytest.raises(IntegrityError, match=f"model/{name}: checksum mismatch"):
        predictor_from_registry(onnx_registry, WITH_ONNX)


def test_predict_checks_and_opens_int8s_fp32_second_opinion_only_when_a_close_call_needs_it(onnx_registry, monkeypatch):
    from hotelbot_cli.runtime import Recheck, predictor_from_registry

    monkeypatch.setenv("HOTELBOT_RUNTIME", ONNX_INT8)
    monkeypatch.setenv("HOTELBOT_RUNTIME_RECHECK_MARGIN", "0.3")  # as if int8 alone had missed the gate
    _corrupt(onnx_registry.get(WITH_ONNX).path / "model" / "model.onnx")
    predictor = predictor_from_registry(onnx_registry, WITH_ONNX)  # int8's files are intact
    assert predictor.recheck is not None and predictor.recheck._session is None  # not opened, not hashed
    monkeypatch.setattr(Recheck, "needed", lambda self, probs, threshold: False)
    assert predictor.predict(["hola"])[0].intent  # a clear answer never touches the fp32 files
    monkeypatch.setattr(Recheck, "needed", lambda self, probs, threshold: True)
    with pytest.raises(IntegrityError, match="model/model.onnx: checksum mismatch"):
        predictor.predict(["hola"])


def test_onnx_path_hashes_only_what_it_reads(onnx_registry, monkeypatch):
    from hotelbot_cli.runtime import predictor_from_registry

    monkeypatch.setenv("HOTELBOT_RUNTIME", ONNX_INT8)
    _corrupt(onnx_registry.get(WITH_ONNX).path / "model" / "model.safetensors")
    assert predictor_from_registry(onnx_registry, WITH_ONNX).runtime == ONNX_INT8  # never opens the weights
    (onnx_registry.get(WITH_ONNX).path / "model" / "model.int8.onnx.bak").write_bytes(b"x")
    assert predictor_from_registry(onnx_registry, WITH_ONNX).runtime == ONNX_INT8
    monkeypatch.setenv("HOTELBOT_RUNTIME", TORCH)  # torch reads the weights: the full check refuses
    with pytest.raises(IntegrityError):
        predictor_from_registry(onnx_registry, WITH_ONNX)


def test_an_unrecorded_onnx_file_is_refused(onnx_registry, monkeypatch):
    """ONNX files dropped into a published version (not in its checksums) are never loaded."""
    from hotelbot_cli.runtime import predictor_from_registry

    src = onnx_registry.get(WITH_ONNX).path / "model"
    dst = onnx_registry.get(WITHOUT_ONNX).path / "model"
    for name in ONNX_NAMES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    with pytest.raises(IntegrityError, match="not recorded"):
        predictor_from_registry(onnx_registry, WITHOUT_ONNX)


# ------------------------------------------------------------------ the CLI


def test_cli_predict_json_is_the_same_on_onnx_and_torch(onnx_registry, monkeypatch):
    from hotelbot_cli.cli.app import app

    docs = {}
    for runtime in (ONNX_FP32, TORCH):
        monkeypatch.setenv("HOTELBOT_RUNTIME", runtime)
        result = CliRunner().invoke(app, ["predict", *TEXTS[:3], "--version", WITH_ONNX, "--top-k", "2", "--json"])
        assert result.exit_code == 0, result.output
        docs[runtime] = json.loads(result.stdout)
    onnx_doc, torch_doc = docs[ONNX_FP32], docs[TORCH]
    assert onnx_doc["model_version"] == WITH_ONNX and set(onnx_doc) == {"model_version", "predictions"}
    for got, want in zip(onnx_doc["predictions"], torch_doc["predictions"]):
        assert set(got) == {"text", "intent", "confidence", "top_k", "fallback", "entities", "sentiment"}
        assert (got["text"], got["intent"], got["fallback"]) == (want["text"], want["intent"], want["fallback"])
        assert [r["intent"] for r in got["top_k"]] == [r["intent"] for r in want["top_k"]]
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-4)


def _python(code: str, **env) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(),
                         env={**os.environ, **env}, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_predict_on_onnx_never_imports_torch_or_transformers(onnx_registry):
    code = ("import sys, json\nfrom typer.testing import CliRunner\nfrom hotelbot_cli.cli.app import app\n"
            f"r = CliRunner().invoke(app, ['predict', 'quiero ver las noticias', '--version', '{WITH_ONNX}', '--json'])\n"
            "assert r.exit_code == 0, r.output\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print(json.dumps({'doc': json.loads(r.stdout), 'heavy': heavy, "
            "'ort': 'onnxruntime' in sys.modules}))")
    result = json.loads(_python(code, HOTELBOT_RUNTIME=ONNX_INT8).strip().splitlines()[-1])
    assert result["heavy"] == [] and result["ort"] is True
    assert result["doc"]["model_version"] == WITH_ONNX
    assert result["doc"]["predictions"][0]["intent"] in json.loads(
        (onnx_registry.get(WITH_ONNX).path / "model" / "classifier.json").read_text())["labels"]


def test_help_versions_and_library_imports_stay_light(isolated_env):
    """`hotelbot --help` / `versions` and importing the inference modules load no ML runtime at all."""
    code = ("import sys\nfrom hotelbot_cli.cli.app import app\n"
            "import hotelbot_cli.runtime, hotelbot_cli.export\n"
            "for args in (['--help'], ['versions', '--json'], ['predict', '--help']):\n"
            "    try:\n        app(args)\n    except SystemExit as e:\n        assert e.code == 0, (args, e.code)\n"
            f"print('LOADED=' + ','.join(m for m in {HEAVY + ('onnxruntime', 'tokenizers', 'numpy')!r} "
            "if m in sys.modules))")
    assert _python(code).strip().splitlines()[-1] == "LOADED="
