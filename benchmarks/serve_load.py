"""Load test: `hotelbot serve` (micro-batching) against the naive one-forward-pass-per-request server.

Both servers serve the same registry version (the deployed `current`) on 127.0.0.1, each in its own
process. They are measured one at a time (never sharing the cores), in interleaved rounds so that
background load on the machine hits both alike. N concurrent keep-alive clients (asyncio + httpx)
post single texts to /classify for a bounded time after a warm-up. The script prints requests/s,
p50/p95/p99 latency, errors, texts per micro-batch and CPU per request (server and client; the
client shares the machine, so its CPU caps what any server can show), side by side, and whether the
targets are met: >= 3x the naive server's requests/s, p99 < 100 ms, zero errors. It measures and
prints; it never fails on a timing (exit 0 unless the benchmark itself cannot run).

    python benchmarks/serve_load.py --registry registry/ [--clients 32] [--duration 20] [--rounds 2]

With ``--endpoint analyze --baseline-code DIR [--baseline-registry R]`` the comparison is instead an earlier
hotelbot (a checkout in DIR, e.g. ``git archive REF | tar -x -C DIR``) serving R's deployed version against
this checkout serving --registry's, both on POST /analyze (intent + entities + sentiment); for each server
it also prints seconds to ready, RSS after the load, peak RSS and one client's p50.

The naive server is the seed's design: one FastAPI endpoint that calls the PyTorch model for each
request, in FastAPI's thread pool, without batching.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOLDOUT = REPO / "datasets" / "hotel_intents_es_holdout.json"
FALLBACK_TEXTS = [
    "hola buenas tardes", "¿a qué hora es el desayuno?", "cuál es la clave del wifi", "quiero ver las noticias",
    "¿puedo hacer el check-out más tarde?", "necesito toallas limpias en la habitación 204",
    "¿hay parking en el hotel?", "gracias por todo, hasta luego", "el aire acondicionado no funciona",
    "¿me pueden pedir un taxi para el aeropuerto mañana a las siete?",
]
TARGET_SPEEDUP = 3.0
TARGET_P99_MS = 100.0
TARGET_ANALYZE_P50_MS = 25.0  # issue 20: /analyze, one text, one client
TARGET_READY_S = 8.0          # issue 20: a version with every component


# ------------------------------------------------------------------------------------------ servers
def naive_app(registry_root: Path, version: str):
    """The seed's design: one endpoint, one forward pass per request, no batching."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    from hotelbot_cli.registry import ModelRegistry
    from hotelbot_cli.runtime import TorchPredictor

    predictor = TorchPredictor.from_registry(ModelRegistry(registry_root), version)
    app = FastAPI()

    class Query(BaseModel):
        text: str

    @app.post("/classify")
    def classify(query: Query) -> dict:
        prediction = predictor.predict([query.text], top_k=3)[0]
        return {"intent": prediction.intent, "confidence": prediction.confidence, "top_k": prediction.top_k,
                "model_version": predictor.version, "fallback": False}

    @app.get("/ready")
    def ready() -> dict:
        return {"ready": True, "model_version": predictor.version}

    return app


def run_child(kind: str, fd: int, registry_root: Path, version: str) -> None:
    import uvicorn

    if kind in ("batched", "baseline"):
        from hotelbot_cli.registry import ModelRegistry
        from hotelbot_cli.serving import ServeSettings, create_app

        app = create_app(ModelRegistry(registry_root), ServeSettings.from_env())
    else:
        app = naive_app(registry_root, version)
    sock = socket.socket(fileno=fd)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


