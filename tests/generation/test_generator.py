"""The response generator: reply data validation and split, text metrics on hand-made cases, the
restricted vocabulary, training (the decoder learns its replies), grounding in a knowledge base with
sources, registry versions (carry-over, deploy, rollback), the Responder, the CLI, and the hub
seq2seq / causal architectures.

Everything runs on the session's tiny BERT (a random 2-layer encoder) plus tiny decoders built here;
torch runs single-threaded in this module (tiny ops on two shared cores are far slower multi-threaded)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from conftest import REPO, TINY_INTENTS, private_registry
from hotelbot_cli.cli.reply import reply_cmd
from hotelbot_cli.config import load_settings
from hotelbot_cli.errors import ConfigError, DataError, ModelError, RegistryError
from hotelbot_cli.components.generator.data import ReplyPair, load_reply_data, prepare_replies, read_reply_file, split_pairs
from hotelbot_cli.components.generator.metrics import corpus_bleu, corpus_rouge_l, perplexity, rouge_l, rouge_tokens
from hotelbot_cli.components.generator.data import GENERATOR_DIR
from hotelbot_cli.components.generator.model import (GenerationSettings, GeneratorConfig, VocabMap, detect_architecture,
                                                  load_generator, save_generator)
from hotelbot_cli.components.generator.responder import Responder
from hotelbot_cli.components.generator.training import fit_generator, train_generator
from hotelbot_cli.registry import ModelRegistry

SHIPPED_PAIRS = REPO / "datasets" / "respuestas_es.jsonl"
runner = CliRunner()
reply_app = typer.Typer()  # `reply` joins the root app in app.py; this keeps the test independent of it
reply_app.command("reply")(reply_cmd)
reply_app.command("noop")(lambda: None)  # a second command keeps `reply` a subcommand

# 3 pairs per intent of the template's classifier (its labels are TINY_INTENTS), grounded in DOCS.
PAIRS = [
    ("hola buenas", "¡Hola! ¿En qué puedo ayudarle?", "greeting", None),
    ("buenos días", "¡Buenos días! Dígame qué necesita.", "greeting", None),
    ("buenas noches", "Buenas noches, que descanse.", "greeting", None),
    ("cuál es la clave del wifi", "La red es FaroLevante y la clave está en su tarjeta.", "wifi_info", "wifi.md"),
    ("no funciona el wifi", "Lo siento, reinicie el router o llame a recepción.", "wifi_info", "wifi.md"),
    ("hay wifi gratis", "Sí, el wifi es gratis en todo el hotel.", "wifi_info", "wifi.md"),
    ("a qué hora es el desayuno", "El desayuno se sirve de 7:00 a 10:30 en el restaurante.", "breakfast_info",
     "desayuno.md"),
    ("desayuno incluido", "Sí, el desayuno está incluido en su tarifa.", "breakfast_info", "desayuno.md"),
    ("hay desayuno vegano", "Sí, el bufé tiene opciones veganas.", "breakfast_info", "desayuno.md"),
    ("quiero las noticias", "No puedo darle noticias, pero en recepción tiene la prensa.", "get_news",
     "recepcion.md"),
    ("noticias de hoy", "Tenemos periódicos gratis en el vestíbulo.", "get_news", "recepcion.md"),
    ("últimas noticias", "No tengo noticias al día; pregunte en recepción.", "get_news", None),
]
# Validation: new phrasings of training questions, so the validation loss falls as the replies are learned.
VAL_PAIRS = [
    ("hola buenas tardes", "¡Hola! ¿En qué puedo ayudarle?", "greeting", None),
    ("la clave del wifi", "La red es FaroLevante y la clave está en su tarjeta.", "wifi_info", "wifi.md"),
    ("desayuno incluido en el precio", "Sí, el desayuno está incluido en su tarifa.", "breakfast_info", "desayuno.md"),
    ("noticias de hoy por favor", "Tenemos periódicos gratis en el vestíbulo.", "get_news", "recepcion.md"),
]
DOCS = {
    "wifi.md": "# Wifi\n\n## Red\n\nLa red es FaroLevante y es gratis en todo el hotel. La clave está en su tarjeta.\n\n"
               "## Problemas\n\nSi no funciona, reinicie el router o llame a recepción.\n",
    "desayuno.md": "# Desayuno\n\n## Horario\n\nEl desayuno se sirve de 7:00 a 10:30 en el restaurante.\n\n"
                   "## Opciones\n\nEl bufé tiene opciones veganas y está incluido en su tarifa.\n",
    "recepcion.md": "# Recepción\n\n## Prensa\n\nTenemos periódicos gratis en el vestíbulo.\n",
}
TINY_CONFIG = {"epochs": 60, "batch_size": 6, "learning_rate": 4e-3, "decoder_layers": 2, "warmup_ratio": 0.0,
               "early_stopping_patience": 0, "max_source_length": 96, "max_target_length": 40,
               "generation": {"num_beams": 2, "max_new_tokens": 40}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_pairs(path, pairs=PAIRS, extra=None):
    lines = [json.dumps({"message": m, "reply": r, "intent": i, "source": s}, ensure_ascii=False)
             for m, r, i, s in pairs] + list(extra or [])
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def pair_objects(pairs=PAIRS):
    return [ReplyPair(*p) for p in pairs]


def write_prepared(directory):
    from hotelbot_cli.components.generator.data import PreparedReplies, pairs_fingerprint, write_prepared_replies

    train, validation = pair_objects(PAIRS), pair_objects(VAL_PAIRS)
    return write_prepared_replies(PreparedReplies(train, validation, pairs_fingerprint(train, validation),
                                                  {"source": "test"}), directory)


def tiny_settings(root, tiny_model, mlflow_uri, **env):
    return load_settings(env={"HOTELBOT_HOME": str(root / "home"), "MLFLOW_TRACKING_URI": mlflow_uri,
                              "HOTELBOT_BASE_MODEL": str(tiny_model), "MIN_VALIDATION_SCORE": "0.0", **env},
                         path_overrides={"registry": root / "registry"})


@pytest.fixture(scope="module")
def gen_template(tmp_path_factory, trained_template, tiny_model, mlflow_uri):
    """v0001 classifier (the session template), v0002 + knowledge base, v0003 + grounded generator.
    Built once per module; copy it (``gen_registry``) to change anything."""
    from hotelbot_cli.components.knowledge.kb import train_knowledge_base

    root = tmp_path_factory.mktemp("gen-template")
    shutil.copytree(trained_template, root / "registry", symlinks=True)
    settings = tiny_settings(root, tiny_model, mlflow_uri)
    registry = ModelRegistry(root / "registry")
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, "utf-8")
    train_knowledge_base(settings, docs, registry)
    events = []
    result = train_generator(settings, write_prepared(root / "pairs"), registry, events.append,
                             config=GeneratorConfig.from_settings(settings, **TINY_CONFIG))
    return {"root": root, "registry": root / "registry", "result": result, "events": events,
            "pairs": root / "pairs", "settings": settings}


@pytest.fixture
def gen_registry(gen_template, isolated_env, monkeypatch):
    return private_registry(gen_template["registry"], isolated_env / "registry", monkeypatch)


# ---------------------------------------------------------------------------------------- metrics


def test_bleu_rouge_and_perplexity_on_hand_made_cases():
    refs = ["El desayuno se sirve de 7:00 a 10:30.", "La piscina cierra a las 21:00."]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert corpus_bleu(["uno dos tres cuatro", "cinco seis siete ocho"], refs) == pytest.approx(0.0)
    assert 0.0 < corpus_bleu(["El desayuno se sirve de 8:00 a 11:00.", refs[1]], refs) < 100.0
    # LCS("el gato está en la casa", "el gato duerme en la casa") = el gato en la casa: 5 of 6 words each way
    assert rouge_l("El gato está en la casa", "el gato duerme en la casa") == pytest.approx(
        {"precision": 5 / 6, "recall": 5 / 6, "f1": 5 / 6})
    # unequal lengths: LCS("a b c d", "a c") = 2 -> P = 2/4, R = 2/2, F1 = 2PR/(P+R) = 2/3
    assert rouge_l("a b c d", "a c") == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3})
    assert rouge_l("", "algo")["f1"] == 0.0
    assert rouge_tokens("¿La habitación 512? ¡Ñandú!") == ["la", "habitación", "512", "ñandú"]  # accents kept
    assert corpus_rouge_l(["a b c d", "x"], ["a c", "x"]) == pytest.approx((2 / 3 + 1.0) / 2)
    assert perplexity(3 * math.log(4.0), 3) == pytest.approx(4.0)
    assert perplexity(0.0, 0) == float("inf")


# ---------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("line, fragment", [
    ('{"message": "hola", "reply": "hola"', "line 3: invalid JSON"),
    ('["hola", "hola"]', 'line 3: expected an object with "message" and "reply"'),
    ('{"message": "hola"}', "line 3: missing field(s) reply"),
    ('{"message": "hola", "reply": 5}', 'line 3: "reply" must be a string'),
    ('{"message": "   ", "reply": "¡Hola!"}', 'line 3: empty "message"'),
    ('{"message": "hola", "reply": "\\u0000"}', 'line 3: empty "reply"'),
    ('{"message": "hola", "reply": "¡Hola!", "intent": "Saludo"}', "line 3: invalid intent 'Saludo'"),
    ('{"message": "hola", "reply": "¡Hola!", "intent": "book_room"}', "line 3: unknown intent 'book_room'"),
    ('{"message": "hola", "reply": "¡Hola!", "source": 3}', 'line 3: "source" must be a document name'),
    ('{"message": "buenos días", "reply": "Otra respuesta"}', "line 3: message 'buenos días' already has a "
                                                              "different reply (line 1)"),
])
def test_bad_reply_data_is_refused_naming_file_and_line(tmp_path, line, fragment):
    path = write_pairs(tmp_path / "pares.jsonl", PAIRS[1:3], extra=[line])
    with pytest.raises(DataError) as info:
        read_reply_file(path, known_intents=TINY_INTENTS)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_reply_files_of_the_wrong_kind_are_refused(tmp_path):
    with pytest.raises(DataError, match="unsupported format '.json'"):
        read_reply_file(tmp_path / "pares.json")
    with pytest.raises(DataError, match="reply data not found"):
        read_reply_file(tmp_path / "nada.jsonl")
    with pytest.raises(DataError, match="at least 2 are needed"):
        read_reply_file(write_pairs(tmp_path / "uno.jsonl", PAIRS[:1]))
    (tmp_path / "latin1.jsonl").write_bytes('{"message": "señor", "reply": "sí"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_reply_file(tmp_path / "latin1.jsonl")


def test_duplicates_are_dropped_with_a_warning_and_text_is_cleaned(tmp_path):
    dup = json.dumps({"message": "hola  buenas", "reply": "¡Hola! ¿En qué puedo ayudarle?"}, ensure_ascii=False)
    pairs, warnings = read_reply_file(write_pairs(tmp_path / "p.jsonl", PAIRS[:4], extra=[dup]))
    assert len(pairs) == 4 and warnings == ["1 exact duplicate pair(s) removed"]  # whitespace collapsed first


def test_the_shipped_pairs_validate_and_split_seeded_and_stratified(tmp_path):
    intents = json.loads((REPO / "datasets" / "hotel_intents_es.json").read_text("utf-8"))["intents"]
    prepared = prepare_replies(SHIPPED_PAIRS, 0.2, 42, known_intents=intents)
    train, validation = prepared.train, prepared.validation
    assert len(train) + len(validation) == 903 and not {p.message for p in train} & {p.message for p in validation}
    by_intent = {}
    for p in train + validation:
        by_intent.setdefault(p.intent, [0, 0])[p in validation] += 1
    assert all(val >= 1 and tr >= 1 and abs(val / (tr + val) - 0.2) < 0.06 for tr, val in by_intent.values())
    assert split_pairs(train + validation, 0.2, 42) == split_pairs(train + validation, 0.2, 42)
    assert split_pairs(train + validation, 0.2, 7)[1] != split_pairs(train + validation, 0.2, 42)[1]
    # written and read back as a prepared directory, with a fingerprint guarding the split
    from hotelbot_cli.components.generator.data import write_prepared_replies

    write_prepared_replies(prepared, tmp_path / "gen")
    again = load_reply_data(tmp_path / "gen")
    assert again.train == train and again.fingerprint == prepared.fingerprint
    (tmp_path / "gen" / "validation.jsonl").write_text("", "utf-8")
    with pytest.raises(DataError, match="must both be non-empty"):
        load_reply_data(tmp_path / "gen")


def test_generator_config_takes_only_deliberate_training_settings():
    cfg = GeneratorConfig.from_settings(load_settings(env={}))
    assert (cfg.epochs, cfg.learning_rate, cfg.base_model) == (20, 1e-3, "packaged:multilingual-e5-small")
    cfg = GeneratorConfig.from_settings(load_settings(env={"TRAINING_EPOCHS": "3", "HOTELBOT_BASE_MODEL": "x/y"}),
                                        decoder_layers=2, generation={"num_beams": 1, "do_sample": True})
    assert (cfg.epochs, cfg.learning_rate, cfg.decoder_layers, cfg.base_model) == (3, 1e-3, 2, "x/y")
    assert cfg.generation.kwargs()["do_sample"] is True and cfg.generation.kwargs()["num_beams"] == 1
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown generation setting"):
        GenerationSettings.from_dict({"beams": 3})
    with pytest.raises(ConfigError, match="freeze_encoder"):
        GeneratorConfig(freeze_encoder="maybe")


# ---------------------------------------------------------------------------------------- vocabulary map


def test_restricted_vocabulary_round_trips_the_replies(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    replies = [r for _, r, _, _ in PAIRS]
    ids = [tok(r, add_special_tokens=False)["input_ids"] for r in replies]
    vocab = VocabMap.build(ids, pad=tok.pad_token_id, bos=tok.cls_token_id, eos=tok.sep_token_id,
                           unk=tok.unk_token_id, full_vocab_size=len(tok))
    assert vocab.ids[:4] == [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id]
    assert len(vocab) == 4 + len({i for row in ids for i in row} - set(vocab.ids[:4])) < len(tok)
    for row in ids:
        restricted = vocab.to_restricted(row)
        assert max(restricted) < len(vocab) and vocab.to_full(restricted) == row
        assert tok.decode(vocab.to_full(restricted)) == tok.decode(row)
    outside = next(i for i in range(len(tok)) if i not in set(vocab.ids))
    assert vocab.to_restricted([outside]) == [vocab.unk] and not vocab.covers([outside])
    assert VocabMap.from_dict(json.loads(json.dumps(vocab.to_dict()))).ids == vocab.ids
    with pytest.raises(ModelError, match="four distinct special tokens"):
        VocabMap.build(ids, pad=0, bos=0, eos=2, unk=1, full_vocab_size=len(tok))


# ---------------------------------------------------------------------------------------- training + versions


def round_trip(responder, text):
    """What a perfect model would say: the reference through the tokenizer (the tiny one lowercases and
    does not merge word pieces back)."""
    return responder.features.decode(responder.features.target(text))


def test_the_decoder_learns_its_replies_and_the_loss_falls(gen_template):
    result = gen_template["result"]
    info = result.version
    epochs = json.loads((info.path / GENERATOR_DIR / "training_history.json").read_text("utf-8"))["epochs"]
    assert len(epochs) == TINY_CONFIG["epochs"] and epochs[-1]["loss"] < epochs[0]["loss"] / 2  # validation
    log = json.loads((info.path / GENERATOR_DIR / "training_history.json").read_text("utf-8"))["log"]
    train_losses = [e["loss"] for e in log if "loss" in e]
    assert len(train_losses) > 10 and train_losses[-1] < train_losses[0] / 3
    responder = Responder.from_version(info)
    train = [json.loads(line) for line in (info.path / GENERATOR_DIR / "data" / "train.jsonl").read_text().splitlines()]
    answers = responder.reply([t["message"] for t in train])
    expected = [round_trip(responder, t["reply"]) for t in train]
    assert corpus_bleu([a["reply"] for a in answers], expected) > 60
    assert sum(a["reply"] == e for a, e in zip(answers, expected)) >= len(train) // 2
    steps = [e for e in gen_template["events"] if e.kind == "step" and e.loss is not None]
    assert steps and any(e.kind == "evaluate" for e in gen_template["events"])
    assert gen_template["events"][-1].kind == "end" and gen_template["events"][-1].message == info.name


def test_the_version_carries_over_the_other_components(gen_template):
    registry = ModelRegistry(gen_template["registry"])
    info = gen_template["result"].version
    kb_version = registry.get("v0002")
    assert info.name == "v0003" and info.metadata["parent"] == "v0002"
    assert info.metadata["components"] == ["classifier", "knowledge", "generator"]
    assert registry.verify(info.name) == []
    files, source_files = info.metadata["files"], kb_version.metadata["files"]
    carried = {rel: sha for rel, sha in source_files.items() if not rel.startswith(GENERATOR_DIR + "/")}
    assert carried and all(files[rel] == sha for rel, sha in carried.items())  # byte for byte
    assert info.metadata["labels"] == kb_version.metadata["labels"]  # the classifier's own metadata
    assert info.metadata["knowledge"]["carried_from"] == "v0002"
    summary = info.metadata["generator"]
    assert summary["architecture"] == "encoder-decoder" and summary["grounded"] is True
    assert summary["encoder_saved"] is True  # a local-directory encoder is saved, not referenced
    assert set(summary["metrics"]) >= {"bleu", "rouge_l", "perplexity", "relevance", "baseline"}
    gen = info.path / GENERATOR_DIR
    for rel in ("generator.json", "generation.json", "vocab_map.json", "model/model.safetensors", "model/config.json",
                "metrics.json", "data/train.jsonl", "data/validation.jsonl", "data/dataset.json"):
        assert (gen / rel).is_file(), rel
    metrics = json.loads((gen / "metrics.json").read_text("utf-8"))
    assert metrics["num_examples"] == 4 and set(metrics["retrieval_baseline"]) >= {"bleu", "rouge_l", "relevance"}
    assert metrics["generator"]["perplexity"] > 1.0 and -1.0 <= metrics["generator"]["relevance"] <= 1.0
    assert GenerationSettings.from_dict(json.loads((gen / "generation.json").read_text("utf-8"))).num_beams == 2
    # the registry's newest version is the source: training the same again is a no-op unless forced
    from hotelbot_cli.errors import AlreadyTrainedError

    settings = gen_template["settings"]
    with pytest.raises(AlreadyTrainedError) as already:
        train_generator(settings, gen_template["pairs"], registry,
                        config=GeneratorConfig.from_settings(settings, **TINY_CONFIG))
    assert already.value.version == "v0003"


def test_grounding_gives_passages_and_the_reply_cites_them(gen_registry):
    from hotelbot_cli.components.knowledge.kb import KnowledgeBase

    info = gen_registry.get("v0003")
    responder = Responder.from_version(info)
    assert responder.knowledge is not None and responder.spec.grounded and responder.spec.grounding_passages == 2
    messages = ["¿cuál es la clave del wifi?", "hay desayuno vegano"]
    answers = responder.reply(messages)
    kb = KnowledgeBase.from_version(info)
    assert Responder.from_version(info, knowledge=kb).knowledge is kb  # serve shares the one it holds for /search
    for message, answer in zip(messages, answers):
        assert set(answer) == {"message", "reply", "sources"} and answer["message"] == message
        assert isinstance(answer["reply"], str) and answer["reply"]
        hits = kb.search(message, top_k=2)
        assert [(s["doc"], s["heading"]) for s in answer["sources"]] == [(h.chunk.doc, h.chunk.heading) for h in hits]
        # batched vs single-query embedding may differ in the last float digit
        assert [s["score"] for s in answer["sources"]] == pytest.approx([h.score for h in hits], abs=1e-5)
    # the passages really are the encoder's input: other passages give a different source sequence
    from hotelbot_cli.components.generator.inputs import passages_text

    hits = responder.retrieve(messages[:1])
    with_kb = responder.features.source(messages[:1], [passages_text(hits[0], 300)])[0]["input_ids"]
    without = responder.features.source(messages[:1], None)[0]["input_ids"]
    assert len(with_kb) > len(without)


def test_responder_shape_errors_and_versions_without_a_generator(gen_registry):
    responder = Responder.from_registry(gen_registry)  # nothing deployed: the newest
    assert responder.version == "v0003"
    answers = responder.reply(["hola buenas"], num_beams=1, max_new_tokens=5)
    assert len(answers) == 1 and len(answers[0]["reply"].split()) <= 5
    with pytest.raises(DataError, match="empty message"):
        responder.reply(["hola", "  "])
    with pytest.raises(RegistryError, match="has no response generator"):
        Responder.from_registry(gen_registry, "v0002")
    nll, tokens = responder.score(["hola buenas"], ["¡Hola! ¿En qué puedo ayudarle?"])
    assert tokens > 3 and nll > 0


def test_rescoring_a_version_reproduces_its_recorded_metrics(gen_registry):
    from hotelbot_cli.components.generator.responder import evaluate_version

    info = gen_registry.get("v0003")
    recorded = json.loads((info.path / GENERATOR_DIR / "metrics.json").read_text("utf-8"))
    again = evaluate_version(info)
    assert again["version"] == "v0003" and again["num_examples"] == recorded["num_examples"] == 4
    for block in ("generator", "retrieval_baseline"):
        for key in ("bleu", "rouge_l", "relevance", "exact_match"):
            assert again[block][key] == pytest.approx(recorded[block][key], abs=1e-4), (block, key)
    assert again["generator"]["perplexity"] == pytest.approx(recorded["generator"]["perplexity"], rel=1e-4)
    assert [s["generated"] for s in again["samples"]] == [s["generated"] for s in recorded["samples"]]


def test_deploy_and_rollback_move_the_generator_with_the_rest(gen_registry):
    from hotelbot_cli.pipeline.deploy import deploy, rollback

    settings = load_settings()
    deploy(gen_registry, settings, "v0002")
    deploy(gen_registry, settings, "v0003")
    assert Responder.from_registry(gen_registry).version == "v0003"
    rollback(gen_registry, settings)
    assert gen_registry.current_name() == "v0002"
    with pytest.raises(RegistryError, match="has no response generator"):
        Responder.from_registry(gen_registry)


def test_reply_cli_sends_no_unchecked_generator_reply(gen_registry):
    """`hotelbot reply` answers through the reply pipeline (tests/replies), which fact-checks every reply: a
    version with a generator but no reply model is refused with the command that adds one."""
    result = runner.invoke(reply_app, ["reply", "hola buenas", "no funciona el wifi", "--json"])
    assert result.exit_code == 1 and "v0003 has no reply model" in result.stderr
    assert "hotelbot train --model-type replies" in result.stderr and result.stdout == ""
    result = runner.invoke(reply_app, ["reply", "hola", "--version", "v0002"])
    assert result.exit_code == 1 and "has no reply model" in result.stderr


def test_a_corrupt_generator_is_refused(gen_registry):
    info = gen_registry.get("v0003")
    (info.path / GENERATOR_DIR / "generation.json").write_text('{"num_beams": 0}', "utf-8")
    with pytest.raises(ModelError, match="num_beams"):
        Responder.from_version(info)
    with pytest.raises(Exception, match="checksum"):
        Responder.from_registry(gen_registry, "v0003")


# ---------------------------------------------------------------------------------------- architectures


def test_a_frozen_packaged_encoder_is_referenced_not_copied(tiny_model, tmp_path):
    """The tiny encoder stands in for a packaged one: the weights file then holds the decoder only, and
    loading re-resolves the encoder and checks its fingerprint."""
    from safetensors import safe_open

    cfg = GeneratorConfig(base_model=str(tiny_model), epochs=2, batch_size=4, decoder_layers=1, decoder_hidden=32,
                          early_stopping_patience=0, freeze_encoder="yes")
    fit, _ = fit_generator(cfg, pair_objects()[:8], pair_objects()[8:], tmp_path / "models")
    assert fit.cached_encoder and fit.spec.grounding_passages == 0
    assert tuple(fit.model.enc_to_dec_proj.weight.shape) == (32, 64)  # a 32-wide decoder on the 64-wide encoder
    fit.spec.encoder["saved"] = False
    save_generator(fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab, tmp_path / "gen")
    with safe_open(str(tmp_path / "gen" / "model" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("encoder.") for k in keys)
    before = Responder(fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab).reply(["hola buenas"])
    model, tokenizer, spec, generation, vocab = load_generator(tmp_path / "gen", tmp_path / "models")
    assert Responder(model, tokenizer, spec, generation, vocab).reply(["hola buenas"]) == before
    record = json.loads((tmp_path / "gen" / "generator.json").read_text("utf-8"))
    record["encoder"]["fingerprint"] = "dir:0000"
    (tmp_path / "gen" / "generator.json").write_text(json.dumps(record), "utf-8")
    with pytest.raises(ModelError, match="not the one the generator was trained with"):
        load_generator(tmp_path / "gen", tmp_path / "models")


def test_generation_reads_the_shared_onnx_encoders_states_and_replies_the_same(tiny_model, tmp_path):
    """A frozen encoder that the knowledge base has on ONNX is not run on torch: generation takes the ONNX
    session's states (encoder_outputs) and gives the torch encoder's replies."""
    from hotelbot_cli.components.knowledge.kb import Embedder, ensure_onnx_encoder
    from hotelbot_cli.runtime.encoder import OnnxSentenceEncoder

    cfg = GeneratorConfig(base_model=str(tiny_model), epochs=2, batch_size=4, decoder_layers=1, decoder_hidden=32,
                          early_stopping_patience=0, freeze_encoder="yes", generation={"num_beams": 2})
    fit, _ = fit_generator(cfg, pair_objects()[:8], pair_objects()[8:], tmp_path / "models")
    embedder = Embedder.load(str(tiny_model), tmp_path / "models")
    assert fit.spec.encoder["fingerprint"] == embedder.model.fingerprint
    ensure_onnx_encoder(embedder, tmp_path / "models")
    onnx = OnnxSentenceEncoder.find(tmp_path / "models", Path(embedder.model.location).name, embedder.model.fingerprint)
    messages = [p.message for p in pair_objects()]
    torch_replies = Responder(fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab).reply(messages)
    shared = Responder(fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab, onnx_encoder=onnx)
    calls = []
    original = onnx.hidden_from_ids
    onnx.hidden_from_ids = lambda ids, mask: calls.append(ids.shape) or original(ids, mask)
    assert shared.reply(messages) == torch_replies and calls


def test_a_decoder_warm_started_from_the_encoder_copies_its_layers_and_trains(tiny_model, tmp_path):
    """decoder_init "encoder" (BERT2BERT): the decoder is as wide as the encoder, its bottom layers' self-attention
    and FFN start as the encoder's, its cross-attention reads standardised states (no projection), and it trains,
    saves and loads like the scratch decoder. More layers than the encoder has is one clear error."""
    import torch

    from hotelbot_cli.components.generator.model import build_new_model, standardize_cross_attention

    cfg = GeneratorConfig(base_model=str(tiny_model), epochs=2, batch_size=4, decoder_layers=2, decoder_init="encoder",
                          early_stopping_patience=0, freeze_encoder="yes")
    model, _, _, _ = build_new_model(cfg, tmp_path / "models", lambda tok: [tok(p.reply)["input_ids"]
                                                                             for p in pair_objects()])
    encoder_layers, decoder_layers = model.encoder.encoder.layer, model.decoder.bert.encoder.layer
    assert getattr(model, "enc_to_dec_proj", None) is None and len(decoder_layers) == 2
    for source, target in zip(encoder_layers, decoder_layers):
        for name, value in source.attention.state_dict().items():
            assert torch.equal(target.attention.state_dict()[name], value)
        assert torch.equal(target.intermediate.dense.weight, source.intermediate.dense.weight)
    states = [torch.randn(30, 64) * 0.1 + 2.0 for _ in range(3)]
    key = decoder_layers[0].crossattention.self.key
    assert standardize_cross_attention(model, states)
    out = key(torch.cat(states)).detach()
    assert out.mean(0).abs().max() < 1e-3  # the states' shared component no longer reaches the keys
    fit, _ = fit_generator(cfg, pair_objects()[:8], pair_objects()[8:], tmp_path / "models")
    assert fit.model.decoder.config.hidden_size == 64 and fit.cached_encoder
    save_generator(fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab, tmp_path / "gen")
    before = Responder(fit.model, fit.tokenizer, fit.spec, cfg.generation, fit.vocab).reply(["hola buenas"])
    loaded, tokenizer, spec, generation, vocab = load_generator(tmp_path / "gen", tmp_path / "models")
    assert Responder(loaded, tokenizer, spec, generation, vocab).reply(["hola buenas"]) == before
    with pytest.raises(ConfigError, match="decoder_init encoder: the encoder has 2 BERT layers"):
        build_new_model(GeneratorConfig(base_model=str(tiny_model), decoder_layers=3, decoder_init="encoder"),
                        tmp_path / "models", lambda tok: [[5]])
    with pytest.raises(ConfigError, match="decoder_init"):
        GeneratorConfig(decoder_init="bert")


def test_the_encoder_projection_starts_as_standardisation():
    import torch

    from hotelbot_cli.components.generator.model import standardize_projection

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc_to_dec_proj = torch.nn.Linear(8, 4)

    torch.manual_seed(0)
    offset, scale = torch.linspace(-3, 3, 8), torch.linspace(0.1, 2.0, 8)
    states = [torch.randn(n, 8) * scale + offset for n in (50, 70, 80)]
    model = Model()
    assert standardize_projection(model, states)
    out = model.enc_to_dec_proj(torch.cat(states)).detach()
    assert out.mean(0).abs().max() < 1e-4  # the shared component is gone
    assert 0.5 < float(out.std(0).mean()) < 1.5  # differences arrive at unit scale, whatever the input scale
    w = model.enc_to_dec_proj.weight.detach() * torch.cat(states).std(0)  # undo the 1/std: orthonormal rows
    assert torch.allclose(w @ w.T, torch.eye(4), atol=1e-4)
    assert not standardize_projection(torch.nn.Linear(2, 2), states)  # no projection: nothing to do


def tiny_hub_model(kind, tiny_model, out):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    import torch

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    torch.manual_seed(0)
    if kind == "seq2seq":
        config = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                          num_decoder_layers=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                          decoder_start_token_id=tok.pad_token_id)
        model = T5ForConditionalGeneration(config)
    else:
        config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                            bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("kind", ["seq2seq", "causal"])
def test_hub_style_seq2seq_and_causal_base_models(kind, tiny_model, tmp_path):
    from transformers import AutoConfig

    base = tiny_hub_model(kind, tiny_model, tmp_path / kind)
    assert detect_architecture(AutoConfig.from_pretrained(str(base))) == kind
    assert detect_architecture(AutoConfig.from_pretrained(str(tiny_model))) == "encoder-decoder"
    cfg = GeneratorConfig(base_model=str(base), epochs=40, batch_size=4, learning_rate=3e-3,
                          pretrained_learning_rate=3e-3, early_stopping_patience=0, warmup_ratio=0.0,
                          max_source_length=48, max_target_length=32, generation={"num_beams": 1,
                                                                                  "max_new_tokens": 32})
    pairs = pair_objects()[:4]
    fit, _ = fit_generator(cfg, pairs, pairs, tmp_path / "models")
    assert fit.spec.architecture == kind and fit.vocab is None
    assert fit.history[-1]["loss"] < 0.75 * fit.history[0]["loss"]  # the loss is on the reply tokens only
    responder = Responder(fit.model, fit.tokenizer, fit.spec, cfg.generation)
    answers = responder.reply([p.message for p in pairs])
    assert [set(a) for a in answers] == [{"message", "reply", "sources"}] * 4
    save_generator(fit.model, fit.tokenizer, fit.spec, cfg.generation, None, tmp_path / "gen")
    model, tokenizer, spec, generation, vocab = load_generator(tmp_path / "gen")
    assert spec.architecture == kind and vocab is None
    assert Responder(model, tokenizer, spec, generation).reply([p.message for p in pairs]) == answers


def test_the_report_has_a_generator_and_a_knowledge_section(gen_registry):
    from hotelbot_cli.reporting import build_report, render_html, render_markdown

    report = build_report(gen_registry, "v0003", measure_latency=False, figures=False, min_score=0.0)
    doc = report.to_dict()
    assert set(doc["components"]) == {"knowledge", "generator"}
    gen = doc["components"]["generator"]
    recorded = json.loads((gen_registry.get("v0003").path / GENERATOR_DIR / "metrics.json").read_text("utf-8"))
    assert gen["kind"] == "generation" and gen["headline"]["bleu"] == recorded["generator"]["bleu"]
    assert gen["baseline"]["bleu"] == recorded["retrieval_baseline"]["bleu"]
    assert {r["metric"] for r in gen["rows"]} >= {"BLEU", "ROUGE-L", "relevance", "perplexity"}
    assert gen["samples"] and set(gen["samples"][0]) >= {"message", "reference", "generated", "baseline"}
    assert gen["grounded"] is True and gen["knowledge_version"] == "v0002"
    assert doc["components"]["knowledge"]["kind"] == "retrieval"
    assert doc["components"]["knowledge"]["headline"]["chunks"] >= 1
    markdown, html = render_markdown(report), render_html(report)
    for text in (markdown, html):
        assert "generator" in text and "retrieval baseline" in text
        assert f"{recorded['generator']['rouge_l']:.4f}" in text and f"{recorded['retrieval_baseline']['rouge_l']:.4f}" in text
        assert "Sample replies" in text
