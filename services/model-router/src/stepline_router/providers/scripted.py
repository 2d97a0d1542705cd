"""Scripted provider for tests: answers (or errors) given per call, every request recorded."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass

from stepline_router.errors import ProviderError
from stepline_router.providers.base import AttemptLimits
from stepline_router.routes import Deployment
from stepline_router.stream import Delta, completion_deltas
from stepline_router.types import Completion, ModelRequest

__all__ = ["ScriptedCall", "ScriptedProvider", "ScriptedStream"]


@dataclass(frozen=True, slots=True)
class ScriptedStream:
    """A streamed answer played item by item: a delta is yielded, a `ProviderError` raised
    there, a number pauses that many seconds (a stall)."""

    items: tuple[Delta | ProviderError | float, ...]


Step = (
    Completion | ProviderError | ScriptedStream | Callable[[Deployment, ModelRequest], Completion]
)


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """One call the scripted provider received."""

    deployment: str
    request: ModelRequest
    limits: AttemptLimits
    credential: str | None


class ScriptedProvider:
    """Plays back `steps` in order (per deployment when given a dict), then `default`."""

    def __init__(
        self,
        steps: Iterable[Step] = (),
        *,
        per_deployment: dict[str, Iterable[Step]] | None = None,
        default: Step | None = None,
        delay_s: float = 0.0,
        continues_answers: bool = False,
    ) -> None:
        self.continues_answers = continues_answers
        # Requests are recorded whole, images included.
        self.sends_images = True
        self._steps: deque[Step] = deque(steps)
        self._per: dict[str, deque[Step]] = {
            name: deque(s) for name, s in (per_deployment or {}).items()
        }
        self._default = default
        self._delay_s = delay_s
        self.calls: list[ScriptedCall] = []

    def calls_to(self, deployment: str) -> int:
        """How many calls reached `deployment`."""
        return sum(call.deployment == deployment for call in self.calls)

    async def complete(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """The next scripted step for `deployment`."""
        step = await self._next(deployment, request, limits, credential)
        return self._completion(step, deployment, request)

    async def stream(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> AsyncGenerator[Delta, None]:
        """The next scripted step for `deployment`, streamed."""
        step = await self._next(deployment, request, limits, credential)
        if isinstance(step, ScriptedStream):
            async for delta in self._play(step):
                yield delta
            return
        for delta in completion_deltas(self._completion(step, deployment, request)):
            yield delta

    async def _next(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Step:
        self.calls.append(ScriptedCall(deployment.name, request, limits, credential))
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        queue = self._per.get(deployment.name, self._steps)
        step = queue.popleft() if queue else self._default
        if step is None:
            raise AssertionError(f"scripted provider has no step left for {deployment.name}")
        return step

    @staticmethod
    def _completion(step: Step, deployment: Deployment, request: ModelRequest) -> Completion:
        if isinstance(step, ProviderError):
            raise step
        if isinstance(step, Completion):
            return step
        if isinstance(step, ScriptedStream):
            raise AssertionError("a scripted stream is played, not returned")
        return step(deployment, request)

    @staticmethod
    async def _play(step: ScriptedStream) -> AsyncGenerator[Delta, None]:
        for item in step.items:
            if isinstance(item, ProviderError):
                raise item
            if isinstance(item, int | float):
                await asyncio.sleep(item)
                continue
            yield item
