"""Plain-text tables and the ``status`` report (pure: documents in, text out).

``render_status`` takes an ``/api/dashboard`` document (the shared contract) and renders
the leader line, the worker table (rank order; lost, hung, suspect and straggling rows
flagged with ``!``), barriers in flight (a follower knows only its own waits, not whom
they wait for, and says so) and checkpoints. Fields a peer leaves out show as
``-``, so an older or partial document still prints.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

PROBLEMS = ("lost", "hung", "suspect")
MISSING = "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart; every cell goes through ``str``."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def seconds(value: Any) -> str:
    if not _number(value):
        return MISSING
    if value < 1:
        return f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def size(value: Any) -> str:
    if not _number(value):
        return MISSING
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return MISSING  # unreachable: the loop returns at GiB


def clock(unix: Any) -> str:
    if not _number(unix):
        return MISSING
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


def _show(value: Any) -> str:
    return MISSING if value is None else str(value)


def _ids(ids: Any, limit: int = 8) -> str:
    items = [str(i) for i in ids] if isinstance(ids, list) else []
    if len(items) <= limit:
        return ", ".join(items) or "nobody"
    return ", ".join(items[:limit]) + f" ... +{len(items) - limit} more"


def render_status(doc: dict[str, Any], url: str) -> str:
    status = _get(doc, "status") or {}
    answered = _get(doc, "answered_by") or {}
    workers = [w for w in (_get(doc, "workers") or []) if isinstance(w, dict)]
    lines = [
        f"job at {url}: answered by {_show(_get(answered, 'worker_id'))} (rank {_show(_get(answered, 'rank'))}), "
        f"view {seconds(_get(doc, 'view_age_s'))} old",
    ]
    leader = _get(status, "leader")
    leader_text = f"{leader} (rank {_show(_get(status, 'leader_rank'))})" if leader else "none known"
    ready = "ready" if _get(status, "ready") else "not ready"
    lines.append(f"leader {leader_text}, term {_show(_get(status, 'term'))}, "
                 f"world {_show(_get(status, 'world_size'))}, {ready}")
    counts = Counter(str(w.get("status")) for w in workers)
    stragglers = sum(1 for w in workers if w.get("straggler"))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append(f"workers: {summary or 'none'}" + (f", {stragglers} straggling" if stragglers else ""))
    rows = []
    for w in sorted(workers, key=lambda w: (w.get("rank") if _number(w.get("rank")) else math.inf, str(w.get("worker_id")))):
        state = str(w.get("status"))
        if state == "alive" and w.get("straggler"):
            state = "straggling"
        flag = "!" if state in PROBLEMS or state == "straggling" else ""
        leader_mark = "*" if leader is not None and w.get("worker_id") == leader else ""
        host = w.get("host")
        where = f"{host}:{w['port']}" if host and w.get("port") else _show(host)
        rows.append([flag, _show(w.get("rank")), f"{w.get('worker_id')}{leader_mark}", where, state,
                     seconds(w.get("heartbeat_age_s")), _show(w.get("step")), seconds(w.get("step_time_s"))])
    if rows:
        lines.append("")
        lines.append(table(["", "RANK", "WORKER", "HOST", "STATUS", "HEARTBEAT", "STEP", "STEP TIME"], rows))
    barriers = [b for b in (_get(doc, "barriers") or []) if isinstance(b, dict)]
    lines.append("")
    if barriers:
        lines.append(f"barriers in flight: {len(barriers)}")
        for b in barriers:
            if b.get("source") == "self" and not b.get("waiting_for"):
                whom = f"this worker waits; ask the leader {leader or '(none known)'} whom for"
            else:
                whom = f"waiting for {_ids(b.get('waiting_for'))}"
            lines.append(f"  {b.get('barrier_id')} ({seconds(b.get('age_s'))}): {whom}")
    else:
        lines.append("barriers in flight: none")
    checkpoints = _get(doc, "checkpoints") or {}
    committed = sorted((c for c in (_get(checkpoints, "committed") or []) if isinstance(c, dict)),
                       key=lambda c: c.get("step") if _number(c.get("step")) else -1)
    pending = _get(checkpoints, "pending") or []
    if committed:
        lines.append("checkpoints committed:")
        lines.append(table(
            ["  STEP", "SIZE", "THROUGHPUT", "COMMITTED (UTC)"],
            [[f"  {c.get('step')}", size(c.get("bytes")),
              f"{c['throughput_mib_s']:.1f} MiB/s" if _number(c.get("throughput_mib_s")) else MISSING,
              clock(c.get("committed_at"))] for c in committed[-10:]],
        ))
    else:
        lines.append("checkpoints committed: none")
    lines.append(f"checkpoints pending: {', '.join(map(str, pending)) if pending else 'none'}")
    return "\n".join(lines)
