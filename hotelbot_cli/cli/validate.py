"""hotelbot validate"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from typing_extensions import Annotated

from ..config import ValidationConfig
from ..evaluation import top_confusions
from ..registry import ModelRegistry
from .train import RichProgress
from ._errors import error_line, handle_errors
from ._options import ConfigOpt, JsonOpt, ProfileOpt, RegistryOpt, settings_from
from ._render import log_to, message, out, print_json, warn


@handle_errors
def validate_cmd(
    version: Annotated[
        Optional[str],
        typer.Argument(
            help="Version to validate (v0003, latest, deployed, previous) "
            "[env: MODEL_VERSION; default: deployed, else newest].",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help="Prepared data directory to validate on [default: the version's own validation split].",
            show_default=False,
        ),
    ] = None,
    min_score: Annotated[
        Optional[float],
        typer.Option(
            "--min-score",
            help="Gate: fail (exit 3) below this overall_score [env: MIN_VALIDATION_SCORE; default 0.8].",
            show_default=False,
        ),
    ] = None,
    cv: Annotated[
        Optional[int],
        typer.Option(
            "--cv",
            min=2,
            help="Stratified K-fold cross-validation with the version's config over its data (trains K models).",
            show_default=False,
        ),
    ] = None,
    kb_eval: Annotated[
        Optional[Path],
        typer.Option(
            "--kb-eval",
            help="Retrieval questions (JSONL: question, doc, "
            "section) for a version with a knowledge base "
            "[default: datasets/kb_eval_es.jsonl when present].",
            show_default=False,
        ),
    ] = None,
    test: Annotated[
        bool,
        typer.Option(
            "--test",
            help="Also score the intent classifier on the independent test "
            "set (the one its data was prepared with; never gated).",
        ),
    ] = False,
    test_set: Annotated[
        Optional[Path],
        typer.Option(
            "--test-set",
            help="With --test: this test set instead (JSONL/JSON/CSV of text, intent).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Score a version: accuracy, macro and per-intent precision/recall/F1, confusion matrix.

    With --test, also the independent test set (datasets/hotel_intents_es_test.jsonl, or the one
    `prepare` recorded): accuracy, in-scope accuracy, out-of-scope recall and every miss, under "test" in
    the JSON. It is reported, never gated: deciding by it would turn it into a second validation split.

    Compares with the deployed version when there is one. Exits 3 when overall_score (macro-F1 unless
    configured) is below MIN_VALIDATION_SCORE.

    Examples:

        hotelbot validate

        hotelbot validate v0002 --min-score 0.9 --json

        hotelbot validate --cv 5 --json

        hotelbot validate --kb-eval my_questions.jsonl --json

        hotelbot validate v0004 --test

        hotelbot validate --test --test-set my_test.jsonl --json
    """
    from ..pipeline.validate import validate  # loads the component table: kept off `hotelbot --help`'s path

    settings = settings_from(
        config, profile, registry, overrides={"validation_config": {"min_validation_score": min_score}}
    )
    if test_set is not None and not test:
        error_line("usage error: --test-set goes with --test (see `hotelbot validate --help`)")
        raise typer.Exit(2)
    if cv is not None:
        _cross_validate(settings, version, cv, json_out)
        return
    registry_ = ModelRegistry(settings.paths.registry)
    tested, checked = None, None
    if test:  # its own problems (no test set, unknown intents, a trained-on text) before anything is recorded
        from ..pipeline.validate import check_test_set  # (the same)

        checked = check_test_set(registry_, settings, version, test_set)
    with log_to(settings.paths.logs / "validation.log"):
        validation = validate(registry_, settings, version, data, {"kb_eval": kb_eval})
        if checked is not None:
            from ..pipeline.validate import evaluate_test_set  # (the same)

            tested = evaluate_test_set(registry_, settings, checked=checked)
    lines = {key: get_evaluator(key).evaluation_lines(doc) for key, doc in validation.evaluations.items() if doc}
    for shown in lines.values():
        for line in shown["warnings"]:
            warn(line)
        for line in shown["stderr"]:
            message(line)
    for line in validation.warnings:
        warn(line)
    result = validation.result
    if tested is not None:
        for note in tested["notes"]:
            warn(note)
    if json_out:
        print_json({**validation.to_dict(), **({"test": tested} if tested is not None else {})})
    else:
        if result is not None and result.metrics:
            _render(result, top_confusions(result.metrics))
        if result is not None:
            _render_components(result)
        for shown in lines.values():
            for line in shown["stdout"]:
                out.print(line)
        if tested is not None:
            _render_test(tested)
    if result is not None and not result.passed:
        message("gate failed: " + "; ".join(result.failures))
        raise typer.Exit(3)


