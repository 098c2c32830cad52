"""Benchmark of flowmas's inference clients (``flowmas.llm``) against the bare official SDKs they wrap.

Run it with ``make bench`` (which runs ``.venv/bin/python bench/llm.py``) or directly::

    .venv/bin/python bench/llm.py                        # every provider and measure (~40 s on 2 cores)
    .venv/bin/python bench/llm.py --quick                # smoke run: few repetitions (~12 s)
    .venv/bin/python bench/llm.py --providers anthropic,bedrock --only complete --reps 500 --json /tmp/llm.json

No ``PYTHONPATH`` is needed: the script puts the repository root first on ``sys.path``. Progress goes to stderr;
the summary table, the raw figures (and the ``--json`` file) are the output. It is a measurement, not a test: it
exits 0 once it ran, whatever the figures (non-zero only for bad options or a crash of the harness itself); a
provider whose client fails is reported in its rows and the others go on. Every ratio compares figures taken in
the same run, interleaved, because absolute times on a shared 2-core machine move by 2x between runs.

The server: ``tests.servers.llm.LLMServer`` (every provider's wire protocol on 127.0.0.1) runs in a child
process (this script with ``--server``), so its CPU work never holds the measured client's GIL; the same server
answers both sides. The harness scripts it over a pipe (untimed): before every block of calls it enqueues
exactly the replies that block consumes, identical for both sides, and afterwards checks that every scripted
reply was consumed and that the expected number of requests arrived. Replies: a short text (``TEXT``, 3 stream
deltas) for ``complete`` and ``stream``; for the tool loop 9 replies each with one ``add`` tool call, then a
final text (``FINAL``).

Sides, per provider (``anthropic``, ``openai-chat``, ``openai-responses``, ``bedrock``, ``vertex``): flowmas's
client (``AnthropicClient``, ``OpenAIClient`` with ``api="chat"``/``"responses"``, ``BedrockClient``,
``VertexClient``, default options: retries on, Anthropic prompt caching on, spans through the OpenTelemetry API
when it is installed) against the SDK flowmas uses under the hood, called directly and configured as flowmas
configures it, so that only flowmas's own layer differs: ``anthropic.AsyncAnthropic`` / ``AsyncAnthropicVertex``
and ``openai.AsyncOpenAI`` (``max_retries=0``, the same timeouts, Anthropic's ``open_telemetry=False``), and for
Bedrock a boto3 ``bedrock-runtime`` client (same botocore config) called through ``asyncio.to_thread``, as
flowmas calls it (boto3 is synchronous). One client per side, created before and warmed up (connections
pooled) by untimed calls. The baseline sends the same request fields flowmas sends (model, ``max_tokens``,
tools with the same JSON schema, ``tool_choice``, stream options) and reads the answer's text (and tool calls).

1. ``complete`` of a short prompt: ``await client.complete(PROMPT)`` (its ``Response.text`` checked) against the
   SDK's create call (``messages.create``, ``chat.completions.create``, ``responses.create``, ``converse``) and
   reading its text. Target: flowmas median <= 1.05x the SDK's.
2. Time to first stream event: from the call to ``client.stream(PROMPT)`` to its first event (``MessageStart``)
   against the SDK's ``create(..., stream=True)`` to its first event (``message_start``, the first chunk,
   ``response.created``; for Bedrock one worker-thread hop that calls ``converse_stream`` and reads its first
   event, ``messageStart``). Both streams are then read to the end (untimed for this figure; the whole stream's
   time is shown for information) and checked. Target: flowmas median - SDK median <= 1 ms.
3. A 10-step tool loop: ``client.tool_chain(PROMPT, [Tool.from_function(add)])`` (9 tool turns and a final
   answer; ``add`` is an ``async def``, so neither side pays a thread hop) against a hand-written loop over the
   same SDK: call, run each tool call (``await add(**arguments)``), append the assistant turn and the results,
   call again until an answer has no tool call. Checked: 10 turns, the final text. Target: <= 1.05x.

Method: per measure and provider, ``--warmup`` untimed calls per side, then ``--reps`` (``--tool-reps`` for the
loop) timed calls per side, A/B interleaved with the side going first alternating (ABBA...), so drift of the
machine's load hits both alike. ``time.perf_counter`` around the awaited call, in one asyncio event loop (the
default one), garbage collection left on. The table shows medians (p90 next to them); ratios are of medians.
The raw section also gives the median of the per-pair ratios (each compares two calls made back to back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from benchkit import Row, median, percentile, print_table

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PROVIDERS = ("anthropic", "openai-chat", "openai-responses", "bedrock", "vertex")
MEASURES = ("complete", "stream", "tools")
MODELS = {
    "anthropic": "claude-haiku-4-5",  # not in the SDK's DEPRECATED_MODELS (a warning per call)
    "openai-chat": "gpt-4.1-mini",
    "openai-responses": "gpt-4.1-mini",
    "bedrock": "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "vertex": "claude-haiku-4-5@20251001",
}
PROMPT = "Say hello."
TEXT = "Hello! How can I help you today?"
FINAL = "The sum is 9."
STEPS = 10  # model turns of the tool loop: 9 with a tool call, then the final answer
MAX_TOKENS = 4096  # flowmas's default, sent by both sides
TIMEOUT, CONNECT_TIMEOUT = 600.0, 5.0  # flowmas's defaults, given to both sides' SDK clients
COMPLETE_TARGET = 1.05
STREAM_TARGET_MS = 1.0
TOOLS_TARGET = 1.05

_STARTED = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr, stamped with the seconds since the start."""
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


