"""The shard ring: a pure function from (shard sizes, live member ids, epoch, seed) to work.

Every worker calls :func:`assign_shards` with the same inputs and gets the same answer, so no
message is needed to agree on who reads what. This module does no IO, starts no thread, reads
no clock and never touches the global ``random`` state or Python's ``hash`` (a test enforces
the imports); the only randomness is derived from ``hashlib.blake2b`` and explicitly seeded
``numpy.random.Generator`` objects.

Vocabulary
----------
* A *sample* is one record, numbered globally ``0 .. total-1`` (files sorted, rows in order).
* A *shard* is a contiguous run of samples (``shard_sizes[k]`` of them, starting where shard
  ``k-1`` ended). Shards are the unit of placement: the files a worker opens and caches.
* A *piece* is ``(shard_id, start, end)``, a half-open range of global sample indices inside
  one shard. A member's work for an epoch is a list of pieces plus explicit padding.

Choices, and why
----------------
1. **Stable keys.** Member ids and shard ids are hashed with ``blake2b`` keyed by the dataset
   seed (never Python's ``hash``, which changes with ``PYTHONHASHSEED``). Members are put in a
   canonical order (by key, then id) before anything else, so the caller's list order is
   irrelevant.
2. **Placement = rendezvous (HRW) hashing with bounded loads.** Each shard ranks members by a
   32-bit score ``fmix32(shard_key ^ member_key)``. Every member first accepts its first-choice
   shards, best score first, while its load stays within the cap; the rejected shards then go,
   in shard-key order, to their best-ranked member with room. The cap is ``max_load`` (default
   1.25) times the mean load in samples, but never less than the largest shard, so file-level
   max/mean load is at most ~1.25 (a plain ring reaches 1.5 at N=256 and 3.6 at N=512 with
   1,000 shards). Rendezvous rather than a ring with virtual nodes: no vnode tuning, and a
   leaver's shards go to their second choices, which are uniform over the survivors. Placement
   does not depend on the epoch, so caches stay warm from one epoch to the next. The scores are
   one vectorised ``(S, N)`` pass computed in cache-sized row blocks; the Python loops touch only
   the few shards whose first choice is full and the overflow's blocks (item 3), so 10,000 x 256
   takes ~30..35 ms.
3. **Exact sample split.** DDP needs every rank to run the same number of steps, so every
   member gets exactly ``T = ceil(total / N)`` samples. The ``P = N*T - total`` (< N) members
   last in canonical order hold ``T - 1`` real samples and one *padding* sample, recorded in
   :attr:`MemberAssignment.padding` (global sample indices read twice), never hidden. A member
   keeps its placed shards up to its quota: first those it is the first choice of, then those it
   got because their first choice was full, each group best own score first (the shards most
   likely to change hands come last). The tail beyond the quota (the *overflow*, ~6% of samples
   at 39 shards per member, less with more) is cut into fixed *blocks*, a tenth of a shard each,
   every block with its own key and so its own rendezvous order; visited shard by shard in
   shard-key order, each block goes to the best-ranked members that still have room. Most
   shards stay whole (94..99% of samples are read by the member their shard is placed on); a
   shard is cut only at a quota boundary and in its overflowing blocks.
4. **Movement.** When one of N members leaves or joins, the *placement* moves about 1/N of
   the samples (x N 0.94..1.18 over N = 8..256), which is what decides cache warmth; the
   exact per-sample split moves more (x N 0.99 at N = 8 up to 2.84 at N = 256), within a
   factor ~1.4 of the lower bound for any history-free split that reads a shard where it is
   placed, and far below ``DistributedSampler``'s (N-1)/N. Give each member a few dozen
   shards (``shard_size``): with only a few, movement grows to 3..5/N. Mid-epoch losses do
   not re-split at all: :func:`take_over` hands exactly the lost members' unfinished ranges
   to the survivors. The measurements, the lower bound's derivation and the alternatives
   tried are in ``docs/sharding.md``.
5. **Shuffling.** With ``shuffle=True`` the order of a member's pieces and the order of the
   samples inside each piece are permuted per ``(seed, epoch)``; *which* samples a member gets
   does not change with the epoch. Progress is therefore a single *cursor* per member (how many
   samples of its epoch stream it consumed), turned into global ranges by
   :func:`completed_ranges`.
6. **Elastic epochs.** :func:`take_over` (a worker died mid-epoch) and :func:`resume` (restart
   from a saved ``(epoch, cursor)`` under another world size) both reduce to
   :func:`split_ranges`: the set of unfinished global ranges is cut into equal consecutive
   parts for the receiving members in canonical order (padding again explicit), so nothing is
   repeated and nothing is missed.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import NamedTuple

import numpy as np

from .errors import DatasetError

__all__ = [
    "Assignment",
    "FileShare",
    "MemberAssignment",
    "Piece",
    "assign_files",
    "assign_shards",
    "completed_ranges",
    "epoch_stream",
    "merge_ranges",
    "piece_order",
    "resume",
    "shard_offsets",
    "split_ranges",
    "subtract_ranges",
    "take_over",
    "uniform_shard_sizes",
]

DEFAULT_MAX_LOAD = 1.25

_SCORE_BLOCK_ROWS = 512
_PREFERENCE_DEPTH = 32
_BLOCKS_PER_SHARD = 10  # overflow routing unit: a tenth of a shard (item 3 of the docstring)
_OVERFLOW_DEPTH = 8  # preferences precomputed per overflow block; past them, a full scan
_C1 = np.uint32(0x85EBCA6B)
_C2 = np.uint32(0xC2B2AE35)


class Piece(NamedTuple):
    """Samples ``[start, end)`` (global indices) of shard ``shard_id``; ``start < end``."""

    shard_id: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class MemberAssignment:
    """One member's work for one epoch.

    ``pieces`` are in reading order (shuffled per epoch when the assignment shuffles);
    ``padding`` lists global sample indices this member reads a second time so that every
    member's :attr:`num_samples` is the same. ``shard_ids`` are the distinct shards touched, in
    reading order.
    """

    member_id: str
    pieces: tuple[Piece, ...]
    padding: tuple[int, ...] = ()

    @property
    def shard_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(p.shard_id for p in self.pieces))

    @property
    def num_real_samples(self) -> int:
        return sum(p.end - p.start for p in self.pieces)

    @property
    def num_samples(self) -> int:
        return self.num_real_samples + len(self.padding)


@dataclass(frozen=True)
class Assignment:
    """The whole epoch: every member's work. Invariant: the members' pieces partition
    ``[0, total_samples)`` exactly, and all members have the same ``num_samples``."""

    epoch: int
    seed: int
    shuffle: bool
    shard_offsets: tuple[int, ...]
    members: Mapping[str, MemberAssignment]
    placement: tuple[str, ...] = ()
    """``placement[k]``: the member shard ``k`` is placed on (its home for caching); the member
    reads all of it unless part of it overflowed the member's quota."""

    @property
    def total_samples(self) -> int:
        return self.shard_offsets[-1]

    @property
    def samples_per_member(self) -> int:
        return next(iter(self.members.values())).num_samples if self.members else 0

    def shard_ids(self) -> dict[str, tuple[int, ...]]:
        """Each member's shard ids in reading order."""
        return {member: work.shard_ids for member, work in self.members.items()}

    def __getitem__(self, member_id: str) -> MemberAssignment:
        try:
            return self.members[member_id]
        except KeyError:
            raise DatasetError(f"member {member_id!r} is not part of this assignment") from None


