"""The live handler end to end, across a veth pair between two network namespaces.

What these tests keep to:
- Real everything: `feedhandler send` (the CLI, in namespace a) sends a generated ITCH day on lines A
  and B with 1% induced drops on each, drawn with a seed for which some packets are lost on BOTH
  lines; a ``RerequestServer`` in namespace a (on the veth address: the sender's own server answers
  on its loopback only) fills those holes; the handler receives in namespace b on multicast sockets.
- The expected books come from the capture itself, decoded by ``feedhandler.replay.DecodedCapture``
  (what ``feedhandler replay`` runs) into a ``BookEngine``; every instrument's full L2 must match.
- Redis is a real ``redis-server`` of our own (the ``private_redis`` fixture): ``md:nasdaq:*`` keys
  cannot be given a per-test prefix, so a shared server would mix runs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from captures.generator import generate
from captures.reader import open_capture
from feedhandler.cli import main
from feedhandler.live import LiveError, LiveHandler, open_feed_sources
from feedhandler.live_config import live_config
from feedhandler.metrics import MetricsServer, fetch_status
from feedhandler.replay import DecodedCapture
from feedhandler.rerequest import RerequestServer
from feedhandler.sender import Sender, capture_packets
from feedhandler.sinks import ConfigError
from orderbook.engine import BookEngine
from tests.feedhandler.netns import ADDR_A, ADDR_B, netns_pair  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
GROUP_A, GROUP_B, PORT, RR_PORT = "239.1.1.1", "239.1.1.2", 26400, 26500
MESSAGES = 30_000
DROP_RATE = 0.01


class Day:
    """The capture, its reference books (a replay's decoding) and a drop seed losing packets on both lines."""

    def __init__(self, root: Path) -> None:
        session = generate(messages=MESSAGES, symbols=40, seed=17)
        self.path = root / "live.pcap"
        session.write(self.path, session="LIVE1", end_of_session=True)
        self.span_s = (int(session.ts_recv[-1]) - int(session.ts_recv[0])) / 1e9
        source = DecodedCapture(self.path)
        self.engine = BookEngine(depth=10)
        self.trades = 0
        for batch in source.batches():
            self.engine.apply(batch.events)
            self.trades += len(batch.trades)
        self.symbols = dict(source.normalizer.symbols)
        self.summary = source.summary()
        packets = capture_packets(open_capture(self.path))
        self.packets = len(packets)
        self.seed, self.both_lost = next(
            (seed, int(both.sum())) for seed in range(1, 100)
            for both in [_both_lost(packets, seed)] if both.any())

    def books_differ(self, engine: BookEngine) -> dict:
        return {sym: (engine.l2(iid), self.engine.l2(iid)) for iid, sym in self.symbols.items()
                if engine.l2(iid) != self.engine.l2(iid)}


def _both_lost(packets, seed: int):
    drops = Sender(packets, [(GROUP_A, PORT), (GROUP_B, PORT)], drop_rate=DROP_RATE, seed=seed).drops
    return drops[0] & drops[1]


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> Day:
    return Day(tmp_path_factory.mktemp("live"))


def _send_argv(day: Day, pair, seconds: float = 3.0) -> list[str]:
    return [sys.executable, "-m", "feedhandler.cli", "send", str(day.path), "--group", f"{GROUP_A}:{PORT}",
            "--b-group", f"{GROUP_B}:{PORT}", "--speed", f"{day.span_s / seconds:.3f}", "--drop-rate", str(DROP_RATE),
            "--seed", str(day.seed), "--iface", pair.veths["a"]]


def _sent_counts(stdout: str) -> dict[str, tuple[int, int]]:
    """line -> (sent, dropped) from `feedhandler send`'s summary."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["line"]:
            out[parts[1]] = (int(parts[4].replace(",", "")), int(parts[6].replace(",", "")))
    return out


def _start_sender(day: Day, pair) -> dict:
    """`feedhandler send` in namespace a, on a thread; the dict gets ``proc`` and ``counts`` when it ends."""
    sent: dict = {}

    def send() -> None:
        proc = pair.exec("a", _send_argv(day, pair), timeout=120, cwd=REPO)
        sent.update(proc=proc, counts=_sent_counts(proc.stdout))

    threading.Thread(target=send, daemon=True).start()
    return sent


def _all_read(snap: dict, sent: dict) -> bool:
    """The sender is done, the handler read every packet it sent on both lines, and nothing is held."""
    counts = sent.get("counts")
    return (counts is not None and all(snap["lines"][n]["packets"] >= counts[n][0] for n in "AB")
            and not snap["feed"]["held"])


def _live_settings(pair, **extra) -> dict:
    return {"group": f"{GROUP_A}:{PORT}", "b_group": f"{GROUP_B}:{PORT}", "iface": pair.veths["b"],
            "netns": pair.names["b"], "rerequest": f"{ADDR_A}:{RR_PORT}", "rerequest_bind": ADDR_B,
            "expect_from": 1, "metrics": "off", **extra}


@pytest.mark.parametrize("source", ["socket", "afpacket", "afxdp"])
def test_live_books_equal_the_replay_with_drops_on_both_lines(day, netns_pair, source):
    """A/B with 1% drops each and holes on both lines recovered by re-request: every message once, in
    order, and every book equal to the replay's; the counters say what happened on each line. AF_PACKET
    and AF_XDP carry both lines in one source, told apart by destination group."""
    pair = netns_pair
    with pair.entered("a"):
        server = RerequestServer(day.path, ADDR_A, RR_PORT).start()
    cfg = live_config({}, _live_settings(pair, source=source))
    handler = LiveHandler(cfg, metrics=MetricsServer("127.0.0.1", 0))
    sent = _start_sender(day, pair)
    try:
        snap = handler.run(duration_s=90, until=lambda s: _all_read(s, sent) and s["feed"]["messages"] >= MESSAGES)
        metrics_text = _get(handler.metrics.url + "/metrics")
        served = fetch_status(handler.metrics.url)
    finally:
        final = handler.close()
        handler.metrics.close()
        server.close()
    assert snap["feed"]["messages"] == MESSAGES, snap
    assert not day.books_differ(handler.engine)
    assert handler.engine.orders == day.engine.orders
    assert handler.normalizer.anomaly_counts() == {k: v for k, v in day.summary.anomalies.items()
                                                   if k != "duplicate_messages"}
    counts = sent["counts"]
    lines = final["lines"]
    for name in "AB":
        sent_n, dropped = counts[name]
        assert sent_n + dropped == day.packets and dropped > 0
        assert lines[name]["packets"] == sent_n, (name, lines[name], counts)  # the handler lost nothing
        assert lines[name]["kernel_drops"] == 0
        assert lines[name]["gaps"] >= 1 and lines[name]["gap_messages"] >= dropped - 2
        assert not lines[name]["silent"]
    # a shared source feeds a batch's A packets before its B packets: B then holds nearly every duplicate
    assert lines["B"]["duplicates"] > 0 and (source != "socket" or lines["A"]["duplicates"] > 0)
    feed, rec = final["feed"], final["recovery"]
    assert feed["recovered"] >= day.both_lost and feed["given_up"] == 0 and rec["holes"] >= 1
    assert rec["messages"] == feed["recovered"] and server.stats()["answered"] >= 1
    assert lines["A"]["messages"] + lines["B"]["messages"] + feed["recovered"] == MESSAGES
    assert final["books"]["stale_instruments"] == 0 and final["books"]["resting_orders"] == day.engine.orders
    assert final["latency"]["count"] == MESSAGES and 0 < final["latency"]["p50_ns"] <= final["latency"]["p99_ns"]
    # the endpoint served the same counters the loop published
    assert served["lines"]["A"]["packets"] == snap["lines"]["A"]["packets"]
    assert f'feedhandler_line_packets_total{{venue="nasdaq",line="A"}} {snap["lines"]["A"]["packets"]}' in metrics_text
    assert f'feedhandler_recovered_messages_total{{venue="nasdaq"}} {snap["feed"]["recovered"]}' in metrics_text


def test_live_cli_publishes_redis_bbo_equal_to_book_and_drains_on_sigterm(day, netns_pair, private_redis, capsys):
    """`feedhandler live` (its feed sockets in namespace b through --netns) with 1% drops per line
    publishes to Redis; `feedhandler status` shows its counters; SIGTERM drains the sink and prints the
    counts; every symbol's md:nasdaq:{symbol}:bbo:last equals `feedhandler book`'s best bid and offer."""
    pair = netns_pair
    with pair.entered("a"):
        server = RerequestServer(day.path, ADDR_A, RR_PORT).start()
    argv = [sys.executable, "-m", "feedhandler.cli", "live", "--group", f"{GROUP_A}:{PORT}", "--b-group",
            f"{GROUP_B}:{PORT}", "--iface", pair.veths["b"], "--netns", pair.names["b"], "--rerequest",
            f"{ADDR_A}:{RR_PORT}", "--redis", private_redis.url, "--metrics-port", "0", "--expect-from", "1",
            "--drain", "10s"]
    live = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _ready_url(live)
        sent = pair.exec("a", _send_argv(day, pair), timeout=120, cwd=REPO)
        counts = _sent_counts(sent.stdout)
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run([sys.executable, "-m", "feedhandler.cli", "status", "--url", url, "--json"],
                                    cwd=REPO, capture_output=True, text=True, timeout=30)
            assert status.returncode == 0, status.stderr
            snap = json.loads(status.stdout)
            if _all_read(snap, {"counts": counts}) and snap["feed"]["messages"] >= MESSAGES:
                break
            assert time.monotonic() < deadline, snap
            time.sleep(0.2)
        text = subprocess.run([sys.executable, "-m", "feedhandler.cli", "status", "--url", url], cwd=REPO,
                              capture_output=True, text=True, timeout=30).stdout
        assert "30,000 messages in sequence" in text and "A        239.1.1.1:26400" in text
        live.send_signal(signal.SIGTERM)
        out, err = live.communicate(timeout=60)
    finally:
        if live.poll() is None:
            live.kill()
            live.communicate()
        server.close()
    assert live.returncode == 0, err
    assert all(dropped > 0 for _, dropped in counts.values())
    assert "stopped" in out and f"{MESSAGES:,} messages in sequence" in out, out
    assert "0 gaps given up" in out and "sink redis: offered" in out and "dropped 0" in out, out
    for name in "AB":
        row = next(line for line in out.splitlines() if line.strip().startswith(f"{name} "))
        assert f"{counts[name][0]:,}" in row.split()[2], (row, counts)  # packets = what the sender sent
    client = private_redis.client(decode_responses=True)
    wrong = {}
    try:
        for symbol in day.symbols.values():
            assert main(["book", str(day.path), "--symbol", symbol, "--depth", "1", "--json"]) == 0
            book = json.loads(capsys.readouterr().out, parse_float=Decimal)
            expected = (book["bids"][0][0] if book["bids"] else None, book["bids"][0][1] if book["bids"] else 0,
                        book["asks"][0][0] if book["asks"] else None, book["asks"][0][1] if book["asks"] else 0)
            h = client.hgetall(f"md:nasdaq:{symbol}:bbo:last")
            got = (_dec(h.get("bid_px")), int(h.get("bid_sz", 0)), _dec(h.get("ask_px")), int(h.get("ask_sz", 0)))
            if got != expected:
                wrong[symbol] = (got, expected)
    finally:
        client.close()
    assert not wrong, wrong


def _dec(text: str | None) -> Decimal | None:
    return Decimal(text) if text else None


def _ready_url(proc: subprocess.Popen) -> str:
    """The metrics URL `feedhandler live` announces on stderr once its sockets are open."""
    seen = []
    while True:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"feedhandler live exited {proc.wait()}: {''.join(seen)}")
        seen.append(line)
        if "counters at " in line:
            return line.split("counters at ")[1].split("/metrics")[0]


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return resp.read().decode()


def test_gap_given_up_flags_every_instrument_stale(day, netns_pair):
    """Without a re-request server a hole lost on both lines is given up: reported, counted, and every
    instrument known at that moment flagged stale (the book differs from the replay's, as it must)."""
    pair = netns_pair
    cfg = live_config({}, {**_live_settings(pair), "rerequest": None, "give_up": "100ms"})
    handler = LiveHandler(cfg)
    sent = _start_sender(day, pair)
    try:
        snap = handler.run(duration_s=60, until=lambda s: _all_read(s, sent)
                           and s["feed"]["messages"] + s["feed"]["given_up_messages"] >= MESSAGES)
    finally:
        final = handler.close()
    assert snap["feed"]["given_up"] >= 1 and snap["feed"]["given_up_messages"] >= day.both_lost
    assert snap["feed"]["messages"] + snap["feed"]["given_up_messages"] == MESSAGES
    assert final["books"]["stale_instruments"] == len(day.symbols)
    assert sorted(final["books"]["stale_symbols"]) == sorted(day.symbols.values())
    gaps = [e for e in final["events"] if e["kind"] == "gap_given_up"]
    assert gaps and gaps[0]["session"] == "LIVE1" and gaps[0]["stale_flagged"] == len(day.symbols)
    assert gaps[0]["reason"] == "GIVE_UP_TIMEOUT"


def test_setup_errors_are_one_line(tmp_path, capsys):
    cases = [
        (["live"], "no line A"),
        (["live", "--group", "10.0.0.1:26400"], "not a multicast address"),
        (["live", "--group", "239.1.1.1"], "expected GROUP:PORT"),
        (["live", "--group", "239.1.1.1:1", "--b-group", "239.1.1.1:1"], "lines A and B are the same group"),
        (["live", "--group", "239.1.1.1:1", "--source", "afpacket"], "needs an interface"),
        (["live", "--group", "239.1.1.1:1", "--source", "shm"], "needs a ring path"),
        (["live", "--group", "239.1.1.1:1", "--source", "shm", "--shm-path", str(tmp_path / "none"),
          "--metrics-port", "0"], "no shared-memory ring"),
        (["live", "--group", "239.1.1.1:1", "--iface", "nosuchif0", "--metrics-port", "0"],
         "no network interface named 'nosuchif0'"),
        (["live", "--group", "239.1.1.1:1", "--netns", "fh-no-such-ns", "--metrics-port", "0"],
         "no network namespace 'fh-no-such-ns'"),
        (["live", "--group", "239.1.1.1:1", "--rerequest", "nohostport"], "expected HOST:PORT"),
        (["live", "--group", "239.1.1.1:1", "--conflate", "fast"], "not a valid duration"),
        (["live", "--group", "239.1.1.1:1", "--cpu", "4096"], "cpu must be one of this machine's CPUs"),
        (["live", "--group", "239.1.1.1:1", "--realtime", "100"], "realtime is a SCHED_FIFO priority"),
        (["live", "--group", "239.1.1.1:1", "--config", str(tmp_path / "missing.toml")], "no such config file"),
        (["status", "--url", "http://127.0.0.1:1"], "no feedhandler answers at http://127.0.0.1:1/status"),
        (["status", "--file", str(tmp_path / "none.json")], "no status file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("feedhandler: error: ") and message in err and err.count("\n") == 1, (argv, err)


def test_metrics_port_in_use_is_one_line(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["live", "--group", "239.1.1.1:26401", "--metrics-port", str(port), "--duration", "0.1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1


def test_config_file_lines_and_overrides(tmp_path):
    conf = tmp_path / "feedhandler.toml"
    conf.write_text(
        '[live]\nvenue = "nasdaq-bx"\nsource = "afpacket"\niface = "eth9"\nrerequest = "10.0.0.5:26500"\n'
        'give_up = "250ms"\nmetrics = "127.0.0.1:9200"\n'
        '[live.lines.A]\ngroup = "239.1.1.1:26400"\nsource_address = "10.0.0.9"\n'
        '[live.lines.B]\ngroup = "239.1.1.2:26400"\niface = "eth8"\n'
        '[sinks.redis]\nurl = "redis://127.0.0.1:6379/0"\n')
    from feedhandler.sinks import load_config

    cfg = live_config(load_config(str(conf)), {"metrics_port": 0, "ws": "127.0.0.1:0"})
    assert (cfg.venue, cfg.source, cfg.iface, cfg.rerequest, cfg.give_up) == \
        ("nasdaq-bx", "afpacket", "eth9", ("10.0.0.5", 26500), 250_000_000)
    assert cfg.metrics == ("127.0.0.1", 0)
    assert [(ln.name, ln.address, ln.source_address, cfg.line_iface(ln)) for ln in cfg.lines] == \
        [("A", "239.1.1.1:26400", "10.0.0.9", "eth9"), ("B", "239.1.1.2:26400", None, "eth8")]
    assert cfg.sinks == {"redis": {"url": "redis://127.0.0.1:6379/0"}, "websocket": {"listen": "127.0.0.1:0"}}
    cfg = live_config(load_config(str(conf)), {"group": "239.9.9.9:1", "source": "socket", "metrics": "off"})
    assert cfg.lines[0].address == "239.9.9.9:1" and cfg.source == "socket" and cfg.metrics is None
    for text, message in (('[live]\ngive_up = 5\n', 'durations as strings'), ('[live]\nspeed = 1\n', "unknown setting"),
                          ('[live.lines.C]\ngroup = "239.1.1.3:1"\n', "lines are named A and B"),
                          ('[live]\ndepth = 300\n[live.lines.A]\ngroup = "239.1.1.1:1"\n', "depth must be within")):
        conf.write_text(text)
        with pytest.raises(ConfigError, match=message):
            live_config(load_config(str(conf)))


def test_sources_open_in_the_namespace_and_fail_cleanly_outside(netns_pair):
    pair = netns_pair
    cfg = live_config({}, _live_settings(pair, rerequest=None))
    feeds = open_feed_sources(cfg)  # the veth exists only in namespace b: --netns makes it work
    try:
        assert [(f.kind, f.label) for f in feeds] == [("socket", "A"), ("socket", "B")]
    finally:
        for f in feeds:
            f.source.close()
    with pytest.raises(LiveError, match="no network interface"):
        open_feed_sources(live_config({}, {**_live_settings(pair, rerequest=None), "netns": None}))


def test_both_lines_in_one_shared_memory_ring_are_told_apart(day, tmp_path):
    """The shm source with A and B in one ring (the writer stamps group and port per slot): the
    handler splits each batch by destination, arbitrates, recovers what both lines lost from a
    re-request server on loopback, and builds the replay's books; packets of other groups in the ring
    are counted, not fed."""
    import numpy as np

    from feedhandler.sources.base import PacketBatch, ipv4_to_int
    from feedhandler.sources.shm_ring import ShmWriter

    path = f"/dev/shm/fh-test-live-{os.getpid()}"
    packets = capture_packets(open_capture(day.path))
    drops = Sender(packets, [(GROUP_A, PORT), (GROUP_B, PORT)], drop_rate=DROP_RATE, seed=day.seed).drops
    writer = ShmWriter(path, slot_count=1 << 17)
    server = RerequestServer(day.path, "127.0.0.1", 0).start()
    try:
        cfg = live_config({}, {"group": f"{GROUP_A}:{PORT}", "b_group": f"{GROUP_B}:{PORT}", "source": "shm",
                               "shm_path": path, "expect_from": 1, "metrics": "off",
                               "rerequest": f"127.0.0.1:{server.address[1]}"})
        handler = LiveHandler(cfg)
        n = len(packets)
        length = packets.length.astype(np.int32)
        # interleave A, B and a stranger's packets in chunks, as a capture process would write them
        for start in range(0, n, 500):
            sl = slice(start, min(n, start + 500))
            idx = np.arange(sl.start, sl.stop)
            for group, keep in ((GROUP_A, ~drops[0][sl]), (GROUP_B, ~drops[1][sl]), ("239.9.9.9", idx % 50 == 0)):
                rows = idx[keep]
                k = len(rows)
                batch = PacketBatch(packets.buf, packets.offset[rows], length[rows], np.full(k, time.time_ns(), np.int64),
                                    np.full(k, ipv4_to_int(group), np.uint32), np.full(k, PORT, np.uint16))
                assert writer.write_batch(batch) == k
        writer.close()
        snap = handler.run(duration_s=60, until=lambda s: s["sources"][0]["writer_closed"]
                           and s["sources"][0]["backlog"] == 0 and not s["feed"]["held"]
                           and s["feed"]["messages"] >= MESSAGES)
        final = handler.close()
    finally:
        writer.close(unlink=True)
        server.close()
    assert snap["feed"]["messages"] == MESSAGES and final["feed"]["given_up"] == 0
    assert final["feed"]["recovered"] >= day.both_lost
    assert not day.books_differ(handler.engine) and handler.engine.orders == day.engine.orders
    assert final["lines"]["A"]["packets"] == int((~drops[0]).sum())
    assert final["lines"]["B"]["packets"] == int((~drops[1]).sum())
    assert final["books"]["other_packets"] == len(range(0, len(packets), 50))
    assert final["sources"][0]["kind"] == "shm" and final["sources"][0]["lines"] == "A+B"
    assert final["books"]["stale_instruments"] == 0


def test_run_live_writes_parquet_through_its_sink_runner(day, tmp_path):
    """`run_live` (the CLI's path) with the Parquet sink: stopped through its stop event once the
    endpoint shows every message, it drains and finishes the files; the last BBO row of every
    instrument is the replay's final BBO and every trade is there."""
    import numpy as np
    import pyarrow.parquet as pq

    from feedhandler.live import run_live
    from feedhandler.sources.base import PacketBatch, ipv4_to_int
    from feedhandler.sources.shm_ring import ShmWriter

    path = f"/dev/shm/fh-test-live-pq-{os.getpid()}"
    packets = capture_packets(open_capture(day.path))
    n = len(packets)
    writer = ShmWriter(path, slot_count=1 << 16)
    writer.write_batch(PacketBatch(packets.buf, packets.offset, packets.length.astype(np.int32),
                                   np.full(n, time.time_ns(), np.int64), np.full(n, ipv4_to_int(GROUP_A), np.uint32),
                                   np.full(n, PORT, np.uint16)))
    writer.close()
    out = tmp_path / "pq"
    cfg = live_config({}, {"group": f"{GROUP_A}:{PORT}", "source": "shm", "shm_path": path, "metrics": "0",
                           "out": str(out), "expect_from": 1})
    stop, box = threading.Event(), {}
    runner = threading.Thread(target=lambda: box.update(final=run_live(cfg, stop, on_ready=lambda h: box.update(h=h))))
    try:
        runner.start()
        deadline = time.monotonic() + 60
        while "h" not in box or fetch_status(box["h"].metrics.url).get("feed", {}).get("messages", 0) < MESSAGES:
            assert runner.is_alive() and time.monotonic() < deadline
            time.sleep(0.1)
        stop.set()
        runner.join(60)
    finally:
        stop.set()
        os.unlink(path)
    final = box["final"]
    assert final["state"] == "stopped" and final["feed"]["messages"] == MESSAGES
    sink = final["sinks"]["parquet"]
    assert sink["written"] == sink["offered"] and "dropped_batches" not in sink
    assert sorted(p.name for p in out.iterdir()) == ["bbo-0000.parquet", "l2-0000.parquet", "status-0000.parquet",
                                                     "trades-0000.parquet"]
    assert pq.read_table(out / "trades-0000.parquet").num_rows == day.trades
    table = pq.read_table(out / "bbo-0000.parquet")
    assert table.num_rows == final["books"]["bbo_rows"]
    assert pq.read_table(out / "l2-0000.parquet").num_rows == final["books"]["l2_rows"]
    cols = {name: table.column(name).to_numpy() for name in ("instrument_id", "bid_px", "bid_sz", "ask_px", "ask_sz")}
    last = {int(iid): i for i, iid in enumerate(cols["instrument_id"])}  # the last row of each instrument
    wrong = {}
    for iid in day.symbols:
        bid_px, bid_sz, _, ask_px, ask_sz, _ = day.engine.bbo(iid)
        if iid in last:
            got = tuple(int(cols[c][last[iid]]) for c in ("bid_px", "bid_sz", "ask_px", "ask_sz"))
            if got != (bid_px, bid_sz, ask_px, ask_sz):
                wrong[iid] = (got, (bid_px, bid_sz, ask_px, ask_sz))
    assert not wrong and len(last) >= len(day.symbols) - 2
