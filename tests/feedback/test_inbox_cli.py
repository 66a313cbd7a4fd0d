"""`hotelbot inbox` (list, label, export/import) and `hotelbot prepare --add` through the CLI: exit codes,
--json, one error line, nothing changed on disk after an error."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import TINY_INTENTS
from hotelbot_cli.cli.app import app
from hotelbot_cli.feedback.capture import CaptureStore, new_request_id

runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def answer(intent, confidence, fallback=False, second="breakfast_info"):
    return {"intent": intent, "confidence": confidence, "fallback": fallback,
            "top_k": [{"intent": intent, "confidence": confidence}, {"intent": second, "confidence": 0.1}]}


@pytest.fixture
def capture(isolated_env):
    store = CaptureStore(isolated_env / "capture")
    for text, a in [("¿hasta qué hora puedo desayunar?", answer("greeting", 0.4)),
                    ("¿Hasta que hora puedo desayunar?", answer("greeting", 0.35)),
                    ("¿quién ganó el partido? [bold]", answer("out_of_scope", 0.3, True, "get_news"))]:
        store.observe(new_request_id(), "/classify", "v0001", text, a)
    store.close()
    return isolated_env / "capture"


def snapshot(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def test_inbox_lists_groups_most_frequent_first(capture):
    result = invoke("inbox", "--capture", str(capture), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["messages"], doc["group_count"], doc["labeled_groups"]) == (3, 2, 0)
    assert [g["count"] for g in doc["groups"]] == [2, 1]
    assert doc["groups"][0]["suggestions"] == ["greeting", "breakfast_info"]
    table = invoke("inbox", "--capture", str(capture))
    assert table.exit_code == 0 and "3 captured message(s) in 2 group(s), 0 labeled" in table.stdout
    assert "inbox label" in table.stderr and "[bold]" in table.stdout  # a guest's text is never markup


def test_inbox_without_a_capture_directory_is_one_line(isolated_env):
    result = invoke("inbox", "--capture", str(isolated_env / "nowhere"))
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "serve --capture" in result.stderr
    assert not (isolated_env / "nowhere").exists()


def test_label_in_the_terminal_with_undo(capture):
    # group 1 (breakfast): "o" marks it out_of_scope, "u" undoes that (back to group 1), "2" takes the 2nd
    # suggestion; group 2: "q" quits
    result = invoke("inbox", "label", "--capture", str(capture), input="o\nu\n2\nq\n")
    assert result.exit_code == 0, result.output
    assert "undone" in result.stderr and "prepare --add" in result.stderr
    assert "[1] greeting  [2] breakfast_info  [o] out_of_scope  [s] skip  [u] undo  [q] quit" in result.stdout
    labeled = [json.loads(line) for line in (capture / "labeled.jsonl").read_text().splitlines()]
    assert labeled == [{"text": "¿hasta qué hora puedo desayunar?", "intent": "breakfast_info"},
                       {"text": "¿Hasta que hora puedo desayunar?", "intent": "breakfast_info"}]
    again = invoke("inbox", "label", "--capture", str(capture), input="Bad Name\nget_news\n")  # the one left
    assert again.exit_code == 0 and "invalid intent name" in again.stderr
    doc = json.loads(invoke("inbox", "--capture", str(capture), "--json").stdout)
    assert [g["label"] for g in doc["groups"]] == ["breakfast_info", "get_news"]


def test_csv_round_trip_and_a_bad_csv_changes_nothing(capture, isolated_env):
    csv_path = isolated_env / "inbox.csv"
    assert invoke("inbox", "export", str(csv_path), "--capture", str(capture)).exit_code == 0
    rows = csv_path.read_text("utf-8").splitlines()
    assert len(rows) == 4 and rows[0].endswith(",label")
    bad = isolated_env / "bad.csv"
    bad.write_text("\n".join([rows[0], rows[1] + "breakfast_info", rows[3] + "No Valid"]) + "\n", "utf-8")
    before = snapshot(capture)
    refused = invoke("inbox", "import", str(bad), "--capture", str(capture))
    assert refused.exit_code == 1 and "bad.csv:3: invalid intent name" in refused.stderr
    assert snapshot(capture) == before
    good = isolated_env / "good.csv"
    good.write_text("\n".join([rows[0], rows[1] + "breakfast_info", rows[2] + "breakfast_info",
                               rows[3] + "out_of_scope"]) + "\n", "utf-8")
    done = invoke("inbox", "import", str(good), "--capture", str(capture), "--json")
    assert done.exit_code == 0 and json.loads(done.stdout)["labeled_groups"] == 2
    assert len((capture / "labeled.jsonl").read_text().splitlines()) == 3


@pytest.fixture
def prepared(isolated_env):
    data = isolated_env / "tiny.json"
    data.write_text(json.dumps({"intents": TINY_INTENTS}, ensure_ascii=False), "utf-8")
    test = isolated_env / "tiny_test.jsonl"
    test.write_text("".join(json.dumps({"text": t, "intent": i}, ensure_ascii=False) + "\n" for t, i in
                            [("ponme el telediario", "get_news"), ("saludos cordiales", "greeting")]))
    assert invoke("prepare", str(data)).exit_code == 0
    return isolated_env / "data" / "processed"


def write_labeled(path, rows):
    path.write_text("".join(json.dumps({"text": t, "intent": i}, ensure_ascii=False) + "\n" for t, i in rows))
    return path


def test_prepare_add_merges_labeled_messages(prepared, isolated_env):
    labeled = write_labeled(isolated_env / "labeled.jsonl", [
        ("¿hasta qué hora puedo desayunar?", "breakfast_info"),
        ("me puedo ir a las dos", "late_checkout"),  # a new intent
        ("Hola buenas!", "greeting"),  # the data holds "hola buenas": skipped
    ])
    train_before = (prepared / "train.jsonl").read_text().splitlines()
    result = invoke("prepare", "--add", str(labeled), "--json")
    assert result.exit_code == 0, result.output
    change = json.loads(result.stdout)
    assert (change["added"], change["skipped_duplicates"], change["new_intents"]) == (2, 1, ["late_checkout"])
    assert change["added_per_intent"] == {"breakfast_info": 1, "late_checkout": 1}
    train_after = (prepared / "train.jsonl").read_text().splitlines()
    assert train_after[: len(train_before)] == train_before and len(train_after) == len(train_before) + 2
    summary = json.loads((prepared / "dataset.json").read_text())
    assert summary["fingerprint"] == change["fingerprint_after"] != change["fingerprint_before"]
    assert summary["additions"][0]["added"] == 2
    again = invoke("prepare", "--add", str(labeled))  # nothing new the second time
    assert again.exit_code == 0 and "nothing new" in again.stderr


@pytest.mark.parametrize("rows, fragment", [
    ([("Hola Buenas", "get_news")], "contradict the prepared data"),
    ([("Ponme el telediario!", "get_news")], "also in the independent test set"),
    ([("hola", "Not A Label")], "invalid intent"),
])
def test_prepare_add_refuses_and_changes_nothing(prepared, isolated_env, rows, fragment):
    labeled = write_labeled(isolated_env / "labeled.jsonl", rows)
    before = snapshot(prepared)
    result = invoke("prepare", "--add", str(labeled))
    assert result.exit_code == 1 and fragment in result.stderr, result.output
    assert result.stderr.strip().splitlines()[0].startswith("error:")
    assert snapshot(prepared) == before


def test_prepare_add_usage_errors(prepared, isolated_env):
    labeled = write_labeled(isolated_env / "labeled.jsonl", [("hola", "greeting")])
    both = invoke("prepare", str(isolated_env / "tiny.json"), "--add", str(labeled))
    assert both.exit_code == 2 and "exactly one of" in both.stderr
    seeded = invoke("prepare", "--add", str(labeled), "--seed", "3")
    assert seeded.exit_code == 2


def test_a_spreadsheet_saved_csv_round_trips(capture, isolated_env):
    """Excel in Spanish saves with ";", a byte-order mark and CRLF; a guest's text may look like a formula."""
    store = CaptureStore(capture)
    store.observe(new_request_id(), "/classify", "v0001", "=HYPERLINK(\"http://x\")", answer("greeting", 0.2))
    store.close()
    csv_path = isolated_env / "inbox.csv"
    assert invoke("inbox", "export", str(csv_path), "--capture", str(capture)).exit_code == 0
    raw = csv_path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"'=HYPERLINK" in raw  # never a live formula in a spreadsheet
    assert b",=HYPERLINK" not in raw and b',"=HYPERLINK' not in raw
    rows = raw.decode("utf-8-sig").splitlines()
    semicolon = [";".join(f'"{c}"' for c in next(__import__("csv").reader([row]))) for row in rows]
    semicolon = [semicolon[0]] + [r[:-2] + '"out_of_scope"' if "HYPERLINK" in r else r for r in semicolon[1:]]
    saved = isolated_env / "saved.csv"
    saved.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(semicolon).encode("utf-8") + b"\r\n")
    result = invoke("inbox", "--capture", str(capture), "import", str(saved), "--json")  # --capture before too
    assert result.exit_code == 0, result.output
    labeled = [json.loads(line) for line in (capture / "labeled.jsonl").read_text().splitlines()]
    assert labeled == [{"text": '=HYPERLINK("http://x")', "intent": "out_of_scope"}]


def test_the_same_text_answered_two_ways_is_two_groups(isolated_env):
    store = CaptureStore(isolated_env / "capture")
    store.observe(new_request_id(), "/classify", "v0001", "la tele no va", answer("complaint", 0.4))
    store.observe(new_request_id(), "/classify", "v0002", "la tele no va", answer("housekeeping", 0.4))
    store.close()
    doc = json.loads(invoke("inbox", "--capture", str(isolated_env / "capture"), "--json").stdout)
    assert sorted(g["group"] for g in doc["groups"]) == ["complaint|la tele no va", "housekeeping|la tele no va"]


def test_prepare_add_replaces_masked_data_with_made_up_values(prepared, isolated_env):
    labeled = write_labeled(isolated_env / "labeled.jsonl", [("soy <PERSON>, ¿a qué hora es el desayuno?",
                                                              "breakfast_info")])
    change = json.loads(invoke("prepare", "--add", str(labeled), "--json").stdout)
    assert change["placeholders_replaced"] == 1
    train = (prepared / "train.jsonl").read_text("utf-8")
    assert "soy Laura Gómez, ¿a qué hora es el desayuno?" in train and "<PERSON>" not in train
