"""The cache blocks build working caches: ``RedisCacheBlock`` from a secret URL or host/port/db and a secret
password (on the session's Redis), ``EmbeddedCacheBlock`` as one shared in-process cache per store name."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from pydantic import SecretStr

from blocks.cache import CACHE_BLOCKS, EmbeddedCacheBlock, RedisCacheBlock
from flowmas.cache import EmbeddedCache, RedisCache


@pytest.fixture
def root(redis_url: str) -> Iterator[str]:
    root = f"fmtest-{uuid.uuid4().hex[:12]}"
    yield root
    client = redis.Redis.from_url(redis_url)
    names = list(client.scan_iter(match=f"{root}*", count=1000))
    if names:
        client.delete(*names)
    client.close()


async def test_a_redis_block_with_a_secret_url_builds_a_working_cache(redis_url: str, root: str) -> None:
    block = RedisCacheBlock(url=SecretStr(redis_url), namespace="run-7", key_root=root)
    cache = block.cache()
    assert isinstance(cache, RedisCache) and cache.default_prefix == "run-7"
    await cache.set("k", {"v": 1})
    assert await cache.get("k") == {"v": 1}
    assert redis.Redis.from_url(redis_url).get(f"{root}{{run-7}}:kv:k") == b'{"v":1}'
    await cache.close()


async def test_a_redis_block_from_host_port_db_and_a_secret_password(redis_url: str, root: str) -> None:
    parts = urlsplit(redis_url)
    block = RedisCacheBlock(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=0,
                            password=SecretStr("any-password-nopass-default-user-accepts"), key_root=root)
    cache = block.cache()
    assert cache.where == f"{parts.hostname}:{parts.port or 6379}"
    await cache.ping()
    await cache.set("k", 1)
    assert await cache.get("k") == 1
    await cache.close()


def test_secrets_stay_obscured_in_the_block() -> None:
    block = RedisCacheBlock(url=SecretStr("redis://:hunter22@example.invalid:6379/0"), password=SecretStr("pw-1234"))
    shown = repr(block) + str(block.model_dump())
    assert "hunter22" not in shown and "pw-1234" not in shown
    assert block.cache()._client.connection_pool.connection_kwargs["password"] == "pw-1234"  # the field wins


async def test_embedded_blocks_of_one_store_share_one_cache() -> None:
    store = f"s-{uuid.uuid4().hex[:8]}"
    first = EmbeddedCacheBlock(store=store, namespace="run-1").cache()
    second = EmbeddedCacheBlock(store=store, namespace="run-1").cache()
    other = EmbeddedCacheBlock(store=f"{store}-other", namespace="run-1").cache()
    assert isinstance(first, EmbeddedCache)
    await first.publish_to_mailbox("agent:a", "hello")
    assert await other.get_message("agent:a", timeout=0) is None
    assert await second.get_message("agent:a", timeout=0) == "hello"
    await first.close()  # a view: the shared cache keeps working
    await second.set("k", 1)
    assert await first.get("k") == 1


def test_block_types_have_their_slugs() -> None:
    assert [b.get_block_type_slug() for b in CACHE_BLOCKS] == ["redis-cache", "embedded-cache"]
