"""The MLflow pyfunc model of a hotelbot version, logged "from code" (MLflow copies this file; nothing is
pickled): ``mlflow.pyfunc.load_model("models:/hotelbot-intent@production").predict(["..."])`` answers with the
project's own predictor on the version's chosen runtime (runtime.json: ONNX int8/fp32 or torch), exactly as
`hotelbot predict` does.

The model's one artifact, ``hotelbot.json``, names the version in the filesystem registry (the source of
truth: weights are stored there once, not copied into MLflow) and the checksum its manifest records for
``model/classifier.json``. Loading opens that registry (``HOTELBOT_REGISTRY`` when set, e.g. the same registry
mounted elsewhere, else the path recorded at logging time), checks the version's checksums, and refuses a
version of the same name whose classifier differs (another registry).

``predict`` takes a list of strings (MLflow checks it against the logged signature; a one-column pandas DataFrame
is converted to one);
params: ``top_k`` (default 3). It returns one dict per text: text, intent, confidence, top_k, fallback (and
similarity with a kNN out-of-scope detector), as `hotelbot predict --json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

from hotelbot_cli.training.mlflow_hub import CLASSIFIER_KEY, REFERENCE_ARTIFACT


def texts_of(model_input: Any) -> list[str]:
    """The texts in a pyfunc input: a string, a list of strings, or a DataFrame ("text" or its first column)."""
    if isinstance(model_input, str):
        return [model_input]
    columns = getattr(model_input, "columns", None)
    if columns is not None:
        column = "text" if "text" in columns else columns[0]
        return [str(t) for t in model_input[column].tolist()]
    return [str(t) for t in model_input]


class HotelbotIntentModel(PythonModel):
    """Loads the referenced version's predictor once; answers lists of guest messages."""

    def load_context(self, context: Any) -> None:
        # on load, not when MLflow reads this file to log it: the predictors' modules
        from hotelbot_cli.errors import RegistryError
        from hotelbot_cli.registry import ModelRegistry
        from hotelbot_cli.runtime import predictor_from_registry

        ref = json.loads(Path(context.artifacts[REFERENCE_ARTIFACT]).read_text("utf-8"))
        root = os.environ.get("HOTELBOT_REGISTRY") or ref["registry"]
        registry = ModelRegistry(Path(root))
        info = registry.get(ref["version"])
        recorded = (info.manifest.files or {}).get(CLASSIFIER_KEY)
        if ref.get("classifier_sha256") and recorded != ref["classifier_sha256"]:
            raise RegistryError(
                f"{ref['version']} in {root} is not the version this MLflow model names (its classifier differs)",
                hint="set HOTELBOT_REGISTRY to the registry it came from",
            )
        self.predictor = predictor_from_registry(registry, info.name, verify=True)
        self.version = info.name

    def predict(self, context, model_input, params=None):  # the logged signature types it (see mlflow_hub)
        """One dict per text (see the module docstring)."""
        top_k = int((params or {}).get("top_k", 3))
        return [p.to_dict() for p in self.predictor.predict(texts_of(model_input), top_k=top_k)]


mlflow.models.set_model(HotelbotIntentModel())
