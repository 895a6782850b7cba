"""MeatPy 0.5's ITCH 5.0 book as a second opinion: ``meatpy_l2(path, symbol, depth)`` on a BinaryFILE.

MeatPy (``meatpy.itch50``) rebuilds one symbol's limit order book per ``ITCH50MarketProcessor``; its
levels hold FIFO queues of orders, so it gives price, total size and order count per level. Here every
message of the file goes to one processor per asked symbol, and the book at the end of the file is read
back as ``(price, size, count)`` levels, best first, prices in ``parsers.schema`` units (1e-9), the
shape ``ReferenceBooks.l2`` returns. ``reference_books(path)`` builds our side of the comparison from
the same file (``open_capture`` -> ``ItchNormalizer`` -> ``ReferenceBooks``).

MeatPy's quirks (read from its 0.5 source), and what they leave comparable:
- It cannot read a day with DLCR price discovery messages: it unpacks ``O`` as 51 bytes where ITCH 5.0
  sends 48, and its reader dies with ``struct.error`` at the first one. Generate with ``dlcr=False``.
- It reads only BinaryFILE (2-byte length prefixes), not MoldUDP64 pcaps.
- Symbols are matched on the Add (A/F) only, as the 8-byte space-padded stock field; later messages are
  matched by order reference against the set of references its Adds and Replaces saw. References leave
  that set only on Delete and Replace (never on a full execution or cancel).
- An E (execution without price) is applied to the *best level* of the order's side and must hit the
  order at the head of its queue; otherwise it raises internally, applies the execution at the order's
  own level anyway, and raises ``ExecutionPriorityExceptionList`` at a later E (or at end of day). The
  book is right after such a raise; ``meatpy_books`` catches it and counts ``priority_violation``.
- A C (execution with price) reduces the order at its own resting level, whatever the execution price:
  as our reference does.
- A cancel or execution of more shares than remain removes the order and raises
  ``VolumeInconsistencyException`` (counted ``size_below_zero`` here; the book is right after it).
- A U (replace) deletes the old order and enters the new one at the back of its level, on the old side:
  it loses time priority, as in our reference.
- P (non-book trade) and Q (cross) never touch its book. It has no notion of a clear, of crossed or
  locked books (a crossing add just rests), or of a duplicate reference (a second Add of a live
  reference rests a second order with the same id in its queue).
- Prices are the wire's 4-decimal integers (``decimals_adj = 10000``); timestamps are truncated to
  microseconds (irrelevant to the book).
So on a generated day (live references, no crosses, executions at the head of the best level) the two
books must agree level by level: price, size and order count.
"""
from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from dataclasses import dataclass, field

from captures.generator import DEFAULT_DATE
from captures.reader import open_capture
from parsers.clock import VenueClock
from parsers.itch50_normalize import ItchNormalizer

PRICE4_TO_SCHEMA = 100_000  # a 4-decimal wire price in 1e-9 units


@dataclass
class MeatpyBook:
    """One symbol's book at the end of the file, as MeatPy rebuilt it."""

    symbol: str
    bids: list[tuple[int, int, int]]  # (price 1e-9, total size, order count), best first
    asks: list[tuple[int, int, int]]
    problems: Counter = field(default_factory=Counter)  # exceptions MeatPy raised and we stepped over


def meatpy_books(path: str | os.PathLike, symbols, date: dt.date = DEFAULT_DATE) -> dict[str, MeatpyBook]:
    """Run MeatPy over a BinaryFILE once, with one processor per symbol; return each symbol's final book."""
    from meatpy.itch50 import ITCH50MarketProcessor, ITCH50MessageReader
    from meatpy.level import VolumeInconsistencyException
    from meatpy.lob import ExecutionPriorityExceptionList

    day = dt.datetime.combine(date, dt.time(0))
    processors = {s: ITCH50MarketProcessor(s, day) for s in symbols}
    problems = {s: Counter() for s in symbols}
    for message in ITCH50MessageReader().read_file(path):
        for s, proc in processors.items():
            try:
                proc.process_message(message)
            except ExecutionPriorityExceptionList:
                problems[s]["priority_violation"] += 1
            except VolumeInconsistencyException:
                problems[s]["size_below_zero"] += 1
    out = {}
    for s, proc in processors.items():
        lob = proc.current_lob
        bids = _levels(lob.bid_levels) if lob is not None else []
        asks = _levels(lob.ask_levels) if lob is not None else []
        if lob is not None and lob.execution_errors_buffer:
            problems[s]["priority_violation"] += len(lob.execution_errors_buffer)
        out[s] = MeatpyBook(s, bids, asks, problems[s])
    return out


def meatpy_l2(path: str | os.PathLike, symbol: str, depth: int | None = None,
              date: dt.date = DEFAULT_DATE) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """MeatPy's final L2 of one symbol: (bids, asks) of (price 1e-9, size, count), best first, ``depth`` each."""
    book = meatpy_books(path, [symbol], date)[symbol]
    return (book.bids, book.asks) if depth is None else (book.bids[:depth], book.asks[:depth])


def _levels(levels) -> list[tuple[int, int, int]]:
    return [(int(lv.price) * PRICE4_TO_SCHEMA, int(lv.volume), len(lv.queue)) for lv in levels]


def reference_books(path: str | os.PathLike, date: dt.date = DEFAULT_DATE):
    """Our side, from the same file: (``ReferenceBooks`` at its end, {symbol: instrument id}, events)."""
    from tests.orderbook.reference_book import ReferenceBooks

    buf, frames = open_capture(path).frames()
    normalizer = ItchNormalizer(VenueClock(date))
    events = normalizer.normalize(buf, frames).events
    books = ReferenceBooks()
    books.apply_all(events)
    return books, {sym: locate for locate, sym in normalizer.symbols.items()}, events
