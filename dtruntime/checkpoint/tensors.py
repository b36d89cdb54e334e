"""Tensor-native parts: a state dict as one safetensors file, pickle-free (no IO here).

File layout (a valid safetensors file, readable with ``safetensors.safe_open``)::

    u64 little-endian N | N bytes of JSON header, space-padded to a multiple of 8 | body

The header maps each tensor's name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets into the body, back to back) and carries ``__metadata__``:
``{"format": "dtruntime-state/1", "tree": <base64 of msgpack>}``. The tree is the state
dict with every tensor replaced by a reference to its entry, so every non-tensor leaf
(step, epoch, rng states, optimizer hyper-parameters, nested dicts, lists and tuples)
survives without pickle. Supported leaves: ``None``, ``bool``, ``int`` (any size),
``float``, ``str``, ``bytes``, dense CPU or CUDA tensors of the dtypes in
:data:`DTYPES` (``nn.Parameter`` is saved as a tensor) and numpy arrays of those dtypes
(loaded back as numpy arrays). Containers: ``dict`` (keys ``str``, ``int``, ``float``,
``bool`` or ``None``; subclasses such as ``OrderedDict`` load as ``dict``), ``list``,
``tuple`` (namedtuples and ``torch.Size`` load as plain tuples). Anything else raises
:class:`CheckpointError` naming its path, before anything is copied.

Tensors are laid out largest element size first, so, with the body starting on an
8-byte boundary, every tensor starts at a multiple of its element size: loading makes
each tensor a view of the buffer the file was read into, with no copy. Tensors that share
memory (tied weights, views) are stored once each and load as separate tensors.
Distributed tensors (DTensor, ShardedTensor) are refused: save them through
:mod:`dtruntime.checkpoint.dcp`.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import torch

from ..errors import CheckpointError, CorruptCheckpoint

FORMAT_TAG = "dtruntime-state/1"

DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}
_BY_NAME = {name: dtype for dtype, name in DTYPES.items()}

_EXT_TENSOR, _EXT_NUMPY, _EXT_TUPLE, _EXT_BIGINT = 1, 2, 3, 4
_PLAIN = (str, bytes, float, bool, type(None))
_KEY_TYPES = (str, int, float, bool, type(None))
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a part: ``offset``/``nbytes`` locate it in the body."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class StatePlan:
    """A state dict taken apart: the header bytes, the body size and where each source
    tensor goes. ``sources[i]`` is copied to ``entries[i]``."""

    header: bytes
    body_size: int
    entries: tuple[TensorEntry, ...]
    sources: tuple[torch.Tensor, ...]


def plan_state(state: Any, copy_numpy: bool = False) -> StatePlan:
    """Walk ``state``, check every leaf and lay its tensors out (no tensor data is read,
    except that ``copy_numpy`` copies numpy arrays now: they have no version counter to
    tell a later change, see :mod:`.snapshot`)."""
    found: list[tuple[str, torch.Tensor]] = []
    tree = _encode(state, "", found, copy_numpy)
    order = sorted(range(len(found)), key=lambda i: -found[i][1].element_size())
    names: set[str] = set()
    slots: list[TensorEntry | None] = [None] * len(found)
    offset = 0
    for index in order:
        path, tensor = found[index]
        name = _unique(path or "tensor", names)
        nbytes = tensor.numel() * tensor.element_size()
        slots[index] = TensorEntry(name, tensor.dtype, tuple(tensor.shape), offset, nbytes)
        offset += nbytes
    entries = tuple(entry for entry in slots if entry is not None)
    header = _header(entries, order, tree)
    return StatePlan(header, offset, entries, tuple(tensor for _, tensor in found))


def is_tensor_part(data: Any) -> bool:
    """True when ``data`` (a buffer) starts like a part written by this module."""
    view = memoryview(data).cast("B")
    if len(view) < 9 or view[8] != ord("{"):
        return False
    (size,) = struct.unpack_from("<Q", view, 0)
    if size > min(_MAX_HEADER, len(view) - 8):
        return False
    try:
        header = json.loads(bytes(view[8 : 8 + size]))
    except ValueError:
        return False
    return isinstance(header, dict) and (header.get("__metadata__") or {}).get("format") == FORMAT_TAG


def load_state(buffer: np.ndarray, source: str) -> Any:
    """Rebuild the state dict of a part read into ``buffer`` (an aligned ``uint8`` array).

    Every tensor is its own storage over ``buffer``'s bytes, no copy (``buffer`` stays
    alive as long as any of them does);
    CheckpointError naming ``source`` when the header is damaged or inconsistent.
    """
    total = len(buffer)
    try:
        (size,) = struct.unpack_from("<Q", buffer, 0)
        if size > min(_MAX_HEADER, total - 8):
            raise CorruptCheckpoint(f"header size {size} exceeds the file ({total} bytes)")
        header = json.loads(buffer[8 : 8 + size].tobytes())
        meta = header.pop("__metadata__")
        if meta.get("format") != FORMAT_TAG:
            raise CorruptCheckpoint(f"format is {meta.get('format')!r}, expected {FORMAT_TAG!r}")
        body_start = 8 + size
        refs = json.loads(meta["refs"])
        tensors = []
        for name in refs:
            entry = header[name]
            begin, end = entry["data_offsets"]
            dtype = _BY_NAME[entry["dtype"]]
            shape = [int(n) for n in entry["shape"]]
            if not 0 <= begin <= end <= total - body_start:
                raise CorruptCheckpoint(f"tensor {name!r} lies outside the file")
            count = math.prod(shape)
            if count * dtype.itemsize != end - begin:
                raise CorruptCheckpoint(f"tensor {name!r}: shape {shape} of {entry['dtype']} is not {end - begin} bytes")
            if count == 0:
                tensors.append(torch.empty(shape, dtype=dtype))
                continue
            # Its own storage over the buffer's bytes (no copy): APIs that read a tensor's
            # storage rather than its data pointer (torch.set_rng_state) see just this tensor.
            flat = torch.frombuffer(buffer, dtype=dtype, count=count, offset=body_start + begin)
            tensors.append(flat.view(shape))
        return _decode(base64.b64decode(meta["tree"]), tensors)
    except CheckpointError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError, struct.error, msgpack.UnpackException) as exc:
        raise CheckpointError(f"{source}: damaged tensor part: {exc}") from None


# ----------------------------------------------------------------- internals


def _encode(value: Any, path: str, found: list[tuple[str, torch.Tensor]], copy_numpy: bool = False) -> Any:
    """``value`` as msgpack-ready data with tensors collected into ``found``; ``path``
    names ``value`` in error messages and tensor names ("" is the state itself)."""
    if isinstance(value, torch.Tensor):
        found.append((path, _check_tensor(value, path)))
        return msgpack.ExtType(_EXT_TENSOR, msgpack.packb(len(found) - 1))
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CheckpointError(f"{path or 'state'}: numpy arrays of Python objects cannot be saved without pickle")
        try:
            tensor = torch.from_numpy(np.array(value, order="C", copy=True) if copy_numpy else np.ascontiguousarray(value))
        except TypeError as exc:
            raise CheckpointError(f"{path or 'state'}: numpy dtype {value.dtype} is not supported: {exc}") from None
        found.append((path, _check_tensor(tensor, path)))
        return msgpack.ExtType(_EXT_NUMPY, msgpack.packb(len(found) - 1))
    if isinstance(value, int) and not isinstance(value, bool):
        if -(2**63) <= value < 2**64:
            return int(value)
        return msgpack.ExtType(_EXT_BIGINT, str(int(value)).encode("ascii"))
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, _KEY_TYPES):
                raise CheckpointError(f"{path or 'state'}: dict key {key!r} of type {type(key).__name__} is not supported")
            out[key] = _encode(item, _child(path, key), found, copy_numpy)
        return out
    if isinstance(value, list):
        return [_encode(item, _child(path, i), found, copy_numpy) for i, item in enumerate(value)]
    if isinstance(value, tuple):
        items = [_encode(item, _child(path, i), found, copy_numpy) for i, item in enumerate(value)]
        return msgpack.ExtType(_EXT_TUPLE, msgpack.packb(items))
    raise CheckpointError(
        f"{path or 'state'}: cannot save a {type(value).__module__}.{type(value).__qualname__} in a tensor-native part "
        "(supported: tensors, numpy arrays, dict, list, tuple, str, bytes, int, float, bool, None)"
    )


def _child(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_tensor(tensor: torch.Tensor, path: str) -> torch.Tensor:
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        raise CheckpointError(
            f"{path or 'state'}: {type(tensor).__name__} is a distributed or subclassed tensor; "
            "save it with torch.distributed.checkpoint through dtruntime.checkpoint.dcp"
        )
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
        raise CheckpointError(f"{path or 'state'}: only dense tensors can be saved, not {tensor.layout} on {tensor.device}")
    if tensor.dtype not in DTYPES:
        raise CheckpointError(f"{path or 'state'}: dtype {tensor.dtype} is not supported (supported: {sorted(DTYPES.values())})")
    return tensor.detach()


def _unique(path: str, names: set[str]) -> str:
    name, n = path, 1
    while name in names or name == "__metadata__":
        name, n = f"{path}#{n}", n + 1
    names.add(name)
    return name


def _header(entries: tuple[TensorEntry, ...], order: list[int], tree: Any) -> bytes:
    document: dict[str, Any] = {
        entry.name: {
            "dtype": DTYPES[entry.dtype],
            "shape": list(entry.shape),
            "data_offsets": [entry.offset, entry.offset + entry.nbytes],
        }
        for entry in (entries[i] for i in order)
    }
    document["__metadata__"] = {
        "format": FORMAT_TAG,
        "refs": json.dumps([entry.name for entry in entries]),
        "tree": base64.b64encode(msgpack.packb(tree)).decode("ascii"),
    }
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return struct.pack("<Q", len(body)) + body


def _decode(raw: bytes, tensors: list[torch.Tensor]) -> Any:
    def hook(code: int, data: bytes) -> Any:
        if code == _EXT_TENSOR:
            return tensors[msgpack.unpackb(data)]
        if code == _EXT_NUMPY:
            return tensors[msgpack.unpackb(data)].numpy()
        if code == _EXT_TUPLE:
            return tuple(msgpack.unpackb(data, ext_hook=hook, strict_map_key=False, raw=False))
        if code == _EXT_BIGINT:
            return int(data.decode("ascii"))
        raise CorruptCheckpoint(f"unknown extension type {code}")

    return msgpack.unpackb(raw, ext_hook=hook, strict_map_key=False, raw=False)


def pack_plain(value: Any, what: str) -> bytes:
    """``value`` (plain leaves and containers as above, no tensors) as msgpack bytes."""
    found: list[tuple[str, torch.Tensor]] = []
    tree = _encode(value, what, found)
    if found:
        raise CheckpointError(f"{what}: holds tensors ({found[0][0]}), which are not plain values")
    return msgpack.packb(tree)


def unpack_plain(raw: bytes) -> Any:
    """Inverse of :func:`pack_plain`."""
    return _decode(raw, [])
