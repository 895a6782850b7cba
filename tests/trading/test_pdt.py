"""Day trade counting and the two day trading policies at their boundaries."""
import datetime as dt

import pytest

from parsers.schema import PRICE_SCALE as P
from trading import pdt
from trading.pdt import (DayTradeLedger, Direction, IntradayMarginPolicy, LegacyPdtPolicy, MarginView,
                         PdtVerdict, ScheduledPolicy, make_policy)

BUY, SELL = Direction.BUY, Direction.SELL
MON = dt.date(2024, 3, 4)


def d(offset):
    return MON + dt.timedelta(days=offset)


def fills(ledger, day, seq, position=0, iid=1, price=10 * P):
    """Apply (direction, qty) fills in order from ``position``; returns the day trade flags."""
    out = []
    for direction, qty in seq:
        out.append(ledger.record_fill(day, iid, direction, qty, price, position))
        position += direction * qty
    return out


def test_buy_then_sell_same_day_is_one_day_trade():
    led = DayTradeLedger()
    assert fills(led, MON, [(BUY, 100), (SELL, 50), (SELL, 50)]) == [False, True, False]
    assert led.day_trades[MON] == 1 and led.trades[MON] == 3


def test_direction_changes_count():  # Interpretation /02
    led = DayTradeLedger()
    assert fills(led, MON, [(BUY, 100), (SELL, 100), (BUY, 100), (SELL, 100)]) == [False, True, True, True]


def test_short_then_cover_is_a_day_trade():
    assert fills(DayTradeLedger(), MON, [(SELL, 100), (BUY, 100)]) == [False, True]


def test_selling_overnight_long_before_any_purchase_is_not_a_day_trade():
    led = DayTradeLedger()
    assert fills(led, MON, [(SELL, 60), (SELL, 40), (BUY, 100)], position=100) == [False, False, False]
    assert led.day_trades.get(MON, 0) == 0


def test_covering_overnight_short_before_any_sale_is_not_a_day_trade():
    assert fills(DayTradeLedger(), MON, [(BUY, 100), (SELL, 100)], position=-100) == [False, False]


def test_buy_then_sell_with_overnight_long_is_a_day_trade():
    assert fills(DayTradeLedger(), MON, [(BUY, 100), (SELL, 100)], position=100) == [False, True]


def test_selling_through_an_overnight_long_then_buying_is_a_day_trade():
    assert fills(DayTradeLedger(), MON, [(SELL, 150), (BUY, 50)], position=100) == [False, True]


def test_across_days_is_not_a_day_trade():
    led = DayTradeLedger()
    fills(led, MON, [(BUY, 100)])
    assert fills(led, d(1), [(SELL, 100)], position=100) == [False]


def test_symbols_are_separate():
    led = DayTradeLedger()
    led.record_fill(MON, 1, BUY, 100, P, 0)
    assert not led.record_fill(MON, 2, SELL, 100, P, 0)


def test_would_day_trade_changes_nothing():
    led = DayTradeLedger()
    fills(led, MON, [(BUY, 100)])
    assert led.would_day_trade(MON, 1, SELL, 100, 100)
    assert not led.would_day_trade(d(1), 1, SELL, 100, 100)  # a new day
    assert led.day_trades.get(MON, 0) == 0


def test_intraday_open_cost():
    led = DayTradeLedger()
    fills(led, MON, [(BUY, 100), (SELL, 40)], price=10 * P)
    assert led.intraday_open_cost(MON) == 60 * 10 * P
    assert led.intraday_open_cost(d(1)) == 0
    led2 = DayTradeLedger()
    fills(led2, MON, [(SELL, 150)], position=100, price=10 * P)  # 100 overnight sold, 50 opened short
    assert led2.intraday_open_cost(MON) == 50 * 10 * P


def test_five_business_day_window_skips_weekends_and_holidays():
    led = DayTradeLedger()
    for offset in (1, 2, 3):  # Tue, Wed, Thu: one day trade each
        fills(led, d(offset), [(BUY, 1), (SELL, 1)])
    is_bd = pdt.weekday_business_days()
    assert led.count(d(7), 5, is_bd)[0] == 3  # next Monday: window Tue..Mon
    assert led.count(d(8), 5, is_bd)[0] == 2  # next Tuesday: last Tuesday has left
    assert led.count(d(8), 5, pdt.weekday_business_days(frozenset({d(7)})))[0] == 3  # Monday a holiday
    assert led.window(d(7), 5, is_bd) == [d(7), d(4), d(3), d(2), d(1)]


def view(equity, margin=True, opening=True, notional=0, before=0, after=0, prior_eq=0, prior_maint=0, account="a"):
    return MarginView(margin, equity, before, after, notional, opening, prior_eq, prior_maint, account)


def ledger_with(day_trades, trades=None, day=MON):
    led = DayTradeLedger()
    led.day_trades[day] = day_trades
    led.trades[day] = trades if trades is not None else day_trades * 2
    return led


