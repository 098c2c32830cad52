"""The built-in Files agent: the session file service (``flowmas.files``) as OPACA actions.

Registered through the ``flowmas.agents`` entry point (``files = "agents_api.files:FilesAgent"``; the class is
the factory: ``FilesAgent(context)``). It serves the project's ``services.file_service`` (FLOWMAS_FILES_* on
top), built once when the container starts. Every action but ``ExpireFiles`` names the session it works in
(``sessionId``), and calls the service once, in this process:

    UploadFile(content, fileName, sessionId, ttl?, dataSource?)  content is base64 -> the file's metadata
    GetFileMetadata(url, sessionId)                              -> metadata (SAM's key names)
    ReadFile(url, sessionId, maxBytes?)                          -> {content, encoding, bytes, truncated, ...}
    ShareFile(url, sessionId, ttl)                               -> a share URL any session may read until ttl
    ListFiles(sessionId)                                         -> the session's metadata, one per file
    DeleteFile(url, sessionId)                                   -> true when it was deleted
    ExpireFiles(limit?)                                          -> a run of the expire-files/default deployment

``ReadFile`` applies the URL's params (``?head=10``, ``?grep=…``, ``?encoding=base64``, …) and answers at most
``maxBytes`` bytes (default and most: ``read_max_bytes``, 300,000 unless configured): ``truncated`` says whether
more was there. The bytes are returned as text when they are valid UTF-8 (``encoding: "text"``; a character cut
by the cap is left out), else base64 (``encoding: "base64"``) — decided on what the params produced, so
``?encoding=gzip`` gives base64 and ``?encoding=base64`` gives text.

Parameter names are camelCase on the wire (``fileName``, ``sessionId``, ``maxBytes``), as OPACA platforms and
the answers' own keys (``FileContent``) spell them; metadata keeps SAM's key names.

Errors: the file service's errors answer with the status of ``agents_api.errors.STATUS`` (no such file, or a
file of another session, or one expired: 404 with the same sentence; a malformed URL or param: 400; a share
URL forged or an invalid session id: 403; a size limit: 413; the storage failing: 503); a bad argument the
service refuses (a ttl, a file name) and content that is not base64 are 400s that say so.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from agents_api.errors import status_for
from flowmas.errors import ActionFailedError, ConfigurationError, FileServiceError, InvalidArgumentsError
from flowmas.files import FileService
from flowmas.opaca.agent import AbstractAgent, action

if TYPE_CHECKING:
    from flowmas.opaca.capabilities import AgentContext
    from flowmas.opaca.container import Container

__all__ = ["EXPIRE_DEPLOYMENT", "FileContent", "FilesAgent"]

EXPIRE_DEPLOYMENT = "expire-files/default"
_WHITESPACE = re.compile(rb"[ \t\r\n]+")


class FileContent(BaseModel):
    """What ``ReadFile`` answers: the (transformed) bytes of a file, capped."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    url: str
    content: str
    encoding: Literal["text", "base64"]
    """``text``: the bytes were UTF-8 and ``content`` is them; ``base64``: ``content`` is their base64."""
    bytes: int
    """How many bytes ``content`` holds (before base64)."""
    truncated: bool
    """True when the file (after its URL's params) had more bytes than ``max_bytes``: only the first are here."""
    max_bytes: int
    mime_type: str | None = None


