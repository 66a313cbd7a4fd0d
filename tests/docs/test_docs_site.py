"""The documentation site (docs/, mkdocs.yml) builds with `mkdocs build --strict`: a broken link or anchor, a
missing included file or a page left out of nav fails the suite; and the HTTP API reference it renders comes from
the schema the server really publishes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build(project: Path, site: Path) -> subprocess.CompletedProcess:
    env = {"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent), "HOME": str(site.parent)}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)


def copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("mkdocs.yml", "README.md", "CONTRIBUTING.md"):
        shutil.copy2(ROOT / name, project / name)
    for name in ("docs", "scripts"):
        shutil.copytree(ROOT / name, project / name)
    (project / "datasets").mkdir()
    shutil.copy2(ROOT / "datasets" / "README.md", project / "datasets" / "README.md")
    return project


def test_the_site_builds_strictly_with_every_page(tmp_path):
    site = tmp_path / "site"
    result = build(ROOT, site)
    assert result.returncode == 0, result.stderr[-3000:]
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    assert {"index.html", "tutorial.html", "http-api.html", "benchmarks.html", "architecture.html",
            "components/replies.html"} <= pages
    api = (site / "http-api.html").read_text("utf-8")
    assert "POST /classify" in api and "ClassifyRequest" in api  # rendered by scripts/docs_hooks.py
    assert "Write a test" in (site / "contributing.html").read_text("utf-8")  # CONTRIBUTING.md included
    assert "fonts.googleapis.com" not in (site / "index.html").read_text("utf-8")  # readable offline


@pytest.mark.parametrize("breakage, message", [
    ("[a page that is not there](nowhere.md)", "nowhere.md"),
    ("[an anchor that is not there](registry.md#no-such-section)", "no-such-section"),
    ("<!-- include: NOT_THERE.md -->", "NOT_THERE.md"),
])
def test_a_broken_link_fails_the_build(tmp_path, breakage, message):
    project = copy_project(tmp_path)
    with (project / "docs" / "exit-codes.md").open("a", encoding="utf-8") as f:
        f.write(f"\n{breakage}\n")
    result = build(project, tmp_path / "site")
    assert result.returncode != 0 and message in result.stderr


def test_a_page_missing_from_nav_fails_the_build(tmp_path):
    project = copy_project(tmp_path)
    (project / "docs" / "orphan.md").write_text("# Orphan\n", "utf-8")
    result = build(project, tmp_path / "site")
    assert result.returncode != 0 and "orphan.md" in result.stderr


def test_the_documented_openapi_schema_is_the_one_the_server_publishes():
    spec = importlib.util.spec_from_file_location("write_openapi", ROOT / "scripts" / "write_openapi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (ROOT / "docs" / "openapi.json").read_text("utf-8")
    published = module.render(module.published_schema())
    assert json.loads(committed) == json.loads(published), "run: python scripts/write_openapi.py"
    assert committed == published
