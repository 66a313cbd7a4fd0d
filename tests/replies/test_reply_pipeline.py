"""The reply pipeline end to end on the tiny model: `train --model-type replies` on a version with a
classifier and a knowledge base, the replies it gives (grounded, social, fallback, action), the fact check
(a generated reply that invents a fact is not sent), the gate, validate, the CLI, /reply and a knowledge
base rebuilt after the replies."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import clone_version, private_registry
from hotelbot_cli.cli.app import app
from hotelbot_cli.components.generator.data import PreparedReplies, ReplyPair, pairs_fingerprint, write_prepared_replies
from hotelbot_cli.components.replies import RepliesComponent
from hotelbot_cli.components.replies.facts import unsupported_facts
from hotelbot_cli.components.replies.pipeline import ReplyPipeline
from hotelbot_cli.components.replies.training import read_eval_file, train_replies
from hotelbot_cli.config import ValidationConfig, load_settings
from hotelbot_cli.errors import AlreadyTrainedError, DataError
from hotelbot_cli.components.replies.ranking import FEATURES
from hotelbot_cli.registry import ModelRegistry

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOCS = {
    "wifi.md": "# Wifi\n\n## Red\n\nLa red se llama FaroLevante y es gratis en todo el hotel. La clave está en su "
               "tarjeta de bienvenida.\n\n## Problemas\n\nSi no funciona, reinicie el router. Si sigue sin "
               "funcionar, llame a recepción marcando el 9.\n",
    "desayuno.md": "# Desayuno\n\n## Horario\n\nEl desayuno se sirve de 7:00 a 10:30 en el restaurante. Los domingos "
                   "se alarga hasta las 11:00.\n\n## Opciones\n\nEl bufé tiene opciones veganas. Cuesta 18 € si no "
                   "está incluido en su tarifa.\n",
    "reservas.md": "# Reservas\n\n## Cómo reservar\n\nPara reservar una habitación escriba a reservas@faro.example con "
                   "las fechas y el número de huéspedes.\n",
}
PAIRS = [
    ("a qué hora es el desayuno", "El desayuno se sirve de 7:00 a 10:30.", "breakfast_info", "desayuno.md"),
    ("hasta qué hora desayuno el domingo", "Los domingos hasta las 11:00.", "breakfast_info", "desayuno.md"),
    ("cuánto cuesta el desayuno", "Cuesta 18 € si no está incluido.", "breakfast_info", "desayuno.md"),
    ("hay desayuno vegano", "Sí, el bufé tiene opciones veganas.", "breakfast_info", "desayuno.md"),
    ("cuál es la clave del wifi", "La clave está en su tarjeta de bienvenida.", "wifi_info", "wifi.md"),
    ("cómo se llama la red wifi", "La red se llama FaroLevante.", "wifi_info", "wifi.md"),
    ("no funciona el wifi", "Reinicie el router; si sigue sin funcionar, marque el 9.", "wifi_info", "wifi.md"),
    ("el wifi es gratis", "Sí, es gratis en todo el hotel.", "wifi_info", "wifi.md"),
    ("hola buenas", "¡Hola! ¿En qué puedo ayudarle?", "greeting", None),
]
VAL_PAIRS = [
    ("horario del desayuno", "El desayuno se sirve de 7:00 a 10:30.", "breakfast_info", "desayuno.md"),
    ("contraseña wifi", "La clave está en su tarjeta de bienvenida.", "wifi_info", "wifi.md"),
]
EVAL = [
    {"question": "¿a qué hora ponen el desayuno?", "facts": ["7:00", "10:30"], "doc": "desayuno.md"},
    {"question": "cuánto vale el desayuno", "facts": ["18 €"], "doc": "desayuno.md"},
    {"question": "dónde encuentro la clave del wifi", "facts": ["tarjeta"], "doc": "wifi.md"},
    {"question": "el domingo hasta qué hora hay desayuno", "facts": ["11:00"], "doc": "desayuno.md"},
]


def settings_for(root, tiny_model, mlflow_uri):
    return load_settings(env={"HOTELBOT_HOME": str(root / "home"), "MLFLOW_TRACKING_URI": mlflow_uri,
                              "HOTELBOT_BASE_MODEL": str(tiny_model), "MIN_VALIDATION_SCORE": "0.0"},
                         path_overrides={"registry": root / "registry", "data": root / "processed"})


def write_docs(directory, docs=DOCS):
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (directory / name).write_text(text, "utf-8")
    return directory


@pytest.fixture(scope="module")
def replies_template(tmp_path_factory, trained_template, tiny_model, mlflow_uri):
    """v0001 tiny classifier, v0002 + knowledge base, v0003 + replies."""
    from hotelbot_cli.components.knowledge.kb import train_knowledge_base

    root = tmp_path_factory.mktemp("replies-template")
    shutil.copytree(trained_template, root / "registry", symlinks=True)
    settings = settings_for(root, tiny_model, mlflow_uri)
    registry = ModelRegistry(root / "registry")
    train_knowledge_base(settings, write_docs(root / "docs"), registry)
    train, validation = [ReplyPair(*p) for p in PAIRS], [ReplyPair(*p) for p in VAL_PAIRS]
    pairs = write_prepared_replies(PreparedReplies(train, validation, pairs_fingerprint(train, validation),
                                                   {"source": "test"}), root / "pairs")
    eval_file = root / "reply_eval.jsonl"
    eval_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in EVAL), "utf-8")
    result = train_replies(settings, pairs, registry, eval_file=eval_file)
    return {"root": root, "registry": root / "registry", "result": result, "pairs": pairs, "eval": eval_file,
            "settings": settings}


@pytest.fixture
def registry(replies_template, isolated_env, monkeypatch):
    return private_registry(replies_template["registry"], isolated_env / "registry", monkeypatch)


def test_training_publishes_a_version_with_the_replies_and_their_scores(replies_template):
    result = replies_template["result"]
    info = result.version
    assert info.name == "v0003" and info.manifest.components == ["classifier", "knowledge", "replies"]
    m = result.metrics
    assert m["metric"] == "fact_accuracy" and 0.0 <= m["fact_accuracy"] <= 1.0
    assert m["unsupported_fact_rate"] == 0.0 and m["num_questions"] == len(EVAL)
    assert set(m["baseline"]) == {"fact_accuracy", "fact_recall", "unsupported_fact_rate"}
    assert m["ranker"]["questions"] >= 1 and m["ranker"]["train_questions"] >= 6
    assert 0.0 <= m["ranker"]["top1_accuracy"] <= 1.0 and m["validation_pairs"]["pairs"] == len(VAL_PAIRS)
    stored = info.path / "replies"
    assert {p.name for p in stored.iterdir()} >= {"ranker.json", "sentences.jsonl", "sentence_vectors.npy",
                                                  "policy.json", "eval.jsonl", "metrics.json"}
    assert read_eval_file(stored / "eval.jsonl") == read_eval_file(replies_template["eval"])
    assert "fact accuracy" in result.lines[0] and "nearest training reply" in result.lines[0]
    # the same data, eval set, policy and knowledge base: not trained again
    with pytest.raises(AlreadyTrainedError):
        train_replies(replies_template["settings"], replies_template["pairs"], ModelRegistry(replies_template["registry"]),
                      eval_file=replies_template["eval"])


def test_the_evaluation_set_prepared_with_the_pairs_is_used_from_any_working_directory(replies_template, registry,
                                                                                        isolated_env, tmp_path):
    """`prepare --replies FILE --reply-eval EVAL` checks EVAL and stores it beside the pairs; training finds it
    there when the working directory has no datasets/reply_eval_es.jsonl (a CI script, another checkout)."""
    from hotelbot_cli.components.replies.evalset import DEFAULT_EVAL, PREPARED_EVAL, evaluation_set

    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"message": m, "reply": r, "intent": i, "source": s},
                                             ensure_ascii=False) + "\n" for m, r, i, s in PAIRS + VAL_PAIRS * 3),
                          "utf-8")
    out = tmp_path / "generator"  # where `prepare --replies` writes for this data path:
    settings = load_settings(path_overrides={"data": tmp_path / "processed"})
    assert not (isolated_env / DEFAULT_EVAL).exists()
    # a bad evaluation set: one line, exit 1, nothing written
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "hola", "facts": []}\n', "utf-8")
    result = runner.invoke(app, ["prepare", "--replies", str(pairs_file), "--reply-eval", str(bad), "-o", str(out)])
    assert result.exit_code == 1 and "line 1" in result.stderr and not out.exists()
    result = runner.invoke(app, ["prepare", "--reply-eval", str(bad), "--sentiment", str(pairs_file)])
    assert result.exit_code == 2 and "--reply-eval applies to --replies FILE" in result.output and not out.exists()
    # stored, and recorded in dataset.json
    result = runner.invoke(app, ["prepare", "--replies", str(pairs_file), "--reply-eval",
                                 str(replies_template["eval"]), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    stored = out / PREPARED_EVAL
    assert stored.read_bytes() == replies_template["eval"].read_bytes()
    recorded = json.loads((out / "dataset.json").read_text("utf-8"))["reply_eval"]
    assert recorded["questions"] == len(EVAL) and json.loads(result.stdout)["reply_eval"] == recorded
    # which set training reads: --reply-eval, else the stored copy, else the working directory's default
    assert evaluation_set(out, bad) == bad and evaluation_set(out) == stored
    assert evaluation_set(tmp_path) is None
    assert RepliesComponent().prepared_data(settings, documents=tmp_path) == out  # so `train --model-type all` trains it
    # training with the prepared pairs and no --reply-eval scores with the stored copy: the same pairs and the same
    # evaluation set as the template's replies, so it is the same training (without the copy: no evaluation set)
    prepared = tmp_path / "same-pairs"
    shutil.copytree(replies_template["pairs"], prepared)
    with pytest.raises(DataError, match="no reply evaluation set"):
        train_replies(replies_template["settings"], prepared, registry)
    shutil.copy(stored, prepared / PREPARED_EVAL)
    with pytest.raises(AlreadyTrainedError):
        train_replies(replies_template["settings"], prepared, registry)
    # prepared again without --reply-eval: the old copy goes, the shipped default applies again
    result = runner.invoke(app, ["prepare", "--replies", str(pairs_file), "-o", str(out)])
    assert result.exit_code == 0 and not stored.exists()
    assert "reply_eval" not in json.loads((out / "dataset.json").read_text("utf-8"))
    assert RepliesComponent().prepared_data(settings, documents=tmp_path) is None
    (isolated_env / DEFAULT_EVAL).parent.mkdir(parents=True)
    (isolated_env / DEFAULT_EVAL).write_bytes(replies_template["eval"].read_bytes())
    assert evaluation_set(out) == DEFAULT_EVAL and RepliesComponent().prepared_data(settings, documents=tmp_path) == out


def test_replies_are_grounded_routed_by_intent_and_never_state_unsupported_facts(registry):
    pipeline = ReplyPipeline.from_version(registry.get("v0003"), load_settings())
    messages = ["¿a qué hora es el desayuno?", "hola buenas", "ponme las noticias", "wifi no funciona"]
    answers = pipeline.reply(messages)
    assert [a["message"] for a in answers] == messages
    by = dict(zip(messages, answers))
    breakfast = by["¿a qué hora es el desayuno?"]
    assert breakfast["kind"] == "grounded" and breakfast["sources"][0]["doc"] == "desayuno.md"
    assert breakfast["reply"] in " ".join(s for src in breakfast["sources"] for s in src["sentences"])
    assert by["hola buenas"]["kind"] == "social" and by["hola buenas"]["sources"] == []
    assert by["ponme las noticias"]["kind"] == "fallback" and "noticias" in by["ponme las noticias"]["reply"]
    chunks = pipeline.knowledge.chunks
    for a in answers:
        passages = [chunks[s["chunk_id"]].passage() for s in a["sources"]]
        assert unsupported_facts(a["reply"], [*passages, a["message"]]) == [], a
        assert a["check"] == {"passed": True, "unsupported": []}
    from dataclasses import replace

    pipeline.model.settings = replace(pipeline.model.settings, min_grounding_score=2.0)  # nothing is covered
    (uncovered,) = pipeline.reply(["¿a qué hora es el desayuno?"])
    assert uncovered["kind"] == "no_answer" and uncovered["reply"] == pipeline.model.policy.no_answer
    assert uncovered["sources"] == []
    with pytest.raises(DataError, match="empty message"):
        pipeline.reply(["hola", "  "])
    with pytest.raises(TypeError):
        pipeline.reply("hola")


def test_candidates_add_the_chunks_bm25_finds_beside_the_dense_ones(registry):
    from dataclasses import replace

    pipeline = ReplyPipeline.from_version(registry.get("v0003"), load_settings())
    message = "el router"  # a word of one chunk only ("reinicie el router")
    vector = pipeline.knowledge.embed_queries([message])[0]
    router = next(c.id for c in pipeline.knowledge.chunk_list if "router" in c.text)
    pipeline.model.settings = replace(pipeline.model.settings, candidate_chunks=1, lexical_chunks=0)
    dense = pipeline.candidates(message, "wifi_info", vector)
    assert len(dense.hits) == 1
    pipeline.model.settings = replace(pipeline.model.settings, candidate_chunks=1, lexical_chunks=1)
    both = pipeline.candidates(message, "wifi_info", vector)
    ids = [h.chunk.id for h in both.hits]
    assert ids[0] == dense.hits[0].chunk.id and router in ids and len(ids) == len(set(ids)) <= 2
    assert both.features.shape == (len(both.sentences), len(FEATURES))
    column = FEATURES.index("lexical_rank")
    ranks = {s.chunk_id: row[column] for s, row in zip(both.sentences, both.features)}
    assert ranks[router] == 1.0  # the only chunk holding "router"
    assert all(rank == 0.0 for chunk, rank in ranks.items() if chunk != router)  # no shared stem: unranked
    if dense.hits[0].chunk.id != router:  # the lexical path added it (the dense search ranked it lower)
        assert ids == [dense.hits[0].chunk.id, router]


def test_action_intents_use_the_entities_and_the_how_to_sentence(registry):
    """A request of an action intent: the template filled from the message, then the sentence of the documents
    its policy's "how" query finds (here the e-mail of reservations), and a request for what is missing."""
    from hotelbot_cli.components.replies.policy import Policy

    pipeline = ReplyPipeline.from_version(registry.get("v0003"), load_settings())

    class Analyzer:  # the tiny classifier knows no booking intent: the analysis a real model gives
        def analyze(self, texts, top_k=3):
            message = texts[0]
            start = message.index("2 adultos")
            return [{"intent": "book_room", "confidence": 0.9, "fallback": False,
                     "entities": [{"type": "GUESTS", "text": "2 adultos", "start": start, "end": start + 9,
                                   "confidence": 0.9}]}]

    pipeline.analyzer = Analyzer()
    (answer,) = pipeline.reply(["quiero reservar una habitación para 2 adultos"])
    assert answer["kind"] == "action" and answer["intent"] == "book_room"
    assert answer["reply"].startswith("Con mucho gusto le ayudamos a reservar para 2 adultos.")
    assert "reservas@faro.example" in answer["reply"] and answer["sources"][0]["doc"] == "reservas.md"
    assert answer["reply"].endswith(f"Indíquenos también {Policy.load().slots['DATE']}, por favor.")


