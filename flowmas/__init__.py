"""flowmas: a Prefect 3 platform for multi-agent AI systems. The core: plain Python, no Prefect imports."""

from flowmas.assets import AssetConfig, AssetManager, AssetStatus, DownloadResult, VerifyResult
from flowmas.settings import FlowmasSettings, Project, load_project

__version__ = "0.1.0"

__all__ = [
    "AssetConfig",
    "AssetManager",
    "AssetStatus",
    "DownloadResult",
    "FlowmasSettings",
    "Project",
    "VerifyResult",
    "__version__",
    "load_project",
]
