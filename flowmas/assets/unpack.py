"""Safe, atomic extraction of zip and tar archives into the asset cache.

Invariants:

* **Validate all, then extract into a temp dir, then one rename: nothing half-extracted is ever visible.**
  Every member header is checked before the first byte is written; the temp dir is a sibling of ``dest``
  (same filesystem, so the final ``os.rename`` is atomic) and is removed on any error.
* **Nothing lands outside ``dest``.** Absolute names, ``..`` that climbs out, symlinks that resolve
  outside (resolved through the archive's own symlinks, as the kernel would), hardlinks to anything but
  an earlier regular file of the archive, members below a symlink or a file, duplicate names, and
  device/fifo members are *refused* with ``UnsafeArchiveError`` naming the member, never skipped.
  As a second line of defence, files are created with ``O_EXCL | O_NOFOLLOW`` inside directories opened
  with ``O_NOFOLLOW``, and symlinks are created last, so even a gap in validation cannot write through
  a link.
* **Bombs are refused by default.** The unpacked total (``FLOWMAS_UNPACK_MAX_BYTES``) and the compression
  ratio, unpacked total / archive size (``FLOWMAS_UNPACK_MAX_RATIO``, only once the total passes
  ``_RATIO_FLOOR``), are capped twice: on the declared sizes before the first byte is written, and on the
  bytes actually written while extracting (headers can lie, bytes cannot; a member may never yield more
  than its header declares). The member count (``FLOWMAS_UNPACK_MAX_MEMBERS``) is capped as headers are read.
* **Free space is checked before extracting**: the declared total must fit in the free space of
  ``dest``'s file system minus a small reserve; a disk or quota that fills up anyway while writing is a
  ``DiskSpaceError`` too.
* **Modes are sanitised**: no setuid/setgid/sticky bits, no group/other write, owner read/write always;
  directories are 0o755.
* **Errors speak to users**: ``UnsafeArchiveError`` for safety and limit violations, ``UnpackError`` for
  corrupt, truncated or mis-declared archives, ``DiskSpaceError`` (ENOSPC, EDQUOT or the pre-check) for a
  full disk; other OS errors while *writing* (permissions) propagate unchanged. Messages name the asset
  and its source (never the temp file being unpacked) and the ``FLOWMAS_*`` setting that raises a limit;
  names from the archive are escaped and shortened, so a message is always one readable line. In every
  case the temp dir is gone and ``dest`` does not exist.

POSIX only (``dir_fd``, ``O_NOFOLLOW``). Standard library only.
"""

from __future__ import annotations

import errno
import hashlib
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import uuid
import zipfile
import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, Protocol, cast

from flowmas.errors import DiskSpaceError, UnpackError, UnsafeArchiveError
from flowmas.text import human_size, one_line

__all__ = ["ArchiveFormat", "UnpackLimits", "UnpackedFile", "single_file", "unpack_archive"]

ArchiveFormat = Literal["zip", "tar", "tar.gz", "tar.bz2", "tar.xz"]

_CHUNK = 1 << 20
_TAR_MODES = {"tar": "r:", "tar.gz": "r:gz", "tar.bz2": "r:bz2", "tar.xz": "r:xz"}
_FORMATS = ("zip", *_TAR_MODES)
_MAX_LINK_HOPS = 40  # Linux's own limit on symlinks followed in one lookup
_MAX_LINK_TEXT = 4096  # PATH_MAX: a longer zip "symlink" is not a symlink
_DIR_MODE = 0o755
_DRIVE = re.compile(r"^[A-Za-z]:")
_LINK_FALLBACK_ERRNOS = {errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP}
_NO_SPACE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted"}

# The settings a user changes to raise each limit (flowmas.settings wires them to UnpackLimits). Messages
# name these, never the Python fields: a user meets the limit in a CLI or a flow run, not in code.
_MAX_BYTES_SETTING = "FLOWMAS_UNPACK_MAX_BYTES"
_MAX_MEMBERS_SETTING = "FLOWMAS_UNPACK_MAX_MEMBERS"
_MAX_RATIO_SETTING = "FLOWMAS_UNPACK_MAX_RATIO"
_CACHE_SETTING = "FLOWMAS_ASSETS_DIR"

