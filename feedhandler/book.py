"""``feedhandler book``: one symbol's L2 book at the end of a capture, or at a time."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from feedhandler.replay import DecodedCapture, ReplayError
from orderbook.engine import BookEngine
from parsers.schema import PRICE_SCALE


@dataclass
class BookView:
    symbol: str
    ts_event: int
    bids: list[tuple[int, int, int]]
    asks: list[tuple[int, int, int]]

    def as_json(self) -> dict:
        """Prices as JSON numbers (shortest decimal text of the 1e-9 fixed point), best level first."""
        level = lambda lv: [float(price_decimal(lv[0])), lv[1], lv[2]]  # noqa: E731
        return {"symbol": self.symbol, "ts_event": self.ts_event, "bids": [level(b) for b in self.bids],
                "asks": [level(a) for a in self.asks]}

    def as_text(self) -> str:
        lines = [f"{self.symbol} at ts_event {self.ts_event}", f"{'bid orders':>10} {'bid size':>10} {'bid':>12} | "
                 f"{'ask':<12} {'ask size':<10} {'ask orders':<10}"]
        for i in range(max(len(self.bids), len(self.asks))):
            b = self.bids[i] if i < len(self.bids) else None
            a = self.asks[i] if i < len(self.asks) else None
            left = f"{b[2]:>10} {b[1]:>10} {str(price_decimal(b[0])):>12}" if b else " " * 34
            right = f"{str(price_decimal(a[0])):<12} {a[1]:<10} {a[2]:<10}" if a else ""
            lines.append(f"{left} | {right}")
        return "\n".join(lines)


def price_decimal(price: int) -> Decimal:
    """Exact decimal value of a 1e-9 fixed-point price, without trailing zeros."""
    d = Decimal(int(price)) / PRICE_SCALE
    return d.quantize(Decimal(1)) if d == d.to_integral() else d.normalize()


def book_at(source: DecodedCapture, symbol: str, depth: int = 10, at=None) -> BookView:
    """Replay ``source`` through every message stamped at or before ``at`` (all if None)."""
    engine = BookEngine(depth=depth, venue=source.venue.id, outputs=False)  # reads the book, not its changes
    cutoff = None
    last_ts = 0
    for batch in source.batches():
        if cutoff is None and at is not None:
            cutoff = at.epoch_ns(source.normalizer.clock)
        events = batch.events
        stop = False
        if cutoff is not None:
            late = np.flatnonzero(events["ts_event"] > cutoff)
            if len(late):
                events = events[: late[0]]
                stop = True
        engine.apply(events)
        instrument = _instrument(source, symbol)
        if instrument is not None:
            mine = events["ts_event"][events["instrument_id"] == instrument]
            if len(mine):
                last_ts = int(mine[-1])
        if stop:
            break
    instrument = _instrument(source, symbol)
    if instrument is None:
        raise ReplayError(f"symbol {symbol} is not in the stock directory of {source.path}")
    bids, asks = engine.l2(instrument, depth)
    return BookView(symbol, last_ts, bids, asks)


def _instrument(source: DecodedCapture, symbol: str) -> int | None:
    if source.normalizer is None:
        return None
    for instrument, sym in source.normalizer.symbols.items():
        if sym == symbol:
            return instrument
    return None
