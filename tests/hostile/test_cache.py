"""The agent cache is never fooled: values that are not JSON, data that pretends to be Python objects, absurd
names and TTLs, passwords with odd bytes that must never be echoed, an unreachable server, and entries
planted by hand in a namespace. Each test asserts what the user sees and what the cache holds afterwards.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import redis

from flowmas.cache import BaseCache, EmbeddedCache, RedisCache, cache_from_url
from flowmas.errors import CacheConnectionError, CacheError, ConfigurationError, MailboxError, TransientError


@pytest.fixture
def root(redis_url: str) -> Iterator[str]:
    root = f"fmtest-{uuid.uuid4().hex[:12]}"
    yield root
    client = redis.Redis.from_url(redis_url)
    names = list(client.scan_iter(match=f"{root}*", count=1000))
    if names:
        client.delete(*names)
    client.close()


@pytest_asyncio.fixture(params=["embedded", "redis"], loop_scope="function")
async def cache(request: pytest.FixtureRequest, redis_url: str, root: str) -> AsyncIterator[BaseCache]:
    made: BaseCache = (EmbeddedCache(namespace="h") if request.param == "embedded"
                       else RedisCache(redis_url, namespace="h", key_root=root))
    yield made
    await made.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed on exit: nothing listens there


# --- values -----------------------------------------------------------------------------------------------


class Custom:
    pass


@pytest.mark.parametrize(("value", "type_name"), [
    (Custom(), "Custom"), ({1, 2}, "set"), (b"bytes", "bytes"), (2**70, "int"), ({1: "int key"}, "dict"),
    (object, "type"), (lambda: 1, "function"), ({"nested": [Custom()]}, "dict"), (1 + 2j, "complex")])
async def test_a_value_that_is_not_json_is_refused_and_nothing_is_stored(cache: BaseCache, value: Any,
                                                                        type_name: str) -> None:
    with pytest.raises(CacheError, match=rf"'k' is a {type_name}\b.*not JSON") as caught:
        await cache.set("k", value)
    assert "raw=True" in str(caught.value)
    with pytest.raises(CacheError, match="not JSON"):
        await cache.publish_to_mailbox("mb", value)
    assert await cache.keys() == set()
    assert await cache.get_message("mb", timeout=0) is None


async def test_a_self_referencing_value_is_refused(cache: BaseCache) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(CacheError, match="not JSON"):
        await cache.set("k", loop)


async def test_json_that_looks_like_pickled_objects_stays_plain_data(cache: BaseCache) -> None:
    # What jsonpickle would turn into a live object (Asimov's codec) comes back as the dict it is.
    sneaky = {"py/object": "subprocess.Popen", "py/reduce": [{"py/function": "os.system"}, ["echo owned"]]}
    await cache.set("k", sneaky)
    assert await cache.get("k") == sneaky
    await cache.load_namespace({"values": {"j": sneaky}, "raw": {}, "mailboxes": {"m": [sneaky]}, "ttls": {}})
    assert await cache.get("j") == sneaky and await cache.get_message("m", timeout=0) == sneaky


async def test_orjson_native_types_come_back_as_their_json_form(cache: BaseCache) -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    ident = uuid.UUID(int=7)
    await cache.set("k", {"when": when, "id": ident, "t": (1, 2), "nan": float("nan")})
    assert await cache.get("k") == {"when": "2026-01-02T03:04:05+00:00", "id": str(ident), "t": [1, 2],
                                    "nan": None}


# --- names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "problem"), [
    ("", "must not be empty"), ("a\x00b", "NUL"), ("x" * 1025, "1025 bytes"), ("é" * 513, "1026 bytes"),
    ("\ud800", "surrogate"), (42, "must be a str"), (None, "must be a str"), (b"k", "must be a str")])
async def test_absurd_keys_are_refused_naming_the_problem(cache: BaseCache, key: Any, problem: str) -> None:
    for call in (lambda: cache.set(key, 1), lambda: cache.get(key), lambda: cache.delete(key),
                 lambda: cache.get_many(["ok", key]), lambda: cache.delete_many([key])):
        with pytest.raises(CacheError, match=problem):
            await call()
    for call in (lambda: cache.publish_to_mailbox(key, 1), lambda: cache.get_message(key, timeout=0),
                 lambda: cache.publish(key, 1)):
        with pytest.raises(CacheError, match=problem):
            await call()
    with pytest.raises(CacheError, match=problem):
        cache.subscribe(key)
    assert await cache.keys() == set()


async def test_the_longest_allowed_key_works_and_the_message_does_not_carry_a_megabyte(cache: BaseCache) -> None:
    await cache.set("k" * 1024, 1)
    assert await cache.get("k" * 1024) == 1
    with pytest.raises(CacheError) as caught:
        await cache.set("k" * 2**20, 1)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize(("prefix", "problem"), [
    ("a\x00", "NUL"), ("{run}", "brace"), ("a}b", "brace"), ("p" * 300, "300 bytes"), (7, "must be a str")])
async def test_absurd_prefixes_are_refused(cache: BaseCache, prefix: Any, problem: str) -> None:
    with pytest.raises(CacheError, match=problem):
        cache.with_prefix(prefix)
    with pytest.raises(CacheError, match=problem):
        cache.namespaced(prefix)
    with pytest.raises(CacheError, match=problem):
        EmbeddedCache(namespace=prefix)


async def test_a_suffix_with_nul_is_refused_and_braces_are_fine_in_a_suffix(cache: BaseCache) -> None:
    with pytest.raises(CacheError, match="NUL"):
        cache.with_suffix("s\x00")
    async with cache.with_suffix("{x}"):
        await cache.set("k", 1)
        assert await cache.keys() == {"k"}
    assert await cache.keys() == {"k:{x}"}


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", True])
async def test_absurd_mailbox_timeouts_are_refused(cache: BaseCache, timeout: Any) -> None:
    with pytest.raises(CacheError, match="timeout"):
        await cache.get_message("mb", timeout=timeout)


async def test_a_tiny_ttl_is_honoured_not_rounded_to_forever(cache: BaseCache) -> None:
    await cache.set("k", 1, ttl=1e-9)
    await asyncio.sleep(0.02)
    assert await cache.get("k", None) is None


# --- passwords and an unreachable server -------------------------------------------------------------------

ODD = "p@ss/w#rd?é %:"


@pytest.mark.parametrize("url", [
    "redis://:{q}@127.0.0.1:{port}/0", "redis://user:{q}@127.0.0.1:{port}", "rediss://:{q}@127.0.0.1:{port}/2"])
async def test_an_unreachable_server_names_host_and_port_never_the_password(url: str) -> None:
    from urllib.parse import quote

    port = _closed_port()
    cache = cache_from_url(url.format(q=quote(ODD, safe=""), port=port), connect_timeout=2)
    for call in (cache.ping, lambda: cache.get("k"), lambda: cache.set("k", 1), lambda: cache.get_many(["k"]),
                 cache.keys, cache.clear, cache.dump_namespace, lambda: cache.publish("c", 1),
                 lambda: cache.get_message("m", timeout=0.1), lambda: cache.get_message("m", timeout=0)):
        with pytest.raises(CacheConnectionError) as caught:
            await call()
        message = str(caught.value)
        assert f"127.0.0.1:{port}" in message
        assert isinstance(caught.value, TransientError)
        for piece in (ODD, quote(ODD, safe=""), "w#rd", "p@ss", "rd?"):
            assert piece not in message and piece not in repr(caught.value)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(CacheConnectionError):
        async with cache.subscribe("c"):
            pass
    await cache.close()


@pytest.mark.parametrize("url", ["redis://:p@ss/w#rd@127.0.0.1:6379/0", "redis://:pa?ss@127.0.0.1:6379",
                                 "rediss://u:se/cret@example.invalid"])
def test_an_unencoded_password_that_would_bend_the_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigurationError, match="percent-encode") as caught:
        cache_from_url(url)
    for piece in ("p@ss", "w#rd", "pa?ss", "se/cret", "ss/w"):
        assert piece not in str(caught.value)


def test_a_malformed_url_is_a_configuration_error_without_the_url() -> None:
    with pytest.raises(ConfigurationError, match="malformed") as caught:
        RedisCache("redis://:hunter22@127.0.0.1:notaport/0")
    assert "hunter22" not in str(caught.value)


async def test_a_wrong_password_is_refused_without_echoing_it(redis_url: str, root: str) -> None:
    plain = redis.Redis.from_url(redis_url)
    user = f"fmtest-{uuid.uuid4().hex[:8]}"
    try:
        plain.acl_setuser(user, enabled=True, passwords=["+right-password"], keys=[f"{root}*"], commands=["+@all"])
    except redis.ResponseError:
        pytest.skip("this Redis does not allow ACL SETUSER")
    try:
        cache = RedisCache(redis_url, key_root=root, redis_options={"username": user, "password": "wr0ng-pw!"})
        with pytest.raises(CacheError, match="refused the credentials") as caught:
            await cache.ping()
        assert "wr0ng-pw!" not in str(caught.value) and not isinstance(caught.value, TransientError)
        await cache.close()
        good = RedisCache(redis_url, key_root=root, redis_options={"username": user}, password="right-password")
        await good.set("k", 1)
        assert await good.get("k") == 1
        await good.close()
    finally:
        plain.acl_deluser(user)
        plain.close()


# --- entries planted by hand --------------------------------------------------------------------------------


async def test_entries_planted_by_hand_do_not_crash_listing_or_dumps(redis_url: str, root: str) -> None:
    cache = RedisCache(redis_url, namespace="run", key_root=root)
    await cache.set("good", {"ok": True})
    await cache.publish_to_mailbox("box", 1)
    plain = redis.Redis.from_url(redis_url)
    head = f"{root}{{run}}"
    plain.rpush(f"{head}:kv:a-list", "x")            # wrong type where a value belongs
    plain.set(f"{head}:kv:text", "hello, not json")  # a string that is not JSON
    plain.hset(f"{head}:mb:a-hash", "f", "v")        # wrong type where a mailbox belongs
    plain.rpush(f"{head}:mb:junk", "not json")       # a mailbox whose messages are not JSON
    plain.set(f"{head}:zz:other-kind", "1")          # not a kind flowmas writes
    plain.set(f"{head}:kv:", "1")                    # an empty key
    plain.set(f"{head}:kv:unindexed", "1")           # written without its index entry: never listed
    planted = ["a-list", "text", "zz:other-kind", ""]
    plain.zadd(f"{head}:ix:", {**{f"{head}:kv:{k}": "inf" for k in planted},
                               **{f"{head}:mb:{m}": "inf" for m in ("a-hash", "junk")},
                               f"{root}{{other}}:kv:theirs": "inf",  # another namespace's name: ignored
                               "not-a-flowmas-name\xff": "inf"})
    plain.set(f"{root}{{other}}:kv:theirs", "1")

    assert await cache.keys() == {"good", "a-list", "text"}
    assert await cache.get_all() == {"good": {"ok": True}}  # unreadable entries are skipped (and logged)
    with pytest.raises(CacheError, match=r"'a-list'.*WRONGTYPE"):
        await cache.get("a-list")
    with pytest.raises(CacheError, match="'text' is not JSON"):
        await cache.get("text")
    assert await cache.get("text", raw=True) == b"hello, not json"
    with pytest.raises(MailboxError, match=r"'a-hash'.*WRONGTYPE"):
        await cache.get_message("a-hash", timeout=0)
    with pytest.raises(CacheError, match="'junk' is not JSON"):
        await cache.get_message("junk", timeout=0)

    dump = await cache.dump_namespace()
    assert dump["values"] == {"good": {"ok": True}}
    assert dump["raw"] == {"text": "aGVsbG8sIG5vdCBqc29u"}  # kept, as its bytes
    assert dump["mailboxes"] == {"box": [1]}
    await cache.clear()
    assert list(plain.scan_iter(match=f"{head}*")) == []  # clear() empties the namespace, whatever wrote it
    assert plain.get(f"{root}{{other}}:kv:theirs") == b"1"
    plain.close()
    await cache.close()


async def test_an_index_of_the_wrong_type_is_a_clear_error(redis_url: str, root: str) -> None:
    cache = RedisCache(redis_url, namespace="run", key_root=root)
    plain = redis.Redis.from_url(redis_url)
    plain.set(f"{root}{{run}}:ix:", "not a sorted set")
    with pytest.raises(CacheError, match=r"Redis at .* refused listing the namespace: WRONGTYPE"):
        await cache.keys()
    with pytest.raises(CacheError, match=r"refused writing 'k'.*WRONGTYPE"):
        await cache.set("k", 1)
    await cache.clear()  # clears whatever is there, the planted index included
    assert list(plain.scan_iter(match=f"{root}{{run}}*")) == []
    await cache.set("k", 1)
    assert await cache.keys() == {"k"}
    plain.close()
    await cache.close()


async def test_a_huge_namespace_dump_of_a_hostile_shape_is_refused_before_anything_changes(cache: BaseCache) -> None:
    await cache.set("keep", 1)
    for bad in ({"values": {"a\x00": 1}}, {"mailboxes": {"m": [object()]}}, {"values": {"k": {1, 2}}},
                {"ttls": {"ghost": 5}}, {"raw": {"k": 5}}):
        with pytest.raises(CacheError):
            await cache.load_namespace(bad)  # type: ignore[arg-type]
    assert await cache.get_all() == {"keep": 1}
