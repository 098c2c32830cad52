"""The Prefect API that ``flowmas up`` serves against: its own ``prefect server start``, or a configured one.

``PrefectServer`` runs ``prefect server start`` as a child process in its own session (a terminal's Ctrl-C
reaches ``up`` only, which then stops it), SQLite under its home, port 4200 unless a live socket holds it.
``PrefectApi`` is a server someone else runs: it must answer ``/health`` within seconds, else one sentence
says which URL failed and what to do.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from flowmas.errors import ServiceStartError

DEFAULT_PORT = 4200
API_CHECK_TIMEOUT = 3.0
"""Seconds per phase (connect, read) of the one /health request made to a configured PREFECT_API_URL."""


# --- the Prefect server -----------------------------------------------------------------------------


@dataclass
class PrefectServer:
    """``prefect server start`` as a child process in its own session, logging to ``<home>/server.log``."""

    home: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    timeout: float = 120.0
    name: str = "prefect-server"
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = str(self.home)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", self.host,
             "--port", str(self.port)],
            env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.timeout
        while not self._healthy():
            if (code := self._process.poll()) is not None:
                self.stop()
                raise ServiceStartError(f"The Prefect server exited with code {code} while starting; "
                                        f"see {self.log_path}.")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceStartError(f"The Prefect server did not answer {self.api_url}/health within "
                                        f"{self.timeout:.0f} s; see {self.log_path}.")
            time.sleep(0.25)

    def stop(self, grace: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGINT)  # the server's own Ctrl-C path: shuts services down
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session made the server the leader of its own group


def pick_port(host: str, port: int | None, preferred: int = DEFAULT_PORT) -> int:
    """``port`` as given (if free); None: ``preferred`` when free, else any free port; 0: any free port.

    "Free" is what uvicorn will find: it binds with SO_REUSEADDR, so a port held only by TIME_WAIT sockets
    of the previous ``up`` (for a minute after it stopped) is free, and a restart keeps its address.
    """
    if port:
        if not _bindable(host, port):
            raise ServiceStartError(f"Port {port} on {host} is in use: stop what listens there, or choose "
                                    "another --port (0: any free port).")
        return port
    candidates = [preferred, 0] if port is None else [0]
    for candidate in candidates:
        if (found := _bindable(host, candidate)) is not None:
            return found
    raise ServiceStartError(f"No free port on {host}.")


def _bindable(host: str, port: int) -> int | None:
    """The port bound (the kernel's choice for 0) when a listening socket could take it, else None."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ServiceStartError(f"Cannot use --host {host}: {exc.strerror or exc}.") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen()  # with SO_REUSEADDR only listen() notices another socket merely bound there
        except OSError:
            return None
        return int(sock.getsockname()[1])


# --- an external Prefect API ------------------------------------------------------------------------


@dataclass
class PrefectApi:
    """The Prefect API at PREFECT_API_URL, started by someone else: it must answer before anything registers.

    Without this check an unreachable URL surfaced as a 100-line traceback from deep inside block
    registration; here it is one request, bounded by ``timeout`` per phase, and one sentence.
    """

    url: str
    timeout: float = API_CHECK_TIMEOUT
    name: str = "prefect-api"

    def start(self) -> None:
        check_prefect_api(self.url, self.timeout)

    def stop(self) -> None:
        pass  # not ours to stop


def check_prefect_api(api_url: str, timeout: float = API_CHECK_TIMEOUT) -> None:
    """Raise ServiceStartError unless ``<api_url>/health`` answers 2xx: which URL, what happened, what to do.

    Sends what Prefect's own client sends (API key or auth string, custom headers, TLS settings), once, so
    a Prefect Cloud workspace or a server behind basic auth passes and a dead address fails in seconds.
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    health = f"{api_url.rstrip('/')}/health"
    headers = dict(settings.client.custom_headers or {})
    if settings.api.auth_string is not None:
        token = base64.b64encode(settings.api.auth_string.get_secret_value().encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif settings.api.key is not None:
        headers["Authorization"] = f"Bearer {settings.api.key.get_secret_value()}"
    verify: ssl.SSLContext | bool = not settings.api.tls_insecure_skip_verify
    try:
        if verify and settings.api.ssl_cert_file:
            verify = ssl.create_default_context(cafile=settings.api.ssl_cert_file)
        with httpx.Client(timeout=httpx.Timeout(timeout), headers=headers, verify=verify,
                          follow_redirects=True) as client:
            response = client.get(health)
    except httpx.TimeoutException:
        happened = f"{health} did not answer within {timeout:g} s"
    except (httpx.UnsupportedProtocol, httpx.InvalidURL, ValueError) as exc:
        happened = f"that is not a usable http(s) URL ({str(exc).rstrip('.')})"
    except httpx.TransportError as exc:
        text = str(exc) or type(exc).__name__
        happened = (f"{health} refused the connection" if "refused" in text.lower()
                    else f"{health} cannot be reached ({text})")
    except OSError as exc:  # ssl_cert_file unreadable
        happened = f"PREFECT_API_SSL_CERT_FILE={settings.api.ssl_cert_file} cannot be read ({exc.strerror})"
    else:
        if response.is_success:
            return
        code = response.status_code
        if code in (401, 403):
            happened = (f"{health} answered HTTP {code}: it refused the credentials (PREFECT_API_KEY or "
                        "PREFECT_API_AUTH_STRING)")
        else:
            happened = f"{health} answered HTTP {code}, so it is not a Prefect API"
    where = ("`unset PREFECT_API_URL`" if "PREFECT_API_URL" in os.environ
             else "`prefect config unset PREFECT_API_URL` (it comes from your Prefect profile)")
    raise ServiceStartError(
        f"PREFECT_API_URL is {api_url}, but {happened}. Start that Prefect server "
        f"(`prefect server start`) or fix the URL, or {where} so that `flowmas up` runs its own "
        "embedded server.")
