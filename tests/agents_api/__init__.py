"""Shared pieces of the container API tests: a sample container, clients, and the ErrorResponse assertion.

``Calculator`` exercises every kind of callable the core runs (sync and async actions, a sync one that blocks,
failing ones, an auth action, GET and POST streams, messages, login); ``make_container`` builds a container
from an image dict and an explicit environment (never the test process's), with two calculators.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from fastapi import HTTPException

from agents_api import (
    AbstractAgent,
    Container,
    LoginFailedError,
    LoginMsg,
    Message,
    StreamDescription,
    action,
    stream,
)

SECRET = "s3cr3t-Confidential-Value-7f1c"
"""The value of the confidential image parameter: must never appear in /info or in any log."""

TOKEN = "platform-issued-jwt.eyJzdWIiOiJjb250YWluZXIifQ.sig"

IMAGE: dict[str, Any] = {
    "imageName": "flowmas/test-calculator",
    "name": "calculator",
    "version": "1.2.3",
    "description": "Test container",
    "parameters": [
        {"name": "GREETING", "type": "string", "required": False, "defaultValue": "hello"},
        {"name": "API_SECRET", "type": "string", "required": False, "confidential": True},
    ],
}


class Calculator(AbstractAgent):
    """Adds numbers; fails, sleeps and streams on request (a test agent)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, Any]] = []
        self.messages: list[Message] = []
        self.posted: list[bytes] = []
        self.sessions: dict[str, str] = {}

    @action
    def add(self, x: int, y: int) -> int:
        """Adds two integers."""
        self.calls.append(("Add", (x, y)))
        return x + y

    @action
    async def scale(self, x: float, factor: float = 2.0) -> float:
        """Multiplies x by factor."""
        self.calls.append(("Scale", (x, factor)))
        return x * factor

    @action
    def fail(self) -> None:
        """Always raises."""
        raise ValueError("internal detail /srv/app/calculator.py line 42")

    @action
    def refuse(self) -> None:
        """Raises FastAPI's HTTPException(403)."""
        raise HTTPException(status_code=403, detail="Not for you")

    @action
    def sleep_sync(self, seconds: float) -> str:
        """Blocks its thread (time.sleep)."""
        time.sleep(seconds)
        self.calls.append(("SleepSync", seconds))
        return "slept"

    @action
    async def sleep_async(self, seconds: float) -> str:
        """Awaits asyncio.sleep."""
        await asyncio.sleep(seconds)
        return "slept"

    @action
    def nothing(self) -> None:
        """Returns None: the answer is JSON null."""
        return None

    @action
    def unencodable(self) -> dict[str, Any]:
        """Returns something JSON cannot carry."""
        return {"thing": object()}

    @action(auth=True)
    def whoami(self, login_token: str) -> str:
        """The user logged in with this token."""
        if login_token not in self.sessions:
            raise HTTPException(status_code=401, detail="Log in first")
        return self.sessions[login_token]

    @stream(mode=StreamDescription.Mode.GET)
    async def numbers(self) -> AsyncIterator[bytes]:
        """Three lines."""
        for i in range(3):
            yield f"{i}\n".encode()

    @stream(mode=StreamDescription.Mode.GET)
    async def broken(self) -> AsyncIterator[bytes]:
        """Fails after the first chunk."""
        yield b"first"
        raise RuntimeError("halfway")

    @stream(mode=StreamDescription.Mode.GET)
    async def refusing(self) -> AsyncIterator[bytes]:
        """Raises HTTPException(403) before its first chunk."""
        raise HTTPException(status_code=403, detail="No stream for you")
        yield b""  # pragma: no cover

    @stream(mode=StreamDescription.Mode.POST)
    async def upload(self, data: bytes) -> None:
        """Keeps what is posted."""
        self.posted.append(data)

    async def receive_message(self, message: Message) -> None:
        self.messages.append(message)

    async def handle_login(self, login: LoginMsg) -> None:
        if login.login.password != f"pw-{login.login.username}":
            raise LoginFailedError("Wrong user name or password.")
        self.sessions[login.token] = login.login.username

    async def handle_logout(self, token: str) -> None:
        self.sessions.pop(token, None)


def make_container(*, token: str = "", platform_url: str = "", container_id: str = "container-1",
                   extra_env: Mapping[str, str] | None = None) -> tuple[Container, Calculator, Calculator]:
    """A container with two calculators (``calc-1`` subscribed to channel ``news``, ``calc-2``)."""
    environ = {"CONTAINER_ID": container_id, "PLATFORM_URL": platform_url, "TOKEN": token, "OWNER": "",
               "API_SECRET": SECRET, **(extra_env or {})}
    container = Container(IMAGE, environ=environ)
    first = Calculator(container=container, agent_id="calc-1")
    second = Calculator(container=container, agent_id="calc-2")
    first.subscribe_channel("news")
    return container, first, second


def asgi_client(app: Any, *, token: str | None = None, **headers: str) -> httpx.AsyncClient:
    """An in-process client of ``app`` (no lifespan), with the bearer when given."""
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://container", headers=headers)


def assert_error(response: httpx.Response, status: int, *, contains: str | None = None) -> dict[str, Any]:
    """The answer is an ErrorResponse with ``status``: the code, a JSON body of exactly the OPACA fields."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict), body
    assert set(body) <= {"statusCode", "message", "cause"} and {"statusCode", "message"} <= set(body), body
    assert body["statusCode"] == status
    assert isinstance(body["message"], str) and body["message"], body
    assert "Traceback" not in response.text and "detail" not in body
    if contains is not None:
        assert contains in body["message"], body["message"]
    return body
