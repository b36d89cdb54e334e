"""Who am I and whom do I call first: parsing the launcher's environment.

Pure functions: the environment comes in as a ``Mapping`` and nothing here opens a
socket or resolves a name. Every invalid value raises
:class:`~dtruntime.errors.ConfigError` naming the variable (or argument) it came from.

Variables read (torchrun / TorchElastic set the first seven)::

    RANK, WORLD_SIZE, LOCAL_RANK            this worker's place in the job
    DTRUNTIME_WORLD_SIZE, DTRUNTIME_RANK_OFFSET
                                            one launcher per host: the job's size and this
                                            host's first rank (rank = offset + LOCAL_RANK)
    MASTER_ADDR, MASTER_PORT                torch.distributed's store; we use MASTER_PORT + 1
    TORCHELASTIC_RUN_ID                     job id (validated like a worker id)
    TORCHELASTIC_RESTART_COUNT              how many times torchrun restarted the workers
    WORKER_ID                               stable worker id (default ``worker-<rank>``)
    COORDINATOR_URL                         the endpoint rank 0 binds (beats MASTER_*)
    DTRUNTIME_PEERS                         comma-separated extra join endpoints
    DTRUNTIME_HOST                          the host name/IP other workers reach this one at

The coordinator endpoint, in order of precedence: the ``coordinator_url`` argument,
``COORDINATOR_URL``, ``tcp://MASTER_ADDR:(MASTER_PORT + MASTER_PORT_OFFSET)``, the
configured default. The offset is 1 and never 0, so the control plane never collides
with torchrun's TCPStore, which listens on ``MASTER_PORT`` itself; if ``MASTER_PORT`` is
65535 the offset is subtracted instead. Two torchrun jobs on one host with adjacent
``MASTER_PORT`` values (29500 and 29501) would collide: give them ports two apart or set
``COORDINATOR_URL``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import env_int, launcher_world
from ..errors import ConfigError
from ..protocol import codec

log = logging.getLogger(__name__)

MASTER_PORT_OFFSET = 1
MAX_PEERS = 1024
OWN_HOST = "DTRUNTIME_HOST or ip"  # BindPlan.advertise_source of a host the user named

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?$")
_ENDPOINT = re.compile(r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<host>\[[^\]]*\]|[^:/\[\]]*):(?P<port>[^/]*)/?$")
_WILDCARD_HOSTS = {"*", "0.0.0.0", "::"}


@dataclass(frozen=True)
class BootstrapInfo:
    """This worker's identity and the endpoints it joins through, all validated.

    ``coordinator_source`` says where the coordinator endpoint came from (``argument``,
    ``COORDINATOR_URL``, ``MASTER_ADDR`` or ``default``), for log messages.
    """

    worker_id: str
    rank: int
    world_size: int
    local_rank: int
    coordinator_endpoint: str
    coordinator_source: str
    peers: tuple[str, ...]
    run_id: str | None
    restart_count: int
    own_host: str | None


@dataclass(frozen=True)
class BindPlan:
    """Where to bind and what host to advertise; the port is known only after binding.

    ``bind_endpoint`` may end in ``:0`` (an ephemeral port). The endpoint to advertise
    is ``tcp://{advertise_host}:{bound port}``; ``advertise_source`` says where that host
    came from (``coordinator_url``, :data:`OWN_HOST`, ``loopback`` or ``hostname``), for
    the log line that tells the user what peers will dial.
    """

    bind_endpoint: str
    advertise_host: str
    is_coordinator: bool
    advertise_source: str


def split_endpoint(endpoint: str, *, key: str = "endpoint", allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``tcp://host:port`` (or ``http://host:port``, or ``host:port``) into parts.

    IPv6 hosts are written in brackets (``[::1]:5000``) and returned without them.
    """
    if not isinstance(endpoint, str):
        raise ConfigError(key, f"must be a string, not {type(endpoint).__name__}")
    match = _ENDPOINT.match(endpoint.strip())
    if match is None:
        rest = endpoint.strip().split("://", 1)[-1].rstrip("/")
        if rest and ":" not in rest:
            raise ConfigError(key, f"{endpoint!r} has no port: write host:port, e.g. {rest}:50051")
        raise ConfigError(key, f"{endpoint!r} is not of the form tcp://host:port")
    scheme = (match["scheme"] or "tcp").lower()
    if scheme not in ("tcp", "http"):
        raise ConfigError(key, f"{endpoint!r}: scheme must be tcp:// (or http:// from older docs), not {scheme}://")
    host = match["host"]
    if host.startswith("["):
        host = host[1:-1]
        if not _is_ip(host) or ipaddress.ip_address(host).version != 6:
            raise ConfigError(key, f"{endpoint!r}: {host!r} in brackets is not an IPv6 address")
    elif not (host in _WILDCARD_HOSTS or _is_ip(host) or _HOSTNAME.match(host)):
        raise ConfigError(key, f"{endpoint!r}: {host!r} is not a valid host name or address")
    port = _parse_port(match["port"], key=key, what=endpoint, allow_zero=allow_port_zero)
    return host, port


