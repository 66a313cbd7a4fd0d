"""hotelbot deploy / rollback / verify / history"""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ..registry import ModelRegistry
from ._errors import handle_errors
from ._options import ConfigOpt, JsonOpt, ProfileOpt, RegistryOpt, settings_from
from ._render import message, out, print_json, warn

ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in history.jsonl and notifications).")]


def _report(result, json_out: bool) -> None:
    if json_out:
        print_json(result.to_dict())
        return
    for note in result.repaired:
        message(f"repaired after an interrupted operation: {note}")
    for note in result.notifications:
        warn(
            f"{note} (the {result.action} stands)"
            if note.startswith("MLflow")
            else f"notification failed (the {result.action} stands): {note}"
        )
    if not result.changed:
        out.print(f"{result.version} is already deployed; nothing to do")
        return
    if result.action.startswith("canary"):
        _report_canary(result)
        return
    extra = ""
    if result.gate:
        extra = f" ({result.gate['metric']} {result.gate['overall_score']:.4f})"
    if result.restored_from_backup:
        extra += " (restored from backup)"
    out.print(f"{result.action}: {result.previous or '(none)'} -> {result.version}{extra}")
    if result.backup and result.backup.get("skipped"):
        warn(f"no backup of {result.backup['version']}: {result.backup['skipped']}")
    elif result.backup:
        message(
            f"backed up {result.backup['version']}: backup/{result.backup['record']} pins its files "
            "(stored once in the registry)"
        )


def _report_canary(result) -> None:
    if result.action == "canary_start":
        score = (
            f" ({result.gate['metric']} {result.gate['overall_score']:.4f})"
            if result.gate and result.gate.get("overall_score") is not None
            else ""
        )
        out.print(
            f"canary: {result.version}{score} answers {result.canary['weight']}% of conversations beside "
            f"{result.previous}; `hotelbot canary status` shows it, `promote` or `abort` ends it"
        )
    elif result.action == "canary_promote":
        out.print(f"canary promoted: {result.previous} -> {result.version} (all conversations)")
    else:
        out.print(
            f"canary aborted: {result.previous} stopped after answering {result.canary['weight']}% of "
            f"conversations since {result.canary.get('started_at')}; all conversations on {result.version}"
        )


