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
    │   │   │   ├── DownloadTimeoutError (TimeoutError)   the download's deadline passed, or it crawled
    │   │   │   └── SourceChangedError                    a local file changed while it was copied
    │   │   ├── AuthenticationError (PermissionError)     401/403, gated repo, missing or malformed token
    │   │   └── SourceNotFoundError (FileNotFoundError)   404, unknown repo/revision/entry/path
    │   ├── ChecksumMismatchError (ValueError)  the bytes do not match the declared (or the Hub's) sha256
    │   ├── UnsafeArchiveError                  an archive tries to escape, or is a bomb
    │   ├── UnpackError                         an archive is corrupt or of the wrong format
    │   ├── DiskSpaceError (OSError)            not enough free space for the asset
    │   ├── AssetCacheError (OSError)           the cache directory cannot be used (a file, no permission)
    │   ├── AssetNotCachedError (FileNotFoundError)
    │   ├── AssetVerificationError              a cached asset no longer matches its record
    │   └── LockTimeoutError (TimeoutError)     another process held the asset's lock too long
    ├── FileServiceError
    │   ├── FileServiceNotFoundError (FileNotFoundError)   no such file in this session (another session's
    │   │                                                  file gets the very same answer)
    │   ├── FileExpiredError (FileNotFoundError)  its time to live has passed
    │   ├── SessionMismatchError (PermissionError) alias FileServicePermissionError: a bad session id or share
    │   ├── InvalidFileURLError (ValueError)      not an amfs:// URL, or an unknown or malformed param
    │   ├── FileTooLargeError                     a per-file or per-session size limit, counted as bytes stream
    │   └── FileStorageError                      a storage backend failed (its errors translated once)
    │       └── TransientFileStorageError (TransientError)  unreachable, throttled or 5xx: retried
    ├── GraphError
    │   ├── GraphDefinitionError (ValueError)     unknown dependencies, cycles outside flow control, bad jumps
    │   ├── ConditionError (ValueError)           a Lua condition that does not compile, run or fit its limits
    │   ├── NonRetryableError alias NonRetryableException: raised by a module to stop its node's retries
    │   ├── VisitLimitExceededError               a node visited more often than max_visits
    │   ├── IterationLimitExceededError           a run past max_total_iterations
    │   └── SnapshotError                         a snapshot that cannot be written, read or resumed
    ├── CacheError
    │   ├── CacheConnectionError (TransientError) the cache server is unreachable
    │   └── MailboxError                          a mailbox operation failed
    ├── LLMError                            an inference provider call failed (provider, model; never the key)
    │   ├── LLMHTTPError                        the provider answered 4xx/5xx: status, request_id, code, message
    │   │   ├── TransientLLMHTTPError (TransientError)   429, 5xx, 529 overloaded: retried, retry-after honoured
    │   │   └── ContextLengthExceededError            the prompt does not fit the model's context window
    │   ├── LLMConnectionError (TransientError) refused or dropped connection, a stream cut midway: retried
    │   │   └── LLMTimeoutError (TimeoutError)   the request's timeout passed
    │   ├── LLMProtocolError                    the answer did not follow the wire protocol (bad SSE/JSON/events)
    │   └── ToolChainLimitError                 a tool chain hit max_iterations; ``result`` holds the transcript
    ├── OpacaError                          the agent container (HTTP status in agents_api's one table)
    │   ├── UnknownAgentError (LookupError)           404
    │   ├── UnknownActionError (LookupError)          404
    │   ├── UnknownStreamError (LookupError)          404
    │   ├── InvalidArgumentsError (ValueError)        400  arguments that do not match the action
    │   ├── ActionFailedError                         500  (or the status_code an HTTPException carried)
    │   ├── ActionTimeoutError (TimeoutError)         504  ?timeout expired; run_id when a flow run goes on
    │   ├── LoginFailedError (PermissionError)        401
    │   ├── LoginNotSupportedError                    501
    │   └── ContainerConfigurationError (ConfigurationError)  container.json or an image parameter is wrong
    └── ServiceStartError (RuntimeError)        `flowmas up`: a service did not come up, or serving failed
    TransientError                              mixin: retrying can help

Messages say what happened and what to do next.
"""

from __future__ import annotations

import difflib
import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowmas.llm.client import ToolChainResult


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
        close = difflib.get_close_matches(name, known or [], n=1, cutoff=0.6)
        guess = f" Did you mean {close[0]!r}?" if close else ""
        hint = f" Declared assets: {', '.join(sorted(known))}." if known else " The project declares no assets."
        shown = name if len(name) <= 60 else name[:59] + "…"
        super().__init__(f"Unknown asset {shown!r}.{guess} Add it under 'assets:' in flowmas.yaml.{hint}")

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


class DownloadTimeoutError(TransientDownloadError, TimeoutError):
    """The download's overall deadline passed, or the transfer stayed below the minimum speed.

    The partial file is kept, so a retry (a new deadline) resumes where this one stopped.
    """


class SourceChangedError(TransientDownloadError):
    """A local source file changed (size, mtime or inode) while it was being copied; nothing was published."""


class AuthenticationError(DownloadError, PermissionError):
    """The source refused our credentials (401/403, gated repo), or a configured token is missing."""


class SourceNotFoundError(DownloadError, FileNotFoundError):
    """The source has no such file, repository, revision or path."""


class ChecksumMismatchError(AssetError, ValueError):
    """The downloaded bytes do not match the declared sha256; nothing was published."""

    def __init__(self, *, asset: str, expected: str, actual: str, source: str, message: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        self.source = source
        super().__init__(
            message or f"sha256 mismatch for asset {asset!r} from {source}: expected {expected}, got {actual}. "
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


class DiskSpaceError(AssetError, OSError):
    """There is not enough free space where the asset is written or unpacked."""

    def __init__(self, message: str, *, asset: str | None = None) -> None:
        AssetError.__init__(self, message, asset=asset)


class AssetCacheError(AssetError, OSError):
    """The asset cache directory cannot be used: it is a file, or flowmas may not write there."""

    def __init__(self, message: str, *, asset: str | None = None) -> None:
        AssetError.__init__(self, message, asset=asset)


class AssetNotCachedError(AssetError, FileNotFoundError):
    """The asset is not in the cache; download it first (`flowmas assets download NAME`)."""


class AssetVerificationError(AssetError):
    """A cached asset no longer matches what was recorded when it was downloaded."""


class LockTimeoutError(AssetError, TimeoutError):
    """Another process held the asset's lock for longer than the configured lock timeout."""


# --- files ------------------------------------------------------------------------------------------


class FileServiceError(FlowmasError):
    """Something went wrong in the session file service."""


class FileServiceNotFoundError(FileServiceError, FileNotFoundError):
    """No such file in this session; a file of another session gets the same answer (no existence oracle)."""


class SessionMismatchError(FileServiceError, PermissionError):
    """An invalid session id, or a share URL that is forged, tampered with or for another file."""


FileServicePermissionError = SessionMismatchError
"""Solace Agent Mesh's name for it."""


class FileExpiredError(FileServiceError, FileNotFoundError):
    """The file's time to live has passed; it is gone."""


class InvalidFileURLError(FileServiceError, ValueError):
    """A string that is not a valid ``amfs://`` URL, or a URL with an unknown or malformed param."""


class FileTooLargeError(FileServiceError):
    """A per-file or per-session size limit was passed while the bytes streamed; nothing was kept."""


class FileStorageError(FileServiceError):
    """A storage backend (volume, S3, memory) failed; the message says which and what to check."""


class TransientFileStorageError(FileStorageError, TransientError):
    """The storage could not be reached, throttled or failed on its side (5xx): retrying may help."""


# --- graphs -----------------------------------------------------------------------------------------


class GraphError(FlowmasError):
    """Something went wrong while running an agent task graph."""


class GraphDefinitionError(GraphError, ValueError):
    """The graph cannot run as defined (unknown dependencies, a cycle outside flow control, a jump target that
    does not exist); the message names the nodes."""


class ConditionError(GraphError, ValueError):
    """A flow-control condition failed to compile or run, or hit its memory or instruction limit; the message
    names the node, the decision and the source text."""


class NonRetryableError(GraphError):
    """Raised by a module: retrying its node cannot help, so the node fails now."""


NonRetryableException = NonRetryableError
"""Asimov's name."""


class VisitLimitExceededError(GraphError):
    """A node was visited more often than its limit allows."""


class IterationLimitExceededError(GraphError):
    """A run took more steps than its ``max_total_iterations``."""


class SnapshotError(GraphError):
    """A graph snapshot could not be taken or restored."""


# --- cache ------------------------------------------------------------------------------------------


class CacheError(FlowmasError):
    """Something went wrong in the cache backend."""


class CacheConnectionError(CacheError, TransientError):
    """The cache server cannot be reached; the message names it (never its password)."""


class MailboxError(CacheError):
    """A mailbox operation failed."""


# --- LLM --------------------------------------------------------------------------------------------


class LLMError(FlowmasError):
    """Something went wrong talking to an inference provider.

    ``provider`` names the wire protocol ("anthropic", "openai", "bedrock", "vertex"), ``model`` the model asked
    for. Messages never carry credentials: adapters build them from the provider's error text only.
    """

    def __init__(self, message: str, *, provider: str | None = None, model: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model


class LLMHTTPError(LLMError):
    """The provider answered with an HTTP error: ``status``, ``request_id``, ``code`` and the provider's ``message``.

    400/401/403/404/413/422 are this class itself and are never retried: fix the request, key or model.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        code: str | None = None,
        provider_message: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider, model=model)
        self.status = status
        self.request_id = request_id
        self.code = code
        self.provider_message = provider_message


class TransientLLMHTTPError(LLMHTTPError, TransientError):
    """429, 5xx or 529 (overloaded): retried with backoff and jitter; ``retry_after`` is what the provider asked."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        code: str | None = None,
        provider_message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message, provider=provider, model=model, status=status, request_id=request_id, code=code,
            provider_message=provider_message,
        )
        self.retry_after = retry_after


class ContextLengthExceededError(LLMHTTPError):
    """The prompt (plus max_tokens) does not fit the model's context window: shorten the messages or max_tokens."""


class LLMConnectionError(LLMError, TransientError):
    """The connection was refused or dropped, or a stream ended midway: retried with backoff."""


class LLMTimeoutError(LLMConnectionError, TimeoutError):
    """The request's timeout passed before the provider answered."""


class LLMProtocolError(LLMError):
    """The provider's answer did not follow its wire protocol (malformed SSE, JSON or event order)."""


class ToolChainLimitError(LLMError):
    """A tool chain reached ``max_iterations`` before it ended; ``result`` holds the transcript and usage so far."""

    def __init__(
        self,
        message: str,
        *,
        result: ToolChainResult | None = None,
        provider: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider, model=model)
        self.result = result


# --- OPACA ------------------------------------------------------------------------------------------


class OpacaError(FlowmasError):
    """Something went wrong in the OPACA agent container."""


class UnknownAgentError(OpacaError, LookupError):
    """No agent of that id in this container."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownActionError(OpacaError, LookupError):
    """No action of that name (for that agent) in this container."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownStreamError(OpacaError, LookupError):
    """No stream of that name (for that agent) in this container."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgumentsError(OpacaError, ValueError):
    """The arguments do not match the action's parameters (the platform's rules); ``problems`` lists each."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class ActionFailedError(OpacaError):
    """An action ran and failed. ``status_code`` is 500 unless the action raised an HTTP exception of its own."""

    def __init__(self, message: str, *, status_code: int = 500, run_id: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.run_id = run_id


class ActionTimeoutError(OpacaError, TimeoutError):
    """The invocation's timeout expired; ``run_id`` names the flow run that goes on, when there is one."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class LoginFailedError(OpacaError, PermissionError):
    """The credentials were refused (HTTP 401)."""


class LoginNotSupportedError(OpacaError):
    """No agent of this container handles a login (HTTP 501)."""


class ContainerConfigurationError(ConfigurationError):
    """container.json or an image parameter (environment variable) is missing or wrong."""


# --- flowmas up -------------------------------------------------------------------------------------


class ServiceStartError(FlowmasError, RuntimeError):
    """A service did not come up, or serving failed; the message is one sentence: what, where, what to do."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying ``exc`` can help: the single rule every retry loop and Prefect task uses."""
    return isinstance(exc, TransientError)


# --- every failure as a sentence ---------------------------------------------------------------------

EXIT_OK = 0
EXIT_FAILED = 1
"""An operation failed (a download, a verification): the message says which and why."""
EXIT_USAGE = 2
"""Bad usage or configuration: fix the command line, flowmas.yaml or a FLOWMAS_* variable."""
EXIT_DECLINED = 3
"""The user declined a confirmation prompt; nothing was changed."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT), as shells report it."""


@dataclass(frozen=True)
class Explanation:
    """What a user is told about a failure, and the exit code a command ends with."""

    message: str
    exit_code: int
    expected: bool = True
    """False for a failure flowmas did not anticipate (a bug): the traceback belongs in the debug log."""


_OS_ERROR_HINTS = {
    errno.ENOSPC: "no space left on the device: free some space, or move the asset cache (FLOWMAS_ASSETS_DIR)",
    errno.EDQUOT: "the disk quota is exhausted: free some space, or move the asset cache (FLOWMAS_ASSETS_DIR)",
    errno.EACCES: "permission denied: fix the permissions, or point FLOWMAS_ASSETS_DIR / FLOWMAS_HOME elsewhere",
    errno.EPERM: "operation not permitted: fix the permissions, or point FLOWMAS_ASSETS_DIR elsewhere",
    errno.EROFS: "the file system is read-only: point FLOWMAS_ASSETS_DIR / FLOWMAS_HOME at a writable place",
    errno.ENOTDIR: "a part of the path is a file, not a directory: move that file away or choose another path",
    errno.ENAMETOOLONG: "the file name is too long for the file system: choose a shorter name",
    errno.EMFILE: "the process has too many open files: raise `ulimit -n` or lower the concurrency",
}


def describe_os_error(exc: OSError) -> str:
    """An ``OSError`` as a sentence: what failed, on which path, and what to do."""
    text = _OS_ERROR_HINTS.get(exc.errno or -1) or exc.strerror or str(exc) or type(exc).__name__
    if exc.filename:
        return f"{exc.filename}: {text}."
    return f"{text[0].upper()}{text[1:]}."


def explain(exc: BaseException) -> Explanation:
    """The one place a failure becomes a message and an exit code (the CLI, flow tables and, later, HTTP bodies).

    Flowmas errors already say what happened and what to do; an ``OSError`` is described by its errno;
    anything else is a bug, said as such, with no text that could carry a header value.
    """
    if isinstance(exc, ConfigurationError):
        return Explanation(str(exc), EXIT_USAGE)
    if isinstance(exc, FlowmasError):
        return Explanation(str(exc), EXIT_FAILED)
    if isinstance(exc, KeyboardInterrupt):
        return Explanation("Interrupted.", EXIT_INTERRUPTED)
    if isinstance(exc, OSError):
        return Explanation(describe_os_error(exc), EXIT_FAILED)
    if isinstance(exc, MemoryError):
        return Explanation("Out of memory: lower the concurrency or free memory and try again.", EXIT_FAILED)
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    if "header" in text.lower():  # e.g. "Illegal header value b'Bearer …'": never echo it
        text = ""
    detail = f": {text}" if text else ""
    return Explanation(
        f"Unexpected {type(exc).__name__}{detail}. This is a bug in flowmas: run the command again with -v "
        "for the traceback and report it.",
        EXIT_FAILED,
        expected=False,
    )
