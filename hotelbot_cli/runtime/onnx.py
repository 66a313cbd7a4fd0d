"""The onnxruntime predictor: a version's ONNX model (fp32 or int8) with the interface of
:class:`~hotelbot_cli.runtime.reference.TorchPredictor`, needing only onnxruntime, tokenizers and numpy.

Importing this module imports none of torch, transformers or onnxruntime (onnxruntime and numpy are
imported inside the functions that need them), so ``hotelbot predict`` and ``hotelbot serve`` start
without torch when a version carries an ONNX model. The int8 model runs one text per session call, on
parallel lanes, and may re-run its close calls on the fp32 graph (:class:`Recheck`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..data import clean_text
from ..errors import ConfigError, ModelError
from ..registry import VersionInfo
from .files import BackgroundCheck, onnx_files_read, onnx_graph_files_read, require_files_intact
from .layout import CLASSIFIER_FILE, MODEL_SUBDIR, ONNX_FILES, ONNX_FP32, ONNX_FP32_FILE, ONNX_INT8, RUNTIME_FILE
from .detector import EMBEDDING_OUTPUT, OutOfScopeDetector
from .device import onnx_providers
from .prediction import Prediction, check_texts
from .selection import RUNTIME_ENV, read_runtime_spec
from .tokenizers import load_text_encoder

log = logging.getLogger("hotelbot.onnx")

THREADS_ENV = "HOTELBOT_ONNX_THREADS"
RECHECK_ENV = "HOTELBOT_RUNTIME_RECHECK_MARGIN"
SPIN_ENV = "HOTELBOT_ONNX_SPIN"


@dataclass
class RuntimeClassifierConfig:
    """The parts of ``classifier.json`` that inference needs (modeling.ClassifierConfig imports torch)."""

    labels: list[str]
    pooling: str = "mean"
    query_prefix: str = ""
    max_length: int = 64
    oos_threshold: float | None = None
    base_model: str = ""
    oos_detector: dict[str, Any] | None = None  # the kNN detector's spec (runtime.detector); None: softmax
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> RuntimeClassifierConfig:
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("labels"), list) or not data["labels"]:
            raise ModelError(f"{path} has no labels")
        known = {"labels", "pooling", "query_prefix", "max_length", "oos_threshold", "base_model", "oos_detector"}
        return cls(**{k: data[k] for k in known if k in data}, extra={k: v for k, v in data.items() if k not in known})

    @property
    def id_to_intent(self) -> dict[int, str]:
        return dict(enumerate(self.labels))


def softmax(logits: Any) -> Any:
    import numpy as np  # imported on use: importing the runtime stays light (see runtime/__init__)

    logits = np.asarray(logits, dtype=np.float32)
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _threads_env() -> int:
    try:
        threads = int(os.environ.get(THREADS_ENV, "0") or 0)
    except ValueError:
        raise ConfigError(f"{THREADS_ENV} must be a whole number of threads (0: one per core)") from None
    if threads < 0:
        raise ConfigError(f"{THREADS_ENV} must be a whole number of threads (0: one per core)")
    return threads


def _recheck_margin(spec: dict[str, Any]) -> float:
    """The margin of int8's fp32 recheck: the one recorded at export (none when int8 alone passed the
    gate), unless HOTELBOT_RUNTIME_RECHECK_MARGIN is set (0: off), which applies to any version whose fp32
    graph reproduced PyTorch at export."""
    raw = os.environ.get(RECHECK_ENV, "").strip()
    if not raw:
        return float((spec.get("recheck") or {}).get("margin") or 0.0)
    if not ((spec.get("runtimes") or {}).get(ONNX_FP32) or {}).get("usable"):
        return 0.0
    try:
        margin = float(raw)
    except ValueError:
        margin = -1.0
    if not 0.0 <= margin <= 1.0:
        raise ConfigError(f"{RECHECK_ENV} must be a probability margin in [0, 1] (0: no recheck), got {raw!r}")
    return margin


def thread_budget() -> int:
    """Threads onnxruntime may use: HOTELBOT_ONNX_THREADS, else one per core."""
    return _threads_env() or os.cpu_count() or 1


def open_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime session on ``path`` (CPU, or CUDA first: :func:`~hotelbot_cli.runtime.device.onnx_providers`) (``threads``: intra-op threads; default HOTELBOT_ONNX_THREADS)."""
    import onnxruntime as ort  # heavy: loaded only when a session is opened

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no "Removing initializer" chatter on stderr
    threads = threads if threads is not None else _threads_env()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle worker threads sleep instead of spinning: spinning buys ~0.5 ms on an idle machine but, on
    # cores shared with other processes (2-core CI, a server next to other services), it made single
    # texts ~2x slower and batches ~2x less throughput in our measurements. HOTELBOT_ONNX_SPIN=1 turns it on.
    spin = os.environ.get(SPIN_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    providers = onnx_providers()  # CUDA first when onnxruntime-gpu is installed (HOTELBOT_DEVICE)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelError(
            f"cannot load the ONNX model {path}: {str(exc).splitlines()[0] if str(exc) else exc}"
        ) from None


