"""A real training job on dtruntime: DDP (gloo, CPU) with registration, epoch barriers,
deterministic shards and checkpoints that survive a kill.

    torchrun --nproc-per-node 4 examples/train_ddp.py --epochs 3 --checkpoint-dir out/ckpt

Each process joins the control plane (the coordinator endpoint is torchrun's
MASTER_PORT + 1), reads its own sample ranges of a synthetic regression dataset from
the shard ring, trains a small model with DistributedDataParallel, and meets the others
at a barrier before every epoch. Rank 0 saves a checkpoint after every epoch; a
relaunch resumes from the newest committed one, and so does a restart by
``torchrun --max-restarts N`` after a worker dies.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dtruntime import CheckpointManager, DatasetRegistry, TrainingOrchestrator
from dtruntime.elastic import init_process_group

FEATURES = 16


def synthetic_batch(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and targets of global sample ``indices``: the same sample on every rank."""
    frequencies = torch.arange(1, FEATURES + 1, dtype=torch.float32) * 0.01
    x = torch.sin(indices.to(torch.float32)[:, None] * frequencies)
    true_weights = torch.linspace(-1.0, 1.0, FEATURES)
    return x, (x @ true_weights)[:, None] + 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint-dir", default="out/checkpoints")
    parser.add_argument("--epoch-pause", type=float, default=0.0, help="sleep after each epoch (for demos/tests)")
    args = parser.parse_args()

    init_process_group("gloo")  # dist.init_process_group on this torchrun attempt's own store keys
    rank, world = dist.get_rank(), dist.get_world_size()
    orchestrator = TrainingOrchestrator()  # everything from torchrun's environment
    orchestrator.register_worker_sync(gpu_count=0, memory_bytes=0)
    registry = DatasetRegistry(orchestrator=orchestrator)
    registry.register("synthetic", total_samples=args.samples, shard_size=500, shuffle=True, seed=7)
    checkpoints = CheckpointManager(args.checkpoint_dir, keep_last_n=3)

    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    start_epoch = 0
    if checkpoints.list_checkpoints_sync():
        state = checkpoints.load_state()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        if rank == 0:
            print(f"resumed from epoch {state['epoch']} (step {state['step']})", flush=True)
    ddp = nn.parallel.DistributedDataParallel(model)
    loss_fn = nn.MSELoss()

    step = 0
    for epoch in range(start_epoch, args.epochs):
        orchestrator.wait_barrier_sync(f"epoch-{epoch}")
        records = registry.get_assignment("synthetic", worker_rank=rank, epoch=epoch)
        order = torch.from_numpy(np.concatenate([r.sample_order() for r in records]))
        total = 0.0
        batches = 0
        for start in range(0, len(order), args.batch_size):
            x, y = synthetic_batch(order[start:start + args.batch_size])
            optimizer.zero_grad()
            loss = loss_fn(ddp(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        step = (epoch + 1) * batches
        if rank == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step}
            checkpoints.save(state, step).result()  # durable before the next epoch starts
            print(f"epoch {epoch}: {batches} batches/rank, mean loss {total / batches:.4f}, "
                  f"leader {orchestrator.leader()}, members {len(orchestrator.members())}, "
                  f"checkpoint step {step}", flush=True)
        if args.epoch_pause:
            time.sleep(args.epoch_pause)

    orchestrator.wait_barrier_sync("done")
    if rank == 0:
        print(f"training complete: {args.epochs} epochs on {world} workers", flush=True)
    checkpoints.close()
    orchestrator.close_sync()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
