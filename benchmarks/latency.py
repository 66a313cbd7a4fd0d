"""Inference latency: CLI start-up, cold predict, warm single-text latency, batch throughput, accuracy
and `hotelbot serve` peak memory, for PyTorch fp32, ONNX fp32 and ONNX int8, against the seed's naive
path (intent_classifier.pt + transformers, one text at a time).

    python benchmarks/latency.py                                  # trains a 1-epoch default model first
    python benchmarks/latency.py --registry registry/ --version v0003 [--runs 300] [--json out.json]

The version is copied (hard links) into a scratch registry, where it is exported to ONNX first if it
has no export yet (versions are immutable: the source registry is never changed), and deployed there
for `hotelbot serve`. Subprocess timings are medians after one untimed warm-up run (page cache warm:
"cold" means a fresh process). Prints whether each target is met; never fails on a timing (exit 0
unless the benchmark itself cannot run).

Targets (2 cores): `hotelbot --help` < 0.3 s, cold `hotelbot predict` < 1.0 s, warm single-text p50
< 5 ms with int8, int8 accuracy within 0.5 points of PyTorch, `hotelbot serve` peak RSS < 600 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO / "datasets" / "hotel_intents_es.json"
TEXT = "quiero ver las noticias"
TARGETS = {"help_s": 0.3, "cold_predict_s": 1.0, "int8_p50_ms": 5.0, "accuracy_loss_points": 0.5, "serve_rss_mb": 600}
BIN = Path(sys.executable).parent


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINING_", "HOTELBOT_RUNTIME"))}
    env.setdefault("HOTELBOT_MODEL_CACHE", str(REPO / ".cache" / "models"))
    env["HOTELBOT_HOME"] = str(home / ".hotelbot")
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def hotelbot() -> str:
    exe = BIN / "hotelbot"
    return str(exe) if exe.exists() else shutil.which("hotelbot") or "hotelbot"


# ------------------------------------------------------------------ the model under test


def train_default(work: Path, env: dict[str, str]) -> tuple[Path, str]:
    say("training a 1-epoch packaged:multilingual-e5-small model (no --registry given) ...")
    start = time.monotonic()
    subprocess.run([hotelbot(), "prepare", str(DATASET)], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL)
    out = subprocess.run([hotelbot(), "train", "--epochs", "1", "--force", "--json"], cwd=work, env=env, check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    version = json.loads(out.stdout)["version"]
    say(f"  trained {version} in {time.monotonic() - start:.0f}s")
    return work / "registry", version


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def scratch_registry(source_root: Path, version: str, root: Path, tolerance: float):
    """The version (hard-linked) in a fresh registry, ONNX-exported if needed, and deployed there."""
    from hotelbot_cli.data import read_jsonl_examples
    from hotelbot_cli.registry import ModelRegistry

    source = ModelRegistry(source_root).resolve(version)
    registry = ModelRegistry(root)
    if (source.path / "model" / "runtime.json").exists():
        registry.versions_dir.mkdir(parents=True)
        _link_tree(source.path, registry.versions_dir / "v0001")
        info = registry.get("v0001")
        exported = None
    else:
        from hotelbot_cli.modeling import load_classifier
        from hotelbot_cli.export import export_onnx

        say(f"{source.name} has no ONNX export: exporting a copy ...")
        with registry.staging() as staged:
            shutil.rmtree(staged)
            _link_tree(source.path, staged)
            (staged / "metadata.json").unlink()
            model, tokenizer = load_classifier(staged / "model")
            start = time.monotonic()
            exported = export_onnx(model, tokenizer, staged / "model",
                                   read_jsonl_examples(staged / "data" / "validation.jsonl"), tolerance)
            exported["wall_seconds"] = round(time.monotonic() - start, 1)
            del model
            meta = {k: v for k, v in source.metadata.items() if k not in ("version", "files", "created_at")}
            info = registry.publish(staged, {**meta, "inference": exported})
    registry.write_current_state({"version": info.name, "previous": []})
    return registry, info, source, exported


# ------------------------------------------------------------------ subprocess timings


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wall(cmd: list[str], env: dict[str, str], cwd: Path, runs: int) -> tuple[float, list[float], str, float]:
    """(median wall s, all wall s, stdout, median CPU s (user+sys) of the process): CPU time is what the
    command costs on an idle machine; wall time also counts waiting for a core others are using."""
    times, cpus, out = [], [], ""
    for i in range(runs + 1):
        cpu = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
        out = proc.stdout
        if i:  # the first run only warms the page cache
            times.append(elapsed)
            cpus.append(_children_cpu() - cpu)
    return statistics.median(times), times, out, statistics.median(cpus)


def import_profile(cmd: list[str], env: dict[str, str], cwd: Path, top: int = 12) -> tuple[float, list[tuple[str, float]]]:
    """(total import seconds, the slowest top-level imports) of ``python -X importtime`` on ``cmd``."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd], env=env, cwd=cwd, capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((len(m.group(3)) // 2, m.group(4), int(m.group(2)) / 1e6))
    roots = [(name, cum) for depth, name, cum in rows if depth == 0]
    return sum(c for _, c in roots), sorted(roots, key=lambda r: -r[1])[:top]


