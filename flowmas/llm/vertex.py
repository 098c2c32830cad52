"""``VertexClient``: Claude on Google Vertex AI through the ``anthropic`` SDK's ``AsyncAnthropicVertex``.

Same Messages API, translation, caching and error mapping as ``AnthropicClient`` (provider ``"vertex"``);
the SDK sends ``rawPredict``/``streamRawPredict`` to ``{base_url}/projects/{project}/locations/{region}/…``.

Credentials: ``access_token=`` (a bearer token, e.g. from ``gcloud auth print-access-token``), or
``credentials=`` (a ``google.auth`` credentials object), or neither — then Application Default Credentials,
which need the optional ``google-auth`` package; without it the first call raises ``ConfigurationError``
saying so (the SDK's ``MissingDependencyError``, translated). ``region``/``project_id`` fall back to the SDK's
environment variables (``CLOUD_ML_REGION``, ``ANTHROPIC_VERTEX_PROJECT_ID``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anthropic

from flowmas.errors import ConfigurationError, LLMError
from flowmas.llm.anthropic import AnthropicClient
from flowmas.llm.retry import RetryPolicy


class VertexClient(AnthropicClient):
    """Claude on Vertex AI (``anthropic.AsyncAnthropicVertex``)."""

    provider = "vertex"

    def __init__(
        self,
        model: str,
        *,
        region: str | None = None,
        project_id: str | None = None,
        access_token: str | None = None,
        credentials: Any = None,
        base_url: str | None = None,
        caching: bool = True,
        max_tokens: int = 4096,
        retry: RetryPolicy | None = None,
        timeout: float = 600.0,
        connect_timeout: float = 5.0,
        default_headers: Mapping[str, str] | None = None,
        sdk_options: Mapping[str, Any] | None = None,
        thinking: int | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            model, api_key=access_token, base_url=base_url, caching=caching, max_tokens=max_tokens, retry=retry,
            timeout=timeout, connect_timeout=connect_timeout, default_headers=default_headers,
            sdk_options=sdk_options, thinking=thinking,
        )
        self.region = region
        self.project_id = project_id
        self._credentials = credentials

    def _new_sdk(self) -> Any:
        options: dict[str, Any] = {
            "max_retries": 0, "timeout": self._sdk_timeout(), "open_telemetry": False, **self._sdk_options,
        }
        for key, value in (("region", self.region), ("project_id", self.project_id),
                           ("access_token", self._api_key), ("credentials", self._credentials),
                           ("base_url", self.base_url)):
            if value is not None:
                options[key] = value
        if self._default_headers:
            options["default_headers"] = self._default_headers
        try:
            return anthropic.AsyncAnthropicVertex(**options)
        except ValueError as exc:  # no region / project
            raise ConfigurationError(f"VertexClient: {self._scrub(str(exc))}") from None
        except anthropic.AnthropicError as exc:
            raise LLMError(f"Cannot create the Vertex client: {self._scrub(str(exc))}", provider=self.provider,
                           model=self.model) from None

    def _translate(self, exc: BaseException) -> LLMError:
        if type(exc).__name__ == "MissingDependencyError":
            raise ConfigurationError(
                "VertexClient needs the google-auth package for Application Default Credentials "
                "(pip install google-auth), or pass access_token= / credentials=."
            ) from None
        return super()._translate(exc)
