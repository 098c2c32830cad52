"""The local Hub against the real ``huggingface_hub.hf_hub_download``: model tests are only as trustworthy as
this fixture, so every protocol promise of ``tests/servers/hub.py`` is checked through the real client."""

from __future__ import annotations

import hashlib
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests.servers.hub import HubServer, git_blob_sha1

CONFIG = b'{"hidden_size": 8}\n'
WEIGHTS = bytes(range(256)) * 20  # 5120 bytes, every offset distinguishable


@pytest.fixture(autouse=True)
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate the client from the developer's login and cache.

    huggingface_hub reads these variables once, at import, into ``constants``; patching the environment
    alone would not reach an already imported client, so the derived constants are patched too."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return home


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        yield server


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def download(hub: HubServer, cache: Path, repo_id: str, filename: str, **kwargs: object) -> Path:
    """``hf_hub_download`` against the local hub, anonymous unless a token is passed."""
    kwargs.setdefault("token", False)  # None would read the developer's login
    path = hf_hub_download(repo_id, filename, endpoint=hub.url, cache_dir=cache, **kwargs)  # type: ignore
    return Path(path)


# ------------------------------------------------------------------------------------------ hf_hub_download


def test_public_download_and_cache_layout(hub: HubServer, cache: Path) -> None:
    repo = hub.add_repo("acme/tiny", {"config.json": CONFIG})
    path = download(hub, cache, "acme/tiny", "config.json")
    storage = cache / "models--acme--tiny"
    assert path == storage / "snapshots" / repo.head / "config.json"
    assert path.read_bytes() == CONFIG
    assert (storage / "refs" / "main").read_text() == repo.head
    assert path.resolve() == storage / "blobs" / git_blob_sha1(CONFIG)  # ETag names the blob
    assert [(r.method, r.raw_path, r.authorization, r.status) for r in hub.requests] == [
        ("HEAD", "/acme/tiny/resolve/main/config.json", None, 200),
        ("GET", "/acme/tiny/resolve/main/config.json", None, 200),
    ]


def test_subfolder_and_quoted_filename(hub: HubServer, cache: Path) -> None:
    repo = hub.add_repo("acme/tiny", {"onnx/model.onnx": b"onnx", "docs/read me.txt": b"spaces"})
    path = download(hub, cache, "acme/tiny", "model.onnx", subfolder="onnx")
    assert path == cache / "models--acme--tiny" / "snapshots" / repo.head / "onnx" / "model.onnx"
    assert path.read_bytes() == b"onnx"
    assert download(hub, cache, "acme/tiny", "docs/read me.txt").read_bytes() == b"spaces"
    assert hub.requests[-1].raw_path == "/acme/tiny/resolve/main/docs/read%20me.txt"


def test_dataset_repo(hub: HubServer, cache: Path) -> None:
    repo = hub.add_repo("acme/corpus", {"train.jsonl": b'{"x": 1}\n'}, repo_type="dataset")
    path = download(hub, cache, "acme/corpus", "train.jsonl", repo_type="dataset")
    assert path == cache / "datasets--acme--corpus" / "snapshots" / repo.head / "train.jsonl"
    assert hub.requests[0].raw_path == "/datasets/acme/corpus/resolve/main/train.jsonl"
    with pytest.raises(RepositoryNotFoundError):  # same id, wrong type
        download(hub, cache, "acme/corpus", "train.jsonl")


def test_revisions_by_branch_tag_and_sha(hub: HubServer, cache: Path) -> None:
    repo = hub.add_repo("acme/tiny", {"a.txt": b"one", "b.txt": b"kept"})
    first = repo.head
    repo.tag("v1")
    second = repo.commit({"a.txt": b"two"})
    dev = repo.commit({"a.txt": b"dev"}, ref="dev")
    assert repo.head == second != first
    assert len({first, second, dev}) == 3 and all(len(s) == 40 for s in (first, second, dev))

    def get(revision: str | None, filename: str = "a.txt") -> Path:
        return download(hub, cache, "acme/tiny", filename, revision=revision)

    assert get(None).read_bytes() == b"two"
    assert get(None).parent.name == second
    assert get("main", "b.txt").read_bytes() == b"kept"  # files not in a commit carry over
    assert get("v1").read_bytes() == b"one"
    assert get(first).read_bytes() == b"one"  # the old sha still serves the old bytes
    assert get(second).read_bytes() == b"two"
    assert get("dev").read_bytes() == b"dev"
    refs = cache / "models--acme--tiny" / "refs"
    assert {p.name: p.read_text() for p in refs.iterdir()} == {"main": second, "v1": first, "dev": dev}


