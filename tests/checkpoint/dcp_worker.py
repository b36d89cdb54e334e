"""A torchrun worker for the DCP tests: save or load a resharded state through dtruntime.

    torchrun --nproc-per-node N tests/checkpoint/dcp_worker.py ACTIONS ROOT [OPTIONS_JSON]

ACTIONS is a comma-separated list of ``save:STEP``, ``async:STEP`` (``async_save``) and
``load:STEP`` (``load:-1``: the newest), run in order in one process group, so that a
test pays torchrun's and torch's start-up once for several saves.

The state: ``w``, a DTensor of ROWS x 3 sharded by rows over all ranks (uneven for 3 and
4 ranks), ``b``, a replicated plain tensor, and ``extra``, a non-tensor value (a DCP
bytes item). Values are a pure function of the step. ``load`` checks every rank's
shard against the full tensor and prints ``ok <rank> <step>``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh  # noqa: E402
from torch.distributed.tensor import Shard, distribute_tensor  # noqa: E402

from dtruntime.checkpoint.dcp import DtruntimeStorageReader, DtruntimeStorageWriter  # noqa: E402

ROWS = 10


def full(step: int) -> torch.Tensor:
    return torch.arange(ROWS * 3, dtype=torch.float32).reshape(ROWS, 3) + 1000 * step


def main() -> None:
    actions = [(mode, int(step)) for mode, step in (action.split(":") for action in sys.argv[1].split(","))]
    root = sys.argv[2]
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for mode, step in actions:
        run(mode, root, step, options, mesh)
    dist.destroy_process_group()
    # Every action's result is in storage (what the tests check). A process that ran an
    # async_save can abort in torch's own teardown at interpreter exit ("terminate called
    # without an active exception", SIGABRT: seen in 2 of about 8 runs with torch 2.13 and
    # gloo, after every rank printed its last "saved"), so the worker skips that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run(mode: str, root: str, step: int, options: dict | None, mesh: DeviceMesh) -> None:
    """One action: save or async-save step ``step``'s state, or load one and check every shard."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if mode in ("save", "async"):
        state = {"w": distribute_tensor(full(step), mesh, [Shard(0)]), "b": torch.full((4,), float(step)),
                 "extra": {"step": step, "lr": 0.5}}
        writer = DtruntimeStorageWriter(root, step, storage_options=options, keep_last_n=2)
        if mode == "save":
            dcp.save(state, storage_writer=writer)
        else:
            dcp.async_save(state, storage_writer=writer).result(timeout=300)
        print(f"saved {rank} {step}", flush=True)
    else:
        state = {"w": distribute_tensor(torch.zeros(ROWS, 3), mesh, [Shard(0)]), "b": torch.zeros(4),
                 "extra": {"step": -1, "lr": 0.0}}
        dcp.load(state, storage_reader=DtruntimeStorageReader(root, None if step < 0 else step,
                                                               storage_options=options))
        loaded = state["extra"]["step"]
        expected = full(loaded)
        chunk = -(-ROWS // world)
        mine = expected[rank * chunk : (rank + 1) * chunk]
        assert torch.equal(state["w"].to_local(), mine), (state["w"].to_local(), mine)
        assert torch.equal(state["b"], torch.full((4,), float(loaded)))
        assert state["extra"] == {"step": loaded, "lr": 0.5}
        print(f"ok {rank} {loaded}", flush=True)


if __name__ == "__main__":
    main()
