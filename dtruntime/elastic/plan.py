"""Which samples each rank reads at each step of an elastic epoch: pure, no torch.

An epoch is one permutation of ``num_samples`` sample indices, the same on every worker
(``epoch_order``: seeded by ``(seed, epoch)``). Training consumes it through one global
cursor: a step of a group of ``M`` ranks takes the next global batch of up to
``M * batch_size`` samples, and dense rank ``i`` reads the ``i``-th equal slice of it.

Invariants:
- Whatever the membership does between steps, the global batches of the applied steps
  tile ``[0, num_samples)`` of the order exactly: every sample is read exactly once per
  epoch, the lost worker's unread samples included (they were never assigned past the
  current step), with no bookkeeping beyond the cursor.
- Every rank of a step reads the same number of samples (DDP needs equal steps). The
  last global batch, when fewer than ``M * batch_size`` samples remain, is split into
  ``M`` slices of ``ceil(remaining / M)``; the shortfall (at most ``M - 1`` samples) is
  padded with samples from the start of the order (cyclically, should the epoch be
  shorter than the group) and reported as ``padding``, as ``DistributedSampler`` does.
"""

from __future__ import annotations

from ..errors import ArgumentError

from dataclasses import dataclass

import numpy as np


def epoch_order(num_samples: int, seed: int, epoch: int, *, shuffle: bool = True) -> np.ndarray:
    """The epoch's sample order: a permutation of ``range(num_samples)``, identical on every worker."""
    if num_samples < 1:
        raise ArgumentError(f"num_samples must be >= 1, not {num_samples}")
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.int64)


@dataclass(frozen=True)
class StepSlice:
    """One step's share: global batch ``[begin, end)`` of the order, this rank's indices in it."""

    begin: int
    end: int
    indices: np.ndarray
    padding: int  # samples of the global batch that repeat the order's start (last step only)


def step_slice(order: np.ndarray, cursor: int, group_size: int, dense_rank: int, batch_size: int) -> StepSlice:
    """The step that starts at ``cursor`` for rank ``dense_rank`` of a group of ``group_size``.

    ``cursor`` must be below ``len(order)`` (the epoch is not over).
    """
    total = len(order)
    if not 0 <= cursor < total:
        raise ArgumentError(f"cursor {cursor} is outside the epoch of {total} samples")
    if not 0 <= dense_rank < group_size:
        raise ArgumentError(f"rank {dense_rank} is outside a group of {group_size}")
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, not {batch_size}")
    per_rank = min(batch_size, -(-(total - cursor) // group_size))
    end = min(total, cursor + per_rank * group_size)
    padding = cursor + per_rank * group_size - end
    window = np.concatenate([order[cursor:end], np.resize(order, padding)]) if padding else order[cursor:end]
    return StepSlice(cursor, end, window[dense_rank * per_rank:(dense_rank + 1) * per_rank], padding)
