"""The tool chain's fast paths: per-chain request memo (parameters other than the messages built once, messages
extended turn by turn, breakpoints reused), the lean wire form of one-text-block messages, plain tool arguments
passed without validation, the inline single tool call. Each must give exactly what the plain path gives."""

from __future__ import annotations

import copy
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flowmas.llm import AnthropicClient, BedrockClient, Message, Tool
from flowmas.llm import anthropic as anthropic_adapter
from flowmas.llm import bedrock as bedrock_adapter
from flowmas.llm._convert import merge_role, merge_roles
from flowmas.llm.caching import place_breakpoints, place_message_breakpoints, place_new_breakpoints
from flowmas.llm.client import Request, _chain_request, _with_messages, request_memo
from flowmas.llm.tools import StopToolChain, _plain_arguments
from flowmas.llm.types import ToolCallBlock, ToolResultBlock, Usage
from tests.llm.test_fast_paths import PNG, transcript

TOOLS = [{"name": "get", "description": "Get.", "input_schema": {"type": "object"}}]


def chain_transcript() -> list[Message]:
    """What a tool chain's transcript can hold: the fast-path tests' conversation up to its tool results (system
    text, two user turns in a row, text and tool calls, an error result, an image result), then a plain answer,
    a nudge, one more tool round and the final answer."""
    return [
        *transcript()[:7],
        Message.assistant("Plain answer."),
        Message.user("You answered without calling a tool."),
        Message.assistant(tool_calls=[ToolCallBlock(id="c4", name="get", arguments={})]),
        Message.tool_results([ToolResultBlock(tool_call_id="c4", name="get", content="four")]),
        Message.assistant("Done."),
    ]


def chain_requests(client: Any, messages: list[Message], start: int = 3, **options: Any) -> list[Request]:
    """A chain's requests as tool_chain makes them: the first from the caller's messages, then the transcript."""
    first = _chain_request(client.build_request(messages[:start], tools=TOOLS, **options))
    return [first, *(_with_messages(first, messages[:n]) for n in range(start + 1, len(messages) + 1))]


def plain(request: Request) -> Request:
    """The same request without the chain's memo (what ``complete`` would send)."""
    fields = {k: v for k, v in request.__dict__.items() if not k.startswith("_")}
    return Request(**fields)


@pytest.mark.parametrize("caching", [True, False])
@pytest.mark.parametrize("options", [{}, {"system": "Sys.", "temperature": 0.5, "stop": ["X"], "timeout": 9.0},
                                     {"tool_choice": "get"}])
def test_anthropic_chain_turns_send_what_single_requests_send(caching: bool, options: dict[str, Any]) -> None:
    client = AnthropicClient("claude-test", api_key="k", thinking=2048 if options else None)
    sent: list[tuple[Any, Any]] = []
    for request in chain_requests(client, chain_transcript(), **options):
        assert request_memo(request) is not None and request_memo(plain(request)) is None
        params = anthropic_adapter.build_params(request, caching=caching, thinking=client.thinking,
                                                cache=client._converted)
        expected = anthropic_adapter.build_params(plain(request), caching=caching, thinking=client.thinking)
        assert params == expected
        assert params == anthropic_adapter.build_params(request, caching=caching, thinking=client.thinking,
                                                        cache=client._converted)  # a retried turn
        sent.append((params, copy.deepcopy(params)))
    assert all(params == snapshot for params, snapshot in sent)  # later turns changed nothing sent before


@pytest.mark.parametrize("caching", [True, False])
def test_bedrock_chain_turns_send_what_single_requests_send(caching: bool) -> None:
    client = BedrockClient("anthropic.claude-test", region="us-east-1", caching=caching)
    sent: list[tuple[Any, Any]] = []
    for request in chain_requests(client, chain_transcript(), system="Sys.", stop=["X"]):
        params = bedrock_adapter.build_params(request, caching=caching, cache=client._converted)
        assert params == bedrock_adapter.build_params(plain(request), caching=caching)
        sent.append((params, copy.deepcopy(params)))
    assert all(params == snapshot for params, snapshot in sent)


