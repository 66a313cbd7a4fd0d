"""`hotelbot export VERSION --format pt|hf|onnx DIR`: the seed's .pt loads with weights_only=True and predicts
like the version; every hf directory loads with the standard Hugging Face Auto classes and its model card's
snippet reproduces the version's answers; the onnx directory runs on onnxruntime with every external data
file its graphs reference; exports are atomic, refuse a non-empty directory without --force, refuse a
corrupt version and leave nothing behind on failure.

The models are the session's tiny BERT. ``built`` trains, once per module and with few epochs (the answers
only have to be reproduced, not good), a knowledge base, an entity extractor, a sentiment classifier and
a generator on top of the session's trained classifier; ``hf_all`` exports its newest version once."""

import json
import os
import re
import shutil

import pytest
from typer.testing import CliRunner

from conftest import REPO, TINY_INTENTS, clone_version
from hotelbot_cli.cli.app import app
from hotelbot_cli.config import load_settings
from hotelbot_cli.registry import ModelRegistry

runner = CliRunner()
SENTIMENT = REPO / "datasets" / "sentimiento_es.jsonl"
DOCS = {"wifi.md": "# Wifi\n\n## Red\n\nLa red es FaroLevante y es gratis. La clave está en su tarjeta.\n",
        "desayuno.md": "# Desayuno\n\n## Horario\n\nEl desayuno se sirve de 7:00 a 10:30 en el restaurante.\n"}
PAIRS = [("hola buenas", "¡Hola! ¿En qué puedo ayudarle?", "greeting"),
         ("buenos días", "¡Buenos días! Dígame qué necesita.", "greeting"),
         ("buenas noches", "Buenas noches, que descanse.", "greeting"),
         ("cuál es la clave del wifi", "La clave está en su tarjeta.", "wifi_info"),
         ("hay wifi gratis", "Sí, el wifi es gratis.", "wifi_info"),
         ("no funciona el wifi", "Reinicie el router, por favor.", "wifi_info"),
         ("a qué hora es el desayuno", "De 7:00 a 10:30 en el restaurante.", "breakfast_info"),
         ("desayuno incluido", "Sí, está incluido.", "breakfast_info"),
         ("horario del desayuno", "El desayuno es de 7:00 a 10:30.", "breakfast_info")]
