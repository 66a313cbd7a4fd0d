import json
import os

import pytest

from hotelbot_cli.errors import IntegrityError, RegistryError, VersionNotFoundError
from hotelbot_cli.registry import ModelRegistry, check_version_name
from hotelbot_cli._io import atomic_write_json


def publish(reg, payload=b"weights"):
    with reg.staging() as staged:
        (staged / "model").mkdir()
        (staged / "model" / "w.bin").write_bytes(payload)
        return reg.publish(staged, {"metrics": {"overall_score": 0.9}})


def test_publish_numbers_versions_and_records_checksums(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    a, b = publish(reg), publish(reg, b"other")
    assert (a.name, b.name) == ("v0001", "v0002")
    assert set(b.metadata["files"]) == {"model/w.bin"}
    assert reg.latest().name == "v0002"
    assert reg.resolve(None).name == "v0002"  # nothing deployed: newest
    assert not list((tmp_path / "reg" / ".staging").iterdir())


def test_failed_build_leaves_nothing(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(RuntimeError):
        with reg.staging() as staged:
            (staged / "half").write_bytes(b"x")
            raise RuntimeError("crash mid-build")
    assert reg.list_versions() == []
    assert not list((tmp_path / "reg" / ".staging").iterdir())


@pytest.mark.parametrize("name", ["../etc", "v0001/../../x", "/abs", "v1", "v0001/", "latest/..", "", "V0001"])
def test_user_names_never_escape_the_root(tmp_path, name):
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError):
        reg.get(name)
    with pytest.raises(RegistryError):
        check_version_name(name)


def test_resolve_aliases_and_missing(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(VersionNotFoundError, match="no versions"):
        reg.resolve(None)
    publish(reg)
    assert reg.resolve("latest").name == "v0001"
    with pytest.raises(VersionNotFoundError, match="no version is deployed"):
        reg.resolve("current")
    with pytest.raises(VersionNotFoundError, match="v0009 not found"):
        reg.resolve("v0009")


def test_verify_detects_flipped_byte_missing_and_added_files(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    info = publish(reg, b"\x00" * 64)
    assert reg.verify("v0001") == []
    weights = info.path / "model" / "w.bin"
    data = bytearray(weights.read_bytes())
    data[10] ^= 0x01
    weights.write_bytes(bytes(data))
    assert any("checksum mismatch" in p for p in reg.verify("v0001"))
    with pytest.raises(IntegrityError):
        reg.require_intact("v0001")
    (info.path / "extra.txt").write_text("x")
    weights.unlink()
    problems = reg.verify("v0001")
    assert any("missing" in p for p in problems) and any("not recorded" in p for p in problems)


def test_lock_is_exclusive(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    with reg.lock():
        with pytest.raises(RegistryError, match="another hotelbot process"):
            with ModelRegistry(tmp_path / "reg").lock(blocking=False):
                pass


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    import hotelbot_cli._io as atomic

    folder = tmp_path / "meta"
    target = folder / "meta.json"
    atomic_write_json(target, {"ok": 1})

    def failing_replace(src, dst):
        assert os.path.exists(src)  # the temp file was fully written next to the target
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"new": 2})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert os.listdir(folder) == ["meta.json"]


def test_history_and_validation_records(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    publish(reg)
    reg.record_validation("v0001", {"overall_score": 0.5})
    assert reg.validation_of("v0001") == {"overall_score": 0.5}
    reg.append_history({"event": "deploy", "to": "v0001"})
    line = json.loads((tmp_path / "reg" / "history.jsonl").read_text().splitlines()[0])
    assert line["event"] == "deploy" and "at" in line and "user" in line
