"""torch.distributed.checkpoint through dtruntime's storage and commit (one process).

    python examples/dcp_checkpoint.py out/dcp          # or s3://bucket/run-7

Saves a model's state dict with ``dcp.save`` at step 1000, loads it back into a fresh
model with ``dcp.load`` (the newest committed step) and checks that they are equal. Run
under torchrun, every rank saves its share and DCP reshards on load.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

import torch.distributed.checkpoint as dcp
from dtruntime.checkpoint.dcp import DtruntimeStorageReader, DtruntimeStorageWriter


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "out/dcp"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    state = {"model": model.state_dict()}

    dcp.save(state, storage_writer=DtruntimeStorageWriter(url, step=1000))

    fresh = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    state = {"model": fresh.state_dict()}
    dcp.load(state, storage_reader=DtruntimeStorageReader(url))  # the newest step, into state's tensors
    fresh.load_state_dict(state["model"])
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    print(f"saved and loaded step 1000 under {url}: {'equal' if same else 'DIFFERENT'}", flush=True)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
