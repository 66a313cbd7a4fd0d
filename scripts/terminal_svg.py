"""Turn a terminal recording into an SVG screenshot for the docs: replay the bytes `script` captured (Rich's
live display redraws with carriage returns, cursor-up and erase-line codes) and render the final screen, with
its colours, through Rich's SVG export.

    script -q -c "hotelbot train --force" /tmp/train.typescript
    .venv/bin/python scripts/terminal_svg.py /tmp/train.typescript docs/img/train-progress.svg \
        --title "hotelbot train" --until "evaluating the best epoch"

What is kept: the final frame, i.e. the live display's last redraw below the lines it logged.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

CONTROL = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07]*\x07|([\r\n])|([^\x1b\r\n]+)")


def replay(data: str) -> list[str]:
    """The lines on screen after ``data``, each keeping its SGR (colour) codes."""
    lines: list[str] = [""]
    row = 0
    for m in CONTROL.finditer(data):
        params, command, newline, text = m.groups()
        if text is not None:
            lines[row] += text  # Rich rewrites a line only after erasing it, so appending is enough
        elif newline == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        elif newline == "\r":
            continue  # Rich follows a carriage return with an erase or a full rewrite
        elif command == "m":
            lines[row] += f"\x1b[{params}m"
        elif command == "A":
            row = max(0, row - int(params or 1))
        elif command == "K" or (command == "J" and params in {"", "0"}):
            lines[row] = ""
            if command == "J":
                del lines[row + 1 :]
    while lines and not re.sub(r"\x1b\[[0-9;]*m", "", lines[-1]).strip():
        lines.pop()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recording", type=Path, help="the file `script` wrote")
    parser.add_argument("svg", type=Path, help="the SVG to write")
    parser.add_argument("--title", default="hotelbot", help="the window title in the SVG")
    parser.add_argument("--width", type=int, default=110, help="terminal columns of the recording")
    parser.add_argument("--skip", type=int, default=0, help="screen lines to drop from the top (e.g. a banner)")
    parser.add_argument("--until", help="stop the replay just before this text first appears (a live moment)")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.text import Text

    raw = args.recording.read_bytes().decode("utf-8", errors="replace")
    raw = re.sub(r"^Script started.*?\n|\nScript done.*$", "", raw, flags=re.S)  # util-linux header/footer
    if args.until:
        if args.until not in raw:
            parser.error(f"{args.until!r} is not in the recording")
        raw = raw[: raw.index(args.until)]
        raw = raw[: raw.rfind("\r")]  # the last complete redraw before it
    console = Console(record=True, width=args.width, force_terminal=True, color_system="truecolor", file=sys.stderr)
    for line in replay(raw)[args.skip :]:
        console.print(Text.from_ansi(line), overflow="crop", no_wrap=True)
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.svg.write_text(console.export_svg(title=args.title), "utf-8")
    print(f"wrote {args.svg}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
