"""Redis Streams sink for trades: the walking skeleton's real-server path.

Rules this module keeps:
- One stream per venue, ``md:{venue}:trades``, capped with ``XADD ... MAXLEN ~ maxlen`` so a stream
  never grows without bound (``~`` lets Redis trim whole nodes: cheap, approximately maxlen entries).
- Each entry has one field, ``data``: a compact JSON object, the same text a WebSocket client would
  get. Prices are exact decimal strings from the int64 1e-9 fixed point (``null`` for UNDEF_PRICE);
  ``ts_event`` and ``match_id`` are strings too, since 64-bit integers lose precision in JavaScript
  numbers; ``size`` and ``instrument_id`` are numbers.
- Commands go out pipelined in chunks, without MULTI: one round trip per chunk.
- This is called off the hot path; the bounded queue in front of it belongs to the publishing layer.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import redis

from parsers.schema import PRICE_SCALE, UNDEF_PRICE

TRADE_STREAM_FIELD = "data"
DEFAULT_MAXLEN = 1_000_000
DEFAULT_CHUNK = 5_000


def price_to_str(price: int) -> str:
    """Exact decimal text of an int64 1e-9 fixed-point price: 1_500_000_000 -> "1.5".

    No float is involved; trailing zeros of the fraction are dropped and an integral price has no
    decimal point ("187", "-0.000000001", "0"). UNDEF_PRICE is not special here: callers map it.
    """
    value = int(price)
    whole, frac = divmod(abs(value), PRICE_SCALE)
    sign = "-" if value < 0 else ""
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:09d}".rstrip("0")


def prices_to_str(prices: np.ndarray) -> np.ndarray:
    """Vectorised ``price_to_str`` over an int64 array; returns a numpy unicode array."""
    p = np.asarray(prices, dtype=np.int64)
    if p.size == 0:
        return np.zeros(p.shape, dtype="U1")
    neg = p < 0
    # |p| in uint64 without overflow at INT64_MIN: -(p + 1) + 1.
    mag = np.where(neg, (-(p + 1)).astype(np.uint64) + np.uint64(1), p.astype(np.uint64))
    whole = (mag // np.uint64(PRICE_SCALE)).astype("U20")
    frac = mag % np.uint64(PRICE_SCALE)
    frac_text = np.char.rstrip(np.char.zfill(frac.astype("U9"), 9), "0")
    text = np.where(frac == 0, whole, np.char.add(np.char.add(whole, "."), frac_text))
    return np.where(neg, np.char.add("-", text), text)


def symbols_for(instrument_ids: np.ndarray, symbols: Mapping[int, str]) -> np.ndarray:
    """Symbol of each row (numpy unicode array), looked up once per distinct instrument id.

    An id missing from ``symbols`` gets "" (a trade can arrive before its definition when a capture
    starts mid-session); the row still carries its instrument_id.
    """
    ids = np.asarray(instrument_ids)
    if len(ids) == 0:
        return np.zeros(0, dtype="U1")
    unique, inverse = np.unique(ids, return_inverse=True)
    names = np.array([symbols.get(int(i), "") for i in unique], dtype=np.str_)
    return names[inverse.reshape(-1)]


REQUIRED_TRADE_FIELDS = ("ts_event", "price", "size", "instrument_id")


def _check_trade_fields(dtype: np.dtype) -> None:
    names = dtype.names or ()
    for required in REQUIRED_TRADE_FIELDS:
        if required not in names:
            raise TypeError(f"trades dtype has no {required!r} field: {dtype}")


def trade_json(row_symbols: np.ndarray, trades: np.ndarray) -> list[str]:
    """The ``data`` JSON text of each trade row.

    Each column is formatted once with numpy (exact price text, JSON-escaped symbols looked up per
    distinct symbol); only the final template fill runs per row.
    """
    _check_trade_fields(trades.dtype)
    if len(trades) == 0:
        return []
    unique_syms, inverse = np.unique(row_symbols, return_inverse=True)
    sym_json = np.array([json.dumps(str(s)) for s in unique_syms], dtype=np.str_)[inverse.reshape(-1)]
    price = trades["price"]
    price_json = np.where(price == UNDEF_PRICE, "null", np.char.add(np.char.add('"', prices_to_str(price)), '"'))
    template = '{{"symbol":{},"instrument_id":{},"price":{},"size":{},"ts_event":"{}"'
    columns = [sym_json, trades["instrument_id"], price_json, trades["size"], trades["ts_event"]]
    if "match_id" in trades.dtype.names:
        template += ',"match_id":"{}"'
        columns.append(trades["match_id"])
    template += "}}"
    return list(map(template.format, *(c.tolist() for c in columns)))


class RedisSink:
    """Append trades to Redis Streams (see the module rules).

    Args:
        url: a redis-py URL, e.g. ``redis://127.0.0.1:6379/0``.
        maxlen: approximate cap of each stream.
        chunk: commands per pipeline round trip.
    """

    def __init__(self, url: str, *, maxlen: int = DEFAULT_MAXLEN, chunk: int = DEFAULT_CHUNK) -> None:
        if maxlen <= 0 or chunk <= 0:
            raise ValueError("maxlen and chunk must be positive")
        self.url = url
        self.maxlen = maxlen
        self.chunk = chunk
        self.client = redis.Redis.from_url(url)

    @staticmethod
    def trades_key(venue: str) -> str:
        """The stream that holds ``venue``'s trades."""
        return f"md:{venue}:trades"

    def write_trades(self, venue: str, symbols: Mapping[int, str], trades: np.ndarray) -> int:
        """XADD one entry per row of ``trades`` to ``md:{venue}:trades``; returns the entries added.

        Args:
            venue: venue name used in the stream key.
            symbols: instrument_id -> symbol.
            trades: structured array with at least ts_event, price, size, instrument_id (and
                match_id, written when present).
        """
        _check_trade_fields(trades.dtype)
        if len(trades) == 0:
            return 0
        payloads = trade_json(symbols_for(trades["instrument_id"], symbols), trades)
        key = self.trades_key(venue)
        added = 0
        for start in range(0, len(payloads), self.chunk):
            pipe = self.client.pipeline(transaction=False)
            for payload in payloads[start : start + self.chunk]:
                pipe.xadd(key, {TRADE_STREAM_FIELD: payload}, maxlen=self.maxlen, approximate=True)
            added += len(pipe.execute())
        return added

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RedisSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
