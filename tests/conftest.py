"""Session-wide test setup: isolated homes, and real servers on 127.0.0.1 started once per session.

Everything a test touches lives under one temporary directory: Prefect's home (so no test writes to the
developer's ~/.prefect), flowmas's home and the Hugging Face cache. These variables are set before any
test module imports prefect or huggingface_hub, which read some of them at import time.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="flowmas-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "0.3"
os.environ["FLOWMAS_HOME"] = str(_SESSION_DIR / "flowmas")
os.environ["HF_HOME"] = str(_SESSION_DIR / "hf")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "FLOWMAS_ASSETS_DIR", "FLOWMAS_PROJECT",
             "PREFECT_API_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
    os.environ.pop(_var, None)

from tests.servers.http_files import FileServer  # noqa: E402
from tests.servers.hub import HubServer  # noqa: E402
from tests.servers.llm import LLMServer  # noqa: E402
from tests.servers.s3 import S3Server  # noqa: E402

_private_redis: subprocess.Popen[bytes] | None = None


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pytest_sessionstart(session: pytest.Session) -> None:
    """Use the Redis at REDIS_URL; if none answers, start a private redis-server, else stop with a hint."""
    global _private_redis
    url = os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379")
    if _redis_answers(url):
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.exit(
            f"No Redis answers at REDIS_URL={url} and redis-server is not installed. "
            "Install it (apt-get install -y redis-server) or point REDIS_URL at a running Redis.",
            returncode=2,
        )
    port = _free_port()
    _private_redis = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(_SESSION_DIR)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = os.environ["REDIS_URL"] = f"redis://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while not _redis_answers(url):
        if time.monotonic() > deadline or _private_redis.poll() is not None:
            pytest.exit(f"Started a private redis-server on port {port}, but it does not answer.", returncode=2)
        time.sleep(0.02)


class InternetBlockedError(ConnectionRefusedError):
    """A test tried to connect to a non-loopback address; the socket guard refused it."""


_blocked: list[str] = []  # "host:port" of every refused attempt, listed at the end of the session
_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _is_local(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:  # a name: every address it resolves to must be local
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return True  # cannot resolve: the real connect fails on its own
        return all(_is_local(str(info[4][0])) for info in infos)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and address:
        host = str(address[0])
        if not _is_local(host):
            _blocked.append(f"{host}:{address[1] if len(address) > 1 else '?'}")
            raise InternetBlockedError(
                errno.ECONNREFUSED,
                f"socket guard: tests may only connect to loopback addresses, not {host} "
                f"(port {address[1] if len(address) > 1 else '?'}); point the client at a local server",
            )


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check(self, address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)


@pytest.fixture(scope="session", autouse=True)
def _socket_guard() -> Iterator[None]:
    """Keep every test off the internet: connect() to any non-loopback address raises InternetBlockedError
    (an OSError, so clients fail as when offline), naming the host. Child processes are not guarded."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = _real_connect, _real_connect_ex  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _blocked:
        terminalreporter.write_line(
            f"socket guard refused {len(_blocked)} connection(s): {', '.join(sorted(set(_blocked)))}", yellow=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _private_redis is not None:
        _private_redis.terminate()
        _private_redis.wait(timeout=5)
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> str:
    return os.environ["REDIS_URL"]


@pytest.fixture(scope="session")
def _file_server() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture
def http_server(_file_server: FileServer) -> Iterator[FileServer]:
    """The session's HTTP file server, emptied for each test."""
    _file_server.reset()
    yield _file_server
    _file_server.reset()


@pytest.fixture(scope="session")
def _other_origin_server() -> Iterator[FileServer]:
    with FileServer() as server:
        yield server


@pytest.fixture
def other_origin(_other_origin_server: FileServer) -> Iterator[FileServer]:
    """A second file server: another origin (port), for cross-origin redirect tests."""
    _other_origin_server.reset()
    yield _other_origin_server
    _other_origin_server.reset()


@pytest.fixture(scope="session")
def _hub_server() -> Iterator[HubServer]:
    with HubServer(lfs_threshold=64 * 1024) as server:
        yield server


@pytest.fixture
def hub(_hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubServer]:
    """The session's fake Hugging Face Hub, emptied per test; HF_ENDPOINT points at it, HF cache per test."""
    _hub_server.reset()
    monkeypatch.setenv("HF_ENDPOINT", _hub_server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield _hub_server
    _hub_server.reset()


@pytest.fixture(scope="session")
def _s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_server(_s3_server: S3Server) -> Iterator[S3Server]:
    """The session's S3 endpoint (moto's server on 127.0.0.1, real boto3), emptied for each test."""
    _s3_server.reset()
    yield _s3_server
    _s3_server.reset()


@pytest.fixture(scope="session")
def _llm_server() -> Iterator[LLMServer]:
    with LLMServer() as server:
        yield server


@pytest.fixture
def llm_server(_llm_server: LLMServer) -> Iterator[LLMServer]:
    """The session's LLM wire server (Anthropic, OpenAI, Bedrock, Vertex), script and log emptied per test."""
    _llm_server.reset()
    yield _llm_server
    _llm_server.reset()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """One real Prefect API server (SQLite, temporary) for the whole session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mount a tmpfs of a given size (bytes) under tmp_path: a real full disk, for ENOSPC paths.

    Needs the right to mount (root, as on CI); elsewhere the tests that use it are skipped, saying why.
    """
    mounts: list[Path] = []

    def make(size: int) -> Path:
        path = tmp_path / f"small-fs-{len(mounts)}"
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); run as root to cover disk-full")
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def make_manager(tmp_path: Path, cache_dir: Path):
    """Build an AssetManager for a project given as a list of asset dicts (written as a real flowmas.yaml)."""
    import yaml

    from flowmas import AssetManager, FlowmasSettings, load_project

    managers = []

    def make(assets: list[dict], agents: dict | None = None, **settings: object) -> AssetManager:
        project_file = tmp_path / "flowmas.yaml"
        project_file.write_text(yaml.safe_dump({"name": "test", "version": "1", "assets": assets,
                                                "agents": agents or {}}))
        defaults = {"lock_log_interval_seconds": 0.5}
        manager = AssetManager(load_project(project_file), settings=FlowmasSettings(**{**defaults, **settings}),
                               cache_dir=cache_dir)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()
