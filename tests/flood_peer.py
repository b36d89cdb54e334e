"""A hostile peer, run as its own process by tests/test_transport.py.

Usage: python flood_peer.py ENDPOINT SECRET_HEX SEED

Sends exactly 10,000 single-frame messages to ENDPOINT through a raw DEALER, a mix of
valid frames, their exact replays, frames sealed with the wrong secret or no secret,
random bytes and mutated valid frames; then 50 three-frame messages (not a shape our
peers send) and raw non-ZMTP bytes on plain TCP connections. Prints one JSON line with
the counts the receiver should see, and exits 0 once everything is flushed.
"""

from __future__ import annotations

import json
import random
import socket
import sys

import zmq

from dtruntime.runtime.auth import FrameAuthenticator

TOTAL = 10_000
VALID = 100
WRONG_SECRET = 1_000
PLAIN = 1_000
RANDOM = 3_000
MULTIPART = 50
RAW_TCP_CONNECTIONS = 5


def frames(secret: bytes, rng: random.Random) -> tuple[list[bytes], dict[str, int]]:
    good = FrameAuthenticator(secret)
    valid = [good.seal(b"heartbeat %d" % i) for i in range(VALID)]
    replays = list(valid)
    wrong = FrameAuthenticator(b"not the secret, not at all")
    wrong_frames = [wrong.seal(b"evil %d" % i) for i in range(WRONG_SECRET)]
    plain = FrameAuthenticator(None)
    plain_frames = [plain.seal(b"plain %d" % i) for i in range(PLAIN)]
    random_frames = [rng.randbytes(rng.randrange(0, 300)) for _ in range(RANDOM)]
    mutated_count = TOTAL - len(valid) - len(replays) - WRONG_SECRET - PLAIN - RANDOM
    mutated = []
    for i in range(mutated_count):
        frame = bytearray(good.seal(b"victim %d" % i))
        if rng.random() < 0.2:
            frame = frame[: rng.randrange(len(frame))]
        else:
            for _ in range(rng.randrange(1, 4)):
                frame[rng.randrange(len(frame))] ^= rng.randrange(1, 256)
        mutated.append(bytes(frame))
    # Each mutated frame consumed a counter of ``good``; valid frames stay acceptable
    # because they are sent first and the replay window only moves with accepted frames.
    shuffled = wrong_frames + plain_frames + random_frames + mutated
    rng.shuffle(shuffled)
    expected = {
        "accepted": VALID,
        "rejected_replay": VALID,
        "rejected_mode": PLAIN,
        "rejected_total": TOTAL - VALID,  # at least: raw TCP bytes may add ZMTP/1.0 frames
        "received": TOTAL,
        "dropped_malformed": MULTIPART,
    }
    return valid + replays + shuffled, expected


def main() -> int:
    endpoint, secret_hex, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    messages, expected = frames(bytes.fromhex(secret_hex), rng)
    assert len(messages) == TOTAL
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 0)
    dealer.setsockopt(zmq.SNDTIMEO, 20_000)
    dealer.connect(endpoint)
    for message in messages:
        dealer.send(message)
    for i in range(MULTIPART):
        dealer.send_multipart([b"part-a %d" % i, b"part-b", b"part-c"])
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    for _ in range(RAW_TCP_CONNECTIONS):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\n\r\n" + rng.randbytes(4096))
    dealer.close(linger=20_000)
    context.term()
    print(json.dumps(expected), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
