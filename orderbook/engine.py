"""``BookEngine``: L3, L2 and BBO of every instrument from normalized events, in compiled kernels.

The engine owns the arrays ``orderbook.kernel`` works on, grows them when the kernel asks, and hands
out BBO and L2 rows batch by batch. Feed it ``schema.EVENT`` arrays in sequence order (as
``ItchNormalizer`` makes them); trades, status and the rest pass it by. The engine fills in the events
as it applies them (side, price and size from the resting order), so it can be the normalizer's order
index (``ItchNormalizer(orders=engine)``): a day's orders are then indexed once, not twice. Snapshots (L2 to any depth,
L3 in time priority) are read from the same arrays on demand.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orderbook import kernel as k
from orderbook.records import BBO, L2
from parsers.buffers import BufferPool
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
        instruments, orders, levels, out_rows: starting sizes (everything grows on demand).
        outputs: False keeps the books only (``apply`` returns no rows): for book queries and
            backtests, which read the books and not their changes.
    """

    def __init__(self, depth: int = 10, conflate_ns: int = 0, venue: int = 1, instruments: int = 1024,
                 orders: int = 1 << 16, levels: int = 1 << 16, out_rows: int = 1 << 16,
                 outputs: bool = True) -> None:
        if not 1 <= depth <= 255:
            raise ValueError("depth must be within 1..255")
        self.depth = depth
        self.conflate_ns = int(conflate_ns)
        self._kernel_conflate = self.conflate_ns if outputs else k.NO_OUTPUTS
        self.venue = venue
        self.out_rows = out_rows if outputs else 0
        self.scalars = np.zeros(7, dtype=np.int64)
        # Output buffers handed out to consumers come back once none of them holds a view.
        self._pools = {r.name: BufferPool(r.dtype, prepare=_zero_padding) for r in (BBO, L2)}
        self._orders_alloc(_pow2(orders))
        self.lv = np.zeros((levels, 4), dtype=np.int64)
        self._books_alloc(instruments)
        self._new_outputs()

    # -- growth -----------------------------------------------------------------------------------

    def _orders_alloc(self, capacity: int) -> None:
        self.od = np.zeros((capacity, 4), dtype=np.int64)
        self.od[:, 0] = k.EMPTY
        self.scalars[k.S_ORDER_LIMIT] = capacity // 2

    def _grow_orders(self) -> None:
        old = self.od
        self._orders_alloc(2 * len(old))
        k.rehash_orders(old, self.od)

    def _grow_pool(self) -> None:
        """Compact the level runs into a pool twice as large (old runs left behind are dropped)."""
        new = np.zeros((2 * len(self.lv), 4), dtype=np.int64)
        used = 0
        for book in np.flatnonzero(self.bk[:, 2]):
            start, length, cap = (int(x) for x in self.bk[book])
            new[used : used + length] = self.lv[start : start + length]
            self.bk[book, 0] = used
            used += cap
        self.lv = new
        self.scalars[k.S_POOL_USED] = used

    def _books_alloc(self, instruments: int) -> None:
        self.bk = np.zeros((2 * instruments, 3), dtype=np.int64)
        self.st = np.zeros((instruments, k.ST_COLUMNS), dtype=np.int64)
        self.st[:, k.ST_BBO] = UNDEF_PRICE
        self.st[:, k.ST_BBO + 3] = UNDEF_PRICE
        self.dirty = np.zeros(instruments, dtype=np.int64)
        # Per book side, its top N at the start of a conflation window, rebuilt when a window holds
        # two changes of it (the kernel's conflation notes): only conflation reads it.
        books = 2 * instruments if self._kernel_conflate > 0 else 1
        self.emitted = np.zeros((books, self.depth + k.SNAPSHOT_EXTRA, 3), dtype=np.int64)
        self.emitted_n = np.zeros(books, dtype=np.int64)

    def _grow_books(self, need: int) -> None:
        old = {name: getattr(self, name) for name in ("bk", "st", "dirty", "emitted", "emitted_n")}
        self._books_alloc(_pow2(need + 1))
        for name, arr in old.items():
            getattr(self, name)[: len(arr)] = arr

    def _new_outputs(self) -> None:
        self._bbo = self._fresh(BBO, max(self.out_rows, 2))
        self._l2 = self._fresh(L2, max(self.out_rows, 4 * self.depth + 8))
        self._bbo_parts: list[np.ndarray] = []
        self._l2_parts: list[np.ndarray] = []
        self.scalars[k.S_BBO_ROWS] = 0
        self.scalars[k.S_L2_ROWS] = 0

    def _take_outputs(self) -> None:
        """Hand out the rows written and write on from the start of a buffer.

        A buffer mostly filled is handed out as a view and replaced by a fresh one (no copy); a few rows
        (small live batches) are copied out and the buffer kept: a fresh 64k-row buffer costs ~150 us.
        """
        n_bbo, n_l2 = int(self.scalars[k.S_BBO_ROWS]), int(self.scalars[k.S_L2_ROWS])
        if n_bbo:
            self._bbo_parts.append(_copied(self._bbo, n_bbo) if _few(n_bbo, self._bbo) else self._bbo[:n_bbo])
            if not _few(n_bbo, self._bbo):
                self._bbo = self._fresh(BBO, len(self._bbo))
        if n_l2:
            self._l2_parts.append(_copied(self._l2, n_l2) if _few(n_l2, self._l2) else self._l2[:n_l2])
            if not _few(n_l2, self._l2):
                self._l2 = self._fresh(L2, len(self._l2))
        self.scalars[k.S_BBO_ROWS] = 0
        self.scalars[k.S_L2_ROWS] = 0

    def _fresh(self, record, n: int) -> np.ndarray:
        """Rows for the kernel to write (it sets every column): a buffer no consumer holds any more."""
        return self._pools[record.name].take(n)

    def _make_room(self) -> None:
        """Take the rows written so far; if there were none, a window's flush needs bigger buffers."""
        if self.scalars[k.S_BBO_ROWS] == 0 and self.scalars[k.S_L2_ROWS] == 0:
            self._bbo = self._fresh(BBO, 2 * len(self._bbo))
            self._l2 = self._fresh(L2, 2 * len(self._l2))
        else:
            self._take_outputs()

    def _collect(self) -> BookOutput:
        self._take_outputs()
        bbo, l2 = self._bbo_parts, self._l2_parts
        out = BookOutput(_joined(BBO, bbo), _joined(L2, l2))
        self._bbo_parts, self._l2_parts = [], []
        if len(bbo) > 1 or len(l2) > 1:
            # The batch outgrew its buffers and its rows were joined by a copy: size the buffers for
            # batches like it, so the next ones are handed out as they were written.
            self._bbo = self._fresh(BBO, max(len(self._bbo), _room_for(len(out.bbo))))
            self._l2 = self._fresh(L2, max(len(self._l2), _room_for(len(out.l2))))
        return out

    # -- the public face ----------------------------------------------------------------------------

    def apply(self, events: np.ndarray) -> BookOutput:
        """Apply a batch of events; return the BBO and L2 rows it produced."""
        i = 0
        while True:
            code, i = k.apply_events(i, events, self.venue, self.depth, self._kernel_conflate, self.od, self.lv, self.bk,
                                     self.st, self.dirty, self.emitted, self.emitted_n, self._bbo, self._l2,
                                     self.scalars)
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

    def enrich(self, events: np.ndarray) -> BookOutput:
        """As the order index of an ``ItchNormalizer`` (``orders=engine``): apply the batch, which fills
        in its events as ``OrderRefTable.enrich`` would; the book rows it produced."""
        return self.apply(events)

    def anomaly_counts(self) -> dict[str, int]:
        """As an order index: the order-reference anomalies, under ``OrderRefTable``'s names."""
        totals = self._integrity().sum(axis=0)
        named = {"unknown_order_ref": totals[k.I_UNKNOWN], "duplicate_order_ref": totals[k.I_DUPLICATE],
                 "size_below_zero": totals[k.I_BELOW_ZERO]}
        return {name: int(v) for name, v in named.items() if v}

    def finish(self) -> BookOutput:
        """Emit what the open conflation window holds (call once at the end of a replay)."""
        while self._kernel_conflate > 0 and not k.flush(self.venue, self.depth, self.lv, self.bk, self.st, self.dirty, self.emitted,
                          self.emitted_n, self._bbo, self._l2, self.scalars):
            self._make_room()
        return self._collect()

    @property
    def orders(self) -> int:
        """Resting orders across all books."""
        return int(self.scalars[k.S_ORDERS])

    def instruments(self) -> np.ndarray:
        """Ids of instruments with at least one resting level."""
        return np.flatnonzero(self.bk[:, 1].reshape(-1, 2).sum(axis=1))

    def l2(self, instrument: int, depth: int | None = None) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(bids, asks) as ``(price, size, orders)`` levels, best first, up to ``depth`` (all if None)."""
        if instrument >= len(self.st):
            return [], []
        sides = []
        for s in (0, 1):
            start, n, _ = (int(x) for x in self.bk[2 * instrument + s])
            take = n if depth is None else min(depth, n)
            rows = self.lv[start + n - take : start + n][::-1]
            sides.append([(int(p), int(z), int(c)) for p, z, c in rows[:, 1:4].tolist()])
        return sides[0], sides[1]

    def bbo(self, instrument: int) -> tuple[int, int, int, int, int, int]:
        """(bid_px, bid_sz, bid_ct, ask_px, ask_sz, ask_ct); ``UNDEF_PRICE`` and zeros for an empty side."""
        bids, asks = self.l2(instrument, 1)
        b = bids[0] if bids else (int(UNDEF_PRICE), 0, 0)
        a = asks[0] if asks else (int(UNDEF_PRICE), 0, 0)
        return (*b, *a)

    def l3(self, instrument: int) -> dict[int, list[tuple[int, list[int]]]]:
        """Resting orders by side: ``{Side.BID: [(price, [order ids in time priority]), ...], ...}``, best first."""
        od = self.od
        live = (od[:, 0] != k.EMPTY) & ((od[:, 2] >> 32) == instrument)
        sides = od[:, 3] >> 56
        prio = od[:, 3] & k._PRIO_MASK
        out = {}
        for side in (Side.BID, Side.ASK):
            sel = np.flatnonzero(live & (sides == side))
            price = od[sel, 1]
            sel = sel[np.lexsort((prio[sel], -price if side == Side.BID else price))]
            levels: list[tuple[int, list[int]]] = []
            for p, oid in zip(od[sel, 1].tolist(), od[sel, 0].astype(np.uint64).tolist()):
                if levels and levels[-1][0] == p:
                    levels[-1][1].append(oid)
                else:
                    levels.append((p, [oid]))
            out[side] = levels
        return out

    def integrity(self) -> dict[str, int]:
        """Integrity problems over all instruments, by name (only nonzero)."""
        totals = self._integrity().sum(axis=0)
        return {name: int(v) for name, v in zip(k.INTEGRITY_NAMES, totals) if v}

    def integrity_by_instrument(self) -> dict[int, dict[str, int]]:
        counts = self._integrity()
        rows = np.flatnonzero(counts.any(axis=1))
        return {int(i): {n: int(v) for n, v in zip(k.INTEGRITY_NAMES, counts[i]) if v} for i in rows}

    def _integrity(self) -> np.ndarray:
        return self.st[:, k.ST_INTEGRITY : k.ST_INTEGRITY + len(k.INTEGRITY_NAMES)]

    def memory_bytes(self) -> int:
        """Bytes held by the order table, level pool and per-instrument arrays."""
        return sum(a.nbytes for a in (self.od, self.lv, self.bk, self.st, self.dirty, self.emitted, self.emitted_n))


_NO_ROWS = {BBO.name: BBO.empty(0), L2.name: L2.empty(0)}  # shared: a zero-length array holds nothing to change


def _zero_padding(rows: np.ndarray) -> None:
    """A new output buffer: the kernel sets every column but not the padding, zeroed once here."""
    if "_reserved" in rows.dtype.names:
        rows["_reserved"] = 0


def _few(n: int, buffer: np.ndarray) -> bool:
    """Whether ``n`` written rows are cheaper to copy out than ``buffer`` is to replace."""
    return 16 * n <= len(buffer)


def _copied(rows: np.ndarray, n: int) -> np.ndarray:
    """A copy of ``rows[:n]``, as bytes: numpy's per-field copy of records with padding costs ~5 us."""
    return rows.view(np.uint8)[: n * rows.dtype.itemsize].copy().view(rows.dtype)


def _joined(record, parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return _NO_ROWS[record.name]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _room_for(rows: int) -> int:
    """Buffer rows for batches of about ``rows`` rows: a quarter more, rounded up to 64k rows."""
    return -(-(rows + rows // 4) // (1 << 16)) << 16


def _pow2(n: int) -> int:
    return 1 << max(4, (int(n) - 1).bit_length())
