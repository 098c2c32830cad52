"""The ``Cache`` contract and what every backend shares: namespacing, key rules, the JSON codec, TTL rules.

**Namespaces.** A cache view has a *prefix* (its namespace: a run's is its run id) and an optional *suffix*.
Both live in ``ContextVar``s, so ``async with cache.with_prefix("run-1"):`` scopes only the current asyncio
task (and the tasks it starts); nested blocks replace the outer value and restore it on exit (Asimov's
semantics). ``namespaced(ns)`` returns a view whose *default* prefix is ``ns``, sharing the backend.

**Keys.** A value's full name inside its namespace is ``key`` or, under a suffix, ``key + affix_sep + suffix``
(so ``get("a:s")`` and ``with_suffix("s"): get("a")`` name the same entry, as in Asimov: the separator is
allowed in keys, and that equivalence is the one pitfall to know). ``keys()``/``get_all()`` under a suffix list
only the entries ending in it, with the suffix stripped; ``clear()``/``dump_namespace()`` under a suffix touch
only those entries (and the mailboxes ending in it); without a suffix, the whole namespace. Keys, mailbox and
channel names are non-empty ``str`` of at most ``MAX_KEY_BYTES`` UTF-8 bytes, without NUL or unencodable
surrogates; a prefix or suffix may be empty, is at most ``MAX_AFFIX_BYTES``, and a prefix may not hold ``{``
or ``}`` (Redis wraps it in braces: ``RedisCache``'s key scheme).

**Values** are JSON, encoded with orjson and stored as bytes, so a ``get`` never aliases a live object and
decoding untrusted data never instantiates a class (Asimov's jsonpickle did). orjson's native types (dataclasses,
datetimes, UUIDs, enums) are accepted and come back as their JSON form; ``NaN`` becomes ``null``. Anything
else raises ``CacheError`` naming the key and the type. ``raw=True`` stores bytes as they are (tagged with a
leading NUL byte, which JSON text never starts with); reading a raw entry without ``raw`` returns the bytes,
reading a JSON entry with ``raw`` returns its JSON bytes.

**TTLs** are positive, finite seconds up to ``MAX_TTL`` (ten years); anything else is a ``CacheError``.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import copy
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Any, Final, Protocol, TypedDict, runtime_checkable

import orjson

from flowmas.errors import CacheError
from flowmas.text import one_line, shorten

__all__ = ["MAX_AFFIX_BYTES", "MAX_KEY_BYTES", "MAX_TTL", "RAISE", "BaseCache", "Cache", "NamespaceDump"]

MAX_KEY_BYTES: Final = 1024
"""Longest key, mailbox or channel name (UTF-8 bytes): longer ones are a bug, not a name."""
MAX_AFFIX_BYTES: Final = 256
MAX_TTL: Final = 10 * 365.25 * 86400.0
MAX_MAILBOX_LENGTH: Final = 1_000_000_000
RAW_TAG: Final = b"\x00"
"""First byte of a raw entry: JSON text never starts with NUL, so one byte tells the two kinds apart."""


class _Raise:
    def __repr__(self) -> str:
        return "RAISE"


RAISE: Final[Any] = _Raise()
"""``get``'s default: a missing key raises ``KeyError(key)``."""


class NamespaceDump(TypedDict):
    """A namespace as plain JSON (for snapshots): decoded values, raw values in base64, mailbox contents in
    FIFO order, and the remaining seconds of every entry that has a TTL."""

    values: dict[str, Any]
    raw: dict[str, str]
    mailboxes: dict[str, list[Any]]
    ttls: dict[str, float]