def test_percent_encoded_pr_revision(hub: HubServer, cache: Path) -> None:
    repo = hub.add_repo("acme/tiny", {"a.txt": b"main"})
    pr = repo.commit({"a.txt": b"pr"}, ref="refs/pr/1")
    path = download(hub, cache, "acme/tiny", "a.txt", revision="refs/pr/1")
    assert path.read_bytes() == b"pr"
    assert path.parent.name == pr
    assert hub.requests[0].raw_path == "/acme/tiny/resolve/refs%2Fpr%2F1/a.txt"
    assert (cache / "models--acme--tiny" / "refs" / "refs" / "pr" / "1").read_text() == pr


def test_unknown_revision(hub: HubServer, cache: Path) -> None:
    hub.add_repo("acme/tiny", {"a.txt": b"x"})
    for revision in ("nope", "f" * 40):
        with pytest.raises(RevisionNotFoundError):
            download(hub, cache, "acme/tiny", "a.txt", revision=revision)
    assert {r.status for r in hub.requests} == {404}


def test_missing_file_is_cached_as_no_exist(hub: HubServer, cache: Path) -> None:
    repo = hub.add_repo("acme/tiny", {"a.txt": b"x"})
    with pytest.raises(EntryNotFoundError):
        download(hub, cache, "acme/tiny", "missing.txt")
    assert (cache / "models--acme--tiny" / ".no_exist" / repo.head / "missing.txt").is_file()


def test_gated_repo(hub: HubServer, cache: Path) -> None:
    hub.add_repo("acme/gated", {"a.txt": b"secret"}, gated=True, tokens={"hf_right"})
    with pytest.raises(GatedRepoError) as anonymous:
        download(hub, cache, "acme/gated", "a.txt")
    with pytest.raises(GatedRepoError) as wrong:
        download(hub, cache, "acme/gated", "a.txt", token="hf_wrong")
    assert (anonymous.value.response.status_code, wrong.value.response.status_code) == (401, 403)
    assert download(hub, cache, "acme/gated", "a.txt", token="hf_right").read_bytes() == b"secret"
    right = "Bearer hf_right"
    assert [r.authorization for r in hub.requests] == [None, "Bearer hf_wrong", right, right]


def test_private_and_missing_repos(hub: HubServer, cache: Path) -> None:
    hub.add_repo("acme/private", {"a.txt": b"secret"}, private=True, tokens={"hf_right"})
    with pytest.raises(RepositoryNotFoundError) as anonymous:
        download(hub, cache, "acme/private", "a.txt")
    with pytest.raises(RepositoryNotFoundError) as wrong:
        download(hub, cache, "acme/private", "a.txt", token="hf_wrong")
    with pytest.raises(RepositoryNotFoundError):
        download(hub, cache, "acme/nothing", "a.txt", token="hf_right")
    assert (anonymous.value.response.status_code, wrong.value.response.status_code) == (401, 404)
    assert download(hub, cache, "acme/private", "a.txt", token="hf_right").read_bytes() == b"secret"


def test_lfs_file_via_cdn_without_auth(cache: Path) -> None:
    with HubServer(lfs_threshold=1024) as hub:
        repo = hub.add_repo("acme/big", {"model.bin": WEIGHTS, "config.json": CONFIG})
        path = download(hub, cache, "acme/big", "model.bin", token="hf_x")
        sha256 = hashlib.sha256(WEIGHTS).hexdigest()
        assert path.read_bytes() == WEIGHTS
        assert path.parent.name == repo.head
        assert path.resolve().name == sha256  # X-Linked-Etag names the blob
        head, get = hub.requests
        assert (head.method, head.raw_path, head.status) == ("HEAD", "/acme/big/resolve/main/model.bin", 302)
        assert head.authorization == "Bearer hf_x"
        assert (get.method, get.status, get.authorization) == ("GET", 200, None)
        assert get.raw_path.startswith(f"/_cdn/{sha256}?expires=")
        assert get.host == hub.url.replace("127.0.0.1", "localhost").removeprefix("http://")
        # small files of the same repo stay in git
        assert download(hub, cache, "acme/big", "config.json").resolve().name == git_blob_sha1(CONFIG)


