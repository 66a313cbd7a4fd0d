"""The question layers' numpy runtime against torch: a random tiny BERT's top layers run in numpy on the states
entering them give torch's pooled vector; the stored low-rank change rebuilds the tuned weights; a change is
refused on other base weights; the ONNX export returns the same states and base weights as torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hotelbot_cli.components.replies.question import (
    QUESTION_FORMAT,
    QuestionChange,
    QuestionLayers,
    apply_change,
    compress,
    layer_record,
    runs_layers,
)
from hotelbot_cli.errors import ModelError
from hotelbot_cli.runtime.encoder import UPPER_LAYERS, upper_blocks, upper_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_bert(layers: int = 3, seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32)
    return BertModel(config).eval()


def torch_vectors(model, ids, mask, pooling="mean"):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden = out.last_hidden_state
    pooled = hidden[:, 0] if pooling == "cls" else (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    states = [s[m.bool()].numpy() for s, m in zip(out.hidden_states[-1 - UPPER_LAYERS], mask)]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy(), states


def batch():
    ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0], [2, 5, 6, 8, 13, 21, 3]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_numpy_layers_reproduce_torch_on_the_states_entering_them(pooling):
    model = tiny_bert()
    ids, mask = batch()
    want, states = torch_vectors(model, ids, mask, pooling)
    base = upper_parameters(model)
    assert runs_layers(base, UPPER_LAYERS) and len(upper_blocks(model)) == UPPER_LAYERS
    layers = QuestionLayers(base, layer_record(model.config, base, UPPER_LAYERS, pooling))
    got = layers.encode(states)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5  # padding changes nothing either


def test_the_stored_change_rebuilds_the_tuned_layers_and_only_on_their_base():
    model, tuned_model = tiny_bert(), tiny_bert()
    base = upper_parameters(model)
    tuned = {}  # a "fine-tuned" copy: a rank-2 change of each matrix, a shift of each vector
    rng = np.random.default_rng(0)
    for name, value in base.items():
        change = (rng.normal(size=(value.shape[0], 2)) @ rng.normal(size=(2, value.shape[1])) * 0.01
                  if value.ndim == 2 else rng.normal(size=value.shape) * 0.01)
        tuned[name] = (value + change).astype(np.float32)
    with torch.no_grad():
        for j, block in enumerate(upper_blocks(tuned_model)):
            for name, p in block.named_parameters():
                p.copy_(torch.from_numpy(tuned[f"{j}.{name}"]))
    change = compress(tuned, base, rank=2)
    assert all(v.dtype == np.float16 for v in change.values())
    assert any(k.endswith(".u") for k in change) and not any(k.endswith("weight") and change[k].ndim == 2
                                                             for k in change)
    rebuilt = apply_change(base, change)
    assert max(float(np.abs(rebuilt[k] - tuned[k]).max()) for k in base) < 1e-4  # fp16 rounding only
    record = layer_record(model.config, base, UPPER_LAYERS, "mean", rank=2)
    ids, mask = batch()
    want, _ = torch_vectors(tuned_model, ids, mask)
    _, states = torch_vectors(model, ids, mask)  # the states below the tuned layers are the base model's
    got = QuestionChange(change, record).apply(base).encode(states)
    assert np.abs(got - want).max() < 1e-3
    other = upper_parameters(tiny_bert(seed=1))
    with pytest.raises(ModelError, match="other base weights"):
        QuestionChange(change, record).apply(other)


def test_the_change_file_round_trips_and_a_bad_file_is_one_clear_error(tmp_path):
    model = tiny_bert()
    base = upper_parameters(model)
    tuned = {k: v + 0.01 for k, v in base.items()}
    stored = QuestionChange(compress(tuned, base, rank=4), layer_record(model.config, base, UPPER_LAYERS, "mean"))
    stored.save(tmp_path / "q.safetensors")
    again = QuestionChange.load(tmp_path / "q.safetensors")
    assert again.record == stored.record and again.record.get("layers") == UPPER_LAYERS
    assert all(np.array_equal(again.change[k], stored.change[k]) for k in stored.change)
    assert stored.nbytes == sum(v.nbytes for v in stored.change.values()) > 0
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot read the question layers"):
        QuestionChange.load(tmp_path / "bad.safetensors")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2, np.float16)}, str(tmp_path / "other.safetensors"), metadata={"format": "else"})
    with pytest.raises(ModelError, match=QUESTION_FORMAT):
        QuestionChange.load(tmp_path / "other.safetensors")


def test_the_onnx_export_returns_the_upper_states_and_base_weights_as_torch(tiny_model, tmp_path):
    from hotelbot_cli.components.knowledge.embedding import Embedder
    from hotelbot_cli.runtime.encoder import OnnxSentenceEncoder
    from hotelbot_cli.export.encoder import export_sentence_encoder

    from hotelbot_cli.runtime.encoder import ENCODER_FILE, encoder_cache_dir

    embedder = Embedder.load(str(tiny_model), tmp_path)
    m = embedder.model
    current = encoder_cache_dir(tmp_path / "models", "tiny", m.fingerprint)
    older = current.with_name(current.name.rpartition("-v")[0] + "-v2")  # an export in the previous format
    older.mkdir(parents=True)
    (older / ENCODER_FILE).write_text("{}", "utf-8")
    unrelated = current.with_name("tiny-0123456789abcdef-v2")
    unrelated.mkdir()
    (unrelated / ENCODER_FILE).write_text("{}", "utf-8")
    directory = export_sentence_encoder(embedder.encoder, embedder.tokenizer, tmp_path / "models", name="tiny",
                                        fingerprint=m.fingerprint, pooling=m.pooling, max_length=m.max_length,
                                        query_prefix=m.query_prefix, passage_prefix=m.passage_prefix)
    assert directory == current and not older.exists() and unrelated.is_dir()  # only its own older format goes
    onnx = OnnxSentenceEncoder.load(directory, m.fingerprint)
    texts = ["a qué hora es el desayuno", "clave del wifi por favor"]
    want_vectors, want_states = embedder.embed_with_states(texts, kind="query")
    vectors, states = onnx.embed_with_states(texts, kind="query")
    assert np.abs(vectors - want_vectors).max() < 1e-4
    assert [s.shape for s in states] == [s.shape for s in want_states]
    assert max(float(np.abs(a - b).max()) for a, b in zip(states, want_states)) < 1e-3
    assert np.allclose(vectors, embedder.embed(texts, kind="query"), atol=1e-5)
    base, exported = embedder.upper_weights(), onnx.upper_weights()
    assert base.keys() == exported.keys() and all(np.array_equal(base[k], exported[k]) for k in base)