def test_bedrock_chain_with_tool_choice_none_still_refuses_tool_history() -> None:
    from flowmas.errors import ConfigurationError

    client = BedrockClient("anthropic.claude-test", region="us-east-1")
    requests = chain_requests(client, chain_transcript(), tool_choice="none")
    assert "toolConfig" not in bedrock_adapter.build_params(requests[0], cache=client._converted)
    with pytest.raises(ConfigurationError):
        bedrock_adapter.build_params(requests[-1], cache=client._converted)


# --- the lean wire form ------------------------------------------------------------------------------------


def test_one_text_block_is_sent_as_a_string_content() -> None:
    assert anthropic_adapter.wire_message(Message.user("Hi")) == {"role": "user", "content": "Hi"}
    assert anthropic_adapter.wire_message(Message.assistant("Yes")) == {"role": "assistant", "content": "Yes"}
    assert anthropic_adapter.wire_message(Message.user("")) is None
    assert anthropic_adapter.wire_message(Message.system("S")) is None
    for message in chain_transcript():  # anything else: the block form
        lean, full = anthropic_adapter.wire_message(message), anthropic_adapter.message_param(message)
        if lean is not None and isinstance(lean["content"], str):
            assert full == {"role": lean["role"], "content": [{"type": "text", "text": lean["content"]}]}
        else:
            assert lean == full


def test_string_contents_merge_as_their_blocks() -> None:
    one, two = Message.user("one"), Message.user("two", images=[PNG])
    lean = merge_roles([anthropic_adapter.wire_message(one), anthropic_adapter.wire_message(two)])
    full = merge_roles([anthropic_adapter.message_param(one), anthropic_adapter.message_param(two)])
    assert lean == full
    out: list[dict[str, Any]] = []
    merge_role(out, {"role": "user", "content": "a"})
    merge_role(out, {"role": "user", "content": "b"})
    assert out == [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]


def test_a_breakpoint_on_a_string_content_turns_it_into_its_marked_block() -> None:
    def lean() -> list[dict[str, Any]]:
        return [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                {"role": "user", "content": "q2"}]

    marked = [{"role": "user", "content": [{"type": "text", "text": "q1", "cache_control": {"type": "ephemeral"}}]},
              {"role": "assistant", "content": "a1"},
              {"role": "user", "content": [{"type": "text", "text": "q2", "cache_control": {"type": "ephemeral"}}]}]
    general, fresh, shared = lean(), lean(), lean()
    assert place_breakpoints([], [], general) == 2 and general == marked
    messages = list(shared)
    assert place_new_breakpoints([], [], messages) == 2 and messages == marked
    assert shared == lean()  # the shared dicts were not changed
    assert place_message_breakpoints(fresh) == 2 and fresh == marked


def test_reused_breakpoint_copies_equal_fresh_ones() -> None:
    client = AnthropicClient("claude-test", api_key="k")
    reuse: list[Any] = [None, None]
    for request in chain_requests(client, chain_transcript()):
        built = anthropic_adapter.build_messages(request)
        with_reuse, without = list(built), list(built)
        assert place_message_breakpoints(with_reuse, reuse) == place_message_breakpoints(without)
        assert with_reuse == without


# --- plain tool arguments ----------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    return a + b


def mixed(x: float, s: str, flag: bool) -> str:
    return f"{x!r} {s!r} {flag!r}"


@pytest.mark.parametrize("arguments", [
    {"a": 1, "b": 2}, {"a": True, "b": 2}, {"a": "3", "b": 2}, {"a": 1.0, "b": 2}, {"a": 1}, {"a": 1, "b": 2, "c": 3},
    {"b": 2, "a": 1}, {"a": None, "b": 1},
])
async def test_plain_arguments_give_what_validation_gives(arguments: dict[str, Any]) -> None:
    fast = Tool.from_function(add, thread=False)
    slow = Tool.from_function(add, thread=False)
    slow._plain = None  # validated always
    assert fast._plain == (("a", int), ("b", int))
    try:
        expected: Any = await slow.invoke(arguments)
    except ValidationError as exc:
        with pytest.raises(ValidationError) as caught:
            await fast.invoke(arguments)
        assert caught.value.errors() == exc.errors()
    else:
        assert await fast.invoke(arguments) == expected