class Server:
    """A server subprocess on a free loopback port (the listening socket is handed over, no race)."""

    def __init__(self, kind: str, registry_root: Path, version: str, code: Path = REPO) -> None:
        self.kind = kind
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.started = time.monotonic()
        self.ready_s = math.nan
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--fd", str(sock.fileno()),
             "--registry", str(registry_root), "--version", version, "--code", str(code)],
            pass_fds=[sock.fileno()], env={**os.environ, "PYTHONPATH": str(code)})
        sock.close()

    def memory_mb(self) -> tuple[float, float]:
        """(RSS, peak RSS) of the server process now, in MB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return tuple(int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[return-value]
                     for key in ("VmRSS", "VmHWM"))

    def wait_ready(self, timeout: float = 120.0) -> str:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the {self.kind} server exited with {self.proc.returncode}")
            try:
                response = httpx.get(f"{self.base}/ready", timeout=2)
                if response.status_code == 200:
                    self.ready_s = time.monotonic() - self.started
                    return response.json()["model_version"]
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the {self.kind} server did not become ready in {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------------------ load
def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of a process and its threads so far; this process when pid is None."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


class Tally:
    """What one server did across its measured windows."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.seconds = 0.0
        self.server_cpu = 0.0
        self.client_cpu = 0.0

    def summary(self) -> dict:
        latencies = sorted(self.latencies)

        def pct(p: float) -> float:
            return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else math.nan

        done = max(1, len(latencies))
        return {"requests": len(latencies), "errors": len(self.errors), "error_kinds": sorted(set(self.errors))[:5],
                "rps": len(latencies) / self.seconds if self.seconds else 0.0,
                "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
                "server_cpu_ms": 1000 * self.server_cpu / done, "client_cpu_ms": 1000 * self.client_cpu / done}


class RawHttpClient:
    """One keep-alive HTTP/1.1 connection that posts JSON and reads the answer, written on asyncio streams.

    The load generator runs on the same 2 cores as the server it measures, so its own CPU is taken from the
    server: httpx spends ~0.9 ms of CPU per request, this ~0.2 ms. Both servers are always driven by the
    same client (``--client httpx`` cross-checks with httpx)."""

    def __init__(self, base: str) -> None:
        host_port = base.split("://", 1)[1].rstrip("/")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, document: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body = json.dumps(document, ensure_ascii=False).encode("utf-8")
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json"
                          f"\r\nContent-Length: {len(body)}\r\n\r\n".encode("ascii") + body)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
            return status, await self.reader.readexactly(length)
        except BaseException:
            await self.aclose()  # a half-read answer leaves the connection unusable
            raise

    async def aclose(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class HttpxClient:
    """The same interface on httpx: one single-connection client per simulated user (a shared httpx pool
    serialises on its own lock and becomes the bottleneck)."""

    def __init__(self, base: str) -> None:
        import httpx

        self.http = httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=1))

    async def post(self, path: str, document: dict) -> tuple[int, bytes]:
        import httpx

        try:
            response = await self.http.post(path, json=document)
        except httpx.HTTPError as exc:
            raise OSError(type(exc).__name__) from exc
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self.http.aclose()


ENDPOINTS = {"classify": ("/classify", lambda text: {"text": text}),
             "analyze": ("/analyze", lambda text: {"texts": [text]})}


async def drive(base: str, texts: list[str], clients: int, duration: float, server_pid: int,
                tally: Tally | None, kind: str = "raw", endpoint: str = "classify") -> None:
    """``clients`` closed-loop users post single texts to ``endpoint`` for ``duration`` s; recorded in
    ``tally`` if given."""
    path, body_of = ENDPOINTS[endpoint]
    stop_at = time.perf_counter() + duration

    async def client(i: int, http) -> None:
        n = i
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            n += clients
            try:
                status, body = await http.post(path, body_of(texts[n % len(texts)]))
                problem = "" if status == 200 and b'"intent"' in body else f"HTTP {status}"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    StopIteration) as exc:
                problem = str(exc) if isinstance(exc, OSError) and exc.args else type(exc).__name__
            if tally is not None:
                if problem:
                    tally.errors.append(problem)
                else:
                    tally.latencies.append(time.perf_counter() - sent)

    https = [(HttpxClient if kind == "httpx" else RawHttpClient)(base) for _ in range(clients)]
    server_before, client_before, began = cpu_seconds(server_pid), cpu_seconds(), time.perf_counter()
    try:
        await asyncio.gather(*(client(i, http) for i, http in enumerate(https)))
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    if tally is not None:  # requests in flight at stop_at finish a little later: count the real window
        tally.seconds += time.perf_counter() - began
        tally.server_cpu += cpu_seconds(server_pid) - server_before
        tally.client_cpu += cpu_seconds() - client_before


