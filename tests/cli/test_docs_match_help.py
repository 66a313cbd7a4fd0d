"""`--help` and the documentation say the same thing: every command and every option `--help` lists is in
the README, and every `hotelbot COMMAND` the README's command headings name exists."""

from __future__ import annotations

import re
from pathlib import Path

import click
from typer.main import get_command

from hotelbot_cli.cli.app import app

README = (Path(__file__).resolve().parents[2] / "README.md").read_text("utf-8")
COMMON = {"--help", "--json", "--config", "--profile", "--registry"}  # documented once, under Commands


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
        if f"hotelbot {full}" not in README:
            missing.append(f"hotelbot {full}")
        missing += [f"hotelbot {full} {opt}" for p in command.params if isinstance(p, click.Option)
                    for opt in p.opts if opt.startswith("--") and opt not in COMMON and opt not in README]
    assert missing == [], f"in --help but not in README.md: {missing}"
    for opt in COMMON - {"--help"}:
        assert opt in README


def test_every_documented_command_exists():
    known = {full for full, _ in commands(get_command(app))}
    known |= {name for name, sub in get_command(app).commands.items() if isinstance(sub, click.Group)}
    headings = re.findall(r"^#+ .*?`hotelbot ([a-z-]+(?: [a-z-]+)?)", README, flags=re.M)
    unknown = [h for h in headings if h not in known and h.split()[0] not in known]
    assert unknown == [], f"README headings name commands --help does not have: {unknown}"
