"""Pre-trade risk: each rule a small pure function, composed by ``RiskChecker.check(order, now)``.

In the spirit of SEC Rule 15c3-5 (Market Access Rule): controls that stop orders exceeding credit or
capital thresholds, erroneous orders (price, size, duplicates, message rate), and orders for
restricted or halted instruments, applied before an order reaches the book.

Rules this module keeps:
- no I/O and no clock: ``now`` (epoch ns, UTC) comes in with every call; the venue's time zone comes
  from the ``SessionCalendar``. Replay and live are the same code.
- units: prices and money are int64-style Python ints in 1e-9 dollars (``PRICE_SCALE``), quantities
  are whole shares, positions signed (short < 0), ratios integer basis points. No floats.
- every rejection is one ``RejectReason``; ``check`` returns the first that applies, in the order of
  ``RiskChecker.check`` (cheap, account-wide reasons first), or None.
- state changes in ``check`` are only the two 15c3-5 message counters: the rate limiter takes a token
  for every order it sees, and a client order id is remembered once seen (a rejected id stays used,
  as in FIX). Positions and cash change only through the portfolio (``Account`` is its view).

Margin (numbers in docs/risk.md): Reg T (12 CFR 220.12) initial margin 50% of market value long and
short; FINRA 4210(c) maintenance 25% of long market value, 30% of short market value (with its
per-share minimums for short positions: $2.50/share or 100% under $5, $5.00/share or 30% at $5 and
up); FINRA 4210(b)(1): an account with under $2,000 equity gets no credit (cash only, no shorts).
"""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

import numpy as np

from parsers.schema import PRICE_SCALE, UNDEF_PRICE, StatusKind, TradingState
from trading import pdt
from trading.luld import NANOS_PER_MINUTE, LuldTier, SessionCalendar, TradingDay, band_at, is_doubled

BP_SCALE = 10_000
REG_T_INITIAL_BP = 5000  # Regulation T, 12 CFR 220.12(a), (c): 50%
MAINT_LONG_BP = 2500  # FINRA 4210(c)(1): 25% of long market value
MAINT_SHORT_BP = 3000  # FINRA 4210(c)(2)(B): 30% of short market value (stocks at $5 and up)
MAINT_SHORT_LOW_PRICE = 5 * PRICE_SCALE  # under $5: $2.50/share or 100%
MAINT_SHORT_LOW_PER_SHARE = 5 * PRICE_SCALE // 2  # $2.50
MAINT_SHORT_HIGH_PER_SHARE = 5 * PRICE_SCALE  # $5.00
MARGIN_MIN_EQUITY = 2_000 * PRICE_SCALE  # FINRA 4210(b)(1)
MWCB_HALT_NS = 15 * NANOS_PER_MINUTE  # level 1 / level 2 halt before 15:25 ET
NO_LIMIT = (1 << 63) - 1


class RejectReason(enum.IntEnum):
    """Why a pre-trade check refused an order (stable codes: they are written to rejects.jsonl)."""

    UNKNOWN_SYMBOL = 1
    HALTED = 2  # the instrument is halted, paused or quote-only (TRADING_ACTION)
    OUTSIDE_MARKET_HOURS = 3
    SIZE_ABOVE_LIMIT = 4
    NOTIONAL_ABOVE_LIMIT = 5
    PRICE_OUTSIDE_BAND = 6  # LULD band
    USER_SUSPENDED = 7
    DUPLICATE_CLIENT_ORDER_ID = 8
    RATE_EXCEEDED = 9
    INSUFFICIENT_BUYING_POWER = 10  # Reg T initial / maintenance margin, or cash in a cash account
    POSITION_LIMIT = 11
    SYMBOL_EXPOSURE_LIMIT = 12  # one symbol's market value vs equity
    GROSS_EXPOSURE_LIMIT = 13  # gross market value vs equity
    KILL_SWITCH = 14
    MWCB_HALT = 15  # market-wide circuit breaker halt
    PDT_RESTRICTION = 16  # legacy pattern day trader rule
    INTRADAY_MARGIN_DEFICIT = 17  # the 2026 intraday margin standard
    MIN_EQUITY = 18  # a margin order (credit or short) with equity under $2,000
    SHORT_NOT_ALLOWED = 19  # a short sale in a cash account
    UNKNOWN_ACCOUNT = 20
    INVALID_ORDER = 21  # quantity not positive, limit price missing or not positive


class OrderSide(enum.IntEnum):
    """Side of an order (the backtest's ``buy``, ``sell``, ``sell_short``)."""

    BUY = 1
    SELL = 2
    SELL_SHORT = 3


