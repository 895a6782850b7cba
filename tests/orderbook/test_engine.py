"""The compiled book engine against the plain-Python reference: event by event, and at the end."""
import datetime as dt

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from captures.generator import generate
from orderbook.engine import BookEngine
from orderbook.records import BookFlag
from parsers import itch50
from parsers.clock import VenueClock
from parsers.frames import frames_of
from parsers.itch50_normalize import ItchNormalizer
from parsers.order_refs import OrderRefTable
from parsers.schema import EVENT, UNDEF_PRICE, Action, Flag, Side
from tests.orderbook.event_streams import event_streams, random_events
from tests.orderbook.reference_book import ReferenceBooks

UNDEF = int(UNDEF_PRICE)


def apply_in_batches(engine, events, batch):
    bbo, l2 = [], []
    for i in range(0, len(events), batch):
        out = engine.apply(events[i : i + batch])
        bbo.append(out.bbo)
        l2.append(out.l2)
    return np.concatenate(bbo) if bbo else np.empty(0), np.concatenate(l2) if l2 else np.empty(0)


def bbo_rows(bbo):
    return [(int(r["sequence"]), int(r["instrument_id"]),
             (int(r["bid_px"]), int(r["bid_sz"]), int(r["bid_ct"]), int(r["ask_px"]), int(r["ask_sz"]), int(r["ask_ct"])))
            for r in bbo]


def assert_same_books(engine, ref, instruments, depth=None):
    for inst in instruments:
        assert engine.l2(inst, depth) == ref.l2(inst, depth), inst
        assert engine.l3(inst) == ref.l3(inst), inst
        assert engine.bbo(inst) == ref.bbo(inst), inst
    assert engine.integrity_by_instrument() == ref.integrity()
    assert engine.orders == len(ref.orders)


def replay_l2_deltas(l2_rows, depth):
    """Top-N books rebuilt from unconflated L2 rows alone, as docs/schema.md tells a consumer to:
    upsert each level by price (size 0 removes it), then keep the N best after each update."""
    books: dict = {}

    def truncate(key):
        levels = books[key]
        for p in sorted(levels, reverse=key[1] == Side.BID)[depth:]:
            del levels[p]

    for i, r in enumerate(l2_rows):
        key = (int(r["instrument_id"]), int(r["side"]))
        levels = books.setdefault(key, {})
        if r["size"] == 0:
            levels.pop(int(r["price"]), None)
        else:
            levels[int(r["price"])] = (int(r["size"]), int(r["count"]))
        if i + 1 == len(l2_rows) or l2_rows[i + 1]["sequence"] != r["sequence"]:
            for k in books:
                truncate(k)
    out = {}
    for (inst, side), levels in books.items():
        prices = sorted(levels, reverse=side == Side.BID)
        out[(inst, side)] = [(p, *levels[p]) for p in prices]
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_streams_match_the_reference(seed):
    events = random_events(seed, 20_000, instruments=7, invalid=True)
    ref = ReferenceBooks()
    expected = ref.bbo_changes(events)
    # Tiny starting sizes: every growth path (orders, level pool, instruments, outputs) gets used.
    engine = BookEngine(depth=5, instruments=2, orders=16, levels=16, out_rows=64)
    bbo, l2 = apply_in_batches(engine, events, 997)
    assert bbo_rows(bbo) == expected
    assert_same_books(engine, ref, range(1, 8))
    rebuilt = replay_l2_deltas(l2, 5)
    for inst in range(1, 8):
        bids, asks = engine.l2(inst, 5)
        assert rebuilt.get((inst, Side.BID), []) == [(p, s, c) for p, s, c in bids]
        assert rebuilt.get((inst, Side.ASK), []) == [(p, s, c) for p, s, c in asks]