def test_legacy_fourth_day_trade_needs_25000():
    pol = LegacyPdtPolicy()
    led = ledger_with(3)
    assert pol.check(view(25_000 * P - 1), led, MON, True) == PdtVerdict.DAY_TRADE_BELOW_MIN_EQUITY
    assert pol.check(view(25_000 * P), led, MON, True) == PdtVerdict.OK
    assert pol.check(view(25_000 * P - 1), led, MON, False) == PdtVerdict.OK  # not a day trade
    assert pol.check(view(25_000 * P - 1), ledger_with(2), MON, True) == PdtVerdict.OK  # only the 3rd
    assert pol.check(view(0, margin=False), led, MON, True) == PdtVerdict.OK  # cash account


def test_legacy_six_percent_of_trades():
    pol = LegacyPdtPolicy()
    assert pol.is_pattern_day_trader(ledger_with(6, 99), MON)  # 6.06%
    assert not pol.is_pattern_day_trader(ledger_with(6, 100), MON)  # exactly 6%: not "more than"
    assert not pol.is_pattern_day_trader(ledger_with(3, 3), MON)


def test_legacy_day_trading_buying_power_is_four_times_excess():
    pol = LegacyPdtPolicy()
    led = DayTradeLedger(designated=True)
    fills(led, MON, [(BUY, 10_000)], price=10 * P)  # 100k opened today
    dtbp = 4 * (50_000 - 10_000) * P
    ok = view(50_000 * P, notional=dtbp - 100_000 * P, prior_eq=50_000 * P, prior_maint=10_000 * P)
    assert pol.check(ok, led, MON, False) == PdtVerdict.OK
    over = view(50_000 * P, notional=dtbp - 100_000 * P + 1, prior_eq=50_000 * P, prior_maint=10_000 * P)
    assert pol.check(over, led, MON, False) == PdtVerdict.DAY_TRADING_BUYING_POWER
    closing = view(50_000 * P, opening=False, notional=10**15, prior_eq=50_000 * P, prior_maint=10_000 * P)
    assert pol.check(closing, led, MON, True) == PdtVerdict.OK


def test_intraday_margin_blocks_only_deficit_creating_orders():
    pol = IntradayMarginPolicy()
    led = ledger_with(50)  # counts do not matter any more
    assert pol.check(view(10_000 * P, after=10_000 * P), led, MON, True) == PdtVerdict.OK
    assert pol.check(view(10_000 * P, after=10_000 * P + 1), led, MON, True) == PdtVerdict.INTRADAY_MARGIN_DEFICIT
    assert pol.check(view(10_000 * P, opening=False, after=10**18), led, MON, True) == PdtVerdict.OK
    assert pol.check(view(1_000 * P), led, MON, True) == PdtVerdict.OK  # no $25,000 minimum
    buffered = IntradayMarginPolicy(house_buffer_bp=1000)
    assert buffered.check(view(11_000 * P, after=10_000 * P), led, MON, True) == PdtVerdict.OK
    assert buffered.check(view(11_000 * P - 1, after=10_000 * P), led, MON, True) == PdtVerdict.INTRADAY_MARGIN_DEFICIT
    assert IntradayMarginPolicy(block=False).check(view(0, after=10**18), led, MON, True) == PdtVerdict.OK


def test_intraday_margin_restriction_lasts_through_its_date():
    pol = IntradayMarginPolicy(restricted_until={"a": d(1)})
    assert pol.check(view(10**18), DayTradeLedger(), d(1), False) == PdtVerdict.RESTRICTED
    assert pol.check(view(10**18, opening=False), DayTradeLedger(), d(1), False) == PdtVerdict.OK
    assert pol.check(view(10**18), DayTradeLedger(), d(2), False) == PdtVerdict.OK


def test_scheduled_switches_on_effective_date():
    pol = ScheduledPolicy()
    assert isinstance(pol.policy_for(dt.date(2026, 6, 3)), LegacyPdtPolicy)
    assert isinstance(pol.policy_for(dt.date(2026, 6, 4)), IntradayMarginPolicy)
    led = ledger_with(3, day=dt.date(2026, 6, 3))
    assert pol.check(view(1_000 * P), led, dt.date(2026, 6, 3), True) == PdtVerdict.DAY_TRADE_BELOW_MIN_EQUITY
    led = ledger_with(3, day=dt.date(2026, 6, 4))
    assert pol.check(view(1_000 * P), led, dt.date(2026, 6, 4), True) == PdtVerdict.OK
    ScheduledPolicy(switch_date=dt.date(2027, 10, 20))
    with pytest.raises(ValueError):
        ScheduledPolicy(switch_date=dt.date(2027, 10, 21))
    with pytest.raises(ValueError):
        ScheduledPolicy(switch_date=dt.date(2026, 6, 3))


def test_make_policy_by_name():
    assert isinstance(make_policy("legacy", min_equity=1), LegacyPdtPolicy)
    assert isinstance(make_policy("intraday_margin"), IntradayMarginPolicy)
    assert make_policy("none").name == "none"
    with pytest.raises(ValueError):
        make_policy("pdt2")