@dataclass(slots=True)
class RiskOrder:
    """What the checker reads of an order. ``price`` is the limit (1e-9 units), UNDEF_PRICE for market."""

    account: str
    client_order_id: str
    instrument_id: int
    side: OrderSide
    qty: int
    price: int = int(UNDEF_PRICE)


@dataclass
class Limits:
    """Per-account limits; NO_LIMIT (the default) disables one. Exposure limits are bp of equity."""

    max_order_qty: int = NO_LIMIT
    max_order_notional: int = NO_LIMIT  # 1e-9 units
    max_position_qty: int = NO_LIMIT  # |position| per symbol after the order
    max_symbol_exposure_bp: int = NO_LIMIT  # |position| x price <= bp x equity, per symbol
    max_gross_exposure_bp: int = NO_LIMIT  # sum |position| x price <= bp x equity
    max_orders_per_second: int = NO_LIMIT  # token bucket rate
    burst: int = 0  # bucket size (0: same as the rate)


@dataclass
class Account:
    """The portfolio's view of an account that risk reads. ``cash`` includes short sale proceeds."""

    name: str
    cash: int  # 1e-9 units
    margin: bool = False
    positions: dict[int, int] = field(default_factory=dict)  # instrument_id -> signed shares
    limits: Limits = field(default_factory=Limits)
    suspended: bool = False
    prior_close_equity: int = 0  # for the legacy PDT rule's day-trading buying power
    prior_close_maintenance: int = 0


@dataclass
class Instrument:
    """Market state of one instrument as risk sees it (fed from definitions, trades and status rows)."""

    instrument_id: int
    symbol: str = ""
    tier: LuldTier = LuldTier.TIER_2
    prev_close: int = 0  # selects the LULD percentage parameter; 0 = use the reference price
    ref_price: int = 0  # LULD reference price; 0 = unknown (no band check)
    mark: int = 0  # last or mid, for market orders and valuation; 0 = unknown
    state: TradingState = TradingState.TRADING


# --- the rules, each a small pure function -----------------------------------------------------------

def check_size(qty: int, limits: Limits) -> RejectReason | None:
    return RejectReason.SIZE_ABOVE_LIMIT if qty > limits.max_order_qty else None


def check_notional(notional: int, limits: Limits) -> RejectReason | None:
    return RejectReason.NOTIONAL_ABOVE_LIMIT if notional > limits.max_order_notional else None


def check_position(position_after: int, reducing: bool, limits: Limits) -> RejectReason | None:
    if reducing or abs(position_after) <= limits.max_position_qty:
        return None
    return RejectReason.POSITION_LIMIT


def check_exposure(symbol_value_after: int, gross_after: int, equity: int, reducing: bool,
                   limits: Limits) -> RejectReason | None:
    """Exposure limits as a share of equity (bp); an order that only reduces is never refused."""
    if reducing:
        return None
    if limits.max_symbol_exposure_bp != NO_LIMIT and symbol_value_after * BP_SCALE > limits.max_symbol_exposure_bp * equity:
        return RejectReason.SYMBOL_EXPOSURE_LIMIT
    if limits.max_gross_exposure_bp != NO_LIMIT and gross_after * BP_SCALE > limits.max_gross_exposure_bp * equity:
        return RejectReason.GROSS_EXPOSURE_LIMIT
    return None


def check_band(price: int, lower: int, upper: int) -> RejectReason | None:
    """LULD: a limit price must be within [lower, upper], edges included."""
    return None if lower <= price <= upper else RejectReason.PRICE_OUTSIDE_BAND


def check_halt(state: TradingState) -> RejectReason | None:
    if state in (TradingState.HALTED, TradingState.PAUSED, TradingState.QUOTE_ONLY):
        return RejectReason.HALTED
    return None


def check_market_hours(day: TradingDay, now: int) -> RejectReason | None:
    return None if day.in_regular_hours(now) else RejectReason.OUTSIDE_MARKET_HOURS


def maintenance_long(value: int) -> int:
    """FINRA 4210(c)(1): 25% of the long position's market value."""
    return value * MAINT_LONG_BP // BP_SCALE


