"""Open-addressing hash tables in int64 numpy arrays, for numba kernels (orders by id, and the like).

A table is an int64 array [slots, columns]: column 0 holds the key (``EMPTY`` when free), the other
columns whatever the owner keeps there. Linear probing from the key's own low bits (``_home``); deletion shifts the
rest of the probe run back (no tombstones), so a table lives through a day's hundreds of millions of
inserts and deletes without degrading. The number of slots is a power of two; the owner keeps the
load under a limit and grows the table (``rehash`` into one twice the size) between kernel calls.
Allocation-free, so compiled without numba's reference counting.
"""
from __future__ import annotations

import numba as nb
import numpy as np

EMPTY = np.int64(-1)


def new_table(slots: int, columns: int) -> np.ndarray:
    table = np.zeros((slots, columns), dtype=np.int64)
    table[:, 0] = EMPTY
    return table


@nb.njit(cache=True, inline="always", _nrt=False)
def _home(key, mask):
    # The key's own low bits, with its higher bits folded in: the ids feeds and engines hand out rise
    # one by one, so consecutive ids take neighbouring slots. An order is mostly cancelled or executed
    # soon after it was added, while its slot is still in cache; a scrambling hash made nearly every
    # lookup of a day's table a cache miss. The folding spreads ids whose low bits do not vary.
    k = np.uint64(key)
    return np.int64(k ^ (k >> np.uint64(20)) ^ (k >> np.uint64(40))) & mask


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def find(table, key):
    """Slot holding ``key``, or -1."""
    mask = table.shape[0] - 1
    i = _home(key, mask)
    while True:
        k = table[i, 0]
        if k == key:
            return i
        if k == EMPTY:
            return -1
        i = (i + 1) & mask


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def slot_for(table, key):
    """Slot holding ``key``, or the free slot where it goes (the caller fills it)."""
    mask = table.shape[0] - 1
    i = _home(key, mask)
    while table[i, 0] != key and table[i, 0] != EMPTY:
        i = (i + 1) & mask
    return i


@nb.njit(cache=True, nogil=True, _nrt=False)
def remove(table, slot):
    """Free ``slot`` and shift later entries of its probe run back."""
    mask = table.shape[0] - 1
    hole = slot
    i = (slot + 1) & mask
    while table[i, 0] != EMPTY:
        home = _home(table[i, 0], mask)
        if ((i - home) & mask) >= ((i - hole) & mask):  # may move unless its home is in (hole, i]
            for c in range(table.shape[1]):
                table[hole, c] = table[i, c]
            hole = i
        i = (i + 1) & mask
    table[hole, 0] = EMPTY


@nb.njit(cache=True, nogil=True, _nrt=False)
def rehash(old, table):
    """Insert every entry of ``old`` into ``table`` (empty, larger)."""
    for j in range(old.shape[0]):
        if old[j, 0] != EMPTY:
            i = slot_for(table, old[j, 0])
            for c in range(old.shape[1]):
                table[i, c] = old[j, c]
