"""The fused live path (``feedhandler.live_kernel``) against the ordinary one, in process, from bytes.

Both run the same generated ITCH day, cut into MoldUDP64 packets, as lines A and B with packets lost
on each line (some on both, handed in later as re-request answers), in batches of varying size. The
fused handler must end with exactly the books, book rows, trades, counters and anomaly counts of the
handler that runs ``Arbiter.feed`` -> ``ItchNormalizer.normalize`` -> ``BookEngine.apply`` one by
one, and of a replay of the day; the day's directory and status messages make it take the ordinary
way for some batches, which must interleave with the fast ones without a seam.
"""
from __future__ import annotations

import numpy as np
import pytest

from captures.generator import generate
from feedhandler.arbitration import LINE_A, LINE_B, LINE_RECOVERY, Arbiter
from feedhandler.live import BOOK_OUT_ROWS, LiveHandler
from feedhandler.live_config import live_config
from feedhandler.live_kernel import FusedPath
from feedhandler.metrics import LatencyHistogram
from feedhandler.sources.base import PacketBatch
from orderbook.engine import BookEngine
from parsers.clock import VenueClock
from parsers.frames import FRAME_DTYPE
from parsers.itch50_normalize import ItchNormalizer
from parsers.moldudp64 import encode_packet
from parsers.order_refs import OrderRefTable
from parsers.venues import VENUES_BY_NAME

MESSAGES = 12_000
PER_PACKET = 12
SESSION = b"FUSED1    "
NASDAQ = VENUES_BY_NAME["nasdaq"]


class Feed:
    """A generated day as MoldUDP64 packets, the batches each line delivers, and the replay's books."""

    def __init__(self, seed: int = 5) -> None:
        self.day = generate(messages=MESSAGES, symbols=30, seed=seed)
        n = len(self.day)
        packets = [encode_packet(SESSION, 1 + i, [self.day.message(j) for j in range(i, min(i + PER_PACKET, n))])
                   for i in range(0, n, PER_PACKET)]
        self.data = np.frombuffer(b"".join(packets), np.uint8).copy()
        self.length = np.array([len(p) for p in packets], np.int32)
        self.offset = np.zeros(len(packets), np.int64)
        np.cumsum(self.length[:-1], out=self.offset[1:])
        self.ts = 1_700_000_000_000_000_000 + np.arange(len(packets), dtype=np.int64) * 10_000
        rng = np.random.default_rng(seed)
        lost_a = rng.random(len(packets)) < 0.05
        lost_b = rng.random(len(packets)) < 0.05
        self.both = np.flatnonzero(lost_a & lost_b)
        assert len(self.both) > 0
        # (line, packet indexes) in the order they reach the handler: A and B alternate in runs of
        # 1..9 packets; a packet lost on both comes back as a re-request answer 20 packets later.
        self.batches: list[tuple[int, np.ndarray]] = []
        pos = 0
        while pos < len(packets):
            run = int(rng.integers(1, 10))
            idx = np.arange(pos, min(pos + run, len(packets)))
            self.batches.append((LINE_A, idx[~lost_a[idx]]))
            self.batches.append((LINE_B, idx[~lost_b[idx]]))
            late = self.both[(self.both + 20 >= pos) & (self.both + 20 < pos + run)]
            if len(late):
                self.batches.append((LINE_RECOVERY, late))
            pos += run
        tail = self.both[self.both + 20 >= len(packets)]
        if len(tail):
            self.batches.append((LINE_RECOVERY, tail))
        self.replay = BookEngine(depth=10)
        normalizer = ItchNormalizer(clock=VenueClock(self.day.date, NASDAQ.tz), venue=NASDAQ.id)
        frames = np.zeros(n, FRAME_DTYPE)
        frames["offset"] = self.day.offsets[:n]
        frames["length"] = self.day.lengths[:n]
        frames["sequence"] = np.arange(1, n + 1)
        self.replay.apply(normalizer.normalize(self.day.buf, frames).events)

    def batch(self, idx: np.ndarray) -> PacketBatch:
        k = len(idx)
        return PacketBatch(self.data, self.offset[idx], self.length[idx], self.ts[idx], np.zeros(k, np.uint32),
                           np.zeros(k, np.uint16))


@pytest.fixture(scope="module")
def feed() -> Feed:
    return Feed()


def _handler(fused: bool) -> LiveHandler:
    cfg = live_config({}, {"group": "239.1.1.1:26400", "b_group": "239.1.1.2:26400", "metrics": "off",
                           "expect_from": 1, "fused": fused, "give_up": "10s", "request_delay": "10s"})
    return LiveHandler(cfg, sources=[], rerequest=None, warm=False)


def _l2_all(engine: BookEngine, instruments) -> dict:
    return {int(i): engine.l2(int(i)) for i in instruments}


