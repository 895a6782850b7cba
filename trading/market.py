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

When instruments are synced: an instrument is *active* once a user command named it. Before a batch
of user commands, each active instrument it names is synced if the feed changed it since its last sync
(``mark_feed`` says so) or the window must reach further; after each feed batch (``Engine.on_feed``),
every active instrument the batch touched is synced, its executions and prints applied. A sync reads
the feed's book into ``MARKET_INPUT`` rows (``extract``), and only those rows are the input of what
follows (``market_commands``): the engine logs them, so replaying the write-ahead log rebuilds the
same state with no feed at hand.

A feed sync runs in two steps: ``PRE``: levels reconciled to the sizes they had before the batch's
executions (displayed now + executed in the batch), then the executions as IOC takers; ``POST``: levels
reconciled to the sizes displayed now, then the prints as SWEEPs. A sync before user commands is a
``POST`` without executions or prints.

Rules the kernels keep: no allocation, no I/O, no clock; ``market_commands`` only reads the matcher
(the commands it writes change it), and changes nothing but the consumed table, idempotently, so
growing its output and calling again is safe.
"""
from __future__ import annotations

import enum

import numba as nb
import numpy as np

from parsers.schema import UNDEF_PRICE, Action, Record, Side, _c, _pad, _price
from trading import matching as mt
from trading.orders import COMMAND, CommandKind, EventKind, Liquidity, OrderSide, OrderType, TimeInForce

MARKET_ACCOUNT = 0xFFFF_FFFF  # the feed's liquidity; user accounts are below it
MARKET_ID_BASE = 1 << 62  # order ids from here up are the market's; users' must be below
TAKER_ID_BASE = MARKET_ID_BASE | (1 << 61)  # IOC takers standing for the feed's executions
DEFAULT_DEPTH = 10

# Return codes.
DONE = 0
NEED_OUTPUT = 1  # market_commands: more command rows
NEED_CONSUMED = 2  # settle: a consumed table (instrument, side) is full, or the instrument beyond it


class MarketInputKind(enum.IntEnum):
    WINDOW = 1  # side, price: the side's mirrored window reaches this price (UNDEF_PRICE: mirror nothing)
    LEVEL = 2  # side, price, size: a feed level inside the window (best first after its WINDOW row)
    DEPTH = 3  # side, price, size: the feed's size (0: no level) where liquidity was consumed, outside the window
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
        _c("size", "<u8", "shares", "LEVEL/DEPTH: displayed size; EXEC/PRINT: shares traded"),
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
SCALARS = 4

# Columns of ``MarketMirror.ws`` (live only, never logged: when a sync is due).
W_KEY = 0  # the window's last key per side (bid: price, ask: -price): columns 0, 1
W_MORE = 2  # 1 if the feed showed levels beyond the window: columns 2, 3
W_SUM = 4  # displayed size inside the window: columns 4, 5
WS_COLUMNS = 6

_UNDEF = np.int64(UNDEF_PRICE)
_NO_WINDOW = np.int64(2**63 - 1)  # a window key no level reaches
_MIN = np.int64(-(2**63))
_U4_MAX = np.int64(0xFFFF_FFFF)
_MKT = np.int64(MARKET_ACCOUNT)
_MID_BASE = np.int64(MARKET_ID_BASE)
_TID_BASE = np.int64(TAKER_ID_BASE)
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
_FILL = np.uint8(EventKind.FILL)
_REJECT = np.uint8(EventKind.REJECT)
_MAKER = np.uint8(Liquidity.MAKER)
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
    lo = start
    hi = start + n
    while lo < hi:
        mid = (lo + hi) >> 1
        if feed_lv[mid, 0] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo < start + n and feed_lv[lo, 0] == key:
        return feed_lv[lo, 2]
    return np.int64(0)


# -- reading the feed ---------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False)
def extract(insts, reach, need_qty, feed_lv, feed_bk, op, lv, ins, cu, cn, depth, mark_kind, last_px, ts, out, ws):
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
        out: room for every row (the caller sizes it from the feed runs and the consumed counts).
        ws: window state per instrument, written (``W_*`` columns).
    """
    n = 0
    n_feed = feed_bk.shape[0] // 2
    for j in range(insts.shape[0]):
        inst = insts[j]
        best_bid = _UNDEF
        best_ask = _UNDEF
        for s in range(2):
            fs = np.int64(0)
            fn = np.int64(0)
            if inst < n_feed:
                fs = feed_bk[2 * inst + s, 0]
                fn = feed_bk[2 * inst + s, 1]
            if fn > 0:
                if s == 0:
                    best_bid = feed_lv[fs + fn - 1, 1]
                else:
                    best_ask = feed_lv[fs + fn - 1, 1]
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
            if reach[j, s] < lim:
                lim = reach[j, s]
            if need_qty[j, s] > 0 and fn > 0:
                want = need_qty[j, s] + _consumed_total(cu, cn, inst, s)
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
            r = out[n]
            r.ts = ts
            r.price = _UNDEF if lim == _NO_WINDOW else _price_of(s, lim)
            r.size = 0
            r.instrument_id = inst
            r.kind = _K_WINDOW
            r.side = _BID if s == 0 else _ASK
            n += 1
            total = np.int64(0)
            pos = fs + fn - 1
            while pos >= fs and feed_lv[pos, 0] >= lim:
                r = out[n]
                r.ts = ts
                r.price = feed_lv[pos, 1]
                r.size = feed_lv[pos, 2]
                r.instrument_id = inst
                r.kind = _K_LEVEL
                r.side = _BID if s == 0 else _ASK
                n += 1
                total += feed_lv[pos, 2]
                pos -= 1
            if inst < cn.shape[0]:
                for k in range(cn[inst, s]):
                    price = cu[inst, s, k, 0]
                    key = _key(s, price)
                    if key < lim:
                        r = out[n]
                        r.ts = ts
                        r.price = price
                        r.size = _feed_size(feed_lv, fs, fn, key)
                        r.instrument_id = inst
                        r.kind = _K_DEPTH
                        r.side = _BID if s == 0 else _ASK
                        n += 1
            if inst < ws.shape[0]:
                ws[inst, W_KEY + s] = lim
                ws[inst, W_MORE + s] = 1 if pos >= fs else 0
                ws[inst, W_SUM + s] = total
        mark = _UNDEF
        last = last_px[inst] if inst < last_px.shape[0] else _UNDEF
        mid = _UNDEF
        if best_bid != _UNDEF and best_ask != _UNDEF:
            mid = (best_bid + best_ask) // 2
        if mark_kind == MARK_LAST:
            mark = last if last != _UNDEF else mid
        else:
            mark = mid if mid != _UNDEF else last
        if mark != _UNDEF:
            r = out[n]
            r.ts = ts
            r.price = mark
            r.size = 0
            r.instrument_id = inst
            r.kind = _K_MARK
            r.side = 0
            n += 1
    return n


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
def _exec_sum(rows, e0, e1, inst, side, price):
    total = np.int64(0)
    for i in range(e0, e1):
        r = rows[i]
        if r.kind == _K_EXEC and r.instrument_id == inst and r.side == side and r.price == price:
            total += np.int64(r.size)
    return total


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
def _reconcile(rows, w, g1, e0, e1, mode, pass_, op, lv, ins, cu, cn, out, scalars):
    """One side of one instrument: its WINDOW row at ``w``, LEVEL/DEPTH rows up to ``g1``."""
    wr = rows[w]
    inst = np.int64(wr.instrument_id)
    s = 0 if wr.side == _BID else 1
    lim = _NO_WINDOW if wr.price == _UNDEF else _key(s, wr.price)
    ts = wr.ts
    pre = mode == _PRE
    gl = w + 1
    while gl < g1 and rows[gl].kind == _K_LEVEL:
        gl += 1
    if not pre and pass_ == _SHRINK and inst < cn.shape[0]:
        # Consumed shares leave last: cut them to what the feed still shows at their price.
        k = 0
        while k < cn[inst, s]:
            price = cu[inst, s, k, 0]
            shown = np.int64(0)
            for i in range(w + 1, g1):
                if rows[i].price == price:
                    shown = np.int64(rows[i].size)
                    break
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
    mpos = np.int64(-1)
    if inst < ins.shape[0]:
        mstart = ins[inst, rc]
        mpos = mstart + ins[inst, rc + 1] - 1
    li = w + 1
    while li < gl or mpos >= mstart:
        kf = _key(s, rows[li].price) if li < gl else _MIN
        km = lv[mpos, mt.L_KEY] if mpos >= mstart else _MIN
        key = max(kf, km)
        price = _price_of(s, key)
        shown = np.int64(0)
        if kf == key:
            shown = np.int64(rows[li].size)
            li += 1
        pos = np.int64(-1)
        if km == key:
            pos = mpos
            mpos -= 1
        target = np.int64(0)
        if key >= lim:
            if pre:
                shown += _exec_sum(rows, e0, e1, inst, wr.side, price)
            target = max(np.int64(0), shown - _consumed_at(cu, cn, inst, s, price))
        mirror = np.int64(0)
        tail = np.int64(-1)
        if pos >= 0:
            mirror, tail = _mirror_level(op, lv, pos)
        if not _level_commands(op, lv, pos, target, mirror, tail, pass_, ts, inst, s, price, out, scalars):
            return False
    if pre and pass_ == _NEW_PASS:
        # Levels that came and were executed within the batch: neither the feed nor the matcher has them.
        for i in range(e0, e1):
            r = rows[i]
            if r.kind != _K_EXEC or r.instrument_id != inst or r.side != wr.side:
                continue
            key = _key(s, r.price)
            if key < lim or _exec_sum(rows, e0, i, inst, wr.side, r.price) > 0:
                continue  # outside the window, or this price was handled at its first execution
            seen = False
            for j in range(w + 1, gl):
                if rows[j].price == r.price:
                    seen = True
            if not seen and inst < ins.shape[0] and ins[inst, rc + 1] > 0:
                p = mt._level_pos(lv, mstart, ins[inst, rc + 1], key)
                seen = p < mstart + ins[inst, rc + 1] and lv[p, mt.L_KEY] == key
            if seen:
                continue
            target = _exec_sum(rows, i, e1, inst, wr.side, r.price) - _consumed_at(cu, cn, inst, s, r.price)
            if target > 0 and not _level_commands(op, lv, -1, target, 0, -1, _NEW_PASS, ts, inst, s, r.price, out,
                                                  scalars):
                return False
    return True


