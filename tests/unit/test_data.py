import json

import pytest

from conftest import REPO
from hotelbot_cli.data import (
    Example, clean_text, fingerprint, load_examples, near_duplicate_key, prepare, read_prepared,
    stratified_split, write_prepared,
)
from hotelbot_cli.errors import DataError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def test_loads_all_four_formats_to_the_same_examples(tmp_path):
    records = [{"text": "hola", "intent": "greeting"}, {"text": "adiós", "intent": "goodbye"}]
    as_list = write(tmp_path, "a.json", json.dumps(records, ensure_ascii=False))
    as_dict = write(tmp_path, "b.json", json.dumps({"intents": {"greeting": ["hola"], "goodbye": ["adiós"]}}))
    as_jsonl = write(tmp_path, "c.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    as_csv = write(tmp_path, "d.csv", "text,intent\nhola,greeting\n\"adiós\",goodbye\n")
    expected = {("hola", "greeting"), ("adiós", "goodbye")}
    for path in (as_list, as_dict, as_jsonl, as_csv):
        assert {(e.text, e.intent) for _, e in load_examples(path)} == expected, path


@pytest.mark.parametrize("name,content,fragment", [
    ("bad.jsonl", '{"text": "hola", "intent": "greeting"}\n{"text": "x", "intent": "a"}\n{not json}\n', "line 3"),
    ("bad.json", '[{"text": "hola", "intent": "greeting"},\n {"text": }]', "line 2"),
    ("bad2.json", '[{"text": "hola"}]', 'item 1: missing field(s) intent'),
    ("bad.csv", "texto,etiqueta\nhola,greeting\n", "row 1"),
    ("bad2.csv", "text,intent\nhola,greeting\nuna,dos,tres\n", "row 3"),
    ("num.jsonl", '{"text": 5, "intent": "greeting"}\n', '"text" must be a string'),
    ("data.txt", "hola", "unsupported format .txt"),
    ("shape.json", '{"foo": 1}', "expected a JSON list"),
])
def test_malformed_input_names_file_and_location(tmp_path, name, content, fragment):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as err:
        load_examples(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_examples(tmp_path / "nope.json")
    with pytest.raises(DataError, match="is a directory"):
        load_examples(tmp_path)


def test_non_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,intent\nhabitación,book_room\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_examples(path)


def test_empty_text_rejected_with_location(tmp_path):
    path = write(tmp_path, "e.jsonl", '{"text": "hola", "intent": "greeting"}\n{"text": "   ", "intent": "goodbye"}\n')
    with pytest.raises(DataError, match="line 2: empty text"):
        prepare(path)


def test_text_with_two_labels_rejected_naming_both(tmp_path):
    path = write(tmp_path, "c.jsonl", '{"text": "hola", "intent": "greeting"}\n{"text": "adiós", "intent": "goodbye"}\n'
                 '{"text": "hola ", "intent": "goodbye"}\n')
    with pytest.raises(DataError) as err:
        prepare(path)
    assert "line 3" in str(err.value) and "'goodbye'" in str(err.value) and "'greeting'" in str(err.value)


def test_fewer_than_two_labels_rejected(tmp_path):
    path = write(tmp_path, "one.json", json.dumps({"intents": {"greeting": ["hola", "buenas"]}}))
    with pytest.raises(DataError, match="at least 2 are needed"):
        prepare(path)


def test_invalid_label_rejected(tmp_path):
    path = write(tmp_path, "l.jsonl", '{"text": "hola", "intent": "Greeting!"}\n')
    with pytest.raises(DataError, match="invalid intent"):
        prepare(path)


def test_clean_keeps_accents_case_emoji_and_collapses_space():
    assert clean_text("  ¿A  qué\thora\u200b es el Desayuno? 😊 ") == "¿A qué hora es el Desayuno? 😊"
    # NFD input (e + combining accent) is composed, so identical texts compare equal
    assert clean_text("habitacio\u0301n") == "habitación"


def test_exact_duplicates_removed_with_a_warning(tmp_path):
    path = write(tmp_path, "d.json", json.dumps({"intents": {"greeting": ["hola", "hola", " hola"],
                                                             "goodbye": ["adiós", "chao"]}}))
    prepared = prepare(path, validation_split=0.5)
    assert prepared.summary["examples"] == 3
    assert any(w.code == "duplicates_removed" for w in prepared.warnings)


def test_split_is_stratified_deterministic_and_disjoint():
    examples = [Example(f"{label} texto {i}", label) for label in ("a_x", "b_y", "c_z") for i in range(10)]
    train, val = stratified_split(examples, 0.2, seed=1)
    assert sorted(e.intent for e in val) == ["a_x"] * 2 + ["b_y"] * 2 + ["c_z"] * 2
    assert not {e.text for e in train} & {e.text for e in val}
    assert len(train) + len(val) == 30
    again = stratified_split(examples, 0.2, seed=1)
    assert (train, val) == again
    other = stratified_split(examples, 0.2, seed=2)
    assert {e.text for e in other[1]} != {e.text for e in val}


def test_fingerprint_depends_on_content_not_order():
    a = [Example("hola", "greeting"), Example("adiós", "goodbye")]
    assert fingerprint(a, []) == fingerprint(list(reversed(a)), [])
    assert fingerprint(a, []) != fingerprint(a[:1], a[1:])
    assert fingerprint(a, []) != fingerprint([Example("hola", "goodbye"), a[1]], [])


def test_quality_warnings(tmp_path):
    intents = {"big_one": [f"frase número {i}" for i in range(40)], "small_one": ["uno", "dos", "tres", "Uno!"]}
    prepared = prepare(write(tmp_path, "w.json", json.dumps({"intents": intents})), validation_split=0.5, seed=3)
    codes = {w.code for w in prepared.warnings}
    assert {"few_examples", "class_imbalance"} <= codes
    assert near_duplicate_key("¿Úno?") == near_duplicate_key("uno")


def test_near_duplicates_across_split_are_reported(tmp_path):
    intents = {"greeting": ["hola", "¡Hola!", "HOLA", "buenas", "qué tal", "saludos"],
               "goodbye": ["adiós", "chao", "hasta luego", "nos vemos", "bye", "me voy"]}
    prepared = prepare(write(tmp_path, "n.json", json.dumps({"intents": intents})), validation_split=0.5, seed=0)
    keys_train = {near_duplicate_key(e.text) for e in prepared.train}
    has_near = any(near_duplicate_key(e.text) in keys_train for e in prepared.validation)
    assert has_near == any(w.code == "near_duplicates_across_split" for w in prepared.warnings)


def test_write_and_read_prepared_roundtrip_and_tamper_detection(tmp_path, tiny_data):
    prepared = prepare(tiny_data)
    out = write_prepared(prepared, tmp_path / "processed")
    again = read_prepared(out)
    assert again.fingerprint == prepared.fingerprint
    assert again.train == prepared.train and again.validation == prepared.validation
    with open(out / "train.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "intruso", "intent": "greeting"}) + "\n")
    with pytest.raises(DataError, match="fingerprint mismatch"):
        read_prepared(out)


def test_read_prepared_missing_says_what_to_run(tmp_path):
    with pytest.raises(DataError) as err:
        read_prepared(tmp_path / "nothing")
    assert "hotelbot prepare" in str(err.value)


def test_the_clinc150_analysis_scores_macro_f1_as_hotelbot_does():
    """benchmarks/clinc150_oos.py sweeps thresholds with a vectorised macro-F1; it must equal the product's."""
    import sys

    import numpy as np

    from hotelbot_cli.evaluation import classification_metrics

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from clinc150_oos import macro_f1
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    rng = np.random.default_rng(0)
    labels = [f"intent_{i}" for i in range(12)]
    for _ in range(5):
        y = rng.integers(0, 10, 200)  # labels 10 and 11 never true
        pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 11, 200))  # label 11 never predicted either
        expected = classification_metrics([labels[i] for i in y], [labels[i] for i in pred], labels)["macro_f1"]
        assert macro_f1(y, pred, len(labels)) == pytest.approx(expected)


