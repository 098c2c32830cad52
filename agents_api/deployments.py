"""Prefect deployments as OPACA actions: the deployment-run engine (``DeploymentRuns``) and ``DeploymentsAgent``.

Every deployment tagged ``opaca`` (``FLOWMAS_OPACA_DEPLOYMENT_TAG``) is an action of the Deployments agent,
named after its flow in PascalCase (``download-assets`` -> ``DownloadAssets``) unless a tag ``opaca:Name``
names it, with the parameters of its ``parameter_openapi_schema``, the result type of the flow's return
annotation and the flow's docstring as description. Each also gets ``Submit<Action>`` (answers the run id at
once); ``GetRunStatus(run_id)`` and ``GetRunResult(run_id)`` read any run of these deployments, and
``GET /stream/<run id>`` follows one run as NDJSON lines (its states and log lines, then an ``end`` line).
``@action(deployment="flow/deployment")`` on any agent binds that action to a deployment the same way
(``DeploymentRuns.bind``). The set of deployments is refreshed in the background every
``FLOWMAS_OPACA_REFRESH_SECONDS``, never on a request, so ``/info`` stays a cached answer.

How a call runs, and why it is fast. ``run_deployment`` plus a served flow costs seconds per call (the
runner polls for scheduled runs, then starts a fresh interpreter that imports Prefect). Here:

1. the flow run is created through the API as a real run of the deployment (``create_flow_run`` with the
   caller's ``Idempotency-Key``), held in a Scheduled state named ``AwaitingContainer`` a few minutes ahead,
   which no runner or worker fetches yet (they prefetch seconds ahead);
2. the container claims it at once by proposing ``Pending`` through the server's orchestration rules: that
   is where Prefect enforces deployment concurrency limits (``SecureFlowConcurrencySlots``: ENQUEUE answers
   ``AwaitingConcurrencySlot``, claimed again when due; CANCEL_NEW answers ``Cancelled``) and where a second
   claimant is refused (``PreventPendingTransitions``), so a run executes once whoever else sees it;
3. the run executes in this process, in a thread of its own, through Prefect's own engine
   (``flow_engine.run_flow`` with the existing flow run): Running and final states, retries (the server's
   ``RetryFailedFlows`` answers ``AwaitingRetry`` and the engine runs again), task runs, logs, artifacts,
   result persistence and the lease of the concurrency slot are Prefect's, exactly as in a runner's
   subprocess. The flow is imported once from the deployment's entrypoint (again when its file changes).
   Two per-run costs of Prefect's engine are shared instead: its heartbeat thread (the sync engine joins it,
   sleeping in 1 s steps, at the end of every run: up to a second per call; this engine emits the same
   heartbeat events for all its runs), and its suspension observer (an events websocket and a thread per
   deployment run: a quarter of a second; one observer watches every run here). A cancellation (the UI's
   Cancel) reaches a run here through the runner's cancellation observer and stops it at its next task, or
   at its end, since a thread cannot be killed; it ends Cancelled.

So a call costs a handful of API round trips and the flow's own work, with no polling and no interpreter.
A run executes on the deployment's runner or worker instead (created ``Scheduled``, its state polled) when
its flow cannot be imported here, its work pool is not a process pool, the flow retries with a delay (its
``AwaitingRetry`` state would be fetched by the deployment's runner, which would run it a second time), it
is a generator flow, or ``FLOWMAS_OPACA_IN_PROCESS=false``.

Answers: a Completed run answers its result as JSON (the return value for runs executed here; the persisted
result otherwise, so flows used as actions should say ``persist_result=True, result_serializer="json"``); a
Failed, Crashed or Cancelled run is an ``ActionFailedError`` (500) whose message holds the state's message and
the run id. On ``?timeout`` the answer is an ``ActionTimeoutError`` (504) naming the run, and **the run goes
on**: its work is real work (a download half done, an agent graph mid-way) that the caller can still collect
with ``GetRunResult`` or the stream; a run executing in a thread cannot be stopped safely anyway, and the
OPACA platform has no read timeout of its own, so ``?timeout`` is the caller's patience, not a deadline for
the work. Cancel it in the Prefect UI if it must stop.

Idempotency: the same ``Idempotency-Key`` for the same deployment gives the same flow run (Prefect's own
``idempotency_key``, scoped by deployment; the retry's arguments are not compared), answered like the first
call: attached to if it executes here, polled otherwise, its persisted result read when it has finished.

The timeout and the ``Idempotency-Key`` reach an action's callback through the core's
``current_invocation()`` (``Container.invoke`` records both for the call; the face passes the header).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from uuid import UUID

import jsonschema  # type: ignore[import-untyped]  # no stubs in the lock
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowmas.errors import ActionFailedError, ActionTimeoutError, ConfigurationError, InvalidArgumentsError
from flowmas.opaca.agent import AbstractAgent, ActionSpec, StreamSpec, action, clean_description, pascal_case
from flowmas.opaca.container import Invocation, current_invocation
from flowmas.opaca.models import ArrayItems, Parameter, StreamMode
from flowmas.opaca.types import ANY, ANY_SCHEMA, parameter_for, safe_name
from flowmas.text import one_line, shorten

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import State
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.flows import Flow

    from flowmas.opaca.container import Container

__all__ = [
    "DeploymentInfo",
    "DeploymentRuns",
    "DeploymentSettings",
    "DeploymentsAgent",
    "RunStatus",
    "schema_parameters",
]

log = logging.getLogger("flowmas.opaca.deployments")
T = TypeVar("T")

HOLD = timedelta(minutes=5)
"""How far ahead a run to be claimed here is scheduled: beyond any runner's or worker's prefetch window (10 s by
default), so they leave it alone, and near enough that a run whose claim never came (the process died between
two API calls) is still executed by the deployment's runner or worker."""
HELD_STATE = "AwaitingContainer"
CLAIMABLE = frozenset({HELD_STATE, "AwaitingConcurrencySlot"})
"""Scheduled states this container may claim: its own hold, and a concurrency limit's queue. Never
``AwaitingRetry``: that belongs to an engine already running the flow."""
LOCAL_OUTCOMES = 256
"""Recent results of runs executed here, kept for idempotent replays and ``GetRunResult`` of unpersisted ones."""


