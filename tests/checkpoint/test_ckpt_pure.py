"""Unit tests of the pure modules: layout, manifest, commit bookkeeping, retention, compression, slots."""

from __future__ import annotations

import json
import os
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.checkpoint import layout
from dtruntime.checkpoint.commit import PartReport, StepCommit, recover_step, scan_listing
from dtruntime.checkpoint.compression import compress, decompress
from dtruntime.checkpoint.integrity import crc32c, format_checksum
from dtruntime.checkpoint.manifest import Manifest, PartRecord, decode_manifest, encode_manifest, verify_part
from dtruntime.checkpoint.retention import plan_retention
from dtruntime.checkpoint.slots import InFlightSlots
from dtruntime.errors import CheckpointError, ConfigError


def _manifest(step: int = 7, world_size: int = 1) -> Manifest:
    parts = tuple(PartRecord(rank=r, size=100 + r, checksum=0xDEADBEEF - r, codec="none") for r in range(world_size))
    return Manifest(step=step, world_size=world_size, parts=parts, created_unix=1.5, metadata={"lr": 0.1})


def _seal(body: bytes) -> bytes:
    return body + b"\n#crc32c=" + format_checksum(crc32c(body)).encode() + b"\n"


# ------------------------------------------------------------------ layout


def test_layout_names_round_trip_and_sort_by_step():
    assert layout.parse_step_dir(layout.step_dir(42)) == 42
    assert layout.step_dir(9) < layout.step_dir(10) < layout.step_dir(10**11)
    assert layout.parse_part_name(layout.part_name(3, "zstd", 0xAB)) == (3, "zstd", 0xAB)
    assert layout.split_key("step-000000000042/MANIFEST") == (42, "MANIFEST")
    for other in ("step-42/MANIFEST", "step-000000000042", "x/step-000000000042/MANIFEST", "part-0-none-00.bin"):
        assert layout.split_key(other) is None and layout.parse_part_name(other) is None


@pytest.mark.parametrize("key", ["../x", "step-000000000001/../../etc", "/abs", "a//b", "a/./b", ".hidden", ""])
def test_join_under_refuses_keys_that_could_escape_the_root(key):
    with pytest.raises(CheckpointError, match="unsafe storage key"):
        layout.join_under("/root", key)


@pytest.mark.parametrize("step", [-1, True, 1.0, "3", None, 10**12])
def test_bad_steps_are_rejected_with_the_value_named(step):
    with pytest.raises(CheckpointError, match="step must be"):
        layout.validate_step(step)


# ---------------------------------------------------------------- manifest


def test_manifest_round_trips():
    manifest = _manifest(world_size=3)
    decoded = decode_manifest(encode_manifest(manifest), expected_step=7)
    assert decoded == manifest
    assert decoded.parts[2].file == "part-00002-none-deadbeed.bin"


def test_every_single_byte_change_of_a_manifest_is_detected():
    data = encode_manifest(_manifest())
    for position in range(len(data)):
        for value in range(256):
            if value == data[position]:
                continue
            damaged = data[:position] + bytes([value]) + data[position + 1 :]
            with pytest.raises(CheckpointError):
                decode_manifest(damaged, expected_step=7)


def test_every_truncation_of_a_manifest_is_detected():
    data = encode_manifest(_manifest())
    for length in range(len(data)):
        with pytest.raises(CheckpointError):
            decode_manifest(data[:length], expected_step=7)


