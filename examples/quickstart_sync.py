"""The README's second snippet: a plain synchronous loop with the ``_sync`` twins.

Under torchrun, which sets every variable it reads:

    torchrun --nproc-per-node 2 examples/quickstart_sync.py

or as plain processes (``RANK``, ``WORLD_SIZE`` and ``COORDINATOR_URL`` per process).
Each epoch, every worker meets the others at a barrier, reads its records of the
dataset from the shard ring and saves its part of the epoch's checkpoint to
``out/quickstart-sync``; a rerun resumes after the newest committed epoch.
"""

import torch

from dtruntime import CheckpointManager, DatasetRegistry, TrainingOrchestrator

epochs = 3
model = torch.nn.Linear(16, 1)
orch = TrainingOrchestrator()                 # from torchrun's environment
orch.register_worker_sync()
registry = DatasetRegistry(orchestrator=orch)  # the shard ring follows live membership
# Collective: returns once every worker registered it; a spec that differs on any worker
# raises DatasetError on every worker, naming the field ("shard_size is 500 on worker-3 and 1000 here").
# A dataset of files: registry.register("imagenet", "s3://data/imagenet", "parquet", shard_size=1000, ...)
registry.register("synthetic", total_samples=100_000, shard_size=1000, shuffle=True, seed=42)
checkpoints = CheckpointManager("out/quickstart-sync", orchestrator=orch)
start_epoch = checkpoints.load_state()["epoch"] + 1 if checkpoints.list_checkpoints_sync() else 0
for epoch in range(start_epoch, epochs):
    orch.wait_barrier_sync(f"epoch_{epoch}")
    samples = 0
    for record in registry.get_assignment("synthetic", worker_rank=orch.rank, epoch=epoch):
        samples += record.num_samples  # and record.file_paths, record.start_sample, record.end_sample
    checkpoints.save({"model": model.state_dict(), "epoch": epoch}, step=epoch)  # tensors copied now, written in the background
    print(f"rank {orch.rank}: epoch {epoch}, {samples} samples", flush=True)
orch.close_sync()  # commits the last step on every rank first
