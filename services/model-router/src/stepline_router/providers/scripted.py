"""Scripted provider for tests: answers (or errors) given per call, every request recorded."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from stepline_router.errors import ProviderError
from stepline_router.providers.base import AttemptLimits
from stepline_router.routes import Deployment
from stepline_router.types import Completion, ModelRequest

__all__ = ["ScriptedCall", "ScriptedProvider"]

Step = Completion | ProviderError | Callable[[Deployment, ModelRequest], Completion]


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
    ) -> None:
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
        self.calls.append(ScriptedCall(deployment.name, request, limits, credential))
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        queue = self._per.get(deployment.name, self._steps)
        step = queue.popleft() if queue else self._default
        if step is None:
            raise AssertionError(f"scripted provider has no step left for {deployment.name}")
        if isinstance(step, ProviderError):
            raise step
        if isinstance(step, Completion):
            return step
        return step(deployment, request)
