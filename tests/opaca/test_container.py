"""The container: environment handshake, info and changes, invocation (threads, timeouts, errors), streams,
messages and logins. Real agents, a real event loop; nothing of ours is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from flowmas.errors import (
    ActionFailedError,
    ActionTimeoutError,
    ContainerConfigurationError,
    InvalidArgumentsError,
    LoginFailedError,
    LoginNotSupportedError,
    UnknownActionError,
    UnknownAgentError,
    UnknownStreamError,
)
from flowmas.opaca import (
    AbstractAgent,
    Container,
    Login,
    LoginMsg,
    Message,
    Parameter,
    StreamDescription,
    StreamSpec,
    action,
    stream,
)

IMAGE = {
    "imageName": "flowmas/test-container",
    "parameters": [
        {"name": "MODEL", "type": "string", "required": True},
        {"name": "RETRIES", "type": "integer", "defaultValue": "3"},
        {"name": "API_KEY", "type": "string", "required": True, "confidential": True},
        {"name": "UNSET", "type": "string"},
    ],
    "definitions": {"Budget": {"type": "object", "properties": {"eur": {"type": "number"}}, "required": ["eur"]}},
}
SECRET = "s3cr3t-Value-that-must-not-leak"
ENV = {"MODEL": "tiny", "API_KEY": SECRET, "CONTAINER_ID": "c-1", "PLATFORM_URL": "http://platform:8000",
       "TOKEN": "jwt", "OWNER": "alice", "PORT_MAPPING": "8082:8001, 9000:8002"}


class Teapot(Exception):
    """Stands for an HTTP exception of a web framework: an integer status_code and a detail."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class Car(BaseModel):
    name: str
    speed: float = 1.0


