"""DatasetRegistry on real files (local and memory://): assignments, world, specs, bad input."""

from __future__ import annotations

from dataclasses import dataclass, replace

import fsspec
import numpy as np
import pytest
from .datasets_helpers import memory_root, write_csv_files, write_parquet_files, write_tfrecord_files  # noqa: F401

from dtruntime import DatasetRegistry, sharding
from dtruntime.data import DatasetSpec, MembershipView, check_same_spec, spec_summary
from dtruntime.data.registry import ControlPlane
from dtruntime.protocol.spec_check import summary_difference
from dtruntime.errors import DatasetError


def read_values(registry: DatasetRegistry, dataset_id: str, rank: int, epoch: int) -> list[int]:
    values: list[int] = []
    for item in registry.open_shard(dataset_id, rank, epoch, prefetch_shards=1):
        if isinstance(item, bytes):
            values.append(int(item.split(b"-")[1]))
        else:
            values.extend(item.column("x").to_pylist())
    return values


def check_covers_exactly(registry: DatasetRegistry, dataset_id: str, world: int, epoch: int, total: int) -> None:
    seen = np.zeros(total, dtype=np.int64)
    counts = set()
    for rank in range(world):
        records = registry.get_assignment(dataset_id, rank, epoch)
        counts.add(sum(r.num_samples for r in records))
        for r in records:
            if not r.padding:
                seen[r.start_sample : r.end_sample] += 1
    assert (seen == 1).all()
    assert len(counts) == 1


@pytest.mark.parametrize(
    "writer, format",
    [(write_parquet_files, "parquet"), (write_csv_files, "csv"), (write_tfrecord_files, "tfrecord")],
)
@pytest.mark.parametrize("where", ["local", "memory"])
def test_register_count_assign_and_read(tmp_path, memory_root, writer, format, where):
    root = str(tmp_path / "data") if where == "local" else f"{memory_root}/data"
    files = writer(root, [130, 0, 77, 201])
    world = 3
    registries = [DatasetRegistry(rank=r, world_size=world) for r in range(world)]
    for registry in registries:
        spec = registry.register("ds", root, format, shard_size=50, shuffle=True, seed=4)
    assert spec.total_samples == 408
    assert spec.file_samples == (130, 0, 77, 201)
    assert len(spec.files) == len(files) and list(spec.files) == sorted(spec.files)
    assert len({r.spec("ds").fingerprint() for r in registries}) == 1
    check_covers_exactly(registries[0], "ds", world, 2, 408)

    all_values = []
    for rank in range(world):
        records = registries[rank].get_assignment("ds", rank, 2)
        expected = [int(i) for r in records for i in r.sample_order()]
        values = read_values(registries[rank], "ds", rank, 2)
        assert values == expected, "the reader returns exactly the assigned samples, in order"
        assert set(registries[rank].get_shard("ds", rank, 2)) <= set(spec.files)
        all_values.extend(values)
    assert sorted(set(all_values)) == list(range(408))


def test_get_shard_gives_every_file_to_exactly_one_rank_balanced_by_samples(tmp_path, caplog):
    """Issue 10 item 4: world of 3, 6 parquet files; reading every returned file whole reads
    every sample exactly once across ranks."""
    root = str(tmp_path / "data")
    write_parquet_files(root, [100, 90, 80, 70, 60, 50])
    world = 3
    registries = [DatasetRegistry(rank=r, world_size=world) for r in range(world)]
    for registry in registries:
        spec = registry.register("ds", root, "parquet", shard_size=40)
    shares = [registries[rank].get_shard("ds", rank, 0) for rank in range(world)]
    listed = [path for share in shares for path in share]
    assert sorted(listed) == list(spec.files), "each file on exactly one rank"
    samples = dict(zip(spec.files, spec.file_samples))
    assert [share.samples for share in shares] == [sum(samples[p] for p in share) for share in shares]
    assert sum(share.samples for share in shares) == spec.total_samples
    assert all(list(share) == sorted(share) for share in shares)
    assert shares[0].member_samples == shares[2].member_samples
    assert shares[0].imbalance == max(s.samples for s in shares) / (spec.total_samples / world) < 1.1
    assert registries[1].get_shard("ds", 1, 5) == shares[1], "the same files every epoch"

    with caplog.at_level("WARNING", logger="dtruntime"):  # 2 files, 3 ranks: one gets nothing
        registry = DatasetRegistry(rank=2, world_size=3)
        write_parquet_files(str(tmp_path / "two"), [10, 10])
        registry.register("two", str(tmp_path / "two"), "parquet")
        share = registry.get_shard("two", 2, 0)
    assert share.imbalance == 1.5
    assert "imbalance 1.50" in caplog.text and "get_assignment" in caplog.text


