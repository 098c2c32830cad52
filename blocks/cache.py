"""The agent cache as Prefect Blocks: configuration only, each a factory for a core ``flowmas.cache`` object.

    RedisCacheBlock     (redis-cache)      url (secret) or host/port/db + password (secret)  -> RedisCache
    EmbeddedCacheBlock  (embedded-cache)   store name                                         -> EmbeddedCache

Secrets are ``SecretStr`` (a Redis URL may carry a password, so the whole URL is secret): Prefect stores them
encrypted and shows them obscured, and they are revealed only when ``cache()`` builds the client.

An embedded cache lives in process memory, so loading a block twice must not give two caches that cannot see
each other's mailboxes: ``EmbeddedCacheBlock.cache()`` returns a view of one ``EmbeddedCache`` per ``store``
name per process (the engine and the OPACA container of ``flowmas up`` share it).
"""

from __future__ import annotations

import threading
from typing import ClassVar, cast

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from flowmas.cache import BaseCache, EmbeddedCache, RedisCache
from flowmas.errors import ConfigurationError
from flowmas.text import one_line, shorten

__all__ = ["CACHE_BLOCKS", "CacheBlock", "EmbeddedCacheBlock", "RedisCacheBlock", "load_cache_block"]


class CacheBlock(Block):
    """What every cache block offers: the cache it configures."""

    namespace: str = Field(default="", description="Default namespace (prefix); a run's own is its run id.")

    def cache(self) -> BaseCache:  # pragma: no cover - every concrete block overrides it
        raise NotImplementedError


class RedisCacheBlock(CacheBlock):
    """A Redis server (or cluster proxy) holding the agent cache of every worker of a deployment."""

    _block_type_name: ClassVar[str] = "Redis Cache"
    _block_type_slug: ClassVar[str] = "redis-cache"
    _description: ClassVar[str] = (
        "flowmas agent cache in Redis: JSON values, namespaces per run, mailboxes (queues) and broadcast "
        "channels, snapshots. Give a URL, or host/port/db and a password.")

    url: SecretStr | None = Field(
        default=None, description="redis://[user:password@]host:port/db, rediss:// (TLS) or unix:///path?db=N; "
        "when set, host/port/db/username/ssl are ignored.")
    host: str = Field(default="localhost", description="Redis host (when no URL is given).")
    port: int = Field(default=6379, ge=1, le=65535, description="Redis port.")
    db: int = Field(default=0, ge=0, description="Database number.")
    username: str | None = Field(default=None, description="ACL user name (Redis 6+).")
    password: SecretStr | None = Field(default=None, description="Password; overrides one in the URL.")
    ssl: bool = Field(default=False, description="Use TLS (when no URL is given).")
    key_root: str = Field(default="fm", description="Every key of this cache starts with it.")
    socket_timeout: float = Field(default=10.0, gt=0, description="Seconds a command may take.")

    def cache(self) -> RedisCache:
        password = self.password.get_secret_value() if self.password is not None else None
        if self.url is not None:
            return RedisCache(self.url.get_secret_value(), password=password, namespace=self.namespace,
                              key_root=self.key_root, socket_timeout=self.socket_timeout)
        return RedisCache.from_params(self.host, self.port, self.db, password, username=self.username, ssl=self.ssl,
                                      namespace=self.namespace, key_root=self.key_root,
                                      socket_timeout=self.socket_timeout)


_stores: dict[str, EmbeddedCache] = {}
_stores_lock = threading.Lock()


class EmbeddedCacheBlock(CacheBlock):
    """The agent cache in this process's memory: ``flowmas up``'s default, tests, single-process deployments."""

    _block_type_name: ClassVar[str] = "Embedded Cache"
    _block_type_slug: ClassVar[str] = "embedded-cache"
    _description: ClassVar[str] = (
        "flowmas agent cache in the memory of one process (shared by every block of the same store name in "
        "that process; gone when it exits).")

    store: str = Field(default="default", description="Blocks naming the same store share one cache per process.")

    def cache(self) -> BaseCache:
        from flowmas.cache import process_cache

        with _stores_lock:
            shared = _stores.get(self.store)
            if shared is None:  # "default" is the process's one cache, the graphs' default without a block
                shared = _stores[self.store] = process_cache() if self.store == "default" else EmbeddedCache()
        return shared.namespaced(self.namespace)


CACHE_BLOCKS: tuple[type[CacheBlock], ...] = (RedisCacheBlock, EmbeddedCacheBlock)


def load_cache_block(reference: str) -> CacheBlock:
    """The saved cache block ``reference`` names: ``<slug>/<name>`` (``redis-cache/prod``), or a ``<name>`` only one
    cache block type has; every failure is a ``ConfigurationError`` naming what to fix."""
    from prefect.exceptions import ObjectNotFound

    text = reference.strip()
    slugs = {block.get_block_type_slug(): block for block in CACHE_BLOCKS}
    slug, _, name = text.rpartition("/")
    shown = repr(shorten(one_line(reference), 80))
    if not name:
        raise ConfigurationError(f"Cache block {shown} names no block: use '<name>' or '<slug>/<name>' "
                                 f"(slugs: {', '.join(slugs)}).")
    if slug and slug not in slugs:
        raise ConfigurationError(f"Cache block {shown}: {slug!r} is not a cache block type (use one of "
                                 f"{', '.join(slugs)}).")
    found: list[CacheBlock] = []
    for block_type in [slugs[slug]] if slug else list(CACHE_BLOCKS):
        try:
            found.append(cast(CacheBlock, block_type.load(name, _sync=True)))  # type: ignore[call-arg]
        except (ObjectNotFound, ValueError):
            continue
    if not found:
        raise ConfigurationError(f"No saved {slug or ' or '.join(slugs)} block is named {shown}: save one (e.g. "
                                 f"RedisCacheBlock(url=...).save({name!r})) or fix the name.")
    if len(found) > 1:
        raise ConfigurationError(f"Several cache blocks are named {shown}: name one as '<slug>/<name>'.")
    return found[0]
