"""trading.Engine: known answers for every order type and time in force against a feed book built from
real ``BookEngine`` events (queue position behind displayed size, sweeps, consumed liquidity, stops
on the feed's prints, halts), the string API's edges, the batch path and the audit hand-off."""
from __future__ import annotations

import numpy as np
import pytest

from orderbook.engine import BookEngine
from parsers.schema import EVENT, PRICE_SCALE, STATUS, UNDEF_PRICE, Action, Side, StatusKind, TradingState
from parsers.trades import trades_from_events
from trading.engine import AccountConfig, Engine, format_price, parse_price
from trading.market import MARKET_ACCOUNT, MARKET_ID_BASE
from trading.orders import COMMAND, ORDER_EVENT, CommandKind, EventKind, OrderSide, OrderType, Reason, TimeInForce
from trading.risk import Limits

T0 = 1_710_513_000_000_000_000  # 2024-03-15 10:30 EDT: regular hours
CENT = PRICE_SCALE // 100
BID, ASK = Side.BID, Side.ASK
CASH = 1_000_000 * PRICE_SCALE


def px(cents: int) -> str:
    return format_price(cents * CENT)


class Feed:
    """Book events in ``ItchNormalizer``'s shape (executions and cancels carry the order's side and
    price), applied to a real ``BookEngine`` and then handed to the engine, batch by batch."""

    def __init__(self, engine: Engine, books: BookEngine) -> None:
        self.engine = engine
        self.books = books
        self.seq = 0
        self.orders: dict[int, list] = {}  # feed order id -> [instrument, side, price, size]
        self.pending: list = []

    def now(self) -> int:
        return T0 + 1_000 * self.seq

    def _row(self, action, inst, **fields):
        self.seq += 1
        r = EVENT.empty(1)[0]
        r["ts_event"] = self.now()
        r["ts_recv"] = self.now() + 500
        r["sequence"] = self.seq
        r["instrument_id"] = inst
        r["action"] = action
        r["price"] = UNDEF_PRICE
        r["side"] = Side.NONE
        for k, v in fields.items():
            r[k] = v
        self.pending.append(r)

    def add(self, oid, side, cents, size, inst=1):
        self.orders[oid] = [inst, side, cents * CENT, size]
        self._row(Action.ADD, inst, order_id=oid, side=side, price=cents * CENT, size=size)

    def execute(self, oid, size):
        inst, side, price, left = self.orders[oid]
        self.orders[oid][3] = left - size
        self._row(Action.EXECUTE, inst, order_id=oid, side=side, price=price, size=size, match_id=self.seq + 1)

    def cancel(self, oid, size):
        inst, side, price, left = self.orders[oid]
        self.orders[oid][3] = left - size
        self._row(Action.CANCEL, inst, order_id=oid, side=side, price=price, size=size)

    def delete(self, oid):
        inst, side, price, left = self.orders.pop(oid)
        self._row(Action.DELETE, inst, order_id=oid, side=side, price=price, size=left)

    def trade(self, cents, size, inst=1, side=BID):
        """A non-book trade (hidden liquidity): printed, no book change."""
        self._row(Action.TRADE, inst, side=side, price=cents * CENT, size=size, match_id=self.seq + 1)

    def send(self, status=None) -> list[dict]:
        events = EVENT.empty(len(self.pending))
        for i, r in enumerate(self.pending):
            events[i] = r
        self.pending = []
        self.books.apply(events)
        trades = trades_from_events(events, events["size"].astype(np.uint64), np.zeros(len(events), np.uint8))
        return self.engine.on_feed(self.now(), events, trades, status)


def status_row(inst, state, ts):
    row = STATUS.empty(1)
    row["ts_event"] = ts
    row["instrument_id"] = inst
    row["kind"] = StatusKind.TRADING_ACTION
    row["state"] = state
    row["price_1"] = row["price_2"] = row["price_3"] = UNDEF_PRICE
    return row


