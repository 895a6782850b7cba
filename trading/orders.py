"""Orders: the codes, the command rows strategies send and the event rows the matching core answers with.

Declared once, like ``parsers.schema`` records: ``COMMAND`` and ``ORDER_EVENT`` generate their numpy
dtypes (what ``trading.matching`` reads and writes) and their docs; ``tests/trading`` pins the layouts.

Rules this module keeps:
- prices are int64 in 1e-9 units with ``UNDEF_PRICE`` for "no price" (market orders, stops' limit);
  time is int64 ns since the epoch; quantities are unsigned; codes are the ``IntEnum``s below, with 0
  never a valid code, so a zeroed row is rejected rather than read as something.
- a command row means one thing per ``kind``; the columns a kind does not use are ignored:

  - NEW: order_id (> 0, < 2**63, not live), account, instrument_id, side, order_type, tif, qty,
    price (LIMIT, STOP_LIMIT), stop_price (STOP, STOP_LIMIT), ts;
  - CANCEL: order_id, account (must own it), ts;
  - MODIFY: order_id, account, price (UNDEF_PRICE keeps it), qty (the new open quantity; 0 keeps it),
    stop_price (held stops only; UNDEF_PRICE keeps it), ts;
  - TRIGGER: instrument_id, price: a trade printed elsewhere (the feed), which may trigger held stops;
  - SESSION_END: instrument_id: its DAY orders expire (GTC orders stay);
  - SWEEP: instrument_id, price, account: a trade printed elsewhere at ``price``: every resting order
    priced strictly better (bids above it, asks below it), except the orders of ``account``, fills
    entirely at its own price (MAKER, counterparty 0); then held stops trigger as for TRIGGER.
"""
from __future__ import annotations

import enum

import numpy as np

from parsers.schema import UNDEF_PRICE, Record, _c, _pad, _price


class OrderType(enum.IntEnum):
    MARKET = 1
    LIMIT = 2
    STOP = 3  # stop market: held until a trade at or through ``stop_price``, then a market order
    STOP_LIMIT = 4  # held likewise, then a limit order at ``price``


class OrderSide(enum.IntEnum):
    """The order's side (``Side`` in ``parsers.schema`` is a resting order's book side)."""

    BUY = 1
    SELL = 2
    SELL_SHORT = 3  # matches as SELL; risk treats it apart


class TimeInForce(enum.IntEnum):
    DAY = 1  # rests until filled, cancelled or SESSION_END
    GTC = 2  # rests until filled or cancelled
    IOC = 3  # fills what it can now; the rest is cancelled
    FOK = 4  # fills entirely now or not at all


class CommandKind(enum.IntEnum):
    NEW = 1
    CANCEL = 2
    MODIFY = 3
    TRIGGER = 4  # an external trade price (the feed's prints) for stop triggers
    SESSION_END = 5  # expire the instrument's DAY orders
    SWEEP = 6  # an external print: fill resting orders priced through it (but one account's), then TRIGGER


class EventKind(enum.IntEnum):
    ACK = 1  # accepted (stops: held); price = limit price, qty = leaves = order qty
    REJECT = 2  # not accepted: reason says why; the command's order id, price and qty (a CANCEL or MODIFY:
    #            the order's instrument and side if the matcher holds it for the account, else NO_INSTRUMENT, 0)
    FILL = 3  # a trade: price, qty of this fill, leaves after it, the counterparty, maker/taker
    CANCELLED = 4  # removed: qty = the quantity that was open; reason: user, IOC/FOK/market remainder
    MODIFIED = 5  # price and leaves after the modify (fills, if it now crosses, follow)
    EXPIRED = 6  # a DAY order at SESSION_END: qty = the quantity that was open
    TRIGGERED = 7  # a held stop entered the book: price = its stop price, qty = leaves


class Liquidity(enum.IntEnum):
    NONE = 0
    MAKER = 1  # the resting order
    TAKER = 2  # the incoming (or re-priced, or triggered) order