@nb.njit(cache=True, nogil=True, _nrt=False)
def market_commands(rows, mode, op, ht, lv, ins, cu, cn, out, scalars):
    """The market's commands for one sync step; returns (DONE or NEED_OUTPUT, rows written).

    ``rows``: ``MARKET_INPUT`` rows of the sync (per instrument a WINDOW row per side followed by its
    LEVEL and DEPTH rows, a MARK row; EXEC and PRINT rows anywhere). ``mode``: ``SyncMode``. Writes,
    in order: every shrink (both sides of every instrument), every growth of a tail mirror order, every
    new mirror order, then PRE: an IOC taker per execution of a side where users rest (all of that
    side's, so each takes the level it stands for); POST: a SWEEP per print that may fill a user or
    trigger a stop.
    On NEED_OUTPUT call again from scratch with a larger ``out`` and the id counters as they were.
    """
    scalars[S_ROWS] = 0
    n = rows.shape[0]
    for pass_ in range(3):
        i = 0
        while i < n:
            if rows[i].kind != _K_WINDOW:
                i += 1
                continue
            g1 = i + 1
            while g1 < n and (rows[g1].kind == _K_LEVEL or rows[g1].kind == _K_DEPTH):
                g1 += 1
            if not _reconcile(rows, i, g1, 0, n, mode, pass_, op, lv, ins, cu, cn, out, scalars):
                return NEED_OUTPUT, scalars[S_ROWS]
            i = g1
    for i in range(n):
        r = rows[i]
        inst = np.int64(r.instrument_id)
        if mode == _PRE and r.kind == _K_EXEC:
            s = 0 if r.side == _BID else 1
            if user_edge(op, lv, ins, inst, s, True) == _MIN:
                continue  # no user on that side: only mirror orders would trade, and POST redoes them
            oid = _TID_BASE + 1 + scalars[S_NEXT_TAKER]
            if not _cmd(out, scalars, r.ts, _C_NEW, oid, inst, _O_SELL if s == 0 else _O_BUY, _T_LIMIT, _IOC,
                        r.price, min(np.int64(r.size), _U4_MAX)):
                return NEED_OUTPUT, scalars[S_ROWS]
            scalars[S_NEXT_TAKER] += 1
        elif mode != _PRE and r.kind == _K_PRINT:
            bid = user_edge(op, lv, ins, inst, 0, True)
            ask = user_edge(op, lv, ins, inst, 1, True)
            through = (bid != _MIN and bid > r.price) or (ask != _MIN and -ask < r.price)
            stops = inst < ins.shape[0] and ins[inst, mt.I_STOPS] > 0
            if through or stops:
                if not _cmd(out, scalars, r.ts, _C_SWEEP, 0, inst, 0, 0, 0, r.price, 0):
                    return NEED_OUTPUT, scalars[S_ROWS]
    return DONE, scalars[S_ROWS]


