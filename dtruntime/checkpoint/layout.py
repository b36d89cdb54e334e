"""Storage layout of checkpoints: key names, parsing, and safe joining (pure: no IO).

::

    <root>/step-000000001000/part-00000-none-1a2b3c4d.bin   one per rank, final key
    <root>/step-000000001000/DCP_METADATA-5e6f7a8b           DCP steps only (see .dcp)
    <root>/step-000000001000/MANIFEST                        written last: the commit

Step directories are zero-padded to 12 digits so they sort by name. A part's name
carries its rank, codec and CRC-32C (a DCP metadata file's name its CRC-32C: no file a
manifest names is ever overwritten by a later save of the same step), so a listing alone
(names + sizes) tells a new leader every part's ``(rank, size, checksum)`` and lets it finish or abandon an
in-flight step from storage alone. Every key is built here from validated integers and
known codec names; :func:`join_under` refuses anything else, so no input can make a
path escape the checkpoint root.
"""

from __future__ import annotations

import re

from ..errors import CheckpointError
from .compression import CODEC_NAMES
from .integrity import format_checksum

MAX_STEP = 10**12 - 1
MAX_RANK = 10**5 - 1
MANIFEST_NAME = "MANIFEST"
MANIFEST_TEMP_NAME = ".MANIFEST.tmp"
DCP_METADATA_NAME = "DCP_METADATA"  # before CRC-named DCP metadata; still read


_STEP_DIR = re.compile(r"step-(\d{12})")
_PART = re.compile(r"part-(\d{5})-(" + "|".join(CODEC_NAMES) + r")-([0-9a-f]{8})\.bin")
_DCP_METADATA = re.compile(DCP_METADATA_NAME + r"(-[0-9a-f]{8})?")
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def validate_step(step: object) -> int:
    """Return ``step`` if it is an int in ``[0, MAX_STEP]`` (not a bool), else CheckpointError."""
    if isinstance(step, bool) or not isinstance(step, int):
        raise CheckpointError(f"step must be an integer, not {type(step).__name__} {step!r}")
    if step < 0:
        raise CheckpointError(f"step must be >= 0, not {step}")
    if step > MAX_STEP:
        raise CheckpointError(f"step must be <= {MAX_STEP}, not {step}")
    return step


def validate_rank(rank: object) -> int:
    """Return ``rank`` if it is an int in ``[0, MAX_RANK]`` (not a bool), else CheckpointError."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= MAX_RANK:
        raise CheckpointError(f"rank must be an integer in [0, {MAX_RANK}], not {rank!r}")
    return rank


def step_dir(step: int) -> str:
    return f"step-{validate_step(step):012d}"


def parse_step_dir(name: str) -> int | None:
    """The step of a step-directory name, or None for any other name."""
    match = _STEP_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def part_name(rank: int, codec: str, checksum: int) -> str:
    if codec not in CODEC_NAMES:
        raise CheckpointError(f"unknown codec {codec!r}")
    return f"part-{validate_rank(rank):05d}-{codec}-{format_checksum(checksum)}.bin"


def parse_part_name(name: str) -> tuple[int, str, int] | None:
    """``(rank, codec, checksum)`` of a part file name, or None for any other name."""
    match = _PART.fullmatch(name)
    if not match:
        return None
    return int(match.group(1)), match.group(2), int(match.group(3), 16)


def manifest_key(step: int) -> str:
    return f"{step_dir(step)}/{MANIFEST_NAME}"


def dcp_metadata_name(checksum: int) -> str:
    return f"{DCP_METADATA_NAME}-{format_checksum(checksum)}"


def dcp_metadata_key(step: int, name: str) -> str:
    """The key of ``step``'s DCP metadata file ``name`` (as its manifest records it);
    CheckpointError for any other name."""
    if not isinstance(name, str) or _DCP_METADATA.fullmatch(name) is None:
        raise CheckpointError(f"{name!r} is not a DCP metadata file name")
    return f"{step_dir(step)}/{name}"


def manifest_temp_key(step: int) -> str:
    return f"{step_dir(step)}/{MANIFEST_TEMP_NAME}"


def part_key(step: int, rank: int, codec: str, checksum: int) -> str:
    return f"{step_dir(step)}/{part_name(rank, codec, checksum)}"


def split_key(key: str) -> tuple[int, str] | None:
    """``(step, file name)`` for a ``step-…/name`` key, or None for a key outside the layout."""
    head, sep, name = key.partition("/")
    step = parse_step_dir(head)
    if not sep or step is None or "/" in name or not name:
        return None
    return step, name


def join_under(root: str, key: str) -> str:
    """``root/key`` after checking every component of ``key`` is a plain, safe name."""
    parts = key.split("/")
    for part in parts:
        safe = part == MANIFEST_TEMP_NAME or _SAFE_COMPONENT.fullmatch(part) is not None
        if not safe:
            raise CheckpointError(f"refusing unsafe storage key {key!r}")
    return root.rstrip("/") + "/" + key
