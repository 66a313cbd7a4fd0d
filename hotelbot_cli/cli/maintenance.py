"""hotelbot gc / prune / migrate: registry housekeeping (hotelbot_cli.registry.maintenance does the work)."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ..registry import ModelRegistry
from ._errors import handle_errors
from ._options import JsonOpt, RegistryOpt, settings_from
from ._render import megabytes, message, out, print_json, warn

DryRunOpt = Annotated[bool, typer.Option("--dry-run", "-n", help="Say what would change; change nothing.")]


@handle_errors
def gc_cmd(dry_run: DryRunOpt = False, registry: RegistryOpt = None, json_out: JsonOpt = False) -> None:
    """Delete stored files (blobs) that no version, backup or running build refers to.

    Safe while a train runs: gc waits for the registry lock, and files a build is carrying over are
    kept. Safe to interrupt: each blob is removed on its own.

    Examples:

        hotelbot gc --dry-run

        hotelbot gc --json | jq .removed_bytes
    """
    from ..registry.maintenance import collect_garbage  # hashing and walking: off `hotelbot --help`'s path

    settings = settings_from(registry=registry)
    result = collect_garbage(
        ModelRegistry(settings.paths.registry), dry_run=dry_run, timeout=settings.deployment.lock_timeout_seconds
    )
    if json_out:
        print_json(result.to_dict())
        return
    for note in result.repaired:
        message(f"repaired after an interrupted operation: {note}")
    verb = "would remove" if dry_run else "removed"
    out.print(
        f"{verb} {len(result.removed)} unreferenced blob(s), {megabytes(result.removed_bytes)}; "
        f"kept {result.kept} ({megabytes(result.kept_bytes)})"
    )
    if not dry_run:
        out.print(
            f"registry: {megabytes(result.registry_bytes_before)} -> {megabytes(result.registry_bytes_after)} on disk"
        )


@handle_errors
def prune_cmd(
    versions: Annotated[
        Optional[list[str]],
        typer.Argument(help="Versions to delete (v0003 v0004 ...).", show_default=False),
    ] = None,
    keep: Annotated[
        Optional[int],
        typer.Option("--keep", metavar="N", min=0, help="Delete every version but the newest N.", show_default=False),
    ] = None,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in history.jsonl).")] = "",
    no_gc: Annotated[
        bool, typer.Option("--no-gc", help="Delete the versions only; free their stored files later with gc.")
    ] = False,
    dry_run: DryRunOpt = False,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Delete old versions, then free the stored files (blobs) only they used.

    Never deletes the deployed version, a running canary or the version `hotelbot rollback` returns to;
    naming one of them (or an unknown version) is refused before anything is deleted. A deleted version's
    number is never given again. A backup of a deleted version keeps its files until the backup rotates
    out (BACKUPS_TO_KEEP), and `hotelbot rollback --to` can still rebuild it from there.

    Examples:

        hotelbot prune --keep 5 --dry-run

        hotelbot prune v0003 v0004 --reason "superseded by v0007"

        hotelbot prune --keep 10 --json | jq .freed_bytes
    """
    from ..registry.maintenance import prune_versions  # hashing and walking: off `hotelbot --help`'s path

    settings = settings_from(registry=registry)
    result = prune_versions(
        ModelRegistry(settings.paths.registry),
        versions or [],
        keep,
        reason=reason,
        dry_run=dry_run,
        collect=not no_gc,
        timeout=settings.deployment.lock_timeout_seconds,
    )
    if json_out:
        print_json(result.to_dict())
        return
    for note in result.repaired:
        message(f"repaired after an interrupted operation: {note}")
    if not result.deleted:
        out.print(f"nothing to prune: {len(result.kept)} version(s) kept")
        return
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb} {len(result.deleted)} version(s): {', '.join(result.deleted)}; kept {len(result.kept)}")
    for name, records in result.pinned_by_backups.items():
        message(f"{name}: its files stay while backup {', '.join(records)} pins them")
    if dry_run:
        out.print(f"would free {megabytes(result.freed_bytes)} (files no other version or backup uses)")
    elif result.gc_skipped:
        out.print("stored files not freed yet (--no-gc): run `hotelbot gc`")
    else:
        out.print(
            f"freed {megabytes(result.freed_bytes)}; registry: {megabytes(result.registry_bytes_before)} -> "
            f"{megabytes(result.registry_bytes_after)} on disk"
        )


@handle_errors
def migrate_cmd(dry_run: DryRunOpt = False, registry: RegistryOpt = None, json_out: JsonOpt = False) -> None:
    """Store a registry written before the blob store once per content, and convert old backup archives.

    Every version's files become hard links to one stored copy per content (identical files across
    versions share it); .tar.gz backups become pinned backup records. Versions stay byte-identical and
    readable throughout; a file that fails its checksum is left alone and reported (exit 1). Running it
    again changes nothing. Registries that are not migrated keep working as they are.

    Examples:

        hotelbot migrate --dry-run

        hotelbot migrate --json
    """
    from ..registry.maintenance import migrate  # hashing and walking: off `hotelbot --help`'s path

    settings = settings_from(registry=registry)
    result = migrate(
        ModelRegistry(settings.paths.registry), dry_run=dry_run, timeout=settings.deployment.lock_timeout_seconds
    )
    if json_out:
        print_json(result.to_dict())
    else:
        for note in result.repaired:
            message(f"repaired after an interrupted operation: {note}")
        verb = "would" if dry_run else "did"
        out.print(
            f"{result.versions} version(s), {result.files} file(s): {result.already_stored} already stored, "
            f"{result.stored} stored once, {result.linked} shared with an identical file "
            f"({megabytes(result.bytes_freed)} {'would be ' if dry_run else ''}freed)"
        )
        if result.backups_converted:
            out.print(f"{verb} convert {len(result.backups_converted)} backup archive(s) to pinned records")
        if not dry_run:
            out.print(
                f"registry: {megabytes(result.registry_bytes_before)} -> {megabytes(result.registry_bytes_after)} on disk"
            )
        for problem in result.problems:
            warn(problem)
    if result.problems:
        message(f"{len(result.problems)} problem(s); `hotelbot verify` lists every corrupt file")
        raise typer.Exit(1)
