"""Tensor-native checkpoint parts: save(state_dict) stages once, writes safetensors, loads zero-copy."""

from __future__ import annotations

import collections
import glob
import io
import os
import random
import shutil

import numpy as np
import pytest
import torch

from dtruntime import CheckpointManager
from dtruntime.checkpoint.staging import StagingPool
from dtruntime.checkpoint.storage import aligned_empty
from dtruntime.checkpoint.tensors import is_tensor_part, load_state, plan_state
from dtruntime.errors import CheckpointError

TIMEOUT = 60


def rich_state() -> dict:
    return {
        "model": collections.OrderedDict(
            w=torch.randn(3, 4), b=torch.arange(5, dtype=torch.int8), h=torch.ones(2, dtype=torch.bfloat16),
            flag=torch.tensor([True, False]), scalar=torch.tensor(2.5, dtype=torch.float64),
            empty=torch.zeros(0, 7), strided=torch.arange(12.0).reshape(3, 4).t(),
        ),
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3, 4)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0], "foreach": None}],
        },
        "step": 7, "epoch": 2, "huge": 2**100, "negative": -(2**70), "nan": float("nan"),
        "rng": torch.get_rng_state(), "numpy": np.arange(4.0), "python_rng": random.Random(3).getstate(),
        "blob": b"\x00\xff", "name": "run-1",
    }


def assert_same(loaded, original) -> None:
    if isinstance(original, torch.Tensor):
        assert isinstance(loaded, torch.Tensor) and loaded.dtype == original.dtype
        assert torch.equal(loaded, original)
    elif isinstance(original, np.ndarray):
        assert isinstance(loaded, np.ndarray) and np.array_equal(loaded, original)
    elif isinstance(original, dict):
        assert isinstance(loaded, dict) and list(loaded) == list(original)
        for key in original:
            assert_same(loaded[key], original[key])
    elif isinstance(original, (list, tuple)):
        assert type(loaded) is type(original) and len(loaded) == len(original)
        for a, b in zip(loaded, original):
            assert_same(a, b)
    elif isinstance(original, float) and original != original:
        assert loaded != loaded
    else:
        assert type(loaded) is type(original) and loaded == original


def test_a_state_dict_round_trips_with_every_leaf_kind(tmp_path):
    state = rich_state()
    with CheckpointManager(str(tmp_path), compression="none") as manager:
        result = manager.save(state, 5, note="x").result(TIMEOUT)
        loaded = manager.load_state(5)
    assert result.codec == "none"
    assert_same(loaded, state)
    assert manager.read_manifest(5).metadata == {"note": "x"}


def test_the_part_is_a_safetensors_file_and_loads_as_views_of_one_buffer(tmp_path):
    from safetensors import safe_open

    state = {"a": torch.randn(8, 3), "b": torch.arange(10, dtype=torch.int16), "c": {"d": torch.ones(4)}}
    with CheckpointManager(str(tmp_path), compression="none") as manager:
        manager.save(state, 1).result(TIMEOUT)
        loaded = manager.load_state(1)
    [part] = glob.glob(str(tmp_path / "step-*" / "part-*.bin"))
    with open(part, "rb") as handle:
        assert handle.read(2) != b"PK"  # not a torch.save zip / pickle
    with safe_open(part, "pt") as reader:
        assert set(reader.keys()) == {"a", "b", "c.d"}
        assert torch.equal(reader.get_tensor("c.d"), state["c"]["d"])
        assert reader.metadata()["format"] == "dtruntime-state/1"
    # Zero-copy: the tensors lie in the one read buffer at their offsets in the body
    # (laid out largest element size first: a (96 B), c.d (16 B), then b).
    start = loaded["a"].data_ptr()
    assert loaded["c"]["d"].data_ptr() - start == 96 and loaded["b"].data_ptr() - start == 112
    for tensor in (loaded["a"], loaded["b"], loaded["c"]["d"]):
        assert tensor.data_ptr() % tensor.element_size() == 0
        assert tensor.storage_offset() == 0  # each its own storage over the buffer


