"""hotelbot serve: the FastAPI app through TestClient, the micro-batcher on its own, and a real uvicorn
process that swaps versions under load. Two tiny versions are trained once for the module; the other
versions are copies with edited metadata or corrupted files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import ENV_TO_CLEAR, TINY_INTENTS, flip_byte
from hotelbot_cli.errors import ConfigError, ModelError
from hotelbot_cli.registry import ModelRegistry
from hotelbot_cli.serving import (
    OUT_OF_SCOPE,
    THRESHOLD_KEY,
    LoadedModel,
    MicroBatcher,
    ServeError,
    ServeSettings,
    app_factory,
    create_app,
    out_of_scope_threshold,
    serve,
)

REPO = Path(__file__).resolve().parents[2]
NO_WATCH = ServeSettings(watch_interval_s=0)
GIBBERISH = "zzq xkcd qwv plmk"


# ------------------------------------------------------------------------------------------ helpers
def deploy(registry: ModelRegistry, name: str) -> None:
    """Switch the deployed version as deploy/rollback do: one atomic replace of the deployed state (no canary)."""
    registry.write_current_state({**{k: v for k, v in registry.current_state().items() if k != "canary"},
                                  "version": name})


def clone(registry: ModelRegistry, source: str, extra_metadata: dict | None = None, corrupt: bool = False) -> str:
    info = registry.get(source)
    with registry.staging() as staged:
        shutil.rmtree(staged)
        shutil.copytree(info.path, staged)
        (staged / "metadata.json").unlink()
        meta = {k: v for k, v in info.metadata.items() if k not in ("version", "files", "created_at")}
        published = registry.publish(staged, {**meta, **(extra_metadata or {})})
    if corrupt:  # modified after publishing: the checksum check must refuse it
        weights = max((p for p in (published.path / "model").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        flip_byte(weights, 0xFF)
    return published.name


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def assert_error(response, status: int, fragment: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"error", "detail"} and isinstance(body["error"], str) and body["error"]
    assert fragment in body["error"] + json.dumps(body["detail"]), body
    return body


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model, mlflow_uri, model_cache) -> ModelRegistry:
    """v0001, v0002: trained (different weights). v0003: v0001 + threshold 1.0. v0004: v0001, corrupt.
    v0005: v0001 with an invalid threshold."""
    from hotelbot_cli.config import load_settings
    from hotelbot_cli.data import prepare_dataset
    from hotelbot_cli.components.intents.train import train_classifier

    work = tmp_path_factory.mktemp("serve")
    data = work / "tiny.json"
    data.write_text(json.dumps({"intents": TINY_INTENTS}, ensure_ascii=False), "utf-8")
    env = {"HOTELBOT_HOME": str(work / "home"), "MLFLOW_TRACKING_URI": mlflow_uri,
           "HOTELBOT_MODEL_CACHE": str(model_cache), "HOTELBOT_BASE_MODEL": str(tiny_model),
           "TRAINING_EPOCHS": "12", "TRAINING_BATCH_SIZE": "8", "TRAINING_LEARNING_RATE": "0.002"}
    reg = ModelRegistry(work / "registry")
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV_TO_CLEAR:
            mp.delenv(name, raising=False)
        mp.chdir(work)
        settings = load_settings(env=env)
        prepare_dataset(data, work / "processed", settings.data)
        train_classifier(settings, work / "processed", reg, force=True)
        quick = load_settings(env={**env, "TRAINING_EPOCHS": "3", "TRAINING_SEED": "7"})
        train_classifier(quick, work / "processed", reg, force=True)
    assert clone(reg, "v0001", {THRESHOLD_KEY: 1.0}) == "v0003"
    assert clone(reg, "v0001", corrupt=True) == "v0004"
    assert clone(reg, "v0001", {THRESHOLD_KEY: "high"}) == "v0005"
    return reg


@pytest.fixture(scope="module")
def client(registry):
    """A server on v0001 with default limits and no watcher (other tests move `current` freely)."""
    deploy(registry, "v0001")
    with TestClient(create_app(registry, NO_WATCH)) as c:
        yield c


@pytest.fixture(scope="module")
def labels(registry) -> list[str]:
    return list(registry.get("v0001").metadata["labels"])


# ------------------------------------------------------------------------------------------ endpoints
def test_every_endpoint_with_a_model(client, registry, labels):
    from hotelbot_cli.runtime import predictor_from_registry

    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["model_version"] == "v0001"

    texts = ["hola buenas", "cuál es la clave del wifi", "a qué hora es el desayuno"]
    expected = predictor_from_registry(registry, "v0001").predict(texts, top_k=3)  # the runtime serve uses
    singles = []
    for text, want in zip(texts, expected):
        response = client.post("/classify", json={"text": text})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"intent", "confidence", "top_k", "model_version", "fallback"}
        assert body["intent"] == want.intent and body["intent"] in labels
        assert body["confidence"] == pytest.approx(want.confidence, abs=1e-4)
        assert body["model_version"] == "v0001" and body["fallback"] is False
        assert len(body["top_k"]) == 3 and body["top_k"][0] == {"intent": body["intent"], "confidence": body["confidence"]}
        assert [r["confidence"] for r in body["top_k"]] == sorted((r["confidence"] for r in body["top_k"]), reverse=True)
        singles.append(body)

    batch = client.post("/classify/batch", json={"texts": texts})
    assert batch.status_code == 200, batch.text
    doc = batch.json()
    assert doc["model_version"] == "v0001" and len(doc["predictions"]) == 3
    for one, other in zip(doc["predictions"], singles):
        assert one["intent"] == other["intent"] and one["fallback"] is False
        assert one["confidence"] == pytest.approx(other["confidence"], abs=1e-4)

    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'hotelbot_model_info{version="v0001"} 1' in text
    assert metric(text, "hotelbot_model_loaded") == 1
    assert metric(text, 'hotelbot_requests_total{endpoint="/classify/batch",status="200"}') >= 1
    assert metric(text, 'hotelbot_request_duration_seconds_count{endpoint="/classify"}') >= 3
    assert metric(text, "hotelbot_microbatch_size_count") >= 4
    if predictor_from_registry(registry, "v0001").streams:  # int8: one pass per text, on parallel lanes
        assert metric(text, "hotelbot_forward_passes_total") == metric(text, "hotelbot_microbatch_size_sum") == 6
    else:  # a batching runtime: one pass per micro-batch
        assert metric(text, "hotelbot_forward_passes_total") == metric(text, "hotelbot_microbatch_size_count")

    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    assert {"/classify", "/classify/batch", "/health", "/ready", "/metrics"} <= set(schema["paths"])
    assert "ClassifyRequest" in schema["components"]["schemas"]


def test_limits_at_the_boundary_are_accepted(client):
    assert client.post("/classify", json={"text": "a" * 1000}).status_code == 200
    response = client.post("/classify/batch", json={"texts": ["hola"] * 256})
    assert response.status_code == 200 and len(response.json()["predictions"]) == 256


BAD_INPUTS = [
    ("/classify", {"json": {}}, 422, "text: Field required"),
    ("/classify", {"json": {"text": ""}}, 422, "empty"),
    ("/classify", {"json": {"text": "   \t\n "}}, 422, "empty"),
    ("/classify", {"json": {"text": "\u200b\u0007"}}, 422, "empty"),
    ("/classify", {"json": {"text": 42}}, 422, "valid string"),
    ("/classify", {"json": {"text": None}}, 422, "valid string"),
    ("/classify", {"json": {"text": ["hola"]}}, 422, "valid string"),
    ("/classify", {"json": ["hola"]}, 422, "dictionary"),
    ("/classify", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
    ("/classify", {"content": b"hola", "headers": {"content-type": "text/plain"}}, 422, "dictionary"),
    ("/classify", {}, 422, "Field required"),
    ("/classify", {"json": {"text": "a" * 1001}}, 413, "text too long"),
    ("/classify/batch", {"json": {}}, 422, "texts: Field required"),
    ("/classify/batch", {"json": {"texts": []}}, 422, "at least 1"),
    ("/classify/batch", {"json": {"texts": "hola"}}, 422, "valid list"),
    ("/classify/batch", {"json": {"texts": ["hola", " "]}}, 422, "texts.1"),
    ("/classify/batch", {"json": {"texts": ["hola", 3]}}, 422, "texts.1"),
    ("/classify/batch", {"content": b'{"texts": ["hola",', "headers": {"content-type": "application/json"}}, 422,
     "not valid JSON"),
    ("/classify/batch", {"json": {"texts": ["hola"] * 257}}, 413, "batch too large"),
    ("/classify/batch", {"json": {"texts": ["hola", "b" * 1001]}}, 413, "texts[1] has 1001 characters"),
]


@pytest.mark.parametrize("path,kwargs,status,fragment", BAD_INPUTS,
                         ids=[f"{p}-{i}" for i, (p, *_rest) in enumerate(BAD_INPUTS)])
def test_bad_input_gets_a_4xx_json_error(client, path, kwargs, status, fragment):
    assert_error(client.post(path, **kwargs), status, fragment)


def test_unknown_routes_and_methods_get_json_errors_and_the_server_keeps_working(client):
    assert_error(client.get("/nope"), 404, "not found")
    assert_error(client.post("/classify/nope", json={"text": "hola"}), 404, "/classify/nope")
    wrong = assert_error(client.get("/classify"), 405, "method not allowed")
    assert wrong["detail"] == "GET is not allowed on /classify"
    assert client.post("/classify", json={"text": "hola"}).status_code == 200
    text = client.get("/metrics").text
    assert metric(text, 'hotelbot_requests_total{endpoint="unmatched",status="404"}') >= 2
    assert metric(text, 'hotelbot_requests_total{endpoint="/classify",status="422"}') >= 1


def test_limits_are_configurable(registry):
    deploy(registry, "v0001")
    settings = ServeSettings(max_text_length=10, max_batch_size=2, watch_interval_s=0)
    with TestClient(create_app(registry, settings)) as c:
        assert c.post("/classify", json={"text": "a" * 10}).status_code == 200
        assert_error(c.post("/classify", json={"text": "a" * 11}), 413, "the limit is 10")
        assert_error(c.post("/classify/batch", json={"texts": ["a", "b", "c"]}), 413, "the limit is 2")
        huge = b'{"text": "' + b"a" * settings.max_body_bytes + b'"}'
        assert_error(c.post("/classify", content=huge, headers={"content-type": "application/json"}), 413,
                     "request body too large")


# ------------------------------------------------------------------------------------------ no model
def test_empty_registry_serves_health_but_503_for_the_rest(tmp_path):
    with TestClient(create_app(ModelRegistry(tmp_path / "empty"), NO_WATCH)) as c:
        assert c.get("/health").status_code == 200
        ready = assert_error(c.get("/ready"), 503, "no model is loaded")
        assert ready["ready"] is False and ready["model_version"] is None
        for response in (c.post("/classify", json={"text": "hola"}), c.post("/classify/batch", json={"texts": ["hola"]})):
            body = assert_error(response, 503, "no model is loaded")
            assert "hotelbot train" in body["detail"] and "hotelbot deploy" in body["detail"]
        assert_error(c.post("/classify", json={"text": " "}), 422, "empty")  # input is still checked first
        text = c.get("/metrics").text
        assert metric(text, "hotelbot_model_loaded") == 0 and "hotelbot_model_info{" not in text


def test_versions_without_a_deploy_are_not_served_until_one_is_deployed(registry, tmp_path):
    other = ModelRegistry(tmp_path / "registry")
    shutil.copytree(registry.version_path("v0001"), other.version_path("v0001"))
    with TestClient(create_app(other, ServeSettings(watch_interval_s=0.05))) as c:
        assert_error(c.post("/classify", json={"text": "hola"}), 503, "hotelbot deploy")
        deploy(other, "v0001")
        wait_for(lambda: c.get("/ready").status_code == 200, what="the first deploy to be picked up")
        response = c.post("/classify", json={"text": "hola"})
        assert response.status_code == 200 and response.json()["model_version"] == "v0001"


# ------------------------------------------------------------------------------------------ fallback
def test_threshold_in_metadata_turns_low_confidence_into_out_of_scope(client, registry):
    plain = client.post("/classify", json={"text": GIBBERISH}).json()  # v0001: no threshold
    assert plain["fallback"] is False and plain["intent"] != OUT_OF_SCOPE and plain["confidence"] < 1.0
    deploy(registry, "v0003")  # same weights as v0001, threshold 1.0
    with TestClient(create_app(registry, NO_WATCH)) as c:
        assert c.get("/ready").json()["out_of_scope_threshold"] == 1.0
        body = c.post("/classify", json={"text": GIBBERISH}).json()
        assert body["model_version"] == "v0003" and body["fallback"] is True and body["intent"] == OUT_OF_SCOPE
        assert body["top_k"] == plain["top_k"]  # the model's ranking is kept
        assert body["confidence"] == plain["confidence"]
        batch = c.post("/classify/batch", json={"texts": [GIBBERISH, "hola"]}).json()
        assert all(p["fallback"] and p["intent"] == OUT_OF_SCOPE for p in batch["predictions"])
        assert metric(c.get("/metrics").text, "hotelbot_out_of_scope_total") == 3


class _Pred:
    def __init__(self, intent, confidence):
        self.intent, self.confidence = intent, confidence
        self.top_k = [{"intent": intent, "confidence": confidence}]


def test_fallback_boundary_and_threshold_validation():
    model = LoadedModel(predictor=None, version="v0009", threshold=0.5)
    assert model.answer(_Pred("greeting", 0.5))["fallback"] is False
    below = model.answer(_Pred("greeting", 0.4999))
    assert below["fallback"] is True and below["intent"] == OUT_OF_SCOPE and below["top_k"][0]["intent"] == "greeting"
    assert LoadedModel(None, "v0009").answer(_Pred("greeting", 0.01))["fallback"] is False
    assert out_of_scope_threshold({}) is None
    assert out_of_scope_threshold({THRESHOLD_KEY: 0}) == 0.0
    assert out_of_scope_threshold({THRESHOLD_KEY: 0.7}) == 0.7
    for bad in ("high", True, 1.5, -0.1, [0.5]):
        with pytest.raises(ModelError):
            out_of_scope_threshold({THRESHOLD_KEY: bad})


# ------------------------------------------------------------------------------------------ load failures
def test_failed_loads_keep_the_old_model_and_are_counted(registry):
    deploy(registry, "v0004")  # corrupt: refused at start-up
    with TestClient(create_app(registry, ServeSettings(watch_interval_s=0.05))) as c:
        body = assert_error(c.get("/ready"), 503, "v0004 failed to load")
        assert "checksum" in body["detail"]
        assert metric(c.get("/metrics").text, "hotelbot_model_load_failures_total") == 1

        deploy(registry, "v0001")
        wait_for(lambda: c.get("/ready").status_code == 200, what="v0001 to load")
        for bad, failures in (("v0004", 2), ("v0005", 3)):  # corrupt files, then an invalid threshold
            deploy(registry, bad)
            wait_for(lambda: metric(c.get("/metrics").text, "hotelbot_model_load_failures_total") == failures,
                     what=f"{bad} to fail")
            ready = c.get("/ready").json()
            assert ready["model_version"] == "v0001" and f"{bad} failed to load" in ready["last_load_error"]
            assert c.post("/classify", json={"text": "hola"}).json()["model_version"] == "v0001"
        deploy(registry, "v0002")
        wait_for(lambda: c.get("/ready").json().get("model_version") == "v0002", what="v0002 to load")
        assert c.get("/ready").json()["last_load_error"] is None
        text = c.get("/metrics").text
        assert 'hotelbot_model_info{version="v0002"} 1' in text and 'hotelbot_model_info{version="v0001"}' not in text
        assert metric(text, "hotelbot_model_loads_total") == 2
        # what each version answered stays counted under its name
        assert metric(text, 'hotelbot_version_answers_total{model_version="v0001"}') >= 2


# ------------------------------------------------------------------------------------------ micro-batching
@pytest.mark.parametrize("runtime", ["onnx-fp32", "onnx-int8"])
def test_concurrent_requests_share_forward_passes(registry, labels, runtime, monkeypatch):
    """Concurrent requests form one micro-batch: with fp32 it is one forward pass; int8 (whose answers
    would depend on batch neighbours) runs the group's texts as parallel single-text passes."""
    monkeypatch.setenv("HOTELBOT_RUNTIME", runtime)
    monkeypatch.setenv("HOTELBOT_RUNTIME_RECHECK_MARGIN", "0.3")  # int8: close calls re-run on fp32 (counted)
    deploy(registry, "v0001")
    n = 8
    # A batch leaves when `max_micro_batch` texts wait (the long wait is only an upper bound).
    settings = ServeSettings(max_micro_batch=n, batch_wait_ms=20_000, watch_interval_s=0)
    app = create_app(registry, settings)
    texts = [t for intent in TINY_INTENTS.values() for t in intent[:2]][:n]
    with TestClient(app) as c:
        results: list = [None] * n

        def call(i):
            results[i] = c.post("/classify", json={"text": texts[i]})

        threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(r is not None and r.status_code == 200 for r in results)
        assert all(r.json()["intent"] in labels for r in results)
        batcher = app.state.batcher
        streams = runtime == "onnx-int8"
        assert batcher.texts == n and batcher.forward_passes == (n if streams else 1)
        text = c.get("/metrics").text
        assert metric(text, "hotelbot_microbatch_size_count") == 1  # one group either way
        assert metric(text, 'hotelbot_microbatch_size_bucket{le="4"}') == 0
        assert metric(text, 'hotelbot_microbatch_size_bucket{le="8"}') == 1
        recheck = getattr(app.state.models.model.predictor, "recheck", None)
        if streams:  # int8's close calls re-run on fp32, counted since the model was loaded
            assert recheck is not None
            assert metric(text, "hotelbot_int8_texts_total") == recheck.checked >= n
            assert 0 <= metric(text, "hotelbot_int8_rechecks_total") == recheck.rerun <= recheck.checked
        else:
            assert "hotelbot_int8_rechecks_total" not in text


