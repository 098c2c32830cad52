"""The OPACA container API (opaca-core 0.5) as a FastAPI app over the core's ``Container``.

Routes (the platform ↔ container contract; errors are ``ErrorResponse`` bodies, see ``errors``):

    GET  /info                              AgentContainer (the platform's liveness probe: cached bytes)
    GET  /agents                            [AgentDescription]
    GET  /agents/{agentId}                  AgentDescription, or 200 ``null`` for an unknown agent
    POST /invoke/{action}[/{agentId}]       JSON object of arguments → the result as JSON; ``?timeout`` seconds
                                            (-1 = the container's default, 30 s); ``containerId``, ``forward``
                                            accepted and ignored; 404 / 400 / 500 / 504
    GET  /stream/{stream}[/{agentId}]       application/octet-stream, streamed
    POST /stream/{stream}[/{agentId}]       raw bytes, whatever the Content-Type → empty 200
    POST /send/{agentId}                    Message → empty 200 (404 unknown agent)
    POST /broadcast/{channel}               Message → empty 200
    POST /login                             Login → the container-login token as raw text (401, 501)
    POST /logout                            ContainerLoginToken header → JSON boolean

Why it is shaped like this:

* **The invoke path is lean** (it is what the platform calls most): the body is read raw, in bounded chunks
  (``FLOWMAS_API_MAX_BODY_BYTES``, also when Content-Length lies or is absent: 413), parsed by orjson, looked
  up and validated by the core (O(1)), and the result answered as pre-encoded JSON; no pydantic model, no
  FastAPI parameter parsing, no logging above DEBUG on that path.
* **/info never waits**: it answers bytes serialized once per change of the core's ``info()`` (its object
  identity is the version), so a slow action, a slow Prefect, or a thousand actions cost it nothing.
* **Every answer is the platform's**: FastAPI's ``{"detail": …}`` never leaves the app (validation errors,
  routing's 404/405 and anything unexpected are ``ErrorResponse`` bodies, 5xx with an error id).
* The OpenAPI document describes the routes with the OPACA models (``ErrorResponse`` on every error status),
  so tools (Swagger UI, schemathesis) can use it; with a TOKEN it declares the bearer scheme.
"""

from __future__ import annotations

import copy
import gc
import inspect
import json
import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import Field, ValidationError
from pydantic.json_schema import models_json_schema
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agents_api.auth import TokenCheck, login_token
from agents_api.errors import (
    CatchAll,
    MalformedRequestError,
    PayloadTooLargeError,
    ResponseAbortedError,
    logger,
    new_error_id,
    response_for,
)
from agents_api.platform import PlatformClient
from flowmas.errors import ActionFailedError, ConfigurationError, OpacaError
from flowmas.opaca.models import AgentContainer, AgentDescription, ErrorResponse, Login, Message
from flowmas.text import one_line, shorten

if TYPE_CHECKING:
    from flowmas.opaca.container import Container

__all__ = ["ApiSettings", "OpacaApp", "create_app", "create_routes"]

_DAY = 86_400.0
_MAX_EXAMPLES = 50
_JSON = "application/json"
_OCTETS = "application/octet-stream"


