"""The book kernel: L3 orders and L2 levels of every instrument, updated event by event.

State lives in a few flat int64 numpy arrays (``BookEngine`` owns them), so numba kernels run over
them without Python objects:

- ``od`` [slot, 4]: the order table, an open-addressing hash table keyed by order id (linear probing,
  backward-shift deletion): id, price, size | instrument << 32, priority | side << 56 (priority is
  the sequence number of the add or replace that rested the order);
- ``lv`` [slot, 4]: price levels (sort key, price, total size, order count); ``bk`` [book, 3]: each
  (instrument, side) book's run of levels in ``lv`` (start, length, capacity), sorted with the best
  level last so the busy end moves without shifting the rest (bids keyed by price, asks by -price);
- ``st`` [instrument, ST_COLUMNS]: per-instrument state: last BBO, last change, integrity counters,
  conflation marks (what changed in the window, and how, on each side).

Few arrays on purpose: numba counts references on every array it passes to a function, and with a
dozen parallel arrays that bookkeeping (atomic increments) cost more than the book itself.

Rules the kernel keeps: it never allocates; before touching anything for an event it checks that the
event fits (order table under its load limit, a free level slot, output room, the instrument id in
range) and otherwise returns a ``NEED_*`` code so Python grows the arrays and calls again from the
same event. It does no I/O and reads no clock.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from parsers import hashtable
from parsers.hashtable import EMPTY
from orderbook.records import BookFlag
from parsers.schema import UNDEF_PRICE, Action, Flag, Side

_LOW32 = np.int64(0xFFFFFFFF)
_PRIO_MASK = np.int64((1 << 56) - 1)

NO_OUTPUTS = -1  # conflate_ns meaning: keep the books, emit no BBO or L2 rows (book queries, backtests)

# Return codes of ``apply_events`` (with the index of the next event to apply).
DONE = 0
NEED_ORDERS = 1  # grow the order table
NEED_POOL = 2  # grow the level pool
NEED_BOOKS = 3  # an instrument id beyond the book arrays
NEED_OUTPUT = 4  # output arrays full: take the rows and give fresh room

# Integrity counters per instrument.
INTEGRITY_NAMES = ("unknown_order", "size_below_zero", "crossed", "locked", "duplicate_add", "bad_side",
                   "zero_size", "instrument_mismatch")
I_UNKNOWN, I_BELOW_ZERO, I_CROSSED, I_LOCKED, I_DUPLICATE, I_BAD_SIDE, I_ZERO_SIZE, I_MISMATCH = range(8)

# Columns of ``st``: last BBO (bid px, sz, ct, ask px, sz, ct), last change (ts_event, ts_recv,
# sequence, flags), integrity counters, conflation marks (what changed in the window).
ST_BBO = 0
ST_EV = 6
ST_INTEGRITY = 10
ST_DIRTY = ST_INTEGRITY + len(INTEGRITY_NAMES)
# Conflation: per side, the changes of the current window (see ``_note_change``): the window they
# belong to, then (count | kind << 4 | depth << 8), price, size and order count of the first change.
ST_WINDOW = ST_DIRTY + 1
WINDOW_COLUMNS = 5
ST_COLUMNS = ST_WINDOW + 2 * WINDOW_COLUMNS
SNAPSHOT_EXTRA = 2  # levels kept past the top N in a window's snapshot (two changes can move them up)

# Slots of the ``scalars`` array.
S_ORDERS = 0  # live orders
S_ORDER_LIMIT = 1  # load limit of the order table
S_POOL_USED = 2  # level pool slots handed out
S_BBO_ROWS = 3  # output rows written
S_L2_ROWS = 4
S_WINDOW_END = 5  # conflation: end of the current window (ns); 0 before the first event
S_DIRTY = 6  # conflation: instruments waiting in ``dirty``

_ADD = np.uint8(Action.ADD)
_REPLACE = np.uint8(Action.REPLACE)
_CANCEL = np.uint8(Action.CANCEL)
_DELETE = np.uint8(Action.DELETE)
_EXECUTE = np.uint8(Action.EXECUTE)
_CLEAR = np.uint8(Action.CLEAR)
_BID = np.uint8(Side.BID)
_ASK = np.uint8(Side.ASK)
_NONE = np.uint8(Side.NONE)
_UNDEF = np.int64(UNDEF_PRICE)
_F_CROSSED = np.uint16(BookFlag.CROSSED)
_F_LOCKED = np.uint16(BookFlag.LOCKED)
_F_INTEGRITY = np.uint16(BookFlag.INTEGRITY)
_F_CARRY = np.uint16(Flag.LAST | Flag.RECOVERED)
_EV_UNKNOWN_REF = np.uint16(Flag.UNKNOWN_REF)
_EV_DUPLICATE_REF = np.uint16(Flag.DUPLICATE_REF)
_DIRTY_BBO = 1  # conflation: the BBO changed in the window
_DIRTY_BID = 2  # conflation: the bid side's top N changed in the window
_DIRTY_ASK = 4  # conflation: the ask side's top N changed in the window
FIRST_RUN = 8  # level slots given to a book side at its first level


# -- order table --------------------------------------------------------------------------------


order_find = hashtable.find
order_slot = hashtable.slot_for
_order_remove = hashtable.remove
rehash_orders = hashtable.rehash


@nb.njit(cache=True, inline="always", _nrt=False)
def _o_size(od, s):
    return od[s, 2] & _LOW32


@nb.njit(cache=True, inline="always", _nrt=False)
def _o_inst(od, s):
    return od[s, 2] >> 32


@nb.njit(cache=True, inline="always", _nrt=False)
def _o_side(od, s):
    return np.uint8(od[s, 3] >> 56)


# -- price levels -------------------------------------------------------------------------------


@nb.njit(cache=True, inline="always", _nrt=False)
def _level_key(side, price):
    return price if side == _BID else -price


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _level_pos(lv, start, n, key):
    """Lower bound of ``key`` in the sorted run ``lv[start:start+n, 0]`` (absolute index)."""
    lo = start
    hi = start + n
    if n > 0 and lv[hi - 1, 0] < key:  # the busy end is the best (last) level: look there first
        return hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if lv[mid, 0] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


level_pos = _level_pos  # for readers of the engine's level runs (trading.market)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _give_room(lv, bk, scalars, book):
    """Move a full run to a region twice its size at the pool's end; False if the pool is full."""
    new_cap = FIRST_RUN if bk[book, 2] == 0 else 2 * bk[book, 2]
    used = scalars[S_POOL_USED]
    if used + new_cap > lv.shape[0]:
        return False
    old = bk[book, 0]
    for k in range(bk[book, 1]):
        for c in range(4):
            lv[used + k, c] = lv[old + k, c]
    bk[book, 0] = used
    bk[book, 2] = new_cap
    scalars[S_POOL_USED] = used + new_cap
    return True


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _level_add(lv, bk, book, side, price, size):
    """Add one order of ``size`` at ``price``; return (the level's depth from the best, whether the
    level is new) (room checked)."""
    key = _level_key(side, price)
    start = bk[book, 0]
    n = bk[book, 1]
    pos = _level_pos(lv, start, n, key)
    if pos < start + n and lv[pos, 0] == key:
        lv[pos, 2] += size
        lv[pos, 3] += 1
        return start + n - 1 - pos, False
    for k in range(start + n, pos, -1):
        for c in range(4):
            lv[k, c] = lv[k - 1, c]
    lv[pos, 0] = key
    lv[pos, 1] = price
    lv[pos, 2] = size
    lv[pos, 3] = 1
    bk[book, 1] = n + 1
    return start + n - pos, True


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _level_sub(lv, bk, book, side, price, size, orders_gone):
    """Take ``size`` shares and ``orders_gone`` orders off a level; return (depth, removed, size and
    order count before), depth -1 if absent."""
    key = _level_key(side, price)
    start = bk[book, 0]
    n = bk[book, 1]
    pos = _level_pos(lv, start, n, key)
    if pos >= start + n or lv[pos, 0] != key:
        return -1, False, np.int64(0), np.int64(0)
    depth = start + n - 1 - pos
    old_size = lv[pos, 2]
    old_count = lv[pos, 3]
    lv[pos, 2] = lv[pos, 2] - size if lv[pos, 2] > size else 0
    lv[pos, 3] = lv[pos, 3] - orders_gone if lv[pos, 3] > orders_gone else 0
    if lv[pos, 3] == 0:
        for k in range(pos, start + n - 1):
            for c in range(4):
                lv[k, c] = lv[k + 1, c]
        bk[book, 1] = n - 1
        return depth, True, old_size, old_count
    return depth, False, old_size, old_count