# ---------------------------------------------------------------- the independent test set


def test_prepare_refuses_training_texts_of_the_test_set_and_records_it(tmp_path):
    train = write(tmp_path, "intents.json", json.dumps({"intents": {
        "greeting": ["hola", "buenos días", "qué tal"], "wifi_info": ["clave del wifi", "no va el wifi", "red wifi"]}},
        ensure_ascii=False))
    test = write(tmp_path, "intents_test.jsonl", '{"text": "buenas noches", "intent": "greeting"}\n'
                                                 '{"text": "¿hay wifi en la piscina?", "intent": "wifi_info"}\n')
    prepared = prepare(train)  # the sibling <name>_test.jsonl is found by default
    assert prepared.summary["test_set"]["path"] == str(test) and prepared.summary["test_set"]["examples"] == 2
    assert prepared.summary["test_set"]["per_intent"] == {"greeting": 1, "wifi_info": 1}
    assert len(prepared.summary["test_set"]["sha256"]) == 64
    leaked = write(tmp_path, "leaked.jsonl", '{"text": "Buenos Dias!", "intent": "greeting"}\n'
                                             '{"text": "red wifi", "intent": "wifi_info"}\n')
    with pytest.raises(DataError, match=r"2 training text\(s\) also in the independent test set .*leaked.jsonl") as err:
        prepare(train, test_set=leaked)  # case, accents and punctuation do not hide an overlap
    assert "stay unseen" in err.value.hint
    other = write(tmp_path, "other.jsonl", '{"text": "quiero un taxi", "intent": "airport_transfer"}\n'
                                           '{"text": "hola amigos", "intent": "greeting"}\n')
    with pytest.raises(DataError, match="intent\\(s\\) the training file .* lacks: airport_transfer"):
        prepare(train, test_set=other)
    (tmp_path / "solo").mkdir()
    solo = write(tmp_path / "solo", "intents.json", train.read_text("utf-8"))
    assert prepare(solo).summary["test_set"] is None


