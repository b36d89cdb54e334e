"""Checkpoints on fsspec storage: parts, manifest commit, verification, retention, compression.

Modules: :mod:`.manager` (the API and writer thread), :mod:`.storage` (local and fsspec
IO), and the pure ones a multi-rank leader reuses: :mod:`.layout` (key names),
:mod:`.manifest` (encoding and verification), :mod:`.commit` (per-rank reports ->
manifest, rebuild from a listing), :mod:`.retention`, :mod:`.compression`, :mod:`.integrity`.
"""

from .commit import PartReport, StepCommit, StorageView, recover_step, scan_listing
from .manager import CheckpointManager, SaveHandle, SaveResult
from .manifest import Manifest, PartRecord

__all__ = [
    "CheckpointManager",
    "Manifest",
    "PartRecord",
    "PartReport",
    "SaveHandle",
    "SaveResult",
    "StepCommit",
    "StorageView",
    "recover_step",
    "scan_listing",
]
