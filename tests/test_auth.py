"""Frame authentication: round trips, tampering, replay, staleness, secrets, and fuzzing."""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.errors import ConfigError, RemoteProtocolError
from dtruntime.runtime.auth import FrameAuthenticator, load_secret

SECRET = b"correct horse battery staple"
OTHER = b"incorrect horse battery staple"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pair(secret: bytes | None = SECRET, **kwargs: object) -> tuple[FrameAuthenticator, FrameAuthenticator]:
    return FrameAuthenticator(secret, **kwargs), FrameAuthenticator(secret, **kwargs)


def test_round_trip_with_secret() -> None:
    sender, receiver = pair()
    frames = [sender.seal(b"payload %d" % i) for i in range(5)]
    assert len(set(frames)) == 5, "each frame carries a fresh counter"
    assert [receiver.open(f) for f in frames] == [b"payload %d" % i for i in range(5)]
    assert len(frames[0]) == len(b"payload 0") + sender.overhead
    assert receiver.counters["accepted"] == 5
    assert sender.authenticated and sender.counters["sealed"] == 5


def test_round_trip_without_secret_is_versioned() -> None:
    sender, receiver = pair(None)
    frame = sender.seal(b"hello")
    assert frame.startswith(b"DT") and frame != b"hello"
    assert receiver.open(frame) == b"hello"
    assert receiver.open(sender.seal(b"")) == b""
    with pytest.raises(RemoteProtocolError):
        receiver.open(b"DT\x02\x00hello")  # a future version
    assert receiver.counters["rejected_malformed"] == 1


def test_every_single_byte_change_is_rejected() -> None:
    sender, receiver = pair()
    frame = sender.seal(b"arrive barrier 7")
    for index in range(len(frame)):
        mutated = bytearray(frame)
        mutated[index] ^= 0x01
        with pytest.raises(RemoteProtocolError):
            receiver.open(bytes(mutated))
    assert receiver.counters["accepted"] == 0
    assert receiver.open(frame) == b"arrive barrier 7", "rejections leave no replay state behind"


def test_truncated_and_extended_frames_are_rejected() -> None:
    sender, receiver = pair()
    frame = sender.seal(b"x" * 40)
    for bad in (b"", frame[:1], frame[:10], frame[:-1], frame + b"\x00", b"DT"):
        with pytest.raises(RemoteProtocolError):
            receiver.open(bad)
    with pytest.raises(RemoteProtocolError):
        receiver.open("not bytes")  # type: ignore[arg-type]


def test_wrong_secret_rejects_every_frame() -> None:
    sender = FrameAuthenticator(OTHER)
    receiver = FrameAuthenticator(SECRET)
    for i in range(200):
        with pytest.raises(RemoteProtocolError, match="MAC"):
            receiver.open(sender.seal(b"%d" % i))
    assert receiver.counters["rejected_mac"] == 200
    assert receiver.counters["accepted"] == 0


def test_mode_mismatch_is_rejected_both_ways() -> None:
    plain, authed = FrameAuthenticator(None), FrameAuthenticator(SECRET)
    with pytest.raises(RemoteProtocolError, match="expects authenticated"):
        authed.open(plain.seal(b"x"))
    with pytest.raises(RemoteProtocolError, match="expects unauthenticated"):
        plain.open(authed.seal(b"x"))
    assert authed.counters["rejected_mode"] == 1 and plain.counters["rejected_mode"] == 1


def test_exact_replay_is_rejected() -> None:
    sender, receiver = pair()
    frame = sender.seal(b"release")
    receiver.open(frame)
    with pytest.raises(RemoteProtocolError, match="already seen"):
        receiver.open(frame)
    assert receiver.counters["rejected_replay"] == 1


def test_reordering_within_window_is_accepted_once() -> None:
    sender, receiver = pair(replay_window=8)
    frames = [sender.seal(b"%d" % i) for i in range(10)]
    for index in (9, 5, 2, 8, 3):  # 9 is newest; 2..8 are within 8 of it, 1 and 0 are not
        assert receiver.open(frames[index]) == b"%d" % index
    for index in (5, 2, 9):
        with pytest.raises(RemoteProtocolError, match="already seen"):
            receiver.open(frames[index])
    with pytest.raises(RemoteProtocolError, match="older than the replay window"):
        receiver.open(frames[1])


def test_large_counter_jump_resets_the_window() -> None:
    sender, receiver = pair(replay_window=64)
    frames = [sender.seal(b"%d" % i) for i in range(300)]
    receiver.open(frames[0])
    receiver.open(frames[299])
    with pytest.raises(RemoteProtocolError):
        receiver.open(frames[0])
    assert receiver.open(frames[298]) == b"298"


