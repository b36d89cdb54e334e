"""CheckpointManager against real local files and memory://: API, retention, bad input, corruption."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from dtruntime import CheckpointManager, Config
from dtruntime.checkpoint import layout
from dtruntime.errors import CheckpointError, ConfigError

TIMEOUT = 30


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "ckpt")
    return f"memory://ckpt-{uuid.uuid4().hex}"


def _writer_threads() -> list[threading.Thread]:
    names = ("dtruntime-checkpoint-writer", "dtruntime-checkpoint-janitor")
    return [t for t in threading.enumerate() if t.name in names]


def test_save_list_load_round_trip_newest_first(store):
    with CheckpointManager(store, keep_last_n=10) as manager:
        with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
            manager.load_bytes()
        payloads = {step: os.urandom(1000 + step) for step in (0, 5, 3)}
        handles = [manager.save_bytes(data, step) for step, data in payloads.items()]
        results = [h.result(TIMEOUT) for h in handles]
        assert [r.step for r in results] == [0, 5, 3] and all(r.codec == "none" for r in results)
        assert manager.list_checkpoints_sync() == [0, 3, 5]
        assert manager.load_bytes() == payloads[5]
        assert all(manager.load_bytes(s) == d for s, d in payloads.items())
        with pytest.raises(FileNotFoundError, match="step 4 is not committed"):
            manager.load_bytes(4)


def test_a_second_manager_sees_commits_and_refuses_an_existing_step(store):
    with CheckpointManager(store) as first:
        first.save_bytes(b"one", 1).result(TIMEOUT)
        with pytest.raises(CheckpointError, match="step 1 already exists"):
            first.save_bytes(b"again", 1)  # known committed: refused before queueing
    with CheckpointManager(store) as second:
        assert second.list_checkpoints_sync() == [1]
        handle = second.save_bytes(b"other", 1)
        with pytest.raises(CheckpointError, match="step 1 already exists"):
            handle.result(TIMEOUT)
        second.flush_sync(TIMEOUT)  # the failure was reported through its handle
        assert second.load_bytes(1) == b"one"
        unseen = second.save_bytes(b"other", 1)  # nobody looks at this handle ...
        with pytest.raises(CheckpointError, match="1 checkpoint save.*step 1 already exists"):
            second.flush_sync(TIMEOUT)  # ... so flush reports it, once
        second.flush_sync(TIMEOUT)
        assert unseen.done()


def test_torch_state_dict_round_trip_with_metadata(store):
    torch = pytest.importorskip("torch")
    state = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "step": 9}
    with CheckpointManager(store) as manager:
        manager.save(state, 9, epoch=2, note="warm").result(TIMEOUT)
        loaded = manager.load_state()
        assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 9
        assert manager.read_manifest(9).metadata == {"epoch": 2, "note": "warm"}


def test_async_api_save_flush_list_load(store):
    async def scenario():
        async with CheckpointManager(store, keep_last_n=2) as manager:
            handles = [await manager.save_async(bytes([step]) * 5000, step) for step in range(4)]
            await manager.flush()
            assert all(h.done() for h in handles)
            result = await handles[-1]
            assert result.step == 3 and result.codec == "zstd" and result.stored_size < result.raw_size
            assert await manager.list_checkpoints() == [2, 3]
            assert await manager.load() == bytes([3]) * 5000
            assert await manager.load(2) == bytes([2]) * 5000

    asyncio.run(scenario())
    assert _writer_threads() == []


def test_retention_keeps_exactly_n_including_the_step_just_saved(store):
    with CheckpointManager(store, keep_last_n=3) as manager:
        for step in (10, 20, 30, 40, 50):
            manager.save_bytes(b"x%d" % step, step).result(TIMEOUT)
            manager.flush_sync(TIMEOUT)  # retention runs after the commit
            assert len(manager.list_checkpoints_sync()) == min(3, (step // 10))
        assert manager.list_checkpoints_sync() == [30, 40, 50]
        manager.save_bytes(b"old", 5).result(TIMEOUT)  # an older step is still kept when saved
        manager.flush_sync(TIMEOUT)
        assert manager.list_checkpoints_sync() == [5, 40, 50]
        manager.save_bytes(b"new", 60).result(TIMEOUT)
        manager.flush_sync(TIMEOUT)
        assert manager.list_checkpoints_sync() == [40, 50, 60]
        assert manager.load_bytes(40) == b"x40"


def test_orphaned_uncommitted_parts_older_than_the_newest_commit_are_removed(store):
    with CheckpointManager(store) as manager:
        storage = manager._storage
        storage.write_part(layout.part_key(1, 0, "none", 0xABC), b"crashed save")
        storage.write_part(layout.part_key(9, 0, "none", 0xDEF), b"in flight elsewhere")
        manager.save_bytes(b"two", 2).result(TIMEOUT)
        manager.flush_sync(TIMEOUT)  # retention runs after the commit
        steps_on_storage = {layout.split_key(k)[0] for k in storage.list_files()}
        assert steps_on_storage == {2, 9}


@pytest.mark.parametrize("step", [-1, True, "7", 2.0])
def test_bad_steps_raise_before_anything_is_queued(store, step):
    with CheckpointManager(store) as manager:
        with pytest.raises(CheckpointError, match="step must be"):
            manager.save_bytes(b"x", step)
        with pytest.raises(CheckpointError, match="step must be"):
            asyncio.run(manager.save_async(b"x", step))
        assert manager.list_checkpoints_sync() == []


def test_bad_data_metadata_and_settings_are_named(tmp_path):
    with CheckpointManager(str(tmp_path)) as manager:
        with pytest.raises(TypeError, match="must be bytes, bytearray or memoryview, not str"):
            manager.save_bytes("text", 1)
        with pytest.raises(CheckpointError, match="metadata 'when' is not JSON-encodable"):
            manager.save_bytes(b"x", 1, when=object())
        mutable = bytearray(b"abc")
        handle = manager.save_bytes(mutable, 2)
        mutable[:] = b"zzz"  # the manager copied it
        handle.result(TIMEOUT)
        assert manager.load_bytes(2) == b"abc"
    for kwargs, key in [
        ({"keep_last_n": 0}, "keep_last_n"),
        ({"compression": "lz4"}, "compression"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"backend": "local", "storage_path": "s3://bucket/x"}, "backend"),
        ({"backend": "memory", "storage_path": "s3://bucket/x"}, "backend"),
        ({"storage_path": ""}, "storage_path"),
    ]:
        kwargs = {"storage_path": str(tmp_path), **kwargs}
        with pytest.raises(ConfigError, match=key):
            CheckpointManager(**kwargs)


def test_closed_manager_refuses_saves_and_leaves_no_thread(tmp_path):
    manager = CheckpointManager(str(tmp_path))
    handle = manager.save_bytes(b"x", 1)
    manager.close(timeout=TIMEOUT)
    assert handle.result(0).step == 1  # close drained the queue
    assert _writer_threads() == []
    manager.close(timeout=TIMEOUT)  # idempotent
    with pytest.raises(CheckpointError, match="is closed"):
        manager.save_bytes(b"y", 2)


def test_from_config_uses_checkpoint_and_storage_sections(tmp_path):
    config = Config.load(env={}, keep_last_n=2, compression="none")
    with CheckpointManager.from_config(config, storage_path=str(tmp_path)) as manager:
        assert manager.keep_last_n == 2 and manager.compression == "none"
    with pytest.raises(ConfigError, match="storage.bucket"):
        CheckpointManager.from_config(Config.load(env={}, backend="s3"))


# ------------------------------------------------------------- corruption


def _flip_and_truncate_everything(manager: CheckpointManager, step: int, paths: list[Path]) -> int:
    """Damage each file of ``step`` every way; return how many damaged variants were checked."""
    checked = 0
    for path in paths:
        original = path.read_bytes()
        variants = [original[:n] for n in range(len(original))]
        for position in range(len(original)):
            for mask in (0x01, 0x80, 0xFF):
                damaged = bytearray(original)
                damaged[position] ^= mask
                variants.append(bytes(damaged))
        try:
            for variant in variants:
                path.write_bytes(variant)
                with pytest.raises(CheckpointError) as caught:
                    manager.load_bytes(step)
                if path.name != "MANIFEST":
                    assert f"step {step} rank 0" in str(caught.value) and path.name in str(caught.value)
                checked += 1
        finally:
            path.write_bytes(original)
        assert manager.load_bytes(step)  # restored
    return checked


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_every_byte_flip_and_truncation_of_part_or_manifest_is_detected_on_load(tmp_path, compression):
    with CheckpointManager(str(tmp_path), compression=compression) as manager:
        manager.save_bytes(b"older checkpoint", 1).result(TIMEOUT)
        manager.save_bytes(os.urandom(64) + bytes(64), 2, tag="t").result(TIMEOUT)
        step_dir = tmp_path / layout.step_dir(2)
        files = sorted(step_dir.iterdir())
        assert len(files) == 2
        checked = _flip_and_truncate_everything(manager, 2, files)
        assert checked == 4 * sum(f.stat().st_size for f in files)  # 3 flips + 1 truncation per byte
        # A damaged newest step is reported by load(2) and skipped by load() and newest_valid_step().
        part = next(f for f in files if f.name != "MANIFEST")
        part.write_bytes(part.read_bytes()[:-1])
        with pytest.raises(CheckpointError, match=part.name):
            manager.load_bytes(2)
        assert manager.load_bytes() == b"older checkpoint"
        assert manager.newest_valid_step() == 1
        (step_dir / "MANIFEST").write_bytes(b"{}")
        assert manager.list_checkpoints_sync() == [1]  # unparseable manifest: not listed


def test_a_missing_part_is_named(tmp_path):
    with CheckpointManager(str(tmp_path)) as manager:
        manager.save_bytes(b"data", 3).result(TIMEOUT)
        part = next(p for p in (tmp_path / layout.step_dir(3)).iterdir() if p.name != "MANIFEST")
        part.unlink()
        with pytest.raises(CheckpointError, match=rf"step 3 rank 0: .*{part.name} is missing"):
            manager.load_bytes(3)


# ------------------------------------------------------ bounded in-flight


class _GatedMemoryFS(MemoryFileSystem):
    """memory:// whose part writes wait for ``gate`` (bounded) or fail with ``fail_with``,
    and whose deletes wait for ``delete_gate`` (bounded)."""

    protocol = "gatedmem"
    gate = threading.Event()
    delete_gate = threading.Event()
    fail_with: OSError | None = None
    store: dict = {}
    pseudo_dirs = [""]

    def rm(self, path, recursive=False, maxdepth=None):
        if not self.delete_gate.wait(TIMEOUT):
            raise TimeoutError("test delete gate never opened")
        return super().rm(path, recursive=recursive, maxdepth=maxdepth)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        if "/part-" in path:
            if not self.gate.wait(TIMEOUT):
                raise TimeoutError("test gate never opened")
            if self.fail_with is not None:
                raise self.fail_with
        return super().pipe_file(path, value, mode=mode, **kwargs)


@pytest.fixture
def gated_fs():
    fsspec.register_implementation("gatedmem", _GatedMemoryFS, clobber=True)
    _GatedMemoryFS.gate = threading.Event()
    _GatedMemoryFS.delete_gate = threading.Event()
    _GatedMemoryFS.delete_gate.set()
    _GatedMemoryFS.fail_with = None
    yield _GatedMemoryFS
    _GatedMemoryFS.gate.set()
    _GatedMemoryFS.delete_gate.set()


def test_at_most_max_in_flight_saves_then_callers_wait(gated_fs):
    with CheckpointManager(f"gatedmem://{uuid.uuid4().hex}", max_in_flight=2) as manager:
        first, second = manager.save_bytes(b"1", 1), manager.save_bytes(b"2", 2)
        with pytest.raises(CheckpointError, match="no save slot free"):
            manager.save_bytes(b"3", 3, timeout=0.05)
        third: list = []
        blocked = threading.Thread(target=lambda: third.append(manager.save_bytes(b"3", 3, timeout=TIMEOUT)))
        blocked.start()
        blocked.join(0.2)
        assert blocked.is_alive() and not third  # waiting for a slot

        async def async_waiter():
            task = asyncio.ensure_future(manager.save_async(b"4", 4))
            await asyncio.sleep(0.05)
            assert not task.done()
            task.cancel()  # a cancelled waiter must not keep a slot
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(async_waiter())
        gated_fs.gate.set()
        blocked.join(TIMEOUT)
        assert [h.result(TIMEOUT).step for h in (first, second, third[0])] == [1, 2, 3]
        assert manager._slots.in_use == 0
        assert manager.list_checkpoints_sync() == [1, 2, 3]


def test_saves_go_on_while_retention_deletes_and_flush_waits_for_it(gated_fs):
    gated_fs.gate.set()
    gated_fs.delete_gate.clear()  # every delete hangs until the test opens the gate
    with CheckpointManager(f"gatedmem://{uuid.uuid4().hex}", keep_last_n=1) as manager:
        manager.save_bytes(b"1", 1).result(TIMEOUT)
        manager.save_bytes(b"2", 2).result(TIMEOUT)  # the janitor now hangs deleting step 1
        manager.save_bytes(b"3", 3).result(TIMEOUT)  # the writer is not held up by it
        with pytest.raises(TimeoutError, match="retention still running"):
            manager.flush_sync(0.2)
        assert manager.list_checkpoints_sync() == [1, 2, 3]
        gated_fs.delete_gate.set()
        manager.flush_sync(TIMEOUT)
        assert manager.list_checkpoints_sync() == [3] and manager.load_bytes() == b"3"


def test_disk_full_fails_the_save_cleanly_and_earlier_steps_still_load(gated_fs):
    gated_fs.gate.set()
    with CheckpointManager(f"gatedmem://{uuid.uuid4().hex}") as manager:
        manager.save_bytes(b"good", 1).result(TIMEOUT)
        gated_fs.fail_with = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with pytest.raises(CheckpointError, match="step 2: writing .* failed: .*No space left"):
            manager.save_bytes(b"too big", 2).result(TIMEOUT)
        manager.flush_sync(TIMEOUT)  # already reported through the handle
        assert manager.list_checkpoints_sync() == [1] and manager.load_bytes() == b"good"


def test_real_full_tmpfs_fails_the_save_and_keeps_earlier_steps(tmp_path, mount_tmpfs):
    mount = mount_tmpfs(tmp_path / "small", "1m")
    with CheckpointManager(str(mount / "ckpt"), compression="none") as manager:
        manager.save_bytes(b"a" * 1000, 1).result(TIMEOUT)
        with pytest.raises(CheckpointError, match="No space left"):
            manager.save_bytes(os.urandom(2 << 20), 2).result(TIMEOUT)
        assert manager.list_checkpoints_sync() == [1] and manager.load_bytes() == b"a" * 1000
        assert not (mount / "ckpt" / layout.step_dir(2)).exists() or not any(
            (mount / "ckpt" / layout.step_dir(2)).iterdir()
        )
        manager.save_bytes(b"fits again", 3).result(TIMEOUT)  # space was given back


def test_read_only_store_gives_a_clear_error_and_earlier_steps_load(tmp_path, mount_tmpfs):
    mount = mount_tmpfs(tmp_path / "ro", "4m")
    with CheckpointManager(str(mount), compression="none") as manager:
        manager.save_bytes(b"before", 1).result(TIMEOUT)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, timeout=30)
        with pytest.raises(CheckpointError, match="step 2: .*Read-only file system"):
            manager.save_bytes(b"after", 2).result(TIMEOUT)
        assert manager.list_checkpoints_sync() == [1] and manager.load_bytes() == b"before"


# ------------------------------------------------------------ bounded RSS

_RSS_SCRIPT = r"""
import os, sys
from dtruntime import CheckpointManager

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

payload_size = 8 << 20
with CheckpointManager(sys.argv[1], keep_last_n=2, compression="none") as manager:
    samples = []
    for step in range(100):
        manager.save_bytes(os.urandom(payload_size), step)
        if step in (20, 99):
            manager.flush_sync(60)
            samples.append(rss())
print(samples[0], samples[1], len(manager.list_checkpoints_sync()))
"""


def test_rss_does_not_grow_across_100_saves(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=120, env=env, check=True,
    ).stdout.split()
    after_20, after_100, kept = map(int, out)
    assert kept == 2
    assert after_100 - after_20 < 16 << 20, f"RSS grew by {(after_100 - after_20) >> 20} MiB"
