"""The TOKEN check on every route the app has (a route added later is covered without touching this file).

Over real HTTP (uvicorn on 127.0.0.1): no Authorization, a wrong token, a wrong scheme → 403 ErrorResponse,
on every route including /docs, /redoc and /openapi.json; the right token → whatever the route answers,
never 403. Without a TOKEN (a platform without REQUIRE_AUTH) nothing is required.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from starlette.routing import Route

from agents_api import BackgroundServer, create_app
from tests.agents_api import TOKEN, asgi_client, assert_error, make_container


def _routes() -> list[tuple[str, str]]:
    """(method, concrete path) for every route and method of the app; path parameters become ``x``."""
    app = create_app(make_container(token=TOKEN)[0], platform=False)
    found = set()
    for route in app.routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                found.add((method, re.sub(r"\{[^}]+\}", "x", route.path)))
    assert {("GET", "/info"), ("POST", "/invoke/x"), ("GET", "/docs"), ("GET", "/openapi.json")} <= found
    return sorted(found)


ROUTES = _routes()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    container, _, _ = make_container(token=TOKEN)
    with BackgroundServer(create_app(container, platform=False)) as server:
        yield server.url


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x",
                                           "Bearer", "", f"Bearer{TOKEN}", f"{TOKEN}"])
def test_every_route_refuses_without_the_token(url: str, method: str, path: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.request(method, f"{url}{path}", headers=headers, content=b"{}")
    if method == "HEAD":
        assert response.status_code == 403
    else:
        assert_error(response, 403, contains="Bearer")


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_accepts_the_token(url: str, method: str, path: str) -> None:
    for authorization in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN}"):
        response = httpx.request(method, f"{url}{path}", headers={"Authorization": authorization}, content=b"{}")
        assert response.status_code != 403, (authorization, response.text[:300])
        assert response.status_code < 500, response.text[:300]


def test_unknown_paths_and_methods_are_refused_first(url: str) -> None:
    assert_error(httpx.get(f"{url}/no/such/thing"), 403)
    assert_error(httpx.delete(f"{url}/info"), 403)
    assert_error(httpx.get(f"{url}/no/such/thing", headers={"Authorization": f"Bearer {TOKEN}"}), 404)


def test_swagger_ui_with_the_header_and_the_bearer_scheme_in_openapi(url: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(f"{url}/docs", headers=headers).status_code == 200
    schema = httpx.get(f"{url}/openapi.json", headers=headers).json()
    assert schema["components"]["securitySchemes"]["containerToken"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"][
            "containerToken"]["description"]}
    assert schema["security"] == [{"containerToken": []}]


async def test_without_a_token_nothing_is_required() -> None:
    container, _, _ = make_container(token="")
    async with asgi_client(create_app(container, platform=False)) as client:
        assert (await client.get("/info")).status_code == 200
        assert (await client.get("/info", headers={"Authorization": "Bearer anything"})).status_code == 200
        assert (await client.post("/invoke/Add", json={"x": 1, "y": 1})).json() == 2


async def test_garbled_authorization_bytes_are_403() -> None:
    container, first, _ = make_container(token=TOKEN)
    app = create_app(container, platform=False)
    async with asgi_client(app) as client:
        for value in (b"Bearer \xff\xfe", TOKEN.encode(), b"Bearer " + TOKEN.encode() + b"\x00",
                      b"Bearer " + TOKEN.upper().encode(), b"\x00" * 10):
            response = await client.post("/invoke/Add", json={"x": 1, "y": 2}, headers=[(b"Authorization", value)])
            assert_error(response, 403)
    assert first.calls == []
