"""What a service's composition root starts for its doors: the registry, and quotas if asked."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from stepline_keys.feeds import KafkaSpendLog, follow_keys, follow_spend
from stepline_keys.model import Limits
from stepline_keys.quotas import KeyQuotas
from stepline_keys.registry import KeyRegistry
from stepline_runtime.settings import ServiceSettings

__all__ = ["KeyServices", "key_services"]


@dataclass(frozen=True, slots=True)
class KeyServices:
    """The folded key registry and (for doors that meter calls) this instance's quotas."""

    registry: KeyRegistry
    quotas: KeyQuotas | None


@contextlib.asynccontextmanager
async def key_services(
    settings: ServiceSettings,
    *,
    client_id: str,
    clock: Callable[[], datetime],
    spend_currency: str | None = None,
    tenant_limits: Mapping[str, Limits] | None = None,
) -> AsyncIterator[KeyServices]:
    """Follow the keys topic (and, with `spend_currency`, the spend topic) while in the block.

    Returns once both are read to their current end, so the first call already sees every key.
    """
    registry = KeyRegistry(clock)
    async with contextlib.AsyncExitStack() as stack:
        keys = await follow_keys(settings, registry, client_id=client_id)
        stack.push_async_callback(keys.stop)
        quotas = None
        if spend_currency is not None:
            log = KafkaSpendLog(settings, source=client_id, currency=spend_currency, clock=clock)
            await log.start()
            stack.push_async_callback(log.stop)
            # A new id per process: a restart starts a new counter, the old one stays summed.
            quotas = KeyQuotas(
                registry.limits,
                log,
                clock,
                f"{client_id}-{uuid.uuid4().hex[:12]}",
                tenant_limits,
            )
            spend = await follow_spend(settings, quotas, client_id=client_id)
            stack.push_async_callback(spend.stop)
        yield KeyServices(registry, quotas)
