"""What only ``RedisCache`` promises: its key scheme and index, its traffic (round trips and commands, counted by
a recording connection on the real server: the session's Redis may be shared, so server-wide ``INFO
commandstats`` deltas would count other clients), and that a namespace's cost ignores other namespaces' keys.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis

from flowmas.cache import RedisCache


class Recorder:
    def __init__(self) -> None:
        self.round_trips = 0
        self.commands: list[str] = []

    def reset(self) -> None:
        self.round_trips = 0
        self.commands.clear()


RECORDER = Recorder()


class RecordingConnection(aioredis.Connection):
    """A real connection that notes each write to the socket (a round trip) and each command name."""

    def pack_command(self, *args: Any) -> Any:
        RECORDER.commands.append(str(args[0]).upper())
        return super().pack_command(*args)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        RECORDER.round_trips += 1
        await super().send_packed_command(command, check_health)


@pytest.fixture
def root(redis_url: str) -> Iterator[str]:
    root = f"fmtest-{uuid.uuid4().hex[:12]}"
    yield root
    client = redis.Redis.from_url(redis_url)
    names = list(client.scan_iter(match=f"{root}*", count=1000))
    if names:
        client.delete(*names)
    client.close()


@pytest_asyncio.fixture(loop_scope="function")
async def recorded(redis_url: str, root: str) -> AsyncIterator[RedisCache]:
    cache = RedisCache(redis_url, namespace="run-1", key_root=root,
                       redis_options={"connection_class": RecordingConnection})
    await cache.ping()  # connect (HELLO, SELECT, ...) before counting
    RECORDER.reset()
    yield cache
    await cache.close()


async def test_the_key_scheme_is_the_documented_one(redis_url: str, root: str) -> None:
    cache = RedisCache(redis_url, namespace="run-1", key_root=root)
    await cache.set("node:a", {"x": 1})
    await cache.set("blob", b"\x01", raw=True)
    await cache.publish_to_mailbox("agent:a1", "hi")
    async with cache.with_suffix("s"):
        await cache.set("k", 2)
    plain = redis.Redis.from_url(redis_url)
    assert sorted(plain.scan_iter(match=f"{root}*")) == sorted([
        f"{root}{{run-1}}:kv:node:a".encode(), f"{root}{{run-1}}:kv:blob".encode(),
        f"{root}{{run-1}}:mb:agent:a1".encode(), f"{root}{{run-1}}:kv:k:s".encode(), f"{root}{{run-1}}:ix:".encode()])
    indexed = plain.zrange(f"{root}{{run-1}}:ix:", 0, -1, withscores=True)
    assert sorted(indexed) == sorted((name, float("inf")) for name in [
        f"{root}{{run-1}}:kv:node:a".encode(), f"{root}{{run-1}}:kv:blob".encode(),
        f"{root}{{run-1}}:mb:agent:a1".encode(), f"{root}{{run-1}}:kv:k:s".encode()])
    assert plain.get(f"{root}{{run-1}}:kv:node:a") == b'{"x":1}'  # plain JSON, readable by any tool
    assert plain.get(f"{root}{{run-1}}:kv:blob") == b"\x00\x01"
    assert plain.type(f"{root}{{run-1}}:mb:agent:a1") == b"list"
    plain.close()
    await cache.close()


async def test_a_prefix_that_looks_like_a_key_scheme_cannot_see_another_namespace(redis_url: str, root: str) -> None:
    outer = RedisCache(redis_url, namespace="a", key_root=root)
    await outer.set("kv:b", 1)  # stored as {a}:kv:kv:b
    # Braces are refused in a prefix (tests/hostile/test_cache.py); glob characters are escaped:
    async with outer.with_prefix("*"):
        assert await outer.keys() == set()
        await outer.set("x", 1)
    async with outer.with_prefix("[a]"):
        assert await outer.keys() == set()
    assert await outer.keys() == {"kv:b"}
    async with outer.with_prefix("*"):
        await outer.clear()
    assert await outer.keys() == {"kv:b"}
    await outer.close()


async def test_get_many_is_one_round_trip(recorded: RedisCache) -> None:
    for i in range(20):
        await recorded.set(f"var{i}", i)
    RECORDER.reset()
    got = await recorded.get_many([f"var{i}" for i in range(25)])
    assert got == {f"var{i}": i for i in range(20)}
    assert RECORDER.round_trips == 1
    assert RECORDER.commands == ["MGET"]


async def test_writes_are_one_command_with_their_index_entry(recorded: RedisCache, redis_url: str,
                                                             root: str) -> None:
    for _ in range(2):  # the first round may load the scripts into Redis (NOSCRIPT, SCRIPT LOAD)
        RECORDER.reset()
        await recorded.set("k", 1)
        await recorded.set("t", 1, ttl=30)
        await recorded.publish_to_mailbox("m", 1)
        assert await recorded.delete("k") is True
    assert RECORDER.round_trips == 4
    assert RECORDER.commands == ["EVALSHA"] * 4
    plain = redis.Redis.from_url(redis_url)
    [(name, score)] = plain.zrange(f"{root}{{run-1}}:ix:", 0, -1, withscores=True)[:1]
    assert name == f"{root}{{run-1}}:kv:t".encode()
    seconds, micros = plain.time()  # scored by Redis's clock: expiry = now + 30 s
    assert abs(score - (seconds * 1000 + micros // 1000 + 30_000)) < 5_000
    assert plain.zscore(f"{root}{{run-1}}:ix:", f"{root}{{run-1}}:mb:m") == float("inf")
    plain.close()


async def test_get_all_is_one_index_read_plus_one_pipelined_read(recorded: RedisCache) -> None:
    for i in range(30):
        await recorded.set(f"k{i}", i)
    RECORDER.reset()
    assert len(await recorded.get_all()) == 30
    assert RECORDER.commands == ["ZRANGE", "MGET"]
    assert RECORDER.round_trips == 2


async def test_expired_and_consumed_names_leave_the_index_when_listed(
        recorded: RedisCache, redis_url: str, root: str) -> None:
    await recorded.set("short", 1, ttl=0.05)
    await recorded.set("long", 2)
    await recorded.publish_to_mailbox("box", "only")
    assert await recorded.get_message("box", timeout=0) == "only"
    plain = redis.Redis.from_url(redis_url)
    index = f"{root}{{run-1}}:ix:"
    assert plain.zcard(index) == 3
    await asyncio.sleep(0.1)
    assert await recorded.keys() == {"long"}
    assert (await recorded.dump_namespace())["mailboxes"] == {}
    assert plain.zrange(index, 0, -1) == [f"{root}{{run-1}}:kv:long".encode()]
    plain.close()


async def test_names_written_once_with_a_ttl_cannot_pile_up_in_the_index(
        recorded: RedisCache, redis_url: str, root: str) -> None:
    plain = redis.Redis.from_url(redis_url)
    index = f"{root}{{run-1}}:ix:"
    long_ago = time.time() * 1000 - 120_000
    plain.zadd(index, {f"{root}{{run-1}}:kv:old{i}": long_ago for i in range(500)})  # expired two minutes ago
    plain.zadd(index, {f"{root}{{run-1}}:kv:recent": time.time() * 1000 - 1_000})  # within the grace minute
    await recorded.set("fresh", 1, ttl=60)
    assert sorted(plain.zrange(index, 0, -1)) == [f"{root}{{run-1}}:kv:fresh".encode(),
                                                  f"{root}{{run-1}}:kv:recent".encode()]
    plain.close()


async def test_a_name_written_again_while_a_listing_prunes_keeps_its_index_entry(
        recorded: RedisCache, redis_url: str, root: str) -> None:
    """The prune checks existence inside Redis, so a key recreated after the listing read it as gone stays."""
    await recorded.set("k", 1, ttl=0.05)
    await asyncio.sleep(0.1)
    listed = await recorded._listed(("kv",))
    await recorded.set("k", 2)  # written again between the read of the index and the prune
    assert await recorded._alive([name for name, _ in listed]) == {f"{root}{{run-1}}:kv:k".encode()}
    assert await recorded.keys() == {"k"}


async def test_keys_clear_and_dump_never_send_keys_and_ignore_other_namespaces(
        recorded: RedisCache, redis_url: str, root: str) -> None:
    plain = redis.Redis.from_url(redis_url)
    # 100,000 keys of another namespace under the same root, written server-side in one call.
    plain.eval("for i = 1, 100000 do redis.call('SET', KEYS[1] .. i, 'x') end", 1, f"{root}{{other}}:kv:k")
    for i in range(10):
        await recorded.set(f"mine{i}", i)
    await recorded.publish_to_mailbox("mb", 1)
    RECORDER.reset()
    started = time.monotonic()
    assert await recorded.keys() == {f"mine{i}" for i in range(10)}
    assert len((await recorded.dump_namespace())["values"]) == 10
    await recorded.clear()
    assert await recorded.keys() == set()
    elapsed = time.monotonic() - started
    assert "KEYS" not in RECORDER.commands
    listing = RECORDER.commands[:RECORDER.commands.index("SCAN")]  # keys() and the dump; then clear() scans
    assert "SCAN" not in listing and set(listing) <= {"ZRANGE", "EVALSHA", "MULTI", "GET", "PTTL", "LRANGE", "EXEC"}
    assert set(RECORDER.commands) <= {"ZRANGE", "EVALSHA", "SCAN", "MULTI", "GET", "PTTL", "LRANGE", "EXEC", "UNLINK"}
    assert plain.exists(f"{root}{{other}}:kv:k1", f"{root}{{other}}:kv:k100000") == 2
    assert elapsed < 10
    plain.eval("for i = 1, 100000 do redis.call('UNLINK', KEYS[1] .. i) end", 1, f"{root}{{other}}:kv:k")
    plain.close()


async def test_load_namespace_is_one_transaction(recorded: RedisCache) -> None:
    await recorded.set("old", 1)
    RECORDER.reset()
    await recorded.load_namespace({"values": {"a": 1, "b": 2}, "raw": {}, "mailboxes": {"m": [1, 2]},
                                   "ttls": {"a": 5}})
    assert "MULTI" in RECORDER.commands and "EXEC" in RECORDER.commands
    after_scan = RECORDER.commands[RECORDER.commands.index("MULTI"):]
    assert after_scan == ["MULTI", "UNLINK", "ZREM", "SET", "ZADD", "ZREMRANGEBYSCORE", "SET", "ZADD",
                          "RPUSH", "ZADD", "EXEC"]
    assert await recorded.get_all() == {"a": 1, "b": 2}


async def test_waiting_consumers_do_not_use_the_command_pool(redis_url: str, root: str) -> None:
    cache = RedisCache(redis_url, key_root=root, max_connections=2)
    waiters = [asyncio.create_task(cache.get_message(f"box{i}", timeout=2)) for i in range(10)]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    for i in range(5):
        await cache.set(f"k{i}", i)
    assert await cache.get_many([f"k{i}" for i in range(5)]) == {f"k{i}": i for i in range(5)}
    assert time.monotonic() - started < 1
    for i in range(10):
        await cache.publish_to_mailbox(f"box{i}", i)
    assert await asyncio.gather(*waiters) == list(range(10))
    await cache.close()


async def test_a_view_shares_connections_and_a_ttl_is_set_with_px(redis_url: str, root: str) -> None:
    cache = RedisCache(redis_url, key_root=root)
    view = cache.namespaced("run-9")
    await view.set("t", 1, ttl=12.5)
    plain = redis.Redis.from_url(redis_url)
    assert 12_000 < plain.pttl(f"{root}{{run-9}}:kv:t") <= 12_500
    plain.close()
    assert view._client is cache._client
    await view.close()
    assert await cache.get("x", None) is None
    await cache.close()


def test_from_params_builds_the_url_without_the_password() -> None:
    cache = RedisCache.from_params("example.invalid", 6390, 3, password="p@ss/w#rd", namespace="n")
    assert cache.where == "example.invalid:6390" and cache.db == 3 and cache.default_prefix == "n"
    assert cache._client.connection_pool.connection_kwargs["password"] == "p@ss/w#rd"
    assert "p@ss" not in repr(cache)


@pytest.mark.parametrize("url", ["unix:///tmp/none.sock?db=2", "rediss://h:6380/1"])
def test_unix_and_tls_urls(url: str) -> None:
    cache = RedisCache(url)
    assert cache.where in ("unix:/tmp/none.sock", "h:6380")
