"""The benchmark's anchor job: the same DDP training, plain torch, restarted by torchrun.

    torchrun --nproc-per-node 4 --max-restarts 1 benchmarks/anchor_torchrun_job.py --checkpoint F

No dtruntime. Rank 0 saves ``torch.save`` checkpoints every ``--checkpoint-every`` steps
(the usual torchrun recipe); a restarted attempt resumes from the newest. Every rank
prints a JSON line per step: {"event": "step", "number", "attempt", "time"}. The process
group is keyed by restart attempt (what ``dtruntime.elastic.init_process_group`` does),
since torch 2.13's torchrun cannot restart a gloo job otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

FEATURES = 8


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    args = parser.parse_args()
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    shared = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, False,
                           timedelta(seconds=60))
    dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt-{attempt}/", shared), rank=rank,
                            world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = 0
    if os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    ddp = nn.parallel.DistributedDataParallel(model)
    for number in range(start + 1, args.steps + 1):
        index = torch.arange(args.batch_size, dtype=torch.float32)[:, None] + number * world * args.batch_size
        x = torch.sin(index * torch.arange(1, FEATURES + 1, dtype=torch.float32) * 0.01)
        optimizer.zero_grad()
        nn.functional.mse_loss(ddp(x), x.sum(dim=1, keepdim=True)).backward()
        optimizer.step()
        line = json.dumps({"event": "step", "number": number, "attempt": int(attempt), "time": time.monotonic()})
        sys.stdout.write(line + "\n")  # one write: the four workers share torchrun's stdout
        sys.stdout.flush()
        if rank == 0 and number % args.checkpoint_every == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": number},
                       args.checkpoint + ".tmp")
            os.replace(args.checkpoint + ".tmp", args.checkpoint)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
