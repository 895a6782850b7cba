"""trading.market: the feed's levels read into rows, the market account's commands they become, the
consumed table, when instruments sync; then a seeded random feed with random users through the engine,
checking after every batch that each mirrored level shows displayed minus consumed, and nothing else."""
from __future__ import annotations

import numpy as np
import pytest

from orderbook.engine import BookEngine
from parsers.schema import EVENT, PRICE_SCALE, TRADE, UNDEF_PRICE, Action, Side
from parsers.trades import trades_from_events
from tests.orderbook.event_streams import T0 as STREAM_T0, random_events
from trading import market as mk
from trading.engine import AccountConfig, Engine
from trading.market import (MARKET_ACCOUNT, MARKET_ID_BASE, MARKET_INPUT, TAKER_ID_BASE, MarketInputKind,
                            MarketMirror, SyncMode)
from trading.matching import MatchingEngine
from trading.orders import ORDER_EVENT, CommandKind, EventKind, Liquidity, OrderSide, OrderType, TimeInForce, commands

CENT = PRICE_SCALE // 100
UNDEF = int(UNDEF_PRICE)
K = MarketInputKind
MID = MARKET_ID_BASE


def test_market_input_layout():
    dt = MARKET_INPUT.dtype
    assert dt.itemsize == 32
    assert [(n, dt.fields[n][1]) for n in dt.names] == [
        ("ts", 0), ("price", 8), ("size", 16), ("instrument_id", 24), ("kind", 28), ("side", 29), ("_reserved", 30)]


def feed_book(levels, inst=1):
    """A BookEngine holding ``levels``: [(side, cents, size)], one order each."""
    books = BookEngine()
    ev = EVENT.empty(len(levels))
    for i, (side, cents, size) in enumerate(levels):
        ev[i]["sequence"] = i + 1
        ev[i]["instrument_id"] = inst
        ev[i]["action"] = Action.ADD
        ev[i]["order_id"] = i + 1
        ev[i]["side"] = side
        ev[i]["price"] = cents * CENT
        ev[i]["size"] = size
    books.apply(ev)
    return books


LADDER = [(Side.BID, 1000, 500), (Side.BID, 999, 200), (Side.BID, 998, 300), (Side.BID, 997, 100),
          (Side.ASK, 1001, 100), (Side.ASK, 1002, 200), (Side.ASK, 1003, 300)]


def user(oid, side, cents, qty, typ=OrderType.LIMIT, tif=TimeInForce.DAY, account=1, inst=1):
    return dict(kind=CommandKind.NEW, order_id=oid, side=side, price=cents * CENT if cents else UNDEF, qty=qty,
                order_type=typ, tif=tif, account=account, instrument_id=inst, ts=5)


