"""Message shapes (publish.encoding) and RedisPublisher against the real Redis: exact bytes on every
channel, latest-state keys, the trades stream, a retried batch, and a Redis killed under a SinkRunner."""
from __future__ import annotations

import json
import select
import time

import numpy as np
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.engine import BookEngine
from orderbook.records import BBO, L2, BookFlag
from parsers.schema import STATUS, TRADE, UNDEF_PRICE, Side, StatusKind, TradingState
from publish import encoding
from publish.batch import MarketBatch
from publish.redis_pub import RedisPublisher, _last_per_instrument
from publish.resp import RespError
from publish.redis_sink import read_trades, trades_key
from publish.runner import SinkRunner
from tests.orderbook.event_streams import random_events

UNDEF = int(UNDEF_PRICE)
T0 = 1_700_000_000_000_000_000
SYMBOLS = {1: "AAPL", 2: "MSFT", 3: 'Q"X'}
BID, ASK, NONE = int(Side.BID), int(Side.ASK), int(Side.NONE)
SNAP = int(BookFlag.SNAPSHOT)


def px(text: str) -> int:
    """Decimal text -> int64 1e-9 price, exactly."""
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "0" * 9)[:9])


def bbo_rows(*rows):
    """(instrument, seq, bid, bid_sz, ask, ask_sz) -> BBO rows; prices as text, None = UNDEF."""
    out = BBO.empty(len(rows))
    for r, (inst, seq, bid, bid_sz, ask, ask_sz) in zip(out, rows):
        r["instrument_id"], r["sequence"], r["bid_sz"], r["ask_sz"] = inst, seq, bid_sz, ask_sz
        r["bid_px"] = UNDEF if bid is None else px(bid)
        r["ask_px"] = UNDEF if ask is None else px(ask)
        r["ts_event"], r["ts_recv"] = T0 + seq, T0 + seq + 500
    return out


def l2_rows(*rows):
    """(instrument, seq, side, level, price, size, count[, flags]) -> L2 rows; price as text."""
    out = L2.empty(len(rows))
    for r, (inst, seq, side, level, price, size, count, *flags) in zip(out, rows):
        r["instrument_id"], r["sequence"], r["side"], r["level"] = inst, seq, side, level
        r["price"] = UNDEF if price is None else px(price)
        r["size"], r["count"] = size, count
        r["flags"] = flags[0] if flags else 0
        r["ts_event"], r["ts_recv"] = T0 + seq, T0 + seq + 500
    return out


def trade_rows(n: int, first_seq: int = 1, instrument: int | None = None):
    t = TRADE.empty(n)
    i = np.arange(n, dtype=np.int64)
    t["sequence"] = first_seq + i
    t["ts_event"] = T0 + first_seq + i
    t["ts_recv"] = t["ts_event"] + 500
    t["price"] = px("187.25") + i * 10_000_000
    t["size"] = 100 + i
    t["match_id"] = np.uint64(2**63) + (first_seq + i).astype(np.uint64)  # beyond int64, exact
    t["instrument_id"] = (1 + i % 2) if instrument is None else instrument
    t["side"] = np.where(i % 2 == 0, BID, ASK)
    t["printable"] = 1
    return t


def halt_row(inst: int = 1, seq: int = 9):
    s = STATUS.empty(1)
    s["instrument_id"], s["sequence"], s["ts_event"] = inst, seq, T0 + seq
    s["kind"], s["state"], s["code"], s["reason"] = StatusKind.TRADING_ACTION, TradingState.HALTED, b"H", b"LUDP"
    return s


# --- encoding: literal bytes --------------------------------------------------------------------


def test_bbo_message_literal():
    rows = bbo_rows((1, 7, "187.25", 100, None, 0), (3, 8, "0.0001", 5, "1000", 2**64 - 1))
    assert encoding.bbo_json(rows, SYMBOLS) == [
        '{"type":"bbo","symbol":"AAPL","seq":7,"bid_px":"187.25","bid_sz":100,"ask_px":null,"ask_sz":0,'
        '"ts_event":1700000000000000007,"ts_recv":1700000000000000507}',
        '{"type":"bbo","symbol":"Q\\"X","seq":8,"bid_px":"0.0001","bid_sz":5,"ask_px":"1000",'
        '"ask_sz":18446744073709551615,"ts_event":1700000000000000008,"ts_recv":1700000000000000508}',
    ]