class Worker(AbstractAgent):
    """Does work, slowly or quickly."""

    def __init__(self, container: Container | None = None, agent_id: str | None = None) -> None:
        super().__init__(container, agent_id)
        self.received: list[Any] = []
        self.uploads: list[bytes] = []
        self.threads: set[str] = set()

    @action
    def add(self, x: int, y: int = 2) -> int:
        self.threads.add(threading.current_thread().name)
        return x + y

    @action
    def block(self, seconds: float) -> str:
        time.sleep(seconds)  # a sync action that would freeze the loop if run on it
        return "done"

    @action
    async def nap(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @action
    def fail(self, kind: str) -> None:
        if kind == "value":
            raise ValueError("bad input\nsecond line")
        if kind == "teapot":
            raise Teapot(418, "I'm a teapot")
        if kind == "fastapi":
            from fastapi import HTTPException

            raise HTTPException(status_code=403, detail="Forbidden here")
        if kind == "own":
            raise ActionFailedError("flow run failed", status_code=500, run_id="run-7")
        if kind == "status-200":
            raise Teapot(200, "not an error status")

    @action
    def drive(self, car: Car, budget: dict[str, Any] | None = None) -> Car:
        return Car(name=car.name.upper(), speed=car.speed * 2)

    @action
    def opaque(self) -> Any:
        return object()

    @stream
    async def ticks(self) -> AsyncIterator[bytes]:
        yield b"a"
        yield "b"

    @stream
    def numbers(self) -> Iterator[str]:
        yield from ("1", "2", "3")

    @stream(name="Blob")
    def blob(self) -> bytes:
        return b"\x00\x01"

    @stream
    async def broken(self) -> AsyncIterator[bytes]:
        raise Teapot(418, "no stream today")
        yield b""  # pragma: no cover

    @stream(mode=StreamDescription.Mode.POST)
    async def upload(self, data: bytes) -> None:
        self.uploads.append(data)

    async def receive_message(self, message: Message) -> None:
        self.received.append(message.payload)

    def dynamic_stream(self, name: str) -> StreamSpec | None:
        if name.startswith("Run-"):
            return StreamSpec(name=name, description=None, mode=StreamDescription.Mode.GET,
                              callback=lambda: f"logs of {name}")
        return None


def make(env: dict[str, str] | None = None, **kwargs: Any) -> Container:
    return Container(IMAGE, environ=ENV if env is None else env, **kwargs)


# --- the environment handshake -----------------------------------------------------------------------------


def test_environment_handshake():
    box = make()
    assert (box.container_id, box.platform_url, box.token, box.owner) == ("c-1", "http://platform:8000", "jwt", "alice")
    assert box.port_mapping == {8082: 8001, 9000: 8002}
    assert box.parameters == {"MODEL": "tiny", "RETRIES": "3", "API_KEY": SECRET}  # default applied, unset left out
    info = box.info()
    assert info.arguments == {"MODEL": "tiny", "RETRIES": "3"}
    assert info.owner == "alice" and info.container_id == "c-1"


def test_defaults_without_platform():
    box = make({"MODEL": "m", "API_KEY": "k"})
    assert len(box.container_id) == 36 and box.platform_url is None and box.token == "" and box.owner is None
    assert box.port_mapping == {}


def test_missing_required_parameters_are_named():
    with pytest.raises(ContainerConfigurationError) as caught:
        make({})
    message = str(caught.value)
    assert "MODEL, API_KEY" in message and "environment variable" in message


def test_values_that_do_not_fit_their_type():
    with pytest.raises(ContainerConfigurationError, match="RETRIES='many' is not an integer"):
        make({**ENV, "RETRIES": "many"})
    image = {"imageName": "x", "parameters": [{"name": "PIN", "type": "integer", "confidential": True}]}
    with pytest.raises(ContainerConfigurationError) as caught:
        Container(image, environ={"PIN": "12ab-secret"})
    assert "PIN=(confidential value)" in str(caught.value) and "12ab" not in str(caught.value)
    with pytest.raises(ContainerConfigurationError, match="PORT_MAPPING"):
        make({**ENV, "PORT_MAPPING": "8082-8001"})


def test_confidential_values_never_in_info_nor_logs(caplog):
    caplog.set_level(logging.DEBUG)
    box = make()
    agent = Worker(box, "w")
    agent.add_action("Leak", None, {}, None, lambda: (_ for _ in ()).throw(ValueError("boom")))
    wire = json.dumps(box.info_wire())
    assert SECRET not in wire and "API_KEY" not in json.dumps(box.info().arguments)
    assert SECRET not in repr(box)
    asyncio.run(_exercise(box))
    assert caplog.records, "the container logs something"
    assert SECRET not in caplog.text and "pw-of-bob" not in caplog.text


async def _exercise(box: Container) -> None:
    await box.invoke("Add", {"x": 1})
    with pytest.raises(ActionFailedError):
        await box.invoke("Leak", {})
    with pytest.raises(LoginNotSupportedError):
        await box.login(Login(username="bob", password="pw-of-bob"))


def test_image_from_container_json(tmp_path: Path):
    path = tmp_path / "container.json"
    path.write_text(json.dumps(IMAGE))
    assert Container(path, environ=ENV).image.image_name == "flowmas/test-container"
    assert Container(str(path), environ=ENV).info().image.definitions["Budget"]["required"] == ["eur"]
    path.write_text("{not json")
    with pytest.raises(ContainerConfigurationError, match=r"not valid JSON \(line 1"):
        Container(path, environ=ENV)
    with pytest.raises(ContainerConfigurationError, match="Cannot read"):
        Container(tmp_path / "missing.json", environ=ENV)
    with pytest.raises(ContainerConfigurationError, match="imageName"):
        Container({"name": "no image name"}, environ={})
    with pytest.raises(ContainerConfigurationError, match="'Bad' is not a valid JSON schema"):
        Container({"imageName": "x", "definitions": {"Bad": {"type": 12}}}, environ={})


# --- agents, info and changes ------------------------------------------------------------------------------


def test_info_is_cached_and_rebuilt_on_change():
    box = make()
    calls: list[str] = []
    box.on_change(lambda: calls.append("changed"))
    first = box.info()
    assert box.info() is first and box.info_wire() is box.info_wire()
    agent = Worker(box, "w")
    second = box.info()
    assert second is not first and [a.agent_id for a in second.agents] == ["w"]
    assert set(second.image.definitions) == {"Budget", "Car", "Any"}  # the image's and the actions'
    agent.add_action("Extra", None, {}, None, lambda: 1)
    assert box.info() is not second and "Extra" in [a.name for a in box.info().agents[0].actions]
    box.remove_agent("w")
    assert box.info().agents == [] and set(box.info().image.definitions) == {"Budget"}
    assert calls == ["changed"] * 3
    assert agent.container is None


def test_a_failing_listener_does_not_undo_the_change(caplog):
    box = make()

    def broken() -> None:
        raise RuntimeError("listener bug")

    box.on_change(broken)
    Worker(box, "w")
    assert box.has_agent("w")
    assert "change listener" in caplog.text


def test_agent_registration_rules():
    box = make()
    agent = Worker(box, "w")
    box.add_agent(agent)  # the same agent again: nothing happens
    assert box.agents() == [agent]
    with pytest.raises(ContainerConfigurationError, match="taken"):
        Worker(box, "w")
    with pytest.raises(UnknownAgentError):
        box.agent("nobody")
    with pytest.raises(UnknownAgentError):
        box.remove_agent("nobody")
    with pytest.raises(ContainerConfigurationError, match="another container"):
        make().add_agent(agent)


async def test_action_lookup_first_registered_agent_or_the_named_one():
    box = make()
    first, second = Worker(box, "first"), Worker(box, "second")
    await box.invoke("Add", {"x": 1})
    assert first.threads and not second.threads
    await box.invoke("Add", {"x": 1}, agent_id="second")
    assert second.threads
    assert box.find_action("Add") == (first, first.actions["Add"])
    box.remove_agent("first")
    assert box.find_action("Add")[0] is second
    with pytest.raises(UnknownActionError):
        await box.invoke("Nope", {})
    with pytest.raises(UnknownActionError):
        await box.invoke("Nope", {}, agent_id="second")
    with pytest.raises(UnknownAgentError):
        await box.invoke("Add", {"x": 1}, agent_id="first")


# --- invocation ------------------------------------------------------------------------------------------


async def test_invoke_sync_and_async_concurrently():
    box = make()
    agent = Worker(box, "w")
    started = time.monotonic()
    results = await asyncio.gather(
        box.invoke("Block", {"seconds": 0.5}), box.invoke("Nap", {"seconds": 0.5}),
        *(box.invoke("Add", {"x": i, "y": i}) for i in range(20)))
    assert results[:2] == ["done", 0.5] and results[2:] == [2 * i for i in range(20)]
    assert time.monotonic() - started < 1.2
    assert all(name.startswith("opaca-action") for name in agent.threads)  # sync actions: in the pool


async def test_a_sync_action_does_not_block_the_loop():
    box = make()
    Worker(box, "w")
    slow = asyncio.create_task(box.invoke("Block", {"seconds": 2}))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await box.invoke("Nap", {"seconds": 0.1}) == 0.1
    box.info()
    assert time.monotonic() - started < 0.5
    assert not slow.done()
    assert await slow == "done"


@pytest.mark.parametrize("name", ["Block", "Nap"])
async def test_timeout_is_prompt(name):
    box = make()
    Worker(box, "w")
    started = time.monotonic()
    with pytest.raises(ActionTimeoutError, match=r"did not finish within 0\.5 s"):
        await box.invoke(name, {"seconds": 2}, timeout=0.5)
    assert 0.45 < time.monotonic() - started < 0.7


@pytest.mark.parametrize("timeout", [None, -1, 0, float("nan")])
async def test_unusable_timeouts_mean_the_default(timeout):
    box = make(default_timeout=0.3)
    Worker(box, "w")
    started = time.monotonic()
    with pytest.raises(ActionTimeoutError):
        await box.invoke("Nap", {"seconds": 2}, timeout=timeout)
    assert time.monotonic() - started < 0.5
    assert Container.default_timeout == 30.0


async def test_exceptions_become_action_failed():
    box = make()
    Worker(box, "w")
    with pytest.raises(ActionFailedError) as caught:
        await box.invoke("Fail", {"kind": "value"})
    assert caught.value.status_code == 500
    assert isinstance(caught.value.__cause__, ValueError)
    assert str(caught.value) == "Action 'Fail' of agent w failed: ValueError: bad input\\nsecond line"


async def test_http_exceptions_keep_their_status():
    box = make()
    Worker(box, "w")
    with pytest.raises(ActionFailedError) as caught:
        await box.invoke("Fail", {"kind": "teapot"})
    assert (caught.value.status_code, str(caught.value)) == (418, "I'm a teapot")
    with pytest.raises(ActionFailedError) as caught:
        await box.invoke("Fail", {"kind": "fastapi"})  # the real fastapi.HTTPException
    assert (caught.value.status_code, str(caught.value)) == (403, "Forbidden here")
    with pytest.raises(ActionFailedError) as caught:
        await box.invoke("Fail", {"kind": "status-200"})  # not an error status: a plain failure
    assert caught.value.status_code == 500


async def test_container_errors_raised_by_an_action_pass_through():
    box = make()
    Worker(box, "w")
    with pytest.raises(ActionFailedError) as caught:
        await box.invoke("Fail", {"kind": "own"})
    assert (str(caught.value), caught.value.run_id) == ("flow run failed", "run-7")


async def test_arguments_are_validated_and_converted():
    box = make()
    Worker(box, "w")
    assert await box.invoke("Drive", {"car": {"name": "a"}}) == {"name": "A", "speed": 2.0}
    assert await box.invoke("Drive", {"car": {"name": "a"}, "budget": {"eur": 3}}) == {"name": "A", "speed": 2.0}
    with pytest.raises(InvalidArgumentsError, match="car: does not match 'Car'"):
        await box.invoke("Drive", {"car": {"speed": 1}})
    with pytest.raises(InvalidArgumentsError, match="x: expected integer, got boolean true"):
        await box.invoke("Add", {"x": True})


async def test_hand_written_parameters_use_image_definitions():
    box = make()
    agent = AbstractAgent(box, "hand")
    agent.add_action("Spend", None, {"budget": Parameter(type="Budget")}, Parameter(type="number"),
                     lambda budget: budget["eur"])
    assert await box.invoke("Spend", {"budget": {"eur": 2.5}}) == 2.5
    with pytest.raises(InvalidArgumentsError, match="does not match 'Budget'"):
        await box.invoke("Spend", {"budget": {"usd": 1}})


async def test_a_result_json_cannot_carry_is_a_failure():
    box = make()
    Worker(box, "w")
    with pytest.raises(ActionFailedError, match="cannot be sent as JSON"):
        await box.invoke("Opaque", {})


async def test_sync_callable_returning_a_coroutine_is_awaited():
    box = make()

    async def later(x: int) -> int:
        return x * 3

    AbstractAgent(box).add_action("Later", None, {"x": Parameter(type="integer")}, None, lambda x: later(x))
    assert await box.invoke("Later", {"x": 2}) == 6


# --- streams -----------------------------------------------------------------------------------------------


async def collect(stream_iterator: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream_iterator])


