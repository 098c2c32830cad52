"""Prefect tasks over the inference clients (``flowmas.llm``): one task run per model call, a usage table per flow run.

    response = await llm_call("openai-model/prod", "Summarise: ...")        # in a flow: one task run "llm-call"
    response = await llm_call(OpenAIModel(model="gpt-4o", ...), [...], tools=[...], temperature=0)
    write_usage_artifact()                                                   # the flow run's table artifact

``llm_call(model, messages, ...)`` takes a model block (``AnthropicModel``, ``OpenAIModel``, ``BedrockModel``,
``VertexModel``) or the name of a saved one (``<slug>/<name>`` or ``<name>``), and runs the task ``llm_call_task``
with the tags ``llm`` and ``llm:<provider>``. A Prefect tag concurrency limit on ``llm:openai`` (``prefect
concurrency-limit create llm:openai 4``) therefore caps parallel OpenAI calls across every flow run of the
workspace; one on ``llm`` caps all of them. (The tag is per provider, so it is set when the run is created:
``llm_call`` resolves the block first. Calling ``llm_call_task`` directly gives the run the ``llm`` tag only.)

Retries: the client makes one attempt per task run (``RetryPolicy(max_attempts=1)``) and Prefect retries (3
retries, 2/10/30 s, jittered), only when ``flowmas.errors.is_transient`` says the failure may pass: a 429, a
5xx/529, a timeout or a dropped connection is retried (a provider's ``retry-after`` longer than the planned
delay is waited: ``tasks.retries.transient_only_async``); a 400, 401, 404 or a context-window overflow fails
at once.

Caching: none (``NO_CACHE``) unless asked: ``llm_call(..., cache=True)`` keys the result on the model's identity
(provider, model, endpoint; never a credential) and the call's arguments, so a repeated identical call in any
flow run gets the stored ``Response`` (persisted results).

Usage: each successful call adds its ``Usage`` to the flow run's ledger (this process's memory, keyed by flow
run id): calls, failed calls, input/output/cache tokens and, when the block has prices, the cost in USD.
``write_usage_artifact()`` writes it as the table artifact ``llm-usage`` (one row per ``provider/model``, and a
total) and forgets it; ``usage_rows()`` reads it without writing. Rows and logs name ``provider/model`` only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import TaskRunContext

from blocks.llm import ModelBlock, load_model_block
from flowmas.llm import Message, Response, ToolSpec, Usage
from flowmas.llm.retry import NO_RETRIES
from tasks.logs import forward_core_logs
from tasks.retries import transient_only_async

__all__ = ["UsageLedger", "ledger", "llm_call", "llm_call_task", "provider_tags", "resolve_model", "usage_rows",
           "write_usage_artifact"]

log = logging.getLogger("flowmas.tasks.llm")

USAGE_ARTIFACT = "llm-usage"
RETRY_DELAYS: list[float] = [2.0, 10.0, 30.0]


def resolve_model(model: ModelBlock | str) -> ModelBlock:
    """The block itself, or the saved one a ``<slug>/<name>`` / ``<name>`` reference names."""
    if isinstance(model, ModelBlock):
        return model
    return load_model_block(model)


def provider_tags(model: ModelBlock) -> list[str]:
    """The tags of a call of ``model``: ``llm`` and ``llm:<provider>``."""
    return ["llm", f"llm:{model.provider}"]


# --- usage per flow run -------------------------------------------------------------------------------------


@dataclass
class _Line:
    calls: int = 0
    failed: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None


class UsageLedger:
    """Token usage per flow run and ``provider/model``, in this process (thread-safe)."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[str, _Line]] = {}
        self._lock = threading.Lock()

    def record(self, run: str, label: str, usage: Usage | None, cost: float | None) -> None:
        """One call: its usage (None: it failed) and its cost (None: unpriced)."""
        with self._lock:
            line = self._runs.setdefault(run, {}).setdefault(label, _Line())
            if usage is None:
                line.failed += 1
                return
            line.calls += 1
            line.usage = line.usage + usage
            if cost is not None:
                line.cost = (line.cost or 0.0) + cost

    def rows(self, run: str) -> list[dict[str, Any]]:
        """The table: one row per model (sorted), then ``total`` when there are several."""
        with self._lock:
            lines = dict(sorted(self._runs.get(run, {}).items()))
        rows = [_row(label, line) for label, line in lines.items()]
        if len(rows) > 1:
            total = _Line()
            for line in lines.values():
                total.calls += line.calls
                total.failed += line.failed
                total.usage = total.usage + line.usage
                if line.cost is not None:
                    total.cost = (total.cost or 0.0) + line.cost
            rows.append(_row("total", total))
        return rows

    def forget(self, run: str) -> None:
        with self._lock:
            self._runs.pop(run, None)


def _row(label: str, line: _Line) -> dict[str, Any]:
    return {"model": label, "calls": line.calls, "failed": line.failed, "input_tokens": line.usage.input_tokens,
            "output_tokens": line.usage.output_tokens, "cache_read_tokens": line.usage.cache_read_input_tokens,
            "cache_write_tokens": line.usage.cache_write_input_tokens,
            "cost_usd": round(line.cost, 6) if line.cost is not None else None}


ledger = UsageLedger()
"""The process's ledger (what ``llm_call_task`` records into)."""


