"""The built-in Assistant agent over HTTP, in the container ``flowmas up`` assembles (entry points, real built-in
agents), its model a saved ``OpenAIModel`` block on the session's Prefect server pointing at the local LLM wire
server. The model is scripted to call a real action of the container (the Graphs agent's ``PlanGraph``), which
runs in process, then to answer from its result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from agents_api import create_app
from agents_api.assistant import AssistantAgent
from blocks import OpenAIModel, register_blocks
from flowmas.opaca import AgentContext
from flowmas.settings import FlowmasSettings
from tests.agents_api import asgi_client, assert_error, make_container
from tests.servers.llm import Fault, LLMServer, Reply, ToolCall, Usage
from up import ContainerService

pytestmark = pytest.mark.prefect

BLOCK = "openai-model/assistant-test"


@pytest.fixture(scope="module")
def url(prefect_server: str, _llm_server: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    register_blocks()
    OpenAIModel(model="assistant-model", api_key=SecretStr("sk-assistant-test"), base_url=_llm_server.url + "/v1",
                temperature=0.0).save("assistant-test", overwrite=True)
    directory = tmp_path_factory.mktemp("assistant")
    project = directory / "flowmas.yaml"
    project.write_text(json.dumps({"name": "assistant-test"}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOWMAS_ASSISTANT_MODEL", BLOCK)
        patch.setenv("FLOWMAS_ASSISTANT_MAX_ITERATIONS", "3")
        patch.delenv("FLOWMAS_CACHE_URL", raising=False)
        service = ContainerService(host="127.0.0.1", port=0, project_file=project)
        service.prepare()
        service.start()
        try:
            assert service.url is not None
            yield service.url
        finally:
            service.stop()


def ask(url: str, question: str) -> httpx.Response:
    return httpx.post(f"{url}/invoke/Ask/assistant", json={"question": question}, timeout=60)


def test_ask_calls_a_real_action_of_the_container_and_answers_with_usage(url: str, llm_server: LLMServer) -> None:
    llm_server.enqueue(
        Reply(tool_calls=[ToolCall("PlanGraph", {"graph": "examples.research:graph"})],
              usage=Usage(input=50, output=9)),
        Reply(text="The research graph has 7 nodes.", usage=Usage(input=80, output=8)),
    )

    answer = ask(url, "How many nodes has examples.research:graph?")

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["answer"] == "The research graph has 7 nodes."
    assert body["usage"] == {"inputTokens": 130, "outputTokens": 17, "cacheReadInputTokens": 0,
                             "cacheWriteInputTokens": 0}
    [call] = body["toolCalls"]
    assert (call["tool"], call["agentId"], call["action"], call["isError"]) == ("PlanGraph", "graphs", "PlanGraph",
                                                                               False)
    assert call["result"].startswith("examples.research:graph: 7 nodes")  # the action really ran
    first, second = llm_server.requests
    offered = {tool["function"]["name"] for tool in first.json["tools"]}
    assert {"PlanGraph", "ListAssets"} <= offered and "Ask" not in offered  # its own Ask is left out
    assert first.json["temperature"] == 0.0 and first.model == "assistant-model"
    tool_messages = [m for m in second.json["messages"] if m["role"] == "tool"]
    assert tool_messages and "level 1: plan" in tool_messages[0]["content"]


def test_a_model_failure_is_a_clean_error_without_the_key(url: str, llm_server: LLMServer) -> None:
    llm_server.enqueue(Fault(status=401, message="invalid api key"))
    body = assert_error(ask(url, "hello?"), 502, contains="invalid api key")
    assert "sk-assistant-test" not in json.dumps(body)
    assert_error(ask(url, "   "), 400)


def test_the_iteration_limit_is_a_500_naming_the_setting(url: str, llm_server: LLMServer) -> None:
    llm_server.enqueue(*[Reply(tool_calls=[ToolCall("ListAssets", {})]) for _ in range(3)])
    assert_error(ask(url, "loop"), 500, contains="FLOWMAS_ASSISTANT_MAX_ITERATIONS")


async def test_without_a_model_the_assistant_has_no_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWMAS_ASSISTANT_MODEL", raising=False)
    container, _, _ = make_container()
    agent = AssistantAgent(AgentContext(container=container, settings=FlowmasSettings()))
    container.add_agent(agent)
    assert not agent.enabled
    async with asgi_client(create_app(container, platform=False)) as client:
        described = (await client.get("/agents/assistant")).json()
        assert described["actions"] == [] and "FLOWMAS_ASSISTANT_MODEL" in described["description"]
        assert_error(await client.post("/invoke/Ask/assistant", json={"question": "hi"}), 404)


async def test_a_client_given_directly_and_calculator_actions(llm_server: LLMServer) -> None:
    from flowmas.llm import OpenAIClient

    container, first, _ = make_container()
    AssistantAgent(container=container, client=OpenAIClient("m", base_url=llm_server.url + "/v1", api_key="k"))
    llm_server.enqueue(Reply(tool_calls=[ToolCall("calc-1--Add", {"x": 20, "y": 22})]), Reply(text="42"))
    async with asgi_client(create_app(container, platform=False)) as client:
        answer = await client.post("/invoke/Ask/assistant", json={"question": "20 + 22?"})
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    assert result["answer"] == "42" and first.calls == [("Add", (20, 22))]
    assert result["toolCalls"][0]["result"] == "42"
