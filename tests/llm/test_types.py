"""Neutral types: messages (and Asimov's dict shape), ToolSpec.from_function, Usage sums, tool result encoding."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from flowmas.errors import ConfigurationError
from flowmas.llm import (
    ImageBlock,
    Message,
    StopToolChain,
    TextBlock,
    Tool,
    ToolCallBlock,
    ToolResultBlock,
    ToolSpec,
    Usage,
    tool,
)
from flowmas.llm.tools import encode_result, index_tools, run_tool_call
from flowmas.llm.types import to_messages


def get_weather(city: str, days: int = 1, unit: Literal["C", "F"] = "C") -> dict[str, object]:
    """Get the weather forecast.

    Args:
        city: The city's name.
        days: How many days
            to forecast.
        unit: Celsius or Fahrenheit.
    """
    return {"city": city, "days": days, "unit": unit}


def test_tool_spec_from_function() -> None:
    spec = ToolSpec.from_function(get_weather)
    assert spec.name == "get_weather"
    assert spec.description == "Get the weather forecast."
    schema = spec.input_schema
    assert schema["type"] == "object"
    assert schema["required"] == ["city"]
    assert schema["properties"]["city"] == {"type": "string", "description": "The city's name."}
    assert schema["properties"]["days"]["type"] == "integer"
    assert schema["properties"]["days"]["description"] == "How many days to forecast."
    assert schema["properties"]["unit"]["enum"] == ["C", "F"]
    assert "title" not in schema


class Point(BaseModel):
    x: float
    y: float


def test_tool_spec_from_function_with_models_and_annotations() -> None:
    def plot(points: list[Point], label: Annotated[str, Field(max_length=10)] = "") -> str:
        """Plot points."""
        return label

    schema = ToolSpec.from_function(plot).input_schema
    assert schema["properties"]["points"]["type"] == "array"
    assert "$defs" in schema
    assert schema["properties"]["label"]["maxLength"] == 10


def test_tool_spec_rejects_bad_names_and_coerces_provider_shapes() -> None:
    with pytest.raises(ValueError):
        ToolSpec(name="has space")
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    openai_shape = {"type": "function", "function": {"name": "search", "description": "d", "parameters": schema}}
    anthropic_shape = {"name": "search", "description": "d", "input_schema": schema}
    assert ToolSpec.coerce(openai_shape) == ToolSpec.coerce(anthropic_shape) == ToolSpec(
        name="search", description="d", input_schema=schema)


def test_messages_accept_asimov_dicts_and_strings() -> None:
    raw: list[Any] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
           {"role": "tool_result", "content": [{"type": "tool_result", "tool_call_id": "1", "content": "ok"}]}]
    frozen = copy.deepcopy(raw)
    messages = to_messages(raw)
    assert raw == frozen
    assert [m.role for m in messages] == ["system", "user", "tool"]
    assert messages[1].content == [TextBlock(text="hi")]
    assert to_messages("hello") == [Message.user("hello")]
    with pytest.raises(ConfigurationError):
        to_messages([{"role": "wizard", "content": "x"}])


def test_message_helpers() -> None:
    image = ImageBlock.from_bytes(b"\x89PNG", "image/png")
    message = Message.user("look", images=[image])
    assert message.text == "look" and message.content[1] == image
    call = ToolCallBlock(id="c1", name="f", arguments={"a": 1})
    assert Message.assistant("x", tool_calls=[call]).tool_calls == [call]


def test_usage_sums() -> None:
    a = Usage(input_tokens=1, output_tokens=2, cache_read_input_tokens=3, cache_write_input_tokens=4)
    b = Usage(input_tokens=10, output_tokens=20, cache_read_input_tokens=30, cache_write_input_tokens=40)
    total = a + b
    assert total == Usage(input_tokens=11, output_tokens=22, cache_read_input_tokens=33, cache_write_input_tokens=44)
    assert total.prompt_tokens == 11 + 33 + 44 and total.total_tokens == 110
    assert sum([a, b], Usage()) == total


def test_result_encoding_is_json_not_repr() -> None:
    @dataclasses.dataclass
    class Row:
        n: int

    class Model(BaseModel):
        v: str

    assert encode_result("plain") == "plain"
    assert json.loads(encode_result({"a": [1, 2], "b": None})) == {"a": [1, 2], "b": None}  # type: ignore[arg-type]
    assert json.loads(encode_result(Row(3))) == {"n": 3}  # type: ignore[arg-type]
    assert json.loads(encode_result(Model(v="x"))) == {"v": "x"}  # type: ignore[arg-type]
    assert json.loads(encode_result({1: {2, 3}})) in ({"1": [2, 3]}, {"1": [3, 2]})  # type: ignore[arg-type]
    assert json.loads(encode_result(object())).startswith("<object")  # type: ignore[arg-type]
    assert encode_result([TextBlock(text="t")]) == [TextBlock(text="t")]


async def test_tools_run_validate_and_report_errors() -> None:
    async def slow(x: int) -> int:
        """Double."""
        await asyncio.sleep(0)
        return x * 2

    def boom() -> None:
        """Fails."""
        raise RuntimeError("kaput")

    def finish(answer: str) -> None:
        """Ends."""
        raise StopToolChain({"answer": answer})

    asimov = (lambda args: f"got {args['q']}", {"name": "asimov", "input_schema": {"type": "object"}})
    tools = index_tools([Tool.from_function(slow), boom, tool(finish), asimov])
    ok, stop = await run_tool_call(ToolCallBlock(id="1", name="slow", arguments={"x": "21"}), tools)
    assert (ok.content, ok.is_error, stop) == ("42", False, False)
    bad, _ = await run_tool_call(ToolCallBlock(id="2", name="slow", arguments={"x": "many"}), tools)
    assert bad.is_error and "Invalid arguments" in bad.text and "x" in bad.text
    err, _ = await run_tool_call(ToolCallBlock(id="3", name="boom"), tools)
    assert err.is_error and err.text == "RuntimeError: kaput"
    done, stop = await run_tool_call(ToolCallBlock(id="4", name="finish", arguments={"answer": "y"}), tools)
    assert stop and json.loads(done.text) == {"answer": "y"}
    unknown, _ = await run_tool_call(ToolCallBlock(id="5", name="nope"), tools)
    assert unknown.is_error and "Unknown tool" in unknown.text
    legacy, _ = await run_tool_call(ToolCallBlock(id="6", name="asimov", arguments={"q": "z"}), tools)
    assert legacy.content == "got z"
    assert isinstance(legacy, ToolResultBlock)
    with pytest.raises(ConfigurationError):
        index_tools([boom, boom])


async def test_sync_tools_run_in_a_thread_unless_told_otherwise() -> None:
    import threading

    def where() -> str:
        """Which thread."""
        return threading.current_thread().name

    main = threading.current_thread().name
    threaded = index_tools([Tool.from_function(where)])
    inline = index_tools([Tool.from_function(where, thread=False)])
    assert (await run_tool_call(ToolCallBlock(id="1", name="where"), threaded))[0].content != main
    assert (await run_tool_call(ToolCallBlock(id="2", name="where"), inline))[0].content == main