class DeploymentSettings(BaseSettings):
    """``FLOWMAS_OPACA_*`` settings of the deployment actions, each bounded."""

    model_config = SettingsConfigDict(env_prefix="FLOWMAS_OPACA_", extra="ignore")

    deployment_tag: str = Field(default="opaca", min_length=1, max_length=100)
    """Deployments carrying this tag are actions; ``<tag>:Name`` names one."""
    refresh_seconds: float = Field(default=5.0, ge=0.1, le=3600, allow_inf_nan=False)
    """How often the set of deployments is read again (deployments appear and go without a restart)."""
    poll_seconds: float = Field(default=0.25, ge=0.01, le=60, allow_inf_nan=False)
    """How often the state of a run that does not execute here is read while a call waits for it."""
    in_process: bool = True
    """Execute runs in this process when possible (false: always on the deployment's runner or worker)."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"FLOWMAS_OPACA_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
                for error in exc.errors(include_url=False))
            raise ConfigurationError(f"Invalid deployment action settings: {problems}.") from None


# --- JSON Schema -> OPACA parameters -----------------------------------------------------------------------

_PRIMITIVES = frozenset({"string", "integer", "number", "boolean", "null"})
_ANNOTATIONS = frozenset({"title", "description", "default", "position", "examples", "format", "$schema"})
_MISSING: Any = object()


def schema_parameters(schema: Mapping[str, Any] | None, *, action: str, defaults: Mapping[str, Any] | None = None
                      ) -> tuple[dict[str, Parameter], dict[str, Any]]:
    """A deployment's ``parameter_openapi_schema`` as OPACA parameters plus the definitions they name.

    Primitives and arrays (``items`` recursively) map to themselves; ``null`` in an ``anyOf`` makes the
    parameter optional; models (``$ref``) become definitions under their own names, self-contained (the
    platform validates each definition as a document of its own); enums, unions and other constrained
    shapes become a definition named ``<Action><Parameter>``; a plain ``object`` stays ``object``; an empty
    schema is ``Any``. ``required`` comes from the schema, ``defaultValue`` from the property's default, and
    ``defaults`` (the deployment's own parameter values) override both: such a parameter is optional.
    Constraints a type name cannot carry (``minimum``, ``pattern``...) are checked against the whole schema
    before a run is created (``DeploymentRuns``), so nothing the flow would refuse reaches Prefect.
    """
    schema = dict(schema or {})
    roots = dict(schema.get("definitions") or schema.get("$defs") or {})
    required = set(schema.get("required") or [])
    definitions: dict[str, Any] = {}
    parameters: dict[str, Parameter] = {}
    for name, prop in (schema.get("properties") or {}).items():
        if not isinstance(prop, Mapping):
            continue
        default = (defaults or {}).get(name, prop.get("default", _MISSING))
        kind, items = _type_of(dict(prop), roots, definitions, f"{action}{pascal_case(name)}")
        is_required = name in required and name not in (defaults or {})
        parameters[name] = Parameter(
            type=kind, items=items, required=is_required,
            default_value=None if default is _MISSING or is_required else to_jsonable_python(default))
    return parameters, definitions


def _strip_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, {type: null}]`` -> X with the outer annotations (the optional part is ``required``'s job)."""
    members = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(members, list):
        rest = [m for m in members if not (isinstance(m, Mapping) and m.get("type") == "null")]
        if len(rest) < len(members) and len(rest) == 1 and isinstance(rest[0], Mapping):
            outer = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            return {**outer, **rest[0]}
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], Mapping) and "$ref" in all_of[0]:
        return {**{k: v for k, v in schema.items() if k != "allOf"}, **all_of[0]}  # pydantic v1's wrapped $ref
    return schema


def _type_of(schema: dict[str, Any], roots: Mapping[str, Any], definitions: dict[str, Any], fallback: str
             ) -> tuple[str, ArrayItems | None]:
    schema = _strip_null(schema)
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        target = roots.get(name)
        if target is None:
            return _define(ANY, ANY_SCHEMA, definitions), None
        return _define(safe_name(name), _standalone(dict(target), roots, name), definitions), None
    kind = schema.get("type")
    constrained = set(schema) - _ANNOTATIONS - {"type"}
    if kind == "array" and not constrained - {"items"}:
        items = schema.get("items")
        if not isinstance(items, Mapping):
            return "array", ArrayItems(type=_define(ANY, ANY_SCHEMA, definitions))
        inner, nested = _type_of(dict(items), roots, definitions, f"{fallback}Item")
        return "array", ArrayItems(type=inner, items=nested)
    if kind in _PRIMITIVES and not constrained:
        return str(kind), None
    if kind in _PRIMITIVES and constrained <= {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                                               "minLength", "maxLength", "pattern", "multipleOf"}:
        return str(kind), None  # the platform checks the type; the constraint is checked before the run
    if kind == "object" and not schema.get("properties"):
        return "object", None
    if not set(schema) - _ANNOTATIONS:
        return _define(ANY, ANY_SCHEMA, definitions), None
    body = {k: v for k, v in schema.items() if k not in ("position", "default", "title")}
    return _define(safe_name(fallback), _standalone(body, roots), definitions), None


def _define(name: str, schema: Any, definitions: dict[str, Any]) -> str:
    definitions.setdefault(name, schema)
    return name


def _standalone(schema: dict[str, Any], roots: Mapping[str, Any], own_name: str | None = None) -> dict[str, Any]:
    """``schema`` with every reference to a root definition inlined, as the core describes models.

    A recursive model cannot be inlined: its reference stays ``#/definitions/<name>`` and the document carries
    a ``definitions`` member holding it, so each definition is still a document of its own.
    """
    needed: dict[str, Any] = {}

    def walk(node: Any, inside: frozenset[str]) -> Any:
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str) and (name := ref.rsplit("/", 1)[-1]) in roots:
                rest = {key: walk(value, inside) for key, value in node.items() if key != "$ref"}
                if name not in inside:
                    return {**walk(roots[name], inside | {name}), **rest}
                if name not in needed:
                    needed[name] = {}
                    needed[name] = walk(roots[name], frozenset({name}))
                return {**rest, "$ref": f"#/definitions/{name}"}
            return {key: walk(value, inside) for key, value in node.items()
                    if key not in ("definitions", "$defs", "position")}
        if isinstance(node, list):
            return [walk(value, inside) for value in node]
        return node

    body: dict[str, Any] = walk(schema, frozenset({own_name}) if own_name else frozenset())
    if needed:
        body["definitions"] = needed
    return body


def _prefixed(parameters: dict[str, Parameter], result: Parameter | None, definitions: dict[str, Any],
              prefix: str) -> tuple[dict[str, Parameter], Parameter | None, dict[str, Any]]:
    """The same action with its own definition names prefixed (``Car`` -> ``DownloadAssets.Car``).

    Definitions share one namespace per container; two deployments whose ``Car`` differ get their own.
    """
    rename = {name: f"{prefix}.{name}" for name in definitions if name != ANY}

    def items(value: ArrayItems | None) -> ArrayItems | None:
        if value is None:
            return None
        return ArrayItems(type=rename.get(value.type, value.type), items=items(value.items))

    def fix(parameter: Parameter) -> Parameter:
        return parameter.model_copy(update={"type": rename.get(parameter.type, parameter.type),
                                            "items": items(parameter.items)})

    return ({name: fix(p) for name, p in parameters.items()}, fix(result) if result is not None else None,
            {rename.get(name, name): schema for name, schema in definitions.items()})


# --- deployments -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentInfo:
    """A deployment as the container serves it: its action's description, and where its runs execute."""

    id: UUID
    name: str
    """``flow/deployment``."""
    flow_name: str
    action: str
    base_action: str
    """The action's name before two deployments of one flow were told apart."""
    description: str | None
    parameters: dict[str, Parameter]
    result: Parameter | None
    definitions: dict[str, Any]
    schema: dict[str, Any]
    defaults: dict[str, Any]
    """The deployment's own parameter values (the server merges them into every run)."""
    updated: datetime | None
    flow: Any = field(default=None, compare=False, repr=False)
    """The flow object when runs execute here, else None."""
    remote_reason: str | None = None
    """Why runs execute on the deployment's runner or worker (None: here)."""

    @property
    def local(self) -> bool:
        return self.flow is not None


