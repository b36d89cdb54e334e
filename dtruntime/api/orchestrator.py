"""``TrainingOrchestrator``: the control plane as a training script sees it.

Each method of the documented asyncio API has a synchronous twin with the suffix
``_sync`` for plain training loops (``wait_barrier_sync("epoch_3")``); both run the
same code: a request steps the node under the driver's lock in the calling thread, and
waits on a future that the node's events settle (see ``runtime/driver.py``).

Lifecycle: constructing the orchestrator only resolves its settings (arguments, then
the torchrun environment, then the config file); :meth:`register_worker` binds the
socket, starts the driver thread and joins the cluster; :meth:`close` (or leaving an
``async with`` / ``with`` block) announces the departure and leaves no thread, socket
or port behind.

Barrier outcomes become exceptions: a lost worker raises :class:`WorkerLostError`
naming it and its rank (when it is raised, :meth:`members` no longer lists that worker
unless it has since come back: the leader's verdict travels with the result), a timeout raises :class:`BarrierTimeout` naming who had not
arrived, a lost majority raises :class:`NoQuorumError`. :meth:`agree` is a barrier at
which every worker also brings a value; it returns an :class:`Agreement` saying whether
all values were equal and, if not, who differs from whom (it raises nothing for a
mismatch: what a mismatch means is the caller's business).

Checkpoints (used by ``CheckpointManager(..., orchestrator=...)``): :meth:`report_part`
tells the leader that this rank's part of a step is durable and returns a future that
completes when the step is committed (CheckpointError when it is abandoned). The
manager registers a :class:`CommitHandler` that owns the storage; on the leader, each
``CommitDue`` and each takeover of leadership runs the handler in one commit thread,
in order, never in the driver thread, and its decision goes back to the node.

Observation: :attr:`metrics` holds this worker's Prometheus metrics (None
without ``prometheus_client``), and with ``[http] port`` set (``DTRUNTIME_HTTP_PORT``;
``port + LOCAL_RANK`` under torchrun) :meth:`register_worker` also starts the HTTP API
(:mod:`dtruntime.http`, at :attr:`http_url`), which :meth:`close` stops. Both read the
driver's published observation only, never its lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ..config import Config
from ..control.commands import RunControl, Save
from ..control.preemption import Preemption
from ..control.watchdog import Hung, Watchdog
from ..errors import (
    BarrierTimeout,
    BindError,
    CheckpointError,
    ConfigError,
    DtruntimeError,
    JoinTimeout,
    NoQuorumError,
    ProtocolError,
    WorkerLostError,
)
from ..logs import configure_from_env
from ..protocol.events import (
    BarrierFailed,
    FailureCause,
    BarrierReleased,
    CheckpointAbandoned,
    CheckpointCommitted,
    CommandUpdate,
    CommitDue,
    DeclaredDead,
    DuplicateRefused,
    Event,
    LeaderChanged,
    WorkerIdTaken,
    WorkerLost,
)
from ..protocol.messages import CommitOutcome, MemberEntry, PartDone, Status
from ..protocol.node import Node
from ..protocol.settings import ProtocolSettings
from ..runtime.auth import FrameAuthenticator, load_secret
from ..runtime.bootstrap import (
    BootstrapInfo,
    describe_bind,
    is_endpoint_shaped,
    join_endpoint,
    resolve_bootstrap,
    warn_if_insecure,
)
from ..runtime.driver import Driver, Observation
from ..runtime.transport import ZmqTransport
from .registration import Joining, Registration, bind_advice
from .waiting import await_logged, wait_logged

log = logging.getLogger("dtruntime")
STEP_KEY = "dtruntime.step"  # the gossiped training step (report_step); read by dtruntime.http.steps
LOST_MEMORY = 4096  # loss reports kept (ids restarted under new names are distinct forever)


@dataclass(frozen=True)
class Agreement:
    """The values the workers brought to an agreement barrier (:meth:`TrainingOrchestrator.agree`).

    ``reference`` is the lowest-ranked worker and ``reference_value`` its value;
    ``differing`` names every worker whose value differs from it, and
    ``differing_value`` is the first one's value. ``excluded`` names the members the
    barrier released without, as dead (an elastic one: those that died while it was
    open among them). Every worker gets the same record.
    """

    barrier_id: str
    reference: str
    reference_value: str
    differing: tuple[str, ...]
    differing_value: str
    excluded: tuple[str, ...] = ()

    @property
    def agreed(self) -> bool:
        return not self.differing


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker as registered: what :meth:`TrainingOrchestrator.members` returns.

    ``endpoint`` is the control plane's; ``port`` is the worker port passed to
    :meth:`TrainingOrchestrator.register_worker` (the original API's, for the user's own
    services), which dtruntime records and advertises but never binds.
    """

    worker_id: str
    rank: int
    local_rank: int
    endpoint: str
    gpu_count: int
    memory_bytes: int
    suspect: bool
    port: int = 0  # the worker port given to register_worker (advertised only; 0: none)

    @classmethod
    def from_entry(cls, entry: MemberEntry) -> "WorkerInfo":
        return cls(
            entry.worker_id, entry.rank, entry.local_rank, entry.endpoint, entry.gpu_count,
            entry.memory_bytes, entry.status == Status.SUSPECT, entry.worker_port,
        )