def test_client_resumes_cut_transfer_with_range(hub: HubServer, cache: Path) -> None:
    # The client only counts bytes per DOWNLOAD_CHUNK_SIZE (10 MiB) chunk, so a resume needs a bigger file;
    # at the default threshold that file is LFS, so the resume goes to the CDN.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    data = bytes(range(256)) * (chunk // 256 + 8)
    hub.add_repo("acme/big", {"model.bin": data})
    hub.truncate_next_body(chunk + 1000)
    assert download(hub, cache, "acme/big", "model.bin").read_bytes() == data  # ~1 s: the client's pause
    assert [(r.method, r.range, r.status) for r in hub.requests] == [
        ("HEAD", None, 302),
        ("GET", None, 200),
        ("GET", f"bytes={chunk}-", 206),
    ]
    assert hub.requests[1].raw_path == hub.requests[2].raw_path  # the same signed link


# ------------------------------------------------------------------------------ HfApi and snapshot_download


def api(hub: HubServer, token: str | bool = False) -> HfApi:
    return HfApi(endpoint=hub.url, token=token)


def test_repo_info_with_file_metadata(cache: Path) -> None:
    with HubServer(lfs_threshold=1024) as hub:
        repo = hub.add_repo("acme/big", {"model.bin": WEIGHTS, "config.json": CONFIG})
        first = repo.head
        repo.commit({"config.json": b"{}"}, ref="dev")
        info = api(hub).repo_info("acme/big", files_metadata=True)
        assert (info.id, info.sha, info.private, info.gated) == ("acme/big", first, False, False)
        assert info.siblings is not None
        config, model = info.siblings
        assert (config.rfilename, config.size, config.blob_id, config.lfs) == (
            "config.json", len(CONFIG), git_blob_sha1(CONFIG), None)
        assert model.rfilename == "model.bin" and model.size == len(WEIGHTS)
        assert model.lfs is not None and model.lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
        assert model.lfs.size == len(WEIGHTS) and model.blob_id != git_blob_sha1(WEIGHTS)  # the pointer's id
        dev = api(hub).repo_info("acme/big", revision="dev")
        assert dev.sha == repo._resolve("dev") != first
        assert dev.siblings is not None and dev.siblings[0].size is None  # no blobs=true: names only
        assert [r.raw_path for r in hub.requests] == [
            "/api/models/acme/big?blobs=true", "/api/models/acme/big/revision/dev"]


def test_repo_info_access_and_errors(hub: HubServer) -> None:
    hub.add_repo("acme/gated", {"a.txt": b"x"}, gated=True, tokens={"hf_right"})
    hub.add_repo("acme/private", {"a.txt": b"x"}, private=True, tokens={"hf_right"})
    hub.add_repo("acme/corpus", {"a.txt": b"x"}, repo_type="dataset")
    assert api(hub).repo_info("acme/gated").gated == "manual"  # the Hub shows gated repos' files to anyone
    with pytest.raises(RepositoryNotFoundError):
        api(hub).repo_info("acme/private")
    with pytest.raises(RepositoryNotFoundError):
        api(hub, "hf_wrong").repo_info("acme/private")
    assert api(hub, "hf_right").repo_info("acme/private").private is True
    with pytest.raises(RevisionNotFoundError):
        api(hub).repo_info("acme/gated", revision="nope")
    assert api(hub).repo_info("acme/corpus", repo_type="dataset").sha
    with pytest.raises(RepositoryNotFoundError):
        api(hub).repo_info("acme/corpus")  # same id, wrong type
    assert [r.status for r in hub.requests] == [200, 401, 404, 200, 404, 200, 401]


def test_repo_tree(hub: HubServer) -> None:
    repo = hub.add_repo("acme/tiny", {"a.txt": b"a", "onnx/model.onnx": b"m", "onnx/fp16/model.onnx": b"h"})
    everything = list(api(hub).list_repo_tree("acme/tiny", recursive=True, revision=repo.head))
    assert [(type(e).__name__, e.path) for e in everything] == [
        ("RepoFile", "a.txt"), ("RepoFolder", "onnx"), ("RepoFolder", "onnx/fp16"),
        ("RepoFile", "onnx/fp16/model.onnx"), ("RepoFile", "onnx/model.onnx")]
    top = list(api(hub).list_repo_tree("acme/tiny"))
    assert [(type(e), e.path) for e in top] == [(RepoFile, "a.txt"), (RepoFolder, "onnx")]
    inside = list(api(hub).list_repo_tree("acme/tiny", path_in_repo="onnx"))
    assert [e.path for e in inside] == ["onnx/fp16", "onnx/model.onnx"]
    file = next(e for e in everything if isinstance(e, RepoFile) and e.path == "a.txt")
    assert (file.size, file.blob_id, file.lfs) == (1, git_blob_sha1(b"a"), None)
    with pytest.raises(EntryNotFoundError):
        list(api(hub).list_repo_tree("acme/tiny", path_in_repo="nope"))


