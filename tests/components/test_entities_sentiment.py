"""Entity extraction and sentiment: data validation, BIO alignment, the entity metric, versioned builds that
carry over the other components, the Analyzer's answer, and deploy/rollback moving components together.

Models are the session's tiny BERT; the trainings run once per module (``built``) and each test works on
its own copy of that registry."""

import json
import random
import re
import shutil
import unicodedata

from dataclasses import replace

import pytest

from conftest import REPO, clone_version, private_registry
from hotelbot_cli.pipeline.analyze import Analyzer
from hotelbot_cli.pipeline.validate import gate_components
from hotelbot_cli.components import get as get_component, names as component_names
from hotelbot_cli.pipeline.deploy import smoke_check
from hotelbot_cli.components.compose import carry_over, components_of
from hotelbot_cli.config import load_settings
from hotelbot_cli.components.entities.tagger import Span, alignment_report, decode_tags, entity_metrics, evaluate_entities, prepare_entities, read_prepared_entities, spans_to_tags, token_char_spans, write_prepared_entities
from hotelbot_cli.components.entities.train import train_entities
from hotelbot_cli.errors import DataError, IntegrityError
from hotelbot_cli.registry import ModelRegistry
from hotelbot_cli.components.sentiment.classifier import SENTIMENT_LABELS, evaluate_sentiment, prepare_sentiment, train_sentiment
from hotelbot_cli.errors import AlreadyTrainedError

SHIPPED_ENTITIES = REPO / "datasets" / "entidades_es.jsonl"
SHIPPED_SENTIMENT = REPO / "datasets" / "sentimiento_es.jsonl"

VALUES = {
    "PERSON": ["Ana", "Luis", "Marta", "Pedro"], "ROOM_NUMBER": ["305", "412", "27", "1204"],
    "NIGHTS": ["dos noches", "3 noches", "cinco noches"], "GUESTS": ["dos personas", "4 adultos", "tres huéspedes"],
    "DATE": ["15/08/2026", "lunes", "21 de febrero"], "TIME": ["las 10", "las nueve y media"],
    "ROOM_TYPE": ["suite", "habitación doble"], "MONEY": ["120 euros", "45 €"],
}
TEMPLATES = ["Soy {PERSON} de la habitación {ROOM_NUMBER}", "Quiero reservar {NIGHTS} para {GUESTS}",
             "Llegamos el {DATE} a {TIME}", "Una {ROOM_TYPE} por {MONEY} por favor"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_entity_lines(n=30, seed=0):
    rng, lines, seen = random.Random(seed), [], set()
    while len(lines) < n:
        text, entities = "", []
        for m in re.finditer(r"\{(\w+)\}|[^{]+", rng.choice(TEMPLATES)):
            piece = rng.choice(VALUES[m.group(1)]) if m.group(1) else m.group(0)
            if m.group(1):
                entities.append({"start": len(text), "end": len(text) + len(piece), "label": m.group(1)})
            text += piece
        if text not in seen:
            seen.add(text)
            lines.append({"text": text, "entities": entities})
    return lines


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


@pytest.fixture(scope="module")
def built(trained_template, tiny_model, mlflow_uri, tmp_path_factory):
    """v0001 classifier, v0002 its clone (as registry_copy), v0003 = + entities, v0004 = + sentiment."""
    root = tmp_path_factory.mktemp("components")
    shutil.copytree(trained_template, root / "registry", symlinks=True)
    registry = ModelRegistry(root / "registry")
    clone_version(registry, "v0001")
    sentiment = [json.loads(line) for line in SHIPPED_SENTIMENT.read_text("utf-8").splitlines()]
    picked = [r for label in SENTIMENT_LABELS for r in [x for x in sentiment if x["label"] == label][:10]]
    data = {"entities": write_jsonl(root / "entities.jsonl", tiny_entity_lines()),
            "sentiment": write_jsonl(root / "sentiment.jsonl", picked)}
    settings = load_settings(env={"HOTELBOT_HOME": str(root / "home"), "MLFLOW_TRACKING_URI": mlflow_uri,
                                  "HOTELBOT_BASE_MODEL": str(tiny_model), "TRAINING_EPOCHS": "12",
                                  "TRAINING_BATCH_SIZE": "8", "TRAINING_LEARNING_RATE": "0.002"},
                             path_overrides={"registry": root / "registry"})
    events = []
    entities = train_entities(settings, data["entities"], registry, listener=events.append)
    sentiment_result = train_sentiment(settings, data["sentiment"], registry)
    return {"root": root / "registry", "entities": entities, "sentiment": sentiment_result, "data": data,
            "settings": settings, "events": events}


@pytest.fixture
def registry(built, isolated_env, monkeypatch):
    return private_registry(built["root"], isolated_env / "registry", monkeypatch)


# ---------------------------------------------------------------------------------------- data


GOOD = {"text": "Soy Ana de la 305", "entities": [{"start": 4, "end": 7, "label": "PERSON"}]}


@pytest.mark.parametrize("record, message", [
    ({"text": "hola", "entities": [{"start": 2, "end": 9, "label": "DATE"}]}, r"outside the text, which has 4"),
    ({"text": "hola", "entities": [{"start": -1, "end": 2, "label": "DATE"}]}, r"outside the text"),
    ({"text": "hola", "entities": [{"start": 2, "end": 2, "label": "DATE"}]}, r"start must be below end"),
    ({"text": "ho  la", "entities": [{"start": 2, "end": 4, "label": "DATE"}]}, r"the span '  ' is blank"),
    ({"text": "hola", "entities": [{"start": 0, "end": 2, "label": "FECHA"}]}, r"unknown label 'FECHA'; known: DATE"),
    ({"text": "el 5 de mayo", "entities": [{"start": 3, "end": 12, "label": "DATE"},
                                          {"start": 3, "end": 4, "label": "NIGHTS"}]}, r"entities overlap"),
    ({"text": "hola", "entities": [{"start": "0", "end": 2, "label": "DATE"}]}, r"must be integers"),
    ({"text": "hola", "entities": [{"start": 0, "label": "DATE"}]}, r'expected \{"start", "end", "label"\}'),
    ({"text": "hola"}, r"missing field\(s\) entities"),
    ({"text": "   ", "entities": []}, r"empty text"),
])
def test_prepare_rejects_bad_spans_naming_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD | {"text": "Soy Ana de la 306"}, record])
    with pytest.raises(DataError, match=rf"bad\.jsonl: line 3: .*{message}"):
        prepare_entities(path)


