"""LeaderCommitter: a multi-rank step decided from storage alone (local and memory stores)."""

from __future__ import annotations

from dtruntime.checkpoint import layout
from dtruntime.checkpoint.commit import scan_listing
from dtruntime.checkpoint.integrity import crc32c
from dtruntime.checkpoint.leader import LeaderCommitter
from dtruntime.checkpoint.manifest import decode_manifest
from dtruntime.protocol.messages import CommitOutcome, PartDone

WORLD = 3


def write_part(storage, step: int, rank: int, data: bytes | None = None) -> PartDone:
    data = data if data is not None else f"{step}:{rank}".encode() * 10
    checksum = crc32c(data)
    storage.write_part(layout.part_key(step, rank, "none", checksum), data)
    return PartDone(f"w{rank}", 0, step, rank, len(data), checksum, "none", True)


def committer(storage, keep_last_n: int = 5) -> tuple[LeaderCommitter, list[int]]:
    seen: list[int] = []
    return LeaderCommitter(storage, WORLD, keep_last_n, lambda step: {"by": "leader"}, seen.append), seen


def test_all_parts_reported_and_stored_writes_the_manifest_once(storage):
    reports = tuple(write_part(storage, 4, rank) for rank in range(WORLD))
    leader, seen = committer(storage)
    assert leader.decide(4, reports, ()) == (CommitOutcome.COMMITTED, ())
    manifest = decode_manifest(storage.read(layout.manifest_key(4)), expected_step=4)
    assert [p.rank for p in manifest.parts] == [0, 1, 2] and manifest.metadata == {"by": "leader"}
    # A second leader (or a re-delivered CommitDue) finds the manifest: same answer, no rewrite.
    assert leader.decide(4, reports, ()) == (CommitOutcome.COMMITTED, ())
    assert seen == [4, 4]


def test_a_lost_rank_whose_part_is_durable_still_commits(storage):
    reports = tuple(write_part(storage, 4, rank) for rank in range(WORLD))
    leader, _ = committer(storage)
    assert leader.decide(4, reports[:2], (2,)) == (CommitOutcome.COMMITTED, ())


def test_a_missing_part_abandons_naming_the_lost_and_the_absent_ranks(storage):
    reports = (write_part(storage, 4, 0), PartDone("w1", 0, 4, 1, 10, 99, "none", True))  # rank 1's part is not there
    leader, seen = committer(storage)
    assert leader.decide(4, reports, (2,)) == (CommitOutcome.ABANDONED, (1, 2))
    assert 4 not in scan_listing(storage.list_files()).committed and seen == []


def test_a_failed_write_abandons_without_looking_further(storage):
    reports = tuple(write_part(storage, 4, rank) for rank in range(WORLD))
    failed = PartDone("w1", 0, 4, 1, 0, 0, "none", False)
    leader, _ = committer(storage)
    assert leader.decide(4, (reports[0], failed, reports[2]), (1,)) == (CommitOutcome.ABANDONED, (1,))
    assert 4 not in scan_listing(storage.list_files()).committed


def test_two_parts_for_one_rank_cannot_be_finished(storage):
    reports = tuple(write_part(storage, 4, rank) for rank in range(WORLD))
    write_part(storage, 4, 1, b"other bytes")
    leader, _ = committer(storage)
    outcome, missing = leader.decide(4, reports, ())
    assert outcome == CommitOutcome.ABANDONED and missing == (0, 1, 2)


def test_recovery_finishes_complete_steps_and_deletes_older_orphans(storage):
    leader, seen = committer(storage)
    for rank in range(WORLD):
        write_part(storage, 1, rank)
    leader.decide(1, (), ())  # committed
    write_part(storage, 0, 0)  # incomplete and older than the newest commit: an orphan
    for rank in range(WORLD):
        write_part(storage, 2, rank)  # complete, never committed (the old leader died)
    write_part(storage, 3, 1)  # incomplete and newer: ranks may still be writing it
    assert leader.recover() == [1, 2]
    view = scan_listing(storage.list_files())
    assert view.committed == (1, 2) and sorted(view.in_flight) == [3]
    assert seen == [1, 2]


def test_a_newer_commit_keeps_an_older_complete_step_for_its_late_decision(storage):
    older = tuple(write_part(storage, 10, rank) for rank in range(WORLD))
    write_part(storage, 5, 0)  # incomplete and older: no rank will ever finish it
    newer = tuple(write_part(storage, 40, rank) for rank in range(WORLD))
    leader, seen = committer(storage)
    assert leader.decide(40, newer, ()) == (CommitOutcome.COMMITTED, ())
    view = scan_listing(storage.list_files())
    assert sorted(view.in_flight) == [10], "the orphan goes, the complete step waiting for its decision stays"
    assert leader.decide(10, older, ()) == (CommitOutcome.COMMITTED, ())
    assert scan_listing(storage.list_files()).committed == (10, 40) and seen == [40, 10]
