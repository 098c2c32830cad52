"""OPACA agents: ``AbstractAgent``, the ``@action`` and ``@stream`` decorators, ``ActionSpec`` and ``StreamSpec``.

Code written for the ``opaca`` Python SDK runs unchanged: same names, same call styles::

    class Calculator(AbstractAgent):
        \"\"\"Adds numbers.\"\"\"

        @action
        def add(self, x: int, y: int) -> int:
            \"\"\"Adds the two numbers.\"\"\"
            return x + y

        @action(name="Secret", auth=True)
        async def secret(self, login_token: str) -> str: ...

        @stream(mode=StreamDescription.Mode.GET)
        async def ticks(self):
            yield b"tick"

    Calculator(container)                 # or Calculator(container=container, agent_id="calc")

``AbstractAgent(container=None, agent_id=None, agent_type=None, description=None)``: ``agent_id`` defaults to a
uuid4, ``agent_type`` to the class name, ``description`` to the first paragraph of the class's own docstring.
The constructor collects the ``@action``/``@stream`` methods of the class (a subclass overriding one without
the decorator drops it, as in the SDK) and registers the agent with ``container`` when one is given.

- ``@action`` (with or without parentheses; ``name=``, ``description=``, ``auth=``, ``deployment=``): the name
  is the method name in PascalCase (``time_consuming_action`` -> ``TimeConsumingAction``, ``get_URL`` ->
  ``GetURL``), the description the first paragraph of the docstring (lines joined), parameters and result
  from the type hints (``flowmas.opaca.types``). ``auth=True`` requires a ``login_token`` parameter: it is
  hidden from the description and filled, on every call, with the caller's container-login token.
  ``deployment="flow/deployment"`` is only recorded (``spec.deployment``): the Deployments layer runs it.
- ``@stream`` (``mode=`` GET by default): a GET callback returns ``bytes``, ``str``, ``None`` or a (sync or
  async) iterable of them, or is an async generator; a POST callback receives ``data: bytes``.
- ``add_action(name, description, parameters, result, callback, *, auth=False, annotations=None,
  definitions=None, deployment=None)`` registers an action at any time (the Deployments agent does), with
  ``parameters`` as ``Parameter`` models or plain dicts as in the SDK; ``annotations`` (python types by
  parameter name, ``"return"`` for the result) make the container convert JSON to them before the call.
  An ``array`` without ``items`` gets ``Any`` items (the platform refuses every value of the former).
  Adding under an existing name replaces the action (the SDK ignored the second one).
  ``remove_action``, ``add_stream``, ``remove_stream`` likewise; the container is told at once, so
  ``/info`` and the platform (``on_change``) follow.
- ``subscribe_channel``/``unsubscribe_channel``: which ``broadcast`` s reach ``receive_message``.
- ``ActionSpec`` (``name, description, parameters, result, callback, auth, annotations``, plus
  ``definitions`` and ``deployment``; ``.action()`` is the wire model, ``.prepare(arguments)`` validates and
  converts, ``.to_json(result)`` gives the JSON form) and ``StreamSpec`` (``name, description, mode,
  callback, auth``) are what the container runs; ``action_spec(func, ...)`` describes any function as
  ``@action`` would, for ``add_action_spec``.
- Hooks to override: ``receive_message`` (default: nothing), ``handle_login`` (default: login not supported;
  return ``None``/``True`` to accept, ``False`` or raise ``LoginFailedError`` to refuse), ``handle_logout``,
  ``dynamic_stream(name)`` for streams not listed in ``/info`` (e.g. one per flow run). Each may be sync or
  async, as SDK agents write them.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from flowmas.errors import LoginNotSupportedError
from flowmas.opaca.models import Action, AgentDescription, LoginMsg, Message, Parameter, StreamDescription, StreamMode
from flowmas.opaca.types import normalise_parameter, signature_for
from flowmas.opaca.validation import (
    Converter,
    SchemaValidators,
    build_converters,
    convert_arguments,
    to_json,
    validate_arguments,
)

if TYPE_CHECKING:
    from flowmas.opaca.container import Container

F = TypeVar("F", bound=Callable[..., Any])

LOGIN_TOKEN = "login_token"
"""The parameter an ``auth`` action receives the caller's container-login token in."""
_ACTION_MARK = "__opaca_action__"
_STREAM_MARK = "__opaca_stream__"


def pascal_case(name: str) -> str:
    """``time_consuming_action`` -> ``TimeConsumingAction``; each word keeps its rest (``get_URL`` -> ``GetURL``)."""
    return "".join(word[:1].upper() + word[1:] for word in re.split(r"[_\-\s]+", name) if word)