def test_snapshot_download_with_patterns(hub: HubServer, cache: Path) -> None:
    repo = hub.add_repo("acme/tiny", {"config.json": CONFIG, "onnx/model.onnx": WEIGHTS, "README.md": b"# t"})
    folder = Path(snapshot_download("acme/tiny", allow_patterns=["*.json", "onnx/*"], cache_dir=cache,
                                    endpoint=hub.url, token=False))
    assert folder == cache / "models--acme--tiny" / "snapshots" / repo.head
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "config.json", "onnx/model.onnx"]
    assert (folder / "onnx" / "model.onnx").read_bytes() == WEIGHTS
    assert [(r.method, r.raw_path.split("?")[0]) for r in hub.requests[:2]] == [
        ("GET", "/api/models/acme/tiny/revision/main"), ("GET", f"/api/models/acme/tiny/tree/{repo.head}")]


# -------------------------------------------------------------------------------------------------- faults


def test_serve_corrupted(cache: Path) -> None:
    with HubServer(lfs_threshold=1024) as hub, httpx.Client(timeout=5, follow_redirects=True) as client:
        hub.add_repo("acme/big", {"model.bin": WEIGHTS, "config.json": CONFIG})
        hub.serve_corrupted("acme/big", "model.bin")
        hub.serve_corrupted("acme/big", "config.json")
        big = client.get(f"{hub.url}/acme/big/resolve/main/model.bin")
        small = client.get(f"{hub.url}/acme/big/resolve/main/config.json")
        assert big.content != WEIGHTS and big.content[1:] == WEIGHTS[1:]
        assert small.content != CONFIG and len(small.content) == len(CONFIG)
        assert small.headers["etag"] == f'"{git_blob_sha1(CONFIG)}"'  # still the true hash
        assert big.history[0].headers["x-linked-etag"] == f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
        tail = client.get(f"{hub.url}/acme/big/resolve/main/model.bin", headers={"Range": "bytes=1-"})
        assert tail.content == WEIGHTS[1:]  # consistent across ranges
        hub.reset()
        hub.add_repo("acme/big", {"model.bin": WEIGHTS})
        assert client.get(f"{hub.url}/acme/big/resolve/main/model.bin").content == WEIGHTS


def test_cdn_etag_and_if_range(cache: Path) -> None:
    with HubServer(lfs_threshold=1024) as hub, httpx.Client(timeout=5) as client:
        hub.add_repo("acme/big", {"model.bin": WEIGHTS})
        location = client.head(f"{hub.url}/acme/big/resolve/main/model.bin").headers["location"]
        etag = f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
        assert client.get(location).headers["etag"] == etag
        same = client.get(location, headers={"Range": "bytes=100-", "If-Range": etag})
        assert (same.status_code, same.content) == (206, WEIGHTS[100:])
        changed = client.get(location, headers={"Range": "bytes=100-", "If-Range": '"other"'})
        assert (changed.status_code, changed.content) == (200, WEIGHTS)


def test_fail_next_by_method_and_path(hub: HubServer) -> None:
    hub.add_repo("acme/tiny", {"a.txt": b"x"})
    hub.fail_next(1, 500, path="/tree/")
    hub.fail_next(1, 403, method="HEAD")
    url = f"{hub.url}/acme/tiny/resolve/main/a.txt"
    with httpx.Client(timeout=5) as client:
        assert client.get(url).status_code == 200  # neither fault matches
        assert client.head(url).status_code == 403
        assert client.get(f"{hub.url}/api/models/acme/tiny/tree/main").status_code == 500
        assert client.get(f"{hub.url}/api/models/acme/tiny/tree/main").status_code == 200


# -------------------------------------------------------------------- raw protocol (plain httpx, no retries)


