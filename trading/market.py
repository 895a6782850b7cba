"""The feed's liquidity inside the internal book: mirror orders of a reserved market account.

Users' orders trade against each other in ``trading.matching`` and against the books the feed rebuilds
(``orderbook.engine.BookEngine``). This module makes the second a case of the first: the feed's levels
of an instrument are mirrored into the matcher as LIMIT GTC orders of ``MARKET_ACCOUNT`` ("mirror
orders"), so one price-time priority queue holds the feed's displayed size and users' orders. The
engine reports no event of the market account: market-vs-market fills never reach anyone.

What the feed does, and what it becomes (all as ``COMMAND`` rows of the market account):

- a displayed size increase at a price: a new mirror order at the tail of that level's queue, behind
  every user order already there (the tail mirror order grows instead when nothing is behind it);
- a displayed size decrease not explained by executions: mirror orders shrink from the tail, newest
  first (a cancelled order is assumed to be behind ours: a user's place in the queue improves only
  through executions; the risk-averse queue model);
- an execution of the feed's book (``EXEC``): an IOC taker of the market account at the execution price
  for the executed size, opposite the resting side. It takes the queue in price-time order: users
  priced through it first, then the mirror orders ahead of a user at its price, then the user. So an
  order behind 500 displayed shares fills only after 500 are executed;
- a printed trade (``PRINT``: executions, non-book trades, crosses): a ``SWEEP``: users' orders priced
  strictly through the print fill entirely at their own price, then held stops trigger on it.

Consumed liquidity. When a user takes a mirror order (or a new mirror order crosses a resting user),
the feed still shows those shares: they are remembered per (instrument, side, price) as *consumed* and
the level is mirrored at displayed size minus consumed, so no two simulated fills use the same shares.
Consumed shares are the front of the queue (a taker takes the front) and cancels are taken from the back
(as above), so consumed shares leave last: at each sync the consumed quantity is cut to the feed's
displayed size at that price (to 0 when the level is gone), and executions, which the IOC takers
already applied to the rest of the queue, leave it alone. That is how consumed liquidity is forgotten.

Which levels are mirrored (the *window* of a side): the top ``depth`` levels, extended to cover every
user order resting on that side, the best user price on the other side (so a resting user is never
crossed by levels we do not mirror), the limit prices of incoming orders (on both sides: an order
joins behind the size displayed at its price, and may take from the other side down to it) and the
size of incoming market orders. Mirror orders outside the window are removed.

When instruments are synced. An instrument is *synced* once a user command named it (its first sync),
and *watched* while it holds users' interest: a live user order (resting or a held stop) or consumed
liquidity. After each feed batch (``Engine.feed``), every watched instrument the batch touched is
synced, its executions and prints applied (``feed_rows``); one the batch touched that is not watched is
only marked *dirty* (nothing of a user can meet its liquidity), and its MARK is read if an account
holds a position in it. Before a batch of user commands, each instrument it names is synced if it
is dirty, stale or its window must reach further (``plan_sync``). Book events below a side's window
(one with more levels than it mirrors) change nothing mirrored and are left out. A sync reads the feed's book into
``MARKET_INPUT`` rows (``extract``), and only those rows are the input of what follows
(``market_commands``): the engine logs them, so replaying the write-ahead log rebuilds the same state
with no feed at hand. When to sync is decided live only and never logged.

A sync reads only what changed. Per instrument side, the levels last read are kept (``snap``, live
only); after a feed batch only the prices its adds, cancels and deletes name are looked up (a side a
message changed at a price it does not tell, e.g. an execution or a replace, is compared whole). A
sync writes a ``WINDOW`` row whose ``size`` says how to read the LEVEL rows after it: DIFF (1):
only the levels inside the window whose displayed size differs from the last read, those new to the
window, and those that left the feed (size 0); a level not listed is as it was. FULL (0): every level
inside the window; one not listed is gone. A side is read FULL at its first sync, after a restart,
when its snapshot outgrew its room, and after mirror orders traded with each other (a crossed or
locked feed book: ``stale``); levels a batch executed at are always listed. The MARK row is written
when the mark changed. So a sync costs what changed in the feed, not the size of the window.

A feed sync runs in two steps: ``PRE``: levels reconciled to the sizes they had before the batch's
executions (displayed now + executed in the batch), then the executions as IOC takers; ``POST``: levels
reconciled to the sizes displayed now, then the prints as SWEEPs. A sync before user commands is a
``POST`` without executions or prints.

Rules the kernels keep: no allocation, no I/O, no clock; work proportional to the rows of a sync (a
binary search per level, never a scan of the sync per level); ``market_commands`` only reads the
matcher (the commands it writes change it), and changes nothing but the consumed table, idempotently,
so growing its output and calling again is safe.
"""
from __future__ import annotations

import enum

import numba as nb
import numpy as np

from orderbook.kernel import level_pos as _lower  # first index of a level run whose key is >= key
from parsers.schema import UNDEF_PRICE, Action, Flag, Record, Side, _c, _pad, _price
from trading import matching as mt
from trading.orders import (COMMAND, ORDER_EVENT, CommandKind, EventKind, Liquidity, OrderSide, OrderType, TimeInForce,
                            copy_rows)

MARKET_ACCOUNT = 0xFFFF_FFFF  # the feed's liquidity; user accounts are below it
MARKET_ID_BASE = 1 << 62  # order ids from here up are the market's; users' must be below
TAKER_ID_BASE = MARKET_ID_BASE | (1 << 61)  # IOC takers standing for the feed's executions
DEFAULT_DEPTH = 10

# Return codes.
DONE = 0
NEED_OUTPUT = 1  # market_commands: more command rows
NEED_CONSUMED = 2  # settle: a consumed table (instrument, side) is full, or the instrument beyond it
NEED_INSTRUMENTS = 3  # market_commands: an instrument id beyond the per-instrument arrays

# ``size`` of a WINDOW row: how its side's LEVEL rows are read (module docstring).
WINDOW_FULL = 0  # every level inside the window is listed; a level not listed is gone
WINDOW_DIFF = 1  # only changed levels are listed; a level not listed is as it was


class MarketInputKind(enum.IntEnum):
    WINDOW = 1  # side, price: the side's mirrored window reaches this price (UNDEF_PRICE: mirror nothing);
    #             size: WINDOW_FULL or WINDOW_DIFF
    LEVEL = 2  # side, price, size: a feed level inside the window (best first after its WINDOW row; 0: gone)
    DEPTH = 3  # side, price, size: the feed's size (0: no level) where liquidity was consumed: FULL, outside the
    #            window; DIFF, where it is below the consumed quantity
    EXEC = 4  # side (the resting side), price, size: an execution of the feed's book
    PRINT = 5  # price: a printed trade
    MARK = 6  # price: the instrument's mark (mid or last, as configured) for valuation and risk


class SyncMode(enum.IntEnum):
    PRE = 1  # levels as before the batch's executions, then the executions
    POST = 2  # levels as displayed now (consumed cut to them), then the prints


MARKET_INPUT = Record(
    "market_inputs",
    "What the engine read from the feed for one sync (logged, so replay needs no feed).",
    (
        _c("ts", "<i8", "unix_nanos", "EXEC/PRINT: the trade's ts_event; else the sync's time"),
        _price("price", "the level's, trade's or mark's price; WINDOW: the window's last price"),
        _c("size", "<u8", "shares", "LEVEL/DEPTH: displayed size; EXEC/PRINT: shares traded; WINDOW: FULL 0 / DIFF 1"),
        _c("instrument_id", "<u4", "id", "instrument"),
        _c("kind", "u1", "MarketInputKind", "what the row is"),
        _c("side", "u1", "Side", "WINDOW/LEVEL/DEPTH: the book side; EXEC: the resting order's side"),
        _pad(2),
    ),
)

_INPUT_DT = MARKET_INPUT.dtype  # ``Record.dtype`` builds a new dtype on each access
_COMMAND_DT = COMMAND.dtype

# Slots of ``MarketMirror.scalars``.
S_NEXT_MIRROR = 0  # mirror orders handed out (ids MARKET_ID_BASE + 1 + n)
S_NEXT_TAKER = 1  # IOC takers handed out (ids TAKER_ID_BASE + 1 + n)
S_ROWS = 2  # rows written by the current call
S_MARKET_REJECTS = 3  # market commands the matcher refused (always 0 unless something is wrong)
S_SNAP_FULL = 4  # a read found a side with more levels than the snapshot holds (grow it)
S_EXECS = 5  # EXEC rows written by the last ``feed_rows``
SCALARS = 6

# Columns of ``MarketMirror.ws`` (live only, never logged: when a sync is due).
W_KEY = 0  # the window's last key per side (bid: price, ask: -price): columns 0, 1
W_MORE = 2  # 1 if the feed showed levels beyond the window: columns 2, 3
W_SUM = 4  # displayed size inside the window: columns 4, 5
WS_COLUMNS = 6
SNAP_LEVELS = 32  # levels per side a snapshot starts with room for (``MarketMirror.snap``; grows)

