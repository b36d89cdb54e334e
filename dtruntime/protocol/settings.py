"""Timing and size parameters of the protocol, in seconds (the node's unit of time).

Derived from the user-facing configuration (milliseconds) by :meth:`from_millis`.
Failure-detection bound for a crashed worker (see ``membership``):

    SUSPECT after at most ``probe_period + probe rounds until someone probes it``
    DEAD    ``heartbeat_timeout`` after the first suspicion, unless refuted
    known by every survivor a few gossip periods later (O(log N) periods)
"""

from __future__ import annotations

from ..errors import ConfigError

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    """Protocol timing; every value in seconds except the counts."""

    probe_period: float = 1.0  # heartbeat_interval_ms: one probe (and gossip) per period
    heartbeat_timeout: float = 30.0  # how long a suspect has to refute before it is DEAD
    ping_timeout_fraction: float = 0.5  # direct ping waits this part of a period
    indirect_probes: int = 3  # helpers asked to ping a target that missed the direct ping
    piggyback_max: int = 8  # news items per probe message
    retransmit_mult: int = 3  # each news item is sent retransmit_mult * ceil(log2(N+1)) times
    election_timeout_periods: float = 3.0  # a campaign that got no quorum gives up after this
    reconnect_periods: int = 10  # every this many periods, ping one DEAD member (heals partitions)
    resend_periods: int = 2  # pending barrier arrivals are re-sent this often
    barrier_history: int = 4096  # decided barriers the leader remembers, for late re-sends
    commit_history: int = 1024  # decided checkpoint steps the leader remembers, likewise

    def __post_init__(self) -> None:
        if self.probe_period <= 0 or self.heartbeat_timeout <= 0:
            raise ConfigError("heartbeat", "probe_period and heartbeat_timeout must be positive")
        if self.indirect_probes < 0 or self.piggyback_max < 1 or self.retransmit_mult < 1:
            raise ConfigError("protocol", "indirect_probes >= 0, piggyback_max >= 1, retransmit_mult >= 1")

    @classmethod
    def from_millis(cls, heartbeat_interval_ms: int, heartbeat_timeout_ms: int, **overrides: float) -> "ProtocolSettings":
        return cls(
            probe_period=heartbeat_interval_ms / 1000.0,
            heartbeat_timeout=heartbeat_timeout_ms / 1000.0,
            **overrides,
        )

    @property
    def ping_timeout(self) -> float:
        return self.probe_period * self.ping_timeout_fraction

    @property
    def election_timeout(self) -> float:
        return self.probe_period * self.election_timeout_periods
