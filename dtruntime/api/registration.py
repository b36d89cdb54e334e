"""What ``register_worker`` takes and returns: its arguments in both documented forms,
the awaitable of its asyncio form, and the advice of a bind error.

Kept apart from the orchestrator so the old API's argument rules live in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ..errors import ArgumentTypeError, ConfigError
from ..runtime.bootstrap import MASTER_PORT_OFFSET, BindPlan, BootstrapInfo, split_endpoint, validate_worker_id


class Joining:
    """The awaitable :meth:`TrainingOrchestrator.register_worker` returns: no coroutine
    exists until it is awaited, so leaving it un-awaited warns about nothing."""

    def __init__(
        self, joined: "Future[str]", timeout: float | None, timed_out: Callable[[float | None], Exception]
    ) -> None:
        self._joined = joined
        self._timeout = timeout
        self._timed_out = timed_out

    def __await__(self) -> Generator[Any, None, str]:
        return self._wait().__await__()

    async def _wait(self) -> str:
        joined = asyncio.wrap_future(self._joined)
        try:
            return await asyncio.wait_for(asyncio.shield(joined), self._timeout)
        except asyncio.TimeoutError:
            # The join may still fail later (close() fails it): that outcome is the
            # caller's no longer, so retrieve it rather than have asyncio report it.
            joined.add_done_callback(_retrieve)
            raise self._timed_out(self._timeout) from None


@dataclass(frozen=True)
class Registration:
    """What :meth:`TrainingOrchestrator.register_worker` was given, validated."""

    worker_id: str | None
    ip: str | None
    port: int
    gpu_count: int
    memory_bytes: int

    @classmethod
    def of(
        cls, where: tuple[str | int, ...], ip: str | None, port: int | None, gpu_count: int, memory_bytes: int
    ) -> "Registration":
        """Positional ``(ip, port)`` or ``(worker_id, ip, port)``, or the keywords; not both."""
        if len(where) > 3:
            raise ArgumentTypeError(f"register_worker takes (ip, port) or (worker_id, ip, port), got {len(where)} positionals")
        worker_id = where[0] if len(where) == 3 else None
        positional = dict(zip(("ip", "port"), where[1:] if len(where) == 3 else where))
        for name, value in (("ip", ip), ("port", port)):
            if name in positional and value is not None:
                raise ArgumentTypeError(f"register_worker got {name} both as a positional and a keyword argument")
        ip = positional.get("ip", ip)  # type: ignore[assignment]
        port = positional.get("port", port)  # type: ignore[assignment]
        if ip is not None and not isinstance(ip, str):
            raise ConfigError("ip", f"must be a host name or address, not {ip!r}")
        port = 0 if port is None else port
        for name, value in (("port", port), ("gpu_count", gpu_count), ("memory_bytes", memory_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be an integer >= 0, not {value!r}")
        if port > 65535:
            raise ConfigError("port", f"must be in [0, 65535], not {port}")
        return cls(
            None if worker_id is None else validate_worker_id(worker_id, key="worker_id"),
            ip, port, gpu_count, memory_bytes,
        )


def bind_advice(info: BootstrapInfo, plan: BindPlan) -> str:
    """How to choose another endpoint than ``plan``'s, given where it came from."""
    if not plan.is_coordinator:
        return "this worker binds an ephemeral port; is DTRUNTIME_HOST (or ip=) an address of this host?"
    _, port = split_endpoint(info.coordinator_endpoint, key="coordinator_url")
    if info.coordinator_source == "MASTER_ADDR":
        return (
            f"rank 0's control plane listens on MASTER_PORT + {MASTER_PORT_OFFSET} = {port} next to torchrun's "
            f"store on MASTER_PORT: choose another with torchrun --master-port (at least two away from other jobs "
            f"on this host) or set COORDINATOR_URL"
        )
    where = {"argument": "the coordinator_url argument", "COORDINATOR_URL": "COORDINATOR_URL"}.get(
        info.coordinator_source, "coordinator.address in the config file"
    )
    return f"rank 0 binds the coordinator endpoint from {where}: choose a free port there"


def _retrieve(future: "asyncio.Future[Any]") -> None:
    """Mark an abandoned asyncio future's outcome as seen."""
    if not future.cancelled():
        future.exception()
