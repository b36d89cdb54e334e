"""Deterministic simulation of dtruntime clusters (public, like etcd's rafttest).

:class:`~dtruntime.testing.sim.SimCluster` drives real :class:`~dtruntime.protocol.node.Node`
objects over a simulated clock and network with seeded faults;
:mod:`~dtruntime.testing.invariants` checks what must hold in every run.
"""

from .invariants import InvariantViolation, Invariants
from .sim import NetworkFaults, SimCluster

__all__ = ["InvariantViolation", "Invariants", "NetworkFaults", "SimCluster"]