ENTITY_LINES = [("Soy Ana de la habitación 305", [(4, 7, "PERSON"), (25, 28, "ROOM_NUMBER")]),
                ("Soy Luis de la habitación 412", [(4, 8, "PERSON"), (26, 29, "ROOM_NUMBER")]),
                ("Soy Marta de la habitación 27", [(4, 9, "PERSON"), (27, 29, "ROOM_NUMBER")]),
                ("Soy Pedro de la habitación 1204", [(4, 9, "PERSON"), (27, 31, "ROOM_NUMBER")]),
                ("Quiero reservar dos noches", [(16, 26, "NIGHTS")]),
                ("Quiero reservar 3 noches", [(16, 24, "NIGHTS")]),
                ("Quiero reservar cinco noches", [(16, 28, "NIGHTS")]),
                ("Quiero una suite", [(11, 16, "ROOM_TYPE")]),
                ("Quiero una habitación doble", [(11, 27, "ROOM_TYPE")]),
                ("Llegamos el lunes", [(12, 17, "DATE")])]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def doc(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def reference_generator(info, models_dir):
    """The generator of ``info`` loaded by the project's own loader, replying without grounding."""
    from hotelbot_cli.components.generator.model import load_generator
    from hotelbot_cli.components.generator.responder import Responder

    model, tokenizer, spec, generation, vocab = load_generator(info.path / "generator", models_dir)
    return Responder(model, tokenizer, spec, generation, vocab)


@pytest.fixture(scope="module")
def built(trained_template, tiny_model, mlflow_uri, tmp_path_factory):
    """v0001 classifier (the session's), v0002 + knowledge base, v0003 + entities, v0004 + sentiment,
    v0005 + generator (encoder saved), v0006 = v0005 with the generator's encoder referenced, not saved."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster than two busy ones
    try:
        return _build(tmp_path_factory.mktemp("export"), trained_template, tiny_model, mlflow_uri)
    finally:
        torch.set_num_threads(threads)


def _build(root, trained_template, tiny_model, mlflow_uri):
    from hotelbot_cli.components.entities.train import train_entities
    from hotelbot_cli.components.generator.model import GeneratorConfig, load_generator, save_generator
    from hotelbot_cli.components.generator.training import train_generator
    from hotelbot_cli.components.knowledge.kb import train_knowledge_base
    from hotelbot_cli.components.sentiment.classifier import SENTIMENT_LABELS, train_sentiment

    def jsonl(name, records):
        (root / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
        return root / name

    shutil.copytree(trained_template, root / "registry", symlinks=True)
    settings = load_settings(env={"HOTELBOT_HOME": str(root / "home"), "MLFLOW_TRACKING_URI": mlflow_uri,
                                  "HOTELBOT_BASE_MODEL": str(tiny_model), "TRAINING_EPOCHS": "2",
                                  "TRAINING_BATCH_SIZE": "8", "TRAINING_LEARNING_RATE": "0.002"},
                             path_overrides={"registry": root / "registry"})
    registry = ModelRegistry(root / "registry")
    (root / "docs").mkdir()
    for name, text in DOCS.items():
        (root / "docs" / name).write_text(text, "utf-8")
    train_knowledge_base(settings, root / "docs", registry)
    entities = [{"text": t, "entities": [{"start": s, "end": e, "label": k} for s, e, k in spans]}
                for t, spans in ENTITY_LINES]
    train_entities(settings, jsonl("entities.jsonl", entities), registry)
    sentiment = [json.loads(line) for line in SENTIMENT.read_text("utf-8").splitlines()]
    picked = [r for label in SENTIMENT_LABELS for r in [x for x in sentiment if x["label"] == label][:6]]
    train_sentiment(settings, jsonl("sentiment.jsonl", picked), registry)
    pairs = [{"message": m, "reply": r, "intent": i} for m, r, i in PAIRS]
    config = GeneratorConfig.from_settings(settings, epochs=2, batch_size=6, decoder_layers=1, decoder_hidden=32,
                                           early_stopping_patience=0, max_source_length=64, max_target_length=24,
                                           generation={"num_beams": 2, "max_new_tokens": 12})
    train_generator(settings, jsonl("pairs.jsonl", pairs), registry, config=config)

    def reference_the_encoder(staged):  # as a frozen packaged encoder is stored: by reference, not saved
        model, tokenizer, spec, generation, vocab = load_generator(staged / "generator", settings.paths.models_dir)
        spec.encoder["saved"] = False
        save_generator(model, tokenizer, spec, generation, vocab, staged / "generator")

    clone_version(registry, "v0005", reference_the_encoder)
    assert [v.name for v in registry.list_versions()] == [f"v000{i}" for i in range(1, 7)]
    return {"registry": registry, "settings": settings}


def export_all(built, tmp_path_factory, fmt):
    """``hotelbot export v0006 --format FMT`` of every component that has one."""
    out = tmp_path_factory.mktemp(f"{fmt}-export") / f"v0006-{fmt}"
    result = run("export", "v0006", "--format", fmt, out, "--registry", built["registry"].root, "--json")
    return {"dir": out, "doc": doc(result)}


@pytest.fixture(scope="module")
def hf_all(built, tmp_path_factory):
    """The hf export of every component, once per module."""
    return export_all(built, tmp_path_factory, "hf")


def card_snippet(directory):
    """The Python block of an exported model card."""
    text = (directory / "README.md").read_text("utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, text
    return blocks[0]


def run_card(export_root, component, monkeypatch, **values):
    """Run the model card's snippet from the export root (as the card says) and return its variables; each of
    ``values`` replaces the snippet's example input of that name (``texts = [...]``, ``text = "..."``)."""
    snippet = card_snippet(export_root / component)
    for name, value in values.items():
        line = f"{name} = {value!r}"
        snippet, count = re.subn(rf"^{name} = .*$", lambda _, line=line: line, snippet, flags=re.M)
        assert count == 1, name
    monkeypatch.chdir(export_root)
    namespace = {}
    exec(compile(snippet, f"{component}/README.md", "exec"), namespace)
    return namespace


# ---------------------------------------------------------------------------------------------- pt


def test_pt_loads_with_weights_only_and_predicts_like_the_version(built, tmp_path):
    import torch

    from hotelbot_cli.modeling import load_torch_file
    from hotelbot_cli.runtime import TorchPredictor

    registry = built["registry"]
    d = doc(run("export", "v0001", "--format", "pt", tmp_path / "pt", "--registry", registry.root, "--json"))
    path = tmp_path / "pt" / "intent_classifier.pt"
    assert sorted(os.listdir(tmp_path / "pt")) == ["export.json", "intent_classifier.pt"]
    assert d["components"][0]["files"] == ["intent_classifier.pt"] and d["skipped"] == []
    payload = torch.load(path, map_location="cpu", weights_only=True)  # the seed's way: no code runs
    assert set(payload) == {"format", "state_dict", "encoder_config", "classifier_config", "id_to_intent"}
    assert sorted(payload["id_to_intent"].values()) == sorted(TINY_INTENTS)
    model, id_to_intent = load_torch_file(path)
    reference = TorchPredictor.from_version(registry.get("v0001"))
    exported = TorchPredictor(model, reference.tokenizer, "v0001")
    texts = ["hola buenas", "la clave del wifi", "noticias de hoy", "desayuno"]
    assert torch.allclose(exported.probabilities(texts), reference.probabilities(texts), atol=1e-6)
    assert [p.intent for p in exported.predict(texts)] == [p.intent for p in reference.predict(texts)]


def test_pt_of_a_version_with_more_components_skips_them_with_the_reason(built, tmp_path):
    d = doc(run("export", "v0006", "--format", "pt", tmp_path / "pt", "--registry", built["registry"].root, "--json"))
    assert [c["component"] for c in d["components"]] == ["classifier"]
    skipped = {s["component"]: s["reason"] for s in d["skipped"]}
    assert set(skipped) == {"knowledge", "entities", "sentiment", "generator"}
    assert "no pt export (it exports as hf, onnx)" in skipped["sentiment"]


# ---------------------------------------------------------------------------------------------- hf


def test_hf_exports_every_component_with_a_record(hf_all):
    d, out = hf_all["doc"], hf_all["dir"]
    assert d["version"] == "v0006" and d["format"] == "hf" and d["skipped"] == []
    assert [c["component"] for c in d["components"]] == ["classifier", "knowledge", "entities", "sentiment",
                                                          "generator"]
    record = json.loads((out / "export.json").read_text("utf-8"))
    assert record["version"] == "v0006" and record["export_format"] == "hf"
    from hotelbot_cli._io import sha256_file

    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"export.json"}
    assert set(record["files"]) == on_disk and d["files"] == len(on_disk) + 1
    assert all(sha256_file(out / rel) == meta["sha256"] for rel, meta in record["files"].items())
    for component in d["components"]:
        assert component["path"] == component["component"]
        assert all(f.startswith(component["component"] + "/") for f in component["files"])
        assert f"{component['component']}/README.md" in component["files"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left beside it


def test_hf_classifier_loads_with_auto_classes_and_its_card_reproduces_the_probabilities(built, hf_all,
                                                                                        monkeypatch):
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from hotelbot_cli.data import clean_text
    from hotelbot_cli.runtime import TorchPredictor

    path = hf_all["dir"] / "classifier"
    assert AutoConfig.from_pretrained(path).model_type == "bert"
    assert AutoTokenizer.from_pretrained(path)("hola")["input_ids"]
    AutoModel.from_pretrained(path)  # a standard checkpoint: loads with the plain Auto class too
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert "embeddings.word_embeddings.weight" in keys and not any(k.startswith("encoder.embeddings") for k in keys)
    head = json.loads((path / "head.json").read_text("utf-8"))
    assert head["pooling"] == "mean" and head["labels"] == built["registry"].get("v0006").metadata["labels"]
    assert {"query_prefix", "max_length", "out_of_scope_threshold"} <= set(head)
    card = (path / "README.md").read_text("utf-8")
    assert "mean over the attention mask" in card and "softmax" in card.lower() and "out_of_scope" in card

    ns = run_card(hf_all["dir"], "classifier", monkeypatch)
    reference = TorchPredictor.from_version(built["registry"].get("v0006"))
    assert torch.allclose(ns["probs"], reference.probabilities(ns["texts"]), atol=1e-5)
    assert ns["answers"] == [p.intent for p in reference.predict(ns["texts"])]
    for text in ["  hola\u200b\tqué\n tal ", "e\u0301xito\x00 ¿sí?", "ñandú  "]:
        assert ns["clean"](text) == clean_text(text)


def test_hf_classifier_card_applies_the_out_of_scope_threshold(registry_copy, tmp_path, monkeypatch):
    from hotelbot_cli.runtime import TorchPredictor

    texts = ["quiero ver las noticias", "¿a qué hora es el desayuno?"]  # the card's own
    confidence = TorchPredictor.from_version(registry_copy.get("v0001")).probabilities(texts).max(dim=-1).values
    assert abs(float(confidence[0] - confidence[1])) > 1e-3
    threshold = float(confidence.mean())  # one text above it, one below

    def with_threshold(staged):
        path = staged / "model" / "classifier.json"
        path.write_text(json.dumps({**json.loads(path.read_text("utf-8")), "oos_threshold": threshold}), "utf-8")

    info = clone_version(registry_copy, "v0001", with_threshold)
    doc(run("export", info.name, "--format", "hf", tmp_path / "hf", "--json"))
    head = json.loads((tmp_path / "hf" / "classifier" / "head.json").read_text("utf-8"))
    assert head["out_of_scope_threshold"] == threshold and head["out_of_scope_label"] == "out_of_scope"
    ns = run_card(tmp_path / "hf", "classifier", monkeypatch)
    reference = TorchPredictor.from_version(info)
    assert ns["texts"] == texts and ns["answers"] == [p.intent for p in reference.predict(texts)]
    assert ns["answers"].count("out_of_scope") == 1


def test_the_generator_cards_of_the_other_architectures_are_valid_python():
    from hotelbot_cli.components.generator.model import GeneratorSpec, _generator_card

    for architecture, restricted in (("causal", False), ("seq2seq", False), ("encoder-decoder", False)):
        spec = GeneratorSpec(architecture, {}, {}, "", "", 64, 32, 2, 300, {"pad": 0, "bos": 1, "eos": 2, "unk": 3},
                             restricted, grounded=True)
        text = _generator_card(spec, "generator", "v0009", restricted)
        snippet = re.findall(r"```python\n(.*?)```", text, re.S)[0]
        compile(snippet, architecture, "exec")
        assert ("AutoModelForCausalLM" in snippet) == (architecture == "causal")


def test_hf_sentiment_card_reproduces_the_version(built, hf_all, monkeypatch):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from hotelbot_cli.components.sentiment.classifier import SentimentClassifier

    AutoModel.from_pretrained(hf_all["dir"] / "sentiment")
    AutoTokenizer.from_pretrained(hf_all["dir"] / "sentiment")
    ns = run_card(hf_all["dir"], "sentiment", monkeypatch)
    reference = SentimentClassifier.from_version(built["registry"].get("v0006"), "torch")  # the weights exported
    assert torch.allclose(ns["probs"], reference.predictor.probabilities(ns["texts"]), atol=1e-5)
    assert json.loads((hf_all["dir"] / "sentiment" / "head.json").read_text("utf-8"))["out_of_scope_threshold"] is None


def test_hf_entities_card_reproduces_the_tag_probabilities(built, hf_all, monkeypatch):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from hotelbot_cli.components.entities.tagger import EntityExtractor

    AutoModel.from_pretrained(hf_all["dir"] / "entities")
    assert AutoTokenizer.from_pretrained(hf_all["dir"] / "entities").is_fast
    ns = run_card(hf_all["dir"], "entities", monkeypatch)
    extractor = EntityExtractor.from_version(built["registry"].get("v0006"))  # the weights exported
    enc = extractor.tokenizer(ns["text"], truncation=True, max_length=extractor.config.max_length, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(extractor.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
                              ["logits"][0], dim=-1)
    assert torch.allclose(ns["probs"], probs, atol=1e-5)
    head = json.loads((hf_all["dir"] / "entities" / "head.json").read_text("utf-8"))
    assert head["tags"] == extractor.tags and head["task"] == "token-classification"


def test_hf_knowledge_base_card_searches_like_the_version(built, hf_all, monkeypatch):
    import numpy as np

    from hotelbot_cli.components.knowledge.kb import KnowledgeBase

    ns = run_card(hf_all["dir"], "knowledge", monkeypatch)
    # The card embeds with the fp32 encoder; a build may have chosen int8 queries (knowledge/index.json
    # query_encoder), which approximate those vectors: compare with the version's fp32 queries.
    monkeypatch.setenv("HOTELBOT_RUNTIME", "onnx-fp32")
    kb = KnowledgeBase.from_version(built["registry"].get("v0006"), built["settings"].paths.models_dir)
    hits = kb.search(ns["question"], top_k=len(kb.chunk_list))
    assert len(ns["chunks"]) == len(kb.chunk_list) and ns["vectors"].shape == (len(kb.chunk_list), kb.model.dim)
    scores = {c["id"]: float(s) for c, s in zip(ns["chunks"], ns["scores"])}
    assert np.allclose([scores[h.chunk.id] for h in hits], [h.score for h in hits], atol=1e-5)
    config = json.loads((hf_all["dir"] / "knowledge" / "knowledge.json").read_text("utf-8"))
    assert config["pooling"] == kb.model.pooling and config["max_length"] == kb.model.max_length


def test_hf_generator_is_complete_and_reloads_with_encoder_decoder_model(built, hf_all, monkeypatch):
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer, EncoderDecoderModel

    info = built["registry"].get("v0006")
    gen = json.loads((info.path / "generator" / "generator.json").read_text("utf-8"))
    assert gen["encoder"]["saved"] is False  # the version references its encoder ...
    path = hf_all["dir"] / "generator"
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert any(k.startswith("encoder.") for k in f.keys())  # ... the export holds it
    assert hf_all["doc"]["components"][-1]["encoder_in_version"] == "referenced"
    model = EncoderDecoderModel.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    reference = reference_generator(info, built["settings"].paths.models_dir)
    enc = tokenizer("hola buenas", return_tensors="pt")
    start = torch.tensor([[model.config.decoder_start_token_id]])
    with torch.no_grad():
        mine = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=start).logits
        theirs = reference.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 decoder_input_ids=start).logits
    assert torch.allclose(mine, theirs, atol=1e-5)
    ns = run_card(hf_all["dir"], "generator", monkeypatch)
    assert ns["reply"] == reference.reply([ns["message"]])[0]["reply"]


