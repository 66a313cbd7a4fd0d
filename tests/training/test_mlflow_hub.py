"""MLflow as the team hub: each training logs the version as a pyfunc model (the project's own predictor) and
its data set, registers it in the Model Registry; deploy, rollback and canaries move the aliases; MLflow being
down never blocks a deploy. Against the sqlite store, and against a real `mlflow server` with two trainings
logging at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from conftest import free_port

from hotelbot_cli.cli.app import app
from hotelbot_cli.training import mlflow_hub

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def doc(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def aliases(uri, name):
    from mlflow.tracking import MlflowClient

    return {alias: MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(name, alias).tags[
        mlflow_hub.VERSION_TAG] for alias in MlflowClient(uri, registry_uri=uri).get_registered_model(name).aliases}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fresh sqlite tracking store and a model name of this test's own."""
    uri = f"sqlite:///{tmp_path / 'hub.db'}"
    monkeypatch.setenv(mlflow_hub.SWITCH_ENV, "on")  # conftest turns it off for the rest of the suite
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(mlflow_hub.MODEL_NAME_ENV, "hotelbot-intent-test")
    return uri


def test_training_registers_a_pyfunc_model_that_answers_like_predict(hub, tiny_data, isolated_env, fast_train_env):
    import mlflow
    from mlflow.tracking import MlflowClient

    assert cli("prepare", tiny_data).exit_code == 0
    trained = doc(cli("train", "--json"))
    record = trained["mlflow_model"]
    assert record["name"] == "hotelbot-intent-test" and record["uri"] == f"models:/hotelbot-intent-test/{record['version']}"
    client = MlflowClient(hub, registry_uri=hub)
    version = client.get_model_version("hotelbot-intent-test", record["version"])
    assert version.tags[mlflow_hub.VERSION_TAG] == trained["version"] and version.run_id == trained["mlflow_run_id"]

    texts = ["¿a qué hora es el desayuno?", "quiero ver las noticias", "hola buenas", "la clave del wifi"]
    mlflow.set_tracking_uri(hub)
    answers = mlflow.pyfunc.load_model(record["uri"]).predict(texts)
    predicted = doc(cli("predict", "--version", trained["version"], "--json", *texts))
    rows = predicted["predictions"] if isinstance(predicted, dict) else predicted
    assert [a["intent"] for a in answers] == [r["intent"] for r in rows]
    assert [a["confidence"] for a in answers] == [r["confidence"] for r in rows]

    run = client.get_run(trained["mlflow_run_id"])
    [dataset] = [d.dataset for d in run.inputs.dataset_inputs]
    meta = json.loads((isolated_env / "registry/versions" / trained["version"] / "metadata.json").read_text())
    assert dataset.name == "hotel_intents" and dataset.digest == meta["dataset_fingerprint"][:32]


def test_deploy_rollback_and_canary_move_the_aliases(hub, registry_copy):
    name = "hotelbot-intent-test"
    assert doc(cli("deploy", "v0001", "--json"))["notifications"] == []
    assert aliases(hub, name) == {"production": "v0001"}
    doc(cli("deploy", "v0002", "--json"))  # v0002 was never trained with this store: registered on demand
    assert aliases(hub, name) == {"production": "v0002", "previous": "v0001"}
    doc(cli("rollback", "--json"))
    assert aliases(hub, name) == {"production": "v0001"}
    doc(cli("deploy", "v0002", "--canary", "20", "--json"))
    assert aliases(hub, name) == {"production": "v0001", "canary": "v0002"}
    doc(cli("canary", "promote", "--json"))
    assert aliases(hub, name) == {"production": "v0002", "previous": "v0001"}
    doc(cli("deploy", "v0001", "--canary", "5", "--json"))
    doc(cli("canary", "abort", "--json"))
    assert aliases(hub, name) == {"production": "v0002", "previous": "v0001"}


def test_a_helper_process_moves_the_aliases_while_the_operation_works(hub, registry_copy):
    """A CLI deploy has not imported MLflow: AliasSync starts a helper process that imports it meanwhile and
    moves the aliases when asked (here forced with spawn=True: this test process has MLflow loaded). A helper
    that died leaves the move to this process; an operation that changed nothing stops its helper."""
    from hotelbot_cli.registry.store import utc_now

    name = "hotelbot-intent-test"
    registry_copy.write_current_state({"version": "v0002", "previous": ["v0001"], "deployed_at": utc_now()})
    sync = mlflow_hub.AliasSync(hub, spawn=True)
    assert sync.sync(registry_copy, hub) == [] and sync.moved_by == "helper"
    assert aliases(hub, name) == {"production": "v0002", "previous": "v0001"}

    registry_copy.write_current_state({"version": "v0001", "previous": [], "deployed_at": utc_now()})
    dead = mlflow_hub.AliasSync(hub, spawn=True)
    helper = dead._helper
    helper.kill()
    helper.wait()
    assert dead.sync(registry_copy, hub) == [] and dead.moved_by == "this process"
    assert aliases(hub, name) == {"production": "v0001"}

    idle = mlflow_hub.AliasSync(hub, spawn=True)
    helper = idle._helper
    idle.close()
    assert helper.poll() is not None and idle.moved_by is None