class FilesAgent(AbstractAgent):
    """Session files with amfs:// URLs: upload (base64), read (URL params applied, capped), share, list, delete."""

    def __init__(self, context: AgentContext | None = None, *, files: FileService | None = None,
                 container: Container | None = None, agent_id: str = "files") -> None:
        project = context.project if context is not None else None
        settings = context.settings if context is not None else None
        self._owns_files = files is None
        self.files = files if files is not None else FileService.from_config(project=project, settings=settings)
        self.project_file = str(project.path) if project is not None and project.path is not None else None
        super().__init__(container=container, agent_id=agent_id)

    async def on_shutdown(self) -> None:
        """Closes the file service this agent made (one passed in is its owner's to close)."""
        if self._owns_files:
            await self.files.close()

    @action
    async def upload_file(self, content: str, fileName: str, sessionId: str,
                          ttl: float | None = None, dataSource: str | None = None) -> dict[str, Any]:
        """Store a file (content in base64) in a session for ttl seconds (default: the service's); its metadata,
        with the amfs:// URL that reads it."""
        data = _decode_base64(content)
        options: dict[str, Any] = {}
        if ttl is not None:
            options["ttl"] = ttl
        if dataSource is not None:
            options["data_source"] = dataSource
        with _answers():
            return await self.files.upload_from_buffer(data, fileName, sessionId, **options)

    @action
    async def get_file_metadata(self, url: str, sessionId: str) -> dict[str, Any]:
        """The metadata of a session's file: name, size, MIME type, sha256, expiry, inferred schema and shape."""
        with _answers():
            return await self.files.get_metadata(url, sessionId)

    @action
    async def read_file(self, url: str, sessionId: str, maxBytes: int | None = None) -> FileContent:
        """A file's content with the URL's params applied (head, tail, rows, columns, jsonpath, grep, bytes,
        encoding), at most maxBytes bytes: text when UTF-8, else base64; truncated says whether it was cut."""
        if maxBytes is not None and maxBytes < 1:
            raise InvalidArgumentsError("maxBytes must be at least 1.")
        with _answers():
            read = await self.files.read_capped(url, sessionId, maxBytes)
        if read.text is not None:
            return FileContent(url=url, content=read.text, encoding="text", bytes=len(read.text.encode()),
                               truncated=read.truncated, max_bytes=read.max_bytes, mime_type=read.mime_type)
        return FileContent(url=url, content=base64.b64encode(read.data).decode("ascii"), encoding="base64",
                           bytes=len(read.data), truncated=read.truncated, max_bytes=read.max_bytes,
                           mime_type=read.mime_type)

    @action
    async def share_file(self, url: str, sessionId: str, ttl: float) -> str:
        """A share URL of a session's file that any session may read for ttl seconds (capped by the file's life)."""
        with _answers():
            return await self.files.share(url, sessionId, ttl)

    @action
    async def list_files(self, sessionId: str) -> list[dict[str, Any]]:
        """The metadata of every file of a session."""
        with _answers():
            return await self.files.list_files(sessionId)

    @action
    async def delete_file(self, url: str, sessionId: str) -> bool:
        """Delete a session's file now; true when it was deleted."""
        with _answers():
            return await self.files.delete(url, sessionId)

    @action(deployment=EXPIRE_DEPLOYMENT)
    async def expire_files(self, limit: int | None = None) -> dict[str, Any]:
        """Delete expired files now, in a Prefect flow run of expire-files (at most limit files); a summary."""
        raise ActionFailedError(f"ExpireFiles runs the {EXPIRE_DEPLOYMENT} deployment, and this container has no "
                                "Prefect deployments engine (`flowmas up` starts one).", status_code=503)

    def deployment_parameters(self, action: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """The flow run sweeps this agent's store: the project file goes with it, whatever the runner's cwd."""
        if parameters.get("limit") is not None and parameters["limit"] < 1:
            raise InvalidArgumentsError("limit must be at least 1.")
        extra = {"project_file": self.project_file} if self.project_file else {}
        return {**parameters, **extra}


@contextlib.contextmanager
def _answers() -> Iterator[None]:
    """A file service error becomes the container's answer with its status (agents_api.errors.STATUS); a
    ``ConfigurationError`` raised by a call is about its arguments (a ttl, a name, a limit) and answers 400."""
    try:
        yield
    except FileServiceError as exc:
        raise ActionFailedError(str(exc), status_code=status_for(exc) or 500) from None
    except ConfigurationError as exc:
        raise InvalidArgumentsError(str(exc)) from None


def _decode_base64(content: str) -> bytes:
    """Standard base64 (line breaks and spaces allowed, as MIME encoders wrap it); anything else is a 400."""
    try:
        raw = _WHITESPACE.sub(b"", content.encode("ascii"))
        return base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise InvalidArgumentsError(
            "content is not valid base64: send the file's bytes base64-encoded (standard alphabet A-Z a-z 0-9 + /, "
            "'=' padding).") from None