_UNDEF = np.int64(UNDEF_PRICE)
_NO_WINDOW = np.int64(2**63 - 1)  # a window key no level reaches
_MIN = np.int64(-(2**63))
_U4_MAX = np.int64(0xFFFF_FFFF)
_MKT = np.int64(MARKET_ACCOUNT)
_MID_BASE = np.int64(MARKET_ID_BASE)
_TID_BASE = np.int64(TAKER_ID_BASE)
_UMID_BASE = np.uint64(MARKET_ID_BASE)
_BID = np.uint8(Side.BID)
_ASK = np.uint8(Side.ASK)
_K_WINDOW, _K_LEVEL, _K_DEPTH, _K_EXEC, _K_PRINT, _K_MARK = (np.uint8(k) for k in MarketInputKind)
_PRE = np.int64(SyncMode.PRE)
_C_NEW = np.uint8(CommandKind.NEW)
_C_CANCEL = np.uint8(CommandKind.CANCEL)
_C_MODIFY = np.uint8(CommandKind.MODIFY)
_C_SWEEP = np.uint8(CommandKind.SWEEP)
_O_BUY = np.uint8(OrderSide.BUY)
_O_SELL = np.uint8(OrderSide.SELL)
_T_MARKET = np.int64(OrderType.MARKET)
_T_LIMIT = np.uint8(OrderType.LIMIT)
_T_STOP = np.int64(OrderType.STOP)
_GTC = np.uint8(TimeInForce.GTC)
_IOC = np.uint8(TimeInForce.IOC)
_ACK = np.uint8(EventKind.ACK)
_FILL = np.uint8(EventKind.FILL)
_REJECT = np.uint8(EventKind.REJECT)
_CANCELLED = np.uint8(EventKind.CANCELLED)
_MAKER = np.uint8(Liquidity.MAKER)
_A_EXECUTE = np.uint8(Action.EXECUTE)
_FULL = np.uint64(WINDOW_FULL)
_DIFF = np.uint64(WINDOW_DIFF)
MARK_MID, MARK_LAST = 1, 2


# -- small readers ------------------------------------------------------------------------------


@nb.njit(cache=True, inline="always", _nrt=False)
def _key(s, price):
    """Sort key of ``price`` on book side ``s`` (0 bid, 1 ask): larger is better."""
    return price if s == 0 else -price


@nb.njit(cache=True, inline="always", _nrt=False)
def _price_of(s, key):
    return key if s == 0 else -key


@nb.njit(cache=True, nogil=True, _nrt=False)
def _has_user(op, lv, pos):
    row = lv[pos, mt.L_HEAD]
    while row >= 0:
        if op[row, mt.O_ACCOUNT] != _MKT:
            return True
        row = op[row, mt.O_NEXT]
    return False


@nb.njit(cache=True, nogil=True, _nrt=False)
def user_edge(op, lv, ins, inst, s, best):
    """Key of the best (``best``) or worst level of side ``s`` holding a user order; ``_MIN`` if none."""
    if inst >= ins.shape[0]:
        return _MIN
    rc = mt.I_BID if s == 0 else mt.I_ASK
    start = ins[inst, rc]
    n = ins[inst, rc + 1]
    for j in range(n):
        pos = start + n - 1 - j if best else start + j
        if _has_user(op, lv, pos):
            return lv[pos, mt.L_KEY]
    return _MIN


@nb.njit(cache=True, nogil=True, _nrt=False)
def _consumed_find(cu, cn, inst, s, price):
    for k in range(cn[inst, s]):
        if cu[inst, s, k, 0] == price:
            return k
    return -1


@nb.njit(cache=True, nogil=True, _nrt=False)
def _consumed_at(cu, cn, inst, s, price):
    if inst >= cn.shape[0]:
        return np.int64(0)
    k = _consumed_find(cu, cn, inst, s, price)
    return cu[inst, s, k, 1] if k >= 0 else np.int64(0)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _consumed_total(cu, cn, inst, s):
    total = np.int64(0)
    if inst < cn.shape[0]:
        for k in range(cn[inst, s]):
            total += cu[inst, s, k, 1]
    return total


@nb.njit(cache=True, nogil=True, _nrt=False)
def _feed_size(feed_lv, start, n, key):
    """Displayed size of the feed level with ``key`` in the run (best last), 0 if absent."""
    lo = _lower(feed_lv, start, n, key)
    if lo < start + n and feed_lv[lo, 0] == key:
        return feed_lv[lo, 2]
    return np.int64(0)


# -- reading the feed ---------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _put(out, n, ts, price, size, inst, kind, side):
    """Write one MARKET_INPUT row at ``n``; returns ``n + 1``."""
    r = out[n]
    r.ts = ts
    r.price = price
    r.size = size
    r.instrument_id = inst
    r.kind = kind
    r.side = side
    return n + 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def users_interest(ins, mirror_live, cn, inst):
    """Whether ``inst`` holds users' interest: a live user order (resting or held) or consumed liquidity."""
    if inst < cn.shape[0] and cn[inst, 0] + cn[inst, 1] > 0:
        return True
    if inst >= ins.shape[0]:
        return False
    mirrored = mirror_live[inst] if inst < mirror_live.shape[0] else np.int64(0)
    return ins[inst, mt.I_RESTING] + ins[inst, mt.I_STOPS] > mirrored


@nb.njit(cache=True, nogil=True, _nrt=False)
def _window(feed_lv, fs, fn, op, lv, ins, cu, cn, inst, s, depth, reach, need):
    """Key of the last level of side ``s``'s window (module docstring); ``_NO_WINDOW``: nothing to mirror."""
    lim = _NO_WINDOW
    if fn > 0:
        lim = feed_lv[fs + fn - min(depth, fn), 0]
    worst_user = user_edge(op, lv, ins, inst, s, False)
    if worst_user != _MIN and worst_user < lim:
        lim = worst_user
    other = user_edge(op, lv, ins, inst, 1 - s, True)  # the other side's best user price
    if other != _MIN:
        k = _key(s, _price_of(1 - s, other))
        if k < lim:
            lim = k
    if reach < lim:
        lim = reach
    if need > 0 and fn > 0:
        want = need + _consumed_total(cu, cn, inst, s)
        got = np.int64(0)
        pos = fs + fn - 1
        while pos >= fs:
            got += feed_lv[pos, 2]
            if got >= want:
                break
            pos -= 1
        k = feed_lv[max(pos, fs), 0]
        if k < lim:
            lim = k
    return lim


@nb.njit(cache=True, nogil=True, _nrt=False)
def _mark_of(inst, feed_lv, feed_bk, mark_kind, last_px):
    """The instrument's mark: mid or last (the other when it has none), UNDEF_PRICE if neither."""
    bid = _UNDEF
    ask = _UNDEF
    if 2 * inst + 1 < feed_bk.shape[0]:
        if feed_bk[2 * inst, 1] > 0:
            bid = feed_lv[feed_bk[2 * inst, 0] + feed_bk[2 * inst, 1] - 1, 1]
        if feed_bk[2 * inst + 1, 1] > 0:
            ask = feed_lv[feed_bk[2 * inst + 1, 0] + feed_bk[2 * inst + 1, 1] - 1, 1]
    last = last_px[inst] if inst < last_px.shape[0] else _UNDEF
    mid = _UNDEF
    if bid != _UNDEF and ask != _UNDEF:
        mid = (bid + ask) // 2
    if mark_kind == MARK_LAST:
        return last if last != _UNDEF else mid
    return mid if mid != _UNDEF else last


@nb.njit(cache=True, nogil=True, _nrt=False)
def _put_mark(inst, feed_lv, feed_bk, mark_kind, last_px, last_mark, ts, out, n):
    """A MARK row if the instrument's mark changed since the last one written."""
    mark = _mark_of(inst, feed_lv, feed_bk, mark_kind, last_px)
    if mark != _UNDEF and mark != last_mark[inst]:
        n = _put(out, n, ts, mark, np.uint64(0), inst, _K_MARK, np.uint8(0))
        last_mark[inst] = mark
    return n


@nb.njit(cache=True, nogil=True, _nrt=False)
def _snap_find(snap, inst, s, m, key):
    """Index of ``key`` among the first ``m`` snapshot entries (keys descending), else -(insertion point) - 1."""
    lo = 0
    hi = m
    while lo < hi:
        mid = (lo + hi) >> 1
        if snap[inst, s, mid, 0] > key:
            lo = mid + 1
        else:
            hi = mid
    if lo < m and snap[inst, s, lo, 0] == key:
        return np.int64(lo)
    return np.int64(-lo - 1)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _merge_side(inst, s, lim, full, fs, fn, feed_lv, ts, side, out, n, snap, snap_n, tmp, scalars):
    """LEVEL rows of one side from the whole window merged with the snapshot (FULL: every level); the
    snapshot rewritten. Returns the next row."""
    cap = snap.shape[2]
    old = np.int64(0) if full else snap_n[inst, s]
    k = np.int64(0)  # next entry of the old snapshot
    m = np.int64(0)  # levels of the new one
    pos = fs + fn - 1
    while True:  # the feed's window and the old snapshot, both best first, merged by key
        kf = feed_lv[pos, 0] if pos >= fs and feed_lv[pos, 0] >= lim else _MIN
        ks = snap[inst, s, k, 0] if k < old else _MIN
        if kf == _MIN and ks == _MIN:
            break
        if kf != _MIN and kf >= ks:
            size = feed_lv[pos, 2]
            changed = True
            if kf == ks:
                changed = snap[inst, s, k, 1] != size
                k += 1
            if full or changed:
                n = _put(out, n, ts, feed_lv[pos, 1], np.uint64(size), inst, _K_LEVEL, side)
            if m < cap:
                tmp[m, 0] = kf
                tmp[m, 1] = size
            m += 1
            pos -= 1
        else:  # last read, no longer shown: gone from the feed (or out of the window: no row)
            if ks >= lim:
                n = _put(out, n, ts, _price_of(s, ks), np.uint64(0), inst, _K_LEVEL, side)
            k += 1
    if m <= cap:
        for j in range(m):
            snap[inst, s, j, 0] = tmp[j, 0]
            snap[inst, s, j, 1] = tmp[j, 1]
        snap_n[inst, s] = m
    else:  # read FULL until the snapshot grows
        snap_n[inst, s] = -1
        if m > scalars[S_SNAP_FULL]:
            scalars[S_SNAP_FULL] = m
    return n


