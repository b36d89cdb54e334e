"""The one commit path: the create-only manifest write, and the retention sweep after it.

Every committer goes through here: the single-rank writer (:mod:`.writer`), the
multi-rank leader (:mod:`.leader`) and DCP's coordinator (:mod:`.dcp`). Each decides
*what* to commit and *which* steps to protect; this module does the IO and gives a
manifest already in storage one meaning for all of them.

:func:`publish_manifest` is the commit: one create-only write, so no commit is ever
overwritten. A manifest of the step already there (another process committed the step
between this committer's checks and its write: a second leader, a second job on the
same root) is read back and decides:

* it names the same parts (same world size, the same record per rank: the same bytes
  at the same keys): the step is committed with exactly the data this committer meant
  to commit, which is a success. The stored manifest stays as it is, so its
  ``metadata`` and ``created_unix`` are the first committer's; a WARNING says so when
  the metadata differs. The stored manifest is returned, for a caller whose metadata
  is load-bearing (DCP's names its metadata file's checksum).
* it names other parts, or cannot be read or decoded: CheckpointError ("step N already
  exists (committed) at ...").

Whatever fails, nothing is deleted: the parts stay, since they may be the ones a
manifest names (the existing one, or this one if a failed write landed after all);
retention removes them with their step, or as orphans once a newer step commits.

:func:`sweep` carries out :func:`~.retention.plan_retention` on storage. A failure is
logged, never raised: the step is committed, and the next commit's sweep retries.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from ..errors import CheckpointError
from . import layout
from .commit import StorageView
from .manifest import Manifest, decode_manifest, encode_manifest
from .retention import RetentionPlan, plan_retention
from .storage import Storage

log = logging.getLogger("dtruntime.checkpoint")


def publish_manifest(storage: Storage, manifest: Manifest) -> Manifest:
    """Commit ``manifest`` (create-only); return the manifest that storage now holds.

    That is ``manifest`` itself, or an equivalent one another committer wrote first (see
    the module docstring). Raises CheckpointError when the write fails or a manifest
    naming other parts, or an unreadable one, is already there.
    """
    step, key = manifest.step, layout.manifest_key(manifest.step)
    source = storage.describe(key)
    try:
        storage.write_manifest(key, encode_manifest(manifest))
    except FileExistsError:
        pass
    except OSError as exc:
        raise CheckpointError(f"step {step}: committing {source} failed: {exc}") from exc
    else:
        return manifest
    try:
        existing = decode_manifest(storage.read(key), expected_step=step, source=source)
    except (CheckpointError, OSError) as exc:
        raise CheckpointError(f"step {step} already exists (committed) at {source}, unreadable: {exc}") from exc
    if (existing.world_size, existing.parts) != (manifest.world_size, manifest.parts):
        raise CheckpointError(f"step {step} already exists (committed) at {source}, naming other parts")
    if existing.metadata != manifest.metadata:
        log.warning("checkpoint step %d was committed at %s by another committer with the same parts; "
                    "its metadata stays, not this commit's", step, source)
    return existing


def sweep(storage: Storage, view: StorageView, keep_last_n: int, protected: Collection[int]) -> RetentionPlan | None:
    """Delete the steps :func:`plan_retention` names for ``view``; never one in ``protected``.

    ``view`` is the caller's listing: what it shows is what may be deleted, so a step
    that appears later (queued or written after the listing) is never touched. Returns
    the plan once every deletion is done, or None after a storage failure (logged as a
    WARNING; some steps may be gone, the rest are retried by the next sweep).
    """
    plan = plan_retention(view, keep_last_n, protected=protected)
    try:
        for step in plan.delete_committed + plan.delete_orphans:
            storage.delete_step(step, view.files.get(step, ()))
    except OSError as exc:
        log.warning("retention under %s failed (retried after the next commit): %s", storage.url, exc)
        return None
    return plan
