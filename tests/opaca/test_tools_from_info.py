"""A container's actions as LLM tools (``flowmas.opaca.tools``): schemas, names, and real invocations.

Schemas are checked with ``jsonschema`` against the values the container itself accepts or refuses; the tools
are invoked in process (``Container.invoke``) and over HTTP (uvicorn on 127.0.0.1, the platform's bearer).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from agents_api import BackgroundServer, create_app
from flowmas.errors import ActionFailedError, InvalidArgumentsError
from flowmas.llm import ToolCallBlock
from flowmas.llm.tools import run_tool_call
from flowmas.opaca import AbstractAgent, Container, action
from flowmas.opaca.tools import action_of, container_invoker, http_invoker, parameter_schema, tool_name, tools_from_info
from tests.agents_api import IMAGE, TOKEN, make_container

VALID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class Point(BaseModel):
    x: int
    y: int


class Tree(BaseModel):
    label: str
    children: list[Tree] = []


class Shapes(AbstractAgent):
    """Typed actions."""

    @action
    def centre(self, points: list[Point], tags: list[list[str]] | None = None, anything: Any = None) -> Point:
        """The centre of the points."""
        n = max(len(points), 1)
        return Point(x=sum(p.x for p in points) // n, y=sum(p.y for p in points) // n)

    @action
    def depth(self, tree: Tree, options: dict[str, Any] | None = None, flag: bool = False, ratio: float = 0.5) -> int:
        """How deep the tree is."""
        return 1 + max((self.depth(child) for child in tree.children), default=0)


@pytest.fixture
def shapes_container() -> Container:
    container = Container(IMAGE, environ={"CONTAINER_ID": "c", "PLATFORM_URL": "", "TOKEN": "", "OWNER": ""})
    Shapes(container=container, agent_id="shapes")
    return container


def by_name(tools: list[Any]) -> dict[str, Any]:
    return {tool.name: tool for tool in tools}


def test_every_type_becomes_a_schema_the_container_agrees_with(shapes_container: Container) -> None:
    tools = by_name(tools_from_info(shapes_container.info(), container_invoker(shapes_container)))
    centre = tools["Centre"].spec.input_schema
    assert centre["required"] == ["points"]
    assert centre["properties"]["tags"]["type"] == "array"
    assert centre["properties"]["tags"]["items"] == {"type": "array", "items": {"type": "string"}}
    assert centre["properties"]["anything"] == {}
    jsonschema.Draft7Validator.check_schema(centre)
    jsonschema.validate({"points": [{"x": 1, "y": 2}], "tags": [["a"]]}, centre)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"points": [{"x": "one", "y": 2}]}, centre)

    depth = tools["Depth"].spec.input_schema
    jsonschema.Draft7Validator.check_schema(depth)
    assert depth["properties"]["flag"] == {"type": "boolean", "default": False}
    assert depth["properties"]["ratio"] == {"type": "number", "default": 0.5}
    assert depth["properties"]["options"]["type"] == "object"
    nested = {"tree": {"label": "a", "children": [{"label": "b", "children": [{"label": "c"}]}]}}
    jsonschema.validate(nested, depth)  # the recursive reference resolves from the schema's root
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"tree": {"label": "a", "children": [{"children": []}]}}, depth)


def test_a_platform_info_as_json_with_unknown_and_referencing_types() -> None:
    info = {"containerId": "x", "runningSince": "2026-01-01T00:00:00.000Z",
            "image": {"imageName": "i", "definitions": {
                "Pair": {"type": "object", "properties": {"a": {"$ref": "#/definitions/Unit"}}},
                "Unit": {"type": "string", "enum": ["m", "s"]}}},
            "agents": [{"agentId": "remote agent/1", "actions": [
                {"name": "Measure", "parameters": {"pair": {"type": "Pair"}, "thing": {"type": "Mystery"},
                                                    "list": {"type": "array", "required": False}}},
                {"name": "Do.Thing", "parameters": {}}]}]}
    calls: list[tuple[str, str, dict[str, Any]]] = []

    async def invoke(action_name: str, agent_id: str, arguments: dict[str, Any]) -> Any:
        calls.append((action_name, agent_id, arguments))
        return "done"

    tools = tools_from_info(info, invoke)
    measure, odd = tools
    schema = measure.spec.input_schema
    jsonschema.validate({"pair": {"a": "m"}, "thing": 42}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"pair": {"a": "kg"}, "thing": 1}, schema)
    assert "Mystery" in schema["properties"]["thing"]["description"]
    assert schema["properties"]["list"] == {"type": "array", "items": {}}
    assert measure.name == "Measure" and VALID.match(odd.name)
    assert action_of(odd) == ("remote agent/1", "Do.Thing")


def test_names_are_valid_for_every_provider_unique_and_mapped_back() -> None:
    agents = [{"agentId": agent, "actions": [{"name": name} for name in names]} for agent, names in [
        ("a", ["Same", "Only"]), ("b", ["Same", "x" * 80, "ümlaut action"]), ("a/b", ["Same"])]]
    info = {"containerId": "x", "runningSince": "2026-01-01T00:00:00.000Z", "image": {"imageName": "i"},
            "agents": agents}

    async def invoke(action_name: str, agent_id: str, arguments: dict[str, Any]) -> Any:
        return None

    tools = tools_from_info(info, invoke)
    names = [t.name for t in tools]
    assert all(VALID.match(n) for n in names), names
    assert len(set(names)) == len(names) == 6
    assert "Only" in names and "a--Same" in names and "b--Same" in names  # readable where possible
    assert [action_of(t) for t in tools] == [("a", "Same"), ("a", "Only"), ("b", "Same"), ("b", "x" * 80),
                                              ("b", "ümlaut action"), ("a/b", "Same")]
    assert tool_name("a", "Same", taken={"Same", "a--Same"}) != "a--Same"


def test_filters_leave_actions_out() -> None:
    container, _, _ = make_container()
    invoker = container_invoker(container)
    everything = tools_from_info(container.info(), invoker)
    assert {action_of(t)[0] for t in everything if action_of(t)} == {"calc-1", "calc-2"}  # type: ignore[index]
    only_one = tools_from_info(container.info(), invoker, exclude_agents=["calc-2"], exclude_actions=["Fail"])
    assert {t.name for t in only_one} >= {"Add", "Scale"} and "Fail" not in {t.name for t in only_one}
    assert all(action_of(t)[0] == "calc-1" for t in only_one)  # type: ignore[index]


async def test_in_process_calls_run_the_action_with_the_containers_checks() -> None:
    container, first, _ = make_container()
    tools = by_name(tools_from_info(container.info(), container_invoker(container), exclude_agents=["calc-2"]))
    result, stopped = await run_tool_call(ToolCallBlock(id="1", name="Add", arguments={"x": 2, "y": 3}), tools)
    assert (result.text, result.is_error, stopped) == ("5", False, False)
    assert first.calls == [("Add", (2, 3))]
    bad, _ = await run_tool_call(ToolCallBlock(id="2", name="Add", arguments={"x": "two"}), tools)
    assert bad.is_error and "InvalidArgumentsError" in bad.text
    failing, _ = await run_tool_call(ToolCallBlock(id="3", name="Fail", arguments={}), tools)
    assert failing.is_error and "ActionFailedError" in failing.text
    with pytest.raises(InvalidArgumentsError):
        await tools["Add"].invoke({"x": 1})


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    container, _, _ = make_container(token=TOKEN)
    with BackgroundServer(create_app(container, platform=False)) as server:
        yield server.url


async def test_over_http_with_the_platform_token(served: str) -> None:
    import httpx

    info = httpx.get(f"{served}/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    tools = by_name(tools_from_info(info, http_invoker(served, TOKEN), exclude_agents=["calc-2"]))
    assert await tools["Scale"].invoke({"x": 2}) == 4.0
    refused = by_name(tools_from_info(info, http_invoker(served, "wrong-token"), exclude_agents=["calc-2"]))
    with pytest.raises(ActionFailedError) as failed:
        await refused["Add"].invoke({"x": 1, "y": 1})
    assert failed.value.status_code in (401, 403) and "wrong-token" not in str(failed.value)
    result, _ = await run_tool_call(ToolCallBlock(id="1", name="Add", arguments={"x": 1}), tools)
    assert result.is_error and "HTTP 400" in result.text


def test_parameter_schema_of_nothing_is_an_empty_object() -> None:
    assert parameter_schema({}) == {"type": "object", "properties": {}}
