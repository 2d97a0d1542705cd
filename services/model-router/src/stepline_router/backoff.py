"""Exponential backoff with full jitter (AWS architecture blog), random source injected."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["full_jitter"]


def full_jitter(retry: int, *, base_s: float, cap_s: float, random: Callable[[], float]) -> float:
    """Delay before retry number `retry` (0-based): uniform in [0, min(cap, base * 2**retry))."""
    ceiling = min(cap_s, base_s * 2.0 ** max(0, retry))
    return random() * ceiling
