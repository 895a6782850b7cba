"""The book kernel: L3 orders and L2 levels of every instrument, updated event by event.

State lives in flat numpy arrays (``BookState``), so numba kernels run over them without Python
objects:

- orders: an open-addressing hash table keyed by order id (linear probing, backward-shift deletion)
  holding side, price, remaining size, instrument and time priority (the sequence of the add);
- levels: per (instrument, side) a sorted run of price levels in one shared pool, best level last,
  so the busy end of a book moves without shifting the rest. Bid runs sort by price, ask runs by
  negated price; both keep the best at the end.

Rules the kernel keeps: it never allocates; before touching anything for an event it checks that the
event fits (order table under its load limit, a free level slot, output room, the instrument id in
range) and otherwise returns with a ``NEED_*`` code so Python grows the arrays and calls again from
the same event. It does no I/O and reads no clock.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from orderbook.records import BookFlag
from parsers.schema import UNDEF_PRICE, Action, Flag, Side

EMPTY_KEY = np.uint64(0xFFFFFFFFFFFFFFFF)
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)

# Return codes of ``apply_events`` (with the index of the next event to apply).
DONE = 0
NEED_ORDERS = 1  # grow the order table
NEED_POOL = 2  # grow the level pool
NEED_BOOKS = 3  # an instrument id beyond the book arrays
NEED_OUTPUT = 4  # output arrays full: take the rows and give fresh room

# Integrity counters per instrument (columns of ``integrity``).
INTEGRITY_NAMES = ("unknown_order", "size_below_zero", "crossed", "locked", "duplicate_add", "bad_side",
                   "zero_size", "instrument_mismatch")
I_UNKNOWN, I_BELOW_ZERO, I_CROSSED, I_LOCKED, I_DUPLICATE, I_BAD_SIDE, I_ZERO_SIZE, I_MISMATCH = range(8)

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
_DIRTY_BBO = np.uint8(1)  # conflation: the BBO changed in the window
_DIRTY_L2 = np.uint8(2)  # conflation: the top N changed in the window
FIRST_RUN = 8  # level slots given to a book side at its first level


# -- order table --------------------------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _home(key, mask):
    return np.int64((key * _HASH_MUL) >> np.uint64(20)) & mask


@nb.njit(cache=True, inline="always")
def order_find(keys, key):
    mask = keys.shape[0] - 1
    i = _home(key, mask)
    while True:
        k = keys[i]
        if k == key:
            return i
        if k == EMPTY_KEY:
            return -1
        i = (i + 1) & mask


@nb.njit(cache=True, inline="always")
def _order_slot(keys, key):
    mask = keys.shape[0] - 1
    i = _home(key, mask)
    while keys[i] != key and keys[i] != EMPTY_KEY:
        i = (i + 1) & mask
    return i


@nb.njit(cache=True, nogil=True)
def _order_remove(keys, o_price, o_size, o_side, o_inst, o_prio, slot):
    mask = keys.shape[0] - 1
    hole = slot
    i = (slot + 1) & mask
    while keys[i] != EMPTY_KEY:
        home = _home(keys[i], mask)
        if ((i - home) & mask) >= ((i - hole) & mask):
            keys[hole] = keys[i]
            o_price[hole] = o_price[i]
            o_size[hole] = o_size[i]
            o_side[hole] = o_side[i]
            o_inst[hole] = o_inst[i]
            o_prio[hole] = o_prio[i]
            hole = i
        i = (i + 1) & mask
    keys[hole] = EMPTY_KEY


@nb.njit(cache=True, nogil=True)
def rehash_orders(okeys, oprice, osize, oside, oinst, oprio, keys, o_price, o_size, o_side, o_inst, o_prio):
    for j in range(okeys.shape[0]):
        if okeys[j] != EMPTY_KEY:
            i = _order_slot(keys, okeys[j])
            keys[i] = okeys[j]
            o_price[i] = oprice[j]
            o_size[i] = osize[j]
            o_side[i] = oside[j]
            o_inst[i] = oinst[j]
            o_prio[i] = oprio[j]


# -- price levels -------------------------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _level_key(side, price):
    return price if side == _BID else -price


@nb.njit(cache=True, inline="always")
def _level_pos(lv_key, start, n, key):
    """Lower bound of ``key`` in the sorted run ``lv_key[start:start+n]`` (absolute index)."""
    lo = start
    hi = start + n
    # The busy end is the best (last) level: look there first.
    if n > 0 and lv_key[hi - 1] < key:
        return hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if lv_key[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(cache=True, nogil=True)
def _needs_slot(b_len, b_cap, book):
    return b_len[book] >= b_cap[book]


@nb.njit(cache=True, nogil=True)
def _give_room(lv_key, lv_price, lv_size, lv_count, b_start, b_len, b_cap, scalars, book):
    """Move a full run to a region twice its size at the pool's end; False if the pool is full."""
    new_cap = FIRST_RUN if b_cap[book] == 0 else 2 * b_cap[book]
    used = scalars[S_POOL_USED]
    if used + new_cap > lv_key.shape[0]:
        return False
    old = b_start[book]
    for k in range(b_len[book]):
        lv_key[used + k] = lv_key[old + k]
        lv_price[used + k] = lv_price[old + k]
        lv_size[used + k] = lv_size[old + k]
        lv_count[used + k] = lv_count[old + k]
    b_start[book] = used
    b_cap[book] = new_cap
    scalars[S_POOL_USED] = used + new_cap
    return True