# -- the matcher's answer -----------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False)
def _new_price(commands, oid, fallback):
    for i in range(commands.shape[0]):
        if commands[i].kind == _C_NEW and np.int64(commands[i].order_id) == oid:
            return commands[i].price
    return fallback


@nb.njit(cache=True, nogil=True, _nrt=False)
def settle(start, events, commands, cu, cn, out, scalars):
    """Drop the market's events, remember consumed liquidity, zero market counterparties.

    Users' events are copied to ``out`` (``scalars[S_ROWS]`` of them). A mirror order's FILL against a
    user order adds its shares to the consumed table at the mirror order's own price (``commands``
    tells the price of a new mirror order that crossed a resting user). Returns (DONE or
    NEED_CONSUMED, index of the event to resume from).
    """
    for i in range(start, events.shape[0]):
        e = events[i]
        if np.int64(e.account) == _MKT:
            oid = np.int64(e.order_id)
            if e.kind == _REJECT:
                scalars[S_MARKET_REJECTS] += 1
            elif e.kind == _FILL and _MID_BASE <= oid < _TID_BASE and np.int64(e.counterparty_id) < _MID_BASE:
                inst = np.int64(e.instrument_id)
                s = 0 if e.side == _O_BUY else 1
                price = e.price if e.liquidity == _MAKER else _new_price(commands, oid, e.price)
                if inst >= cn.shape[0]:
                    return NEED_CONSUMED, i
                k = _consumed_find(cu, cn, inst, s, price)
                if k < 0:
                    k = cn[inst, s]
                    if k >= cu.shape[2]:
                        return NEED_CONSUMED, i
                    cu[inst, s, k, 0] = price
                    cu[inst, s, k, 1] = 0
                    cn[inst, s] = k + 1
                cu[inst, s, k, 1] += np.int64(e.qty)
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
def plan_sync(commands, valid, known, synced, dirty, ws, cu, cn, op, ht, slot, insts, reach, need_qty):
    """Which instruments a batch of user commands needs synced first; returns how many (in ``insts``).

    ``valid``: per command, 1 if it goes to the matcher. ``known``: 1 per instrument id the engine
    trades. ``slot``: per instrument, -1 or its index in ``insts`` (scratch, left all -1). For each
    instrument listed, ``reach`` and ``need_qty`` say how far the incoming orders reach into each side.
    """
    m = 0
    for i in range(commands.shape[0]):
        if not valid[i]:
            continue
        c = commands[i]
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
        due = not synced[inst] or dirty[inst]
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


