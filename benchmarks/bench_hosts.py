"""Two "hosts", one torchrun each: a lost worker costs only its host, which rejoins.

    python benchmarks/bench_hosts.py [--trials 10]      # exit 1 if any trial failed

Each host is ``torchrun --nnodes 1 --nproc-per-node 2 --max-restarts 3`` on 127.0.0.1
running ``tests.workers.elastic_worker`` (DDP on gloo, ``ElasticTrainer``), placed in a
4-worker job by ``DTRUNTIME_WORLD_SIZE`` / ``DTRUNTIME_RANK_OFFSET``, heartbeat 100 ms /
timeout 1 s, with dtruntime as the only rendezvous between the hosts. Once every
worker has applied ``--kill-after`` steps, one worker is SIGKILLed: rank 3 (host B),
then rank 0 (host A's first worker: the leader and the coordinator's address) in
alternate trials. Its torchrun stops the host's other worker (SIGTERM: it leaves the
job cleanly, which keeps the other host's two workers a quorum) and restarts both.

Per trial, from the kill (one ``time.monotonic()`` clock on this machine):
- *continue*: the other host's first optimizer step in its own, shrunk group (the later
  of its two workers);
- *rejoin*: that host's first step with 4 workers again (the victim host's launcher
  noticed, restarted Python and torch, and its workers joined and got the live state);
- *steps lost*: the newest step the surviving host applied in the old group minus the step it
  continued from (0: nothing is redone).

The anchor, same run: ``benchmarks/anchor_torchrun_job.py`` (the same model, plain
torch, a checkpoint every 50 steps) as 4 workers under one ``torchrun --max-restarts
1``, rank 1 SIGKILLed at the same step; *continue* is the kill to the restarted
attempt's first step, *steps lost* what it redoes. (One launcher rather than two
``--nnodes 2`` agents, whose restart adds a re-rendezvous: the anchor's better case.)
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._procs import ROOT, free_port, percentile  # noqa: E402
from benchmarks.bench_elastic import torchrun_trial  # noqa: E402
from tests.launchers import Host  # noqa: E402

WORLD, PER_HOST = 4, 2


def wait_until(condition, timeout: float, what: str, hosts: list[Host]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    details = "\n".join(f"host at rank {h.offset}: {h.steps()[-2:]}\n  " + "\n  ".join(h.stderr[-12:]) for h in hosts)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n{details}")


def hosts_trial(victim: int, kill_after: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DTRUNTIME_WORLD_SIZE": str(WORLD),
           "COORDINATOR_URL": f"tcp://127.0.0.1:{free_port()}"}
    env.pop("DTRUNTIME_SECRET", None)
    worker_args = ["--epochs", "50", "--samples", "20000", "--batch-size", "16"]
    hosts = [Host(env, offset, PER_HOST, worker_args) for offset in range(0, WORLD, PER_HOST)]
    try:
        wait_until(lambda: all(sum(1 for s in h.steps() if s["world"] == WORLD) >= PER_HOST * kill_after
                               for h in hosts), 180, "the kill step", hosts)
        struck, other = (hosts[1], hosts[0]) if victim >= PER_HOST else (hosts[0], hosts[1])
        pid = struck.worker_pid(victim - struck.offset)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def after(kind: int) -> list[dict]:
            return [s for s in other.steps() if s["time"] > killed_at and s["world"] == kind]

        def regrown() -> list[dict]:  # steps with 4 workers after the shrunk group's first
            alone = after(PER_HOST)
            return [s for s in after(WORLD) if alone and s["number"] > alone[0]["number"]]

        wait_until(lambda: len(after(PER_HOST)) >= PER_HOST, 60, "the other host stepping alone", hosts)
        wait_until(lambda: len(regrown()) >= 1, 120, "the job stepping with 4 again", hosts)
        alone = after(PER_HOST)
        first_alone = min(s["number"] for s in alone)
        # The newest step the surviving host applied in the old group (one may finish after the kill).
        before = max(s["number"] for s in other.steps() if s["world"] == WORLD and s["number"] < first_alone)
        continued = max(s["time"] for s in alone if s["number"] == first_alone)
        return {"continue_s": continued - killed_at, "rejoin_s": regrown()[0]["time"] - killed_at,
                "steps_lost": before - (first_alone - 1)}
    finally:
        for host in hosts:
            host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="per victim, and for the anchor")
    parser.add_argument("--kill-after", type=int, default=60)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"rank 3 (host B)": [], "rank 0 (host A, the leader)": [], "anchor": []}
    failures: list[str] = []
    for trial in range(args.trials):
        for name, victim in (("rank 3 (host B)", 3), ("rank 0 (host A, the leader)", 0)):
            try:
                results[name].append(hosts_trial(victim, args.kill_after))
            except RuntimeError as failure:
                failures.append(f"{name}, trial {trial}: {failure}")
                print(f"FAILED {name}, trial {trial}: {str(failure)[-2500:]}", file=sys.stderr)
            print(name, results[name][-1:], file=sys.stderr, flush=True)
        results["anchor"].append(torchrun_trial(WORLD, args.kill_after))
    print(f"two torchrun hosts x {PER_HOST} DDP workers (gloo), kill -9 after {args.kill_after} steps, "
          f"heartbeat 100 ms / timeout 1 s, {args.trials} trials per row")
    print("| victim | continue p50 / p99 (s) | rejoin at 4 workers p50 / p99 (s) | steps lost |\n|---|---|---|---|")
    for name in ("rank 3 (host B)", "rank 0 (host A, the leader)"):
        trials = results[name]
        if not trials:
            continue
        cont, rejoin, lost = ([t[key] for t in trials] for key in ("continue_s", "rejoin_s", "steps_lost"))
        print(f"| {name} | {statistics.median(cont):.2f} / {percentile(cont, 0.99):.2f} | "
              f"{statistics.median(rejoin):.2f} / {percentile(rejoin, 0.99):.2f} | {min(lost)}-{max(lost)} |")
    anchor = results["anchor"]
    cont, lost = [t["continue_s"] for t in anchor], [t["steps_lost"] for t in anchor]
    print(f"| anchor: torchrun --max-restarts 1, 4 workers, checkpoint every 50 steps | "
          f"{statistics.median(cont):.2f} / {percentile(cont, 0.99):.2f} | - | {min(lost)}-{max(lost)} |")
    ours = [t["continue_s"] for name in results if name != "anchor" for t in results[name]]
    if ours:
        print(f"torchrun restart / dtruntime continue (p50): {statistics.median(cont) / statistics.median(ours):.1f}x")
    print(f"failed trials: {len(failures)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