@nb.njit(cache=True, inline="always")
def _level_add(lv_key, lv_price, lv_size, lv_count, b_start, b_len, book, side, price, size):
    """Add one order of ``size`` at ``price``; return the level's depth from the best (room checked)."""
    key = _level_key(side, price)
    start = b_start[book]
    n = b_len[book]
    pos = _level_pos(lv_key, start, n, key)
    if pos < start + n and lv_key[pos] == key:
        lv_size[pos] += size
        lv_count[pos] += 1
        return start + n - 1 - pos
    for k in range(start + n, pos, -1):
        lv_key[k] = lv_key[k - 1]
        lv_price[k] = lv_price[k - 1]
        lv_size[k] = lv_size[k - 1]
        lv_count[k] = lv_count[k - 1]
    lv_key[pos] = key
    lv_price[pos] = price
    lv_size[pos] = size
    lv_count[pos] = 1
    b_len[book] = n + 1
    return start + n - pos


@nb.njit(cache=True, inline="always")
def _level_sub(lv_key, lv_price, lv_size, lv_count, b_start, b_len, book, side, price, size, orders_gone):
    """Take ``size`` shares and ``orders_gone`` orders off a level; return (depth, removed) or (-1, False)."""
    key = _level_key(side, price)
    start = b_start[book]
    n = b_len[book]
    pos = _level_pos(lv_key, start, n, key)
    if pos >= start + n or lv_key[pos] != key:
        return -1, False
    depth = start + n - 1 - pos
    lv_size[pos] = lv_size[pos] - size if lv_size[pos] > size else 0
    lv_count[pos] = lv_count[pos] - orders_gone if lv_count[pos] > orders_gone else 0
    if lv_count[pos] == 0:
        for k in range(pos, start + n - 1):
            lv_key[k] = lv_key[k + 1]
            lv_price[k] = lv_price[k + 1]
            lv_size[k] = lv_size[k + 1]
            lv_count[k] = lv_count[k + 1]
        b_len[book] = n - 1
        return depth, True
    return depth, False


# -- outputs ------------------------------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _emit_level(l2, row, ev_ts, ev_recv, ev_seq, inst, venue, flags, side, depth, price, size, count):
    r = l2[row]
    r.ts_event = ev_ts
    r.ts_recv = ev_recv
    r.sequence = ev_seq
    r.price = price
    r.size = size
    r.count = count
    r.instrument_id = inst
    r.venue = venue
    r.flags = flags
    r.side = side
    r.level = depth


@nb.njit(cache=True, inline="always")
def _emit_depth(lv_price, lv_size, lv_count, b_start, b_len, l2, row, ev_ts, ev_recv, ev_seq, inst, venue,
                flags, side, book, depth):
    """Write the level now at ``depth`` of a book side (size 0 if the side is shallower); next row."""
    n = b_len[book]
    if depth < n:
        pos = b_start[book] + n - 1 - depth
        _emit_level(l2, row, ev_ts, ev_recv, ev_seq, inst, venue, flags, side, depth,
                    lv_price[pos], lv_size[pos], lv_count[pos])
        return row + 1
    return row


