"""``BedrockClient``: Amazon Bedrock's Converse and ConverseStream through boto3 ``bedrock-runtime``.

boto3 is synchronous: a call runs in a worker thread (``asyncio.to_thread``); a stream is opened and its first
event read in one such hop (as a bare SDK call would), then the rest is read ahead by one reader thread per
stream (daemon threads, reused while idle) that hands events to the event loop through a queue.
One boto3 client per ``BedrockClient`` (thread-safe; its connection pool is shared by all calls), created on
first use, with botocore's retries off (``total_max_attempts=1``) and our timeouts.

Translation:
- system → ``system`` text blocks; ``tool`` messages → ``user`` turns of ``toolResult`` blocks (``status:
  error`` for error results); neighbouring turns of one role are merged (Converse requires alternation);
  images → ``{"image": {"format", "source": {"bytes"}}}`` (boto3 encodes the bytes).
- tools → ``toolConfig.tools[].toolSpec`` (``inputSchema.json``); ``tool_choice`` "auto" → ``{"auto": {}}``,
  "any" → ``{"any": {}}``, a name → ``{"tool": {"name"}}``; "none" has no Converse equivalent: the tools are
  left out when the messages hold no tool blocks, else ``ConfigurationError`` (Converse needs ``toolConfig``
  with tool history) — before any request.
- ``inferenceConfig``: maxTokens, temperature, topP, stopSequences. ``caching=True`` adds ``cachePoint``
  blocks after the tools, the system text and the last message (models that support prompt caching).
- usage: inputTokens, outputTokens, cacheReadInputTokens, cacheWriteInputTokens.

Errors (``_translate``): ``ClientError`` codes → HTTP statuses (ThrottlingException 429,
ServiceUnavailableException 503, InternalServerException 500, ModelTimeoutException 408,
ModelNotReadyException 429 → transient; ValidationException 400, "Input is too long"/"too many tokens" →
``ContextLengthExceededError``; AccessDeniedException 403; ResourceNotFoundException 404); an error event in a
stream likewise; ``EndpointConnectionError``/``ConnectionClosedError`` and urllib3's errors while a stream is
read (botocore does not wrap them) → ``LLMConnectionError``; read/connect timeouts → ``LLMTimeoutError``; missing
credentials → ``ConfigurationError``; broken event-stream frames → ``LLMProtocolError``. botocore hands a Converse
body that was cut (or is not JSON) over as a partial answer without raising; an answer without ``output`` or
``stopReason`` is therefore taken for a cut connection (``LLMConnectionError``, retried).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import boto3
import botocore.config
import botocore.eventstream
import botocore.exceptions
import botocore.parsers
import urllib3.exceptions

from flowmas.errors import (
    ConfigurationError,
    LLMConnectionError,
    LLMError,
    LLMProtocolError,
    LLMTimeoutError,
)
from flowmas.llm._convert import ConvertedMessages, merged_turns
from flowmas.llm._http import parse_retry_after, status_error
from flowmas.llm.client import BaseClient, Request, request_memo
from flowmas.llm.retry import RetryPolicy
from flowmas.llm.streaming import StreamAssembler
from flowmas.llm.types import (
    ContentBlock,
    ImageBlock,
    Message,
    Response,
    StopReason,
    StreamEvent,
    TextBlock,
    ToolCallBlock,
    ToolResultBlock,
    Usage,
    text_block,
    tool_call_block,
)
from flowmas.llm.types import response as make_response
from flowmas.llm.types import usage as make_usage

STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "model_context_window_exceeded": "context_window_exceeded",
}
CODE_STATUS = {
    "ThrottlingException": 429, "TooManyRequestsException": 429, "ModelNotReadyException": 429,
    "ServiceUnavailableException": 503, "ServiceUnavailable": 503, "InternalServerException": 500,
    "ModelStreamErrorException": 500, "ModelTimeoutException": 408, "ValidationException": 400,
    "AccessDeniedException": 403, "UnrecognizedClientException": 401, "ResourceNotFoundException": 404,
    "ModelErrorException": 424, "ServiceQuotaExceededException": 400,
}
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                  "image/webp": "webp"}
_CACHE_POINT = {"cachePoint": {"type": "default"}}


def _image(block: ImageBlock) -> dict[str, Any]:
    fmt = _IMAGE_FORMATS.get(block.media_type.lower())
    if fmt is None:
        raise ConfigurationError(f"Bedrock accepts png, jpeg, gif and webp images, not {block.media_type!r}.")
    try:
        data = base64.b64decode(block.data, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("An image's data is not valid base64.") from None
    return {"image": {"format": fmt, "source": {"bytes": data}}}


def _block(block: ContentBlock) -> dict[str, Any] | None:
    # exact types first: isinstance on pydantic's (ABC-based) model classes costs more when it fails
    if type(block) is TextBlock:
        return {"text": block.text} if block.text else None
    if type(block) is ToolCallBlock:
        return {"toolUse": {"toolUseId": block.id, "name": block.name, "input": dict(block.arguments)}}
    if type(block) is ToolResultBlock:
        return _result(block)
    if isinstance(block, TextBlock):
        return {"text": block.text} if block.text else None
    if isinstance(block, ImageBlock):
        return _image(block)
    if isinstance(block, ToolCallBlock):
        return {"toolUse": {"toolUseId": block.id, "name": block.name, "input": dict(block.arguments)}}
    if isinstance(block, ToolResultBlock):
        return _result(block)
    return None  # thinking blocks are not sent back


def _result(block: ToolResultBlock) -> dict[str, Any]:
    if isinstance(block.content, str):
        content: list[dict[str, Any]] = [{"text": block.content or "(empty)"}]
    else:
        content = [p for p in (_block(b) for b in block.content) if p is not None] or [{"text": "(empty)"}]
    return {"toolResult": {"toolUseId": block.tool_call_id, "content": content,
                           "status": "error" if block.is_error else "success"}}


def message_param(message: Message) -> dict[str, Any] | None:
    """One message as a Converse message dict, or None when it sends nothing (system text, no blocks)."""
    if message.role == "system":
        return None
    blocks = [p for p in (_block(b) for b in message.content) if p is not None]
    if not blocks:
        return None
    return {"role": "assistant" if message.role == "assistant" else "user", "content": blocks}


def build_messages(
    request: Request, cache: ConvertedMessages[dict[str, Any] | None] | None = None
) -> list[dict[str, Any]]:
    """The request's messages as Converse dicts (roles merged). With ``cache`` each message is converted once and
    its dict is shared between calls: change one by replacing it in the list."""
    return merged_turns(request.messages, request_memo(request), cache, "bedrock.messages", message_param)


def build_params(
    request: Request,
    *,
    caching: bool = False,
    cache: ConvertedMessages[dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The ``converse`` arguments. A tool chain's later turns (``request_memo``) reuse the first turn's parameters
    other than the messages: only messages change."""
    if request.tools and request.tool_choice == "none":
        has_tool_blocks = any(
            isinstance(b, ToolCallBlock | ToolResultBlock) for m in request.messages for b in m.content
        )
        if has_tool_blocks:
            raise ConfigurationError(
                "Bedrock Converse has no tool_choice 'none', and a conversation with tool calls needs its "
                "tools: use tool_choice='auto'."
            )
    memo = request_memo(request)
    entry = memo.get("bedrock") if memo is not None else None
    if entry is not None and entry[0] == caching:
        static: dict[str, Any] = entry[1]
    else:
        static = _static_params(request, caching)
        if memo is not None:
            memo["bedrock"] = (caching, static)
    messages = build_messages(request, cache)
    if caching and messages:  # a copy: message dicts may be shared between calls
        messages[-1] = {**messages[-1], "content": [*messages[-1]["content"], dict(_CACHE_POINT)]}
    params = dict(static)
    params["messages"] = messages
    return params


