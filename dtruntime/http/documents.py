"""The JSON documents of the HTTP API, built from one worker's published observation.

:class:`JobView` is what the server reads: the driver's latest
:class:`~dtruntime.runtime.driver.Observation` (``None`` before the worker registered),
the worker's :class:`~.metrics.Metrics` and :class:`~.logring.LogRing`, and its run
control, if any. :func:`dashboard` builds the whole document (the shared contract's
``GET /api/dashboard``); every other ``GET /api/<part>`` answers ``{"answered_by",
"view_age_s", "time", <part>: ...}`` with the same builder for ``<part>``.

Everything a document says comes from this worker's own view: gossip makes the views of
all workers converge within a few probe periods, and ``view_age_s`` says how old the
view is (seconds since the driver built it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DtruntimeError
from ..protocol.status import NodeStatus
from ..runtime.driver import Observation
from .logring import LogRing
from .metrics import MIB, Metrics
from .steps import StepInfo

DASHBOARD_LOGS = 100  # log records in the dashboard document
DATASET_KEY_SEPARATOR = "@"  # data.registry's progress keys: <dataset>@<epoch>


@dataclass
class JobView:
    """What the HTTP API serves; ``observe`` and ``run_control`` never block."""

    worker_id: str
    rank: int
    observe: Callable[[], Observation | None]
    metrics: Metrics
    logs: LogRing
    run_control: Callable[[], Any] = lambda: None
    dataset_sizes: Callable[[], dict[str, int]] = dict  # dataset -> total samples, where known
    clock: Callable[[], float] = time.monotonic  # the driver's clock
    _first_committed: dict[int, float] = field(default_factory=dict)  # step -> unix time first seen committed


class NotReady(DtruntimeError):
    """The worker has not registered yet: there is no view to answer from."""


def envelope(view: JobView, observation: Observation) -> dict[str, Any]:
    return {
        "answered_by": {"worker_id": view.worker_id, "rank": view.rank},
        "view_age_s": round(max(0.0, view.clock() - observation.status.taken_at), 4),
        "time": time.time(),
    }


def current(view: JobView) -> Observation:
    observation = view.observe()
    if observation is None:
        raise NotReady(f"{view.worker_id} has not registered yet")
    return observation


def status_doc(view: JobView, observation: Observation) -> dict[str, Any]:
    s = observation.status
    leader = s.member(s.leader_id) if s.leader_id else None
    return {
        "worker_id": s.worker_id, "rank": s.rank, "term": s.term, "leader": s.leader_id,
        "leader_rank": leader.rank if leader is not None else None, "role": s.role,
        "incarnation": s.incarnation, "joined": s.joined, "ready": is_ready(s), "world_size": s.world_size,
        "has_quorum": s.has_quorum, "quorum": s.quorum, "left": s.left, "elections": s.campaigns,
        "members_by_status": s.count_by_status(),
        "dropped": dict(s.dropped), "rejected": s.rejected, "traffic": dict(observation.traffic),
    }


def is_ready(status: NodeStatus) -> bool:
    """``/readyz``: joined, and a leader known."""
    return status.joined and status.leader_id is not None and not status.left


def health_doc(view: JobView, observation: Observation) -> dict[str, Any]:
    s = observation.status
    return {"ok": s.joined and s.has_quorum and not s.left, "joined": s.joined, "has_quorum": s.has_quorum,
            "leader": s.leader_id, "live": s.count_by_status()["alive"] + s.count_by_status()["suspect"],
            "world_size": s.world_size}


def workers_doc(view: JobView, observation: Observation) -> list[dict[str, Any]]:
    s = observation.status
    steps: dict[str, StepInfo] = view.metrics.steps.update(s)
    workers = []
    for m in s.members:
        host, port = _host_port(m.endpoint)
        info = steps.get(m.worker_id)
        age = 0.0 if m.worker_id == s.worker_id else m.heard_age_s
        workers.append({
            "worker_id": m.worker_id, "rank": m.rank, "local_rank": m.local_rank, "host": host, "port": port,
            "endpoint": m.endpoint, "incarnation": m.incarnation, "status": m.status,
            "heartbeat_age_s": None if age is None else round(age, 4),
            "gone_for_s": None if m.gone_for_s is None else round(m.gone_for_s, 3),
            "step": info.step if info else None,
            "step_time_s": info.step_time_s if info else None,
            "straggler": bool(info and info.straggler),
            "leader": m.worker_id == s.leader_id,
        })
    return workers


def barriers_doc(view: JobView, observation: Observation) -> list[dict[str, Any]]:
    return [
        {"barrier_id": b.barrier_id, "generation": b.generation, "source": b.source, "arrived": list(b.arrived),
         "waiting_for": list(b.waiting_for), "age_s": round(b.age_s, 4), "elastic": b.elastic}
        for b in observation.status.barriers
    ]


def checkpoints_doc(view: JobView, observation: Observation) -> dict[str, Any]:
    """Committed steps: those the protocol reported here, and this rank's own committed writes
    (a one-rank job commits without the protocol), with this rank's bytes and throughput."""
    c = observation.status.checkpoints
    writes = {r.step: r for r in view.metrics.checkpoint_records() if r.op == "write"}
    now = time.time()
    committed = []
    steps = sorted(set(c.committed) | set(writes))
    for step in steps:
        first = view._first_committed.setdefault(step, now)
        record = writes.get(step)
        throughput = record.throughput_mib_s if record else None
        committed.append({
            "step": step, "bytes": record.bytes if record else None,
            "throughput_mib_s": None if throughput is None else round(throughput, 3),
            "seconds": round(record.seconds, 4) if record else None,
            "committed_at": record.at if record else first,
        })
    for step in list(view._first_committed):
        if step not in steps:
            del view._first_committed[step]  # bounded by the protocol's histories
    return {"committed": committed, "pending": list(c.pending), "abandoned": list(c.abandoned)}