@nb.njit(cache=True, inline="always")
def _best(lv_price, lv_size, lv_count, b_start, b_len, book):
    n = b_len[book]
    if n == 0:
        return _UNDEF, np.uint64(0), np.uint32(0)
    pos = b_start[book] + n - 1
    return lv_price[pos], lv_size[pos], lv_count[pos]


@nb.njit(cache=True, nogil=True)
def _emit_top_changes(lv_price, lv_size, lv_count, b_start, b_len, emitted, emitted_n, l2, row, ts, recv, seq,
                      inst, venue, flags, depth):
    """Rows for how an instrument's top N differs from the top N sent at its last window; remember it.

    A level in view whose size or count differs from what was sent (or that was not sent) gets a row;
    a level sent before that is out of view now gets a size-0 row. Returns the next output row.
    """
    for s in range(2):
        side = _BID if s == 0 else _ASK
        book = 2 * np.int64(inst) + s
        n = min(depth, b_len[book])
        top = b_start[book] + b_len[book] - 1
        m = emitted_n[book]
        for d in range(n):
            pos = top - d
            same = False
            for e in range(m):
                if emitted[book, e, 0] == lv_price[pos]:
                    same = emitted[book, e, 1] == np.int64(lv_size[pos]) and emitted[book, e, 2] == np.int64(lv_count[pos])
                    break
            if not same:
                _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, d, lv_price[pos], lv_size[pos],
                            lv_count[pos])
                row += 1
        for e in range(m):
            price = emitted[book, e, 0]
            in_view = False
            for d in range(n):
                if lv_price[top - d] == price:
                    in_view = True
                    break
            if not in_view:
                _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, e, price, 0, 0)
                row += 1
        for d in range(n):
            emitted[book, d, 0] = lv_price[top - d]
            emitted[book, d, 1] = np.int64(lv_size[top - d])
            emitted[book, d, 2] = np.int64(lv_count[top - d])
        emitted_n[book] = n
    return row


# -- the event loop -----------------------------------------------------------------------------


@nb.njit(cache=True, inline="always")
def _book_of(inst, side):
    return 2 * np.int64(inst) + (0 if side == _BID else 1)


@nb.njit(cache=True, nogil=True)
def _flush_dirty(lv_price, lv_size, lv_count, b_start, b_len, last_bbo, last_ev, dirty, is_dirty, emitted,
                 emitted_n, bbo_out, l2_out, scalars, venue, depth):
    """Emit the BBO and the top-N changes of every instrument changed in the closing window."""
    for k in range(scalars[S_DIRTY]):
        inst = dirty[k]
        what = is_dirty[inst]
        is_dirty[inst] = 0
        flags = np.uint16(last_ev[inst, 3])
        if what & _DIRTY_L2:
            scalars[S_L2_ROWS] = _emit_top_changes(lv_price, lv_size, lv_count, b_start, b_len, emitted, emitted_n,
                                                   l2_out, scalars[S_L2_ROWS], last_ev[inst, 0], last_ev[inst, 1],
                                                   np.uint64(last_ev[inst, 2]), inst, venue, flags, depth)
        if not what & _DIRTY_BBO:
            continue
        r = bbo_out[scalars[S_BBO_ROWS]]
        r.ts_event = last_ev[inst, 0]
        r.ts_recv = last_ev[inst, 1]
        r.sequence = np.uint64(last_ev[inst, 2])
        r.bid_px = last_bbo[inst, 0]
        r.bid_sz = np.uint64(last_bbo[inst, 1])
        r.bid_ct = np.uint32(last_bbo[inst, 2])
        r.ask_px = last_bbo[inst, 3]
        r.ask_sz = np.uint64(last_bbo[inst, 4])
        r.ask_ct = np.uint32(last_bbo[inst, 5])
        r.instrument_id = inst
        r.venue = venue
        r.flags = flags
        scalars[S_BBO_ROWS] += 1
    scalars[S_DIRTY] = 0