def test_assign_files_is_independent_of_member_order_and_keeps_empty_files():
    owned = sharding.assign_files([5, 0, 3, 3], ["b", "a", "c"], seed=1)
    assert owned == sharding.assign_files([5, 0, 3, 3], ["c", "b", "a"], seed=1)
    assert sorted(i for indices in owned.values() for i in indices) == [0, 1, 2, 3]
    with pytest.raises(DatasetError, match="file sample count must be an integer >= 0"):
        sharding.assign_files([-1], ["a"])


def test_file_less_dataset_yields_ranges():
    registry = DatasetRegistry(rank=0, world_size=4)
    registry.register("imagenet", total_samples=1_281_167, shard_size=10_000, shuffle=True)
    assert registry.get_shard("imagenet", worker_rank=0, epoch=0) == []
    check_covers_exactly(registry, "imagenet", 4, 0, 1_281_167)
    record = registry.get_assignment("imagenet", 1, 0)[0]
    assert record.file_paths == () and record.end_sample > record.start_sample


def test_world_from_environment(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "5")
    registry = DatasetRegistry("http://coordinator:50051")
    registry.register("d", total_samples=1000, shard_size=10)
    registry.get_assignment("d", 4, 0)
    with pytest.raises(DatasetError, match="worker_rank 5 is out of range for world_size 5"):
        registry.get_assignment("d", 5, 0)
    monkeypatch.setenv("WORLD_SIZE", "many")
    with pytest.raises(DatasetError, match="WORLD_SIZE"):
        DatasetRegistry()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    registry = DatasetRegistry()
    registry.register("d", total_samples=10)
    assert sum(r.num_samples for r in registry.get_assignment("d", 0, 0)) == 10


@dataclass(frozen=True)
class Member:
    worker_id: str
    rank: int


class Membership:
    """A stand-in membership view: the protocol the orchestrator will satisfy."""

    def __init__(self, members):
        self.live = list(members)

    def members(self):
        return list(self.live)


