"""Safety invariants checked on every simulated run, from the nodes' own events.

* **One leader per term**: no two nodes ever believe different leaders for one term.
* **Barrier safety**: a node passes barrier ``(id, generation)`` only after every
  world member that the release does not name as excluded called ``arrive`` for it.

Liveness (convergence after faults stop) is measured by the scenarios with
:meth:`SimCluster.converged`, against a stated bound.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol.events import BarrierReleased, Event, LeaderChanged

if TYPE_CHECKING:
    from .sim import SimCluster


class InvariantViolation(AssertionError):
    """A safety invariant failed; the message says which and how to reproduce it."""


class Invariants:
    """Collects violations; :meth:`check` raises the first with the reproducing seed."""

    def __init__(self, cluster: "SimCluster") -> None:
        self._cluster = cluster
        self.violations: list[str] = []
        self.leader_of_term: dict[int, str] = {}
        self._arrivals: dict[tuple[str, int], dict[str, None]] = {}
        self.barriers_passed = 0

    def on_arrive(self, worker_id: str, barrier_id: str, generation: int) -> None:
        key = (barrier_id, generation)
        self._arrivals.setdefault(key, {})[worker_id] = None

    def on_event(self, worker_id: str, event: Event) -> None:
        if isinstance(event, LeaderChanged) and event.leader_id is not None:
            known = self.leader_of_term.setdefault(event.term, event.leader_id)
            if known != event.leader_id:
                self._violate(
                    f"two leaders for term {event.term}: {known} and {event.leader_id} (seen by {worker_id})"
                )
        elif isinstance(event, BarrierReleased):
            self._check_release(worker_id, event)

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
