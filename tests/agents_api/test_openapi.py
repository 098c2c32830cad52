"""schemathesis against the app's own OpenAPI document: no 5xx, and every error an ErrorResponse.

Bounded (``max_examples``) so it stays well under a minute. The checks are chosen: ``negative_data_rejection``
and ``positive_data_acceptance`` do not apply to this API (``containerId`` and ``forward`` are accepted and
ignored whatever their value, as the platform sends them; an object that fits the generic ``/invoke`` body
schema may still not fit the action, a 400). The document lists the container's action, agent and stream
names as examples of the path parameters, so the generated requests reach real actions too.
"""

from __future__ import annotations

from typing import Any

import orjson
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agents_api import create_app
from tests.agents_api import make_container

container, _first, _second = make_container()
for agent in (_first, _second):  # quick actions that do not fail on purpose (a 500 is what is looked for)
    for name in ("SleepSync", "SleepAsync", "Fail", "Unencodable"):
        agent.remove_action(name)
    agent.remove_stream("Broken")
app = create_app(container, platform=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


def error_is_an_error_response(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every answer of 400 and above is exactly ``{statusCode, message[, cause]}`` with its own status."""
    if response.status_code < 400:
        return None
    body = orjson.loads(response.content)
    assert isinstance(body, dict) and set(body) <= {"statusCode", "message", "cause"}, body
    assert body["statusCode"] == response.status_code and isinstance(body["message"], str), body
    assert "Traceback" not in body["message"]
    return None


CHECKS = [not_a_server_error, error_is_an_error_response, response_schema_conformance, status_code_conformance,
          content_type_conformance]


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_conforms_to_its_own_document(case: Any) -> None:
    info = container.info()
    case.call_and_validate(checks=CHECKS)
    assert container.info() is info  # no request changes the container's description


def test_the_document_is_valid_and_lists_the_current_names() -> None:
    document = app.openapi()
    assert document["openapi"].startswith("3.1")
    parameters = {p["name"]: p for p in document["paths"]["/invoke/{action}/{agentId}"]["post"]["parameters"]}
    assert "Add" in parameters["action"]["schema"]["examples"]
    assert parameters["agentId"]["schema"]["examples"] == ["calc-1", "calc-2"]
    _first.add_action("Later", None, {}, None, lambda: None)
    try:
        again = app.openapi()
        parameters = {p["name"]: p for p in again["paths"]["/invoke/{action}"]["post"]["parameters"]}
        assert "Later" in parameters["action"]["schema"]["examples"]
    finally:
        _first.remove_action("Later")
