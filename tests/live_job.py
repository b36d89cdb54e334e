"""A live 4-process job serving the HTTP API (tests/workers/dashboard_worker.py), for the
dashboard browser test and the CLI's live-job tests.

``LiveJob(tmp_path)`` starts ``world`` real worker processes on 127.0.0.1, each serving
HTTP on its own free port, checkpoints under ``tmp_path/ckpt``; entering waits (bounded)
until every rank answers ``/api/dashboard`` with every worker alive and a leader known.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from .cluster import Cluster, free_port

START_TIMEOUT = 90


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


class LiveJob:
    def __init__(self, tmp_path: Path, world: int = 4, extra: list[str] = ()) -> None:
        self.storage = tmp_path / "ckpt"
        self.ports = [free_port() for _ in range(world)]
        self.world = world
        self.cluster = Cluster(
            world,
            lambda rank: ["--http-port", str(self.ports[rank]), "--storage", str(self.storage), *extra],
            module="tests.workers.dashboard_worker",
        )

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def dashboard(self, rank: int) -> dict[str, Any]:
        return get_json(self.urls[rank] + "/api/dashboard")

    def statuses(self, rank: int) -> dict[str, str]:
        return {w["worker_id"]: w["status"] for w in self.dashboard(rank)["workers"]}

    def wait(self, condition, timeout: float, what: str) -> None:
        def safe() -> bool:
            try:
                return bool(condition())
            except OSError:  # not serving yet
                return False

        self.cluster.wait(safe, timeout, what)

    def __enter__(self) -> "LiveJob":
        self.cluster.__enter__()
        try:
            self.cluster.wait(self._registered, START_TIMEOUT, "every rank registered")
            alive = {f"worker-{r}": "alive" for r in range(self.world)}
            self.wait(lambda: all(self.statuses(r) == alive and self.dashboard(r)["status"]["leader"]
                                  for r in range(self.world)), START_TIMEOUT, "every rank seeing every worker alive")
        except BaseException:
            self.cluster.__exit__(None, None, None)
            raise
        return self

    def _registered(self) -> bool:
        """True once every rank registered; fails at once if a rank exited before that."""
        for w in self.cluster.workers:
            if not w.events("registered") and w.process.poll() is not None:
                raise AssertionError(f"rank {w.rank} exited ({w.process.returncode}) before registering: "
                                     f"{w.lines[-3:]} {w.stderr[-5:]}")
        return all(w.events("registered") for w in self.cluster.workers)

    def __exit__(self, *exc_info: object) -> None:
        self.cluster.__exit__(*exc_info)