@pytest.mark.parametrize("arguments", [
    {"x": 1.5, "s": "a", "flag": False}, {"x": 1, "s": "a", "flag": False}, {"x": 1.5, "s": "a", "flag": 1},
])
async def test_plain_arguments_of_other_types_give_what_validation_gives(arguments: dict[str, Any]) -> None:
    fast, slow = Tool.from_function(mixed, thread=False), Tool.from_function(mixed, thread=False)
    slow._plain = None
    assert await fast.invoke(arguments) == await slow.invoke(arguments)


def test_only_plain_signatures_skip_validation() -> None:
    def constrained(a: Annotated[int, Field(gt=0)]) -> None: ...
    def defaulted(a: int = 1) -> None: ...
    def listed(a: list[int]) -> None: ...

    for fn in (constrained, defaulted, listed):
        assert Tool.from_function(fn)._plain is None
    assert Tool(TOOLS[0], lambda args: args, takes_dict=True)._plain is None

    class Stripped(BaseModel):  # a caller's model: its config (here, stripping) always applies
        model_config = ConfigDict(str_strip_whitespace=True)
        s: str

    given = Tool({"name": "echo"}, lambda s: s, arguments_model=Stripped, thread=False)
    assert given._plain is None
    assert _plain_arguments((("a", int),), {"a": True}) is None
    assert _plain_arguments((("a", int),), {"a": 2}) == {"a": 2}


# --- the loop ----------------------------------------------------------------------------------------------


class ChainSDK:
    """``messages.create`` answering scripted replies, recording every request's arguments."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        from anthropic.types import Message as WireMessage

        self.replies = [WireMessage.model_validate({
            "id": f"msg_{i}", "type": "message", "role": "assistant", "model": "claude-test", "stop_sequence": None,
            **reply}) for i, reply in enumerate(replies)]
        self.calls: list[dict[str, Any]] = []
        self.messages = self

    async def create(self, **params: Any) -> Any:
        self.calls.append(copy.deepcopy(params))
        return self.replies[len(self.calls) - 1]


def tool_reply(i: int, name: str = "add", arguments: Any = None) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "id": f"t{i}", "name": name, "input": arguments or {"a": i, "b": 1}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10 + i, "output_tokens": 2, "cache_read_input_tokens": i,
                      "cache_creation_input_tokens": 1}}


async def test_tool_chain_sums_usage_and_sends_each_turn_as_a_single_request_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def stop(value: str) -> str:
        raise StopToolChain(value)

    replies = [tool_reply(0), tool_reply(1, "missing"), tool_reply(2, "add", {"a": "x", "b": 1}),
               tool_reply(3), tool_reply(4, "stop", {"value": "bye"})]
    sdk = ChainSDK(replies)
    client = AnthropicClient("claude-test", api_key="k")
    monkeypatch.setattr(client, "_sdk", lambda: sdk)
    result = await client.tool_chain("Go", [Tool.from_function(add), Tool.from_function(stop)], system="S")
    assert result.stopped_by_tool and result.iterations == 5
    assert result.usage == Usage(input_tokens=sum(10 + i for i in range(5)), output_tokens=10,
                                 cache_read_input_tokens=10, cache_write_input_tokens=5)
    results = [m.content[0] for m in result.messages if m.role == "tool"]
    assert [r.content for r in results] == ["1", "Unknown tool 'missing'. Available tools: add, stop.",
                                            results[2].content, "4", "bye"]
    assert results[2].is_error and results[2].content.startswith("Invalid arguments: a:")
    # every turn sent what complete() sends for the transcript so far
    specs = [Tool.from_function(add).spec, Tool.from_function(stop).spec]
    for n, params in enumerate(sdk.calls):
        transcript = result.messages[: 1 + 2 * n]
        expected = anthropic_adapter.build_params(client.build_request(transcript, tools=specs, system="S"),
                                                  caching=True)
        assert params == expected


async def test_a_callers_arguments_model_still_validates() -> None:
    class Stripped(BaseModel):
        model_config = ConfigDict(str_strip_whitespace=True)
        s: str

    given = Tool({"name": "echo"}, lambda s: s, arguments_model=Stripped, thread=False)
    assert await given.invoke({"s": "  x  "}) == "x"
