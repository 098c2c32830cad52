"""The container API over real HTTP: uvicorn on 127.0.0.1 (port 0), started once for this module in a thread.

What only a real server shows: ``/info`` stays fast while a sync action blocks for 2 s (the platform's
liveness probe), a ``?timeout`` is answered on time, and nothing secret reaches the log, the access log
included.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from agents_api import BackgroundServer, create_app
from flowmas.opaca.agent import AbstractAgent
from tests.agents_api import SECRET, TOKEN, Calculator, assert_error, make_container


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Calculator]]:
    container, first, _ = make_container(token=TOKEN)
    with BackgroundServer(create_app(container, platform=False)) as server:
        yield server.url, first


@pytest.fixture
def client(served: tuple[str, Calculator]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
        yield client


def test_info_stays_fast_while_a_sync_action_blocks(client: httpx.Client, served: tuple[str, Calculator]) -> None:
    client.get("/info").raise_for_status()  # warm: the first answer serializes the description
    outcome: dict[str, object] = {}

    def slow() -> None:
        with httpx.Client(base_url=served[0], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as other:
            started = time.monotonic()
            outcome["response"] = other.post("/invoke/SleepSync/calc-1", json={"seconds": 2})
            outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)  # the action is running now
    latencies = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = client.get("/info")
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200
        time.sleep(0.005)
    thread.join()
    assert outcome["response"].status_code == 200  # type: ignore[attr-defined]
    assert outcome["elapsed"] >= 1.9  # type: ignore[operator]  # it really blocked its thread for 2 s
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert len(latencies) >= 50, len(latencies)
    assert p99 < 0.05, (p99, statistics.median(latencies), latencies[-5:])


def test_timeout_is_answered_on_time_even_for_a_blocked_sync_action(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post("/invoke/SleepSync/calc-1?timeout=1&forward=false", json={"seconds": 4})
    elapsed = time.monotonic() - started
    assert_error(response, 504)
    assert 0.9 <= elapsed < 2.0, elapsed


def test_timeout_of_an_async_action(client: httpx.Client) -> None:
    started = time.monotonic()
    assert_error(client.post("/invoke/SleepAsync?timeout=0.5", json={"seconds": 10}), 504)
    assert time.monotonic() - started < 1.5


def test_nothing_secret_in_any_log_nor_the_access_log(caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-grace"  # the sample's rule: a right password is pw-<user>
    with caplog.at_level(logging.DEBUG):
        container, _, _ = make_container(token=TOKEN)
        app = create_app(container, platform=False)
        with BackgroundServer(app, access_log=True, log_level="debug", log_config=None) as server, \
                httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            assert client.get("/info").status_code == 200
            assert client.post("/invoke/Add", json={"x": 1, "y": 2}).json() == 3
            assert client.post("/invoke/Fail", json={}).status_code == 500
            assert client.post("/invoke/Add", json={"x": SECRET}).status_code == 400
            token = client.post("/login", json={"username": "grace", "password": password}).text
            assert client.post("/login", json={"username": "grace", "password": "wrong-" + password}
                               ).status_code == 401
            assert client.post("/invoke/Whoami", headers={"ContainerLoginToken": token}).json() == "grace"
            assert client.post("/logout", headers={"ContainerLoginToken": token}).json() is True
            assert httpx.get(f"{server.url}/info", headers={"Authorization": "Bearer wrong"}).status_code == 403
    text = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    assert any(r.name == "uvicorn.access" for r in caplog.records), "the access log was on"
    assert any("error id" in r.getMessage() for r in caplog.records)
    for secret in (SECRET, TOKEN, password, token):
        assert secret not in text, secret


def test_two_users_log_in_and_out_independently(client: httpx.Client) -> None:
    tokens = {}
    for user in ("ada", "alan"):
        response = client.post("/login", json={"username": user, "password": f"pw-{user}"})
        assert response.status_code == 200
        tokens[user] = response.text
    assert tokens["ada"] != tokens["alan"]
    for user, token in tokens.items():
        assert client.post("/invoke/Whoami/calc-1", headers={"ContainerLoginToken": token}).json() == user
        assert client.post("/invoke/Whoami/calc-1", headers={"ContainerLoginToken": f'"{token}"'}).json() == user
    assert client.post("/logout", headers={"ContainerLoginToken": tokens["ada"]}).json() is True
    assert_error(client.post("/invoke/Whoami/calc-1", headers={"ContainerLoginToken": tokens["ada"]}), 401)
    assert client.post("/invoke/Whoami/calc-1", headers={"ContainerLoginToken": tokens["alan"]}).json() == "alan"
    assert client.post("/logout", headers={"ContainerLoginToken": f'"{tokens["alan"]}"'}).json() is True
    assert client.post("/logout", headers={"ContainerLoginToken": tokens["alan"]}).json() is False


def test_streams_over_http(client: httpx.Client) -> None:
    with client.stream("GET", "/stream/Numbers/calc-1") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert b"".join(response.iter_bytes()) == b"0\n1\n2\n"
    with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", "/stream/Broken") as response:
        b"".join(response.iter_bytes())  # the stream breaks halfway: the connection says so
    assert client.get("/info").status_code == 200  # and the server goes on


def test_stopping_the_server_shuts_every_agent_down_once_and_survives_a_failing_one(
        caplog: pytest.LogCaptureFixture) -> None:
    """The lifespan's end calls each agent's ``on_shutdown`` (sync or async); the Files agent closes the file
    service it made; an agent whose hook raises is logged and keeps no other from shutting down."""
    from agents_api.files import FilesAgent
    from flowmas.files import FileService
    from flowmas.files.storage import MemoryStorageManager

    calls: list[str] = []

    class Quiet(AbstractAgent):
        def on_shutdown(self) -> None:  # type: ignore[override]  # a sync hook is fine too
            calls.append(self.agent_id)

    class Failing(AbstractAgent):
        async def on_shutdown(self) -> None:
            raise RuntimeError("cannot let go")

    container, _, _ = make_container()
    Failing(container=container, agent_id="failing")
    Quiet(container=container, agent_id="quiet")
    owned = FilesAgent(container=container, agent_id="files")  # makes its own FileService: closes it
    lent = FileService(MemoryStorageManager())
    FilesAgent(container=container, files=lent, agent_id="lent-files")  # the caller's: left open
    with caplog.at_level(logging.WARNING, logger="flowmas"), \
            BackgroundServer(create_app(container, platform=False)) as server:
        assert httpx.get(f"{server.url}/info").status_code == 200
    assert calls == ["quiet"]
    assert owned.files._closed and not lent._closed
    assert "Agent failing did not shut down cleanly" in caplog.text and "cannot let go" in caplog.text
    lent.close_sync()