# --------------------------------------------------------------------------- hashing


def _key64(data: bytes, seed: int) -> int:
    salt = (int(seed) % 2**128).to_bytes(16, "little")  # any integer seed; equal mod 2**128 is equal
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, salt=salt).digest(), "little")


def member_key(member_id: str, seed: int = 0) -> int:
    """Stable 64-bit key of a member id (blake2b salted with the seed)."""
    return _key64(b"member:" + member_id.encode("utf-8"), seed)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on uint64 (wrapping arithmetic)."""
    x = x.copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _shard_keys(num_shards: int, seed: int) -> np.ndarray:
    """Stable pseudo-random 32-bit keys of shards ``0..num_shards-1``."""
    base = np.uint64(_key64(b"shards", seed))
    with np.errstate(over="ignore"):
        x = np.arange(num_shards, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + base
    return (_mix64(x) >> np.uint64(32)).astype(np.uint32)


def _scores(shard_keys: np.ndarray, member_keys: np.ndarray) -> np.ndarray:
    """Rendezvous scores, shape (shards, members): murmur3's fmix32 (less its first shift,
    the keys being hashes already) of ``shard_key ^ member_key``. Computed in row blocks that
    stay in cache, which is four times faster than whole-matrix passes."""
    scores = np.empty((len(shard_keys), len(member_keys)), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for row in range(0, len(shard_keys), _SCORE_BLOCK_ROWS):
            block = scores[row : row + _SCORE_BLOCK_ROWS]
            np.bitwise_xor(shard_keys[row : row + _SCORE_BLOCK_ROWS, None], member_keys[None, :], out=block)
            block *= _C1
            block ^= block >> np.uint32(13)
            block *= _C2
            block ^= block >> np.uint32(16)
    return scores


def _preferences(scores: np.ndarray, shards: np.ndarray, depth: int = _PREFERENCE_DEPTH) -> list[list[int]]:
    """The ``depth`` best-ranked member indices of each of ``shards``, best first."""
    rows = scores[shards].astype(np.int64)
    depth = min(depth, rows.shape[1])
    top = np.argpartition(-rows, depth - 1, axis=1)[:, :depth] if depth < rows.shape[1] else np.argsort(-rows, axis=1)
    ranked = np.take_along_axis(top, np.argsort(-np.take_along_axis(rows, top, axis=1), axis=1, kind="stable"), axis=1)
    return ranked.tolist()


def _best_with_room(scores_row: np.ndarray, room_mask: np.ndarray) -> int:
    """Best-ranked member among those where ``room_mask`` is true (the fallback path)."""
    return int(np.where(room_mask, scores_row.astype(np.int64), -1).argmax())


def _canonical_members(member_ids: Iterable[str], seed: int) -> tuple[list[str], np.ndarray]:
    ids = list(member_ids)
    if not ids:
        raise DatasetError("member_ids is empty: at least one member is needed")
    for member in ids:
        if not isinstance(member, str) or not member:
            raise DatasetError(f"member id must be a non-empty string, not {member!r}")
    if len(set(ids)) != len(ids):
        dupes = sorted({m for m in ids if ids.count(m) > 1})
        raise DatasetError(f"member ids must be unique; repeated: {dupes}")
    keyed = sorted((member_key(m, seed), m) for m in ids)
    ordered = [m for _, m in keyed]
    keys32 = np.array([k >> 32 for k, _ in keyed], dtype=np.uint32)
    return ordered, keys32


def _epoch_rng(seed: int, epoch: int, *parts: int) -> np.random.Generator:
    words = [int(seed) % 2**128, int(epoch), *(int(p) for p in parts)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


# --------------------------------------------------------------------------- validation


def uniform_shard_sizes(total_samples: int, shard_size: int) -> list[int]:
    """Sizes of ``ceil(total/shard_size)`` shards of ``shard_size`` samples (the last shorter)."""
    _check_count("total_samples", total_samples)
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
        raise DatasetError(f"shard_size must be a positive integer, not {shard_size!r}")
    full, rest = divmod(total_samples, shard_size)
    return [shard_size] * full + ([rest] if rest else [])


def shard_offsets(shard_sizes: Sequence[int]) -> tuple[int, ...]:
    """``offsets[k]`` is the first global sample of shard ``k``; ``offsets[-1]`` is the total."""
    sizes = np.asarray(shard_sizes)
    if sizes.size and (sizes.dtype.kind not in "iu" or sizes.ndim != 1):
        raise DatasetError(f"shard_sizes must be a sequence of integers, not {shard_sizes!r:.80}")
    if sizes.size and sizes.min() < 0:
        bad = int(np.argmin(sizes))
        raise DatasetError(f"shard_sizes[{bad}] must be >= 0, not {sizes[bad]}")
    return tuple(np.concatenate(([0], np.cumsum(sizes, dtype=np.int64))).tolist())


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DatasetError(f"{name} must be an integer >= 0, not {value!r}")


def _check_seed_epoch(epoch: int, seed: int) -> None:
    _check_count("epoch", epoch)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DatasetError(f"seed must be an integer, not {seed!r}")


# --------------------------------------------------------------------------- the ring


def assign_shards(
    num_shards: int,
    member_ids: Iterable[str],
    epoch: int,
    seed: int = 0,
    *,
    shard_sizes: Sequence[int] | None = None,
    shuffle: bool = False,
    max_load: float = DEFAULT_MAX_LOAD,
) -> Assignment:
    """Assign ``num_shards`` shards (of ``shard_sizes`` samples; 1 each when omitted) to members.

    Returns an :class:`Assignment`: ``assignment.shard_ids()`` maps each member id to its shard
    ids, ``assignment[member].pieces`` gives the exact sample ranges. Pure and deterministic in
    all arguments; independent of the order of ``member_ids``.
    """
    _check_count("num_shards", num_shards)
    _check_seed_epoch(epoch, seed)
    sizes = np.ones(num_shards, dtype=np.int64) if shard_sizes is None else shard_sizes
    if len(sizes) != num_shards:
        raise DatasetError(f"shard_sizes has {len(sizes)} entries but num_shards is {num_shards}")
    if not (isinstance(max_load, (int, float)) and max_load >= 1.0):
        raise DatasetError(f"max_load must be a number >= 1.0, not {max_load!r}")
    offsets = shard_offsets(sizes)
    members, member_keys = _canonical_members(member_ids, seed)
    weights = np.diff(np.asarray(offsets, dtype=np.int64))

    shard_keys = _shard_keys(num_shards, seed)
    scores = _scores(shard_keys, member_keys)
    owner, second_hand = _place(weights, shard_keys, scores, max_load)
    piece_member, table, padding = _split_exact(weights, offsets, shard_keys, member_keys, scores, owner, second_hand)

    # Reading order: by first sample, or by a per-(seed, epoch) hash of the piece when shuffling.
    if shuffle:
        epoch_key = np.uint64(_key64(b"epoch:%d" % epoch, seed))
        sort_key = _mix64(table[:, 1].astype(np.uint64) ^ epoch_key)
    else:
        sort_key = table[:, 1]
    order = np.lexsort((sort_key, piece_member))
    table = table[order]
    counts = np.bincount(piece_member, minlength=len(members))
    rows = list(map(tuple.__new__, repeat(Piece), zip(*(column.tolist() for column in table.T))))
    result: dict[str, MemberAssignment] = {}
    position = 0
    for index, member in enumerate(members):
        count = int(counts[index])
        result[member] = MemberAssignment(member, tuple(rows[position : position + count]), padding[index])
        position += count
    placement = tuple(members[m] for m in owner.tolist())
    return Assignment(epoch, int(seed), bool(shuffle), offsets, result, placement)


def _place(
    weights: np.ndarray, shard_keys: np.ndarray, scores: np.ndarray, max_load: float
) -> tuple[np.ndarray, np.ndarray]:
    """Bounded-load rendezvous placement: ``(owner, second_hand)``, where ``owner[k]`` is the
    member index (canonical order) shard ``k`` is placed on and ``second_hand[k]`` says that it
    is not that shard's first choice (its first choice was full).

    Phase 1 (vectorised): each member accepts its first-choice shards, best score first (a shard
    that only just won it is the first to be refused), while its load stays within the cap. Phase 2: the rejected shards, in shard-key order, go to the
    best-ranked member that still has room for them (one always has: the cap is at least the
    mean load and at least the largest shard).
    """
    num_shards, num_members = scores.shape
    if num_shards == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=bool)
    total = int(weights.sum())
    cap = max(math.ceil(max_load * total / num_members), int(weights.max()))
    first_choice = scores.argmax(axis=1).astype(np.int64)
    owner = first_choice.copy()
    best = scores[np.arange(num_shards), owner].astype(np.int64)
    visit = np.lexsort((shard_keys, -best, owner))  # grouped by first choice, best score first
    grouped = owner[visit]
    load_after = np.cumsum(weights[visit])
    group_start = np.searchsorted(grouped, np.arange(num_members), side="left")
    load_before = np.concatenate(([0], load_after))[group_start][grouped]
    accepted = load_after - load_before <= cap
    load = np.bincount(grouped[accepted], weights=weights[visit][accepted], minlength=num_members).astype(np.int64)

    rejected = visit[~accepted]
    rejected = rejected[np.argsort(shard_keys[rejected], kind="stable")]
    load_list = load.tolist()
    for s, prefs in zip(rejected.tolist(), _preferences(scores, rejected)):
        w = int(weights[s])
        m = next((m for m in prefs if load_list[m] + w <= cap), None)
        if m is None:
            m = _best_with_room(scores[s], np.asarray(load_list) + w <= cap)
        owner[s] = m
        load_list[m] += w
    return owner, owner != first_choice


def _split_exact(
    weights: np.ndarray,
    offsets: tuple[int, ...],
    shard_keys: np.ndarray,
    member_keys: np.ndarray,
    scores: np.ndarray,
    owner: np.ndarray,
    second_hand: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """Cut the placement so every member holds exactly ``T`` samples (padding explicit).

    Returns ``(member_of_piece, piece_table, padding)`` where ``piece_table`` rows are
    ``(shard, start, end)``.
    """
    num_shards, num_members = scores.shape
    total = offsets[-1]
    per_member = -(-total // num_members)
    short = num_members * per_member - total  # members holding T-1 real samples + 1 padding
    quota = np.full(num_members, per_member, dtype=np.int64)
    quota[num_members - short :] -= 1
    starts = np.asarray(offsets[:-1], dtype=np.int64)

    # Each member keeps its own shards up to its quota: first the shards it is the first choice
    # of, then those it got because their first choice was full; each group best own score
    # first (ties by shard id). The shards most likely to be another member's after a change
    # come last, so they are the ones that overflow.
    shard_ids = np.arange(num_shards)
    own_score = scores[shard_ids, owner].astype(np.int64)
    order = np.lexsort((shard_ids, -own_score, second_hand, owner))
    grouped_owner = owner[order]
    grouped_weight = weights[order]
    held_after = np.cumsum(grouped_weight)
    first_of_group = np.searchsorted(grouped_owner, np.arange(num_members), side="left")
    base = np.concatenate(([0], held_after))[first_of_group]
    held_before = held_after - grouped_weight - base[grouped_owner]
    kept = np.clip(quota[grouped_owner] - held_before, 0, grouped_weight)
    remaining = quota - np.bincount(grouped_owner, weights=kept, minlength=num_members).astype(np.int64)

    has_kept = kept > 0
    table = [np.stack((order[has_kept], starts[order][has_kept], starts[order][has_kept] + kept[has_kept]), axis=1)]
    members = [grouped_owner[has_kept]]

    spill = np.nonzero(kept < grouped_weight)[0]
    if spill.size:
        rows, who = _route_overflow(
            order[spill], starts[order[spill]] + kept[spill], weights, starts, shard_keys, member_keys, remaining
        )
        table.append(rows)
        members.append(who)

    padding = [tuple(_padding_samples(index, num_members, short, total)) for index in range(num_members)]
    return np.concatenate(members), np.concatenate(table).reshape(-1, 3), padding


def _route_overflow(
    shards: np.ndarray,
    cut: np.ndarray,
    weights: np.ndarray,
    starts: np.ndarray,
    shard_keys: np.ndarray,
    member_keys: np.ndarray,
    room: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Hand the overflow (samples ``cut .. end`` of each of ``shards``) to the members with room.

    Every shard is cut into ``_BLOCKS_PER_SHARD`` fixed blocks (fewer when it is smaller), and
    each block has its own key and so its own rendezvous order over members. The overflowing
    blocks, shard by shard in shard-key order, go to the best-ranked members that still have
    room, each filled from its end (the part furthest from the quota cut, so a moving cut only
    changes the owner of the samples it uncovers). Fixed blocks rather than whole tails: a quota
    change then shifts a block's worth of samples rather than a shard's, and a shard's overflow
    spreads over several members, which cuts the re-routing when a member leaves or joins by
    about 40% at N = 256 (module docstring, item 4). Returns ``(rows, members)``: piece rows
    ``(shard, start, end)``, merged where one member got adjacent blocks, and each row's member.
    """
    size = weights[shards]
    blocks = np.minimum(size, _BLOCKS_PER_SHARD)
    first_block = ((cut - starts[shards] + 1) * blocks - 1) // size
    count = blocks - first_block
    block_shard = np.repeat(shards, count)
    block_index = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count - first_block, count)
    block_size = weights[block_shard]
    block_count = blocks[np.repeat(np.arange(len(shards)), count)]
    block_start = starts[block_shard] + block_index * block_size // block_count
    block_end = starts[block_shard] + (block_index + 1) * block_size // block_count
    block_start = np.maximum(block_start, np.repeat(cut, count))
    with np.errstate(over="ignore"):
        mixed = (shard_keys[block_shard].astype(np.uint64) << np.uint64(32)) | block_index.astype(np.uint64)
    block_keys = (_mix64(mixed ^ np.uint64(0xD6E8FEB86659FD93)) >> np.uint64(32)).astype(np.uint32)

    receivers = np.nonzero(room > 0)[0]
    block_scores = _scores(block_keys, member_keys[receivers])
    prefs = _top_columns(block_scores, _OVERFLOW_DEPTH).tolist()
    room_left = room[receivers].tolist()
    is_open = room[receivers] > 0  # mirrors room_left, for the rare fallback
    start_list, end_list = block_start.tolist(), block_end.tolist()
    out_block: list[int] = []
    out_member: list[int] = []
    out_start: list[int] = []
    out_end: list[int] = []
    # Blocks are visited shard by shard (shard-key order), each from its first overflowing block.
    for b in np.lexsort((block_index, shard_keys[block_shard])).tolist():
        low, end = start_list[b], end_list[b]
        for m in prefs[b]:
            free = room_left[m]
            if free:
                out_block.append(b)
                out_member.append(m)
                out_end.append(end)
                if free > end - low:
                    room_left[m] = free - (end - low)
                    out_start.append(low)
                    end = low
                    break
                room_left[m] = 0
                is_open[m] = False
                end -= free
                out_start.append(end)
                if end == low:
                    break
        while end > low:  # every receiver in the block's list is full: best-ranked with room
            m = _best_with_room(block_scores[b], is_open)
            take = min(room_left[m], end - low)
            out_block.append(b)
            out_member.append(m)
            out_start.append(end - take)
            out_end.append(end)
            room_left[m] -= take
            is_open[m] = room_left[m] > 0
            end -= take
    rows = np.stack((block_shard[out_block], np.asarray(out_start), np.asarray(out_end)), axis=1).astype(np.int64)
    who = receivers[np.asarray(out_member, dtype=np.int64)]
    # Merge the blocks one member got back to back in one shard into one piece.
    order = np.lexsort((rows[:, 1], who))
    rows, who = rows[order], who[order]
    joins = (who[1:] == who[:-1]) & (rows[1:, 0] == rows[:-1, 0]) & (rows[1:, 1] == rows[:-1, 2])
    head = np.concatenate(([True], ~joins))
    merged = rows[head]
    merged[:, 2] = rows[np.concatenate((head[1:], [True])), 2]
    return merged, who[head]