class Recheck:
    """The fp32 second opinion of an int8 model: texts whose int8 answer is within ``margin`` of changing
    (the gap between its two best intents, or between its confidence and the out-of-scope threshold)
    are re-run on the fp32 graph, whose answer is kept.

    int8 and fp32 differ by up to ~0.2-0.3 in a probability, so int8 alone disagrees with fp32 on 0.3-1.6 %
    of texts, nearly all of them close calls; re-running only those keeps int8's speed on the clear ones
    and fp32's answers on the close ones. Export turns it on for a version only when int8 alone misses
    the accuracy gate: each re-run costs an fp32 pass (~7 ms on one core for e5-small, vs ~3 ms for
    int8), and serve's throughput drops with the share of close calls. The fp32 session
    (single-threaded: it runs on the int8 lanes) is opened on first use unless :meth:`open` is called;
    ``before_open`` (e.g. a checksum check of the fp32 files) runs once, just before.
    """

    def __init__(self, path: Path, margin: float, before_open: Any = None) -> None:
        if not margin > 0:
            raise ConfigError(f"recheck margin must be > 0, got {margin}")
        self.path = Path(path)
        self.margin = float(margin)
        self._before_open = before_open
        self._session: Any = None
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.checked = 0  # texts looked at, and re-run on fp32 (serve's /metrics, export's rate)
        self.rerun = 0

    def open(self) -> Any:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    if self._before_open is not None:
                        self._before_open()
                    self._session = open_session(self.path, threads=1)
        return self._session

    def needed(self, probs: Any, threshold: float | None) -> bool:
        """Whether an int8 probability row is a close call."""
        import numpy as np  # imported on use (see softmax)

        top2 = np.partition(probs, -2)[-2:] if probs.shape[-1] > 1 else np.array([0.0, probs[-1]])
        best, second = float(top2.max()), float(top2.min())
        close = best - second < self.margin or (threshold is not None and abs(best - threshold) < self.margin)
        with self._count_lock:
            self.checked += 1
            self.rerun += close
        return close

    @property
    def rate(self) -> float | None:
        return self.rerun / self.checked if self.checked else None


