"""hotelbot inbox: what `serve --capture DIR` kept, grouped for review; label it in the terminal or in a
spreadsheet (CSV round trip). hotelbot_cli.feedback does the work."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape
from rich.table import Table
from typing_extensions import Annotated

from .._io import atomic_write_bytes
from ..data import OUT_OF_SCOPE
from ..errors import DataError
from ._errors import handle_errors
from ._options import JsonOpt
from ._render import message, out, print_json

if TYPE_CHECKING:
    from ..feedback.inbox import Inbox

CAPTURE_ENV = "HOTELBOT_SERVE_CAPTURE_DIR"

CaptureOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--capture",
        help=f"The capture directory `hotelbot serve --capture DIR` writes [env: {CAPTURE_ENV}; default: capture/].",
        show_default=False,
    ),
]

inbox_app = typer.Typer(invoke_without_command=True)


def _root(capture: Path | None, ctx: typer.Context | None = None) -> Path:
    given = capture or ((ctx.obj or {}).get("capture") if ctx is not None else None)
    return given or Path(os.environ.get(CAPTURE_ENV) or "capture")


def _open(capture: Path | None, ctx: typer.Context | None = None) -> Inbox:
    from ..feedback.inbox import Inbox  # the feedback package: kept off `hotelbot --help`'s path

    return Inbox(_root(capture, ctx))


def _next_steps(root: Path) -> str:
    return f"next: hotelbot prepare --add {root / 'labeled.jsonl'} && hotelbot train --incremental"


@inbox_app.callback()
@handle_errors
def inbox_cmd(
    ctx: typer.Context,
    capture: CaptureOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Groups to show (--json lists all).")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """Review what `hotelbot serve --capture DIR` kept: list it (this), label it (`inbox label`), or
    round-trip it through a spreadsheet (`inbox export` / `inbox import`).

    The list groups the captured messages by the intent the model answered and by similarity
    (near-duplicates together), most frequent first, with why they were captured (fallback, no_answer,
    low_confidence, feedback), the model's suggestions and the labels given so far.

    Examples:

        hotelbot inbox --capture capture/

        hotelbot inbox --json | jq '.groups[] | select(.label == null) | .texts[0]'
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"capture": capture}  # `hotelbot inbox --capture DIR label` means DIR for label too
        return
    from ..feedback.inbox import summary  # (as _open)

    inbox = _open(capture)
    if json_out:
        print_json({"capture": str(inbox.root), **summary(inbox.groups), "groups": [g.to_dict() for g in inbox.groups]})
        return
    s = summary(inbox.groups)
    if not inbox.groups:
        out.print(f"{inbox.root}: nothing captured yet")
        return
    table = Table(
        title=f"{s['messages']} captured message(s) in {s['group_count']} group(s), {s['labeled_groups']} labeled"
    )
    for column in ("#", "count", "answered", "why", "suggestions", "message", "label"):
        table.add_column(column, overflow="fold")
    for i, g in enumerate(inbox.groups[:limit], start=1):
        more = f" (+{len(g.texts) - 1} similar)" if len(g.texts) > 1 else ""
        table.add_row(  # guests' text is never markup
            str(i),
            str(g.count),
            g.intent or "-",
            ", ".join(sorted(g.reasons)),
            ", ".join(g.ranked_suggestions()),
            escape(g.texts[0]) + more,
            g.label or ("mixed" if g.labels and not g.unlabeled else "partly" if g.labels else ""),
        )
    out.print(table)
    if len(inbox.groups) > limit:
        message(f"{len(inbox.groups) - limit} more group(s): --limit or --json")
    message(f"label them: hotelbot inbox label --capture {inbox.root}")


