"""The leader's half of the multi-rank commit: decide a step from storage alone.

Runs in the orchestrator's commit thread of whichever worker leads (never the driver
thread). Storage is the truth, the ranks' reports only say when to look, so the same
code finishes a step for a new leader that inherited it, for a rank that died after
writing its part, or for two leaders at once (the manifest write is create-only; both
would write the same parts).

Decision for a step (:meth:`LeaderCommitter.decide`):

* its manifest exists and decodes: COMMITTED;
* a rank reported that its write failed: ABANDONED naming it (nothing is written);
* every rank's part is in the listing, one per rank, as reported: write the manifest,
  COMMITTED (FAILED if the write fails; a manifest already there with the same parts
  is a commit by another leader, see :mod:`.publish`);
* otherwise ABANDONED, naming the ranks the leader gave up on and any reported part
  that storage does not hold. Nothing is deleted then: retention removes the parts once
  a newer step commits (deleting now could race with a late writer's manifest).

Retention after each commit deletes old committed steps and *incomplete* in-flight steps
older than the newest commit. An in-flight step whose every rank's part is stored is
kept: steps can be decided out of order (a rank's report of step 10 dropped as stale
and re-sent after its report of step 40 went through), and such a step is still waiting
for its decision, which will commit it. Each rank writes its steps in order, so when a newer
step commits, an older incomplete one can no longer complete.

On taking over (:meth:`LeaderCommitter.recover`): finish every in-flight step whose parts
are all there, delete incomplete ones older than the newest commit (orphans), and
return every committed step so the node answers late reports at once.

Invariant: a manifest is only ever written naming exactly one listed part per rank.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import CheckpointError
from ..protocol.messages import CommitOutcome, PartDone
from .commit import PartReport, StepCommit, StorageView, recover_step
from .publish import publish_manifest, sweep
from .reads import read_manifest, scan
from .storage import Storage

log = logging.getLogger("dtruntime.checkpoint")


class LeaderCommitter:
    """Writes manifests of a ``world_size``-rank checkpoint under ``storage``.

    ``metadata_for(step)`` gives the metadata this worker's own save of the step carried
    (stored in the manifest); ``on_committed(step)`` runs after each commit it sees.
    """

    def __init__(
        self,
        storage: Storage,
        world_size: int,
        keep_last_n: int,
        metadata_for: Callable[[int], Mapping[str, Any]],
        on_committed: Callable[[int], None],
    ) -> None:
        self.storage = storage
        self.world_size = world_size
        self.keep_last_n = keep_last_n
        self._metadata_for = metadata_for
        self._on_committed = on_committed

    def decide(
        self, step: int, reports: tuple[PartDone, ...], missing_ranks: tuple[int, ...]
    ) -> tuple[CommitOutcome, tuple[int, ...]]:
        view = scan(self.storage)
        if step in view.committed and self._manifest_readable(step):
            self._committed(step)
            return CommitOutcome.COMMITTED, ()
        failed = tuple(r.rank for r in reports if not r.ok)
        if failed:
            return CommitOutcome.ABANDONED, tuple(sorted(set(missing_ranks) | set(failed)))
        try:
            commit = recover_step(view, step, self.world_size)
        except CheckpointError as exc:
            log.warning("checkpoint step %d cannot be finished: %s", step, exc)
            return CommitOutcome.ABANDONED, tuple(sorted(set(missing_ranks) | {r.rank for r in reports}))
        stored = {report.rank: report for report in commit.reports}
        absent = {r.rank for r in reports if stored.get(r.rank) != PartReport(step, r.rank, r.size, r.checksum, r.codec)}
        if commit.is_complete and not absent:
            return self._finish(commit)
        return CommitOutcome.ABANDONED, tuple(sorted(set(missing_ranks) | absent))

    def recover(self) -> list[int]:
        view = scan(self.storage)
        newest = view.newest_committed
        finished = []
        for step in sorted(view.in_flight):
            try:
                commit = recover_step(view, step, self.world_size)
            except CheckpointError:
                commit = None
            if commit is not None and commit.is_complete:
                if self._finish(commit)[0] == CommitOutcome.COMMITTED:
                    finished.append(step)
                    log.info("finished checkpoint step %d from storage after taking over as leader", step)
            elif newest is not None and step < newest:
                self._delete(step, view)
        self._retain(finished[-1] if finished else newest)
        return sorted(set(view.committed) | set(finished))

    def _finish(self, commit: StepCommit) -> tuple[CommitOutcome, tuple[int, ...]]:
        """Publish ``commit``'s manifest (:func:`~.publish.publish_manifest`: one already
        there naming the same parts is a commit by another leader): COMMITTED, else FAILED."""
        step = commit.step
        manifest = commit.manifest(created_unix=time.time(), metadata=self._metadata_for(step))
        try:
            publish_manifest(self.storage, manifest)
        except CheckpointError as exc:
            log.error("checkpoint step %d: %s", step, exc)
            return CommitOutcome.FAILED, ()
        self._committed(step)
        return CommitOutcome.COMMITTED, ()

    def _committed(self, step: int) -> None:
        self._on_committed(step)
        self._retain(step)

    def _retain(self, just_committed: int | None) -> None:
        """Apply retention (keep_last_n, incomplete orphans); a failure is retried after the next commit."""
        try:
            view = scan(self.storage)
        except CheckpointError as exc:
            log.warning("retention under %s failed (retried after the next commit): %s", self.storage.url, exc)
            return
        protected = {step for step in view.in_flight if self._is_complete(view, step)}
        if just_committed is not None:
            protected.add(just_committed)
        sweep(self.storage, view, self.keep_last_n, protected)

    def _is_complete(self, view: StorageView, step: int) -> bool:
        try:
            return recover_step(view, step, self.world_size).is_complete
        except CheckpointError:  # two parts for one rank: never finishable
            return False

    def _delete(self, step: int, view: StorageView) -> None:
        try:
            self.storage.delete_step(step, view.files.get(step, ()))
        except OSError as exc:
            log.warning("cannot delete orphaned checkpoint step %d: %s", step, exc)

    def _manifest_readable(self, step: int) -> bool:
        try:
            read_manifest(self.storage, step)
        except CheckpointError:
            return False
        return True

