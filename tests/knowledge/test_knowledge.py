"""The knowledge base: chunking and offsets, bad inputs, the vector index, versioned builds (carry-over,
incremental == full rebuild, rollback), search, retrieval metrics and the CLI.

Most tests embed with the session's tiny BERT (HOTELBOT_BASE_MODEL); one slow test uses the real
packaged multilingual-e5-small on the shipped documents."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import REPO
from hotelbot_cli.cli.app import app
from hotelbot_cli.cli.prepare import prepare_cmd
from hotelbot_cli.cli.search import search_cmd
from hotelbot_cli.config import load_settings
from hotelbot_cli.errors import DataError, IntegrityError, ModelError, RegistryError
from hotelbot_cli.components.knowledge.documents import clean_chunk_text
from hotelbot_cli.components.knowledge.kb import BM25, Chunk, ExactIndex, KnowledgeBase, bm25_tokens, chunk_document, evaluate_retrieval, prepare_documents, read_prepared_documents, train_knowledge_base
from hotelbot_cli.components.knowledge.retrieval import EvalQuestion, ranking_metrics
from hotelbot_cli.registry import ModelRegistry

SHIPPED_DOCS = REPO / "datasets" / "documentos"
SHIPPED_EVAL = REPO / "datasets" / "kb_eval_es.jsonl"
runner = CliRunner()

search_app = typer.Typer()  # `search` joins the root app in app.py; this keeps the test independent of it
search_app.command("search")(search_cmd)
search_app.command("prepare")(prepare_cmd)  # a second command keeps `search` a subcommand

CORPUS = {
    "mascotas.md": "# Mascotas\n\n## Perros y gatos\n\nAdmitimos perros y gatos de hasta 10 kg por 20 € la noche.\n\n"
                   "## Perros guía\n\nLos perros guía entran gratis en todas las zonas.\n",
    "wifi.txt": "Wifi\n====\n\nLa red se llama FaroLevante-Clientes y es gratuita.\n\nEnchufes\n--------\n\n"
                "Los enchufes son de tipo europeo y prestamos adaptadores.\n",
    "spa.md": "# Spa\n\n## Horario\n\nEl spa abre de 9:00 a 21:00 todos los días.\n\n## Masajes\n\n"
              "El masaje relajante de 50 minutos cuesta 65 €.\n",
    "parking.md": "# Parking\n\n## Precio\n\nEl parking subterráneo cuesta 24 € por día.\n",
}


def write_corpus(root, files=CORPUS):
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, "utf-8")
    return root


@pytest.fixture
def kb_settings(isolated_env, tiny_model, monkeypatch):
    monkeypatch.setenv("HOTELBOT_BASE_MODEL", str(tiny_model))
    monkeypatch.setenv("MIN_VALIDATION_SCORE", "0.0")
    return load_settings()


def passage_of(version_info, doc, heading):
    kb = KnowledgeBase.from_version(version_info)
    return next(c for c in kb.chunk_list if c.doc == doc and c.heading == heading).passage()


# ---------------------------------------------------------------------------------------- chunking


LONG = " ".join(f"Frase número {i} sobre las normas de la piscina." for i in range(30))
DOC = ("\ufeff# Hotel Prueba\r\n\r\nIntroducción con **negrita** y un [enlace](https://example.org).\r\n\r\n"
       "## Horarios\r\n\r\nEl desayuno es de 7:00 a 10:30.\r\nLa cena de 19:30 a 23:00.\r\n\r\n- uno\r\n- dos\r\n\r\n"
       "Piscina\r\n-------\r\n\r\n" + LONG
       + "\r\n\r\n---\r\n\r\n| plato | precio |\r\n|---|---|\r\n| arroz | 18 € |\r\n")


def test_chunks_keep_exact_offsets_headings_and_overlap():
    chunks = chunk_document("prueba.md", DOC, max_chars=300, overlap_chars=80)
    for c in chunks:
        span = DOC[c.start:c.end]
        assert span == span.strip() and c.text == clean_chunk_text(span)  # offsets reproduce the source span
        assert "\r" not in c.text and "**" not in c.text and "https" not in c.text
    by_heading = {}
    for c in chunks:
        by_heading.setdefault(c.headings, []).append(c)
    assert list(by_heading) == [("Hotel Prueba",), ("Hotel Prueba", "Horarios"), ("Hotel Prueba", "Piscina")]
    assert by_heading[("Hotel Prueba",)][0].text == "Introducción con negrita y un enlace."
    assert by_heading[("Hotel Prueba", "Horarios")][0].text.splitlines()[-1] == "- dos"
    pool = by_heading[("Hotel Prueba", "Piscina")]
    assert len(pool) >= 4 and all(c.heading == "Piscina" for c in pool)
    assert [c.id for c in chunks] == [f"prueba.md#{i:03d}" for i in range(len(chunks))]
    for a, b in zip(pool, pool[1:]):
        assert b.start < a.end and a.end - b.start <= 80  # overlap inside a section, at most overlap_chars
        assert b.end > a.end
    assert all(c.end - c.start <= 300 for c in chunks)
    assert pool[-1].text.endswith("arroz | 18 €") and "---" not in pool[-1].text  # table kept, rule dropped
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end))
    for i in range(30):  # every sentence of the long paragraph is in some chunk
        start = DOC.index(f"Frase número {i} ")
        assert start in covered
    heading_line = DOC.index("Piscina\r\n---")
    assert not any(c.start <= heading_line < c.end for c in chunks)  # headings are never inside a chunk


def test_no_chunk_crosses_a_heading_and_txt_ignores_hash_lines():
    md = chunk_document("a.md", "# A\n\ntexto a\n# B\n\ntexto b\n")
    assert [(c.heading, c.text) for c in md] == [("A", "texto a"), ("B", "texto b")]
    txt = chunk_document("a.txt", "# no es un título\n\nTítulo\n======\n\ncuerpo\n")
    assert [(c.headings, c.text) for c in txt] == [((), "# no es un título"), (("Título",), "cuerpo")]


def test_a_sentence_longer_than_a_chunk_is_cut_at_spaces():
    text = "## S\n\n" + " ".join(["palabra"] * 100)
    chunks = chunk_document("x.md", text, max_chars=120, overlap_chars=0)
    assert all(c.end - c.start <= 120 for c in chunks) and len(chunks) >= 6
    assert " ".join(c.text for c in chunks).split() == ["palabra"] * 100  # no overlap: nothing lost, nothing twice


def test_prepare_the_shipped_documents(isolated_env):
    prepared = prepare_documents(SHIPPED_DOCS)
    assert len(prepared.documents) >= 12 and {d.doc.rsplit(".", 1)[1] for d in prepared.documents} == {"md", "txt"}
    for d in prepared.documents:
        original = (SHIPPED_DOCS / d.doc).read_text("utf-8")
        for c in (c for c in prepared.chunks if c.doc == d.doc):
            assert c.text == clean_chunk_text(original[c.start:c.end])
    questions = [json.loads(line) for line in SHIPPED_EVAL.read_text("utf-8").splitlines() if line.strip()]
    assert len(questions) >= 60
    headings = {(c.doc, c.heading) for c in prepared.chunks}
    missing = [q for q in questions if (q["doc"], q["section"]) not in headings]
    assert missing == []  # every eval question names a real document and section


@pytest.mark.parametrize("name, content, fragment", [
    ("folleto.pdf", b"%PDF-1.4", "unsupported document type '.pdf'"),
    ("carta.docx", b"PK\x03\x04", "unsupported document type '.docx'"),
    ("vacio.md", b"  \n\n", "the document is empty"),
    ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
    ("titulos.md", b"# Solo\n\n## Titulos\n", "no text besides headings"),
])
def test_bad_documents_are_refused_naming_the_file(tmp_path, name, content, fragment):
    folder = write_corpus(tmp_path / "docs")
    (folder / name).write_bytes(content)
    with pytest.raises(DataError) as info:
        prepare_documents(folder)
    assert fragment in str(info.value) and name in str(info.value)


def test_empty_or_missing_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".gitkeep").write_text("")  # hidden files are skipped
    with pytest.raises(DataError, match="no documents in"):
        prepare_documents(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        prepare_documents(tmp_path / "nope")


def test_prepare_cli_documents(isolated_env, tmp_path):
    folder = write_corpus(tmp_path / "docs")
    result = runner.invoke(app, ["prepare", "--documents", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["documents"] == 4 and summary["output"] == "data/documents"
    prepared = read_prepared_documents(isolated_env / "data" / "documents")
    assert len(prepared.chunks) == summary["chunks"] == 7
    assert {d.doc: d.sha256 for d in prepared.documents} == {
        d["doc"]: d["sha256"] for d in summary["per_document"]}

    (folder / "folleto.pdf").write_bytes(b"%PDF")
    result = runner.invoke(app, ["prepare", "--documents", str(folder), "--output", "other"])
    assert result.exit_code == 1 and "folleto.pdf" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (isolated_env / "other").exists()

    assert runner.invoke(app, ["prepare"]).exit_code == 2  # neither DATA nor --documents
    assert runner.invoke(app, ["prepare", "x.json", "--documents", str(folder)]).exit_code == 2


# ---------------------------------------------------------------------------------------- index and BM25


def test_exact_index_search_save_load(tmp_path):
    index = ExactIndex(3)
    index.add(["a", "b", "c"], np.array([[1, 0, 0], [0, 2, 0], [1, 1, 0]], dtype=np.float64))
    assert np.allclose(np.linalg.norm(index.matrix, axis=1), 1) and index.matrix.dtype == np.float32
    (hits,) = index.search(np.array([0.9, 0.1, 0]), 2)
    assert [h[0] for h in hits] == ["a", "c"] and hits[0][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1), rel=1e-5)
    assert [h[0] for h in index.search(np.array([[0, 0, 1]]), 10)[0]] == ["a", "b", "c"]  # ties: insertion order
    index.save(tmp_path)
    loaded = ExactIndex.load(tmp_path)
    assert loaded.ids == ["a", "b", "c"] and np.array_equal(loaded.matrix, index.matrix)
    assert np.load(tmp_path / "embeddings.npy", allow_pickle=False).shape == (3, 3)
    with pytest.raises(ModelError, match="duplicate"):
        loaded.add(["a"], np.ones((1, 3)))
    with pytest.raises(ModelError, match="dimension"):
        loaded.search(np.ones(4), 1)


def test_bm25_ranks_the_matching_text_first():
    docs = ["el parking cuesta 24 euros", "admitimos perros y gatos", "el spa abre a las 9"]
    bm25 = BM25([bm25_tokens(d) for d in docs])
    assert bm25.top_k(bm25_tokens("¿Admiten PERROS?"), 1)[0][0] == 1  # accents, case and plural folded
    assert bm25.top_k(bm25_tokens("parkíng"), 3)[0][0] == 0


def test_ranking_metrics_count_section_and_document_hits():
    def chunk(doc, heading):
        return Chunk(f"{doc}#{heading}", doc, heading, (heading,), 0, 1, "x")

    questions = [EvalQuestion("q1", "a.md", "Uno"), EvalQuestion("q2", "a.md", "Dos"), EvalQuestion("q3", "b.md", "X")]
    rankings = [[chunk("a.md", "uno")],                       # rank 1 (case-insensitive)
                [chunk("a.md", "Uno"), chunk("a.md", "Dós")],  # rank 2 (accents ignored); document at rank 1
                [chunk("a.md", "X")]]                          # miss
    m = ranking_metrics(rankings, questions, k=5)
    assert m["hit@1"] == pytest.approx(1 / 3) and m["hit@5"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 0.5) / 3) and m["doc_hit@1"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------- versions


def test_knowledge_only_build_and_search(kb_settings, tmp_path):
    registry = ModelRegistry(kb_settings.paths.registry)
    events = []
    result = train_knowledge_base(kb_settings, write_corpus(tmp_path / "docs"), registry, listener=events.append)
    info = result.version
    assert info.name == "v0001" and result.chunks == result.embedded_chunks == 7 and not result.incremental
    meta = info.metadata
    assert meta["components"] == ["knowledge"] and meta["parent"] is None
    assert meta["knowledge"]["documents"] == 4 and meta["knowledge"]["embedded_chunks"] == 7
    assert registry.verify(info.name) == [] and {e.kind for e in events} >= {"status", "begin", "end"}
    matrix = np.load(info.path / "knowledge" / "embeddings.npy", allow_pickle=False)
    assert matrix.dtype == np.float32 and matrix.shape[0] == 7 and np.allclose(np.linalg.norm(matrix, axis=1), 1)
    index = json.loads((info.path / "knowledge" / "index.json").read_text("utf-8"))
    assert index["embedding_model"]["spec"] == str(kb_settings.training.base_model)
    assert index["documents"]["mascotas.md"]["chunk_ids"] == ["mascotas.md#000", "mascotas.md#001"]

    kb = KnowledgeBase.from_registry(registry)
    for chunk in kb.chunk_list:  # a query equal to a chunk's passage finds that chunk first
        (top, *_), = kb.search_many([chunk.passage()], top_k=3)
        assert top.chunk.id == chunk.id and top.score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(DataError, match="empty search query"):
        kb.search("  ")


def test_new_version_carries_over_the_classifier(registry_copy, kb_settings, tmp_path):
    source = registry_copy.get("v0002")  # newest; nothing deployed
    result = train_knowledge_base(kb_settings, write_corpus(tmp_path / "docs"), registry_copy)
    info = result.version
    assert info.name == "v0003" and result.source == "v0002"
    assert info.metadata["components"] == ["classifier", "knowledge"] and info.metadata["parent"] == "v0002"
    assert info.metadata["labels"] == source.metadata["labels"]
    carried = {k: v for k, v in info.metadata["files"].items() if not k.startswith("knowledge/")}
    assert carried == source.metadata["files"]  # every other file, byte for byte
    assert registry_copy.verify("v0003") == []

    older = train_knowledge_base(kb_settings, tmp_path / "docs", registry_copy, source="v0001").version
    assert older.metadata["parent"] == "v0001" and older.metadata["files"]["metrics.json"] == (
        registry_copy.get("v0001").metadata["files"]["metrics.json"])

    # The other direction: the shared helper every other builder uses carries knowledge/ and its metadata.
    from hotelbot_cli.components.compose import carry_over

    with registry_copy.staging() as staged:
        merged = carry_over(registry_copy, staged, "classifier")
        assert merged["components"] == ["knowledge", "classifier"] and merged["knowledge"]["carried_from"] == "v0004"
        assert sorted(p.name for p in (staged / "knowledge").iterdir()) == sorted(
            p.name for p in (older.path / "knowledge").iterdir())
        shutil.rmtree(staged)


def test_a_corrupt_source_is_never_carried_over_or_reused(registry_copy, kb_settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    good = train_knowledge_base(kb_settings, docs, registry_copy).version  # v0003
    matrix = good.path / "knowledge" / "embeddings.npy"
    matrix.write_bytes(matrix.read_bytes()[:-8] + b"\0" * 8)  # a corrupt index is rebuilt, never reused
    rebuilt = train_knowledge_base(kb_settings, docs, registry_copy, incremental=True)
    assert not rebuilt.incremental and rebuilt.embedded_chunks == 7 and registry_copy.verify(rebuilt.version.name) == []

    (registry_copy.get("v0002").path / "metrics.json").write_text("{}")  # a corrupt classifier is never copied
    with pytest.raises(IntegrityError, match="metrics.json"):
        train_knowledge_base(kb_settings, docs, registry_copy, source="v0002")
    assert [v.name for v in registry_copy.list_versions()] == ["v0001", "v0002", "v0003", "v0004"]


def test_incremental_build_equals_a_full_rebuild(kb_settings, tmp_path):
    registry = ModelRegistry(kb_settings.paths.registry)
    docs = write_corpus(tmp_path / "docs")
    first = train_knowledge_base(kb_settings, docs, registry).version
    (docs / "spa.md").write_text(CORPUS["spa.md"].replace("65 €", "70 €"), "utf-8")  # changed
    (docs / "parking.md").unlink()                                                     # removed
    (docs / "gimnasio.md").write_text("# Gimnasio\n\n## Horario\n\nAbierto 24 horas.\n", "utf-8")  # added

    inc = train_knowledge_base(kb_settings, docs, registry, incremental=True)
    assert inc.incremental and inc.source == first.name
    assert inc.embedded_chunks == 3 and inc.reused_chunks == 4  # spa (2) + gimnasio (1) embedded
    assert inc.changes == {"added": ["gimnasio.md"], "changed": ["spa.md"], "removed": ["parking.md"]}
    full = train_knowledge_base(kb_settings, docs, registry, incremental=False)
    assert full.embedded_chunks == 7 and not full.incremental

    a, b = KnowledgeBase.from_version(inc.version), KnowledgeBase.from_version(full.version)
    assert [c.to_dict() for c in a.chunk_list] == [c.to_dict() for c in b.chunk_list]
    assert a.index.ids == b.index.ids and not any(i.startswith("parking.md") for i in a.index.ids)
    assert np.allclose(a.index.matrix, b.index.matrix, atol=1e-5)
    old = KnowledgeBase.from_version(first)
    kept = [i for i in old.index.ids if i.startswith(("mascotas.md", "wifi.txt"))]
    assert np.array_equal(a.index.vectors(kept), old.index.vectors(kept))  # reused, not recomputed
    manifest = lambda info: json.loads((info.path / "knowledge" / "index.json").read_text("utf-8"))  # noqa: E731
    assert manifest(inc.version)["documents"] == manifest(full.version)["documents"]

    empty = ModelRegistry(tmp_path / "empty-registry")
    fresh = train_knowledge_base(kb_settings, docs, empty, incremental=True)  # nothing to reuse: full build
    assert not fresh.incremental and fresh.embedded_chunks == 7


def test_rollback_restores_the_previous_knowledge_base(registry_copy, kb_settings, tmp_path):
    from hotelbot_cli.pipeline.deploy import deploy, rollback

    docs = write_corpus(tmp_path / "docs")
    v_a = train_knowledge_base(kb_settings, docs, registry_copy).version
    deploy(registry_copy, kb_settings, v_a.name)
    query = passage_of(v_a, "mascotas.md", "Perros y gatos")
    (docs / "mascotas.md").write_text(CORPUS["mascotas.md"].replace("20 €", "35 €"), "utf-8")
    v_b = train_knowledge_base(kb_settings, docs, registry_copy, incremental=True)
    assert v_b.source == v_a.name and v_b.embedded_chunks == 2
    deploy(registry_copy, kb_settings, v_b.version.name)

    top = KnowledgeBase.from_registry(registry_copy).search(query, top_k=1)[0]
    assert top.chunk.doc == "mascotas.md" and "35 €" in top.chunk.text
    rollback(registry_copy, kb_settings)
    kb = KnowledgeBase.from_registry(registry_copy)
    assert kb.version == v_a.name
    top = kb.search(query, top_k=1)[0]
    assert "20 €" in top.chunk.text and "35 €" not in top.chunk.text


def test_search_cli_and_retrieval_metrics(registry_copy, kb_settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    info = train_knowledge_base(kb_settings, docs, registry_copy).version
    query = passage_of(info, "spa.md", "Masajes")
    result = runner.invoke(search_app, ["search", query, "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model_version"] == info.name and len(doc["results"]) == 2
    best = doc["results"][0]
    assert (best["doc"], best["heading"], best["rank"]) == ("spa.md", "Masajes", 1)
    assert CORPUS["spa.md"][best["start"]:best["end"]] == "El masaje relajante de 50 minutos cuesta 65 €."

    result = runner.invoke(search_app, ["search", "hola", "--version", "v0001"])  # classifier only
    assert result.exit_code == 1 and "has no knowledge base" in result.stderr

    eval_path = tmp_path / "eval.jsonl"
    kb = KnowledgeBase.from_version(info)
    rows = [{"question": c.passage(), "doc": c.doc, "section": c.heading} for c in kb.chunk_list]
    rows.append({"question": "¿hay karaoke?", "doc": "ocio.md", "section": "Karaoke"})
    eval_path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), "utf-8")
    report = evaluate_retrieval(info, eval_path, k=5)
    assert report["questions"] == 8 and report["unknown_targets"] == ["ocio.md / Karaoke"]
    assert report["dense"]["hit@1"] == pytest.approx(7 / 8) and report["dense"]["mrr"] == pytest.approx(7 / 8)
    assert set(report["bm25"]) == set(report["dense"]) and report["bm25"]["doc_hit@5"] <= 7 / 8
    assert [m["expected"] for m in report["misses"]] == ["ocio.md / Karaoke"]
    with pytest.raises(RegistryError, match="no knowledge base"):
        evaluate_retrieval(registry_copy.get("v0001"), eval_path)


def test_train_cli_builds_and_updates_the_knowledge_base(kb_settings, tmp_path):
    docs = write_corpus(tmp_path / "docs")
    assert runner.invoke(app, ["prepare", "--documents", str(docs)]).exit_code == 0
    result = runner.invoke(app, ["train", "--model-type", "embeddings", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["version"], doc["chunks"], doc["embedded_chunks"], doc["source"]) == ("v0001", 7, 7, None)
    result = runner.invoke(app, ["train", "--model-type", "embeddings", "--incremental", "--json"])
    doc = json.loads(result.stdout)
    assert (doc["version"], doc["incremental"], doc["embedded_chunks"], doc["source"]) == ("v0002", True, 0, "v0001")
    result = runner.invoke(app, ["search", "admitimos perros y gatos", "--top-k", "1", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["model_version"] == "v0002"


def test_knowledge_only_deploy_then_a_classifier_keeps_the_knowledge_base(kb_settings, tmp_path, fast_train_env,
                                                                          tiny_data, monkeypatch):
    from hotelbot_cli.data import prepare_dataset
    from hotelbot_cli.pipeline.deploy import deploy, rollback
    from hotelbot_cli.components.intents.train import train_classifier

    registry = ModelRegistry(kb_settings.paths.registry)
    docs = write_corpus(tmp_path / "docs")
    v1 = train_knowledge_base(kb_settings, docs, registry).version
    result = deploy(registry, kb_settings, v1.name)  # no classifier: no metric gate; the smoke test searches
    assert result.gate["skipped"] == "no classifier component" and result.smoke["knowledge"]["chunks"] == 7

    monkeypatch.setenv("TRAINING_EPOCHS", "1")  # the classifier's quality does not matter here (gate 0)
    settings = load_settings()
    prepare_dataset(tiny_data, settings.paths.data, settings.data)
    v2 = train_classifier(settings, settings.paths.data, registry, force=True).version
    assert sorted(v2.metadata["components"]) == ["classifier", "knowledge"]
    assert v2.metadata["knowledge"]["carried_from"] == "v0001"
    assert registry.verify(v2.name) == []
    deploy(registry, settings, v2.name)
    assert KnowledgeBase.from_registry(registry).version == v2.name
    rollback(registry, settings)
    assert registry.current_name() == v1.name


# ---------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_e5_finds_the_right_shipped_document(isolated_env, model_cache, tmp_path):
    """The real default model, with its "query: "/"passage: " prefixes, on five shipped documents (the full
    set and the question file are measured by benchmarks/retrieval.py)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("mascotas.md", "wifi-y-tecnologia.txt", "spa-mar-de-luz.md", "parking-y-traslados.md",
                 "restaurante-la-lonja.md"):
        shutil.copy(SHIPPED_DOCS / name, docs / name)
    settings = load_settings()  # default base model: packaged:multilingual-e5-small
    registry = ModelRegistry(settings.paths.registry)
    info = train_knowledge_base(settings, docs, registry).version
    model = json.loads((info.path / "knowledge" / "index.json").read_text("utf-8"))["embedding_model"]
    assert (model["query_prefix"], model["passage_prefix"], model["dim"]) == ("query: ", "passage: ", 384)
    kb = KnowledgeBase.from_registry(registry, models_dir=settings.paths.models_dir)
    hits = kb.search_many(["¿aceptan perros?", "¿cuál es la clave del wifi?", "¿a qué hora es el desayuno?",
                           "cuanto cuesta aparcar el coche"], top_k=1)
    assert [h[0].chunk.doc for h in hits] == ["mascotas.md", "wifi-y-tecnologia.txt", "restaurante-la-lonja.md",
                                              "parking-y-traslados.md"]


