"""Tests for flowmas.assets.unpack: real archives built in tmp_path, one behaviour per test.

Every refusal test checks the error (type, member, reason) and the state afterwards: ``dest`` does not
exist, no ``.unpack-`` temp dir is left, and the ``outside/`` directory next to ``dest`` stays empty.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowmas.assets.unpack import UnpackedFile, UnpackLimits, single_file, unpack_archive
from flowmas.errors import UnpackError, UnsafeArchiveError

TAR_FORMATS = ["tar", "tar.gz", "tar.bz2", "tar.xz"]
TAR_WRITE_MODES = {"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}
MiB = 2**20


# --- helpers ----------------------------------------------------------------------------------------


@dataclass
class Layout:
    root: Path
    archives: Path
    dest: Path
    outside: Path

    def assert_untouched(self) -> None:
        """dest absent, no temp dir left, nothing written outside: only our two dirs remain."""
        assert not os.path.lexists(self.dest)
        assert sorted(p.name for p in self.root.iterdir()) == ["archives", "outside"]
        assert list(self.outside.iterdir()) == []


@pytest.fixture
def lay(tmp_path: Path) -> Layout:
    archives = tmp_path / "archives"
    outside = tmp_path / "outside"  # "../outside" from inside dest
    archives.mkdir()
    outside.mkdir()
    return Layout(tmp_path, archives, tmp_path / "dest", outside)


def t_file(name: str, data: bytes = b"data", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def t_dir(name: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, None


def t_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def t_special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info, None


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: str = "tar") -> Path:
    with tarfile.open(path, TAR_WRITE_MODES[fmt], format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def z_link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def make_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def refused(lay: Layout, archive: Path, fmt: str, **kwargs: object) -> UnsafeArchiveError:
    with pytest.raises(UnsafeArchiveError) as info:
        unpack_archive(archive, lay.dest, fmt, asset="model", **kwargs)  # type: ignore[arg-type]
    lay.assert_untouched()
    assert info.value.asset == "model"
    assert "The destination was not created" in str(info.value)  # and what to do about it
    return info.value


def broken(lay: Layout, archive: Path, fmt: str, **kwargs: object) -> UnpackError:
    with pytest.raises(UnpackError) as info:
        unpack_archive(archive, lay.dest, fmt, asset="model", **kwargs)  # type: ignore[arg-type]
    lay.assert_untouched()
    assert "unpack_format" in str(info.value)
    return info.value


# --- good archives ----------------------------------------------------------------------------------

CONTENT = {
    "top.txt": b"top level\n",
    "sub/deep/weights.bin": bytes(range(256)) * 100,
    "sub/empty.txt": b"",
}


@pytest.mark.parametrize("fmt", TAR_FORMATS)
def test_tar_round_trip_nested_dirs_sizes_and_hashes(lay: Layout, fmt: str) -> None:
    members = [t_dir("sub"), t_dir("sub/deep"), t_file("run.sh", b"#!/bin/sh\n", mode=0o755)]
    members += [t_file(name, data) for name, data in CONTENT.items()]
    archive = make_tar(lay.archives / f"a.{fmt}", members, fmt)

    files = unpack_archive(archive, lay.dest, fmt)  # type: ignore[arg-type]

    expected = {**CONTENT, "run.sh": b"#!/bin/sh\n"}
    assert files == [UnpackedFile(p, len(d), sha(d)) for p, d in sorted(expected.items())]
    for name, data in expected.items():
        assert (lay.dest / name).read_bytes() == data
    assert stat.S_IMODE((lay.dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((lay.dest / "top.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((lay.dest / "sub" / "deep").stat().st_mode) == 0o755
    assert sorted(p.name for p in lay.root.iterdir()) == ["archives", "dest", "outside"]


def test_zip_round_trip_nested_dirs_sizes_and_hashes(lay: Layout) -> None:
    archive = make_zip(lay.archives / "a.zip", [("sub/", b""), *CONTENT.items()])

    files = unpack_archive(archive, lay.dest, "zip")

    assert files == [UnpackedFile(p, len(d), sha(d)) for p, d in sorted(CONTENT.items())]
    for name, data in CONTENT.items():
        assert (lay.dest / name).read_bytes() == data
    assert sorted(p.name for p in lay.root.iterdir()) == ["archives", "dest", "outside"]


def test_dot_slash_prefixed_single_file_is_normalised(lay: Layout, tmp_path: Path) -> None:
    src = tmp_path / "archives" / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"onnx")
    archive = lay.archives / "m.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # like `tar -C src -czf m.tar.gz .`
        tar.add(src, arcname=".")
    with tarfile.open(archive) as tar:
        assert [m.name for m in tar.getmembers()] == [".", "./model.onnx"]

    files = unpack_archive(archive, lay.dest, "tar.gz")

    assert files == [UnpackedFile("model.onnx", 4, sha(b"onnx"))]
    assert single_file(files) == "model.onnx"
    assert (lay.dest / single_file(files)).read_bytes() == b"onnx"


def test_inner_dotdot_that_stays_inside_is_normalised(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file("a/../b.txt", b"b")])
    assert [f.path for f in unpack_archive(archive, lay.dest, "tar")] == ["b.txt"]
    assert not (lay.dest / "a").exists()


def test_single_file_with_no_files() -> None:
    with pytest.raises(UnpackError, match="exactly one regular file, found none") as info:
        single_file([], asset="model")
    assert info.value.asset == "model"
    assert "unpack_destination_is_file" in str(info.value)


def test_single_file_with_several_files_lists_up_to_five() -> None:
    files = [UnpackedFile(f"f{i}.bin", 1, "0" * 64) for i in range(7)]
    with pytest.raises(UnpackError, match="unpack_destination_is_file") as info:
        single_file(files)
    message = str(info.value)
    assert "found 7: f0.bin, f1.bin, f2.bin, f3.bin, f4.bin, ..." in message
    assert "f5.bin" not in message
    with pytest.raises(UnpackError, match="found 2: a, b"):
        single_file([UnpackedFile("a", 1, "0" * 64), UnpackedFile("b", 1, "0" * 64)])


def test_safe_internal_symlink_is_created_and_points_inside(lay: Layout) -> None:
    archive = make_tar(
        lay.archives / "a.tar",
        [t_file("sub/real.txt", b"real"), t_link("alias.txt", "sub/real.txt"), t_link("sub/up", "../sub")],
    )

    files = unpack_archive(archive, lay.dest, "tar")

    assert [f.path for f in files] == ["sub/real.txt"]  # links are not regular files
    assert os.readlink(lay.dest / "alias.txt") == "sub/real.txt"
    assert (lay.dest / "alias.txt").read_bytes() == b"real"
    assert (lay.dest / "sub" / "up").resolve() == (lay.dest / "sub").resolve()


def test_zip_internal_symlink_is_created(lay: Layout) -> None:
    archive = make_zip(lay.archives / "a.zip", [("real.txt", b"real"), (z_link("alias.txt"), b"real.txt")])
    assert [f.path for f in unpack_archive(archive, lay.dest, "zip")] == ["real.txt"]
    assert os.readlink(lay.dest / "alias.txt") == "real.txt"


def test_hardlink_to_earlier_file_is_unpacked_as_the_same_content(lay: Layout) -> None:
    members = [t_file("a.bin", b"abc"), t_link("b.bin", "a.bin", tarfile.LNKTYPE)]
    archive = make_tar(lay.archives / "a.tar", members)

    files = unpack_archive(archive, lay.dest, "tar")

    assert files == [UnpackedFile("a.bin", 3, sha(b"abc")), UnpackedFile("b.bin", 3, sha(b"abc"))]
    assert (lay.dest / "b.bin").read_bytes() == b"abc"


def test_hardlink_becomes_a_copy_where_the_filesystem_refuses_links(
    lay: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    members = [t_file("a.bin", b"abc"), t_link("b.bin", "a.bin", tarfile.LNKTYPE)]
    archive = make_tar(lay.archives / "a.tar", members)

    files = unpack_archive(archive, lay.dest, "tar")

    assert files == [UnpackedFile("a.bin", 3, sha(b"abc")), UnpackedFile("b.bin", 3, sha(b"abc"))]
    assert (lay.dest / "b.bin").read_bytes() == b"abc"
    assert (lay.dest / "b.bin").stat().st_ino != (lay.dest / "a.bin").stat().st_ino


def test_setuid_setgid_sticky_and_group_write_are_stripped(lay: Layout) -> None:
    members = [t_file("suid", b"x", mode=0o7777), t_file("ro", b"x", mode=0o400)]
    archive = make_tar(lay.archives / "a.tar", members)

    unpack_archive(archive, lay.dest, "tar")

    assert stat.S_IMODE((lay.dest / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((lay.dest / "ro").stat().st_mode) == 0o644


# --- refused: names -----------------------------------------------------------------------------------


def test_tar_absolute_path_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file("ok.txt"), t_file(f"{lay.outside}/evil.txt")])
    err = refused(lay, archive, "tar")
    assert err.member == f"{lay.outside}/evil.txt"
    assert "absolute path" in str(err)


@pytest.mark.parametrize("name", ["/evil.txt", "C:\\evil.txt", "c:/evil.txt", "\\evil.txt"])
def test_zip_absolute_and_drive_paths_are_refused(lay: Layout, name: str) -> None:
    archive = make_zip(lay.archives / "a.zip", [("ok.txt", b"ok"), (name, b"evil")])
    err = refused(lay, archive, "zip")
    assert err.member == name
    assert "absolute path" in str(err)


@pytest.mark.parametrize("name", ["../outside/evil.txt", "a/../../outside/evil.txt"])
def test_tar_dotdot_traversal_is_refused(lay: Layout, name: str) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file("ok.txt"), t_file(name)], "tar.gz")
    err = refused(lay, archive, "tar.gz")
    assert err.member == name
    assert "'..'" in str(err)


@pytest.mark.parametrize("name", ["../outside/evil.txt", "..\\outside\\evil.txt"])
def test_zip_dotdot_traversal_is_refused(lay: Layout, name: str) -> None:
    archive = make_zip(lay.archives / "a.zip", [("ok.txt", b"ok"), (name, b"evil")])
    err = refused(lay, archive, "zip")
    assert err.member == name
    assert "'..'" in str(err)


def test_duplicate_member_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file("a.txt", b"1"), t_file("./a.txt", b"2")])
    err = refused(lay, archive, "tar")
    assert err.member == "./a.txt"
    assert "appears twice" in str(err)


def test_member_below_a_file_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file("a"), t_file("a/b")])
    err = refused(lay, archive, "tar")
    assert err.member == "a/b"
    assert "below the file 'a'" in str(err)


# --- refused: links -----------------------------------------------------------------------------------


def test_symlink_to_absolute_outside_path_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_link("lnk", str(lay.outside))])
    err = refused(lay, archive, "tar")
    assert err.member == "lnk"
    assert "symlink to the absolute path" in str(err)


@pytest.mark.parametrize("target", ["../../x", "sub/../../outside", ".."])
def test_relative_symlink_escaping_is_refused(lay: Layout, target: str) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_dir("sub"), t_link("lnk", target)])
    err = refused(lay, archive, "tar")
    assert err.member == "lnk"
    assert "resolves outside the destination" in str(err)


def test_symlink_escaping_through_another_symlink_is_refused(lay: Layout) -> None:
    # Lexically "x/d/.." is "x", but x/d -> .. makes it the parent of dest.
    archive = make_tar(lay.archives / "a.tar", [t_dir("x"), t_link("x/d", ".."), t_link("x/e", "d/..")])
    err = refused(lay, archive, "tar")
    assert err.member == "x/e"
    assert "resolves outside the destination" in str(err)


def test_symlink_loop_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_link("a", "b/x"), t_link("b", "a/y")])
    err = refused(lay, archive, "tar")
    assert err.member == "a"
    assert "symlink loop" in str(err)


def test_zip_symlink_to_outside_is_refused(lay: Layout) -> None:
    archive = make_zip(lay.archives / "a.zip", [(z_link("lnk"), b"../outside"), ("lnk/pwned.txt", b"x")])
    err = refused(lay, archive, "zip")
    assert err.member == "lnk"
    assert "resolves outside the destination" in str(err)


def test_member_through_escaping_symlink_is_refused(lay: Layout) -> None:
    # The escaping link is the first offending member in archive order, so it is the one named.
    members = [t_link("lnk", "../outside"), t_file("lnk/pwned.txt", b"pwned")]
    archive = make_tar(lay.archives / "a.tar", members)
    err = refused(lay, archive, "tar")
    assert err.member == "lnk"
    assert "resolves outside the destination" in str(err)


def test_member_through_internal_symlink_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_dir("sub"), t_link("lnk", "sub"), t_file("lnk/x", b"x")])
    err = refused(lay, archive, "tar")
    assert err.member == "lnk/x"
    assert "below the symlink 'lnk'" in str(err)


def test_member_through_symlink_declared_later_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file("lnk/x", b"x"), t_link("lnk", "../outside")])
    err = refused(lay, archive, "tar")
    assert err.member == "lnk/x"
    assert "below the symlink 'lnk'" in str(err)


def test_hardlink_to_outside_file_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_link("passwd", "/etc/passwd", tarfile.LNKTYPE)])
    err = refused(lay, archive, "tar")
    assert err.member == "passwd"
    assert "hardlink to the absolute path '/etc/passwd'" in str(err)


def test_hardlink_to_name_not_in_archive_is_refused(lay: Layout) -> None:
    members = [t_file("a.txt"), t_link("b.txt", "missing.txt", tarfile.LNKTYPE)]
    archive = make_tar(lay.archives / "a.tar", members)
    err = refused(lay, archive, "tar")
    assert err.member == "b.txt"
    assert "not an earlier regular file" in str(err)


def test_hardlink_to_later_member_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_link("b.txt", "a.txt", tarfile.LNKTYPE), t_file("a.txt")])
    err = refused(lay, archive, "tar")
    assert err.member == "b.txt"
    assert "not an earlier regular file" in str(err)


def test_hardlink_escaping_with_dotdot_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_link("b.txt", "../outside/x", tarfile.LNKTYPE)])
    err = refused(lay, archive, "tar")
    assert err.member == "b.txt"
    assert "outside the destination" in str(err)


# --- refused: special members and limits --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.CHRTYPE, "character device"), (tarfile.FIFOTYPE, "FIFO"), (tarfile.BLKTYPE, "block device")],
)
def test_device_and_fifo_members_are_refused(lay: Layout, kind: bytes, what: str) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file("ok.txt"), t_special("dev/null", kind)])
    err = refused(lay, archive, "tar")
    assert err.member == "dev/null"
    assert what in str(err)


def test_zip_fifo_member_is_refused(lay: Layout) -> None:
    info = zipfile.ZipInfo("fifo")
    info.create_system = 3
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    archive = make_zip(lay.archives / "a.zip", [(info, b"")])
    err = refused(lay, archive, "zip")
    assert err.member == "fifo"
    assert "FIFO" in str(err)


def test_too_many_members_is_refused(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file(f"f{i}") for i in range(4)])
    err = refused(lay, archive, "tar", limits=UnpackLimits(max_members=3))
    assert err.member == "f3"
    assert "limit of 3 members (FLOWMAS_UNPACK_MAX_MEMBERS=3)" in str(err)


def test_declared_size_over_limit_is_refused_tar(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file("a", b"x" * 600), t_file("b", b"x" * 600)])
    err = refused(lay, archive, "tar", limits=UnpackLimits(max_total_bytes=1000))
    assert err.member == "b"
    expected = "declared unpacked size to 1.2 KiB, over the limit of 1000 B (FLOWMAS_UNPACK_MAX_BYTES=1000)"
    assert expected in str(err)


def test_zip_bomb_with_honest_header_is_refused_before_extracting(lay: Layout) -> None:
    archive = make_zip(lay.archives / "bomb.zip", [("zeros.bin", bytes(2 * MiB))])
    assert archive.stat().st_size < 16 * 1024  # highly compressible: a small file, a big unpack
    err = refused(lay, archive, "zip", limits=UnpackLimits(max_total_bytes=MiB))
    assert err.member == "zeros.bin"
    assert "over the limit of 1.0 MiB (FLOWMAS_UNPACK_MAX_BYTES=1048576)" in str(err)


def _lie_about_size(archive: Path, claimed: int) -> None:
    """Patch the uncompressed size in both the local header and the central directory."""
    raw = bytearray(archive.read_bytes())
    local = raw.index(b"PK\x03\x04")
    struct.pack_into("<I", raw, local + 22, claimed)
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, claimed)
    archive.write_bytes(bytes(raw))


def test_zip_bomb_with_lying_header_fails_without_writing_more_than_declared(lay: Layout) -> None:
    """Documented behaviour: the stdlib reader never yields more than the central directory declares,
    so a header claiming 10 bytes produces 10 bytes and then a CRC failure -> UnpackError, cleaned up.
    Our own per-member and total caps on bytes written are the backstop (see the next two tests)."""
    archive = make_zip(lay.archives / "bomb.zip", [("zeros.bin", bytes(2 * MiB))])
    _lie_about_size(archive, 10)
    err = broken(lay, archive, "zip", limits=UnpackLimits(max_total_bytes=MiB))
    assert "CRC" in str(err)


def _lying_tar(lay: Layout, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tar whose reader yields 2 MiB for a member declared as 10 bytes (a reader that trusts data)."""
    archive = make_tar(lay.archives / "a.tar", [t_file("a.txt", b"fine"), t_file("b.bin", b"0123456789")])
    real = tarfile.TarFile.extractfile

    def lying(self: tarfile.TarFile, member: tarfile.TarInfo | str) -> io.BytesIO | None:
        if getattr(member, "name", member) == "b.bin":
            return io.BytesIO(bytes(2 * MiB))
        return real(self, member)  # type: ignore[return-value]

    monkeypatch.setattr(tarfile.TarFile, "extractfile", lying)
    return archive


