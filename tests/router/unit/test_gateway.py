"""The gateway use case: keys, model resolution, worst-case reservation, settlement, usage."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from stepline_keys import PermissionDeniedError, Principal, Scope, UnauthenticatedError
from stepline_router.clock import ManualClock
from stepline_router.credentials import StaticCredentials
from stepline_router.devkey import DevKeyAuthenticator
from stepline_router.errors import Outcome, ProviderError
from stepline_router.gateway import (
    Gateway,
    GatewayRequest,
    UnknownModelError,
    UsageBacklogError,
)
from stepline_router.outbox import USAGE_UNSENT, Outbox
from stepline_router.providers.scripted import ScriptedProvider
from stepline_router.router import CallSucceeded, Router
from stepline_router.types import Completion, Message, Params, Role, Usage
from tests.router.keys_twin import MemoryKeys, MemoryQuotas
from tests.router.support import BOOK, routes

CONFIG = routes(
    """
[deployments.cheap]
provider = "scripted"
model = "cheap"
capabilities = { max_output_tokens = 1000 }
[deployments.dear]
provider = "scripted"
model = "dear"
capabilities = { max_output_tokens = 2000 }
[routes.default]
deployments = ["cheap", "dear"]
[routes.premium]
deployments = ["dear"]
"""
)
ACME = Principal("k1", "acme", frozenset({Scope.MODELS_CALL}))
CHEAP_ONLY = Principal("k2", "beta", frozenset({Scope.MODELS_CALL}), models=frozenset({"cheap"}))
HI = GatewayRequest("default", (Message(Role.USER, "hi"),), params=Params(max_output_tokens=100))


class _Recorder:
    """Publishes usage batches; fails the next `failures` publishes (a broker away)."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[Any] = []
        self.batches = 0
        self.failures = failures

    async def __call__(self, calls: Sequence[Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        self.batches += 1
        self.calls.extend(calls)


def _gateway(provider: ScriptedProvider, quotas: MemoryQuotas, recorder: _Recorder) -> Gateway:
    router = Router(
        routes=lambda: CONFIG,
        prices=lambda: BOOK,
        providers={"scripted": provider},
        credentials=StaticCredentials({}),
        clock=ManualClock(),
        random=lambda: 0.5,
    )
    keys = MemoryKeys({"sk-acme": ACME, "sk-cheap": CHEAP_ONLY})
    return Gateway(
        router=router,
        routes=lambda: CONFIG,
        prices=lambda: BOOK,
        authenticator=keys,
        quotas=quotas,
        publish_usage=recorder,
    )


async def test_reserves_the_dearest_worst_case_and_settles_what_every_attempt_cost() -> None:
    provider = ScriptedProvider(
        per_deployment={
            "cheap": [ProviderError(Outcome.SERVER_ERROR, "boom", usage=Usage(40, 0))] * 2,
            "dear": [Completion("ok", usage=Usage(40, 10))],
        }
    )
    quotas, recorder = MemoryQuotas(), _Recorder()
    gateway = _gateway(provider, quotas, recorder)
    principal = gateway.authenticate("sk-acme")
    call = await gateway.start(principal, HI, "chatcmpl-1")
    outcome = await call.complete()
    assert isinstance(outcome, CallSucceeded)
    await gateway.drain(timeout_s=5)
    ((key, reserved, tokens),) = quotas.reserved
    # dear at its worst: the estimated prompt and 100 output tokens at 10/20 per Mtok.
    prompt = tokens - 100
    assert reserved == Decimal(prompt * 10 + 100 * 20) / 1_000_000
    assert key == "k1"
    # Settled: two failed cheap attempts (40 input each at 1/M) and the dear answer.
    spent = Decimal(2 * 40 * 1 + 40 * 10 + 10 * 20) / 1_000_000
    assert quotas.settled == [("k1", spent, 40 + 40 + 50)]
    ((request, recorded),) = recorder.calls
    assert request.tenant_id == "acme"  # from the key, never from the request
    assert [a.outcome for a in recorded.attempts] == [
        Outcome.SERVER_ERROR,
        Outcome.SERVER_ERROR,
        Outcome.SUCCEEDED,
    ]


async def test_a_keys_model_allow_list_keeps_other_deployments_out() -> None:
    provider = ScriptedProvider(
        per_deployment={"cheap": [ProviderError(Outcome.CONNECTION_FAILED, "refused")]}
    )
    gateway = _gateway(provider, MemoryQuotas(), _Recorder())
    principal = gateway.authenticate("sk-cheap")
    outcome = await (await gateway.start(principal, HI, "chatcmpl-2")).complete()
    assert provider.calls_to("dear") == 0
    assert not isinstance(outcome, CallSucceeded)
    with pytest.raises(PermissionDeniedError):
        await gateway.start(principal, GatewayRequest("premium", HI.messages), "chatcmpl-3")
    assert [e.name for e in gateway.models(principal)] == ["default", "cheap"]


async def test_model_names_a_route_or_a_deployment() -> None:
    provider = ScriptedProvider(default=Completion("ok", usage=Usage(1, 1)))
    gateway = _gateway(provider, MemoryQuotas(), _Recorder())
    call = await gateway.start(ACME, GatewayRequest("dear", HI.messages), "chatcmpl-4")
    outcome = await call.complete()
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "dear"
    with pytest.raises(UnknownModelError):
        await gateway.start(ACME, GatewayRequest("gpt-9", HI.messages), "chatcmpl-5")


async def test_keys_without_the_scope_are_refused() -> None:
    keys = MemoryKeys({"sk-ro": Principal("k3", "acme", frozenset({Scope.RUNS_READ}))})
    gateway = Gateway(
        router=_gateway(ScriptedProvider(), MemoryQuotas(), _Recorder()).router,
        routes=lambda: CONFIG,
        prices=lambda: BOOK,
        authenticator=keys,
        quotas=MemoryQuotas(),
        publish_usage=_Recorder(),
    )
    with pytest.raises(PermissionDeniedError):
        gateway.authenticate("sk-ro")
    with pytest.raises(UnauthenticatedError):
        gateway.authenticate(None)


def test_the_dev_authenticator_is_never_an_open_door() -> None:
    nobody = DevKeyAuthenticator(None, "dev")
    for secret in (None, "", "anything"):
        with pytest.raises(UnauthenticatedError):
            nobody.authenticate(secret)
    dev = DevKeyAuthenticator("sk-dev", "dev")
    assert dev.authenticate("sk-dev").tenant_id == "dev"
    for secret in (None, "sk-de", "sk-dev2"):
        with pytest.raises(UnauthenticatedError):
            dev.authenticate(secret)


async def test_a_failed_usage_publish_is_retried_until_the_broker_takes_it() -> None:
    provider = ScriptedProvider(default=Completion("ok", usage=Usage(1, 1)))
    quotas, recorder = MemoryQuotas(), _Recorder(failures=4)
    gateway = _gateway(provider, quotas, recorder)
    gateway.usage = Outbox(recorder, pauses_s=(0.001,))
    for n in range(3):
        await (await gateway.start(ACME, HI, f"chatcmpl-{n}")).complete()
    assert await gateway.drain(timeout_s=5) == 0
    # Four failed publishes, then every call's usage arrives, once, in order.
    assert [r.call_id for r, _ in recorder.calls] == ["chatcmpl-0", "chatcmpl-1", "chatcmpl-2"]
    assert recorder.failures == 0
    assert len(quotas.settled) == 3


async def test_usage_is_published_in_batches_not_one_call_at_a_time() -> None:
    recorder = _Recorder()
    outbox: Outbox[int] = Outbox(recorder, max_batch=100)
    for n in range(250):
        outbox.put(n)
    assert await outbox.close(timeout_s=5) == 0
    assert recorder.calls == list(range(250))
    assert recorder.batches == 3


async def test_usage_still_unsent_at_the_deadline_is_counted_never_silently_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = _Recorder(failures=1_000_000)
    outbox: Outbox[str] = Outbox(recorder, pauses_s=(0.01,))
    before = USAGE_UNSENT._value.get()
    outbox.put("usage-of-tenant-secret-call")
    outbox.put("another")
    assert await outbox.close(timeout_s=0.1) == 2
    assert USAGE_UNSENT._value.get() - before == 2
    assert "usage-of-tenant-secret-call" not in caplog.text  # a count, never the records
    assert any(getattr(r, "calls", None) == 2 for r in caplog.records)


async def test_a_full_usage_backlog_refuses_new_calls_instead_of_dropping_usage() -> None:
    provider = ScriptedProvider(default=Completion("ok", usage=Usage(1, 1)))
    recorder = _Recorder(failures=1_000_000)
    gateway = _gateway(provider, MemoryQuotas(), recorder)
    gateway.usage = Outbox(recorder, capacity=1, pauses_s=(0.01,))
    await (await gateway.start(ACME, HI, "chatcmpl-a")).complete()
    await asyncio.sleep(0)  # the settlement task puts the usage in the outbox
    with pytest.raises(UsageBacklogError):
        await gateway.start(ACME, HI, "chatcmpl-b")
    assert await gateway.drain(timeout_s=0.05) == 1
