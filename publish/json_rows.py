"""Compiled JSON writers for the fixed row layouts: bbo, trade and l2 messages as bytes, no object per row.

The same messages as ``publish.encoding``'s ``*_json`` (docs/redis.md), byte for byte (the tests
compare them on random rows), written by numba kernels into one growing ``uint8`` buffer with an
offset per message. ``publish.redis_pub`` wraps them in RESP commands; the WebSocket hub slices them
into texts.

Rules this module keeps:
- ``SymbolTable``: instrument id -> the symbol as a JSON string literal (for messages) and as raw UTF-8
  (for channel and key names), in padded byte matrices behind an open-addressing table
  (``parsers.hashtable``). An id without a symbol writes ``""`` and has an empty raw name. It is
  rebuilt only when the directory dict changes (sinks get a new dict when it does).
- Kernels never allocate: each checks, before a row, that the row's largest possible message fits,
  and otherwise returns ``NEED_ROOM`` with the row to start again from; ``Messages`` doubles its buffer
  and calls again. State (``L2Books``) changes only for rows whose message was written.
- ``L2Books`` keeps each instrument's top N per side as int64 levels (price, size, orders), best
  first, applying L2 rows as ``encoding.TopBooks`` does: an update (rows of one instrument and
  sequence) upserts levels by price (size 0 removes), a SNAPSHOT-flagged update first clears both
  sides, and the N best are kept after each update. During an update a side holds up to
  ``4 * depth + 8`` levels before the cut (an update changes at most ``2 * depth`` per side).
- ``seq`` comes from the caller (the venue sequence for Redis, the hub's own counter for WebSocket);
  ``tail`` closes each message (``}``, or ``,"snapshot":false}`` for WebSocket updates).
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import numba as nb
import numpy as np

from orderbook.records import BookFlag
from parsers import hashtable
from parsers.schema import PRICE_SCALE, UNDEF_PRICE, Side

DONE = 0
NEED_ROOM = 1
NEED_SLOTS = 2  # L2Books: grow the instrument table

MAX_NUMBER = 21  # "-9223372036854775808", 20 digits of a u64
MAX_PRICE = 23  # '"' + "-9223372036.854775808" + '"'
SNAPSHOT_FLAG = np.uint16(BookFlag.SNAPSHOT)
_BID, _ASK = np.uint8(Side.BID), np.uint8(Side.ASK)


def _b(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()


TAIL_CLOSE = _b("}")
TAIL_UPDATE = _b(',"snapshot":false}')
_BBO_HEAD, _SEQ, _BID_PX, _BID_SZ, _ASK_PX, _ASK_SZ, _TS_EVENT, _TS_RECV = (_b(t) for t in (
    '{"type":"bbo","symbol":', ',"seq":', ',"bid_px":', ',"bid_sz":', ',"ask_px":', ',"ask_sz":', ',"ts_event":',
    ',"ts_recv":'))
_TRADE_HEAD, _PX, _SZ, _MATCH, _SIDE, _PRINTABLE = (_b(t) for t in (
    '{"type":"trade","symbol":', ',"px":', ',"sz":', ',"match_id":', ',"side":"', '","printable":'))
_L2_HEAD, _BIDS, _ASKS = (_b(t) for t in ('{"type":"l2","symbol":', ',"bids":[', '],"asks":['))
_TRUE, _FALSE, _NULL, _EMPTY_STR = _b("true"), _b("false"), _b("null"), _b('""')
BBO_FIXED = 120  # bytes of a bbo message besides symbol, numbers and tail
TRADE_FIXED = 130


# -- byte writers ---------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, inline="always")
def put(out, pos, src):
    for k in range(src.shape[0]):
        out[pos + k] = src[k]
    return pos + src.shape[0]


@nb.njit(cache=True, nogil=True, inline="always")
def put_row(out, pos, matrix, row, n):
    for k in range(n):
        out[pos + k] = matrix[row, k]
    return pos + n


@nb.njit(cache=True, nogil=True)
def put_uint(out, pos, value):
    """Decimal digits of a uint64."""
    v = np.uint64(value)
    if v == 0:
        out[pos] = 48
        return pos + 1
    n = 0
    t = v
    while t > 0:
        t //= np.uint64(10)
        n += 1
    end = pos + n
    for k in range(n):
        out[end - 1 - k] = np.uint8(48 + (v % np.uint64(10)))
        v //= np.uint64(10)
    return end


@nb.njit(cache=True, nogil=True)
def put_int(out, pos, value):
    """Decimal text of an int64 (INT64_MIN included)."""
    v = np.int64(value)
    if v < 0:
        out[pos] = 45  # '-'
        return put_uint(out, pos + 1, np.uint64(-(v + 1)) + np.uint64(1))
    return put_uint(out, pos, np.uint64(v))


@nb.njit(cache=True, nogil=True)
def put_price_text(out, pos, price):
    """Exact decimal of an int64 1e-9 price, trailing fraction zeros dropped ("187.25", "-0.000000001")."""
    p = np.int64(price)
    if p < 0:
        out[pos] = 45
        pos += 1
        mag = np.uint64(-(p + 1)) + np.uint64(1)
    else:
        mag = np.uint64(p)
    scale = np.uint64(PRICE_SCALE)
    pos = put_uint(out, pos, mag // scale)
    frac = mag % scale
    if frac == 0:
        return pos
    out[pos] = 46  # '.'
    pos += 1
    digits = 9
    while frac % np.uint64(10) == 0:
        frac //= np.uint64(10)
        digits -= 1
    end = pos + digits
    for k in range(digits):
        out[end - 1 - k] = np.uint8(48 + (frac % np.uint64(10)))
        frac //= np.uint64(10)
    return end


@nb.njit(cache=True, nogil=True)
def put_price_json(out, pos, price):
    """``"187.25"``, or ``null`` for UNDEF_PRICE."""
    if price == UNDEF_PRICE:
        return put(out, pos, _NULL)
    out[pos] = 34
    pos = put_price_text(out, pos + 1, price)
    out[pos] = 34
    return pos + 1


@nb.njit(cache=True, nogil=True, inline="always")
def symbol_index(table, instrument_id):
    slot = hashtable.find(table, np.int64(instrument_id))
    return -1 if slot < 0 else table[slot, 1]


@nb.njit(cache=True, nogil=True, inline="always")
def put_symbol_json(out, pos, index, sym_json, sym_json_len):
    if index < 0:
        return put(out, pos, _EMPTY_STR)
    return put_row(out, pos, sym_json, index, sym_json_len[index])


# -- the symbol directory -------------------------------------------------------------------------


class SymbolTable:
    """Instrument id -> symbol bytes for the kernels (see the module rules)."""

    def __init__(self, symbols: Mapping[int, str]) -> None:
        self.source = symbols
        items = list(symbols.items())
        n = len(items)
        self.table = hashtable.new_table(_pow2(2 * n + 2), 2)
        js = [json.dumps(s).encode() for _, s in items]
        raw = [s.encode() for _, s in items]
        self.json_width = max([len(b) for b in js] + [2])
        self.raw_width = max([len(b) for b in raw] + [1])
        self.sym_json = np.zeros((max(n, 1), self.json_width), dtype=np.uint8)
        self.sym_json_len = np.zeros(max(n, 1), dtype=np.int64)
        self.sym_raw = np.zeros((max(n, 1), self.raw_width), dtype=np.uint8)
        self.sym_raw_len = np.zeros(max(n, 1), dtype=np.int64)
        for k, ((iid, _), j, r) in enumerate(zip(items, js, raw)):
            self.sym_json[k, :len(j)] = np.frombuffer(j, dtype=np.uint8)
            self.sym_json_len[k] = len(j)
            self.sym_raw[k, :len(r)] = np.frombuffer(r, dtype=np.uint8)
            self.sym_raw_len[k] = len(r)
            _insert(self.table, np.int64(iid), k)
        self.names = [s for _, s in items]

    def indexes(self, instrument_ids: np.ndarray) -> np.ndarray:
        """Symbol index per id (-1: no symbol)."""
        out = np.empty(len(instrument_ids), dtype=np.int64)
        _indexes(self.table, np.asarray(instrument_ids), out)
        return out


@nb.njit(cache=True, nogil=True)
def _insert(table, key, value):
    slot = hashtable.slot_for(table, key)
    table[slot, 0] = key
    table[slot, 1] = value


@nb.njit(cache=True, nogil=True)
def _indexes(table, ids, out):
    for i in range(ids.shape[0]):
        out[i] = symbol_index(table, ids[i])


def _pow2(n: int) -> int:
    return 1 << max(4, (int(n) - 1).bit_length())


class SymbolCache:
    """The ``SymbolTable`` of the latest directory dict (rebuilt when a batch brings a new dict)."""

    def __init__(self) -> None:
        self.table: SymbolTable | None = None

    def get(self, symbols: Mapping[int, str]) -> SymbolTable:
        if self.table is None or self.table.source is not symbols:
            self.table = SymbolTable(symbols)
        return self.table


# -- bbo and trade messages -----------------------------------------------------------------------


@nb.njit(cache=True, nogil=True)
def bbo_kernel(start, rows, seqs, tail, table, sym_json, sym_json_len, out, pos, offsets):
    """``bbo`` messages of ``rows[start:]`` (``seqs[i]`` as seq) from ``pos``; offsets[i] = where row i starts.

    Returns (code, next row, end position); ``offsets[len(rows)]`` is set once every row is written.
    """
    width = sym_json.shape[1]
    need = BBO_FIXED + width + 7 * MAX_NUMBER + tail.shape[0]
    for i in range(start, rows.shape[0]):
        if pos + need > out.shape[0]:
            return NEED_ROOM, i, pos
        r = rows[i]
        offsets[i] = pos
        pos = put(out, pos, _BBO_HEAD)
        pos = put_symbol_json(out, pos, symbol_index(table, r.instrument_id), sym_json, sym_json_len)
        pos = put(out, pos, _SEQ)
        pos = put_uint(out, pos, seqs[i])
        pos = put(out, pos, _BID_PX)
        pos = put_price_json(out, pos, r.bid_px)
        pos = put(out, pos, _BID_SZ)
        pos = put_uint(out, pos, r.bid_sz)
        pos = put(out, pos, _ASK_PX)
        pos = put_price_json(out, pos, r.ask_px)
        pos = put(out, pos, _ASK_SZ)
        pos = put_uint(out, pos, r.ask_sz)
        pos = put(out, pos, _TS_EVENT)
        pos = put_int(out, pos, r.ts_event)
        pos = put(out, pos, _TS_RECV)
        pos = put_int(out, pos, r.ts_recv)
        pos = put(out, pos, tail)
    offsets[rows.shape[0]] = pos
    return DONE, rows.shape[0], pos


@nb.njit(cache=True, nogil=True)
def trade_kernel(start, rows, seqs, tail, table, sym_json, sym_json_len, out, pos, offsets):
    """``trade`` messages, as ``bbo_kernel`` writes bbo messages."""
    width = sym_json.shape[1]
    need = TRADE_FIXED + width + 6 * MAX_NUMBER + tail.shape[0]
    for i in range(start, rows.shape[0]):
        if pos + need > out.shape[0]:
            return NEED_ROOM, i, pos
        r = rows[i]
        offsets[i] = pos
        pos = put(out, pos, _TRADE_HEAD)
        pos = put_symbol_json(out, pos, symbol_index(table, r.instrument_id), sym_json, sym_json_len)
        pos = put(out, pos, _SEQ)
        pos = put_uint(out, pos, seqs[i])
        pos = put(out, pos, _PX)
        pos = put_price_json(out, pos, r.price)
        pos = put(out, pos, _SZ)
        pos = put_uint(out, pos, r.size)
        pos = put(out, pos, _MATCH)
        pos = put_uint(out, pos, r.match_id)
        pos = put(out, pos, _SIDE)
        side = r.side
        out[pos] = 66 if side == _BID else 65 if side == _ASK else 78  # B, A, N
        pos = put(out, pos + 1, _PRINTABLE)
        pos = put(out, pos, _TRUE if r.printable != 0 else _FALSE)
        pos = put(out, pos, _TS_EVENT)
        pos = put_int(out, pos, r.ts_event)
        pos = put(out, pos, _TS_RECV)
        pos = put_int(out, pos, r.ts_recv)
        pos = put(out, pos, tail)
    offsets[rows.shape[0]] = pos
    return DONE, rows.shape[0], pos


class Messages:
    """A reusable output buffer of messages and their offsets (``view(i)``, ``texts()``)."""

    def __init__(self, nbytes: int = 1 << 16) -> None:
        self.buf = np.empty(nbytes, dtype=np.uint8)
        self.offsets = np.zeros(1, dtype=np.int64)
        self.count = 0
        self.end = 0

    def reserve(self, n: int) -> None:
        if len(self.offsets) < n + 1:
            self.offsets = np.zeros(_pow2(n + 1), dtype=np.int64)
        self.count = n

    def grow(self, used: int) -> None:
        bigger = np.empty(2 * len(self.buf), dtype=np.uint8)
        bigger[:used] = self.buf[:used]
        self.buf = bigger

    def texts(self) -> list[str]:
        """Each message as a str (ASCII, so decoding is a copy)."""
        data = self.buf[:self.end].tobytes()
        off = self.offsets[:self.count + 1].tolist()
        return [data[a:b].decode() for a, b in zip(off, off[1:])]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets[:self.count + 1])


def _run_rows(kernel, rows, seqs, tail, symtab: SymbolTable, into: Messages) -> Messages:
    n = len(rows)
    into.reserve(n)
    start, pos = 0, 0
    seqs = np.ascontiguousarray(seqs, dtype=np.uint64)
    while True:
        code, start, pos = kernel(start, rows, seqs, tail, symtab.table, symtab.sym_json, symtab.sym_json_len,
                                  into.buf, pos, into.offsets)
        if code == DONE:
            into.end = pos
            return into
        into.grow(pos)


def bbo_messages(rows: np.ndarray, symtab: SymbolTable, seqs: np.ndarray | None = None,
                 tail: np.ndarray = TAIL_CLOSE, into: Messages | None = None) -> Messages:
    """``bbo`` messages of ``orderbook.records.BBO`` rows (``seqs``: default the rows' own sequence)."""
    return _run_rows(bbo_kernel, rows, rows["sequence"] if seqs is None else seqs, tail, symtab, into or Messages())


def trade_messages(rows: np.ndarray, symtab: SymbolTable, seqs: np.ndarray | None = None,
                   tail: np.ndarray = TAIL_CLOSE, into: Messages | None = None) -> Messages:
    """``trade`` messages of ``parsers.schema.TRADE`` rows."""
    return _run_rows(trade_kernel, rows, rows["sequence"] if seqs is None else seqs, tail, symtab,
                     into or Messages())


# -- l2: the complete top N per instrument --------------------------------------------------------


@nb.njit(cache=True, nogil=True)
def _find_level(levels, count, price):
    for k in range(count):
        if levels[k, 0] == price:
            return k
    return -1


@nb.njit(cache=True, nogil=True)
def _apply_row(lv, n, slot, s, price, size, orders, cap):
    """Upsert (size > 0) or remove (size 0) one level of book side ``s`` (0 bids, best = highest)."""
    levels = lv[slot, s]
    count = n[slot, s]
    k = _find_level(levels, count, price)
    if size == 0:
        if k >= 0:
            for j in range(k, count - 1):
                levels[j, 0] = levels[j + 1, 0]
                levels[j, 1] = levels[j + 1, 1]
                levels[j, 2] = levels[j + 1, 2]
            n[slot, s] = count - 1
        return
    if k >= 0:
        levels[k, 1] = size
        levels[k, 2] = orders
        return
    # Insert in order: bids descending, asks ascending; a full side loses its worst level.
    at = 0
    while at < count and (levels[at, 0] > price if s == 0 else levels[at, 0] < price):
        at += 1
    if count == cap:
        if at == cap:
            return
        count -= 1
    for j in range(count, at, -1):
        levels[j, 0] = levels[j - 1, 0]
        levels[j, 1] = levels[j - 1, 1]
        levels[j, 2] = levels[j - 1, 2]
    levels[at, 0] = price
    levels[at, 1] = size
    levels[at, 2] = orders
    n[slot, s] = count + 1


@nb.njit(cache=True, nogil=True)
def _put_side(out, pos, levels, count):
    for k in range(count):
        if k:
            out[pos] = 44  # ','
            pos += 1
        out[pos] = 91  # '['
        out[pos + 1] = 34
        pos = put_price_text(out, pos + 2, levels[k, 0])
        out[pos] = 34
        out[pos + 1] = 44
        pos = put_uint(out, pos + 2, np.uint64(levels[k, 1]))
        out[pos] = 44
        pos = put_uint(out, pos + 1, np.uint64(levels[k, 2]))
        out[pos] = 93  # ']'
        pos += 1
    return pos


@nb.njit(cache=True, nogil=True)
def put_l2_message(out, pos, lv, n, slot, sym, seq, ts_event, ts_recv, tail, sym_json, sym_json_len):
    pos = put(out, pos, _L2_HEAD)
    pos = put_symbol_json(out, pos, sym, sym_json, sym_json_len)
    pos = put(out, pos, _SEQ)
    pos = put_uint(out, pos, seq)
    pos = put(out, pos, _BIDS)
    pos = _put_side(out, pos, lv[slot, 0], n[slot, 0])
    pos = put(out, pos, _ASKS)
    pos = _put_side(out, pos, lv[slot, 1], n[slot, 1])
    out[pos] = 93
    pos += 1
    pos = put(out, pos, _TS_EVENT)
    pos = put_int(out, pos, ts_event)
    pos = put(out, pos, _TS_RECV)
    pos = put_int(out, pos, ts_recv)
    return put(out, pos, tail)


@nb.njit(cache=True, nogil=True)
def l2_kernel(start, rows, depth, slots, lv, n, used, write, tail, table, sym_json, sym_json_len, out, pos,
              offsets, upd_row, upd_slot, upd_sym, n_upd):
    """Apply ``rows[start:]`` update by update; with ``write``, an ``l2`` message after each.

    Args:
        start: first row (an update's first row).
        slots: instrument id -> book slot (hash table, column 1); ``used``: [slots handed out].
        lv, n: levels int64 [slot, side, cap, (price, size, orders)] and counts [slot, side].
        upd_row, upd_slot, upd_sym: per update written: its last row, book slot, symbol index.
        n_upd: [updates written so far]; offsets[k] = where update k's message starts.

    Returns:
        (code, next row, end position): NEED_SLOTS when a new instrument finds the table half full
        or ``lv`` without a free slot, NEED_ROOM when a message might not fit; nothing of that update
        is applied then.
    """
    total = rows.shape[0]
    cap = lv.shape[2]
    need = 150 + sym_json.shape[1] + 2 * depth * (MAX_PRICE + 2 * MAX_NUMBER + 6) + tail.shape[0]
    i = start
    while i < total:
        inst = rows[i].instrument_id
        seq = rows[i].sequence
        snap = (rows[i].flags & SNAPSHOT_FLAG) != 0
        end = i + 1
        while (end < total and rows[end].instrument_id == inst and rows[end].sequence == seq
               and ((rows[end].flags & SNAPSHOT_FLAG) != 0) == snap):
            end += 1
        if write and pos + need > out.shape[0]:
            return NEED_ROOM, i, pos
        s = hashtable.find(slots, np.int64(inst))
        if s < 0:
            if 2 * (used[0] + 1) > slots.shape[0] or used[0] >= lv.shape[0]:
                return NEED_SLOTS, i, pos
            s = hashtable.slot_for(slots, np.int64(inst))
            slots[s, 0] = np.int64(inst)
            slots[s, 1] = used[0]
            used[0] += 1
        slot = slots[s, 1]
        if snap:
            n[slot, 0] = 0
            n[slot, 1] = 0
        for r in range(i, end):
            side = rows[r].side
            if side == _BID:
                _apply_row(lv, n, slot, 0, rows[r].price, rows[r].size, rows[r].count, cap)
            elif side == _ASK:
                _apply_row(lv, n, slot, 1, rows[r].price, rows[r].size, rows[r].count, cap)
        for side in range(2):
            if n[slot, side] > depth:
                n[slot, side] = depth
        k = n_upd[0]
        last = end - 1
        sym = symbol_index(table, inst)
        upd_row[k] = last
        upd_slot[k] = slot
        upd_sym[k] = sym
        if write:
            offsets[k] = pos
            pos = put_l2_message(out, pos, lv, n, slot, sym, rows[last].sequence, rows[last].ts_event,
                                 rows[last].ts_recv, tail, sym_json, sym_json_len)
            offsets[k + 1] = pos
        n_upd[0] = k + 1
        i = end
    return DONE, total, pos


@nb.njit(cache=True, nogil=True)
def l2_state_kernel(start, book_slots, syms, seqs, ts_event, ts_recv, depth, lv, n, tail, sym_json, sym_json_len,
                    out, pos, offsets):
    """``l2`` messages of the current state of ``book_slots`` (one each), with the given seq and times."""
    need = 150 + sym_json.shape[1] + 2 * depth * (MAX_PRICE + 2 * MAX_NUMBER + 6) + tail.shape[0]
    for k in range(start, book_slots.shape[0]):
        if pos + need > out.shape[0]:
            return NEED_ROOM, k, pos
        offsets[k] = pos
        pos = put_l2_message(out, pos, lv, n, book_slots[k], syms[k], seqs[k], ts_event[k], ts_recv[k], tail,
                             sym_json, sym_json_len)
    offsets[book_slots.shape[0]] = pos
    return DONE, book_slots.shape[0], pos


class L2Books:
    """Every instrument's top N from L2 rows, as ``encoding.TopBooks`` keeps it, in int64 arrays."""

    def __init__(self, depth: int = 10, instruments: int = 1024) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.depth = depth
        self.cap = 4 * depth + 8
        self.slots = hashtable.new_table(_pow2(2 * instruments), 2)
        self.lv = np.zeros((instruments, 2, self.cap, 3), dtype=np.int64)
        self.n = np.zeros((instruments, 2), dtype=np.int64)
        self.used = np.zeros(1, dtype=np.int64)
        self.upd_row = np.zeros(0, dtype=np.int64)
        self.upd_slot = np.zeros(0, dtype=np.int64)
        self.upd_sym = np.zeros(0, dtype=np.int64)

    def apply(self, rows: np.ndarray, symtab: SymbolTable, write: bool = True, tail: np.ndarray = TAIL_CLOSE,
              into: Messages | None = None) -> tuple[Messages, np.ndarray, np.ndarray, np.ndarray]:
        """Apply L2 rows; returns (messages (one per update when ``write``), last row, book slot and
        symbol index of each update)."""
        into = into or Messages()
        total = len(rows)
        if len(self.upd_row) < total:
            size = _pow2(total)
            self.upd_row = np.zeros(size, dtype=np.int64)
            self.upd_slot = np.zeros(size, dtype=np.int64)
            self.upd_sym = np.zeros(size, dtype=np.int64)
        if write:
            into.reserve(total)
        n_upd = np.zeros(1, dtype=np.int64)
        start, pos = 0, 0
        while True:
            code, start, pos = l2_kernel(start, rows, self.depth, self.slots, self.lv, self.n, self.used, write,
                                         tail, symtab.table, symtab.sym_json, symtab.sym_json_len, into.buf, pos,
                                         into.offsets, self.upd_row, self.upd_slot, self.upd_sym, n_upd)
            if code == DONE:
                break
            if code == NEED_ROOM:
                into.grow(pos)
            else:
                self._grow()
        k = int(n_upd[0])
        into.count = k if write else 0
        into.end = pos
        return into, self.upd_row[:k], self.upd_slot[:k], self.upd_sym[:k]

    def state_messages(self, book_slots: np.ndarray, syms: np.ndarray, seqs: np.ndarray, ts_event: np.ndarray,
                       ts_recv: np.ndarray, symtab: SymbolTable, tail: np.ndarray = TAIL_CLOSE,
                       into: Messages | None = None) -> Messages:
        """The current top N of each of ``book_slots`` as an ``l2`` message."""
        into = into or Messages()
        into.reserve(len(book_slots))
        args = [np.ascontiguousarray(a, dtype=np.int64) for a in (book_slots, syms)]
        seqs = np.ascontiguousarray(seqs, dtype=np.uint64)
        start, pos = 0, 0
        while True:
            code, start, pos = l2_state_kernel(start, *args, seqs, np.ascontiguousarray(ts_event, dtype=np.int64),
                                               np.ascontiguousarray(ts_recv, dtype=np.int64), self.depth, self.lv,
                                               self.n, tail, symtab.sym_json, symtab.sym_json_len, into.buf, pos,
                                               into.offsets)
            if code == DONE:
                into.end = pos
                return into
            into.grow(pos)

    def levels(self, instrument_id: int) -> tuple[list[list], list[list]]:
        """(bids, asks) as [price, size, orders] int lists, best first (for tests and tools)."""
        s = hashtable.find(self.slots, np.int64(instrument_id))
        if s < 0:
            return [], []
        slot = int(self.slots[s, 1])
        return tuple([[int(x) for x in self.lv[slot, side, k]] for k in range(int(self.n[slot, side]))]
                     for side in range(2))

    def _grow(self) -> None:
        used = int(self.used[0])
        size = 2 * max(len(self.lv), used + 1)
        table = hashtable.new_table(_pow2(2 * size), 2)
        hashtable.rehash(self.slots, table)
        self.slots = table
        lv = np.zeros((size, 2, self.cap, 3), dtype=np.int64)
        lv[:len(self.lv)] = self.lv
        n = np.zeros((size, 2), dtype=np.int64)
        n[:len(self.n)] = self.n
        self.lv, self.n = lv, n


def sample_batch_arrays(rows: int = 1) -> dict[str, np.ndarray]:
    """``rows`` rows of each kind (twice that of L2: both sides), for warming kernels up before the
    first real batch. Warm up with 1 row and with several: numba types a column of a one-row array
    (``bbo["instrument_id"]``) as contiguous and of a longer one as strided, two compilations; the
    one the warm-up missed is loaded from the cache at the first batch that needs it (ms)."""
    from parsers.schema import STATUS, TRADE
    from orderbook.records import BBO, L2

    bbo, l2, trades, status = BBO.empty(rows), L2.empty(2 * rows), TRADE.empty(rows), STATUS.empty(rows)
    for rows_of in (bbo, l2, trades, status):
        rows_of["instrument_id"] = 1
    l2["side"] = [_BID, _ASK] * rows
    l2["size"] = 1
    return {"bbo": bbo, "l2": l2, "trades": trades, "status": status}
