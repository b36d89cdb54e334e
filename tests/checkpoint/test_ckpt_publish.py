"""The one commit path (``checkpoint.publish``): what a manifest already in storage means,
the same for the single-rank writer, the multi-rank leader and DCP's coordinator."""

from __future__ import annotations

import logging
import pytest

from dtruntime.checkpoint import CheckpointManager, layout
from dtruntime.checkpoint.commit import PartReport, StepCommit, StorageView, scan_listing
from dtruntime.checkpoint.integrity import crc32c
from dtruntime.checkpoint.leader import LeaderCommitter
from dtruntime.checkpoint.manifest import decode_manifest
from dtruntime.checkpoint.publish import publish_manifest, sweep
from dtruntime.errors import CheckpointError
from dtruntime.protocol.messages import CommitOutcome, PartDone

TIMEOUT = 30


def part(storage, step: int, rank: int, data: bytes) -> PartReport:
    checksum = crc32c(data)
    storage.write_part(layout.part_key(step, rank, "none", checksum), data)
    return PartReport(step, rank, len(data), checksum, "none")


def commit_of(reports) -> StepCommit:
    commit = StepCommit(reports[0].step, len(reports))
    for report in reports:
        commit.add(report)
    return commit


def manifest_of(step: int, *reports: PartReport, created: float = 1.0, **metadata):
    assert all(report.step == step for report in reports)
    return commit_of(reports).manifest(created_unix=created, metadata=metadata)


def stored(storage, step: int):
    return decode_manifest(storage.read(layout.manifest_key(step)), expected_step=step)


def test_the_first_commit_writes_the_manifest_and_returns_it(storage):
    manifest = manifest_of(3, part(storage, 3, 0, b"a"), part(storage, 3, 1, b"b"), loss=0.5)
    assert publish_manifest(storage, manifest) == manifest
    assert stored(storage, 3) == manifest


def test_a_manifest_already_there_with_the_same_parts_and_metadata_is_a_success(storage, caplog):
    reports = part(storage, 3, 0, b"a"), part(storage, 3, 1, b"b")
    first = manifest_of(3, *reports, created=1.0, loss=0.5)
    publish_manifest(storage, first)
    with caplog.at_level(logging.WARNING, logger="dtruntime.checkpoint"):
        assert publish_manifest(storage, manifest_of(3, *reports, created=2.0, loss=0.5)) == first
    assert stored(storage, 3) == first and not caplog.records  # the first commit's manifest stays


def test_the_same_parts_with_other_metadata_succeed_keeping_the_first_metadata_with_a_warning(storage, caplog):
    reports = part(storage, 3, 0, b"a"), part(storage, 3, 1, b"b")
    first = manifest_of(3, *reports, by="rank 0")
    publish_manifest(storage, first)
    with caplog.at_level(logging.WARNING, logger="dtruntime.checkpoint"):
        assert publish_manifest(storage, manifest_of(3, *reports, by="rank 1")) == first
    assert stored(storage, 3).metadata == {"by": "rank 0"}
    assert "its metadata stays" in caplog.text


def test_a_manifest_already_there_naming_other_parts_is_refused_and_left_as_it_is(storage):
    first = manifest_of(3, part(storage, 3, 0, b"a"))
    publish_manifest(storage, first)
    with pytest.raises(CheckpointError, match="step 3 already exists .*naming other parts"):
        publish_manifest(storage, manifest_of(3, part(storage, 3, 0, b"other")))
    assert stored(storage, 3) == first


def test_an_unreadable_manifest_already_there_is_refused_and_left_as_it_is(storage):
    storage.write_manifest(layout.manifest_key(3), b"not a manifest")
    with pytest.raises(CheckpointError, match="step 3 already exists .*unreadable"):
        publish_manifest(storage, manifest_of(3, part(storage, 3, 0, b"a")))
    assert storage.read(layout.manifest_key(3)) == b"not a manifest"


def test_sweep_deletes_what_the_plan_names_and_reports_a_storage_failure_as_none(storage, caplog):
    for step in (1, 2, 3):
        publish_manifest(storage, manifest_of(step, part(storage, step, 0, b"%d" % step)))
    view = scan_listing(storage.list_files())
    plan = sweep(storage, view, keep_last_n=1, protected={3})
    assert plan is not None and plan.delete_committed == (1, 2)
    assert scan_listing(storage.list_files()).committed == (3,)

    class Failing:
        url = storage.url

        def delete_step(self, step, keys):
            raise OSError("read-only store")

    with caplog.at_level(logging.WARNING, logger="dtruntime.checkpoint"):
        assert sweep(Failing(), StorageView((1, 2), {}), keep_last_n=1, protected=()) is None
    assert "retention under" in caplog.text and "read-only store" in caplog.text


