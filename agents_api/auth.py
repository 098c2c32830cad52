"""The container's TOKEN check: the platform proves itself with ``Authorization: Bearer <TOKEN>``.

The platform starts a container with its own JWT in the environment variable ``TOKEN`` (empty when the platform
runs without ``REQUIRE_AUTH``) and sends that same token on every call it forwards. When ``TOKEN`` is set,
every request must carry it, or it is answered 403 with an ``ErrorResponse`` (the reference container does the
same); that includes ``/docs``, ``/redoc`` and ``/openapi.json``, which describe the container to anyone who can
read them. Without this check anyone reaching the port could bypass the platform's authentication and roles.

To use the Swagger UI of a container that has a TOKEN, the browser must send the header itself: add
``Authorization: Bearer <TOKEN>`` with a header-editing browser extension (ModHeader, Requestly, …) for the
container's address, then open ``/docs``; its *Authorize* button takes the same token, so that *Try it out*
sends it too. From a shell: ``curl -H "Authorization: Bearer $TOKEN" http://host:8082/openapi.json``.

What is compared: the inbound check uses the TOKEN the container was started with, which is the token the
platform keeps sending for this container (``platform.PlatformClient`` renews only the bearer the container
uses on its own calls to the platform). The comparison is constant-time; the scheme is case-insensitive
(RFC 9110); the token is never logged nor echoed.

``ContainerLoginToken`` (container login, a different thing) is read by ``login_token``: the platform sends
back byte for byte what ``/login`` answered, so a token is accepted quoted (as the Python SDK returns it) or not.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from agents_api.errors import NotAuthenticatedError, response_for

__all__ = ["TokenCheck", "bearer_matches", "login_token"]

_AUTHORIZATION = b"authorization"
_LOGIN_TOKEN = b"containerlogintoken"


def bearer_matches(header: bytes | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (scheme in any case, constant-time)."""
    if header is None:
        return False
    scheme, _, credentials = header.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)


def login_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The ``ContainerLoginToken`` header of raw ASGI headers, quoted or not; ``None`` if absent or empty."""
    for name, value in headers:
        if name.lower() == _LOGIN_TOKEN:
            text = value.decode("latin-1").strip()
            if len(text) >= 2 and text[0] == text[-1] == '"':
                text = text[1:-1].strip()
            return text or None
    return None


class TokenCheck:
    """ASGI middleware: with a non-empty TOKEN, every HTTP request needs ``Authorization: Bearer <TOKEN>`` (403).

    Runs before routing, so an unknown path or a wrong method without the token is a 403 too: nothing about
    the container is told to a caller that is not the platform.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token and scope["type"] in ("http", "websocket"):
            header = None
            for name, value in scope["headers"]:
                if name == _AUTHORIZATION or name.lower() == _AUTHORIZATION:
                    header = value
                    break
            if not bearer_matches(header, self.token):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                what = "no Authorization header" if header is None else "an Authorization header that does not match"
                response = response_for(NotAuthenticatedError(
                    f"Forbidden: this container requires 'Authorization: Bearer <TOKEN>' with the token the "
                    f"platform started it with; the request had {what}."))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