async def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# ------------------------------------------------------------------------------------------ the server child


def server_main() -> None:
    """The child: serve every protocol, print ``READY <url>``, then answer JSON commands, one per stdin line.

    ``{"op": "text", "n": N}`` enqueues N text replies; ``{"op": "tools"}`` one tool loop's replies;
    ``{"op": "drain", "bodies": bool}`` answers what arrived since the last drain (count, protocols, pending
    replies, optionally the request bodies) and resets the log and the queue.
    """
    from tests.servers.llm import LLMServer, Reply, ToolCall, Usage

    text_reply = Reply(text=TEXT, usage=Usage(input=12, output=9))
    loop_replies = [Reply(tool_calls=[ToolCall("add", {"a": i, "b": 1})], usage=Usage(input=40 + 30 * i, output=20))
                    for i in range(STEPS - 1)]
    loop_replies.append(Reply(text=FINAL, usage=Usage(input=320, output=8)))
    with LLMServer() as server:
        print(f"READY {server.url}", flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            op = command.get("op")
            answer: dict[str, Any] = {"ok": True}
            if op == "text":
                server.enqueue(*([text_reply] * int(command["n"])))
            elif op == "tools":
                server.enqueue(*loop_replies)
            elif op == "drain":
                requests = list(server.requests)
                answer = {"ok": True, "count": len(requests), "pending": server.pending,
                          "protocols": sorted({str(r.protocol) for r in requests}),
                          "bodies": [r.json for r in requests] if command.get("bodies") else []}
                server.reset()
            else:
                answer = {"ok": False, "error": f"unknown op {op!r}"}
            print(json.dumps(answer), flush=True)


class ServerProcess:
    """The LLM wire server in a child process of its own session, scripted over its stdin/stdout."""

    def __init__(self, log: IO[bytes] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(REPO_ROOT)
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--server"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, env=env, cwd=REPO_ROOT, text=True, start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the LLM server did not start (said {line!r})")
        self.url = line.split(" ", 1)[1].strip()

    def command(self, **command: Any) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError("the LLM server exited")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"LLM server: {answer.get('error')}")
        return answer

    def drain(self, *, bodies: bool = False) -> dict[str, Any]:
        return self.command(op="drain", bodies=bodies)

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


# ------------------------------------------------------------------------------------------------ the sides


