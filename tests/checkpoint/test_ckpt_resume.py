"""Resume: fall back past corrupt steps, list what is loadable, and the original API's load(step=0)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from dtruntime import CheckpointError, CheckpointManager, CheckpointNotFoundError
from dtruntime.checkpoint import layout
from dtruntime.checkpoint.leader import LeaderCommitter
from dtruntime.checkpoint.storage import open_storage

from .test_ckpt_exit import run_script
from .test_ckpt_leader import WORLD, write_part

TIMEOUT = 30


def part_file(root: Path, step: int, rank: int = 0) -> Path:
    [part] = (root / layout.step_dir(step)).glob(f"part-{rank:05d}-*")
    return part


def flip_a_byte(path: Path, position: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def test_load_falls_back_past_a_flipped_byte_and_says_which_step_it_skipped(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    with CheckpointManager(str(tmp_path), compression="none") as manager:
        for step in (1, 2, 3):
            manager.save({"w": torch.full((64,), float(step))}, step).result(TIMEOUT)
        flip_a_byte(part_file(tmp_path, 3), position=200)
        assert manager.list_checkpoints_sync() == [1, 2, 3]  # still committed
        assert manager.list_checkpoints_sync(verify=True) == [1, 2]  # what is loadable
        assert asyncio.run(manager.list_checkpoints(verify=True)) == [1, 2]
        with caplog.at_level(logging.WARNING, logger="dtruntime.checkpoint"):
            assert manager.load_state()["w"][0].item() == 2.0
        skipped = [r.getMessage() for r in caplog.records if "skipping checkpoint step 3" in r.getMessage()]
        assert len(skipped) == 1 and "crc32c" in skipped[0] and part_file(tmp_path, 3).name in skipped[0], skipped
        with pytest.raises(CheckpointError, match="step 3 rank 0"):
            manager.load_state(3)  # a step asked for by number never falls back


def test_when_no_step_verifies_the_error_names_each_and_is_not_file_not_found(tmp_path):
    with CheckpointManager(str(tmp_path), compression="none") as manager:
        manager.save_bytes(b"a" * 100, 1).result(TIMEOUT)
        manager.save_bytes(b"b" * 100, 2).result(TIMEOUT)
        for step in (1, 2):
            flip_a_byte(part_file(tmp_path, step))
        with pytest.raises(CheckpointError, match="no committed checkpoint .* verifies: step 2: .*; step 1: ") as caught:
            manager.load_bytes()
        assert not isinstance(caught.value, FileNotFoundError)  # "start from scratch" would be wrong here
        assert manager.list_checkpoints_sync(verify=True) == []


def test_every_rank_falls_back_to_the_same_step_when_another_ranks_part_is_corrupt(tmp_path):
    storage = open_storage(str(tmp_path), None, None)
    leader = LeaderCommitter(storage, WORLD, 5, lambda step: {}, lambda step: None)
    for step in (4, 8):
        leader.decide(step, tuple(write_part(storage, step, rank) for rank in range(WORLD)), ())
    flip_a_byte(part_file(tmp_path, 8, rank=2), position=0)
    with CheckpointManager(str(tmp_path)) as manager:
        assert manager.load_bytes(rank=0) == b"4:0" * 10  # rank 0's own part of step 8 is intact
        assert manager.load_bytes(8, rank=0) == b"8:0" * 10
        assert manager.newest_valid_step() == 4


def test_load_step_0_is_step_0_when_committed_and_else_the_latest(tmp_path, caplog):
    with CheckpointManager(str(tmp_path)) as manager:
        with pytest.raises(FileNotFoundError):  # the original API's "nothing saved yet"
            asyncio.run(manager.load(step=0))
        with pytest.raises(CheckpointNotFoundError, match="no committed checkpoint"):
            manager.load_bytes(0)
        for step in (10, 20):
            manager.save_bytes(b"step %d" % step, step).result(TIMEOUT)
        with caplog.at_level(logging.INFO, logger="dtruntime.checkpoint"):
            assert asyncio.run(manager.load(step=0)) == b"step 20"  # the original API's "load latest"
        [note] = [r for r in caplog.records if "load(step=0) loaded the newest step, 20" in r.getMessage()]
        assert note.levelname == "INFO"
        manager.save_bytes(b"step zero", 0).result(TIMEOUT)
        assert asyncio.run(manager.load(step=0)) == b"step zero"  # a committed step 0 is never substituted
        assert manager.load_bytes(10) == b"step 10"
        with pytest.raises(CheckpointNotFoundError, match="step 15 is not committed") as caught:
            manager.load_bytes(15)
        assert isinstance(caught.value, FileNotFoundError)  # other steps never fall back


# The checkpoint code of the original document's full example, unchanged but for a toy
# model and loop bounds: it resumes with load(step=0), never awaits a save nor closes.
_ORIGINAL_EXAMPLE = """
import asyncio, io, sys
import torch
from dtruntime import CheckpointManager

total_steps, checkpoint_interval = int(sys.argv[2]), 10

async def main():
    ckpt_mgr = CheckpointManager(sys.argv[1])
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters())
    try:
        ckpt_data = await ckpt_mgr.load(step=0)  # Load latest
        state = torch.load(io.BytesIO(ckpt_data))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
    except FileNotFoundError:
        start_step = 0
    print("start", start_step, flush=True)
    for step in range(start_step, total_steps):
        if step % checkpoint_interval == 0:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
            }
            data = io.BytesIO()
            torch.save(state, data)
            await ckpt_mgr.save_async(data.getvalue(), step=step)

asyncio.run(main())
"""


def test_the_original_full_example_starts_fresh_then_resumes_from_the_latest_step(tmp_path):
    # keep_last_n = 2 from the configuration file: retention has removed step 0 by the rerun.
    config = tmp_path / "dtruntime.toml"
    config.write_text("[checkpoint]\nkeep_last_n = 2\n")
    env = {"DTRUNTIME_CONFIG": str(config)}
    first = run_script(_ORIGINAL_EXAMPLE, str(tmp_path / "ckpt"), "40", env=env)
    assert first.returncode == 0 and first.stdout.split() == ["start", "0"], first.stderr
    with CheckpointManager(str(tmp_path / "ckpt")) as manager:
        assert manager.list_checkpoints_sync() == [20, 30]
    second = run_script(_ORIGINAL_EXAMPLE, str(tmp_path / "ckpt"), "60", env=env)
    assert second.returncode == 0 and second.stdout.split() == ["start", "30"], second.stderr
    with CheckpointManager(str(tmp_path / "ckpt")) as manager:
        assert manager.list_checkpoints_sync() == [40, 50]
        assert manager.load_state()["step"] == 50
    # Its re-save of the step it resumed from is refused, loudly, at exit.
    assert "step 30 already exists" in second.stderr
