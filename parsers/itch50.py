"""Nasdaq TotalView-ITCH 5.0: the message table, and the raw decoder and encoder it yields.

Every message is declared once below as (code, name, fields). From that table come the big-endian
wire dtype of each message, its native-endian decoded dtype, the vectorised decoder (gather every
message of a type into one array, no Python object per message), the encoder used by the generator and
the tests, and the reference table in ``docs/itch50.md``. Normalization into the common schema lives
in ``parsers.itch50_normalize``.

Field kinds: ``u1 u2 u4 u8`` unsigned big-endian integers; ``ts6`` the 6-byte nanoseconds since
midnight; ``price4``/``price8`` prices with 4 or 8 implied decimals; ``alpha(n)`` left-justified,
space-padded ASCII.
"""
from __future__ import annotations

from dataclasses import dataclass

import functools

import numba as nb
import numpy as np
from numba import literal_unroll


@dataclass(frozen=True)
class Field:
    """One wire field: name, kind (``u1``..``u8``, ``ts6``, ``price4``, ``price8``, ``alphaN``) and meaning."""

    name: str
    kind: str
    doc: str = ""

    @property
    def size(self) -> int:
        if self.kind.startswith("alpha"):
            return int(self.kind[5:])
        return {"u1": 1, "u2": 2, "u4": 4, "u8": 8, "ts6": 6, "price4": 4, "price8": 8}[self.kind]

    def wire(self) -> list[tuple[str, str]]:
        """(name, numpy type) rows of this field in the wire dtype."""
        if self.kind == "ts6":  # no 6-byte integer in numpy: two big-endian halves
            return [(self.name + "_hi", ">u2"), (self.name + "_lo", ">u4")]
        if self.kind.startswith("alpha"):
            return [(self.name, f"S{self.size}")]
        return [(self.name, ">u" + str({1: 1, 2: 2, 4: 4, 8: 8}[self.size]))]

    def native(self) -> tuple[str, str]:
        """(name, numpy type) of the decoded value: integers native-endian, text as bytes."""
        if self.kind == "ts6":
            return (self.name, "<u8")
        if self.kind.startswith("alpha"):
            return (self.name, f"S{self.size}")
        return (self.name, "<u" + str(self.size) if self.size > 1 else "u1")


def alpha(n: int) -> str:
    return f"alpha{n}"


CHAR = alpha(1)
HEADER = (
    Field("message_type", CHAR, "message type letter"),
    Field("stock_locate", "u2", "locate code of the security; 0 for market-wide messages"),
    Field("tracking_number", "u2", "Nasdaq internal tracking number"),
    Field("timestamp", "ts6", "nanoseconds since midnight, venue local time"),
)


@dataclass(frozen=True)
class Message:
    """One ITCH 5.0 message: its type letter, name and body fields (after the common header)."""

    code: bytes
    name: str
    body: tuple[Field, ...]

    @property
    def fields(self) -> tuple[Field, ...]:
        return HEADER + self.body

    @functools.cached_property
    def size(self) -> int:
        return sum(f.size for f in self.fields)

    def offset(self, name: str) -> int:
        """Byte offset of a field from the start of the message."""
        pos = 0
        for f in self.fields:
            if f.name == name:
                return pos
            pos += f.size
        raise KeyError(f"ITCH {self.code.decode()} has no field {name!r}")

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @functools.cached_property
    def wire_dtype(self) -> np.dtype:
        return np.dtype([row for f in self.fields for row in f.wire()])

    @functools.cached_property
    def dtype(self) -> np.dtype:
        return np.dtype([f.native() for f in self.fields])


def _m(code: str, name: str, *body: Field) -> Message:
    return Message(code.encode(), name, tuple(body))


F = Field
STOCK = F("stock", alpha(8), "symbol, space padded")
REF = F("order_ref", "u8", "order reference number, unique for the day")
MATCH = F("match_number", "u8", "match number, unique for the day")

