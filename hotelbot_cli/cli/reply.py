"""hotelbot reply"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from ..errors import DataError
from ..registry import ModelRegistry
from ._errors import handle_errors
from ._options import JsonOpt, RegistryOpt, settings_from
from ._render import out, print_json


@handle_errors
def reply_cmd(
    messages: Annotated[
        list[str],
        typer.Argument(help="Guest messages to answer; '-' reads one message per stdin line.", show_default=False),
    ],
    version: Annotated[
        Optional[str],
        typer.Option(
            "--version",
            "-v",
            help="Version whose reply model to use "
            "(v0003, latest, deployed, previous) [env: MODEL_VERSION; default: deployed, "
            "else newest].",
            show_default=False,
        ),
    ] = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer guest messages with a registry version's reply pipeline: grounded, fact-checked replies.

    The intent decides the kind of reply: a request (book_room, cancel_booking, complaint, ...) gets the
    hotel's template filled with the message's dates, guests and room type, plus the document sentence
    that says how to do it; out_of_scope a polite fallback; a question the sentences of the hotel's
    documents that answer it, chosen by the trained sentence ranker. Every number, time, price, e-mail,
    phone, URL and name in a reply must be in the passages it cites or in the message: a reply that fails
    this check is not sent (see "rejected" in --json). The version needs a reply model:
    `hotelbot train --model-type replies` (after `--model-type embeddings`).

    Examples:

        hotelbot reply "¿a qué hora cierra la piscina?"

        hotelbot reply "¿aceptan perros?" "quiero reservar una doble del 3 al 5 de marzo" --json

        hotelbot reply "¿cuál es la clave del wifi?" --version v0005

        cat messages.txt | hotelbot reply - --json | jq -r '.replies[].reply'
    """
    # loads the component table: kept off `hotelbot --help`'s path
    from ..components.replies.pipeline import (
        ReplyPipeline,
    )

    if "-" in messages:
        messages = [m for m in messages if m != "-"] + [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not messages:
        raise DataError("no message to answer", hint="pass MESSAGE arguments or '-' with lines on stdin")
    settings = settings_from(registry=registry)
    store = ModelRegistry(settings.paths.registry)
    info = store.resolve(version or settings.model_version, verify=True)
    pipeline = ReplyPipeline.from_version(info, settings)
    replies = pipeline.reply(messages)
    if json_out:
        print_json({"model_version": pipeline.version, "replies": replies})
        return
    from rich.markup import escape

    for i, answer in enumerate(replies):
        if len(replies) > 1:
            out.print(f"[bold]{escape(answer['message'])}[/bold]")
        out.print(escape(answer["reply"]))
        out.print(
            f"  [dim]{answer['kind']}" + (f" · {escape(str(answer['intent']))}" if answer["intent"] else "") + "[/dim]"
        )
        for source in answer["sources"]:
            where = f"{source['doc']} > {source['heading']}" if source["heading"] else source["doc"]
            out.print(f"  [dim]fuente: {escape(where)} ({source['score']:.3f})[/dim]")
        for rejected in answer.get("rejected", []):
            facts = ", ".join(f["text"] for f in rejected["unsupported"]) or "empty"
            out.print(
                f"  [dim]not sent ({rejected['kind']}, unsupported: {escape(facts)}): {escape(rejected['reply'])}[/dim]"
            )
        if i + 1 < len(replies):
            out.print("")
