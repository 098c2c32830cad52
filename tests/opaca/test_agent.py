"""Agents: names, descriptions, auth injection, streams, dynamic actions, and the SDK's call styles."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from flowmas.errors import ContainerConfigurationError
from flowmas.opaca import (
    AbstractAgent,
    ActionSpec,
    Container,
    Message,
    Parameter,
    StreamDescription,
    action,
    action_spec,
    stream,
)
from flowmas.opaca.agent import clean_description, pascal_case


def container() -> Container:
    return Container({"imageName": "test/agents"}, environ={})


class Sample(AbstractAgent):
    """A sample agent.

    It has a second paragraph that is not part of its description.
    """

    @action
    def add(self, x: int, y: int) -> int:
        """Adds the two numbers
        and returns the sum.

        Args:
            x: not shown.
        """
        return x + y

    @action
    def time_consuming_action(self, text: str, sleep_time: int = 0) -> str:
        return text

    @action(name="ConcatenateArray", description="Concatenates the array.")
    def concatenate(self, array: list[str], separator: str = ", ") -> str:
        return separator.join(array)

    @action(auth=True)
    async def whoami(self, login_token: str, greeting: str = "hi") -> str:
        """Greets the logged-in user."""
        return f"{greeting} {login_token}"

    @stream(mode=StreamDescription.Mode.GET)
    async def sample_stream(self):
        """Yields sample data."""
        yield b"data"

    @stream(mode=StreamDescription.Mode.POST, name="Upload")
    def upload(self, data: bytes) -> None:
        self.uploaded = data

    def not_an_action(self, x: int) -> int:
        return x


def test_names_are_pascal_case_and_decorator_names_win():
    agent = Sample()
    assert list(agent.actions) == ["Add", "TimeConsumingAction", "ConcatenateArray", "Whoami"]
    assert list(agent.streams) == ["SampleStream", "Upload"]
    assert pascal_case("time_consuming_action") == "TimeConsumingAction"
    assert pascal_case("get_URL") == "GetURL"
    assert pascal_case("_private_thing") == "PrivateThing"
    assert pascal_case("already-Camel") == "AlreadyCamel"


def test_descriptions_are_the_first_paragraph():
    agent = Sample()
    assert agent.description == "A sample agent."
    assert agent.actions["Add"].description == "Adds the two numbers and returns the sum."
    assert agent.actions["TimeConsumingAction"].description is None
    assert agent.actions["ConcatenateArray"].description == "Concatenates the array."
    assert agent.streams["SampleStream"].description == "Yields sample data."
    assert clean_description("\n   \n") is None


def test_a_subclass_without_docstring_does_not_inherit_one():
    class Bare(Sample):
        pass

    assert Bare().description is None
    assert Bare(description="given").description == "given"


def test_defaults_of_identity():
    agent = Sample()
    assert len(agent.agent_id) == 36 and agent.agent_type == "Sample"
    assert Sample(agent_id="", agent_type="").agent_type == "Sample"  # the SDK's empty strings
    named = Sample(agent_id="a1", agent_type="Calc")
    assert (named.agent_id, named.agent_type) == ("a1", "Calc")


def test_auth_actions_hide_login_token():
    spec = Sample().actions["Whoami"]
    assert spec.auth and spec.takes_login_token
    assert list(spec.parameters) == ["greeting"]
    assert "login_token" not in str(spec.action().wire())


def test_auth_action_without_login_token_is_refused_at_definition():
    class Broken(AbstractAgent):
        @action(auth=True)
        def secret(self) -> str:
            return "x"

    with pytest.raises(TypeError, match="login_token"):
        Broken()


def test_description_on_the_wire():
    description = Sample(agent_id="s").get_description().wire()
    assert description["agentId"] == "s" and description["agentType"] == "Sample"
    add = description["actions"][0]
    assert add == {"name": "Add", "description": "Adds the two numbers and returns the sum.",
                   "parameters": {"x": {"type": "integer", "required": True},
                                  "y": {"type": "integer", "required": True}},
                   "result": {"type": "integer", "required": True}}
    assert description["streams"] == [{"name": "SampleStream", "mode": "GET", "description": "Yields sample data."},
                                      {"name": "Upload", "mode": "POST"}]


def test_overriding_without_decorator_drops_the_action():
    class Child(Sample):
        def add(self, x: int, y: int) -> int:  # no @action: no longer an action, as in the SDK
            return x - y

    assert "Add" not in Child().actions


def test_decorators_without_and_with_parentheses_keep_the_function():
    def plain(self: Any, x: int) -> int:
        return x

    assert action(plain) is plain
    assert action(name="X")(plain) is plain
    assert stream(plain) is plain


# --- the SDK's call styles ---------------------------------------------------------------------------------


class SdkStyle(AbstractAgent):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_action(
            name="SampleAction",
            description="Acknowledges.",
            parameters={"param1": Parameter(type="string"), "param2": {"type": "integer", "required": False}},
            result=Parameter(type="string"),
            callback=self.sample_action,
        )
        self.add_stream(name="SampleStream", description="A value.", mode=StreamDescription.Mode.GET,
                        callback=self.sample_stream)

    def sample_action(self, param1: str, param2: int = 0) -> str:
        return f"{param1} {param2}"

    async def sample_stream(self):
        yield b"sampleStream data"


def test_sdk_keyword_and_positional_construction():
    box = container()
    agent = SdkStyle(container=box, agent_id="sdk")
    assert box.agent("sdk") is agent and agent.container is box
    assert list(agent.actions) == ["SampleAction"]
    assert agent.actions["SampleAction"].parameters["param2"].required is False
    positional = Sample(box, "pos")  # opaca 0.0.9: AbstractAgent(container, agent_id, ...)
    assert box.agent("pos") is positional


def test_hand_written_array_without_items_gets_any_items():
    agent = AbstractAgent()
    spec = agent.add_action("Flat", None, {"values": {"type": "array"}}, None, lambda values: values)
    assert spec.parameters["values"].wire() == {"type": "array", "required": True, "items": {"type": "Any"}}
    assert "Any" in spec.definitions


def test_add_action_drops_login_token_of_auth_actions():
    agent = AbstractAgent()
    spec = agent.add_action("Tok", None, {"login_token": {"type": "string"}, "x": {"type": "integer"}}, None,
                            lambda login_token, x: x, auth=True)
    assert list(spec.parameters) == ["x"] and spec.takes_login_token


# --- dynamic actions and streams ---------------------------------------------------------------------------


def test_dynamic_actions_and_streams_notify_the_container():
    box = container()
    changes: list[int] = []
    box.on_change(lambda: changes.append(1))
    agent = AbstractAgent(box, agent_id="dyn")
    assert len(changes) == 1
    spec = agent.add_action("Run", "Runs a deployment.", {"n": Parameter(type="integer")},
                            Parameter(type="integer"), lambda n: n, deployment="flow/default")
    assert isinstance(spec, ActionSpec) and spec.deployment == "flow/default"
    assert [a.name for a in box.info().agents[0].actions] == ["Run"]
    agent.add_stream("Logs", None, "GET", lambda: b"")
    agent.remove_action("Run")
    agent.remove_action("Run")  # unknown: ignored, no change announced
    agent.remove_stream("Logs")
    assert len(changes) == 5
    assert box.info().agents[0].actions == [] and box.info().agents[0].streams == []


def test_add_action_spec_of_a_function_and_replacement():
    agent = AbstractAgent()

    def double(x: int) -> int:
        """Doubles x."""
        return 2 * x

    spec = agent.add_action_spec(action_spec(double))
    assert spec.name == "Double" and spec.description == "Doubles x."
    replacement = agent.add_action_spec(action_spec(double, description="Twice x."))
    assert agent.actions["Double"] is replacement


CarWithName = type("Car", (BaseModel,), {"__annotations__": {"name": str}})
CarWithWheels = type("Car", (BaseModel,), {"__annotations__": {"wheels": int}})


def with_first(car: CarWithName) -> None:  # type: ignore[valid-type]
    return None


def with_second(car: CarWithWheels) -> None:  # type: ignore[valid-type]
    return None


def test_conflicting_definitions_are_refused_when_added():
    box = container()
    agent = AbstractAgent(box)
    other = AbstractAgent(box)
    agent.add_action_spec(action_spec(with_first))
    before = box.info().wire()
    with pytest.raises(ContainerConfigurationError, match="defines the type 'Car' differently"):
        other.add_action_spec(action_spec(with_second))
    with pytest.raises(ContainerConfigurationError, match="'Car'"):
        agent.add_action_spec(action_spec(with_second, name="Other"))
    assert box.info().wire() == before  # refused changes leave the container as it was
    agent.add_action_spec(action_spec(with_second, name="WithFirst"))  # replacing the only user is fine
    assert box.info().image.definitions["Car"]["required"] == ["wheels"]


def test_a_new_agent_with_a_conflicting_type_is_refused_whole():
    box = container()
    AbstractAgent(box).add_action_spec(action_spec(with_first))
    stranger = AbstractAgent(agent_id="stranger")
    stranger.add_action_spec(action_spec(with_second))
    with pytest.raises(ContainerConfigurationError):
        box.add_agent(stranger)
    assert not box.has_agent("stranger") and stranger.container is None


def test_channels_and_default_hooks():
    agent = AbstractAgent()
    assert agent.description is None  # not AbstractAgent's own docstring
    agent.subscribe_channel("news")
    agent.subscribe_channel("news")
    assert agent.channels == {"news"}
    agent.unsubscribe_channel("news")
    agent.unsubscribe_channel("never")
    assert agent.channels == set()
    assert agent.dynamic_stream("x") is None


async def test_default_receive_message_keeps_the_message_as_the_sdk_does_and_logout_does_nothing():
    agent = AbstractAgent()
    assert agent.receive_message(Message(payload=1)) is None  # a plain method: SDK overrides call super()
    assert [m.payload for m in agent.messages] == [1]
    assert await agent.handle_logout("t") is None


def test_sdk_model_spellings():
    from flowmas.opaca import ArrayItems, Login, LoginMsg

    assert Parameter.ArrayItems is ArrayItems and StreamDescription.Mode.POST == "POST"
    parameter = Parameter(type="array", items=Parameter.ArrayItems(type="string"))
    assert parameter.wire() == {"type": "array", "required": True, "items": {"type": "string"}}
    login = LoginMsg(token="t", login=Login(username="u", password="pw-secret"))
    assert "pw-secret" not in repr(login) and "pw-secret" not in str(login)


def test_a_spec_prepares_arguments_with_its_own_definitions():
    from flowmas.errors import InvalidArgumentsError

    spec = action_spec(with_first)
    assert spec.prepare({"car": {"name": "a"}}) == {"car": CarWithName(name="a")}
    with pytest.raises(InvalidArgumentsError, match="does not match 'Car'"):
        spec.prepare({"car": {"wheels": 4}})