def test_trade_and_status_message_literals():
    t = trade_rows(2)
    t["printable"][1] = 0
    t["price"][1] = UNDEF
    assert encoding.trade_json(t, SYMBOLS) == [
        '{"type":"trade","symbol":"AAPL","seq":1,"px":"187.25","sz":100,"match_id":9223372036854775809,'
        '"side":"B","printable":true,"ts_event":1700000000000000001,"ts_recv":1700000000000000501}',
        '{"type":"trade","symbol":"MSFT","seq":2,"px":null,"sz":101,"match_id":9223372036854775810,'
        '"side":"A","printable":false,"ts_event":1700000000000000002,"ts_recv":1700000000000000502}',
    ]
    market_wide = STATUS.empty(1)
    market_wide["kind"], market_wide["code"] = StatusKind.MWCB_BREACH, b"1"
    rows = np.concatenate([halt_row(), market_wide])
    assert encoding.status_json(rows, SYMBOLS) == [
        '{"type":"status","symbol":"AAPL","kind":"trading_action","state":"halted","code":"H","reason":"LUDP",'
        '"ts_event":1700000000000000009}',
        '{"type":"status","symbol":"","kind":"mwcb_breach","state":"unchanged","code":"1","reason":"","ts_event":0}',
    ]


PRICES = st.one_of(st.just(UNDEF), st.integers(-(2**63), 2**63 - 1))
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
SYMBOL_TEXT = st.text(st.characters(exclude_characters="\x00"), max_size=6)  # numpy U arrays drop trailing NULs


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(SYMBOL_TEXT, U64, PRICES, U64, PRICES, U64, I64, I64), max_size=8))
def test_bbo_json_is_json_dumps_of_the_dicts(rows):
    bbo = BBO.empty(len(rows))
    for r, (_, seq, bp, bs, ap, az, te, tr) in zip(bbo, rows):
        r["sequence"], r["bid_px"], r["bid_sz"], r["ask_px"], r["ask_sz"], r["ts_event"], r["ts_recv"] = (
            seq, bp, bs, ap, az, te, tr)
    syms = np.array([r[0] for r in rows], dtype=np.str_)
    dicts = encoding.bbo_dicts(bbo, syms)
    assert encoding.bbo_json(bbo, syms) == [encoding.dumps(d) for d in dicts]
    for d, (sym, seq, bp, *_rest) in zip(dicts, rows):
        assert d["symbol"] == sym and d["seq"] == seq
        assert d["bid_px"] == (None if bp == UNDEF else encoding.price_to_str(bp))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(SYMBOL_TEXT, U64, PRICES, U64, U64, st.sampled_from([BID, ASK, NONE, 0]),
                          st.integers(0, 1), I64), max_size=8))
def test_trade_json_is_json_dumps_of_the_dicts(rows):
    t = TRADE.empty(len(rows))
    for r, (_, seq, p, sz, m, side, printable, te) in zip(t, rows):
        r["sequence"], r["price"], r["size"], r["match_id"], r["side"], r["printable"], r["ts_event"] = (
            seq, p, sz, m, side, printable, te)
    syms = np.array([r[0] for r in rows], dtype=np.str_)
    dicts = encoding.trade_dicts(t, syms)
    assert encoding.trade_json(t, syms) == [encoding.dumps(d) for d in dicts]
    assert [d["side"] for d in dicts] == [{BID: "B", ASK: "A"}.get(r[5], "N") for r in rows]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(SYMBOL_TEXT, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=1),
                          st.binary(max_size=4), I64), max_size=8))
def test_status_json_is_json_dumps_of_the_dicts(rows):
    s = STATUS.empty(len(rows))
    for r, (_, kind, state, code, reason, te) in zip(s, rows):
        r["kind"], r["state"], r["code"], r["reason"], r["ts_event"] = kind, state, code, reason, te
    syms = np.array([r[0] for r in rows], dtype=np.str_)
    assert encoding.status_json(s, syms) == [encoding.dumps(d) for d in encoding.status_dicts(s, syms)]


# --- encoding: top N from L2 rows ---------------------------------------------------------------


