#!/usr/bin/env python
"""Build the report of a registry version and screenshot its HTML with headless Chromium.

A developer tool to look at the report layout, not part of the test suite:

    python scripts/render_report.py --registry registry --version v0003 --out /tmp/report-shot
    python scripts/render_report.py --html reports/training_reports/v0003/report.html --out /tmp/shot

Writes OUT/report.{html,md,json} (unless --html names an existing file) and OUT/screenshot.png.
Chromium: ``apt-get install -y chromium`` (Debian) or pass --chromium PATH. Nothing is fetched over the
network: the page is self-contained and Chromium runs with networking features off.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
)


def find_chromium(explicit: str | None) -> str:
    for candidate in ([explicit] if explicit else []) + ["chromium", "chromium-browser", "google-chrome", "chrome"]:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    sys.exit("no Chromium found: apt-get install -y chromium, or pass --chromium PATH")


def screenshot(html: Path, png: Path, chromium: str, width: int, height: int, timeout: float = 120) -> None:
    with tempfile.TemporaryDirectory(prefix="hotelbot-chromium-") as profile:
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", html.resolve().as_uri()]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not png.is_file():
        sys.exit(f"chromium failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=Path("registry"))
    parser.add_argument("--version", default=None, help="default: deployed, else newest")
    parser.add_argument("--html", type=Path, default=None, help="screenshot this existing report instead")
    parser.add_argument("--out", type=Path, default=Path("reports/screenshots"))
    parser.add_argument("--previous", type=int, default=3)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--chromium", default=None)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=5000, help="page height to capture (px)")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    if args.html is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from hotelbot_cli.registry import ModelRegistry
        from hotelbot_cli.reporting import build_report, write_report_files

        start = time.perf_counter()
        report = build_report(ModelRegistry(args.registry), args.version, previous_n=args.previous,
                              measure_latency=not args.no_latency)
        paths = write_report_files(report, args.out)
        print(f"built the report of {report.version} in {time.perf_counter() - start:.1f}s: "
              + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
        html = paths["html"]
    else:
        html = args.html
    png = args.out / "screenshot.png"
    screenshot(html, png, find_chromium(args.chromium), args.width, args.height)
    print(png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
