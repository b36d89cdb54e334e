"""Prometheus metrics of one worker, in a registry of its own (several orchestrators may
share a process, each with its :class:`Metrics`).

Naming: one ``dtruntime_`` prefix, base units (seconds, bytes), ``_total`` counters.
Labels are bounded: a status or reason from a fixed set, an operation (``write``,
``load``), a storage backend (``local``, ``s3``, ``memory``, ``other``), a rank (at most
the world size); never a barrier id or a step.

Two kinds of metric:

* observed as things happen, from the orchestrator and the checkpoint manager: barrier
  wait latency, barrier failures, leader changes, checkpoint bytes, seconds and
  throughput, HTTP answers, auth failures and rate limiting on the HTTP side;
* read at scrape time from the driver's published :class:`~dtruntime.runtime.driver.Observation`
  (:class:`_ObservationCollector`): membership counts, term, elections, message traffic
  and drops, frame auth failures, per-rank step and step time, straggler spread; and the
  leader's barrier release latencies, which the driver queues and each scrape folds
  into their histogram first.

Nothing here takes the driver's lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..runtime.driver import Observation
from .steps import StepTracker

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHECKPOINT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
MIB = 2**20
THROUGHPUT_BUCKETS = tuple(m * MIB for m in (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000))
BACKENDS = ("local", "s3", "memory")
BARRIER_FAILURES = ("lost", "timeout", "no_quorum", "other")
CHECKPOINT_HISTORY = 64  # committed checkpoints remembered with their size and throughput
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class CheckpointRecord:
    """A checkpoint operation of this rank: ``op`` is write or load; ``bytes`` uncompressed."""

    op: str
    step: int
    bytes: int
    seconds: float
    backend: str
    at: float  # unix time when it finished

    @property
    def throughput_mib_s(self) -> float | None:
        return self.bytes / MIB / self.seconds if self.seconds > 0 else None


def backend_of(url: str) -> str:
    """The bounded backend label of a storage URL (``s3://b/p`` -> ``s3``; a path -> ``local``)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    return {"file": "local", "s3": "s3", "memory": "memory"}.get(scheme, "other")


class Metrics:
    """One worker's metrics. ``observe`` returns the driver's latest observation (or None
    before registration); it is read at scrape time only."""

    def __init__(self, observe: Callable[[], Observation | None] = lambda: None,
                 release_latencies: Callable[[], Iterable[float]] = tuple) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.steps = StepTracker()
        self._lock = threading.Lock()
        self._checkpoints: deque[CheckpointRecord] = deque(maxlen=CHECKPOINT_HISTORY)
        r = self.registry
        self.barrier_wait = Histogram(
            "dtruntime_barrier_wait_seconds", "Time a caller spent in a barrier that released (arrival to release)",
            buckets=LATENCY_BUCKETS, registry=r)
        self.barrier_release = Histogram(
            "dtruntime_barrier_release_seconds",
            "On the leader: from the moment the last member started waiting to the release decision",
            buckets=LATENCY_BUCKETS, registry=r)
        self.barrier_failed = Counter(
            "dtruntime_barrier_failures_total", "Barriers that failed here, by reason", ["reason"], registry=r)
        self.leader_changes = Counter(
            "dtruntime_leader_changes_total", "Times this worker saw the leader change", registry=r)
        self.checkpoint_bytes = Counter(
            "dtruntime_checkpoint_bytes_total", "Uncompressed checkpoint bytes written or loaded by this rank",
            ["op", "backend"], registry=r)
        self.checkpoint_seconds = Histogram(
            "dtruntime_checkpoint_seconds", "Time of one checkpoint write (to its commit) or load",
            ["op", "backend"], buckets=CHECKPOINT_SECONDS_BUCKETS, registry=r)
        self.checkpoint_throughput = Histogram(
            "dtruntime_checkpoint_throughput_bytes_per_second", "Uncompressed bytes per second of one write or load",
            ["op", "backend"], buckets=THROUGHPUT_BUCKETS, registry=r)
        self.http_requests = Counter(
            "dtruntime_http_requests_total", "HTTP API answers, by status class", ["code"], registry=r)
        self.http_auth_failures = Counter(
            "dtruntime_http_auth_failures_total", "HTTP POSTs refused for a missing or wrong bearer token",
            registry=r)
        self.http_rate_limited = Counter(
            "dtruntime_http_rate_limited_total", "HTTP requests answered 429 (per-client rate limit)", registry=r)
        for reason in BARRIER_FAILURES:
            self.barrier_failed.labels(reason)
        self._release_latencies = release_latencies
        r.register(_ObservationCollector(observe, self.steps))

    # -- recorded as things happen ---------------------------------------------------

    def barrier_done(self, seconds: float, failure: str | None = None) -> None:
        """A barrier wait ended: released after ``seconds``, or failed for ``failure``."""
        if failure is None:
            self.barrier_wait.observe(seconds)
        else:
            self.barrier_failed.labels(failure if failure in BARRIER_FAILURES else "other").inc()

    def checkpoint_done(self, op: str, step: int, nbytes: int, seconds: float, storage_url: str) -> None:
        """A checkpoint ``op`` (``write``: committed; ``load``: verified) of ``nbytes`` took ``seconds``."""
        backend = backend_of(storage_url)
        self.checkpoint_bytes.labels(op, backend).inc(nbytes)
        self.checkpoint_seconds.labels(op, backend).observe(seconds)
        if seconds > 0:
            self.checkpoint_throughput.labels(op, backend).observe(nbytes / seconds)
        with self._lock:
            self._checkpoints.append(CheckpointRecord(op, step, nbytes, seconds, backend, time.time()))

    def checkpoint_records(self) -> list[CheckpointRecord]:
        with self._lock:
            return list(self._checkpoints)

    # -- exposition ------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format (0.0.4) of every metric; see :func:`render`."""
        self._fold_release_latencies()
        return render(self.registry)

    def _fold_release_latencies(self) -> None:
        for seconds in self._release_latencies():
            self.barrier_release.observe(seconds)

    def histogram_summary(self, histogram: Histogram, scale: float = 1.0, labels: dict[str, str] | None = None) -> dict:
        """``{"buckets": [[le, cumulative count], ...], "count", "sum"}`` of one of these histograms
        (all its label sets added up unless ``labels`` picks some), bucket bounds divided by ``scale``."""
        if histogram is self.barrier_release:
            self._fold_release_latencies()
        cumulative: dict[float, float] = {}
        count = total = 0.0
        for family in histogram.collect():
            name = family.name
            for sample in family.samples:
                if labels and any(sample.labels.get(k) != v for k, v in labels.items()):
                    continue
                if sample.name == name + "_bucket":
                    bound = float(sample.labels["le"])
                    cumulative[bound] = cumulative.get(bound, 0.0) + sample.value
                elif sample.name == name + "_count":
                    count += sample.value
                elif sample.name == name + "_sum":
                    total += sample.value
        buckets = [["+Inf" if b == float("inf") else b / scale, int(c)] for b, c in sorted(cumulative.items())]
        return {"buckets": buckets if count else [], "count": int(count), "sum": total / scale}


def render(registry: CollectorRegistry) -> bytes:
    """``registry`` in the Prometheus text format 0.0.4, without the optional ``_created`` series.

    Written here rather than ``prometheus_client.generate_latest`` for its cost: that one
    spends about 40 us per sample (UTF-8 name escaping, validation) and a scrape of one
    worker has about 80 samples; this one, about 5 us. The output parses with
    ``prometheus_client.parser`` (tested). Names and label names are this module's own;
    label values and help texts are escaped as the format asks.
    """
    lines: list[str] = []
    append = lines.append
    for family in registry.collect():
        exposed = family.name + "_total" if family.type == "counter" else family.name
        kind = "untyped" if family.type == "unknown" else family.type
        append(f"# HELP {exposed} {_escape_help(family.documentation)}")
        append(f"# TYPE {exposed} {kind}")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = sample.labels
            if labels:
                rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                append(f"{sample.name}{{{rendered}}} {_number(sample.value)}")
            else:
                append(f"{sample.name} {_number(sample.value)}")
    append("")
    return "\n".join(lines).encode()


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


class _ObservationCollector:
    """Metrics read from the latest observation at each scrape."""

    def __init__(self, observe: Callable[[], Observation | None], steps: StepTracker) -> None:
        self._observe = observe
        self._steps = steps

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: families depend on what the observation holds

    def collect(self) -> Iterator[Metric]:
        observation = self._observe()
        if observation is None:
            return
        status = observation.status
        members = GaugeMetricFamily("dtruntime_members", "Members in this worker's view, by status", labels=["status"])
        for name, count in status.count_by_status().items():
            members.add_metric([name], count)
        yield members
        yield GaugeMetricFamily("dtruntime_world_size", "Expected number of workers", value=status.world_size)
        yield GaugeMetricFamily("dtruntime_leader_term", "Term of the leader this worker follows", value=status.term)
        yield GaugeMetricFamily("dtruntime_is_leader", "1 on the leader", value=int(status.role == "leader"))
        ready = int(status.joined and status.leader_id is not None)
        yield GaugeMetricFamily("dtruntime_ready", "1 once joined with a leader known", value=ready)
        yield CounterMetricFamily("dtruntime_elections_total", "Elections this worker started", value=status.campaigns)
        traffic, auth = observation.traffic, observation.auth
        yield CounterMetricFamily("dtruntime_messages_sent_total", "Control-plane messages sent",
                                  value=traffic.get("sent", 0))
        yield CounterMetricFamily("dtruntime_messages_sent_bytes_total", "Bytes of control-plane frames sent",
                                  value=traffic.get("bytes_sent", 0))
        yield CounterMetricFamily("dtruntime_messages_received_total", "Control-plane messages received and handled",
                                  value=traffic.get("received", 0))
        dropped = CounterMetricFamily("dtruntime_messages_dropped_total",
                                      "Messages dropped: invalid frames, rate-limited peers, failed sends, and "
                                      "messages the protocol ignored", labels=["reason"])
        dropped.add_metric(["invalid"], traffic.get("dropped_invalid", 0))
        dropped.add_metric(["rate_limited"], traffic.get("dropped_rate_limited", 0))
        dropped.add_metric(["send_failed"], traffic.get("send_dropped", 0))
        for reason, count in status.dropped:
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily("dtruntime_messages_rejected_total",
                                  "Gossiped entries about strangers that could not be members", value=status.rejected)
        yield CounterMetricFamily("dtruntime_messages_rate_limited_total", "Control-plane messages over a peer's rate",
                                  value=traffic.get("dropped_rate_limited", 0))
        auth_failures = CounterMetricFamily("dtruntime_auth_failures_total",
                                            "Control-plane frames refused by the authenticator", labels=["reason"])
        for key, count in auth.items():
            if key.startswith("rejected_"):
                auth_failures.add_metric([key[len("rejected_"):]], count)
        yield auth_failures
        yield from self._step_metrics(observation)

    def _step_metrics(self, observation: Observation) -> Iterator[Metric]:
        steps = self._steps.update(observation.status)
        step = GaugeMetricFamily("dtruntime_step", "Latest training step heard of, per rank", labels=["rank"])
        step_time = GaugeMetricFamily("dtruntime_step_time_seconds", "Recent seconds per training step, per rank",
                                      labels=["rank"])
        times = []
        for info in steps.values():
            step.add_metric([str(info.rank)], info.step)
            if info.step_time_s is not None:
                step_time.add_metric([str(info.rank)], info.step_time_s)
                times.append(info.step_time_s)
        yield step
        yield step_time
        spread = max(times) - min(times) if len(times) > 1 else 0.0
        yield GaugeMetricFamily("dtruntime_step_straggler_spread_seconds",
                                "Slowest minus fastest recent step time among the ranks", value=spread)
        known = [info.step for info in steps.values()]
        yield GaugeMetricFamily("dtruntime_step_lag_steps", "Most advanced minus least advanced rank's step",
                                value=max(known) - min(known) if known else 0)