def test_prepare_other_entity_file_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(GOOD) + "\n{oops\n", "utf-8")
    with pytest.raises(DataError, match=r"a\.jsonl: line 2: invalid JSON"):
        prepare_entities(tmp_path / "a.jsonl")
    conflict = GOOD | {"entities": [{"start": 14, "end": 17, "label": "ROOM_NUMBER"}]}
    with pytest.raises(DataError, match=r"b\.jsonl: line 2: the same text has different entities at line 1"):
        prepare_entities(write_jsonl(tmp_path / "b.jsonl", [GOOD, conflict]))
    with pytest.raises(DataError, match="no entities in any line"):
        prepare_entities(write_jsonl(tmp_path / "c.jsonl", [{"text": "hola", "entities": []}]))


def test_shipped_entities_split_is_seeded_stratified_and_round_trips(tmp_path):
    a, b = prepare_entities(SHIPPED_ENTITIES, 0.2, 42), prepare_entities(SHIPPED_ENTITIES, 0.2, 42)
    assert a.fingerprint == b.fingerprint and a.summary["examples"] == 551 and not a.warnings
    assert prepare_entities(SHIPPED_ENTITIES, 0.2, 7).fingerprint != a.fingerprint
    assert not {e.text for e in a.train} & {e.text for e in a.validation}
    in_validation = {s.label for e in a.validation for s in e.entities}
    assert in_validation == set(a.labels) and len(a.labels) == 8
    assert 0.18 < len(a.validation) / 551 < 0.22
    for example in a.train[:50]:  # offsets index the untouched text
        assert all(example.text[s.start:s.end].strip() == example.text[s.start:s.end] for s in example.entities)

    write_prepared_entities(a, tmp_path / "prepared")
    again = read_prepared_entities(tmp_path / "prepared")
    assert (again.fingerprint, again.train, again.validation) == (a.fingerprint, a.train, a.validation)
    lines = (tmp_path / "prepared" / "train.jsonl").read_text("utf-8").splitlines()
    (tmp_path / "prepared" / "train.jsonl").write_text("\n".join(lines[1:]) + "\n", "utf-8")
    with pytest.raises(DataError, match="fingerprint mismatch"):
        read_prepared_entities(tmp_path / "prepared")


def test_sentiment_data_validation(tmp_path):
    prepared = prepare_sentiment(SHIPPED_SENTIMENT)
    assert prepared.labels == list(SENTIMENT_LABELS) and prepared.summary["examples"] == 630
    assert {e.intent for e in prepared.validation} == set(SENTIMENT_LABELS)
    rows = [{"text": "genial", "label": "positive"}, {"text": "fatal", "label": "negative"}]
    with pytest.raises(DataError, match=r"s\.jsonl: line 3: unknown label 'happy'"):
        prepare_sentiment(write_jsonl(tmp_path / "s.jsonl", rows + [{"text": "bien", "label": "happy"}]))
    with pytest.raises(DataError, match=r"t\.jsonl: line 3: text 'genial' is 'negative' here and 'positive' at line 1"):
        prepare_sentiment(write_jsonl(tmp_path / "t.jsonl", rows + [{"text": " genial ", "label": "negative"}]))


# ---------------------------------------------------------------------------------------- alignment


