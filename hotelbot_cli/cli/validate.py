"""hotelbot validate"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ._errors import handle_errors
from ._options import ConfigOpt, JsonOpt, ProfileOpt, RegistryOpt, settings_from
from ._render import log_to, message, out, print_json, warn


@handle_errors
def validate_cmd(
    version: Annotated[Optional[str], typer.Argument(help="Version to validate (v0003, latest, current) "
                                                     "[env: MODEL_VERSION; default: deployed, else newest].",
                                                     show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Prepared data directory to validate on "
                                                 "[default: the version's own validation split].",
                                                 show_default=False)] = None,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Gate: fail (exit 3) below this "
                                                       "overall_score [env: MIN_VALIDATION_SCORE; default 0.8].",
                                                       show_default=False)] = None,
    cv: Annotated[Optional[int], typer.Option("--cv", min=2, help="Stratified K-fold cross-validation with the "
                                              "version's config over its data (trains K models).",
                                              show_default=False)] = None,
    kb_eval: Annotated[Optional[Path], typer.Option("--kb-eval", help="Retrieval questions (JSONL: question, doc, "
                                                    "section) for a version with a knowledge base "
                                                    "[default: datasets/kb_eval_es.jsonl when present].",
                                                    show_default=False)] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a version: accuracy, macro and per-intent precision/recall/F1, confusion matrix.

    Compares with the deployed version when there is one. Exits 3 when overall_score (macro-F1 unless
    configured) is below MIN_VALIDATION_SCORE.

    Examples:

        hotelbot validate

        hotelbot validate v0002 --min-score 0.9 --json

        hotelbot validate --cv 5 --json

        hotelbot validate --kb-eval my_questions.jsonl --json
    """
    from ..evaluation import top_confusions, validate_version
    from ..registry import ModelRegistry

    settings = settings_from(config, profile, registry,
                             overrides={"validation_config": {"min_validation_score": min_score}})
    if cv is not None:
        _cross_validate(settings, version, cv, json_out)
        return
    store = ModelRegistry(settings.paths.registry)
    info = store.require_intact(store.resolve(version or settings.model_version).name)
    from ..components import components_of

    components = components_of(info)
    retrieval = _retrieval(info, kb_eval, settings) if "knowledge" in components else None
    generation = _generation(info, settings) if "generator" in components else None
    if not {"classifier", "entities", "sentiment"} & set(components):  # knowledge base / generator only
        from ..registry.store import utc_now

        store.record_validation(info.name, {"version": info.name, "passed": True, "retrieval": retrieval,
                                            "generator": generation, "validated_at": utc_now()})
        if json_out:
            print_json({"version": info.name, "retrieval": retrieval, "generator": generation})
        elif retrieval:
            _render_retrieval(retrieval)
        return
    with log_to(settings.paths.logs / "validation.log"):
        result = validate_version(store, info.name, settings, data)
        import logging

        logging.getLogger("hotelbot.validation").info(
            "%s %s=%.4f min=%.2f passed=%s%s", result.version, result.to_dict()["metric"], result.overall_score,
            result.min_score, result.passed,
            "".join(f" {k}={v['overall_score']:.4f}" for k, v in result.components.items()))
    if json_out:
        print_json({**result.to_dict(), "retrieval": retrieval, "generator": generation})
    else:
        if result.metrics:
            _render(result, top_confusions(result.metrics))
        _render_components(result)
        if retrieval:
            _render_retrieval(retrieval)
    if not result.passed:
        message("gate failed: " + "; ".join(result.failures))
        raise typer.Exit(3)


