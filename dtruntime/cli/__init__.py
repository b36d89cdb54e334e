"""The ``dtruntime`` command (also ``python -m dtruntime``): look at and steer a running job.

::

    dtruntime status URL [--watch [SECS]] [--json]
    dtruntime checkpoints PATH [--verify] [--endpoint-url URL] [-o KEY=VALUE] [--json]
    dtruntime checkpoint URL [--wait [SECS]] [--token TOKEN]
    dtruntime stop URL [--token TOKEN]
    dtruntime log-level URL LEVEL [--token TOKEN]
    dtruntime token

URL is any peer's HTTP address (``[http] port``; every peer answers for the whole job).
POSTs carry ``--token`` or the token derived from ``$DTRUNTIME_SECRET``. Exit codes: see
:mod:`.errors` (0 ok, 1 job-side failure, 2 usage, 3 unreachable). Errors print one line,
``dtruntime: error: ...``, and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .client import SECRET_ENV, Client, resolve_token
from .errors import OK, CliError, JobError, UnreachableError, UsageError
from .store import StoreReport, inspect_store, open_store
from .tables import clock, render_status, size, table

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except CliError as exc:
        print(f"dtruntime: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dtruntime status URL | head`
        sys.stderr.close()
        return OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dtruntime", description="Look at and steer a running dtruntime job.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = sub.add_parser("status", help="workers, leader, barriers and checkpoints of a running job")
    status.add_argument("url", help="any peer's HTTP address, e.g. http://127.0.0.1:8080")
    status.add_argument("--watch", nargs="?", type=_positive, const=2.0, metavar="SECS",
                        help="refresh every SECS seconds (default 2) until interrupted")
    status.add_argument("--json", action="store_true", help="print the /api/dashboard document as JSON")
    _add_timeout(status)
    status.set_defaults(run=_status)

    checkpoints = sub.add_parser("checkpoints", help="list (and verify) the checkpoints in a store, without a job")
    checkpoints.add_argument("path", help="a directory or fsspec URL (s3://bucket/prefix)")
    checkpoints.add_argument("--verify", action="store_true",
                             help="read every part and check its size and CRC (exit 1 if any step fails)")
    checkpoints.add_argument("--endpoint-url", help="S3 endpoint (e.g. MinIO); credentials come from the usual AWS_* variables")
    checkpoints.add_argument("-o", "--storage-option", action="append", default=[], metavar="KEY=VALUE",
                             help="an fsspec storage option (string value); repeatable")
    checkpoints.add_argument("--json", action="store_true", help="print the listing as JSON")
    checkpoints.set_defaults(run=_checkpoints)

    checkpoint = sub.add_parser("checkpoint", help="ask every rank to save a checkpoint at its next step")
    checkpoint.add_argument("url")
    checkpoint.add_argument("--wait", nargs="?", type=_positive, const=300.0, metavar="SECS",
                            help="wait until every rank has done it (default at most 300 s)")
    _add_token(checkpoint)
    _add_timeout(checkpoint)
    checkpoint.set_defaults(run=_submit, task="checkpoint-now")

    stop = sub.add_parser("stop", help="a coordinated checkpoint, then every rank exits 0")
    stop.add_argument("url")
    _add_token(stop)
    _add_timeout(stop)
    stop.set_defaults(run=_submit, task="stop", wait=None)

    level = sub.add_parser("log-level", help="set the log level of dtruntime's loggers on every rank")
    level.add_argument("url")
    level.add_argument("level", type=str.upper, choices=LOG_LEVELS)
    _add_token(level)
    _add_timeout(level)
    level.set_defaults(run=_submit, task="log-level", wait=None)

    token = sub.add_parser("token", help=f"print the bearer token derived from ${SECRET_ENV} (for the dashboard)")
    token.set_defaults(run=_token)
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=_positive, default=5.0, metavar="SECS",
                        help="per-request timeout (default 5 s)")


def _add_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", help=f"bearer token for POSTs (default: derived from ${SECRET_ENV})")


# ---------------------------------------------------------------------------- status


def _status(args: argparse.Namespace) -> int:
    client = Client(args.url, timeout=args.timeout)
    if args.watch is None:
        _print_status(client, args.json)
        return OK
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() and not args.json else ""
    try:
        while True:
            try:
                text = _status_text(client, args.json)
            except CliError as exc:  # keep watching: the peer may come back
                text = f"dtruntime: error: {exc}"
            print(f"{clear}{text}\n-- {time.strftime('%H:%M:%S')}, every {args.watch:g} s, Ctrl-C to stop", flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:  # the way a watch ends, wherever in the loop it lands
        return OK


def _print_status(client: Client, as_json: bool) -> None:
    print(_status_text(client, as_json), flush=True)


def _status_text(client: Client, as_json: bool) -> str:
    doc = client.get("/api/dashboard")
    if not isinstance(doc, dict) or not isinstance(doc.get("workers"), list):
        raise UnreachableError(f"{client.base}/api/dashboard did not answer a dashboard document: is it a dtruntime peer?")
    return json.dumps(doc, indent=1, sort_keys=True) if as_json else render_status(doc, client.base)


# ---------------------------------------------------------------------------- checkpoints


def _checkpoints(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {}
    for item in args.storage_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--storage-option takes KEY=VALUE, not {item!r}")
        options[key] = value
    if args.endpoint_url:
        options["endpoint_url"] = args.endpoint_url
    report = inspect_store(open_store(args.path, options), args.verify)
    if args.json:
        print(json.dumps({"url": report.url, "committed": [s.as_json() for s in report.committed],
                          "in_flight": {str(k): v for k, v in sorted(report.in_flight.items())}}, indent=1))
    else:
        print(_checkpoint_text(report, args.verify))
    if not report.ok:
        bad = [s.step for s in report.committed if s.problem is not None]
        raise JobError(f"{len(bad)} committed step(s) under {report.url} "
                       f"{'do not verify' if args.verify else 'have unreadable manifests'}: {', '.join(map(str, bad))}")
    return OK


def _checkpoint_text(report: StoreReport, verified: bool) -> str:
    if not report.committed:
        lines = [f"no committed checkpoints under {report.url}"]
    else:
        rows = []
        for s in report.committed:
            state = "ok" if s.problem is None else "BAD"
            if s.problem is None and verified:
                state = "verified"
            rows.append([s.step, s.world_size if s.world_size is not None else "-", size(s.stored_bytes),
                         ",".join(s.codecs) or "-", clock(s.created_unix), state])
        lines = [f"{len(report.committed)} committed checkpoint(s) under {report.url}",
                 table(["STEP", "RANKS", "STORED", "CODEC", "CREATED (UTC)", "STATE"], rows)]
        for s in report.committed:
            if s.problem is not None:
                lines.append(f"step {s.step}: {s.problem}")
    if report.in_flight:
        lines.append("in flight (no manifest yet, or abandoned): "
                     + ", ".join(f"{step} ({n} part(s))" for step, n in sorted(report.in_flight.items())))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- run control


def _submit(args: argparse.Namespace) -> int:
    client = Client(args.url, timeout=args.timeout, token=resolve_token(args.token))
    body: dict[str, Any] = {"name": args.task}
    if args.task == "log-level":
        body["args"] = {"level": args.level}
    answer = client.post("/api/tasks", body)
    task_id = answer.get("id") if isinstance(answer, dict) else None
    if not isinstance(task_id, str):
        raise UnreachableError(f"{client.base}/api/tasks answered {answer!r}, not a task id: is it a dtruntime peer?")
    print(f"{args.task} submitted as task {task_id}", flush=True)
    if args.wait is not None:
        return _wait_task(client, task_id, args.wait)
    return OK


def _wait_task(client: Client, task_id: str, limit: float) -> int:
    """Poll /api/tasks until ``task_id`` is done on every rank (0) or failed on one (1)."""
    deadline = time.monotonic() + limit
    states: dict[str, str] = {}
    while True:
        answer = client.get("/api/tasks")
        tasks = answer.get("tasks") if isinstance(answer, dict) else answer
        task = next((t for t in tasks or [] if isinstance(t, dict) and t.get("id") == task_id), None)
        states = dict(task.get("state_by_rank") or {}) if task else {}
        failed = sorted(rank for rank, state in states.items() if state == "failed")
        if failed:
            raise JobError(f"task {task_id} failed on rank(s) {', '.join(failed)}")
        if states and all(state == "done" for state in states.values()):
            step = task.get("step")
            print(f"task {task_id} done on {len(states)} rank(s)" + (f" at step {step}" if step is not None else ""))
            return OK
        if time.monotonic() >= deadline:
            pending = sorted(rank for rank, state in states.items() if state != "done")
            raise JobError(f"task {task_id} not done within {limit:g} s (ranks not done: {', '.join(pending) or 'all'})")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _token(args: argparse.Namespace) -> int:
    if not os.environ.get(SECRET_ENV):
        raise UsageError(f"${SECRET_ENV} is not set")
    print(resolve_token(None))
    return OK


__all__ = ["main"]
