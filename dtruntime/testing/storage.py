"""An in-memory checkpoint store for the simulator: the production ``Storage`` interface,
so the simulated leader decides commits with the real ``LeaderCommitter``.

Writes are atomic and durable the moment they return (a simulated crash cannot tear a
file; what the simulator varies is *when* writes and answers happen). Manifests are
create-only, as on real storage: a second write of one step's manifest raises
``FileExistsError``. ``on_manifest(step, listing)`` is called after each manifest write
with the store's listing at that moment, so checkers can see what a manifest promised;
``manifests_written`` keeps every step whose manifest was ever written, even after
retention deleted it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..checkpoint import layout
from ..checkpoint.storage import Storage

ManifestHook = Callable[[int, dict[str, int]], None]


class MemoryStorage(Storage):
    """Keys (``step-…/name``) to bytes, in insertion order."""

    def __init__(self, on_manifest: ManifestHook | None = None) -> None:
        self.url = "sim://checkpoints"
        self.files: dict[str, bytes] = {}
        self.manifests_written: dict[int, None] = {}
        self._on_manifest = on_manifest

    def write_part(self, key: str, data: bytes | bytearray | memoryview) -> None:
        self.files[key] = bytes(data)

    def write_manifest(self, key: str, data: bytes) -> None:
        if key in self.files:
            raise FileExistsError(key)
        self.files[key] = bytes(data)
        split = layout.split_key(key)
        assert split is not None, key
        self.manifests_written[split[0]] = None
        if self._on_manifest is not None:
            self._on_manifest(split[0], self.list_files())

    def read(self, key: str) -> bytes:
        try:
            return self.files[key]
        except KeyError:
            raise FileNotFoundError(key) from None

    def list_files(self) -> dict[str, int]:
        return {key: len(data) for key, data in self.files.items()}

    def delete_step(self, step: int, keys: Iterable[str]) -> None:
        prefix = layout.step_dir(step) + "/"
        for key in [k for k in self.files if k.startswith(prefix)]:
            del self.files[key]

    def remove(self, key: str) -> None:
        self.files.pop(key, None)