def test_hf_generator_with_a_saved_encoder(built, tmp_path):
    from transformers import EncoderDecoderModel

    d = doc(run("export", "v0005", "--format", "hf", tmp_path / "gen", "--component", "generator",
                "--registry", built["registry"].root, "--json"))
    assert [c["component"] for c in d["components"]] == ["generator"] and d["skipped"] == []
    assert d["components"][0]["encoder_in_version"] == "saved"
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["export.json", "generator"]
    EncoderDecoderModel.from_pretrained(tmp_path / "gen" / "generator")


# ---------------------------------------------------------------------------------------------- onnx


def test_onnx_export_runs_with_onnxruntime(built, tmp_path, monkeypatch):
    import numpy as np
    import onnx

    from hotelbot_cli.runtime import TorchPredictor
    from hotelbot_cli.runtime.onnx import OnnxPredictor

    registry = built["registry"]
    d = doc(run("export", "v0006", "--format", "onnx", tmp_path / "onnx", "--registry", registry.root, "--json",
                "--component", "classifier"))
    assert [c["component"] for c in d["components"]] == ["classifier"]
    path = tmp_path / "onnx" / "classifier"
    files = set(d["components"][0]["files"])
    assert {"classifier/runtime.json", "classifier/classifier.json", "classifier/tokenizer.json"} <= files
    for graph in d["components"][0]["graphs"]:
        model = onnx.load(str(path / graph), load_external_data=False)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert all((path / loc).is_file() for loc in locations)  # every data file the graph names came along
    ns = run_card(tmp_path / "onnx", "classifier", monkeypatch)
    reference = TorchPredictor.from_version(registry.get("v0006"))
    assert np.allclose(ns["probs"], reference.probabilities(ns["texts"]).numpy(), atol=1e-4)
    predictor = OnnxPredictor.from_model_dir(path, "onnx-fp32")
    assert [p.intent for p in predictor.predict(ns["texts"])] == [p.intent for p in reference.predict(ns["texts"])]