# The ratio is only checked once the unpacked total passes this floor. Small archives of text or zeros
# legitimately reach ratios of 300 and more (a 300-byte zip of a 100 KiB text file), and 16 MiB harms no
# disk; a bomb is dangerous for what it fills, and by then its ratio is plain.
_RATIO_FLOOR = 16 * 2**20

# Free space an unpack leaves untouched: the smaller of 64 MiB and 1 % of the file system. Filling a disk
# to the last byte breaks the cache's own records and locks and everything else sharing the disk; the
# 1 % bound keeps a small volume (a container's, a test's tmpfs) from being reserved away entirely.
_RESERVE_BYTES = 64 * 2**20
_RESERVE_FRACTION = 0.01

_MAX_SHOWN = 100  # characters of an archive-supplied name shown in a message; longer ones lose their middle

# What the stdlib readers raise for corrupt, truncated or mis-declared input (bz2 and gzip raise OSError).
_READ_ERRORS: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,  # zip compression method the stdlib cannot read
    struct.error,
    ValueError,
    OSError,
)

_REPACK = "repack the archive without it, or point the asset at a source you trust"
_SPECIAL_TAR_TYPES = {
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}
_SPECIAL_MODES = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}

_Kind = Literal["file", "dir", "symlink", "hardlink", "special"]


@dataclass(frozen=True)
class UnpackLimits:
    """Caps that stop archive bombs; raise them for assets that are legitimately bigger.

    Users set them with FLOWMAS_UNPACK_MAX_BYTES, FLOWMAS_UNPACK_MAX_MEMBERS and FLOWMAS_UNPACK_MAX_RATIO.
    """

    max_total_bytes: int = 64 * 2**30  # total uncompressed size (declared and actually written)
    max_members: int = 200_000
    max_ratio: float = 100.0  # uncompressed total / archive size on disk, checked past _RATIO_FLOOR


@dataclass(frozen=True)
class UnpackedFile:
    """One regular file of an unpacked archive, hashed while it was written."""

    path: str  # POSIX path relative to the destination, normalised (no "./" prefix)
    size: int
    sha256: str  # hex


# --- public API -------------------------------------------------------------------------------------


def unpack_archive(
    archive: Path,
    dest: Path,
    fmt: ArchiveFormat,
    *,
    limits: UnpackLimits = UnpackLimits(),
    asset: str | None = None,
    source: str | None = None,
) -> list[UnpackedFile]:
    """Extract `archive` into `dest` (which must not exist yet) safely and atomically.

    `asset` and `source` (a description such as ``"http: https://example.com/m.zip"``) are what messages
    name: `archive` is usually a temp file whose name means nothing to a user.
    Returns the regular files (hardlinks included, symlinks and directories not), sorted by path.
    """
    archive, dest = Path(archive), Path(dest)
    ctx = _Context(archive, fmt, asset, source)
    if fmt not in _FORMATS:
        raise UnpackError(
            f"Unknown archive format {fmt!r} for {ctx.where()}: use one of {', '.join(_FORMATS)}; "
            "check unpack_format in flowmas.yaml.",
            asset=asset,
        )
    if os.path.lexists(dest):
        raise ctx.dest_exists(dest)
    with _open_reader(archive, fmt, ctx) as (reader, archive_size):
        caps = _Caps(limits, archive_size, ctx)
        entries = _validate(reader, caps, ctx)
        needed = sum(entry.size for entry in entries)
        free = _check_free_space(dest.parent, needed, ctx)
        tmp = dest.parent / f".{dest.name}.unpack-{uuid.uuid4().hex}"
        with ctx.writing(dest.parent, needed, free):
            os.mkdir(tmp, 0o700)
            try:
                files = _extract(reader, entries, tmp, caps, ctx)
                _publish(tmp, dest, ctx)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # fd-based on Linux: never follows the links inside
                raise
    return files


