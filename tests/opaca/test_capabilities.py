"""The seam: built-in agents come from ``flowmas.agents`` entry points, each a factory of the context."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from flowmas.errors import ContainerConfigurationError
from flowmas.opaca import ENTRY_POINT_GROUP, AbstractAgent, AgentContext, Container, action, load_builtin_agents


class EchoAgent(AbstractAgent):
    """Echoes."""

    def __init__(self, context: AgentContext) -> None:
        super().__init__(agent_id="echo")
        self.context = context

    @action
    def echo(self, text: str) -> str:
        return text


def self_registering(context: AgentContext) -> AbstractAgent:
    return AbstractAgent(context.container, agent_id="self-registered")


def failing(context: AgentContext) -> AbstractAgent:
    raise RuntimeError("no model file")


def not_an_agent(context: AgentContext) -> object:
    return "nope"


NOT_CALLABLE = 42


def entry(name: str, target: str) -> EntryPoint:
    return EntryPoint(name=name, value=f"{__name__}:{target}", group=ENTRY_POINT_GROUP)


def context() -> AgentContext:
    return AgentContext(container=Container({"imageName": "builtin"}, environ={}))


async def test_factories_build_and_register_agents_in_name_order():
    ctx = context()
    agents = load_builtin_agents(ctx, entries=[entry("zeta", "self_registering"), entry("alpha", "EchoAgent")])
    assert [a.agent_id for a in agents] == ["echo", "self-registered"]
    assert [a.agent_id for a in ctx.container.agents()] == ["echo", "self-registered"]
    assert agents[0].context is ctx  # type: ignore[attr-defined]
    assert await ctx.container.invoke("Echo", {"text": "hi"}) == "hi"


@pytest.mark.parametrize(("target", "words"), [
    ("failing", "failed to start: RuntimeError: no model file"),
    ("not_an_agent", "returned an object of type str, not an AbstractAgent"),
    ("NOT_CALLABLE", "names an object of type int, not a factory"),
    ("missing_name", "cannot be imported"),
])
def test_a_bad_entry_point_is_an_error_naming_it(target, words):
    with pytest.raises(ContainerConfigurationError) as caught:
        load_builtin_agents(context(), entries=[entry("broken", target)])
    message = str(caught.value)
    assert message.startswith("Built-in agent 'broken' (entry point 'tests.opaca.test_capabilities:")
    assert words in message and "Traceback" not in message


def test_a_missing_module_is_named_too():
    bad = EntryPoint(name="ghost", value="no_such_module_anywhere:Factory", group=ENTRY_POINT_GROUP)
    with pytest.raises(ContainerConfigurationError, match=r"'ghost'.*cannot be imported: ModuleNotFoundError"):
        load_builtin_agents(context(), entries=[bad])


def test_the_installed_group_loads():
    ctx = context()
    agents = load_builtin_agents(ctx)  # whatever this checkout declares (possibly nothing yet)
    assert [a.agent_id for a in ctx.container.agents()] == [a.agent_id for a in agents]
