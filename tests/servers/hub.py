"""Local Hugging Face Hub that the real ``huggingface_hub`` client (2.4.0) downloads from.

huggingface_hub 2.x talks through ``httpx2``, which HTTP-mocking libraries do not see, so tests point the real
client at this server instead (``endpoint=server.url`` or ``HF_ENDPOINT``). Built on the stdlib
(``ThreadingHTTPServer``) because the client percent-encodes the revision (``refs%2Fpr%2F1``) and only the raw
request target keeps it apart from path separators.

Reproduced subset of the Hub's *download* protocol (what ``hf_hub_download``, ``get_hf_file_metadata``,
``HfApi.repo_info`` and ``snapshot_download`` send and need):

* ``HEAD``/``GET {endpoint}[/datasets|/spaces|/kernels]/{repo_id}/resolve/{revision}/{path}``, the revision
  being a branch, a tag or a full 40-hex commit sha; every successful answer carries ``X-Repo-Commit``;
* small files: ``200`` with ``ETag`` = quoted git blob sha1 and ``Content-Length``;
* "LFS" files (size >= ``lfs_threshold``): ``302`` with ``X-Linked-Etag`` = quoted sha256, ``X-Linked-Size``
  and a signed, expiring ``Location`` on ``http://localhost:PORT/_cdn/...`` - another origin than
  ``127.0.0.1:PORT``, so the client's "never send the token to the CDN" path runs for real; the CDN answers
  with ``ETag`` = quoted sha256, like a content-addressed bucket;
* single byte ranges (``bytes=N-`` / ``bytes=N-M``) answered ``206`` + ``Content-Range``, which the client
  sends when it resumes a transfer cut mid-body (2.4.0 never resumes ``.incomplete`` files across calls);
  ``If-Range`` that does not match the ``ETag`` turns the answer into a full ``200``;
* repository info, ``GET /api/{models,datasets,spaces}/{repo_id}[/revision/{revision}][?blobs=true]``:
  ``id``, ``sha`` (the resolved commit), ``private``, ``gated`` and ``siblings`` (``rfilename``; with
  ``blobs=true`` also ``size``, ``blobId`` and, for LFS files, ``lfs: {sha256, size, pointerSize}``);
* the tree, ``GET /api/{models,datasets,spaces}/{repo_id}/tree/{revision}[/{path}][?recursive=true]``: files
  (``type: file``, ``path``, ``size``, ``oid`` = blob sha1, ``lfs: {oid, size, pointerSize}``) and folders
  (``type: directory``), in one page (no ``Link`` pagination);
* errors typed by ``X-Error-Code`` + ``X-Error-Message`` as the client's ``hf_raise_for_status`` maps them:
  ``RepoNotFound`` (401 anonymous / 404 with a token), ``GatedRepo`` (401 anonymous / 403 without access),
  ``RevisionNotFound`` (404), ``EntryNotFound`` (404 with ``X-Repo-Commit``, so the client caches the miss);
  as on the Hub, a gated repo's info and tree are public, only its files need access;
* authentication by ``Authorization: Bearer <token>``; any bearer token is a valid user, access to gated and
  private repos is granted per token.

Faults: ``fail_next`` (status answers, optionally only on matching paths), ``truncate_next_body`` (a body cut
mid-way) and ``serve_corrupted`` (bytes that do not match the hash the headers and the API advertise).

Not reproduced: other ``/api/...`` routes (``paths-info``, commits, whoami, search...), pagination, Xet
storage (no ``X-Xet-*`` header or ``xetHash`` is ever sent, so the client stays on plain HTTP), uploads, gzip
content coding, invalid-token 401s.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from tests.servers.base import ThreadedServer, TrackedHandler

__all__ = ["HubRepo", "HubRequest", "HubServer", "git_blob_sha1"]

# URL prefix -> repo type, as huggingface_hub's constants.REPO_TYPES_URL_PREFIXES
_URL_PREFIXES = {"datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_SHA = re.compile(r"[0-9a-f]{40}")
_RANGE = re.compile(r"\s*bytes=(\d+)-(\d*)\s*")
_CDN_TTL = 3600  # seconds a signed CDN link stays valid, like the Hub's one-hour links


def git_blob_sha1(data: bytes) -> str:
    """The git object id of ``data``: what the Hub puts in ``ETag`` for files stored in git itself."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubRequest:
    """One request as the server saw it, with the status it answered."""

    method: str
    raw_path: str  # request target exactly as sent: still percent-encoded, query included
    authorization: str | None
    range: str | None
    status: int
    host: str | None = None  # tells resolve (127.0.0.1) from CDN (localhost) requests


