"""The typed version manifest reads every metadata.json the registry has ever written: the on-disk format
did not change, and versions older than the "components" / "carried_over" keys still load, verify, carry
over and deploy."""

import shutil

from hotelbot_cli.components.compose import carry_over, components_of
from hotelbot_cli.config import load_settings
from hotelbot_cli.pipeline.deploy import deploy, smoke_check
from hotelbot_cli.registry import CarriedOver, Manifest

# metadata.json of a classifier version as the first releases wrote it (before components existed)
OLD_METADATA = {
    "kind": "intent-classifier", "labels": ["greeting", "out_of_scope"], "out_of_scope_threshold": 0.4,
    "dataset_fingerprint": "ab" * 32, "config": {"training_config": {"epochs": 4}},
    "metrics": {"macro_f1": 0.9, "overall_score": 0.9, "metric": "macro_f1"},
    "files": {"model/model.safetensors": "00" * 32, "metrics.json": "11" * 32},
    "version": "v0007", "created_at": "2026-11-01T10:00:00+00:00",
}


def test_a_manifest_without_the_newer_keys_reads_as_empty_defaults():
    manifest = Manifest(OLD_METADATA)
    assert manifest.version == "v0007" and manifest.created_at == "2026-11-01T10:00:00+00:00"
    assert manifest.files == OLD_METADATA["files"] and manifest.kind == "intent-classifier"
    assert manifest.components is None  # components are then recognised by their files
    assert manifest.carried_over == CarriedOver(None, ()) and manifest.parent is None
    assert not manifest.corrupt and Manifest({"version": "v0001", "corrupt": True}).corrupt
    assert manifest.summary("entities") == {} and manifest.summary("config") == {"training_config": {"epochs": 4}}


def test_the_new_keys_are_typed():
    manifest = Manifest({"components": ["classifier", "sentiment"], "parent": "v0002",
                         "carried_over": {"from": "v0002", "components": ["classifier"]}})
    assert manifest.components == ["classifier", "sentiment"] and manifest.parent == "v0002"
    assert manifest.carried_over == CarriedOver("v0002", ("classifier",))
    assert manifest.carried_over.to_dict() == {"from": "v0002", "components": ["classifier"]}


def test_a_version_written_before_components_loads_carries_over_and_deploys(registry_copy):
    registry = registry_copy
    source = registry.get("v0001")
    with registry.staging() as staged:  # v0003: v0001's files with the metadata of the first releases
        shutil.rmtree(staged)
        shutil.copytree(source.path, staged)
        (staged / "metadata.json").unlink()
        old = {k: v for k, v in source.metadata.items()
               if k not in ("version", "files", "created_at", "components", "carried_over", "parent")}
        legacy = registry.publish(staged, old)
    assert "components" not in legacy.metadata and legacy.manifest.components is None
    assert components_of(legacy) == ["classifier"] and registry.verify(legacy.name) == []

    with registry.staging() as staged:
        merged = carry_over(registry, staged, "sentiment", source=legacy.name)
        assert merged["components"] == ["classifier", "sentiment"]
        assert merged["carried_over"] == {"from": legacy.name, "components": ["classifier"]}
        assert (staged / "model" / "model.safetensors").is_file()

    settings = load_settings()
    assert smoke_check(legacy, settings)["texts"] > 0
    assert deploy(registry, settings, legacy.name).version == legacy.name