@nb.njit(cache=True, nogil=True)
def apply_events(start, events, venue, depth, conflate_ns,
                 keys, o_price, o_size, o_side, o_inst, o_prio,
                 lv_key, lv_price, lv_size, lv_count, b_start, b_len, b_cap,
                 last_bbo, last_ev, integrity, dirty, is_dirty, emitted, emitted_n, bbo_out, l2_out, scalars):
    """Apply ``events[start:]`` to the books; return (code, index of the next event to apply).

    Args:
        events: ``parsers.schema.EVENT`` rows in sequence order, as the normalizer enriched them.
        venue, depth, conflate_ns: venue id for outputs; top-N depth (<= 255); conflation window in
            ns (0: every update is emitted).
        keys .. o_prio: the order table (``BookState``); lv_* / b_*: level pool and book runs.
        last_bbo: int64 [instrument, 6] bid px/sz/ct, ask px/sz/ct as last emitted or seen.
        last_ev: int64 [instrument, 4] ts_event, ts_recv, sequence, flags of the last change.
        integrity: int64 [instrument, len(INTEGRITY_NAMES)] counters.
        dirty, is_dirty: conflation: instruments changed in the current window, and what changed
            (``_DIRTY_BBO`` | ``_DIRTY_L2`` bits).
        emitted, emitted_n: conflation: int64 [book, depth, (price, size, count)] and level counts of
            the top N as last sent per book side.
        bbo_out, l2_out: output rows (``records.BBO`` / ``records.L2``); counts in ``scalars``.
        scalars: int64 state, see ``S_*``.

    Returns:
        (DONE, len(events)) or (NEED_*, index of the event that did not fit: nothing of it applied).
    """
    n_inst = last_bbo.shape[0]
    l2_room = 4 + 2 * depth  # the most L2 rows one event can write (a clear writes 2 * depth)
    for i in range(start, events.shape[0]):
        ev = events[i]
        a = ev.action
        inst = ev.instrument_id
        ts = ev.ts_event
        if conflate_ns > 0 and ts >= scalars[S_WINDOW_END]:
            if scalars[S_DIRTY] > 0:
                if (scalars[S_BBO_ROWS] + scalars[S_DIRTY] > bbo_out.shape[0]
                        or scalars[S_L2_ROWS] + scalars[S_DIRTY] * 4 * depth > l2_out.shape[0]):
                    return NEED_OUTPUT, i
                _flush_dirty(lv_price, lv_size, lv_count, b_start, b_len, last_bbo, last_ev, dirty, is_dirty,
                             emitted, emitted_n, bbo_out, l2_out, scalars, venue, depth)
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
            slot = order_find(keys, ev.prev_order_id)
        elif a != _ADD and a != _CLEAR:
            slot = order_find(keys, ev.order_id)
        if a == _ADD or a == _REPLACE:
            if scalars[S_ORDERS] >= scalars[S_ORDER_LIMIT]:
                return NEED_ORDERS, i
            side_in = o_side[slot] if slot >= 0 else ev.side
            if side_in == _BID or side_in == _ASK:
                book = _book_of(inst, side_in)
                if b_len[book] >= b_cap[book]:
                    if not _give_room(lv_key, lv_price, lv_size, lv_count, b_start, b_len, b_cap, scalars, book):
                        return NEED_POOL, i
        flags = np.uint16(ev.flags) & _F_CARRY
        row = scalars[S_L2_ROWS]
        seq = ev.sequence
        recv = ev.ts_recv
        top_changed = False
        other = inst  # an instrument the event touches besides its own (an order of another instrument)
        other_top_changed = False
        named_side = o_side[slot] if slot >= 0 else _NONE  # read now: removing the order moves slots
        if a != _ADD and a != _CLEAR:
            if slot < 0:
                integrity[inst, I_UNKNOWN] += 1
                flags |= _F_INTEGRITY
            elif o_inst[slot] != inst:
                integrity[inst, I_MISMATCH] += 1
                flags |= _F_INTEGRITY
                other = o_inst[slot]
        if a == _CLEAR:
            for sd in range(2):
                side = _BID if sd == 0 else _ASK
                book = 2 * np.int64(inst) + sd
                if conflate_ns == 0:
                    for d in range(min(depth, b_len[book])):
                        pos = b_start[book] + b_len[book] - 1 - d
                        _emit_level(l2_out, row, ts, recv, seq, inst, venue, flags, side, d, lv_price[pos], 0, 0)
                        row += 1
                if b_len[book] > 0:
                    top_changed = True
                b_len[book] = 0
            j = 0
            while j < keys.shape[0]:
                if keys[j] != EMPTY_KEY and o_inst[j] == inst:
                    _order_remove(keys, o_price, o_size, o_side, o_inst, o_prio, j)
                    scalars[S_ORDERS] -= 1
                    continue  # an entry may have shifted into slot j
                j += 1
        elif slot >= 0:
            # Take shares (or the whole order) off the order this event names, at its resting price.
            side = o_side[slot]
            remaining = o_size[slot]
            take = remaining
            if a == _EXECUTE or a == _CANCEL:
                take = ev.size
                if take > remaining:
                    integrity[inst, I_BELOW_ZERO] += 1
                    flags |= _F_INTEGRITY
                    take = remaining
            gone = take == remaining
            price = o_price[slot]
            owner = o_inst[slot]
            book = _book_of(owner, side)
            d, removed = _level_sub(lv_key, lv_price, lv_size, lv_count, b_start, b_len, book, side, price,
                                    np.uint64(take), 1 if gone else 0)
            if gone:
                _order_remove(keys, o_price, o_size, o_side, o_inst, o_prio, slot)
                scalars[S_ORDERS] -= 1
            else:
                o_size[slot] = remaining - take
            if d >= 0 and d < depth:
                if owner == inst:
                    top_changed = True
                else:
                    other_top_changed = True
                if conflate_ns == 0:
                    row = _emit_change(lv_price, lv_size, lv_count, b_start, b_len, l2_out, row, ts, recv, seq,
                                       owner, venue, flags, side, book, d, removed, price, depth)
        if a == _ADD or a == _REPLACE:
            side = ev.side if a == _ADD or slot < 0 else named_side  # a replace keeps its order's side
            size = ev.size
            if a == _REPLACE and slot < 0 and side != _BID and side != _ASK:
                pass  # unknown order and no side to rest on: counted above
            elif side != _BID and side != _ASK:
                integrity[inst, I_BAD_SIDE] += 1
                flags |= _F_INTEGRITY
            elif size == 0:
                integrity[inst, I_ZERO_SIZE] += 1
                flags |= _F_INTEGRITY
            else:
                price = ev.price
                book = _book_of(inst, side)
                key = ev.order_id
                s = _order_slot(keys, key)
                if keys[s] == key:  # a live reference added again: the old order leaves first
                    integrity[inst, I_DUPLICATE] += 1
                    flags |= _F_INTEGRITY
                    owner = o_inst[s]
                    if owner != inst:
                        other = owner
                    d, removed = _level_sub(lv_key, lv_price, lv_size, lv_count, b_start, b_len,
                                            _book_of(owner, o_side[s]), o_side[s], o_price[s], np.uint64(o_size[s]), 1)
                    if d >= 0 and d < depth:
                        if owner == inst:
                            top_changed = True
                        else:
                            other_top_changed = True
                        if conflate_ns == 0:
                            row = _emit_change(lv_price, lv_size, lv_count, b_start, b_len, l2_out, row, ts, recv,
                                               seq, owner, venue, flags, o_side[s], _book_of(owner, o_side[s]), d,
                                               removed, o_price[s], depth)
                else:
                    scalars[S_ORDERS] += 1
                keys[s] = key
                o_price[s] = price
                o_size[s] = size
                o_side[s] = side
                o_inst[s] = inst
                o_prio[s] = seq
                d = _level_add(lv_key, lv_price, lv_size, lv_count, b_start, b_len, book, side, price, np.uint64(size))
                if d < depth:
                    top_changed = True
                    if conflate_ns == 0:
                        row = _emit_depth(lv_price, lv_size, lv_count, b_start, b_len, l2_out, row, ts, recv, seq,
                                          inst, venue, flags, side, book, d)
        flags = _settle(inst, flags, top_changed, ts, recv, seq, venue, conflate_ns, lv_price, lv_size, lv_count,
                        b_start, b_len, last_bbo, last_ev, integrity, dirty, is_dirty, bbo_out, scalars)
        if other != inst:
            _settle(other, flags, other_top_changed, ts, recv, seq, venue, conflate_ns, lv_price, lv_size, lv_count,
                    b_start, b_len, last_bbo, last_ev, integrity, dirty, is_dirty, bbo_out, scalars)
        if conflate_ns == 0:
            for k in range(scalars[S_L2_ROWS], row):
                l2_out[k].flags = flags  # crossed/locked and integrity are known only now
            scalars[S_L2_ROWS] = row
    return DONE, events.shape[0]


