"""Day trading rules as pluggable pre-trade policies: FINRA's legacy pattern day trader rule and the
intraday margin standard that replaces it.

Rules this module keeps:
- no I/O, no clock: dates and epoch-ns times come in as arguments; business days come from the
  caller's holiday set (weekends are never business days).
- a policy sees the account through a ``MarginView`` the risk checker computes (equity, maintenance
  requirements, the order's effect) and a ``DayTradeLedger`` fed with fills; it answers with a
  ``PdtVerdict`` (OK or why not). It never mutates the ledger in ``check``.
- every number is a named, documented parameter of the policy; ``make_policy`` picks one by name.

Sources:
- Legacy: FINRA Rule 4210(f)(8)(B) (day trading; pattern day trader: 4 or more day trades within 5
  business days, if they are more than 6% of the customer's trades in that period; $25,000 minimum
  equity on any day the customer day trades; day-trading buying power up to 4x maintenance margin
  excess as of the close of the previous day), and Interpretation /02 of 4210(f)(8)(B)(ii) (Regulatory
  Notice 21-13: day trades may be counted as changes of direction within a day).
- Replacement: SR-FINRA-2025-017 as modified by Amendment No. 1, approved by the SEC on 2026-04-14
  (Release No. 34-105226, 91 FR 20731), effective 2026-06-04, with an implementation period to
  2027-10-20 (FINRA Regulatory Notice 26-10). It deletes 4210(f)(8)(B) (the PDT designation, the day
  trade count, the $25,000 minimum and day-trading buying power) and adds an intraday margin standard
  (new 4210(a)(17)-(19), (d)(2)): equity must stay commensurate with intraday exposure, and members may
  block transactions that would create or increase an intraday margin deficit. The exact text of the
  new paragraphs was not available to us: ``IntradayMarginPolicy`` states its assumptions.
"""
from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

from parsers.schema import PRICE_SCALE

PDT_MIN_EQUITY = 25_000 * PRICE_SCALE  # 4210(f)(8)(B)(iv)(a)
PDT_DAY_TRADES = 4  # "four or more day trades within five business days"
PDT_WINDOW_BUSINESS_DAYS = 5
PDT_MIN_SHARE_BP = 600  # "... provided the day trades are more than six percent of total trades"
PDT_DTBP_MULTIPLE = 4  # day-trading buying power = 4 x maintenance margin excess at prior close
INTRADAY_MARGIN_EFFECTIVE = dt.date(2026, 6, 4)
INTRADAY_MARGIN_PHASE_IN_END = dt.date(2027, 10, 20)


class PdtVerdict(enum.IntEnum):
    """A policy's answer for one order."""

    OK = 0
    DAY_TRADE_BELOW_MIN_EQUITY = 1  # a (pattern) day trade with equity under the minimum
    DAY_TRADING_BUYING_POWER = 2  # the opening order exceeds day-trading buying power
    INTRADAY_MARGIN_DEFICIT = 3  # the order would create or increase an intraday margin deficit
    RESTRICTED = 4  # the account is restricted (unmet call): closing transactions only


class Direction(enum.IntEnum):
    BUY = 1
    SELL = -1


@dataclass(frozen=True)
class MarginView:
    """The account as a day trading policy needs it, computed by the risk checker (1e-9 units).

    ``*_after`` assume the order fills completely at its price; requirements are maintenance margin.
    """

    margin_account: bool
    equity: int
    maintenance_before: int
    maintenance_after: int
    order_notional: int
    opening: bool  # the order opens or increases a position (does not only reduce one)
    prior_close_equity: int  # equity at the previous business day's close
    prior_close_maintenance: int  # maintenance requirement at that close
    account: str = ""


@dataclass
class _SymbolDay:
    last_dir: int = 0  # Direction of the last fill today; 0 = none yet
    last_exempt: bool = False  # that fill only reduced an overnight position before any opposite trade
    open_shares: int = 0  # signed shares opened today and still open (intraday exposure)
    open_cost: int = 0  # their cost, 1e-9 units