_TOUCHED_MAX = 32  # keys per side a read looks up one by one; more: it merges the whole window


@nb.njit(cache=True, nogil=True, _nrt=False)
def _touched_side(inst, s, lim, fs, fn, feed_lv, ts, side, out, n, ws, snap, snap_n, cand, head, keys, scalars):
    """DIFF rows of one side from the keys a feed batch touched (the list ``cand`` from ``head``) and the
    levels a deeper window takes in, each looked up in the feed and in the snapshot, which is updated
    in place. Returns (next row, True), or (``n``, False) with nothing done when there are more keys
    than ``keys`` holds (merge the whole window instead)."""
    old_lim = ws[inst, W_KEY + s]
    k = 0
    e = head
    while e >= 0:
        if k == keys.shape[0]:
            return n, False
        keys[k] = cand[e, 0]
        k += 1
        e = cand[e, 1]
    if lim < old_lim:  # the window reaches deeper: the levels it takes in are new to it
        p = _lower(feed_lv, fs, fn, lim)
        q = _lower(feed_lv, fs, fn, old_lim) if old_lim != _NO_WINDOW else fs + fn
        if k + q - p > keys.shape[0]:
            return n, False
        for j in range(p, q):
            keys[k] = feed_lv[j, 0]
            k += 1
    for a in range(1, k):  # best first (insertion sort: a handful of keys)
        x = keys[a]
        b = a - 1
        while b >= 0 and keys[b] < x:
            keys[b + 1] = keys[b]
            b -= 1
        keys[b + 1] = x
    cap = snap.shape[2]
    m = snap_n[inst, s]
    fits = True
    for a in range(k):
        key = keys[a]
        if (a > 0 and key == keys[a - 1]) or key < lim:
            continue  # once each; below the window the snapshot is cut off below
        shown = _feed_size(feed_lv, fs, fn, key)
        j = _snap_find(snap, inst, s, m, key)
        if j >= 0:
            if snap[inst, s, j, 1] == shown:
                continue
            n = _put(out, n, ts, _price_of(s, key), np.uint64(shown), inst, _K_LEVEL, side)
            if shown > 0:
                snap[inst, s, j, 1] = shown
            else:
                for t in range(j, m - 1):
                    snap[inst, s, t, 0] = snap[inst, s, t + 1, 0]
                    snap[inst, s, t, 1] = snap[inst, s, t + 1, 1]
                m -= 1
        elif shown > 0:
            n = _put(out, n, ts, _price_of(s, key), np.uint64(shown), inst, _K_LEVEL, side)
            if m == cap:
                fits = False  # the rows stay right; the snapshot cannot hold it: read FULL next
                continue
            at = -j - 1
            for t in range(m, at, -1):
                snap[inst, s, t, 0] = snap[inst, s, t - 1, 0]
                snap[inst, s, t, 1] = snap[inst, s, t - 1, 1]
            snap[inst, s, at, 0] = key
            snap[inst, s, at, 1] = shown
            m += 1
    while m > 0 and snap[inst, s, m - 1, 0] < lim:  # the window got shorter
        m -= 1
    if fits:
        snap_n[inst, s] = m
    else:
        snap_n[inst, s] = -1
        scalars[S_SNAP_FULL] = max(scalars[S_SNAP_FULL], np.int64(cap + 1))
    return n, True


@nb.njit(cache=True, nogil=True, _nrt=False)
def _extract_one(inst, reach_bid, reach_ask, need_bid, need_ask, feed_lv, feed_bk, op, lv, ins, cu, cn, depth,
                 mark_kind, last_px, ts, out, n, ws, snap, snap_n, stale, last_mark, tmp, scalars, executed, touched,
                 cand, heads, keys):
    """The rows of one instrument's sync from row ``n`` on (module docstring); returns the next row.

    A side with bit ``1 << side`` of ``touched`` set is read from the keys a feed batch touched
    (``_touched_side``: ``cand`` lists from ``heads``), else by merging its window with the snapshot.
    A DIFF side with nothing to say (no level changed, the same window, no consumed liquidity to cut,
    not executed at: ``executed`` bit ``1 << side``) writes no row at all: the matcher already holds it.
    """
    n_feed = feed_bk.shape[0] // 2
    for s in range(2):
        w = n
        fs = np.int64(0)
        fn = np.int64(0)
        if inst < n_feed:
            fs = feed_bk[2 * inst + s, 0]
            fn = feed_bk[2 * inst + s, 1]
        lim = _window(feed_lv, fs, fn, op, lv, ins, cu, cn, inst, s, depth, reach_bid if s == 0 else reach_ask,
                      need_bid if s == 0 else need_ask)
        side = _BID if s == 0 else _ASK
        full = stale[inst] != 0 or snap_n[inst, s] < 0
        n = _put(out, n, ts, _UNDEF if lim == _NO_WINDOW else _price_of(s, lim), _FULL if full else _DIFF, inst,
                 _K_WINDOW, side)
        done = False
        if not full and (touched >> s) & 1:
            n, done = _touched_side(inst, s, lim, fs, fn, feed_lv, ts, side, out, n, ws, snap, snap_n, cand,
                                    heads[inst, s], keys, scalars)
        if not done:
            n = _merge_side(inst, s, lim, full, fs, fn, feed_lv, ts, side, out, n, snap, snap_n, tmp, scalars)
        if inst < cn.shape[0]:
            # Consumed liquidity is cut to the size shown at its price: FULL, where no LEVEL row tells it
            # (outside the window); DIFF, wherever the size shown is below it (else the cut changes nothing).
            for j in range(cn[inst, s]):
                price = cu[inst, s, j, 0]
                key = _key(s, price)
                shown = _feed_size(feed_lv, fs, fn, key)
                if (key < lim) if full else (shown < cu[inst, s, j, 1]):
                    n = _put(out, n, ts, price, np.uint64(shown), inst, _K_DEPTH, side)
        if n == w + 1 and not full and lim == ws[inst, W_KEY + s] and not (executed >> s) & 1:
            n = w  # nothing changed on this side
        p = _lower(feed_lv, fs, fn, lim)
        total = np.int64(0)
        for j in range(p, fs + fn):
            total += feed_lv[j, 2]
        ws[inst, W_KEY + s] = lim
        ws[inst, W_MORE + s] = 1 if p > fs else 0
        ws[inst, W_SUM + s] = total
    stale[inst] = 0
    return _put_mark(inst, feed_lv, feed_bk, mark_kind, last_px, last_mark, ts, out, n)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _rows_bound(inst, feed_bk, snap_n, cn):
    """The most rows one instrument's sync can write."""
    n = np.int64(3)  # two WINDOW rows and a MARK
    for s in range(2):
        if 2 * inst + s < feed_bk.shape[0]:
            n += feed_bk[2 * inst + s, 1]
        if inst < snap_n.shape[0]:
            n += max(snap_n[inst, s], np.int64(0))
        if inst < cn.shape[0]:
            n += cn[inst, s]
    return n


@nb.njit(cache=True, nogil=True, _nrt=False)
def extract(insts, reach, need_qty, feed_lv, feed_bk, op, lv, ins, cu, cn, depth, mark_kind, last_px, ts, out, ws,
            snap, snap_n, stale, last_mark, tmp, synced, dirty, scalars, cand, heads, keys):
    """Read the feed's book of each instrument in ``insts`` into ``MARKET_INPUT`` rows; return how many.

    Args:
        insts: instrument ids (int64).
        reach: [len(insts), 2] key each side's window must reach for incoming orders (``_NO_WINDOW``: none).
        need_qty: [len(insts), 2] shares incoming market orders may take from each side.
        feed_lv, feed_bk: the ``BookEngine``'s level pool (key, price, size, count) and book runs
            (start, length, capacity) per ``2 * instrument + side`` (0 bid, 1 ask), best level last.
        op, lv, ins: the matcher's order pool, level pool and instrument rows (read only).
        cu, cn: the consumed table (read only here).
        depth: levels mirrored at least.
        mark_kind: MARK_MID or MARK_LAST; last_px: last printed price per instrument (UNDEF_PRICE: none).
        out: room for every row (``_rows_bound`` per instrument).
        ws, snap, snap_n, stale, last_mark: live state per instrument, written (``MarketMirror``).
        tmp: [snapshot levels, 2] scratch.
        synced, dirty: set and cleared for each instrument read.
        cand, heads, keys: ``feed_rows``' scratch (unused here: every side is merged whole).
    """
    n = 0
    for j in range(insts.shape[0]):
        inst = insts[j]
        n = _extract_one(inst, reach[j, 0], reach[j, 1], need_qty[j, 0], need_qty[j, 1], feed_lv, feed_bk, op, lv,
                         ins, cu, cn, depth, mark_kind, last_px, ts, out, n, ws, snap, snap_n, stale, last_mark, tmp,
                         scalars, 0, 0, cand, heads, keys)
        synced[inst] = 1
        dirty[inst] = 0
    return n