@pytest.mark.parametrize("seed", [4, 5])
def test_books_only_engine_keeps_the_same_books_and_emits_nothing(seed):
    events = random_events(seed, 20_000, instruments=7, invalid=True)
    ref = ReferenceBooks()
    ref.bbo_changes(events)
    engine = BookEngine(depth=5, instruments=2, orders=16, levels=16, outputs=False)
    bbo, l2 = apply_in_batches(engine, events, 997)
    assert len(bbo) == 0 and len(l2) == 0
    assert_same_books(engine, ref, range(1, 8))
    with_outputs = BookEngine(depth=5)
    apply_in_batches(with_outputs, events, 997)
    assert engine.integrity_by_instrument() == with_outputs.integrity_by_instrument()
    assert sum(engine.integrity().values()) > 0  # the stream holds invalid events: the counts are exercised


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_streams(instruments=(1, 2, 3), max_events=150))
def test_hypothesis_streams_match_the_reference(events):
    ref = ReferenceBooks()
    expected = ref.bbo_changes(events)
    engine = BookEngine(depth=3, instruments=1, orders=16, levels=8, out_rows=8)
    bbo, _ = apply_in_batches(engine, events, 37)
    assert bbo_rows(bbo) == expected
    assert_same_books(engine, ref, (1, 2, 3))


def test_generated_session_matches_the_reference():
    session = generate(messages=30_000, symbols=30, seed=11)
    buf = session.buf
    frames = session.frames()
    events = ItchNormalizer(VenueClock(session.date)).normalize(buf, frames).events
    ref = ReferenceBooks()
    expected = ref.bbo_changes(events)
    engine = BookEngine()
    out = engine.apply(events)
    assert bbo_rows(out.bbo) == expected
    assert_same_books(engine, ref, range(1, 31), depth=10)
    assert engine.integrity() == {}  # the generator never crosses a book


def ev(seq, action, **fields):
    row = EVENT.empty(1)[0]
    row["price"] = UNDEF
    row["side"] = Side.NONE
    row["sequence"] = seq
    row["ts_event"] = 1_000 * seq
    row["instrument_id"] = 1
    row["action"] = action
    for k, v in fields.items():
        row[k] = v
    return row


def events(*rows):
    out = EVENT.empty(len(rows))
    for i, r in enumerate(rows):
        out[i] = r
    return out


def test_replace_loses_time_priority_and_executions_take_the_front():
    engine = BookEngine(depth=5)
    engine.apply(events(
        ev(1, Action.ADD, order_id=1, side=Side.BID, price=10_000_000_000, size=100),
        ev(2, Action.ADD, order_id=2, side=Side.BID, price=10_000_000_000, size=200),
        ev(3, Action.ADD, order_id=3, side=Side.BID, price=10_000_000_000, size=300),
        ev(4, Action.REPLACE, order_id=4, prev_order_id=1, price=10_000_000_000, size=100),  # same price
    ))
    assert engine.l3(1)[Side.BID] == [(10_000_000_000, [2, 3, 4])]
    # An execution with its own price (ITCH C) comes off the resting level, not the execution price.
    engine.apply(events(ev(5, Action.EXECUTE, order_id=2, size=50, price=10_010_000_000)))
    assert engine.l2(1) == ([(10_000_000_000, 550, 3)], [])
    engine.apply(events(ev(6, Action.EXECUTE, order_id=2, size=150)))
    assert engine.l3(1)[Side.BID] == [(10_000_000_000, [3, 4])]


def test_bbo_and_l2_rows_for_known_updates():
    engine = BookEngine(depth=2)
    out = engine.apply(events(
        ev(1, Action.ADD, order_id=1, side=Side.BID, price=10_000_000_000, size=100),
        ev(2, Action.ADD, order_id=2, side=Side.ASK, price=10_010_000_000, size=300),
        ev(3, Action.ADD, order_id=3, side=Side.BID, price=9_990_000_000, size=50),  # below the best: no BBO change
        ev(4, Action.ADD, order_id=4, side=Side.BID, price=9_980_000_000, size=50),  # third level: outside depth 2
        ev(5, Action.DELETE, order_id=1),  # best bid leaves; level 3 comes into view
        ev(6, Action.TRADE, price=10_000_000_000, size=10),  # non-book: nothing
    ))
    assert bbo_rows(out.bbo) == [
        (1, 1, (10_000_000_000, 100, 1, UNDEF, 0, 0)),
        (2, 1, (10_000_000_000, 100, 1, 10_010_000_000, 300, 1)),
        (5, 1, (9_990_000_000, 50, 1, 10_010_000_000, 300, 1)),
    ]
    l2 = [(int(r["sequence"]), chr(r["side"]), int(r["level"]), int(r["price"]), int(r["size"]), int(r["count"]))
          for r in out.l2]
    assert l2 == [
        (1, "B", 0, 10_000_000_000, 100, 1),
        (2, "A", 0, 10_010_000_000, 300, 1),
        (3, "B", 1, 9_990_000_000, 50, 1),
        (5, "B", 0, 10_000_000_000, 0, 0),
        (5, "B", 1, 9_980_000_000, 50, 1),
    ]


