"""A plain synchronous training loop with a step boundary: run control, SIGTERM and the
progress watchdog all act there (``orch.step_boundary``).

    RANK=0 WORLD_SIZE=2 COORDINATOR_URL=tcp://127.0.0.1:29700 python examples/run_control_loop.py &
    RANK=1 WORLD_SIZE=2 COORDINATOR_URL=tcp://127.0.0.1:29700 python examples/run_control_loop.py &

SIGTERM to either process (or ``dtruntime stop URL``): every rank finishes its step,
saves the same step, the leader commits it and every process exits 0. Run it again and
it resumes from that step.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from dtruntime import CheckpointManager, CheckpointNotFoundError, RunStopped, TrainingOrchestrator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--checkpoint-dir", default="out/run-control")
    args = parser.parse_args()
    steps = args.steps

    torch.manual_seed(0)
    orch = TrainingOrchestrator()  # RANK, WORLD_SIZE, COORDINATOR_URL from the environment
    orch.register_worker_sync()
    model = nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    manager = CheckpointManager(args.checkpoint_dir, orchestrator=orch)

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    def train_one_step() -> None:
        x = torch.randn(32, 8)
        loss = nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    try:
        start = manager.list_checkpoints_sync()[-1]
        saved = manager.load_state(step=start)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        print(f"rank {orch.rank}: resumed from step {start}", flush=True)
    except (IndexError, CheckpointNotFoundError):
        start = 0
    print(f"rank {orch.rank}: training from step {start + 1}", flush=True)
    try:
        for step in range(start + 1, steps + 1):
            train_one_step()
            orch.step_boundary(step, save=lambda s: manager.save(state(), s))  # one driver call when no command is due
            if step == start + 10:
                print(f"rank {orch.rank}: at step {step}", flush=True)
    except RunStopped as stopped:
        print(f"rank {orch.rank}: stopped at step {stopped.step} (exit {stopped.code})", flush=True)
        raise
    finally:
        manager.close()
        orch.close_sync()
    print(f"rank {orch.rank}: finished step {steps}", flush=True)


if __name__ == "__main__":
    main()