def test_top_books_upserts_trims_and_takes_snapshots():
    books = encoding.TopBooks(depth=2)
    msgs, last = books.apply(l2_rows(
        (1, 1, BID, 0, "10", 100, 1),
        (1, 2, ASK, 0, "10.01", 300, 2),
        (1, 3, BID, 1, "9.99", 50, 1),
        (1, 4, BID, 0, "10.005", 7, 1),  # a new best: 9.99 falls below depth 2, no row says so
        (1, 5, BID, 0, "10.005", 0, 0), (1, 5, BID, 1, "9.99", 50, 1),  # best leaves; 9.99 back in view
    ), SYMBOLS)
    assert last.tolist() == [0, 1, 2, 3, 5]
    assert [(m["seq"], m["bids"], m["asks"]) for m in msgs] == [
        (1, [["10", 100, 1]], []),
        (2, [["10", 100, 1]], [["10.01", 300, 2]]),
        (3, [["10", 100, 1], ["9.99", 50, 1]], [["10.01", 300, 2]]),
        (4, [["10.005", 7, 1], ["10", 100, 1]], [["10.01", 300, 2]]),
        (5, [["10", 100, 1], ["9.99", 50, 1]], [["10.01", 300, 2]]),
    ]
    texts, _ = encoding.TopBooks(depth=2).apply_json(l2_rows(
        (1, 1, BID, 0, "10", 100, 1), (1, 2, ASK, 0, "10.01", 300, 2), (1, 3, BID, 1, "9.99", 50, 1),
        (1, 4, BID, 0, "10.005", 7, 1), (1, 5, BID, 0, "10.005", 0, 0), (1, 5, BID, 1, "9.99", 50, 1)), SYMBOLS)
    assert texts == [encoding.dumps(m) for m in msgs]
    assert encoding.dumps(msgs[-1]) == (
        '{"type":"l2","symbol":"AAPL","seq":5,"bids":[["10",100,1],["9.99",50,1]],"asks":[["10.01",300,2]],'
        '"ts_event":1700000000000000005,"ts_recv":1700000000000000505}')
    # A snapshot replaces the instrument's levels (both sides); another instrument is untouched.
    msgs, _ = books.apply(l2_rows((2, 6, ASK, 0, "50", 1, 1), (1, 7, ASK, 0, "10.02", 9, 3, SNAP)), SYMBOLS)
    assert [(m["symbol"], m["bids"], m["asks"]) for m in msgs] == [
        ("MSFT", [], [["50", 1, 1]]), ("AAPL", [], [["10.02", 9, 3]])]
    # An empty book's snapshot is one side-NONE row.
    msgs, _ = books.apply(l2_rows((1, 8, NONE, 0, None, 0, 0, SNAP)), SYMBOLS)
    assert (msgs[0]["bids"], msgs[0]["asks"]) == ([], [])
    assert books.levels(1) == ([], []) and books.levels(2) == ([], [["50", 1, 1]])


def engine_levels(engine, inst, depth):
    bids, asks = engine.l2(inst, depth)
    return ([[encoding.price_to_str(p), s, c] for p, s, c in bids], [[encoding.price_to_str(p), s, c] for p, s, c in asks])


@pytest.mark.parametrize("conflate_ns", [0, 20_000])
def test_top_books_agree_with_the_book_engine(conflate_ns):
    """Rows the real engine emits, in batches of many sizes: our top N equals the engine's own."""
    depth = 3
    events = random_events(4, 6_000, instruments=5, invalid=True)
    engine = BookEngine(depth=depth, conflate_ns=conflate_ns)
    books, json_books = encoding.TopBooks(depth), encoding.TopBooks(depth)
    insts = sorted(set(events["instrument_id"].tolist()))
    start, sizes, updates, messages = 0, [1, 7, 50, 333, 1000], 0, 0

    def feed(rows):
        msgs, last = books.apply(rows, SYMBOLS)
        texts, json_last = json_books.apply_json(rows, SYMBOLS)
        assert texts == [encoding.dumps(m) for m in msgs] and last.tolist() == json_last.tolist()
        assert [m["seq"] for m in msgs] == rows["sequence"][last].tolist()
        return len(msgs)

    while start < len(events):
        chunk = events[start : start + sizes[updates % len(sizes)]]
        start += len(chunk)
        messages += feed(engine.apply(chunk).l2)
        updates += 1
        if not conflate_ns:
            for inst in insts:
                assert books.levels(inst) == engine_levels(engine, inst, depth), (start, inst)
    messages += feed(engine.finish().l2)
    assert messages > 100
    for inst in insts:
        assert books.levels(inst) == engine_levels(engine, inst, depth), inst
    assert any(books.levels(i)[0] for i in insts) and any(books.levels(i)[1] for i in insts)


