"""msgpack encoding of protocol messages, with full validation on decode.

Wire format: a msgpack array ``[SCHEMA_VERSION, MsgType, field_1, ..., field_n]`` with
fields in dataclass order; nested dataclasses are arrays of their fields, enums are
integers, tuples are arrays. Nothing is ever unpickled.

Invariant: :func:`decode` returns a valid message or raises
:class:`~dtruntime.errors.RemoteProtocolError` — never any other exception, whatever the
bytes (the property tests feed it random and mutated input). Validation covers the
schema version, the type tag, arity, every field's type, integer ranges (all integers
are in ``[0, 2**63)``), string formats (worker ids, endpoints, barrier ids and values), tuple
lengths and the total size.

The encoder and decoder of each message class are compiled once from its type hints.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import msgpack

from ..errors import RemoteProtocolError
from .messages import MESSAGE_TYPES, TYPE_OF_CLASS, Kind, Message, MsgType

SCHEMA_VERSION = 2  # 2: barrier values (Arrive.value, agreement fields of BarrierResult), progress gossip
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_ITEMS = 65536
MAX_INT = 2**63 - 1
MAX_WORKER_ID_LEN = 128
MAX_BARRIER_ID_LEN = 256
MAX_ENDPOINT_LEN = 256
MAX_BARRIER_VALUE_LEN = 1024

_WORKER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+\-]*")
_ENDPOINT_RE = re.compile(r"(tcp|ipc|inproc|sim)://[\x21-\x7e]+")
_CODEC_RE = re.compile(r"[a-z0-9]{1,16}")

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, str], Any]


def validate_worker_id(value: str) -> str:
    """Return ``value`` if it is a valid worker id, else raise ValueError saying why.

    Worker ids appear in storage paths and logs, so they are restricted to letters,
    digits and ``._:@+-``, start with a letter or digit, contain no ``..`` and are at
    most 128 characters long.
    """
    if not isinstance(value, str) or not value:
        raise ValueError("worker id must be a non-empty string")
    if len(value) > MAX_WORKER_ID_LEN:
        raise ValueError(f"worker id longer than {MAX_WORKER_ID_LEN} characters")
    if not _WORKER_ID_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"worker id {value!r} may only use letters, digits and ._:@+- (no '..')")
    return value


def validate_barrier_id(value: str) -> str:
    """Return ``value`` if it is a valid barrier id (1-256 printable characters)."""
    if not isinstance(value, str) or not value or len(value) > MAX_BARRIER_ID_LEN or not value.isprintable():
        raise ValueError(f"barrier id must be 1 to {MAX_BARRIER_ID_LEN} printable characters, got {value!r}")
    return value


def validate_barrier_value(value: str) -> str:
    """Return ``value`` if it is a valid barrier value (0-1024 printable characters)."""
    if not isinstance(value, str) or len(value) > MAX_BARRIER_VALUE_LEN or not value.isprintable():
        raise ValueError(
            f"barrier value must be at most {MAX_BARRIER_VALUE_LEN} printable characters, got {str(value)[:80]!r}"
        )
    return value


def validate_codec_name(value: str) -> str:
    """Return ``value`` if it is a valid compression codec name (1-16 of ``a-z0-9``)."""
    if not isinstance(value, str) or not _CODEC_RE.fullmatch(value):
        raise ValueError(f"bad codec name {str(value)[:80]!r}")
    return value


def _check_string(kind: Kind, value: str) -> None:
    if kind is Kind.WORKER_ID:
        validate_worker_id(value)
    elif kind is Kind.OPT_WORKER_ID:
        if value:
            validate_worker_id(value)
    elif kind is Kind.ENDPOINT:
        if len(value) > MAX_ENDPOINT_LEN or not _ENDPOINT_RE.fullmatch(value):
            raise ValueError(f"bad endpoint {value[:80]!r}")
    elif kind is Kind.CODEC:
        validate_codec_name(value)
    elif kind is Kind.BARRIER_VALUE:
        validate_barrier_value(value)
    else:
        validate_barrier_id(value)


def _compile(hint: Any, path: str) -> tuple[Encoder, Decoder]:
    """Build the (encode, decode) pair for one type hint."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, kind = typing.get_args(hint)[:2]
        assert base is str and isinstance(kind, Kind), path

        def decode_annotated(value: Any, where: str) -> str:
            if not isinstance(value, str):
                raise RemoteProtocolError(f"{where}: expected a string, got {type(value).__name__}")
            try:
                _check_string(kind, value)
            except ValueError as exc:
                raise RemoteProtocolError(f"{where}: {exc}") from None
            return value

        return _identity, decode_annotated
    if origin is tuple:
        item_hint, ellipsis = typing.get_args(hint)
        assert ellipsis is Ellipsis, path
        encode_item, decode_item = _compile(item_hint, path + "[]")

        def encode_tuple(value: tuple) -> list:
            return [encode_item(item) for item in value]

        def decode_tuple(value: Any, where: str) -> tuple:
            if not isinstance(value, list):
                raise RemoteProtocolError(f"{where}: expected an array, got {type(value).__name__}")
            if len(value) > MAX_ITEMS:
                raise RemoteProtocolError(f"{where}: {len(value)} items exceed the limit of {MAX_ITEMS}")
            return tuple(decode_item(item, where) for item in value)

        return encode_tuple, decode_tuple
    if dataclasses.is_dataclass(hint):
        return _compile_dataclass(hint)
    if isinstance(hint, type) and issubclass(hint, IntEnum):
        members = {int(m): m for m in hint}

        def decode_enum(value: Any, where: str) -> IntEnum:
            if type(value) is not int or value not in members:
                raise RemoteProtocolError(f"{where}: {value!r} is not a valid {hint.__name__}")
            return members[value]

        return int, decode_enum
    if hint is bool:

        def decode_bool(value: Any, where: str) -> bool:
            if type(value) is not bool:
                raise RemoteProtocolError(f"{where}: expected a boolean, got {type(value).__name__}")
            return value

        return _identity, decode_bool
    if hint is int:

        def decode_int(value: Any, where: str) -> int:
            if type(value) is not int or not 0 <= value <= MAX_INT:
                raise RemoteProtocolError(f"{where}: expected an integer in [0, 2**63), got {value!r}")
            return value

        return _identity, decode_int
    raise TypeError(f"codec cannot handle {hint!r} at {path}")  # a schema bug, found at import