def test_queries_run_on_the_cached_onnx_encoder_without_torch(kb_settings, tmp_path, monkeypatch):
    """The build exports the base encoder to ONNX once into the model cache; search embeds queries with it
    (same vectors as torch), in a process that never imports torch or transformers."""
    import os
    import subprocess
    import sys

    from hotelbot_cli.runtime.encoder import ENCODER_FILE, OnnxSentenceEncoder, encoder_cache_dir

    registry = ModelRegistry(kb_settings.paths.registry)
    info = train_knowledge_base(kb_settings, write_corpus(tmp_path / "docs"), registry).version
    kb = KnowledgeBase.from_version(info, kb_settings.paths.models_dir)
    cache = encoder_cache_dir(kb_settings.paths.models_dir, Path(kb.model.location).name, kb.model.fingerprint)
    record = json.loads((cache / ENCODER_FILE).read_text("utf-8"))
    assert record["fingerprint"] == kb.model.fingerprint and record["max_abs_diff_vs_torch"] <= 1e-4
    chosen = json.loads((info.path / "knowledge" / "index.json").read_text("utf-8"))["query_encoder"]
    assert chosen["runtime"] in ("onnx-fp32", "onnx-int8") and chosen["cache"] == cache.name
    assert set(chosen["runtimes"]) == {"onnx-fp32", "onnx-int8"} and chosen["runtimes"]["onnx-int8"]["usable"]
    assert isinstance(kb.query_encoder, OnnxSentenceEncoder) and kb.query_encoder.runtime == chosen["runtime"]
    if chosen["runtime"] == "onnx-int8":  # chosen only when it agrees with fp32's first hit (no questions here)
        assert chosen["runtimes"]["onnx-int8"]["agreement_at_1_with_fp32"] >= 1 - chosen["tolerance_points"] / 100
    queries = [c.passage() for c in kb.chunk_list] + ["¿aceptan perros?"]
    fp32 = OnnxSentenceEncoder.load(cache, kb.model.fingerprint, "onnx-fp32")
    torch_vectors = kb.embedder.embed(queries, kind="query")
    assert np.abs(fp32.embed(queries, kind="query") - torch_vectors).max() < 1e-4
    monkeypatch.setenv("HOTELBOT_RUNTIME", "torch")
    torch_kb = KnowledgeBase.from_version(info, kb_settings.paths.models_dir)
    assert torch_kb.query_encoder is torch_kb.embedder  # the override stays on torch
    monkeypatch.setenv("HOTELBOT_RUNTIME", "onnx-fp32")
    fp32_kb = KnowledgeBase.from_version(info, kb_settings.paths.models_dir)
    assert fp32_kb.query_encoder.runtime == "onnx-fp32"
    assert [h.chunk.id for h in fp32_kb.search("piscina", 3)] == [h.chunk.id for h in torch_kb.search("piscina", 3)]
    monkeypatch.delenv("HOTELBOT_RUNTIME")
    shared = KnowledgeBase.from_version(info, kb_settings.paths.models_dir)
    shared.shares_encoder = True  # a generator reads the fp32 states: the queries use the same session
    assert shared.query_encoder.runtime == "onnx-fp32"
    code = ("import sys, json\nfrom typer.testing import CliRunner\nfrom hotelbot_cli.cli.app import app\n"
            "r = CliRunner().invoke(app, ['search', 'piscina', '--json'])\nassert r.exit_code == 0, r.output\n"
            "print(json.dumps({'top': json.loads(r.stdout)['results'][0]['id'], "
            "'heavy': [m for m in ('torch', 'transformers') if m in sys.modules]}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         cwd=os.getcwd(), timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [] and result["top"] == torch_kb.search("piscina", 1)[0].chunk.id
