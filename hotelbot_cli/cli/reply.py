"""hotelbot reply"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ..errors import DataError
from ..registry import ModelRegistry
from ._errors import handle_errors
from ._options import JsonOpt, RegistryOpt, settings_from
from ._render import out, print_json


@handle_errors
def reply_cmd(
    messages: Annotated[List[str], typer.Argument(help="Guest messages to answer; '-' reads one message per stdin "
                                                  "line.", show_default=False)],
    version: Annotated[Optional[str], typer.Option("--version", "-v", help="Version whose generator to use "
                                                   "(v0003, latest) [env: MODEL_VERSION; default: deployed, "
                                                   "else newest].", show_default=False)] = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer guest messages with the response generator of a registry version.

    When the version has a knowledge base, the top passages for each message are given to the
    generator as context and listed as the reply's sources (document, heading, retrieval score).
    Decoding (beam search or sampling) uses the settings stored with the version
    (generator/generation.json). The version needs a generator: run
    `hotelbot train --model-type generator`.

    Examples:

        hotelbot reply "¿a qué hora cierra la piscina?"

        hotelbot reply "¿aceptan perros?" "¿hay parking?" --json

        hotelbot reply "¿cuál es la clave del wifi?" --version v0005

        cat messages.txt | hotelbot reply - --json
    """
    from ..components.generator.responder import Responder  # loads the component table: kept off `hotelbot --help`'s path

    if "-" in messages:
        messages = [m for m in messages if m != "-"] + [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not messages:
        raise DataError("no message to answer", hint="pass MESSAGE arguments or '-' with lines on stdin")
    settings = settings_from(registry=registry)
    responder = Responder.from_registry(ModelRegistry(settings.paths.registry), version or settings.model_version,
                                        models_dir=settings.paths.models_dir)
    replies = responder.reply(messages)
    if json_out:
        print_json({"model_version": responder.version, "replies": replies})
        return
    from rich.markup import escape

    for i, answer in enumerate(replies):
        if len(replies) > 1:
            out.print(f"[bold]{escape(answer['message'])}[/bold]")
        out.print(escape(answer["reply"]) or "[dim](empty reply)[/dim]")
        for source in answer["sources"]:
            where = f"{source['doc']} > {source['heading']}" if source["heading"] else source["doc"]
            out.print(f"  [dim]fuente: {escape(where)} ({source['score']:.3f})[/dim]")
        if i + 1 < len(replies):
            out.print("")
