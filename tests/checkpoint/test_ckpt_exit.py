"""Saves pending at interpreter exit: real Python processes end without close(), the test reads storage."""

from __future__ import annotations

import os
import subprocess
import sys

from dtruntime import CheckpointManager
from dtruntime.checkpoint import layout, scan_listing
from dtruntime.checkpoint.storage import LocalStorage

from ..cluster import ROOT

TIMEOUT = 120


def run_script(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this tree's dtruntime), bounded by TIMEOUT."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_a_state_dict_saved_just_before_the_script_ends_is_committed(tmp_path):
    script = """
import sys, torch
from dtruntime import CheckpointManager
CheckpointManager(sys.argv[1]).save({"w": torch.arange(1 << 20, dtype=torch.float32)}, step=1000, epoch=1)
"""
    done = run_script(script, str(tmp_path))
    assert done.returncode == 0, done.stderr
    with CheckpointManager(str(tmp_path)) as manager:
        assert manager.list_checkpoints_sync() == [1000]
        assert manager.read_manifest(1000).metadata == {"epoch": 1}
        assert manager.load_state()["w"][-1].item() == (1 << 20) - 1


def test_an_awaited_save_async_then_exit_is_committed(tmp_path):
    script = """
import asyncio, sys
from dtruntime import CheckpointManager

async def main():
    manager = CheckpointManager(sys.argv[1], compression="none")
    await manager.save_async(b"queued, never awaited" * 100_000, 7)

asyncio.run(main())
"""
    done = run_script(script, str(tmp_path))
    assert done.returncode == 0, done.stderr
    with CheckpointManager(str(tmp_path)) as manager:
        assert manager.load_bytes(7) == b"queued, never awaited" * 100_000


def test_an_exit_by_an_uncaught_exception_still_commits_the_save(tmp_path):
    script = """
import sys
from dtruntime import CheckpointManager
manager = CheckpointManager(sys.argv[1])
manager.save_bytes(b"before the crash", 3)
raise RuntimeError("training diverged")
"""
    done = run_script(script, str(tmp_path))
    assert done.returncode == 1 and "RuntimeError: training diverged" in done.stderr
    with CheckpointManager(str(tmp_path)) as manager:
        assert manager.load_bytes(3) == b"before the crash"


_STUCK_COMMIT = """
import sys, threading
from dtruntime import CheckpointManager
from dtruntime.checkpoint.storage import LocalStorage

never = threading.Event()
LocalStorage.write_manifest = lambda self, key, data: never.wait()  # the store hangs at the commit
manager = CheckpointManager(sys.argv[1], exit_timeout_s=int(sys.argv[2]))
manager.save_bytes(b"part written, commit stuck", 5)
"""


def test_a_save_not_durable_within_the_bound_is_named_at_exit_and_its_part_cleaned_later(tmp_path):
    done = run_script(_STUCK_COMMIT, str(tmp_path), "1")
    assert done.returncode == 0, done.stderr
    assert "checkpoint step(s) [5]" in done.stderr and "will not exist" in done.stderr, done.stderr
    view = scan_listing(LocalStorage(str(tmp_path)).list_files())
    assert view.committed == () and [r.step for r in view.in_flight[5]] == [5]  # the orphan part
    with CheckpointManager(str(tmp_path)) as manager:
        manager.save_bytes(b"next run", 6).result(TIMEOUT)
        manager.flush_sync(TIMEOUT)  # retention after the commit removes the orphan
    assert {layout.split_key(key)[0] for key in LocalStorage(str(tmp_path)).list_files()} == {6}


def test_the_exit_bound_comes_from_the_config_file(tmp_path):
    config = tmp_path / "dtruntime.toml"
    config.write_text("[checkpoint]\nexit_timeout_s = 0\n")
    # The script's own argument would win; here the file alone sets the bound.
    script = _STUCK_COMMIT.replace(", exit_timeout_s=int(sys.argv[2])", "")
    done = run_script(script, str(tmp_path / "ckpt"), env={"DTRUNTIME_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    assert "checkpoint step(s) [5]" in done.stderr and "0 s after exit began" in done.stderr, done.stderr
