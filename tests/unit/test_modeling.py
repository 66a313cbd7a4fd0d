import pickle

import pytest
import torch

from hotelbot_cli.errors import ModelError
from hotelbot_cli.modeling import (
    ClassifierConfig, SentenceClassifier, load_base_encoder, load_classifier, load_torch_file, pool,
    resolve_base_model, save_classifier, save_torch_file,
)


def make_model(tiny_model, tmp_path):
    resolved = resolve_base_model(str(tiny_model), tmp_path / "cache")
    tokenizer, encoder = load_base_encoder(resolved)
    torch.manual_seed(0)
    model = SentenceClassifier(encoder, ClassifierConfig(labels=["a_a", "b_b", "c_c"], max_length=32)).eval()
    return model, tokenizer


def logits(model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])["logits"]


def test_save_load_roundtrip_gives_identical_logits(tiny_model, tmp_path):
    model, tokenizer = make_model(tiny_model, tmp_path)
    texts = ["hola qué tal", "clave del wifi por favor"]
    save_classifier(model, tokenizer, tmp_path / "saved")
    loaded, tok2 = load_classifier(tmp_path / "saved")
    assert torch.allclose(logits(model, tokenizer, texts), logits(loaded, tok2, texts), atol=1e-6)
    assert loaded.classifier_config.labels == ["a_a", "b_b", "c_c"]


def test_torch_file_loads_with_weights_only(tiny_model, tmp_path):
    model, tokenizer = make_model(tiny_model, tmp_path)
    save_torch_file(model, tmp_path / "intent_classifier.pt")
    payload = torch.load(tmp_path / "intent_classifier.pt", weights_only=True)
    assert payload["id_to_intent"] == {0: "a_a", 1: "b_b", 2: "c_c"}
    loaded, id_to_intent = load_torch_file(tmp_path / "intent_classifier.pt")
    assert torch.allclose(logits(model, tokenizer, ["hola"]), logits(loaded, tokenizer, ["hola"]), atol=1e-6)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "x", "payload": Evil()}, handle)
    with pytest.raises(ModelError):
        load_torch_file(path)


def test_mean_pooling_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[2.0, 2.0]]))
    assert torch.equal(pool(hidden, mask, "cls"), torch.tensor([[1.0, 1.0]]))


def test_resolve_errors(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_base_model(str(tmp_path), tmp_path)
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_base_model(str(f), tmp_path)
    with pytest.raises(ModelError, match="not found"):
        resolve_base_model("./does/not/exist", tmp_path)
    with pytest.raises(ModelError):
        resolve_base_model("packaged:nope", tmp_path)


def test_unreachable_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    resolved = resolve_base_model("someorg/some-model-that-is-not-here", tmp_path)
    with pytest.raises(ModelError, match="cannot load base model"):
        load_base_encoder(resolved)


def test_a_frozen_base_encoder_is_memory_mapped_and_answers_like_from_pretrained(tiny_model):
    from pathlib import Path

    from safetensors.torch import load_file

    from hotelbot_cli.modeling import load_base_encoder, mapped_safetensors, resolve_base_model

    mapped = mapped_safetensors(Path(tiny_model) / "model.safetensors")
    loaded = load_file(str(Path(tiny_model) / "model.safetensors"))
    assert set(mapped) == set(loaded) and all(torch.equal(mapped[k], loaded[k]) for k in loaded)
    resolved = resolve_base_model(str(tiny_model), Path("."))
    tokenizer, copied = load_base_encoder(resolved)
    none, frozen = load_base_encoder(resolved, frozen=True, tokenizer=False)
    assert none is None
    batch = tokenizer(["hola qué tal", "la clave del wifi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(copied(**batch).last_hidden_state, frozen(**batch).last_hidden_state)
    before = bytes(Path(tiny_model, "model.safetensors").read_bytes())
    with torch.no_grad():  # the map is private: writing a weight never reaches the file
        frozen.get_input_embeddings().weight[0, 0] += 1.0
    assert Path(tiny_model, "model.safetensors").read_bytes() == before
