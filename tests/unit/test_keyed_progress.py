"""The commit position of a partition: one past the done prefix of its records in flight."""

from __future__ import annotations

from stepline_runtime.keyed import Progress


def test_the_position_moves_only_over_a_done_prefix() -> None:
    progress = Progress()
    for offset in (10, 11, 12, 13):
        progress.started(offset)
    progress.finished(12)
    progress.finished(11)
    assert progress.to_commit() is None  # offset 10 still runs
    progress.finished(10)
    assert progress.to_commit() == 13
    progress.committed = 13
    assert progress.to_commit() is None
    progress.finished(13)
    assert progress.to_commit() == 14
    assert progress.pending == {}


def test_gaps_in_offsets_are_fine() -> None:
    # Transaction markers and compacted records leave gaps between fetched offsets.
    progress = Progress()
    for offset in (3, 7, 9):
        progress.started(offset)
    progress.finished(7)
    progress.finished(3)
    assert progress.to_commit() == 8
    progress.finished(9)
    assert progress.to_commit() == 10


def test_an_unknown_offset_changes_nothing() -> None:
    progress = Progress()
    progress.started(1)
    progress.finished(5)
    assert progress.to_commit() is None
    assert progress.pending == {1: False}
