"""SignalWatch hears a signal from its own thread and gives the wakeup fd back."""

from __future__ import annotations

import os
import signal
import socket
import threading

from dtruntime.control.signal_watch import SignalWatch


def test_the_watch_calls_back_from_its_own_thread_forwards_other_bytes_and_restores_the_wakeup_fd():
    heard: list[str] = []
    called = threading.Event()

    def on_signal() -> None:
        heard.append(threading.current_thread().name)
        called.set()

    earlier_reader, earlier_writer = socket.socketpair()
    earlier_writer.setblocking(False)
    earlier_fd = earlier_writer.fileno()
    before = signal.set_wakeup_fd(earlier_writer.fileno())
    previous_handler = signal.signal(signal.SIGUSR2, lambda *_: None)
    watch = SignalWatch(signal.SIGUSR2, on_signal)
    try:
        assert watch.start()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert called.wait(5.0)
        assert heard == ["dtruntime-signal-watch"]
        earlier_reader.settimeout(5.0)
        assert earlier_reader.recv(16) == bytes([signal.SIGUSR2])  # the earlier wakeup fd still hears it
    finally:
        watch.close()
        signal.signal(signal.SIGUSR2, previous_handler)
        restored = signal.set_wakeup_fd(before)
        earlier_reader.close()
        earlier_writer.close()
    assert restored == earlier_fd  # close() put the earlier wakeup fd back


def test_the_watch_does_not_start_outside_the_main_thread():
    started: list[bool] = []
    thread = threading.Thread(target=lambda: started.append(SignalWatch(signal.SIGUSR2, lambda: None).start()))
    thread.start()
    thread.join(5.0)
    assert started == [False]