def _static_params(request: Request, caching: bool) -> dict[str, Any]:
    """Every parameter but ``messages``; shared between the turns of a tool chain, never mutated once built."""
    params: dict[str, Any] = {"modelId": request.model}
    system_text = request.system_text()
    if system_text:
        params["system"] = [{"text": system_text}] + ([dict(_CACHE_POINT)] if caching else [])
    inference: dict[str, Any] = {"maxTokens": request.max_tokens}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    if request.stop:
        inference["stopSequences"] = list(request.stop)
    params["inferenceConfig"] = inference
    if request.tools and request.tool_choice != "none":
        tools: list[dict[str, Any]] = []
        for t in request.tools:
            spec: dict[str, Any] = {"name": t.name, "inputSchema": {"json": t.input_schema}}
            if t.description:
                spec["description"] = t.description
            tools.append({"toolSpec": spec})
        if caching:
            tools.append(dict(_CACHE_POINT))
        choice: dict[str, Any] = (
            {"tool": {"name": request.forced_tool}} if request.forced_tool else {request.tool_choice: {}}
        )
        params["toolConfig"] = {"tools": tools, "toolChoice": choice}
    return params


def _usage(usage: Mapping[str, Any] | None) -> Usage:
    if not usage:
        return Usage()
    return make_usage(int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0),
                      int(usage.get("cacheReadInputTokens") or 0), int(usage.get("cacheWriteInputTokens") or 0))