# -- outputs ------------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, depth, price, size, count):
    r = l2[row]
    r.ts_event = ts
    r.ts_recv = recv
    r.sequence = seq
    r.price = price
    r.size = size
    r.count = count
    r.instrument_id = inst
    r.venue = venue
    r.flags = flags
    r.side = side
    r.level = depth


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _emit_depth(lv, bk, l2, row, ts, recv, seq, inst, venue, flags, side, book, depth):
    """Write the level now at ``depth`` of a book side (nothing if the side is shallower); next row."""
    n = bk[book, 1]
    if depth < n:
        pos = bk[book, 0] + n - 1 - depth
        _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, depth, lv[pos, 1], lv[pos, 2], lv[pos, 3])
        return row + 1
    return row


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _emit_change(lv, bk, l2, row, ts, recv, seq, inst, venue, flags, side, book, d, removed, price, depth):
    """L2 rows for a level at depth ``d`` that shrank or left; a level that left lets one more in view."""
    if removed:
        _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, d, price, 0, 0)
        row += 1
        if bk[book, 1] >= depth:
            row = _emit_depth(lv, bk, l2, row, ts, recv, seq, inst, venue, flags, side, book, depth - 1)
        return row
    return _emit_depth(lv, bk, l2, row, ts, recv, seq, inst, venue, flags, side, book, d)


