"""The common schema: normalized records every venue decodes into.

Each record is declared once, as a list of columns with their unit; the numpy dtype (what kernels and
decoders fill), the Arrow schema (``publish.parquet``) and ``docs/schema.md`` all derive from it.
Modeled on Databento's DBN MBO/MBP records.

Rules this module keeps:
- time is int64 nanoseconds since the Unix epoch (UTC); price is int64 in units of 1e-9, with
  ``UNDEF_PRICE`` for "no price"; quantities are unsigned; never NaN or None.
- every dtype is naturally aligned with no implicit padding: explicit ``_reserved`` columns fill the
  gaps (they are left out of Arrow and the docs). ``tests/parsers/test_schema.py`` pins the layouts.
- single-letter venue codes stay bytes (``S1``) so they keep their venue meaning; normalized codes
  (action, side, status) are the enums below.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

UNDEF_PRICE = np.int64(2**63 - 1)  # "no price", as DBN's UNDEF_PRICE
PRICE_SCALE = 1_000_000_000  # one currency unit in price units (1e-9)


class Action(enum.IntEnum):
    """What a book event does; ASCII letters so raw dumps stay readable."""

    ADD = ord("A")
    REPLACE = ord("R")  # cancel/replace: new order id, price, size; loses time priority
    CANCEL = ord("C")  # partial cancel: ``size`` shares leave the order
    DELETE = ord("D")  # the whole remaining order leaves the book
    EXECUTE = ord("E")  # a resting order executes ``size`` shares
    TRADE = ord("T")  # a non-book trade (hidden or non-displayed liquidity)
    CROSS = ord("X")  # an auction cross (opening, closing, halt/IPO)
    CLEAR = ord("Z")  # clear the whole book of the instrument


class Side(enum.IntEnum):
    """Side of the resting order (DBN's convention)."""

    BID = ord("B")
    ASK = ord("A")
    NONE = ord("N")


class Flag(enum.IntFlag):
    """Bits of every record's ``flags``. The low three match ``parsers.frames.FrameFlag``."""

    LAST = 0x0001  # last message of its packet
    RECOVERED = 0x0002  # came through gap recovery
    BAD_TS_RECV = 0x0004  # receive time went backwards
    BAD_TS_EVENT = 0x0008  # venue timestamp out of range (>= 24 h since midnight)
    UNKNOWN_REF = 0x0010  # the order reference was not resting: price/side unknown
    UNKNOWN_INSTRUMENT = 0x0020  # no instrument definition for this id
    NON_PRINTABLE = 0x0040  # an execution the venue says not to print (ITCH C, printable N)
    ATTRIBUTED = 0x0080  # the order carries a market participant id (ITCH F)
    DUPLICATE_REF = 0x0100  # an add reused a reference that was still resting


class StatusKind(enum.IntEnum):
    """Which venue status message a status row came from."""

    TRADING_ACTION = 1  # halt / pause / quotation only / trading (ITCH H)
    REG_SHO = 2  # Reg SHO short sale price test (ITCH Y)
    MWCB_LEVELS = 3  # market-wide circuit breaker decline levels (ITCH V): price_1..3
    MWCB_BREACH = 4  # a market-wide circuit breaker level was breached (ITCH W): code '1'..'3'
    IPO_QUOTING = 5  # IPO quoting period update (ITCH K): price_1, detail = release time (s)
    LULD_COLLAR = 6  # LULD auction collar (ITCH J): price_1 ref, price_2 upper, price_3 lower
    OPERATIONAL_HALT = 7  # venue operational halt (ITCH h): code = halt action, reason = market code


class TradingState(enum.IntEnum):
    """Normalized trading state of an instrument, where the message sets one."""

    UNCHANGED = 0
    HALTED = 1
    PAUSED = 2
    QUOTE_ONLY = 3
    TRADING = 4


@dataclass(frozen=True)
class Column:
    """One column of a record: name, numpy type, unit and meaning."""

    name: str
    dtype: str
    unit: str
    doc: str


@dataclass(frozen=True)
class Record:
    """A normalized record kind: its file name stem and its columns, in layout order."""

    name: str
    doc: str
    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        # Built once: the order path reads ``dtype`` on every call, and building one costs ~7 us.
        object.__setattr__(self, "dtype", self._build_dtype())

    def _build_dtype(self) -> np.dtype:
        return np.dtype([(c.name, c.dtype) if not c.name.startswith("_") else (c.name, "u1", (int(c.dtype),))
                         for c in self.columns])

    @property
    def public_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if not c.name.startswith("_"))

    def empty(self, n: int = 0) -> np.ndarray:
        """A zeroed array of ``n`` records (prices zero: set UNDEF_PRICE where meant)."""
        return np.zeros(n, dtype=self.dtype)


