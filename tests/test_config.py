"""Config: seed TOML sections accepted as they are; env overrides file; errors name the key."""

from __future__ import annotations

import pytest

from dtruntime import Config, ConfigError, TrainingOrchestrator

SEED_TOML = """
[coordinator]
address = "0.0.0.0:50051"
heartbeat_interval_ms = 1000
heartbeat_timeout_ms = 30000

[storage]
backend = "s3"
bucket = "my-training-checkpoints"
region = "us-west-2"

[checkpoint]
interval_steps = 1000
keep_last_n = 5
compression = "gzip"

[dataset]
default_shard_size = 10000
prefetch_shards = 2
"""


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_seed_configuration_file_loads_unchanged(tmp_path):
    config = Config.load(write(tmp_path, SEED_TOML), env={})
    assert config.coordinator.address == "0.0.0.0:50051"
    assert config.storage.bucket == "my-training-checkpoints"
    assert config.checkpoint.compression == "gzip"
    assert config.dataset.prefetch_shards == 2


def test_environment_overrides_file_and_keywords_override_both(tmp_path):
    env = {"DTRUNTIME_HEARTBEAT_INTERVAL_MS": "250"}
    config = Config.load(write(tmp_path, SEED_TOML), env=env)
    assert config.coordinator.heartbeat_interval_ms == 250
    config = Config.load(write(tmp_path, SEED_TOML), env=env, heartbeat_interval_ms=100, heartbeat_timeout_ms=1000)
    assert (config.coordinator.heartbeat_interval_ms, config.coordinator.heartbeat_timeout_ms) == (100, 1000)


def test_config_file_from_environment_variable(tmp_path):
    config = Config.load(env={"DTRUNTIME_CONFIG": str(write(tmp_path, SEED_TOML))})
    assert config.storage.backend == "s3"


