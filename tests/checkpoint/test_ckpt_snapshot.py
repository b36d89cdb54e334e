"""Guarded background snapshots: ``save(state, step, guard=...)`` (dtruntime/checkpoint/snapshot.py).

The snapshot thread's copy is held at a gate (a wrapper around ``StagedPart.copy``), so each
test decides what happens before the copy, with no timing assumption.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from dtruntime import CheckpointManager
from dtruntime.checkpoint.snapshot import state_changing_forwards
from dtruntime.checkpoint.staging import StagedPart
from dtruntime.errors import ArgumentTypeError, CheckpointError

from .test_ckpt_tensor import assert_same, rich_state

WAIT_S = 30


@pytest.fixture
def gate(monkeypatch):
    """An Event the snapshot thread waits for before copying; ``gate.copying`` is set once
    a copy waits at the gate."""
    opened = threading.Event()
    opened.copying = threading.Event()
    real_copy = StagedPart.copy

    def gated_copy(self: StagedPart, background: bool = False) -> None:
        if background:
            opened.copying.set()
            assert opened.wait(WAIT_S), "the test never opened the gate"
        real_copy(self, background)

    monkeypatch.setattr(StagedPart, "copy", gated_copy)
    yield opened
    opened.set()


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(8, 16)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    train_step(model, optimizer)  # the optimizer has state
    return model, optimizer


def snapshot_of(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "exp_avg": [optimizer.state[p]["exp_avg"].clone() for p in model.parameters()]}


def assert_saved_equals(loaded: dict, expected: dict) -> None:
    for key, value in expected["model"].items():
        assert torch.equal(loaded["model"][key], value), key
    saved_exp_avg = [entry["exp_avg"] for entry in loaded["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(saved_exp_avg, expected["exp_avg"], strict=True))


def test_a_guarded_save_returns_before_the_copy_and_the_next_step_waits_for_it(tmp_path, gate):
    model, optimizer = make_model()
    model(torch.randn(8, 16)).pow(2).mean().backward()  # gradients ready: the next call is the step
    expected = snapshot_of(model, optimizer)
    entered = threading.Event()
    optimizer.register_step_pre_hook(lambda *_: entered.set())  # runs before the guard's hook
    with CheckpointManager(str(tmp_path)) as manager:
        handle = manager.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, 7,
                              guard=(model, optimizer))
        assert gate.copying.wait(WAIT_S)  # save returned while its copy waits at the gate
        stepper = threading.Thread(target=optimizer.step)
        stepper.start()
        assert entered.wait(WAIT_S)  # the step began; the guard holds it until the copy is done
        assert not handle.done()
        gate.set()
        stepper.join(WAIT_S)
        assert not stepper.is_alive()
        handle.result(WAIT_S)
        assert_saved_equals(manager.load_state(7), expected)
    assert not any(torch.equal(p, expected["model"][k]) for k, p in model.state_dict().items()
                   if k.endswith("weight"))  # the step did run


def test_a_guarded_module_forward_waits_so_batchnorm_statistics_are_saved_as_they_were(tmp_path, gate):
    model, optimizer = make_model()
    before = model[1].running_mean.clone()
    with CheckpointManager(str(tmp_path)) as manager:
        handle = manager.save({"model": model.state_dict()}, 1, guard=model)
        assert gate.copying.wait(WAIT_S)
        forward = threading.Thread(target=model, args=(torch.randn(8, 16) + 5,))
        forward.start()
        gate.set()
        forward.join(WAIT_S)
        handle.result(WAIT_S)
        assert torch.equal(manager.load_state(1)["model"]["1.running_mean"], before)
    assert not torch.equal(model[1].running_mean, before)  # the forward did update it


def test_a_tensor_changed_outside_the_guards_fails_the_save_naming_it_and_keeps_the_earlier_step(tmp_path, gate):
    model, optimizer = make_model()
    with CheckpointManager(str(tmp_path)) as manager:
        manager.save({"w": model[0].weight.detach().clone()}, 1).result(WAIT_S)
        handle = manager.save({"model": model.state_dict()}, 2, guard=optimizer)
        assert gate.copying.wait(WAIT_S)
        with torch.no_grad():
            model[0].weight.mul_(2)  # no guard covers this
        gate.set()
        with pytest.raises(CheckpointError, match="'model.0.weight' changed while its snapshot was being taken"):
            handle.result(WAIT_S)
        assert manager.list_checkpoints_sync() == [1]
        assert manager.load_state()["w"].shape == (16, 16)


def test_numpy_leaves_of_a_guarded_save_are_copied_before_save_returns(tmp_path, gate):
    model, optimizer = make_model()
    rng_state = np.arange(10, dtype=np.uint32)
    with CheckpointManager(str(tmp_path)) as manager:
        handle = manager.save({"model": model.state_dict(), "rng": rng_state}, 3, guard=model)
        assert gate.copying.wait(WAIT_S)
        rng_state[:] = 0  # numpy has no version counter: the save copied it already
        gate.set()
        handle.result(WAIT_S)
        assert np.array_equal(manager.load_state(3)["rng"], np.arange(10, dtype=np.uint32))


def test_a_bad_guard_is_refused_naming_its_type_and_queues_nothing(tmp_path):
    model, optimizer = make_model()
    with CheckpointManager(str(tmp_path), max_in_flight=1) as manager:
        with pytest.raises(ArgumentTypeError, match="not str"):
            manager.save({"model": model.state_dict()}, 1, guard="model")
        with pytest.raises(ArgumentTypeError, match="not Parameter"):
            manager.save({"model": model.state_dict()}, 1, guard=[model, model[0].weight])
        manager.save({"model": model.state_dict()}, 1, guard=[model, optimizer], timeout=WAIT_S).result(WAIT_S)
        assert manager.list_checkpoints_sync() == [1]


def test_guard_hooks_are_installed_once_and_removed_at_close(tmp_path):
    model, optimizer = make_model()
    manager = CheckpointManager(str(tmp_path))
    for step in (1, 2, 3):
        manager.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, step, guard=(model, optimizer))
        train_step(model, optimizer)
    assert [len(module._forward_pre_hooks) for module in model] == [0, 1, 0]  # the BatchNorm only
    assert len(optimizer._optimizer_step_pre_hooks) == 1
    manager.close()
    assert manager.list_checkpoints_sync() == [1, 2, 3]
    assert [len(module._forward_pre_hooks) for module in model] == [0, 0, 0]
    assert len(optimizer._optimizer_step_pre_hooks) == 0


def test_a_model_without_buffers_runs_forward_and_backward_beside_the_copy(tmp_path, gate):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = {key: value.clone() for key, value in model.state_dict().items()}
    with CheckpointManager(str(tmp_path)) as manager:
        handle = manager.save({"model": model.state_dict()}, 1, guard=(model, optimizer))
        assert gate.copying.wait(WAIT_S)
        model(torch.randn(8, 16)).pow(2).mean().backward()  # returns while the copy is held at the gate
        stepper = threading.Thread(target=optimizer.step)
        stepper.start()
        gate.set()
        stepper.join(WAIT_S)
        handle.result(WAIT_S)
        saved = manager.load_state(1)["model"]
        assert all(torch.equal(saved[key], value) for key, value in expected.items())


def test_the_forwards_that_change_state_are_the_buffer_owners_and_a_broadcasting_ddp_wrapper():
    norm = torch.nn.BatchNorm1d(4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), norm, torch.nn.LayerNorm(4))
    model.register_buffer("scratch", torch.zeros(1), persistent=False)
    assert state_changing_forwards(model) == [norm]
    assert state_changing_forwards(torch.nn.Linear(4, 4)) == []
    ddp = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    torch.nn.Module.__init__(ddp)  # no process group needed to read its structure
    ddp.module, ddp.broadcast_buffers = model, True
    assert state_changing_forwards(ddp) == [ddp, norm]
    ddp.broadcast_buffers = False
    assert state_changing_forwards(ddp) == [norm]


def test_a_guarded_save_of_every_leaf_kind_round_trips(tmp_path):
    """The snapshot thread's copy (memmove for dense tensors, copy_ for strided ones)
    saves the same bytes as the caller's."""
    state = rich_state()
    with CheckpointManager(str(tmp_path)) as manager:
        manager.save(state, 1, guard=torch.nn.Module()).result(WAIT_S)
        assert_same(manager.load_state(1), state)
