"""Fetch an asset from the Hugging Face Hub: one file of a repository, or a snapshot of it as a directory.

**One file** (``filename`` set), hashed once and checked against the Hub's own hash:

1. *Metadata.* huggingface_hub's own ``HEAD`` (``get_hf_file_metadata`` on ``hf_hub_url``) resolves the
   revision to a commit and gives the Hub's hash of the file and its size: ``X-Linked-Etag``, the sha256 of
   an LFS (or Xet) file, else ``ETag``, the git blob sha1 of a file kept in git itself. huggingface_hub's
   typed errors become flowmas errors here, once (``_translated``).
2. *Bytes.* If the Hugging Face cache (``HF_HUB_CACHE``) already holds the file at that commit, it is
   hardlinked (else copied) into the ``.part`` while it is hashed: no request. Otherwise the resolve URL
   *pinned to the commit* is downloaded by ``HttpSource.fetch``: one streaming pass that writes and
   sha256-hashes, resumable across attempts and calls (Range + If-Range), the token sent to the Hub's origin
   only (it is dropped on the redirect to the CDN).
3. *Verify.* sha256 against ``X-Linked-Etag``; for git-stored files (small by the Hub's rules) the git blob
   sha1 of the ``.part``. A mismatch removes the ``.part`` and its sidecar and raises.

Why not ``hf_hub_download``: it verifies nothing (the Hub's hash only names the blob), so a second hashing
pass would be needed, and 2.4.0 restarts an interrupted file from zero on the next call.

**A snapshot** (no ``filename``): ``repo_info(files_metadata=True)`` pins the commit and lists every file
with the Hub's hash; the patterns select files exactly as ``snapshot_download`` does (an empty selection is
an error); ``snapshot_download(revision=<commit>)`` fills the Hugging Face cache; each selected file is then
hardlinked or copied into the ``.part`` directory while hashed and checked. A file that does not match is
also removed from the Hugging Face cache, so the next attempt downloads it again instead of trusting it.

``HF_ENDPOINT`` and ``HF_HUB_CACHE`` are read at every call (huggingface_hub reads them once, at import).
Every call into huggingface_hub runs inside ``hub_logs``, so its log lines come out of the
``flowmas.assets.hub`` logger, in flowmas's format. huggingface_hub is imported on first use: ``import
flowmas`` stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, cast

from flowmas.assets.deadline import Deadline
from flowmas.assets.http import HttpSource, sidecar_of
from flowmas.assets.manifest import AssetConfig, HubSourceConfig, redact_url
from flowmas.assets.progress import Progress
from flowmas.assets.record import Fetched
from flowmas.assets.streaming import DEFAULT_BUFFER_SIZE, copy_and_hash
from flowmas.assets.unpack import UnpackedFile
from flowmas.errors import (
    AuthenticationError,
    ChecksumMismatchError,
    ConfigurationError,
    DownloadError,
    FlowmasError,
    SourceNotFoundError,
    TransientDownloadError,
)
from flowmas.text import shorten

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoSibling

log = logging.getLogger("flowmas.assets.hub")

DEFAULT_ENDPOINT = "https://huggingface.co"
METADATA_TIMEOUT = 10.0
"""Seconds a metadata request may take (huggingface_hub's own default), shortened by the deadline."""
HF_LOGGER = "huggingface_hub"
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
_URL = re.compile(r"https?://[^\s'\"<>]+")


def hub_endpoint() -> str:
    """``HF_ENDPOINT`` now, else the public Hub."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> str | None:
    """``HF_HUB_CACHE`` now (None: huggingface_hub's default under ``HF_HOME``)."""
    return os.environ.get("HF_HUB_CACHE") or None


# --- the Hub's hash of a file ------------------------------------------------------------------------


@dataclass(frozen=True)
class HubHash:
    """What the Hub says a file hashes to: ``sha256`` (LFS and Xet files) or ``git-sha1`` (files kept in git)."""

    kind: Literal["sha256", "git-sha1"]
    value: str

    @classmethod
    def from_etag(cls, etag: str | None) -> HubHash | None:
        """The hash an ETag / X-Linked-Etag carries, or None when it is neither a sha256 nor a git sha1."""
        value = (etag or "").removeprefix("W/").strip('"').lower()
        if re.fullmatch(r"[0-9a-f]{64}", value):
            return cls("sha256", value)
        if re.fullmatch(r"[0-9a-f]{40}", value):
            return cls("git-sha1", value)
        return None

    @classmethod
    def of_sibling(cls, sibling: RepoSibling) -> HubHash | None:
        if sibling.lfs is not None:
            return cls.from_etag(sibling.lfs.sha256)
        return cls.from_etag(sibling.blob_id)

    def actual(self, sha256: str, path: Path) -> str:
        """The same kind of hash of the bytes at ``path`` (whose sha256 is known): sha1 costs a pass, but git
        only keeps small files."""
        return sha256 if self.kind == "sha256" else git_blob_sha1_file(path)


def git_blob_sha1_file(path: Path) -> str:
    """The git object id of a file's content: ``sha1(b"blob <size>\\0" + content)``."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    buffer = bytearray(DEFAULT_BUFFER_SIZE)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as file:
        while n := file.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


# --- huggingface_hub's log lines, in flowmas's format -------------------------------------------------


class _ToFlowmas(logging.Handler):
    """Re-emits a huggingface_hub record from ``flowmas.assets.hub``, prefixed with the assets being fetched.

    URLs lose their query string (the CDN's links are signed) like every URL flowmas logs.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if not log.isEnabledFor(record.levelno):
            return
        with _routing_lock:
            names = sorted(_routing)
        prefix = f"{', '.join(names)}: " if names else ""
        message = _URL.sub(lambda m: redact_url(m.group(0)), record.getMessage())
        routed = logging.makeLogRecord(record.__dict__)
        routed.name, routed.msg, routed.args = log.name, f"{prefix}huggingface_hub: {message}", None
        log.handle(routed)


_routing_lock = threading.Lock()
_routing: Counter[str] = Counter()
_saved: tuple[list[logging.Handler], bool] | None = None
_handler = _ToFlowmas()


@contextmanager
def hub_logs(asset: str) -> Iterator[None]:
    """Route the ``huggingface_hub`` loggers to ``flowmas.assets.hub`` for the duration of a call.

    huggingface_hub logs to its own stderr handler, in its own format; whatever handler the CLI or Prefect
    attached to ``flowmas`` would never see those lines. Inside this block its handlers are replaced by one
    that re-emits each record from ``flowmas.assets.hub`` (and it stops propagating, so nothing is printed
    twice); the first block to enter installs that, the last to leave restores the previous configuration,
    so concurrent downloads in threads nest safely. huggingface_hub's own level (``HF_HUB_VERBOSITY``) still
    decides what it emits.
    """
    global _saved
    import huggingface_hub  # noqa: F401 - configures its root logger first, or our restore would undo that

    hf = logging.getLogger(HF_LOGGER)
    with _routing_lock:
        if not _routing:
            _saved = (list(hf.handlers), hf.propagate)
            hf.handlers = [_handler]
            hf.propagate = False
        _routing[asset] += 1
    try:
        yield
    finally:
        with _routing_lock:
            _routing[asset] -= 1
            if _routing[asset] <= 0:
                del _routing[asset]
            if not _routing and _saved is not None:
                hf.handlers, hf.propagate = _saved
                _saved = None


# --- huggingface_hub's errors as flowmas errors -------------------------------------------------------


@contextmanager
def _translated(asset: AssetConfig, source: HubSourceConfig, endpoint: str, token: str | None) -> Iterator[None]:
    """Translate huggingface_hub's typed errors (and httpx2's transport errors) into flowmas errors, once.

    Order matters: ``GatedRepoError`` is a ``RepositoryNotFoundError``, and ``LocalEntryNotFoundError`` (the
    Hub could not be reached and nothing is cached) is an ``EntryNotFoundError``: reading it as "not in the
    repository" would turn a network failure into a permanent error that is never retried.
    """
    import httpx2
    from huggingface_hub import errors as hf

    name = asset.name
    where = _where(source)
    try:
        try:
            yield
        except hf.LocalEntryNotFoundError as exc:
            # hf_hub_download (inside snapshot_download) wraps what went wrong in "nothing cached": judge the cause
            cause = exc.__cause__
            if isinstance(cause, hf.HfHubHTTPError | hf.FileMetadataError | hf.OfflineModeIsEnabled):
                raise cause from None
            raise
    except FlowmasError:
        raise
    except hf.GatedRepoError:
        raise AuthenticationError(
            f"Asset {name!r}: {source.repo_id} is gated; accept its terms on the Hub and configure a token with "
            "access (HF_TOKEN or 'authentication.hf.token_env_var')." + ("" if token else " No token was sent."),
            asset=name, status_code=401 if not token else 403) from None
    except hf.RepositoryNotFoundError:
        raise SourceNotFoundError(
            f"Asset {name!r}: repository {source.repo_id!r} ({source.repo_type}) was not found at {endpoint}, or it is "
            "private and " + ("the token has no access" if token else "no token was sent")
            + "; check 'repo_id', 'repo_type' and the token.", asset=name) from None
    except hf.RevisionNotFoundError:
        raise SourceNotFoundError(
            f"Asset {name!r}: revision {source.revision!r} does not exist in {source.repo_id}; check 'revision' "
            "(a branch, tag or full commit sha).", asset=name) from None
    except hf.LocalEntryNotFoundError as exc:  # the Hub could not be reached and nothing is cached
        raise _unreachable(name, where, endpoint, exc.__cause__ or exc) from None
    except hf.EntryNotFoundError:
        raise SourceNotFoundError(
            f"Asset {name!r}: {shorten(source.filename or '')!r} is not in {source.repo_id}@{source.revision}; "
            "check 'filename' (its path inside the repository).", asset=name) from None
    except hf.DisabledRepoError:
        raise DownloadError(f"Asset {name!r}: {source.repo_id} has been disabled on the Hub; it cannot be "
                            "downloaded.", asset=name) from None
    except hf.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        said = f"the Hub at {endpoint} answered {status} for {where}"
        if status in (401, 403):
            raise AuthenticationError(f"Asset {name!r}: {said}; check the token.", asset=name,
                                      status_code=status) from None
        if status is None or status in _TRANSIENT_STATUS or status >= 500:
            retry_after = exc.response.headers.get("retry-after", "") if exc.response is not None else ""
            raise TransientDownloadError(f"Asset {name!r}: {said}.", asset=name, status_code=status,
                                         retry_after=float(retry_after) if retry_after.isdigit() else None) from None
        raise DownloadError(f"Asset {name!r}: {said}.", asset=name, status_code=status) from None
    except hf.OfflineModeIsEnabled:
        raise DownloadError(
            f"Asset {name!r}: HF_HUB_OFFLINE is set, so {where} cannot be resolved on the Hub; unset it to "
            "download.", asset=name) from None
    except hf.FileMetadataError as exc:
        raise DownloadError(
            f"Asset {name!r}: {endpoint} does not answer like a Hugging Face Hub for {where} ({exc}); check "
            "HF_ENDPOINT.", asset=name) from None
    except httpx2.TransportError as exc:
        raise _unreachable(name, where, endpoint, exc) from None
    except httpx2.RequestError as exc:  # too many redirects, undecodable bodies
        raise DownloadError(f"Asset {name!r}: the Hub at {endpoint} failed for {where}: {type(exc).__name__}: "
                            f"{exc}", asset=name) from None
    except hf.HFValidationError as exc:
        raise ConfigurationError(f"Asset {name!r}: {exc}") from None


def _unreachable(name: str, where: str, endpoint: str, exc: BaseException) -> TransientDownloadError:
    return TransientDownloadError(
        f"Asset {name!r}: the Hugging Face Hub at {endpoint} could not be reached for {where} "
        f"({type(exc).__name__}: {_first_line(exc)}); check the network, a proxy, or HF_ENDPOINT.", asset=name)


def _first_line(exc: BaseException) -> str:
    text = _URL.sub(lambda m: redact_url(m.group(0)), str(exc).strip())
    return text.splitlines()[0][:300] if text else "no details"


def _where(source: HubSourceConfig) -> str:
    if source.filename is None:
        return f"{source.repo_id}@{source.revision} (snapshot)"
    return f"{source.repo_id}/{shorten(source.filename)}@{source.revision}"


def _mismatch(asset: AssetConfig, what: str, expected: HubHash, actual: str) -> ChecksumMismatchError:
    message = (
        f"Asset {asset.name!r}: the bytes of {what} received for {asset.describe_source()} do not match the Hub's "
        f"own hash ({expected.kind} {expected.value}, got {actual}); nothing was published and they were deleted. "
        "Try again later; if it persists, the Hub, its CDN or a proxy in between serves wrong bytes.")
    return ChecksumMismatchError(asset=asset.name, expected=f"{expected.kind}:{expected.value}",
                                 actual=f"{expected.kind}:{actual}", source=asset.describe_source(), message=message)


# --- the source ---------------------------------------------------------------------------------------


class HubSource:
    """Fetches ``hf`` sources into a ``.part``: a file (``Fetched.sha256``) or a directory (``Fetched.files``)."""

    def fetch(self, asset: AssetConfig, part: Path, token: str | None, progress: Progress, *,
              http: HttpSource | None = None, deadline: Deadline | None = None) -> Fetched:
        """``token=None`` uses huggingface_hub's default (``HF_TOKEN``, then the stored login)."""
        source = asset.source
        if not isinstance(source, HubSourceConfig):
            raise TypeError(f"HubSource cannot fetch a {source.type} source")
        if token is None:
            from huggingface_hub import get_token

            token = get_token()
        deadline = deadline or Deadline(24 * 3600)
        if source.filename is None:
            return _Snapshot(asset, source, part, token or None, progress, deadline).run()
        own = http is None
        http = http or HttpSource()
        try:
            return _File(asset, source, source.filename, part, token or None, progress, http, deadline).run()
        finally:
            if own:
                http.close()


class _File:
    """One call for one file: metadata, then bytes from the HF cache or the pinned URL, then the check."""

    def __init__(self, asset: AssetConfig, source: HubSourceConfig, filename: str, part: Path, token: str | None,
                 progress: Progress, http: HttpSource, deadline: Deadline) -> None:
        self.asset, self.source, self.filename, self.part = asset, source, filename, part
        self.token, self.progress, self.http, self.deadline = token, progress, http, deadline
        self.endpoint = hub_endpoint()

    def run(self) -> Fetched:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        source = self.source
        with hub_logs(self.asset.name), _translated(self.asset, source, self.endpoint, self.token):
            url = hf_hub_url(source.repo_id, self.filename, repo_type=source.repo_type, revision=source.revision,
                             endpoint=self.endpoint)
            meta = get_hf_file_metadata(url, token=self.token or False, endpoint=self.endpoint,
                                        timeout=self.deadline.bound(METADATA_TIMEOUT))
        commit, expected = meta.commit_hash, HubHash.from_etag(meta.etag)
        if commit is None or expected is None:
            etag = shorten(repr(meta.etag))
            lacks = "the commit (X-Repo-Commit)" if commit is None else f"a hash in its ETag ({etag})"
            raise DownloadError(
                f"Asset {self.asset.name!r}: {self.endpoint} answered for {_where(source)} without {lacks}, so the "
                "file cannot be pinned and verified; check HF_ENDPOINT.", asset=self.asset.name)
        fetched = self.from_hf_cache(commit, expected)
        if fetched is None:
            fetched = self.download(commit, expected)
        return Fetched(sha256=fetched.sha256, size=fetched.size, details={"commit": commit})

    def from_hf_cache(self, commit: str, expected: HubHash) -> Fetched | None:
        """Link or copy the file from the Hugging Face cache, if it holds it at ``commit`` and it verifies."""
        from huggingface_hub import try_to_load_from_cache

        source = self.source
        try:
            cached = try_to_load_from_cache(source.repo_id, self.filename, cache_dir=hub_cache_dir(),
                                            revision=commit, repo_type=source.repo_type)
        except ValueError:  # a name the cache cannot hold (huggingface_hub validates it): nothing to reuse
            return None
        if not isinstance(cached, str):
            return None
        _discard(self.part)
        blob = Path(cached).resolve()
        self.progress.start(blob.stat().st_size, 0)
        sha256, size = place(blob, self.part, self.progress.advance)
        actual = expected.actual(sha256, self.part)
        if actual != expected.value:
            log.warning("%s: the Hugging Face cache's copy of %s does not match the Hub's %s (%s); downloading it "
                        "again", self.asset.name, self.filename, expected.kind, cached)
            _discard(self.part)
            return None
        log.info("%s: took %s from the Hugging Face cache (commit %s)", self.asset.name, self.filename, commit[:12])
        return Fetched(sha256=sha256, size=size, details={})

    def download(self, commit: str, expected: HubHash) -> Fetched:
        """The resolve URL pinned to ``commit``, through ``HttpSource.fetch``; then the Hub's hash is checked."""
        from huggingface_hub import hf_hub_url

        source = self.source
        pinned = hf_hub_url(source.repo_id, self.filename, repo_type=source.repo_type, revision=commit,
                            endpoint=self.endpoint)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        fetched = self.http.fetch(pinned, self.part, asset=self.asset.name, headers=headers, progress=self.progress,
                                  deadline=self.deadline)
        actual = expected.actual(fetched.sha256, self.part)
        if actual != expected.value:
            _discard(self.part)
            raise _mismatch(self.asset, repr(self.filename), expected, actual)
        return fetched


class _Snapshot:
    """One call for a snapshot: the file list with hashes, ``snapshot_download``, then copy, hash and check."""

    def __init__(self, asset: AssetConfig, source: HubSourceConfig, part: Path, token: str | None,
                 progress: Progress, deadline: Deadline) -> None:
        self.asset, self.source, self.part, self.token = asset, source, part, token
        self.progress, self.deadline = progress, deadline
        self.endpoint, self.cache_dir = hub_endpoint(), hub_cache_dir()

    def run(self) -> Fetched:
        from huggingface_hub import HfApi, snapshot_download

        source, name = self.source, self.asset.name
        with hub_logs(name), _translated(self.asset, source, self.endpoint, self.token):
            info = HfApi(endpoint=self.endpoint, token=self.token or False).repo_info(
                source.repo_id, repo_type=source.repo_type, revision=source.revision, files_metadata=True,
                timeout=self.deadline.bound(METADATA_TIMEOUT))
        commit, siblings = info.sha, getattr(info, "siblings", None)
        if not commit or siblings is None:
            raise DownloadError(f"Asset {name!r}: {self.endpoint} sent the information of {_where(source)} without "
                                "its commit or file list; check HF_ENDPOINT.", asset=name)
        selected = self.select(siblings)
        expected = {s.rfilename: self.hub_hash(s) for s in selected}
        self.progress.start(sum(s.size or 0 for s in selected), self.cached_bytes(selected, commit))
        with hub_logs(name), _translated(self.asset, source, self.endpoint, self.token):
            folder = Path(snapshot_download(
                source.repo_id, repo_type=source.repo_type, revision=commit, allow_patterns=source.allow_patterns,
                ignore_patterns=source.ignore_patterns, token=self.token or False, endpoint=self.endpoint,
                cache_dir=self.cache_dir, etag_timeout=self.deadline.bound(METADATA_TIMEOUT),
                tqdm_class=_bar_class(self.progress)))
        files = self.copy(folder, expected)
        log.info("%s: snapshot of %s at commit %s: %d files verified", name, source.repo_id, commit[:12], len(files))
        return Fetched(sha256="", size=sum(f.size for f in files), details={"commit": commit}, files=files)

    def select(self, siblings: list[RepoSibling]) -> list[RepoSibling]:
        """The files ``snapshot_download`` will fetch (same filter), refusing unsafe paths and empty selections."""
        # snapshot_download's own filter (exported by huggingface_hub.utils, but not in a way mypy sees)
        from huggingface_hub.utils._paths import filter_repo_objects

        source, name = self.source, self.asset.name
        selected = sorted(filter_repo_objects(siblings, allow_patterns=source.allow_patterns,
                                              ignore_patterns=source.ignore_patterns, key=lambda s: s.rfilename),
                          key=lambda s: s.rfilename)
        for sibling in selected:
            if not _safe_relative(sibling.rfilename):
                raise DownloadError(f"Asset {name!r}: {_where(source)} lists a file at {shorten(sibling.rfilename)!r}, "
                                    "a path that would leave the snapshot's directory; refused.", asset=name)
        if not selected:
            if not siblings:
                raise SourceNotFoundError(f"Asset {name!r}: {source.repo_id}@{source.revision} holds no files.",
                                          asset=name)
            patterns = ", ".join(f"{key}={value!r}" for key, value in (
                ("allow_patterns", source.allow_patterns), ("ignore_patterns", source.ignore_patterns))
                if value is not None)
            raise SourceNotFoundError(
                f"Asset {name!r}: {patterns} select none of the {len(siblings)} files of {source.repo_id}@"
                f"{source.revision} (for example {', '.join(repr(s.rfilename) for s in siblings[:3])}); "
                "fix the patterns.", asset=name)
        return selected

    def hub_hash(self, sibling: RepoSibling) -> HubHash:
        expected = HubHash.of_sibling(sibling)
        if expected is None:
            raise DownloadError(
                f"Asset {self.asset.name!r}: the Hub gave no usable hash for {shorten(sibling.rfilename)!r} of "
                f"{_where(self.source)}, so it cannot be verified; check HF_ENDPOINT.", asset=self.asset.name)
        return expected

    def cached_bytes(self, selected: list[RepoSibling], commit: str) -> int:
        """How much of the selection the Hugging Face cache already holds (where progress starts)."""
        from huggingface_hub import try_to_load_from_cache

        total = 0
        for sibling in selected:
            cached = try_to_load_from_cache(self.source.repo_id, sibling.rfilename, cache_dir=self.cache_dir,
                                            revision=commit, repo_type=self.source.repo_type)
            if isinstance(cached, str):
                total += sibling.size or 0
        return total

    def copy(self, folder: Path, expected: dict[str, HubHash]) -> list[UnpackedFile]:
        """Link or copy each selected file into a fresh ``.part`` directory, hashing it once, and check it."""
        name = self.asset.name
        _discard(self.part)
        self.part.mkdir(parents=True)
        files: list[UnpackedFile] = []
        try:
            for path, hub_hash in expected.items():
                cached = folder / path
                if not cached.is_file():
                    raise DownloadError(f"Asset {name!r}: snapshot_download did not deliver {shorten(path)!r} of "
                                        f"{_where(self.source)}; try again.", asset=name)
                target = self.part / path
                target.parent.mkdir(parents=True, exist_ok=True)
                sha256, size = place(cached.resolve(), target)
                actual = hub_hash.actual(sha256, target)
                if actual != hub_hash.value:
                    _forget_cached(cached)
                    raise _mismatch(self.asset, repr(path), hub_hash, actual)
                files.append(UnpackedFile(path=path, size=size, sha256=sha256))
        except BaseException:
            _discard(self.part)
            raise
        return files


# --- files --------------------------------------------------------------------------------------------


def place(source: Path, target: Path, on_progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Hardlink ``source`` to ``target`` (else copy it), reading the bytes once to hash them: (sha256, size).

    A link costs no space and no write; it is safe because huggingface_hub never rewrites a blob in place.
    """
    try:
        os.link(source, target)
    except OSError:
        with open(source, "rb", buffering=0) as file:
            return copy_and_hash(file, target, on_progress)
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(DEFAULT_BUFFER_SIZE)
    view = memoryview(buffer)
    with open(target, "rb", buffering=0) as file:
        while n := file.readinto(buffer):
            digest.update(view[:n])
            size += n
            if on_progress is not None:
                on_progress(n)
    return digest.hexdigest(), size


def _discard(part: Path) -> None:
    """Remove a ``.part`` (file or directory) and its sidecar."""
    for path in (part, sidecar_of(part)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _forget_cached(snapshot_file: Path) -> None:
    """Drop a file that failed its check from the Hugging Face cache (its snapshot link and its blob)."""
    blob = snapshot_file.resolve()
    for path in (snapshot_file, blob):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s from the Hugging Face cache: %s", path, exc)


def _safe_relative(path: str) -> bool:
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in path \
        and "\x00" not in path and all(part not in ("", ".") for part in path.split("/"))


# --- progress of a snapshot ---------------------------------------------------------------------------


def _bar_class(progress: Progress) -> type[Any]:
    """A tqdm class for ``snapshot_download`` that never draws and feeds its byte count to ``progress``.

    ``snapshot_download`` makes a "Reconstructing" bar that every file's download advances by the bytes it
    wrote; only that one is forwarded (the "Downloading bytes" twin counts the same bytes, the files bar
    counts files). flowmas's own ``Progress`` draws the bar or logs, so ``progress_report: false`` is obeyed
    and nothing of huggingface_hub's is ever drawn.
    """
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    class _Bar(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            self._forward = str(kwargs.get("desc") or "").startswith("Reconstructing")
            cast(Any, super()).__init__(*args, **kwargs)  # tqdm's __init__ is untyped

        def update(self, n: float | None = 1) -> bool | None:
            if self._forward and n:
                progress.advance(int(n))
            result: bool | None = super().update(n)
            return result

    return _Bar