def test_stale_and_future_timestamps_are_rejected() -> None:
    sender_clock, receiver_clock = FakeClock(), FakeClock()
    sender = FrameAuthenticator(SECRET, wall_clock=sender_clock)
    receiver = FrameAuthenticator(SECRET, wall_clock=receiver_clock, max_skew_s=30)
    old = sender.seal(b"old")
    receiver_clock.now += 31
    with pytest.raises(RemoteProtocolError, match="timestamp"):
        receiver.open(old)
    sender_clock.now = receiver_clock.now + 31
    with pytest.raises(RemoteProtocolError, match="timestamp"):
        receiver.open(sender.seal(b"future"))
    sender_clock.now = receiver_clock.now - 29
    assert receiver.open(sender.seal(b"fine")) == b"fine"
    assert receiver.counters["rejected_stale"] == 2


def test_sender_table_is_bounded() -> None:
    receiver = FrameAuthenticator(SECRET, max_senders=3)
    senders = [FrameAuthenticator(SECRET, nonce=bytes([i]) * 8) for i in range(5)]
    for sender in senders:
        receiver.open(sender.seal(b"hi"))
    assert receiver.counters["senders_evicted"] == 2
    assert receiver.open(senders[4].seal(b"again")) == b"again"


@pytest.mark.parametrize(
    "kwargs",
    [{"secret": b"short"}, {"secret": SECRET, "max_skew_s": 0}, {"secret": SECRET, "replay_window": 0},
     {"secret": SECRET, "nonce": b"123"}],
)
def test_bad_arguments_raise_config_error(kwargs: dict) -> None:
    secret = kwargs.pop("secret")
    with pytest.raises(ConfigError):
        FrameAuthenticator(secret, **kwargs)


def test_load_secret_from_env_and_file(tmp_path, caplog) -> None:
    assert load_secret({}) is None
    assert load_secret({"DTRUNTIME_SECRET": "s" * 16}) == b"s" * 16
    path = tmp_path / "secret"
    path.write_bytes(b"0123456789abcdefXYZ\n")
    os.chmod(path, 0o600)
    assert load_secret({"DTRUNTIME_SECRET_FILE": str(path)}) == b"0123456789abcdefXYZ"
    assert load_secret({"DTRUNTIME_SECRET": "s" * 16}, secret_file=path) == b"0123456789abcdefXYZ"
    assert not caplog.records
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING):
        load_secret({}, secret_file=path)
    assert "readable by other users" in caplog.text


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DTRUNTIME_SECRET": "short"}, "DTRUNTIME_SECRET"),
        ({"DTRUNTIME_SECRET_FILE": "/nonexistent/dtruntime-secret"}, "DTRUNTIME_SECRET_FILE"),
        ({"DTRUNTIME_SECRET": "s" * 16, "DTRUNTIME_SECRET_FILE": "/x"}, "DTRUNTIME_SECRET"),
    ],
)
def test_load_secret_errors_name_the_variable(env: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_secret(env)
    assert info.value.key == key


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), authenticated=st.booleans())
def test_random_bytes_only_ever_raise_remote_protocol_error(data: bytes, authenticated: bool) -> None:
    receiver = FrameAuthenticator(SECRET if authenticated else None)
    try:
        payload = receiver.open(data)
    except RemoteProtocolError:
        return
    assert not authenticated, "no random input may pass a MAC check"
    assert data == b"DT\x01\x00" + payload


_SENDER = FrameAuthenticator(SECRET, nonce=b"fuzzfuzz")
_FRAME = _SENDER.seal(b"heartbeat counter=12 incarnation=3")


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(_FRAME) - 1), st.integers(1, 255)), min_size=1, max_size=5
    ),
    cut=st.integers(0, 8),
    extra=st.binary(max_size=8),
)
def test_mutated_frames_are_always_rejected(edits: list[tuple[int, int]], cut: int, extra: bytes) -> None:
    frame = bytearray(_FRAME)
    for index, flip in edits:
        frame[index] ^= flip
    mutated = bytes(frame[: len(frame) - cut]) + extra
    if mutated == _FRAME:
        return
    with pytest.raises(RemoteProtocolError):
        FrameAuthenticator(SECRET).open(mutated)


@settings(max_examples=200, deadline=None)
@given(order=st.lists(st.integers(0, 199), max_size=300))
def test_replay_window_matches_model(order: list[int]) -> None:
    """Any delivery order (with duplicates) is accepted exactly as a simple model says."""
    window = 16
    sender = FrameAuthenticator(SECRET)
    receiver = FrameAuthenticator(SECRET, replay_window=window)
    frames = [sender.seal(b"%d" % i) for i in range(200)]
    seen: set[int] = set()
    highest = -1
    for index in order:
        expected = index not in seen and highest - index < window
        try:
            receiver.open(frames[index])
            accepted = True
        except RemoteProtocolError:
            accepted = False
        assert accepted == expected, (index, highest)
        if accepted:
            seen.add(index)
            highest = max(highest, index)
