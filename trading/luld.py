"""Limit Up-Limit Down price bands and the session times the risk rules read.

Source: the National Market System Plan to Address Extraordinary Market Volatility (the "LULD Plan",
permanent since April 2019), Section V (Price Bands) and Appendix A (Percentage Parameters).

Rules this module keeps:
- pure functions: no I/O, no clock. Time comes in as int64 epoch ns (UTC) and is read in the session's
  time zone (default America/New_York) through ``parsers.clock.VenueClock``, so DST is honoured.
- prices are int64 in units of 1e-9 (``parsers.schema.PRICE_SCALE``); percentages are integer basis
  points, and band arithmetic is exact integer arithmetic (no floats), scalar and vectorised alike.
- the *percentage parameter* is chosen by the previous day's closing price (Appendix A); the band is
  centred on the *reference price* (the SIP's 5-minute mean). Callers that have only one price pass it
  for both.

Percentage parameters (Appendix A), by previous close P:

| P | Tier 1 | Tier 2 |
|---|---|---|
| P > $3.00 | 5% | 10% |
| $0.75 <= P <= $3.00 | 20% | 20% |
| P < $0.75 | lesser of $0.15 or 75% | lesser of $0.15 or 75% |

Doubling (Section V.A): from 9:30 to 9:45 ET every band is doubled; from 15:35 to 16:00 ET (the last
25 minutes, or the last 25 minutes before an early close) bands are doubled for Tier 1 stocks and for
Tier 2 stocks with P <= $3.00, but NOT for Tier 2 stocks with P > $3.00 (an amendment to the Plan; the
SEC's investor glossary states it the same way). Windows are half-open: [9:30, 9:45) and
[close - 25 min, close), so 9:45:00.000000000 is already single width and 15:35:00.000000000 double.

Rounding (assumption, see docs/risk.md): each band is rounded half up to the trading increment,
$0.01 for a reference price of $1.00 or more and $0.0001 below (Reg NMS Rule 612's sub-penny
allowance); the lower band is never below zero (a doubled "lesser of $0.30 or 150%" can reach it).
"""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

import numpy as np

from parsers.clock import NANOS_PER_SECOND, VenueClock, session_date
from parsers.schema import PRICE_SCALE

NANOS_PER_MINUTE = 60 * NANOS_PER_SECOND

LULD_HIGH_PRICE = 3 * PRICE_SCALE  # previous close above this: the 5% / 10% parameters
LULD_LOW_PRICE = 75 * PRICE_SCALE // 100  # previous close below this: lesser of $0.15 or 75%
LULD_LOW_PRICE_CAP = 15 * PRICE_SCALE // 100  # the $0.15 of "lesser of $0.15 or 75%"
LULD_TIER1_BP = 500  # 5%
LULD_TIER2_BP = 1000  # 10%
LULD_MID_BP = 2000  # 20%
LULD_LOW_BP = 7500  # 75%
BP_SCALE = 10_000
LULD_TICK = PRICE_SCALE // 100  # $0.01
LULD_SUBPENNY_TICK = PRICE_SCALE // 10_000  # $0.0001, for reference prices under $1.00
LULD_OPEN_DOUBLED_NS = 15 * NANOS_PER_MINUTE  # 9:30-9:45
LULD_CLOSE_DOUBLED_NS = 25 * NANOS_PER_MINUTE  # 15:35-16:00
MWCB_CUTOFF_LOCAL = dt.time(15, 25)  # level 1/2 breaches at or after this do not halt (see risk.py)


class LuldTier(enum.IntEnum):
    """LULD tier of an NMS stock (ITCH stock directory ``luld_tier``: '1' or '2')."""

    TIER_1 = 1  # S&P 500, Russell 1000 and selected ETPs
    TIER_2 = 2  # all other NMS stocks


def tier_from_code(code: bytes) -> LuldTier | None:
    """The tier of an ITCH ``luld_tier`` code (b'1', b'2'); None for a space or anything else."""
    return {b"1": LuldTier.TIER_1, b"2": LuldTier.TIER_2}.get(bytes(code))


# --- session times ------------------------------------------------------------------------------

@dataclass(frozen=True)
class TradingDay:
    """Epoch-ns instants of one local calendar day of a venue. Regular session is [open_ns, close_ns)."""

    date: dt.date
    start_ns: int  # local midnight
    end_ns: int  # next local midnight
    is_trading_day: bool  # a weekday that is not a listed holiday
    open_ns: int  # 9:30
    open_doubled_end_ns: int  # 9:45
    mwcb_cutoff_ns: int  # 15:25
    close_doubled_start_ns: int  # close - 25 minutes (15:35 on a full day)
    close_ns: int  # 16:00, or the early close

    def in_regular_hours(self, ts: int) -> bool:
        return self.is_trading_day and self.open_ns <= ts < self.close_ns