async def test_get_streams_of_every_shape():
    box = make()
    Worker(box, "w")
    assert await collect(await box.open_stream("Ticks")) == b"ab"
    assert await collect(await box.open_stream("Numbers", agent_id="w")) == b"123"
    assert await collect(await box.open_stream("Blob")) == b"\x00\x01"
    assert await collect(await box.open_stream("Run-42")) == b"logs of Run-42"  # dynamic_stream


async def test_post_stream_receives_bytes():
    box = make()
    agent = Worker(box, "w")
    await box.post_stream("Upload", b"\x00payload")
    assert agent.uploads == [b"\x00payload"]


async def test_stream_errors_come_before_the_first_byte():
    box = make()
    Worker(box, "w")
    with pytest.raises(ActionFailedError) as caught:
        await box.open_stream("Broken")
    assert caught.value.status_code == 418
    with pytest.raises(UnknownStreamError):
        await box.open_stream("Nope")
    with pytest.raises(UnknownStreamError):
        await box.open_stream("Nope", agent_id="w")
    with pytest.raises(UnknownStreamError, match="POST stream"):
        await box.open_stream("Upload")
    with pytest.raises(UnknownStreamError, match="GET stream"):
        await box.post_stream("Ticks", b"")
    with pytest.raises(UnknownAgentError):
        await box.open_stream("Ticks", agent_id="nobody")


