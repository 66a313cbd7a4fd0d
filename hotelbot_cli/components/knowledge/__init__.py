"""The knowledge base: the hotel's documents cut into chunks, embedded, searched by cosine similarity. Its
files live in ``knowledge/``, its summary in ``metadata["knowledge"]``; ``train --model-type embeddings``
builds it. It has no gate score: deploy checks that it loads and answers a search."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import HotelbotError, ModelError
from ..base import Component, ComponentResult, TrainRequest, report_common
from ..compose import has_component

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import VersionInfo

DEFAULT_DOCUMENTS_OUTPUT = Path("data/documents")  # where `prepare --documents` writes by default
DEFAULT_KB_EVAL = Path("datasets/kb_eval_es.jsonl")  # the retrieval questions `validate` uses by default
SMOKE_QUESTION = "¿a qué hora es el check-in?"


class KnowledgeBaseComponent(Component):
    name = "knowledge"
    model_type = "embeddings"
    kind = "knowledge-base"
    experiment = "hotelbot-knowledge"
    description = "knowledge base (document chunks + embedding index)"
    paths = ("knowledge",)
    train_options = ("incremental",)
    prepare_hint = "hotelbot prepare --documents DIR"
    evaluation_key = "retrieval"
    export_formats = ("hf",)

    def prepared_data(self, settings: Settings, documents: Path | None = None) -> Path | None:
        if documents is not None:
            return documents
        return DEFAULT_DOCUMENTS_OUTPUT if (DEFAULT_DOCUMENTS_OUTPUT / "documents.json").exists() else None

    def train(self, request: TrainRequest) -> ComponentResult:
        from .kb import train_knowledge_base  # kb imports numpy

        result = train_knowledge_base(
            request.settings,
            Path(request.data or DEFAULT_DOCUMENTS_OUTPUT),
            request.registry,
            listener=request.listener,
            incremental=bool(request.options.get("incremental")),
            source=request.source,
            eval_questions=DEFAULT_KB_EVAL if DEFAULT_KB_EVAL.is_file() else None,
        )
        line = (
            f"knowledge base {result.version.name}: {result.documents} documents, {result.chunks} chunks "
            f"({result.embedded_chunks} embedded, {result.reused_chunks} reused"
            f"{', incremental' if result.incremental else ''}) in {result.build_seconds:.1f}s"
        )
        note = (
            f"carried over the other components of {result.source}"
            if result.source
            else "the registry was empty: this version holds only the knowledge base"
        )
        carried = result.version.manifest.carried_over
        return ComponentResult(
            self.name,
            result.version,
            {"chunks": result.chunks, "documents": result.documents},
            result.build_seconds,
            result.mlflow_run_id,
            [],
            result.to_dict(),
            [line],
            [note],
            carried_from=carried.source,
            carried_components=list(carried.components),
            detail=result,
        )

    def evaluate(
        self, info: VersionInfo, settings: Settings, options: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[str]]:
        """Retrieval quality (dense vs BM25) on ``options["kb_eval"]`` (default: the shipped questions)."""
        from .kb import evaluate_retrieval  # kb imports numpy

        questions = options.get("kb_eval")
        if questions is None and not DEFAULT_KB_EVAL.exists():
            return None, [
                f"{info.name} has a knowledge base but no retrieval questions ({DEFAULT_KB_EVAL}); pass --kb-eval"
            ]
        return evaluate_retrieval(info, questions or DEFAULT_KB_EVAL, k=5, models_dir=settings.paths.models_dir), []

    def evaluation_lines(self, r: dict[str, Any]) -> dict[str, list[str]]:
        k = r["k"]
        lines = [f"{r['version']} knowledge base: {r['questions']} questions ({r['eval_path']}), {r['chunks']} chunks"]
        for name, key in ((f"dense ({r['embedding_model']})", "dense"), ("BM25 baseline", "bm25")):
            m = r[key]
            lines.append(
                f"  {name:<48} hit@1 {m['hit@1']:.3f}  hit@{k} {m[f'hit@{k}']:.3f}  MRR {m['mrr']:.3f}   "
                f"document: hit@1 {m['doc_hit@1']:.3f}  hit@{k} {m[f'doc_hit@{k}']:.3f}  "
                f"MRR {m['doc_mrr']:.3f}"
            )
        warnings = (
            [f"questions naming a section that is not in the index: {', '.join(r['unknown_targets'][:5])}"]
            if r["unknown_targets"]
            else []
        )
        return {"stdout": lines, "stderr": [], "warnings": warnings}

    def smoke(self, info: VersionInfo, settings: Settings, texts_count: int) -> dict[str, Any]:
        kb = self.load(info, settings)
        hits = kb.search(SMOKE_QUESTION, top_k=1)
        if not hits or not math.isfinite(hits[0].score):
            raise HotelbotError(f"{info.name}'s knowledge base returned no usable search result")
        return {"chunks": len(kb.chunk_list), "top_score": round(hits[0].score, 4)}

    def load(self, info: VersionInfo, settings: Settings | None = None, loaded: dict[str, Any] | None = None) -> Any:
        from .kb import KnowledgeBase  # kb imports numpy

        kb = KnowledgeBase.from_version(info, settings.paths.models_dir if settings is not None else None)
        kb.shares_encoder = has_component(info, "generator")  # its generator reads the fp32 encoder's states
        return kb

    def warm_up(self, loaded: Any, version: str, text: str) -> None:
        if not loaded.search(text, top_k=1):  # also loads the query encoder
            raise ModelError(f"version {version}'s knowledge base returned nothing for a smoke search")

    def export(self, info: VersionInfo, fmt: str, target: Path, settings: Settings) -> dict[str, Any]:
        """Its embedding model (which the version references, not stores: re-materialised and checked against
        the index's fingerprint) as an HF directory, with the chunks, their vectors and how queries are embedded."""
        from .kb import KnowledgeBase, export_knowledge  # kb imports numpy

        return export_knowledge(KnowledgeBase.from_version(info, settings.paths.models_dir), target)

    def report_section(self, path: Path, metadata: dict[str, Any]) -> dict[str, Any] | None:
        knowledge = metadata.get(self.name)
        if not isinstance(knowledge, dict):
            return None
        return {
            "kind": "retrieval",
            "headline": {
                k: knowledge.get(k)
                for k in ("documents", "chunks", "dim", "embedded_chunks", "reused_chunks", "incremental")
            },
            "rows": [],
            **report_common(
                {
                    **knowledge,
                    "base_model": knowledge.get("embedding_model"),
                    "training": {"duration_seconds": knowledge.get("build_seconds")},
                }
            ),
        }


__all__ = ["DEFAULT_DOCUMENTS_OUTPUT", "DEFAULT_KB_EVAL", "KnowledgeBaseComponent"]