@dataclass
class _LocalRun:
    """A run executing in this process: ``done`` resolves to its final state and JSON result."""

    run_id: UUID
    done: asyncio.Future[tuple[Any, Any] | None]
    """None: the engine ended without a state here; read it from the API."""
    flow_run: Any


class RunStatus(BaseModel):
    """A flow run as ``GetRunStatus`` answers it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    run_id: str
    name: str
    deployment: str
    state: str
    """The state type: SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CRASHED, CANCELLING, CANCELLED, PAUSED."""
    state_name: str
    message: str | None = None
    final: bool
    run_count: int = 0
    created: datetime | None = None
    started: datetime | None = None
    ended: datetime | None = None
    url: str | None = None
    """The run in the Prefect UI."""


class DeploymentRuns:
    """The deployment-run engine: reads the tagged deployments, creates, claims, executes and follows runs.

    All Prefect API work happens on one thread with its own event loop and one client (``start``/``stop``
    are sync and may be called from anywhere); the async methods may be awaited on any loop. Runs that
    execute here get a daemon thread each, so a call that times out returns while its run goes on.
    ``code_roots`` are the directories a relative entrypoint is looked up in after the deployment's own path
    and the working directory (``flowmas up`` passes the checkout). An engine is started and stopped once.
    """

    def __init__(self, settings: DeploymentSettings | None = None, *, code_roots: Sequence[Path] = ()) -> None:
        self.settings = settings or DeploymentSettings()
        self.code_roots = [Path(root) for root in code_roots]
        self._infos: dict[str, DeploymentInfo] = {}
        self._by_id: dict[UUID, DeploymentInfo] = {}
        self._bound: dict[str, str] = {}
        """Deployments bound with ``@action(deployment=...)``: name -> the action's name."""
        self._listeners: list[Callable[[Mapping[str, DeploymentInfo]], None]] = []
        self._local: dict[UUID, _LocalRun] = {}
        self._outcomes: OrderedDict[UUID, tuple[Any, Any]] = OrderedDict()
        self._flows: dict[tuple[str, str, float], Any] = {}
        self._pools: dict[str, str | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: PrefectClient | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._refresh_failed = False
        self._run_settings: Any = None
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="flowmas-flow-loader")  # imports are not thread safe
        self._tasks: set[asyncio.Task[Any]] = set()
        self._context = contextvars.copy_context()
        self._observer: Any = None
        """One suspension observer (one events websocket) for every run executed here, see ``_run_sync_flow``."""
        self._cancel_observer: Any = None
        """One cancellation observer for every run executed here, see ``_on_cancelling``."""

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Start the engine's thread and read the deployments once (so the first ``/info`` lists them)."""
        if self._thread is not None:
            return
        context = contextvars.copy_context()  # the caller's Prefect settings (PREFECT_API_URL) go along
        self._ready.clear()
        self._thread = threading.Thread(target=context.run, args=(self._thread_main,), daemon=True,
                                        name="flowmas-deployments")
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"The deployments engine did not start within {timeout:g} s.")
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self.stop()
            raise failure

    def stop(self, timeout: float = 15.0) -> None:
        """Stop refreshing; mark runs still executing here Crashed (this process ends them); join the thread."""
        loop, thread = self._loop, self._thread
        if loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._stopping.set)
        if thread is not None:
            thread.join(timeout)
        self._thread = None
        self._loader.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> bool:
        return self._loop is not None and self._thread is not None and self._thread.is_alive()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start() when it happens before ready
            if not self._ready.is_set():
                self._failure = exc
            else:
                log.exception("The deployments engine stopped.")
        finally:
            self._loop = None
            self._ready.set()

    async def _main(self) -> None:
        from prefect.context import SyncClientContext
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings

        current = get_current_settings()
        # The sync flow engine joins its heartbeat thread (which sleeps in 1 s steps) at the end of every run:
        # up to a second per call. Runs executed here send their heartbeats from this loop instead.
        self._run_settings = current.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
        heartbeat = current.flows.heartbeat_frequency
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        # One sync client for the engines of every run executed here (they would each build one, SSL context and
        # version check included): the runs' threads inherit this context. httpx's client is thread-safe.
        with SyncClientContext():
            self._context = contextvars.copy_context()  # every task on this loop runs in it (see _on_loop)
            await self._serve_loop(heartbeat)

    async def _serve_loop(self, heartbeat: int | None) -> None:
        from prefect.client.orchestration import get_client

        assert self._stopping is not None
        async with get_client() as client, contextlib.AsyncExitStack() as stack:
            self._client = client
            try:
                await self._refresh()
            except Exception as exc:  # noqa: BLE001 - start() raises it in the caller's thread
                self._failure, self._client = exc, None
                self._ready.set()
                return
            self._observer = await _suspension_observer(stack)
            self._cancel_observer = await _cancellation_observer(stack, self._on_cancelling)
            self._ready.set()
            self._spawn(self._refresh_loop())
            if heartbeat:
                self._spawn(self._heartbeat_loop(heartbeat))
            await self._stopping.wait()
            for task in list(self._tasks):
                task.cancel()
            await self._crash_local_runs()
            self._client = self._observer = self._cancel_observer = None

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _on_loop(self, coro: Awaitable[T]) -> T:
        """Run ``coro`` on the engine's loop and await it from any loop."""
        loop = self._loop
        if loop is None or self._client is None:
            if inspect.iscoroutine(coro):
                coro.close()
            raise ActionFailedError("The Prefect deployments engine of this container is not running.",
                                    status_code=503)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return await coro
        return await asyncio.wrap_future(self._schedule(loop, coro))

    def _schedule(self, loop: asyncio.AbstractEventLoop, coro: Awaitable[T]) -> concurrent.futures.Future[T]:
        """``coro`` as a task of the engine's loop in the engine's context (``run_coroutine_threadsafe`` would
        give it the caller's: another thread's Prefect settings, and no shared client for the runs)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            if not future.set_running_or_notify_cancel():
                if inspect.iscoroutine(coro):
                    coro.close()
                return
            task = loop.create_task(_as_coroutine(coro), context=self._context)
            task.add_done_callback(lambda done: _chain(done, future))
            future.add_done_callback(lambda f: f.cancelled() and loop.call_soon_threadsafe(task.cancel))

        loop.call_soon_threadsafe(start)
        return future

    # --- deployments -----------------------------------------------------------------------------------

    def on_refresh(self, listener: Callable[[Mapping[str, DeploymentInfo]], None]) -> None:
        """Call ``listener(deployments)`` (tagged, not bound; by ``flow/deployment``) after every refresh."""
        self._listeners.append(listener)
        if self._infos:
            listener(self.deployments)

    @property
    def deployments(self) -> Mapping[str, DeploymentInfo]:
        """The tagged deployments that are no agent's bound action, by ``flow/deployment``."""
        return {name: info for name, info in self._infos.items() if name not in self._bound}

    def info(self, name: str) -> DeploymentInfo | None:
        return self._infos.get(name)

    def refresh_now(self, timeout: float = 30.0) -> None:
        """Read the deployments again now (tests; a supervisor after registering deployments)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("The deployments engine is not running.")
        self._schedule(loop, self._refresh()).result(timeout)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_seconds)
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the actions we have: a Prefect hiccup must not empty /info
                if not self._refresh_failed:
                    log.warning("Cannot read the deployments from the Prefect API (%s); keeping the %d known "
                                "ones and trying again every %g s.", _describe(exc), len(self._infos),
                                self.settings.refresh_seconds)
                self._refresh_failed = True
            else:
                if self._refresh_failed:
                    log.warning("The Prefect API answers again; deployments are read as before.")
                self._refresh_failed = False

    async def _refresh(self) -> None:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags, FlowFilter, FlowFilterId
        from prefect.exceptions import ObjectNotFound

        client = self._require_client()
        tag = self.settings.deployment_tag
        found: dict[UUID, DeploymentResponse] = {}
        offset = 0
        while True:
            page = await client.read_deployments(
                deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[tag])), limit=200, offset=offset)
            found.update((d.id, d) for d in page)
            if len(page) < 200:
                break
            offset += 200
        for name in list(self._bound):
            with contextlib.suppress(ObjectNotFound):
                bound = await client.read_deployment_by_name(name)
                found[bound.id] = bound
        flow_names: dict[UUID, str] = {}
        if found:
            flows = await client.read_flows(
                flow_filter=FlowFilter(id=FlowFilterId(any_=list({d.flow_id for d in found.values()}))))
            flow_names = {f.id: f.name for f in flows}
        infos: dict[str, DeploymentInfo] = {}
        for deployment in sorted(found.values(), key=lambda d: (flow_names.get(d.flow_id, ""), d.name)):
            flow_name = flow_names.get(deployment.flow_id)
            if flow_name is None:
                continue
            name = f"{flow_name}/{deployment.name}"
            previous = self._infos.get(name)
            if previous is not None and previous.id == deployment.id and previous.updated == deployment.updated \
                    and not await self._changed_on_disk(deployment, previous):
                infos[name] = previous
                continue
            info = infos[name] = await self._describe_deployment(deployment, flow_name)
            where = "in this process" if info.local else f"on its runner or worker: {info.remote_reason}"
            log.info("Deployment %s is action %s; its runs execute %s.", name, self._bound.get(name, info.action),
                     where)
        infos = self._unique_actions(infos)
        changed = infos != self._infos
        self._infos = infos
        self._by_id = {info.id: info for info in infos.values()}
        if changed:
            snapshot = self.deployments
            for listener in list(self._listeners):
                try:
                    listener(snapshot)
                except Exception:
                    log.exception("A listener of the deployment actions failed.")

    def _unique_actions(self, infos: dict[str, DeploymentInfo]) -> dict[str, DeploymentInfo]:
        """Two deployments of one flow: every one but ``default`` gets its deployment's name appended."""
        by_action: dict[str, list[str]] = {}
        for name, info in infos.items():
            if name not in self._bound:
                by_action.setdefault(info.base_action, []).append(name)
        result = {name: dataclasses.replace(info, action=info.base_action) if info.action != info.base_action
                  else info for name, info in infos.items()}
        for names in by_action.values():
            if len(names) < 2:
                continue
            keep = next((n for n in names if n.endswith("/default")), names[0])
            for name in names:
                if name != keep:
                    info = result[name]
                    suffix = pascal_case(name.split("/", 1)[1])
                    result[name] = dataclasses.replace(info, action=f"{info.base_action}{suffix}")
        return result

    async def _changed_on_disk(self, deployment: DeploymentResponse, previous: DeploymentInfo) -> bool:
        if previous.flow is None:
            return False
        located = self._locate(deployment)
        return located is not None and located[2] >= 0 and located not in self._flows

    async def _describe_deployment(self, deployment: DeploymentResponse, flow_name: str) -> DeploymentInfo:
        tag_prefix = f"{self.settings.deployment_tag}:"
        named = next((t[len(tag_prefix):] for t in deployment.tags if t.startswith(tag_prefix) and t[len(tag_prefix):]),
                     None)
        action_name = named or pascal_case(flow_name)
        flow, reason = await self._load(deployment, flow_name)
        schema = dict(deployment.parameter_openapi_schema or {})
        parameters, definitions = schema_parameters(schema, action=action_name, defaults=deployment.parameters)
        result: Parameter | None = None
        doc: str | None = deployment.description
        if flow is not None:  # loaded, even if its runs execute elsewhere: its return type and docstring
            with contextlib.suppress(Exception):  # a return type the core cannot describe: no result type
                hints = inspect.get_annotations(flow.fn, eval_str=True)
                if "return" in hints:
                    described: dict[str, Any] = {}
                    result = parameter_for(hints["return"], definitions=described)
                    for type_name, type_schema in described.items():  # a parameter's (equal) model wins
                        definitions.setdefault(type_name, type_schema)
            doc = flow.description or doc
        return DeploymentInfo(
            id=deployment.id, name=f"{flow_name}/{deployment.name}", flow_name=flow_name, action=action_name,
            base_action=action_name, description=clean_description(doc), parameters=parameters, result=result,
            definitions=definitions, schema=schema, defaults=dict(deployment.parameters or {}),
            updated=deployment.updated, flow=flow if reason is None else None, remote_reason=reason)

    def _locate(self, deployment: DeploymentResponse) -> tuple[str, str, float] | None:
        """(entrypoint, what to load, file mtime) for the cache, or None when there is no entrypoint."""
        entrypoint = deployment.entrypoint
        if not entrypoint:
            return None
        if ".py:" not in entrypoint:
            return entrypoint, entrypoint, -1.0  # a module path: imported, never reloaded
        path, _, function = entrypoint.rpartition(":")
        candidates: list[Path] = []
        if Path(path).is_absolute():
            candidates.append(Path(path))
        else:
            bases: list[Path] = []
            if deployment.path:
                base = Path(deployment.path)
                bases.append(base if base.is_absolute() else Path.cwd() / base)
            bases.append(Path.cwd())
            if repo := os.environ.get("FLOWMAS_REPO"):
                bases.append(Path(repo))
            bases += self.code_roots
            candidates += [base / path for base in bases]
        for candidate in candidates:
            with contextlib.suppress(OSError):
                if candidate.is_file():
                    resolved = candidate.resolve()
                    return entrypoint, f"{resolved}:{function}", resolved.stat().st_mtime
        return entrypoint, "", -1.0

    async def _load(self, deployment: DeploymentResponse, flow_name: str) -> tuple[Any, str | None]:
        """(flow, None) when its runs can execute here, else (flow or None, why not)."""
        located = self._locate(deployment)
        if located is None:
            return None, "the deployment has no entrypoint"
        if not located[1]:
            return None, f"its entrypoint {deployment.entrypoint} is not in this process's checkout"
        flow: Any = self._flows.get(located)
        if flow is None:
            loop = asyncio.get_running_loop()
            try:
                flow = await loop.run_in_executor(self._loader, _load_flow, located[1])
            except Exception as exc:
                log.debug("Loading the flow of %s failed.", deployment.entrypoint, exc_info=True)
                return None, f"its flow cannot be imported here ({_describe(exc)})"
            self._flows = {key: value for key, value in self._flows.items() if key[0] != located[0]}
            self._flows[located] = flow
        if flow.name != flow_name:
            return None, f"its entrypoint holds flow {flow.name!r}, not {flow_name!r}"
        if not self.settings.in_process:
            return flow, "FLOWMAS_OPACA_IN_PROCESS is false"
        if flow.isgenerator:
            return flow, "generator flows stream their values to a runner"
        if flow.retries and flow.retry_delay_seconds:
            return flow, ("the flow retries after a delay, and its runner would fetch the waiting retry "
                          "(AwaitingRetry is a Scheduled state) and run it a second time")
        if deployment.work_pool_name:
            kind = await self._pool_type(deployment.work_pool_name)
            if kind not in (None, "process"):
                return flow, f"its work pool {deployment.work_pool_name!r} is of type {kind!r}, not process"
        return flow, None

    async def _pool_type(self, name: str) -> str | None:
        from prefect.exceptions import ObjectNotFound

        if name not in self._pools:
            try:
                self._pools[name] = (await self._require_client().read_work_pool(name)).type
            except ObjectNotFound:
                self._pools[name] = None
        return self._pools[name]

    def _require_client(self) -> PrefectClient:
        if self._client is None:
            raise ActionFailedError("The Prefect deployments engine of this container is not running.",
                                    status_code=503)
        return self._client

    # --- binding @action(deployment=...) ---------------------------------------------------------------

    def bind(self, container: Container) -> list[ActionSpec]:
        """Give every ``@action(deployment=...)`` of ``container``'s agents its callback (and ``Submit<Action>``).

        Idempotent: an action bound already is left alone, so call it again after adding agents. A bound
        deployment is read by name at each refresh, tagged or not, and is no action of the Deployments agent.
        """
        bound: list[ActionSpec] = []
        for agent in container.agents():
            for spec in list(agent.actions.values()):
                if not spec.deployment or getattr(spec.callback, "__flowmas_deployment__", None):
                    continue
                self._bound[spec.deployment] = spec.name
                runner = self.action_callback(spec.deployment, spec.name, wait=True, agent=agent)
                bound.append(agent.add_action_spec(dataclasses.replace(spec, callback=runner)))
                submit = self.action_callback(spec.deployment, spec.name, wait=False, agent=agent)
                bound.append(agent.add_action_spec(dataclasses.replace(
                    spec, name=f"Submit{spec.name}", callback=submit, result=Parameter(type="string"),
                    description=f"Starts {spec.name} and answers its flow run id at once.",
                    annotations={k: v for k, v in spec.annotations.items() if k != "return"})))
        if bound and self._loop is not None:
            with contextlib.suppress(Exception):
                self.refresh_now()
        return bound

    def action_callback(self, deployment: str, action_name: str, *, wait: bool,
                        agent: AbstractAgent | None = None) -> Callable[..., Awaitable[Any]]:
        """The async callback of an action that runs ``deployment`` (``wait``: answer its result, else its id).

        Arguments arrive validated and converted by the container; they go to the flow run as JSON. An agent
        with a ``deployment_parameters(action, parameters) -> dict`` method completes them first.
        """
        engine = self

        async def run_deployment_action(**arguments: Any) -> Any:
            parameters = to_jsonable_python(arguments, fallback=str)
            complete = getattr(agent, "deployment_parameters", None)
            if callable(complete):
                parameters = complete(action_name, parameters)
            call = current_invocation()
            what = f"Action {action_name!r} (deployment {deployment})"
            return await engine.call(deployment, parameters, wait=wait, what=what,
                                     idempotency_key=call.idempotency_key if call else None,
                                     deadline=_deadline(call, agent))

        run_deployment_action.__flowmas_deployment__ = deployment  # type: ignore[attr-defined]
        run_deployment_action.__name__ = action_name
        return run_deployment_action

    # --- calls -----------------------------------------------------------------------------------------

    async def call(self, deployment: str, parameters: dict[str, Any], *, wait: bool, what: str,
                   idempotency_key: str | None = None, deadline: float | None = None) -> Any:
        """Create (or find, by idempotency key) a run of ``deployment``; ``wait``: answer its JSON result.

        ``deadline`` (``time.monotonic()``) is when to give up waiting: ``ActionTimeoutError`` naming the run,
        which goes on.
        """
        run = await self._on_loop(self._shielded(self._submit(deployment, parameters, idempotency_key, what)))
        if not wait:
            return str(run.id)
        return await self.result(run.id, deadline=deadline, what=what)

    async def result(self, run_id: UUID, *, deadline: float | None, what: str) -> Any:
        """The JSON result of a run once final: ``ActionFailedError`` if it did not complete, timeout as above."""
        remaining = None if deadline is None else deadline - time.monotonic()
        try:
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            async with asyncio.timeout(remaining):
                return await self._on_loop(self._answer(run_id, what))
        except TimeoutError:
            pass
        raise ActionTimeoutError(
            f"{what} did not finish in time; its flow run {run_id} goes on. Ask GetRunStatus or GetRunResult "
            f"with run_id {run_id}, or follow GET /stream/{run_id}.", run_id=str(run_id))

    @staticmethod
    async def _shielded(coro: Awaitable[T]) -> T:
        """Creating and claiming a run is finished even when the caller gives up half-way."""
        return await asyncio.shield(_as_coroutine(coro))

    async def _submit(self, deployment: str, parameters: dict[str, Any], key: str | None, what: str) -> Any:
        from prefect.client.schemas.actions import DeploymentFlowRunCreate
        from prefect.client.schemas.objects import FlowRun
        from prefect.exceptions import PrefectHTTPStatusError
        from prefect.states import Scheduled, to_state_create

        info = await self._deployment(deployment)
        _check_parameters(info, parameters, what)
        client = self._require_client()
        local = info.local
        state: State[Any] = Scheduled(scheduled_time=_now() + HOLD, name=HELD_STATE) if local else Scheduled()
        request = DeploymentFlowRunCreate(
            parameters=parameters, state=to_state_create(state),
            idempotency_key=f"opaca:{info.id}:{key}" if key else None)
        try:
            response = await client.request(
                "POST", "/deployments/{id}/create_flow_run", path_params={"id": info.id},
                json=request.model_dump(mode="json", exclude_unset=True))
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
            raise ActionFailedError(f"{what}: deployment {deployment} was removed from the Prefect API.",
                                    status_code=503) from exc
        run = FlowRun.model_validate(response.json())
        created = response.status_code == 201
        if not created:
            log.info("Idempotency-Key of %s: the existing flow run %s answers.", what, run.id)
        if run.id in self._local or run.id in self._outcomes:
            return run
        if local and run.state is not None and run.state.is_scheduled() and run.state.name in CLAIMABLE:
            await self._claim(info, run)
        return run

    async def _deployment(self, name: str) -> DeploymentInfo:
        info = self._infos.get(name)
        if info is None:
            await self._refresh()
            info = self._infos.get(name)
        if info is None:
            raise ActionFailedError(
                f"Deployment {name} is not registered with the Prefect API, or does not carry the tag "
                f"{self.settings.deployment_tag!r}: register it (`flowmas up` serves prefect.yaml), then call "
                "again.", status_code=503)
        return info

    async def _claim(self, info: DeploymentInfo, run: Any) -> None:
        """Propose Pending: the server's concurrency rules decide; on success the run executes here."""
        from prefect.exceptions import Abort
        from prefect.states import Pending
        from prefect.utilities.engine import propose_state

        pending: State[Any] = Pending()
        details: Any = pending.state_details
        details.scheduled_time = _now()  # else the hold's time is copied to Pending and Running would wait for it
        try:
            state: State[Any] = await propose_state(self._require_client(), pending, flow_run_id=run.id)
        except Abort as exc:
            log.debug("Flow run %s is executed elsewhere: %s", run.id, exc)
            return
        run.state = state
        if state.is_pending():
            self._start_local(info, run)
        elif state.is_scheduled():  # a concurrency limit's queue (ENQUEUE): claim it again when it is due
            self._spawn(self._claim_later(info, run.id))

    async def _claim_later(self, info: DeploymentInfo, run_id: UUID) -> None:
        client = self._require_client()
        while True:
            run = await client.read_flow_run(run_id)
            state = run.state
            if state is None or not state.is_scheduled() or state.name not in CLAIMABLE:
                return
            due = state.state_details.scheduled_time
            wait = (due - _now()).total_seconds() if due is not None else 1.0
            if wait > 0:
                await asyncio.sleep(min(wait, 30.0))
                continue
            await self._claim(info, run)
            return

    def _start_local(self, info: DeploymentInfo, run: Any) -> None:
        loop = asyncio.get_running_loop()
        local = _LocalRun(run_id=run.id, done=loop.create_future(), flow_run=run)
        self._local[run.id] = local
        if self._cancel_observer is not None:
            self._cancel_observer.add_in_flight_flow_run_id(run.id)
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(self._execute, info.flow, run, local, loop), daemon=True,
                                  name=f"flow-run-{run.id}")
        thread.start()

    def _execute(self, flow: Flow[..., Any], run: Any, local: _LocalRun, loop: asyncio.AbstractEventLoop) -> None:
        """The run, through Prefect's engine, in this thread; hands (state, JSON result) back to the loop."""
        from prefect.context import SettingsContext
        from prefect.flow_engine import run_flow

        outcome: tuple[Any, Any] | BaseException
        try:
            current = SettingsContext.get()
            assert current is not None  # Prefect always has a settings context
            with SettingsContext(profile=current.profile, settings=self._run_settings):
                state: Any
                if self._observer is not None and not flow.isasync:
                    state = self._run_sync_flow(flow, run)
                else:
                    state = run_flow(flow, flow_run=run, return_type="state")
                    if inspect.isawaitable(state):
                        state = asyncio.run(_as_coroutine(state))
                value = None
                if state.is_completed():
                    value = to_jsonable_python(state.result(raise_on_failure=False), fallback=str)
            outcome = (state, value)
        except BaseException as exc:  # the engine reported the state itself; the waiter reads it back
            log.debug("Flow run %s ended with %s.", run.id, type(exc).__name__, exc_info=True)
            outcome = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: the container stopped meanwhile
            loop.call_soon_threadsafe(self._settle, local, outcome)

    def _run_sync_flow(self, flow: Flow[..., Any], run: Any) -> Any:
        """``run_flow_sync`` with one change: the engine watches for suspension through this engine's observer.

        Prefect's engine opens an events websocket and a thread per deployment run to notice a ``Suspended``
        request, and joins them at the end: a quarter of a second per call. One observer, started with the
        engine, watches every run executed here instead; the request is registered exactly as the engine
        does, so ``suspend_flow_run`` still reaches the run at its next orchestration boundary.
        """
        from prefect.flow_engine import _flow_parameters

        loop, observer = self._loop, self._observer

        def watch(run_id: UUID, add: bool) -> None:
            if loop is not None:
                method = observer.add_in_flight_flow_run_id if add else observer.remove_in_flight_flow_run_id
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(method, run_id)

        engine = _observed_engine_class()(flow=flow, flow_run=run, parameters=_flow_parameters(flow, run, None),
                                          watch=watch)
        with engine.start():
            while engine.is_running():
                with engine.run_context():
                    engine.call_flow_fn()
        return engine.state

    def _on_cancelling(self, flow_run_id: UUID) -> None:
        """A run executed here was asked to cancel (the UI, the API): it stops at its next task or at its end.

        A thread cannot be killed. The engine's suspension request is what makes a run stop at its next
        orchestration boundary (each task's start, the flow's own end), so the cancellation rides on it; the
        engine then proposes Cancelled once the thread is out.
        """
        from prefect._flow_run_suspension import mark_flow_run_suspension_requested
        from prefect.states import Cancelling

        if flow_run_id in self._local:
            mark_flow_run_suspension_requested(flow_run_id, Cancelling(message="Cancelling at the next task."))

    async def _conclude_cancelling(self, run_id: UUID) -> None:
        """A run whose thread ended while it was Cancelling is Cancelled (nobody else will say so)."""
        from prefect.states import Cancelled

        client = self._require_client()
        run = await client.read_flow_run(run_id)
        if run.state is not None and run.state.type.value == "CANCELLING":
            await client.set_flow_run_state(run_id, Cancelled(
                message="Cancelled: the run stopped at its next task in the flowmas container."), force=True)

    def _settle(self, local: _LocalRun, outcome: tuple[Any, Any] | BaseException) -> None:
        self._local.pop(local.run_id, None)
        if self._cancel_observer is not None:
            self._cancel_observer.remove_in_flight_flow_run_id(local.run_id)
        if isinstance(outcome, BaseException):
            if local.done.done():
                return

            async def conclude() -> None:  # the waiters read the state once it is the last one
                with contextlib.suppress(Exception):
                    await self._conclude_cancelling(local.run_id)
                if not local.done.done():
                    local.done.set_result(None)

            self._spawn(conclude())
            return
        self._outcomes[local.run_id] = outcome
        while len(self._outcomes) > LOCAL_OUTCOMES:
            self._outcomes.popitem(last=False)
        if not local.done.done():
            local.done.set_result(outcome)

    async def _final(self, run_id: UUID) -> tuple[Any, Any]:
        """(final state, JSON result or ``_MISSING``): from this process when it ran here, else by polling."""
        if (kept := self._outcomes.get(run_id)) is not None:
            return kept
        local = self._local.get(run_id)
        if local is not None and (outcome := await asyncio.shield(local.done)) is not None:
            return outcome
        client = self._require_client()
        while True:
            run = await client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run.state, _MISSING
            if (kept := self._outcomes.get(run_id)) is not None:
                return kept
            local = self._local.get(run_id)
            if local is not None and (outcome := await asyncio.shield(local.done)) is not None:
                return outcome  # claimed here meanwhile (a concurrency queue's turn came)
            await asyncio.sleep(self.settings.poll_seconds)

    async def _answer(self, run_id: UUID, what: str) -> Any:
        from prefect.exceptions import MissingResult

        state, value = await self._final(run_id)
        if not state.is_completed():
            message = shorten(one_line(state.message or "no message"), 500)
            raise ActionFailedError(f"{what}: flow run {run_id} ended {state.name}: {message}", run_id=str(run_id))
        if value is not _MISSING:
            return value
        try:
            return to_jsonable_python(await state.aresult(), fallback=str)
        except MissingResult as exc:
            raise ActionFailedError(
                f"{what}: flow run {run_id} completed, but its result cannot be read here ({_describe(exc)}): "
                "give the flow persist_result=True, result_serializer=\"json\" and result storage this container "
                "can read.", run_id=str(run_id)) from exc

    async def _crash_local_runs(self) -> None:
        from prefect.states import Crashed

        client = self._client
        for local in list(self._local.values()):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.set_flow_run_state(local.run_id, Crashed(
                        message="The flowmas container stopped while this flow run executed in its process."),
                        force=True)
            if not local.done.done():
                local.done.cancel()
        self._local.clear()

    async def _heartbeat_loop(self, seconds: int) -> None:
        from prefect import __version__
        from prefect.events import emit_event

        while True:
            await asyncio.sleep(seconds)
            for local in list(self._local.values()):
                run = local.flow_run
                related = [{"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow"}]
                if run.deployment_id:
                    related.append({"prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                                    "prefect.resource.role": "deployment"})
                with contextlib.suppress(Exception):
                    emit_event(event="prefect.flow-run.heartbeat", related=related, resource={
                        "prefect.resource.id": f"prefect.flow-run.{run.id}",
                        "prefect.resource.name": run.name or "", "prefect.version": __version__})

    # --- reading runs ----------------------------------------------------------------------------------

    async def flow_run(self, run_id: str) -> Any:
        """The flow run ``run_id`` of one of these deployments (400 not an id, 404 unknown or another's run)."""
        return await self._on_loop(self._flow_run(run_id))

    async def _flow_run(self, run_id: str) -> Any:
        from prefect.exceptions import ObjectNotFound

        parsed = _parse_run_id(run_id)
        try:
            run = await self._require_client().read_flow_run(parsed)
        except ObjectNotFound:
            run = None
        if run is None or run.deployment_id not in self._by_id:
            raise ActionFailedError(f"No flow run {run_id} of this container's deployments.", status_code=404,
                                    run_id=run_id)
        return run

    async def status(self, run_id: str) -> RunStatus:
        return await self._on_loop(self._status(run_id))

    async def _status(self, run_id: str) -> RunStatus:
        from prefect.utilities.urls import url_for

        run = await self._flow_run(run_id)
        state = run.state
        info = self._by_id.get(run.deployment_id)
        return RunStatus(
            run_id=str(run.id), name=run.name, deployment=info.name if info else str(run.deployment_id),
            state=state.type.value if state else "UNKNOWN", state_name=state.name if state else "Unknown",
            message=state.message if state else None, final=bool(state and state.is_final()),
            run_count=run.run_count, created=run.created, started=run.start_time, ended=run.end_time,
            url=url_for(run))

    async def run_result(self, run_id: str, *, deadline: float | None) -> Any:
        run = await self.flow_run(run_id)
        info = self._by_id.get(run.deployment_id)
        what = f"Flow run {run_id} of {info.name if info else 'its deployment'}"
        return await self.result(run.id, deadline=deadline, what=what)

    async def follow(self, run_id: str) -> AsyncIterator[bytes]:
        """NDJSON lines of one run: ``state`` lines as it changes, ``log`` lines as they arrive, then ``end``.

        Log lines reach the API in batches (``PREFECT_LOGGING_TO_API_BATCH_INTERVAL``), so after the final
        state the logs are read until a batch interval passes without a new one.
        """
        from prefect.settings import get_current_settings

        run = await self.flow_run(run_id)  # 404 before the response starts
        cursor = _Cursor(run_id=run.id)
        settle = max(get_current_settings().logging.to_api.batch_interval, 0.5) + 0.5
        final_since: float | None = None
        while True:
            lines, final = await self._on_loop(self._read_stream(cursor))
            for line in lines:
                yield line
            now = time.monotonic()
            if final and final_since is None:
                final_since = now
            if final_since is not None and (now - final_since >= settle and not lines):
                yield _line({"event": "end", "runId": str(run.id), "state": cursor.state_type,
                             "stateName": cursor.state_name})
                return
            await asyncio.sleep(self.settings.poll_seconds)

    async def _read_stream(self, cursor: _Cursor) -> tuple[list[bytes], bool]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
        from prefect.client.schemas.sorting import LogSort

        client = self._require_client()
        run = await client.read_flow_run(cursor.run_id)
        lines: list[bytes] = []
        state = run.state
        if state is not None and (state.id != cursor.state_id):
            cursor.state_id, cursor.state_type, cursor.state_name = state.id, state.type.value, state.name
            lines.append(_line({"event": "state", "state": state.type.value, "name": state.name,
                                "message": state.message, "timestamp": state.timestamp}))
        since = LogFilterTimestamp(after_=cast(Any, cursor.after)) if cursor.after else None
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[cursor.run_id]), timestamp=since),
            sort=LogSort.TIMESTAMP_ASC, limit=200)
        for entry in logs:
            if entry.id in cursor.seen:
                continue
            cursor.seen.add(entry.id)
            cursor.after = entry.timestamp
            lines.append(_line({"event": "log", "level": logging.getLevelName(entry.level), "message": entry.message,
                                "timestamp": entry.timestamp, "taskRunId": entry.task_run_id}))
        return lines, bool(state and state.is_final())