# --- messages --------------------------------------------------------------------------------------------


class SdkListener(AbstractAgent):
    """An SDK-style agent: sync receive_message."""

    def __init__(self, container: Container, agent_id: str) -> None:
        super().__init__(container, agent_id)
        self.messages: list[Any] = []

    def receive_message(self, message: Message) -> None:  # type: ignore[override]
        self.messages.append(message.payload)


class Crashing(AbstractAgent):
    async def receive_message(self, message: Message) -> None:
        raise RuntimeError("cannot listen")


async def test_send_and_broadcast():
    box = make()
    worker, listener, crashing = Worker(box, "w"), SdkListener(box, "l"), Crashing(box, "c")
    await box.send("w", Message(payload={"n": 1}))
    await box.send("l", Message(payload="hello", reply_to="platform/c/agent"))
    assert worker.received == [{"n": 1}] and listener.messages == ["hello"]
    with pytest.raises(UnknownAgentError):
        await box.send("nobody", Message(payload=1))
    with pytest.raises(ActionFailedError):
        await box.send("c", Message(payload=1))
    for agent in (worker, listener, crashing):
        agent.subscribe_channel("news")
    box.subscribe_channel("other", worker)  # the SDK's spelling
    await box.broadcast("news", Message(payload="extra"))  # one subscriber fails: the others still get it
    await box.broadcast("nobody-listens", Message(payload="lost"))
    await box.broadcast("other", Message(payload="only w"))
    assert worker.received == [{"n": 1}, "extra", "only w"] and listener.messages == ["hello", "extra"]