def _c(name: str, dtype: str, unit: str, doc: str) -> Column:
    return Column(name, dtype, unit, doc)


# Columns shared by every record, so their meaning is written once.
TS_EVENT = _c("ts_event", "<i8", "unix_nanos", "venue time of the event")
TS_RECV = _c("ts_recv", "<i8", "unix_nanos", "our receive time (pcap record time on replay; 0 if unknown)")
SEQUENCE = _c("sequence", "<u8", "count", "venue sequence number of the message")
INSTRUMENT = _c("instrument_id", "<u4", "id", "venue instrument id (ITCH: stock locate code); 0 = market-wide")
VENUE = _c("venue", "<u2", "id", "venue id from parsers.venues")
FLAGS = _c("flags", "<u2", "Flag", "Flag bits")


def _price(name: str, doc: str) -> Column:
    return _c(name, "<i8", "price_1e-9", doc + " (UNDEF_PRICE if none)")


def _pad(n: int) -> Column:
    return _c("_reserved", str(n), "bytes", "padding: n zero bytes (a uint8 sub-array, which kernels can hold)")


EVENT = Record(
    "events",
    "An order book event (market by order): one per book message.",
    (
        TS_EVENT,
        TS_RECV,
        _price("price", "order price; executions: the execution price"),
        _c("order_id", "<u8", "id", "venue order reference (replace: the new one)"),
        _c("prev_order_id", "<u8", "id", "replace: the reference replaced; else 0"),
        _c("match_id", "<u8", "id", "venue match number of an execution, trade or cross; else 0"),
        SEQUENCE,
        _c("size", "<u4", "shares", "add/replace: order size; cancel/execute: shares removed; delete: remaining size"),
        INSTRUMENT,
        VENUE,
        _c("tracking", "<u2", "id", "venue internal tracking number (ITCH), or channel"),
        FLAGS,
        _c("action", "u1", "Action", "what the event does"),
        _c("side", "u1", "Side", "side of the resting order (non-book trades: the venue's side)"),
    ),
)

TRADE = Record(
    "trades",
    "A trade: executions of resting orders, non-book trades and crosses with shares.",
    (
        TS_EVENT,
        TS_RECV,
        _price("price", "execution price"),
        _c("size", "<u8", "shares", "shares traded"),
        _c("order_id", "<u8", "id", "resting order reference (0 for crosses and most non-book trades)"),
        _c("match_id", "<u8", "id", "venue match number (what a broken trade refers to)"),
        SEQUENCE,
        INSTRUMENT,
        VENUE,
        FLAGS,
        _c("action", "u1", "Action", "EXECUTE, TRADE or CROSS"),
        _c("side", "u1", "Side", "side of the resting order; the aggressor took the other side"),
        _c("printable", "u1", "bool", "1 if the trade should print to the tape and count in volume"),
        _c("cross_type", "S1", "venue code", "crosses: the venue's cross type (ITCH O, C, H, I); else empty"),
        _pad(4),
    ),
)

STATUS = Record(
    "status",
    "Trading status: halts, pauses, quote-only, Reg SHO, MWCB levels and breach, LULD collars, operational halts, IPO quoting.",
    (
        TS_EVENT,
        TS_RECV,
        SEQUENCE,
        _price("price_1", "MWCB level 1; LULD reference price; IPO price"),
        _price("price_2", "MWCB level 2; LULD upper collar"),
        _price("price_3", "MWCB level 3; LULD lower collar"),
        INSTRUMENT,
        _c("detail", "<u4", "count", "LULD extension number; IPO quotation release time (s after midnight)"),
        VENUE,
        FLAGS,
        _c("kind", "u1", "StatusKind", "which status message"),
        _c("state", "u1", "TradingState", "normalized trading state, UNCHANGED if the message sets none"),
        _c("code", "S1", "venue code", "the venue's state/action code (ITCH H state, Y action, W level, h action, K qualifier)"),
        _c("reason", "S4", "venue code", "halt reason (ITCH H) or market code (ITCH h)"),
        _pad(5),
    ),
)

