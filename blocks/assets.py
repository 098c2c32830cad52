"""``FlowmasAssets``: where one project's assets are declared and cached, as a Prefect Block.

A block is configuration only (Prefect's rule: blocks do not run workflow logic): ``manager()`` hands the
values to the core's ``AssetManager``, which does the work. Tokens are never fields here; assets name
their credentials in ``flowmas.yaml`` (an environment variable or a Prefect ``Secret`` block).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field

from flowmas.assets.manager import AssetManager
from flowmas.settings import FlowmasSettings, find_project_file, load_project


class FlowmasAssets(Block):
    """The project file and asset cache that flows and tasks work on."""

    _block_type_name: ClassVar[str] = "Flowmas Assets"
    _block_type_slug: ClassVar[str] = "flowmas-assets"
    _description: ClassVar[str] = (
        "Where a flowmas project declares its assets (flowmas.yaml) and where they are cached. "
        "Empty fields fall back to FLOWMAS_PROJECT / FLOWMAS_ASSETS_DIR and the usual discovery."
    )

    project_file: str | None = Field(
        default=None, description="Path of flowmas.yaml (or openmas_project.yml).")
    cache_dir: str | None = Field(default=None, description="Asset cache directory (default: the project's).")
    lock_timeout_seconds: float | None = Field(
        default=None, gt=0,
        description="How long a download waits for another process that is fetching the same asset.",
    )
    max_concurrency: int = Field(default=4, ge=1, description="Assets downloaded at once by download-assets.")

    def settings(self) -> FlowmasSettings:
        overrides: dict[str, Any] = {}
        if self.lock_timeout_seconds is not None:
            overrides["lock_timeout_seconds"] = self.lock_timeout_seconds
        return FlowmasSettings(**overrides)

    def resolved_project_file(self) -> str | None:
        """The project file, absolute (discovered when unset), so task parameters say exactly which."""
        found = Path(self.project_file).expanduser() if self.project_file else find_project_file(
            settings=self.settings())
        return str(found.resolve()) if found is not None else None

    def manager(self, **kwargs: Any) -> AssetManager:
        """An ``AssetManager`` for this configuration; ``kwargs`` go to it (e.g. ``progress_listeners``)."""
        settings = kwargs.pop("settings", None) or self.settings()
        project = load_project(self.project_file, settings=settings)
        cache_dir = Path(self.cache_dir).expanduser() if self.cache_dir else None
        return AssetManager(project, settings=settings, cache_dir=cache_dir, **kwargs)
