"""ITCH 5.0 into the common schema (``parsers.schema``), batch by batch.

A batch is a byte buffer plus its frame table (``parsers.frames``), in venue sequence order. Each
message type is decoded in one vectorised pass (``itch50.decode_type``) and scattered into its record
rows at the message's position; the normalizer's order index then fills in the price, side and size
that executions, cancels and deletes leave out: an ``OrderRefTable`` (``order_refs.enrich_events``), or
the ``BookEngine`` that builds the books, which does it as it applies the batch, so that a day's orders
are indexed once (``ItchNormalizer(orders=engine)``; the batch's book rows come back in
``Normalized.book``). State that spans batches (resting orders, the stock directory) lives in the
``ItchNormalizer`` and its order index.

Anomalies are counted, never raised: an unknown message type, a message shorter than its specified
size (skipped), a longer one (decoded; the specification lets messages grow), a timestamp past
midnight, an unknown order reference or stock locate.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from parsers import itch50, itch50_book, schema
from parsers.clock import NANOS_PER_DAY, VenueClock
from parsers.buffers import BufferPool
from parsers.order_refs import OrderRefTable
from parsers.trades import trades_from_events
from parsers.schema import UNDEF_PRICE, Flag, StatusKind, TradingState

_STATUS_CODES = (b"H", b"Y", b"V", b"W", b"K", b"J", b"h")
_TRADING_STATE = {b"H": TradingState.HALTED, b"P": TradingState.PAUSED, b"Q": TradingState.QUOTE_ONLY, b"T": TradingState.TRADING}
_FRAME_FLAG_MASK = np.uint16(Flag.LAST | Flag.RECOVERED | Flag.BAD_TS_RECV)
_NO_SPAN = (np.iinfo(np.int64).max, np.iinfo(np.int64).min)  # (least, greatest) before any timestamp
_EMPTY_ROWS = {r.name: r.empty(0) for r in schema.RECORDS}  # shared: a zero-length array holds nothing to change
_NO_TYPED: dict = {}  # a batch without non-book messages (never written to)
EVENT_ROWS = 1 << 16  # event buffers hold this many rows (a replay's batch), more for a larger batch


@dataclass
class Normalized:
    """One batch in the common schema; every array is in venue sequence order."""

    events: np.ndarray
    trades: np.ndarray
    status: np.ndarray
    definitions: np.ndarray
    imbalance: np.ndarray
    price_discovery: np.ndarray
    retail_interest: np.ndarray
    broken_trades: np.ndarray
    system_events: np.ndarray
    messages: int = 0
    book: object = None  # the BookOutput of this batch when the order index is a BookEngine

    def records(self) -> dict[str, np.ndarray]:
        """Record name (``schema.Record.name``) -> rows."""
        return {r.name: getattr(self, r.name) for r in schema.RECORDS}


@dataclass
class _Typed:
    """The messages of one type in a batch: decoded fields, frame rows, and positions in the batch."""

    msgs: np.ndarray
    frames: np.ndarray
    index: np.ndarray  # frame index of each message (its place in the batch)


@dataclass
class ItchNormalizer:
    """Normalizes ITCH 5.0 batches of one session (one venue, one date)."""

    clock: VenueClock
    venue: int = 1
    orders: OrderRefTable = field(default_factory=OrderRefTable)  # or a BookEngine (module docstring)
    _type_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))  # decoded, by type byte
    anomalies: Counter = field(default_factory=Counter)
    symbols: dict[int, str] = field(default_factory=dict)  # instrument id (locate) -> symbol
    _known_locate: np.ndarray = field(default_factory=lambda: np.zeros(1 << 16, dtype=bool))
    _unknown_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))  # per batch
    first_ts_event: int | None = None
    last_ts_event: int | None = None
    # Event rows come back once no consumer holds them (a fresh buffer a batch costs its page faults).
    _event_rows: BufferPool = field(default_factory=lambda: BufferPool(schema.EVENT.dtype))
    _wide_size: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    _cross_type: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint8))

    def normalize(self, buf: np.ndarray, frames: np.ndarray) -> Normalized:
        """Decode and normalize one batch (``buf`` uint8, ``frames`` ``FRAME_DTYPE``)."""
        typed, book = self._decode(buf, frames)
        if b"R" in typed:
            self._learn_directory(typed[b"R"])
        events, wide_size, cross_type, book_rows = self._events(buf, frames, book)
        out = Normalized(
            events=events,
            trades=self._trades(events, wide_size, cross_type),
            status=self._status(typed),
            definitions=self._definitions(typed.get(b"R")),
            imbalance=self._imbalance(typed.get(b"I")),
            price_discovery=self._price_discovery(typed.get(b"O")),
            retail_interest=self._retail_interest(typed.get(b"N")),
            broken_trades=self._broken(typed.get(b"B")),
            system_events=self._system(typed.get(b"S")),
            messages=len(frames),
            book=book_rows,
        )
        self._count_unknown_instruments(typed)
        return out

    @property
    def by_type(self) -> dict[str, int]:
        """Messages decoded so far, by type letter."""
        return {chr(c): int(self._type_counts[c]) for c in np.flatnonzero(self._type_counts)}

    def anomaly_counts(self) -> dict[str, int]:
        counts = Counter(self.anomalies)
        counts.update(self.orders.anomaly_counts())
        return {k: v for k, v in sorted(counts.items()) if v}

    # -- decoding ---------------------------------------------------------------------------------

    def _decode(self, buf: np.ndarray, frames: np.ndarray) -> tuple[dict[bytes, _Typed], np.ndarray]:
        """Validate lengths; decode the non-book messages by type; return them and the book frames' indexes."""
        if len(frames) == 0:
            return {}, np.empty(0, dtype=np.int64)
        book, rest, n_unknown, short, longer = classify_frames(
            buf, frames, itch50.SIZE_BY_CODE, itch50_book.BOOK_ACTION, self._type_counts, self._unknown_counts)
        if n_unknown:
            for c in np.flatnonzero(self._unknown_counts):
                self.anomalies[f"unknown_type_{_letter(c)}"] += int(self._unknown_counts[c])
            self._unknown_counts[:] = 0
        if short:
            self.anomalies["truncated_message"] += int(short)
        if longer:
            self.anomalies["longer_than_spec"] += int(longer)
        if not len(rest):  # the common case live: book messages only
            return _NO_TYPED, book
        # The few non-book messages, grouped by type in sequence order (stable radix sort on uint8).
        rest_types = buf[frames["offset"][rest]]
        order = rest[np.argsort(rest_types, kind="stable")]
        rest_counts = np.bincount(rest_types, minlength=256)
        starts = np.concatenate(([0], np.cumsum(rest_counts)[:-1]))
        typed: dict[bytes, _Typed] = {}
        for msg in itch50.MESSAGE_TABLE:
            c = msg.code[0]
            if rest_counts[c] == 0:
                continue
            idx = order[starts[c] : starts[c] + rest_counts[c]]
            fr = frames[idx]
            typed[msg.code] = _Typed(itch50.decode_type(buf, fr["offset"], msg.code), fr, idx)
        self._track_time_span([t.msgs["timestamp"] for t in typed.values()])
        return typed, book

    def _track_time_span(self, stamps: list[np.ndarray]) -> None:
        """Note the span of venue times (ns since midnight) of decoded messages, L messages included."""
        stamps = np.concatenate(stamps) if stamps else np.empty(0, dtype=np.uint64)
        stamps = stamps[stamps < NANOS_PER_DAY]
        if len(stamps):
            lo, hi = self.clock.to_epoch(np.array([stamps.min(), stamps.max()]))
            self._note_span(int(lo), int(hi))

    def _note_span(self, lo: int, hi: int) -> None:
        self.first_ts_event = lo if self.first_ts_event is None else min(self.first_ts_event, lo)
        self.last_ts_event = hi if self.last_ts_event is None else max(self.last_ts_event, hi)

    def _common(self, record: schema.Record, t: _Typed) -> np.ndarray:
        """Rows of ``record`` with the columns every record shares filled from the messages."""
        rows = record.empty(len(t.msgs))
        ts = t.msgs["timestamp"]
        rows["ts_event"] = self.clock.to_epoch(ts)
        rows["ts_recv"] = t.frames["ts_recv"]
        rows["sequence"] = t.frames["sequence"]
        rows["venue"] = self.venue
        flags = t.frames["flags"] & _FRAME_FLAG_MASK
        bad_ts = ts >= NANOS_PER_DAY
        if bad_ts.any():
            self.anomalies["bad_timestamp"] += int(bad_ts.sum())
            flags = flags | np.where(bad_ts, np.uint16(Flag.BAD_TS_EVENT), np.uint16(0))
        rows["flags"] = flags
        if "instrument_id" in rows.dtype.names:
            rows["instrument_id"] = t.msgs["stock_locate"]
        return rows

    # -- book events and trades -------------------------------------------------------------------

    def _events(self, buf: np.ndarray, frames: np.ndarray, book: np.ndarray):
        """Book messages as enriched event rows, with each row's full wire size and cross type, and what
        the order index gave back (a BookEngine's rows)."""
        n = len(book)
        rows = self._event_rows.rows(n, EVENT_ROWS)  # the kernel sets every column (there is no padding)
        if len(self._wide_size) < n:  # this batch's scratch: read by _trades before normalize returns
            self._wide_size = np.empty(n, dtype=np.uint64)
            self._cross_type = np.empty(n, dtype=np.uint8)
        wide_size = self._wide_size[:n]
        cross_type = self._cross_type[:n]
        if not len(book):
            return rows, wide_size, cross_type, self.orders.enrich(rows)
        counts = np.array([0, 0, _NO_SPAN[0], _NO_SPAN[1]], dtype=np.int64)
        itch50_book.decode_book_rows(
            buf, frames, book, itch50_book.BOOK_ACTION,
            self._known_locate, *self.clock.kernel_params(), self.venue, rows, wide_size, cross_type, counts,
        )
        if counts[0]:
            self.anomalies["bad_timestamp"] += int(counts[0])
        if counts[1]:
            self.anomalies["unknown_instrument"] += int(counts[1])
        if counts[2] <= counts[3]:
            self._note_span(int(counts[2]), int(counts[3]))
        return rows, wide_size, cross_type, self.orders.enrich(rows)

    def _trades(self, events: np.ndarray, wide_size: np.ndarray, cross_type: np.ndarray) -> np.ndarray:
        """Executions, non-book trades and crosses with shares, in sequence order."""
        return trades_from_events(events, wide_size, cross_type)

    # -- everything else --------------------------------------------------------------------------

    def _learn_directory(self, t: _Typed) -> None:
        locates = t.msgs["stock_locate"]
        self._known_locate[locates] = True
        for locate, stock in zip(locates.tolist(), t.msgs["stock"].tolist()):
            self.symbols[locate] = stock.decode("ascii", "replace").rstrip()

    def _count_unknown_instruments(self, typed: dict[bytes, _Typed]) -> None:
        n = 0
        for code, t in typed.items():
            loc = t.msgs["stock_locate"]
            n += int(((loc != 0) & ~self._known_locate[loc]).sum())
        if n:
            self.anomalies["unknown_instrument"] += n

    def _definitions(self, t: _Typed | None) -> np.ndarray:
        if t is None:
            return _EMPTY_ROWS[schema.DEFINITION.name]
        m = t.msgs
        rows = self._common(schema.DEFINITION, t)
        rows["symbol"] = np.char.rstrip(m["stock"])
        rows["round_lot"] = m["round_lot_size"]
        rows["etp_leverage"] = m["etp_leverage"]
        for name in ("market_category", "financial_status", "round_lots_only", "issue_classification",
                     "issue_subtype", "authenticity", "short_sale_threshold", "ipo_flag", "luld_tier",
                     "etp_flag", "inverse"):
            rows[name] = m[name]
        return rows

    def _status(self, typed: dict[bytes, _Typed]) -> np.ndarray:
        parts = [(code, typed[code]) for code in _STATUS_CODES if code in typed]
        if not parts:
            return _EMPTY_ROWS[schema.STATUS.name]
        rows = np.concatenate([self._status_rows(code, t) for code, t in parts])
        index = np.concatenate([t.index for _, t in parts])
        return rows[np.argsort(index, kind="stable")]

    def _status_rows(self, code: bytes, t: _Typed) -> np.ndarray:
        m = t.msgs
        rows = self._common(schema.STATUS, t)
        for p in ("price_1", "price_2", "price_3"):
            rows[p] = UNDEF_PRICE
        p4 = lambda name: m[name].astype(np.int64) * itch50.PRICE4_TO_NANO  # noqa: E731
        if code == b"H":
            rows["kind"] = StatusKind.TRADING_ACTION
            rows["code"] = m["trading_state"]
            state = np.zeros(len(m), dtype=np.uint8)
            for letter, value in _TRADING_STATE.items():
                state[m["trading_state"] == letter] = value
            rows["state"] = state
            rows["reason"] = m["reason"]
        elif code == b"Y":
            rows["kind"] = StatusKind.REG_SHO
            rows["code"] = m["reg_sho_action"]
        elif code == b"V":
            rows["kind"] = StatusKind.MWCB_LEVELS
            for i in (1, 2, 3):
                rows[f"price_{i}"] = m[f"level_{i}"].astype(np.int64) * itch50.PRICE8_TO_NANO
        elif code == b"W":
            rows["kind"] = StatusKind.MWCB_BREACH
            rows["code"] = m["breached_level"]
        elif code == b"K":
            rows["kind"] = StatusKind.IPO_QUOTING
            rows["code"] = m["release_qualifier"]
            rows["price_1"] = p4("ipo_price")
            rows["detail"] = m["release_time"]
        elif code == b"J":
            rows["kind"] = StatusKind.LULD_COLLAR
            rows["price_1"] = p4("ref_price")
            rows["price_2"] = p4("upper_price")
            rows["price_3"] = p4("lower_price")
            rows["detail"] = m["extension"]
        elif code == b"h":
            rows["kind"] = StatusKind.OPERATIONAL_HALT
            rows["code"] = m["halt_action"]
            rows["reason"] = m["market_code"]
            rows["state"] = np.where(m["halt_action"] == b"H", np.uint8(TradingState.HALTED), np.uint8(TradingState.TRADING))
        return rows

    def _imbalance(self, t: _Typed | None) -> np.ndarray:
        if t is None:
            return _EMPTY_ROWS[schema.IMBALANCE.name]
        m = t.msgs
        rows = self._common(schema.IMBALANCE, t)
        rows["paired_size"] = m["paired_shares"]
        rows["imbalance_size"] = m["imbalance_shares"]
        rows["far_price"] = m["far_price"].astype(np.int64) * itch50.PRICE4_TO_NANO
        rows["near_price"] = m["near_price"].astype(np.int64) * itch50.PRICE4_TO_NANO
        rows["ref_price"] = m["current_ref_price"].astype(np.int64) * itch50.PRICE4_TO_NANO
        rows["direction"] = m["imbalance_direction"]
        rows["cross_type"] = m["cross_type"]
        rows["price_variation"] = m["price_variation"]
        return rows

    def _price_discovery(self, t: _Typed | None) -> np.ndarray:
        if t is None:
            return _EMPTY_ROWS[schema.PRICE_DISCOVERY.name]
        m = t.msgs
        rows = self._common(schema.PRICE_DISCOVERY, t)
        for out, wire in (("min_price", "min_allowable_price"), ("max_price", "max_allowable_price"),
                          ("near_price", "near_execution_price"), ("lower_collar", "lower_price_collar"),
                          ("upper_collar", "upper_price_collar")):
            rows[out] = m[wire].astype(np.int64) * itch50.PRICE4_TO_NANO
        rows["near_time"] = m["near_execution_time"]
        rows["open_eligible"] = m["open_eligibility"]
        return rows

    def _retail_interest(self, t: _Typed | None) -> np.ndarray:
        if t is None:
            return _EMPTY_ROWS[schema.RETAIL_INTEREST.name]
        rows = self._common(schema.RETAIL_INTEREST, t)
        rows["interest"] = t.msgs["interest_flag"]
        return rows

    def _broken(self, t: _Typed | None) -> np.ndarray:
        if t is None:
            return _EMPTY_ROWS[schema.BROKEN_TRADE.name]
        rows = self._common(schema.BROKEN_TRADE, t)
        rows["match_id"] = t.msgs["match_number"]
        return rows

    def _system(self, t: _Typed | None) -> np.ndarray:
        if t is None:
            return _EMPTY_ROWS[schema.SYSTEM_EVENT.name]
        rows = self._common(schema.SYSTEM_EVENT, t)
        rows["code"] = t.msgs["event_code"]
        return rows


