"""Pins the layout of every normalized record: size, offsets, no implicit padding, natural alignment."""
import numpy as np
import pytest

from parsers import schema

# (record, itemsize, {column: offset}) written out by hand: a layout change must change this file.
LAYOUTS = {
    "events": (72, {"ts_event": 0, "ts_recv": 8, "price": 16, "order_id": 24, "prev_order_id": 32, "match_id": 40,
                    "sequence": 48, "size": 56, "instrument_id": 60, "venue": 64, "tracking": 66, "flags": 68,
                    "action": 70, "side": 71}),
    "trades": (72, {"ts_event": 0, "ts_recv": 8, "price": 16, "size": 24, "order_id": 32, "match_id": 40,
                    "sequence": 48, "instrument_id": 56, "venue": 60, "flags": 62, "action": 64, "side": 65,
                    "printable": 66, "cross_type": 67, "_reserved": 68}),
    "status": (72, {"ts_event": 0, "ts_recv": 8, "sequence": 16, "price_1": 24, "price_2": 32, "price_3": 40,
                    "instrument_id": 48, "detail": 52, "venue": 56, "flags": 58, "kind": 60, "state": 61,
                    "code": 62, "reason": 63, "_reserved": 67}),
    "definitions": (72, {"ts_event": 0, "ts_recv": 8, "sequence": 16, "instrument_id": 24, "round_lot": 28,
                         "etp_leverage": 32, "venue": 36, "flags": 38, "symbol": 40, "market_category": 56,
                         "financial_status": 57, "round_lots_only": 58, "issue_classification": 59,
                         "issue_subtype": 60, "authenticity": 62, "short_sale_threshold": 63, "ipo_flag": 64,
                         "luld_tier": 65, "etp_flag": 66, "inverse": 67, "_reserved": 68}),
    "imbalance": (80, {"ts_event": 0, "ts_recv": 8, "sequence": 16, "paired_size": 24, "imbalance_size": 32,
                       "far_price": 40, "near_price": 48, "ref_price": 56, "instrument_id": 64, "venue": 68,
                       "flags": 70, "direction": 72, "cross_type": 73, "price_variation": 74, "_reserved": 75}),
    "price_discovery": (88, {"ts_event": 0, "ts_recv": 8, "sequence": 16, "min_price": 24, "max_price": 32,
                             "near_price": 40, "near_time": 48, "lower_collar": 56, "upper_collar": 64,
                             "instrument_id": 72, "venue": 76, "flags": 78, "open_eligible": 80, "_reserved": 81}),
    "retail_interest": (40, {"ts_event": 0, "ts_recv": 8, "sequence": 16, "instrument_id": 24, "venue": 28,
                             "flags": 30, "interest": 32, "_reserved": 33}),
    "broken_trades": (40, {"ts_event": 0, "ts_recv": 8, "sequence": 16, "match_id": 24, "instrument_id": 32,
                           "venue": 36, "flags": 38}),
    "system_events": (32, {"ts_event": 0, "ts_recv": 8, "sequence": 16, "venue": 24, "flags": 26, "code": 28,
                           "_reserved": 29}),
}


def test_every_record_is_pinned():
    assert sorted(r.name for r in schema.RECORDS) == sorted(LAYOUTS)


@pytest.mark.parametrize("record", schema.RECORDS, ids=lambda r: r.name)
def test_layout(record):
    size, offsets = LAYOUTS[record.name]
    dtype = record.dtype
    assert dtype.itemsize == size
    assert {name: dtype.fields[name][1] for name in dtype.names} == offsets
    # No implicit padding: the columns tile the record exactly.
    assert sum(dtype.fields[name][0].itemsize for name in dtype.names) == size
    # Natural alignment, so kernels read every column without a split load.
    for name in dtype.names:
        field_type, offset = dtype.fields[name][:2]
        assert offset % field_type.alignment == 0, name
    assert size % 8 == 0


@pytest.mark.parametrize("record", schema.RECORDS, ids=lambda r: r.name)
def test_common_columns_mean_the_same_everywhere(record):
    dtype = record.dtype
    for column in ("ts_event", "ts_recv"):
        assert dtype[column] == np.dtype("<i8")
    assert dtype["venue"] == np.dtype("<u2")
    assert dtype["flags"] == np.dtype("<u2")
    for c in record.columns:
        if c.unit == "price_1e-9":
            assert dtype[c.name] == np.dtype("<i8"), c.name


def test_undef_price_is_int64_max():
    assert schema.UNDEF_PRICE == np.iinfo(np.int64).max
