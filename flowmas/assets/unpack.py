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
* **Sizes are capped twice**: the declared total before extracting, and the bytes actually written while
  extracting (a member may never yield more than its header declares).
* **Modes are sanitised**: no setuid/setgid/sticky bits, no group/other write, owner read/write always;
  directories are 0o755.
* **Errors**: ``UnsafeArchiveError`` for safety and limit violations, ``UnpackError`` for corrupt,
  truncated or mis-declared archives. OS errors while *writing* (disk full, permissions) propagate
  unchanged. In every case the temp dir is gone and ``dest`` does not exist.

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

from flowmas.errors import UnpackError, UnsafeArchiveError

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
    """Caps that stop archive bombs; raise them for assets that are legitimately bigger."""

    max_total_bytes: int = 32 * 2**30  # cap on total uncompressed size (declared and actually written)
    max_members: int = 100_000


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
) -> list[UnpackedFile]:
    """Extract `archive` into `dest` (which must not exist yet) safely and atomically.

    Returns the regular files (hardlinks included, symlinks and directories not), sorted by path.
    """
    archive, dest = Path(archive), Path(dest)
    ctx = _Context(archive, fmt, asset)
    if fmt not in _FORMATS:
        raise UnpackError(
            f"Unknown archive format {fmt!r} for {ctx.where()}: use one of {', '.join(_FORMATS)}; "
            "check unpack_format in flowmas.yaml.",
            asset=asset,
        )
    if os.path.lexists(dest):
        raise ctx.dest_exists(dest)
    with _open_reader(archive, fmt, ctx) as reader:
        entries = _validate(reader, limits, ctx)
        tmp = dest.parent / f".{dest.name}.unpack-{uuid.uuid4().hex}"
        os.mkdir(tmp, 0o700)
        try:
            files = _extract(reader, entries, tmp, limits, ctx)
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


@dataclass(frozen=True)
class _Context:
    """What every error message needs: which archive, declared as what, for which asset."""

    archive: Path
    fmt: str
    asset: str | None

    def where(self) -> str:
        asset = f", asset {self.asset!r}" if self.asset else ""
        return f"{self.archive.name} ({self.fmt}{asset})"

    def unsafe(self, member: str, reason: str, fix: str = _REPACK) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"Refusing to unpack {self.where()}: member {member!r} {reason}. "
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
            raise self.corrupt(f"{type(exc).__name__}: {exc}") from exc


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
def _open_reader(archive: Path, fmt: str, ctx: _Context) -> Iterator[_Reader]:
    """Open the archive file (a missing file is the caller's OSError), then parse it as `fmt`."""
    with open(archive, "rb") as raw:
        reader: _Reader
        with ctx.reading():
            reader = _ZipReader(raw) if fmt == "zip" else _TarReader(raw, _TAR_MODES[fmt])
        try:
            yield reader
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


def _validate(reader: _Reader, limits: UnpackLimits, ctx: _Context) -> list[_Entry]:
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
        if count > limits.max_members:
            raise ctx.unsafe(
                member.name,
                f"is beyond the limit of {limits.max_members} members",
                "raise UnpackLimits.max_members if the archive is legitimately this large",
            )
        entry = _check_member(member, reader, by_path, ctx)
        if entry is None:
            continue
        declared += entry.size
        if declared > limits.max_total_bytes:
            raise ctx.unsafe(
                member.name,
                f"takes the declared unpacked size to {declared} bytes, over the limit of "
                f"{limits.max_total_bytes} bytes",
                "raise UnpackLimits.max_total_bytes if the archive is legitimately this large",
            )
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
        raise ctx.corrupt(f"member {member.name!r} is encrypted; password-protected zips are not supported")
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
            f"appears twice (also as {earlier.member.name!r}); a later member would silently replace an "
            "earlier one",
        )
    if member.kind == "file":
        if member.size < 0:
            raise ctx.corrupt(f"member {member.name!r} declares a negative size")
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
        raise ctx.unsafe(member.name, f"is a hardlink to the absolute path {link!r}, outside the archive")
    target = _normalise(link)
    if target is None:
        raise ctx.unsafe(member.name, f"is a hardlink to {link!r}, outside the destination")
    earlier = seen.get("/".join(target))
    if earlier is None or earlier.kind not in ("file", "hardlink"):
        raise ctx.unsafe(
            member.name, f"is a hardlink to {link!r}, which is not an earlier regular file in the archive"
        )
    return _Entry(member, parts, target=earlier.path, size=earlier.size)


def _check_symlink_text(member: _Member, parts: tuple[str, ...], reader: _Reader, ctx: _Context) -> _Entry:
    """Read and sanity-check the link text; where it resolves is checked once all links are known."""
    if member.size > _MAX_LINK_TEXT:
        raise ctx.unsafe(member.name, f"is a symlink whose target is {member.size} bytes long")
    with ctx.reading():
        text = reader.link_text(member)
    if not text or "\x00" in text:
        raise ctx.corrupt(f"symlink member {member.name!r} has an empty or invalid target")
    if text.startswith("/"):
        raise ctx.unsafe(member.name, f"is a symlink to the absolute path {text!r}, outside the destination")
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
                f"lies below the symlink {above.member.name!r}; writing through a link is how archives "
                "escape their destination",
            )
        raise ctx.unsafe(entry.member.name, f"lies below the file {above.member.name!r}")
    if entry.kind == "symlink":
        problem = _resolve_link(entry.parts[:-1], entry.target, links)
        if problem is not None:
            raise ctx.unsafe(entry.member.name, f"is a symlink to {entry.target!r}, which {problem}")


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


class _Budget:
    """The cap on bytes actually written: headers can lie, the bytes cannot."""

    def __init__(self, limit: int, ctx: _Context) -> None:
        self._limit = limit
        self._used = 0
        self._ctx = ctx

    def charge(self, nbytes: int, member: str) -> None:
        self._used += nbytes
        if self._used > self._limit:
            raise self._ctx.unsafe(
                member,
                f"takes the bytes actually unpacked past the limit of {self._limit} bytes (an archive bomb?)",
                "raise UnpackLimits.max_total_bytes if the archive is legitimately this large",
            )


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


def _extract(
    reader: _Reader, entries: list[_Entry], root: Path, limits: UnpackLimits, ctx: _Context
) -> list[UnpackedFile]:
    """Write the validated entries below `root`; symlinks last, so nothing is ever written through one."""
    budget = _Budget(limits.max_total_bytes, ctx)
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
        raise ctx.corrupt(f"member {name!r} holds {written} bytes but its header declares {entry.size}")
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