# -- conflation windows ---------------------------------------------------------------------------
# A window's rows are the difference between each changed side's top N at the window's start (what
# the last window sent) and at its end. Most windows of a side hold one change, and its rows follow
# from the book at the end plus that change (``_one_change_rows``), so no copy of the top N is made.
# At a side's second change in a window, its top N at the window's start is rebuilt once (the book
# now, both changes undone: ``_rebuild_start``) and the window's end is merged against it.

CHANGE_SAME = 0  # a level kept its price; its size or order count moved
CHANGE_IN = 1  # a new level
CHANGE_OUT = 2  # a level left


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _window_count(st, scalars, inst, s):
    """Changes of side ``s`` recorded in the current window (0, 1, or 2 for two or more)."""
    base = ST_WINDOW + s * WINDOW_COLUMNS
    if st[inst, base] != scalars[S_WINDOW_END]:
        return 0
    return st[inst, base + 1] & 15


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _snapshot(lv, bk, emitted, book, depth):
    """The side's best ``depth + SNAPSHOT_EXTRA`` levels (price, size, count) into ``emitted[book]``."""
    n = bk[book, 1]
    top = bk[book, 0] + n - 1
    k = min(depth + SNAPSHOT_EXTRA, n)
    for j in range(k):
        emitted[book, j, 0] = lv[top - j, 1]
        emitted[book, j, 1] = lv[top - j, 2]
        emitted[book, j, 2] = lv[top - j, 3]
    return k


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _undo(emitted, book, k, kind, d, price, size, count):
    """Take one change back out of the ``k`` snapshot levels; the number of levels after."""
    cap = emitted.shape[1]
    if kind == CHANGE_SAME:
        if d < k:
            emitted[book, d, 1] = size
            emitted[book, d, 2] = count
        return k
    if kind == CHANGE_IN:
        if d >= k:
            return k
        for j in range(d, k - 1):
            for c in range(3):
                emitted[book, j, c] = emitted[book, j + 1, c]
        return k - 1
    if d > k:
        return k
    k = min(k + 1, cap)
    for j in range(k - 1, d, -1):
        for c in range(3):
            emitted[book, j, c] = emitted[book, j - 1, c]
    if d < k:
        emitted[book, d, 0] = price
        emitted[book, d, 1] = size
        emitted[book, d, 2] = count
    return k


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _rebuild_start(lv, bk, st, emitted, emitted_n, inst, s, book, depth, kind, d, price, size, count):
    """The side's top N at the window's start into ``emitted[book]``: the book now with this change
    (``kind`` ...) and the window's first recorded change undone; the side counts two changes."""
    base = ST_WINDOW + s * WINDOW_COLUMNS
    packed = st[inst, base + 1]
    k = _snapshot(lv, bk, emitted, book, depth)
    if kind >= 0:
        k = _undo(emitted, book, k, kind, d, price, size, count)
    if packed & 15 == 1:
        k = _undo(emitted, book, k, (packed >> 4) & 15, packed >> 8, st[inst, base + 2], st[inst, base + 3],
                  st[inst, base + 4])
    emitted_n[book] = min(k, depth)
    st[inst, base + 1] = 2


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _note_change(lv, bk, st, emitted, emitted_n, scalars, inst, side, book, depth, kind, d, price, size, count):
    """Record a change to a side's levels (any depth) for the current conflation window.

    ``price``, ``size``, ``count``: the level's before the change (a new level: its price).
    """
    s = 0 if side == _BID else 1
    base = ST_WINDOW + s * WINDOW_COLUMNS
    if st[inst, base] != scalars[S_WINDOW_END]:
        st[inst, base] = scalars[S_WINDOW_END]
        st[inst, base + 1] = 0
    n = st[inst, base + 1] & 15
    if n == 0:
        st[inst, base + 1] = 1 | (kind << 4) | (np.int64(d) << 8)
        st[inst, base + 2] = price
        st[inst, base + 3] = size
        st[inst, base + 4] = count
    elif n == 1:
        _rebuild_start(lv, bk, st, emitted, emitted_n, inst, s, book, depth, kind, d, price, size, count)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _before_clear(lv, bk, st, emitted, emitted_n, scalars, inst, side, book, depth):
    """A clear is many changes at once: rebuild the side's start now, before it empties."""
    s = 0 if side == _BID else 1
    base = ST_WINDOW + s * WINDOW_COLUMNS
    if st[inst, base] != scalars[S_WINDOW_END]:
        st[inst, base] = scalars[S_WINDOW_END]
        st[inst, base + 1] = 0
    if st[inst, base + 1] & 15 < 2:
        _rebuild_start(lv, bk, st, emitted, emitted_n, inst, s, book, depth, -1, 0, 0, 0, 0)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _one_change_rows(lv, bk, st, l2, row, ts, recv, seq, inst, venue, flags, depth, side, s, book):
    """The rows of a side whose window held one change: they follow from the book now and the change."""
    base = ST_WINDOW + s * WINDOW_COLUMNS
    packed = st[inst, base + 1]
    kind = (packed >> 4) & 15
    d = packed >> 8
    levels = bk[book, 1]
    top = bk[book, 0] + levels - 1
    if kind == CHANGE_SAME:
        if d < depth and (lv[top - d, 2] != st[inst, base + 3] or lv[top - d, 3] != st[inst, base + 4]):
            _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, d, lv[top - d, 1], lv[top - d, 2],
                        lv[top - d, 3])
            row += 1
    elif kind == CHANGE_IN:
        if d < depth:
            _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, d, lv[top - d, 1], lv[top - d, 2],
                        lv[top - d, 3])
            row += 1
            if levels - 1 >= depth:  # the level that was last in view is pushed out of it
                _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, depth - 1, lv[top - depth, 1], 0, 0)
                row += 1
    elif d < depth:  # CHANGE_OUT
        _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, d, st[inst, base + 2], 0, 0)
        row += 1
        if levels >= depth:  # the next level comes into view
            _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, depth - 1, lv[top - depth + 1, 1],
                        lv[top - depth + 1, 2], lv[top - depth + 1, 3])
            row += 1
    return row


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _emit_top_changes(lv, bk, st, emitted, emitted_n, scalars, l2, row, ts, recv, seq, inst, venue, flags, depth,
                      sides):
    """Rows for how an instrument's top N differs from the top N sent at its last window.

    Only the sides in ``sides`` (``_DIRTY_BID`` / ``_DIRTY_ASK`` bits) changed. A side with one change
    in the window: ``_one_change_rows``. Otherwise both lists (the start rebuilt in ``emitted``, the
    book now) run best first, so one merge finds the differences: a level in view whose size or count
    differs from what was sent (or that was not sent) gets a row; a level sent before that is out of
    view gets a size-0 row. Returns the next output row.
    """
    for s in range(2):
        if not sides & (_DIRTY_BID if s == 0 else _DIRTY_ASK):
            continue
        side = _BID if s == 0 else _ASK
        book = 2 * np.int64(inst) + s
        if _window_count(st, scalars, inst, s) == 1:
            row = _one_change_rows(lv, bk, st, l2, row, ts, recv, seq, inst, venue, flags, depth, side, s, book)
            continue
        n = min(depth, bk[book, 1])
        top = bk[book, 0] + bk[book, 1] - 1
        m = emitted_n[book]
        d = 0
        e = 0
        while d < n or e < m:
            # Compare by sort key (bids by price, asks by -price): larger keys are better.
            kd = lv[top - d, 0] if d < n else np.int64(-(2**63) + 1)
            ke = _level_key(side, emitted[book, e, 0]) if e < m else np.int64(-(2**63) + 1)
            if d < n and (e >= m or kd > ke):  # a level now in view that was not sent
                _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, d, lv[top - d, 1], lv[top - d, 2],
                            lv[top - d, 3])
                row += 1
                d += 1
            elif e < m and (d >= n or ke > kd):  # a level sent before, out of view now
                _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, e, emitted[book, e, 0], 0, 0)
                row += 1
                e += 1
            else:  # the same price: send it again only if its size or count moved
                if emitted[book, e, 1] != lv[top - d, 2] or emitted[book, e, 2] != lv[top - d, 3]:
                    _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, d, lv[top - d, 1], lv[top - d, 2],
                                lv[top - d, 3])
                    row += 1
                d += 1
                e += 1
    return row


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _flush_dirty(lv, bk, st, dirty, emitted, emitted_n, bbo_out, l2_out, scalars, venue, depth):
    """Emit the BBO and the top-N changes of every instrument changed in the closing window."""
    for k in range(scalars[S_DIRTY]):
        inst = dirty[k]
        what = st[inst, ST_DIRTY]
        st[inst, ST_DIRTY] = 0
        ts = st[inst, ST_EV]
        recv = st[inst, ST_EV + 1]
        seq = np.uint64(st[inst, ST_EV + 2])
        flags = np.uint16(st[inst, ST_EV + 3])
        if what & (_DIRTY_BID | _DIRTY_ASK):
            scalars[S_L2_ROWS] = _emit_top_changes(lv, bk, st, emitted, emitted_n, scalars, l2_out, scalars[S_L2_ROWS], ts, recv,
                                                   seq, inst, venue, flags, depth, what)
        if what & _DIRTY_BBO:
            _emit_bbo(bbo_out, scalars, st, inst, ts, recv, seq, venue, flags)
    scalars[S_DIRTY] = 0


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _emit_bbo(bbo_out, scalars, st, inst, ts, recv, seq, venue, flags):
    r = bbo_out[scalars[S_BBO_ROWS]]
    r.ts_event = ts
    r.ts_recv = recv
    r.sequence = seq
    r.bid_px = st[inst, ST_BBO]
    r.bid_sz = np.uint64(st[inst, ST_BBO + 1])
    r.bid_ct = np.uint32(st[inst, ST_BBO + 2])
    r.ask_px = st[inst, ST_BBO + 3]
    r.ask_sz = np.uint64(st[inst, ST_BBO + 4])
    r.ask_ct = np.uint32(st[inst, ST_BBO + 5])
    r.instrument_id = inst
    r.venue = venue
    r.flags = flags
    scalars[S_BBO_ROWS] += 1


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _settle(lv, bk, st, dirty, bbo_out, scalars, inst, flags, top_changed, ts, recv, seq, venue, conflate_ns):
    """After an event touched ``inst``: count a crossed or locked book, emit (or mark) a BBO change.

    Returns the flags with CROSSED/LOCKED added.
    """
    bid_px = _UNDEF
    bid_sz = np.int64(0)
    bid_ct = np.int64(0)
    ask_px = _UNDEF
    ask_sz = np.int64(0)
    ask_ct = np.int64(0)
    b = 2 * np.int64(inst)
    if bk[b, 1] > 0:
        pos = bk[b, 0] + bk[b, 1] - 1
        bid_px, bid_sz, bid_ct = lv[pos, 1], lv[pos, 2], lv[pos, 3]
    if bk[b + 1, 1] > 0:
        pos = bk[b + 1, 0] + bk[b + 1, 1] - 1
        ask_px, ask_sz, ask_ct = lv[pos, 1], lv[pos, 2], lv[pos, 3]
    if bid_px != _UNDEF and ask_px != _UNDEF:
        if bid_px > ask_px:
            st[inst, ST_INTEGRITY + I_CROSSED] += 1
            flags |= _F_CROSSED
        elif bid_px == ask_px:
            st[inst, ST_INTEGRITY + I_LOCKED] += 1
            flags |= _F_LOCKED
    changed = (st[inst, ST_BBO] != bid_px or st[inst, ST_BBO + 1] != bid_sz or st[inst, ST_BBO + 2] != bid_ct
               or st[inst, ST_BBO + 3] != ask_px or st[inst, ST_BBO + 4] != ask_sz or st[inst, ST_BBO + 5] != ask_ct)
    if changed:
        st[inst, ST_BBO] = bid_px
        st[inst, ST_BBO + 1] = bid_sz
        st[inst, ST_BBO + 2] = bid_ct
        st[inst, ST_BBO + 3] = ask_px
        st[inst, ST_BBO + 4] = ask_sz
        st[inst, ST_BBO + 5] = ask_ct
    if conflate_ns == 0:
        if changed:
            _emit_bbo(bbo_out, scalars, st, inst, ts, recv, seq, venue, flags)
    elif conflate_ns > 0 and (changed or top_changed):
        st[inst, ST_EV] = ts
        st[inst, ST_EV + 1] = recv
        st[inst, ST_EV + 2] = np.int64(seq)
        st[inst, ST_EV + 3] = np.int64(flags)
        if st[inst, ST_DIRTY] == 0:
            dirty[scalars[S_DIRTY]] = inst
            scalars[S_DIRTY] += 1
        st[inst, ST_DIRTY] |= (_DIRTY_BBO if changed else 0) | top_changed
    return flags


