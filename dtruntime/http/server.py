"""The HTTP API every worker may serve: aiohttp in a thread of its own, with its own event loop.

Endpoints (JSON unless said otherwise; see :mod:`.documents` for the documents)::

    GET  /livez                  200 while the driver thread runs, else 503
    GET  /readyz                 200 once joined with a leader known, else 503
    GET  /metrics                Prometheus text format
    GET  /api/dashboard          everything in one document
    GET  /api/health | status | workers | barriers | checkpoints | datasets | metrics | tasks
    GET  /api/logs?level=WARNING&after=<seq>&limit=<n>
    POST /api/tasks              {"name": "checkpoint-now", "args": {...}} -> 201 {"id", "name"}
    POST /api/tasks/<id>/stop    cancel a pending task
    GET  /  and  /static/<file>  the dashboard page (``static/``)

Bad input gets a JSON error ``{"error": ..., "status": ..., "parameter": ...}`` naming what
was wrong: 400 for a bad or unknown query parameter, body field, task name or static
path, 401 for a POST without the bearer token when a secret is set, 404 for an unknown
path or task, 405 for a wrong method, 413 for a body over ``max_body`` bytes, 429 for a
client over its rate (a token bucket per client address: ``rate`` per second, bursts of
``burst``), 503 before the worker registered or without run control. No request can
make the server read outside ``static/``: a static name is a short path of
``[A-Za-z0-9_.-]`` segments, none starting with a dot, resolved and checked to lie
inside the directory.

Threading: handlers run in the server's own loop thread and read only the published
observation (never the driver's lock); :meth:`HttpServer.close` stops the loop, closes
the listening socket and joins the thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import errors
from ..errors import BindError, DtruntimeError
from ..runtime.ratelimit import PeerRateLimiter
from . import documents
from .auth import authorized, bearer_token
from .documents import JobView, NotReady
from .logring import LEVELS
from .metrics import CONTENT_TYPE

log = logging.getLogger("dtruntime.http")

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY = 64 * 1024
RATE, BURST = 20.0, 40.0  # requests per second per client, and the burst allowed
MAX_LOG_LIMIT = 1000
_STATIC_NAME = re.compile(r"^(?:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}/){0,3}[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")
_TASK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".json": "application/json",
                  ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon", ".txt": "text/plain"}
_QUERY = {"/api/logs": {"level", "after", "limit"}}  # allowed query parameters; none elsewhere
TASK_NAMES = ("checkpoint-now", "stop", "log-level")  # the run controls (dtruntime.control.commands)


class HttpError(DtruntimeError):
    """A request the API refuses; ``parameter`` names the offending input, if any."""

    def __init__(self, status: int, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.parameter = parameter


class HttpServer:
    """Serves ``view`` on ``host:port`` (port 0: any free port) once :meth:`start` returns."""

    def __init__(
        self, view: JobView, *, host: str = "127.0.0.1", port: int = 0, secret: bytes | None = None,
        static_dir: Path = STATIC_DIR, rate: float = RATE, burst: float = BURST, max_body: int = MAX_BODY,
        alive: Any = lambda: True,
    ) -> None:
        self.view = view
        self.host = host
        self.port = port
        self.static_dir = Path(static_dir).resolve()
        self._token = None if secret is None else bearer_token(secret)
        self._rate = rate
        self._limiter = PeerRateLimiter(rate, burst, max_peers=4096)
        self._max_body = max_body
        self._alive = alive
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="dtruntime-http", daemon=True)
        self.bound_port: int | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        if self.bound_port is None:
            raise DtruntimeError("the HTTP server is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.bound_port}"

    def start(self, timeout: float = 10.0) -> None:
        """Bind and start serving; BindError if the port cannot be bound."""
        if self._token is None and not _is_loopback(self.host):
            log.warning("the HTTP API binds %s without DTRUNTIME_SECRET: anyone who reaches it can POST run "
                        "controls (stop, checkpoint-now)", self.host)
        self._thread.start()
        if not self._started.wait(timeout):
            raise DtruntimeError(f"the HTTP server on {self.host}:{self.port} did not start within {timeout}s")
        if self._error is not None:
            self._thread.join(timeout)
            raise BindError(f"cannot serve HTTP on {self.host}:{self.port}: {self._error}; set [http] port "
                            "(DTRUNTIME_HTTP_PORT) to a free port, or 0 for no HTTP API") from None
        log.info("%s serves its HTTP API at %s", self.view.worker_id, self.url)

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join the thread. Idempotent."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:  # the loop already closed
                pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the loop thread ------------------------------------------------------------------

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start(), never lost
            self._error = exc
            log.exception("the HTTP server stopped on an unexpected error")
        finally:
            self._started.set()
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            self._error = exc
            await runner.cleanup()
            return
        sockets = site._server.sockets if site._server is not None else ()  # type: ignore[attr-defined]
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        self._started.set()
        try:
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body, middlewares=[self._guard])
        get, post = web.get, web.post
        app.add_routes([
            get("/livez", self._livez), get("/readyz", self._readyz), get("/metrics", self._metrics),
            get("/api/dashboard", self._dashboard), get("/api/logs", self._logs),
            *(get(f"/api/{name}", self._part) for name in documents.PARTS),
            post("/api/tasks", self._submit), post("/api/tasks/{task_id}/stop", self._cancel),
            get("/", self._index), get("/static/{name:.*}", self._static),
        ])
        return app

    # -- middleware: rate limit, auth, parameters, errors ---------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        metrics = self.view.metrics
        if not self._limiter.allow(request.remote or "?", time.monotonic()):
            metrics.http_rate_limited.inc()
            response: web.StreamResponse = _error(429, f"too many requests from {request.remote}: at most "
                                                       f"{self._rate:g} per second")
            response.headers["Retry-After"] = "1"
        else:
            try:
                self._check(request)
                response = await handler(request)
            except HttpError as exc:
                response = _error(exc.status, str(exc), exc.parameter)
            except NotReady as exc:
                response = _error(503, str(exc))
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                text = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
                response = _error(exc.status, text or exc.reason)
            except Exception:  # noqa: BLE001 - a bug answers 500; the server goes on
                log.exception("the HTTP API failed on %s %s", request.method, request.path)
                response = _error(500, "internal error (logged by the worker)")
        metrics.http_requests.labels(f"{response.status // 100}xx").inc()
        return response

    def _check(self, request: web.Request) -> None:
        route = request.match_info.route.resource
        canonical = route.canonical if route is not None else request.path
        allowed = _QUERY.get(canonical, set())
        for name in request.query:
            if name not in allowed:
                known = f" (known: {', '.join(sorted(allowed))})" if allowed else ""
                raise HttpError(400, f"unknown query parameter {name!r}{known}", name)
        if request.method == "POST" and self._token is not None:
            if not authorized(request.headers.get("Authorization"), self._token):
                self.view.metrics.http_auth_failures.inc()
                raise HttpError(401, "POST needs 'Authorization: Bearer <token>', the token derived from "
                                     "DTRUNTIME_SECRET (dtruntime.http.auth.bearer_token)")

    # -- handlers ---------------------------------------------------------------------------

    async def _livez(self, request: web.Request) -> web.Response:
        if not self._alive():
            return _json({"ok": False, "error": "the dtruntime driver thread has stopped"}, 503)
        return _json({"ok": True, "worker_id": self.view.worker_id})

    async def _readyz(self, request: web.Request) -> web.Response:
        observation = self.view.observe()
        if observation is None:
            return _json({"ready": False, "reason": "not registered yet"}, 503)
        status = observation.status
        if documents.is_ready(status):
            return _json({"ready": True, "leader": status.leader_id})
        reason = "left the cluster" if status.left else ("not joined yet" if not status.joined else "no leader known")
        return _json({"ready": False, "reason": reason, "leader": status.leader_id}, 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.view.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _dashboard(self, request: web.Request) -> web.Response:
        return _json(documents.dashboard(self.view))

    async def _part(self, request: web.Request) -> web.Response:
        return _json(documents.part(self.view, request.path.rsplit("/", 1)[1]))

    async def _logs(self, request: web.Request) -> web.Response:
        query = request.query
        level = query.get("level", "DEBUG").upper()
        if level not in LEVELS:
            raise HttpError(400, f"level must be one of {', '.join(LEVELS)}, not {query['level']!r}", "level")
        after = _int_param(query, "after", 0, 0, 2**63 - 1)
        limit = _int_param(query, "limit", 100, 1, MAX_LOG_LIMIT)
        records = documents.logs_doc(self.view, level=level, after=after, limit=limit)
        observation = self.view.observe()
        if observation is not None:
            envelope = documents.envelope(self.view, observation)
        else:  # logs exist before registration
            envelope = {"answered_by": {"worker_id": self.view.worker_id, "rank": self.view.rank},
                        "view_age_s": None, "time": time.time()}
        return _json({**envelope, "logs": records, "last_seq": self.view.logs.last_seq})

    async def _submit(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        unknown = sorted(set(body) - {"name", "args"})
        if unknown:
            raise HttpError(400, f"unknown field {unknown[0]!r} in the task (fields: name, args)", unknown[0])
        name, args = body.get("name"), body.get("args")
        if not isinstance(name, str) or not name:
            raise HttpError(400, "the task needs a 'name' (a string such as \"checkpoint-now\")", "name")
        if name not in TASK_NAMES:
            raise HttpError(400, f"unknown task {name[:80]!r} (tasks: {', '.join(TASK_NAMES)})", "name")
        if args is not None and not isinstance(args, dict):
            raise HttpError(400, "'args' must be a JSON object", "args")
        control = self._control()
        try:
            task_id = control.submit(name, args)
        except ValueError as exc:
            unknown_command = getattr(errors, "UnknownCommand", None)
            blamed = "name" if unknown_command is not None and isinstance(exc, unknown_command) else "args"
            raise HttpError(400, str(exc), blamed) from None
        return _json({"id": task_id, "name": name}, 201)

    async def _cancel(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        if not _TASK_ID.match(task_id):
            raise HttpError(400, f"task id {task_id[:80]!r} is not a task id", "id")
        await _json_body(request, optional=True)
        control = self._control()
        cancel = getattr(control, "cancel", None)
        if cancel is None:
            raise HttpError(501, "this worker's run control cannot cancel tasks")
        if not any(task.get("id") == task_id for task in control.tasks()):
            raise HttpError(404, f"no task {task_id!r}", "id")
        if not cancel(task_id):
            raise HttpError(409, f"task {task_id!r} is no longer pending; it cannot be cancelled", "id")
        return _json({"id": task_id, "cancelled": True})

    def _control(self) -> Any:
        control = self.view.run_control()
        if control is None:
            raise HttpError(503, "run control is not available on this worker")
        return control

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.StreamResponse:
        if not _STATIC_NAME.match(name) or any(part.startswith(".") for part in name.split("/")):
            raise HttpError(400, f"static path {name[:80]!r} is not allowed (plain file names only)", "path")
        path = (self.static_dir / name).resolve()
        if not path.is_relative_to(self.static_dir) or not path.is_file():
            raise HttpError(404, f"no static file {name!r}", "path")
        content_type = _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return web.FileResponse(path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"})


def _json(document: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(document, allow_nan=False), status=status, content_type="application/json")


def _error(status: int, message: str, parameter: str | None = None) -> web.Response:
    document: dict[str, Any] = {"error": message, "status": status}
    if parameter is not None:
        document["parameter"] = parameter
    return _json(document, status)


async def _json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body ({} for an empty body when ``optional``); 413 past the limit."""
    raw = await request.read()  # aiohttp raises 413 past client_max_size
    if not raw and optional:
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, f"the body is not valid JSON: {exc}", "body") from None
    if not isinstance(body, dict):
        raise HttpError(400, f"the body must be a JSON object, not {type(body).__name__}", "body")
    return body


def _int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(400, f"{name} must be an integer, not {raw[:40]!r}", name) from None
    if not low <= value <= high:
        raise HttpError(400, f"{name} must be in {low}..{high}, not {value}", name)
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
