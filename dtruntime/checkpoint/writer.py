"""The writer thread: write each queued save's part, then commit it alone or report it.

One writer per :class:`~.manager.CheckpointManager` takes :class:`SaveJob`\\ s from a FIFO
queue, so saves commit in the order they were queued. Per job it

1. refuses a step whose manifest exists (CheckpointError "step S already exists");
2. writes this rank's part at its final key (size and CRC-32C in its name), compressed
   per the setting: an uncompressed tensor part is streamed from the staging buffer and
   checksummed as it is written; any other part is encoded whole, checksummed, written;
3. without an orchestrator (a world of one) commits the step through the one commit
   path, :func:`~.publish.publish_manifest`, and the outcome is a :class:`SaveResult`;
   with one, reports the part to the leader, and the outcome is the orchestrator's
   future of the leader's verdict.

Every outcome, a failure included, goes to ``on_written(job, outcome)`` (a CheckpointError
for a failure; any other exception is wrapped in one): nothing is lost silently. The
payload and staging buffer are released before that call, so a new save can take the
slot. A failure before the commit deletes only the part this job wrote, so an earlier
checkpoint is never touched; a failed part write is reported to the leader too, so the
other ranks' saves of the step fail at once instead of waiting.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CheckpointError, DtruntimeError
from . import layout
from .commit import PartReport, StepCommit
from .compression import compress, worth_compressing
from .integrity import Buffer, crc32c
from .publish import publish_manifest
from .results import SaveResult
from .storage import Storage
from .threads import QueueThread

_AUTO_SAMPLE = 8 << 20  # ``auto`` compression samples this much of a tensor part's body

#: What a job came to: committed, failed, or (with an orchestrator) awaiting the leader.
Outcome = SaveResult | CheckpointError | concurrent.futures.Future[None]


@dataclass
class SaveJob:
    """One queued save. ``data`` holds a bytes payload, ``staged`` a tensor-native one
    (a :class:`~.staging.StagedPart`); the writer clears both once the part is written."""

    step: int
    data: Buffer | None
    metadata: dict[str, Any]
    future: concurrent.futures.Future[SaveResult]
    staged: Any = None
    caller_saw_failure: bool = False
    # Set once the part is written, for the SaveResult of a leader-committed step.
    raw_size: int = 0
    stored_size: int = 0
    codec: str = ""
    started: float = 0.0


class Writer(QueueThread[SaveJob]):
    """The writer thread of one manager (see the module docstring).

    ``orchestrator`` is None for a world of one (this writer commits), else the one the
    parts are reported to. ``on_written`` runs in the writer thread.
    """

    def __init__(
        self,
        storage: Storage,
        rank: int,
        compression: str,
        orchestrator: Any,
        on_written: Callable[[SaveJob, Outcome], None],
    ) -> None:
        self._storage = storage
        self._rank = rank
        self._compression = compression
        self._orchestrator = orchestrator
        self._on_written = on_written
        super().__init__("dtruntime-checkpoint-writer")

    def submit(self, job: SaveJob) -> None:
        self._queue.put(job)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            started = time.perf_counter()
            outcome: Outcome
            try:
                outcome = self._write_step(job, started)
            except CheckpointError as exc:
                outcome = exc
            except Exception as exc:  # noqa: BLE001 - reported through the handle, never lost
                outcome = CheckpointError(f"saving step {job.step} to {self._storage.url} failed: {exc!r}")
                outcome.__cause__ = exc
            job.data = None  # free the payload before a new save can take the slot
            if job.staged is not None:
                job.staged.release()
                job.staged = None
            self._on_written(job, outcome)

    def _write_step(self, job: SaveJob, started: float) -> Outcome:
        """Write this rank's part; then commit it (alone) or report it (to the leader)."""
        step, storage = job.step, self._storage
        manifest_key = layout.manifest_key(step)
        try:
            existing = storage.read_if_exists(manifest_key)
        except OSError as exc:
            raise CheckpointError(f"step {step}: cannot reach {storage.describe(manifest_key)}: {exc}") from exc
        if existing is not None:
            raise CheckpointError(f"step {step} already exists (committed) at {storage.describe(manifest_key)}")

        report, raw_size = self._write_part(job)
        if self._orchestrator is not None:
            job.raw_size, job.stored_size, job.codec, job.started = raw_size, report.size, report.codec, started
            return self._report(report, ok=True)
        commit = StepCommit(step, 1)
        commit.add(report)
        publish_manifest(storage, commit.manifest(created_unix=time.time(), metadata=job.metadata))
        return SaveResult(step, raw_size, report.size, report.codec, time.perf_counter() - started)

    def _write_part(self, job: SaveJob) -> tuple[PartReport, int]:
        """Write ``job``'s part at its final key; return its report and raw size.

        An uncompressed tensor part is written from the staging buffer once the caller's
        copy is done, checksummed as it is written (``auto`` decides on the first 8 MiB of
        its body, sampled while the copy goes on); any other part is encoded whole,
        checksummed, then written.
        """
        step, storage, staged = job.step, self._storage, job.staged
        if staged is not None and (
            self._compression == "none"
            or (self._compression == "auto" and not worth_compressing(staged.prefix(_AUTO_SAMPLE)))
        ):
            directory = layout.step_dir(step)
            try:
                key, size, checksum = storage.write_part_as(
                    directory, lambda crc: layout.part_key(step, self._rank, "none", crc),
                    staged.chunks(),
                )
            except (OSError, CheckpointError) as exc:
                if self._orchestrator is not None:
                    self._report(PartReport(step, self._rank, 0, 0, "none"), ok=False)
                raise CheckpointError(f"step {step}: writing a part under {storage.describe(directory)} failed: {exc}") from exc
            return PartReport(step, self._rank, size, checksum, "none"), staged.size
        if staged is not None:
            raw_size = staged.size
            codec, stored = compress(b"".join(staged.chunks()), self._compression)
        else:
            assert job.data is not None
            raw_size = len(job.data)
            codec, stored = compress(job.data, self._compression)
        report = PartReport(step, self._rank, len(stored), crc32c(stored), codec)
        part_key = layout.part_key(step, self._rank, codec, report.checksum)
        try:
            storage.write_part(part_key, stored)
        except OSError as exc:
            self._discard_part(part_key)
            if self._orchestrator is not None:
                self._report(report, ok=False)  # the other ranks' saves of this step fail at once
            raise CheckpointError(f"step {step}: writing {storage.describe(part_key)} failed: {exc}") from exc
        return report, raw_size

    def _report(self, report: PartReport, ok: bool) -> concurrent.futures.Future[None]:
        try:
            return self._orchestrator.report_part(report.step, report.size, report.checksum, report.codec, ok=ok)
        except DtruntimeError as exc:
            raise CheckpointError(f"step {report.step}: cannot report the part to the leader: {exc}") from exc

    def _discard_part(self, key: str) -> None:
        try:
            self._storage.remove(key)
        except OSError:
            pass  # orphan cleanup removes it after the next commit

