"""Import hygiene and optional dependencies: importing flowmas.llm loads no SDK and instruments nothing; each SDK
is imported by its adapter only; spans carry the gen_ai.* attributes when OpenTelemetry's SDK is installed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.servers.llm import LLMServer, Reply, ToolCall
from tests.servers.llm import Usage as WireUsage

LLM = Path(__file__).resolve().parents[2] / "flowmas" / "llm"
SDKS = {"anthropic": "anthropic.py", "openai": "openai.py", "boto3": "bedrock.py", "botocore": "bedrock.py",
        "opentelemetry": "telemetry.py"}


def test_importing_flowmas_llm_loads_no_sdk_and_no_telemetry() -> None:
    code = ("import sys, flowmas.llm; "
            "print(sorted(m for m in ('anthropic', 'openai', 'boto3', 'botocore', 'opentelemetry', 'httpx2') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_each_sdk_is_imported_by_its_adapter_only() -> None:
    offenders = []
    for file in LLM.glob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                allowed = SDKS.get(top)
                if allowed is not None and file.name not in (allowed, "vertex.py" if top == "anthropic" else ""):
                    offenders.append(f"{file.name} imports {name}")
    assert offenders == []


async def test_vertex_without_token_or_google_auth_says_what_to_install(llm_server: LLMServer) -> None:
    pytest.importorskip("anthropic")
    if _has("google.auth"):
        pytest.skip("google-auth is installed")
    from flowmas.errors import ConfigurationError
    from flowmas.llm import VertexClient

    client = VertexClient("claude@1", region="us-east5", project_id="p", base_url=llm_server.url + "/v1")
    try:
        with pytest.raises(ConfigurationError, match="google-auth"):
            await client.complete("Hi")
    finally:
        await client.aclose()
    assert llm_server.requests == []


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


async def test_spans_carry_gen_ai_attributes(llm_server: LLMServer) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from flowmas.llm import telemetry
    from tests.llm.test_contract import make_client

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = telemetry._tracer
    telemetry._tracer = provider.get_tracer("flowmas.llm")
    llm_server.enqueue(Reply(tool_calls=[ToolCall("_tool", {"x": "1"})], usage=WireUsage(input=10, output=3)),
                       Reply(text="done", usage=WireUsage(input=20, output=4, cache_read=5)))
    client = make_client("anthropic", llm_server.url)

    def _tool(x: str) -> str:
        """A tool."""
        return x

    try:
        await client.tool_chain("Hi", [_tool], max_tokens=64)
    finally:
        telemetry._tracer = saved
        await client.aclose()
    spans: dict[str, Any] = {}
    for span in exporter.get_finished_spans():
        spans.setdefault(span.name, []).append(span)
    chats = spans["chat claude-test"]
    assert len(chats) == 2 and "execute_tool _tool" in spans and "invoke_agent tool_chain" in spans
    attrs = dict(chats[1].attributes)
    assert attrs["gen_ai.system"] == "anthropic" and attrs["gen_ai.request.model"] == "claude-test"
    assert attrs["gen_ai.request.max_tokens"] == 64 and attrs["gen_ai.usage.input_tokens"] == 25
    assert attrs["gen_ai.usage.output_tokens"] == 4 and attrs["gen_ai.usage.cache_read.input_tokens"] == 5
    assert list(attrs["gen_ai.response.finish_reasons"]) == ["end_turn"]