def single_file(files: list[UnpackedFile], *, asset: str | None = None) -> str:
    """For unpack_destination_is_file: the relative path of the one regular file, else UnpackError.

    Guessing ("the first top-level one") hides a wrong archive, so anything but exactly one file fails.
    """
    if len(files) == 1:
        return files[0].path
    if files:
        more = ", ..." if len(files) > 5 else ""
        found = f"{len(files)}: {', '.join(f.path for f in files[:5])}{more}"
    else:
        found = "none"
    prefix = f"Asset {asset!r}: " if asset else ""
    raise UnpackError(
        f"{prefix}unpack_destination_is_file needs an archive with exactly one regular file, found {found}. "
        "Repack the archive, or drop unpack_destination_is_file to keep the whole directory.",
        asset=asset,
    )


# --- error context ----------------------------------------------------------------------------------


def _elide(text: str, limit: int = _MAX_SHOWN) -> str:
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}…{text[-keep:]}"


def _show(name: str) -> str:
    """An archive-supplied name as a message shows it: quoted, on one line, of readable length.

    ``repr`` escapes newlines and every other unprintable character, so a hostile name cannot forge a
    log line or hide itself; the middle of a long name is elided and its length said.
    """
    shown = repr(_elide(name))
    return shown if len(name) <= _MAX_SHOWN else f"{shown} ({len(name)} characters)"


