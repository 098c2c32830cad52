"""Where the file service keeps files: one ``StorageManager`` protocol, three managers, one contract suite.

Invariants: keys are the service's signatures and session refs only (no user string is ever a path or an
object key); a write is invisible until complete and leaves nothing when it fails; the metadata document,
written after the data, is the commit; indexes are written before the data, so every crash is swept.
"""

from flowmas.files.storage.base import IndexEntry, StorageManager, Versioned, new_key, session_ref
from flowmas.files.storage.local import LocalStorageManager
from flowmas.files.storage.memory import MemoryStorageManager, MemoryStore
from flowmas.files.storage.s3 import S3StorageManager

__all__ = [
    "IndexEntry",
    "LocalStorageManager",
    "MemoryStorageManager",
    "MemoryStore",
    "S3StorageManager",
    "StorageManager",
    "Versioned",
    "new_key",
    "session_ref",
]
