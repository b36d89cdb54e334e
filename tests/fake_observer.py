"""A stand-in for a peer's HTTP observer, for tests of what consumes it (the dashboard page, the CLI).

It serves the package's static dashboard files at ``/`` and the ``/api/dashboard`` document
of the shared contract (and its sub-documents), records every POST and answers them the
way the contract says: ``201 {"id", "name"}`` for a known run control, ``400`` for an
unknown one, ``401`` without the right bearer token when ``token`` is set. A real aiohttp
server on 127.0.0.1 in its own thread; the document can be replaced while it runs.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from pathlib import Path
from typing import Any

from aiohttp import web

STATIC = Path(__file__).resolve().parents[1] / "dtruntime" / "http" / "static"
COMMANDS = {"checkpoint-now", "stop", "log-level"}
SUB_DOCUMENTS = {"status": "status", "workers": "workers", "barriers": "barriers", "checkpoints": "checkpoints",
                 "datasets": "datasets", "metrics": "metrics", "tasks": "tasks", "logs": "logs"}


def worker(rank: int, status: str = "alive", *, step: int = 100, straggler: bool = False) -> dict[str, Any]:
    return {"worker_id": f"worker-{rank}", "rank": rank, "host": "127.0.0.1", "port": 29651 + rank,
            "status": status, "heartbeat_age_s": 0.05 if status == "alive" else 3.5, "step": step,
            "step_time_s": 0.25 if not straggler else 1.9, "straggler": straggler}


def dashboard(workers: list[dict[str, Any]], *, leader_rank: int = 0, term: int = 3) -> dict[str, Any]:
    """A contract-shaped ``/api/dashboard`` document over ``workers``."""
    return {
        "answered_by": {"worker_id": f"worker-{leader_rank}", "rank": leader_rank},
        "view_age_s": 0.02,
        "time": 1764633600.0,
        "status": {"term": term, "leader": f"worker-{leader_rank}", "leader_rank": leader_rank, "role": "leader",
                   "incarnation": 1, "joined": True, "ready": True, "world_size": len(workers)},
        "workers": workers,
        "barriers": [{"barrier_id": "epoch_3", "arrived": ["worker-0"], "waiting_for": ["worker-2"], "age_s": 1.5}],
        "checkpoints": {"committed": [{"step": 100, "bytes": 123456, "throughput_mib_s": 310.5,
                                       "committed_at": 1764633500.0}], "pending": [120]},
        "datasets": [{"name": "imagenet", "epoch": 2,
                      "progress_by_rank": {str(w["rank"]): 0.5 for w in workers}}],
        "metrics": {"barrier_wait_s": {"buckets": [[0.005, 3], [0.01, 7], ["+Inf", 9]], "count": 9, "sum": 0.12},
                    "barrier_release_s": {"buckets": [], "count": 0, "sum": 0.0},
                    "checkpoint_write_mib_s": {"buckets": [[100, 1], [1000, 2], ["+Inf", 2]], "count": 2,
                                               "sum": 620.0}},
        "tasks": [],
        "logs": [{"seq": 41, "time": 1764633599.1, "level": "WARNING", "logger": "dtruntime.x",
                  "worker_id": "worker-0", "message": "worker-2 is suspect"}],
    }


class FakeObserver:
    """``with FakeObserver(doc) as server: server.url``; ``server.posts`` lists (path, body, headers)."""

    def __init__(self, document: dict[str, Any], *, token: str | None = None) -> None:
        self._document = document
        self.token = token
        self.posts: list[tuple[str, Any, dict[str, str]]] = []
        self.url = ""
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._next_id = 0

    @property
    def document(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._document)

    @document.setter
    def document(self, value: dict[str, Any]) -> None:
        with self._lock:
            self._document = value

    def __enter__(self) -> "FakeObserver":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_static("/static", STATIC)
        app.router.add_get("/api/dashboard", self._dashboard)
        app.router.add_get("/api/{part}", self._part)
        app.router.add_post("/api/tasks", self._submit)
        app.router.add_post("/api/tasks/{task_id}/stop", self._cancel)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _dashboard(self, request: web.Request) -> web.Response:
        return web.json_response(self.document)

    async def _part(self, request: web.Request) -> web.Response:
        doc = self.document
        key = SUB_DOCUMENTS.get(request.match_info["part"])
        if key is None:
            return web.json_response({"error": "no such endpoint"}, status=404)
        return web.json_response({key: doc[key], "answered_by": doc["answered_by"], "view_age_s": doc["view_age_s"]})

    def _authorized(self, request: web.Request) -> bool:
        return self.token is None or request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _submit(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        with self._lock:
            self.posts.append((request.path, body, dict(request.headers)))
        if not self._authorized(request):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        if not isinstance(body, dict) or body.get("name") not in COMMANDS:
            return web.json_response({"error": f"unknown task name {body!r}"}, status=400)
        with self._lock:
            self._next_id += 1
            task_id = f"t{self._next_id}"
        return web.json_response({"id": task_id, "name": body["name"]}, status=201)

    async def _cancel(self, request: web.Request) -> web.Response:
        with self._lock:
            self.posts.append((request.path, None, dict(request.headers)))
        if not self._authorized(request):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        return web.json_response({"id": request.match_info["task_id"], "state": "cancelled"})