def _content(blocks: list[Mapping[str, Any]]) -> list[ContentBlock]:
    content: list[ContentBlock] = []
    for block in blocks:
        if "text" in block:
            if block["text"]:
                content.append(text_block(block["text"]))
        elif "toolUse" in block:
            use = block["toolUse"]
            arguments = use.get("input")
            content.append(tool_call_block(
                use["toolUseId"], use["name"], arguments if isinstance(arguments, dict) else {},
                None if isinstance(arguments, dict) else repr(arguments)))
    return content


_DONE = object()


class _Readers:
    """Daemon threads that read the rest of Bedrock streams, reused while idle (a stream then starts no thread:
    starting one blocks the event loop until it runs); an idle thread exits after ``idle_timeout`` seconds.
    Daemon threads, as a blocked read must not hold the interpreter's exit."""

    def __init__(self, idle_timeout: float = 60.0) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # waiting threads with no job handed to them yet (waiting threads = idle + queued jobs)
        self.idle_timeout = idle_timeout

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
        threading.Thread(target=self._work, args=(job,), name="flowmas-bedrock-stream", daemon=True).start()

    def _work(self, job: Callable[[], None]) -> None:
        while True:
            with contextlib.suppress(BaseException):  # a job hands its own errors over
                job()
            del job
            with self._lock:
                self._idle += 1
            while True:
                try:
                    job = self._jobs.get(timeout=self.idle_timeout)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._jobs.empty():
                            self._idle -= 1
                            return