# --- logins ----------------------------------------------------------------------------------------------


class Gate(AbstractAgent):
    """Knows two users."""

    USERS: ClassVar[dict[str, str]] = {"alice": "wonderland", "bob": "builder"}

    def __init__(self, container: Container, agent_id: str = "gate") -> None:
        super().__init__(container, agent_id)
        self.sessions: dict[str, str] = {}
        self.logged_out: list[str] = []

    async def handle_login(self, login: LoginMsg) -> bool:
        if self.USERS.get(login.login.username) != login.login.password:
            return False
        self.sessions[login.token] = login.login.username
        return True

    async def handle_logout(self, token: str) -> None:
        self.logged_out.append(self.sessions.pop(token))

    @action(auth=True)
    def whoami(self, login_token: str) -> str:
        return self.sessions[login_token]


class SdkGate(AbstractAgent):
    """SDK-style: a sync handle_login that returns nothing accepts everyone."""

    def handle_login(self, login: LoginMsg) -> None:  # type: ignore[override]
        return None


class RaisingGate(AbstractAgent):
    async def handle_login(self, login: LoginMsg) -> None:
        raise LoginFailedError("no")


class BuggyGate(AbstractAgent):
    async def handle_login(self, login: LoginMsg) -> None:
        raise KeyError(login.login.password)


async def test_login_and_logout_of_two_users(caplog):
    caplog.set_level(logging.DEBUG)
    box = make()
    gate = Gate(box)
    alice = await box.login(Login(username="alice", password="wonderland"))
    bob = await box.login(Login(username="bob", password="builder"))
    assert alice != bob and len(alice) == 36
    assert await box.invoke("Whoami", {}, login_token=alice) == "alice"
    assert await box.invoke("Whoami", {}, login_token=f'"{bob}"') == "bob"  # the SDK quoted its tokens
    assert box.is_logged_in(alice) and box.is_logged_in(f'"{alice}"')
    assert await box.logout(f'"{alice}"') is True
    assert await box.logout(alice) is False
    assert gate.logged_out == ["alice"]
    with pytest.raises(ActionFailedError) as caught:
        await box.invoke("Whoami", {}, login_token=alice)
    assert caught.value.status_code == 401
    assert await box.invoke("Whoami", {}, login_token=bob) == "bob"
    assert "wonderland" not in caplog.text and "builder" not in caplog.text


async def test_auth_action_without_a_token_is_401():
    box = make()
    Gate(box)
    for token in (None, "", "not-a-token", '""'):
        with pytest.raises(ActionFailedError, match="needs a container login") as caught:
            await box.invoke("Whoami", {}, login_token=token)
        assert caught.value.status_code == 401


async def test_login_outcomes():
    box = make()
    Worker(box, "w")
    with pytest.raises(LoginNotSupportedError):
        await box.login(Login(username="a", password="b"))
    Gate(box)
    with pytest.raises(LoginFailedError):
        await box.login(Login(username="alice", password="wrong"))
    RaisingGate(box, "raising")
    with pytest.raises(LoginFailedError):
        await box.login(Login(username="alice", password="wrong"))
    assert await box.login(Login(username="alice", password="wonderland"))  # one agent accepting is enough
    SdkGate(box, "sdk")
    assert await box.login(Login(username="anyone", password="x"))


async def test_a_crashing_login_is_a_failure_not_a_refusal(caplog):
    box = make()
    BuggyGate(box, "buggy")
    with pytest.raises(ActionFailedError) as caught:
        await box.login(Login(username="a", password="hunter2"))
    assert caught.value.status_code == 500
    assert "hunter2" not in caplog.text and "hunter2" not in str(caught.value)


def test_close_releases_the_pool():
    box = make()
    Worker(box, "w")
    assert asyncio.run(box.invoke("Add", {"x": 1})) == 3
    box.close()
    box.close()
    assert asyncio.run(box.invoke("Add", {"x": 2})) == 4  # a new pool on demand
    box.close()