def test_manifest_for_another_step_is_rejected():
    with pytest.raises(CheckpointError, match="records step 7, expected 8"):
        decode_manifest(encode_manifest(_manifest()), expected_step=8, source="m")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d.update(version=2), "unsupported version"),
        (lambda d: d.update(extra=1), "must be an object with keys"),
        (lambda d: d.update(world_size=2), "ranks 0..1"),
        (lambda d: d["parts"][0].update(size=-1), r"parts\[0\].size"),
        (lambda d: d["parts"][0].update(size=True), r"parts\[0\].size"),
        (lambda d: d["parts"][0].update(crc32c="DEADBEEF"), r"parts\[0\].crc32c"),
        (lambda d: d["parts"][0].update(codec="lz4"), r"parts\[0\].codec"),
        (lambda d: d["parts"][0].update(file="../../etc/passwd"), r"parts\[0\].file"),
        (lambda d: d["parts"][0].update(rank=-1), "rank must be"),
        (lambda d: d.update(step=-3), "step must be"),
        (lambda d: d.update(metadata=[1]), "metadata must be a mapping"),
    ],
)
def test_well_sealed_but_invalid_manifests_name_the_field(change, message):
    document = json.loads(encode_manifest(_manifest())[:-18])
    change(document)
    with pytest.raises(CheckpointError, match=message):
        decode_manifest(_seal(json.dumps(document).encode()), source="somewhere/MANIFEST")


def test_verify_part_detects_every_flip_and_truncation_and_names_step_rank_file():
    data = os.urandom(300)
    record = PartRecord(rank=2, size=len(data), checksum=crc32c(data), codec="none")
    verify_part(5, record, data, "f.bin")
    for position in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[position] ^= mask
            with pytest.raises(CheckpointError, match=r"step 5 rank 2: f\.bin crc32c"):
                verify_part(5, record, bytes(damaged), "f.bin")
    for length in range(len(data)):
        with pytest.raises(CheckpointError, match=r"step 5 rank 2: f\.bin has \d+ bytes"):
            verify_part(5, record, data[:length], "f.bin")


def test_crc32c_of_buffers_matches_bytes_across_slices():
    data = os.urandom((8 << 20) + 12345)
    assert crc32c(memoryview(bytearray(data))) == crc32c(data)


# ------------------------------------------------------------ commit ledger


def _report(step: int, rank: int, fill: int = 0) -> PartReport:
    return PartReport(step=step, rank=rank, size=10 + fill, checksum=rank * 1000 + fill, codec="none")


def test_step_commit_collects_every_rank_once_and_builds_the_manifest():
    commit = StepCommit(4, world_size=3)
    assert commit.add(_report(4, 2)) is False
    assert commit.add(_report(4, 2)) is False  # duplicate report: no-op
    assert commit.missing_ranks == (0, 1)
    with pytest.raises(CheckpointError, match=r"missing ranks \[0, 1\]"):
        commit.manifest(created_unix=0.0)
    commit.add(_report(4, 0))
    assert commit.add(_report(4, 1)) is True
    manifest = commit.manifest(created_unix=2.0, metadata={"a": 1})
    assert [p.rank for p in manifest.parts] == [0, 1, 2] and manifest.metadata == {"a": 1}


def test_step_commit_rejects_conflicts_other_steps_and_ranks_outside_the_world():
    commit = StepCommit(4, world_size=2)
    commit.add(_report(4, 0))
    with pytest.raises(CheckpointError, match="conflicting parts"):
        commit.add(_report(4, 0, fill=1))
    with pytest.raises(CheckpointError, match="report for step 5"):
        commit.add(_report(5, 1))
    with pytest.raises(CheckpointError, match="rank 2 outside world of 2"):
        commit.add(_report(4, 2))
    assert commit.missing_ranks == (1,)


def test_a_new_leader_rebuilds_in_flight_steps_from_a_listing_alone():
    def key(report: PartReport) -> str:
        return layout.part_key(report.step, report.rank, report.codec, report.checksum)

    listing = {layout.manifest_key(1): 300, key(_report(1, 0)): 10, key(_report(1, 1)): 10}
    listing.update({key(_report(2, 0)): 10, key(_report(2, 1)): 10})  # complete, not committed
    listing.update({key(_report(3, 1)): 10})  # rank 0 missing
    listing.update({key(_report(4, 0)): 10, key(_report(4, 0, fill=1)): 11})  # conflicting retries
    listing.update({"README": 5, "step-000000000009/notes.txt": 1})  # outside the layout / not a part
    view = scan_listing(listing)
    assert view.committed == (1,) and sorted(view.in_flight) == [2, 3, 4, 9]
    finished = recover_step(view, 2, world_size=2)
    assert finished.is_complete and finished.manifest(0.0).parts[1] == _report(2, 1).record
    assert recover_step(view, 3, world_size=2).missing_ranks == (0,)
    with pytest.raises(CheckpointError, match="conflicting parts"):
        recover_step(view, 4, world_size=2)
    with pytest.raises(CheckpointError, match="already committed"):
        recover_step(view, 1, world_size=2)


