"""The matching kernel: known answers for every order type and time in force, then a differential run
against the plain-Python reference over 100k seeded random commands."""
from __future__ import annotations

import random

import numpy as np
import pytest

from parsers.schema import UNDEF_PRICE
from tests.trading.reference_matching import EVENT_FIELDS, ReferenceMatcher
from tests.trading.command_rows import cancel, modify, new
from trading.matching import MatchingEngine
from trading.orders import (
    COMMAND,
    NO_INSTRUMENT,
    ORDER_EVENT,
    CommandKind,
    EventKind,
    Liquidity,
    OrderSide,
    OrderType,
    Reason,
    TimeInForce,
    commands,
)

UNDEF = int(UNDEF_PRICE)
BUY, SELL, SHORT = OrderSide.BUY, OrderSide.SELL, OrderSide.SELL_SHORT
LIMIT, MARKET, STOP, STOP_LIMIT = OrderType.LIMIT, OrderType.MARKET, OrderType.STOP, OrderType.STOP_LIMIT
DAY, GTC, IOC, FOK = TimeInForce.DAY, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
ACK, REJECT, FILL, CANCELLED, MODIFIED, EXPIRED, TRIGGERED = (EventKind.ACK, EventKind.REJECT, EventKind.FILL,
                                                              EventKind.CANCELLED, EventKind.MODIFIED,
                                                              EventKind.EXPIRED, EventKind.TRIGGERED)
T, M = Liquidity.TAKER, Liquidity.MAKER
P = 10_000_000  # one cent in 1e-9 units


# -- layouts ------------------------------------------------------------------------------------


def test_command_layout():
    dt = COMMAND.dtype
    assert dt.itemsize == 48
    assert [(name, dt.fields[name][1]) for name in dt.names] == [
        ("ts", 0), ("order_id", 8), ("price", 16), ("stop_price", 24), ("qty", 32), ("account", 36),
        ("instrument_id", 40), ("kind", 44), ("side", 45), ("order_type", 46), ("tif", 47)]


def test_event_layout():
    dt = ORDER_EVENT.dtype
    assert dt.itemsize == 56
    assert [(name, dt.fields[name][1]) for name in dt.names] == [
        ("ts", 0), ("order_id", 8), ("counterparty_id", 16), ("price", 24), ("qty", 32), ("leaves", 36),
        ("account", 40), ("instrument_id", 44), ("kind", 48), ("side", 49), ("liquidity", 50), ("reason", 51),
        ("_reserved", 52)]


# -- helpers ------------------------------------------------------------------------------------


def trigger(price, inst=1, ts=0):
    return dict(kind=CommandKind.TRIGGER, instrument_id=inst, price=price * P, ts=ts)


def session_end(inst=1, ts=0):
    return dict(kind=CommandKind.SESSION_END, instrument_id=inst, ts=ts)


def sweep(price, account=0, inst=1, ts=0):
    return dict(kind=CommandKind.SWEEP, instrument_id=inst, price=price * P, account=account, ts=ts)


def short(events):
    """(kind, order id, counterparty, price in cents or None, qty, leaves, liquidity, reason) per event."""
    return [(EventKind(e["kind"]), int(e["order_id"]), int(e["counterparty_id"]),
             None if e["price"] == UNDEF else int(e["price"]) // P, int(e["qty"]), int(e["leaves"]),
             Liquidity(e["liquidity"]), Reason(e["reason"])) for e in events]


def ack(oid, price, qty):
    return (ACK, oid, 0, price, qty, qty, Liquidity.NONE, Reason.NONE)


def fill(oid, cp, price, qty, leaves, liq):
    return (FILL, oid, cp, price, qty, leaves, liq, Reason.NONE)


def gone(kind, oid, price, qty, reason):
    return (kind, oid, 0, price, qty, 0, Liquidity.NONE, reason)


def run(engine, *rows):
    return short(engine.submit(commands(*rows)))


