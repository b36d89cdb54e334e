"""Tensor-native checkpoints and DCP through dtruntime, side by side with their anchors, same run.

    python benchmarks/bench_checkpoint_tensors.py --sizes 256 1024 [--reps 5] [--s3] [--dir DIR]

State dicts of fp32 tensors (16 MiB each). Every trial runs ours and each anchor back to
back, the order rotated trial by trial (disk speed and machine load drift here); one
untimed warm-up trial first (first-touch page faults of fresh buffers, for everyone).
Medians of ``--reps`` trials:

  stall    caller time of ``CheckpointManager.save(state_dict)`` vs a bare ``copy_`` into
           preallocated tensors (memcpy), DCP ``async_save(checkpoint_id=dir)`` blocking
           time (its default: FileSystemWriter's stager, a fresh CPU copy per save) and
           DCP ``async_save`` with one ``DefaultStager`` kept across saves (it reuses its
           CPU copies; pinning off, as there is no CUDA here)
  durable  save call -> handle done (durable and committed) vs DCP ``async_save``
           completion and raw write+fsync of the same tensor bytes (MiB/s)
  load     ``load_state`` (verified, zero-copy views) vs DCP ``load`` into preallocated
           tensors and raw ``read()`` of our part file (page cache warm for all)
  dcp      DCP ``save`` through ``DtruntimeStorageWriter`` vs ``FileSystemWriter`` (local)
           and, with ``--s3``, vs DCP's ``FsspecWriter`` on a moto server on 127.0.0.1;
           without retention, and with two checkpoints kept on both sides (our
           ``keep_last_n=2`` against the anchor's save plus a timed delete of its
           checkpoint of two saves before)
Goals (issue 9): stall <= 0.5x DCP async_save blocking and <= 1.2x memcpy; durable <=
DCP completion and >= 90% raw throughput; load <= DCP load and <= 1.2x raw read; DCP
through dtruntime within 10% of FileSystemWriter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402

from dtruntime import CheckpointManager  # noqa: E402
from dtruntime.checkpoint.dcp import DtruntimeStorageWriter  # noqa: E402

MiB = 1 << 20


def state_dict(size_mib: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    count = max(1, size_mib // 16)
    return {f"layer{i}.weight": torch.randn(4 * MiB, generator=generator) for i in range(count)}


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def fsync_write(path: Path, chunks: list[memoryview]) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for chunk in chunks:
        offset = 0
        while offset < len(chunk):
            offset += os.write(fd, chunk[offset : offset + 64 * MiB])
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - start


def init_gloo() -> None:
    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def rotate(trial: int, runs: list[Callable[[], None]]) -> None:
    shift = trial % len(runs)
    for run in runs[shift:] + runs[:shift]:
        run()


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_save(size_mib: int, reps: int, workdir: Path) -> dict:
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    state = state_dict(size_mib)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    copies = {key: torch.empty_like(tensor) for key, tensor in state.items()}
    raw_chunks = [memoryview(t.numpy()).cast("B") for t in state.values()]
    samples: dict[str, list[float]] = {k: [] for k in (
        "memcpy", "ours_stall", "ours_durable", "raw_fsync", "dcp_block", "dcp_done",
        "dcp_cached_block", "dcp_cached_done")}
    manager = CheckpointManager(str(workdir / f"ours-{size_mib}"), keep_last_n=2)
    # DCP's stager that keeps its CPU copies between saves (pinning and CUDA streams off: no CUDA here).
    cached_stager = DefaultStager(StagingOptions(False, False, False, False))
    step = [0]

    def memcpy(record: bool) -> None:
        seconds = timed(lambda: [copies[key].copy_(tensor) for key, tensor in state.items()])
        if record:
            samples["memcpy"].append(seconds)

    def ours(record: bool) -> None:
        manager.flush_sync()  # the previous save's retention is done: it must not slow the others
        start = time.perf_counter()
        handle = manager.save(state, step[0])
        stall = time.perf_counter() - start
        handle.result(600)
        if record:
            samples["ours_stall"].append(stall)
            samples["ours_durable"].append(time.perf_counter() - start)
        step[0] += 1

    def raw(record: bool) -> None:
        path = workdir / "raw.bin"
        seconds = fsync_write(path, raw_chunks)
        path.unlink()
        if record:
            samples["raw_fsync"].append(seconds)

    def dcp_default(record: bool) -> None:
        target = workdir / "dcp-default"
        start = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=str(target))
        block = time.perf_counter() - start
        future.result()
        done = time.perf_counter() - start
        if record:
            samples["dcp_block"].append(block)
            samples["dcp_done"].append(done)
        shutil.rmtree(target)

    def dcp_cached(record: bool) -> None:
        target = workdir / f"dcp-cached-{step[0]}"
        start = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=str(target), async_stager=cached_stager)
        block = time.perf_counter() - start
        future.result()
        done = time.perf_counter() - start
        if record:
            samples["dcp_cached_block"].append(block)
            samples["dcp_cached_done"].append(done)
        shutil.rmtree(target)

    runs = [memcpy, ours, raw, dcp_default, dcp_cached]
    for trial in range(reps + 1):
        rotate(trial, [lambda run=run, trial=trial: run(trial > 0) for run in runs])
    manager.close()
    shutil.rmtree(workdir / f"ours-{size_mib}")
    cached_stager.close()
    medians = {key: median(values) for key, values in samples.items()}
    size = nbytes / MiB
    return {
        "size_mib": size,
        "reps": reps,
        "ms": {key: round(value * 1e3, 1) for key, value in medians.items()},
        "stall_vs_memcpy": round(medians["ours_stall"] / medians["memcpy"], 2),
        "stall_vs_dcp_async_block": round(medians["ours_stall"] / medians["dcp_block"], 2),
        "stall_vs_dcp_cached_block": round(medians["ours_stall"] / medians["dcp_cached_block"], 2),
        "durable_vs_dcp_done": round(medians["ours_durable"] / medians["dcp_done"], 2),
        "durable_vs_dcp_cached_done": round(medians["ours_durable"] / medians["dcp_cached_done"], 2),
        "ours_mib_s": round(size / medians["ours_durable"], 1),
        "raw_fsync_mib_s": round(size / medians["raw_fsync"], 1),
        "throughput_vs_raw": round(medians["raw_fsync"] / medians["ours_durable"], 2),
        # The part of the durable time after save() returned, against the same raw write.
        "after_return_vs_raw": round(
            median([d - s for d, s in zip(samples["ours_durable"], samples["ours_stall"])]) / medians["raw_fsync"], 2
        ),
        "load_avg_after": [round(x, 1) for x in os.getloadavg()],
    }


def bench_load(size_mib: int, reps: int, workdir: Path) -> dict:
    from torch.distributed.checkpoint import FileSystemReader

    state = state_dict(size_mib)
    root = workdir / "load-ours"
    with CheckpointManager(str(root), keep_last_n=1) as manager:
        manager.save(state, 1).result(600)
    [part] = list(root.glob("step-*/part-*.bin"))
    dcp_dir = workdir / "load-dcp"
    dcp.save(state, checkpoint_id=str(dcp_dir))
    targets = {key: torch.empty_like(tensor) for key, tensor in state.items()}
    del state
    samples: dict[str, list[float]] = {"ours": [], "dcp": [], "raw": []}
    reader = CheckpointManager(str(root))
    check: dict = {}

    def ours(record: bool) -> None:
        start = time.perf_counter()
        loaded = reader.load_state(1)
        seconds = time.perf_counter() - start
        check["ours"] = float(loaded["layer0.weight"][:1000].sum())
        if record:
            samples["ours"].append(seconds)

    def dcp_load(record: bool) -> None:
        seconds = timed(lambda: dcp.load(targets, storage_reader=FileSystemReader(str(dcp_dir))))
        check["dcp"] = float(targets["layer0.weight"][:1000].sum())
        if record:
            samples["dcp"].append(seconds)

    def raw(record: bool) -> None:
        def read() -> None:
            with open(part, "rb") as handle:
                handle.read()

        seconds = timed(read)
        if record:
            samples["raw"].append(seconds)

    for trial in range(reps + 1):
        rotate(trial, [lambda run=run, trial=trial: run(trial > 0) for run in (ours, dcp_load, raw)])
    reader.close()
    assert check["ours"] == check["dcp"], check
    shutil.rmtree(root)
    shutil.rmtree(dcp_dir)
    medians = {key: median(values) for key, values in samples.items()}
    return {
        "size_mib": size_mib,
        "reps": reps,
        "ms": {key: round(value * 1e3, 1) for key, value in medians.items()},
        "load_vs_dcp_load": round(medians["ours"] / medians["dcp"], 2),
        "load_vs_raw_read": round(medians["ours"] / medians["raw"], 2),
    }


def bench_dcp_writer(size_mib: int, reps: int, ours_root: str, anchor: Callable[[int], object],
                     cleanup: Callable[[int], None], options: dict | None = None) -> dict:
    """DCP ``save`` through our writer vs ``anchor(trial)``'s writer, two ways, same run:

    * ``ours`` (``keep_last_n`` above the trial count: nothing deleted) vs ``anchor``
      alone (its checkpoint deleted after the clock stops): the writers' own cost;
    * ``ours_keep2`` (``keep_last_n=2``: each commit deletes the step of two saves
      before, inside ``save``) vs ``anchor_keep2`` (the anchor's save, then the deletion
      of its checkpoint of two saves before, both timed): the same work, retention
      included, as a user of the anchor who keeps two checkpoints would do it by hand.
    """
    state = state_dict(size_mib)
    samples: dict[str, list[float]] = {"ours": [], "anchor": [], "ours_keep2": [], "anchor_keep2": []}
    keep_all = reps + 2

    def ours(trial: int, record: bool) -> None:
        writer = DtruntimeStorageWriter(f"{ours_root}-all", trial, storage_options=options, keep_last_n=keep_all)
        seconds = timed(lambda: dcp.save(state, storage_writer=writer))
        if record:
            samples["ours"].append(seconds)

    def ours_keep2(trial: int, record: bool) -> None:
        writer = DtruntimeStorageWriter(f"{ours_root}-keep2", trial, storage_options=options, keep_last_n=2)
        seconds = timed(lambda: dcp.save(state, storage_writer=writer))
        if record:
            samples["ours_keep2"].append(seconds)

    def other(trial: int, record: bool) -> None:
        writer = anchor(trial)
        seconds = timed(lambda: dcp.save(state, storage_writer=writer))
        cleanup(trial)
        if record:
            samples["anchor"].append(seconds)

    def other_keep2(trial: int, record: bool) -> None:
        writer = anchor(1000 + trial)

        def save_and_retire() -> None:
            dcp.save(state, storage_writer=writer)
            if trial >= 2:
                cleanup(1000 + trial - 2)

        seconds = timed(save_and_retire)
        if record:
            samples["anchor_keep2"].append(seconds)

    for trial in range(reps + 1):
        rotate(trial, [lambda run=run, trial=trial: run(trial, trial > 0) for run in (ours, other, ours_keep2, other_keep2)])
    for trial in range(max(0, reps - 1), reps + 1):
        cleanup(1000 + trial)
    medians = {key: median(values) for key, values in samples.items()}
    return {
        "size_mib": size_mib,
        "reps": reps,
        "ms": {key: round(value * 1e3, 1) for key, value in medians.items()},
        "ours_vs_anchor": round(medians["ours"] / medians["anchor"], 3),
        "ours_keep2_vs_anchor_keep2": round(medians["ours_keep2"] / medians["anchor_keep2"], 3),
    }


def bench_dcp_local(size_mib: int, reps: int, workdir: Path) -> dict:
    from torch.distributed.checkpoint import FileSystemWriter

    result = bench_dcp_writer(
        size_mib, reps, str(workdir / "dcp-ours"),
        anchor=lambda trial: FileSystemWriter(str(workdir / f"dcp-fs-{trial}")),
        cleanup=lambda trial: shutil.rmtree(workdir / f"dcp-fs-{trial}"),
    )
    shutil.rmtree(workdir / "dcp-ours-all")
    shutil.rmtree(workdir / "dcp-ours-keep2")
    result["anchor"] = "FileSystemWriter"
    return result


def bench_dcp_s3(size_mib: int, reps: int) -> dict:
    import fsspec
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        options = {"key": "x", "secret": "x", "endpoint_url": f"http://127.0.0.1:{port}"}
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        fs = fsspec.filesystem("s3", **options)
        deadline = time.monotonic() + 60
        while True:
            try:
                fs.mkdir("bench")
                break
            except Exception:  # noqa: BLE001 - server still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        result = bench_dcp_writer(
            size_mib, reps, "s3://bench/ours",
            anchor=lambda trial: FsspecWriter(f"s3://bench/fsspec-{trial}", **options),
            cleanup=lambda trial: fs.rm(f"bench/fsspec-{trial}", recursive=True),
            options=options,
        )
        result["anchor"] = "FsspecWriter (moto server)"
        return result
    finally:
        server.kill()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256], help="state sizes in MiB")
    parser.add_argument("--load-size", type=int, default=1024)
    parser.add_argument("--dcp-size", type=int, default=256)
    parser.add_argument("--s3-size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--s3", action="store_true")
    parser.add_argument("--only", nargs="*", default=["save", "load", "dcp"], help="save load dcp")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    init_gloo()
    workdir = Path(tempfile.mkdtemp(prefix="dtruntime-bench-tensors-", dir=args.dir))
    report: dict = {"machine": f"{os.cpu_count()} cores (shared)", "load_avg_start": os.getloadavg()}
    try:
        if "save" in args.only:
            for size in args.sizes:
                report[f"save_{size}mib"] = bench_save(size, args.reps, workdir)
                print(json.dumps(report[f"save_{size}mib"]), flush=True)
        if "load" in args.only:
            report[f"load_{args.load_size}mib"] = bench_load(args.load_size, args.reps, workdir)
            print(json.dumps(report[f"load_{args.load_size}mib"]), flush=True)
        if "dcp" in args.only:
            report["dcp_local"] = bench_dcp_local(args.dcp_size, args.reps, workdir)
            print(json.dumps(report["dcp_local"]), flush=True)
            if args.s3:
                report["dcp_s3"] = bench_dcp_s3(args.s3_size, args.reps)
                print(json.dumps(report["dcp_s3"]), flush=True)
        report["load_avg_end"] = os.getloadavg()
        print(json.dumps(report, indent=1), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
