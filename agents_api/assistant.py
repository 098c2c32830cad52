"""The built-in Assistant agent: a model that answers questions by calling the container's own actions.

Registered through the ``flowmas.agents`` entry point (``assistant = "agents_api.assistant:AssistantAgent"``):

    Ask(question)   -> {answer, usage, toolCalls, iterations, model}

Enabled when a model is configured: ``FLOWMAS_ASSISTANT_MODEL=<slug>/<name>`` (or ``<name>``) names a saved model
block (``blocks.llm``: ``OpenAIModel``, ``AnthropicModel``, ``BedrockModel``, ``VertexModel``), loaded on the first
``Ask``. Without one the agent is still listed (so ``/info`` says how to enable it) but has no ``Ask`` action: a
platform or a model front-end never sees an action that can only fail.

``Ask`` runs a tool loop (``client.tool_chain``, at most ``FLOWMAS_ASSISTANT_MAX_ITERATIONS`` turns) over the
container's actions as they are at that moment (``flowmas.opaca.tools.tools_from_info`` on ``/info``), every
agent but the Assistant itself (no ``Ask`` calling ``Ask``), each invoked in this process through
``Container.invoke`` with the same argument checks as over HTTP. A wrong tool, bad arguments or a failing
action become error results the model reads, and the loop goes on. ``toolCalls`` lists every call: its tool
name, ``agentId`` and ``action``, the arguments, ``isError`` and the result (shortened).

Errors: no model configured or the block cannot be loaded: 503 naming ``FLOWMAS_ASSISTANT_MODEL``; the
provider failing transiently (429, 5xx, timeouts, after the client's retries): 503; any other provider error
(a key refused, a model not found): 502; the loop reaching its limit: 500 with the limit. Messages carry the
provider's words, never a credential (the clients scrub them).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from flowmas.errors import ActionFailedError, ConfigurationError, LLMError, ToolChainLimitError, TransientError
from flowmas.opaca.agent import AbstractAgent, action
from flowmas.opaca.tools import action_of, container_invoker, tools_from_info

if TYPE_CHECKING:
    from blocks.llm import ModelBlock
    from flowmas.llm import InferenceClient, ToolChainResult
    from flowmas.opaca.capabilities import AgentContext
    from flowmas.opaca.container import Container

__all__ = ["AssistantAgent", "AssistantAnswer"]

SYSTEM = (
    "You are the assistant of an OPACA agent container. Answer the user's question. When the answer needs "
    "the container's agents, call their actions (the tools); a tool result marked as an error says what went "
    "wrong: fix the arguments or try another action. Answer briefly, from what the actions returned."
)
MAX_RESULT_CHARS = 2000


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class TokenUsage(_Camel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_write_input_tokens: int = 0


class ToolCallRecord(_Camel):
    """One action the model called while answering."""

    tool: str
    agent_id: str | None = None
    action: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    is_error: bool = False
    result: str = ""


class AssistantAnswer(_Camel):
    """What ``Ask`` answers."""

    answer: str
    usage: TokenUsage
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    iterations: int = 0
    model: str = ""


class AssistantAgent(AbstractAgent):
    """Answers questions with a language model that calls this container's actions (Ask). Enabled by
    FLOWMAS_ASSISTANT_MODEL (a saved model block)."""

    def __init__(self, context: AgentContext | None = None, *, container: Container | None = None,
                 agent_id: str = "assistant", client: InferenceClient | None = None, model: str | None = None,
                 max_iterations: int | None = None, system: str = SYSTEM) -> None:
        settings = context.settings if context is not None else None
        if settings is None and context is not None:
            from flowmas.settings import FlowmasSettings

            settings = FlowmasSettings()
        self.model_reference = model or (settings.assistant_model if settings is not None else None)
        self.max_iterations = max_iterations or (settings.assistant_max_iterations if settings is not None else 8)
        self.system = system
        self._client = client
        self._block: ModelBlock | None = None
        self._lock = asyncio.Lock()
        self.target = container if container is not None else context.container if context is not None else None
        enabled = client is not None or bool(self.model_reference)
        description = None if enabled else (
            "Answers questions with a language model that calls this container's actions. Disabled: set "
            "FLOWMAS_ASSISTANT_MODEL to a saved model block (e.g. openai-model/prod) to enable Ask.")
        super().__init__(agent_id=agent_id, description=description)
        if not enabled:
            self.remove_action("Ask")
        if container is not None:
            container.add_agent(self)

    @property
    def enabled(self) -> bool:
        return self.knows_action("Ask")

    async def _model(self) -> tuple[InferenceClient, dict[str, Any]]:
        """The client (and the block's call defaults), made on the first ``Ask``."""
        if self._client is not None:
            return self._client, self._block.call_defaults() if self._block is not None else {}
        async with self._lock:
            if self._client is None:
                from blocks.llm import load_model_block

                reference = str(self.model_reference)
                try:
                    block = await asyncio.to_thread(load_model_block, reference)
                    client = block.client()
                except ConfigurationError as exc:
                    raise ActionFailedError(f"The Assistant's model (FLOWMAS_ASSISTANT_MODEL) is not usable: {exc}",
                                            status_code=503) from None
                except Exception as exc:  # noqa: BLE001 - e.g. the Prefect API unreachable
                    raise ActionFailedError(
                        f"The Assistant cannot load its model block {reference!r} (FLOWMAS_ASSISTANT_MODEL): "
                        f"{type(exc).__name__}", status_code=503) from None
                self._block, self._client = block, client
        assert self._client is not None
        return self._client, self._block.call_defaults() if self._block is not None else {}

    @action
    async def ask(self, question: str) -> AssistantAnswer:
        """Answer a question, calling this container's actions when it needs them; the answer, the token usage
        and every action called."""
        if not question.strip():
            from flowmas.errors import InvalidArgumentsError

            raise InvalidArgumentsError("question must not be empty.")
        container = self.target if self.target is not None else self.container
        if container is None:
            raise ActionFailedError("The Assistant is not part of a container.", status_code=503)
        client, defaults = await self._model()
        tools = tools_from_info(container.info(), container_invoker(container), exclude_agents=[self.agent_id])
        targets = {tool.name: action_of(tool) for tool in tools}
        try:
            chain = await client.tool_chain(question, tools, max_iterations=self.max_iterations, system=self.system,
                                            **defaults)
        except ToolChainLimitError as exc:
            raise ActionFailedError(f"The Assistant did not finish within {self.max_iterations} model turns "
                                    "(FLOWMAS_ASSISTANT_MAX_ITERATIONS).", status_code=500) from exc
        except LLMError as exc:
            status = 503 if isinstance(exc, TransientError) else 502
            raise ActionFailedError(f"The Assistant's model failed: {exc}", status_code=status) from None
        return _answer(chain, targets)


def _answer(chain: ToolChainResult, targets: dict[str, tuple[str, str] | None]) -> AssistantAnswer:
    from flowmas.llm import ToolCallBlock, ToolResultBlock

    calls: dict[str, ToolCallRecord] = {}
    for message in chain.messages:
        for block in message.content:
            if isinstance(block, ToolCallBlock):
                target = targets.get(block.name)
                calls[block.id] = ToolCallRecord(tool=block.name, agent_id=target[0] if target else None,
                                                 action=target[1] if target else None, arguments=block.arguments)
            elif isinstance(block, ToolResultBlock) and block.tool_call_id in calls:
                record = calls[block.tool_call_id]
                text = block.text
                record.is_error = block.is_error
                record.result = text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + "…"
    usage = chain.usage
    return AssistantAnswer(
        answer=chain.text, iterations=chain.iterations, tool_calls=list(calls.values()),
        model=chain.response.model if chain.response is not None else "",
        usage=TokenUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                         cache_read_input_tokens=usage.cache_read_input_tokens,
                         cache_write_input_tokens=usage.cache_write_input_tokens))