def test_crossed_and_locked_books_are_counted_and_flagged():
    engine = BookEngine()
    out = engine.apply(events(
        ev(1, Action.ADD, order_id=1, side=Side.ASK, price=10_000_000_000, size=100),
        ev(2, Action.ADD, order_id=2, side=Side.BID, price=10_000_000_000, size=100),
        ev(3, Action.ADD, order_id=3, side=Side.BID, price=10_010_000_000, size=100),
        ev(4, Action.CANCEL, order_id=99, size=1),
    ))
    # Crossed counts updates after which the book is crossed: events 3 and 4.
    assert engine.integrity() == {"unknown_order": 1, "crossed": 2, "locked": 1}
    assert out.bbo["flags"][1] & BookFlag.LOCKED and out.bbo["flags"][2] & BookFlag.CROSSED


def test_conflation_emits_the_last_state_of_each_window():
    ms = 1_000_000
    rows = [ev(1, Action.ADD, order_id=1, side=Side.BID, price=10_000_000_000, size=100),
            ev(2, Action.ADD, order_id=2, side=Side.BID, price=9_990_000_000, size=100),
            ev(3, Action.ADD, order_id=3, side=Side.ASK, price=10_020_000_000, size=100),
            ev(4, Action.CANCEL, order_id=1, size=40),
            ev(5, Action.ADD, order_id=5, side=Side.ASK, price=10_030_000_000, size=10)]
    for i, r in enumerate(rows):
        r["ts_event"] = 5 * ms + i  # all in one 1 ms window
    late = [ev(6, Action.ADD, order_id=6, side=Side.BID, price=9_980_000_000, size=7),
            ev(7, Action.DELETE, order_id=3)]
    late[0]["ts_event"] = 9 * ms  # a later window: closes the first
    late[1]["ts_event"] = 9 * ms + 1
    engine = BookEngine(depth=10, conflate_ns=ms)
    out = engine.apply(events(*rows, *late))
    assert bbo_rows(out.bbo) == [(5, 1, (10_000_000_000, 60, 1, 10_020_000_000, 100, 1))]
    first = [(chr(r["side"]), int(r["level"]), int(r["price"]), int(r["size"])) for r in out.l2]
    assert first == [("B", 0, 10_000_000_000, 60), ("B", 1, 9_990_000_000, 100),
                     ("A", 0, 10_020_000_000, 100), ("A", 1, 10_030_000_000, 10)]
    assert np.all(out.l2["sequence"] == 5)  # stamped with the window's last change
    end = engine.finish()  # the last window is always emitted: only what changed since the first
    assert bbo_rows(end.bbo) == [(7, 1, (10_000_000_000, 60, 1, 10_030_000_000, 10, 1))]
    # Levels are keyed by price: 10.03 moving up to the best is not a change a consumer needs.
    assert [(chr(r["side"]), int(r["level"]), int(r["price"]), int(r["size"])) for r in end.l2] == [
        ("B", 2, 9_980_000_000, 7), ("A", 0, 10_020_000_000, 0)]


def test_conflated_rows_rebuild_the_same_top_n():
    events_ = random_events(4, 20_000, instruments=5, invalid=False)
    for window in (1_000, 1_000_000, 50_000_000):
        engine = BookEngine(depth=4, conflate_ns=window, instruments=1, out_rows=16)
        out = engine.apply(events_)
        end = engine.finish()
        rebuilt = replay_l2_deltas(np.concatenate([out.l2, end.l2]), 4)
        for inst in range(1, 6):
            bids, asks = engine.l2(inst, 4)
            assert rebuilt.get((inst, Side.BID), []) == bids, (window, inst)
            assert rebuilt.get((inst, Side.ASK), []) == asks, (window, inst)
        last = {}
        for r in np.concatenate([out.bbo, end.bbo]):
            last[int(r["instrument_id"])] = (int(r["bid_px"]), int(r["bid_sz"]), int(r["ask_px"]), int(r["ask_sz"]))
        for inst in range(1, 6):
            b = engine.bbo(inst)
            assert last.get(inst, (int(UNDEF_PRICE), 0, int(UNDEF_PRICE), 0)) == (b[0], b[1], b[3], b[4])


