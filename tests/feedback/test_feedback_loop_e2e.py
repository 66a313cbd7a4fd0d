"""The loop end to end, with a real uvicorn server: guests' messages answered by a deployed version with
`serve --capture`, one flagged with POST /feedback, reviewed in the inbox (CSV round trip), merged with
`prepare --add`, retrained with `train --incremental` from the deployed version, deployed; the running
server then answers with the new version."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time

import httpx
from typer.testing import CliRunner

from conftest import TINY_INTENTS
from hotelbot_cli.cli.app import app

runner = CliRunner()


def cli(*args):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output)
    return result


def test_from_a_running_server_to_a_new_deployed_version(registry_copy, isolated_env, tiny_model, monkeypatch,
                                                         serve_process):
    for name, value in {"HOTELBOT_BASE_MODEL": str(tiny_model), "TRAINING_EPOCHS": "4", "TRAINING_BATCH_SIZE": "8",
                        "TRAINING_LEARNING_RATE": "0.002", "HOTELBOT_SERVE_WATCH_INTERVAL_S": "0.2"}.items():
        monkeypatch.setenv(name, value)
    data = isolated_env / "tiny.json"
    data.write_text(json.dumps({"intents": TINY_INTENTS}, ensure_ascii=False), "utf-8")
    cli("prepare", str(data))
    cli("deploy", "v0001", "--reason", "before the loop")
    capture = isolated_env / "capture"
    env = {**os.environ, "HOTELBOT_SERVE_CAPTURE_DIR": str(capture), "HOTELBOT_SERVE_CAPTURE_BELOW": "0.99"}

    guests = ["a que hora sirven el desayuno mañana, soy Luis Pérez", "la clave del wifi porfa",
              "la clave del wifi porfa!!", "me pasan las noticias de hoy"]
    with serve_process([sys.executable, "-m", "hotelbot_cli"], env, isolated_env) as base:
        answers = [httpx.post(f"{base}/classify", json={"text": t}, timeout=30).json() for t in guests]
        assert all(a["model_version"] == "v0001" and len(a["request_id"]) == 32 for a in answers)
        flagged = httpx.post(f"{base}/feedback", json={"request_id": answers[0]["request_id"],
                                                       "intent": "breakfast_info"}, timeout=30)
        assert flagged.status_code == 200, flagged.text

        inbox = json.loads(cli("inbox", "--capture", str(capture), "--json").stdout)
        texts = [t for g in inbox["groups"] for t in g["texts"]]
        assert "a que hora sirven el desayuno mañana, soy <PERSON>" in texts  # masked before it was written
        assert not any("Luis" in t for t in texts)
        wifi = next(g for g in inbox["groups"] if "wifi" in g["texts"][0])
        assert wifi["count"] == 2  # the two near-duplicates in one group

        csv_path = isolated_env / "inbox.csv"
        cli("inbox", "export", str(csv_path), "--capture", str(capture))
        rows = list(csv.DictReader(io.StringIO(csv_path.read_text("utf-8"))))
        truth = {"desayuno": "breakfast_info", "wifi": "wifi_info", "noticias": "get_news"}
        for row in rows:
            row["label"] = next(v for k, v in truth.items() if k in row["text"])
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        csv_path.write_text(out.getvalue(), "utf-8")
        cli("inbox", "import", str(csv_path), "--capture", str(capture))

        added = json.loads(cli("prepare", "--add", str(capture / "labeled.jsonl"), "--json").stdout)
        assert (added["added"], added["skipped_duplicates"], added["new_intents"]) == (3, 1, [])  # "porfa!!" = "porfa"
        trained = json.loads(cli("train", "--incremental", "--json").stdout)
        new = trained["version"]
        meta = json.loads((registry_copy.root / "versions" / new / "metadata.json").read_text())
        assert meta["parent"] == "v0001"  # from the deployed version
        train_texts = (registry_copy.root / "versions" / new / "data" / "train.jsonl").read_text("utf-8")
        assert "la clave del wifi porfa" in train_texts
        cli("deploy", new, "--reason", "labeled guest messages", "--tolerance", "1")  # a tiny model: no F1 gate

        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/ready", timeout=10).json()["model_version"] != new:
            assert time.monotonic() < deadline, "the server did not follow the deploy"
            time.sleep(0.2)
        answer = httpx.post(f"{base}/classify", json={"text": "la clave del wifi porfa"}, timeout=30).json()
        assert answer["model_version"] == new