@inbox_app.command("label")
@handle_errors
def label_cmd(
    ctx: typer.Context,
    capture: CaptureOpt = None,
    all_groups: Annotated[bool, typer.Option("--all", help="Also go through groups already labeled.")] = False,
) -> None:
    """Label the captured messages in the terminal, one group at a time, most frequent first.

    Keys: 1-9 takes a suggestion (the model's top answers), o marks out_of_scope, s skips, u undoes the
    last label, q quits; or type an intent name (lowercase_with_underscores). Every label is saved at
    once (DIR/labels.json, and DIR/labeled.jsonl for `hotelbot prepare --add`).

    Examples:

        hotelbot inbox label --capture capture/
    """
    inbox = _open(capture, ctx)
    todo = [g for g in inbox.groups if all_groups or g.unlabeled]
    if not todo:
        out.print("nothing to label" + ("" if all_groups else " (--all goes through labeled groups again)"))
        return
    i, labeled = 0, 0
    while 0 <= i < len(todo):
        g = todo[i]
        suggestions = g.ranked_suggestions(9)
        out.print(
            f"\n[bold]{i + 1}/{len(todo)}[/bold]  {g.count} message(s), answered {g.intent or '-'} "
            f"({', '.join(sorted(g.reasons))})" + (f", labeled {g.label}" if g.label else "")
        )
        for text in g.texts[:5]:
            out.print(f"  “{text}”", markup=False, highlight=False)
        if len(g.texts) > 5:
            out.print(f"  … {len(g.texts) - 5} more")
        keys = "  ".join(f"[{n}] {s}" for n, s in enumerate(suggestions, start=1))
        out.print(f"  {keys}  [o] {OUT_OF_SCOPE}  [s] skip  [u] undo  [q] quit", markup=False, highlight=False)
        answer = typer.prompt("label", default="s", show_default=False).strip()
        if answer == "q":
            break
        if answer == "s":
            i += 1
            continue
        if answer == "u":
            undone = inbox.undo()
            if undone is None:
                message("nothing to undo")
            else:
                labeled -= 1
                i = next((n for n, t in enumerate(todo) if t.key == undone.key), i)
                message("undone")
            continue
        if answer.isdigit() and 1 <= int(answer) <= len(suggestions):
            intent = suggestions[int(answer) - 1]
        elif answer == "o":
            intent = OUT_OF_SCOPE
        else:
            intent = answer
        try:
            inbox.set_label(g.key, intent)
        except DataError as exc:  # a bad name: say so and ask again
            message(f"error: {exc}")
            continue
        labeled += 1
        i += 1
    done = sum(1 for g in inbox.groups if not g.unlabeled)
    out.print(f"\n{done} of {len(inbox.groups)} group(s) labeled ({len(inbox.labeled_examples())} message(s))")
    if done:
        message(_next_steps(inbox.root))


@inbox_app.command("export")
@handle_errors
def export_cmd(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="CSV file to write ('-': stdout).", metavar="CSV")],
    capture: CaptureOpt = None,
) -> None:
    """Write the captured messages as a CSV for a spreadsheet: one row per message, with its group, count,
    answered intent, why it was captured, suggestions and an empty (or current) label column to fill in.

    Examples:

        hotelbot inbox export inbox.csv --capture capture/
    """
    inbox = _open(capture, ctx)
    text = inbox.to_csv()
    if path == "-":
        sys.stdout.write(text)
        return
    atomic_write_bytes(Path(path), text.encode("utf-8-sig"))  # the byte-order mark: spreadsheets read it as UTF-8
    message(f"wrote {path}: {len(inbox.groups)} group(s); fill in the label column, then: hotelbot inbox import {path}")


@inbox_app.command("import")
@handle_errors
def import_cmd(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="A CSV written by `hotelbot inbox export`, labels filled in.", metavar="CSV")
    ],
    capture: CaptureOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Read the labels of a CSV written by `hotelbot inbox export` (its label column filled in). All or
    nothing: an unknown group or an invalid intent name changes no label.

    Examples:

        hotelbot inbox import inbox.csv --capture capture/
    """
    inbox = _open(capture, ctx)
    try:
        text = path.read_bytes().decode("utf-8-sig")  # bytes: a line break inside a quoted cell stays as it is
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    result = inbox.import_csv(text, str(path))
    if json_out:
        print_json({"capture": str(inbox.root), **result, "labeled_file": str(inbox.root / "labeled.jsonl")})
        return
    out.print(
        f"{result['rows']} row(s): {result['labeled_messages']} message(s) in {result['labeled_groups']} group(s) "
        f"labeled, {result['changed']} changed"
    )
    message(_next_steps(inbox.root))
