"""Row buffers handed out again once nobody holds them.

A batch's output rows go to consumers (Parquet writers, sink queues) that keep them for a while. A
fresh buffer for every batch costs a page fault per 4 KiB of new memory: about a fifth of the book
path's time when each batch's BBO and L2 rows got new buffers. ``BufferPool`` keeps the buffers it
handed out and gives one again when the pool holds the only reference to it: every numpy view keeps
its base alive, so a view still queued, or read by a writer thread, keeps its buffer out of use.
"""
from __future__ import annotations

import sys

import numpy as np


class BufferPool:
    """Structured arrays of one dtype, reused when free.

    Args:
        dtype: the rows' dtype.
        keep: buffers kept for reuse at most (more in use at once are made and let go).
        prepare: called on a new buffer before its first use (e.g. zeroing padding).
    """

    def __init__(self, dtype: np.dtype, keep: int = 8, prepare=None) -> None:
        self.dtype = np.dtype(dtype)
        self.keep = keep
        self.prepare = prepare
        self._buffers: list[np.ndarray] = []
        self.made = 0
        self.reused = 0

    def rows(self, n: int, capacity: int) -> np.ndarray:
        """``n`` rows (a view) of a buffer of ``max(n, capacity)`` rows nobody else holds: for batches
        whose sizes vary up to a usual most. A small request (under 1/16 of ``capacity``: a live
        packet's batch) gets an array of its own instead of pinning a large buffer."""
        if 16 * n < capacity:
            rows = np.empty(n, dtype=self.dtype)
            if self.prepare is not None:
                self.prepare(rows)
            return rows
        return self.take(max(n, capacity))[:n]

    def take(self, n: int) -> np.ndarray:
        """A buffer of ``n`` rows nobody else holds (its contents are left from its last use)."""
        buffers = self._buffers
        for i in range(len(buffers)):
            if len(buffers[i]) == n and _only_held_by_the_pool(buffers, i):
                self.reused += 1
                return buffers[i]
        rows = np.empty(n, dtype=self.dtype)
        if self.prepare is not None:
            self.prepare(rows)
        self.made += 1
        if len(buffers) < self.keep:
            buffers.append(rows)
        else:  # full: a free buffer of another size (requests grew) makes way for this one
            for i in range(len(buffers)):
                if _only_held_by_the_pool(buffers, i):
                    buffers[i] = rows
                    break
        return rows


def _references_in(buffers: list, i: int) -> int:
    return sys.getrefcount(buffers[i])


# What a buffer only the pool's list holds counts, measured the way ``take`` measures (the list's
# reference and the call's own; measured rather than assumed, as interpreters count differently).
_FREE = _references_in([np.empty(1)], 0)


def _only_held_by_the_pool(buffers: list, i: int) -> bool:
    return _references_in(buffers, i) == _FREE
