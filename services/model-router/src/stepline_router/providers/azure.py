"""Azure OpenAI: the Chat Completions wire format at deployment URLs, with Azure's content filter.

The request and response bodies are OpenAI's (the `OpenAIProvider` code, not a copy); what
differs is where a request goes, how it authenticates and how a refusal is reported:
- `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…`. A routes entry's
  `base_url` is the resource endpoint (`https://NAME.openai.azure.com`, then the Azure
  deployment is named like the model) or the deployment's own URL
  (`…/openai/deployments/my-gpt4o`); either may end in `?api-version=…` (default
  `API_VERSION`). `model` stays the model's name, which is what the price book prices.
- The key goes in the `api-key` header; a credential written `Bearer <token>` (a Microsoft
  Entra ID access token) goes in `Authorization` instead.
- Azure's content filter refuses a prompt with 400 `code: content_filter` (details in
  `innererror.content_filter_result`) and an answer with `finish_reason: content_filter` (details
  in `choices[].content_filter_results`). Both become a CONTENT_REFUSED failure (never retried,
  never failed over) whose message names the filtered categories.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.adapter import request_headers
from stepline_router.providers.http import (
    ChunkParser,
    NowFn,
    error_from_response,
    safe_text,
)
from stepline_router.providers.openai import ChatChunkParser, OpenAIProvider
from stepline_router.routes import Deployment
from stepline_router.types import Completion, FinishReason, ModelRequest

__all__ = ["API_VERSION", "AzureOpenAIProvider", "azure_error", "azure_url", "filtered_categories"]

# The latest generally available data-plane API version when this was written.
API_VERSION = "2024-10-21"
# The first version that knows `max_completion_tokens` (older ones refuse it: send `max_tokens`).
_COMPLETION_TOKENS_SINCE = "2024-09-01-preview"
_DEPLOYMENTS = "/openai/deployments/"


def _api_version(deployment: Deployment) -> str:
    query = dict(parse_qsl(urlsplit(deployment.base_url).query))
    return query.get("api-version", API_VERSION)


def azure_url(deployment: Deployment) -> str:
    """The chat completions URL of `deployment` (see the module docstring for `base_url`)."""
    if not deployment.base_url:
        raise ProviderError(
            Outcome.BAD_REQUEST,
            f"deployment {deployment.name!r} needs base_url = https://RESOURCE.openai.azure.com",
        )
    parts = urlsplit(deployment.base_url)
    query = dict(parse_qsl(parts.query))
    version = query.pop("api-version", API_VERSION)
    path = parts.path.rstrip("/")
    if _DEPLOYMENTS not in f"{path}/":
        path = f"{path}{_DEPLOYMENTS}{deployment.model}"
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{parts.scheme}://{parts.netloc}{path}/chat/completions?api-version={version}{extra}"


def filtered_categories(results: Any) -> str:
    """`hate (high), jailbreak` from a content filter result object: the categories filtered."""
    if not isinstance(results, Mapping):
        return ""
    found = []
    for category, verdict in results.items():
        if isinstance(verdict, Mapping) and verdict.get("filtered"):
            severity = verdict.get("severity")
            found.append(f"{category} ({severity})" if severity else str(category))
    return ", ".join(found)


def azure_error(
    status: int, headers: Mapping[str, str], body: bytes, now: datetime
) -> ProviderError:
    """A classified error for a non-2xx Azure answer; a content filter names its categories."""
    error = error_from_response(status, headers, body, now)
    try:
        data = json.loads(body)
    except ValueError:
        return error
    detail = data.get("error") if isinstance(data, dict) else None
    if not isinstance(detail, dict):
        return error
    inner = detail.get("innererror") or {}
    codes = {detail.get("code"), inner.get("code") if isinstance(inner, dict) else None}
    if not codes & {"content_filter", "ResponsibleAIPolicyViolation"}:
        return error
    categories = filtered_categories(
        inner.get("content_filter_result") if isinstance(inner, dict) else None
    )
    return ProviderError(
        Outcome.CONTENT_REFUSED,
        safe_text(
            f"content filtered by Azure (prompt{': ' + categories if categories else ''}): "
            f"{detail.get('message') or ''}"
        ),
        status_code=status,
    )


def _check_chunk(chunk: dict[str, Any], status: int) -> None:
    """A streamed answer the content filter stopped fails as refused, naming the categories."""
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason") == "content_filter":
            categories = filtered_categories(choice.get("content_filter_results"))
            raise ProviderError(
                Outcome.CONTENT_REFUSED,
                f"content filtered by Azure (completion: {categories or 'unspecified'})",
                status_code=status,
            )


class AzureOpenAIProvider(OpenAIProvider):
    """Adapter for Azure OpenAI deployments (Chat Completions at deployment URLs)."""

    errors = staticmethod(azure_error)

    def __init__(self, client: httpx.AsyncClient, now: NowFn) -> None:
        # Reasoning deployments take only `max_completion_tokens`; every GA version has it.
        super().__init__(client, now, max_tokens_field="max_completion_tokens")

    def endpoint(
        self, deployment: Deployment, credential: str | None
    ) -> tuple[str, dict[str, str]]:
        """The deployment URL with its api-version; `api-key` (or an Entra bearer token)."""
        if credential and credential.lower().startswith("bearer "):
            return azure_url(deployment), request_headers(deployment, credential, scheme="")
        return azure_url(deployment), request_headers(deployment, credential, "api-key", "")

    def _request(
        self, deployment: Deployment, request: ModelRequest, credential: str | None, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        url, headers, body = super()._request(deployment, request, credential, stream)
        if "max_completion_tokens" in body and _api_version(deployment) < _COMPLETION_TOKENS_SINCE:
            body["max_tokens"] = body.pop("max_completion_tokens")
        return url, headers, body

    def parse(self, data: Any, status: int, request: ModelRequest) -> Completion:
        """The answer; an answer the content filter stopped is a CONTENT_REFUSED failure."""
        completion = super().parse(data, status, request)
        if completion.finish_reason is FinishReason.CONTENT_FILTER:
            choice = data["choices"][0]
            categories = filtered_categories(choice.get("content_filter_results"))
            refusal = (choice.get("message") or {}).get("refusal")
            reason = categories or (f"refusal: {refusal}" if refusal else "unspecified")
            raise ProviderError(
                Outcome.CONTENT_REFUSED,
                safe_text(f"content filtered by Azure (completion: {reason})"),
                status_code=status,
                usage=completion.usage,
            )
        return completion

    def chunk_parser(self, request: ModelRequest) -> ChunkParser:
        """A chunk parser that fails a stream the content filter stopped."""
        return ChatChunkParser(_check_chunk)