def test_bio_round_trip_on_the_shipped_data(tiny_model):
    """char spans -> token tags -> decoded spans gives back every entity whose edges are token edges."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    examples = prepare_entities(SHIPPED_ENTITIES).train
    checked = 0
    for example in examples:
        for prefix in ("", "query: "):
            enc = tokenizer(prefix + example.text, return_offsets_mapping=True, return_special_tokens_mask=True)
            spans = token_char_spans(example.text, enc["offset_mapping"], enc["special_tokens_mask"], len(prefix))
            starts = {s[0] for s in spans if s}
            ends = {s[1] for s in spans if s}
            if not all(e.start in starts and e.end in ends for e in example.entities):
                continue
            tags = spans_to_tags(example.entities, spans)
            assert sum(t is not None and t.startswith("B-") for t in tags) == len(example.entities)
            decoded = decode_tags(tags, spans, text=example.text)
            assert {(k, s, e) for k, s, e, _ in decoded} == example.gold(), example.text
            checked += 1
    assert checked > 0.95 * 2 * len(examples)
    report = alignment_report(examples, tokenizer)
    assert report["ratio"] > 0.95 and report["entities"] == sum(len(e.entities) for e in examples)


def test_first_subtoken_gets_b_and_the_others_i(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    text = "Soy Zyxwqvokj de la 1204, gracias"
    entities = (Span(4, 13, "PERSON"), Span(20, 24, "ROOM_NUMBER"))
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    spans = token_char_spans(text, enc["offset_mapping"], enc["special_tokens_mask"])
    tags = spans_to_tags(entities, spans)
    assert spans[0] is None and spans[-1] is None and tags[0] is None  # [CLS], [SEP]
    person = [t for t, s in zip(tags, spans) if s and 4 <= s[0] < 13]
    assert len(person) > 1 and person == ["B-PERSON"] + ["I-PERSON"] * (len(person) - 1)
    assert [t for t in tags if t and t.endswith("ROOM_NUMBER")][0] == "B-ROOM_NUMBER"
    comma = next(i for i, s in enumerate(spans) if s and text[s[0]:s[1]] == ",")
    assert tags[comma] == "O"


def test_decode_reads_bio_like_seqeval_and_never_splits_words():
    spans = [None, (0, 3), (4, 7), (8, 10), (11, 14), (14, 19), None]
    text = "Soy Ana de Horrible"[:19]
    tags = [None, "O", "I-PERSON", "O", "B-DATE", "I-DATE", None]
    assert decode_tags(tags, spans, [0, 0, 0.8, 0, 0.5, 0.7, 0]) == [
        ("PERSON", 4, 7, 0.8), ("DATE", 11, 19, pytest.approx(0.6))]
    assert [d[:3] for d in decode_tags([None, "B-DATE", "B-DATE", "I-TIME", "I-TIME", "O", None], spans)] == [
        ("DATE", 0, 3), ("DATE", 4, 7), ("TIME", 8, 14)]
    # a model that tags only a word's second sub-token: the span grows to the whole word
    assert decode_tags([None, "O", "O", "O", "O", "B-PERSON", None], spans, text=text)[0][:3] == ("PERSON", 11, 19)


# ---------------------------------------------------------------------------------------- metric


def test_entity_metric_exact_match_per_type():
    gold = [{("DATE", 0, 5), ("PERSON", 10, 13)}, {("MONEY", 3, 8)}, {("TIME", 0, 4)}]
    pred = [{("DATE", 0, 5), ("PERSON", 10, 14)}, {("MONEY", 3, 8), ("GUESTS", 0, 2)}, {("DATE", 0, 4)}]
    m = entity_metrics(gold, pred, ["DATE", "PERSON", "MONEY", "TIME", "GUESTS", "NIGHTS"])
    per = m["per_type"]
    assert per["DATE"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1, "predicted": 2}
    assert per["PERSON"]["f1"] == 0 and per["PERSON"]["support"] == 1  # one character off is a miss
    assert per["TIME"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0}  # wrong type
    assert per["MONEY"]["f1"] == 1.0 and per["GUESTS"]["precision"] == 0.0
    assert per["NIGHTS"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}
    tp, fp, fn = 2, 3, 2
    assert m["micro_precision"] == pytest.approx(tp / (tp + fp)) and m["micro_recall"] == pytest.approx(tp / (tp + fn))
    assert m["micro_f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9) == m["overall_score"]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0 + 1 + 0 + 0) / 5)  # NIGHTS (absent everywhere) not averaged
    assert (m["num_gold"], m["num_predicted"], m["exact_sentence_accuracy"]) == (4, 5, 0.0)
    perfect = entity_metrics(gold, gold)
    assert perfect["micro_f1"] == perfect["macro_f1"] == perfect["exact_sentence_accuracy"] == 1.0
    assert entity_metrics([set()], [set()])["micro_f1"] == 0.0


# ---------------------------------------------------------------------------------------- versions


def test_versions_carry_over_the_classifier(built, registry):
    ent, sent = built["entities"], built["sentiment"]
    v2, v3, v4 = (registry.get(n) for n in ("v0002", "v0003", "v0004"))
    assert (ent.version.name, sent.version.name) == ("v0003", "v0004")
    assert v3.metadata["components"] == ["classifier", "entities"] and ent.carried_from == "v0002"
    assert v4.metadata["components"] == ["classifier", "entities", "sentiment"]
    assert v4.metadata["entities"]["carried_from"] == "v0003" and v4.metadata["parent"] == "v0003"
    for key in ("labels", "metrics", "dataset_fingerprint", "config", "out_of_scope_threshold", "kind"):
        assert v4.metadata[key] == v3.metadata[key] == v2.metadata[key], key
    classifier_files = {k: v for k, v in v2.metadata["files"].items() if k.split("/")[0] in get_component("classifier").owned_paths()}
    assert classifier_files and all(v4.metadata["files"][k] == v for k, v in classifier_files.items())
    assert all(v4.metadata["files"][k] == v for k, v in v3.metadata["files"].items() if k.startswith("entities/"))
    assert registry.verify("v0003") == registry.verify("v0004") == []

    files = set(v4.metadata["files"])
    assert {"entities/model.safetensors", "entities/encoder_config.json", "entities/tokenizer.json",
            "entities/entities.json", "entities/metrics.json", "entities/data/train.jsonl",
            "entities/data/validation.jsonl", "sentiment/model.safetensors", "sentiment/classifier.json",
            "sentiment/metrics.json", "sentiment/data/validation.jsonl"} <= files
    manifest = json.loads((v3.path / "entities" / "entities.json").read_text("utf-8"))
    assert manifest["prefix"] == "" and manifest["tags"][0] == "O" and manifest["tags"][1:3] == ["B-DATE", "I-DATE"]
    summary = v3.metadata["entities"]
    assert summary["metrics"]["metric"] == "micro_f1" and set(summary["metrics"]["per_type_f1"]) == set(VALUES)
    assert summary["base_model"]["spec"] == str(built["settings"].training.base_model) and summary["mlflow_run_id"]
    assert {e.kind for e in built["events"]} >= {"begin", "step", "evaluate", "end"}
    assert v4.metadata["sentiment"]["labels"] == list(SENTIMENT_LABELS)
    assert v4.metadata["sentiment"]["config"]["training_config"]["calibrate_oos_threshold"] is False

    # reloaded from disk, each model scores its own validation split exactly as training measured it
    assert evaluate_entities(v4)["micro_f1"] == pytest.approx(ent.metrics["micro_f1"])
    assert evaluate_sentiment(v4)["macro_f1"] == pytest.approx(sent.metrics["macro_f1"])
    with pytest.raises(AlreadyTrainedError, match="v0004"):
        train_entities(built["settings"], built["data"]["entities"], registry)


def test_carry_over_refuses_corrupt_files_and_works_on_an_empty_registry(registry, tmp_path):
    with registry.staging() as staged:
        assert carry_over(ModelRegistry(tmp_path / "empty"), staged, "entities") == {
            "components": ["entities"], "parent": None, "carried_over": {"from": None, "components": []}}
        shutil.rmtree(staged)
    (registry.get("v0004").path / "entities" / "metrics.json").write_text("{}")
    with registry.staging() as staged:  # replacing the corrupt component itself is allowed
        merged = carry_over(registry, staged, "entities")
        assert merged["components"] == ["classifier", "sentiment", "entities"] and not (staged / "entities").exists()
        shutil.rmtree(staged)
    for replacing in ("sentiment", "classifier"):
        with pytest.raises(IntegrityError, match=r"cannot carry over the entities of v0004: entities/metrics.json "
                                                 r"fails its checksum"), registry.staging() as staged:
            carry_over(registry, staged, replacing)


def _without_classifier(registry):
    """A version holding only entities + sentiment (as built on an empty registry)."""
    source = registry.get("v0004")
    with registry.staging() as staged:
        for name in ("entities", "sentiment"):
            shutil.copytree(source.path / name, staged / name)
        return registry.publish(staged, {"components": ["entities", "sentiment"], "entities": source.metadata["entities"],
                                         "sentiment": source.metadata["sentiment"]})


def test_analyzer_answers_intent_entities_and_sentiment_with_raw_offsets(registry):
    analyzer = Analyzer.from_registry(registry)  # nothing deployed: the newest, v0004
    assert analyzer.version == "v0004" and analyzer.components == ["classifier", "entities", "sentiment"]
    clean = ["Soy Ana de la habitación 305", "Quiero reservar dos noches para 4 adultos"]
    raw = ["  Soy Ana \t de la  habitación 305 ", unicodedata.normalize("NFD", "Quiero  reservar dos noches para 4 adultos")]
    answers = analyzer.analyze(raw)
    labels = set(registry.get("v0004").metadata["labels"]) | {"out_of_scope"}
    for text, answer in zip(raw, answers):
        assert set(answer) == {"text", "intent", "confidence", "top_k", "fallback", "entities", "sentiment"}
        assert answer["text"] == text and answer["intent"] in labels and 0 <= answer["confidence"] <= 1
        assert set(answer["sentiment"]) == {"label", "confidence"} and answer["sentiment"]["label"] in SENTIMENT_LABELS
        for ent in answer["entities"]:
            assert set(ent) == {"type", "text", "start", "end", "confidence"} and 0 < ent["confidence"] <= 1
            assert text[ent["start"]:ent["end"]] == ent["text"] == ent["text"].strip() != ""
    assert sum(len(a["entities"]) for a in answers) >= 2
    # the same entities as on the clean text, found at the raw text's own offsets
    plain = analyzer.analyze(clean)
    for a, b in zip(answers, plain):
        assert [(e["type"], unicodedata.normalize("NFC", e["text"])) for e in a["entities"]] == \
            [(e["type"], e["text"]) for e in b["entities"]]
    assert [e["start"] for e in answers[0]["entities"]] != [e["start"] for e in plain[0]["entities"]] or \
        not plain[0]["entities"]

    bare = Analyzer.from_version(registry.require_intact(_without_classifier(registry).name))
    (answer,) = bare.analyze(["Soy Luis de la 412"])
    assert (answer["intent"], answer["confidence"], answer["top_k"], answer["fallback"]) == (None, None, [], None)
    assert answer["sentiment"]["label"] in SENTIMENT_LABELS
    (answer,) = Analyzer.from_registry(registry, "v0002").analyze(["Soy Luis de la 412"])
    assert answer["entities"] == [] and answer["sentiment"] is None and answer["intent"] is not None
    with pytest.raises(DataError, match="text 1 is empty"):
        analyzer.analyze([" \t"])


def test_deploy_and_rollback_move_the_components_together(registry):
    from hotelbot_cli.pipeline.deploy import deploy, rollback

    settings = load_settings()
    deploy(registry, settings, "v0003")
    assert Analyzer.from_registry(registry).components == ["classifier", "entities"]
    result = deploy(registry, settings, "v0004")
    assert result.previous == "v0003" and registry.current_name() == "v0004"
    assert Analyzer.from_registry(registry).components == ["classifier", "entities", "sentiment"]
    few = replace(settings, deployment=replace(settings.deployment, smoke_texts=5),
                  validation=replace(settings.validation, min_validation_score=0.0))
    smoke = smoke_check(registry.get("v0004"), few)
    assert set(smoke) & set(component_names()) == {"entities", "sentiment"}
    assert smoke["entities"]["texts"] == 5 and smoke["texts"] == 5  # the classifier's own figures are top level
    assert gate_components(registry.get("v0004"), few)["passed"]
    rollback(registry, settings)
    current = registry.get(registry.current_name())
    assert current.name == "v0003" and components_of(current) == ["classifier", "entities"]
    assert Analyzer.from_registry(registry).sentiment is None


# ---------------------------------------------------------------------------------------- real tokenizer


@pytest.mark.slow
def test_e5_tokenizer_keeps_almost_every_shipped_entity(model_cache):
    """With the default packaged e5 (its XLM-R tokenizer starts tokens at the preceding space), at least
    99% of the shipped entities survive alignment exactly: the ceiling of the model's exact-match F1."""
    from transformers import AutoTokenizer

    from hotelbot_cli.modeling import resolve_base_model

    resolved = resolve_base_model("packaged:multilingual-e5-small", model_cache)
    tokenizer = AutoTokenizer.from_pretrained(resolved.location)
    prepared = prepare_entities(SHIPPED_ENTITIES)
    report = alignment_report(prepared.train + prepared.validation, tokenizer)
    assert report["entities"] == 1217 and report["ratio"] >= 0.99


