"""hotelbot search"""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ..registry import ModelRegistry
from ._errors import handle_errors
from ._options import JsonOpt, RegistryOpt, settings_from
from ._render import out, print_json


@handle_errors
def search_cmd(
    query: Annotated[str, typer.Argument(help='A guest\'s question, e.g. "¿aceptan perros?".', show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many ranked chunks to show.")] = 5,
    version: Annotated[
        Optional[str],
        typer.Option(
            "--version",
            "-v",
            help="Version whose knowledge base to search "
            "(v0003, latest, deployed, previous) [env: MODEL_VERSION; default: deployed, "
            "else newest].",
            show_default=False,
        ),
    ] = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Search the hotel knowledge base of a registry version: ranked chunks with file, heading, offsets, score.

    Scores are cosine similarities of the query and chunk embeddings; start:end are the chunk's
    character offsets into the original document. The version needs a knowledge base: run
    `hotelbot prepare --documents DIR` then `hotelbot train --model-type embeddings`.

    Examples:

        hotelbot search "¿aceptan perros?"

        hotelbot search "hasta qué hora es el desayuno" --top-k 3 --json

        hotelbot search "parking" --version v0004
    """
    from ..components.knowledge.kb import KnowledgeBase  # loads the component table: kept off `hotelbot --help`'s path

    settings = settings_from(registry=registry)
    kb = KnowledgeBase.from_registry(
        ModelRegistry(settings.paths.registry), version or settings.model_version, models_dir=settings.paths.models_dir
    )
    hits = kb.search(query, top_k=top_k)
    if json_out:
        print_json(
            {
                "model_version": kb.version,
                "query": query,
                "embedding_model": kb.model.spec,
                "results": [h.to_dict() for h in hits],
            }
        )
        return
    from rich.markup import escape

    out.print(f"[bold]{escape(kb.version)}[/bold]: {escape(query)}")
    for h in hits:
        c = h.chunk
        where = f"{c.doc} > {c.heading}" if c.heading else c.doc
        snippet = c.text.replace("\n", " ")
        snippet = snippet if len(snippet) <= 240 else snippet[:237] + "..."
        out.print(f"{h.rank}. {h.score:.3f}  {escape(where)}  [dim]\\[{c.start}:{c.end}][/dim]")
        out.print(f"   {escape(snippet)}")
