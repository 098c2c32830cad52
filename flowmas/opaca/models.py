"""The OPACA wire models (opaca-core 0.5), exactly as the platform reads and writes them.

Field names are the platform's camelCase on the wire and snake_case in Python (both accepted on input).
``None`` fields are left out of the JSON, as the Java models do (Jackson ``NON_NULL``), so a platform never
sees ``"items": null``. ``runningSince`` is ``yyyy-MM-dd'T'HH:mm:ss.SSSZ`` in UTC, the platform's format.
The SDK's names (``StreamDescription.Mode``, ``LoginMsg``, ``Parameter.ArrayItems``) are kept.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_serializer
from pydantic.alias_generators import to_camel


class OpacaModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields ignored (the platform adds some)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict the platform expects: aliases, no ``None`` fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ArrayItems(OpacaModel):
    type: str
    items: ArrayItems | None = None


class Parameter(OpacaModel):
    """One parameter (or the result) of an action: a JSON type, a ``definitions`` key, or an array of them."""

    type: str
    required: bool = True
    default_value: Any = None
    items: ArrayItems | None = None

    ArrayItems: ClassVar[builtins.type[ArrayItems]] = ArrayItems  # the SDK's spelling: Parameter.ArrayItems


class Action(OpacaModel):
    name: str
    description: str | None = None
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    result: Parameter | None = None


class StreamMode(StrEnum):
    GET = "GET"
    POST = "POST"


class StreamDescription(OpacaModel):
    """A stream of an agent (the SDK calls the model ``StreamDescription`` and its enum ``Mode``)."""

    name: str
    mode: StreamMode = StreamMode.GET
    description: str | None = None

    Mode: ClassVar[type[StreamMode]] = StreamMode


Stream = StreamDescription


class AgentDescription(OpacaModel):
    agent_id: str
    agent_type: str | None = None
    description: str | None = None
    actions: list[Action] = Field(default_factory=list)
    streams: list[StreamDescription] = Field(default_factory=list)


class PortDescription(OpacaModel):
    protocol: str | None = None
    description: str | None = None


class ImageParameter(OpacaModel):
    """A parameter of the container image, given to the container as an environment variable of its name."""

    name: str
    type: str = "string"
    required: bool = False
    confidential: bool = False
    default_value: str | None = None


class AgentContainerImage(OpacaModel):
    image_name: str
    requires: list[str] = Field(default_factory=list)
    provides: list[str] = Field(default_factory=list)
    name: str | None = None
    version: str | None = None
    description: str | None = None
    provider: str | None = None
    url: str | None = None
    api_port: int = 8082
    extra_ports: dict[int, PortDescription] = Field(default_factory=dict)
    parameters: list[ImageParameter] = Field(default_factory=list)
    definitions: dict[str, Any] = Field(default_factory=dict)
    definitions_by_url: dict[str, str] = Field(default_factory=dict)


def format_running_since(moment: datetime) -> str:
    """The platform's ``yyyy-MM-dd'T'HH:mm:ss.SSSXXX`` in UTC, e.g. ``2026-12-02T10:15:30.123Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class AgentContainer(OpacaModel):
    """What ``GET /info`` answers. ``arguments`` holds the non-confidential image parameters only."""

    container_id: str
    image: AgentContainerImage
    arguments: dict[str, str] = Field(default_factory=dict)
    agents: list[AgentDescription] = Field(default_factory=list)
    owner: str | None = None
    running_since: datetime
    connectivity: dict[str, Any] | None = None

    @field_serializer("running_since")
    def _platform_time(self, value: datetime) -> str:
        return format_running_since(value)


class Message(OpacaModel):
    payload: Any = None
    reply_to: str | None = None


class Login(OpacaModel):
    """Credentials of a container login; the password stays out of ``repr`` (and so out of logs)."""

    username: str
    password: str = Field(repr=False)


class LoginMsg(OpacaModel):
    """What ``handle_login`` receives (SDK-internal, never on the wire): the new token and the credentials."""

    token: str
    login: Login


class ErrorResponse(OpacaModel):
    """The body of every error answer: the platform parses it and nests it as the ``cause`` of its own."""

    status_code: int
    message: str
    cause: ErrorResponse | None = None