class Mismatch(Exception):
    """A side's answer was not the scripted one (the figure would not compare like with like)."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Mismatch(what)


class FlowmasSide:
    """flowmas's client: ``complete``, ``stream`` and ``tool_chain`` as a user calls them."""

    def __init__(self, client: Any) -> None:
        from flowmas.llm import Tool

        self.client = client
        self.tool = Tool.from_function(add)

    async def complete(self) -> tuple[float, float]:
        started = time.perf_counter()
        response = await self.client.complete(PROMPT)
        elapsed = time.perf_counter() - started
        expect(response.text == TEXT, f"complete answered {response.text!r}")
        return elapsed, elapsed

    async def stream(self) -> tuple[float, float]:
        from flowmas.llm import MessageStart, MessageStop

        started = time.perf_counter()
        events = self.client.stream(PROMPT)
        first = await anext(events)
        first_at = time.perf_counter()
        last = first
        async for event in events:
            last = event
        done = time.perf_counter()
        expect(isinstance(first, MessageStart), f"first stream event {type(first).__name__}")
        expect(isinstance(last, MessageStop) and last.response.text == TEXT, f"stream ended with {last!r}")
        return first_at - started, done - started

    async def tools(self) -> tuple[float, float]:
        started = time.perf_counter()
        result = await self.client.tool_chain(PROMPT, [self.tool])
        elapsed = time.perf_counter() - started
        expect(result.iterations == STEPS and result.text == FINAL,
               f"tool_chain: {result.iterations} turns, text {result.text!r}")
        return elapsed, elapsed

    async def close(self) -> None:
        await self.client.aclose()


class SdkSide:
    """The bare SDK: one protocol's create call, stream and hand-written tool loop (subclasses)."""

    async def complete(self) -> tuple[float, float]:
        started = time.perf_counter()
        text = await self._complete()
        elapsed = time.perf_counter() - started
        expect(text == TEXT, f"SDK complete answered {text!r}")
        return elapsed, elapsed

    async def tools(self) -> tuple[float, float]:
        started = time.perf_counter()
        turns, text = await self._tools()
        elapsed = time.perf_counter() - started
        expect(turns == STEPS and text == FINAL, f"SDK tool loop: {turns} turns, text {text!r}")
        return elapsed, elapsed

    async def _complete(self) -> str:
        raise NotImplementedError

    async def _tools(self) -> tuple[int, str]:
        raise NotImplementedError

    async def stream(self) -> tuple[float, float]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class AnthropicSdk(SdkSide):
    """``AsyncAnthropic`` (or ``AsyncAnthropicVertex``): Messages API."""

    def __init__(self, sdk: Any, model: str, spec: Any) -> None:
        self.sdk, self.model = sdk, model
        self.tool = {"name": spec.name, "description": spec.description, "input_schema": spec.input_schema}

    async def _complete(self) -> str:
        message = await self.sdk.messages.create(model=self.model, max_tokens=MAX_TOKENS,
                                                 messages=[{"role": "user", "content": PROMPT}])
        return "".join(b.text for b in message.content if b.type == "text")

    async def stream(self) -> tuple[float, float]:
        started = time.perf_counter()
        stream = await self.sdk.messages.create(model=self.model, max_tokens=MAX_TOKENS, stream=True,
                                                messages=[{"role": "user", "content": PROMPT}])
        first = await anext(stream)
        first_at = time.perf_counter()
        parts: list[str] = []
        try:
            async for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    parts.append(event.delta.text)
        finally:
            await stream.close()
        done = time.perf_counter()
        expect(first.type == "message_start" and "".join(parts) == TEXT, "SDK stream differs")
        return first_at - started, done - started

    async def _tools(self) -> tuple[int, str]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]
        for turn in range(1, STEPS + 1):
            message = await self.sdk.messages.create(model=self.model, max_tokens=MAX_TOKENS, messages=messages,
                                                     tools=[self.tool], tool_choice={"type": "auto"})
            calls = [b for b in message.content if b.type == "tool_use"]
            if not calls:
                return turn, "".join(b.text for b in message.content if b.type == "text")
            messages.append({"role": "assistant", "content": [
                {"type": "text", "text": b.text} if b.type == "text"
                else {"type": "tool_use", "id": b.id, "name": b.name, "input": b.input}
                for b in message.content if b.type in ("text", "tool_use")]})
            results = [{"type": "tool_result", "tool_use_id": c.id, "content": json.dumps(await add(**c.input))}
                       for c in calls]
            messages.append({"role": "user", "content": results})
        return STEPS + 1, ""

    async def close(self) -> None:
        await self.sdk.close()


