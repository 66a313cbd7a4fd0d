"""hotelbot train"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from typing_extensions import Annotated

from ._errors import handle_errors
from ._options import ConfigOpt, DataDirOpt, JsonOpt, ProfileOpt, RegistryOpt, settings_from
from ._render import err, log_to, message, out, print_json, warn


class ModelType(str, Enum):
    classifier = "classifier"
    entities = "entities"
    sentiment = "sentiment"
    embeddings = "embeddings"
    generator = "generator"
    all = "all"


COMPONENT_TYPES = (ModelType.entities, ModelType.sentiment)  # trained on their own data, carrying the rest over


class RichProgress:
    """Renders the library's TrainingEvents as a live Rich progress bar on stderr."""

    def __init__(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("CPU {task.fields[cpu]} RAM {task.fields[ram]}"),
            console=err, transient=False,
        )
        self.task: Any = None

    def __enter__(self) -> "RichProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, event: Any) -> None:
        if event.kind == "status":
            self.progress.console.log(event.message)
        elif event.kind == "begin":
            self.task = self.progress.add_task("train", total=event.total_steps, epoch=f"0/{event.total_epochs}",
                                               loss="-", cpu="-", ram="-")
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
            shown = [f"{label} {m[key]:.4f}" for key, label in (
                ("loss", "eval loss"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("micro_f1", "micro-F1"))
                if isinstance(m.get(key), (int, float))]  # only what this model reports (the generator: loss)
            self.progress.console.log(f"epoch {event.epoch:.0f}: " + "  ".join(shown)
                                      + (f"  ({event.message})" if event.message else ""))
        elif event.kind == "end" and self.task is not None:
            self.progress.update(self.task, completed=event.step)


@handle_errors
def train_cmd(
    model_type: Annotated[ModelType, typer.Option("--model-type", "-t", help="What to train.")] = ModelType.classifier,
    base_model: Annotated[Optional[str], typer.Option(help="packaged:multilingual-e5-small (default), "
                          "packaged:all-minilm-l6-v2, a local model directory, or a hub id "
                          "[env: HOTELBOT_BASE_MODEL].", show_default=False)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="[env: TRAINING_EPOCHS; default 4]", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="[env: TRAINING_BATCH_SIZE; default 16]",
                                                      show_default=False)] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Encoder learning rate "
                             "[env: TRAINING_LEARNING_RATE; default 1e-4].", show_default=False)] = None,
    head_learning_rate: Annotated[Optional[float], typer.Option(help="Learning rate of the new classification "
                                  "head [default 3e-3].", show_default=False)] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per text [default 64].",
                                                      show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="[env: TRAINING_SEED; default 42]", show_default=False)] = None,
    patience: Annotated[Optional[int], typer.Option(help="Early-stopping patience in epochs on validation "
                        "macro-F1; 0 turns it off [default 2].", show_default=False)] = None,
    train_embeddings: Annotated[Optional[bool], typer.Option("--train-embeddings/--freeze-embeddings",
                                help="Train or freeze the word-embedding matrix [default: frozen for "
                                "vocabularies of 100k+ tokens].", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Train even when a version with the same data "
                                        "and config exists.")] = False,
    incremental: Annotated[bool, typer.Option("--incremental", help="Classifier: start from a version's weights "
                                              "and data (new data added, new intents extend its head). Embeddings: "
                                              "embed only new or changed documents.")] = False,
    documents: Annotated[Optional[Path], typer.Option("--documents", help="Embeddings: prepared documents "
                         "(hotelbot prepare --documents) or a folder of .md/.txt files [default: data/documents].",
                         show_default=False)] = None,
    from_version: Annotated[Optional[str], typer.Option("--from", help="Parent version for --incremental; for "
                                                        "embeddings, the version whose other components are carried "
                                                        "over [default: deployed, else newest].",
                                                        show_default=False)] = None,
    hpo: Annotated[bool, typer.Option("--hpo", help="Search hyperparameters with Optuna first; the best trial "
                                      "becomes the version and its config is saved for later runs.")] = False,
    trials: Annotated[int, typer.Option("--trials", min=1, help="Optuna trials for --hpo.")] = 10,
    class_weights: Annotated[Optional[bool], typer.Option("--class-weights/--no-class-weights",
                             help="Weight the loss by inverse intent frequency (for imbalanced data).",
                             show_default=False)] = None,
    ignore_best_config: Annotated[bool, typer.Option("--ignore-best-config", help="Do not reuse a saved HPO "
                                                     "best config for this data and base model.")] = False,
    data: DataDirOpt = None,
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    registry: RegistryOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Fine-tune a pretrained encoder plus a linear head; publish a new registry version.

    Uses the Hugging Face Trainer with early stopping on validation macro-F1 (best epoch kept), logs
    params, per-step metrics and CPU/RAM/GPU metrics to MLflow, and shows live progress on stderr.

    Examples:

        hotelbot train

        hotelbot train --base-model packaged:all-minilm-l6-v2 --epochs 3 --json

        TRAINING_EPOCHS=1 hotelbot train --profile dev --registry /tmp/reg

        hotelbot prepare new_intents.json && hotelbot train --incremental

        hotelbot train --hpo --trials 8 --json

        hotelbot prepare --documents datasets/documentos && hotelbot train --model-type embeddings

        hotelbot train --model-type embeddings --incremental --json

        hotelbot train --model-type all --json   # every component whose data is prepared
    """
    if model_type is ModelType.all:
        message("--model-type all: the classifier, then every other component whose data is prepared "
                "(knowledge base, entities, sentiment, generator), each carrying the previous one over")
    from ..registry import ModelRegistry
    from ..training import AlreadyTrainedError, train_classifier

    freeze = None if train_embeddings is None else ("no" if train_embeddings else "yes")
    # --data names the component's own data for entities/sentiment, not the intent split
    settings = settings_from(config, profile, registry,
                             None if model_type in (*COMPONENT_TYPES, ModelType.generator) else data,
                             overrides={"training_config": {
        "base_model": base_model, "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate,
        "head_learning_rate": head_learning_rate, "max_length": max_length, "seed": seed,
        "early_stopping_patience": patience, "freeze_embeddings": freeze, "class_weights": class_weights}})
    if from_version and not incremental and model_type not in (ModelType.embeddings, ModelType.generator,
                                                               *COMPONENT_TYPES):
        raise typer.BadParameter("--from goes with --incremental")
    store = ModelRegistry(settings.paths.registry)
    if model_type in COMPONENT_TYPES:
        if incremental or hpo:
            raise typer.BadParameter(f"--incremental and --hpo apply to the classifier, not --model-type "
                                     f"{model_type.value}")
        doc = _train_component(model_type.value, settings, store, data, force, from_version, json_out)
        deployed = None if doc["skipped"] else _auto_deploy(settings, store, doc["version"])
        if json_out:
            print_json({**doc, "deployed": deployed})
        elif deployed:
            out.print(f"deployed {deployed['version']} (was {deployed['previous'] or 'none'})")
        return
    if model_type is ModelType.generator:
        doc = _train_generator(settings, store, data, force, from_version, json_out)
        deployed = None if doc.get("skipped") else _auto_deploy(settings, store, doc["version"])
        if json_out:
            print_json({**doc, "deployed": deployed})
        return
    if model_type is ModelType.embeddings:
        knowledge = _train_knowledge(settings, store, documents, incremental, from_version, json_out)
        deployed = _auto_deploy(settings, store, knowledge["version"])
        if json_out:
            print_json({**knowledge, "deployed": deployed})
        elif deployed:
            out.print(f"deployed {deployed['version']} (was {deployed['previous'] or 'none'})")
        return
    classifier_options = {"incremental_from": (from_version or "") if incremental else None,
                          "hpo_trials": trials if hpo else 0, "use_best_config": not ignore_best_config}
    if model_type is ModelType.all:
        _train_all(settings, store, documents, force, classifier_options, json_out)
        return
    try:
        with log_to(settings.paths.logs / "training.log"), RichProgress() as progress:
            result = train_classifier(settings, settings.paths.data, store, listener=progress, force=force,
                                      **classifier_options)
    except AlreadyTrainedError as exc:
        if json_out:
            print_json({"version": exc.version, "skipped": True, "reason": exc.message})
        else:
            message(exc.message)
        return
    deployed = _auto_deploy(settings, store, result.version.name)
    if json_out:
        print_json({**_classifier_doc(result), "deployed": deployed})
        return
    _render_classifier(result)
    if deployed:
        out.print(f"deployed {deployed['version']} (was {deployed['previous'] or 'none'})")


def _classifier_doc(result: Any) -> dict[str, Any]:
    m, meta = result.metrics, result.version.metadata
    return {"version": result.version.name, "skipped": False, "duration_seconds": round(result.duration_seconds, 2),
            "mlflow_run_id": result.mlflow_run_id, "overall_score": m["overall_score"],
            "metrics": {k: m[k] for k in ("accuracy", "macro_f1", "macro_precision", "macro_recall",
                                          "weighted_f1", "overall_score")},
            "history": result.history, "parent": meta.get("parent"),
            "out_of_scope_threshold": meta.get("out_of_scope_threshold"),
            "hpo": (meta.get("training") or {}).get("hpo")}


def _render_classifier(result: Any) -> None:
    m, meta = result.metrics, result.version.metadata
    out.print(f"trained {result.version.name} in {result.duration_seconds:.1f}s: accuracy {m['accuracy']:.4f}, "
              f"macro-F1 {m['macro_f1']:.4f} on {m['num_examples']} validation texts")
    if meta.get("parent"):
        out.print(f"incremental: started from {meta['parent']}")
    if meta.get("out_of_scope_threshold") is not None:
        out.print(f"out-of-scope threshold {meta['out_of_scope_threshold']:.3f}: in-scope accuracy "
                  f"{m.get('in_scope_accuracy') or 0:.4f}, out-of-scope recall {m.get('out_of_scope_recall') or 0:.4f}")
    message(f"saved to {result.version.path}; MLflow run {result.mlflow_run_id}")


def _train_all(settings: Any, store: Any, documents: Path | None, force: bool, classifier_options: dict[str, Any],
               json_out: bool) -> None:
    """--model-type all: the library's pipeline (one MLflow parent run), rendered step by step."""
    from contextlib import ExitStack, contextmanager

    from ..pipeline import train_all

    @contextmanager
    def progress(component: str):
        with ExitStack() as stack:
            stack.enter_context(log_to(settings.paths.logs / "training.log"))
            if not json_out:
                message(f"--model-type all: training {component}")
            yield stack.enter_context(RichProgress())

    def on_step(step: Any) -> None:
        if json_out:
            return
        if step.status == "skipped":
            warn(f"--model-type all: {step.component} skipped: {step.message}")
        elif step.status == "unchanged":
            message(f"{step.component}: {step.message}")
        elif step.component == "classifier":
            _render_classifier(step.result)
        elif step.component == "knowledge":
            _render_knowledge(step.result)
        elif step.component == "generator":
            _render_generator(step.result)
        else:
            _render_component(step.result)

    result = train_all(settings, store, documents=documents, force=force, classifier_options=classifier_options,
                       progress=progress, on_step=on_step)
    deployed = _auto_deploy(settings, store, result.final_version) if result.final_version else None
    if json_out:
        print_json({**result.to_dict(), "version": result.final_version, "deployed": deployed})
        return
    out.print(f"final version {result.final_version}: "
              + ", ".join(f"{s.component} {s.status}" for s in result.steps)
              + f"; MLflow parent run {result.mlflow_run_id}")
    if deployed:
        out.print(f"deployed {deployed['version']} (was {deployed['previous'] or 'none'})")


