"""One launcher per host: a host's failure costs only that host's workers.

Two ``torchrun --nnodes 1`` launchers stand for two hosts (3 and 2 workers of a 5-worker
job, placed by ``DTRUNTIME_WORLD_SIZE`` and ``DTRUNTIME_RANK_OFFSET``), with dtruntime as
the only rendezvous between them. One worker of host B is SIGKILLed mid-run: torchrun B
kills its whole group and restarts it (``--max-restarts``), host A's workers go on
in-process without it (a majority, 3 of 5, is still live), and B's restarted workers
rejoin and get the live state, so the job ends at 5 workers, every launcher exiting 0.

    python benchmarks/launcher_per_host.py      # prints PASS, or FAIL and why (exit 1)

Not in the test suite yet: it passed when run by hand (with ``examples/train_elastic.py``)
but failed in two full-suite runs, once on an IndexError in the regroup (since fixed)
and once when a host A worker's join recovery raised; see the session notes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._procs import ROOT, free_port  # noqa: E402

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
WORLD, EPOCHS = 5, 4


def launch(env: dict[str, str], offset: int, nproc: int, restarts: int) -> subprocess.Popen[str]:
    command = [TORCHRUN, "--nnodes", "1", "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
               "--max-restarts", str(restarts), "-m", "tests.workers.elastic_worker", "--epochs", str(EPOCHS),
               "--samples", "2000", "--hold-last-epoch-for", str(WORLD)]
    return subprocess.Popen(command, cwd=ROOT, env={**env, "DTRUNTIME_RANK_OFFSET": str(offset)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def workers_of(launcher: subprocess.Popen[str], timeout: float = 60.0) -> list[int]:
    """The pids of the worker processes torchrun started (its children), waiting for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
        if found:
            return [int(pid) for pid in found]
        time.sleep(0.1)
    raise AssertionError(f"torchrun {launcher.pid} started no workers in {timeout} s")


def events(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_a_lost_host_costs_only_its_workers_and_they_rejoin_after_torchrun_restarts_them():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "COORDINATOR_URL": f"tcp://127.0.0.1:{free_port()}", "DTRUNTIME_WORLD_SIZE": str(WORLD),
           "DTRUNTIME_SIGTERM": "default"}  # torchrun's restart sends SIGTERM to the host's other workers
    host_a = launch(env, offset=0, nproc=3, restarts=0)
    host_b = launch(env, offset=3, nproc=2, restarts=2)
    try:
        assert host_a.stdout is not None and host_b.stdout is not None
        seen_a: list[str] = []
        while not any('"world": 5' in line for line in seen_a):  # host A trains with all 5
            line = host_a.stdout.readline()
            assert line, "host A ended before training:\n" + "".join(seen_a[-20:])
            seen_a.append(line)
        os.kill(workers_of(host_b)[-1], signal.SIGKILL)
        out_a, _ = host_a.communicate(timeout=300)
        out_b, _ = host_b.communicate(timeout=120)
    finally:
        for launcher in (host_a, host_b):
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's own session: only what we started
            launcher.wait(timeout=30)
    out_a = "".join(seen_a) + out_a
    assert (host_a.returncode, host_b.returncode) == (0, 0), (out_a[-3000:], out_b[-3000:])
    worlds = [event["world"] for event in events(out_a) if event.get("event") == "step"]
    assert 3 in worlds and worlds[-1] == WORLD, sorted(set(worlds))  # A went on alone, then B came back
    done = [event for event in events(out_a) + events(out_b) if event.get("event") == "done"]
    assert len(done) == WORLD and len({event["digest"] for event in done}) == 1  # every rank, one model
    recovered = [event for event in events(out_a) if event.get("event") == "recovered"]
    assert recovered, out_a[-3000:]


if __name__ == "__main__":
    try:
        test_a_lost_host_costs_only_its_workers_and_they_rejoin_after_torchrun_restarts_them()
    except AssertionError as failure:
        print(f"FAIL: {str(failure)[-3000:]}")
        sys.exit(1)
    print("PASS")

