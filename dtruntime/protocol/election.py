"""Leader election with terms and a majority quorum of the expected world.

Candidates are ordered by ``(local_rank != 0, rank, worker_id)``: the local-rank-0
worker of each host first, lowest global rank first, so global rank 0 leads while it
lives and losing one host never loses every candidate.

Rules (Raft's voting, without a log):

* A node campaigns only when it knows no live leader, it is the best live candidate in
  its own view, and it sees a quorum (a majority of the voting world,
  :attr:`Membership.quorum`: ``world_size // 2 + 1`` until ranks leave cleanly) of live
  members. It asks
  every live member for a vote in ``term = highest term seen + 1``.
* A voter grants at most one candidate per term, only for a term above the last leader
  term it knows, only while no other leader is ALIVE in its view (a SUSPECT leader
  may be replaced: that is what makes failover fast), and only if it sees no
  better candidate ALIVE. (Refusals do not raise the voter's terms, so a node that
  wrongly thinks the leader dead cannot depose it.)
* A candidate with a quorum of grants leads that term and announces it; the claim
  ``(term, leader)`` also rides on every gossip message. A node that hears a higher
  term's leader follows it; a leader that hears one steps down.
* A leader that no longer sees a quorum alive steps down, so a minority partition
  ends up with no leader. When its quorum comes back and no higher term appeared, it
  takes its term back (after a partition heals, stale DEAD verdicts can briefly cost
  the rightful leader its quorum; better candidates follow it and would not campaign).
  A follower that hears its leader gossip no leadership stops following it, and
  re-adopts a leader the leader itself disowned only from that leader. A leader that hears
  of any newer term steps down, even when it cannot see that term's leader.

Invariant: at most one leader per term, because two quorums of the same world share a
voter and a voter grants one candidate per term. A clean leave shrinks the voting world
(:attr:`Membership.quorum`); views differ only in how many leaves they have heard, and
one that has heard fewer demands the larger quorum, so quorums still intersect. One rank
that left and restarted on the far side of a partition is safe too (a majority of N - 1
and one of N cannot be disjoint); the gap is two or more such ranks before the near
side hears of their restarts, which the restarts' abstention below narrows. A restarted process has forgotten its
votes; when it joins an established cluster it abstains for one election timeout,
which outlasts any campaign that might have counted its earlier vote.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from .events import LeaderChanged
from .membership import Membership
from .messages import Leader, MemberEntry, Status, Vote, VoteRequest
from .outbox import Outbox
from .settings import ProtocolSettings


def candidate_key(entry: MemberEntry) -> tuple[bool, int, str]:
    """Election order: smaller is better."""
    return (entry.local_rank != 0, entry.rank, entry.worker_id)


def in_candidate_order(view: Membership) -> Iterator[MemberEntry]:
    """Every member of ``view`` by ascending :func:`candidate_key`: the rank index walked
    twice, local-rank-0 members first. Lazy, so finding the best member that passes a
    test walks only the members ahead of it (one or a few when the best candidates
    live), where a scan of the view is O(N) (N^2 across a cluster's votes)."""
    for entry in view.by_rank():
        if entry.local_rank == 0:
            yield entry
    for entry in view.by_rank():
        if entry.local_rank != 0:
            yield entry


@dataclass(slots=True)
class _Campaign:
    term: int
    deadline: float
    votes: dict[str, None] = field(default_factory=dict)


class Election:
    """Election state of one node. Not thread-safe; driven by :class:`Node`."""

    # Slotted: every node has one, and a simulation touches 10,000 of them in turn.
    __slots__ = ("worker_id", "settings", "_rng", "_out", "leader_term", "leader_id", "is_leader",
                 "highest_term", "voted_term", "voted_for", "abstain_until", "_campaign", "campaigns",
                 "_next_campaign_at", "_best_cache", "_suspended_term", "_denied")

    def __init__(
        self,
        worker_id: str,
        settings: ProtocolSettings,
        rng: random.Random,
        outbox: Outbox,
        now: float,
    ) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self._rng = rng
        self._out = outbox
        self.leader_term = 0
        self.leader_id: str | None = None
        self.is_leader = False
        self.highest_term = 0
        self.voted_term = 0
        self.voted_for: str | None = None
        self.abstain_until = now
        self._campaign: _Campaign | None = None
        self.campaigns = 0  # elections this node started (a status counter)
        self._next_campaign_at = now
        self._best_cache: tuple[int, bool] = (-1, False)  # (view version, am I the best?)
        self._suspended_term = -1  # a term this node won, then paused for lack of quorum
        self._denied: tuple[int, str] = (-1, "")  # (term, leader) that leader itself disowned

    @property
    def campaigning(self) -> bool:
        """Whether this node is collecting votes for itself right now."""
        return self._campaign is not None

    # -- evaluation -------------------------------------------------------------

    def evaluate(self, now: float, view: Membership) -> None:
        """Re-check leadership after a view change or when a timer fires."""
        has_quorum = view.live_count >= view.quorum
        if self.is_leader:
            if has_quorum:
                return
            self.is_leader = False
            self._suspended_term = self.leader_term
            self._set_leader(None)
        elif self.leader_id is None and has_quorum and self._suspended_term == self.leader_term:
            self._resume(view)
            return
        elif self.leader_id is not None:
            if view.is_live(self.leader_id) and self.leader_id != self.worker_id:
                return
            self._set_leader(None)
        campaign = self._campaign
        if campaign is not None and now >= campaign.deadline:
            self._campaign = None
            self._next_campaign_at = now + self._rng.uniform(0.0, self.settings.election_timeout)
        if self._campaign is None and has_quorum and now >= self._next_campaign_at and self._is_best(view):
            self._start_campaign(now, view)

    def next_deadline(self, now: float) -> float:
        """When a campaign times out or may start; view changes re-evaluate anyway."""
        if self.leader_id is not None:
            return float("inf")
        if self._campaign is not None:
            return self._campaign.deadline
        return self._next_campaign_at if self._next_campaign_at > now else float("inf")

    def _is_best(self, view: Membership) -> bool:
        version, best = self._best_cache
        if version != view.version:
            # No live member ranks above mine: the first live one in candidate order does not.
            first = next((e for e in in_candidate_order(view) if e.is_live), None)
            best = first is None or candidate_key(first) >= candidate_key(view.me)
            self._best_cache = (view.version, best)
        return best

    def _start_campaign(self, now: float, view: Membership) -> None:
        term = max(self.highest_term, self.leader_term, self.voted_term) + 1
        self.highest_term = term
        self.campaigns += 1
        self.voted_term, self.voted_for = term, self.worker_id
        self._campaign = _Campaign(term, now + self.settings.election_timeout, {self.worker_id: None})
        if len(self._campaign.votes) >= view.quorum:
            self._win(view)
            return
        request = VoteRequest(self.worker_id, term)
        for entry in view.members.values():
            if entry.is_live and entry.worker_id != self.worker_id:
                self._out.send(entry.endpoint, request)

    def _win(self, view: Membership) -> None:
        assert self._campaign is not None
        self.leader_term = self._campaign.term
        self._campaign = None
        self._resume(view)

    def _resume(self, view: Membership) -> None:
        """Lead ``leader_term``: just won, or won earlier and the quorum is back.

        Taking back a paused term is safe: this node won it, so no other node can lead
        it, and any higher term would have replaced ``leader_term`` already.
        """
        self.is_leader = True
        self._suspended_term = -1
        self._set_leader(self.worker_id)
        announcement = Leader(self.worker_id, self.leader_term)
        for entry in view.members.values():
            if entry.is_live and entry.worker_id != self.worker_id:
                self._out.send(entry.endpoint, announcement)

    def _set_leader(self, leader_id: str | None) -> None:
        if leader_id != self.leader_id:
            self.leader_id = leader_id
            self._out.emit(LeaderChanged(leader_id, self.leader_term))

    # -- messages ---------------------------------------------------------------

    def on_vote_request(self, message: VoteRequest, now: float, view: Membership) -> None:
        self.highest_term = max(self.highest_term, message.term)
        candidate = view.get(message.sender)
        if candidate is None:
            return  # we cannot even reply; it will retry once gossip has introduced it
        granted = self._may_grant(message, now, view, candidate)
        if granted:
            self.voted_term, self.voted_for = message.term, message.sender
        self._out.send(candidate.endpoint, Vote(self.worker_id, message.term, granted))

    def _may_grant(self, message: VoteRequest, now: float, view: Membership, candidate: MemberEntry) -> bool:
        if message.term <= self.leader_term or now < self.abstain_until or not candidate.is_live:
            return False
        if message.term < self.voted_term or (message.term == self.voted_term and self.voted_for != message.sender):
            return False
        if self.is_leader or (self.leader_id not in (None, message.sender) and _is_alive(view, self.leader_id)):
            return False
        # No ALIVE member ranks above the candidate: the first ALIVE one in candidate order does not.
        first = next((e for e in in_candidate_order(view) if e.status == Status.ALIVE), None)
        return first is None or candidate_key(first) >= candidate_key(candidate)

    def on_vote(self, message: Vote, view: Membership) -> None:
        self.highest_term = max(self.highest_term, message.term)
        campaign = self._campaign
        if campaign is None or message.term != campaign.term or not message.granted:
            return
        campaign.votes[message.sender] = None
        if len(campaign.votes) >= view.quorum:
            self._win(view)

    def on_leader_silent(self, sender: str, term: int) -> None:
        """``sender``, our leader, gossiped at ``term`` that it does not lead: stop following it.

        Gossip from an older term was sent before the sender won (and overtaken by its
        announcement on the way): it says nothing about the current term.
        """
        if sender == self.leader_id and not self.is_leader and term >= self.leader_term:
            self._denied = (self.leader_term, sender)
            self._set_leader(None)

    def on_leader_claim(self, term: int, leader_id: str, view: Membership, *, first_hand: bool) -> None:
        """Follow ``leader_id`` if it claims a newer term (from ``Leader`` or gossip).

        ``first_hand`` marks a claim sent by the claimed leader itself. A claim the
        leader itself disowned (it restarted and forgot its term, or paused) is re-adopted
        only first-hand, so hearsay cannot revive it.
        """
        self.highest_term = max(self.highest_term, term)
        if term == self.leader_term and leader_id and leader_id == self.leader_id:
            return  # the belief we hold already (every probe message repeats it)
        if not leader_id or (leader_id != self.worker_id and not view.is_live(leader_id)):
            # A newer term whose leader we do not see: we cannot follow it, but a leader
            # of an older term now knows it is stale and steps down (it campaigns above
            # ``highest_term`` if it is the best candidate).
            if self.is_leader and term > self.leader_term:
                self.is_leader = False
                self.leader_term = term
                self._set_leader(None)
            return
        if term > self.leader_term:
            self.leader_term = term
            if self._campaign is not None and self._campaign.term <= term:
                self._campaign = None
            self.is_leader = False
            # A claim that *we* lead a term we do not hold comes from a past life of this
            # worker (it crashed and restarted): treat the term as leaderless.
            mine = leader_id == self.worker_id
            self._set_leader(None if mine else leader_id)
        elif (
            (first_hand or (term, leader_id) != self._denied)
            and term == self.leader_term
            and self.leader_id is None
            and not self.is_leader
            and leader_id != self.worker_id
        ):
            self._set_leader(leader_id)


def _is_alive(view: Membership, worker_id: str) -> bool:
    entry = view.get(worker_id)
    return entry is not None and entry.status == Status.ALIVE
