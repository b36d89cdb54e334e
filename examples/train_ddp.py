"""A real training job on dtruntime: DDP (gloo, CPU) with registration, epoch barriers,
deterministic shards and checkpoints that survive a kill.

    torchrun --nproc-per-node 4 examples/train_ddp.py --epochs 3 --checkpoint-dir out/ckpt

Each process joins the control plane (the coordinator endpoint is torchrun's
MASTER_PORT + 1), reads its own sample ranges of a synthetic regression dataset from
the shard ring, trains a small model with DistributedDataParallel, and meets the others
at a barrier before every epoch. Rank 0 saves a checkpoint after every epoch.

``--epochs N`` is what one launch trains: N epochs after the newest committed checkpoint
(epochs 0..N-1 on an empty directory). Running the same command again resumes and
trains N more. A restart by ``torchrun --max-restarts`` after a worker dies is the same
launch: it resumes from the newest checkpoint and continues to the launch's last epoch,
not N more. Rank 0 prints each epoch it trains and, at the end, the range.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

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


def launch_epochs(first: int, count: int) -> range:
    """The epochs this launch trains: ``count`` from ``first``, the epoch after the newest
    checkpoint when the launch started.

    A torchrun restart attempt resumes from a newer checkpoint than its launch did, so it
    cannot compute the range again. torchrun's agent store lives exactly as long as the
    launch and is shared by its attempts: the first attempt records the range there
    (create-only, so every rank of every attempt reads the same one). Without the agent
    store there are no restart attempts, and the computed range is the launch's.
    """
    wanted = f"{first}:{first + count}"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=60))
        run_id = os.environ.get("TORCHELASTIC_RUN_ID") or "none"
        wanted = store.compare_set(f"train_ddp/{run_id}/epochs", "", wanted).decode()
    start, end = (int(part) for part in wanted.split(":"))
    return range(start, end)


def epoch_span(epochs: range) -> str:
    """``epoch 4`` or ``epochs 3-5``."""
    return f"epoch {epochs.start}" if len(epochs) == 1 else f"epochs {epochs.start}-{epochs.stop - 1}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs to train in this launch, after the newest checkpoint (default 3)")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint-dir", default="out/checkpoints")
    parser.add_argument("--epoch-pause", type=float, default=0.0, help="sleep after each epoch (for demos/tests)")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, not {args.epochs}")

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
    launch = launch_epochs(start_epoch, args.epochs)
    ddp = nn.parallel.DistributedDataParallel(model)
    loss_fn = nn.MSELoss()

    step = 0
    for epoch in range(start_epoch, launch.stop):
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
        restarted = f"; {epoch_span(range(start_epoch, launch.stop))} in this restart attempt" \
            if start_epoch > launch.start and start_epoch < launch.stop else ""
        print(f"training complete: {len(launch)} epoch{'s' if len(launch) != 1 else ''} on {world} workers "
              f"({epoch_span(launch)}{restarted})", flush=True)
    checkpoints.close()
    orchestrator.close_sync()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