def maintenance_short(shares: int, price: int) -> int:
    """FINRA 4210(c)(2): short stock under $5: the greater of $2.50/share or 100% of market value;
    at $5 and up: the greater of $5.00/share or 30% of market value. ``shares`` > 0."""
    value = shares * price
    if price < MAINT_SHORT_LOW_PRICE:
        return max(shares * MAINT_SHORT_LOW_PER_SHARE, value)
    return max(shares * MAINT_SHORT_HIGH_PER_SHARE, value * MAINT_SHORT_BP // BP_SCALE)


@dataclass(frozen=True)
class MarginState:
    """Equity and requirements of a set of positions at given prices (1e-9 units)."""

    equity: int
    long_value: int
    short_value: int
    maintenance: int
    initial: int  # Reg T 50% of long + short market value

    @property
    def gross(self) -> int:
        return self.long_value + self.short_value


def margin_state(cash: int, positions: dict[int, int], prices: dict[int, int]) -> MarginState:
    """Equity = cash + long value - short value; requirements per the module docstring."""
    long_value = short_value = maintenance = 0
    for iid, q in positions.items():
        if q == 0:
            continue
        p = prices[iid]
        if q > 0:
            v = q * p
            long_value += v
            maintenance += maintenance_long(v)
        else:
            short_value += -q * p
            maintenance += maintenance_short(-q, p)
    initial = (long_value + short_value) * REG_T_INITIAL_BP // BP_SCALE
    return MarginState(cash + long_value - short_value, long_value, short_value, maintenance, initial)


def check_buying_power(margin_account: bool, cash_after: int, short_after: bool, before: MarginState,
                       after: MarginState, reducing: bool) -> RejectReason | None:
    """Cash and margin: a cash account needs cash >= 0 after the order and no short position; a margin
    account with under $2,000 equity is held to the same (4210(b)(1)); otherwise an order that adds
    exposure needs equity >= Reg T initial (50%) and >= maintenance on the positions after it. An
    order that only reduces positions always passes (it lowers the requirement)."""
    if reducing:
        return None
    if not margin_account or before.equity < MARGIN_MIN_EQUITY:
        if short_after:
            return RejectReason.SHORT_NOT_ALLOWED if not margin_account else RejectReason.MIN_EQUITY
        if cash_after < 0:
            return RejectReason.INSUFFICIENT_BUYING_POWER if not margin_account else RejectReason.MIN_EQUITY
        return None
    if after.equity < after.initial or after.equity < after.maintenance:
        return RejectReason.INSUFFICIENT_BUYING_POWER
    return None


class TokenBucket:
    """Deterministic token bucket: ``rate`` tokens per second, at most ``burst``; time is an argument.

    Integer state: one token = 1e9 units, refilled by ``rate`` units per elapsed nanosecond. Time that
    goes backwards refills nothing.
    """

    __slots__ = ("rate", "capacity", "level", "last")

    def __init__(self, rate: int, burst: int) -> None:
        self.rate = int(rate)
        self.capacity = int(burst) * PRICE_SCALE
        self.level = self.capacity
        self.last: int | None = None

    def take(self, now: int) -> bool:
        if self.last is not None and now > self.last:
            self.level = min(self.capacity, self.level + (now - self.last) * self.rate)
        if self.last is None or now > self.last:
            self.last = now
        if self.level >= PRICE_SCALE:
            self.level -= PRICE_SCALE
            return True
        return False


@dataclass
class MarketWideState:
    """Market-wide circuit breaker state from the feed's status rows (Nasdaq Rule 4121, NYSE 7.12).

    MWCB_LEVELS rows carry the day's three decline levels (price_1..3, S&P 500 values); MWCB_BREACH
    rows the level breached (code '1', '2', '3'). Level 1 or 2 breached before 15:25 ET halts all
    trading for 15 minutes; at or after 15:25 it does not halt; each of levels 1 and 2 halts at most
    once a day. Level 3 halts trading for the rest of the trading day.
    """

    levels: tuple[int, int, int] = (0, 0, 0)
    halts: list[tuple[int, int, int]] = field(default_factory=list)  # (level, start ns, end ns)
    _seen: set[tuple[dt.date, int]] = field(default_factory=set)

    def on_breach(self, level: int, ts: int, day: TradingDay) -> None:
        if level not in (1, 2, 3) or (day.date, level) in self._seen:
            return
        self._seen.add((day.date, level))
        if level == 3:
            self.halts.append((3, ts, day.end_ns))
        elif ts < day.mwcb_cutoff_ns:
            self.halts.append((level, ts, ts + MWCB_HALT_NS))

    def halted(self, now: int) -> bool:
        return any(start <= now < end for _, start, end in self.halts)


@dataclass
class RiskConfig:
    check_market_hours: bool = True  # False: accept orders at any time (e.g. extended hours backtests)
    check_luld: bool = True


class RiskChecker:
    """Composes the rules. Feed it instruments, accounts and status rows; call ``check(order, now)``."""

    def __init__(self, calendar: SessionCalendar | None = None, policy: pdt.DayTradingPolicy | None = None,
                 config: RiskConfig | None = None) -> None:
        self.calendar = calendar or SessionCalendar()
        self.policy = policy or pdt.DayTradingPolicy()
        self.config = config or RiskConfig()
        self.instruments: dict[int, Instrument] = {}
        self.accounts: dict[str, Account] = {}
        self.ledgers: dict[str, pdt.DayTradeLedger] = {}
        self.mwcb = MarketWideState()
        self.global_kill = False
        self.killed: set[str] = set()
        self._buckets: dict[str, TokenBucket] = {}
        self._client_ids: dict[str, set[str]] = {}

    # --- state fed in --------------------------------------------------------------------------
    def add_instrument(self, instrument: Instrument) -> None:
        self.instruments[instrument.instrument_id] = instrument

    def add_account(self, account: Account) -> None:
        self.accounts[account.name] = account
        self.ledgers.setdefault(account.name, pdt.DayTradeLedger())

    def kill(self, account: str | None = None) -> None:
        """Engage the kill switch for one account, or globally when ``account`` is None."""
        if account is None:
            self.global_kill = True
        else:
            self.killed.add(account)

    def release(self, account: str | None = None) -> None:
        if account is None:
            self.global_kill = False
        else:
            self.killed.discard(account)

    def on_status(self, rows: np.ndarray) -> None:
        """Apply STATUS rows (``parsers.schema.STATUS`` dtype) in order: halts, MWCB levels and breaches."""
        for row in rows:
            kind = int(row["kind"])
            if kind == StatusKind.TRADING_ACTION:
                inst = self.instruments.get(int(row["instrument_id"]))
                state = int(row["state"])
                if inst is not None and state != TradingState.UNCHANGED:
                    inst.state = TradingState(state)
            elif kind == StatusKind.MWCB_LEVELS:
                self.mwcb.levels = (int(row["price_1"]), int(row["price_2"]), int(row["price_3"]))
            elif kind == StatusKind.MWCB_BREACH:
                code = bytes(row["code"])
                if code in (b"1", b"2", b"3"):
                    ts = int(row["ts_event"])
                    self.mwcb.on_breach(int(code), ts, self.calendar.day(ts))

    def record_fill(self, account: str, instrument_id: int, side: OrderSide, qty: int, price: int, now: int) -> None:
        """Tell the day trade ledger about a fill (call before the portfolio applies it)."""
        acct = self.accounts[account]
        direction = pdt.Direction.BUY if side == OrderSide.BUY else pdt.Direction.SELL
        self.ledgers[account].record_fill(self.calendar.day(now).date, instrument_id, direction, qty, price,
                                          acct.positions.get(instrument_id, 0))

    # --- the check -----------------------------------------------------------------------------
    def check(self, order: RiskOrder, now: int) -> RejectReason | None:
        """The first rule ``order`` breaks at epoch-ns time ``now``, or None if it may go to the book."""
        if self.global_kill or order.account in self.killed:
            return RejectReason.KILL_SWITCH
        acct = self.accounts.get(order.account)
        if acct is None:
            return RejectReason.UNKNOWN_ACCOUNT
        if acct.suspended:
            return RejectReason.USER_SUSPENDED
        limits = acct.limits
        if limits.max_orders_per_second != NO_LIMIT:
            bucket = self._buckets.get(acct.name)
            if bucket is None:
                bucket = self._buckets[acct.name] = TokenBucket(
                    limits.max_orders_per_second, limits.burst or limits.max_orders_per_second)
            if not bucket.take(now):
                return RejectReason.RATE_EXCEEDED
        seen = self._client_ids.setdefault(acct.name, set())
        if order.client_order_id in seen:
            return RejectReason.DUPLICATE_CLIENT_ORDER_ID
        seen.add(order.client_order_id)
        is_market = order.price == UNDEF_PRICE
        if order.qty <= 0 or (not is_market and order.price <= 0):
            return RejectReason.INVALID_ORDER
        inst = self.instruments.get(order.instrument_id)
        if inst is None:
            return RejectReason.UNKNOWN_SYMBOL
        day = self.calendar.day(now)
        if self.config.check_market_hours and (r := check_market_hours(day, now)):
            return r
        if self.mwcb.halted(now):
            return RejectReason.MWCB_HALT
        if r := check_halt(inst.state):
            return r
        if self.config.check_luld and not is_market and inst.ref_price > 0 and day.in_regular_hours(now):
            prev = inst.prev_close or inst.ref_price
            lower, upper = band_at(inst.ref_price, inst.tier, prev, is_doubled(inst.tier, prev, now, day))
            if r := check_band(order.price, lower, upper):
                return r
        if r := check_size(order.qty, limits):
            return r
        price = inst.mark if is_market else order.price
        if price <= 0:  # a market order with no mark cannot be valued
            return RejectReason.INVALID_ORDER
        notional = order.qty * price
        if r := check_notional(notional, limits):
            return r
        return self._check_account(acct, inst, order, price, notional, day)

    def _check_account(self, acct: Account, inst: Instrument, order: RiskOrder, price: int, notional: int,
                       day: TradingDay) -> RejectReason | None:
        iid = inst.instrument_id
        signed = order.qty if order.side == OrderSide.BUY else -order.qty
        before_q = acct.positions.get(iid, 0)
        after_q = before_q + signed
        reducing = before_q != 0 and abs(after_q) <= abs(before_q) and (after_q == 0 or (after_q > 0) == (before_q > 0))
        if r := check_position(after_q, reducing, acct.limits):
            return r
        prices = self._prices(acct, iid, price)
        before = margin_state(acct.cash, acct.positions, prices)
        positions_after = dict(acct.positions)
        positions_after[iid] = after_q
        cash_after = acct.cash - signed * price
        after = margin_state(cash_after, positions_after, prices)
        if r := check_exposure(abs(after_q) * price, after.gross, before.equity, reducing, acct.limits):
            return r
        ledger = self.ledgers.setdefault(acct.name, pdt.DayTradeLedger())
        direction = pdt.Direction.BUY if signed > 0 else pdt.Direction.SELL
        view = pdt.MarginView(acct.margin, before.equity, before.maintenance, after.maintenance, notional,
                              not reducing, acct.prior_close_equity, acct.prior_close_maintenance, acct.name)
        verdict = self.policy.check(view, ledger, day.date,
                                    ledger.would_day_trade(day.date, iid, direction, order.qty, before_q))
        if verdict == pdt.PdtVerdict.INTRADAY_MARGIN_DEFICIT:
            return RejectReason.INTRADAY_MARGIN_DEFICIT
        if verdict != pdt.PdtVerdict.OK:
            return RejectReason.PDT_RESTRICTION
        return check_buying_power(acct.margin, cash_after, after_q < 0, before, after, reducing)

    def _prices(self, acct: Account, iid: int, price: int) -> dict[int, int]:
        """Valuation prices: each held instrument's mark; the order's instrument at the order's price."""
        prices = {}
        for other in acct.positions:
            inst = self.instruments.get(other)
            prices[other] = inst.mark if inst is not None and inst.mark > 0 else 0
        prices[iid] = price
        return prices


def static_rejects(qty: np.ndarray, price: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                   max_order_qty: int = NO_LIMIT, max_order_notional: int = NO_LIMIT) -> np.ndarray:
    """Vectorised stateless rules over a batch: a uint8 array of RejectReason (0 = passes).

    Checks, in ``check``'s order: invalid quantity or price, LULD band (rows with ``lower`` = 0 and
    ``upper`` = 0 skip it), size, notional. Stateful rules (rate, duplicates, account) stay per order.
    """
    qty = np.asarray(qty, dtype=np.int64)
    price = np.asarray(price, dtype=np.int64)
    out = np.zeros(qty.shape, dtype=np.uint8)
    has_band = (np.asarray(lower) != 0) | (np.asarray(upper) != 0)
    rules = [
        ((qty <= 0) | (price <= 0), RejectReason.INVALID_ORDER),
        (has_band & ((price < lower) | (price > upper)), RejectReason.PRICE_OUTSIDE_BAND),
        (qty > max_order_qty, RejectReason.SIZE_ABOVE_LIMIT),
        # notional in float64 only decides rows far from the limit; rows near it are checked exactly
        (_notional_above(qty, price, max_order_notional), RejectReason.NOTIONAL_ABOVE_LIMIT),
    ]
    for mask, reason in reversed(rules):  # earlier rules win
        out[mask] = reason
    return out


def _notional_above(qty: np.ndarray, price: np.ndarray, limit: int) -> np.ndarray:
    if limit == NO_LIMIT:
        return np.zeros(qty.shape, dtype=bool)
    approx = qty.astype(np.float64) * price.astype(np.float64)
    above = approx > limit * (1 + 1e-9)
    near = np.flatnonzero(np.abs(approx - limit) <= limit * 1e-9 + 1)
    for i in near:
        above[i] = int(qty[i]) * int(price[i]) > limit
    return above