def test_unknown_encoding_is_refused():
    with pytest.raises(ValueError, match="encoding"):
        RedisPublisher("redis://127.0.0.1:1/0", encoding="xml")


def test_msgpack_encoding_packs_the_same_maps():
    try:
        import msgpack
    except ImportError:  # not a project dependency: asking for it must say what to install
        with pytest.raises(ValueError, match="pip install msgpack"):
            encoding.Encoder("msgpack")
        return
    enc = encoding.Encoder("msgpack")
    rows = bbo_rows((1, 7, "187.25", 100, None, 0))
    assert [msgpack.unpackb(b) for b in enc.bbo(rows, SYMBOLS)] == encoding.bbo_dicts(rows, SYMBOLS)
    t = trade_rows(2)
    assert [msgpack.unpackb(b) for b in enc.trades(t, SYMBOLS)] == encoding.trade_dicts(t, SYMBOLS)


# --- RedisPublisher against the real Redis ------------------------------------------------------


@pytest.fixture
def venue(redis_client: redis.Redis, unique_name: str):
    """A venue name of this test alone; its keys are deleted afterwards."""
    yield unique_name
    keys = list(redis_client.scan_iter(match=f"md:{unique_name}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def publisher(redis_url: str):
    pub = RedisPublisher(redis_url, venue_depth=2)
    pub.open()
    yield pub
    pub.close()


def subscribe(client: redis.Redis, venue: str):
    """A pattern subscriber on every channel of ``venue``, confirmed before anything is published."""
    ps = client.pubsub()
    ps.psubscribe(f"md:{venue}:*")
    confirm = ps.get_message(timeout=5)
    assert confirm is not None and confirm["type"] == "psubscribe"
    return ps


def received(ps, n: int, timeout: float = 5.0) -> list[tuple[str, bytes]]:
    """The next ``n`` messages as (channel, data), then checks that nothing else arrives."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if m is not None:
            out.append((m["channel"].decode(), m["data"]))
    assert ps.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    return out


def test_every_channel_gets_the_exact_messages(redis_client, publisher, venue):
    batch = MarketBatch(
        venue, SYMBOLS,
        bbo=bbo_rows((1, 10, "187.25", 100, "187.3", 200), (2, 11, None, 0, "410.5", 7)),
        l2=l2_rows((1, 10, BID, 0, "187.25", 100, 1), (1, 10, ASK, 0, "187.3", 200, 2)),
        trades=trade_rows(2),
        status=halt_row(),
    )
    ps = subscribe(redis_client, venue)
    publisher.write(batch)
    got = received(ps, 6)
    ps.close()
    md = f"md:{venue}"
    assert got == [
        (f"{md}:status", b'{"type":"status","symbol":"AAPL","kind":"trading_action","state":"halted","code":"H",'
                         b'"reason":"LUDP","ts_event":1700000000000000009}'),
        (f"{md}:AAPL:trades", b'{"type":"trade","symbol":"AAPL","seq":1,"px":"187.25","sz":100,'
                              b'"match_id":9223372036854775809,"side":"B","printable":true,'
                              b'"ts_event":1700000000000000001,"ts_recv":1700000000000000501}'),
        (f"{md}:MSFT:trades", b'{"type":"trade","symbol":"MSFT","seq":2,"px":"187.26","sz":101,'
                              b'"match_id":9223372036854775810,"side":"A","printable":true,'
                              b'"ts_event":1700000000000000002,"ts_recv":1700000000000000502}'),
        (f"{md}:AAPL:l2", b'{"type":"l2","symbol":"AAPL","seq":10,"bids":[["187.25",100,1]],'
                          b'"asks":[["187.3",200,2]],"ts_event":1700000000000000010,"ts_recv":1700000000000000510}'),
        (f"{md}:AAPL:bbo", b'{"type":"bbo","symbol":"AAPL","seq":10,"bid_px":"187.25","bid_sz":100,'
                           b'"ask_px":"187.3","ask_sz":200,"ts_event":1700000000000000010,'
                           b'"ts_recv":1700000000000000510}'),
        (f"{md}:MSFT:bbo", b'{"type":"bbo","symbol":"MSFT","seq":11,"bid_px":null,"bid_sz":0,'
                           b'"ask_px":"410.5","ask_sz":7,"ts_event":1700000000000000011,'
                           b'"ts_recv":1700000000000000511}'),
    ]
    assert publisher.counters == {"published": 6, "stream_entries": 2, "batches": 1, "reconnects": 0,
                                  "no_symbol_rows": 0}


def test_bbo_last_hash_holds_the_last_row_per_symbol_with_exact_prices(redis_client, publisher, venue):
    publisher.write(MarketBatch(venue, SYMBOLS, bbo=bbo_rows(
        (1, 20, "187.25", 100, "187.3", 200),
        (2, 21, "410.000000001", 3, None, 0),
        (1, 22, "187.26", 5, "9223372036.854775806", 2**64 - 1),
    )))
    assert redis_client.hgetall(f"md:{venue}:AAPL:bbo:last") == {
        b"bid_px": b"187.26", b"bid_sz": b"5", b"ask_px": b"9223372036.854775806", b"ask_sz": b"18446744073709551615",
        b"ts_event": b"1700000000000000022", b"ts_recv": b"1700000000000000522", b"seq": b"22"}
    assert redis_client.hgetall(f"md:{venue}:MSFT:bbo:last") == {
        b"bid_px": b"410.000000001", b"bid_sz": b"3", b"ask_px": b"", b"ask_sz": b"0",
        b"ts_event": b"1700000000000000021", b"ts_recv": b"1700000000000000521", b"seq": b"21"}
    assert publisher.counters["published"] == 3  # every row on the channel, one hash write per symbol


def test_l2_last_holds_the_complete_top_n_after_deltas_and_after_a_snapshot(redis_client, publisher, venue):
    key = f"md:{venue}:AAPL:l2:last"
    publisher.write(MarketBatch(venue, SYMBOLS, l2=l2_rows(
        (1, 1, BID, 0, "10", 100, 1), (1, 2, ASK, 0, "10.01", 300, 2), (1, 3, BID, 1, "9.99", 50, 1))))
    publisher.write(MarketBatch(venue, SYMBOLS, l2=l2_rows(
        (1, 4, BID, 0, "10.005", 7, 1),  # new best; 9.99 drops out of the top 2
        (2, 5, ASK, 0, "50", 1, 1),
        (1, 6, ASK, 0, "10.01", 250, 1))))  # a delta: the rest of the book stays
    assert json.loads(redis_client.get(key)) == {
        "type": "l2", "symbol": "AAPL", "seq": 6, "bids": [["10.005", 7, 1], ["10", 100, 1]],
        "asks": [["10.01", 250, 1]], "ts_event": T0 + 6, "ts_recv": T0 + 506}
    assert json.loads(redis_client.get(f"md:{venue}:MSFT:l2:last"))["asks"] == [["50", 1, 1]]
    publisher.write(MarketBatch(venue, SYMBOLS, l2=l2_rows(
        (1, 9, BID, 0, "9.5", 10, 1, SNAP), (1, 9, ASK, 0, "10.5", 20, 2, SNAP), (1, 9, ASK, 1, "10.6", 30, 3, SNAP))))
    assert redis_client.get(key) == (
        b'{"type":"l2","symbol":"AAPL","seq":9,"bids":[["9.5",10,1]],"asks":[["10.5",20,2],["10.6",30,3]],'
        b'"ts_event":1700000000000000009,"ts_recv":1700000000000000509}')
    assert redis_client.type(key) == b"string"


def test_trades_stream_holds_every_trade_in_order_and_is_capped(redis_client, redis_url, venue):
    node_entries = int(redis_client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    pub = RedisPublisher(redis_url, stream_maxlen=100)
    pub.open()
    try:
        pub.write(MarketBatch(venue, SYMBOLS, trades=trade_rows(30, first_seq=1)))
        entries = read_trades(redis_client, venue)
        assert [json.loads(d)["seq"] for _, d in entries] == list(range(1, 31))
        assert entries[0][1] == encoding.trade_json(trade_rows(1), SYMBOLS)[0].encode()
        # A consumer that handled up to the 10th entry resumes after it.
        assert [json.loads(d)["seq"] for _, d in read_trades(redis_client, venue, entries[9][0])] == list(range(11, 31))
        for k in range(10):
            pub.write(MarketBatch(venue, SYMBOLS, trades=trade_rows(300, first_seq=31 + 300 * k)))
    finally:
        pub.close()
    length = redis_client.xlen(trades_key(venue))
    assert 100 <= length <= 100 + node_entries
    seqs = [json.loads(d)["seq"] for _, d in read_trades(redis_client, venue)]
    assert seqs == list(range(3030 - length + 1, 3031))  # the newest kept, in order
    assert pub.counters["stream_entries"] == 3030


def test_rows_without_a_symbol_go_to_the_stream_only(redis_client, publisher, venue):
    ps = subscribe(redis_client, venue)
    publisher.write(MarketBatch(venue, {1: "AAPL"}, trades=trade_rows(2), bbo=bbo_rows((2, 5, "1", 1, "2", 2))))
    got = received(ps, 1)
    ps.close()
    assert [c for c, _ in got] == [f"md:{venue}:AAPL:trades"]
    assert [json.loads(d)["symbol"] for _, d in read_trades(redis_client, venue)] == ["AAPL", ""]
    assert publisher.counters["no_symbol_rows"] == 2
    assert not redis_client.exists(f"md:{venue}::bbo:last")


def test_an_error_reply_is_raised_by_a_later_write_before_it_sends(redis_client, redis_url, venue):
    """``write`` sends first and reads earlier replies after: an error reply read so is raised by the
    next write, which sends nothing; written again after that, its batch goes."""
    redis_client.set(trades_key(venue), "not a stream")  # the XADD of a trade gets WRONGTYPE
    pub = RedisPublisher(redis_url, venue_depth=2)
    pub.open()
    redis_client.execute_command("CLIENT", "PAUSE", 300, "WRITE")  # its replies come after the write returns
    pub.write(MarketBatch(venue, SYMBOLS, trades=trade_rows(1)))
    assert pub.client.owed
    wait_until(lambda: select.select([pub.client.sock], [], [], 0)[0])
    pub.write(MarketBatch(venue, SYMBOLS, bbo=bbo_rows((1, 10, "1.5", 1, "2", 2))))  # sent, then reads them
    third = MarketBatch(venue, SYMBOLS, bbo=bbo_rows((1, 11, "1.75", 1, "2", 2)))
    with pytest.raises(RespError, match="WRONGTYPE"):
        pub.write(third)
    pub.flush()
    assert redis_client.hget(f"md:{venue}:AAPL:bbo:last", "seq") == b"10"  # the third was not sent
    pub.write(third)
    pub.close()
    assert redis_client.hget(f"md:{venue}:AAPL:bbo:last", "seq") == b"11"


def test_last_row_per_instrument_in_row_order():
    assert _last_per_instrument(np.array([], dtype=np.uint32)).tolist() == []
    assert _last_per_instrument(np.array([7], dtype=np.uint32)).tolist() == [0]
    assert _last_per_instrument(np.array([3, 1, 3, 2, 1, 3], dtype=np.uint32)).tolist() == [3, 4, 5]
    assert _last_per_instrument(np.array([5, 4], dtype=np.uint32)).tolist() == [0, 1]


def test_a_failed_batch_is_resent_unchanged(private_redis):
    """Redis goes away under a write; the retry re-sends the same commands (the top N applied once)."""
    pub = RedisPublisher(private_redis.url, venue_depth=2, connect_timeout=0.5)
    pub.open()
    pub.write(MarketBatch("x", SYMBOLS, l2=l2_rows((1, 1, BID, 0, "10", 100, 1), (1, 2, BID, 1, "9", 5, 1))))
    batch = MarketBatch("x", SYMBOLS, trades=trade_rows(1), l2=l2_rows(
        (1, 3, BID, 0, "10", 40, 1),
        (1, 4, BID, 0, "10", 0, 0), (1, 4, BID, 0, "9", 5, 1)))
    pub.flush()  # a write returns before its replies: this one is answered before Redis dies
    private_redis.kill()
    with pytest.raises(redis.ConnectionError):
        pub.write(batch)
    private_redis.start()
    pub.open()
    client = private_redis.client()
    ps = subscribe(client, "x")
    pub.write(batch)
    got = received(ps, 3)
    ps.close()
    pub.close()
    assert [c for c, _ in got] == ["md:x:AAPL:trades", "md:x:AAPL:l2", "md:x:AAPL:l2"]
    assert [json.loads(d)["bids"] for _, d in got[1:]] == [[["10", 40, 1], ["9", 5, 1]], [["9", 5, 1]]]
    assert [json.loads(d)["seq"] for _, d in read_trades(client, "x")] == [1]
    assert json.loads(client.get("md:x:AAPL:l2:last"))["bids"] == [["9", 5, 1]]
    assert pub.counters["reconnects"] == 1 and pub.counters["batches"] == 2
    client.close()


def test_a_batch_sent_and_never_answered_is_sent_again_after_a_reconnect(private_redis):
    """``write`` does not wait for replies: Redis dies holding a batch it never answered (its clients
    paused); the next write raises, and after the reconnect that batch goes again before the retried
    one, so nothing sent is lost. Replies that did come free their batch: it is not sent twice."""
    pub = RedisPublisher(private_redis.url, venue_depth=2, connect_timeout=0.5)
    pub.open()
    pub.write(MarketBatch("x", SYMBOLS, trades=trade_rows(1, first_seq=1)))
    admin = private_redis.client()
    wait_until(lambda: admin.xlen("md:x:trades") == 1)
    admin.execute_command("CLIENT", "PAUSE", 30000, "ALL")
    pub.write(MarketBatch("x", SYMBOLS, trades=trade_rows(2, first_seq=2)))  # sent; never answered
    admin.close()
    private_redis.kill()
    retried = MarketBatch("x", SYMBOLS, trades=trade_rows(1, first_seq=4))
    with pytest.raises(redis.ConnectionError):
        pub.write(retried)
    private_redis.start()
    pub.open()
    pub.write(retried)
    pub.close()  # reads every reply owed
    client = private_redis.client()
    # No persistence: the first batch died with the server; the unanswered one and the retry arrived.
    assert [json.loads(d)["seq"] for _, d in read_trades(client, "x")] == [2, 3, 4]
    assert pub.counters["batches"] == 3 and pub.counters["stream_entries"] == 4
    client.close()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_redis_killed_and_restarted_under_a_sink_runner(private_redis):
    pub = RedisPublisher(private_redis.url, venue_depth=2, socket_timeout=1.0, connect_timeout=0.5)
    runner = SinkRunner(pub, backoff_s=0.02, max_backoff_s=0.2)
    try:
        runner.offer(MarketBatch("x", SYMBOLS, trades=trade_rows(3, first_seq=1),
                                 l2=l2_rows((1, 1, BID, 0, "10", 100, 1), (1, 1, ASK, 0, "11", 100, 1))))
        wait_until(lambda: runner.counts["written"] == 1)
        watch = private_redis.client()  # written = sent: the first batch is in Redis before it dies
        wait_until(lambda: watch.xlen("md:x:trades") == 3)
        watch.close()

        private_redis.kill()
        runner.offer(MarketBatch("x", SYMBOLS, trades=trade_rows(3, first_seq=4),
                                 l2=l2_rows((1, 4, BID, 0, "10.5", 5, 1))))
        wait_until(lambda: runner.counts["failures"] >= 2)  # the write, then a refused reconnect
        private_redis.start()
        runner.offer(MarketBatch("x", SYMBOLS, trades=trade_rows(3, first_seq=7),
                                 bbo=bbo_rows((1, 9, "10.5", 5, "11", 100))))
    finally:
        counts = runner.stop(5.0)
    assert counts["written"] == 3 and counts["restarts"] >= 1 and "dropped_batches" not in counts
    assert counts["redis_reconnects"] >= 1 and counts["redis_batches"] == 3
    assert runner.last_error.startswith("ConnectionError")
    client = private_redis.client()
    # The first batch died with the server (no persistence); every later one arrived, in order.
    assert [json.loads(d)["seq"] for _, d in read_trades(client, "x")] == [4, 5, 6, 7, 8, 9]
    # The top N outlived the outage in the publisher: the delta landed on the book from before it.
    assert json.loads(client.get("md:x:AAPL:l2:last"))["bids"] == [["10.5", 5, 1], ["10", 100, 1]]
    assert client.hget("md:x:AAPL:bbo:last", "seq") == b"9"
    client.close()
