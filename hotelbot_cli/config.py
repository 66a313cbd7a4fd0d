"""Settings: defaults < JSON config file < environment < flags.

The config file has the seed's shape::

    {
      "training_config":   {"epochs": 4, "batch_size": 16, "learning_rate": 1e-4, ...},
      "data_config":       {"validation_split": 0.2, "seed": 42, ...},
      "validation_config": {"min_validation_score": 0.8, "metric": "macro_f1"}
    }

Every section is a dataclass that validates itself in ``__post_init__`` and round-trips through
``to_dict``/``from_dict``. :func:`load_settings` layers the sources; the CLI passes its flags as the
last layer, so a flag always wins.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Self

from .errors import ConfigError

DEFAULT_BASE_MODEL = "packaged:multilingual-e5-small"
POOLING_CHOICES = ("mean", "cls")
METRIC_CHOICES = ("macro_f1", "accuracy", "weighted_f1")


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")


@dataclass
class _Section:
    """Shared to_dict/from_dict for the config sections."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> Self:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: _coerce(known[k].type, v, f"{source}.{k}") for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merged(self, overrides: Mapping[str, Any], *, source: str) -> Self:
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ConfigError(f"unknown key(s) in {source}: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        clean = {k: _coerce(known[k].type, v, f"{source} {k}") for k, v in overrides.items() if v is not None}
        return replace(self, **clean)


def _coerce(type_name: Any, value: Any, where: str) -> Any:
    """Turn strings (environment) and JSON numbers into the field's type, with a clear error."""
    kind = str(type_name).replace("Optional[", "").replace(" | None", "")
    if value is None:
        return None
    if " | " in kind:  # a union such as "int | str": the first type the value converts to
        for part in kind.split(" | "):
            try:
                return _coerce(part, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {kind}, got {value!r}")
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(str(value).strip()) if isinstance(value, str) else int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind.startswith("str"):
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {kind.split('[')[0]}, got {value!r}") from None
    return value


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def redact_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` URL in it replaced by ***."""
    return re.sub(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


@dataclass
class TrainingConfig(_Section):
    base_model: str = DEFAULT_BASE_MODEL
    epochs: int = 4
    batch_size: int = 16
    learning_rate: float = 1e-4
    head_learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_length: int = 64
    seed: int = 42
    early_stopping_patience: int = 2
    dropout: float = 0.1
    pooling: str = ""  # "" = what the base model needs (mean for the packaged models)
    freeze_embeddings: str = "auto"  # auto (freeze for large vocabularies) | yes | no
    # The bottom N transformer layers (and the embeddings) stay as pretrained: no backward pass through them.
    # auto: the intent classifier's bottom sixth (2 of e5's 12 layers), nothing for the other components
    freeze_layers: int | str = "auto"
    class_weights: bool = False  # weight the loss by inverse class frequency
    # the intents' cross-entropy against targets smoothed by this much (Szegedy et al. 2016); 0: off
    label_smoothing: float = 0.0
    calibrate_oos_threshold: bool = True  # choose the out-of-scope confidence threshold on validation
    # The out-of-scope detector (runtime.detector): auto (the better of the softmax threshold and nearest
    # neighbours on validation) | softmax | knn; oos_knn_k: the kNN detector's k (0: chosen on validation)
    oos_detector: str = "auto"
    oos_knn_k: int = 0
    group_by_length: bool = True  # batches of similar-length texts: less padding, same examples per epoch
    # `train --model-type all`: one joint NLU model (intents + entities + sentiment on one encoder) instead of
    # three separate ones, when the entity and sentiment splits are prepared (README "The joint NLU model")
    joint_nlu: bool = False
    # Mixed precision on the Trainer: auto (bf16 on a CPU with native bfloat16, else fp32) | fp32 (none) |
    # bf16 (CUDA with bf16 support, or recent CPUs) | fp16 (CUDA)
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        _check_range("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        _check_range("head_learning_rate", self.head_learning_rate, 0.0, 1.0, low_open=True)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        _check_range("dropout", self.dropout, 0.0, 0.9)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)
        if not 8 <= self.max_length <= 512:
            raise ConfigError(f"max_length must be between 8 and 512, got {self.max_length}")
        if self.early_stopping_patience < 0:
            raise ConfigError("early_stopping_patience must be >= 0 (0 turns early stopping off)")
        if self.pooling not in ("",) + POOLING_CHOICES:
            raise ConfigError(f"pooling must be one of {', '.join(POOLING_CHOICES)}, got {self.pooling!r}")
        if self.freeze_embeddings not in ("auto", "yes", "no"):
            raise ConfigError(f"freeze_embeddings must be auto, yes or no, got {self.freeze_embeddings!r}")
        if isinstance(self.freeze_layers, str) and self.freeze_layers.strip().isdigit():
            self.freeze_layers = int(self.freeze_layers)
        if self.freeze_layers != "auto" and (
            isinstance(self.freeze_layers, bool) or not isinstance(self.freeze_layers, int) or self.freeze_layers < 0
        ):
            raise ConfigError(f"freeze_layers must be auto or a whole number >= 0, got {self.freeze_layers!r}")
        if not self.base_model.strip():
            raise ConfigError("base_model must not be empty")
        if self.oos_detector not in ("auto", "softmax", "knn"):
            raise ConfigError(f"oos_detector must be auto, softmax or knn, got {self.oos_detector!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.oos_knn_k, bool) or not isinstance(self.oos_knn_k, int) or not 0 <= self.oos_knn_k <= 1000:
            raise ConfigError(
                f"oos_knn_k must be a whole number from 0 (choose on validation) to 1000, got {self.oos_knn_k!r}"
            )


@dataclass
class DataConfig(_Section):
    validation_split: float = 0.2
    seed: int = 42
    min_examples_per_intent: int = 10
    imbalance_ratio_warning: float = 3.0

    def __post_init__(self) -> None:
        _check_range("validation_split", self.validation_split, 0.0, 0.5, low_open=True)
        if self.min_examples_per_intent < 1:
            raise ConfigError("min_examples_per_intent must be >= 1")
        if self.imbalance_ratio_warning < 1:
            raise ConfigError("imbalance_ratio_warning must be >= 1")


@dataclass
class ValidationConfig(_Section):
    min_validation_score: float = 0.8
    metric: str = "macro_f1"
    # ONNX int8/fp32 may replace torch when its validation accuracy is within this many points of torch's
    runtime_tolerance_points: float = 0.5
    # when int8 alone misses the runtime gate: its answers this close to changing (probability) re-run on
    # fp32 (0: never); recorded per version
    runtime_recheck_margin: float = 0.3
    # the reply pipeline's deploy gate: the share of evaluation replies stating a fact their sources lack
    max_unsupported_fact_rate: float = 0.0
    # and the least share of its evaluation questions whose reply states every expected fact (the nearest
    # training reply scores 0.35 on the shipped set, the shipped reply model 0.77)
    min_fact_accuracy: float = 0.6

    def __post_init__(self) -> None:
        _check_range("min_validation_score", self.min_validation_score, 0.0, 1.0)
        _check_range("max_unsupported_fact_rate", self.max_unsupported_fact_rate, 0.0, 1.0)
        _check_range("min_fact_accuracy", self.min_fact_accuracy, 0.0, 1.0)
        _check_range("runtime_tolerance_points", self.runtime_tolerance_points, 0.0, 100.0)
        _check_range("runtime_recheck_margin", self.runtime_recheck_margin, 0.0, 1.0)
        if self.metric not in METRIC_CHOICES:
            raise ConfigError(f"metric must be one of {', '.join(METRIC_CHOICES)}, got {self.metric!r}")


@dataclass
class DeploymentConfig(_Section):
    enable_model_backup: bool = True
    enable_auto_rollback: bool = True
    auto_deploy_on_success: bool = False
    backups_to_keep: int = 5
    regression_tolerance: float = 0.05
    smoke_texts: int = 20
    lock_timeout_seconds: float = 60.0
    notify_webhook: str = ""
    notify_command: str = ""
    notify_timeout_seconds: float = 10.0
    # A running canary's automatic judgement by `serve` (serving.judge): once the canary and the stable version
    # have each answered canary_min_requests messages, the canary is aborted (when enable_auto_rollback) if its
    # fallback or error rate is higher beyond the tolerance AND Fisher's exact test (one-sided) gives
    # p < canary_alpha, if its mean confidence is lower by more than canary_max_confidence_drop, or if its p95
    # latency is above canary_max_latency_ratio times the stable one's.
    canary_min_requests: int = 200
    canary_alpha: float = 0.01
    canary_max_fallback_increase: float = 0.05
    canary_max_error_increase: float = 0.01
    canary_max_confidence_drop: float = 0.05
    canary_max_latency_ratio: float = 2.0
    # Drift (serving.drift): after drift_min_answers answers of the served version, a drift_alert is recorded and
    # notified once when its intents' PSI against its validation split is above drift_max_psi, or its fallback
    # rate exceeds the validation split's out_of_scope share by more than drift_max_fallback_increase.
    drift_min_answers: int = 500
    drift_max_psi: float = 0.25
    drift_max_fallback_increase: float = 0.10

    def __post_init__(self) -> None:
        if self.drift_min_answers < 1:
            raise ConfigError("drift_min_answers must be >= 1")
        if self.drift_max_psi <= 0:
            raise ConfigError("drift_max_psi must be > 0")
        _check_range("drift_max_fallback_increase", self.drift_max_fallback_increase, 0.0, 1.0)
        if self.canary_min_requests < 1:
            raise ConfigError("canary_min_requests must be >= 1")
        _check_range("canary_alpha", self.canary_alpha, 0.0, 1.0, low_open=True)
        for name in ("canary_max_fallback_increase", "canary_max_error_increase", "canary_max_confidence_drop"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        if self.canary_max_latency_ratio < 1.0:
            raise ConfigError("canary_max_latency_ratio must be >= 1")
        if self.backups_to_keep < 1:
            raise ConfigError("backups_to_keep must be >= 1")
        _check_range("regression_tolerance", self.regression_tolerance, 0.0, 1.0)
        if self.smoke_texts < 1:
            raise ConfigError("smoke_texts must be >= 1")
        if self.lock_timeout_seconds < 0:
            raise ConfigError("lock_timeout_seconds must be >= 0")
        if self.notify_webhook and not self.notify_webhook.startswith(("http://", "https://")):
            raise ConfigError(f"notify_webhook must be an http(s) URL, got {self.notify_webhook!r}")


@dataclass
class Paths:
    """Where things live. Relative defaults resolve against the working directory."""

    home: Path = field(default_factory=lambda: Path(".hotelbot"))
    registry: Path = field(default_factory=lambda: Path("registry"))
    reports: Path = field(default_factory=lambda: Path("reports"))
    logs: Path = field(default_factory=lambda: Path("logs"))
    data: Path = field(default_factory=lambda: Path("data/processed"))
    model_cache: Path | None = None
    mlflow_tracking_uri: str | None = None
    hpo_storage: str | None = None  # an Optuna RDB URL shared by HPO processes (default: sqlite under home)

    @property
    def models_dir(self) -> Path:
        return self.model_cache if self.model_cache is not None else self.home / "models"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def hpo_storage_url(self) -> str:
        if self.hpo_storage:
            return self.hpo_storage
        return f"sqlite:///{(self.home / 'hpo' / 'optuna.db').resolve()}"

    def to_dict(self) -> dict[str, str]:
        return {
            "home": str(self.home),
            "registry": str(self.registry),
            "reports": str(self.reports),
            "logs": str(self.logs),
            "data": str(self.data),
            "model_cache": str(self.models_dir),
            "mlflow_tracking_uri": self.tracking_uri,
            "hpo_storage": redact_url(self.hpo_storage_url),
        }


@dataclass
class Settings:
    training: TrainingConfig = field(default_factory=TrainingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    deployment: DeploymentConfig = field(default_factory=DeploymentConfig)
    paths: Paths = field(default_factory=Paths)
    model_version: str | None = None
    sources: list[str] = field(default_factory=lambda: ["defaults"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "training_config": self.training.to_dict(),
            "data_config": self.data.to_dict(),
            "validation_config": self.validation.to_dict(),
            "deployment_config": self.deployment.to_dict(),
            "paths": self.paths.to_dict(),
            "model_version": self.model_version,
            "sources": list(self.sources),
        }


# The documented development/production values (README: "Profiles").
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "dev": {
        "training_config": {"epochs": 1, "batch_size": 16, "max_length": 48, "early_stopping_patience": 0},
        "validation_config": {"min_validation_score": 0.5},
    },
    "prod": {
        "training_config": {"epochs": 8, "batch_size": 16, "max_length": 64, "early_stopping_patience": 2},
        "validation_config": {"min_validation_score": 0.85},
    },
}

# Environment variables the product promises (README: "Environment variables").
ENV_TRAINING = {
    "TRAINING_EPOCHS": "epochs",
    "TRAINING_BATCH_SIZE": "batch_size",
    "TRAINING_LEARNING_RATE": "learning_rate",
    "TRAINING_SEED": "seed",
    "TRAINING_MAX_LENGTH": "max_length",
    "TRAINING_JOINT_NLU": "joint_nlu",
    "TRAINING_OOS_DETECTOR": "oos_detector",
    "TRAINING_OOS_KNN_K": "oos_knn_k",
    "TRAINING_PRECISION": "precision",
    "TRAINING_LABEL_SMOOTHING": "label_smoothing",
    "TRAINING_FREEZE_LAYERS": "freeze_layers",
    "HOTELBOT_BASE_MODEL": "base_model",
}
ENV_DATA = {"TRAINING_VALIDATION_SPLIT": "validation_split"}
ENV_VALIDATION = {
    "MIN_VALIDATION_SCORE": "min_validation_score",
    "VALIDATION_METRIC": "metric",
    "MAX_UNSUPPORTED_FACT_RATE": "max_unsupported_fact_rate",
    "MIN_FACT_ACCURACY": "min_fact_accuracy",
    "HOTELBOT_RUNTIME_TOLERANCE": "runtime_tolerance_points",
    "HOTELBOT_RUNTIME_RECHECK_MARGIN": "runtime_recheck_margin",
}
ENV_DEPLOYMENT = {
    "ENABLE_MODEL_BACKUP": "enable_model_backup",
    "ENABLE_AUTO_ROLLBACK": "enable_auto_rollback",
    "AUTO_DEPLOY_ON_SUCCESS": "auto_deploy_on_success",
    "HOTELBOT_BACKUPS_TO_KEEP": "backups_to_keep",
    "HOTELBOT_REGRESSION_TOLERANCE": "regression_tolerance",
    "HOTELBOT_LOCK_TIMEOUT": "lock_timeout_seconds",
    "HOTELBOT_NOTIFY_WEBHOOK": "notify_webhook",
    "HOTELBOT_NOTIFY_COMMAND": "notify_command",
    "HOTELBOT_CANARY_MIN_REQUESTS": "canary_min_requests",
    "HOTELBOT_CANARY_ALPHA": "canary_alpha",
    "HOTELBOT_CANARY_MAX_FALLBACK_INCREASE": "canary_max_fallback_increase",
    "HOTELBOT_CANARY_MAX_ERROR_INCREASE": "canary_max_error_increase",
    "HOTELBOT_CANARY_MAX_CONFIDENCE_DROP": "canary_max_confidence_drop",
    "HOTELBOT_CANARY_MAX_LATENCY_RATIO": "canary_max_latency_ratio",
    "HOTELBOT_DRIFT_MIN_ANSWERS": "drift_min_answers",
    "HOTELBOT_DRIFT_MAX_PSI": "drift_max_psi",
    "HOTELBOT_DRIFT_MAX_FALLBACK_INCREASE": "drift_max_fallback_increase",
}
URL_PATHS = ("mlflow_tracking_uri", "hpo_storage")  # Paths fields that are URLs, not paths
ENV_PATHS = {
    "HOTELBOT_HOME": "home",
    "HOTELBOT_REGISTRY": "registry",
    "HOTELBOT_REPORTS": "reports",
    "HOTELBOT_LOGS": "logs",
    "HOTELBOT_DATA": "data",
    "HOTELBOT_MODEL_CACHE": "model_cache",
}
SECTIONS = ("training_config", "data_config", "validation_config", "deployment_config")

# Keys of the seed's config shape, accepted as aliases (README: "Configuration").
SEED_ALIASES: dict[str, dict[str, str]] = {
    "training_config": {"patience": "early_stopping_patience"},
    "validation_config": {"min_score": "min_validation_score"},
}
# Seed keys that are accepted and ignored because hotelbot decides them elsewhere.
SEED_IGNORED: dict[str, set[str]] = {
    "training_config": {"model_type", "validation_split"},
    "data_config": {"documents_dir", "preprocessing"},
    "validation_config": {"metrics"},
}


def _from_seed_shape(data: dict[str, Any]) -> dict[str, Any]:
    """Map the seed's keys onto ours (patience, min_score, early_stopping, auto_rollback, ...)."""
    out = {section: dict(values) for section, values in data.items() if isinstance(values, dict)}
    for section, aliases in SEED_ALIASES.items():
        for old, new in aliases.items():
            if old in out.get(section, {}):
                out[section].setdefault(new, out[section].pop(old))
    training = out.get("training_config", {})
    if "validation_split" in training:
        out.setdefault("data_config", {}).setdefault("validation_split", training["validation_split"])
    if training.pop("early_stopping", True) is False:
        training["early_stopping_patience"] = 0
    validation = out.get("validation_config", {})
    if "auto_rollback" in validation:
        out.setdefault("deployment_config", {}).setdefault("enable_auto_rollback", validation.pop("auto_rollback"))
    for section, ignored in SEED_IGNORED.items():
        for key in ignored:
            out.get(section, {}).pop(key, None)
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object with {', '.join(SECTIONS)}")
    unknown = sorted(set(data) - set(SECTIONS) - {"paths", "model_version"})
    if unknown:
        raise ConfigError(f"unknown section(s) in {path}: {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    for section in SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(f"{section} in {path} must be a JSON object")
    return data


def _apply_layer(settings: Settings, layer: Mapping[str, Any], source: str) -> Settings:
    training = settings.training.merged(layer.get("training_config", {}), source=f"{source}: training_config")
    data = settings.data.merged(layer.get("data_config", {}), source=f"{source}: data_config")
    validation = settings.validation.merged(layer.get("validation_config", {}), source=f"{source}: validation_config")
    deployment = settings.deployment.merged(layer.get("deployment_config", {}), source=f"{source}: deployment_config")
    return replace(settings, training=training, data=data, validation=validation, deployment=deployment)


def load_settings(
    *,
    config_file: Path | None = None,
    profile: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    path_overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults < profile < JSON file < environment < flags (``overrides``).

    ``overrides`` has the config-file shape, with ``None`` meaning "flag not given".
    A profile is a named set of defaults, so an explicit config file or variable still beats it.
    """
    env = os.environ if env is None else env
    settings = Settings()
    sources = ["defaults"]
    if profile:
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        settings = _apply_layer(settings, PROFILES[profile], f"profile {profile}")
        sources.append(f"profile:{profile}")
    config_file = config_file or (Path(env["HOTELBOT_CONFIG"]) if env.get("HOTELBOT_CONFIG") else None)
    file_paths: dict[str, Any] = {}
    if config_file:
        data = read_config_file(config_file)
        settings = _apply_layer(settings, _from_seed_shape(data), str(config_file))
        file_paths = dict(data.get("paths") or {})
        if data.get("model_version"):
            settings.model_version = str(data["model_version"])
        sources.append(f"file:{config_file}")

    env_layer = {
        "training_config": {key: env[name] for name, key in ENV_TRAINING.items() if env.get(name)},
        "data_config": {key: env[name] for name, key in ENV_DATA.items() if env.get(name)},
        "validation_config": {key: env[name] for name, key in ENV_VALIDATION.items() if env.get(name)},
        "deployment_config": {key: env[name] for name, key in ENV_DEPLOYMENT.items() if env.get(name)},
    }
    if any(env_layer.values()):
        settings = _apply_layer(settings, env_layer, "environment")
        sources.append("env")
    if env.get("MODEL_VERSION"):
        settings.model_version = env["MODEL_VERSION"]

    if overrides and any(v is not None for section in overrides.values() for v in section.values()):
        settings = _apply_layer(settings, overrides, "flag")
        sources.append("flags")

    paths = Paths()
    for key in file_paths:
        if key not in {f.name for f in fields(Paths)}:
            raise ConfigError(f"unknown key in paths: {key}")
    layered: dict[str, Any] = {**file_paths}
    layered.update({key: env[name] for name, key in ENV_PATHS.items() if env.get(name)})
    if env.get("MLFLOW_TRACKING_URI"):
        layered["mlflow_tracking_uri"] = env["MLFLOW_TRACKING_URI"]
    if env.get("HOTELBOT_HPO_STORAGE"):
        layered["hpo_storage"] = env["HOTELBOT_HPO_STORAGE"]
    layered.update({k: v for k, v in (path_overrides or {}).items() if v is not None})
    for key, value in layered.items():
        setattr(paths, key, value if key in URL_PATHS else Path(value))
    settings.paths = paths
    settings.sources = sources
    return settings
