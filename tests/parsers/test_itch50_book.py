"""The book-message kernel (``decode_book_rows``) against the generic per-type decoder
(``itch50.decode_batch``): every column of every book message type, through ``BOOK_FIELDS``."""
import datetime as dt

import numpy as np

from captures.generator import generate
from parsers import itch50, itch50_book, schema
from parsers.clock import VenueClock
from parsers.frames import frames_of
from parsers.itch50_normalize import classify_frames
from parsers.schema import UNDEF_PRICE, Flag, Side

PRICE4 = 100_000  # a 4-decimal wire price in the schema's 1e-9 units


def _rows(buf, frames, date, known_every=3):
    counts = np.zeros(256, dtype=np.int64)
    unknown = np.zeros(256, dtype=np.int64)
    book = classify_frames(buf, frames, itch50.SIZE_BY_CODE, itch50_book.BOOK_ACTION, counts, unknown)[0]
    known = np.zeros(1 << 16, dtype=bool)
    known[::known_every] = True  # some instruments unknown: their rows are flagged
    rows = np.empty(len(book), dtype=schema.EVENT.dtype)
    wide = np.empty(len(book), dtype=np.uint64)
    cross = np.empty(len(book), dtype=np.uint8)
    span = np.array([0, 0, np.iinfo(np.int64).max, np.iinfo(np.int64).min], dtype=np.int64)
    itch50_book.decode_book_rows(buf, frames, book, itch50_book.BOOK_ACTION, known, *VenueClock(date).kernel_params(),
                                 1, rows, wide, cross, span)
    return book, rows, wide, cross, known


def _check_against_generic_decoder(buf, frames, date):
    book, rows, wide, cross, known = _rows(buf, frames, date)
    decoded, _ = itch50.decode_batch(buf, frames)
    types = buf[frames["offset"][book]]
    assert set(np.unique(types).tobytes()) <= {c[0] for c in itch50_book.BOOK_FIELDS}
    clock = VenueClock(date)
    for code, columns in itch50_book.BOOK_FIELDS.items():
        mine = types == code[0]
        got, msgs = rows[mine], decoded.get(code)
        if msgs is None:
            assert not mine.any()
            continue
        assert len(got) == len(msgs)
        assert (got["action"] == itch50_book.BOOK_ACTIONS[code]).all()
        assert (got["instrument_id"] == msgs["stock_locate"]).all()
        assert (got["tracking"] == msgs["tracking_number"]).all()
        assert (got["sequence"] == frames["sequence"][book][mine]).all()
        good = msgs["timestamp"] < 86_400 * 10**9
        assert (got["ts_event"][good] == clock.to_epoch(msgs["timestamp"][good].astype(np.int64))).all()
        assert (((got["flags"] & Flag.BAD_TS_EVENT) != 0) == ~good).all()
        assert (((got["flags"] & Flag.UNKNOWN_INSTRUMENT) != 0) == ~known[msgs["stock_locate"]]).all()
        for column in ("order_id", "prev_order_id", "match_id"):
            want = msgs[columns[column]] if column in columns else 0
            assert (got[column] == want).all(), (code, column)
        size = msgs[columns["size"]].astype(np.uint64) if "size" in columns else np.zeros(len(msgs), np.uint64)
        assert (wide[mine] == size).all() and (got["size"] == np.minimum(size, 0xFFFFFFFF)).all(), code
        price = msgs[columns["price"]].astype(np.int64) * PRICE4 if "price" in columns else UNDEF_PRICE
        assert (got["price"] == price).all(), code
        side = (np.where(msgs[columns["side"]] == b"B", Side.BID, Side.ASK) if "side" in columns
                else Side.NONE)
        assert (got["side"] == side).all(), code
        printable = msgs[columns["printable"]] != b"N" if "printable" in columns else True
        assert (((got["flags"] & Flag.NON_PRINTABLE) == 0) == printable).all(), code
        assert (((got["flags"] & Flag.ATTRIBUTED) != 0) == ("attribution" in columns)).all(), code
        want_cross = msgs[columns["cross_type"]].view(np.uint8) if "cross_type" in columns else 0
        assert (cross[mine] == want_cross).all(), code
    return types


def test_every_book_message_of_a_generated_day_matches_the_generic_decoder():
    session = generate(messages=60_000, symbols=40, seed=5, mwcb_breach=True)
    types = _check_against_generic_decoder(session.buf, session.frames(), session.date)
    assert set(types.tobytes()) == {c[0] for c in itch50_book.BOOK_FIELDS}  # every type exercised


def test_hand_made_edge_values_match_the_generic_decoder():
    """Sizes past 32 bits on a cross, a non-printable C, an attributed F, a timestamp past midnight."""
    msgs = [itch50.encode(b"Q", stock_locate=3, shares=(1 << 33) + 5, stock=b"ZVZZT", cross_price=12_3400,
                          match_number=9, cross_type=b"O"),
            itch50.encode(b"C", stock_locate=3, order_ref=7, executed_shares=10, match_number=1, printable=b"N",
                          execution_price=100_0050),
            itch50.encode(b"F", stock_locate=4, order_ref=8, side=b"S", shares=100, stock=b"ZVZZT",
                          price=100_0100, attribution=b"GSCO"),
            itch50.encode(b"D", stock_locate=4, order_ref=8, timestamp=90_000 * 10**9)]
    buf, frames = frames_of(msgs)
    _check_against_generic_decoder(buf, frames, dt.date(2024, 3, 15))
