"""``MarketBatch``: what the pipeline hands every sink, once per decoded batch (never per message).

All arrays are numpy record arrays in the project's records (``parsers.schema``, ``orderbook.records``),
in sequence order; ``symbols`` maps instrument ids to venue symbols (the stock directory so far).
A batch is immutable once queued: sinks read it, never change it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

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

    @property
    def rows(self) -> int:
        return len(self.bbo) + len(self.l2) + len(self.trades) + len(self.status) + sum(
            len(v) for v in self.ohlcv.values())


def conflate(older: MarketBatch, newer: MarketBatch) -> MarketBatch:
    """One batch standing for two consecutive ones, latest state winning.

    BBO: the last row per instrument. L2: per instrument, the rows of its last update if that update was
    a complete snapshot, else every row (deltas must all arrive). Trades and status are kept whole:
    they are events, not state.
    """
    bbo = _joined([older.bbo, newer.bbo])
    if len(bbo):
        _, last = np.unique(bbo["instrument_id"][::-1], return_index=True)
        bbo = bbo[np.sort(len(bbo) - 1 - last)]
    return MarketBatch(
        venue=newer.venue,
        symbols=newer.symbols,
        bbo=bbo,
        l2=_joined([older.l2, newer.l2]),
        trades=_joined([older.trades, newer.trades]),
        status=_joined([older.status, newer.status]),
        ohlcv={**older.ohlcv, **newer.ohlcv},
        final=older.final or newer.final,
    )


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

    Filled slice by slice: ``np.concatenate`` on record arrays re-derives the dtype's promotion field
    by field on every call, which costs more than copying a few rows.
    """
    full = [a for a in arrays if len(a)]
    if len(full) == 1:
        return full[0]
    if not full:
        return arrays[-1]
    out = np.empty(sum(len(a) for a in full), dtype=full[0].dtype)
    at = 0
    for a in full:
        out[at:at + len(a)] = a
        at += len(a)
    return out
