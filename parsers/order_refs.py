"""Resting orders by reference: an open-addressing hash table in numba arrays, and event enrichment.

Order-based feeds (ITCH, PITCH, ...) name the order but not its price or side on executions, cancels
and deletes. ``enrich_events`` walks normalized events in order, keeps every resting order's price,
side and remaining size, and fills those in, so each event stands on its own. It flags (and counts)
references that are not resting and adds that reuse a live reference, and never stops.

The table is parallel arrays (keys, prices, sizes, sides, instruments) with linear probing and
backward-shift deletion (no tombstones), so it holds a full day's hundreds of millions of references in
turn. Kernels never allocate: ``enrich_events`` stops when the table reaches its load limit and says
where; ``enrich_all`` grows the table and goes on from there. Kernels never allocate, so they are compiled without numba's reference counting (``_nrt=False``).
"""
from __future__ import annotations

import numba as nb
import numpy as np

from parsers.schema import UNDEF_PRICE, Action, Flag, Side

EMPTY_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads sequential references

# Indexes of the anomaly counters kept by ``enrich_events``.
ANOMALY_UNKNOWN_REF = 0
ANOMALY_DUPLICATE_REF = 1
ANOMALY_OVERFILL = 2  # an execution or cancel larger than the remaining size
ANOMALY_NAMES = ("unknown_order_ref", "duplicate_order_ref", "size_below_zero")

_ADD = np.uint8(Action.ADD)
_REPLACE = np.uint8(Action.REPLACE)
_CANCEL = np.uint8(Action.CANCEL)
_DELETE = np.uint8(Action.DELETE)
_EXECUTE = np.uint8(Action.EXECUTE)
_CLEAR = np.uint8(Action.CLEAR)
_SIDE_NONE = np.uint8(Side.NONE)
_FLAG_UNKNOWN_REF = np.uint16(Flag.UNKNOWN_REF)
_FLAG_DUPLICATE_REF = np.uint16(Flag.DUPLICATE_REF)


class OrderRefTable:
    """Resting orders keyed by order reference: price, remaining size, side, instrument."""

    MAX_LOAD = 0.5

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._allocate(_pow2(capacity))
        self.anomalies = np.zeros(len(ANOMALY_NAMES), dtype=np.int64)  # by ``ANOMALY_*``
        self.count = np.zeros(1, dtype=np.int64)  # an array so kernels can update it in place
        self.limit = int(self.capacity * self.MAX_LOAD)  # kernels stop at this many live orders

    def _allocate(self, capacity: int) -> None:
        self.keys = np.full(capacity, EMPTY_KEY, dtype=np.uint64)
        self.price = np.zeros(capacity, dtype=np.int64)
        self.size = np.zeros(capacity, dtype=np.uint32)
        self.side = np.zeros(capacity, dtype=np.uint8)
        self.instrument = np.zeros(capacity, dtype=np.uint32)

    @property
    def capacity(self) -> int:
        return len(self.keys)

    def __len__(self) -> int:
        return int(self.count[0])

    def grow(self) -> None:
        """Double the capacity (rehash): kernels ask for it by stopping at ``limit``."""
        old = (self.keys, self.price, self.size, self.side, self.instrument)
        self._allocate(2 * self.capacity)
        _rehash(*old, self.keys, self.price, self.size, self.side, self.instrument)
        self.limit = int(self.capacity * self.MAX_LOAD)

    def enrich(self, events: np.ndarray) -> None:
        """Fill in a batch of ``schema.EVENT`` rows in place (``enrich_all``); count the anomalies."""
        if len(events):
            enrich_all(self, events, self.anomalies)

    def anomaly_counts(self) -> dict[str, int]:
        return {name: int(n) for name, n in zip(ANOMALY_NAMES, self.anomalies) if n}

    def arrays(self):
        return self.keys, self.price, self.size, self.side, self.instrument, self.count

    def lookup(self, ref: int) -> tuple[int, int, int, int] | None:
        """(price, size, side, instrument) of a resting reference, or None (tests, tools)."""
        slot = _find(self.keys, np.uint64(ref))
        if slot < 0:
            return None
        return int(self.price[slot]), int(self.size[slot]), int(self.side[slot]), int(self.instrument[slot])


