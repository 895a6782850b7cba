"""Market-data messages for clients: the shapes Redis and WebSocket subscribers get (docs/redis.md).

Rules this module keeps:
- One shape per message type, each a flat dict with a ``type`` first: ``bbo``, ``l2``, ``trade``,
  ``status``. ``seq`` is the venue sequence number of the update that produced the message.
- Prices are exact decimal strings of the int64 1e-9 fixed point ("187.25"; ``null`` for UNDEF_PRICE),
  never floats. Every other integer (sizes, counts, ``seq``, ``ts_*`` nanoseconds, ``match_id``) is a
  JSON number: exact in Python, Go, Rust; JavaScript needs a BigInt-aware parser for ``ts_*``/``match_id``.
- Columns are formatted once per batch with numpy; per row only a template fill (``*_json``) or a dict
  literal (``*_dicts``). ``*_json(rows)[i] == json.dumps(*_dicts(rows)[i], separators=(",", ":"))``,
  byte for byte (the tests check it), so either path gives the same wire text.
- ``TopBooks`` rebuilds each instrument's complete top N from L2 rows (docs/books.md's consumer contract),
  so an ``l2`` message never depends on an earlier one.
- No I/O here: ``publish.redis_pub`` and the WebSocket server do the sending.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping

import numpy as np

from orderbook.records import BookFlag
from parsers.schema import PRICE_SCALE, UNDEF_PRICE, Side, StatusKind, TradingState

ENCODINGS = ("json", "msgpack")


# -- price text and symbols -----------------------------------------------------------------------


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
    """Vectorised ``price_to_str`` over an int64 array; returns a numpy unicode array.

    Each distinct price is formatted once (a batch repeats the same few levels many times).
    """
    p = np.asarray(prices, dtype=np.int64)
    if p.size > 64:
        unique, inverse = np.unique(p, return_inverse=True)
        if len(unique) < p.size:
            return _prices_to_str(unique)[inverse.reshape(p.shape)]
    return _prices_to_str(p)


def _prices_to_str(p: np.ndarray) -> np.ndarray:
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


def prices_or_none(prices: np.ndarray) -> list[str | None]:
    """Price text per row, None where UNDEF_PRICE (JSON ``null``)."""
    p = np.asarray(prices, dtype=np.int64)
    out = prices_to_str(p).astype(object)
    out[p == UNDEF_PRICE] = None
    return out.tolist()


def prices_json(prices: np.ndarray) -> np.ndarray:
    """Price as JSON text per row: ``"187.25"`` (quoted) or ``null``."""
    p = np.asarray(prices, dtype=np.int64)
    if p.size == 0:
        return np.zeros(0, dtype="U4")
    return np.where(p == UNDEF_PRICE, "null", np.char.add(np.char.add('"', prices_to_str(p)), '"'))


def symbols_for(instrument_ids: np.ndarray, symbols: Mapping[int, str]) -> np.ndarray:
    """Symbol of each row (numpy unicode array), looked up once per distinct instrument id.

    An id missing from ``symbols`` gets "" (a row can arrive before its definition when a capture
    starts mid-session); the row still carries its instrument_id.
    """
    ids = np.asarray(instrument_ids)
    if len(ids) == 0:
        return np.zeros(0, dtype="U1")
    unique, inverse = np.unique(ids, return_inverse=True)
    names = np.array([symbols.get(int(i), "") for i in unique], dtype=np.str_)
    return names[inverse.reshape(-1)]


def _row_symbols(rows: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> np.ndarray:
    """Per-row symbols: looked up in a mapping, or given already (one per row)."""
    if isinstance(symbols, Mapping):
        return symbols_for(rows["instrument_id"], symbols)
    out = np.asarray(symbols, dtype=np.str_)
    if out.shape != (len(rows),):
        raise ValueError(f"{len(out)} symbols for {len(rows)} rows")
    return out


def _json_strings(values: np.ndarray) -> list[str]:
    """JSON string literal per row (escaped once per distinct value)."""
    if len(values) == 0:
        return []
    unique, inverse = np.unique(values, return_inverse=True)
    return np.array([json.dumps(str(v)) for v in unique], dtype=np.str_)[inverse.reshape(-1)].tolist()


def _venue_codes(codes: np.ndarray) -> np.ndarray:
    """Text of ``S<n>`` venue code columns: NULs and spaces stripped, latin-1 (never fails)."""
    if len(codes) == 0:
        return np.zeros(0, dtype="U1")
    unique, inverse = np.unique(codes, return_inverse=True)
    names = np.array([bytes(c).decode("latin-1").strip("\x00 ") for c in unique], dtype=np.str_)
    return names[inverse.reshape(-1)]


def _enum_names(enum_type) -> np.ndarray:
    """Lowercase member name per u1 value; a value that is no member is its number as text."""
    members = enum_type._value2member_map_
    return np.array([members[v].name.lower() if v in members else str(v) for v in range(256)], dtype=np.str_)


_KIND_NAMES = _enum_names(StatusKind)
_STATE_NAMES = _enum_names(TradingState)
_SIDE_TEXT = np.array(["N"] * 256, dtype="U1")
_SIDE_TEXT[Side.BID] = "B"
_SIDE_TEXT[Side.ASK] = "A"


# -- bbo ------------------------------------------------------------------------------------------

BBO_TEMPLATE = ('{{"type":"bbo","symbol":{},"seq":{},"bid_px":{},"bid_sz":{},"ask_px":{},"ask_sz":{},'
                '"ts_event":{},"ts_recv":{}}}')


def bbo_dicts(bbo: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> list[dict]:
    """One ``bbo`` message dict per BBO row.

    Args:
        bbo: ``orderbook.records.BBO`` rows.
        symbols: instrument_id -> symbol, or one symbol per row (as ``symbols_for`` returns).
    """
    syms = _row_symbols(bbo, symbols).tolist()
    cols = (syms, bbo["sequence"].tolist(), prices_or_none(bbo["bid_px"]), bbo["bid_sz"].tolist(),
            prices_or_none(bbo["ask_px"]), bbo["ask_sz"].tolist(), bbo["ts_event"].tolist(), bbo["ts_recv"].tolist())
    return [{"type": "bbo", "symbol": s, "seq": q, "bid_px": bp, "bid_sz": bs, "ask_px": ap, "ask_sz": az,
             "ts_event": te, "ts_recv": tr} for s, q, bp, bs, ap, az, te, tr in zip(*cols)]


def bbo_json(bbo: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> list[str]:
    """Compact JSON text of each ``bbo`` message (same bytes as ``dumps(bbo_dicts(...)[i])``)."""
    cols = (_json_strings(_row_symbols(bbo, symbols)), bbo["sequence"].tolist(), prices_json(bbo["bid_px"]).tolist(),
            bbo["bid_sz"].tolist(), prices_json(bbo["ask_px"]).tolist(), bbo["ask_sz"].tolist(),
            bbo["ts_event"].tolist(), bbo["ts_recv"].tolist())
    return list(map(BBO_TEMPLATE.format, *cols))


def bbo_hash_fields(bbo: np.ndarray) -> list[dict[str, str | int]]:
    """The fields of ``md:{venue}:{symbol}:bbo:last`` per row: prices as decimal text, "" for none."""
    def text(prices):
        p = np.asarray(prices, dtype=np.int64)
        return np.where(p == UNDEF_PRICE, "", prices_to_str(p)).tolist()

    cols = (text(bbo["bid_px"]), bbo["bid_sz"].tolist(), text(bbo["ask_px"]), bbo["ask_sz"].tolist(),
            bbo["ts_event"].tolist(), bbo["ts_recv"].tolist(), bbo["sequence"].tolist())
    return [{"bid_px": bp, "bid_sz": bs, "ask_px": ap, "ask_sz": az, "ts_event": te, "ts_recv": tr, "seq": q}
            for bp, bs, ap, az, te, tr, q in zip(*cols)]


# -- trades ---------------------------------------------------------------------------------------

TRADE_TEMPLATE = ('{{"type":"trade","symbol":{},"seq":{},"px":{},"sz":{},"match_id":{},"side":"{}",'
                  '"printable":{},"ts_event":{},"ts_recv":{}}}')


def trade_dicts(trades: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> list[dict]:
    """One ``trade`` message dict per ``parsers.schema.TRADE`` row (``side``: "B", "A" or "N")."""
    syms = _row_symbols(trades, symbols).tolist()
    cols = (syms, trades["sequence"].tolist(), prices_or_none(trades["price"]), trades["size"].tolist(),
            trades["match_id"].tolist(), _SIDE_TEXT[trades["side"]].tolist(), (trades["printable"] != 0).tolist(),
            trades["ts_event"].tolist(), trades["ts_recv"].tolist())
    return [{"type": "trade", "symbol": s, "seq": q, "px": px, "sz": sz, "match_id": m, "side": sd,
             "printable": pr, "ts_event": te, "ts_recv": tr} for s, q, px, sz, m, sd, pr, te, tr in zip(*cols)]


def trade_json(trades: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> list[str]:
    """Compact JSON text of each ``trade`` message (same bytes as ``dumps(trade_dicts(...)[i])``)."""
    cols = (_json_strings(_row_symbols(trades, symbols)), trades["sequence"].tolist(),
            prices_json(trades["price"]).tolist(), trades["size"].tolist(), trades["match_id"].tolist(),
            _SIDE_TEXT[trades["side"]].tolist(), np.where(trades["printable"] != 0, "true", "false").tolist(),
            trades["ts_event"].tolist(), trades["ts_recv"].tolist())
    return list(map(TRADE_TEMPLATE.format, *cols))


# -- status ---------------------------------------------------------------------------------------

STATUS_TEMPLATE = '{{"type":"status","symbol":{},"kind":"{}","state":"{}","code":{},"reason":{},"ts_event":{}}}'


def status_dicts(status: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> list[dict]:
    """One ``status`` message dict per ``parsers.schema.STATUS`` row.

    ``kind`` and ``state`` are the lowercase ``StatusKind`` / ``TradingState`` names ("trading_action",
    "halted"); ``code`` and ``reason`` the venue's codes as text ("H", "LUDP"; "" if none). Market-wide
    rows (instrument 0) have symbol "".
    """
    syms = _row_symbols(status, symbols).tolist()
    cols = (syms, _KIND_NAMES[status["kind"]].tolist(), _STATE_NAMES[status["state"]].tolist(),
            _venue_codes(status["code"]).tolist(), _venue_codes(status["reason"]).tolist(), status["ts_event"].tolist())
    return [{"type": "status", "symbol": s, "kind": k, "state": st, "code": c, "reason": r, "ts_event": te}
            for s, k, st, c, r, te in zip(*cols)]


def status_json(status: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> list[str]:
    """Compact JSON text of each ``status`` message (same bytes as ``dumps(status_dicts(...)[i])``)."""
    cols = (_json_strings(_row_symbols(status, symbols)), _KIND_NAMES[status["kind"]].tolist(),
            _STATE_NAMES[status["state"]].tolist(), _json_strings(_venue_codes(status["code"])),
            _json_strings(_venue_codes(status["reason"])), status["ts_event"].tolist())
    return list(map(STATUS_TEMPLATE.format, *cols))


# -- l2: the complete top N per instrument --------------------------------------------------------


L2_TEMPLATE = '{{"type":"l2","symbol":{},"seq":{},"bids":[{}],"asks":[{}],"ts_event":{},"ts_recv":{}}}'
LEVEL_TEMPLATE = '["{}",{},{}]'


class TopBooks:
    """Each instrument's top ``depth`` levels per side, rebuilt from L2 rows; ``l2`` messages out.

    Unconflated rows are deltas: a consumer upserts levels by price (size 0: the level left) and keeps
    the N best after each update (the rows of one update share instrument and ``sequence``). Rows flagged
    ``BookFlag.SNAPSHOT`` replace the instrument's levels (one side-NONE row: an empty book).
    ``depth`` must be the book engine's N: a shallower copy would miss levels moving up into view.
    ``apply`` gives message dicts, ``apply_json`` their compact JSON (levels kept as JSON fragments, so
    no per-message ``json.dumps``); feed one instance through one of them only.
    """

    def __init__(self, depth: int = 10) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth = depth
        # instrument -> (bids, asks), each {price: (price_text, size, count, level_json)}, at most depth levels
        self._books: dict[int, tuple[dict[int, tuple], dict[int, tuple]]] = {}

    def levels(self, instrument_id: int) -> tuple[list[list], list[list]]:
        """(bids, asks) as ``[price_text, size, count]`` lists, best first."""
        bids, asks = self._books.get(int(instrument_id), ({}, {}))
        return ([list(bids[p][:3]) for p in sorted(bids, reverse=True)], [list(asks[p][:3]) for p in sorted(asks)])

    def apply(self, l2: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> tuple[list[dict], np.ndarray]:
        """Apply L2 rows in order; return one ``l2`` message per update and the row index each ends at.

        Args:
            l2: ``orderbook.records.L2`` rows, in sequence order.
            symbols: instrument_id -> symbol, or one symbol per row.

        Returns:
            (messages, last_rows): ``messages[k]`` is the complete top N of its instrument after update
            ``k``; ``last_rows[k]`` the index of that update's last row (to line messages up with rows).
        """
        return self._apply(l2, symbols, as_json=False)

    def apply_json(self, l2: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> tuple[list[str], np.ndarray]:
        """``apply``, with each message as compact JSON (the bytes ``dumps`` gives for the dict)."""
        return self._apply(l2, symbols, as_json=True)

    def _apply(self, l2: np.ndarray, symbols: Mapping[int, str] | np.ndarray, as_json: bool) -> tuple[list, np.ndarray]:
        n = len(l2)
        if n == 0:
            return [], np.zeros(0, dtype=np.int64)
        inst = l2["instrument_id"]
        seq = l2["sequence"]
        snap = (l2["flags"] & np.uint16(BookFlag.SNAPSHOT)) != 0
        new = np.ones(n, dtype=bool)
        new[1:] = (inst[1:] != inst[:-1]) | (seq[1:] != seq[:-1]) | (snap[1:] != snap[:-1])
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], n)
        syms = _row_symbols(l2, symbols)
        sym_l = _json_strings(syms) if as_json else syms.tolist()
        inst_l, seq_l, snap_l = inst.tolist(), seq.tolist(), snap.tolist()
        price_l, size_l, count_l, side_l = (l2["price"].tolist(), l2["size"].tolist(), l2["count"].tolist(),
                                            l2["side"].tolist())
        text_l = prices_to_str(l2["price"]).tolist()
        frag_l = list(map(LEVEL_TEMPLATE.format, text_l, size_l, count_l))
        ts_l, recv_l = l2["ts_event"].tolist(), l2["ts_recv"].tolist()
        depth, books, bid, ask = self.depth, self._books, int(Side.BID), int(Side.ASK)
        messages = []
        for lo, hi in zip(starts.tolist(), ends.tolist()):
            book = books.get(inst_l[lo])
            if book is None:
                book = books[inst_l[lo]] = ({}, {})
            bids, asks = book
            if snap_l[lo]:
                bids.clear()
                asks.clear()
            for r in range(lo, hi):
                side = side_l[r]
                levels = bids if side == bid else asks if side == ask else None
                if levels is None:
                    continue
                if size_l[r] == 0:
                    levels.pop(price_l[r], None)
                else:
                    levels[price_l[r]] = (text_l[r], size_l[r], count_l[r], frag_l[r])
            bid_keys = sorted(bids, reverse=True)
            ask_keys = sorted(asks)
            if len(bid_keys) > depth:
                for p in bid_keys[depth:]:
                    del bids[p]
                del bid_keys[depth:]
            if len(ask_keys) > depth:
                for p in ask_keys[depth:]:
                    del asks[p]
                del ask_keys[depth:]
            r = hi - 1
            if as_json:
                messages.append(L2_TEMPLATE.format(sym_l[lo], seq_l[r], ",".join([bids[p][3] for p in bid_keys]),
                                                   ",".join([asks[p][3] for p in ask_keys]), ts_l[r], recv_l[r]))
            else:
                messages.append({"type": "l2", "symbol": sym_l[lo], "seq": seq_l[r],
                                 "bids": [list(bids[p][:3]) for p in bid_keys],
                                 "asks": [list(asks[p][:3]) for p in ask_keys],
                                 "ts_event": ts_l[r], "ts_recv": recv_l[r]})
        return messages, ends - 1


# -- wire text ------------------------------------------------------------------------------------


def dumps(message: dict) -> str:
    """Compact JSON text of one message."""
    return json.dumps(message, separators=(",", ":"))


def _msgpack():
    try:
        import msgpack
    except ImportError:
        raise ValueError('encoding="msgpack" needs the msgpack package (pip install msgpack)') from None
    return msgpack


class Encoder:
    """Messages on the wire in one encoding: ``json`` (compact text) or ``msgpack`` (bytes, same maps).

    ``json`` takes the vectorised ``*_json`` path; ``msgpack`` packs the ``*_dicts`` maps.
    """

    def __init__(self, encoding: str = "json") -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
        self.encoding = encoding
        self._packb = functools.partial(_msgpack().packb, use_bin_type=True) if encoding == "msgpack" else None

    def pack(self, message: dict) -> str | bytes:
        return dumps(message) if self._packb is None else self._packb(message)

    def bbo(self, rows: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> list[str | bytes]:
        if self._packb is None:
            return bbo_json(rows, symbols)
        return list(map(self._packb, bbo_dicts(rows, symbols)))

    def trades(self, rows: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> list[str | bytes]:
        if self._packb is None:
            return trade_json(rows, symbols)
        return list(map(self._packb, trade_dicts(rows, symbols)))

    def l2(self, books: TopBooks, rows: np.ndarray,
           symbols: Mapping[int, str] | np.ndarray) -> tuple[list[str | bytes], np.ndarray]:
        """``l2`` messages of ``books.apply(rows, symbols)``, encoded, and the row each update ends at."""
        if self._packb is None:
            return books.apply_json(rows, symbols)
        messages, last_rows = books.apply(rows, symbols)
        return list(map(self._packb, messages)), last_rows

    def status(self, rows: np.ndarray, symbols: Mapping[int, str] | np.ndarray) -> list[str | bytes]:
        if self._packb is None:
            return status_json(rows, symbols)
        return list(map(self._packb, status_dicts(rows, symbols)))