def datasets_doc(view: JobView, observation: Observation) -> list[dict[str, Any]]:
    """Each dataset's newest epoch heard of, with every rank's samples done (and the
    fraction of an even share of the dataset, where its size is known here)."""
    s = observation.status
    ranks = {m.worker_id: m.rank for m in s.members}
    newest: dict[str, int] = {}
    done: dict[tuple[str, int], dict[str, int]] = {}
    for worker_id, key, value in s.progress:
        name, sep, epoch_text = key.rpartition(DATASET_KEY_SEPARATOR)
        if not sep or not name or not epoch_text.isdigit() or name.startswith("dtruntime.") or worker_id not in ranks:
            continue
        epoch = int(epoch_text)
        newest[name] = max(newest.get(name, epoch), epoch)
        done.setdefault((name, epoch), {})[str(ranks[worker_id])] = value
    sizes = view.dataset_sizes()
    documents = []
    for name, epoch in sorted(newest.items()):
        samples = dict(sorted(done[(name, epoch)].items(), key=lambda item: int(item[0])))
        total = sizes.get(name)
        share = total / s.world_size if total else None
        progress = {rank: round(min(1.0, n / share), 4) for rank, n in samples.items()} if share else None
        documents.append({"name": name, "epoch": epoch, "samples_by_rank": samples, "total_samples": total,
                          "progress_by_rank": progress})
    return documents


def metrics_doc(view: JobView, observation: Observation) -> dict[str, Any]:
    m = view.metrics
    return {
        "barrier_wait_s": m.histogram_summary(m.barrier_wait),
        "barrier_release_s": m.histogram_summary(m.barrier_release),
        "checkpoint_write_mib_s": m.histogram_summary(m.checkpoint_throughput, MIB, {"op": "write"}),
        "checkpoint_load_mib_s": m.histogram_summary(m.checkpoint_throughput, MIB, {"op": "load"}),
    }


def tasks_doc(view: JobView, observation: Observation | None = None) -> list[dict[str, Any]]:
    control = view.run_control()
    return [] if control is None else list(control.tasks())


def logs_doc(view: JobView, *, level: str = "DEBUG", after: int = 0, limit: int = DASHBOARD_LOGS) -> list[dict]:
    return view.logs.records(level=level, after=after, limit=limit)


PARTS: dict[str, Callable[[JobView, Observation], Any]] = {
    "health": health_doc,
    "status": status_doc,
    "workers": workers_doc,
    "barriers": barriers_doc,
    "checkpoints": checkpoints_doc,
    "datasets": datasets_doc,
    "metrics": metrics_doc,
    "tasks": tasks_doc,
}


def part(view: JobView, name: str) -> dict[str, Any]:
    """``GET /api/<name>``: the envelope plus that one part."""
    observation = current(view)
    return {**envelope(view, observation), name: PARTS[name](view, observation)}


def dashboard(view: JobView) -> dict[str, Any]:
    """``GET /api/dashboard``: every part in one document, from one observation."""
    observation = current(view)
    document = envelope(view, observation)
    for name in ("status", "workers", "barriers", "checkpoints", "datasets", "metrics", "tasks"):
        document[name] = PARTS[name](view, observation)
    document["logs"] = logs_doc(view, level="INFO")
    return document


def _host_port(endpoint: str) -> tuple[str, int | None]:
    address = endpoint.split("://", 1)[-1]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, None
    return host.strip("[]"), int(port)