class SessionCalendar:
    """Maps epoch ns to the ``TradingDay`` it falls in; caches the last day so the hot path is two compares.

    ``holidays`` are dates with no session; ``early_closes`` maps a date to its local closing time.
    """

    def __init__(self, tz: str = "America/New_York", open_time: dt.time = dt.time(9, 30),
                 close_time: dt.time = dt.time(16, 0), holidays: frozenset[dt.date] = frozenset(),
                 early_closes: dict[dt.date, dt.time] | None = None) -> None:
        self.tz = tz
        self.open_time = open_time
        self.close_time = close_time
        self.holidays = frozenset(holidays)
        self.early_closes = dict(early_closes or {})
        self._last: TradingDay | None = None

    def day(self, ts: int) -> TradingDay:
        last = self._last
        if last is not None and last.start_ns <= ts < last.end_ns:
            return last
        day = self.day_of_date(session_date(int(ts), self.tz))
        self._last = day
        return day

    def day_of_date(self, date: dt.date) -> TradingDay:
        clock = VenueClock(date, self.tz)
        close = self.early_closes.get(date, self.close_time)
        local = np.array([0, _ns(self.open_time), _ns(self.open_time) + LULD_OPEN_DOUBLED_NS,
                          _ns(MWCB_CUTOFF_LOCAL), _ns(close) - LULD_CLOSE_DOUBLED_NS, _ns(close)], dtype=np.int64)
        start, open_ns, open_end, cutoff, close_start, close_ns = (int(x) for x in clock.to_epoch(local))
        end = int(VenueClock(date + dt.timedelta(days=1), self.tz).to_epoch(np.array([0]))[0])
        trading = date.weekday() < 5 and date not in self.holidays
        return TradingDay(date, start, end, trading, open_ns, open_end, cutoff, close_start, close_ns)

    def is_business_day(self, date: dt.date) -> bool:
        return date.weekday() < 5 and date not in self.holidays


