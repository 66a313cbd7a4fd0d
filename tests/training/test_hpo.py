"""HPO that scales: the study in an RDB storage, resumed after SIGKILL, shared by two processes, with a
median pruner whose pruned trials count as finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from hotelbot_cli.config import TrainingConfig
from hotelbot_cli.data import Example
from hotelbot_cli.errors import ConfigError
from hotelbot_cli.training import hpo


class FakeFits:
    """fit_classifier without a model: each trial's score per epoch comes from ``scores(call number)``,
    reported through the trial's pruning callback as the Trainer would."""

    def __init__(self, scores):
        self.scores = scores
        self.calls: list[TrainingConfig] = []

    def __call__(self, cfg, metric, train, validation, labels, models_dir, **kwargs):
        number = len(self.calls)
        self.calls.append(cfg)
        control = SimpleNamespace(should_training_stop=False)
        score = self.scores(number)
        for epoch in (1, 2, 3):
            for callback in kwargs.get("extra_callbacks") or ():
                callback.on_evaluate(None, SimpleNamespace(epoch=float(epoch)), control,
                                     metrics={f"eval_{metric}": score})
            if control.should_training_stop:
                break
        return SimpleNamespace(metrics={metric: score}, threshold=0.5, steps=3, model=f"model-{number}")


def request(tmp_path, trials, study="s"):
    return hpo.HpoRequest(TrainingConfig(epochs=3), "macro_f1", tmp_path, trials,
                          f"sqlite:///{tmp_path / 'optuna.db'}", study)


DATA = [Example("hola", "greeting")]


def test_poor_trials_are_pruned_and_count_as_finished(tmp_path, monkeypatch):
    fits = FakeFits(lambda n: 0.9 if n < 2 else 0.1)  # after two good trials, every trial is poor
    monkeypatch.setattr(hpo, "fit_classifier", fits)
    fit, cfg, summary = hpo.run_hpo(request(tmp_path, 5), DATA, DATA, ["greeting"])
    assert summary["finished"] == 5 and summary["complete"] == 2 and summary["pruned"] == 3
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete", "pruned", "pruned", "pruned"]
    assert summary["best_score"] == 0.9 and fit.model in ("model-0", "model-1")  # kept in memory: no retraining
    assert len(fits.calls) == 5 and "best_retrained" not in summary
    assert summary["storage"].startswith("sqlite:///")


def test_a_rerun_resumes_the_study_and_retrains_a_best_trial_it_did_not_run(tmp_path, monkeypatch):
    fits = FakeFits(lambda n: [0.5, 0.8, 0.6][n])
    monkeypatch.setattr(hpo, "fit_classifier", fits)
    _, _, first = hpo.run_hpo(request(tmp_path, 3), DATA, DATA, ["greeting"], publish=False)  # e.g. a worker
    assert first["finished"] == 3 and first["best_trial"] == 1
    again = FakeFits(lambda n: 0.8)
    monkeypatch.setattr(hpo, "fit_classifier", again)
    fit, cfg, summary = hpo.run_hpo(request(tmp_path, 3), DATA, DATA, ["greeting"])
    assert summary["ran_here"] == 0 and summary["best_retrained"] is True  # the study was full: no new trial
    assert len(again.calls) == 1 and again.calls[0].learning_rate == cfg.learning_rate
    assert cfg.learning_rate == summary["best_params"]["learning_rate"]
    more = hpo.run_hpo(request(tmp_path, 4), DATA, DATA, ["greeting"])[2]  # asking for more trials continues it
    assert more["finished"] == 4 and more["ran_here"] == 1


def test_a_bad_storage_url_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot use the HPO storage"):
        hpo.open_study("nosuchdialect://x", "s", 0)


def test_study_name_follows_data_and_fixed_config_not_the_searched_values():
    base = TrainingConfig()
    name = hpo.study_name("f" * 64, base, "macro_f1", None)
    assert name == hpo.study_name("f" * 64, TrainingConfig(learning_rate=1e-3, epochs=9), "macro_f1", None)
    assert name != hpo.study_name("e" * 64, base, "macro_f1", None)
    assert name != hpo.study_name("f" * 64, TrainingConfig(max_length=32), "macro_f1", None)


# ---------------------------------------------------------------- real processes

def finished_in(db, study=None):
    """(study name, finished trials) read from the sqlite file directly, read-only: the test never creates
    the schema while the process under test does."""
    import sqlite3

    if not db.exists():
        return None, 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            row = con.execute("SELECT study_id, study_name FROM studies ORDER BY study_id LIMIT 1").fetchone()
            if row is None:
                return None, 0
            done = con.execute("SELECT COUNT(*) FROM trials WHERE study_id = ? AND state IN ('COMPLETE', 'PRUNED')",
                               (row[0],)).fetchone()[0]
            return row[1], done
    except sqlite3.Error:  # the schema is being created
        return None, 0


def test_a_killed_search_resumes_and_two_processes_share_the_study(tiny_model, tiny_data, isolated_env, tmp_path):
    """SIGKILL a search after its first finished trial; the same command then resumes the study beside a
    --hpo-worker process: the study ends with the asked-for trials, both processes ran some, one version."""
    from hotelbot_cli.registry import ModelRegistry

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    env = {**os.environ, "HOTELBOT_BASE_MODEL": str(tiny_model), "TRAINING_EPOCHS": "3", "TRAINING_BATCH_SIZE": "8",
           "OMP_NUM_THREADS": "1", "MIN_VALIDATION_SCORE": "0"}
    cli = [sys.executable, "-m", "hotelbot_cli"]
    subprocess.run([*cli, "prepare", str(tiny_data)], check=True, capture_output=True, env=env)
    search = [*cli, "train", "--hpo", "--trials", "6", "--hpo-storage", storage, "--json"]
    first_log = open(tmp_path / "first.log", "wb")  # a file, not a pipe nobody reads while polling
    first = subprocess.Popen(search, env=env, stdout=first_log, stderr=subprocess.STDOUT)
    db = tmp_path / "shared.db"
    deadline = time.monotonic() + 240
    study, before = None, 0
    while time.monotonic() < deadline and first.poll() is None and before < 1:
        time.sleep(0.5)
        study, before = finished_in(db)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
    first.send_signal(signal.SIGKILL)
    first.wait()
    first_log.close()
    study, before = finished_in(db)
    assert 1 <= before < 6
    registry = ModelRegistry(isolated_env / "registry")
    assert registry.list_versions() == []

    with open(tmp_path / "worker.out", "wb") as out, open(tmp_path / "worker.err", "wb") as err:
        worker = subprocess.Popen([*search[:-1], "--hpo-worker", "--json"], env=env, stdout=out, stderr=err)
        resumed = subprocess.run(search, env=env, capture_output=True, text=True, timeout=400)
        worker.wait(timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert worker.returncode == 0, (tmp_path / "worker.err").read_text()[-2000:]
    doc, helped = json.loads(resumed.stdout), json.loads((tmp_path / "worker.out").read_text())
    summary = doc["hpo"]
    assert summary["study"] == study == helped["study"]
    assert finished_in(db)[1] >= 6
    # both processes took trials from the one study (which one ran how many depends on who started first)
    assert summary["ran_here"] + helped["ran_here"] + before >= 6 and helped["finished"] >= 6
    assert summary["ran_here"] < 6  # the trials finished before the kill were not run again
    assert [v.name for v in registry.list_versions()] == [doc["version"]]  # the worker published nothing
