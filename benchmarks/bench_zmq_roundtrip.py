"""ZeroMQ round trip over tcp loopback: raw pyzmq vs ZmqTransport (with and without HMAC).

    python benchmarks/bench_zmq_roundtrip.py [--iters 5000] [--warmup 200]

Each round trip sends a ~117-byte msgpack heartbeat to an echo process and waits for it
to come back; the echo is a separate process so both ends pay their own GIL. Also
reports msgpack pack+unpack and HMAC seal+open of that heartbeat, in-process.

Anchors (docs/anchors.md, "ZeroMQ round trip", 2-core machine): raw round trip p50 85 us, p99 144 us; msgpack
pack+unpack of a 117-byte heartbeat 2.5 us.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import sys
import time
import timeit

import msgpack
import zmq

from dtruntime.runtime.auth import FrameAuthenticator
from dtruntime.runtime.transport import ZmqTransport

SECRET = b"benchmark secret, not for production"
ANCHOR_RTT_US = (85, 144)
ANCHOR_MSGPACK_US = 2.5

HEARTBEAT = {
    "type": "heartbeat",
    "from": "worker-12",
    "endpoint": "tcp://10.0.0.12:41234",
    "term": 3,
    "incarnation": 2,
    "counter": 123456,
    "members": [[0, 1, 120], [1, 1, 118], [2, 1, 119]],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raw_echo(port: int, count: int) -> None:
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 1000)
    router.bind(f"tcp://127.0.0.1:{port}")
    for _ in range(count):
        router.send_multipart(router.recv_multipart())
    router.close()
    context.term()


def transport_echo(port: int, reply_to: str, count: int, authenticated: bool) -> None:
    auth = FrameAuthenticator(SECRET if authenticated else None)
    with ZmqTransport(f"tcp://127.0.0.1:{port}") as transport:
        echoed = 0
        deadline = time.monotonic() + 300
        while echoed < count and time.monotonic() < deadline:
            for frame in transport.poll(1000):
                transport.send(reply_to, auth.seal(auth.open(frame)))
                echoed += 1
        # Let the last replies leave before linger-0 close drops them.
        transport.poll(200)


def measure_raw(payload: bytes, iters: int, warmup: int) -> list[int]:
    port = free_port()
    echo = mp.get_context("spawn").Process(target=raw_echo, args=(port, iters + warmup), daemon=True)
    echo.start()
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, 30_000)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    samples = []
    try:
        for i in range(iters + warmup):
            start = time.perf_counter_ns()
            dealer.send(payload)
            dealer.recv()
            if i >= warmup:
                samples.append(time.perf_counter_ns() - start)
    finally:
        dealer.close()
        context.term()
        echo.join(10)
        if echo.is_alive():
            echo.kill()
    return samples


def measure_transport(payload: bytes, iters: int, warmup: int, authenticated: bool) -> list[int]:
    port = free_port()
    auth = FrameAuthenticator(SECRET if authenticated else None)
    samples = []
    with ZmqTransport() as client:
        echo = mp.get_context("spawn").Process(
            target=transport_echo, args=(port, client.endpoint, iters + warmup, authenticated), daemon=True
        )
        echo.start()
        server = f"tcp://127.0.0.1:{port}"
        try:
            for i in range(iters + warmup):
                start = time.perf_counter_ns()
                client.send(server, auth.seal(payload))
                replies: list[bytes] = []
                deadline = time.monotonic() + 30
                while not replies:
                    if time.monotonic() > deadline:
                        raise RuntimeError("echo did not answer within 30 s")
                    replies = client.poll(1000)
                auth.open(replies[0])
                if i >= warmup:
                    samples.append(time.perf_counter_ns() - start)
        finally:
            echo.join(10)
            if echo.is_alive():
                echo.kill()
    return samples


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3


def per_call_us(fn, number: int = 20000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)
    payload = msgpack.packb(HEARTBEAT)
    print(f"heartbeat payload: {len(payload)} bytes (msgpack)")
    print(f"{'round trip':<24} {'p50 us':>8} {'p99 us':>8}")
    rows = {}
    for name, measure in (
        ("raw pyzmq DEALER/ROUTER", lambda: measure_raw(payload, args.iters, args.warmup)),
        ("ZmqTransport", lambda: measure_transport(payload, args.iters, args.warmup, False)),
        ("ZmqTransport + HMAC", lambda: measure_transport(payload, args.iters, args.warmup, True)),
    ):
        samples = measure()
        rows[name] = (percentile(samples, 0.5), percentile(samples, 0.99))
        print(f"{name:<24} {rows[name][0]:>8.1f} {rows[name][1]:>8.1f}", flush=True)
    raw_p50, raw_p99 = rows["raw pyzmq DEALER/ROUTER"]
    print(
        f"raw vs anchor {ANCHOR_RTT_US[0]}/{ANCHOR_RTT_US[1]} us: "
        f"{raw_p50 / ANCHOR_RTT_US[0]:.2f}x / {raw_p99 / ANCHOR_RTT_US[1]:.2f}x"
    )
    packer_us = per_call_us(lambda: msgpack.unpackb(msgpack.packb(HEARTBEAT)))
    print(f"msgpack pack+unpack: {packer_us:.2f} us (anchor {ANCHOR_MSGPACK_US} us, {packer_us / ANCHOR_MSGPACK_US:.2f}x)")
    sender, receiver = FrameAuthenticator(SECRET), FrameAuthenticator(SECRET)
    seal_open_us = per_call_us(lambda: receiver.open(sender.seal(payload)))
    print(f"HMAC seal+open of the heartbeat: {seal_open_us:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
