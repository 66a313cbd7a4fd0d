"""Small things a careful user hits in the first hour: the same version aliases in every command, shell
completion, the text rule the API schema states, the BM25 baseline's Spanish stems, the packaging metadata."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

from hotelbot_cli.cli.app import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def deployed(registry) -> str:
    return json.loads((registry.root / "current.json").read_text())["version"]


def test_every_command_takes_the_same_version_aliases(registry_copy):
    registry = registry_copy
    gone = cli("deploy", "previous")
    assert gone.exit_code == 1 and gone.stderr.count("\n") == 1 and "no version was deployed before" in gone.stderr
    assert cli("deploy", "latest").exit_code == 0 and deployed(registry) == "v0002"  # the newest
    assert cli("deploy", "v0001").exit_code == 0
    assert "already deployed" in cli("deploy", "deployed").stdout  # deployed = current = v0001
    assert cli("deploy", "previous").exit_code == 0 and deployed(registry) == "v0002"
    assert cli("rollback", "--to", "previous").exit_code == 0 and deployed(registry) == "v0001"
    for command in (["validate", "current", "--json"], ["report", "deployed", "--format", "json", "--output",
                                                         registry.root.parent / "r.json"],
                    ["predict", "--version", "previous", "hola", "--json"]):
        assert cli(*command).exit_code == 0, command
    assert cli("export", "latest", "--format", "onnx", registry.root.parent / "out").exit_code == 0
    bad = cli("deploy", "newest")
    assert bad.exit_code == 1 and "invalid version name" in bad.stderr


def test_shell_completion_is_on():
    assert "--install-completion" in cli("--help").stdout
    hotelbot = Path(sys.executable).with_name("hotelbot")
    env = {**os.environ, "_HOTELBOT_COMPLETE": "complete_bash", "COMP_WORDS": "hotelbot dep", "COMP_CWORD": "1"}
    done = subprocess.run([str(hotelbot)], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["deploy"]
    env.update(COMP_WORDS="hotelbot train --model-type ", COMP_CWORD="3")
    values = subprocess.run([str(hotelbot)], env=env, capture_output=True, text=True, timeout=60).stdout.split()
    assert {"classifier", "embeddings", "all"} <= set(values)


def test_the_schema_text_pattern_is_exactly_the_servers_rule():
    import unicodedata

    from hotelbot_cli.data import clean_text
    from hotelbot_cli.serving.schemas import BLANK_RANGES, NON_BLANK_PATTERN

    blank = [c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in ("Cc", "Cf") or chr(c).isspace()]
    assert blank == [c for a, b in BLANK_RANGES for c in range(a, b + 1)]  # this Python's Unicode
    pattern = re.compile(NON_BLANK_PATTERN)
    wrong = [c for c in range(sys.maxunicode + 1) if (pattern.search(chr(c)) is not None) != bool(clean_text(chr(c)))]
    assert wrong == []
    assert pattern.search("\u200b \t\u00ad") is None and pattern.search("\u200b¿hola?") is not None


def test_the_bm25_baseline_stems_spanish():
    from hotelbot_cli.components.knowledge.lexical import bm25_tokens

    assert bm25_tokens("habitación") == bm25_tokens("habitaciones") == bm25_tokens("Habitaciones")
    assert bm25_tokens("hoteles") == bm25_tokens("hotel") == ["hotel"]
    assert bm25_tokens("¿Aceptan perros en las habitaciones?") == ["acept", "perr", "habit"]  # stopwords out


def test_packaging_metadata_matches_what_the_code_needs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    assert project["project"]["requires-python"].startswith(">=3.11.4")  # tarfile's extraction filters
    assert project["project"]["license"] == "MIT"
    assert "setuptools>=77" in project["build-system"]["requires"][0]  # PEP 639 license strings
    import tarfile

    assert hasattr(tarfile, "data_filter")