@dataclass(frozen=True)
class _Context:
    """What every error message needs: which asset from which source, or failing those which file."""

    archive: Path
    fmt: str
    asset: str | None
    source: str | None = None

    def where(self) -> str:
        """``asset 'model' (http: https://…/m.zip, zip)``; the archive's file name without asset and source."""
        source = _elide(one_line(self.source), 2 * _MAX_SHOWN) if self.source else ""
        if self.asset:
            return f"asset {_show(self.asset)} ({source + ', ' if source else ''}{self.fmt})"
        return f"{source or one_line(self.archive.name)} ({self.fmt})"

    def unsafe(self, member: str, reason: str, fix: str = _REPACK) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"Refusing to unpack {self.where()}: member {_show(member)} {reason}. "
            f"The destination was not created; {fix}.",
            asset=self.asset,
            member=member,
        )

    def corrupt(self, detail: str) -> UnpackError:
        return UnpackError(
            f"Cannot unpack {self.where()}: {detail}. The archive is corrupt, truncated or not a "
            f"{self.fmt} archive; check unpack_format in flowmas.yaml or the source.",
            asset=self.asset,
        )

    def dest_exists(self, dest: Path) -> UnpackError:
        return UnpackError(
            f"Cannot unpack {self.where()} into {dest}: it already exists. unpack_archive only writes to a "
            "fresh path; remove it or choose another destination.",
            asset=self.asset,
        )

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Translate the readers' many ways of saying "bad archive" into one UnpackError."""
        try:
            yield
        except _READ_ERRORS as exc:
            raise self.corrupt(f"{type(exc).__name__}: {one_line(str(exc))}") from exc

    def no_space(self, directory: Path, needed: int, free: int, reserve: int) -> DiskSpaceError:
        return DiskSpaceError(
            f"Not enough disk space to unpack {self.where()}: it unpacks to {human_size(needed)}, but {directory} "
            f"has {human_size(free)} free and flowmas leaves {human_size(reserve)} of that untouched. The "
            "destination was not created; free some space there, or move the asset cache to a larger disk with "
            f"{_CACHE_SETTING}.",
            asset=self.asset,
        )

    @contextmanager
    def writing(self, directory: Path, needed: int, free: int) -> Iterator[None]:
        """A disk or quota that fills up while writing becomes a DiskSpaceError (the caller has cleaned up)."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in _NO_SPACE_ERRNOS:
                raise
            raise DiskSpaceError(
                f"Ran out of disk space unpacking {self.where()} into {directory}: {_NO_SPACE_ERRNOS[exc.errno]}. "
                f"It unpacks to {human_size(needed)} and {human_size(free)} was free when unpacking began (other "
                "writers, and files taking whole blocks on disk, can use more). The destination was not created; free "
                f"some space there, or move the asset cache to a larger disk with {_CACHE_SETTING}.",
                asset=self.asset,
            ) from exc


# --- readers: one view of zip and tar members -------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """A member header as the archive states it (nothing checked yet)."""

    name: str
    kind: _Kind
    size: int = 0
    mode: int = 0
    link: str = ""  # tar: linkname (symlink text or hardlink target)
    detail: str = ""  # for kind == "special": what it is
    encrypted: bool = False
    ref: Any = None  # the TarInfo / ZipInfo


class _Reader(Protocol):
    def members(self) -> Iterator[_Member]: ...
    def link_text(self, member: _Member) -> str: ...
    def open(self, member: _Member) -> IO[bytes]: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...


class _TarReader:
    def __init__(self, fileobj: BinaryIO, mode: str) -> None:
        self._tar = tarfile.open(fileobj=fileobj, mode=mode)  # type: ignore[call-overload]  # noqa: SIM115

    def members(self) -> Iterator[_Member]:
        for info in self._tar:
            yield _Member(
                name=info.name,
                kind=_tar_kind(info),
                size=info.size,
                mode=info.mode,
                link=info.linkname,
                detail=_SPECIAL_TAR_TYPES.get(info.type, f"of unsupported tar type {info.type!r}"),
                ref=info,
            )

    def link_text(self, member: _Member) -> str:
        return member.link

    def open(self, member: _Member) -> IO[bytes]:
        source = self._tar.extractfile(member.ref)
        if source is None:  # pragma: no cover - only regular members are opened
            raise tarfile.ReadError(f"member {member.name!r} has no data")
        return cast(IO[bytes], source)

    def finish(self) -> None:
        """Tarfile treats garbage or a missing end marker after a member as a clean end; we do not.

        Without this, a plain tar cut at a member boundary would unpack "successfully" but incomplete.
        """
        fileobj = self._tar.fileobj
        assert fileobj is not None
        fileobj.seek(self._tar.offset)
        block = fileobj.read(tarfile.BLOCKSIZE)
        if len(block) != tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
            raise tarfile.ReadError(
                f"no end-of-archive marker at offset {self._tar.offset} (after {len(self._tar.members)} "
                "members): the archive is truncated or followed by garbage"
            )

    def close(self) -> None:
        self._tar.close()


def _tar_kind(info: tarfile.TarInfo) -> _Kind:
    if info.isreg():  # includes contiguous and GNU sparse files
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return "special"


class _ZipReader:
    def __init__(self, fileobj: BinaryIO) -> None:
        self._zip = zipfile.ZipFile(fileobj)

    def members(self) -> Iterator[_Member]:
        for info in self._zip.infolist():
            yield _zip_member(info)

    def link_text(self, member: _Member) -> str:
        return os.fsdecode(self._zip.read(member.ref))

    def open(self, member: _Member) -> IO[bytes]:
        return self._zip.open(member.ref)

    def finish(self) -> None:
        pass  # the central directory was read whole when the file was opened

    def close(self) -> None:
        self._zip.close()


def _zip_member(info: zipfile.ZipInfo) -> _Member:
    """Zip stores a Unix st_mode in the high 16 bits of external_attr; a symlink's data is its target."""
    mode = info.external_attr >> 16
    ftype = stat.S_IFMT(mode)
    kind: _Kind
    if ftype == stat.S_IFLNK:
        kind = "symlink"
    elif info.is_dir() or ftype == stat.S_IFDIR:
        kind = "dir"
    elif ftype in (0, stat.S_IFREG):
        kind = "file"
    else:
        kind = "special"
    return _Member(
        name=info.filename,
        kind=kind,
        size=info.file_size,
        mode=stat.S_IMODE(mode),
        detail=_SPECIAL_MODES.get(ftype, f"of unsupported file type {oct(ftype)}"),
        encrypted=bool(info.flag_bits & 0x1),
        ref=info,
    )


