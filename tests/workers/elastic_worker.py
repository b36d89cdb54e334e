"""A DDP worker on ``ElasticTrainer`` for the continuation tests; reports JSON lines.

    python -m tests.workers.elastic_worker --rank R --world N --coordinator tcp://127.0.0.1:P
        [--epochs E] [--samples S] [--batch-size B] [--die-at-step K --die-when before|backward|after|pause|spin]
        [--storage DIR]

Events: "step" (number, epoch, begin, end, padding, loss, world, monotonic time) after each applied
step; "recovered" per new generation; "done" with a digest of the parameters. With
``--die-at-step`` the process SIGKILLs itself at step K: before the step's forward,
inside it after the forward (its peers are then in, or about to enter, the
all-reduce), or right after the step was applied; ``pause`` SIGSTOPs itself inside the
step instead (a hung host: its sockets stay open); ``spin`` loops forever in Python inside the
step (its driver thread goes on heartbeating). ``--storage``: run-control checkpoints go there
(``ElasticTrainer(checkpoints=...)``), the trainer resumes from the newest ("resumed" event),
and a stop ends the run with a "stopped" event (code, step).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import hashlib
import os
import signal
import time

import torch
from torch import nn

from dtruntime import CheckpointManager, CheckpointNotFoundError, TrainingOrchestrator
from dtruntime.elastic import ElasticTrainer
from dtruntime.errors import RunStopped

from . import emit, fast_orchestrator

FEATURES = 8


def batch(indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of global samples ``indices`` (the same sample on every rank)."""
    index = torch.as_tensor(indices, dtype=torch.float32)[:, None]
    x = torch.sin(index * torch.arange(1, FEATURES + 1, dtype=torch.float32) * 0.01)
    return x, x.sum(dim=1, keepdim=True) * 0.5 + 0.25


def parameters_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, help="default: from the launcher's environment (torchrun)")
    parser.add_argument("--world", type=int)
    parser.add_argument("--coordinator")
    parser.add_argument("--hold-last-epoch-for", type=int, default=0, metavar="N",
                        help="before the last epoch, wait (at most 120 s) until N workers are live, so that a "
                             "replacement slow to start on a loaded machine still finds the job running")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--die-at-step", type=int, default=0)
    parser.add_argument("--die-when", choices=["before", "backward", "after", "pause", "spin"], default="backward")
    parser.add_argument("--storage", default="")
    parser.add_argument("--progress-timeout", type=int, default=0)
    parser.add_argument("--sigterm", choices=["auto", "stop", "leave", "default"], default="auto",
                        help="[preemption] sigterm (with --rank the test runner's environment is ignored)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1)  # a hung test can ask where each worker is

    torch.manual_seed(0)
    if args.rank is None:  # under a launcher: place and coordinator from the environment
        orchestrator = TrainingOrchestrator(heartbeat_interval_ms=100, heartbeat_timeout_ms=1000,
                                            progress_timeout_s=args.progress_timeout, sigterm=args.sigterm)
    else:
        orchestrator = fast_orchestrator(args.rank, args.coordinator, args.world,
                                         progress_timeout_s=args.progress_timeout, sigterm=args.sigterm)
    orchestrator.register_worker_sync("127.0.0.1", 0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    manager = CheckpointManager(args.storage, orchestrator=orchestrator, config=orchestrator.config) \
        if args.storage else None
    trainer = ElasticTrainer(orchestrator, model, optimizer, num_samples=args.samples, batch_size=args.batch_size,
                             seed=11, checkpoints=manager)
    if manager is not None:
        try:
            trainer.load(manager.load_state())
        except CheckpointNotFoundError:
            pass
        emit(event="resumed", step=trainer.steps_applied)
    seen_recoveries = 0
    try:
        train(args, trainer, seen_recoveries)
    except RunStopped as stopped:
        emit(event="stopped", code=stopped.code, step=stopped.step)
        if manager is not None:
            manager.close()
        trainer.close()
        orchestrator.close_sync()
        raise
    emit(event="done", digest=parameters_digest(model), steps=trainer.steps_applied)
    trainer.close()
    orchestrator.close_sync()


def spin_forever() -> None:
    """An endless Python loop (the driver thread still heartbeats): the watchdog's case."""
    counter = 0
    while True:
        counter += 1


def train(args, trainer: ElasticTrainer, seen_recoveries: int) -> None:
    for epoch in range(trainer.epoch, args.epochs):  # a replacement starts where the job is
        if epoch == args.epochs - 1 and args.hold_last_epoch_for:
            held_until = time.monotonic() + 120
            while len(trainer.orchestrator.members()) < args.hold_last_epoch_for and time.monotonic() < held_until:
                time.sleep(0.05)
        for step in trainer.epoch_steps(epoch):
            dies = step.number == args.die_at_step
            if dies and args.die_when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            with step:
                x, y = batch(step.indices)
                loss = nn.functional.mse_loss(trainer.ddp(x), y)
                if dies and args.die_when == "backward":
                    os.kill(os.getpid(), signal.SIGKILL)
                if dies and args.die_when == "pause":  # alive, sockets open, driver stopped too
                    os.kill(os.getpid(), signal.SIGSTOP)
                if dies and args.die_when == "spin":
                    spin_forever()
                loss.backward()
            if step.applied:
                emit(event="step", number=step.number, epoch=epoch, begin=step.begin, end=step.end,
                     padding=step.padding, loss=loss.item(), world=trainer.generation.size, time=time.monotonic())
                if dies and args.die_when == "after":
                    os.kill(os.getpid(), signal.SIGKILL)
            for record in trainer.recoveries[seen_recoveries:]:
                emit(event="recovered", **record)
            seen_recoveries = len(trainer.recoveries)


if __name__ == "__main__":
    main()