# ---------------------------------------------------------------------------------------- CLI, validate, serve, report
# The wiring in the CLI (prepare/train/predict/validate/deploy), serve and report.


def invoke(*args):
    from typer.testing import CliRunner

    from hotelbot_cli.cli.app import app

    return CliRunner().invoke(app, list(args))


def test_cli_prepare_train_predict_validate_deploy_without_a_classifier(fast_train_env, monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINING_EPOCHS", "2")  # quality does not matter here (gate 0)
    sentiment = [json.loads(line) for line in SHIPPED_SENTIMENT.read_text("utf-8").splitlines()]
    picked = [r for label in SENTIMENT_LABELS for r in [x for x in sentiment if x["label"] == label][:5]]
    ents, sents = write_jsonl(tmp_path / "e.jsonl", tiny_entity_lines(16)), write_jsonl(tmp_path / "s.jsonl", picked)

    result = invoke("prepare", "--entities", str(ents), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["output"] == "data/entities" and doc["examples"] == 16
    assert invoke("prepare", "--sentiment", str(sents)).exit_code == 0
    bad = invoke("prepare", "--entities", str(write_jsonl(tmp_path / "bad.jsonl", [GOOD | {"entities": [
        {"start": 0, "end": 99, "label": "PERSON"}]}])))
    assert bad.exit_code == 1 and "bad.jsonl: line 1: entity 1 (PERSON 0-99): outside the text" in bad.stderr
    assert invoke("prepare", "x.json", "--entities", str(ents)).exit_code == 2

    result = invoke("train", "--model-type", "entities", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["version"], doc["components"], doc["metric"]) == ("v0001", ["entities"], "micro_f1")
    doc = json.loads(invoke("train", "--model-type", "sentiment", "--json").stdout)
    assert (doc["version"], doc["components"], doc["carried_from"]) == ("v0002", ["entities", "sentiment"], "v0001")
    doc = json.loads(invoke("train", "--model-type", "entities", "--json").stdout)
    assert doc["skipped"] and doc["version"] == "v0002"  # same data and config: carried over into v0002

    result = invoke("predict", "Soy Ana de la habitación 305", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["predictions"]
    assert row["intent"] is None and row["top_k"] == [] and row["sentiment"]["label"] in SENTIMENT_LABELS
    assert all(row["text"][e["start"]:e["end"]] == e["text"] for e in row["entities"])

    result = invoke("validate", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["metrics"] == {} and set(doc["components"]) == {"entities", "sentiment"}
    assert doc["components"]["entities"]["metric"] == "micro_f1" and doc["passed"]

    result = invoke("deploy", "v0002", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["gate"]["skipped"] == "no classifier component" and set(doc["gate"]["components"]) == {
        "entities", "sentiment"}
    assert set(doc["smoke"]) == {"entities", "sentiment"}


def test_cli_predict_keeps_its_keys_and_adds_entities_and_sentiment(registry):
    keys = {"text", "intent", "confidence", "top_k", "fallback", "entities", "sentiment"}
    result = invoke("predict", "Soy Ana de la habitación 305", "--version", "v0004", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model_version"] == "v0004" and set(doc["predictions"][0]) == keys
    assert doc["predictions"][0]["sentiment"]["label"] in SENTIMENT_LABELS
    (row,) = json.loads(invoke("predict", "hola", "--version", "v0002", "--json").stdout)["predictions"]
    assert set(row) == keys and row["entities"] == [] and row["sentiment"] is None and row["intent"]
    text = invoke("predict", "Soy Ana de la habitación 305", "--version", "v0004").stdout
    assert "sentiment=" in text


def test_validate_scores_every_component_and_gates_on_each(registry, monkeypatch):
    result = invoke("validate", "v0004", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["metrics"]["metric"] == "macro_f1" and set(doc["components"]) == {"entities", "sentiment"}
    entities = doc["components"]["entities"]
    assert entities["overall_score"] == pytest.approx(evaluate_entities(registry.get("v0004"))["micro_f1"])
    assert set(entities["metrics"]["per_type"]) == set(VALUES)
    assert registry.validation_of("v0004")["components"]["sentiment"]["metric"] == "macro_f1"
    monkeypatch.setenv("MIN_VALIDATION_SCORE", "1.0")
    result = invoke("validate", "v0004", "--json")
    doc = json.loads(result.stdout)
    assert result.exit_code == 3 and doc["failures"] and "gate failed" in result.stderr
    for name, c in doc["components"].items():
        assert c["passed"] == (c["overall_score"] >= 1.0)
        assert (f"{name} {c['metric']}" in " ".join(doc["failures"])) == (not c["passed"])


def test_deploy_gate_takes_the_scores_training_recorded_and_still_fails_below_the_threshold(registry, monkeypatch):
    """The deploy gate does not load entities/sentiment a second time to re-score them: it reads the score
    their training measured on the same (checksummed) split; `validate` re-measures and gets the same."""
    from hotelbot_cli.components.entities import EntityExtractorComponent
    from hotelbot_cli.components.sentiment import SentimentComponent
    from hotelbot_cli.pipeline.deploy import gate_version as _gate

    info = registry.get("v0004")
    recorded = {name: json.loads((info.path / name / "metrics.json").read_text()) for name in ("entities", "sentiment")}
    assert recorded["entities"]["overall_score"] == pytest.approx(evaluate_entities(info)["micro_f1"])
    assert recorded["sentiment"]["overall_score"] == pytest.approx(evaluate_sentiment(info)["macro_f1"])
    for cls in (EntityExtractorComponent, SentimentComponent):
        monkeypatch.setattr(cls, "score", lambda *a, **k: pytest.fail("the gate re-scored a component"))
    monkeypatch.setenv("MIN_VALIDATION_SCORE", "0.0")
    gate = _gate(registry, load_settings(), "v0004")
    assert gate["passed"], gate["failures"]
    for name, metrics in recorded.items():
        assert gate["components"][name] == {"metric": metrics["metric"], "overall_score": metrics["overall_score"]}
    worst = min(m["overall_score"] for m in recorded.values())
    monkeypatch.setenv("MIN_VALIDATION_SCORE", str(min(1.0, worst + 1e-6)))
    blocked = _gate(registry, load_settings(), "v0004")
    assert not blocked["passed"] and any(
        f"{name} {m['metric']}" in " ".join(blocked["failures"]) for name, m in recorded.items()
        if m["overall_score"] == worst)


def test_serve_analyze_returns_components_and_classify_is_unchanged(registry):
    from fastapi.testclient import TestClient

    from hotelbot_cli.pipeline.deploy import deploy
    from hotelbot_cli.serving import ServeSettings, create_app

    deploy(registry, load_settings(), "v0004")
    with TestClient(create_app(registry, ServeSettings(watch_interval_s=0))) as client:
        texts = ["  Soy Ana de la habitación 305", "Quiero reservar dos noches para 4 adultos"]
        response = client.post("/analyze", json={"texts": texts})
        assert response.status_code == 200, response.text
        doc = response.json()
        assert doc["model_version"] == "v0004" and len(doc["predictions"]) == 2
        for text, row in zip(texts, doc["predictions"]):
            assert row["text"] == text and row["sentiment"]["label"] in SENTIMENT_LABELS
            assert all(text[e["start"]:e["end"]] == e["text"] for e in row["entities"])
        assert sum(len(r["entities"]) for r in doc["predictions"]) >= 2
        classify = client.post("/classify", json={"text": texts[0]}).json()
        assert set(classify) == {"intent", "confidence", "top_k", "model_version", "fallback"}
        assert client.post("/analyze", json={"texts": [" "]}).status_code == 422


def test_report_shows_the_other_components(registry):
    from hotelbot_cli.reporting import build_report, render_html, render_markdown

    report = build_report(registry, "v0004", measure_latency=False, figures=False, min_score=0.0)
    doc = report.to_dict()
    assert set(doc["components"]) == {"entities", "sentiment"}
    entities = doc["components"]["entities"]
    assert entities["headline"]["metric"] == "micro_f1" and {r["label"] for r in entities["rows"]} == set(VALUES)
    assert doc["components"]["sentiment"]["carried_from"] is None and entities["carried_from"] == "v0003"
    assert {c["kind"] for c in doc["components"].values()} == {"labels"}
    markdown, html = render_markdown(report), render_html(report)
    assert "## Other components" in markdown and 'id="components"' in html
    for row in entities["rows"]:  # every label's F1, as recorded, in both renderings
        assert f"| {row['label']} |" in markdown and f"{row['f1']:.4f}" in markdown and f"{row['f1']:.4f}" in html
    assert build_report(registry, "v0002", measure_latency=False, figures=False).to_dict()["components"] == {}


def test_component_run_refuses_a_repeat_and_closes_the_monitor_when_training_fails(registry, monkeypatch):
    """The frame entities, sentiment and the generator share: repeat check, one MLflow run, monitor closed."""
    from types import SimpleNamespace

    from hotelbot_cli.components.base import training_run as component_run
    from hotelbot_cli.training.monitor import SystemMonitor

    v4 = registry.get("v0004")
    summary = v4.metadata["entities"]
    same = SimpleNamespace(fingerprint=summary["dataset_fingerprint"], train=[1, 2], validation=[3])
    with pytest.raises(AlreadyTrainedError, match="v0004"):
        with component_run(load_settings(), registry, "entities", "hotelbot-entities", same, summary["config"], {},
                           force=False):
            raise AssertionError("a repeat must be refused before the run starts")

    closed: list[bool] = []
    monkeypatch.setattr(SystemMonitor, "close", lambda self: closed.append(True))
    with pytest.raises(RuntimeError, match="boom"):
        with component_run(load_settings(), registry, "entities", "hotelbot-entities", same, summary["config"],
                           {"epochs": 1}, force=True) as (tracker, monitor):
            assert tracker.run_id and isinstance(monitor, SystemMonitor)
            raise RuntimeError("boom")
    assert closed == [True]


# ---------------------------------------------------------------------------------------- ONNX runtimes


@pytest.mark.parametrize("component", ["entities", "sentiment"])
def test_the_model_serves_on_the_runtime_its_export_chose_and_stores_only_that_graph(built, component):
    from hotelbot_cli.components.entities.onnx import load_version_extractor
    from hotelbot_cli.components.sentiment.classifier import SentimentClassifier

    info = ModelRegistry(built["root"]).get(built[component].version.name)
    folder = info.path / component
    spec = json.loads((folder / "runtime.json").read_text("utf-8"))
    chosen = spec["runtime"]
    assert set(spec["runtimes"]) == {"torch", "onnx-fp32", "onnx-int8"}  # all three measured, one kept
    for runtime, graph in (("onnx-fp32", "model.onnx"), ("onnx-int8", "model.int8.onnx")):
        assert (folder / graph).is_file() == (runtime == chosen)
        assert not (folder / f"{graph}.embeddings.data").exists()  # the embeddings are the weights' own file
    assert set(spec["files"]) == ({chosen} - {"torch"})
    loaded = (
        load_version_extractor(info) if component == "entities" else SentimentClassifier.from_version(info).predictor
    )
    assert loaded.runtime == chosen


@pytest.fixture(scope="module")
def forced_exports(built, tmp_path_factory):
    """The tagger of the built entities version exported again, once with fp32 chosen, once with int8 (the
    choice forced, so the graphs these tests read are there whatever the timings)."""
    from hotelbot_cli.components.entities import onnx as entity_onnx
    from hotelbot_cli.components.entities.tagger import EntityExtractor, save_entity_model

    info = ModelRegistry(built["root"]).get(built["entities"].version.name)
    reference = EntityExtractor.from_version(info)
    examples = read_prepared_entities(info.path / "entities" / "data").validation
    exports = {}
    with pytest.MonkeyPatch.context() as mp:
        for runtime in ("onnx-fp32", "onnx-int8"):
            mp.setattr(entity_onnx, "choose_runtime", lambda measured, tolerance, chosen=runtime: chosen)
            folder = tmp_path_factory.mktemp(runtime)
            save_entity_model(reference.model, reference.tokenizer, folder)
            spec = entity_onnx.export_entity_onnx(reference.model, reference.tokenizer, folder, examples, 0.5, 2)
            exports[runtime] = (folder, spec)
    return reference, exports


TRICKY = [
    "Soy Ana de la habitación 305",
    "hola",
    "Quiero reservar   dos noches para 4 adultos, llegamos el 15/08/2026 a las 10 <s> gracias",
    "una suite por 120 euros? " * 30,  # past max_length: truncated alike
    "soy pedro de la 1204, llegamos el lunes a las nueve y media",
]


def test_onnx_fp32_finds_torchs_entities_and_only_the_chosen_graph_is_kept(forced_exports):
    from hotelbot_cli.components.entities.onnx import OnnxEntityExtractor

    reference, exports = forced_exports
    folder, spec = exports["onnx-fp32"]
    assert spec["runtime"] == "onnx-fp32" and (folder / "model.onnx").is_file()
    assert not (folder / "model.int8.onnx").exists() and set(spec["files"]) == {"onnx-fp32"}
    onnx_x = OnnxEntityExtractor.from_dir(folder, "onnx-fp32")
    want, got = reference.extract_spans(TRICKY), onnx_x.extract_spans(TRICKY)
    assert [[x[:3] for x in t] for t in got] == [[x[:3] for x in t] for t in want]
    assert any(want) and all(abs(a[3] - b[3]) < 1e-3 for t, u in zip(got, want) for a, b in zip(t, u))
    assert spec["runtimes"]["onnx-fp32"]["same_entities_as_torch"] == 1.0


def test_onnx_int8_reads_the_shared_embeddings_and_answers_each_text_alone(forced_exports):
    from hotelbot_cli.components.entities.onnx import OnnxEntityExtractor

    _, exports = forced_exports
    folder, spec = exports["onnx-int8"]
    assert (folder / "model.int8.onnx").is_file() and not (folder / "model.onnx").exists()
    assert "embeddings.safetensors" in spec["files"]["onnx-int8"]  # the fp32 matrix, not a quantized copy
    assert not (folder / "model.int8.onnx.embeddings.data").exists()
    onnx_x = OnnxEntityExtractor.from_dir(folder, "onnx-int8")
    assert onnx_x.extract_spans(TRICKY) == [onnx_x.extract_spans([t])[0] for t in TRICKY]  # batch-independent


def test_hotelbot_runtime_for_the_entity_model(forced_exports, monkeypatch, caplog):
    from hotelbot_cli.components.entities.onnx import load_entity_extractor

    _, exports = forced_exports
    folder, _ = exports["onnx-int8"]
    assert load_entity_extractor(folder, "v0003").runtime == "onnx-int8"  # what runtime.json chose
    monkeypatch.setenv("HOTELBOT_RUNTIME", "onnx-fp32")  # asked for, but not kept: the chosen one, not torch
    assert load_entity_extractor(folder, "v0003").runtime == "onnx-int8"
    assert "has no onnx-fp32 model; using the onnx-int8 it was exported for" in caplog.text
    monkeypatch.setenv("HOTELBOT_RUNTIME", "torch")
    assert load_entity_extractor(folder, "v0003").runtime == "torch"
    broken = folder.parent / "broken"
    shutil.copytree(folder, broken)
    (broken / "runtime.json").write_text("{not json")
    assert load_entity_extractor(broken, "v0003").runtime == "torch"  # torch asked: runtime.json not even read


def test_a_failed_export_leaves_no_graph_behind(built, tmp_path, monkeypatch):
    from hotelbot_cli.components.entities import onnx as entity_onnx
    from hotelbot_cli.components.entities.tagger import EntityExtractor, save_entity_model
    from hotelbot_cli.errors import ModelError

    info = ModelRegistry(built["root"]).get(built["entities"].version.name)
    reference = EntityExtractor.from_version(info)
    save_entity_model(reference.model, reference.tokenizer, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    def broken(*args, **kwargs):
        raise RuntimeError("tokenizer check exploded")

    monkeypatch.setattr(entity_onnx, "_check_tokenizer", broken)  # after the graphs were written
    with pytest.raises(ModelError, match="ONNX export failed: tokenizer check exploded"):
        entity_onnx.export_entity_onnx(reference.model, reference.tokenizer, tmp_path, [], 0.5, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
