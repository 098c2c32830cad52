"""The SDK's ``opaca.models`` module path: the core's OPACA wire models (``flowmas.opaca.models``).

The SDK's older names are kept as aliases: ``ActionDescription`` (``Action``), ``ContainerDescription``
(``AgentContainer``), ``ImageDescription`` (``AgentContainerImage``).
"""

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

ActionDescription = Action
ContainerDescription = AgentContainer
ImageDescription = AgentContainerImage

__all__ = [
    "Action",
    "ActionDescription",
    "AgentContainer",
    "AgentContainerImage",
    "AgentDescription",
    "ArrayItems",
    "ContainerDescription",
    "ErrorResponse",
    "ImageDescription",
    "ImageParameter",
    "Login",
    "LoginMsg",
    "Message",
    "Parameter",
    "PortDescription",
    "Stream",
    "StreamDescription",
    "StreamMode",
]