class ChatSdk(SdkSide):
    """``AsyncOpenAI``: Chat Completions."""

    def __init__(self, sdk: Any, model: str, spec: Any) -> None:
        self.sdk, self.model = sdk, model
        self.tool = {"type": "function", "function": {"name": spec.name, "description": spec.description,
                                                      "parameters": spec.input_schema}}

    async def _complete(self) -> str:
        completion = await self.sdk.chat.completions.create(model=self.model, max_tokens=MAX_TOKENS,
                                                            messages=[{"role": "user", "content": PROMPT}])
        return str(completion.choices[0].message.content or "")

    async def stream(self) -> tuple[float, float]:
        started = time.perf_counter()
        stream = await self.sdk.chat.completions.create(
            model=self.model, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}], stream=True,
            stream_options={"include_usage": True})
        first = await anext(stream)
        first_at = time.perf_counter()
        parts = [first.choices[0].delta.content or ""] if first.choices else []
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta is not None and chunk.choices[0].delta.content:
                    parts.append(chunk.choices[0].delta.content)
        finally:
            await stream.close()
        done = time.perf_counter()
        expect("".join(parts) == TEXT, "SDK stream differs")
        return first_at - started, done - started

    async def _tools(self) -> tuple[int, str]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]
        for turn in range(1, STEPS + 1):
            completion = await self.sdk.chat.completions.create(
                model=self.model, max_tokens=MAX_TOKENS, messages=messages, tools=[self.tool], tool_choice="auto")
            message = completion.choices[0].message
            if not message.tool_calls:
                return turn, str(message.content or "")
            messages.append({"role": "assistant", "content": message.content, "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.function.name,
                                                              "arguments": c.function.arguments}}
                for c in message.tool_calls]})
            for call in message.tool_calls:
                result = await add(**json.loads(call.function.arguments))
                messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
        return STEPS + 1, ""

    async def close(self) -> None:
        await self.sdk.close()


class ResponsesSdk(SdkSide):
    """``AsyncOpenAI``: the Responses API (``store=False``, as flowmas sends it)."""

    def __init__(self, sdk: Any, model: str, spec: Any) -> None:
        self.sdk, self.model = sdk, model
        self.tool = {"type": "function", "name": spec.name, "description": spec.description,
                     "parameters": spec.input_schema, "strict": False}

    async def _complete(self) -> str:
        response = await self.sdk.responses.create(model=self.model, max_output_tokens=MAX_TOKENS, store=False,
                                                   input=[{"role": "user", "content": PROMPT}])
        return str(response.output_text)

    async def stream(self) -> tuple[float, float]:
        started = time.perf_counter()
        stream = await self.sdk.responses.create(model=self.model, max_output_tokens=MAX_TOKENS, store=False,
                                                 input=[{"role": "user", "content": PROMPT}], stream=True)
        first = await anext(stream)
        first_at = time.perf_counter()
        parts: list[str] = []
        try:
            async for event in stream:
                if event.type == "response.output_text.delta":
                    parts.append(event.delta)
        finally:
            await stream.close()
        done = time.perf_counter()
        expect(first.type == "response.created" and "".join(parts) == TEXT, "SDK stream differs")
        return first_at - started, done - started

    async def _tools(self) -> tuple[int, str]:
        items: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]
        for turn in range(1, STEPS + 1):
            response = await self.sdk.responses.create(model=self.model, max_output_tokens=MAX_TOKENS, store=False,
                                                       input=items, tools=[self.tool], tool_choice="auto")
            calls = [o for o in response.output if o.type == "function_call"]
            if not calls:
                return turn, str(response.output_text)
            for call in calls:
                items.append({"type": "function_call", "call_id": call.call_id, "name": call.name,
                              "arguments": call.arguments})
            for call in calls:
                result = await add(**json.loads(call.arguments))
                items.append({"type": "function_call_output", "call_id": call.call_id, "output": json.dumps(result)})
        return STEPS + 1, ""

    async def close(self) -> None:
        await self.sdk.close()


