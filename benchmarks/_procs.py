"""Worker processes for the runtime benchmarks: start, read their JSON lines, kill by pid.

Each worker is ``python -m <module> ...`` with the repository on ``PYTHONPATH``; it
prints one JSON object per line. Only processes started here are ever signalled.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Proc:
    """One worker process whose stdout JSON lines are collected by a reader thread."""

    def __init__(self, module: str, args: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("DTRUNTIME_SECRET", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.pid = self.process.pid
        self.lines: list[dict] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.lines.append(record)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self.stderr = [*self.stderr[-50:], line.rstrip()]

    def events(self, kind: str) -> list[dict]:
        with self._lock:
            return [line for line in self.lines if line.get("event") == kind]

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def wait_for(condition: Callable[[], bool], timeout: float, what: str, procs: list[Proc]) -> None:
    """Poll ``condition`` every 10 ms; raise with the workers' last stderr after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    details = "\n".join(f"pid {p.pid}: {p.lines[-2:]} {p.stderr[-5:]}" for p in procs)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{details}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