class FakeGenerator:
    """Stands in for a response generator: answers every message with ``text``."""

    def __init__(self, text):
        self.text = text
        self.calls = []

    def reply(self, messages, hits=None):
        self.calls.append((list(messages), hits))
        return [{"message": m, "reply": self.text, "sources": []} for m in messages]


def test_a_generated_reply_is_sent_only_when_its_sources_hold_every_fact(registry):
    from dataclasses import replace

    pipeline = ReplyPipeline.from_version(registry.get("v0003"), load_settings())
    pipeline.model.settings = replace(pipeline.model.settings, use_generator=True)
    pipeline.responder = FakeGenerator("El desayuno es de 7:00 a 11:30 y cuesta 6 €.")
    (answer,) = pipeline.reply(["¿a qué hora es el desayuno?"])
    assert answer["kind"] == "grounded" and "11:30" not in answer["reply"]
    (rejected,) = answer["rejected"]
    assert rejected["kind"] == "generated" and {f["text"] for f in rejected["unsupported"]} == {"11:30", "6"}
    assert pipeline.responder.calls[0][1][0][0].chunk.doc == "desayuno.md"  # given the retrieved passages
    pipeline.responder = FakeGenerator("Lo servimos de 7:00 a 10:30.")
    (answer,) = pipeline.reply(["¿a qué hora es el desayuno?"])
    assert answer["kind"] == "generated" and answer["reply"] == "Lo servimos de 7:00 a 10:30."
    assert "rejected" not in answer and answer["sources"]
    (social,) = pipeline.reply(["hola buenas"])
    assert social["kind"] == "social" and len(pipeline.responder.calls) == 1  # only informational answers


