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


def torchrun(args: list[str], launcher: tuple[str, ...] = (), nproc: int = 4, **popen: object) -> subprocess.Popen:
    """torchrun with ``nproc`` workers of the example; ``launcher`` adds torchrun's own options."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port(span=2)), *launcher, EXAMPLE, *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def test_torchrun_four_workers_complete_the_example(tmp_path):
    job = torchrun(["--epochs", "2", "--checkpoint-dir", str(tmp_path / "ckpt")])
    output, _ = job.communicate(timeout=240)
    assert job.returncode == 0, output[-3000:]
    assert "training complete: 2 epochs on 4 workers (epochs 0-1)" in output
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
    rerun = torchrun(["--epochs", "2", "--checkpoint-dir", directory])
    output, _ = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, output[-3000:]
    resumed = newest["epoch"]
    assert f"resumed from epoch {resumed}" in output
    assert f"training complete: 2 epochs on 4 workers (epochs {resumed + 1}-{resumed + 2})" in output
    assert f"epoch {resumed}:" not in output  # finished epochs are not trained again
    assert f"epoch {resumed + 1}:" in output and f"epoch {resumed + 2}:" in output


def test_running_the_example_again_trains_more_epochs_from_the_checkpoint(tmp_path):
    """Issue 10 item 13: a rerun resumed at the last epoch, trained nothing and said
    "training complete: 3 epochs". ``--epochs N`` is what each launch trains."""
    args = ["--epochs", "1", "--samples", "4000", "--checkpoint-dir", str(tmp_path / "ckpt")]
    outputs = []
    for _ in range(2):
        job = torchrun(args, nproc=2)
        output, _ = job.communicate(timeout=240)
        assert job.returncode == 0, output[-3000:]
        outputs.append(output)
    first, second = outputs
    assert "epoch 0:" in first and "training complete: 1 epoch on 2 workers (epoch 0)" in first
    assert "resumed from epoch 0" in second and "epoch 0:" not in second
    assert "epoch 1:" in second and "training complete: 1 epoch on 2 workers (epoch 1)" in second
    with CheckpointManager(str(tmp_path / "ckpt")) as checkpoints:
        assert [checkpoints.load_state(step)["epoch"] for step in checkpoints.list_checkpoints_sync()] == [0, 1]


ELASTIC_EXAMPLE = str(ROOT / "examples" / "train_elastic.py")


def test_the_elastic_example_finishes_every_epoch_after_a_worker_is_killed():
    """The README's elastic example, as plain processes: rank 2 is SIGKILLed mid-run."""
    coordinator = f"tcp://127.0.0.1:{free_port()}"
    base = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "4",
            "COORDINATOR_URL": coordinator, "DTRUNTIME_HEARTBEAT_INTERVAL_MS": "100",
            "DTRUNTIME_HEARTBEAT_TIMEOUT_MS": "1000"}
    workers = [subprocess.Popen([sys.executable, ELASTIC_EXAMPLE, "--epochs", "4"], cwd=ROOT,
                                env={**base, "RANK": str(rank)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for rank in range(4)]
    try:
        first_line = workers[0].stdout.readline()  # rank 0 prints after each epoch
        assert first_line.startswith("epoch 0:") and "4 workers" in first_line, first_line
        workers[2].kill()
        rest, _ = workers[0].communicate(timeout=180)
        for rank in (1, 3):
            workers[rank].communicate(timeout=60)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(timeout=30)
    assert [workers[rank].returncode for rank in (0, 1, 3)] == [0, 0, 0], rest[-3000:]
    assert "training complete: 4 epochs" in rest and "1 recoveries" in rest, rest[-3000:]
    assert "epoch 3:" in rest and "3 workers at the end" in rest
    losses = [float(line.split("mean loss ")[1].split()[0]) for line in [first_line, *rest.splitlines()]
              if line.startswith("epoch ")]
    assert losses[-1] < losses[0], losses  # training went on; it did not start over
