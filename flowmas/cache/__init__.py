"""The agent cache (``flowmas.cache``): one ``Cache`` contract, two backends.

``EmbeddedCache`` keeps everything in process memory (the default of ``flowmas up``); ``RedisCache`` keeps it
in Redis, shared by every worker of a deployment. ``cache_from_url`` picks one from a URL. Values are JSON (or
raw bytes), namespaced by a prefix (a run's namespace is its run id) and an optional suffix; mailboxes are
queues (each message to one consumer), channels broadcast to every current subscriber; a namespace can be
dumped to plain JSON for snapshots and loaded back. ``base.py`` states the rules both backends share.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

from flowmas.cache.base import RAISE, BaseCache, Cache, NamespaceDump
from flowmas.cache.embedded import EmbeddedCache
from flowmas.cache.redis_cache import RedisCache
from flowmas.errors import ConfigurationError

__all__ = ["RAISE", "BaseCache", "Cache", "EmbeddedCache", "NamespaceDump", "RedisCache", "cache_from_url",
           "process_cache"]

REDIS_SCHEMES = ("redis", "rediss", "unix")


def cache_from_url(url: str | None, **options: Any) -> BaseCache:
    """The cache a URL names: ``None``/``""``/``memory://`` an ``EmbeddedCache``; ``redis://``, ``rediss://``
    (TLS) or ``unix://`` a ``RedisCache``. ``options`` go to the backend (``namespace=``, ...)."""
    if url is None or url.strip() in ("", "memory://", "memory:"):
        return EmbeddedCache(**options)
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme in REDIS_SCHEMES:
        return RedisCache(url.strip(), **options)
    shown = f"{scheme}://" if scheme else "a URL without a scheme"
    raise ConfigurationError(
        f"Unsupported cache URL scheme: {shown}. Use memory:// (in process), redis://, rediss:// or unix://.")


_process_cache: EmbeddedCache | None = None
_process_lock = threading.Lock()


def process_cache() -> EmbeddedCache:
    """This process's one embedded cache, never closed: an Agent without a cache, the Graphs agent and the graph
    runs of ``flowmas up`` share it (runs are apart by their namespaces), as they would share one Redis."""
    global _process_cache
    with _process_lock:
        if _process_cache is None:
            _process_cache = EmbeddedCache()
        return _process_cache
