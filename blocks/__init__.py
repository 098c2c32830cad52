"""Prefect Blocks: typed configuration and credentials, each a factory for a core object.

``register_blocks()`` makes the block types known to the Prefect API (``flowmas up`` calls it; by hand:
``prefect block register -m blocks``).
"""

from __future__ import annotations

from prefect.blocks.core import Block

from blocks.assets import FlowmasAssets
from blocks.secrets import resolve_prefect_secret

BLOCK_TYPES: tuple[type[Block], ...] = (FlowmasAssets,)


def register_blocks() -> list[str]:
    """Register every flowmas block type with the current Prefect API (idempotent); returns their slugs."""
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema(_sync=True)  # type: ignore[call-arg]
    return [block_type.get_block_type_slug() for block_type in BLOCK_TYPES]


__all__ = ["BLOCK_TYPES", "FlowmasAssets", "register_blocks", "resolve_prefect_secret"]
