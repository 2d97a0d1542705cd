"""Webhook tools declared in config: POST the arguments as JSON with an `Idempotency-Key`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from stepline_executor.model import (
    CallContext,
    ToolError,
    ToolInterruptedError,
    ToolNotSentError,
    ToolOutput,
    ToolSpec,
)
from stepline_executor.tools.base import SchemaArguments

__all__ = ["Webhook"]

_ERROR_BODY_CHARS = 500


@dataclass(frozen=True)
class Webhook:
    """One configured webhook tool. `headers` may carry secrets: they never reach outputs."""

    spec: ToolSpec
    url: str
    client: httpx.AsyncClient
    arguments: SchemaArguments
    headers: Mapping[str, str] = field(default_factory=dict)

    def parse(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Arguments valid against the configured schema."""
        return self.arguments.parse(arguments)

    async def run(self, parsed: dict[str, Any], context: CallContext) -> ToolOutput:
        """POST the arguments; 2xx is the output, anything else a failure."""
        headers = {
            **self.headers,
            "Idempotency-Key": context.idempotency_key,
            "X-Stepline-Call-Id": context.call_id,
            "X-Stepline-Run-Id": context.run_id,
            "X-Stepline-Tenant": context.tenant_id,
        }
        progress = context.progress
        progress.sent = False

        async def trace(event: str, info: dict[str, Any]) -> None:
            # httpcore's trace hook: the first byte of the request is about to leave.
            if event.endswith("send_request_headers.started"):
                progress.sent = True

        try:
            response = await self.client.post(
                self.url,
                json=parsed,
                headers=headers,
                follow_redirects=False,
                extensions={"trace": trace},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            # No connection, so no request: the receiver cannot have acted on it.
            raise ToolNotSentError(
                f"webhook {self.spec.name!r} unreachable ({type(error).__name__}); nothing was sent"
            ) from None
        except httpx.TimeoutException:
            raise ToolInterruptedError(
                f"webhook {self.spec.name!r} did not answer in time"
            ) from None
        except httpx.HTTPError as error:
            raise ToolInterruptedError(
                f"webhook {self.spec.name!r} connection failed during the call"
                f" ({type(error).__name__})"
            ) from None
        if response.is_success:
            content_type = response.headers.get("content-type", "text/plain").split(";")[0]
            return ToolOutput(response.text or "{}", content_type or "text/plain")
        detail = response.text[:_ERROR_BODY_CHARS]
        raise ToolError(
            f"webhook {self.spec.name!r} answered HTTP {response.status_code}: {detail}",
            retryable=response.status_code == 429 or response.status_code >= 500,
        )