class BedrockSdk(SdkSide):
    """boto3 ``bedrock-runtime``: Converse / ConverseStream, each call in a worker thread."""

    def __init__(self, client: Any, model: str, spec: Any) -> None:
        self.client, self.model = client, model
        self.tool_config = {"tools": [{"toolSpec": {"name": spec.name, "description": spec.description,
                                                    "inputSchema": {"json": spec.input_schema}}}],
                            "toolChoice": {"auto": {}}}

    def _converse(self, messages: list[dict[str, Any]], **extra: Any) -> Any:
        return self.client.converse(modelId=self.model, messages=messages,
                                    inferenceConfig={"maxTokens": MAX_TOKENS}, **extra)

    async def _complete(self) -> str:
        answer = await asyncio.to_thread(self._converse, [{"role": "user", "content": [{"text": PROMPT}]}])
        return "".join(b.get("text", "") for b in answer["output"]["message"]["content"])

    def _open_stream(self) -> tuple[Any, Any]:
        answer = self.client.converse_stream(modelId=self.model, inferenceConfig={"maxTokens": MAX_TOKENS},
                                             messages=[{"role": "user", "content": [{"text": PROMPT}]}])
        events = iter(answer["stream"])
        return events, next(events)

    async def stream(self) -> tuple[float, float]:
        started = time.perf_counter()
        events, first = await asyncio.to_thread(self._open_stream)
        first_at = time.perf_counter()
        rest = await asyncio.to_thread(list, events)
        done = time.perf_counter()
        text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in rest if "contentBlockDelta" in e)
        expect("messageStart" in first and text == TEXT, "SDK stream differs")
        return first_at - started, done - started

    async def _tools(self) -> tuple[int, str]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": [{"text": PROMPT}]}]
        for turn in range(1, STEPS + 1):
            answer = await asyncio.to_thread(self._converse, messages, toolConfig=self.tool_config)
            message = answer["output"]["message"]
            uses = [b["toolUse"] for b in message["content"] if "toolUse" in b]
            if not uses:
                return turn, "".join(b.get("text", "") for b in message["content"])
            messages.append(message)
            results = [{"toolResult": {"toolUseId": u["toolUseId"], "status": "success",
                                       "content": [{"text": json.dumps(await add(**u["input"]))}]}} for u in uses]
            messages.append({"role": "user", "content": results})
        return STEPS + 1, ""

    async def close(self) -> None:
        await asyncio.to_thread(self.client.close)


def make_sides(provider: str, url: str) -> tuple[FlowmasSide, SdkSide]:
    """flowmas's client and the bare SDK client for ``provider``, both pointed at ``url``."""
    from flowmas.llm import Tool

    model = MODELS[provider]
    spec = Tool.from_function(add).spec
    if provider in ("anthropic", "vertex"):
        import anthropic

        options: dict[str, Any] = {"max_retries": 0, "timeout": anthropic.Timeout(TIMEOUT, connect=CONNECT_TIMEOUT),
                                   "open_telemetry": False}
        if provider == "anthropic":
            from flowmas.llm import AnthropicClient

            return (FlowmasSide(AnthropicClient(model, api_key="test", base_url=url)),
                    AnthropicSdk(anthropic.AsyncAnthropic(api_key="test", base_url=url, **options), model, spec))
        from flowmas.llm import VertexClient

        vertex: dict[str, Any] = {"region": "us-east5", "project_id": "p", "access_token": "test",
                                  "base_url": url + "/v1"}
        return (FlowmasSide(VertexClient(model, **vertex)),
                AnthropicSdk(anthropic.AsyncAnthropicVertex(**vertex, **options), model, spec))
    if provider in ("openai-chat", "openai-responses"):
        import openai

        from flowmas.llm import OpenAIClient

        api: Literal["chat", "responses"] = "chat" if provider == "openai-chat" else "responses"
        sdk = openai.AsyncOpenAI(api_key="test", base_url=url + "/v1", max_retries=0,
                                 timeout=openai.Timeout(TIMEOUT, connect=CONNECT_TIMEOUT))
        client = OpenAIClient(model, api_key="test", base_url=url + "/v1", api=api)
        return FlowmasSide(client), (ChatSdk if api == "chat" else ResponsesSdk)(sdk, model, spec)
    import boto3
    import botocore.config

    from flowmas.llm import BedrockClient

    credentials: dict[str, Any] = {"aws_access_key_id": "x", "aws_secret_access_key": "y"}
    config = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                    connect_timeout=CONNECT_TIMEOUT, read_timeout=TIMEOUT, max_pool_connections=50)
    boto = boto3.session.Session().client("bedrock-runtime", region_name="us-east-1", endpoint_url=url,
                                          config=config, **credentials)
    return (FlowmasSide(BedrockClient(model, region="us-east-1", endpoint_url=url, **credentials)),
            BedrockSdk(boto, model, spec))


