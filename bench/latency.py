"""Latency benchmark: from a piece's release by the replay's pacer to its updates reaching subscribers.

    python bench/latency.py               # 20k messages, 50 symbols, replayed in about 60 s
    python bench/latency.py --json
    python bench/latency.py --seconds 120 --messages 100000 --symbols 200

What happens, in one run:
1. A MoldUDP64 pcap of ``--messages`` messages over ``--symbols`` symbols from the project's generator
   (cached in ``bench/data/``). The generator spreads a trading day over 16 hours of capture time, so
   ``--speed 1`` would take 16 hours: the replay runs at ``--speed`` (default: the capture's span divided
   by ``--seconds``, about 1,000x for 60 s). The pacer cuts the capture into pieces of at most 1 ms of
   capture time, so at that speed each piece is about one packet, released at its own (scaled) time.
2. Subscribers in two other processes, ready before the replay starts: a ``websockets`` client of the
   project's WebSocket server subscribed to ``*`` (bbo, l2, trades), and a redis-py client
   pattern-subscribed to ``md:nasdaq:*:bbo``, ``:l2`` and ``:trades``; each freezes the garbage
   collector's view of what it loaded before it says ready, as the sink processes do. Each stamps every message with
   ``time.monotonic_ns()`` as it is read (CLOCK_MONOTONIC: one clock for every process of the machine)
   and keeps its ``ts_recv`` (the pcap time of the packet that caused it).
3. ``feedhandler.replay.replay(path, None, conflate_ns=--conflate, speed=..., runners=[redis, websocket])``,
   in this process, with the replay's ``Pacer`` swapped for a subclass that records
   ``time.monotonic_ns()`` when each ``wait_until`` returns: the release of each piece, and the capture
   time of the piece's first message. A message's piece is the last one released at or before its
   ``ts_recv``; its latency is its read time minus that release.
4. Printed: p50, p99, p99.9 and max per subscriber and channel (target: p99 <= 1 ms on loopback), and how
   late the pacer released pieces against their due time (a late release is the feed falling behind,
   not counted in the latency above). Then the same latencies by how long the machine was quiet before
   each piece (<1 ms, 1-5 ms, >=5 ms since the previous release) and for big pieces (10+ messages),
   with each group's share of the messages over 1 ms: the first piece after a quiet spell runs cold in
   every process on its path (``gap_breakdown``). ``--dump DIR`` keeps the raw arrays.
5. Where the time goes (``--mode process``): each sink process records every write's hops
   (``publish.process_runner.HopTrace``, switched on by ``FEEDHANDLER_SINK_TRACE``): release -> offer
   (the feed's book update and queue copy), offer -> taken (the sink process waking), taken -> write
   start, the write, and write done -> read by the subscriber; each hop's own percentiles are printed.
   And the CPU time per piece of every process on the path (feed, sinks, redis-server, subscribers):
   on two cores they share, a burst of pieces queues behind their sum.

6. The floor (``--no-floor`` skips it): the same release times through ``latency_floor.py``'s chains
   doing nearly nothing (releaser -> relay process -> redis-server -> redis-py subscriber), one chain
   per subscriber, so the same number of processes share the cores; our p99 is printed as a multiple
   of the floor's. What is over the floor is our own work per piece.

Redis is a ``redis-server`` started on a free loopback port (``--redis URL`` uses yours).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from sinks import OwnRedis, _sink_nice, make_runners, obtain_capture, wait_open  # noqa: E402  (the publishing bench's helpers)

TARGET_P99_NS = 1_000_000
STOP_CHANNEL = "bench:latency:stop"


# ===================================================================== subscribers (other processes)
def _decode_stamped(stamped: list[tuple[int, bytes | str]]) -> np.ndarray:
    """(read time, raw message) -> rows of (read ns, ts_recv, channel code: 0 bbo, 1 l2, 2 trade)."""
    codes = {"bbo": 0, "l2": 1, "trade": 2}
    out = np.zeros((len(stamped), 3), dtype=np.int64)
    n = 0
    for t, raw in stamped:
        m = json.loads(raw)
        code = codes.get(m.get("type"))
        if code is None or m.get("snapshot"):
            continue
        out[n] = (t, m["ts_recv"], code)
        n += 1
    return out[:n]


def ws_subscriber(url: str, out: str) -> int:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    stamped: list[tuple[int, str]] = []

    async def go() -> None:
        async with connect(url, max_size=None, compression=None) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channels": ["bbo", "l2", "trades"], "symbols": "*"}))
            first = json.loads(await ws.recv())
            if first.get("type") != "subscribed":
                raise SystemExit(f"unexpected first message {first}")
            gc.collect()
            gc.freeze()  # as the sink processes do: collections never rescan what was loaded before
            print("ready", flush=True)
            try:
                while True:
                    raw = await ws.recv()
                    stamped.append((time.monotonic_ns(), raw))
            except ConnectionClosed:
                pass

    asyncio.run(go())
    np.save(out, _decode_stamped(stamped))
    return 0


def redis_subscriber(url: str, out: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    ps = client.pubsub(ignore_subscribe_messages=True)
    ps.psubscribe("md:nasdaq:*:bbo", "md:nasdaq:*:l2", "md:nasdaq:*:trades")
    ps.subscribe(STOP_CHANNEL)
    for _ in range(4):  # the confirmations
        ps.get_message(ignore_subscribe_messages=False, timeout=5)
    gc.collect()
    gc.freeze()  # as the sink processes do (a full collection of redis-py's heap took 28 ms in one run)
    print("ready", flush=True)
    stamped: list[tuple[int, bytes]] = []
    while True:
        m = ps.get_message(timeout=1.0)
        if m is None:
            continue
        t = time.monotonic_ns()
        if m["channel"] == STOP_CHANNEL.encode():
            break
        stamped.append((t, m["data"]))
    ps.close()
    client.close()
    np.save(out, _decode_stamped(stamped))
    return 0


class Subscriber:
    def __init__(self, kind: str, url: str, tmp: str) -> None:
        self.kind = kind
        self.out = os.path.join(tmp, f"{kind}.npy")
        self.proc = subprocess.Popen([sys.executable, __file__, "--subscriber", kind, url, self.out],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"the {kind} subscriber did not start: {line!r}")

    def result(self, timeout: float = 60) -> np.ndarray:
        self.proc.wait(timeout)
        return np.load(self.out)


# ===================================================================== the replay, with releases recorded
def recording_pacer(releases: list[tuple[int, int, int]]):
    from feedhandler.pacing import Pacer

    class RecordingPacer(Pacer):
        """The replay's pacer, noting (capture ns, due ns, released ns) of each piece."""

        def wait_until(self, capture_ns: int) -> None:
            super().wait_until(capture_ns)
            released = time.monotonic_ns()
            origin = self._origin
            due = origin[1] + (capture_ns - origin[0]) / self.speed
            releases.append((capture_ns, int(due), released))

    return RecordingPacer


