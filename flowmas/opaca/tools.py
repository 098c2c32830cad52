"""A container's actions as LLM tools: ``ToolSpec`` s built from any OPACA ``/info`` (ours, or a platform's).

    tools = tools_from_info(container.info(), container_invoker(container))            # in process
    tools = tools_from_info(httpx.get(f"{url}/info").json(), http_invoker(url, token))  # a remote container
    result = await client.tool_chain("Plan the research graph", tools)

One tool per action of every agent. Its arguments schema is a JSON schema (an object) built from the action's
OPACA parameters: ``string``/``integer``/``number``/``boolean``/``null``, ``array`` with ``items``
(recursively), ``object``, ``Any`` (no constraint), and any other type name looked up in the image's
``definitions`` (inlined; the nested ``definitions`` of a recursive one are hoisted to the schema's root, where
its ``#/definitions/<name>`` references resolve). A name nobody defined accepts any value (the platform skips
checking it too). ``required: true`` parameters are required; a ``defaultValue`` becomes ``default``.

Tool names. Every provider wants ``^[a-zA-Z0-9_-]{1,64}$``. An action name that is valid and unique in the
container is the tool's name as is (``Greet``): what a model reads best. Otherwise the name is
``<agentId>--<action>`` when that is valid and unique, else a sanitised prefix plus ``-`` and 8 hex digits of
a hash of the agent id and action. Nothing has to be decoded: every tool's function is an ``ActionCall``
holding ``agent_id`` and ``action`` (``action_of(tool)``), so the mapping is exact both ways.

Calls. ``invoke(action, agent_id, arguments)`` (an awaitable) runs an action: ``container_invoker`` calls
``Container.invoke`` in this process, ``http_invoker`` posts ``/invoke/{action}/{agentId}`` with the platform's
bearer token. The container checks the arguments: a model's bad arguments, an unknown action or a failing
action raise, and ``tool_chain`` hands the error's text to the model as an error result (the loop goes on).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flowmas.errors import ActionFailedError, ConfigurationError
from flowmas.opaca.models import AgentContainer, ArrayItems, Parameter
from flowmas.opaca.types import ANY, JSON_TYPES

if TYPE_CHECKING:
    from flowmas.llm import Tool
    from flowmas.opaca.container import Container

__all__ = ["ActionCall", "Invoker", "action_of", "container_invoker", "http_invoker", "parameter_schema",
           "tool_name", "tools_from_info"]

Invoker = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
"""``invoke(action, agent_id, arguments)``: runs one action, returns its JSON result or raises."""

_VALID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_REF_PREFIX = "#/definitions/"
MAX_ERROR_TEXT = 500


class ActionCall:
    """The function behind one tool: calls ``action`` of ``agent_id`` through the invoker with the model's
    arguments (a dict; ``Tool`` hands it over as is)."""

    __slots__ = ("action", "agent_id", "invoke")

    def __init__(self, invoke: Invoker, agent_id: str, action: str) -> None:
        self.invoke = invoke
        self.agent_id = agent_id
        self.action = action

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        return await self.invoke(self.action, self.agent_id, dict(arguments))

    def __repr__(self) -> str:
        return f"ActionCall({self.agent_id!r}, {self.action!r})"


def action_of(tool: Tool) -> tuple[str, str] | None:
    """``(agent_id, action)`` of a tool ``tools_from_info`` built, else None."""
    fn = tool.fn
    return (fn.agent_id, fn.action) if isinstance(fn, ActionCall) else None


def _hashed(agent_id: str, action: str) -> str:
    digest = hashlib.sha256(f"{agent_id}\x00{action}".encode()).hexdigest()[:8]
    stem = _UNSAFE.sub("_", f"{agent_id}--{action}").strip("_") or "action"
    return f"{stem[:55]}-{digest}"


def tool_name(agent_id: str, action: str, *, taken: Iterable[str] = (), action_unique: bool = True) -> str:
    """The tool name of ``action`` of ``agent_id`` (see the module docstring); never one of ``taken``."""
    used = set(taken)
    for candidate in ([action] if action_unique else []) + [f"{agent_id}--{action}", _hashed(agent_id, action)]:
        if _VALID.match(candidate) and candidate not in used:
            return candidate
    counter = 2
    while True:  # a hash collision with a taken name: astronomically rare, still never a duplicate
        candidate = f"{_hashed(agent_id, action)[:52]}-{counter}"
        if candidate not in used:
            return candidate
        counter += 1


# --- schemas ------------------------------------------------------------------------------------------------


class _Schemas:
    """Builds JSON schemas of OPACA types, collecting the definitions they need at the root."""

    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self.definitions = definitions
        self.root: dict[str, Any] = {}

    def of_type(self, type_name: str, items: ArrayItems | None) -> dict[str, Any]:
        if type_name == "array":
            return {"type": "array", "items": self.of_type(items.type, items.items) if items is not None else {}}
        if type_name in JSON_TYPES:
            return {"type": type_name}
        if type_name == ANY:
            return {}
        found = self.definitions.get(type_name)
        if not isinstance(found, Mapping):
            return {"description": f"A value of type {type_name} (not defined by the container)."}
        return self._inline(found)

    def _inline(self, found: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a definition; its nested ``definitions`` and every definition it refers to go to the root."""
        schema = copy.deepcopy(dict(found))
        nested = schema.pop("definitions", None)
        if isinstance(nested, Mapping):
            for name, value in nested.items():
                self.root.setdefault(str(name), value)
        for name in _references(schema):
            if name not in self.root and isinstance(self.definitions.get(name), Mapping):
                self.root[name] = {}  # reserved first: a cycle of references ends here
                self.root[name] = self._inline(self.definitions[name])
        return schema