def rows_of(rows):
    return [(MarketInputKind(r["kind"]).name, chr(r["side"]) if r["side"] else "", None if r["price"] == UNDEF
             else int(r["price"]) // CENT, int(r["size"])) for r in rows]


def cmds_of(cmds):
    return [(CommandKind(c["kind"]).name, int(c["order_id"]) - MID if c["order_id"] >= MID else int(c["order_id"]),
             None if c["price"] == UNDEF else int(c["price"]) // CENT, int(c["qty"])) for c in cmds]


def queue(matcher, inst=1):
    b = matcher.book(inst)
    show = lambda levels: [(p // CENT, [(o - MID if a == MARKET_ACCOUNT else f"u{o}", q) for o, q, a in qu])
                           for p, qu in levels]
    return show(b.bids), show(b.asks)


def sync(mirror, matcher, books, reach=None, need=None, inst=1, mode=SyncMode.POST):
    rows = mirror.read(7, np.array([inst]), books, matcher, reach, need)
    cmds = mirror.commands(rows, mode, matcher)
    events = mirror.settle(matcher.submit(cmds), cmds) if len(cmds) else ORDER_EVENT.empty(0)
    return rows, cmds, events


# -- reading the feed ---------------------------------------------------------------------------


def test_read_takes_the_top_levels_and_the_mid():
    mirror, matcher = MarketMirror(4, depth=2), MatchingEngine(instruments=4)
    rows = mirror.read(7, np.array([1]), feed_book(LADDER), matcher)
    assert rows_of(rows) == [("WINDOW", "B", 999, 0), ("LEVEL", "B", 1000, 500), ("LEVEL", "B", 999, 200),
                             ("WINDOW", "A", 1002, 0), ("LEVEL", "A", 1001, 100), ("LEVEL", "A", 1002, 200),
                             ("MARK", "", 1000, 0)]  # mid 10.005 floors to 10.00 in cents here
    assert int(rows[-1]["price"]) == 10_005_000_000
    assert mirror.synced[1] == 1 and list(mirror.ws[1, mk.W_MORE:mk.W_MORE + 2]) == [1, 1]


def test_the_window_reaches_users_incoming_limits_and_market_sizes():
    mirror, matcher = MarketMirror(4, depth=1), MatchingEngine(instruments=4)
    books = feed_book(LADDER)
    matcher.submit(commands(user(1, OrderSide.BUY, 998, 10)))  # a user resting three levels down
    rows = mirror.read(7, np.array([1]), books, matcher)
    assert rows_of(rows)[:4] == [("WINDOW", "B", 998, 0), ("LEVEL", "B", 1000, 500), ("LEVEL", "B", 999, 200),
                                 ("LEVEL", "B", 998, 300)]
    # the other side reaches down to a user's best bid (asks at or below it would cross it): none here
    assert rows_of(rows)[4:6] == [("WINDOW", "A", 1001, 0), ("LEVEL", "A", 1001, 100)]
    reach = np.array([[mk._NO_WINDOW, -1003 * CENT]])  # an incoming buy limit at 10.03
    need = np.array([[450, 0]])  # an incoming market sell of 450: 500 at the first level covers it
    rows = mirror.read(7, np.array([1]), books, matcher, reach, need)  # read again: only what is new (DIFF)
    assert rows_of(rows) == [("WINDOW", "A", 1003, 1), ("LEVEL", "A", 1002, 200), ("LEVEL", "A", 1003, 300)]
    need = np.array([[1050, 0]])
    rows = mirror.read(7, np.array([1]), books, matcher, None, need)
    assert [r for r in rows_of(rows) if r[0] == "WINDOW"][0] == ("WINDOW", "B", 997, 1)  # 500+200+300+100


def test_consumed_outside_the_window_is_read_as_depth():
    mirror, matcher = MarketMirror(4, depth=1), MatchingEngine(instruments=4)
    mirror.cu[1, 1, 0] = (1003 * CENT, 40)
    mirror.cu[1, 1, 1] = (1005 * CENT, 10)
    mirror.cn[1, 1] = 2
    rows = mirror.read(7, np.array([1]), feed_book(LADDER), matcher)
    assert [r for r in rows_of(rows) if r[0] == "DEPTH"] == [("DEPTH", "A", 1003, 300), ("DEPTH", "A", 1005, 0)]


# -- the market's commands ----------------------------------------------------------------------


def test_increases_join_at_the_tail_and_decreases_shrink_from_the_tail():
    mirror, matcher = MarketMirror(4, depth=1), MatchingEngine(instruments=4)
    books = feed_book([(Side.BID, 1000, 500)])
    _, cmds, _ = sync(mirror, matcher, books)
    assert cmds_of(cmds) == [("NEW", 1, 1000, 500)]
    matcher.submit(commands(user(7, OrderSide.BUY, 1000, 100)))
    books = feed_book([(Side.BID, 1000, 500), (Side.BID, 1000, 200)])  # +200: behind the user
    _, cmds, _ = sync(mirror, matcher, books)
    assert cmds_of(cmds) == [("NEW", 2, 1000, 200)]
    books = feed_book([(Side.BID, 1000, 500), (Side.BID, 1000, 300)])  # +100: the tail mirror order grows
    _, cmds, _ = sync(mirror, matcher, books)
    assert cmds_of(cmds) == [("MODIFY", 2, None, 300)]
    assert queue(matcher)[0] == [(1000, [(1, 500), ("u7", 100), (2, 300)])]
    books = feed_book([(Side.BID, 1000, 350)])  # -450: the newest 300 go, then 150 of the oldest
    _, cmds, _ = sync(mirror, matcher, books)
    assert cmds_of(cmds) == [("CANCEL", 2, None, 0), ("MODIFY", 1, None, 350)]
    assert queue(matcher)[0] == [(1000, [(1, 350), ("u7", 100)])]
    books = feed_book([(Side.BID, 999, 50)])  # the level left the feed; a new one below
    _, cmds, _ = sync(mirror, matcher, books)
    assert cmds_of(cmds) == [("CANCEL", 1, None, 0), ("NEW", 3, 999, 50)]
    assert queue(matcher)[0] == [(1000, [("u7", 100)]), (999, [(3, 50)])]


def test_levels_outside_the_window_are_removed():
    mirror, matcher = MarketMirror(4, depth=3), MatchingEngine(instruments=4)
    sync(mirror, matcher, feed_book(LADDER))
    assert [p for p, _ in queue(matcher)[0]] == [1000, 999, 998]
    mirror.depth = 1
    _, cmds, _ = sync(mirror, matcher, feed_book(LADDER))
    assert sorted(cmds_of(cmds)) == [("CANCEL", 2, None, 0), ("CANCEL", 3, None, 0), ("CANCEL", 5, None, 0),
                                     ("CANCEL", 6, None, 0)]
    assert queue(matcher) == ([(1000, [(1, 500)])], [(1001, [(4, 100)])])


def test_pre_adds_back_executions_and_takers_reach_the_user():
    mirror, matcher = MarketMirror(4, depth=2), MatchingEngine(instruments=4)
    books = feed_book([(Side.BID, 1000, 500), (Side.BID, 999, 200)])
    sync(mirror, matcher, books)
    matcher.submit(commands(user(7, OrderSide.BUY, 1000, 100)))
    # The batch: a bid at 10.01 came and was executed (30); 10.00 executed 520: the 500 displayed before
    # and 20 of a bid added in the batch (behind the user). The feed now shows 10.00 x 0.
    books = feed_book([(Side.BID, 999, 200)])
    rows = mirror.read(7, np.array([1]), books, matcher)
    execs = MARKET_INPUT.empty(3)
    execs["kind"] = K.EXEC
    execs["instrument_id"] = 1
    execs["side"] = Side.BID
    execs["price"] = [1001 * CENT, 1000 * CENT, 1000 * CENT]
    execs["size"] = [30, 500, 20]
    rows = np.concatenate([rows, execs])
    cmds = mirror.commands(rows, SyncMode.PRE, matcher)
    taker = TAKER_ID_BASE - MID
    assert cmds_of(cmds) == [("NEW", 3, 1000, 20), ("NEW", 4, 1001, 30),  # the sizes before the executions
                             ("NEW", taker + 1, 1001, 30), ("NEW", taker + 2, 1000, 500), ("NEW", taker + 3, 1000, 20)]
    assert list(cmds["tif"][2:]) == [TimeInForce.IOC] * 3 and list(cmds["side"][2:]) == [OrderSide.SELL] * 3
    assert queue(matcher)[0] == [(1000, [(1, 500), ("u7", 100)]), (999, [(2, 200)])]
    events = mirror.settle(matcher.submit(cmds), cmds)
    # each taker takes the level it stands for; the last 20 reach the user, ahead of the new bid
    assert [(EventKind(e["kind"]).name, int(e["qty"]), int(e["leaves"])) for e in events] == [("FILL", 20, 80)]
    cmds = mirror.commands(rows, SyncMode.POST, matcher)
    assert cmds_of(cmds) == [("CANCEL", 3, None, 0)]
    matcher.submit(cmds)
    assert queue(matcher)[0] == [(1000, [("u7", 80)]), (999, [(2, 200)])]


def test_prints_sweep_only_where_a_user_is_through_or_a_stop_is_held():
    mirror, matcher = MarketMirror(4, depth=2), MatchingEngine(instruments=4)
    books = feed_book(LADDER)
    sync(mirror, matcher, books)
    prints = MARKET_INPUT.empty(1)
    prints["kind"] = K.PRINT
    prints["instrument_id"] = 1
    prints["price"] = 1000 * CENT
    rows = np.concatenate([mirror.read(7, np.array([1]), books, matcher), prints])
    assert cmds_of(mirror.commands(rows, SyncMode.POST, matcher)) == []  # only mirror orders through it
    matcher.submit(commands(user(7, OrderSide.SELL, 0, 10, typ=OrderType.STOP, account=2) | {"stop_price": 995 * CENT}))
    assert cmds_of(mirror.commands(rows, SyncMode.POST, matcher)) == [("SWEEP", 0, 1000, 0)]


def test_a_full_output_buffer_is_grown_and_ids_stay_dense():
    mirror, matcher = MarketMirror(4, depth=10), MatchingEngine(instruments=4)
    mirror._cmds = mirror._cmds[:2]
    _, cmds, _ = sync(mirror, matcher, feed_book(LADDER))
    assert [int(i) - MID for i in cmds["order_id"]] == list(range(1, 8))
    assert len(mirror._cmds) >= 7


# -- settling the matcher's answer --------------------------------------------------------------


def test_settle_drops_the_market_and_remembers_what_users_took():
    mirror, matcher = MarketMirror(4, depth=2), MatchingEngine(instruments=4)
    sync(mirror, matcher, feed_book(LADDER))
    raw = matcher.submit(commands(user(7, OrderSide.BUY, 1002, 250)))
    assert (raw["account"] == MARKET_ACCOUNT).sum() == 2
    events = mirror.settle(raw, commands())
    assert [(EventKind(e["kind"]).name, int(e["counterparty_id"]), int(e["price"]) // CENT, int(e["qty"]))
            for e in events] == [("ACK", 0, 1002, 250), ("FILL", 0, 1001, 100), ("FILL", 0, 1002, 150)]
    assert mirror.consumed(1) == {("ask", 1001 * CENT): 100, ("ask", 1002 * CENT): 150}
    # a new mirror order crossing a resting user: consumed at the mirror order's own price
    mirror2, matcher2 = MarketMirror(4, depth=2), MatchingEngine(instruments=4)
    matcher2.submit(commands(user(9, OrderSide.SELL, 995, 40, account=2)))
    _, cmds, events = sync(mirror2, matcher2, feed_book([(Side.BID, 1000, 100)]))
    assert [(EventKind(e["kind"]).name, int(e["price"]) // CENT, int(e["qty"]), Liquidity(e["liquidity"]).name)
            for e in events] == [("FILL", 995, 40, "MAKER")]
    assert mirror2.consumed(1) == {("bid", 1000 * CENT): 40}


def test_settle_grows_the_consumed_table():
    mirror = MarketMirror(2)
    events = ORDER_EVENT.empty(6)
    events["kind"] = EventKind.FILL
    events["account"] = MARKET_ACCOUNT
    events["order_id"] = MID + 1
    events["liquidity"] = Liquidity.MAKER
    events["side"] = OrderSide.SELL
    events["instrument_id"] = [1, 1, 1, 1, 1, 9]
    events["price"] = np.arange(6) * CENT + 100 * CENT
    events["qty"] = 5
    assert mirror.settle(events, commands()).size == 0
    assert len(mirror.consumed(1)) == 5 and mirror.consumed(9) == {("ask", 105 * CENT): 5}


# -- when to sync -------------------------------------------------------------------------------


def test_plan_syncs_new_dirty_and_out_of_window_instruments_only():
    mirror, matcher = MarketMirror(4, depth=1), MatchingEngine(instruments=4)
    books = feed_book(LADDER)
    known = np.array([0, 1, 1, 0], dtype=np.uint8)
    batch = commands(user(1, OrderSide.BUY, 1000, 10), user(2, OrderSide.BUY, 1000, 10, inst=3))
    insts, reach, need = mirror.plan(batch, known, matcher)
    assert insts.tolist() == [1]  # instrument 3 is not traded here
    mirror.read(7, insts, books, matcher, reach, need)
    assert mirror.plan(batch, known, matcher)[0].tolist() == []  # synced, clean, inside the window
    deep = commands(user(3, OrderSide.BUY, 998, 10))  # joins three levels down: the bid window must reach it
    assert mirror.plan(deep, known, matcher)[0].tolist() == [1]
    big = commands(user(4, OrderSide.SELL, 0, 600, typ=OrderType.MARKET))  # more than the top bid shows
    assert mirror.plan(big, known, matcher)[0].tolist() == [1]
    touched = EVENT.empty(3)
    touched["instrument_id"] = [1, 2, 1]
    holders = np.zeros(4, dtype=np.int64)
    # a feed batch: 1 is synced but no user is there (nothing read), 2 was never synced: both only dirty
    assert len(mirror.feed_rows(8, touched, TRADE.empty(0), books, matcher, holders)) == 0
    assert mirror.dirty[1] == 1 and mirror.dirty[2] == 1
    assert mirror.plan(batch, known, matcher)[0].tolist() == [1]


def book_events(*rows, inst=1):
    """EVENT rows in ``ItchNormalizer``'s shape: (action, order id, side, cents, size)."""
    ev = EVENT.empty(len(rows))
    for i, (action, oid, side, cents, size) in enumerate(rows):
        ev[i]["sequence"], ev[i]["instrument_id"], ev[i]["action"] = 100 + i, inst, action
        ev[i]["order_id"], ev[i]["side"], ev[i]["price"], ev[i]["size"] = oid, side, cents * CENT, size
    return ev


def test_feed_rows_read_only_what_changed_and_only_where_users_are():
    mirror, matcher = MarketMirror(4, depth=2), MatchingEngine(instruments=4)
    books = feed_book(LADDER)
    holders = np.zeros(4, dtype=np.int64)

    def feed(*rows):
        ev = book_events(*rows)
        books.apply(ev)
        trades = trades_from_events(ev, ev["size"].astype(np.uint64), np.zeros(len(ev), np.uint8))
        return rows_of(mirror.feed_rows(9, ev, trades, books, matcher, holders))

    assert feed((Action.ADD, 20, Side.BID, 1000, 50)) == []  # never synced: nothing to read
    sync(mirror, matcher, books)  # the first read: FULL
    matcher.submit(commands(user(9, OrderSide.BUY, 999, 10)))  # a user: the instrument is watched
    assert feed((Action.ADD, 21, Side.BID, 1000, 50)) == [("WINDOW", "B", 999, 1), ("LEVEL", "B", 1000, 600)]
    assert feed((Action.ADD, 22, Side.BID, 990, 70)) == [] and mirror.dirty[1] == 0  # below the window
    # an execution at 10.00 and as much added back: the level is listed although its size is the same
    assert feed((Action.EXECUTE, 1, Side.BID, 1000, 100), (Action.ADD, 23, Side.BID, 1000, 100)) == [
        ("WINDOW", "B", 999, 1), ("LEVEL", "B", 1000, 600), ("EXEC", "B", 1000, 100), ("PRINT", "", 1000, 100)]
    assert mirror.scalars[mk.S_EXECS] == 1
    # an execution at a price other than its order's (ITCH C): the order's level is found all the same
    assert feed((Action.EXECUTE, 2, Side.BID, 1000, 50)) == [
        ("WINDOW", "B", 999, 1), ("LEVEL", "B", 1000, 600), ("LEVEL", "B", 999, 150), ("EXEC", "B", 1000, 50),
        ("PRINT", "", 1000, 50)]
    assert feed((Action.DELETE, 5, Side.ASK, 1001, 100)) == [  # the best ask left: the window and the mid move
        ("WINDOW", "A", 1003, 1), ("LEVEL", "A", 1001, 0), ("LEVEL", "A", 1003, 300), ("MARK", "", 1001, 0)]
    matcher.submit(commands(dict(kind=CommandKind.CANCEL, order_id=9, account=1, ts=6)))
    assert feed((Action.ADD, 24, Side.BID, 1000, 5)) == [] and mirror.dirty[1] == 1  # nobody there: only dirty
    holders[1] = 1  # someone holds it: its mark is still read when it moves
    assert feed((Action.ADD, 25, Side.ASK, 1002, 5)) == []
    assert feed((Action.DELETE, 6, Side.ASK, 1002, 200), (Action.DELETE, 25, Side.ASK, 1002, 5)) == [
        ("MARK", "", 1001, 0)]
    assert int(mirror.feed_rows(9, EVENT.empty(0), TRADE.empty(0), books, matcher, holders).size) == 0


def test_mirror_orders_that_trade_with_each_other_make_the_next_read_full():
    mirror, matcher = MarketMirror(4, depth=2), MatchingEngine(instruments=4)
    sync(mirror, matcher, feed_book(LADDER))
    matcher.submit(commands(user(9, OrderSide.BUY, 998, 10)))
    crossed = feed_book(LADDER + [(Side.BID, 1002, 150)])  # a crossed feed book: the new bid takes mirror asks
    rows, cmds, events = sync(mirror, matcher, crossed)
    assert len(events) == 0 and mirror.stale[1] == 1  # nothing reported; the asks are short now
    known = np.array([0, 1, 0, 0], dtype=np.uint8)
    assert mirror.plan(commands(user(10, OrderSide.SELL, 1005, 1)), known, matcher)[0].tolist() == [1]
    rows, _, _ = sync(mirror, matcher, feed_book(LADDER))
    assert [r for r in rows_of(rows) if r[0] == "WINDOW"] == [("WINDOW", "B", 998, 0), ("WINDOW", "A", 1002, 0)]
    assert mirror.stale[1] == 0 and matcher.levels(1)[1] == [(1001 * CENT, 100, 1), (1002 * CENT, 200, 1)]


# -- random feed and users through the engine ---------------------------------------------------


def _mirror_invariant(engine: Engine, books: BookEngine, inst: int) -> None:
    """Inside the window each level holds displayed - consumed mirror shares; outside it none."""
    mirror = engine.mirror
    bids, asks = engine.matcher.book(inst).bids, engine.matcher.book(inst).asks
    feed = books.l2(inst)
    for s, (levels, shown) in enumerate(((bids, feed[0]), (asks, feed[1]))):
        lim = int(mirror.ws[inst, mk.W_KEY + s])
        displayed = {p: z for p, z, _ in shown}
        consumed = {p: q for (side, p), q in mirror.consumed(inst).items() if side == ("bid", "ask")[s]}
        mirrored = {p: sum(q for _, q, a in queue if a == MARKET_ACCOUNT) for p, queue in levels}
        for p, q in consumed.items():
            assert q <= displayed.get(p, 0), (inst, s, p)
        for p in set(displayed) | set(mirrored):
            key = p if s == 0 else -p
            want = max(0, displayed.get(p, 0) - consumed.get(p, 0)) if key >= lim else 0
            assert mirrored.get(p, 0) == want, (inst, s, p, lim)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_random_feed_and_users_keep_the_mirror_exact(seed):
    rng = np.random.default_rng(seed)
    events = random_events(seed, 30_000, instruments=[1, 2, 3])
    events["ts_event"] = events["ts_event"] - STREAM_T0 + 1_710_513_000_000_000_000  # 10:30, regular hours
    books = BookEngine(depth=5)
    cash = 10**9 * PRICE_SCALE
    engine = Engine({"A": 1, "B": 2, "C": 3}, {f"u{i}": AccountConfig(cash=cash, margin=True) for i in range(4)},
                    books=books, depth=3)
    fills = 0
    for start in range(0, len(events), 60):
        batch = events[start:start + 60]
        books.apply(batch)
        trades = trades_from_events(batch, batch["size"].astype(np.uint64), np.zeros(len(batch), np.uint8))
        out = engine.feed(int(batch["ts_event"][-1]), batch, trades)
        fills += int((out["kind"] == EventKind.FILL).sum())
        for _ in range(rng.integers(0, 4)):
            inst = int(rng.integers(1, 4))
            bids, asks = books.l2(inst, 1)
            if not bids or not asks:
                continue
            side = "buy" if rng.random() < 0.5 else "sell"
            ref = bids[0][0] if side == "buy" else asks[0][0]
            offset = int(rng.integers(-3, 5)) * CENT * (1 if side == "sell" else -1)
            typ = rng.choice(["limit", "limit", "limit", "market", "stop"])
            price = (ref + offset) / PRICE_SCALE
            stop = (asks[0][0] + 2 * CENT if side == "buy" else bids[0][0] - 2 * CENT) / PRICE_SCALE
            res = engine.order(int(batch["ts_event"][-1]) + 1, f"u{rng.integers(4)}", f"o{start}-{_}",
                               "ABC"[inst - 1], side, typ, int(rng.choice([10, 100, 300])),
                               price=round(price, 2) if typ == "limit" else None,
                               stop_price=round(stop, 2) if typ == "stop" else None,
                               tif=str(rng.choice(["DAY", "GTC", "IOC"])))
            fills += sum(e["event"] == "fill" for e in res)
        for inst in (1, 2, 3):
            top = books.bbo(inst)
            crossed = top[0] != UNDEF and top[3] != UNDEF and top[0] >= top[3]  # the stream's aggressive adds
            m = engine.mirror  # every instrument read since the feed changed it, unless its next read is FULL
            if m.synced[inst] and not m.dirty[inst] and not m.stale[inst] and not crossed:
                _mirror_invariant(engine, books, inst)
    assert engine.mirror.market_rejects == 0
    assert fills > 100