def batch_stats(base: str) -> str:
    import httpx

    text = httpx.get(f"{base}/metrics", timeout=5).text
    count = re.search(r"^hotelbot_microbatch_size_count (\S+)$", text, re.M)
    total = re.search(r"^hotelbot_microbatch_size_sum (\S+)$", text, re.M)
    if not (count and total) or float(count.group(1)) == 0:
        return "-"
    return f"{float(total.group(1)) / float(count.group(1)):.1f}"


def load_texts() -> list[str]:
    if HOLDOUT.exists():
        texts = [r["text"] for r in json.loads(HOLDOUT.read_text("utf-8"))]
        if texts:
            return texts
    return FALLBACK_TEXTS


async def one_client_p50(base: str, texts: list[str], endpoint: str, requests: int = 60) -> float:
    """p50 (ms) of one client posting single texts one after another (after 10 unmeasured requests)."""
    path, body_of = ENDPOINTS[endpoint]
    http = RawHttpClient(base)
    times = []
    try:
        for i in range(requests + 10):
            sent = time.perf_counter()
            status, _ = await http.post(path, body_of(texts[i % len(texts)]))
            if status != 200:
                raise SystemExit(f"{path} answered HTTP {status}")
            if i >= 10:
                times.append(1000 * (time.perf_counter() - sent))
    finally:
        await http.aclose()
    return sorted(times)[len(times) // 2]


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=None,
                        help="registry root [env: HOTELBOT_REGISTRY; default: registry/]; its deployed version is used")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per server (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per server first (default 3)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="split each server's measured time into this many rounds, interleaved (default 2)")
    parser.add_argument("--only", choices=("naive", "batched"), help="run one server only")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator: raw asyncio HTTP/1.1 (default, ~0.2 ms CPU per request) or httpx "
                             "(~0.9 ms); both servers always get the same one")
    parser.add_argument("--endpoint", choices=tuple(ENDPOINTS), default="classify",
                        help="what the clients post one text to: /classify (default) or /analyze (every analyzing "
                             "component; the naive server has no /analyze, so --baseline-code is the comparison)")
    parser.add_argument("--baseline-code", type=Path, default=None,
                        help="a checkout of an earlier hotelbot (e.g. `git archive REF | tar -x -C DIR`) whose "
                             "`hotelbot serve` is measured as \"baseline\" beside this one, on --baseline-registry")
    parser.add_argument("--baseline-registry", type=Path, default=None,
                        help="the registry the baseline serves (its deployed version; default: --registry)")
    parser.add_argument("--child", choices=("naive", "batched", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--version", help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(args.code if args.child else REPO))
    from hotelbot_cli.config import load_settings
    from hotelbot_cli.registry import ModelRegistry

    root = (args.registry or load_settings().paths.registry).resolve()
    if args.child:
        run_child(args.child, args.fd, root, args.version)
        return 0
    if args.clients < 1 or args.duration <= 0 or args.warmup < 0 or args.rounds < 1:
        parser.error("--clients and --rounds must be >= 1, --duration > 0 and --warmup >= 0")
    version = ModelRegistry(root).current_name()
    if version is None:
        print(f"error: nothing is deployed in {root}: run `hotelbot train` then `hotelbot deploy`", file=sys.stderr)
        return 1

    texts = load_texts()
    kinds = [args.only] if args.only else (["baseline", "batched"] if args.baseline_code else ["naive", "batched"])
    if args.endpoint == "analyze" and "naive" in kinds:
        parser.error("the naive server has no /analyze: give --baseline-code (and --only batched or not)")
    baseline_root = (args.baseline_registry or root).resolve()
    baseline_version = ModelRegistry(baseline_root).current_name() if args.baseline_code else None
    print(f"registry {root}, deployed version {version}; {args.clients} clients; per server {args.duration:g} s "
          f"measured in {args.rounds} interleaved round(s) after {args.warmup:g} s warm-up; {args.client} "
          f"client; {os.cpu_count()} CPU cores", file=sys.stderr)
    servers = {}
    try:
        for kind in kinds:  # started and timed to ready one at a time; both stay up (idle costs nothing)
            if kind == "baseline":
                servers[kind] = Server(kind, baseline_root, baseline_version, args.baseline_code.resolve())
                expected = baseline_version
            else:
                servers[kind] = Server(kind, root, version)
                expected = version
            served = servers[kind].wait_ready(300.0)
            if served != expected:
                raise SystemExit(f"the {kind} server serves {served}, expected {expected}")
        single: dict[str, float] = {}
        for kind, server in servers.items():
            single[kind] = asyncio.run(one_client_p50(server.base, texts, args.endpoint))
            asyncio.run(drive(server.base, texts, args.clients, args.warmup, server.proc.pid, None, args.client,
                              args.endpoint))
        tallies = {kind: Tally() for kind in kinds}
        for round_ in range(args.rounds):  # alternate the order so background load hits both alike
            for kind in (kinds if round_ % 2 == 0 else kinds[::-1]):
                print(f"round {round_ + 1}/{args.rounds}: {kind} ...", file=sys.stderr)
                asyncio.run(drive(servers[kind].base, texts, args.clients, args.duration / args.rounds,
                                  servers[kind].proc.pid, tallies[kind], args.client, args.endpoint))
        results = {kind: tallies[kind].summary() for kind in kinds}
        for kind in kinds:
            results[kind]["mean_batch"] = batch_stats(servers[kind].base) if kind != "naive" else "1.0"
            results[kind]["ready_s"] = servers[kind].ready_s
            results[kind]["rss_mb"], results[kind]["peak_rss_mb"] = servers[kind].memory_mb()
            results[kind]["single_p50_ms"] = single[kind]
    finally:
        for server in servers.values():
            server.stop()

    print(f"\n/{args.endpoint}; baseline: {args.baseline_code} serving {baseline_root} ({baseline_version}); "
          f"this checkout serving {root} ({version})" if args.baseline_code else "")
    rows = [("seconds to ready", "ready_s", "{:.2f}"), ("RSS after the load (MB)", "rss_mb", "{:.0f}"),
            ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"), ("one client: p50 (ms)", "single_p50_ms", "{:.1f}"),
            ("requests/s", "rps", "{:.1f}"), ("p50 latency (ms)", "p50_ms", "{:.1f}"),
            ("p95 latency (ms)", "p95_ms", "{:.1f}"), ("p99 latency (ms)", "p99_ms", "{:.1f}"),
            ("errors", "errors", "{}"), ("requests measured", "requests", "{}"),
            ("mean texts per micro-batch", "mean_batch", "{}"),
            ("server CPU per request (ms)", "server_cpu_ms", "{:.2f}"),
            ("client CPU per request (ms)", "client_cpu_ms", "{:.2f}")]
    print(f"\n{'':30}" + "".join(f"{k:>12}" for k in kinds))
    for label, key, fmt in rows:
        print(f"{label:30}" + "".join(f"{fmt.format(results[k][key]):>12}" for k in kinds))
    for kind in kinds:
        if results[kind]["error_kinds"]:
            print(f"{kind} errors: {', '.join(results[kind]['error_kinds'])}")

    if "batched" in results:
        batched = results["batched"]
        checks = []
        reference = "naive" if "naive" in results else "baseline"
        if reference in results and results[reference]["rps"] > 0:
            speedup = batched["rps"] / results[reference]["rps"]
            checks.append((f">= {TARGET_SPEEDUP:g}x the {reference} server's requests/s (got {speedup:.2f}x)",
                           speedup >= TARGET_SPEEDUP))
        if args.endpoint == "classify":  # /classify's latency target; /analyze has its own (one client's p50)
            checks.append((f"p99 < {TARGET_P99_MS:g} ms (got {batched['p99_ms']:.1f} ms)",
                           batched["p99_ms"] < TARGET_P99_MS))
        else:
            checks.append((f"one client's p50 <= {TARGET_ANALYZE_P50_MS:g} ms (got {batched['single_p50_ms']:.1f} ms)",
                           batched["single_p50_ms"] <= TARGET_ANALYZE_P50_MS))
            checks.append((f"ready in <= {TARGET_READY_S:g} s (got {batched['ready_s']:.2f} s)",
                           batched["ready_s"] <= TARGET_READY_S))
        checks.append((f"zero errors (got {batched['errors']})", batched["errors"] == 0))
        print("\ntargets for `hotelbot serve`:")
        for text, met in checks:
            print(f"  {'MET    ' if met else 'NOT MET'}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
