"""Run control: ``checkpoint-now``, ``stop`` and ``log-level``, acted on at step boundaries.

    orch.run_control.submit("checkpoint-now")          # from any rank (or the HTTP API)
    for step in range(start, steps):
        train_one_step()
        orch.step_boundary(step, save=lambda s: manager.save(state(), s))

A command is broadcast through the control plane (:mod:`dtruntime.protocol.commands`)
and acted on at the next step boundary of every rank: :meth:`TrainingOrchestrator.step_boundary`
in a plain loop, or ``ElasticTrainer`` (which calls it after every applied step).

* ``checkpoint-now``: every rank saves the same step, the target the leader decided
  (the largest step any rank had published when it heard the command, plus one);
  ``save(step)`` is the caller's (typically ``CheckpointManager.save`` with the
  orchestrator attached, so the leader commits the step). A rank is ``done`` once its
  save's handle completes (the step is committed), ``failed`` if it raised.
* ``stop``: the same coordinated checkpoint, then the boundary raises
  :class:`~dtruntime.errors.RunStopped` (a ``SystemExit``) with code 0 once the step
  is committed, 1 if it is not committed within ``[preemption] grace_s``. SIGTERM
  starts one (:mod:`.preemption`).
* ``log-level`` ``{"level": "DEBUG"|"INFO"|"WARNING"|"ERROR"}``: sets the ``dtruntime``
  and root loggers' level at each rank's next boundary.

Invariants: a rank acts on each command at most once; it does not pass boundary
``s + 1`` (``s`` = the step its node acked) before it knows the target, and waits at
most ``target_wait_s`` (then the command is ``failed`` for it). A rank already past
the target when it learns it (it published its first step after acking) marks the
command ``failed``, never saves another step under its name. Locks: the event handler
runs in the driver thread under the driver's lock and takes this object's lock; so
this object never calls into the driver while holding its own lock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..errors import DtruntimeError, InvalidCommandArgs, RunStopped, UnknownCommand
from ..protocol.commands import DONE, FAILED, PENDING, RUNNING, STATE_NAMES, STEP_KEY
from ..protocol.events import CommandUpdate
from ..protocol.messages import CommandEntry
from .host import ControlHost


log = logging.getLogger("dtruntime.control")

COMMANDS = {"checkpoint-now": True, "stop": True, "log-level": False}  # name -> every rank acts at one step
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
Save = Callable[[int], Any]


def validate(name: str, args: dict | None) -> dict:
    """The command's arguments, checked; raises UnknownCommand / InvalidCommandArgs."""
    if name not in COMMANDS:
        raise UnknownCommand(f"unknown command {name!r} (known: {', '.join(COMMANDS)})")
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise InvalidCommandArgs(f"{name}: args must be a JSON object, not {type(args).__name__}")
    allowed = {"log-level": {"level"}, "stop": {"reason"}, "checkpoint-now": {"reason"}}[name]
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise InvalidCommandArgs(f"{name}: unknown argument {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    if name == "log-level" and args.get("level") not in LEVELS:
        raise InvalidCommandArgs(f"log-level: args.level must be one of {', '.join(LEVELS)}, not {args.get('level')!r}")
    if "reason" in args and (not isinstance(args["reason"], str) or len(args["reason"]) > 200):
        raise InvalidCommandArgs(f"{name}: args.reason must be a string of at most 200 characters")
    text = json.dumps(args, sort_keys=True, ensure_ascii=True)
    if len(text) > 1024:
        raise InvalidCommandArgs(f"{name}: args take more than 1024 characters as JSON")
    return args


class RunControl:
    """Commands of one orchestrator: submit, watch (:meth:`tasks`) and act on them."""

    def __init__(self, orchestrator: ControlHost) -> None:
        self._orch = orchestrator
        self._cond = threading.Condition()
        self._known: OrderedDict[str, CommandUpdate] = OrderedDict()  # latest news per command
        # Commands this rank acted on (or failed); never pruned (one id per command ever
        # seen), so a forgotten command heard again is never acted on twice.
        self._acted: set[str] = set()
        self._seq = 0
        period = orchestrator.config.coordinator.heartbeat_interval_ms / 1000
        # A target comes within a round trip unless the leader dies: then detection plus an election.
        self.target_wait_s = orchestrator.config.coordinator.heartbeat_timeout_ms / 1000 + 20 * period
        self.grace_s = float(orchestrator.config.preemption.grace_s)
        self.stop_deadline: float | None = None  # set by a SIGTERM: the grace period's end (monotonic)

    # -- the contract ---------------------------------------------------------------

    def submit(self, name: str, args: dict | None = None) -> str:
        """Broadcast a command through the control plane; returns its task id.

        ``name`` in ``checkpoint-now``, ``stop``, ``log-level``; raises UnknownCommand for
        another name, InvalidCommandArgs for bad args (``log-level`` needs ``{"level":
        "DEBUG"|"INFO"|"WARNING"|"ERROR"}``). Needs a registered orchestrator.
        """
        args = validate(name, args)
        with self._cond:
            self._seq += 1
            seq = self._seq
        now_ms = time.time_ns() // 1_000_000
        command_id = f"{now_ms}-{self._orch.rank}-{seq}"  # [0-9-] only: safe in URLs and paths
        entry = CommandEntry(command_id, name, json.dumps(args, sort_keys=True), self._orch.worker_id, now_ms,
                             COMMANDS[name])
        self._orch._running().submit(lambda node, now: node.submit_command(entry, now)).result(10)
        log.info("command %s %s submitted (%s)", name, command_id, args or "no args")
        return command_id

    def cancel(self, task_id: str) -> bool:
        """Cancel a command no rank has started: True if the cancel was sent, False if the
        command is unknown here or some rank is already running it (or done). Best effort:
        a rank that acts before the cancel reaches it still acts (``tasks()`` shows that)."""
        with self._cond:
            update = self._known.get(task_id)
            started = update is None or any(s.state != PENDING for s in update.states)
        if started:
            return False
        self._orch._running().submit(lambda node, now: node.cancel_command(task_id, now)).result(10)
        log.info("command %s cancelled", task_id)
        return True

    def tasks(self) -> list[dict]:
        """Every command this worker knows, oldest first: ``{"id", "name", "args",
        "submitted_by", "submitted_at" (unix s), "step" (the agreed step or None),
        "state_by_rank": {"0": "pending"|"running"|"done"|"failed", ...}, "cancelled"}``;
        live ranks not heard from yet are ``pending``; a rank that skipped a cancelled
        command shows ``failed``."""
        driver = self._orch._driver
        ranks = [m.rank for m in driver.snapshot.members] if driver is not None else []
        with self._cond:
            known = list(self._known.values())
        out = []
        for update in known:
            entry = update.entry
            states = {str(rank): "pending" for rank in ranks}
            states.update({str(s.rank): STATE_NAMES[s.state] for s in update.states})
            out.append({
                "id": entry.command_id, "name": entry.name, "args": json.loads(entry.args or "{}"),
                "submitted_by": entry.submitted_by, "submitted_at": entry.submitted_at_ms / 1000,
                "step": entry.target or None, "state_by_rank": dict(sorted(states.items(), key=lambda kv: int(kv[0]))),
                "cancelled": entry.cancelled,
            })
        return out

    # -- driver side ------------------------------------------------------------------

    def on_event(self, event: CommandUpdate) -> None:
        """Runs in the driver thread: remember the news, wake a boundary waiting for a target."""
        with self._cond:
            self._known[event.entry.command_id] = event
            self._known.move_to_end(event.entry.command_id)
            while len(self._known) > 64:
                self._known.popitem(last=False)
            self._cond.notify_all()

    def training(self) -> bool:
        """Whether any worker (this one included) has published a step: the job trains
        with step boundaries, so a stop will be acted on."""
        try:
            return bool(self._orch.progress(STEP_KEY))
        except DtruntimeError:
            return False

    def pending_stop(self) -> bool:
        """Whether a ``stop`` this rank has not acted on yet is known here."""
        with self._cond:
            return any(u.entry.name == "stop" and u.entry.command_id not in self._acted for u in self._known.values())

    # -- the step boundary ----------------------------------------------------------------

    def step_boundary(self, step: int, save: Save | None = None) -> None:
        """Publish ``step`` and act on the commands due at it (see the module doc)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise DtruntimeError(f"step_boundary: step must be an integer >= 0, not {step!r}")
        self._orch.set_progress(STEP_KEY, step)
        due, failed = self._due(step)
        for command_id, why in failed:
            (log.warning if why.startswith("cancelled") else log.error)("command %s failed on this rank: %s",
                                                                         command_id, why)
            self._set_state(command_id, FAILED)
        if due:
            self._act(step, due, save)

    def _due(self, step: int) -> tuple[list[CommandEntry], list[tuple[str, str]]]:
        """(commands to act on now, (command, why) failed here); waits for a target if needed."""
        deadline = time.monotonic() + self.target_wait_s
        with self._cond:
            while True:
                waiting = [u for u in self._known.values() if u.entry.command_id not in self._acted
                           and u.entry.agree_step and not u.entry.target and not u.entry.cancelled
                           and u.acked_step is not None and step >= u.acked_step + 1]
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    break
                self._cond.wait(min(left, 0.2))  # short slices: Ctrl-C stays prompt
            due, failed = [], []
            for update in self._known.values():
                entry = update.entry
                if entry.command_id in self._acted:
                    continue
                if entry.cancelled:
                    failed.append((entry.command_id, "cancelled before this rank acted"))
                elif update in waiting:
                    failed.append((entry.command_id, f"no step agreed within {self.target_wait_s:.0f} s"))
                elif not entry.agree_step or (entry.target and entry.target == step):
                    due.append(entry)
                elif entry.target and entry.target < step:
                    failed.append((entry.command_id, f"this rank was at step {step}, past the agreed {entry.target}"))
                else:
                    continue
                self._acted.add(entry.command_id)
            return due, failed

    def _act(self, step: int, due: list[CommandEntry], save: Save | None) -> None:
        for entry in due:
            if entry.name == "log-level":
                level = json.loads(entry.args)["level"]
                logging.getLogger().setLevel(level)
                logging.getLogger("dtruntime").setLevel(level)
                log.warning("command %s: log level set to %s", entry.command_id, level)
                self._set_state(entry.command_id, DONE)
        saving = [e for e in due if e.name in ("checkpoint-now", "stop")]
        if not saving:
            return
        stops = [e for e in saving if e.name == "stop"]
        for entry in saving:
            self._set_state(entry.command_id, RUNNING)
        if save is None:
            for entry in saving:
                if entry.name == "checkpoint-now":
                    log.error("command %s: no save= given to step_boundary; no checkpoint of step %d",
                              entry.command_id, step)
            self._finish([e for e in saving if e.name == "checkpoint-now"], FAILED)
            self._finish(stops, DONE)
            if stops:
                self._exit(0, f"stop at step {step} without a checkpoint (no save= given to step_boundary)", step)
            return
        try:
            handle = save(step)
        except Exception as exc:  # noqa: BLE001 - reported as the command's failure
            log.error("commands %s: saving step %d failed: %s", [e.command_id for e in saving], step, exc)
            self._finish(saving, FAILED)
            if stops:
                self._exit(1, f"stop at step {step}: the checkpoint could not be written ({exc})", step)
            return
        if not stops:
            threading.Thread(target=self._await_commit, args=(handle, step, saving, None), daemon=True,
                             name="dtruntime-checkpoint-now").start()
            return
        if self._await_commit(handle, step, saving, self._stop_timeout()):
            self._exit(0, f"stop: checkpoint step {step} committed on every rank; exiting 0", step)
        self._exit(1, f"stop: checkpoint step {step} was not committed in time; exiting 1 "
                      "(the previous committed checkpoint stays loadable)", step)

    def _stop_timeout(self) -> float:
        if self.stop_deadline is not None:
            return max(0.0, self.stop_deadline - time.monotonic())
        return self.grace_s

    def _await_commit(self, handle: Any, step: int, entries: list[CommandEntry], timeout: float | None) -> bool:
        """Wait for the save's handle (an object with ``result(timeout)``, or None for a
        save done on return); mark ``entries`` done or failed."""
        try:
            if handle is not None and hasattr(handle, "result"):
                handle.result(timeout)
        except Exception as exc:  # noqa: BLE001 - a CheckpointError, or the wait ran out
            log.error("checkpoint step %d of %s was not committed: %s", step, [e.command_id for e in entries],
                      exc or type(exc).__name__)
            self._finish(entries, FAILED)
            return False
        log.warning("checkpoint step %d committed (%s)", step, ", ".join(f"{e.name} {e.command_id}" for e in entries))
        self._finish(entries, DONE)
        return True

    def _finish(self, entries: list[CommandEntry], state: int) -> None:
        for entry in entries:
            self._set_state(entry.command_id, state)

    def _set_state(self, command_id: str, state: int) -> None:
        driver = self._orch._driver
        if driver is None:
            return
        try:
            driver.submit(lambda node, now: node.set_command_state(command_id, state, now)).result(5)
        except Exception as exc:  # noqa: BLE001 - a forgotten command or a closed driver: the state is lost
            log.debug("could not publish state %s of %s: %s", STATE_NAMES[state], command_id, exc)

    def _exit(self, code: int, message: str, step: int) -> None:
        (log.warning if code == 0 else log.error)("%s", message)
        if self._orch._driver is not None:  # let the final states go out before the process ends
            time.sleep(min(0.5, self._orch.config.coordinator.heartbeat_interval_ms / 1000))
        raise RunStopped(code, message, step)


__all__ = ["COMMANDS", "LEVELS", "PENDING", "RunControl", "validate"]
