"""Reading a provider's answer and stream events: decoding, wrong shapes, numbering tool calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.http import json_or_malformed
from stepline_router.stream import Delta

__all__ = [
    "SHAPE_ERRORS",
    "CallNumbers",
    "EventParser",
    "decoded_object",
    "not_a",
    "wrong_shape",
]

# What reading a dict of the wrong shape raises (a missing key, a list for an object, …).
SHAPE_ERRORS = (KeyError, IndexError, AttributeError, TypeError, ValueError)


def decoded_object(data: str, status: int, what: str) -> dict[str, Any]:
    """The JSON object in `data`; MALFORMED_RESPONSE naming `what` when it is not one."""
    payload = json_or_malformed(data, status, what)
    if not isinstance(payload, dict):
        raise ProviderError(
            Outcome.MALFORMED_RESPONSE, f"{what} is not an object", status_code=status
        )
    return payload


def wrong_shape(what: str, error: Exception, status: int) -> ProviderError:
    """MALFORMED_RESPONSE for a stream event or chunk whose fields are not what they must be."""
    return ProviderError(
        Outcome.MALFORMED_RESPONSE,
        f"{what} has a wrong shape ({type(error).__name__})",
        status_code=status,
    )


def not_a(what: str, error: Exception, status: int) -> ProviderError:
    """MALFORMED_RESPONSE for a whole response body that is not `what` (e.g. "a message")."""
    return ProviderError(
        Outcome.MALFORMED_RESPONSE,
        f"response is not {what} ({type(error).__name__}: {error})",
        status_code=status,
    )


class CallNumbers:
    """Numbers tool calls 0, 1, … in the order they first appear, whatever a provider's index."""

    def __init__(self) -> None:
        self._numbers: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._numbers)

    def number(self, index: int) -> int:
        """Our number of the call the provider indexes `index` (a new one gets the next)."""
        return self._numbers.setdefault(index, len(self._numbers))


class EventParser(ABC):
    """A stream of JSON-object events that ends at one event (`done`); a `ChunkParser` base.

    Subclasses turn one decoded event into deltas (`_deltas`) and set `done` at their end
    marker; a payload that is no object or has a wrong shape is MALFORMED_RESPONSE.
    """

    end_marker = ""

    def __init__(self) -> None:
        self.done = False
        self.calls = CallNumbers()

    @property
    def ended(self) -> bool:
        """Whether the end marker came."""
        return self.done

    @property
    def complete(self) -> bool:
        """A stream is whole only with its end marker."""
        return self.done

    def _kind(self, event: str, payload: dict[str, Any]) -> str:
        """The event's kind: its SSE name unless the payload names itself."""
        return str(payload.get("type") or event)

    def feed(self, event: str, data: str, status: int) -> list[Delta]:
        """The deltas of one event; `ProviderError` for a malformed or error event."""
        payload = decoded_object(data, status, f"{event} event")
        kind = self._kind(event, payload)
        try:
            return self._deltas(kind, payload, status)
        except SHAPE_ERRORS as error:
            raise wrong_shape(f"{kind} event", error, status) from error

    @abstractmethod
    def _deltas(self, kind: str, data: dict[str, Any], status: int) -> list[Delta]:
        """The deltas of one well-formed event of kind `kind` (the wire format's own part)."""