# The specification, in its own order. Sizes are checked by tests/parsers/test_itch50.py.
MESSAGE_TABLE: tuple[Message, ...] = (
    _m("S", "system_event", F("event_code", CHAR, "O S Q M E C")),
    _m(
        "R",
        "stock_directory",
        STOCK,
        F("market_category", CHAR),
        F("financial_status", CHAR),
        F("round_lot_size", "u4"),
        F("round_lots_only", CHAR),
        F("issue_classification", CHAR),
        F("issue_subtype", alpha(2)),
        F("authenticity", CHAR),
        F("short_sale_threshold", CHAR),
        F("ipo_flag", CHAR),
        F("luld_tier", CHAR),
        F("etp_flag", CHAR),
        F("etp_leverage", "u4"),
        F("inverse", CHAR),
    ),
    _m("H", "stock_trading_action", STOCK, F("trading_state", CHAR, "H P Q T"), F("reserved", CHAR), F("reason", alpha(4))),
    _m("Y", "reg_sho_restriction", STOCK, F("reg_sho_action", CHAR, "0 1 2")),
    _m(
        "L",
        "market_participant_position",
        F("mpid", alpha(4)),
        STOCK,
        F("primary_market_maker", CHAR),
        F("market_maker_mode", CHAR),
        F("participant_state", CHAR),
    ),
    _m("V", "mwcb_decline_level", F("level_1", "price8"), F("level_2", "price8"), F("level_3", "price8")),
    _m("W", "mwcb_status", F("breached_level", CHAR, "1 2 3")),
    _m(
        "K",
        "ipo_quoting_period_update",
        STOCK,
        F("release_time", "u4", "seconds since midnight"),
        F("release_qualifier", CHAR, "A anticipated, C cancelled/postponed"),
        F("ipo_price", "price4"),
    ),
    _m(
        "J",
        "luld_auction_collar",
        STOCK,
        F("ref_price", "price4"),
        F("upper_price", "price4"),
        F("lower_price", "price4"),
        F("extension", "u4"),
    ),
    _m("h", "operational_halt", STOCK, F("market_code", CHAR, "Q B X"), F("halt_action", CHAR, "H T")),
    _m("A", "add_order", REF, F("side", CHAR, "B S"), F("shares", "u4"), STOCK, F("price", "price4")),
    _m("F", "add_order_mpid", REF, F("side", CHAR), F("shares", "u4"), STOCK, F("price", "price4"), F("attribution", alpha(4))),
    _m("E", "order_executed", REF, F("executed_shares", "u4"), MATCH),
    _m(
        "C",
        "order_executed_with_price",
        REF,
        F("executed_shares", "u4"),
        MATCH,
        F("printable", CHAR, "Y N"),
        F("execution_price", "price4"),
    ),
    _m("X", "order_cancel", REF, F("cancelled_shares", "u4")),
    _m("D", "order_delete", REF),
    _m("U", "order_replace", F("original_ref", "u8"), F("new_ref", "u8"), F("shares", "u4"), F("price", "price4")),
    _m("P", "trade", REF, F("side", CHAR), F("shares", "u4"), STOCK, F("price", "price4"), MATCH),
    _m("Q", "cross_trade", F("shares", "u8"), STOCK, F("cross_price", "price4"), MATCH, F("cross_type", CHAR, "O C H I")),
    _m("B", "broken_trade", MATCH),
    _m(
        "I",
        "noii",
        F("paired_shares", "u8"),
        F("imbalance_shares", "u8"),
        F("imbalance_direction", CHAR, "B S N O"),
        STOCK,
        F("far_price", "price4"),
        F("near_price", "price4"),
        F("current_ref_price", "price4"),
        F("cross_type", CHAR),
        F("price_variation", CHAR),
    ),
    _m("N", "rpii", STOCK, F("interest_flag", CHAR, "B S A N")),
    _m(
        "O",
        "dlcr_price_discovery",
        STOCK,
        F("open_eligibility", CHAR, "N Y"),
        F("min_allowable_price", "price4"),
        F("max_allowable_price", "price4"),
        F("near_execution_price", "price4"),
        F("near_execution_time", "u8"),
        F("lower_price_collar", "price4"),
        F("upper_price_collar", "price4"),
    ),
)

MESSAGES: dict[bytes, Message] = {m.code: m for m in MESSAGE_TABLE}
TYPE_CODES = b"".join(m.code for m in MESSAGE_TABLE)
# Wire size by type byte; 0 = not an ITCH 5.0 message type.
SIZE_BY_CODE = np.zeros(256, dtype=np.int64)
for _msg in MESSAGE_TABLE:
    SIZE_BY_CODE[_msg.code[0]] = _msg.size
PRICE4_TO_NANO = 100_000  # 1e-4 -> 1e-9
PRICE8_TO_NANO = 10  # 1e-8 -> 1e-9


# How one wire field becomes bytes of the native row: copied as is (text) or byte-reversed into a
# little-endian integer (the native width may be wider: a 6-byte timestamp lands in 8 bytes).
PLAN_COPY = 0
PLAN_SWAP = 1


def decode_plan(msg: Message) -> np.ndarray:
    """int64 rows (wire offset, wire width, native offset, PLAN_*) for every field of ``msg``."""
    native = msg.dtype
    rows = []
    wire = 0
    for f in msg.fields:
        kind = PLAN_COPY if f.kind.startswith("alpha") else PLAN_SWAP
        rows.append((wire, f.size, native.fields[f.name][1], kind))
        wire += f.size
    return np.array(rows, dtype=np.int64)


