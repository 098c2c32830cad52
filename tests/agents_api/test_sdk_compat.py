"""An agent written for the ``opaca`` SDK runs here once its imports say ``agents_api`` instead of ``opaca``.

``SampleAgent`` below is the SDK's own sample (``src/sample.py`` of GT-ARC/opaca-python-sdk, the version with
container login) with only its imports changed; the container is assembled as the SDK's ``main.py`` does.
What the SDK got wrong (anchor §5) is checked to be right here: status codes, validation, sync actions off
the loop, the auth stream.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from time import sleep
from typing import Any, Dict  # noqa: UP035 - Dict is the sample's own spelling

import httpx
import pytest
from fastapi import HTTPException

# the SDK sample's imports, `opaca` changed to `agents_api`:
from agents_api import action, stream
from agents_api.abstract_agent import AbstractAgent
from agents_api.models import LoginMsg, Message, Parameter, StreamDescription


class SampleAgent(AbstractAgent):
    """
    Sample Agent class that inherits from AbstractAgent.
    Prints some information when receiving messages or executing actions.
    """

    def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
        super(SampleAgent, self).__init__(**kwargs)  # noqa: UP008
        self.clients: Dict[str, Callable] = {}  # type: ignore[type-arg]  # noqa: UP006
        self.add_action(
            name='SampleAction',
            description='Returns a simple string acknowledging the action\'s execution with the given parameters.',
            parameters={'param1': Parameter(type='string'), 'param2': Parameter(type='integer')},
            result=Parameter(type='string'),
            callback=self.sample_action
        )
        self.add_stream(
            name='SampleStream',
            description='Returns a sample stream value.',
            mode=StreamDescription.Mode.GET,
            callback=self.sample_stream
        )

    # Actions

    def sample_action(self, param1: str, param2: int) -> str:
        """
        Returns a simple string acknowledging the action\'s execution with the given parameters.
        """
        return f'{self.agent_id} executed sampleAction1 with params: {param1}, {param2}'

    @action
    def add(self, x: int, y: int) -> int:
        """
        Adds the two numbers and returns the result.
        """
        print(f'{self.agent_id} executed add with params: {x}, {y}')
        return x + y

    @action
    def time_consuming_action(self, text: str, sleep_time: int = 0) -> str:
        """
        Returns the given text after waiting for the given time + 1 in seconds.
        """
        sleep_time = int(sleep_time)
        print(f'{self.agent_id} executing time_consuming action, taking approx {1 + sleep_time} seconds')
        sleep(1 + sleep_time)
        return text

    @action(name='ConcatenateArray', description='Concatenates the given array to a string and returns the result.')
    def concatenate(self, array: list[str], separator: str = ', ') -> str:
        print(f'{self.agent_id} executing concatenate with params: {array}, {separator}')
        return separator.join(array)

    # Streams

    async def sample_stream(self):  # type: ignore[no-untyped-def]
        """
        Returns a sample stream value.
        """
        yield b'sampleStream data'

    @stream(mode=StreamDescription.Mode.GET)
    async def sample_stream_deco(self):  # type: ignore[no-untyped-def]
        """
        Returns a sample stream value.
        """
        yield b'sampleStream data'

    # Container Login

    async def handle_login(self, login_msg: LoginMsg):  # type: ignore[no-untyped-def]
        """
        This method should construct a login token specific client for an external api requiring auth.
        """
        # Perform external API login
        self.clients[login_msg.token] = lambda: f'Logged in as user: {login_msg.login.username}'

    async def handle_logout(self, login_token: str):  # type: ignore[no-untyped-def]
        """
        This method should remove the callable client associated to the login token.
        """
        del self.clients[login_token]

    @action(auth=True)
    async def login_test(self, login_token: str) -> str:
        """
        After a successful login, use the constructed client to perform some action.
        It is important that actions with enabled authentication define the "login_token" parameter.
        """
        if login_token not in self.clients.keys():  # noqa: SIM118
            raise HTTPException(status_code=403, detail='Forbidden')
        return f'Calling authenticated client with login_token: {login_token}\n{self.clients[login_token]()}'

    @stream(mode=StreamDescription.Mode.GET, auth=True)
    async def login_test_stream(self, login_token: str):  # type: ignore[no-untyped-def]
        """
        Streams requiring authentication work very similarly to actions.
        """
        if login_token not in self.clients.keys():  # noqa: SIM118
            raise HTTPException(status_code=403, detail='Forbidden')
        yield b'Calling authenticated stream with login_token: ' + login_token.encode() + b'\n' + \
            self.clients[login_token]().encode()

    def receive_message(self, message: Message):  # type: ignore[no-untyped-def]
        super().receive_message(message)  # type: ignore[unused-coroutine]  # the SDK's is sync (see below)
        print(f'{self.agent_id} received message: {message}')


# --- the SDK's main.py, assembled the same way ----------------------------------------------------------

from agents_api import BackgroundServer, create_routes  # noqa: E402
from agents_api.container import Container  # noqa: E402
from tests.agents_api import asgi_client, assert_error  # noqa: E402

CONTAINER_JSON = {"imageName": "sample-agent-container-python", "name": "Sample Container",
                  "description": "Sample container, Python", "provider": "GT-ARC", "apiPort": 8082}


@pytest.fixture
def sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, SampleAgent]:
    for variable in ("CONTAINER_ID", "PLATFORM_URL", "TOKEN", "OWNER", "PORT_MAPPING"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "resources").mkdir()
    (tmp_path / "resources" / "container.json").write_text(json.dumps(CONTAINER_JSON))
    monkeypatch.chdir(tmp_path)
    container = Container("resources/container.json")
    agent1 = SampleAgent(agent_id='sampleAgent1', agent_type='type1')  # type: ignore[no-untyped-call]
    container.add_agent(agent1)
    agent1.subscribe_channel('test_channel')
    app = create_routes("sample-container", container)
    return app, agent1


async def test_the_sample_describes_itself(sample: tuple[Any, SampleAgent]) -> None:
    app, _ = sample
    async with asgi_client(app) as client:
        info = (await client.get("/info")).json()
    assert info["image"]["imageName"] == "sample-agent-container-python"
    (agent,) = info["agents"]
    assert agent["agentId"] == "sampleAgent1" and agent["agentType"] == "type1"
    actions = {a["name"]: a for a in agent["actions"]}
    assert set(actions) == {"SampleAction", "Add", "TimeConsumingAction", "ConcatenateArray", "LoginTest"}
    assert actions["Add"]["parameters"] == {"x": {"type": "integer", "required": True},
                                            "y": {"type": "integer", "required": True}}
    assert actions["Add"]["result"]["type"] == "integer"
    assert actions["TimeConsumingAction"]["parameters"]["sleep_time"]["required"] is False
    assert actions["ConcatenateArray"]["parameters"]["array"]["items"] == {"type": "string"}
    assert "login_token" not in actions["LoginTest"]["parameters"]
    assert {s["name"] for s in agent["streams"]} == {"SampleStream", "SampleStreamDeco", "LoginTestStream"}


@pytest.mark.filterwarnings("ignore:coroutine 'AbstractAgent.receive_message' was never awaited")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_the_sample_answers_as_the_platform_expects(sample: tuple[Any, SampleAgent],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    app, _ = sample
    async with asgi_client(app) as client:
        assert (await client.post("/invoke/Add", json={"x": 3, "y": 4})).json() == 7
        assert (await client.post("/invoke/Add/sampleAgent1", json={"x": 3, "y": 4})).json() == 7
        assert (await client.post("/invoke/SampleAction", json={"param1": "a", "param2": 2})).json() == \
            "sampleAgent1 executed sampleAction1 with params: a, 2"
        assert (await client.post("/invoke/ConcatenateArray", json={"array": ["a", "b"]})).json() == "a, b"
        # what the SDK answered 400 (or 200 for booleans) is answered as the spec says
        assert_error(await client.post("/invoke/Add", json={"x": True, "y": 2}), 400)
        assert_error(await client.post("/invoke/Add", json={"x": 1}), 400)
        assert_error(await client.post("/invoke/Nope", json={}), 404)
        assert_error(await client.post("/invoke/Add/nobody", json={"x": 1, "y": 2}), 404)
        assert (await client.get("/agents/nobody")).content == b"null"
        assert_error(await client.post("/send/nobody", json={"payload": 1}), 404)
        for path in ("/stream/SampleStream", "/stream/SampleStreamDeco/sampleAgent1"):
            response = await client.get(path)
            assert response.status_code == 200 and response.content == b"sampleStream data"
        assert (await client.post("/broadcast/test_channel", json={"payload": "hello"})).status_code == 200
        assert (await client.post("/send/sampleAgent1", json={"payload": "direct"})).status_code == 200
    printed = capsys.readouterr().out
    assert "sampleAgent1 received message: payload='hello'" in printed
    assert "sampleAgent1 received message: payload='direct'" in printed


async def test_the_samples_login(sample: tuple[Any, SampleAgent]) -> None:
    app, agent = sample
    async with asgi_client(app) as client:
        assert_error(await client.post("/invoke/LoginTest", json={}), 401)
        assert_error(await client.get("/stream/LoginTestStream"), 401)
        token = (await client.post("/login", json={"username": "ada", "password": "pw"})).text
        for header in (token, f'"{token}"'):
            result = await client.post("/invoke/LoginTest", json={}, headers={"ContainerLoginToken": header})
            assert result.status_code == 200 and result.json().endswith("Logged in as user: ada")
            stream = await client.get("/stream/LoginTestStream", headers={"ContainerLoginToken": header})
            assert stream.status_code == 200 and stream.content.endswith(b"Logged in as user: ada")
        agent.clients.clear()  # the agent forgets the client: its own HTTPException(403) keeps its code
        assert_error(await client.post("/invoke/LoginTest", json={}, headers={"ContainerLoginToken": token}), 403)
        assert_error(await client.get("/stream/LoginTestStream", headers={"ContainerLoginToken": token}), 403)
        agent.clients[token] = lambda: "again"
        assert (await client.post("/logout", headers={"ContainerLoginToken": f'"{token}"'})).json() is True


def test_a_sync_receive_message_calling_super_leaves_no_coroutine_behind() -> None:
    agent = SampleAgent(agent_id="alone")  # type: ignore[no-untyped-call]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = AbstractAgent.receive_message(agent, Message(payload=1))
        if inspect.iscoroutine(result):
            result.close()  # what an SDK agent's super() call leaves un-awaited
        assert not inspect.isawaitable(result)


@pytest.fixture
def served_sample(sample: tuple[Any, SampleAgent]) -> Iterator[str]:
    with BackgroundServer(sample[0]) as server:
        yield server.url


def test_the_samples_sync_action_does_not_freeze_info(served_sample: str) -> None:
    """The SDK's /info took 1.8 s while TimeConsumingAction slept; here it does not wait."""
    done: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: done.update(slow=httpx.post(
        f"{served_sample}/invoke/TimeConsumingAction", json={"text": "done", "sleep_time": 1}, timeout=10)))
    thread.start()
    time.sleep(0.3)
    with httpx.Client(base_url=served_sample) as client:
        worst = 0.0
        for _ in range(20):
            started = time.perf_counter()
            assert client.get("/info").status_code == 200
            worst = max(worst, time.perf_counter() - started)
    thread.join()
    assert done["slow"].json() == "done"
    assert worst < 0.2, worst
    started = time.monotonic()
    response = httpx.post(f"{served_sample}/invoke/TimeConsumingAction?timeout=1", json={"text": "x", "sleep_time": 3},
                          timeout=10)
    assert_error(response, 504)  # the SDK ignored ?timeout
    assert time.monotonic() - started < 2


def test_run_takes_the_sdks_arguments_and_the_new_ones(sample: tuple[Any, SampleAgent],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import agents_api.server as server

    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr("agents_api.server.uvicorn.run", lambda app, **options: calls.append((app, options)))
    monkeypatch.delenv("FLOWMAS_API_HOST", raising=False)
    app, _ = sample
    container = app.container
    server.run("sample-container", container)  # the SDK's opaca.run(title, container)
    assert calls[-1][0].title == "sample-container"
    assert calls[-1][1]["port"] == 8082 and calls[-1][1]["host"] == "127.0.0.1"
    assert calls[-1][1]["access_log"] is False
    server.run(container, app, port=9000)
    assert calls[-1][0] is app and calls[-1][1]["port"] == 9000
    monkeypatch.setenv("CONTAINER_ID", "started-by-a-platform")
    server.run(container)
    assert calls[-1][1]["host"] == "0.0.0.0"
