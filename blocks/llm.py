"""The inference clients' configuration as Prefect Blocks, each a factory for its ``flowmas.llm`` client.

    AnthropicModel  (anthropic-model)  model, api_key (secret), base_url                     -> AnthropicClient
    OpenAIModel     (openai-model)     model, api_key (secret), base_url, api, organization  -> OpenAIClient
    BedrockModel    (bedrock-model)    model, region, endpoint_url, AWS keys (secret)        -> BedrockClient
    VertexModel     (vertex-model)     model, region, project_id, access token or service
                                       account JSON (secret), base_url                       -> VertexClient

Every block also holds call defaults (``max_tokens``, ``temperature``, ``timeout_seconds``) and, optionally,
prices in USD per million tokens (input, output, cache read, cache write): ``tasks.llm`` uses them to put a
cost next to each flow run's token usage. ``base_url`` points OpenAIModel at any OpenAI-compatible server
(vLLM, llama.cpp, Ollama: ``http://host:port/v1``).

Credentials are ``SecretStr``: Prefect stores them encrypted and shows them obscured; ``client()`` reveals them
only to hand them to the client, which keeps them out of its ``repr`` and scrubs them from error texts. Left
empty, each SDK's own lookup applies (``ANTHROPIC_API_KEY``, ``OPENAI_API_KEY``, boto3's chain, Application
Default Credentials). ``load_model_block("openai-model/prod")`` loads a saved one (``<name>`` alone when one
model block type has it).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from flowmas.errors import ConfigurationError
from flowmas.text import one_line, shorten

if TYPE_CHECKING:
    from flowmas.llm import BaseClient, RetryPolicy, Usage

__all__ = ["MODEL_BLOCKS", "AnthropicModel", "BedrockModel", "ModelBlock", "OpenAIModel", "VertexModel",
           "load_model_block"]


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None and value.get_secret_value() else None


class ModelBlock(Block):
    """What every model block offers: the model, call defaults, prices, and the client they configure."""

    provider: ClassVar[str] = ""

    model: str = Field(min_length=1, max_length=300, description="The provider's model id, e.g. claude-sonnet-4-5.")
    max_tokens: int = Field(default=4096, ge=1, le=1_048_576, description="Default largest answer, in tokens.")
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False,
                                      description="Default sampling temperature (empty: the provider's).")
    timeout_seconds: float = Field(default=600.0, gt=0, le=86_400, allow_inf_nan=False,
                                   description="Seconds one call may take.")
    input_price_per_mtok: float | None = Field(
        default=None, ge=0, le=1_000_000, allow_inf_nan=False, description="USD per million uncached input tokens.")
    output_price_per_mtok: float | None = Field(
        default=None, ge=0, le=1_000_000, allow_inf_nan=False, description="USD per million output tokens.")
    cache_read_price_per_mtok: float | None = Field(
        default=None, ge=0, le=1_000_000, allow_inf_nan=False, description="USD per million cache-read tokens.")
    cache_write_price_per_mtok: float | None = Field(
        default=None, ge=0, le=1_000_000, allow_inf_nan=False, description="USD per million cache-write tokens.")

    def client(self, *, retry: RetryPolicy | None = None) -> BaseClient[Any]:  # pragma: no cover - overridden
        """A new client of this configuration (``retry``: the client's own retry policy; default its own)."""
        raise NotImplementedError

    def call_defaults(self) -> dict[str, Any]:
        """Keyword arguments of ``complete``/``stream``/``tool_chain`` the client does not hold itself."""
        return {"temperature": self.temperature} if self.temperature is not None else {}

    @property
    def priced(self) -> bool:
        return self.input_price_per_mtok is not None or self.output_price_per_mtok is not None

    def cost(self, usage: Usage) -> float | None:
        """USD for ``usage`` at this block's prices (a missing cache price counts as the input price), or None."""
        if not self.priced:
            return None
        base = self.input_price_per_mtok or 0.0
        read = self.cache_read_price_per_mtok if self.cache_read_price_per_mtok is not None else base
        write = self.cache_write_price_per_mtok if self.cache_write_price_per_mtok is not None else base
        return (usage.input_tokens * base + usage.output_tokens * (self.output_price_per_mtok or 0.0)
                + usage.cache_read_input_tokens * read + usage.cache_write_input_tokens * write) / 1e6

    def label(self) -> str:
        """``provider/model``: what logs and artifacts show (never a credential)."""
        return f"{self.provider}/{self.model}"


class AnthropicModel(ModelBlock):
    """A Claude model through Anthropic's Messages API."""

    _block_type_name: ClassVar[str] = "Anthropic Model"
    _block_type_slug: ClassVar[str] = "anthropic-model"
    _description: ClassVar[str] = "A Claude model through Anthropic's API: model id, API key, call defaults, prices."
    provider: ClassVar[str] = "anthropic"

    api_key: SecretStr | None = Field(default=None, description="API key (empty: ANTHROPIC_API_KEY).")
    base_url: str | None = Field(default=None, max_length=2048, description="API base URL (empty: Anthropic's).")
    caching: bool = Field(default=True, description="Place prompt-caching breakpoints.")

    def client(self, *, retry: RetryPolicy | None = None) -> BaseClient[Any]:
        from flowmas.llm import AnthropicClient

        return AnthropicClient(self.model, api_key=_secret(self.api_key), base_url=self.base_url or None,
                               caching=self.caching, max_tokens=self.max_tokens, retry=retry,
                               timeout=self.timeout_seconds)


class OpenAIModel(ModelBlock):
    """An OpenAI model, or any OpenAI-compatible server (``base_url``)."""

    _block_type_name: ClassVar[str] = "OpenAI Model"
    _block_type_slug: ClassVar[str] = "openai-model"
    _description: ClassVar[str] = (
        "An OpenAI model (Chat Completions or Responses API), or an OpenAI-compatible server (vLLM, llama.cpp, "
        "Ollama) at base_url: model id, API key, call defaults, prices.")
    provider: ClassVar[str] = "openai"

    api_key: SecretStr | None = Field(default=None, description="API key (empty: OPENAI_API_KEY).")
    base_url: str | None = Field(default=None, max_length=2048,
                                 description="API base URL, e.g. http://localhost:8000/v1 (empty: OpenAI's).")
    api: Literal["chat", "responses"] = Field(default="chat", description="Chat Completions or the Responses API.")
    organization: str | None = Field(default=None, max_length=200, description="OpenAI organization id.")
    project: str | None = Field(default=None, max_length=200, description="OpenAI project id.")

    def client(self, *, retry: RetryPolicy | None = None) -> BaseClient[Any]:
        from flowmas.llm import OpenAIClient

        return OpenAIClient(self.model, api_key=_secret(self.api_key), base_url=self.base_url or None, api=self.api,
                            organization=self.organization, project=self.project, max_tokens=self.max_tokens,
                            retry=retry, timeout=self.timeout_seconds)


class BedrockModel(ModelBlock):
    """A model on Amazon Bedrock (Converse API)."""

    _block_type_name: ClassVar[str] = "Bedrock Model"
    _block_type_slug: ClassVar[str] = "bedrock-model"
    _description: ClassVar[str] = (
        "A model on Amazon Bedrock (Converse): model id, region, AWS credentials (empty: boto3's chain), call "
        "defaults, prices.")
    provider: ClassVar[str] = "bedrock"

    region: str | None = Field(default=None, max_length=64, description="AWS region (empty: boto3's).")
    endpoint_url: str | None = Field(default=None, max_length=2048, description="bedrock-runtime endpoint URL.")
    aws_access_key_id: SecretStr | None = Field(default=None, description="Access key id (empty: boto3's chain).")
    aws_secret_access_key: SecretStr | None = Field(default=None, description="Secret access key.")
    aws_session_token: SecretStr | None = Field(default=None, description="Session token (temporary credentials).")
    profile_name: str | None = Field(default=None, max_length=200, description="A profile of ~/.aws/config.")
    caching: bool = Field(default=False, description="Add cachePoint blocks (models with prompt caching).")

    def client(self, *, retry: RetryPolicy | None = None) -> BaseClient[Any]:
        from flowmas.llm import BedrockClient

        return BedrockClient(self.model, region=self.region, endpoint_url=self.endpoint_url or None,
                             aws_access_key_id=_secret(self.aws_access_key_id),
                             aws_secret_access_key=_secret(self.aws_secret_access_key),
                             aws_session_token=_secret(self.aws_session_token), profile_name=self.profile_name,
                             caching=self.caching, max_tokens=self.max_tokens, retry=retry,
                             timeout=self.timeout_seconds)


class VertexModel(ModelBlock):
    """Claude on Google Vertex AI."""

    _block_type_name: ClassVar[str] = "Vertex Model"
    _block_type_slug: ClassVar[str] = "vertex-model"
    _description: ClassVar[str] = (
        "Claude on Google Vertex AI: model id, region, project, an access token or a service account's JSON key "
        "(empty: Application Default Credentials), call defaults, prices.")
    provider: ClassVar[str] = "vertex"

    region: str | None = Field(default=None, max_length=64, description="Region, e.g. us-east5.")
    project_id: str | None = Field(default=None, max_length=200, description="Google Cloud project id.")
    access_token: SecretStr | None = Field(default=None, description="A bearer token (gcloud auth print-access-token).")
    service_account_info: SecretStr | None = Field(
        default=None, description="A service account's JSON key (needs the google-auth package).")
    base_url: str | None = Field(default=None, max_length=2048, description="API base URL (empty: Vertex's).")
    caching: bool = Field(default=True, description="Place prompt-caching breakpoints.")

    def client(self, *, retry: RetryPolicy | None = None) -> BaseClient[Any]:
        from flowmas.llm import VertexClient

        return VertexClient(self.model, region=self.region, project_id=self.project_id,
                            access_token=_secret(self.access_token), credentials=self._credentials(),
                            base_url=self.base_url or None, caching=self.caching, max_tokens=self.max_tokens,
                            retry=retry, timeout=self.timeout_seconds)

    def _credentials(self) -> Any:
        info = _secret(self.service_account_info)
        if info is None:
            return None
        try:
            parsed = json.loads(info)
        except ValueError:
            raise ConfigurationError("VertexModel.service_account_info is not JSON (paste the key file's "
                                     "contents).") from None
        try:
            from google.oauth2 import service_account  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            raise ConfigurationError("VertexModel.service_account_info needs the google-auth package "
                                     "(pip install google-auth), or give access_token instead.") from None
        try:
            return service_account.Credentials.from_service_account_info(
                parsed, scopes=["https://www.googleapis.com/auth/cloud-platform"])
        except (ValueError, KeyError) as exc:
            raise ConfigurationError(f"VertexModel.service_account_info is not a service account key "
                                     f"({type(exc).__name__}).") from None


MODEL_BLOCKS: tuple[type[ModelBlock], ...] = (AnthropicModel, OpenAIModel, BedrockModel, VertexModel)


def load_model_block(reference: str) -> ModelBlock:
    """The saved model block ``reference`` names: ``<slug>/<name>`` (``openai-model/prod``), or a ``<name>`` only
    one model block type has; every failure is a ``ConfigurationError`` naming what to fix."""
    from prefect.exceptions import ObjectNotFound

    text = reference.strip() if isinstance(reference, str) else ""
    slugs = {block.get_block_type_slug(): block for block in MODEL_BLOCKS}
    slug, _, name = text.rpartition("/")
    shown = repr(shorten(one_line(str(reference)), 80))
    if not name:
        raise ConfigurationError(f"Model block {shown} names no block: use '<name>' or '<slug>/<name>' "
                                 f"(slugs: {', '.join(slugs)}).")
    if slug and slug not in slugs:
        raise ConfigurationError(f"Model block {shown}: {slug!r} is not a model block type (use one of "
                                 f"{', '.join(slugs)}).")
    found: list[ModelBlock] = []
    for block_type in [slugs[slug]] if slug else list(MODEL_BLOCKS):
        try:
            found.append(cast(ModelBlock, block_type.load(name, _sync=True)))  # type: ignore[call-arg]
        except (ObjectNotFound, ValueError):
            continue
    if not found:
        raise ConfigurationError(f"No saved {slug or ' or '.join(slugs)} block is named {shown}: save one (e.g. "
                                 f"OpenAIModel(model=...).save({name!r})) or fix the name.")
    if len(found) > 1:
        raise ConfigurationError(f"Several model blocks are named {shown}: name one as '<slug>/<name>'.")
    return found[0]
