"""Shard ring benchmark: movement on leave/join, load balance, assign time. Prints tables.

Measured in the same run, on the same dataset (``--shards`` shards of ``--shard-size``
samples), side by side:

* ours, at two levels: *placement* (which member a shard's file lives on, sample-weighted:
  the cache-relevant figure) and *samples* (which member reads each sample after the exact
  equal split);
* torch ``DistributedSampler`` (shuffle=True; ranks renumbered 0..N-2 when one leaves, as
  torchrun does; its index lists are reproduced vectorised and checked against the real
  sampler for two ranks);
* a plain consistent-hash ring (100 virtual nodes per member, blake2b, whole shards).

Movement is the fraction of samples whose reader changes, times N (ideal ~1.0 when one of N
leaves; N/(N+1) when one joins). Run: ``python benchmarks/bench_sharding.py``.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dtruntime.sharding import assign_shards, uniform_shard_sizes  # noqa: E402

NS = (8, 16, 32, 64, 128, 256)


def member_ids(n: int) -> list[str]:
    return [f"worker-{i}" for i in range(n)]


def cases(members: list[str], count: int) -> list[tuple[str, list[str]]]:
    """``count`` leave cases (spread over the members) and ``count`` join cases."""
    picks = sorted(set(np.linspace(0, len(members) - 1, count).astype(int).tolist()))
    leaves = [("leave", [m for m in members if m != members[i]]) for i in picks]
    joins = [("join", members + [f"joiner-{j}"]) for j in range(count)]
    return leaves + joins


# ----------------------------------------------------------------------------- ours


def ours(members: list[str], sizes: list[int], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample owner, placement owner per sample, shards placed per member)."""
    assignment = assign_shards(len(sizes), members, 0, 7, shard_sizes=sizes)
    owner = np.empty(assignment.total_samples, dtype=np.int32)
    for member, work in assignment.members.items():
        for piece in work.pieces:
            owner[piece.start : piece.end] = index[member]
    placed = np.array([index[m] for m in assignment.placement], dtype=np.int32)
    loads = np.bincount(placed, minlength=len(index))[[index[m] for m in members]]
    return owner, np.repeat(placed, sizes), loads


# ----------------------------------------------------------------------------- DistributedSampler


