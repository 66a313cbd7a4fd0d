"""Registry footprint, deploy cost and cold predict: today's code (a git ref, default 772bcca, the last commit
before the content-addressed registry) beside this working tree, in ONE run, on the shipped data.

    python benchmarks/footprint.py                         # both sides, ~35 min on 2 cores
    python benchmarks/footprint.py --baseline HEAD~3 --json out.json --keep /tmp/fp
    python benchmarks/footprint.py --skip-baseline         # only this tree (no before/after)
    python benchmarks/footprint.py --keep /tmp/fp --json out.json --predicts-only   # cold predicts again, kept run

Each side runs in its own scratch directory with its own registry, MLflow store and processed data; both
use the same venv (the baseline's source is extracted with `git archive` and put first on PYTHONPATH) and
the same base-model cache (HOTELBOT_MODEL_CACHE), so only the registry code differs. The steps, each one
`hotelbot` subprocess as a user would type it:

1. prepare every shipped data set (intents, entities, sentiment, replies, documents);
2. `train --model-type classifier` (what `make run` trains): registry size = one classifier version;
3. `train --model-type all`: registry size in total (target <= 1.0 GB);
4. `deploy` the make-run version, then `deploy` the all version (timed, max RSS of the process: target
   <= 10 s and <= 600 MB; the second deploy backs up the first);
5. (after step 6, once both sides are built) `predict` cold start of the make-run version and of the deployed
   all version, best and median of 7 fresh processes per side after one untimed warm-up, the two sides
   alternating run by run (a drift of the shared machine's speed hits both alike): with no hotelbot bytecode
   (PYTHONDONTWRITEBYTECODE=1, which every step runs with, and the package compiled in memory at each start),
   then compiled as a pip install, and `make install` for the editable one, leave it (target: the make-run
   version no slower than the baseline);
6. a classifier-only retrain with another seed (`train --seed 43`; it carries over the deployed version's
   other components): what it adds to the registry (target <= 250 MB).

Sizes count every inode once (like `du -sb`: apparent bytes, hard links counted once). Prints a table with
both sides and whether each target is met; never fails on a figure (exit 0 unless a step itself fails).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_BASELINE = "772bcca"
GB, MB = 1e9, 1e6
TARGETS = {"all_registry_bytes": 1.0 * GB, "retrain_added_bytes": 250 * MB, "deploy_seconds": 10.0,
           "deploy_max_rss_bytes": 600 * MB}
TEXT = "quiero ver las noticias"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def hotelbot() -> str:
    exe = BIN / "hotelbot"
    return str(exe) if exe.exists() else shutil.which("hotelbot") or "hotelbot"


def tree_bytes(root: Path) -> int:
    """Apparent size of every regular file below ``root``, each inode counted once (as `du -sb`)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


class Side:
    def __init__(self, name: str, src: Path, home: Path) -> None:
        self.name, self.src, self.home = name, src, home
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TRAINING_", "HOTELBOT_", "MIN_VALIDATION", "ENABLE_"))}
        env["HOTELBOT_MODEL_CACHE"] = os.environ.get("HOTELBOT_MODEL_CACHE", str(REPO / ".cache" / "models"))
        env["HOTELBOT_HOME"] = str(home / ".hotelbot")
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
        env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
        env["PYTHONPATH"] = str(src) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # bytecode exists only where a step compiles it
        self.env = env
        self.figures: dict[str, object] = {}

    @property
    def registry(self) -> Path:
        return self.home / "registry"

    def run(self, *args: str, timed: bool = False) -> tuple[str, float, int]:
        """(stdout, wall seconds, max RSS in bytes of that process) of one `hotelbot` command."""
        out_path = self.home / "last.out"
        err_path = self.home / "last.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.monotonic()
            proc = subprocess.Popen([hotelbot(), *args], cwd=self.home, env=self.env, stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"[{self.name}] hotelbot {' '.join(args)} exited {proc.returncode}:\n"
                             + err_path.read_text(errors="replace")[-3000:])
        return out_path.read_text("utf-8"), seconds, usage.ru_maxrss * 1024

    def train(self, *args: str) -> dict:
        out, seconds, _ = self.run("train", *args, "--json")
        say(f"  [{self.name}] train {' '.join(args)}: {seconds:.0f}s")
        return json.loads(out)


def baseline_source(ref: str, dest: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, stdout=subprocess.PIPE).stdout
    dest.mkdir(parents=True)
    with tempfile.TemporaryFile() as tmp:
        tmp.write(archive)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            tar.extractall(dest, filter="data")
    return dest


