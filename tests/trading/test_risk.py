"""Pre-trade risk rules at their boundaries: just inside passes, just outside is refused with its reason."""
import datetime as dt

import numpy as np
import pytest

from parsers.schema import PRICE_SCALE as P
from parsers.schema import STATUS, UNDEF_PRICE, StatusKind, TradingState
from trading import pdt
from trading.luld import NANOS_PER_MINUTE, LuldTier, SessionCalendar
from trading.risk import (Account, Instrument, Limits, OrderSide, RejectReason, RiskChecker, RiskConfig,
                          RiskOrder, TokenBucket, maintenance_short, margin_state, static_rejects)

R = RejectReason
BUY, SELL, SHORT = OrderSide.BUY, OrderSide.SELL, OrderSide.SELL_SHORT
CAL = SessionCalendar()
DAY = CAL.day_of_date(dt.date(2024, 3, 11))  # Monday
MIN = NANOS_PER_MINUTE
T = DAY.open_ns + 60 * MIN  # 10:30 ET: single-width bands
IBM, XYZ = 1, 2


def dollars(x):
    return int(x * 100) * P // 100


def make(cash=100_000, margin=False, limits=None, policy=None, positions=None, config=None):
    rc = RiskChecker(CAL, policy=policy, config=config)
    rc.add_instrument(Instrument(IBM, "IBM", LuldTier.TIER_1, prev_close=100 * P, ref_price=100 * P, mark=100 * P))
    rc.add_instrument(Instrument(XYZ, "XYZ", LuldTier.TIER_2, prev_close=20 * P, ref_price=20 * P, mark=20 * P))
    rc.add_account(Account("a", dollars(cash), margin=margin, limits=limits or Limits(), positions=dict(positions or {})))
    return rc


_ids = iter(range(10**9))


def order(side=BUY, qty=100, price=100 * P, iid=IBM, account="a", coid=None):
    return RiskOrder(account, coid or f"c{next(_ids)}", iid, side, qty, price)


def status_rows(*rows):
    arr = STATUS.empty(len(rows))
    for i, (kind, ts, fields) in enumerate(rows):
        arr[i]["kind"] = kind
        arr[i]["ts_event"] = ts
        for k, v in fields.items():
            arr[i][k] = v
    return arr


def test_plain_order_passes():
    assert make().check(order(), T) is None


def test_kill_switch_global_and_per_account():
    rc = make()
    rc.kill("a")
    assert rc.check(order(), T) == R.KILL_SWITCH
    rc.release("a")
    assert rc.check(order(), T) is None
    rc.kill()
    assert rc.check(order(), T) == R.KILL_SWITCH
    rc.accounts["a"].suspended = True
    assert rc.check(order(), T) == R.KILL_SWITCH  # the kill switch comes first
    rc.release()
    assert rc.check(order(), T) == R.USER_SUSPENDED


def test_unknown_account_symbol_and_invalid_orders():
    rc = make()
    assert rc.check(order(account="b"), T) == R.UNKNOWN_ACCOUNT
    assert rc.check(order(iid=99), T) == R.UNKNOWN_SYMBOL
    assert rc.check(order(qty=0), T) == R.INVALID_ORDER
    assert rc.check(order(price=0), T) == R.INVALID_ORDER
    assert rc.check(order(qty=1), T) is None


def test_duplicate_client_order_id_even_after_a_reject():
    rc = make(limits=Limits(max_order_qty=100))
    assert rc.check(order(coid="x"), T) is None
    assert rc.check(order(coid="x"), T) == R.DUPLICATE_CLIENT_ORDER_ID
    assert rc.check(order(coid="y", qty=101), T) == R.SIZE_ABOVE_LIMIT
    assert rc.check(order(coid="y"), T) == R.DUPLICATE_CLIENT_ORDER_ID


def test_rate_limit_token_bucket():
    rc = make(limits=Limits(max_orders_per_second=2))
    assert rc.check(order(), T) is None
    assert rc.check(order(), T) is None
    assert rc.check(order(), T) == R.RATE_EXCEEDED
    assert rc.check(order(), T + 500_000_000 - 1) == R.RATE_EXCEEDED  # 0.999999998 of a token
    assert rc.check(order(), T + 500_000_000) is None