def test_wire_headers(cache: Path) -> None:
    with HubServer(lfs_threshold=1024) as hub, httpx.Client(timeout=5) as client:
        repo = hub.add_repo("acme/big", {"model.bin": WEIGHTS, "config.json": CONFIG})
        small = client.head(f"{hub.url}/acme/big/resolve/main/config.json")
        assert small.status_code == 200
        assert small.headers["x-repo-commit"] == repo.head
        assert small.headers["etag"] == f'"{git_blob_sha1(CONFIG)}"'
        assert small.headers["content-length"] == str(len(CONFIG))
        big = client.get(f"{hub.url}/acme/big/resolve/{repo.head}/model.bin")
        assert big.status_code == 302
        assert big.headers["x-linked-etag"] == f'"{hashlib.sha256(WEIGHTS).hexdigest()}"'
        assert big.headers["x-linked-size"] == str(len(WEIGHTS))
        assert big.headers["x-repo-commit"] == repo.head
        assert not [name for r in (small, big) for name in r.headers if name.lower().startswith("x-xet")]
        location = big.headers["location"]
        assert location.startswith(hub.url.replace("127.0.0.1", "localhost") + "/_cdn/")
        assert client.get(location).content == WEIGHTS
        assert client.get(location.replace("sig=", "sig=0")).status_code == 403  # links cannot be forged


def test_range_requests(hub: HubServer) -> None:
    hub.add_repo("acme/tiny", {"model.bin": WEIGHTS})
    url = f"{hub.url}/acme/tiny/resolve/main/model.bin"
    with httpx.Client(timeout=5) as client:
        tail = client.get(url, headers={"Range": "bytes=5000-"})
        assert (tail.status_code, tail.content) == (206, WEIGHTS[5000:])
        assert tail.headers["content-range"] == f"bytes 5000-5119/{len(WEIGHTS)}"
        span = client.get(url, headers={"Range": "bytes=10-19"})
        assert (span.status_code, span.content) == (206, WEIGHTS[10:20])
        past = client.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"})
        assert (past.status_code, past.headers["content-range"]) == (416, f"bytes */{len(WEIGHTS)}")
        backwards = client.get(url, headers={"Range": "bytes=9-5"})
        assert (backwards.status_code, backwards.content) == (200, WEIGHTS)


def test_error_headers(hub: HubServer) -> None:
    repo = hub.add_repo("acme/tiny", {"a.txt": b"x"})
    with httpx.Client(timeout=5) as client:
        missing = client.get(f"{hub.url}/acme/tiny/resolve/main/b.txt")
        assert (missing.status_code, missing.headers["x-error-code"]) == (404, "EntryNotFound")
        assert missing.headers["x-repo-commit"] == repo.head
        assert missing.headers["x-error-message"] == missing.json()["error"]
        revision = client.head(f"{hub.url}/acme/tiny/resolve/nope/a.txt")
        assert (revision.status_code, revision.headers["x-error-code"]) == (404, "RevisionNotFound")
        assert "x-repo-commit" not in revision.headers
        for route in ("/api/whoami-v2", "/api/models/acme/tiny/paths-info/main", "/api/models/a/b/c"):
            assert client.get(f"{hub.url}{route}").status_code == 404, route  # not reproduced


def test_fail_next(hub: HubServer) -> None:
    hub.add_repo("acme/tiny", {"a.txt": b"x"})
    hub.fail_next(2)
    hub.fail_next(1, status=429)
    url = f"{hub.url}/acme/tiny/resolve/main/a.txt"
    with httpx.Client(timeout=5) as client:
        assert [client.get(url).status_code for _ in range(4)] == [503, 503, 429, 200]
    assert [r.status for r in hub.requests] == [503, 503, 429, 200]


def test_reset(hub: HubServer) -> None:
    hub.add_repo("acme/tiny", {"a.txt": b"x"})
    hub.fail_next(1)
    with httpx.Client(timeout=5) as client:
        client.get(f"{hub.url}/acme/tiny/resolve/main/a.txt")
        hub.fail_next(1)
        hub.reset()
        assert hub.requests == []
        assert client.get(f"{hub.url}/acme/tiny/resolve/main/a.txt").status_code == 401  # gone, not failed
    hub.add_repo("acme/tiny", {"a.txt": b"y"})  # the id is free again


def test_quiet_and_prompt_stop(capfd: pytest.CaptureFixture[str]) -> None:
    hub = HubServer().start()
    port = int(hub.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as rude:  # resets mid-request
        rude.sendall(b"GET /x HTTP/1.1\r\nHo")
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with httpx.Client(timeout=5) as client:
        assert client.get(f"{hub.url}/nowhere").status_code == 404  # leaves an idle keep-alive connection
        began = time.monotonic()
        hub.stop()
        assert time.monotonic() - began < 1
    assert capfd.readouterr().err == ""  # no access log
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server binds
        sock.bind(("127.0.0.1", port))
