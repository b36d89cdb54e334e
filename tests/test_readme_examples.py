"""The README's Python snippets are parts of complete programs in examples/ that run
(issue 10 item 18): each block is contained in the example the text before it names, so
the two cannot drift, and each example runs here on real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from dtruntime import CheckpointManager

from .cluster import ROOT, free_port

README = ROOT / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
EXAMPLE_NAME = re.compile(r"examples/[a-z_]+\.py")


def python_blocks() -> list[tuple[str, str | None]]:
    """(block, the last ``examples/*.py`` named between the previous block and this one)."""
    text = README.read_text()
    found, previous_end = [], 0
    for match in FENCE.finditer(text):
        names = EXAMPLE_NAME.findall(text[previous_end:match.start()])
        found.append((match.group(1), names[-1] if names else None))
        previous_end = match.end()
    return found


def paragraphs(code: str) -> list[list[str]]:
    return [textwrap.dedent(part).splitlines() for part in re.split(r"\n\s*\n", code.strip("\n")) if part.strip()]


def missing_paragraph(block: str, program: str) -> list[str] | None:
    """The first paragraph of ``block`` not found, in order and line for line (up to a common
    indent), in ``program``; None when every one is."""
    lines = program.splitlines()
    position = 0
    for paragraph in paragraphs(block):
        for start in range(position, len(lines) - len(paragraph) + 1):
            if textwrap.dedent("\n".join(lines[start:start + len(paragraph)])).splitlines() == paragraph:
                position = start + len(paragraph)
                break
        else:
            return paragraph
    return None


def test_every_readme_python_block_is_part_of_the_example_it_points_to():
    blocks = python_blocks()
    assert len(blocks) >= 4
    tests = "".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    for block, name in blocks:
        assert name is not None, f"no examples/*.py named before the README block:\n{block}"
        program = (ROOT / name).read_text()
        missing = missing_paragraph(block, program)
        assert missing is None, f"{name} lacks these README lines (edit both):\n" + "\n".join(missing)
        assert Path(name).name in tests.replace(str(Path(__file__).name), ""), f"no test runs {name}"
    assert "10.0.0.1" not in README.read_text()


def test_the_drift_check_catches_a_changed_line():
    block, name = python_blocks()[0]
    program = (ROOT / name).read_text()
    assert missing_paragraph(block, program) is None
    assert missing_paragraph(block.replace("timeout=60", "timeout=61"), program) is not None


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DTRUNTIME_HEARTBEAT_INTERVAL_MS": "100",
            "DTRUNTIME_HEARTBEAT_TIMEOUT_MS": "1000", **extra}


def run_ranks(commands: list[list[str]], envs: list[dict[str, str]], cwd: Path, timeout: float = 180) -> list[str]:
    """Start one process per rank, wait for all (bounded), return their outputs; kill leftovers."""
    processes = [subprocess.Popen(command, cwd=cwd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for command, e in zip(commands, envs)]
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def test_the_async_quickstart_runs_on_two_ranks(tmp_path):
    script = str(ROOT / "examples" / "quickstart_async.py")
    url = f"tcp://127.0.0.1:{free_port()}"
    outputs = run_ranks([[sys.executable, script, str(rank), "2", url, str(tmp_path / "ckpt")] for rank in range(2)],
                        [env()] * 2, tmp_path)
    for rank, output in enumerate(outputs):
        assert "worker-0 ['worker-0', 'worker-1']" in output, output
        assert f"rank {rank} loaded \"rank {rank}'s state\"" in output, output
    with CheckpointManager(str(tmp_path / "ckpt")) as checkpoints:
        assert checkpoints.list_checkpoints_sync() == [1000]
        assert checkpoints.load_bytes(rank=1) == b"rank 1's state"


def test_the_sync_quickstart_runs_on_two_ranks_and_commits_every_epoch(tmp_path):
    script = str(ROOT / "examples" / "quickstart_sync.py")
    url = f"tcp://127.0.0.1:{free_port()}"
    outputs = run_ranks([[sys.executable, script]] * 2,
                        [env(RANK=str(rank), WORLD_SIZE="2", COORDINATOR_URL=url) for rank in range(2)], tmp_path)
    for rank, output in enumerate(outputs):
        for epoch in range(3):
            assert f"rank {rank}: epoch {epoch}, 50000 samples" in output, output
    with CheckpointManager(str(tmp_path / "out" / "quickstart-sync")) as checkpoints:
        assert checkpoints.list_checkpoints_sync() == [0, 1, 2]
        assert checkpoints.load_state(rank=1)["epoch"] == 2


def epoch_lines(output: str) -> dict[int, tuple[int, int, int]]:
    """epoch -> (samples read, of them taken over, index sum) from one worker's output."""
    found = {}
    for epoch, samples, taken, total in re.findall(r"epoch (\d+): (\d+) samples \((\d+) taken over\), index sum (\d+)",
                                                   output):
        found[int(epoch)] = (int(samples), int(taken), int(total))
    return found


def test_the_shard_ring_example_reads_every_sample_once_when_a_worker_is_killed(tmp_path):
    samples = 30_000
    script = [sys.executable, str(ROOT / "examples" / "shard_ring_epochs.py"), "--epochs", "2",
              "--samples", str(samples), "--batch-pause", "0.05"]  # 20 batches, about 1 s, per epoch
    url = f"tcp://127.0.0.1:{free_port()}"
    workers = [subprocess.Popen(script, cwd=tmp_path, env=env(RANK=str(rank), WORLD_SIZE="3", COORDINATOR_URL=url),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(3)]
    try:
        first = workers[0].stdout.readline()  # rank 0 has finished epoch 0: everyone is in epoch 1
        assert first.startswith("rank 0 epoch 0:"), first
        workers[2].kill()
        outputs = [first + workers[0].communicate(timeout=180)[0], workers[1].communicate(timeout=180)[0]]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait(timeout=30)
    assert [workers[0].returncode, workers[1].returncode] == [0, 0], outputs
    survivors = [epoch_lines(output) for output in outputs]
    assert all(lines[0][:2] == (samples // 3, 0) for lines in survivors), survivors  # epoch 0: no loss
    assert sum(lines[1][1] for lines in survivors) > 0, "nothing was taken over from the killed worker"
    # What the survivors did not read in epoch 1 is what rank 2 read and reported before
    # the kill: whole batches of its own 10 000 (every sample once is tested in
    # test_registry_cluster; here, that the README's program takes the rest over).
    reported_by_the_dead = samples - sum(lines[1][0] for lines in survivors)
    assert 0 <= reported_by_the_dead < samples // 3 and reported_by_the_dead % 500 == 0, survivors


def test_the_run_control_loop_stops_every_rank_at_one_committed_step_on_sigterm_and_resumes_there(tmp_path):
    script = str(ROOT / "examples" / "run_control_loop.py")
    url = f"tcp://127.0.0.1:{free_port()}"
    store = str(tmp_path / "ckpt")
    ranks = [subprocess.Popen([sys.executable, script, "--checkpoint-dir", store], cwd=tmp_path,
                              env=env(RANK=str(rank), WORLD_SIZE="2", COORDINATOR_URL=url),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    try:
        assert ranks[1].stdout is not None
        started = ranks[1].stdout.readline() + ranks[1].stdout.readline()
        assert "training from step 1" in started and "at step 10" in started, started  # steps published
        ranks[1].send_signal(signal.SIGTERM)  # one rank only: the stop spreads to the other
        outputs = [started + ranks[1].communicate(timeout=120)[0], ranks[0].communicate(timeout=120)[0]]
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    assert [process.returncode for process in ranks] == [0, 0], outputs
    stopped = {int(step) for output in outputs for step in re.findall(r"stopped at step (\d+) \(exit 0\)", output)}
    assert len(stopped) == 1, outputs  # the same step on both ranks
    step = stopped.pop()
    with CheckpointManager(store) as checkpoints:
        assert checkpoints.list_checkpoints_sync()[-1] == step
    again = run_ranks([[sys.executable, script, "--checkpoint-dir", store, "--steps", str(step + 5)]] * 2,
                      [env(RANK=str(rank), WORLD_SIZE="2", COORDINATOR_URL=url) for rank in range(2)], tmp_path)
    for rank, output in enumerate(again):
        assert f"rank {rank}: resumed from step {step}" in output and f"finished step {step + 5}" in output, output



def test_the_dcp_example_saves_and_loads_through_dtruntime(tmp_path):
    store = tmp_path / "dcp"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "dcp_checkpoint.py"), str(store)], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "equal" in done.stdout, done.stdout + done.stderr
    with CheckpointManager(str(store)) as checkpoints:
        assert checkpoints.list_checkpoints_sync() == [1000]


def test_the_checkpoint_loop_saves_each_step_exactly_while_training_goes_on_and_resumes(tmp_path):
    """Checkpoint 20 of a 40-step run (taken while steps 21+ ran) equals that of a 20-step run
    (taken after the last step): the guarded snapshot is the state of its step."""

    def run(directory: str, steps: int) -> str:
        done = subprocess.run([sys.executable, str(ROOT / "examples" / "checkpoint_loop.py"), directory, str(steps)],
                              cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert "checkpoints [20]" in run("short", 20)
    assert "checkpoints [20, 40]" in run("long", 40)
    with CheckpointManager(str(tmp_path / "short")) as short, CheckpointManager(str(tmp_path / "long")) as long:
        expected, saved = short.load_state(20), long.load_state(20)
        for key, tensor in expected["model"].items():
            assert torch.equal(saved["model"][key], tensor), key
        for index, state in expected["optimizer"]["state"].items():
            assert all(torch.equal(saved["optimizer"]["state"][index][name], value) for name, value in state.items())
        assert not torch.equal(long.load_state(40)["model"]["0.weight"], expected["model"]["0.weight"])
    output = run("long", 60)
    assert "resumed from step 40" in output and "checkpoints [40, 60]" in output, output
