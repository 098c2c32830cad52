"""Every route of the container API and every error it answers, in process (httpx over ASGI, no server).

Each error case asserts the status, that the body is an ErrorResponse (never FastAPI's ``detail``), and,
where a request could have changed something, that the container did not change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import httpx
import orjson
import pytest

from agents_api import ApiSettings, Container, OpacaApp, create_app, create_routes
from tests.agents_api import IMAGE, SECRET, Calculator, asgi_client, assert_error, make_container


class Parts(NamedTuple):
    app: OpacaApp
    container: Container
    first: Calculator
    second: Calculator


@pytest.fixture
def parts() -> Parts:
    container, first, second = make_container()
    return Parts(create_app(container, platform=False), container, first, second)


@pytest.fixture
async def client(parts: Parts) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(parts.app) as client:
        yield client


# ------------------------------------------------------------------------------------------ descriptions


def _has_null(value: object) -> bool:
    if isinstance(value, dict):
        return any(v is None or _has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_null(v) for v in value)
    return False


async def test_info_describes_the_container_without_confidential_arguments(client: httpx.AsyncClient,
                                                                          parts: Parts) -> None:
    response = await client.get("/info")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    info = response.json()
    assert info["containerId"] == "container-1"
    assert info["image"]["imageName"] == IMAGE["imageName"]
    assert info["arguments"].get("GREETING") == "hello"
    assert "API_SECRET" not in info["arguments"]
    assert SECRET not in response.text
    assert info["runningSince"].endswith("Z") and "T" in info["runningSince"]
    assert "connectivity" not in info or info["connectivity"] is None
    assert [a["agentId"] for a in info["agents"]] == ["calc-1", "calc-2"]
    names = {a["name"] for a in info["agents"][0]["actions"]}
    assert {"Add", "Scale", "Fail", "SleepSync", "Whoami"} <= names
    assert not _has_null(info)  # no null fields: the platform's models are NON_NULL


async def test_info_is_rebuilt_when_agents_change_and_only_then(client: httpx.AsyncClient, parts: Parts) -> None:
    first = parts.first
    before = (await client.get("/info")).content
    assert (await client.get("/info")).content is not None
    again = await client.get("/info")
    assert again.content == before
    first.add_action("Extra", "An extra action.", {}, None, lambda: 1)
    after = (await client.get("/info")).json()
    assert "Extra" in {a["name"] for a in after["agents"][0]["actions"]}
    first.remove_action("Extra")
    assert (await client.get("/info")).content == before


async def test_agents_and_one_agent(client: httpx.AsyncClient) -> None:
    agents = (await client.get("/agents")).json()
    assert [a["agentId"] for a in agents] == ["calc-1", "calc-2"]
    one = await client.get("/agents/calc-2")
    assert one.status_code == 200 and one.json()["agentId"] == "calc-2"
    assert one.json()["agentType"] == "Calculator"


async def test_unknown_agent_is_200_null(client: httpx.AsyncClient) -> None:
    response = await client.get("/agents/nobody")
    assert response.status_code == 200
    assert response.content == b"null"


# ------------------------------------------------------------------------------------------ invoke


async def test_invoke_any_agent_and_a_named_one(client: httpx.AsyncClient, parts: Parts) -> None:
    first, second = parts.first, parts.second
    response = await client.post("/invoke/Add", json={"x": 3, "y": 4})
    assert response.status_code == 200 and response.json() == 7
    assert response.headers["content-type"] == "application/json"
    response = await client.post("/invoke/Add/calc-2", json={"x": 1, "y": 1})
    assert response.json() == 2
    assert second.calls == [("Add", (1, 1))]
    assert first.calls == [("Add", (3, 4))]


async def test_invoke_accepts_the_platform_query_parameters(client: httpx.AsyncClient) -> None:
    response = await client.post("/invoke/Add?forward=false&timeout=30&containerId=container-1",
                                 json={"x": 1, "y": 2})
    assert response.status_code == 200 and response.json() == 3
    response = await client.post("/invoke/Add?timeout=-1", json={"x": 1, "y": 2})
    assert response.status_code == 200


async def test_invoke_with_the_platforms_content_type_and_defaults(client: httpx.AsyncClient) -> None:
    response = await client.post("/invoke/Scale", content=b'{"x": 1.5}',
                                 headers={"Content-Type": "application/json; charset=UTF-8"})
    assert response.status_code == 200 and response.json() == 3.0


async def test_void_action_answers_json_null(client: httpx.AsyncClient) -> None:
    response = await client.post("/invoke/Nothing", json={})
    assert response.status_code == 200 and response.content == b"null"


async def test_empty_body_means_no_arguments(client: httpx.AsyncClient) -> None:
    response = await client.post("/invoke/Nothing")
    assert response.status_code == 200 and response.content == b"null"


@pytest.mark.parametrize(("path", "what"), [("/invoke/Nope", "Nope"), ("/invoke/Add/nobody", "nobody"),
                                            ("/invoke/Nope/calc-1", "Nope")])
async def test_unknown_action_or_agent_is_404(client: httpx.AsyncClient, parts: Parts, path: str,
                                             what: str) -> None:
    before = (await client.get("/info")).content
    assert_error(await client.post(path, json={"x": 1, "y": 2}), 404, contains=what)
    assert parts.first.calls == [] and parts.second.calls == []
    assert (await client.get("/info")).content == before


@pytest.mark.parametrize("arguments", [
    {"x": 1},  # missing
    {"x": 1, "y": None},  # null for required
    {"x": 1, "y": "2"},  # wrong JSON type
    {"x": True, "y": 2},  # a boolean is not a number
    {"x": 1.5, "y": 2},  # a float is not an integer
    {"x": 1, "y": 2, "z": 3},  # unknown extra
])
async def test_arguments_that_do_not_match_are_400(client: httpx.AsyncClient, parts: Parts,
                                                    arguments: dict[str, Any]) -> None:
    assert_error(await client.post("/invoke/Add", json=arguments), 400)
    assert parts.first.calls == []


async def test_failing_action_is_500_with_an_error_id_and_no_traceback(client: httpx.AsyncClient,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="agents_api"):
        response = await client.post("/invoke/Fail", json={})
    body = assert_error(response, 500, contains="error id")
    assert 'File "' not in response.text and "calculator.py\", line" not in response.text
    assert "see the container log" in body["message"]
    error_id = body["message"].split("error id ")[1].split(";")[0]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None  # the traceback is in the log, under the id


async def test_http_exception_from_an_action_keeps_its_code(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/invoke/Refuse", json={}), 403, contains="Not for you")


async def test_unencodable_result_is_500(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/invoke/Unencodable", json={}), 500, contains="error id")


async def test_timeout_answers_504_within_about_the_timeout(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await client.post("/invoke/SleepAsync?timeout=0.3", json={"seconds": 5})
    elapsed = time.monotonic() - started
    assert_error(response, 504)
    assert elapsed < 2.0, elapsed


@pytest.mark.parametrize("timeout", ["abc", "nan", "inf", "-5", "0", "1e308", "1e400", "0x10"])
async def test_absurd_timeouts_are_400(client: httpx.AsyncClient, parts: Parts, timeout: str) -> None:
    assert_error(await client.post(f"/invoke/Add?timeout={timeout}", json={"x": 1, "y": 2}), 400,
                 contains="timeout")
    assert parts.first.calls == []


@pytest.mark.parametrize(("body", "kind"), [(b"[1, 2]", "array"), (b'"x"', "string"), (b"3", "number"),
                                            (b"null", "null"), (b"true", "boolean")])
async def test_invoke_body_that_is_not_an_object_is_400(client: httpx.AsyncClient, body: bytes, kind: str) -> None:
    assert_error(await client.post("/invoke/Add", content=body), 400, contains=kind)


@pytest.mark.parametrize("body", [b"{", b"x=1&y=2", b"\xff\xfe", b'{"x": NaN}', b"{'x': 1}"])
async def test_invoke_body_that_is_not_json_is_400(client: httpx.AsyncClient, parts: Parts, body: bytes) -> None:
    assert_error(await client.post("/invoke/Add", content=body), 400, contains="not valid JSON")
    assert parts.first.calls == []


async def test_body_over_the_limit_is_413() -> None:
    container, first, _ = make_container()
    app = create_app(container, settings=ApiSettings(max_body_bytes=1024), platform=False)
    async with asgi_client(app) as client:
        big = orjson.dumps({"x": 1, "y": 2, "pad": "a" * 2000})
        response = await client.post("/invoke/Add", content=big)
        assert_error(response, 413, contains="FLOWMAS_API_MAX_BODY_BYTES")
        assert response.headers.get("connection") == "close"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for _ in range(100):
                yield b" " * 100

        assert_error(await client.post("/invoke/Add", content=chunks()), 413)
        assert_error(await client.post("/stream/Upload", content=b"x" * 2000), 413)
        assert_error(await client.post("/send/calc-1", content=big), 413)
    assert first.calls == [] and first.posted == []


# ------------------------------------------------------------------------------------------ streams


async def test_get_stream_is_streamed_octets(client: httpx.AsyncClient) -> None:
    for path in ("/stream/Numbers", "/stream/Numbers/calc-2"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.content == b"0\n1\n2\n"


async def test_unknown_stream_or_agent_is_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/stream/Nope"), 404)
    assert_error(await client.get("/stream/Numbers/nobody"), 404)
    assert_error(await client.post("/stream/Nope", content=b"x"), 404)
    assert_error(await client.post("/stream/Upload/nobody", content=b"x"), 404)


async def test_stream_that_refuses_before_its_first_chunk_keeps_the_code(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/stream/Refusing"), 403, contains="No stream for you")


async def test_stream_that_breaks_halfway_is_logged_and_cut(client: httpx.AsyncClient,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="agents_api"), pytest.raises(Exception):  # noqa: B017
        await client.get("/stream/Broken")
    assert any("error id" in r.getMessage() for r in caplog.records)


async def test_post_stream_takes_raw_bytes_whatever_the_content_type(client: httpx.AsyncClient, parts: Parts) -> None:
    first, second = parts.first, parts.second
    response = await client.post("/stream/Upload/calc-1", content=b'{"not": "parsed"}\x00\xff',
                                 headers={"Content-Type": "application/json; charset=UTF-8"})
    assert response.status_code == 200 and response.content == b""
    assert first.posted == [b'{"not": "parsed"}\x00\xff'] and second.posted == []
    response = await client.post("/stream/Upload", content=b"")
    assert response.status_code == 200


# ------------------------------------------------------------------------------------------ messages


async def test_send_and_broadcast(client: httpx.AsyncClient, parts: Parts) -> None:
    first, second = parts.first, parts.second
    response = await client.post("/send/calc-2", json={"payload": {"a": 1}, "replyTo": "platform/x/y"})
    assert response.status_code == 200 and response.content == b""
    await asyncio.sleep(0.05)
    assert [m.payload for m in second.messages] == [{"a": 1}] and second.messages[0].reply_to == "platform/x/y"
    response = await client.post("/broadcast/news", json={"payload": "hi"})
    assert response.status_code == 200
    response = await client.post("/broadcast/nobody-listens", json={"payload": "hi"})
    assert response.status_code == 200
    await asyncio.sleep(0.05)
    assert [m.payload for m in first.messages] == ["hi"]
    assert len(second.messages) == 1


async def test_send_to_an_unknown_agent_is_404(client: httpx.AsyncClient, parts: Parts) -> None:
    assert_error(await client.post("/send/nobody", json={"payload": 1}), 404)


@pytest.mark.parametrize("body", [b"[]", b"not json", b'{"replyTo": 5}', b'"payload"'])
async def test_bad_messages_are_400(client: httpx.AsyncClient, parts: Parts, body: bytes) -> None:
    assert_error(await client.post("/send/calc-1", content=body), 400)
    assert_error(await client.post("/broadcast/news", content=body), 400)
    assert parts.first.messages == [] and parts.second.messages == []


# ------------------------------------------------------------------------------------------ login


async def test_login_logout_and_an_auth_action(client: httpx.AsyncClient, parts: Parts) -> None:
    response = await client.post("/login", json={"username": "ada", "password": "pw-ada"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    token = response.text
    assert token and not token.startswith('"')
    whoami = await client.post("/invoke/Whoami/calc-1", json={}, headers={"ContainerLoginToken": token})
    assert whoami.status_code == 200 and whoami.json() == "ada"
    quoted = await client.post("/invoke/Whoami/calc-1", json={}, headers={"ContainerLoginToken": f'"{token}"'})
    assert quoted.json() == "ada"
    assert_error(await client.post("/invoke/Whoami/calc-1", json={}), 401)
    logout = await client.post("/logout", headers={"ContainerLoginToken": f'"{token}"'})
    assert logout.status_code == 200 and logout.json() is True
    assert (await client.post("/logout", headers={"ContainerLoginToken": token})).json() is False
    assert (await client.post("/logout")).json() is False
    assert_error(await client.post("/invoke/Whoami/calc-1", json={}, headers={"ContainerLoginToken": token}), 401)


async def test_bad_credentials_are_401_and_not_logged(client: httpx.AsyncClient, parts: Parts,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        response = await client.post("/login", json={"username": "ada", "password": "wrong-password-xyz"})
    assert_error(response, 401)
    assert "wrong-password-xyz" not in caplog.text and "wrong-password-xyz" not in response.text
    assert parts.first.sessions == {}


@pytest.mark.parametrize("body", [b"{}", b'{"username": "a"}', b'{"username": 1, "password": "p-secret-1"}',
                                  b"[]", b"nope", b""])
async def test_malformed_login_is_400_and_echoes_nothing(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/login", content=body)
    assert_error(response, 400)
    assert "p-secret-1" not in response.text


async def test_login_unsupported_is_501() -> None:
    from agents_api import AbstractAgent, Container, action

    class Plain(AbstractAgent):
        @action
        def ping(self) -> str:
            return "pong"

    container = Container(IMAGE, environ={"CONTAINER_ID": "c"})
    Plain(container=container, agent_id="plain")
    async with asgi_client(create_app(container, platform=False)) as client:
        assert_error(await client.post("/login", json={"username": "a", "password": "b"}), 501)


# ------------------------------------------------------------------------------------------ routing


async def test_unknown_route_and_wrong_method_are_error_responses(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nothing/here"), 404)
    response = await client.get("/invoke/Add")
    assert_error(response, 405)
    assert "POST" in response.headers.get("allow", "")
    assert_error(await client.delete("/info"), 405)
    assert_error(await client.put("/login", json={}), 405)


async def test_docs_and_openapi_are_served(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/redoc")).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    assert {"ErrorResponse", "AgentContainer", "AgentDescription", "Message", "Login"} <= set(
        schema["components"]["schemas"])
    assert set(schema["components"]["schemas"]["ErrorResponse"]["properties"]) == {"statusCode", "message", "cause"}
    invoke = schema["paths"]["/invoke/{action}"]["post"]
    assert {p["name"] for p in invoke["parameters"]} >= {"action", "timeout", "containerId", "forward"}
    assert invoke["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "securitySchemes" not in schema["components"]


def test_create_routes_is_the_sdks_entry_point() -> None:
    container, _, _ = make_container()
    app = create_routes("sample-container", container)
    assert app.title == "sample-container"
    assert app.container is container
