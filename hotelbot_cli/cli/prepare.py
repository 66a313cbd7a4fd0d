"""hotelbot prepare"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from ._errors import handle_errors
from ._options import ConfigOpt, JsonOpt, ProfileOpt, settings_from
from ._render import message, out, print_json, warn


@handle_errors
def prepare_cmd(
    data: Annotated[Path, typer.Argument(help="Intent data: .json ({'intents': {label: [texts]}} or a list of "
                                         "{text, intent}), .jsonl, or .csv with text,intent columns.",
                                         show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the split "
                                                   "[env: HOTELBOT_DATA; default: data/processed].",
                                                   show_default=False)] = None,
    validation_split: Annotated[Optional[float], typer.Option(help="Share of each intent held out for "
                                                              "validation [env: TRAINING_VALIDATION_SPLIT; default 0.2].",
                                                              show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the split [default 42].", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and report; write nothing.")] = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Load, validate, clean, de-duplicate and split intent data.

    Bad input (unreadable file, malformed line, empty text, a text with two labels, fewer than 2 intents)
    exits 1 naming the file and line/row, and writes nothing.

    Examples:

        hotelbot prepare datasets/hotel_intents_es.json

        hotelbot prepare intents.csv --validation-split 0.25 --seed 7 --json
    """
    from ..data import prepare_dataset

    settings = settings_from(config, profile, data=output,
                             overrides={"data_config": {"validation_split": validation_split, "seed": seed}})
    target = None if dry_run else settings.paths.data
    prepared = prepare_dataset(data, target, settings.data)
    summary = prepared.to_summary()
    summary["output"] = None if target is None else str(target)
    if json_out:
        print_json(summary)
        return
    for w in prepared.warnings:
        warn(w.message)
    s = prepared.summary
    out.print(f"{s['examples']} examples, {s['num_labels']} intents: {s['train_size']} train / "
              f"{s['validation_size']} validation (split {s['validation_split']}, seed {s['seed']})")
    out.print(f"fingerprint {prepared.fingerprint}")
    if target is not None:
        message(f"wrote {target}/ (train.jsonl, validation.jsonl, dataset.json)")
