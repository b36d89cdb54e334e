"""A worker SIGKILLed mid-training: dtruntime's in-process continuation vs torchrun's restart.

    python benchmarks/bench_elastic.py [--trials 10] [--world 4]

Both jobs are DDP (gloo, CPU) on ``world`` processes on 127.0.0.1, in the same run.

- **dtruntime**: ``tests.workers.elastic_worker`` processes on ``ElasticTrainer``,
  heartbeat 100 ms / timeout 1 s. Once every worker has applied ``--kill-after`` steps,
  one is SIGKILLed (rank 2, then rank 0, the leader, in alternate trials). *Continue* is
  the kill to the first step the survivors apply in the new group (the last survivor to
  do so); *steps lost* is the newest step any worker applied in the old group minus
  the step the survivors continued from (what the new group redoes). Then a new
  process for the victim's rank is started: *rejoin* is its start to its first step in
  the grown-back group (its Python and torch start-up included).
- **torchrun** (the anchor): ``benchmarks/anchor_torchrun_job.py`` under ``torchrun
  --max-restarts 1``, checkpointing every 50 steps; rank 1 is SIGKILLed at the same
  step. *Continue* is the kill to the first step of the restarted attempt; *steps lost*
  is what the restart redoes (every step since its last checkpoint).

All times are ``time.monotonic()`` of the workers and of this script (one clock on a
machine).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._procs import ROOT, Proc, free_port, percentile, wait_for  # noqa: E402
from tests.launchers import children  # noqa: E402


def dtruntime_trial(world: int, victim: int, kill_after: int) -> dict:
    coordinator = f"tcp://127.0.0.1:{free_port()}"

    def worker(rank: int) -> Proc:
        return Proc("tests.workers.elastic_worker", ["--rank", str(rank), "--world", str(world), "--coordinator",
                                                     coordinator, "--epochs", "3", "--samples", "20000",
                                                     "--batch-size", "16"])

    procs = [worker(rank) for rank in range(world)]
    try:
        wait_for(lambda: all(len(p.events("step")) >= kill_after for p in procs), 120, "the kill step", procs)
        killed_at = time.monotonic()
        procs[victim].kill()
        survivors = [p for rank, p in enumerate(procs) if rank != victim]
        wait_for(lambda: all(any(e["world"] == world - 1 for e in p.events("step")) for p in survivors), 120,
                 "a step in the new group", procs)
        before = max(e["number"] for p in procs for e in p.events("step") if e["world"] == world)
        first_after = [next(e for e in p.events("step") if e["world"] == world - 1) for p in survivors]
        started = time.monotonic()
        procs.append(worker(victim))
        wait_for(lambda: any(e["world"] == world for e in procs[-1].events("step")), 120, "the rejoin", procs)
        return {"continue_s": max(e["time"] for e in first_after) - killed_at,
                "steps_lost": before - (first_after[0]["number"] - 1),
                "rejoin_s": procs[-1].events("step")[0]["time"] - started}
    finally:
        for proc in procs:
            proc.kill()


def torchrun_trial(world: int, kill_after: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        job = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--max-restarts", "1",
             "--master-port", str(free_port()), str(ROOT / "benchmarks" / "anchor_torchrun_job.py"),
             "--checkpoint", str(Path(scratch) / "ckpt.pt")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        steps: list[dict] = []
        lock = threading.Lock()

        def read() -> None:
            for line in job.stdout:  # type: ignore[union-attr]
                try:
                    record = json.loads(line)
                except ValueError:  # torchrun's own lines
                    continue
                with lock:
                    steps.append(record)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with lock:
                    if sum(1 for s in steps if s["attempt"] == 0) >= world * kill_after:
                        break
                time.sleep(0.01)
            victim = _worker_pid(job.pid, rank=1)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            while time.monotonic() < deadline:
                with lock:
                    if any(s["attempt"] == 1 for s in steps):
                        break
                time.sleep(0.01)
            with lock:
                before = max(s["number"] for s in steps if s["attempt"] == 0)
                restarted = [s for s in steps if s["attempt"] == 1]
            if not restarted:
                raise RuntimeError("torchrun did not restart the job in time")
            return {"continue_s": restarted[0]["time"] - killed_at,
                    "steps_lost": before - (restarted[0]["number"] - 1)}
        finally:
            for pid in [job.pid, *children(job.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            job.wait(timeout=30)


def _worker_pid(agent: int, rank: int) -> int:
    for pid in children(agent):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if f"RANK={rank}".encode() in environ.read().split(b"\0"):
                    return pid
        except OSError:
            continue
    raise RuntimeError(f"torchrun worker of rank {rank} not found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--kill-after", type=int, default=75)
    parser.add_argument("--quiet", action="store_true", help="no progress bar (none unless stderr is a terminal)")
    args = parser.parse_args()
    from simulations.progress import progress_bar

    with progress_bar(3 * args.trials, "kill -9 trials", "trial", quiet=args.quiet) as bar:
        def counted(result: dict) -> dict:
            bar.update(1)
            return result

        ours = {victim: [counted(dtruntime_trial(args.world, victim, args.kill_after)) for _ in range(args.trials)]
                for victim in (2, 0)}
        anchor = [counted(torchrun_trial(args.world, args.kill_after)) for _ in range(args.trials)]

    def row(name: str, trials: list[dict]) -> str:
        times = [t["continue_s"] for t in trials]
        lost = [t["steps_lost"] for t in trials]
        return (f"| {name} | {statistics.median(times):.2f} | {percentile(times, 0.99):.2f} | "
                f"{min(lost)}-{max(lost)} |")

    print(f"kill -9 of one of {args.world} DDP workers after {args.kill_after} steps, {args.trials} trials each")
    print("| job | continue p50 (s) | p99 (s) | steps lost |\n|---|---|---|---|")
    print(row("dtruntime ElasticTrainer, rank 2 killed", ours[2]))
    print(row("dtruntime ElasticTrainer, rank 0 (leader) killed", ours[0]))
    print(row("torchrun --max-restarts 1, checkpoint every 50 steps", anchor))
    rejoins = [t["rejoin_s"] for t in ours[2] + ours[0]]
    print(f"replacement started -> the job steps with {args.world} workers again: p50 "
          f"{statistics.median(rejoins):.2f} s, p99 {percentile(rejoins, 0.99):.2f} s (includes the new "
          "process's Python and torch start-up)")
    ratio = statistics.median(t["continue_s"] for t in anchor) / statistics.median(
        t["continue_s"] for t in ours[2] + ours[0])
    print(f"torchrun restart / dtruntime continue (p50): {ratio:.1f}x")


if __name__ == "__main__":
    main()
