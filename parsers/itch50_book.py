"""ITCH 5.0 book messages (A F E C X D U P Q) straight into ``schema.EVENT`` rows, in one compiled pass.

Book messages are nearly every message of a day, so they skip the per-type gather of
``itch50.decode_type`` and go byte-to-row in one kernel (``decode_book_rows``, used by the normalizer
and the live path). The kernel knows no layout of its own: field positions come from
``itch50.MESSAGE_TABLE`` through the mapping below (normalized column -> wire field, per message
type), as module constants that numba compiles in.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from parsers import itch50
from parsers.clock import NANOS_PER_DAY
from parsers.schema import UNDEF_PRICE, Action, Flag, Side

# Which wire field fills which event column, per book message type.
BOOK_FIELDS: dict[bytes, dict[str, str]] = {
    b"A": {"order_id": "order_ref", "side": "side", "size": "shares", "price": "price"},
    b"F": {"order_id": "order_ref", "side": "side", "size": "shares", "price": "price", "attribution": "attribution"},
    b"E": {"order_id": "order_ref", "size": "executed_shares", "match_id": "match_number"},
    b"C": {"order_id": "order_ref", "size": "executed_shares", "match_id": "match_number",
           "price": "execution_price", "printable": "printable"},
    b"X": {"order_id": "order_ref", "size": "cancelled_shares"},
    b"D": {"order_id": "order_ref"},
    b"U": {"order_id": "new_ref", "prev_order_id": "original_ref", "size": "shares", "price": "price"},
    b"P": {"order_id": "order_ref", "side": "side", "size": "shares", "price": "price", "match_id": "match_number"},
    b"Q": {"size": "shares", "price": "cross_price", "match_id": "match_number", "cross_type": "cross_type"},
}
BOOK_ACTIONS: dict[bytes, Action] = {
    b"A": Action.ADD, b"F": Action.ADD, b"E": Action.EXECUTE, b"C": Action.EXECUTE, b"X": Action.CANCEL,
    b"D": Action.DELETE, b"U": Action.REPLACE, b"P": Action.TRADE, b"Q": Action.CROSS,
}
COLUMNS = ("order_id", "prev_order_id", "size", "price", "side", "match_id", "printable", "cross_type", "attribution")
(COL_ORDER_ID, COL_PREV, COL_SIZE, COL_PRICE, COL_SIDE, COL_MATCH, COL_PRINTABLE, COL_CROSS, COL_ATTRIBUTION) = range(len(COLUMNS))


def _actions() -> np.ndarray:
    """The event action of each book message type, by type byte (0: not a book message)."""
    action = np.zeros(256, dtype=np.uint8)
    for code, act in BOOK_ACTIONS.items():
        action[code[0]] = act
    return action


BOOK_ACTION = _actions()
_TS_OFFSET = itch50.MESSAGES[b"A"].offset("timestamp")
_LOCATE_OFFSET = itch50.MESSAGES[b"A"].offset("stock_locate")
_TRACKING_OFFSET = itch50.MESSAGES[b"A"].offset("tracking_number")
_FRAME_BITS = np.uint16(Flag.LAST | Flag.RECOVERED | Flag.BAD_TS_RECV)
_BAD_TS = np.uint16(Flag.BAD_TS_EVENT)
_UNKNOWN_INSTRUMENT = np.uint16(Flag.UNKNOWN_INSTRUMENT)
_NON_PRINTABLE = np.uint16(Flag.NON_PRINTABLE)
_ATTRIBUTED = np.uint16(Flag.ATTRIBUTED)
_SIDE_NONE = np.uint8(Side.NONE)
_BID = np.uint8(Side.BID)
_ASK = np.uint8(Side.ASK)
_UNDEF = np.int64(UNDEF_PRICE)


def _at(code: bytes, column: str) -> tuple[int, int]:
    """(offset, width) of the wire field that fills ``column`` in book message ``code``."""
    msg = itch50.MESSAGES[code]
    field = BOOK_FIELDS[code][column]
    if column == "price":
        assert msg.field(field).kind == "price4", "the kernel scales book prices from price4"
    return msg.offset(field), msg.field(field).size


def _same(*places: tuple[int, int]) -> tuple[int, int]:
    assert len(set(places)) == 1, "the per-type kernel reads these types' field from one place"
    return places[0]


# The layout as compile-time constants for ``decode_book_rows``: one branch on the type, then fixed
# positions (a table of positions read per row cost a branch per column).
_REF, _REF_W = _same(*(_at(c, "order_id") for c in (b"A", b"F", b"E", b"C", b"X", b"D", b"P")))
_ADD_SIDE, _ = _same(_at(b"A", "side"), _at(b"F", "side"), _at(b"P", "side"))
_ADD_SIZE, _ADD_SIZE_W = _same(_at(b"A", "size"), _at(b"F", "size"), _at(b"P", "size"))
_ADD_PRICE, _ADD_PRICE_W = _same(_at(b"A", "price"), _at(b"F", "price"), _at(b"P", "price"))
_EXEC_SIZE, _EXEC_SIZE_W = _same(_at(b"E", "size"), _at(b"C", "size"))
_EXEC_MATCH, _MATCH_W = _same(_at(b"E", "match_id"), _at(b"C", "match_id"))
_EXEC_PRINTABLE, _ = _at(b"C", "printable")
_EXEC_PRICE, _EXEC_PRICE_W = _at(b"C", "price")
_CANCEL_SIZE, _CANCEL_SIZE_W = _at(b"X", "size")
_REPLACE_OLD, _ = _at(b"U", "prev_order_id")
_REPLACE_NEW, _ = _at(b"U", "order_id")
_REPLACE_SIZE, _REPLACE_SIZE_W = _at(b"U", "size")
_REPLACE_PRICE, _REPLACE_PRICE_W = _at(b"U", "price")
_TRADE_MATCH, _ = _at(b"P", "match_id")
_CROSS_SIZE, _CROSS_SIZE_W = _at(b"Q", "size")
_CROSS_PRICE, _CROSS_PRICE_W = _at(b"Q", "price")
_CROSS_MATCH, _ = _at(b"Q", "match_id")
_CROSS_TYPE, _ = _at(b"Q", "cross_type")
_T_A, _T_F, _T_E, _T_C, _T_X, _T_D, _T_U, _T_P = (ord(c) for c in "AFECXDUP")
_U32_MAX = np.uint64(0xFFFFFFFF)


@nb.njit(cache=True, inline="always", _nrt=False)
def _be(buf, pos, width):
    v = np.uint64(0)
    for k in range(width):
        v = (v << np.uint64(8)) | np.uint64(buf[pos + k])
    return v


@nb.njit(cache=True, nogil=True, _nrt=False)
def decode_book_rows(buf, frames, selected, action_lut, known_locate, midnight, change_local, offset_before,
                     offset_after, venue, events, wide_size, cross_type, counts):
    """Write one event row per selected frame, in frame order.

    Args:
        buf: uint8 message buffer; frames: ``FRAME_DTYPE`` rows; selected: int64 frame indexes of
            whole book messages, ascending.
        action_lut: ``BOOK_ACTION``.
        known_locate: bool by stock locate, True once its directory message was seen.
        midnight, change_local, offset_before, offset_after: ``VenueClock.kernel_params()``.
        venue: venue id for every row.
        events: ``schema.EVENT`` rows to fill (len(selected)); wide_size: uint64 per row, the full
            wire size (crosses carry 8 bytes); cross_type: uint8 per row (0 when not a cross).
        counts: int64 [bad timestamps, unknown instruments, least ts_event, greatest ts_event]: the
            counts incremented, the span widened by every row with a good timestamp.
    """
    for j in range(selected.shape[0]):
        fr = frames[selected[j]]
        pos = fr.offset
        t = buf[pos]
        ev = events[j]
        local = np.int64(_be(buf, pos + _TS_OFFSET, 6))
        flags = np.uint16(fr.flags) & _FRAME_BITS
        if local >= NANOS_PER_DAY:
            flags |= _BAD_TS
            counts[0] += 1
        ev.ts_event = midnight + local - (offset_after if local >= change_local else offset_before)
        if local < NANOS_PER_DAY:
            counts[2] = min(counts[2], ev.ts_event)
            counts[3] = max(counts[3], ev.ts_event)
        ev.ts_recv = fr.ts_recv
        ev.sequence = fr.sequence
        locate = np.uint32(_be(buf, pos + _LOCATE_OFFSET, 2))
        if not known_locate[locate]:
            flags |= _UNKNOWN_INSTRUMENT
            counts[1] += 1
        ev.instrument_id = locate
        ev.tracking = np.uint16(_be(buf, pos + _TRACKING_OFFSET, 2))
        ev.venue = venue
        ev.action = action_lut[t]
        order_id = np.uint64(0)
        prev = np.uint64(0)
        match = np.uint64(0)
        size = np.uint64(0)
        price = _UNDEF
        side = _SIDE_NONE
        cross = np.uint8(0)
        if t == _T_A or t == _T_F or t == _T_P:
            order_id = _be(buf, pos + _REF, _REF_W)
            side = _BID if buf[pos + _ADD_SIDE] == 66 else _ASK  # 'B'
            size = _be(buf, pos + _ADD_SIZE, _ADD_SIZE_W)
            price = np.int64(_be(buf, pos + _ADD_PRICE, _ADD_PRICE_W)) * 100_000
            if t == _T_F:
                flags |= _ATTRIBUTED
            elif t == _T_P:
                match = _be(buf, pos + _TRADE_MATCH, _MATCH_W)
        elif t == _T_E or t == _T_C:
            order_id = _be(buf, pos + _REF, _REF_W)
            size = _be(buf, pos + _EXEC_SIZE, _EXEC_SIZE_W)
            match = _be(buf, pos + _EXEC_MATCH, _MATCH_W)
            if t == _T_C:
                price = np.int64(_be(buf, pos + _EXEC_PRICE, _EXEC_PRICE_W)) * 100_000
                if buf[pos + _EXEC_PRINTABLE] == 78:  # 'N'
                    flags |= _NON_PRINTABLE
        elif t == _T_X:
            order_id = _be(buf, pos + _REF, _REF_W)
            size = _be(buf, pos + _CANCEL_SIZE, _CANCEL_SIZE_W)
        elif t == _T_D:
            order_id = _be(buf, pos + _REF, _REF_W)
        elif t == _T_U:
            prev = _be(buf, pos + _REPLACE_OLD, _REF_W)
            order_id = _be(buf, pos + _REPLACE_NEW, _REF_W)
            size = _be(buf, pos + _REPLACE_SIZE, _REPLACE_SIZE_W)
            price = np.int64(_be(buf, pos + _REPLACE_PRICE, _REPLACE_PRICE_W)) * 100_000
        else:  # Q
            size = _be(buf, pos + _CROSS_SIZE, _CROSS_SIZE_W)
            price = np.int64(_be(buf, pos + _CROSS_PRICE, _CROSS_PRICE_W)) * 100_000
            match = _be(buf, pos + _CROSS_MATCH, _MATCH_W)
            cross = buf[pos + _CROSS_TYPE]
        ev.order_id = order_id
        ev.prev_order_id = prev
        ev.match_id = match
        wide_size[j] = size
        ev.size = np.uint32(min(size, _U32_MAX))
        ev.price = price
        ev.side = side
        cross_type[j] = cross
        ev.flags = flags
