"""The ``feedhandler`` command line. Every verb has ``--help`` with an example.

Errors a user can fix print one line (``feedhandler: error: ...``) and exit 2; nothing prints a
traceback unless ``FEEDHANDLER_DEBUG=1``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import threading

from feedhandler.replay import (COMPRESSIONS, DEFAULT_COMPRESSION, DecodedCapture, ReplayError, ReplaySummary,
                                replay, wants_progress)
from feedhandler.times import parse_at, parse_duration
from parsers.venues import VENUES_BY_NAME


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _depth(text: str) -> int:
    value = _positive_int(text)
    if value > 255:
        raise argparse.ArgumentTypeError(f"depth must be at most 255: {text!r}")
    return value


def _add_capture_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("capture", help="pcap, pcapng or Nasdaq BinaryFILE (plain or gzip); the format is read from the bytes")
    p.add_argument("--date", type=_date, help="session date YYYY-MM-DD (default: from the capture's timestamps)")
    p.add_argument("--venue", default="nasdaq", choices=sorted(VENUES_BY_NAME), help="venue of the feed (default nasdaq)")
    p.add_argument("--port", type=int, dest="udp_port", help="only UDP packets to this destination port")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedhandler", description="Market-data feed handler: decode, normalize, publish.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser(
        "replay", help="decode a capture and write normalized Parquet files",
        description="Decode a whole capture into the common schema and write one Parquet file per record kind "
        "(events, trades, status, definitions, imbalance, ...) under --out.",
        epilog="example: feedhandler replay captures/nasdaq-sample.pcap --out out",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_capture_args(p)
    p.add_argument("--out", default="out", help="output directory (default ./out)")
    p.add_argument("--sink", choices=["parquet", "null"], default="parquet",
                   help="parquet (default) or null: decode and build every book, write nothing")
    p.add_argument("--conflate", type=_duration, metavar="DURATION",
                   help="BBO/L2 conflation window per instrument: 0 (every update, default), 500us, 1ms, 100ms ...")
    p.add_argument("--depth", type=_depth, help="levels per side in l2.parquet and published depth (default 10)")
    p.add_argument("--compression", choices=COMPRESSIONS,
                   help=f"Parquet codec (default {DEFAULT_COMPRESSION}; zstd makes smaller files and writes slower)")
    p.add_argument("--redis", metavar="URL", help="publish to Redis, e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--timescale", metavar="DSN", help="write to TimescaleDB/PostgreSQL, e.g. postgresql://user@host/db")
    p.add_argument("--ws", metavar="HOST:PORT", help="serve a WebSocket feed, e.g. 127.0.0.1:8765")
    p.add_argument("--speed", metavar="1|N|max", help="1: the capture's own pace; N: N times faster; max (default)")
    p.add_argument("--linger", type=float, metavar="SECONDS",
                   help="with --ws: keep serving this long after the replay (default: until interrupted)")
    p.add_argument("--drain", type=float, default=5.0, metavar="SECONDS",
                   help="at the end or on SIGINT/SIGTERM, wait this long for sinks to drain (default 5)")
    p.add_argument("--config", metavar="PATH", help="feedhandler.toml with [replay] and [sinks.*] (default ./feedhandler.toml if present)")
    p.set_defaults(run=_run_replay)

    p = verbs.add_parser(
        "book", help="print one symbol's L2 book at the end of a capture or at a time",
        description="Replay a capture up to a time (every message stamped at or before it) and print the L2 book "
        "of one symbol: price, total size and order count per level, best first.",
        epilog="examples:\n  feedhandler book captures/nasdaq-sample.pcap --symbol AAPL --depth 5\n"
        "  feedhandler book captures/nasdaq-sample.pcap --symbol AAPL --at 10:30:00 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_capture_args(p)
    p.add_argument("--symbol", required=True, help="venue symbol, e.g. AAPL")
    p.add_argument("--at", metavar="TIME", help="HH:MM:SS[.fffffffff] in venue local time, or ISO 8601 (default: end)")
    p.add_argument("--depth", type=_depth, default=10, help="levels per side (default 10)")
    p.set_defaults(run=_run_book)

    p = verbs.add_parser(
        "stats", help="count what a capture holds",
        description="Frame and decode a capture and print its counts: messages, packets, types, sessions, gaps, anomalies.",
        epilog="example: feedhandler stats captures/nasdaq-sample.pcap --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_capture_args(p)
    p.set_defaults(run=_run_stats)

    p = verbs.add_parser(
        "generate", help="write a synthetic, internally consistent ITCH 5.0 session",
        description="Generate a seeded ITCH 5.0 trading day (directory, order flow, crosses, halts, ...) as a "
        "MoldUDP64 pcap or a Nasdaq BinaryFILE.",
        epilog="example: feedhandler generate session.pcap --messages 1000000 --symbols 500 --seed 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="file to write")
    p.add_argument("--messages", type=_positive_int, default=100_000, help="number of messages (default 100000)")
    p.add_argument("--symbols", type=_positive_int, default=100, help="number of symbols (default 100)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--format", choices=["pcap", "itch"], default="pcap", help="pcap (MoldUDP64) or itch (BinaryFILE)")
    p.add_argument("--date", type=_date, default=dt.date(2024, 3, 15), help="session date (default 2024-03-15)")
    p.add_argument("--no-dlcr", action="store_true", help="leave out DLCR price discovery (O) messages")
    p.add_argument("--gzip", action="store_true", help="gzip a BinaryFILE")
    p.set_defaults(run=_run_generate)

    p = verbs.add_parser(
        "send", help="send a capture to multicast as MoldUDP64, on one or two lines, like tcpreplay",
        description="Send a capture's MoldUDP64 packets (a pcap's as captured; a BinaryFILE packed into "
        "MoldUDP64) to a multicast group, paced by the capture's timestamps, optionally as a second (B) line "
        "with its own induced drops, and answer MoldUDP64 re-requests for it on loopback.",
        epilog="example: feedhandler send session.pcap --group 239.1.1.1:26400 --b-group 239.1.1.2:26400 "
        "--speed 10 --drop-rate 0.01 --rerequest-port 26500",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("capture", help="pcap, pcapng or Nasdaq BinaryFILE (plain or gzip)")
    p.add_argument("--group", required=True, metavar="GROUP:PORT", help="line A multicast group, e.g. 239.1.1.1:26400")
    p.add_argument("--b-group", metavar="GROUP:PORT", help="also send every packet as line B to this group")
    p.add_argument("--speed", default="1", metavar="1|N|max", help="1: the capture's pace (default); N: N times faster; max")
    p.add_argument("--drop-rate", type=float, default=0.0, metavar="P",
                   help="drop each packet with probability P, independently per line (default 0)")
    p.add_argument("--seed", type=int, default=1, help="seed of the induced drops (default 1)")
    p.add_argument("--iface", metavar="IF", help="send from this interface (default: the route's)")
    p.add_argument("--ttl", type=int, default=1, help="multicast TTL (default 1: this link only)")
    p.add_argument("--rerequest-port", type=int, metavar="PORT",
                   help="answer MoldUDP64 re-requests for the capture on 127.0.0.1:PORT while sending")
    p.add_argument("--linger", type=float, default=0.0, metavar="SECONDS",
                   help="with --rerequest-port: keep answering this long after the last packet (default 0)")
    p.set_defaults(run=_run_send)

    p = verbs.add_parser(
        "live", help="receive a feed live (lines A/B, recovery), build books, publish, serve counters",
        description="Receive one feed partition live: line A (and B) from multicast sockets, AF_PACKET, AF_XDP or a "
        "shared-memory ring, arbitrated with MoldUDP64 re-requests, decoded into books and published to the "
        "configured sinks. Counters: /metrics (Prometheus) and /status (JSON) on the metrics port, and "
        "`feedhandler status`. SIGINT/SIGTERM stop it: the sinks drain within --drain and the counts are printed.",
        epilog="example: feedhandler live --group 239.1.1.1:26400 --b-group 239.1.1.2:26400 --iface eth1 "
        "--rerequest 10.0.0.5:26500 --redis redis://127.0.0.1:6379/0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH", help="feedhandler.toml with [live], [live.lines.A/B] and [sinks.*] "
                   "(default ./feedhandler.toml if present)")
    p.add_argument("--venue", choices=sorted(VENUES_BY_NAME), help="venue of the feed (default nasdaq)")
    p.add_argument("--group", metavar="G:P", help="line A multicast group and port, e.g. 239.1.1.1:26400")
    p.add_argument("--b-group", metavar="G:P", help="line B multicast group and port")
    p.add_argument("--iface", metavar="IF", help="interface the lines arrive on")
    p.add_argument("--source", choices=["socket", "afpacket", "afxdp", "shm"], help="packet source (default socket)")
    p.add_argument("--shm-path", metavar="PATH", help="with --source shm: the ring file (e.g. /dev/shm/feed)")
    p.add_argument("--rerequest", metavar="HOST:PORT", help="the venue's MoldUDP64 re-request server")
    p.add_argument("--redis", metavar="URL", help="publish to Redis, e.g. redis://127.0.0.1:6379/0")
    p.add_argument("--timescale", metavar="DSN", help="write to TimescaleDB/PostgreSQL")
    p.add_argument("--ws", metavar="HOST:PORT", help="serve a WebSocket feed, e.g. 127.0.0.1:8765")
    p.add_argument("--out", metavar="DIR", help="also write bbo, l2, trades and status Parquet files under DIR")
    p.add_argument("--metrics-port", type=int, metavar="N", help="port of /metrics and /status (default 9108; 0: any)")
    p.add_argument("--date", type=_date, help="session date YYYY-MM-DD (default: from the first packet's time)")
    p.add_argument("--depth", type=_depth, help="levels per side of the published depth (default 10)")
    p.add_argument("--conflate", metavar="DURATION", help="BBO/L2 conflation window: 0 (default), 500us, 1ms ...")
    p.add_argument("--expect-from", type=_positive_int, metavar="SEQ",
                   help="first sequence of the session (1: recover from the start when joining late)")
    p.add_argument("--netns", metavar="NAME", help="open the feed's sockets in this network namespace (ip netns)")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long (default: at a signal)")
    p.add_argument("--drain", metavar="DURATION", help="on stop, wait this long for the sinks to drain (default 5s)")
    p.add_argument("--status-file", metavar="PATH", help="also write the status JSON there at every snapshot")
    p.add_argument("--busy-poll", action="store_true", help="spin on the sources instead of sleeping (one core)")
    p.add_argument("--cpu", type=int, metavar="N", help="run the feed loop on CPU N only (pair with --realtime)")
    p.add_argument("--realtime", type=int, metavar="PRIO",
                   help="run the feed loop as a SCHED_FIFO task of this priority (1..99; needs root/CAP_SYS_NICE)")
    p.add_argument("--json", action="store_true", help="print the final counters as one JSON object")
    p.set_defaults(run=_run_live)

    p = verbs.add_parser(
        "status", help="print the counters of a running `feedhandler live`",
        description="Read /status of a running live handler (or its status file) and print its counters per line, "
        "recovery, books, latency and sinks.",
        epilog="example: feedhandler status --url http://127.0.0.1:9108",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:9108", help="the handler's metrics endpoint (default "
                   "http://127.0.0.1:9108)")
    p.add_argument("--file", metavar="PATH", help="read this status file instead of the URL")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")
    p.set_defaults(run=_run_status)

    p = verbs.add_parser(
        "backtest", help="run a strategy's orders against a capture through the matching and risk core",
        description="Replay a capture through the books and the trading engine, injecting each order of ORDERS.jsonl "
        "at its timestamp (it sees every feed message stamped at or before it), and write fills.jsonl, "
        "rejects.jsonl, events.jsonl, positions.json and summary.json (P&L per account) under --out. "
        "Formats: docs/orders.md.",
        epilog="examples:\n  feedhandler backtest captures/nasdaq-sample.pcap --orders examples/orders.jsonl "
        "--accounts examples/accounts.toml --out out/backtest\n"
        "  feedhandler backtest day.itch --date 2024-03-15 --orders orders.jsonl --out bt --mark last --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_capture_args(p)
    p.add_argument("--orders", required=True, metavar="ORDERS.jsonl", help="one order, cancel or modify per line")
    p.add_argument("--accounts", metavar="ACCOUNTS.toml",
                   help="[accounts.NAME] tables: cash, margin, limits, suspended, fees (default: $1M cash each)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--mark", choices=["mid", "last"], default="mid",
                   help="value open positions at the mid (default) or the last printed price")
    p.add_argument("--wal", metavar="DIR", help="also write the engine's write-ahead log there (an empty directory)")
    p.set_defaults(run=_run_backtest)
    return parser


def _run_replay(args) -> int:
    from feedhandler.pacing import parse_speed
    from feedhandler.sinks import ConfigError, build_runners, load_config

    try:
        config = load_config(args.config)
        settings = config.get("replay", {})
        conflate = args.conflate if args.conflate is not None else parse_duration(str(settings.get("conflate", "0")))
        depth = args.depth if args.depth is not None else int(settings.get("depth", 10))
        compression = args.compression or str(settings.get("compression", DEFAULT_COMPRESSION))
        if compression not in COMPRESSIONS:
            raise ValueError(f"[replay] compression = {compression!r}: one of {', '.join(COMPRESSIONS)}")
        speed = parse_speed(args.speed if args.speed is not None else str(settings.get("speed", "max")))
        sinks = {name: dict(conf) for name, conf in config.get("sinks", {}).items()}
    except (ConfigError, ValueError) as exc:
        raise UserError(str(exc)) from None
    for name, key, value in (("redis", "url", args.redis), ("timescale", "dsn", args.timescale),
                             ("websocket", "listen", args.ws)):
        if value:
            sinks.setdefault(name, {})[key] = value
    out = None if args.sink == "null" else args.out
    stop = threading.Event()
    with _stop_on_signals(stop):
        try:
            runners = build_runners(sinks, venue_depth=depth, full_speed=speed is None)
        except (ConfigError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"sink settings: {exc}") from None
        try:
            summary = replay(args.capture, out, date=args.date, venue=args.venue, udp_port=args.udp_port,
                             progress=not args.json and wants_progress(sys.stderr), depth=depth,
                             conflate_ns=conflate, runners=runners, speed=speed, stop=stop, compression=compression)
            if "websocket" in sinks and not stop.is_set():
                ws = next(r for r in runners if r.sink.name == "websocket")
                print(f"serving ws://{ws.sink.host}:{ws.sink.port} "
                      + (f"for {args.linger:g} s" if args.linger is not None else "until interrupted"),
                      file=sys.stderr)
                stop.wait(args.linger)
        finally:
            reports = {r.sink.name: r.stop(args.drain) for r in runners}
    summary.sinks = reports
    _print_summary(summary, args.json)
    return 130 if summary.interrupted else 0


class _stop_on_signals:
    """SIGINT/SIGTERM set ``stop`` (the replay ends and sinks drain); a second one interrupts at once."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _run_stats(args) -> int:
    summary = replay(args.capture, None, date=args.date, venue=args.venue, udp_port=args.udp_port,
                     progress=not args.json and wants_progress(sys.stderr), books=False)
    _print_summary(summary, args.json)
    return 0