def test_a_local_part_loads_as_a_private_mapping_that_writes_never_reach(tmp_path):
    """Zero-copy load of a local part: the tensors are the file's pages, mapped
    copy-on-write: changing them never alters what is stored, and deleting the step
    leaves them readable."""
    state = {"w": torch.arange(4096.0), "step": 1}
    with CheckpointManager(str(tmp_path), compression="none") as manager:
        manager.save(state, 1).result(TIMEOUT)
        [part] = glob.glob(str(tmp_path / "step-*" / "part-*.bin"))
        loaded = manager.load_state(1)
        with open("/proc/self/maps") as maps:
            assert any(line.rstrip().endswith(part) for line in maps), "the part is not mapped"
        loaded["w"].add_(1)  # copy-on-write: only this process's pages change
        assert torch.equal(manager.load_state(1)["w"], state["w"])
    shutil.rmtree(os.path.dirname(part))  # as retention would: the mapping keeps the pages
    assert torch.equal(loaded["w"], state["w"] + 1)


def test_a_loaded_rng_state_can_be_set(tmp_path):
    """torch.set_rng_state reads the tensor's storage: a view into a larger buffer breaks it."""
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with CheckpointManager(str(tmp_path)) as manager:
        manager.save({"pad": torch.ones(100), "rng": torch.get_rng_state()}, 1).result(TIMEOUT)
        state = manager.load_state(1)
    torch.manual_seed(0)
    torch.set_rng_state(state["rng"])
    assert torch.equal(torch.rand(4), expected)


def test_the_caller_may_change_its_tensors_as_soon_as_save_returns(tmp_path):
    state = {"w": torch.zeros(1 << 20)}
    with CheckpointManager(str(tmp_path)) as manager:
        handle = manager.save(state, 1)
        state["w"].add_(1.0)  # the optimizer's next step
        handle.result(TIMEOUT)
        assert manager.load_state(1)["w"].sum().item() == 0.0


def test_an_unsupported_leaf_is_refused_naming_its_path_and_frees_no_slot(tmp_path):
    with CheckpointManager(str(tmp_path), max_in_flight=1) as manager:
        with pytest.raises(CheckpointError, match=r"optimizer\.param_groups\.0\.fn: cannot save a builtins\.builtin_function"):
            manager.save({"optimizer": {"param_groups": [{"fn": print}]}}, 1)
        with pytest.raises(CheckpointError, match="dict key"):
            manager.save({(1, 2): torch.zeros(1)}, 1)
        with pytest.raises(CheckpointError, match="dtype"):
            manager.save({"c": torch.zeros(2, dtype=torch.complex64)}, 1)
        with pytest.raises(CheckpointError, match="dense"):
            manager.save({"s": torch.zeros(3, 3).to_sparse()}, 1)
        manager.save({"w": torch.ones(3)}, 1).result(TIMEOUT)  # the one slot is still free
        assert manager.list_checkpoints_sync() == [1]


def test_staging_buffers_are_reused_across_saves():
    pool = StagingPool(keep=2)
    first = pool.stage({"w": torch.randn(1000)})
    pointer = first.buffer.data_ptr()
    first.release()
    second = pool.stage({"w": torch.randn(1000)})
    assert second.buffer.data_ptr() == pointer
    third = pool.stage({"w": torch.randn(1000)})  # while the second is in flight: a new one
    assert third.buffer.data_ptr() != pointer
    second.release()
    third.release()


def test_old_pickle_parts_still_load(tmp_path):
    """Parts written before the tensor-native format are torch.save pickles saved as bytes."""
    state = {"w": torch.arange(6.0), "step": 3}
    data = io.BytesIO()
    torch.save(state, data)
    with CheckpointManager(str(tmp_path)) as manager:
        manager.save_bytes(data.getvalue(), 4).result(TIMEOUT)
        loaded = manager.load_state(4)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3


def test_a_flipped_byte_in_a_tensor_part_fails_its_checksum_and_resume_falls_back(tmp_path):
    with CheckpointManager(str(tmp_path), compression="none") as manager:
        manager.save({"w": torch.full((256,), 1.0)}, 1).result(TIMEOUT)
        manager.save({"w": torch.full((256,), 2.0)}, 2).result(TIMEOUT)
        [part] = glob.glob(str(tmp_path / "step-000000000002" / "part-*.bin"))
        with open(part, "r+b") as handle:
            handle.seek(-5, 2)
            byte = handle.read(1)
            handle.seek(-5, 2)
            handle.write(bytes([byte[0] ^ 0x01]))
        with pytest.raises(CheckpointError, match="crc32c"):
            manager.load_state(2)
        assert manager.load_state()["w"][0].item() == 1.0


