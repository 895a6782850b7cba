"""Records the book engine and its derivers emit, declared like ``parsers.schema`` records.

BBO and L2 rows carry the event that produced them (``ts_event``, ``ts_recv``, ``sequence``), so a
consumer can line them up with ``events.parquet``. Prices are int64 1e-9 units with ``UNDEF_PRICE``
for an empty side; sizes are shares.
"""
from __future__ import annotations

import enum

from parsers.schema import FLAGS, INSTRUMENT, SEQUENCE, TS_EVENT, TS_RECV, VENUE, Record, _c, _pad, _price


class BookFlag(enum.IntFlag):
    """Bits of BBO/L2 ``flags`` beyond ``parsers.schema.Flag`` (which uses the low 9 bits)."""

    CROSSED = 0x0400  # best bid above best ask after this update
    LOCKED = 0x0800  # best bid equal to best ask after this update
    SNAPSHOT = 0x1000  # L2: part of a complete top-N snapshot of the instrument (conflated output)
    INTEGRITY = 0x2000  # the update that produced this row hit an integrity problem (see the summary)
    STALE = 0x4000  # the instrument's book may be incomplete (gap given up, or recovered)


BBO = Record(
    "bbo",
    "Best bid and offer of an instrument after an update that changed it (or at a conflation window's end).",
    (
        TS_EVENT,
        TS_RECV,
        SEQUENCE,
        _price("bid_px", "best bid price"),
        _price("ask_px", "best ask price"),
        _c("bid_sz", "<u8", "shares", "total size at the best bid"),
        _c("ask_sz", "<u8", "shares", "total size at the best ask"),
        _c("bid_ct", "<u4", "count", "orders at the best bid"),
        _c("ask_ct", "<u4", "count", "orders at the best ask"),
        INSTRUMENT,
        VENUE,
        FLAGS,
    ),
)

L2 = Record(
    "l2",
    "A price level of the top N. Unconflated: a row for each level an update changed (size 0: the level left "
    "the book; a level that comes into view from below is sent too). Conflated: per instrument and window, a "
    "row for each level whose state differs from what the previous window sent (size 0: out of view). Either "
    "way a consumer upserts levels by price, drops size-0 levels and keeps the N best.",
    (
        TS_EVENT,
        TS_RECV,
        SEQUENCE,
        _price("price", "level price"),
        _c("size", "<u8", "shares", "new total size at the level (0: level removed)"),
        _c("count", "<u4", "count", "orders at the level"),
        INSTRUMENT,
        VENUE,
        FLAGS,
        _c("side", "u1", "Side", "BID or ASK (NONE: an empty book in a snapshot)"),
        _c("level", "u1", "count", "0-based depth of the level from the best, after the update"),
        _pad(2),
    ),
)

OHLCV_COLUMNS = (
    _c("ts_event", "<i8", "unix_nanos", "start of the bar"),
    _price("open", "first printed trade price"),
    _price("high", "highest printed trade price"),
    _price("low", "lowest printed trade price"),
    _price("close", "last printed trade price"),
    _price("vwap", "volume-weighted average price"),
    _c("volume", "<u8", "shares", "printed volume"),
    _c("trades", "<u4", "count", "printed trades"),
    INSTRUMENT,
)


def ohlcv_record(interval: str) -> Record:
    """The OHLCV bar record for one interval name (``1s``, ``1m``, ``5m``, ``1h``, ``1d``)."""
    return Record(f"ohlcv_{interval}", f"{interval} OHLCV bars of printed trades, broken trades removed.",
                  OHLCV_COLUMNS + (VENUE, _pad(6)))
