"""Dataset spec check: one agreement round on a summary of each worker's registration.

Every worker arrives at ``dtruntime.dataset:{name}`` (:func:`spec_barrier_id`) with a
summary of its spec, ``field=token;...`` with every field in the same order (the data
layer's ``spec_summary`` writes it). :func:`spec_mismatch` reads the release: None when
every worker brought the same summary, else what to tell the user, from this worker's
side. Pure: the driver (``DatasetRegistry.register``) arrives, waits and raises.

Edge cases: a worker whose summary equals the reference (lowest-ranked worker's) compares
itself with the first differing worker, any other worker with the reference; a summary
missing a field (a peer of another version) shows that field's token as ``?``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["SpecMismatch", "spec_barrier_id", "spec_mismatch", "summary_difference"]


class SpecAgreement(Protocol):
    """The fields of an agreement release the check reads."""

    @property
    def reference(self) -> str: ...

    @property
    def reference_value(self) -> str: ...

    @property
    def differing(self) -> tuple[str, ...]: ...

    @property
    def differing_value(self) -> str: ...


@dataclass(frozen=True, slots=True)
class SpecMismatch:
    """``field`` is ``own_token`` here and ``other_token`` on ``other_worker``;
    ``differing`` lists every worker whose summary differs from ``reference``'s."""

    other_worker: str
    field: str
    own_token: str
    other_token: str
    reference: str
    differing: tuple[str, ...]


def spec_barrier_id(name: str) -> str:
    """The agreement barrier of dataset ``name`` (at most 200 printable characters)."""
    return f"dtruntime.dataset:{name}"


def spec_mismatch(mine: str, result: SpecAgreement) -> SpecMismatch | None:
    """How this worker's summary ``mine`` differs from another's in ``result``, or None."""
    if not result.differing:
        return None
    other_worker, other = (
        (result.differing[0], result.differing_value) if mine == result.reference_value
        else (result.reference, result.reference_value)
    )
    field, own_token, other_token = summary_difference(mine, other) or ("?", "?", "?")
    return SpecMismatch(other_worker, field, own_token, other_token, result.reference, result.differing)


def summary_difference(mine: str, theirs: str) -> tuple[str, str, str] | None:
    """The first ``(field, my token, their token)`` where two summaries differ, or None."""
    own = dict(token.split("=", 1) for token in mine.split(";"))
    other = dict(token.split("=", 1) for token in theirs.split(";") if "=" in token)
    for name, token in own.items():
        if other.get(name) != token:
            return name, token, other.get(name, "?")
    return None