class FakePredictor:
    """Records each forward pass; 'boom' makes the whole batch fail (a single text then fails alone)."""

    def __init__(self, name):
        self.name, self.calls = name, []

    def predict(self, texts, top_k=3, batch_size=32):
        self.calls.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("boom")
        return [_Pred(f"{self.name}:{t}", 0.9) for t in texts]


def test_batcher_groups_by_model_sizes_and_isolates_failures():
    async def scenario():
        old, new = FakePredictor("old"), FakePredictor("new")
        v1, v2 = LoadedModel(old, "v0001"), LoadedModel(new, "v0002")
        batcher = MicroBatcher(max_batch=5, wait_s=30.0, top_k=1)
        batcher.start()
        try:
            # 3 texts took the old model before a swap, 2 the new one: one window, one pass per model.
            mixed = await asyncio.gather(*(batcher.classify(v1, [t]) for t in "abc"),
                                         *(batcher.classify(v2, [t]) for t in "de"))
            assert [r[0]["model_version"] for r in mixed] == ["v0001"] * 3 + ["v0002"] * 2
            assert [r[0]["intent"] for r in mixed] == ["old:a", "old:b", "old:c", "new:d", "new:e"]
            assert old.calls == [["a", "b", "c"]] and new.calls == [["d", "e"]] and batcher.forward_passes == 2

            # 10 concurrent single texts -> two passes of 5.
            old.calls.clear()
            await asyncio.gather(*(batcher.classify(v1, [str(i)]) for i in range(10)))
            assert [len(c) for c in old.calls] == [5, 5]

            # One bad text: its neighbours still get answers.
            outcomes = await asyncio.gather(*(batcher.classify(v1, [t]) for t in ("x", "boom", "y", "z", "w")),
                                            return_exceptions=True)
            assert isinstance(outcomes[1], RuntimeError)
            assert [o[0]["intent"] for i, o in enumerate(outcomes) if i != 1] == ["old:x", "old:y", "old:z", "old:w"]

            # Work still queued at shutdown fails with a 503, it does not hang.
            pending = batcher.submit(v1, ["late"])
        finally:
            await batcher.stop()
        with pytest.raises(ServeError) as info:
            await pending[0]
        assert info.value.status_code == 503

    asyncio.run(scenario())


