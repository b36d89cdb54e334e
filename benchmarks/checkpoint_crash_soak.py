"""Crash-atomicity soak: kill -9 a process that saves checkpoints in a loop, many times.

    python benchmarks/checkpoint_crash_soak.py --kills 200 [--root DIR] [--seed N]

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
import json
import os
import random
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


def child_main(root: str, backend: str | None, options: dict[str, Any]) -> None:
    from dtruntime import CheckpointManager

    manager = CheckpointManager(root, backend=backend, keep_last_n=KEEP_LAST_N, storage_options=options or None)
    steps = manager.list_checkpoints_sync()
    step = steps[-1] + 1 if steps else 0
    print("ready", flush=True)
    while True:  # runs until killed
        manager.save_bytes(payload(step), step)
        step += 1


def check_store(root: str, backend: str | None, options: dict[str, Any]) -> list[str]:
    """Violations of the crash-atomicity invariants in the store at ``root`` (empty: none)."""
    from dtruntime import CheckpointManager

    problems = []
    with CheckpointManager(root, backend=backend, storage_options=options or None) as manager:
        steps = manager.list_checkpoints_sync()
        for step in steps:
            try:
                if manager.load_bytes(step) != payload(step):
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
                if manager.load_bytes() != payload(steps[-1]):
                    problems.append(f"load() did not return the newest committed step {steps[-1]}")
                if manager.read_manifest().step != steps[-1]:
                    problems.append("read_manifest() did not resolve to the newest committed step")
            except Exception as exc:  # noqa: BLE001 - any failure is a violation
                problems.append(f"load() of the newest step failed: {exc!r} (listed {steps}, "
                                f"now listed {manager.list_checkpoints_sync()})")
    return problems


def run_kill_loop(
    root: str,
    kills: int,
    seed: int = 0,
    backend: str | None = None,
    options: dict[str, Any] | None = None,
    max_delay_s: float = 0.25,
    quiet: bool = True,
) -> dict[str, Any]:
    """Run ``kills`` kill-9 rounds against ``root``; return a summary with ``violations``.

    ``quiet=False`` shows a progress bar on stderr when it is a terminal (needs tqdm).
    """
    bar = None
    if not quiet:
        from simulations.progress import progress_bar

        bar = progress_bar(kills, "kill -9 rounds", "kill")
    rng = random.Random(seed)
    options = options or {}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    violations: list[str] = []
    newest_seen: list[int] = []
    started = time.perf_counter()
    for round_index in range(kills):
        child = subprocess.Popen(
            [sys.executable, __file__, "child", "--root", root, "--backend", backend or "",
             "--options", json.dumps(options)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        try:
            line = _read_line(child, deadline_s=60)
            if line != "ready":
                raise RuntimeError(f"child did not start: {line!r} {child.stderr.read().decode()[-2000:]}")
            time.sleep(rng.uniform(0, max_delay_s))  # the random kill moment is the point
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
            child.stdout.close()
            child.stderr.close()
        problems = check_store(root, backend, options)
        violations.extend(f"round {round_index}: {p}" for p in problems)
        from dtruntime import CheckpointManager

        with CheckpointManager(root, backend=backend, storage_options=options or None) as manager:
            steps = manager.list_checkpoints_sync()
        newest_seen.append(steps[-1] if steps else -1)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(violations=len(violations), refresh=False)
    if bar is not None:
        bar.close()
    return {
        "kills": kills,
        "violations": violations,
        "newest_committed_after_last_kill": newest_seen[-1] if newest_seen else None,
        "rounds_with_progress": sum(1 for a, b in zip([-1] + newest_seen, newest_seen) if b > a),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _read_line(child: subprocess.Popen, deadline_s: float) -> str:
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=deadline_s):
        return "<timeout>"
    return child.stdout.readline().decode().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="soak", choices=("soak", "child"))
    parser.add_argument("--root", default=None)
    parser.add_argument("--backend", default="")
    parser.add_argument("--options", default="{}")
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar (none unless stderr is a terminal)")
    args = parser.parse_args()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    backend = args.backend or None
    if args.mode == "child":
        child_main(args.root, backend, json.loads(args.options))
        return
    root = args.root or tempfile.mkdtemp(prefix="dtruntime-crash-")
    summary = run_kill_loop(root, args.kills, seed=args.seed, backend=backend, options=json.loads(args.options),
                            quiet=args.quiet)
    summary["root"] = root
    print(json.dumps(summary, indent=1))
    sys.exit(1 if summary["violations"] else 0)


if __name__ == "__main__":
    main()
