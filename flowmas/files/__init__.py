"""Session-scoped, expiring files behind ``amfs://`` URLs (Solace Agent Mesh's file service, rebuilt).

``FileService`` is the entry point (``FileService.from_config()`` builds one from the project and
``FLOWMAS_FILES_*``); the storage managers live in ``flowmas.files.storage``. The core imports neither
Prefect nor FastAPI: the faces (tasks, flows, blocks, the OPACA agent, the CLI) wrap it.
"""

from flowmas.files.metadata import FileMetadata
from flowmas.files.service import CappedRead, ExpiryReport, FileService

__all__ = ["CappedRead", "ExpiryReport", "FileMetadata", "FileService"]