@contextmanager
def _open_reader(archive: Path, fmt: str, ctx: _Context) -> Iterator[tuple[_Reader, int]]:
    """Open the archive file (a missing file is the caller's OSError), then parse it as `fmt`.

    Also yields the size of the file opened, the ratio's denominator (fstat: the very file being read).
    """
    with open(archive, "rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        reader: _Reader
        with ctx.reading():
            reader = _ZipReader(raw) if fmt == "zip" else _TarReader(raw, _TAR_MODES[fmt])
        try:
            yield reader, size
        finally:
            reader.close()


# --- validation: every header, before anything is written -------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """A member that passed the per-member checks, with its normalised place under ``dest``."""

    member: _Member
    parts: tuple[str, ...]
    target: str = ""  # symlink: link text as stored; hardlink: normalised path of the linked file
    size: int = 0  # bytes this entry adds to the unpacked size (a hardlink counts as its file)

    @property
    def path(self) -> str:
        return "/".join(self.parts)

    @property
    def kind(self) -> _Kind:
        return self.member.kind


class _Caps:
    """The bomb caps on an unpacked total: checked on the declared sizes, then on the bytes written."""

    def __init__(self, limits: UnpackLimits, archive_size: int, ctx: _Context) -> None:
        self.limits = limits
        self._archive_size = archive_size
        self._ctx = ctx

    def check(self, total: int, member: str, what: str) -> None:
        """Refuse when `total` (`what`: declared or written) passes the size cap, or the ratio past its floor."""
        limits, size = self.limits, self._archive_size
        if total > limits.max_total_bytes:
            shown, cap = human_size(total), human_size(limits.max_total_bytes)
            if shown == cap:  # "1.0 MiB, over the limit of 1.0 MiB" would read as a bug
                shown, cap = f"{total} bytes", f"{limits.max_total_bytes} bytes"
            raise self._ctx.unsafe(
                member,
                f"takes {what} to {shown}, over the limit of {cap} "
                f"({_MAX_BYTES_SETTING}={limits.max_total_bytes})",
                f"if the archive is legitimately this large, raise {_MAX_BYTES_SETTING}",
            )
        if total > _RATIO_FLOOR and total > limits.max_ratio * size:
            raise self._ctx.unsafe(
                member,
                f"takes {what} to {human_size(total)}, {total / max(size, 1):,.0f} times the archive's "
                f"{human_size(size)}: "
                f"over the limit of {limits.max_ratio:g} times ({_MAX_RATIO_SETTING}={limits.max_ratio:g}) for "
                f"archives that unpack to more than {human_size(_RATIO_FLOOR)}, the mark of an archive bomb",
                f"if the archive legitimately compresses this well, raise {_MAX_RATIO_SETTING}",
            )


def _validate(reader: _Reader, caps: _Caps, ctx: _Context) -> list[_Entry]:
    """Check every header (streaming, so a bomb of headers is stopped early), then how members relate."""
    entries: list[_Entry] = []
    by_path: dict[str, _Entry] = {}
    declared = 0
    members = reader.members()
    count = 0
    while True:
        with ctx.reading():
            member = next(members, None)
        if member is None:
            break
        count += 1
        if count > caps.limits.max_members:
            raise ctx.unsafe(
                member.name,
                f"is beyond the limit of {caps.limits.max_members} members "
                f"({_MAX_MEMBERS_SETTING}={caps.limits.max_members})",
                f"if the archive legitimately has this many members, raise {_MAX_MEMBERS_SETTING}",
            )
        entry = _check_member(member, reader, by_path, ctx)
        if entry is None:
            continue
        declared += entry.size
        caps.check(declared, member.name, "the declared unpacked size")
        entries.append(entry)
        by_path[entry.path] = entry
    with ctx.reading():
        reader.finish()
    links = {entry.path: entry.target for entry in entries if entry.kind == "symlink"}
    for entry in entries:  # in archive order, so the first offending member is reported
        _check_placement(entry, by_path, links, ctx)
    return entries


def _check_member(member: _Member, reader: _Reader, seen: dict[str, _Entry], ctx: _Context) -> _Entry | None:
    """Per-member checks; None for members that need no action (the root entry, repeated directories)."""
    if member.kind == "special":
        raise ctx.unsafe(member.name, f"is {member.detail}; only files, directories and links are unpacked")
    if member.encrypted:
        raise ctx.corrupt(f"member {_show(member.name)} is encrypted; password-protected zips are not supported")
    parts = _member_parts(member.name, ctx)
    if not parts:
        if member.kind == "dir":
            return None  # ".", "./": the destination itself
        raise ctx.unsafe(member.name, "would replace the destination directory itself")
    earlier = seen.get("/".join(parts))
    if earlier is not None:
        if earlier.kind == "dir" and member.kind == "dir":
            return None
        raise ctx.unsafe(
            member.name,
            f"appears twice (also as {_show(earlier.member.name)}); a later member would silently replace an "
            "earlier one",
        )
    if member.kind == "file":
        if member.size < 0:
            raise ctx.corrupt(f"member {_show(member.name)} declares a negative size")
        return _Entry(member, parts, size=member.size)
    if member.kind == "dir":
        return _Entry(member, parts)
    if member.kind == "hardlink":
        return _check_hardlink(member, parts, seen, ctx)
    return _check_symlink_text(member, parts, reader, ctx)


def _member_parts(name: str, ctx: _Context) -> tuple[str, ...]:
    """Normalise a member name; zip names may use backslashes and drive letters (Windows tools)."""
    text = name.replace("\\", "/") if ctx.fmt == "zip" else name
    if text.startswith("/") or (ctx.fmt == "zip" and _DRIVE.match(text)):
        raise ctx.unsafe(name, "has an absolute path")
    parts = _normalise(text)
    if parts is None:
        raise ctx.unsafe(name, "climbs out of the destination with '..'")
    return parts


def _normalise(text: str) -> tuple[str, ...] | None:
    """Lexically normalise a relative POSIX path; None when a '..' climbs above its start.

    Lexical is right here because extraction only ever uses the normalised path, never the raw one.
    """
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return tuple(parts)


def _check_hardlink(
    member: _Member, parts: tuple[str, ...], seen: dict[str, _Entry], ctx: _Context
) -> _Entry:
    """A tar hardlink names another member; only an earlier regular file of this archive will do."""
    link = member.link
    if link.startswith("/"):
        raise ctx.unsafe(member.name, f"is a hardlink to the absolute path {_show(link)}, outside the archive")
    target = _normalise(link)
    if target is None:
        raise ctx.unsafe(member.name, f"is a hardlink to {_show(link)}, outside the destination")
    earlier = seen.get("/".join(target))
    if earlier is None or earlier.kind not in ("file", "hardlink"):
        raise ctx.unsafe(
            member.name, f"is a hardlink to {_show(link)}, which is not an earlier regular file in the archive"
        )
    return _Entry(member, parts, target=earlier.path, size=earlier.size)


def _check_symlink_text(member: _Member, parts: tuple[str, ...], reader: _Reader, ctx: _Context) -> _Entry:
    """Read and sanity-check the link text; where it resolves is checked once all links are known."""
    if member.size > _MAX_LINK_TEXT:
        raise ctx.unsafe(member.name, f"is a symlink whose target is {member.size} bytes long")
    with ctx.reading():
        text = reader.link_text(member)
    if not text or "\x00" in text:
        raise ctx.corrupt(f"symlink member {_show(member.name)} has an empty or invalid target")
    if text.startswith("/"):
        raise ctx.unsafe(member.name, f"is a symlink to the absolute path {_show(text)}, outside the destination")
    return _Entry(member, parts, target=text)


def _check_placement(entry: _Entry, by_path: dict[str, _Entry], links: dict[str, str], ctx: _Context) -> None:
    """Refuse members below a symlink or a file, and symlinks that resolve outside the destination."""
    for depth in range(1, len(entry.parts)):
        above = by_path.get("/".join(entry.parts[:depth]))
        if above is None or above.kind == "dir":
            continue
        if above.kind == "symlink":
            raise ctx.unsafe(
                entry.member.name,
                f"lies below the symlink {_show(above.member.name)}; writing through a link is how archives "
                "escape their destination",
            )
        raise ctx.unsafe(entry.member.name, f"lies below the file {_show(above.member.name)}")
    if entry.kind == "symlink":
        problem = _resolve_link(entry.parts[:-1], entry.target, links)
        if problem is not None:
            raise ctx.unsafe(entry.member.name, f"is a symlink to {_show(entry.target)}, which {problem}")


def _resolve_link(start: tuple[str, ...], text: str, links: dict[str, str]) -> str | None:
    """Resolve link `text` from directory `start` as the kernel would, through the archive's symlinks.

    Returns why the link is refused, or None when it stays inside. A purely lexical check is not
    enough: with ``x/d -> ..`` the link ``x/e -> d/..`` looks like ``x`` but really is the parent of
    the destination.
    """
    stack = list(start)
    pending = deque(text.split("/"))
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return "resolves outside the destination"
            stack.pop()
            continue
        stack.append(part)
        link = links.get("/".join(stack))
        if link is None:
            continue
        hops += 1
        if hops > _MAX_LINK_HOPS:
            return f"is part of a symlink loop (or a chain longer than {_MAX_LINK_HOPS} links)"
        if link.startswith("/"):
            return "resolves outside the destination through an absolute symlink"
        stack.pop()
        pending.extendleft(reversed(link.split("/")))
    return None


# --- extraction -------------------------------------------------------------------------------------


def _check_free_space(directory: Path, needed: int, ctx: _Context) -> int:
    """Refuse before writing when the declared total does not fit; returns the free bytes seen.

    An estimate (block rounding is ignored, a hardlink counts as the copy it may become), so running
    out of space while writing is still translated, by ``_Context.writing``.
    """
    usage = shutil.disk_usage(directory)
    reserve = min(_RESERVE_BYTES, int(usage.total * _RESERVE_FRACTION))
    if needed > usage.free - reserve:
        raise ctx.no_space(directory, needed, usage.free, reserve)
    return usage.free


class _Budget:
    """The caps again, on bytes actually written: headers can lie, the bytes cannot."""

    def __init__(self, caps: _Caps) -> None:
        self._caps = caps
        self._used = 0

    def charge(self, nbytes: int, member: str) -> None:
        self._used += nbytes
        self._caps.check(self._used, member, "the bytes actually unpacked")


class _Tree:
    """Creates files, directories and links below a root without ever following a symlink.

    Every directory on the way is opened with ``O_DIRECTORY | O_NOFOLLOW`` relative to its parent's fd,
    and files are created with ``O_EXCL | O_NOFOLLOW``: a link planted anywhere makes the call fail
    instead of writing elsewhere. The last directory fd is cached (members usually come grouped).
    """

    def __init__(self, root: Path) -> None:
        self._root = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._cached: tuple[tuple[str, ...], int] | None = None

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self._forget()
        os.close(self._root)

    def directory(self, parts: tuple[str, ...]) -> int:
        """A (borrowed) fd of directory `parts`, creating missing directories with mode 0o755."""
        if not parts:
            return self._root
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = os.dup(self._root)
        try:
            for part in parts:
                fd = _step_into(fd, part)
        except BaseException:
            os.close(fd)
            raise
        self._forget()
        self._cached = (parts, fd)
        return fd

    def create(self, parts: tuple[str, ...], mode: int) -> BinaryIO:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(parts[-1], flags, 0o600, dir_fd=self.directory(parts[:-1]))
        try:
            os.fchmod(fd, mode)  # explicit, so the umask cannot make files unreadable
            return os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise

    def read(self, parts: tuple[str, ...]) -> BinaryIO:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.directory(parts[:-1]))
        return os.fdopen(fd, "rb")

    def link(self, existing: tuple[str, ...], new: tuple[str, ...]) -> bool:
        """Hardlink `new` to `existing`; False when the filesystem does not do hardlinks."""
        src_dir = os.dup(self.directory(existing[:-1]))
        try:
            os.link(
                existing[-1],
                new[-1],
                src_dir_fd=src_dir,
                dst_dir_fd=self.directory(new[:-1]),
                follow_symlinks=False,
            )
        except OSError as exc:
            if exc.errno in _LINK_FALLBACK_ERRNOS:
                return False
            raise
        finally:
            os.close(src_dir)
        return True

    def symlink(self, parts: tuple[str, ...], text: str) -> None:
        os.symlink(text, parts[-1], dir_fd=self.directory(parts[:-1]))

    def _forget(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None


def _step_into(parent: int, name: str) -> int:
    """Open (creating if needed) directory `name` below fd `parent`, refusing links; closes `parent`."""
    try:
        os.mkdir(name, _DIR_MODE, dir_fd=parent)
        created = True
    except FileExistsError:
        created = False
    try:
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)
    if created:
        os.fchmod(child, _DIR_MODE)
    return child


