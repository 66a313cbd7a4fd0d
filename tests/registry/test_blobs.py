"""The content-addressed registry: each content stored once, carry-over and backups by reference, `gc`
(only unreferenced blobs, under the lock, killed mid-way) and `migrate` (a registry in today's earlier
layout: independent copies per version and .tar.gz backups)."""

import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile

import pytest
from typer.testing import CliRunner

from conftest import clone_version
from hotelbot_cli.cli.app import app
from hotelbot_cli.registry.backups import list_backups
from hotelbot_cli.errors import RegistryError
from hotelbot_cli.registry.blobs import disk_usage

runner = CliRunner()
_COUNTER = itertools.count()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def doc(result):
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout)


def inode(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def change_a_file(staged):
    """A clone with one changed file (the validation split): one new blob, everything else shared."""
    path = staged / "data" / "validation.jsonl"
    text = f"hola otra vez {next(_COUNTER)}"  # a different content at every call
    path.write_text(path.read_text("utf-8") + json.dumps({"text": text, "intent": "greeting"}) + "\n", "utf-8")


def only_in(registry, name):
    """sha256s of version ``name`` that no other version holds."""
    mine = set(registry.get(name).manifest.files.values())
    for info in registry.list_versions():
        if info.name != name:
            mine -= set(info.manifest.files.values())
    return mine


# ------------------------------------------------------------------ storing once


def test_a_clone_stores_nothing_again_its_files_are_links_to_the_same_blobs(registry_copy):
    v1, v2 = registry_copy.get("v0001"), registry_copy.get("v0002")
    assert v1.manifest.files == v2.manifest.files
    for rel, sha in v2.manifest.files.items():
        blob = registry_copy.blobs.path(sha)
        assert inode(v1.path / rel) == inode(v2.path / rel) == inode(blob), rel
        assert not os.stat(blob).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # read-only
    before = disk_usage(registry_copy.root)
    v3 = clone_version(registry_copy, "v0001")
    assert registry_copy.last_ingest.stored == 0 and registry_copy.last_ingest.shared == len(v3.manifest.files)
    assert disk_usage(registry_copy.root) - before < 64 * 1024  # a metadata.json, not a model
    assert registry_copy.verify(v3.name) == []


def test_a_changed_file_is_the_only_new_blob(registry_copy):
    v3 = clone_version(registry_copy, "v0001", change_a_file)
    assert registry_copy.last_ingest.stored == 1
    assert len(only_in(registry_copy, v3.name)) == 1
    assert run("verify").exit_code == 0


def test_carry_over_links_the_other_components_files(registry_copy):
    from hotelbot_cli.components.compose import carry_over

    source = registry_copy.get("v0001")
    with registry_copy.staging() as staged:
        merged = carry_over(registry_copy, staged, "knowledge", source="v0001")
        assert merged["carried_over"] == {"from": "v0001", "components": ["classifier"]}
        carried = [p for p in staged.rglob("*") if p.is_file()]
        assert carried
        for path in carried:
            assert inode(path) == inode(source.path / path.relative_to(staged))
        shutil.rmtree(staged)


def test_frozen_word_embeddings_are_one_blob_for_every_version(tiny_data, isolated_env, fast_train_env, tmp_path):
    """Two trainings that keep the word embeddings frozen: their embedding files (safetensors, and int8's own
    quantized data file) are the same blob; the fp32 graph stores no copy at all (it reads the safetensors
    file in place); the trained weights are not shared."""
    assert run("prepare", tiny_data).exit_code == 0
    first = doc(run("train", "--freeze-embeddings", "--epochs", "2", "--json"))
    second = doc(run("train", "--freeze-embeddings", "--epochs", "3", "--json"))
    root = isolated_env / "registry" / "versions"
    a, b = root / first["version"] / "model", root / second["version"] / "model"
    shared = ["embeddings.safetensors", "model.int8.onnx.embeddings.data"]
    for name in shared:
        assert (a / name).is_file(), name
        assert inode(a / name) == inode(b / name), name
    assert not (a / "model.onnx.embeddings.data").exists()
    assert "embeddings.safetensors" in json.loads((a / "runtime.json").read_text())["files"]["onnx-fp32"]
    assert inode(a / "model.safetensors") != inode(b / "model.safetensors")
    assert not (a.parent / "intent_classifier.pt").exists()  # outside formats: `hotelbot export`
    predicted = doc(run("predict", "hola", "--version", second["version"], "--json"))
    assert predicted["model_version"] == second["version"]
    # train --json says what each training stored and shared: the second shares the frozen embeddings
    sizes = {rel: (b / rel).stat().st_size for rel in ("embeddings.safetensors", "model.safetensors")}
    assert first["storage"]["versions"] == [first["version"]] and first["storage"]["shared_bytes"] < sizes[
        "embeddings.safetensors"]
    storage = second["storage"]
    assert storage["versions"] == [second["version"]]
    assert storage["shared_bytes"] >= sizes["embeddings.safetensors"] and storage["stored_bytes"] >= sizes["model.safetensors"]
    stored = sum(p.stat().st_size for p in (isolated_env / "registry" / "blobs").rglob("*") if p.is_file())
    assert first["storage"]["stored_bytes"] + storage["stored_bytes"] == stored  # every blob counted once
    assert storage["registry_bytes"] >= stored
    meta = json.loads((root / second["version"] / "metadata.json").read_text())
    assert meta["storage"]["stored_bytes"] == storage["stored_bytes"]  # also recorded with the version


# ------------------------------------------------------------------ backups by reference


def test_a_backup_pins_a_deleted_versions_blobs_and_rebuilds_it(registry_copy):
    v3 = clone_version(registry_copy, "v0001", change_a_file)
    assert run("deploy", v3.name).exit_code == 0
    deployed = doc(run("deploy", "v0001", "--json"))
    record = deployed["backup"]
    assert record["version"] == v3.name and record["kind"] == "pinned"
    assert (registry_copy.backup_dir / record["record"]).is_file()
    assert record["stored_bytes"] < 256 * 1024  # the record: a file list and the metadata, no model bytes
    unique = only_in(registry_copy, v3.name)
    shutil.rmtree(v3.path)  # the version directory is gone
    assert doc(run("gc", "--json"))["removed"] == []  # the backup keeps its blobs
    assert all(registry_copy.blobs.has(sha) for sha in unique)
    result = run("rollback", "--to", v3.name, "--json")
    assert result.exit_code == 0, result.output
    assert doc(result)["restored_from_backup"] is True
    assert registry_copy.verify(v3.name) == []
    assert run("verify").exit_code == 0


def test_deploy_away_from_a_corrupt_version_works_without_a_backup(registry_copy):
    assert run("deploy", "v0001").exit_code == 0
    v3 = clone_version(registry_copy, "v0001", change_a_file)
    path = registry_copy.get("v0001").path / "training_history.json"
    path.unlink()
    path.write_text("{}")  # a replaced file: v0001 fails its checksum
    result = run("deploy", v3.name, "--json")
    assert result.exit_code == 0, result.output
    assert "checksum" in doc(result)["backup"]["skipped"]
    assert list_backups(registry_copy) == []


# ------------------------------------------------------------------ gc


def test_gc_removes_only_what_nothing_refers_to(registry_copy):
    v3 = clone_version(registry_copy, "v0001", change_a_file)
    (unique,) = only_in(registry_copy, v3.name)
    assert doc(run("gc", "--json"))["removed"] == []
    shutil.rmtree(v3.path)  # a version deleted by hand
    dry = doc(run("gc", "--dry-run", "--json"))
    assert [b["sha256"] for b in dry["removed"]] == [unique] and dry["dry_run"] is True
    assert registry_copy.blobs.has(unique)  # --dry-run changed nothing
    done = doc(run("gc", "--json"))
    assert [b["sha256"] for b in done["removed"]] == [unique] and done["removed_bytes"] > 0
    assert not registry_copy.blobs.has(unique)
    assert run("verify").exit_code == 0
    assert doc(run("predict", "hola", "--version", "v0002", "--json"))["model_version"] == "v0002"


def test_gc_keeps_the_blobs_a_running_build_carries_over(registry_copy):
    v3 = clone_version(registry_copy, "v0001", change_a_file)
    (unique,) = only_in(registry_copy, v3.name)
    with registry_copy.staging() as staged:  # a train in progress carrying v0003's file over
        os.link(v3.path / "data" / "validation.jsonl", staged / "validation.jsonl")
        shutil.rmtree(v3.path)
        assert doc(run("gc", "--json"))["removed"] == []
        assert staged.is_dir()  # gc's repair leaves a live build alone
    assert [b["sha256"] for b in doc(run("gc", "--json"))["removed"]] == [unique]  # abandoned: now garbage


def test_gc_waits_for_the_registry_lock(registry_copy):
    from hotelbot_cli.registry.maintenance import collect_garbage

    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"h = open({str(registry_copy.root / '.lock')!r}, 'a+b')\n"
        "fcntl.flock(h.fileno(), fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RegistryError, match="another hotelbot process"):
            collect_garbage(registry_copy, timeout=0.3)
    finally:
        holder.kill()
        holder.wait()
    assert collect_garbage(registry_copy, timeout=5).removed == []


def test_gc_killed_midway_leaves_a_registry_the_next_gc_finishes(registry_copy):
    doomed = []
    for _ in range(3):
        version = clone_version(registry_copy, "v0001", change_a_file)
        doomed += only_in(registry_copy, version.name)
        shutil.rmtree(version.path)
    assert len(doomed) == 3
    env = {**os.environ, "HOTELBOT_TEST_CRASH_AT": "mid-gc"}
    proc = subprocess.run([sys.executable, "-m", "hotelbot_cli", "gc"], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert sum(registry_copy.blobs.has(sha) for sha in doomed) == 2  # killed after the first removal
    assert run("verify").exit_code == 0
    assert len(doc(run("gc", "--json"))["removed"]) == 2
    assert run("verify").exit_code == 0


def test_a_publish_killed_after_storing_blobs_leaves_garbage_gc_collects(registry_copy):
    script = (  # what a train does at its end: stage the version's files, publish
        "import shutil\n"
        "from hotelbot_cli.registry import ModelRegistry\n"
        f"registry = ModelRegistry({str(registry_copy.root)!r})\n"
        "with registry.staging() as staged:\n"
        "    shutil.copytree(registry.get('v0001').path / 'data', staged / 'data')\n"
        "    (staged / 'data' / 'extra.jsonl').write_text('{}')\n"
        "    registry.publish(staged, {'components': ['classifier']})\n")
    env = {**os.environ, "HOTELBOT_TEST_CRASH_AT": "before-publish"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [v.name for v in registry_copy.list_versions()] == ["v0001", "v0002"]  # old state
    removed = doc(run("gc", "--json"))
    assert any("staging" in note for note in removed["repaired"])
    assert len(removed["removed"]) == 1  # the one new blob the dead build stored
    assert run("verify").exit_code == 0


# ------------------------------------------------------------------ migrate


def legacy_layout(registry, tmp_path):
    """Turn ``registry`` into the layout earlier releases wrote: every version file its own copy, no blob
    store, a v0001 that also holds intent_classifier.pt, and a .tar.gz backup of v0002."""
    from hotelbot_cli.modeling import load_classifier, save_torch_file

    def add_pt(staged):
        model, _ = load_classifier(staged / "model")
        save_torch_file(model, staged / "intent_classifier.pt")

    with_pt = clone_version(registry, "v0001", add_pt)
    for info in registry.list_versions():
        for rel in info.manifest.files:
            path = info.path / rel
            data = path.read_bytes()
            path.unlink()
            path.write_bytes(data)
    shutil.rmtree(registry.root / "blobs")
    backup_dir = registry.root / "backup"
    backup_dir.mkdir()
    archive = backup_dir / "b00001-v0002.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(registry.get("v0002").path, arcname="v0002")
    from hotelbot_cli._io import sha256_file

    (backup_dir / "b00001-v0002.json").write_text(json.dumps({
        "id": "b00001", "version": "v0002", "created_at": "2026-12-01T10:00:00+00:00", "reason": "before deploying v0003",
        "archive": archive.name, "sha256": sha256_file(archive), "size_bytes": archive.stat().st_size,
        "files": registry.get("v0002").manifest.files, "metrics": {}}))
    return with_pt


def test_a_registry_in_the_earlier_layout_works_as_it_is_and_migrates(registry_copy, tmp_path):
    with_pt = legacy_layout(registry_copy, tmp_path)
    v1, v2 = registry_copy.get("v0001"), registry_copy.get("v0002")
    assert inode(v1.path / "model/model.safetensors") != inode(v2.path / "model/model.safetensors")
    # read as it is: predict, verify, deploy, rollback
    assert run("verify").exit_code == 0
    assert doc(run("predict", "hola", "--version", with_pt.name, "--json"))["model_version"] == with_pt.name
    assert run("deploy", "v0001").exit_code == 0
    listing = doc(run("versions", "--json"))
    assert [b["kind"] for b in listing["backups"]] == ["archive"]

    before = disk_usage(registry_copy.root)
    dry = doc(run("migrate", "--dry-run", "--json"))
    assert dry["changed"] and dry["bytes_freed"] > 0 and dry["backups_converted"] == ["b00001-v0002.tar.gz"]
    assert disk_usage(registry_copy.root) == before and not (registry_copy.root / "blobs").exists()

    done = doc(run("migrate", "--json"))
    assert done["problems"] == [] and done["bytes_freed"] == dry["bytes_freed"]
    assert done["registry_bytes_after"] < done["registry_bytes_before"]
    assert inode(v1.path / "model/model.safetensors") == inode(v2.path / "model/model.safetensors")
    assert (with_pt.path / "intent_classifier.pt").is_file()  # versions stay byte for byte what they were
    assert not (registry_copy.backup_dir / "b00001-v0002.tar.gz").exists()
    assert [b["kind"] for b in list_backups(registry_copy)] == ["pinned"]
    assert run("verify").exit_code == 0
    again = doc(run("migrate", "--json"))
    assert not again["changed"] and again["already_stored"] == again["files"]

    shutil.rmtree(v2.path)  # the converted backup still rebuilds its version
    result = run("rollback", "--to", "v0002", "--json")
    assert result.exit_code == 0, result.output
    assert doc(result)["restored_from_backup"] is True and registry_copy.verify("v0002") == []


def test_migrate_leaves_a_corrupt_file_alone_and_says_so(registry_copy, tmp_path):
    legacy_layout(registry_copy, tmp_path)
    path = registry_copy.get("v0002").path / "model" / "classifier.json"
    path.write_text(path.read_text("utf-8") + " ")
    result = run("migrate", "--json")
    assert result.exit_code == 1
    problems = doc(result)["problems"]
    assert problems == ["v0002/model/classifier.json: fails its recorded checksum; left as it is"]
    assert registry_copy.verify("v0001") == []


# ------------------------------------------------------------------ prune


def test_prune_deletes_old_versions_frees_only_their_files_and_never_reuses_a_number(registry_copy):
    v3 = clone_version(registry_copy, "v0001", change_a_file)
    v4 = clone_version(registry_copy, "v0001", change_a_file)
    mine = only_in(registry_copy, v3.name) | only_in(registry_copy, v4.name)
    assert run("deploy", "v0002").exit_code == 0
    dry = doc(run("prune", "--keep", "1", "--dry-run", "--json"))
    assert dry["deleted"] == ["v0001", "v0003"] and dry["kept"] == ["v0002", "v0004"]  # the deployed one stays
    assert dry["protected"] == {"v0002": "deployed"} and dry["freed_bytes"] > 0
    assert [v.name for v in registry_copy.list_versions()] == ["v0001", "v0002", "v0003", "v0004"]  # unchanged
    done = doc(run("prune", "v0003", "v0004", "--reason", "superseded", "--json"))
    assert done["deleted"] == ["v0003", "v0004"] and done["freed_bytes"] > 0 and not done["dry_run"]
    assert [v.name for v in registry_copy.list_versions()] == ["v0001", "v0002"]
    assert not any(registry_copy.blobs.has(sha) for sha in mine)  # their own files are gone
    assert run("verify").exit_code == 0  # the others are whole
    assert doc(run("predict", "hola", "--json"))["model_version"] == "v0002"
    events = doc(run("history", "--json"))["events"]
    assert [(e["event"], e["from"], e["reason"]) for e in events[-2:]] == [
        ("delete", "v0003", "superseded"), ("delete", "v0004", "superseded")]
    assert clone_version(registry_copy, "v0001").name == "v0005"  # v0004's number is never given again


@pytest.mark.parametrize("args, message", [
    (["v0002"], "v0002 is deployed: it is never pruned"),
    (["v0001", "v0009"], "version v0009 not found"),
    (["../v0001"], "invalid version name"),
    ([], "nothing to prune"),
])
def test_prune_refuses_protected_unknown_or_no_versions_and_deletes_nothing(registry_copy, args, message):
    assert run("deploy", "v0002").exit_code == 0
    before = sorted(p.name for p in registry_copy.root.rglob("*"))
    result = run("prune", *args)
    assert result.exit_code != 0 and message in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line (and its hint)
    assert sorted(p.name for p in registry_copy.root.rglob("*")) == before


def test_prune_keeps_the_rollback_target_and_a_backup_still_rebuilds_a_pruned_version(registry_copy):
    clone_version(registry_copy, "v0001", change_a_file)
    for version in ("v0002", "v0001", "v0003"):  # each deploy backs up the one before: v0002, then v0001
        assert run("deploy", version, "--tolerance", "1").exit_code == 0
    done = doc(run("prune", "--keep", "0", "--json"))
    assert done["deleted"] == ["v0002"]
    assert done["protected"] == {"v0003": "deployed", "v0001": "the rollback target (what `hotelbot rollback` returns to)"}
    assert list(done["pinned_by_backups"]) == ["v0002"]  # its files stay while that backup pins them
    assert [v.name for v in registry_copy.list_versions()] == ["v0001", "v0003"]
    assert run("rollback", "--to", "v0002").exit_code == 0  # rebuilt from its backup
    assert doc(run("predict", "hola", "--json"))["model_version"] == "v0002"
    assert run("verify").exit_code == 0


@pytest.mark.parametrize("crash_at, left", [("mid-prune", ["v0001", "v0002", "v0003"]),
                                            ("after-prune-rename", ["v0001", "v0002"])])
def test_prune_killed_midway_leaves_a_registry_the_next_writer_finishes(registry_copy, crash_at, left):
    v3 = clone_version(registry_copy, "v0001", change_a_file)
    (unique,) = only_in(registry_copy, v3.name)
    env = {**os.environ, "HOTELBOT_TEST_CRASH_AT": crash_at}
    proc = subprocess.run([sys.executable, "-m", "hotelbot_cli", "prune", "v0003", "-r", "old"], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert [v.name for v in registry_copy.list_versions()] == left  # v0003 whole, or gone: never half
    assert run("verify").exit_code == 0
    # a train publishing before any repair never takes the number of a version being deleted
    assert clone_version(registry_copy, "v0001").name == "v0004"
    if "v0003" in left:
        assert doc(run("prune", "v0003", "--json"))["deleted"] == ["v0003"]
    else:
        assert "finished deleting v0003" in doc(run("gc", "--json"))["repaired"]
    events = [e for e in doc(run("history", "--json"))["events"] if e["event"] == "delete"]
    assert [e["from"] for e in events] == ["v0003"]  # recorded once, either way
    assert not registry_copy.blobs.has(unique)
    assert not list((registry_copy.root / ".staging").iterdir())
    assert clone_version(registry_copy, "v0001").name == "v0005"


def test_prune_keep_more_than_there_are_deletes_nothing_and_a_corrupt_version_can_be_pruned(registry_copy):
    clone_version(registry_copy, "v0001", change_a_file)
    for keep in ("3", "4", "50"):
        assert doc(run("prune", "--keep", keep, "--json"))["deleted"] == []
    assert [v.name for v in registry_copy.list_versions()] == ["v0001", "v0002", "v0003"]
    (registry_copy.get("v0002").path / "metadata.json").unlink()  # a broken version: prune gets rid of it
    assert doc(run("prune", "v0002", "--json"))["deleted"] == ["v0002"]
    assert [v.name for v in registry_copy.list_versions()] == ["v0001", "v0003"]
    assert run("verify").exit_code == 0
