"""hotelbot models"""

from __future__ import annotations

from typing import Any

from ..config import DEFAULT_BASE_MODEL
from ._errors import handle_errors
from ._options import JsonOpt, settings_from
from ._render import out, print_json


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MB"


@handle_errors
def models_cmd(json_out: JsonOpt = False) -> None:
    """List the packaged offline base models: size, languages, whether they are cached.

    Use one with `hotelbot train --base-model packaged:NAME`. The first use converts it into the
    cache (HOTELBOT_MODEL_CACHE, default .hotelbot/models); later uses load the cache.

    Examples:

        hotelbot models

        hotelbot models --json
    """
    # imports numpy
    from ..packaged import (
        PACKAGED_MODELS,
        PACKAGED_SCHEME,
        cached_size_bytes,
        is_cached,
        source_size_bytes,
    )

    cache = settings_from().paths.models_dir
    rows: list[dict[str, Any]] = []
    for name, info in PACKAGED_MODELS.items():
        spec = PACKAGED_SCHEME + name
        rows.append(
            {
                "name": spec,
                "default": spec == DEFAULT_BASE_MODEL,
                "languages": info.languages,
                "description": info.description,
                "source_package": info.source_package,
                "source_size_bytes": source_size_bytes(name),
                "cached": is_cached(name, cache),
                "cached_size_bytes": cached_size_bytes(name, cache),
                "query_prefix": info.query_prefix,
                "pooling": info.pooling,
            }
        )
    if json_out:
        print_json({"cache": str(cache), "models": rows})
        return
    out.print(f"packaged base models (cache: {cache})")
    for r in rows:
        cached = f"yes ({_mb(r['cached_size_bytes'])})" if r["cached"] else "no (converted on first use)"
        out.print(f"[bold]{r['name']}[/bold]" + (" (default)" if r["default"] else ""))
        out.print(
            f"  languages: {r['languages']}; package: {r['source_package']} ({_mb(r['source_size_bytes'])}); "
            f"cached: {cached}"
        )
