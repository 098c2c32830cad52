"""What a source hands back (``Fetched``) and what the cache writes down (``AssetRecord``, ``FileEntry``).

``record.json`` is the commit marker of a cache entry: written into the staging directory last, it is
published by the same rename as the asset. It sits beside the asset's ``data/`` directory, never inside
it, so no file of an asset (an archive member, a Hub file, a local file) can be mistaken for it. It stays
small whatever the asset holds: the per-file list of an unpacked archive or a directory lives in
``files.json``, which only ``verify`` reads. It never holds a token or a URL's userinfo or query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from flowmas.assets.unpack import UnpackedFile


@dataclass(frozen=True)
class Fetched:
    """A source's result: the digest and size of the bytes it delivered (the archive, for unpack assets)."""

    sha256: str
    size: int
    details: dict[str, Any]
    files: list[UnpackedFile] | None = field(default=None)


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    size: int
    sha256: str


class ProjectRef(BaseModel):
    """The project that fetched an entry: cleanup evicts an undeclared entry only for its own project."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    file: str | None = None

    def owns(self, other: ProjectRef | None) -> bool:
        if other is None:
            return False
        if self.file is not None and other.file is not None:
            return self.file == other.file
        return self.name == other.name


class AssetRecord(BaseModel):
    """The content of ``record.json``; the file's mtime is when the entry was last used."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    version: str
    asset_type: str
    identity: str
    """sha256 of the declaration's identity (source, checksum, unpack settings): a change means stale."""
    project: ProjectRef | None = None
    source: dict[str, Any]
    """Where the bytes came from (URLs redacted): the URL, the repo and its resolved commit, or the local path."""
    checksum: str | None
    sha256: str
    """Digest of the fetched bytes (the archive, for unpacked assets; empty for a copied directory)."""
    size: int
    path: str
    """Path of what ``get_asset_path`` returns, relative to the entry directory (``data`` or ``data/<file>``)."""
    is_dir: bool
    mtime_ns: int
    """mtime of the returned file: together with ``size``, the cheap proof that a hit is intact."""
    etag: str | None = None
    last_modified: str | None = None
    file_count: int | None = None
    """How many files ``files.json`` lists (unpacked archives and directories)."""
    downloaded_at: datetime
