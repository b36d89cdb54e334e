"""SIGTERM starts a coordinated stop: every rank checkpoints the same step, then exits 0.

Slurm, Kubernetes and torchrun (when it is stopped itself) send SIGTERM, to one rank or
to all, with a grace period before SIGKILL. The handler is installed when the
orchestrator registers from the main thread, unless ``[preemption] sigterm =
"default"``. It coordinates only a job that trains with step boundaries: when no
worker has published a step yet (a script that never calls ``step_boundary``, or
one still starting), the previous disposition is restored and the signal delivered
again, so such a SIGTERM ends the process as it would without dtruntime.

On SIGTERM the handler only records the time and starts a daemon thread (it may run
while the main thread holds the driver's lock, so it never calls the driver itself),
which submits a ``stop`` unless one is already pending here (every rank receiving
SIGTERM would otherwise add its own; several are harmless, each has a valid step) and
starts the grace timer: it ends the process with exit code 1 after ``grace_s`` if the
stop has not ended it by then, logging why; the previous committed checkpoint stays
loadable, as only a committed manifest makes a step. A Python-level handler installed
before (not ``SIG_DFL``/``SIG_IGN``) is called after ours; a second SIGTERM restores the
previous disposition and hands it the signal, so "stop now" still works.

``sigterm = "leave"`` (what ``auto`` means under a per-host launcher): a daemon thread
closes the orchestrator, which finishes its checkpoint managers' pending saves and
announces a clean leave, so the other hosts' workers go on without this one at once (a
clean leave also shrinks the voting world: half a job keeps its quorum); then the
process exits 143 (128 + SIGTERM, what a shell reports for a SIGTERMed process). The
signal is heard through :class:`~.signal_watch.SignalWatch`, so the leave starts at
once even while the main thread waits inside a gloo collective. A Python-level
handler installed before ours is called from the main thread as usual and the
process is left to it after the leave. A leave that outlasts ``grace_s`` ends the
process with exit code 1 all the same.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .commands import RunControl
from .signal_watch import SignalWatch

log = logging.getLogger("dtruntime.preemption")

GRACE_EXPIRED_EXIT = 1
LEFT_EXIT = 128 + signal.SIGTERM


class Preemption:
    """The SIGTERM handler of one orchestrator (at most one installed per process)."""

    _installed: "Preemption | None" = None

    def __init__(self, control: RunControl, mode: str, grace_s: float, leave: Callable[[], None]) -> None:
        """``mode`` is ``stop``, ``leave`` or ``default`` (``auto`` resolved already);
        ``leave`` closes the orchestrator (used in ``leave`` mode)."""
        self._control = control
        self._mode = mode
        self._leave = leave
        self.grace_s = grace_s
        self._previous: Any = None
        self.received_at: float | None = None
        self._passthrough = False  # SIGTERM came before training: the previous disposition handles it
        self._leaving = threading.Lock()  # held once the leave started (it starts once)
        self._left = threading.Event()  # the leave finished: the grace timer has nothing to end
        self._watch = SignalWatch(signal.SIGTERM, self._begin_leave) if mode == "leave" else None

    def arm(self) -> None:
        """Install the handler once, from the main thread only (elsewhere it cannot be)."""
        if (self._mode not in ("stop", "leave") or Preemption._installed is not None
                or threading.current_thread() is not threading.main_thread()):
            return
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        Preemption._installed = self
        if self._watch is not None:
            self._watch.start()

    def disarm(self) -> None:
        """Restore the previous handler (when the orchestrator closes)."""
        if Preemption._installed is self and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            Preemption._installed = None
            if self._watch is not None:
                self._watch.close()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        previous = self._previous
        if self._mode == "leave":
            self._begin_leave()  # usually begun already, by the signal watch
            if callable(previous):
                previous(signum, frame)
            return
        if self.received_at is not None:  # again (or re-sent by _start_stop): stop coordinating
            if not self._passthrough:
                log.warning("second SIGTERM: exiting without waiting for the coordinated checkpoint")
            self.disarm()
            if callable(previous) and not self._passthrough:
                previous(signum, frame)
            elif previous in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signal.SIGTERM)  # the default action now: the process ends
            return
        self.received_at = time.monotonic()
        threading.Thread(target=self._start_stop, name="dtruntime-preemption", daemon=True).start()
        if callable(previous):
            previous(signum, frame)

    def _start_stop(self) -> None:
        control = self._control
        if not control.training():
            log.warning("SIGTERM before any worker reached a step boundary: handled as without dtruntime")
            self._passthrough = True
            if self._previous in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signal.SIGTERM)  # back in the main thread's handler: the default
            return
        control.stop_deadline = self.received_at + self.grace_s
        log.warning("SIGTERM: preemption; every rank checkpoints the same step, then exits 0 (grace %.0f s)",
                    self.grace_s)
        threading.Thread(target=self._grace_timer, name="dtruntime-grace", daemon=True).start()
        if control.pending_stop():
            return
        try:
            control.submit("stop", {"reason": "SIGTERM"})
        except Exception as exc:  # noqa: BLE001 - the grace timer still ends the process
            log.error("SIGTERM: could not start a coordinated stop: %s", exc)

    def _begin_leave(self) -> None:
        """Start the leave (from the signal watch's thread or the handler), once."""
        if not self._leaving.acquire(blocking=False):
            return
        self.received_at = time.monotonic()
        threading.Thread(target=self._leave_then_end, name="dtruntime-preemption", daemon=True).start()

    def _leave_then_end(self) -> None:
        log.warning("SIGTERM: this worker leaves the job (the other workers go on without it), then exits %d",
                    LEFT_EXIT)
        threading.Thread(target=self._grace_timer, name="dtruntime-grace", daemon=True).start()
        try:
            self._leave()
        except Exception:  # noqa: BLE001 - the peers' failure detector covers a failed leave
            log.exception("SIGTERM: leaving the job failed; ending anyway")
        self._left.set()
        if not callable(self._previous):  # otherwise the process is the earlier handler's to end
            _exit_now(LEFT_EXIT)

    def _grace_timer(self) -> None:
        if self._left.wait(self.grace_s):
            return
        what = "the leave finished" if self._mode == "leave" else "the stop's checkpoint was committed"
        log.error("preemption: the grace period of %.0f s ran out before %s; exiting %d (the previous committed "
                  "checkpoint stays loadable)", self.grace_s, what, GRACE_EXPIRED_EXIT)
        _exit_now(GRACE_EXPIRED_EXIT)


def _exit_now(code: int) -> None:
    """End the process from any thread, logs and standard streams flushed first."""
    for handler in logging.getLogger().handlers + logging.getLogger("dtruntime").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
    os._exit(code)
