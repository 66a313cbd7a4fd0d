"""hotelbot prepare"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, cast

import typer
from typing_extensions import Annotated

from ..data import add_examples, prepare_dataset, write_prepared
from ._errors import error_line, handle_errors
from ._options import ConfigOpt, JsonOpt, ProfileOpt, settings_from
from ._render import message, out, print_json, warn


@handle_errors
def prepare_cmd(
    data: Annotated[
        Optional[Path],
        typer.Argument(
            help="Intent data: .json ({'intents': {label: [texts]}} or a "
            "list of {text, intent}), .jsonl, or .csv with text,intent "
            "columns. Give DATA or --documents.",
            show_default=False,
        ),
    ] = None,
    documents: Annotated[
        Optional[Path],
        typer.Option(
            "--documents",
            help="A folder of hotel documents (.md, .txt) to chunk for the knowledge base, instead of DATA.",
            show_default=False,
        ),
    ] = None,
    entities: Annotated[
        Optional[Path],
        typer.Option(
            "--entities",
            help="Entity data (.jsonl of {text, entities: "
            "[{start, end, label}]}) to validate and split, instead of "
            "DATA [default output: data/entities].",
            show_default=False,
        ),
    ] = None,
    sentiment: Annotated[
        Optional[Path],
        typer.Option(
            "--sentiment",
            help="Sentiment data (.jsonl of {text, "
            "label}: positive/neutral/negative), instead of DATA "
            "[default output: data/sentiment].",
            show_default=False,
        ),
    ] = None,
    replies: Annotated[
        Optional[Path],
        typer.Option(
            "--replies",
            help="Generator data (.jsonl of {message, "
            "reply, intent?, source?}) to validate and split, instead of "
            "DATA [default output: data/generator].",
            show_default=False,
        ),
    ] = None,
    reply_eval: Annotated[
        Optional[Path],
        typer.Option(
            "--reply-eval",
            help="With --replies: the reply evaluation set "
            "(.jsonl of {question, facts: [...]}) to check and store with the pairs; `train` then scores "
            "with it from any directory [default: none stored; training falls back to "
            "datasets/reply_eval_es.jsonl of the working directory].",
            show_default=False,
        ),
    ] = None,
    add: Annotated[
        Optional[Path],
        typer.Option(
            "--add",
            help="Labeled messages (from `hotelbot inbox`: CAPTURE/labeled.jsonl, or any intent file) to add "
            "to the prepared intent data's training split, instead of DATA.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Where to write: the intent split "
            "[env: HOTELBOT_DATA; default: data/processed], or with "
            "--documents the chunks [default: data/documents].",
            show_default=False,
        ),
    ] = None,
    validation_split: Annotated[
        Optional[float],
        typer.Option(
            help="Share of each intent held out for validation [env: TRAINING_VALIDATION_SPLIT; default 0.2].",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the split [default 42].", show_default=False)] = None,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", min=50, help="With --documents: maximum characters per chunk.")
    ] = 800,
    chunk_overlap: Annotated[
        int,
        typer.Option(
            "--chunk-overlap",
            min=0,
            help="With --documents: characters a chunk repeats from the previous one in a long section.",
        ),
    ] = 150,
    test_set: Annotated[
        Optional[Path],
        typer.Option(
            "--test-set",
            help="The independent intent test set that "
            "training must never see: a training text it holds is "
            "refused [default: DATA's <name>_test.jsonl when present].",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and report; write nothing.")] = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Load, validate, clean, de-duplicate and split intent data; or chunk hotel documents.

    Bad input (unreadable file, malformed line, empty text, a text with two labels, fewer than 2 intents)
    exits 1 naming the file and line/row, and writes nothing.

    With --documents DIR: every .md/.txt file below DIR is split into chunks on headings and paragraphs
    (overlapping inside long sections), each with its file, heading and character offsets into the
    original text; writes chunks.jsonl and documents.json (sha256 per file). Any other file type, an
    empty file or an empty folder exits 1 naming it. Hidden files are skipped.

    With --replies FILE --reply-eval EVAL: the evaluation set is checked and stored beside the prepared
    pairs, so that `train --model-type replies` (and `all`) scores with it from any working directory.

    With --add FILE: labeled messages (what `hotelbot inbox` writes) join the training split of the
    prepared intent data; the validation split stays as it is. A message the data holds under another
    intent, or that the test set holds, exits 1 and nothing changes; one it already holds is skipped.
    Then `hotelbot train --incremental` trains from the deployed version.

    Intent data is checked against its independent test set (DATA's <name>_test.jsonl, or --test-set):
    a training text equal to a test text (case, accents, punctuation ignored) exits 1; the prepared data
    records the test set, which `hotelbot validate --test` scores.

    Examples:

        hotelbot prepare datasets/hotel_intents_es.json

        hotelbot prepare my_intents.csv --test-set my_test.jsonl

        hotelbot prepare intents.csv --validation-split 0.25 --seed 7 --json

        hotelbot prepare --documents datasets/documentos

        hotelbot prepare --documents docs/ --chunk-size 600 --output /tmp/chunks --json

        hotelbot prepare --entities datasets/entidades_es.jsonl

        hotelbot prepare --sentiment datasets/sentimiento_es.jsonl --json

        hotelbot prepare --replies datasets/respuestas_es.jsonl --reply-eval datasets/reply_eval_es.jsonl

        hotelbot prepare --add capture/labeled.jsonl    # labeled in `hotelbot inbox label`
    """
    if sum(x is not None for x in (data, documents, entities, sentiment, replies, add)) != 1:
        _usage(
            "give exactly one of DATA (intent data), --documents DIR, --entities FILE, --sentiment FILE, "
            "--replies FILE or --add FILE"
        )
    if test_set is not None and data is None and add is None:
        _usage("--test-set applies to intent data (DATA or --add)")
    if reply_eval is not None and replies is None:
        _usage("--reply-eval applies to --replies FILE")
    if add is not None:
        if validation_split is not None or seed is not None:
            _usage("--validation-split and --seed do not apply to --add: the validation split stays as it is")
        _prepare_add(add, output, test_set, dry_run, json_out, config, profile)
        return
    if replies is not None:
        _prepare_replies(replies, reply_eval, output, validation_split, seed, dry_run, json_out, config, profile)
        return
    if entities is not None or sentiment is not None:
        _prepare_component(
            "entities" if entities is not None else "sentiment",
            cast(Path, entities or sentiment),  # one of them is given (checked above)
            output,
            validation_split,
            seed,
            dry_run,
            json_out,
            config,
            profile,
        )
        return
    if documents is not None:
        if validation_split is not None or seed is not None:
            _usage("--validation-split and --seed apply to intent data, not to --documents")
        _prepare_documents(documents, output, chunk_size, chunk_overlap, dry_run, json_out)
        return

    settings = settings_from(
        config, profile, data=output, overrides={"data_config": {"validation_split": validation_split, "seed": seed}}
    )
    target = None if dry_run else settings.paths.data
    prepared = prepare_dataset(cast(Path, data), target, settings.data, test_set)  # DATA: the one left
    summary = prepared.to_summary()
    summary["output"] = None if target is None else str(target)
    if json_out:
        print_json(summary)
        return
    for w in prepared.warnings:
        warn(w.message)
    s = prepared.summary
    out.print(
        f"{s['examples']} examples, {s['num_labels']} intents: {s['train_size']} train / "
        f"{s['validation_size']} validation (split {s['validation_split']}, seed {s['seed']})"
    )
    test = s.get("test_set")
    out.print(
        f"test set {test['path']}: {test['examples']} examples, none in the training data"
        if test
        else "no independent test set (give one with --test-set, or put <name>_test.jsonl beside DATA)"
    )
    out.print(f"fingerprint {prepared.fingerprint}")
    if target is not None:
        message(f"wrote {target}/ (train.jsonl, validation.jsonl, dataset.json)")