def _auto_deploy(settings: Any, store: Any, version: str) -> dict[str, Any] | None:
    if not settings.deployment.auto_deploy_on_success:
        return None
    from ..deployment import deploy

    message(f"AUTO_DEPLOY_ON_SUCCESS: deploying {version}")
    return deploy(store, settings, version, reason="auto deploy after training").to_dict()


def _train_knowledge(settings: Any, store: Any, documents: Path | None, incremental: bool, source: str | None,
                     json_out: bool) -> dict[str, Any]:
    """Build the knowledge base: a new version carrying over the source version's other components."""
    from ..knowledge import DEFAULT_DOCUMENTS_OUTPUT, train_knowledge_base

    with log_to(settings.paths.logs / "training.log"), RichProgress() as progress:
        result = train_knowledge_base(settings, documents or DEFAULT_DOCUMENTS_OUTPUT, store, listener=progress,
                                      incremental=incremental, source=source)
    if not json_out:
        _render_knowledge(result)
    return result.to_dict()


def _render_knowledge(result: Any) -> None:
    out.print(f"knowledge base {result.version.name}: {result.documents} documents, {result.chunks} chunks "
              f"({result.embedded_chunks} embedded, {result.reused_chunks} reused"
              f"{', incremental' if result.incremental else ''}) in {result.build_seconds:.1f}s")
    message(f"carried over the other components of {result.source}" if result.source
            else "the registry was empty: this version holds only the knowledge base")


