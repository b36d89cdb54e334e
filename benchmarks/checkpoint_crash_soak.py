"""Crash-atomicity soak: kill -9 a process that saves checkpoints in a loop, many times.

    python benchmarks/checkpoint_crash_soak.py --kills 200 [--root DIR] [--seed N]
    python benchmarks/checkpoint_crash_soak.py --mode dcp --world 2 --kills 200 [--backend s3 --options JSON]

``--mode tensor``: as the default loop, with state dicts saved by ``save`` (tensor-native
parts) and checked with ``load_state``. ``--mode guarded``: the same with
``save(..., guard=...)``, so each copy runs in a snapshot thread that the kill may catch
mid-copy (nothing changes a step's tensors after its save: the guard is a module with no
state, which only moves the copy out of the caller).

``--mode dcp``: each round starts a job of ``--world`` real processes (gloo on CPU) that
resumes after the newest committed step and saves tensor-native multi-rank checkpoints
back to back with ``torch.distributed.checkpoint.save`` through dtruntime's writer (a
DTensor sharded over the ranks, a replicated tensor and a non-tensor item per step, all
a pure function of the step), waits until every rank says it is running, lets the job
run a random 0-``--max-delay`` s, then SIGKILLs the ranks one by one in random order,
a random 0-20 ms apart (so some ranks die while the others are still in the save). After
every round the parent checks with DCP ``load`` (one process, resharded to plain
tensors): every listed step loads and holds exactly what was saved for it, and a load of
the newest (``step=None``) returns the newest listed step.

Each round launches a child that resumes from the newest committed step and saves
steps back to back (two in flight), waits until the child says it is running, lets it
run a random 0-250 ms, then SIGKILLs it. After every kill a fresh manager checks:
every step ``list_checkpoints_sync()`` lists loads and has exactly the bytes the child
saved for it (payloads are a pure function of the step), and ``load_bytes()`` returns
the newest listed step. Any mismatch is a violation. Prints a JSON summary; exits 1 on
a violation. tests/checkpoint/test_ckpt_crash.py runs a short version of this loop.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KEEP_LAST_N = 2


def payload(step: int) -> bytes:
    """The bytes saved for ``step``: 1 KiB to 1 MiB, half compressible, deterministic."""
    rng = random.Random(step)
    size = rng.choice((1 << 10, 64 << 10, 512 << 10, 1 << 20))
    noise = rng.randbytes(size // 2)
    return noise + bytes(size - len(noise))


def tensor_state(step: int) -> dict[str, Any]:
    """The state dict ``--mode tensor`` saves for ``step``: the step's payload as a uint8
    tensor, a float tensor and plain leaves."""
    import torch

    data = torch.frombuffer(bytearray(payload(step)), dtype=torch.uint8)
    return {"w": data, "scale": torch.full((4,), float(step)), "meta": {"step": step, "tag": (step, "x")}}


def same_state(loaded: Any, step: int) -> bool:
    import torch

    expected = tensor_state(step)
    return (torch.equal(loaded["w"], expected["w"]) and torch.equal(loaded["scale"], expected["scale"])
            and loaded["meta"] == expected["meta"])


def child_main(root: str, backend: str | None, options: dict[str, Any], tensor: bool = False,
               guarded: bool = False) -> None:
    from dtruntime import CheckpointManager

    manager = CheckpointManager(root, backend=backend, keep_last_n=KEEP_LAST_N, storage_options=options or None)
    steps = manager.list_checkpoints_sync()
    step = steps[-1] + 1 if steps else 0
    guard = None
    if tensor:  # import torch and the staging code before the kill window opens
        importlib.import_module("dtruntime.checkpoint.snapshot")
        tensor_state(step)
        if guarded:
            import torch

            guard = torch.nn.Module()
    print("ready", flush=True)
    while True:  # runs until killed
        if tensor:
            manager.save(tensor_state(step), step, guard=guard)
        else:
            manager.save_bytes(payload(step), step)
        step += 1


def check_store(root: str, backend: str | None, options: dict[str, Any], tensor: bool = False) -> list[str]:
    """Violations of the crash-atomicity invariants in the store at ``root`` (empty: none)."""
    from dtruntime import CheckpointManager

    def holds(manager: Any, step: int | None, expected_step: int) -> bool:
        if tensor:
            return same_state(manager.load_state(step), expected_step)
        return manager.load_bytes(step) == payload(expected_step)

    problems = []
    with CheckpointManager(root, backend=backend, storage_options=options or None) as manager:
        steps = manager.list_checkpoints_sync()
        for step in steps:
            try:
                if not holds(manager, step, step):
                    problems.append(f"step {step} loads other bytes than were saved")
            except FileNotFoundError as exc:
                # On an object store the killed writer's last request (retention deleting an
                # old step, manifest first) can still land after the kill: a step that is
                # gone is consistent; one still listed but unloadable is a violation.
                if step in manager.list_checkpoints_sync():
                    problems.append(f"listed step {step} fails to load: {exc!r}")
            except Exception as exc:  # noqa: BLE001 - any other failure is a violation
                problems.append(f"listed step {step} fails to load: {exc!r}")
        if steps:
            try:
                if not holds(manager, None, steps[-1]):
                    problems.append(f"load() did not return the newest committed step {steps[-1]}")
                if manager.read_manifest().step != steps[-1]:
                    problems.append("read_manifest() did not resolve to the newest committed step")
            except Exception as exc:  # noqa: BLE001 - any failure is a violation
                problems.append(f"load() of the newest step failed: {exc!r} (listed {steps}, "
                                f"now listed {manager.list_checkpoints_sync()})")
    return problems


DCP_ROWS, DCP_COLS = 64, 1024


def dcp_expected(step: int) -> dict[str, Any]:
    import torch

    return {"w": torch.arange(DCP_ROWS * DCP_COLS, dtype=torch.float32).reshape(DCP_ROWS, DCP_COLS) + step,
            "b": torch.full((8,), float(step)), "extra": {"step": step, "note": f"step {step}"}}


def dcp_child_main(root: str, backend: str | None, options: dict[str, Any]) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from dtruntime import CheckpointManager
    from dtruntime.checkpoint.dcp import DtruntimeStorageWriter

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    newest = [None]
    if dist.get_rank() == 0:
        with CheckpointManager(root, backend=backend, storage_options=options or None) as manager:
            steps = manager.list_checkpoints_sync()
        newest = [steps[-1] if steps else -1]
    import tempfile

    import torch

    scratch = [tempfile.mkdtemp(prefix="dtruntime-warm-") if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(newest, src=0)
    dist.broadcast_object_list(scratch, src=0)
    step = newest[0] + 1
    dcp.save({"warm": torch.zeros(1)}, checkpoint_id=scratch[0])  # warm DCP and gloo up before the kill window
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(scratch[0], ignore_errors=True)
    print("ready", flush=True)
    while True:  # runs until killed
        state = dcp_expected(step)
        state["w"] = distribute_tensor(state["w"], mesh, [Shard(0)])
        writer = DtruntimeStorageWriter(root, step, backend=backend, storage_options=options or None,
                                        keep_last_n=KEEP_LAST_N)
        dcp.save(state, storage_writer=writer)
        step += 1


def check_store_dcp(root: str, backend: str | None, options: dict[str, Any]) -> list[str]:
    """Violations in a store written by the dcp child (empty: none)."""
    import torch
    import torch.distributed.checkpoint as dcp

    from dtruntime import CheckpointManager
    from dtruntime.checkpoint.dcp import DtruntimeStorageReader

    def load(step: int | None) -> dict[str, Any]:
        state = {"w": torch.zeros(DCP_ROWS, DCP_COLS), "b": torch.zeros(8), "extra": {"step": -1, "note": ""}}
        reader = DtruntimeStorageReader(root, step, backend=backend, storage_options=options or None)
        dcp.load(state, storage_reader=reader, no_dist=True)
        return state

    def matches(state: dict[str, Any], step: int) -> bool:
        expected = dcp_expected(step)
        return (torch.equal(state["w"], expected["w"]) and torch.equal(state["b"], expected["b"])
                and state["extra"] == expected["extra"])

    problems = []
    with CheckpointManager(root, backend=backend, storage_options=options or None) as manager:
        steps = manager.list_checkpoints_sync()
        for step in steps:
            try:
                if not matches(load(step), step):
                    problems.append(f"step {step} loads other values than were saved")
            except Exception as exc:  # noqa: BLE001 - unless the step is gone meanwhile, a violation
                if step in manager.list_checkpoints_sync():
                    problems.append(f"listed step {step} fails to load: {exc!r}"[:2000])
        if steps:
            try:
                state = load(None)
                if not matches(state, steps[-1]):
                    problems.append(f"load(step=None) gave step {state['extra']['step']}, not the newest {steps[-1]}")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"load of the newest step failed: {exc!r}"[:2000])
    return problems


def run_dcp_kill_loop(
    root: str,
    kills: int,
    world: int = 2,
    seed: int = 0,
    backend: str | None = None,
    options: dict[str, Any] | None = None,
    max_delay_s: float = 1.5,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """``kills`` rounds of: start a ``world``-rank DCP saving job, kill -9 every rank, check.
    With ``max_seconds``, no round starts after that long (the summary counts the rounds run)."""
    import socket

    rng = random.Random(seed)
    options = options or {}
    violations: list[str] = []
    newest_seen: list[int] = []
    started = time.perf_counter()
    rounds = 0
    for round_index in range(kills):
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
        rounds += 1
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        children = []
        for rank in range(world):
            env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                       LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
            children.append(subprocess.Popen(
                [sys.executable, __file__, "dcp-child", "--root", root, "--backend", backend or "",
                 "--options", json.dumps(options)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            ))
        try:
            for child in children:
                line = _read_line(child, deadline_s=180)
                if line != "ready":
                    for other in children:
                        os.kill(other.pid, signal.SIGKILL)
                    raise RuntimeError(f"rank did not start: {line!r} {child.stderr.read().decode()[-2000:]}")
            time.sleep(rng.uniform(0, max_delay_s))  # the random kill moment is the point
        finally:
            for child in rng.sample(children, len(children)):
                if child.poll() is None:
                    os.kill(child.pid, signal.SIGKILL)
                time.sleep(rng.uniform(0, 0.02))
            for child in children:
                child.wait(timeout=30)
                child.stdout.close()
                child.stderr.close()
        problems = check_store_dcp(root, backend, options)
        violations.extend(f"round {round_index}: {p}" for p in problems)
        from dtruntime import CheckpointManager

        with CheckpointManager(root, backend=backend, storage_options=options or None) as manager:
            steps = manager.list_checkpoints_sync()
        newest_seen.append(steps[-1] if steps else -1)
        _progress(round_index, newest_seen[-1], violations, started)
    return {
        "mode": "dcp",
        "world": world,
        "kills": rounds,
        "processes_killed": rounds * world,
        "violations": violations,
        "newest_committed_after_last_kill": newest_seen[-1] if newest_seen else None,
        "rounds_with_progress": sum(1 for a, b in zip([-1] + newest_seen, newest_seen) if b > a),
        "seconds": round(time.perf_counter() - started, 1),
    }


def run_kill_loop(
    root: str,
    kills: int,
    seed: int = 0,
    backend: str | None = None,
    options: dict[str, Any] | None = None,
    max_delay_s: float = 0.25,
    tensor: bool = False,
    max_seconds: float | None = None,
    guarded: bool = False,
) -> dict[str, Any]:
    """Run ``kills`` kill-9 rounds against ``root``; return a summary with ``violations``.
    ``tensor``: the child saves state dicts with ``save`` (tensor-native parts);
    ``guarded`` (with ``tensor``): with ``guard=``, copying in a snapshot thread."""
    rng = random.Random(seed)
    options = options or {}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    violations: list[str] = []
    newest_seen: list[int] = []
    started = time.perf_counter()
    rounds = 0
    for round_index in range(kills):
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
        rounds += 1
        child = subprocess.Popen(
            [sys.executable, __file__, "child", "--root", root, "--backend", backend or "",
             "--options", json.dumps(options)] + (["--mode", "guarded" if guarded else "tensor"] if tensor else []),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        try:
            line = _read_line(child, deadline_s=120)
            if line != "ready":
                raise RuntimeError(f"child did not start: {line!r} {child.stderr.read().decode()[-2000:]}")
            time.sleep(rng.uniform(0, max_delay_s))  # the random kill moment is the point
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            child.stdout.close()
            child.stderr.close()
        problems = check_store(root, backend, options, tensor=tensor)
        violations.extend(f"round {round_index}: {p}" for p in problems)
        from dtruntime import CheckpointManager

        with CheckpointManager(root, backend=backend, storage_options=options or None) as manager:
            steps = manager.list_checkpoints_sync()
        newest_seen.append(steps[-1] if steps else -1)
        _progress(round_index, newest_seen[-1], violations, started)
    return {
        "mode": ("guarded" if guarded else "tensor") if tensor else "bytes",
        "kills": rounds,
        "violations": violations,
        "newest_committed_after_last_kill": newest_seen[-1] if newest_seen else None,
        "rounds_with_progress": sum(1 for a, b in zip([-1] + newest_seen, newest_seen) if b > a),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _progress(round_index: int, newest: int, violations: list[str], started: float) -> None:
    """One line per round on stderr, so a long soak shows how far it got."""
    print(json.dumps({"round": round_index, "newest": newest, "violations": len(violations),
                      "seconds": round(time.perf_counter() - started, 1)}), file=sys.stderr, flush=True)


def _read_line(child: subprocess.Popen, deadline_s: float) -> str:
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=deadline_s):
        return "<timeout>"
    return child.stdout.readline().decode().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="soak", choices=("soak", "child", "dcp-child"))
    parser.add_argument("--mode", dest="kind", default="bytes", choices=("bytes", "tensor", "guarded", "dcp"),
                        help="bytes: one process, save_bytes; tensor: one process, save(state_dict); "
                             "guarded: the same with guard= (the copy in a snapshot thread); "
                             "dcp: --world ranks, DCP save through dtruntime")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--max-delay", type=float, default=1.5, help="dcp mode: longest run before the kill (s)")
    parser.add_argument("--max-seconds", type=float, default=None, help="start no round after this long")
    parser.add_argument("--root", default=None)
    parser.add_argument("--backend", default="")
    parser.add_argument("--options", default="{}")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    backend = args.backend or None
    if args.mode == "child":
        child_main(args.root, backend, json.loads(args.options), tensor=args.kind in ("tensor", "guarded"),
                   guarded=args.kind == "guarded")
        return
    if args.mode == "dcp-child":
        dcp_child_main(args.root, backend, json.loads(args.options))
        return
    root = args.root or tempfile.mkdtemp(prefix="dtruntime-crash-")
    if args.kind == "dcp":
        summary = run_dcp_kill_loop(root, args.kills, world=args.world, seed=args.seed, backend=backend,
                                    options=json.loads(args.options), max_delay_s=args.max_delay,
                                    max_seconds=args.max_seconds)
    else:
        summary = run_kill_loop(root, args.kills, seed=args.seed, backend=backend, options=json.loads(args.options),
                                tensor=args.kind in ("tensor", "guarded"), max_seconds=args.max_seconds,
                                guarded=args.kind == "guarded")
    summary["root"] = root
    print(json.dumps(summary, indent=1))
    sys.exit(1 if summary["violations"] else 0)


if __name__ == "__main__":
    main()
