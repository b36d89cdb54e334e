"""torchrun's own restarts (``--max-restarts``) with dtruntime in every worker.

A worker is ``kill -9``'ed after the first checkpoint; torchrun kills the others and
starts a new attempt, which must initialise its process group (on its own store keys:
see ``dtruntime.elastic.process_group``), rejoin the control plane and resume from the
newest committed checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from dtruntime import CheckpointManager

from .test_example import descendants, kill_tree, torchrun

EPOCHS = 4


def worker_pid(job: subprocess.Popen, rank: int, attempt: int) -> int | None:
    """The pid of torchrun worker ``rank`` in restart attempt ``attempt``, read from /proc."""
    wanted = {f"RANK={rank}", f"TORCHELASTIC_RESTART_COUNT={attempt}"}
    for pid in descendants(job.pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                variables = set(environ.read().decode(errors="replace").split("\0"))
        except OSError:
            continue
        if wanted <= variables:
            return pid
    return None


def committed_epochs(directory: str) -> list[int]:
    with CheckpointManager(directory) as checkpoints:
        steps = checkpoints.list_checkpoints_sync()
        return [checkpoints.load_state(step)["epoch"] for step in steps]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0], ids=["rank-1", "rank-0-the-leader"])
def test_torchrun_restart_after_a_kill_resumes_from_the_newest_committed_checkpoint(tmp_path, victim):
    directory = str(tmp_path / "ckpt")
    job = torchrun(["--epochs", str(EPOCHS), "--checkpoint-dir", directory, "--epoch-pause", "1.0"],
                   launcher=("--max-restarts", "2"))
    try:
        deadline = time.monotonic() + 180
        while not (os.path.isdir(directory) and committed_epochs(directory)):
            assert job.poll() is None and time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.1)
        pid = worker_pid(job, victim, attempt=0)
        assert pid is not None, "the victim worker was not found"
        before = committed_epochs(directory)
        os.kill(pid, signal.SIGKILL)
        output, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            kill_tree(job)
    assert job.returncode == 0, output[-4000:]
    assert "failed (exitcode: -9)" in output, "torchrun did not see the kill"
    assert f"training complete: {EPOCHS} epochs on 4 workers" in output
    resumed = [int(epoch) for epoch in re.findall(r"resumed from epoch (\d+)", output)]
    assert len(resumed) == 1 and resumed[0] >= max(before), (resumed, before)
    for epoch in range(EPOCHS):
        assert output.count(f"epoch {epoch}:") <= 1, f"epoch {epoch} was trained twice"
    assert committed_epochs(directory)[-1] == EPOCHS - 1
