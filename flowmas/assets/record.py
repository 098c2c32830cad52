"""What a source hands back (``Fetched``) and what the cache writes down (``AssetRecord``).

``.asset_info.json`` is the commit marker of a cache entry: it is written last, atomically, and a version
directory without it is not an asset. It never holds a token.
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


class AssetRecord(BaseModel):
    """The content of ``.asset_info.json``."""

    model_config = ConfigDict(extra="ignore")

    name: str
    version: str
    asset_type: str
    identity: str
    """sha256 of the declaration's identity (source, checksum, unpack settings): a change means stale."""
    source: dict[str, Any]
    """Where the bytes came from: the URL, the repo and its resolved commit, or the local path."""
    checksum: str | None
    sha256: str
    """Digest of the fetched bytes (the archive, for unpacked assets; empty for a copied directory)."""
    size: int
    path: str
    """Relative path of what ``get_asset_path`` returns, inside the version directory ("." for the directory)."""
    is_dir: bool
    mtime_ns: int
    """mtime of the returned file: together with ``size``, the cheap proof that a hit is intact."""
    etag: str | None = None
    last_modified: str | None = None
    files: list[FileEntry] | None = None
    downloaded_at: datetime
    last_used_at: datetime
