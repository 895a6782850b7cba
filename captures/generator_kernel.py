"""The compiled half of the synthetic ITCH 5.0 generator: a seeded, sequential market simulation.

``simulate`` walks one trading day and writes one *intent* row per ITCH message (type letter, locate,
timestamp and the numbers of that message) into preallocated column arrays; ``captures.generator``
turns the intents into wire bytes with the ``parsers.itch50`` encoders. No I/O, no clock, no Python
objects: the same seed gives the same rows.

Rules the simulation keeps (``tests/captures/test_generator.py`` replays the bytes to check them):
- Exactly one message per step, so the caller gets exactly the number of messages it asked for.
- Every cancel, delete, replace and execution names a live order with enough shares.
- A book is never crossed or locked: a bid is added (or replaced) strictly below the best ask, an ask
  strictly above the best bid.
- Executions take the oldest order (lowest reference: references increase and a replace takes a new
  one, so reference order is time priority) at the best price of the side they hit.
- No execution, non-book trade or cross print for a symbol while it is halted.
- Timestamps never decrease; order references and match numbers increase strictly.

Intent columns (``INTENT_COLUMNS`` in ``captures.generator``; the kernel takes them as one tuple):
kind (u1 type letter), locate (u2), aux1, aux2 (u1 codes: side, state, printable, cross type...),
ts (i8 ns since midnight), ref (u8 order reference; U: original), ref2 (u8 U: new reference;
E C P Q B: match number; I: imbalance shares; K: release time; O: near execution time), shares (u4),
price, price2, price3 (u4 price4: the message's prices).

Prices inside the kernel are integer ticks of $0.01 (``TICK`` price4 units).
"""
from __future__ import annotations

import numba as nb
import numpy as np

TICK = 100  # one cent in price4 units

# ITCH type letters the kernel emits.
MSG_SYSTEM = ord("S")
MSG_ACTION = ord("H")
MSG_REG_SHO = ord("Y")
MSG_MWCB_STATUS = ord("W")
MSG_IPO = ord("K")
MSG_LULD = ord("J")
MSG_OP_HALT = ord("h")
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
MSG_RPII = ord("N")
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
CODE_LOW_VARIATION = ord("L")

# System event codes, in the order of ``sys_ts``.
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

# Indices of ``action_weights`` (relative weights of the non-add book actions in continuous trading).
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


@nb.njit(cache=True)
def _next(rng):
    """splitmix64: the next 64-bit value of the stream held in ``rng[0]``."""
    rng[0] += np.uint64(0x9E3779B97F4A7C15)
    z = rng[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True)
