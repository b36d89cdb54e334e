"""The codec round-trips every message and rejects any bad input with RemoteProtocolError only."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.errors import RemoteProtocolError
from dtruntime.protocol import codec
from dtruntime.protocol.messages import MESSAGE_TYPES, Gossip, Ping, Vote

from .strategies import ANY_MESSAGE, dataclass_strategy


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_round_trip_every_message_type(cls, data):
    message = data.draw(dataclass_strategy(cls))
    assert codec.decode(codec.encode(message)) == message


@given(st.binary(max_size=300))
@settings(max_examples=400, deadline=None)
def test_arbitrary_bytes_raise_only_remote_protocol_error(blob):
    try:
        codec.decode(blob)
    except RemoteProtocolError:
        pass


@given(ANY_MESSAGE, st.data())
@settings(max_examples=300, deadline=None)
def test_mutated_messages_decode_validly_or_raise_remote_protocol_error(message, data):
    raw = bytearray(codec.encode(message))
    mutation = data.draw(st.sampled_from(["flip", "truncate", "insert", "replace"]))
    position = data.draw(st.integers(0, len(raw) - 1))
    if mutation == "flip":
        raw[position] ^= 1 << data.draw(st.integers(0, 7))
    elif mutation == "truncate":
        del raw[position:]
    elif mutation == "insert":
        raw[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        raw[position] = data.draw(st.integers(0, 255))
    try:
        decoded = codec.decode(bytes(raw))
    except RemoteProtocolError:
        return
    # Whatever decodes must itself be a valid, re-encodable message.
    assert codec.decode(codec.encode(decoded)) == decoded


@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=6), max_leaves=30))
@settings(max_examples=300, deadline=None)
def test_well_formed_msgpack_of_the_wrong_shape_is_rejected_cleanly(value):
    frame = [codec.SCHEMA_VERSION, 3, value] if not isinstance(value, list) else [codec.SCHEMA_VERSION, 3, *value]
    try:
        codec.decode(msgpack.packb(frame))
    except RemoteProtocolError:
        pass


GOOD_PING = Ping("w1", 5, Gossip(1, "w0", ()))


def _frame(*fields):
    return msgpack.packb([codec.SCHEMA_VERSION, *fields])


@pytest.mark.parametrize(
    "blob, fragment",
    [
        (msgpack.packb([99, 3, "w1", 5, [1, "w0", []]]), "schema version"),
        (_frame(77, "w1"), "unknown message type"),
        (_frame(3, "../etc", 5, [1, "w0", []]), "worker id"),
        (_frame(3, "w1", -1, [1, "w0", []]), "integer"),
        (_frame(3, "w1", True, [1, "w0", []]), "integer"),
        (_frame(3, "w1", 5), "array of 3 fields"),
        (_frame(7, "w1", 4, 1), "boolean"),
        (_frame(3, "w1", 5, [1, "w0", [["w2", 0, 0, 0, 9, "tcp://h:1", 0, 0, 0]], [], [], []]), r"PING\.gossip\.members\.status: 9 is not a valid Status"),
        (_frame(3, "w1", 5, [1, "w0", [["w2", 0, 0, 0, 0, "nowhere", 0, 0, 0]], [], [], []]), r"PING\.gossip\.members\.endpoint: bad endpoint"),
        (_frame(10, "w0", ["b", 0, 0, False, ["w1", 7], "", "", [], "", []]), r"RELEASE\.result\.workers: expected a string"),
        (b"\xc1", "undecodable"),
        (b"x" * (codec.MAX_MESSAGE_BYTES + 1), "exceeds the limit"),
    ],
)
def test_bad_input_names_the_problem(blob, fragment):
    with pytest.raises(RemoteProtocolError, match=fragment):
        codec.decode(blob)


def test_known_good_frames_decode():
    assert codec.decode(codec.encode(GOOD_PING)) == GOOD_PING
    assert codec.decode(_frame(7, "w1", 4, True)) == Vote("w1", 4, True)


def test_encode_rejects_non_messages():
    with pytest.raises(TypeError):
        codec.encode({"type": "ping"})  # type: ignore[arg-type]