class ApiSettings(BaseSettings):
    """Settings of the container API (``FLOWMAS_API_*`` environment variables), each bounded.

    An absurd value is a ``ConfigurationError`` naming the variable, raised by the constructor.
    """

    model_config = SettingsConfigDict(env_prefix="FLOWMAS_API_", extra="ignore")

    max_body_bytes: int = Field(default=32 * 2**20, gt=0, le=2**40)
    """Largest request body (invoke arguments, a posted stream, a message): larger ones are answered 413."""
    max_timeout_seconds: float = Field(default=_DAY, gt=0, le=30 * _DAY, allow_inf_nan=False)
    """Largest ``?timeout`` an invocation may ask for; more is answered 400 (1e308 is a typo, not a timeout)."""
    token_renewal_seconds: float = Field(default=9 * 3600.0, ge=1, le=30 * _DAY, allow_inf_nan=False)
    """How often the container renews its platform token (``GET {PLATFORM_URL}/token``); the reference: 9 h."""
    notify_debounce_seconds: float = Field(default=0.5, ge=0, le=3600, allow_inf_nan=False)
    """How long after a change of agents/actions the platform is notified; changes meanwhile are coalesced."""
    platform_timeout_seconds: float = Field(default=30.0, gt=0, le=_DAY, allow_inf_nan=False)
    """Timeout of the container's own calls to the platform (notify, token renewal)."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            lines = ["Invalid container API settings (environment):"]
            for error in exc.errors(include_url=False):
                name = "FLOWMAS_API_" + "_".join(str(part) for part in error["loc"]).upper()
                given = error.get("input")
                shown = f" (got {shorten(str(given), 40)!r})" if isinstance(given, str | int | float) else ""
                lines.append(f"  {name}{shown}: {error['msg'].removeprefix('Value error, ')}")
            raise ConfigurationError("\n".join(lines)) from None


class _Descriptions:
    """``/info``, ``/agents`` and each ``/agents/{id}`` as JSON bytes, rebuilt only when ``info()`` changes.

    The core caches ``info()`` and builds a new object when agents or actions change, so the object's identity
    is the version: one ``is`` per request decides. The three encodings are swapped in as one tuple, so a
    request never sees a torn mix of versions.
    """

    def __init__(self, container: Container) -> None:
        self._container = container
        self._source: object = None
        self._encoded: tuple[bytes, bytes, dict[str, bytes]] = (b"", b"", {})

    def current(self) -> tuple[bytes, bytes, dict[str, bytes]]:
        info = self._container.info()
        if info is not self._source:
            wire = info.wire()
            agents = wire.get("agents", [])
            self._encoded = (orjson.dumps(wire), orjson.dumps(agents),
                             {agent["agentId"]: orjson.dumps(agent) for agent in agents})
            self._source = info
        return self._encoded


class OpacaApp(FastAPI):
    """The FastAPI app of one container: ``container``, ``settings`` and ``platform`` are its parts."""

    container: Container
    settings: ApiSettings
    platform: PlatformClient | None
    operations: dict[str, dict[str, dict[str, Any]]]
    """The OpenAPI operations of the OPACA routes, by path and method."""

    _openapi_source: object = None

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document plus the OPACA models as components and, with a TOKEN, the bearer scheme.

        The path parameters ``action``, ``agentId`` and ``stream`` list the container's current names as
        ``examples`` (so the Swagger UI and schemathesis reach real actions); the document is rebuilt when the
        core's ``info()`` changes, like ``/info``.
        """
        info = self.container.info()
        if self.openapi_schema and self._openapi_source is info:
            return self.openapi_schema
        schema = get_openapi(title=self.title, version=self.version, description=self.description,
                             routes=self.routes)  # the routes others add with FastAPI, if any
        paths = schema.setdefault("paths", {})
        for path, operations in copy.deepcopy(self.operations).items():
            paths.setdefault(path, {}).update(operations)
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(_model_schemas())
        if self.container.token:
            components["securitySchemes"] = {"containerToken": {
                "type": "http", "scheme": "bearer",
                "description": "The container's TOKEN (the platform sends it on every call)."}}
            schema["security"] = [{"containerToken": []}]
        _add_examples(schema, info)
        self.openapi_schema, self._openapi_source = schema, info
        return schema


def create_routes(title: str, container: Container) -> OpacaApp:
    """The SDK's ``create_routes(title, container)``: the app of ``container``, titled ``title``."""
    return create_app(container, title=title)


