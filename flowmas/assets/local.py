"""Fetch an asset from a local file or directory: copied through the hashing pipeline, or hardlinked.

A local file can be rewritten while it is copied (an exporter still writing the model): its identity
(device, inode, size, mtime, ctime) is taken before the copy from the open descriptor and compared after
it with both the descriptor and the path; a change means the copy may be torn, so it is retried, and
after ``ATTEMPTS`` changed copies it fails with ``SourceChangedError`` (transient) and publishes nothing.
Only regular files and directories are sources: a FIFO would block the copy forever and a device has no
end, so both are refused by name. A directory that contains the cache would copy itself until the path
is too long: refused, naming both.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from pathlib import Path

from flowmas.assets.manifest import AssetConfig, LocalSourceConfig
from flowmas.assets.progress import Progress
from flowmas.assets.record import Fetched
from flowmas.assets.streaming import copy_and_hash, sha256_file
from flowmas.assets.unpack import UnpackedFile
from flowmas.errors import (
    ConfigurationError,
    DownloadError,
    SourceChangedError,
    SourceNotFoundError,
    describe_os_error,
)

log = logging.getLogger("flowmas.assets")

ATTEMPTS = 3
_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}

_Identity = tuple[int, int, int, int, int]


class LocalSource:
    def fetch(self, asset: AssetConfig, part: Path, progress: Progress, *, cache_root: Path) -> Fetched:
        source = asset.source
        assert isinstance(source, LocalSourceConfig)
        path = source.path
        info = _stat(path, asset)
        if stat.S_ISDIR(info.st_mode):
            if asset.checksum or asset.unpack:
                raise ConfigurationError(
                    f"Asset {asset.name!r}: {path} is a directory; 'checksum' and 'unpack' apply to a single file.")
            _refuse_cache_inside(path, cache_root, asset)
            return _copy_tree(path, part, progress, asset)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(
                f"Asset {asset.name!r}: {path} is {_KINDS.get(stat.S_IFMT(info.st_mode), 'not a regular file')}, "
                "not a file or a directory; point 'source.path' at the file itself.")
        _remove(part)
        progress.start(info.st_size, 0)
        if source.hardlink:
            try:
                os.link(path, part)
                return Fetched(sha256=sha256_file(part, progress.advance), size=part.stat().st_size, details={})
            except OSError:
                pass  # another filesystem, or links not allowed: copy instead
        digest, size = _copy_file(path, part, progress, asset)
        return Fetched(sha256=digest, size=size, details={})


def _stat(path: Path, asset: AssetConfig) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise SourceNotFoundError(
            f"Asset {asset.name!r}: local path {path} does not exist; check 'source.path' "
            "(relative paths are resolved against the project file's directory).",
            asset=asset.name,
        ) from None
    except OSError as exc:
        raise DownloadError(f"Asset {asset.name!r}: cannot read the local source: {describe_os_error(exc)}",
                            asset=asset.name) from None


def _identity(info: os.stat_result) -> _Identity:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _copy_file(src: Path, dest: Path, progress: Progress, asset: AssetConfig) -> tuple[str, int]:
    """Copy ``src`` through the hashing pipeline, again if it changed meanwhile; never a torn copy."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: a FIFO swapped in
        except OSError as exc:
            raise DownloadError(f"Asset {asset.name!r}: cannot open the local source: {describe_os_error(exc)}",
                                asset=asset.name) from None
        with os.fdopen(fd, "rb", buffering=0) as file:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise ConfigurationError(f"Asset {asset.name!r}: {src} stopped being a regular file.")
            os.set_blocking(fd, True)
            digest, size = copy_and_hash(file, dest, progress.advance)
            after = os.fstat(fd)
        try:
            now = os.stat(src)
        except OSError:
            now = None
        if _identity(before) == _identity(after) and now is not None and _identity(now) == _identity(before) \
                and size == before.st_size:
            return digest, size
        log.warning("%s: %s changed while it was copied (attempt %d of %d); copying it again",
                    asset.name, src, attempt, ATTEMPTS)
        _remove(dest)
        progress.start(now.st_size if now else None, 0)
    raise SourceChangedError(
        f"Asset {asset.name!r}: {src} kept changing while it was copied ({ATTEMPTS} attempts), so no copy can be "
        "trusted and nothing was published. Try again once whatever writes it is done.", asset=asset.name)


def _refuse_cache_inside(root: Path, cache_root: Path, asset: AssetConfig) -> None:
    cache = cache_root.resolve()
    source = root.resolve()
    if cache == source or cache.is_relative_to(source):
        raise ConfigurationError(
            f"Asset {asset.name!r}: the local directory {root} contains the asset cache ({cache_root}), so copying "
            "it would copy the cache into itself. Move the cache (FLOWMAS_ASSETS_DIR or settings.assets.cache_dir) "
            "out of it, or point 'source.path' at a directory that does not hold it.")


def _copy_tree(root: Path, dest: Path, progress: Progress, asset: AssetConfig) -> Fetched:
    _remove(dest)
    files: list[UnpackedFile] = []
    skipped: list[str] = []
    progress.start(None, 0)
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        rel_dir = Path(directory).relative_to(root)
        (dest / rel_dir).mkdir(parents=True, exist_ok=True)
        for name in sorted(names):
            src = Path(directory, name)
            if src.is_symlink() or not src.is_file():
                skipped.append((rel_dir / name).as_posix())  # only regular files: a link could point anywhere
                continue
            digest, size = _copy_file(src, dest / rel_dir / name, progress, asset)
            files.append(UnpackedFile(path=(rel_dir / name).as_posix(), size=size, sha256=digest))
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        log.warning("%s: copied regular files only; skipped links and special files: %s", asset.name, shown)
    return Fetched(sha256="", size=sum(f.size for f in files), details={}, files=files)


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
