"""Prefect Blocks: typed configuration and credentials, each a factory for a core object.

``FlowmasAssets`` (blocks.assets), the file service's storage blocks ``LocalFileStorage``, ``S3FileStorage``,
``MemoryFileStorage`` (blocks.files) and the agent cache's ``RedisCacheBlock``, ``EmbeddedCacheBlock``
(blocks.cache), and the inference clients' ``AnthropicModel``, ``OpenAIModel``, ``BedrockModel``, ``VertexModel``
(blocks.llm).

``register_blocks()`` makes the block types known to the Prefect API (``flowmas up`` calls it; by hand:
``prefect block register -m blocks``).
"""

from __future__ import annotations

from prefect.blocks.core import Block

from blocks.assets import FlowmasAssets
from blocks.cache import CACHE_BLOCKS, EmbeddedCacheBlock, RedisCacheBlock, load_cache_block
from blocks.files import (
    STORAGE_BLOCKS,
    LocalFileStorage,
    MemoryFileStorage,
    S3FileStorage,
    load_storage_block,
    resolve_storage_block,
)
from blocks.llm import (
    MODEL_BLOCKS,
    AnthropicModel,
    BedrockModel,
    ModelBlock,
    OpenAIModel,
    VertexModel,
    load_model_block,
)
from blocks.secrets import resolve_prefect_secret

BLOCK_TYPES: tuple[type[Block], ...] = (FlowmasAssets, *STORAGE_BLOCKS, *CACHE_BLOCKS, *MODEL_BLOCKS)


def register_blocks() -> list[str]:
    """Register every flowmas block type with the current Prefect API (idempotent); returns their slugs."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema(_sync=True)  # type: ignore[call-arg]
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


__all__ = ["BLOCK_TYPES", "AnthropicModel", "BedrockModel", "EmbeddedCacheBlock", "FlowmasAssets", "LocalFileStorage",
           "MemoryFileStorage", "ModelBlock", "OpenAIModel", "RedisCacheBlock", "S3FileStorage", "VertexModel",
           "load_cache_block", "load_model_block", "load_storage_block", "register_blocks", "resolve_prefect_secret",
           "resolve_storage_block"]