@nb.njit(cache=True, nogil=True)
def classify_frames(buf, frames, size_by_code, book_lut, counts, unknown):
    """Sort frames into decodable book messages, other decodable messages, and anomalies.

    Args:
        buf, frames: the batch; size_by_code: ``itch50.SIZE_BY_CODE``; book_lut: nonzero for book types.
        counts, unknown: int64 [256], incremented by type byte: decodable messages, unknown types.

    Returns:
        (book frame indexes, other frame indexes, unknown-type messages, messages shorter than
        specified, messages longer than specified).
    """
    n = frames.shape[0]
    book = np.empty(n, dtype=np.int64)
    rest = np.empty(n, dtype=np.int64)
    n_book = 0
    n_rest = 0
    n_unknown = 0
    short = 0
    longer = 0
    for i in range(n):
        t = buf[frames[i].offset]
        spec = size_by_code[t]
        length = frames[i].length
        if spec == 0:
            unknown[t] += 1
            n_unknown += 1
            continue
        if length < spec:
            short += 1
            continue
        if length > spec:
            longer += 1
        counts[t] += 1
        if book_lut[t] != 0:
            book[n_book] = i
            n_book += 1
        else:
            rest[n_rest] = i
            n_rest += 1
    return book[:n_book], rest[:n_rest], n_unknown, short, longer


def _letter(code: int) -> str:
    c = chr(int(code))
    return c if c.isprintable() and c != " " else f"0x{int(code):02x}"
