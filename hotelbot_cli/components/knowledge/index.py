"""The knowledge base's vector index: :class:`VectorIndex` (add / search / save / load) and
:class:`ExactIndex`, exact cosine search over the normalized matrix (a few thousand chunks answer in well
under a millisecond). An ANN library (hnswlib, FAISS) plugs in as another subclass registered in
:data:`INDEX_TYPES`."""

from __future__ import annotations

import abc
import json
from collections import Counter
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from ..._io import atomic_write_json
from ...errors import ModelError


class VectorIndex(abc.ABC):
    """Vectors keyed by id; cosine similarity search. Subclasses register in :data:`INDEX_TYPES`."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append vectors (rows, L2-normalized here) under unique ids."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each query row, the ``k`` best (id, cosine) pairs, best first."""

    @abc.abstractmethod
    def save(self, directory: Path) -> list[str]:
        """Write the index's files into ``directory``; returns their names."""

    @classmethod
    @abc.abstractmethod
    def load(cls, directory: Path) -> VectorIndex:
        """Read what :meth:`save` wrote."""

    @property
    @abc.abstractmethod
    def ids(self) -> list[str]:
        """Ids in insertion order."""

    @abc.abstractmethod
    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored (normalized) vectors of ``ids`` (for incremental rebuilds)."""

    def __len__(self) -> int:
        return len(self.ids)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if not np.isfinite(matrix).all():
        raise ModelError("embedding vectors contain NaN or infinity")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ModelError("an embedding vector is all zeros; it cannot be normalized")
    # Idempotent: rows already of unit length are kept bit for bit (reused vectors stay identical).
    return np.ascontiguousarray(np.where(np.abs(norms - 1) > 1e-6, matrix / norms, matrix), dtype=np.float32)


class ExactIndex(VectorIndex):
    """Exact cosine search: one float32 matrix of normalized rows, scores = queries @ matrix.T."""

    kind = "exact-cosine"
    MATRIX_FILE = "embeddings.npy"
    IDS_FILE = "embedding_ids.json"

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ModelError(f"index dimension must be positive, got {dim}")
        self.dim = int(dim)
        self._ids: list[str] = []
        self._matrix = np.zeros((0, self.dim), dtype=np.float32)
        self._row: dict[str, int] = {}

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        ids = list(ids)
        matrix = normalize_rows(vectors) if len(ids) else np.zeros((0, self.dim), dtype=np.float32)
        if matrix.shape != (len(ids), self.dim):
            raise ModelError(f"expected {len(ids)} vectors of dimension {self.dim}, got shape {matrix.shape}")
        duplicate = next((i for i in ids if i in self._row), None) or next(
            (i for i, n in Counter(ids).items() if n > 1), None
        )
        if duplicate is not None:
            raise ModelError(f"duplicate id in the index: {duplicate}")
        for i in ids:
            self._row[i] = len(self._ids)
            self._ids.append(i)
        self._matrix = np.ascontiguousarray(np.vstack([self._matrix, matrix]), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        q = normalize_rows(queries)
        if q.shape[1] != self.dim:
            raise ModelError(f"query dimension {q.shape[1]} does not match the index ({self.dim})")
        k = min(int(k), len(self._ids))
        if k <= 0:
            return [[] for _ in range(len(q))]
        scores = q @ self._matrix.T
        out = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
            top = top[np.lexsort((top, -row[top]))]  # best score first; ties by insertion order
            out.append([(self._ids[i], float(row[i])) for i in top])
        return out

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        try:
            rows = [self._row[i] for i in ids]
        except KeyError as exc:
            raise ModelError(f"id {exc.args[0]!r} is not in the index") from None
        return self._matrix[rows] if rows else np.zeros((0, self.dim), dtype=np.float32)

    def save(self, directory: Path) -> list[str]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / self.MATRIX_FILE, "wb") as handle:
            np.save(handle, self._matrix, allow_pickle=False)
        atomic_write_json(directory / self.IDS_FILE, self._ids)
        return [self.MATRIX_FILE, self.IDS_FILE]

    @classmethod
    def load(cls, directory: Path) -> ExactIndex:
        directory = Path(directory)
        try:
            matrix = np.load(directory / cls.MATRIX_FILE, allow_pickle=False)
            ids = json.loads((directory / cls.IDS_FILE).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the vector index in {directory}: {exc}") from None
        if matrix.ndim != 2 or matrix.dtype != np.float32 or len(ids) != matrix.shape[0]:
            raise ModelError(f"vector index in {directory} is malformed: {matrix.dtype} {matrix.shape}, {len(ids)} ids")
        index = cls(matrix.shape[1])
        index._ids = [str(i) for i in ids]
        index._row = {i: n for n, i in enumerate(index._ids)}
        index._matrix = np.ascontiguousarray(matrix)
        return index


INDEX_TYPES: dict[str, type[VectorIndex]] = {ExactIndex.kind: ExactIndex}
