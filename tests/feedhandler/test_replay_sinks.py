"""``feedhandler replay`` with every sink on, against real servers and real WebSocket clients.

What these tests keep to:
- Nothing is mocked: a real ``redis-server`` (started here, see below), the PostgreSQL of ``pg_dsn``
  (a schema of our own, dropped afterwards), the project's WebSocket server on a free loopback port,
  and ``websockets`` clients reading it from their own threads.
- Redis keys are ``md:{venue}:...`` with ``venue`` from the venue registry (``nasdaq`` for an ITCH
  capture), so a replay cannot get a unique key prefix. Each test runs its own ``redis-server`` on a
  free port (``--save "" --appendonly no``) instead of sharing the one of ``redis_url``: concurrent
  runs cannot see each other's keys, and the restart test can kill its server.
- Expected values come from the capture itself: a ``BookEngine`` built over the capture's decoded
  events gives the final BBO and top N of every symbol; the decoded trades give the trade rows. The
  WebSocket ``seq`` (per channel and symbol, contiguous) is checked on every message received.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import redis
from psycopg import sql
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as sync_connect

from captures.generator import generate
from feedhandler.cli import main
from feedhandler.replay import DecodedCapture, replay
from feedhandler.sinks import build_runners, load_config
from orderbook.engine import BookEngine
from parsers.schema import PRICE_SCALE, UNDEF_PRICE
from publish.runner import SinkRunner
from publish.websocket_server import WebSocketServer

DEPTH = 10
CONFLATE = "1ms"
CONFLATE_NS = 1_000_000


# -- the capture and what it should produce ---------------------------------------------------------


class Reference:
    """What a capture holds, decoded independently of the replay under test: final books and trades."""

    def __init__(self, path: Path) -> None:
        source = DecodedCapture(path)
        engine = BookEngine(depth=DEPTH)
        trades = []
        stamps = []
        for batch in source.batches():
            engine.apply(batch.events)
            trades.append(batch.trades)
            if len(batch.events):
                stamps.append(batch.events["ts_recv"][[0, -1]])
        engine.finish()
        self.path = path
        self.engine = engine
        self.symbols: dict[int, str] = dict(source.normalizer.symbols)
        self.trades = np.concatenate(trades)
        self.first_recv = int(stamps[0][0])
        self.last_recv = int(stamps[-1][1])

    def bbo(self, iid: int) -> tuple:
        """(bid_px, bid_sz, ask_px, ask_sz) as Decimal or None, int."""
        bid_px, bid_sz, _, ask_px, ask_sz, _ = self.engine.bbo(iid)
        return (_dec(bid_px), bid_sz if bid_px != UNDEF_PRICE else 0,
                _dec(ask_px), ask_sz if ask_px != UNDEF_PRICE else 0)

    def top(self, iid: int) -> tuple[list, list]:
        bids, asks = self.engine.l2(iid, DEPTH)
        return ([[_dec(p), s, c] for p, s, c in bids], [[_dec(p), s, c] for p, s, c in asks])


def _dec(price: int) -> Decimal | None:
    return None if price == UNDEF_PRICE else Decimal(int(price)) / PRICE_SCALE


def _text_dec(text) -> Decimal | None:
    if text is None or text == "" or text == b"":
        return None
    return Decimal(text.decode() if isinstance(text, bytes) else text)


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Reference:
    path = tmp_path_factory.mktemp("replay_sinks") / "session.pcap"
    generate(messages=30_000, symbols=20, seed=11).write(path, "pcap")
    return Reference(path)


@pytest.fixture(scope="module")
def small_capture(tmp_path_factory) -> Reference:
    """For paced replays: a paced replay cuts the capture into 1 ms pieces, and each piece costs time
    in proportion to its batch (see ``feedhandler.pacing``), so pacing tests keep the capture small."""
    path = tmp_path_factory.mktemp("replay_sinks") / "small.pcap"
    generate(messages=5_000, symbols=20, seed=12).write(path, "pcap")
    return Reference(path)


@pytest.fixture
def pg_schema(pg_dsn, pg_conn, unique_name):
    yield unique_name
    pg_conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(unique_name)))


def assert_redis_bbo(capture: Reference, client: redis.Redis) -> None:
    """Every symbol's ``md:nasdaq:{symbol}:bbo:last`` equals the book engine's final BBO."""
    wrong = {}
    for iid, symbol in capture.symbols.items():
        h = client.hgetall(f"md:nasdaq:{symbol}:bbo:last")
        expected = capture.bbo(iid)
        got = (_text_dec(h.get("bid_px")), int(h.get("bid_sz", 0)), _text_dec(h.get("ask_px")),
               int(h.get("ask_sz", 0))) if h else None
        if got != expected and not (got is None and expected == (None, 0, None, 0)):
            wrong[symbol] = (got, expected)
    assert not wrong, f"Redis bbo:last differs from the book engine (got, expected): {wrong}"


# -- a WebSocket client that reads everything -------------------------------------------------------


class WsRecorder(threading.Thread):
    """A ``websockets`` client on its own thread and loop, subscribed to ``*``; keeps what arrived.

    Checks as it goes that ``seq`` rises by one per (channel, symbol), or by ``dropped + 1`` after a
    gap notice, and records every problem in ``errors``.
    """

    def __init__(self, url: str, channels=("bbo", "l2", "trades")) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.channels = list(channels)
        self.subscribed = threading.Event()
        self.pong = threading.Event()
        self.last: dict[tuple[str, str], dict] = {}
        self.seq: dict[tuple[str, str], int] = {}
        self.pending_gap: dict[tuple[str, str], int] = {}
        self.trades: list[dict] = []
        self.gaps: dict[str, int] = defaultdict(int)
        self.snapshots = 0
        self.errors: list[str] = []
        self.close_code: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            async with connect(self.url, max_size=None, compression=None) as ws:
                self._ws = ws
                await ws.send(json.dumps({"op": "subscribe", "channels": self.channels, "symbols": "*"}))
                async for raw in ws:  # ends quietly on a normal close (1000, 1001)
                    self._take(json.loads(raw))
                self.close_code = ws.close_code
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else None

    def _take(self, m: dict) -> None:
        kind = m["type"]
        if kind == "subscribed":
            self.subscribed.set()
            return
        if kind == "pong":
            self.pong.set()
            return
        if kind == "gap":
            key = (m["channel"], m["symbol"])
            self.pending_gap[key] = self.pending_gap.get(key, 0) + m["dropped"]
            self.gaps[m["channel"]] += m["dropped"]
            return
        channel = {"bbo": "bbo", "l2": "l2", "trade": "trades"}.get(kind)
        if channel is None:
            self.errors.append(f"unexpected message {m}")
            return
        key = (channel, m["symbol"])
        if m.get("snapshot"):
            self.snapshots += 1
        else:
            want = self.seq.get(key, 0) + 1 + self.pending_gap.pop(key, 0)
            if m["seq"] != want:
                self.errors.append(f"{key}: seq {m['seq']}, expected {want}")
        self.seq[key] = m["seq"]
        if channel == "trades":
            self.trades.append(m)
        else:
            self.last[key] = m

    def barrier(self, timeout: float = 10.0) -> None:
        """Ping and wait for the pong: everything the server queued before it has been read."""
        self.pong.clear()
        asyncio.run_coroutine_threadsafe(self._ws.send(json.dumps({"op": "ping"})), self._loop).result(timeout)
        assert self.pong.wait(timeout), "no pong from the WebSocket server"


def ws_port(runner, timeout: float = 20.0) -> int:
    """The port the runner's WebSocketServer bound (``listen = "...:0"``), once it is serving: in the
    sink's own process (``ProcessSinkRunner``) or on a thread of ours (``SinkRunner``)."""
    if hasattr(runner.sink, "wait_open"):
        assert runner.sink.wait_open(timeout), f"WebSocket server did not start: {runner.last_error}"
        return runner.sink.port
    deadline = time.monotonic() + timeout
    while runner.sink.port == 0 or runner.sink._loop is None:
        assert time.monotonic() < deadline, f"WebSocket server did not start: {runner.last_error}"
        time.sleep(0.01)
    return runner.sink.port


