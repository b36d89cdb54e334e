"""broadcast_state between two real processes over gloo: the source's state arrives bitwise."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from dtruntime.elastic.state_sync import broadcast_state

from .cluster import free_port


def _model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()  # momentum buffers now exist and depend on the seed
    return model, optimizer


def _rank(rank: int, port: int, results) -> None:
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    model, optimizer = _model_and_optimizer(seed=rank)  # each rank starts different
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "steps_applied": 10 + rank}
    received = broadcast_state(state if rank == 1 else None, source=1)
    model.load_state_dict(received["model"])
    optimizer.load_state_dict(received["optimizer"])
    momentum = [optimizer.state[p]["momentum_buffer"].tolist() for p in model.parameters()]
    results.put((rank, [t.tolist() for t in model.state_dict().values()], momentum, received["steps_applied"]))
    dist.destroy_process_group()


def test_every_rank_ends_with_the_source_state_bitwise():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_rank, args=(rank, port, results)) for rank in range(2)]
    for process in processes:
        process.start()
    try:
        got = dict((rank, rest) for rank, *rest in (results.get(timeout=120) for _ in processes))
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert got[0] == got[1]  # parameters, momentum buffers and counters
    assert got[0][2] == 11  # rank 1's counters
    source_model, _ = _model_and_optimizer(seed=1)
    assert got[0][0] == [t.tolist() for t in source_model.state_dict().values()]
