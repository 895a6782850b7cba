"""``publish.batch``: concatenating and conflating batches keeps every row's bytes."""
from __future__ import annotations

import numpy as np

from orderbook.records import BBO, L2
from publish.batch import MarketBatch, concat, conflate


def rows(record, n: int, first: int) -> np.ndarray:
    out = record.empty(n)
    out["instrument_id"] = 1 + np.arange(n) % 3
    out["sequence"] = first + np.arange(n)
    out["ts_event"] = 1_700_000_000_000_000_000 + first + np.arange(n)
    return out


def test_concat_keeps_every_row_in_order_as_bytes():
    parts = [MarketBatch("x", {1: "A"}, bbo=rows(BBO, n, 10 * k), l2=rows(L2, n + 1, 10 * k))
             for k, n in enumerate((2, 0, 3))]
    joined = concat(parts)
    assert joined.bbo.dtype == BBO.dtype and joined.l2.dtype == L2.dtype
    assert joined.bbo.tobytes() == b"".join(p.bbo.tobytes() for p in parts)
    assert joined.l2.tobytes() == b"".join(p.l2.tobytes() for p in parts)
    joined.bbo["bid_sz"] = 5  # a batch's arrays are its own, writable
    assert (parts[0].bbo["bid_sz"] == 0).all()


def test_concat_of_one_batch_with_rows_is_that_array():
    only = rows(BBO, 4, 1)
    joined = concat([MarketBatch("x", {}), MarketBatch("x", {}, bbo=only)])
    assert joined.bbo is only


def test_conflate_keeps_the_last_bbo_per_instrument_and_every_l2_row():
    a = MarketBatch("x", {}, bbo=rows(BBO, 3, 1), l2=rows(L2, 2, 1))
    b = MarketBatch("x", {}, bbo=rows(BBO, 2, 4), l2=rows(L2, 2, 4))
    out = conflate(a, b)
    assert out.bbo["sequence"].tolist() == [3, 4, 5]  # instrument 3 from a; 1 and 2 from b
    assert out.l2["sequence"].tolist() == [1, 2, 4, 5]