def hop_breakdown(rel: np.ndarray, received: dict, trace_dir: str, sinks: dict) -> dict:
    """Where each subscriber's latency goes, hop by hop (percentiles of each hop's own time):
    release -> offer (the feed: book update, batch, queue copy), offer -> taken (the sink process
    waking), taken -> write start (waiting behind other writes), write (encode and send), and
    write done -> read by the subscriber (server, kernel, the subscriber's own process). From the
    sink processes' ``HopTrace`` files; a write is matched to the piece its oldest batch came from."""
    from publish.process_runner import HopTrace

    out = {}
    for kind, sink in sinks.items():
        files = sorted(f for f in os.listdir(trace_dir) if f.startswith(f"{sink}-"))
        if not files or kind not in received:
            continue
        t = np.concatenate([np.load(os.path.join(trace_dir, f)) for f in files])
        col = {name: t[:, k] for k, name in enumerate(HopTrace.COLUMNS)}
        piece = np.searchsorted(rel[:, 2], col["handed"], side="right") - 1
        ok = (piece >= 0) & (col["taken"] > 0)
        hops = {"release_to_offer": col["handed"][ok] - rel[piece[ok], 2],
                "offer_to_taken": (col["taken"] - col["handed"])[ok],
                "taken_to_start": (col["start"] - col["taken"])[ok],
                "write": (col["done"] - col["start"])[ok]}
        # Each message read: the write that carried its piece (the first write whose oldest batch came
        # from that piece or an earlier one and that ended last before... simply: the write of its piece).
        rows = received[kind]
        msg_piece = np.searchsorted(rel[:, 0], rows[:, 1], side="right") - 1
        wp, wdone = piece[ok], col["done"][ok]
        order = np.argsort(wp, kind="stable")
        wp, wdone = wp[order], wdone[order]
        at = np.searchsorted(wp, msg_piece, side="right") - 1  # the last write starting at or before it
        good = (msg_piece >= 0) & (at >= 0)
        after = rows[good, 0] - wdone[at[good]]
        hops["write_to_read"] = after[after >= 0]
        out[kind] = {name: percentiles(ns) for name, ns in hops.items()}
        out[kind]["batches_per_write_max"] = int(col["batches"].max()) if len(t) else 0
    return out


