"""The outbound port every provider adapter implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from stepline_router.routes import Deployment
from stepline_router.types import Completion, ModelRequest

__all__ = ["AttemptLimits", "Provider"]


@dataclass(frozen=True, slots=True)
class AttemptLimits:
    """Timeouts of one attempt in seconds, already clipped to the call's remaining deadline."""

    connect_s: float
    first_byte_s: float
    total_s: float


class Provider(Protocol):
    """Sends one request to one deployment; raises `ProviderError` with a classified outcome."""

    async def complete(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """One attempt: the answer, or `ProviderError`."""
        ...