def test_the_gate_refuses_unsupported_facts_and_low_fact_accuracy(registry, monkeypatch):
    from hotelbot_cli.pipeline.deploy import gate_version as _gate

    component = RepliesComponent()
    metrics = {"metric": "fact_accuracy", "overall_score": 0.9, "unsupported_fact_rate": 0.0}
    assert component.gate_failures(metrics, ValidationConfig()) == []
    failures = component.gate_failures({**metrics, "unsupported_fact_rate": 0.05}, ValidationConfig())
    assert failures == ["replies unsupported_fact_rate 0.05 > MAX_UNSUPPORTED_FACT_RATE 0.0000"]
    assert component.gate_failures({**metrics, "unsupported_fact_rate": 0.05},
                                   ValidationConfig(max_unsupported_fact_rate=0.1)) == []
    assert component.gate_failures({**metrics, "overall_score": 0.5}, ValidationConfig()) == [
        "replies fact_accuracy 0.5000 < MIN_FACT_ACCURACY 0.6000"]
    assert component.gate_failures({**metrics, "overall_score": 0.5}, ValidationConfig(min_fact_accuracy=0.4)) == []
    assert component.gate_failures({**metrics, "overall_score": 0.7}, ValidationConfig(min_validation_score=0.9)) == []
    recorded = json.loads((registry.get("v0003").path / "replies" / "metrics.json").read_text("utf-8"))
    from hotelbot_cli.pipeline.validate import validate_components

    assert validate_components(registry.get("v0003"), load_settings(), recorded=True)["replies"]["source"] == "recorded"
    gate = _gate(registry, load_settings(), "v0003")
    assert gate["components"]["replies"] == {"metric": "fact_accuracy", "overall_score": recorded["fact_accuracy"]}
    monkeypatch.setenv("MIN_FACT_ACCURACY", str(min(1.0, recorded["fact_accuracy"] + 1e-6)))
    blocked = _gate(registry, load_settings(), "v0003")
    assert not blocked["passed"] and any(f.startswith("replies fact_accuracy") for f in blocked["failures"])
    monkeypatch.delenv("MIN_FACT_ACCURACY")

    def one_unsupported_reply(staged):  # as if training had measured a reply stating an unsupported fact
        path = staged / "replies" / "metrics.json"
        metrics = json.loads(path.read_text("utf-8"))
        path.unlink()  # a hard link into the blob store: replace, never write through
        path.write_text(json.dumps({**metrics, "unsupported_fact_rate": 0.25}), "utf-8")

    bad = clone_version(registry, "v0003", one_unsupported_reply)
    assert "replies unsupported_fact_rate 0.25 > MAX_UNSUPPORTED_FACT_RATE" in " ".join(
        _gate(registry, load_settings(), bad.name)["failures"])
    before = registry.current_name()
    result = runner.invoke(app, ["deploy", bad.name])
    assert result.exit_code == 3 and "unsupported_fact_rate" in result.stderr and registry.current_name() == before
    monkeypatch.setenv("MAX_UNSUPPORTED_FACT_RATE", "0.3")
    assert _gate(registry, load_settings(), bad.name)["passed"]