@dataclass
class _Cursor:
    run_id: UUID
    state_id: UUID | None = None
    state_type: str | None = None
    state_name: str | None = None
    after: datetime | None = None
    seen: set[UUID] = field(default_factory=set)


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(to_jsonable_python({k: v for k, v in value.items() if v is not None}),
                      ensure_ascii=False).encode() + b"\n"


# --- the agent ---------------------------------------------------------------------------------------------


class DeploymentsAgent(AbstractAgent):
    """Prefect deployments as actions: each tagged deployment, its ``Submit`` twin, and its runs' status."""

    def __init__(self, engine: DeploymentRuns, container: Container | None = None,
                 agent_id: str | None = "deployments") -> None:
        self.engine = engine
        self._served: dict[str, tuple[str, ...]] = {}
        """Action names this agent added for a deployment, by ``flow/deployment``, with what they were built from."""
        self._signatures: dict[str, Any] = {}
        super().__init__(container=container, agent_id=agent_id)
        engine.on_refresh(self._sync)

    @action
    async def get_run_status(self, run_id: str) -> RunStatus:
        """The state of a flow run started by a deployment action: its state, message, times and Prefect UI link."""
        return await self.engine.status(run_id)

    @action
    async def get_run_result(self, run_id: str) -> Any:
        """The result of a flow run started by a deployment action, waiting for it within the timeout."""
        return await self.engine.run_result(run_id, deadline=_deadline(current_invocation(), self))

    def dynamic_stream(self, name: str) -> StreamSpec | None:
        """``GET /stream/<run id>``: the run's states and log lines as NDJSON, until it has finished."""
        try:
            UUID(name)
        except ValueError:
            return None
        engine = self.engine

        async def follow() -> AsyncIterator[bytes]:
            async for line in engine.follow(name):
                yield line

        return StreamSpec(name=name, description="A flow run's states and log lines, as NDJSON.",
                          mode=StreamMode.GET, callback=follow)

    def _sync(self, deployments: Mapping[str, DeploymentInfo]) -> None:
        """Make the actions follow the deployments (called by the engine after each refresh that changed them)."""
        others = self._taken_elsewhere()
        wanted: dict[str, DeploymentInfo] = {}
        for name, info in deployments.items():
            if info.action in others or f"Submit{info.action}" in others:
                log.warning("Deployment %s would be action %s, which agent %s has already; name it with a tag "
                            "'%s:<Name>'.", name, info.action, others.get(info.action) or others.get(
                                f"Submit{info.action}"), self.engine.settings.deployment_tag)
                continue
            wanted[name] = info
        for name in list(self._served):
            if name not in wanted or self._signatures.get(name) != _signature(wanted[name]):
                for action_name in self._served.pop(name):
                    self.remove_action(action_name)
                self._signatures.pop(name, None)
        for name, info in wanted.items():
            if name in self._served:
                continue
            self._served[name] = self._add(info)
            self._signatures[name] = _signature(info)

    def _add(self, info: DeploymentInfo) -> tuple[str, ...]:
        parameters, result, definitions = info.parameters, info.result, info.definitions
        for attempt in range(2):
            try:
                self.add_action(info.action, info.description, parameters, result,
                                self.engine.action_callback(info.name, info.action, wait=True, agent=self),
                                definitions=definitions, deployment=info.name)
                self.add_action(f"Submit{info.action}", f"Starts {info.action} and answers its flow run id at once.",
                                parameters, Parameter(type="string"),
                                self.engine.action_callback(info.name, info.action, wait=False, agent=self),
                                definitions=definitions, deployment=info.name)
                return info.action, f"Submit{info.action}"
            except ConfigurationError:  # a type name another action defines differently: use our own names
                self.remove_action(info.action)
                if attempt:
                    log.warning("Deployment %s cannot be action %s: its types clash with other actions'.",
                                info.name, info.action, exc_info=True)
                    return ()
                parameters, result, definitions = _prefixed(parameters, result, definitions, info.action)
        return ()

    def _taken_elsewhere(self) -> dict[str, str]:
        container = self.container
        if container is None:
            return {}
        return {name: agent.agent_id for agent in container.agents() if agent is not self for name in agent.actions}


