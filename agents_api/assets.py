"""The built-in Assets agent: the project's declared assets as OPACA actions.

Registered through the ``flowmas.agents`` entry point (``assets = "agents_api.assets:AssetsAgent"``; the class
is the factory: ``AssetsAgent(context)``). ``ListAssets``, ``GetAssetPath`` and ``VerifyAssets`` call the
project's ``AssetManager`` in this process, their blocking work (cache inspection, hashing) in threads so
``/info`` never waits; ``DownloadAssets`` runs the ``download-assets/default`` deployment, so every download
is a flow run in the Prefect UI with its logs, retries, progress and table artifacts
(``@action(deployment=...)``, bound by ``agents_api.deployments.DeploymentRuns.bind``; ``SubmitDownloadAssets``
comes with it). An unknown asset name is a 400 that says which names exist.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from flowmas.assets.manager import AssetManager, VerifyResult
from flowmas.errors import ActionFailedError, InvalidArgumentsError, UnknownAssetError
from flowmas.opaca.agent import AbstractAgent, action

if TYPE_CHECKING:
    from flowmas.opaca.capabilities import AgentContext
    from flowmas.opaca.container import Container

__all__ = ["AssetRow", "AssetsAgent"]

DOWNLOAD_DEPLOYMENT = "download-assets/default"


class AssetRow(BaseModel):
    """One declared asset: what is declared and what the cache holds (no hashing)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    name: str
    version: str
    asset_type: str
    source: str
    """The source, URLs redacted."""
    checksum: str | None
    status: Literal["cached", "not cached", "stale", "damaged"]
    path: str | None
    """The local path when cached."""


class AssetsAgent(AbstractAgent):
    """The project's models, indexes and templates: list them, get a local path, verify, download with Prefect."""

    def __init__(self, context: AgentContext | None = None, *, assets: AssetManager | None = None,
                 container: Container | None = None, agent_id: str = "assets") -> None:
        manager = assets if assets is not None else context.assets if context is not None else None
        if manager is None:
            project = context.project if context is not None else None
            settings = context.settings if context is not None else None
            manager = AssetManager(project, settings=settings)
        self.assets = manager
        super().__init__(container=container, agent_id=agent_id)

    @action
    async def list_assets(self) -> list[AssetRow]:
        """Every declared asset with its version, type, source, checksum, cache status and local path."""
        rows = await asyncio.to_thread(self.assets.list_assets)
        return [AssetRow(name=row.name, version=row.version, asset_type=row.asset_type, source=row.source,
                         checksum=row.checksum, status=row.status, path=str(row.path) if row.path else None)
                for row in rows]

    @action
    async def get_asset_path(self, name: str, force_download: bool = False) -> str:
        """The local path of a declared asset, downloading it first when it is not cached (or when forced)."""
        self._check([name])
        return str(await self.assets.get_asset_path(name, force_download=force_download))

    @action
    async def verify_assets(self, names: list[str] | None = None) -> list[VerifyResult]:
        """Re-hash cached assets (default: every declared one) against their records and declared checksums."""
        selected = self._check(names)
        return await asyncio.to_thread(lambda: [self.assets.verify(name) for name in selected])

    @action(deployment=DOWNLOAD_DEPLOYMENT)
    async def download_assets(self, names: list[str] | None = None, force: bool = False) -> list[dict[str, Any]]:
        """Download assets (default: every declared one) in a Prefect flow run; one row per asset: status, path."""
        raise ActionFailedError(f"DownloadAssets runs the {DOWNLOAD_DEPLOYMENT} deployment, and this container "
                                "has no Prefect deployments engine (`flowmas up` starts one).", status_code=503)

    def deployment_parameters(self, action: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """The flow run works on this agent's project and cache, whatever the runner's environment says."""
        self._check(parameters.get("names"))
        project: Path | None = self.assets.project.path
        extra = {"project_file": str(project)} if project is not None else {}
        return {**parameters, **extra, "cache_dir": str(self.assets.cache.root)}

    def _check(self, names: list[str] | None) -> list[str]:
        """The names (default: all declared); an unknown one is a 400 naming what is declared."""
        try:
            return [asset.name for asset in self.assets.select(names)]
        except UnknownAssetError as exc:
            raise InvalidArgumentsError(str(exc)) from None
