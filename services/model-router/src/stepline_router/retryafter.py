"""One parser for every way a provider says when to come back."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["parse_duration", "retry_after_seconds"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# A bare number above this is an epoch timestamp, not a delay (no one asks for 30 years).
_EPOCH_THRESHOLD = 1_000_000_000


def parse_duration(text: str) -> float | None:
    """Seconds in an OpenAI-style reset duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`)."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def _seconds_or_date(value: str, now: datetime) -> float | None:
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if number != number or number in (float("inf"), float("-inf")):
            return None
        if number > _EPOCH_THRESHOLD:
            return number - now.timestamp()
        return number
    duration = parse_duration(value)
    if duration is not None:
        return duration
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()


def retry_after_seconds(headers: Mapping[str, str], now: datetime) -> float | None:
    """How long to wait before retrying, from response headers; None when they do not say.

    Precedence: `retry-after-ms`, then `Retry-After` (seconds or HTTP date), then the largest
    of the `x-ratelimit-reset*` / `anthropic-ratelimit-*-reset` values (delays, durations,
    epoch seconds or timestamps). Negative values (a date in the past) become 0.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is not None:
        parsed = _seconds_or_date(raw, now)
        if parsed is not None:
            return max(0.0, parsed)
    resets = [
        parsed
        for name, value in lowered.items()
        if name.startswith("x-ratelimit-reset")
        or (name.startswith("anthropic-ratelimit-") and name.endswith("-reset"))
        if (parsed := _seconds_or_date(value, now)) is not None
    ]
    return max(0.0, max(resets)) if resets else None