def test_a_compressible_state_is_compressed_and_loads(tmp_path):
    with CheckpointManager(str(tmp_path), compression="auto") as manager:
        result = manager.save({"w": torch.zeros(1 << 18), "step": 1}, 1).result(TIMEOUT)
        loaded = manager.load_state(1)
    assert result.codec == "zstd" and result.stored_size < result.raw_size // 10
    assert loaded["w"].sum().item() == 0.0 and loaded["step"] == 1


def test_a_damaged_header_is_a_checkpoint_error():
    plan = plan_state({"w": torch.ones(4)})
    data = bytearray(plan.header + torch.ones(4).numpy().tobytes())
    assert is_tensor_part(data) and not is_tensor_part(b"PK\x03\x04" + bytes(20))
    data[10:14] = b"\xff\xff\xff\xff"
    buffer = aligned_empty(len(data))
    buffer[:] = np.frombuffer(bytes(data), dtype=np.uint8)
    with pytest.raises(CheckpointError, match="damaged tensor part"):
        load_state(buffer, "test part")


def test_tensor_parts_on_s3(s3_bucket, s3_options):
    state = {"w": torch.randn(1 << 16), "meta": {"step": 9}}
    with CheckpointManager(f"s3://{s3_bucket}/ckpt", storage_options=s3_options) as manager:
        manager.save(state, 9).result(TIMEOUT)
        loaded = manager.load_state()
    assert torch.equal(loaded["w"], state["w"]) and loaded["meta"] == {"step": 9}


def test_a_failed_staging_copy_raises_to_the_caller_and_leaves_nothing(tmp_path, monkeypatch):
    import dtruntime.checkpoint.staging as staging

    real_target, calls = staging._target, []

    def failing_target(buffer, entry):
        calls.append(entry.name)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return real_target(buffer, entry)

    with CheckpointManager(str(tmp_path), compression="none", max_in_flight=1) as manager:
        monkeypatch.setattr(staging, "_target", failing_target)
        with pytest.raises(RuntimeError, match="device lost"):
            manager.save({"a": torch.ones(1 << 16), "b": torch.ones(1 << 16)}, 1)
        monkeypatch.setattr(staging, "_target", real_target)
        manager.save({"a": torch.ones(4)}, 2).result(TIMEOUT)  # the slot came back
        manager.flush_sync(TIMEOUT)  # the failure was raised to the caller: not raised again
        assert manager.list_checkpoints_sync() == [2]
    assert not glob.glob(str(tmp_path / "step-000000000001" / "*"))  # no part, no temp file


def test_a_step_another_process_committed_fails_through_the_handle(tmp_path):
    with CheckpointManager(str(tmp_path)) as first, CheckpointManager(str(tmp_path)) as second:
        first.save({"w": torch.ones(8)}, 3).result(TIMEOUT)
        handle = second.save({"w": torch.zeros(8)}, 3)
        with pytest.raises(CheckpointError, match="already exists"):
            handle.result(TIMEOUT)
        assert first.load_state(3)["w"].sum().item() == 8.0


def test_dcp_classes_refuse_bad_arguments_with_clear_errors(tmp_path):
    from dtruntime.checkpoint.dcp import DtruntimeStorageReader, DtruntimeStorageWriter
    from dtruntime.errors import ConfigError

    with pytest.raises(ConfigError, match="keep_last_n"):
        DtruntimeStorageWriter(str(tmp_path), 1, keep_last_n=0)
    with pytest.raises(CheckpointError, match="step must be >= 0"):
        DtruntimeStorageWriter(str(tmp_path), -1)
    with pytest.raises(CheckpointError, match="checkpoint_id must be a step number"):
        DtruntimeStorageReader(str(tmp_path)).reset("/some/dir")
    with pytest.raises(FileNotFoundError):
        DtruntimeStorageReader(str(tmp_path)).read_metadata()

