"""``FileMetadata``: what an upload returns and ``get_metadata`` answers, and the document the store keeps.

Two forms of one model:

* the **stored document** (``to_stored`` / ``from_stored``): JSON with every field under its Python name,
  plus the storage ``key`` and the ``session_ref`` of the indexes, and a ``format`` number. It is parsed
  strictly (unknown keys, wrong types, a key that is not 32 hex: ``ValueError``), so a damaged or foreign
  document is recognised as such, never half-trusted;
* the **caller's dict** (``to_dict``), in Solace Agent Mesh's key names with ours beside them: ``name`` and
  ``filename``, ``file_size`` and ``size``, ``schema-yaml`` (SAM's hyphen), ``mime_type``, ``url``,
  ``upload_timestamp``, ``expiration_timestamp`` (epoch seconds, floats), ``session_id``, ``sha256``,
  ``data_source``, ``shape``, ``schema_error``, and the caller's extra keys (first, as SAM ordered them).

The session id is stored (as SAM did): it is what the access check compares, it is not a secret of the
store. It is, however, the bearer credential of its session, so a reader who holds only a share URL gets
the dict without it (``to_dict(include_session=False)``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flowmas.files.storage.base import KEY_RE
from flowmas.files.urls import build_url

STORED_FORMAT = 1

OWNED_KEYS = frozenset({
    "url", "name", "filename", "file_name", "size", "file_size", "mime_type", "upload_timestamp",
    "expiration_timestamp", "session_id", "session_ref", "sha256", "schema-yaml", "schema_yaml", "shape",
    "schema_error", "key", "signature", "format", "sampled", "extra",
})
"""Keys the service computes: a caller's kwarg of one of these names is ignored (with a warning)."""


class FileMetadata(BaseModel):
    """One file's metadata (see the module docstring for its two forms)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: int = STORED_FORMAT
    key: str = Field(pattern=KEY_RE.pattern)
    session_ref: str = Field(pattern=KEY_RE.pattern)
    session_id: str = Field(min_length=1)
    filename: str = Field(min_length=1)
    size: int = Field(ge=0)
    mime_type: str | None = None
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    upload_timestamp: float
    expiration_timestamp: float
    data_source: str | None = None
    schema_yaml: str | None = None
    shape: str | None = None
    schema_error: str | None = None
    sampled: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("upload_timestamp", "expiration_timestamp", mode="before")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # JSON writes 1.0 as 1.0, but a hand-made document may say 1
        if not isinstance(value, float) or not math.isfinite(value):
            raise ValueError("must be finite epoch seconds")
        return value

    @property
    def url(self) -> str:
        """The file's ``amfs://`` URL (without params)."""
        return build_url(self.key, self.filename)

    def expired(self, now: float) -> bool:
        """Gone for readers from the instant ``expiration_timestamp`` is reached, whatever the sweep does."""
        return now >= self.expiration_timestamp

    def to_dict(self, *, include_session: bool = True) -> dict[str, Any]:
        """The caller's dict: extra keys first, then SAM's names with ours beside them."""
        data: dict[str, Any] = {key: value for key, value in self.extra.items() if key not in OWNED_KEYS}
        data.update({
            "url": self.url,
            "mime_type": self.mime_type,
            "name": self.filename,
            "filename": self.filename,
            "schema-yaml": self.schema_yaml,
            "shape": self.shape,
            "schema_error": self.schema_error,
            "file_size": self.size,
            "size": self.size,
            "upload_timestamp": self.upload_timestamp,
            "expiration_timestamp": self.expiration_timestamp,
            "session_id": self.session_id,
            "sha256": self.sha256,
            "data_source": self.data_source,
        })
        if not include_session:
            del data["session_id"]
        return data

    def to_stored(self) -> bytes:
        """The stored document (ASCII JSON: lone surrogates in a session id or name survive as escapes)."""
        return json.dumps(self.model_dump(mode="python"), ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")

    @classmethod
    def from_stored(cls, data: bytes) -> FileMetadata:
        """Parse a stored document; anything that is not one of ours is ``ValueError`` saying why."""
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON ({type(exc).__name__})") from None
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("format") != STORED_FORMAT:
            raise ValueError(f"unknown document format {str(raw.get('format'))[:20]!r}")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"invalid field {where[:60]!r}: {first['msg'][:120]}") from None

    def replace(self, **changes: Any) -> FileMetadata:
        """A copy with ``changes`` (validated like the original)."""
        return FileMetadata.model_validate({**self.model_dump(mode="python"), **changes})
