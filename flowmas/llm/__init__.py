"""Inference clients (``flowmas.llm``): one neutral interface over Anthropic, OpenAI, Bedrock and Vertex.

    from flowmas.llm import AnthropicClient, Message, Tool

    client = AnthropicClient("claude-sonnet-4-5")             # api_key from ANTHROPIC_API_KEY
    response = await client.complete([Message.user("Hi")])    # Response: content, usage, stop_reason …
    async for event in client.stream("Hi"): ...               # MessageStart, TextDelta, ToolCallDelta …
    result = await client.tool_chain("Weather in Paris?", [Tool.from_function(get_weather)])

Layout: ``types`` (messages, blocks, ToolSpec, Usage, Response, stream events), ``client`` (the
``InferenceClient`` protocol; ``BaseClient``: validation, retries, spans, ``tool_chain``, Asimov's aliases),
``tools`` (``Tool``, ``StopToolChain``), ``retry`` (``RetryPolicy``), ``partial_json``, ``streaming``
(stream assembly), ``caching`` (Anthropic breakpoints), ``telemetry`` (optional OpenTelemetry), ``_http`` (the
one HTTP-error rule), and one adapter per wire protocol: ``anthropic``, ``openai``, ``bedrock``, ``vertex``.
Adapters are imported on first access (``flowmas.llm.AnthropicClient``), so importing ``flowmas.llm`` loads
no SDK; each SDK is imported by its adapter only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowmas.errors import (
    ContextLengthExceededError,
    LLMConnectionError,
    LLMError,
    LLMHTTPError,
    LLMProtocolError,
    LLMTimeoutError,
    ToolChainLimitError,
    TransientLLMHTTPError,
)
from flowmas.llm.client import NUDGE, BaseClient, InferenceClient, Middleware, Request, ToolChainResult
from flowmas.llm.partial_json import PartialJSON, parse_partial
from flowmas.llm.retry import RetryPolicy
from flowmas.llm.tools import StopToolChain, Tool, tool
from flowmas.llm.types import (
    BlockStop,
    ChainEvent,
    ContentBlock,
    ImageBlock,
    Message,
    MessageStart,
    MessageStop,
    Response,
    StreamEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ToolCallBlock,
    ToolCallDelta,
    ToolResultBlock,
    ToolResultEvent,
    ToolSpec,
    Usage,
    UsageEvent,
)

if TYPE_CHECKING:
    from flowmas.llm.anthropic import AnthropicClient
    from flowmas.llm.bedrock import BedrockClient
    from flowmas.llm.openai import OpenAIClient
    from flowmas.llm.vertex import VertexClient

_ADAPTERS = {
    "AnthropicClient": "flowmas.llm.anthropic",
    "OpenAIClient": "flowmas.llm.openai",
    "BedrockClient": "flowmas.llm.bedrock",
    "VertexClient": "flowmas.llm.vertex",
}


def __getattr__(name: str) -> Any:
    module = _ADAPTERS.get(name)
    if module is None:
        raise AttributeError(f"module 'flowmas.llm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "NUDGE",
    "AnthropicClient",
    "BaseClient",
    "BedrockClient",
    "BlockStop",
    "ChainEvent",
    "ContentBlock",
    "ContextLengthExceededError",
    "ImageBlock",
    "InferenceClient",
    "LLMConnectionError",
    "LLMError",
    "LLMHTTPError",
    "LLMProtocolError",
    "LLMTimeoutError",
    "Message",
    "MessageStart",
    "MessageStop",
    "Middleware",
    "OpenAIClient",
    "PartialJSON",
    "Request",
    "Response",
    "RetryPolicy",
    "StopToolChain",
    "StreamEvent",
    "TextBlock",
    "TextDelta",
    "ThinkingBlock",
    "Tool",
    "ToolCallBlock",
    "ToolCallDelta",
    "ToolChainLimitError",
    "ToolChainResult",
    "ToolResultBlock",
    "ToolResultEvent",
    "ToolSpec",
    "TransientLLMHTTPError",
    "Usage",
    "UsageEvent",
    "VertexClient",
    "parse_partial",
    "tool",
]
