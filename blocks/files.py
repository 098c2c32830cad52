"""The file service's storage managers as Prefect Blocks, and the resolver that lets a config name a saved one.

Each block is configuration only (Prefect's rule: blocks do not run workflow logic); ``storage()`` hands its
values to the core's manager, which does the work, and ``service()`` wraps that manager in a ``FileService``:

    LocalFileStorage   (local-file-storage)    directory            -> LocalStorageManager
    S3FileStorage      (s3-file-storage)       bucket, prefix, ...  -> S3StorageManager
    MemoryFileStorage  (memory-file-storage)   (nothing)            -> MemoryStorageManager

S3 credentials are ``SecretStr`` fields: Prefect stores them encrypted and shows them obscured; they are read
with ``get_secret_value()`` only at the moment the manager is built, and never logged, put in a parameter or
an artifact. Left empty, boto3's own chain applies (environment, ``~/.aws``, an instance role).

**A saved block as the service's storage.** ``flowmas.yaml`` may say ``services.file_service: {type: block,
block: <name>}`` (or ``type: "block:<name>"``; ``<name>`` may be ``<slug>/<name>`` when several block types
have a block of that name). The core cannot import Prefect, so ``FileService.from_config`` finds
``resolve_storage_block`` through the ``flowmas.storage_resolvers`` entry point named ``prefect``
(pyproject.toml), as the assets core finds ``blocks.secrets``'s resolver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, cast

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from flowmas.errors import ConfigurationError
from flowmas.files import FileService
from flowmas.files.storage import LocalStorageManager, MemoryStorageManager, S3StorageManager, StorageManager
from flowmas.text import one_line, shorten

__all__ = ["STORAGE_BLOCKS", "FileStorageBlock", "LocalFileStorage", "MemoryFileStorage", "S3FileStorage",
           "load_storage_block", "resolve_storage_block"]


class FileStorageBlock(Block):
    """What every storage block offers: the manager it configures, and a service over it."""

    def storage(self) -> StorageManager:  # pragma: no cover - every concrete block overrides it
        raise NotImplementedError

    def service(self, **kwargs: Any) -> FileService:
        """A ``FileService`` over this storage; ``kwargs`` are the service's own (``max_time_to_live``, ...)."""
        return FileService(self.storage(), **kwargs)


class LocalFileStorage(FileStorageBlock):
    """A directory (a local disk or a shared volume) holding the session files."""

    _block_type_name: ClassVar[str] = "Local File Storage"
    _block_type_slug: ClassVar[str] = "local-file-storage"
    _description: ClassVar[str] = (
        "flowmas session files in a directory: atomic writes, an expiry index, one layout shared by every "
        "process that mounts it.")

    directory: str = Field(description="The directory of the store (created if missing; ~ is expanded).")
    fsync: bool = Field(default=False, description="fsync each file before publishing it (survives a power cut).")
    threaded: bool = Field(default=False, description="Run every operation in a thread (network filesystems).")

    def storage(self) -> StorageManager:
        return LocalStorageManager(Path(self.directory).expanduser(), fsync=self.fsync, threaded=self.threaded)


class S3FileStorage(FileStorageBlock):
    """An S3 (or S3-compatible: MinIO, Ceph, moto) bucket holding the session files."""

    _block_type_name: ClassVar[str] = "S3 File Storage"
    _block_type_slug: ClassVar[str] = "s3-file-storage"
    _description: ClassVar[str] = (
        "flowmas session files in an S3 bucket under a prefix: multipart uploads, ranged reads, an expiry "
        "index that a sweep reads without listing the bucket.")

    bucket: str = Field(description="The bucket (it must exist).")
    prefix: str = Field(default="", description="Key prefix of the store inside the bucket (e.g. 'flowmas/files').")
    region: str | None = Field(default=None, description="AWS region (default: boto3's).")
    endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible service (default: AWS).")
    aws_access_key_id: SecretStr | None = Field(
        default=None, description="Access key id (empty: boto3's credential chain).")
    aws_secret_access_key: SecretStr | None = Field(default=None, description="Secret access key.")
    aws_session_token: SecretStr | None = Field(default=None, description="Session token of temporary credentials.")
    part_size: int = Field(default=8 * 2**20, ge=5 * 2**20, le=5 * 2**30,
                           description="Multipart upload part size in bytes (5 MiB to 5 GiB).")

    def storage(self) -> StorageManager:
        def reveal(secret: SecretStr | None) -> str | None:
            return secret.get_secret_value() if secret is not None else None

        return S3StorageManager(
            bucket=self.bucket, prefix=self.prefix, region=self.region, endpoint_url=self.endpoint_url,
            aws_access_key_id=reveal(self.aws_access_key_id),
            aws_secret_access_key=reveal(self.aws_secret_access_key),
            aws_session_token=reveal(self.aws_session_token), part_size=self.part_size)