def _run_book(args) -> int:
    from feedhandler.book import book_at

    source = DecodedCapture(args.capture, args.date, args.venue, args.udp_port)
    at = None
    if args.at is not None:
        at = _AtTime(args.at)
    result = book_at(source, args.symbol, depth=args.depth, at=at)
    if args.json:
        print(json.dumps(result.as_json(), separators=(",", ":")))
    else:
        print(result.as_text())
    return 0


class _AtTime:
    """``--at`` text, read once the session date (and so the venue clock) is known."""

    def __init__(self, text: str) -> None:
        self.text = text

    def epoch_ns(self, clock) -> int:
        try:
            return parse_at(self.text, clock)
        except ValueError as exc:
            raise UserError(str(exc)) from None


def _run_generate(args) -> int:
    from captures.generator import generate

    session = generate(messages=args.messages, symbols=args.symbols, seed=args.seed, date=args.date,
                       dlcr=not args.no_dlcr)
    if args.gzip and args.format != "itch":
        raise UserError("--gzip applies to --format itch (BinaryFILE) only")
    options = {"gzip": True} if args.gzip else {}
    try:
        written = session.write(args.out, fmt=args.format, **options)
    except OSError as exc:
        raise UserError(f"cannot write {args.out}: {exc.strerror}") from None
    print(f"wrote {written.messages:,} messages, {args.symbols} symbols, seed {args.seed} -> {args.out}")
    return 0


