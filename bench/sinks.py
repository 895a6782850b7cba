"""Publishing benchmark: replay with each sink on against the null sink; Redis and PostgreSQL against their peers.

    python bench/sinks.py                 # 1M messages, 2,000 symbols, --conflate 1ms; a few minutes
    python bench/sinks.py --json          # one JSON object instead of the tables
    python bench/sinks.py --messages 200000 --pg-rows 200000     # a quick look

(Named ``sinks.py``, not ``publish.py``: every bench runs with ``bench/`` first on ``sys.path``, where a
``publish.py`` would shadow the project's ``publish`` package for all of them.)

What happens, in one run:
1. A MoldUDP64 pcap of ``--messages`` messages over ``--symbols`` symbols from the project's generator,
   cached in ``bench/data/`` under ``bench/replay.py --format pcap``'s name; numba's cache is loaded
   by an untimed replay of its first 20,000 messages.
2. Replays: ``feedhandler.replay.replay(path, None, conflate_ns=--conflate, runners=...)`` (the
   ``--sink null`` path plus the sinks, as ``feedhandler replay --sink null --redis ... --timescale
   ... --ws ...`` builds them) with no sink, each sink alone, and all three. ``feed`` is the wall time
   of the call (the feed never waits for a sink); ``end to end`` adds the time until every runner has
   drained (``SinkRunner.stop`` with a deadline long enough that nothing is abandoned). The WebSocket
   runs have one client reading everything (``*``: bbo, l2, trades) in another process. Ratios are to
   the null replay: target >= 0.5 on the feed.
3. Redis: the replay's batches (collected from a null replay) are published by one ``RedisPublisher``
   (one pipeline per batch) and timed: channel messages/s. The peer is ``redis-benchmark -P 64 -c 1
   -q PUBLISH chan <msg>`` against the same server, ``<msg>`` a bbo message of the median size of ours
   (one client, like our one publisher thread; ``-c 50`` printed too).
4. PostgreSQL: ``--pg-rows`` trade rows (the capture's trades, repeated with new match ids, in time
   order) written by a fresh ``TimescaleSink`` in batches of ``--pg-batch`` rows, against
   ``bench/_pg_copy.bare_copy_rows_per_s``: the same rows and encoder in one COPY into a bare table.
   Target >= 0.8 of the bare COPY.

Servers: Redis is a ``redis-server`` this bench starts on a free loopback port (``--save "" --appendonly
no``; ``--redis URL`` uses yours: the bench writes ``md:nasdaq:*`` and FLUSHes nothing there); PostgreSQL
is ``--pg`` (default ``$FEEDHANDLER_PG_DSN`` or ``make test``'s), in schemas of its own, dropped after.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # running as ``python bench/sinks.py`` from anywhere
    sys.path.insert(0, str(ROOT))

DATA = HERE / "data"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/feedhandler_test"
WARMUP_MESSAGES = 20_000
REPLAY_TARGET = 0.5  # replay messages/s with a sink on, over the null sink
PG_TARGET = 0.8  # TimescaleSink rows/s over a bare COPY


# ===================================================================== inputs and servers
def obtain_capture(messages: int, symbols: int, seed: int, regenerate: bool = False) -> tuple[Path, str]:
    """The cached pcap (``bench/replay.py --format pcap``'s name), generated when missing."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"itch50_project_m{messages}_s{symbols}_seed{seed}_nodlcr.pcap"
    if path.exists() and not regenerate:
        return path, f"cached {path.relative_to(ROOT)}"
    from captures.generator import generate

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    generate(messages=messages, symbols=symbols, seed=seed, dlcr=False).write(tmp, "pcap")
    os.replace(tmp, path)
    return path, "captures.generator.generate(...).write(path, 'pcap')"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """A ``redis-server`` on a free loopback port without persistence, stopped by ``close()``."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH (apt-get install redis-server), or pass --redis URL")
        import redis

        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)
        client.close()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_host_port(url: str) -> tuple[str, int]:
    m = re.match(r"redis://([^:/]+)(?::(\d+))?", url)
    if not m:
        raise SystemExit(f"--redis {url}: expected redis://HOST[:PORT][/DB]")
    return m.group(1), int(m.group(2) or 6379)


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# ===================================================================== a WebSocket reader in another process
def ws_reader(url: str) -> int:
    """Subscribe to everything, say ``ready``, read until the server closes; print the counts as JSON."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def go() -> dict:
        counts: dict[str, int] = {}
        async with connect(url, max_size=None, compression=None) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channels": ["bbo", "l2", "trades"], "symbols": "*"}))
            try:
                async for raw in ws:
                    kind = json.loads(raw)["type"]
                    counts[kind] = counts.get(kind, 0) + 1
                    if kind == "subscribed":
                        print("ready", flush=True)
            except ConnectionClosed:
                pass
        return counts

    print(json.dumps(asyncio.run(go())), flush=True)
    return 0


class Reader:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--ws-reader", f"ws://127.0.0.1:{port}"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"the WebSocket reader did not subscribe: {line!r}")

    def counts(self) -> dict:
        out, _ = self.proc.communicate(timeout=60)
        return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


# ===================================================================== 2. replays with sinks
def make_runners(names: list[str], redis_url: str, dsn: str, depth: int, mode: str = "process",
                 nice: int | None = None, full_speed: bool = True) -> tuple[list, list[str]]:
    """The runners ``feedhandler replay --redis ... --timescale ... --ws ...`` builds
    (``feedhandler.sinks.build_runners``): each sink in a process of its own, or with ``mode="thread"``
    (``process = false``) on a thread of the feed's process, as before. ``full_speed``: for a replay
    without ``--speed`` (the sink processes take their ``nice`` from the start), as this bench's."""
    from feedhandler.sinks import build_runners

    settings, schemas = {}, []
    for name in names:
        if name == "redis":
            conf = {"url": redis_url}
        elif name == "timescale":
            schemas.append(f"bench_{uuid.uuid4().hex[:10]}")
            conf = {"dsn": dsn, "schema": schemas[-1]}
        else:
            conf = {"listen": "127.0.0.1:0"}
        conf["process"] = mode == "process"
        if mode == "process" and nice is not None:
            conf["nice"] = nice
        settings[name] = conf
    return build_runners(settings, venue_depth=depth, full_speed=full_speed), schemas


def wait_open(runners, timeout: float = 30.0) -> None:
    """Until each sink is open (its runner opens it on its own thread, or in its own process)."""
    deadline = time.monotonic() + timeout
    for r in runners:
        sink = r.sink
        if hasattr(sink, "wait_open"):  # a sink in a child process
            if not sink.wait_open(max(0.0, deadline - time.monotonic())):
                raise SystemExit(f"sink {sink.name} did not open: {r.last_error}")
            continue
        while not (getattr(sink, "client", None) is not None or getattr(sink, "conn", None) is not None
                   or getattr(sink, "_loop", None) is not None):
            if time.monotonic() > deadline:
                raise SystemExit(f"sink {sink.name} did not open: {r.last_error}")
            time.sleep(0.01)
        if sink.name == "timescale":
            time.sleep(0.2)  # open() = connect + migrate: let the migration finish


def ws_applied(runner, timeout: float = 1800.0) -> None:
    """Until the WebSocket server's loop has applied every batch handed to it.

    ``stop`` closes the server, and ``WebSocketServer.close`` waits only ``close_timeout`` + 5 s for
    its loop: a loop still busy with queued batches would go on after the runner reported. A server in
    a child process gets one write per merged run of batches (``writes``); its counters come back
    through the status the child publishes every 50 ms or so.
    """
    deadline = time.monotonic() + timeout
    writes = "writes" if hasattr(runner.sink, "wait_open") else "written"
    while True:
        counters = runner.sink.counters
        if not runner.queued() and (counters.get("batches", 0) + counters.get("batches_conflated", 0)
                                    >= runner.counts[writes]):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"the WebSocket server did not apply its batches in {timeout:g} s: {counters}")
        time.sleep(0.01)


