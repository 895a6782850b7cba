"""The machine's floor for ``latency.py``'s Redis path: the same chain of processes doing almost nothing.

    python bench/latency_floor.py                      # 15,000 pieces, ~3 ms apart: about 50 s
    python bench/latency_floor.py --subscriber redis-py --pieces 5000
    python bench/latency_floor.py --subscriber redis-py --chains 2   # two paths at once, as latency.py

``latency.py`` measures a piece's release by the replay's pacer to its messages read by a subscriber,
through the feed, a sink process, redis-server and the subscriber. This bench keeps that chain's shape
and timing and takes the work out, to tell what the machine costs from what our code costs:

1. a releaser process sleeps until each piece's time (gaps drawn from an exponential distribution,
   mean ``--gap-ms``, 3.1 ms: ``latency.py``'s ~19,000 pieces in 60 s), stamps ``time.monotonic_ns()``
   and sends the stamp as one datagram (a SEQPACKET socket pair) to
2. a relay process (the sink's place), which sends ``PUBLISH floor <stamp>`` to
3. a ``redis-server`` of its own on a free loopback port, which passes it to
4. a subscriber process: ``raw`` (a socket read and a split of the RESP reply: nearly no work) or
   ``redis-py`` (``PubSub.get_message``, as ``latency.py``'s subscriber), which stamps each message
   when read.

Printed: p50, p99, p99.9 and max of release -> read, the same for pieces after 5 ms or more of quiet,
and the share of pieces over 1 ms.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sinks import OwnRedis  # noqa: E402  (the publishing bench's redis-server)

CHANNEL = b"floor"


def _publish_command(channel: bytes, payload: bytes) -> bytes:
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(payload), payload)


def relay(port: int, inbox: socket.socket, channel: bytes = CHANNEL) -> None:
    """Each stamp received becomes one PUBLISH; its reply is read before the next (a sink's round)."""
    redis_sock = socket.create_connection(("127.0.0.1", port))
    redis_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        stamp = inbox.recv(64)
        if not stamp:
            return
        redis_sock.sendall(_publish_command(channel, stamp))
        redis_sock.recv(64)


def raw_subscriber(port: int, pieces: int, ready_fd: int, out: str, channel: bytes = CHANNEL) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel))
    sock.recv(256)
    os.write(ready_fd, b"r")
    stamps = np.zeros((pieces, 2), dtype=np.int64)
    n = 0
    pending = b""
    while n < pieces:
        pending += sock.recv(4096)
        now = time.monotonic_ns()
        while n < pieces:  # whole messages: *3 $7 message $n channel $n payload, 7 lines
            lines = pending.split(b"\r\n", 7)
            if len(lines) < 8:
                break
            stamps[n] = int(lines[6]), now
            n += 1
            pending = lines[7]
    np.save(out, stamps)


def redis_py_subscriber(port: int, pieces: int, ready_fd: int, out: str, channel: bytes = CHANNEL) -> None:
    import gc

    import redis

    pubsub = redis.Redis(port=port).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    pubsub.get_message(ignore_subscribe_messages=False, timeout=5)
    gc.collect()
    gc.freeze()
    os.write(ready_fd, b"r")
    stamps = np.zeros((pieces, 2), dtype=np.int64)
    n = 0
    while n < pieces:
        message = pubsub.get_message(timeout=1.0)
        if message is not None:
            stamps[n] = int(message["data"]), time.monotonic_ns()
            n += 1
    np.save(out, stamps)


def run_floor(gaps: np.ndarray, chains: int = 1, subscriber: str = "redis-py") -> list[np.ndarray]:
    """Release one stamp per gap (seconds after the previous release) through ``chains`` relay +
    subscriber paths; per chain, rows of (released ns, read ns). ``latency.py --floor`` calls it with
    its own pieces' gaps."""
    pieces = len(gaps)
    server = OwnRedis()
    subscribe = raw_subscriber if subscriber == "raw" else redis_py_subscriber
    outs, to_relays, pids = [], [], []
    ready_r, ready_w = os.pipe()
    for k in range(chains):
        channel = CHANNEL + b"%d" % k
        outs.append(os.path.join(server.dir, f"stamps{k}.npy"))
        to_relay, relay_inbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        relay_pid = os.fork()
        if relay_pid == 0:
            for other in (*to_relays, to_relay):
                other.close()
            relay(server.port, relay_inbox, channel)
            os._exit(0)
        subscriber_pid = os.fork()
        if subscriber_pid == 0:
            subscribe(server.port, pieces, ready_w, outs[k], channel)
            os._exit(0)
        relay_inbox.close()
        to_relays.append(to_relay)
        pids += [relay_pid, subscriber_pid]
    try:
        for _ in range(chains):
            os.read(ready_r, 1)
        next_due = time.monotonic()
        for gap in gaps:
            next_due += gap
            pause = next_due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            stamp = b"%d" % time.monotonic_ns()
            for to_relay in to_relays:
                to_relay.send(stamp)
        for pid in pids[1::2]:
            os.waitpid(pid, 0)
        return [np.load(out) for out in outs]
    finally:
        os.close(ready_r)
        os.close(ready_w)
        for to_relay in to_relays:
            to_relay.close()
        for pid in pids[0::2]:
            os.waitpid(pid, 0)
        server.close()


def percentiles(us: np.ndarray) -> str:
    if not len(us):
        return "-"
    p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
    return f"{p50:7.0f} {p99:7.0f} {p999:8.0f} {us.max():7.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pieces", type=int, default=15_000)
    ap.add_argument("--gap-ms", type=float, default=3.1, help="mean gap between pieces (default 3.1 ms)")
    ap.add_argument("--subscriber", choices=("raw", "redis-py"), default="raw")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chains", type=int, default=1,
                    help="relay + subscriber pairs fed by the one releaser, in turn, as the feed offers to each "
                         "sink (2: the process count of latency.py with both sinks: 6 processes on the cores)")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    gaps = np.array([rng.expovariate(1000.0 / args.gap_ms) for _ in range(args.pieces)])
    stamps = run_floor(gaps, args.chains, args.subscriber)
    quiet = gaps >= 0.005
    load = os.getloadavg()[0]
    print(f"release -> {args.subscriber} subscriber through a relay process and redis-server, doing nearly nothing; "
          f"{args.chains} chain(s) at once; {args.pieces:,} pieces, mean gap {args.gap_ms} ms; {os.cpu_count()} cores, "
          f"1-min load {load:.2f}")
    print(f"{'pieces':<28}{'count':>7} {'p50 us':>7} {'p99 us':>7} {'p99.9 us':>8} {'max us':>7}  over 1 ms")
    for k, chain in enumerate(stamps):
        latency_us = (chain[:, 1] - chain[:, 0]) / 1000
        for label, sel in (("all", slice(None)), ("after >= 5 ms of quiet", quiet)):
            chosen = latency_us[sel]
            label = f"chain {k + 1}: {label}" if args.chains > 1 else label
            print(f"{label:<28}{len(chosen):>7} {percentiles(chosen)}  {np.mean(chosen > 1000) * 100:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