def test_token_bucket_ignores_time_going_backwards():
    b = TokenBucket(1, 1)
    assert b.take(10**9)
    assert not b.take(0)
    assert not b.take(2 * 10**9 - 1)
    assert b.take(2 * 10**9)


def test_market_hours_edges():
    rc = make()
    assert rc.check(order(), DAY.open_ns - 1) == R.OUTSIDE_MARKET_HOURS
    assert rc.check(order(), DAY.open_ns) is None
    assert rc.check(order(), DAY.close_ns - 1) is None
    assert rc.check(order(), DAY.close_ns) == R.OUTSIDE_MARKET_HOURS
    sat = CAL.day_of_date(dt.date(2024, 3, 9))
    assert rc.check(order(), sat.open_ns + 60 * MIN) == R.OUTSIDE_MARKET_HOURS
    assert make(config=RiskConfig(check_market_hours=False)).check(order(), DAY.open_ns - 1) is None


def breach(level, ts):
    return status_rows((StatusKind.MWCB_BREACH, ts, {"code": str(level).encode()}))


def test_mwcb_level_1_halts_fifteen_minutes():
    rc = make()
    t0 = DAY.open_ns + 30 * MIN  # 10:00
    rc.on_status(status_rows((StatusKind.MWCB_LEVELS, DAY.open_ns - MIN,
                              {"price_1": 4000 * P, "price_2": 3700 * P, "price_3": 3400 * P})))
    assert rc.mwcb.levels == (4000 * P, 3700 * P, 3400 * P)
    rc.on_status(breach(1, t0))
    assert rc.check(order(), t0 - 1) is None
    assert rc.check(order(), t0) == R.MWCB_HALT
    assert rc.check(order(), t0 + 15 * MIN - 1) == R.MWCB_HALT
    assert rc.check(order(), t0 + 15 * MIN) is None
    rc.on_status(breach(1, t0 + 20 * MIN))  # level 1 halts once a day
    assert rc.check(order(), t0 + 20 * MIN) is None
    rc.on_status(breach(2, t0 + 30 * MIN))
    assert rc.check(order(), t0 + 30 * MIN) == R.MWCB_HALT


def test_mwcb_level_2_at_or_after_1525_does_not_halt():
    rc = make()
    rc.on_status(breach(2, DAY.mwcb_cutoff_ns))  # 15:25:00
    assert rc.check(order(), DAY.mwcb_cutoff_ns) is None
    rc = make()
    rc.on_status(breach(2, DAY.mwcb_cutoff_ns - 1))  # 15:24:59.999999999
    assert rc.check(order(), DAY.mwcb_cutoff_ns) == R.MWCB_HALT


def test_mwcb_level_3_halts_for_the_day():
    rc = make()
    rc.on_status(breach(3, DAY.close_ns - 5 * MIN))  # 15:55: level 3 halts at any time
    assert rc.check(order(), DAY.close_ns - 1) == R.MWCB_HALT
    assert rc.mwcb.halted(DAY.end_ns - 1) and not rc.mwcb.halted(DAY.end_ns)


def test_trading_action_halts_and_resumes_one_symbol():
    rc = make()
    rc.on_status(status_rows((StatusKind.TRADING_ACTION, T, {"instrument_id": IBM, "state": TradingState.HALTED})))
    assert rc.check(order(), T) == R.HALTED
    assert rc.check(order(iid=XYZ, price=20 * P), T) is None
    rc.on_status(status_rows((StatusKind.TRADING_ACTION, T, {"instrument_id": IBM, "state": TradingState.UNCHANGED})))
    assert rc.check(order(), T) == R.HALTED
    rc.on_status(status_rows((StatusKind.TRADING_ACTION, T, {"instrument_id": IBM, "state": TradingState.TRADING})))
    assert rc.check(order(), T) is None
    for state in (TradingState.PAUSED, TradingState.QUOTE_ONLY):
        rc.on_status(status_rows((StatusKind.TRADING_ACTION, T, {"instrument_id": IBM, "state": state})))
        assert rc.check(order(), T) == R.HALTED


