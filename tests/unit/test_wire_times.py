"""`stepline_vocab.wire.timestamp_to_proto` stores what `Timestamp.FromDatetime` stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from stepline_vocab import wire


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 12, 1, 22, 39, 1, 123456, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # before the epoch: nanos >= 0
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 29, 2, 30, tzinfo=timezone(timedelta(hours=-7, minutes=-30))),
        datetime(2026, 6, 1, 12, 0, 0, 500),  # naive: local time
    ],
)
def test_the_same_seconds_and_nanos_as_from_datetime(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value.astimezone(UTC))
    assert wire.timestamp_to_proto(value) == expected
