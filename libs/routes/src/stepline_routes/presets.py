"""Presets for OpenAI-compatible services: the one table of their base URLs, keys and quirks.

A deployment names a preset as its provider (`provider = "groq"`) and gets the preset's base
URL and key variable unless it sets its own `base_url` / `credential_env`. The router sends a
preset's calls with the Chat Completions adapter, adjusted by the preset's quirks; the price
book prices them under the preset's name (catalog ids: see deploy/config/pricebook.toml).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True, slots=True)
class Preset:
    """An OpenAI-compatible service: where it is, which key it takes, how it differs."""

    name: str
    base_url: str
    # The environment variable (or secret file) holding the key; "" for a local server.
    key_env: str
    # The request field for the output cap (OpenAI's own API wants `max_completion_tokens`).
    max_tokens_field: str = "max_tokens"
    # Whether to ask for usage on streams (`stream_options.include_usage`).
    stream_usage: bool = True
    # Request fields the service spells differently (OpenAI name → the service's).
    renamed: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""


def _table(*presets: Preset) -> Mapping[str, Preset]:
    return MappingProxyType({p.name: p for p in presets})


PRESETS: Mapping[str, Preset] = _table(
    Preset(
        "openrouter",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        notes="models are named vendor/model (openai/gpt-4o-mini); its optional attribution "
        "headers (HTTP-Referer, X-Title) go in the deployment's [headers]",
    ),
    Preset(
        "groq",
        "https://api.groq.com/openai/v1",
        "GROQ_API_KEY",
        max_tokens_field="max_completion_tokens",
        notes="one choice per call (n = 1); no logprobs",
    ),
    Preset("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    Preset(
        "fireworks",
        "https://api.fireworks.ai/inference/v1",
        "FIREWORKS_API_KEY",
        notes="models are named accounts/fireworks/models/NAME",
    ),
    Preset(
        "deepseek",
        "https://api.deepseek.com",
        "DEEPSEEK_API_KEY",
        notes="cached input is reported as usage.prompt_cache_hit_tokens (read as cached)",
    ),
    Preset(
        "mistral",
        "https://api.mistral.ai/v1",
        "MISTRAL_API_KEY",
        stream_usage=False,
        renamed={"seed": "random_seed"},
        notes="seed is sent as random_seed; streams carry usage on their last chunk unasked",
    ),
    Preset("xai", "https://api.x.ai/v1", "XAI_API_KEY"),
    Preset(
        "vllm",
        "http://127.0.0.1:8000/v1",
        "",
        notes="self-hosted (vllm serve); set credential_env when started with --api-key",
    ),
    Preset(
        "ollama",
        "http://127.0.0.1:11434/v1",
        "",
        notes="self-hosted; the model is an Ollama tag (llama3.2:3b)",
    ),
    Preset(
        "llamacpp",
        "http://127.0.0.1:8080/v1",
        "",
        notes="self-hosted llama.cpp server (llama-server); the model name is free text",
    ),
)