# ---------------------------------------------------------------------------------------------- measuring

Call = Callable[[], Awaitable[tuple[float, float]]]


@dataclass
class Figure:
    """One measure of one provider: per side, the primary figure (and a secondary one: the whole stream)."""

    provider: str
    measure: str
    flowmas: list[float] = field(default_factory=list)
    sdk: list[float] = field(default_factory=list)
    flowmas_whole: list[float] = field(default_factory=list)
    sdk_whole: list[float] = field(default_factory=list)
    error: str | None = None


async def interleaved(figure: Figure, flowmas: Call, sdk: Call, reps: int, warmup: int,
                      before: Callable[[], object], after: Callable[[int], object], calls_per_run: int) -> None:
    """``warmup`` untimed then ``reps`` timed runs per side, ABBA order; ``before``/``after`` script and check
    the server (untimed): per block of warm-up runs and of timed runs when ``calls_per_run`` is 1, per run
    otherwise (``after`` gets the number of requests expected since the last check)."""
    sides = ((flowmas, figure.flowmas, figure.flowmas_whole), (sdk, figure.sdk, figure.sdk_whole))
    per_run = calls_per_run > 1

    async def run(call: Call) -> tuple[float, float]:
        if per_run:
            before()
        result = await call()
        if per_run:
            after(calls_per_run)
        return result

    if not per_run:
        before()
    for _ in range(warmup):
        for call, _, _ in sides:
            await run(call)
    if not per_run:
        after(2 * warmup)
        before()
    gc.collect()
    for rep in range(reps):
        order = sides if rep % 2 == 0 else sides[::-1]
        for call, primary, whole in order:
            first, total = await run(call)
            primary.append(first)
            whole.append(total)
    if not per_run:
        after(2 * reps)


