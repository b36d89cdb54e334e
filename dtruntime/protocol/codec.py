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

The encoder and decoder of each message class are generated once from its type hints
(see "compiled codecs" below).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import msgpack

from ..errors import ArgumentError, ArgumentTypeError, ProtocolError, RemoteProtocolError
from .messages import MESSAGE_TYPES, TYPE_OF_CLASS, Kind, Message, MsgType

SCHEMA_VERSION = 5  # 2: barrier values and progress gossip; 3: BarrierResult.verdicts;
# 4: MemberEntry.worker_port, JoinRefused; 5: run-control commands, BarrierPending
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
    """Return ``value`` if it is a valid worker id, else raise ArgumentError (a ValueError) saying why.

    Worker ids appear in storage paths and logs, so they are restricted to letters,
    digits and ``._:@+-``, start with a letter or digit, contain no ``..`` and are at
    most 128 characters long.
    """
    if not isinstance(value, str) or not value:
        raise ArgumentError("worker id must be a non-empty string")
    if len(value) > MAX_WORKER_ID_LEN:
        raise ArgumentError(f"worker id longer than {MAX_WORKER_ID_LEN} characters")
    if not _WORKER_ID_RE.fullmatch(value) or ".." in value:
        raise ArgumentError(f"worker id {value!r} may only use letters, digits and ._:@+- (no '..')")
    return value


def validate_barrier_id(value: str) -> str:
    """Return ``value`` if it is a valid barrier id (1-256 printable characters)."""
    if not isinstance(value, str) or not value or len(value) > MAX_BARRIER_ID_LEN or not value.isprintable():
        raise ArgumentError(f"barrier id must be 1 to {MAX_BARRIER_ID_LEN} printable characters, got {value!r}")
    return value


def validate_barrier_value(value: str) -> str:
    """Return ``value`` if it is a valid barrier value (0-1024 printable characters)."""
    if not isinstance(value, str) or len(value) > MAX_BARRIER_VALUE_LEN or not value.isprintable():
        raise ArgumentError(
            f"barrier value must be at most {MAX_BARRIER_VALUE_LEN} printable characters, got {str(value)[:80]!r}"
        )
    return value


def validate_codec_name(value: str) -> str:
    """Return ``value`` if it is a valid compression codec name (1-16 of ``a-z0-9``)."""
    if not isinstance(value, str) or not _CODEC_RE.fullmatch(value):
        raise ArgumentError(f"bad codec name {str(value)[:80]!r}")
    return value


# -- compiled codecs -----------------------------------------------------------------
#
# Each message class gets one generated encoder and one generated decoder (Python source
# built from its type hints and compiled once at import). Leaf fields (integers,
# booleans, enums, validated strings) are checked inline; nested dataclasses and tuples
# call their own compiled functions. A field's path (``Release.result.barrier_id``) is
# only formatted when it is wrong, so a valid message costs a few attribute reads and
# type checks per field.

def _check_endpoint(value: str) -> str:
    if len(value) > MAX_ENDPOINT_LEN or not _ENDPOINT_RE.fullmatch(value):
        raise ArgumentError(f"bad endpoint {value[:80]!r}")
    return value


def _check_opt_worker_id(value: str) -> str:
    return validate_worker_id(value) if value else value


_STRING_CHECKS: dict[Kind, Callable[[str], Any]] = {
    Kind.WORKER_ID: validate_worker_id,
    Kind.OPT_WORKER_ID: _check_opt_worker_id,
    Kind.ENDPOINT: _check_endpoint,
    Kind.BARRIER_ID: validate_barrier_id,
    Kind.CODEC: validate_codec_name,
    Kind.BARRIER_VALUE: validate_barrier_value,
}


def _bad(where: str, name: str, problem: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"{where}.{name}: {problem}" if name else f"{where}: {problem}")


def _bad_string(where: str, name: str, value: Any) -> RemoteProtocolError:
    return _bad(where, name, f"expected a string, got {type(value).__name__}")


def _bad_int(where: str, name: str, value: Any) -> RemoteProtocolError:
    return _bad(where, name, f"expected an integer in [0, 2**63), got {value!r}")


def _bad_bool(where: str, name: str, value: Any) -> RemoteProtocolError:
    return _bad(where, name, f"expected a boolean, got {type(value).__name__}")


def _bad_enum(where: str, name: str, value: Any, enum: type) -> RemoteProtocolError:
    return _bad(where, name, f"{value!r} is not a valid {enum.__name__}")


def _bad_array(where: str, name: str, value: Any) -> RemoteProtocolError:
    if not isinstance(value, list):
        return _bad(where, name, f"expected an array, got {type(value).__name__}")
    return _bad(where, name, f"{len(value)} items exceed the limit of {MAX_ITEMS}")