def test_a_cli_deploy_moves_the_aliases_through_its_helper(hub, registry_copy, monkeypatch):
    """The path a `hotelbot deploy` process takes (no MLflow loaded: a helper per command), forced here."""
    from hotelbot_cli.pipeline import deploy as deploy_module

    made = []

    def helper_always(uri, spawn=None):  # where exclusive() lets a helper start, start one
        made.append(mlflow_hub.AliasSync(uri, spawn=True if spawn is None else spawn))
        return made[-1]

    monkeypatch.setattr(deploy_module, "AliasSync", helper_always)
    assert doc(cli("deploy", "v0001", "--json"))["notifications"] == []
    doc(cli("deploy", "v0002", "--json"))
    assert aliases(hub, "hotelbot-intent-test") == {"production": "v0002", "previous": "v0001"}
    assert [m.moved_by for m in made] == ["helper", "helper"]


def test_mlflow_down_warns_and_never_blocks_a_deploy(registry_copy, monkeypatch):
    monkeypatch.setenv(mlflow_hub.SWITCH_ENV, "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    started = time.monotonic()
    result = cli("deploy", "v0002")
    assert result.exit_code == 0, result.output
    assert "MLflow aliases not updated" in result.stderr and "the deploy stands" in result.stderr
    assert json.loads((registry_copy.root / "current.json").read_text())["version"] == "v0002"
    assert time.monotonic() - started < 120  # no minutes of retries (not a timing assertion: a hang guard)


def test_the_hub_can_be_turned_off(hub, registry_copy, monkeypatch):
    monkeypatch.setenv(mlflow_hub.SWITCH_ENV, "off")
    assert doc(cli("deploy", "v0002", "--json"))["notifications"] == []
    from mlflow.tracking import MlflowClient

    assert MlflowClient(hub, registry_uri=hub).search_registered_models() == []


def test_desired_aliases_follow_the_deployed_state():
    state = {"version": "v0003", "previous": ["v0001", "v0002"], "canary": {"version": "v0004", "weight": 10}}
    assert mlflow_hub.desired_aliases(state) == {"production": "v0003", "previous": "v0002", "canary": "v0004"}
    assert mlflow_hub.desired_aliases({}) == {"production": None, "previous": None, "canary": None}


def test_a_real_mlflow_server_with_two_trainings_logging_at_once(tiny_model, tiny_data, isolated_env, tmp_path):
    """`mlflow server` on 127.0.0.1 (a free port, sqlite backend, proxied artifacts); two `hotelbot train`
    processes at once: two runs, two registered model versions, each the right version's; then a deploy
    sets production on the server."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"))
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HOTELBOT_BASE_MODEL": str(tiny_model),
               "TRAINING_EPOCHS": "2", "TRAINING_BATCH_SIZE": "16", "TRAINING_LEARNING_RATE": "0.002",
               "OMP_NUM_THREADS": "1", "MIN_VALIDATION_SCORE": "0", mlflow_hub.MODEL_NAME_ENV: "hotelbot-intent",
               mlflow_hub.SWITCH_ENV: "on"}
        hb = [sys.executable, "-m", "hotelbot_cli"]
        subprocess.run([*hb, "prepare", str(tiny_data)], check=True, capture_output=True, env=env)
        trainings = [subprocess.Popen([*hb, "train", "--json", "--force", "--seed", str(seed)], env=env,
                                      stdout=open(tmp_path / f"train{seed}.out", "wb"),
                                      stderr=open(tmp_path / f"train{seed}.err", "wb")) for seed in (1, 2)]
        docs = []
        for seed, process in zip((1, 2), trainings):
            process.wait(timeout=400)
            assert process.returncode == 0, (tmp_path / f"train{seed}.err").read_text()[-2000:]
            out = (tmp_path / f"train{seed}.out").read_text()
            assert out.lstrip().startswith("{"), out[:3000]  # stdout is the JSON document alone
            docs.append(json.loads(out))
        assert sorted(d["version"] for d in docs) == ["v0001", "v0002"]

        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri, registry_uri=uri)
        registered = client.search_model_versions("name = 'hotelbot-intent'")
        assert sorted(v.tags[mlflow_hub.VERSION_TAG] for v in registered) == ["v0001", "v0002"]
        for seed, d in zip((1, 2), docs):
            assert "failed" not in (tmp_path / f"train{seed}.err").read_text(), (tmp_path / f"train{seed}.err").read_text()
            assert d["mlflow_model"]["name"] == "hotelbot-intent"
            version = client.get_model_version("hotelbot-intent", d["mlflow_model"]["version"])
            assert version.run_id == d["mlflow_run_id"] and version.tags[mlflow_hub.VERSION_TAG] == d["version"]
            assert [i.dataset.name for i in client.get_run(d["mlflow_run_id"]).inputs.dataset_inputs] == ["hotel_intents"]
        deployed = subprocess.run([*hb, "deploy", "v0002", "--json"], env=env, capture_output=True, text=True,
                                  timeout=300)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert json.loads(deployed.stdout)["notifications"] == []
        assert client.get_model_version_by_alias("hotelbot-intent", "production").tags[mlflow_hub.VERSION_TAG] == "v0002"
    finally:
        server.terminate()  # `mlflow server` passes SIGTERM on to its uvicorn process
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