def brief(events):
    """(event, client order id, price in cents or None, qty, leaves, liquidity, reason) per event dict."""
    return [(e["event"], e["client_order_id"], None if e["price"] is None else parse_price(e["price"]) // CENT,
             e["qty"], e["leaves"], e["liquidity"], e["reason"]) for e in events]


def ack(coid, cents, qty):
    return ("ack", coid, cents, qty, qty, None, None)


def fill(coid, cents, qty, leaves, liq):
    return ("fill", coid, cents, qty, leaves, liq, None)


def gone(kind, coid, cents, qty, reason):
    return (kind, coid, cents, qty, 0, None, reason)


@pytest.fixture
def feed():
    books = BookEngine(depth=5)
    accounts = {"alice": AccountConfig(cash=CASH, margin=True), "bob": AccountConfig(cash=CASH, margin=True),
                "carol": AccountConfig(cash=CASH, limits=Limits(max_order_qty=1000))}
    audit = []
    engine = Engine({"AAA": 1, "BBB": 2}, accounts, books=books, depth=3,
                    audit=lambda commands, events: audit.append((commands.copy(), events.copy())))
    f = Feed(engine, books)
    f.audit = audit
    yield f
    assert engine.mirror.market_rejects == 0
    for commands, events in audit:  # the market account never shows
        assert not (events["account"] == MARKET_ACCOUNT).any()
        assert not (events["counterparty_id"] >= MARKET_ID_BASE).any()


def order(f, coid, side, typ, qty, cents=None, stop=None, tif="DAY", account="alice", symbol="AAA"):
    return brief(f.engine.order(f.now(), account, coid, symbol, side, typ, qty,
                                price=None if cents is None else px(cents),
                                stop_price=None if stop is None else px(stop), tif=tif))


