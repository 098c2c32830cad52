"""Hostile archives: bombs, lying headers, full disks, and names built to garble a message.

Every archive is real, built here with zipfile/tarfile, and handed to ``unpack_archive`` the way the cache
does: a ``.part`` temp file, an asset name and a source description. Each test checks the error (type, the
``FLOWMAS_*`` setting to change, the asset and source, never the temp file nor a Python name, on one line)
and the state afterwards: ``dest`` does not exist, no temp dir is left beside it, nothing was written outside.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, TypeVar

import pytest

from flowmas.assets.unpack import UnpackLimits, unpack_archive
from flowmas.errors import AssetError, DiskSpaceError, UnpackError, UnsafeArchiveError

MiB = 2**20
SOURCE = "http: https://models.example.com/bombs/m.bin"
PART = "m.bin.latest.0a1b2c3d.part"  # what the cache hands over; no message may show it
INTERNAL = (".part", ".unpack-", "UnpackLimits", "max_total_bytes", "max_members", "max_ratio")

E = TypeVar("E", bound=AssetError)


# --- helpers ----------------------------------------------------------------------------------------


@dataclass
class Scene:
    """`parent` is where dest goes and holds nothing but `outside`; the archives live elsewhere."""

    archives: Path
    parent: Path

    @property
    def dest(self) -> Path:
        return self.parent / "latest"

    @property
    def outside(self) -> Path:
        return self.parent / "outside"

    def on(self, parent: Path) -> Scene:
        """The same archives, unpacked into another file system (a small tmpfs)."""
        (parent / "outside").mkdir()
        return Scene(self.archives, parent)

    def assert_untouched(self) -> None:
        assert not os.path.lexists(self.dest)
        assert [p.name for p in self.parent.iterdir()] == ["outside"]  # no temp dir, no stray file
        assert list(self.outside.iterdir()) == []


@pytest.fixture
def scene(tmp_path: Path) -> Scene:
    (tmp_path / "archives").mkdir()
    (tmp_path / "cache").mkdir()
    return Scene(tmp_path / "archives", tmp_path).on(tmp_path / "cache")


def refused(scene: Scene, archive: Path, fmt: str, error: type[E], **limits: float) -> tuple[E, str]:
    """Unpack as the cache would, expect `error`, check the state and that the message speaks to a user."""
    with pytest.raises(error) as info:
        unpack_archive(
            archive,
            scene.dest,
            fmt,  # type: ignore[arg-type]
            limits=UnpackLimits(**limits),  # type: ignore[arg-type]
            asset="model",
            source=SOURCE,
        )
    scene.assert_untouched()
    message = str(info.value)
    assert info.value.asset == "model"
    assert f"asset 'model' ({SOURCE}, {fmt})" in message
    assert "\n" not in message and "\r" not in message
    for internal in INTERNAL:
        assert internal not in message
    return info.value, message


def zip_of(scene: Scene, members: list[tuple[str, bytes]]) -> Path:
    path = scene.archives / PART
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def tar_of(scene: Scene, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: Literal["w", "w:gz"] = "w") -> Path:
    path = scene.archives / PART
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def sparse_member(name: str, size: int) -> tarfile.TarInfo:
    """A GNU sparse member (PAX format 0.1) of `size` bytes that are all hole: 0 bytes in the archive."""
    info = tarfile.TarInfo(name)
    info.pax_headers = {"GNU.sparse.map": "0,0", "GNU.sparse.size": str(size), "GNU.sparse.name": name}
    return info


def lying_tar_gz(scene: Scene, members: list[tuple[str, bytes]], liar: str, declared: int) -> Path:
    """A ustar .tar.gz whose member `liar` declares `declared` bytes in its header but carries all its data."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(fileobj=io.BytesIO(raw.getvalue())) as tar:
        at = tar.getmember(liar).offset
    block = bytearray(raw.getvalue())
    block[at + 124 : at + 136] = b"%011o\0" % declared  # the size field
    block[at + 148 : at + 156] = b" " * 8  # the checksum is computed with its own field as spaces
    block[at + 148 : at + 156] = b"%06o\0 " % sum(block[at : at + 512])
    path = scene.archives / PART
    path.write_bytes(gzip.compress(bytes(block)))
    return path


# --- bombs ------------------------------------------------------------------------------------------