_READERS = _Readers()
_SESSIONS: dict[str | None, Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _shared_session(profile_name: str | None) -> Any:
    """One boto3 session per profile for the process: creating one loads the service models (~0.5 s)."""
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(profile_name)
        if session is None:
            session = _SESSIONS[profile_name] = boto3.session.Session(profile_name=profile_name)
        return session


class BedrockClient(BaseClient[Any]):
    """A Bedrock model through Converse/ConverseStream (boto3 ``bedrock-runtime``)."""

    provider = "bedrock"
    temperature_range = (0.0, 1.0)

    def __init__(
        self,
        model: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile_name: str | None = None,
        session: Any = None,
        caching: bool = False,
        max_tokens: int = 4096,
        retry: RetryPolicy | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        max_pool_connections: int = 50,
    ) -> None:
        super().__init__(model, max_tokens=max_tokens, retry=retry, timeout=timeout, connect_timeout=connect_timeout,
                         secrets=(aws_access_key_id, aws_secret_access_key, aws_session_token))
        self.region = region
        self.endpoint_url = endpoint_url
        self.caching = caching
        self._credentials = {k: v for k, v in (
            ("aws_access_key_id", aws_access_key_id), ("aws_secret_access_key", aws_secret_access_key),
            ("aws_session_token", aws_session_token)) if v is not None}
        self._profile_name = profile_name
        self._session = session
        self._max_pool_connections = max_pool_connections
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._converted: ConvertedMessages[dict[str, Any] | None] = ConvertedMessages(message_param)

    def _new_sdk(self) -> Any:
        config = botocore.config.Config(
            retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=self.connect_timeout,
            read_timeout=self.timeout, max_pool_connections=self._max_pool_connections,
        )
        try:
            session = self._session or _shared_session(self._profile_name)
            options: dict[str, Any] = {"config": config, **self._credentials}
            if self.region is not None:
                options["region_name"] = self.region
            if self.endpoint_url is not None:
                options["endpoint_url"] = self.endpoint_url
            with _SESSIONS_LOCK:  # creating clients from one session is not thread-safe
                return session.client("bedrock-runtime", **options)
        except botocore.exceptions.NoRegionError:
            raise ConfigurationError("BedrockClient needs a region: pass region= or set AWS_DEFAULT_REGION.") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise ConfigurationError(f"BedrockClient: {self._scrub(str(exc))}") from None

    def _sdk(self) -> Any:
        """One boto3 client for every event loop and thread (boto3 clients are thread-safe)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._new_sdk()
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    # --- errors ----------------------------------------------------------------------------------

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, LLMError | ConfigurationError):
            return exc
        if isinstance(exc, botocore.exceptions.ClientError):
            response = exc.response or {}
            error = response.get("Error") or {}
            meta = response.get("ResponseMetadata") or {}
            code = str(error.get("Code") or "") or None
            status = CODE_STATUS.get(code or "") or meta.get("HTTPStatusCode")
            if isinstance(status, int) and status < 400:  # an error event inside a 200 stream
                status = CODE_STATUS.get(code or "", 500)
            return status_error(
                provider=self.provider, model=self.model, status=status, message=str(error.get("Message") or ""),
                code=code, request_id=meta.get("RequestId"),
                retry_after=parse_retry_after(meta.get("HTTPHeaders") or {}), scrub=self._scrub,
            )
        if isinstance(exc, botocore.exceptions.ReadTimeoutError | botocore.exceptions.ConnectTimeoutError
                      | urllib3.exceptions.TimeoutError):
            return LLMTimeoutError(f"{self.provider}: the request to {self.model} timed out.",
                                   provider=self.provider, model=self.model)
        if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionClosedError
                      | botocore.exceptions.HTTPClientError | urllib3.exceptions.HTTPError | ConnectionError):
            # a stream cut midway surfaces as urllib3's ProtocolError while botocore iterates it
            return LLMConnectionError(
                f"{self.provider}: the connection failed or dropped ({type(exc).__name__}: "
                f"{self._scrub(_short(exc))}).", provider=self.provider, model=self.model)
        if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
            return ConfigurationError(
                f"BedrockClient has no AWS credentials ({type(exc).__name__}): pass them, set AWS_* variables "
                "or a profile.")
        if isinstance(exc, botocore.exceptions.BotoCoreError | botocore.eventstream.ParserError
                      | botocore.parsers.ResponseParserError | ValueError | KeyError | TypeError | AttributeError):
            return LLMProtocolError(
                f"{self.provider}: the answer did not follow the Converse API ({type(exc).__name__}: "
                f"{self._scrub(_short(exc))}).", provider=self.provider, model=self.model)
        return exc

    # --- calls -----------------------------------------------------------------------------------

    async def _complete(self, request: Request, attempt: int) -> Response:
        params = build_params(request, caching=self.caching, cache=self._converted)
        started = time.perf_counter()
        try:
            client = self._sdk()
            answer = await asyncio.to_thread(client.converse, **params)
            if "output" not in answer or "stopReason" not in answer:
                # botocore parses a body cut midway into a partial answer without raising
                raise LLMConnectionError(f"{self.provider}: the answer was incomplete (the connection was cut?).",
                                         provider=self.provider, model=self.model)
            message = (answer.get("output") or {}).get("message") or {}
            content = _content(message.get("content") or [])
            raw = answer.get("stopReason")
            usage = _usage(answer.get("usage"))
            request_id = (answer.get("ResponseMetadata") or {}).get("RequestId")
        except Exception as exc:  # noqa: BLE001 - every boto error is translated once, here
            raise self._translate(exc) from None
        return make_response(content, STOP_REASONS.get(raw or "", "other"), raw, usage, request.model, request_id,
                             self.provider, time.perf_counter() - started)

    async def _stream(self, request: Request, attempt: int) -> AsyncGenerator[StreamEvent, None]:
        params = build_params(request, caching=self.caching, cache=self._converted)
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        holder: dict[str, Any] = {}

        def open_stream() -> Any:
            """A worker thread's one hop: the ConverseStream call and its first event (as a bare SDK call)."""
            answer = self._sdk().converse_stream(**params)
            holder["meta"] = answer.get("ResponseMetadata") or {}
            stream = holder["stream"] = answer["stream"]
            if stop.is_set():  # the consumer left while the call was made
                stream.close()
                return _DONE
            events = holder["events"] = iter(stream)
            return next(events, _DONE)

        def pump(events: Any, into: asyncio.Queue[Any]) -> None:
            """The rest of the stream, read ahead by a reader thread and handed to the loop event by event."""
            try:
                for event in events:
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(into.put_nowait, event)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, translated there
                loop.call_soon_threadsafe(into.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(into.put_nowait, _DONE)

        assembler = StreamAssembler(self.provider, request.model)
        usage = Usage()
        raw_stop: str | None = None
        started = False
        exhausted = False
        rest: asyncio.Queue[Any] | None = None  # the rest of the stream, from a reader thread
        try:
            try:
                item = await asyncio.to_thread(open_stream)
            except Exception as exc:  # noqa: BLE001 - every boto error is translated once, here
                raise self._translate(exc) from None
            while True:
                if item is _DONE:
                    exhausted = True
                    break
                if isinstance(item, BaseException):
                    raise self._translate(item) from None
                try:
                    events = self._translate_event(item, assembler, attempt, started)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise self._translate(exc) from None
                for out in events:
                    if isinstance(out, MessageStartMarker):
                        started = True
                        yield assembler.start(id=holder.get("meta", {}).get("RequestId"), attempt=attempt)
                        continue
                    yield out
                if "messageStop" in item:
                    raw_stop = item["messageStop"].get("stopReason")
                if "metadata" in item:
                    usage = _usage(item["metadata"].get("usage"))
                if rest is None:  # after the first event is out: the reader costs it nothing
                    rest = asyncio.Queue()
                    _READERS.run(functools.partial(pump, holder["events"], rest))
                item = await rest.get()
        finally:
            stop.set()
            stream = holder.get("stream")
            if stream is not None and not exhausted:
                with contextlib.suppress(Exception):
                    stream.close()
        if raw_stop is None:
            raise LLMConnectionError(f"{self.provider}: the stream ended before messageStop.",
                                     provider=self.provider, model=self.model)
        if not started:
            yield assembler.start(attempt=attempt)
        for out_event in assembler.finish(stop_reason=STOP_REASONS.get(raw_stop, "other"), raw_stop_reason=raw_stop,
                                          usage=usage):
            yield out_event

    def _translate_event(
        self, event: Mapping[str, Any], assembler: StreamAssembler, attempt: int, started: bool
    ) -> list[Any]:
        out: list[Any] = []
        if "messageStart" in event:
            if not started:
                out.append(MessageStartMarker())
        elif "contentBlockDelta" in event:
            body = event["contentBlockDelta"]
            index = int(body["contentBlockIndex"])
            delta = body.get("delta") or {}
            if not started:
                out.append(MessageStartMarker())
            if "text" in delta:
                text_event = assembler.text(index, delta["text"])
                if text_event is not None:
                    out.append(text_event)
            elif "toolUse" in delta:
                piece = assembler.tool_delta(index, delta["toolUse"].get("input") or "")
                if piece is not None:
                    out.append(piece)
        elif "contentBlockStart" in event:
            body = event["contentBlockStart"]
            use = (body.get("start") or {}).get("toolUse")
            if use is not None:
                assembler.tool_start(int(body["contentBlockIndex"]), use["toolUseId"], use["name"])
        elif "contentBlockStop" in event:
            stopped = assembler.stop_block(int(event["contentBlockStop"]["contentBlockIndex"]))
            if stopped is not None:
                out.append(stopped)
        else:
            for key in ("internalServerException", "modelStreamErrorException", "validationException",
                        "throttlingException", "serviceUnavailableException"):
                if key in event:
                    code = key[0].upper() + key[1:]
                    raise status_error(provider=self.provider, model=self.model, status=CODE_STATUS.get(code, 500),
                                       message=str((event[key] or {}).get("message") or ""), code=code,
                                       scrub=self._scrub)
        return out


class MessageStartMarker:
    """Internal: 'emit MessageStart here' (its id is known only to the stream loop)."""


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"
