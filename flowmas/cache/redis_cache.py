"""``RedisCache``: the ``Cache`` contract on Redis (redis.asyncio), shared by every worker of a deployment.

Key scheme (root ``fm`` by default, namespace = prefix ``P``, suffix ``s``, separator ``:``)::

    fm{P}:kv:<key>[:s]      a value      STRING: JSON text, or NUL + raw bytes; SET PX for a TTL
    fm{P}:mb:<name>[:s]     a mailbox    LIST:   RPUSH to publish, BLPOP/LPOP to consume (FIFO, one consumer)
    fm{P}:ch:<name>[:s]     a channel    PUBLISH/SUBSCRIBE only; it holds no data
    fm{P}:ix:               the index    ZSET:   every kv and mb name of the namespace (all suffixes), scored
    └┬┘└┬┘ └┬┘                           with its expiry in ms since the epoch by Redis's clock (+inf: none)
     │  │   └ the kind: values and mailboxes can never collide, and listing values skips mailboxes
     │  └ the namespace in braces: prefixes may not hold braces, so the first ``}`` ends it ("a" never sees
     │    "a:kv:b"'s keys), and it is a Redis Cluster hash tag (a namespace and its index live in one slot)
     └ ``key_root``: every flowmas key of a database starts with it (a per-deployment or per-test root)

What each operation sends:

* ``get`` GET; ``get_many`` one MGET.
* ``set`` SET [PX] + ZADD to the index in one script (EVALSHA: one command, atomic; a TTL'd write also drops
  index entries that expired over a minute ago, so names written once with a TTL cannot pile up);
  ``delete``/``delete_many`` UNLINK + ZREM, ``publish_to_mailbox`` RPUSH [+ LTRIM for ``max_length``] [+ PEXPIRE
  for ``ttl``] + ZADD, each one script.
* ``keys`` ZRANGE of the index; ``get_all`` that, then the MGETs in one pipeline; ``dump_namespace`` that, then
  GET+PTTL / LRANGE in one MULTI (a consistent view of the namespace). Names listed that no longer exist
  (expired, or a mailbox consumed to empty) are dropped from the index on the way. Listing costs the size of
  the namespace, never of the database: a graph run snapshotting after every node on a Redis shared with
  millions of other keys pays for its own keys only.
* ``clear`` SCAN MATCH ``fm{P}:*`` (or ``fm{P}:*:s``) + one UNLINK per page, and ``load_namespace`` (replace)
  that SCAN, then UNLINK + SET + RPUSH + ZADD in one MULTI that lands whole or not at all: removal is not
  trusted to the index, so everything in the namespace goes, whatever wrote it (never KEYS).
* ``get_message`` BLPOP (LPOP for ``timeout=0``) on a second pool without socket timeout, so a waiting consumer
  never holds a connection other commands need; ``publish``/``subscribe`` PUBLISH and a PubSub connection.

A key written into the namespace by something other than flowmas without its index entry is not listed (and
not snapshotted); ``clear`` still removes it.
Writes run Lua scripts (EVALSHA, loaded on first use): a Redis ACL user needs ``+@scripting`` besides
reads and writes.

Connection errors become ``CacheConnectionError`` naming ``host:port`` (never the password), refused
credentials ``CacheError``. A ``RedisCache`` is bound to the event loop it is first used on (redis.asyncio's
rule); use one per loop. A consumer cancelled while its BLPOP is in flight drops that connection; a message
Redis handed over in that instant is lost (as with any BLPOP consumer).
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, cast
from urllib.parse import quote

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from flowmas.cache.base import (
    RAISE,
    RAW_TAG,
    BaseCache,
    NamespaceDump,
    check_dump,
    check_max_length,
    check_timeout,
    check_ttl,
    decode,
    dump_entries,
    encode,
    is_json,
)
from flowmas.errors import CacheConnectionError, CacheError, ConfigurationError, MailboxError
from flowmas.text import one_line, shorten

__all__ = ["RedisCache"]

log = logging.getLogger("flowmas.cache")

BATCH: Final = 1000
GRACE_MS: Final = 60_000
"""Index entries are trimmed this long after their expiry, so a clock that differs (a namespace loaded from a
snapshot is scored by the loader's clock) never drops a live key from the index."""
NEVER: Final = float("inf")
_INDEX_ENTRY: Final = f"""
local function index(name, index_name, px)
  if px then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZADD', index_name, now + px, name)
    redis.call('ZREMRANGEBYSCORE', index_name, '-inf', '(' .. (now - {GRACE_MS}))
  else
    redis.call('ZADD', index_name, 'inf', name)
  end
end
"""
"""The index entry of a name written with a TTL of ``px`` ms (or none), scored by Redis's clock; a TTL'd entry
also trims the entries that expired over ``GRACE_MS`` ago. Shared by the write scripts below."""
_SET: Final = _INDEX_ENTRY + """
local px = tonumber(ARGV[2])
if px then redis.call('SET', KEYS[1], ARGV[1], 'PX', px) else redis.call('SET', KEYS[1], ARGV[1]) end
index(KEYS[1], KEYS[2], px)
return 1
"""
"""KEYS: the value's name, the index; ARGV: the bytes, the TTL in ms or ''. SET and its index entry atomically in
one command (a MULTI of the same costs ~1.6x a bare SET from redis-py; this ~1.1-1.2x)."""
_PUSH: Final = _INDEX_ENTRY + """
redis.call('RPUSH', KEYS[1], ARGV[1])
local most = tonumber(ARGV[2])
if most then redis.call('LTRIM', KEYS[1], -most, -1) end
local px = tonumber(ARGV[3])
if px then redis.call('PEXPIRE', KEYS[1], px) else redis.call('PERSIST', KEYS[1]) end
index(KEYS[1], KEYS[2], px)
return 1
"""
"""KEYS: the mailbox, the index; ARGV: the message, the bound or '', the TTL in ms or ''."""
_UNLINK: Final = """
local n = 0
for i = 2, #KEYS do n = n + redis.call('UNLINK', KEYS[i]) end
redis.call('ZREM', KEYS[1], unpack(KEYS, 2))
return n
"""
_PRUNE: Final = """
local alive = {}
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then alive[#alive + 1] = KEYS[i] else redis.call('ZREM', KEYS[1], KEYS[i]) end
end
return alive
"""
"""KEYS: the index, then names; drops from the index the names that do not exist and answers the others."""
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "\\*?[]"})


