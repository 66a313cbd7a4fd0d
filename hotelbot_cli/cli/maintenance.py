"""hotelbot gc / migrate: registry housekeeping (hotelbot_cli.registry.maintenance does the work)."""

from __future__ import annotations

import typer
from typing_extensions import Annotated

from ..registry import ModelRegistry
from ._errors import handle_errors
from ._options import JsonOpt, RegistryOpt, settings_from
from ._render import message, out, print_json, warn

DryRunOpt = Annotated[bool, typer.Option("--dry-run", "-n", help="Say what would change; change nothing.")]


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


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
        f"{verb} {len(result.removed)} unreferenced blob(s), {_mb(result.removed_bytes)}; "
        f"kept {result.kept} ({_mb(result.kept_bytes)})"
    )
    if not dry_run:
        out.print(f"registry: {_mb(result.registry_bytes_before)} -> {_mb(result.registry_bytes_after)} on disk")


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
            f"({_mb(result.bytes_freed)} {'would be ' if dry_run else ''}freed)"
        )
        if result.backups_converted:
            out.print(f"{verb} convert {len(result.backups_converted)} backup archive(s) to pinned records")
        if not dry_run:
            out.print(f"registry: {_mb(result.registry_bytes_before)} -> {_mb(result.registry_bytes_after)} on disk")
        for problem in result.problems:
            warn(problem)
    if result.problems:
        message(f"{len(result.problems)} problem(s); `hotelbot verify` lists every corrupt file")
        raise typer.Exit(1)
