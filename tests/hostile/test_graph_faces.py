"""Hostile input to the graph's faces: import paths that are not one, tasks of the wrong shape, attributes that are
no graph, and messages (huge, not JSON) sent to a container whose Graphs agent copies them into the cache."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from agents_api import ApiSettings, create_app
from agents_api.graphs import GraphsAgent
from flowmas.cache import EmbeddedCache
from flowmas.errors import ConfigurationError
from flowmas.graph.loading import load_graph, parse_task
from flowmas.graph.runs import agent_mailbox, channel_mailbox, deliver_message, platform_cache
from tests.agents_api import asgi_client, assert_error, make_container


@pytest.mark.parametrize(("path", "words"), [
    ("", "name it MODULE:ATTR"),
    ("examples.research", "name it MODULE:ATTR"),
    ("a:b:c", "name it MODULE:ATTR"),
    ("os.path; rm -rf /:graph", "must be a dotted module name"),
    ("../etc/passwd:graph", "must be a dotted module name"),
    ("examples.research:", "must be a dotted module name"),
    ("examples.research:graph()", "must be a dotted module name"),
    ("examples.does_not_exist:graph", "cannot import module 'examples.does_not_exist' (not found)"),
    ("examples.research:nope", "has no attribute 'nope'"),
    ("examples.research:SOURCES", "is a dict, not a flowmas.graph.Agent"),
    ("examples.research:Plan", "is a ModelMetaclass, not a flowmas.graph.Agent"),
    ("tests.graph_faces:not_an_agent", "is a int, not"),
    ("tests.graph_faces:broken_factory", "the factory 'broken_factory' failed (RuntimeError: the factory broke)"),
    ("x" * 5000 + ":graph", "an import path of 5006 characters; the limit is 300"),
])
def test_bad_import_paths_are_one_sentence(path: str, words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_graph(path)
    assert words in str(caught.value)
    assert len(str(caught.value)) < 600


def test_a_factory_is_called_and_its_agent_used() -> None:
    assert list(load_graph("tests.graph_faces:factory").nodes) == ["only"]


@pytest.mark.parametrize(("task", "words"), [
    ('{"type": 1, "objective": "o"}', "type: Input should be a valid string"),
    ('{"type": "t"}', "objective: Field required"),
    ('{"type": "t", "objective": "o", "id": "../../etc"}', "Invalid task id"),
    ('{"type": "t", "objective": "o", "params": []}', "params: Input should be a valid dictionary"),
    ("[1, 2]", "must be a JSON object, not list"),
    ("null", "must be a JSON object, not NoneType"),
    ("{'type': 't'}", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ('{"type": "' + "x" * (5 * 2**20) + '"}', "the limit is"),
])
def test_tasks_of_the_wrong_shape_name_the_field(task: str, words: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_task(task)
    assert words in str(caught.value) and len(str(caught.value)) < 700


def test_send_and_broadcast_with_hostile_bodies() -> None:
    cache = EmbeddedCache()
    container, _, _ = make_container()
    GraphsAgent(container=container, cache=cache)
    app = create_app(container, settings=ApiSettings(max_body_bytes=10_000), platform=False)

    async def scenario() -> Any:
        async with asgi_client(app) as client:
            assert_error(await client.post("/send/graphs", content=b"x" * 20_000), 413)
            assert_error(await client.post("/send/graphs", content=b"{not json"), 400)
            assert_error(await client.post("/send/ghost", json={"payload": 1}), 404)
            assert_error(await client.post("/broadcast/news", content=b"\xff\xfe"), 400)
            ok = await client.post("/send/calc-1", json={"payload": "to a calculator"})
            assert ok.status_code == 200
            assert (await client.post("/broadcast/news", json={"payload": {"deep": [1] * 100}})).status_code == 200
        view = platform_cache(cache)
        return (await view.get_message(agent_mailbox("graphs"), timeout=0),
                await view.get_message(agent_mailbox("calc-1"), timeout=0),
                await view.get_message(channel_mailbox("news"), timeout=0))

    nothing, calc, news = asyncio.run(scenario())
    assert nothing is None  # refused bodies never reach a mailbox
    assert calc == {"payload": "to a calculator", "replyTo": None}
    assert news == {"payload": {"deep": [1] * 100}, "replyTo": None}


def test_a_flood_of_messages_nobody_reads_is_bounded_and_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWMAS_GRAPH_MAILBOX_MAX_MESSAGES", "5")
    monkeypatch.setenv("FLOWMAS_GRAPH_MAILBOX_TTL_SECONDS", "3600")
    now = [1000.0]
    cache = EmbeddedCache(clock=lambda: now[0])
    container, _, _ = make_container()
    GraphsAgent(container=container, cache=cache)
    app = create_app(container, platform=False)

    async def scenario() -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        async with asgi_client(app) as client:
            for i in range(50):
                assert (await client.post("/send/calc-1", json={"payload": i})).status_code == 200
                assert (await client.post(f"/broadcast/chan{i}", json={"payload": i})).status_code == 200
        view = platform_cache(cache)
        held = (await view.dump_namespace())["mailboxes"]
        now[0] += 3601
        return held, (await view.dump_namespace())["mailboxes"]

    held, later = asyncio.run(scenario())
    assert [m["payload"] for m in held[agent_mailbox("calc-1")]] == [45, 46, 47, 48, 49]  # the newest five
    assert len(held) == 51 and held[channel_mailbox("chan7")] == [{"payload": 7, "replyTo": None}]
    assert later == {}  # an hour after their last message, every mailbox is gone


def test_a_send_queues_once_and_publishes_nothing_a_broadcast_queues_and_publishes_once() -> None:
    cache = EmbeddedCache()
    view = platform_cache(cache)

    async def scenario() -> tuple[list[Any], list[Any], dict[str, list[Any]]]:
        heard: dict[str, list[Any]] = {"news": [], "calc-1": []}
        async with view.subscribe(channel_mailbox("news")) as news, \
                view.subscribe(channel_mailbox("calc-1")) as calc:
            await deliver_message(cache, "agent", "calc-1", {"n": 1})
            await deliver_message(cache, "channel", "news", {"n": 2})
            await deliver_message(cache, "channel", "news", {"n": 3})
            for _ in range(2):
                heard["news"].append(await asyncio.wait_for(anext(news), 5))
            with contextlib.suppress(TimeoutError):  # nothing more on either channel
                heard["news"].append(await asyncio.wait_for(anext(news), 0.2))
            with contextlib.suppress(TimeoutError):
                heard["calc-1"].append(await asyncio.wait_for(anext(calc), 0.2))
        dump = (await view.dump_namespace())["mailboxes"]
        return heard["news"], heard["calc-1"], dump

    news, calc, mailboxes = asyncio.run(scenario())
    assert news == [{"n": 2}, {"n": 3}]  # each broadcast published once
    assert calc == []  # a send to an agent is queued, never published on a channel of its name
    assert mailboxes == {agent_mailbox("calc-1"): [{"n": 1}], channel_mailbox("news"): [{"n": 2}, {"n": 3}]}


def test_a_failing_cache_never_changes_the_senders_answer() -> None:
    class Broken(EmbeddedCache):
        async def publish_to_mailbox(self, mailbox: str, value: Any, **bounds: Any) -> None:
            raise RuntimeError("cache down")

    container, first, _ = make_container()
    GraphsAgent(container=container, cache=Broken())
    app = create_app(container, platform=False)

    async def scenario() -> int:
        async with asgi_client(app) as client:
            return (await client.post("/send/calc-1", json={"payload": 7})).status_code

    assert asyncio.run(scenario()) == 200
    assert [m.payload for m in first.messages] == [7]
