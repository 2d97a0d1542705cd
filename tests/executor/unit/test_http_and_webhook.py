"""`http_request` against SSRF attempts, and webhook tools with their Idempotency-Key."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest

from stepline_executor.model import (
    CallContext,
    CallProgress,
    ToolError,
    ToolInterruptedError,
    ToolNotSentError,
    ToolSpec,
)
from stepline_executor.tools.base import SchemaArguments
from stepline_executor.tools.http import HttpRequest, HttpSettings
from stepline_executor.tools.netguard import NetworkPolicy, StaticResolver, SystemResolver
from stepline_executor.tools.webhook import Webhook
from tests.executor.fakes import LocalServer

CTX = CallContext(tenant_id="acme", run_id="r", call_id="r:1:0", idempotency_key="k-1", timeout_s=5)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=5) as c:
        yield c


def _tool(
    client: httpx.AsyncClient,
    *,
    allow: tuple[str, ...] = (),
    hosts: tuple[str, ...] = ("*",),
    resolver: StaticResolver | SystemResolver | None = None,
    max_bytes: int = 1_000,
) -> HttpRequest:
    settings = HttpSettings(
        policy=NetworkPolicy.from_strings(allow),
        allowed_hosts={"acme": hosts},
        max_response_bytes=max_bytes,
    )
    return HttpRequest.build(settings, resolver or SystemResolver(), client)


async def _get(tool: HttpRequest, url: str) -> dict[str, object]:
    output = await tool.run(tool.parse({"url": url}), CTX)
    return json.loads(output.text)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "embeds"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[fe80::1]/", "link-local"),
        ("http://localhost/", "loopback"),
        ("http://2130706433/", "loopback"),
    ],
)
async def test_private_and_internal_addresses_are_refused(
    client: httpx.AsyncClient, url: str, why: str
) -> None:
    with LocalServer() as server:
        with pytest.raises(ToolError, match=why):
            await _get(_tool(client), url)
        assert server.seen == []


async def test_a_name_resolving_to_loopback_is_refused(client: httpx.AsyncClient) -> None:
    resolver = StaticResolver({"innocent.example": ["93.184.216.34", "127.0.0.1"]})
    with pytest.raises(ToolError, match=r"127\.0\.0\.1 is a loopback address"):
        await _get(_tool(client, resolver=resolver), "http://innocent.example/")


async def test_connection_goes_to_the_vetted_address_with_the_original_host(
    client: httpx.AsyncClient,
) -> None:
    # "pinned.example" resolves once (to the test server); the request must go to that address
    # and carry the name in Host. A second lookup (rebinding) cannot happen: the system resolver
    # does not know the name at all.
    resolver = StaticResolver({"pinned.example": ["127.0.0.1"]})
    with LocalServer() as server:
        tool = _tool(client, allow=("127.0.0.1/32",), resolver=resolver)
        body = await _get(tool, f"http://pinned.example:{server.port}/hello")
    assert body["status"] == 200
    assert server.seen[0].headers["host"] == f"pinned.example:{server.port}"
    assert server.seen[0].path == "/hello"


async def test_a_redirect_to_a_private_address_is_refused(client: httpx.AsyncClient) -> None:
    def redirect(seen: object) -> tuple[int, dict[str, str], bytes]:
        return 302, {"location": "http://10.0.0.5/admin"}, b""

    with LocalServer(redirect) as server:
        tool = _tool(client, allow=("127.0.0.1/32",))
        with pytest.raises(ToolError, match=r"10\.0\.0\.5 is a private address"):
            await _get(tool, server.url("/start"))
        assert [s.path for s in server.seen] == ["/start"]


async def test_redirects_within_allowed_places_are_followed(client: httpx.AsyncClient) -> None:
    def respond(seen: object) -> tuple[int, dict[str, str], bytes]:
        path = getattr(seen, "path", "")
        if path == "/a":
            return 301, {"location": "/b"}, b""
        return 200, {"content-type": "text/plain"}, b"x" * 5_000

    with LocalServer(respond) as server:
        body = await _get(_tool(client, allow=("127.0.0.1/32",)), server.url("/a"))
    assert body["status"] == 200
    assert body["body_truncated"] is True
    assert body["body"] == "x" * 1_000


async def test_tenant_host_allowlist(client: httpx.AsyncClient) -> None:
    with LocalServer() as server:
        tool = _tool(client, allow=("127.0.0.1/32",), hosts=("api.example.com",))
        with pytest.raises(ToolError, match="not on this tenant's allowlist"):
            await _get(tool, server.url())
        assert server.seen == []


async def test_non_http_schemes_and_credentials_are_refused(client: httpx.AsyncClient) -> None:
    tool = _tool(client)
    with pytest.raises(ToolError, match="only http and https"):
        await _get(tool, "file:///etc/passwd")
    with pytest.raises(ToolError, match="credentials"):
        await _get(tool, "http://user:pw@example.com/")


async def test_webhook_posts_arguments_with_the_idempotency_key(client: httpx.AsyncClient) -> None:
    schema = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    with LocalServer() as server:
        hook = Webhook(
            ToolSpec(name="send_reply", description="d", parameters=schema, source="webhook"),
            server.url("/reply"),
            client,
            SchemaArguments(schema),
            {"Authorization": "Bearer secret-token"},
        )
        output = await hook.run(hook.parse({"id": "T-1"}), CTX)
    [seen] = server.seen
    assert seen.headers["idempotency-key"] == "k-1"
    assert seen.headers["authorization"] == "Bearer secret-token"
    assert json.loads(seen.body) == {"id": "T-1"}
    assert json.loads(output.text) == {"ok": 1}


async def test_webhook_http_errors_are_failures(client: httpx.AsyncClient) -> None:
    schema = {"type": "object"}
    with LocalServer(lambda s: (503, {}, b"down for maintenance")) as server:
        hook = Webhook(
            ToolSpec(name="h", description="d", parameters=schema),
            server.url(),
            client,
            SchemaArguments(schema),
        )
        with pytest.raises(ToolError, match="HTTP 503: down for maintenance") as raised:
            await hook.run({}, CTX)
    assert raised.value.retryable


async def test_webhook_refused_is_not_sent_and_unanswered_is_interrupted() -> None:
    schema = {"type": "object"}
    spec = ToolSpec(name="h", description="d", parameters=schema)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        async with httpx.AsyncClient(trust_env=False, timeout=0.3) as short:
            # Bound but not listening: the connection is refused, nothing can have arrived.
            refused = Webhook(spec, f"http://127.0.0.1:{port}/", short, SchemaArguments(schema))
            first = replace(CTX, progress=CallProgress())
            with pytest.raises(ToolNotSentError, match="nothing was sent"):
                await refused.run({}, first)
            assert first.progress.sent is False
            # Listening but never answering: the request went out, its effect is unknown.
            listener.listen()
            second = replace(CTX, progress=CallProgress())
            with pytest.raises(ToolInterruptedError, match="did not answer in time"):
                await refused.run({}, second)
            assert second.progress.sent is True