@dataclass
class DayTradeLedger:
    """Per-account day trade counts by business day, fed with fills (``record_fill``).

    A day trade is counted per change of direction in a symbol within a day (Interpretation /02),
    except that selling a long held overnight before any new purchase that day (or covering a short
    held overnight before any new sale) is not a day trade (4210(f)(8)(B)(i)).
    """

    day: dt.date | None = None
    symbols: dict[int, _SymbolDay] = field(default_factory=dict)
    day_trades: dict[dt.date, int] = field(default_factory=dict)
    trades: dict[dt.date, int] = field(default_factory=dict)
    designated: bool = False  # flagged pattern day trader (sticky until reset_designation)

    def _roll(self, date: dt.date) -> None:
        if self.day != date:
            self.day = date
            self.symbols = {}

    @staticmethod
    def _classify(s: _SymbolDay | None, direction: int, qty: int, position_before: int) -> tuple[bool, bool]:
        """(is a day trade, is exempt) for a fill of ``qty`` shares in ``direction``."""
        last_dir = s.last_dir if s is not None else 0
        last_exempt = s.last_exempt if s is not None else False
        day_trade = last_dir != 0 and last_dir != direction and not last_exempt
        # exempt: reduces an overnight position without crossing zero, before any opposite trade today
        no_opposite_yet = last_dir == 0 or (last_dir == direction and last_exempt)
        reduces = position_before * direction < 0 and qty <= abs(position_before)
        return day_trade, no_opposite_yet and reduces

    def would_day_trade(self, date: dt.date, instrument_id: int, direction: int, qty: int,
                        position_before: int) -> bool:
        """True if a fill of this order on ``date`` would be a day trade (no state change)."""
        s = self.symbols.get(instrument_id) if self.day == date else None
        return self._classify(s, direction, qty, position_before)[0]

    def record_fill(self, date: dt.date, instrument_id: int, direction: int, qty: int, price: int,
                    position_before: int) -> bool:
        """Record a fill (``direction`` BUY/SELL, ``qty`` > 0 shares); returns True if it was a day trade."""
        self._roll(date)
        s = self.symbols.setdefault(instrument_id, _SymbolDay())
        day_trade, exempt = self._classify(s, direction, qty, position_before)
        s.last_dir, s.last_exempt = direction, exempt
        # intraday exposure: close shares opened today first, then reduce the overnight position,
        # and whatever is left opens (or adds to) a position today
        closed = 0
        if s.open_shares * direction < 0:
            closed = min(qty, abs(s.open_shares))
            s.open_cost -= s.open_cost * closed // abs(s.open_shares)
            s.open_shares += direction * closed
        rest = qty - closed
        pos_mid = position_before + direction * closed
        overnight_reduced = min(rest, abs(pos_mid)) if pos_mid * direction < 0 else 0
        opened = rest - overnight_reduced
        s.open_shares += direction * opened
        s.open_cost += opened * price
        self.trades[date] = self.trades.get(date, 0) + 1
        if day_trade:
            self.day_trades[date] = self.day_trades.get(date, 0) + 1
        return day_trade

    def intraday_open_cost(self, date: dt.date) -> int:
        """Cost of positions opened today and still open (the day trading exposure), 1e-9 units."""
        if self.day != date:
            return 0
        return sum(s.open_cost for s in self.symbols.values())

    def window(self, date: dt.date, business_days: int, is_business_day) -> list[dt.date]:
        """The last ``business_days`` business days ending with ``date`` (``date`` counts if a business day)."""
        out, d = [], date
        while len(out) < business_days:
            if is_business_day(d):
                out.append(d)
            d -= dt.timedelta(days=1)
        return out

    def count(self, date: dt.date, business_days: int, is_business_day) -> tuple[int, int]:
        """(day trades, all trades) over the window of ``business_days`` ending with ``date``."""
        days = self.window(date, business_days, is_business_day)
        return (sum(self.day_trades.get(d, 0) for d in days), sum(self.trades.get(d, 0) for d in days))

    def reset_designation(self) -> None:
        """Lift a PDT designation (Interpretation /03: the customer's good-faith certification)."""
        self.designated = False