@runtime_checkable
class Cache(Protocol):
    """What the engine, the conditions and the OPACA container code against; ``BaseCache`` implements the
    shared part, ``EmbeddedCache`` and ``RedisCache`` the storage."""

    default_prefix: str
    default_suffix: str
    affix_sep: str

    async def get(self, key: str, default: Any = RAISE, *, raw: bool = False) -> Any: ...
    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]: ...
    async def set(self, key: str, value: Any, *, raw: bool = False, ttl: float | None = None) -> None: ...
    async def delete(self, key: str) -> bool: ...
    async def delete_many(self, keys: Iterable[str]) -> int: ...
    async def keys(self) -> builtins.set[str]: ...
    async def get_all(self) -> dict[str, Any]: ...
    async def clear(self) -> None: ...
    def with_prefix(self, prefix: str) -> AbstractAsyncContextManager[None]: ...
    def with_suffix(self, suffix: str) -> AbstractAsyncContextManager[None]: ...
    def namespaced(self, namespace: str) -> Cache: ...
    async def publish_to_mailbox(self, mailbox: str, value: Any, *, max_length: int | None = None,
                                 ttl: float | None = None) -> None: ...
    async def get_message(self, mailbox: str, timeout: float | None = None) -> Any | None: ...
    async def publish(self, channel: str, value: Any) -> int: ...
    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[Any]]: ...
    async def dump_namespace(self) -> NamespaceDump: ...
    async def load_namespace(self, dump: NamespaceDump, *, replace: bool = True) -> None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


# --- validation and codec ---------------------------------------------------------------------------------


def _show(name: str) -> str:
    return repr(shorten(one_line(name), 80))


def check_name(name: object, what: str = "key") -> str:
    """``name`` if it is a usable key, mailbox or channel name; else ``CacheError`` saying what is wrong."""
    if not isinstance(name, str):
        raise CacheError(f"A cache {what} must be a str, not {type(name).__name__}.")
    if not name:
        raise CacheError(f"A cache {what} must not be empty.")
    if "\x00" in name:
        raise CacheError(f"The cache {what} {_show(name)} contains a NUL character; remove it.")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise CacheError(f"The cache {what} {_show(name)} is not valid Unicode (a lone surrogate).") from None
    if size > MAX_KEY_BYTES:
        raise CacheError(f"The cache {what} {_show(name)} is {size} bytes long; the limit is {MAX_KEY_BYTES}. "
                         "Hash long names, or store the long part as a value.")
    return name


def check_affix(affix: object, what: str) -> str:
    if not isinstance(affix, str):
        raise CacheError(f"A cache {what} must be a str, not {type(affix).__name__}.")
    if "\x00" in affix:
        raise CacheError(f"The cache {what} {_show(affix)} contains a NUL character; remove it.")
    if what == "prefix" and ("{" in affix or "}" in affix):
        raise CacheError(f"The cache prefix {_show(affix)} contains a brace; braces delimit namespaces.")
    try:
        size = len(affix.encode())
    except UnicodeEncodeError:
        raise CacheError(f"The cache {what} {_show(affix)} is not valid Unicode (a lone surrogate).") from None
    if size > MAX_AFFIX_BYTES:
        raise CacheError(f"The cache {what} {_show(affix)} is {size} bytes long; the limit is {MAX_AFFIX_BYTES}.")
    return affix