# ``MarketMirror._flagged`` while ``feed_rows`` runs: how an instrument is read, (bits 2, 3) the sides its
# executions hit, (bits 4, 5) the sides a message changed at a price it does not tell (merged whole).
_WATCH, _MARK_ONLY, _HOW = 1, 2, 3
_A_ADD = np.uint8(Action.ADD)
_A_CANCEL = np.uint8(Action.CANCEL)
_A_DELETE = np.uint8(Action.DELETE)
_A_TRADE = np.uint8(Action.TRADE)
_A_CROSS = np.uint8(Action.CROSS)
_F_ODD_REF = np.uint16(Flag.UNKNOWN_REF | Flag.DUPLICATE_REF)
_A_REPLACE = np.uint8(Action.REPLACE)
_A_CLEAR = np.uint8(Action.CLEAR)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _in_window(ws, inst, action, side, price, flags):
    """Whether a book event may change what the instrument's window held at its last read: anything
    at or inside it, on a side read whole, a replace (its old price is not in the row), an execution
    (its price is the execution's, not always the order's: ITCH C), a clear, or a message whose order
    reference was unknown or reused."""
    if (action == _A_REPLACE or action == _A_EXECUTE or action == _A_CLEAR or (side != _BID and side != _ASK)
            or price <= 0 or price == _UNDEF or (flags & _F_ODD_REF) != 0):
        return True
    s = 0 if side == _BID else 1
    return ws[inst, W_MORE + s] == 0 or _key(s, price) >= ws[inst, W_KEY + s]


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _priced(t):
    return t.price > 0 and t.price != _UNDEF and t.size > 0


@nb.njit(cache=True, nogil=True, _nrt=False)
def _note(inst, ins, cu, cn, mirror_live, holders, synced, dirty, flagged, listed, m):
    """A feed message touched ``inst``: dirty; listed (once) if synced and watched or held."""
    if inst >= dirty.shape[0]:
        return m
    dirty[inst] = 1
    if (flagged[inst] & _HOW) != 0 or not synced[inst]:
        return m
    if users_interest(ins, mirror_live, cn, inst):
        flagged[inst] = _WATCH
    elif inst < holders.shape[0] and holders[inst] > 0:
        flagged[inst] = _MARK_ONLY
    else:
        return m
    listed[m] = inst
    return m + 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def feed_rows(ts, events, trades, feed_lv, feed_bk, op, lv, ins, cu, cn, mirror_live, holders, depth, mark_kind,
              last_px, synced, dirty, flagged, ws, snap, snap_n, stale, last_mark, tmp, listed, out, scalars, cand,
              heads, keys):
    """The rows a feed batch gives (``Engine.feed``): returns (DONE, rows) or (NEED_OUTPUT, rows needed).

    ``events`` / ``trades``: the batch's ``parsers.schema.EVENT`` and ``TRADE`` rows (the books have
    applied them). Every instrument they touch becomes dirty; the synced ones that are watched
    (``users_interest``) are read (``_extract_one``, no reach), those only held by an account
    (``holders``) give their MARK row if it changed. Then the EXEC rows (the books' executions) and
    the PRINT rows (printed trades) of the watched ones, each in the batch's order;
    ``scalars[S_EXECS]`` counts the EXEC rows. Levels an execution hit are always listed. A side is read
    from the prices the batch's messages touched (``_touched_side``), or merged whole when a message
    does not tell the price it changed (a replace, a clear). ``last_px`` takes the batch's printed
    prices. Scratch, left as found: ``flagged`` (per instrument, 0), ``heads`` (per instrument and side,
    -1), ``listed`` and ``cand`` (a row per message), ``keys``. On NEED_OUTPUT call again with that many
    rows of ``out``.
    """
    n_px = last_px.shape[0]
    for i in range(trades.shape[0]):
        t = trades[i]
        if t.printable == 1 and np.int64(t.instrument_id) < n_px:
            last_px[np.int64(t.instrument_id)] = t.price
    m = 0
    c = 0  # entries of ``cand``: (key, next) lists of the keys each side's messages touched, from ``heads``
    for i in range(events.shape[0]):
        e = events[i]
        inst = np.int64(e.instrument_id)
        if inst >= ws.shape[0] or not _in_window(ws, inst, e.action, e.side, e.price, e.flags):
            continue
        m = _note(inst, ins, cu, cn, mirror_live, holders, synced, dirty, flagged, listed, m)
        a = e.action
        if a == _A_TRADE or a == _A_CROSS:
            continue  # no book change
        # an add, cancel or delete tells the price of the level it changed; an execution tells its own
        # price (ITCH C: not the order's), a replace not the old one, a message of an unknown order none,
        # an add that reused a resting order's reference not the level the book took that order from
        known = (a == _A_ADD or a == _A_CANCEL or a == _A_DELETE) and (e.side == _BID or e.side == _ASK) and (
            e.price > 0 and e.price != _UNDEF and (e.flags & _F_ODD_REF) == 0)
        if known:
            s = 0 if e.side == _BID else 1
            cand[c, 0] = _key(s, e.price)
            cand[c, 1] = heads[inst, s]
            heads[inst, s] = c
            c += 1
        elif a == _A_EXECUTE and (e.side == _BID or e.side == _ASK):
            flagged[inst] |= np.uint8(16 << (0 if e.side == _BID else 1))  # merge that side whole
        else:  # a replace (the order it replaces may rest anywhere), a clear, an unknown order: both sides
            flagged[inst] |= np.uint8(48)
    for i in range(trades.shape[0]):
        m = _note(np.int64(trades[i].instrument_id), ins, cu, cn, mirror_live, holders, synced, dirty, flagged,
                  listed, m)
    bound = 2 * np.int64(trades.shape[0])
    for j in range(m):
        inst = listed[j]
        bound += _rows_bound(inst, feed_bk, snap_n, cn) if (flagged[inst] & _HOW) == _WATCH else 1
    if bound > out.shape[0]:
        _forget(events, trades, flagged, heads, listed, m)
        return NEED_OUTPUT, bound
    for i in range(trades.shape[0]):  # levels executed at are listed even if their size looks unchanged
        t = trades[i]
        inst = np.int64(t.instrument_id)
        if t.action != _A_EXECUTE or not _priced(t) or inst >= flagged.shape[0] or (flagged[inst] & _HOW) != _WATCH:
            continue
        if t.side != _BID and t.side != _ASK:
            continue
        s = 0 if t.side == _BID else 1
        flagged[inst] |= np.uint8(4 << s)
        key = _key(s, t.price)
        j = _snap_find(snap, inst, s, max(snap_n[inst, s], np.int64(0)), key)
        if j >= 0:
            snap[inst, s, j, 1] = -1
        cand[c, 0] = key  # looked up even if no message of the batch tells its price
        cand[c, 1] = heads[inst, s]
        heads[inst, s] = c
        c += 1
    n = 0
    for j in range(m):
        inst = listed[j]
        f = np.int64(flagged[inst])
        if (f & _HOW) == _WATCH:
            n = _extract_one(inst, _NO_WINDOW, _NO_WINDOW, np.int64(0), np.int64(0), feed_lv, feed_bk, op, lv, ins,
                             cu, cn, depth, mark_kind, last_px, ts, out, n, ws, snap, snap_n, stale, last_mark, tmp,
                             scalars, (f >> 2) & 3, 3 & ~(f >> 4), cand, heads, keys)
            dirty[inst] = 0
        else:
            n = _put_mark(inst, feed_lv, feed_bk, mark_kind, last_px, last_mark, ts, out, n)
    execs = 0
    for i in range(trades.shape[0]):
        t = trades[i]
        inst = np.int64(t.instrument_id)
        if t.action == _A_EXECUTE and _priced(t) and inst < flagged.shape[0] and (flagged[inst] & _HOW) == _WATCH:
            n = _put(out, n, t.ts_event, t.price, np.uint64(t.size), inst, _K_EXEC, t.side)
            execs += 1
    for i in range(trades.shape[0]):
        t = trades[i]
        inst = np.int64(t.instrument_id)
        if t.printable == 1 and _priced(t) and inst < flagged.shape[0] and (flagged[inst] & _HOW) == _WATCH:
            n = _put(out, n, t.ts_event, t.price, np.uint64(t.size), inst, _K_PRINT, np.uint8(0))
    _forget(events, trades, flagged, heads, listed, m)
    scalars[S_EXECS] = execs
    return DONE, n