@pytest.fixture(scope="module")
def onnx_all(built, tmp_path_factory):
    """The onnx export of every component that has one, once per module."""
    return export_all(built, tmp_path_factory, "onnx")


def test_onnx_exports_the_entity_and_sentiment_runtimes_too(onnx_all):
    """The entity and sentiment models serve on ONNX inside hotelbot: the export carries the graph each one
    serves with, every external data file it references and what its card needs; the knowledge base and the
    generator have no ONNX export and are listed as skipped."""
    import onnx

    d, root = onnx_all["doc"], onnx_all["dir"]
    assert [c["component"] for c in d["components"]] == ["classifier", "entities", "sentiment"]
    skipped = {s["component"]: s["reason"] for s in d["skipped"]}
    assert set(skipped) == {"knowledge", "generator"} and "no onnx export (it exports as hf)" in skipped["knowledge"]
    for component in d["components"]:
        name = component["component"]
        files = set(component["files"])
        assert {f"{name}/runtime.json", f"{name}/tokenizer.json", f"{name}/README.md"} <= files
        assert component["graphs"] and component["runtime"] in ("onnx-fp32", "onnx-int8")
        for graph in component["graphs"]:
            model = onnx.load(str(root / name / graph), load_external_data=False)
            locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
            assert all((root / name / loc).is_file() for loc in locations)
    assert "entities/entities.json" in {f for c in d["components"] for f in c["files"]}
    assert "sentiment/classifier.json" in {f for c in d["components"] for f in c["files"]}


