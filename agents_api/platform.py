"""The container's calls to its platform: ``/containers/notify`` when its agents change, and token renewal.

The platform reads ``/info`` once, when the container starts, and never again on its own: when agents or
actions are added or removed later, the container must call ``POST {PLATFORM_URL}/containers/notify`` (body: its
containerId as a JSON string, ``Authorization: Bearer <token>``), and the platform then reads ``/info`` back. It
answers ``true``, or ``false`` when it could not read ``/info`` (and has then removed the container).

Decisions:

* **Notify is debounced and in the background.** The core's ``on_change`` fires for every agent and action
  added or removed (a capability registering twenty actions fires twenty times); the first change starts a
  window of ``debounce`` seconds that absorbs the rest, then one notify goes out; changes that arrive while it
  is on its way cause exactly one more. So a notify leaves at most ``debounce`` seconds (plus one request)
  after any change, and a burst costs one or two requests. ``on_change`` may fire from any thread.
  Failures are logged, never raised: a transport error or a 5xx is retried ``retries`` times with backoff;
  a ``false``, a 4xx or the last failure is a warning that says what it means.
* **Changes before the server runs are not notified.** The platform reads ``/info`` itself at startup (the
  reference container does the same: it notifies only once its server is started).
* **Token renewal replaces the outbound bearer only.** The container's JWT (``TOKEN``) expires (24 h); every
  ``renewal_interval`` seconds (default 9 h, as the reference container) ``GET {PLATFORM_URL}/token`` with the
  current bearer answers a fresh one, as raw text. It replaces the bearer of the container's own calls to the
  platform (``token``, ``headers()``: notify, and agents that call the platform). It does **not** change what
  the container accepts inbound: the platform keeps sending the TOKEN it started the container with (it stores
  that one per container and never learns about renewals), so ``auth.TokenCheck`` keeps comparing with it, as
  the reference container does. A failed renewal keeps the previous token and is retried at the next interval.
  Without a TOKEN (a platform without ``REQUIRE_AUTH``) there is nothing to renew, and notify goes without
  ``Authorization``. Without a ``PLATFORM_URL`` (a standalone container) nothing is sent at all.
* Tokens are never logged; the platform URL is logged without userinfo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

if TYPE_CHECKING:
    from flowmas.opaca.container import Container

__all__ = ["PlatformClient"]

logger = logging.getLogger("agents_api.platform")

_MAX_TOKEN_CHARS = 16 * 1024


class PlatformClient:
    """Notify the platform of changes and renew the container's token, in background tasks of the server's loop.

    ``start()`` and ``stop()`` run in the server's lifespan (``app.create_app`` does it). ``token`` and
    ``headers()`` give the current outbound bearer to anything in the container that calls the platform.
    """

    def __init__(
        self,
        container: Container,
        *,
        platform_url: str | None = None,
        token: str | None = None,
        container_id: str | None = None,
        renewal_interval: float = 9 * 3600.0,
        debounce: float = 0.5,
        timeout: float = 30.0,
        retries: int = 2,
        retry_delay: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._container = container
        url = platform_url if platform_url is not None else (getattr(container, "platform_url", None) or "")
        self.platform_url = url.rstrip("/")
        self._token = token if token is not None else (getattr(container, "token", None) or "")
        self.container_id = container_id if container_id is not None else str(container.container_id)
        self.renewal_interval = renewal_interval
        self.debounce = debounce
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = False
        self.notifications = 0
        """Notifications the platform accepted (answered ``true``): for tests and metrics."""
        self.renewals = 0
        """Successful token renewals."""

    @property
    def token(self) -> str:
        """The bearer for the container's own calls to the platform: TOKEN, or the latest renewal of it."""
        return self._token

    def headers(self) -> dict[str, str]:
        """``Authorization`` for a call to the platform (empty without a token)."""
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def start(self) -> None:
        """Listen to the core's changes and start the notify and renewal tasks (nothing without a PLATFORM_URL)."""
        if self._tasks or not self.platform_url:
            if not self.platform_url:
                logger.debug("No PLATFORM_URL: the container runs standalone; it notifies no platform.")
            return
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), transport=self._transport)
        if not self._listening:
            self._container.on_change(self.changed)
            self._listening = True
        self._tasks.append(asyncio.create_task(self._notify_loop(), name="flowmas-platform-notify"))
        if self._token:
            self._tasks.append(asyncio.create_task(self._renewal_loop(), name="flowmas-token-renewal"))

    async def stop(self) -> None:
        """Cancel the background tasks and close the HTTP client (a pending notify is dropped)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._loop = None

    def changed(self) -> None:
        """The core's ``on_change`` listener: schedule a notify (thread-safe; a no-op while not running)."""
        loop, event = self._loop, self._changed
        if loop is None or event is None or not self._tasks:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to notify any more
            loop.call_soon_threadsafe(event.set)

    async def notify(self) -> bool:
        """``POST /containers/notify`` now, with retries; True if the platform re-read ``/info``. Never raises."""
        if not self.platform_url or self._client is None:
            return False
        where = f"{_display(self.platform_url)}/containers/notify"
        body = orjson.dumps(self.container_id)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self._client.post(
                    f"{self.platform_url}/containers/notify", content=body,
                    headers={**self.headers(), "Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if last:
                    logger.warning("Could not notify the platform at %s of changed agents (%s); it keeps "
                                   "showing the previous ones until the next change.", where, problem)
                    return False
                await asyncio.sleep(self._backoff(attempt))
                continue
            if response.status_code >= 500 and not last:
                await asyncio.sleep(self._backoff(attempt))
                continue
            return self._notified(response, where)
        return False  # pragma: no cover - the loop always returns

    def _notified(self, response: httpx.Response, where: str) -> bool:
        if response.is_success:
            if response.content.strip() == b"false":
                logger.warning("The platform at %s answered false to the notify: it could not read /info back "
                               "and may have removed this container.", where)
                return False
            self.notifications += 1
            logger.debug("Notified the platform at %s of changed agents.", where)
            return True
        if response.status_code == 404:
            logger.warning("The platform at %s does not know container %s (404): it may not have finished "
                           "starting it; it reads /info itself when it does.", where, self.container_id)
        elif response.status_code in (401, 403):
            logger.warning("The platform at %s refused the container's token (%s) on notify; check TOKEN.",
                           where, response.status_code)
        else:
            logger.warning("The platform at %s answered %s to the notify of changed agents.", where,
                           response.status_code)
        return False

    async def renew_token(self) -> bool:
        """``GET /token`` and use the answer as the outbound bearer from now on. Never raises; False on failure."""
        if not self.platform_url or self._client is None or not self._token:
            return False
        where = f"{_display(self.platform_url)}/token"
        try:
            response = await self._client.get(f"{self.platform_url}/token", headers=self.headers())
        except httpx.HTTPError as exc:
            logger.warning("Could not renew the container's token at %s (%s); keeping the current one.", where,
                           type(exc).__name__)
            return False
        if not response.is_success:
            logger.warning("The platform at %s answered %s to the token renewal; keeping the current token.",
                           where, response.status_code)
            return False
        token = _parse_token(response.content)
        if token is None:
            logger.warning("The platform at %s answered the token renewal with something that is not a token; "
                           "keeping the current one.", where)
            return False
        self._token = token
        self.renewals += 1
        logger.info("Renewed the container's token at %s.", where)
        return True

    async def _notify_loop(self) -> None:
        assert self._changed is not None
        while True:
            await self._changed.wait()
            await asyncio.sleep(self.debounce)
            self._changed.clear()
            await self.notify()

    async def _renewal_loop(self) -> None:
        while True:
            await asyncio.sleep(self.renewal_interval)
            await self.renew_token()

    def _backoff(self, attempt: int) -> float:
        return float(self.retry_delay * (2**attempt) * (0.5 + random.random() / 2))


def _parse_token(content: bytes) -> str | None:
    """The token of a ``/token`` answer: raw text (quoted JSON accepted), printable ASCII without spaces."""
    try:
        text = content.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not text or len(text) > _MAX_TOKEN_CHARS or not all(33 <= ord(ch) < 127 for ch in text):
        return None
    return text


def _display(url: str) -> str:
    """``url`` without ``user:password@``, for logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
