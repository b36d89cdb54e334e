"""Reader benchmark: the prefetching ShardDataset vs plain pyarrow on the same parquet data.

Two settings, each timed ``--repeats`` times alternating the two readers (best run kept, the
page cache being warm for both):

1. world of 1: rank 0 reads the whole dataset through ``DatasetRegistry.open_shard``;
   plain pyarrow reads the same files with ``pyarrow.parquet.read_table``;
2. world of 4: rank 0's assigned records; plain pyarrow reads exactly the same rows with
   ``ParquetFile.read_row_groups`` + ``slice`` (the best a hand-written reader can do).

Goal: ours >= 90% of plain pyarrow's rows/s. Run: ``python benchmarks/bench_readers.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtruntime import DatasetRegistry  # noqa: E402


def write_dataset(root: Path, files: int, rows_per_file: int, row_group_size: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    for i in range(files):
        start = i * rows_per_file
        table = pa.table(
            {
                "x": pa.array(np.arange(start, start + rows_per_file, dtype=np.int64)),
                "label": pa.array(rng.integers(0, 1000, rows_per_file, dtype=np.int32)),
                **{f"f{j}": pa.array(rng.random(rows_per_file, dtype=np.float32)) for j in range(8)},
                "text": pa.array([f"sample text {k}" for k in range(start, start + rows_per_file)]),
            }
        )
        pq.write_table(table, root / f"part-{i:04d}.parquet", row_group_size=row_group_size)


def time_ours(registry: DatasetRegistry, rank: int, prefetch: int) -> tuple[float, int]:
    start = time.perf_counter()
    rows = sum(batch.num_rows for batch in registry.open_shard("bench", rank, 0, prefetch_shards=prefetch))
    return time.perf_counter() - start, rows


def time_plain_files(files: list[str]) -> tuple[float, int]:
    import pyarrow.parquet as pq

    start = time.perf_counter()
    rows = sum(pq.read_table(f).num_rows for f in files)
    return time.perf_counter() - start, rows


def time_plain_rows(registry: DatasetRegistry, rank: int) -> tuple[float, int]:
    """Plain pyarrow reading exactly the assigned rows (row groups + slice), no prefetching."""
    import pyarrow.parquet as pq

    from dtruntime.data.readers.parquet import row_group_bounds

    slices = [s for r in registry.get_assignment("bench", rank, 0) for s in r.file_slices]
    start = time.perf_counter()
    rows = 0
    for piece in slices:
        handle = pq.ParquetFile(piece.path)
        bounds = row_group_bounds(handle.metadata)
        first = int(np.searchsorted(bounds, piece.row_start, side="right")) - 1
        last = int(np.searchsorted(bounds, piece.row_end, side="left"))
        table = handle.read_row_groups(list(range(first, last)))
        rows += table.slice(piece.row_start - int(bounds[first]), piece.row_end - piece.row_start).num_rows
    return time.perf_counter() - start, rows


def best(runs: list[tuple[float, int]]) -> tuple[float, int]:
    return min(runs, key=lambda r: r[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--rows-per-file", type=int, default=100_000)
    parser.add_argument("--row-group-size", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--prefetch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(root, args.files, args.rows_per_file, args.row_group_size)
        size_mib = sum(p.stat().st_size for p in root.iterdir()) / 2**20
        total = args.files * args.rows_per_file
        print(f"dataset: {args.files} parquet files, {total:,} rows, {size_mib:.0f} MiB on disk, "
              f"row groups of {args.row_group_size:,}, shard_size {args.shard_size:,}, prefetch_shards {args.prefetch}")
        print("| setting | ours rows/s | plain pyarrow rows/s | ratio |")
        print("|---|---|---|---|")
        for world in (1, 4):
            registry = DatasetRegistry(rank=0, world_size=world)
            registry.register("bench", str(root), "parquet", shard_size=args.shard_size)
            files = registry.get_shard("bench", 0, 0)
            ours_runs, plain_runs = [], []
            for _ in range(args.repeats):
                ours_runs.append(time_ours(registry, 0, args.prefetch))
                plain_runs.append(time_plain_files(files) if world == 1 else time_plain_rows(registry, 0))
            (ours_s, ours_rows), (plain_s, plain_rows) = best(ours_runs), best(plain_runs)
            assert ours_rows == plain_rows, (ours_rows, plain_rows)
            what = "world 1, whole dataset" if world == 1 else "world 4, rank 0's records"
            print(f"| {what} ({ours_rows:,} rows) | {ours_rows / ours_s:,.0f} | {plain_rows / plain_s:,.0f} | "
                  f"{plain_s / ours_s:.2f} |")


if __name__ == "__main__":
    main()
