"""Internal crossing: a continuous price-time priority book per instrument of users' orders.

``MatchingEngine.submit(commands)`` runs a batch of ``trading.orders.COMMAND`` rows through the numba
kernel ``match_commands`` and returns the ``ORDER_EVENT`` rows it produced, in order.

State lives in a few flat int64 arrays (the style of ``orderbook.kernel``):

- ``op`` [slot, OP_COLUMNS]: the order pool, one row per live order (``O_*`` columns); free rows are
  chained through ``O_NEXT`` from ``scalars[S_FREE]``. Rows never move, so queues link them by index.
- ``ht`` [slot, 2]: order id -> pool row, open addressing (linear probing, backward-shift deletion).
- ``lv`` [slot, LV_COLUMNS]: price levels (sort key, price, total open qty, order count, queue head,
  queue tail); each (instrument, side) owns a run of ``lv`` sorted with the best level last (bids
  keyed by price, asks by -price), so matching and joining the best level touch only the run's end.
  A level's orders are a FIFO list through ``O_NEXT`` / ``O_PREV``: time priority.
- ``ins`` [instrument, INS_COLUMNS]: the two runs (start, length, capacity), the held stop orders (a
  list in acceptance order), resting and held counts, last trade price.

Rules the kernel keeps:
- it never allocates, does no I/O and reads no clock (time comes in on the commands);
- before a command changes anything it checks the worst case fits (a free pool row, the hash table
  under its load limit, room in both level runs of the instrument, output rows for a sweep of every
  resting order and every stop cascade) and otherwise returns a ``NEED_*`` code; Python grows that
  array and calls again from the same command.

Matching rules (``tests/trading/reference_matching.py`` states them in plain Python):
- an incoming order trades with the best opposite level while it crosses, oldest order first, at the
  resting order's price; MARKET has no limit. FOK first checks the crossing quantity covers it all.
- after trading, LIMIT DAY/GTC rests at the tail of its level; IOC and FOK remainders, and whatever a
  MARKET order (any tif) could not fill, are cancelled.
- MODIFY keeps time priority only for a size decrease at the same price; otherwise the order leaves
  its queue and re-enters as an incoming order (it may trade) at the tail.
- STOP / STOP_LIMIT are held (ACK) until a trade at or through the stop price after their acceptance:
  buy stops when a trade prints >= stop, sell stops <= stop. A command's trades (and a TRIGGER's
  price) span [lo, hi]; then, repeatedly, the oldest held stop of the instrument that the span
  triggers enters (TRIGGERED) as a MARKET or LIMIT order with its tif, and its trades widen the span.
- SWEEP (a print elsewhere, e.g. the feed's): resting orders priced strictly through it, except one
  account's (``trading.market``'s mirror of the feed's own liquidity), fill entirely at their own
  price against counterparty 0, best level first, oldest first; then stops trigger as for TRIGGER.
- events of a trade: the taker's FILL, then the maker's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba as nb
import numpy as np

from parsers import hashtable
from parsers.hashtable import EMPTY

from parsers.schema import UNDEF_PRICE
from trading.orders import (
    NO_INSTRUMENT,
    ORDER_EVENT,
    CommandKind,
    EventKind,
    Liquidity,
    OrderSide,
    OrderType,
    Reason,
    TimeInForce,
    copy_rows,
)

# Return codes of ``match_commands`` (with the index of the next command to run).
DONE = 0
NEED_ORDERS = 1  # grow the order pool and hash table
NEED_POOL = 2  # grow the level pool
NEED_BOOKS = 3  # an instrument id beyond ``ins``
NEED_OUTPUT = 4  # output rows: take them, and give at least ``scalars[S_NEED_ROWS]`` fresh ones


# Order pool columns.
O_ID, O_PRICE, O_LEAVES, O_INST, O_SIDE, O_TYPE, O_TIF, O_ACCOUNT, O_STOP, O_NEXT, O_PREV, O_STATE = range(12)
OP_COLUMNS = 12
FREE, RESTING, HELD, ACTIVE = 0, 1, 2, 3  # O_STATE: ACTIVE = being matched (incoming, not yet resting)

# Level columns.
L_KEY, L_PRICE, L_QTY, L_COUNT, L_HEAD, L_TAIL = range(6)
LV_COLUMNS = 6

# Instrument columns: bid run (start, length, capacity), ask run, stop list, counts, last trade.
I_BID = 0
I_ASK = 3
I_STOP_HEAD, I_STOP_TAIL, I_STOPS, I_RESTING, I_LAST = 6, 7, 8, 9, 10
INS_COLUMNS = 11

# Slots of ``scalars``.
S_ORDERS = 0  # live orders (resting + held)
S_ORDER_LIMIT = 1  # hash table load limit
S_FREE = 2  # head of the free pool rows (-1: none)
S_POOL_USED = 3  # level pool rows handed out
S_ROWS = 4  # output rows written
S_NEED_ROWS = 5  # NEED_OUTPUT: rows the next command may write
S_LO = 6  # trade price span of the current command
S_HI = 7
S_MAX_INST = 8  # instrument ids at or above this are rejected (UNKNOWN_SYMBOL), not grown to
SCALARS = 9

FIRST_RUN = 8  # level rows given to a book side at its first level

_UNDEF = np.int64(UNDEF_PRICE)
_MIN = np.int64(-(2**63))
_NEW, _CANCEL, _MODIFY, _TRIGGER, _SESSION_END, _SWEEP = (np.uint8(k) for k in CommandKind)
_BUY, _SELL, _SHORT = (np.int64(s) for s in OrderSide)
_MARKET, _LIMIT, _STOP, _STOP_LIMIT = (np.int64(t) for t in OrderType)
_DAY, _GTC, _IOC, _FOK = (np.int64(t) for t in TimeInForce)
_ACK, _REJECT, _FILL, _CANCELLED, _MODIFIED, _EXPIRED, _TRIGGERED = (np.uint8(e) for e in EventKind)
_MAKER = np.uint8(Liquidity.MAKER)
_TAKER = np.uint8(Liquidity.TAKER)
_NOL = np.uint8(Liquidity.NONE)
_R_NONE = np.uint8(Reason.NONE)
_R_UNKNOWN = np.uint8(Reason.UNKNOWN_ORDER)
_R_DUP = np.uint8(Reason.DUPLICATE_ORDER_ID)
_R_INVALID = np.uint8(Reason.INVALID_ORDER)
_R_QTY = np.uint8(Reason.BAD_QTY)
_R_PRICE = np.uint8(Reason.BAD_PRICE)
_R_SYMBOL = np.uint8(Reason.UNKNOWN_SYMBOL)
_R_USER = np.uint8(Reason.USER_CANCEL)
_R_IOC = np.uint8(Reason.IOC_REMAINDER)
_R_FOK = np.uint8(Reason.FOK_UNFILLED)
_R_NOLIQ = np.uint8(Reason.NO_LIQUIDITY)
_R_SESSION = np.uint8(Reason.SESSION_END)
_NO_INST = np.int64(NO_INSTRUMENT)


# -- order id -> pool row -----------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def ht_find(ht, key):
    """Pool row of order ``key``, or -1 (``ht`` is an ``parsers.hashtable`` table: key, row)."""
    slot = hashtable.find(ht, key)
    return ht[slot, 1] if slot >= 0 else np.int64(-1)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _ht_insert(ht, key, row):
    slot = hashtable.slot_for(ht, key)
    ht[slot, 0] = key
    ht[slot, 1] = row


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _ht_remove(ht, key):
    """Remove ``key`` (present)."""
    hashtable.remove(ht, hashtable.find(ht, key))


rehash = hashtable.rehash


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _free_order(op, ht, scalars, row):
    _ht_remove(ht, op[row, O_ID])
    op[row, O_STATE] = FREE
    op[row, O_NEXT] = scalars[S_FREE]
    scalars[S_FREE] = row
    scalars[S_ORDERS] -= 1


# -- price levels -------------------------------------------------------------------------------


@nb.njit(cache=True, inline="always", _nrt=False)
def _run_col(side):
    """``ins`` column of the run an order of ``side`` rests in."""
    return I_BID if side == _BUY else I_ASK


@nb.njit(cache=True, inline="always", _nrt=False)
def _key(rc, price):
    return price if rc == I_BID else -price


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _level_pos(lv, start, n, key):
    """Lower bound of ``key`` in the sorted run ``lv[start:start+n, L_KEY]`` (absolute index)."""
    lo = start
    hi = start + n
    if n > 0 and lv[hi - 1, L_KEY] < key:  # beyond the best level: look there first
        return hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if lv[mid, L_KEY] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _level_find(lv, ins, inst, rc, price):
    """Row of the level at ``price`` in run ``rc`` of ``inst`` (it exists)."""
    key = _key(rc, price)
    start = ins[inst, rc]
    n = ins[inst, rc + 1]
    if lv[start + n - 1, L_KEY] == key:
        return start + n - 1
    return _level_pos(lv, start, n, key)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _level_join(lv, ins, inst, rc, price):
    """Row of the level at ``price``, inserted empty if absent (room checked before the command)."""
    key = _key(rc, price)
    start = ins[inst, rc]
    n = ins[inst, rc + 1]
    pos = _level_pos(lv, start, n, key)
    if pos < start + n and lv[pos, L_KEY] == key:
        return pos
    for k in range(start + n, pos, -1):
        for c in range(LV_COLUMNS):
            lv[k, c] = lv[k - 1, c]
    lv[pos, L_KEY] = key
    lv[pos, L_PRICE] = price
    lv[pos, L_QTY] = 0
    lv[pos, L_COUNT] = 0
    lv[pos, L_HEAD] = -1
    lv[pos, L_TAIL] = -1
    ins[inst, rc + 1] = n + 1
    return pos


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _level_drop(lv, ins, inst, rc, pos):
    """Remove the (empty) level at row ``pos``."""
    end = ins[inst, rc] + ins[inst, rc + 1] - 1
    for k in range(pos, end):
        for c in range(LV_COLUMNS):
            lv[k, c] = lv[k + 1, c]
    ins[inst, rc + 1] -= 1


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _room(lv, ins, scalars, inst, rc, extra):
    """Make run ``rc`` of ``inst`` hold ``extra`` more levels (moving it to the pool's end); False if full."""
    n = ins[inst, rc + 1]
    cap = ins[inst, rc + 2]
    if n + extra <= cap:
        return True
    new_cap = FIRST_RUN if cap == 0 else 2 * cap
    while new_cap < n + extra:
        new_cap *= 2
    used = scalars[S_POOL_USED]
    if used + new_cap > lv.shape[0]:
        return False
    old = ins[inst, rc]
    for k in range(n):
        for c in range(LV_COLUMNS):
            lv[used + k, c] = lv[old + k, c]
    ins[inst, rc] = used
    ins[inst, rc + 2] = new_cap
    scalars[S_POOL_USED] = used + new_cap
    return True


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _unlink(lv, op, pos, row):
    """Take order ``row`` out of the queue of level ``pos`` (its quantity and count too)."""
    prv = op[row, O_PREV]
    nxt = op[row, O_NEXT]
    if prv >= 0:
        op[prv, O_NEXT] = nxt
    else:
        lv[pos, L_HEAD] = nxt
    if nxt >= 0:
        op[nxt, O_PREV] = prv
    else:
        lv[pos, L_TAIL] = prv
    lv[pos, L_QTY] -= op[row, O_LEAVES]
    lv[pos, L_COUNT] -= 1


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _stop_unlink(op, ins, inst, row):
    prv = op[row, O_PREV]
    nxt = op[row, O_NEXT]
    if prv >= 0:
        op[prv, O_NEXT] = nxt
    else:
        ins[inst, I_STOP_HEAD] = nxt
    if nxt >= 0:
        op[nxt, O_PREV] = prv
    else:
        ins[inst, I_STOP_TAIL] = prv
    ins[inst, I_STOPS] -= 1


# -- events -------------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _emit(out, scalars, ts, kind, oid, cp, price, qty, leaves, account, inst, side, liq, reason):
    r = out[scalars[S_ROWS]]
    r.ts = ts
    r.order_id = oid
    r.counterparty_id = cp
    r.price = price
    r.qty = qty
    r.leaves = leaves
    r.account = account
    r.instrument_id = inst
    r.kind = kind
    r.side = side
    r.liquidity = liq
    r.reason = reason
    scalars[S_ROWS] += 1


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _emit_order(out, scalars, op, row, ts, kind, price, qty, leaves, reason):
    """An event about order ``row`` that is not a fill."""
    _emit(out, scalars, ts, kind, op[row, O_ID], 0, price, qty, leaves, op[row, O_ACCOUNT], op[row, O_INST],
          op[row, O_SIDE], _NOL, reason)


# -- matching -----------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _crosses(is_buy, limit, price):
    if limit == _UNDEF:
        return True
    return price <= limit if is_buy else price >= limit


@nb.njit(cache=True, nogil=True, _nrt=False)
def _take(op, ht, lv, ins, out, scalars, row, ts):
    """Order ``row`` (ACTIVE, in the hash table) trades against the opposite side, then rests or leaves."""
    inst = op[row, O_INST]
    is_buy = op[row, O_SIDE] == _BUY
    limit = op[row, O_PRICE]
    tif = op[row, O_TIF]
    orc = I_ASK if is_buy else I_BID
    q = op[row, O_LEAVES]
    if tif == _FOK:
        avail = np.int64(0)
        start = ins[inst, orc]
        pos = start + ins[inst, orc + 1] - 1
        while pos >= start and avail < q and _crosses(is_buy, limit, lv[pos, L_PRICE]):
            avail += lv[pos, L_QTY]
            pos -= 1
        if avail < q:
            _emit_order(out, scalars, op, row, ts, _CANCELLED, limit, q, 0, _R_FOK)
            _free_order(op, ht, scalars, row)
            return
    taker_id = op[row, O_ID]
    taker_acct = op[row, O_ACCOUNT]
    taker_side = op[row, O_SIDE]
    while q > 0:
        n = ins[inst, orc + 1]
        if n == 0:
            break
        pos = ins[inst, orc] + n - 1
        price = lv[pos, L_PRICE]
        if not _crosses(is_buy, limit, price):
            break
        m = lv[pos, L_HEAD]
        while q > 0 and m >= 0:
            f = min(q, op[m, O_LEAVES])
            q -= f
            op[m, O_LEAVES] -= f
            lv[pos, L_QTY] -= f
            _emit(out, scalars, ts, _FILL, taker_id, op[m, O_ID], price, f, q, taker_acct, inst, taker_side, _TAKER,
                  _R_NONE)
            _emit(out, scalars, ts, _FILL, op[m, O_ID], taker_id, price, f, op[m, O_LEAVES], op[m, O_ACCOUNT], inst,
                  op[m, O_SIDE], _MAKER, _R_NONE)
            nxt = op[m, O_NEXT]
            if op[m, O_LEAVES] == 0:  # the head leaves its queue
                lv[pos, L_HEAD] = nxt
                if nxt >= 0:
                    op[nxt, O_PREV] = -1
                else:
                    lv[pos, L_TAIL] = -1
                lv[pos, L_COUNT] -= 1
                ins[inst, I_RESTING] -= 1
                _free_order(op, ht, scalars, m)
            m = nxt
        if scalars[S_LO] > price:
            scalars[S_LO] = price
        if scalars[S_HI] < price:
            scalars[S_HI] = price
        ins[inst, I_LAST] = price
        if lv[pos, L_COUNT] == 0:
            ins[inst, orc + 1] = n - 1  # the best level is the run's last row
    op[row, O_LEAVES] = q
    if q == 0:
        _free_order(op, ht, scalars, row)
    elif limit == _UNDEF:
        _emit_order(out, scalars, op, row, ts, _CANCELLED, limit, q, 0, _R_NOLIQ)
        _free_order(op, ht, scalars, row)
    elif tif == _IOC or tif == _FOK:
        _emit_order(out, scalars, op, row, ts, _CANCELLED, limit, q, 0, _R_IOC)
        _free_order(op, ht, scalars, row)
    else:
        rc = I_BID if is_buy else I_ASK
        pos = _level_join(lv, ins, inst, rc, limit)
        tail = lv[pos, L_TAIL]
        op[row, O_PREV] = tail
        op[row, O_NEXT] = -1
        if tail >= 0:
            op[tail, O_NEXT] = row
        else:
            lv[pos, L_HEAD] = row
        lv[pos, L_TAIL] = row
        lv[pos, L_QTY] += q
        lv[pos, L_COUNT] += 1
        op[row, O_STATE] = RESTING
        ins[inst, I_RESTING] += 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def _run_stops(op, ht, lv, ins, out, scalars, inst, ts):
    """Enter, oldest first, every held stop of ``inst`` the trade span [S_LO, S_HI] triggers."""
    while ins[inst, I_STOPS] > 0 and scalars[S_HI] != _MIN:
        row = ins[inst, I_STOP_HEAD]
        while row >= 0:
            stop = op[row, O_STOP]
            if (scalars[S_HI] >= stop) if op[row, O_SIDE] == _BUY else (scalars[S_LO] <= stop):
                break
            row = op[row, O_NEXT]
        if row < 0:
            return
        _stop_unlink(op, ins, inst, row)
        op[row, O_STATE] = ACTIVE
        _emit_order(out, scalars, op, row, ts, _TRIGGERED, op[row, O_STOP], op[row, O_LEAVES], op[row, O_LEAVES],
                    _R_NONE)
        _take(op, ht, lv, ins, out, scalars, row, ts)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _expire_day(op, ht, lv, ins, out, scalars, inst, ts):
    """SESSION_END: DAY orders of ``inst`` leave (bids best first, then asks, then held stops)."""
    for rc in (I_BID, I_ASK):
        start = ins[inst, rc]
        n = ins[inst, rc + 1]
        keep = start + n  # levels kept are packed down towards the best end
        for pos in range(start + n - 1, start - 1, -1):
            row = lv[pos, L_HEAD]
            while row >= 0:
                nxt = op[row, O_NEXT]
                if op[row, O_TIF] == _DAY:
                    _emit_order(out, scalars, op, row, ts, _EXPIRED, op[row, O_PRICE], op[row, O_LEAVES], 0,
                                _R_SESSION)
                    _unlink(lv, op, pos, row)
                    ins[inst, I_RESTING] -= 1
                    _free_order(op, ht, scalars, row)
                row = nxt
            if lv[pos, L_COUNT] > 0:
                keep -= 1
                if keep != pos:
                    for c in range(LV_COLUMNS):
                        lv[keep, c] = lv[pos, c]
        kept = start + n - keep
        if kept > 0 and keep != start:
            for k in range(kept):
                for c in range(LV_COLUMNS):
                    lv[start + k, c] = lv[keep + k, c]
        ins[inst, rc + 1] = kept
    row = ins[inst, I_STOP_HEAD]
    while row >= 0:
        nxt = op[row, O_NEXT]
        if op[row, O_TIF] == _DAY:
            _emit_order(out, scalars, op, row, ts, _EXPIRED, op[row, O_PRICE], op[row, O_LEAVES], 0, _R_SESSION)
            _stop_unlink(op, ins, inst, row)
            _free_order(op, ht, scalars, row)
        row = nxt


@nb.njit(cache=True, nogil=True, _nrt=False)
def _sweep(op, ht, lv, ins, out, scalars, inst, price, exempt, ts):
    """SWEEP: orders of ``inst`` priced strictly through ``price`` fill entirely, but ``exempt``'s."""
    for rc in (I_BID, I_ASK):
        start = ins[inst, rc]
        pos = start + ins[inst, rc + 1] - 1
        while pos >= start and (lv[pos, L_PRICE] > price if rc == I_BID else lv[pos, L_PRICE] < price):
            row = lv[pos, L_HEAD]
            while row >= 0:
                nxt = op[row, O_NEXT]
                if op[row, O_ACCOUNT] != exempt:
                    _emit(out, scalars, ts, _FILL, op[row, O_ID], 0, lv[pos, L_PRICE], op[row, O_LEAVES], 0,
                          op[row, O_ACCOUNT], inst, op[row, O_SIDE], _MAKER, _R_NONE)
                    _unlink(lv, op, pos, row)
                    ins[inst, I_RESTING] -= 1
                    _free_order(op, ht, scalars, row)
                row = nxt
            if lv[pos, L_COUNT] == 0:
                _level_drop(lv, ins, inst, rc, pos)  # better levels (done) shift down; pos - 1 stays put
            pos -= 1
    ins[inst, I_LAST] = price


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _reject(out, scalars, cmd, reason):
    _emit(out, scalars, cmd.ts, _REJECT, cmd.order_id, 0, cmd.price, cmd.qty, 0, cmd.account, cmd.instrument_id,
          cmd.side, _NOL, reason)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _reject_amend(out, scalars, cmd, reason, op, row):
    """A refused CANCEL or MODIFY: it names an order, not an instrument (its instrument_id and side
    columns are unused), so the event tells the order's if the matcher holds it (``row`` >= 0)."""
    inst = op[row, O_INST] if row >= 0 else _NO_INST
    side = op[row, O_SIDE] if row >= 0 else np.int64(0)
    _emit(out, scalars, cmd.ts, _REJECT, cmd.order_id, 0, cmd.price, cmd.qty, 0, cmd.account, inst, side, _NOL,
          reason)


@nb.njit(cache=True, nogil=True, _nrt=False)
def match_commands(start, commands, op, ht, lv, ins, out, scalars):
    """Run ``commands[start:]``; return (code, index of the next command to run).

    Args:
        commands: ``trading.orders.COMMAND`` rows in arrival order.
        op, ht, lv, ins: order pool, id hash table, level pool, per-instrument state (module docstring).
        out: ``trading.orders.ORDER_EVENT`` rows; ``scalars[S_ROWS]`` of them are written.
        scalars: int64 state, see ``S_*``.

    Returns:
        (DONE, len(commands)) or (NEED_*, index of the command that did not fit: nothing of it done).
    """
    n_inst = ins.shape[0]
    for i in range(start, commands.shape[0]):
        cmd = commands[i]
        kind = cmd.kind
        ts = cmd.ts
        oid = np.int64(cmd.order_id)
        # Which instrument, and the worst case of what the command may need, before anything changes.
        row = np.int64(-1)
        if kind == _CANCEL or kind == _MODIFY:
            row = ht_find(ht, oid) if oid > 0 else np.int64(-1)
            if row >= 0 and op[row, O_ACCOUNT] != np.int64(cmd.account):
                row = -1  # not the account's order: as unknown
            inst = op[row, O_INST] if row >= 0 else np.int64(-1)
        else:
            inst = np.int64(cmd.instrument_id)
            if kind == _NEW or kind == _TRIGGER or kind == _SESSION_END or kind == _SWEEP:
                if inst >= scalars[S_MAX_INST]:
                    if scalars[S_ROWS] >= out.shape[0]:
                        scalars[S_NEED_ROWS] = 1
                        return NEED_OUTPUT, i
                    _reject(out, scalars, cmd, _R_SYMBOL)
                    continue
                if inst >= n_inst:
                    return NEED_BOOKS, i
        if inst >= 0:
            stops = ins[inst, I_STOPS]
            need = 2 * (ins[inst, I_RESTING] + 2 * stops + 1) + 3 * (stops + 1) + 2
            if not (_room(lv, ins, scalars, inst, I_BID, 1 + stops) and _room(lv, ins, scalars, inst, I_ASK, 1 + stops)):
                return NEED_POOL, i
        else:
            need = 1
        if scalars[S_ROWS] + need > out.shape[0]:
            scalars[S_NEED_ROWS] = need
            return NEED_OUTPUT, i
        scalars[S_LO] = _UNDEF
        scalars[S_HI] = _MIN

        if kind == _NEW:
            side = np.int64(cmd.side)
            typ = np.int64(cmd.order_type)
            tif = np.int64(cmd.tif)
            qty = np.int64(cmd.qty)
            price = cmd.price
            stop = cmd.stop_price
            if (oid <= 0 or side < _BUY or side > _SHORT or typ < _MARKET or typ > _STOP_LIMIT or tif < _DAY
                    or tif > _FOK):
                _reject(out, scalars, cmd, _R_INVALID)
                continue
            if qty == 0:
                _reject(out, scalars, cmd, _R_QTY)
                continue
            if typ == _LIMIT or typ == _STOP_LIMIT:
                if price == _UNDEF or price <= 0:
                    _reject(out, scalars, cmd, _R_PRICE)
                    continue
            else:
                price = _UNDEF
            if typ == _STOP or typ == _STOP_LIMIT:
                if stop == _UNDEF or stop <= 0:
                    _reject(out, scalars, cmd, _R_PRICE)
                    continue
            else:
                stop = _UNDEF
            if ht_find(ht, oid) >= 0:
                _reject(out, scalars, cmd, _R_DUP)
                continue
            if scalars[S_FREE] < 0 or scalars[S_ORDERS] >= scalars[S_ORDER_LIMIT]:
                return NEED_ORDERS, i
            row = scalars[S_FREE]
            scalars[S_FREE] = op[row, O_NEXT]
            scalars[S_ORDERS] += 1
            _ht_insert(ht, oid, row)
            op[row, O_ID] = oid
            op[row, O_PRICE] = price
            op[row, O_LEAVES] = qty
            op[row, O_INST] = inst
            op[row, O_SIDE] = side
            op[row, O_TYPE] = typ
            op[row, O_TIF] = tif
            op[row, O_ACCOUNT] = np.int64(cmd.account)
            op[row, O_STOP] = stop
            _emit_order(out, scalars, op, row, ts, _ACK, price, qty, qty, _R_NONE)
            if typ == _STOP or typ == _STOP_LIMIT:
                op[row, O_STATE] = HELD
                tail = ins[inst, I_STOP_TAIL]
                op[row, O_PREV] = tail
                op[row, O_NEXT] = -1
                if tail >= 0:
                    op[tail, O_NEXT] = row
                else:
                    ins[inst, I_STOP_HEAD] = row
                ins[inst, I_STOP_TAIL] = row
                ins[inst, I_STOPS] += 1
                continue
            op[row, O_STATE] = ACTIVE
            _take(op, ht, lv, ins, out, scalars, row, ts)
            _run_stops(op, ht, lv, ins, out, scalars, inst, ts)
        elif kind == _CANCEL:
            if row < 0:
                _reject_amend(out, scalars, cmd, _R_UNKNOWN, op, row)
                continue
            leaves = op[row, O_LEAVES]
            if op[row, O_STATE] == HELD:
                _stop_unlink(op, ins, inst, row)
            else:
                rc = _run_col(op[row, O_SIDE])
                pos = _level_find(lv, ins, inst, rc, op[row, O_PRICE])
                _unlink(lv, op, pos, row)
                if lv[pos, L_COUNT] == 0:
                    _level_drop(lv, ins, inst, rc, pos)
                ins[inst, I_RESTING] -= 1
            _emit_order(out, scalars, op, row, ts, _CANCELLED, op[row, O_PRICE], leaves, 0, _R_USER)
            _free_order(op, ht, scalars, row)
        elif kind == _MODIFY:
            if row < 0:
                _reject_amend(out, scalars, cmd, _R_UNKNOWN, op, row)
                continue
            price = op[row, O_PRICE]
            leaves = op[row, O_LEAVES]
            new_price = cmd.price
            if new_price != _UNDEF and new_price <= 0:
                _reject_amend(out, scalars, cmd, _R_PRICE, op, row)
                continue
            if new_price == _UNDEF or op[row, O_TYPE] == _STOP:
                new_price = price
            new_qty = np.int64(cmd.qty) if cmd.qty > 0 else leaves
            if op[row, O_STATE] == HELD:
                if cmd.stop_price != _UNDEF:
                    if cmd.stop_price <= 0:
                        _reject_amend(out, scalars, cmd, _R_PRICE, op, row)
                        continue
                    op[row, O_STOP] = cmd.stop_price
                op[row, O_PRICE] = new_price
                op[row, O_LEAVES] = new_qty
                _emit_order(out, scalars, op, row, ts, _MODIFIED, new_price, new_qty, new_qty, _R_NONE)
                continue
            rc = _run_col(op[row, O_SIDE])
            pos = _level_find(lv, ins, inst, rc, price)
            if new_price == price and new_qty <= leaves:  # a size decrease keeps its place
                lv[pos, L_QTY] -= leaves - new_qty
                op[row, O_LEAVES] = new_qty
                _emit_order(out, scalars, op, row, ts, _MODIFIED, new_price, new_qty, new_qty, _R_NONE)
                continue
            _unlink(lv, op, pos, row)
            if lv[pos, L_COUNT] == 0:
                _level_drop(lv, ins, inst, rc, pos)
            ins[inst, I_RESTING] -= 1
            op[row, O_PRICE] = new_price
            op[row, O_LEAVES] = new_qty
            op[row, O_STATE] = ACTIVE
            _emit_order(out, scalars, op, row, ts, _MODIFIED, new_price, new_qty, new_qty, _R_NONE)
            _take(op, ht, lv, ins, out, scalars, row, ts)
            _run_stops(op, ht, lv, ins, out, scalars, inst, ts)
        elif kind == _TRIGGER:
            if cmd.price == _UNDEF or cmd.price <= 0:
                _reject(out, scalars, cmd, _R_PRICE)
                continue
            scalars[S_LO] = cmd.price
            scalars[S_HI] = cmd.price
            _run_stops(op, ht, lv, ins, out, scalars, inst, ts)
        elif kind == _SESSION_END:
            _expire_day(op, ht, lv, ins, out, scalars, inst, ts)
        elif kind == _SWEEP:
            if cmd.price == _UNDEF or cmd.price <= 0:
                _reject(out, scalars, cmd, _R_PRICE)
                continue
            _sweep(op, ht, lv, ins, out, scalars, inst, cmd.price, np.int64(cmd.account), ts)
            scalars[S_LO] = cmd.price
            scalars[S_HI] = cmd.price
            _run_stops(op, ht, lv, ins, out, scalars, inst, ts)
        else:
            _reject(out, scalars, cmd, _R_INVALID)
    return DONE, commands.shape[0]


@nb.njit(cache=True, nogil=True, _nrt=False)
def dump_orders(op, lv, ins, out):
    """Every live order in a canonical order, one row each, into ``out`` [orders, 10]; returns rows written.

    Per instrument: bids best first, asks best first (each level's queue in time priority), then held
    stops in trigger priority. Row: instrument, place (0 bid, 1 ask, 2 held), order id, price, leaves,
    account, side, type, tif, stop price. Two books that dump equal rows hold the same orders in the
    same priority (the rows' pool positions, which depend on history, are left out).
    """
    n = 0
    for inst in range(ins.shape[0]):
        start = np.int64(0)
        count = np.int64(0)
        for place in range(3):
            if place < 2:
                rc = I_BID if place == 0 else I_ASK
                start = ins[inst, rc]
                count = ins[inst, rc + 1]
                levels = count
            else:
                levels = 1
            for j in range(levels):
                row = lv[start + count - 1 - j, L_HEAD] if place < 2 else ins[inst, I_STOP_HEAD]
                while row >= 0:
                    o = out[n]
                    o[0] = inst
                    o[1] = place
                    o[2] = op[row, O_ID]
                    o[3] = op[row, O_PRICE]
                    o[4] = op[row, O_LEAVES]
                    o[5] = op[row, O_ACCOUNT]
                    o[6] = op[row, O_SIDE]
                    o[7] = op[row, O_TYPE]
                    o[8] = op[row, O_TIF]
                    o[9] = op[row, O_STOP]
                    n += 1
                    row = op[row, O_NEXT]
    return n


# -- Python side --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BookSnapshot:
    """One instrument's book: levels best first, each (price, [(order id, leaves, account), ...]) in
    time priority; held stops in trigger priority as (order id, side, type, tif, stop, price, leaves)."""

    bids: list
    asks: list
    stops: list


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


_NO_EVENTS = ORDER_EVENT.empty(0)
_NO_EVENTS.flags.writeable = False


class MatchingEngine:
    """The internal crossing book of every instrument; ``submit`` commands, get events.

    Args:
        instruments, orders, levels, out_rows: starting sizes (everything grows on demand).
        max_instruments: commands naming an instrument id at or above it are rejected with
            ``Reason.UNKNOWN_SYMBOL`` (per-instrument state is direct-indexed by id).
    """

    def __init__(self, instruments: int = 64, orders: int = 1 << 12, levels: int = 1 << 12,
                 out_rows: int = 1 << 12, max_instruments: int = 1 << 20) -> None:
        self.scalars = np.zeros(SCALARS, dtype=np.int64)
        self.scalars[S_MAX_INST] = max_instruments
        self.scalars[S_FREE] = -1
        self.op = np.zeros((0, OP_COLUMNS), dtype=np.int64)
        self._grow_pool_rows(_pow2(orders))
        self.ht = np.full((2 * len(self.op), 2), EMPTY, dtype=np.int64)
        self.scalars[S_ORDER_LIMIT] = len(self.op)
        self.lv = np.zeros((levels, LV_COLUMNS), dtype=np.int64)
        self.ins = self._new_ins(instruments)
        self.out = np.zeros(out_rows, dtype=ORDER_EVENT.dtype)

    @staticmethod
    def _new_ins(n: int) -> np.ndarray:
        ins = np.zeros((n, INS_COLUMNS), dtype=np.int64)
        ins[:, I_STOP_HEAD] = -1
        ins[:, I_STOP_TAIL] = -1
        ins[:, I_LAST] = UNDEF_PRICE
        return ins

    # -- growth -----------------------------------------------------------------------------------

    def _grow_pool_rows(self, new_len: int) -> None:
        """Order pool of ``new_len`` rows; the new rows join the free list (rows keep their index)."""
        old = len(self.op)
        op = np.zeros((new_len, OP_COLUMNS), dtype=np.int64)
        op[:old] = self.op
        op[old:, O_NEXT] = np.arange(old + 1, new_len + 1)
        op[new_len - 1, O_NEXT] = self.scalars[S_FREE]
        self.scalars[S_FREE] = old
        self.op = op

    def _grow_orders(self) -> None:
        self._grow_pool_rows(2 * len(self.op))
        old = self.ht
        self.ht = np.full((2 * len(self.op), 2), EMPTY, dtype=np.int64)
        rehash(old, self.ht)
        self.scalars[S_ORDER_LIMIT] = len(self.op)

    def _grow_levels(self) -> None:
        """Compact the level runs into a pool twice as large (old runs left behind are dropped)."""
        new = np.zeros((2 * len(self.lv), LV_COLUMNS), dtype=np.int64)
        used = 0
        for inst in range(len(self.ins)):
            for rc in (I_BID, I_ASK):
                start, length, cap = (int(x) for x in self.ins[inst, rc:rc + 3])
                if cap:
                    new[used:used + length] = self.lv[start:start + length]
                    self.ins[inst, rc] = used
                    used += cap
        self.lv = new
        self.scalars[S_POOL_USED] = used

    def _grow_ins(self, need: int) -> None:
        ins = self._new_ins(_pow2(need + 1))
        ins[:len(self.ins)] = self.ins
        self.ins = ins

    # -- the public face ----------------------------------------------------------------------------

    def submit(self, commands: np.ndarray, copy: bool = True) -> np.ndarray:
        """Run a batch of ``COMMAND`` rows; return the ``ORDER_EVENT`` rows they produced, in order.

        ``copy=False``: the rows may be a view of the output buffer, valid until the next ``submit``
        (for a caller that reads them at once, as the engine's settling does).
        """
        parts = []
        i = 0
        while True:
            code, i = match_commands(i, commands, self.op, self.ht, self.lv, self.ins, self.out, self.scalars)
            if code == DONE:
                break
            if code == NEED_ORDERS:
                self._grow_orders()
            elif code == NEED_POOL:
                self._grow_levels()
            elif code == NEED_BOOKS:
                self._grow_ins(int(commands["instrument_id"][i]))
            elif code == NEED_OUTPUT:
                n = int(self.scalars[S_ROWS])
                if n:
                    parts.append(self.out[:n])
                self.out = np.zeros(max(len(self.out), 2 * int(self.scalars[S_NEED_ROWS])), dtype=ORDER_EVENT.dtype)
                self.scalars[S_ROWS] = 0
        n = int(self.scalars[S_ROWS])
        self.scalars[S_ROWS] = 0
        if not parts:
            if not n:
                return _NO_EVENTS
            if not copy:
                return self.out[:n]
        if n * 4 >= len(self.out):  # a big batch: hand the rows out and write on into a fresh buffer
            parts.append(self.out[:n])
            self.out = np.zeros(len(self.out), dtype=ORDER_EVENT.dtype)
        else:
            parts.append(copy_rows(self.out[:n]))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @property
    def orders(self) -> int:
        """Live orders (resting and held)."""
        return int(self.scalars[S_ORDERS])

    def order(self, order_id: int) -> dict | None:
        """A live order's fields, or None."""
        row = int(ht_find(self.ht, np.int64(order_id))) if 0 < order_id < 2**63 else -1
        if row < 0:
            return None
        o = self.op[row]
        return {"order_id": int(o[O_ID]), "instrument_id": int(o[O_INST]), "account": int(o[O_ACCOUNT]),
                "side": OrderSide(o[O_SIDE]), "order_type": OrderType(o[O_TYPE]), "tif": TimeInForce(o[O_TIF]),
                "price": int(o[O_PRICE]), "stop_price": int(o[O_STOP]), "leaves": int(o[O_LEAVES]),
                "held": bool(o[O_STATE] == HELD)}

    def book(self, instrument: int) -> BookSnapshot:
        """The instrument's levels, queues and held stops (see ``BookSnapshot``)."""
        if instrument >= len(self.ins):
            return BookSnapshot([], [], [])
        op, lv, ins = self.op, self.lv, self.ins
        sides = []
        for rc in (I_BID, I_ASK):
            start, n = int(ins[instrument, rc]), int(ins[instrument, rc + 1])
            levels = []
            for pos in range(start + n - 1, start - 1, -1):
                queue = []
                row = int(lv[pos, L_HEAD])
                while row >= 0:
                    queue.append((int(op[row, O_ID]), int(op[row, O_LEAVES]), int(op[row, O_ACCOUNT])))
                    row = int(op[row, O_NEXT])
                levels.append((int(lv[pos, L_PRICE]), queue))
            sides.append(levels)
        stops = []
        row = int(ins[instrument, I_STOP_HEAD])
        while row >= 0:
            o = op[row]
            stops.append((int(o[O_ID]), int(o[O_SIDE]), int(o[O_TYPE]), int(o[O_TIF]), int(o[O_STOP]),
                          int(o[O_PRICE]), int(o[O_LEAVES])))
            row = int(o[O_NEXT])
        return BookSnapshot(sides[0], sides[1], stops)

    def state_rows(self) -> np.ndarray:
        """Every live order in canonical order (``dump_orders``), int64 [orders, 10]."""
        out = np.zeros((self.orders, 10), dtype=np.int64)
        n = dump_orders(self.op, self.lv, self.ins, out)
        return out[:n]

    def state_bytes(self) -> bytes:
        """The books for state hashes: ``state_rows`` and each instrument's last trade price."""
        return self.state_rows().tobytes() + self.ins[:, I_LAST].tobytes()

    def levels(self, instrument: int) -> tuple[list, list]:
        """L2 of the instrument from the kernel's level rows: [(price, open qty, order count)] best first."""
        if instrument >= len(self.ins):
            return [], []
        out = []
        for rc in (I_BID, I_ASK):
            start, n = int(self.ins[instrument, rc]), int(self.ins[instrument, rc + 1])
            out.append([(int(self.lv[p, L_PRICE]), int(self.lv[p, L_QTY]), int(self.lv[p, L_COUNT]))
                        for p in range(start + n - 1, start - 1, -1)])
        return out[0], out[1]