def _row_decoder(plan: tuple[tuple[int, int, int, int], ...]):
    """A kernel decoding messages of one layout into native rows (viewed as uint8 [n, itemsize]).

    The plan is a compile-time constant, so every field's loop is unrolled to its width: about twice
    as fast as reading the plan at run time. numba caches one kernel per plan.
    """
    @nb.njit(cache=True, nogil=True, _nrt=False)
    def decode_rows(buf, offsets, out):
        for i in range(offsets.shape[0]):
            pos = offsets[i]
            for field in literal_unroll(plan):
                wire, width, at, how = field
                if how == PLAN_COPY:
                    for k in range(width):
                        out[i, at + k] = buf[pos + wire + k]
                else:
                    for k in range(width):
                        out[i, at + k] = buf[pos + wire + width - 1 - k]

    return decode_rows


@functools.cache
def row_decoder(code: bytes):
    """The compiled row decoder of one message type (built on first use)."""
    return _row_decoder(tuple(tuple(int(x) for x in row) for row in decode_plan(MESSAGES[code])))


def decode_type(buf: np.ndarray, offsets: np.ndarray, code: bytes) -> np.ndarray:
    """Decode every message of one type at ``offsets`` into the type's native dtype.

    The caller has checked that ``size`` bytes are available at each offset. Timestamps are combined
    into ns since midnight; prices stay in the venue's implied-decimal integers.
    """
    msg = MESSAGES[code]
    out = np.zeros(len(offsets), dtype=msg.dtype)
    row_decoder(code)(buf, offsets.astype(np.int64, copy=False),
                      out.view(np.uint8).reshape(len(offsets), msg.dtype.itemsize))
    return out


@nb.njit(cache=True, nogil=True)
def group_by_type(buf, frames, size_by_code):
    """Counting sort of a batch's decodable messages by type byte, sequence order kept within a type.

    Returns (frame indexes grouped by type, count by type byte, messages skipped: unknown type or
    shorter than specified).
    """
    n = frames.shape[0]
    counts = np.zeros(256, dtype=np.int64)
    types = np.empty(n, dtype=np.uint8)
    skipped = 0
    for i in range(n):
        t = buf[frames[i].offset]
        spec = size_by_code[t]
        if spec == 0 or frames[i].length < spec:
            types[i] = 0
            skipped += 1
        else:
            types[i] = t
            counts[t] += 1
    start = np.zeros(256, dtype=np.int64)
    total = 0
    for t in range(1, 256):
        start[t] = total
        total += counts[t]
    order = np.empty(total, dtype=np.int64)
    for i in range(n):
        t = types[i]
        if t != 0:
            order[start[t]] = i
            start[t] += 1
    return order, counts, skipped


def decode_batch(buf: np.ndarray, frames: np.ndarray) -> tuple[dict[bytes, np.ndarray], int]:
    """Decode every message of a batch, type by type: ({type letter: native rows in sequence order}, skipped).

    ``frames`` is a ``parsers.frames.FRAME_DTYPE`` batch; messages of an unknown type or shorter than
    their specified size are skipped and counted (``ItchNormalizer`` says which, as anomalies).
    """
    order, counts, skipped = group_by_type(buf, frames, SIZE_BY_CODE)
    offsets = frames["offset"]
    out = {}
    at = 0
    for code in np.flatnonzero(counts):
        idx = order[at : at + counts[code]]
        at += counts[code]
        out[bytes([code])] = decode_type(buf, offsets[idx], bytes([code]))
    return out, skipped


def encode_columns(code: bytes, columns: dict[str, np.ndarray | int | bytes], n: int | None = None) -> np.ndarray:
    """Encode ``n`` messages of one type from column values into a ``(n, size)`` uint8 array.

    Args:
        code: the message type letter.
        columns: field name -> array of ``n`` values (or one scalar for all). ``message_type`` is set
            for you; missing fields are zero (numbers) or spaces (text). ``timestamp`` is ns since midnight.
        n: number of messages, when every column is a scalar.
    """
    msg = MESSAGES[code]
    if n is None:
        n = next(len(v) for v in columns.values() if isinstance(v, np.ndarray))
    unknown = set(columns) - {f.name for f in msg.fields}
    if unknown:
        raise KeyError(f"ITCH {code.decode()} has no field(s) {sorted(unknown)}")
    wire = np.zeros(n, dtype=msg.wire_dtype)
    for f in msg.fields:
        value = code if f.name == "message_type" else columns.get(f.name)
        if f.kind == "ts6":
            ts = np.asarray(0 if value is None else value, dtype=np.uint64)
            wire[f.name + "_hi"] = (ts >> np.uint64(32)).astype(np.uint16)
            wire[f.name + "_lo"] = (ts & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        elif f.kind.startswith("alpha"):
            text = b" " * f.size if value is None else value
            wire[f.name] = np.char.ljust(np.asarray(text, dtype=f"S{f.size}"), f.size)
        elif value is not None:
            wire[f.name] = value
    return wire.view(np.uint8).reshape(n, msg.size)


def encode(code: bytes, **fields) -> bytes:
    """Encode one message (tests, fixtures): ``encode(b"A", order_ref=1, side=b"B", ...)``."""
    return encode_columns(code, fields, n=1).tobytes()