def _render_components(result) -> None:
    from rich.table import Table

    for name, m in result.components.items():
        ok = "PASS" if m["overall_score"] >= result.min_score else "FAIL"
        if name == "entities":
            out.print(f"[bold]entities[/bold] on {m['num_sentences']} sentences ({m['data_source']}): micro P/R/F1 "
                      f"{m['micro_precision']:.4f}/{m['micro_recall']:.4f}/{m['micro_f1']:.4f}  macro-F1 "
                      f"{m['macro_f1']:.4f}  gate {result.min_score:.2f}: {ok}")
            table = Table("entity type", "precision", "recall", "F1", "support", title="per entity type (exact match)")
            for label, s in m["per_type"].items():
                table.add_row(label, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", str(s["support"]))
            out.print(table)
        else:
            out.print(f"[bold]{name}[/bold] on {m['num_examples']} texts ({m['data_source']}): accuracy "
                      f"{m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  overall_score ({m['metric']}) "
                      f"{m['overall_score']:.4f}  gate {result.min_score:.2f}: {ok}  per label: "
                      + ", ".join(f"{k} {v['f1']:.3f}" for k, v in m["per_intent"].items()))


def _render(result, confusions) -> None:
    from rich.table import Table

    m = result.metrics
    out.print(f"[bold]{result.version}[/bold] on {m['num_examples']} texts ({result.data_source})")
    out.print(f"accuracy {m['accuracy']:.4f}  macro P/R/F1 {m['macro_precision']:.4f}/{m['macro_recall']:.4f}/"
              f"{m['macro_f1']:.4f}  overall_score ({m['metric']}) {result.overall_score:.4f}  "
              f"gate {result.min_score:.2f}: {'PASS' if result.passed else 'FAIL'}")
    if m.get("in_scope_accuracy") is not None:
        out.print(f"in-scope accuracy {m['in_scope_accuracy']:.4f}  out-of-scope recall "
                  f"{m.get('out_of_scope_recall') or 0:.4f}")
    table = Table("intent", "precision", "recall", "F1", "support", title="per intent (worst F1 first)")
    for label, s in sorted(m["per_intent"].items(), key=lambda kv: (kv[1]["f1"], kv[0])):
        table.add_row(label, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", str(s["support"]))
    out.print(table)
    if confusions:
        out.print("most frequent confusions: " + "; ".join(f"{t} -> {p} ({n})" for t, p, n in confusions))
    if result.comparison:
        d = result.comparison.deltas
        out.print(f"vs deployed {result.comparison.reference_version}: "
                  + ", ".join(f"{k} {v:+.4f}" for k, v in d.items()))


def _cross_validate(settings, version, folds: int, json_out: bool) -> None:
    from ..evaluation import cross_validate
    from ..registry import ModelRegistry
    from .train import RichProgress

    with log_to(settings.paths.logs / "validation.log"), RichProgress() as progress:
        result = cross_validate(ModelRegistry(settings.paths.registry), version, settings, folds, progress)
    if json_out:
        print_json(result)
        return
    out.print(f"[bold]{result['version']}[/bold]: {folds}-fold stratified cross-validation on "
              f"{result['examples']} texts (mean ± std over folds)")
    for key, stats in result["summary"].items():
        out.print(f"  {key:<22} {stats['mean']:.4f} ± {stats['std']:.4f}   (min {stats['min']:.4f}, max {stats['max']:.4f})")


DEFAULT_KB_EVAL = Path("datasets/kb_eval_es.jsonl")


def _retrieval(info, kb_eval: Path | None, settings) -> dict | None:
    """Retrieval metrics of the version's knowledge base (dense vs BM25), or None without questions."""
    if kb_eval is None and not DEFAULT_KB_EVAL.exists():
        warn(f"{info.name} has a knowledge base but no retrieval questions ({DEFAULT_KB_EVAL}); pass --kb-eval")
        return None
    from ..knowledge import evaluate_retrieval

    return evaluate_retrieval(info, kb_eval or DEFAULT_KB_EVAL, k=5, models_dir=settings.paths.models_dir)


def _render_retrieval(r: dict) -> None:
    k = r["k"]
    out.print(f"[bold]{r['version']}[/bold] knowledge base: {r['questions']} questions ({r['eval_path']}), "
              f"{r['chunks']} chunks")
    for name, key in ((f"dense ({r['embedding_model']})", "dense"), ("BM25 baseline", "bm25")):
        m = r[key]
        out.print(f"  {name:<48} hit@1 {m['hit@1']:.3f}  hit@{k} {m[f'hit@{k}']:.3f}  MRR {m['mrr']:.3f}   "
                  f"document: hit@1 {m['doc_hit@1']:.3f}  hit@{k} {m[f'doc_hit@{k}']:.3f}  MRR {m['doc_mrr']:.3f}")
    if r["unknown_targets"]:
        warn(f"questions naming a section that is not in the index: {', '.join(r['unknown_targets'][:5])}")


def _generation(info, settings) -> dict:
    """BLEU, ROUGE-L, perplexity and relevance of the version's generator beside the retrieval-only baseline
    (re-generates the validation replies; reported, not gated)."""
    from ..generation import evaluate_version

    result = evaluate_version(info, models_dir=settings.paths.models_dir)
    g, b = result["generator"], result["retrieval_baseline"]
    message(f"generator: BLEU {g['bleu']:.2f} ROUGE-L {g['rouge_l']:.4f} perplexity {g['perplexity']:.2f} "
            f"relevance {g['relevance']:.4f} (retrieval-only: BLEU {b['bleu']:.2f} ROUGE-L {b['rouge_l']:.4f} "
            f"relevance {b['relevance']:.4f})")
    return result