def _prepare_add(
    labeled: Path,
    output: Path | None,
    test_set: Path | None,
    dry_run: bool,
    json_out: bool,
    config: Path | None,
    profile: str | None,
) -> None:
    settings = settings_from(config, profile, data=output)
    target = settings.paths.data
    prepared, change = add_examples(
        target,
        labeled,
        test_set,
        settings.data.min_examples_per_intent,
        settings.data.imbalance_ratio_warning,
    )
    if not dry_run and change["added"]:
        write_prepared(prepared, target)
    change.update({"output": str(target), "written": bool(not dry_run and change["added"]), "dry_run": dry_run})
    if json_out:
        print_json(change)
        return
    for w in prepared.warnings:
        warn(w.message)
    per_intent = ", ".join(f"{k} +{v}" for k, v in change["added_per_intent"].items()) or "none"
    out.print(
        f"{change['messages']} labeled message(s): {change['added']} added ({per_intent}), "
        f"{change['skipped_duplicates']} already in the data"
    )
    if change["placeholders_replaced"]:
        out.print(
            f"{change['placeholders_replaced']} masked value(s) (<PERSON>, <PHONE>, ...) replaced by made-up ones"
        )
    if change["new_intents"]:
        out.print(f"new intent(s): {', '.join(change['new_intents'])}")
    out.print(
        f"train split {change['train_size_before']} -> {change['train_size_after']} texts; "
        f"fingerprint {change['fingerprint_after']}"
    )
    if change["written"]:
        message(f"wrote {target}/; next: hotelbot train --incremental")
    elif not change["added"]:
        message("nothing new: the prepared data is unchanged")


def _usage(problem: str) -> None:
    """Exit 2 like Click's own usage errors (typer.BadParameter raised here would become an internal error)."""
    error_line(f"usage error: {problem} (see `hotelbot prepare --help`)")
    raise typer.Exit(2)


