"""Token counts: one type from a provider's response through pricing, run totals and billing."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tokens"]


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts; cached and cache-write are subsets of input, reasoning of output."""

    input: int = 0
    output: int = 0
    cached_input: int = 0
    cache_write_input: int = 0
    reasoning: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        """Component-wise sum."""
        return Tokens(
            self.input + other.input,
            self.output + other.output,
            self.cached_input + other.cached_input,
            self.cache_write_input + other.cache_write_input,
            self.reasoning + other.reasoning,
        )