def test_validate_rescores_the_replies_like_training_did(registry):
    from hotelbot_cli.pipeline.validate import validate_version

    recorded = json.loads((registry.get("v0003").path / "replies" / "metrics.json").read_text("utf-8"))
    result = validate_version(registry, "v0003", load_settings())
    again = result.components["replies"]
    for key in ("fact_accuracy", "fact_recall", "unsupported_fact_rate"):
        assert again[key] == recorded[key]
        assert again["baseline"][key] == recorded["baseline"][key]
    assert result.to_dict()["components"]["replies"]["passed"] is True


def test_reply_cli_json_text_and_errors(registry):
    result = runner.invoke(app, ["reply", "¿a qué hora es el desayuno?", "hola buenas", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model_version"] == "v0003" and [r["kind"] for r in doc["replies"]] == ["grounded", "social"]
    assert set(doc["replies"][0]) >= {"message", "reply", "kind", "intent", "confidence", "entities", "sources", "check"}
    text = runner.invoke(app, ["reply", "¿a qué hora es el desayuno?"])
    assert text.exit_code == 0 and "fuente: desayuno.md > Horario" in text.stdout and "grounded" in text.stdout
    missing = runner.invoke(app, ["reply", "hola", "--version", "v0002"])
    assert missing.exit_code == 1 and "has no reply model" in missing.stderr and missing.stdout == ""
    assert "hotelbot train --model-type replies" in missing.stderr


def test_train_replies_refuses_a_version_without_a_knowledge_base(registry, tiny_model, mlflow_uri, tmp_path,
                                                                   replies_template):
    settings = settings_for(tmp_path, tiny_model, mlflow_uri)
    before = [v.name for v in registry.list_versions()]
    with pytest.raises(DataError, match="has none"):
        train_replies(settings, replies_template["pairs"], registry, source="v0001", eval_file=replies_template["eval"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "hola", "facts": []}\n', "utf-8")
    with pytest.raises(DataError, match="line 1"):
        train_replies(settings, replies_template["pairs"], registry, eval_file=bad)
    assert [v.name for v in registry.list_versions()] == before
    result = runner.invoke(app, ["train", "--model-type", "classifier", "--use-generator"])
    assert result.exit_code == 2 and "--use-generator applies to --model-type replies" in result.output
    result = runner.invoke(app, ["train", "--model-type", "embeddings", "--frozen-questions"])
    assert result.exit_code == 2 and "--frozen-questions applies to --model-type replies" in result.output
    assert [v.name for v in registry.list_versions()] == before


def test_serve_reply_answers_with_the_pipeline(registry):
    from fastapi.testclient import TestClient

    from hotelbot_cli.pipeline.deploy import deploy
    from hotelbot_cli.serving import ServeSettings, create_app

    deploy(registry, load_settings(), "v0003")
    with TestClient(create_app(registry, ServeSettings(watch_interval_s=0))) as client:
        response = client.post("/reply", json={"text": "¿a qué hora es el desayuno?"})
        assert response.status_code == 200, response.text
        doc = response.json()
        assert doc["model_version"] == "v0003" and doc["kind"] == "grounded" and doc["check"]["passed"]
        assert doc["sources"][0]["doc"] == "desayuno.md" and "message" not in doc
        schema = client.get("/openapi.json").json()
        reply_schema = schema["paths"]["/reply"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert reply_schema["$ref"].endswith("/ReplyAnswer")
    deploy(registry, load_settings(), "v0002")
    with TestClient(create_app(registry, ServeSettings(watch_interval_s=0))) as client:
        response = client.post("/reply", json={"text": "hola"})
        assert response.status_code == 503 and "no reply model" in response.text


def test_a_knowledge_base_rebuilt_after_the_replies_is_ranked_again_and_rescored(registry, tiny_model, mlflow_uri,
                                                                              tmp_path):
    from hotelbot_cli.components.knowledge.kb import train_knowledge_base

    settings = settings_for(tmp_path, tiny_model, mlflow_uri)
    changed = {**DOCS, "desayuno.md": DOCS["desayuno.md"].replace("10:30", "10:45")}
    train_knowledge_base(settings, write_docs(tmp_path / "docs2", changed), registry, source="v0003")
    info = registry.get("v0004")
    assert "replies" in info.manifest.components
    assert RepliesComponent().recorded_score(info) is None  # measured on the old documents: the gate rescores
    pipeline = ReplyPipeline.from_version(info, load_settings())
    (answer,) = pipeline.reply(["¿a qué hora es el desayuno?"])
    assert "10:30" not in answer["reply"] and answer["check"]["passed"]


def test_serve_loads_the_generator_only_for_replies_that_use_it(registry):
    """/reply answers through the reply model: a generator it does not use is not loaded by serve."""
    from hotelbot_cli.components.generator import GeneratorComponent

    component = GeneratorComponent()
    assert component.served(registry.get("v0003")) is False  # replies without the generator
    assert component.served(registry.get("v0002")) is False  # no reply model: nothing serves a generator

    def use_generator(staged):
        path = staged / "replies" / "ranker.json"
        record = json.loads(path.read_text("utf-8"))
        record["settings"]["use_generator"] = True
        path.unlink()  # a hard link into the blob store: replace, never write through
        path.write_text(json.dumps(record), "utf-8")

    assert component.served(clone_version(registry, "v0003", use_generator)) is True
    from hotelbot_cli.pipeline.deploy import smoke_check

    smoke = smoke_check(registry.get("v0003"), load_settings())  # deploy's check: the reply model's own files
    assert smoke["replies"]["reply_chars"] > 0 and smoke["replies"]["kind"] == "grounded"  # no analyzer loaded


def test_report_shows_the_replies_beside_the_baseline(registry):
    from hotelbot_cli.reporting import build_report, render_html, render_markdown

    report = build_report(registry, "v0003", measure_latency=False, figures=False, min_score=0.0)
    section = report.to_dict()["components"]["replies"]
    recorded = json.loads((registry.get("v0003").path / "replies" / "metrics.json").read_text("utf-8"))
    assert section["kind"] == "replies" and section["headline"]["fact_accuracy"] == recorded["fact_accuracy"]
    assert section["rows"][0] == {"metric": "fact accuracy", "replies": recorded["fact_accuracy"],
                                  "baseline": recorded["baseline"]["fact_accuracy"]}
    markdown = render_markdown(report)
    assert "### replies" in markdown and "| metric | replies | nearest training reply |" in markdown
    assert "Sample replies (evaluation questions)" in markdown and EVAL[0]["question"] in markdown
    assert "nearest training reply" in render_html(report)
    tuned = recorded["question_layers"]
    assert section["question_layers"] == tuned and tuned["tuned"] is True
    assert f"- question layers: top 2 layers tuned on {tuned['examples']} questions (2 folds, rank 32" in markdown


def test_recorded_figures_do_not_count_once_the_analyzer_changed(registry):
    """A retrained classifier (or entity/sentiment model) carried into a version changes how messages are
    routed: the replies' recorded figures are stale, so the gate re-measures."""
    component = RepliesComponent()
    assert component.recorded_score(registry.get("v0003")) is not None

    def retrained_classifier(staged):
        path = next(p for p in sorted((staged / "model").iterdir()) if p.suffix == ".json")
        text = path.read_text("utf-8")
        path.unlink()  # a hard link into the blob store: replace, never write through
        path.write_text(text + "\n", "utf-8")

    assert component.recorded_score(clone_version(registry, "v0003", retrained_classifier)) is None


@pytest.mark.parametrize("message, parts", [
    ("¿La red es gratis? ¿Y dónde está la clave?", ["¿La red es gratis?", "¿Y dónde está la clave?"]),
    ("Soy fumador. ¿Dónde puedo fumar tranquilo? ¿Y qué pasa si fumo en el cuarto?",
     ["¿Dónde puedo fumar tranquilo?", "¿Y qué pasa si fumo en el cuarto?"]),
    ("Llego en coche, por qué calle se entra? Y si lo saco me cobran otra vez?",
     ["Llego en coche, por qué calle se entra?", "Y si lo saco me cobran otra vez?"]),
    ("¿Tienen parking?¿Cuánto cuesta por día?", ["¿Tienen parking?", "¿Cuánto cuesta por día?"]),  # no space
    ("¿Hay cuna? 😊 ¿Y trona para el niño?!", ["¿Hay cuna?", "¿Y trona para el niño?!"]),
    ("Sr. López: ¿hay cuna disponible? ¿y cuánto cuesta?", ["¿hay cuna disponible?", "¿y cuánto cuesta?"]),
    ("¿a qué hora es el desayuno?", []),  # one question
    ("¿Qué es eso? ¿Qué es eso? ¿Qué es eso?", []),  # one question, asked three times
    ("¿sí? ¿y la clave del wifi?", []),  # "¿sí?" is no question of its own
    ("Quiero reservar. Somos dos.", []),
])
def test_question_parts_are_the_questions_of_a_message_that_asks_several(message, parts):
    from hotelbot_cli.components.replies.pipeline import question_parts

    assert question_parts(message) == parts


def test_a_message_with_many_questions_costs_at_most_four_rankings():
    from hotelbot_cli.components.replies.pipeline import MAX_QUESTIONS, question_parts

    message = " ".join(f"¿Tienen servicio número {i}?" for i in range(40))
    assert question_parts(message) == [f"¿Tienen servicio número {i}?" for i in range(MAX_QUESTIONS)]


def test_a_message_asking_two_things_gets_a_sentence_for_each_within_the_length(registry, monkeypatch):
    from types import SimpleNamespace

    from hotelbot_cli.components.replies import pipeline as module

    pipeline = ReplyPipeline.from_version(registry.get("v0003"), load_settings())
    a, b, c = pipeline.model.sentences[:3]
    message = "Hola. ¿La red es gratis en todo el hotel? ¿Y dónde está la clave del wifi?"
    whole = [(a, 0.6), (c, 0.3), (b, 0.1)]  # the whole message: a first, b last
    own = {"¿La red es gratis en todo el hotel?": [(a, 0.9), (b, 0.05), (c, 0.05)],
           "¿Y dónde está la clave del wifi?": [(b, 0.8), (a, 0.1), (c, 0.1)]}
    monkeypatch.setattr(pipeline, "candidates", lambda part, intent, vector, chunks=None, hits=None, cosine_vector=None: part)
    monkeypatch.setattr(pipeline, "rank", lambda part: own[part])
    found = SimpleNamespace(hits=[])
    # the first question is answered by a already; the second gets its own sentence though the message ranked it last
    assert set(pipeline._each_question(message, "wifi_info", found, whole, [a])) == {a, b}
    assert pipeline._each_question("¿La red es gratis en todo el hotel?", "wifi_info", found, whole, [a]) == [a]
    monkeypatch.setattr(module, "QUESTIONS_MAX_CHARS", len(a.text) + 1)  # no room left: the reply stays as it was
    assert pipeline._each_question(message, "wifi_info", found, whole, [a]) == [a]


def test_training_tunes_the_question_layers_and_the_pipeline_uses_them(replies_template, registry):
    """The replies keep the tuned top layers' change (question_layers.safetensors); the pipeline's sentence cosines
    use their vector, the chunk search the knowledge base's; `--frozen-questions` trains without them."""
    import numpy as np

    from hotelbot_cli.components.replies.question import QUESTION_FILE

    tuned = replies_template["result"].metrics["question_layers"]
    assert tuned["tuned"] is True and tuned["layers"] == 2 and tuned["folds"] == 2 and tuned["rank"] == 32
    assert tuned["examples"] >= 6 and tuned["stored_bytes"] > 0
    info = registry.get("v0003")
    assert (info.path / "replies" / QUESTION_FILE).is_file()
    assert json.loads((info.path / "replies" / "ranker.json").read_text("utf-8"))["question_layers"]["layers"] == 2
    pipeline = ReplyPipeline.from_version(info, load_settings())
    assert pipeline.question is not None
    search, cosine = pipeline.message_vectors(["¿a qué hora es el desayuno?", "clave del wifi"])
    assert np.allclose(search, pipeline.knowledge.embed_queries(["¿a qué hora es el desayuno?", "clave del wifi"]))
    assert np.allclose(np.linalg.norm(cosine, axis=1), 1.0) and not np.allclose(search, cosine, atol=1e-3)
    # the same data with frozen questions is another training (not "already trained"), without the file
    result = train_replies(replies_template["settings"], replies_template["pairs"], registry,
                           eval_file=replies_template["eval"], source="v0003", tune_questions=False)
    assert result.metrics["question_layers"] == {"tuned": False, "reason": "--frozen-questions"}
    assert not (result.version.path / "replies" / QUESTION_FILE).exists()
    frozen = ReplyPipeline.from_version(result.version, load_settings())
    assert frozen.question is None
    search, cosine = frozen.message_vectors(["clave del wifi"])
    assert cosine is search


def test_question_layers_tuned_on_another_encoder_are_set_aside_with_a_warning(registry, monkeypatch, caplog):
    """A knowledge base whose encoder is no longer the one the layers were tuned on (other top-layer weights):
    the replies still answer, their cosines from the search vector, and the log says to retrain."""
    import numpy as np

    from hotelbot_cli.components.knowledge.kb import KnowledgeBase

    real = KnowledgeBase.upper_weights
    monkeypatch.setattr(KnowledgeBase, "upper_weights",
                        lambda self: {k: v + np.float32(0.5) for k, v in real(self).items()})
    with caplog.at_level("WARNING", logger="hotelbot.replies"):
        pipeline = ReplyPipeline.from_version(registry.get("v0003"), load_settings())
    assert pipeline.question is None and "other base weights" in caplog.text and "retrain" in caplog.text
    (answer,) = pipeline.reply(["¿a qué hora es el desayuno?"])
    assert answer["check"]["passed"] and answer["reply"]
