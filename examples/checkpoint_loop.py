"""A training loop that checkpoints without stalling on the copy (one process).

    python examples/checkpoint_loop.py out/checkpoint-loop [STEPS]

Trains a small model with AdamW for STEPS steps (default 60) and saves a checkpoint every
20 steps with ``guard=(model, optimizer)``: ``save`` returns before the tensors are
copied, a snapshot thread copies them while the next forward and backward run, and the
optimizer's step (and the BatchNorm layer's forward, which updates its running
statistics) waits for that copy, so every checkpoint is the state of its step. A rerun
resumes after the newest committed step and trains up to STEPS.
"""

from __future__ import annotations

import sys

import torch

from dtruntime import CheckpointManager


def main(checkpoint_dir: str, steps: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    checkpoints = CheckpointManager(checkpoint_dir, keep_last_n=2, interval_steps=20)
    start = 0
    if checkpoints.list_checkpoints_sync():
        state = checkpoints.load_state()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        print(f"resumed from step {start}", flush=True)

    for step in range(start + 1, steps + 1):
        loss = model(torch.randn(32, 64)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if checkpoints.should_save(step):
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            checkpoints.save(state, step, guard=(model, optimizer))  # returns before the copy

    checkpoints.close()  # every save durable and committed
    print(f"trained to step {steps}, checkpoints {checkpoints.list_checkpoints_sync()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/checkpoint-loop", int(sys.argv[2]) if len(sys.argv) > 2 else 60)
