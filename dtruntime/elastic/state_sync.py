"""Send the training state from one live worker to the others over the process group.

The state (model and optimizer state dicts plus the loop's counters) is serialised with
``torch.save`` and read back with ``torch.load(weights_only=True)``, which loads
tensors and plain containers only: a peer's bytes never run code here. Two broadcasts:
the length, then the bytes as a uint8 tensor, on the current CUDA device when the
group's backend is NCCL (which carries no CPU tensors), else on the CPU. Every rank of
the group must call :func:`broadcast_state` with the same ``source``.
"""

from __future__ import annotations

import io
from typing import Any

import torch
import torch.distributed as dist


def broadcast_state(state: dict[str, Any] | None, source: int) -> dict[str, Any]:
    """On ``source``, send ``state`` and return it; elsewhere return what ``source`` sent."""
    is_source = dist.get_rank() == source
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    if is_source:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = torch.frombuffer(bytearray(buffer.getbuffer()), dtype=torch.uint8).to(device)
        length = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
    else:
        length = torch.zeros(1, dtype=torch.int64, device=device)
    dist.broadcast(length, src=source)
    if not is_source:
        payload = torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    dist.broadcast(payload, src=source)
    if is_source:
        assert state is not None
        return state
    return torch.load(io.BytesIO(payload.cpu().numpy().tobytes()), weights_only=True, map_location="cpu")
