"""The compiled JSON writers: byte for byte what ``publish.encoding`` writes, on random rows and on the
book engine's own output, through buffers too small to start with; the top N kept in int64 arrays."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.engine import BookEngine
from orderbook.records import BBO, L2, BookFlag
from parsers.schema import TRADE, UNDEF_PRICE, Side
from publish import encoding
from publish.json_rows import (
    TAIL_UPDATE,
    L2Books,
    Messages,
    SymbolCache,
    SymbolTable,
    bbo_messages,
    trade_messages,
)
from tests.orderbook.event_streams import random_events

UNDEF = int(UNDEF_PRICE)
BID, ASK, NONE = int(Side.BID), int(Side.ASK), int(Side.NONE)
SNAP = int(BookFlag.SNAPSHOT)
PRICES = st.one_of(st.just(UNDEF), st.integers(-(2**63), 2**63 - 1), st.integers(-10**12, 10**12))
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
SYMBOLS = {1: "AAPL", 2: "MSFT", 3: 'Q"X\\', 4: "日本", 5: ""}  # quotes, backslash, non-ASCII, empty


def tiny() -> Messages:
    return Messages(64)  # smaller than one message: every call grows it


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), U64, PRICES, U64, PRICES, U64, I64, I64), max_size=12))
def test_bbo_messages_are_encodings_bytes(rows):
    bbo = BBO.empty(len(rows))
    for r, (iid, seq, bp, bs, ap, az, te, tr) in zip(bbo, rows):
        r["instrument_id"], r["sequence"], r["bid_px"], r["bid_sz"], r["ask_px"], r["ask_sz"] = iid, seq, bp, bs, ap, az
        r["ts_event"], r["ts_recv"] = te, tr
    table = SymbolTable(SYMBOLS)
    assert bbo_messages(bbo, table, into=tiny()).texts() == encoding.bbo_json(bbo, SYMBOLS)
    seqs = np.arange(len(rows), dtype=np.uint64) + 1
    updates = bbo_messages(bbo, table, seqs, tail=TAIL_UPDATE).texts()
    assert [json.loads(t) for t in updates] == [{**d, "seq": i + 1, "snapshot": False}
                                                for i, d in enumerate(encoding.bbo_dicts(bbo, SYMBOLS))]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), U64, PRICES, U64, U64, st.sampled_from([BID, ASK, NONE, 0, 7]),
                          st.integers(0, 255), I64, I64), max_size=12))
def test_trade_messages_are_encodings_bytes(rows):
    t = TRADE.empty(len(rows))
    for r, (iid, seq, p, sz, m, side, printable, te, tr) in zip(t, rows):
        r["instrument_id"], r["sequence"], r["price"], r["size"], r["match_id"] = iid, seq, p, sz, m
        r["side"], r["printable"], r["ts_event"], r["ts_recv"] = side, printable, te, tr
    assert trade_messages(t, SymbolTable(SYMBOLS), into=tiny()).texts() == encoding.trade_json(t, SYMBOLS)


def test_symbol_table_indexes_and_bytes():
    table = SymbolTable(SYMBOLS)
    idx = table.indexes(np.array([4, 1, 99, 5], dtype=np.uint32))
    assert [table.names[i] if i >= 0 else None for i in idx] == ["日本", "AAPL", None, ""]
    k = idx[0]
    assert bytes(table.sym_raw[k, :table.sym_raw_len[k]]).decode() == "日本"
    assert bytes(table.sym_json[k, :table.sym_json_len[k]]) == json.dumps("日本").encode()
    cache = SymbolCache()
    assert cache.get(SYMBOLS) is cache.get(SYMBOLS) and cache.get(dict(SYMBOLS)) is not cache.get(SYMBOLS)


def l2_rows(*rows):
    """(instrument, seq, side, price in cents or None, size, count[, flags]) -> L2 rows."""
    out = L2.empty(len(rows))
    for r, (inst, seq, side, cents, size, count, *flags) in zip(out, rows):
        r["instrument_id"], r["sequence"], r["side"] = inst, seq, side
        r["price"] = UNDEF if cents is None else cents * 10_000_000
        r["size"], r["count"], r["flags"] = size, count, flags[0] if flags else 0
        r["ts_event"], r["ts_recv"] = 1000 + seq, 2000 + seq
    return out


def both(depth: int, *batches) -> tuple[L2Books, encoding.TopBooks]:
    """Feed the same batches to L2Books and TopBooks; every message equal, byte for byte."""
    ours, theirs = L2Books(depth, instruments=1), encoding.TopBooks(depth)
    table = SymbolTable(SYMBOLS)
    for rows in batches:
        m, last, _, _ = ours.apply(rows, table, into=tiny())
        texts, their_last = theirs.apply_json(rows, SYMBOLS)
        assert m.texts() == texts
        assert last.tolist() == their_last.tolist()
    return ours, theirs


def test_l2_upserts_trims_and_snapshots_like_top_books():
    ours, _ = both(2, l2_rows(
        (1, 1, BID, 1000, 100, 1), (1, 2, ASK, 1001, 300, 2), (1, 3, BID, 999, 50, 1),
        (1, 4, BID, 1002, 7, 1),  # a new best: 9.99 drops out of the top 2
        (1, 5, BID, 1002, 0, 0), (1, 5, BID, 999, 50, 1),  # the best leaves, 9.99 back in view
    ), l2_rows(
        (2, 6, ASK, 5000, 1, 1), (1, 7, ASK, 1003, 9, 3, SNAP),  # a snapshot replaces both sides
        (3, 8, BID, 1, 1, 1), (3, 8, BID, 2, 1, 1), (3, 8, BID, 3, 1, 1), (3, 8, BID, 3, 0, 0),  # in one update
    ), l2_rows((1, 9, NONE, None, 0, 0, SNAP)))  # an empty book
    assert ours.levels(1) == ([], [])
    assert ours.levels(2) == ([], [[5000 * 10_000_000, 1, 1]])
    assert ours.levels(3) == ([[2 * 10_000_000, 1, 1], [10_000_000, 1, 1]], [])


@pytest.mark.parametrize("conflate_ns", [0, 20_000])
def test_l2_agrees_with_top_books_on_the_engines_rows(conflate_ns):
    depth = 3
    events = random_events(4, 6_000, instruments=5, invalid=True)
    engine = BookEngine(depth=depth, conflate_ns=conflate_ns)
    batches, start = [], 0
    for k, size in enumerate([1, 7, 50, 333, 1000] * 20):
        chunk = events[start:start + size]
        if not len(chunk):
            break
        start += len(chunk)
        batches.append(engine.apply(chunk).l2)
    batches.append(engine.finish().l2)
    ours, theirs = both(depth, *[b for b in batches if len(b)])
    for inst in range(1, 6):
        want = theirs.levels(inst)
        got = ours.levels(inst)
        assert [[encoding.price_to_str(p), s, c] for p, s, c in got[0]] == want[0]
        assert [[encoding.price_to_str(p), s, c] for p, s, c in got[1]] == want[1]


def test_l2_state_messages_are_the_current_top_n():
    books = L2Books(2, instruments=1)
    table = SymbolTable(SYMBOLS)
    _, last, slots, syms = books.apply(l2_rows((1, 1, BID, 1000, 5, 1), (2, 2, ASK, 2000, 6, 2)), table, write=False)
    m = books.state_messages(slots[::-1], syms[::-1], np.array([7, 8], dtype=np.uint64), np.array([1, 2]),
                             np.array([3, 4]), table, tail=TAIL_UPDATE, into=tiny())
    assert [json.loads(t) for t in m.texts()] == [
        {"type": "l2", "symbol": "MSFT", "seq": 7, "bids": [], "asks": [["20", 6, 2]], "ts_event": 1, "ts_recv": 3,
         "snapshot": False},
        {"type": "l2", "symbol": "AAPL", "seq": 8, "bids": [["10", 5, 1]], "asks": [], "ts_event": 2, "ts_recv": 4,
         "snapshot": False}]


def test_many_instruments_grow_the_tables():
    books = L2Books(1, instruments=1)
    symbols = {i: f"S{i}" for i in range(1, 3001)}
    rows = l2_rows(*[(i, i, BID, i, 1, 1) for i in range(1, 3001)])
    m, _, _, _ = books.apply(rows, SymbolTable(symbols))
    assert len(m.texts()) == 3000 and books.levels(2999) == ([[2999 * 10_000_000, 1, 1]], [])
