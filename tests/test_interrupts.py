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


@pytest.mark.parametrize(("call", "absent", "says"), [
    ("barrier", None, "is still waiting at barrier 'never' after {} s for worker-1 (rank 1)"),
    ("agree", None, "is still waiting at agreement 'never' after {} s for worker-1 (rank 1)"),
    ("register", 0, "is still joining the cluster through tcp://127.0.0.1:"),
])
def test_a_long_wait_says_whom_it_waits_for_at_a_bounded_rate(call, absent, says):
    """First line after 1 s, then one every 2 s (the defaults are 10 s and 30 s)."""
    with Cluster(2, ["--call", call, "--still-waiting", "1,2"], module="tests.workers.blocked_worker") as cluster:
        if absent is not None:
            cluster.workers[absent].stop()
        blocked = cluster.workers[1 if absent == 0 else 0]
        cluster.wait(lambda: blocked.events("blocking"), 30, "blocking")
        began = time.monotonic()

        def lines() -> list[str]:
            return [line for line in list(blocked.stderr) if "still" in line and "dtruntime.wait" in line]

        cluster.wait(lambda: len(lines()) >= 3, 30, "three still-waiting lines")
        elapsed = time.monotonic() - began
        found = lines()
        assert all(says.split("{}")[0] in line for line in found), found
        if "{}" in says:  # the leader's answer to a re-sent arrival names the absent
            assert says.split("{}")[1] in found[-1], found
        assert len(found) <= 2 + elapsed / 2, (elapsed, found)  # never more often than every 2 s
