"""Learn of a signal at once, even while the main thread is inside a C++ call.

Python runs a signal's handler in the main thread, between bytecodes, so a process
whose main thread waits in a gloo collective hears of SIGTERM only when the collective
returns (seconds, when a peer died inside it). The interpreter's C-level handler also
writes the signal's number to the *wakeup fd* (:func:`signal.set_wakeup_fd`) at once;
:class:`SignalWatch` points it at a socket pair and calls ``on_signal`` from a daemon
thread as soon as the byte for ``signum`` arrives.

Edge cases: there is one wakeup fd per process. A wakeup fd installed earlier (an
asyncio loop's signal handling) keeps receiving every byte, forwarded by the watcher,
and is put back by :meth:`close`; one installed later replaces ours, and the main
thread's handler is then the only path (still correct, only later). Installing and
closing must happen in the main thread; elsewhere :meth:`start` does nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("dtruntime.preemption")


class SignalWatch:
    """Calls ``on_signal()`` from its own thread when ``signum`` is delivered (once per delivery)."""

    def __init__(self, signum: int, on_signal: Callable[[], None]) -> None:
        self._signum = signum
        self._on_signal = on_signal
        self._pair: tuple[socket.socket, socket.socket] | None = None
        self._previous_fd = -1

    def start(self) -> bool:
        """Install the wakeup fd and the watcher thread; False where it cannot be (not the main thread)."""
        if self._pair is not None or threading.current_thread() is not threading.main_thread():
            return False
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        try:
            self._previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:
            log.debug("no wakeup fd for signal %d: %s", self._signum, exc)
            reader.close()
            writer.close()
            return False
        self._pair = (reader, writer)
        threading.Thread(target=self._watch, args=(reader, self._previous_fd), name="dtruntime-signal-watch",
                         daemon=True).start()
        return True

    def close(self) -> None:
        """Put the previous wakeup fd back (main thread only) and end the watcher."""
        pair, self._pair = self._pair, None
        if pair is None or threading.current_thread() is not threading.main_thread():
            return
        try:
            current = signal.set_wakeup_fd(self._previous_fd)
            if current != pair[1].fileno():  # replaced after us: the newer one stays
                signal.set_wakeup_fd(current)
        finally:
            pair[1].close()  # the watcher's recv returns b"" and it ends

    def _watch(self, reader: socket.socket, forward_fd: int) -> None:
        with reader:
            while True:
                try:
                    received = reader.recv(64)
                except OSError:
                    return
                if not received:
                    return
                if forward_fd >= 0:
                    try:
                        os.write(forward_fd, received)
                    except OSError:
                        pass  # its owner closed it: nothing to forward to
                for number in received:
                    if number == self._signum:
                        self._on_signal()
