"""The order-reference table against a dict, and event enrichment on known answers."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers import schema
from parsers.order_refs import ANOMALY_NAMES, OrderRefTable, enrich_all
from parsers.schema import UNDEF_PRICE, Action, Flag, Side


def run(table, rows):
    anomalies = np.zeros(len(ANOMALY_NAMES), dtype=np.int64)
    enrich_all(table, rows, anomalies)
    return dict(zip(ANOMALY_NAMES, anomalies.tolist()))


def events(*specs):
    rows = schema.EVENT.empty(len(specs))
    rows["price"] = UNDEF_PRICE
    rows["side"] = Side.NONE
    for row, spec in zip(rows, specs):
        for k, v in spec.items():
            row[k] = v
    return rows


def test_enrichment_fills_price_side_and_delete_size():
    rows = events(
        dict(action=Action.ADD, order_id=1, price=10_000_000_000, size=100, side=Side.BID, instrument_id=3),
        dict(action=Action.EXECUTE, order_id=1, size=30),
        dict(action=Action.CANCEL, order_id=1, size=20),
        dict(action=Action.REPLACE, order_id=2, prev_order_id=1, price=11_000_000_000, size=70, instrument_id=3),
        dict(action=Action.DELETE, order_id=2),
        dict(action=Action.DELETE, order_id=2),
    )
    table = OrderRefTable()
    anomalies = run(table, rows)
    assert rows["price"].tolist()[:5] == [10e9, 10e9, 10e9, 11e9, 11e9]
    assert rows["side"].tolist()[:5] == [Side.BID] * 5
    assert rows["size"][4] == 70
    assert rows["flags"][5] == Flag.UNKNOWN_REF and rows["price"][5] == UNDEF_PRICE
    assert anomalies == {"unknown_order_ref": 1, "duplicate_order_ref": 0, "size_below_zero": 0}
    assert len(table) == 0


def test_duplicate_add_and_overfill_are_counted():
    rows = events(
        dict(action=Action.ADD, order_id=5, price=1, size=10, side=Side.ASK),
        dict(action=Action.ADD, order_id=5, price=2, size=10, side=Side.ASK),
        dict(action=Action.EXECUTE, order_id=5, size=11),
    )
    table = OrderRefTable()
    assert run(table, rows) == {"unknown_order_ref": 0, "duplicate_order_ref": 1, "size_below_zero": 1}
    assert rows["flags"][1] == Flag.DUPLICATE_REF
    assert len(table) == 0


def test_clear_removes_only_that_instrument():
    rows = events(
        *[dict(action=Action.ADD, order_id=i, price=i, size=1, side=Side.BID, instrument_id=i % 2) for i in range(1, 200)],
        dict(action=Action.CLEAR, instrument_id=1),
    )
    table = OrderRefTable(16)
    run(table, rows)
    assert len(table) == 99
    assert all(table.lookup(i) is not None for i in range(2, 200, 2))
    assert all(table.lookup(i) is None for i in range(1, 200, 2))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "del"]), st.integers(0, 300)), max_size=400))
def test_table_matches_a_dict(ops):
    table = OrderRefTable(16)
    model: dict[int, int] = {}
    specs = []
    for op, ref in ops:
        if op == "add" and ref not in model:
            model[ref] = ref * 7
            specs.append(dict(action=Action.ADD, order_id=ref, price=ref * 7, size=1, side=Side.ASK))
        elif op == "del" and ref in model:
            del model[ref]
            specs.append(dict(action=Action.DELETE, order_id=ref))
    rows = events(*specs) if specs else schema.EVENT.empty(0)
    run(table, rows)
    assert len(table) == len(model)
    for ref in range(301):
        got = table.lookup(ref)
        assert (got is None) == (ref not in model)
        if got is not None:
            assert got[0] == model[ref]


def test_growth_keeps_every_order():
    table = OrderRefTable(16)
    n = 50_000
    rows = events(*[dict(action=Action.ADD, order_id=(i * 2_654_435_761) % 2**40, price=i, size=1, side=Side.BID)
                    for i in range(n)])
    run(table, rows)
    assert len(table) == n and table.capacity >= 2 * n
    assert table.lookup((123 * 2_654_435_761) % 2**40)[0] == 123