def book(f, inst=1):
    """The internal book: {side: [(cents, [(who, leaves)])]} with who = "mkt" or the client order id."""
    snap = f.engine.matcher.book(inst)
    names = f.engine._names

    def side(levels):
        return [(p // CENT, [("mkt" if a == MARKET_ACCOUNT else names[o][1], q) for o, q, a in queue])
                for p, queue in levels]
    return side(snap.bids), side(snap.asks)


def ladder(f):
    """A feed book: bids 10.00 x 500, 9.99 x 200; asks 10.01 x 100, 10.02 x 200, 10.03 x 300, 10.04 x 100."""
    f.add(1, BID, 1000, 500)
    f.add(2, BID, 999, 200)
    f.add(11, ASK, 1001, 100)
    f.add(12, ASK, 1002, 200)
    f.add(13, ASK, 1003, 300)
    f.add(14, ASK, 1004, 100)
    assert f.send() == []


# -- queue position -----------------------------------------------------------------------------


def test_a_resting_bid_fills_only_after_the_displayed_size_ahead_is_executed(feed):
    ladder(feed)
    assert order(feed, "b1", "buy", "limit", 100, 1000) == [ack("b1", 1000, 100)]
    assert book(feed)[0] == [(1000, [("mkt", 500), ("b1", 100)]), (999, [("mkt", 200)])]
    feed.execute(1, 300)
    assert feed.send() == []
    feed.execute(1, 200)  # all 500 ahead of us gone: not a share for us yet
    assert feed.send() == []
    assert book(feed)[0][0] == (1000, [("b1", 100)])
    feed.add(3, BID, 1000, 400)  # joins behind us
    feed.execute(3, 150)  # in the feed it is order 3 that trades; here the queue's front does: us
    assert brief(feed.send()) == [fill("b1", 1000, 100, 0, "maker")]
    assert book(feed)[0][0] == (1000, [("mkt", 250)])
    assert feed.engine.positions()[0]["position"] == 100


def test_cancels_come_from_the_back_of_the_queue(feed):
    ladder(feed)
    order(feed, "b1", "buy", "limit", 100, 1000)
    feed.add(3, BID, 1000, 200)  # behind us
    assert feed.send() == []
    assert book(feed)[0][0] == (1000, [("mkt", 500), ("b1", 100), ("mkt", 200)])
    feed.cancel(1, 300)  # in the feed it is ahead of us; we assume the newest shares left
    feed.send()
    assert book(feed)[0][0] == (1000, [("mkt", 400), ("b1", 100)])
    feed.execute(1, 200)
    feed.execute(3, 200)
    assert feed.send() == []  # 400 ahead of us, 400 executed
    feed.add(4, BID, 1000, 100)
    feed.execute(4, 60)
    assert brief(feed.send()) == [fill("b1", 1000, 60, 40, "maker")]


def test_executions_reach_users_priced_through_them_first_and_prints_through_fill_them_entirely(feed):
    ladder(feed)
    assert order(feed, "b1", "buy", "limit", 300, 1000) == [ack("b1", 1000, 300)]
    assert order(feed, "b2", "buy", "limit", 50, 1001) == [ack("b2", 1001, 50), fill("b2", 1001, 50, 0, "taker")]
    # b3 improves the bid: the feed's sellers would have hit it before the displayed 10.00
    assert order(feed, "b3", "buy", "limit", 80, 1001) == [ack("b3", 1001, 80), fill("b3", 1001, 50, 30, "taker")]
    assert book(feed)[0][0] == (1001, [("b3", 30)])
    feed.execute(1, 20)  # a sell of 20 at 10.00: the 10.01 bid comes first
    out = brief(feed.send())
    assert out[0] == fill("b3", 1001, 20, 10, "maker")
    # ... and a print at 10.00 is through 10.01: the rest of b3 fills, at its own price
    assert out[1:] == [fill("b3", 1001, 10, 0, "maker")]
    assert book(feed)[0][0] == (1000, [("mkt", 480), ("b1", 300)])
    feed.trade(999, 50)  # a hidden print at 9.99, through our 10.00 bid: filled entirely
    assert brief(feed.send()) == [fill("b1", 1000, 300, 0, "maker")]


def test_the_feed_moving_through_a_resting_order_fills_it_at_its_price(feed):
    ladder(feed)
    feed.delete(11)
    feed.send()
    assert order(feed, "s1", "sell", "limit", 100, 1001, account="bob") == [ack("s1", 1001, 100)]
    feed.add(5, BID, 1001, 150)  # a buyer at our ask: it would have taken us
    assert brief(feed.send()) == [fill("s1", 1001, 100, 0, "maker")]
    assert feed.engine.mirror.consumed(1) == {("bid", 1001 * CENT): 100}
    assert book(feed)[0][0] == (1001, [("mkt", 50)])
    feed.delete(5)
    feed.send()
    assert feed.engine.mirror.consumed(1) == {}  # the level left the feed: forgotten


# -- sweeps and consumed liquidity --------------------------------------------------------------


def test_a_market_order_sweeps_three_levels_and_consumed_liquidity_is_not_reused(feed):
    ladder(feed)
    ev = order(feed, "m1", "buy", "market", 450, tif="IOC")
    assert ev == [ack("m1", None, 450), fill("m1", 1001, 100, 350, "taker"), fill("m1", 1002, 200, 150, "taker"),
                  fill("m1", 1003, 150, 0, "taker")]
    c = feed.engine.mirror.consumed(1)
    assert c == {("ask", 1001 * CENT): 100, ("ask", 1002 * CENT): 200, ("ask", 1003 * CENT): 150}
    # The feed still shows 10.01 x 100 and 10.02 x 200; another buyer gets what is left.
    ev = order(feed, "m2", "buy", "market", 250, account="bob")
    assert ev == [ack("m2", None, 250), fill("m2", 1003, 150, 100, "taker"), fill("m2", 1004, 100, 0, "taker")]
    assert order(feed, "m3", "buy", "market", 10) == [ack("m3", None, 10),
                                                      gone("cancelled", "m3", None, 10, "no_liquidity")]
    # The feed trades 60 at 10.01: consumed shares leave last, so 40 of ours are still there.
    feed.execute(11, 60)
    feed.send()
    assert feed.engine.mirror.consumed(1)[("ask", 1001 * CENT)] == 40
    feed.execute(11, 40)  # the level is gone from the feed: forgotten
    feed.send()
    assert ("ask", 1001 * CENT) not in feed.engine.mirror.consumed(1)
    feed.add(15, ASK, 1001, 70)  # new liquidity at the same price is there to take
    feed.send()
    assert order(feed, "m4", "buy", "limit", 100, 1001, tif="IOC") == [
        ack("m4", 1001, 100), fill("m4", 1001, 70, 30, "taker"), gone("cancelled", "m4", 1001, 30, "ioc_remainder")]


def test_internal_crossing_and_feed_liquidity_share_one_price_time_queue(feed):
    ladder(feed)
    order(feed, "b1", "buy", "limit", 100, 1000)
    ev = order(feed, "s1", "sell", "limit", 650, 1000, account="bob")  # 500 displayed first, then b1
    assert ev == [ack("s1", 1000, 650), fill("s1", 1000, 500, 150, "taker"), fill("s1", 1000, 100, 50, "taker"),
                  fill("b1", 1000, 100, 0, "maker")]
    assert book(feed) == ([(999, [("mkt", 200)])], [(1000, [("s1", 50)]), (1001, [("mkt", 100)]),
                                                     (1002, [("mkt", 200)]), (1003, [("mkt", 300)])])
    assert feed.engine.mirror.consumed(1) == {("bid", 1000 * CENT): 500}


def test_a_window_of_three_levels_reaches_further_for_big_orders(feed):
    ladder(feed)
    feed.add(16, ASK, 1005, 500)
    feed.add(17, ASK, 1006, 500)
    feed.send()
    ev = order(feed, "m1", "buy", "market", 1000)  # more than the top three levels hold
    assert ev == [ack("m1", None, 1000), fill("m1", 1001, 100, 900, "taker"), fill("m1", 1002, 200, 700, "taker"),
                  fill("m1", 1003, 300, 400, "taker"), fill("m1", 1004, 100, 300, "taker"),
                  fill("m1", 1005, 300, 0, "taker")]
    ev = order(feed, "b1", "buy", "limit", 50, 1006, tif="FOK")  # a limit deep in the book
    assert ev == [ack("b1", 1006, 50), fill("b1", 1005, 50, 0, "taker")]


# -- every order type and time in force ---------------------------------------------------------


def test_limit_day_rests_after_a_partial_fill_and_expires_at_the_session_end(feed):
    ladder(feed)
    ev = order(feed, "l1", "buy", "limit", 150, 1001)
    assert ev == [ack("l1", 1001, 150), fill("l1", 1001, 100, 50, "taker")]
    assert order(feed, "g1", "buy", "limit", 10, 995, tif="GTC") == [ack("g1", 995, 10)]
    assert book(feed)[0][0] == (1001, [("l1", 50)])
    rows = feed.engine.session_end(feed.now())  # the rows version of end_session
    assert rows.dtype == ORDER_EVENT.dtype
    assert [(EventKind(r["kind"]), int(r["qty"]), Reason(r["reason"])) for r in rows] == [
        (EventKind.EXPIRED, 50, Reason.SESSION_END)]
    assert brief(feed.engine._dicts(rows)) == [gone("expired", "l1", 1001, 50, "session_end")]
    assert feed.engine.end_session(feed.now()) == []  # nothing left to expire
    assert feed.engine.order_state("alice", "g1")["live"] and not feed.engine.order_state("alice", "l1")["live"]


def test_ioc_and_fok_against_the_feed(feed):
    ladder(feed)
    assert order(feed, "i1", "buy", "limit", 150, 1002, tif="IOC") == [
        ack("i1", 1002, 150), fill("i1", 1001, 100, 50, "taker"), fill("i1", 1002, 50, 0, "taker")]
    assert order(feed, "i2", "sell", "limit", 800, 999, tif="IOC", account="bob") == [
        ack("i2", 999, 800), fill("i2", 1000, 500, 300, "taker"), fill("i2", 999, 200, 100, "taker"),
        gone("cancelled", "i2", 999, 100, "ioc_remainder")]
    # FOK: 150 + 300 are left at or below 10.03: 500 is too many, nothing trades
    assert order(feed, "f1", "buy", "limit", 500, 1003, tif="FOK") == [
        ack("f1", 1003, 500), gone("cancelled", "f1", 1003, 500, "fok_unfilled")]
    assert order(feed, "f2", "buy", "limit", 450, 1003, tif="FOK") == [
        ack("f2", 1003, 450), fill("f2", 1002, 150, 300, "taker"), fill("f2", 1003, 300, 0, "taker")]


def test_a_stop_triggers_on_a_feed_print_and_enters_as_a_market_order(feed):
    ladder(feed)
    assert order(feed, "st", "buy", "stop", 150, stop=1002) == [ack("st", None, 150)]
    feed.execute(11, 100)  # prints 10.01: below the stop
    assert feed.send() == []
    feed.execute(12, 20)  # prints 10.02: the stop fires, then takes what the feed shows
    assert brief(feed.send()) == [("triggered", "st", 1002, 150, 150, None, None),
                                  fill("st", 1002, 150, 0, "taker")]
    assert feed.engine.mirror.consumed(1) == {("ask", 1002 * CENT): 150}
    assert book(feed)[1][0] == (1002, [("mkt", 30)])


def test_a_sell_stop_limit_triggers_on_a_hidden_print_and_rests(feed):
    ladder(feed)
    assert order(feed, "sl", "sell", "stop_limit", 100, 1001, stop=999, account="alice") == [ack("sl", 1001, 100)]
    feed.trade(999, 10)  # a non-book print at the stop
    assert brief(feed.send()) == [("triggered", "sl", 999, 100, 100, None, None)]
    assert book(feed)[1][0] == (1001, [("mkt", 100), ("sl", 100)])


def test_cancel_and_modify_against_the_feed_queue(feed):
    ladder(feed)
    order(feed, "b1", "buy", "limit", 100, 1000)
    feed.add(3, BID, 1000, 100)
    feed.send()
    assert brief(feed.engine.modify(feed.now(), "alice", "b1", qty=60)) == [("modified", "b1", 1000, 60, 60, None,
                                                                               None)]
    assert book(feed)[0][0] == (1000, [("mkt", 500), ("b1", 60), ("mkt", 100)])  # a decrease keeps its place
    feed.engine.modify(feed.now(), "alice", "b1", qty=80)
    assert book(feed)[0][0] == (1000, [("mkt", 500), ("mkt", 100), ("b1", 80)])  # an increase goes to the back
    ev = brief(feed.engine.modify(feed.now(), "alice", "b1", price="10.01"))
    assert ev == [("modified", "b1", 1001, 80, 80, None, None), fill("b1", 1001, 80, 0, "taker")]
    order(feed, "b2", "buy", "limit", 10, 990)
    assert brief(feed.engine.cancel(feed.now(), "alice", "b2")) == [gone("cancelled", "b2", 990, 10, "user_cancel")]
    assert brief(feed.engine.cancel(feed.now(), "alice", "b2")) == [("reject", "b2", None, 0, 0, None,
                                                                       "unknown_order")]
    assert brief(feed.engine.cancel(feed.now(), "alice", "never")) == [("reject", "never", None, 0, 0, None,
                                                                          "unknown_order")]


# -- risk in the path ---------------------------------------------------------------------------


def test_a_halt_from_the_feed_blocks_orders_until_it_is_lifted(feed):
    ladder(feed)
    order(feed, "b1", "buy", "limit", 100, 998)
    feed.add(21, BID, 998, 10)
    feed.send(status=status_row(1, TradingState.HALTED, feed.now()))
    assert order(feed, "b2", "buy", "limit", 100, 1000) == [("reject", "b2", 1000, 100, 0, None, "halted")]
    assert order(feed, "b3", "buy", "limit", 100, 1000, symbol="BBB")[0][0] == "ack"  # only AAA is halted
    assert brief(feed.engine.cancel(feed.now(), "alice", "b1"))[0][0] == "cancelled"  # cancels still go
    feed.send(status=status_row(1, TradingState.TRADING, feed.now()))
    assert order(feed, "b4", "buy", "limit", 100, 1000)[0][0] == "ack"


def test_rejects_with_reason_codes(feed):
    ladder(feed)
    now = feed.now()
    e = feed.engine
    assert brief(e.order(now, "alice", "x1", "ZZZ", "buy", "limit", 1, price="1"))[0][6] == "unknown_symbol"
    assert brief(e.order(now, "nobody", "x2", "AAA", "buy", "limit", 1, price="1"))[0][6] == "unknown_account"
    assert brief(e.order(now, "alice", "x3", "AAA", "up", "limit", 1, price="10"))[0][6] == "invalid_order"
    assert brief(e.order(now, "alice", "x4", "AAA", "buy", "limit", 0, price="10"))[0][6] == "bad_qty"
    assert brief(e.order(now, "alice", "x5", "AAA", "buy", "limit", 1, price="ten"))[0][6] == "bad_price"
    assert brief(e.order(now, "alice", "x6", "AAA", "buy", "limit", 1, price="10.001"))[0][0] == "ack"
    assert brief(e.order(now, "alice", "x6", "AAA", "buy", "limit", 1, price="10"))[0][6] == "duplicate_client_order_id"
    assert brief(e.order(now, "carol", "x7", "AAA", "buy", "limit", 1001, price="10"))[0][6] == "size_limit"
    assert brief(e.order(now, "carol", "x8", "AAA", "sell_short", "limit", 10, price="10.05"))[0][6] == \
        "short_not_allowed"
    assert brief(e.order(now, "alice", "x9", "AAA", "buy", "limit", 1, price="50"))[0][6] == "price_band"
    e.kill("alice")
    assert brief(e.order(now, "alice", "x10", "AAA", "buy", "limit", 1, price="10"))[0][6] == "kill_switch"
    e.release("alice")
    assert brief(e.order(now, "alice", "x11", "AAA", "buy", "limit", 1, price="10"))[0][0] == "ack"
    assert brief(e.order(T0 - 4 * 3600 * 10**9, "alice", "x12", "AAA", "buy", "limit", 1, price="10"))[0][6] == \
        "outside_market_hours"


def test_rejects_show_what_the_user_sent(feed):
    ladder(feed)
    now = feed.now()
    e = feed.engine
    ev = e.order(now, "alice", "z1", "ZZZ", "sell", "limit", 5, price="1")
    assert [(x["event"], x["symbol"], x["side"], x["reason"]) for x in ev] == [
        ("reject", "ZZZ", "sell", "unknown_symbol")]
    assert order(feed, "b1", "sell", "limit", 10, 1005, account="bob", symbol="AAA")[0][0] == "ack"
    e.cancel(now, "bob", "b1")
    for ev in (e.cancel(now, "bob", "b1"), e.modify(now, "bob", "b1", qty=5)):  # no longer live: the order's terms
        assert [(x["event"], x["symbol"], x["side"], x["reason"]) for x in ev] == [
            ("reject", "AAA", "sell", "unknown_order")]
    ev = e.cancel(now, "alice", "z1")  # never accepted: its symbol as sent
    assert [(x["symbol"], x["side"], x["reason"]) for x in ev] == [("ZZZ", "sell", "unknown_order")]


def test_a_market_order_without_a_price_to_value_it_at_is_refused_as_such(feed):
    feed.add(11, ASK, 1001, 100)  # a one-sided book: no mid, and nothing printed
    feed.send()
    ev = order(feed, "m1", "buy", "market", 10)
    assert ev == [("reject", "m1", None, 10, 0, None, "no_reference_price")]
    feed.trade(1001, 50)  # the feed prints: the last price values it
    feed.send()
    assert order(feed, "m2", "buy", "market", 10) == [ack("m2", None, 10), fill("m2", 1001, 10, 0, "taker")]


# -- the batch path -----------------------------------------------------------------------------


def test_batch_submit_matches_the_string_api_and_refuses_market_ids(feed):
    ladder(feed)
    rows = COMMAND.empty(4)
    rows["price"] = rows["stop_price"] = UNDEF_PRICE
    rows["ts"] = feed.now()
    rows["account"] = 0
    rows["instrument_id"] = 1
    rows["kind"] = [CommandKind.NEW, CommandKind.NEW, CommandKind.CANCEL, CommandKind.TRIGGER]
    rows["order_id"] = [7, MARKET_ID_BASE + 5, 7, 0]
    rows["side"] = OrderSide.BUY
    rows["order_type"] = OrderType.LIMIT
    rows["tif"] = TimeInForce.DAY
    rows["qty"] = 120
    rows["price"][:2] = 1001 * CENT
    events = feed.engine.submit(rows, client_ids=["c7", None, None, None])
    assert events.dtype == ORDER_EVENT.dtype
    got = [(EventKind(e["kind"]).name, int(e["order_id"]), int(e["qty"]), Reason(e["reason"]).name)
           for e in events]
    assert got == [("REJECT", MARKET_ID_BASE + 5, 120, "INVALID_ORDER"), ("REJECT", 0, 120, "INVALID_ORDER"),
                   ("ACK", 7, 120, "NONE"), ("FILL", 7, 100, "NONE"), ("CANCELLED", 7, 20, "USER_CANCEL")]
    assert feed.engine.order_state("alice", "c7") == {"order_id": 7, "live": False}
    commands, handed = feed.audit[-1]
    assert len(commands) == 4 and np.array_equal(handed, events)


def test_portfolio_and_marks_follow_the_fills(feed):
    ladder(feed)
    order(feed, "m1", "buy", "market", 300)
    pos = feed.engine.positions()
    assert pos == [{"account": "alice", "symbol": "AAA", "position": 300, "cost": "3005.00",
                    "avg_price": "10.016666666", "mark": "10.005", "market_value": "3001.50", "unrealized": "-3.50"}]
    feed.delete(1)  # the bid moves down a cent: the mid follows (the feed still shows the asks we took)
    feed.send()
    assert feed.engine.positions()[0]["mark"] == "10.00"
    acct = feed.engine.account("alice")
    assert acct["cash"] == format_price(CASH - 3005 * PRICE_SCALE) and acct["unrealized"] == "-5.00"


def test_prices_parse_and_print_exactly():
    assert parse_price("189.5") == 189_500_000_000 and parse_price(3) == 3 * PRICE_SCALE
    assert parse_price("0.000000001") == 1 and format_price(189_500_000_000) == "189.50"
    assert format_price(1) == "0.000000001" and format_price(int(UNDEF_PRICE)) is None
    with pytest.raises(ValueError):
        parse_price("0.0000000001")


def test_constructor_refuses_bad_configuration(tmp_path):
    with pytest.raises(ValueError):
        Engine({}, {"a": AccountConfig(cash=0)})
    with pytest.raises(ValueError):
        Engine({"A": 1, "B": 1}, {"a": AccountConfig(cash=0)})
    with pytest.raises(ValueError):
        Engine({"A": 1}, {"a": AccountConfig(cash=0)}, mark="vwap")
    with pytest.raises(ValueError):
        Engine({"A": 1}, {"a": AccountConfig(cash=0)}).on_feed(T0, EVENT.empty(0))


def test_an_audit_callable_with_three_parameters_gets_the_client_order_ids():
    got = []
    engine = Engine({"AAA": 1}, {"alice": AccountConfig(cash=CASH)},
                    audit=lambda commands, events, client_ids: got.append((len(commands), len(events), client_ids)))
    engine.mark(T0, {"AAA": "10"})
    engine.order(T0, "alice", "first", "AAA", "buy", "limit", 5, price="9.99")
    engine.cancel(T0 + 1, "alice", "first")
    assert got == [(1, 1, ["first"]), (1, 1, None)]
