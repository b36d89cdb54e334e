"""A hostile process: 10,000 random and mutated frames at one worker's endpoint.

    python -m tests.workers.flood ENDPOINT SEED

The mutations start from valid protocol messages (pings, arrivals, releases, votes,
leader claims) framed as an unauthenticated peer would frame them. Prints the number
of frames sent as one JSON line and exits once they are flushed.
"""

from __future__ import annotations

import json
import random
import sys

import zmq

from dtruntime.protocol import codec
from dtruntime.protocol.messages import (
    Arrive, BarrierResult, Gossip, Leader, MemberEntry, Outcome, Ping, Release, Status, Vote, VoteRequest,
)
from dtruntime.runtime.auth import FrameAuthenticator

TOTAL = 10_000


def templates() -> list[bytes]:
    member = MemberEntry("intruder", 9, 0, 1, Status.DEAD, "tcp://127.0.0.1:1")
    messages = [
        Ping("intruder", 1, Gossip(99, "intruder", (member,))),
        Arrive("intruder", 1, "b1", 0, False, 0, 0),
        Release("intruder", BarrierResult("b1", 0, Outcome.RELEASED, False, ())),
        VoteRequest("intruder", 50),
        Vote("intruder", 50, True),
        Leader("intruder", 77),
    ]
    sealer = FrameAuthenticator(None)
    return [sealer.seal(codec.encode(m)) for m in messages]


def mutate(frame: bytes, rng: random.Random) -> bytes:
    data = bytearray(frame)
    choice = rng.randrange(4)
    if choice == 0 and data:
        position = rng.randrange(len(data))
        data[position] ^= 1 << rng.randrange(8)
    elif choice == 1:
        del data[rng.randrange(len(data) + 1):]
    elif choice == 2:
        position = rng.randrange(len(data) + 1)
        data[position:position] = rng.randbytes(rng.randrange(1, 16))
    else:
        return rng.randbytes(rng.randrange(0, 200))
    return bytes(data)


def main() -> int:
    endpoint, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    bases = templates()
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.connect(endpoint)
    for _ in range(TOTAL):
        sock.send(mutate(rng.choice(bases), rng))
    sock.close(linger=10_000)
    context.term()
    print(json.dumps({"sent": TOTAL}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
