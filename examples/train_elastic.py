"""DDP training that goes on when a worker dies: dtruntime's ElasticTrainer.

Start one process per worker, by hand, by Slurm's ``srun``, or by one torchrun per host
(torchrun kills its whole group when one of its workers dies, so a host is the failure
domain; dtruntime is what spans hosts):

    for r in 0 1 2 3; do
      RANK=$r WORLD_SIZE=4 COORDINATOR_URL=tcp://127.0.0.1:29700 \\
      DTRUNTIME_HEARTBEAT_INTERVAL_MS=100 DTRUNTIME_HEARTBEAT_TIMEOUT_MS=1000 \\
      python examples/train_elastic.py --epochs 5 &
    done

``kill -9`` one of them mid-epoch: the others re-form the process group among
themselves within a few seconds, keep their in-memory model and optimizer state, read
the dead worker's unread samples, and finish every epoch. Rank 0 prints each epoch's
loss and how many workers trained it.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from dtruntime import TrainingOrchestrator
from dtruntime.elastic import ElasticTrainer

FEATURES = 16


def synthetic_batch(indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and targets of global samples ``indices``: the same sample on every rank."""
    index = torch.as_tensor(indices, dtype=torch.float32)[:, None]
    x = torch.sin(index * torch.arange(1, FEATURES + 1, dtype=torch.float32) * 0.01)
    return x, (x @ torch.linspace(-1.0, 1.0, FEATURES))[:, None] + 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    orchestrator = TrainingOrchestrator()  # RANK, WORLD_SIZE, COORDINATOR_URL from the environment
    orchestrator.register_worker_sync()
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = ElasticTrainer(orchestrator, model, optimizer, num_samples=args.samples,
                             batch_size=args.batch_size, seed=7)
    for epoch in range(trainer.epoch, args.epochs):
        total, steps = 0.0, 0
        for step in trainer.epoch_steps(epoch):
            with step:  # on a lost worker: no optimizer step here, the group re-forms, the step runs again
                x, y = synthetic_batch(step.indices)
                loss = nn.functional.mse_loss(trainer.ddp(x), y)
                loss.backward()
            if step.applied:
                total, steps = total + loss.item(), steps + 1
        if orchestrator.rank == 0:
            print(f"epoch {epoch}: mean loss {total / steps:.4f} over {steps} steps, "
                  f"{trainer.generation.size} workers at the end", flush=True)
    if orchestrator.rank == 0:
        print(f"training complete: {args.epochs} epochs, {trainer.steps_applied} steps, "
              f"{len(trainer.recoveries)} recoveries", flush=True)
    trainer.close()
    orchestrator.close_sync()


if __name__ == "__main__":
    main()