def clean_description(doc: str | None) -> str | None:
    """The first paragraph of a docstring, its lines joined: what a platform user (or an LLM) reads."""
    if not doc:
        return None
    paragraph = inspect.cleandoc(doc).split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in paragraph.splitlines()).strip()
    return text or None


def _is_async(callback: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(callback) or inspect.isasyncgenfunction(callback):
        return True
    call = getattr(type(callback), "__call__", None)  # noqa: B004 - an object whose __call__ is async
    return call is not None and not inspect.isfunction(callback) and inspect.iscoroutinefunction(call)


def _accepts(callback: Callable[..., Any], name: str) -> bool:
    """Whether ``callback`` takes a keyword argument ``name`` (by name, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(callback).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


@dataclass(eq=False)
class ActionSpec:
    """An action as the container runs it: the wire description plus the callable and its types.

    ``callback`` is sync or async and is called with keyword arguments (validated, converted); with ``auth``
    it also gets ``login_token`` (when it accepts one), which is never among ``parameters``.
    """

    name: str
    description: str | None
    parameters: dict[str, Parameter]
    result: Parameter | None
    callback: Callable[..., Any]
    auth: bool = False
    annotations: dict[str, Any] = field(default_factory=dict)
    """Python types by parameter name (and ``"return"``) that JSON is converted to; may be empty."""
    definitions: dict[str, Any] = field(default_factory=dict)
    """JSON schemas of the non-JSON type names the parameters use; merged into ``image.definitions``."""
    deployment: str | None = None
    """``flow/deployment`` this action runs (the Deployments layer's business; recorded here only)."""
    is_async: bool = field(init=False)
    takes_login_token: bool = field(init=False)
    converters: dict[str, Converter | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.is_async = _is_async(self.callback)
        self.takes_login_token = self.auth and _accepts(self.callback, LOGIN_TOKEN)
        self.converters = build_converters(self.annotations, self.parameters)
        self._validators = SchemaValidators(self.definitions)

    def action(self) -> Action:
        """The wire model (``login_token`` is never listed)."""
        return Action(name=self.name, description=self.description, parameters=dict(self.parameters),
                      result=self.result)

    def prepare(self, arguments: object,
                validators: SchemaValidators | Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The callback's keyword arguments from JSON ``arguments``: validated, defaults filled, converted.

        ``validators`` default to the action's own definitions (a container passes its merged ones).
        """
        checked = validate_arguments(arguments, self.parameters,
                                     self._validators if validators is None else validators, action=self.name)
        return convert_arguments(checked, self.parameters, self.annotations, converters=self.converters,
                                 action=self.name)

    def to_json(self, result: Any) -> Any:
        """The callback's result in its JSON form, by the declared return type."""
        return to_json(result, self.annotations.get("return", Any))


@dataclass(eq=False)
class StreamSpec:
    """A stream: GET callbacks produce bytes, POST callbacks receive them (``data``)."""

    name: str
    description: str | None
    mode: StreamMode
    callback: Callable[..., Any]
    auth: bool = False
    takes_login_token: bool = field(init=False)

    def __post_init__(self) -> None:
        self.mode = StreamMode(self.mode)
        self.takes_login_token = self.auth and _accepts(self.callback, LOGIN_TOKEN)

    def stream(self) -> StreamDescription:
        return StreamDescription(name=self.name, mode=self.mode, description=self.description)


@dataclass(frozen=True)
class _Mark:
    name: str | None
    description: str | None
    auth: bool
    deployment: str | None = None
    mode: StreamMode = StreamMode.GET


def _mark(func: Any, attribute: str, mark: _Mark) -> Any:
    target = func.__func__ if isinstance(func, staticmethod | classmethod) else func
    setattr(target, attribute, mark)
    return func


@overload
def action(func: F, /) -> F: ...
@overload
def action(*, name: str | None = None, description: str | None = None, auth: bool = False,
           deployment: str | None = None) -> Callable[[F], F]: ...


def action(func: Any = None, /, *, name: str | None = None, description: str | None = None, auth: bool = False,
           deployment: str | None = None) -> Any:
    """Marks a method as an action of its agent (``@action`` or ``@action(name=..., auth=True, ...)``)."""
    mark = _Mark(name=name or None, description=description or None, auth=auth, deployment=deployment)
    if func is not None:
        return _mark(func, _ACTION_MARK, mark)
    return lambda f: _mark(f, _ACTION_MARK, mark)


@overload
def stream(func: F, /) -> F: ...
@overload
def stream(*, name: str | None = None, description: str | None = None, mode: StreamMode | str = StreamMode.GET,
           auth: bool = False) -> Callable[[F], F]: ...


def stream(func: Any = None, /, *, name: str | None = None, description: str | None = None,
           mode: StreamMode | str = StreamMode.GET, auth: bool = False) -> Any:
    """Marks a method as a stream (``@stream`` or ``@stream(mode=StreamDescription.Mode.POST, ...)``)."""
    mark = _Mark(name=name or None, description=description or None, auth=auth, mode=StreamMode(mode))
    if func is not None:
        return _mark(func, _STREAM_MARK, mark)
    return lambda f: _mark(f, _STREAM_MARK, mark)


def action_spec(func: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                auth: bool = False, deployment: str | None = None) -> ActionSpec:
    """The ``ActionSpec`` of a (bound) function, described from its name, docstring and type hints."""
    if auth and not _accepts(func, LOGIN_TOKEN):
        raise TypeError(f"{getattr(func, '__qualname__', func)!r} is an auth action and needs a parameter "
                        f"'{LOGIN_TOKEN}: str' (the caller's container-login token is passed in it).")
    signature = signature_for(func, skip=("self", LOGIN_TOKEN) if auth else ("self",))
    return ActionSpec(
        name=name or pascal_case(getattr(func, "__name__", type(func).__name__)),
        description=description if description is not None else clean_description(inspect.getdoc(func)),
        parameters=signature.parameters,
        result=signature.result,
        callback=func,
        auth=auth,
        annotations=signature.annotations,
        definitions=signature.definitions,
        deployment=deployment,
    )


MAX_KEPT_MESSAGES = 1000
"""How many received messages an agent keeps in ``messages`` by default."""


class AbstractAgent:
    """An OPACA agent: actions and streams, messages, logins. Subclass it (see the module docstring)."""

    def __init__(self, container: Container | None = None, agent_id: str | None = None,
                 agent_type: str | None = None, description: str | None = None) -> None:
        self.agent_id: str = agent_id or str(uuid.uuid4())
        self.agent_type: str = agent_type or type(self).__name__
        own_doc = type(self).__dict__.get("__doc__") if type(self) is not AbstractAgent else None
        self.description: str | None = description if description is not None else clean_description(own_doc)
        self.container: Container | None = None
        self.channels: set[str] = set()
        self.messages: deque[Message] = deque(maxlen=MAX_KEPT_MESSAGES)
        self._actions: dict[str, ActionSpec] = {}
        self._streams: dict[str, StreamSpec] = {}
        self._collect_decorated()
        if container is not None:
            container.add_agent(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.agent_id}>"

    async def on_shutdown(self) -> None:
        """Called once when the container shuts down (the app's lifespan ends): release what the agent made
        (clients, pools, files). Sync or async in a subclass; what it raises is logged, never re-raised."""

    # --- decorated methods -------------------------------------------------------------------------------

    def _collect_decorated(self) -> None:
        names: dict[str, None] = {}
        for klass in reversed(type(self).__mro__):  # base classes first, then definition order
            names.update(dict.fromkeys(vars(klass)))
        for attribute in names:
            try:
                static = inspect.getattr_static(self, attribute)
            except AttributeError:
                continue
            target = static.__func__ if isinstance(static, staticmethod | classmethod) else static
            if not inspect.isfunction(target):
                continue
            action_mark = getattr(target, _ACTION_MARK, None)
            stream_mark = getattr(target, _STREAM_MARK, None)
            if isinstance(action_mark, _Mark):
                spec = action_spec(getattr(self, attribute), name=action_mark.name,
                                   description=action_mark.description, auth=action_mark.auth,
                                   deployment=action_mark.deployment)
                self._actions[spec.name] = spec
            if isinstance(stream_mark, _Mark):
                bound = getattr(self, attribute)
                self._streams[stream_mark.name or pascal_case(attribute)] = StreamSpec(
                    name=stream_mark.name or pascal_case(attribute),
                    description=(stream_mark.description if stream_mark.description is not None
                                 else clean_description(inspect.getdoc(bound))),
                    mode=stream_mark.mode, callback=bound, auth=stream_mark.auth)

    # --- actions and streams -----------------------------------------------------------------------------

    @property
    def actions(self) -> Mapping[str, ActionSpec]:
        """The actions by name (read-only: change them with ``add_action``/``remove_action``)."""
        return MappingProxyType(self._actions)

    @property
    def streams(self) -> Mapping[str, StreamSpec]:
        return MappingProxyType(self._streams)

    def get_action(self, name: str) -> ActionSpec | None:
        return self._actions.get(name)

    def knows_action(self, name: str) -> bool:
        return name in self._actions

    def get_stream(self, name: str) -> StreamSpec | None:
        return self._streams.get(name)

    def knows_stream(self, name: str) -> bool:
        return name in self._streams

    def add_action(self, name: str, description: str | None, parameters: Mapping[str, Parameter | Mapping[str, Any]],
                   result: Parameter | Mapping[str, Any] | None, callback: Callable[..., Any], *, auth: bool = False,
                   annotations: Mapping[str, Any] | None = None, definitions: Mapping[str, Any] | None = None,
                   deployment: str | None = None) -> ActionSpec:
        """Adds (or replaces) an action; ``parameters`` and ``result`` as models or SDK-style dicts."""
        own_definitions = dict(definitions or {})
        normalised = {key: normalise_parameter(value, own_definitions) for key, value in parameters.items()
                      if not (auth and key == LOGIN_TOKEN)}
        spec = ActionSpec(
            name=name, description=description, parameters=normalised,
            result=normalise_parameter(result, own_definitions) if result is not None else None,
            callback=callback, auth=auth, annotations=dict(annotations or {}), definitions=own_definitions,
            deployment=deployment)
        return self.add_action_spec(spec)

    def add_action_spec(self, spec: ActionSpec) -> ActionSpec:
        """Adds (or replaces) an action described beforehand (``action_spec(func)``)."""
        def change() -> None:
            self._actions[spec.name] = spec

        self._apply(change, spec)
        return spec

    def remove_action(self, name: str) -> None:
        """Removes an action; an unknown name is ignored, as in the SDK."""
        if name in self._actions:
            self._apply(lambda: self._actions.pop(name, None))

    def add_stream(self, name: str, description: str | None, mode: StreamMode | str,
                   callback: Callable[..., Any], *, auth: bool = False) -> StreamSpec:
        """Adds (or replaces) a stream."""
        spec = StreamSpec(name=name, description=description, mode=StreamMode(mode), callback=callback, auth=auth)

        def change() -> None:
            self._streams[name] = spec

        self._apply(change)
        return spec

    def remove_stream(self, name: str) -> None:
        if name in self._streams:
            self._apply(lambda: self._streams.pop(name, None))

    def _apply(self, change: Callable[[], Any], spec: ActionSpec | None = None) -> None:
        """Applies a change, through the container when registered (it checks definitions and tells listeners)."""
        container = self.container
        if container is not None and container.holds(self):
            container._commit(self, change, spec)
        else:
            change()

    # --- messages, logins, descriptions ------------------------------------------------------------------

    def subscribe_channel(self, channel: str) -> None:
        """Receive the messages ``broadcast`` to ``channel``."""
        self.channels.add(channel)

    def unsubscribe_channel(self, channel: str) -> None:
        self.channels.discard(channel)

    def receive_message(self, message: Message) -> None:
        """Called with every message sent to this agent or broadcast to a channel it subscribed; override it.

        By default the message is kept in ``self.messages`` (the SDK's behaviour, which overrides calling
        ``super().receive_message(message)`` rely on), bounded to the ``MAX_KEPT_MESSAGES`` most recent so
        that a flood of broadcasts cannot grow the process without end. An override may be ``async``.
        """
        self.messages.append(message)

    async def handle_login(self, login: LoginMsg) -> bool | None:
        """Checks a container login; override to support logins.

        Return ``None`` or ``True`` to accept (keep what you need under ``login.token``), ``False`` or raise
        ``LoginFailedError`` to refuse. Not overridden, the agent takes no part in logins.
        """
        raise LoginNotSupportedError(f"Agent {self.agent_id} does not support login.")

    async def handle_logout(self, token: str) -> None:
        """Forget what the login of ``token`` left (called for the agents that accepted it)."""

    def dynamic_stream(self, name: str) -> StreamSpec | None:
        """A stream not listed in ``/info`` (e.g. one per flow run), or ``None``; consulted for unknown names."""
        return None

    def get_description(self) -> AgentDescription:
        return AgentDescription(
            agent_id=self.agent_id,
            agent_type=self.agent_type,
            description=self.description,
            actions=[spec.action() for spec in self._actions.values()],
            streams=[spec.stream() for spec in self._streams.values()],
        )

    def make_description(self) -> AgentDescription:
        """The SDK's name of ``get_description``."""
        return self.get_description()


def supports_login(agent: AbstractAgent) -> bool:
    """True when the agent's class overrides ``handle_login`` (so it is asked at a container login)."""
    return getattr(type(agent), "handle_login", None) is not AbstractAgent.handle_login