@nb.njit(cache=True, nogil=True, _nrt=False)
def _forget(events, trades, flagged, heads, listed, m):
    """Leave ``feed_rows``' scratch as it found it (``listed`` holds only instruments of the messages)."""
    for i in range(events.shape[0]):
        inst = np.int64(events[i].instrument_id)
        if inst < heads.shape[0]:
            flagged[inst] = 0
            heads[inst, 0] = -1
            heads[inst, 1] = -1
    for i in range(trades.shape[0]):
        inst = np.int64(trades[i].instrument_id)
        if inst < heads.shape[0]:
            flagged[inst] = 0
            heads[inst, 0] = -1
            heads[inst, 1] = -1


# -- what the market does to the internal book ---------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _cmd(out, scalars, ts, kind, oid, inst, side, typ, tif, price, qty):
    """Write one market-account command; False (nothing written) if ``out`` is full."""
    i = scalars[S_ROWS]
    if i >= out.shape[0]:
        return False
    c = out[i]
    c.ts = ts
    c.order_id = oid
    c.price = price
    c.stop_price = _UNDEF
    c.qty = qty
    c.account = _MKT
    c.instrument_id = inst
    c.kind = kind
    c.side = side
    c.order_type = typ
    c.tif = tif
    scalars[S_ROWS] = i + 1
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def _mirror_level(op, lv, pos):
    """(mirror shares at level ``pos``, the tail row if the tail is a mirror order else -1)."""
    m = np.int64(0)
    row = lv[pos, mt.L_HEAD]
    while row >= 0:
        if op[row, mt.O_ACCOUNT] == _MKT:
            m += op[row, mt.O_LEAVES]
        row = op[row, mt.O_NEXT]
    tail = lv[pos, mt.L_TAIL]
    if tail >= 0 and op[tail, mt.O_ACCOUNT] != _MKT:
        tail = -1
    return m, tail


# Passes of a reconcile: every shrink first (they trade nothing), then every growth of a tail mirror order
# (a MODIFY: the book was uncrossed and keeps its prices, so it trades nothing either and no order it
# names can be gone), then every new mirror order (these may cross a resting user: that is the point).
_SHRINK, _GROW, _NEW_PASS = 0, 1, 2

# Columns of ``market_commands``' scratch ``work`` (a row per MARKET_INPUT row).
WK_EXEC = 0  # LEVEL row: shares the batch executed at its price (PRE); WINDOW row: end of its LEVEL rows
WK_NEXT = 1  # EXEC row: the next EXEC row of its side matching no LEVEL row; WINDOW row: the first
WK_LAST = 2  # WINDOW row: the last of those
WK_POS, WK_MIRROR, WK_TAIL, WK_TARGET = 3, 4, 5, 6  # LEVEL row (DIFF): found by the first pass, for the others
WK_COLUMNS = 7


@nb.njit(cache=True, nogil=True, _nrt=False)
def _level_commands(op, lv, pos, target, mirror, tail, pass_, ts, inst, s, price, out, scalars):
    """Commands that bring the mirror shares at one level from ``mirror`` to ``target``; False if out is full."""
    side = _O_BUY if s == 0 else _O_SELL
    if pass_ == _SHRINK and target < mirror:
        excess = mirror - target
        row = lv[pos, mt.L_TAIL]
        while row >= 0 and excess > 0:
            prv = op[row, mt.O_PREV]
            if op[row, mt.O_ACCOUNT] == _MKT:
                leaves = op[row, mt.O_LEAVES]
                take = min(leaves, excess)
                excess -= take
                if take == leaves:
                    ok = _cmd(out, scalars, ts, _C_CANCEL, op[row, mt.O_ID], inst, side, _T_LIMIT, _GTC, _UNDEF, 0)
                else:
                    ok = _cmd(out, scalars, ts, _C_MODIFY, op[row, mt.O_ID], inst, side, _T_LIMIT, _GTC, _UNDEF,
                              leaves - take)
                if not ok:
                    return False
            row = prv
    elif pass_ != _SHRINK and target > mirror:
        add = target - mirror
        grow = tail >= 0 and op[tail, mt.O_LEAVES] + add <= _U4_MAX
        if pass_ == _GROW and grow:
            return _cmd(out, scalars, ts, _C_MODIFY, op[tail, mt.O_ID], inst, side, _T_LIMIT, _GTC, _UNDEF,
                        op[tail, mt.O_LEAVES] + add)
        if pass_ == _NEW_PASS and not grow:
            oid = _MID_BASE + 1 + scalars[S_NEXT_MIRROR]
            if not _cmd(out, scalars, ts, _C_NEW, oid, inst, side, _T_LIMIT, _GTC, price, min(add, _U4_MAX)):
                return False
            scalars[S_NEXT_MIRROR] += 1
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def _level_row(rows, w, gl, s, price):
    """Index of the LEVEL row at ``price`` among ``rows[w+1:gl]`` (best first), -1 if none."""
    key = _key(s, price)
    lo = w + 1
    hi = gl
    while lo < hi:
        mid = (lo + hi) >> 1
        if _key(s, rows[mid].price) > key:
            lo = mid + 1
        else:
            hi = mid
    if lo < gl and rows[lo].price == price:
        return lo
    return np.int64(-1)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _matcher_level(lv, mstart, mn, key):
    """Row of the matcher's level with ``key`` in the run, -1 if none."""
    if mn == 0:
        return np.int64(-1)
    p = mt._level_pos(lv, mstart, mn, key)
    if p < mstart + mn and lv[p, mt.L_KEY] == key:
        return p
    return np.int64(-1)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _unmatched_sum(rows, work, first, price):
    """Shares of the unmatched EXEC rows at ``price`` from row ``first`` on along its list."""
    total = np.int64(0)
    e = first
    while e >= 0:
        if rows[e].price == price:
            total += np.int64(rows[e].size)
        e = work[e, WK_NEXT]
    return total


