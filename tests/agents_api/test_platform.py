"""The container's calls to its platform (notify, token renewal), against a small fake platform over real HTTP.

The fake platform does what opaca-core's does on ``POST /containers/notify``: it reads the container's
``/info`` back with the TOKEN it started the container with, before it answers ``true``. Its answers can be
scripted (a status, ``false``, a token). Both sides run in uvicorn on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response

from agents_api import BackgroundServer, PlatformClient, create_app
from tests.agents_api import TOKEN, make_container


@dataclass
class FakePlatform:
    """The two platform routes a container calls, recording what they receive."""

    url: str = ""
    notifies: list[dict[str, Any]] = field(default_factory=list)
    token_requests: list[str | None] = field(default_factory=list)
    notify_answers: list[tuple[int, bytes]] = field(default_factory=list)
    """Scripted answers to the next notifies (status, body); then ``200 true``."""
    new_token: bytes = b"renewed-token-1"
    token_status: int = 200
    read_back: bool = True
    container_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.notifies.clear()
            self.token_requests.clear()
            self.notify_answers.clear()
            self.new_token = b"renewed-token-1"
            self.token_status = 200
            self.read_back = True

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/containers/notify")
        async def notify(request: Request) -> Response:
            body = await request.body()
            record: dict[str, Any] = {"body": body, "authorization": request.headers.get("authorization"),
                                      "content_type": request.headers.get("content-type")}
            with self.lock:
                scripted = self.notify_answers.pop(0) if self.notify_answers else None
            if scripted is not None:
                with self.lock:
                    self.notifies.append(record)
                return Response(scripted[1], status_code=scripted[0], media_type="application/json")
            if self.read_back:  # like opaca-core: read /info back with the container's TOKEN
                async with httpx.AsyncClient() as client:
                    info = await client.get(f"{self.container_url}/info",
                                            headers={"Authorization": f"Bearer {TOKEN}"})
                record["info_status"] = info.status_code
                record["actions"] = sorted(a["name"] for agent in info.json()["agents"] for a in agent["actions"])
            with self.lock:
                self.notifies.append(record)
            return Response(b"true", media_type="application/json")

        @app.get("/token")
        async def token(request: Request) -> Response:
            with self.lock:
                self.token_requests.append(request.headers.get("authorization"))
            return Response(self.new_token, status_code=self.token_status, media_type="text/plain")

        return app


@pytest.fixture(scope="module")
def _platform() -> Iterator[FakePlatform]:
    platform = FakePlatform()
    with BackgroundServer(platform.app()) as server:
        platform.url = server.url
        yield platform


@pytest.fixture
def platform(_platform: FakePlatform) -> Iterator[FakePlatform]:
    _platform.reset()
    yield _platform
    _platform.reset()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_burst_of_changes_is_one_notify_and_the_platform_reads_info_back(platform: FakePlatform) -> None:
    container, first, _ = make_container(token=TOKEN, platform_url=platform.url + "/")
    client = PlatformClient(container, debounce=0.3, retry_delay=0.05)
    with BackgroundServer(create_app(container, platform=client)) as server:
        platform.container_url = server.url
        time.sleep(0.5)
        assert platform.notifies == []  # agents registered before the server ran: the platform reads /info itself
        for i in range(20):
            first.add_action(f"Extra{i}", None, {}, None, lambda: None)
        wait_for(lambda: len(platform.notifies) >= 1)
        time.sleep(0.8)
        assert len(platform.notifies) == 1, platform.notifies
        notify = platform.notifies[0]
        assert orjson.loads(notify["body"]) == "container-1"  # the containerId as a JSON string
        assert notify["authorization"] == f"Bearer {TOKEN}"
        assert notify["content_type"] == "application/json"
        assert notify["info_status"] == 200 and "Extra19" in notify["actions"]
        assert client.notifications == 1
        first.remove_action("Extra0")  # a later change is a later notify
        wait_for(lambda: len(platform.notifies) == 2)
        assert "Extra0" not in platform.notifies[1]["actions"]


def test_changes_from_another_thread_are_notified(platform: FakePlatform) -> None:
    container, first, _ = make_container(token=TOKEN, platform_url=platform.url)
    client = PlatformClient(container, debounce=0.05)
    with BackgroundServer(create_app(container, platform=client)) as server:
        platform.container_url = server.url
        thread = threading.Thread(target=lambda: first.add_action("FromThread", None, {}, None, lambda: None))
        thread.start()
        thread.join()
        wait_for(lambda: len(platform.notifies) == 1)
        assert "FromThread" in platform.notifies[0]["actions"]


def test_notify_failures_are_logged_and_retried_never_raised(platform: FakePlatform,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    container, first, _ = make_container(token=TOKEN, platform_url=platform.url)
    client = PlatformClient(container, debounce=0.05, retries=2, retry_delay=0.05)
    with caplog.at_level(logging.DEBUG, logger="agents_api"), \
            BackgroundServer(create_app(container, platform=client)) as server:
        platform.container_url = server.url
        platform.notify_answers[:] = [(503, b"busy"), (502, b"")]  # two 5xx, then the default 200 true
        first.add_action("A", None, {}, None, lambda: None)
        wait_for(lambda: client.notifications == 1)
        assert len(platform.notifies) == 3

        platform.notify_answers[:] = [(200, b"false")]
        first.add_action("B", None, {}, None, lambda: None)
        wait_for(lambda: "answered false" in caplog.text)

        platform.notify_answers[:] = [(404, b'{"statusCode": 404}')]
        first.add_action("C", None, {}, None, lambda: None)
        wait_for(lambda: "does not know container" in caplog.text)

        platform.notify_answers[:] = [(500, b"")] * 3
        first.add_action("D", None, {}, None, lambda: None)
        wait_for(lambda: "answered 500" in caplog.text)
        assert httpx.get(f"{server.url}/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert TOKEN not in caplog.text


def test_an_unreachable_platform_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with BackgroundServer(FastAPI()) as dead:
        gone = dead.url
    container, first, _ = make_container(token=TOKEN, platform_url=gone)
    client = PlatformClient(container, debounce=0.01, retries=1, retry_delay=0.01, timeout=2)
    with caplog.at_level(logging.WARNING, logger="agents_api"), \
            BackgroundServer(create_app(container, platform=client)) as server:
        first.add_action("A", None, {}, None, lambda: None)
        wait_for(lambda: "Could not notify the platform" in caplog.text)
        assert httpx.get(f"{server.url}/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_token_renewal_replaces_the_outbound_bearer_only(platform: FakePlatform) -> None:
    container, first, _ = make_container(token=TOKEN, platform_url=platform.url)
    client = PlatformClient(container, debounce=0.05, renewal_interval=0.3)
    with BackgroundServer(create_app(container, platform=client)) as server:
        platform.container_url = server.url
        wait_for(lambda: client.renewals >= 1)
        assert platform.token_requests[0] == f"Bearer {TOKEN}"
        assert client.token == "renewed-token-1"
        assert client.headers() == {"Authorization": "Bearer renewed-token-1"}
        first.add_action("AfterRenewal", None, {}, None, lambda: None)
        wait_for(lambda: any(n["authorization"] == "Bearer renewed-token-1" for n in platform.notifies))
        # inbound, the platform goes on sending the TOKEN it started the container with
        url = f"{server.url}/info"
        assert httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.get(url, headers={"Authorization": "Bearer renewed-token-1"}).status_code == 403
        platform.new_token = b'"renewed-token-2"'  # a JSON-quoted answer works too
        wait_for(lambda: client.token == "renewed-token-2")
        assert platform.token_requests[-1] == "Bearer renewed-token-1"


@pytest.mark.parametrize(("status", "answer"), [(200, b""), (200, b"two words"), (200, b"\xff\xfe"),
                                                (401, b"renewed-token-9"), (500, b"renewed-token-9")])
def test_a_failed_renewal_keeps_the_token(platform: FakePlatform, caplog: pytest.LogCaptureFixture,
                                          status: int, answer: bytes) -> None:
    container, _, _ = make_container(token=TOKEN, platform_url=platform.url)
    client = PlatformClient(container, renewal_interval=0.1)
    platform.token_status, platform.new_token = status, answer
    with caplog.at_level(logging.WARNING, logger="agents_api"), \
            BackgroundServer(create_app(container, platform=client)):
        wait_for(lambda: len(platform.token_requests) >= 2)
    assert client.token == TOKEN and client.renewals == 0
    assert "keeping the current" in caplog.text
    assert TOKEN not in caplog.text


def test_no_token_means_no_renewal_and_no_authorization(platform: FakePlatform) -> None:
    container, first, _ = make_container(token="", platform_url=platform.url)
    platform.read_back = False
    client = PlatformClient(container, debounce=0.01, renewal_interval=0.05)
    with BackgroundServer(create_app(container, platform=client)):
        first.add_action("A", None, {}, None, lambda: None)
        wait_for(lambda: len(platform.notifies) == 1)
        time.sleep(0.2)
    assert platform.notifies[0]["authorization"] is None
    assert platform.token_requests == []


def test_standalone_container_sends_nothing(platform: FakePlatform) -> None:
    container, first, _ = make_container(token=TOKEN, platform_url="")
    client = PlatformClient(container, debounce=0.01)
    with BackgroundServer(create_app(container, platform=client)):
        first.add_action("A", None, {}, None, lambda: None)
        time.sleep(0.2)
    assert not client.running and platform.notifies == []


def test_default_client_reads_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWMAS_API_TOKEN_RENEWAL_SECONDS", "3600")
    monkeypatch.setenv("FLOWMAS_API_NOTIFY_DEBOUNCE_SECONDS", "2")
    container, _, _ = make_container(token=TOKEN, platform_url="http://platform.invalid:8000")
    app = create_app(container)
    assert app.platform is not None
    assert app.platform.renewal_interval == 3600 and app.platform.debounce == 2
    assert app.platform.platform_url == "http://platform.invalid:8000"
