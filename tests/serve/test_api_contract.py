"""The HTTP API's contract and its offline docs, on a real server: schemathesis (pinned in the dev extra)
generates requests from /openapi.json and checks every answer against it (status codes documented, bodies
matching their schema, data the schema rejects refused, data it allows accepted, no server error); the
schema states the server's limits; /docs and /redoc load every asset from the server itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

CONFIG = Path(__file__).with_name("schemathesis.toml")  # 413 and 503 are documented answers, not failures
QUIET_JUDGE = {"HOTELBOT_CANARY_MIN_REQUESTS": "1000000000", "HOTELBOT_DRIFT_MIN_ANSWERS": "1000000000"}


@pytest.fixture
def server(registry_copy, tmp_path, serve_process):
    """`hotelbot serve` on a free loopback port, v0001 deployed, with small limits (so the schema's numbers are
    the server's, not the defaults) and capture on (so POST /feedback answers for real)."""
    from typer.testing import CliRunner

    from hotelbot_cli.cli.app import app

    assert CliRunner().invoke(app, ["deploy", "v0001"]).exit_code == 0
    env = {**os.environ, "HOTELBOT_REGISTRY": str(registry_copy.root), "HOTELBOT_SERVE_MAX_TEXT_LENGTH": "300",
           "HOTELBOT_SERVE_MAX_BATCH_SIZE": "8", "HOTELBOT_SERVE_CAPTURE_DIR": str(tmp_path / "capture"),
           **QUIET_JUDGE}
    with serve_process([sys.executable, "-m", "hotelbot_cli"], env, tmp_path) as base:
        yield base


def test_the_schema_states_the_servers_limits_and_every_status(server):
    schema = httpx.get(f"{server}/openapi.json").json()
    parts = schema["components"]["schemas"]
    text = parts["ClassifyRequest"]["properties"]["text"]
    assert text["maxLength"] == 300 and text["minLength"] == 1 and text["pattern"].startswith("[^")
    texts = parts["BatchClassifyRequest"]["properties"]["texts"]
    assert texts["maxItems"] == 8 and texts["minItems"] == 1 and texts["items"]["maxLength"] == 300
    top_k = parts["SearchRequest"]["properties"]["top_k"]
    assert (top_k["minimum"], top_k["maximum"]) == (1, 50)
    for path in ("/classify", "/classify/batch", "/analyze", "/search", "/reply"):
        assert {"200", "413", "422", "503"} <= set(schema["paths"][path]["post"]["responses"]), path
    assert {"200", "404", "422", "503"} <= set(schema["paths"]["/feedback"]["post"]["responses"])
    assert schema["paths"]["/reply"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    # what the schema says is what the server does
    assert httpx.post(f"{server}/classify", json={"text": "x" * 301}).status_code == 413
    assert httpx.post(f"{server}/classify", json={"text": "x" * 300}).status_code == 200
    assert httpx.post(f"{server}/classify/batch", json={"texts": ["hola"] * 9}).status_code == 413
    assert httpx.post(f"{server}/classify", json={"text": "\u200b \t"}).status_code == 422
    assert httpx.post(f"{server}/classify", json={"text": "\u200bhola"}).status_code == 200
    assert httpx.post(f"{server}/classify", content=b"not json",
                      headers={"content-type": "application/json"}).status_code == 422


def test_schemathesis_finds_no_contract_violation(server, tmp_path):
    """A bounded run (a fixed seed, 25 examples per operation) of every check schemathesis has."""
    done = subprocess.run([sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
                           f"{server}/openapi.json", "--checks", "all", "--max-examples", "25", "--seed", "7",
                           "--report", "junit",
                           "--report-dir", str(tmp_path / "st")],
                          capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:]


def test_the_docs_pages_load_every_asset_from_the_server(server):
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{server}{page}")
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        urls = re.findall(r'(?:src|href)="([^"]+)"', html.text) + re.findall(r"spec-url=\"([^\"]+)\"", html.text)
        assert not [u for u in urls if re.match(r"^(https?:)?//", u)], f"{page} loads from elsewhere: {urls}"
        assert not re.search(r"https?://(cdn\.|fonts\.|unpkg|fastapi\.tiangolo)", html.text), page
        scripts = [u for u in urls if u.endswith(".js")]
        assert scripts, f"{page} has no script"
        for url in urls:
            asset = httpx.get(f"{server}{url}")
            assert asset.status_code == 200 and len(asset.content) > 100, url
    assert json.loads(httpx.get(f"{server}/openapi.json").text)["info"]["title"] == "hotelbot"
