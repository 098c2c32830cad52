"""The file service's configuration: Solace Agent Mesh's ``services.file_service`` section, and ``FLOWMAS_FILES_*``.

```yaml
services:
  file_service:
    type: volume                 # volume (alias local) | bucket (alias s3) | memory | block | <CustomClass>
    max_time_to_live: 86400      # seconds; also the cap of every ttl a caller asks for
    expiration_check_interval: 600
    config:
      volume: {directory: /srv/flowmas-files}          # relative to flowmas.yaml; default $FLOWMAS_HOME/files
      bucket: {bucket_name: my-bucket, endpoint_url: ..., boto3_config: {region_name: eu-west-1}}
      MyStorage: {module_path: my_pkg.storage, any: option}   # a custom StorageManager class
```

Everything SAM 0.x read is read the same way; flowmas adds limits (``max_file_bytes``, ``max_session_bytes``,
``default_ttl``, ...), the S3 ``part_size``, and ``type: block`` with ``block: <name>`` (or ``type:
"block:<name>"``): a saved Prefect storage block, which the ``blocks`` package resolves (the core does not
import Prefect). Every key is checked (a typo names its YAML path), every number is bounded.

Precedence, first wins: a ``FLOWMAS_FILES_*`` variable, the project file, the default. This module imports
neither ``flowmas.settings`` nor the service (``flowmas.settings`` imports it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flowmas.errors import ConfigurationError
from flowmas.text import one_line, shorten

if TYPE_CHECKING:
    from flowmas.files.storage.base import StorageManager

DAY = 86_400.0
GiB = 2**30
MiB = 2**20

BUILTIN_TYPES = {"volume": "volume", "local": "volume", "bucket": "bucket", "s3": "bucket", "memory": "memory"}
STORAGE_RESOLVER_GROUP = "flowmas.storage_resolvers"

StorageResolver = Callable[[str], "StorageManager"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class VolumeConfig(_Strict):
    """``config.volume``: a directory (SAM's key), made on first use."""

    directory: Path | None = None
    fsync: bool = False
    threaded: bool = False


class BucketConfig(_Strict):
    """``config.bucket``: SAM's keys (``bucket_name``, ``endpoint_url``, ``boto3_config``) and flowmas's."""

    bucket_name: str = Field(alias="bucket", min_length=3, max_length=63)
    prefix: str = Field(default="", max_length=512)
    endpoint_url: str | None = Field(default=None, max_length=2048)
    region: str | None = Field(default=None, max_length=64)
    boto3_config: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of ``boto3.session.Session`` (SAM): ``region_name``, ``profile_name``, credentials."""
    part_size: int = Field(default=8 * MiB, ge=5 * MiB, le=5 * GiB)
    max_workers: int = Field(default=8, ge=1, le=256)
    addressing_style: str | None = Field(default=None, pattern="^(auto|path|virtual)$")


class MemoryConfig(_Strict):
    """``config.memory``: the bound of the in-memory store."""

    max_bytes: int = Field(default=GiB, gt=0, le=2**40)


class ManagerConfigs(BaseModel):
    """``config``: one entry per storage type; a custom type's entry needs ``module_path``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    volume: VolumeConfig | None = None
    local: VolumeConfig | None = None
    bucket: BucketConfig | None = None
    s3: BucketConfig | None = None
    memory: MemoryConfig | None = None

    @model_validator(mode="after")
    def _custom_entries(self) -> ManagerConfigs:
        for name, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                raise ValueError(f"config.{name} must be a mapping of options (with 'module_path' for a custom "
                                 "storage class)")
            module_path = value.get("module_path")
            if not isinstance(module_path, str) or not module_path.strip():
                raise ValueError(f"config.{name} needs 'module_path': the module that defines the storage class "
                                 f"{name!r} (e.g. my_package.storage)")
        return self

    def for_type(self, name: str) -> Any:
        return getattr(self, name, None) if name in BUILTIN_TYPES else (self.model_extra or {}).get(name)


def _seconds(default: float | None, *, most: float, least: float = 0.0) -> Any:
    return Field(default=default, gt=least, le=most, allow_inf_nan=False)


class FileServiceConfig(_Strict):
    """``services.file_service``: SAM's section, strictly checked, every value bounded."""

    type: str = Field(default="volume", min_length=1, max_length=200)
    block: str | None = Field(default=None, min_length=1, max_length=300)
    """With ``type: block``: the saved Prefect storage block (``<name>`` or ``<slug>/<name>``)."""
    max_time_to_live: float = _seconds(DAY, most=365 * DAY)
    expiration_check_interval: float = _seconds(600.0, most=DAY, least=0.999)
    default_ttl: float | None = _seconds(None, most=365 * DAY)
    """The ttl of an upload that gives none (default: ``max_time_to_live``, as in SAM)."""
    max_file_bytes: int = Field(default=2 * GiB, gt=0, le=2**50)
    max_session_bytes: int = Field(default=10 * GiB, gt=0, le=2**50)
    infer_max_bytes: int = Field(default=64 * MiB, gt=0, le=2**40)
    read_max_bytes: int = Field(default=300_000, gt=0, le=2**40)
    upload_grace_seconds: float = _seconds(3600.0, most=7 * DAY, least=0.999)
    """How long an upload may run past its file's expiry before the sweep takes what it left for debris."""
    config: ManagerConfigs = Field(default_factory=ManagerConfigs)

    @field_validator("type")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise ValueError("must be a storage type name (printable, no surrounding spaces)")
        return value

    @model_validator(mode="after")
    def _type_is_usable(self) -> FileServiceConfig:
        kind, block = self.storage_kind()
        if kind == "block" and not block:
            raise ValueError("type 'block' needs 'block: <name of a saved storage block>'")
        if self.block is not None and kind != "block":
            raise ValueError(f"'block' is only used with type 'block' (type is {self.type!r})")
        if kind == "custom" and self.config.for_type(self.type) is None:
            known = ", ".join(sorted(BUILTIN_TYPES))
            raise ValueError(
                f"unknown storage type {shorten(self.type, 60)!r}: use one of {known}, 'block' (a saved Prefect "
                f"storage block), or a custom class with 'config: {{{shorten(self.type, 60)}: {{module_path: "
                "<module>}}'")
        if self.default_ttl is not None and self.default_ttl > self.max_time_to_live:
            raise ValueError(f"default_ttl ({self.default_ttl:g} s) is longer than max_time_to_live "
                             f"({self.max_time_to_live:g} s)")
        return self

    def storage_kind(self) -> tuple[str, str | None]:
        """``("volume"|"bucket"|"memory"|"block"|"custom", block name or None)``."""
        if self.type in BUILTIN_TYPES:
            return BUILTIN_TYPES[self.type], None
        if self.type == "block":
            return "block", self.block
        if self.type.startswith("block:"):
            return "block", self.type.removeprefix("block:").strip() or None
        return "custom", None


def file_service_config(data: Mapping[str, Any] | FileServiceConfig | None, *,
                        source: str = "services.file_service") -> FileServiceConfig:
    """Validate a ``services.file_service`` mapping; every mistake is a ``ConfigurationError`` with its path."""
    if isinstance(data, FileServiceConfig):
        return data
    try:
        return FileServiceConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        lines = [f"{source} has {exc.error_count()} error(s):"]
        for error in exc.errors(include_url=False):
            where = ".".join([source, *(str(part) for part in error["loc"])])
            if error["type"] == "extra_forbidden":
                lines.append(f"  {where}: unknown key {shorten(str(error['loc'][-1]), 40)!r}")
            else:
                lines.append(f"  {where}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigurationError("\n".join(lines)) from None


def apply_environment(config: FileServiceConfig, settings: Any) -> FileServiceConfig:
    """``config`` with every ``FLOWMAS_FILES_*`` variable that is set taking precedence (``settings`` is a
    ``FlowmasSettings``)."""
    data = config.model_dump(by_alias=True, exclude_none=True)
    for name in ("max_time_to_live", "default_ttl", "expiration_check_interval", "max_file_bytes",
                 "max_session_bytes", "infer_max_bytes", "read_max_bytes", "upload_grace_seconds"):
        value = getattr(settings, f"files_{name}", None)
        if value is not None:
            data[name] = value
    storage = getattr(settings, "files_storage", None)
    if storage is not None:
        data["type"] = storage
        data.pop("block", None)
    configs: dict[str, dict[str, Any]] = data.setdefault("config", {})
    directory = getattr(settings, "files_dir", None)
    if directory is not None:
        for name in ("volume", "local"):
            configs.setdefault(name, {})["directory"] = directory
    s3 = {"bucket_name": getattr(settings, "files_s3_bucket", None),
          "prefix": getattr(settings, "files_s3_prefix", None),
          "endpoint_url": getattr(settings, "files_s3_endpoint_url", None),
          "region": getattr(settings, "files_s3_region", None),
          "part_size": getattr(settings, "files_s3_part_bytes", None)}
    for name in ("bucket", "s3"):
        entry = dict(configs.get(name, {}))
        if "bucket" in entry:
            entry["bucket_name"] = entry.pop("bucket")
        entry.update({key: value for key, value in s3.items() if value is not None})
        if "bucket_name" in entry:
            configs[name] = entry  # a prefix alone does not make a bucket store
    return file_service_config(data, source="services.file_service (with FLOWMAS_FILES_*)")


def default_directory(settings: Any) -> Path:
    """Where a volume store lives when nothing says: ``$FLOWMAS_HOME/files``."""
    return Path(settings.home).expanduser() / "files"


# --- building the storage -------------------------------------------------------------------------------


def build_storage(config: FileServiceConfig, *, settings: Any, base_dir: Path | None = None,
                  resolver: StorageResolver | None = None) -> StorageManager:
    """The ``StorageManager`` the configuration describes (nothing is touched on disk or the network yet)."""
    from flowmas.files.storage import LocalStorageManager, MemoryStorageManager, S3StorageManager

    kind, block = config.storage_kind()
    options = config.config.for_type(config.type)
    if kind == "volume":
        volume = options if isinstance(options, VolumeConfig) else VolumeConfig()
        directory = volume.directory
        if directory is None:
            directory = default_directory(settings)
        else:
            directory = directory.expanduser()
            if not directory.is_absolute() and base_dir is not None:
                directory = base_dir / directory
        return LocalStorageManager(directory, fsync=volume.fsync, threaded=volume.threaded)
    if kind == "memory":
        memory = options if isinstance(options, MemoryConfig) else MemoryConfig()
        return MemoryStorageManager(max_bytes=memory.max_bytes)
    if kind == "bucket":
        if not isinstance(options, BucketConfig):
            raise ConfigurationError(
                f"services.file_service: type {config.type!r} needs 'config: {{{config.type}: {{bucket_name: ...}}}}' "
                "(or FLOWMAS_FILES_S3_BUCKET).")
        return S3StorageManager(
            bucket=options.bucket_name, prefix=options.prefix, endpoint_url=options.endpoint_url,
            region=options.region, boto3_config=options.boto3_config, part_size=options.part_size,
            max_workers=options.max_workers, addressing_style=options.addressing_style)
    if kind == "block":
        assert block is not None
        found = resolver or installed_storage_resolver()
        if found is None:
            raise ConfigurationError(
                f"services.file_service names the storage block {shorten(one_line(block), 80)!r}, but no block "
                "resolver is installed: install flowmas with its 'blocks' package, or pass storage_resolver=.")
        return found(block)
    return load_custom_manager(config.type, dict(options or {}))


@cache
def installed_storage_resolver() -> StorageResolver | None:
    """The resolver registered under the ``flowmas.storage_resolvers`` entry point named ``prefect``."""
    for entry in entry_points(group=STORAGE_RESOLVER_GROUP, name="prefect"):
        return entry.load()  # type: ignore[no-any-return]
    return None


PROTOCOL_METHODS = ("write", "read", "delete", "write_metadata", "read_metadata", "read_metadata_versioned",
                    "delete_metadata", "index_expiry", "expired", "unindex", "session_keys", "get_secret",
                    "purge_incomplete", "close")


def load_custom_manager(class_name: str, options: dict[str, Any]) -> StorageManager:
    """Import ``options['module_path']`` and build its ``class_name`` with the other options, SAM-style.

    A module path starting with ``.`` is relative to ``flowmas.files.storage`` (SAM resolved relative paths
    against its file-service package). The class is built with ``from_config(options)`` when it has that
    classmethod, else ``Class(**options)``.
    """
    module_path = str(options.pop("module_path"))
    where = f"services.file_service.config.{shorten(class_name, 60)}"
    try:
        module = importlib.import_module(module_path, package="flowmas.files.storage")
    except Exception as exc:  # noqa: BLE001 - any import failure is the same configuration mistake
        raise ConfigurationError(
            f"{where}: cannot import module {shorten(module_path, 80)!r} for the storage class "
            f"{shorten(class_name, 60)!r} ({type(exc).__name__}: {shorten(one_line(str(exc)), 120)}). Check "
            "module_path and that the module is installed.") from None
    manager_class = getattr(module, class_name, None)
    if not isinstance(manager_class, type):
        raise ConfigurationError(
            f"{where}: module {module_path!r} has no class {shorten(class_name, 60)!r}; the storage type must be "
            "the name of a class defined in module_path.")
    missing = [name for name in PROTOCOL_METHODS if not callable(getattr(manager_class, name, None))]
    if missing:
        raise ConfigurationError(
            f"{where}: {module_path}.{class_name} is not a StorageManager: it lacks {', '.join(missing)} (see "
            "flowmas.files.storage.StorageManager).")
    try:
        factory = getattr(manager_class, "from_config", None)
        built = factory(options) if callable(factory) else manager_class(**options)
    except ConfigurationError:
        raise
    except Exception as exc:  # noqa: BLE001 - a third-party constructor may fail any way
        raise ConfigurationError(
            f"{where}: {module_path}.{class_name} could not be built from its options "
            f"({type(exc).__name__}: {shorten(one_line(str(exc)), 160)}).") from None
    return built  # type: ignore[no-any-return]