class FakeStreamingPredictor:
    """Answers each text on its own lane thread; a text in ``gates`` waits for that event; 'boom' fails alone."""

    streams, lanes = True, 2

    def __init__(self, gates):
        from concurrent.futures import ThreadPoolExecutor

        self.gates, self.groups = gates, []
        self.pool = ThreadPoolExecutor(4)

    def submit_each(self, texts, top_k=3):
        self.groups.append(list(texts))

        def one(text):
            if text in self.gates:
                self.gates[text].wait(30)
            if text == "boom":
                raise RuntimeError("boom")
            return _Pred(f"s:{text}", 0.9)
        return [self.pool.submit(one, t) for t in texts]


def test_a_streaming_predictor_answers_each_request_when_its_text_is_done():
    async def scenario():
        gates = {"slow": threading.Event(), "stuck": threading.Event()}
        predictor = FakeStreamingPredictor(gates)
        model = LoadedModel(predictor, "v0001")
        batcher = MicroBatcher(max_batch=8, wait_s=0.05, top_k=1)
        batcher.start()
        try:
            slow = asyncio.ensure_future(batcher.classify(model, ["slow"]))
            others = [asyncio.ensure_future(batcher.classify(model, [t])) for t in ("fast", "boom", "quick")]
            # No batch barrier: the other texts of the group are answered while "slow" is still held
            # (with a barrier this would time out).
            outcomes = await asyncio.wait_for(asyncio.gather(*others, return_exceptions=True), timeout=20)
            assert not slow.done()
            assert predictor.groups == [["slow", "fast", "boom", "quick"]]  # one group, one tokenizer call
            assert isinstance(outcomes[1], RuntimeError)  # a failing text fails alone
            assert [outcomes[i][0]["intent"] for i in (0, 2)] == ["s:fast", "s:quick"]
            gates["slow"].set()
            assert (await asyncio.wait_for(slow, timeout=20))[0]["intent"] == "s:slow"
            assert batcher.forward_passes == 4 and batcher.texts == 4

            # a text still running at shutdown fails with a 503 instead of hanging
            late = batcher.submit(model, ["stuck"])
            for _ in range(2000):  # until the batcher has handed it to a lane (bounded)
                if predictor.groups[-1] == ["stuck"]:
                    break
                await asyncio.sleep(0.01)
            assert predictor.groups[-1] == ["stuck"]
        finally:
            await batcher.stop()
            gates["stuck"].set()
        with pytest.raises(ServeError) as info:
            await late[0]
        assert info.value.status_code == 503

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------ settings, serve(), CLI
def test_serve_settings_validate_and_come_from_the_environment():
    for bad in ({"max_text_length": 0}, {"max_batch_size": 0}, {"batch_wait_ms": -1}, {"max_micro_batch": 0},
                {"watch_interval_s": -1}, {"top_k": 0}, {"torch_threads": -1}):
        with pytest.raises(ConfigError):
            ServeSettings(**bad)
    settings = ServeSettings.from_env({"HOTELBOT_SERVE_MAX_TEXT_LENGTH": "50", "HOTELBOT_SERVE_BATCH_WAIT_MS": "2.5"})
    assert settings.max_text_length == 50 and settings.batch_wait_ms == 2.5 and settings.max_batch_size == 256
    assert ServeSettings.from_env(settings.to_env()) == settings
    with pytest.raises(ConfigError, match="max_batch_size"):
        ServeSettings.from_env({"HOTELBOT_SERVE_MAX_BATCH_SIZE": "many"})


