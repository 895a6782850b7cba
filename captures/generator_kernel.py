"""The compiled half of the synthetic ITCH 5.0 generator: a seeded, sequential market simulation.

``simulate`` walks one trading day and writes one *intent* row per ITCH message (type letter, locate,
timestamp and the numbers of that message) into a preallocated ``INTENT_DTYPE`` array;
``captures.generator`` turns the intents into wire bytes with the ``parsers.itch50`` encoders. No I/O,
no clock, no Python objects: the same seed gives the same rows.

Rules the simulation keeps (``tests/captures/test_generator.py`` replays the bytes to check them):
- Exactly one message per step, so the caller gets exactly the number of messages it asked for.
- Every cancel, delete, replace and execution names a live order with enough shares.
- A book is never crossed or locked: a bid is added (or replaced) strictly below the best ask, an ask
  strictly above the best bid.
- Executions take the oldest order (lowest reference: references increase and a replace takes a new
  one, so reference order is time priority) at the best price of the side they hit.
- No execution, non-book trade or open/close cross for a symbol while it is halted.
- Timestamps never decrease; order references and match numbers increase strictly.

State is packed into a few arrays (``book``, ``sym``, ``symf``, ``ctr``) rather than one array per
field: every array handed to a compiled helper costs reference-count traffic, which dominated the
run time when each field had its own array.

Prices inside the kernel are integer ticks of $0.01 (``TICK`` price4 units).
"""
from __future__ import annotations

import numba as nb
import numpy as np

TICK = 100  # one cent in price4 units

# One row per message. ``ref2`` is the message's second 64-bit number: U new reference; E C P Q B
# match number; I imbalance shares; K release time (s); J extension; O near execution time.
# ``aux1``/``aux2`` hold one-letter codes (side, state, printable, cross type...) or table indices
# (H reason, F/L MPID); prices are price4.
INTENT_DTYPE = np.dtype(
    [
        ("ts", "<i8"),  # ns since midnight, Eastern
        ("ref", "<u8"),  # order reference (U: the original)
        ("ref2", "<u8"),
        ("shares", "<u4"),
        ("price", "<u4"),
        ("price2", "<u4"),
        ("price3", "<u4"),
        ("locate", "<u2"),
        ("kind", "u1"),  # ITCH type letter
        ("aux1", "u1"),
        ("aux2", "u1"),
        ("_reserved1", "u1"),  # padding to 48 bytes (numba takes no void fields)
        ("_reserved2", "<u2"),
    ]
)
assert INTENT_DTYPE.itemsize == 48

# ITCH type letters the kernel emits.
MSG_SYSTEM = ord("S")
MSG_ACTION = ord("H")
MSG_OP_HALT = ord("h")
MSG_IPO = ord("K")
MSG_LULD = ord("J")
MSG_ADD = ord("A")
MSG_ADD_MPID = ord("F")
MSG_EXEC = ord("E")
MSG_EXEC_PRICE = ord("C")
MSG_CANCEL = ord("X")
MSG_DELETE = ord("D")
MSG_REPLACE = ord("U")
MSG_TRADE = ord("P")
MSG_CROSS = ord("Q")
MSG_BROKEN = ord("B")
MSG_NOII = ord("I")
MSG_DLCR = ord("O")

CODE_BUY = ord("B")
CODE_SELL = ord("S")
CODE_NONE = ord("N")
CODE_YES = ord("Y")
CODE_HALT = ord("H")
CODE_QUOTE = ord("Q")
CODE_TRADING = ord("T")
CODE_OPEN_CROSS = ord("O")
CODE_CLOSE_CROSS = ord("C")

# Times of the system events in ``sys_ts``, and their codes.
SYS_START_SYSTEM = 0  # S
SYS_START_MARKET = 1  # Q
SYS_END_MARKET = 2  # M
SYS_END_SYSTEM = 3  # E
SYS_END_MESSAGES = 4  # C
SYS_CODES = (ord("S"), ord("Q"), ord("M"), ord("E"), ord("C"))