@nb.njit(cache=True, inline="always")
def _settle(inst, flags, top_changed, ts, recv, seq, venue, conflate_ns, lv_price, lv_size, lv_count, b_start, b_len,
            last_bbo, last_ev, integrity, dirty, is_dirty, bbo_out, scalars):
    """After an event touched ``inst``: count a crossed or locked book, emit (or mark) a BBO change.

    Returns the flags with CROSSED/LOCKED added.
    """
    bid_px, bid_sz, bid_ct = _best(lv_price, lv_size, lv_count, b_start, b_len, 2 * np.int64(inst))
    ask_px, ask_sz, ask_ct = _best(lv_price, lv_size, lv_count, b_start, b_len, 2 * np.int64(inst) + 1)
    if bid_px != _UNDEF and ask_px != _UNDEF:
        if bid_px > ask_px:
            integrity[inst, I_CROSSED] += 1
            flags |= _F_CROSSED
        elif bid_px == ask_px:
            integrity[inst, I_LOCKED] += 1
            flags |= _F_LOCKED
    # Scalar indexing throughout: a row view (last_bbo[inst]) would cost reference counting per event.
    bbo_changed = (last_bbo[inst, 0] != bid_px or last_bbo[inst, 1] != np.int64(bid_sz)
                   or last_bbo[inst, 2] != np.int64(bid_ct) or last_bbo[inst, 3] != ask_px
                   or last_bbo[inst, 4] != np.int64(ask_sz) or last_bbo[inst, 5] != np.int64(ask_ct))
    if bbo_changed:
        last_bbo[inst, 0] = bid_px
        last_bbo[inst, 1] = np.int64(bid_sz)
        last_bbo[inst, 2] = np.int64(bid_ct)
        last_bbo[inst, 3] = ask_px
        last_bbo[inst, 4] = np.int64(ask_sz)
        last_bbo[inst, 5] = np.int64(ask_ct)
    if conflate_ns == 0:
        if bbo_changed:
            r = bbo_out[scalars[S_BBO_ROWS]]
            r.ts_event = ts
            r.ts_recv = recv
            r.sequence = seq
            r.bid_px = bid_px
            r.bid_sz = bid_sz
            r.bid_ct = bid_ct
            r.ask_px = ask_px
            r.ask_sz = ask_sz
            r.ask_ct = ask_ct
            r.instrument_id = inst
            r.venue = venue
            r.flags = flags
            scalars[S_BBO_ROWS] += 1
    elif bbo_changed or top_changed:
        last_ev[inst, 0] = ts
        last_ev[inst, 1] = recv
        last_ev[inst, 2] = np.int64(seq)
        last_ev[inst, 3] = np.int64(flags)
        if is_dirty[inst] == 0:
            dirty[scalars[S_DIRTY]] = inst
            scalars[S_DIRTY] += 1
        is_dirty[inst] |= (_DIRTY_BBO if bbo_changed else 0) | (_DIRTY_L2 if top_changed else 0)
    return flags