# -- the event loop -----------------------------------------------------------------------------


@nb.njit(cache=True, inline="always", _nrt=False)
def _side_bit(side):
    return _DIRTY_BID if side == _BID else _DIRTY_ASK


@nb.njit(cache=True, inline="always", _nrt=False)
def _book_of(inst, side):
    return 2 * np.int64(inst) + (0 if side == _BID else 1)


@nb.njit(cache=True, nogil=True, _nrt=False)
def apply_events(start, events, venue, depth, conflate_ns, od, lv, bk, st, dirty, emitted, emitted_n,
                 bbo_out, l2_out, scalars):
    """Apply ``events[start:]`` to the books; return (code, index of the next event to apply).

    The events are filled in as they are applied, as ``parsers.order_refs.enrich_events`` would: an
    execution, cancel or delete gets its order's side (and price when the venue left it out; a delete
    its remaining size), a replace its order's side; a reference that is not resting is flagged
    UNKNOWN_REF, an add of a live reference DUPLICATE_REF. So a normalizer feeding this engine needs
    no order index of its own (``ItchNormalizer(orders=engine)``).

    Args:
        events: ``parsers.schema.EVENT`` rows in sequence order (filled in place, see above).
        venue, depth, conflate_ns: venue id for outputs; top-N depth (<= 255); conflation window in
            ns (0: every update is emitted; NO_OUTPUTS: books only, nothing emitted).
        od, lv, bk, st: order table, level pool, book runs, per-instrument state (module docstring).
        dirty: conflation: instruments changed in the current window.
        emitted, emitted_n: conflation: int64 [book, depth, (price, size, count)] and level counts of
            the top N as last sent per book side.
        bbo_out, l2_out: output rows (``records.BBO`` / ``records.L2``); counts in ``scalars``.
        scalars: int64 state, see ``S_*``.

    Returns:
        (DONE, len(events)) or (NEED_*, index of the event that did not fit: nothing of it applied).
    """
    n_inst = st.shape[0]
    l2_room = 4 + 2 * depth  # the most L2 rows one event can write (a clear writes 2 * depth)
    for i in range(start, events.shape[0]):
        ev = events[i]
        a = ev.action
        inst = np.int64(ev.instrument_id)
        ts = ev.ts_event
        if conflate_ns > 0 and ts >= scalars[S_WINDOW_END]:
            if scalars[S_DIRTY] > 0:
                if (scalars[S_BBO_ROWS] + scalars[S_DIRTY] > bbo_out.shape[0]
                        or scalars[S_L2_ROWS] + scalars[S_DIRTY] * 4 * depth > l2_out.shape[0]):
                    return NEED_OUTPUT, i
                _flush_dirty(lv, bk, st, dirty, emitted, emitted_n, bbo_out, l2_out, scalars, venue, depth)
            scalars[S_WINDOW_END] = (ts // conflate_ns + 1) * conflate_ns
        if a != _ADD and a != _EXECUTE and a != _CANCEL and a != _DELETE and a != _REPLACE and a != _CLEAR:
            continue  # non-book trades and crosses leave the book alone
        if inst >= n_inst:
            return NEED_BOOKS, i
        if conflate_ns == 0 and (scalars[S_BBO_ROWS] + 2 > bbo_out.shape[0]
                                 or scalars[S_L2_ROWS] + l2_room > l2_out.shape[0]):
            return NEED_OUTPUT, i
        # The order this event names, and room for what it may insert, before anything changes.
        slot = -1
        if a == _REPLACE:
            slot = order_find(od, np.int64(ev.prev_order_id))
        elif a != _ADD and a != _CLEAR:
            slot = order_find(od, np.int64(ev.order_id))
        if a == _ADD or a == _REPLACE:
            if scalars[S_ORDERS] >= scalars[S_ORDER_LIMIT]:
                return NEED_ORDERS, i
            side_in = _o_side(od, slot) if slot >= 0 else ev.side
            if side_in == _BID or side_in == _ASK:
                book = _book_of(inst, side_in)
                if bk[book, 1] >= bk[book, 2] and not _give_room(lv, bk, scalars, book):
                    return NEED_POOL, i
        flags = np.uint16(ev.flags) & _F_CARRY
        row = scalars[S_L2_ROWS]
        seq = ev.sequence
        recv = ev.ts_recv
        top_changed = 0  # _DIRTY_BID / _DIRTY_ASK bits of the sides whose top N changed
        other = inst  # an instrument the event touches besides its own (an order of another instrument)
        other_top_changed = 0
        named_side = _o_side(od, slot) if slot >= 0 else _NONE  # read now: removing the order moves slots
        if a != _ADD and a != _CLEAR:
            if slot < 0:
                st[inst, ST_INTEGRITY + I_UNKNOWN] += 1
                flags |= _F_INTEGRITY
                ev.flags |= _EV_UNKNOWN_REF
            else:  # fill in what the venue left out (before the order changes or leaves)
                ev.side = named_side
                if a != _REPLACE and ev.price == _UNDEF:
                    ev.price = od[slot, 1]
                if a == _DELETE:
                    ev.size = np.uint32(_o_size(od, slot))
            if slot >= 0 and _o_inst(od, slot) != inst:
                st[inst, ST_INTEGRITY + I_MISMATCH] += 1
                flags |= _F_INTEGRITY
                other = _o_inst(od, slot)
        if a == _CLEAR:
            for sd in range(2):
                side = _BID if sd == 0 else _ASK
                book = 2 * inst + sd
                if conflate_ns == 0:
                    for d in range(min(depth, bk[book, 1])):
                        pos = bk[book, 0] + bk[book, 1] - 1 - d
                        _emit_level(l2_out, row, ts, recv, seq, inst, venue, flags, side, d, lv[pos, 1], 0, 0)
                        row += 1
                if bk[book, 1] > 0:
                    top_changed |= _side_bit(side)
                    if conflate_ns > 0:
                        _before_clear(lv, bk, st, emitted, emitted_n, scalars, inst, side, book, depth)
                bk[book, 1] = 0
            j = 0
            while j < od.shape[0]:
                if od[j, 0] != EMPTY and _o_inst(od, j) == inst:
                    _order_remove(od, j)
                    scalars[S_ORDERS] -= 1
                    continue  # an entry may have shifted into slot j
                j += 1
        elif slot >= 0:
            # Take shares (or the whole order) off the order this event names, at its resting price.
            side = named_side
            remaining = _o_size(od, slot)
            take = remaining
            if a == _EXECUTE or a == _CANCEL:
                take = np.int64(ev.size)
                if take > remaining:
                    st[inst, ST_INTEGRITY + I_BELOW_ZERO] += 1
                    flags |= _F_INTEGRITY
                    take = remaining
            gone = take == remaining
            price = od[slot, 1]
            owner = _o_inst(od, slot)
            book = _book_of(owner, side)
            d, removed, old_size, old_count = _level_sub(lv, bk, book, side, price, take, 1 if gone else 0)
            if conflate_ns > 0 and d >= 0:
                _note_change(lv, bk, st, emitted, emitted_n, scalars, owner, side, book, depth,
                             CHANGE_OUT if removed else CHANGE_SAME, d, price, old_size, old_count)
            if gone:
                _order_remove(od, slot)
                scalars[S_ORDERS] -= 1
            else:
                od[slot, 2] = (remaining - take) | (owner << 32)
            if d >= 0 and d < depth:
                if owner == inst:
                    top_changed |= _side_bit(side)
                else:
                    other_top_changed |= _side_bit(side)
                if conflate_ns == 0:
                    row = _emit_change(lv, bk, l2_out, row, ts, recv, seq, owner, venue, flags, side, book, d,
                                       removed, price, depth)
        if a == _ADD or a == _REPLACE:
            side = ev.side if a == _ADD or slot < 0 else named_side  # a replace keeps its order's side
            size = np.int64(ev.size)
            if a == _REPLACE and slot < 0 and side != _BID and side != _ASK:
                pass  # unknown order and no side to rest on: counted above
            elif side != _BID and side != _ASK:
                st[inst, ST_INTEGRITY + I_BAD_SIDE] += 1
                flags |= _F_INTEGRITY
            elif size == 0:
                st[inst, ST_INTEGRITY + I_ZERO_SIZE] += 1
                flags |= _F_INTEGRITY
            else:
                price = ev.price
                book = _book_of(inst, side)
                key = np.int64(ev.order_id)
                s = order_slot(od, key)
                if od[s, 0] == key:  # a live reference added again: the old order leaves first
                    st[inst, ST_INTEGRITY + I_DUPLICATE] += 1
                    flags |= _F_INTEGRITY
                    ev.flags |= _EV_DUPLICATE_REF
                    owner = _o_inst(od, s)
                    old_side = _o_side(od, s)
                    if owner != inst:
                        other = owner
                    d, removed, old_size, old_count = _level_sub(lv, bk, _book_of(owner, old_side), old_side, od[s, 1],
                                                                 _o_size(od, s), 1)
                    if conflate_ns > 0 and d >= 0:
                        _note_change(lv, bk, st, emitted, emitted_n, scalars, owner, old_side, _book_of(owner, old_side),
                                     depth, CHANGE_OUT if removed else CHANGE_SAME, d, od[s, 1], old_size, old_count)
                    if d >= 0 and d < depth:
                        if owner == inst:
                            top_changed |= _side_bit(old_side)
                        else:
                            other_top_changed |= _side_bit(old_side)
                        if conflate_ns == 0:
                            row = _emit_change(lv, bk, l2_out, row, ts, recv, seq, owner, venue, flags, old_side,
                                               _book_of(owner, old_side), d, removed, od[s, 1], depth)
                else:
                    scalars[S_ORDERS] += 1
                od[s, 0] = key
                od[s, 1] = price
                od[s, 2] = size | (inst << 32)
                od[s, 3] = (np.int64(seq) & _PRIO_MASK) | (np.int64(side) << 56)
                d, new_level = _level_add(lv, bk, book, side, price, size)
                if conflate_ns > 0:
                    if new_level:
                        _note_change(lv, bk, st, emitted, emitted_n, scalars, inst, side, book, depth, CHANGE_IN, d,
                                     price, 0, 0)
                    else:
                        top = bk[book, 0] + bk[book, 1] - 1
                        _note_change(lv, bk, st, emitted, emitted_n, scalars, inst, side, book, depth, CHANGE_SAME, d,
                                     price, lv[top - d, 2] - size, lv[top - d, 3] - 1)
                if d < depth:
                    top_changed |= _side_bit(side)
                    if conflate_ns == 0:
                        row = _emit_depth(lv, bk, l2_out, row, ts, recv, seq, inst, venue, flags, side, book, d)
        flags = _settle(lv, bk, st, dirty, bbo_out, scalars, inst, flags, top_changed, ts, recv, seq, venue,
                        conflate_ns)
        if other != inst:
            _settle(lv, bk, st, dirty, bbo_out, scalars, other, flags, other_top_changed, ts, recv, seq, venue,
                    conflate_ns)
        if conflate_ns == 0:
            for k in range(scalars[S_L2_ROWS], row):
                l2_out[k].flags = flags  # crossed/locked and integrity are known only now
            scalars[S_L2_ROWS] = row
    return DONE, events.shape[0]


@nb.njit(cache=True, nogil=True, _nrt=False)
def flush(venue, depth, lv, bk, st, dirty, emitted, emitted_n, bbo_out, l2_out, scalars):
    """Emit what the open conflation window holds (end of a replay); False if the outputs lack room."""
    if (scalars[S_BBO_ROWS] + scalars[S_DIRTY] > bbo_out.shape[0]
            or scalars[S_L2_ROWS] + scalars[S_DIRTY] * 4 * depth > l2_out.shape[0]):
        return False
    _flush_dirty(lv, bk, st, dirty, emitted, emitted_n, bbo_out, l2_out, scalars, venue, depth)
    return True