def weekday_business_days(holidays: frozenset[dt.date] = frozenset()):
    """A business day predicate: Monday to Friday, except ``holidays``."""
    return lambda d: d.weekday() < 5 and d not in holidays


class DayTradingPolicy:
    """Interface: ``check`` before an order; ``name`` for configuration and logs."""

    name = "none"

    def check(self, view: MarginView, ledger: DayTradeLedger, date: dt.date, would_day_trade: bool) -> PdtVerdict:
        return PdtVerdict.OK


@dataclass
class LegacyPdtPolicy(DayTradingPolicy):
    """FINRA 4210(f)(8)(B) before the 2026 amendments, applied pre-trade to margin accounts.

    - pattern day trader: ``designated`` on the ledger, or ``day_trades`` or more day trades in the last
      ``window_days`` business days that are more than ``min_share_bp`` of all trades in that window.
    - a day trade by a pattern day trader, or one that would make the account one (the count reaching
      ``day_trades``), is refused when equity is under ``min_equity`` (brokers' usual pre-trade form of
      the rule; the rule itself issues a call afterwards).
    - a pattern day trader's opening orders are refused once today's intraday-opened cost plus the order
      would exceed ``dtbp_multiple`` x maintenance margin excess at the previous close.
    Cash accounts are outside the rule (OK).
    """

    name = "legacy"
    min_equity: int = PDT_MIN_EQUITY
    day_trades: int = PDT_DAY_TRADES
    window_days: int = PDT_WINDOW_BUSINESS_DAYS
    min_share_bp: int = PDT_MIN_SHARE_BP
    dtbp_multiple: int = PDT_DTBP_MULTIPLE
    holidays: frozenset[dt.date] = frozenset()
    _windows: dict[dt.date, list[dt.date]] = field(default_factory=dict, repr=False, compare=False)

    def is_pattern_day_trader(self, ledger: DayTradeLedger, date: dt.date, extra_day_trades: int = 0) -> bool:
        if ledger.designated:
            return True
        days = self._windows.get(date)
        if days is None:  # the window of a date never changes: computed once per date
            days = self._windows[date] = ledger.window(date, self.window_days, weekday_business_days(self.holidays))
        n_dt = sum(ledger.day_trades.get(d, 0) for d in days)
        n_all = sum(ledger.trades.get(d, 0) for d in days)
        n_dt += extra_day_trades
        n_all += extra_day_trades
        return n_dt >= self.day_trades and n_dt * 10_000 > self.min_share_bp * n_all

    def day_trading_buying_power(self, view: MarginView) -> int:
        return max(0, self.dtbp_multiple * (view.prior_close_equity - view.prior_close_maintenance))

    def check(self, view: MarginView, ledger: DayTradeLedger, date: dt.date, would_day_trade: bool) -> PdtVerdict:
        if not view.margin_account:
            return PdtVerdict.OK
        pdt_now = self.is_pattern_day_trader(ledger, date)
        if would_day_trade and view.equity < self.min_equity and (
                pdt_now or self.is_pattern_day_trader(ledger, date, extra_day_trades=1)):
            return PdtVerdict.DAY_TRADE_BELOW_MIN_EQUITY
        if pdt_now and view.opening:
            if ledger.intraday_open_cost(date) + view.order_notional > self.day_trading_buying_power(view):
                return PdtVerdict.DAY_TRADING_BUYING_POWER
        return PdtVerdict.OK


