"""Assembling neutral stream events and the final ``Response`` from a provider's stream (shared by adapters).

An adapter reads its SDK's events and calls ``StreamAssembler`` (``start``, ``text``, ``tool_start``,
``tool_delta``, ``stop_block``, ``finish``); each call returns the neutral events to yield. Partial tool
arguments are parsed incrementally (``partial_json``); above ``PARSE_EVERY_DELTA_BELOW`` characters the parse is
refreshed only when the text grew by a quarter, so huge arguments cost O(n) overall, not O(n²).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from flowmas.llm.partial_json import PartialJSON
from flowmas.llm.types import (
    BlockStop,
    ContentBlock,
    MessageStart,
    MessageStop,
    Response,
    StopReason,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ToolCallBlock,
    ToolCallDelta,
    Usage,
    UsageEvent,
)

PARSE_EVERY_DELTA_BELOW = 16_384


def parse_tool_arguments(raw: str | None) -> tuple[dict[str, Any], str | None]:
    """The model's argument text as a dict, or ``({}, raw)`` when it is not a JSON object."""
    if raw is None or not raw.strip():
        return {}, None
    try:
        value = json.loads(raw)
    except ValueError:
        return {}, raw
    if not isinstance(value, dict):
        return {}, raw
    return value, None


@dataclass
class _Block:
    kind: str  # "text" | "tool_call" | "thinking"
    parts: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""
    parser: PartialJSON | None = None
    parsed_at: int = 0
    partial: Any = None
    signature: str | None = None
    stopped: bool = False
    block: ContentBlock | None = None


class StreamAssembler:
    """Turns one provider stream into neutral events and, at the end, the ``Response``."""

    def __init__(self, provider: str, model: str, *, started: float | None = None) -> None:
        self.provider = provider
        self.model = model
        self.id: str | None = None
        self.started = time.perf_counter() if started is None else started
        self._blocks: dict[int, _Block] = {}

    def start(self, *, model: str | None = None, id: str | None = None, attempt: int = 1) -> MessageStart:
        if model:
            self.model = model
        if id:
            self.id = id
        return MessageStart(model=self.model, id=self.id, attempt=attempt)

    def _get(self, index: int, kind: str) -> _Block:
        block = self._blocks.get(index)
        if block is None:
            block = self._blocks[index] = _Block(kind=kind)
        return block

    def text(self, index: int, text: str) -> TextDelta | None:
        if not text:
            return None
        self._get(index, "text").parts.append(text)
        return TextDelta(index=index, text=text)

    def thinking(self, index: int, text: str = "", signature: str | None = None) -> None:
        block = self._get(index, "thinking")
        if text:
            block.parts.append(text)
        if signature:
            block.signature = (block.signature or "") + signature

    def tool_start(self, index: int, id: str, name: str) -> None:
        block = self._get(index, "tool_call")
        block.id = id or block.id
        block.name = name or block.name
        if block.parser is None:
            block.parser = PartialJSON()

    def has_block(self, index: int) -> bool:
        return index in self._blocks

    def tool_delta(self, index: int, fragment: str) -> ToolCallDelta | None:
        block = self._get(index, "tool_call")
        if block.parser is None:
            block.parser = PartialJSON()
        if not fragment:
            return None
        parser = block.parser
        parser.feed(fragment)
        size = len(parser.text)
        if size <= PARSE_EVERY_DELTA_BELOW or size >= block.parsed_at * 1.25:
            block.partial = parser.value()
            block.parsed_at = size
        return ToolCallDelta(index=index, id=block.id, name=block.name, delta=fragment,
                             arguments_json=parser.text, arguments=block.partial)

    def _final(self, block: _Block) -> ContentBlock:
        if block.kind == "tool_call":
            raw = block.parser.text if block.parser is not None else ""
            arguments, invalid = parse_tool_arguments(raw)
            return ToolCallBlock(id=block.id, name=block.name, arguments=arguments, invalid_arguments=invalid)
        if block.kind == "thinking":
            return ThinkingBlock(thinking="".join(block.parts), signature=block.signature)
        return TextBlock(text="".join(block.parts))

    def stop_block(self, index: int) -> BlockStop | None:
        block = self._blocks.get(index)
        if block is None or block.stopped:
            return None
        block.stopped = True
        block.block = self._final(block)
        return BlockStop(index=index, block=block.block)

    def finish(
        self, *, stop_reason: StopReason, raw_stop_reason: str | None, usage: Usage
    ) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for index in sorted(self._blocks):
            stopped = self.stop_block(index)
            if stopped is not None:
                events.append(stopped)
        content: list[ContentBlock] = []
        for index in sorted(self._blocks):
            final = self._blocks[index].block
            if final is not None and not (isinstance(final, TextBlock) and not final.text):
                content.append(final)
        response = Response(
            content=content, stop_reason=stop_reason, raw_stop_reason=raw_stop_reason, usage=usage,
            model=self.model, id=self.id, provider=self.provider, latency=time.perf_counter() - self.started,
        )
        events.append(UsageEvent(usage=usage))
        events.append(MessageStop(response=response))
        return events