def test_clear_empties_one_instrument():
    engine = BookEngine(depth=2)
    a = ev(1, Action.ADD, order_id=1, side=Side.BID, price=10, size=1)
    b = ev(2, Action.ADD, order_id=2, side=Side.BID, price=10, size=1, instrument_id=2)
    c = ev(3, Action.CLEAR)
    out = engine.apply(events(a, b, c))
    assert engine.l2(1) == ([], []) and engine.l2(2) == ([(10, 1, 1)], [])
    assert engine.orders == 1
    assert [(int(r["sequence"]), int(r["size"])) for r in out.l2] == [(1, 1), (2, 1), (3, 0)]


def test_itch_messages_through_normalizer_and_engine():
    msgs = [itch50.encode(b"R", stock_locate=3, stock=b"ZVZZT"),
            itch50.encode(b"A", stock_locate=3, order_ref=1, side=b"B", shares=100, stock=b"ZVZZT", price=100_0000),
            itch50.encode(b"A", stock_locate=3, order_ref=2, side=b"S", shares=100, stock=b"ZVZZT", price=100_0100),
            itch50.encode(b"C", stock_locate=3, order_ref=1, executed_shares=30, match_number=1, printable=b"Y",
                          execution_price=100_0050),
            itch50.encode(b"U", stock_locate=3, original_ref=2, new_ref=3, shares=70, price=100_0200)]
    buf, frames = frames_of(msgs)
    events_ = ItchNormalizer(VenueClock(dt.date(2024, 3, 15))).normalize(buf, frames).events
    engine = BookEngine()
    engine.apply(events_)
    assert engine.l2(3) == ([(100_000_000_000, 70, 1)], [(100_020_000_000, 70, 1)])


# -- the engine as the normalizer's order index -----------------------------------------------------


def _stripped(events):
    """``events`` as a venue sends them: what the order index fills in taken out again."""
    raw = events.copy()
    a = raw["action"]
    named = (a == Action.EXECUTE) | (a == Action.CANCEL) | (a == Action.DELETE) | (a == Action.REPLACE)
    raw["side"][named] = Side.NONE
    raw["price"][(a == Action.CANCEL) | (a == Action.DELETE)] = UNDEF
    raw["price"][(a == Action.EXECUTE) & (raw["sequence"] % 2 == 0)] = UNDEF  # E: no price; C: its own
    raw["size"][a == Action.DELETE] = 0
    raw["flags"] &= ~np.uint16(Flag.UNKNOWN_REF | Flag.DUPLICATE_REF)
    return raw


@pytest.mark.parametrize("seed", [21, 22])
def test_the_engine_fills_in_events_exactly_as_the_order_table_does(seed):
    """Applying venue-style events (no side, price or size where ITCH leaves them out) to a BookEngine
    fills them in byte for byte as ``OrderRefTable.enrich`` does, unknown and duplicate references
    flagged and counted alike."""
    raw = _stripped(random_events(seed, 20_000, instruments=5, invalid=True))
    by_table, by_engine = raw.copy(), raw.copy()
    table = OrderRefTable(16)
    engine = BookEngine(instruments=2, orders=16, levels=16)
    for i in range(0, len(raw), 777):
        table.enrich(by_table[i : i + 777])
        engine.enrich(by_engine[i : i + 777])
    assert by_engine.tobytes() == by_table.tobytes()
    assert table.anomaly_counts() and engine.anomaly_counts() == table.anomaly_counts()


