"""Hostile inputs to the LLM faces: a model that asks for tools and actions that do not exist or sends bad
arguments (the result says so, the loop goes on), hostile names and templates, and credentials with odd bytes
that must never reach a log, an error, a task run or an artifact."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId
from pydantic import SecretStr

from agents_api.assistant import AssistantAgent
from blocks import AnthropicModel, BedrockModel, OpenAIModel
from flowmas.cache import EmbeddedCache
from flowmas.errors import ConfigurationError
from flowmas.graph import Agent, Node, NodeConfig, Task
from flowmas.graph.llm_modules import LLMExecutor, ToolAgentExecutor
from flowmas.llm import OpenAIClient
from flowmas.opaca.tools import container_invoker, tools_from_info
from tasks.llm import llm_call, write_usage_artifact
from tests.agents_api import make_container
from tests.servers.llm import Fault, LLMServer, Reply, ToolCall

ODD_SECRETS = ["sk-line\nbreak", "sk-\x00nul", "sk-ünïcødé", "sk- space", "sk-\x1b[31mred"]
ECHOED = 'sk-"quoted"%s{0}\\back'  # header-safe, but full of format and JSON specials


def client_for(server: LLMServer) -> OpenAIClient:
    return OpenAIClient("m", base_url=server.url + "/v1", api_key="k")


async def test_unknown_tools_actions_and_bad_arguments_become_results_the_model_reads(llm_server: LLMServer) -> None:
    container, first, _ = make_container()
    tools = tools_from_info(container.info(), container_invoker(container), exclude_agents=["calc-2"])
    container.agent("calc-1").remove_action("Scale")  # the action goes away after /info was read
    llm_server.enqueue(
        Reply(tool_calls=[ToolCall("NoSuchTool", {"a": 1}), ToolCall("Add", {"x": "two", "y": None}),
                          ToolCall("Scale", {"x": 1}), ToolCall("Add", {"x": 1, "y": 2, "z": 3})]),
        Reply(text="done anyway"),
    )
    module = ToolAgentExecutor(name="act", client=client_for(llm_server), tools=tools)
    agent = Agent(cache=EmbeddedCache())
    agent.add_node(Node(name="n", modules=[module], node_config=NodeConfig(max_retries=0)))

    output = await agent.run_task(Task(type="t", objective="go"))

    assert output["status"] == "complete", output
    result = output["result"]["n"]["results"][0]
    assert result["result"] == "done anyway"
    outcomes = [(c["name"], c["is_error"], c["result"]) for c in result["tool_calls"]]
    assert outcomes[0][1] and "Unknown tool 'NoSuchTool'" in outcomes[0][2] and "Add" in outcomes[0][2]
    assert outcomes[1][1] and "InvalidArgumentsError" in outcomes[1][2]
    assert outcomes[2][1] and "has no action" in outcomes[2][2]
    assert outcomes[3][1]  # an unknown extra argument is refused by the container's check
    assert first.calls == []  # nothing ran with bad arguments
    tool_turn = [m for m in llm_server.requests[1].json["messages"] if m["role"] == "tool"]
    assert len(tool_turn) == 4 and all(m["content"].startswith("Error") for m in tool_turn)


async def test_invalid_json_arguments_and_an_assistant_told_to_call_itself(llm_server: LLMServer) -> None:
    container, _, _ = make_container()
    assistant = AssistantAgent(container=container, client=client_for(llm_server))
    llm_server.enqueue(Reply(tool_calls=[ToolCall("Ask", {"question": "recurse"})]), Reply(text="no recursion"))
    answer = await assistant.ask("call Ask")
    assert answer.answer == "no recursion"
    [call] = answer.tool_calls
    assert call.is_error and "Unknown tool 'Ask'" in call.result and call.agent_id is None


async def test_hostile_template_values_are_not_formatted_twice(llm_server: LLMServer) -> None:
    cache = EmbeddedCache()
    agent = Agent(cache=cache)
    agent.add_node(Node(name="n", node_config=NodeConfig(max_retries=0), modules=[
        LLMExecutor(name="m", client=client_for(llm_server), prompt="Q: {objective}")]))
    hostile = "{__class__} {0} {objective!r:>{9999}} %s \x00"
    output = await agent.run_task(Task(type="t", objective=hostile))
    assert output["status"] == "complete", output
    assert llm_server.requests[0].json["messages"][-1]["content"] == f"Q: {hostile}"
    for template in ("{objective.__class__.__mro__}", "{", "{0}"):
        agent = Agent(cache=EmbeddedCache())
        agent.add_node(Node(name="n", node_config=NodeConfig(max_retries=0), modules=[
            LLMExecutor(name="m", client=client_for(llm_server), prompt=template)]))
        failed = await agent.run_task(Task(type="t", objective="o"))
        if template.startswith("{objective."):
            continue  # attribute access on the author's own template is the author's business
        assert failed["status"] == "failed", (template, failed)
    assert len(llm_server.requests) == 2


@pytest.mark.parametrize("secret", ODD_SECRETS)
def test_a_key_with_odd_bytes_is_refused_without_being_shown(secret: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for block in (OpenAIModel(model="m", api_key=SecretStr(secret)),
                  AnthropicModel(model="m", api_key=SecretStr(secret)),
                  BedrockModel(model="m", region="us-east-1", aws_access_key_id=SecretStr("AKIA"),
                               aws_secret_access_key=SecretStr(secret))):
        with pytest.raises(ConfigurationError) as refused:
            block.client()
        assert secret not in str(refused.value) and secret not in repr(block)
        assert secret not in json.dumps(block.model_dump(mode="json"))
    assert secret not in caplog.text


@flow
async def leaky_flow(block: OpenAIModel) -> str:
    try:
        response = await llm_call(block, "hi", retry_delay_seconds=0)
        return response.text
    finally:
        write_usage_artifact()


@pytest.mark.prefect
def test_an_echoed_key_never_reaches_logs_states_or_artifacts(prefect_server: str, llm_server: LLMServer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    llm_server.enqueue(Fault(status=401, message=f"Incorrect API key provided: {ECHOED}. Check it."))
    block = OpenAIModel(model="m", api_key=SecretStr(ECHOED), base_url=llm_server.url + "/v1")

    state: Any = asyncio.run(leaky_flow(block, return_state=True))  # type: ignore[arg-type]

    assert state.is_failed()
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {ECHOED}"  # it was really sent
    seen = [caplog.text, str(state.message)]
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        seen += [json.dumps(a.model_dump(mode="json")) for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))]
        seen += [json.dumps(t.model_dump(mode="json")) for t in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))]
        seen += [json.dumps(client.read_flow_run(run_id).model_dump(mode="json"))]
        seen += [log.message for log in client.read_logs()]
    assert any("Incorrect API key provided: ***" in text for text in seen)  # the provider's words, scrubbed
    assert not [text for text in seen if ECHOED in text]
