"""The reference book itself: known answers from literal events, then invariants over random streams."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings

from tests.orderbook.event_streams import TICK, Op, build_events, event_streams, random_events
from parsers.schema import EVENT, PRICE_SCALE, UNDEF_PRICE, Action, Side
from tests.orderbook.reference_book import EMPTY_BBO, ReferenceBooks

UNDEF = int(UNDEF_PRICE)
B, S = int(Side.BID), int(Side.ASK)
P = PRICE_SCALE  # one dollar


def events(*rows: dict) -> np.ndarray:
    """EVENT rows from dicts (action, and any of inst, side, price, size, oid, prev); sequence 1, 2, ..."""
    out = EVENT.empty(len(rows))
    for i, r in enumerate(rows):
        out[i]["sequence"] = 100 + i
        out[i]["ts_event"] = 1_000 + i
        out[i]["action"] = r["action"]
        out[i]["instrument_id"] = r.get("inst", 1)
        out[i]["side"] = r.get("side", Side.NONE)
        out[i]["price"] = r.get("price", UNDEF_PRICE)
        out[i]["size"] = r.get("size", 0)
        out[i]["order_id"] = r.get("oid", 0)
        out[i]["prev_order_id"] = r.get("prev", 0)
    return out


def add(oid, side, price, size, inst=1):
    return dict(action=Action.ADD, oid=oid, side=side, price=price, size=size, inst=inst)


def cancel(oid, size, inst=1):
    return dict(action=Action.CANCEL, oid=oid, size=size, inst=inst)


def execute(oid, size, price=UNDEF_PRICE, inst=1):
    return dict(action=Action.EXECUTE, oid=oid, size=size, price=price, inst=inst)


def delete(oid, inst=1):
    return dict(action=Action.DELETE, oid=oid, inst=inst)


def replace(prev, oid, price, size, inst=1, side=Side.NONE):
    return dict(action=Action.REPLACE, prev=prev, oid=oid, price=price, size=size, inst=inst, side=side)


def book(*rows) -> ReferenceBooks:
    b = ReferenceBooks()
    b.apply_all(events(*rows))
    return b


# ---------------------------------------------------------------------------------- known answers
def test_adds_build_levels_bbo_and_l3():
    b = book(add(1, B, 10 * P, 100), add(2, B, 10 * P, 200), add(3, B, 9 * P, 50),
             add(4, S, 11 * P, 300), add(5, S, 12 * P, 10), add(6, S, 11 * P, 5))
    assert b.bbo(1) == (10 * P, 300, 2, 11 * P, 305, 2)
    assert b.l2(1) == ([(10 * P, 300, 2), (9 * P, 50, 1)], [(11 * P, 305, 2), (12 * P, 10, 1)])
    assert b.l2(1, depth=1) == ([(10 * P, 300, 2)], [(11 * P, 305, 2)])
    assert b.l3(1) == {Side.BID: [(10 * P, [1, 2]), (9 * P, [3])], Side.ASK: [(11 * P, [4, 6]), (12 * P, [5])]}
    assert b.bbo(2) == EMPTY_BBO == (UNDEF, 0, 0, UNDEF, 0, 0)
    assert b.l2(2) == ([], [])
    assert b.integrity() == {}
    o = b.order(2)
    assert (o.instrument, o.side, o.price, o.size, o.priority) == (1, B, 10 * P, 200, 101)


def test_replace_loses_time_priority_even_at_the_same_price():
    b = book(add(1, B, 10 * P, 100), add(2, B, 10 * P, 200), replace(1, 3, 10 * P, 150))
    assert b.l3(1)[Side.BID] == [(10 * P, [2, 3])]
    assert b.l2(1) == ([(10 * P, 350, 2)], [])
    assert b.order(1) is None and b.order(3).priority == 102


def test_replace_moves_to_the_new_price_on_the_old_side():
    # The event's side is NONE (as ItchNormalizer leaves a U it could not enrich): the old side holds.
    b = book(add(1, S, 11 * P, 100), add(2, S, 12 * P, 100), replace(1, 7, 13 * P, 40))
    assert b.l2(1) == ([], [(12 * P, 100, 1), (13 * P, 40, 1)])
    assert b.bbo(1) == (UNDEF, 0, 0, 12 * P, 100, 1)
    assert b.order(7).side == S


def test_execution_reduces_the_resting_level_even_at_another_price():
    # An ITCH C: executed at 10.05 against a bid resting at 10.00. The 10.00 level loses the shares.
    b = book(add(1, B, 10 * P, 300), add(2, B, 9 * P, 100), execute(1, 100, price=10 * P + 5 * TICK))
    assert b.l2(1) == ([(10 * P, 200, 1), (9 * P, 100, 1)], [])
    b.apply_all(events(execute(1, 200, price=9 * P)))
    assert b.l2(1) == ([(9 * P, 100, 1)], [])
    assert b.integrity() == {}


def test_partial_execution_and_partial_cancel_keep_priority():
    b = book(add(1, S, 11 * P, 300), add(2, S, 11 * P, 200), execute(1, 100), cancel(1, 50))
    assert b.l3(1)[Side.ASK] == [(11 * P, [1, 2])]
    assert b.l2(1) == ([], [(11 * P, 350, 2)])
    assert b.order(1).size == 150 and b.order(1).priority == 100


def test_whole_cancel_execute_and_delete_remove_orders_and_empty_levels():
    b = book(add(1, B, 10 * P, 100), add(2, B, 9 * P, 100), add(3, B, 8 * P, 100),
             cancel(1, 100), execute(2, 100), delete(3))
    assert b.l2(1) == ([], []) and b.orders == {} and b.bbo(1) == EMPTY_BBO
    assert b.integrity() == {}


def test_integrity_counts():
    b = book(
        add(1, B, 10 * P, 100),
        cancel(99, 10), execute(98, 10), delete(97), replace(96, 5, 10 * P, 10),  # unknown: 4, nothing rests
        add(1, S, 12 * P, 70),  # duplicate: the bid leaves, an ask takes its place
        cancel(1, 80),  # 80 of 70 left
        add(2, B, 10 * P, 100), execute(2, 101),  # 101 of 100
        add(3, B, 10 * P, 0),  # zero size
        add(4, Side.NONE, 10 * P, 10),  # no side
        dict(action=ord("?"), inst=1),
    )
    assert b.integrity() == {1: {"bad_side": 1, "duplicate_add": 1, "size_below_zero": 2, "unknown_action": 1,
                                 "unknown_order": 4, "zero_size": 1}}
    assert b.orders == {} and b.l2(1) == ([], [])


def test_unknown_replace_rests_the_new_order_only_with_a_side():
    b = book(replace(50, 51, 10 * P, 100, side=Side.BID), replace(60, 61, 10 * P, 100))
    assert b.l3(1)[Side.BID] == [(10 * P, [51])]
    assert b.integrity() == {1: {"unknown_order": 2}}


def test_replace_onto_a_live_id_counts_a_duplicate():
    b = book(add(1, B, 10 * P, 100), add(2, S, 11 * P, 100), replace(1, 2, 9 * P, 30))
    assert b.l2(1) == ([(9 * P, 30, 1)], [])
    assert b.integrity() == {1: {"duplicate_add": 1}}


def test_locked_and_crossed_count_every_book_event_they_last_through():
    b = book(add(1, B, 10 * P, 100), add(2, S, 10 * P, 100),  # locked
             dict(action=Action.TRADE, inst=1, price=10 * P, size=5, side=B),  # not a book event: no count
             add(3, B, 11 * P, 100),  # crossed
             cancel(99, 5),  # changes nothing, still counts: crossed
             delete(3), delete(2))  # locked, then fine
    assert b.integrity() == {1: {"crossed": 2, "locked": 2, "unknown_order": 1}}


def test_an_event_naming_another_instruments_order_acts_on_that_order():
    b = book(add(1, B, 10 * P, 100, inst=7), cancel(1, 40, inst=8))
    assert b.l2(7) == ([(10 * P, 60, 1)], []) and b.l2(8) == ([], [])
    assert b.integrity() == {8: {"instrument_mismatch": 1}}


def test_clear_empties_one_instrument_only():
    b = book(add(1, B, 10 * P, 100, inst=1), add(2, S, 11 * P, 100, inst=1), add(3, B, 5 * P, 100, inst=2),
             dict(action=Action.CLEAR, inst=1), cancel(1, 10, inst=1))
    assert b.l2(1) == ([], []) and b.bbo(1) == EMPTY_BBO
    assert b.l2(2) == ([(5 * P, 100, 1)], [])
    assert b.integrity() == {1: {"unknown_order": 1}}
    assert b.instruments() == [2]


def test_trades_and_crosses_leave_the_book_alone():
    b = ReferenceBooks()
    changes = b.bbo_changes(events(
        add(1, B, 10 * P, 100),
        dict(action=Action.TRADE, inst=1, price=10 * P, size=100, side=S, oid=1),
        dict(action=Action.CROSS, inst=1, price=10 * P, size=500),
    ))
    assert changes == [(100, 1, (10 * P, 100, 1, UNDEF, 0, 0))]
    assert b.order(1).size == 100


def test_bbo_changes_rows():
    b = ReferenceBooks()
    changes = b.bbo_changes(events(
        add(1, B, 10 * P, 100),  # 100: bid appears
        add(2, B, 9 * P, 100),  # 101: below the best, no change
        add(3, S, 11 * P, 50, inst=2),  # 102: instrument 2
        cancel(1, 30),  # 103: best bid size
        add(4, B, 10 * P, 5),  # 104: best bid count
        replace(2, 5, 9 * P, 1),  # 105: second level only
        delete(1),  # 106
        delete(4),  # 107: best bid falls to 9.00
        dict(action=Action.CLEAR, inst=2),  # 108
        dict(action=Action.CLEAR, inst=2),  # 109: already empty
    ))
    assert changes == [
        (100, 1, (10 * P, 100, 1, UNDEF, 0, 0)),
        (102, 2, (UNDEF, 0, 0, 11 * P, 50, 1)),
        (103, 1, (10 * P, 70, 1, UNDEF, 0, 0)),
        (104, 1, (10 * P, 75, 2, UNDEF, 0, 0)),
        (106, 1, (10 * P, 5, 1, UNDEF, 0, 0)),
        (107, 1, (9 * P, 1, 1, UNDEF, 0, 0)),
        (108, 2, EMPTY_BBO),
    ]


def test_rows_dicts_and_arrays_give_the_same_book():
    ev = random_events(3, 2_000, 3)
    whole, by_row, by_dict = ReferenceBooks(), ReferenceBooks(), ReferenceBooks()
    whole.apply_all(ev)
    for row in ev:
        by_row.apply(row)
    for values in ev.tolist():
        by_dict.apply(dict(zip(ev.dtype.names, values)))
    for inst in (1, 2, 3):
        assert whole.l3(inst) == by_row.l3(inst) == by_dict.l3(inst)
    assert whole.integrity() == by_row.integrity() == by_dict.integrity()


# ------------------------------------------------------------------------------------ the streams
def test_random_events_are_deterministic_and_ordered():
    a, b = random_events(11, 5_000, 4), random_events(11, 5_000, 4)
    assert a.dtype == EVENT.dtype and len(a) == 5_000
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, random_events(12, 5_000, 4))
    assert (np.diff(a["sequence"].astype(np.int64)) == 1).all() and (np.diff(a["ts_event"]) > 0).all()
    assert (a["ts_recv"] > a["ts_event"]).all()
    assert set(np.unique(a["instrument_id"]).tolist()) == {1, 2, 3, 4}
    actions = set(np.unique(a["action"]).tolist())
    assert actions == {int(x) for x in Action}


def test_random_events_hold_every_kind_of_problem_and_valid_streams_none():
    b = ReferenceBooks()
    b.apply_all(random_events(5, 20_000, 3))
    seen = set().union(*[set(c) for c in b.integrity().values()])
    assert {"unknown_order", "size_below_zero", "duplicate_add", "crossed", "locked"} <= seen
    clean = ReferenceBooks()
    clean.apply_all(random_events(5, 20_000, 3, invalid=False))
    seen = set().union(*[set(c) for c in clean.integrity().values()])
    assert seen <= {"crossed", "locked"}


def test_execute_at_another_price_is_in_the_streams():
    ev = build_events([(Op.ADD, 0, 0, 3, 1), (Op.EXECUTE_AT, 0, 0, 0, 1)], instruments=(5,))
    assert ev["action"].tolist() == [Action.ADD, Action.EXECUTE]
    assert ev["price"][1] == ev["price"][0] + 2 * TICK and ev["side"][1] == Side.BID
    b = ReferenceBooks()
    b.apply_all(ev)
    assert b.l2(5) == ([(int(ev["price"][0]), int(ev["size"][0]) - int(ev["size"][1]), 1)], [])


def _check_invariants(b: ReferenceBooks, instruments) -> None:
    for inst in instruments:
        bids, asks = b.l2(inst)
        l3 = b.l3(inst)
        for side, levels in ((Side.BID, bids), (Side.ASK, asks)):
            # Levels are the sums of their resting orders, in price order, never empty.
            assert [p for p, _ in l3[side]] == [p for p, _, _ in levels]
            for (price, size, count), (_, ids) in zip(levels, l3[side]):
                assert count == len(ids) > 0 and size == sum(b.order(i).size for i in ids) > 0
                assert all(b.order(i).price == price and b.order(i).side == side for i in ids)
                prios = [(b.order(i).priority, b.order(i).arrival) for i in ids]
                assert prios == sorted(prios)
        best = lambda lv: (lv[0][0], lv[0][1], lv[0][2]) if lv else (int(UNDEF_PRICE), 0, 0)  # noqa: E731
        assert b.bbo(inst) == best(bids) + best(asks)


@settings(max_examples=200, deadline=None)
@given(event_streams(instruments=(1, 2, 9), max_events=150))
def test_books_keep_their_invariants(ev):
    b = ReferenceBooks()
    changes = b.bbo_changes(ev)
    _check_invariants(b, (1, 2, 9))
    last = {}
    for seq, inst, bbo in changes:
        assert bbo != last.get(inst, EMPTY_BBO)  # a row only when the BBO changed
        last[inst] = bbo
    for inst in (1, 2, 9):
        assert last.get(inst, EMPTY_BBO) == b.bbo(inst)


@settings(max_examples=100, deadline=None)
@given(event_streams(instruments=(3, 4), max_events=150, invalid=False))
def test_valid_streams_raise_no_order_problems(ev):
    b = ReferenceBooks()
    b.apply_all(ev)
    for counts in b.integrity().values():
        assert set(counts) <= {"crossed", "locked"}
    if len(ev):
        assert (np.diff(ev["sequence"].astype(np.int64)) == 1).all() and (np.diff(ev["ts_event"]) > 0).all()
