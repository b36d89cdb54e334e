"""What a checkpoint costs a real training loop: dtruntime's saves vs DCP's, same run.

    python benchmarks/bench_checkpoint_loop.py [--state-mib 256] [--steps 24] [--every 6] [--reps 3]

An MLP trained with Adam (its state dict, model plus optimizer, is about ``--state-mib``),
``--steps`` steps per trial with a checkpoint every ``--every`` steps, on local disk, with
``--threads`` torch threads (default 1, as torchrun sets for each of several ranks). Each
trial runs every variant back to back, the order rotated trial by trial, after one untimed
warm-up trial; medians of ``--reps`` trials:

  none           the loop without checkpoints (the baseline)
  ours           ``CheckpointManager.save(state)``: one copy in the caller, written behind
  ours-guarded   ``save(state, guard=(model, optimizer))``: the copy in a snapshot thread;
                 the next forward and step wait for it
  dcp            DCP ``async_save(state)``: its default stager (a fresh copy per save)
  dcp-stager     DCP ``async_save`` with one ``DefaultStager`` kept across saves
  dcp-async      DCP ``async_save`` with an asynchronous ``DefaultStager``
                 (``use_async_staging``): the loop waits for ``staging_completion`` before
                 the next optimizer step, as DCP's documentation asks

Columns: ``stall`` is the median time inside the save call (the issue's "caller time");
``added/save`` is the loop's wall time minus the baseline's, per save (what training
loses: the stall, the waits of the next step, and the background work competing for
the 2 cores); the last save of a trial is waited for outside the timed loop, so every
variant's loop contains the same writes behind it.
Goals (issue 9): the stall <= 0.5x DCP ``async_save``'s blocking time and <= 1.2x a
bare copy of the same tensors (``memcpy``, measured in the same trials).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions  # noqa: E402

from benchmarks.bench_checkpoint_tensors import init_gloo  # noqa: E402
from dtruntime import CheckpointManager  # noqa: E402

MiB = 1 << 20
WIDTH = 2048
BATCH = 64
VARIANTS = ("none", "ours", "ours-guarded", "dcp", "dcp-stager", "dcp-async")


def make_model(state_mib: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """An MLP whose model + Adam state is about ``state_mib`` MiB (12 bytes a parameter)."""
    layers = max(1, round(state_mib * MiB / 12 / (WIDTH * WIDTH)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return model, optimizer


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, before_step: Callable[[], None]) -> None:
    model(torch.randn(BATCH, WIDTH)).pow(2).mean().backward()
    before_step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)


def state_nbytes(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    return 0


class Variant:
    """One way of checkpointing inside the loop: ``save(step)`` returns what to wait for."""

    def __init__(self, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, root: Path) -> None:
        self.name, self.model, self.optimizer, self.root = name, model, optimizer, root
        self.pending: list[Any] = []
        self.staging: Any = None  # dcp-async: the staging future the next step waits for
        self.manager = CheckpointManager(str(root / name), keep_last_n=2) if name.startswith("ours") else None
        self.stager: Any = None
        if name == "dcp-stager":
            self.stager = DefaultStager(StagingOptions(False, False, False, False))
        elif name == "dcp-async":
            self.stager = DefaultStager(StagingOptions(False, False, True, False))
        self.saves = 0

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def save(self) -> None:
        self.saves += 1
        step = self.saves
        if self.name == "ours":
            self.pending.append(self.manager.save(self.state(), step))
        elif self.name == "ours-guarded":
            self.pending.append(self.manager.save(self.state(), step, guard=(self.model, self.optimizer)))
        else:
            target = self.root / self.name / str(step)
            old = self.root / self.name / str(step - 2)  # keep two, as ours does
            kwargs = {} if self.stager is None else {"async_stager": self.stager}
            response = dcp.async_save(self.state(), checkpoint_id=str(target), **kwargs)
            if self.name == "dcp-async":
                self.staging = response.staging_completion
                self.pending.append(response.upload_completion)
            else:
                self.pending.append(response)
            if old.exists():
                shutil.rmtree(old)

    def before_step(self) -> None:
        if self.staging is not None:
            self.staging.result()
            self.staging = None

    def settle(self) -> None:
        for future in self.pending:
            future.result()
        self.pending.clear()

    def close(self) -> None:
        self.settle()
        if self.manager is not None:
            self.manager.close()
        if self.stager is not None:
            self.stager.close()


def trial(variant: Variant, steps: int, every: int, stalls: list[float]) -> float:
    """One timed loop; returns its wall time; appends each save call's time to ``stalls``."""
    start = time.perf_counter()
    for step in range(1, steps + 1):
        train_step(variant.model, variant.optimizer, variant.before_step)
        if variant.name != "none" and step % every == 0:
            called = time.perf_counter()
            variant.save()
            stalls.append(time.perf_counter() - called)
    wall = time.perf_counter() - start
    variant.settle()
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state-mib", type=int, default=256)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=6)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the loop (1: what torchrun sets per rank, OMP_NUM_THREADS=1)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    init_gloo()
    root = Path(tempfile.mkdtemp(prefix="bench-loop-", dir=args.dir))
    model, optimizer = make_model(args.state_mib)
    train_step(model, optimizer, lambda: None)  # the optimizer's state exists
    nbytes = state_nbytes({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    sources = list(model.state_dict().values()) + [
        value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]
    copies = [source.clone() for source in sources]  # the bare copy's targets, allocated once
    variants = {name: Variant(name, model, optimizer, root) for name in VARIANTS}
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    stalls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    memcpy: list[float] = []
    saves_per_trial = args.steps // args.every
    try:
        for rep in range(args.reps + 1):  # trial 0 is the warm-up
            order = list(VARIANTS[rep % len(VARIANTS):] + VARIANTS[: rep % len(VARIANTS)])
            for name in order:
                trial_stalls: list[float] = []
                wall = trial(variants[name], args.steps, args.every, trial_stalls)
                started = time.perf_counter()
                for copy, source in zip(copies, sources):
                    copy.copy_(source)
                copied = time.perf_counter() - started
                if rep:
                    walls[name].append(wall)
                    stalls[name].extend(trial_stalls)
                    memcpy.append(copied)
    finally:
        for variant in variants.values():
            variant.close()
        shutil.rmtree(root, ignore_errors=True)
    base = statistics.median(walls["none"])
    report: dict[str, Any] = {
        "state_mib": round(nbytes / MiB, 1), "steps": args.steps, "every": args.every, "reps": args.reps,
        "threads": args.threads, "step_ms": round(base / args.steps * 1e3, 1),
        "memcpy_ms": round(statistics.median(memcpy) * 1e3, 1),
        "load_avg_end": [round(x, 2) for x in os.getloadavg()], "variants": {},
    }
    for name in VARIANTS[1:]:
        wall = statistics.median(walls[name])
        report["variants"][name] = {
            "stall_ms": round(statistics.median(stalls[name]) * 1e3, 1),
            "added_per_save_ms": round((wall - base) / saves_per_trial * 1e3, 1),
            "loop_s": round(wall, 2),
        }
    dcp_stall = report["variants"]["dcp"]["stall_ms"]
    for name in ("ours", "ours-guarded"):
        entry = report["variants"][name]
        entry["stall_vs_dcp"] = round(entry["stall_ms"] / dcp_stall, 3)
        entry["stall_vs_memcpy"] = round(entry["stall_ms"] / report["memcpy_ms"], 3)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