def _signature(info: DeploymentInfo) -> Any:
    return (info.action, info.description, tuple(sorted((k, v.model_dump_json()) for k, v in info.parameters.items())),
            info.result.model_dump_json() if info.result else None, json.dumps(info.definitions, sort_keys=True,
                                                                                default=str))


# --- helpers -----------------------------------------------------------------------------------------------


async def _suspension_observer(stack: contextlib.AsyncExitStack) -> Any:
    """Prefect's suspension observer, entered on ``stack``; None when it cannot start (runs then watch alone)."""
    try:
        from prefect._flow_run_suspension import mark_flow_run_suspension_requested
        from prefect._internal.observers import FlowRunSuspendingObserver

        def on_suspended(flow_run_id: UUID, state: Any) -> None:
            mark_flow_run_suspension_requested(flow_run_id, state)

        return await stack.enter_async_context(FlowRunSuspendingObserver(on_suspended=on_suspended))
    except Exception:  # the engine's own per-run observer still works
        log.warning("Prefect's suspension observer did not start; each run executed here watches for itself.",
                    exc_info=True)
        return None


async def _cancellation_observer(stack: contextlib.AsyncExitStack, on_cancelling: Callable[[UUID], None]) -> Any:
    """Prefect's cancellation observer (the runner's), entered on ``stack``; None when it cannot start."""
    try:
        from prefect._internal.observers import FlowRunCancellingObserver

        def cancelling(flow_run_id: UUID) -> None:
            on_cancelling(flow_run_id)

        return await stack.enter_async_context(FlowRunCancellingObserver(on_cancelling=cancelling))
    except Exception:
        log.warning("Prefect's cancellation observer did not start; runs executed here cannot be cancelled.",
                    exc_info=True)
        return None


