"""Configuration: dataclasses per section, loaded from a TOML file and the environment.

The TOML sections and keys are those of the original configuration file and are
accepted as they are::

    [coordinator]  address, heartbeat_interval_ms, heartbeat_timeout_ms
    [storage]      backend, bucket, region, endpoint_url
    [checkpoint]   interval_steps, keep_last_n, compression, exit_timeout_s
    [dataset]      default_shard_size, prefetch_shards
    [http]         port, host
    [watchdog]     progress_timeout_s, min_progress_timeout_s, still_waiting_first_s,
                   still_waiting_every_s
    [preemption]   sigterm, grace_s

(``exit_timeout_s`` and the ``[http]``, ``[watchdog]`` and ``[preemption]`` sections are
not in the original file.)

Precedence, lowest first: dataclass defaults < TOML file < environment < keyword
overrides passed in code. Every bad value raises :class:`~dtruntime.errors.ConfigError`
naming the key (``coordinator.heartbeat_timeout_ms``), or the environment variable that
set it (``DTRUNTIME_HEARTBEAT_TIMEOUT_MS``, with the key it sets), never a bare
``KeyError`` or ``TypeError``. Unknown keys are errors too, so a typo is not silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class CoordinatorConfig:
    """Control-plane settings. ``address`` is the endpoint rank 0 binds (``host:port``)."""

    address: str = "127.0.0.1:50051"
    heartbeat_interval_ms: int = 1000
    heartbeat_timeout_ms: int = 30000

    def validate(self) -> None:
        _positive("coordinator.heartbeat_interval_ms", self.heartbeat_interval_ms)
        _positive("coordinator.heartbeat_timeout_ms", self.heartbeat_timeout_ms)
        if self.heartbeat_timeout_ms < 2 * self.heartbeat_interval_ms:
            raise ConfigError(
                "coordinator.heartbeat_timeout_ms",
                f"must be at least twice heartbeat_interval_ms "
                f"({self.heartbeat_timeout_ms} < 2 * {self.heartbeat_interval_ms})",
            )


@dataclass(frozen=True)
class StorageConfig:
    """Where checkpoints live. ``backend`` is ``local``, ``s3`` or ``memory``."""

    backend: str = "local"
    bucket: str = ""
    region: str = ""
    endpoint_url: str = ""

    def validate(self) -> None:
        if self.backend not in ("local", "s3", "memory"):
            raise ConfigError("storage.backend", f"must be local, s3 or memory, not {self.backend!r}")


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoint cadence, retention and compression (``none``, ``gzip``, ``zstd``, ``auto``).

    ``exit_timeout_s``: how long, at interpreter exit (or when the orchestrator a manager
    is attached to closes), saves still pending may take to become durable; 0 waits not at
    all. Steps not durable by then are named in an ERROR log.
    """

    interval_steps: int = 1000
    keep_last_n: int = 5
    compression: str = "auto"
    exit_timeout_s: int = 120

    def validate(self) -> None:
        _positive("checkpoint.interval_steps", self.interval_steps)
        _positive("checkpoint.keep_last_n", self.keep_last_n)
        _non_negative("checkpoint.exit_timeout_s", self.exit_timeout_s)
        if self.compression not in ("none", "gzip", "zstd", "auto"):
            raise ConfigError(
                "checkpoint.compression", f"must be none, gzip, zstd or auto, not {self.compression!r}"
            )


