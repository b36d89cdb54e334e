"""Survivors agree on a new process group: who is in, who hosts its store, who is ahead.

A *generation* is one torch.distributed process group among the workers live at its
start. Forming generation ``g`` takes three agreement barriers of the control plane
(``elastic=True``, so a worker lost meanwhile is left out rather than failing them):

1. **members**: each worker brings a digest of the ids it sees live, by rank (any
   world size fits a barrier value; equal digests mean equal lists). Views differ for a
   moment after a loss (gossip is still spreading the verdict); a round whose values
   differ is retried, after a heartbeat, under a new round number. Every worker gets
   the same agreement record, so every worker retries the same rounds. A round also
   does not count if a member died during it: the release names the members the
   leader excluded as dead, so every survivor sees that and retries too. The decision
   reads the release alone, never the local view after it (which can change between
   survivors' reads); a member that dies just after an agreed round fails the
   rendezvous instead, and every survivor forms the next generation.
2. **steps**: each worker brings how many optimizer steps it has applied. Training is
   lock-step, so the values differ by at most one (a worker lost at the end of an
   all-reduce can leave some survivors with the step applied and others without);
   the most advanced worker is the *source* whose state the others take.
3. **store**: dense rank 0 (the lowest-ranked member) hosts a fresh TCPStore for this
   generation and brings its address; the others bring "". It is the reference of the
   agreement, so every worker reads the address from the record. No process owns the
   store of the next generation: if the host dies, the next generation has another.

Edge cases: a worker that is not in the agreed member list (declared dead and come
back) raises :class:`~dtruntime.errors.WorkerLostError` naming itself; a round whose
store never completes (a member died between the agreement and the rendezvous) raises
and the caller forms the next generation.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from ..api.orchestrator import TrainingOrchestrator
from ..errors import DtruntimeError, WorkerLostError
from ..runtime.bootstrap import split_endpoint

log = logging.getLogger("dtruntime.elastic")

MAX_MEMBER_ROUNDS = 50


@dataclass(frozen=True)
class Generation:
    """One agreed process group: its members by rank, this worker's place, the source."""

    number: int
    members: tuple[str, ...]
    dense_rank: int
    source: int  # dense rank of the most advanced worker (lowest such rank)
    source_steps: int
    steps_differ: bool  # some member is behind the source: the state must be sent (same on every member)
    store_address: str  # host:port of this generation's TCPStore

    @property
    def size(self) -> int:
        return len(self.members)


def live_ids(orchestrator: TrainingOrchestrator) -> list[str]:
    """The ids this worker sees live (suspects included) and not hung, by rank.

    A worker the progress watchdog declares hung counts as lost at once (it leaves the
    cluster a few gossip rounds later, which settles any view that differs meanwhile).
    """
    hung = {report.worker_id for report in orchestrator.hung_workers()}
    return [member.worker_id for member in orchestrator.members() if member.worker_id not in hung]


def agree_generation(
    orchestrator: TrainingOrchestrator, number: int, steps_applied: int, *, settle_s: float, timeout: float
) -> tuple[Generation, dist.TCPStore | None]:
    """Form generation ``number``; returns it and the store this worker hosts (dense rank 0)."""
    for round_number in range(MAX_MEMBER_ROUNDS):
        tag = f"dtruntime.elastic/{number}/{round_number}"
        members = tuple(live_ids(orchestrator))
        digest = hashlib.blake2b("\n".join(members).encode("utf-8"), digest_size=8).hexdigest()
        agreement = orchestrator.agree_sync(f"{tag}/members", f"{len(members)}:{digest}", timeout=timeout,
                                            elastic=True)
        if agreement.agreed and not set(agreement.excluded) & set(members):
            break  # decided on the release alone: the same record, so the same decision, everywhere
        log.info("generation %d round %d: views differ (%d members here; %s); retrying", number, round_number,
                 len(members), f"{agreement.differing[0]} differs" if agreement.differing
                 else f"{', '.join(agreement.excluded)} died meanwhile")
        time.sleep(settle_s)
    else:
        raise DtruntimeError(f"generation {number}: no agreed membership after {MAX_MEMBER_ROUNDS} rounds")
    if orchestrator.worker_id not in members:
        raise WorkerLostError(
            f"this worker ({orchestrator.worker_id}) is not in the survivors' group {list(members)}",
            [orchestrator.worker_id], [orchestrator.rank],
        )
    dense_rank = members.index(orchestrator.worker_id)

    steps = orchestrator.agree_sync(f"{tag}/steps", str(steps_applied), timeout=timeout, elastic=True)
    reference_steps = int(steps.reference_value)
    if steps.agreed or reference_steps >= int(steps.differing_value):
        source, source_steps = 0, reference_steps
    else:
        source, source_steps = members.index(steps.differing[0]), int(steps.differing_value)
    # With values k and k+1 only, the reference and the first differing worker hold both.

    store: dist.TCPStore | None = None
    offer = ""
    if dense_rank == 0:
        host, _ = split_endpoint(orchestrator.endpoint)
        store = dist.TCPStore(host, 0, len(members), is_master=True, timeout=timedelta(seconds=timeout),
                              wait_for_workers=False)
        offer = f"{host}:{store.port}"
    hosted = orchestrator.agree_sync(f"{tag}/store", offer, timeout=timeout, elastic=True)
    if not hosted.reference_value:
        raise DtruntimeError(f"generation {number}: the store's host {members[0]} was lost before offering it")
    generation = Generation(number, members, dense_rank, source, source_steps, not steps.agreed,
                            hosted.reference_value)
    return generation, store


def init_generation_group(
    generation: Generation, hosted: dist.TCPStore | None, backend: str, timeout: float
) -> None:
    """Make ``generation`` the default process group (the previous one must be destroyed)."""
    host, port = generation.store_address.rsplit(":", 1)
    store = hosted if hosted is not None else dist.TCPStore(
        host, int(port), generation.size, is_master=False, timeout=timedelta(seconds=timeout)
    )
    dist.init_process_group(
        backend, store=dist.PrefixStore(f"dtruntime.elastic/{generation.number}/", store),
        rank=generation.dense_rank, world_size=generation.size, timeout=timedelta(seconds=timeout),
    )