def test_actual_bytes_cap_stops_a_member_that_lies_about_its_size(
    lay: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _lying_tar(lay, monkeypatch)
    err = refused(lay, archive, "tar", limits=UnpackLimits(max_total_bytes=MiB))
    assert err.member == "b.bin"
    expected = "bytes actually unpacked to 1048580 bytes, over the limit of 1048576 bytes (FLOWMAS_UNPACK_MAX_BYTES="
    assert expected in str(err)


def test_member_yielding_more_than_declared_is_refused(lay: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _lying_tar(lay, monkeypatch)
    err = refused(lay, archive, "tar")
    assert err.member == "b.bin"
    assert "more than the 10 bytes its header declares" in str(err)


# --- corrupt / wrong format / destination -------------------------------------------------------------


def test_truncated_tar_gz_is_an_unpack_error(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar.gz", [t_file("a.bin", os.urandom(64 * 1024))], "tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    err = broken(lay, archive, "tar.gz")
    assert str(err).startswith("Cannot unpack asset 'model' (tar.gz): ")


def test_plain_tar_cut_at_a_member_boundary_is_an_unpack_error(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar", [t_file("a.txt", b"a"), t_file("b.txt", b"b")])
    raw = archive.read_bytes()
    archive.write_bytes(raw[: raw.index(b"b.txt")])  # b.txt's header starts with its name
    with tarfile.open(archive) as tar:  # tarfile itself thinks this archive is fine
        assert "a.txt" in tar.getnames()
    err = broken(lay, archive, "tar")
    assert "end-of-archive marker" in str(err)


def test_random_bytes_as_zip_is_an_unpack_error(lay: Layout) -> None:
    archive = lay.archives / "a.zip"
    archive.write_bytes(os.urandom(4096))
    err = broken(lay, archive, "zip")
    assert "BadZipFile" in str(err)


def test_corrupt_xz_stream_is_an_unpack_error(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar.xz", [t_file("a.bin", os.urandom(64 * 1024))], "tar.xz")
    raw = bytearray(archive.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    archive.write_bytes(bytes(raw))
    broken(lay, archive, "tar.xz")


@pytest.mark.parametrize(("actual", "declared"), [("zip", "tar.gz"), ("tar.gz", "zip"), ("tar.gz", "tar")])
def test_wrong_declared_format_is_an_unpack_error(lay: Layout, actual: str, declared: str) -> None:
    if actual == "zip":
        archive = make_zip(lay.archives / "a.bin", [("a.txt", b"a")])
    else:
        archive = make_tar(lay.archives / "a.bin", [t_file("a.txt", b"a")], actual)
    err = broken(lay, archive, declared)
    assert f"not a {declared} archive" in str(err)


def test_messages_name_asset_and_source_else_the_file(lay: Layout) -> None:
    archive = make_tar(lay.archives / "m.tar.latest.0a1b2c.part", [t_file("a"), t_file("/abs")])
    source = "http: https://example.com/models/m.tar"
    cases = [
        ({"asset": "model", "source": source}, f"Refusing to unpack asset 'model' ({source}, tar): member '/abs'"),
        ({"asset": "model"}, "Refusing to unpack asset 'model' (tar): member '/abs'"),
        ({"source": source}, f"Refusing to unpack {source} (tar): member '/abs'"),
        ({}, "Refusing to unpack m.tar.latest.0a1b2c.part (tar): member '/abs'"),  # direct library use
    ]
    for kwargs, start in cases:
        with pytest.raises(UnsafeArchiveError) as info:
            unpack_archive(archive, lay.dest, "tar", **kwargs)  # type: ignore[arg-type]
        assert str(info.value).startswith(start)
        lay.assert_untouched()


def test_default_limits() -> None:
    assert UnpackLimits() == UnpackLimits(max_total_bytes=64 * 2**30, max_members=200_000, max_ratio=100.0)


def test_small_archive_with_a_high_ratio_is_unpacked(lay: Layout) -> None:
    """Below the 16 MiB floor the ratio is not checked: a tiny zip of repetitive text is fine."""
    text = b"the same line of a log file, again and again\n" * 2300  # ~100 KiB
    archive = make_zip(lay.archives / "log.zip", [("log.txt", text)])
    assert len(text) / archive.stat().st_size > 100  # well over the default ratio

    assert unpack_archive(archive, lay.dest, "zip") == [UnpackedFile("log.txt", len(text), sha(text))]


def test_ratio_applies_past_the_floor(lay: Layout) -> None:
    archive = make_tar(lay.archives / "a.tar.gz", [t_file("zeros.bin", bytes(17 * MiB))], "tar.gz")
    ratio = 17 * MiB / archive.stat().st_size
    err = refused(lay, archive, "tar.gz", limits=UnpackLimits(max_ratio=ratio - 1))
    assert err.member == "zeros.bin"
    assert "FLOWMAS_UNPACK_MAX_RATIO" in str(err)
    unpack_archive(archive, lay.dest, "tar.gz", limits=UnpackLimits(max_ratio=ratio + 1))
    assert (lay.dest / "zeros.bin").stat().st_size == 17 * MiB


def test_unknown_format_is_an_unpack_error(lay: Layout) -> None:
    archive = make_zip(lay.archives / "a.zip", [("a.txt", b"a")])
    with pytest.raises(UnpackError, match="Unknown archive format 'rar'"):
        unpack_archive(archive, lay.dest, "rar")  # type: ignore[arg-type]
    lay.assert_untouched()


def test_existing_destination_is_an_unpack_error_and_left_alone(lay: Layout) -> None:
    archive = make_zip(lay.archives / "a.zip", [("a.txt", b"a")])
    lay.dest.mkdir()
    (lay.dest / "keep.txt").write_text("keep")
    with pytest.raises(UnpackError, match="already exists"):
        unpack_archive(archive, lay.dest, "zip")
    assert [p.name for p in lay.dest.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in lay.root.iterdir()) == ["archives", "dest", "outside"]
