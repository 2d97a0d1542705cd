"""Provider adapters: one module per wire format over what they share, plus offline twins.

Wire formats: `openai` (and compatible servers), `azure`, `responses`, `anthropic`, `gemini`,
`bedrock`. Shared: `adapter` (one attempt, POSTed or streamed), `http` (transport, SSE, error
bodies), `events` (decoding stream events, numbering tool calls), `fields` (settings named per
format), `images` (URLs fetched for formats that take bytes), `turns`, `json_tools`. Offline:
`local` (the deterministic stand-in) and `scripted` (the tests' twin).
"""

from stepline_router.providers.base import AttemptLimits, Provider

__all__ = ["AttemptLimits", "Provider"]
