"""The one contract both caches keep, run against each: ``EmbeddedCache`` and ``RedisCache`` on the session's
real Redis (``REDIS_URL``). Every Redis test works under its own random key root and namespace, and the
fixture deletes whatever is left under that root, so tests neither collide nor leave anything behind.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis

from flowmas.cache import RAISE, BaseCache, Cache, EmbeddedCache, RedisCache, cache_from_url
from flowmas.errors import CacheError


def _purge(url: str, root: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        names = list(client.scan_iter(match=f"{root}*", count=1000))
        if names:
            client.delete(*names)
        return len(names)
    finally:
        client.close()


@pytest_asyncio.fixture(params=["embedded", "redis"], loop_scope="function")
async def cache(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[BaseCache]:
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    if request.param == "embedded":
        made: BaseCache = EmbeddedCache(namespace=namespace)
        yield made
        await made.close()
        return
    root = f"fmtest-{uuid.uuid4().hex[:12]}"
    made = RedisCache(redis_url, namespace=namespace, key_root=root)
    try:
        yield made
    finally:
        await made.close()
        _purge(redis_url, root)


async def test_both_backends_are_caches(cache: BaseCache) -> None:
    assert isinstance(cache, Cache)
    assert cache.affix_sep == ":"
    await cache.ping()


# --- values -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, True, 0, -7, 2**62, 3.25, "", "naïve ✓", [1, [2, {"a": None}]],
                                   {"nested": {"list": [1, 2.5, "x"], "empty": {}}}])
async def test_json_values_round_trip(cache: BaseCache, value: Any) -> None:
    await cache.set("k", value)
    assert await cache.get("k") == value


async def test_get_returns_a_fresh_object_never_the_stored_one(cache: BaseCache) -> None:
    stored = {"items": [1]}
    await cache.set("k", stored)
    stored["items"].append(2)
    got = await cache.get("k")
    got["items"].append(3)
    assert await cache.get("k") == {"items": [1]}


async def test_missing_key_raises_keyerror_by_default_and_returns_a_given_default(cache: BaseCache) -> None:
    with pytest.raises(KeyError) as caught:
        await cache.get("absent")
    assert caught.value.args == ("absent",)
    with pytest.raises(KeyError):
        await cache.get("absent", RAISE)
    assert await cache.get("absent", None) is None
    assert await cache.get("absent", default=5) == 5


async def test_raw_bytes_are_stored_as_they_are(cache: BaseCache) -> None:
    payload = bytes(range(256)) + b"\x00{not json"
    await cache.set("blob", payload, raw=True)
    assert await cache.get("blob", raw=True) == payload
    assert await cache.get("blob") == payload  # a raw entry read without raw is still its bytes
    await cache.set("doc", {"a": 1})
    assert await cache.get("doc", raw=True) == b'{"a":1}'
    assert await cache.get_many(["blob", "doc"]) == {"blob": payload, "doc": {"a": 1}}
    with pytest.raises(CacheError, match="raw cache value must be bytes"):
        await cache.set("blob", "text", raw=True)


async def test_a_value_that_is_not_json_is_refused_naming_key_and_type(cache: BaseCache) -> None:
    with pytest.raises(CacheError, match=r"'obj'.*object.*not JSON"):
        await cache.set("obj", object())
    with pytest.raises(CacheError, match=r"'s'.*set"):
        await cache.set("s", {1, 2})
    assert await cache.keys() == set()


async def test_get_many_returns_present_keys_only(cache: BaseCache) -> None:
    await cache.set("a", 1)
    await cache.set("b", {"x": 2})
    assert await cache.get_many(["a", "b", "missing"]) == {"a": 1, "b": {"x": 2}}
    assert await cache.get_many([]) == {}
    assert await cache.get_many(iter(["a"])) == {"a": 1}


async def test_delete_and_delete_many_say_what_they_removed(cache: BaseCache) -> None:
    for key in "abc":
        await cache.set(key, key)
    assert await cache.delete("a") is True
    assert await cache.delete("a") is False
    assert await cache.delete_many(["b", "c", "zz", "b"]) == 2
    assert await cache.delete_many([]) == 0
    assert await cache.keys() == set()


async def test_keys_and_get_all_show_the_namespace_without_affixes_and_without_mailboxes(cache: BaseCache) -> None:
    await cache.set("a", 1)
    await cache.set("node:B:result", [2])
    await cache.set("blob", b"\x01", raw=True)
    await cache.publish_to_mailbox("inbox", "hello")
    assert await cache.keys() == {"a", "node:B:result", "blob"}
    assert await cache.get_all() == {"a": 1, "node:B:result": [2], "blob": b"\x01"}
    async with cache.with_prefix("elsewhere"):
        assert await cache.keys() == set()
        assert await cache.get_all() == {}


async def test_a_suffix_narrows_every_view_and_is_part_of_the_key(cache: BaseCache) -> None:
    await cache.set("plain", 0)
    async with cache.with_suffix("node1"):
        await cache.set("x", 1)
        await cache.set("y", 2)
        await cache.publish_to_mailbox("box", "m")
        assert await cache.get("x") == 1
        assert await cache.keys() == {"x", "y"}
        assert await cache.get_all() == {"x": 1, "y": 2}
    # Asimov's concatenation: without the suffix the entry is key + ":" + suffix.
    assert await cache.get("x:node1") == 1
    assert await cache.keys() == {"plain", "x:node1", "y:node1"}
    async with cache.with_suffix("node1"):
        await cache.clear()
        assert await cache.keys() == set()
        assert await cache.get_message("box", timeout=0) is None
    assert await cache.keys() == {"plain"}


async def test_an_empty_prefix_is_a_namespace_like_any_other(cache: BaseCache) -> None:
    async with cache.with_prefix(""):
        await cache.set("k", "v")
        await cache.publish_to_mailbox("mb", 1)
        assert await cache.keys() == {"k"}
        assert await cache.get_all() == {"k": "v"}
        dump = await cache.dump_namespace()
        assert dump["values"] == {"k": "v"} and dump["mailboxes"] == {"mb": [1]}
        await cache.clear()
        assert await cache.keys() == set()
        assert await cache.get_message("mb", timeout=0) is None


async def test_clear_empties_the_current_namespace_only_mailboxes_included(cache: BaseCache) -> None:
    await cache.set("a", 1)
    await cache.publish_to_mailbox("mb", 1)
    async with cache.with_prefix("other"):
        await cache.set("a", 2)
        await cache.publish_to_mailbox("mb", 2)
    await cache.clear()
    assert await cache.keys() == set()
    assert await cache.get_message("mb", timeout=0) is None
    async with cache.with_prefix("other"):
        assert await cache.get("a") == 2
        assert await cache.get_message("mb", timeout=0) == 2
        await cache.clear()


async def test_prefixes_are_scoped_per_asyncio_task(cache: BaseCache) -> None:
    both_inside = asyncio.Barrier(2)

    async def worker(prefix: str) -> tuple[Any, set[str]]:
        async with cache.with_prefix(prefix):
            await both_inside.wait()  # both tasks hold their prefix at the same time
            await cache.set("shared-name", prefix)
            await asyncio.sleep(0.01)
            return await cache.get("shared-name"), await cache.keys()

    first, second = await asyncio.gather(worker("p1"), worker("p2"))
    assert first == ("p1", {"shared-name"})
    assert second == ("p2", {"shared-name"})
    assert await cache.keys() == set()  # the test's own task never left its namespace
    for prefix in ("p1", "p2"):
        async with cache.with_prefix(prefix):
            await cache.clear()


async def test_prefixes_nest_and_are_restored_on_exit_even_on_error(cache: BaseCache) -> None:
    outer = cache.prefix
    async with cache.with_prefix("a"):
        async with cache.with_prefix("b"):
            assert cache.prefix == "b"
        assert cache.prefix == "a"
        with pytest.raises(RuntimeError):
            async with cache.with_suffix("s"):
                assert cache.suffix == "s"
                raise RuntimeError
        assert cache.suffix == cache.default_suffix
    assert cache.prefix == outer


async def test_a_namespaced_view_shares_the_storage(cache: BaseCache) -> None:
    run = cache.namespaced("run-42")
    assert run.default_prefix == "run-42"
    await run.set("k", 1)
    await run.publish_to_mailbox("agent:a1", "hi")
    async with cache.with_prefix("run-42"):
        assert await cache.get("k") == 1
        assert await cache.get_message("agent:a1", timeout=0) == "hi"
    assert await cache.keys() == set()
    await run.close()  # a view owns nothing: the parent keeps working
    await cache.set("still", "alive")
    assert await cache.get("still") == "alive"
    await run.clear()


# --- TTLs -------------------------------------------------------------------------------------------------


async def _gone(cache: BaseCache, key: str, within: float = 2.0) -> float:
    started = time.monotonic()
    while await cache.get(key, None) is not None:
        assert time.monotonic() - started < within, f"{key} did not expire"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_a_ttl_expires_the_entry(cache: BaseCache) -> None:
    await cache.set("short", "x", ttl=0.05)
    await cache.set("long", "y", ttl=60)
    await cache.set("forever", "z")
    assert await cache.get("short") == "x"
    await _gone(cache, "short")
    assert await cache.keys() == {"long", "forever"}
    assert await cache.get_many(["short", "long"]) == {"long": "y"}
    ttls = (await cache.dump_namespace())["ttls"]
    assert set(ttls) == {"long"} and 55 < ttls["long"] <= 60
    await cache.set("long", "y2")  # a plain set removes the TTL
    assert (await cache.dump_namespace())["ttls"] == {}


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), 10**12, "5", True])
async def test_absurd_ttls_are_refused(cache: BaseCache, ttl: Any) -> None:
    with pytest.raises(CacheError, match="TTL"):
        await cache.set("k", 1, ttl=ttl)
    assert await cache.keys() == set()


# --- mailboxes --------------------------------------------------------------------------------------------


async def test_a_mailbox_is_a_fifo_queue(cache: BaseCache) -> None:
    for i in range(5):
        await cache.publish_to_mailbox("agent:a1", {"n": i})
    assert [await cache.get_message("agent:a1", timeout=0) for _ in range(6)] == [{"n": i} for i in range(5)] + [None]


async def test_competing_consumers_each_get_a_different_message(cache: BaseCache) -> None:
    waiters = [asyncio.create_task(cache.get_message("work", timeout=0.3)) for _ in range(5)]
    await asyncio.sleep(0.05)  # all five are waiting
    for i in range(4):
        await cache.publish_to_mailbox("work", i)
    got = await asyncio.gather(*waiters)
    assert sorted(m for m in got if m is not None) == [0, 1, 2, 3]
    assert got.count(None) == 1


async def test_get_message_times_out_with_none_and_zero_does_not_block(cache: BaseCache) -> None:
    started = time.monotonic()
    assert await cache.get_message("empty", timeout=0) is None
    assert await cache.get_message("empty", timeout=0.1) is None
    assert 0.09 <= time.monotonic() - started < 1.0
    with pytest.raises(CacheError, match="timeout"):
        await cache.get_message("empty", timeout=-1)


async def test_a_waiting_consumer_wakes_on_publish_and_blocks_nothing_else(cache: BaseCache) -> None:
    waiter = asyncio.create_task(cache.get_message("inbox", timeout=5))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await cache.set("meanwhile", 1)  # other commands go on while a consumer waits
    assert await cache.get("meanwhile") == 1
    await cache.publish_to_mailbox("inbox", "wake")
    assert await waiter == "wake"
    assert time.monotonic() - started < 0.5  # woken by the publish, not by a poll or the timeout


async def test_a_cancelled_consumer_takes_no_message(cache: BaseCache) -> None:
    waiter = asyncio.create_task(cache.get_message("inbox", timeout=5))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0.05)  # Redis: let the server see the dropped BLPOP connection (see RedisCache's docs)
    await cache.publish_to_mailbox("inbox", "kept")
    assert await cache.get_message("inbox", timeout=1) == "kept"


async def test_mailboxes_are_namespaced(cache: BaseCache) -> None:
    await cache.publish_to_mailbox("agent:x", "mine")
    async with cache.with_prefix("other"):
        assert await cache.get_message("agent:x", timeout=0) is None
    assert await cache.get_message("agent:x", timeout=0) == "mine"


async def test_a_bounded_mailbox_keeps_its_newest_messages(cache: BaseCache) -> None:
    for i in range(10):
        await cache.publish_to_mailbox("box", i, max_length=3)
    assert (await cache.dump_namespace())["mailboxes"] == {"box": [7, 8, 9]}
    assert [await cache.get_message("box", timeout=0) for _ in range(4)] == [7, 8, 9, None]
    await cache.publish_to_mailbox("box", "a", max_length=1)
    await cache.publish_to_mailbox("box", "b")  # no bound on this publish: nothing dropped
    assert [await cache.get_message("box", timeout=0) for _ in range(3)] == ["a", "b", None]


async def test_a_bounded_mailbox_still_wakes_a_waiting_consumer(cache: BaseCache) -> None:
    waiting = asyncio.create_task(cache.get_message("box", timeout=10))
    await asyncio.sleep(0.05)
    await cache.publish_to_mailbox("box", "hello", max_length=1)
    assert await waiting == "hello"


async def test_a_mailbox_with_a_ttl_vanishes_with_its_messages_and_a_publish_without_one_keeps_it(
        cache: BaseCache) -> None:
    await cache.publish_to_mailbox("short", 1, ttl=0.05)
    await cache.publish_to_mailbox("short", 2, ttl=0.05)
    await cache.publish_to_mailbox("kept", 1, ttl=0.05)
    await cache.publish_to_mailbox("kept", 2)  # the latest publish decides: no TTL
    deadline = time.monotonic() + 5
    while (await cache.dump_namespace())["mailboxes"].get("short") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert (await cache.dump_namespace())["mailboxes"] == {"kept": [1, 2]}
    assert await cache.get_message("short", timeout=0) is None
    await cache.publish_to_mailbox("short", 3, ttl=60)  # a new mailbox of that name starts empty
    assert await cache.get_message("short", timeout=0) == 3


@pytest.mark.parametrize(("option", "value", "match"), [
    ("max_length", 0, "max_length"), ("max_length", -1, "max_length"), ("max_length", 2.5, "max_length"),
    ("max_length", True, "max_length"), ("max_length", 10**10, "max_length"), ("max_length", "5", "max_length"),
    ("ttl", 0, "TTL"), ("ttl", float("nan"), "TTL"), ("ttl", "5", "TTL")])
async def test_absurd_mailbox_bounds_are_refused_and_queue_nothing(
        cache: BaseCache, option: str, value: Any, match: str) -> None:
    with pytest.raises(CacheError, match=match):
        await cache.publish_to_mailbox("box", 1, **{option: value})
    assert (await cache.dump_namespace())["mailboxes"] == {}


# --- broadcast --------------------------------------------------------------------------------------------


async def test_publish_reaches_every_current_subscriber_in_order(cache: BaseCache) -> None:
    assert await cache.publish("channel:news", "nobody listens") == 0
    received: list[list[Any]] = [[], [], []]
    ready = asyncio.Barrier(4)
    done = asyncio.Event()

    async def listen(i: int) -> None:
        async with cache.subscribe("channel:news") as messages:
            await ready.wait()
            async for message in messages:
                received[i].append(message)
                if message == "end":
                    break
        if all(r and r[-1] == "end" for r in received):
            done.set()

    tasks = [asyncio.create_task(listen(i)) for i in range(3)]
    await ready.wait()
    for message in ({"n": 1}, [2], "end"):
        assert await cache.publish("channel:news", message) == 3
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.gather(*tasks)
    assert received == [[{"n": 1}, [2], "end"]] * 3
    assert await cache.publish("channel:news", "after") == 0
    async with cache.with_prefix("other"), cache.subscribe("channel:news"):
        assert await cache.publish("channel:news", "x") == 1
        async with cache.with_prefix("third"):
            assert await cache.publish("channel:news", "x") == 0  # channels are namespaced too


# --- snapshots --------------------------------------------------------------------------------------------


async def test_dump_and_load_round_trip_values_raw_bytes_mailboxes_and_ttls(cache: BaseCache) -> None:
    await cache.set("plan", {"nodes": ["a", "b"], "index": 1})
    await cache.set("blob", b"\x00\xffbinary", raw=True)
    await cache.set("temp", "soon", ttl=30)
    for i in range(3):
        await cache.publish_to_mailbox("agent:a1", {"msg": i})
    dump = await cache.dump_namespace()
    assert dump["values"] == {"plan": {"nodes": ["a", "b"], "index": 1}, "temp": "soon"}
    assert dump["raw"] == {"blob": base64.b64encode(b"\x00\xffbinary").decode()}
    assert dump["mailboxes"] == {"agent:a1": [{"msg": 0}, {"msg": 1}, {"msg": 2}]}
    assert set(dump["ttls"]) == {"temp"}
    import json

    assert json.loads(json.dumps(dump)) == dump  # plain JSON, for a snapshot file

    restored = cache.namespaced("restored")
    await restored.set("stale", 1)
    await restored.publish_to_mailbox("agent:a1", "stale")
    await restored.load_namespace(dump)
    assert await restored.get_all() == {"plan": {"nodes": ["a", "b"], "index": 1}, "temp": "soon",
                                        "blob": b"\x00\xffbinary"}
    assert [await restored.get_message("agent:a1", timeout=0) for _ in range(4)] == [
        {"msg": 0}, {"msg": 1}, {"msg": 2}, None]
    assert 25 < (await restored.dump_namespace())["ttls"]["temp"] <= 30

    await restored.set("kept", True)
    await restored.load_namespace({"values": {"plan": 2}, "raw": {}, "mailboxes": {"m": [1]}, "ttls": {}},
                                  replace=False)
    assert await restored.get("kept") is True and await restored.get("plan") == 2
    await restored.clear()
    assert await restored.dump_namespace() == {"values": {}, "raw": {}, "mailboxes": {}, "ttls": {}}


async def test_load_refuses_a_malformed_dump_and_changes_nothing(cache: BaseCache) -> None:
    await cache.set("keep", 1)
    for bad in ([], {"values": []}, {"raw": {"k": "not base64!"}}, {"mailboxes": {"m": "x"}},
                {"values": {"k": 1}, "ttls": {"k": -1}}, {"values": {"": 1}}):
        with pytest.raises(CacheError):
            await cache.load_namespace(bad)  # type: ignore[arg-type]
    assert await cache.get_all() == {"keep": 1}


# --- construction -----------------------------------------------------------------------------------------


def test_cache_from_url_picks_the_backend(redis_url: str) -> None:
    assert isinstance(cache_from_url(None), EmbeddedCache)
    assert isinstance(cache_from_url("memory://", namespace="n"), EmbeddedCache)
    assert isinstance(cache_from_url(redis_url), RedisCache)
    assert isinstance(cache_from_url("rediss://example.invalid:6380/0"), RedisCache)
    assert isinstance(cache_from_url("unix:///tmp/redis.sock?db=1"), RedisCache)
    assert cache_from_url(redis_url, namespace="run-1").default_prefix == "run-1"
    from flowmas.errors import ConfigurationError

    for url in ("postgres://u:secret@h/db", "nonsense"):
        with pytest.raises(ConfigurationError, match="scheme") as caught:
            cache_from_url(url)
        assert "secret" not in str(caught.value)
