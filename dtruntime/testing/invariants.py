"""Safety invariants checked on every simulated run, from the nodes' own events.

* **One leader per term**: no two nodes ever believe different leaders for one term.
* **Barrier safety**: a node passes barrier ``(id, generation)`` only after every
  world member that the release does not name as excluded called ``arrive`` for it.
* **Commit safety**: a node sees ``CheckpointCommitted(step)`` only after every rank of
  the world wrote its part of ``step`` and a manifest for it was written; no step is
  seen committed by one node and abandoned by another; a manifest is written only when
  the store holds exactly one part of that step for every rank (no step is listed
  unless every part is durable), and at most once per step (storage is create-only,
  so a second leader's write fails and it must adopt the first).

Liveness (convergence after faults stop) is measured by the scenarios with
:meth:`SimCluster.converged`, against a stated bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..checkpoint import layout
from ..protocol.events import BarrierReleased, CheckpointAbandoned, CheckpointCommitted, Event, LeaderChanged


class ClusterView(Protocol):
    """What the checkers read of a simulated cluster (``SimCluster`` is one): public facts
    only, so a checker cannot lean on the simulator's internals."""

    seed: int
    now: float
    world_size: int
    workers: Mapping[str, object]  # worker id -> its record; only the ids are read


class InvariantViolation(AssertionError):
    """A safety invariant failed; the message says which and how to reproduce it."""


class Invariants:
    """Collects violations; :meth:`check` raises the first with the reproducing seed."""

    #: The event classes :meth:`on_event` checks; it ignores every other event.
    CHECKED = frozenset({LeaderChanged, BarrierReleased, CheckpointCommitted, CheckpointAbandoned})

    def __init__(self, cluster: ClusterView) -> None:
        self._cluster = cluster
        self.violations: list[str] = []
        self.leader_of_term: dict[int, str] = {}
        self._arrivals: dict[tuple[str, int], dict[str, None]] = {}
        self.barriers_passed = 0
        self._parts: dict[int, dict[int, None]] = {}
        self.committed: dict[int, None] = {}  # steps some node saw committed
        self.abandoned: dict[int, None] = {}  # steps some node saw abandoned (not for a local cause)
        self._manifests: dict[int, None] = {}  # steps whose manifest was written

    def on_part(self, step: int, rank: int) -> None:
        self._parts.setdefault(step, {})[rank] = None

    def on_manifest(self, step: int, listing: dict[str, int]) -> None:
        """A manifest of ``step`` was just written; ``listing`` is the store at that moment."""
        prefix = layout.step_dir(step) + "/"
        ranks = [parsed[0] for key in listing if key.startswith(prefix)
                 if (parsed := layout.parse_part_name(key[len(prefix):])) is not None]
        if sorted(ranks) != list(range(self._cluster.world_size)):
            self._violate(f"manifest of step {step} written with parts of ranks {sorted(ranks)[:8]}")
        if step in self._manifests:
            self._violate(f"a second manifest of step {step} was written")
        self._manifests[step] = None

    def on_arrive(self, worker_id: str, barrier_id: str, generation: int) -> None:
        key = (barrier_id, generation)
        self._arrivals.setdefault(key, {})[worker_id] = None

    def on_event(self, worker_id: str, event: Event) -> None:
        if event.__class__ not in self.CHECKED:
            return  # most events (MemberJoined: N^2 of them at start-up) check nothing
        if isinstance(event, LeaderChanged) and event.leader_id is not None:
            known = self.leader_of_term.setdefault(event.term, event.leader_id)
            if known != event.leader_id:
                self._violate(
                    f"two leaders for term {event.term}: {known} and {event.leader_id} (seen by {worker_id})"
                )
        elif isinstance(event, BarrierReleased):
            self._check_release(worker_id, event)
        elif isinstance(event, CheckpointCommitted):
            self._check_commit(worker_id, event.step)
        elif isinstance(event, CheckpointAbandoned) and not event.detail:
            self.abandoned[event.step] = None
            if event.step in self.committed:
                self._violate(f"step {event.step} abandoned at {worker_id} but committed elsewhere")

    def _check_commit(self, worker_id: str, step: int) -> None:
        self.committed[step] = None
        parts = self._parts.get(step, {})
        missing = [r for r in range(self._cluster.world_size) if r not in parts]
        if missing:
            self._violate(f"step {step} committed at {worker_id} before ranks {missing[:5]} wrote their parts")
        if step not in self._manifests:
            self._violate(f"step {step} committed at {worker_id} without a manifest")
        if step in self.abandoned:
            self._violate(f"step {step} committed at {worker_id} but abandoned elsewhere")

    def _check_release(self, worker_id: str, event: BarrierReleased) -> None:
        key = (event.barrier_id, event.generation)
        self.barriers_passed += 1
        arrived = self._arrivals.get(key, {})
        excluded = set(event.excluded)
        missing = [w for w in self._cluster.workers if w not in arrived and w not in excluded]
        if missing:
            self._violate(f"barrier {key} released at {worker_id} before {missing[:5]} arrived")

    def _violate(self, text: str) -> None:
        self.violations.append(f"t={self._cluster.now:.3f}s {text}")

    def check(self) -> None:
        if self.violations:
            raise InvariantViolation(
                f"{len(self.violations)} invariant violation(s), first: {self.violations[0]}; "
                f"reproduce with --seed {self._cluster.seed}"
            )
