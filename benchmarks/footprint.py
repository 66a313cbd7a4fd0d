"""Registry footprint, deploy cost and cold predict: today's code (a git ref, default 772bcca, the last commit
before the content-addressed registry) beside this working tree, in ONE run, on the shipped data.

    python benchmarks/footprint.py                         # both sides, ~35 min on 2 cores
    python benchmarks/footprint.py --baseline HEAD~3 --json out.json --keep /tmp/fp
    python benchmarks/footprint.py --skip-baseline         # only this tree (no before/after)

Each side runs in its own scratch directory with its own registry, MLflow store and processed data; both
use the same venv (the baseline's source is extracted with `git archive` and put first on PYTHONPATH) and
the same base-model cache (HOTELBOT_MODEL_CACHE), so only the registry code differs. The steps, each one
`hotelbot` subprocess as a user would type it:

1. prepare every shipped data set (intents, entities, sentiment, replies, documents);
2. `train --model-type classifier` (what `make run` trains): registry size = one classifier version;
3. `train --model-type all`: registry size in total (target <= 1.0 GB);
4. `deploy` the make-run version, then `deploy` the all version (timed, max RSS of the process: target
   <= 10 s and <= 600 MB; the second deploy backs up the first);
5. `predict` cold start of the make-run version and of the deployed all version: best of 3 fresh processes
   after one untimed warm-up, with hotelbot's bytecode compiled (as a pip install, and `make install` for
   the editable one, leave it: target, make-run version no slower than the baseline), then the make-run
   version again with none (the source compiled in memory on every start: PYTHONDONTWRITEBYTECODE=1, which
   every step runs with, and an editable install made without `make`);
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


def measure(side: Side, predict_runs: int) -> dict[str, object]:
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

    def cold_predict(version: str) -> float:
        side.run("predict", TEXT, "--version", version)  # warm-up: the page cache
        return min(side.run("predict", TEXT, "--version", version)[1] for _ in range(predict_runs))

    bytecode(side.src, compiled=False)
    f["predict_classifier_source_seconds"] = cold_predict(first)
    bytecode(side.src, compiled=True)
    f["predict_classifier_seconds"], f["predict_all_seconds"] = cold_predict(first), cold_predict(last)
    say(f"  [{side.name}] cold predict: {f['predict_classifier_seconds']:.2f}s (make-run version), "
        f"{f['predict_all_seconds']:.2f}s (all version), {f['predict_classifier_source_seconds']:.2f}s "
        "(make-run version, no bytecode)")

    before = tree_bytes(side.registry)
    side.train("--model-type", "classifier", "--seed", "43")
    f["retrain_added_bytes"] = tree_bytes(side.registry) - before
    f["registry_bytes_end"] = tree_bytes(side.registry)
    return f


ROWS = [
    ("classifier_registry_bytes", "registry after `make run` (1 classifier version)", "bytes", None),
    ("all_registry_bytes", "registry after `train --model-type all`", "bytes", "all_registry_bytes"),
    ("all_versions", "  versions in it", "count", None),
    ("all_version_logical_bytes", "  files of the last version (logical)", "bytes", None),
    ("train_all_seconds", "train --model-type all", "seconds", None),
    ("deploy_seconds", "deploy of the all version", "seconds", "deploy_seconds"),
    ("deploy_max_rss_bytes", "  its max RSS", "bytes", "deploy_max_rss_bytes"),
    ("predict_classifier_seconds", "cold predict, make-run version (best of N)", "seconds", None),
    ("predict_all_seconds", "cold predict, all version (best of N)", "seconds", None),
    ("predict_classifier_source_seconds", "cold predict, make-run version, no bytecode", "seconds", None),
    ("retrain_added_bytes", "classifier retrain (--seed 43) adds", "bytes", "retrain_added_bytes"),
    ("registry_bytes_end", "registry at the end", "bytes", None),
]


PREDICT_ROWS = ("predict_classifier_seconds", "predict_classifier_source_seconds")  # compared with the baseline


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
    parser.add_argument("--predict-runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="scratch directory to use and keep (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="hotelbot-footprint-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results: dict[str, dict] = {}
        if not args.skip_baseline:
            src = baseline_source(args.baseline, work / "baseline-src")
            results["baseline"] = measure(Side(f"baseline {args.baseline}", src, work / "baseline"),
                                          args.predict_runs)
        results["current"] = measure(Side("this tree", REPO, work / "current"), args.predict_runs)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results["current"], results.get("baseline"), args.baseline))
    if args.json:
        args.json.write_text(json.dumps({"baseline_ref": None if args.skip_baseline else args.baseline,
                                         "targets": TARGETS, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
