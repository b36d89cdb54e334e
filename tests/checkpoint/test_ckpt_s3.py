"""CheckpointManager against a real S3-protocol server (moto in server mode) through s3fs."""

from __future__ import annotations

import collections
import os

import fsspec
import pytest

from dtruntime import CheckpointManager
from dtruntime.checkpoint import layout
from dtruntime.errors import CheckpointError

TIMEOUT = 60


@pytest.fixture
def s3_store(s3_bucket) -> str:
    return f"s3://{s3_bucket}/run1"


class _RequestLog:
    """Counts S3 operations through botocore's ``before-call`` event on the s3fs client."""

    def __init__(self, fs) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        fs.ls("")  # make sure the client exists
        fs.s3.meta.events.register("before-call.s3", self._record)

    def _record(self, model, **_):
        self.counts[model.name] += 1

    def take(self) -> collections.Counter:
        counts, self.counts = self.counts, collections.Counter()
        return counts


def test_round_trip_retention_and_listing_on_s3(s3_store, s3_options):
    with CheckpointManager(s3_store, backend="s3", keep_last_n=2, storage_options=s3_options) as manager:
        for step in range(4):
            manager.save_bytes(os.urandom(3000) + bytes(step * 1000), step).result(TIMEOUT)
        manager.flush_sync(TIMEOUT)  # retention runs after each commit
        assert manager.list_checkpoints_sync() == [2, 3]
        assert manager.load_bytes(2)[3000:] == bytes(2000)
    keys = fsspec.filesystem("s3", **s3_options).find(s3_store)
    assert {layout.split_key(k.split("/run1/", 1)[1])[0] for k in keys} == {2, 3}


def test_a_step_another_process_commits_after_this_one_listed_it_in_flight_loads(s3_store, s3_options):
    """Found by the S3 crash soak: a stale directory listing hid a manifest written since."""
    reader = CheckpointManager(s3_store, backend="s3", storage_options=s3_options)
    # Another process: its own filesystem object, so nothing it writes touches the reader's.
    writer = CheckpointManager(s3_store, backend="s3", storage_options={**s3_options, "skip_instance_cache": True})
    with reader, writer:
        writer.save_bytes(b"zero", 0).result(TIMEOUT)
        stray = f"{s3_store}/{layout.step_dir(1)}/part-00001-none-00000000.bin"
        fsspec.filesystem("s3", skip_instance_cache=True, **s3_options).pipe_file(stray, b"x")  # step 1 in flight
        assert reader.list_checkpoints_sync() == [0]
        writer.save_bytes(b"one", 1).result(TIMEOUT)
        assert reader.list_checkpoints_sync() == [0, 1]
        assert reader.load_bytes() == b"one"


def test_one_put_per_part_plus_manifest_and_no_copies(s3_store, s3_options):
    with CheckpointManager(s3_store, storage_options=s3_options, compression="none") as manager:
        log = _RequestLog(manager._storage.fs)
        manager.save_bytes(os.urandom(100_000), 1).result(TIMEOUT)
        manager.flush_sync(TIMEOUT)
        small = log.take()
        assert small["PutObject"] == 2  # part + manifest
        manager._storage.multipart_chunksize = 5 << 20
        manager.save_bytes(os.urandom(12 << 20), 2).result(TIMEOUT)
        manager.flush_sync(TIMEOUT)
        large = log.take()
        assert large["PutObject"] == 1  # manifest
        assert large["CreateMultipartUpload"] == 1 and large["CompleteMultipartUpload"] == 1
        assert large["UploadPart"] == 3
        for counts in (small, large):
            assert counts["CopyObject"] == 0 and counts["UploadPartCopy"] == 0
            assert set(counts) <= {
                "PutObject", "GetObject", "HeadObject", "ListObjectsV2", "DeleteObjects",
                "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
            }, counts
        assert manager.load_bytes(2)[:16] and len(manager.load_bytes(2)) == 12 << 20


def test_manifest_put_is_create_only_on_s3(s3_store, s3_options):
    with CheckpointManager(s3_store, storage_options=s3_options) as manager:
        manager.save_bytes(b"first", 1).result(TIMEOUT)
        with pytest.raises(FileExistsError):
            manager._storage.write_manifest(layout.manifest_key(1), b"overwrite attempt")
        assert manager.load_bytes(1) == b"first"
    with CheckpointManager(s3_store, storage_options=s3_options) as other:
        with pytest.raises(CheckpointError, match="step 1 already exists"):
            other.save_bytes(b"second", 1).result(TIMEOUT)
        assert other.load_bytes(1) == b"first"


def test_corrupt_part_on_s3_is_detected_and_named(s3_store, s3_options):
    fs = fsspec.filesystem("s3", **s3_options)
    with CheckpointManager(s3_store, storage_options=s3_options, compression="none") as manager:
        manager.save_bytes(b"older", 1).result(TIMEOUT)
        manager.save_bytes(b"0123456789" * 10, 2).result(TIMEOUT)
        part = next(k for k in fs.find(s3_store) if "step-000000000002/part-" in k)
        data = bytearray(fs.cat_file(part))
        data[50] ^= 0x04
        fs.pipe_file(part, bytes(data))
        with pytest.raises(CheckpointError, match=rf"step 2 rank 0: .*{part.rsplit('/', 1)[1]} crc32c"):
            manager.load_bytes(2)
        assert manager.load_bytes() == b"older"  # with no step, load falls back past it
        assert manager.list_checkpoints_sync(verify=True) == [1]
        assert manager.newest_valid_step() == 1


def test_unreachable_endpoint_gives_a_clear_error(s3_options):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    options = dict(s3_options, endpoint_url=f"http://127.0.0.1:{dead_port}",
                   config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2})
    with CheckpointManager("s3://nowhere/x", storage_options=options) as manager:
        handle = manager.save_bytes(b"data", 1)
        with pytest.raises(CheckpointError, match=r"step 1: cannot reach s3://nowhere/x/step-000000000001/MANIFEST"):
            handle.result(TIMEOUT)
        with pytest.raises(CheckpointError, match="cannot list checkpoints under s3://nowhere/x"):
            manager.list_checkpoints_sync()


def test_kill_9_during_s3_saves_never_lists_an_unloadable_step(s3_store, s3_options, crash_harness):
    summary = crash_harness.run_kill_loop(s3_store, kills=5, seed=3, backend="s3", options=s3_options)
    assert summary["violations"] == []
    assert summary["newest_committed_after_last_kill"] >= 0
