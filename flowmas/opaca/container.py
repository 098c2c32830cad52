"""``Container``: the OPACA agent container without HTTP (``agents_api`` puts the routes on it).

``Container(image, *, environ=None, default_timeout=None, max_threads=32)``: ``image`` is an
``AgentContainerImage``, a dict, or the path of a ``container.json`` (the SDK's ``Container(path)``). The
environment handshake (anchor §3) is read from ``environ`` (default ``os.environ``):

- ``CONTAINER_ID`` (a uuid4 when unset or empty), ``PLATFORM_URL`` (``None`` when unset), ``TOKEN`` (``""``),
  ``OWNER`` (``None``), ``PORT_MAPPING`` (``"8082:8001,9000:8002"`` -> ``port_mapping`` ``{8082: 8001, ...}``);
- one variable per image parameter: the value, else its ``defaultValue`` when it is not required. A required
  one that is missing, or a value that does not fit its type (integer, number, boolean), is a
  ``ContainerConfigurationError`` naming the variables. ``parameters`` holds every value (confidential ones
  too, for the agents); ``info().arguments`` only the non-confidential ones; no value is ever logged.

Agents: ``add_agent`` (idempotent for the same object; another agent with a taken id is an error),
``remove_agent`` (``UnknownAgentError``), ``agent(id)`` (``UnknownAgentError``), ``agents()`` in registration
order. ``info()`` is built once and rebuilt only after a change; its ``image.definitions`` merges the image's
own definitions with those of every action. Two actions defining one type name differently is a
``ContainerConfigurationError`` when the second is added (definitions share one namespace on the platform).
``on_change(listener)``: called (synchronously, after the change) whenever agents, actions or streams are
added or removed: the face tells the platform (``POST /containers/notify``).

Lookups are O(1): an action name maps to the first registered agent that has it (what the SDK and the
platform pick when no agent is named), ``(agent_id, name)`` goes through the agent's own dict.

``invoke(action, arguments, *, agent_id=None, timeout=None, login_token=None, idempotency_key=None)``, in this
order (the callback sees the effective timeout and the client's ``Idempotency-Key`` through
``current_invocation()``):

1. lookup (``UnknownAgentError``, ``UnknownActionError``);
2. an ``auth`` action needs ``login_token`` to be a token of a current login (quoted or not, as the
   ``ContainerLoginToken`` header comes): else ``ActionFailedError`` with ``status_code`` **401** (the SDK's
   "Missing credentials" answer; a dedicated error would have needed a change of ``errors.py``);
3. validation with the platform's rules, then conversion (``InvalidArgumentsError``, see ``validation``);
4. the call: async callbacks on the loop, sync ones on this container's action threads (``max_threads``, a
   context copy each), so a sync action never blocks ``/info``;
5. ``timeout`` seconds (``None``, zero, negative or not finite -> ``default_timeout``, 30 s as in the
   reference container): on expiry ``ActionTimeoutError`` at once; an async action is cancelled, a sync one
   is left to finish in its thread (a thread cannot be stopped);
6. an exception -> ``ActionFailedError`` (``__cause__`` = the exception), ``status_code`` = the exception's
   own integer ``status_code`` when it is an HTTP error status (FastAPI's or Starlette's ``HTTPException``,
   message = its ``detail``), else 500 with the exception's type and message, cut short. ``ActionFailedError``,
   ``ActionTimeoutError`` and ``InvalidArgumentsError`` raised by an action pass through unchanged;
7. the result is returned in its JSON form (``ActionSpec.to_json``: pydantic models as dicts, datetimes as
   ISO strings, bytes as base64); one JSON cannot carry is an ``ActionFailedError``.

Streams: ``await open_stream(name, ...)`` returns an async iterator of ``bytes`` whose first chunk is already
produced, so a failing or unauthorised stream raises before a response starts (the SDK broke the connection
instead). ``post_stream(name, data, ...)`` hands the bytes to a POST stream. Unknown names (after asking each
agent's ``dynamic_stream``) and a stream of the other mode are ``UnknownStreamError``.

Messages: ``send(agent_id, message)`` awaits the agent's ``receive_message`` (``UnknownAgentError``; its
failure is an ``ActionFailedError``); ``broadcast(channel, message)`` reaches every subscribed agent
concurrently, logs failures and raises nothing (an unknown channel is fine). ``on_message(hook)``: an async
``hook(kind, name, message)`` also gets every message, ``("agent", agent_id, m)`` for a send to a known agent
(before that agent does) and ``("channel", channel, m)`` for every broadcast; a hook's failure is logged,
never the sender's answer (the Graphs agent copies messages into the cache's mailboxes this way).

Logins: ``login(Login)`` asks every agent whose class overrides ``handle_login``, concurrently, with a fresh
uuid4 token. One that accepts is enough: the token is returned. None can -> ``LoginNotSupportedError`` (501);
all refuse -> ``LoginFailedError`` (401); an agent that crashed (and none accepted) -> ``ActionFailedError``
(500). Credentials are never logged. ``logout(token)`` -> whether it was logged in; the agents that accepted
it get ``handle_logout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flowmas.errors import (
    ActionFailedError,
    ActionTimeoutError,
    ContainerConfigurationError,
    InvalidArgumentsError,
    LoginFailedError,
    LoginNotSupportedError,
    UnknownActionError,
    UnknownAgentError,
    UnknownStreamError,
    describe_os_error,
)
from flowmas.opaca.agent import LOGIN_TOKEN, AbstractAgent, ActionSpec, StreamSpec, _is_async, supports_login
from flowmas.opaca.models import AgentContainer, AgentContainerImage, Login, LoginMsg, Message, StreamMode
from flowmas.opaca.threads import ActionThreads
from flowmas.opaca.validation import SchemaValidators, check_schema, show
from flowmas.text import one_line, shorten

log = logging.getLogger("flowmas.opaca")

_PASS_THROUGH = (ActionFailedError, ActionTimeoutError, InvalidArgumentsError)
"""Errors an action may raise to answer in the container's own terms (a flow run's timeout, its own 400)."""


def load_image(source: AgentContainerImage | Mapping[str, Any] | str | Path) -> AgentContainerImage:
    """The image from a model, a dict or a ``container.json`` path; anything wrong is a configuration error."""
    where = "the image description"
    if isinstance(source, AgentContainerImage):
        data: Any = source.model_dump(by_alias=True)
    elif isinstance(source, Mapping):
        data = dict(source)
    elif isinstance(source, str | Path):
        path = Path(source)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ContainerConfigurationError(
                f"Cannot read the container image description {path}: {describe_os_error(exc)}") from None
        except UnicodeDecodeError:
            raise ContainerConfigurationError(f"{path} is not UTF-8 text; container.json must be JSON.") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContainerConfigurationError(
                f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    else:
        raise ContainerConfigurationError(
            f"A container image is an AgentContainerImage, a dict or the path of container.json, not "
            f"{type(source).__name__}.")
    if not isinstance(data, Mapping):
        raise ContainerConfigurationError(f"{where} must be a JSON object with at least 'imageName'.")
    try:
        image = AgentContainerImage.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(top)'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[:5])
        raise ContainerConfigurationError(f"{where} is not a valid OPACA image description: {problems}.") from None
    bad = [problem for name, schema in image.definitions.items() if (problem := check_schema(name, schema))]
    if bad:
        raise ContainerConfigurationError(f"{where}: {'; '.join(bad[:3])}.")
    return image


def _port_mapping(text: str) -> dict[int, int]:
    mapping: dict[int, int] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        inner, _, outer = entry.partition(":")
        try:
            mapping[int(inner)] = int(outer)
        except ValueError:
            raise ContainerConfigurationError(
                f"PORT_MAPPING entry {show(entry)} is not 'containerPort:hostPort' "
                "(e.g. PORT_MAPPING=8082:8001,9000:8002).") from None
    return mapping


def _value_problem(type_name: str, value: str) -> str | None:
    kind = type_name.lower()
    if kind == "integer":
        try:
            int(value)
        except ValueError:
            return "is not an integer"
    elif kind == "number":
        try:
            if not math.isfinite(float(value)):
                return "is not a finite number"
        except ValueError:
            return "is not a number"
    elif kind == "boolean" and value.strip().lower() not in ("true", "false"):
        return "is not true or false"
    return None


def _normalise_token(token: str | None) -> str | None:
    """A ``ContainerLoginToken`` as sent: the SDK quoted it (``"uuid"``), the Java reference did not."""
    if not isinstance(token, str):
        return None
    token = token.strip().strip('"').strip()
    return token or None


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieves the outcome of an abandoned (timed-out) call, so asyncio does not warn about it."""
    if not future.cancelled() and future.exception() is not None:
        log.debug("A timed-out call ended later with %s.", type(future.exception()).__name__)