@dataclass
class IntradayMarginPolicy(DayTradingPolicy):
    """The intraday margin standard replacing the PDT rule (SR-FINRA-2025-017, effective 2026-06-04).

    What the rule does (from the approval order and FINRA's notice): no day trade count, no PDT
    designation, no $25,000 minimum, no day-trading buying power; a customer's equity must cover the
    margin required on the positions held at any time during the day; a member may block transactions
    that would create or increase an intraday margin deficit, or call for it afterwards.

    What we assume (parameters, named so they can be changed when the rule text is in hand):
    - ``block``: True = the "block" implementation: refuse an opening order if, after it fills, equity
      (at real-time marks) would be under the maintenance requirement of the positions (25% long /
      30% short, FINRA 4210(c), computed by the risk checker) plus ``house_buffer_bp`` of it. An order
      that only reduces positions is never blocked. False = never block (the "call afterwards" form).
    - ``restricted_until``: a date set by whoever tracks calls (an intraday margin call unmet within
      5 business days restricts the account for 90 days, per secondary sources); until then only
      reducing orders pass (``RESTRICTED``).
    - the $2,000 minimum equity of 4210(b) still applies; the risk checker enforces it for all margin
      accounts, so it is not repeated here.
    """

    name = "intraday_margin"
    block: bool = True
    house_buffer_bp: int = 0
    restricted_until: dict[str, dt.date] = field(default_factory=dict)  # account -> last restricted date

    def required(self, maintenance: int) -> int:
        return maintenance + maintenance * self.house_buffer_bp // 10_000

    def check(self, view: MarginView, ledger: DayTradeLedger, date: dt.date, would_day_trade: bool) -> PdtVerdict:
        if not view.margin_account or not view.opening:
            return PdtVerdict.OK
        until = self.restricted_until.get(view.account)
        if until is not None and date <= until:
            return PdtVerdict.RESTRICTED
        if not self.block:
            return PdtVerdict.OK
        deficit_before = self.required(view.maintenance_before) - view.equity
        deficit_after = self.required(view.maintenance_after) - view.equity
        if deficit_after > 0 and deficit_after > deficit_before:  # creates or increases a deficit
            return PdtVerdict.INTRADAY_MARGIN_DEFICIT
        return PdtVerdict.OK


@dataclass
class ScheduledPolicy(DayTradingPolicy):
    """Legacy rule before ``switch_date``, the intraday margin standard from it on (a firm's transition
    date: not before 2026-06-04, not after 2027-10-20)."""

    name = "scheduled"
    legacy: LegacyPdtPolicy = field(default_factory=LegacyPdtPolicy)
    intraday: IntradayMarginPolicy = field(default_factory=IntradayMarginPolicy)
    switch_date: dt.date = INTRADAY_MARGIN_EFFECTIVE

    def __post_init__(self) -> None:
        if not INTRADAY_MARGIN_EFFECTIVE <= self.switch_date <= INTRADAY_MARGIN_PHASE_IN_END:
            raise ValueError(f"transition date {self.switch_date} outside {INTRADAY_MARGIN_EFFECTIVE}.."
                             f"{INTRADAY_MARGIN_PHASE_IN_END}")

    def policy_for(self, date: dt.date) -> DayTradingPolicy:
        return self.intraday if date >= self.switch_date else self.legacy

    def check(self, view: MarginView, ledger: DayTradeLedger, date: dt.date, would_day_trade: bool) -> PdtVerdict:
        return self.policy_for(date).check(view, ledger, date, would_day_trade)


_POLICIES = {
    "none": DayTradingPolicy,
    "legacy": LegacyPdtPolicy,
    "intraday_margin": IntradayMarginPolicy,
    "scheduled": ScheduledPolicy,
}


def make_policy(name: str, **params) -> DayTradingPolicy:
    """The policy called ``name`` ("none", "legacy", "intraday_margin", "scheduled") with ``params``."""
    try:
        cls = _POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown day trading policy {name!r}; one of {sorted(_POLICIES)}") from None
    return cls(**params)
