"""Which steps to delete after a commit (pure: no IO).

Rule: keep the ``keep_last_n`` newest committed steps, except that a protected step
(the one just committed, or any the caller is still writing) is never deleted; it takes
the place of the oldest one that would otherwise stay. So exactly ``keep_last_n``
committed steps remain whenever at least that many exist and no more than that many are
protected. In-flight (uncommitted) steps older than the newest committed step are
orphans of crashed or failed saves and are deleted unless protected.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ..errors import ConfigError
from .commit import StorageView


@dataclass(frozen=True)
class RetentionPlan:
    delete_committed: tuple[int, ...]
    delete_orphans: tuple[int, ...]


def validate_keep_last_n(keep_last_n: object) -> int:
    if isinstance(keep_last_n, bool) or not isinstance(keep_last_n, int) or keep_last_n < 1:
        raise ConfigError("keep_last_n", f"must be a positive integer, not {keep_last_n!r}")
    return keep_last_n


def plan_retention(view: StorageView, keep_last_n: int, protected: Collection[int]) -> RetentionPlan:
    validate_keep_last_n(keep_last_n)
    kept = [s for s in view.committed if s in protected]
    for step in reversed(view.committed):
        if len(kept) >= keep_last_n:
            break
        if step not in kept:
            kept.append(step)
    newest = view.newest_committed
    orphans = [
        s for s in sorted(view.in_flight) if newest is not None and s < newest and s not in protected
    ]
    return RetentionPlan(
        delete_committed=tuple(s for s in view.committed if s not in kept),
        delete_orphans=tuple(orphans),
    )