def run_replay(path: Path, names: list[str], args, redis_url: str, mode: str = "process") -> dict:
    from feedhandler.replay import replay

    runners, schemas = make_runners(names, redis_url, args.pg, args.depth, mode, args.nice)
    reader = None
    try:
        wait_open(runners)
        ws = next((r for r in runners if r.sink.name == "websocket"), None)
        if ws is not None:
            reader = Reader(ws.sink.port)
        t0 = time.perf_counter()
        summary = replay(path, None, depth=args.depth, conflate_ns=args.conflate_ns, runners=runners)
        feed = time.perf_counter() - t0
        if ws is not None:
            ws_applied(ws)
        reports = {}
        for r in runners:
            reports[r.sink.name] = r.stop(deadline_s=1800)
        e2e = time.perf_counter() - t0
    finally:
        for r in runners:
            r.stop(0)
        for schema in schemas:
            drop_schema(args.pg, schema)
    result = {"sinks": "+".join(names) or "null", "mode": mode if names else "", "messages": summary.messages,
              "feed_seconds": feed,
              "e2e_seconds": e2e, "feed_per_s": summary.messages / feed, "e2e_per_s": summary.messages / e2e,
              "rows": {k: summary.rows.get(k, 0) for k in ("bbo", "l2", "trades", "status")},
              "reports": reports}
    if reader is not None:
        result["ws_client"] = reader.counts()
    lost = {n: {k: v for k, v in rep.items() if k in ("dropped_batches", "dropped_rows", "failures")}
            for n, rep in reports.items()}
    result["problems"] = [f"{n}: {v}" for n, v in lost.items() if v]
    return result