def _run_send(args) -> int:
    from feedhandler.sender import SendError, send_from_args

    try:
        summary = send_from_args(args)
    except SendError as exc:
        raise UserError(str(exc)) from None
    print(summary.as_text())
    return 130 if summary.interrupted else 0


def _run_live(args) -> int:
    from feedhandler.live import LiveError, run_live
    from feedhandler.live_config import live_config
    from feedhandler.metrics import format_status
    from feedhandler.sinks import ConfigError, load_config

    overrides = {"venue": args.venue, "group": args.group, "b_group": args.b_group, "iface": args.iface,
                 "source": args.source, "shm_path": args.shm_path, "rerequest": args.rerequest, "redis": args.redis,
                 "timescale": args.timescale, "ws": args.ws, "out": args.out, "metrics_port": args.metrics_port,
                 "date": args.date.isoformat() if args.date else None, "depth": args.depth, "conflate": args.conflate,
                 "expect_from": args.expect_from, "netns": args.netns, "drain": args.drain,
                 "status_file": args.status_file, "busy_poll": True if args.busy_poll else None,
                 "cpu": args.cpu, "realtime": args.realtime}
    try:
        cfg = live_config(load_config(args.config), overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None

    def ready(handler) -> None:
        where = f", counters at {handler.metrics.url}/metrics" if handler.metrics is not None else ""
        lines = ", ".join(f"{ln.name} {ln.address}" for ln in cfg.lines)
        print(f"feedhandler live: {cfg.venue} lines {lines} ({cfg.source}){where}", file=sys.stderr, flush=True)

    stop = threading.Event()
    with _stop_on_signals(stop):
        try:
            final = run_live(cfg, stop, duration_s=args.duration, on_ready=ready)
        except LiveError as exc:
            raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(final, separators=(",", ":")))
    else:
        print(format_status(final))
    return 0


