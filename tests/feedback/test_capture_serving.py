"""`hotelbot serve --capture DIR` through the FastAPI app (TestClient): what is captured, the request ids,
POST /feedback, and capture off by default."""

from __future__ import annotations

import json
import stat

import pytest
from fastapi.testclient import TestClient

from hotelbot_cli.feedback.capture import read_captured
from hotelbot_cli.serving import ServeSettings, create_app


def deploy(registry, name):
    registry.write_current_state({**registry.current_state(), "version": name})


@pytest.fixture
def served(registry_copy, tmp_path):
    """(client, capture dir): v0001 served with capture on; answers below 0.99 confidence are captured."""
    deploy(registry_copy, "v0001")
    capture = tmp_path / "capture"
    settings = ServeSettings(watch_interval_s=0, capture_dir=str(capture), capture_below=0.99)
    with TestClient(create_app(registry_copy, settings)) as client:
        yield client, capture


def test_capture_is_off_by_default(registry_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    deploy(registry_copy, "v0001")
    with TestClient(create_app(registry_copy, ServeSettings(watch_interval_s=0))) as client:
        answer = client.post("/classify", json={"text": "hola, me llamo Ana García"}).json()
        assert "request_id" not in answer
        refused = client.post("/feedback", json={"request_id": "0" * 32, "wrong_answer": True})
        assert refused.status_code == 503 and "--capture" in refused.json()["detail"]
    assert not [p for p in tmp_path.rglob("*") if p.name == "capture" or p.name.startswith("captured-")]


def test_low_confidence_answers_are_captured_masked(served):
    client, capture = served
    answer = client.post("/classify", json={"text": "soy Ana García, ¿me llaman al 600 123 456?"}).json()
    assert len(answer["request_id"]) == 32 and answer["confidence"] < 0.99  # the tiny model is never that sure
    batch = client.post("/classify/batch", json={"texts": ["hola", "cuál es la clave del wifi"]}).json()
    assert len({p["request_id"] for p in batch["predictions"]}) == 2
    records = list(read_captured(capture))
    assert [r["id"] for r in records] == [answer["request_id"]] + [p["request_id"] for p in batch["predictions"]]
    first = records[0]
    assert first["text"] == "soy <PERSON>, ¿me llaman al <PHONE>?" and first["masked"] == {"person": 1, "phone": 1}
    assert first["reason"] == "low_confidence" and first["endpoint"] == "/classify"
    assert first["model_version"] == "v0001" and first["intent"] == answer["intent"]
    assert [t["intent"] for t in first["top_k"]] == [t["intent"] for t in answer["top_k"]]
    assert stat.S_IMODE(capture.stat().st_mode) == 0o700


def test_feedback_captures_a_flagged_request(registry_copy, tmp_path):
    deploy(registry_copy, "v0001")
    capture = tmp_path / "capture"
    settings = ServeSettings(watch_interval_s=0, capture_dir=str(capture), capture_below=0.0)  # fallbacks only
    with TestClient(create_app(registry_copy, settings)) as client:
        answer = client.post("/classify", json={"text": "me quiero ir más tarde, a las dos"}).json()
        assert list(read_captured(capture)) == [] or answer["fallback"]
        ok = client.post("/feedback", json={"request_id": answer["request_id"], "intent": "late_checkout"})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"captured": True, "request_id": answer["request_id"], "reason": "feedback",
                             "model_version": "v0001"}
        flagged = [r for r in read_captured(capture) if r["reason"] == "feedback"]
        assert [(r["id"], r["feedback"]) for r in flagged] == [(answer["request_id"], {"intent": "late_checkout"})]

        unknown = client.post("/feedback", json={"request_id": "f" * 32, "wrong_answer": True})
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown request id"
        for bad in ({"request_id": "../../etc/passwd", "wrong_answer": True},
                    {"request_id": answer["request_id"]},  # neither an intent nor wrong_answer
                    {"request_id": answer["request_id"], "intent": "Late Checkout"}):
            assert client.post("/feedback", json=bad).status_code == 422, bad
    lines = b"".join(p.read_bytes() for p in capture.glob("captured-*.jsonl")).splitlines()
    assert len(lines) == len(flagged) + (1 if answer["fallback"] else 0)  # refused feedback wrote nothing
    assert all(json.loads(line)["schema"] == 1 for line in lines)


def test_the_schema_documents_feedback_and_request_ids(served):
    client, _ = served
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]["/feedback"]["post"]["responses"]) == {"200", "404", "422", "503"}
    for model in ("Classification", "Analysis", "ReplyAnswer"):
        assert "request_id" in schema["components"]["schemas"][model]["properties"]
