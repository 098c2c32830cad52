"""Fetch an asset from a local file or directory: copied through the hashing pipeline, or hardlinked."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flowmas.assets.manifest import AssetConfig, LocalSourceConfig
from flowmas.assets.progress import Progress
from flowmas.assets.record import Fetched
from flowmas.assets.streaming import copy_and_hash, sha256_file
from flowmas.assets.unpack import UnpackedFile
from flowmas.errors import ConfigurationError, SourceNotFoundError


class LocalSource:
    def fetch(self, asset: AssetConfig, part: Path, progress: Progress) -> Fetched:
        source = asset.source
        assert isinstance(source, LocalSourceConfig)
        path = source.path
        if path.is_dir():
            if asset.checksum or asset.unpack:
                raise ConfigurationError(
                    f"Asset {asset.name!r}: {path} is a directory; 'checksum' and 'unpack' apply to a single file."
                )
            return _copy_tree(path, part, progress)
        if not path.is_file():
            raise SourceNotFoundError(
                f"Asset {asset.name!r}: local path {path} does not exist; check 'source.path' "
                "(relative paths are resolved against the project file's directory).",
                asset=asset.name,
            )
        part.unlink(missing_ok=True)
        progress.start(path.stat().st_size, 0)
        if source.hardlink:
            try:
                os.link(path, part)
                return Fetched(sha256=sha256_file(part, progress.advance), size=part.stat().st_size, details={})
            except OSError:
                pass  # another filesystem, or links not allowed: copy instead
        with open(path, "rb", buffering=0) as file:
            digest, size = copy_and_hash(file, part, progress.advance)
        return Fetched(sha256=digest, size=size, details={})


def _copy_tree(root: Path, dest: Path, progress: Progress) -> Fetched:
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    files: list[UnpackedFile] = []
    progress.start(None, 0)
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        rel_dir = Path(directory).relative_to(root)
        (dest / rel_dir).mkdir(parents=True, exist_ok=True)
        for name in sorted(names):
            src = Path(directory, name)
            if src.is_symlink() or not src.is_file():
                continue  # only regular files: a link could point anywhere
            with open(src, "rb", buffering=0) as file:
                digest, size = copy_and_hash(file, dest / rel_dir / name, progress.advance)
            files.append(UnpackedFile(path=(rel_dir / name).as_posix(), size=size, sha256=digest))
    return Fetched(sha256="", size=sum(f.size for f in files), details={}, files=files)
