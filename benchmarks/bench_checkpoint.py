"""Checkpoint benchmark: dtruntime CheckpointManager side by side with its anchors, same run.

    python benchmarks/bench_checkpoint.py --sizes 256 1024 [--reps 5] [--s3] [--dir DIR]

Per payload size (MiB of fp32 weights in a torch state dict):
  stall      caller time of ``await save_async`` (slot free) vs torch.save+fsync (sync)
             and DCP ``async_save`` (blocking part and completion; gloo group of 1)
  write      bytes / (save_async call -> handle done) vs raw os.write+fsync of the same bytes,
             the two alternating save by save (disk speed drifts here)
  load       ``load_bytes`` (manifest + part + CRC) vs raw ``open().read()`` (both page-cache warm)
  compress   effective MiB/s and ratio of auto / zstd / gzip on 64 MiB of the weights
  s3         (``--s3``) moto server via s3fs: save / load vs raw ``pipe_file`` / ``cat_file``
Goals (the project's checkpoint goals; anchors in docs/anchors.md): stall <= 1 ms, write >= 80% of raw, load <= 1.2x raw.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dtruntime import CheckpointManager  # noqa: E402
from dtruntime.checkpoint.compression import compress  # noqa: E402

MiB = 1 << 20


def state_dict(size_mib: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    per_tensor = 16 * MiB // 4
    count = max(1, size_mib // 16)
    return {f"layer{i}.weight": torch.randn(per_tensor, generator=generator) for i in range(count)}


def serialise(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def fsync_write(path: Path, data: bytes) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    view = memoryview(data)
    offset = 0
    while offset < len(view):
        offset += os.write(fd, view[offset : offset + 64 * MiB])
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - start


def torch_save_fsync(state: dict, path: Path) -> float:
    start = time.perf_counter()
    with open(path, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return time.perf_counter() - start


def dcp_async(state: dict, directory: Path, reps: int) -> tuple[list[float], list[float]]:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    blocking, total = [], []
    for rep in range(reps):
        target = directory / f"dcp-{rep}"
        start = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=str(target))
        blocking.append(time.perf_counter() - start)
        future.result()
        total.append(time.perf_counter() - start)
        shutil.rmtree(target)
    return blocking, total


async def ours(data: bytes, root: Path, reps: int, raw_dir: Path) -> dict:
    """``reps`` saves, each right after a raw write+fsync of the same bytes to a new file
    (the previous raw file deleted untimed, as our retention deletes old steps), so disk
    drift, which here reaches tens of percent within minutes, hits both sides alike."""
    stalls, totals, raw = [], [], []
    async with CheckpointManager(str(root), keep_last_n=2) as manager:
        for step in range(reps):
            await manager.flush()  # our janitor's deletes do not slow the raw write down
            raw.append(fsync_write(raw_dir / f"raw-{step}.bin", data))
            if step:
                (raw_dir / f"raw-{step - 1}.bin").unlink()
            start = time.perf_counter()
            handle = await manager.save_async(data, step)
            stalls.append(time.perf_counter() - start)
            result = await handle
            totals.append(time.perf_counter() - start)
        codec = result.codec
    (raw_dir / f"raw-{reps - 1}.bin").rename(raw_dir / "raw.bin")
    return {"stalls": stalls, "totals": totals, "raw": raw, "codec": codec, "last_step": reps - 1}


def median(values: list[float]) -> float:
    return statistics.median(values)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def bench_size(size_mib: int, reps: int, workdir: Path) -> dict:
    state = state_dict(size_mib)
    data = serialise(state)
    size = len(data)
    out: dict = {"size_mib": round(size / MiB, 1)}

    torch_sync = [torch_save_fsync(state, workdir / "torch.pt") for _ in range(2)]
    (workdir / "torch.pt").unlink()
    dcp_block, dcp_total = dcp_async(state, workdir, reps=2)
    result = asyncio.run(ours(data, workdir / "ckpt", reps, workdir))
    raw_write = result["raw"]

    with CheckpointManager(str(workdir / "ckpt")) as manager:
        load_times, raw_reads = [], []
        for _ in range(5):
            start = time.perf_counter()
            loaded = manager.load_bytes(result["last_step"])
            load_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            with open(workdir / "raw.bin", "rb") as handle:
                raw = handle.read()
            raw_reads.append(time.perf_counter() - start)
        assert loaded == data and raw == data
        del loaded, raw

    write_s, raw_s = median(result["totals"]), median(raw_write)
    out.update(
        {
            "stall_ms_p50": median(result["stalls"]) * 1e3,
            "stall_ms_p99": p99(result["stalls"]) * 1e3,
            "torch_save_fsync_s": median(torch_sync),
            "dcp_async_block_s": median(dcp_block),
            "dcp_async_done_s": median(dcp_total),
            "ours_save_done_s": write_s,
            "stall_vs_dcp_block": median(result["stalls"]) / median(dcp_block),
            "raw_write_fsync_s": raw_s,
            "ours_write_mib_s": size / MiB / write_s,
            "raw_write_mib_s": size / MiB / raw_s,
            "write_vs_raw": raw_s / write_s,
            "ours_load_s": median(load_times),
            "raw_read_s": median(raw_reads),
            "load_vs_raw": median(load_times) / median(raw_reads),
            "codec_chosen": result["codec"],
            "reps": reps,
        }
    )
    (workdir / "raw.bin").unlink()
    shutil.rmtree(workdir / "ckpt")
    return out


def bench_compression(data: bytes) -> dict:
    sample = data[: 64 * MiB]
    out = {}
    for setting in ("auto", "zstd", "gzip"):
        start = time.perf_counter()
        codec, stored = compress(sample, setting)
        seconds = time.perf_counter() - start
        out[setting] = {"codec": codec, "ratio": round(len(stored) / len(sample), 3),
                        "mib_s": round(len(sample) / MiB / seconds, 1)}
    return out


def bench_s3(size_mib: int) -> dict:
    import fsspec

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        options = {"key": "x", "secret": "x", "endpoint_url": f"http://127.0.0.1:{port}"}
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        fs = fsspec.filesystem("s3", **options)
        deadline = time.monotonic() + 30
        while True:
            try:
                fs.mkdir("bench")
                break
            except Exception:  # noqa: BLE001 - server still starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        data = serialise(state_dict(size_mib))
        start = time.perf_counter()
        fs.pipe_file("bench/raw.bin", data)
        raw_put = time.perf_counter() - start
        start = time.perf_counter()
        raw = fs.cat_file("bench/raw.bin")
        raw_get = time.perf_counter() - start
        with CheckpointManager("s3://bench/ckpt", storage_options=options) as manager:
            start = time.perf_counter()
            manager.save_bytes(data, 1).result(600)
            save = time.perf_counter() - start
            start = time.perf_counter()
            loaded = manager.load_bytes(1)
            load = time.perf_counter() - start
        assert loaded == data == raw
        size = len(data) / MiB
        return {"size_mib": round(size, 1), "raw_pipe_mib_s": size / raw_put, "ours_save_mib_s": size / save,
                "save_vs_raw": raw_put / save, "raw_cat_mib_s": size / raw_get, "ours_load_mib_s": size / load,
                "load_vs_raw": load / raw_get}
    finally:
        server.kill()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256], help="payload sizes in MiB")
    parser.add_argument("--reps", type=int, default=5, help="saves per size for stall/throughput")
    parser.add_argument("--s3", action="store_true", help="also measure against a moto S3 server")
    parser.add_argument("--s3-size", type=int, default=256)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dtruntime-bench-", dir=args.dir))
    try:
        report = {"machine": f"{os.cpu_count()} cores (shared)", "sizes": []}
        for size in args.sizes:
            report["sizes"].append(bench_size(size, args.reps, workdir))
            print(json.dumps(report["sizes"][-1], indent=1), flush=True)
        report["compression_64mib_fp32"] = bench_compression(serialise(state_dict(64)))
        print(json.dumps(report["compression_64mib_fp32"], indent=1), flush=True)
        if args.s3:
            report["s3_moto"] = bench_s3(args.s3_size)
            print(json.dumps(report["s3_moto"], indent=1), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