class MemoryFileStorage(FileStorageBlock):
    """Session files in this process's memory: tests and small single-process deployments."""

    _block_type_name: ClassVar[str] = "Memory File Storage"
    _block_type_slug: ClassVar[str] = "memory-file-storage"
    _description: ClassVar[str] = (
        "flowmas session files in the memory of one process (each load is a new, empty store): for tests "
        "and small single-process deployments.")

    max_bytes: int = Field(default=2**30, gt=0, le=2**40, description="Most bytes the store holds (default 1 GiB).")

    def storage(self) -> StorageManager:
        return MemoryStorageManager(max_bytes=self.max_bytes)


STORAGE_BLOCKS: tuple[type[FileStorageBlock], ...] = (LocalFileStorage, S3FileStorage, MemoryFileStorage)


def load_storage_block(reference: str) -> FileStorageBlock:
    """The saved storage block ``reference`` names: ``<slug>/<name>``, or a ``<name>`` only one block type has.

    Every failure is a ``ConfigurationError`` saying which names exist, so a typo in flowmas.yaml or a flow
    parameter is one sentence, never Prefect's traceback.
    """
    text = reference.strip()
    slugs = {block.get_block_type_slug(): block for block in STORAGE_BLOCKS}
    slug, _, name = text.rpartition("/")
    if not name:
        raise ConfigurationError(f"Storage block {_show(reference)} names no block: use '<name>' or '<slug>/<name>' "
                                 f"(slugs: {', '.join(slugs)}).")
    if slug:
        if slug not in slugs:
            raise ConfigurationError(f"Storage block {_show(reference)}: {slug!r} is not a file storage block type "
                                     f"(use one of {', '.join(slugs)}).")
        candidates: list[type[FileStorageBlock]] = [slugs[slug]]
    else:
        candidates = list(STORAGE_BLOCKS)
    found: list[FileStorageBlock] = []
    for block_type in candidates:
        loaded = _load(block_type, name)
        if loaded is not None:
            found.append(loaded)
    if not found:
        where = slug or " or ".join(slugs)
        raise ConfigurationError(
            f"No saved {where} block is named {_show(name)}: save one (e.g. LocalFileStorage(directory=...)"
            f".save({name!r})) or fix the name.")
    if len(found) > 1:
        kinds = ", ".join(f"{block.get_block_type_slug()}/{name}" for block in found)
        raise ConfigurationError(f"Several storage blocks are named {_show(name)} ({kinds}): name one as "
                                 "'<slug>/<name>'.")
    return found[0]


def _load(block_type: type[FileStorageBlock], name: str) -> FileStorageBlock | None:
    from prefect.exceptions import ObjectNotFound

    try:
        return cast(FileStorageBlock, block_type.load(name, _sync=True))  # type: ignore[call-arg]
    except (ObjectNotFound, ValueError):  # Prefect says ValueError for "no block document of that name"
        return None


def resolve_storage_block(reference: str) -> StorageManager:
    """The ``flowmas.storage_resolvers`` entry point: the manager of the saved block ``reference`` names."""
    return load_storage_block(reference).storage()


def _show(text: str) -> str:
    return repr(shorten(one_line(text), 80))