def test_a_normalizer_indexing_with_its_engine_gives_the_same_events_trades_and_books():
    """``ItchNormalizer(orders=engine)`` on a generated session: the same events and trades as a
    normalizer with its own order table, and the same book rows as applying those events after."""
    session = generate(messages=40_000, symbols=40, seed=12)
    frames = session.frames()
    own = ItchNormalizer(VenueClock(session.date))
    separate = BookEngine(conflate_ns=1_000_000)
    fused_engine = BookEngine(conflate_ns=1_000_000)
    fused = ItchNormalizer(VenueClock(session.date), orders=fused_engine)
    rows_separate, rows_fused = [], []
    for i in range(0, len(frames), 5_000):
        a = own.normalize(session.buf, frames[i : i + 5_000])
        b = fused.normalize(session.buf, frames[i : i + 5_000])
        assert a.events.tobytes() == b.events.tobytes() and a.trades.tobytes() == b.trades.tobytes()
        out = separate.apply(a.events)
        rows_separate += [out.bbo.tobytes(), out.l2.tobytes()]
        rows_fused += [b.book.bbo.tobytes(), b.book.l2.tobytes()]
    assert rows_fused == rows_separate and len(b"".join(rows_fused)) > 0
    assert fused.anomaly_counts() == own.anomaly_counts()


def _diff_rows(sent, now):
    """The conflated L2 rows (level, price, size, orders) that take a side from ``sent`` to ``now``
    (both best first): levels keyed by price; a level in view whose size or orders moved, or that is
    new, at its depth now; a level out of view, size 0 at its depth when sent."""
    rows = []
    old = {p: (i, z, c) for i, (p, z, c) in enumerate(sent)}
    new = {p: (i, z, c) for i, (p, z, c) in enumerate(now)}
    for p, (i, z, c) in old.items():
        if p not in new:
            rows.append((i, p, 0, 0))
    for p, (i, z, c) in new.items():
        if p not in old or old[p][1:] != (z, c):
            rows.append((i, p, z, c))
    return sorted(rows)


@pytest.mark.parametrize("seed, window, invalid", [(31, 2_000_000, False), (32, 2_000_000, True),
                                                   (33, 200_000, True), (34, 40_000_000, False),
                                                   (35, 40_000_000, True)])
def test_each_conflated_window_sends_exactly_what_changed_in_the_top_n(seed, window, invalid):
    """Per instrument and window, the conflated L2 rows are exactly the difference between the top N
    sent at the instrument's previous window and its top N at this window's end (a second engine,
    books only, stepped window by window, gives both). Windows of one change and of many, clears,
    replaces and invalid events included."""
    depth = 4
    events_ = random_events(seed, 6_000, instruments=3, invalid=invalid)
    engine = BookEngine(depth=depth, conflate_ns=window)
    out = engine.apply(events_)
    rows = np.concatenate([out.l2, engine.finish().l2])
    got = {}
    for r in rows:
        key = (int(r["ts_event"]) // window, int(r["instrument_id"]), int(r["side"]))
        got.setdefault(key, []).append((int(r["level"]), int(r["price"]), int(r["size"]), int(r["count"])))
    got = {k: sorted(v) for k, v in got.items()}
    books = BookEngine(outputs=False)
    sent: dict = {}
    expected = {}
    ids = events_["ts_event"] // window
    for w in np.unique(ids):
        part = events_[ids == w]
        books.apply(part.copy())
        for inst in np.unique(part["instrument_id"]):
            bids, asks = books.l2(int(inst), depth)
            for side, now in ((Side.BID, bids), (Side.ASK, asks)):
                diff = _diff_rows(sent.get((inst, side), []), now)
                if diff:
                    last = int(part["ts_event"][part["instrument_id"] == inst].max()) // window
                    expected[(last, int(inst), int(side))] = diff
                sent[(inst, side)] = now
    assert got == expected and len(got) > 200


def test_a_batch_that_outgrew_its_buffers_sizes_them_for_the_next_batches():
    events = random_events(6, 40_000, instruments=7)
    small = BookEngine(depth=5, out_rows=1 << 12)
    first = small.apply(events[:20_000])
    assert len(first.l2) > 1 << 12  # joined from parts: the buffers grew to fit batches like it
    l2_buffer, bbo_buffer = small._l2, small._bbo
    assert len(l2_buffer) >= len(first.l2) and len(bbo_buffer) >= len(first.bbo)
    second = small.apply(events[20_000:])
    # The next batch is handed out as written, a view of one buffer, not joined by a copy.
    assert np.shares_memory(second.l2, l2_buffer) and np.shares_memory(second.bbo, bbo_buffer)
    roomy = BookEngine(depth=5, out_rows=1 << 20)
    for got in (first, second):
        want = roomy.apply(events[:20_000] if got is first else events[20_000:])
        assert got.bbo.tobytes() == want.bbo.tobytes() and got.l2.tobytes() == want.l2.tobytes()