def _references(value: Any) -> list[str]:
    """The names of every ``#/definitions/<name>`` reference in ``value``."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
                found.append(ref[len(_REF_PREFIX):])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def parameter_schema(parameters: Mapping[str, Parameter],
                     definitions: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON schema (an object) of an action's parameters."""
    schemas = _Schemas(definitions or {})
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in parameters.items():
        prop = schemas.of_type(parameter.type, parameter.items)
        if parameter.default_value is not None:
            prop = {**prop, "default": parameter.default_value}
        properties[name] = prop
        if parameter.required:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if schemas.root:
        schema["definitions"] = schemas.root
    return schema


# --- tools --------------------------------------------------------------------------------------------------


def _describe(agent_id: str, agent_description: str | None, action: str, description: str | None) -> str:
    text = (description or "").strip() or f"The action {action}."
    about = f" ({agent_description.strip()})" if agent_description and agent_description.strip() else ""
    return f"{text} [OPACA action {action} of agent {agent_id}{about}]"[:1024]


def tools_from_info(
    info: AgentContainer | Mapping[str, Any],
    invoke: Invoker,
    *,
    exclude_agents: Iterable[str] = (),
    exclude_actions: Iterable[str] = (),
    include: Callable[[str, str], bool] | None = None,
) -> list[Tool]:
    """One ``Tool`` per action of ``info`` (an ``AgentContainer`` or its ``/info`` JSON), in ``/info`` order.

    ``exclude_agents`` (agent ids) and ``exclude_actions`` (action names, or ``agentId/action``) leave actions
    out; ``include(agent_id, action)`` may leave out more (False: left out)."""
    from flowmas.llm import Tool, ToolSpec

    try:
        container = info if isinstance(info, AgentContainer) else AgentContainer.model_validate(info)
    except ValueError as exc:
        raise ConfigurationError(f"Not an OPACA container description (/info): {exc}") from None
    skip_agents = set(exclude_agents)
    skip_actions = set(exclude_actions)
    definitions = container.image.definitions
    chosen = [(agent, action) for agent in container.agents if agent.agent_id not in skip_agents
              for action in agent.actions
              if action.name not in skip_actions and f"{agent.agent_id}/{action.name}" not in skip_actions
              and (include is None or include(agent.agent_id, action.name))]
    counts: dict[str, int] = {}
    for _, action in chosen:
        counts[action.name] = counts.get(action.name, 0) + 1
    tools: list[Tool] = []
    taken: set[str] = set()
    for agent, action in chosen:
        name = tool_name(agent.agent_id, action.name, taken=taken, action_unique=counts[action.name] == 1)
        taken.add(name)
        spec = ToolSpec(name=name, description=_describe(agent.agent_id, agent.description, action.name,
                                                         action.description),
                        input_schema=parameter_schema(action.parameters, definitions))
        tools.append(Tool(spec, ActionCall(invoke, agent.agent_id, action.name), takes_dict=True))
    return tools


# --- invokers -----------------------------------------------------------------------------------------------


def container_invoker(container: Container, *, timeout: float | None = None,
                      login_token: str | None = None) -> Invoker:
    """Runs actions of ``container`` in this process (``Container.invoke``: the same checks as over HTTP)."""

    async def invoke(action: str, agent_id: str, arguments: dict[str, Any]) -> Any:
        return await container.invoke(action, arguments, agent_id=agent_id, timeout=timeout, login_token=login_token)

    return invoke


def http_invoker(base_url: str, token: str | None = None, *, timeout: float = 60.0,
                 headers: Mapping[str, str] | None = None, client: Any = None) -> Invoker:
    """Runs actions over HTTP: ``POST {base_url}/invoke/{action}/{agentId}`` (a container, or a platform),
    with ``Authorization: Bearer <token>`` when given. ``client``: an ``httpx.AsyncClient`` to reuse (its
    base URL is ignored); else one per call. An error answer raises ``ActionFailedError`` with its status and
    the ErrorResponse's message (never the token)."""
    import httpx

    root = base_url.rstrip("/")
    sent = dict(headers or {})
    if token:
        sent["Authorization"] = f"Bearer {token}"

    async def post(http: httpx.AsyncClient, url: str, arguments: dict[str, Any]) -> httpx.Response:
        return await http.post(url, json=arguments, headers=sent, params={"timeout": timeout}, timeout=timeout + 5)

    async def invoke(action: str, agent_id: str, arguments: dict[str, Any]) -> Any:
        url = f"{root}/invoke/{quote(action, safe='')}/{quote(agent_id, safe='')}"
        try:
            if client is not None:
                response = await post(client, url, arguments)
            else:
                async with httpx.AsyncClient() as http:
                    response = await post(http, url, arguments)
        except httpx.HTTPError as exc:
            raise ActionFailedError(f"Cannot reach {root} to invoke {action}: {type(exc).__name__}",
                                    status_code=502) from None
        if response.status_code >= 400:
            raise ActionFailedError(_error_text(response), status_code=response.status_code)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    return invoke


def _error_text(response: Any) -> str:
    message = ""
    try:
        body = response.json()
        if isinstance(body, Mapping):
            message = str(body.get("message") or body.get("detail") or "")
    except ValueError:
        message = response.text
    message = " ".join(message.split())[:MAX_ERROR_TEXT]
    return f"HTTP {response.status_code}: {message or 'no message'}"