# ===================================================================== 3. Redis publishing against redis-benchmark
class _Collect:
    """A sink that keeps every batch (to publish them again, timed, outside the replay)."""

    name = "collect"
    counters: dict[str, int] = {}

    def __init__(self) -> None:
        self.batches = []

    def open(self) -> None:
        pass

    def write(self, batch) -> None:
        self.batches.append(batch)

    def close(self) -> None:
        pass


def collect_batches(path: Path, args) -> list:
    from feedhandler.replay import replay
    from publish.runner import SinkRunner

    sink = _Collect()
    runner = SinkRunner(sink, max_batches=1 << 20)
    replay(path, None, depth=args.depth, conflate_ns=args.conflate_ns, runners=[runner])
    runner.stop(600)
    return sink.batches


def bench_redis(batches: list, redis_url: str, args) -> dict:
    import redis

    from publish.redis_pub import RedisPublisher

    best = None
    for _ in range(args.repeat):
        pub = RedisPublisher(redis_url, venue_depth=args.depth)
        pub.open()
        t0 = time.perf_counter()
        commands = 0
        for batch in batches:
            pub.write(batch)
        seconds = time.perf_counter() - t0
        published = pub.counters["published"]
        commands = published + pub.counters["stream_entries"]
        pub.close()
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "published": published, "stream_entries": pub.counters["stream_entries"],
                    "published_per_s": published / seconds, "commands_per_s_at_least": commands / seconds}
    # The peer: PUBLISH of a message of our median bbo size, pipelined 64 deep.
    from publish.encoding import Encoder

    sample = next(b for b in batches if len(b.bbo))
    texts = Encoder("json").bbo(sample.bbo[:1000], sample.symbols)
    message = sorted(texts, key=len)[len(texts) // 2]
    host, port = redis_host_port(redis_url)
    peers = {}
    binary = shutil.which("redis-benchmark")
    if binary is None:
        peers["error"] = "redis-benchmark is not on PATH"
    else:
        for clients in (1, 50):
            proc = subprocess.run([binary, "-h", host, "-p", str(port), "-P", "64", "-c", str(clients), "-q",
                                   "-n", str(args.redis_benchmark_n), "PUBLISH", "chan", message],
                                  capture_output=True, text=True, timeout=600)
            m = re.search(r"([\d.]+) requests per second", proc.stdout.replace("\r", "\n"))
            peers[f"c{clients}"] = float(m.group(1)) if m else None
    client = redis.Redis.from_url(redis_url)
    version = client.info("server")["redis_version"]
    client.close()
    return {**best, "message_bytes": len(message), "peer": peers, "redis_version": version,
            "over_peer": best["published_per_s"] / peers["c1"] if peers.get("c1") else None}


# ===================================================================== 4. PostgreSQL ingest against a bare COPY
def pg_trades(batches: list, rows: int) -> tuple[np.ndarray, dict, str]:
    """``rows`` trade rows: the capture's trades repeated (match ids made unique), in time order."""
    trades = np.concatenate([b.trades for b in batches if len(b.trades)])
    reps = -(-rows // len(trades))
    step = int(trades["match_id"].max()) + 1
    tiled = np.concatenate([trades] * reps)
    tiled["match_id"] += (np.repeat(np.arange(reps, dtype=np.uint64), len(trades)) * np.uint64(step))
    tiled = tiled[np.argsort(tiled["ts_event"], kind="stable")][:rows]
    return tiled, dict(batches[-1].symbols), batches[-1].venue


def bench_pg(trades: np.ndarray, symbols: dict, venue: str, args) -> dict:
    sys.path.insert(0, str(HERE))
    from _pg_copy import bare_copy_rows_per_s

    from publish.batch import MarketBatch
    from publish.timescale import TimescaleSink

    def sink_rows_per_s() -> float:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        sink = TimescaleSink(args.pg, schema=schema)
        try:
            sink.open()
            chunks = [MarketBatch(venue=venue, symbols=symbols, trades=trades[i:i + args.pg_batch])
                      for i in range(0, len(trades), args.pg_batch)]
            t0 = time.perf_counter()
            for chunk in chunks:
                sink.write(chunk)
            seconds = time.perf_counter() - t0
            if sink.counters.get("rows_trades") != len(trades):
                raise SystemExit(f"TimescaleSink stored {sink.counters.get('rows_trades')} of {len(trades)} rows")
            return len(trades) / seconds
        finally:
            sink.close()
            drop_schema(args.pg, schema)

    def peer_rows_per_s() -> float:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        try:
            return bare_copy_rows_per_s(args.pg, schema, trades, venue, symbols, repeats=1)
        finally:
            drop_schema(args.pg, schema)

    best = peer = 0.0
    for _ in range(args.repeat):  # interleaved, best of each: load that comes and goes hits both alike
        best = max(best, sink_rows_per_s())
        peer = max(peer, peer_rows_per_s())
    # Encoding alone (both writers encode the same way; the sink streams its COPY in parts, so the
    # server inserts while the next part is encoded, where the bare COPY encodes everything first).
    from publish.postgres_sink import copy_binary
    from publish.timescale import TRADES, table_values

    t0 = time.perf_counter()
    copy_binary([c.pg for c in TRADES.columns], table_values(TRADES, trades, venue, symbols))
    encode = len(trades) / (time.perf_counter() - t0)
    import psycopg

    with psycopg.connect(args.pg) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    return {"rows": len(trades), "batch_rows": args.pg_batch, "sink_rows_per_s": best, "bare_copy_rows_per_s": peer,
            "encode_rows_per_s": encode,
            "over_peer": best / peer, "meets_target": best / peer >= PG_TARGET, "postgres_version": version}


# ===================================================================== main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000, help="messages in the capture (default 1M)")
    ap.add_argument("--symbols", type=int, default=2000, help="symbols (default 2,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--conflate", default="1ms", help="BBO/L2 conflation window (default 1ms)")
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the best counts (default 1)")
    ap.add_argument("--redis", help="use this Redis (default: start a redis-server on a free port)")
    ap.add_argument("--pg", default=os.environ.get("FEEDHANDLER_PG_DSN", DEFAULT_PG_DSN), help="PostgreSQL DSN")
    ap.add_argument("--pg-rows", type=int, default=500_000, help="trade rows for the ingest comparison (default 500k)")
    ap.add_argument("--pg-batch", type=int, default=50_000, help="rows per TimescaleSink.write (default 50k)")
    ap.add_argument("--redis-benchmark-n", type=int, default=2_000_000, help="PUBLISH requests of the peer")
    ap.add_argument("--only", default="replay,redis,pg", help="parts to run: replay, redis, pg (default all)")
    ap.add_argument("--sets", default="redis,timescale,websocket,all",
                    help="replays with these sinks on (all: the three at once; default every one)")
    ap.add_argument("--modes", default="process",
                    help="how sinks run: process (each in its own, the default), thread (in the feed's "
                         "process, as before), or both: process,thread")
    ap.add_argument("--nice", type=int, default=None,
                    help="niceness added to sink processes (default: feedhandler.sinks.SINK_NICE)")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    ap.add_argument("--ws-reader", metavar="URL", help=argparse.SUPPRESS)  # the reader subprocess
    args = ap.parse_args(argv)
    if args.ws_reader:
        return ws_reader(args.ws_reader)
    from feedhandler.times import parse_duration

    args.conflate_ns = parse_duration(args.conflate)
    parts = set(args.only.split(","))
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))

    path, how = obtain_capture(args.messages, args.symbols, args.seed, args.regenerate)
    log(f"capture: {path.name}, {path.stat().st_size / 2**20:.1f} MiB, {how}")
    warm, _ = obtain_capture(WARMUP_MESSAGES, min(args.symbols, 500), args.seed)
    from feedhandler.replay import replay

    t0 = time.perf_counter()
    replay(warm, None, depth=args.depth, conflate_ns=args.conflate_ns)
    log(f"numba cache loaded on {WARMUP_MESSAGES:,} messages in {time.perf_counter() - t0:.2f} s (untimed)")

    own = None if args.redis else OwnRedis()
    redis_url = args.redis or own.url
    report = {"capture": {"path": str(path.relative_to(ROOT)), "messages": args.messages, "symbols": args.symbols,
                          "seed": args.seed, "made_by": how},
              "conflate": args.conflate, "depth": args.depth, "repeat": args.repeat,
              "sink_nice": _sink_nice(args.nice),
              "redis_url": redis_url, "redis_own_server": own is not None,
              "machine": {"python": platform.python_version(), "cores": os.cpu_count(),
                          "load_avg_1m": os.getloadavg()[0]}}
    try:
        if "replay" in parts:
            sets = [["redis", "timescale", "websocket"] if s == "all" else [s] for s in args.sets.split(",")]
            plan = [("", [])] + [(m, n) for m in args.modes.split(",") for n in sets]
            runs: list[dict | None] = [None] * len(plan)
            # Interleaved (null, redis, ..., null, redis, ...), best of each: a load that comes and goes
            # on a shared machine then weighs on every configuration alike.
            for rep in range(args.repeat):
                for k, (mode, names) in enumerate(plan):
                    log(f"replay {rep + 1}/{args.repeat}, sinks: {'+'.join(names) or 'null'} {mode} ...")
                    r = run_replay(path, names, args, redis_url, mode)
                    if runs[k] is None or r["feed_seconds"] < runs[k]["feed_seconds"]:
                        runs[k] = r
            null = runs[0]
            for r in runs:
                r["feed_over_null"] = r["feed_per_s"] / null["feed_per_s"]
                r["e2e_over_null"] = r["e2e_per_s"] / null["e2e_per_s"]
                r["meets_target"] = r["feed_over_null"] >= REPLAY_TARGET
            report["replay"] = runs
        if "redis" in parts or "pg" in parts:
            log("collecting the replay's batches (null replay) ...")
            batches = collect_batches(path, args)
            if "redis" in parts:
                log("Redis: RedisPublisher against redis-benchmark PUBLISH ...")
                report["redis"] = bench_redis(batches, redis_url, args)
            if "pg" in parts:
                log("PostgreSQL: TimescaleSink against a bare COPY ...")
                trades, symbols, venue = pg_trades(batches, args.pg_rows)
                report["pg"] = bench_pg(trades, symbols, venue, args)
    finally:
        if own is not None:
            own.close()
    report["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, default=float))
    else:
        print_tables(report)
    return 0


def _sink_nice(nice: int | None) -> int:
    from feedhandler.sinks import SINK_NICE

    return SINK_NICE if nice is None else nice


def print_tables(report: dict) -> None:
    c, m = report["capture"], report["machine"]
    print(f"Publishing: {c['messages']:,} messages, {c['symbols']:,} symbols, MoldUDP64 pcap ({c['made_by']}); "
          f"conflate {report['conflate']}, depth {report['depth']}; sink processes at nice +{report.get('sink_nice', 0)}; "
          f"best of {report['repeat']}; Python {m['python']}, "
          f"{m['cores']} cores, 1-min load {m['load_avg_1m']:.2f} -> {m['load_avg_1m_after']:.2f}")
    if "replay" in report:
        print()
        print("replay(path, None, conflate_ns=..., runners=[...]): feed = the call; end to end = until every sink drained")
        head = (f"{'sinks':<34} {'feed s':>7} {'feed msg/s':>11} {'/null':>6} {'target':<9} {'e2e s':>7} "
                f"{'e2e msg/s':>11} {'/null':>6}  sink counters")
        print(head)
        print("-" * (len(head) + 40))
        for r in report["replay"]:
            target = "" if r["sinks"] == "null" else f">={REPLAY_TARGET} " + ("ok" if r["meets_target"] else "MISS")
            counters = []
            for name, rep in r["reports"].items():
                keep = {k: v for k, v in rep.items() if k in (
                    "written", "writes", "conflated", "dropped_batches", "failures", "redis_published",
                    "timescale_rows_trades",
                    "timescale_rows_bbo", "websocket_messages_sent", "websocket_batches_conflated",
                    "websocket_dropped", "websocket_disconnects_slow")}
                counters.append(f"{name}: " + " ".join(f"{k.split('_', 1)[-1] if k.startswith(name) else k}={v:,}"
                                                       for k, v in keep.items()))
            if "ws_client" in r:
                counters.append(f"client read {sum(r['ws_client'].values()):,}")
            label = r["sinks"] + (f" ({r['mode']})" if r.get("mode") else "")
            print(f"{label:<34} {r['feed_seconds']:>7.2f} {r['feed_per_s']:>11,.0f} {r['feed_over_null']:>6.2f} "
                  f"{target:<9} {r['e2e_seconds']:>7.2f} {r['e2e_per_s']:>11,.0f} {r['e2e_over_null']:>6.2f}  "
                  + "; ".join(counters) + ("  PROBLEMS: " + ", ".join(r["problems"]) if r["problems"] else ""))
        rows = report["replay"][0]["rows"]
        print(f"rows per replay: bbo {rows['bbo']:,}, l2 {rows['l2']:,}, trades {rows['trades']:,}, "
              f"status {rows['status']:,}")
    if "redis" in report:
        r = report["redis"]
        print()
        print(f"Redis {r['redis_version']} on {'its own server' if report['redis_own_server'] else report['redis_url']}, "
              f"loopback; bbo message of median size {r['message_bytes']} bytes for the peer")
        print(f"{'publisher':<58} {'messages/s':>11} {'ratio':>6}")
        print(f"{'RedisPublisher.write, one pipeline per replay batch':<58} {r['published_per_s']:>11,.0f} "
              f"{r['over_peer'] or 0:>6.2f}   ({r['published']:,} channel messages + {r['stream_entries']:,} "
              f"stream entries in {r['seconds']:.2f} s)")
        for key, label in (("c1", "redis-benchmark -P 64 -c 1 PUBLISH chan <msg>"),
                           ("c50", "redis-benchmark -P 64 -c 50 PUBLISH chan <msg>")):
            v = r["peer"].get(key)
            print(f"{label:<58} {v or 0:>11,.0f} {'1.00' if key == 'c1' else '':>6}")
    if "pg" in report:
        p = report["pg"]
        print()
        print(f"PostgreSQL {p['postgres_version']}, loopback: {p['rows']:,} trade rows")
        print(f"{'writer':<58} {'rows/s':>11} {'ratio':>6}")
        print(f"{'TimescaleSink.write, ' + format(p['batch_rows'], ',') + '-row batches (fresh schema)':<58} "
              f"{p['sink_rows_per_s']:>11,.0f} {p['over_peer']:>6.2f}   target >={PG_TARGET} "
              + ("ok" if p["meets_target"] else "MISS"))
        print(f"{'bare binary COPY (bench/_pg_copy.py), one COPY':<58} {p['bare_copy_rows_per_s']:>11,.0f} {'1.00':>6}")
        print(f"{'(encoding alone, copy_binary of every row, in both)':<58} {p['encode_rows_per_s']:>11,.0f}")


if __name__ == "__main__":
    sys.exit(main())
