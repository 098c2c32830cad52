"""A minimal agent of the demo project: it reads the template its ``required_assets`` declares.

It is an OPACA agent: ``flowmas up`` serves it (its ``Greet`` action) in the container with the project's
``AssetManager`` (``Greeter(assets=manager, agent_id="greeter")``); ``python -m examples.greeter`` greets once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from flowmas import AssetManager, load_project
from flowmas.opaca import AbstractAgent, action


class Greeter(AbstractAgent):
    """Greets with the demo project's greeting template."""

    def __init__(self, assets: AssetManager | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.assets = assets if assets is not None else AssetManager(load_project())

    @action
    async def greet(self) -> str:
        """The text of the ``greeting`` template (downloaded once, then read from the shared cache)."""
        path = await self.assets.get_asset_path("greeting")
        return path.read_text().strip()


async def main() -> None:
    manager = AssetManager(load_project())
    await manager.prefetch("greeter")  # everything the agent declared, fetched once, shared by all processes
    print(await Greeter(manager).greet())


if __name__ == "__main__":
    asyncio.run(main())