@pytest.mark.parametrize(
    "text, key",
    [
        ("[coordinator]\nheartbeat_interval_ms = -5\n", "coordinator.heartbeat_interval_ms"),
        ("[coordinator]\nheartbeat_interval_ms = 'fast'\n", "coordinator.heartbeat_interval_ms"),
        ("[coordinator]\nheartbeat_timeout_ms = 10\n", "coordinator.heartbeat_timeout_ms"),
        ("[checkpoint]\ncompression = 'lz4'\n", "checkpoint.compression"),
        ("[checkpoint]\nkeep_lastn = 3\n", "checkpoint.keep_lastn"),
        ("[checkpoint]\nexit_timeout_s = -1\n", "checkpoint.exit_timeout_s"),
        ("[dataset]\nprefetch_shards = true\n", "dataset.prefetch_shards"),
        ("[storage]\nbackend = 'ftp'\n", "storage.backend"),
        ("[cluster]\nsize = 3\n", "cluster"),
        ("[coordinator\n", "is not valid TOML"),
        ("[watchdog]\nprogress_timeout_s = -1\n", "watchdog.progress_timeout_s"),
        ("[watchdog]\nmin_progress_timeout_s = 0\n", "watchdog.min_progress_timeout_s"),
        ("[watchdog]\nstill_waiting_every_s = 'often'\n", "watchdog.still_waiting_every_s"),
        ("[preemption]\nsigterm = 'ignore'\n", "preemption.sigterm"),
        ("[preemption]\ngrace_s = 0\n", "preemption.grace_s"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as caught:
        Config.load(write(tmp_path, text), env={})
    assert key in str(caught.value)


def test_bad_environment_value_names_the_variable_and_the_key_it_sets():
    """Issue 10 item 12: a bad DTRUNTIME_HEARTBEAT_INTERVAL_MS was reported under the TOML key."""
    with pytest.raises(ConfigError) as caught:
        Config.load(env={"DTRUNTIME_HEARTBEAT_INTERVAL_MS": "abc"})
    assert caught.value.key == "DTRUNTIME_HEARTBEAT_INTERVAL_MS"
    assert str(caught.value) == (
        "config DTRUNTIME_HEARTBEAT_INTERVAL_MS: must be an integer, not 'abc' (it sets coordinator.heartbeat_interval_ms)")
    with pytest.raises(ConfigError) as caught:  # a failed check names the variable too
        Config.load(env={"DTRUNTIME_HEARTBEAT_TIMEOUT_MS": "10"})
    assert caught.value.key == "DTRUNTIME_HEARTBEAT_TIMEOUT_MS"
    with pytest.raises(ConfigError) as caught:  # ... unless code overrode it
        Config.load(env={"DTRUNTIME_HEARTBEAT_TIMEOUT_MS": "5000"}, heartbeat_timeout_ms=10)
    assert caught.value.key == "coordinator.heartbeat_timeout_ms"


def test_a_missing_config_file_says_config_once(tmp_path):
    """Issue 10 item 12: ``config DTRUNTIME_CONFIG: config file ... does not exist``."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        Config.load(env={"DTRUNTIME_CONFIG": str(missing)})
    assert str(caught.value) == f"config DTRUNTIME_CONFIG: file {missing} does not exist"


def test_an_address_without_a_port_says_the_port_is_missing(tmp_path):
    """Issue 10 item 12: ``address = "localhost"`` got ``'tcp://localhost' is not of the form tcp://host:port``."""
    with pytest.raises(ConfigError) as caught:
        TrainingOrchestrator(env={"DTRUNTIME_CONFIG": str(write(tmp_path, '[coordinator]\naddress = "localhost"\n'))})
    assert str(caught.value) == "config coordinator.address: 'localhost' has no port: write host:port, e.g. localhost:50051"


def test_exit_timeout_defaults_to_two_minutes_and_the_environment_sets_it():
    assert Config.load(env={}).checkpoint.exit_timeout_s == 120
    assert Config.load(env={"DTRUNTIME_CHECKPOINT_EXIT_TIMEOUT_S": "0"}).checkpoint.exit_timeout_s == 0


def test_watchdog_and_preemption_keys_default_and_come_from_file_and_environment(tmp_path):
    config = Config.load(env={})
    assert (config.watchdog.progress_timeout_s, config.watchdog.min_progress_timeout_s) == (0, 30)
    assert (config.watchdog.still_waiting_first_s, config.watchdog.still_waiting_every_s) == (10, 30)
    assert (config.preemption.sigterm, config.preemption.grace_s) == ("auto", 30)
    assert config.preemption.sigterm_action({}) == "stop"  # one launcher for the whole job
    assert config.preemption.sigterm_action({"DTRUNTIME_WORLD_SIZE": "4"}) == "leave"  # one launcher per host
    assert Config.load(env={"DTRUNTIME_SIGTERM": "stop"}).preemption.sigterm_action({"DTRUNTIME_WORLD_SIZE": "4"}) == "stop"
    path = write(tmp_path, "[watchdog]\nprogress_timeout_s = 90\n[preemption]\ngrace_s = 60\nsigterm = 'default'\n")
    config = Config.load(path, env={"DTRUNTIME_PREEMPTION_GRACE_S": "45", "DTRUNTIME_STILL_WAITING_FIRST_S": "5"})
    assert (config.watchdog.progress_timeout_s, config.watchdog.still_waiting_first_s) == (90, 5)
    assert (config.preemption.grace_s, config.preemption.sigterm) == (45, "default")
    with pytest.raises(ConfigError) as caught:
        Config.load(env={"DTRUNTIME_SIGTERM": "kill"})
    assert caught.value.key == "DTRUNTIME_SIGTERM" and "preemption.sigterm" in str(caught.value)


def test_missing_file_and_unknown_override_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="unknown configuration key"):
        Config.load(env={}, heartbeat_ms=5)


# ---------------------------------------------- the plain constructors honour the file


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """A TOML file at $DTRUNTIME_CONFIG with [checkpoint] and [dataset] set away from the defaults."""
    path = write(tmp_path, "[checkpoint]\nkeep_last_n = 2\ninterval_steps = 50\ncompression = 'none'\n"
                           "[dataset]\ndefault_shard_size = 250\nprefetch_shards = 0\n")
    monkeypatch.setenv("DTRUNTIME_CONFIG", str(path))
    for name in ("DTRUNTIME_CHECKPOINT_KEEP_LAST_N", "DTRUNTIME_CHECKPOINT_COMPRESSION", "DTRUNTIME_PREFETCH_SHARDS"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_checkpoint_manager_reads_the_file_and_keywords_win(tmp_path, config_file, monkeypatch):
    from dtruntime import CheckpointManager

    with CheckpointManager(str(tmp_path / "ckpt")) as manager:
        assert (manager.keep_last_n, manager.compression, manager.interval_steps) == (2, "none", 50)
        for step in (50, 100, 150, 200):
            handle = manager.maybe_save({"step": step}, step)
            assert handle is not None and handle.result(30).codec == "none"
        assert manager.maybe_save({"step": 201}, 201) is None
        manager.flush_sync(30)
        assert manager.list_checkpoints_sync() == [150, 200]  # keep_last_n = 2 from the file
    with CheckpointManager(str(tmp_path / "x"), interval_steps=7) as manager:
        assert [manager.should_save(s) for s in (0, 7, 8, 14)] == [False, True, False, True]
    monkeypatch.setenv("DTRUNTIME_CHECKPOINT_KEEP_LAST_N", "4")  # the environment overrides the file
    with CheckpointManager(str(tmp_path / "y")) as manager:
        assert manager.keep_last_n == 4
    with CheckpointManager(str(tmp_path / "z"), keep_last_n=9) as manager:  # keywords override both
        assert manager.keep_last_n == 9
    with pytest.raises(ConfigError, match="checkpoint.interval_steps"):
        CheckpointManager(str(tmp_path / "w"), interval_steps=0)
    with pytest.raises(ConfigError, match="checkpoint.exit_timeout_s"):
        CheckpointManager(str(tmp_path / "w"), exit_timeout_s=-1)


def test_dataset_registry_reads_shard_size_and_prefetch_from_the_file(tmp_path, config_file):
    from dtruntime import DatasetRegistry

    from .datasets_helpers import write_parquet_files

    write_parquet_files(str(tmp_path / "data"), [600])
    registry = DatasetRegistry(rank=0, world_size=1)
    assert registry.register("d", str(tmp_path / "data")).shard_size == 250
    assert registry.open_shard("d", 0, 0).prefetch_shards == 0
    assert registry.open_shard("d", 0, 0, prefetch_shards=3).prefetch_shards == 3
    assert registry.register("e", total_samples=1000, shard_size=100).shard_size == 100  # a keyword wins
