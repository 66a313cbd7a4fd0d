"""Installs by role: every third-party module the package imports is declared in pyproject.toml, and the
serve path (an ONNX version served by a real uvicorn server, and `predict` on it) runs with only what
`pip install hotelbot-cli[serve]` installs: any other import is refused in that process."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import httpx
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(role: str | None) -> list[Requirement]:
    """The package's own requirements (role None) or one extra's, without the self-references."""
    specs = PYPROJECT["dependencies"] if role is None else PYPROJECT["optional-dependencies"][role]
    found = [Requirement(s) for s in specs]
    own = [r for r in found if canonical(r.name) == "hotelbot-cli"]
    rest = [r for r in found if canonical(r.name) != "hotelbot-cli"]
    for r in own:
        for extra in r.extras:
            rest += requirements(extra)
    return rest


def installed_closure(reqs: list[Requirement]) -> set[str]:
    """Canonical names of the distributions these requirements install, transitively (markers evaluated for
    this machine, extras of dependencies left out as pip would without them)."""
    seen: set[str] = set()
    todo = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        name = canonical(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        for spec in dist.requires or []:
            dep = Requirement(spec)
            if dep.marker is None or dep.marker.evaluate({"extra": ""}):
                todo.append(dep)
    return seen


def modules_of(distributions: set[str]) -> set[str]:
    return {module for module, dists in metadata.packages_distributions().items()
            if any(canonical(d) in distributions for d in dists)}


def imported_modules() -> dict[str, list[str]]:
    """Top-level third-party modules the package imports (anywhere: module level or inside functions)."""
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "hotelbot_cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in ("hotelbot_cli", "__future__"):
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def test_every_imported_third_party_module_is_declared():
    declared = {canonical(r.name) for role in (None, *PYPROJECT["optional-dependencies"])
                for r in requirements(role)}
    providers = metadata.packages_distributions()
    missing = {module: files[:2] for module, files in imported_modules().items()
               if not {canonical(d) for d in providers.get(module, [])} & declared}
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_roles_keep_torch_out_of_serve():
    serve = installed_closure(requirements(None) + requirements("serve"))
    assert not serve & {"torch", "transformers", "mlflow-skinny", "mlflow", "optuna", "datasets", "accelerate"}
    train = installed_closure(requirements(None) + requirements("train"))
    assert {"torch", "transformers", "mlflow-skinny", "onnxruntime", "fastapi"} <= train


BLOCKER = r"""
import json, sys
allowed = set(json.loads(sys.argv[1]))
class ServeRoleOnly:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in allowed or top in sys.stdlib_module_names or top == "hotelbot_cli" or top.startswith("_sysconfigdata"):
            return None
        raise ModuleNotFoundError(f"{name}: not installed by hotelbot-cli[serve]", name=name)
sys.meta_path.insert(0, ServeRoleOnly())
sys.argv = ["hotelbot", *sys.argv[2:]]
from hotelbot_cli.cli.app import main
main()
"""


def test_the_serve_path_imports_only_what_serve_installs(registry_copy, tmp_path, serve_process):
    from typer.testing import CliRunner

    from hotelbot_cli.cli.app import app

    assert CliRunner().invoke(app, ["deploy", "v0001"]).exit_code == 0  # a train-role command, before
    allowed = sorted(modules_of(installed_closure(requirements(None) + requirements("serve"))))
    assert "torch" not in allowed
    env = {**os.environ, "HOTELBOT_REGISTRY": str(registry_copy.root), "HOTELBOT_RUNTIME": "onnx-int8",
           "HOTELBOT_CANARY_MIN_REQUESTS": "1000000000",
           "HOTELBOT_DRIFT_MIN_ANSWERS": "1000000000"}
    role = [sys.executable, "-c", BLOCKER, json.dumps(allowed)]

    predicted = subprocess.run([*role, "predict", "--json", "hola", "la contraseña del wifi"], env=env,
                               capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert "not installed by hotelbot-cli[serve]" not in predicted.stderr
    on_torch = subprocess.run([*role, "predict", "hola"], env={**env, "HOTELBOT_RUNTIME": "torch"},
                              capture_output=True, text=True, timeout=120)
    assert on_torch.returncode == 1 and on_torch.stdout == ""
    assert on_torch.stderr.strip().splitlines() == [
        "error: this needs the `train` install (no module named 'torch'): pip install -c constraints.txt '.[train]'"]

    with serve_process(role, env, tmp_path) as base:
        assert httpx.get(f"{base}/ready").json()["model_version"] == "v0001"
        answer = httpx.post(f"{base}/classify", json={"text": "¿a qué hora es el desayuno?"})
        assert answer.status_code == 200 and answer.json()["intent"]
        batch = httpx.post(f"{base}/classify/batch", json={"texts": ["hola", "noticias"]})
        assert batch.status_code == 200 and len(batch.json()["predictions"]) == 2
        assert httpx.get(f"{base}/metrics").status_code == 200
    assert "not installed by hotelbot-cli[serve]" not in (tmp_path / "serve.log").read_text()
