"""An example strategy process: follows quotes from the feed handler and prints a simple signal.

    # against a running feed handler (feedhandler replay CAPTURE --ws 127.0.0.1:8765)
    python examples/strategy.py --url ws://127.0.0.1:8765 AAPL MSFT
    # or its Redis publisher
    python examples/strategy.py --url redis://127.0.0.1:6379/0 --venue nasdaq AAPL
    # or self-contained: an in-process WebSocket server fed a random walk
    python examples/strategy.py --demo --count 40

The signal is quote imbalance, bid_sz / (bid_sz + ask_sz), smoothed per symbol with an exponential
moving average: above ``--threshold`` it says BUY, below 1 - threshold SELL. It is a teaching example,
not a trading idea. A ``Gap`` (updates lost) resets the symbol's average; a snapshot starts it.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import threading
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from feedhandler.client import Gap, Quote, subscribe  # noqa: E402


class ImbalanceSignal:
    """Per symbol: an EMA of quote imbalance; BUY / SELL / None."""

    def __init__(self, alpha: float = 0.2, threshold: float = 0.65) -> None:
        self.alpha = alpha
        self.threshold = threshold
        self.ema: dict[str, float] = {}

    def reset(self, symbol: str | None) -> None:
        if symbol is None:
            self.ema.clear()
        else:
            self.ema.pop(symbol, None)

    def update(self, q: Quote) -> str | None:
        if q.bid_px is None or q.ask_px is None or q.bid_sz + q.ask_sz == 0:
            return None
        imbalance = q.bid_sz / (q.bid_sz + q.ask_sz)
        previous = self.ema.get(q.symbol)
        ema = imbalance if previous is None or q.snapshot else previous + self.alpha * (imbalance - previous)
        self.ema[q.symbol] = ema
        if ema > self.threshold:
            return "BUY"
        if ema < 1 - self.threshold:
            return "SELL"
        return None


async def run(symbols: list[str], url: str, venue: str, token: str | None, count: int | None,
              signal: ImbalanceSignal) -> int:
    seen = 0
    stream = subscribe(symbols, channels=["bbo"], url=url, token=token, venue=venue, reconnect=True)
    async with contextlib.aclosing(stream):
        async for update in stream:
            if isinstance(update, Gap):
                print(f"gap {update.channel or 'connection'} {update.symbol or ''} dropped={update.dropped}")
                signal.reset(update.symbol)
                continue
            if not isinstance(update, Quote):
                continue
            side = signal.update(update)
            tag = "snapshot" if update.snapshot else f"seq {update.seq}"
            print(f"{update.symbol:6} {_px(update.bid_px)} x {update.bid_sz:<6} / {_px(update.ask_px)} x "
                  f"{update.ask_sz:<6} mid {_px(update.mid)}  ({tag})" + (f"  -> {side}" if side else ""))
            seen += 1
            if count is not None and seen >= count:
                break
    return seen


def _px(value: Decimal | None) -> str:
    return f"{value:>10}" if value is not None else f"{'-':>10}"


def start_demo_server(symbols: list[str], stop: threading.Event):
    """An in-process WebSocketServer fed random-walk quotes for ``symbols`` (10 updates a second each)."""
    from orderbook.records import BBO
    from parsers.schema import PRICE_SCALE
    from publish.batch import MarketBatch
    from publish.websocket_server import WebSocketServer

    server = WebSocketServer("127.0.0.1", 0)
    server.open()
    ids = {i + 1: s for i, s in enumerate(symbols)}
    mids = {i: 100.0 * (i + 1) for i in ids}
    rng = random.Random(7)

    def feed() -> None:
        while not stop.wait(0.1):
            rows = BBO.empty(len(ids))
            for r, iid in enumerate(ids):
                mids[iid] = max(1.0, mids[iid] + rng.choice((-0.01, 0.0, 0.01)))
                rows[r]["instrument_id"] = iid
                rows[r]["bid_px"] = round((mids[iid] - 0.01) * 100) * PRICE_SCALE // 100
                rows[r]["ask_px"] = round((mids[iid] + 0.01) * 100) * PRICE_SCALE // 100
                rows[r]["bid_sz"], rows[r]["ask_sz"] = rng.randint(1, 20) * 100, rng.randint(1, 20) * 100
            server.write(MarketBatch("demo", ids, bbo=rows))

    threading.Thread(target=feed, name="demo-feed", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("symbols", nargs="*", default=["AAPL"], help='symbols to follow, or "*" (default AAPL)')
    p.add_argument("--url", default="ws://127.0.0.1:8765", help="ws://host:port or redis://host:port/db")
    p.add_argument("--venue", default="nasdaq", help="venue name in Redis keys (Redis only)")
    p.add_argument("--token", help="the WebSocket server's token, if it has one")
    p.add_argument("--count", type=int, help="stop after this many quotes")
    p.add_argument("--threshold", type=float, default=0.65, help="imbalance EMA above which to say BUY")
    p.add_argument("--demo", action="store_true", help="serve random-walk quotes in-process and follow them")
    args = p.parse_args(argv)
    symbols = "*" if args.symbols == ["*"] else args.symbols
    stop = threading.Event()
    server = None
    if args.demo:
        server = start_demo_server(["AAPL", "MSFT"] if symbols == "*" else symbols, stop)
        args.url = f"ws://127.0.0.1:{server.port}"
    try:
        signal = ImbalanceSignal(threshold=args.threshold)
        asyncio.run(run(symbols, args.url, args.venue, args.token, args.count, signal))
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