def _run_backtest(args) -> int:
    from feedhandler.backtest import BacktestError, backtest

    try:
        result = backtest(args.capture, args.orders, args.out, accounts=args.accounts, date=args.date,
                          mark=args.mark, wal_dir=args.wal, venue=args.venue, udp_port=args.udp_port)
    except BacktestError as exc:
        raise UserError(str(exc)) from None
    print(json.dumps(result.as_json(), separators=(",", ":")) if args.json else result.as_text())
    return 0


def _run_status(args) -> int:
    from feedhandler.metrics import MetricsError, fetch_status, format_status, read_status_file

    try:
        snap = read_status_file(args.file) if args.file else fetch_status(args.url)
    except MetricsError as exc:
        raise UserError(str(exc)) from None
    print(json.dumps(snap, separators=(",", ":")) if args.json else format_status(snap))
    return 0


def _print_summary(s: ReplaySummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(s.as_json(), separators=(",", ":")))
        return
    print(f"{s.capture}: {s.format}, venue {s.venue}, session date {s.date}")
    print(f"  messages     {s.messages:>14,}   packets {s.packets:,}")
    print(f"  instruments  {s.instruments:>14,}   sessions {', '.join(s.sessions) or '-'}")
    print("  by type      " + " ".join(f"{k}:{v:,}" for k, v in s.by_type.items()))
    gaps = sum(g["count"] for g in s.gaps)
    print(f"  gaps         {len(s.gaps):>14,}   ({gaps:,} messages missing)")
    anomalies = ", ".join(f"{k} {v:,}" for k, v in s.anomalies.items()) or "none"
    print(f"  anomalies    {anomalies}")
    if s.integrity or s.resting_orders:
        integrity = ", ".join(f"{k} {v:,}" for k, v in s.integrity.items()) or "none"
        print(f"  books        {s.resting_orders:,} orders resting at the end; integrity: {integrity}")
    for name, counts in s.sinks.items():
        print(f"  sink {name:<8}" + (", ".join(f"{k} {v:,}" for k, v in counts.items()) or "nothing sent"))
    if s.interrupted:
        print("  interrupted: everything decoded before the signal was written")
    if s.out:
        print("  wrote        " + ", ".join(f"{k} {v:,}" for k, v in s.rows.items() if v) + f" rows under {s.out}/")
    print(f"  time         {s.seconds:.3f} s   {s.msgs_per_s:,.0f} messages/s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UserError, ReplayError) as exc:
        print(f"feedhandler: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("feedhandler: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for the user; FEEDHANDLER_DEBUG=1 shows it
        if os.environ.get("FEEDHANDLER_DEBUG"):
            raise
        print(f"feedhandler: error: {type(exc).__name__}: {exc} (set FEEDHANDLER_DEBUG=1 for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