def cli_timings(root: Path, env: dict[str, str], cwd: Path, runs: int) -> dict:
    load_before = os.getloadavg()[0]
    help_s, help_all, _, help_cpu = wall([hotelbot(), "--help"], env, cwd, runs)
    versions_s, _, _, versions_cpu = wall([hotelbot(), "versions", "--registry", str(root)], env, cwd, runs)
    predict_cmd = [hotelbot(), "predict", TEXT, "--registry", str(root), "--json"]
    cold_s, cold_all, out, cold_cpu = wall(predict_cmd, env, cwd, runs)
    cold_intent = json.loads(out)["predictions"][0]["intent"]
    torch_env = {**env, "HOTELBOT_RUNTIME": "torch"}
    cold_torch_s, _, _, cold_torch_cpu = wall(predict_cmd, torch_env, cwd, max(2, runs // 2))
    imports_s, slowest = import_profile(["-m", "hotelbot_cli", *predict_cmd[1:]], env, cwd)
    return {"help_s": help_s, "help_cpu_s": help_cpu, "help_runs": help_all, "versions_s": versions_s,
            "versions_cpu_s": versions_cpu, "cold_predict_s": cold_s, "cold_predict_cpu_s": cold_cpu,
            "cold_predict_runs": cold_all, "cold_predict_intent": cold_intent,
            "cold_predict_torch_s": cold_torch_s, "cold_predict_torch_cpu_s": cold_torch_cpu,
            "predict_imports_s": imports_s, "predict_slowest_imports": slowest,
            "load_average": [load_before, os.getloadavg()[0]]}


# ------------------------------------------------------------------ in-process measurements


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def measure(predict_one, predict_batch, texts: list[str], runs: int) -> dict[str, float]:
    """Single-text wall p50/p99 and CPU per call (process CPU time, all threads: on an idle machine a
    single-threaded call takes about its CPU time), and batch-32 throughput."""
    for text in texts[:5]:
        predict_one(text)
    times, cpus = [], []
    for i in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        predict_one(texts[i % len(texts)])
        times.append((time.perf_counter() - start) * 1000.0)
        cpus.append((time.process_time() - cpu) * 1000.0)
    batch = texts[:32]
    predict_batch(batch)
    start, done = time.perf_counter(), 0
    while done < 8 * 32 or time.perf_counter() - start < 2.0:
        predict_batch(texts[done % len(texts):done % len(texts) + 32] or batch)
        done += 32
    elapsed = time.perf_counter() - start
    return {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99), "cpu_p50_ms": percentile(cpus, 50),
            "batch32_texts_per_s": done / elapsed}


def in_process(info, examples, runs: int) -> dict[str, dict]:
    import torch

    from hotelbot_cli.data import clean_text
    from hotelbot_cli.runtime import OnnxPredictor, RuntimeClassifierConfig, TorchPredictor
    from hotelbot_cli.runtime.onnx import open_session
    from hotelbot_cli.runtime.tokenizers import load_fast_tokenizer, load_text_encoder

    texts = [e.text for e in examples]
    truth = [e.intent for e in examples]
    results: dict[str, dict] = {}
    model_dir = info.path / "model"

    def accuracy(labels):
        return sum(p == t for p, t in zip(labels, truth)) / len(truth)

    # The seed's naive path: the .pt file, the HF tokenizer, one text at a time, argmax.
    from transformers import AutoTokenizer

    from hotelbot_cli.modeling import load_torch_file

    start = time.perf_counter()
    model, id_to_intent = load_torch_file(info.path / "intent_classifier.pt")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    load_s = time.perf_counter() - start
    cfg = model.classifier_config

    def naive_one(text):
        with torch.no_grad():
            enc = tokenizer(cfg.query_prefix + clean_text(text), truncation=True, max_length=cfg.max_length,
                            return_tensors="pt")
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])["logits"]
            return id_to_intent[int(torch.softmax(logits, -1).argmax())]

    say("measuring the naive seed path ...")
    results["naive (seed)"] = {"load_s": load_s, **measure(naive_one, lambda b: [naive_one(t) for t in b], texts, runs),
                               "accuracy": accuracy([naive_one(t) for t in texts])}
    del model, tokenizer

    say("measuring torch fp32 ...")
    start = time.perf_counter()
    torch_p = TorchPredictor.from_version(info)
    load_s = time.perf_counter() - start
    with torch.inference_mode():
        results["torch fp32"] = {"load_s": load_s, **measure(lambda t: torch_p.predict([t]), torch_p.predict, texts, runs),
                                 "accuracy": accuracy(torch_p.predict_labels(texts))}
        # On cores other processes are using, torch's 2 OpenMP threads wait for each other at every op;
        # one thread shows what torch does without that wait.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        results["torch fp32 1thr"] = {"load_s": load_s,
                                      **measure(lambda t: torch_p.predict([t]), torch_p.predict, texts, runs),
                                      "accuracy": results["torch fp32"]["accuracy"]}
        torch.set_num_threads(threads)
    del torch_p

    config = RuntimeClassifierConfig.from_file(model_dir / "classifier.json")
    start, cpu = time.perf_counter(), time.process_time()
    encoder = load_text_encoder(model_dir, config.max_length)
    tokenizer_s, tokenizer_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    whole = load_fast_tokenizer(model_dir, config.max_length)
    whole_s, whole_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    del whole
    whole_free_s = time.perf_counter() - start
    results["tokenizer"] = {"kind": encoder.kind, "load_s": tokenizer_s, "load_cpu_s": tokenizer_cpu,
                            "whole_load_s": whole_s, "whole_load_cpu_s": whole_cpu, "whole_free_s": whole_free_s}
    del encoder
    for runtime in ("onnx-fp32", "onnx-int8"):
        say(f"measuring {runtime} ...")
        name = "model.onnx" if runtime == "onnx-fp32" else "model.int8.onnx"
        start, cpu = time.perf_counter(), time.process_time()
        open_session(model_dir / name)
        session_s, session_cpu = time.perf_counter() - start, time.process_time() - cpu
        start = time.perf_counter()
        p = OnnxPredictor.from_version(info, runtime)
        load_s = time.perf_counter() - start
        results[runtime.replace("-", " ")] = {"load_s": load_s, "session_s": session_s, "session_cpu_s": session_cpu,
                                              **measure(lambda t: p.predict([t]), p.predict, texts, runs),
                                              "accuracy": accuracy(p.predict_labels(texts))}
    return results


