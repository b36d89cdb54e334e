"""Ctrl-C (SIGINT) interrupts a blocking sync call in a real process's main thread (issue 11, item 3).

The signal is sent half a second after the worker says it is about to block, so it
lands inside the call; had it landed before, the worker would still report the
interrupt, so the pause cannot hide a failure.
"""

from __future__ import annotations

import signal
import time

import pytest

from .cluster import Cluster


@pytest.mark.parametrize(("call", "absent"), [("register", 0), ("barrier", None), ("agree", None)])
def test_sigint_interrupts_a_blocking_sync_call_promptly(call, absent):
    with Cluster(2, ["--call", call], module="tests.workers.blocked_worker") as cluster:
        if absent is not None:
            cluster.workers[absent].stop()  # rank 1 registers with a coordinator that never comes
        blocked = cluster.workers[1 if absent == 0 else 0]
        cluster.wait(lambda: blocked.events("blocking"), 30, "blocking")
        time.sleep(0.5)  # inside the blocking call
        sent = time.monotonic()
        blocked.signal(signal.SIGINT)
        cluster.wait(lambda: blocked.process.poll() is not None, 5, "exit after SIGINT")
        elapsed = time.monotonic() - sent
        cluster.wait(lambda: blocked.events("interrupted"), 5, "the KeyboardInterrupt report")
        print(f"{call}: SIGINT to exit {elapsed:.2f}s")
        assert elapsed < 5  # measured 0.06-0.6 s; the bound leaves room for a loaded CI machine