class Reason(enum.IntEnum):
    """Why an order was rejected or cancelled. Risk rules (10..29, 35) are checked outside the matcher."""

    NONE = 0
    # the matcher's own rejects
    UNKNOWN_ORDER = 1  # cancel/modify of an order that is not live (or not the account's)
    DUPLICATE_ORDER_ID = 2  # new order with the id of a live order
    INVALID_ORDER = 3  # bad kind, side, type or time in force, or an order id of 0 / >= 2**63
    BAD_QTY = 4  # zero quantity
    BAD_PRICE = 5  # limit/stop price missing or not positive
    # pre-trade risk (trading.risk)
    UNKNOWN_SYMBOL = 10
    HALTED = 11
    OUTSIDE_MARKET_HOURS = 12
    SIZE_LIMIT = 13
    NOTIONAL_LIMIT = 14
    PRICE_BAND = 15
    USER_SUSPENDED = 16
    RATE_EXCEEDED = 17
    BUYING_POWER = 18
    POSITION_LIMIT = 19
    KILL_SWITCH = 20
    SYMBOL_EXPOSURE_LIMIT = 21  # one symbol's market value vs equity
    GROSS_EXPOSURE_LIMIT = 22  # gross market value vs equity
    MWCB_HALT = 23  # market-wide circuit breaker halt
    PDT_RESTRICTION = 24  # legacy pattern day trader rule
    INTRADAY_MARGIN_DEFICIT = 25  # the 2026 intraday margin standard
    MIN_EQUITY = 26  # a margin order (credit or short) with equity under $2,000
    SHORT_NOT_ALLOWED = 27  # a short sale in a cash account
    UNKNOWN_ACCOUNT = 28
    DUPLICATE_CLIENT_ORDER_ID = 29  # an order id the account (or anyone) used before, even if rejected
    # why a CANCELLED / EXPIRED event happened
    USER_CANCEL = 30
    IOC_REMAINDER = 31  # what an IOC order could not fill at once
    FOK_UNFILLED = 32  # a FOK order that could not fill entirely: nothing traded
    NO_LIQUIDITY = 33  # what a market order could not fill (the book ran dry)
    SESSION_END = 34  # a DAY order at the session's end
    # pre-trade risk (added after the codes above were in use)
    NO_REFERENCE_PRICE = 35  # a market or stop order with no price to value it at (no mark, no reference)


NO_INSTRUMENT = 0xFFFF_FFFF  # an event's instrument when none is known (a cancel of an order that is not live)


COMMAND = Record(
    "commands",
    "One order command from a strategy (or a trigger / session end from the appliance).",
    (
        _c("ts", "<i8", "unix_nanos", "when the command arrived (events carry it)"),
        _c("order_id", "<u8", "id", "the order's id, unique among live orders (> 0, < 2**63)"),
        _price("price", "limit price (LIMIT, STOP_LIMIT; MODIFY: the new one); TRIGGER: the trade price"),
        _price("stop_price", "stop price (STOP, STOP_LIMIT)"),
        _c("qty", "<u4", "shares", "order quantity; MODIFY: the new open quantity (0 keeps it)"),
        _c("account", "<u4", "id", "the account that owns the order"),
        _c("instrument_id", "<u4", "id", "instrument (NEW, TRIGGER, SESSION_END)"),
        _c("kind", "u1", "CommandKind", "what the command does"),
        _c("side", "u1", "OrderSide", "BUY, SELL, SELL_SHORT"),
        _c("order_type", "u1", "OrderType", "MARKET, LIMIT, STOP, STOP_LIMIT"),
        _c("tif", "u1", "TimeInForce", "DAY, GTC, IOC, FOK"),
    ),
)

ORDER_EVENT = Record(
    "order_events",
    "What the matching core answers: acks, rejects, fills (one per side of a trade), cancels, modifies.",
    (
        _c("ts", "<i8", "unix_nanos", "ts of the command that caused the event"),
        _c("order_id", "<u8", "id", "the order the event is about"),
        _c("counterparty_id", "<u8", "id", "FILL: the other order of the trade; else 0"),
        _price("price", "FILL: trade price (the resting order's); ACK/MODIFIED/CANCELLED: the order's price"),
        _c("qty", "<u4", "shares", "FILL: shares of this fill; CANCELLED/EXPIRED: shares that were open"),
        _c("leaves", "<u4", "shares", "shares still open after the event"),
        _c("account", "<u4", "id", "the order's account (who gets the event)"),
        _c("instrument_id", "<u4", "id", "the order's instrument"),
        _c("kind", "u1", "EventKind", "what happened"),
        _c("side", "u1", "OrderSide", "the order's side"),
        _c("liquidity", "u1", "Liquidity", "FILL: MAKER or TAKER"),
        _c("reason", "u1", "Reason", "REJECT/CANCELLED/EXPIRED: why"),
        _pad(4),
    ),
)

RECORDS = (COMMAND, ORDER_EVENT)


def copy_rows(rows: np.ndarray) -> np.ndarray:
    """A writable copy of structured rows made as plain bytes: ~0.4 us for a few rows, where ``copy()``
    of a dtype with a padding sub-array takes ~5 us."""
    return np.frombuffer(bytearray(rows.tobytes()), dtype=rows.dtype)


def commands(*rows: dict) -> np.ndarray:
    """COMMAND rows from dicts of column values; prices default to UNDEF_PRICE, everything else to 0.

    Enum members are accepted as values (``{"kind": CommandKind.NEW, "side": OrderSide.BUY, ...}``).
    """
    out = COMMAND.empty(len(rows))
    out["price"] = UNDEF_PRICE
    out["stop_price"] = UNDEF_PRICE
    for i, row in enumerate(rows):
        for name, value in row.items():
            out[i][name] = int(value)
    return out