@nb.njit(cache=True, nogil=True, _nrt=False)
def _reconcile(rows, w, g1, mode, pass_, op, lv, ins, cu, cn, out, scalars, work):
    """One side of one instrument: its WINDOW row at ``w``, LEVEL rows up to ``work[w, WK_EXEC]``, DEPTH
    rows up to ``g1``. False if ``out`` is full."""
    wr = rows[w]
    inst = np.int64(wr.instrument_id)
    s = 0 if wr.side == _BID else 1
    lim = _NO_WINDOW if wr.price == _UNDEF else _key(s, wr.price)
    full = wr.size == _FULL
    ts = wr.ts
    pre = mode == _PRE
    gl = work[w, WK_EXEC]
    head = work[w, WK_NEXT]  # EXEC rows at prices no LEVEL row lists
    if not pre and pass_ == _SHRINK and inst < cn.shape[0]:
        # Consumed shares leave last: cut them to what the feed still shows at their price (DIFF: a price
        # with no row is shown as before, and consumed never exceeded it; but one executed at with no
        # LEVEL row is not shown: a level that came and went within the batch).
        k = 0
        while k < cn[inst, s]:
            price = cu[inst, s, k, 0]
            j = _level_row(rows, w, gl, s, price)
            if j < 0:
                for i in range(gl, g1):
                    if rows[i].price == price:
                        j = i
                        break
            gone = full
            e = head
            while not gone and j < 0 and e >= 0:
                gone = rows[e].price == price
                e = work[e, WK_NEXT]
            if j >= 0 or gone:
                shown = np.int64(rows[j].size) if j >= 0 else np.int64(0)
                if cu[inst, s, k, 1] > shown:
                    cu[inst, s, k, 1] = shown
            if cu[inst, s, k, 1] == 0:
                last = cn[inst, s] - 1
                cu[inst, s, k, 0] = cu[inst, s, last, 0]
                cu[inst, s, k, 1] = cu[inst, s, last, 1]
                cn[inst, s] = last
            else:
                k += 1
    rc = mt.I_BID if s == 0 else mt.I_ASK
    mstart = np.int64(0)
    mn = np.int64(0)
    if inst < ins.shape[0]:
        mstart = ins[inst, rc]
        mn = ins[inst, rc + 1]
    if full:  # the listed levels and the matcher's, merged best first: a level not listed is gone
        li = w + 1
        mpos = mstart + mn - 1
        while li < gl or mpos >= mstart:
            kf = _key(s, rows[li].price) if li < gl else _MIN
            km = lv[mpos, mt.L_KEY] if mpos >= mstart else _MIN
            key = max(kf, km)
            price = _price_of(s, key)
            shown = np.int64(0)
            executed = np.int64(0)
            if kf == key:
                shown = np.int64(rows[li].size)
                executed = work[li, WK_EXEC]
                li += 1
            elif pre and head >= 0:
                executed = _unmatched_sum(rows, work, head, price)
            pos = np.int64(-1)
            if km == key:
                pos = mpos
                mpos -= 1
            target = np.int64(0)
            if key >= lim:
                if pre:
                    shown += executed
                target = max(np.int64(0), shown - _consumed_at(cu, cn, inst, s, price))
            mirror = np.int64(0)
            tail = np.int64(-1)
            if pos >= 0:
                mirror, tail = _mirror_level(op, lv, pos)
            if not _level_commands(op, lv, pos, target, mirror, tail, pass_, ts, inst, s, price, out, scalars):
                return False
    else:  # only the listed levels changed; the matcher's levels beyond the window go
        if pass_ == _SHRINK:
            p = mstart
            while p < mstart + mn and lv[p, mt.L_KEY] < lim:
                mirror, tail = _mirror_level(op, lv, p)
                if not _level_commands(op, lv, p, 0, mirror, tail, _SHRINK, ts, inst, s, lv[p, mt.L_PRICE], out,
                                       scalars):
                    return False
                p += 1
        for li in range(w + 1, gl):
            price = rows[li].price
            key = _key(s, price)
            if key < lim:
                continue
            if pass_ == _SHRINK:  # the matcher does not change between passes: look once
                shown = np.int64(rows[li].size) + (work[li, WK_EXEC] if pre else np.int64(0))
                work[li, WK_TARGET] = max(np.int64(0), shown - _consumed_at(cu, cn, inst, s, price))
                pos = _matcher_level(lv, mstart, mn, key)
                mirror = np.int64(0)
                tail = np.int64(-1)
                if pos >= 0:
                    mirror, tail = _mirror_level(op, lv, pos)
                work[li, WK_POS] = pos
                work[li, WK_MIRROR] = mirror
                work[li, WK_TAIL] = tail
            if not _level_commands(op, lv, work[li, WK_POS], work[li, WK_TARGET], work[li, WK_MIRROR],
                                   work[li, WK_TAIL], pass_, ts, inst, s, price, out, scalars):
                return False
    if head >= 0:
        # Executions at prices no LEVEL row lists: levels that came and were executed within the batch
        # (neither the feed nor the last read has them), and (DIFF) levels only the matcher has (a
        # user's price the feed did not show before): PRE, the executed size joins at their tail; POST,
        # the feed does not show them: what PRE added goes.
        e = head
        while e >= 0:
            price = rows[e].price
            key = _key(s, price)
            first = key >= lim
            f = head
            while first and f != e:  # each price once, at its first execution
                if rows[f].price == price:
                    first = False
                f = work[f, WK_NEXT]
            if first:
                pos = _matcher_level(lv, mstart, mn, key)
                if pos < 0 or not full:  # FULL: the merge above took the matcher's levels
                    executed = _unmatched_sum(rows, work, e, price) if pre else np.int64(0)
                    target = max(np.int64(0), executed - _consumed_at(cu, cn, inst, s, price))
                    mirror = np.int64(0)
                    tail = np.int64(-1)
                    if pos >= 0:
                        mirror, tail = _mirror_level(op, lv, pos)
                    if not _level_commands(op, lv, pos, target, mirror, tail, pass_, ts, inst, s, price, out,
                                           scalars):
                        return False
            e = work[e, WK_NEXT]
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def _market_commands(rows, mode, op, lv, ins, cu, cn, out, scalars, group, work):
    n = rows.shape[0]
    pre = mode == _PRE
    i = 0
    while i < n:  # groups: a WINDOW row and the LEVEL then DEPTH rows after it
        work[i, WK_EXEC] = 0
        work[i, WK_NEXT] = -1
        work[i, WK_LAST] = -1
        if rows[i].kind != _K_WINDOW:
            i += 1
            continue
        w = i
        s = 0 if rows[w].side == _BID else 1
        group[np.int64(rows[w].instrument_id), s] = w
        i += 1
        while i < n and rows[i].kind == _K_LEVEL:
            work[i, WK_EXEC] = 0
            work[i, WK_NEXT] = -1
            i += 1
        work[w, WK_EXEC] = i  # end of the LEVEL rows
    for i in range(n):  # each EXEC row to its LEVEL row, or to its side's list of the unmatched
        r = rows[i]
        if r.kind == _K_EXEC:
            s = 0 if r.side == _BID else 1
            w = group[np.int64(r.instrument_id), s]
            if w < 0:
                continue
            j = _level_row(rows, w, work[w, WK_EXEC], s, r.price)
            if j >= 0:
                work[j, WK_EXEC] += np.int64(r.size)
            elif work[w, WK_NEXT] < 0:
                work[w, WK_NEXT] = i
                work[w, WK_LAST] = i
            else:
                work[work[w, WK_LAST], WK_NEXT] = i
                work[w, WK_LAST] = i
    for pass_ in range(3):
        i = 0
        while i < n:
            if rows[i].kind != _K_WINDOW:
                i += 1
                continue
            g1 = i + 1
            while g1 < n and (rows[g1].kind == _K_LEVEL or rows[g1].kind == _K_DEPTH):
                g1 += 1
            if not _reconcile(rows, i, g1, mode, pass_, op, lv, ins, cu, cn, out, scalars, work):
                return NEED_OUTPUT
            i = g1
    memo_inst = np.int64(-1)  # the matcher does not change during the call: remember the last answers
    memo_s = np.int64(-1)
    memo_edge = _MIN
    print_inst = np.int64(-1)
    print_bid = _MIN
    print_ask = _MIN
    for i in range(n):
        r = rows[i]
        inst = np.int64(r.instrument_id)
        if pre and r.kind == _K_EXEC:
            s = 0 if r.side == _BID else 1
            if inst != memo_inst or s != memo_s:
                memo_inst = inst
                memo_s = s
                memo_edge = user_edge(op, lv, ins, inst, s, True)
            if memo_edge == _MIN:
                continue  # no user on that side: only mirror orders would trade, and POST redoes them
            oid = _TID_BASE + 1 + scalars[S_NEXT_TAKER]
            if not _cmd(out, scalars, r.ts, _C_NEW, oid, inst, _O_SELL if s == 0 else _O_BUY, _T_LIMIT, _IOC,
                        r.price, min(np.int64(r.size), _U4_MAX)):
                return NEED_OUTPUT
            scalars[S_NEXT_TAKER] += 1
        elif not pre and r.kind == _K_PRINT:
            if inst != print_inst:
                print_inst = inst
                print_bid = user_edge(op, lv, ins, inst, 0, True)
                print_ask = user_edge(op, lv, ins, inst, 1, True)
            through = (print_bid != _MIN and print_bid > r.price) or (print_ask != _MIN and -print_ask < r.price)
            stops = inst < ins.shape[0] and ins[inst, mt.I_STOPS] > 0
            if through or stops:
                if not _cmd(out, scalars, r.ts, _C_SWEEP, 0, inst, 0, 0, 0, r.price, 0):
                    return NEED_OUTPUT
    return DONE


@nb.njit(cache=True, nogil=True, _nrt=False)
def market_commands(rows, mode, op, lv, ins, cu, cn, out, scalars, group, work):
    """The market's commands for one sync step; returns (DONE or NEED_OUTPUT, rows written).

    ``rows``: ``MARKET_INPUT`` rows of the sync (per instrument a WINDOW row per side followed by its
    LEVEL and DEPTH rows, a MARK row; EXEC and PRINT rows anywhere). ``mode``: ``SyncMode``. Writes,
    in order: every shrink (both sides of every instrument), every growth of a tail mirror order, every
    new mirror order, then PRE: an IOC taker per execution of a side where users rest (all of that
    side's, so each takes the level it stands for); POST: a SWEEP per print that may fill a user or
    trigger a stop.
    ``group`` [instruments, 2] (all -1, left so) and ``work`` [len(rows), WK_COLUMNS] are scratch; every
    instrument id of ``rows`` must be below ``len(group)``.
    On NEED_OUTPUT call again from scratch with a larger ``out`` and the id counters as they were; on
    NEED_INSTRUMENTS (the second value: the largest id), with per-instrument arrays that hold it.
    """
    scalars[S_ROWS] = 0
    top = np.int64(-1)
    for i in range(rows.shape[0]):
        top = max(top, np.int64(rows[i].instrument_id))
    if top >= group.shape[0] or top >= cn.shape[0]:
        return NEED_INSTRUMENTS, top
    code = _market_commands(rows, mode, op, lv, ins, cu, cn, out, scalars, group, work)
    for i in range(rows.shape[0]):
        if rows[i].kind == _K_WINDOW:
            group[np.int64(rows[i].instrument_id), 0 if rows[i].side == _BID else 1] = -1
    return code, scalars[S_ROWS]


# -- the matcher's answer -----------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False)
def _new_price(commands, oid, fallback):
    for i in range(commands.shape[0]):
        if commands[i].kind == _C_NEW and np.int64(commands[i].order_id) == oid:
            return commands[i].price
    return fallback