def queues(engine, inst=1):
    """{price in cents: [(order id, leaves)]} per side, best first."""
    b = engine.book(inst)
    return ([(p // P, [(o, q) for o, q, _ in queue]) for p, queue in b.bids],
            [(p // P, [(o, q) for o, q, _ in queue]) for p, queue in b.asks])


@pytest.fixture
def engine():
    return MatchingEngine(instruments=2, orders=4, levels=8, out_rows=8)  # small: growth runs too


# -- limit orders -------------------------------------------------------------------------------


def test_limit_rests_then_crosses_at_resting_price_with_partial_fill(engine):
    assert run(engine, new(1, SELL, 100, 1010), new(2, SELL, 50, 1010)) == [ack(1, 1010, 100), ack(2, 1010, 50)]
    ev = run(engine, new(3, BUY, 120, 1020, account=9))
    assert ev == [ack(3, 1020, 120), fill(3, 1, 1010, 100, 20, T), fill(1, 3, 1010, 100, 0, M),
                  fill(3, 2, 1010, 20, 0, T), fill(2, 3, 1010, 20, 30, M)]
    assert queues(engine) == ([], [(1010, [(2, 30)])])
    fills = engine.submit(commands(new(4, BUY, 5, 1010, account=9, ts=123)))
    assert fills["ts"].tolist() == [123, 123, 123] and fills["account"].tolist() == [9, 9, 7]
    assert fills["side"].tolist() == [BUY, BUY, SELL] and fills["instrument_id"].tolist() == [1, 1, 1]


def test_limit_sweeps_levels_and_rests_the_remainder(engine):
    run(engine, new(1, SELL, 10, 101), new(2, SELL, 10, 102), new(3, SELL, 10, 104), new(4, BUY, 5, 99))
    ev = run(engine, new(5, BUY, 30, 103))
    assert ev == [ack(5, 103, 30), fill(5, 1, 101, 10, 20, T), fill(1, 5, 101, 10, 0, M),
                  fill(5, 2, 102, 10, 10, T), fill(2, 5, 102, 10, 0, M)]
    assert queues(engine) == ([(103, [(5, 10)]), (99, [(4, 5)])], [(104, [(3, 10)])])
    assert engine.levels(1) == ([(103 * P, 10, 1), (99 * P, 5, 1)], [(104 * P, 10, 1)])


def test_sell_short_matches_as_sell(engine):
    run(engine, new(1, BUY, 10, 100))
    ev = run(engine, new(2, SHORT, 4, 100))
    assert ev == [ack(2, 100, 4), fill(2, 1, 100, 4, 0, T), fill(1, 2, 100, 4, 6, M)]
    run(engine, new(3, SHORT, 4, 105))
    assert queues(engine) == ([(100, [(1, 6)])], [(105, [(3, 4)])])


def test_price_time_priority_within_a_level(engine):
    run(engine, new(1, BUY, 10, 100), new(2, BUY, 10, 100), new(3, BUY, 10, 101))
    ev = run(engine, new(4, SELL, 25, 100))
    assert [e[1:3] for e in ev if e[0] == FILL and e[6] == T] == [(4, 3), (4, 1), (4, 2)]
    assert queues(engine) == ([(100, [(2, 5)])], [])


# -- market, IOC, FOK ---------------------------------------------------------------------------


def test_market_sweeps_and_the_rest_is_cancelled(engine):
    run(engine, new(1, SELL, 10, 101), new(2, SELL, 10, 150))
    ev = run(engine, new(3, BUY, 25, typ=MARKET, tif=DAY))
    assert ev == [ack(3, None, 25), fill(3, 1, 101, 10, 15, T), fill(1, 3, 101, 10, 0, M),
                  fill(3, 2, 150, 10, 5, T), fill(2, 3, 150, 10, 0, M), gone(CANCELLED, 3, None, 5, Reason.NO_LIQUIDITY)]
    assert queues(engine) == ([], []) and engine.orders == 0
    assert run(engine, new(4, SELL, 5, typ=MARKET, tif=GTC)) == [ack(4, None, 5),
                                                                  gone(CANCELLED, 4, None, 5, Reason.NO_LIQUIDITY)]


def test_ioc_fills_what_it_can_and_cancels_the_rest(engine):
    run(engine, new(1, SELL, 10, 101), new(2, SELL, 10, 102))
    ev = run(engine, new(3, BUY, 15, 101, tif=IOC))
    assert ev == [ack(3, 101, 15), fill(3, 1, 101, 10, 5, T), fill(1, 3, 101, 10, 0, M),
                  gone(CANCELLED, 3, 101, 5, Reason.IOC_REMAINDER)]
    assert run(engine, new(4, BUY, 5, 100, tif=IOC)) == [ack(4, 100, 5), gone(CANCELLED, 4, 100, 5, Reason.IOC_REMAINDER)]
    assert queues(engine) == ([], [(102, [(2, 10)])])


def test_fok_kills_when_the_crossing_quantity_is_short(engine):
    run(engine, new(1, SELL, 10, 101), new(2, SELL, 10, 102), new(3, SELL, 10, 103))
    assert run(engine, new(4, BUY, 21, 102, tif=FOK)) == [ack(4, 102, 21), gone(CANCELLED, 4, 102, 21, Reason.FOK_UNFILLED)]
    assert queues(engine)[1] == [(101, [(1, 10)]), (102, [(2, 10)]), (103, [(3, 10)])]
    ev = run(engine, new(5, BUY, 20, 102, tif=FOK))
    assert ev == [ack(5, 102, 20), fill(5, 1, 101, 10, 10, T), fill(1, 5, 101, 10, 0, M),
                  fill(5, 2, 102, 10, 0, T), fill(2, 5, 102, 10, 0, M)]
    ev = run(engine, new(6, BUY, 11, typ=MARKET, tif=FOK))
    assert ev == [ack(6, None, 11), gone(CANCELLED, 6, None, 11, Reason.FOK_UNFILLED)]
    assert queues(engine) == ([], [(103, [(3, 10)])])


# -- cancel and modify --------------------------------------------------------------------------


def test_cancel_live_dead_and_foreign_orders(engine):
    run(engine, new(1, BUY, 10, 100), new(2, BUY, 10, 100))
    assert run(engine, cancel(1)) == [gone(CANCELLED, 1, 100, 10, Reason.USER_CANCEL)]
    assert run(engine, cancel(1)) == [(REJECT, 1, 0, None, 0, 0, Liquidity.NONE, Reason.UNKNOWN_ORDER)]
    assert run(engine, cancel(2, account=8))[0][7] == Reason.UNKNOWN_ORDER
    assert queues(engine) == ([(100, [(2, 10)])], [])
    run(engine, cancel(2))
    assert queues(engine) == ([], []) and engine.orders == 0


def test_a_refused_cancel_or_modify_tells_the_order_not_the_unused_columns(engine):
    run(engine, new(1, SELL, 10, 100, inst=3))
    junk = dict(instrument_id=5, side=BUY)  # columns a cancel or modify does not use
    unknown = engine.submit(commands(dict(cancel(2), **junk), dict(modify(2, qty=3), **junk),
                                     dict(cancel(1, account=8), **junk)))
    assert [(int(e["instrument_id"]), int(e["side"]), Reason(e["reason"])) for e in unknown] == [
        (NO_INSTRUMENT, 0, Reason.UNKNOWN_ORDER)] * 3  # not held (for that account): no instrument to tell
    held = engine.submit(commands(dict(modify(1, price=-1), **junk)))
    assert [(int(e["instrument_id"]), int(e["side"]), Reason(e["reason"])) for e in held] == [
        (3, SELL, Reason.BAD_PRICE)]


def test_modify_size_decrease_keeps_priority(engine):
    run(engine, new(1, BUY, 10, 100), new(2, BUY, 10, 100))
    assert run(engine, modify(1, qty=4)) == [(MODIFIED, 1, 0, 100, 4, 4, Liquidity.NONE, Reason.NONE)]
    assert queues(engine) == ([(100, [(1, 4), (2, 10)])], [])
    assert engine.levels(1)[0] == [(100 * P, 14, 2)]


def test_modify_size_increase_or_price_change_loses_priority(engine):
    run(engine, new(1, BUY, 10, 100), new(2, BUY, 10, 100), new(3, BUY, 10, 100))
    run(engine, modify(1, qty=11))
    assert queues(engine) == ([(100, [(2, 10), (3, 10), (1, 11)])], [])
    run(engine, modify(2, price=101), modify(2, price=100))
    assert queues(engine) == ([(100, [(3, 10), (1, 11), (2, 10)])], [])


def test_modify_to_a_crossing_price_trades_as_taker(engine):
    run(engine, new(1, SELL, 10, 102), new(2, BUY, 15, 100))
    ev = run(engine, modify(2, price=103))
    assert ev == [(MODIFIED, 2, 0, 103, 15, 15, Liquidity.NONE, Reason.NONE), fill(2, 1, 102, 10, 5, T),
                  fill(1, 2, 102, 10, 0, M)]
    assert queues(engine) == ([(103, [(2, 5)])], [])
    assert run(engine, modify(9, price=1))[0][7] == Reason.UNKNOWN_ORDER


# -- stops --------------------------------------------------------------------------------------


def test_stop_triggers_on_an_internal_trade_and_enters_as_market(engine):
    run(engine, new(1, SELL, 10, 105), new(2, SELL, 10, 106))
    assert run(engine, new(3, BUY, 5, typ=STOP, stop=105)) == [ack(3, None, 5)]
    assert engine.book(1).stops == [(3, BUY, STOP, DAY, 105 * P, UNDEF, 5)]
    ev = run(engine, new(4, BUY, 2, 105))  # prints 105: the buy stop at 105 fires
    assert ev == [ack(4, 105, 2), fill(4, 1, 105, 2, 0, T), fill(1, 4, 105, 2, 8, M),
                  (TRIGGERED, 3, 0, 105, 5, 5, Liquidity.NONE, Reason.NONE),
                  fill(3, 1, 105, 5, 0, T), fill(1, 3, 105, 5, 3, M)]
    assert engine.book(1).stops == [] and queues(engine) == ([], [(105, [(1, 3)]), (106, [(2, 10)])])


def test_stop_limit_triggers_on_a_fed_trade_and_rests(engine):
    run(engine, new(1, SELL, 10, 99, typ=STOP_LIMIT, stop=100, tif=GTC), new(2, SELL, 10, typ=STOP, stop=90))
    assert run(engine, trigger(101)) == []
    ev = run(engine, trigger(100))
    assert ev == [(TRIGGERED, 1, 0, 100, 10, 10, Liquidity.NONE, Reason.NONE)]
    assert queues(engine) == ([], [(99, [(1, 10)])])
    assert [s[0] for s in engine.book(1).stops] == [2]


def test_stops_cascade_oldest_first(engine):
    run(engine, new(1, BUY, 5, 100), new(2, BUY, 5, 98), new(3, BUY, 5, 95))
    run(engine, new(10, SELL, 5, typ=STOP, stop=97), new(11, SELL, 5, typ=STOP, stop=99))
    ev = run(engine, new(4, SELL, 5, 100))  # prints 100: nothing fires; then a print at 98 fires both
    assert [e[0] for e in ev] == [ACK, FILL, FILL]
    ev = run(engine, new(5, SELL, 5, 98))
    assert [(e[0], e[1]) for e in ev if e[0] in (TRIGGERED, ACK)] == [(ACK, 5), (TRIGGERED, 11), (TRIGGERED, 10)]
    assert [e[3] for e in ev if e[0] == FILL and e[6] == T] == [98, 95]
    assert ev[-1] == gone(CANCELLED, 10, None, 5, Reason.NO_LIQUIDITY)


def test_modify_a_held_stop(engine):
    run(engine, new(1, BUY, 5, 110, typ=STOP_LIMIT, stop=105))
    assert run(engine, modify(1, price=111, qty=7, stop=106)) == [(MODIFIED, 1, 0, 111, 7, 7, Liquidity.NONE,
                                                                    Reason.NONE)]
    assert run(engine, trigger(105)) == []
    assert run(engine, trigger(106))[0][0] == TRIGGERED
    assert queues(engine) == ([(111, [(1, 7)])], [])


# -- day orders, rejects, growth ----------------------------------------------------------------


def test_sweep_fills_orders_through_the_print_but_the_exempt_accounts(engine):
    run(engine, new(1, BUY, 10, 102), new(2, BUY, 5, 102, account=9), new(3, BUY, 7, 102), new(4, BUY, 8, 101),
        new(5, BUY, 6, 100), new(6, SELL, 4, 105), new(7, SELL, 5, typ=STOP, stop=100))
    ev = run(engine, sweep(100, account=9))  # bids above 100 fill entirely at their own price, best first
    assert ev == [fill(1, 0, 102, 10, 0, M), fill(3, 0, 102, 7, 0, M), fill(4, 0, 101, 8, 0, M),
                  (TRIGGERED, 7, 0, 100, 5, 5, Liquidity.NONE, Reason.NONE),
                  fill(7, 2, 102, 5, 0, T), fill(2, 7, 102, 5, 0, M)]
    assert queues(engine) == ([(100, [(5, 6)])], [(105, [(6, 4)])])  # at the print's price: no fill
    assert run(engine, sweep(106)) == [fill(6, 0, 105, 4, 0, M)]  # asks below the print
    assert engine.orders == 1 and run(engine, sweep(0)) == [(REJECT, 0, 0, 0, 0, 0, Liquidity.NONE, Reason.BAD_PRICE)]


def test_session_end_expires_day_orders_only(engine):
    run(engine, new(1, BUY, 5, 100, tif=DAY), new(2, BUY, 5, 100, tif=GTC), new(3, BUY, 5, 99, tif=DAY),
        new(4, SELL, 5, 101, tif=GTC), new(5, BUY, 5, typ=STOP, stop=120, tif=DAY), new(6, SELL, 5, 102, inst=0))
    ev = run(engine, session_end())
    assert ev == [gone(EXPIRED, 1, 100, 5, Reason.SESSION_END), gone(EXPIRED, 3, 99, 5, Reason.SESSION_END),
                  gone(EXPIRED, 5, None, 5, Reason.SESSION_END)]
    assert queues(engine) == ([(100, [(2, 5)])], [(101, [(4, 5)])])
    assert queues(engine, 0) == ([], [(102, [(6, 5)])]) and engine.orders == 3


@pytest.mark.parametrize("row, reason", [
    (new(1, BUY, 0, 100), Reason.BAD_QTY),
    (new(1, BUY, 5), Reason.BAD_PRICE),
    (new(1, BUY, 5, -1), Reason.BAD_PRICE),
    (new(1, BUY, 5, typ=STOP), Reason.BAD_PRICE),
    (new(1, BUY, 5, 100, typ=STOP_LIMIT), Reason.BAD_PRICE),
    (new(0, BUY, 5, 100), Reason.INVALID_ORDER),
    (new(2**63, BUY, 5, 100), Reason.INVALID_ORDER),
    (new(1, 0, 5, 100), Reason.INVALID_ORDER),
    (new(1, BUY, 5, 100, typ=9), Reason.INVALID_ORDER),
    (new(1, BUY, 5, 100, tif=0), Reason.INVALID_ORDER),
    (dict(kind=0, order_id=1), Reason.INVALID_ORDER),
    (trigger(0), Reason.BAD_PRICE),
    (new(1, BUY, 5, 100, inst=2**32 - 1), Reason.UNKNOWN_SYMBOL),
    (session_end(inst=1 << 20), Reason.UNKNOWN_SYMBOL),
])
def test_rejects(engine, row, reason):
    ev = run(engine, row)
    assert [(e[0], e[7]) for e in ev] == [(REJECT, reason)] and engine.orders == 0


def test_duplicate_live_id_is_rejected_a_dead_one_reused(engine):
    run(engine, new(1, BUY, 5, 100))
    assert run(engine, new(1, BUY, 5, 100))[0][::7] == (REJECT, Reason.DUPLICATE_ORDER_ID)
    run(engine, cancel(1))
    assert run(engine, new(1, BUY, 5, 100)) == [ack(1, 100, 5)]


def test_growth_keeps_the_books(engine):
    """Many orders, levels, instruments and events through arrays that start tiny."""
    rows = [new(i + 1, BUY if (i // 40) % 2 else SELL, 3, (500 - i // 40) if (i // 40) % 2 else (1001 + i // 40),
                inst=i % 40) for i in range(2000)]
    ev = engine.submit(commands(*rows))
    assert len(ev) == 2000 and (ev["kind"] == ACK).all() and engine.orders == 2000
    ev = engine.submit(commands(new(5000, BUY, 10**6, typ=MARKET, inst=0)))
    assert (ev["kind"] == FILL).sum() == 2 * 25 and engine.book(0).asks == []
    assert len(engine.book(0).bids) == 25 and len(engine.book(39).asks) == 25
    assert engine.book(39).bids[0] == (499 * P, [(80, 3, 7)])


# -- differential -------------------------------------------------------------------------------


def random_commands(n: int, seed: int, instruments: int = 4) -> np.ndarray:
    """Mixed commands over a few instruments around drifting mids, cancels/modifies of live and dead ids."""
    rnd = random.Random(seed)
    out = COMMAND.empty(n)
    out["price"] = UNDEF_PRICE
    out["stop_price"] = UNDEF_PRICE
    mids = [1000] * instruments
    issued: list[tuple[int, int]] = []  # (order id, account)
    next_id = 1
    for i in range(n):
        r = out[i]
        r["ts"] = 1_000_000 + i
        u = rnd.random()
        inst = rnd.randrange(instruments)
        mids[inst] = max(20, mids[inst] + rnd.choice((-1, 0, 0, 1)))
        mid = mids[inst]
        if u < 0.62 or not issued:  # new orders
            r["kind"] = CommandKind.NEW
            oid = next_id
            if rnd.random() < 0.01 and issued:
                oid = rnd.choice(issued)[0]  # a reused id: live (rejected) or dead (fine)
            else:
                next_id += 1
            account = rnd.randrange(1, 4)
            issued.append((oid, account))
            side = rnd.choice((BUY, BUY, SELL, SELL, SHORT))
            sign = 1 if side == BUY else -1
            t = rnd.random()
            typ = MARKET if t < 0.1 else STOP if t < 0.15 else STOP_LIMIT if t < 0.2 else LIMIT
            r["order_id"] = oid
            r["account"] = account
            r["instrument_id"] = inst
            r["side"] = side
            r["order_type"] = typ
            r["tif"] = rnd.choice((DAY, DAY, GTC, GTC, IOC, FOK))
            r["qty"] = rnd.choice((1, 5, 10, 10, 20, 50, 100))
            price = mid - sign * rnd.randrange(-3, 10)
            if typ in (LIMIT, STOP_LIMIT):
                r["price"] = price * P
            if typ in (STOP, STOP_LIMIT):
                r["stop_price"] = (mid + sign * rnd.randrange(1, 6)) * P
                if typ == STOP_LIMIT:
                    r["price"] = (mid + sign * rnd.randrange(0, 8)) * P
            if rnd.random() < 0.01:  # odd fields: rejected
                field = rnd.choice(("qty", "price", "side", "tif", "order_type"))
                r[field] = 0 if field != "price" else -P
        elif u < 0.80:
            r["kind"] = CommandKind.CANCEL
            oid, account = rnd.choice(issued[-300:])
            r["order_id"] = oid if rnd.random() > 0.01 else next_id + 7
            r["account"] = account if rnd.random() > 0.02 else account + 1
        elif u < 0.97:
            r["kind"] = CommandKind.MODIFY
            oid, account = rnd.choice(issued[-300:])
            r["order_id"] = oid
            r["account"] = account
            what = rnd.random()
            if what < 0.5:
                r["price"] = (mid + rnd.randrange(-9, 10)) * P
            if what > 0.3:
                r["qty"] = rnd.choice((0, 1, 3, 10, 30, 100))
            if rnd.random() < 0.1:
                r["stop_price"] = (mid + rnd.randrange(-5, 6)) * P
        elif u < 0.995:
            r["kind"] = CommandKind.TRIGGER
            r["instrument_id"] = inst
            r["price"] = (mid + rnd.randrange(-6, 7)) * P
        else:
            r["kind"] = CommandKind.SESSION_END
            r["instrument_id"] = inst
    return out


def _tuples(events: np.ndarray) -> list[tuple]:
    return list(zip(*(events[name].tolist() for name in EVENT_FIELDS)))


def test_kernel_matches_the_reference_on_100k_random_commands():
    cmds = random_commands(100_000, seed=6, instruments=5)
    engine = MatchingEngine(instruments=1, orders=16, levels=16, out_rows=64, max_instruments=4)
    ref = ReferenceMatcher(max_instruments=4)  # instrument 4 shows up only in UNKNOWN_SYMBOL rejects
    kinds = np.zeros(len(EventKind) + 1, dtype=np.int64)
    for start in range(0, len(cmds), 100):
        batch = cmds[start:start + 100]
        got = engine.submit(batch)
        want = ref.submit(batch)
        if _tuples(got) != want:
            for j, (g, w) in enumerate(zip(_tuples(got), want)):
                assert g == w, f"batch at {start}: event {j}"
            assert len(got) == len(want), f"batch at {start}"
        np.add.at(kinds, got["kind"], 1)
        for inst in range(5):
            b = engine.book(inst)
            assert (b.bids, b.asks, b.stops) == ref.book(inst), f"book {inst} after command {start + 100}"
            levels = engine.levels(inst)
            for side, book in zip(levels, (b.bids, b.asks)):
                assert side == [(p, sum(q for _, q, _ in queue), len(queue)) for p, queue in book]
        assert engine.orders == len(ref.live)
    # The run exercised every kind of event in bulk.
    assert all(kinds[k] > 200 for k in EventKind), kinds


def test_kernel_matches_the_reference_with_sweeps():
    """The same stream with a third of the TRIGGERs turned into SWEEPs exempting one account."""
    cmds = random_commands(30_000, seed=11, instruments=3)
    triggers = np.flatnonzero(cmds["kind"] == CommandKind.TRIGGER)
    sweeps = triggers[::3]
    cmds["kind"][sweeps] = CommandKind.SWEEP
    cmds["account"][sweeps] = np.arange(len(sweeps)) % 4  # 0 exempts nobody (no account 0 in the stream)
    engine = MatchingEngine(instruments=1, orders=16, levels=16, out_rows=64)
    ref = ReferenceMatcher()
    swept = 0
    for start in range(0, len(cmds), 100):
        batch = cmds[start:start + 100]
        got = engine.submit(batch)
        assert _tuples(got) == ref.submit(batch), f"batch at {start}"
        swept += int(((got["kind"] == FILL) & (got["counterparty_id"] == 0)).sum())
        for inst in range(3):
            b = engine.book(inst)
            assert (b.bids, b.asks, b.stops) == ref.book(inst), f"book {inst} after command {start + 100}"
    assert len(sweeps) > 100 and swept > 100