def test_orchestrator_membership_drives_the_ring():
    view = Membership([Member(f"host-a/{i}", i) for i in range(4)])
    assert isinstance(view, MembershipView) and not isinstance(view, ControlPlane)
    assert isinstance(AgreeingMembership([]), ControlPlane)
    registry = DatasetRegistry(orchestrator=view)
    registry.register("d", total_samples=10_000, shard_size=100)
    before = {r: registry.get_assignment("d", r, 0) for r in range(4)}
    assert set(registry.assignment("d", 0).members) == {f"host-a/{i}" for i in range(4)}
    view.live.pop(2)  # host-a/2 is lost
    with pytest.raises(DatasetError, match="worker_rank 2 is not a live member"):
        registry.get_assignment("d", 2, 0)
    # An epoch keeps the membership it started with (the lost share is taken over);
    # the next epoch is split over the survivors.
    assert {r: registry.get_assignment("d", r, 0) for r in (0, 1, 3)} == {r: before[r] for r in (0, 1, 3)}
    after = {r: registry.get_assignment("d", r, 1) for r in (0, 1, 3)}
    assert sum(r.num_samples for r in after[0]) == -(-10_000 // 3)
    view.live.clear()
    with pytest.raises(DatasetError, match="no live members"):
        registry.get_assignment("d", 0, 0)


def test_orchestrator_without_members_method_is_rejected():
    with pytest.raises(DatasetError, match="members"):
        DatasetRegistry(orchestrator=object())


def test_spec_fingerprint_and_comparison():
    a = DatasetSpec("d", "/x", "parquet", 10, 5, True, 1, ("/x/a.parquet",), (10,), (("k", "1"),))
    assert a.fingerprint() == replace(a).fingerprint()
    assert a.fingerprint() == "d02010bc520a9b89535e32f1fe577663"  # pinned: same in every process and release
    check_same_spec(a, replace(a))
    for field, value in [("shard_size", 6), ("seed", 2), ("files", ("/x/b.parquet",)), ("shuffle", False)]:
        other = replace(a, **{field: value})
        assert other.fingerprint() != a.fingerprint()
        with pytest.raises(DatasetError, match=f"different {field}"):
            check_same_spec(a, other)


def test_reregistering_same_spec_is_a_no_op_and_a_different_one_is_named(tmp_path):
    registry = DatasetRegistry()
    registry.register("d", total_samples=100, shard_size=10, seed=1)
    registry.register("d", total_samples=100, shard_size=10, seed=1)
    with pytest.raises(DatasetError, match="different shard_size"):
        registry.register("d", total_samples=100, shard_size=20, seed=1)


def test_counts_follow_file_changes(memory_root):
    root = f"{memory_root}/grow"
    write_parquet_files(root, [10])
    assert DatasetRegistry().register("g", root).total_samples == 10
    write_parquet_files(root, [25])
    assert DatasetRegistry().register("g", root).total_samples == 25


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(path="{root}", format="avro"), "unknown format 'avro'"),
        (dict(path="{root}/nowhere", format="parquet"), "does not exist"),
        (dict(path="{root}", format="parquet", total_samples=99), "total_samples=99 was declared but .* hold 30"),
        (dict(path="{root}", format="csv"), "holds no csv files"),
        (dict(path=None), "give a path, or total_samples"),
        (dict(path="{root}", shard_size=0), "shard_size must be a positive integer"),
        (dict(path="{root}", seed="x"), "seed must be an integer"),
        (dict(path="{root}", total_samples=-1), "total_samples must be an integer >= 0"),
        (dict(total_samples=5, format="avro"), "unknown format"),
    ],
)
def test_bad_registration_names_the_problem(tmp_path, kwargs, message):
    root = str(tmp_path)
    write_parquet_files(root, [30])
    kwargs = {k: v.format(root=root) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(DatasetError, match=message):
        DatasetRegistry().register("d", **kwargs)


def test_format_inferred_or_ambiguity_named(tmp_path):
    write_parquet_files(str(tmp_path / "p"), [5])
    assert DatasetRegistry().register("d", str(tmp_path / "p")).format == "parquet"
    write_csv_files(str(tmp_path / "p"), [5])
    with pytest.raises(DatasetError, match="several formats"):
        DatasetRegistry().register("e", str(tmp_path / "p"))


def test_damaged_file_is_named(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(DatasetError, match="bad.parquet"):
        DatasetRegistry().register("d", str(tmp_path))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: r.get_assignment("d", 0, -1), "epoch must be an integer >= 0"),
        (lambda r: r.get_shard("d", 3, 0), "worker_rank 3 is out of range for world_size 2"),
        (lambda r: r.get_shard("d", -1, 0), "out of range"),
        (lambda r: r.get_shard("missing", 0, 0), "'missing' is not registered"),
        (lambda r: r.open_shard("d", 0, 0), "no files to read"),
    ],
)
def test_bad_requests_name_the_problem(call, message):
    registry = DatasetRegistry(rank=0, world_size=2)
    registry.register("d", total_samples=100)
    with pytest.raises(DatasetError, match=message):
        call(registry)