class OnnxPredictor:
    """A version's ONNX model on onnxruntime: the interface of :class:`~.reference.TorchPredictor`, without torch."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        config: RuntimeClassifierConfig,
        version: str,
        runtime: str = ONNX_INT8,
        lanes: int = 1,
        recheck: Recheck | None = None,
        detector: OutOfScopeDetector | None = None,
    ) -> None:
        """``detector``: the version's out-of-scope detector (default: the config's softmax threshold)."""
        self.session = session
        self._detector = detector if detector is not None else OutOfScopeDetector.from_config(config, None)
        # the kNN detector reads the graph's pooled embedding beside the logits
        self._outputs = ["logits", EMBEDDING_OUTPUT] if self._detector.needs_embedding else ["logits"]
        if self._detector.needs_embedding and EMBEDDING_OUTPUT not in {o.name for o in session.get_outputs()}:
            raise ModelError(
                f"version {version}: its out-of-scope detector is kNN but its ONNX graph has no "
                f"{EMBEDDING_OUTPUT!r} output",
                hint="retrain it, or serve it on torch: HOTELBOT_RUNTIME=torch",
            )
        self.recheck = recheck  # int8 only: close calls re-run on fp32
        self.tokenizer = tokenizer  # FullEncoder or UnigramSubsetEncoder: .encode(texts) -> (ids, mask)
        self.config = config
        self.version = version
        self.runtime = runtime
        self.labels = list(config.labels)
        self._inputs = {i.name for i in session.get_inputs()}
        self.batch_invariant = runtime == ONNX_INT8  # see probabilities()
        self.lanes = lanes  # int8: parallel one-text session calls
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_model_dir(
        cls,
        model_dir: Path,
        runtime: str = ONNX_INT8,
        version: str = "",
        tokenizer: str | None = None,
        *,
        before_session: Any = None,
        recheck_margin: float | None = None,
        before_recheck: Any = None,
        open_recheck: bool = True,
    ) -> OnnxPredictor:
        """``tokenizer``: "full" or "unigram-subset" (default: what runtime.json says, else the fastest).
        ``before_session()`` runs after the tokenizer is loaded and before the ONNX file is opened.

        int8 only: ``recheck_margin`` (default: runtime.json's ``recheck``; 0: none) re-runs close calls on
        the fp32 graph (:class:`Recheck`), opened now with ``open_recheck`` or else on the first close
        call, after ``before_recheck()``."""
        if runtime not in ONNX_FILES:
            raise ConfigError(f"not an ONNX runtime: {runtime!r} (use {ONNX_FP32} or {ONNX_INT8})")
        model_dir = Path(model_dir)
        path = model_dir / ONNX_FILES[runtime]
        if not path.is_file():
            raise ModelError(
                f"{path} does not exist: this version has no {runtime} model",
                hint=f"unset {RUNTIME_ENV} or retrain with a hotelbot that exports ONNX",
            )
        config = RuntimeClassifierConfig.from_file(model_dir / CLASSIFIER_FILE)
        spec: dict[str, Any] = {}
        if tokenizer is None or recheck_margin is None:
            spec = read_runtime_spec(model_dir) or {}
        if tokenizer is None:
            tokenizer = spec.get("tokenizer")
        encoder = load_text_encoder(model_dir, config.max_length, tokenizer)
        detector = OutOfScopeDetector.from_config(config, model_dir)
        if before_session is not None:
            before_session()
        if runtime == ONNX_INT8:
            # One short text is too little work to split across threads (on 2 cores, e5-small int8: 4.5 ms
            # per text with 2 intra-op threads, 3.5 ms with 1), so the int8 model runs single-threaded
            # calls side by side, one lane per core of the thread budget: 2.4x the texts/s on 2 cores
            # (benchmarks/latency.py).
            lanes = thread_budget()
            if recheck_margin is None:
                recheck_margin = _recheck_margin(spec)
            recheck = None
            if recheck_margin > 0:
                recheck = Recheck(model_dir / ONNX_FP32_FILE, recheck_margin, before_recheck)
                if open_recheck:
                    recheck.open()
            return cls(
                open_session(path, threads=1),
                encoder,
                config,
                version or model_dir.parent.name,
                runtime,
                lanes,
                recheck,
                detector,
            )
        return cls(open_session(path), encoder, config, version or model_dir.parent.name, runtime, detector=detector)

    @classmethod
    def from_version(cls, info: VersionInfo, runtime: str | None = None, verify: bool = False) -> OnnxPredictor:
        """Load a version's ONNX model; ``verify`` checks the checksums of exactly the files read.

        The small files (runtime.json, classifier.json, the tokenizer files) are checked before they are
        read; the .onnx file is hashed in a background thread while the tokenizer loads (hashlib runs
        without the GIL), and the session is created only once that hash matched.
        """
        model_dir = info.path / MODEL_SUBDIR
        if verify:
            require_files_intact(info, [f"{MODEL_SUBDIR}/{RUNTIME_FILE}"])
        spec = read_runtime_spec(model_dir) or {}
        if runtime is None:
            runtime = spec.get("runtime") if spec.get("runtime") in ONNX_FILES else ONNX_INT8
        if runtime not in ONNX_FILES:
            raise ConfigError(f"not an ONNX runtime: {runtime!r} (use {ONNX_FP32} or {ONNX_INT8})")
        check = None
        if verify:
            graph = onnx_graph_files_read(runtime, spec)
            require_files_intact(info, [f for f in onnx_files_read(runtime, spec) if f not in graph])
            check = BackgroundCheck(info, graph)
        # With verify (the fast `predict` path) the fp32 graph of int8's recheck is checksummed and opened
        # only if a close call needs it; without (serve, validate: the whole version was checked), now.
        fp32_files = onnx_graph_files_read(ONNX_FP32, spec)  # the graph and the external data it reads
        return cls.from_model_dir(
            model_dir,
            runtime,
            info.name,
            before_session=check.require if check is not None else None,
            before_recheck=(lambda: require_files_intact(info, fp32_files)) if verify else None,
            open_recheck=not verify,
        )

    def with_recheck(self, recheck: Recheck | None) -> OnnxPredictor:
        """This predictor (same session, tokenizer, lanes) with ``recheck`` instead of its own (None: int8 alone)."""
        return OnnxPredictor(
            self.session, self.tokenizer, self.config, self.version, self.runtime, self.lanes, recheck, self._detector
        )

    @classmethod
    def from_registry(
        cls, registry: Any, version: str | None = None, verify: bool = True, runtime: str | None = None
    ) -> OnnxPredictor:
        """Load ``version`` (default: deployed, else newest), checking the checksums of the files it reads."""
        return cls.from_version(registry.resolve(version), runtime, verify=verify)

    # --- the Predictor interface
    @property
    def detector(self) -> OutOfScopeDetector:
        """The version's out-of-scope detector (runtime.detector)."""
        return self._detector.current(self.config)

    @property
    def threshold(self) -> float | None:
        return self.detector.softmax_threshold

    @property
    def query_prefix(self) -> str:
        return self.config.query_prefix

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def encode(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """(input_ids, attention_mask) as int64 arrays, exactly as TorchPredictor builds them."""
        return self.tokenizer.encode([self.config.query_prefix + clean_text(t) for t in texts])

    def logits(self, texts: Sequence[str]) -> Any:
        return self.session.run(["logits"], self.feed(*self.encode(texts)))[0]

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> Any:
        """Softmax over the labels, one row per text (a numpy array; TorchPredictor returns a tensor).

        The int8 model runs one text at a time: dynamic quantization scales each activation tensor by
        its own range, so in a padded batch a text's answer would depend on the other texts in it (on
        e5, 4 % of the labels changed between batch-32 and one-by-one). fp32 batches (same answers to 1e-6).
        The int8 texts are tokenized together, then run in ``lanes`` parallel single-threaded
        session calls (see :meth:`from_model_dir`).
        """
        return self.outputs(texts, batch_size)[0]

    def outputs(self, texts: Sequence[str], batch_size: int = 32) -> tuple[Any, Any]:
        """(the probabilities, as :meth:`probabilities`; the pooled embeddings when the kNN detector reads them,
        else None)."""
        import numpy as np  # imported on use (see softmax)

        if self.batch_invariant:
            rows = self._one_by_one(texts)
        else:
            step = max(1, batch_size)
            rows = [self._batch_outputs(texts[start : start + step]) for start in range(0, len(texts), step)]
        if not rows:
            return np.empty((0, len(self.labels)), dtype=np.float32), None
        probs = np.stack([r[0] for r in rows]) if self.batch_invariant else np.concatenate([r[0] for r in rows])
        if len(self._outputs) == 1:
            return probs, None
        pooled = np.stack([r[1] for r in rows]) if self.batch_invariant else np.concatenate([r[1] for r in rows])
        return probs, pooled

    def _batch_outputs(self, texts: Sequence[str]) -> tuple[Any, Any]:
        out = self.session.run(self._outputs, self.feed(*self.encode(texts)))
        return softmax(out[0]), (out[1] if len(out) > 1 else None)

    def _one_by_one(self, texts: Sequence[str]) -> list[tuple[Any, Any]]:
        if not texts:
            return []
        ids, mask = self.encode(texts)
        if self.lanes > 1 and len(texts) > 1:
            return list(self._lane_pool().map(lambda row: self._row_outputs(ids, mask, row), range(len(texts))))
        return [self._row_outputs(ids, mask, row) for row in range(len(texts))]

    def feed(self, ids: Any, mask: Any) -> dict[str, Any]:
        """The session's inputs for encoded ids and attention mask (those of them the graph takes)."""
        return {k: v for k, v in {"input_ids": ids, "attention_mask": mask}.items() if k in self._inputs}

    def run_row(self, ids: Any, mask: Any, row: int, outputs: Sequence[str], session: Any = None) -> list[Any]:
        """``outputs`` for one text of an encoded batch, run alone: its own tokens only, exactly its one-text
        encoding (``session``: another graph of the same model, e.g. the fp32 recheck)."""
        keep = mask[row].astype(bool)
        return (session or self.session).run(
            list(outputs), self.feed(ids[row : row + 1, keep], mask[row : row + 1, keep])
        )

    def _row_outputs(self, ids: Any, mask: Any, row: int) -> tuple[Any, Any]:
        """One text's (probabilities, pooled embedding or None) on int8, or on fp32 when int8 made a close call
        on the intent or the softmax threshold (:class:`Recheck`)."""
        out = self.run_row(ids, mask, row, self._outputs)
        probs = softmax(out[0])[0]
        if self.recheck is not None and self.recheck.needed(probs, self.threshold):
            out = self.run_row(ids, mask, row, self._outputs, self.recheck.open())
            probs = softmax(out[0])[0]
        return probs, (out[1][0] if len(out) > 1 else None)

    def _lane_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="hotelbot-onnx")
        return self._pool

    @property
    def streams(self) -> bool:
        """True when :meth:`submit_each` can answer texts independently on parallel lanes (int8)."""
        return self.batch_invariant and self.lanes > 1

    def submit_each(self, texts: Sequence[str], top_k: int = 3) -> list[Any]:
        """int8: one concurrent.futures.Future per text, each resolving to its Prediction as soon as that
        text has run. The texts are tokenized together here; their passes queue on the lanes, first in
        first out. The answers equal :meth:`predict`'s."""
        check_texts(texts)
        ids, mask = self.encode(texts)
        pool = self._lane_pool()
        k = max(1, min(top_k, len(self.labels)))

        def one(row: int) -> Prediction:
            probs, pooled = self._row_outputs(ids, mask, row)
            return self._prediction(texts[row], probs, k, self._similarity(pooled))

        return [pool.submit(one, row) for row in range(len(texts))]

    def _similarity(self, pooled: Any) -> float | None:
        return None if pooled is None else float(self.detector.similarity(pooled[None, :])[0])

    def _prediction(self, text: str, row: Any, k: int, similarity: float | None = None) -> Prediction:
        import numpy as np  # imported on use (see softmax)

        idxs = np.argsort(-row, kind="stable")[:k]
        ranked = [{"intent": self.labels[i], "confidence": round(float(row[i]), 6)} for i in idxs]
        intent, fallback = self.detector.decide(ranked[0]["intent"], float(row[idxs[0]]), similarity)
        return Prediction(
            text,
            intent,
            ranked[0]["confidence"],
            ranked,
            fallback,
            None if similarity is None else round(similarity, 6),
        )

    def predict(self, texts: Sequence[str], top_k: int = 3, batch_size: int = 32) -> list[Prediction]:
        check_texts(texts)
        probs, pooled = self.outputs(texts, batch_size)
        k = max(1, min(top_k, len(self.labels)))
        sims = [None] * len(texts) if pooled is None else [float(x) for x in self.detector.similarity(pooled)]
        return [self._prediction(text, row, k, sim) for text, row, sim in zip(texts, probs, sims)]

    def predict_labels(self, texts: Sequence[str], batch_size: int = 32, apply_threshold: bool = True) -> list[str]:
        probs, pooled = self.outputs(texts, batch_size)
        intents = [self.labels[int(i)] for i in probs.argmax(axis=-1)]
        if not apply_threshold:
            return intents
        sims = None if pooled is None else self.detector.similarity(pooled)
        return self.detector.labels(intents, [float(c) for c in probs.max(axis=-1)], sims)
