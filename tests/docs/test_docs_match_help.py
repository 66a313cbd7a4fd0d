"""`--help` and the documentation say the same thing: every command and every option `--help` lists is in
the docs (docs/**/*.md, the MkDocs site), and every `hotelbot COMMAND` the docs' headings name exists."""

from __future__ import annotations

import re
from pathlib import Path

import click
from typer.main import get_command

from hotelbot_cli.cli.app import app

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"
DOCS = "\n".join(p.read_text("utf-8") for p in sorted(DOCS_DIR.rglob("*.md")))
COMMON = {"--help", "--json", "--config", "--profile", "--registry"}  # documented once, in docs/cli.md


def commands(group: click.Group, prefix: str = ""):
    for name, sub in sorted(group.commands.items()):
        full = f"{prefix} {name}".strip()
        if isinstance(sub, click.Group):
            yield from commands(sub, full)
        else:
            yield full, sub


def test_every_command_and_option_of_help_is_documented():
    missing = []
    for full, command in commands(get_command(app)):
        if f"hotelbot {full}" not in DOCS:
            missing.append(f"hotelbot {full}")
        missing += [f"hotelbot {full} {opt}" for p in command.params if isinstance(p, click.Option)
                    for opt in p.opts if opt.startswith("--") and opt not in COMMON and opt not in DOCS]
    assert missing == [], f"in --help but not in docs/: {missing}"
    for opt in COMMON - {"--help"}:
        assert opt in DOCS


def test_every_documented_command_exists():
    known = {full for full, _ in commands(get_command(app))}
    known |= {name for name, sub in get_command(app).commands.items() if isinstance(sub, click.Group)}
    headings = re.findall(r"^#+ .*?`hotelbot ([a-z-]+(?: [a-z-]+)?)", DOCS, flags=re.M)
    unknown = [h for h in headings if h not in known and h.split()[0] not in known]
    assert unknown == [], f"docs headings name commands --help does not have: {unknown}"


def test_every_command_the_docs_show_exists():
    """Not only headings: every `hotelbot WORD ...` in inline code or a shell block of the docs names a command."""
    known = {name for name in get_command(app).commands}
    shown = set(re.findall(r"(?:`|^\$? ?)hotelbot ([a-z][a-z-]*)", DOCS, flags=re.M))
    assert sorted(shown - known) == [], "the docs show commands --help does not have"


def test_the_cli_page_lists_every_command_and_the_shared_options():
    page = (DOCS_DIR / "cli.md").read_text("utf-8")
    root = get_command(app)
    missing = [f"`hotelbot {name}`" for name in root.commands if f"`hotelbot {name}`" not in page]
    missing += [opt for p in root.params if isinstance(p, click.Option) for opt in p.opts
                if opt.startswith("--") and opt not in page]
    missing += sorted(opt for opt in COMMON if opt not in page)
    assert missing == [], f"docs/cli.md lacks: {missing}"