def wait_drained(runners, timeout: float = 30.0) -> None:
    """Wait until every batch offered to the runners was written, dropped or merged into another."""
    deadline = time.monotonic() + timeout
    while any(r.queued() or sum(r.counts[k] for k in ("written", "dropped_batches", "conflated")) < r.counts["offered"]
              for r in runners):
        assert time.monotonic() < deadline, {r.sink.name: dict(r.counts) for r in runners}
        time.sleep(0.01)


def write_config(path: Path, redis_url: str, pg_dsn: str, schema: str) -> Path:
    path.write_text(f"""
[replay]
conflate = "{CONFLATE}"
depth = {DEPTH}

[sinks.redis]
url = "{redis_url}"

[sinks.timescale]
dsn = "{pg_dsn}"
schema = "{schema}"

[sinks.websocket]
listen = "127.0.0.1:0"
""")
    return path


def pg_rows(conn, schema: str, query: str, *params):
    return conn.execute(sql.SQL(query).format(s=sql.Identifier(schema)), params).fetchall()


# -- every sink at once --------------------------------------------------------------------------------


def test_replay_with_every_sink_agrees_with_the_book_engine(capture, private_redis, pg_dsn, pg_conn, pg_schema,
                                                            tmp_path, capsys):
    """``replay(..., runners=build_runners(feedhandler.toml))`` with Redis, PostgreSQL and WebSocket on,
    a client subscribed to ``*`` before the replay; then the same replay again through the CLI."""
    config_path = write_config(tmp_path / "feedhandler.toml", private_redis.url, pg_dsn, pg_schema)
    config = load_config(str(config_path))
    runners = build_runners(config["sinks"], venue_depth=DEPTH)
    by_name = {r.sink.name: r for r in runners}
    try:
        client = WsRecorder(f"ws://127.0.0.1:{ws_port(by_name['websocket'])}")
        client.start()
        assert client.subscribed.wait(10), "no 'subscribed' from the WebSocket server"
        summary = replay(capture.path, None, depth=DEPTH, conflate_ns=CONFLATE_NS, runners=runners)
        wait_drained(runners)
        client.barrier()
    finally:
        reports = {r.sink.name: r.stop(10.0) for r in runners}
    client.join(10)

    # Nothing lost on the way, nothing failed.
    trades_n = len(capture.trades)
    assert summary.rows["trades"] == trades_n > 500
    for name, report in reports.items():
        assert report["written"] == report["offered"] >= 2, (name, report)
        for bad in ("failures", "dropped_batches", "dropped_rows"):
            assert bad not in report, (name, report)
    assert reports["redis"]["redis_stream_entries"] == trades_n

    # Redis: the latest-state hash of every symbol is the engine's final BBO; the stream has every trade.
    r = private_redis.client(decode_responses=True)
    assert_redis_bbo(capture, r)
    assert r.xlen("md:nasdaq:trades") == trades_n
    for iid, symbol in capture.symbols.items():
        last = json.loads(r.get(f"md:nasdaq:{symbol}:l2:last") or "null")
        assert last is not None, symbol
        assert ([[_text_dec(p), s, c] for p, s, c in last["bids"]],
                [[_text_dec(p), s, c] for p, s, c in last["asks"]]) == capture.top(iid), symbol

    # WebSocket: the last bbo and l2 the client got are the engine's final state; seq had no holes
    # other than announced gaps; every trade arrived (or was announced lost).
    assert client.close_code == 1001  # the runner's stop closed it: "going away"
    assert client.errors == []
    assert client.snapshots == 0  # subscribed before anything was published
    for iid, symbol in capture.symbols.items():
        bbo = client.last[("bbo", symbol)]
        assert (_text_dec(bbo["bid_px"]), bbo["bid_sz"], _text_dec(bbo["ask_px"]), bbo["ask_sz"]) == capture.bbo(iid)
        l2 = client.last[("l2", symbol)]
        assert ([[_text_dec(p), s, c] for p, s, c in l2["bids"]],
                [[_text_dec(p), s, c] for p, s, c in l2["asks"]]) == capture.top(iid), symbol
    assert len(client.trades) + client.gaps["trades"] == trades_n
    if not client.gaps["trades"]:
        got = sorted((t["match_id"], _text_dec(t["px"]), t["sz"], t["symbol"]) for t in client.trades)
        want = sorted((int(m), _dec(p), int(s), capture.symbols[int(i)]) for m, p, s, i in zip(
            capture.trades["match_id"], capture.trades["price"], capture.trades["size"],
            capture.trades["instrument_id"]))
        assert got == want

    # PostgreSQL: every trade row (printable or not: the sink stores all), exactly; the BBO rows the
    # pipeline made, the last per instrument equal to the engine's; status and the directory.
    got = pg_rows(pg_conn, pg_schema, "SELECT match_id, price, size, printable, symbol, ts_event_ns FROM {s}.trades "
                  "ORDER BY match_id, ts_event_ns")
    want = sorted((int(m), _dec(p), int(s), bool(pr), capture.symbols[int(i)], int(t)) for m, p, s, pr, i, t in zip(
        capture.trades["match_id"], capture.trades["price"], capture.trades["size"], capture.trades["printable"],
        capture.trades["instrument_id"], capture.trades["ts_event"]))
    assert [(int(m), p, s, pr, sym, t) for m, p, s, pr, sym, t in got] == want
    assert pg_rows(pg_conn, pg_schema, "SELECT count(*) FROM {s}.bbo")[0][0] == summary.rows["bbo"] > 0
    final = pg_rows(pg_conn, pg_schema, "SELECT DISTINCT ON (instrument_id) instrument_id, bid_px, bid_sz, ask_px, "
                    "ask_sz FROM {s}.bbo ORDER BY instrument_id, ts_event_ns DESC, sequence DESC")
    assert {iid: (b, bs if b is not None else 0, a, az if a is not None else 0) for iid, b, bs, a, az in final} == \
        {iid: capture.bbo(iid) for iid in capture.symbols}
    assert pg_rows(pg_conn, pg_schema, "SELECT count(*) FROM {s}.status")[0][0] == summary.rows["status"]
    assert dict(pg_rows(pg_conn, pg_schema, "SELECT instrument_id, symbol FROM {s}.instruments")) == capture.symbols
    counts = {t: pg_rows(pg_conn, pg_schema, f"SELECT count(*) FROM {{s}}.{t}")[0][0]
              for t in ("trades", "bbo", "status", "ohlcv_1s", "ohlcv_1m", "ohlcv_1h", "ohlcv_1d", "instruments")}

    # The same replay again, through the command line and the same feedhandler.toml: no new rows.
    capsys.readouterr()
    assert main(["replay", str(capture.path), "--sink", "null", "--config", str(config_path), "--linger", "0",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["rows"] == summary.rows
    ts = again["sinks"]["timescale"]
    assert ts["timescale_duplicates_trades"] == trades_n and "timescale_rows_trades" not in ts
    assert ts["timescale_duplicates_bbo"] == summary.rows["bbo"]
    assert {t: pg_rows(pg_conn, pg_schema, f"SELECT count(*) FROM {{s}}.{t}")[0][0] for t in counts} == counts
    assert_redis_bbo(capture, r)
    r.close()


# -- Redis killed and restarted in the middle of a replay --------------------------------------------


def test_redis_restart_mid_replay_is_survived_and_reported(small_capture, private_redis, capsys):
    """``feedhandler replay --redis URL --speed N``; Redis is killed once the replay is a third of the
    way through the capture's clock and restarted 0.8 s later on the same port.

    Batches that fail are retried after the reconnect and the queue conflates meanwhile, so every
    update from the kill on reaches the new server; every symbol of this capture updates its BBO
    after 70% of the capture's span, so every ``bbo:last`` key must be back, with the final BBO.
    """
    capture = small_capture
    span_s = (capture.last_recv - capture.first_recv) / 1e9
    speed = span_s / 4.0  # a 4 s replay
    # Kill once a published BBO is a third of the way into the capture (capture time = pcap time).
    kill_at = capture.first_recv + (capture.last_recv - capture.first_recv) // 3
    events: dict[str, float] = {}

    def killer():
        watch = private_redis.client(decode_responses=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stamps = [int(v) for v in (watch.hget(k, "ts_recv") for k in watch.scan_iter("md:nasdaq:*:bbo:last"))
                      if v]
            if stamps and max(stamps) >= kill_at:
                break
            time.sleep(0.01)
        watch.close()
        events["killed"] = time.monotonic()
        private_redis.kill()
        time.sleep(0.8)
        private_redis.start()
        events["restarted"] = time.monotonic()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    started = time.monotonic()
    code = main(["replay", str(capture.path), "--sink", "null", "--redis", private_redis.url, "--speed", f"{speed:.3f}",
                 "--conflate", CONFLATE, "--depth", str(DEPTH), "--drain", "15", "--json"])
    ended = time.monotonic()
    thread.join(5)
    assert code == 0
    assert started < events["killed"] < events["restarted"] < ended, "the kill did not fall inside the replay"
    report = json.loads(capsys.readouterr().out)["sinks"]["redis"]
    # Counted: at least the failed write and the refused reconnects; one restart; the publisher reconnected.
    assert report["failures"] >= 2, report
    assert report["restarts"] >= 1, report
    assert report["redis_reconnects"] >= 1, report
    # The batch that failed was retried once Redis was back, and the queue conflated meanwhile: no loss.
    assert "dropped_batches" not in report and report["written"] + report.get("conflated", 0) == report["offered"], report
    # What Redis held was lost with it; every symbol updated after the restart, so every key is back
    # and right.
    client = private_redis.client(decode_responses=True)
    assert_redis_bbo(capture, client)
    # The stream lost what was written before the kill (no persistence): fewer than all trades.
    assert 0 < client.xlen("md:nasdaq:trades") < len(capture.trades)
    client.close()


# -- a WebSocket client that stops reading --------------------------------------------------------------


def ws_applied(runner: SinkRunner, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """Wait until the server's loop applied every batch written to it; its clients' (queued, parked)."""
    wait_drained([runner], timeout)
    server = runner.sink
    deadline = time.monotonic() + timeout
    while server.counters["batches"] + server.counters["batches_conflated"] < runner.counts["written"]:
        assert time.monotonic() < deadline, (server.counters, runner.counts)
        time.sleep(0.01)
    return server.client_queues()  # a round trip through the loop: its counters are synced


def _timed_replay(capture: Reference, runner: SinkRunner, **options) -> float:
    summary = replay(capture.path, None, depth=DEPTH, conflate_ns=0, runners=[runner], **options)
    ws_applied(runner)
    return summary.seconds


def test_websocket_client_that_stops_reading_does_not_slow_the_replay(capture, small_capture):
    """Replay through one WebSocket server with no client, then with a client subscribed to everything
    that never reads (4 KiB receive buffer, websockets' own buffer of one message): the replay is not
    slower beyond noise, the client was gapped (its updates conflated, trades dropped), the server's
    queue for it stayed bounded, and once more updates find its queue full for ``stuck_s`` it is
    disconnected."""
    server = WebSocketServer("127.0.0.1", 0, max_queue=256, stuck_s=0.5)
    runner = SinkRunner(server)
    try:
        port = ws_port(runner)
        _timed_replay(capture, runner)  # warm-up: numba's cache, the hub's state
        alone = min(_timed_replay(capture, runner) for _ in range(3))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        with sync_connect(f"ws://127.0.0.1:{port}", sock=sock, max_queue=1, compression=None,
                          close_timeout=0.5, ping_interval=None) as slow:  # its own keepalive would end it first
            slow.send(json.dumps({"op": "subscribe", "channels": ["bbo", "l2", "trades"], "symbols": "*"}))
            assert json.loads(slow.recv(5))["type"] == "subscribed"  # the last thing it ever reads
            with_slow = [_timed_replay(capture, runner) for _ in range(3)]
            queues = server.client_queues()
            gapped = dict(server.counters)
            # Keep updates coming (a paced replay: many small batches, each waking the server's writer)
            # until the server's socket buffer (TCP autotuning grows it to tcp_wmem's maximum, 4 MiB
            # here) is full: then the writer blocks, the client's queue stays full, and it is stuck.
            span_s = (small_capture.last_recv - small_capture.first_recv) / 1e9
            deadline = time.monotonic() + 30
            while server.counters["disconnects_slow"] == 0 and time.monotonic() < deadline:
                _timed_replay(small_capture, runner, speed=span_s / 0.5)
            counters = dict(server.counters)
    finally:
        runner.stop(5.0)
    assert min(with_slow) < 1.5 * alone + 0.1, (with_slow, alone)
    # ``dropped``: updates conflated or dropped for it (``gaps`` counts notices sent, and it reads none).
    assert gapped["clients"] == 1 and gapped["dropped"] > 1000, gapped
    assert all(queued <= 256 for queued, _ in queues.values()), queues
    assert counters["disconnects_slow"] == 1 and counters["clients"] == 0, counters
    assert runner.counts["written"] + runner.counts["conflated"] == runner.counts["offered"], runner.counts
    assert not runner.counts["dropped_batches"], runner.counts


def test_a_client_that_stops_reading_a_server_in_its_own_process_does_not_slow_the_replay(capture, small_capture):
    """The same, with the server where ``feedhandler replay --ws`` puts it: in a sink process of its own
    (``build_runners``). Its counters come back through the runner's report."""
    (runner,) = build_runners({"websocket": {"listen": "127.0.0.1:0", "max_queue": 256, "stuck_s": 0.5}},
                              venue_depth=DEPTH)

    def timed(path, **options) -> float:
        return replay(path, None, depth=DEPTH, conflate_ns=0, runners=[runner], **options).seconds

    try:
        port = ws_port(runner)
        timed(capture.path)  # warm-up
        alone = min(timed(capture.path) for _ in range(3))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        with sync_connect(f"ws://127.0.0.1:{port}", sock=sock, max_queue=1, compression=None,
                          close_timeout=0.5, ping_interval=None) as slow:  # its own keepalive would end it first
            slow.send(json.dumps({"op": "subscribe", "channels": ["bbo", "l2", "trades"], "symbols": "*"}))
            assert json.loads(slow.recv(5))["type"] == "subscribed"  # the last thing it ever reads
            with_slow = [timed(capture.path) for _ in range(3)]
            span_s = (small_capture.last_recv - small_capture.first_recv) / 1e9
            deadline = time.monotonic() + 30
            while runner.sink.counters.get("disconnects_slow", 0) == 0 and time.monotonic() < deadline:
                timed(small_capture.path, speed=span_s / 0.5)
            deadline = time.monotonic() + 10  # the child publishes its counters every 50 ms or so
            while runner.sink.counters.get("clients") != 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            counters = runner.sink.counters
    finally:
        report = runner.stop(10.0)
    assert min(with_slow) < 1.5 * alone + 0.1, (with_slow, alone)
    assert counters["dropped"] > 1000 and counters["disconnects_slow"] == 1 and counters["clients"] == 0, counters
    assert report["written"] + report.get("conflated", 0) == report["offered"] and "dropped_batches" not in report
    assert report["websocket_disconnects_slow"] == 1


# -- pacing ----------------------------------------------------------------------------------------


def test_a_paced_replay_emits_a_quiet_conflation_window_when_it_ends(small_capture, monkeypatch):
    """At ``--speed N`` with ``--conflate``, a window no packet follows is emitted once it is over (as a
    live handler's idle flush does), not held until the next packet: every BBO row reaches the sinks
    within two windows of the capture time the pacer has released; the final state is the engine's."""
    import feedhandler.replay as fr

    conflate_ns = 50_000_000
    released: list[int] = []

    class RecordingPacer(fr.Pacer):
        def wait_until(self, capture_ns: int) -> None:
            super().wait_until(capture_ns)
            released.append(capture_ns)

    class Offers:  # what the replay hands its runners, and when (in capture time)
        sink = type("Sink", (), {"name": "offers"})()

        def __init__(self) -> None:
            self.seen: list[tuple[int, object]] = []

        def offer(self, batch) -> None:
            self.seen.append((released[-1] if released else 0, batch))

    monkeypatch.setattr(fr, "Pacer", RecordingPacer)
    offers = Offers()
    span_s = (small_capture.last_recv - small_capture.first_recv) / 1e9
    replay(small_capture.path, None, depth=DEPTH, conflate_ns=conflate_ns, speed=span_s / 1.0, runners=[offers])
    late = [(at - int(b.bbo["ts_recv"].min())) / 1e6 for at, b in offers.seen[:-1] if len(b.bbo)]
    assert len(late) > 100 and max(late) <= 2 * conflate_ns / 1e6, max(late)  # ms behind the released time
    last = {}
    for _, b in offers.seen:
        for row in b.bbo:
            last[int(row["instrument_id"])] = (int(row["bid_px"]), int(row["bid_sz"]), int(row["ask_px"]),
                                               int(row["ask_sz"]))
    engine = small_capture.engine
    assert last == {i: (lambda q: (q[0], q[1], q[3], q[4]))(engine.bbo(i)) for i in small_capture.symbols}


def test_speed_paces_a_replay_by_the_capture_clock(small_capture):
    """``speed=N`` takes about (last - first receive time) / N of wall time, not much less or more.

    The generated day spans 17 hours of capture time, so N is about 40,000 here (1.5 s of wall time).
    """
    span_s = (small_capture.last_recv - small_capture.first_recv) / 1e9
    speed = span_s / 1.5
    summary = replay(small_capture.path, None, depth=DEPTH, speed=speed)
    assert 1.5 * 0.97 <= summary.seconds <= 1.5 + 0.5, summary.seconds
    assert summary.messages == 5_000
