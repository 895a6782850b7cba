"""``BookEngine``: L3, L2 and BBO of every instrument from normalized events, in compiled kernels.

The engine owns the arrays ``orderbook.kernel`` works on, grows them when the kernel asks, and hands
out BBO and L2 rows batch by batch. Feed it ``schema.EVENT`` arrays in sequence order (as
``ItchNormalizer`` makes them); trades, status and the rest pass it by. Snapshots (L2 to any depth,
L3 in time priority) are read from the same arrays on demand.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orderbook import kernel as k
from orderbook.records import BBO, L2
from parsers.schema import UNDEF_PRICE, Side



@dataclass
class BookOutput:
    """Rows one ``apply`` (or ``finish``) produced."""

    bbo: np.ndarray
    l2: np.ndarray


class BookEngine:
    """Books of every instrument of one venue.

    Args:
        depth: the N of the L2 top-N output (1..255).
        conflate_ns: 0 emits every BBO and L2 change; a window in ns emits, per instrument changed
            in the window, its BBO and how its top N changed, as they stood at the window's end.
        venue: venue id written on output rows.
    """

    def __init__(self, depth: int = 10, conflate_ns: int = 0, venue: int = 1, instruments: int = 1024,
                 orders: int = 1 << 16, levels: int = 1 << 16, out_rows: int = 1 << 16) -> None:
        if not 1 <= depth <= 255:
            raise ValueError("depth must be within 1..255")
        self.depth = depth
        self.conflate_ns = int(conflate_ns)
        self.venue = venue
        self.out_rows = out_rows
        self.scalars = np.zeros(7, dtype=np.int64)
        self._orders_alloc(_pow2(orders))
        self.lv_key = np.zeros(levels, dtype=np.int64)
        self.lv_price = np.zeros(levels, dtype=np.int64)
        self.lv_size = np.zeros(levels, dtype=np.uint64)
        self.lv_count = np.zeros(levels, dtype=np.uint32)
        self._books_alloc(instruments)
        self._new_outputs()

    # -- growth -----------------------------------------------------------------------------------

    def _orders_alloc(self, capacity: int) -> None:
        self.keys = np.full(capacity, k.EMPTY_KEY, dtype=np.uint64)
        self.o_price = np.zeros(capacity, dtype=np.int64)
        self.o_size = np.zeros(capacity, dtype=np.uint32)
        self.o_side = np.zeros(capacity, dtype=np.uint8)
        self.o_inst = np.zeros(capacity, dtype=np.uint32)
        self.o_prio = np.zeros(capacity, dtype=np.uint64)
        self.scalars[k.S_ORDER_LIMIT] = capacity // 2

    def _grow_orders(self) -> None:
        old = (self.keys, self.o_price, self.o_size, self.o_side, self.o_inst, self.o_prio)
        self._orders_alloc(2 * len(self.keys))
        k.rehash_orders(*old, *self._order_arrays())

    def _grow_pool(self) -> None:
        """Compact the level runs into a pool twice as large (old runs left behind are dropped)."""
        n = 2 * len(self.lv_key)
        new = [np.zeros(n, dtype=a.dtype) for a in (self.lv_key, self.lv_price, self.lv_size, self.lv_count)]
        used = 0
        for book in np.flatnonzero(self.b_cap):
            start, length, cap = int(self.b_start[book]), int(self.b_len[book]), int(self.b_cap[book])
            for src, dst in zip((self.lv_key, self.lv_price, self.lv_size, self.lv_count), new):
                dst[used : used + length] = src[start : start + length]
            self.b_start[book] = used
            used += cap
        self.lv_key, self.lv_price, self.lv_size, self.lv_count = new
        self.scalars[k.S_POOL_USED] = used

    def _books_alloc(self, instruments: int) -> None:
        self.b_start = np.zeros(2 * instruments, dtype=np.int64)
        self.b_len = np.zeros(2 * instruments, dtype=np.int64)
        self.b_cap = np.zeros(2 * instruments, dtype=np.int64)
        self.last_bbo = np.zeros((instruments, 6), dtype=np.int64)
        self.last_bbo[:, 0] = UNDEF_PRICE
        self.last_bbo[:, 3] = UNDEF_PRICE
        self.last_ev = np.zeros((instruments, 4), dtype=np.int64)
        self.integrity_counts = np.zeros((instruments, len(k.INTEGRITY_NAMES)), dtype=np.int64)
        self.dirty = np.zeros(instruments, dtype=np.int64)
        self.is_dirty = np.zeros(instruments, dtype=np.uint8)
        # The top N as last sent per book side: only conflation reads it.
        books = 2 * instruments if self.conflate_ns else 1
        self.emitted = np.zeros((books, self.depth, 3), dtype=np.int64)
        self.emitted_n = np.zeros(books, dtype=np.int64)

    def _grow_books(self, need: int) -> None:
        old_n = len(self.last_bbo)
        n = _pow2(need + 1)
        old = {name: getattr(self, name) for name in ("b_start", "b_len", "b_cap", "last_bbo", "last_ev",
                                                       "integrity_counts", "dirty", "is_dirty", "emitted",
                                                       "emitted_n")}
        self._books_alloc(n)
        for name, arr in old.items():
            getattr(self, name)[: len(arr)] = arr
        assert old_n <= n

    def _new_outputs(self) -> None:
        self._bbo = BBO.empty(max(self.out_rows, 2))
        self._l2 = L2.empty(max(self.out_rows, 4 * self.depth + 8))
        self._bbo_parts: list[np.ndarray] = []
        self._l2_parts: list[np.ndarray] = []
        self.scalars[k.S_BBO_ROWS] = 0
        self.scalars[k.S_L2_ROWS] = 0

    def _take_outputs(self) -> None:
        self._bbo_parts.append(self._bbo[: self.scalars[k.S_BBO_ROWS]].copy())
        self._l2_parts.append(self._l2[: self.scalars[k.S_L2_ROWS]].copy())
        self.scalars[k.S_BBO_ROWS] = 0
        self.scalars[k.S_L2_ROWS] = 0

    def _make_room(self) -> None:
        """Take the rows written so far; if there were none, a window's flush needs bigger buffers."""
        if self.scalars[k.S_BBO_ROWS] == 0 and self.scalars[k.S_L2_ROWS] == 0:
            self._bbo = BBO.empty(2 * len(self._bbo))
            self._l2 = L2.empty(2 * len(self._l2))
        else:
            self._take_outputs()

    def _collect(self) -> BookOutput:
        self._take_outputs()
        out = BookOutput(np.concatenate(self._bbo_parts), np.concatenate(self._l2_parts))
        self._bbo_parts, self._l2_parts = [], []
        return out

    def _order_arrays(self):
        return self.keys, self.o_price, self.o_size, self.o_side, self.o_inst, self.o_prio

    def _level_arrays(self):
        return self.lv_key, self.lv_price, self.lv_size, self.lv_count, self.b_start, self.b_len, self.b_cap

    # -- the public face ----------------------------------------------------------------------------

    def apply(self, events: np.ndarray) -> BookOutput:
        """Apply a batch of events; return the BBO and L2 rows it produced."""
        i = 0
        while True:
            code, i = k.apply_events(
                i, events, self.venue, self.depth, self.conflate_ns, *self._order_arrays(), *self._level_arrays(),
                self.last_bbo, self.last_ev, self.integrity_counts, self.dirty, self.is_dirty,
                self.emitted, self.emitted_n, self._bbo, self._l2, self.scalars,
            )
            if code == k.DONE:
                return self._collect()
            if code == k.NEED_ORDERS:
                self._grow_orders()
            elif code == k.NEED_POOL:
                self._grow_pool()
            elif code == k.NEED_BOOKS:
                self._grow_books(int(events["instrument_id"][i]))
            elif code == k.NEED_OUTPUT:
                self._make_room()

    def finish(self) -> BookOutput:
        """Emit what the open conflation window holds (call once at the end of a replay)."""
        while not k.flush(self.venue, self.depth, self.lv_price, self.lv_size, self.lv_count, self.b_start,
                          self.b_len, self.last_bbo, self.last_ev, self.dirty, self.is_dirty, self.emitted,
                          self.emitted_n, self._bbo, self._l2, self.scalars):
            self._make_room()
        return self._collect()

    @property
    def orders(self) -> int:
        """Resting orders across all books."""
        return int(self.scalars[k.S_ORDERS])

    def instruments(self) -> np.ndarray:
        """Ids of instruments with at least one resting level."""
        per_inst = self.b_len.reshape(-1, 2).sum(axis=1)
        return np.flatnonzero(per_inst)

    def l2(self, instrument: int, depth: int | None = None) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(bids, asks) as ``(price, size, orders)`` levels, best first, up to ``depth`` (all if None)."""
        if instrument >= len(self.last_bbo):
            return [], []
        sides = []
        for s in (0, 1):
            book = 2 * instrument + s
            start, n = int(self.b_start[book]), int(self.b_len[book])
            take = n if depth is None else min(depth, n)
            idx = np.arange(start + n - 1, start + n - 1 - take, -1)
            sides.append(list(zip(self.lv_price[idx].tolist(), self.lv_size[idx].tolist(), self.lv_count[idx].tolist())))
        return sides[0], sides[1]

    def bbo(self, instrument: int) -> tuple[int, int, int, int, int, int]:
        """(bid_px, bid_sz, bid_ct, ask_px, ask_sz, ask_ct); ``UNDEF_PRICE`` and zeros for an empty side."""
        bids, asks = self.l2(instrument, 1)
        b = bids[0] if bids else (int(UNDEF_PRICE), 0, 0)
        a = asks[0] if asks else (int(UNDEF_PRICE), 0, 0)
        return (*b, *a)

    def l3(self, instrument: int) -> dict[int, list[tuple[int, list[int]]]]:
        """Resting orders by side: ``{Side.BID: [(price, [order ids in time priority]), ...], ...}``, best first."""
        live = (self.keys != k.EMPTY_KEY) & (self.o_inst == instrument)
        out = {}
        for side in (Side.BID, Side.ASK):
            sel = np.flatnonzero(live & (self.o_side == side))
            order = np.lexsort((self.o_prio[sel], -self.o_price[sel] if side == Side.BID else self.o_price[sel]))
            sel = sel[order]
            levels: list[tuple[int, list[int]]] = []
            for price, oid in zip(self.o_price[sel].tolist(), self.keys[sel].tolist()):
                if levels and levels[-1][0] == price:
                    levels[-1][1].append(oid)
                else:
                    levels.append((price, [oid]))
            out[side] = levels
        return out

    def integrity(self) -> dict[str, int]:
        """Integrity problems over all instruments, by name (only nonzero)."""
        totals = self.integrity_counts.sum(axis=0)
        return {name: int(v) for name, v in zip(k.INTEGRITY_NAMES, totals) if v}

    def integrity_by_instrument(self) -> dict[int, dict[str, int]]:
        rows = np.flatnonzero(self.integrity_counts.any(axis=1))
        return {int(i): {n: int(v) for n, v in zip(k.INTEGRITY_NAMES, self.integrity_counts[i]) if v} for i in rows}

    def memory_bytes(self) -> int:
        """Bytes held by the order table, level pool and per-instrument arrays."""
        arrays = (*self._order_arrays(), *self._level_arrays(), self.last_bbo, self.last_ev, self.integrity_counts,
                  self.dirty, self.is_dirty)
        return sum(a.nbytes for a in arrays)


def _pow2(n: int) -> int:
    return 1 << max(4, (int(n) - 1).bit_length())