def create_app(
    container: Container,
    *,
    title: str | None = None,
    settings: ApiSettings | None = None,
    platform: PlatformClient | bool | None = True,
) -> OpacaApp:
    """The container API app over ``container``.

    ``platform``: True (default) builds a ``PlatformClient`` from the container's environment (it notifies the
    platform and renews the token while the app's lifespan runs); False or None sends nothing; or pass one.
    """
    settings = settings or ApiSettings()
    if platform is True:
        platform = PlatformClient(
            container, renewal_interval=settings.token_renewal_seconds,
            debounce=settings.notify_debounce_seconds, timeout=settings.platform_timeout_seconds)
    client = platform if isinstance(platform, PlatformClient) else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if client is not None:
            await client.start()
        # Everything imported and built at start-up lives as long as the process: moved out of the garbage
        # collector's generations, it is not rescanned on every collection. Measured (bench/api.py): invoke
        # p99 60-95 ms -> about 10 ms, and up to 1.5x the throughput, on the 2-core machines this runs on.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            try:
                if client is not None:
                    await client.stop()
            finally:
                await container.shutdown()

    image = container.image
    app = OpacaApp(
        title=title or image.name or image.image_name,
        version=image.version or "0.1.0",
        description=image.description or "An OPACA agent container (flowmas).",
        debug=False,
        redirect_slashes=False,  # an API has exact paths: /info/ is a 404, not a redirect a platform won't follow
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    app.container = container
    app.settings = settings
    app.platform = client
    app.operations = {}
    _add_routes(app, container, settings)

    async def handle(request: Request, exc: Exception) -> Response:
        return response_for(exc, where=f"{request.method} {shorten(one_line(request.url.path), 200)}")

    for kind in (OpacaError, StarletteHTTPException, RequestValidationError):
        app.add_exception_handler(kind, handle)
    app.add_middleware(TokenCheck, token=container.token or "")
    app.add_middleware(CatchAll)
    return app


# --------------------------------------------------------------------------------------------------- routes


def _add_routes(app: OpacaApp, container: Container, settings: ApiSettings) -> None:
    descriptions = _Descriptions(container)
    limit = settings.max_body_bytes
    max_timeout = settings.max_timeout_seconds

    async def info(request: Request) -> Response:
        """The container's description (AgentContainer): image, non-confidential arguments, agents."""
        return _raw(descriptions.current()[0])

    async def agents(request: Request) -> Response:
        """The descriptions of all agents of this container."""
        return _raw(descriptions.current()[1])

    async def agent(request: Request) -> Response:
        """The description of one agent; ``null`` (200) if this container has no such agent."""
        return _raw(descriptions.current()[2].get(request.path_params["agentId"], b"null"))

    async def invoke(request: Request) -> Response:
        """Invoke an action (of any agent, or of the agent named) with a JSON object of arguments."""
        params = request.path_params
        scope = request.scope
        timeout = _timeout(request.query_params.get("timeout"), max_timeout) if scope["query_string"] else None
        arguments = _json_object(await _read_body(request, limit), "invoke",
                                 "a JSON object mapping parameter names to values", empty_ok=True)
        result = await container.invoke(params["action"], arguments, agent_id=params.get("agentId"),
                                        timeout=timeout, login_token=login_token(scope["headers"]),
                                        idempotency_key=request.headers.get("idempotency-key"))
        return _raw(_encode_result(result, params["action"]))

    async def get_stream(request: Request) -> Response:
        """Read a GET stream of an agent: bytes, streamed as the agent produces them."""
        params = request.path_params
        opened: Any = container.open_stream(params["stream"], agent_id=params.get("agentId"),
                                            login_token=login_token(request.scope["headers"]))
        if inspect.isawaitable(opened):
            opened = await opened
        chunks = _async_chunks(opened)
        try:  # the first chunk before the answer starts: a stream that fails at once still gets its status
            first: bytes | None = await anext(chunks)
        except StopAsyncIteration:
            first = None
        return StreamingResponse(_streamed(first, chunks, params["stream"]), media_type=_OCTETS)

    async def post_stream(request: Request) -> Response:
        """Send bytes to a POST stream of an agent (the body is taken raw, whatever its Content-Type)."""
        params = request.path_params
        data = await _read_body(request, limit)
        await container.post_stream(params["stream"], data, agent_id=params.get("agentId"),
                                    login_token=login_token(request.scope["headers"]))
        return Response(status_code=200)

    async def send(request: Request) -> Response:
        """Deliver a message to one agent (the answer is empty; 404 for an unknown agent)."""
        message = _message(await _read_body(request, limit))
        await container.send(request.path_params["agentId"], message)
        return Response(status_code=200)

    async def broadcast(request: Request) -> Response:
        """Send a message to every agent subscribed to the channel (an unknown channel is fine)."""
        message = _message(await _read_body(request, limit))
        await container.broadcast(request.path_params["channel"], message)
        return Response(status_code=200)

    async def login(request: Request) -> Response:
        """Log in to the container: the token answered (raw text) goes back in ``ContainerLoginToken``."""
        data = _json_object(await _read_body(request, limit), "login", '{"username": string, "password": string}')
        try:
            credentials = Login.model_validate(data)
        except ValidationError:  # never echo the input: it holds a password
            raise MalformedRequestError(
                'The login body must be {"username": string, "password": string}.') from None
        token = await container.login(credentials)
        return Response(str(token).encode("utf-8"), media_type="text/plain; charset=utf-8")

    async def logout(request: Request) -> Response:
        """Log out the ``ContainerLoginToken`` (quoted or not): ``true`` if that token was logged in."""
        token = login_token(request.scope["headers"])
        done = bool(await container.logout(token)) if token else False
        return _raw(b"true" if done else b"false")

    agent_id = _path_param("agentId", "The agent's id.")
    action = _path_param("action", "The action's name.")
    stream = _path_param("stream", "The stream's name.")
    forwarding = [_query("containerId", {"type": "string"}, "Accepted and ignored (a platform parameter)."),
                  _query("forward", {"type": "boolean"}, "Accepted and ignored (a platform parameter).")]
    timeout = _query("timeout", {"type": "number"},
                     "Seconds to wait for the result; -1 (the default) is the container's default (30 s). "
                     "When it expires the answer is 504.")
    login_header = {"name": "ContainerLoginToken", "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "The token /login answered (quoted or not), for actions that need a login."}
    invoke_body = {"required": False, "content": {_JSON: {"schema": {"type": "object", "additionalProperties": True}}}}
    octets_body = {"required": False, "content": {_OCTETS: {"schema": {"type": "string", "format": "binary"}}}}
    message_body = {"required": True, "content": {_JSON: {"schema": _ref("Message")}}}
    login_body = {"required": True, "content": {_JSON: {"schema": _ref("Login")}}}
    json_of: Callable[[dict[str, Any]], dict[str, Any]] = lambda schema: {_JSON: {"schema": schema}}  # noqa: E731
    empty = {"description": "Done (empty body)."}

    routes: list[tuple[str, str, Callable[[Request], Any], str, dict[str, Any]]] = [
        ("GET", "/info", info, "getInfo", {
            "responses": _responses({"description": "The container.", "content": json_of(_ref("AgentContainer"))})}),
        ("GET", "/agents", agents, "getAgents", {
            "responses": _responses({"description": "The agents.",
                                     "content": json_of({"type": "array", "items": _ref("AgentDescription")})})}),
        ("GET", "/agents/{agentId}", agent, "getAgent", {
            "parameters": [agent_id],
            "responses": _responses({"description": "The agent, or null if unknown.",
                                     "content": json_of({"anyOf": [_ref("AgentDescription"), {"type": "null"}]})})}),
        ("POST", "/invoke/{action}", invoke, "invoke", {
            "parameters": [action, timeout, *forwarding, login_header], "requestBody": invoke_body,
            "responses": _responses({"description": "The action's result.", "content": json_of({})},
                                    400, 404, 413, 500, 504)}),
        ("POST", "/invoke/{action}/{agentId}", invoke, "invokeAgent", {
            "parameters": [action, agent_id, timeout, *forwarding, login_header], "requestBody": invoke_body,
            "responses": _responses({"description": "The action's result.", "content": json_of({})},
                                    400, 404, 413, 500, 504)}),
        ("GET", "/stream/{stream}", get_stream, "getStream", {
            "parameters": [stream, *forwarding, login_header],
            "responses": _responses({"description": "The stream's bytes.",
                                     "content": {_OCTETS: {"schema": {"type": "string", "format": "binary"}}}},
                                    404, 500)}),
        ("GET", "/stream/{stream}/{agentId}", get_stream, "getAgentStream", {
            "parameters": [stream, agent_id, *forwarding, login_header],
            "responses": _responses({"description": "The stream's bytes.",
                                     "content": {_OCTETS: {"schema": {"type": "string", "format": "binary"}}}},
                                    404, 500)}),
        ("POST", "/stream/{stream}", post_stream, "postStream", {
            "parameters": [stream, *forwarding, login_header], "requestBody": octets_body,
            "responses": _responses(empty, 404, 413, 500)}),
        ("POST", "/stream/{stream}/{agentId}", post_stream, "postAgentStream", {
            "parameters": [stream, agent_id, *forwarding, login_header], "requestBody": octets_body,
            "responses": _responses(empty, 404, 413, 500)}),
        ("POST", "/send/{agentId}", send, "send", {
            "parameters": [agent_id, *forwarding], "requestBody": message_body,
            "responses": _responses(empty, 400, 404, 413, 500)}),
        ("POST", "/broadcast/{channel}", broadcast, "broadcast", {
            "parameters": [_path_param("channel", "The channel."), *forwarding], "requestBody": message_body,
            "responses": _responses(empty, 400, 413, 500)}),
        ("POST", "/login", login, "login", {
            "requestBody": login_body,
            "responses": _responses({"description": "The container-login token (raw text).",
                                     "content": {"text/plain": {"schema": {"type": "string"}}}},
                                    400, 401, 413, 501)}),
        ("POST", "/logout", logout, "logout", {
            "parameters": [login_header],
            "responses": _responses({"description": "Whether the token was logged in.",
                                     "content": json_of({"type": "boolean"})})}),
    ]
    for method, path, endpoint, operation_id, extra in routes:
        # Starlette routes, not FastAPI's: no dependency solving per request (the handlers parse what they need);
        # their OpenAPI operations are written out here and added by OpacaApp.openapi().
        app.router.routes.append(Route(path, endpoint, methods=[method], name=operation_id))
        summary = (endpoint.__doc__ or "").split("\n")[0].rstrip(".")
        app.operations.setdefault(path, {})[method.lower()] = {
            "tags": ["OPACA container"], "summary": summary, "description": endpoint.__doc__,
            "operationId": operation_id, **extra}


# --------------------------------------------------------------------------------------------------- helpers


class _Raw(Response):
    """A JSON answer whose bytes are ready: no rendering, two headers."""

    media_type = _JSON


def _raw(body: bytes) -> Response:
    return _Raw(body)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, read in chunks and refused (413) as soon as it passes ``limit`` bytes.

    A Content-Length above the limit is refused before reading anything; a body without one (chunked), or
    with one that understates it, is counted as it arrives.
    """
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise _too_large(limit)
            break
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to answer; not the container's error either
        raise MalformedRequestError("The client disconnected before it had sent the whole body.") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is larger than {limit} bytes (FLOWMAS_API_MAX_BODY_BYTES).")


def _json_object(body: bytes, what: str, expected: str, *, empty_ok: bool = False) -> dict[str, Any]:
    """``body`` parsed as a JSON object, else a 400 that says what was expected (never echoing the body)."""
    if empty_ok and not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequestError(f"The {what} body is not valid JSON ({exc}); expected {expected}.") from None
    if not isinstance(value, dict):
        raise MalformedRequestError(f"The {what} body must be {expected}, not a JSON {_json_kind(value)}.")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "null"


def _message(body: bytes) -> Message:
    data = _json_object(body, "message", '{"payload": any, "replyTo": string (optional)}')
    try:
        return Message.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                             for e in exc.errors(include_url=False, include_input=False))
        raise MalformedRequestError(f"The message body is not a Message ({problems}).") from None


def _timeout(raw: str | None, maximum: float) -> float | None:
    """``?timeout`` in seconds: None for the default (absent, empty or -1), else a positive finite number."""
    if raw is None or raw.strip() in ("", "-1"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (value <= 0 and value != -1):
        raise MalformedRequestError(
            f"timeout={shorten(one_line(raw), 40)!r} is not a number of seconds: give a positive number, "
            "or -1 for the container's default.")
    if value == -1:
        return None
    if value > maximum:
        raise MalformedRequestError(
            f"timeout={shorten(one_line(raw), 40)!r} is longer than the container allows ({maximum:g} s, "
            "FLOWMAS_API_MAX_TIMEOUT_SECONDS).")
    return value


def _encode_result(result: Any, action: str) -> bytes:
    """An action's result as JSON: orjson for the usual, pydantic's encoder for models, stdlib for big ints."""
    try:
        return orjson.dumps(result, default=_jsonable)
    except (TypeError, orjson.JSONEncodeError):
        try:
            return json.dumps(to_jsonable_python(result, by_alias=True), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ActionFailedError(
                f"The action {shorten(one_line(action), 80)!r} returned a {type(result).__name__} that cannot be "
                "sent as JSON.") from exc


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, by_alias=True)


def _async_chunks(opened: Any) -> AsyncIterator[bytes]:
    """Whatever the core's ``open_stream`` gave (async or sync iterator, bytes, str) as an async byte iterator."""
    if isinstance(opened, bytes | bytearray | str):
        return _single(opened)
    if hasattr(opened, "__aiter__"):
        return aiter(opened)
    if isinstance(opened, Iterable):
        return aiter(iterate_in_threadpool(iter(opened)))
    raise TypeError(f"open_stream returned a {type(opened).__name__}, not bytes or an iterator of bytes")


async def _single(value: bytes | bytearray | str) -> AsyncIterator[bytes]:
    yield value.encode() if isinstance(value, str) else bytes(value)


async def _streamed(first: bytes | None, chunks: AsyncIterator[bytes], name: str) -> AsyncIterator[bytes]:
    """The stream's chunks as bytes; a failure halfway is logged with an error id and breaks the connection."""
    try:
        if first is None:
            return
        yield _bytes(first)
        async for chunk in chunks:
            yield _bytes(chunk)
    except Exception as exc:
        error_id = new_error_id()
        logger.error("The stream %r failed after it had started (error id %s)", shorten(one_line(name), 80),
                     error_id, exc_info=exc)
        raise ResponseAbortedError(f"The stream failed halfway (error id {error_id}).") from exc
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


def _bytes(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode()
    return bytes(chunk)


# --------------------------------------------------------------------------------------------------- OpenAPI


def _ref(model: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model}"}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    """200 as given, each listed error status and ``default`` (403, 405, … and anything else) as ErrorResponse."""
    error = {_JSON: {"schema": _ref("ErrorResponse")}}
    answers: dict[str, Any] = {"200": ok}
    for status in errors:
        answers[str(status)] = {"description": HTTPStatus(status).phrase, "content": error}
    answers["default"] = {"description": "An error (ErrorResponse).", "content": error}
    return answers


def _add_examples(schema: dict[str, Any], info: AgentContainer) -> None:
    """The container's agent ids, action and stream names as ``examples`` of the path parameters."""
    names = {
        "agentId": [agent.agent_id for agent in info.agents],
        "action": sorted({action.name for agent in info.agents for action in agent.actions}),
        "stream": sorted({stream.name for agent in info.agents for stream in agent.streams}),
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", ()):
                known = names.get(parameter.get("name")) if parameter.get("in") == "path" else None
                if known:
                    parameter["schema"]["examples"] = known[:_MAX_EXAMPLES]


def _model_schemas() -> dict[str, Any]:
    """JSON schemas of the OPACA models, camelCase as on the wire, for ``components/schemas``."""
    _, top = models_json_schema(
        [(AgentContainer, "serialization"), (AgentDescription, "serialization"), (ErrorResponse, "serialization"),
         (Message, "validation"), (Login, "validation")],
        ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas
