"""The entity extractor: a BIO token classifier (dates, nights, guests, room type, ...) whose offsets index
the guest's raw text. Its files live in ``entities/`` of a version, its summary in ``metadata["entities"]``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ...errors import HotelbotError
from ..base import ComponentResult, SplitComponent, TrainRequest, labels_report_section, usable_confidence
from ..nlu import JointHead
from .tagger import (
    CONFIG_FILE,
    DATA_SUBDIR,
    ENTITIES_DIR,
    EXPERIMENT,
    METRIC,
    EntityExtractor,
    entity_model_dir,
    evaluate_entities,
    prepare_entities,
    read_prepared_entities,
    write_prepared_entities,
)

if TYPE_CHECKING:
    from ...config import Settings
    from ...registry import VersionInfo

PERSON = "PERSON"  # the entity type of person names: `serve --capture` masks them


class EntityExtractorComponent(JointHead, SplitComponent):
    name = "entities"
    model_type = "entities"
    distributed = True  # fits on the Trainer: torchrun / accelerate launch
    kind = "entity-extractor"
    experiment = EXPERIMENT
    description = "entity extractor (BIO token classifier)"
    paths = (ENTITIES_DIR,)
    prepare_hint = "hotelbot prepare --entities FILE"
    sample = "entidades_es"
    metric = METRIC
    gated = True
    analyzes = True
    export_formats = ("hf", "onnx")

    def prepare_split(self, path: Path, validation_split: float, seed: int) -> Any:
        return prepare_entities(path, validation_split, seed)

    def write_split(self, prepared: Any, target: Path) -> None:
        write_prepared_entities(prepared, target)

    def fit_and_publish(self, request: TrainRequest, data: Path) -> ComponentResult:
        from .train import train_entities  # (the same package) the fit and the export: on use

        return train_entities(
            request.settings,
            data,
            request.registry,
            listener=request.listener,
            force=request.force,
            source=request.source,
        )

    def score(self, info: VersionInfo, settings: Settings) -> dict[str, Any]:
        return evaluate_entities(info, extractor=self.load(info, settings))

    def score_view(self, metrics: dict[str, Any], gate: str) -> dict[str, Any]:
        m = metrics
        return {
            "line": f"entities on {m['num_sentences']} sentences ({m['data_source']}): micro P/R/F1 "
            f"{m['micro_precision']:.4f}/{m['micro_recall']:.4f}/{m['micro_f1']:.4f}  macro-F1 "
            f"{m['macro_f1']:.4f}  {gate}",
            "table": {
                "title": "per entity type (exact match)",
                "columns": ["entity type", "precision", "recall", "F1", "support"],
                "rows": [
                    [label, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", str(s["support"])]
                    for label, s in m["per_type"].items()
                ],
            },
        }

    def smoke(self, info: VersionInfo, settings: Settings, texts_count: int) -> dict[str, Any]:
        examples = read_prepared_entities(info.path / ENTITIES_DIR / DATA_SUBDIR).validation[:texts_count]
        texts = [e.text for e in examples] or ["Soy Ana, de la habitación 305"]
        extractor = self.load(info, settings)
        found = extractor.extract(texts)
        for text, entities in zip(texts, found):
            for ent in entities:
                if (
                    not (0 <= ent["start"] < ent["end"] <= len(text))
                    or text[ent["start"] : ent["end"]] != ent["text"]
                    or ent["type"] not in extractor.config.labels
                    or not usable_confidence(ent["confidence"])
                ):
                    raise HotelbotError(f"{info.name} returned an unusable entity for {text!r}: {ent}")
        gold = sum(len(e.entities) for e in examples)
        hits = sum(len(e.gold() & {(x["type"], x["start"], x["end"]) for x in f}) for e, f in zip(examples, found))
        return {"texts": len(texts), "found": sum(map(len, found)), "gold": gold, "correct": hits}

    def load_own(self, info: VersionInfo) -> Any:
        from .onnx import load_version_extractor  # (the same package) its runtime: on use

        return load_version_extractor(info)

    def joint_view(self, runner: Any) -> Any:
        from ..nlu.runtime import JointEntities  # on use: a joint version only (it imports the entity tagger)

        return JointEntities(runner)

    def export(self, info: VersionInfo, fmt: str, target: Path, settings: Settings) -> dict[str, Any]:
        self.refuse_joint_export(info, fmt)
        # the export's machinery: on use
        from ..exporting import onnx_runtime_export, onnx_tagger_card, save_encoder_with_head, token_classifier_card

        if fmt == "onnx":
            model_dir = entity_model_dir(info)
            graphs = onnx_runtime_export(model_dir, target, [CONFIG_FILE], "entity extractor", info.name)
            config = json.loads((target / CONFIG_FILE).read_text("utf-8"))
            return onnx_tagger_card(target, graphs, config, CONFIG_FILE, info.name)
        extractor = EntityExtractor.from_version(info)  # the weights, whatever serves
        model, config = extractor.model, extractor.config
        head = {
            "task": "token-classification",
            "labels": list(config.labels),
            "tags": list(config.tags),
            "max_length": config.max_length,
            "prefix": config.prefix,
            "alignment": config.alignment,
            "base_model": config.base_model,
            "version": info.name,
        }
        model_type = model.encoder.config.model_type
        return save_encoder_with_head(
            target,
            model.encoder,
            extractor.tokenizer,
            model.head,
            head,
            token_classifier_card("entity extractor", target.name, head, model_type, info.name),
        )

    def empty_analysis(self) -> dict[str, Any]:
        return {"entities": []}

    def analysis_text(self, row: dict[str, Any]) -> str:
        return "".join(f"\t{e['type']}={e['text']!r}" for e in row["entities"])

    def analyze(
        self, loaded: Any, texts: Sequence[str], rows: list[dict[str, Any]], *, top_k: int, batch_size: int
    ) -> None:
        for row, found in zip(rows, loaded.extract(texts, batch_size=batch_size)):
            row["entities"] = found

    def person_spans(self, loaded: Any, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        return [[(e["start"], e["end"]) for e in found if e["type"] == PERSON] for found in loaded.extract(texts)]

    def report_section(self, path: Path, metadata: dict[str, Any]) -> dict[str, Any] | None:
        return labels_report_section(path, metadata.get(self.name), self.name, "per_type")


__all__ = ["EntityExtractorComponent"]