def join_endpoint(host: str, port: int) -> str:
    """``tcp://host:port``, bracketing IPv6 addresses."""
    if ":" in host:
        return f"tcp://[{host}]:{port}"
    return f"tcp://{host}:{port}"


def parse_coordinator_url(url: str, *, key: str = "coordinator_url") -> str:
    """Normalize a coordinator address to a ZeroMQ ``tcp://host:port`` endpoint.

    Accepts ``tcp://host:port``, ``http://host:port`` (the old gRPC design's form, one
    trailing slash allowed) and bare ``host:port``. Port 0 is refused: others must know
    the port to reach it.
    """
    host, port = split_endpoint(url, key=key)
    return join_endpoint(host, port)


def coordinator_from_master(master_addr: str, master_port: str | int) -> str:
    """The control-plane endpoint derived from torchrun's ``MASTER_ADDR``/``MASTER_PORT``."""
    port = _parse_port(str(master_port), key="MASTER_PORT", what=str(master_port), allow_zero=False)
    ours = port + MASTER_PORT_OFFSET if port + MASTER_PORT_OFFSET <= 65535 else port - MASTER_PORT_OFFSET
    host = master_addr.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    split_endpoint(join_endpoint(host, ours), key="MASTER_ADDR")
    return join_endpoint(host, ours)


def validate_worker_id(worker_id: object, *, key: str = "worker_id") -> str:
    """Return ``worker_id`` if the wire protocol accepts it, else raise ConfigError naming ``key``.

    One rule for configuration and the wire (:func:`dtruntime.protocol.codec.validate_worker_id`):
    letters, digits and ``._:@+-``, at most 128 characters, no ``..`` — so an id accepted
    here is never dropped by a peer, and is safe in logs and storage paths.
    """
    if not isinstance(worker_id, str):
        raise ConfigError(key, f"must be a string, not {type(worker_id).__name__}")
    try:
        return codec.validate_worker_id(worker_id)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def resolve_bootstrap(
    env: Mapping[str, str],
    *,
    worker_id: str | None = None,
    coordinator_url: str | None = None,
    world_size: int | None = None,
    rank: int | None = None,
    default_coordinator: str = "tcp://127.0.0.1:50051",
) -> BootstrapInfo:
    """Combine explicit arguments (which win) with the launcher's environment.

    With neither ``RANK`` nor ``WORLD_SIZE`` anywhere, this is a world of one (rank 0).
    ``RANK`` without ``WORLD_SIZE`` (or the reverse) is an error, as is a rank outside
    ``[0, world_size)``.
    """
    rank_v, world_v = launcher_world(env, rank, world_size)
    local_rank = env_int(None, env, "local_rank", "LOCAL_RANK")
    local_rank = 0 if local_rank is None else local_rank
    if not 0 <= local_rank < world_v:
        raise ConfigError("LOCAL_RANK", f"must be in [0, {world_v}), not {local_rank}")
    restarts = env_int(None, env, "restart_count", "TORCHELASTIC_RESTART_COUNT")
    if restarts is not None and restarts < 0:
        raise ConfigError("TORCHELASTIC_RESTART_COUNT", f"must be >= 0, not {restarts}")

    if worker_id is not None:
        wid = validate_worker_id(worker_id, key="worker_id")
    elif env.get("WORKER_ID"):
        wid = validate_worker_id(env["WORKER_ID"], key="WORKER_ID")
    else:
        wid = f"worker-{rank_v}"
    run_id = env.get("TORCHELASTIC_RUN_ID") or None
    if run_id is not None:
        validate_worker_id(run_id, key="TORCHELASTIC_RUN_ID")
    own_host = env.get("DTRUNTIME_HOST") or None
    if own_host is not None:
        split_endpoint(join_endpoint(own_host, 1), key="DTRUNTIME_HOST")

    endpoint, source = _coordinator(env, coordinator_url, default_coordinator)
    return BootstrapInfo(
        worker_id=wid,
        rank=rank_v,
        world_size=world_v,
        local_rank=local_rank,
        coordinator_endpoint=endpoint,
        coordinator_source=source,
        peers=parse_peers(env.get("DTRUNTIME_PEERS", "")),
        run_id=run_id,
        restart_count=restarts or 0,
        own_host=own_host,
    )


def parse_peers(value: str, *, key: str = "DTRUNTIME_PEERS") -> tuple[str, ...]:
    """Parse a comma-separated endpoint list; blanks are skipped, duplicates removed."""
    peers: dict[str, None] = {}
    for item in value.split(","):
        if item.strip():
            peers[parse_coordinator_url(item, key=key)] = None
    if len(peers) > MAX_PEERS:
        raise ConfigError(key, f"at most {MAX_PEERS} endpoints, got {len(peers)}")
    return tuple(peers)