DEFINITION = Record(
    "definitions",
    "An instrument definition (ITCH stock directory).",
    (
        TS_EVENT,
        TS_RECV,
        SEQUENCE,
        INSTRUMENT,
        _c("round_lot", "<u4", "shares", "round lot size"),
        _c("etp_leverage", "<u4", "count", "ETP leverage factor"),
        VENUE,
        FLAGS,
        _c("symbol", "S16", "text", "venue symbol"),
        _c("market_category", "S1", "venue code", "listing market"),
        _c("financial_status", "S1", "venue code", "financial status indicator"),
        _c("round_lots_only", "S1", "venue code", "Y if only round lots are accepted"),
        _c("issue_classification", "S1", "venue code", "issue classification"),
        _c("issue_subtype", "S2", "venue code", "issue sub-type"),
        _c("authenticity", "S1", "venue code", "P live/production, T test"),
        _c("short_sale_threshold", "S1", "venue code", "Reg SHO threshold list"),
        _c("ipo_flag", "S1", "venue code", "IPO flag"),
        _c("luld_tier", "S1", "venue code", "LULD reference price tier"),
        _c("etp_flag", "S1", "venue code", "exchange traded product"),
        _c("inverse", "S1", "venue code", "inverse ETP"),
        _pad(4),
    ),
)

IMBALANCE = Record(
    "imbalance",
    "An auction imbalance indication (ITCH NOII).",
    (
        TS_EVENT,
        TS_RECV,
        SEQUENCE,
        _c("paired_size", "<u8", "shares", "shares paired at the reference price"),
        _c("imbalance_size", "<u8", "shares", "shares not paired"),
        _price("far_price", "clearing price of the cross and continuous book"),
        _price("near_price", "clearing price of cross and continuous book orders"),
        _price("ref_price", "current reference price"),
        INSTRUMENT,
        VENUE,
        FLAGS,
        _c("direction", "S1", "venue code", "imbalance side: B buy, S sell, N none, O insufficient orders"),
        _c("cross_type", "S1", "venue code", "O opening, C closing, H halt/IPO, A extended trading close"),
        _c("price_variation", "S1", "venue code", "deviation of near price from ref price"),
        _pad(5),
    ),
)

PRICE_DISCOVERY = Record(
    "price_discovery",
    "Direct listing with capital raise price discovery (ITCH O).",
    (
        TS_EVENT,
        TS_RECV,
        SEQUENCE,
        _price("min_price", "minimum allowable price"),
        _price("max_price", "maximum allowable price"),
        _price("near_price", "near execution price"),
        _c("near_time", "<u8", "venue units", "near execution time as the venue sent it"),
        _price("lower_collar", "lower price range collar"),
        _price("upper_collar", "upper price range collar"),
        INSTRUMENT,
        VENUE,
        FLAGS,
        _c("open_eligible", "S1", "venue code", "Y if the security is eligible to open"),
        _pad(7),
    ),
)

RETAIL_INTEREST = Record(
    "retail_interest",
    "Retail price improvement indicator (ITCH RPII).",
    (TS_EVENT, TS_RECV, SEQUENCE, INSTRUMENT, VENUE, FLAGS, _c("interest", "S1", "venue code", "B buy, S sell, A both, N none"), _pad(7)),
)

BROKEN_TRADE = Record(
    "broken_trades",
    "A trade the venue broke; it leaves volume and bars.",
    (TS_EVENT, TS_RECV, SEQUENCE, _c("match_id", "<u8", "id", "match number of the broken trade"), INSTRUMENT, VENUE, FLAGS),
)

SYSTEM_EVENT = Record(
    "system_events",
    "A venue system event (start/end of messages, system hours, market hours).",
    (TS_EVENT, TS_RECV, SEQUENCE, VENUE, FLAGS, _c("code", "S1", "venue code", "ITCH O, S, Q, M, E, C"), _pad(3)),
)

RECORDS: tuple[Record, ...] = (
    EVENT,
    TRADE,
    STATUS,
    DEFINITION,
    IMBALANCE,
    PRICE_DISCOVERY,
    RETAIL_INTEREST,
    BROKEN_TRADE,
    SYSTEM_EVENT,
)
