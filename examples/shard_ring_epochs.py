"""The README's shard-ring snippet: elastic epochs with ``report_progress`` and ``take_over``.

One process per worker (``RANK``, ``WORLD_SIZE``, ``COORDINATOR_URL`` per process, or
torchrun's environment). Each reads its records of every epoch in batches, reports its
progress as it goes, and after the epoch takes over its share of whatever a lost worker
left unread, so that every sample is read once per epoch. ``kill -9`` one worker
mid-epoch to see it: the survivors print the samples they took over.

    for r in 0 1 2; do
      RANK=$r WORLD_SIZE=3 COORDINATOR_URL=tcp://127.0.0.1:29900 \\
      python examples/shard_ring_epochs.py --epochs 2 &
    done

Each worker prints, per epoch, how many samples it read (its own and taken over) and
the sum of their indices, so a caller can check the union.
"""

import argparse
import time

from dtruntime import DatasetRegistry, TrainingOrchestrator

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--samples", type=int, default=30_000)
parser.add_argument("--batch-pause", type=float, default=0.0, help="sleep per batch (to kill a worker mid-epoch)")
args = parser.parse_args()
batch_size = 500
read: list[int] = []  # the sample numbers this worker read in the current epoch


def batches(records):
    """This worker's samples, in order, ``batch_size`` at a time, padding records skipped."""
    order = [int(i) for record in records if not record.padding for i in record.sample_order()]
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def train_step(batch):
    read.extend(batch)
    time.sleep(args.batch_pause)


orch = TrainingOrchestrator()
orch.register_worker_sync()
registry = DatasetRegistry(orchestrator=orch)
registry.register("imagenet", total_samples=args.samples, shard_size=1000, shuffle=True, seed=42)
for epoch in range(args.epochs):
    read.clear()
    records = registry.get_assignment("imagenet", worker_rank=orch.rank, epoch=epoch)  # fixes the epoch's members
    for cursor, batch in enumerate(batches(records), start=1):
        train_step(batch)
        registry.report_progress("imagenet", epoch, cursor * batch_size)  # gossiped, no leader round trip
    own = len(read)
    for record in registry.take_over("imagenet", epoch):  # [] unless a worker of this epoch was lost
        for batch in batches([record]):  # read it like your own records
            train_step(batch)
    print(f"rank {orch.rank} epoch {epoch}: {len(read)} samples ({len(read) - own} taken over), "
          f"index sum {sum(read)}", flush=True)
orch.close_sync()
