"""The asset declarations of ``flowmas.yaml`` (OpenMAS's ``openmas_project.yml`` schema, made strict).

Every model forbids unknown keys, so a typo is an error that names its YAML path instead of a setting that
silently does nothing. ``authentication`` and ``progress_report*`` are accepted both on the asset and inside
``source`` (OpenMAS documents both); they are normalised onto the asset, and setting one in both places
with different values is an error.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from flowmas.assets.unpack import ArchiveFormat
from flowmas.text import shorten

SAFE_SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"
"""Names, versions and types become directory names in the cache: no separators, no leading dot."""

ARCHIVE_SUFFIXES: dict[str, ArchiveFormat] = {
    ".zip": "zip",
    ".tar": "tar",
    ".tar.gz": "tar.gz",
    ".tgz": "tar.gz",
    ".tar.bz2": "tar.bz2",
    ".tbz2": "tar.bz2",
    ".tar.xz": "tar.xz",
    ".txz": "tar.xz",
}
HF_TOKEN_ENV_VARS = ("HUGGING_FACE_HUB_TOKEN", "HF_TOKEN")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpAuth(Strict):
    """How a token is sent over HTTP: ``<header_name>: <scheme> <token>`` (just the token if scheme is "")."""

    token_env_var: str | None = None
    scheme: str = Field(default="Bearer", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]*$")
    header_name: str = Field(default="Authorization", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class HubAuth(Strict):
    """Which environment variable holds the Hugging Face token (default: HUGGING_FACE_HUB_TOKEN, then HF_TOKEN)."""

    token_env_var: str | None = None


class Authentication(Strict):
    """``env_token`` reads the token from an environment variable; ``prefect_secret`` from a Secret block."""

    strategy: Literal["env_token", "prefect_secret"] = "env_token"
    http: HttpAuth | None = None
    hf: HubAuth | None = None
    block: str | None = None

    @model_validator(mode="after")
    def _strategy_has_what_it_needs(self) -> Authentication:
        if self.strategy == "prefect_secret" and not self.block:
            raise ValueError("strategy 'prefect_secret' needs 'block: <name of a Prefect Secret block>'")
        if self.strategy == "env_token" and self.block:
            raise ValueError("'block' is only used with strategy 'prefect_secret'")
        return self


MAX_INTERVAL_MB = 1_000_000.0
"""A progress line every terabyte at most: more is an overflow waiting to happen, not a setting."""


class _SourceBase(Strict):
    authentication: Authentication | None = None
    progress_report: bool | None = None
    progress_report_interval_mb: float | None = Field(default=None, gt=0, le=MAX_INTERVAL_MB, allow_inf_nan=False)


class HttpSourceConfig(_SourceBase):
    type: Literal["http"]
    url: str
    filename: str | None = Field(default=None, pattern=SAFE_SEGMENT)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        bad = next((i for i, c in enumerate(url) if ord(c) <= 0x20 or ord(c) == 0x7F), None)
        if bad is not None:
            raise ValueError(f"'url' holds a space or control character at position {bad}; percent-encode it")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"'url' is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"'url' must be an http(s) URL with a host, got {redact_url(url)!r}")
        if port == 0:
            raise ValueError("'url' has port 0")
        return url

    def identity(self) -> dict[str, Any]:
        return {"type": "http", "url": self.url}

    def redacted_identity(self) -> dict[str, Any]:
        return {"type": "http", "url": redact_url(self.url)}

    def default_filename(self) -> str:
        return posixpath.basename(unquote(urlsplit(self.url).path))


class HubSourceConfig(_SourceBase):
    """A file of a Hub repository, or (without ``filename``) a snapshot of the repository as a directory."""

    type: Literal["hf"]
    repo_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
    filename: str | None = Field(default=None, description="A file inside the repository; none: a snapshot.")
    revision: str = "main"
    repo_type: Literal["model", "dataset", "space"] = "model"
    allow_patterns: list[str] | None = None
    """Snapshot only: fnmatch patterns of the files to fetch (default: all)."""
    ignore_patterns: list[str] | None = None
    """Snapshot only: fnmatch patterns of files to leave out."""

    @model_validator(mode="before")
    @classmethod
    def _drop_null_revision(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("revision") is None:
            data = {k: v for k, v in data.items() if k != "revision"}
        return data

    @model_validator(mode="after")
    def _patterns_only_for_snapshots(self) -> HubSourceConfig:
        if self.filename is not None and (self.allow_patterns is not None or self.ignore_patterns is not None):
            raise ValueError("'allow_patterns' and 'ignore_patterns' select files of a snapshot: "
                             "drop them, or drop 'filename' to fetch a snapshot")
        if self.filename is not None and (not self.filename.strip("/") or "\x00" in self.filename):
            raise ValueError("'filename' must be the path of a file inside the repository")
        return self

    @property
    def snapshot(self) -> bool:
        return self.filename is None

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {
            "type": "hf",
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "filename": self.filename,
            "revision": self.revision,
        }
        if self.snapshot:
            identity |= {"allow_patterns": self.allow_patterns, "ignore_patterns": self.ignore_patterns}
        return identity

    def redacted_identity(self) -> dict[str, Any]:
        return self.identity()

    def default_filename(self) -> str:
        return posixpath.basename(self.filename) if self.filename else self.repo_id.rsplit("/", 1)[-1]


class LocalSourceConfig(_SourceBase):
    type: Literal["local"]
    path: Path
    hardlink: bool = False
    """Hardlink a local file into the cache instead of copying it (same filesystem only)."""

    @field_validator("path")
    @classmethod
    def _relative_to_project(cls, path: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("base_dir")
        path = path.expanduser()
        return Path(base, path) if base is not None and not path.is_absolute() else path

    def identity(self) -> dict[str, Any]:
        return {"type": "local", "path": str(self.path)}

    def redacted_identity(self) -> dict[str, Any]:
        return self.identity()

    def default_filename(self) -> str:
        return self.path.name or "asset"


MAX_RETRIES = 100
"""Retries beyond this are a typo or a busy loop, not a policy."""
MAX_RETRY_DELAY = 86_400.0

SourceConfig = Annotated[HttpSourceConfig | HubSourceConfig | LocalSourceConfig, Field(discriminator="type")]

_SHARED_KEYS = ("authentication", "progress_report", "progress_report_interval_mb")


class AssetConfig(Strict):
    """One declared asset. Effective ``authentication``/``progress_*`` live here after normalisation."""

    name: str = Field(pattern=SAFE_SEGMENT)
    version: str = Field(default="latest", pattern=SAFE_SEGMENT)
    asset_type: str = Field(default="model", pattern=SAFE_SEGMENT)
    description: str | None = None
    source: SourceConfig
    checksum: str | None = Field(default=None, pattern=r"^sha256:[0-9a-fA-F]{64}$")
    unpack: bool = False
    unpack_format: ArchiveFormat | None = None
    unpack_destination_is_file: bool = False
    authentication: Authentication | None = None
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    retry_delay_seconds: float = Field(default=5.0, ge=0, le=MAX_RETRY_DELAY, allow_inf_nan=False)
    progress_report: bool = True
    progress_report_interval_mb: float = Field(default=10.0, gt=0, le=MAX_INTERVAL_MB, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _hoist_source_settings(cls, data: Any) -> Any:
        """Move ``authentication``/``progress_*`` found inside ``source`` up to the asset."""
        if not isinstance(data, dict) or not isinstance(data.get("source"), dict):
            return data
        data, source = dict(data), dict(data["source"])
        for key in _SHARED_KEYS:
            if key in source:
                inner = source.pop(key)
                if key in data and data[key] != inner:
                    raise ValueError(f"{key!r} is set both on the asset and in 'source' with different values")
                data[key] = inner
        data["source"] = source
        return data

    @field_validator("checksum")
    @classmethod
    def _lower_checksum(cls, checksum: str | None) -> str | None:
        return checksum.lower() if checksum else None

    @model_validator(mode="after")
    def _consistent(self) -> AssetConfig:
        problem = None if self.is_directory_source else file_name_problem(self.filename)
        if problem is not None:
            where = {"http": "the URL's last path segment", "hf": "'filename'", "local": "'path'"}[self.source.type]
            raise ValueError(f"{where} gives the file name {shorten(self.filename)!r}, which {problem}; "
                             + ("set 'source.filename'" if self.source.type == "http" else "use another path"))
        if isinstance(self.source, HubSourceConfig) and self.source.snapshot and (self.checksum or self.unpack):
            raise ValueError("a Hub snapshot (no 'filename') is a directory: 'checksum' and 'unpack' apply to one "
                             "file; each snapshot file is verified against the Hub's own hashes")
        if self.unpack and self.unpack_format is None:
            guessed = archive_format_of(self.filename)
            if guessed is None:
                raise ValueError(
                    f"'unpack: true' needs 'unpack_format' (one of zip, tar, tar.gz, tar.bz2, tar.xz): "
                    f"it cannot be told from the file name {self.filename!r}"
                )
            object.__setattr__(self, "unpack_format", guessed)
        if self.unpack_destination_is_file and not self.unpack:
            raise ValueError("'unpack_destination_is_file' only applies with 'unpack: true'")
        auth = self.authentication
        if auth is not None:
            if isinstance(self.source, LocalSourceConfig):
                raise ValueError("local sources take no 'authentication'")
            needs_env = isinstance(self.source, HttpSourceConfig) and auth.strategy == "env_token"
            if needs_env and (auth.http is None or not auth.http.token_env_var):
                raise ValueError("http sources with strategy 'env_token' need 'http: {token_env_var: ...}'")
        return self

    @property
    def is_directory_source(self) -> bool:
        """A Hub snapshot, or a local path (a file or a directory: its name comes from the file system)."""
        return isinstance(self.source, LocalSourceConfig) or (
            isinstance(self.source, HubSourceConfig) and self.source.snapshot)

    @property
    def filename(self) -> str:
        """The file's name in the cache (an http ``filename`` overrides the URL's last segment)."""
        if isinstance(self.source, HttpSourceConfig) and self.source.filename:
            return self.source.filename
        return self.source.default_filename()

    @property
    def key(self) -> str:
        """``type/name/version``: where the asset lives in the cache and what its lock is named after."""
        return f"{self.asset_type}/{self.name}/{self.version}"

    def identity(self) -> dict[str, Any]:
        """Everything that decides the cached bytes: a change here means the cache entry is stale."""
        return {
            "source": self.source.identity(),
            "filename": self.filename,
            "checksum": self.checksum,
            "unpack": self.unpack,
            "unpack_format": self.unpack_format if self.unpack else None,
            "unpack_destination_is_file": self.unpack_destination_is_file,
        }

    def identity_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def describe_source(self) -> str:
        source = self.source
        if isinstance(source, HttpSourceConfig):
            return f"http: {redact_url(source.url)}"
        if isinstance(source, HubSourceConfig):
            if source.snapshot:
                return f"hf: {source.repo_id}@{source.revision} (snapshot)"
            return f"hf: {source.repo_id}/{source.filename}@{source.revision}"
        return f"local: {source.path}"


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one file's name in the cache, or None when it can."""
    if name in ("", ".", ".."):
        return "is not a file name"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "contains a control character"
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        return "is longer than the 255 bytes a file system allows"
    return None


def archive_format_of(filename: str) -> ArchiveFormat | None:
    lowered = filename.lower()
    for suffix, fmt in sorted(ARCHIVE_SUFFIXES.items(), key=lambda item: -len(item[0])):
        if lowered.endswith(suffix):
            return fmt
    return None


def redact_url(url: str) -> str:
    """Drop userinfo and the query string: signed URLs carry credentials there."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"
