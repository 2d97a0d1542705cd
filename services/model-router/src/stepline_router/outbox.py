"""Usage on its way to the broker: kept until acknowledged, sent in batches, flushed at shutdown.

A gateway call's answer never waits for the broker, so its `UsageRecorded` records wait here
instead. One worker publishes whatever is waiting as one batch (every record handed to the
producer at once, one wait for all acknowledgements) and retries a failed batch until the
broker takes it: the records keep their ids, so a batch sent twice is billed once. The outbox
is bounded by refusing new calls while it is full (`full`), never by dropping a record. At
shutdown `close` flushes it within a deadline; what is still unsent then is logged as a count
(never the records) and counted in a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

__all__ = ["USAGE_OUTBOX", "USAGE_PUBLISH_RETRIES", "USAGE_UNSENT", "Outbox"]

log = logging.getLogger(__name__)

T = TypeVar("T")

USAGE_OUTBOX = Gauge(
    "stepline_usage_outbox_calls",
    "Finished gateway calls whose usage records wait for the broker's acknowledgement.",
)
USAGE_PUBLISH_RETRIES = Counter(
    "stepline_usage_publish_retries",
    "Failed publishes of a batch of gateway usage records (each one retried until delivered).",
)
USAGE_UNSENT = Counter(
    "stepline_usage_unsent_calls",
    "Gateway calls whose usage was still unsent when shutdown's flush deadline passed.",
)
# Pauses between retries of a failed batch; the last one repeats until the broker is back.
_PAUSES_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class Outbox(Generic[T]):
    """Items waiting to be published by `publish`, in order, each until it was delivered."""

    def __init__(
        self,
        publish: Callable[[Sequence[T]], Awaitable[None]],
        *,
        capacity: int = 20_000,
        max_batch: int = 500,
        pauses_s: Sequence[float] = _PAUSES_S,
    ) -> None:
        self._publish = publish
        self.capacity = capacity
        self._max_batch = max_batch
        self._pauses = tuple(pauses_s)
        self._items: deque[T] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        """Whether the outbox holds its capacity (new calls are refused until it drains)."""
        return len(self._items) >= self.capacity

    def put(self, item: T) -> None:
        """Keep `item` until it is delivered (never refused: capacity is checked by callers
        before they start the work whose usage this is)."""
        self._items.append(item)
        USAGE_OUTBOX.inc()
        self._idle.clear()
        self._ready.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())

    async def _run(self) -> None:
        failures = 0
        while True:
            if not self._items:
                self._idle.set()
                self._ready.clear()
                await self._ready.wait()
                continue
            batch = [self._items[i] for i in range(min(self._max_batch, len(self._items)))]
            try:
                await self._publish(batch)
            except Exception as error:
                USAGE_PUBLISH_RETRIES.inc()
                pause = self._pauses[min(failures, len(self._pauses) - 1)]
                failures += 1
                # The count and the cause only: the records carry tenants' usage.
                log.warning(
                    "usage publish failed; retrying",
                    extra={"calls": len(batch), "retry": failures, "reason": str(error)},
                )
                await asyncio.sleep(pause)
                continue
            failures = 0
            for _ in batch:
                self._items.popleft()
            USAGE_OUTBOX.dec(len(batch))

    async def close(self, timeout_s: float) -> int:
        """Flush within `timeout_s`, then stop; the number of items left unsent (logged)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        unsent = len(self._items)
        if unsent:
            USAGE_UNSENT.inc(unsent)
            log.error(
                "usage of gateway calls left unsent at shutdown",
                extra={"calls": unsent, "deadline_s": timeout_s},
            )
        return unsent
