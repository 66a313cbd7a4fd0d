"""hotelbot train"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, cast

import typer
from typing_extensions import Annotated

from ..registry import ModelRegistry
from ..training.distributed import is_main_process, rank, world_size
from ._errors import handle_errors
from ._options import ConfigOpt, JsonOpt, ProfileOpt, RegistryOpt, settings_from
from ._render import err, log_to, megabytes, message, out, print_json, warn


def model_type_choice(value: str) -> str:
    """``--model-type``: a registered component's model type, or ``all``. Checked against the component table
    when the command runs, so `hotelbot --help` does not import the components."""
    from ..components import model_types  # loads the component table: kept off `hotelbot --help`'s path

    choices = [*model_types(), ALL]
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, choices))}.")
    return value


ALL = "all"


def model_type_names() -> list[str]:
    """`--model-type`'s values, for shell completion."""
    from ..components import model_types  # loads the component table: only when the shell asks

    return [*model_types(), ALL]


class RichProgress:
    """Renders the library's TrainingEvents as a live Rich progress bar on stderr."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("CPU {task.fields[cpu]} RAM {task.fields[ram]}"),
            console=err,
            transient=False,
        )
        self.task: Any = None

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, event: Any) -> None:
        if event.kind == "status":
            self.progress.console.log(event.message)
        elif event.kind == "begin":
            self.task = self.progress.add_task(
                "train", total=event.total_steps, epoch=f"0/{event.total_epochs}", loss="-", cpu="-", ram="-"
            )
        elif self.task is not None and event.kind == "step":
            fields: dict[str, Any] = {"epoch": f"{event.epoch:.2f}/{event.total_epochs}"}
            if event.loss is not None:
                fields["loss"] = f"{event.loss:.4f}"
            if event.system:
                fields["cpu"] = f"{event.system.get('system/cpu_percent', 0):.0f}%"
                fields["ram"] = f"{event.system.get('system/process_rss_mb', 0):.0f}MB"
            self.progress.update(self.task, completed=event.step, **fields)
        elif event.kind == "evaluate":
            m = event.metrics
            shown = [
                f"{label} {m[key]:.4f}"
                for key, label in (
                    ("loss", "eval loss"),
                    ("accuracy", "accuracy"),
                    ("macro_f1", "macro-F1"),
                    ("micro_f1", "micro-F1"),
                    ("sentiment_macro_f1", "sentiment macro-F1"),
                    ("entities_micro_f1", "entities micro-F1"),
                    ("nlu_score", "NLU score"),
                )
                if isinstance(m.get(key), (int, float))
            ]  # only what this model reports (the generator: loss)
            self.progress.console.log(
                f"epoch {event.epoch:.0f}: " + "  ".join(shown) + (f"  ({event.message})" if event.message else "")
            )
        elif event.kind == "end" and self.task is not None:
            self.progress.update(self.task, completed=event.step)


@handle_errors
def train_cmd(
    model_type: Annotated[
        str,
        typer.Option(
            "--model-type",
            "-t",
            parser=model_type_choice,
            metavar="TYPE",
            autocompletion=lambda: model_type_names(),
            help="What to train: a component's model type (classifier, nlu = "
            "the joint intent + entity + sentiment model, embeddings = the knowledge "
            "base, entities, sentiment, generator, replies = grounded fact-checked replies, or a registered plugin's), or all.",
        ),
    ] = "classifier",
    base_model: Annotated[
        Optional[str],
        typer.Option(
            help="packaged:multilingual-e5-small (default), "
            "packaged:all-minilm-l6-v2, a local model directory, or a hub id "
            "[env: HOTELBOT_BASE_MODEL].",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="[env: TRAINING_EPOCHS; default 4]", show_default=False)] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help="[env: TRAINING_BATCH_SIZE; default 16]", show_default=False)
    ] = None,
    learning_rate: Annotated[
        Optional[float],
        typer.Option(help="Encoder learning rate [env: TRAINING_LEARNING_RATE; default 1e-4].", show_default=False),
    ] = None,
    head_learning_rate: Annotated[
        Optional[float],
        typer.Option(help="Learning rate of the new classification head [default 3e-3].", show_default=False),
    ] = None,
    max_length: Annotated[
        Optional[int], typer.Option(help="Max tokens per text [default 64].", show_default=False)
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="[env: TRAINING_SEED; default 42]", show_default=False)] = None,
    patience: Annotated[
        Optional[int],
        typer.Option(
            help="Early-stopping patience in epochs on validation macro-F1; 0 turns it off [default 2].",
            show_default=False,
        ),
    ] = None,
    train_embeddings: Annotated[
        Optional[bool],
        typer.Option(
            "--train-embeddings/--freeze-embeddings",
            help="Train or freeze the word-embedding matrix [default: frozen for vocabularies of 100k+ tokens].",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Train even when a version with the same data and config exists.")
    ] = False,
    incremental: Annotated[
        bool,
        typer.Option(
            "--incremental",
            help="Classifier: start from a version's weights "
            "and data (new data added, new intents extend its head). Embeddings: "
            "embed only new or changed documents.",
        ),
    ] = False,
    documents: Annotated[
        Optional[Path],
        typer.Option(
            "--documents",
            help="Embeddings: prepared documents "
            "(hotelbot prepare --documents) or a folder of .md/.txt files [default: data/documents].",
            show_default=False,
        ),
    ] = None,
    from_version: Annotated[
        Optional[str],
        typer.Option(
            "--from",
            help="Parent version for --incremental; for "
            "the other components, the version whose other components "
            "are carried over [default: deployed, else newest].",
            show_default=False,
        ),
    ] = None,
    hpo: Annotated[
        bool,
        typer.Option(
            "--hpo",
            help="Search hyperparameters with Optuna first; the best trial "
            "becomes the version and its config is saved for later runs.",
        ),
    ] = False,
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            min=1,
            help="Finished trials (complete or pruned) the --hpo "
            "study should hold; a rerun or another process continues the same study.",
        ),
    ] = 10,
    hpo_storage: Annotated[
        Optional[str],
        typer.Option(
            "--hpo-storage",
            metavar="URL",
            help="--hpo: the Optuna "
            "study's storage, an SQLAlchemy URL shared by every process of the search (sqlite:///"
            "FILE, postgresql://..., mysql://...) [env: HOTELBOT_HPO_STORAGE; default: sqlite "
            "under HOTELBOT_HOME/hpo/].",
            show_default=False,
        ),
    ] = None,
    hpo_worker: Annotated[
        bool,
        typer.Option(
            "--hpo-worker",
            help="--hpo: only run trials of the shared study "
            "(on another core or machine, same --hpo-storage); publish nothing.",
        ),
    ] = False,
    class_weights: Annotated[
        Optional[bool],
        typer.Option(
            "--class-weights/--no-class-weights",
            help="Weight the loss by inverse intent frequency (for imbalanced data).",
            show_default=False,
        ),
    ] = None,
    label_smoothing: Annotated[
        Optional[float],
        typer.Option(
            "--label-smoothing",
            min=0.0,
            max=0.5,
            metavar="X",
            help="Classifier: smooth the intents' training targets by X (0-0.5; 0.1 is usual) "
            "[env: TRAINING_LABEL_SMOOTHING; default 0: off].",
            show_default=False,
        ),
    ] = None,
    freeze_layers: Annotated[
        Optional[str],
        typer.Option(
            "--freeze-layers",
            metavar="auto|N",
            help="Keep the base encoder's embeddings and bottom N transformer layers as pretrained: no backward "
            "pass through them, so each step is faster; auto = the intent classifier's bottom sixth (2 of "
            "e5's 12), none for the other components [env: TRAINING_FREEZE_LAYERS; default auto].",
            show_default=False,
        ),
    ] = None,
    oos_detector: Annotated[
        Optional[str],
        typer.Option(
            "--oos-detector",
            metavar="auto|softmax|knn",
            help="Classifier: the out-of-scope detector: auto = the better on validation of the "
            "softmax confidence threshold and nearest neighbours (similarity with the k-th nearest "
            "in-scope training message) [env: TRAINING_OOS_DETECTOR; default auto].",
            show_default=False,
        ),
    ] = None,
    ignore_best_config: Annotated[
        bool,
        typer.Option("--ignore-best-config", help="Do not reuse a saved HPO best config for this data and base model."),
    ] = False,
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help="The component's data: the classifier's prepared "
            "directory [env: HOTELBOT_DATA; default: data/processed]; for entities, sentiment and the "
            "generator a prepared directory or a .jsonl file [default: what `hotelbot prepare` wrote].",
            show_default=False,
        ),
    ] = None,
    use_generator: Annotated[
        bool,
        typer.Option(
            "--use-generator",
            help="Replies: phrase informational answers "
            "with the version's response generator (each generated reply is fact-checked and "
            "replaced by the extractive answer when it fails).",
        ),
    ] = False,
    frozen_questions: Annotated[
        bool,
        typer.Option(
            "--frozen-questions",
            help="Replies: do not fine-tune the question "
            "encoder's top layers (about a minute of training on 2 cores); the sentence ranker's cosines then "
            "use the knowledge base's frozen query vector.",
        ),
    ] = False,
    reply_eval: Annotated[
        Optional[Path],
        typer.Option(
            "--reply-eval",
            help="Replies: the evaluation set (JSONL "
            'with "question" and "facts") [default: the one `prepare --replies --reply-eval` stored with the '
            "pairs, else datasets/reply_eval_es.jsonl of the working directory].",
            show_default=False,
        ),
    ] = None,
    bf16: Annotated[
        bool,
        typer.Option(
            "--bf16",
            help="Mixed precision bfloat16 (a CUDA GPU with bf16, or a recent CPU) [env: TRAINING_PRECISION=bf16].",
        ),
    ] = False,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Mixed precision float16 (a CUDA GPU only) [env: TRAINING_PRECISION=fp16].")
    ] = False,
    fp32: Annotated[
        bool,
        typer.Option(
            "--fp32",
            help="Plain float32, also on a CPU with native bfloat16, where the default (auto) trains in bf16 "
            "[env: TRAINING_PRECISION=fp32].",
        ),
    ] = False,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a component (or all of them) and publish a new registry version.

    Fine-tunes with the Hugging Face Trainer and early stopping on the validation metric (best epoch
    kept), logs params, per-step metrics and CPU/RAM/GPU metrics to MLflow, and shows live progress on
    stderr. The new version carries over every other component of the deployed version (else the newest).

    Examples:

        hotelbot train

        hotelbot train --base-model packaged:all-minilm-l6-v2 --epochs 3 --json

        TRAINING_EPOCHS=1 hotelbot train --profile dev --registry /tmp/reg

        hotelbot prepare new_intents.json && hotelbot train --incremental

        hotelbot train --hpo --trials 8 --json

        hotelbot train --hpo --trials 40 --hpo-storage postgresql://optuna@db/hpo   # + workers:

        hotelbot train --hpo --trials 40 --hpo-storage postgresql://optuna@db/hpo --hpo-worker

        torchrun --nproc_per_node 4 -m hotelbot_cli train --bf16   # 4 GPUs, one process each

        hotelbot train --oos-detector knn   # out of scope by nearest neighbours, not the softmax threshold

        hotelbot prepare --documents datasets/documentos && hotelbot train --model-type embeddings

        hotelbot train --model-type embeddings --incremental --json

        hotelbot train --model-type all --json   # every component whose data is prepared

        hotelbot train --model-type nlu   # intents + entities + sentiment: one encoder, three heads

        hotelbot train --model-type replies --json   # grounded replies: ranker + fact check, scored
    """
    from ..components import by_model_type, registered  # loads the component table: kept off `hotelbot --help`'s path
    from ..pipeline.train import train  # loads the component table: kept off `hotelbot --help`'s path

    component = None if model_type == ALL else by_model_type(model_type)
    # the classifier, or a component that trains it (the joint NLU model): --data is the intent split
    primary = component is not None and any(c.primary for c in registered() if c.name in component.provides())
    for flag, given in (
        ("incremental", incremental),
        ("hpo", hpo),
        ("use_generator", use_generator),
        ("frozen_questions", frozen_questions),
        ("reply_eval", reply_eval is not None),
    ):
        if given and component is not None and flag not in component.train_options:
            takers = [c.model_type for c in registered() if flag in c.train_options]
            raise typer.BadParameter(
                f"--{flag.replace('_', '-')} applies to --model-type {' and '.join(takers)}, "
                f"not --model-type {model_type}"
            )
    if (hpo_worker or hpo_storage) and not hpo:
        raise typer.BadParameter("--hpo-worker and --hpo-storage go with --hpo")
    if bf16 + fp16 + fp32 > 1:
        raise typer.BadParameter("--bf16, --fp16 and --fp32 exclude each other: choose one")
    if reply_eval is not None and not reply_eval.is_file():
        raise typer.BadParameter(f"--reply-eval: no such file: {reply_eval}")
    if from_version and not incremental and (component is None or primary):
        raise typer.BadParameter("--from goes with --incremental")
    freeze = None if train_embeddings is None else ("no" if train_embeddings else "yes")
    # --data is the intent split for the classifier (and `all`), the component's own data otherwise
    settings = settings_from(
        config,
        profile,
        registry,
        data if component is None or primary else None,
        overrides={
            "training_config": {
                "base_model": base_model,
                "epochs": epochs,
                "batch_size": batch_size,
                "learning_rate": learning_rate,
                "head_learning_rate": head_learning_rate,
                "max_length": max_length,
                "seed": seed,
                "early_stopping_patience": patience,
                "freeze_embeddings": freeze,
                "class_weights": class_weights,
                "label_smoothing": label_smoothing,
                "freeze_layers": freeze_layers,
                "oos_detector": oos_detector,
                "precision": "bf16" if bf16 else ("fp16" if fp16 else ("fp32" if fp32 else None)),
            }
        },
    )
    if hpo_storage:
        settings.paths.hpo_storage = hpo_storage
    if hpo_worker:
        _run_hpo_worker(settings, data, trials, incremental, from_version, json_out)
        return
    if model_type == ALL:
        required = ", ".join(c.name for c in registered() if c.required and c.in_all(settings))
        others = ", ".join(c.name for c in registered() if not c.required and c.in_all(settings))
        message(
            f"--model-type all: the {required}, then every other component whose data is prepared "
            f"({others}), each carrying the previous one over"
        )
    store = ModelRegistry(settings.paths.registry)
    options: dict[str, Any] = {
        "incremental_from": (from_version or "") if incremental else None,
        "hpo_trials": trials if hpo else 0,
        "use_best_config": not ignore_best_config,
        "incremental": incremental,
        "use_generator": use_generator,
        "frozen_questions": frozen_questions,
        "reply_eval": reply_eval,
    }
    # --data is the component's own data; the knowledge base's is --documents (its "incremental" option)
    own_data = None if component is None or primary or "incremental" in component.train_options else data
    source = None if component is None or primary else from_version
    main = is_main_process()  # torchrun/accelerate launch: the other processes only fit, and say nothing
    with log_to(settings.paths.logs / "training.log"):
        result = train(
            settings,
            store,
            model_type,
            data=own_data,
            documents=documents,
            source=source,
            force=force,
            options=options,
            progress=_progress(model_type, json_out) if main else None,
            on_step=None if json_out or not main else _step_renderer(model_type),
        )
    if result.secondary:
        message(
            f"process {rank()} of {world_size()}: done; the main process publishes {result.final_version or 'the version'}"
        )
        return
    deployable = result.final_version and (model_type == ALL or result.trained)
    # deployable: final_version is set
    deployed = _auto_deploy(settings, store, cast(str, result.final_version)) if deployable else None
    if model_type == ALL:
        if json_out:
            print_json({**result.to_dict(), "version": result.final_version, "deployed": deployed})
            return
        out.print(
            f"final version {result.final_version}: "
            + ", ".join(f"{s.component} {s.status}" for s in result.steps)
            + f"; MLflow parent run {result.mlflow_run_id}"
        )
    elif json_out:
        published = result.storage and result.storage["versions"]  # a skipped train keeps its document as it was
        print_json({**_step_document(result.steps[0], deployed), **({"storage": result.storage} if published else {})})
        return
    if result.storage and result.storage["versions"]:
        message(_storage_line(result.storage))
    if deployed:
        out.print(f"deployed {deployed['version']} (was {deployed['previous'] or 'none'})")


