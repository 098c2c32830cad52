"""OPACA agent containers, without HTTP: wire models, agents, the container, argument validation.

Invariants: ``/info`` is built once per change and never waits for an action; every argument is checked
with the platform's rules before a callback sees it; every failure leaves the container as it was and is one
of the ``OpacaError`` s of ``flowmas.errors`` (the face maps each to its HTTP status in one table).

    models        the wire models (camelCase JSON, no nulls)
    types         python type hints -> Parameter + definitions
    validation    the platform's argument rules, then conversion for the callback
    agent         AbstractAgent, @action, @stream, ActionSpec, StreamSpec (SDK-compatible)
    container     Container: image, environment handshake, agents, invoke/streams/messages/logins
    capabilities  built-in agents through the ``flowmas.agents`` entry point group
"""

from flowmas.opaca.agent import AbstractAgent, ActionSpec, StreamSpec, action, action_spec, stream
from flowmas.opaca.capabilities import ENTRY_POINT_GROUP, AgentContext, load_builtin_agents
from flowmas.opaca.container import Container, Invocation, current_invocation, invocation, load_image
from flowmas.opaca.models import (
    Action,
    AgentContainer,
    AgentContainerImage,
    AgentDescription,
    ArrayItems,
    ErrorResponse,
    ImageParameter,
    Login,
    LoginMsg,
    Message,
    Parameter,
    PortDescription,
    Stream,
    StreamDescription,
    StreamMode,
)
from flowmas.opaca.types import ANY, Signature, parameter_for, signature_for
from flowmas.opaca.validation import SchemaValidators, convert_arguments, prepare_arguments, validate_arguments

__all__ = [
    "ANY",
    "ENTRY_POINT_GROUP",
    "AbstractAgent",
    "Action",
    "ActionSpec",
    "AgentContainer",
    "AgentContainerImage",
    "AgentContext",
    "AgentDescription",
    "ArrayItems",
    "Container",
    "ErrorResponse",
    "ImageParameter",
    "Invocation",
    "Login",
    "LoginMsg",
    "Message",
    "Parameter",
    "PortDescription",
    "SchemaValidators",
    "Signature",
    "Stream",
    "StreamDescription",
    "StreamMode",
    "StreamSpec",
    "action",
    "action_spec",
    "convert_arguments",
    "current_invocation",
    "invocation",
    "load_builtin_agents",
    "load_image",
    "parameter_for",
    "prepare_arguments",
    "signature_for",
    "stream",
    "validate_arguments",
]