def _render_test(m: dict[str, Any]) -> None:
    from ..pipeline.validate import MISSES_SHOWN  # (the same)

    out.print(
        f"[bold]test set[/bold] {m['test_set']}: {m['num_examples']} texts, accuracy {m['accuracy']:.4f}, "
        f"macro-F1 {m['macro_f1']:.4f}"
        + (
            f", in-scope accuracy {m['in_scope_accuracy']:.4f}, out-of-scope "
            f"recall {m.get('out_of_scope_recall') or 0:.4f}"
            if m.get("in_scope_accuracy") is not None
            else ""
        )
        + f" ({m['runtime']}, not gated)"
    )
    confusions = top_confusions(m)
    if confusions:
        out.print("most frequent confusions: " + "; ".join(f"{t} -> {p} ({n})" for t, p, n in confusions))
    for miss in m["misses"][:MISSES_SHOWN]:
        out.print(f"  miss: {miss['intent']} -> {miss['predicted']}: {miss['text']}", markup=False)
    if len(m["misses"]) > MISSES_SHOWN:
        out.print(f"  ... {len(m['misses']) - MISSES_SHOWN} more (--json lists every one)")


def get_evaluator(key: str) -> Any:
    """The registered component whose evaluate() reports under ``key``."""
    from ..components import registered  # loads the component table: kept off `hotelbot --help`'s path

    return next(c for c in registered() if c.evaluation_key == key)


def _render_components(result) -> None:
    """Each scored component as it describes itself: a line, and a table when it has one."""
    from rich.table import Table

    from ..components import get  # loads the component table: kept off `hotelbot --help`'s path

    limits = result.validation or ValidationConfig(min_validation_score=result.min_score)
    for name, m in result.components.items():
        component = get(name)
        gate = f"{component.gate_label(limits)}: {'FAIL' if component.gate_failures(m, limits) else 'PASS'}"
        view = component.score_view(m, gate)
        first, _, rest = view["line"].partition(" ")
        out.print(f"[bold]{first}[/bold] {rest}")
        if view["table"]:
            table = Table(*view["table"]["columns"], title=view["table"]["title"])
            for row in view["table"]["rows"]:
                table.add_row(*row)
            out.print(table)


def _render(result, confusions) -> None:
    from rich.table import Table

    m = result.metrics
    out.print(f"[bold]{result.version}[/bold] on {m['num_examples']} texts ({result.data_source})")
    out.print(
        f"accuracy {m['accuracy']:.4f}  macro P/R/F1 {m['macro_precision']:.4f}/{m['macro_recall']:.4f}/"
        f"{m['macro_f1']:.4f}  overall_score ({m['metric']}) {result.overall_score:.4f}  "
        f"gate {result.min_score:.2f}: {'PASS' if result.passed else 'FAIL'}"
    )
    if m.get("in_scope_accuracy") is not None:
        detector = m.get("out_of_scope_detector") or {}
        how = (
            f"kNN detector, k={detector.get('k')}, similarity threshold {detector['threshold']:.3f}"
            if detector.get("method") == "knn" and detector.get("threshold") is not None
            else f"softmax threshold {m['out_of_scope_threshold']:.3f}"
            if m.get("out_of_scope_threshold") is not None
            else "no out-of-scope threshold"
        )
        out.print(
            f"in-scope accuracy {m['in_scope_accuracy']:.4f}  out-of-scope recall "
            f"{m.get('out_of_scope_recall') or 0:.4f}  ({how})"
        )
    table = Table("intent", "precision", "recall", "F1", "support", title="per intent (worst F1 first)")
    for label, s in sorted(m["per_intent"].items(), key=lambda kv: (kv[1]["f1"], kv[0])):
        table.add_row(label, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", str(s["support"]))
    out.print(table)
    if confusions:
        out.print("most frequent confusions: " + "; ".join(f"{t} -> {p} ({n})" for t, p, n in confusions))
    if result.comparison:
        d = result.comparison.deltas
        out.print(
            f"vs deployed {result.comparison.reference_version}: " + ", ".join(f"{k} {v:+.4f}" for k, v in d.items())
        )


def _cross_validate(settings, version, folds: int, json_out: bool) -> None:
    from ..pipeline.validate import cross_validate  # loads the component table: kept off `hotelbot --help`'s path

    with log_to(settings.paths.logs / "validation.log"), RichProgress() as progress:
        result = cross_validate(ModelRegistry(settings.paths.registry), version, settings, folds, progress)
    if json_out:
        print_json(result)
        return
    out.print(
        f"[bold]{result['version']}[/bold]: {folds}-fold stratified cross-validation on "
        f"{result['examples']} texts (mean ± std over folds)"
    )
    for key, stats in result["summary"].items():
        out.print(
            f"  {key:<22} {stats['mean']:.4f} ± {stats['std']:.4f}   (min {stats['min']:.4f}, max {stats['max']:.4f})"
        )
    chosen = result["out_of_scope_detector"]["chosen"]
    out.print(
        f"  out-of-scope detector (oos_detector {result['out_of_scope_detector']['mode']}): "
        + ", ".join(f"{method} in {count} fold{'s' if count != 1 else ''}" for method, count in chosen.items() if count)
    )