def _top_columns(scores: np.ndarray, depth: int) -> np.ndarray:
    """Column indices of each row's ``depth`` best scores, best first (ties: lower column).
    Repeated ``argmax`` passes: much faster than ``argpartition`` on many short rows."""
    depth = min(depth, scores.shape[1])
    work = scores.copy()
    top = np.empty((scores.shape[0], depth), dtype=np.int64)
    rows = np.arange(scores.shape[0])
    for rank in range(depth):
        top[:, rank] = work.argmax(axis=1)
        work[rows, top[:, rank]] = 0
    return top


def _padding_samples(index: int, num_members: int, short: int, total: int) -> list[int]:
    """The member at canonical ``index`` pads with one sample iff it is among the last ``short``."""
    if index < num_members - short or total == 0:
        return []
    return [(index - (num_members - short)) % total]


# --------------------------------------------------------------------------- epoch streams


def piece_order(seed: int, epoch: int, piece: Piece, shuffle: bool = True) -> np.ndarray:
    """Global sample indices of ``piece`` in reading order: ascending, or permuted per
    ``(seed, epoch, piece)`` when ``shuffle``."""
    indices = np.arange(piece.start, piece.end, dtype=np.int64)
    if shuffle:
        _epoch_rng(seed, epoch, 1, piece.shard_id, piece.start).shuffle(indices)
    return indices