def _run_hpo_worker(
    settings: Any, data: Path | None, trials: int, incremental: bool, from_version: str | None, json_out: bool
) -> None:
    """`train --hpo --hpo-worker`: trials of the shared study, no version."""
    from ..components.intents.train import hpo_worker  # loads the component table: kept off --help's path

    with log_to(settings.paths.logs / "training.log"), RichProgress() as live:
        summary = hpo_worker(
            settings,
            data or settings.paths.data,
            trials,
            listener=None if json_out else live,
            incremental_from=(from_version or "") if incremental else None,
        )
    if json_out:
        print_json(summary)
        return
    out.print(
        f"HPO worker: ran {summary['ran_here']} trial(s); study {summary['study']} holds {summary['finished']} "
        f"finished ({summary['pruned']} pruned), best {summary['metric']} "
        + (
            f"{summary['best_score']:.4f} (trial {summary['best_trial']})"
            if summary["best_score"] is not None
            else "none yet"
        )
    )


def _progress(model_type: str, json_out: bool) -> Any:
    """The pipeline's progress factory: live Rich progress on stderr around each component's training."""

    @contextmanager
    def progress(component: str) -> Iterator[RichProgress]:
        if model_type == ALL and not json_out:
            message(f"--model-type all: training {component}")
        with RichProgress() as live:
            yield live

    return progress