def _train_component(component: str, settings: Any, store: Any, data: Path | None, force: bool,
                     source: str | None, json_out: bool) -> dict[str, Any]:
    """Train the entity extractor or the sentiment model: a new version carrying over the other components of
    ``source`` (default: deployed, else newest). ``data`` (--data) is a prepared directory or a .jsonl file;
    default: what `hotelbot prepare --entities/--sentiment` wrote (data/entities, data/sentiment)."""
    from ..entities import default_data_dir
    from ..errors import DataError
    from ..training import AlreadyTrainedError

    if component == "entities":
        from ..entities import train_entities as train_fn
    else:
        from ..sentiment import train_sentiment as train_fn
    path = Path(data) if data is not None else default_data_dir(settings, component)
    if not path.exists():
        sample = "entidades_es" if component == "entities" else "sentimiento_es"
        raise DataError(f"no {component} data in {path}",
                        hint=f"run `hotelbot prepare --{component} datasets/{sample}.jsonl` or pass --data")
    try:
        with log_to(settings.paths.logs / "training.log"), RichProgress() as progress:
            result = train_fn(settings, path, store, listener=progress, force=force, source=source)
    except AlreadyTrainedError as exc:
        if not json_out:
            message(exc.message)
        return {"component": component, "version": exc.version, "skipped": True, "reason": exc.message}
    if not json_out:
        _render_component(result)
    return result.to_dict()