def _file_mode(archive_mode: int) -> int:
    """Keep the archive's exec bits; drop setuid/setgid/sticky and group/other write; owner rw always."""
    return (archive_mode & 0o755) | 0o644


def _extract(reader: _Reader, entries: list[_Entry], root: Path, caps: _Caps, ctx: _Context) -> list[UnpackedFile]:
    """Write the validated entries below `root`; symlinks last, so nothing is ever written through one."""
    budget = _Budget(caps)
    files: dict[str, UnpackedFile] = {}
    with _Tree(root) as tree:
        for entry in entries:
            if entry.kind == "dir":
                tree.directory(entry.parts)
            elif entry.kind == "file":
                files[entry.path] = _write_file(reader, entry, tree, budget, ctx)
            elif entry.kind == "hardlink":
                files[entry.path] = _write_hardlink(entry, files[entry.target], tree, budget, ctx)
        for entry in entries:
            if entry.kind == "symlink":
                tree.symlink(entry.parts, entry.target)
    return sorted(files.values(), key=lambda f: f.path)


def _write_file(reader: _Reader, entry: _Entry, tree: _Tree, budget: _Budget, ctx: _Context) -> UnpackedFile:
    with ctx.reading():
        source = reader.open(entry.member)
    with source, tree.create(entry.parts, _file_mode(entry.member.mode)) as out:
        size, digest = _copy(source, out, entry, budget, ctx)
    return UnpackedFile(entry.path, size, digest)


