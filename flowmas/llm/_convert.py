"""A per-client cache of each message's converted SDK structure, kept by the message's identity.

A transcript only grows (a tool loop, a chat history sent again with each call), and ``Message``s are frozen, so
converting each message once and reusing the result saves re-walking the whole transcript every call. Entries are
kept by identity (``id``) with a weak reference that drops them when the message is garbage-collected, so an
entry never keeps a message alive and never answers for another object that later reuses the id. A message
whose ``content`` list is mutated in place after a call is not supported (messages are immutable by contract).

``build`` also keeps the previous request's message list and result (one transcript per cache, held until the
next call or the client goes): a request whose messages start with those (compared by identity first, then by
equality, which converts alike) is built from that result plus its new messages.

The cached structures are shared between calls: an adapter copies the lists it extends or marks (roles merged,
cache breakpoints) and never mutates a cached dict; the SDKs only read what they are given.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from flowmas.llm.types import Message

T = TypeVar("T")


class ConvertedMessages(Generic[T]):
    """``convert(message)`` for each message, computed once per message object (while it lives)."""

    __slots__ = ("__weakref__", "_convert", "_drop", "_entries", "_last")

    def __init__(self, convert: Callable[[Message], T]) -> None:
        self._convert = convert
        self._last: tuple[Any, list[Message], list[Any]] = (None, [], [])  # build(): (add, messages, result)
        entries: dict[int, tuple[weakref.ref[Message], T]] = {}
        self._entries = entries

        def drop(key: int, ref: weakref.ref[Message]) -> None:  # the message is gone (any thread)
            entry = entries.get(key)
            if entry is not None and entry[0] is ref:
                entries.pop(key, None)

        self._drop = drop

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, messages: Sequence[Message]) -> list[T]:
        """The converted messages, in order. A lone message (a one-off prompt) is converted without keeping it."""
        convert = self._convert
        if len(messages) < 2:
            return [convert(m) for m in messages]
        get = self._entries.get
        out: list[T] = []
        append = out.append
        for message in messages:
            entry = get(id(message))
            if entry is not None and entry[0]() is message:
                append(entry[1])
            else:
                append(self._add(message))
        return out

    def build(self, messages: Sequence[Message], add: Callable[[list[Any], T], None]) -> list[Any]:
        """A request's structure: ``add(out, converted)`` for each message in order, into a new list.

        The previous call's messages and result are kept (one transcript per cache): when ``messages`` start with
        the same message objects (a growing transcript, a tool loop's next turn), its result is copied and only
        the new messages are converted and added. The dicts in the list are shared between calls: the caller may
        change the list (replace items) but not the dicts in it.
        """
        if len(messages) < 2:
            out: list[Any] = []
            for message in messages:
                add(out, self._convert(message))
            return out
        messages = messages if type(messages) is list else list(messages)
        last_add, last_in, last_out = self._last
        n = len(last_in)
        if last_add is add and 0 < n <= len(messages) and messages[:n] == last_in:  # identity first, in C
            out = list(last_out)
            new = messages[n:]
        else:
            out, new = [], messages
        for converted in self(new) if len(new) > 1 else [self._lookup(m) for m in new]:
            add(out, converted)
        self._last = (add, list(messages), list(out))
        return out

    def _lookup(self, message: Message) -> T:
        entry = self._entries.get(id(message))
        if entry is not None and entry[0]() is message:
            return entry[1]
        return self._add(message)

    def _add(self, message: Message) -> T:
        value = self._convert(message)
        key = id(message)
        with contextlib.suppress(TypeError):  # not weak-referenceable (an unusual subclass): not kept
            self._entries[key] = (weakref.ref(message, functools.partial(self._drop, key)), value)
        return value


def build_chain(
    messages: Sequence[Message], memo: dict[str, Any], key: str, convert: Callable[[Message], T],
    add: Callable[[list[Any], T], None],
) -> list[Any]:
    """``ConvertedMessages.build`` for the requests of one tool chain (``client.request_memo``): their messages
    only grow, so the previous turn's result (kept in ``memo[key]``, with how many messages it holds) is extended
    by the new messages, converted once each, without the identity cache's per-message bookkeeping. The caller
    may replace items of the returned list (the kept one is a copy), never change the dicts in it."""
    entry = memo.get(key)
    if entry is not None and entry[0] <= len(messages):
        out = list(entry[1])
        new = messages[entry[0]:]
    else:
        out, new = [], messages
    for message in new:
        add(out, convert(message))
    memo[key] = (len(messages), list(out))
    return out


def merge_role(out: list[dict[str, Any]], item: dict[str, Any] | None) -> None:
    """``build`` step for protocols that need alternating turns (Anthropic, Bedrock): a converted message dict
    (None: nothing to send) is appended, or merged into the previous turn of its role (a new dict; a string
    content is taken as its one text block)."""
    if item is None:
        return
    if out and out[-1]["role"] == item["role"]:
        out[-1] = {"role": item["role"], "content": _as_blocks(out[-1]["content"]) + _as_blocks(item["content"])}
    else:
        out.append(item)


def _as_blocks(content: Any) -> list[Any]:
    """A converted message's content as a block list: a string content (Anthropic's shorthand for one text block)
    as that block."""
    if type(content) is str:
        return [{"type": "text", "text": content}]
    return list(content)


def merge_roles(converted: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Converted message dicts with neighbouring turns of one role merged (``merge_role`` for each)."""
    out: list[dict[str, Any]] = []
    for item in converted:
        merge_role(out, item)
    return out


def merged_turns(
    messages: Sequence[Message], memo: dict[str, Any] | None,
    cache: ConvertedMessages[dict[str, Any] | None] | None, key: str,
    convert: Callable[[Message], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """Messages as wire dicts with neighbouring turns of one role merged (Anthropic, Bedrock): a tool chain's turn
    (``memo``) extends the previous turn's list, else ``cache`` converts each message once, else each is converted
    now."""
    if memo is not None:
        return build_chain(messages, memo, key, convert, merge_role)
    if cache is not None:
        return cache.build(messages, merge_role)
    return merge_roles([convert(m) for m in messages])


def extend(out: list[dict[str, Any]], items: list[dict[str, Any]]) -> None:
    """``build`` step for protocols where a message becomes any number of items (OpenAI)."""
    out.extend(items)