# The same meaning through each committer.


def test_the_single_rank_writer_succeeds_when_a_concurrent_commit_holds_the_same_bytes(storage, monkeypatch):
    with CheckpointManager(storage.url) as first:
        first.save_bytes(b"same", 1).result(TIMEOUT)
    with CheckpointManager(storage.url) as second:
        # The concurrent commit lands after this writer's existence check.
        monkeypatch.setattr(second._storage, "read_if_exists", lambda key: None)
        result = second.save_bytes(b"same", 1).result(TIMEOUT)
        assert result.step == 1 and second.load_bytes(1) == b"same"


def test_the_single_rank_writer_fails_when_a_concurrent_commit_holds_other_bytes(storage, monkeypatch):
    with CheckpointManager(storage.url) as first:
        first.save_bytes(b"first", 1).result(TIMEOUT)
    with CheckpointManager(storage.url) as second:
        monkeypatch.setattr(second._storage, "read_if_exists", lambda key: None)
        with pytest.raises(CheckpointError, match="step 1 already exists .*naming other parts"):
            second.save_bytes(b"second", 1).result(TIMEOUT)
        assert second.load_bytes(1) == b"first"


def test_the_leader_commits_over_the_same_parts_and_fails_over_other_parts(storage):
    data = [b"r0", b"r1"]
    reports = [part(storage, 5, rank, data[rank]) for rank in range(2)]
    done = tuple(PartDone(f"w{r.rank}", 0, 5, r.rank, r.size, r.checksum, "none", True) for r in reports)
    leader = LeaderCommitter(storage, 2, 5, lambda step: {"by": "second leader"}, lambda step: None)
    # Another leader's manifest lands between this leader's listing and its write.
    publish_manifest(storage, manifest_of(5, *reports, by="first leader"))
    assert leader._finish(commit_of(reports)) == (CommitOutcome.COMMITTED, ())
    assert stored(storage, 5).metadata == {"by": "first leader"}
    other = [reports[0], part(storage, 5, 1, b"other")]
    assert leader._finish(commit_of(other)) == (CommitOutcome.FAILED, ())
    assert leader.decide(5, done, ()) == (CommitOutcome.COMMITTED, ())  # storage says so



@pytest.mark.parametrize("same_dcp_metadata", [True, False])
def test_dcp_commit_over_a_concurrent_one_of_the_same_parts_succeeds_only_with_the_same_dcp_metadata(
    tmp_path, monkeypatch, same_dcp_metadata
):
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, MetadataIndex
    from torch.distributed.checkpoint.storage import WriteResult

    from dtruntime.checkpoint import dcp
    from dtruntime.checkpoint.dcp_metadata import ItemLocation, encode_metadata
    from dtruntime.checkpoint.integrity import format_checksum

    writer = dcp.DtruntimeStorageWriter(str(tmp_path), step=7, keep_last_n=5)
    report = part(writer.storage, 7, 0, b"item")
    index, location = MetadataIndex("item"), ItemLocation(0, 0, 4, None, ())
    metadata = Metadata(state_dict_metadata={"item": BytesStorageMetadata()})
    result = WriteResult(index=index, size_in_bytes=4, storage_data=(location, dcp._PartLocation(0, 4, report.checksum)))
    encoded = encode_metadata(metadata, {index: location}, dcp.DCP_VERSION)
    if not same_dcp_metadata:
        encoded += b"\0"
    name = layout.dcp_metadata_name(crc32c(encoded))
    record = {"name": name, "size": len(encoded), "crc32c": format_checksum(crc32c(encoded)), "version": dcp.DCP_VERSION}
    theirs = layout.dcp_metadata_key(7, name)
    listed = dcp.scan

    def scan_then_race(storage):
        view = listed(storage)  # another coordinator commits right after this listing
        storage.write_manifest(theirs, encoded)
        publish_manifest(storage, manifest_of(7, report, **{dcp.MANIFEST_KEY: record}))
        return view

    monkeypatch.setattr(dcp, "scan", scan_then_race)
    if same_dcp_metadata:
        writer.finish(metadata, [[result]])
    else:
        with pytest.raises(CheckpointError, match="step 7 already exists .*other DCP metadata"):
            writer.finish(metadata, [[result]])
    assert stored(writer.storage, 7).metadata == {dcp.MANIFEST_KEY: record}
    assert writer.storage.read(theirs) == encoded  # the committed step's DCP file is untouched
