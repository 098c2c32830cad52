"""Hostile input to the OPACA container API, over real HTTP (uvicorn on 127.0.0.1) and raw sockets.

Bodies that are not JSON or not objects, bad UTF-8, huge bodies with and without Content-Length (and with one
that lies), absurd ``timeout`` values, path segments with NUL, unicode and thousands of characters, wrong
methods, missing and garbled ``Authorization``, quoted, unquoted and garbage ``ContainerLoginToken``.
Every answer must be an ErrorResponse with the right status, none a 5xx, and the container must be exactly
as before (its description, and what its agents recorded).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from agents_api import ApiSettings, BackgroundServer, create_app
from tests.agents_api import TOKEN, Calculator, asgi_client, assert_error, make_container

LIMIT = 64 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Target:
    """The served container, and a fingerprint of everything a request could have changed."""

    def __init__(self) -> None:
        self.container, self.first, self.second = make_container(token=TOKEN)
        self.app = create_app(self.container, settings=ApiSettings(max_body_bytes=LIMIT), platform=False)
        self.server = BackgroundServer(self.app)
        self.url = ""

    def state(self) -> Any:
        agents: list[Calculator] = [self.first, self.second]
        return (orjson.dumps(self.container.info().wire()),
                [(a.calls, a.messages, a.posted, dict(a.sessions), sorted(a.actions)) for a in agents])


@pytest.fixture(scope="module")
def _target() -> Iterator[Target]:
    target = Target()
    with target.server:
        target.url = target.server.url
        yield target


@pytest.fixture
def target(_target: Target) -> Iterator[Target]:
    before = _target.state()
    yield _target
    assert _target.state() == before, "a hostile request changed the container"


@pytest.fixture
def client(target: Target) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=target.url, headers=AUTH, timeout=30) as client:
        yield client


def raw(target: Target, request: bytes, *, read: int = 1 << 20) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the first answer's status, headers and body (Content-Length framed)."""
    parts = urlsplit(target.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # the server may answer and close before it has read everything
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < min(length, read):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, headers, body[:length]


def check_raw_error(answer: tuple[int, dict[str, str], bytes], status: int) -> None:
    code, headers, body = answer
    assert code == status, (code, body[:300])
    assert headers.get("content-type", "").startswith("application/json")
    parsed = orjson.loads(body)
    assert set(parsed) <= {"statusCode", "message", "cause"} and parsed["statusCode"] == status


# ------------------------------------------------------------------------------------------ bodies

BAD_BODIES = [
    b"not json", b"{", b"}", b"\x00\x01\x02", b"\xff\xfe\xfd", b'{"x": "\xed\xa0\x80"}', b'{"x": "\xc3"}',
    b"\xef\xbb\xbf{}", b"[1, 2]", b'"a string"', b"123", b"null", b"true", b"[" * 5000, b'{"x": NaN}',
    b'{"x": Infinity}', b"{'x': 1}", b'{"x": 1,}', b'{"x": 1} {"y": 2}', b"x=1&y=2", b"\x1f\x8b\x08\x00",
]


@pytest.mark.parametrize("path", ["/invoke/Add", "/invoke/Add/calc-1", "/send/calc-1", "/broadcast/news", "/login"])
@pytest.mark.parametrize("body", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bodies_that_are_not_a_json_object(client: httpx.Client, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json; charset=UTF-8"})
    assert_error(response, 400)


@pytest.mark.parametrize("arguments", [
    {"x": 1, "y": 2, "x ": 3}, {"": 1}, {"x": 1, "y": [2]}, {"x": {"y": 2}, "y": 1}, {"x": 2**70, "y": 1},
    {"x": 1e308, "y": 1}, {"x": -0.0, "y": 1}, {"x": "1", "y": "2"}, {"x": None, "y": None},
    {"x": 1, "y": 2, "login_token": "forged"}, {"x": 1, "y": 2, "__class__": 1}, {"\x00": 1},
])
def test_arguments_that_do_not_fit(client: httpx.Client, arguments: dict[str, Any]) -> None:
    assert_error(client.post("/invoke/Add", content=orjson.dumps(arguments, option=orjson.OPT_NON_STR_KEYS)
                             if 2**70 not in arguments.values() else b'{"x": 1180591620717411303424, "y": 1}'),
                 400)


def test_huge_body_with_content_length(client: httpx.Client) -> None:
    body = orjson.dumps({"x": 1, "y": 2, "pad": "a" * (2 * LIMIT)})
    for path in ("/invoke/Add", "/stream/Upload", "/send/calc-1", "/login"):
        assert_error(client.post(path, content=body), 413, contains="FLOWMAS_API_MAX_BODY_BYTES")


def test_huge_body_without_content_length(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 4096

    response = client.post("/invoke/Add", content=chunks())
    assert_error(response, 413)


def test_huge_chunked_body_over_a_raw_socket(target: Target) -> None:
    chunk = b"1000\r\n" + b"x" * 0x1000 + b"\r\n"
    request = (b"POST /stream/Upload HTTP/1.1\r\nHost: c\r\nAuthorization: Bearer " + TOKEN.encode() +
               b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 40 + b"0\r\n\r\n")
    answer = raw(target, request)
    check_raw_error(answer, 413)
    assert answer[1].get("connection") == "close"


def test_content_length_that_claims_too_much_is_refused_before_reading(target: Target) -> None:
    request = (b"POST /invoke/Add HTTP/1.1\r\nHost: c\r\nAuthorization: Bearer " + TOKEN.encode() +
               b"\r\nContent-Length: 999999999999\r\n\r\n{}")
    check_raw_error(raw(target, request), 413)


def test_content_length_that_claims_too_little(target: Target) -> None:
    body = b'{"x": 1, "y": 2, "pad": "' + b"a" * (2 * LIMIT) + b'"}'
    request = (b"POST /invoke/Add HTTP/1.1\r\nHost: c\r\nAuthorization: Bearer " + TOKEN.encode() +
               b"\r\nContent-Length: 10\r\n\r\n" + body)
    status, headers, body = raw(target, request)
    # The first 10 bytes are the body (not JSON: our 400); the rest is a next request that is not HTTP, which
    # uvicorn answers itself (a plain-text 400, outside the app) when it parses it first. Either way a 400.
    assert status == 400, body[:300]
    if headers.get("content-type", "").startswith("application/json"):
        assert orjson.loads(body)["statusCode"] == 400


async def test_content_length_that_lies_in_process(target: Target) -> None:
    """Under another ASGI server that trusted the header: the body is counted as it arrives, not believed."""
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 4096

    async with asgi_client(target.app, token=TOKEN) as client:
        response = await client.post("/invoke/Add", content=chunks(), headers={"Content-Length": "10"})
        assert_error(response, 413)


# ------------------------------------------------------------------------------------------ timeouts

@pytest.mark.parametrize("timeout", ["-5", "1e308", "nan", "NaN", "abc", "inf", "-inf", "0", "-0", "1e-400",
                                     "9" * 500, "%00", "%ff", "1,5", "0x1e", "30s", "1e400", "-1.5"])
def test_absurd_timeouts(client: httpx.Client, timeout: str) -> None:
    response = client.post(f"/invoke/Add/calc-1?timeout={timeout}&forward=false", json={"x": 1, "y": 2})
    assert_error(response, 400, contains="timeout")


@pytest.mark.parametrize("timeout", ["-1", "", " 30 ", "1.5", "86400"])
def test_timeouts_that_are_fine(target: Target, timeout: str) -> None:
    with httpx.Client(base_url=target.url, headers=AUTH) as client:
        response = client.post(f"/invoke/Scale?timeout={timeout}", json={"x": 1})
    assert response.status_code == 200 and response.json() == 2.0
    target.first.calls.clear()  # Scale records its calls; the fingerprint is about hostile requests


def test_ignored_platform_parameters_of_any_value(client: httpx.Client, target: Target) -> None:
    response = client.post("/invoke/Nothing?forward=maybe&containerId=%00%ff&containerId=x&unknown=1")
    assert response.status_code == 200 and response.content == b"null"


# ------------------------------------------------------------------------------------------ paths

SEGMENTS = ["%00", "Add%00", "%ff%fe", "%C3%84ktion", "%F0%9F%98%80", "%E2%80%AEddA", "a" * 8000, "..%2F..%2Finfo",
            "%2F", "%20", "Add%20", "%25", "Add;x=1", "%5C", "%0d%0aX-Injected:%201"]


@pytest.mark.parametrize("segment", SEGMENTS, ids=range(len(SEGMENTS)))
def test_strange_path_segments(client: httpx.Client, segment: str) -> None:
    assert_error(client.post(f"/invoke/{segment}", json={}), 404)
    assert_error(client.post(f"/invoke/Add/{segment}", json={"x": 1, "y": 2}), 404)
    assert_error(client.get(f"/stream/{segment}"), 404)
    assert_error(client.post(f"/stream/{segment}", content=b"x"), 404)
    assert_error(client.post(f"/send/{segment}", json={"payload": 1}), 404)
    response = client.get(f"/agents/{segment}")
    broadcast = client.post(f"/broadcast/{segment}", json={"payload": 1})
    if "%2F" in segment:  # decoded, it is several segments: no route
        assert_error(response, 404)
        assert_error(broadcast, 404)
    else:
        assert response.status_code == 200 and response.content == b"null"
        assert broadcast.status_code == 200  # nobody listens on that channel: fine
    response = client.post(f"/invoke/{segment}", json={})
    assert len(response.content) < 2000  # an absurd name is not echoed whole
    assert "x-injected" not in response.headers


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/invoke/Add"), ("PUT", "/invoke/Add"), ("DELETE", "/invoke/Add/calc-1"), ("PATCH", "/login"),
    ("GET", "/login"), ("GET", "/logout"), ("POST", "/info"), ("DELETE", "/agents"), ("PUT", "/agents/calc-1"),
    ("GET", "/send/calc-1"), ("GET", "/broadcast/news"), ("DELETE", "/stream/Numbers"), ("OPTIONS", "/info"),
    ("TRACE", "/info"), ("PUT", "/openapi.json"),
])
def test_wrong_methods(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path, content=b"{}")
    assert_error(response, 405)
    assert response.headers.get("allow")


def test_head_on_a_post_route_is_405(client: httpx.Client) -> None:
    assert client.head("/invoke/Add").status_code == 405


# ------------------------------------------------------------------------------------------ authorization

@pytest.mark.parametrize("header", [
    None, b"", b"Bearer", b"Bearer ", b"Basic dXNlcjpwYXNz", b"Bearer \xff\xfe\xfd", b"Bearer " + b"A" * 20000,
    b"Bearer " + TOKEN.encode() + b"\xff", b"Bearer\t" + TOKEN.encode() + b"x", b"Token " + TOKEN.encode(),
    TOKEN.encode(), b"Bearer " + TOKEN.encode()[:-1], b"Bearer " + TOKEN.encode() + b", Bearer x",
])
def test_missing_or_garbled_authorization(target: Target, header: bytes | None) -> None:
    lines = b"GET /info HTTP/1.1\r\nHost: c\r\nConnection: close\r\n"
    if header is not None:
        lines += b"Authorization: " + header + b"\r\n"
    check_raw_error(raw(target, lines + b"\r\n"), 403)
    request = (b"POST /invoke/Add HTTP/1.1\r\nHost: c\r\nConnection: close\r\nContent-Length: 16\r\n" +
               (b"Authorization: " + header + b"\r\n" if header is not None else b"") + b'\r\n{"x": 1, "y": 2}')
    check_raw_error(raw(target, request), 403)


def test_duplicate_authorization_headers_do_not_crash(target: Target) -> None:
    for first, second in ((b"Bearer wrong", b"Bearer " + TOKEN.encode()), (b"", b"Bearer " + TOKEN.encode())):
        request = (b"GET /info HTTP/1.1\r\nHost: c\r\nConnection: close\r\nAuthorization: " + first +
                   b"\r\nAuthorization: " + second + b"\r\n\r\n")
        check_raw_error(raw(target, request), 403)


# ------------------------------------------------------------------------------------------ login tokens

@pytest.mark.parametrize("token", ['""', '"', '""""', "'token'", "null", "undefined", "x" * 10000, '" "',
                                   "ä-latin-1", '"unknown-token"', "Bearer abc"])
def test_garbage_container_login_tokens(target: Target, token: str) -> None:
    header = token.encode("latin-1")
    with httpx.Client(base_url=target.url, headers=AUTH) as client:
        headers = [(b"ContainerLoginToken", header)]
        assert_error(client.post("/invoke/Whoami/calc-1", json={}, headers=headers), 401)
        assert_error(client.get("/stream/Numbers/nobody", headers=headers), 404)
        assert client.post("/logout", headers=headers).json() is False
        response = client.post("/invoke/Nothing", headers=headers)  # not an auth action
        assert response.status_code == 200 and response.content == b"null"


def test_quoted_and_unquoted_tokens_and_a_forged_argument(target: Target) -> None:
    with httpx.Client(base_url=target.url, headers=AUTH) as client:
        token = client.post("/login", json={"username": "eve", "password": "pw-eve"}).text
        try:
            for header in (token, f'"{token}"', f'" {token} "'):
                response = client.post("/invoke/Whoami", headers={"ContainerLoginToken": header})
                assert response.status_code == 200 and response.json() == "eve", header
            # the token is a header, never an argument: one in the body does not log anybody in
            assert_error(client.post("/invoke/Whoami", json={"login_token": token}), 401)
            assert_error(client.post("/invoke/Whoami", headers={"ContainerLoginToken": token + "x"}), 401)
        finally:
            assert client.post("/logout", headers={"ContainerLoginToken": f'"{token}"'}).json() is True


def test_login_with_absurd_credentials(client: httpx.Client) -> None:
    for body in ({"username": "a" * 100000, "password": "b"}, {"username": "\x00", "password": "\x00"},
                 {"username": "eve", "password": "pw-eve", "extra": {"deep": [1] * 1000}}):
        response = client.post("/login", json=body)
        assert response.status_code in (200, 400, 401, 413), response.text[:200]
        if response.status_code == 200:  # the extra field is ignored, as the platform's Login ignores it
            assert client.post("/logout", headers={"ContainerLoginToken": response.text}).json() is True
        else:
            assert_error(response, response.status_code)