@functools.cache
def _observed_engine_class() -> type[Any]:
    """Prefect's sync ``FlowRunEngine``, watching for suspension through a shared observer (``watch``)."""
    from prefect._flow_run_suspension import register_flow_run_suspension_request
    from prefect.flow_engine import FlowRunEngine

    @dataclass
    class ObservedFlowRunEngine(FlowRunEngine):  # type: ignore[type-arg]
        watch: Callable[[UUID, bool], None] | None = None

        @contextlib.contextmanager
        def setup_flow_run_suspension_request(self) -> Iterator[Any]:
            assert self.flow_run is not None
            request = self._get_flow_run_suspension_request()
            run_id = self.flow_run.id
            with register_flow_run_suspension_request(run_id, request):
                if self.watch is not None:
                    self.watch(run_id, True)
                try:
                    request.raise_if_requested()
                    yield request
                finally:
                    if self.watch is not None:
                        self.watch(run_id, False)

    return ObservedFlowRunEngine


def _load_flow(entrypoint: str) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


def _check_parameters(info: DeploymentInfo, parameters: dict[str, Any], what: str) -> None:
    """The deployment's own schema (constraints included), before Prefect sees the run: 400, never a 409."""
    if not info.schema.get("properties"):
        return
    schema = {**info.schema, "additionalProperties": True}
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        errors = sorted(validator_class(schema).iter_errors({**info.defaults, **parameters}),
                        key=lambda e: list(e.path))
    except jsonschema.SchemaError:
        return  # the server validates a schema it accepted; nothing better to say here
    if errors:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.path) or 'arguments'}: {shorten(one_line(e.message), 200)}"
                             for e in errors[:5])
        raise InvalidArgumentsError(f"{what}: {problems}.")


def _deadline(call: Invocation | None, agent: AbstractAgent | None) -> float:
    """When a callback must answer: a little before the container's own timeout would answer for it."""
    default = agent.container.default_timeout if agent is not None and agent.container is not None else 30.0
    seconds = call.timeout if call is not None and call.timeout else default
    started = call.started if call is not None else time.monotonic()
    return started + seconds - min(0.25, seconds * 0.1)


def _parse_run_id(run_id: str) -> UUID:
    try:
        return UUID(str(run_id))
    except ValueError:
        raise InvalidArgumentsError(f"run_id {shorten(one_line(str(run_id)), 60)!r} is not a flow run id (a UUID)."
                                    ) from None


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    text = shorten(one_line(str(exc)), 200)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _chain(task: asyncio.Task[T], future: concurrent.futures.Future[T]) -> None:
    if future.done():
        return
    if task.cancelled():
        future.cancel()
    elif (exc := task.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())