def test_zip_bomb_is_refused_by_ratio_with_default_limits(scene: Scene) -> None:
    archive = zip_of(scene, [("readme.txt", b"hello"), ("zeros.bin", bytes(20 * MiB))])
    assert archive.stat().st_size < 32 * 1024  # ~1000:1, well under every size cap

    err, message = refused(scene, archive, "zip", UnsafeArchiveError)

    assert err.member == "zeros.bin"
    assert "takes the declared unpacked size to 20.0 MiB" in message  # before the first byte was written
    assert "over the limit of 100 times (FLOWMAS_UNPACK_MAX_RATIO=100)" in message
    assert message.endswith("if the archive legitimately compresses this well, raise FLOWMAS_UNPACK_MAX_RATIO.")


def test_sparse_tar_member_of_a_petabyte_is_refused_with_default_limits(scene: Scene) -> None:
    """A 10 KiB, perfectly valid tar: one GNU sparse member that is 1 PiB of holes."""
    archive = tar_of(scene, [("readme.txt", b"hello"), sparse_member("huge.bin", 2**50)])
    with tarfile.open(archive) as tar:  # the stdlib really reads (and would extract) a petabyte
        assert tar.getmember("huge.bin").size == 2**50

    err, message = refused(scene, archive, "tar", UnsafeArchiveError)

    assert err.member == "huge.bin"
    assert "declared unpacked size to 1.0 PiB, over the limit of 64.0 GiB" in message
    assert "(FLOWMAS_UNPACK_MAX_BYTES=68719476736)" in message
    assert message.endswith("if the archive is legitimately this large, raise FLOWMAS_UNPACK_MAX_BYTES.")


def test_tar_gz_header_hiding_its_data_is_refused_by_the_real_reader(scene: Scene) -> None:
    """The header says 10 bytes, 4 MiB follow: tarfile reads 10, then meets data where a header should be.

    It takes that for the end of the archive; the end-of-archive check does not, so nothing is written.
    """
    members = [("readme.txt", b"hello"), ("liar.bin", b"A" * 4 * MiB)]
    archive = lying_tar_gz(scene, members, "liar.bin", declared=10)

    _, message = refused(scene, archive, "tar.gz", UnpackError)

    assert "no end-of-archive marker" in message
    assert "The archive is corrupt, truncated or not a tar.gz archive" in message