class _Generator:
    """Writes the source of one class's encoder and decoder; ``env`` holds their globals."""

    def __init__(self, env: dict[str, Any]) -> None:
        self.env = env
        self.counter = 0

    def name(self, prefix: str, value: Any) -> str:
        """Bind ``value`` in the generated code's globals under a fresh name."""
        self.counter += 1
        symbol = f"{prefix}_{self.counter}"
        self.env[symbol] = value
        return symbol

    def decode_value(self, hint: Any, expr: str, where: str, name: str, lines: list[str], indent: str) -> str:
        """Emit checks of ``expr`` (a field of type ``hint``); return the decoded expression."""
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            base, kind = typing.get_args(hint)[:2]
            assert base is str and isinstance(kind, Kind), name
            check = self.name("check", _STRING_CHECKS[kind])
            lines += [
                f"{indent}if {expr}.__class__ is not str:",
                f"{indent}    raise _bad_string({where}, {name!r}, {expr})",
                f"{indent}try:",
                f"{indent}    {check}({expr})",
                f"{indent}except ValueError as exc:",
                f"{indent}    raise _bad({where}, {name!r}, str(exc)) from None",
            ]
            return expr
        if origin is tuple:
            item_hint, ellipsis = typing.get_args(hint)
            assert ellipsis is Ellipsis, name
            item_decoder = self.name("items", _compile_items(item_hint))
            lines += [
                f"{indent}if {expr}.__class__ is not list or len({expr}) > MAX_ITEMS:",
                f"{indent}    raise _bad_array({where}, {name!r}, {expr})",
            ]
            return f"{item_decoder}({expr}, {_path(where, name)})"
        if dataclasses.is_dataclass(hint):
            decoder = self.name("dec", _compile_dataclass(hint)[1])
            return f"{decoder}({expr}, {_path(where, name)})"
        if isinstance(hint, type) and issubclass(hint, IntEnum):
            members = self.name("members", {int(m): m for m in hint})
            enum = self.name("enum", hint)
            lines += [
                f"{indent}if {expr}.__class__ is not int or {expr} not in {members}:",
                f"{indent}    raise _bad_enum({where}, {name!r}, {expr}, {enum})",
            ]
            return f"{members}[{expr}]"
        if hint is bool:
            lines += [f"{indent}if {expr}.__class__ is not bool:", f"{indent}    raise _bad_bool({where}, {name!r}, {expr})"]
            return expr
        if hint is int:
            lines += [
                f"{indent}if {expr}.__class__ is not int or not 0 <= {expr} <= MAX_INT:",
                f"{indent}    raise _bad_int({where}, {name!r}, {expr})",
            ]
            return expr
        raise ProtocolError(f"codec cannot handle {hint!r} at {name}")  # a schema bug, found at import

    def encode_value(self, hint: Any, expr: str) -> str:
        origin = typing.get_origin(hint)
        if origin is tuple:
            item_hint = typing.get_args(hint)[0]
            item = self.encode_value(item_hint, "item")
            return f"[{item} for item in {expr}]" if item != "item" else f"list({expr})"
        if dataclasses.is_dataclass(hint):
            return f"{self.name('enc', _compile_dataclass(hint)[0])}({expr})"
        if isinstance(hint, type) and issubclass(hint, IntEnum):
            return f"int({expr})"
        return expr


def _path(where: str, name: str) -> str:
    """Source of the path expression for a nested field ``name`` below ``where``."""
    return f"{where} + {'.' + name!r}" if name else where


_GLOBALS: dict[str, Any] = {
    "MAX_ITEMS": MAX_ITEMS, "MAX_INT": MAX_INT, "RemoteProtocolError": RemoteProtocolError,
    "_bad": _bad, "_bad_string": _bad_string, "_bad_int": _bad_int, "_bad_bool": _bad_bool,
    "_bad_enum": _bad_enum, "_bad_array": _bad_array,
}
_DATACLASS_CODECS: dict[type, tuple[Encoder, Decoder]] = {}
_ITEM_DECODERS: dict[Any, Callable[[list, str], tuple]] = {}


def _compile_items(hint: Any) -> Callable[[list, str], tuple]:
    """A decoder of a whole array of ``hint`` items (length already checked)."""
    if hint in _ITEM_DECODERS:
        return _ITEM_DECODERS[hint]
    env = dict(_GLOBALS)
    generator = _Generator(env)
    lines: list[str] = []
    decoded = generator.decode_value(hint, "item", "where", "", lines, "        ")
    source = "\n".join(
        ["def decode_items(value, where):", "    out = []", "    for item in value:", *lines,
         f"        out.append({decoded})", "    return tuple(out)"]
    )
    exec(compile(source, f"<dtruntime codec: {hint!r} items>", "exec"), env)
    _ITEM_DECODERS[hint] = env["decode_items"]
    return env["decode_items"]


def _compile_dataclass(cls: type) -> tuple[Encoder, Decoder]:
    """The generated (encode, decode) pair of dataclass ``cls`` (fields in declaration order)."""
    if cls in _DATACLASS_CODECS:
        return _DATACLASS_CODECS[cls]
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    env = dict(_GLOBALS)
    env["cls"] = cls
    generator = _Generator(env)
    fields = [f"f{i}" for i in range(len(names))]
    decode_lines = [
        "def decode_dataclass(value, where):",
        f"    if value.__class__ is not list or len(value) != {len(names)}:",
        f"        raise RemoteProtocolError(f'{{where}}: expected {cls.__name__} as an array of {len(names)} fields')",
        f"    {', '.join(fields)}, = value",
    ]
    decoded = [generator.decode_value(hints[n], f, "where", n, decode_lines, "    ") for n, f in zip(names, fields)]
    decode_lines.append(f"    return cls({', '.join(decoded)})")
    encoded = [generator.encode_value(hints[n], f"value.{n}") for n in names]
    encode_lines = ["def encode_dataclass(value):", f"    return [{', '.join(encoded)}]"]
    source = "\n".join(encode_lines + decode_lines)
    exec(compile(source, f"<dtruntime codec: {cls.__name__}>", "exec"), env)
    _DATACLASS_CODECS[cls] = (env["encode_dataclass"], env["decode_dataclass"])
    return _DATACLASS_CODECS[cls]


_CODECS: dict[MsgType, tuple[Encoder, Decoder]] = {tag: _compile_dataclass(cls) for tag, cls in MESSAGE_TYPES.items()}


def encode(message: Message) -> bytes:
    """Serialise ``message``. Raises ``TypeError`` for an object that is not a message."""
    tag = TYPE_OF_CLASS.get(type(message))
    if tag is None:
        raise ArgumentTypeError(f"not a protocol message: {type(message).__name__}")
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
