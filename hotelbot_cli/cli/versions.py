"""hotelbot versions"""

from __future__ import annotations

from ..registry import ModelRegistry
from ..registry.backups import list_backups
from ._errors import handle_errors
from ._options import JsonOpt, RegistryOpt, settings_from
from ._render import out, print_json


@handle_errors
def versions_cmd(registry: RegistryOpt = None, json_out: JsonOpt = False) -> None:
    """List registry versions with their scores; marks the deployed one.

    Examples:

        hotelbot versions

        hotelbot versions --json | jq -r '.current'
    """

    settings = settings_from(registry=registry)
    store = ModelRegistry(settings.paths.registry)
    state = store.current_state()
    current = state.get("version")
    canary = (state.get("canary") or {}).get("version")  # a gradual deploy's second version
    backups = list_backups(store)
    backed_up = {b["version"] for b in backups}
    rows = []
    for info in store.list_versions():
        meta = info.metadata
        validation = store.validation_of(info.name)
        rows.append(
            {
                "version": info.name,
                "created_at": meta.get("created_at"),
                "base_model": (meta.get("base_model") or {}).get("spec"),
                "components": meta.get("components", []),
                "overall_score": (meta.get("metrics") or {}).get("overall_score"),
                "validated_score": validation.get("overall_score") if validation else None,
                "validated_passed": validation.get("passed") if validation else None,
                "current": info.name == current,
                "canary": info.name == canary,
                "previously_deployed": info.name in state.get("previous", []),
                "backup": info.name in backed_up,
                "corrupt": bool(meta.get("corrupt")),
            }
        )
    if json_out:
        print_json(
            {
                "registry": str(store.root),
                "current": current,
                "previous": state.get("previous", []),
                "canary": state.get("canary"),
                "versions": rows,
                "backups": [
                    {k: b.get(k) for k in ("id", "version", "created_at", "kind", "record", "archive", "size_bytes")}
                    for b in backups
                ],
            }
        )
        return
    if not rows:
        out.print(f"no versions in {store.root} (run `hotelbot train`)")
        return
    from rich.table import Table

    table = Table("", "version", "created", "base model", "score", "validated", "backup")
    for r in rows:
        score = "-" if r["overall_score"] is None else f"{r['overall_score']:.4f}"
        checked = (
            "-"
            if r["validated_score"] is None
            else (f"{r['validated_score']:.4f} " + ("pass" if r["validated_passed"] else "FAIL"))
        )
        table.add_row(
            "*" if r["current"] else "~" if r["canary"] else "",
            r["version"],
            r["created_at"] or "?",
            r["base_model"] or "?",
            score,
            checked,
            "yes" if r["backup"] else "",
        )
    out.print(table)
    out.print(
        "* deployed"
        + (f"; rollback goes to {state['previous'][-1]}" if state.get("previous") else "")
        + (f"; ~ canary answering {state['canary']['weight']}% of conversations (rollback aborts it)" if canary else "")
    )
