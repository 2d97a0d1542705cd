"""`http_request`: outbound HTTP for agents without server-side request forgery.

Every hop (the first request and each redirect) is checked against the tenant's host
allowlist, resolved once, and every resolved address is checked against the network policy;
the connection then goes to the vetted address (Host header and TLS SNI keep the name), so a
DNS answer that changes between check and connect (rebinding) cannot redirect it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from stepline_executor.model import CallContext, ToolError, ToolOutput, ToolSpec
from stepline_executor.tools.base import ModelArguments
from stepline_executor.tools.netguard import IPAddress, NetworkPolicy, Resolver

__all__ = ["HttpArguments", "HttpRequest", "HttpSettings"]

_REDIRECTS = {301, 302, 303, 307, 308}
_SENSITIVE = {"authorization", "cookie", "proxy-authorization"}
_SHOWN_HEADERS = ("content-type", "content-length", "location", "retry-after", "etag")


class HttpArguments(BaseModel):
    """Arguments of `http_request`."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = Field(
        default="GET", description="HTTP method."
    )
    url: str = Field(min_length=1, max_length=2_048, description="Absolute http(s) URL.")
    headers: dict[str, str] = Field(
        default_factory=dict, max_length=30, description="Extra request headers."
    )
    body: str | None = Field(default=None, max_length=100_000, description="Request body text.")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Limits and policies of `http_request`."""

    policy: NetworkPolicy = field(default_factory=NetworkPolicy)
    # Host patterns per tenant (`*` key = any other tenant); no entry means no host at all.
    allowed_hosts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_response_bytes: int = 256 * 1024
    max_redirects: int = 5
    user_agent: str = "stepline-tool-executor/0.1"


@dataclass(frozen=True)
class HttpRequest:
    """The `http_request` tool."""

    spec: ToolSpec
    settings: HttpSettings
    resolver: Resolver
    client: httpx.AsyncClient
    arguments: ModelArguments[HttpArguments]

    @classmethod
    def build(
        cls, settings: HttpSettings, resolver: Resolver, client: httpx.AsyncClient, **limits: Any
    ) -> HttpRequest:
        """Describe the tool. `client` must not follow redirects nor trust proxy env vars."""
        arguments = ModelArguments(HttpArguments)
        spec = ToolSpec(
            name="http_request",
            description="Make an HTTP request to an allowed public host and get the status, "
            "main headers and body text (size-limited). Private and internal addresses are "
            "refused.",
            parameters=arguments.schema,
            idempotent=False,
            **limits,
        )
        return cls(spec, settings, resolver, client, arguments)

    def parse(self, arguments: dict[str, Any]) -> HttpArguments:
        """Validated arguments (the URL itself is checked when it runs, hop by hop)."""
        return self.arguments.parse(arguments)

    async def run(self, parsed: HttpArguments, context: CallContext) -> ToolOutput:
        """Send the request, following redirects only to places that pass every check."""
        method, url = parsed.method, _url(parsed.url)
        headers = {k: v for k, v in parsed.headers.items() if k.lower() != "host"}
        body = parsed.body.encode() if parsed.body is not None else None
        for _hop in range(self.settings.max_redirects + 1):
            response_or_next = await self._hop(context, method, url, headers, body)
            if isinstance(response_or_next, ToolOutput):
                return response_or_next
            status, location = response_or_next
            target = url.join(location)
            if target.host != url.host:
                headers = {k: v for k, v in headers.items() if k.lower() not in _SENSITIVE}
            if status == 303 or (status in (301, 302) and method == "POST"):
                method, body = "GET", None
            url = _url(str(target))
        raise ToolError(f"more than {self.settings.max_redirects} redirects")

    async def _hop(
        self,
        context: CallContext,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        body: bytes | None,
    ) -> ToolOutput | tuple[int, str]:
        address = await self._vetted_address(context.tenant_id, url)
        pinned = url.copy_with(host=str(address))
        request = self.client.build_request(
            method,
            pinned,
            headers={
                **headers,
                "Host": _authority(url),
                "User-Agent": self.settings.user_agent,
            },
            content=body,
            extensions={"sni_hostname": url.host} if url.scheme == "https" else {},
        )
        try:
            response = await self.client.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException:
            raise ToolError(f"{url.host} did not answer in time", retryable=True) from None
        except httpx.HTTPError as error:
            raise ToolError(
                f"request to {url.host} failed: {type(error).__name__}", retryable=True
            ) from None
        try:
            location = response.headers.get("location")
            if response.status_code in _REDIRECTS and location:
                return response.status_code, location
            data, truncated = await self._read(response)
        finally:
            await response.aclose()
        shown = {k: response.headers[k] for k in _SHOWN_HEADERS if k in response.headers}
        text = data.decode(response.encoding or "utf-8", errors="replace")
        return ToolOutput(
            json.dumps(
                {
                    "status": response.status_code,
                    "url": str(url),
                    "headers": shown,
                    "body": text,
                    "body_truncated": truncated,
                },
                ensure_ascii=False,
            )
        )

    async def _read(self, response: httpx.Response) -> tuple[bytes, bool]:
        limit = self.settings.max_response_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks)[:limit], True
        return b"".join(chunks), False

    async def _vetted_address(self, tenant_id: str, url: httpx.URL) -> IPAddress:
        host = url.host
        patterns = self.settings.allowed_hosts.get(
            tenant_id, self.settings.allowed_hosts.get("*", ())
        )
        if not any(fnmatchcase(host.lower(), p.lower()) for p in patterns):
            raise ToolError(f"host {host!r} is not on this tenant's allowlist for http_request")
        literal = _ip_literal(host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                addresses = list(await self.resolver.resolve(host, _port(url)))
            except OSError:
                raise ToolError(f"host {host!r} does not resolve") from None
        if not addresses:
            raise ToolError(f"host {host!r} does not resolve")
        for address in addresses:
            # One bad answer poisons the name: an attacker controls which one we would pick.
            reason = self.settings.policy.refusal(address)
            if reason:
                raise ToolError(f"refused to connect to {host!r}: {reason}")
        return addresses[0]


def _url(text: str) -> httpx.URL:
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError) as error:
        raise ToolError(f"invalid URL {text!r}: {error}") from None
    if url.scheme not in ("http", "https"):
        raise ToolError(f"only http and https URLs are allowed, not {url.scheme or 'none'!r}")
    if not url.host:
        raise ToolError(f"URL {text!r} has no host")
    if url.userinfo:
        raise ToolError("URLs with credentials (user:password@) are not allowed")
    return url


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _authority(url: httpx.URL) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port else host