def check_ttl(ttl: object) -> float | None:
    """``ttl`` in seconds, or ``None``: positive, finite, at most ``MAX_TTL``."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise CacheError(f"A cache TTL must be a number of seconds, not {type(ttl).__name__}.")
    if not math.isfinite(ttl) or ttl <= 0 or ttl > MAX_TTL:
        raise CacheError(f"The cache TTL {ttl!r} is not a positive, finite number of seconds up to {MAX_TTL:.0f} "
                         "(ten years); leave it out for no expiry.")
    return float(ttl)


def check_max_length(max_length: object) -> int | None:
    """A mailbox bound: ``None``, or a whole number of messages from 1 to ``MAX_MAILBOX_LENGTH``."""
    if max_length is None:
        return None
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= MAX_MAILBOX_LENGTH:
        raise CacheError(f"A mailbox's max_length must be a whole number of messages from 1 to "
                         f"{MAX_MAILBOX_LENGTH:,}, not {max_length!r}; leave it out for no bound.")
    return max_length


def encode(key: str, value: Any, *, raw: bool = False) -> bytes:
    """The stored form of ``value``: JSON bytes, or the raw tag and the bytes."""
    if raw:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise CacheError(f"A raw cache value must be bytes; {_show(key)} got {type(value).__name__}.")
        return RAW_TAG + bytes(value)
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise CacheError(f"The value for cache key {_show(key)} is a {type(value).__name__}, which is not JSON "
                         f"({exc}). Store JSON (dicts, lists, str, numbers, bools, None), or bytes with "
                         "raw=True.") from None


def decode(key: str, data: bytes, *, raw: bool = False) -> Any:
    """The value of a stored entry (see the module docstring for how ``raw`` reads either kind)."""
    if data[:1] == RAW_TAG:
        return data[1:]
    if raw:
        return data
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CacheError(f"The cache entry {_show(key)} is not JSON (written by something else?); read it "
                         "with raw=True or delete it.") from None


def is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def check_dump(dump: object) -> NamespaceDump:
    """``dump`` if it has the shape ``dump_namespace`` produces (it may come from a file); else ``CacheError``."""
    if not isinstance(dump, dict):
        raise CacheError(f"A namespace dump must be a dict, not {type(dump).__name__}.")
    parts = {"values": dict, "raw": dict, "mailboxes": dict, "ttls": dict}
    for part, kind in parts.items():
        if not isinstance(dump.get(part, {}), kind):
            raise CacheError(f"The namespace dump's {part!r} must be a {kind.__name__}.")
    for key in itertools.chain(dump.get("values", {}), dump.get("raw", {}), dump.get("mailboxes", {})):
        check_name(key)
    for key, text in dump.get("raw", {}).items():
        if not isinstance(text, str):
            raise CacheError(f"The namespace dump's raw value {_show(key)} must be base64 text.")
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise CacheError(f"The namespace dump's raw value {_show(key)} is not valid base64.") from None
    for name, messages in dump.get("mailboxes", {}).items():
        if not isinstance(messages, list):
            raise CacheError(f"The namespace dump's mailbox {_show(name)} must be a list of messages.")
    for key, ttl in dump.get("ttls", {}).items():
        check_ttl(ttl)
        if key not in dump.get("values", {}) and key not in dump.get("raw", {}):
            raise CacheError(f"The namespace dump has a TTL for {_show(key)} but no value.")
    return {"values": dict(dump.get("values", {})), "raw": dict(dump.get("raw", {})),
            "mailboxes": dict(dump.get("mailboxes", {})), "ttls": dict(dump.get("ttls", {}))}


def dump_entries(dump: NamespaceDump) -> tuple[dict[str, bytes], dict[str, list[bytes]]]:
    """A checked dump as stored bytes: ``{full key: entry}`` and ``{mailbox: [message, ...]}``."""
    entries = {key: encode(key, value) for key, value in dump["values"].items()}
    entries.update({key: RAW_TAG + base64.b64decode(text) for key, text in dump["raw"].items()})
    boxes = {name: [encode(name, message) for message in messages] for name, messages in dump["mailboxes"].items()}
    return entries, boxes


_view_ids = itertools.count()


class BaseCache(ABC):
    """Namespacing, validation and the codec; a backend implements storage by (prefix, full key)."""

    affix_sep: str = ":"

    def __init__(self, *, namespace: str = "", suffix: str = "") -> None:
        self.default_prefix = check_affix(namespace, "prefix")
        self.default_suffix = check_affix(suffix, "suffix")
        self._new_context_vars()
        self._is_view = False

    def _new_context_vars(self) -> None:
        n = next(_view_ids)
        self._prefix_var: ContextVar[str | None] = ContextVar(f"flowmas_cache_prefix_{n}", default=None)
        self._suffix_var: ContextVar[str | None] = ContextVar(f"flowmas_cache_suffix_{n}", default=None)

    # --- namespacing --------------------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        """The namespace in effect for the current asyncio task."""
        value = self._prefix_var.get()
        return self.default_prefix if value is None else value

    @property
    def suffix(self) -> str:
        value = self._suffix_var.get()
        return self.default_suffix if value is None else value

    @contextlib.asynccontextmanager
    async def _scoped(self, var: ContextVar[str | None], value: str) -> AsyncIterator[None]:
        token = var.set(value)
        try:
            yield
        finally:
            var.reset(token)

    def with_prefix(self, prefix: str) -> AbstractAsyncContextManager[None]:
        """Use namespace ``prefix`` in this asyncio task (and tasks started inside) until the block ends."""
        return self._scoped(self._prefix_var, check_affix(prefix, "prefix"))

    def with_suffix(self, suffix: str) -> AbstractAsyncContextManager[None]:
        """Append ``affix_sep + suffix`` to every key and mailbox name in this asyncio task until the block ends."""
        return self._scoped(self._suffix_var, check_affix(suffix, "suffix"))

    def namespaced(self, namespace: str) -> BaseCache:
        """A view over the same storage whose default prefix is ``namespace``; its ``close()`` does nothing
        (the cache it came from owns the connections)."""
        view = copy.copy(self)
        view.default_prefix = check_affix(namespace, "prefix")
        view._new_context_vars()
        view._is_view = True
        return view

    def _full(self, key: str, what: str = "key") -> str:
        check_name(key, what)
        suffix = self.suffix
        return f"{key}{self.affix_sep}{suffix}" if suffix else key

    def _tail(self) -> str:
        """What every full name in the current scope ends with ('' without a suffix)."""
        suffix = self.suffix
        return f"{self.affix_sep}{suffix}" if suffix else ""

    def _strip(self, full: str) -> str | None:
        """The key as ``keys()`` shows it, or ``None`` when ``full`` is outside the current suffix."""
        tail = self._tail()
        if not tail:
            return full
        if full.endswith(tail) and len(full) > len(tail):
            return full[: -len(tail)]
        return None

    # --- storage (per backend) ----------------------------------------------------------------------------

    @abstractmethod
    async def get(self, key: str, default: Any = RAISE, *, raw: bool = False) -> Any: ...

    @abstractmethod
    async def get_many(self, keys: Iterable[str]) -> dict[str, Any]: ...

    @abstractmethod
    async def set(self, key: str, value: Any, *, raw: bool = False, ttl: float | None = None) -> None: ...

    @abstractmethod
    async def delete(self, key: str) -> bool: ...

    @abstractmethod
    async def delete_many(self, keys: Iterable[str]) -> int: ...

    @abstractmethod
    async def keys(self) -> builtins.set[str]: ...

    @abstractmethod
    async def get_all(self) -> dict[str, Any]: ...

    @abstractmethod
    async def clear(self) -> None: ...

    @abstractmethod
    async def publish_to_mailbox(self, mailbox: str, value: Any, *, max_length: int | None = None,
                                 ttl: float | None = None) -> None:
        """Queues ``value``. ``max_length``: the mailbox keeps its newest ``max_length`` messages (the oldest are
        dropped); ``ttl``: the mailbox, with every message in it, vanishes ``ttl`` seconds after this publish
        (each publish sets it anew; one without ``ttl`` makes the mailbox last)."""

    @abstractmethod
    async def get_message(self, mailbox: str, timeout: float | None = None) -> Any | None: ...

    @abstractmethod
    async def publish(self, channel: str, value: Any) -> int: ...

    @abstractmethod
    def subscribe(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[Any]]: ...

    @abstractmethod
    async def dump_namespace(self) -> NamespaceDump: ...

    @abstractmethod
    async def load_namespace(self, dump: NamespaceDump, *, replace: bool = True) -> None: ...

    @abstractmethod
    async def ping(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout) or timeout < 0:
        raise CacheError(f"A mailbox timeout must be None or seconds >= 0, not {timeout!r}.")
    return None if math.isinf(timeout) else float(timeout)