def test_the_shipped_intent_data_and_its_independent_test_set():
    """>= 100 examples per intent, >= 15 test messages per intent, the test set unseen by the training data
    (no shared text, no near-duplicate: character 3-5-gram TF-IDF cosine >= 0.8), and no near-duplicate
    pair of training texts with different intents (cosine >= 0.9)."""
    import numpy as np
    from collections import Counter
    from sklearn.feature_extraction.text import TfidfVectorizer

    intents = json.loads((REPO / "datasets/hotel_intents_es.json").read_text("utf-8"))["intents"]
    assert min(len(v) for v in intents.values()) >= 100, {k: len(v) for k, v in intents.items() if len(v) < 100}
    prepared = prepare(REPO / "datasets/hotel_intents_es.json")  # refuses any shared text
    test = [json.loads(line) for line in (REPO / "datasets/hotel_intents_es_test.jsonl").read_text("utf-8").splitlines()]
    counts = Counter(r["intent"] for r in test)
    assert set(counts) == set(intents) and min(counts.values()) >= 15, counts
    assert prepared.summary["test_set"]["examples"] == len(test)
    texts = [t for v in intents.values() for t in v]
    labels = [k for k, v in intents.items() for _ in v]
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), preprocessor=near_duplicate_key).fit(texts)
    x = vectorizer.transform(texts)
    close_to_test = (vectorizer.transform([r["text"] for r in test]) @ x.T).max(axis=1).toarray().ravel()
    assert [r["text"] for r, s in zip(test, close_to_test) if s >= 0.8] == []
    similar = (x @ x.T).toarray()
    np.fill_diagonal(similar, 0)
    pairs = [(texts[i], texts[j]) for i, j in np.argwhere(np.triu(similar) >= 0.9) if labels[i] != labels[j]]
    assert pairs == []
    holdout = json.loads((REPO / "datasets/hotel_intents_es_holdout.json").read_text("utf-8"))
    keys = {near_duplicate_key(t) for t in texts}
    assert [h["text"] for h in holdout if near_duplicate_key(h["text"]) in keys] == []


# ---------------------------------------------------------------- metrics without scikit-learn


def _sklearn_metrics(y_true, y_pred, labels):
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    all_labels = list(labels) + sorted(set(y_pred) - set(labels))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)), "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]), "macro_f1": float(macro[2]), "weighted_f1": float(weighted[2]),
        "per_intent": {label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                               "support": int(s[i])} for i, label in enumerate(labels)},
        "matrix": confusion_matrix(y_true, y_pred, labels=all_labels).tolist(),
    }


@pytest.mark.parametrize("seed", range(40))
def test_classification_metrics_are_scikit_learns_to_the_last_bit(seed):
    """What validate, deploy's gate and training report must not change: every figure equals scikit-learn's
    exactly (==, not approx), also with labels never true, never predicted, or predicted outside the list."""
    import numpy as np

    from hotelbot_cli.evaluation import classification_metrics

    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 15))
    labels = [f"intent_{i}" for i in range(k)]
    n = int(rng.integers(1, 400))
    y = rng.integers(0, max(1, k - int(rng.integers(0, 3))), n)  # sometimes the last labels are never true
    noise = rng.integers(0, k + int(rng.integers(0, 3)), n)  # sometimes a label outside the list is predicted
    pred = np.where(rng.random(n) < rng.random(), y, noise)
    names = labels + ["older_intent", "out_of_scope"]
    y_true, y_pred = [names[i] for i in y], [names[i] for i in pred]
    got = classification_metrics(y_true, y_pred, labels)
    want = _sklearn_metrics(y_true, y_pred, labels)
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1", "per_intent"):
        assert got[key] == want[key], key
    assert got["confusion_matrix"]["matrix"] == want["matrix"]


@pytest.mark.parametrize("y_true, y_pred, labels, message", [
    (["a", "b"], ["a"], ["a", "b"], "2 true labels but 1 predictions"),
    ([], [], ["a", "b"], "no examples"),
    (["a", "b"], ["a", "b"], ["a", "b", "a"], "must not repeat"),
    (["x", "x"], ["a", "b"], ["a", "b"], "at least one of the labels"),
])
def test_classification_metrics_refuse_what_scikit_learn_refused(y_true, y_pred, labels, message):
    from hotelbot_cli.evaluation import classification_metrics

    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_pred, labels)