GAPS_NS = ((0, 1_000_000, "<1ms"), (1_000_000, 5_000_000, "1-5ms"), (5_000_000, 1 << 62, ">=5ms"))
BIG_PIECE = 10  # messages


def gap_breakdown(rel: np.ndarray, rows: np.ndarray) -> dict:
    """One subscriber's latencies by how long the machine was quiet before the piece (the time since
    the previous release), and of the messages of big pieces (``BIG_PIECE`` messages or more: the
    subscriber reads them one by one); with each group's share of all the messages over the target.
    After a few ms with nothing to do, every process on the path runs its first piece slower (cold
    caches: on a VM the idle vCPU is halted and its core serves others)."""
    gap = np.diff(rel[:, 2], prepend=rel[0, 2] - (1 << 62))
    piece = np.searchsorted(rel[:, 0], rows[:, 1], side="right") - 1
    ok = piece >= 0
    piece, read = piece[ok], rows[ok, 0]
    lat = read - rel[piece, 2]
    over = lat > TARGET_P99_NS
    size = np.bincount(piece, minlength=len(rel))[piece]
    out = {}
    groups = [(name, (gap[piece] >= lo) & (gap[piece] < hi) & (size < BIG_PIECE)) for lo, hi, name in GAPS_NS]
    groups.append((f">={BIG_PIECE} msgs", size >= BIG_PIECE))
    for name, m in groups:
        out[name] = {**percentiles(lat[m]), "share_of_over_target": float(over[m].sum() / max(1, over.sum()))}
    return out


def floor_run(rel: np.ndarray, chains: int, log) -> dict:
    """The machine's floor at this run's release times: ``latency_floor.run_floor`` with one chain per
    subscriber (a relay process, redis-server and a redis-py subscriber each, doing nearly nothing: the
    same number of processes on the cores as the replay with its sinks and subscribers)."""
    from latency_floor import run_floor

    log(f"floor: {len(rel):,} releases at the replay's times through {chains} chain(s) doing nothing...")
    gaps = np.diff(rel[:, 2], prepend=rel[0, 2]) / 1e9
    chains_out = run_floor(gaps, max(1, chains), "redis-py")
    lat = np.concatenate([c[:, 1] - c[:, 0] for c in chains_out])
    return {"chains": len(chains_out), **percentiles(lat)}