def test_luld_band_edges():
    rc = make(positions={IBM: 100})
    assert rc.check(order(price=105 * P), T) is None
    assert rc.check(order(price=105 * P + 1), T) == R.PRICE_OUTSIDE_BAND
    assert rc.check(order(side=SELL, qty=1, price=95 * P), T) is None
    assert rc.check(order(price=95 * P - 1), T) == R.PRICE_OUTSIDE_BAND
    assert rc.check(order(price=int(UNDEF_PRICE)), T) is None  # market orders: no limit to check


def test_luld_band_doubles_until_0945_and_from_1535():
    rc = make()
    assert rc.check(order(price=110 * P), DAY.open_doubled_end_ns - 1) is None
    assert rc.check(order(price=110 * P), DAY.open_doubled_end_ns) == R.PRICE_OUTSIDE_BAND
    assert rc.check(order(price=110 * P), DAY.close_doubled_start_ns - 1) == R.PRICE_OUTSIDE_BAND
    assert rc.check(order(price=110 * P), DAY.close_doubled_start_ns) is None
    # XYZ is Tier 2 above $3.00: 10%, doubled at the open only
    assert rc.check(order(iid=XYZ, price=24 * P), DAY.open_ns) is None
    assert rc.check(order(iid=XYZ, price=24 * P), DAY.close_doubled_start_ns) == R.PRICE_OUTSIDE_BAND
    assert rc.check(order(iid=XYZ, price=22 * P), DAY.close_doubled_start_ns) is None


def test_order_size_and_notional():
    rc = make(limits=Limits(max_order_qty=100, max_order_notional=10_000 * P))
    assert rc.check(order(qty=100), T) is None
    assert rc.check(order(qty=101), T) == R.SIZE_ABOVE_LIMIT  # size is checked before notional
    assert rc.check(order(qty=100, price=100 * P + 1), T) == R.NOTIONAL_ABOVE_LIMIT
    rc.instruments[IBM].mark = 100 * P + 1  # market orders are valued at the mark
    assert rc.check(order(qty=100, price=int(UNDEF_PRICE)), T) == R.NOTIONAL_ABOVE_LIMIT


def test_position_limit_and_reductions():
    rc = make(margin=True, limits=Limits(max_position_qty=500), positions={IBM: 400})
    assert rc.check(order(qty=100), T) is None
    assert rc.check(order(qty=101), T) == R.POSITION_LIMIT
    assert rc.check(order(side=SELL, qty=900), T) is None  # to -500
    assert rc.check(order(side=SELL, qty=901), T) == R.POSITION_LIMIT
    rc.accounts["a"].positions[IBM] = 900  # above the limit already: reducing is allowed
    assert rc.check(order(side=SELL, qty=400), T) is None


def test_symbol_and_gross_exposure():
    rc = make(limits=Limits(max_symbol_exposure_bp=5000))  # 50% of $100,000 equity
    assert rc.check(order(qty=500), T) is None
    assert rc.check(order(qty=501), T) == R.SYMBOL_EXPOSURE_LIMIT
    rc = make(cash=50_000, limits=Limits(max_gross_exposure_bp=10_000), positions={XYZ: 1000})
    # equity = 50,000 + 20,000; gross after = 20,000 + 500 x 100 = 70,000: at the limit
    assert rc.check(order(qty=500), T) is None
    assert rc.check(order(qty=501), T) == R.GROSS_EXPOSURE_LIMIT


def test_cash_account():
    rc = make(cash=10_000)
    assert rc.check(order(qty=100), T) is None  # exactly the cash
    assert rc.check(order(qty=100, price=100 * P + 1), T) == R.INSUFFICIENT_BUYING_POWER
    assert rc.check(order(side=SHORT, qty=1), T) == R.SHORT_NOT_ALLOWED
    rc.accounts["a"].positions[IBM] = 10
    assert rc.check(order(side=SELL, qty=10), T) is None
    assert rc.check(order(side=SELL, qty=11), T) == R.SHORT_NOT_ALLOWED


def test_reg_t_initial_margin_fifty_percent():
    rc = make(cash=10_000, margin=True)
    assert rc.check(order(qty=200), T) is None  # $20,000 with $10,000 equity
    assert rc.check(order(qty=201), T) == R.INSUFFICIENT_BUYING_POWER
    assert rc.check(order(side=SHORT, qty=200), T) is None  # 150% of proceeds held
    assert rc.check(order(side=SHORT, qty=201), T) == R.INSUFFICIENT_BUYING_POWER