@nb.njit(cache=True, nogil=True, _nrt=False)
def settle(start, events, commands, cu, cn, mirror_live, stale, out, scalars):
    """Drop the market's events, remember consumed liquidity, zero market counterparties.

    Users' events are copied to ``out`` (``scalars[S_ROWS]`` of them). A mirror order's FILL against a
    user order adds its shares to the consumed table at the mirror order's own price (``commands``
    tells the price of a new mirror order that crossed a resting user). ``mirror_live`` counts the
    live mirror orders per instrument (ACK in, CANCELLED or a last FILL out). A mirror order that
    trades with another mirror order (a crossed feed book), or with an IOC taker at a price other than
    the taker's (an execution the feed reported behind better levels), is gone while the feed still
    shows it: its instrument becomes ``stale`` (read FULL next).
    Returns (DONE or NEED_CONSUMED, index of the event to resume from).
    """
    t0 = np.int64(-1)  # the takers are the last commands, ids in order: the first one's index and id
    for i in range(commands.shape[0]):
        if np.int64(commands[i].order_id) >= _TID_BASE:
            t0 = i
            break
    for i in range(start, events.shape[0]):
        e = events[i]
        if np.int64(e.account) == _MKT:
            oid = np.int64(e.order_id)
            inst = np.int64(e.instrument_id)
            mirror = _MID_BASE <= oid < _TID_BASE
            if e.kind == _REJECT:  # (a refused cancel names no instrument)
                scalars[S_MARKET_REJECTS] += 1
                continue
            if inst >= cn.shape[0]:
                return NEED_CONSUMED, i
            if not mirror:
                continue  # an IOC taker: never rests
            elif e.kind == _ACK:
                mirror_live[inst] += 1
            elif e.kind == _CANCELLED:
                mirror_live[inst] -= 1
            elif e.kind == _FILL:
                cp = np.int64(e.counterparty_id)
                if cp < _MID_BASE:
                    s = 0 if e.side == _O_BUY else 1
                    price = e.price if e.liquidity == _MAKER else _new_price(commands, oid, e.price)
                    k = _consumed_find(cu, cn, inst, s, price)
                    if k < 0:
                        k = cn[inst, s]
                        if k >= cu.shape[2]:
                            return NEED_CONSUMED, i
                        cu[inst, s, k, 0] = price
                        cu[inst, s, k, 1] = 0
                        cn[inst, s] = k + 1
                    cu[inst, s, k, 1] += np.int64(e.qty)
                elif cp < _TID_BASE:
                    stale[inst] = 1
                elif t0 >= 0:
                    j = t0 + (cp - np.int64(commands[t0].order_id))
                    if j >= commands.shape[0] or np.int64(commands[j].order_id) != cp or commands[j].price != e.price:
                        stale[inst] = 1
                if e.leaves == 0:
                    mirror_live[inst] -= 1
            continue
        o = out[scalars[S_ROWS]]
        o.ts = e.ts
        o.order_id = e.order_id
        o.counterparty_id = 0 if np.int64(e.counterparty_id) >= _MID_BASE else e.counterparty_id
        o.price = e.price
        o.qty = e.qty
        o.leaves = e.leaves
        o.account = e.account
        o.instrument_id = e.instrument_id
        o.kind = e.kind
        o.side = e.side
        o.liquidity = e.liquidity
        o.reason = e.reason
        scalars[S_ROWS] += 1
    return DONE, events.shape[0]


# -- deciding what to sync before user commands -------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False)
def plan_sync(commands, known, synced, dirty, stale, ws, cu, cn, op, ht, slot, insts, reach, need_qty):
    """Which instruments a batch of user commands needs synced first; returns how many (in ``insts``):
    those never synced, dirty (the feed changed them), stale (mirror orders traded with each other) or
    whose window must reach further.

    Commands of the market's ids (the engine refuses them) are left out. ``known``: 1 per instrument id
    the engine trades. ``slot``: per instrument, -1 or its index in ``insts`` (scratch, left all -1). For each
    instrument listed, ``reach`` and ``need_qty`` say how far the incoming orders reach into each side.
    """
    m = 0
    for i in range(commands.shape[0]):
        c = commands[i]
        if c.order_id >= _UMID_BASE:
            continue
        oid = np.int64(c.order_id)
        if c.kind == _C_NEW:
            inst = np.int64(c.instrument_id)
            side = np.int64(c.side)
            typ = np.int64(c.order_type)
            price = c.price if typ != _T_MARKET and typ != _T_STOP else _UNDEF
            qty = np.int64(c.qty)
        elif c.kind == _C_MODIFY:
            row = mt.ht_find(ht, oid) if 0 < oid < _MID_BASE else np.int64(-1)
            if row < 0:
                continue
            inst = op[row, mt.O_INST]
            side = op[row, mt.O_SIDE]
            price = c.price if c.price != _UNDEF else op[row, mt.O_PRICE]
            qty = np.int64(c.qty)
        else:
            continue
        if inst >= known.shape[0] or not known[inst]:
            continue
        opp = 1 if side == _O_BUY else 0  # the side the order may take from
        if slot[inst] < 0:
            slot[inst] = m
            insts[m] = inst
            reach[m, 0] = _NO_WINDOW
            reach[m, 1] = _NO_WINDOW
            need_qty[m, 0] = 0
            need_qty[m, 1] = 0
            m += 1
        j = slot[inst]
        if price == _UNDEF:
            need_qty[j, opp] += qty
        else:
            for s in range(2):  # the side it may take from, and its own: it joins behind what is shown there
                k = _key(s, price)
                if k < reach[j, s]:
                    reach[j, s] = k
    n = 0
    for j in range(m):
        inst = insts[j]
        slot[inst] = -1
        due = not synced[inst] or dirty[inst] or stale[inst]
        for s in range(2):
            if ws[inst, W_MORE + s] == 0:
                continue  # the window already holds the whole side
            if reach[j, s] < ws[inst, W_KEY + s]:
                due = True
            if need_qty[j, s] > 0 and need_qty[j, s] + _consumed_total(cu, cn, inst, s) > ws[inst, W_SUM + s]:
                due = True
        if due:
            insts[n] = inst
            reach[n, 0] = reach[j, 0]
            reach[n, 1] = reach[j, 1]
            need_qty[n, 0] = need_qty[j, 0]
            need_qty[n, 1] = need_qty[j, 1]
            n += 1
    return n


# -- Python side --------------------------------------------------------------------------------


