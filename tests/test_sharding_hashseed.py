"""The ring's output is the same in processes with different PYTHONHASHSEED values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import hashlib, sys
from dtruntime.sharding import assign_shards, epoch_stream, uniform_shard_sizes
digest = hashlib.sha256()
for n, total, shard_size, shuffle in [(1, 10, 3, False), (7, 10_001, 97, True), (64, 250_000, 1000, True), (256, 3_333, 10, False)]:
    sizes = uniform_shard_sizes(total, shard_size)
    ids = {f"host-{i % 5}/worker-{i}" for i in range(n)}  # a set: iteration order depends on the hash seed
    a = assign_shards(len(sizes), ids, 4, 1234, shard_sizes=sizes, shuffle=shuffle)
    for member in sorted(a.members):
        digest.update(repr((member, a[member].pieces, a[member].padding)).encode())
        digest.update(epoch_stream(a, member).tobytes())
    digest.update(repr(a.placement).encode())
print(digest.hexdigest())
"""


def run_with_hash_seed(seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.strip()


def test_identical_under_different_hash_seeds():
    digests = {run_with_hash_seed(seed) for seed in ("0", "1", "4242424")}
    assert len(digests) == 1, digests
    assert len(digests.pop()) == 64
