"""What the run control and the watchdog use of the orchestrator that owns them.

The orchestrator is the one implementation; this Protocol lets ``control/`` name it
without importing ``api/`` (which imports ``control/``), so the layers have no circle.
"""

from __future__ import annotations

from typing import Protocol

from ..config import Config
from ..runtime.driver import Driver


class ControlHost(Protocol):
    """The orchestrator as its run control and watchdog see it."""

    config: Config
    _driver: Driver | None  # None before register_worker and after close

    @property
    def worker_id(self) -> str: ...

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    def set_progress(self, key: str, value: int) -> None: ...

    def progress(self, key: str) -> dict[str, int]: ...

    def _running(self) -> Driver: ...
