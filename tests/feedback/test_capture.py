"""Capture of live traffic (issue 27): personal data masked before anything is written, the append-only
capture files (owner-only, crash-safe, retention and size limits), and the inbox's grouping, labels, undo
and CSV round trip."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat

import pytest

from hotelbot_cli.errors import ConfigError, DataError
from hotelbot_cli.feedback.capture import CapturePolicy, CaptureStore, new_request_id, read_captured
from hotelbot_cli.feedback.inbox import Inbox
from hotelbot_cli.feedback.pii import mask

MASKED = [
    ("Hola, soy Ana García, mi móvil es +34 600 123 456 y mi correo ana.garcia@gmail.com",
     "Hola, soy <PERSON>, mi móvil es <PHONE> y mi correo <EMAIL>"),
    ("Llámenme al 600123456 o al 91 123 45 67, habitación 1204",
     "Llámenme al <PHONE> o al <PHONE>, habitación 1204"),
    ("Pagaré con la tarjeta 4111 1111 1111 1111, caduca 08/27", "Pagaré con la tarjeta <CARD>, caduca 08/27"),
    ("cargo en 4111-1111-1111-1111 por favor", "cargo en <CARD> por favor"),
    ("Mi DNI es 12345678Z y el NIE X1234567L; pasaporte PAA123456",
     "Mi DNI es <ID> y el NIE <ID>; pasaporte <ID>"),
    ("Reserva a nombre de Luis Pérez del 3 al 5 de marzo para 2 adultos, 120 € la noche",
     "Reserva a nombre de <PERSON> del 3 al 5 de marzo para 2 adultos, 120 € la noche"),
    ("me llamo maría josé y llego tarde", "me llamo <PERSON> y llego tarde"),  # an explicit cue: any case
    ("mi móvil es 612.345.678, soy Ana", "mi móvil es <PHONE>, soy <PERSON>"),
    ("llamen al 55 1234 5678 (México)", "llamen al <PHONE> (México)"),
    ("DNI 12.345.678-Z y pasaporte: AB1234567", "DNI <ID> y pasaporte: <ID>"),
    ("cuenta 0049 1500 05 1234567892, CLABE 012180015678912345", "cuenta <ACCOUNT>, CLABE <ACCOUNT>"),
    ("a nombre de juan pérez del 3 al 5", "a nombre de <PERSON> del 3 al 5"),
    ("iban es91 2100 0418 4502 0005 1332", "iban <IBAN>"),
    ("IBAN ES91 2100 0418 4502 0005 1332 para la devolución", "IBAN <IBAN> para la devolución"),
    ("tel. 0034 965 123 456, whatsapp", "tel. <PHONE>, whatsapp"),
]
KEPT = [  # not personal data: what a reviewer needs to label the message
    "¿El restaurante abre el 15/08/2026 a las 14:15?",
    "estamos en las habitaciones 1204 1205 1206",
    "del 12-08-2026 al 15-08-2026, reserva 12345678 a nombre de la empresa",
    "soy alérgico al gluten",
    "Somos 2 adultos y 1 niño, del 3 al 10 de agosto, habitación 1204",
    "el precio es 1.200 € por 7 noches",
    "¿la wifi del piso 3 es la 'Faro2024'?",
]


@pytest.mark.parametrize("text, expected", MASKED)
def test_personal_data_is_masked(text, expected):
    assert mask(text).text == expected


@pytest.mark.parametrize("text", KEPT)
def test_what_is_not_personal_stays(text):
    assert mask(text).text == text and not mask(text).masked


def test_person_spans_from_the_entity_model_are_masked_first():
    text = "Preguntaba por Elena, que debería estar en la 1204"
    assert mask(text).text == text  # no self-introduction cue: only a model finds this name
    masked = mask(text, [(15, 20)])
    assert masked.text == "Preguntaba por <PERSON>, que debería estar en la 1204" and masked.counts == {"person": 1}


def answer(intent="late_checkout", confidence=0.9, fallback=False, second="late_checkout"):
    return {"intent": intent, "confidence": confidence, "fallback": fallback,
            "top_k": [{"intent": intent, "confidence": confidence}, {"intent": second, "confidence": 0.05}]}


def test_only_fallbacks_and_low_confidence_answers_are_captured(tmp_path):
    store = CaptureStore(tmp_path / "capture", CapturePolicy(below_confidence=0.6))
    assert store.observe(new_request_id(), "/classify", "v0001", "¿check-out a las 2?", answer()) is None
    low = store.observe(new_request_id(), "/classify", "v0001", "salgo tarde", answer(confidence=0.41))
    oos = store.observe(new_request_id(), "/classify", "v0001", "¿quién ganó?", answer("out_of_scope", 0.3, True))
    assert (low["reason"], oos["reason"]) == ("low_confidence", "fallback")
    records = list(read_captured(tmp_path / "capture"))
    assert [r["text"] for r in records] == ["salgo tarde", "¿quién ganó?"]
    assert set(records[0]) == {"schema", "id", "at", "reason", "endpoint", "model_version", "text", "masked",
                               "intent", "confidence", "top_k", "feedback"}


def test_an_open_directory_holding_files_is_refused_not_chmod_ed(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    (shared / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="readable by other users"):
        CaptureStore(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_the_capture_directory_and_files_are_owner_only(tmp_path):
    root = tmp_path / "capture"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)  # an empty directory is tightened
    store = CaptureStore(root)
    store.observe(new_request_id(), "/classify", "v0001", "hola", answer(confidence=0.1))
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in root.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_nothing_personal_reaches_the_disk(tmp_path):
    store = CaptureStore(tmp_path / "capture")
    rid = new_request_id()
    store.observe(rid, "/classify", "v0001", "soy Ana García, llámeme al 600 123 456", answer(confidence=0.9))
    store.feedback(rid, "late_checkout", False)
    store.close()
    for path in (tmp_path / "capture").iterdir():
        data = path.read_bytes()
        assert b"600 123 456" not in data and "García".encode() not in data, path.name


def test_feedback_captures_a_served_request_and_refuses_unknown_ids(tmp_path):
    store = CaptureStore(tmp_path / "capture")
    rid = new_request_id()
    store.observe(rid, "/classify", "v0001", "¿me puedo ir a las dos?", answer(confidence=0.95))
    assert list(read_captured(tmp_path / "capture")) == []  # confident: not captured on its own
    record = store.feedback(rid, "late_checkout", False)
    assert record["reason"] == "feedback" and record["feedback"] == {"intent": "late_checkout"}
    assert store.feedback(new_request_id(), None, True) is None  # never served here
    assert store.feedback("../../etc/passwd", None, True) is None
    other = CaptureStore(tmp_path / "capture")  # another worker process sharing the directory
    assert other.feedback(rid, None, True)["feedback"] == {"intent": "late_checkout"}  # flagged once: the first
    assert len([r for r in read_captured(tmp_path / "capture") if r["reason"] == "feedback"]) == 1


def test_a_flagged_request_is_captured_once_and_never_wipes_history(tmp_path):
    root = tmp_path / "capture"
    store = CaptureStore(root, CapturePolicy(max_bytes=2048))
    yesterday = root / f"captured-{(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()}.jsonl"
    yesterday.write_text('{"schema": 1}\n')
    rid = new_request_id()
    store.observe(rid, "/classify", "v0001", "hola", answer(confidence=0.9))
    for _ in range(50):  # a client flagging the same answer again and again
        store.feedback(rid, None, True)
    assert len(list(read_captured(root))) == 1 and yesterday.exists()
    huge = "hola " * 1000  # one record over the whole limit: dropped, and nothing older deleted for it
    assert store.observe(new_request_id(), "/classify", "v0001", huge, answer(confidence=0.1)) is None
    assert yesterday.exists() and store.dropped == 1 and "is full" in store.dropped_warning()
    assert store.dropped_warning() is None  # once a day


def test_a_torn_last_line_is_skipped(tmp_path):
    store = CaptureStore(tmp_path / "capture")
    store.observe(new_request_id(), "/classify", "v0001", "uno", answer(confidence=0.1))
    day_file = next((tmp_path / "capture").glob("captured-*.jsonl"))
    with day_file.open("ab") as f:
        f.write(b'{"schema": 1, "id": "abc", "te')  # a crash in the middle of a write
    store.observe(new_request_id(), "/classify", "v0001", "dos", answer(confidence=0.1))
    assert [r["text"] for r in read_captured(tmp_path / "capture")] == ["uno", "dos"]  # only the torn line lost
    assert day_file.read_bytes().split(b"\n")[1] == b'{"schema": 1, "id": "abc", "te'


def test_retention_and_size_limits(tmp_path):
    root = tmp_path / "capture"
    store = CaptureStore(root, CapturePolicy(retention_days=7, max_bytes=4096))
    today = dt.datetime.now(dt.timezone.utc).date()
    old = root / f"captured-{(today - dt.timedelta(days=30)).isoformat()}.jsonl"
    old.write_text("{}\n")
    yesterday = root / f"captured-{(today - dt.timedelta(days=1)).isoformat()}.jsonl"
    yesterday.write_text("x" * 3800 + "\n")
    store.observe(new_request_id(), "/classify", "v0001", "hola " * 50, answer(confidence=0.1))
    assert not old.exists()  # past the retention
    assert not yesterday.exists()  # the oldest day went to make room
    for _ in range(40):
        store.observe(new_request_id(), "/classify", "v0001", "hola " * 50, answer(confidence=0.1))
    assert sum(p.stat().st_size for p in root.glob("captured-*")) <= 4096
    assert store.dropped > 0


def captured_inbox(tmp_path):
    store = CaptureStore(tmp_path / "capture")
    for text, a in [
        ("¿me puedo quedar hasta las 2?", answer("check_out_info", 0.45)),
        ("¿Me puedo quedar hasta las 2?", answer("check_out_info", 0.40)),
        ("me puedo quedar hasta las 2 porfa", answer("check_out_info", 0.42)),
        ("¿quién ganó el partido?", answer("out_of_scope", 0.3, True)),
    ]:
        store.observe(new_request_id(), "/classify", "v0001", text, a)
    return Inbox(tmp_path / "capture")


def test_the_inbox_groups_near_duplicates_most_frequent_first(tmp_path):
    inbox = captured_inbox(tmp_path)
    assert [g.count for g in inbox.groups] == [3, 1]
    first = inbox.groups[0]
    assert first.intent == "check_out_info" and first.reasons == {"low_confidence": 3}
    assert first.ranked_suggestions() == ["check_out_info", "late_checkout"]  # the model's top-k, summed
    assert len(first.texts) == 3


def test_labels_undo_and_the_labeled_file(tmp_path):
    inbox = captured_inbox(tmp_path)
    key = inbox.groups[0].key
    inbox.set_label(key, "late_checkout")
    inbox.set_label(inbox.groups[1].key, "out_of_scope")
    assert inbox.undo().label is None  # the out_of_scope label is undone
    labeled = [json.loads(line) for line in (tmp_path / "capture" / "labeled.jsonl").read_text().splitlines()]
    assert {e["intent"] for e in labeled} == {"late_checkout"} and len(labeled) == 3
    again = Inbox(tmp_path / "capture")  # labels survive a restart
    assert again.groups[0].label == "late_checkout" and again.groups[1].label is None
    with pytest.raises(DataError, match="invalid intent name"):
        again.set_label(key, "Late Checkout")


def test_a_message_joining_a_labeled_group_later_is_not_labeled_by_it(tmp_path):
    inbox = captured_inbox(tmp_path)
    inbox.set_label(inbox.groups[0].key, "late_checkout")
    store = CaptureStore(tmp_path / "capture")
    store.observe(new_request_id(), "/classify", "v0001", "me puedo quedar hasta las 2 xfa",
                  answer("check_out_info", 0.4))
    again = Inbox(tmp_path / "capture")
    first = again.groups[0]
    assert first.count == 4 and first.unlabeled and first.label is None
    assert sorted(e["text"] for e in again.labeled_examples()) == sorted(inbox.groups[0].texts)


def test_the_csv_round_trip(tmp_path):
    inbox = captured_inbox(tmp_path)
    csv_text = inbox.to_csv()
    rows = csv_text.splitlines()
    assert rows[0] == "group,count,answered_intent,reasons,suggestions,text,label" and len(rows) == 5
    filled = "\n".join(rows[:2] + [rows[2] + "late_checkout"] + rows[3:-1] + [rows[-1] + "out_of_scope"]) + "\n"
    result = Inbox(tmp_path / "capture").import_csv(filled, "labels.csv")
    assert result["labeled_groups"] == 2
    assert {g.label for g in Inbox(tmp_path / "capture").groups} == {"late_checkout", "out_of_scope"}
    with pytest.raises(DataError, match="labels.csv:2: invalid intent name"):
        Inbox(tmp_path / "capture").import_csv(rows[0] + "\n" + rows[1] + "Bad Label\n", "labels.csv")
