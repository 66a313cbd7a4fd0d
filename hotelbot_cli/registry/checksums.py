"""Checksum verification, written once: every file a version holds is recorded with its sha256 in
``metadata["files"]`` at publish time, and every check (``verify``, carry-over, the knowledge base's reuse,
the ONNX runtime's partial check) compares files on disk with that record here."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .._io import sha256_file
from ..errors import IntegrityError

METADATA_FILE = "metadata.json"


def checksum_tree(root: Path, exclude: tuple[str, ...] = (METADATA_FILE,)) -> dict[str, str]:
    """sha256 of every regular file below ``root``, keyed by POSIX relative path."""
    return {rel: sha256_file(Path(root) / rel) for rel in tree_files(root, exclude)}


def tree_files(root: Path, exclude: tuple[str, ...] = (METADATA_FILE,)) -> list[str]:
    """POSIX relative path of every regular file below ``root`` (sorted), without reading them."""
    return [
        rel
        for path in sorted(Path(root).rglob("*"))
        if (rel := path.relative_to(root).as_posix()) not in exclude and path.is_file()
    ]


def _under(rel: str, prefixes: Iterable[str]) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in prefixes)


def file_problem(root: Path, rel: str, recorded: Mapping[str, str]) -> str | None:
    """What is wrong with one file against the record (None: intact)."""
    if rel not in recorded:
        return "is not recorded in its metadata (added after publishing)"
    path = Path(root) / rel
    if not path.is_file():
        return "is missing"
    if sha256_file(path) != recorded[rel]:
        return "fails its checksum"
    return None


def component_problems(root: Path, recorded: Mapping[str, str], prefixes: Iterable[str]) -> tuple[list[str], list[str]]:
    """The files present under ``prefixes`` (paths relative to ``root``: files or directories), and one
    "REL PROBLEM" line per file that is missing, unrecorded or fails its sha256, both sorted."""
    root, prefixes = Path(root), tuple(prefixes)
    present: set[str] = set()
    for rel in prefixes:
        target = root / rel
        if target.is_dir():
            present |= {p.relative_to(root).as_posix() for p in target.rglob("*") if p.is_file()}
        elif target.is_file():
            present.add(rel)
    expected = {r for r in recorded if _under(r, prefixes)}
    problems = []
    for rel in sorted(expected | present):
        problem = file_problem(root, rel, recorded)
        if problem:
            problems.append(f"{rel} {problem}")
    return sorted(present), problems


def listed_problems(name: str, root: Path, recorded: Mapping[str, str], rels: Iterable[str]) -> list[str]:
    """Problems of the files ``rels`` of version ``name`` against its record, as ``hotelbot verify`` words
    them. A file that exists but is not recorded is a problem (added after publishing); a file that is
    neither there nor recorded is not (an optional file)."""
    problems = []
    for rel in rels:
        path = Path(root) / rel
        expected = recorded.get(rel)
        if expected is None:
            if path.exists():
                problems.append(f"{name}/{rel}: not recorded in metadata (added after publishing)")
        elif not path.is_file():
            problems.append(f"{name}/{rel}: missing")
        elif sha256_file(path) != expected:
            problems.append(f"{name}/{rel}: checksum mismatch (corrupt or modified)")
    return problems


def version_problems(name: str, root: Path, recorded: Mapping[str, str]) -> list[str]:
    """Every problem of a whole version against its record, as ``hotelbot verify`` lists them."""
    problems = listed_problems(name, root, recorded, sorted(recorded))
    for rel in sorted(set(tree_files(root)) - set(recorded)):
        problems.append(f"{name}/{rel}: not recorded in metadata (added after publishing)")
    return problems


def require_no_problems(name: str, problems: Sequence[str]) -> None:
    """IntegrityError naming the first problem (deploy, rollback, predict and serve refuse such a version)."""
    if problems:
        raise IntegrityError(
            f"version {name} failed its checksum check: {problems[0]}", hint="run `hotelbot verify` for the full list"
        )
