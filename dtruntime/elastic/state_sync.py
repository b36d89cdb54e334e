"""Send the training state from one live worker to the others over the process group.

The state (model and optimizer state dicts plus the loop's counters) is serialised with
``torch.save`` and read back with ``torch.load(weights_only=True)``, which loads
tensors and plain containers only: a peer's bytes never run code here. Two broadcasts:
the length, then the bytes as a uint8 tensor. Every rank of the group must call
:func:`broadcast_state` with the same ``source``.
"""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.distributed as dist


def broadcast_state(state: dict[str, Any] | None, source: int) -> dict[str, Any]:
    """On ``source``, send ``state`` and return it; elsewhere return what ``source`` sent."""
    is_source = dist.get_rank() == source
    if is_source:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = torch.frombuffer(bytearray(buffer.getbuffer()), dtype=torch.uint8)
        length = torch.tensor([payload.numel()], dtype=torch.int64)
    else:
        length = torch.zeros(1, dtype=torch.int64)
    dist.broadcast(length, src=source)
    if not is_source:
        payload = torch.empty(int(length.item()), dtype=torch.uint8)
    dist.broadcast(payload, src=source)
    if is_source:
        assert state is not None
        return state
    return torch.load(io.BytesIO(payload.numpy().tobytes()), weights_only=True)
