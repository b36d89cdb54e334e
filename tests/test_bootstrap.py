"""Bootstrap: coordinator URLs, torchrun environment, worker ids, bind plans, warnings."""

from __future__ import annotations

import logging

import pytest

from dtruntime.errors import ConfigError
from dtruntime.runtime.bootstrap import (
    MASTER_PORT_OFFSET,
    coordinator_from_master,
    describe_bind,
    parse_coordinator_url,
    resolve_bootstrap,
    validate_worker_id,
    warn_if_insecure,
)

TORCHRUN_ENV = {
    "RANK": "3",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "10.1.2.3",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "job-42",
    "TORCHELASTIC_RESTART_COUNT": "2",
}


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("tcp://127.0.0.1:50051", "tcp://127.0.0.1:50051"),
        ("http://coordinator:50051", "tcp://coordinator:50051"),
        ("http://localhost:50051/", "tcp://localhost:50051"),
        ("HTTP://node-1.cluster.local:7000", "tcp://node-1.cluster.local:7000"),
        ("node7:1", "tcp://node7:1"),
        ("  10.0.0.1:65535 ", "tcp://10.0.0.1:65535"),
        ("[::1]:5000", "tcp://[::1]:5000"),
        ("tcp://[fe80::1]:5000", "tcp://[fe80::1]:5000"),
    ],
)
def test_coordinator_url_forms(url: str, endpoint: str) -> None:
    assert parse_coordinator_url(url) == endpoint


