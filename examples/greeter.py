"""A minimal agent of the demo project: it reads the template its ``required_assets`` declares."""

from __future__ import annotations

import asyncio

from flowmas import AssetManager, load_project


class Greeter:
    def __init__(self, assets: AssetManager) -> None:
        self.assets = assets

    async def greet(self) -> str:
        path = await self.assets.get_asset_path("greeting")
        return path.read_text().strip()


async def main() -> None:
    manager = AssetManager(load_project())
    await manager.prefetch("greeter")  # everything the agent declared, fetched once, shared by all processes
    print(await Greeter(manager).greet())


if __name__ == "__main__":
    asyncio.run(main())