def sampler_owner(members: list[str], total: int, index: dict[str, int], epoch: int = 0) -> np.ndarray:
    """Reader of each sample under DistributedSampler(shuffle=True, seed=0, drop_last=False).

    Padding repeats are ignored (a sample counts for its first reader); rank r is members[r].
    """
    import torch

    n = len(members)
    generator = torch.Generator()
    generator.manual_seed(epoch)
    indices = torch.randperm(total, generator=generator).numpy()
    padded_total = -(-total // n) * n
    indices = np.concatenate([indices, indices[: padded_total - total]])
    ranks = np.arange(padded_total) % n
    owner = np.full(total, -1, dtype=np.int32)
    ids = np.array([index[m] for m in members], dtype=np.int32)
    first = np.unique(indices, return_index=True)[1]
    owner[indices[first]] = ids[ranks[first]]
    return owner


def check_sampler_model(total: int) -> None:
    import torch
    from torch.utils.data import DistributedSampler

    members = member_ids(8)
    index = {m: i for i, m in enumerate(members)}
    owner = sampler_owner(members, total, index)
    for rank in (0, 5):
        sampler = DistributedSampler(range(total), num_replicas=8, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        got = np.fromiter(iter(sampler), dtype=np.int64)
        assert (owner[got[: total // 8]] == rank).all(), "the DistributedSampler model disagrees with torch"
    del torch


# ----------------------------------------------------------------------------- plain ring


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def ring_owner(members: list[str], sizes: list[int], index: dict[str, int], vnodes: int = 100):
    points = sorted((_h64(f"{m}#{v}"), index[m]) for m in members for v in range(vnodes))
    keys = [p[0] for p in points]
    shard_owner = np.empty(len(sizes), dtype=np.int32)
    for s in range(len(sizes)):
        position = bisect.bisect_right(keys, _h64(f"shard-{s}")) % len(keys)
        shard_owner[s] = points[position][1]
    loads = np.bincount(shard_owner, minlength=len(index))[[index[m] for m in members]]
    return np.repeat(shard_owner, sizes), loads


# ----------------------------------------------------------------------------- tables


def movement_table(total: int, shard_size: int, repeats: int) -> None:
    sizes = uniform_shard_sizes(total, shard_size)
    check_sampler_model(total)
    print(f"\nMovement x N when one member leaves / joins ({total:,} samples in {len(sizes):,} shards of "
          f"{shard_size:,}; mean of {repeats} leaves and {repeats} joins). Ideal: leave 1.00, join N/(N+1).")
    header = ("N", "ours placement", "ours samples", "DistributedSampler", "plain ring", "load ours", "load ring")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    sums = {"placement": [], "samples": [], "sampler": [], "ring": []}
    for n in NS:
        members = member_ids(n)
        universe = members + [f"joiner-{j}" for j in range(repeats)]
        index = {m: i for i, m in enumerate(universe)}
        base_samples, base_place, loads = ours(members, sizes, index)
        base_sampler = sampler_owner(members, total, index)
        base_ring, ring_loads = ring_owner(members, sizes, index)
        rows = {"placement": [], "samples": [], "sampler": [], "ring": []}
        for _kind, changed in cases(members, repeats):
            samples, place, _ = ours(changed, sizes, index)
            rows["samples"].append((samples != base_samples).mean() * n)
            rows["placement"].append((place != base_place).mean() * n)
            rows["sampler"].append((sampler_owner(changed, total, index) != base_sampler).mean() * n)
            rows["ring"].append((ring_owner(changed, sizes, index)[0] != base_ring).mean() * n)
        means = {k: statistics.fmean(v) for k, v in rows.items()}
        for k, v in means.items():
            sums[k].append(v)
        print(f"| {n} | {means['placement']:.3f} | {means['samples']:.3f} | {means['sampler']:.2f} | "
              f"{means['ring']:.3f} | {loads.max() / loads.mean():.3f} | {ring_loads.max() / ring_loads.mean():.3f} |")
    print(f"| mean over N | {statistics.fmean(sums['placement']):.3f} | {statistics.fmean(sums['samples']):.3f} | "
          f"{statistics.fmean(sums['sampler']):.2f} | {statistics.fmean(sums['ring']):.3f} | | |")
    print("(load = file-level max/mean shards placed per member; target <= 1.25)")


def load_table() -> None:
    print("\nFile-level max/mean load, 1,000 shards (the anchor's setting)")
    print("| N | ours | plain ring |")
    print("|---|---|---|")
    sizes = [100] * 1000
    for n in (8, 64, 256, 512):
        members = member_ids(n)
        index = {m: i for i, m in enumerate(members)}
        _, _, loads = ours(members, sizes, index)
        _, ring_loads = ring_owner(members, sizes, index)
        print(f"| {n} | {loads.max() / loads.mean():.3f} | {ring_loads.max() / ring_loads.mean():.3f} "
              f"({int((ring_loads == 0).sum())} empty) |")


def timing_table(runs: int) -> None:
    members = member_ids(256)
    sizes = uniform_shard_sizes(10_000 * 1_000, 1_000)
    assign_shards(len(sizes), members, 0, 1, shard_sizes=sizes, shuffle=True)  # warm-up
    times = []
    for epoch in range(runs):
        start = time.perf_counter()
        assign_shards(len(sizes), members, epoch, 1, shard_sizes=sizes, shuffle=True)
        times.append((time.perf_counter() - start) * 1e3)
    print(f"\nassign_shards, 10,000 shards x 256 members, shuffle=True, {runs} runs: "
          f"min {min(times):.1f} ms, median {statistics.median(times):.1f} ms, max {max(times):.1f} ms (goal < 50 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=4, help="leaves and joins measured per N")
    parser.add_argument("--runs", type=int, default=30, help="timing runs")
    parser.add_argument("--quick", action="store_true", help="skip the ImageNet-sized table")
    args = parser.parse_args()
    timing_table(args.runs)
    movement_table(args.shards * args.shard_size, args.shard_size, args.repeats)
    if not args.quick:
        movement_table(1_281_167, 10_000, args.repeats)  # the API docs' ImageNet example: 129 shards
    load_table()


if __name__ == "__main__":
    main()