def _identity(value: Any) -> Any:
    return value


_DATACLASS_CODECS: dict[type, tuple[Encoder, Decoder]] = {}


def _compile_dataclass(cls: type) -> tuple[Encoder, Decoder]:
    if cls in _DATACLASS_CODECS:
        return _DATACLASS_CODECS[cls]
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    parts = [_compile(hints[name], f"{cls.__name__}.{name}") for name in names]
    encoders = [encode for encode, _ in parts]
    decoders = list(zip(names, (decode for _, decode in parts)))
    arity = len(names)

    def encode_dataclass(value: Any) -> list:
        return [encode(getattr(value, name)) for encode, name in zip(encoders, names)]

    def decode_dataclass(value: Any, where: str) -> Any:
        if not isinstance(value, list) or len(value) != arity:
            raise RemoteProtocolError(f"{where}: expected {cls.__name__} as an array of {arity} fields")
        return cls(*(decode(item, f"{where}.{name}") for (name, decode), item in zip(decoders, value)))

    _DATACLASS_CODECS[cls] = (encode_dataclass, decode_dataclass)
    return encode_dataclass, decode_dataclass


_CODECS: dict[MsgType, tuple[Encoder, Decoder]] = {tag: _compile_dataclass(cls) for tag, cls in MESSAGE_TYPES.items()}


def encode(message: Message) -> bytes:
    """Serialise ``message``. Raises ``TypeError`` for an object that is not a message."""
    tag = TYPE_OF_CLASS.get(type(message))
    if tag is None:
        raise TypeError(f"not a protocol message: {type(message).__name__}")
    fields = _CODECS[tag][0](message)
    return msgpack.packb([SCHEMA_VERSION, int(tag), *fields], use_bin_type=True)


def decode(data: bytes) -> Message:
    """Parse and validate ``data``; raise :class:`RemoteProtocolError` for anything wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    try:
        frame = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max(MAX_BARRIER_ID_LEN, MAX_ENDPOINT_LEN, MAX_BARRIER_VALUE_LEN) * 4,
            max_bin_len=0,
            max_array_len=MAX_ITEMS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, StackError...)
        raise RemoteProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from None
    if not isinstance(frame, list) or len(frame) < 2:
        raise RemoteProtocolError("message is not an array of [version, type, fields...]")
    version, tag = frame[0], frame[1]
    if version != SCHEMA_VERSION or type(version) is not int:
        raise RemoteProtocolError(f"unsupported schema version {version!r} (expected {SCHEMA_VERSION})")
    if type(tag) is not int or tag not in _CODECS_BY_INT:
        raise RemoteProtocolError(f"unknown message type {tag!r}")
    msg_type, decoder = _CODECS_BY_INT[tag]
    return decoder(frame[2:], msg_type.name)


_CODECS_BY_INT: dict[int, tuple[MsgType, Decoder]] = {int(tag): (tag, dec) for tag, (_, dec) in _CODECS.items()}