def test_fused_handler_equals_the_ordinary_one_and_the_replay(feed):
    handlers = {flag: _handler(flag) for flag in (False, True)}
    for line, idx in feed.batches:
        if len(idx) == 0:
            continue
        for h in handlers.values():
            h._feed(feed.batch(idx), line)
    plain, fused = handlers[False], handlers[True]
    assert fused._fused is not None and plain._fused is None
    assert fused._fused.batches > 100  # most batches went the fast path ...
    assert fused._fused.fallbacks > 0  # ... and the directory and status messages the ordinary one
    snaps = {flag: h.snapshot() for flag, h in handlers.items()}
    assert snaps[True]["feed"]["messages"] == MESSAGES == snaps[False]["feed"]["messages"]
    assert snaps[True]["feed"]["recovered"] == snaps[False]["feed"]["recovered"] > 0
    assert snaps[True]["lines"] == snaps[False]["lines"]
    for key in ("bbo_rows", "l2_rows", "trades", "status_rows", "resting_orders", "instruments"):
        assert snaps[True]["books"][key] == snaps[False]["books"][key], key
    assert snaps[True]["books"]["bbo_rows"] > 0 and snaps[True]["books"]["trades"] > 0
    assert snaps[True]["anomalies"] == snaps[False]["anomalies"]
    assert fused.normalizer.by_type == plain.normalizer.by_type
    assert (fused.normalizer.first_ts_event, fused.normalizer.last_ts_event) == (
        plain.normalizer.first_ts_event, plain.normalizer.last_ts_event)
    assert fused.latency.count == plain.latency.count == MESSAGES
    ids = feed.replay.instruments()
    assert len(ids) > 10
    assert _l2_all(fused.engine, ids) == _l2_all(plain.engine, ids) == _l2_all(feed.replay, ids)
    assert fused.engine.orders == plain.engine.orders == feed.replay.orders
    assert np.array_equal(fused.engine.st, plain.engine.st)  # BBO, last events, integrity counts


def _ordinary(feed: Feed):
    arbiter = Arbiter(lines=2, expect_from=1, give_up_ns=10**10, request_delay_ns=10**10)
    normalizer = ItchNormalizer(clock=VenueClock(feed.day.date, NASDAQ.tz), venue=NASDAQ.id)
    engine = BookEngine(depth=10, venue=NASDAQ.id, out_rows=BOOK_OUT_ROWS)
    out = {"bbo": [], "l2": [], "trades": [], "status": [], "imbalance": []}
    for line, idx in feed.batches:
        if len(idx) == 0:
            continue
        buf, frames = arbiter.feed(feed.batch(idx), line)
        if len(frames):
            norm = normalizer.normalize(buf, frames)
            book = engine.apply(norm.events)
            out["bbo"].append(book.bbo)
            out["l2"].append(book.l2)
            out["trades"].append(norm.trades)
            out["status"].append(norm.status)
            out["imbalance"].append(norm.imbalance)
    return {k: np.concatenate(v) for k, v in out.items()}


def test_fused_path_rows_equal_the_ordinary_rows(feed):
    """With a sink reading them, the fast path hands out the same BBO, L2 and trade rows, in order."""
    arbiter = Arbiter(lines=2, expect_from=1, give_up_ns=10**10, request_delay_ns=10**10)
    # small starting tables: the kernel must stop, have them grown, and resume
    normalizer = ItchNormalizer(clock=VenueClock(feed.day.date, NASDAQ.tz), venue=NASDAQ.id, orders=OrderRefTable(16))
    engine = BookEngine(depth=10, venue=NASDAQ.id, out_rows=64, orders=16, levels=16, instruments=4)
    arbiter._frames = arbiter._frames[:8].copy()  # outputs too small for most batches: grown on demand
    arbiter._out_buf = arbiter._out_buf[:64].copy()
    path = FusedPath(arbiter, normalizer, engine, LatencyHistogram(), keep_rows=True)
    out = {"bbo": [], "l2": [], "trades": [], "status": [], "imbalance": []}
    fast_total = 0
    for line, idx in feed.batches:
        if len(idx) == 0:
            continue
        fast, after, rest = path.feed(feed.batch(idx), line)
        fast_total += fast
        if fast:
            book, trades = path.rows()
            out["bbo"].append(book.bbo)
            out["l2"].append(book.l2)
            out["trades"].append(trades)
            if after is not None:
                norm = normalizer.normalize(*after)
                assert len(norm.events) == 0 and len(norm.trades) == 0
                out["status"].append(norm.status)
                out["imbalance"].append(norm.imbalance)
        if rest is not None:
            norm = normalizer.normalize(*rest)
            book = engine.apply(norm.events)
            path.refresh()
            out["bbo"].append(book.bbo)
            out["l2"].append(book.l2)
            out["trades"].append(norm.trades)
            out["status"].append(norm.status)
            out["imbalance"].append(norm.imbalance)
    got = {k: np.concatenate(v) for k, v in out.items()}
    want = _ordinary(feed)
    for key in ("bbo", "l2", "trades", "status", "imbalance"):
        assert len(got[key]) == len(want[key]) > 0, key
        assert got[key].tobytes() == want[key].tobytes(), key
    assert path.fallbacks > 0 and path.batches > 100
    assert path.latency.count == fast_total > MESSAGES // 2  # the ordinary batches are stamped by their caller
