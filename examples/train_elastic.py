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


class SyntheticRegression:
    """Samples of a fixed regression task: ``dataset[indices]`` is ``(x, y)`` of those
    global sample numbers, the same on every rank."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.float32)[:, None]
        x = torch.sin(index * torch.arange(1, FEATURES + 1, dtype=torch.float32) * 0.01)
        return x, (x @ torch.linspace(-1.0, 1.0, FEATURES))[:, None] + 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20_000)
    args = parser.parse_args()
    epochs, dataset, loss_fn = args.epochs, SyntheticRegression(args.samples), nn.MSELoss()

    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    orch = TrainingOrchestrator()  # RANK, WORLD_SIZE, COORDINATOR_URL from the environment
    orch.register_worker_sync()
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses: dict[int, list[float]] = {epoch: [] for epoch in range(epochs)}  # applied steps' losses

    # The README's ElasticTrainer snippet, from here to loss.backward():
    trainer = ElasticTrainer(orch, model, optimizer, num_samples=len(dataset), batch_size=32)
    for epoch in range(trainer.epoch, epochs):
        for step in trainer.epoch_steps(epoch):      # this rank's share of the next global batch
            with step:                                # optimizer.step() on a clean exit, on every rank or none
                x, y = dataset[step.indices]
                loss = loss_fn(trainer.ddp(x), y)
                loss.backward()
            if step.applied:  # False when a worker was lost: the group re-forms and the step runs again
                losses[epoch].append(loss.item())
        if orch.rank == 0:
            print(f"epoch {epoch}: mean loss {sum(losses[epoch]) / len(losses[epoch]):.4f} over "
                  f"{len(losses[epoch])} steps, {trainer.generation.size} workers at the end", flush=True)
    if orch.rank == 0:
        print(f"training complete: {epochs} epochs, {trainer.steps_applied} steps, "
              f"{len(trainer.recoveries)} recoveries", flush=True)
    trainer.close()
    orch.close_sync()


if __name__ == "__main__":
    main()