def test_onnx_sentiment_card_reproduces_the_version(built, onnx_all, monkeypatch):
    """The card's snippet (a batch of texts on the exported graph) against hotelbot's own runtime on the same
    graph, one text at a time (int8 answers depend on a padded batch's other texts: compared per text)."""
    import numpy as np

    from hotelbot_cli.components.sentiment.classifier import SentimentClassifier

    ns = run_card(onnx_all["dir"], "sentiment", monkeypatch)
    [record] = [c for c in onnx_all["doc"]["components"] if c["component"] == "sentiment"]
    reference = SentimentClassifier.from_version(built["registry"].get("v0006"), record["runtime"])
    assert reference.predictor.runtime == record["runtime"]
    for text in ns["texts"]:
        one = run_card(onnx_all["dir"], "sentiment", monkeypatch, texts=[text])
        assert np.allclose(one["probs"], reference.predictor.probabilities([text]), atol=1e-5)


def test_onnx_entities_card_reproduces_the_tag_probabilities(built, onnx_all, monkeypatch):
    """The card's snippet (the standard tokenizer, the exported graph) gives each token the probabilities that
    hotelbot's own runtime (its tokenizer, the version's graph) gives it, and decodes them into entities."""
    import numpy as np

    from hotelbot_cli.components.entities.onnx import load_version_extractor
    from hotelbot_cli.components.entities.tagger import decode_tags, token_char_spans

    [record] = [c for c in onnx_all["doc"]["components"] if c["component"] == "entities"]
    extractor = load_version_extractor(built["registry"].get("v0006"))
    assert extractor.runtime == record["runtime"]
    prefix = extractor.config.prefix
    for text in ENTITY_LINES[0][0], ENTITY_LINES[4][0], "Soy Ana, de la habitación 305, quiero una suite doble":
        ns = run_card(onnx_all["dir"], "entities", monkeypatch, text=text)
        ids, mask, offsets, special = extractor.encoder.encode_with_offsets([prefix + text])
        (logits,) = extractor.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        keep = mask[0].astype(bool)
        probs = np.exp(logits[0] - logits[0].max(axis=-1, keepdims=True))[keep]
        probs /= probs.sum(axis=-1, keepdims=True)
        assert np.allclose(ns["probs"], probs, atol=1e-5), text
        # hotelbot's decoding of the same tags, before its whole-word step (which the card leaves out)
        offs, marks = offsets[0], special[0]
        if len(offs) == len(keep):
            offs, marks = [o for o, k in zip(offs, keep) if k], [m for m, k in zip(marks, keep) if k]
        spans = token_char_spans(text, offs, marks, len(prefix))
        ours = decode_tags([extractor.tags[i] for i in probs.argmax(axis=-1)], spans, probs.max(axis=-1).tolist())
        assert [(k, s, e) for k, s, e, _ in ns["entities"]] == [(k, s, e) for k, s, e, _ in ours], text
        assert np.allclose([sum(p) / len(p) for *_, p in ns["entities"]], [c for *_, c in ours], atol=1e-5)