def _uniform(rng):
    """A float64 in [0, 1)."""
    return np.float64(_next(rng) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@nb.njit(cache=True)
def _below(rng, n):
    """An int64 in [0, n) for n >= 1."""
    return np.int64(_uniform(rng) * n)


@nb.njit(cache=True)
def _exponential(rng):
    return -np.log(1.0 - _uniform(rng))


@nb.njit(cache=True)
def _put(cols, i, kind, loc, aux1, aux2, ts, ref, ref2, shares, price, price2, price3):
    """Write intent row ``i``."""
    cols[0][i] = kind
    cols[1][i] = loc
    cols[2][i] = aux1
    cols[3][i] = aux2
    cols[4][i] = ts
    cols[5][i] = ref
    cols[6][i] = ref2
    cols[7][i] = shares
    cols[8][i] = price
    cols[9][i] = price2
    cols[10][i] = price3


@nb.njit(cache=True)
def _best(s, side, o_price, o_side, n_live, best, best_ok):
    """Best price (ticks) of one side of symbol ``s``; NO_BID / NO_ASK when the side is empty."""
    if best_ok[s, side]:
        return best[s, side]
    if side == SIDE_BID:
        p = NO_BID
        for k in range(n_live[s]):
            if o_side[s, k] == SIDE_BID and o_price[s, k] > p:
                p = o_price[s, k]
    else:
        p = NO_ASK
        for k in range(n_live[s]):
            if o_side[s, k] == SIDE_ASK and o_price[s, k] < p:
                p = o_price[s, k]
    best[s, side] = p
    best_ok[s, side] = True
    return p


@nb.njit(cache=True)
def _oldest_at(s, side, price, o_ref, o_price, o_side, n_live):
    """Slot of the oldest (lowest reference) order of ``side`` at ``price``; -1 if none."""
    slot = -1
    ref = np.int64(-1)
    for k in range(n_live[s]):
        if o_side[s, k] == side and o_price[s, k] == price and (slot < 0 or o_ref[s, k] < ref):
            slot = k
            ref = o_ref[s, k]
    return slot


@nb.njit(cache=True)
def _remove(s, k, o_ref, o_price, o_shares, o_side, n_live, best, best_ok):
    """Take the order in slot ``k`` off the book (the last slot moves into the hole)."""
    side = o_side[s, k]
    if best_ok[s, side] and o_price[s, k] == best[s, side]:
        best_ok[s, side] = False
    last = n_live[s] - 1
    o_ref[s, k] = o_ref[s, last]
    o_price[s, k] = o_price[s, last]
    o_shares[s, k] = o_shares[s, last]
    o_side[s, k] = o_side[s, last]
    n_live[s] = last


@nb.njit(cache=True)
def _note_added(s, side, price, best, best_ok):
    """Keep a valid cached best price valid after an order of ``side`` at ``price`` joined the book."""
    if best_ok[s, side]:
        if side == SIDE_BID and price > best[s, side]:
            best[s, side] = price
        elif side == SIDE_ASK and price < best[s, side]:
            best[s, side] = price


@nb.njit(cache=True)
def _order_shares(rng, fparams):
    """Shares of a new order: mostly a few round lots, some odd lots, a few blocks."""
    r = _uniform(rng)
    if r < fparams[P_ODD_LOT]:
        return 1 + _below(rng, 99)
    if r < 0.93:
        return 100 * (1 + np.int64(_exponential(rng) * 1.5))
    return 100 * (5 + np.int64(_exponential(rng) * 25.0))


@nb.njit(cache=True)
def _limit_price(rng, s, side, fair, depth, o_price, o_side, n_live, best, best_ok):
    """A price for a new bid/ask near the fair value that does not cross or lock the other side."""
    g = np.int64(_exponential(rng) * depth[s])
    if side == SIDE_BID:
        p = fair[s] - g
        if p < 1:
            p = 1
        ask = _best(s, SIDE_ASK, o_price, o_side, n_live, best, best_ok)
        if p >= ask:
            p = ask - 1
    else:
        p = fair[s] + 1 + g
        bid = _best(s, SIDE_BID, o_price, o_side, n_live, best, best_ok)
        if p <= bid:
            p = bid + 1
    return p


@nb.njit(cache=True)
def _ref_price(s, fair, o_price, o_side, n_live, best, best_ok):
    """The symbol's reference price (ticks): the fair value held inside the current spread."""
    p = fair[s]
    bid = _best(s, SIDE_BID, o_price, o_side, n_live, best, best_ok)
    ask = _best(s, SIDE_ASK, o_price, o_side, n_live, best, best_ok)
    if bid != NO_BID and p < bid:
        p = bid
    if ask != NO_ASK and p > ask:
        p = ask
    return p


@nb.njit(cache=True)
def simulate(
    cols,
    start,
    last_ts,
    seed,
    sys_ts,
    phase_window,
    phase_target,
    warp,
    cum_weight,
    fair0,
    move_prob,
    move_step,
    depth,
    init_state,
    sched,
    sched_phase_end,
    max_orders,
    action_weights,
    fparams,
):
    """Simulate the day from the start of system hours to the end of messages.

    Args:
        cols: the intent column arrays (see the module docstring), each of the session's length;
            rows ``[0, start)`` already hold the pre-market directory messages.
        start: first row to write. last_ts: timestamp of row ``start - 1`` (ns since midnight).
        seed: uint64 seed of the simulation's random stream.
        sys_ts: int64[5] times of the S events S, Q, M, E, C (ns since midnight).
        phase_window: int64[3, 2] [start, end) of the order flow of pre-market, market hours, post-market.
        phase_target: int64[3] number of rows written by the end of each phase; the two closing
            system events follow the last.
        warp: float64[3, K] flow time (ns) at K equally spaced quantiles of each phase: the intraday
            activity profile.
        cum_weight: float64[S] cumulative activity weight per symbol (locate - 1), last = 1.
        fair0: int64[S] opening fair value in ticks. move_prob, move_step: per step of a symbol, the
            probability and size (ticks) of a fair-value move. depth: mean distance (ticks) of new
            orders from the fair value.
        init_state: int64[S] STATE_* bits at the start of system hours.
        sched: scheduled messages, a tuple of intent columns sorted by time: halts, resumptions,
            NOII, crosses after halts, IPO, LULD collars, RPII, Reg SHO, broken trades...; the kernel
            fills in prices, sizes and match numbers from the book at the time.
        sched_phase_end: int64[3] index of the first scheduled row after each phase.
        max_orders: live orders a symbol's book can hold.
        action_weights: float64[N_ACTIONS] relative weights of the non-add actions.
        fparams: float64[N_FPARAMS] probabilities, see ``P_*``.

    Returns:
        (rows written, scheduled rows used, last order reference, last match number).
    """
    n_sym = cum_weight.shape[0]
    rng = np.zeros(1, np.uint64)
    rng[0] = seed
    o_ref = np.zeros((n_sym, max_orders), np.int64)
    o_price = np.zeros((n_sym, max_orders), np.int64)
    o_shares = np.zeros((n_sym, max_orders), np.int64)
    o_side = np.zeros((n_sym, max_orders), np.int8)
    n_live = np.zeros(n_sym, np.int64)
    best = np.zeros((n_sym, 2), np.int64)
    best_ok = np.zeros((n_sym, 2), np.bool_)
    fair = fair0.copy()
    state = init_state.copy()
    n_total = cols[0].shape[0]
    match_loc = np.zeros(n_total + 1, np.int64)  # locate of each match number's trade
    match_num = np.zeros(n_total + 1, np.int64)
    n_match = 0
    broken = np.zeros(n_total + 1, np.bool_)
    next_ref = np.int64(0)
    next_match = np.int64(0)
    cum_act = np.cumsum(action_weights / action_weights.sum())
    target_size = max(2, max_orders // 2)

    i = start
    si = 0
    for phase in range(3):
        # The system event that opens the phase, then the opening/closing cross block.
        ts = max(last_ts, sys_ts[phase])
        _put(cols, i, MSG_SYSTEM, 0, SYS_CODES[phase], 0, ts, 0, 0, 0, 0, 0, 0)
        i += 1
        last_ts = ts
        target = phase_target[phase]
        send = sched_phase_end[phase]
        if phase > 0:
            cross_type = CODE_OPEN_CROSS if phase == 1 else CODE_CLOSE_CROSS
            n_crossing = 0
            for s in range(n_sym):
                if state[s] == 0:
                    n_crossing += 1
            for s in range(n_sym):
                if state[s] != 0:
                    continue
                n_crossing -= 1
                ts = last_ts + 1000 + _below(rng, 4000)
                # Room left after the crosses still to print and this phase's scheduled rows.
                room = target - i - n_crossing - 1 - (send - si)
                executed = np.int64(0)
                px = _ref_price(s, fair, o_price, o_side, n_live, best, best_ok)
                if room > 2 and n_live[s] > 0 and _uniform(rng) < fparams[P_CROSS_EXEC]:
                    side = np.int64(_below(rng, 2))
                    level = _best(s, side, o_price, o_side, n_live, best, best_ok)
                    if level == NO_BID or level == NO_ASK:
                        side = 1 - side
                        level = _best(s, side, o_price, o_side, n_live, best, best_ok)
                    px = level
                    for _ in range(1 + _below(rng, 2)):
                        k = _oldest_at(s, side, level, o_ref, o_price, o_side, n_live)
                        if k < 0:
                            break
                        q = o_shares[s, k]
                        next_match += 1
                        match_num[n_match] = next_match
                        match_loc[n_match] = s + 1
                        n_match += 1
                        _put(cols, i, MSG_EXEC_PRICE, s + 1, CODE_NONE, 0, ts, o_ref[s, k], next_match, q, level * TICK, 0, 0)
                        i += 1
                        executed += q
                        _remove(s, k, o_ref, o_price, o_shares, o_side, n_live, best, best_ok)
                next_match += 1
                match_num[n_match] = next_match
                match_loc[n_match] = s + 1
                n_match += 1
                paired = executed + 100 * np.int64(_exponential(rng) * 50.0)
                _put(cols, i, MSG_CROSS, s + 1, cross_type, 0, ts, 0, next_match, paired, px * TICK, 0, 0)
                i += 1
                last_ts = ts

        t0 = np.float64(phase_window[phase, 0])
        u = 0.0  # position in the phase's activity quantiles, [0, 1)
        kq = warp.shape[1] - 1
        have_flow = False
        t_flow = np.int64(0)
        while i < target:
            pending = send - si
            flow_left = target - i - pending
            if not have_flow and flow_left > 0:
                gap = _exponential(rng) * (1.0 - u) / (flow_left + 1)
                if gap > (1.0 - u) * 0.999:
                    gap = (1.0 - u) * 0.999
                u += gap
                x = u * kq
                j = min(np.int64(x), kq - 1)
                t_flow = np.int64(warp[phase, j] + (warp[phase, j + 1] - warp[phase, j]) * (x - j))
                if t_flow < t0:
                    t_flow = np.int64(t0)
                have_flow = True
            if si < send and (flow_left <= 0 or sched[4][si] <= t_flow):
                ts = max(last_ts, sched[4][si])
                next_ref, next_match, n_match = _scheduled(
                    cols, i, ts, sched, si, rng, state, fair, fair0, o_price, o_side, n_live, best, best_ok,
                    next_ref, next_match, match_num, match_loc, n_match, broken,
                    o_ref, o_shares, max_orders, action_weights, cum_act, fparams, move_prob, move_step, depth,
                    cum_weight, target_size,
                )
                si += 1
            else:
                ts = max(last_ts, t_flow)
                have_flow = False
                s = _pick_symbol(rng, cum_weight, state)
                next_ref, next_match, n_match = _flow(
                    cols, i, ts, s, rng, state, fair, fair0, o_ref, o_price, o_shares, o_side, n_live, best,
                    best_ok, next_ref, next_match, match_num, match_loc, n_match, max_orders, cum_act,
                    fparams, move_prob, move_step, depth, target_size,
                )
            i += 1
            last_ts = ts
    for e in (SYS_END_SYSTEM, SYS_END_MESSAGES):
        ts = max(last_ts, sys_ts[e])
        _put(cols, i, MSG_SYSTEM, 0, SYS_CODES[e], 0, ts, 0, 0, 0, 0, 0, 0)
        i += 1
        last_ts = ts
    return i, si, next_ref, next_match


@nb.njit(cache=True)
def _pick_symbol(rng, cum_weight, state):
    """A symbol index drawn by activity weight, among those open for orders."""
    n = cum_weight.shape[0]
    while True:
        u = _uniform(rng)
        lo = 0
        hi = n - 1
        while lo < hi:
            mid = (lo + hi) >> 1
            if cum_weight[mid] > u:
                hi = mid
            else:
                lo = mid + 1
        if (state[lo] & STATE_NOT_RELEASED) == 0:
            return lo


@nb.njit(cache=True)
def _flow(
    cols, i, ts, s, rng, state, fair, fair0, o_ref, o_price, o_shares, o_side, n_live, best, best_ok,
    next_ref, next_match, match_num, match_loc, n_match, max_orders, cum_act, fparams, move_prob,
    move_step, depth, target_size,
):
    """One order-flow message for symbol ``s`` at ``ts``. Returns (next_ref, next_match, n_match)."""
    loc = s + 1
    # The fair value walks, reflected into [fair0 / 2, 2 * fair0].
    if _uniform(rng) < move_prob[s]:
        step = move_step[s] * (1 + np.int64(_exponential(rng)))
        f = fair[s] + step if _uniform(rng) < 0.5 else fair[s] - step
        if f < fair0[s] // 2 or f > 2 * fair0[s]:
            f = 2 * fair[s] - f
        fair[s] = max(f, 2)
    n = n_live[s]
    p_add = fparams[P_ADD] + fparams[P_ADD_SLOPE] * (target_size - n) / target_size
    add = n == 0 or (n < max_orders and _uniform(rng) < p_add)
    act = ACT_DELETE
    if not add:
        r = _uniform(rng)
        act = 0
        while act < N_ACTIONS - 1 and cum_act[act] <= r:
            act += 1
        if state[s] != 0 and (act == ACT_EXEC or act == ACT_EXEC_PRICE or act == ACT_TRADE):
            act = ACT_DELETE  # halted: nothing executes; what would have traded is pulled
    if act == ACT_EXEC or act == ACT_EXEC_PRICE:
        bid = _best(s, SIDE_BID, o_price, o_side, n_live, best, best_ok)
        ask = _best(s, SIDE_ASK, o_price, o_side, n_live, best, best_ok)
        # The resting side hit: asks when the fair value sits above the ask, bids when below the bid.
        p_hit_ask = 0.5
        if ask != NO_ASK and fair[s] >= ask:
            p_hit_ask = 0.9
        elif bid != NO_BID and fair[s] < bid:
            p_hit_ask = 0.1
        side = SIDE_ASK if _uniform(rng) < p_hit_ask else SIDE_BID
        if side == SIDE_ASK and ask == NO_ASK:
            side = SIDE_BID
        elif side == SIDE_BID and bid == NO_BID:
            side = SIDE_ASK
        level = bid if side == SIDE_BID else ask
        k = _oldest_at(s, side, level, o_ref, o_price, o_side, n_live)
        rem = o_shares[s, k]
        if rem <= 1 or _uniform(rng) < fparams[P_FULL_EXEC]:
            q = rem
        elif rem >= 200:
            q = 100 * (1 + _below(rng, (rem - 1) // 100))
        else:
            q = 1 + _below(rng, rem - 1)
        next_match += 1 + _below(rng, 3)
        match_num[n_match] = next_match
        match_loc[n_match] = loc
        n_match += 1
        if act == ACT_EXEC:
            _put(cols, i, MSG_EXEC, loc, 0, 0, ts, o_ref[s, k], next_match, q, 0, 0, 0)
        else:
            printable = CODE_NONE if _uniform(rng) < fparams[P_NON_PRINTABLE] else CODE_YES
            _put(cols, i, MSG_EXEC_PRICE, loc, printable, 0, ts, o_ref[s, k], next_match, q, level * TICK, 0, 0)
        if q == rem:
            _remove(s, k, o_ref, o_price, o_shares, o_side, n_live, best, best_ok)
        else:
            o_shares[s, k] = rem - q
    elif act == ACT_TRADE:
        # A non-book (hidden) execution at the midpoint, rounded to the tick, inside the spread.
        px = _ref_price(s, fair, o_price, o_side, n_live, best, best_ok)
        bid = _best(s, SIDE_BID, o_price, o_side, n_live, best, best_ok)
        ask = _best(s, SIDE_ASK, o_price, o_side, n_live, best, best_ok)
        if bid != NO_BID and ask != NO_ASK:
            px = (bid + ask) // 2
        next_match += 1 + _below(rng, 3)
        match_num[n_match] = next_match
        match_loc[n_match] = loc
        n_match += 1
        side_code = CODE_BUY if _uniform(rng) < 0.5 else CODE_SELL
        _put(cols, i, MSG_TRADE, loc, side_code, 0, ts, 0, next_match, _order_shares(rng, fparams), px * TICK, 0, 0)
    elif add:
        side = np.int64(_below(rng, 2))
        px = _limit_price(rng, s, side, fair, depth, o_price, o_side, n_live, best, best_ok)
        q = _order_shares(rng, fparams)
        next_ref += 1 + _below(rng, 4)
        k = n_live[s]
        o_ref[s, k] = next_ref
        o_price[s, k] = px
        o_shares[s, k] = q
        o_side[s, k] = side
        n_live[s] = k + 1
        _note_added(s, side, px, best, best_ok)
        side_code = CODE_BUY if side == SIDE_BID else CODE_SELL
        if _uniform(rng) < fparams[P_MPID]:
            mpid = _below(rng, N_MPIDS)
            _put(cols, i, MSG_ADD_MPID, loc, side_code, mpid, ts, next_ref, 0, q, px * TICK, 0, 0)
        else:
            _put(cols, i, MSG_ADD, loc, side_code, 0, ts, next_ref, 0, q, px * TICK, 0, 0)
    else:
        k = _below(rng, n)
        ref = o_ref[s, k]
        rem = o_shares[s, k]
        if act == ACT_CANCEL and rem >= 2:
            q = 1 + _below(rng, rem - 1)
            if rem >= 200 and _uniform(rng) < 0.8:
                q = 100 * (1 + _below(rng, (rem - 1) // 100))
            o_shares[s, k] = rem - q
            _put(cols, i, MSG_CANCEL, loc, 0, 0, ts, ref, 0, q, 0, 0, 0)
        elif act == ACT_REPLACE:
            side = np.int64(o_side[s, k])
            _remove(s, k, o_ref, o_price, o_shares, o_side, n_live, best, best_ok)
            px = _limit_price(rng, s, side, fair, depth, o_price, o_side, n_live, best, best_ok)
            q = _order_shares(rng, fparams) if _uniform(rng) < 0.3 else rem
            next_ref += 1 + _below(rng, 4)
            k = n_live[s]
            o_ref[s, k] = next_ref
            o_price[s, k] = px
            o_shares[s, k] = q
            o_side[s, k] = side
            n_live[s] = k + 1
            _note_added(s, side, px, best, best_ok)
            _put(cols, i, MSG_REPLACE, loc, 0, 0, ts, ref, next_ref, q, px * TICK, 0, 0)
        else:
            _remove(s, k, o_ref, o_price, o_shares, o_side, n_live, best, best_ok)
            _put(cols, i, MSG_DELETE, loc, 0, 0, ts, ref, 0, 0, 0, 0, 0)
    return next_ref, next_match, n_match


@nb.njit(cache=True)
def _scheduled(
    cols, i, ts, sched, si, rng, state, fair, fair0, o_price, o_side, n_live, best, best_ok,
    next_ref, next_match, match_num, match_loc, n_match, broken,
    o_ref, o_shares, max_orders, action_weights, cum_act, fparams, move_prob, move_step, depth,
    cum_weight, target_size,
):
    """Write scheduled row ``si`` as row ``i`` at ``ts``, filling in what depends on the book."""
    kind = np.int64(sched[0][si])
    loc = np.int64(sched[1][si])
    aux1 = np.int64(sched[2][si])
    aux2 = np.int64(sched[3][si])
    ref2 = np.int64(sched[6][si])
    s = loc - 1
    if kind == MSG_ACTION:
        if aux1 == CODE_HALT:
            state[s] |= STATE_HALTED
        elif aux1 == CODE_QUOTE:
            state[s] = (state[s] | STATE_HALTED) & ~STATE_NOT_RELEASED
        elif aux1 == CODE_TRADING:
            state[s] &= ~(STATE_HALTED | STATE_NOT_RELEASED)
        _put(cols, i, kind, loc, aux1, aux2, ts, 0, 0, 0, 0, 0, 0)
    elif kind == MSG_OP_HALT:
        if aux2 == CODE_HALT:
            state[s] |= STATE_OP_HALTED
        else:
            state[s] &= ~STATE_OP_HALTED
        _put(cols, i, kind, loc, aux1, aux2, ts, 0, 0, 0, 0, 0, 0)
    elif kind == MSG_NOII:
        ref = _ref_price(s, fair, o_price, o_side, n_live, best, best_ok)
        paired = 100 * np.int64(_exponential(rng) * 80.0)
        imbalance = np.int64(0)
        direction = CODE_NONE
        if _uniform(rng) < 0.8:
            imbalance = 100 * (1 + np.int64(_exponential(rng) * 20.0))
            direction = CODE_BUY if _uniform(rng) < 0.5 else CODE_SELL
        near = ref + _below(rng, 3) - 1
        far = near + _below(rng, 5) - 2
        _put(cols, i, kind, loc, direction, aux2, ts, 0, imbalance, paired, ref * TICK, max(far, 1) * TICK, max(near, 1) * TICK)
    elif kind == MSG_CROSS:
        next_match += 1
        match_num[n_match] = next_match
        match_loc[n_match] = loc
        n_match += 1
        px = _ref_price(s, fair, o_price, o_side, n_live, best, best_ok)
        shares = 100 * np.int64(_exponential(rng) * 40.0)
        _put(cols, i, kind, loc, aux1, 0, ts, 0, next_match, shares, px * TICK, 0, 0)
    elif kind == MSG_LULD:
        ref = _ref_price(s, fair, o_price, o_side, n_live, best, best_ok)
        band = max(1, ref // 20)  # 5% collars
        _put(cols, i, kind, loc, 0, 0, ts, 0, ref2, 0, ref * TICK, (ref + band) * TICK, max(ref - band, 1) * TICK)
    elif kind == MSG_IPO:
        _put(cols, i, kind, loc, aux1, 0, ts, 0, ref2, 0, fair0[s] * TICK, 0, 0)
    elif kind == MSG_DLCR:
        near = _ref_price(s, fair, o_price, o_side, n_live, best, best_ok)
        band = max(1, fair0[s] // 10)  # min/max allowable: the issuer's range; collars +-10% of near
        _put(cols, i, kind, loc, aux1, 0, ts, 0, ts, 0, near * TICK, max(fair0[s] - 2 * band, 1) * TICK, (fair0[s] + 2 * band) * TICK)
    elif kind == MSG_BROKEN:
        # Break an earlier, not yet broken trade; with none to break, send order flow instead.
        pick = -1
        if n_match > 0:
            for _ in range(8):
                k = _below(rng, n_match)
                if not broken[k]:
                    pick = k
                    break
        if pick >= 0:
            broken[pick] = True
            _put(cols, i, kind, match_loc[pick], 0, 0, ts, 0, match_num[pick], 0, 0, 0, 0)
        else:
            s = _pick_symbol(rng, cum_weight, state)
            return _flow(
                cols, i, ts, s, rng, state, fair, fair0, o_ref, o_price, o_shares, o_side, n_live, best,
                best_ok, next_ref, next_match, match_num, match_loc, n_match, max_orders, cum_act,
                fparams, move_prob, move_step, depth, target_size,
            )
    else:  # Y, N, W: nothing from the book
        _put(cols, i, kind, loc, aux1, aux2, ts, 0, ref2, 0, 0, 0, 0)
    return next_ref, next_match, n_match