@nb.njit(cache=True, inline="always")
def _emit_change(lv_price, lv_size, lv_count, b_start, b_len, l2, row, ts, recv, seq, inst, venue, flags, side,
                 book, d, removed, price, depth):
    """L2 rows for a level at depth ``d`` that shrank or left; a level that left lets one more in view."""
    if removed:
        _emit_level(l2, row, ts, recv, seq, inst, venue, flags, side, d, price, 0, 0)
        row += 1
        if b_len[book] >= depth:
            row = _emit_depth(lv_price, lv_size, lv_count, b_start, b_len, l2, row, ts, recv, seq, inst, venue,
                              flags, side, book, depth - 1)
        return row
    return _emit_depth(lv_price, lv_size, lv_count, b_start, b_len, l2, row, ts, recv, seq, inst, venue, flags,
                       side, book, d)


@nb.njit(cache=True, nogil=True)
def flush(venue, depth, lv_price, lv_size, lv_count, b_start, b_len, last_bbo, last_ev, dirty, is_dirty,
          emitted, emitted_n, bbo_out, l2_out, scalars):
    """Emit what the open conflation window holds (end of a replay); False if the outputs lack room."""
    if (scalars[S_BBO_ROWS] + scalars[S_DIRTY] > bbo_out.shape[0]
            or scalars[S_L2_ROWS] + scalars[S_DIRTY] * 4 * depth > l2_out.shape[0]):
        return False
    _flush_dirty(lv_price, lv_size, lv_count, b_start, b_len, last_bbo, last_ev, dirty, is_dirty,
                 emitted, emitted_n, bbo_out, l2_out, scalars, venue, depth)
    return True
