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
adapter has just built (never the caller's objects) and return new dicts for every block they mark. A message
whose ``content`` is a string (the API's shorthand for one text block, which adapters send when nothing marks
it) counts as that one block: marking it turns its content into the block list, with the breakpoint.
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


def _blocks(content: Any) -> list[Any] | None:
    """A message's content as a list of blocks: the list itself, a string as its one text block (a new list)."""
    if type(content) is list:
        return content
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content if isinstance(content, list) else None


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
    is a list of blocks or a string); returns how many breakpoints the request now has (never more than
    ``MAX_BREAKPOINTS``). A message marked here gets a block list as its ``content`` (in place)."""
    existing = _count(tools) + _count(system)
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            existing += _count([b for b in content if isinstance(b, dict)])
    room = MAX_BREAKPOINTS - existing
    if room <= 0:
        return existing
    targets: list[tuple[list[Any], dict[str, Any] | None]] = []  # (blocks, the message to give them to)
    if tools:
        targets.append((tools, None))
    if system:
        targets.append((system, None))
    if messages:
        last = messages[-1]
        blocks = _blocks(last.get("content"))
        if blocks is not None:
            targets.append((blocks, last))
        for message in reversed(messages[:-1]):
            if message.get("role") == "user":
                blocks = _blocks(message.get("content"))
                if blocks is not None:
                    targets.append((blocks, message))
                    break
    placed = 0
    for blocks, owner in targets:
        if placed >= room:
            break
        if any(isinstance(b, dict) and "cache_control" in b for b in blocks):
            continue  # the caller already marked this part
        if _mark_last(blocks):
            placed += 1
            if owner is not None and owner.get("content") is not blocks:
                owner["content"] = blocks  # a string turned into its marked block
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
    return placed + place_message_breakpoints(messages)


def place_message_breakpoints(messages: list[dict[str, Any]], reuse: list[Any] | None = None) -> int:
    """Rules 3 and 4 alone, for unmarked ``messages`` (as ``place_new_breakpoints``): an adapter that marked its
    tools and system blocks once (they are the same for every turn of a tool chain) marks each turn's messages
    with this. Returns how many breakpoints it placed (at most 2).

    ``reuse`` (optional: a two-item list the caller keeps between the turns of a tool chain) holds the last
    message this call marked and its marked copy: one turn's last message is the next turn's previous user turn,
    whose marked copy is then taken from it rather than made again."""
    if not messages:
        return 0
    last = len(messages) - 1
    original = messages[last]
    placed = _mark_message(messages, last)
    for i in range(last - 1, -1, -1):
        message = messages[i]
        if message.get("role") == "user":
            if reuse is not None and reuse[0] is message:
                messages[i] = reuse[1]
                placed += 1
            elif isinstance(message.get("content"), list | str):
                placed += _mark_message(messages, i)
            else:
                continue
            break
    if reuse is not None:
        reuse[:] = (original, messages[last]) if messages[last] is not original else (None, None)
    return placed


def _mark_message(messages: list[dict[str, Any]], index: int) -> int:
    message = messages[index]
    content: Any = message.get("content")
    found = _blocks(content)
    if found is None:
        return 0
    blocks = list(found) if found is content else found  # the message's own list is copied, never changed
    if not _mark_last(blocks):
        return 0
    messages[index] = {**message, "content": blocks}
    return 1