def test_onnx_data_split_in_several_files_or_outside_the_graphs_directory_is_copied(tmp_path):
    """The graph's own external_data locations decide what is copied: one file per tensor, in a subdirectory,
    and outside the graph's directory (rewritten to a file beside the copied graph)."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    from hotelbot_cli.components.exporting import copy_onnx_graph

    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.full((2, 3), 0.5, dtype=np.float32)
    graph = helper.make_graph([helper.make_node("Add", ["x", "a"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(a, "a"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    source = tmp_path / "src" / "model"
    source.mkdir(parents=True)
    onnx.save_model(model, str(source / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)
    saved = onnx.load(str(source / "m.onnx"), load_external_data=False)
    (source / "weights").mkdir()
    (tmp_path / "src" / "blobs").mkdir()
    os.replace(source / "a", source / "weights" / "a.bin")
    os.replace(source / "b", tmp_path / "src" / "blobs" / "b.bin")
    for tensor in saved.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = {"a": "weights/a.bin", "b": "../blobs/b.bin"}[entry.value]
    onnx.save(saved, str(source / "m.onnx"))
    x = np.ones((2, 3), dtype=np.float32)
    expected = x + a + b

    target = tmp_path / "out"
    target.mkdir()
    written = copy_onnx_graph(source / "m.onnx", target)
    assert written[0] == "m.onnx" and "weights/a.bin" in written and len(written) == 3
    assert np.array_equal(onnxruntime.InferenceSession(str(target / "m.onnx")).run(None, {"x": x})[0], expected)
    os.replace(tmp_path / "src", tmp_path / "gone")  # the copy depends on nothing outside it
    assert np.array_equal(onnxruntime.InferenceSession(str(target / "m.onnx")).run(None, {"x": x})[0], expected)


def test_a_classifier_without_onnx_is_skipped_and_nothing_is_written(registry_copy, tmp_path):
    from hotelbot_cli.export import drop_export

    clone_version(registry_copy, "v0001", lambda staged: drop_export(staged / "model"))
    result = run("export", "v0003", "--format", "onnx", tmp_path / "exports" / "out")
    assert result.exit_code == 1
    assert "v0003 has nothing to export as onnx" in result.output and "has no ONNX export" in result.output
    assert not (tmp_path / "exports").exists()


# ---------------------------------------------------------------------------------------------- safety


def test_a_non_empty_directory_is_refused_without_force_and_replaced_with_it(registry_copy, tmp_path):
    tmp_path = tmp_path / "exports"
    out = tmp_path / "out"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("keep me", "utf-8")
    result = run("export", "v0001", "--format", "pt", out)
    assert result.exit_code == 1 and "is not empty" in result.output and "--force" in result.output
    assert sorted(os.listdir(out)) == ["old.txt"]
    d = doc(run("export", "v0001", "--format", "pt", out, "--force", "--json"))
    assert d["replaced"] is True
    assert sorted(os.listdir(out)) == ["export.json", "intent_classifier.pt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or old copy left beside it
    assert (out.stat().st_mode & 0o777) == 0o777 & ~_umask()  # not the private modes of temporary files
    assert all((p.stat().st_mode & 0o777) == 0o666 & ~_umask() for p in out.iterdir())
    d = doc(run("export", "v0002", "--format", "pt", out, "--force", "--json"))
    assert d["version"] == "v0002" and json.loads((out / "export.json").read_text())["version"] == "v0002"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert doc(run("export", "v0001", "--format", "pt", empty, "--json"))["replaced"] is False  # empty is fine


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_corrupt_version_is_refused_and_nothing_is_written(registry_copy, tmp_path):
    weights = registry_copy.get("v0002").path / "model" / "classifier.json"
    weights.chmod(0o644)
    weights.write_text(weights.read_text("utf-8").replace("mean", "cls"), "utf-8")
    for fmt in ("pt", "hf", "onnx"):
        result = run("export", "v0002", "--format", fmt, tmp_path / "new" / "out")
        assert result.exit_code == 1, result.output
        assert "v0002 failed its checksum check" in result.output
    assert not (tmp_path / "new").exists()  # not even the parent directory


def test_a_failure_while_writing_leaves_nothing(registry_copy, tmp_path, monkeypatch):
    from hotelbot_cli.components import get

    classifier = type(get("classifier"))

    def broken(self, info, fmt, target, settings):
        target.mkdir(parents=True, exist_ok=True)
        (target / "half.bin").write_bytes(b"x" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(classifier, "export", broken)
    result = run("export", "v0001", "--format", "hf", tmp_path / "a" / "b" / "out")
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert not (tmp_path / "a").exists()
    out = tmp_path / "exports" / "kept"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("old", "utf-8")
    assert run("export", "v0001", "--format", "hf", out, "--force").exit_code == 1
    assert os.listdir(out.parent) == ["kept"] and os.listdir(out) == ["old.txt"]  # --force: the old content stays


@pytest.mark.parametrize("name, message", [
    ("../v0001", "invalid version name"), ("v1", "invalid version name"), ("v0001/..", "invalid version name"),
    ("nope", "invalid version name"), ("v9999", "version v9999 not found"), ("current", "no version is deployed"),
])
def test_invalid_or_unknown_versions_are_refused(registry_copy, tmp_path, name, message):
    result = run("export", name, "--format", "pt", tmp_path / "out")
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_aliases_resolve_through_the_registry(registry_copy, tmp_path):
    assert doc(run("export", "latest", "--format", "pt", tmp_path / "a", "--json"))["version"] == "v0002"
    assert run("deploy", "v0001").exit_code == 0
    assert doc(run("export", "current", "--format", "pt", tmp_path / "b", "--json"))["version"] == "v0001"


def test_targets_inside_the_registry_or_around_the_working_directory_are_refused(registry_copy, tmp_path,
                                                                                 monkeypatch):
    for target in (registry_copy.root / "exports", registry_copy.root, registry_copy.root.parent):
        result = run("export", "v0001", "--format", "pt", target, "--force")
        assert result.exit_code == 1 and ("inside the registry" in result.output
                                          or "working directory" in result.output), result.output
    assert not (registry_copy.root / "exports").exists()
    elsewhere = tmp_path / "elsewhere" / "here"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    for target in (".", ".."):
        result = run("export", "v0001", "--format", "pt", target, "--force")
        assert result.exit_code == 1 and "working directory" in result.output, result.output
    (elsewhere / "file").write_text("x")
    result = run("export", "v0001", "--format", "pt", "file", "--force")
    assert result.exit_code == 1 and "is not a directory" in result.output


def test_component_selection(built, tmp_path):
    root = built["registry"].root
    result = run("export", "v0006", "--format", "onnx", tmp_path / "a", "--component", "knowledge", "--registry", root)
    assert result.exit_code == 1 and "knowledge base has no onnx export (it exports as hf)" in result.output
    result = run("export", "v0001", "--format", "hf", tmp_path / "b", "--component", "sentiment", "--registry", root)
    assert result.exit_code == 1 and "v0001 holds no sentiment" in result.output
    result = run("export", "v0001", "--format", "hf", tmp_path / "c", "--component", "nope", "--registry", root)
    assert result.exit_code == 1 and "unknown component 'nope'" in result.output
    assert list(tmp_path.iterdir()) == [tmp_path / "work"]  # the test's working directory, nothing else


def test_json_output_shape_and_plain_output(built, tmp_path):
    root = built["registry"].root
    d = doc(run("export", "v0004", "--format", "hf", tmp_path / "j", "--component", "classifier", "--component",
                "sentiment", "--registry", root, "--json"))
    assert set(d) == {"version", "format", "output", "replaced", "components", "skipped", "files", "size_bytes",
                      "record", "seconds"}
    assert d["output"] == str(tmp_path / "j") and d["record"] == "export.json" and d["replaced"] is False
    assert [c["component"] for c in d["components"]] == ["classifier", "sentiment"]
    for c in d["components"]:
        assert {"component", "path", "files", "size_bytes", "loads_with", "model_type"} <= set(c)
        assert c["size_bytes"] == sum((tmp_path / "j" / f).stat().st_size for f in c["files"])
    assert d["size_bytes"] == sum(p.stat().st_size for p in (tmp_path / "j").rglob("*") if p.is_file())
    result = run("export", "v0004", "--format", "pt", tmp_path / "p", "--registry", root)
    assert result.exit_code == 0, result.output
    assert "classifier" in result.stdout and "skipped" in result.stdout and not result.stdout.lstrip().startswith("{")


def test_help_has_examples():
    result = run("export", "--help")
    assert result.exit_code == 0 and "Examples:" in result.output and "--force" in result.output