# Bits of a symbol's state.
STATE_HALTED = 1  # H halt/pause/quotation period: orders may come and go, nothing executes
STATE_OP_HALTED = 2  # h operational halt on Nasdaq: nothing executes
STATE_NOT_RELEASED = 4  # IPO not yet released for quotation: no orders at all

SIDE_BID = 0
SIDE_ASK = 1
NO_BID = -1
NO_ASK = 1 << 62

# book[s, k, BK_*]: the live orders of symbol s in slots 0..sym[s, SY_LIVE]-1, in no order.
BK_REF = 0
BK_PRICE = 1  # ticks
BK_SHARES = 2
BK_SIDE = 3
N_BK = 4

# sym[s, SY_*]: int64 state per symbol.
SY_LIVE = 0  # live orders
SY_BEST = 1  # SY_BEST + side: cached best price of the side
SY_BEST_OK = 3  # SY_BEST_OK + side: 1 if the cache is valid
SY_FAIR = 5  # fair value (ticks), a random walk
SY_FAIR0 = 6  # opening fair value (ticks)
SY_STATE = 7  # STATE_* bits
SY_MOVE_STEP = 8  # ticks per fair value move
SY_HALF_SPREAD = 9  # ticks between the fair value and where new orders start (0: one-tick spreads)
N_SY = 10

# symf[s, SF_*]: float64 parameters per symbol.
SF_MOVE_PROB = 0  # probability of a fair value move per step of the symbol
SF_DEPTH = 1  # mean distance (ticks) of a new order from the fair value
SF_CUM_WEIGHT = 2  # cumulative activity weight (the last symbol's is 1)
N_SF = 3

# ctr[CT_*]: counters.
CT_REF = 0  # last order reference
CT_MATCH = 1  # last match number
CT_BROKEN = 2  # broken trades so far; their match numbers follow from CT_BROKEN_LIST
CT_BROKEN_LIST = 3
MAX_BROKEN = 64
N_CT = CT_BROKEN_LIST + MAX_BROKEN

# Indices of ``action_weights`` (relative weights of the non-add book actions).
ACT_DELETE = 0
ACT_REPLACE = 1
ACT_CANCEL = 2
ACT_EXEC = 3
ACT_EXEC_PRICE = 4
ACT_TRADE = 5
N_ACTIONS = 6

# Indices of the float parameters ``fparams``.
P_ADD = 0  # probability of an add when the book holds its target size
P_ADD_SLOPE = 1  # how strongly the add probability pulls the book size back to target
P_MPID = 2  # share of adds that carry an attribution (F)
P_FULL_EXEC = 3  # share of executions that take the whole order
P_ODD_LOT = 4  # share of orders below one round lot
P_NON_PRINTABLE = 5  # share of continuous C executions marked non-printable
P_CROSS_EXEC = 6  # probability that resting orders execute in a symbol's open/close cross
N_FPARAMS = 7

N_MPIDS = 16  # attribution codes (aux2 of F) are 0..N_MPIDS-1


@nb.njit(cache=True, inline="always")
def _next(rng):
    """splitmix64: the next 64-bit value of the stream held in ``rng[0]``."""
    rng[0] += np.uint64(0x9E3779B97F4A7C15)
    z = rng[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True, inline="always")