@pytest.mark.parametrize(
    "url",
    ["", "coordinator", "tcp://host", "tcp://host:0", "tcp://host:65536", "tcp://host:-1", "tcp://host:80x",
     "https://host:1", "ipc:///tmp/x", "tcp://:5000", "tcp://a b:1", "tcp://host:1/path", "tcp://::1:5",
     "tcp://[nothex]:1", "tcp://[10.0.0.1]:1", "tcp://host..x:1", "tcp://-host:1"],
)
def test_bad_coordinator_urls_name_the_key(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_coordinator_url(url, key="COORDINATOR_URL")
    assert info.value.key == "COORDINATOR_URL"


def test_torchrun_environment() -> None:
    info = resolve_bootstrap(TORCHRUN_ENV)
    assert (info.rank, info.world_size, info.local_rank) == (3, 8, 1)
    assert info.worker_id == "worker-3"
    assert info.coordinator_endpoint == "tcp://10.1.2.3:29501"
    assert info.coordinator_source == "MASTER_ADDR"
    assert info.run_id == "job-42" and info.restart_count == 2
    assert info.peers == () and info.own_host is None


def test_master_port_offset_never_hits_the_store_port() -> None:
    assert MASTER_PORT_OFFSET != 0
    for port in (1, 29500, 65534, 65535):
        ours = int(coordinator_from_master("h", port).rsplit(":", 1)[1])
        assert ours != port and 1 <= ours <= 65535
    assert coordinator_from_master("::1", 29500) == "tcp://[::1]:29501"


def test_precedence_argument_then_coordinator_url_then_master() -> None:
    env = dict(TORCHRUN_ENV, COORDINATOR_URL="http://coord:50051")
    assert resolve_bootstrap(env).coordinator_endpoint == "tcp://coord:50051"
    assert resolve_bootstrap(env, coordinator_url="tcp://arg:1").coordinator_endpoint == "tcp://arg:1"
    info = resolve_bootstrap({})
    assert info.coordinator_source == "default" and info.coordinator_endpoint == "tcp://127.0.0.1:50051"


def test_world_of_one_and_explicit_arguments() -> None:
    info = resolve_bootstrap({})
    assert (info.rank, info.world_size, info.worker_id) == (0, 1, "worker-0")
    info = resolve_bootstrap(TORCHRUN_ENV, rank=5, world_size=6, worker_id="trainer-a")
    assert (info.rank, info.world_size, info.worker_id) == (5, 6, "trainer-a")
    assert resolve_bootstrap(dict(TORCHRUN_ENV, WORKER_ID="gpu-node-3")).worker_id == "gpu-node-3"


def test_peers_are_parsed_and_deduplicated() -> None:
    env = {"DTRUNTIME_PEERS": " a:1, tcp://b:2,,http://a:1 ,[::1]:3"}
    assert resolve_bootstrap(env).peers == ("tcp://a:1", "tcp://b:2", "tcp://[::1]:3")
    with pytest.raises(ConfigError) as info:
        resolve_bootstrap({"DTRUNTIME_PEERS": "a:1,bogus"})
    assert info.value.key == "DTRUNTIME_PEERS"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "1.0", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"RANK": "0"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "4"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-3"}, "LOCAL_RANK"),
        ({"TORCHELASTIC_RESTART_COUNT": "-1"}, "TORCHELASTIC_RESTART_COUNT"),
        ({"TORCHELASTIC_RESTART_COUNT": "many"}, "TORCHELASTIC_RESTART_COUNT"),
        ({"MASTER_ADDR": "h"}, "MASTER_PORT"),
        ({"MASTER_PORT": "29500"}, "MASTER_ADDR"),
        ({"MASTER_ADDR": "h", "MASTER_PORT": "0"}, "MASTER_PORT"),
        ({"MASTER_ADDR": "h", "MASTER_PORT": "70000"}, "MASTER_PORT"),
        ({"MASTER_ADDR": "bad host", "MASTER_PORT": "29500"}, "MASTER_ADDR"),
        ({"COORDINATOR_URL": "ftp://x:1"}, "COORDINATOR_URL"),
        ({"WORKER_ID": "../etc"}, "WORKER_ID"),
        ({"TORCHELASTIC_RUN_ID": "a/b"}, "TORCHELASTIC_RUN_ID"),
        ({"DTRUNTIME_HOST": "not a host"}, "DTRUNTIME_HOST"),
    ],
)
def test_bad_environment_names_the_variable(env: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_bootstrap(env)
    assert info.value.key == key


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_bootstrap({}, rank=3, world_size=2)
    assert info.value.key == "rank"
    with pytest.raises(ConfigError) as info:
        resolve_bootstrap({}, rank=True, world_size=2)  # type: ignore[arg-type]
    assert info.value.key == "rank"
    with pytest.raises(ConfigError) as info:
        resolve_bootstrap({}, coordinator_url="nonsense")
    assert info.value.key == "coordinator_url"


@pytest.mark.parametrize("worker_id", ["worker-0", "gpu-node-3", "a.b", "host:7", "w@host+1", "x" * 128])
def test_valid_worker_ids(worker_id: str) -> None:
    assert validate_worker_id(worker_id) == worker_id


@pytest.mark.parametrize(
    "worker_id", ["", "a/b", "a\\b", "..", "x/../y", "a..b", "tab\there", "nl\n", "\x00", " lead", "trail ",
                  "gpu node 3", "é", "-dash-first",
                  "x" * 129, 7, None, b"bytes"],
)
def test_invalid_worker_ids(worker_id: object) -> None:
    with pytest.raises(ConfigError) as info:
        validate_worker_id(worker_id, key="WORKER_ID")
    assert info.value.key == "WORKER_ID"


def test_rank_zero_binds_the_coordinator_endpoint() -> None:
    plan = describe_bind(0, "tcp://127.0.0.1:50051")
    assert (plan.bind_endpoint, plan.advertise_host, plan.is_coordinator) == ("tcp://127.0.0.1:50051", "127.0.0.1", True)
    assert describe_bind(0, "tcp://localhost:5").bind_endpoint == "tcp://127.0.0.1:5"
    plan = describe_bind(0, "tcp://coordinator:50051")
    assert plan.bind_endpoint == "tcp://0.0.0.0:50051" and plan.advertise_host == "coordinator"


def test_a_wildcard_is_bound_but_a_reachable_host_is_advertised() -> None:
    """Issue 10 item 11: ``address = "0.0.0.0:50051"`` advertised tcp://0.0.0.0:50051 to peers."""
    plan = describe_bind(0, "tcp://0.0.0.0:50051", fallback_host="node7")
    assert (plan.bind_endpoint, plan.advertise_host, plan.advertise_source) == (
        "tcp://0.0.0.0:50051", "node7", "hostname")
    plan = describe_bind(0, "tcp://0.0.0.0:50051", own_host="10.0.0.7", fallback_host="node7")
    assert (plan.advertise_host, plan.advertise_source) == ("10.0.0.7", "DTRUNTIME_HOST or ip")
    plan = describe_bind(3, "tcp://10.0.0.1:50051", own_host="0.0.0.0", fallback_host="node7")
    assert (plan.bind_endpoint, plan.advertise_host) == ("tcp://0.0.0.0:0", "node7")
    with pytest.raises(ConfigError, match="wildcard '0.0.0.0', which peers cannot dial: set DTRUNTIME_HOST"):
        describe_bind(0, "tcp://0.0.0.0:50051", fallback_host="not a host!")


def test_other_ranks_bind_their_own_host_on_an_ephemeral_port() -> None:
    plan = describe_bind(2, "tcp://127.0.0.1:50051")
    assert (plan.bind_endpoint, plan.advertise_host, plan.is_coordinator) == ("tcp://127.0.0.1:0", "127.0.0.1", False)
    plan = describe_bind(2, "tcp://10.0.0.1:50051", own_host="10.0.0.7")
    assert plan.bind_endpoint == "tcp://10.0.0.7:0"
    plan = describe_bind(2, "tcp://10.0.0.1:50051", own_host="node7")
    assert (plan.bind_endpoint, plan.advertise_host) == ("tcp://0.0.0.0:0", "node7")
    with pytest.raises(ConfigError) as info:
        describe_bind(2, "tcp://10.0.0.1:50051")
    assert info.value.key == "DTRUNTIME_HOST"


def test_insecure_bind_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert not warn_if_insecure("tcp://127.0.0.1:0", has_secret=False)
        assert not warn_if_insecure("tcp://[::1]:5", has_secret=False)
        assert not warn_if_insecure("tcp://0.0.0.0:5", has_secret=True)
        assert not caplog.records
        assert warn_if_insecure("tcp://0.0.0.0:5", has_secret=False)
        assert warn_if_insecure("tcp://node7:0", has_secret=False)
    assert len(caplog.records) == 2 and "DTRUNTIME_SECRET" in caplog.text


def test_one_launcher_per_host_places_workers_by_offset_and_local_rank():
    """torchrun --nnodes 1 on each host numbers its workers from 0; the job's place comes
    from DTRUNTIME_WORLD_SIZE and this host's DTRUNTIME_RANK_OFFSET."""
    host_b = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "DTRUNTIME_WORLD_SIZE": "5",
              "DTRUNTIME_RANK_OFFSET": "3", "COORDINATOR_URL": "tcp://10.1.0.1:29700"}
    info = resolve_bootstrap(host_b)
    assert (info.rank, info.world_size, info.local_rank, info.worker_id) == (4, 5, 1, "worker-4")
    assert resolve_bootstrap(host_b, rank=0, world_size=2).rank == 0  # explicit arguments still win
    with pytest.raises(ConfigError) as offset_alone:
        resolve_bootstrap({"DTRUNTIME_RANK_OFFSET": "3"})
    assert offset_alone.value.key == "DTRUNTIME_RANK_OFFSET"
    with pytest.raises(ConfigError) as past_the_end:
        resolve_bootstrap({**host_b, "DTRUNTIME_WORLD_SIZE": "4"})
    assert past_the_end.value.key == "DTRUNTIME_RANK_OFFSET"
