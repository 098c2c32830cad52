"""Local sources, unpacking through the manager, verify, clear and prefetch."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from flowmas.errors import AssetNotCachedError, ConfigurationError, SourceNotFoundError, UnsafeArchiveError


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_local_file_is_copied_and_relative_paths_follow_the_project(tmp_path, make_manager):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "w.bin").write_bytes(b"weights")
    manager = make_manager([{"name": "w", "source": {"type": "local", "path": "data/w.bin"}}])
    path = manager.download("w").path
    assert path.read_bytes() == b"weights" and path.name == "w.bin"
    assert path.stat().st_ino != (tmp_path / "data" / "w.bin").stat().st_ino


def test_local_file_hardlinked_when_asked(tmp_path, make_manager):
    (tmp_path / "w.bin").write_bytes(b"weights")
    manager = make_manager([{"name": "w", "source": {"type": "local", "path": "w.bin", "hardlink": True}}])
    assert manager.download("w").path.stat().st_ino == (tmp_path / "w.bin").stat().st_ino


def test_local_directory_is_copied_with_a_file_manifest(tmp_path, make_manager):
    (tmp_path / "index" / "shards").mkdir(parents=True)
    (tmp_path / "index" / "meta.json").write_text("{}")
    (tmp_path / "index" / "shards" / "0.bin").write_bytes(b"0" * 100)
    manager = make_manager([{"name": "idx", "asset_type": "index", "source": {"type": "local", "path": "index"}}])
    path = manager.download("idx").path
    assert path.is_dir() and (path / "shards" / "0.bin").read_bytes() == b"0" * 100
    assert manager.verify("idx").ok
    (path / "shards" / "0.bin").write_bytes(b"1" * 100)
    result = manager.verify("idx")
    assert result.status == "failed" and "shards/0.bin" in result.detail


def test_missing_local_path_says_where_it_looked(tmp_path, make_manager):
    manager = make_manager([{"name": "w", "source": {"type": "local", "path": "nope.bin"}}])
    with pytest.raises(SourceNotFoundError, match=str(tmp_path / "nope.bin")):
        manager.download("w")


def test_directory_with_checksum_is_a_configuration_error(tmp_path, make_manager):
    (tmp_path / "dir").mkdir()
    manager = make_manager([{"name": "w", "source": {"type": "local", "path": "dir"},
                             "checksum": "sha256:" + "0" * 64}])
    with pytest.raises(ConfigurationError, match="is a directory"):
        manager.download("w")


def test_zip_is_unpacked_into_the_version_directory(tmp_path, make_manager):
    archive = make_zip(tmp_path / "prompts.zip", {"a.txt": b"A", "sub/b.txt": b"B"})
    checksum = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    manager = make_manager([{"name": "prompts", "asset_type": "template", "checksum": checksum, "unpack": True,
                             "source": {"type": "local", "path": "prompts.zip"}}])

    path = manager.download("prompts").path

    assert path == manager.cache.entry_dir(manager.asset("prompts")) / "data"
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) == ["a.txt", "sub", "sub/b.txt"]
    assert (path / "a.txt").read_text() == "A" and (path / "sub" / "b.txt").read_text() == "B"
    assert manager.get_asset_path_sync("prompts") == path  # a hit on a directory, no re-hash
    assert manager.verify("prompts").ok


def test_unpack_destination_is_file_returns_the_single_file(tmp_path, make_manager):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("./model.onnx")
        info.size = 5
        archive.addfile(info, io.BytesIO(b"onnx!"))
    (tmp_path / "model.tar.gz").write_bytes(buffer.getvalue())
    manager = make_manager([{"name": "m", "unpack": True, "unpack_destination_is_file": True,
                             "source": {"type": "local", "path": "model.tar.gz"}}])
    path = manager.download("m").path
    assert path.name == "model.onnx" and path.read_bytes() == b"onnx!"
    assert manager.get_asset_path_sync("m") == path


def test_malicious_archive_is_refused_and_nothing_is_left(tmp_path, make_manager, cache_dir):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        link = tarfile.TarInfo("lnk")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "outside")
        archive.addfile(link)
        payload = tarfile.TarInfo("lnk/pwned.txt")
        payload.size = 3
        archive.addfile(payload, io.BytesIO(b"bad"))
    (tmp_path / "evil.tar").write_bytes(buffer.getvalue())
    (tmp_path / "outside").mkdir()
    manager = make_manager([{"name": "evil", "unpack": True, "source": {"type": "local", "path": "evil.tar"}}])

    with pytest.raises(UnsafeArchiveError) as info:
        manager.download("evil")

    assert info.value.member == "lnk"
    assert list((tmp_path / "outside").iterdir()) == []
    name_dir = cache_dir / "model" / "evil"
    assert list(name_dir.iterdir()) == []  # no entry, no part, no staging
    assert manager.status("evil").status == "not cached"


def test_clear_removes_entry_and_require_cached_says_what_to_do(tmp_path, make_manager):
    (tmp_path / "w.bin").write_bytes(b"w")
    manager = make_manager([{"name": "w", "source": {"type": "local", "path": "w.bin"}}])
    manager.download("w")
    assert manager.clear("w") is True
    assert manager.clear("w") is False
    with pytest.raises(AssetNotCachedError, match="flowmas assets download w"):
        manager.require_cached("w")


def test_clear_all_removes_undeclared_entries_and_leftovers(tmp_path, make_manager, cache_dir):
    (tmp_path / "w.bin").write_bytes(b"w")
    manager = make_manager([{"name": "w", "source": {"type": "local", "path": "w.bin"}}])
    manager.download("w")
    stray = cache_dir / "model" / "old" / "1"
    stray.mkdir(parents=True)
    part = manager.cache.part_path(manager.asset("w"))
    part.parent.mkdir(parents=True)
    part.write_bytes(b"partial")
    assert manager.clear_all() == 2
    assert [p for p in cache_dir.rglob("*") if p.is_file() and ".locks" not in p.parts] == []


async def test_prefetch_fetches_an_agents_required_assets(tmp_path, make_manager):
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "b.bin").write_bytes(b"b")
    manager = make_manager(
        [{"name": "a", "source": {"type": "local", "path": "a.bin"}},
         {"name": "b", "source": {"type": "local", "path": "b.bin"}}],
        agents={"reader": {"module": "agents.reader", "class": "Reader", "required_assets": ["a", "b"]}},
    )
    paths = await manager.prefetch("reader")
    assert {name: p.read_bytes() for name, p in paths.items()} == {"a": b"a", "b": b"b"}
    assert manager.prefetch_sync("reader") == paths


def test_select_keeps_the_given_order_defaults_to_all_and_rejects_unknown_names(tmp_path, make_manager):
    from flowmas.errors import UnknownAssetError

    manager = make_manager([{"name": "a", "source": {"type": "local", "path": "a.bin"}},
                            {"name": "b", "source": {"type": "local", "path": "b.bin"}}])
    assert [a.name for a in manager.select()] == ["a", "b"]
    assert [a.name for a in manager.select(["b", "a"])] == ["b", "a"]
    with pytest.raises(UnknownAssetError, match="Declared assets: a, b"):
        manager.select(["a", "ghost"])
