"""Trades out of enriched book events: executions, non-book trades and crosses with shares.

Generic over venues: it reads only ``schema.EVENT`` rows (after ``order_refs`` filled in execution
prices) plus each row's full wire size, and writes ``schema.TRADE`` rows in one compiled pass.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from parsers import schema
from parsers.schema import Action, Flag

_EXECUTE = np.uint8(Action.EXECUTE)
_TRADE = np.uint8(Action.TRADE)
_CROSS = np.uint8(Action.CROSS)
_NON_PRINTABLE = np.uint16(Flag.NON_PRINTABLE)
# TRADE rows with the one-byte code columns seen as uint8, so the kernel can write them.
_TRADE_CODES = np.dtype({name: (np.uint8 if schema.TRADE.dtype.fields[name][0] == np.dtype("S1") else
                                schema.TRADE.dtype.fields[name][0], schema.TRADE.dtype.fields[name][1])
                         for name in schema.TRADE.dtype.names})


@nb.njit(cache=True, nogil=True)
def _trade_index(action, wide_size):
    """Indexes of the events that are trades (an execute, trade or cross with shares)."""
    idx = np.empty(action.shape[0], dtype=np.int64)
    n = 0
    for i in range(action.shape[0]):
        a = action[i]
        if (a == _EXECUTE or a == _TRADE or a == _CROSS) and wide_size[i] > 0:
            idx[n] = i
            n += 1
    return idx[:n]


@nb.njit(cache=True, nogil=True, _nrt=False)
def _fill_trades(events, wide_size, cross_type, idx, out):
    for j in range(idx.shape[0]):
        e = events[idx[j]]
        t = out[j]
        t.ts_event = e.ts_event
        t.ts_recv = e.ts_recv
        t.price = e.price
        t.size = wide_size[idx[j]]  # crosses keep their full (8-byte) size here
        t.order_id = e.order_id
        t.match_id = e.match_id
        t.sequence = e.sequence
        t.instrument_id = e.instrument_id
        t.venue = e.venue
        t.flags = e.flags
        t.action = e.action
        t.side = e.side
        t.printable = 1 if (e.flags & _NON_PRINTABLE) == 0 else 0
        t.cross_type = cross_type[idx[j]] if e.action == _CROSS else 0


def trades_from_events(events: np.ndarray, wide_size: np.ndarray, cross_type: np.ndarray) -> np.ndarray:
    """``schema.TRADE`` rows for the trades among ``events`` (``cross_type``: a venue code byte per event)."""
    idx = _trade_index(events["action"], wide_size)
    rows = schema.TRADE.empty(len(idx))
    _fill_trades(events, wide_size, cross_type, idx, rows.view(_TRADE_CODES))
    return rows