def bytecode(src: Path, compiled: bool) -> None:
    """Remove the hotelbot package's compiled bytecode under ``src``; with ``compiled``, write it afresh."""
    package = src / "hotelbot_cli"
    for cache in list(package.rglob("__pycache__")):
        shutil.rmtree(cache)
    if compiled:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)


def measure(side: Side) -> dict[str, object]:
    data = side.src / "datasets"
    f = side.figures
    say(f"[{side.name}] preparing data ...")
    side.run("prepare", str(data / "hotel_intents_es.json"))
    side.run("prepare", "--entities", str(data / "entidades_es.jsonl"))
    side.run("prepare", "--sentiment", str(data / "sentimiento_es.jsonl"))
    side.run("prepare", "--replies", str(data / "respuestas_es.jsonl"))
    side.run("prepare", "--documents", str(data / "documentos"))

    first = side.train("--model-type", "classifier")["version"]
    f["classifier_registry_bytes"] = tree_bytes(side.registry)

    start = time.monotonic()
    out, _, _ = side.run("train", "--model-type", "all", "--json")
    f["train_all_seconds"] = time.monotonic() - start
    doc = json.loads(out)
    versions = sorted(p.name for p in (side.registry / "versions").iterdir() if p.is_dir())
    last = versions[-1]
    say(f"  [{side.name}] train --model-type all: {f['train_all_seconds']:.0f}s, versions {versions}")
    f["all_versions"] = len(versions)
    f["all_registry_bytes"] = tree_bytes(side.registry)
    f["all_version_logical_bytes"] = sum(p.stat().st_size for p in (side.registry / "versions" / last).rglob("*")
                                         if p.is_file())
    del doc

    side.run("deploy", first, "--json")
    _, seconds, rss = side.run("deploy", last, "--json")
    f["deploy_seconds"], f["deploy_max_rss_bytes"] = seconds, rss
    say(f"  [{side.name}] deploy {last}: {seconds:.1f}s, max RSS {rss / MB:.0f} MB")

    f["make_run_version"], f["all_version"] = first, last
    before = tree_bytes(side.registry)
    side.train("--model-type", "classifier", "--seed", "43")
    f["retrain_added_bytes"] = tree_bytes(side.registry) - before
    f["registry_bytes_end"] = tree_bytes(side.registry)
    return f


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def cold_predicts(sides: list[Side], runs: int) -> None:
    """Cold `predict` of each side's make-run and all versions: first with no hotelbot bytecode anywhere
    (every start compiles the package in memory), then compiled (as an install leaves it). In each round every
    side runs once, alternating, so a drift of this shared machine's speed hits both sides alike; one untimed
    warm-up per command (the page cache). Best and median of ``runs`` per side."""
    plans = [("predict_classifier_source", "make_run_version", False), ("predict_classifier", "make_run_version", True),
             ("predict_all", "all_version", True)]
    for prefix, which, compiled in plans:
        for side in sides:
            bytecode(side.src, compiled=compiled)
            side.run("predict", TEXT, "--version", side.figures[which])
        times: dict[str, list[float]] = {side.name: [] for side in sides}
        for _ in range(runs):
            for side in sides:
                times[side.name].append(side.run("predict", TEXT, "--version", side.figures[which])[1])
        for side in sides:
            side.figures[f"{prefix}_seconds"] = min(times[side.name])
            side.figures[f"{prefix}_median_seconds"] = median(times[side.name])
    for side in sides:
        f = side.figures
        say(f"  [{side.name}] cold predict (best / median of {runs}): make-run version "
            f"{f['predict_classifier_seconds']:.2f} / {f['predict_classifier_median_seconds']:.2f}s, all version "
            f"{f['predict_all_seconds']:.2f} / {f['predict_all_median_seconds']:.2f}s; no bytecode "
            f"{f['predict_classifier_source_seconds']:.2f} / {f['predict_classifier_source_median_seconds']:.2f}s")


