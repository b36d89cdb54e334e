"""``ElasticTrainer``: a DDP training loop that survives a lost worker in-process.

    trainer = ElasticTrainer(orchestrator, model, optimizer, num_samples=N, batch_size=64)
    for epoch in range(trainer.epoch, epochs):
        for step in trainer.epoch_steps(epoch):
            with step:
                loss = loss_fn(trainer.ddp(inputs(step.indices)), targets(step.indices))
                loss.backward()
            # leaving the block applied optimizer.step() on every rank, or on none

What happens on a loss: the step's all-reduce fails on the survivors. Gloo reports a
killed peer's closed connection at once to the ranks that talk to it; the others wait
on survivors that have given up, until ``collective_timeout_s``, which defaults to the
control plane's detection budget (heartbeat timeout plus a few gossip rounds: 2.3 s at
100 ms / 1 s and 4 workers). The ``with``
block swallows that failure, and the trainer forms the next *generation*
(:mod:`.regroup`): the survivors agree on the members, the most advanced one's state
(some may have applied the step the lost worker died in, some not) is broadcast to the
others (:mod:`.state_sync`), a new process group is built with dense ranks on a store
hosted by the lowest-ranked survivor, and ``epoch_steps`` yields the same step again
for the new group. Nothing is reloaded from a checkpoint and no applied step is lost.

Run control: after every applied step the trainer calls
``orchestrator.step_boundary(steps_applied, save=...)``, so ``checkpoint-now``, ``stop``
and SIGTERM (a coordinated stop) act there on every rank; with ``checkpoints=`` (a
``CheckpointManager`` attached to the orchestrator) the save is of :meth:`state`.
Resume with ``trainer.load(checkpoints.load_state())`` after constructing the trainer.

Growth: a worker that is live but not in the group (a replacement for a lost rank, or
a new one) is noticed at the next step boundary and the group is re-formed with it. A
new trainer first listens a few heartbeats for the running job's position (gossiped
every step); if it hears one, it joins the next generation as a member that is behind,
so the source's state is broadcast to it, counters and data cursor included.

Invariants:
- ``optimizer.step()`` runs only when the block completed without an exception; after
  a recovery every member holds the source's parameters and optimizer state, bitwise.
- Data follows membership: samples are consumed through one global cursor
  (:mod:`.plan`), so the lost worker's unread samples are simply read by the survivors'
  later steps; over an epoch every sample is read exactly once, plus the recorded
  padding of the last step.
- A failure inside the block that is not a lost worker (no member of the group leaves
  within the detection budget) is retried on the same members a few times, then
  re-raised unchanged.

Edge cases: gloo's ``abort()`` cannot end a blocked collective sooner, since it
blocks holding the GIL (which freezes the control plane's heartbeats), so the
collective timeout is the bound. A step slower than it on one rank (a straggler, a
long save on rank 0) costs a re-formed group of the same members and a retried step,
not an error; pass a larger ``collective_timeout_s`` for such jobs.
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..api.orchestrator import TrainingOrchestrator
from ..errors import ArgumentError, DtruntimeError, WorkerLostError
from .plan import StepSlice, epoch_order, step_slice
from .regroup import Generation, agree_generation, init_generation_group, live_ids
from .state_sync import broadcast_state

log = logging.getLogger("dtruntime.elastic")

MAX_FORM_ATTEMPTS = 10
POSITION_KEY = "dtruntime.elastic.position"  # gossiped (generation << 40) | steps applied
JOIN_LISTEN_PERIODS = 5  # heartbeats a new trainer listens for a running job before it starts one
MAX_RETRIES_WITHOUT_LOSS = 3


class Step:
    """One training step's context: this rank's ``indices`` of the global batch.

    Use it as ``with step:``; on a clean exit the optimizer steps, on a failure the
    trainer recovers and the loop yields the step again.
    """

    def __init__(self, trainer: "ElasticTrainer", number: int, share: StepSlice) -> None:
        self.number = number  # 1-based count of optimizer steps, this one included
        self.indices = share.indices
        self.begin, self.end, self.padding = share.begin, share.end, share.padding
        self.applied = False
        self.error: BaseException | None = None
        self._trainer = trainer

    def __enter__(self) -> "Step":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> bool:
        if error is None:
            self._trainer._apply(self)
            return False
        if isinstance(error, (RuntimeError, WorkerLostError)):  # dist.DistError is a RuntimeError
            self.error = error
            return True
        return False


class ElasticTrainer:
    """DDP over the live workers of ``orchestrator``, rebuilt in-process when one is lost.

    ``model`` and ``optimizer`` are the caller's; the trainer wraps the model in
    :class:`~torch.nn.parallel.DistributedDataParallel` as :attr:`ddp` (a new wrapper
    per generation: always use ``trainer.ddp``) and calls ``optimizer.zero_grad`` before
    and ``optimizer.step`` after each step. The orchestrator must be registered. The
    constructor is a collective: it listens ``JOIN_LISTEN_PERIODS`` heartbeats for a
    running job (once, at start-up), then forms the first generation with every live
    worker, or joins the running job's next one.
    """

    def __init__(
        self,
        orchestrator: TrainingOrchestrator,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        backend: str = "gloo",
        collective_timeout_s: float | None = None,
        ddp_options: dict[str, Any] | None = None,
        checkpoints: Any = None,
    ) -> None:
        if batch_size < 1:
            raise ArgumentError(f"batch_size must be >= 1, not {batch_size}")
        self.orchestrator = orchestrator
        self.model, self.optimizer = model, optimizer
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self.backend = backend
        self.checkpoints = checkpoints  # a CheckpointManager: what run-control checkpoints go to
        self._ddp_options = dict(ddp_options or {})
        self.steps_applied = 0
        self.epoch = 0
        self.cursor = 0
        self.recoveries: list[dict[str, Any]] = []  # one record per generation after the first
        self._retries_without_loss = 0
        coordinator = orchestrator.config.coordinator
        self._period_s = coordinator.heartbeat_interval_ms / 1000
        self._detect_s = coordinator.heartbeat_timeout_ms / 1000 + self._period_s * (
            4 + 3 * math.ceil(math.log2(orchestrator.world_size + 1)))
        self.collective_timeout_s = self._detect_s if collective_timeout_s is None else collective_timeout_s
        self._generation: Generation | None = None
        self._hosted: dist.TCPStore | None = None
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self._form(self._running_generation() + 1)

    # -- the loop -----------------------------------------------------------------

    @property
    def generation(self) -> Generation:
        assert self._generation is not None
        return self._generation

    def epoch_steps(self, epoch: int) -> Iterator[Step]:
        """This rank's steps of ``epoch``, resuming at the cursor if it is the current one."""
        if epoch != self.epoch:
            self.epoch, self.cursor = epoch, 0
        order = epoch_order(self.num_samples, self.seed, epoch, shuffle=self.shuffle)
        while self.cursor < len(order):
            if self.lost_members():
                self._recover("a member left between steps")
            elif self.joiners():
                self._recover(f"{', '.join(self.joiners())} joined")
            generation = self.generation
            step = Step(self, self.steps_applied + 1,
                        step_slice(order, self.cursor, generation.size, generation.dense_rank, self.batch_size))
            self.optimizer.zero_grad(set_to_none=True)
            yield step
            if step.error is not None:
                self._recover(f"step {step.number} failed: {step.error}", step.error)
            elif not step.applied:
                raise DtruntimeError("each step from epoch_steps() must run as `with step:`")
            else:
                self.orchestrator.step_boundary(self.steps_applied, save=self._save if self.checkpoints else None)

    def lost_members(self) -> list[str]:
        """Members of the current generation the control plane no longer lists live (or
        the progress watchdog declares hung)."""
        live = set(live_ids(self.orchestrator))
        return [member for member in self.generation.members if member not in live]

    def joiners(self) -> list[str]:
        """Live workers that are not in the current generation (replacements, new hosts)."""
        members = set(self.generation.members)
        return [worker for worker in live_ids(self.orchestrator) if worker not in members]

    def state(self) -> dict[str, Any]:
        """What a checkpoint or a catching-up peer needs: model, optimizer, counters."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps_applied": self.steps_applied, "epoch": self.epoch, "cursor": self.cursor}

    def load(self, state: dict[str, Any]) -> None:
        """Adopt :meth:`state` output (from a peer or a checkpoint)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_applied, self.epoch, self.cursor = state["steps_applied"], state["epoch"], state["cursor"]

    def close(self) -> None:
        """Destroy the process group (the orchestrator stays open)."""
        if dist.is_initialized():
            dist.destroy_process_group()
        self._hosted = None

    # -- internals ----------------------------------------------------------------

    def _save(self, step: int) -> Any:
        return self.checkpoints.save(self.state(), step)

    def _apply(self, step: Step) -> None:
        self._retries_without_loss = 0
        self.optimizer.step()
        self.steps_applied = step.number
        self.cursor = self.num_samples if step.padding else step.end
        step.applied = True
        self._publish_position()

    def _publish_position(self) -> None:
        """Gossip (generation, steps applied): fresh news every step, so a process that
        joins later hears within a few heartbeats which generation the job is in."""
        self.orchestrator.set_progress(POSITION_KEY, (self.generation.number << 40) | self.steps_applied)

    def _running_generation(self) -> int:
        """The generation a running job is in, as heard by gossip; -1 when none is heard.

        Listens for ``JOIN_LISTEN_PERIODS`` heartbeats and takes the largest position
        heard from a live member: members publish every step, and re-spread their
        position to every worker that joins (so a job paused between steps is heard
        too). The whole window, not the first entry heard: an entry can be stale (a
        dead incarnation's, under the same worker id), never ahead. At the start of a
        job nobody has a position, and every worker waits that long once.
        """
        deadline = time.monotonic() + JOIN_LISTEN_PERIODS * self._period_s
        while time.monotonic() < deadline:
            time.sleep(self._period_s / 2)
        live = set(live_ids(self.orchestrator)) - {self.orchestrator.worker_id}
        heard = [value for worker, value in self.orchestrator.progress(POSITION_KEY).items() if worker in live]
        return max(heard) >> 40 if heard else -1

    def _recover(self, reason: str, error: BaseException | None = None) -> None:
        """Form the next generation after a lost member or a failed step.

        A failed step with no member lost within the detection budget (a straggler past
        the collective timeout, or a peer whose own step raised) is retried on a group
        of the same members, at most ``MAX_RETRIES_WITHOUT_LOSS`` times in a row for one
        step; then the error is the caller's and is re-raised unchanged.
        """
        with self.orchestrator.waiting():  # waiting on the others, not stuck (the progress watchdog)
            self._recover_waiting(reason, error)

    def _recover_waiting(self, reason: str, error: BaseException | None) -> None:
        """:meth:`_recover`'s work, run inside ``orchestrator.waiting()``."""
        started = time.monotonic()
        deadline = started + self._detect_s
        while error is not None and not self.lost_members() and time.monotonic() < deadline:
            time.sleep(self._period_s / 2)  # a failed step: give the control plane time to name the lost
        lost = self.lost_members()
        if error is not None and not lost:
            self._retries_without_loss += 1
            if self._retries_without_loss > MAX_RETRIES_WITHOUT_LOSS:
                raise error
        log.warning("elastic: %s; lost %s; forming generation %d", reason, lost or "nobody",
                    self.generation.number + 1)
        before = self.generation.members
        self._form_next()
        gone = [member for member in before if member not in self.generation.members]  # lost while forming too
        record = {"generation": self.generation.number, "lost": gone, "members": list(self.generation.members),
                  "steps_applied": self.steps_applied, "seconds": time.monotonic() - started}
        self.recoveries.append(record)
        log.warning("elastic: generation %d of %d workers formed in %.2f s; continuing at step %d",
                    record["generation"], self.generation.size, record["seconds"], self.steps_applied + 1)

    def _form_next(self) -> None:
        self._form(self.generation.number + 1)

    def _form(self, number: int) -> None:
        """Tear down the current group and form generation ``number`` (bounded retries).

        A new trainer that heard a stale position (gossip from a dead incarnation, or
        none in time) can arrive at a generation the running job already formed
        without it; it is told so (``WorkerLostError``), listens again and tries the
        generation after the one it hears. A member of a running generation that is
        left out was declared dead: that error is the caller's.
        """
        for _attempt in range(MAX_FORM_ATTEMPTS):
            _discard_process_group(self.ddp)
            self.ddp, self._hosted = None, None
            try:
                generation, self._hosted = agree_generation(
                    self.orchestrator, number, self.steps_applied,
                    settle_s=self._period_s, timeout=self._detect_s * 4,
                )
                init_generation_group(generation, self._hosted, self.backend, self.collective_timeout_s)
                if generation.steps_differ:
                    source_state = self.state() if generation.dense_rank == generation.source else None
                    self.load(broadcast_state(source_state, generation.source))
                self.ddp = nn.parallel.DistributedDataParallel(self.model, **self._ddp_options)
            except WorkerLostError as exc:
                if self._generation is not None:
                    raise
                number = max(number, self._running_generation()) + 1
                log.warning("elastic: the running job formed a generation without this new worker (%s); "
                            "joining generation %d", exc, number)
                continue
            except (RuntimeError, DtruntimeError) as exc:
                log.warning("elastic: generation %d did not form (%s); trying the next", number, exc)
                number += 1
                continue
            self._generation = generation
            self._publish_position()
            return
        raise DtruntimeError(f"no process group formed after {MAX_FORM_ATTEMPTS} attempts")


def _discard_process_group(ddp: nn.parallel.DistributedDataParallel | None) -> None:
    """Retire a failed default group and the DDP wrapper over it, never shutting them down.

    A collective that a lost peer left half done keeps the group's gloo threads blocked
    on live survivors' sockets until the collective timeout; ``shutdown()`` (called by
    ``destroy_process_group``) and the C++ destructor both wait for those threads, and
    every survivor would wait for the others' (``abort()`` is no way out: it blocks
    holding the GIL, which freezes the control plane's heartbeats). So the group is
    taken out of torch.distributed's registry with its shutdown skipped (the registry
    of names is emptied first, which is the loop that calls ``shutdown``), and its last
    references are leaked on purpose, one small object per recovery; its threads end
    when their sockets close or time out.
    """
    if not dist.is_initialized():
        return
    world = dist.distributed_c10d._world
    for retired in (dist.distributed_c10d._get_default_group(), ddp):
        if retired is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(retired))
    world.pg_names.clear()
    dist.destroy_process_group()
