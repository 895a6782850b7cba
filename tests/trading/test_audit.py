"""The audit trail builder: layouts, known answers per request and event kind, order state across
batches, and a seeded random run whose order rows are checked against a plain-Python replay of the
matcher's events."""
from __future__ import annotations

import random

import numpy as np
import pytest

from parsers.schema import UNDEF_PRICE
from trading.audit import (
    AUDIT_EVENT,
    CAT_EVENT_TYPE,
    CLIENT_ID_BYTES,
    ORDER_STATE,
    AuditKind,
    AuditTrail,
    OrderStatus,
    client_id_words,
)
from tests.trading.command_rows import cancel, modify, new
from trading.matching import MatchingEngine
from trading.orders import (
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
P = 10_000_000  # one cent
BUY, SELL = OrderSide.BUY, OrderSide.SELL
LIMIT, MARKET, STOP = OrderType.LIMIT, OrderType.MARKET, OrderType.STOP
DAY, GTC, IOC = TimeInForce.DAY, TimeInForce.GTC, TimeInForce.IOC


def audited(matcher, trail, *rows, client_ids=None):
    cmds = commands(*rows)
    return trail.build(cmds, matcher.submit(cmds), client_ids)


def cents(price):
    return None if price == UNDEF else int(price) // P


def brief(audit):
    """(kind, order id, ts, ts_order, client id, price, stop, qty, leaves, type, tif, reason) per row."""
    return [(AuditKind(r["event"]), int(r["order_id"]), int(r["ts"]), int(r["ts_order"]),
             r["client_order_id"].decode(), cents(r["price"]), cents(r["stop_price"]), int(r["qty"]),
             int(r["leaves"]), int(r["order_type"]), int(r["tif"]), Reason(r["reason"])) for r in audit]


def states(orders):
    """{order id: (status, qty, filled, leaves, price, stop, type, tif, client id, reason)}."""
    return {int(r["order_id"]): (OrderStatus(r["status"]), int(r["qty"]), int(r["filled"]), int(r["leaves"]),
                                 cents(r["price"]), cents(r["stop_price"]), int(r["order_type"]), int(r["tif"]),
                                 r["client_order_id"].decode(), Reason(r["reason"])) for r in orders}


@pytest.fixture
def matcher():
    return MatchingEngine(instruments=4, orders=8, levels=8, out_rows=8)


# -- layouts ------------------------------------------------------------------------------------


def test_audit_event_layout():
    dt = AUDIT_EVENT.dtype
    assert dt.itemsize == 112
    assert [(name, dt.fields[name][1]) for name in dt.names] == [
        ("seq", 0), ("ts", 8), ("ts_order", 16), ("order_id", 24), ("counterparty_id", 32), ("price", 40),
        ("stop_price", 48), ("client_order_id", 56), ("qty", 88), ("leaves", 92), ("account", 96),
        ("instrument_id", 100), ("event", 104), ("side", 105), ("order_type", 106), ("tif", 107),
        ("liquidity", 108), ("reason", 109), ("_reserved", 110)]


def test_order_state_layout():
    dt = ORDER_STATE.dtype
    assert dt.itemsize == 104
    assert [(name, dt.fields[name][1]) for name in dt.names] == [
        ("ts_order", 0), ("ts_updated", 8), ("order_id", 16), ("price", 24), ("stop_price", 32),
        ("client_order_id", 40), ("qty", 72), ("filled", 76), ("leaves", 80), ("account", 84),
        ("instrument_id", 88), ("side", 92), ("order_type", 93), ("tif", 94), ("status", 95), ("reason", 96),
        ("_reserved", 97)]


def test_audit_kinds_follow_event_kinds_and_cat_types():
    for kind in EventKind:
        assert AuditKind[kind.name] == kind + 3
    assert CAT_EVENT_TYPE[AuditKind.NEW_ORDER] == "MENO" and CAT_EVENT_TYPE[AuditKind.FILL] == "MEOT"
    assert AuditKind.ACK not in CAT_EVENT_TYPE


# -- known answers ------------------------------------------------------------------------------


def test_requests_then_events_restate_the_order_terms(matcher):
    trail = AuditTrail(next_seq=100)
    audit, orders = audited(
        matcher, trail,
        new(1, BUY, 100, 1000, ts=10), new(2, SELL, 40, 1000, tif=GTC, account=8, ts=20),
        new(3, SELL, 10, typ=STOP, stop=900, account=8, ts=30), cancel(1, ts=40),
        new(4, SELL, 0, 1000, account=8, ts=50),
        client_ids=["buy-1", "sell-2", b"stop-3", "", "bad-4"])
    N, CR, A, R, F, C = (AuditKind.NEW_ORDER, AuditKind.CANCEL_REQUEST, AuditKind.ACK, AuditKind.REJECT,
                         AuditKind.FILL, AuditKind.CANCELLED)
    assert brief(audit) == [
        (N, 1, 10, 10, "buy-1", 1000, None, 100, 0, LIMIT, DAY, Reason.NONE),
        (N, 2, 20, 20, "sell-2", 1000, None, 40, 0, LIMIT, GTC, Reason.NONE),
        (N, 3, 30, 30, "stop-3", None, 900, 10, 0, STOP, DAY, Reason.NONE),
        (CR, 1, 40, 10, "buy-1", None, None, 0, 0, LIMIT, DAY, Reason.NONE),  # the cancel restates order 1
        (N, 4, 50, 50, "bad-4", 1000, None, 0, 0, LIMIT, DAY, Reason.NONE),
        (A, 1, 10, 10, "buy-1", 1000, None, 100, 100, LIMIT, DAY, Reason.NONE),
        (A, 2, 20, 20, "sell-2", 1000, None, 40, 40, LIMIT, GTC, Reason.NONE),
        (F, 2, 20, 20, "sell-2", 1000, None, 40, 0, LIMIT, GTC, Reason.NONE),
        (F, 1, 20, 10, "buy-1", 1000, None, 40, 60, LIMIT, DAY, Reason.NONE),
        (A, 3, 30, 30, "stop-3", None, 900, 10, 10, STOP, DAY, Reason.NONE),
        (C, 1, 40, 10, "buy-1", 1000, None, 60, 0, LIMIT, DAY, Reason.USER_CANCEL),
        (R, 4, 50, 50, "bad-4", 1000, None, 0, 0, LIMIT, DAY, Reason.BAD_QTY),
    ]
    assert audit["seq"].tolist() == list(range(100, 112)) and trail.next_seq == 112
    assert audit["account"].tolist() == [7, 8, 8, 7, 8, 7, 8, 8, 7, 8, 7, 8]
    fills = audit[audit["event"] == AuditKind.FILL]
    assert fills["counterparty_id"].tolist() == [1, 2]
    assert fills["liquidity"].tolist() == [Liquidity.TAKER, Liquidity.MAKER]
    assert set(audit["side"][audit["order_id"] == 1].tolist()) == {BUY}
    assert states(orders) == {
        1: (OrderStatus.CANCELLED, 100, 40, 0, 1000, None, LIMIT, DAY, "buy-1", Reason.USER_CANCEL),
        2: (OrderStatus.FILLED, 40, 40, 0, 1000, None, LIMIT, GTC, "sell-2", Reason.NONE),
        3: (OrderStatus.HELD, 10, 0, 10, None, 900, STOP, DAY, "stop-3", Reason.NONE),
        4: (OrderStatus.REJECTED, 0, 0, 0, 1000, None, LIMIT, DAY, "bad-4", Reason.BAD_QTY),
    }
    assert orders["ts_updated"][orders["order_id"] == 1].tolist() == [40]
    assert trail.orders_held == 1  # only the held stop


def test_order_terms_carry_across_batches_until_the_order_is_done(matcher):
    trail = AuditTrail()
    audited(matcher, trail, new(1, BUY, 100, 1000, tif=GTC, ts=1), client_ids=["gtc-1"])
    audited(matcher, trail, new(2, SELL, 30, 1000, account=8, ts=2), client_ids=["s2"])
    audit, orders = audited(matcher, trail, new(3, SELL, 70, 990, account=8, ts=3), client_ids=["s3"])
    maker = audit[(audit["order_id"] == 1)]
    assert maker["ts_order"].tolist() == [1] and maker["client_order_id"].tolist() == [b"gtc-1"]
    assert maker["tif"].tolist() == [GTC] and maker["price"].tolist() == [1000 * P]
    assert states(orders)[1] == (OrderStatus.FILLED, 100, 100, 0, 1000, None, LIMIT, GTC, "gtc-1", Reason.NONE)
    assert trail.orders_held == 0
    # a cancel of the finished order is refused: its row has no terms left to restate
    audit, orders = audited(matcher, trail, cancel(1, ts=4))
    assert [(AuditKind(k), r) for k, r in zip(audit["event"], audit["reason"])] == [
        (AuditKind.CANCEL_REQUEST, 0), (AuditKind.REJECT, Reason.UNKNOWN_ORDER)]
    assert audit["ts_order"].tolist() == [0, 0] and len(orders) == 0


def test_modify_updates_price_qty_and_stop_and_a_refused_modify_changes_nothing(matcher):
    trail = AuditTrail()
    audited(matcher, trail, new(1, BUY, 100, 1000, ts=1), new(2, SELL, 10, typ=STOP, stop=900, ts=1),
            client_ids=["a", "b"])
    audit, orders = audited(matcher, trail, modify(1, price=1001, qty=50, ts=2), modify(2, stop=890, ts=2))
    assert [AuditKind(k) for k in audit["event"]] == [AuditKind.MODIFY_REQUEST] * 2 + [AuditKind.MODIFIED] * 2
    assert states(orders) == {
        1: (OrderStatus.OPEN, 50, 0, 50, 1001, None, LIMIT, DAY, "a", Reason.NONE),
        2: (OrderStatus.HELD, 10, 0, 10, None, 890, STOP, DAY, "b", Reason.NONE),
    }
    audit, orders = audited(matcher, trail, modify(2, stop=880, account=99, ts=3))  # not the owner
    assert audit["event"].tolist() == [AuditKind.MODIFY_REQUEST, AuditKind.REJECT] and len(orders) == 0
    audit, orders = audited(matcher, trail, modify(2, qty=5, ts=4))
    assert states(orders)[2][1:6] == (5, 0, 5, None, 890)  # 880 was refused; 890 stays


def test_session_end_and_trigger_commands_are_not_audited_but_their_events_are(matcher):
    trail = AuditTrail()
    audited(matcher, trail, new(1, SELL, 10, typ=STOP, stop=900, ts=1), new(2, BUY, 5, 800, inst=2, ts=1))
    cmds = commands(dict(kind=CommandKind.TRIGGER, instrument_id=1, price=850 * P, ts=5),
                    dict(kind=CommandKind.SESSION_END, instrument_id=2, ts=6))
    audit, orders = trail.build(cmds, matcher.submit(cmds))
    assert [(AuditKind(k), int(o), int(r)) for k, o, r in zip(audit["event"], audit["order_id"], audit["reason"])] == [
        (AuditKind.TRIGGERED, 1, 0), (AuditKind.CANCELLED, 1, Reason.NO_LIQUIDITY),
        (AuditKind.EXPIRED, 2, Reason.SESSION_END)]
    assert audit["ts"].tolist() == [5, 5, 6] and audit["ts_order"].tolist() == [1, 1, 1]
    assert states(orders)[1][0] == OrderStatus.CANCELLED
    assert states(orders)[2][0] == OrderStatus.EXPIRED and states(orders)[2][9] == Reason.SESSION_END
    assert trail.orders_held == 0


def test_an_ack_without_its_new_gets_a_row_with_unknown_terms():
    trail = AuditTrail()
    events = ORDER_EVENT.empty(2)
    events["kind"] = [EventKind.ACK, EventKind.FILL]
    events["order_id"] = 9
    events["ts"] = [5, 6]
    events["price"] = 1000 * P
    events["qty"] = [10, 10]
    events["leaves"] = [10, 0]
    events["account"] = 3
    events["instrument_id"] = 2
    events["side"] = SELL
    audit, orders = trail.build(commands(), events)
    assert audit["order_type"].tolist() == [0, 0] and audit["ts_order"].tolist() == [5, 5]
    assert audit["client_order_id"].tolist() == [b"", b""] and audit["stop_price"].tolist() == [UNDEF, UNDEF]
    assert states(orders) == {9: (OrderStatus.FILLED, 10, 10, 0, 1000, None, 0, 0, "", Reason.NONE)}
    assert trail.orders_held == 0


def test_a_duplicate_new_leaves_the_held_order_alone(matcher):
    trail = AuditTrail()
    audited(matcher, trail, new(1, BUY, 100, 1000, ts=1), client_ids=["first"])
    audit, orders = audited(matcher, trail, new(1, SELL, 5, 2000, tif=GTC, ts=2), client_ids=["second"])
    assert audit["reason"].tolist() == [0, Reason.DUPLICATE_ORDER_ID]
    assert len(orders) == 0 and trail.orders_held == 1
    audit, orders = audited(matcher, trail, cancel(1, ts=3))
    assert states(orders)[1] == (OrderStatus.CANCELLED, 100, 0, 0, 1000, None, LIMIT, DAY, "first",
                                 Reason.USER_CANCEL)


def test_restored_orders_are_restated_by_a_new_trail(matcher):
    first = AuditTrail()
    _, orders = audited(matcher, first, new(1, BUY, 100, 1000, tif=GTC, ts=1), new(2, SELL, 40, 1000, account=8, ts=2),
                        new(3, SELL, 10, typ=STOP, stop=900, ts=3), client_ids=["gtc", "s", "stop"])
    still_open = orders[np.isin(orders["status"], [OrderStatus.OPEN, OrderStatus.HELD])]
    assert sorted(still_open["order_id"].tolist()) == [1, 3]
    restarted = AuditTrail(next_seq=50)  # a new process: its table starts empty
    assert restarted.restore(still_open) == 2 and restarted.restore(still_open) == 0  # held once
    audit, orders = audited(matcher, restarted, new(4, SELL, 60, 990, account=8, ts=4), cancel(3, ts=5))
    assert states(orders) == {
        1: (OrderStatus.FILLED, 100, 100, 0, 1000, None, LIMIT, GTC, "gtc", Reason.NONE),
        3: (OrderStatus.CANCELLED, 10, 0, 0, None, 900, STOP, DAY, "stop", Reason.USER_CANCEL),
        4: (OrderStatus.FILLED, 60, 60, 0, 990, None, LIMIT, DAY, "", Reason.NONE)}
    maker = audit[(audit["order_id"] == 1)]
    assert maker["ts_order"].tolist() == [1] and maker["client_order_id"].tolist() == [b"gtc"]
    assert restarted.orders_held == 0


def test_client_ids_are_checked():
    assert client_id_words(None, 2).tolist() == [[0] * 4] * 2
    words = client_id_words(["ab", "x" * CLIENT_ID_BYTES], 2)
    assert words.view(f"S{CLIENT_ID_BYTES}")[:, 0].tolist() == [b"ab", b"x" * CLIENT_ID_BYTES]
    with pytest.raises(ValueError, match="at most 32 bytes"):
        client_id_words(["x" * (CLIENT_ID_BYTES + 1)], 1)
    with pytest.raises(ValueError, match="ASCII"):
        client_id_words(["café"], 1)
    assert client_id_words([None, "c"], 2).view(f"S{CLIENT_ID_BYTES}")[:, 0].tolist() == [b"", b"c"]
    with pytest.raises(ValueError, match="2 entries for 1"):
        client_id_words(["a", "b"], 1)


def test_empty_batch():
    trail = AuditTrail(next_seq=7)
    audit, orders = trail.build(commands(), ORDER_EVENT.empty(0))
    assert len(audit) == 0 and len(orders) == 0 and trail.next_seq == 7


# -- a seeded random run against a plain-Python replay of the events -----------------------------


def test_random_run_matches_a_replay_of_the_events():
    rng = random.Random(20240601)
    matcher = MatchingEngine(instruments=4, orders=16, levels=16, out_rows=16)
    trail = AuditTrail(capacity=4)  # small: the table grows many times
    live: list[int] = []
    next_id = 1
    ts = 0
    expect: dict[int, dict] = {}  # order id -> the reference's view of the order
    got: dict[int, np.void] = {}  # order id -> its latest order row
    all_audit = []
    for _ in range(300):
        rows, cids = [], []
        for _ in range(rng.randint(0, 60)):
            ts += 1
            r = rng.random()
            if r < 0.6 or not live:
                oid = next_id
                next_id += 1
                typ = rng.choice([LIMIT, LIMIT, LIMIT, MARKET, STOP])
                price = rng.randint(995, 1005) if typ == LIMIT else None
                stop = rng.randint(995, 1005) if typ == STOP else None
                rows.append(new(oid, rng.choice([BUY, SELL]), rng.randint(0, 300), price, typ=typ,
                                tif=rng.choice([DAY, GTC, IOC]), stop=stop, inst=rng.randint(1, 3),
                                account=rng.randint(1, 4), ts=ts))
                cids.append(f"c{oid}")
                live.append(oid)
            elif r < 0.8:
                oid = rng.choice(live)
                rows.append(cancel(oid, account=expect.get(oid, {}).get("account", 0), ts=ts))
                cids.append("")
            elif r < 0.95:
                oid = rng.choice(live)
                rows.append(modify(oid, price=rng.randint(995, 1005), qty=rng.randint(0, 300),
                                   account=expect.get(oid, {}).get("account", 0), ts=ts))
                cids.append("")
            else:
                rows.append(dict(kind=CommandKind.TRIGGER, instrument_id=rng.randint(1, 3),
                                 price=rng.randint(995, 1005) * P, ts=ts))
                cids.append("")
        cmds = commands(*rows)
        events = matcher.submit(cmds)
        for c in cmds[cmds["kind"] == CommandKind.NEW]:
            expect.setdefault(int(c["order_id"]), {"account": int(c["account"]), "type": int(c["order_type"]),
                                                   "tif": int(c["tif"]), "filled": 0, "status": None})
        for e in events:  # the reference: status and filled quantity from the events alone
            o = expect[int(e["order_id"])]
            kind = EventKind(e["kind"])
            if kind == EventKind.ACK:
                o["status"] = OrderStatus.HELD if o["type"] == STOP else OrderStatus.OPEN
            elif kind == EventKind.REJECT and o["status"] is None:
                o["status"] = OrderStatus.REJECTED
            elif kind == EventKind.FILL:
                o["filled"] += int(e["qty"])
                o["status"] = OrderStatus.FILLED if e["leaves"] == 0 else OrderStatus.OPEN
            elif kind == EventKind.CANCELLED:
                o["status"] = OrderStatus.CANCELLED
            elif kind == EventKind.EXPIRED:
                o["status"] = OrderStatus.EXPIRED
            elif kind in (EventKind.TRIGGERED, EventKind.MODIFIED) and o["status"] == OrderStatus.HELD:
                o["status"] = OrderStatus.OPEN if kind == EventKind.TRIGGERED else OrderStatus.HELD
        audit, orders = trail.build(cmds, events, cids)
        assert len(np.unique(orders["order_id"])) == len(orders)  # one row per order per batch
        n_requests = int(np.isin(cmds["kind"], [CommandKind.NEW, CommandKind.CANCEL, CommandKind.MODIFY]).sum())
        assert len(audit) == n_requests + len(events)
        all_audit.append(audit)
        for row in orders:
            got[int(row["order_id"])] = row
        live = [o for o in live if expect.get(o, {}).get("status") in (None, OrderStatus.OPEN, OrderStatus.HELD)]
    audit = np.concatenate(all_audit)
    assert audit["seq"].tolist() == list(range(1, len(audit) + 1))
    assert len(audit) > 5000 and len(got) > 3000
    for oid, o in expect.items():
        row = got[oid]
        assert OrderStatus(row["status"]) == o["status"], oid
        assert int(row["filled"]) == o["filled"], oid
        assert (int(row["order_type"]), int(row["tif"])) == (o["type"], o["tif"]), oid
        assert row["client_order_id"] == f"c{oid}".encode(), oid
        assert int(row["account"]) == o["account"], oid
    still_open = sum(1 for o in expect.values() if o["status"] in (OrderStatus.OPEN, OrderStatus.HELD))
    assert trail.orders_held == still_open == matcher.orders