def test_bad_world_is_rejected():
    with pytest.raises(DatasetError, match="world_size"):
        DatasetRegistry(rank=0, world_size=0)
    with pytest.raises(DatasetError, match="rank 3 is out of range"):
        DatasetRegistry(rank=3, world_size=2)


def test_memory_url_paths_keep_their_protocol(memory_root):
    write_tfrecord_files(f"{memory_root}/t", [3])
    spec = DatasetRegistry().register("t", f"{memory_root}/t")
    assert all(p.startswith("memory://") for p in spec.files)
    assert fsspec.filesystem("memory").exists(spec.files[0])


def test_s3_dataset_through_a_moto_server(moto_endpoint):
    import s3fs

    options = {"endpoint_url": moto_endpoint, "key": "testing", "secret": "testing"}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("dtruntime-data")
    write_parquet_files("memory://s3-staging", [90, 60], row_group_size=16)
    memory = fsspec.filesystem("memory")
    for name in memory.ls("/s3-staging", detail=False):
        fs.pipe_file(f"dtruntime-data/train/{name.rsplit('/', 1)[1]}", memory.cat_file(name))
    memory.rm("/s3-staging", recursive=True)

    registry = DatasetRegistry(rank=0, world_size=2, storage_options=options)
    spec = registry.register("s3ds", "s3://dtruntime-data/train", "parquet", total_samples=150, shard_size=40)
    assert spec.files == ("s3://dtruntime-data/train/part-000.parquet", "s3://dtruntime-data/train/part-001.parquet")
    values = read_values(registry, "s3ds", 1, 0)
    assert values == [i for r in registry.get_assignment("s3ds", 1, 0) for i in r.sample_order()]
    assert registry.get_shard("s3ds", 1, 0)


class AgreeingMembership(Membership):
    """A stand-in orchestrator (a whole ``ControlPlane``) whose agreement barrier reports a
    fixed other worker's summary."""

    worker_id = "host-a/0"
    heartbeat_period_s = 0.0

    def __init__(self, members, other_summary=None):
        super().__init__(members)
        self.other_summary = other_summary
        self.calls = []
        self.published = {}

    def set_progress(self, key, value):
        self.published[key] = value

    def progress(self, key):
        return {}

    def note_dataset(self, name, total_samples):
        pass

    def agree_sync(self, barrier_id, value, timeout=None, elastic=False):
        from dtruntime import Agreement

        self.calls.append((barrier_id, value, timeout))
        if self.other_summary is None or self.other_summary == value:
            return Agreement(barrier_id, "host-a/0", value, (), "")
        return Agreement(barrier_id, "host-a/0", value, ("host-a/1",), self.other_summary)


def test_register_agrees_once_per_dataset_and_names_a_field_that_differs_by_hash():
    view = AgreeingMembership([Member(f"host-a/{i}", i) for i in range(2)])
    registry = DatasetRegistry(orchestrator=view, spec_check_timeout=5.0)
    spec = registry.register("d", total_samples=100, shard_size=10)
    registry.register("d", total_samples=100, shard_size=10)  # repeated: local no-op
    assert view.calls == [("dtruntime.dataset:d", spec_summary(spec), 5.0)]

    other = spec_summary(replace(spec, path="s3://bucket/" + "x" * 100, shard_size=10))
    view = AgreeingMembership(view.live, other_summary=other)
    with pytest.raises(DatasetError, match=r"path is \(hash [0-9a-f]{12}\) on worker host-a/1 and null here"):
        DatasetRegistry(orchestrator=view).register("d", total_samples=100, shard_size=10)


