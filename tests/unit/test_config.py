import json

import pytest

from hotelbot_cli.config import PROFILES, Settings, load_settings
from hotelbot_cli.errors import ConfigError


def test_defaults():
    s = load_settings(env={})
    assert s.training.epochs == 4 and s.validation.min_validation_score == 0.8
    assert s.data.validation_split == 0.2
    assert s.training.base_model == "packaged:multilingual-e5-small"
    assert s.sources == ["defaults"]
    assert s.validation.runtime_recheck_margin == 0.3
    assert load_settings(env={"HOTELBOT_RUNTIME_RECHECK_MARGIN": "0"}).validation.runtime_recheck_margin == 0.0


def test_precedence_defaults_file_env_flags(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"training_config": {"epochs": 7, "batch_size": 8, "learning_rate": 5e-5},
                               "data_config": {"validation_split": 0.3},
                               "validation_config": {"min_validation_score": 0.7}}))
    env = {"TRAINING_BATCH_SIZE": "32", "MIN_VALIDATION_SCORE": "0.75"}
    s = load_settings(config_file=cfg, env=env, overrides={"training_config": {"batch_size": 4, "epochs": None}})
    assert s.training.epochs == 7            # file beats default; flag not given
    assert s.training.learning_rate == 5e-5  # file
    assert s.training.batch_size == 4        # flag beats env beats file
    assert s.validation.min_validation_score == 0.75  # env beats file
    assert s.data.validation_split == 0.3
    assert s.sources == ["defaults", f"file:{cfg}", "env", "flags"]


def test_profile_is_a_default_layer_below_file_and_env(tmp_path):
    s = load_settings(profile="prod", env={})
    assert s.training.epochs == PROFILES["prod"]["training_config"]["epochs"]
    assert s.validation.min_validation_score == 0.85
    s = load_settings(profile="prod", env={"TRAINING_EPOCHS": "2"})
    assert s.training.epochs == 2
    assert load_settings(profile="dev", env={}).training.epochs == 1


def test_config_file_from_env_and_paths(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"training_config": {"epochs": 3}}))
    s = load_settings(env={"HOTELBOT_CONFIG": str(cfg), "HOTELBOT_REGISTRY": "/tmp/r", "HOTELBOT_HOME": "/tmp/h",
                           "MODEL_VERSION": "v0002"})
    assert s.training.epochs == 3
    assert str(s.paths.registry) == "/tmp/r"
    assert s.paths.tracking_uri == "sqlite:////tmp/h/mlflow.db"
    assert s.model_version == "v0002"
    s = load_settings(env={"MLFLOW_TRACKING_URI": "sqlite:///x.db"}, path_overrides={"registry": "/tmp/flag"})
    assert s.paths.tracking_uri == "sqlite:///x.db" and str(s.paths.registry) == "/tmp/flag"


@pytest.mark.parametrize("env,fragment", [
    ({"TRAINING_EPOCHS": "zero"}, "expected int"),
    ({"TRAINING_EPOCHS": "0"}, "epochs must be >= 1"),
    ({"TRAINING_LEARNING_RATE": "-1"}, "learning_rate"),
    ({"TRAINING_VALIDATION_SPLIT": "0.9"}, "validation_split"),
    ({"MIN_VALIDATION_SCORE": "1.5"}, "min_validation_score"),
    ({"HOTELBOT_RUNTIME_RECHECK_MARGIN": "-0.1"}, "runtime_recheck_margin"),
    ({"HOTELBOT_RUNTIME_RECHECK_MARGIN": "2"}, "runtime_recheck_margin"),
    ({"TRAINING_LABEL_SMOOTHING": "0.6"}, "label_smoothing"),
    ({"TRAINING_LABEL_SMOOTHING": "-0.1"}, "label_smoothing"),
])
def test_bad_values_are_config_errors(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env=env)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(config_file=tmp_path / "missing.json", env={})
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    with pytest.raises(ConfigError, match="line 1"):
        load_settings(config_file=bad, env={})
    unknown = tmp_path / "u.json"
    unknown.write_text(json.dumps({"training_config": {"epoch": 3}}))
    with pytest.raises(ConfigError, match="epoch"):
        load_settings(config_file=unknown, env={})
    with pytest.raises(ConfigError, match="unknown profile"):
        load_settings(profile="staging", env={})


def test_to_dict_has_seed_shape():
    d = Settings().to_dict()
    assert {"training_config", "data_config", "validation_config"} <= set(d)
