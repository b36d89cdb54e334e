"""torch.distributed.checkpoint through dtruntime: real torchrun processes, gloo on CPU.

Saved with 4 ranks (DTensor sharded by rows, uneven), loaded with 2 and with 3 ranks:
DCP's planner reshards, dtruntime stores, verifies and commits.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from dtruntime import CheckpointManager
from dtruntime.checkpoint.dcp import MANIFEST_KEY

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dcp_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def torchrun(nproc: int, actions: str, root: str, options: dict | None = None) -> subprocess.CompletedProcess:
    """``actions`` as ``dcp_worker.py`` takes them (``"save:1,async:2"``), in one torchrun."""
    command = [str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", str(WORKER), actions, root]
    if options:
        command.append(json.dumps(options))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def loaded_ranks(run: subprocess.CompletedProcess) -> list[tuple[int, int]]:
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # The ranks share torchrun's stdout, so two "ok RANK STEP" lines can run together.
    return sorted((int(r), int(s)) for r, s in re.findall(r"ok (\d+) (\d+)", run.stdout))


@pytest.mark.timeout(900)
def test_save_with_4_ranks_load_with_2_and_3(tmp_path):
    root = str(tmp_path / "ckpt")
    for actions in ("save:1,async:2", "save:3"):  # (a save after an async_save in one process can abort at exit)
        run = torchrun(4, actions, root)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with CheckpointManager(root) as manager:
        assert manager.list_checkpoints_sync(verify=True) == [2, 3]  # keep_last_n=2 after the commit of 3
        manifest = manager.read_manifest(3)
    assert manifest.world_size == 4 and MANIFEST_KEY in manifest.metadata
    [metadata_file] = (tmp_path / "ckpt" / "step-000000000003").glob("DCP_METADATA-*")
    assert metadata_file.name == manifest.metadata[MANIFEST_KEY]["name"]
    metadata = metadata_file.read_bytes()
    assert msgpack.unpackb(metadata)["format"] == "dtruntime-dcp-metadata/1"  # plain msgpack, not a pickle
    assert loaded_ranks(torchrun(2, "load:-1", root)) == [(0, 3), (1, 3)]  # newest
    assert loaded_ranks(torchrun(3, "load:2", root)) == [(0, 2), (1, 2), (2, 2)]


@pytest.mark.timeout(600)
def test_a_corrupt_part_fails_the_load_and_an_existing_step_is_not_overwritten(tmp_path):
    root = str(tmp_path / "ckpt")
    again = torchrun(2, "save:5,save:5", root)  # the second save of step 5 must fail
    assert re.findall(r"saved (\d+) 5", again.stdout) and again.returncode != 0, again.stdout + again.stderr
    assert "already exists" in again.stdout + again.stderr
    part = sorted(glob.glob(str(tmp_path / "ckpt" / "step-000000000005" / "part-00001-*.bin")))[0]
    with open(part, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0x40]))
    run = torchrun(2, "load:5", root)
    assert run.returncode != 0 and "crc32c" in run.stdout + run.stderr


@pytest.mark.timeout(600)
def test_dcp_on_s3_saves_with_2_ranks_and_loads_with_3(s3_bucket, s3_options):
    root = f"s3://{s3_bucket}/dcp"
    run = torchrun(2, "save:7", root, s3_options)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert loaded_ranks(torchrun(3, "load:-1", root, s3_options)) == [(0, 7), (1, 7), (2, 7)]
    with CheckpointManager(root, storage_options=s3_options) as manager:
        assert manager.list_checkpoints_sync(verify=True) == [7]
