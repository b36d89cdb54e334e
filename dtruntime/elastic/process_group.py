"""``init_process_group`` that survives torchrun's restarts.

Why this exists (measured with torch 2.13, gloo, ``torchrun --max-restarts 2``, a worker
``kill -9``'ed): torchrun's agent hosts one TCPStore for the whole job and hands its
address to every restart attempt (``TORCHELASTIC_USE_AGENT_STORE=True``, static and c10d
rendezvous alike). ``torch.distributed``'s ``env://`` handler connects to that store
without a per-attempt prefix (its comment assumes a new store per retry), so the
restarted workers' process group reads the keys the dead attempt left behind: gloo
takes a peer's address from the previous attempt, dials a port nobody listens on any
more, and ``init_process_group`` fails with ``Gloo connectFullMesh failed ... Connection
refused`` (or hangs, when the stale keys satisfy a barrier early). Every restart fails
the same way until the restarts are used up.

The fix is the missing prefix: under torchrun's shared store, the process group's keys
are written under ``dtruntime/<run id>/attempt-<TORCHELASTIC_RESTART_COUNT>/``, so an
attempt only ever reads keys of its own attempt. Everything else (backend, timeout,
device ids, options) passes through to :func:`torch.distributed.init_process_group`.

Edge cases:
- Outside torchrun, or with ``TORCHELASTIC_USE_AGENT_STORE`` unset (each attempt gets a
  new store), or when the caller passes ``store=`` or ``init_method=``, this is exactly
  ``torch.distributed.init_process_group(backend, **kwargs)``.
- ``rank`` and ``world_size`` default to ``RANK`` and ``WORLD_SIZE``, as with ``env://``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import torch.distributed as dist


def attempt_prefix(env: Mapping[str, str]) -> str | None:
    """The store prefix for this torchrun attempt, or None when no shared store is in use."""
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    run_id = env.get("TORCHELASTIC_RUN_ID") or "none"
    return f"dtruntime/{run_id}/attempt-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


def init_process_group(backend: str | None = None, **kwargs: Any) -> None:
    """Initialise the default process group; under torchrun, on this attempt's own keys.

    Takes the arguments of :func:`torch.distributed.init_process_group`. See the module
    docstring for why a restarted torchrun attempt needs this.
    """
    env = os.environ
    prefix = attempt_prefix(env)
    if prefix is None or "store" in kwargs or "init_method" in kwargs:
        dist.init_process_group(backend, **kwargs)
        return
    rank = int(kwargs.pop("rank", -1))
    world_size = int(kwargs.pop("world_size", -1))
    rank = int(env["RANK"]) if rank < 0 else rank
    world_size = int(env["WORLD_SIZE"]) if world_size < 0 else world_size
    timeout: timedelta = kwargs.get("timeout") or timedelta(minutes=10)
    shared = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world_size, is_master=False, timeout=timeout)
    store = dist.PrefixStore(prefix, shared)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, **kwargs)
