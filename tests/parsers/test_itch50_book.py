"""The two book-message kernels: table-driven (``decode_book_events``) and compiled-layout
(``decode_book_rows``) write the same rows, byte for byte, for every book message type."""
import numpy as np

from captures.generator import generate
from parsers import itch50, itch50_book, schema
from parsers.clock import VenueClock
from parsers.frames import frames_of
from parsers.itch50_normalize import classify_frames


def _decode_both(buf, frames, date):
    counts = np.zeros(256, dtype=np.int64)
    unknown = np.zeros(256, dtype=np.int64)
    book = classify_frames(buf, frames, itch50.SIZE_BY_CODE, itch50_book.BOOK_ACTION, counts, unknown)[0]
    known = np.zeros(1 << 16, dtype=bool)
    known[::3] = True  # some instruments unknown: their rows are flagged
    params = VenueClock(date).kernel_params()
    out = []
    for kernel, layout in ((itch50_book.decode_book_events, (itch50_book.BOOK_OFFSET, itch50_book.BOOK_WIDTH)),
                           (itch50_book.decode_book_rows, ())):
        rows = np.empty(len(book), dtype=schema.EVENT.dtype)
        wide = np.empty(len(book), dtype=np.uint64)
        cross = np.empty(len(book), dtype=np.uint8)
        span = np.array([0, 0, np.iinfo(np.int64).max, np.iinfo(np.int64).min], dtype=np.int64)
        kernel(buf, frames, book, *layout, itch50_book.BOOK_ACTION, known, *params, 1, rows, wide, cross, span)
        out.append((rows.tobytes(), wide.tobytes(), cross.tobytes(), span.tolist()))
    return book, out


def test_both_kernels_write_the_same_rows_for_a_generated_day():
    session = generate(messages=60_000, symbols=40, seed=5, mwcb_breach=True)
    frames = session.frames()
    book, (table, compiled) = _decode_both(session.buf, frames, session.date)
    types = {bytes([session.buf[o]]) for o in frames["offset"][book]}
    assert types == set(itch50_book.BOOK_FIELDS), types  # every book type is exercised
    assert compiled == table


def test_both_kernels_agree_on_hand_made_edge_values():
    """Sizes past 32 bits on a cross, a non-printable C, an attributed F, a bad timestamp."""
    msgs = [itch50.encode(b"Q", stock_locate=3, shares=(1 << 33) + 5, stock=b"ZVZZT", cross_price=12_3400,
                          match_number=9, cross_type=b"O"),
            itch50.encode(b"C", stock_locate=3, order_ref=7, executed_shares=10, match_number=1, printable=b"N",
                          execution_price=100_0050),
            itch50.encode(b"F", stock_locate=4, order_ref=8, side=b"S", shares=100, stock=b"ZVZZT",
                          price=100_0100, attribution=b"GSCO"),
            itch50.encode(b"D", stock_locate=4, order_ref=8, timestamp=90_000 * 10**9)]
    buf, frames = frames_of(msgs)
    import datetime as dt

    _, (table, compiled) = _decode_both(buf, frames, dt.date(2024, 3, 15))
    assert compiled == table