def epoch_stream(assignment: Assignment, member_id: str) -> np.ndarray:
    """The global sample indices ``member_id`` reads this epoch, in order (padding last)."""
    work = assignment[member_id]
    parts = [piece_order(assignment.seed, assignment.epoch, p, assignment.shuffle) for p in work.pieces]
    parts.append(np.asarray(work.padding, dtype=np.int64))
    return np.concatenate(parts)


def completed_ranges(assignment: Assignment, member_id: str, cursor: int) -> list[tuple[int, int]]:
    """Global ranges ``member_id`` finished after reading ``cursor`` samples of its stream."""
    _check_count("cursor", cursor)
    stream = epoch_stream(assignment, member_id)
    if cursor > len(stream):
        raise DatasetError(f"cursor {cursor} is past the end of {member_id!r}'s {len(stream)} samples")
    done = np.unique(stream[:cursor])
    if done.size == 0:
        return []
    breaks = np.nonzero(np.diff(done) != 1)[0] + 1
    starts = np.concatenate(([done[0]], done[breaks]))
    ends = np.concatenate((done[breaks - 1] + 1, [done[-1] + 1]))
    return list(zip(starts.tolist(), ends.tolist()))


# --------------------------------------------------------------------------- range algebra


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent union of half-open ranges (empty ones dropped)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def subtract_ranges(ranges: Iterable[tuple[int, int]], minus: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` minus ``minus``, both as half-open ranges; result merged and sorted."""
    out: list[tuple[int, int]] = []
    cuts = merge_ranges(minus)
    for start, end in merge_ranges(ranges):
        pos = start
        for cut_start, cut_end in cuts:
            if cut_end <= pos or cut_start >= end:
                continue
            if cut_start > pos:
                out.append((pos, cut_start))
            pos = max(pos, cut_end)
            if pos >= end:
                break
        if pos < end:
            out.append((pos, end))
    return out


def _pieces_of(ranges: Sequence[tuple[int, int]], offsets: Sequence[int]) -> list[Piece]:
    """Cut global ranges at shard boundaries, tagging each part with its shard id."""
    pieces = []
    for start, end in ranges:
        if start < 0 or end > offsets[-1]:
            raise DatasetError(f"range [{start}, {end}) is outside [0, {offsets[-1]})")
        shard = int(np.searchsorted(offsets, start, side="right")) - 1
        while start < end:
            while offsets[shard + 1] <= start:
                shard += 1
            stop = min(end, offsets[shard + 1])
            pieces.append(Piece(shard, start, stop))
            start = stop
    return pieces


# --------------------------------------------------------------------------- elasticity


def split_ranges(
    ranges: Iterable[tuple[int, int]],
    member_ids: Iterable[str],
    offsets: Sequence[int],
    seed: int = 0,
) -> dict[str, MemberAssignment]:
    """Cut the union of ``ranges`` into equal consecutive parts, one per member.

    Members are taken in canonical order; each gets ``ceil(n/len(members))`` samples, the last
    ``short`` of them one fewer plus one recorded padding sample (a sample of the same work).
    """
    merged = merge_ranges(ranges)
    members, _ = _canonical_members(member_ids, seed)
    total = sum(end - start for start, end in merged)
    count = len(members)
    per_member = -(-total // count)
    short = count * per_member - total
    flat = iter(_pieces_of(merged, offsets))
    result: dict[str, MemberAssignment] = {}
    current: Piece | None = None
    first_sample = merged[0][0] if merged else 0
    for index, member in enumerate(members):
        need = per_member - (1 if index >= count - short else 0)
        own: list[Piece] = []
        while need > 0:
            current = current or next(flat)
            take = min(need, current.size)
            own.append(Piece(current.shard_id, current.start, current.start + take))
            need -= take
            current = Piece(current.shard_id, current.start + take, current.end) if take < current.size else None
        pad = (first_sample,) if index >= count - short and total else ()
        result[member] = MemberAssignment(member, tuple(own), pad)
    return result


def take_over(
    assignment: Assignment,
    completed: Mapping[str, Iterable[tuple[int, int]]],
    survivors: Iterable[str],
) -> dict[str, MemberAssignment]:
    """Extra work for each survivor: exactly the unfinished ranges of the members that left.

    ``completed`` maps member ids to the global ranges they finished this epoch (as gossiped;
    see :func:`completed_ranges`). Members of ``assignment`` absent from ``survivors`` are the
    lost ones; survivors keep their own unfinished work and add what this returns.
    """
    alive = list(survivors)
    unknown = sorted(set(alive) - set(assignment.members))
    if unknown:
        raise DatasetError(f"survivors {unknown} are not members of the epoch's assignment")
    lost = [m for m in assignment.members if m not in set(alive)]
    orphaned: list[tuple[int, int]] = []
    for member in lost:
        own = [(p.start, p.end) for p in assignment.members[member].pieces]
        orphaned.extend(subtract_ranges(own, completed.get(member, ())))
    return split_ranges(orphaned, alive, assignment.shard_offsets, assignment.seed)


def take_over_cursors(
    assignment: Assignment, cursors: Mapping[str, int], survivors: Iterable[str]
) -> dict[str, MemberAssignment]:
    """:func:`take_over`, each lost member credited with the first ``cursors[member]``
    samples of its epoch stream (capped at the stream's length; padding counts, as it is
    read last). What the survivors of a take-over agreement compute from its decision."""
    completed = {
        member: completed_ranges(assignment, member, min(cursor, assignment[member].num_samples))
        for member, cursor in cursors.items()
    }
    return take_over(assignment, completed, survivors)


def resume(assignment: Assignment, cursor: int, member_ids: Iterable[str]) -> dict[str, MemberAssignment]:
    """Work for a new world after a restart from the saved position ``(assignment.epoch, cursor)``.

    ``cursor`` is how many samples of its epoch stream every member of ``assignment`` had
    consumed (DDP ranks move in lockstep). The samples none of them consumed are split equally
    over ``member_ids``: none repeated, none missed.
    """
    done: list[tuple[int, int]] = []
    for member in assignment.members:
        stream_length = assignment.members[member].num_samples
        done.extend(completed_ranges(assignment, member, min(cursor, stream_length)))
    remaining = subtract_ranges([(0, assignment.total_samples)], done)
    return split_ranges(remaining, member_ids, assignment.shard_offsets, assignment.seed)


# --------------------------------------------------------------------------- whole files


class FileShare(list):
    """One member's whole files (a ``list`` of paths, in dataset order) and how balanced the split is.

    ``samples`` is how many samples these files hold; ``member_samples`` gives every
    member's count (canonical member order); ``imbalance`` is the largest member's count
    over the mean (1.0 is perfect; 1.0 for an empty dataset). Files are indivisible here,
    so members read different numbers of samples; DDP loops that need equal step counts
    use the exact per-sample split of :func:`assign_shards` instead.
    """

    def __init__(self, files: Iterable[str], samples: int, member_samples: Mapping[str, int]) -> None:
        super().__init__(files)
        self.samples = samples
        self.member_samples = dict(member_samples)
        total = sum(self.member_samples.values())
        mean = total / len(self.member_samples)
        self.imbalance = max(self.member_samples.values()) / mean if total else 1.0


def assign_files(file_samples: Sequence[int], member_ids: Iterable[str], seed: int = 0) -> dict[str, list[int]]:
    """Give every file (by index) to exactly one member, balancing the members' sample counts.

    Greedy longest-processing-time: files, largest first (ties by index), each go to the
    member holding the fewest samples so far (ties by canonical member order, so the
    result does not depend on the order of ``member_ids``). The largest member's load is
    at most 4/3 of the optimum, and exceeds the mean by at most the largest file.
    Every member's indices come back sorted; a member may get none (fewer files than
    members). Empty files are assigned too, so every listed file belongs to someone.
    """
    for count in file_samples:
        _check_count("file sample count", count)
    members, _ = _canonical_members(member_ids, seed)
    loads = [(0, position) for position in range(len(members))]  # a heap of (samples, position)
    owned: list[list[int]] = [[] for _ in members]
    for index in sorted(range(len(file_samples)), key=lambda i: (-file_samples[i], i)):
        load, position = heapq.heappop(loads)
        owned[position].append(index)
        heapq.heappush(loads, (load + file_samples[index], position))
    return {member: sorted(indices) for member, indices in zip(members, owned)}
