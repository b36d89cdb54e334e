"""Guarded background snapshots: ``save(state, step, guard=(model, optimizer))``.

A plain ``save(state_dict)`` copies the tensors in the caller's thread, so the training
loop stalls for one copy of its state. With ``guard``, ``save`` returns once the state is
laid out (no tensor data read); a snapshot thread makes the same one copy into the
staging buffer while the loop goes on (its forward and backward passes do not change the
state). What would change the state waits for the copy instead of the caller:

- every guarded :class:`torch.optim.Optimizer` gets a step pre-hook (a step changes the
  parameters and the optimizer state);
- inside every guarded :class:`torch.nn.Module`, each submodule that holds persistent
  buffers gets a forward pre-hook (its forward may change them: BatchNorm's running
  statistics), and so does a guarded DDP wrapper of a module with such buffers (its
  forward broadcasts them before the inner module's runs; guard the module you call).
  A model without such buffers (a transformer: LayerNorm has none) runs its whole
  forward and backward beside the copy; one with BatchNorm runs up to its first one.
  The submodules are those the module has at its first guarded save.

Each hook waits until every snapshot of this manager still being copied is complete. It
is installed once per guarded object and manager, costs one check of an empty list per
call when no snapshot is pending, and is removed when the manager closes.

The guards are what make the snapshot exact; a safety net catches the commonest
omission. :class:`~.staging.StagedPart` records each tensor's version counter when the
state is laid out and fails the save with :class:`~dtruntime.errors.CheckpointError`
naming the tensor when the counter moved before its copy finished. Autograd-visible
in-place ops bump it: non-fused optimizer steps (foreach or not), in-place arithmetic,
``load_state_dict``. Some writes do not (measured with torch 2.13): fused optimizers,
BatchNorm's running statistics, collectives (DDP's buffer broadcast), writes through
``.data``; an op racing the copy of that very tensor bumps it only when it ends. Those
are covered only by naming their module or optimizer in ``guard``. numpy arrays have no
version counter, so a guarded save copies them while it lays the state out.

On a GPU the caller's copy is already asynchronous (a copy stream; see :mod:`.staging`),
so a save with any CUDA tensor copies from the caller's thread, guard or not.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ArgumentTypeError
from .staging import StagedPart


def guarded_objects(guard: Any) -> list[torch.nn.Module | torch.optim.Optimizer]:
    """``guard`` (None, a module, an optimizer, or an iterable of them) as a list;
    ArgumentTypeError naming anything else."""
    if guard is None:
        return []
    items = [guard] if isinstance(guard, (torch.nn.Module, torch.optim.Optimizer)) else guard
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes)):
        raise ArgumentTypeError(
            f"guard must be a torch.nn.Module, a torch.optim.Optimizer or a list of them, not {type(guard).__name__}"
        )
    objects = list(items)
    for item in objects:
        if not isinstance(item, (torch.nn.Module, torch.optim.Optimizer)):
            raise ArgumentTypeError(
                f"guard must hold torch.nn.Module and torch.optim.Optimizer objects, not {type(item).__name__}"
            )
    return objects


def state_changing_forwards(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules in ``module`` whose forward may change its state dict: each holding a
    persistent buffer, and ``module`` itself first when it is a DDP wrapper that
    broadcasts buffers and any are found."""
    owners = [
        child for child in module.modules()
        if any(buffer is not None and name not in child._non_persistent_buffers_set
               for name, buffer in child._buffers.items())
    ]
    broadcasts = isinstance(module, torch.nn.parallel.DistributedDataParallel) and module.broadcast_buffers
    return ([module] if owners and broadcasts else []) + owners


class BackgroundSnapshots:
    """The snapshots one manager copies in the background, and the hooks that wait for them.

    Thread-safe. Invariant: a part is in ``_copying`` from :meth:`start` until its copy
    has settled (copied, failed or given up by the writer); a hook returns only once every
    part that was in ``_copying`` when it was called has settled.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._copying: list[StagedPart] = []
        self._hooks: dict[int, tuple[weakref.ref[Any], list[Any]]] = {}  # id(guard) -> (guard, hook handles)

    def start(self, staged: StagedPart, guards: list[torch.nn.Module | torch.optim.Optimizer], step: int) -> None:
        """Hook every guard (once), then copy ``staged`` in a new thread. A failed copy
        fails the part (:meth:`StagedPart.abort`): the writer reports it through the handle."""
        with self._lock:
            for guard in guards:
                self._hook(guard)
            self._copying.append(staged)
        thread = threading.Thread(target=self._copy, args=(staged,), name=f"dtruntime-snapshot-{step}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (interpreter shutting down, thread limit): copy here
            self._copy(staged)

    def wait(self, *_: Any) -> None:
        """Block until every snapshot pending now has settled (the hooks' body)."""
        if not self._copying:  # the common case, read without the lock: nothing to wait for
            return
        with self._lock:
            pending = list(self._copying)
        for staged in pending:
            staged.wait_settled()

    def remove_hooks(self) -> None:
        """Remove every hook (the manager is closing; its writer has consumed every copy)."""
        with self._lock:
            hooks, self._hooks = self._hooks, {}
        for _, handles in hooks.values():
            for handle in handles:
                handle.remove()

    def _hook(self, guard: torch.nn.Module | torch.optim.Optimizer) -> None:
        known = self._hooks.get(id(guard))
        if known is not None and known[0]() is guard:
            return
        for key in [key for key, (ref, _) in self._hooks.items() if ref() is None]:
            del self._hooks[key]  # collected objects (whose ids may be reused): bounded by the live guards
        if isinstance(guard, torch.nn.Module):
            handles = [module.register_forward_pre_hook(self.wait) for module in state_changing_forwards(guard)]
        else:
            handles = [guard.register_step_pre_hook(self.wait)]
        self._hooks[id(guard)] = (weakref.ref(guard), handles)

    def _copy(self, staged: StagedPart) -> None:
        try:
            staged.copy(background=True)
        except BaseException as exc:  # noqa: BLE001 - the save fails loudly through its handle
            staged.abort(exc)
        finally:
            with self._lock:
                self._copying.remove(staged)