def _write_hardlink(
    entry: _Entry, original: UnpackedFile, tree: _Tree, budget: _Budget, ctx: _Context
) -> UnpackedFile:
    """A hardlink becomes a link inside the temp dir, or a copy where the filesystem has no hardlinks."""
    existing = tuple(original.path.split("/"))
    if not tree.link(existing, entry.parts):
        with tree.read(existing) as source, tree.create(entry.parts, _file_mode(entry.member.mode)) as out:
            _copy(source, out, entry, budget, ctx)
    return UnpackedFile(entry.path, original.size, original.sha256)


def _copy(source: IO[bytes], out: BinaryIO, entry: _Entry, budget: _Budget, ctx: _Context) -> tuple[int, str]:
    """Stream one member in 1 MiB chunks, hashing as it writes, never past its declared size or the cap."""
    digest = hashlib.sha256()
    written = 0
    name = entry.member.name
    while True:
        with ctx.reading():
            chunk = source.read(_CHUNK)
        if not chunk:
            break
        written += len(chunk)
        budget.charge(len(chunk), name)
        if written > entry.size:
            raise ctx.unsafe(
                name,
                f"yields more than the {entry.size} bytes its header declares (a lying header is how "
                "archive bombs work)",
            )
        digest.update(chunk)
        out.write(chunk)
    if written != entry.size:
        raise ctx.corrupt(f"member {_show(name)} holds {written} bytes but its header declares {entry.size}")
    return written, digest.hexdigest()


def _publish(tmp: Path, dest: Path, ctx: _Context) -> None:
    """The one step that makes the result visible: a rename of the finished temp dir."""
    os.chmod(tmp, _DIR_MODE)
    if os.path.lexists(dest):  # rename() would silently replace an empty directory
        raise ctx.dest_exists(dest)
    try:
        os.rename(tmp, dest)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise ctx.dest_exists(dest) from exc
        raise
