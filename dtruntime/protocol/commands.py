"""Run-control commands: spread to every member, and (for some) one step agreed by all.

A command (:class:`~.messages.CommandEntry`) is submitted on any node. It travels twice:
straight to every live member at once (a ``Commands`` message, one hop) and as gossip
news (the reliable path: a member that missed the direct copy, or joined later, hears
it within a few probe periods). Per-rank states (:class:`~.messages.CommandState`:
pending < running < done | failed) travel the same ways; they only grow, so merging
is a maximum.

A command with ``agree_step`` is acted on by every rank at the same step, the
*target*, decided by the leader:

* A node holding the command acks it to the leader (``CommandAck``) with its last
  published step ``s`` (the progress counter :data:`STEP_KEY`; a node that has
  published none acks as soon as it publishes one). The ack is sent by the node, not
  by the training loop, so it goes out within a round trip even while the loop is
  inside a step (blocked in a collective, say). Re-sent every ``resend_periods`` and to
  every new leader until the target is known.
* The leader decides once every live member acked: target = ``max(s) + 1``. The
  decided entry is sent to every live member and gossiped.
* Local API rule (:mod:`dtruntime.control.commands`): a rank that acked step ``s``
  does not pass step boundary ``s + 1`` before it knows the target. Since a rank
  acking ``s`` is at boundary ``s`` or inside step ``s + 1``, and the target is above
  every acked step, every rank reaches the target step without having passed it; the
  wait at ``s + 1`` lasts one round trip to the leader, so ranks in lock step (DDP) do
  not deadlock on it.

A cancel (any node) sets ``cancelled`` on the entry, spread the same ways; a rank that
learns it before acting skips the command (a cancel is best effort: it does not undo a
save a rank already made).

Bounds: at most :data:`COMMAND_HISTORY` commands are remembered (the oldest first
forgotten, with its states and acks). A new leader is sent every entry each member
holds, so a target an earlier leader decided reaches it; a member that knows the
target does not ack, so the new leader cannot decide again before it heard that
decision (a member that learned nothing acks, and acts at whatever target comes).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from .membership import Membership
from .messages import CommandAck, CommandEntry, CommandState
from .news import take_news
from .settings import ProtocolSettings

COMMAND_HISTORY = 64
STEP_KEY = "dtruntime.step"  # the progress counter a training loop's step boundary publishes
PENDING, RUNNING, DONE, FAILED = 0, 1, 2, 3
STATE_NAMES = ("pending", "running", "done", "failed")


class CommandBook:
    """The commands this node knows, its acks, and (as leader) the acks it collected."""

    # Slotted: every node has one, and a simulation touches 10,000 of them in turn.
    __slots__ = ("worker_id", "settings", "entries", "states", "acked", "_acks", "_news", "_state_news",
                 "next_resend", "changed")

    def __init__(self, worker_id: str, settings: ProtocolSettings) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self.entries: OrderedDict[str, CommandEntry] = OrderedDict()
        self.states: dict[str, dict[str, CommandState]] = {}  # command -> worker -> state
        self.acked: dict[str, int] = {}  # command -> the step this node acked (undecided ones)
        self._acks: dict[str, dict[str, CommandAck]] = {}  # leader: command -> worker -> ack
        self._news: dict[str, list] = {}  # command -> [entry, times sent]
        self._state_news: dict[tuple[str, str], list] = {}  # (command, worker) -> [state, times sent]
        self.next_resend = float("inf")
        self.changed: dict[str, None] = {}  # commands whose entry or states changed; drained by the node

    # -- merging -------------------------------------------------------------------

    def learn(self, entry: CommandEntry) -> bool:
        """Merge ``entry`` (new, a decided target, a cancel); True if it changed anything here."""
        current = self.entries.get(entry.command_id)
        if current is not None:
            target, cancelled = max(entry.target, current.target), entry.cancelled or current.cancelled
            if (target, cancelled) == (current.target, current.cancelled):
                return False
            entry = replace(current, target=target, cancelled=cancelled)  # nothing else may change
        self.entries[entry.command_id] = entry
        self.states.setdefault(entry.command_id, {})
        while len(self.entries) > COMMAND_HISTORY:
            self._forget(next(iter(self.entries)))
        self._news[entry.command_id] = [entry, 0]
        self.changed[entry.command_id] = None
        if entry.target or entry.cancelled:
            self.acked.pop(entry.command_id, None)
            self._acks.pop(entry.command_id, None)
        return True

    def learn_state(self, state: CommandState) -> bool:
        """Merge one worker's state of a known command (the larger wins)."""
        states = self.states.get(state.command_id)
        if states is None or not 0 <= state.state <= FAILED:
            return False
        current = states.get(state.worker_id)
        if current is not None and state.state <= current.state:
            return False
        states[state.worker_id] = state
        self._state_news[(state.command_id, state.worker_id)] = [state, 0]
        self.changed[state.command_id] = None
        return True

    def _forget(self, command_id: str) -> None:
        self.entries.pop(command_id, None)
        for worker in self.states.pop(command_id, {}):
            self._state_news.pop((command_id, worker), None)
        self.acked.pop(command_id, None)
        self._acks.pop(command_id, None)
        self._news.pop(command_id, None)
        self.changed.pop(command_id, None)

    # -- acks ------------------------------------------------------------------------

    def undecided(self) -> list[CommandEntry]:
        return [e for e in self.entries.values() if e.agree_step and not e.target and not e.cancelled]

    def acks_due(self, own_step: int | None, now: float) -> list[CommandAck]:
        """Acks for undecided commands not acked yet (none before a step was published)."""
        if own_step is None:
            return []
        acks = []
        for entry in self.undecided():
            if entry.command_id not in self.acked:
                self.acked[entry.command_id] = own_step
                self.changed[entry.command_id] = None  # the local API must learn the acked step
                acks.append(CommandAck(self.worker_id, entry.command_id, own_step))
        if acks:
            self.next_resend = min(self.next_resend, now + self.settings.resend_periods * self.settings.probe_period)
        return acks

    def all_acks(self) -> list[CommandAck]:
        """This node's acks of every undecided command (for a re-send or a new leader)."""
        return [CommandAck(self.worker_id, command_id, step) for command_id, step in self.acked.items()]

    def resend_due(self, now: float) -> bool:
        if not self.acked:
            self.next_resend = float("inf")
            return False
        if now < self.next_resend:
            return False
        self.next_resend = now + self.settings.resend_periods * self.settings.probe_period
        return True

    def on_ack(self, ack: CommandAck) -> None:
        """Leader: record an ack of a known, undecided command."""
        entry = self.entries.get(ack.command_id)
        if entry is None or not entry.agree_step or entry.target or entry.cancelled:
            return
        self._acks.setdefault(ack.command_id, {})[ack.sender] = ack

    def decide(self, view: Membership) -> list[CommandEntry]:
        """Leader: the commands whose every live member acked, with their target set."""
        decided = []
        live = [entry.worker_id for entry in view.live_members()]
        for command_id, acks in list(self._acks.items()):
            if command_id not in self.entries or not all(worker in acks for worker in live):
                continue
            target = max(acks[worker].step for worker in live) + 1
            entry = replace(self.entries[command_id], target=target)
            if self.learn(entry):
                decided.append(entry)
        return decided

    def clear_leader_state(self) -> None:
        self._acks.clear()

    # -- gossip ----------------------------------------------------------------------

    def news(self, live_count: int) -> tuple[CommandEntry, ...]:
        if not self._news:  # the usual case, on every probe message
            return ()
        return tuple(take_news(self._news, self.settings.piggyback_max, live_count, self.settings))

    def state_news(self, live_count: int) -> tuple[CommandState, ...]:
        if not self._state_news:
            return ()
        return tuple(take_news(self._state_news, self.settings.piggyback_max, live_count, self.settings))

    def known_states(self, command_id: str) -> tuple[CommandState, ...]:
        return tuple(self.states.get(command_id, {}).values())
