"""DCP's ``Metadata`` as msgpack, without pickle (pure: no IO).

DCP's own ``FileSystemWriter`` pickles its ``Metadata``, so loading a checkpoint runs
whatever the file says. Here every field is written as plain data and rebuilt into DCP's
dataclasses on load: per fqn the tensor properties (dtype, layout, requires_grad,
memory_format, pin_memory), global size and chunks (offsets, sizes), or that it is a
bytes item; the planner's ``planner_data`` (for DCP's default planners, fqn -> path
tuples; any plain value, see :func:`.tensors.pack_plain`); and for every stored item its
:class:`ItemLocation`. ``storage_meta`` is not stored (DCP rebuilds it on load). Names
of dtypes, layouts and memory formats are checked to be what they claim to be, so a
damaged file gives CheckpointError, never an arbitrary object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from ..errors import CheckpointError, CorruptCheckpoint
from .tensors import pack_plain, unpack_plain

FORMAT = "dtruntime-dcp-metadata/1"


@dataclass(frozen=True)
class ItemLocation:
    """Where one DCP item lies: ``length`` bytes at ``offset`` in ``rank``'s part.
    Tensors are raw contiguous bytes of ``dtype`` (a torch dtype name) and ``shape``;
    bytes items have ``dtype`` None."""

    rank: int
    offset: int
    length: int
    dtype: str | None
    shape: tuple[int, ...]


def encode_metadata(metadata: Metadata, locations: dict[MetadataIndex, ItemLocation], version: str) -> bytes:
    tensors, byte_items = [], []
    for fqn, entry in metadata.state_dict_metadata.items():
        if isinstance(entry, BytesStorageMetadata):
            byte_items.append(fqn)
            continue
        p = entry.properties
        tensors.append([
            fqn, _name(p.dtype), _name(p.layout), bool(p.requires_grad), _name(p.memory_format), bool(p.pin_memory),
            list(entry.size), [[list(c.offsets), list(c.sizes)] for c in entry.chunks],
        ])
    items = [
        [index.fqn, None if index.offset is None else list(index.offset),
         loc.rank, loc.offset, loc.length, loc.dtype, list(loc.shape)]
        for index, loc in locations.items()
    ]
    document = {
        "format": FORMAT, "version": version, "tensors": tensors, "bytes": byte_items, "items": items,
        "planner_data": pack_plain(metadata.planner_data, "DCP planner_data"),
    }
    return msgpack.packb(document)


def decode_metadata(raw: bytes, source: str) -> tuple[Metadata, dict[MetadataIndex, ItemLocation]]:
    """Inverse of :func:`encode_metadata`; CheckpointError naming ``source`` on damage."""
    try:
        document = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        if document.get("format") != FORMAT:
            raise CorruptCheckpoint(f"format is {document.get('format')!r}, expected {FORMAT!r}")
        state: dict[str, Any] = {}
        for fqn, dtype, layout, grad, memory, pin, size, chunks in document["tensors"]:
            properties = TensorProperties(
                dtype=_torch_attr(dtype, torch.dtype), layout=_torch_attr(layout, torch.layout),
                requires_grad=bool(grad), memory_format=_torch_attr(memory, torch.memory_format), pin_memory=bool(pin),
            )
            state[str(fqn)] = TensorStorageMetadata(
                properties, torch.Size(size),
                [ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)) for offsets, sizes in chunks],
            )
        for fqn in document["bytes"]:
            state[str(fqn)] = BytesStorageMetadata()
        locations = {}
        for fqn, offset, rank, start, length, dtype, shape in document["items"]:
            index = MetadataIndex(str(fqn), None if offset is None else torch.Size(offset))
            if dtype is not None:
                _torch_attr(dtype, torch.dtype)
            locations[index] = ItemLocation(int(rank), int(start), int(length), dtype, tuple(int(n) for n in shape))
        metadata = Metadata(
            state_dict_metadata=state, planner_data=unpack_plain(document["planner_data"]),
            storage_data=locations, version=str(document["version"]),
        )
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException) as exc:
        raise CheckpointError(f"{source}: damaged DCP metadata: {exc!r}") from None
    return metadata, locations


def _name(value: Any) -> str:
    return str(value).removeprefix("torch.")


def _torch_attr(name: Any, kind: type) -> Any:
    value = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(value, kind):
        raise CheckpointError(f"{name!r} is not a torch {kind.__name__}")
    return value