def _current_flow_run() -> str | None:
    context = TaskRunContext.get()
    if context is not None and context.task_run.flow_run_id is not None:
        return str(context.task_run.flow_run_id)
    from prefect.context import FlowRunContext

    flow_context = FlowRunContext.get()
    if flow_context is not None and flow_context.flow_run is not None:
        return str(flow_context.flow_run.id)
    return None


def usage_rows(flow_run_id: str | None = None) -> list[dict[str, Any]]:
    """The usage table of ``flow_run_id`` (default: the current flow run) so far."""
    run = flow_run_id or _current_flow_run()
    return ledger.rows(run) if run else []


def write_usage_artifact(flow_run_id: str | None = None, *, key: str = USAGE_ARTIFACT) -> list[dict[str, Any]]:
    """Write the flow run's usage as a table artifact (``key``), forget it, and return its rows (none: nothing
    written)."""
    run = flow_run_id or _current_flow_run()
    if run is None:
        return []
    rows = ledger.rows(run)
    if rows:
        last = rows[-1]
        cost = f", {last['cost_usd']:.4f} USD" if last["cost_usd"] is not None else ""
        description = (f"LLM usage: {last['calls']} calls, {last['input_tokens']} input and "
                       f"{last['output_tokens']} output tokens{cost}")
        create_table_artifact(rows, key=key, description=description, _sync=True)  # type: ignore[call-arg]
    ledger.forget(run)
    return rows


# --- the task -----------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (Message, ToolSpec)):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _identity(block: ModelBlock) -> dict[str, Any]:
    """What makes two blocks the same model (no credential)."""
    fields = {"provider": block.provider, "model": block.model, "max_tokens": block.max_tokens,
              "temperature": block.temperature}
    for name in ("base_url", "endpoint_url", "region", "project_id", "api"):
        if name in type(block).model_fields:
            fields[name] = getattr(block, name)
    return fields


def llm_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """``cache_key_fn`` of ``llm_call(cache=True)``: the model's identity and the call's arguments."""
    model = resolve_model(parameters["model"])
    blob = {"model": _identity(model), **{k: _jsonable(v) for k, v in parameters.items() if k != "model"}}
    text = json.dumps(blob, sort_keys=True, default=str)
    return "flowmas-llm-" + hashlib.sha256(text.encode()).hexdigest()


@task(name="llm-call", retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS, retry_jitter_factor=0.2,
      retry_condition_fn=transient_only_async, cache_policy=NO_CACHE, persist_result=False, tags=["llm"])
async def llm_call_task(
    model: ModelBlock | str,
    messages: str | Sequence[Message | Mapping[str, Any]],
    system: str | None = None,
    tools: Sequence[ToolSpec | Mapping[str, Any]] | None = None,
    tool_choice: str = "auto",
    max_tokens: int | None = None,
    temperature: float | None = None,
    stop: Sequence[str] | str | None = None,
) -> Response:
    """One model call, one attempt (Prefect retries transient failures); its ``Response``."""
    forward_core_logs()
    block = resolve_model(model)
    label = block.label()
    options: dict[str, Any] = {**block.call_defaults()}
    if temperature is not None:
        options["temperature"] = temperature
    client = block.client(retry=NO_RETRIES)
    run = _current_flow_run()
    try:
        response = await client.complete(messages, system=system, tools=tools, tool_choice=tool_choice,
                                         max_tokens=max_tokens, stop=stop, **options)
    except Exception:
        if run is not None:
            ledger.record(run, label, None, None)
        raise
    finally:
        await client.aclose()
    if run is not None:
        ledger.record(run, label, response.usage, block.cost(response.usage))
    log.info("%s answered (%s): %d input, %d output tokens", label, response.stop_reason,
             response.usage.prompt_tokens, response.usage.output_tokens)
    return response


async def llm_call(
    model: ModelBlock | str,
    messages: str | Sequence[Message | Mapping[str, Any]],
    *,
    system: str | None = None,
    tools: Sequence[ToolSpec | Mapping[str, Any]] | None = None,
    tool_choice: str = "auto",
    max_tokens: int | None = None,
    temperature: float | None = None,
    stop: Sequence[str] | str | None = None,
    cache: bool = False,
    retry_delay_seconds: float | Sequence[float] | None = None,
) -> Response:
    """Run ``llm_call_task`` tagged ``llm`` and ``llm:<provider>`` (see the module docstring); its ``Response``.

    ``cache=True`` reuses the stored answer of an identical earlier call; ``retry_delay_seconds`` replaces the
    delays between retries (tests: 0)."""
    block = resolve_model(model)
    options: dict[str, Any] = {"tags": provider_tags(block), "task_run_name": f"llm {block.label()}"}
    if cache:
        options.update(cache_policy=CachePolicy.from_cache_key_fn(llm_cache_key), persist_result=True)
    if retry_delay_seconds is not None:
        delays = [float(retry_delay_seconds)] if isinstance(retry_delay_seconds, (int, float)) \
            else [float(d) for d in retry_delay_seconds]
        options["retry_delay_seconds"] = delays * (len(RETRY_DELAYS) if len(delays) == 1 else 1)
    configured: Any = llm_call_task.with_options(**options)
    response = await configured(block, messages, system=system, tools=tools, tool_choice=tool_choice,
                                max_tokens=max_tokens, temperature=temperature, stop=stop)
    return cast(Response, response)