def _as_bytes(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(f"a stream chunk must be bytes or str, not {type(chunk).__name__}")



@dataclass(frozen=True)
class Invocation:
    """The parts of a call an action's callback cannot get as arguments (``current_invocation()``)."""

    timeout: float
    """Seconds the caller allows, the container's default applied."""
    idempotency_key: str | None
    """The client's ``Idempotency-Key`` header: a retried request must not start the work twice."""
    started: float
    """``time.monotonic()`` when the call began."""


_invocation: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar("flowmas_opaca_invocation",
                                                                               default=None)


def current_invocation() -> Invocation | None:
    """The call the running action answers (None outside ``Container.invoke``); sync actions see it too."""
    return _invocation.get()


@contextlib.contextmanager
def invocation(timeout: float, idempotency_key: str | None = None) -> Iterator[Invocation]:
    """Make ``current_invocation()`` answer this for the block: for callers of a callback without a container."""
    value = Invocation(timeout, idempotency_key, time.monotonic())
    token = _invocation.set(value)
    try:
        yield value
    finally:
        _invocation.reset(token)


class Container:
    """The agents of one OPACA container and everything the container API does with them (no HTTP)."""

    default_timeout: float = 30.0
    """Seconds an invocation may take when the caller gives no (or no usable) ``timeout``."""

    def __init__(self, image: AgentContainerImage | Mapping[str, Any] | str | Path, *,
                 environ: Mapping[str, str] | None = None, default_timeout: float | None = None,
                 max_threads: int = 32) -> None:
        env: Mapping[str, str] = os.environ if environ is None else environ
        self.image: AgentContainerImage = load_image(image)
        self.container_id: str = env.get("CONTAINER_ID") or str(uuid.uuid4())
        self.platform_url: str | None = env.get("PLATFORM_URL") or None
        self.token: str = env.get("TOKEN") or ""
        self.owner: str | None = env.get("OWNER") or None
        self.port_mapping: dict[int, int] = _port_mapping(env.get("PORT_MAPPING") or "")
        self.parameters: dict[str, str] = self._read_parameters(env)
        self.running_since: datetime = datetime.now(UTC)
        if default_timeout is not None:
            if not math.isfinite(default_timeout) or default_timeout <= 0:
                raise ContainerConfigurationError(f"default_timeout must be a positive number of seconds, "
                                                  f"not {default_timeout!r}.")
            self.default_timeout = float(default_timeout)
        self._max_threads = max(1, int(max_threads))
        self._executor: ActionThreads | None = None
        self._lock = threading.RLock()
        self._agents: dict[str, AbstractAgent] = {}
        self._action_index: dict[str, AbstractAgent] = {}
        self._stream_index: dict[str, AbstractAgent] = {}
        self._validators = SchemaValidators(dict(self.image.definitions))
        self._info: AgentContainer | None = None
        self._info_wire: dict[str, Any] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._message_hooks: list[Callable[[str, str, Message], Awaitable[None]]] = []
        self._sessions: dict[str, tuple[str, ...]] = {}
        confidential = sum(1 for p in self.image.parameters if p.confidential and p.name in self.parameters)
        log.info("OPACA container %s of image %s: %d image parameter(s) set (%d confidential, values not shown).",
                 self.container_id, shorten(one_line(self.image.image_name), 80), len(self.parameters), confidential)

    def __repr__(self) -> str:
        return f"<Container {self.container_id} image={self.image.image_name!r} agents={len(self._agents)}>"

    def _read_parameters(self, env: Mapping[str, str]) -> dict[str, str]:
        values: dict[str, str] = {}
        missing: list[str] = []
        wrong: list[str] = []
        for parameter in self.image.parameters:
            value = env.get(parameter.name)
            if value is None:
                if parameter.required:
                    missing.append(parameter.name)
                    continue
                if parameter.default_value is None:
                    continue
                value = parameter.default_value
            problem = _value_problem(parameter.type, value)
            if problem is not None:
                shown = "(confidential value)" if parameter.confidential else show(value, 30)
                wrong.append(f"{parameter.name}={shown} {problem} ({parameter.type})")
                continue
            values[parameter.name] = value
        if missing or wrong:
            parts = []
            if missing:
                parts.append(f"required image parameter{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)} not set: set the environment variable"
                             f"{'s' if len(missing) > 1 else ''} (the platform passes the container's arguments)")
            if wrong:
                parts.append("; ".join(wrong))
            raise ContainerConfigurationError(f"Container image {self.image.image_name!r}: {'; '.join(parts)}.")
        return values

    # --- agents --------------------------------------------------------------------------------------------

    def holds(self, agent: AbstractAgent) -> bool:
        """True when ``agent`` itself (not another of the same id) is registered here."""
        return self._agents.get(agent.agent_id) is agent

    def add_agent(self, agent: AbstractAgent) -> None:
        """Registers ``agent`` (again: nothing happens); its actions join ``/info`` and the index."""
        with self._lock:
            existing = self._agents.get(agent.agent_id)
            if existing is agent:
                return
            if existing is not None:
                raise ContainerConfigurationError(
                    f"Agent id {agent.agent_id!r} is taken by another agent ({type(existing).__name__}); agent ids "
                    "must be unique.")
            if agent.container is not None and agent.container is not self and agent.container.holds(agent):
                raise ContainerConfigurationError(f"Agent {agent.agent_id} belongs to another container; remove it "
                                                  "there first.")
            self._check_definitions(agent, list(agent.actions.values()))
            agent.container = self
            self._agents[agent.agent_id] = agent
            self._rebuild()
        self._fire()

    def remove_agent(self, agent_id: str) -> None:
        with self._lock:
            agent = self._agents.pop(agent_id, None)
            if agent is None:
                raise UnknownAgentError(f"No agent {show(agent_id)} in this container.")
            agent.container = None
            self._rebuild()
        self._fire()

    def agent(self, agent_id: str) -> AbstractAgent:
        agent = self._agents.get(agent_id)
        if agent is None:
            raise UnknownAgentError(f"No agent {show(agent_id)} in this container.")
        return agent

    def agents(self) -> list[AbstractAgent]:
        return list(self._agents.values())

    get_agent = agent  # the SDK's names

    def has_agent(self, agent_id: str) -> bool:
        return agent_id in self._agents

    def subscribe_channel(self, channel: str, agent: AbstractAgent) -> None:
        """The SDK's spelling of ``agent.subscribe_channel(channel)``."""
        agent.subscribe_channel(channel)

    def unsubscribe_channel(self, channel: str, agent: AbstractAgent) -> None:
        agent.unsubscribe_channel(channel)

    # --- changes -------------------------------------------------------------------------------------------

    def _commit(self, agent: AbstractAgent, change: Callable[[], Any], spec: ActionSpec | None = None) -> None:
        """Applies an agent's change of its actions or streams (checked, indexed, announced)."""
        with self._lock:
            if spec is not None:
                self._check_definitions(agent, [spec])
            change()
            self._rebuild()
        self._fire()

    def _check_definitions(self, agent: AbstractAgent, specs: list[ActionSpec]) -> None:
        """Refuses a type name that a new action defines differently from the image or another action."""
        known: dict[str, tuple[Any, str]] = {name: (schema, "container.json")
                                             for name, schema in self.image.definitions.items()}
        for other in self._agents.values():
            for existing in other.actions.values():
                if other is agent and any(existing.name == spec.name for spec in specs):
                    continue  # replaced by the new one
                for name, schema in existing.definitions.items():
                    known.setdefault(name, (schema, f"action {existing.name!r} of agent {other.agent_id}"))
        for spec in specs:
            for name, schema in spec.definitions.items():
                seen = known.get(name)
                if seen is not None and seen[0] != schema:
                    raise ContainerConfigurationError(
                        f"Action {spec.name!r} of agent {agent.agent_id} defines the type {name!r} differently "
                        f"from {seen[1]}: rename one of the two types (OPACA definitions are shared by the whole "
                        "container).")
                known.setdefault(name, (schema, f"action {spec.name!r} of agent {agent.agent_id}"))

    def _rebuild(self) -> None:
        actions: dict[str, AbstractAgent] = {}
        streams: dict[str, AbstractAgent] = {}
        definitions: dict[str, Any] = dict(self.image.definitions)
        for agent in self._agents.values():
            for name, spec in agent.actions.items():
                actions.setdefault(name, agent)
                for type_name, schema in spec.definitions.items():
                    definitions.setdefault(type_name, schema)
            for name in agent.streams:
                streams.setdefault(name, agent)
        self._action_index, self._stream_index = actions, streams
        self._validators.update(definitions)
        self._info = None
        self._info_wire = None

    def on_change(self, listener: Callable[[], None]) -> None:
        """Calls ``listener()`` after every change of agents, actions or streams (its errors are logged).

        It runs in the thread that made the change: a listener that touches an event loop from a sync action's
        thread must use ``loop.call_soon_threadsafe``.
        """
        self._listeners.append(listener)

    def _fire(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("A change listener of container %s failed.", self.container_id)

    # --- description ---------------------------------------------------------------------------------------

    def info(self) -> AgentContainer:
        """What ``GET /info`` answers; built once per change (treat it as read-only)."""
        info = self._info
        if info is None:
            with self._lock:
                if self._info is None:
                    image = self.image.model_copy(update={"definitions": dict(self._validators.definitions)})
                    arguments = {p.name: self.parameters[p.name] for p in self.image.parameters
                                 if not p.confidential and p.name in self.parameters}
                    self._info = AgentContainer(
                        container_id=self.container_id, image=image, arguments=arguments,
                        agents=[agent.get_description() for agent in self._agents.values()],
                        owner=self.owner, running_since=self.running_since)
                info = self._info
        return info

    def info_wire(self) -> dict[str, Any]:
        """``info().wire()``, cached alike: the JSON the liveness probe gets."""
        wire = self._info_wire
        if wire is None:
            wire = self._info_wire = self.info().wire()
        return wire

    def get_description(self) -> AgentContainer:
        """The SDK's name of ``info()``."""
        return self.info()

    # --- actions -------------------------------------------------------------------------------------------

    def find_action(self, action: str, agent_id: str | None = None) -> tuple[AbstractAgent, ActionSpec]:
        """The agent and action an invocation reaches (``UnknownAgentError``, ``UnknownActionError``)."""
        if agent_id is not None:
            agent = self.agent(agent_id)
            spec = agent.get_action(action)
            if spec is None:
                raise UnknownActionError(f"Agent {show(agent_id)} has no action {show(action)}.")
            return agent, spec
        agent_or_none = self._action_index.get(action)
        spec_or_none = agent_or_none.get_action(action) if agent_or_none is not None else None
        if agent_or_none is None or spec_or_none is None:
            raise UnknownActionError(f"No agent of this container has an action {show(action)}.")
        return agent_or_none, spec_or_none

    async def invoke(self, action: str, arguments: Any, *, agent_id: str | None = None,
                     timeout: float | None = None, login_token: str | None = None,
                     idempotency_key: str | None = None) -> Any:
        """Runs an action and returns its result in JSON form (see the module docstring for each step).

        The callback sees the call's effective timeout and the client's ``Idempotency-Key`` through
        ``current_invocation()`` (an action that starts work outliving the call, a flow run, needs both).
        """
        agent, spec = self.find_action(action, agent_id)
        what = f"Action {spec.name!r} of agent {agent.agent_id}"  # registered names: nothing hostile to show
        token_kwargs = self._authorise(spec.auth, spec.takes_login_token, login_token, what)
        kwargs = spec.prepare(arguments, self._validators)
        kwargs.update(token_kwargs)
        call = _invocation.set(Invocation(self._timeout(timeout), idempotency_key or None, time.monotonic()))
        try:
            result = await self._run(spec.callback, (), kwargs, is_async=spec.is_async, timeout=timeout,
                                     what=what)
        finally:
            _invocation.reset(call)
        try:
            return spec.to_json(result)
        except Exception as exc:
            error = ActionFailedError(f"{what} returned {type(result).__name__}, which cannot be sent as JSON.")
            raise error from exc

    def _authorise(self, auth: bool, takes_token: bool, login_token: str | None, what: str) -> dict[str, Any]:
        if not auth:
            return {}
        token = _normalise_token(login_token)
        if token is None or token not in self._sessions:
            raise ActionFailedError(
                f"{what} needs a container login: log in (POST /login), then send the token in the "
                "ContainerLoginToken header.", status_code=401)
        return {LOGIN_TOKEN: token} if takes_token else {}

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None or isinstance(timeout, bool) or not isinstance(timeout, int | float):
            return self.default_timeout
        if not math.isfinite(timeout) or timeout <= 0:
            return self.default_timeout
        return float(timeout)

    def _pool(self) -> ActionThreads:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ActionThreads(self._max_threads, name="opaca-action")
        return self._executor

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Every agent's ``on_shutdown`` (concurrently, each within ``timeout`` seconds; failures logged), then
        ``close()``. The app calls it when its lifespan ends."""
        agents = self.agents()
        outcomes = await asyncio.gather(
            *(self._run(agent.on_shutdown, (), {}, is_async=_is_async(agent.on_shutdown), timeout=timeout,
                        what=f"Agent {agent.agent_id} shutting down") for agent in agents),
            return_exceptions=True)
        for agent, outcome in zip(agents, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                log.warning("Agent %s did not shut down cleanly: %s", agent.agent_id,
                            shorten(one_line(str(outcome)), 300))
        self.close()

    def close(self) -> None:
        """Lets go of the action threads (each finishes the calls already handed to it, then ends)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.close()

    async def _run(self, callback: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                   is_async: bool, timeout: float | None, what: str, secret: bool = False) -> Any:
        """Calls ``callback`` (async on the loop, sync in the pool) within the timeout, translating failures.

        ``secret``: the arguments hold credentials, so a failure's text (which may quote them) is not logged.
        """
        seconds = self._timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if not is_async:
            result = await self._run_in_thread(
                functools.partial(contextvars.copy_context().run, callback, *args, **kwargs),
                seconds, what, secret)
            if inspect.isawaitable(result):  # a sync callable that handed back a coroutine
                return await self._run(lambda: result, (), {}, is_async=True,
                                       timeout=max(deadline - loop.time(), 1e-3), what=what, secret=secret)
            return result
        try:
            produced = callback(*args, **kwargs)
        except Exception as exc:
            raise self._failed(what, exc, secret=secret) from exc
        if not inspect.isawaitable(produced):
            return produced  # an async generator, or a callable that was not async after all
        future = asyncio.ensure_future(produced)
        try:
            done, _ = await asyncio.wait({future}, timeout=seconds)
        except asyncio.CancelledError:
            future.cancel()
            raise
        if not done:
            future.cancel()  # the coroutine is cancelled; the answer does not wait for it to unwind
            future.add_done_callback(_consume)
            raise self._timed_out(what, seconds)
        if future.cancelled():
            raise ActionFailedError(f"{what} was cancelled.")
        error = future.exception()
        if error is not None:
            translated = self._translated(what, error, secret)
            if translated is error:
                raise error
            raise translated from error
        return future.result()

    async def _run_in_thread(self, call: Callable[[], Any], seconds: float, what: str, secret: bool) -> Any:
        """``call()`` on one of the action threads, within ``seconds``: a plain future and one timer, no
        ``asyncio.wait`` (a sync action's answer pays only the hand-over to the thread and back)."""
        future = self._pool().submit(call)
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            future.cancel()  # the thread cannot be stopped: it finishes and its result is dropped

        timer = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            return await future
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not expired or (task is not None and task.cancelling()):
                future.cancel()
                raise
            raise self._timed_out(what, seconds) from None
        except BaseException as error:
            translated = self._translated(what, error, secret)
            if translated is error:
                raise
            raise translated from error
        finally:
            timer.cancel()

    def _timed_out(self, what: str, seconds: float) -> ActionTimeoutError:
        log.warning("%s did not finish within %g s.", what, seconds)
        return ActionTimeoutError(f"{what} did not finish within {seconds:g} s (the timeout).")

    def _translated(self, what: str, error: BaseException, secret: bool) -> BaseException:
        """What a callback's exception is raised as: itself when it passes through, else ``ActionFailedError``."""
        if isinstance(error, _PASS_THROUGH) or not isinstance(error, Exception):
            return error
        return self._failed(what, error, secret=secret)

    def _failed(self, what: str, exc: BaseException, *, secret: bool = False) -> ActionFailedError:
        status = getattr(exc, "status_code", None)
        if secret:
            return ActionFailedError(f"{what} failed: {type(exc).__name__}", status_code=status
                                     if isinstance(status, int) and 400 <= status <= 599 else 500)
        if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
            detail = getattr(exc, "detail", None)
            text = shorten(one_line(str(detail if detail is not None else exc)), 500)
            log.info("%s answered HTTP %d.", what, status)
            return ActionFailedError(text or f"{what} failed with HTTP status {status}.", status_code=status)
        log.debug("%s failed.", what, exc_info=exc)  # the face logs it once, with the error id it answers
        text = shorten(one_line(str(exc)), 300)
        return ActionFailedError(f"{what} failed: {type(exc).__name__}{': ' + text if text else ''}")

    # --- streams -------------------------------------------------------------------------------------------

    def find_stream(self, name: str, agent_id: str | None = None) -> tuple[AbstractAgent, StreamSpec]:
        """The agent and stream a call reaches; declared streams first, then each agent's ``dynamic_stream``."""
        if agent_id is not None:
            agent = self.agent(agent_id)
            spec = agent.get_stream(name) or agent.dynamic_stream(name)
            if spec is None:
                raise UnknownStreamError(f"Agent {show(agent_id)} has no stream {show(name)}.")
            return agent, spec
        owner = self._stream_index.get(name)
        declared = owner.get_stream(name) if owner is not None else None
        if owner is not None and declared is not None:
            return owner, declared
        for agent in list(self._agents.values()):
            dynamic = agent.dynamic_stream(name)
            if dynamic is not None:
                return agent, dynamic
        raise UnknownStreamError(f"No agent of this container has a stream {show(name)}.")

    async def open_stream(self, name: str, *, agent_id: str | None = None,
                          login_token: str | None = None) -> AsyncIterator[bytes]:
        """A GET stream's bytes; the first chunk is produced before this returns (errors come first)."""
        agent, spec = self.find_stream(name, agent_id)
        what = f"Stream {show(spec.name)} of agent {agent.agent_id}"
        if spec.mode is not StreamMode.GET:
            raise UnknownStreamError(f"{what} is a POST stream: send it data with POST.")
        kwargs = self._authorise(spec.auth, spec.takes_login_token, login_token, what)
        produced = await self._run(spec.callback, (), kwargs, is_async=_is_async(spec.callback), timeout=None,
                                   what=what)
        chunks = self._chunks(produced).__aiter__()
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            return _empty()
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            raise self._failed(what, exc) from exc
        return self._rest(first, chunks, what)

    async def _rest(self, first: bytes, chunks: AsyncIterator[bytes], what: str) -> AsyncIterator[bytes]:
        yield first
        try:
            async for chunk in chunks:
                yield chunk
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            raise self._failed(what, exc) from exc

    async def _chunks(self, produced: Any) -> AsyncIterator[bytes]:
        if produced is None:
            return
        if isinstance(produced, bytes | bytearray | memoryview | str):
            yield _as_bytes(produced)
            return
        if hasattr(produced, "__aiter__"):
            async for chunk in produced:
                yield _as_bytes(chunk)
            return
        if isinstance(produced, list | tuple):
            for chunk in produced:
                yield _as_bytes(chunk)
            return
        if isinstance(produced, Iterable):
            iterator: Iterator[Any] = iter(produced)
            end = object()
            while (chunk := await self._pool().submit(functools.partial(next, iterator, end))) is not end:
                yield _as_bytes(chunk)
            return
        raise TypeError(f"a GET stream must produce bytes, str or an iterable of them, not {type(produced).__name__}")

    async def post_stream(self, name: str, data: bytes, *, agent_id: str | None = None,
                          login_token: str | None = None) -> None:
        """Hands ``data`` to a POST stream's callback (its result is ignored)."""
        agent, spec = self.find_stream(name, agent_id)
        what = f"Stream {show(spec.name)} of agent {agent.agent_id}"
        if spec.mode is not StreamMode.POST:
            raise UnknownStreamError(f"{what} is a GET stream: read it with GET.")
        kwargs = self._authorise(spec.auth, spec.takes_login_token, login_token, what)
        await self._run(spec.callback, (bytes(data),), kwargs, is_async=_is_async(spec.callback), timeout=None,
                        what=what)

    # --- messages ------------------------------------------------------------------------------------------

    def on_message(self, hook: Callable[[str, str, Message], Awaitable[None]]) -> None:
        """Awaits ``hook(kind, name, message)`` for every send to a known agent and every broadcast."""
        self._message_hooks.append(hook)

    async def _hooks(self, kind: str, name: str, message: Message) -> None:
        for hook in list(self._message_hooks):
            try:
                await hook(kind, name, message)
            except Exception as exc:  # noqa: BLE001  # a hook never changes what the sender is answered
                log.warning("A message hook failed on %s %s: %s", kind, show(name), shorten(one_line(str(exc)), 300))

    async def send(self, agent_id: str, message: Message) -> None:
        """Delivers ``message`` to one agent (``UnknownAgentError``)."""
        agent = self.agent(agent_id)
        await self._hooks("agent", agent_id, message)
        await self._run(agent.receive_message, (message,), {}, is_async=_is_async(agent.receive_message),
                        timeout=None, what=f"Agent {agent.agent_id} receiving a message")

    async def broadcast(self, channel: str, message: Message) -> None:
        """Delivers ``message`` to every agent subscribed to ``channel``, concurrently; failures are logged."""
        targets = [agent for agent in self._agents.values() if channel in agent.channels]
        await self._hooks("channel", channel, message)
        outcomes = await asyncio.gather(
            *(self._run(agent.receive_message, (message,), {}, is_async=_is_async(agent.receive_message),
                        timeout=None, what=f"Agent {agent.agent_id} receiving a broadcast")
              for agent in targets),
            return_exceptions=True)
        for agent, outcome in zip(targets, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("Broadcast on %s: agent %s failed: %s", show(channel), agent.agent_id, outcome)

    # --- logins ------------------------------------------------------------------------------------------

    async def login(self, login: Login) -> str:
        """A new container-login token (see the module docstring); the credentials are never logged."""
        candidates = [agent for agent in self._agents.values() if supports_login(agent)]
        if not candidates:
            raise LoginNotSupportedError("No agent of this container supports a login.")
        token = str(uuid.uuid4())
        message = LoginMsg(token=token, login=login)
        outcomes = await asyncio.gather(
            *(self._run(agent.handle_login, (message,), {}, is_async=_is_async(agent.handle_login), timeout=None,
                        what=f"Agent {agent.agent_id} checking a login", secret=True)
              for agent in candidates),
            return_exceptions=True)
        accepted: list[str] = []
        refused = unsupported = 0
        crashes: list[BaseException] = []
        for agent, outcome in zip(candidates, outcomes, strict=True):
            cause = outcome.__cause__ if isinstance(outcome, ActionFailedError) else outcome
            if isinstance(outcome, BaseException):
                if isinstance(cause, LoginNotSupportedError):
                    unsupported += 1
                elif isinstance(cause, PermissionError) or (
                        isinstance(outcome, ActionFailedError) and outcome.status_code in (401, 403)):
                    refused += 1
                else:
                    crashes.append(outcome)
                    log.warning("Agent %s failed while checking a login: %s", agent.agent_id, type(cause).__name__)
            elif outcome is False:
                refused += 1
            else:
                accepted.append(agent.agent_id)
        if accepted:
            self._sessions[token] = tuple(accepted)
            log.info("Container login accepted by %d agent(s).", len(accepted))
            return token
        if crashes:
            raise ActionFailedError("The login could not be checked: an agent failed while checking it.") \
                from crashes[0]
        if refused:
            raise LoginFailedError("Login refused: wrong user name or password.")
        raise LoginNotSupportedError("No agent of this container supports a login.")

    async def logout(self, token: str) -> bool:
        """Ends the login of ``token`` (quoted or not); ``False`` when it was not logged in."""
        normalised = _normalise_token(token)
        agent_ids = self._sessions.pop(normalised, None) if normalised is not None else None
        if agent_ids is None:
            return False
        agents = [self._agents[agent_id] for agent_id in agent_ids if agent_id in self._agents]
        outcomes = await asyncio.gather(
            *(self._run(agent.handle_logout, (normalised,), {}, is_async=_is_async(agent.handle_logout),
                        timeout=None, what=f"Agent {agent.agent_id} handling a logout")
              for agent in agents),
            return_exceptions=True)
        for agent, outcome in zip(agents, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("Agent %s failed while handling a logout: %s", agent.agent_id, type(outcome).__name__)
        return True

    def is_logged_in(self, token: str | None) -> bool:
        """Whether ``token`` (quoted or not) belongs to a current container login."""
        normalised = _normalise_token(token)
        return normalised is not None and normalised in self._sessions


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