async def measure_provider(provider: str, server: ServerProcess, args: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
    try:
        flowmas, sdk = make_sides(provider, server.url)
    except Exception as exc:
        return [Figure(provider, m, error=f"setup: {type(exc).__name__}: {exc}") for m in args.only]

    def check(expected: int) -> None:
        state = server.drain()
        if state["pending"] or state["count"] != expected:
            raise Mismatch(f"server: {state['count']} requests (expected {expected}), {state['pending']} scripted "
                           "replies left")

    def script_loop() -> None:
        server.command(op="tools")

    try:
        server.drain()
        for measure in args.only:
            figure = Figure(provider, measure)
            figures.append(figure)
            progress(f"{provider}: {measure}")
            try:
                if measure == "tools":
                    await interleaved(figure, flowmas.tools, sdk.tools, args.tool_reps, args.tool_warmup,
                                      script_loop, check, STEPS)
                else:
                    reps, warmup = args.reps, args.warmup
                    fm_call, sdk_call = ((flowmas.complete, sdk.complete) if measure == "complete"
                                         else (flowmas.stream, sdk.stream))
                    state: dict[str, int] = {"n": 2 * warmup}

                    def before(state: dict[str, int] = state) -> None:
                        server.command(op="text", n=state["n"])

                    def after(expected: int, state: dict[str, int] = state, reps: int = reps) -> None:
                        check(expected)
                        state["n"] = 2 * reps

                    await interleaved(figure, fm_call, sdk_call, reps, warmup, before, after, 1)
            except Exception as exc:
                figure.error = f"{type(exc).__name__}: {str(exc)[:300]}"
                progress(f"{provider}: {measure} FAILED: {figure.error}")
                with contextlib.suppress(Exception):
                    server.drain()
    finally:
        for side in (flowmas, sdk):
            with contextlib.suppress(Exception):
                await side.close()
    return figures


async def compare_bodies(provider: str, server: ServerProcess) -> str | None:
    """One untimed ``complete`` per side; a note when the two request bodies have different keys."""
    try:
        flowmas, sdk = make_sides(provider, server.url)
    except Exception as exc:
        return f"{provider}: setup failed: {type(exc).__name__}: {exc}"
    try:
        server.drain()
        server.command(op="text", n=2)
        with contextlib.suppress(Exception):
            await flowmas.complete()
        with contextlib.suppress(Exception):
            await sdk.complete()
        bodies = server.drain(bodies=True)["bodies"]
    finally:
        for side in (flowmas, sdk):
            with contextlib.suppress(Exception):
                await side.close()
    if len(bodies) != 2:
        return f"{provider}: {len(bodies)} request bodies arrived for one call per side"
    mine, theirs = (set(b) if isinstance(b, dict) else set() for b in bodies)
    if mine != theirs:
        return (f"{provider}: request fields differ: flowmas only {sorted(mine - theirs)}, "
                f"SDK only {sorted(theirs - mine)}")
    return None


# ----------------------------------------------------------------------------------------------- reporting


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.3f} ms" if value < 0.01 else f"{value * 1000:.2f} ms"


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"{_ms(median(values))} (p90 {_ms(percentile(values, 90))})"


def _met(condition: bool | None) -> str:
    return "n/a" if condition is None else ("✓" if condition else "✗")