# ---------------------------------------------------------------- retention


@settings(max_examples=300, deadline=None)
@given(
    committed=st.sets(st.integers(0, 60), min_size=1, max_size=20),
    in_flight=st.sets(st.integers(0, 80), max_size=6),
    keep=st.integers(1, 8),
    data=st.data(),
)
def test_retention_keeps_exactly_n_and_never_the_protected_step(committed, in_flight, keep, data):
    in_flight -= committed
    protected = data.draw(st.sampled_from(sorted(committed)))
    listing = {layout.manifest_key(s): 1 for s in committed}
    listing.update({layout.part_key(s, 0, "none", 1): 1 for s in in_flight})
    plan = plan_retention(scan_listing(listing), keep, protected={protected})
    remaining = committed - set(plan.delete_committed)
    assert len(remaining) == min(keep, len(committed))
    assert protected in remaining
    others = sorted(committed - {protected}, reverse=True)[: keep - 1]
    assert remaining == {protected, *others}
    assert set(plan.delete_orphans) == {s for s in in_flight if s < max(committed)}


def test_retention_rejects_bad_keep_last_n():
    with pytest.raises(ConfigError, match="keep_last_n"):
        plan_retention(scan_listing({}), 0, protected=())


# -------------------------------------------------------------- compression


@pytest.mark.parametrize("setting", ["none", "gzip", "zstd", "auto"])
def test_compression_round_trips(setting):
    data = os.urandom(5000) + bytes(50000)
    codec, stored = compress(data, setting)
    assert codec == ("zstd" if setting == "auto" else setting)
    assert decompress(codec, bytes(stored)) == data


def test_auto_stores_uncompressed_unless_it_saves_ten_percent():
    rng = random.Random(1)
    incompressible = rng.randbytes(1 << 20)
    codec, stored = compress(incompressible, "auto")
    assert codec == "none" and stored is incompressible  # not copied
    # ~5% zeros: zstd would save < 10%, so auto stores it as it is.
    mostly_random = b"".join(rng.randbytes(19 * 1024) + bytes(1024) for _ in range(64))
    assert len(compress(mostly_random, "zstd")[1]) > 0.9 * len(mostly_random)
    assert compress(mostly_random, "auto")[0] == "none"
    # ~30% zeros spread evenly: saves well over 10%.
    compressible = b"".join(rng.randbytes(7 * 1024) + bytes(3 * 1024) for _ in range(64))
    assert compress(compressible, "auto")[0] == "zstd"


def test_bad_compression_setting_and_undecodable_data_are_named():
    with pytest.raises(ConfigError, match="compression"):
        compress(b"x", "lz4")
    with pytest.raises(CheckpointError, match="cannot decompress zstd"):
        decompress("zstd", b"not zstd at all")


# -------------------------------------------------------------------- slots


def test_slots_are_granted_in_request_order_and_withdrawn_requests_lose_nothing():
    slots = InFlightSlots(2)
    first, second = slots.request(), slots.request()
    assert first.done() and second.done()
    third, fourth, fifth = slots.request(), slots.request(), slots.request()
    assert not third.done()
    slots.withdraw(fourth)  # gives up while waiting
    slots.release()
    assert third.done() and not fifth.done()
    slots.release()
    assert fifth.done()
    slots.withdraw(fifth)  # gives up after being granted: slot returned
    assert slots.in_use == 1
    assert slots.acquire(timeout=0) is True
    assert slots.acquire(timeout=0.05) is False
    assert slots.in_use == 2


def test_slots_block_threads_until_released():
    slots = InFlightSlots(1)
    assert slots.acquire()
    got = threading.Event()
    waiter = threading.Thread(target=lambda: slots.acquire(timeout=10) and got.set())
    waiter.start()
    assert not got.wait(0.1)
    slots.release()
    assert got.wait(10)
    waiter.join(10)
