"""``tasks.llm`` for real: flows on the session's Prefect server, model calls to the local LLM wire server through
the official SDKs (blocks build the clients). What Prefect records (task runs, tags, artifacts) is read back
through its API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.states import State
from pydantic import SecretStr

from blocks import AnthropicModel, BedrockModel, OpenAIModel, VertexModel, load_model_block, register_blocks
from flowmas.errors import ConfigurationError, LLMHTTPError
from flowmas.llm import AnthropicClient, BedrockClient, OpenAIClient, VertexClient
from tasks.llm import llm_call, usage_rows, write_usage_artifact
from tests.prefect.support import final_task_runs
from tests.servers.llm import Fault, LLMServer, Reply, Usage

pytestmark = pytest.mark.prefect


@pytest.fixture(autouse=True)
def _server(prefect_server: str) -> str:
    return prefect_server


@pytest.fixture
def client() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


def openai_block(server: LLMServer, **extra: Any) -> OpenAIModel:
    return OpenAIModel(model="gpt-test", api_key=SecretStr("sk-test"), base_url=server.url + "/v1", **extra)


def artifact_rows(client: SyncPrefectClient, flow_run_id: UUID, key: str) -> list[dict[str, Any]]:
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])))
    assert len(artifacts) == 1, artifacts
    data = artifacts[0].data
    return json.loads(data) if isinstance(data, str) else data  # type: ignore[return-value]


@flow
async def ask_flow(model: Any, prompts: list[str], cache: bool = False) -> list[str]:
    answers = []
    for prompt in prompts:
        response = await llm_call(model, prompt, cache=cache, retry_delay_seconds=0)
        answers.append(response.text)
    write_usage_artifact()
    return answers


def run(model: Any, prompts: list[str], cache: bool = False) -> State[Any]:
    """``ask_flow`` in this process, to its final state."""
    state: State[Any] = asyncio.run(ask_flow(model, prompts, cache=cache, return_state=True))  # type: ignore[arg-type]
    return state


def test_blocks_build_their_clients_without_showing_secrets(llm_server: LLMServer) -> None:
    block = openai_block(llm_server, temperature=0.2)
    made = block.client()
    assert isinstance(made, OpenAIClient) and made.base_url == llm_server.url + "/v1"
    assert block.call_defaults() == {"temperature": 0.2} and "sk-test" not in repr(block) + repr(made)
    assert isinstance(AnthropicModel(model="c", api_key=SecretStr("k")).client(), AnthropicClient)
    bedrock = BedrockModel(model="m", region="us-east-1", aws_access_key_id=SecretStr("AKIA"),
                           aws_secret_access_key=SecretStr("secret"))
    assert isinstance(bedrock.client(), BedrockClient)
    vertex = VertexModel(model="c", region="us-east5", project_id="p", access_token=SecretStr("tok"))
    assert isinstance(vertex.client(), VertexClient)
    with pytest.raises(ConfigurationError, match="not JSON"):
        VertexModel(model="c", service_account_info=SecretStr("{nope")).client()


def test_a_429_is_retried_by_prefect_then_the_call_succeeds_tagged_per_provider(
        llm_server: LLMServer, client: SyncPrefectClient) -> None:
    llm_server.enqueue(Fault(status=429, retry_after=0), Reply(text="pong", usage=Usage(input=11, output=2)))

    state = run(openai_block(llm_server), ["ping"])

    assert state.is_completed(), state
    assert state.result() == ["pong"]
    assert len(llm_server.requests) == 2  # the client made one attempt per run; Prefect retried once
    [task_run] = final_task_runs(client, state.state_details.flow_run_id)
    assert {"llm", "llm:openai"} <= set(task_run.tags)
    assert task_run.run_count == 2 and task_run.name == "llm openai/gpt-test"


def test_a_400_is_not_retried(llm_server: LLMServer, client: SyncPrefectClient) -> None:
    llm_server.enqueue(Fault(status=400, message="messages: bad"), Reply(text="never"))

    state = run(openai_block(llm_server), ["ping"])

    assert state.is_failed()
    with pytest.raises(LLMHTTPError, match="messages: bad"):
        state.result()
    assert len(llm_server.requests) == 1
    [task_run] = final_task_runs(client, state.state_details.flow_run_id)
    assert task_run.run_count == 1 and task_run.state is not None and task_run.state.is_failed()


def test_usage_and_cost_per_flow_run_as_a_table_artifact(llm_server: LLMServer, client: SyncPrefectClient) -> None:
    llm_server.enqueue(Reply(text="a", usage=Usage(input=1000, output=100, cache_read=500)),
                       Reply(text="b", usage=Usage(input=3000, output=300)))
    block = openai_block(llm_server, input_price_per_mtok=2.0, output_price_per_mtok=10.0,
                         cache_read_price_per_mtok=0.5)

    state = run(block, ["one", "two"])

    assert state.is_completed(), state
    [row] = artifact_rows(client, state.state_details.flow_run_id, "llm-usage")
    assert row == {"model": "openai/gpt-test", "calls": 2, "failed": 0, "input_tokens": 4000, "output_tokens": 400,
                   "cache_read_tokens": 500, "cache_write_tokens": 0,
                   "cost_usd": round((4000 * 2.0 + 400 * 10.0 + 500 * 0.5) / 1e6, 6)}
    assert usage_rows(str(state.state_details.flow_run_id)) == []  # written, then forgotten


def test_a_saved_block_by_name_and_cache_on_request(llm_server: LLMServer, client: SyncPrefectClient) -> None:
    register_blocks()
    openai_block(llm_server).save("llm-test", overwrite=True)
    AnthropicModel(model="claude-test", api_key=SecretStr("k"), base_url=llm_server.url).save(
        "llm-test", overwrite=True)
    with pytest.raises(ConfigurationError, match="Several model blocks"):
        load_model_block("llm-test")
    assert isinstance(load_model_block("openai-model/llm-test"), OpenAIModel)
    llm_server.enqueue(Reply(text="first"), Reply(text="second"))

    state = run("openai-model/llm-test", ["same", "same"], cache=True)

    assert state.is_completed(), state
    assert state.result() == ["first", "first"]  # the identical second call was a cache hit
    assert len(llm_server.requests) == 1
    with pytest.raises(ConfigurationError, match="No saved openai-model block"):
        load_model_block("openai-model/nothing")
