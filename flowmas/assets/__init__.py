"""Declared assets: fetched once, verified while streaming, published atomically, shared by all processes.

Invariants: the rename of a complete staging directory is the commit, so a reader sees a whole entry or
none; the lock only prevents duplicate downloads; a hit never hashes; tokens never leave the request.
"""

from flowmas.assets.manager import AssetManager, AssetStatus, DownloadResult, VerifyResult
from flowmas.assets.manifest import AssetConfig

__all__ = ["AssetConfig", "AssetManager", "AssetStatus", "DownloadResult", "VerifyResult"]