def _storage_line(storage: dict[str, Any]) -> str:
    """What the new versions took on disk: "stored 204.1 MB new (12 files), shared 498.3 MB (31 files) with
    earlier versions; registry 1,117.2 MB"."""
    mb = megabytes
    copied = f"; {storage['copied']} file(s) copied (no hard links here)" if storage.get("copied") else ""
    return (
        f"{', '.join(storage['versions'])}: stored {mb(storage['stored_bytes'])} new ({storage['stored']} file(s)), "
        f"shared {mb(storage['shared_bytes'])} ({storage['shared']} file(s)) with what the registry held{copied}; "
        f"registry {mb(storage['registry_bytes'])} on disk"
    )


def _step_document(step: Any, deployed: dict[str, Any] | None) -> dict[str, Any]:
    """`train --model-type X --json`: the component's own document and "deployed"; when it was already
    trained, {"version", "skipped", "reason"} (the other components add "component" and "deployed")."""
    if step.result is not None:
        return {**step.result.to_dict(), "deployed": deployed}
    doc = {"version": step.version, "skipped": True, "reason": step.message}
    return doc if step.component == _primary_name() else {"component": step.component, **doc, "deployed": deployed}


def _primary_name() -> str | None:
    from ..components import registered  # loads the component table: kept off `hotelbot --help`'s path

    return next((c.name for c in registered() if c.primary), None)