def _bytes(data: object) -> bytes:
    """A reply as bytes (the clients never decode replies; this narrows redis-py's loose reply types)."""
    if isinstance(data, bytes):
        return data
    raise CacheError(f"Redis answered with a {type(data).__name__} where bytes were expected.")


def _check_userinfo(url: str) -> None:
    """Refuse a redis(s) URL whose password holds an unencoded '/', '#' or '?': URL parsing would cut the
    authority there and take a piece of the password for the host, which errors would then name."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss") or "@" not in rest:
        return
    userinfo = rest.rpartition("@")[0]
    if any(c in userinfo for c in "/#?"):
        raise ConfigurationError(
            f"The Redis URL ({scheme}://…) has a user name or password with an unencoded '/', '#' or '?'; "
            "percent-encode them (%2F, %23, %3F; '@' as %40), or pass the password separately.")


def _glob(text: str) -> str:
    return text.translate(_GLOB_SPECIAL)


class RedisCache(BaseCache):
    """The ``Cache`` contract on Redis; the key scheme and the traffic of each method are in the module
    docstring. ``url`` is ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
    ``unix:///path?db=N``; ``password`` (when given) overrides the URL's."""

    def __init__(self, url: str = "redis://localhost:6379/0", *, namespace: str = "", suffix: str = "",
                 key_root: str = "fm", password: str | None = None, scan_count: int = BATCH,
                 socket_timeout: float | None = 10.0, connect_timeout: float = 5.0, max_connections: int = 100,
                 redis_options: dict[str, Any] | None = None) -> None:
        super().__init__(namespace=namespace, suffix=suffix)
        if not isinstance(key_root, str) or any(c in key_root for c in "{}\x00") or len(key_root) > 64:
            raise ConfigurationError("The cache key_root must be a str of at most 64 characters without braces.")
        self.key_root = key_root
        self.scan_count = scan_count
        options = dict(redis_options or {})
        _check_userinfo(url)
        try:
            self._client = aioredis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                max_connections=max_connections, **options)
            self._blocking = aioredis.Redis.from_url(
                url, socket_timeout=None, socket_connect_timeout=connect_timeout, max_connections=100_000, **options)
        except (ValueError, TypeError):
            scheme = url.split("://", 1)[0] if "://" in url else "?"
            raise ConfigurationError(
                f"The Redis URL ({scheme}://…) is malformed; percent-encode special characters in the user name "
                "and password (e.g. '@' as %40, '/' as %2F, '#' as %23).") from None
        kwargs = self._client.connection_pool.connection_kwargs
        if password is not None:
            for client in (self._client, self._blocking):
                client.connection_pool.connection_kwargs["password"] = password
        self._secrets = [s for s in (kwargs.get("password"), kwargs.get("username")) if s and len(s) >= 4]
        self._secrets += [quote(s, safe="") for s in self._secrets]
        if "path" in kwargs:
            self.where = f"unix:{kwargs['path']}"
        else:
            self.where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        self.db = int(kwargs.get("db", 0) or 0)
        self._prune = self._client.register_script(_PRUNE)
        self._set_indexed = self._client.register_script(_SET)
        self._push_indexed = self._client.register_script(_PUSH)
        self._unlink_indexed = self._client.register_script(_UNLINK)

    @classmethod
    def from_params(cls, host: str = "localhost", port: int = 6379, db: int = 0, password: str | None = None,
                    *, username: str | None = None, ssl: bool = False, **options: Any) -> RedisCache:
        """Asimov's ``RedisCache(host, port, db, password)``; the password never enters a URL."""
        scheme = "rediss" if ssl else "redis"
        user = f"{quote(username, safe='')}@" if username else ""
        host_part = f"[{host}]" if ":" in host else host
        return cls(f"{scheme}://{user}{host_part}:{int(port)}/{int(db)}", password=password, **options)

    def __repr__(self) -> str:
        return f"RedisCache({self.where}, db={self.db}, root={self.key_root!r}, namespace={self.prefix!r})"

    # --- names and errors ---------------------------------------------------------------------------------

    def _head(self, kind: str, prefix: str | None = None) -> str:
        return f"{self.key_root}{{{self.prefix if prefix is None else prefix}}}:{kind}:"

    def _name(self, kind: str, key: str, what: str = "key") -> str:
        return self._head(kind) + self._full(key, what)

    @property
    def _index(self) -> str:
        return self._head("ix")

    def _pattern(self, kinds: str | None) -> str:
        """SCAN MATCH for the current scope; ``kinds=None`` matches everything in the namespace (``clear``)."""
        kind = "" if kinds is None else f"{kinds}:"
        return f"{_glob(self.key_root)}{{{_glob(self.prefix)}}}:{kind}*{_glob(self._tail())}"

    def _split(self, name: bytes) -> tuple[str, str] | None:
        """``(kind, key as shown)`` of a scanned name in the current scope, or ``None``."""
        try:
            text = name.decode()
        except UnicodeDecodeError:
            return None
        head = f"{self.key_root}{{{self.prefix}}}:"
        if not text.startswith(head) or text[len(head) + 2: len(head) + 3] != ":":
            return None
        kind, full = text[len(head): len(head) + 2], text[len(head) + 3:]
        key = self._strip(full) if full and kind in ("kv", "mb") else None
        return None if key is None else (kind, key)

    def _scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return shorten(one_line(text), 300)

    @contextlib.contextmanager
    def _errors(self, doing: str, error: type[CacheError] = CacheError) -> Iterator[None]:
        try:
            yield
        except redis_errors.AuthenticationError:
            raise CacheError(f"Redis at {self.where} refused the credentials while {doing}; check the user "
                             "name and password of the cache URL or block.") from None
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise CacheConnectionError(
                f"Cannot reach Redis at {self.where} while {doing} ({self._scrub(str(exc))}). Check that it "
                "runs and that the cache URL points at it.") from None
        except redis_errors.ResponseError as exc:
            raise error(f"Redis at {self.where} refused {doing}: {self._scrub(str(exc))}.") from None
        except redis_errors.RedisError as exc:
            raise error(f"Redis failed while {doing}: {self._scrub(str(exc))}.") from None

    async def _scan(self, kinds: str | None) -> list[bytes]:
        names: dict[bytes, None] = {}
        with self._errors("listing the namespace"):
            async for name in self._client.scan_iter(match=self._pattern(kinds), count=self.scan_count):
                names[name] = None
        return list(names)

    async def _listed(self, kinds: tuple[str, ...]) -> list[tuple[bytes, tuple[str, str]]]:
        """The indexed names of ``kinds`` in the current scope, each with its ``(kind, key)``."""
        with self._errors("listing the namespace"):
            members = await self._client.zrange(self._index, 0, -1)
        return [(_bytes(name), split) for name in members
                if (split := self._split(_bytes(name))) is not None and split[0] in kinds]

    async def _alive(self, names: list[bytes]) -> builtins.set[bytes]:
        """Which of ``names`` exist; the others leave the index, each only if still gone when the script runs
        (a name written again meanwhile keeps its entry)."""
        alive: set[bytes] = set()
        with self._errors("listing the namespace"):
            for start in range(0, len(names), BATCH):
                alive.update(await self._prune(keys=[self._index, *names[start: start + BATCH]]))
        return alive

    async def _forget(self, names: list[bytes]) -> None:
        """Drops names found gone from the index (best effort: the next listing tries again)."""
        with contextlib.suppress(CacheError):
            await self._alive(names)

    # --- values -------------------------------------------------------------------------------------------

    async def get(self, key: str, default: Any = RAISE, *, raw: bool = False) -> Any:
        name = self._name("kv", key)
        with self._errors(f"reading {key!r}"):
            data = await self._client.get(name)
        if data is None:
            if default is RAISE:
                raise KeyError(key)
            return default
        return decode(key, _bytes(data), raw=raw)

    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        names = [self._name("kv", key) for key in wanted]
        with self._errors("reading several keys"):
            found = await self._client.mget(names)
        return {key: decode(key, _bytes(data)) for key, data in zip(wanted, found, strict=True) if data is not None}

    async def set(self, key: str, value: Any, *, raw: bool = False, ttl: float | None = None) -> None:
        name, ttl = self._name("kv", key), check_ttl(ttl)
        data = encode(key, value, raw=raw)
        px = "" if ttl is None else max(1, math.ceil(ttl * 1000))
        with self._errors(f"writing {key!r}"):
            await self._set_indexed(keys=[name, self._index], args=[data, px])

    def _add_to_index(self, pipe: Any, name: str, px: int | None) -> None:
        """Queues the index entry of ``name`` (and, for a TTL'd entry, the trim of long-expired entries) in a
        ``load_namespace`` transaction, scored by this process's clock."""
        if px is None:
            pipe.zadd(self._index, {name: NEVER})
            return
        now = time.time_ns() // 1_000_000
        pipe.zadd(self._index, {name: now + px})
        pipe.zremrangebyscore(self._index, "-inf", f"({now - GRACE_MS}")

    async def delete(self, key: str) -> bool:
        return bool(await self._unlink([self._name("kv", key)], f"deleting {key!r}"))

    async def delete_many(self, keys: Iterable[str]) -> int:
        names = list(dict.fromkeys(self._name("kv", key) for key in keys))
        return await self._unlink(names, "deleting several keys") if names else 0

    async def _unlink(self, names: list[str], doing: str) -> int:
        unlinked = 0
        with self._errors(doing):
            for start in range(0, len(names), BATCH):  # Lua's unpack has a limit; a page at a time
                unlinked += int(await self._unlink_indexed(keys=[self._index, *names[start: start + BATCH]]))
        return unlinked

    async def keys(self) -> builtins.set[str]:
        listed = await self._listed(("kv",))
        alive = await self._alive([name for name, _ in listed]) if listed else set()
        return {key for name, (_, key) in listed if name in alive}  # a TTL may have ended since it was indexed

    async def get_all(self) -> dict[str, Any]:
        listed = await self._listed(("kv",))
        if not listed:
            return {}
        names = [name for name, _ in listed]
        with self._errors("reading the namespace"):
            async with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(names), BATCH):
                    pipe.mget(names[start: start + BATCH])
                pages = await pipe.execute()
        found: dict[str, Any] = {}
        gone: list[bytes] = []
        for (name, (_, key)), data in zip(listed, (d for page in pages for d in page), strict=True):
            if data is None:
                gone.append(name)  # expired, or not a string (planted by something else)
                continue
            try:
                found[key] = decode(key, data)
            except CacheError as exc:
                log.warning("get_all skipped a cache entry: %s", exc)
        await self._forget(gone)
        return found

    async def clear(self) -> None:
        page: list[bytes] = []
        with self._errors("clearing the namespace"):
            async for name in self._client.scan_iter(match=self._pattern(None), count=self.scan_count):
                page.append(name)
                if len(page) >= BATCH:
                    await self._client.unlink(*page)
                    page = []
            if page:
                await self._client.unlink(*page)

    # --- mailboxes and broadcast --------------------------------------------------------------------------

    async def publish_to_mailbox(self, mailbox: str, value: Any, *, max_length: int | None = None,
                                 ttl: float | None = None) -> None:
        name = self._name("mb", mailbox, "mailbox")
        max_length, ttl = check_max_length(max_length), check_ttl(ttl)
        data = encode(mailbox, value)
        px = "" if ttl is None else max(1, math.ceil(ttl * 1000))
        with self._errors(f"publishing to mailbox {mailbox!r}", MailboxError):
            await self._push_indexed(keys=[name, self._index], args=[data, max_length or "", px])

    async def get_message(self, mailbox: str, timeout: float | None = None) -> Any | None:
        name, timeout = self._name("mb", mailbox, "mailbox"), check_timeout(timeout)
        with self._errors(f"reading mailbox {mailbox!r}", MailboxError):
            if timeout == 0:
                data = await self._client.lpop(name)
            else:
                popped = await self._blocking.blpop([name], timeout=0 if timeout is None else max(timeout, 0.001))
                data = None if popped is None else popped[1]
        return None if data is None else decode(mailbox, _bytes(data))

    async def publish(self, channel: str, value: Any) -> int:
        name = self._name("ch", channel, "channel")
        data = encode(channel, value)
        with self._errors(f"publishing on channel {channel!r}", MailboxError):
            return int(await self._client.publish(name, data))

    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """Every message published on ``channel`` (in this namespace) while the block is open."""
        return self._subscription(self._name("ch", channel, "channel"), channel)

    @contextlib.asynccontextmanager
    async def _subscription(self, name: str, channel: str) -> AsyncIterator[AsyncIterator[Any]]:
        pubsub = self._blocking.pubsub()
        try:
            with self._errors(f"subscribing to channel {channel!r}", MailboxError):
                await pubsub.subscribe(name)
                # Wait for Redis to confirm, so a publish right after entering the block is received.
                while True:
                    message = await pubsub.get_message(timeout=10.0)
                    if message is None:
                        raise MailboxError(f"Redis at {self.where} did not confirm the subscription to {channel!r}.")
                    if message["type"] == "subscribe":
                        break
            yield self._messages(pubsub, channel)
        finally:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await pubsub.unsubscribe()
            await cast(Any, pubsub).aclose()

    async def _messages(self, pubsub: Any, channel: str) -> AsyncIterator[Any]:
        while True:
            with self._errors(f"listening on channel {channel!r}", MailboxError):
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None and message["type"] == "message":
                yield decode(channel, message["data"])

    # --- snapshots ----------------------------------------------------------------------------------------

    async def dump_namespace(self) -> NamespaceDump:
        dump: NamespaceDump = {"values": {}, "raw": {}, "mailboxes": {}, "ttls": {}}
        wanted = await self._listed(("kv", "mb"))
        if not wanted:
            return dump
        with self._errors("dumping the namespace"):
            async with self._client.pipeline(transaction=True) as pipe:
                for name, (kind, _) in wanted:
                    if kind == "kv":
                        pipe.get(name)
                        pipe.pttl(name)
                    else:
                        pipe.lrange(name, 0, -1)
                results = iter(await pipe.execute(raise_on_error=False))
        gone: list[bytes] = []
        for name, (kind, key) in wanted:
            first = next(results)
            second = next(results) if kind == "kv" else None
            if isinstance(first, Exception):
                log.warning("dump_namespace skipped %r: %s", key, self._scrub(str(first)))
                continue
            if first is None or (kind == "mb" and not first):
                gone.append(name)  # expired, or consumed to empty
                continue
            if kind == "mb":
                try:
                    dump["mailboxes"][key] = [decode(key, data) for data in first]
                except CacheError as exc:
                    log.warning("dump_namespace skipped mailbox %r: %s", key, exc)
                continue
            if first[:1] == RAW_TAG:
                dump["raw"][key] = base64.b64encode(first[1:]).decode()
            elif is_json(first):
                dump["values"][key] = decode(key, first)
            else:  # written by something else: kept, as bytes
                dump["raw"][key] = base64.b64encode(first).decode()
            if isinstance(second, int) and second > 0:
                dump["ttls"][key] = second / 1000
        await self._forget(gone)
        return dump

    async def load_namespace(self, dump: NamespaceDump, *, replace: bool = True) -> None:
        dump = check_dump(dump)
        entries, boxes = dump_entries(dump)
        old = await self._scan(None) if replace else []
        with self._errors("loading the namespace"):
            async with self._client.pipeline(transaction=True) as pipe:
                for start in range(0, len(old), BATCH):
                    pipe.unlink(*old[start: start + BATCH])
                    pipe.zrem(self._index, *old[start: start + BATCH])
                for key, data in entries.items():
                    ttl = dump["ttls"].get(key)
                    px = None if ttl is None else max(1, math.ceil(ttl * 1000))
                    pipe.set(name := self._name("kv", key), data, px=px)
                    self._add_to_index(pipe, name, px)
                for mailbox, messages in boxes.items():
                    if messages:
                        pipe.rpush(name := self._name("mb", mailbox, "mailbox"), *messages)
                        self._add_to_index(pipe, name, None)
                await pipe.execute()

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def ping(self) -> None:
        with self._errors("pinging"):
            await self._client.ping()

    async def close(self) -> None:
        """Close both connection pools (a view's ``close`` does nothing: its parent owns them)."""
        if self._is_view:
            return
        for client in (self._client, self._blocking):
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await cast(Any, client).aclose()  # redis-py leaves aclose untyped
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await client.connection_pool.disconnect()