def test_spec_summary_is_short_and_printable_whatever_the_spec():
    spec = DatasetSpec("d" * 300, "/data/" + "p" * 5000, "csv", 10**12, 7, True, 3, ("f;1",) * 1000,
                       (5,) * 1000, (("key", '"' + "v" * 500 + '"'),))
    summary = spec_summary(spec)
    assert len(summary) < 500 and summary.isprintable()
    assert summary_difference(summary, spec_summary(replace(spec, seed=4))) == ("seed", "3", "4")


class TakeOverView(AgreeingMembership):
    """A survivor's stand-in orchestrator: another survivor heard ``other_cursor`` of the lost one."""

    def __init__(self, members, heard, other_cursor, other_fingerprint=None):
        super().__init__(members)
        self.heard, self.other_cursor, self.other_fingerprint = heard, other_cursor, other_fingerprint
        self.agreed_lost = 0

    def progress(self, key):
        return dict(self.heard)

    def agree_sync(self, barrier_id, value, timeout=None, elastic=False):
        from dtruntime import Agreement

        if barrier_id.startswith(("dtruntime.dataset:", "dtruntime.lost:")):
            assert elastic or barrier_id.startswith("dtruntime.dataset:")
            self.agreed_lost += barrier_id.startswith("dtruntime.lost:")
            return Agreement(barrier_id, "host-a/0", value, (), "")  # spec check, who is lost: all agree
        self.calls.append((barrier_id, value, timeout))
        fingerprint, _, cursor = value.partition(":")
        other = f"{self.other_fingerprint or fingerprint}:{max(int(cursor), self.other_cursor)}"
        if other == value:
            return Agreement(barrier_id, "host-a/0", value, (), "")
        return Agreement(barrier_id, "host-a/0", value, ("host-a/1",), other)


def test_take_over_settles_on_the_furthest_cursor_any_survivor_heard():
    members = [Member(f"host-a/{i}", i) for i in range(3)]
    view = TakeOverView(members, heard={"host-a/2": 100}, other_cursor=300)
    registry = DatasetRegistry(orchestrator=view)
    registry.register("d", total_samples=3000, shard_size=100, shuffle=True, seed=1)
    registry.get_assignment("d", 0, 0)
    assert registry.take_over("d", 0) == []  # nobody lost: one agreement on that, no cursor rounds
    assert view.agreed_lost == 1 and view.calls == []
    epoch = registry.assignment("d", 0)
    view.live.pop(2)
    records = registry.take_over("d", 0, timeout=9.0)
    assert [value.split(":")[1] for _, value, _ in view.calls] == ["100", "300"]  # two rounds
    expected = sharding.take_over(epoch, {"host-a/2": sharding.completed_ranges(epoch, "host-a/2", 300)},
                                  ["host-a/0", "host-a/1"])["host-a/0"]
    assert [(r.start_sample, r.end_sample) for r in records if not r.padding] == [
        (p.start, p.end) for p in expected.pieces
    ]

    view.other_fingerprint = "000000000000"
    with pytest.raises(DatasetError, match="different memberships"):
        registry.take_over("d", 0)


def test_elastic_epoch_calls_need_an_orchestrator_and_check_their_input():
    registry = DatasetRegistry(rank=0, world_size=2)
    registry.register("d", total_samples=100, shard_size=10)
    with pytest.raises(DatasetError, match="needs an orchestrator"):
        registry.report_progress("d", 0, 10)
    with pytest.raises(DatasetError, match="needs an orchestrator"):
        registry.take_over("d", 0)
    view = TakeOverView([Member("host-a/0", 0)], heard={}, other_cursor=0)
    registry = DatasetRegistry(orchestrator=view)
    registry.register("d", total_samples=100, shard_size=10)
    with pytest.raises(DatasetError, match="cursor"):
        registry.report_progress("d", 0, -1)
    with pytest.raises(DatasetError, match="epoch"):
        registry.report_progress("d", -1, 0)
    with pytest.raises(DatasetError, match="never called"):
        registry.take_over("d", 3)
