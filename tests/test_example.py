"""The torchrun example end to end, and its resume after the whole job is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from dtruntime import CheckpointManager

from .cluster import ROOT, free_port

EXAMPLE = str(ROOT / "examples" / "train_ddp.py")


def descendants(pid: int) -> list[int]:
    """Pids of every process below ``pid``, from /proc (torchrun gives workers their own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(job: subprocess.Popen) -> None:
    """SIGKILL the torchrun process we started and every worker it started, then reap them."""
    pids = descendants(job.pid)
    for pid in [job.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    job.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def torchrun(args: list[str], launcher: tuple[str, ...] = (), **popen: object) -> subprocess.Popen:
    """torchrun with 4 workers of the example; ``launcher`` adds torchrun's own options."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
               "--master-port", str(free_port(span=2)), *launcher, EXAMPLE, *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def test_torchrun_four_workers_complete_the_example(tmp_path):
    job = torchrun(["--epochs", "2", "--checkpoint-dir", str(tmp_path / "ckpt")])
    output, _ = job.communicate(timeout=240)
    assert job.returncode == 0, output[-3000:]
    assert "training complete: 2 epochs on 4 workers" in output
    assert "members 4" in output and "leader worker-0" in output
    with CheckpointManager(str(tmp_path / "ckpt")) as checkpoints:
        steps = checkpoints.list_checkpoints_sync()
        assert len(steps) == 2
        assert checkpoints.load_state()["epoch"] == 1


def test_killed_job_resumes_from_the_newest_committed_checkpoint(tmp_path):
    directory = str(tmp_path / "ckpt")
    args = ["--epochs", "5", "--checkpoint-dir", directory, "--epoch-pause", "1.5"]
    job = torchrun(args)
    try:
        deadline = time.monotonic() + 180
        with CheckpointManager(directory) as checkpoints:
            while time.monotonic() < deadline and len(checkpoints.list_checkpoints_sync()) < 2:
                assert job.poll() is None, job.stdout.read()[-3000:] if job.stdout else ""
                time.sleep(0.2)
            committed = checkpoints.list_checkpoints_sync()
        assert len(committed) >= 2, "the job did not commit two checkpoints in time"
    finally:
        kill_tree(job)
        job.stdout.close()
    with CheckpointManager(directory) as checkpoints:
        newest = checkpoints.load_state()
    assert newest["epoch"] >= 1
    rerun = torchrun(["--epochs", "5", "--checkpoint-dir", directory])
    output, _ = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, output[-3000:]
    assert f"resumed from epoch {newest['epoch']}" in output
    assert "training complete: 5 epochs on 4 workers" in output
    assert f"epoch {newest['epoch']}:" not in output  # finished epochs are not trained again