def _render_component(result: Any) -> None:
    m = result.metrics
    out.print(f"trained {result.component} {result.version.name} in {result.duration_seconds:.1f}s: "
              f"{m['metric']} {m['overall_score']:.4f}; components "
              f"{', '.join(result.version.metadata.get('components') or [])}"
              + (f" (carried over from {result.carried_from})" if result.carried_from else ""))
    if result.component == "entities":
        out.print("  F1 per type: " + "  ".join(f"{k} {v['f1']:.3f}" for k, v in m["per_type"].items()))
    message(f"saved to {result.version.path}; MLflow run {result.mlflow_run_id}")


def _train_generator(settings: Any, store: Any, data: Path | None, force: bool, source: str | None,
                     json_out: bool) -> dict[str, Any]:
    """Train the response generator: a new version carrying over the source version's other components."""
    from ..generation import default_data_path, train_generator
    from ..training import AlreadyTrainedError

    try:
        with log_to(settings.paths.logs / "training.log"), RichProgress() as progress:
            result = train_generator(settings, Path(data) if data else default_data_path(settings), store,
                                     listener=progress, force=force, source=source)
    except AlreadyTrainedError as exc:
        if not json_out:
            message(exc.message)
        return {"component": "generator", "version": exc.version, "skipped": True, "reason": exc.message}
    if not json_out:
        _render_generator(result)
    return result.to_dict()


def _render_generator(result: Any) -> None:
    g, b = result.metrics["generator"], result.metrics["retrieval_baseline"]
    out.print(f"trained generator {result.version.name} in {result.duration_seconds:.1f}s: BLEU {g['bleu']:.2f} "
              f"ROUGE-L {g['rouge_l']:.4f} perplexity {g['perplexity']:.2f} relevance {g['relevance']:.4f} "
              f"(retrieval-only baseline: BLEU {b['bleu']:.2f} ROUGE-L {b['rouge_l']:.4f} "
              f"relevance {b['relevance']:.4f})")