def _prepare_documents(
    directory: Path, output: Path | None, chunk_size: int, chunk_overlap: int, dry_run: bool, json_out: bool
) -> None:
    # loads the component table: kept off `hotelbot --help`'s path
    from ..components.knowledge import (
        DEFAULT_DOCUMENTS_OUTPUT,
    )

    # loads the component table: kept off `hotelbot --help`'s path
    from ..components.knowledge.documents import prepare_documents, write_prepared_documents

    prepared = prepare_documents(directory, max_chars=chunk_size, overlap_chars=chunk_overlap)
    target = None if dry_run else (output or DEFAULT_DOCUMENTS_OUTPUT)
    if target is not None:
        write_prepared_documents(prepared, target)
    summary = {**prepared.to_summary(), "output": None if target is None else str(target)}
    if json_out:
        print_json(summary)
        return
    out.print(
        f"{len(prepared.documents)} documents, {len(prepared.chunks)} chunks "
        f"(at most {chunk_size} characters, overlap {chunk_overlap})"
    )
    for d in prepared.documents:
        out.print(f"  {d.doc}\t{d.chunks} chunks\t{d.chars} characters\tsha256 {d.sha256[:12]}")
    out.print(f"fingerprint {prepared.fingerprint}")
    if target is not None:
        message(f"wrote {target}/ (chunks.jsonl, documents.json)")


def _prepare_component(
    component: str,
    path: Path,
    output: Path | None,
    validation_split: float | None,
    seed: int | None,
    dry_run: bool,
    json_out: bool,
    config: Path | None,
    profile: str | None,
) -> None:
    from ..components import get  # loads the component table: kept off `hotelbot --help`'s path
    from ..components.base import SplitComponent, default_data_dir  # (the same)

    settings = settings_from(
        config, profile, overrides={"data_config": {"validation_split": validation_split, "seed": seed}}
    )
    split_component = cast(SplitComponent, get(component))  # entities or sentiment: a SplitComponent
    prepared = split_component.prepare_split(path, settings.data.validation_split, settings.data.seed)
    target = None if dry_run else (output or default_data_dir(settings, component))
    if target is not None:
        split_component.write_split(prepared, target)
    summary = {**prepared.to_summary(), "component": component, "output": None if target is None else str(target)}
    if json_out:
        print_json(summary)
        return
    for w in prepared.warnings:
        warn(w["message"])
    per = summary.get("entities_per_type") or summary.get("examples_per_label") or {}
    out.print(
        f"{summary['examples']} {component} examples: {summary['train_size']} train, "
        f"{summary['validation_size']} validation; " + ", ".join(f"{k} {v}" for k, v in per.items())
    )
    out.print(f"fingerprint {prepared.fingerprint}")
    if target is not None:
        message(f"wrote {target}/ (train.jsonl, validation.jsonl, dataset.json)")


def _prepare_replies(
    path: Path,
    reply_eval: Path | None,
    output: Path | None,
    validation_split: float | None,
    seed: int | None,
    dry_run: bool,
    json_out: bool,
    config: Path | None,
    profile: str | None,
) -> None:
    # loads the component table: kept off `hotelbot --help`'s path
    from ..components.generator.data import (
        prepare_replies,
        write_prepared_replies,
    )
    from ..components.replies.evalset import StoredEvaluation, forget_stored_evaluation  # with the line above

    settings = settings_from(
        config, profile, overrides={"data_config": {"validation_split": validation_split, "seed": seed}}
    )
    prepared = prepare_replies(path, settings.data.validation_split, settings.data.seed)
    evaluation = StoredEvaluation(reply_eval) if reply_eval is not None else None  # checked before any write
    if evaluation is not None:
        prepared.summary["reply_eval"] = evaluation.summary()
    target = None if dry_run else (output or Path(settings.paths.data).parent / "generator")
    if target is not None:
        if evaluation is not None:
            evaluation.write(target)  # before dataset.json, the split's completion marker
        else:
            forget_stored_evaluation(target)
        write_prepared_replies(prepared, target)
    summary = {
        "reply_eval": None,
        **prepared.summary,
        "component": "generator",
        "fingerprint": prepared.fingerprint,
        "train_size": len(prepared.train),
        "validation_size": len(prepared.validation),
        "warnings": list(prepared.warnings),
        "output": None if target is None else str(target),
    }
    if json_out:
        print_json(summary)
        return
    for w in prepared.warnings:
        warn(str(w))
    out.print(
        f"{len(prepared.train) + len(prepared.validation)} reply pairs: {len(prepared.train)} train, "
        f"{len(prepared.validation)} validation; fingerprint {prepared.fingerprint}"
    )
    if evaluation is not None:
        out.print(
            f"reply evaluation set {evaluation.path}: {len(evaluation.questions)} questions, stored with the pairs"
        )
    if target is not None:
        message(f"wrote {target}/")