def test_tar_gz_lying_header_is_stopped_by_the_actual_bytes_ratio(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that trusts the data over the header meets the second check, on the bytes written.

    The stdlib never yields more than a header declares (it stops liar.bin at 10 bytes and takes the zeros
    behind it for the end of the archive), so tarfile's ``extractfile`` is swapped for one that reads the
    data the header hides. The declared total (15.5 MiB + 10 bytes) is under the ratio's 16 MiB floor, so
    the declared check passes; the bytes actually written pass it at the liar's first 1 MiB chunk.
    """
    members = [("honest.bin", bytes(31 * MiB // 2)), ("liar.bin", bytes(4 * MiB))]
    archive = lying_tar_gz(scene, members, "liar.bin", declared=10)
    real = tarfile.TarFile.extractfile

    def trusting(self: tarfile.TarFile, member: tarfile.TarInfo | str) -> IO[bytes] | None:
        info = member if isinstance(member, tarfile.TarInfo) else self.getmember(member)
        if info.name != "liar.bin":
            return real(self, member)
        assert self.fileobj is not None
        self.fileobj.seek(info.offset_data)
        return io.BytesIO(self.fileobj.read(64 * MiB))  # to the end: all the data the header hides

    monkeypatch.setattr(tarfile.TarFile, "extractfile", trusting)

    err, message = refused(scene, archive, "tar.gz", UnsafeArchiveError)

    assert err.member == "liar.bin"
    assert "takes the bytes actually unpacked to 16.5 MiB" in message
    assert "over the limit of 100 times (FLOWMAS_UNPACK_MAX_RATIO=100)" in message


def test_zip_declared_sizes_over_max_total_bytes_are_refused(scene: Scene) -> None:
    archive = zip_of(scene, [("a.bin", bytes(600)), ("b.bin", bytes(600)), ("c.bin", bytes(600))])

    err, message = refused(scene, archive, "zip", UnsafeArchiveError, max_total_bytes=1000)

    assert err.member == "b.bin"  # the member that takes the total over, named before anything is written
    assert "declared unpacked size to 1.2 KiB, over the limit of 1000 B" in message
    assert "(FLOWMAS_UNPACK_MAX_BYTES=1000)" in message
    assert message.endswith("raise FLOWMAS_UNPACK_MAX_BYTES.")


def test_more_members_than_max_members_are_refused(scene: Scene) -> None:
    archive = zip_of(scene, [(f"f{i}.txt", b"x") for i in range(6)])

    err, message = refused(scene, archive, "zip", UnsafeArchiveError, max_members=5)

    assert err.member == "f5.txt"
    assert "beyond the limit of 5 members (FLOWMAS_UNPACK_MAX_MEMBERS=5)" in message
    assert message.endswith("if the archive legitimately has this many members, raise FLOWMAS_UNPACK_MAX_MEMBERS.")


# --- disk space -------------------------------------------------------------------------------------


def test_declared_size_beyond_the_free_space_is_refused_before_writing(scene: Scene) -> None:
    """The real disk under tmp_path, asked for a petabyte; the caps are lifted so only free space can refuse."""
    archive = tar_of(scene, [sparse_member("huge.bin", 2**50)])

    err, message = refused(scene, archive, "tar", DiskSpaceError, max_total_bytes=2**60, max_ratio=float("inf"))

    assert isinstance(err, OSError)
    assert message.startswith(f"Not enough disk space to unpack asset 'model' ({SOURCE}, tar): it unpacks to 1.0 PiB")
    assert re.search(rf"but {re.escape(str(scene.parent))} has \d+\.\d [KMGTP]iB free", message)
    assert "move the asset cache to a larger disk with FLOWMAS_ASSETS_DIR" in message


def test_archive_larger_than_a_small_disk_is_refused_before_writing(
    scene: Scene, small_fs: Callable[[int], Path]
) -> None:
    disk = scene.on(small_fs(2 * MiB))
    archive = tar_of(scene, [("weights.bin", bytes(4 * MiB))], "w:gz")

    _, message = refused(disk, archive, "tar.gz", DiskSpaceError)

    assert f"it unpacks to 4.0 MiB, but {disk.parent} has 2.0 MiB free and flowmas leaves 20.5 KiB" in message
    assert shutil.disk_usage(disk.parent).used == 0


def test_disk_filling_up_while_writing_is_a_disk_space_error(scene: Scene, small_fs: Callable[[int], Path]) -> None:
    """800 one-byte files declare 800 bytes and pass the free-space check, but every file takes a 4 KiB
    page of the 2 MiB tmpfs: the 513th write fails with a real ENOSPC."""
    disk = scene.on(small_fs(2 * MiB))
    archive = tar_of(scene, [(f"shard-{i:03d}.txt", b"x") for i in range(800)])

    err, message = refused(disk, archive, "tar", DiskSpaceError)

    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC
    assert message.startswith(f"Ran out of disk space unpacking asset 'model' ({SOURCE}, tar) into {disk.parent}")
    assert "the disk is full. It unpacks to 800 B and 2.0 MiB was free when unpacking began" in message
    assert "move the asset cache to a larger disk with FLOWMAS_ASSETS_DIR" in message
    assert shutil.disk_usage(disk.parent).used == 0  # every partial file is gone


# --- names built to garble a message ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_member_name_with_line_breaks_and_escapes_stays_on_one_line(scene: Scene, fmt: str) -> None:
    name = "/etc/cron.d/x\nINFO asset 'model' unpacked fine\r\x1b[2K\u2028"
    archive = tar_of(scene, [(name, b"x")]) if fmt == "tar" else zip_of(scene, [(name, b"x")])

    err, message = refused(scene, archive, fmt, UnsafeArchiveError)

    assert err.member == name  # the exception keeps the raw name for code
    shown = "\"/etc/cron.d/x\\nINFO asset 'model' unpacked fine\\r\\x1b[2K\\u2028\""  # as repr() shows it
    assert f"member {shown} has an absolute path" in message
    assert all(ch.isprintable() for ch in message)


def test_300_character_member_name_is_shortened_in_the_message(scene: Scene) -> None:
    name = "../" + "x" * 297
    archive = tar_of(scene, [(name, b"x")])

    err, message = refused(scene, archive, "tar", UnsafeArchiveError)

    assert err.member == name
    assert f"member '../{'x' * 47}…{'x' * 50}' (300 characters) climbs out of the destination" in message
    assert len(message) < 400


def test_source_with_a_line_break_stays_on_one_line(scene: Scene) -> None:
    archive = zip_of(scene, [("/abs", b"x")])
    with pytest.raises(UnsafeArchiveError) as info:
        unpack_archive(archive, scene.dest, "zip", asset="model", source="http: https://h/a\nb.zip")
    scene.assert_untouched()
    assert str(info.value).startswith("Refusing to unpack asset 'model' (http: https://h/a\\nb.zip, zip): ")
