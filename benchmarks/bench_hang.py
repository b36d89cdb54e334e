"""Hangs and preemption on real processes (issue 11): detection and stop times, p50 / p99.

    python benchmarks/bench_hang.py [--world 3] [--sigstop 10] [--spin 10] [--sigterm-all 20]
        [--sigterm-one 10] [--progress-timeout 3]

- **sigstop**: ``tests.workers.elastic_worker`` (``ElasticTrainer``, gloo DDP, heartbeat
  100 ms / timeout 1 s); rank 1 SIGSTOPs itself inside step 20 (its driver stops too).
  *Continue* = from its last applied step (19) to the survivors' first step in the new
  group (the slowest survivor).
- **spin**: the same job; rank 1 loops forever in Python inside step 20 while its driver
  heartbeats; ``[watchdog] progress_timeout_s`` = ``--progress-timeout``. *Declared* = the
  "no progress for X s" a survivor logs; *continue* as above; the trial also checks that
  the hung rank exited 3 with ``spin_forever`` in its stack dump.
- **sigterm-all / sigterm-one**: ``tests.workers.control_worker`` (a plain loop with
  ``step_boundary`` every 20 ms and a ``CheckpointManager``); SIGTERM to every rank, or to
  a random one, at a random moment 0-1 s into training. *Stop* = SIGTERM to the last
  process's exit. A trial passes when every process exited 0, they all stopped at one
  step, that step is the newest committed, and a relaunch resumes there. *Steps lost* =
  the newest step any rank reached minus the step the relaunch resumes at.
- **anchor** (``--anchor N`` trials, the same run): the same loop without dtruntime's
  handler (``[preemption] sigterm = "default"``) and a checkpoint every 50 steps, the
  usual defence; SIGTERM to every rank. Python's default disposition ends each process
  at once (exit -15); the relaunch resumes at the last periodic checkpoint.

All times are ``time.monotonic()`` (one clock on the machine).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._procs import Proc, free_port, percentile, wait_for  # noqa: E402


def start(module: str, world: int, extra) -> list[Proc]:
    coordinator = f"tcp://127.0.0.1:{free_port()}"
    return [Proc(module, ["--rank", str(rank), "--world", str(world), "--coordinator", coordinator, *extra(rank)])
            for rank in range(world)]


def kill_all(procs: list[Proc]) -> None:
    for proc in procs:
        proc.kill()


def elastic_trial(world: int, mode: str, progress_timeout: int) -> dict:
    victim = 1
    extra = lambda rank: ["--epochs", "2", "--progress-timeout", str(progress_timeout)] + (  # noqa: E731
        ["--die-at-step", "20", "--die-when", "pause" if mode == "sigstop" else "spin"] if rank == victim else [])
    procs = start("tests.workers.elastic_worker", world, extra)
    survivors = [p for rank, p in enumerate(procs) if rank != victim]
    try:
        def continued() -> bool:
            return all(any(e["world"] == world - 1 for e in p.events("step")) for p in survivors)

        wait_for(continued, 240, "the survivors' first step without the victim", procs)
        last = max(e["time"] for e in procs[victim].events("step") if e["number"] == 19)
        first = max(min(e["time"] for e in p.events("step") if e["world"] == world - 1) for p in survivors)
        row = {"continue_s": first - last}
        if mode == "spin":
            wait_for(lambda: procs[victim].process.poll() is not None, 60, "the hung rank's exit", procs)
            declared = [float(m.group(1)) for p in survivors for line in p.stderr
                        if (m := re.search(r"is hung: no progress since step 19 for ([0-9.]+) s", line))]
            row.update(declared_s=max(declared) if declared else None, exit_code=procs[victim].process.returncode)
        return row
    finally:
        kill_all(procs)


def sigterm_trial(world: int, targets: str, rng: random.Random, anchor: bool = False) -> dict:
    extra = ["--sigterm", "default", "--every", "50"] if anchor else []
    with tempfile.TemporaryDirectory() as storage:
        procs = start("tests.workers.control_worker", world, lambda rank: ["--storage", storage, *extra])
        try:
            wait_for(lambda: all(p.events("ready") for p in procs), 120, "every rank past a boundary", procs)
            time.sleep(rng.uniform(0.0, 1.0))
            victims = procs if targets == "all" else [rng.choice(procs)]
            sent = time.monotonic()
            for proc in victims:
                proc.process.send_signal(signal.SIGTERM)
            wait_for(lambda: all(p.process.poll() is not None for p in procs), 60, "every exit", procs)
            stop_s = time.monotonic() - sent
            codes = [p.process.returncode for p in procs]
            steps = [p.events("stopped")[0]["step"] if p.events("stopped") else None for p in procs]
            reached = max(e["step"] for p in procs for e in p.events("step") + p.events("stopped"))
        finally:
            kill_all(procs)
        from dtruntime import CheckpointManager

        with CheckpointManager(storage) as manager:
            committed = manager.list_checkpoints_sync(verify=True)
        ok = codes == [0] * world and len(set(steps)) == 1 and committed and committed[-1] == steps[0]
        procs = start("tests.workers.control_worker", world,  # the relaunch
                      lambda rank: ["--storage", storage, "--steps", str(reached + 2), *extra])
        try:
            wait_for(lambda: all(p.events("resumed") for p in procs), 120, "the relaunch", procs)
            resumed = [p.events("resumed")[0]["step"] for p in procs]
        finally:
            kill_all(procs)
        ok = ok and resumed == [steps[0]] * world
        return {"stop_s": stop_s, "ok": bool(ok), "codes": codes, "steps": steps,
                "steps_lost": reached - min(resumed)}


def summary(name: str, rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return f"{name}: no {key} measured"
    return (f"{name}: {key} p50 {percentile(values, 0.5):.2f} s, p99 {percentile(values, 0.99):.2f} s, "
            f"max {max(values):.2f} s over {len(values)} trials")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=3)
    parser.add_argument("--sigstop", type=int, default=10)
    parser.add_argument("--spin", type=int, default=10)
    parser.add_argument("--sigterm-all", type=int, default=20)
    parser.add_argument("--sigterm-one", type=int, default=10)
    parser.add_argument("--progress-timeout", type=int, default=3)
    parser.add_argument("--anchor", type=int, default=5, help="trials of the anchor (no handler, periodic saves)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write every trial's figures here")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    results: dict[str, list[dict]] = {}
    for mode, trials in (("sigstop", args.sigstop), ("spin", args.spin)):
        results[mode] = [elastic_trial(args.world, mode, args.progress_timeout) for _ in range(trials)]
        if results[mode]:
            print(summary(mode, results[mode], "continue_s"), flush=True)
    if results["spin"]:
        print(summary(f"spin (progress_timeout {args.progress_timeout} s)", results["spin"], "declared_s"))
        print(f"spin: hung rank's exit codes {sorted({r['exit_code'] for r in results['spin']})}", flush=True)
    for mode, trials in (("all", args.sigterm_all), ("one", args.sigterm_one)):
        rows = [sigterm_trial(args.world, mode, rng) for _ in range(trials)]
        results[f"sigterm-{mode}"] = rows
        if rows:
            passed = sum(r["ok"] for r in rows)
            print(f"{summary(f'sigterm-{mode}', rows, 'stop_s')}; {passed}/{len(rows)} trials: every process exited 0, "
                  "one step committed for every rank, the relaunch resumed there; steps lost max "
                  f"{max(r['steps_lost'] for r in rows)}", flush=True)
    rows = [sigterm_trial(args.world, "all", rng, anchor=True) for _ in range(args.anchor)]
    results["anchor"] = rows
    if rows:
        lost = [r["steps_lost"] for r in rows]
        print(f"{summary('anchor (no handler, checkpoint every 50 steps)', rows, 'stop_s')}; exit codes "
              f"{sorted({c for r in rows for c in r['codes']})}; steps lost p50 {percentile(lost, 0.5)}, "
              f"max {max(lost)}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
