"""agents_api: the OPACA agent container API of flowmas, a FastAPI face over the core's ``flowmas.opaca``.

An agent written for the ``opaca`` SDK (0.0.9) runs here by changing its imports from ``opaca`` to
``agents_api`` (``agents_api.abstract_agent``, ``.models``, ``.decorators`` and ``.container`` are the SDK's
module paths too)::

    from agents_api import AbstractAgent, Container, action, run

    class Calculator(AbstractAgent):
        @action
        def add(self, x: int, y: int) -> int:
            return x + y

    container = Container("container.json")
    Calculator(container=container, agent_id="calculator")
    run(container)      # or the SDK's run("title", container); create_app(container) for the app alone

What changes for such an agent is what the platform sees: OPACA status codes and ``ErrorResponse`` bodies,
validated arguments, sync actions off the event loop, ``?timeout`` enforced, the platform's TOKEN checked,
the platform notified when agents change. An ``HTTPException`` an action raises keeps its status code;
``LoginFailedError`` from ``handle_login`` answers 401.
"""

from agents_api.app import ApiSettings, OpacaApp, create_app, create_routes
from agents_api.errors import STATUS
from agents_api.platform import PlatformClient
from agents_api.server import BackgroundServer, run
from flowmas.errors import (
    ActionFailedError,
    ActionTimeoutError,
    InvalidArgumentsError,
    LoginFailedError,
    LoginNotSupportedError,
    UnknownActionError,
    UnknownAgentError,
    UnknownStreamError,
)
from flowmas.opaca.agent import AbstractAgent, action, stream
from flowmas.opaca.container import Container
from flowmas.opaca.models import (
    Action,
    AgentContainer,
    AgentContainerImage,
    AgentDescription,
    ErrorResponse,
    ImageParameter,
    Login,
    LoginMsg,
    Message,
    Parameter,
    StreamDescription,
)

__all__ = [
    "STATUS",
    "AbstractAgent",
    "Action",
    "ActionFailedError",
    "ActionTimeoutError",
    "AgentContainer",
    "AgentContainerImage",
    "AgentDescription",
    "ApiSettings",
    "BackgroundServer",
    "Container",
    "ErrorResponse",
    "ImageParameter",
    "InvalidArgumentsError",
    "Login",
    "LoginFailedError",
    "LoginMsg",
    "LoginNotSupportedError",
    "Message",
    "OpacaApp",
    "Parameter",
    "PlatformClient",
    "StreamDescription",
    "UnknownActionError",
    "UnknownAgentError",
    "UnknownStreamError",
    "action",
    "create_app",
    "create_routes",
    "run",
    "stream",
]