def test_account_in_deficit_may_only_reduce():
    # 1000 IBM at $100 against a $90,000 debit: equity $10,000 < maintenance $25,000
    rc = make(cash=-90_000, margin=True, positions={IBM: 1000})
    assert rc.check(order(side=SELL, qty=100), T) is None
    assert rc.check(order(qty=1), T) == R.INSUFFICIENT_BUYING_POWER


def test_margin_minimum_equity_2000():
    rc = make(cash=2_000, margin=True)
    assert rc.check(order(qty=40), T) is None  # $4,000 on $2,000 equity: Reg T 50% exactly
    rc = make(cash=2_000, margin=True)
    rc.accounts["a"].cash -= 1  # $1,999.999999999
    assert rc.check(order(qty=19), T) is None  # paid in full
    assert rc.check(order(qty=20), T) == R.MIN_EQUITY  # would borrow
    assert rc.check(order(side=SHORT, qty=1), T) == R.MIN_EQUITY


def test_maintenance_requirements():
    assert maintenance_short(100, 4 * P) == 400 * P  # under $5: 100% beats $2.50/share
    assert maintenance_short(100, 2 * P) == 250 * P  # $2.50/share beats 100%
    assert maintenance_short(100, 5 * P) == 500 * P  # $5.00/share beats 30%
    assert maintenance_short(100, 20 * P) == 600 * P  # 30%
    m = margin_state(-50_000 * P, {IBM: 1000, XYZ: -100}, {IBM: 100 * P, XYZ: 20 * P})
    assert m.equity == (-50_000 + 100_000 - 2_000) * P
    assert m.maintenance == (25_000 + 600) * P
    assert m.initial == 51_000 * P


def test_legacy_pdt_blocks_fourth_day_trade_under_25000():
    rc = make(cash=20_000, margin=True, policy=pdt.LegacyPdtPolicy())
    led = rc.ledgers["a"]
    for k in range(1, 4):  # Wed, Thu, Fri of the week before: one day trade each
        led.day_trades[DAY.date - dt.timedelta(days=6 - k)] = 1
        led.trades[DAY.date - dt.timedelta(days=6 - k)] = 2
    rc.record_fill("a", IBM, BUY, 10, 100 * P, T)
    rc.accounts["a"].positions[IBM] = 10
    rc.accounts["a"].cash -= 1000 * P
    assert rc.check(order(side=SELL, qty=10), T) == R.PDT_RESTRICTION
    assert rc.check(order(iid=XYZ, qty=10, price=20 * P), T) is None  # not a day trade
    rc.accounts["a"].cash += 5_000 * P  # equity 25,000
    assert rc.check(order(side=SELL, qty=10), T) is None


def test_intraday_margin_policy_blocks_new_deficit():
    # 1000 IBM marked at $12 against a $9,000 debit: equity $3,000 = maintenance $3,000
    rc = make(cash=-9_000, margin=True, positions={IBM: 1000}, policy=pdt.IntradayMarginPolicy())
    rc.instruments[IBM].mark = 12 * P
    rc.instruments[IBM].ref_price = 12 * P
    assert rc.check(order(qty=1, price=12 * P), T) == R.INTRADAY_MARGIN_DEFICIT
    assert rc.check(order(side=SELL, qty=1, price=12 * P), T) is None


def test_static_rejects_batch():
    qty = np.array([100, 0, 100, 101, 100])
    price = np.array([100, 100, 106, 100, 101]) * P
    lower = np.full(5, 95 * P)
    upper = np.full(5, 105 * P)
    out = static_rejects(qty, price, lower, upper, max_order_qty=100, max_order_notional=10_000 * P)
    assert out.tolist() == [0, R.INVALID_ORDER, R.PRICE_OUTSIDE_BAND, R.SIZE_ABOVE_LIMIT, R.NOTIONAL_ABOVE_LIMIT]
    assert static_rejects(qty[:1], price[:1] + 1, lower[:1], upper[:1], max_order_notional=10_000 * P).tolist() == [
        R.NOTIONAL_ABOVE_LIMIT]


@pytest.mark.parametrize("reason", list(RejectReason))
def test_reason_codes_are_stable_and_unique(reason):
    assert list(RejectReason).count(reason) == 1 and 1 <= reason <= 21
