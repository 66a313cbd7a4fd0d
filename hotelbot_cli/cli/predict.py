"""hotelbot predict"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typing_extensions import Annotated

from ..errors import DataError
from ..registry import ModelRegistry
from ._errors import handle_errors
from ._options import RegistryOpt, JsonOpt, settings_from
from ._render import out, print_json


@handle_errors
def predict_cmd(
    texts: Annotated[
        list[str], typer.Argument(help="Texts to classify; '-' reads one text per stdin line.", show_default=False)
    ],
    version: Annotated[
        Optional[str],
        typer.Option(
            "--version",
            "-v",
            help="Version to use (v0003, latest, deployed, previous) "
            "[env: MODEL_VERSION; default: deployed, else newest].",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many ranked intents to show.")] = 3,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Classify texts with a registry version; with its entity and sentiment models when it has them.

    Examples:

        hotelbot predict "quiero ver las noticias"

        hotelbot predict "hola" "¿a qué hora es el desayuno?" --top-k 2 --json

        cat messages.txt | hotelbot predict - --json
    """
    from ..pipeline.analyze import analyze_texts  # loads the component table: kept off `hotelbot --help`'s path

    if "-" in texts:
        stdin_texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        texts = [t for t in texts if t != "-"] + stdin_texts
    if not texts:
        raise DataError("no text to classify", hint="pass TEXT arguments or '-' with lines on stdin")
    settings = settings_from(registry=registry)
    name, rows = analyze_texts(
        ModelRegistry(settings.paths.registry), version or settings.model_version, texts, top_k=top_k
    )
    if json_out:
        print_json({"model_version": name, "predictions": rows})
        return
    from ..components import registered  # loads the component table: kept off `hotelbot --help`'s path

    analyzing = [c for c in registered() if c.analyzes]
    for r in rows:  # each analyzing component shows its own answer: tab-separated fields after the text
        out.print(r["text"] + "".join(c.analysis_text(r) for c in analyzing))