def describe_bind(
    rank: int, coordinator_endpoint: str, *, own_host: str | None = None, fallback_host: str | None = None
) -> BindPlan:
    """Choose where this worker binds and which host it advertises to peers.

    Rank 0 binds the coordinator endpoint's port: on that host's address when it is an
    IP literal or ``localhost``, else on all interfaces (a name may map to any of them,
    and resolving it is not this function's job). Other ranks bind ``own_host`` (an IP
    literal is bound as is; a name binds all interfaces and is advertised) on an
    ephemeral port. Without ``own_host``, a loopback coordinator means a single-host
    job and ``127.0.0.1`` is used; otherwise ``own_host`` is required.

    A wildcard (``0.0.0.0``, ``::``, ``*``) is bound but never advertised, since peers
    cannot dial it: the advertised host is then ``own_host`` if it is not a wildcard
    itself, else ``fallback_host`` (the caller passes ``socket.gethostname()``); with
    neither, ConfigError asks for ``DTRUNTIME_HOST``.
    """
    coord_host, coord_port = split_endpoint(coordinator_endpoint, key="coordinator_url")
    if own_host is not None:
        split_endpoint(join_endpoint(own_host, 1), key="DTRUNTIME_HOST")
    if rank == 0:
        bind = join_endpoint(_bind_host(coord_host), coord_port)
        if coord_host not in _WILDCARD_HOSTS:
            return BindPlan(bind, coord_host, True, "coordinator_url")
        host, source = _advertised(coord_host, own_host, fallback_host)
        return BindPlan(bind, host, True, source)
    if own_host is None:
        if not is_loopback_host(coord_host):
            raise ConfigError("DTRUNTIME_HOST", "needed when the coordinator is not on loopback: how do peers reach us?")
        return BindPlan(join_endpoint("127.0.0.1", 0), "127.0.0.1", False, "loopback")
    bind = join_endpoint(_bind_host(own_host), 0)
    if own_host not in _WILDCARD_HOSTS:
        return BindPlan(bind, own_host, False, OWN_HOST)
    host, source = _advertised(own_host, None, fallback_host)
    return BindPlan(bind, host, False, source)


def _advertised(wildcard: str, own_host: str | None, fallback_host: str | None) -> tuple[str, str]:
    """(host, source) to advertise for a worker that binds ``wildcard``."""
    if own_host is not None and own_host not in _WILDCARD_HOSTS:
        return own_host, OWN_HOST
    if fallback_host:
        try:
            split_endpoint(join_endpoint(fallback_host, 1), key="hostname")
        except ConfigError:
            pass
        else:
            return fallback_host, "hostname"
    raise ConfigError(
        "DTRUNTIME_HOST", f"this worker binds the wildcard {wildcard!r}, which peers cannot dial: set DTRUNTIME_HOST "
        "(or register_worker(ip=...)) to the address they reach it at"
    )


def is_endpoint_shaped(value: object) -> bool:
    """Whether ``value`` reads as a coordinator address (``tcp://h:p``, ``http://h:p``, ``h:p`` with a
    port in 1..65535) rather than a worker id: the original quick reference's
    ``TrainingOrchestrator("localhost:50051")``. A worker id such as ``node:7`` is such a
    string too; pass it as ``worker_id=`` next to a ``coordinator_url``."""
    if not isinstance(value, str):
        return False
    try:
        parse_coordinator_url(value)
    except ConfigError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    return _is_ip(host) and ipaddress.ip_address(host).is_loopback


def warn_if_insecure(bind_endpoint: str, has_secret: bool, logger: logging.Logger = log) -> bool:
    """Log a warning, and return True, when binding beyond loopback without a secret."""
    host, _ = split_endpoint(bind_endpoint, key="bind_endpoint", allow_port_zero=True)
    if has_secret or is_loopback_host(host):
        return False
    logger.warning(
        "dtruntime binds %s without a shared secret: anyone who can reach it can join "
        "the control plane. Set DTRUNTIME_SECRET or DTRUNTIME_SECRET_FILE.",
        bind_endpoint,
    )
    return True


def _coordinator(env: Mapping[str, str], url: str | None, default: str) -> tuple[str, str]:
    if url is not None:
        return parse_coordinator_url(url, key="coordinator_url"), "argument"
    if env.get("COORDINATOR_URL"):
        return parse_coordinator_url(env["COORDINATOR_URL"], key="COORDINATOR_URL"), "COORDINATOR_URL"
    addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    if addr and port:
        return coordinator_from_master(addr, port), "MASTER_ADDR"
    if addr or port:
        missing = "MASTER_PORT" if addr else "MASTER_ADDR"
        raise ConfigError(missing, "MASTER_ADDR and MASTER_PORT must be set together")
    return parse_coordinator_url(default, key="coordinator.address"), "default"


def _bind_host(host: str) -> str:
    if host.lower() in ("localhost", "localhost."):
        return "127.0.0.1"
    if host == "*" or _is_ip(host):
        return host
    return "0.0.0.0"


def _parse_port(text: str, *, key: str, what: str, allow_zero: bool) -> int:
    text = text.strip()
    if not re.fullmatch(r"[0-9]{1,5}", text):
        raise ConfigError(key, f"{what!r}: port must be a number, not {text!r}")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(key, f"{what!r}: port must be in [{low}, 65535], not {port}")
    return port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
