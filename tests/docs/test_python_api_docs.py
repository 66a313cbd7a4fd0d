"""The Python snippets of docs/python-api.md run as written against a real registry version."""

from __future__ import annotations

import contextlib
import io
import re

from conftest import REPO

PAGE = (REPO / "docs" / "python-api.md").read_text("utf-8")


def snippet(after: str) -> str:
    section = PAGE[PAGE.index(after):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_predicting_snippet_runs_on_a_registry(registry_copy, monkeypatch):
    monkeypatch.chdir(registry_copy.root.parent)  # the snippet opens ModelRegistry("registry")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet("## Predicting from Python"), "python-api.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(line.split()[0] == "v0002" for line in lines)  # newest: nothing deployed
    assert lines[0].split()[-1] in {"True", "False"}