# ------------------------------------------------------------------ serve peak RSS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 180.0) -> float:
    """Seconds until ``base``/ready answers 200; RuntimeError when the server exits or times out first."""
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited: {proc.stderr.read()[-800:] if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"serve did not become ready in {timeout:.0f} s")
        time.sleep(0.2)


@contextlib.contextmanager
def running_server(command: Callable[[int], list[str]], env: dict[str, str], cwd: Path, timeout: float = 180.0):
    """The server ``command(port)`` starts on a free port, ready (/ready 200): yields (process, base URL, seconds
    to ready); stopped with SIGINT (killed after 30 s) however the block ends."""
    port = free_port()
    proc = subprocess.Popen(command(port), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        yield proc, base, wait_ready(proc, base, timeout=timeout)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post_json(base: str, path: str, body: dict, timeout: float = 60.0) -> bytes:
    """POST ``body`` as JSON to ``base + path``; the response body (HTTPError for a non-2xx status)."""
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def process_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's ``field`` (VmRSS, VmHWM) from /proc, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def serve_peak_rss(root: Path, env: dict[str, str], cwd: Path, runtime: str | None) -> dict:
    import inspect

    from hotelbot_cli import serving

    env = dict(env)
    if runtime:
        env["HOTELBOT_RUNTIME"] = runtime
    native = "load_predictor" in inspect.getsource(serving._load_version)

    def command(port: int) -> list[str]:
        if native:
            return [hotelbot(), "serve", "--registry", str(root), "--port", str(port)]
        # serving/ does not use the runtime factory yet: the same server with it plugged in
        return [sys.executable, "-c",
                "import sys; from hotelbot_cli import serving; from hotelbot_cli.runtime import load_predictor\n"
                "serving.ModelHolder.__init__.__defaults__ = (load_predictor,)\n"
                "from pathlib import Path; serving.serve(Path(sys.argv[1]), port=int(sys.argv[2]), log_level='warning')",
                str(root), str(port)]

    with running_server(command, env, cwd) as (proc, base, ready_s):
        texts = ["hola", "¿a qué hora es el desayuno?", "la clave del wifi", TEXT, "necesito un taxi"]
        for i in range(20):
            post_json(base, "/classify", {"text": texts[i % len(texts)]}, timeout=30)
        for _ in range(3):
            post_json(base, "/classify/batch", {"texts": texts * 7}, timeout=30)
        return {"peak_rss_mb": process_rss_mb(proc.pid, "VmHWM"), "rss_mb": process_rss_mb(proc.pid),
                "ready_s": ready_s, "native": native}


# ------------------------------------------------------------------ main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, help="registry holding the version (default: train one)")
    parser.add_argument("--version", default=None, help="version (default: deployed, else newest)")
    parser.add_argument("--runs", type=int, default=200, help="single-text predictions per runtime")
    parser.add_argument("--cold-runs", type=int, default=5, help="timed runs of each CLI command")
    parser.add_argument("--tolerance", type=float, default=0.5, help="accuracy tolerance (points) for the export")
    parser.add_argument("--no-serve", action="store_true", help="skip the serve memory measurement")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI timings")
    parser.add_argument("--keep", type=Path, help="keep the scratch directory here instead of a temp dir")
    parser.add_argument("--json", type=Path, help="also write all figures to this JSON file")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="hotelbot-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    env = base_env(work)
    figures: dict = {}
    try:
        if args.registry is None:
            train_dir = work / "train"
            train_dir.mkdir(exist_ok=True)
            source_root, version = train_default(train_dir, env)
        else:
            source_root, version = args.registry.resolve(), args.version
        root = work / "bench-registry"
        if root.exists():
            shutil.rmtree(root)
        registry, info, source, exported = scratch_registry(source_root, version, root, args.tolerance)
        spec = json.loads((info.path / "model" / "runtime.json").read_text())
        say(f"benchmarking {source.name} of {source_root} (as {info.name} in {root}); "
            f"base model {info.metadata.get('base_model', {}).get('spec')}; recorded runtime: {spec['runtime']}")
        figures["version"] = {"source": str(source_root), "name": source.name, "runtime": spec["runtime"],
                              "export": {k: spec.get(k) for k in ("export_seconds", "fused_operators", "attention",
                                                                  "exporter", "runtimes")}}
        cwd = work

        if not args.no_cli:
            say("timing the CLI ...")
            figures["cli"] = cli_timings(root, env, cwd, args.cold_runs)

        from hotelbot_cli.data import read_jsonl_examples

        examples = read_jsonl_examples(info.path / "data" / "validation.jsonl")
        load_before = os.getloadavg()[0]
        figures["in_process"] = in_process(info, examples, args.runs)
        figures["in_process_load_average"] = [load_before, os.getloadavg()[0]]
        figures["validation_examples"] = len(examples)

        if not args.no_serve:
            say("measuring hotelbot serve peak RSS ...")
            figures["serve"] = {"recorded runtime": serve_peak_rss(root, env, cwd, None),
                                "torch": serve_peak_rss(root, env, cwd, "torch")}
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


def report(f: dict) -> None:
    cli, rows = f.get("cli"), f["in_process"]
    print(f"\nversion {f['version']['name']} ({f['version']['source']}); recorded runtime "
          f"{f['version']['runtime']}; {f['validation_examples']} validation texts; {os.cpu_count()} CPUs")
    if cli:
        print(f"\nCLI (median of fresh processes; wall, and CPU = user+sys of the process; load average "
              f"{cli['load_average'][0]:.1f} -> {cli['load_average'][1]:.1f} on {os.cpu_count()} CPUs)")
        print(f"  hotelbot --help             {cli['help_s']:.3f} s wall  {cli['help_cpu_s']:.3f} s CPU")
        print(f"  hotelbot versions           {cli['versions_s']:.3f} s wall  {cli['versions_cpu_s']:.3f} s CPU")
        print(f"  hotelbot predict (ONNX)     {cli['cold_predict_s']:.3f} s wall  {cli['cold_predict_cpu_s']:.3f} s CPU"
              f"   -> {cli['cold_predict_intent']}")
        print(f"  hotelbot predict (torch)    {cli['cold_predict_torch_s']:.3f} s wall  "
              f"{cli['cold_predict_torch_cpu_s']:.3f} s CPU   (HOTELBOT_RUNTIME=torch)")
        print(f"  predict imports             {cli['predict_imports_s']:.3f} s; slowest: " +
              ", ".join(f"{n} {s * 1000:.0f}ms" for n, s in cli["predict_slowest_imports"][:6]))
    load = f.get("in_process_load_average", [float("nan")] * 2)
    print(f"\nin process (single text = predict([text]) incl. tokenization; load average {load[0]:.1f} -> "
          f"{load[1]:.1f})")
    print(f"  {'runtime':14s} {'load s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU ms':>7s} {'batch32 t/s':>12s} "
          f"{'accuracy':>9s}")
    for name, r in rows.items():
        if name == "tokenizer":
            continue
        print(f"  {name:14s} {r['load_s']:7.2f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['cpu_p50_ms']:7.2f} "
              f"{r['batch32_texts_per_s']:12.1f} {100 * r['accuracy']:8.2f}%")
    int8 = rows["onnx int8"]
    tok = rows["tokenizer"]
    print(f"  ONNX load: tokenizer ({tok['kind']}) {tok['load_s']:.3f} s ({tok['load_cpu_s']:.3f} s CPU) vs the whole "
          f"tokenizers.Tokenizer {tok['whole_load_s']:.3f} s ({tok['whole_load_cpu_s']:.3f} s CPU) + "
          f"{tok['whole_free_s']:.3f} s to free it;")
    print(f"             int8 session {int8['session_s']:.3f} s ({int8['session_cpu_s']:.3f} s CPU), fp32 session "
          f"{rows['onnx fp32']['session_s']:.3f} s ({rows['onnx fp32']['session_cpu_s']:.3f} s CPU)")
    loss = 100 * (rows["torch fp32"]["accuracy"] - int8["accuracy"])
    checks = []
    if cli:
        checks += [
            ("hotelbot --help < 0.3 s", cli["help_s"] < TARGETS["help_s"],
             f"{cli['help_s']:.3f} s wall, {cli['help_cpu_s']:.3f} s CPU"),
            ("cold hotelbot predict < 1.0 s", cli["cold_predict_s"] < TARGETS["cold_predict_s"],
             f"{cli['cold_predict_s']:.3f} s wall, {cli['cold_predict_cpu_s']:.3f} s CPU"),
        ]
    checks += [
        ("warm single-text p50 < 5 ms (int8)", int8["p50_ms"] < TARGETS["int8_p50_ms"],
         f"{int8['p50_ms']:.2f} ms wall, {int8['cpu_p50_ms']:.2f} ms CPU"),
        ("int8 accuracy loss < 0.5 points", loss < TARGETS["accuracy_loss_points"], f"{loss:+.2f} points vs torch"),
    ]
    if "serve" in f:
        print("\nhotelbot serve (after load + 20 /classify + 3 batches of 35)")
        for name, s in f["serve"].items():
            print(f"  {name:16s} peak RSS {s['peak_rss_mb']:7.1f} MB, RSS {s['rss_mb']:7.1f} MB, ready in {s['ready_s']:.1f} s"
                  + ("" if s["native"] else "  (serving/ with the load_predictor factory plugged in)"))
        peak = f["serve"]["recorded runtime"]["peak_rss_mb"]
        checks.append(("serve peak RSS < 600 MB", peak < TARGETS["serve_rss_mb"], f"{peak:.0f} MB"))
    print("\ntargets")
    for name, ok, value in checks:
        print(f"  [{'met' if ok else 'MISSED'}] {name}: {value}")


if __name__ == "__main__":
    sys.exit(main())
