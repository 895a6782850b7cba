"""The ITCH 5.0 table against the specification, and encode/decode round trips of every type."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers import itch50

# Message lengths as the Nasdaq TotalView-ITCH 5.0 specification states them.
SPEC_SIZES = {
    b"S": 12, b"R": 39, b"H": 25, b"Y": 20, b"L": 26, b"V": 35, b"W": 12, b"K": 28, b"J": 35, b"h": 21,
    b"A": 36, b"F": 40, b"E": 31, b"C": 36, b"X": 23, b"D": 19, b"U": 35, b"P": 44, b"Q": 40, b"B": 19,
    b"I": 50, b"N": 20, b"O": 48,
}


def test_every_type_of_the_specification_is_declared_once():
    assert [m.code for m in itch50.MESSAGE_TABLE] == list(SPEC_SIZES)
    assert len(itch50.MESSAGES) == len(itch50.MESSAGE_TABLE)


@pytest.mark.parametrize("code", list(SPEC_SIZES))
def test_sizes_match_the_specification(code):
    msg = itch50.MESSAGES[code]
    assert msg.size == SPEC_SIZES[code]
    assert msg.wire_dtype.itemsize == SPEC_SIZES[code]
    assert itch50.SIZE_BY_CODE[code[0]] == SPEC_SIZES[code]


def test_header_offsets():
    wire = itch50.MESSAGES[b"A"].wire_dtype
    assert [wire.fields[n][1] for n in ("message_type", "stock_locate", "tracking_number", "timestamp_hi",
                                         "timestamp_lo", "order_ref", "side", "shares", "stock", "price")] == [
        0, 1, 3, 5, 7, 11, 19, 20, 24, 32]


# Literal bytes of an add order from Nasdaq's feed (2023-08-22, IVOO), field values read off the spec.
REAL_ADD = bytes.fromhex("41159800001f1aced85306000000000166b53e420000064049564f4f20202020000d55ac")


def test_decode_real_add_order_bytes():
    buf = np.frombuffer(REAL_ADD + REAL_ADD, dtype=np.uint8)
    rows = itch50.decode_type(buf, np.array([0, 36]), b"A")
    for row in rows:
        assert row["message_type"] == b"A"
        assert row["stock_locate"] == 5528
        assert row["tracking_number"] == 0
        assert row["timestamp"] == 34_199_999_894_278
        assert row["order_ref"] == 23_508_286
        assert row["side"] == b"B"
        assert row["shares"] == 1600
        assert row["stock"] == b"IVOO    "
        assert row["price"] == 873_900


def test_encode_reproduces_real_bytes():
    assert itch50.encode(b"A", stock_locate=5528, timestamp=34_199_999_894_278, order_ref=23_508_286, side=b"B",
                         shares=1600, stock=b"IVOO", price=873_900) == REAL_ADD


def test_encode_rejects_unknown_fields():
    with pytest.raises(KeyError):
        itch50.encode(b"D", order_ref=1, shares=5)


def _values_for(msg: itch50.Message):
    fields = {}
    for f in msg.fields:
        if f.name == "message_type":
            continue
        if f.kind.startswith("alpha"):
            fields[f.name] = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=f.size,
                                     max_size=f.size).map(str.encode)
        elif f.kind == "ts6":
            fields[f.name] = st.integers(0, 2**48 - 1)
        else:
            fields[f.name] = st.integers(0, 2 ** (8 * f.size) - 1)
    return st.fixed_dictionaries(fields)


@pytest.mark.parametrize("code", list(SPEC_SIZES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip(code, data):
    msg = itch50.MESSAGES[code]
    values = [data.draw(_values_for(msg)) for _ in range(3)]
    wire = b"".join(itch50.encode(code, **v) for v in values)
    assert len(wire) == 3 * msg.size
    buf = np.frombuffer(b"\x00" + wire, dtype=np.uint8)  # an odd offset: no alignment assumed
    rows = itch50.decode_type(buf, 1 + np.arange(3) * msg.size, code)
    for row, v in zip(rows, values):
        assert row["message_type"] == code
        for name, value in v.items():
            assert row[name] == value, name
    # Column-wise encoding gives the same bytes as one-by-one.
    columns = {name: np.array([v[name] for v in values], dtype=msg.dtype[name]) for name in values[0]}
    assert itch50.encode_columns(code, columns).tobytes() == wire