@dataclass(frozen=True)
class _Blob:
    data: bytes
    git_sha1: str
    sha256: str


def _blob(data: bytes) -> _Blob:
    return _Blob(data, git_blob_sha1(data), hashlib.sha256(data).hexdigest())


def _flag(params: dict[str, list[str]], name: str) -> bool:
    """A boolean query parameter as the client sends it (``true``/``false``)."""
    return params.get(name, ["false"])[0].lower() in ("1", "true")


def _lfs_pointer(blob: _Blob) -> bytes:
    """The git-lfs pointer the Hub keeps in git for an LFS file; its blob sha1 is the redirect's ``ETag``."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{blob.sha256}\nsize {len(blob.data)}\n"
    return pointer.encode()


class HubRepo:
    """A repository: immutable commits (full file trees) plus movable branches and tags."""

    def __init__(
        self,
        server: HubServer,
        repo_id: str,
        repo_type: str,
        *,
        gated: bool,
        private: bool,
        tokens: set[str] | None,
    ) -> None:
        self._server = server
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.gated = gated
        self.private = private
        self.tokens = frozenset(tokens or ())
        self._commits: dict[str, dict[str, _Blob]] = {}
        self._branches: dict[str, str] = {}
        self._tags: dict[str, str] = {}

    @property
    def head(self) -> str:
        with self._server._lock:
            return self._branches["main"]

    def commit(self, files: dict[str, bytes], *, ref: str = "main") -> str:
        """Add a commit on branch ``ref`` (created from main if new) whose tree is the parent's with ``files``
        replaced/added; returns its sha and moves the branch, like a push."""
        blobs = {path: _blob(data) for path, data in files.items()}
        with self._server._lock:
            parent = self._branches.get(ref) or self._branches.get("main")
            tree = {**(self._commits[parent] if parent else {}), **blobs}
            listing = "".join(f"{p}\0{b.git_sha1}\n" for p, b in sorted(tree.items()))
            seq = next(self._server._seq)  # two identical pushes must still yield distinct commits
            header = f"{self.repo_type}/{self.repo_id}\n{parent}\n{seq}\n"
            sha = hashlib.sha1((header + listing).encode()).hexdigest()
            self._commits[sha] = tree
            self._branches[ref] = sha
            self._server._cdn.update((b.sha256, b) for b in blobs.values())
        return sha

    def tag(self, name: str, commit: str | None = None) -> None:
        """Point tag ``name`` at ``commit`` (default: main's head)."""
        with self._server._lock:
            sha = commit or self._branches["main"]
            if sha not in self._commits:
                raise ValueError(f"unknown commit {sha!r} in {self.repo_id}")
            self._tags[name] = sha

    def _resolve(self, revision: str) -> str | None:
        """Branch, then tag, then full sha - the Hub's precedence; caller holds the lock."""
        sha = self._branches.get(revision) or self._tags.get(revision)
        if sha is None and _SHA.fullmatch(revision) and revision in self._commits:
            sha = revision
        return sha


class _HubError(Exception):
    """An error answer of the Hub: status, ``X-Error-Code`` and extra headers."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class _Handler(TrackedHandler["HubServer"]):
    server_version = "flowmas-test-hub"

    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _handle(self, *, head: bool) -> None:
        owner = self.server.owner
        path, _, query = self.path.partition("?")
        try:
            if (status := owner._take_failure(self.command, path)) is not None:
                raise _HubError(status, None, "injected failure")
            if path.startswith("/_cdn/"):
                blob = owner._cdn_blob(path.removeprefix("/_cdn/"), query)
                self._send_blob(blob, {"ETag": f'"{blob.sha256}"'}, head=head)
            elif path.startswith("/api/"):
                self._api(path.removeprefix("/api/"), parse_qs(query), head=head)
            else:
                self._resolve(path, head=head)
        except _HubError as e:
            headers = {**e.headers, "X-Error-Message": e.message, "Content-Type": "application/json"}
            if e.code is not None:
                headers["X-Error-Code"] = e.code
            self._reply(e.status, json.dumps({"error": e.message}).encode(), headers, head=head)

    def _resolve(self, path: str, *, head: bool) -> None:
        parts = path.lstrip("/").split("/")
        repo_type = _URL_PREFIXES.get(parts[0], "model")
        if repo_type != "model":
            parts = parts[1:]
        # repo ids have one ("gpt2") or two ("acme/tiny") segments
        at = next((i for i in (1, 2) if i < len(parts) and parts[i] == "resolve"), None)
        if at is None or len(parts) < at + 3:
            raise _HubError(404, None, "Not Found")
        repo_id, revision = "/".join(parts[:at]), unquote(parts[at + 1])
        filename = unquote("/".join(parts[at + 2 :]))

        commit, blob = self.server.owner._lookup(repo_type, repo_id, revision, filename, self._token())
        headers = {"X-Repo-Commit": commit}
        if not self.server.owner._is_lfs(blob):
            self._send_blob(blob, {**headers, "ETag": f'"{blob.git_sha1}"'}, head=head)
            return
        host = self.headers.get("Host", "")
        cdn_host = "127.0.0.1" if host.startswith("localhost") else "localhost"  # always another origin
        cdn_url = f"http://{cdn_host}:{self.server.server_port}{self.server.owner._signed_cdn_path(blob)}"
        headers |= {
            "ETag": f'"{git_blob_sha1(_lfs_pointer(blob))}"',
            "X-Linked-Etag": f'"{blob.sha256}"',
            "X-Linked-Size": str(len(blob.data)),
            "Location": cdn_url,
        }
        self._reply(302, b"", headers, head=head)

    def _api(self, path: str, params: dict[str, list[str]], *, head: bool) -> None:
        """Repository info and tree listings: ``{type}s/{repo_id}[/revision/{rev}]``, ``.../tree/{rev}[/{path}]``."""
        kind, _, rest = path.partition("/")
        repo_type = {"models": "model", "datasets": "dataset", "spaces": "space"}.get(kind)
        parts = rest.split("/") if rest else []
        if repo_type is None or not parts:
            raise _HubError(404, None, "Not Found")
        # repo ids have one ("gpt2") or two ("acme/tiny") segments; the two-segment reading wins
        at = next((i for i in (2, 1) if i < len(parts) and parts[i] in ("revision", "tree")), None)
        if at is None:
            if len(parts) > 2:
                raise _HubError(404, None, "Not Found")
            route, repo_id, revision, sub = "revision", "/".join(parts), "main", ""
        else:
            if len(parts) < at + 2 or (parts[at] == "revision" and len(parts) != at + 2):
                raise _HubError(404, None, "Not Found")
            route, repo_id = parts[at], "/".join(parts[:at])
            revision, sub = unquote(parts[at + 1]), unquote("/".join(parts[at + 2 :]))
        owner = self.server.owner
        repo, commit, tree = owner._listing(repo_type, repo_id, revision, self._token())
        if route == "revision":
            body: object = owner._repo_info(repo, commit, tree, blobs=_flag(params, "blobs"))
        else:
            body = owner._tree(tree, sub, recursive=_flag(params, "recursive"), commit=commit)
        self._reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head=head)

    def _token(self) -> str | None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme != "Bearer":
            return None
        return token.strip() or None

    def _send_blob(self, blob: _Blob, headers: dict[str, str], *, head: bool) -> None:
        data, total = self.server.owner._served(blob), len(blob.data)
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}
        m = _RANGE.fullmatch(self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        # RFC 9110: Range is only defined for GET, and invalid ones (like bytes=9-5) are ignored; an If-Range
        # that does not name the current representation asks for all of it
        stale = if_range is not None and if_range != headers.get("ETag")
        if m is None or head or stale or (m[2] and int(m[2]) < int(m[1])):
            self._reply(200, data, headers, head=head)
            return
        start, end = int(m[1]), min(int(m[2] or total - 1), total - 1)
        if start >= total:
            self._reply(416, b"", {**headers, "Content-Range": f"bytes */{total}"}, head=head)
            return
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        self._reply(206, data[start : end + 1], headers, head=head)

    def _reply(self, status: int, body: bytes, headers: dict[str, str], *, head: bool) -> None:
        """Record first (a client that saw the answer always finds its record), then send.

        ``Content-Length`` is always set, HEAD included, so keep-alive framing never depends on closing."""
        owner = self.server.owner
        owner._record(
            HubRequest(
                self.command,
                self.path,
                self.headers.get("Authorization"),
                self.headers.get("Range"),
                status,
                self.headers.get("Host"),
            )
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head or not body:
            return
        cut = owner._take_truncation() if status in (200, 206) else None
        try:
            self.wfile.write(body if cut is None else body[:cut])
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return
        if cut is not None:  # the client sees a body shorter than Content-Length
            self._abort()


class HubServer(ThreadedServer[HubRequest]):
    """A Hub on 127.0.0.1 (ephemeral port) serving in-memory repos, with a request log and fault injection."""

    handler = _Handler
    quiet_disconnects = True  # httpx2 resets pooled connections routinely

    def __init__(self, *, lfs_threshold: int = 10 * 2**20) -> None:
        super().__init__()
        self.lfs_threshold = lfs_threshold
        self._seq = itertools.count()
        self._secret = secrets.token_bytes(16)
        self._repos: dict[tuple[str, str], HubRepo] = {}
        self._cdn: dict[str, _Blob] = {}  # content-addressed like the real LFS bucket: sha256 -> blob
        self._failures: list[tuple[int, str | None, str | None]] = []  # (status, method, path fragment)
        self._truncations: list[int] = []
        self._corrupted: set[str] = set()  # sha256 of blobs served with a flipped first byte

    # -- content and faults

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        repo_type: str = "model",
        gated: bool = False,
        private: bool = False,
        tokens: set[str] | None = None,
    ) -> HubRepo:
        """Create ``repo_id`` with ``files`` on main; when gated/private, only ``tokens`` can read it."""
        if repo_type not in ("model", *_URL_PREFIXES.values()):
            raise ValueError(f"unknown repo_type {repo_type!r}")
        repo = HubRepo(self, repo_id, repo_type, gated=gated, private=private, tokens=tokens)
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"{repo_type} {repo_id} already exists")
            self._repos[repo_type, repo_id] = repo
        repo.commit(files)
        return repo

    def _reset_locked(self) -> None:
        """``reset()`` drops repos, CDN blobs, pending faults and the request log, keeping the port."""
        self._repos.clear()
        self._cdn.clear()
        self._failures.clear()
        self._truncations.clear()
        self._corrupted.clear()

    def fail_next(self, n: int, status: int = 503, *, method: str | None = None, path: str | None = None) -> None:
        """Answer the next ``n`` requests with ``status``, e.g. to test retries; with ``method`` and/or ``path``
        (a fragment of the request path, like ``"/tree/"``) only requests that match count.

        Do not aim this at ``hf_hub_download``: it retries 5xx/429 for ~23 s before giving up."""
        with self._lock:
            self._failures.extend([(status, method, path)] * n)

    def truncate_next_body(self, n_bytes: int) -> None:
        """Cut the next successful GET body after ``n_bytes`` and drop the connection, so the client resumes
        with ``Range``. huggingface_hub waits 1 s first and only counts whole 10 MiB
        (``DOWNLOAD_CHUNK_SIZE``) chunks as received: a cut before the first chunk restarts from byte 0."""
        with self._lock:
            self._truncations.append(n_bytes)

    def serve_corrupted(self, repo_id: str, path: str, *, repo_type: str = "model", revision: str = "main") -> None:
        """Serve the bytes of ``path`` (at ``revision``) with their first byte flipped, from the resolve route and
        the CDN alike, while every header and API answer keeps advertising the true hash and size: a Hub, CDN
        or proxy handing out bytes that do not match the Hub's own hash."""
        with self._lock:
            repo = self._repos[repo_type, repo_id]
            commit = repo._resolve(revision)
            if commit is None or path not in repo._commits[commit]:
                raise ValueError(f"{repo_id}@{revision} has no file {path!r}")
            self._corrupted.add(repo._commits[commit][path].sha256)

    # -- handler callbacks

    def _served(self, blob: _Blob) -> bytes:
        with self._lock:
            corrupted = blob.sha256 in self._corrupted
        if not corrupted or not blob.data:
            return blob.data
        return bytes([blob.data[0] ^ 0xFF]) + blob.data[1:]

    def _listing(
        self, repo_type: str, repo_id: str, revision: str, token: str | None
    ) -> tuple[HubRepo, str, dict[str, _Blob]]:
        """A repo's tree at ``revision`` for the API: private repos need access, gated ones are public here."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None or (repo.private and token not in repo.tokens):
                raise _HubError(401 if token is None else 404, "RepoNotFound", "Repository not found")
            commit = repo._resolve(revision)
            if commit is None:
                raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return repo, commit, dict(repo._commits[commit])

    def _repo_info(self, repo: HubRepo, commit: str, tree: dict[str, _Blob], *, blobs: bool) -> dict[str, object]:
        siblings: list[dict[str, object]] = []
        for path, blob in sorted(tree.items()):
            sibling: dict[str, object] = {"rfilename": path}
            if blobs:
                sibling |= {"size": len(blob.data), "blobId": self._blob_id(blob)}
                if self._is_lfs(blob):
                    sibling["lfs"] = {"sha256": blob.sha256, "size": len(blob.data),
                                      "pointerSize": len(_lfs_pointer(blob))}
            siblings.append(sibling)
        return {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "sha": commit,
                "private": repo.private, "gated": "manual" if repo.gated else False, "disabled": False,
                "siblings": siblings}

    def _tree(self, tree: dict[str, _Blob], sub: str, *, recursive: bool, commit: str) -> list[dict[str, object]]:
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in tree):
            raise _HubError(404, "EntryNotFound", f"{sub} does not exist on \"{commit}\"", {"X-Repo-Commit": commit})
        entries: dict[str, dict[str, object]] = {}
        for path, blob in sorted(tree.items()):
            if not path.startswith(prefix):
                continue
            segments = path[len(prefix) :].split("/")
            depth = len(segments) if recursive else 1
            for i in range(1, min(depth, len(segments) - 1) + 1):  # the folders on the way
                folder = prefix + "/".join(segments[:i])
                oid = hashlib.sha1(f"tree {commit} {folder}".encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(segments) == 1:
                entry: dict[str, object] = {"type": "file", "oid": self._blob_id(blob), "size": len(blob.data),
                                            "path": path}
                if self._is_lfs(blob):
                    entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(_lfs_pointer(blob))}
                entries[path] = entry
        return list(entries.values())

    def _is_lfs(self, blob: _Blob) -> bool:
        return len(blob.data) >= self.lfs_threshold

    def _blob_id(self, blob: _Blob) -> str:
        """The git object id the tree holds: the file's own blob, or its LFS pointer's."""
        return git_blob_sha1(_lfs_pointer(blob)) if self._is_lfs(blob) else blob.git_sha1

    def _lookup(
        self, repo_type: str, repo_id: str, revision: str, filename: str, token: str | None
    ) -> tuple[str, _Blob]:
        """Resolve a file like the Hub, checking access before revision before path."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None or (repo.private and token not in repo.tokens):
                raise _HubError(401 if token is None else 404, "RepoNotFound", "Repository not found")
            if repo.gated and token not in repo.tokens:
                restricted = f"Access to {repo_type} {repo_id} is restricted"
                if token is None:
                    raise _HubError(401, "GatedRepo", f"{restricted}. You must be authenticated.")
                raise _HubError(403, "GatedRepo", f"{restricted} and you are not in the authorized list.")
            commit = repo._resolve(revision)
            if commit is None:
                raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            blob = repo._commits[commit].get(filename)
        if blob is None:
            raise _HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        return commit, blob

    def _sign(self, sha256: str, expires: int) -> str:
        return hmac.new(self._secret, f"{sha256}:{expires}".encode(), hashlib.sha256).hexdigest()

    def _signed_cdn_path(self, blob: _Blob) -> str:
        expires = int(time.time()) + _CDN_TTL
        return f"/_cdn/{blob.sha256}?expires={expires}&sig={self._sign(blob.sha256, expires)}"

    def _cdn_blob(self, sha256: str, query: str) -> _Blob:
        """The CDN trusts only its signature, never an Authorization header, like a presigned bucket URL."""
        params = parse_qs(query)
        expires, sig = params.get("expires", ["0"])[0], params.get("sig", [""])[0]
        if not expires.isdigit() or not hmac.compare_digest(sig, self._sign(sha256, int(expires))):
            raise _HubError(403, None, "AccessDenied: bad signature")
        if int(expires) < time.time():
            raise _HubError(403, None, "AccessDenied: request has expired")
        with self._lock:
            blob = self._cdn.get(sha256)
        if blob is None:
            raise _HubError(404, None, "NoSuchKey")
        return blob

    def _take_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for index, (status, want_method, fragment) in enumerate(self._failures):
                if (want_method is None or want_method == method) and (fragment is None or fragment in path):
                    del self._failures[index]
                    return status
            return None

    def _take_truncation(self) -> int | None:
        with self._lock:
            return self._truncations.pop(0) if self._truncations else None
