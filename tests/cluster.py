"""Start real worker processes on 127.0.0.1 and watch their JSON-line reports."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


_PORTS = random.Random()  # test-side only: which free port to try first


def free_port(span: int = 1) -> int:
    """A port P on 127.0.0.1 with P .. P+span-1 all free, below the kernel's ephemeral range.

    Ephemeral ports (32768+) are also handed out as the source ports of outgoing
    connections, so one could be taken by a peer's reconnect attempt before our process
    binds it; ports under 32768 are only ever bound explicitly.
    """
    for _ in range(200):
        port = _PORTS.randrange(20000, 32768 - span)
        try:
            for offset in range(span):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair found below 32768")


class WorkerProcess:
    """One worker process (``tests.workers.barrier_worker`` by default); its report lines are collected."""

    def __init__(
        self, rank: int, world: int, coordinator: str, extra: list[str], module: str = "tests.workers.barrier_worker"
    ) -> None:
        self.rank = rank
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", module, "--rank", str(rank), "--world", str(world),
                   "--coordinator", coordinator, *extra]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: list[dict] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True).start()

    def _read(self, stream, is_json: bool) -> None:
        for line in stream:
            with self._lock:
                if is_json:
                    try:
                        self.lines.append(json.loads(line))
                    except ValueError:  # shown in failure details, never kills the reader
                        self.lines.append({"event": "unparsable", "line": line})
                else:
                    self.stderr.append(line.rstrip())

    def events(self, kind: str) -> list[dict]:
        with self._lock:
            return [line for line in self.lines if line["event"] == kind]

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


class Cluster:
    """``world`` worker processes joined through rank 0's port; killed on exit."""

    def __init__(
        self, world: int, extra: list[str] | Callable[[int], list[str]] = (), module: str = "tests.workers.barrier_worker"
    ) -> None:
        self.coordinator = f"tcp://127.0.0.1:{free_port()}"
        self.workers = [
            WorkerProcess(rank, world, self.coordinator, extra(rank) if callable(extra) else list(extra), module)
            for rank in range(world)
        ]

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        for worker in self.workers:
            worker.stop()

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``condition`` every 20 ms until true; fail with the workers' stderr after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.02)
        details = "\n".join(f"rank {w.rank}: {w.lines[-3:]} {w.stderr[-5:]}" for w in self.workers)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{details}")

    def wait_exit(self, ranks: list[int], timeout: float) -> None:
        self.wait(lambda: all(self.workers[r].process.poll() is not None for r in ranks), timeout, f"exit of {ranks}")


def kill(worker: WorkerProcess) -> None:
    worker.signal(signal.SIGKILL)
