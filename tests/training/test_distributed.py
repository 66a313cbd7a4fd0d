"""Training under the Trainer's own launcher (torchrun), on 2 CPU processes (gloo), and the device-agnostic
parts of GPU training: class weights that follow the model, mixed precision flags, HOTELBOT_DEVICE."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hotelbot_cli.config import TrainingConfig
from hotelbot_cli.errors import ConfigError


def hotelbot_env(tiny_model, mlflow_uri, batch_size):
    env = dict(os.environ)
    env.update({"HOTELBOT_BASE_MODEL": str(tiny_model), "TRAINING_EPOCHS": "12",
                "TRAINING_BATCH_SIZE": str(batch_size), "TRAINING_LEARNING_RATE": "0.002",
                "MLFLOW_TRACKING_URI": mlflow_uri, "OMP_NUM_THREADS": "1", "MIN_VALIDATION_SCORE": "0"})
    return env


def mlflow_runs(uri):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_torchrun_two_cpu_processes_publish_one_version_and_one_run(tiny_model, tiny_data, isolated_env,
                                                                     tmp_path, monkeypatch):
    """One new version, one new MLflow run, the same metrics as one process with the same effective batch
    (16 = 2 processes x 8 per process), and both processes exit 0."""
    from typer.testing import CliRunner

    from hotelbot_cli.cli.app import app
    from hotelbot_cli.registry import ModelRegistry

    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    for key, value in hotelbot_env(tiny_model, uri, 16).items():
        if key.startswith(("TRAINING_", "HOTELBOT_", "MLFLOW_", "MIN_")):
            monkeypatch.setenv(key, value)
    assert CliRunner().invoke(app, ["prepare", str(tiny_data)]).exit_code == 0
    single = CliRunner().invoke(app, ["train", "--json", "--patience", "0"])  # one process, in this one
    assert single.exit_code == 0, single.output
    registry = ModelRegistry(isolated_env / "registry")
    before_versions, before_runs = len(registry.list_versions()), len(mlflow_runs(uri))

    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "hotelbot_cli", "train", "--json", "--patience", "0", "--force"],
                              capture_output=True, text=True, env=hotelbot_env(tiny_model, uri, 8), timeout=400)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "process 1 of 2: done" in launched.stderr
    doc = json.loads(launched.stdout)  # only the main process prints: one JSON document
    assert len(registry.list_versions()) == before_versions + 1
    assert doc["version"] == registry.list_versions()[-1].name
    runs = mlflow_runs(uri)
    assert len(runs) == before_runs + 1
    assert doc["mlflow_run_id"] in {r.info.run_id for r in runs}
    # the Trainer really ran data-parallel: half the optimizer steps per epoch of one process at batch 8
    steps = registry.get(doc["version"]).metadata["training"]["steps"]
    assert steps == 12 * 3  # 40 training texts / (2 x 8) per step = 3 steps per epoch
    one = json.loads(single.stdout)["metrics"]
    for key in ("accuracy", "macro_f1"):
        assert abs(doc["metrics"][key] - one[key]) <= 0.15, (doc["metrics"], one)


def test_hpo_is_refused_under_a_launcher(monkeypatch, tmp_path):
    from hotelbot_cli.components.intents.train import train_classifier
    from hotelbot_cli.config import load_settings
    from hotelbot_cli.registry import ModelRegistry

    monkeypatch.setenv("WORLD_SIZE", "2")
    settings = load_settings()
    with pytest.raises(ConfigError, match="--hpo is not run under torchrun"):
        train_classifier(settings, tmp_path, ModelRegistry(tmp_path / "registry"), hpo_trials=2)


def test_secondary_process_steps_do_not_train_main_only_components(monkeypatch):
    from hotelbot_cli.components import get
    from hotelbot_cli.pipeline.train import SECONDARY, _run_step

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    knowledge = get("knowledge")
    assert not knowledge.distributed and get("classifier").distributed
    outcome = _run_step(knowledge, request=None)  # never reaches train(): the request is not even read
    assert outcome.status == SECONDARY and outcome.version is None


# ---------------------------------------------------------------- GPU correctness, tested on any device

def test_class_weights_are_a_buffer_that_follows_the_model(tiny_model):
    import torch

    from hotelbot_cli.modeling import ClassifierConfig, SentenceClassifier, load_base_encoder, resolve_base_model

    _, encoder = load_base_encoder(resolve_base_model(str(tiny_model), tiny_model), frozen=True)
    model = SentenceClassifier(encoder, ClassifierConfig(labels=["a", "b"]))
    model.class_weights = torch.tensor([1.0, 3.0])
    assert "class_weights" in dict(model.named_buffers())
    assert "class_weights" not in model.state_dict()  # saved weights (and their checksums) unchanged
    model.to(torch.float64)  # any .to() moves it with the weights, as .to("cuda") does
    assert model.class_weights.dtype == torch.float64
    ids = torch.tensor([[2, 5, 6, 3]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([1]))
    assert torch.isfinite(out["loss"])


def test_mixed_precision_reaches_the_trainer_and_fp16_needs_cuda(monkeypatch):
    import torch

    from hotelbot_cli.training import loop
    from hotelbot_cli.training.loop import check_precision, training_arguments

    args = training_arguments(TrainingConfig(precision="bf16"), "/tmp/unused", 100)
    assert args.bf16 and not args.fp16
    assert not training_arguments(TrainingConfig(precision="fp32"), "/tmp/unused", 100).bf16
    # the default, auto: the intent classifier trains in bf16 on a CPU that computes it natively, in float32
    # on any other CPU and on a GPU; the other components in float32
    assert TrainingConfig().precision == "auto"
    monkeypatch.setenv("HOTELBOT_DEVICE", "cpu")
    for native in (True, False):
        monkeypatch.setattr(loop, "cpu_has_bf16", lambda native=native: native)
        assert check_precision(TrainingConfig(), auto_bf16=True) == ("bf16" if native else "fp32")
        assert check_precision(TrainingConfig()) == "fp32"
        assert not training_arguments(TrainingConfig(), "/tmp/unused", 100).bf16
    if torch.cuda.is_available():
        monkeypatch.setenv("HOTELBOT_DEVICE", "cuda")
        assert check_precision(TrainingConfig(), auto_bf16=True) == "fp32"
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainingConfig(precision="fp8")
    if torch.cuda.is_available():
        assert training_arguments(TrainingConfig(precision="fp16"), "/tmp/unused", 100).fp16
    else:
        with pytest.raises(ConfigError, match="--fp16 needs a CUDA GPU"):
            check_precision(TrainingConfig(precision="fp16"))


def test_train_refuses_fp16_without_cuda_before_anything_is_logged(tmp_path):
    import torch
    from typer.testing import CliRunner

    from hotelbot_cli.cli.app import app

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(app, ["train", "--fp16", "--registry", str(tmp_path / "r")])
    assert result.exit_code == 1 and "--fp16 needs a CUDA GPU" in result.output
    assert not (tmp_path / "r").exists()
    result = CliRunner().invoke(app, ["train", "--fp16", "--bf16"])
    assert result.exit_code == 2 and "exclude each other" in result.output
    result = CliRunner().invoke(app, ["train", "--fp32", "--bf16"])
    assert result.exit_code == 2 and "exclude each other" in result.output


def test_device_choice(monkeypatch):
    import torch

    from hotelbot_cli.runtime.device import (CPU_PROVIDER, CUDA_PROVIDER, DEVICE_ENV, onnx_providers,
                                             requested_device, torch_device)

    assert requested_device() == "auto"
    assert torch_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert torch_device().type == "cpu"
    assert onnx_providers(available=[CUDA_PROVIDER, CPU_PROVIDER]) == [CPU_PROVIDER]
    monkeypatch.setenv(DEVICE_ENV, "cuda:1")
    assert onnx_providers(available=[CUDA_PROVIDER, CPU_PROVIDER]) == [(CUDA_PROVIDER, {"device_id": 1}),
                                                                          CPU_PROVIDER]
    assert onnx_providers(available=[CPU_PROVIDER]) == [CPU_PROVIDER]  # a CPU onnxruntime: CPU, one warning
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert onnx_providers(available=[CPU_PROVIDER]) == [CPU_PROVIDER]
    assert onnx_providers(available=[CUDA_PROVIDER, CPU_PROVIDER])[0][0] == CUDA_PROVIDER
    monkeypatch.setenv(DEVICE_ENV, "gpu")
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        requested_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        with pytest.raises(ConfigError, match="torch sees no CUDA device"):
            torch_device()


def test_torch_predictor_runs_on_the_chosen_device(registry_copy, monkeypatch):
    import torch

    from hotelbot_cli.runtime import TorchPredictor

    monkeypatch.setenv("HOTELBOT_DEVICE", "auto")
    predictor = TorchPredictor.from_registry(registry_copy, "v0001")
    assert predictor.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert next(predictor.model.parameters()).device == predictor.device
    [answer] = predictor.predict(["¿a qué hora es el desayuno?"])
    assert answer.intent and 0.0 <= answer.confidence <= 1.0
