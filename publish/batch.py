"""``MarketBatch``: what the pipeline hands every sink, once per decoded batch (never per message).

All arrays are numpy record arrays in the project's records (``parsers.schema``, ``orderbook.records``),
in sequence order; ``symbols`` maps instrument ids to venue symbols (the stock directory so far).
A batch is immutable once queued: sinks read it, never change it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from orderbook.records import BBO, L2
from parsers.schema import STATUS, TRADE


@dataclass(frozen=True)
class MarketBatch:
    venue: str  # the venue's short name (``nasdaq``), as channel names use it
    symbols: dict[int, str]
    bbo: np.ndarray = field(default_factory=lambda: BBO.empty(0))
    l2: np.ndarray = field(default_factory=lambda: L2.empty(0))
    trades: np.ndarray = field(default_factory=lambda: TRADE.empty(0))
    status: np.ndarray = field(default_factory=lambda: STATUS.empty(0))
    ohlcv: dict[str, np.ndarray] = field(default_factory=dict)  # interval -> bars (end of a replay)
    final: bool = False  # the last batch of a replay

    @cached_property  # asked for several times per batch on the feed's path; a batch never changes
    def rows(self) -> int:
        return len(self.bbo) + len(self.l2) + len(self.trades) + len(self.status) + sum(
            len(v) for v in self.ohlcv.values())


def conflate(*batches: MarketBatch) -> MarketBatch:
    """One batch standing for consecutive ones (oldest first), latest state winning.

    BBO: the last row per instrument. L2, trades and status are kept whole: L2 rows may be deltas,
    which must all arrive, and trades and status are events, not state.
    """
    bbo = _joined([b.bbo for b in batches])
    if len(batches) > 1 and len(bbo):
        _, last = np.unique(bbo["instrument_id"][::-1], return_index=True)
        bbo = bbo[np.sort(len(bbo) - 1 - last)]
    ohlcv: dict[str, np.ndarray] = {}
    for b in batches:
        ohlcv.update(b.ohlcv)
    newest = batches[-1]
    return MarketBatch(
        venue=newest.venue,
        symbols=newest.symbols,
        bbo=bbo,
        l2=_joined([b.l2 for b in batches]),
        trades=_joined([b.trades for b in batches]),
        status=_joined([b.status for b in batches]),
        ohlcv=ohlcv,
        final=any(b.final for b in batches),
    )


class Merging:
    """Consecutive batches that a full queue has merged into one entry, conflated once when the entry
    is taken. Conflating on every arrival would copy the growing batch again each time: quadratic work
    for exactly the sink that has fallen furthest behind."""

    __slots__ = ("parts", "rows")

    def __init__(self, oldest: MarketBatch) -> None:
        self.parts = [oldest]
        self.rows = oldest.rows

    def add(self, newer: MarketBatch) -> None:
        self.parts.append(newer)
        self.rows += newer.rows


def merge(older: MarketBatch | Merging, newer: MarketBatch | Merging) -> Merging:
    """``older`` and ``newer`` as one queue entry (in O(newer's parts), not O(rows))."""
    merged = older if isinstance(older, Merging) else Merging(older)
    for part in newer.parts if isinstance(newer, Merging) else (newer,):
        merged.add(part)
    return merged


def settled(entry: MarketBatch | Merging) -> MarketBatch:
    """The batch a queue entry stands for (a merged entry is conflated now)."""
    return conflate(*entry.parts) if isinstance(entry, Merging) else entry


def concat(batches: list[MarketBatch]) -> MarketBatch:
    """One batch holding every row of ``batches`` in order (nothing conflated): a sink that fell behind
    writes what piled up in one go. The newest batch's venue and symbols stand for all."""
    if len(batches) == 1:
        return batches[0]
    last = batches[-1]
    ohlcv: dict[str, np.ndarray] = {}
    for b in batches:
        ohlcv.update(b.ohlcv)
    return MarketBatch(
        venue=last.venue,
        symbols=last.symbols,
        bbo=_joined([b.bbo for b in batches]),
        l2=_joined([b.l2 for b in batches]),
        trades=_joined([b.trades for b in batches]),
        status=_joined([b.status for b in batches]),
        ohlcv=ohlcv,
        final=any(b.final for b in batches),
    )


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    """The rows of ``arrays`` (one record dtype) in order; no copy when only one has rows.

    Copied as bytes, once: ``np.concatenate`` and slice assignment on record arrays copy field by field
    (several us per array, more than the rows themselves at a paced batch's sizes).
    """
    full = [a for a in arrays if len(a)]
    if len(full) == 1:
        return full[0]
    if not full:
        return arrays[-1]
    out = np.empty(sum(len(a) for a in full), dtype=full[0].dtype)
    raw = np.frombuffer(out, dtype=np.uint8)  # not ``view``: numpy's check of a record view is Python
    at = 0
    for a in full:
        part = np.frombuffer(np.ascontiguousarray(a), dtype=np.uint8)
        raw[at:at + len(part)] = part
        at += len(part)
    return out
