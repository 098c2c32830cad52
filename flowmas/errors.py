"""The one exception tree of flowmas.

Every error flowmas raises is a ``FlowmasError``; where the meaning matches a built-in, the built-in is a
co-parent, so ``except FileNotFoundError`` and friends keep working. Third-party errors are translated once,
at the adapter that calls the third party. ``TransientError`` is a marker: "retrying may help". Prefect's
``retry_condition_fn`` and the in-core retry loops read it, and nothing else decides what is retried.

    FlowmasError
    ├── ConfigurationError (ValueError)        a project file, setting or argument is wrong
    │   └── UnknownAssetError (LookupError)     an asset name that the project does not declare
    ├── AssetError
    │   ├── DownloadError                       a source could not deliver the asset
    │   │   ├── TransientDownloadError (TransientError)   network error, 5xx, 429: retried
    │   │   ├── AuthenticationError (PermissionError)     401/403, gated repo, missing token
    │   │   └── SourceNotFoundError (FileNotFoundError)   404, unknown repo/revision/entry/path
    │   ├── ChecksumMismatchError (ValueError)  the bytes do not match the declared sha256
    │   ├── UnsafeArchiveError                  an archive tries to escape, or is a bomb
    │   ├── UnpackError                         an archive is corrupt or of the wrong format
    │   ├── AssetNotCachedError (FileNotFoundError)
    │   ├── AssetVerificationError              a cached asset no longer matches its record
    │   └── LockTimeoutError (TimeoutError)     another process held the asset's lock too long
    ├── FileServiceError
    │   ├── SessionMismatchError (PermissionError)
    │   ├── FileExpiredError (FileNotFoundError)
    │   └── InvalidFileURLError (ValueError)
    ├── GraphError
    │   ├── ConditionError
    │   ├── VisitLimitExceededError
    │   └── SnapshotError
    ├── CacheError
    │   └── MailboxError
    ├── LLMError
    │   ├── LLMHTTPError
    │   └── LLMProtocolError
    └── OpacaError
        ├── UnknownAgentError (LookupError)
        ├── UnknownActionError (LookupError)
        └── ActionFailedError
    TransientError                              mixin: retrying can help

Messages say what happened and what to do next.
"""

from __future__ import annotations


class FlowmasError(Exception):
    """Root of every error flowmas raises."""


class TransientError(Exception):
    """Marker mixin: the operation may succeed if retried (network trouble, 5xx, 429).

    ``retry_after`` is the delay the other side asked for, in seconds, when it said one.
    """

    retry_after: float | None = None


class ConfigurationError(FlowmasError, ValueError):
    """The project file, a setting or an argument is wrong; fix the configuration and try again."""


class UnknownAssetError(ConfigurationError, LookupError):
    """An asset name the project does not declare."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        self.name = name
        hint = f" Declared assets: {', '.join(sorted(known))}." if known else " The project declares no assets."
        super().__init__(f"Unknown asset {name!r}: add it under 'assets:' in flowmas.yaml.{hint}")

    def __str__(self) -> str:  # LookupError would repr() the message otherwise
        return str(self.args[0])


# --- assets -----------------------------------------------------------------------------------------


class AssetError(FlowmasError):
    """Something went wrong while fetching, verifying or unpacking an asset."""

    def __init__(self, message: str, *, asset: str | None = None) -> None:
        super().__init__(message)
        self.asset = asset


class DownloadError(AssetError):
    """A source could not deliver the asset."""

    def __init__(self, message: str, *, asset: str | None = None, status_code: int | None = None) -> None:
        super().__init__(message, asset=asset)
        self.status_code = status_code


class TransientDownloadError(DownloadError, TransientError):
    """A network error, a 5xx or a 429: retrying (with backoff) can help."""

    def __init__(
        self,
        message: str,
        *,
        asset: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, asset=asset, status_code=status_code)
        self.retry_after = retry_after


class AuthenticationError(DownloadError, PermissionError):
    """The source refused our credentials (401/403, gated repo), or a configured token is missing."""


class SourceNotFoundError(DownloadError, FileNotFoundError):
    """The source has no such file, repository, revision or path."""


class ChecksumMismatchError(AssetError, ValueError):
    """The downloaded bytes do not match the declared sha256; nothing was published."""

    def __init__(self, *, asset: str, expected: str, actual: str, source: str) -> None:
        self.expected = expected
        self.actual = actual
        self.source = source
        super().__init__(
            f"sha256 mismatch for asset {asset!r} from {source}: expected {expected}, got {actual}. "
            "The partial file was removed and the cache is unchanged; check the checksum in flowmas.yaml "
            "or the source.",
            asset=asset,
        )


class UnsafeArchiveError(AssetError):
    """An archive member would escape the destination, is a device or link out, or the archive is a bomb."""

    def __init__(self, message: str, *, asset: str | None = None, member: str | None = None) -> None:
        super().__init__(message, asset=asset)
        self.member = member


class UnpackError(AssetError):
    """An archive is corrupt or not of the declared format."""


class AssetNotCachedError(AssetError, FileNotFoundError):
    """The asset is not in the cache; download it first (`flowmas assets download NAME`)."""


class AssetVerificationError(AssetError):
    """A cached asset no longer matches what was recorded when it was downloaded."""


class LockTimeoutError(AssetError, TimeoutError):
    """Another process held the asset's lock for longer than the configured lock timeout."""


# --- files ------------------------------------------------------------------------------------------


class FileServiceError(FlowmasError):
    """Something went wrong in the session file service."""


class SessionMismatchError(FileServiceError, PermissionError):
    """A file was asked for under a session that does not own it."""


class FileExpiredError(FileServiceError, FileNotFoundError):
    """The file's time to live has passed; it is gone."""


class InvalidFileURLError(FileServiceError, ValueError):
    """A string that is not a valid ``amfs://`` URL."""


# --- graphs -----------------------------------------------------------------------------------------


class GraphError(FlowmasError):
    """Something went wrong while running an agent task graph."""


class ConditionError(GraphError):
    """A flow-control condition failed to compile or run."""


class VisitLimitExceededError(GraphError):
    """A node was visited more often than its limit allows."""


class SnapshotError(GraphError):
    """A graph snapshot could not be taken or restored."""


# --- cache ------------------------------------------------------------------------------------------


class CacheError(FlowmasError):
    """Something went wrong in the cache backend."""


class MailboxError(CacheError):
    """A mailbox operation failed."""


# --- LLM --------------------------------------------------------------------------------------------


class LLMError(FlowmasError):
    """Something went wrong talking to an inference provider."""


class LLMHTTPError(LLMError):
    """The provider answered with an HTTP error."""


class LLMProtocolError(LLMError):
    """The provider's answer did not follow its wire protocol."""


# --- OPACA ------------------------------------------------------------------------------------------


class OpacaError(FlowmasError):
    """Something went wrong in the OPACA agent container."""


class UnknownAgentError(OpacaError, LookupError):
    """No agent of that id in this container."""


class UnknownActionError(OpacaError, LookupError):
    """No action of that name (for that agent) in this container."""


class ActionFailedError(OpacaError):
    """An action ran and failed."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying ``exc`` can help: the single rule every retry loop and Prefect task uses."""
    return isinstance(exc, TransientError)