@nb.njit(cache=True, nogil=True, _nrt=False)
def mark_feed(instrument_ids, dirty, synced, flagged, out):
    """Mark instruments the feed touched dirty; list the synced (active) ones once each in ``out``."""
    n = 0
    for i in range(instrument_ids.shape[0]):
        inst = np.int64(instrument_ids[i])
        if inst >= dirty.shape[0]:
            continue
        dirty[inst] = 1
        if synced[inst] and not flagged[inst]:
            flagged[inst] = 1
            out[n] = inst
            n += 1
    for j in range(n):
        flagged[out[j]] = 0
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
        # Live only (rebuilt by the first syncs after a restart, never logged).
        self.synced = np.zeros(n, dtype=np.uint8)
        self.dirty = np.zeros(n, dtype=np.uint8)
        self.ws = np.zeros((n, WS_COLUMNS), dtype=np.int64)
        self.last_px = np.full(n, UNDEF_PRICE, dtype=np.int64)
        self._flagged = np.zeros(n, dtype=np.uint8)
        self._slot = np.full(n, -1, dtype=np.int64)
        self._cmds = np.zeros(256, dtype=_COMMAND_DT)
        self._events = None

    @property
    def instruments(self) -> int:
        return len(self.cn)

    # -- live: reading the feed -------------------------------------------------------------------

    def plan(self, commands: np.ndarray, valid: np.ndarray, known: np.ndarray, matcher) -> tuple:
        """(instrument ids, reach, need_qty) of the instruments to sync before ``commands``."""
        k = len(commands)
        insts = np.empty(k, dtype=np.int64)
        reach = np.empty((k, 2), dtype=np.int64)
        need = np.empty((k, 2), dtype=np.int64)
        n = plan_sync(commands, valid, known, self.synced, self.dirty, self.ws, self.cu, self.cn, matcher.op,
                      matcher.ht, self._slot, insts, reach, need)
        return insts[:n], reach[:n], need[:n]

    def touched(self, instrument_ids: np.ndarray) -> np.ndarray:
        """Mark what a feed batch touched dirty; the active instruments among them (to sync now)."""
        out = np.empty(len(instrument_ids), dtype=np.int64)
        n = mark_feed(instrument_ids, self.dirty, self.synced, self._flagged, out)
        return out[:n]

    def note_prints(self, trades: np.ndarray) -> None:
        """Remember the last printed price of each instrument (for ``mark="last"``)."""
        printed = trades[(trades["printable"] == 1) & (trades["instrument_id"] < self.instruments)]
        if len(printed):
            self.last_px[printed["instrument_id"].astype(np.int64)] = printed["price"]

    def read(self, ts: int, insts: np.ndarray, books, matcher, reach=None, need=None) -> np.ndarray:
        """WINDOW/LEVEL/DEPTH/MARK rows for ``insts`` from the feed's ``books`` (a ``BookEngine``)."""
        insts = np.asarray(insts, dtype=np.int64)
        if reach is None:
            reach = np.full((len(insts), 2), _NO_WINDOW, dtype=np.int64)
        if need is None:
            need = np.zeros((len(insts), 2), dtype=np.int64)
        bk = books.bk
        in_feed = insts[insts < len(bk) // 2]
        rows = int(bk[2 * in_feed, 1].sum() + bk[2 * in_feed + 1, 1].sum()) if len(in_feed) else 0
        rows += int(self.cn[insts].sum()) + 3 * len(insts)
        out = np.zeros(rows, dtype=_INPUT_DT)
        n = extract(insts, reach, need, books.lv, bk, matcher.op, matcher.lv, matcher.ins, self.cu, self.cn,
                    self.depth, self.mark_kind, self.last_px, np.int64(ts), out, self.ws)
        self.synced[insts] = 1
        self.dirty[insts] = 0
        return out[:n]

    def trade_rows(self, trades: np.ndarray, active: np.ndarray) -> np.ndarray:
        """EXEC rows (book executions) and PRINT rows (printed trades) of the active instruments, in order."""
        inst = trades["instrument_id"].astype(np.int64)
        mine = np.zeros(len(trades), dtype=bool)
        if len(active):
            mine = np.isin(inst, active)
        priced = (trades["price"] > 0) & (trades["price"] != UNDEF_PRICE) & (trades["size"] > 0)
        executions = trades[mine & priced & (trades["action"] == Action.EXECUTE)]
        prints = trades[mine & priced & (trades["printable"] == 1)]
        out = np.zeros(len(executions) + len(prints), dtype=_INPUT_DT)
        for part, kind, at in ((executions, MarketInputKind.EXEC, 0), (prints, MarketInputKind.PRINT, len(executions))):
            view = out[at:at + len(part)]
            view["ts"] = part["ts_event"]
            view["price"] = part["price"]
            view["size"] = part["size"]
            view["instrument_id"] = part["instrument_id"]
            view["kind"] = kind
            view["side"] = part["side"] if kind == MarketInputKind.EXEC else 0
        return out

    # -- replayable: what the rows do ------------------------------------------------------------

    def commands(self, rows: np.ndarray, mode: SyncMode, matcher) -> np.ndarray:
        """The market account's commands for ``rows`` in ``mode`` (see ``market_commands``)."""
        self._grow_instruments(rows["instrument_id"])
        saved = self.scalars[[S_NEXT_MIRROR, S_NEXT_TAKER]].copy()
        while True:
            code, n = market_commands(rows, np.int64(mode), matcher.op, matcher.ht, matcher.lv, matcher.ins,
                                      self.cu, self.cn, self._cmds, self.scalars)
            if code == DONE:
                return self._cmds[:n].copy()
            self.scalars[[S_NEXT_MIRROR, S_NEXT_TAKER]] = saved
            self._cmds = np.zeros(2 * len(self._cmds), dtype=_COMMAND_DT)

    def settle(self, events: np.ndarray, commands: np.ndarray) -> np.ndarray:
        """Users' events of a matcher answer (market events dropped, consumed liquidity noted)."""
        out = np.empty(len(events), dtype=events.dtype)
        self.scalars[S_ROWS] = 0
        i = 0
        while True:
            code, i = settle(i, events, commands, self.cu, self.cn, out, self.scalars)
            if code == DONE:
                return out[:int(self.scalars[S_ROWS])]
            inst = int(events["instrument_id"][i])
            if inst >= self.instruments:
                self._grow_instruments(np.array([inst]))
            else:
                cu = np.zeros(self.cu.shape[:2] + (2 * self.cu.shape[2], 2), dtype=np.int64)
                cu[:, :, :self.cu.shape[2]] = self.cu
                self.cu = cu

    def _grow_instruments(self, ids: np.ndarray) -> None:
        top = int(ids.max()) + 1 if len(ids) else 0
        if top <= self.instruments:
            return
        n = 1 << (top - 1).bit_length()
        old = self.instruments
        for name, fill in (("cu", 0), ("cn", 0), ("synced", 0), ("dirty", 0), ("ws", 0), ("last_px", UNDEF_PRICE),
                           ("_flagged", 0), ("_slot", -1)):
            arr = getattr(self, name)
            grown = np.full((n,) + arr.shape[1:], fill, dtype=arr.dtype)
            grown[:old] = arr
            setattr(self, name, grown)

    # -- views ------------------------------------------------------------------------------------

    def reactivate(self, matcher) -> None:
        """After a restart: instruments with live orders or consumed liquidity are active and dirty,
        so the next feed batch or user command that touches them re-reads them."""
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