def test_serve_runs_uvicorn_on_loopback_and_workers_get_settings_through_the_environment(monkeypatch, tmp_path):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    for name in ("HOTELBOT_REGISTRY", *ServeSettings().to_env()):
        monkeypatch.setenv(name, "placeholder")  # restored by monkeypatch after serve() rewrites them
    monkeypatch.delenv("HOTELBOT_CONFIG", raising=False)

    serve(tmp_path / "reg", ServeSettings(max_text_length=50))
    app, kw = calls.pop()
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8000 and "workers" not in kw
    assert app.state.settings.max_text_length == 50 and app.state.registry.root == (tmp_path / "reg").resolve()

    serve(tmp_path / "reg", ServeSettings(max_text_length=50), port=8123, workers=2)
    target, kw = calls.pop()
    assert target == "hotelbot_cli.serving:app_factory" and kw["factory"] is True and kw["workers"] == 2
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123
    assert os.environ["HOTELBOT_REGISTRY"] == str((tmp_path / "reg").resolve())
    assert os.environ["HOTELBOT_SERVE_TORCH_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    worker_app = app_factory()  # what each worker process builds
    assert worker_app.state.registry.root == (tmp_path / "reg").resolve()
    assert worker_app.state.settings.max_text_length == 50
    with pytest.raises(ConfigError):
        serve(tmp_path / "reg", workers=0)


def test_serve_command_parses_options_and_delegates(monkeypatch, tmp_path):
    from hotelbot_cli import serving
    from hotelbot_cli.cli.serve import serve_cmd

    cli = typer.Typer()
    cli.command("serve")(serve_cmd)

    @cli.callback()
    def _root() -> None:
        """hotelbot"""

    calls = []
    monkeypatch.setattr(serving, "serve", lambda root, limits, **kw: calls.append((root, limits, kw)))
    runner = CliRunner()
    helped = runner.invoke(cli, ["serve", "--help"])
    assert helped.exit_code == 0 and "Examples" in helped.output and "127.0.0.1" in helped.output

    monkeypatch.setenv("HOTELBOT_SERVE_BATCH_WAIT_MS", "7")
    result = runner.invoke(cli, ["serve", "--registry", str(tmp_path / "r"), "--port", "9001",
                                 "--max-text-length", "99"])
    assert result.exit_code == 0, result.output
    root, limits, kw = calls.pop()
    assert root == tmp_path / "r" and kw["host"] == "127.0.0.1" and kw["port"] == 9001 and kw["workers"] == 1
    assert limits.max_text_length == 99 and limits.batch_wait_ms == 7.0 and limits.max_batch_size == 256

    exposed = runner.invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert exposed.exit_code == 0 and "warning" in exposed.stderr and calls.pop()[2]["host"] == "0.0.0.0"
    assert runner.invoke(cli, ["serve", "--workers", "0"]).exit_code == 2
    monkeypatch.setenv("HOTELBOT_SERVE_MAX_BATCH_SIZE", "lots")
    bad = runner.invoke(cli, ["serve"])
    assert bad.exit_code == 1 and len(bad.stderr.strip().splitlines()) == 1 and "max_batch_size" in bad.stderr


def test_serve_module_imports_nothing_heavy():
    code = ("import sys\nimport hotelbot_cli.cli.serve\n"
            "print(','.join(m for m in ('torch', 'transformers', 'fastapi', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------------------ real server
# The canary judge and the drift alert stay silent on servers whose test is about something else.
QUIET_JUDGE = {"HOTELBOT_CANARY_MIN_REQUESTS": "1000000000", "HOTELBOT_DRIFT_MIN_ANSWERS": "1000000000"}
SERVER_SCRIPT = """
import socket, sys, uvicorn
from hotelbot_cli.serving import app_factory
sock = socket.socket(fileno=int(sys.argv[1]))
uvicorn.Server(uvicorn.Config(app_factory, factory=True, log_level="warning")).run(sockets=[sock])
"""


@contextlib.contextmanager
def running_server(args, env, base, tmp_path, pass_fds=(), timeout=60):
    """A server process (``args``) answering /ready on ``base``; SIGTERM (then kill) when done."""
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(args, pass_fds=pass_fds, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        def up():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                return httpx.get(f"{base}/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=timeout, what="the server to start")
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def live_server(registry, tmp_path):
    """A real uvicorn process (built by app_factory from the environment) on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    env = {**os.environ, "HOTELBOT_REGISTRY": str(registry.root), "HOTELBOT_SERVE_WATCH_INTERVAL_S": "0.1",
           "PYTHONPATH": str(REPO), **QUIET_JUDGE}
    base = f"http://127.0.0.1:{port}"
    with running_server([sys.executable, "-c", SERVER_SCRIPT, str(sock.fileno())], env, base, tmp_path,
                        pass_fds=[sock.fileno()]):
        sock.close()
        yield base


@pytest.fixture
def on_v0001(registry):
    deploy(registry, "v0001")


def test_hot_swap_under_load_on_a_real_server(on_v0001, live_server, registry):
    base = live_server
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}
    assert httpx.get(f"{base}/ready").json()["model_version"] == "v0001"
    assert httpx.get(f"{base}/docs").status_code == 200
    assert_error(httpx.get(f"{base}/nope"), 404, "not found")
    assert_error(httpx.post(f"{base}/classify", content=b"nope", headers={"content-type": "application/json"}),
                 422, "not valid JSON")

    stop = threading.Event()
    lock = threading.Lock()
    seen: dict[int, list[str]] = {i: [] for i in range(4)}
    failures: list[str] = []
    texts = ["hola", "contraseña wifi", "desayuno incluido", "noticias de hoy"]

    def stream(i: int) -> None:
        deadline = time.monotonic() + 90  # bounded even if the test body fails
        with httpx.Client(base_url=base, timeout=30) as http:
            n = 0
            while not stop.is_set() and time.monotonic() < deadline:
                n += 1
                try:
                    response = http.post("/classify", json={"text": texts[(i + n) % len(texts)]})
                    if response.status_code != 200:
                        raise AssertionError(f"{response.status_code} {response.text}")
                    with lock:
                        seen[i].append(response.json()["model_version"])
                except Exception as exc:  # noqa: BLE001 - every failure is a test failure, recorded
                    with lock:
                        failures.append(repr(exc))

    def count(version: str) -> int:
        with lock:
            return sum(s.count(version) for s in seen.values())

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: count("v0001") >= 20, what="traffic on v0001")
        deploy(registry, "v0002")
        wait_for(lambda: count("v0002") >= 20, what="responses from v0002")
        deploy(registry, "v0004")  # corrupt: the server must keep v0002
        wait_for(lambda: metric(httpx.get(f"{base}/metrics").text, "hotelbot_model_load_failures_total") == 1,
                 what="the corrupt version to be refused")
        after_failure = count("v0002")
        wait_for(lambda: count("v0002") >= after_failure + 20, what="v0002 to keep answering")
        rolled_back_from = count("v0001")
        deploy(registry, "v0001")  # rollback
        wait_for(lambda: count("v0001") >= rolled_back_from + 20, what="responses after the rollback")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    for sequence in seen.values():  # each client saw v0001, then v0002, then v0001 again: never a mix
        phases = [v for k, v in enumerate(sequence) if k == 0 or sequence[k - 1] != v]
        assert phases == ["v0001", "v0002", "v0001"][:len(phases)], phases
    assert count("v0004") == 0
    text = httpx.get(f"{base}/metrics").text
    assert 'hotelbot_model_info{version="v0001"} 1' in text
    assert metric(text, "hotelbot_model_loads_total") == 3
    answered = sum(map(len, seen.values()))  # every answer counted once (the count lands just after the send)
    wait_for(lambda: metric(httpx.get(f"{base}/metrics").text,
                            'hotelbot_requests_total{endpoint="/classify",status="200"}') == answered,
             timeout=10, what="the request count to match")


# ------------------------------------------------------------------------------------------ canary
def set_canary(registry: ModelRegistry, name: str | None, weight: int = 0) -> None:
    """Start (name) or end (None) a canary as `deploy --canary` / `canary abort` do: one atomic state write."""
    state = {k: v for k, v in registry.current_state().items() if k != "canary"}
    if name is not None:
        state["canary"] = {"version": name, "weight": weight, "started_at": "2026-12-07T00:00:00Z"}
    registry.write_current_state(state)


class Traffic:
    """``threads`` clients sending /classify, a new conversation id each time, until the block ends: which
    versions answered (in order) and every failure (a non-200 or an exception)."""

    def __init__(self, base: str, threads: int = 1) -> None:
        self.base, self.served, self.failures = base, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    r = http.post("/classify", json={"text": "hola", "conversation_id": f"{i}-{n}"})
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text}")
                    else:
                        self.served.append(r.json()["model_version"])
                except Exception as exc:  # noqa: BLE001 - every failure is a test failure, recorded
                    self.failures.append(repr(exc))


def test_conversation_buckets_are_stable_and_spread():
    from hotelbot_cli.serving.models import conversation_bucket

    assert conversation_bucket("guest-42") == conversation_bucket("guest-42")
    buckets = [conversation_bucket(f"guest-{i}") for i in range(2000)]
    assert all(0 <= b < 100 for b in buckets)
    share = sum(b < 20 for b in buckets) / len(buckets)  # 20 % of keys below 20: binomial sd ~0.9 points
    assert abs(share - 0.20) < 0.04


def test_a_canary_on_a_real_server_splits_by_conversation_and_ends_without_a_failed_request(
        on_v0001, live_server, registry):
    try:
        canary_on_a_real_server(live_server, registry)
    finally:
        deploy(registry, "v0001")  # no canary left for the next tests, whatever happened


def canary_on_a_real_server(base, registry):
    set_canary(registry, "v0002", 30)
    wait_for(lambda: (httpx.get(f"{base}/ready").json().get("canary") or {}).get("version") == "v0002",
             timeout=30, what="the server to load the canary")
    assert httpx.get(f"{base}/ready").json()["canary"] == {"version": "v0002", "weight": 30}
    with httpx.Client(base_url=base, timeout=30) as http:
        served = [http.post("/classify", json={"text": "hola", "conversation_id": f"guest-{i}"}).json()["model_version"]
                  for i in range(300)]
        # 30 % of 300 conversations: binomial sd 7.9, so 4 sd either side
        assert abs(served.count("v0002") - 90) <= 32, served.count("v0002")
        assert set(served) == {"v0001", "v0002"}
        for key in ("guest-1", "guest-2", "guest-3"):  # sticky: one conversation, one model
            answers = {http.post("/classify", json={"text": t, "conversation_id": key}).json()["model_version"]
                       for t in ("hola", "wifi", "desayuno", "gracias")}
            by_header = {http.post("/classify", json={"text": "hola"}, headers={"X-Conversation-Id": key})
                         .json()["model_version"]}
            assert len(answers) == 1 and answers == by_header
        batch = http.post("/classify/batch", json={"texts": ["hola", "wifi"], "conversation_id": "guest-1"}).json()
        assert batch["model_version"] == served[1] and {p["model_version"] for p in batch["predictions"]} == {
            served[1]}

        with Traffic(base) as traffic:
            time.sleep(0.5)
            set_canary(registry, None)  # abort: every conversation back on the stable version
            wait_for(lambda: httpx.get(f"{base}/ready").json().get("canary") is None, timeout=30,
                     what="the server to drop the canary")
            time.sleep(0.5)
        assert not traffic.failures, traffic.failures[:3]
        after = {http.post("/classify", json={"text": "hola", "conversation_id": f"guest-{i}"}).json()["model_version"]
                 for i in range(40)}
        assert after == {"v0001"}
        # promote: the canary becomes the deployed version, served by the object already loaded
        set_canary(registry, "v0002", 50)
        wait_for(lambda: (httpx.get(f"{base}/ready").json().get("canary") or {}).get("version") == "v0002",
                 timeout=30, what="the canary again")
        registry.write_current_state({"version": "v0002", "previous": ["v0001"]})
        wait_for(lambda: httpx.get(f"{base}/ready").json()["model_version"] == "v0002", timeout=30,
                 what="the promoted canary")
        assert httpx.get(f"{base}/ready").json()["canary"] is None
        assert {http.post("/classify", json={"text": "hola", "conversation_id": f"guest-{i}"}).json()["model_version"]
                for i in range(40)} == {"v0002"}


def test_a_canary_that_cannot_load_takes_no_traffic(registry):
    holder_registry = registry
    deploy(holder_registry, "v0001")
    set_canary(holder_registry, "v0004", 50)  # v0004 is corrupt
    try:
        with TestClient(create_app(holder_registry, NO_WATCH)) as client:
            ready = client.get("/ready").json()
            assert ready["model_version"] == "v0001" and ready["canary"] is None
            assert "canary v0004 failed to load" in ready["last_load_error"]
            versions = {client.post("/classify", json={"text": "hola", "conversation_id": f"g{i}"}).json()[
                "model_version"] for i in range(30)}
            assert versions == {"v0001"}
    finally:
        set_canary(holder_registry, None)


def test_per_version_counters_add_up_across_two_workers(on_v0001, registry, tmp_path):
    """`hotelbot serve --workers 2`: each worker writes its own prometheus_client file and any worker's
    /metrics returns the sums, so a scrape that reaches either worker counts every answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    shared = tmp_path / "prom"
    env = {**os.environ, "HOTELBOT_REGISTRY": str(registry.root), "PYTHONPATH": str(REPO),
           "PROMETHEUS_MULTIPROC_DIR": str(shared), "HOTELBOT_SERVE_WATCH_INTERVAL_S": "0", **QUIET_JUDGE}
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "hotelbot_cli", "serve", "--workers", "2", "--port", str(port)]
    with running_server(args, env, base, tmp_path, timeout=90):
        n_threads, each = 8, 15
        errors: list[str] = []

        def client() -> None:
            for i in range(each):  # a new connection per request: the two workers share the accepts
                try:
                    r = httpx.post(f"{base}/classify", json={"text": "hola"}, headers={"Connection": "close"},
                                   timeout=30)
                    if r.status_code != 200:
                        errors.append(r.text)
                except Exception as exc:  # noqa: BLE001 - every failure is a test failure, recorded
                    errors.append(repr(exc))

        threads = [threading.Thread(target=client) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        total = n_threads * each
        assert len(list(shared.glob("counter_*.db"))) >= 2  # both workers answered and wrote their own counts
        for _ in range(10):  # whichever worker a scrape reaches, it reports every worker's answers
            text = httpx.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text
            assert metric(text, 'hotelbot_version_answers_total{model_version="v0001"}') == total
        requests = 'hotelbot_version_requests_total{endpoint="/classify",model_version="v0001",status="200"}'
        wait_for(lambda: metric(httpx.get(f"{base}/metrics", headers={"Connection": "close"}).text, requests) == total,
                 timeout=10, what="every request counted (a count lands just after its response is sent)")


def test_a_bad_canary_is_aborted_automatically_with_no_failed_request(on_v0001, registry, tmp_path):
    """v0003 answers everything out_of_scope (its threshold is 1.0): at 50 % of conversations, once each version
    has answered 20 messages, serve's judge aborts it (Fisher's exact test on the fallback rates), records the
    figures, and every conversation is back on v0001 without one failed request."""
    set_canary(registry, "v0003", 50)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {**os.environ, "HOTELBOT_REGISTRY": str(registry.root), "HOTELBOT_SERVE_WATCH_INTERVAL_S": "0.1",
           "PYTHONPATH": str(REPO), **QUIET_JUDGE, "HOTELBOT_CANARY_MIN_REQUESTS": "20"}
    history = registry.root / "history.jsonl"
    seen_events = len(history.read_text().splitlines()) if history.exists() else 0
    try:
        with running_server([sys.executable, "-c", SERVER_SCRIPT, str(sock.fileno())], env, base, tmp_path,
                            pass_fds=[sock.fileno()]):
            sock.close()
            with Traffic(base, threads=3) as traffic:
                wait_for(lambda: "canary" not in registry.current_state(), timeout=60, what="the automatic abort")
                wait_for(lambda: httpx.get(f"{base}/ready").json()["canary"] is None, timeout=30,
                         what="the server to drop the canary")
                mark = len(traffic.served)
                time.sleep(0.5)
            failures, served = traffic.failures, traffic.served
            assert not failures, failures[:3]
            assert "v0003" in served[:mark] and set(served[mark:]) == {"v0001"}
    finally:
        set_canary(registry, None)
    events = [json.loads(line) for line in history.read_text().splitlines()[seen_events:]]  # this test's
    aborted = [e for e in events if e["event"] == "canary_auto_abort"]
    assert len(aborted) == 1  # once, however often the judge ran
    judgement = aborted[0]["judgement"]
    assert judgement["decision"] == "abort" and "fallback rate" in judgement["reasons"][0]
    assert judgement["figures"]["canary"]["fallback_rate"] == 1.0 and judgement["figures"]["stable"]["answers"] >= 20
    assert aborted[0]["from"] == "v0003" and aborted[0]["to"] == "v0001"
    written = json.loads((registry.root / "canary_judgement.json").read_text())  # what `canary status` showed
    assert written["canary"] == "v0003" and written["decision"] == "abort" and written["acted"] == "abort"
    from hotelbot_cli.pipeline.canary import canary_status

    after = canary_status(registry)  # the canary is gone: status still tells why
    assert after["canary"] is None and after["last_judgement"]["decision"] == "abort"


def test_a_healthy_canary_with_auto_promote_is_promoted_by_the_judge(registry, monkeypatch):
    from hotelbot_cli.pipeline.canary import canary_status

    monkeypatch.setenv("HOTELBOT_CANARY_MIN_REQUESTS", "5")
    twin = clone(registry, "v0001")  # the same model: no figure can be worse (v0002, a weaker model, is aborted)
    deploy(registry, "v0001")
    state = {k: v for k, v in registry.current_state().items() if k != "canary"}
    registry.write_current_state({**state, "canary": {"version": twin, "weight": 50, "auto_promote": 8,
                                                      "event_id": "e1", "started_at": "2026-12-07T00:00:00Z"}})
    try:
        with TestClient(create_app(registry, NO_WATCH)) as client:
            holder = client.app.state.models
            for i in range(40):
                client.post("/classify", json={"text": "hola", "conversation_id": f"g{i}"})
            snap = client.app.state.metrics.versions.snapshot()
            assert snap[twin]["answers"] >= 8 and snap["v0001"]["answers"] >= 5
            status = canary_status(registry)
            assert status["judgement"] is None  # nothing judged yet
            assert holder.judge_canary() == "promote"
            assert registry.current_state()["version"] == twin and "canary" not in registry.current_state()
            assert holder.refresh() and holder.model.version == twin and holder.canary is None
    finally:
        deploy(registry, "v0001")
    events = [json.loads(line)["event"] for line in (registry.root / "history.jsonl").read_text().splitlines()]
    assert events[-1] == "canary_auto_promote"


def test_drift_is_a_gauge_and_alerts_once_per_version(registry, monkeypatch):
    """Guests asking only about one thing: the intents' PSI against v0001's validation split is a gauge in
    /metrics, and a drift_alert is recorded (and notified) once, not again by the same or a restarted server."""
    monkeypatch.setenv("HOTELBOT_DRIFT_MIN_ANSWERS", "20")
    (registry.root / "drift_alerts.json").unlink(missing_ok=True)  # whatever an earlier server alerted on
    deploy(registry, "v0001")
    history = registry.root / "history.jsonl"
    before = history.read_text().count("drift_alert") if history.exists() else 0
    try:
        with TestClient(create_app(registry, NO_WATCH)) as client:
            for _ in range(30):
                assert client.post("/classify", json={"text": "quiero ver las noticias de hoy"}).status_code == 200
            text = client.get("/metrics").text
            assert metric(text, 'hotelbot_version_intent_psi{model_version="v0001"}') > 0.25
            assert metric(text, 'hotelbot_version_reference_fallback_rate{model_version="v0001"}') == 0.0
            holder = client.app.state.models
            assert holder.check_drift() == ["v0001"]
            holder._drift_at = float("-inf")
            assert holder.check_drift() == []  # once
        with TestClient(create_app(registry, NO_WATCH)) as client:  # a restarted server: the file remembers
            for _ in range(30):
                client.post("/classify", json={"text": "quiero ver las noticias de hoy"})
            assert client.app.state.models.check_drift() == []
    finally:
        (registry.root / "drift_alerts.json").unlink(missing_ok=True)
    alerts = [json.loads(line) for line in history.read_text().splitlines() if '"drift_alert"' in line]
    assert len(alerts) == before + 1 and "PSI" in alerts[-1]["reason"] and alerts[-1]["drift"]["answers"] >= 20


def test_a_canary_that_raises_is_answered_by_the_stable_version_and_counted_against(registry, monkeypatch):
    """A broken canary (its predictor raises) costs the guest nothing: the stable version answers, and the
    failure is a 5xx in the canary's live figures, which the judge aborts on."""
    monkeypatch.setenv("HOTELBOT_CANARY_MIN_REQUESTS", "1000000000")
    twin = clone(registry, "v0001")
    deploy(registry, "v0001")
    state = {k: v for k, v in registry.current_state().items() if k != "canary"}
    registry.write_current_state({**state, "canary": {"version": twin, "weight": 50, "event_id": "broken",
                                                      "started_at": "2026-12-07T00:00:00Z"}})
    try:
        with TestClient(create_app(registry, NO_WATCH)) as client:
            canary = client.app.state.models.canary
            assert canary is not None and canary.version == twin

            def broken(*args, **kwargs):
                raise RuntimeError("this canary is broken")

            monkeypatch.setattr(canary.predictor, "predict", broken)
            monkeypatch.setattr(canary.predictor, "submit_each", broken)
            answers = [client.post("/classify", json={"text": "hola", "conversation_id": f"g{i}"}) for i in range(40)]
            assert all(r.status_code == 200 for r in answers)
            assert {r.json()["model_version"] for r in answers} == {"v0001"}
            batch = client.post("/classify/batch", json={"texts": ["hola", "wifi"], "conversation_id": "g1"})
            assert batch.status_code == 200 and batch.json()["model_version"] == "v0001"
            assert canary.analyzer is not None  # /analyze fails over the same way
            monkeypatch.setattr(canary.analyzer, "analyze", broken)
            analyzed = [client.post("/analyze", json={"texts": ["hola"], "conversation_id": f"g{i}"}) for i in range(20)]
            assert {(r.status_code, r.json()["model_version"]) for r in analyzed} == {(200, "v0001")}
            snap = client.app.state.metrics.versions.snapshot()
            assert snap[twin]["errors"] >= 10 and snap[twin]["answers"] == 0  # about half the 40 conversations
            assert snap["v0001"]["answers"] >= 40
    finally:
        deploy(registry, "v0001")
