"""Anthropic prompt-caching breakpoints, placed by rule (Anthropic, Claude on Vertex).

The Messages API caches the prompt prefix up to each ``cache_control`` breakpoint, in the order tools →
system → messages, and allows at most 4 breakpoints. The rule, in priority order:

1. the last tool (the tool list rarely changes within a conversation);
2. the last system block;
3. the last cacheable block of the last message (this turn's prefix is written to the cache);
4. the last cacheable block of the previous user turn (the prefix the previous call wrote is read back).

A block that already carries ``cache_control`` (the caller placed it) counts against the 4 and is kept; rule
breakpoints are then added while room remains. Thinking blocks and empty text blocks cannot carry a
breakpoint, so the nearest cacheable block before them is used. The functions take the request structures the
adapter has just built (never the caller's objects) and return new dicts for every block they mark.
"""

from __future__ import annotations

from typing import Any

MAX_BREAKPOINTS = 4
EPHEMERAL: dict[str, str] = {"type": "ephemeral"}


def _cacheable(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind in ("thinking", "redacted_thinking"):
        return False
    return not (kind == "text" and not block.get("text"))


def _count(items: list[dict[str, Any]]) -> int:
    return sum(1 for item in items if "cache_control" in item)


def _mark_last(blocks: list[Any]) -> bool:
    """Put a breakpoint on the last cacheable block of ``blocks`` (replacing it by a marked copy)."""
    for i in range(len(blocks) - 1, -1, -1):
        if _cacheable(blocks[i]):
            if "cache_control" not in blocks[i]:
                blocks[i] = {**blocks[i], "cache_control": dict(EPHEMERAL)}
            return True
    return False


def place_breakpoints(
    tools: list[dict[str, Any]], system: list[dict[str, Any]], messages: list[dict[str, Any]]
) -> int:
    """Place breakpoints in the adapter's fresh ``tools``, ``system`` blocks and ``messages`` (whose ``content``
    must be lists); returns how many breakpoints the request now has (never more than ``MAX_BREAKPOINTS``)."""
    existing = _count(tools) + _count(system)
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            existing += _count([b for b in content if isinstance(b, dict)])
    room = MAX_BREAKPOINTS - existing
    if room <= 0:
        return existing
    targets: list[list[Any]] = []
    if tools:
        targets.append(tools)
    if system:
        targets.append(system)
    if messages:
        last = messages[-1]
        if isinstance(last.get("content"), list):
            targets.append(last["content"])
        for message in reversed(messages[:-1]):
            if message.get("role") == "user" and isinstance(message.get("content"), list):
                targets.append(message["content"])
                break
    placed = 0
    for blocks in targets:
        if placed >= room:
            break
        if any(isinstance(b, dict) and "cache_control" in b for b in blocks):
            continue  # the caller already marked this part
        if _mark_last(blocks):
            placed += 1
    return existing + placed


def place_new_breakpoints(
    tools: list[dict[str, Any]], system: list[dict[str, Any]], messages: list[dict[str, Any]]
) -> int:
    """``place_breakpoints`` for structures that carry no breakpoint yet (an adapter's own, built from neutral
    messages, which have none): the same placement, without scanning every message for existing ones. ``tools``
    and ``system`` are marked in place; a message that gets a breakpoint is replaced in ``messages`` by a copy
    (message dicts may be shared between calls), the others are not touched."""
    placed = 0
    if tools and _mark_last(tools):
        placed += 1
    if system and _mark_last(system):
        placed += 1
    if messages:
        placed += _mark_message(messages, len(messages) - 1)
        for i in range(len(messages) - 2, -1, -1):
            message = messages[i]
            if message.get("role") == "user" and isinstance(message.get("content"), list):
                placed += _mark_message(messages, i)
                break
    return placed


def _mark_message(messages: list[dict[str, Any]], index: int) -> int:
    message = messages[index]
    content = message.get("content")
    if not isinstance(content, list):
        return 0
    blocks = list(content)
    if not _mark_last(blocks):
        return 0
    messages[index] = {**message, "content": blocks}
    return 1