def _uniform(rng):
    """A float64 in [0, 1)."""
    return np.float64(_next(rng) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@nb.njit(cache=True, inline="always")
def _below(rng, n):
    """An int64 in [0, n) for n >= 1."""
    return np.int64(_uniform(rng) * n)


@nb.njit(cache=True, inline="always")
def _exponential(rng):
    return -np.log(1.0 - _uniform(rng))


@nb.njit(cache=True, inline="always")
def _put(out, i, kind, loc, aux1, aux2, ts, ref, ref2, shares, price, price2, price3):
    """Write intent row ``i``."""
    r = out[i]
    r["kind"] = kind
    r["locate"] = loc
    r["aux1"] = aux1
    r["aux2"] = aux2
    r["ts"] = ts
    r["ref"] = ref
    r["ref2"] = ref2
    r["shares"] = shares
    r["price"] = price
    r["price2"] = price2
    r["price3"] = price3


@nb.njit(cache=True, inline="always")
def _best(book, sym, s, side):
    """Best price (ticks) of one side of symbol ``s``; NO_BID / NO_ASK when the side is empty."""
    if sym[s, SY_BEST_OK + side]:
        return sym[s, SY_BEST + side]
    if side == SIDE_BID:
        p = NO_BID
        for k in range(sym[s, SY_LIVE]):
            if book[s, k, BK_SIDE] == SIDE_BID and book[s, k, BK_PRICE] > p:
                p = book[s, k, BK_PRICE]
    else:
        p = NO_ASK
        for k in range(sym[s, SY_LIVE]):
            if book[s, k, BK_SIDE] == SIDE_ASK and book[s, k, BK_PRICE] < p:
                p = book[s, k, BK_PRICE]
    sym[s, SY_BEST + side] = p
    sym[s, SY_BEST_OK + side] = 1
    return p


@nb.njit(cache=True, inline="always")
def _oldest_at(book, sym, s, side, price):
    """Slot of the oldest (lowest reference) order of ``side`` at ``price``; -1 if none."""
    slot = -1
    ref = np.int64(-1)
    for k in range(sym[s, SY_LIVE]):
        if book[s, k, BK_SIDE] == side and book[s, k, BK_PRICE] == price and (slot < 0 or book[s, k, BK_REF] < ref):
            slot = k
            ref = book[s, k, BK_REF]
    return slot


@nb.njit(cache=True, inline="always")
def _remove(book, sym, s, k):
    """Take the order in slot ``k`` off the book (the last slot moves into the hole)."""
    side = book[s, k, BK_SIDE]
    if sym[s, SY_BEST_OK + side] and book[s, k, BK_PRICE] == sym[s, SY_BEST + side]:
        sym[s, SY_BEST_OK + side] = 0
    last = sym[s, SY_LIVE] - 1
    for f in range(N_BK):
        book[s, k, f] = book[s, last, f]
    sym[s, SY_LIVE] = last


@nb.njit(cache=True, inline="always")
def _insert(book, sym, s, ref, side, price, shares):
    """Put a new order on the book, keeping a valid cached best price valid."""
    k = sym[s, SY_LIVE]
    book[s, k, BK_REF] = ref
    book[s, k, BK_PRICE] = price
    book[s, k, BK_SHARES] = shares
    book[s, k, BK_SIDE] = side
    sym[s, SY_LIVE] = k + 1
    if sym[s, SY_BEST_OK + side]:
        best = sym[s, SY_BEST + side]
        if (side == SIDE_BID and price > best) or (side == SIDE_ASK and price < best):
            sym[s, SY_BEST + side] = price


@nb.njit(cache=True, inline="always")
def _staleness(book, sym, s, k):
    """How far the order in slot ``k`` sits on the aggressive side of the fair value (ticks)."""
    if book[s, k, BK_SIDE] == SIDE_BID:
        return book[s, k, BK_PRICE] - sym[s, SY_FAIR]
    return sym[s, SY_FAIR] - book[s, k, BK_PRICE]


@nb.njit(cache=True, inline="always")
def _next_ref(rng, ctr):
    """A new order reference: increasing, in small irregular steps like Nasdaq's."""
    ctr[CT_REF] += 1 + _below(rng, 4)
    return ctr[CT_REF]


@nb.njit(cache=True, inline="always")
def _next_match(rng, ctr):
    ctr[CT_MATCH] += 1 + _below(rng, 3)
    return ctr[CT_MATCH]


@nb.njit(cache=True, inline="always")
def _order_shares(rng, fparams):
    """Shares of a new order: mostly a few round lots, some odd lots, a few blocks."""
    r = _uniform(rng)
    if r < fparams[P_ODD_LOT]:
        return 1 + _below(rng, 99)
    if r < 0.93:
        return 100 * (1 + np.int64(_exponential(rng) * 1.5))
    return 100 * (5 + np.int64(_exponential(rng) * 25.0))


@nb.njit(cache=True, inline="always")
def _limit_price(rng, book, sym, symf, s, side):
    """A price for a new bid/ask near the fair value that does not cross or lock the other side."""
    half = sym[s, SY_HALF_SPREAD]
    g = half + np.int64(_exponential(rng) * symf[s, SF_DEPTH])
    # Against a stale opposite side (the fair value moved through it) the order keeps a spread's
    # distance from it instead of joining one tick away.
    keep = 1 + _below(rng, 2 * half + 1)
    if side == SIDE_BID:
        p = sym[s, SY_FAIR] - g
        ask = _best(book, sym, s, SIDE_ASK)
        if p >= ask:
            p = ask - keep
        p = max(p, min(1, ask - 1))
    else:
        p = sym[s, SY_FAIR] + 1 + g
        bid = _best(book, sym, s, SIDE_BID)
        if p <= bid:
            p = bid + keep
    return p


@nb.njit(cache=True, inline="always")
def _ref_price(book, sym, s):
    """The symbol's reference price (ticks): the fair value held inside the current spread."""
    p = sym[s, SY_FAIR]
    bid = _best(book, sym, s, SIDE_BID)
    ask = _best(book, sym, s, SIDE_ASK)
    if bid != NO_BID and p < bid:
        p = bid
    if ask != NO_ASK and p > ask:
        p = ask
    return p


@nb.njit(cache=True, inline="always")
def _pick_symbol(rng, symf, guide, sym):
    """A symbol index drawn by activity weight, among those open for orders.

    ``guide[j]`` is the first symbol whose cumulative weight exceeds ``j / len(guide)``, so the scan
    from there is short.
    """
    n = symf.shape[0]
    m = guide.shape[0]
    while True:
        u = _uniform(rng)
        k = guide[min(np.int64(u * m), m - 1)]
        while k < n - 1 and symf[k, SF_CUM_WEIGHT] <= u:
            k += 1
        if (sym[k, SY_STATE] & STATE_NOT_RELEASED) == 0:
            return k


@nb.njit(cache=True, nogil=True)
def simulate(out, start, last_ts, seed, sys_ts, phase_window, phase_target, warp, guide, sym, symf, sched,
             sched_phase_end, max_orders, action_weights, fparams):
    """Simulate the day from the start of system hours to the end of messages.

    Args:
        out: INTENT_DTYPE rows, one per message of the session; rows ``[0, start)`` already hold the
            directory messages sent before the start of system hours.
        start: first row to write. last_ts: timestamp of row ``start - 1`` (ns since midnight).
        seed: uint64 seed of the simulation's random stream.
        sys_ts: int64[5] times of the S events S, Q, M, E, C (ns since midnight).
        phase_window: int64[3, 2] [start, end) of the order flow of pre-market, market hours, post-market.
        phase_target: int64[3] rows written by the end of each phase; the two closing system events
            follow the last.
        warp: float64[3, K] flow time (ns) at K equally spaced quantiles of each phase: the intraday
            activity profile.
        guide: int64[M] first symbol with cumulative weight above ``j / M`` (M about 4 symbols).
        sym: int64[S, N_SY] initial symbol state (SY_FAIR, SY_FAIR0, SY_STATE, SY_MOVE_STEP,
            SY_HALF_SPREAD set, the rest zero); updated in place.
        symf: float64[S, N_SF] symbol parameters.
        sched: INTENT_DTYPE scheduled messages sorted by time (halts, resumptions, NOII, crosses after
            halts, IPO, LULD collars, RPII, Reg SHO, broken trades...); the kernel fills in what
            depends on the book at the time: prices, sizes, match numbers.
        sched_phase_end: int64[3] index of the first scheduled row after each phase.
        max_orders: live orders a symbol's book can hold.
        action_weights: float64[N_ACTIONS] relative weights of the non-add actions.
        fparams: float64[N_FPARAMS] probabilities, see ``P_*``.

    Returns:
        (rows written, scheduled rows used, last order reference, last match number).
    """
    n_sym = sym.shape[0]
    rng = np.zeros(1, np.uint64)
    rng[0] = seed
    book = np.zeros((n_sym, max_orders, N_BK), np.int64)
    ctr = np.zeros(N_CT, np.int64)
    cum_act = np.cumsum(action_weights / action_weights.sum())
    target_size = max(2, max_orders // 2)

    i = start
    si = 0
    for phase in range(3):
        # The system event that opens the phase, then the opening/closing crosses.
        ts = max(last_ts, sys_ts[phase])
        _put(out, i, MSG_SYSTEM, 0, SYS_CODES[phase], 0, ts, 0, 0, 0, 0, 0, 0)
        i += 1
        last_ts = ts
        target = phase_target[phase]
        send = sched_phase_end[phase]
        if phase > 0:
            i, last_ts = _crosses(out, i, last_ts, target - (send - si), phase, rng, book, sym, ctr, fparams)
        kq = warp.shape[1] - 1
        u = 0.0  # position in the phase's activity quantiles, [0, 1)
        have_flow = False
        t_flow = np.int64(0)
        while i < target:
            flow_left = target - i - (send - si)
            if not have_flow and flow_left > 0:
                # Evenly spread in quantile space, so the remaining flow always fits the window.
                gap = min(_exponential(rng) * (1.0 - u) / (flow_left + 1), (1.0 - u) * 0.999)
                u += gap
                x = u * kq
                j = min(np.int64(x), kq - 1)
                t_flow = max(np.int64(warp[phase, j] + (warp[phase, j + 1] - warp[phase, j]) * (x - j)),
                             phase_window[phase, 0])
                have_flow = True
            done = False
            if si < send and (flow_left <= 0 or sched[si]["ts"] <= t_flow):
                ts = max(last_ts, sched[si]["ts"])
                done = _scheduled(out, i, ts, sched, si, start, rng, book, sym, ctr)
                si += 1
            else:
                ts = max(last_ts, t_flow)
                have_flow = False
            if not done:
                s = _pick_symbol(rng, symf, guide, sym)
                _flow(out, i, ts, s, rng, book, sym, symf, ctr, max_orders, target_size, cum_act, fparams)
            i += 1
            last_ts = ts
    for e in (SYS_END_SYSTEM, SYS_END_MESSAGES):
        ts = max(last_ts, sys_ts[e])
        _put(out, i, MSG_SYSTEM, 0, SYS_CODES[e], 0, ts, 0, 0, 0, 0, 0, 0)
        i += 1
        last_ts = ts
    return i, si, ctr[CT_REF], ctr[CT_MATCH]


@nb.njit(cache=True, nogil=True)
def _crosses(out, i, last_ts, limit, phase, rng, book, sym, ctr, fparams):
    """The opening (phase 1) or closing (phase 2) cross of every trading symbol, in locate order.

    Some resting orders at one best level execute in the cross (C, non-printable: the Q prints the
    volume), oldest first, at that level's price. Rows stay below ``limit``. Returns (i, last_ts).
    """
    n_sym = sym.shape[0]
    cross_type = CODE_OPEN_CROSS if phase == 1 else CODE_CLOSE_CROSS
    n_crossing = 0
    for s in range(n_sym):
        if sym[s, SY_STATE] == 0:
            n_crossing += 1
    for s in range(n_sym):
        if sym[s, SY_STATE] != 0:
            continue
        n_crossing -= 1
        ts = last_ts + 1000 + _below(rng, 4000)
        executed = np.int64(0)
        px = _ref_price(book, sym, s)
        room = limit - i - n_crossing - 1  # rows left after this symbol's Q and the crosses to come
        if room > 2 and sym[s, SY_LIVE] > 0 and _uniform(rng) < fparams[P_CROSS_EXEC]:
            side = np.int64(_below(rng, 2))
            level = _best(book, sym, s, side)
            if level == NO_BID or level == NO_ASK:
                side = 1 - side
                level = _best(book, sym, s, side)
            px = level
            for _ in range(1 + _below(rng, 2)):
                k = _oldest_at(book, sym, s, side, level)
                if k < 0:
                    break
                q = book[s, k, BK_SHARES]
                _put(out, i, MSG_EXEC_PRICE, s + 1, CODE_NONE, 0, ts, book[s, k, BK_REF], _next_match(rng, ctr), q,
                     level * TICK, 0, 0)
                i += 1
                executed += q
                _remove(book, sym, s, k)
        paired = executed + 100 * np.int64(_exponential(rng) * 50.0)
        _put(out, i, MSG_CROSS, s + 1, cross_type, 0, ts, 0, _next_match(rng, ctr), paired, px * TICK, 0, 0)
        i += 1
        last_ts = ts
    return i, last_ts


@nb.njit(cache=True, nogil=True)
def _flow(out, i, ts, s, rng, book, sym, symf, ctr, max_orders, target_size, cum_act, fparams):
    """One order-flow message for symbol ``s`` at ``ts``."""
    loc = s + 1
    # The fair value walks, reflected into [fair0 / 2, 2 * fair0].
    if _uniform(rng) < symf[s, SF_MOVE_PROB]:
        step = sym[s, SY_MOVE_STEP] * (1 + np.int64(_exponential(rng)))
        fair = sym[s, SY_FAIR]
        f = fair + step if _uniform(rng) < 0.5 else fair - step
        if f < sym[s, SY_FAIR0] // 2 or f > 2 * sym[s, SY_FAIR0]:
            f = 2 * fair - f
        sym[s, SY_FAIR] = max(f, 2)
    n = sym[s, SY_LIVE]
    p_add = fparams[P_ADD] + fparams[P_ADD_SLOPE] * (target_size - n) / target_size
    add = n == 0 or (n < max_orders and _uniform(rng) < p_add)
    act = -1
    if not add:
        r = _uniform(rng)
        act = 0
        while act < N_ACTIONS - 1 and cum_act[act] <= r:
            act += 1
        if sym[s, SY_STATE] != 0 and (act == ACT_EXEC or act == ACT_EXEC_PRICE or act == ACT_TRADE):
            act = ACT_DELETE  # halted: nothing executes; what would have traded is pulled
    if add:
        side = np.int64(_below(rng, 2))
        px = _limit_price(rng, book, sym, symf, s, side)
        q = _order_shares(rng, fparams)
        ref = _next_ref(rng, ctr)
        _insert(book, sym, s, ref, side, px, q)
        side_code = CODE_BUY if side == SIDE_BID else CODE_SELL
        if _uniform(rng) < fparams[P_MPID]:
            _put(out, i, MSG_ADD_MPID, loc, side_code, _below(rng, N_MPIDS), ts, ref, 0, q, px * TICK, 0, 0)
        else:
            _put(out, i, MSG_ADD, loc, side_code, 0, ts, ref, 0, q, px * TICK, 0, 0)
    elif act == ACT_EXEC or act == ACT_EXEC_PRICE:
        bid = _best(book, sym, s, SIDE_BID)
        ask = _best(book, sym, s, SIDE_ASK)
        # The side hit: asks when the fair value sits at or above the ask, bids when below the bid.
        p_hit_ask = 0.5
        if ask != NO_ASK and sym[s, SY_FAIR] >= ask:
            p_hit_ask = 0.9
        elif bid != NO_BID and sym[s, SY_FAIR] < bid:
            p_hit_ask = 0.1
        side = SIDE_ASK if _uniform(rng) < p_hit_ask else SIDE_BID
        if side == SIDE_ASK and ask == NO_ASK:
            side = SIDE_BID
        elif side == SIDE_BID and bid == NO_BID:
            side = SIDE_ASK
        level = bid if side == SIDE_BID else ask
        k = _oldest_at(book, sym, s, side, level)
        rem = book[s, k, BK_SHARES]
        if rem <= 1 or _uniform(rng) < fparams[P_FULL_EXEC]:
            q = rem
        elif rem >= 200:
            q = 100 * (1 + _below(rng, (rem - 1) // 100))
        else:
            q = 1 + _below(rng, rem - 1)
        match = _next_match(rng, ctr)
        if act == ACT_EXEC:
            _put(out, i, MSG_EXEC, loc, 0, 0, ts, book[s, k, BK_REF], match, q, 0, 0, 0)
        else:
            printable = CODE_NONE if _uniform(rng) < fparams[P_NON_PRINTABLE] else CODE_YES
            _put(out, i, MSG_EXEC_PRICE, loc, printable, 0, ts, book[s, k, BK_REF], match, q, level * TICK, 0, 0)
        if q == rem:
            _remove(book, sym, s, k)
        else:
            book[s, k, BK_SHARES] = rem - q
    elif act == ACT_TRADE:
        # A non-book (hidden) execution at the midpoint, rounded down to the tick, inside the spread.
        px = _ref_price(book, sym, s)
        bid = _best(book, sym, s, SIDE_BID)
        ask = _best(book, sym, s, SIDE_ASK)
        if bid != NO_BID and ask != NO_ASK:
            px = (bid + ask) // 2
        side_code = CODE_BUY if _uniform(rng) < 0.5 else CODE_SELL
        _put(out, i, MSG_TRADE, loc, side_code, 0, ts, 0, _next_match(rng, ctr), _order_shares(rng, fparams),
             px * TICK, 0, 0)
    else:
        k = _below(rng, n)
        ref = book[s, k, BK_REF]
        rem = book[s, k, BK_SHARES]
        if act == ACT_CANCEL and rem >= 2:
            q = 1 + _below(rng, rem - 1)
            if rem >= 200 and _uniform(rng) < 0.8:
                q = 100 * (1 + _below(rng, (rem - 1) // 100))
            book[s, k, BK_SHARES] = rem - q
            _put(out, i, MSG_CANCEL, loc, 0, 0, ts, ref, 0, q, 0, 0, 0)
        elif act == ACT_REPLACE:
            side = book[s, k, BK_SIDE]
            _remove(book, sym, s, k)
            px = _limit_price(rng, book, sym, symf, s, side)
            q = _order_shares(rng, fparams) if _uniform(rng) < 0.3 else rem
            new_ref = _next_ref(rng, ctr)
            _insert(book, sym, s, new_ref, side, px, q)
            _put(out, i, MSG_REPLACE, loc, 0, 0, ts, ref, new_ref, q, px * TICK, 0, 0)
        else:
            # Of two random orders, the staler goes: the one further on the wrong side of (or
            # nearer to) the fair value. Stale quotes are pulled first, deep ones rest longer.
            k2 = _below(rng, n)
            if _staleness(book, sym, s, k2) > _staleness(book, sym, s, k):
                k = k2
                ref = book[s, k, BK_REF]
            _remove(book, sym, s, k)
            _put(out, i, MSG_DELETE, loc, 0, 0, ts, ref, 0, 0, 0, 0, 0)


@nb.njit(cache=True, nogil=True)
def _scheduled(out, i, ts, sched, si, start, rng, book, sym, ctr):
    """Write scheduled row ``si`` as row ``i`` at ``ts``, filling in what depends on the book.

    Returns False when nothing was written (a broken trade with no trade to break yet): the caller
    sends order flow in its place.
    """
    row = sched[si]
    kind = np.int64(row["kind"])
    loc = np.int64(row["locate"])
    aux1 = np.int64(row["aux1"])
    aux2 = np.int64(row["aux2"])
    ref2 = np.int64(row["ref2"])
    s = loc - 1
    if kind == MSG_ACTION:
        if aux1 == CODE_HALT:
            sym[s, SY_STATE] |= STATE_HALTED
        elif aux1 == CODE_QUOTE:
            sym[s, SY_STATE] = (sym[s, SY_STATE] | STATE_HALTED) & ~STATE_NOT_RELEASED
        elif aux1 == CODE_TRADING:
            sym[s, SY_STATE] &= ~(STATE_HALTED | STATE_NOT_RELEASED)
        _put(out, i, kind, loc, aux1, aux2, ts, 0, 0, 0, 0, 0, 0)
    elif kind == MSG_OP_HALT:
        if aux2 == CODE_HALT:
            sym[s, SY_STATE] |= STATE_OP_HALTED
        else:
            sym[s, SY_STATE] &= ~STATE_OP_HALTED
        _put(out, i, kind, loc, aux1, aux2, ts, 0, 0, 0, 0, 0, 0)
    elif kind == MSG_NOII:
        ref = _ref_price(book, sym, s)
        paired = 100 * np.int64(_exponential(rng) * 80.0)
        imbalance = np.int64(0)
        direction = CODE_NONE
        if _uniform(rng) < 0.8:
            imbalance = 100 * (1 + np.int64(_exponential(rng) * 20.0))
            direction = CODE_BUY if _uniform(rng) < 0.5 else CODE_SELL
        near = max(ref + _below(rng, 3) - 1, 1)
        far = max(near + _below(rng, 5) - 2, 1)
        _put(out, i, kind, loc, direction, aux2, ts, 0, imbalance, paired, ref * TICK, far * TICK, near * TICK)
    elif kind == MSG_CROSS:  # a halt or IPO cross, reopening the symbol
        px = _ref_price(book, sym, s)
        shares = 100 * np.int64(_exponential(rng) * 40.0)
        _put(out, i, kind, loc, aux1, 0, ts, 0, _next_match(rng, ctr), shares, px * TICK, 0, 0)
    elif kind == MSG_LULD:
        ref = _ref_price(book, sym, s)
        band = max(1, ref // 20)  # 5% collars
        _put(out, i, kind, loc, 0, 0, ts, 0, ref2, 0, ref * TICK, (ref + band) * TICK, max(ref - band, 1) * TICK)
    elif kind == MSG_IPO:
        _put(out, i, kind, loc, aux1, 0, ts, 0, ref2, 0, sym[s, SY_FAIR0] * TICK, 0, 0)
    elif kind == MSG_DLCR:
        # price2/price3: the issuer's min/max allowable prices, +-20% of the IPO price.
        near = _ref_price(book, sym, s)
        band = max(1, sym[s, SY_FAIR0] // 5)
        _put(out, i, kind, loc, aux1, 0, ts, 0, ts, 0, near * TICK, max(sym[s, SY_FAIR0] - band, 1) * TICK,
             (sym[s, SY_FAIR0] + band) * TICK)
    elif kind == MSG_BROKEN:
        return _break_a_trade(out, i, ts, start, rng, ctr)
    else:  # Y, N, W: nothing from the book
        _put(out, i, kind, loc, aux1, aux2, ts, 0, ref2, 0, 0, 0, 0)
    return True


@nb.njit(cache=True, nogil=True)
def _break_a_trade(out, i, ts, start, rng, ctr):
    """A broken trade (B) of an earlier trade not yet broken, found from a random earlier row on."""
    if i <= start or ctr[CT_BROKEN] >= MAX_BROKEN:
        return False
    j0 = start + _below(rng, i - start)
    for step in range(i - start):
        j = j0 + step
        if j >= i:
            j -= i - start
        kind = out[j]["kind"]
        if kind != MSG_EXEC and kind != MSG_EXEC_PRICE and kind != MSG_TRADE and kind != MSG_CROSS:
            continue
        match = np.int64(out[j]["ref2"])
        seen = False
        for b in range(ctr[CT_BROKEN]):
            if ctr[CT_BROKEN_LIST + b] == match:
                seen = True
        if seen:
            continue
        ctr[CT_BROKEN_LIST + ctr[CT_BROKEN]] = match
        ctr[CT_BROKEN] += 1
        _put(out, i, MSG_BROKEN, out[j]["locate"], 0, 0, ts, 0, match, 0, 0, 0, 0)
        return True
    return False