def _pow2(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


@nb.njit(cache=True, inline="always", _nrt=False)
def _home(key, mask):
    return np.int64((key * _HASH_MUL) >> np.uint64(20)) & mask


@nb.njit(cache=True, nogil=True, _nrt=False)
def _find(keys, key):
    """Slot of ``key``, or -1."""
    mask = keys.shape[0] - 1
    i = _home(key, mask)
    while True:
        k = keys[i]
        if k == key:
            return i
        if k == EMPTY_KEY:
            return -1
        i = (i + 1) & mask


@nb.njit(cache=True, nogil=True, _nrt=False)
def _insert_slot(keys, key):
    """Slot holding ``key`` or the empty slot where it goes (the caller fills it)."""
    mask = keys.shape[0] - 1
    i = _home(key, mask)
    while keys[i] != key and keys[i] != EMPTY_KEY:
        i = (i + 1) & mask
    return i


@nb.njit(cache=True, nogil=True, _nrt=False)
def _remove(keys, price, size, side, instrument, slot):
    """Empty ``slot`` and shift later entries of its probe run back (no tombstones)."""
    mask = keys.shape[0] - 1
    hole = slot
    i = (slot + 1) & mask
    while keys[i] != EMPTY_KEY:
        home = _home(keys[i], mask)
        # Move entry i into the hole if its home is not in the cyclic range (hole, i].
        if ((i - home) & mask) >= ((i - hole) & mask):
            keys[hole] = keys[i]
            price[hole] = price[i]
            size[hole] = size[i]
            side[hole] = side[i]
            instrument[hole] = instrument[i]
            hole = i
        i = (i + 1) & mask
    keys[hole] = EMPTY_KEY


@nb.njit(cache=True, nogil=True, _nrt=False)
def _rehash(okeys, oprice, osize, oside, oinstrument, keys, price, size, side, instrument):
    for j in range(okeys.shape[0]):
        if okeys[j] != EMPTY_KEY:
            i = _insert_slot(keys, okeys[j])
            keys[i] = okeys[j]
            price[i] = oprice[j]
            size[i] = osize[j]
            side[i] = oside[j]
            instrument[i] = oinstrument[j]


@nb.njit(cache=True, nogil=True, _nrt=False)
def _rest(keys, tprice, tsize, tside, tinstrument, count, anomalies, order_id, price, size, side, instrument):
    """Rest an order (overwriting a live one of the same id); return DUPLICATE_REF if it was live."""
    slot = _insert_slot(keys, order_id)
    flag = np.uint16(0)
    if keys[slot] == order_id:
        flag = _FLAG_DUPLICATE_REF
        anomalies[ANOMALY_DUPLICATE_REF] += 1
    else:
        count[0] += 1
    keys[slot] = order_id
    tprice[slot] = price
    tsize[slot] = size
    tside[slot] = side
    tinstrument[slot] = instrument
    return flag


@nb.njit(cache=True, nogil=True, _nrt=False)
def enrich_events(start, limit, action, order_id, prev_order_id, price, size, side, instrument, flags,
                  keys, tprice, tsize, tside, tinstrument, count, anomalies):
    """Apply events ``start..`` to the table in order and fill in what the venue left out.

    Args:
        start: first event to apply; limit: stop before the table holds more live orders than this.
        action, order_id, prev_order_id, price, size, side, instrument, flags: event columns
            (``parsers.schema.EVENT``); price, size, side and flags are updated in place.
        keys, tprice, tsize, tside, tinstrument, count: the ``OrderRefTable`` arrays.
        anomalies: int64 counters, indexed by the ``ANOMALY_*`` constants.

    Returns:
        the first event not applied: ``len(action)`` when done, earlier when the table is full.
    """
    for i in range(start, action.shape[0]):
        if count[0] >= limit:
            return i
        a = action[i]
        if a == _ADD:
            flags[i] |= _rest(keys, tprice, tsize, tside, tinstrument, count, anomalies, order_id[i], price[i], size[i],
                              side[i], instrument[i])
        elif a == _EXECUTE or a == _CANCEL or a == _DELETE:
            slot = _find(keys, order_id[i])
            if slot < 0:
                flags[i] |= _FLAG_UNKNOWN_REF
                anomalies[ANOMALY_UNKNOWN_REF] += 1
                continue
            side[i] = tside[slot]
            if price[i] == UNDEF_PRICE:
                price[i] = tprice[slot]
            if a == _DELETE:
                size[i] = tsize[slot]
                remaining = np.uint32(0)
            elif size[i] > tsize[slot]:
                anomalies[ANOMALY_OVERFILL] += 1
                remaining = np.uint32(0)
            else:
                remaining = tsize[slot] - size[i]
            if remaining == 0:
                _remove(keys, tprice, tsize, tside, tinstrument, slot)
                count[0] -= 1
            else:
                tsize[slot] = remaining
        elif a == _REPLACE:
            slot = _find(keys, prev_order_id[i])
            if slot < 0:
                flags[i] |= _FLAG_UNKNOWN_REF
                anomalies[ANOMALY_UNKNOWN_REF] += 1
                side[i] = _SIDE_NONE
            else:
                side[i] = tside[slot]
                _remove(keys, tprice, tsize, tside, tinstrument, slot)
                count[0] -= 1
            flags[i] |= _rest(keys, tprice, tsize, tside, tinstrument, count, anomalies, order_id[i], price[i], size[i],
                              side[i], instrument[i])
        elif a == _CLEAR:
            j = 0
            while j < keys.shape[0]:
                if keys[j] != EMPTY_KEY and tinstrument[j] == instrument[i]:
                    _remove(keys, tprice, tsize, tside, tinstrument, j)
                    count[0] -= 1
                    continue  # an entry may have shifted into slot j
                j += 1
    return action.shape[0]


def enrich_all(table: OrderRefTable, events: np.ndarray, anomalies: np.ndarray) -> None:
    """Enrich a whole ``schema.EVENT`` array in place, growing the table as it fills."""
    columns = [events[name] for name in ("action", "order_id", "prev_order_id", "price", "size", "side",
                                         "instrument_id", "flags")]
    i = 0
    while True:
        i = enrich_events(i, table.limit, *columns, *table.arrays(), anomalies)
        if i == len(events):
            return
        table.grow()
