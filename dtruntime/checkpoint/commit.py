"""Commit bookkeeping shared by the single-rank commit and the multi-rank leader (pure).

Protocol: each rank writes its part to its final key and reports
``(step, rank, size, checksum, codec)``; once every rank of the step has reported, the
committer writes one manifest, and that single write is the commit. :class:`StepCommit`
collects the reports of one step; :func:`scan_listing` turns a storage listing
(key -> size) into committed and in-flight steps; :func:`recover_step` rebuilds a
:class:`StepCommit` for an in-flight step from the listing alone (part names carry rank,
codec and CRC), so a new leader can finish the step when it is complete or abandon it.

Nothing here does IO, reads a clock, or keeps global state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CheckpointError
from . import layout
from .manifest import Manifest, PartRecord


@dataclass(frozen=True, slots=True)
class PartReport:
    """What a rank reports after its part is durable at ``layout.part_key(step, rank, codec, checksum)``."""

    step: int
    rank: int
    size: int
    checksum: int
    codec: str

    @property
    def record(self) -> PartRecord:
        return PartRecord(rank=self.rank, size=self.size, checksum=self.checksum, codec=self.codec)


class StepCommit:
    """Reports of one step until every rank ``0..world_size-1`` is in.

    Idempotent: the same report twice is a no-op (a rank may re-send to a new leader).
    A different report for a rank that already reported, a report for another step or an
    out-of-range rank raises CheckpointError and leaves the state unchanged.
    """

    def __init__(self, step: int, world_size: int) -> None:
        self.step = layout.validate_step(step)
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise CheckpointError(f"world_size must be a positive integer, not {world_size!r}")
        self.world_size = world_size
        self._reports: dict[int, PartReport] = {}

    def add(self, report: PartReport) -> bool:
        """Record ``report``; return True when the step is complete afterwards."""
        if report.step != self.step:
            raise CheckpointError(f"report for step {report.step} sent to the commit of step {self.step}")
        if not 0 <= report.rank < self.world_size:
            raise CheckpointError(f"step {self.step}: rank {report.rank} outside world of {self.world_size}")
        previous = self._reports.get(report.rank)
        if previous is not None and previous != report:
            raise CheckpointError(
                f"step {self.step} rank {report.rank}: conflicting parts {previous.record.file} "
                f"({previous.size} B) and {report.record.file} ({report.size} B)"
            )
        self._reports[report.rank] = report
        return self.is_complete

    @property
    def is_complete(self) -> bool:
        return len(self._reports) == self.world_size

    @property
    def reports(self) -> tuple[PartReport, ...]:
        """The reports in, by rank."""
        return tuple(self._reports[r] for r in sorted(self._reports))

    @property
    def missing_ranks(self) -> tuple[int, ...]:
        return tuple(r for r in range(self.world_size) if r not in self._reports)

    def manifest(self, created_unix: float, metadata: Mapping[str, Any] | None = None) -> Manifest:
        """The manifest to write; CheckpointError while ranks are missing."""
        if not self.is_complete:
            raise CheckpointError(f"step {self.step} is missing ranks {list(self.missing_ranks)}")
        return Manifest(
            step=self.step,
            world_size=self.world_size,
            parts=tuple(self._reports[r].record for r in range(self.world_size)),
            created_unix=created_unix,
            metadata=dict(metadata or {}),
        )


@dataclass(frozen=True)
class StorageView:
    """What a listing shows. ``committed``: steps whose manifest object exists, ascending.

    ``in_flight``: steps with files but no manifest, each with the parts found (reports
    rebuilt from names and listed sizes). ``files``: every layout key per step, for deletion.
    """

    committed: tuple[int, ...]
    in_flight: Mapping[int, tuple[PartReport, ...]]
    files: Mapping[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def newest_committed(self) -> int | None:
        return self.committed[-1] if self.committed else None


def scan_listing(listing: Mapping[str, int]) -> StorageView:
    """Classify ``listing`` (key relative to the root -> size); keys outside the layout are ignored."""
    files: dict[int, list[str]] = {}
    parts: dict[int, list[PartReport]] = {}
    committed: set[int] = set()
    for key, size in listing.items():
        split = layout.split_key(key)
        if split is None:
            continue
        step, name = split
        files.setdefault(step, []).append(key)
        if name == layout.MANIFEST_NAME:
            committed.add(step)
        parsed = layout.parse_part_name(name)
        if parsed is not None:
            rank, codec, checksum = parsed
            parts.setdefault(step, []).append(PartReport(step, rank, size, checksum, codec))
    in_flight = {
        step: tuple(sorted(parts.get(step, ()), key=lambda r: (r.rank, r.checksum)))
        for step in files
        if step not in committed
    }
    return StorageView(
        committed=tuple(sorted(committed)),
        in_flight=in_flight,
        files={step: tuple(sorted(keys)) for step, keys in files.items()},
    )


def recover_step(view: StorageView, step: int, world_size: int) -> StepCommit:
    """Rebuild the commit state of in-flight ``step`` from storage alone.

    The result is complete when every rank has exactly one part; the caller then writes
    its manifest (finish) or, when not complete, abandons the step and deletes nothing
    (retention removes its parts once a newer step commits). Two
    different parts for one rank (a rank retried with other bytes) raise CheckpointError:
    the step cannot be finished from storage and must be abandoned.
    """
    if step in view.committed:
        raise CheckpointError(f"step {step} is already committed")
    commit = StepCommit(step, world_size)
    for report in view.in_flight.get(step, ()):
        commit.add(report)
    return commit