class MarketMirror:
    """The mirror's state: the consumed table (logged state), and when each instrument syncs (live).

    Args:
        instruments: instrument ids below this are tradable (the per-instrument arrays' size).
        depth: feed levels mirrored at least per side.
        mark: "mid" or "last": what MARK rows carry.
    """

    def __init__(self, instruments: int, depth: int = DEFAULT_DEPTH, mark: str = "mid") -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        if mark not in ("mid", "last"):
            raise ValueError(f"mark must be 'mid' or 'last', not {mark!r}")
        self.depth = int(depth)
        self.mark_kind = MARK_MID if mark == "mid" else MARK_LAST
        n = max(1, int(instruments))
        self.cu = np.zeros((n, 2, 4, 2), dtype=np.int64)
        self.cn = np.zeros((n, 2), dtype=np.int64)
        self.scalars = np.zeros(SCALARS, dtype=np.int64)
        # Derived from the matcher's events (rebuilt by a replay, not hashed): live mirror orders, and
        # instruments whose mirror orders traded with each other (read FULL next).
        self.mirror_live = np.zeros(n, dtype=np.int64)
        self.stale = np.zeros(n, dtype=np.uint8)
        # Live only (rebuilt by the first syncs after a restart, never logged).
        self.synced = np.zeros(n, dtype=np.uint8)
        self.dirty = np.zeros(n, dtype=np.uint8)
        self.ws = np.zeros((n, WS_COLUMNS), dtype=np.int64)
        self.last_px = np.full(n, UNDEF_PRICE, dtype=np.int64)
        self.last_mark = np.full(n, UNDEF_PRICE, dtype=np.int64)
        self.snap = np.zeros((n, 2, SNAP_LEVELS, 2), dtype=np.int64)  # levels last read, best first: key, size
        self.snap_n = np.full((n, 2), -1, dtype=np.int64)  # -1: none (read FULL)
        self._flagged = np.zeros(n, dtype=np.uint8)
        self._slot = np.full(n, -1, dtype=np.int64)
        self._group = np.full((n, 2), -1, dtype=np.int64)
        self._tmp = np.zeros((SNAP_LEVELS, 2), dtype=np.int64)
        self._work = np.zeros((256, WK_COLUMNS), dtype=np.int64)
        self._listed = np.zeros(256, dtype=np.int64)
        self._cand = np.zeros((256, 2), dtype=np.int64)  # feed_rows: (key, next) per message
        self._heads = np.full((n, 2), -1, dtype=np.int64)  # feed_rows: first ``_cand`` entry per instrument side
        self._keys = np.zeros(_TOUCHED_MAX, dtype=np.int64)
        self._plan = np.zeros((16, 5), dtype=np.int64)  # plan's output: instrument, reach (2), need (2)
        self._rows = np.zeros(256, dtype=_INPUT_DT)
        self._cmds = np.zeros(256, dtype=_COMMAND_DT)
        self._settled = np.zeros(256, dtype=ORDER_EVENT.dtype)

    @property
    def instruments(self) -> int:
        return len(self.cn)

    # -- live: reading the feed -------------------------------------------------------------------

    def plan(self, commands: np.ndarray, known: np.ndarray, matcher) -> tuple:
        """(instrument ids, reach, need_qty) of the instruments to sync before ``commands`` (views of
        buffers the next call overwrites)."""
        if len(commands) > len(self._plan):
            self._plan = np.zeros((_pow2(len(commands)), 5), dtype=np.int64)
        insts, reach, need = self._plan[:, 0], self._plan[:, 1:3], self._plan[:, 3:5]
        n = plan_sync(commands, known, self.synced, self.dirty, self.stale, self.ws, self.cu, self.cn, matcher.op,
                      matcher.ht, self._slot, insts, reach, need)
        return insts[:n], reach[:n], need[:n]

    def read(self, ts: int, insts: np.ndarray, books, matcher, reach=None, need=None) -> np.ndarray:
        """WINDOW/LEVEL/DEPTH/MARK rows for ``insts`` from the feed's ``books`` (a ``BookEngine``): what
        changed since each one's last read (module docstring)."""
        insts = np.asarray(insts, dtype=np.int64)
        if reach is None:
            reach = np.full((len(insts), 2), _NO_WINDOW, dtype=np.int64)
        if need is None:
            need = np.zeros((len(insts), 2), dtype=np.int64)
        bk = books.bk
        in_feed = insts[insts < len(bk) // 2]
        rows = int(bk[2 * in_feed, 1].sum() + bk[2 * in_feed + 1, 1].sum()) if len(in_feed) else 0
        rows += int(self.cn[insts].sum() + np.maximum(self.snap_n[insts], 0).sum()) + 3 * len(insts)
        out = np.zeros(rows, dtype=_INPUT_DT)
        n = extract(insts, reach, need, books.lv, bk, matcher.op, matcher.lv, matcher.ins, self.cu, self.cn,
                    self.depth, self.mark_kind, self.last_px, np.int64(ts), out, self.ws, self.snap, self.snap_n,
                    self.stale, self.last_mark, self._tmp, self.synced, self.dirty, self.scalars, self._cand,
                    self._heads, self._keys)
        self._grow_snapshots()
        return out[:n]

    def feed_rows(self, ts: int, events: np.ndarray, trades: np.ndarray, books, matcher, holders) -> np.ndarray:
        """The rows a feed batch gives (``feed_rows``, one kernel call): watched instruments read,
        MARKs of held ones, EXEC and PRINT rows; ``scalars[S_EXECS]`` counts the EXEC rows. A view of
        a buffer the next call overwrites."""
        need = len(events) + len(trades)
        if need > len(self._listed):
            self._listed = np.zeros(_pow2(need), dtype=np.int64)
            self._cand = np.zeros((_pow2(need), 2), dtype=np.int64)
        while True:
            code, n = feed_rows(np.int64(ts), events, trades, books.lv, books.bk, matcher.op, matcher.lv, matcher.ins,
                                self.cu, self.cn, self.mirror_live, holders, self.depth, self.mark_kind, self.last_px,
                                self.synced, self.dirty, self._flagged, self.ws, self.snap, self.snap_n, self.stale,
                                self.last_mark, self._tmp, self._listed, self._rows, self.scalars, self._cand,
                                self._heads, self._keys)
            if code == DONE:
                break
            self._rows = np.zeros(_pow2(n), dtype=_INPUT_DT)
        self._grow_snapshots()
        return self._rows[:n] if n else _NO_INPUT

    def forget_mark(self, instrument_ids) -> None:
        """The marks of these instruments were set from elsewhere (``Engine.mark``): write them at the next read."""
        ids = np.asarray(instrument_ids, dtype=np.int64)
        self.last_mark[ids[ids < self.instruments]] = UNDEF_PRICE

    def _grow_snapshots(self) -> None:
        """A read found a side with more levels than a snapshot holds: more room (read FULL meanwhile)."""
        want = int(self.scalars[S_SNAP_FULL])
        if want <= self.snap.shape[2]:
            return
        cap = _pow2(want)
        snap = np.zeros(self.snap.shape[:2] + (cap, 2), dtype=np.int64)
        snap[:, :, :self.snap.shape[2]] = self.snap
        self.snap = snap
        self._tmp = np.zeros((cap, 2), dtype=np.int64)
        self.scalars[S_SNAP_FULL] = 0

    # -- replayable: what the rows do ------------------------------------------------------------

    def commands(self, rows: np.ndarray, mode: SyncMode, matcher) -> np.ndarray:
        """The market account's commands for ``rows`` in ``mode`` (see ``market_commands``): a view of a
        buffer the next call overwrites."""
        if len(rows) > len(self._work):
            self._work = np.zeros((_pow2(len(rows)), WK_COLUMNS), dtype=np.int64)
        saved_mirror, saved_taker = int(self.scalars[S_NEXT_MIRROR]), int(self.scalars[S_NEXT_TAKER])
        while True:
            code, n = market_commands(rows, np.int64(mode), matcher.op, matcher.lv, matcher.ins, self.cu, self.cn,
                                      self._cmds, self.scalars, self._group, self._work)
            if code == DONE:
                return self._cmds[:n] if n else _NO_COMMANDS
            if code == NEED_INSTRUMENTS:
                self._grow_instruments(n)
                continue
            self.scalars[S_NEXT_MIRROR] = saved_mirror
            self.scalars[S_NEXT_TAKER] = saved_taker
            self._cmds = np.zeros(2 * len(self._cmds), dtype=_COMMAND_DT)

    def settle(self, events: np.ndarray, commands: np.ndarray) -> np.ndarray:
        """Users' events of a matcher answer (market events dropped, consumed liquidity noted)."""
        if len(events) > len(self._settled):
            self._settled = np.zeros(_pow2(len(events)), dtype=events.dtype)
        out = self._settled
        self.scalars[S_ROWS] = 0
        i = 0
        while True:
            code, i = settle(i, events, commands, self.cu, self.cn, self.mirror_live, self.stale, out, self.scalars)
            if code == DONE:
                n = int(self.scalars[S_ROWS])
                return copy_rows(out[:n]) if n else _NO_EVENTS
            inst = int(events["instrument_id"][i])
            if inst >= self.instruments:
                self._grow_instruments(inst)
            else:
                cu = np.zeros(self.cu.shape[:2] + (2 * self.cu.shape[2], 2), dtype=np.int64)
                cu[:, :, :self.cu.shape[2]] = self.cu
                self.cu = cu

    def fit(self, instrument_id: int) -> None:
        """Make room for instrument ids up to ``instrument_id``."""
        if instrument_id >= self.instruments:
            self._grow_instruments(instrument_id)

    def _grow_instruments(self, top: int) -> None:
        n = 1 << int(top).bit_length()
        old = self.instruments
        for name, fill in (("cu", 0), ("cn", 0), ("mirror_live", 0), ("stale", 0), ("synced", 0), ("dirty", 0),
                           ("ws", 0), ("last_px", UNDEF_PRICE), ("last_mark", UNDEF_PRICE), ("snap", 0),
                           ("snap_n", -1), ("_flagged", 0), ("_slot", -1), ("_group", -1), ("_heads", -1)):
            arr = getattr(self, name)
            grown = np.full((n,) + arr.shape[1:], fill, dtype=arr.dtype)
            grown[:old] = arr
            setattr(self, name, grown)

    # -- views ------------------------------------------------------------------------------------

    def reactivate(self, matcher) -> None:
        """After a restart: instruments with live orders or consumed liquidity are synced and dirty, so
        the next feed batch or user command that touches them re-reads them (FULL: no snapshot yet)."""
        n = min(len(matcher.ins), self.instruments)
        live = (matcher.ins[:n, mt.I_RESTING] > 0) | (matcher.ins[:n, mt.I_STOPS] > 0) | (self.cn[:n].sum(axis=1) > 0)
        self.synced[:n] |= live
        self.dirty[:n] |= live

    @property
    def ever_used(self) -> bool:
        """Whether a market order was ever handed out (else the matcher's events need no settling)."""
        return bool(self.scalars[S_NEXT_MIRROR] or self.scalars[S_NEXT_TAKER])

    @property
    def market_rejects(self) -> int:
        """Market commands the matcher refused: always 0 unless the mirror has a bug."""
        return int(self.scalars[S_MARKET_REJECTS])

    def watched(self, matcher) -> np.ndarray:
        """Ids of the instruments a feed batch syncs (synced, with users' interest)."""
        ids = np.flatnonzero(self.synced)
        return np.array([i for i in ids.tolist()
                         if users_interest(matcher.ins, self.mirror_live, self.cn, np.int64(i))], dtype=np.int64)

    def consumed(self, instrument: int) -> dict[tuple[str, int], int]:
        """Consumed shares of ``instrument`` by (side "bid"/"ask", price)."""
        if instrument >= self.instruments:
            return {}
        out = {}
        for s, name in ((0, "bid"), (1, "ask")):
            for k in range(int(self.cn[instrument, s])):
                out[(name, int(self.cu[instrument, s, k, 0]))] = int(self.cu[instrument, s, k, 1])
        return out

    def state_bytes(self) -> bytes:
        """The logged state in a canonical form: ids handed out, consumed entries sorted."""
        parts = [self.scalars[[S_NEXT_MIRROR, S_NEXT_TAKER]].tobytes()]
        inst, side = np.nonzero(self.cn)
        entries = []
        for i, s in zip(inst.tolist(), side.tolist()):
            for k in range(int(self.cn[i, s])):
                entries.append((i, s, int(self.cu[i, s, k, 0]), int(self.cu[i, s, k, 1])))
        parts.append(np.array(sorted(entries), dtype=np.int64).tobytes())
        return b"".join(parts)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


_NO_INPUT = MARKET_INPUT.empty(0)
_NO_COMMANDS = COMMAND.empty(0)
_NO_EVENTS = ORDER_EVENT.empty(0)
for _a in (_NO_INPUT, _NO_COMMANDS, _NO_EVENTS):
    _a.flags.writeable = False