ROWS = [
    ("classifier_registry_bytes", "registry after `make run` (1 classifier version)", "bytes", None),
    ("all_registry_bytes", "registry after `train --model-type all`", "bytes", "all_registry_bytes"),
    ("all_versions", "  versions in it", "count", None),
    ("all_version_logical_bytes", "  files of the last version (logical)", "bytes", None),
    ("train_all_seconds", "train --model-type all", "seconds", None),
    ("deploy_seconds", "deploy of the all version", "seconds", "deploy_seconds"),
    ("deploy_max_rss_bytes", "  its max RSS", "bytes", "deploy_max_rss_bytes"),
    ("predict_classifier_seconds", "cold predict, make-run version (best of N)", "seconds", None),
    ("predict_classifier_median_seconds", "  median of N", "seconds", None),
    ("predict_all_seconds", "cold predict, all version (best of N)", "seconds", None),
    ("predict_classifier_source_seconds", "cold predict, make-run version, no bytecode (best of N)", "seconds", None),
    ("predict_classifier_source_median_seconds", "  median of N", "seconds", None),
    ("retrain_added_bytes", "classifier retrain (--seed 43) adds", "bytes", "retrain_added_bytes"),
    ("registry_bytes_end", "registry at the end", "bytes", None),
]


PREDICT_ROWS = ("predict_classifier_seconds", "predict_classifier_median_seconds", "predict_classifier_source_seconds",
                "predict_classifier_source_median_seconds")  # compared with the baseline


def fmt(value: object, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value / MB:,.0f} MB" if value < GB else f"{value / GB:,.2f} GB"
    if unit == "seconds":
        return f"{value:.2f} s"
    return str(value)


def verdict(key: str, current: dict, baseline: dict | None) -> str:
    target = next((t for k, _, _, t in ROWS if k == key), None)
    value = current.get(key)
    if key in PREDICT_ROWS and baseline:
        return "met" if value <= baseline[key] * 1.05 else "NOT met"  # 5%: noise on a shared machine
    if target is None or value is None:
        return ""
    return "met" if value <= TARGETS[target] else "NOT met"


def table(current: dict, baseline: dict | None, ref: str) -> str:
    head = f"| figure | {ref} | this tree | target |" if baseline else "| figure | this tree | target |"
    lines = [head, "|---|---|---|---|" if baseline else "|---|---|---|"]
    for key, label, unit, target in ROWS:
        goal = fmt(TARGETS[target], unit) if target else ("<= baseline" if key in PREDICT_ROWS else "")
        mark = verdict(key, current, baseline)
        cells = [label] + ([fmt(baseline.get(key), unit)] if baseline else []) + [fmt(current.get(key), unit),
                                                                               f"{goal} {mark}".strip()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref of today's code (default %(default)s)")
    parser.add_argument("--skip-baseline", action="store_true", help="measure only this working tree")
    parser.add_argument("--predict-runs", type=int, default=7, help="cold predicts per side and version "
                        "(default %(default)s)")
    parser.add_argument("--keep", type=Path, help="scratch directory to use and keep (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--predicts-only", action="store_true",
                        help="with --keep and --json of an earlier run: measure the cold predicts again on its kept "
                        "registries (nothing is trained) and update the figures in that JSON")
    args = parser.parse_args(argv)

    if args.predicts_only:
        if not (args.keep and args.json and args.json.is_file()):
            parser.error("--predicts-only needs --keep DIR and --json FILE of an earlier run")
        results = json.loads(args.json.read_text())
        ref = results.get("baseline_ref")
        sides = ([Side(f"baseline {ref}", args.keep / "baseline-src", args.keep / "baseline")] if ref else []) + [
            Side("this tree", REPO, args.keep / "current")]
        for side, key in zip(sides, ["baseline", "current"] if ref else ["current"]):
            side.figures = results[key]
            side.figures.setdefault("make_run_version", "v0001")  # runs before these keys were recorded
            side.figures.setdefault("all_version", json.loads((side.registry / "current.json").read_text())["version"])
        cold_predicts(sides, args.predict_runs)
        print(table(results["current"], results.get("baseline"), ref or ""))
        args.json.write_text(json.dumps(results, indent=2))
        return 0

    work = args.keep or Path(tempfile.mkdtemp(prefix="hotelbot-footprint-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sides = []
        if not args.skip_baseline:
            src = baseline_source(args.baseline, work / "baseline-src")
            sides.append(Side(f"baseline {args.baseline}", src, work / "baseline"))
        sides.append(Side("this tree", REPO, work / "current"))
        for side in sides:
            measure(side)
        cold_predicts(sides, args.predict_runs)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results = {("current" if side.src == REPO else "baseline"): side.figures for side in sides}
    print(table(results["current"], results.get("baseline"), args.baseline))
    if args.json:
        args.json.write_text(json.dumps({"baseline_ref": None if args.skip_baseline else args.baseline,
                                         "targets": TARGETS, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