@handle_errors
def deploy_cmd(
    version: Annotated[
        Optional[str],
        typer.Argument(
            help="Version to deploy: v0003, latest, previous [default: newest validated].", show_default=False
        ),
    ] = None,
    reason: ReasonOpt = "",
    min_score: Annotated[
        Optional[float],
        typer.Option(
            "--min-score", help="Gate threshold [env: MIN_VALIDATION_SCORE; default 0.8].", show_default=False
        ),
    ] = None,
    tolerance: Annotated[
        Optional[float],
        typer.Option(
            "--tolerance",
            help="Largest allowed per-intent F1 drop "
            "vs the deployed model [env: HOTELBOT_REGRESSION_TOLERANCE; "
            "default 0.05].",
            show_default=False,
        ),
    ] = None,
    canary: Annotated[
        Optional[int],
        typer.Option(
            "--canary",
            metavar="PERCENT",
            help="Gradual deploy: after the "
            "same gate and smoke test, the version answers PERCENT (1-99) of conversations beside the "
            "deployed one until `hotelbot canary promote` or `abort` (or `rollback`).",
            show_default=False,
        ),
    ] = None,
    auto_promote: Annotated[
        Optional[int],
        typer.Option(
            "--auto-promote",
            metavar="N",
            min=1,
            help="With --canary: "
            "`serve` promotes the canary by itself after N of its answers without a worse figure "
            "than the stable version's (it aborts a worse one either way, with "
            "ENABLE_AUTO_ROLLBACK).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Gate a version, back up the current one, switch, and verify the new one predicts.

    Gate: overall_score >= MIN_VALIDATION_SCORE and no intent's F1 drops more than the tolerance
    against the deployed model on the same texts. Gate failure: nothing changes, exit 3. If the
    switched model fails its smoke test and ENABLE_AUTO_ROLLBACK is true, the previous one is
    restored and the exit code is 4.

    Examples:

        hotelbot deploy

        hotelbot deploy v0004 --reason "more late_checkout examples" --json

        hotelbot deploy v0005 --canary 10 --reason "Friday: new spa intents"   # 10% of conversations

        hotelbot deploy v0005 --canary 10 --auto-promote 2000   # serve promotes it after 2000 healthy answers
    """
    from ..pipeline.deploy import deploy, newest_validated  # loads the component table: kept off --help's path

    if auto_promote is not None and canary is None:
        raise typer.BadParameter("--auto-promote goes with --canary PERCENT")
    if canary is not None:
        from ..pipeline.canary import check_weight  # (the same)

        check_weight(canary)  # a bad percent: one line, before anything is read
    settings = settings_from(
        config,
        profile,
        registry,
        overrides={
            "validation_config": {"min_validation_score": min_score},
            "deployment_config": {"regression_tolerance": tolerance},
        },
    )
    store = ModelRegistry(settings.paths.registry)
    if canary is None:
        _report(deploy(store, settings, version, reason), json_out)
        return
    from ..pipeline.canary import start_canary  # (the same)

    _report(
        start_canary(store, settings, version or newest_validated(store).name, canary, reason, auto_promote or 0),
        json_out,
    )


@handle_errors
def rollback_cmd(
    to: Annotated[
        Optional[str],
        typer.Option("--to", help="Version to restore [default: the previously deployed one].", show_default=False),
    ] = None,
    reason: ReasonOpt = "",
    config: ConfigOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Restore the previously deployed version (or --to VERSION) after checking checksums and loading it.

    A corrupt or missing version is rebuilt from its backup when one exists. Exit 1 when there is
    nothing to roll back to.

    Examples:

        hotelbot rollback --reason "guests report wrong answers about breakfast"

        hotelbot rollback --to v0002 --json
    """
    from ..pipeline.deploy import rollback  # loads the component table: kept off `hotelbot --help`'s path

    settings = settings_from(config, None, registry)
    _report(rollback(ModelRegistry(settings.paths.registry), settings, to, reason), json_out)


@handle_errors
def verify_cmd(registry: RegistryOpt = None, json_out: JsonOpt = False) -> None:
    """Recompute every checksum of every version and backup; exit 1 if anything is corrupt or missing.

    Examples:

        hotelbot verify

        hotelbot verify --json
    """
    from ..pipeline.deploy import verify_registry  # loads the component table: kept off `hotelbot --help`'s path

    settings = settings_from(registry=registry)
    report = verify_registry(ModelRegistry(settings.paths.registry))
    problems = [p for items in report.values() for p in items]
    if json_out:
        print_json({"ok": not problems, "checked": sorted(report), "problems": problems})
    else:
        for name in sorted(report):
            out.print(f"{name}: " + ("ok" if not report[name] else f"{len(report[name])} problem(s)"))
        for p in problems:
            out.print(f"  {p}")
    if problems:
        message(f"{len(problems)} problem(s) found")
        raise typer.Exit(1)


@handle_errors
def history_cmd(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Show the last N events.")] = 20,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the audit log of deploys, rollbacks and failed gates (registry/history.jsonl).

    Examples:

        hotelbot history -n 5

        hotelbot history --json
    """
    from ..pipeline.deploy import history  # loads the component table: kept off `hotelbot --help`'s path

    settings = settings_from(registry=registry)
    events = history(ModelRegistry(settings.paths.registry), limit)
    if json_out:
        print_json({"events": events})
        return
    if not events:
        out.print("no deploys, rollbacks or failed gates yet")
    for e in events:
        out.print(
            f"{e.get('at')}  {e.get('event'):<17} {e.get('from') or '-'} -> {e.get('to') or '-'}  "
            f"by {e.get('user')}" + (f"  ({e['reason']})" if e.get("reason") else "")
        )


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


canary_app = typer.Typer(
    help="A gradual deploy's canary: status, promote, abort (start one with "
    "`hotelbot deploy VERSION --canary PERCENT`).",
    no_args_is_help=True,
)


@canary_app.command("status")
@handle_errors
def canary_status_cmd(registry: RegistryOpt = None, json_out: JsonOpt = False) -> None:
    """Show the deployed (stable) version and the running canary: its version, share and start time.

    Examples:

        hotelbot canary status

        hotelbot canary status --json
    """
    from ..pipeline.canary import canary_status  # loads the component table: kept off `hotelbot --help`'s path

    settings = settings_from(registry=registry)
    status = canary_status(ModelRegistry(settings.paths.registry))
    if json_out:
        print_json(status)
        return
    running = status["canary"]
    out.print(f"stable: {status['stable'] or '(nothing deployed)'}")
    if running is None:
        out.print("canary: none running (start one: hotelbot deploy VERSION --canary 10)")
        last = status.get("last_judgement")
        if last:
            out.print(
                f"last verdict ({last.get('at')}, canary {last.get('canary')}): {last['decision']}"
                + (f", acted: {last['acted']}" if last.get("acted") else "")
                + ": "
                + "; ".join(last.get("reasons") or [])
            )
    else:
        out.print(
            f"canary: {running['version']} answers {running['weight']}% of conversations since "
            f"{running.get('started_at')}"
            + (f" ({running['reason']})" if running.get("reason") else "")
            + (f"; auto-promote after {running['auto_promote']} healthy answers" if running.get("auto_promote") else "")
        )
        judgement = status.get("judgement")
        if judgement is None:
            out.print("judgement: none yet (`hotelbot serve` judges the canary once it serves it)")
        else:
            figures = judgement.get("figures") or {}
            out.print(f"judgement ({judgement.get('at')}): {judgement['decision']}: " + "; ".join(judgement["reasons"]))
            for side in ("canary", "stable"):
                f = figures.get(side) or {}
                out.print(
                    f"  {side}: {f.get('answers')} answers, fallback rate {_num(f.get('fallback_rate'))}, "
                    f"error rate {_num(f.get('error_rate'))}, mean confidence {_num(f.get('mean_confidence'))}, "
                    f"p95 latency {_num(f.get('p95_latency_s'))} s"
                )


@canary_app.command("promote")
@handle_errors
def canary_promote_cmd(
    reason: ReasonOpt = "", config: ConfigOpt = None, registry: RegistryOpt = None, json_out: JsonOpt = False
) -> None:
    """Make the canary the deployed version for every conversation (the stable one is backed up and stays
    the one `hotelbot rollback` returns to). Exit 1 when no canary runs.

    Examples:

        hotelbot canary promote --reason "24 h without a worse figure"
    """
    from ..pipeline.canary import promote_canary  # (the same)

    settings = settings_from(config, None, registry)
    _report(promote_canary(ModelRegistry(settings.paths.registry), settings, reason), json_out)


@canary_app.command("abort")
@handle_errors
def canary_abort_cmd(
    reason: ReasonOpt = "", config: ConfigOpt = None, registry: RegistryOpt = None, json_out: JsonOpt = False
) -> None:
    """Stop the canary: every conversation goes back to the deployed version (the canary's version stays in
    the registry). `hotelbot rollback` during a canary does the same. Exit 1 when no canary runs.

    Examples:

        hotelbot canary abort --reason "guests get out_of_scope for spa questions"
    """
    from ..pipeline.canary import abort_canary  # (the same)

    settings = settings_from(config, None, registry)
    _report(abort_canary(ModelRegistry(settings.paths.registry), settings, reason), json_out)
