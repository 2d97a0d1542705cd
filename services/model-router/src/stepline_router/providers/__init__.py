"""Provider adapters: OpenAI-compatible, Anthropic, the offline local stand-in, a scripted twin."""

from stepline_router.providers.base import AttemptLimits, Provider

__all__ = ["AttemptLimits", "Provider"]
