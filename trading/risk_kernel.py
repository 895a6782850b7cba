"""The pre-trade risk gate of the order path: ``trading.risk``'s rules compiled over a batch of commands.

``RiskGate.check(commands)`` is one numba kernel call per batch of ``trading.orders.COMMAND`` rows and
answers a ``trading.orders.Reason`` code per command (0 = passed). ``RiskGate.on_events(events)``
takes the matcher's ``ORDER_EVENT`` rows back: fills go to the ``Portfolio`` and to the day trade
ledger, and every event that ends or shrinks an order releases what it reserved.

Rules this module keeps:
- the rules, their order and their numbers are ``trading.risk.RiskChecker``'s (docs/risk.md), with the
  differences listed there (section "The compiled gate"); ``tests/trading/test_risk_kernel.py`` runs
  both on the same random orders.
- a batch is checked before it is matched, so every passed NEW / MODIFY *reserves* its worst case:
  its quantity on its side of the instrument and its notional at its worst price (the limit; for
  market and stop orders the upper LULD band edge of the reference, else the mark). Later orders of
  the batch are checked as if every reserved order had filled on its own side, so a batch can never
  take an account over a limit. Fills, cancels, expiries and rejects release it (``on_events``).
- state lives in a few flat int64 arrays (the style of ``trading.matching``): ``acct`` [account,
  AC_*], ``cell`` [account, instrument, C_*], ``ins`` [instrument, IN_*], ``ot`` (an
  ``parsers.hashtable`` table: every order id seen, live or not, for the duplicate check and the
  reservations), ``days`` [DY_*] (the session days the batch's times fall in, made in Python),
  ``ring`` [account, RING, 3] (day trades and trades per date), ``mwcb`` (market-wide halts).
  Kernels never allocate, do no I/O, read no clock, and return a ``NEED_*`` code (with the row to
  resume from, nothing of it done) when Python must grow or fill an array.
- money and prices are int64 in 1e-9 dollars; every ``x * bp / 10_000`` is an exact floor computed
  without overflowing int64 (``_muldiv``); an order whose notional does not fit in int64 ($9.2 billion)
  is refused as NOTIONAL_LIMIT.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numba as nb
import numpy as np

from parsers import hashtable
from parsers.hashtable import EMPTY
from parsers.schema import PRICE_SCALE, STATUS, UNDEF_PRICE, StatusKind, TradingState
from trading import pdt
from trading.luld import (BP_SCALE, LULD_HIGH_PRICE, LULD_LOW_BP, LULD_LOW_PRICE, LULD_LOW_PRICE_CAP, LULD_MID_BP,
                          LULD_SUBPENNY_TICK, LULD_TICK, LULD_TIER1_BP, LULD_TIER2_BP, LuldTier, SessionCalendar)
from trading.orders import COMMAND, ORDER_EVENT, CommandKind, EventKind, OrderSide, OrderType, Reason
from trading.portfolio import Portfolio, apply_fill
from trading.risk import (MAINT_LONG_BP, MAINT_SHORT_BP, MAINT_SHORT_HIGH_PER_SHARE, MAINT_SHORT_LOW_PER_SHARE,
                          MAINT_SHORT_LOW_PRICE, MARGIN_MIN_EQUITY, MWCB_HALT_NS, NO_LIMIT, REG_T_INITIAL_BP,
                          Limits, RiskConfig)

_COMMAND_DT, _EVENT_DT = COMMAND.dtype, ORDER_EVENT.dtype

# Return codes of the kernels (with the index of the row to resume from).
DONE = 0
NEED_IDS = 1  # grow the order id table
NEED_DAY = 2  # add the session day of the row's ts to ``days``
BAD_FILL = 3  # apply_events: a fill outside the portfolio (nothing applied)

# Account columns. Limits as in ``trading.risk.Limits`` (NO_LIMIT disables); the token bucket in
# 1e-9 tokens; VALUE / GROSS / MAINT: sums of the cells' contributions; RES_*: reserved notionals.
(AC_REGISTERED, AC_MARGIN, AC_SUSPENDED, AC_KILLED,
 AC_MAX_QTY, AC_MAX_NOTIONAL, AC_MAX_POSITION, AC_SYMBOL_BP, AC_GROSS_BP, AC_RATE, AC_CAPACITY, AC_TOKENS,
 AC_LAST, AC_VALUE, AC_GROSS, AC_MAINT, AC_RES_BUY, AC_RES_OPENING, AC_LEDGER_DAY, AC_OPEN_COST, AC_DESIGNATED,
 AC_PRIOR_EQUITY, AC_PRIOR_MAINT, AC_RESTRICTED_UNTIL, AC_UNSETTLED_DAY) = range(25)
AC_COLUMNS = 25
AC_DERIVED = (AC_VALUE, AC_GROSS, AC_MAINT)  # follow from positions and marks: not in state_bytes

# Cell columns [account, instrument]: reserved shares by side; the cell's contributions at its
# instrument's valuation price (value = position x price; gross and maintenance of the worse of
# "all reserved buys fill" and "all reserved sells fill"); the day trade ledger of the cell's symbol.
(C_RES_BUY, C_RES_SELL, C_VALUE, C_GROSS, C_MAINT, C_DAY, C_LAST_DIR, C_LAST_EXEMPT, C_OPEN_SHARES,
 C_OPEN_COST) = range(10)
C_COLUMNS = 10
C_DERIVED = (C_VALUE, C_GROSS, C_MAINT)

# Instrument columns: LULD bands (single and doubled width) precomputed from the reference price.
(IN_REGISTERED, IN_TIER, IN_PREV_CLOSE, IN_REF, IN_STATE, IN_LOWER, IN_UPPER, IN_LOWER_2X, IN_UPPER_2X,
 IN_CLOSE_DOUBLES, IN_VALUATION) = range(11)
IN_COLUMNS = 11

# Order id table columns; OT_FLAGS = side | type << 4 | state << 8 | opening << 12.
OT_ID, OT_ACCOUNT, OT_INST, OT_LEAVES, OT_PRICE, OT_FLAGS = range(6)
OT_COLUMNS = 6
SEEN, PENDING, LIVE = 0, 1, 2  # SEEN: the id was used (rejected, or done); PENDING: passed, no ACK yet
_OPENING = np.int64(1 << 12)

# Session day columns; the legacy PDT window's dates (ordinals) follow DY_WINDOW.
(DY_START, DY_END, DY_TRADING, DY_OPEN, DY_OPEN_2X_END, DY_CLOSE_2X_START, DY_CLOSE, DY_DATE, DY_POLICY,
 DY_MIN_EQUITY, DY_DAY_TRADES, DY_SHARE_BP, DY_DTBP_MULTIPLE, DY_BLOCK, DY_BUFFER_BP, DY_WINDOW_N,
 DY_WINDOW) = range(17)
WINDOW_MAX = 16
DY_COLUMNS = DY_WINDOW + WINDOW_MAX
DAYS_MAX = 16
POLICY_NONE, POLICY_LEGACY, POLICY_INTRADAY = 0, 1, 2
RING = 64  # dates of day trade counts kept per account (a power of two, > the window's span in days)

# Slots of ``scalars``.
(S_KILL, S_IDS, S_ID_LIMIT, S_DAYS, S_DAY_CURSOR, S_MWCB, S_CHECK_HOURS, S_CHECK_LULD, S_SETTLE, S_FILLS_SEEN,
 S_MARKS_SEEN) = range(11)
SCALARS = 11

_MAX = np.int64(2**63 - 1)
_NEVER = np.int64(-(2**63))  # token bucket never used
_UNDEF = np.int64(UNDEF_PRICE)
_NEW, _MODIFY = np.uint8(CommandKind.NEW), np.uint8(CommandKind.MODIFY)
_BUY, _SELL, _SHORT = (np.int64(s) for s in OrderSide)
_MARKET, _LIMIT, _STOP, _STOP_LIMIT = (np.int64(t) for t in OrderType)
_ACK, _REJECT, _FILL, _CANCELLED, _MODIFIED, _EXPIRED = (np.uint8(e) for e in (
    EventKind.ACK, EventKind.REJECT, EventKind.FILL, EventKind.CANCELLED, EventKind.MODIFIED, EventKind.EXPIRED))
_HALTED, _PAUSED, _QUOTE_ONLY = (np.int64(s) for s in (TradingState.HALTED, TradingState.PAUSED,
                                                        TradingState.QUOTE_ONLY))
_R = {r.name: np.uint8(r) for r in Reason}
_R_OK = _R["NONE"]
_R_INVALID, _R_QTY, _R_PRICE, _R_UNKNOWN = _R["INVALID_ORDER"], _R["BAD_QTY"], _R["BAD_PRICE"], _R["UNKNOWN_ORDER"]
_R_SYMBOL, _R_HALTED, _R_HOURS, _R_SIZE = (_R["UNKNOWN_SYMBOL"], _R["HALTED"], _R["OUTSIDE_MARKET_HOURS"],
                                           _R["SIZE_LIMIT"])
_R_NOTIONAL, _R_BAND, _R_SUSPENDED, _R_RATE = (_R["NOTIONAL_LIMIT"], _R["PRICE_BAND"], _R["USER_SUSPENDED"],
                                              _R["RATE_EXCEEDED"])
_R_BP, _R_POSITION, _R_KILL = _R["BUYING_POWER"], _R["POSITION_LIMIT"], _R["KILL_SWITCH"]
_R_SYMBOL_EXP, _R_GROSS_EXP, _R_MWCB = _R["SYMBOL_EXPOSURE_LIMIT"], _R["GROSS_EXPOSURE_LIMIT"], _R["MWCB_HALT"]
_R_PDT, _R_INTRADAY, _R_MIN_EQUITY = _R["PDT_RESTRICTION"], _R["INTRADAY_MARGIN_DEFICIT"], _R["MIN_EQUITY"]
_R_SHORT, _R_ACCOUNT, _R_DUP = _R["SHORT_NOT_ALLOWED"], _R["UNKNOWN_ACCOUNT"], _R["DUPLICATE_CLIENT_ORDER_ID"]
_R_NO_REF = _R["NO_REFERENCE_PRICE"]


# -- exact integer arithmetic -------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _muldiv(x, num, den):
    """floor(x * num / den) for den > 0, 0 <= num, without the product: x = q*den + r, 0 <= r < den.
    Saturates at +-2**63-1 (a limit that large is no limit)."""
    q = x // den
    r = x - q * den
    if num != 0 and (q > _MAX // num or q < -(_MAX // num)):
        return _MAX if q > 0 else -_MAX
    return q * num + r * num // den


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _mul_sat(a, b):
    """a * b for a, b >= 0, saturated at 2**63-1."""
    if b != 0 and a > _MAX // b:
        return _MAX
    return a * b


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _maint(q, p):
    """FINRA 4210(c) maintenance of a position of ``q`` shares (signed) at price ``p`` (trading.risk)."""
    if q > 0:
        return _muldiv(q * p, MAINT_LONG_BP, BP_SCALE)
    if q < 0:
        s = -q
        v = s * p
        if p < MAINT_SHORT_LOW_PRICE:
            return max(s * MAINT_SHORT_LOW_PER_SHARE, v)
        return max(s * MAINT_SHORT_HIGH_PER_SHARE, _muldiv(v, MAINT_SHORT_BP, BP_SCALE))
    return np.int64(0)


@nb.njit(cache=True, nogil=True, _nrt=False)
def band_edges(ref, tier, prev, doubled):
    """(lower, upper) LULD band, ``trading.luld.band_at``'s integer arithmetic, split so that no
    intermediate overflows for prices up to ~$9e8 (as ``trading.luld.bands``). ``ref`` > 0."""
    mult = np.int64(2) if doubled else np.int64(1)
    if prev > LULD_HIGH_PRICE:
        bp = LULD_TIER1_BP if tier == 1 else LULD_TIER2_BP
    elif prev >= LULD_LOW_PRICE:
        bp = LULD_MID_BP
    else:
        bp = LULD_LOW_BP
    bp = bp * mult
    q = ref // BP_SCALE
    r = ref - q * BP_SCALE
    w = q * bp + (r * bp) // BP_SCALE
    rem = (r * bp) % BP_SCALE
    if prev < LULD_LOW_PRICE:
        cap = LULD_LOW_PRICE_CAP * mult
        if w > cap or (w == cap and rem > 0):
            w = cap
            rem = 0
    t = np.int64(LULD_TICK) if ref >= PRICE_SCALE else np.int64(LULD_SUBPENNY_TICK)
    half = t // 2
    upper = (ref + w + half) // t * t
    lower = (ref - w - (1 if rem > 0 else 0) + half) // t * t
    return max(lower, np.int64(0)), upper


@nb.njit(cache=True, nogil=True, _nrt=False)
def _set_references(ins, ids, prices):
    """Reference prices and the bands they give (prices <= 0 or UNDEF_PRICE: unknown, no band)."""
    for k in range(ids.shape[0]):
        i = ids[k]
        ref = prices[k]
        if ref == _UNDEF or ref <= 0:
            ref = np.int64(0)
        ins[i, IN_REF] = ref
        prev = ins[i, IN_PREV_CLOSE] if ins[i, IN_PREV_CLOSE] > 0 else ref
        tier = ins[i, IN_TIER]
        ins[i, IN_CLOSE_DOUBLES] = 0 if (tier == 2 and prev > LULD_HIGH_PRICE) else 1
        lo = hi = lo2 = hi2 = np.int64(0)
        if ref > 0:
            lo, hi = band_edges(ref, tier, prev, False)
            lo2, hi2 = band_edges(ref, tier, prev, True)
        ins[i, IN_LOWER] = lo
        ins[i, IN_UPPER] = hi
        ins[i, IN_LOWER_2X] = lo2
        ins[i, IN_UPPER_2X] = hi2


# -- contributions and reservations ---------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _refresh(acct, cell, ins, position, a, i):
    """Recompute cell (a, i)'s contributions at its instrument's valuation price; keep the sums."""
    vp = ins[i, IN_VALUATION]
    pos = position[a, i]
    lo = pos - cell[a, i, C_RES_SELL]
    hi = pos + cell[a, i, C_RES_BUY]
    v = pos * vp
    g = max(abs(lo), abs(hi)) * vp
    m = max(_maint(lo, vp), _maint(hi, vp))
    acct[a, AC_VALUE] += v - cell[a, i, C_VALUE]
    acct[a, AC_GROSS] += g - cell[a, i, C_GROSS]
    acct[a, AC_MAINT] += m - cell[a, i, C_MAINT]
    cell[a, i, C_VALUE] = v
    cell[a, i, C_GROSS] = g
    cell[a, i, C_MAINT] = m


@nb.njit(cache=True, nogil=True, _nrt=False)
def sync_valuation(acct, cell, ins, position, mark, full):
    """Valuation price of every instrument (the mark, else the reference, else 0); revalue the cells
    of those that changed, or of all when ``full`` (fills were applied behind the gate's back)."""
    for i in range(ins.shape[0]):
        m = mark[i]
        vp = m if (m != _UNDEF and m > 0) else (ins[i, IN_REF] if ins[i, IN_REF] > 0 else np.int64(0))
        if vp != ins[i, IN_VALUATION] or full:
            ins[i, IN_VALUATION] = vp
            for a in range(acct.shape[0]):
                if acct[a, AC_REGISTERED] != 0:
                    _refresh(acct, cell, ins, position, a, i)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _set_reservation(acct, cell, ins, ot, position, row, leaves, price):
    """Order ``row`` now reserves ``leaves`` shares at ``price`` (was OT_LEAVES at OT_PRICE)."""
    a = ot[row, OT_ACCOUNT]
    i = ot[row, OT_INST]
    f = ot[row, OT_FLAGS]
    old = ot[row, OT_LEAVES]
    delta = leaves * price - old * ot[row, OT_PRICE]
    if (f & 15) == _BUY:
        cell[a, i, C_RES_BUY] += leaves - old
        acct[a, AC_RES_BUY] += delta
    else:
        cell[a, i, C_RES_SELL] += leaves - old
    if f & _OPENING:
        acct[a, AC_RES_OPENING] += delta
    ot[row, OT_LEAVES] = leaves
    ot[row, OT_PRICE] = price
    _refresh(acct, cell, ins, position, a, i)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _set_state(ot, row, state):
    ot[row, OT_FLAGS] = (ot[row, OT_FLAGS] & ~np.int64(0xF00)) | (state << 8)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _state(ot, row):
    return (ot[row, OT_FLAGS] >> 8) & 15


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _day_row(days, scalars, ts):
    """Row of ``days`` whose [start, end) holds ``ts``, or -1."""
    c = scalars[S_DAY_CURSOR]
    if c < scalars[S_DAYS] and days[c, DY_START] <= ts < days[c, DY_END]:
        return c
    for k in range(scalars[S_DAYS]):
        if days[k, DY_START] <= ts < days[k, DY_END]:
            scalars[S_DAY_CURSOR] = k
            return k
    return np.int64(-1)


# -- the rules ----------------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _take_token(acct, a, ts):
    """``trading.risk.TokenBucket.take``: integer refill, time that goes backwards refills nothing."""
    rate = acct[a, AC_RATE]
    if rate == NO_LIMIT:
        return True
    last = acct[a, AC_LAST]
    level = acct[a, AC_TOKENS]
    if last != _NEVER and ts > last and rate > 0:
        room = acct[a, AC_CAPACITY] - level
        gap = ts - last
        level = acct[a, AC_CAPACITY] if gap > room // rate else level + gap * rate
    if last == _NEVER or ts > last:
        acct[a, AC_LAST] = ts
    if level >= PRICE_SCALE:
        acct[a, AC_TOKENS] = level - PRICE_SCALE
        return True
    acct[a, AC_TOKENS] = level
    return False


@nb.njit(cache=True, nogil=True, _nrt=False)
def _rules(acct, cell, ins, days, ring, mwcb, scalars, cash, position, unsettled, a, iid, side, typ, qty, price,
           ts, d):
    """Rules 6.. of ``RiskChecker.check`` for an order of account ``a`` (known, not killed or suspended).

    Returns (reason, reservation price, opening). ``price`` is the limit (LIMIT, STOP_LIMIT).
    """
    if iid < 0 or iid >= ins.shape[0] or ins[iid, IN_REGISTERED] == 0:
        return _R_SYMBOL, np.int64(0), False
    trading_day = days[d, DY_TRADING] != 0
    in_hours = trading_day and days[d, DY_OPEN] <= ts < days[d, DY_CLOSE]
    if scalars[S_CHECK_HOURS] != 0 and not in_hours:
        return _R_HOURS, np.int64(0), False
    for k in range(scalars[S_MWCB]):
        if mwcb[k, 0] <= ts < mwcb[k, 1]:
            return _R_MWCB, np.int64(0), False
    st = ins[iid, IN_STATE]
    if st == _HALTED or st == _PAUSED or st == _QUOTE_ONLY:
        return _R_HALTED, np.int64(0), False
    doubled = False
    if trading_day:
        if days[d, DY_OPEN] <= ts < days[d, DY_OPEN_2X_END]:
            doubled = True
        elif days[d, DY_CLOSE_2X_START] <= ts < days[d, DY_CLOSE] and ins[iid, IN_CLOSE_DOUBLES] != 0:
            doubled = True
    lower = ins[iid, IN_LOWER_2X] if doubled else ins[iid, IN_LOWER]
    upper = ins[iid, IN_UPPER_2X] if doubled else ins[iid, IN_UPPER]
    ref = ins[iid, IN_REF]
    if scalars[S_CHECK_LULD] != 0 and typ == _LIMIT and ref > 0 and in_hours and (price < lower or price > upper):
        return _R_BAND, np.int64(0), False
    if qty > acct[a, AC_MAX_QTY]:
        return _R_SIZE, np.int64(0), False
    if typ == _LIMIT or typ == _STOP_LIMIT:
        p = price
    elif ref > 0:
        p = upper  # market and stop orders: the worst price the band lets them trade at
    else:
        p = ins[iid, IN_VALUATION]
    if p <= 0:  # a market or stop order with nothing to value it at (one-sided book, nothing printed yet)
        return _R_NO_REF, np.int64(0), False
    notional = _mul_sat(qty, p)
    if notional == _MAX or notional > acct[a, AC_MAX_NOTIONAL]:
        return _R_NOTIONAL, np.int64(0), False

    # Position after, in the worst case on the order's side: every reserved order of that side filled.
    pos = position[a, iid]
    rb = cell[a, iid, C_RES_BUY]
    rs = cell[a, iid, C_RES_SELL]
    is_buy = side == _BUY
    p0 = pos + rb if is_buy else pos - rs
    p1 = p0 + qty if is_buy else p0 - qty
    reducing = p0 != 0 and abs(p1) <= abs(p0) and (p1 == 0 or (p1 > 0) == (p0 > 0))
    opening = not reducing
    if opening and abs(p1) > acct[a, AC_MAX_POSITION]:
        return _R_POSITION, np.int64(0), False

    # The account with the order's instrument valued at the order's price, the others at theirs.
    equity = cash[a] + acct[a, AC_VALUE] - cell[a, iid, C_VALUE] + pos * p
    symbol_value = _mul_sat(abs(p1), p)
    gross_after = acct[a, AC_GROSS] - cell[a, iid, C_GROSS] + symbol_value
    maint_others = acct[a, AC_MAINT] - cell[a, iid, C_MAINT]
    if opening:
        bp = acct[a, AC_SYMBOL_BP]
        if bp != NO_LIMIT and symbol_value > _muldiv(equity, bp, BP_SCALE):
            return _R_SYMBOL_EXP, np.int64(0), False
        bp = acct[a, AC_GROSS_BP]
        if bp != NO_LIMIT and gross_after > _muldiv(equity, bp, BP_SCALE):
            return _R_GROSS_EXP, np.int64(0), False

    margin = acct[a, AC_MARGIN] != 0
    date = days[d, DY_DATE]
    policy = days[d, DY_POLICY]
    maint_after = maint_others + _maint(p1, p)
    if margin and policy == POLICY_LEGACY:
        n_dt = np.int64(0)
        n_all = np.int64(0)
        for k in range(days[d, DY_WINDOW_N]):
            o = days[d, DY_WINDOW + k]
            s = o & (RING - 1)
            if ring[a, s, 0] == o:
                n_dt += ring[a, s, 1]
                n_all += ring[a, s, 2]
        designated = acct[a, AC_DESIGNATED] != 0
        need, share = days[d, DY_DAY_TRADES], days[d, DY_SHARE_BP]
        pdt_now = designated or (n_dt >= need and n_dt * BP_SCALE > share * n_all)
        today = acct[a, AC_LEDGER_DAY] == date and cell[a, iid, C_DAY] == date
        last_dir = cell[a, iid, C_LAST_DIR] if today else 0
        exempt = cell[a, iid, C_LAST_EXEMPT] != 0 if today else False
        direction = 1 if is_buy else -1
        if last_dir != 0 and last_dir != direction and not exempt and equity < days[d, DY_MIN_EQUITY]:
            if pdt_now or (n_dt + 1 >= need and (n_dt + 1) * BP_SCALE > share * (n_all + 1)):
                return _R_PDT, np.int64(0), False
        if pdt_now and opening:
            open_cost = acct[a, AC_OPEN_COST] if acct[a, AC_LEDGER_DAY] == date else 0
            dtbp = max(np.int64(0), days[d, DY_DTBP_MULTIPLE] * (acct[a, AC_PRIOR_EQUITY] - acct[a, AC_PRIOR_MAINT]))
            if open_cost + acct[a, AC_RES_OPENING] + notional > dtbp:
                return _R_PDT, np.int64(0), False
    elif margin and policy == POLICY_INTRADAY and opening:
        until = acct[a, AC_RESTRICTED_UNTIL]
        if until >= 0 and date <= until:
            return _R_PDT, np.int64(0), False
        if days[d, DY_BLOCK] != 0:
            buf = days[d, DY_BUFFER_BP]
            m0 = maint_others + max(_maint(pos - rs, p), _maint(pos + rb, p))
            deficit_before = m0 + _muldiv(m0, buf, BP_SCALE) - equity
            deficit_after = maint_after + _muldiv(maint_after, buf, BP_SCALE) - equity
            if deficit_after > 0 and deficit_after > deficit_before:
                return _R_INTRADAY, np.int64(0), False

    if opening:
        if not margin or equity < MARGIN_MIN_EQUITY:
            if p1 < 0:
                return (_R_MIN_EQUITY if margin else _R_SHORT), np.int64(0), False
            available = cash[a] - acct[a, AC_RES_BUY]
            if not margin and scalars[S_SETTLE] != 0 and acct[a, AC_UNSETTLED_DAY] == date:
                available -= unsettled[a]  # a cash account buys with settled cash only (T+1)
            after = available - notional if is_buy else available + notional
            if after < 0:
                return (_R_MIN_EQUITY if margin else _R_BP), np.int64(0), False
        elif equity < _muldiv(gross_after, REG_T_INITIAL_BP, BP_SCALE) or equity < maint_after:
            return _R_BP, np.int64(0), False
    return _R_OK, p, opening


@nb.njit(cache=True, nogil=True, _nrt=False)
def check_commands(start, commands, out, acct, cell, ins, ot, days, ring, mwcb, scalars, cash, position, unsettled):
    """Check ``commands[start:]``, writing a Reason code per command into ``out``; passed NEW and MODIFY
    commands reserve their worst case.

    Returns:
        (DONE, len(commands)) or (NEED_*, index of the command to resume from: nothing of it done).
    """
    n_acct = acct.shape[0]
    for k in range(start, commands.shape[0]):
        cmd = commands[k]
        kind = cmd.kind
        if kind != _NEW and kind != _MODIFY:
            out[k] = _R_OK  # cancels (never refused: they lower risk) and the appliance's own commands
            continue
        ts = cmd.ts
        d = _day_row(days, scalars, ts)
        if d < 0:
            return NEED_DAY, k
        a = np.int64(cmd.account)
        oid = np.int64(cmd.order_id)  # ids >= 2**63 come out negative: invalid
        date = days[d, DY_DATE]
        if kind == _NEW:
            if scalars[S_IDS] >= scalars[S_ID_LIMIT]:
                return NEED_IDS, k
            if scalars[S_KILL] != 0 or (a < n_acct and acct[a, AC_KILLED] != 0):
                out[k] = _R_KILL
                continue
            if a >= n_acct or acct[a, AC_REGISTERED] == 0:
                out[k] = _R_ACCOUNT
                continue
            if acct[a, AC_SUSPENDED] != 0:
                out[k] = _R_SUSPENDED
                continue
            if not _take_token(acct, a, ts):
                out[k] = _R_RATE
                continue
            if oid <= 0:
                out[k] = _R_INVALID
                continue
            row = hashtable.slot_for(ot, oid)
            if ot[row, OT_ID] == oid:
                out[k] = _R_DUP
                continue
            ot[row, OT_ID] = oid  # remembered even if refused below (as RiskChecker's client ids)
            ot[row, OT_ACCOUNT] = a
            ot[row, OT_INST] = np.int64(cmd.instrument_id)
            ot[row, OT_LEAVES] = 0
            ot[row, OT_PRICE] = 0
            ot[row, OT_FLAGS] = 0
            scalars[S_IDS] += 1
            side = np.int64(cmd.side)
            typ = np.int64(cmd.order_type)
            tif = np.int64(cmd.tif)
            if side < _BUY or side > _SHORT or typ < _MARKET or typ > _STOP_LIMIT or tif < 1 or tif > 4:
                out[k] = _R_INVALID
                continue
            if cmd.qty == 0:
                out[k] = _R_QTY
                continue
            price = cmd.price
            if (typ == _LIMIT or typ == _STOP_LIMIT) and (price == _UNDEF or price <= 0):
                out[k] = _R_PRICE
                continue
            if (typ == _STOP or typ == _STOP_LIMIT) and (cmd.stop_price == _UNDEF or cmd.stop_price <= 0):
                out[k] = _R_PRICE
                continue
            if scalars[S_SETTLE] != 0 and acct[a, AC_UNSETTLED_DAY] < date:
                unsettled[a] = 0  # yesterday's sale proceeds have settled
            reason, p, opening = _rules(acct, cell, ins, days, ring, mwcb, scalars, cash, position, unsettled, a,
                                        np.int64(cmd.instrument_id), side, typ, np.int64(cmd.qty), price, ts, d)
            out[k] = reason
            if reason == _R_OK:
                ot[row, OT_FLAGS] = side | (typ << 4) | (PENDING << 8) | (_OPENING if opening else 0)
                _set_reservation(acct, cell, ins, ot, position, row, np.int64(cmd.qty), p)
            continue

        # MODIFY: an order the gate does not know live for this account is the matcher's to refuse.
        row = hashtable.find(ot, oid) if oid > 0 else np.int64(-1)
        if row < 0 or _state(ot, row) == SEEN or ot[row, OT_ACCOUNT] != a:
            out[k] = _R_OK
            continue
        f = ot[row, OT_FLAGS]
        side = f & 15
        typ = (f >> 4) & 15
        leaves = ot[row, OT_LEAVES]
        old_price = ot[row, OT_PRICE]
        limit_type = typ == _LIMIT or typ == _STOP_LIMIT
        if cmd.price != _UNDEF and cmd.price <= 0:
            out[k] = _R_PRICE
            continue
        if (typ == _STOP or typ == _STOP_LIMIT) and cmd.stop_price != _UNDEF and cmd.stop_price <= 0:
            out[k] = _R_PRICE
            continue
        new_qty = np.int64(cmd.qty) if cmd.qty > 0 else leaves
        new_price = cmd.price if (limit_type and cmd.price != _UNDEF) else old_price
        calmer = new_price <= old_price if side == _BUY else new_price >= old_price
        if new_qty <= leaves and calmer and new_qty * new_price <= leaves * old_price:
            _set_reservation(acct, cell, ins, ot, position, row, new_qty, new_price)  # lowers risk: passes
            out[k] = _R_OK
            continue
        if scalars[S_KILL] != 0 or acct[a, AC_KILLED] != 0:
            out[k] = _R_KILL
            continue
        if acct[a, AC_SUSPENDED] != 0:
            out[k] = _R_SUSPENDED
            continue
        if not _take_token(acct, a, ts):
            out[k] = _R_RATE
            continue
        # checked as a new order in place of the old one: its reservation is lifted meanwhile
        was_opening = f & _OPENING
        _set_reservation(acct, cell, ins, ot, position, row, np.int64(0), old_price)
        reason, p, opening = _rules(acct, cell, ins, days, ring, mwcb, scalars, cash, position, unsettled, a,
                                    ot[row, OT_INST], side, typ, new_qty, new_price, ts, d)
        out[k] = reason
        if reason == _R_OK:
            ot[row, OT_FLAGS] = (f & ~_OPENING) | (_OPENING if opening else 0)
            _set_reservation(acct, cell, ins, ot, position, row, new_qty, p)
        else:
            ot[row, OT_FLAGS] = (f & ~_OPENING) | was_opening
            _set_reservation(acct, cell, ins, ot, position, row, leaves, old_price)
    return DONE, commands.shape[0]


# -- events back from the matcher -------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _record_fill(acct, cell, ring, a, i, direction, qty, price, position_before, date):
    """``trading.pdt.DayTradeLedger.record_fill`` on the arrays."""
    if acct[a, AC_LEDGER_DAY] != date:  # a new day: every symbol starts afresh
        acct[a, AC_LEDGER_DAY] = date
        acct[a, AC_OPEN_COST] = 0
    if cell[a, i, C_DAY] != date:
        cell[a, i, C_DAY] = date
        cell[a, i, C_LAST_DIR] = 0
        cell[a, i, C_LAST_EXEMPT] = 0
        cell[a, i, C_OPEN_SHARES] = 0
        cell[a, i, C_OPEN_COST] = 0
    last_dir = cell[a, i, C_LAST_DIR]
    last_exempt = cell[a, i, C_LAST_EXEMPT] != 0
    day_trade = last_dir != 0 and last_dir != direction and not last_exempt
    no_opposite_yet = last_dir == 0 or (last_dir == direction and last_exempt)
    reduces = position_before * direction < 0 and qty <= abs(position_before)
    cell[a, i, C_LAST_DIR] = direction
    cell[a, i, C_LAST_EXEMPT] = 1 if (no_opposite_yet and reduces) else 0
    shares = cell[a, i, C_OPEN_SHARES]
    oc = cell[a, i, C_OPEN_COST]
    old_oc = oc
    closed = np.int64(0)
    if shares * direction < 0:  # close shares opened today first
        m = abs(shares)
        closed = min(qty, m)
        oc -= (oc // m) * closed + (oc % m) * closed // m
        shares += direction * closed
    rest = qty - closed
    pos_mid = position_before + direction * closed
    overnight = min(rest, abs(pos_mid)) if pos_mid * direction < 0 else np.int64(0)
    opened = rest - overnight
    shares += direction * opened
    oc += opened * price
    cell[a, i, C_OPEN_SHARES] = shares
    cell[a, i, C_OPEN_COST] = oc
    acct[a, AC_OPEN_COST] += oc - old_oc
    s = date & (RING - 1)
    if ring[a, s, 0] != date:
        ring[a, s, 0] = date
        ring[a, s, 1] = 0
        ring[a, s, 2] = 0
    ring[a, s, 2] += 1
    if day_trade:
        ring[a, s, 1] += 1


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def _rejects_order(ot, row, reason):
    """Whether a REJECT of the id held at ``row`` ends that order (and frees what it reserved).

    A duplicate client order id reject (the engine's answer to a command that reused the id, e.g. a
    client order id sent twice) answers another command, never the order holding the id. Otherwise a
    reject of an order not acknowledged yet refuses it (the matcher's duplicate order id included: the
    gate passed it, so the order the matcher holds under that id is not one the gate knows); a live
    order ends only with the matcher's "unknown order" (it no longer holds it), while a refused modify
    or a duplicate leaves it as it was.
    """
    if reason == _R_DUP:
        return False
    return _state(ot, row) == PENDING or reason == _R_UNKNOWN


@nb.njit(cache=True, nogil=True, _nrt=False)
def apply_events(start, events, acct, cell, ins, ot, days, ring, scalars, cash, position, cost, realized, unsettled,
                 holders, fills_applied):
    """Take ``events[start:]`` (ORDER_EVENT rows) back: fills to the ledger and the portfolio, and the
    reservations of the orders they end or shrink released. Returns (code, index) as ``check_commands``;
    (BAD_FILL, index) before anything is applied if a fill names an account or instrument beyond the
    portfolio."""
    if start == 0:
        for k in range(events.shape[0]):
            e = events[k]
            if e.kind == _FILL and (np.int64(e.account) >= position.shape[0]
                                    or np.int64(e.instrument_id) >= position.shape[1]):
                return BAD_FILL, k
    for k in range(start, events.shape[0]):
        e = events[k]
        kind = e.kind
        oid = np.int64(e.order_id)
        row = hashtable.find(ot, oid) if oid > 0 else np.int64(-1)
        if row >= 0 and (_state(ot, row) == SEEN or ot[row, OT_ACCOUNT] != np.int64(e.account)):
            row = -1
        if kind == _FILL:
            a = np.int64(e.account)
            i = np.int64(e.instrument_id)
            qty = np.int64(e.qty)
            is_buy = np.int64(e.side) == _BUY
            if acct[a, AC_REGISTERED] != 0:
                d = _day_row(days, scalars, e.ts)
                if d < 0:
                    return NEED_DAY, k
                date = days[d, DY_DATE]
                _record_fill(acct, cell, ring, a, i, 1 if is_buy else -1, qty, e.price, position[a, i], date)
                if acct[a, AC_MARGIN] == 0 and scalars[S_SETTLE] != 0 and not is_buy:
                    if acct[a, AC_UNSETTLED_DAY] != date:
                        unsettled[a] = 0
                        acct[a, AC_UNSETTLED_DAY] = date
                    unsettled[a] += qty * e.price
            apply_fill(cash, position, cost, realized, holders, a, i, qty if is_buy else -qty, e.price)
            fills_applied[0] += 1
            scalars[S_FILLS_SEEN] += 1
            if row >= 0:
                _set_reservation(acct, cell, ins, ot, position, row, np.int64(e.leaves), ot[row, OT_PRICE])
                if e.leaves == 0:
                    _set_state(ot, row, SEEN)
            elif acct[a, AC_REGISTERED] != 0:
                _refresh(acct, cell, ins, position, a, i)
        elif row < 0:
            continue
        elif kind == _CANCELLED or kind == _EXPIRED or (kind == _REJECT and _rejects_order(ot, row, e.reason)):
            _set_reservation(acct, cell, ins, ot, position, row, np.int64(0), ot[row, OT_PRICE])
            _set_state(ot, row, SEEN)
        elif kind == _ACK:
            if _state(ot, row) == PENDING:
                _set_state(ot, row, LIVE)
        elif kind == _MODIFIED:
            typ = (ot[row, OT_FLAGS] >> 4) & 15
            price = ot[row, OT_PRICE]
            if (typ == _LIMIT or typ == _STOP_LIMIT) and e.price != _UNDEF and e.price > 0:
                price = e.price
            _set_reservation(acct, cell, ins, ot, position, row, np.int64(e.leaves), price)
    return DONE, events.shape[0]


# -- Python side --------------------------------------------------------------------------------------


@dataclass
class GateConfig(RiskConfig):
    """``trading.risk.RiskConfig`` plus ``cash_settlement``: a cash account buys with settled cash only
    (sale proceeds settle the next trading date, T+1)."""

    cash_settlement: bool = True


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class RiskGate:
    """Pre-trade risk for the order path; see the module docstring and docs/risk.md.

    Args:
        portfolio: the accounts' cash and positions (sizes: account and instrument ids index it).
        calendar: session times (default ``SessionCalendar()``, New York).
        pdt_policy: a ``trading.pdt`` policy (default: none); "scheduled" switches by date.
        config: ``GateConfig`` / ``RiskConfig`` switches (market hours, LULD, cash settlement).
    """

    def __init__(self, portfolio: Portfolio, calendar: SessionCalendar | None = None,
                 pdt_policy: pdt.DayTradingPolicy | None = None, config: RiskConfig | None = None) -> None:
        self.portfolio = portfolio
        self.calendar = calendar or SessionCalendar()
        self.policy = pdt_policy or pdt.DayTradingPolicy()
        config = config or GateConfig()
        self._intraday = [p for p in self._policies(self.policy) if isinstance(p, pdt.IntradayMarginPolicy)]
        n_acct, n_inst = portfolio.accounts, portfolio.instruments
        self.acct = np.zeros((n_acct, AC_COLUMNS), dtype=np.int64)
        self.acct[:, AC_LAST] = _NEVER
        self.acct[:, AC_LEDGER_DAY] = -1
        self.acct[:, AC_RESTRICTED_UNTIL] = -1
        self.acct[:, AC_UNSETTLED_DAY] = -1
        self.cell = np.zeros((n_acct, n_inst, C_COLUMNS), dtype=np.int64)
        self.cell[:, :, C_DAY] = -1
        self.ins = np.zeros((n_inst, IN_COLUMNS), dtype=np.int64)
        self.ins[:, IN_STATE] = TradingState.TRADING
        self.ot = hashtable.new_table(1 << 12, OT_COLUMNS)
        self.days = np.zeros((DAYS_MAX, DY_COLUMNS), dtype=np.int64)
        self.ring = np.zeros((n_acct, RING, 3), dtype=np.int64)
        self.ring[:, :, 0] = -1
        self.mwcb = np.zeros((4, 2), dtype=np.int64)
        self.scalars = np.zeros(SCALARS, dtype=np.int64)
        self.scalars[S_ID_LIMIT] = len(self.ot) // 2
        self.scalars[S_CHECK_HOURS] = bool(config.check_market_hours)
        self.scalars[S_CHECK_LULD] = bool(config.check_luld)
        self.scalars[S_SETTLE] = bool(getattr(config, "cash_settlement", True))
        self.scalars[S_FILLS_SEEN] = portfolio.fills_applied[0]
        self.scalars[S_MARKS_SEEN] = -1
        self.names: dict[str, int] = {}  # account name -> id
        self.symbols: dict[int, str] = {}
        self.mwcb_levels = (0, 0, 0)
        self._mwcb_seen: set[tuple[dt.date, int]] = set()

    @staticmethod
    def _policies(policy: pdt.DayTradingPolicy) -> list:
        parts = [policy.legacy, policy.intraday] if isinstance(policy, pdt.ScheduledPolicy) else [policy]
        for p in parts:
            if type(p) not in (pdt.DayTradingPolicy, pdt.LegacyPdtPolicy, pdt.IntradayMarginPolicy):
                raise ValueError(f"day trading policy {type(p).__name__} has no compiled form in the risk gate")
        return parts

    # -- accounts and instruments -------------------------------------------------------------------

    def _account(self, account_id: int) -> int:
        a = int(account_id)
        if not 0 <= a < len(self.acct):
            raise ValueError(f"account id {account_id} outside the portfolio (0..{len(self.acct) - 1})")
        return a

    def _instrument(self, instrument_id: int) -> int:
        i = int(instrument_id)
        if not 0 <= i < len(self.ins):
            raise ValueError(f"instrument id {instrument_id} outside the portfolio (0..{len(self.ins) - 1})")
        return i

    def add_account(self, account_id: int, name: str, margin: bool, limits: Limits | None = None,
                    suspended: bool = False) -> None:
        """Register (or update) an account. Its prior-close figures for the legacy PDT rule start as its
        equity and maintenance now (``set_prior_close`` changes them)."""
        a = self._account(account_id)
        limits = limits or Limits()
        other = self.names.get(name)
        if other is not None and other != a:
            raise ValueError(f"account name {name!r} is already account {other}")
        row = self.acct[a]
        new = row[AC_REGISTERED] == 0
        row[AC_REGISTERED] = 1
        row[AC_MARGIN] = bool(margin)
        row[AC_SUSPENDED] = bool(suspended)
        for col, value in ((AC_MAX_QTY, limits.max_order_qty), (AC_MAX_NOTIONAL, limits.max_order_notional),
                           (AC_MAX_POSITION, limits.max_position_qty), (AC_SYMBOL_BP, limits.max_symbol_exposure_bp),
                           (AC_GROSS_BP, limits.max_gross_exposure_bp)):
            row[col] = min(int(value), NO_LIMIT)
        rate = int(limits.max_orders_per_second)
        row[AC_RATE] = min(rate, NO_LIMIT)
        if rate != NO_LIMIT:
            row[AC_CAPACITY] = min(int(limits.burst or rate) * PRICE_SCALE, NO_LIMIT)
            if new or row[AC_LAST] == _NEVER:
                row[AC_TOKENS] = row[AC_CAPACITY]
        self.portfolio.margin[a] = bool(margin)
        self.names[name] = a
        if new:
            self.scalars[S_FILLS_SEEN] = -1  # revalue everything at the next check
            figures = self.portfolio.account(a)
            row[AC_PRIOR_EQUITY] = figures["equity"]
            row[AC_PRIOR_MAINT] = figures["maintenance"]

    def set_prior_close(self, account_id: int, equity: int, maintenance: int) -> None:
        """Equity and maintenance requirement at the previous close (legacy day-trading buying power)."""
        a = self._account(account_id)
        self.acct[a, AC_PRIOR_EQUITY] = int(equity)
        self.acct[a, AC_PRIOR_MAINT] = int(maintenance)

    def close_day(self) -> None:
        """Take every account's equity and maintenance now (at the marks) as its prior close."""
        for a in np.flatnonzero(self.acct[:, AC_REGISTERED]):
            figures = self.portfolio.account(int(a))
            self.set_prior_close(int(a), figures["equity"], figures["maintenance"])

    def designate_pdt(self, account_id: int, designated: bool = True) -> None:
        """Flag (or unflag) an account as a pattern day trader (legacy rule; sticky until unflagged)."""
        self.acct[self._account(account_id), AC_DESIGNATED] = bool(designated)

    def suspend(self, account_id: int, suspended: bool = True) -> None:
        self.acct[self._account(account_id), AC_SUSPENDED] = bool(suspended)

    def add_instrument(self, instrument_id: int, symbol: str, tier: int, prev_close: int = 0) -> None:
        """Register an instrument; its LULD reference starts as ``prev_close`` (0: unknown, no band)."""
        i = self._instrument(instrument_id)
        try:
            tier = LuldTier(int(tier))
        except ValueError:
            raise ValueError(f"{symbol}: LULD tier must be 1 or 2, not {tier!r}") from None
        self.ins[i, IN_REGISTERED] = 1
        self.ins[i, IN_TIER] = tier
        self.ins[i, IN_PREV_CLOSE] = max(0, int(prev_close))
        self.symbols[i] = symbol
        self.set_reference([i], [int(prev_close)])

    def set_reference(self, instrument_ids, prices) -> None:
        """LULD reference prices (1e-9 units; 0 or UNDEF_PRICE: unknown). Market and stop orders are
        valued at the upper band edge around it; instruments with no mark are valued at it."""
        ids = np.asarray(instrument_ids, dtype=np.int64).ravel()
        px = np.asarray(prices, dtype=np.int64).ravel()
        if ids.shape != px.shape:
            raise ValueError(f"set_reference: {len(ids)} instrument ids but {len(px)} prices")
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.ins)):
            raise ValueError(f"set_reference: instrument ids must be in 0..{len(self.ins) - 1}")
        self.set_references_checked(ids, px)

    def set_references_checked(self, ids: np.ndarray, prices: np.ndarray) -> None:
        """``set_reference`` of int64 arrays already known to be in range (the engine's MARK rows)."""
        _set_references(self.ins, ids, prices)
        self.scalars[S_MARKS_SEEN] = -1  # valuation prices may change

    # -- switches and the feed's status -----------------------------------------------------------------

    def kill(self, account_id: int | None = None) -> None:
        """Engage the kill switch for one account, or for all when ``account_id`` is None."""
        if account_id is None:
            self.scalars[S_KILL] = 1
        else:
            self.acct[self._account(account_id), AC_KILLED] = 1

    def release(self, account_id: int | None = None) -> None:
        if account_id is None:
            self.scalars[S_KILL] = 0
        else:
            self.acct[self._account(account_id), AC_KILLED] = 0

    def on_status(self, rows: np.ndarray) -> None:
        """``parsers.schema.STATUS`` rows in order: instrument halts and resumes, MWCB levels and breaches
        (``RiskChecker.on_status``)."""
        if rows.dtype != STATUS.dtype:
            raise ValueError(f"on_status takes parsers.schema.STATUS rows, not {rows.dtype}")
        kinds = rows["kind"]
        for row in rows[(kinds == StatusKind.TRADING_ACTION) | (kinds == StatusKind.MWCB_LEVELS)
                        | (kinds == StatusKind.MWCB_BREACH)]:
            kind = int(row["kind"])
            if kind == StatusKind.TRADING_ACTION:
                i, state = int(row["instrument_id"]), int(row["state"])
                if i < len(self.ins) and self.ins[i, IN_REGISTERED] and state != TradingState.UNCHANGED:
                    self.ins[i, IN_STATE] = state
            elif kind == StatusKind.MWCB_LEVELS:
                self.mwcb_levels = (int(row["price_1"]), int(row["price_2"]), int(row["price_3"]))
            elif bytes(row["code"]) in (b"1", b"2", b"3"):
                self._mwcb_breach(int(bytes(row["code"])), int(row["ts_event"]))

    def _mwcb_breach(self, level: int, ts: int) -> None:
        day = self.calendar.day(ts)
        if (day.date, level) in self._mwcb_seen:
            return
        self._mwcb_seen.add((day.date, level))
        if level == 3:
            end = day.end_ns
        elif ts < day.mwcb_cutoff_ns:
            end = ts + MWCB_HALT_NS
        else:
            return
        n = int(self.scalars[S_MWCB])
        if n == len(self.mwcb):
            self.mwcb = np.concatenate([self.mwcb, np.zeros_like(self.mwcb)])
        self.mwcb[n] = (ts, end)
        self.scalars[S_MWCB] = n + 1

    # -- the batch paths ---------------------------------------------------------------------------

    def _sync(self) -> None:
        """Revalue cells after set_marks / set_reference, or all of them after fills the gate did not see;
        copy the intraday policy's restrictions (a dict by account name) into the arrays."""
        pf = self.portfolio
        full = pf.fills_applied[0] != self.scalars[S_FILLS_SEEN]
        if full or pf.marks_set[0] != self.scalars[S_MARKS_SEEN]:
            sync_valuation(self.acct, self.cell, self.ins, pf.position, pf.mark, full)
            self.scalars[S_FILLS_SEEN] = pf.fills_applied[0]
            self.scalars[S_MARKS_SEEN] = pf.marks_set[0]
        if self._intraday:
            until = self.acct[:, AC_RESTRICTED_UNTIL]
            until[:] = -1
            for policy in self._intraday:
                for name, date in policy.restricted_until.items():
                    a = self.names.get(name)
                    if a is not None:
                        until[a] = max(until[a], date.toordinal())

    def _add_day(self, ts: int) -> None:
        """Put the session day holding ``ts`` into ``days`` (dropping the oldest when full)."""
        day = self.calendar.day(ts)
        row = np.zeros(DY_COLUMNS, dtype=np.int64)
        row[[DY_START, DY_END, DY_TRADING, DY_OPEN, DY_OPEN_2X_END, DY_CLOSE_2X_START, DY_CLOSE, DY_DATE]] = (
            day.start_ns, day.end_ns, day.is_trading_day, day.open_ns, day.open_doubled_end_ns,
            day.close_doubled_start_ns, day.close_ns, day.date.toordinal())
        policy = self.policy.policy_for(day.date) if isinstance(self.policy, pdt.ScheduledPolicy) else self.policy
        if isinstance(policy, pdt.LegacyPdtPolicy):
            window = pdt.DayTradeLedger().window(day.date, policy.window_days,
                                                 pdt.weekday_business_days(policy.holidays))
            if len(window) > WINDOW_MAX or (day.date - window[-1]).days >= RING:
                raise ValueError(f"legacy PDT window of {policy.window_days} business days is too long for the gate")
            row[[DY_POLICY, DY_MIN_EQUITY, DY_DAY_TRADES, DY_SHARE_BP, DY_DTBP_MULTIPLE, DY_WINDOW_N]] = (
                POLICY_LEGACY, policy.min_equity, policy.day_trades, policy.min_share_bp, policy.dtbp_multiple,
                len(window))
            row[DY_WINDOW:DY_WINDOW + len(window)] = [d.toordinal() for d in window]
        elif isinstance(policy, pdt.IntradayMarginPolicy):
            row[[DY_POLICY, DY_BLOCK, DY_BUFFER_BP]] = POLICY_INTRADAY, policy.block, policy.house_buffer_bp
        n = int(self.scalars[S_DAYS])
        if n == DAYS_MAX:
            self.days[:-1] = self.days[1:]
            n -= 1
        self.days[n] = row
        self.scalars[S_DAYS] = n + 1
        self.scalars[S_DAY_CURSOR] = n

    def _grow_ids(self) -> None:
        old = self.ot
        self.ot = hashtable.new_table(2 * len(old), OT_COLUMNS)
        hashtable.rehash(old, self.ot)
        self.scalars[S_ID_LIMIT] = len(self.ot) // 2

    def reserve_ids(self, n: int) -> None:
        """Make room for ``n`` more order ids up front (a big batch then never stops to grow)."""
        while self.scalars[S_IDS] + n > self.scalars[S_ID_LIMIT]:
            self._grow_ids()

    def check(self, commands: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A ``Reason`` code (uint8) per COMMAND row, 0 = passed; one kernel call for the batch.

        NEW and MODIFY rows are checked; passed ones reserve their worst case until ``on_events`` sees
        them end. CANCEL, TRIGGER, SESSION_END and other appliance commands pass unchecked. ``out``: a
        uint8 array of the commands' length to write the codes into (returned).
        """
        if commands.dtype != _COMMAND_DT:
            raise ValueError(f"check takes trading.orders.COMMAND rows, not {commands.dtype}")
        self._sync()
        if len(commands) > 4096:  # size the id table once instead of growing it step by step
            self.reserve_ids(int(np.count_nonzero(commands["kind"] == CommandKind.NEW)))
        if out is None:
            out = np.zeros(len(commands), dtype=np.uint8)
        pf = self.portfolio
        i = 0
        while True:
            code, i = check_commands(i, commands, out, self.acct, self.cell, self.ins, self.ot, self.days,
                                     self.ring, self.mwcb, self.scalars, pf.cash, pf.position, pf.unsettled)
            if code == DONE:
                return out
            if code == NEED_IDS:
                self._grow_ids()
            else:
                self._add_day(int(commands["ts"][i]))

    def on_events(self, events: np.ndarray) -> None:
        """The matcher's ORDER_EVENT rows, in order: FILL -> day trade ledger, ``portfolio`` and the order's
        reservation; CANCELLED / EXPIRED, and a REJECT that ends the order (``_rejects_order``: never a
        duplicate-id reject, which answers another command) -> release; MODIFIED -> the reservation
        follows the new quantity and price."""
        if events.dtype != _EVENT_DT:
            raise ValueError(f"on_events takes trading.orders.ORDER_EVENT rows, not {events.dtype}")
        pf = self.portfolio
        self._sync()
        i = 0
        while True:
            code, i = apply_events(i, events, self.acct, self.cell, self.ins, self.ot, self.days, self.ring,
                                   self.scalars, pf.cash, pf.position, pf.cost, pf.realized, pf.unsettled,
                                   pf.holders, pf.fills_applied)
            if code == DONE:
                return
            if code == BAD_FILL:
                raise ValueError(f"fill row {i}: account {int(events['account'][i])} or instrument "
                                 f"{int(events['instrument_id'][i])} outside the portfolio "
                                 f"({pf.accounts} x {pf.instruments})")
            self._add_day(int(events["ts"][i]))

    # -- views ------------------------------------------------------------------------------------------

    def reserved(self, account_id: int) -> dict:
        """What the account's open orders hold: buy notional, opening notional (1e-9 $), and shares per
        instrument {instrument_id: (buy shares, sell shares)}."""
        a = self._account(account_id)
        res = self.cell[a][:, [C_RES_BUY, C_RES_SELL]]
        held = np.flatnonzero(res.any(axis=1))
        return {"buy_notional": int(self.acct[a, AC_RES_BUY]), "opening_notional": int(self.acct[a, AC_RES_OPENING]),
                "shares": {int(i): (int(res[i, 0]), int(res[i, 1])) for i in held}}

    def day_trades(self, account_id: int, date: dt.date) -> tuple[int, int]:
        """(day trades, trades) the ledger holds for the account on ``date``."""
        a = self._account(account_id)
        o = date.toordinal()
        s = o & (RING - 1)
        return (int(self.ring[a, s, 1]), int(self.ring[a, s, 2])) if self.ring[a, s, 0] == o else (0, 0)

    def state_bytes(self) -> bytes:
        """The gate's own state (limits, switches, buckets, reservations, ledgers, every order id seen, halts),
        for state hashes; values that follow from positions and marks are left out."""
        acct = np.delete(self.acct, AC_DERIVED, axis=1)
        cell = np.delete(self.cell, C_DERIVED, axis=2)
        ins = self.ins[:, :IN_VALUATION]
        used = self.ot[self.ot[:, OT_ID] != EMPTY]
        ids = used[np.argsort(used[:, OT_ID], kind="stable")]
        mwcb = self.mwcb[:int(self.scalars[S_MWCB])]
        return b"".join(x.tobytes() for x in (acct, cell, ins, ids, self.ring, mwcb, self.scalars[[S_KILL]]))
