"""The commit position of a partition: one past the done prefix of its records in flight."""

from __future__ import annotations

from stepline_runtime.keyed import Progress, decode_done, encode_done


def test_the_position_moves_only_over_a_done_prefix() -> None:
    progress = Progress()
    for offset in (10, 11, 12, 13):
        progress.started(offset)
    progress.finished(12)
    progress.finished(11)
    assert progress.to_commit() == (10, "done:1,2")  # offset 10 still runs
    progress.finished(10)
    assert progress.to_commit() == (13, "")
    progress.committed = (13, "")
    assert progress.to_commit() is None
    progress.finished(13)
    assert progress.to_commit() == (14, "")
    assert progress.pending == {}


def test_gaps_in_offsets_are_fine() -> None:
    # Transaction markers and compacted records leave gaps between fetched offsets.
    progress = Progress()
    for offset in (3, 7, 9):
        progress.started(offset)
    progress.finished(7)
    progress.finished(3)
    assert progress.to_commit() == (9, "")
    progress.finished(9)
    assert progress.to_commit() == (10, "")


def test_an_unknown_offset_changes_nothing() -> None:
    progress = Progress()
    progress.started(1)
    progress.finished(5)
    assert progress.to_commit() == (1, "")
    assert progress.pending == {1: False}


def test_the_commit_names_records_done_beyond_the_first_one_still_running() -> None:
    progress = Progress()
    for offset in (20, 21, 22, 25):
        progress.started(offset)
    assert progress.to_commit() == (20, "")
    progress.finished(22)
    progress.finished(25)
    position, metadata = progress.to_commit() or (0, "")
    assert position == 20
    assert decode_done(position, metadata) == {22, 25}
    progress.committed = (position, metadata)
    assert progress.to_commit() is None
    progress.finished(20)
    progress.finished(21)
    assert progress.to_commit() == (26, "")


def test_done_metadata_fits_the_broker_limit_and_keeps_what_fits() -> None:
    done = set(range(1_001, 5_000, 2))
    metadata = encode_done(1_000, done)
    assert len(metadata) <= 3_000
    kept = decode_done(1_000, metadata)
    assert kept
    assert kept <= done
    assert min(kept) == 1_001


def test_foreign_or_broken_metadata_means_nothing_to_skip() -> None:
    assert decode_done(5, "") == set()
    assert decode_done(5, "written by another tool") == set()
    assert decode_done(5, "done:1,x") == set()