def cpu_times(runners, subs, own) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process on the path."""
    pids = {"feed": os.getpid(), **{f"sub_{s.kind}": s.proc.pid for s in subs}}
    for r in runners:
        if getattr(r, "pid", None):
            pids[f"sink_{r.sink.name}"] = r.pid
    if own is not None:
        pids["redis-server"] = own.proc.pid
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return out


def percentiles(ns: np.ndarray) -> dict:
    if not len(ns):
        return {"count": 0}
    p50, p99, p999 = np.percentile(ns, [50, 99, 99.9])
    return {"count": int(len(ns)), "p50_us": p50 / 1e3, "p99_us": p99 / 1e3, "p99_9_us": p999 / 1e3,
            "max_us": float(ns.max()) / 1e3, "meets_target": bool(p99 <= TARGET_P99_NS)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=20_000, help="messages in the capture (default 20,000)")
    ap.add_argument("--symbols", type=int, default=50, help="symbols (default 50)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=60.0, help="replay wall time: sets --speed (default 60)")
    ap.add_argument("--speed", type=float, help="replay speed (default: capture span / --seconds)")
    ap.add_argument("--conflate", default="0", help="conflation window (default 0: every update)")
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--redis", help="use this Redis (default: start a redis-server on a free port)")
    ap.add_argument("--mode", choices=("process", "thread"), default="process",
                    help="sinks each in a process of their own (default, as feedhandler replay runs them) "
                         "or on threads of the feed's process (process = false)")
    ap.add_argument("--nice", type=int, default=None,
                    help="niceness added to sink processes (default: feedhandler.sinks.SINK_NICE)")
    ap.add_argument("--sinks", default="redis,websocket",
                    help="sinks on, each with its subscriber (default redis,websocket: both at once)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dump", metavar="DIR", help="also save the raw releases, reads and hop traces there (.npy)")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the floor run (latency_floor.py's chains doing nothing, at this run's release times)")
    ap.add_argument("--subscriber", nargs=3, metavar=("KIND", "URL", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.subscriber:
        kind, url, out = args.subscriber
        return (ws_subscriber if kind == "ws" else redis_subscriber)(url, out)

    import redis

    import feedhandler.replay as fr
    from feedhandler.times import parse_duration
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    conflate_ns = parse_duration(args.conflate)
    path, how = obtain_capture(args.messages, args.symbols, args.seed)
    source = fr.DecodedCapture(path)
    stamps = np.concatenate([b.events["ts_recv"] for b in source.batches()])
    span_ns = int(stamps.max() - stamps.min())
    speed = args.speed or span_ns / 1e9 / args.seconds
    log(f"capture: {path.name} ({how}), {span_ns / 3.6e12:.1f} h of capture time; speed {speed:,.0f}x "
        f"-> {span_ns / 1e9 / speed:.1f} s")
    fr.replay(path, None, depth=args.depth, conflate_ns=conflate_ns)  # numba's cache, untimed

    own = None if args.redis else OwnRedis()
    redis_url = args.redis or own.url
    tmp = tempfile.mkdtemp(prefix="bench-latency-")
    releases: list[tuple[int, int, int]] = []
    runners = []
    saved = fr.Pacer
    from publish.process_runner import TRACE_ENV

    trace_dir = os.path.join(tmp, "hops")
    os.makedirs(trace_dir)
    if args.mode == "process":
        os.environ[TRACE_ENV] = trace_dir  # the sink processes record each hop (HopTrace)
    try:
        names = [n for n in ("redis", "websocket") if n in args.sinks.split(",")]
        runners, _ = make_runners(names, redis_url, "", args.depth, args.mode, args.nice, full_speed=False)
        wait_open(runners)
        subs = [Subscriber("ws", f"ws://127.0.0.1:{r.sink.port}", tmp) for r in runners if r.sink.name == "websocket"]
        subs += [Subscriber("redis", redis_url, tmp) for r in runners if r.sink.name == "redis"]
        fr.Pacer = recording_pacer(releases)
        t0 = time.perf_counter()
        cpu0 = cpu_times(runners, subs, own)
        summary = fr.replay(path, None, depth=args.depth, conflate_ns=conflate_ns, speed=speed, runners=runners)
        wall = time.perf_counter() - t0
        cpu = {k: v - cpu0.get(k, 0.0) for k, v in cpu_times(runners, subs, own).items()}
        fr.Pacer = saved
        reports = {r.sink.name: r.stop(30) for r in runners}  # the WebSocket server closes: its client ends
        client = redis.Redis.from_url(redis_url)
        client.publish(STOP_CHANNEL, "stop")
        client.close()
        received = {s.kind: s.result() for s in subs}
    finally:
        os.environ.pop(TRACE_ENV, None)
        fr.Pacer = saved
        for r in runners:
            r.stop(0)
        if own is not None:
            own.close()

    rel = np.array([r for r in releases if r[0] > 0], dtype=np.int64).reshape(-1, 3)
    if args.dump:
        import shutil

        os.makedirs(args.dump, exist_ok=True)
        np.save(os.path.join(args.dump, "releases.npy"), rel)
        for kind, rows in received.items():
            np.save(os.path.join(args.dump, f"read_{kind}.npy"), rows)
        for f in os.listdir(trace_dir):
            shutil.copy(os.path.join(trace_dir, f), args.dump)
    order = np.argsort(rel[:, 0], kind="stable")
    if not np.array_equal(order, np.arange(len(rel))):
        raise SystemExit("the pacer's pieces are not in capture-time order")
    late = rel[:, 2] - rel[:, 1]
    results = {}
    for kind, rows in received.items():
        piece = np.searchsorted(rel[:, 0], rows[:, 1], side="right") - 1
        ok = piece >= 0
        lat = rows[ok, 0] - rel[piece[ok], 2]
        results[kind] = {"all": percentiles(lat), "unmatched": int((~ok).sum())}
        for code, name in ((0, "bbo"), (1, "l2"), (2, "trade")):
            results[kind][name] = percentiles(lat[rows[ok, 2] == code])
    hops = hop_breakdown(rel, received, trace_dir, {"ws": "websocket", "redis": "redis"})
    floor = None if args.no_floor else floor_run(rel, len(received), log)
    by_gap = {kind: gap_breakdown(rel, rows) for kind, rows in received.items()}
    report = {"capture": {"path": str(path.relative_to(ROOT)), "messages": summary.messages,
                          "symbols": args.symbols, "span_hours": span_ns / 3.6e12, "made_by": how},
              "speed": speed, "conflate": args.conflate, "mode": args.mode, "sink_nice": _sink_nice(args.nice),
              "replay_seconds": wall,
              "cpu_us_per_piece": {k: v * 1e6 / max(1, len(rel)) for k, v in cpu.items()},
              "pieces": int(len(rel)),
              "release_late_us": {"p50": float(np.percentile(late, 50)) / 1e3,
                                  "p99": float(np.percentile(late, 99)) / 1e3, "max": float(late.max()) / 1e3},
              "latency": results, "by_gap": by_gap, "hops": hops, "sinks": reports, "floor": floor,
              "machine": {"python": platform.python_version(), "cores": os.cpu_count(),
                          "load_avg_1m": os.getloadavg()[0]}}
    if args.json:
        print(json.dumps(report, default=float))
    else:
        print_table(report)
    return 0


def print_table(report: dict) -> None:
    c, m = report["capture"], report["machine"]
    print(f"Latency: {c['messages']:,} messages, {c['symbols']} symbols, {c['span_hours']:.1f} h of capture time "
          f"replayed at {report['speed']:,.0f}x in {report['replay_seconds']:.1f} s ({report['pieces']:,} pieces), "
          f"conflate {report['conflate']}; sinks in {report['mode']}s"
          + (f" at nice +{report['sink_nice']}" if report["mode"] == "process" else "")
          + f"; Python {m['python']}, {m['cores']} cores, "
          f"load {m['load_avg_1m']:.2f}")
    print("from the pacer releasing a piece to a subscriber process reading each message it caused (loopback)")
    head = f"{'path':<34} {'messages':>9} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'max us':>9}  target p99<=1ms"
    print(head)
    print("-" * len(head))
    labels = {"ws": "WebSocket server -> websockets", "redis": "Redis PUBLISH -> redis-py"}
    for kind, res in report["latency"].items():
        for name in ("all", "bbo", "l2", "trade"):
            p = res[name]
            if not p["count"]:
                continue
            label = f"{labels[kind]} {name}" if name != "all" else labels[kind]
            print(f"{label:<34} {p['count']:>9,} {p['p50_us']:>8.0f} {p['p99_us']:>8.0f} {p['p99_9_us']:>9.0f} "
                  f"{p['max_us']:>9.0f}  " + ("ok" if p["meets_target"] else "MISS"))
    for kind, groups in report.get("by_gap", {}).items():
        print(f"{labels[kind]}, by the quiet time before the piece (and big pieces):")
        for name, p in groups.items():
            if p.get("count"):
                print(f"  {name:<32} {p['count']:>9,} {p['p50_us']:>8.0f} {p['p99_us']:>8.0f} {p['p99_9_us']:>9.0f} "
                      f"{p['max_us']:>9.0f}  {100 * p['share_of_over_target']:.0f}% of those over 1 ms")
    for kind, hops in report.get("hops", {}).items():
        print(f"{labels[kind]}, hop by hop (each hop's own percentiles, us):")
        for name, p in hops.items():
            if isinstance(p, dict) and p.get("count"):
                print(f"  {name:<32} {p['count']:>9,} {p['p50_us']:>8.0f} {p['p99_us']:>8.0f} {p['p99_9_us']:>9.0f} "
                      f"{p['max_us']:>9.0f}")
    print("CPU per piece (us): " + ", ".join(f"{k} {v:.0f}" for k, v in report["cpu_us_per_piece"].items()))
    floor = report.get("floor")
    if floor and floor.get("count"):
        print(f"floor (the same releases through {floor['chains']} relay -> redis-server -> redis-py chain(s) doing "
              f"nothing): p50 {floor['p50_us']:.0f} us, p99 {floor['p99_us']:.0f} us, p99.9 {floor['p99_9_us']:.0f} us; "
              + "; ".join(f"{labels[kind]} p99 {res['all']['p99_us'] / floor['p99_us']:.1f}x the floor's"
                          for kind, res in report["latency"].items() if res["all"].get("count")))
    late = report["release_late_us"]
    print(f"pacer releases after their due time: p50 {late['p50']:.0f} us, p99 {late['p99']:.0f} us, "
          f"max {late['max']:.0f} us (not in the latencies above)")
    for name, rep in report["sinks"].items():
        print(f"sink {name}: " + ", ".join(f"{k} {v:,}" for k, v in rep.items()))


if __name__ == "__main__":
    sys.exit(main())
