"""The one table from flowmas errors to HTTP statuses, the ErrorResponse body, and the bounded settings."""

from __future__ import annotations

import logging

import orjson
import pytest
from fastapi import HTTPException
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents_api import STATUS, ApiSettings
from agents_api.errors import (
    MalformedRequestError,
    NotAuthenticatedError,
    PayloadTooLargeError,
    error_body,
    response_for,
    status_for,
)
from flowmas.errors import (
    ActionFailedError,
    ActionTimeoutError,
    ConfigurationError,
    InvalidArgumentsError,
    LoginFailedError,
    LoginNotSupportedError,
    UnknownActionError,
    UnknownAgentError,
    UnknownStreamError,
)


@pytest.mark.parametrize(("error", "status"), [
    (UnknownAgentError("x"), 404), (UnknownActionError("x"), 404), (UnknownStreamError("x"), 404),
    (InvalidArgumentsError("x"), 400), (MalformedRequestError("x"), 400), (NotAuthenticatedError("x"), 403),
    (PayloadTooLargeError("x"), 413), (LoginFailedError("x"), 401), (LoginNotSupportedError("x"), 501),
    (ActionFailedError("x"), 500), (ActionFailedError("x", status_code=403), 403), (ActionTimeoutError("x"), 504),
    (HTTPException(status_code=418), 418), (StarletteHTTPException(status_code=405), 405),
    (ActionFailedError("x", status_code=200), 500), (HTTPException(status_code=302), 500),
    (ValueError("x"), None), (KeyError("x"), None),
])
def test_the_table(error: BaseException, status: int | None) -> None:
    assert status_for(error) == status


def test_every_listed_error_has_an_error_status() -> None:
    assert all(400 <= status <= 599 for status in STATUS.values())


def test_subclasses_take_their_nearest_listed_base() -> None:
    class FlowRunTimedOut(ActionTimeoutError):
        pass

    assert status_for(FlowRunTimedOut("x")) == 504


def test_error_body_is_exactly_the_platforms_fields() -> None:
    assert orjson.loads(error_body(404, "No agent 'x'.")) == {"statusCode": 404, "message": "No agent 'x'."}
    nested = orjson.loads(error_body(502, "outer", {"statusCode": 500, "message": "inner"}))
    assert nested["cause"] == {"statusCode": 500, "message": "inner"}
    assert len(orjson.loads(error_body(400, "x" * 100_000))["message"]) <= 1000


def test_unexpected_errors_answer_an_id_and_log_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="agents_api"):
        response = response_for(RuntimeError("password=hunter2 in /srv/secret.py"), where="POST /invoke/X")
    body = orjson.loads(response.body)
    assert response.status_code == 500 and body["statusCode"] == 500
    assert "hunter2" not in body["message"] and "RuntimeError" not in body["message"]
    error_id = body["message"].split("error id ")[1].split(";")[0]
    (record,) = [r for r in caplog.records if error_id in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None


@pytest.mark.parametrize("error", [LoginNotSupportedError("No login here."), ActionTimeoutError("Too slow."),
                                   ActionFailedError("Busy.", status_code=503), UnknownActionError("No X.")])
def test_meant_answers_carry_no_error_id_and_no_traceback(caplog: pytest.LogCaptureFixture,
                                                          error: Exception) -> None:
    with caplog.at_level(logging.DEBUG, logger="agents_api"):
        body = orjson.loads(response_for(error).body)
    assert "error id" not in body["message"]
    assert all(r.levelno <= logging.DEBUG and r.exc_info is None for r in caplog.records if r.name == "agents_api")


def test_run_ids_are_named() -> None:
    body = orjson.loads(response_for(ActionTimeoutError("Action 'Train' did not finish.", run_id="r-42")).body)
    assert body == {"statusCode": 504, "message": "Action 'Train' did not finish (flow run r-42 goes on)."}
    body = orjson.loads(response_for(ActionFailedError("Flow run r-7 crashed.", run_id="r-7")).body)
    assert body["message"].startswith("Flow run r-7 crashed") and body["message"].count("r-7") == 1


def test_413_closes_the_connection() -> None:
    assert response_for(PayloadTooLargeError("big")).headers["connection"] == "close"


def test_an_http_exception_keeps_its_headers_and_detail() -> None:
    response = response_for(HTTPException(status_code=429, detail={"retry": "later"}, headers={"Retry-After": "3"}))
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert orjson.loads(response.body)["message"] == '{"retry":"later"}'


@pytest.mark.parametrize(("variable", "value"), [
    ("FLOWMAS_API_MAX_BODY_BYTES", "0"), ("FLOWMAS_API_MAX_BODY_BYTES", "lots"),
    ("FLOWMAS_API_MAX_TIMEOUT_SECONDS", "1e308"), ("FLOWMAS_API_MAX_TIMEOUT_SECONDS", "nan"),
    ("FLOWMAS_API_TOKEN_RENEWAL_SECONDS", "0.001"), ("FLOWMAS_API_NOTIFY_DEBOUNCE_SECONDS", "-1"),
    ("FLOWMAS_API_PLATFORM_TIMEOUT_SECONDS", "inf"),
])
def test_absurd_settings_name_their_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable):
        ApiSettings()


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWMAS_API_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("FLOWMAS_API_TOKEN_RENEWAL_SECONDS", "60")
    settings = ApiSettings()
    assert settings.max_body_bytes == 1024 and settings.token_renewal_seconds == 60
    assert settings.max_timeout_seconds == 86400 and settings.notify_debounce_seconds == 0.5