@dataclass(frozen=True)
class DatasetConfig:
    """Defaults for datasets registered without explicit values."""

    default_shard_size: int = 10000
    prefetch_shards: int = 2

    def validate(self) -> None:
        _positive("dataset.default_shard_size", self.default_shard_size)
        _non_negative("dataset.prefetch_shards", self.prefetch_shards)


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP API every worker may serve (``dtruntime.http``).

    ``port`` 0 (the default) serves nothing; under torchrun each local rank serves on
    ``port + LOCAL_RANK``, so ``port`` .. ``port + nproc_per_node - 1`` must be free.
    ``host`` is the address bound, loopback unless said otherwise.
    """

    port: int = 0
    host: str = "127.0.0.1"

    def validate(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError("http.port", f"must be an integer in 0..65535 (0: no HTTP API), not {self.port!r}")
        if not self.host or self.host != self.host.strip() or any(c.isspace() or c in "/[]" for c in self.host):
            raise ConfigError("http.host", f"must be a host name or IP address, not {self.host!r}")


@dataclass(frozen=True)
class WatchdogConfig:
    """Hang detection and long-wait logging (see ``dtruntime.control.watchdog``).

    ``progress_timeout_s``: a rank whose step does not move for this long while the
    others move (or wait for it) is declared hung; 0 (the default) derives it from the
    observed step times: 10 x the p99 step time, at least ``min_progress_timeout_s``.
    ``still_waiting_first_s`` / ``still_waiting_every_s``: a blocking barrier,
    agreement or registration logs whom it waits for after the first, then every the
    second, seconds.
    """

    progress_timeout_s: int = 0
    min_progress_timeout_s: int = 30
    still_waiting_first_s: int = 10
    still_waiting_every_s: int = 30

    def validate(self) -> None:
        _non_negative("watchdog.progress_timeout_s", self.progress_timeout_s)
        _positive("watchdog.min_progress_timeout_s", self.min_progress_timeout_s)
        _positive("watchdog.still_waiting_first_s", self.still_waiting_first_s)
        _positive("watchdog.still_waiting_every_s", self.still_waiting_every_s)


@dataclass(frozen=True)
class PreemptionConfig:
    """What SIGTERM does once the training loop calls a step boundary.

    ``sigterm = "stop"``: a coordinated stop (every rank saves the same step, the leader
    commits it, every process exits 0) that must finish within ``grace_s`` seconds.
    ``"leave"``: this worker leaves the job cleanly and ends as SIGTERM would end it;
    the other workers go on without it (what a per-host launcher's restart needs: it
    SIGTERMs the host's other workers when one dies). ``"auto"`` (default): ``leave``
    when a launcher runs only part of the job (``DTRUNTIME_WORLD_SIZE`` is set, see
    :func:`launcher_world`), ``stop`` otherwise. ``"default"``: no handler.
    """

    sigterm: str = "auto"
    grace_s: int = 30

    def validate(self) -> None:
        if self.sigterm not in SIGTERM_MODES:
            raise ConfigError("preemption.sigterm", f"must be one of {', '.join(SIGTERM_MODES)}, not {self.sigterm!r}")
        _positive("preemption.grace_s", self.grace_s)

    def sigterm_action(self, env: Mapping[str, str]) -> str:
        """``sigterm`` with ``auto`` resolved against the launcher's environment."""
        if self.sigterm != "auto":
            return self.sigterm
        return "leave" if env.get("DTRUNTIME_WORLD_SIZE") else "stop"


SIGTERM_MODES = ("auto", "stop", "leave", "default")


@dataclass(frozen=True)
class Config:
    """The whole configuration; build with :meth:`load` rather than by hand."""

    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    preemption: PreemptionConfig = field(default_factory=PreemptionConfig)

    def validate(self) -> "Config":
        for section in fields(self):
            getattr(self, section.name).validate()
        return self

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> "Config":
        """Defaults, then the TOML file at ``path`` (or ``$DTRUNTIME_CONFIG``), then ``env``.

        ``overrides`` are flat keys of any section (``heartbeat_interval_ms=100``) or
        ``section__key`` for an ambiguous one; they win over everything.
        """
        env = os.environ if env is None else env
        config = cls()
        path_key = "path" if path is not None else "DTRUNTIME_CONFIG"
        path = path if path is not None else env.get("DTRUNTIME_CONFIG")
        if path:
            config = config.merge(_read_toml(Path(path), path_key))
        from_env: dict[str, str] = {}  # "section.key" -> the variable that set it
        for name, (section, key) in _ENV_KEYS.items():
            if name in env:
                from_env[f"{section}.{key}"] = name
                try:
                    config = config.merge({section: {key: env[name]}})
                except ConfigError as exc:
                    raise _blamed(name, exc) from None
        overridden = {f"{section}.{key}" for section, keys in _flat_to_sections(overrides).items() for key in keys}
        try:
            return config.with_overrides(**overrides)
        except ConfigError as exc:
            name = from_env.get(exc.key)
            if name is None or exc.key in overridden:
                raise
            raise _blamed(name, exc) from None

    def with_overrides(self, **overrides: Any) -> "Config":
        """A validated copy with flat keyword overrides applied (see :meth:`load`)."""
        return self.merge(_flat_to_sections(overrides)).validate()

    def merge(self, sections: Mapping[str, Mapping[str, Any]]) -> "Config":
        """Return a copy with ``{section: {key: value}}`` applied, checking names and types."""
        updated = {}
        for section_name, values in sections.items():
            if section_name not in _SECTIONS:
                raise ConfigError(section_name, f"unknown section (known: {', '.join(_SECTIONS)})")
            if not isinstance(values, Mapping):
                raise ConfigError(section_name, "must be a table of keys")
            current = updated.get(section_name, getattr(self, section_name))
            updated[section_name] = _merge_section(section_name, current, values)
        return replace(self, **updated)


_SECTIONS = {f.name: f for f in fields(Config)}

# Environment variables that map onto configuration keys.
_ENV_KEYS = {
    "DTRUNTIME_HEARTBEAT_INTERVAL_MS": ("coordinator", "heartbeat_interval_ms"),
    "DTRUNTIME_HEARTBEAT_TIMEOUT_MS": ("coordinator", "heartbeat_timeout_ms"),
    "DTRUNTIME_STORAGE_BACKEND": ("storage", "backend"),
    "DTRUNTIME_CHECKPOINT_KEEP_LAST_N": ("checkpoint", "keep_last_n"),
    "DTRUNTIME_CHECKPOINT_COMPRESSION": ("checkpoint", "compression"),
    "DTRUNTIME_CHECKPOINT_EXIT_TIMEOUT_S": ("checkpoint", "exit_timeout_s"),
    "DTRUNTIME_PREFETCH_SHARDS": ("dataset", "prefetch_shards"),
    "DTRUNTIME_HTTP_PORT": ("http", "port"),
    "DTRUNTIME_HTTP_HOST": ("http", "host"),
    "DTRUNTIME_PROGRESS_TIMEOUT_S": ("watchdog", "progress_timeout_s"),
    "DTRUNTIME_MIN_PROGRESS_TIMEOUT_S": ("watchdog", "min_progress_timeout_s"),
    "DTRUNTIME_STILL_WAITING_FIRST_S": ("watchdog", "still_waiting_first_s"),
    "DTRUNTIME_STILL_WAITING_EVERY_S": ("watchdog", "still_waiting_every_s"),
    "DTRUNTIME_SIGTERM": ("preemption", "sigterm"),
    "DTRUNTIME_PREEMPTION_GRACE_S": ("preemption", "grace_s"),
}


def _positive(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"must be a positive integer, not {value!r}")


def _non_negative(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(key, f"must be an integer >= 0, not {value!r}")


def _read_toml(path: Path, key: str) -> dict[str, Any]:
    """The TOML file named by ``key`` (``DTRUNTIME_CONFIG`` or the ``path`` argument)."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(key, f"file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(key, f"{path} is not valid TOML: {exc}") from None


def _blamed(variable: str, error: ConfigError) -> ConfigError:
    """``error`` restated under the environment ``variable`` that set its key."""
    return ConfigError(variable, f"{error.problem} (it sets {error.key})")


def _flat_to_sections(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    for name, value in overrides.items():
        if "__" in name:
            section, key = name.split("__", 1)
        else:
            owners = [s for s, f in _SECTIONS.items() if name in {x.name for x in fields(f.default_factory())}]
            if len(owners) != 1:
                raise ConfigError(name, "unknown configuration key" if not owners else "ambiguous key")
            section, key = owners[0], name
        sections.setdefault(section, {})[key] = value
    return sections


def _merge_section(section_name: str, current: Any, values: Mapping[str, Any]) -> Any:
    known = {f.name: f for f in fields(current)}
    changes = {}
    for key, raw in values.items():
        full_key = f"{section_name}.{key}"
        if key not in known:
            raise ConfigError(full_key, f"unknown key (known: {', '.join(known)})")
        changes[key] = _coerce(full_key, raw, type(getattr(current, key)))
    return dataclasses.replace(current, **changes)


def _coerce(key: str, raw: Any, target: type) -> Any:
    """Convert a TOML or environment value to the field's type, or raise ConfigError."""
    if target is int:
        if isinstance(raw, bool):
            raise ConfigError(key, f"must be an integer, not {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ConfigError(key, f"must be an integer, not {raw!r}")
    if target is str:
        if isinstance(raw, str):
            return raw
        raise ConfigError(key, f"must be a string, not {raw!r}")
    raise ConfigError(key, f"unsupported type {target.__name__}")  # pragma: no cover


MAX_WORLD_SIZE = 1 << 20


def launcher_world(env: Mapping[str, str], rank: int | None = None,
                   world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` from explicit arguments (which win) and the launcher's
    ``RANK`` / ``WORLD_SIZE``: the one reading of them, for the runtime and the data layer.

    One launcher per host (``torchrun --nnodes 1`` on each, so that a failure costs only
    that host's workers): each torchrun numbers its own workers from 0, so the job's
    place comes from ``DTRUNTIME_WORLD_SIZE`` (every worker of every host) and
    ``DTRUNTIME_RANK_OFFSET`` (this host's first rank; default 0): rank = offset +
    ``LOCAL_RANK``. These beat ``RANK`` / ``WORLD_SIZE``; explicit arguments beat both.

    Neither given anywhere: a world of one (rank 0). One without the other, a value that
    is not a plain integer, a world outside ``[1, MAX_WORLD_SIZE]`` or a rank outside
    ``[0, world_size)``: ConfigError naming the argument or variable.
    """
    per_host_world = env_int(None, env, "world_size", "DTRUNTIME_WORLD_SIZE")
    offset = env_int(None, env, "rank", "DTRUNTIME_RANK_OFFSET")
    if offset is not None and per_host_world is None:
        raise ConfigError("DTRUNTIME_RANK_OFFSET", "needs DTRUNTIME_WORLD_SIZE (the whole job's worker count)")
    rank_key, world_key = "RANK", "WORLD_SIZE"
    if per_host_world is not None:
        rank_key, world_key = "DTRUNTIME_RANK_OFFSET", "DTRUNTIME_WORLD_SIZE"
        from_env_rank: int | None = (offset or 0) + (env_int(None, env, "local_rank", "LOCAL_RANK") or 0)
        from_env_world: int | None = per_host_world
    else:
        from_env_rank = env_int(None, env, "rank", "RANK")
        from_env_world = env_int(None, env, "world_size", "WORLD_SIZE")
    rank_v = env_int(rank, env, "rank", "RANK") if rank is not None else from_env_rank
    world_v = env_int(world_size, env, "world_size", "WORLD_SIZE") if world_size is not None else from_env_world
    if (rank_v is None) != (world_v is None):
        missing = world_key if world_v is None else rank_key
        raise ConfigError(missing, "RANK and WORLD_SIZE must be given together")
    rank_v, world_v = (0, 1) if rank_v is None or world_v is None else (rank_v, world_v)
    if world_size is not None:
        world_key = "world_size"
    if not 1 <= world_v <= MAX_WORLD_SIZE:
        raise ConfigError(world_key, f"must be between 1 and {MAX_WORLD_SIZE}, not {world_v}")
    if not 0 <= rank_v < world_v:
        raise ConfigError("rank" if rank is not None else rank_key, f"must be in [0, {world_v}), not {rank_v}")
    return rank_v, world_v


def env_int(explicit: int | None, env: Mapping[str, str], arg_key: str, env_key: str) -> int | None:
    """``explicit`` if given (an int, not a bool), else the integer in ``env[env_key]``, else None."""
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, int):
            raise ConfigError(arg_key, f"must be an integer, not {explicit!r}")
        return explicit
    raw = env.get(env_key)
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if not re.fullmatch(r"-?[0-9]{1,9}", text):
        raise ConfigError(env_key, f"must be an integer, not {raw!r}")
    return int(text)
