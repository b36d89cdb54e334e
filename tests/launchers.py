"""One ``torchrun --nnodes 1`` per "host" on 127.0.0.1, for the per-host launcher shape.

Each launcher runs in its own session and its workers in theirs (torchrun's doing), so
stopping one kills the launcher's session and its workers by pid: only what it started.
The workers' JSON lines are collected from the launcher's stdout (which they share, so lines
can run together: :func:`json_objects` reads every object out of a line).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .cluster import ROOT, free_port

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


class Host:
    """One torchrun launcher (its own session) and the JSON events its workers print."""

    def __init__(self, env: dict[str, str], offset: int, nproc: int, worker_args: list[str]) -> None:
        """``nproc`` workers placed from rank ``offset`` (``env`` must set DTRUNTIME_WORLD_SIZE)."""
        self.offset = offset
        command = [TORCHRUN, "--nnodes", "1", "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
                   "--max-restarts", "3", "-m", "tests.workers.elastic_worker",
                   *worker_args]
        self.process = subprocess.Popen(command, cwd=ROOT, env={**env, "DTRUNTIME_RANK_OFFSET": str(offset)},
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
        self.lines: list[dict] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            found = json_objects(line)
            with self._lock:
                self.lines.extend(found)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self.stderr = [*self.stderr[-40:], line.rstrip()]

    def events(self, kind: str) -> list[dict]:
        with self._lock:
            return [event for event in self.lines if event.get("event") == kind]

    def steps(self) -> list[dict]:
        return self.events("step")

    def worker_pid(self, local_rank: int, timeout: float = 60.0) -> int:
        """The pid of this launcher's worker at ``local_rank`` (a child of torchrun)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for pid in children(self.process.pid):
                try:
                    with open(f"/proc/{pid}/environ", "rb") as environ:
                        if f"LOCAL_RANK={local_rank}".encode() in environ.read().split(b"\0"):
                            return pid
                except OSError:
                    continue
            time.sleep(0.05)
        raise RuntimeError(f"no worker at local rank {local_rank} under torchrun {self.process.pid}")

    def stop(self) -> None:
        """Kill the launcher and its workers (torchrun starts each worker in a session of
        its own, so they are listed and killed by pid; the launcher cannot restart any
        once its own session is killed, first)."""
        workers = children(self.process.pid)
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the session started for it: only what we started
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=30)


def json_objects(line: str) -> list[dict]:
    """Every JSON object in ``line``."""
    decoder, found, at = json.JSONDecoder(), [], line.find("{")
    while at >= 0:
        try:
            value, end = decoder.raw_decode(line, at)
        except ValueError:
            at = line.find("{", at + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        at = line.find("{", end)
    return found


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            return [int(child) for child in listed.read().split()]
    except OSError:
        return []