def _ns(t: dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * NANOS_PER_SECOND + t.microsecond * 1000


# --- bands --------------------------------------------------------------------------------------

def percentage_bp(tier: int, prev_close: int) -> int:
    """Appendix A percentage parameter in basis points (the low-price row returns 7500 = 75%; its $0.15
    cap is applied by ``band_width``)."""
    if prev_close > LULD_HIGH_PRICE:
        return LULD_TIER1_BP if tier == LuldTier.TIER_1 else LULD_TIER2_BP
    if prev_close >= LULD_LOW_PRICE:
        return LULD_MID_BP
    return LULD_LOW_BP


def is_doubled(tier: int, prev_close: int, ts: int, day: TradingDay) -> bool:
    """True if the Plan doubles the percentage parameter at ``ts`` (see the module docstring)."""
    if not day.is_trading_day:
        return False
    if day.open_ns <= ts < day.open_doubled_end_ns:
        return True
    if day.close_doubled_start_ns <= ts < day.close_ns:
        return not (tier == LuldTier.TIER_2 and prev_close > LULD_HIGH_PRICE)
    return False


def tick_for(ref_price: int) -> int:
    """Trading increment the bands round to: $0.01, or $0.0001 for a reference price under $1.00."""
    return LULD_TICK if ref_price >= PRICE_SCALE else LULD_SUBPENNY_TICK


def band_at(ref_price: int, tier: int, prev_close: int | None = None, doubled: bool = False,
            tick: int | None = None) -> tuple[int, int]:
    """(lower, upper) band around ``ref_price`` in 1e-9 units, doubled or not; exact integer arithmetic.

    Args:
        ref_price: the LULD reference price (1e-9 units), > 0.
        tier: ``LuldTier``.
        prev_close: previous closing price that selects the percentage parameter (default ``ref_price``).
        doubled: apply double the percentage parameter (opening / closing windows).
        tick: rounding increment (default ``tick_for(ref_price)``).
    """
    ref = int(ref_price)
    if ref <= 0:
        raise ValueError(f"LULD reference price must be positive: {ref}")
    prev = ref if prev_close is None else int(prev_close)
    bp = percentage_bp(tier, prev) * (2 if doubled else 1)
    num = ref * bp  # width = num / BP_SCALE, exactly
    if prev < LULD_LOW_PRICE:
        cap = LULD_LOW_PRICE_CAP * (2 if doubled else 1)
        if num > cap * BP_SCALE:
            num = cap * BP_SCALE
    t = tick_for(ref) if tick is None else int(tick)
    # round half up to the tick, on exact rationals: (ref*S -/+ num) / S
    upper = (ref * BP_SCALE + num + t * BP_SCALE // 2) // (t * BP_SCALE) * t
    lower = (ref * BP_SCALE - num + t * BP_SCALE // 2) // (t * BP_SCALE) * t
    return max(lower, 0), upper


def band(ref_price: int, tier: int, ts: int, *, prev_close: int | None = None,
         calendar: SessionCalendar | None = None, tz: str = "America/New_York") -> tuple[int, int]:
    """(lower, upper) LULD band in 1e-9 units at epoch-ns time ``ts``, doubled where the Plan says.

    Pass a ``SessionCalendar`` to reuse its day cache (fast); otherwise one is built for ``tz``.
    Outside regular hours the single-width band is returned (the Plan does not apply then; whether to
    check at all is the caller's decision).
    """
    cal = calendar if calendar is not None else SessionCalendar(tz)
    prev = int(ref_price) if prev_close is None else int(prev_close)
    return band_at(ref_price, tier, prev, is_doubled(tier, prev, int(ts), cal.day(int(ts))))


def bands(ref_price: np.ndarray, tier: np.ndarray, ts: np.ndarray, prev_close: np.ndarray | None = None,
          calendar: SessionCalendar | None = None, tz: str = "America/New_York") -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``band``: int64 arrays (lower, upper) for arrays of reference prices, tiers and times.

    Same integer arithmetic as ``band_at`` without overflow for prices up to ~$9e8: the width is
    split as ref = q*10000 + r so no intermediate exceeds int64.
    """
    ref = np.asarray(ref_price, dtype=np.int64)
    tier = np.broadcast_to(np.asarray(tier, dtype=np.int64), ref.shape)
    ts = np.broadcast_to(np.asarray(ts, dtype=np.int64), ref.shape)
    prev = ref if prev_close is None else np.broadcast_to(np.asarray(prev_close, dtype=np.int64), ref.shape)
    if np.any(ref <= 0):
        raise ValueError("LULD reference prices must be positive")
    cal = calendar if calendar is not None else SessionCalendar(tz)

    bp = np.where(prev > LULD_HIGH_PRICE, np.where(tier == LuldTier.TIER_1, LULD_TIER1_BP, LULD_TIER2_BP),
                  np.where(prev >= LULD_LOW_PRICE, LULD_MID_BP, LULD_LOW_BP)).astype(np.int64)
    doubled = np.zeros(ref.shape, dtype=bool)
    todo = np.ones(ref.shape, dtype=bool)
    while todo.any():  # one pass per calendar day present (usually one)
        day = cal.day(int(ts[todo][0]))
        in_day = todo & (ts >= day.start_ns) & (ts < day.end_ns)
        if day.is_trading_day:
            opening = (ts >= day.open_ns) & (ts < day.open_doubled_end_ns)
            closing = (ts >= day.close_doubled_start_ns) & (ts < day.close_ns) & ~(
                (tier == LuldTier.TIER_2) & (prev > LULD_HIGH_PRICE))
            doubled |= in_day & (opening | closing)
        todo &= ~in_day
    mult = np.where(doubled, 2, 1).astype(np.int64)
    bp = bp * mult
    # width = ref * bp / 10000 = w_int + rem / 10000 with 0 <= rem < 10000
    q, r = np.divmod(ref, BP_SCALE)
    w_int = q * bp + (r * bp) // BP_SCALE
    rem = (r * bp) % BP_SCALE
    low = prev < LULD_LOW_PRICE
    cap = LULD_LOW_PRICE_CAP * mult
    capped = low & ((w_int > cap) | ((w_int == cap) & (rem > 0)))
    w_int = np.where(capped, cap, w_int)
    rem = np.where(capped, 0, rem)
    t = np.where(ref >= PRICE_SCALE, LULD_TICK, LULD_SUBPENNY_TICK).astype(np.int64)
    half = t // 2
    # upper = ref + w_int + rem/S: the fraction never crosses a rounding edge (ties sit on integers)
    upper = (ref + w_int + half) // t * t
    # lower = ref - w_int - rem/S = (ref - w_int - 1) + (1 - rem/S) when rem > 0: same argument
    lower = (ref - w_int - (rem > 0) + half) // t * t
    return np.maximum(lower, 0), upper


def in_band(price: int, lower: int, upper: int) -> bool:
    """True if ``price`` is within the band, edges included (a trade at the band price is allowed)."""
    return lower <= price <= upper