class CommitHandler(Protocol):
    """Decides checkpoint steps from storage on the leader (see ``checkpoint.leader``)."""

    def decide(
        self, step: int, reports: tuple[PartDone, ...], missing_ranks: tuple[int, ...]
    ) -> tuple[CommitOutcome, tuple[int, ...]]: ...

    def recover(self) -> list[int]:
        """On becoming leader: finish what storage allows; return every committed step."""
        ...


class TrainingOrchestrator:
    """Registration, barriers and membership for one training process.

    ``TrainingOrchestrator(worker_id, coordinator_url, world_size, rank)`` as documented;
    every argument may be omitted under ``torchrun`` (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``, ``WORKER_ID``, ``COORDINATOR_URL``).
    The quick reference's ``TrainingOrchestrator("localhost:50051")`` works too: a first
    argument shaped like an endpoint (``host:port``, ``tcp://`` or ``http://``), with no
    ``coordinator_url``, is the coordinator URL and the worker id comes from the
    environment (a worker id such as ``node:7`` goes with an explicit ``coordinator_url``).
    ``config`` or keyword overrides (``heartbeat_interval_ms=100``) set the protocol
    timing; ``secret`` (or ``DTRUNTIME_SECRET``) authenticates every message.
    """

    def __init__(
        self,
        worker_id: str | None = None,
        coordinator_url: str | None = None,
        world_size: int | None = None,
        rank: int | None = None,
        *,
        config: Config | None = None,
        secret: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> None:
        env = os.environ if env is None else env
        configure_from_env(env)
        if coordinator_url is None and is_endpoint_shaped(worker_id):
            log.info("TrainingOrchestrator(%r): taken as the coordinator URL", worker_id)
            worker_id, coordinator_url = None, worker_id
        if config is None:
            self.config = Config.load(env=env, **overrides)
        else:
            self.config = config.with_overrides(**overrides)
        self.bootstrap: BootstrapInfo = resolve_bootstrap(
            env, worker_id=worker_id, coordinator_url=coordinator_url, world_size=world_size, rank=rank,
            default_coordinator=self.config.coordinator.address,
        )
        self._env_worker_id = None if worker_id is not None else env.get("WORKER_ID")
        raw_secret = secret.encode() if isinstance(secret, str) else secret
        self._secret = raw_secret if raw_secret is not None else load_secret(env)
        self._driver: Driver | None = None
        self._lock = threading.Lock()
        self._barriers: dict[str, Future[Agreement]] = {}
        self._joined: Future[str] = Future()
        self._lost: OrderedDict[str, WorkerLost] = OrderedDict()  # newest LOST_MEMORY, for naming ranks
        self._declared_dead = False
        self._commits: dict[int, Future[None]] = {}
        self._commit_handler: CommitHandler | None = None
        self._commit_backlog: list[CommitDue] = []  # dues that came before a handler
        self._commit_thread: ThreadPoolExecutor | None = None
        self._before_close: list[Callable[[], None]] = []
        self._barrier_started: dict[str, float] = {}  # barrier id -> perf_counter at the call
        self._dataset_sizes: dict[str, int] = {}  # gossip name of a dataset -> total samples
        self._http: Any = None  # dtruntime.http.HttpServer while serving
        self._log_ring: Any = None  # dtruntime.http.LogRing while registered
        self.metrics = _new_metrics(self._observation, self._take_release_latencies)
        self.run_control = RunControl(self)
        self.watchdog = Watchdog(self)
        self._preemption = Preemption(self.run_control, self.config.preemption.sigterm_action(env),
                                      float(self.config.preemption.grace_s), self.close_sync)

    # -- properties -----------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        return self.bootstrap.worker_id

    @property
    def rank(self) -> int:
        return self.bootstrap.rank

    @property
    def world_size(self) -> int:
        return self.bootstrap.world_size

    @property
    def endpoint(self) -> str:
        """The endpoint this worker listens on (after :meth:`register_worker`)."""
        return self._running().endpoint

    @property
    def counters(self) -> dict[str, int]:
        """Traffic and drop counters of the driver and its authenticator."""
        driver = self._running()
        return {**driver.counters, **{f"auth_{k}": v for k, v in self._auth_counters().items()}}

    @property
    def http_url(self) -> str | None:
        """``http://host:port`` of this worker's HTTP API, or None when it serves none."""
        server = self._http
        return None if server is None else server.url

    def observation(self) -> Observation | None:
        """The driver's latest published observation (None before :meth:`register_worker`); never blocks."""
        return self._observation()

    # -- asyncio API ------------------------------------------------------------------

    def register_worker(
        self, *where: str | int, ip: str | None = None, port: int | None = None, gpu_count: int = 0,
        memory_bytes: int = 0, timeout: float | None = 60.0,
    ) -> "Awaitable[str]":
        """Bind, start the driver and join the cluster; awaiting the result gives this worker's id.

        ``register_worker(ip, port)`` as documented, or the quick reference's
        ``register_worker(worker_id, ip, port)``, which also sets the worker id (before
        the first registration only). ``ip`` is the host peers reach this worker at
        (as ``DTRUNTIME_HOST``; rank 0 advertises it only when the coordinator address
        is a wildcard such as ``0.0.0.0``). ``port`` is the original API's *worker
        port*: recorded and advertised to peers (:attr:`WorkerInfo.port`), never bound;
        the control plane binds its own port (rank 0 the coordinator's, the others an
        ephemeral one), so every local rank may pass the same ``port``.

        The call itself binds and starts joining (so the quick reference's un-awaited
        ``orch.register_worker(...)`` registers too; :meth:`register_worker_sync` waits);
        ``await`` waits for the join, up to ``timeout`` seconds.
        """
        joined = self._register(Registration.of(where, ip, port, gpu_count, memory_bytes))
        return Joining(joined, timeout, self._join_timeout)

    async def wait_barrier(self, barrier_id: str, timeout: float | None = None, *, elastic: bool = False) -> None:
        """Wait until every expected worker arrived at ``barrier_id`` (see the module doc)."""
        await self._await_logged(self._arrive(barrier_id, timeout, elastic), self._still_waiting(barrier_id, "barrier"))

    async def agree(
        self, barrier_id: str, value: str, timeout: float | None = None, *, elastic: bool = False
    ) -> Agreement:
        """A barrier at which every worker brings ``value`` (at most 1024 printable
        characters); returns who, if anyone, brought a different one. Errors as for
        :meth:`wait_barrier`; with ``elastic=True`` a worker lost meanwhile is left out
        and the others agree among themselves."""
        future = self._arrive(barrier_id, timeout, elastic, value)
        return await self._await_logged(future, self._still_waiting(barrier_id, "agreement"))

    async def heartbeat(self) -> None:
        """Run a gossip round now (they also run automatically every interval)."""
        await asyncio.wrap_future(self._running().submit(lambda node, now: node.tick(now)))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close_sync)

    async def __aenter__(self) -> "TrainingOrchestrator":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- synchronous twins ---------------------------------------------------------------

    def register_worker_sync(
        self, *where: str | int, ip: str | None = None, port: int | None = None, gpu_count: int = 0,
        memory_bytes: int = 0, timeout: float | None = 60.0,
    ) -> str:
        joined = self._register(Registration.of(where, ip, port, gpu_count, memory_bytes))
        try:
            return self._wait_logged(joined, timeout, self._still_joining)
        except FutureTimeout:
            if joined.done():
                raise
            raise self._join_timeout(timeout) from None

    def wait_barrier_sync(self, barrier_id: str, timeout: float | None = None, *, elastic: bool = False) -> None:
        self._wait_logged(self._arrive(barrier_id, timeout, elastic), None, self._still_waiting(barrier_id, "barrier"))

    def agree_sync(
        self, barrier_id: str, value: str, timeout: float | None = None, *, elastic: bool = False
    ) -> Agreement:
        future = self._arrive(barrier_id, timeout, elastic, value)
        return self._wait_logged(future, None, self._still_waiting(barrier_id, "agreement"))

    def heartbeat_sync(self) -> None:
        self._running().submit(lambda node, now: node.tick(now)).result(timeout=10)

    def close_sync(self) -> None:
        """Leave the cluster and release the threads, sockets and port. Idempotent.

        First, while this worker is still in the cluster, runs the :meth:`before_close`
        callbacks: the checkpoint managers attached to it finish their pending saves, so
        that every rank's part of those steps is committed.
        """
        with self._lock:
            callbacks, self._before_close = self._before_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - the close goes on; the rest must still run
                log.exception("a before-close callback of %s failed", self.worker_id)
        self._stop_http()
        self._preemption.disarm()
        self.watchdog.close()
        driver = self._driver
        if driver is not None:
            driver.close()
        with self._lock:
            commit_thread, self._commit_thread = self._commit_thread, None
        if commit_thread is not None:
            commit_thread.shutdown(wait=True)  # a manifest write in progress finishes
        self._fail_barriers(DtruntimeError("the orchestrator is closed"))

    # -- checkpoint commit ------------------------------------------------------------

    def report_part(self, step: int, size: int, checksum: int, codec: str, *, ok: bool = True) -> "Future[None]":
        """Report this rank's durable part of ``step`` (``ok=False``: its write failed).

        The future completes when the leader committed the step, or raises
        CheckpointError naming the ranks whose part was missing.
        """
        driver = self._running()
        future: Future[None] = Future()
        with self._lock:
            if step in self._commits:
                raise CheckpointError(f"checkpoint step {step} is already waiting for its commit")
            self._commits[step] = future
        submitted = driver.submit(lambda node, now: node.part_written(step, self.rank, size, checksum, codec, now, ok=ok))

        def on_submitted(done: Future) -> None:
            error = done.exception()
            if error is not None:
                self._settle_commit(step, CheckpointError(f"checkpoint step {step}: cannot report the part: {error}"))

        submitted.add_done_callback(on_submitted)
        return future

    def before_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` at the start of :meth:`close_sync` (in registration order, each
        once), while the driver still runs: a ``CheckpointManager`` attached to this
        orchestrator registers its close here. An exception from it is logged."""
        with self._lock:
            self._before_close.append(callback)

    def set_commit_handler(self, handler: CommitHandler) -> None:
        """Register the storage owner that decides steps while this worker leads (one per process)."""
        with self._lock:
            if self._commit_handler is not None:
                raise ProtocolError("a checkpoint commit handler is already registered with this orchestrator")
            self._commit_handler = handler
            thread = self._commit_thread = ThreadPoolExecutor(1, thread_name_prefix="dtruntime-commit")
            # Queued under the lock, so a CommitDue the driver raises meanwhile runs after
            # the backlog: steps are decided in the order they became due.
            if self._driver is not None and self._driver.snapshot.is_leader:
                thread.submit(self._recover, handler)
            for due in self._commit_backlog:
                thread.submit(self._decide, handler, due)
            self._commit_backlog = []

    def __enter__(self) -> "TrainingOrchestrator":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_sync()

    # -- queries ------------------------------------------------------------------------

    def leader(self) -> str | None:
        """The current leader's worker id, or None while there is none."""
        return self._running().snapshot.leader_id

    def is_leader(self) -> bool:
        return self._running().snapshot.is_leader

    @property
    def heartbeat_period_s(self) -> float:
        """Seconds between two heartbeats (gossip rounds) of this worker."""
        return self.config.coordinator.heartbeat_interval_ms / 1000

    def set_progress(self, key: str, value: int) -> None:
        """Publish this worker's counter ``key`` (at most 256 printable characters; the
        value only grows); the other workers learn it by gossip within a few heartbeats."""
        self._running().submit(lambda node, now: node.set_progress(key, value, now)).result()

    def step_boundary(self, step: int, save: Save | None = None) -> None:
        """Call once per training step, after it: publishes ``step`` (gossiped; it only
        grows) and acts on the run-control commands due at it (``dtruntime.control``).

        ``save(step)`` writes this rank's checkpoint of ``step`` and returns its handle
        (``CheckpointManager.save``'s ``SaveHandle``) or None; it is called only when a
        ``checkpoint-now`` or ``stop`` is due here, and then on every rank at the same
        step. A ``stop`` raises :class:`~dtruntime.errors.RunStopped` (a ``SystemExit``,
        code 0) once that checkpoint is committed; SIGTERM starts a ``stop``
        (``dtruntime.control.preemption``). Costs one driver call when no
        command is due. The first call starts the progress watchdog
        (``dtruntime.control.watchdog``).
        """
        self.watchdog.on_boundary()
        self.run_control.step_boundary(step, save)

    def waiting(self) -> "contextlib.AbstractContextManager[None]":
        """``with orch.waiting():`` marks a block that waits for the other ranks, not a
        stuck one, for the progress watchdog. dtruntime's own blocking waits and
        ``ElasticTrainer``'s recovery use it; a loop blocking on something of its own may."""
        return self.watchdog.waiting()

    def straggler_report(self) -> dict[str, Any]:
        """Per-rank step times and their spread against the median (see
        ``Watchdog.straggler_report``); empty figures before the first step boundary."""
        return self.watchdog.straggler_report()

    def hung_workers(self) -> list[Hung]:
        """Live workers this rank's watchdog currently declares hung."""
        return list(self.watchdog.hung.values())

    def progress(self, key: str) -> dict[str, int]:
        """Every worker's counter ``key`` as far as this worker has heard, its own included."""
        return self._running().submit(lambda node, now: node.progress_of(key)).result()

    def report_step(self, step: int) -> None:
        """Publish this worker's training step (it only grows), gossiped like :meth:`set_progress`:
        the HTTP API and the metrics derive each rank's step time and the stragglers from it."""
        self.set_progress(STEP_KEY, step)

    def note_dataset(self, name: str, total_samples: int) -> None:
        """Record a dataset's size, so the HTTP API shows each rank's epoch progress as a fraction
        (the dataset registry calls this when a dataset is registered)."""
        with self._lock:
            self._dataset_sizes[name] = total_samples

    def members(self) -> list[WorkerInfo]:
        """Live workers (including suspects) with their registration info, by rank."""
        return sorted((WorkerInfo.from_entry(e) for e in self._running().snapshot.members), key=lambda w: w.rank)

    # -- internals ----------------------------------------------------------------------

    def _observation(self) -> Observation | None:
        driver = self._driver
        return None if driver is None else driver.observe()

    def _take_release_latencies(self) -> list[float]:
        driver = self._driver
        if driver is None:
            return []
        samples, queue = [], driver.release_latencies
        while queue:
            samples.append(queue.popleft())
        return samples

    def _start_http(self, driver: Driver) -> None:
        """Serve the HTTP API if ``[http] port`` is set (``port + LOCAL_RANK``); BindError if taken."""
        settings = self.config.http
        if not settings.port:
            return
        if self.metrics is None:
            raise ConfigError("http.port", "the HTTP API needs the http extra: pip install 'dtruntime[http]' "
                                           "(aiohttp, prometheus_client)")
        from ..http import HttpServer, JobView

        view = JobView(
            self.worker_id, self.rank, driver.observe, self.metrics, self._log_ring,
            run_control=self._run_control_or_none, dataset_sizes=self._dataset_sizes_copy,
        )
        server = HttpServer(view, host=settings.host, port=settings.port + self.bootstrap.local_rank,
                            secret=self._secret, alive=lambda: driver.alive)
        server.start()
        self._http = server

    def _stop_http(self) -> None:
        with self._lock:
            server, self._http = self._http, None
            ring, self._log_ring = self._log_ring, None
        if server is not None:
            server.close()
        if ring is not None:
            logging.getLogger("dtruntime").removeHandler(ring)

    def _run_control_or_none(self) -> Any:
        return self.run_control

    def _dataset_sizes_copy(self) -> dict[str, int]:
        with self._lock:
            return dict(self._dataset_sizes)

    def _wait_logged(self, future: "Future[Any]", timeout: float | None, describe: Callable[[float], str]) -> Any:
        settings = self.config.watchdog
        with self.watchdog.waiting():
            return wait_logged(future, timeout, settings.still_waiting_first_s, settings.still_waiting_every_s,
                               describe)

    async def _await_logged(self, future: "Future[Any]", describe: Callable[[float], str]) -> Any:
        settings = self.config.watchdog
        with self.watchdog.waiting():
            return await await_logged(future, settings.still_waiting_first_s, settings.still_waiting_every_s, describe)

    def _still_waiting(self, barrier_id: str, kind: str) -> Callable[[float], str]:
        """The "still waiting" line of a wait at ``barrier_id``: whom, as the leader said."""

        def describe(elapsed: float) -> str:
            driver = self._running()
            missing = driver.submit(lambda node, now: node.waiting_for(barrier_id)).result(1.0)
            snapshot = driver.snapshot
            if missing:
                whom = f"for {self._named(missing)}"
            elif snapshot.leader_id is None:
                whom = "with no leader elected"
            elif snapshot.is_leader:
                whom = "(this worker leads; the barrier is not open here yet)"
            else:
                whom = f"for an answer from the leader {snapshot.leader_id}"
            return (f"{self.worker_id} is still waiting at {kind} {barrier_id!r} after {elapsed:.0f} s {whom} "
                    f"({len(snapshot.members)} of {self.world_size} workers live here)")

        return describe

    def _still_joining(self, elapsed: float) -> str:
        snapshot = self._running().snapshot
        return (f"{self.worker_id} is still joining the cluster through {self.bootstrap.coordinator_endpoint} after "
                f"{elapsed:.0f} s ({len(snapshot.members)} of {self.world_size} workers known here)")

    def _running(self) -> Driver:
        if self._driver is None:
            raise ProtocolError("call register_worker() first")
        return self._driver

    def _auth_counters(self) -> dict[str, int]:
        return self._auth.counters if self._driver is not None else {}

    def _register(self, registration: Registration) -> "Future[str]":
        with self._lock:
            started = self._driver is None
            if registration.worker_id is not None and registration.worker_id != self.worker_id:
                if not started:
                    raise ProtocolError(
                        f"this orchestrator is already registered as {self.worker_id!r}, "
                        f"not {registration.worker_id!r}"
                    )
                self.bootstrap = replace(self.bootstrap, worker_id=registration.worker_id)
            if started:
                self._start(registration)
        if started:  # outside self._lock: event handlers take it while holding the driver's lock
            self._running().submit(lambda node, now: self._check_joined(node))
            self._preemption.arm()
        return self._joined

    def _id_source(self) -> str:
        """Where this worker's id came from, for an error about it."""
        return "WORKER_ID" if self._env_worker_id == self.worker_id else "worker_id"

    def _join_timeout(self, timeout: float | None) -> JoinTimeout:
        return JoinTimeout(
            f"{self.worker_id} could not join the cluster through {self.bootstrap.coordinator_endpoint} "
            f"within {timeout}s"
        )

    def _start(self, registration: Registration) -> None:
        info = self.bootstrap
        plan = describe_bind(
            info.rank, info.coordinator_endpoint, own_host=registration.ip or info.own_host,
            fallback_host=socket.gethostname(),
        )
        warn_if_insecure(plan.bind_endpoint, self._secret is not None)
        try:
            transport = ZmqTransport(plan.bind_endpoint)
        except BindError as exc:
            raise BindError(f"{exc}. {bind_advice(info, plan)}") from None
        endpoint = join_endpoint(plan.advertise_host, int(transport.endpoint.rsplit(":", 1)[1]))
        if plan.advertise_source != "coordinator_url" or not plan.is_coordinator:
            log.info("%s binds %s and advertises %s to peers (host from %s)", info.worker_id,
                     plan.bind_endpoint, endpoint, plan.advertise_source)
        elif registration.ip is not None and registration.ip != plan.advertise_host:
            log.info("%s is rank 0: peers reach it at the coordinator endpoint %s, not at ip=%r",
                     info.worker_id, endpoint, registration.ip)
        incarnation = time.time_ns() // 1_000_000  # above any earlier process of this worker
        member = MemberEntry(
            info.worker_id, info.rank, info.local_rank, incarnation, Status.ALIVE, endpoint,
            registration.gpu_count, registration.memory_bytes, registration.port,
        )
        seeds = [info.coordinator_endpoint, *info.peers] if info.rank != 0 else list(info.peers)
        coordinator = self.config.coordinator
        settings = ProtocolSettings.from_millis(coordinator.heartbeat_interval_ms, coordinator.heartbeat_timeout_ms)
        now = time.monotonic()
        node = Node(member, info.world_size, seeds, settings, random.Random(), now)
        self._auth = FrameAuthenticator(self._secret)
        driver = Driver(node, transport, self._auth, on_event=self._on_event)
        if self.metrics is not None and self.config.http.port:  # the ring is the HTTP API's log tail
            from ..http.logring import LogRing

            self._log_ring = LogRing(info.worker_id)
            logging.getLogger("dtruntime").addHandler(self._log_ring)
        try:
            self._start_http(driver)  # runs under self._lock (from _register)
        except BaseException:
            driver.close()  # never started: this only closes the transport
            if self._log_ring is not None:
                logging.getLogger("dtruntime").removeHandler(self._log_ring)
                self._log_ring = None
            raise
        self._driver = driver
        log.info("worker %s (rank %d/%d) listening on %s", info.worker_id, info.rank, info.world_size, endpoint)
        self._driver.start()

    def _check_joined(self, node: Node) -> None:
        if node.joined and not self._joined.done():
            self._joined.set_result(self.worker_id)

    def _arrive(self, barrier_id: str, timeout: float | None, elastic: bool, value: str = "") -> "Future[Agreement]":
        driver = self._running()
        future: Future[Agreement] = Future()
        with self._lock:
            if barrier_id in self._barriers:
                raise ProtocolError(f"already waiting at barrier {barrier_id!r}")
            self._barriers[barrier_id] = future
            self._barrier_started[barrier_id] = time.perf_counter()
        submitted = driver.submit(
            lambda node, now: node.arrive(barrier_id, now, timeout=timeout, elastic=elastic, value=value)
        )

        def on_submitted(done: Future) -> None:
            if done.exception() is not None:
                self._settle(barrier_id, done.exception())

        submitted.add_done_callback(on_submitted)
        return future

    def _schedule(self, work: Any) -> None:
        """Run ``work(handler)`` in the commit thread (never the driver thread's IO)."""
        with self._lock:
            handler, thread = self._commit_handler, self._commit_thread
        if handler is None or thread is None:
            return
        try:
            thread.submit(work, handler)
        except RuntimeError:  # shut down by close()
            pass

    def _decide(self, handler: CommitHandler, due: CommitDue) -> None:
        try:
            outcome, missing = handler.decide(due.step, due.reports, due.missing_ranks)
        except Exception:  # noqa: BLE001 - never leave the ranks waiting on a bug
            log.exception("deciding checkpoint step %d failed", due.step)
            outcome, missing = CommitOutcome.FAILED, ()
        self._resolve(due.step, outcome, missing)

    def _recover(self, handler: CommitHandler) -> None:
        try:
            committed = handler.recover()
        except Exception as exc:  # noqa: BLE001 - storage trouble: steps are decided as they come
            log.warning("checkpoint recovery after taking over as leader failed: %s", exc)
            return
        for step in committed:
            self._resolve(step, CommitOutcome.COMMITTED, ())

    def _resolve(self, step: int, outcome: CommitOutcome, missing: tuple[int, ...]) -> None:
        driver = self._driver
        if driver is not None:
            driver.submit(lambda node, now: node.commit_resolved(step, outcome, now, missing))

    def _settle_commit(self, step: int, error: BaseException | None) -> None:
        with self._lock:
            future = self._commits.pop(step, None)
        _settle_future(future, error)

    def _on_commit_event(self, event: Event) -> None:
        if isinstance(event, CommitDue):
            with self._lock:
                if self._commit_handler is None:
                    self._commit_backlog.append(event)
                    return
            self._schedule(lambda handler: self._decide(handler, event))
        elif isinstance(event, CheckpointCommitted):
            self._settle_commit(event.step, None)
        elif isinstance(event, CheckpointAbandoned):
            self._settle_commit(event.step, _abandoned_error(event))
        elif isinstance(event, LeaderChanged) and event.leader_id == self.worker_id:
            self._schedule(self._recover)

    def _on_event(self, event: Event) -> None:
        """Runs in the driver thread: turn node events into future outcomes."""
        self._on_commit_event(event)
        if isinstance(event, CommandUpdate):
            self.run_control.on_event(event)
        elif isinstance(event, BarrierReleased):
            agreement = Agreement(
                event.barrier_id, event.reference, event.reference_value, event.differing, event.differing_value,
                event.excluded,
            )
            self._settle(event.barrier_id, None, agreement)
        elif isinstance(event, BarrierFailed):
            self._settle(event.barrier_id, self._barrier_error(event))
        elif isinstance(event, WorkerLost):
            self._lost[event.worker_id] = event
            self._lost.move_to_end(event.worker_id)
            if len(self._lost) > LOST_MEMORY:
                self._lost.popitem(last=False)  # the view still knows its rank (see _rank_of)
            if event.left:
                log.info("worker %s (rank %d) left", event.worker_id, event.rank)
            else:
                log.warning("worker %s (rank %d) lost", event.worker_id, event.rank)
        elif isinstance(event, DeclaredDead):
            log.error("this worker was declared dead by the cluster; rejoined as incarnation %d",
                      event.new_incarnation)
        elif isinstance(event, LeaderChanged):
            log.info("leader is now %s (term %d)", event.leader_id, event.term)
            if self.metrics is not None:
                self.metrics.leader_changes.inc()
        elif isinstance(event, WorkerIdTaken):
            _fail(self._joined, ConfigError(
                self._id_source(),
                f"worker id {event.worker_id!r} is already taken by the worker at {event.holder_endpoint} "
                f"(rank {event.holder_rank}); give every process its own id (without WORKER_ID each gets "
                "worker-<rank>)",
            ))
        elif isinstance(event, DuplicateRefused):
            log.error(
                "a process at %s (rank %d) tried to join with the worker id %r, already taken by %s; it was "
                "refused: give every process its own id", event.joiner_endpoint, event.joiner_rank,
                event.worker_id, event.holder_endpoint,
            )
        if not self._joined.done() and self._driver is not None and self._driver.snapshot.joined:
            self._joined.set_result(self.worker_id)

    def _barrier_error(self, event: BarrierFailed) -> Exception:
        if event.reason == FailureCause.LOST and self.worker_id in event.workers:
            return WorkerLostError(
                f"barrier {event.barrier_id!r} failed: this worker ({self.worker_id}) was declared dead by the "
                "cluster (paused or cut off longer than the heartbeat timeout); it has rejoined",
                [self.worker_id], [self.rank],
            )
        if event.reason == FailureCause.LOST:
            ranks = self._ranks_of(event.workers)
            return WorkerLostError(
                f"barrier {event.barrier_id!r} failed: {self._gone(event.workers)}", event.workers, ranks,
            )
        if event.reason == FailureCause.TIMEOUT:
            if not event.workers and not self._running().snapshot.has_quorum:
                return NoQuorumError(f"barrier {event.barrier_id!r} timed out: {event.detail}")
            if event.workers:
                missing = f"not arrived: {self._named(event.workers)}"
            else:
                joined = len(self._running().snapshot.members)
                missing = f"{event.detail}; {joined} of {self.world_size} workers have joined"
            return BarrierTimeout(f"barrier {event.barrier_id!r} timed out ({missing})", event.workers)
        if event.reason == FailureCause.NO_QUORUM:
            return NoQuorumError(f"barrier {event.barrier_id!r} failed: {event.detail}")
        return WorkerLostError(
            f"barrier {event.barrier_id!r} failed: {event.detail} ({self.worker_id})", [self.worker_id], [self.rank]
        )

    def _named(self, worker_ids: tuple[str, ...]) -> str:
        """``worker-1 (rank 1), worker-2 (rank 2)``; a worker of unknown rank by its id alone."""
        ranks = ((worker_id, self._rank_of(worker_id)) for worker_id in worker_ids)
        return ", ".join(w if rank is None else f"{w} (rank {rank})" for w, rank in ranks)

    def _gone(self, worker_ids: tuple[str, ...]) -> str:
        """``worker-1 (rank 1) left the cluster`` / ``... lost``: the same word as the log's."""
        left = tuple(w for w in worker_ids if (lost := self._lost.get(w)) is not None and lost.left)
        lost = tuple(w for w in worker_ids if w not in left)
        parts = [f"{self._named(group)} {word}" for group, word in ((lost, "lost"), (left, "left the cluster")) if group]
        return "; ".join(parts)

    def _ranks_of(self, worker_ids: tuple[str, ...]) -> list[int]:
        """Ranks of ``worker_ids``, skipping those this worker never knew."""
        ranks = (self._rank_of(worker_id) for worker_id in worker_ids)
        return [rank for rank in ranks if rank is not None]

    def _rank_of(self, worker_id: str) -> int | None:
        """From this node's loss reports, else from its view (the leader's verdict can
        arrive before this node's own detector or gossip got there)."""
        lost = self._lost.get(worker_id)
        if lost is not None:
            return lost.rank
        return next((e.rank for e in self._running().snapshot.members if e.worker_id == worker_id), None)

    def _settle(self, barrier_id: str, error: BaseException | None, result: Any = None) -> None:
        with self._lock:
            future = self._barriers.pop(barrier_id, None)
            started = self._barrier_started.pop(barrier_id, None)
        if future is not None and started is not None and self.metrics is not None and not future.done():
            self.metrics.barrier_done(time.perf_counter() - started, None if error is None else _failure_kind(error))
        _settle_future(future, error, result)

    def _fail_barriers(self, error: Exception) -> None:
        with self._lock:
            pending, self._barriers = self._barriers, {}
            commits, self._commits = self._commits, {}
            self._barrier_started.clear()
        for future in pending.values():
            _fail(future, error)
        for step, future in commits.items():
            _fail(future, CheckpointError(f"checkpoint step {step}: {error}"))
        _fail(self._joined, error)


def _new_metrics(observe: Callable[[], Observation | None], take_release_latencies: Callable[[], list[float]]) -> Any:
    """This worker's :class:`dtruntime.http.Metrics`, or None without ``prometheus_client``."""
    try:
        from ..http.metrics import Metrics
    except ImportError:
        return None
    return Metrics(observe, take_release_latencies)


def _failure_kind(error: BaseException) -> str:
    """The bounded metric label of a barrier failure."""
    if isinstance(error, WorkerLostError):
        return "lost"
    if isinstance(error, BarrierTimeout):
        return "timeout"
    if isinstance(error, NoQuorumError):
        return "no_quorum"
    return "other"


def _abandoned_error(event: CheckpointAbandoned) -> CheckpointError:
    if event.detail:
        return CheckpointError(f"checkpoint step {event.step} was not committed: {event.detail}")
    if event.outcome == CommitOutcome.FAILED:
        return CheckpointError(
            f"checkpoint step {event.step} was not committed: the leader could not write its manifest"
        )
    return CheckpointError(
        f"checkpoint step {event.step} was abandoned: rank(s) {list(event.missing_ranks)} did not write "
        "their part (lost or failed)"
    )


def _settle_future(future: Future[Any] | None, error: BaseException | None, result: Any = None) -> None:
    """Resolve a waiter's future with ``result`` or ``error``, unless it is gone or already done."""
    if future is None or future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _fail(future: Future, error: BaseException) -> None:
    if not future.done():
        try:
            future.set_exception(error)
        except Exception:  # lost a race with the result: fine
            pass
