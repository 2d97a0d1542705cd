"""The failover engine with scripted providers and a manual clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from stepline_router.clock import ManualClock
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.base import Provider
from stepline_router.providers.local import LocalProvider
from stepline_router.providers.scripted import ScriptedProvider, ScriptedStream
from stepline_router.router import CallFailed, CallSucceeded, ErrorKind, Router
from stepline_router.routes import RoutesConfig, parse_routes
from stepline_router.stream import Opened, TextDelta, ToolCallDelta, UsageDelta
from stepline_router.types import (
    Completion,
    EmbeddingInput,
    ModelRequest,
    Params,
    ToolChoice,
    Usage,
)
from tests.router.support import BOOK, PROVIDERS, request, routes, weather_tool

TWO = """
[deployments.primary]
provider = "scripted"
model = "cheap"
[deployments.fallback]
provider = "scripted"
model = "dear"
[routes.default]
deployments = ["primary", "fallback"]
"""

OK = Completion("ok", usage=Usage(100, 10))


def _router(
    provider: Provider, config: RoutesConfig, clock: ManualClock, **providers: Provider
) -> Router:
    return Router(
        routes=lambda: config,
        prices=lambda: BOOK,
        providers={"scripted": provider, **providers},
        credentials=StaticCredentials({"KEY": "sk-test-secret-value"}),
        clock=clock,
        random=lambda: 0.5,
    )


async def test_failover_on_connection_refused_and_trail() -> None:
    clock = ManualClock()
    scripted = ScriptedProvider(
        per_deployment={
            "primary": [ProviderError(Outcome.CONNECTION_FAILED, "refused")],
            "fallback": [OK],
        }
    )
    outcome = await _router(scripted, routes(TWO), clock).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "fallback"
    assert [(a.number, a.deployment, a.outcome) for a in outcome.attempts] == [
        (1, "primary", Outcome.CONNECTION_FAILED),
        (2, "fallback", Outcome.SUCCEEDED),
    ]
    assert outcome.attempts[0].cost == Decimal(0)
    assert outcome.attempts[1].cost == Decimal("0.0012")  # 100×10/M + 10×20/M
    assert clock.sleeps == []  # a refused connection fails over immediately


async def test_rate_limit_retry_honours_retry_after_then_succeeds() -> None:
    clock = ManualClock()
    scripted = ScriptedProvider(
        per_deployment={
            "primary": [ProviderError(Outcome.RATE_LIMITED, "429", retry_after_s=2.0), OK]
        }
    )
    outcome = await _router(scripted, routes(TWO), clock).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "primary"
    assert clock.sleeps == [2.0]  # max(jitter ≤ 0.005, Retry-After 2 s)
    assert outcome.attempts[0].retry_after_s == 2.0


async def test_retry_after_beyond_the_limit_fails_over_without_waiting() -> None:
    clock = ManualClock()
    scripted = ScriptedProvider(
        per_deployment={
            "primary": [ProviderError(Outcome.RATE_LIMITED, "429", retry_after_s=600)],
            "fallback": [OK],
        }
    )
    outcome = await _router(scripted, routes(TWO), clock).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "fallback"
    assert clock.sleeps == []


async def test_bad_request_fails_now_without_failover() -> None:
    scripted = ScriptedProvider(
        per_deployment={"primary": [ProviderError(Outcome.BAD_REQUEST, "x")]}
    )
    outcome = await _router(scripted, routes(TWO), ManualClock()).complete(request())
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.INVALID_REQUEST
    assert not outcome.retryable
    assert scripted.calls_to("fallback") == 0


async def test_all_down_reports_every_attempt_and_is_retryable() -> None:
    scripted = ScriptedProvider(default=ProviderError(Outcome.SERVER_ERROR, "500", status_code=500))
    outcome = await _router(scripted, routes(TWO), ManualClock()).complete(request())
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.ALL_DEPLOYMENTS_FAILED
    assert outcome.retryable
    # one retry per deployment
    assert [a.deployment for a in outcome.attempts] == ["primary"] * 2 + ["fallback"] * 2
    assert "primary: SERVER_ERROR" in outcome.message


async def test_deadline_across_attempts() -> None:
    clock = ManualClock()

    def slow_failure(deployment: object, req: ModelRequest) -> Completion:
        clock.advance(4)
        raise ProviderError(Outcome.OVERLOADED, "529", status_code=529)

    scripted = ScriptedProvider(default=slow_failure)
    config = routes(TWO, defaults="retries_per_deployment = 5")
    req = request()
    req = (
        ModelRequest(**{**req.__dict__, "deadline": clock.now() + timedelta(seconds=10)})
        if False
        else req
    )
    from dataclasses import replace

    req = replace(req, deadline=clock.now() + timedelta(seconds=10))
    outcome = await _router(scripted, config, clock).complete(req)
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.DEADLINE_EXCEEDED
    assert clock.monotonic() <= 10 + 4  # the attempt in flight at the deadline was the last
    assert len(scripted.calls) == 3
    # every attempt got at most what was left of the deadline
    assert scripted.calls[0].limits.total_s == 10


async def test_deadline_already_passed_makes_no_attempt() -> None:
    clock = ManualClock()
    scripted = ScriptedProvider(default=OK)
    req = replace(request(), deadline=clock.now() - timedelta(seconds=1))
    outcome = await _router(scripted, routes(TWO), clock).complete(req)
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.DEADLINE_EXCEEDED
    assert scripted.calls == []


async def test_circuit_opens_skips_primary_then_probes_and_recovers() -> None:
    clock = ManualClock()
    primary_up = [False]

    def primary(deployment: object, req: ModelRequest) -> Completion:
        if not primary_up[0]:
            raise ProviderError(Outcome.CONNECTION_FAILED, "refused")
        return OK

    scripted = ScriptedProvider(per_deployment={"fallback": [OK] * 200, "primary": []})
    scripted._per["primary"].extend([primary] * 200)
    config = routes(TWO, breaker="failure_threshold = 3\nwindow_s = 60\ncooldown_s = 30")
    router = _router(scripted, config, clock)
    for _ in range(3):
        assert isinstance(await router.complete(request()), CallSucceeded)
    assert scripted.calls_to("primary") == 3
    for _ in range(100):
        clock.advance(0.1)
        outcome = await router.complete(request())
        assert isinstance(outcome, CallSucceeded)
        assert outcome.deployment.name == "fallback"
        assert outcome.attempts[0].outcome is Outcome.CIRCUIT_OPEN
        assert not outcome.attempts[0].sent
    assert scripted.calls_to("primary") == 3  # the dead primary cost nothing
    clock.advance(30)
    primary_up[0] = True
    outcome = await router.complete(request())  # the half-open probe
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "primary"
    outcome = await router.complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "primary"


async def test_incomplete_stream_is_not_failed_over() -> None:
    cut = ScriptedStream(
        (
            Opened(200),
            UsageDelta(Usage(50, 3)),
            ToolCallDelta(0, "call_1", "get_weather", '{"ci'),
            ProviderError(Outcome.CONNECTION_FAILED, "reset"),
        )
    )
    scripted = ScriptedProvider(per_deployment={"primary": [cut], "fallback": [OK]})
    outcome = await _router(scripted, routes(TWO), ManualClock()).complete(request(stream=True))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.incomplete
    assert "tool call started: reset" in outcome.completion.incomplete_reason
    assert outcome.deployment.name == "primary"
    assert outcome.attempts[-1].outcome is Outcome.INCOMPLETE
    assert scripted.calls_to("fallback") == 0


async def test_a_streamed_request_cut_before_tool_output_fails_over() -> None:
    cut = ScriptedStream(
        (Opened(200), TextDelta("Hel"), ProviderError(Outcome.CONNECTION_FAILED, "reset"))
    )
    scripted = ScriptedProvider(per_deployment={"primary": [cut], "fallback": [OK]})
    outcome = await _router(scripted, routes(TWO), ManualClock()).complete(request(stream=True))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "ok"  # nothing was handed on: the fallback answers
    assert [(a.outcome, a.status_code) for a in outcome.attempts] == [
        (Outcome.CONNECTION_FAILED, 200),
        (Outcome.SUCCEEDED, 0),
    ]


async def test_unknown_route_and_no_eligible_deployment() -> None:
    scripted = ScriptedProvider(default=OK)
    router = _router(scripted, routes(TWO), ManualClock())
    unknown = await router.complete(request(route="nope"))
    assert isinstance(unknown, CallFailed)
    assert unknown.kind is ErrorKind.UNKNOWN_ROUTE
    no_tools = routes(
        '[deployments.a]\nprovider = "scripted"\nmodel = "cheap"\n'
        "capabilities = { tools = false }\n"
        '[routes.default]\ndeployments = ["a"]\n'
    )
    outcome = await _router(scripted, no_tools, ManualClock()).complete(
        request(tools=(weather_tool(),))
    )
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.NO_ELIGIBLE_DEPLOYMENT
    assert "does not support tools" in outcome.message
    # tool_choice none: tools are not needed, the deployment qualifies
    allowed = await _router(scripted, no_tools, ManualClock()).complete(
        request(tools=(weather_tool(),), params=Params(tool_choice=ToolChoice.NONE))
    )
    assert isinstance(allowed, CallSucceeded)


async def test_cost_cap_counts_spend_of_earlier_attempts() -> None:
    config = routes(
        '[deployments.primary]\nprovider = "scripted"\nmodel = "cheap"\n'
        '[deployments.backup]\nprovider = "scripted"\nmodel = "cheap"\n'
        '[routes.default]\ndeployments = ["primary", "backup"]\n',
        defaults="retries_per_deployment = 0",
    )
    failed = ProviderError(Outcome.SERVER_ERROR, "500", usage=Usage(900, 0))
    scripted = ScriptedProvider(per_deployment={"primary": [failed]}, default=OK)
    # Worst case of either ≈ 0.0082 fits the 0.009 cap, but not after the failed
    # attempt's 0.0009 was spent.
    outcome = await _router(scripted, config, ManualClock()).complete(
        request(max_cost=Decimal("0.009"))
    )
    assert isinstance(outcome, CallFailed)
    assert outcome.attempts[0].cost == Decimal("0.0009")
    assert "backup: the call's cost cap would be exceeded" in outcome.message
    assert scripted.calls_to("backup") == 0


async def test_cost_cap_below_every_deployment_is_budget_exceeded() -> None:
    scripted = ScriptedProvider(default=OK)
    outcome = await _router(scripted, routes(TWO), ManualClock()).complete(
        request(max_cost=Decimal("0.000001"))
    )
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.BUDGET_EXCEEDED
    assert scripted.calls == []


async def test_missing_credential_skips_the_deployment_with_its_name_only() -> None:
    config = routes(
        '[deployments.a]\nprovider = "scripted"\nmodel = "cheap"\ncredential_env = "NOT_SET"\n'
        '[deployments.b]\nprovider = "local"\nmodel = "stepline-local-1"\n'
        '[routes.default]\ndeployments = ["a", "b"]\n'
    )
    scripted = ScriptedProvider(default=OK)
    outcome = await _router(scripted, config, ManualClock(), local=LocalProvider()).complete(
        request()
    )
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "b"
    assert scripted.calls == []


async def test_credential_reaches_the_provider() -> None:
    config = routes(
        '[deployments.a]\nprovider = "scripted"\nmodel = "cheap"\ncredential_env = "KEY"\n'
        '[routes.default]\ndeployments = ["a"]\n'
    )
    scripted = ScriptedProvider(default=OK)
    await _router(scripted, config, ManualClock()).complete(request())
    assert scripted.calls[0].credential == "sk-test-secret-value"


async def test_a_route_with_no_reachable_deployment_names_what_is_missing() -> None:
    config = routes(
        '[deployments.a]\nprovider = "scripted"\nmodel = "cheap"\ncredential_env = "A_KEY"\n'
        '[deployments.b]\nprovider = "scripted"\nmodel = "dear"\ncredential_env = "B_KEY"\n'
        '[deployments.c]\nprovider = "anthropic"\nmodel = "claude-haiku-4-5"\n'
        '[routes.default]\ndeployments = ["a", "b", "c"]\n'
    )
    scripted = ScriptedProvider(default=OK)
    router = _router(scripted, config, ManualClock())
    outcome = await router.complete(request())
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.NO_ELIGIBLE_DEPLOYMENT
    assert not outcome.retryable  # nothing changes until someone sets a key
    assert outcome.message.startswith("route 'default' has no reachable deployment:")
    assert "a needs A_KEY" in outcome.message
    assert "b needs B_KEY" in outcome.message
    assert "c: provider 'anthropic' is not enabled" in outcome.message
    assert outcome.attempts == ()
    assert scripted.calls == []
    # The same, before any call: what a router logs at start.
    assert router.unreachable_routes() == {"default": outcome.message}


SHIPPED = Path(__file__).resolve().parents[3] / "deploy" / "config" / "routes.toml"


async def test_the_shipped_production_routes_fail_loudly_without_keys() -> None:
    config = parse_routes(SHIPPED.read_text(encoding="utf-8"), known_providers=PROVIDERS)
    router = Router(
        routes=lambda: config,
        prices=lambda: BOOK,
        providers={
            "openai": ScriptedProvider(default=OK),
            "anthropic": ScriptedProvider(),
            "local": LocalProvider(),
        },
        credentials=StaticCredentials(),
        clock=ManualClock(),
        random=lambda: 0.5,
    )
    for route in ("default", "fast", "reasoning"):
        outcome = await router.complete(request(route=route))
        assert isinstance(outcome, CallFailed), route  # never the offline stand-in
        assert "OPENAI_API_KEY" in outcome.message
        assert "ANTHROPIC_API_KEY" in outcome.message
    # The dev route stays the offline stand-in, by name only.
    local = await router.complete(request(route="local"))
    assert isinstance(local, CallSucceeded)
    assert local.deployment.provider == "local"


MIXED = """
[deployments.chat]
provider = "local"
model = "stepline-local-1"
[deployments.vectors]
provider = "local"
model = "stepline-local-1"
capabilities = { chat = false, embeddings = true }
[deployments.no-embed]
provider = "scripted"
model = "cheap"
capabilities = { embeddings = true }
[routes.embed]
deployments = ["no-embed", "chat", "vectors"]
[routes.chat]
deployments = ["vectors", "chat"]
"""


async def test_embeddings_and_chat_each_use_only_deployments_of_their_kind() -> None:
    clock = ManualClock()
    router = _router(ScriptedProvider(), routes(MIXED), clock, local=LocalProvider())
    embedded = await router.complete(
        replace(request(route="embed"), messages=(), embedding=EmbeddingInput(("a b", (1, 2)), 8))
    )
    assert isinstance(embedded, CallSucceeded)
    # `no-embed` declares embeddings but its provider has none; `chat` serves chat only.
    assert embedded.deployment.name == "vectors"
    assert [len(v) for v in embedded.completion.embeddings] == [8, 8]
    assert embedded.attempts[0].usage.output == 0
    chatted = await router.complete(request(route="chat"))
    assert isinstance(chatted, CallSucceeded)
    assert chatted.deployment.name == "chat"