def summarise(figures: Sequence[Figure], args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for fig in figures:
        label = {"complete": "complete", "stream": "first stream event",
                 "tools": f"{STEPS}-step tool loop"}[fig.measure]
        n = len(fig.flowmas)
        if fig.error is not None and not n:
            rows.append(Row(f"{label}, {fig.provider}", f"FAILED: {fig.error[:70]}", "-", "-", "-", "n/a"))
            continue
        fm, sd = median(fig.flowmas), median(fig.sdk)
        if fig.measure == "stream":
            overhead = None if fm is None or sd is None else fm - sd
            rows.append(Row(f"{label}, {fig.provider} (median of {n})", _cell(fig.flowmas), "SDK " + _cell(fig.sdk),
                            "n/a" if overhead is None else f"{overhead * 1000:+.3f} ms", f"≤ +{STREAM_TARGET_MS:g} ms",
                            _met(None if overhead is None else overhead * 1000 <= STREAM_TARGET_MS)))
            wf, ws = median(fig.flowmas_whole), median(fig.sdk_whole)
            rows.append(Row("  same, whole stream", _cell(fig.flowmas_whole), "SDK " + _cell(fig.sdk_whole),
                            f"{wf / ws:.3f}x" if wf is not None and ws else "n/a", "(info)", "-"))
        else:
            target = COMPLETE_TARGET if fig.measure == "complete" else TOOLS_TARGET
            ratio = fm / sd if fm is not None and sd else None
            rows.append(Row(f"{label}, {fig.provider} (median of {n})", _cell(fig.flowmas), "SDK " + _cell(fig.sdk),
                            "n/a" if ratio is None else f"{ratio:.3f}x", f"≤ {target:g}x",
                            _met(None if ratio is None else ratio <= target)))
        if fig.error is not None:
            rows.append(Row("  (stopped early)", fig.error[:70], "-", "-", "-", "-"))
    return rows


def pair_ratios(fig: Figure) -> list[float]:
    return [a / b for a, b in zip(fig.flowmas, fig.sdk, strict=False) if b > 0]


def print_raw(figures: Sequence[Figure]) -> None:
    print("raw: median of per-pair flowmas/SDK ratios (first event: per-pair differences); min of each side")
    for fig in figures:
        if not fig.flowmas or not fig.sdk:
            continue
        if fig.measure == "stream":
            diffs = [(a - b) * 1000 for a, b in zip(fig.flowmas, fig.sdk, strict=False)]
            paired = f"per-pair difference median {statistics.median(diffs):+.3f} ms"
        else:
            paired = f"per-pair ratio median {statistics.median(pair_ratios(fig)):.3f}x"
        print(f"  {fig.measure:8} {fig.provider:16} {paired}; min flowmas {_ms(min(fig.flowmas))}, "
              f"SDK {_ms(min(fig.sdk))}")


def versions() -> str:
    import importlib.metadata as metadata

    names = ("anthropic", "openai", "boto3", "botocore", "httpx2", "httpx", "opentelemetry-api")
    found: list[str] = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


# --------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 calls, 5 tool loops per side and figure")
    parser.add_argument("--reps", type=int, default=None, help="timed complete/stream calls per side (default 300)")
    parser.add_argument("--tool-reps", type=int, default=None, help="timed tool loops per side (default 40)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per side first (default 20)")
    parser.add_argument("--providers", default=",".join(PROVIDERS),
                        help=f"comma-separated providers (default all: {','.join(PROVIDERS)})")
    parser.add_argument("--only", default=",".join(MEASURES),
                        help=f"comma-separated measures (default all: {','.join(MEASURES)})")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.reps = args.reps or (30 if args.quick else 300)
    args.tool_reps = args.tool_reps or (5 if args.quick else 40)
    args.warmup = args.warmup if args.warmup is not None else (5 if args.quick else 20)
    args.tool_warmup = 1 if args.quick else 3
    if args.reps < 1 or args.tool_reps < 1 or args.warmup < 0:
        parser.error("--reps and --tool-reps must be >= 1, --warmup >= 0")
    args.providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    if not args.providers or not set(args.providers) <= set(PROVIDERS):
        parser.error(f"--providers takes a comma-separated subset of {', '.join(PROVIDERS)}")
    if not args.only or not set(args.only) <= set(MEASURES):
        parser.error(f"--only takes a comma-separated subset of {', '.join(MEASURES)}")
    args.only = [m for m in MEASURES if m in args.only]
    return args


async def run(args: argparse.Namespace, server: ServerProcess) -> tuple[list[Figure], list[str]]:
    notes = [note for provider in args.providers if (note := await compare_bodies(provider, server)) is not None]
    figures: list[Figure] = []
    for provider in args.providers:
        figures += await measure_provider(provider, server, args)
    return figures, notes


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["--server"]:
        server_main()
        return 0
    args = parse_args(argv)
    for var in ("NO_PROXY", "no_proxy"):  # every request of this script goes to 127.0.0.1
        os.environ[var] = ",".join(filter(None, ("127.0.0.1,localhost", os.environ.get(var))))
    load_before = os.getloadavg()
    progress(f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f}; starting the LLM server child")
    server = ServerProcess()
    try:
        figures, notes = asyncio.run(run(args, server))
    except KeyboardInterrupt:
        progress("interrupted")
        return 130
    finally:
        server.stop()
    load_after = os.getloadavg()
    rows = summarise(figures, args)
    print()
    print(f"flowmas LLM clients vs the bare SDKs, same local wire server (child process), interleaved; "
          f"{args.reps} calls / {args.tool_reps} tool loops per side{' (--quick)' if args.quick else ''}; "
          f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}; {time.monotonic() - _STARTED:.0f} s in all")
    print_table(rows, Row("measure", "flowmas", "baseline (bare SDK)", "ratio / overhead", "target", "met"))
    print_raw(figures)
    for note in notes:
        print(f"note: {note}")
    print(f"Python {platform.python_version()}, {os.cpu_count()} CPUs; {versions()}")
    if args.json is not None:
        summary = {
            "config": {"reps": args.reps, "tool_reps": args.tool_reps, "warmup": args.warmup,
                       "providers": args.providers, "measures": args.only, "quick": args.quick},
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "load_average_before": load_before, "load_average_after": load_after,
                            "versions": versions()},
            "figures": [asdict(f) for f in figures],
            "notes": notes,
            "summary": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(summary, indent=2))
        progress(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