def _step_renderer(model_type: str) -> Any:
    def render(step: Any) -> None:
        """One finished step on the terminal: the component's own lines (stdout) and notes (stderr)."""
        if step.status == "skipped":
            warn(f"--model-type all: {step.component} skipped: {step.message}")
        elif step.status == "provided":
            message(f"--model-type all: {step.component}: {step.message}")
        elif step.status == "unchanged":
            message(f"{step.component}: {step.message}" if model_type == ALL else step.message)
        else:
            for line in step.result.lines:
                out.print(line)
            for note in step.result.notes:
                message(note)

    return render


def _auto_deploy(settings: Any, store: Any, version: str) -> dict[str, Any] | None:
    if not settings.deployment.auto_deploy_on_success:
        return None
    from ..pipeline.deploy import deploy, running_canary  # loads the component table: kept off --help's path

    running = running_canary(store.current_state())
    if running is not None:  # a gradual deploy is in progress: a person decides, not a training run
        warn(
            f"AUTO_DEPLOY_ON_SUCCESS: {version} not deployed: a canary of {running['version']} is running "
            "(hotelbot canary promote or abort, then hotelbot deploy)"
        )
        return {"action": "skipped", "version": version, "reason": f"canary of {running['version']} running"}
    message(f"AUTO_DEPLOY_ON_SUCCESS: deploying {version}")
    return deploy(store, settings, version, reason="auto deploy after training").to_dict()
