"""Checkpoints on fsspec storage: parts, manifest commit, verification, retention, compression.

Modules: :mod:`.manager` (the API and the bookkeeping of saves in flight), its threads
:mod:`.writer` (parts, then the commit or the report to the leader) and :mod:`.janitor`
(retention), :mod:`.leader` (the multi-rank commit decided from storage), :mod:`.publish`
(the one commit path: the create-only manifest write and the retention sweep),
:mod:`.reads` (verified reads), :mod:`.results` (handles and results), :mod:`.storage`
(local and fsspec IO), and the pure ones: :mod:`.layout` (key names), :mod:`.manifest`
(encoding and verification), :mod:`.commit` (per-rank reports -> manifest, rebuild from
a listing), :mod:`.retention`, :mod:`.compression`, :mod:`.integrity`.
"""

from .commit import PartReport, StepCommit, StorageView, recover_step, scan_listing
from .manager import CheckpointManager
from .manifest import Manifest, PartRecord
from .results import SaveHandle, SaveResult

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
