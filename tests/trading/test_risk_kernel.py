"""The compiled risk gate: every rule at its boundary (at the limit passes, one unit over is refused with
its reason), reservations across a batch and their release by events, the day trading policies in
the order path, agreement with the matching kernel's open orders, and a differential run against
``trading.risk.RiskChecker`` on thousands of seeded random orders."""
import datetime as dt
import itertools

import numpy as np
import pytest

from parsers.schema import PRICE_SCALE as P
from parsers.schema import STATUS, UNDEF_PRICE, StatusKind, TradingState
from trading import pdt
from trading.luld import NANOS_PER_MINUTE, LuldTier, SessionCalendar, band_at
from trading.matching import FREE, O_ACCOUNT, O_ID, O_INST, O_LEAVES, O_SIDE, O_STATE, MatchingEngine
from trading.orders import (ORDER_EVENT, CommandKind, EventKind, OrderSide, OrderType, Reason, TimeInForce,
                            commands)
from trading.portfolio import Portfolio
from trading.risk import Account, Instrument, Limits, RejectReason, RiskChecker, RiskConfig, RiskOrder
from trading.risk_kernel import AC_RES_BUY, AC_RES_OPENING, GateConfig, RiskGate, band_edges

R = Reason
BUY, SELL, SHORT = OrderSide.BUY, OrderSide.SELL, OrderSide.SELL_SHORT
MARKET, LIMIT, STOP, STOP_LIMIT = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT
CAL = SessionCalendar()
DAY = CAL.day_of_date(dt.date(2024, 3, 11))  # Monday
MIN = NANOS_PER_MINUTE
T = DAY.open_ns + 60 * MIN  # 10:30 ET: single-width bands
A = 1  # the account of most tests
IBM, XYZ, LOW, NOREF = 1, 2, 3, 4
_ids = itertools.count(1)


def dollars(x):
    return int(round(x * 100)) * P // 100


def make(cash=100_000, margin=False, limits=None, policy=None, config=None):
    """A gate over a 3-account x 5-instrument portfolio: IBM (Tier 1, $100), XYZ (Tier 2, $20), LOW
    (Tier 2, $4) and NOREF (no reference price, marked at $50); account A holds ``cash`` dollars."""
    pf = Portfolio(3, 5)
    pf.deposit(A, dollars(cash))
    gate = RiskGate(pf, CAL, policy, config)
    gate.add_instrument(IBM, "IBM", LuldTier.TIER_1, prev_close=100 * P)
    gate.add_instrument(XYZ, "XYZ", LuldTier.TIER_2, prev_close=20 * P)
    gate.add_instrument(LOW, "LOW", LuldTier.TIER_2, prev_close=4 * P)
    gate.add_instrument(NOREF, "NOREF", LuldTier.TIER_2)
    pf.set_marks([IBM, XYZ, LOW, NOREF], [100 * P, 20 * P, 4 * P, 50 * P])
    gate.add_account(A, "a", margin, limits or Limits())
    return gate


def order(side=BUY, qty=100, price=100 * P, iid=IBM, ts=T, typ=LIMIT, tif=TimeInForce.DAY, account=A, oid=None,
          stop=UNDEF_PRICE):
    return {"kind": CommandKind.NEW, "order_id": next(_ids) if oid is None else oid, "account": account,
            "instrument_id": iid, "side": side, "order_type": typ, "tif": tif, "qty": qty, "price": price,
            "stop_price": stop, "ts": ts}


def market(side=BUY, qty=100, iid=IBM, ts=T, **kw):
    return order(side, qty, UNDEF_PRICE, iid, ts, MARKET, TimeInForce.IOC, **kw)


def check(gate, *rows):
    """Reasons of one batch of order dicts."""
    return [R(r) for r in gate.check(commands(*rows))]


def one(gate, **kw):
    return check(gate, order(**kw))[0]


def event(kind, o, qty=0, leaves=0, price=None, reason=0, ts=T):
    e = ORDER_EVENT.empty(1)
    e["kind"] = kind
    e["order_id"] = o["order_id"]
    e["account"] = o["account"]
    e["instrument_id"] = o["instrument_id"]
    e["side"] = o["side"]
    e["qty"] = qty
    e["leaves"] = leaves
    e["price"] = o["price"] if price is None else price
    e["reason"] = reason
    e["ts"] = ts
    return e


def fill(gate, o, qty=None, price=None, leaves=0, ts=T):
    gate.on_events(event(EventKind.FILL, o, qty or o["qty"], leaves, price, ts=ts))


def hold(gate, iid, qty, price, account=A):
    """A position from before today (applied to the portfolio directly, as an overnight position)."""
    o = order(BUY if qty > 0 else SELL, abs(qty), price, iid, account=account)
    gate.portfolio.apply_fills(event(EventKind.FILL, o, abs(qty)))


def status_rows(*rows):
    arr = STATUS.empty(len(rows))
    for i, (kind, ts, fields) in enumerate(rows):
        arr[i]["kind"] = kind
        arr[i]["ts_event"] = ts
        for k, v in fields.items():
            arr[i][k] = v
    return arr


def breach(level, ts):
    return status_rows((StatusKind.MWCB_BREACH, ts, {"code": str(level).encode()}))


# -- codes and bands ----------------------------------------------------------------------------------


def test_reason_codes_are_pinned():
    assert {r.name: int(r) for r in Reason if 10 <= r < 30} == {
        "UNKNOWN_SYMBOL": 10, "HALTED": 11, "OUTSIDE_MARKET_HOURS": 12, "SIZE_LIMIT": 13, "NOTIONAL_LIMIT": 14,
        "PRICE_BAND": 15, "USER_SUSPENDED": 16, "RATE_EXCEEDED": 17, "BUYING_POWER": 18, "POSITION_LIMIT": 19,
        "KILL_SWITCH": 20, "SYMBOL_EXPOSURE_LIMIT": 21, "GROSS_EXPOSURE_LIMIT": 22, "MWCB_HALT": 23,
        "PDT_RESTRICTION": 24, "INTRADAY_MARGIN_DEFICIT": 25, "MIN_EQUITY": 26, "SHORT_NOT_ALLOWED": 27,
        "UNKNOWN_ACCOUNT": 28, "DUPLICATE_CLIENT_ORDER_ID": 29}


def test_compiled_bands_equal_trading_luld():
    rng = np.random.default_rng(60)
    refs = np.concatenate([rng.integers(1, 5 * 10**12, 3000), rng.integers(1, 2 * P, 1000),
                           [1, P // 10**4, 3 * P // 4, 3 * P // 4 - 1, 3 * P, 3 * P + 1, P, P - 1, 10**15]])
    for ref in refs:
        ref = int(ref)
        for prev in (ref, int(rng.integers(1, 5 * 10**11)), 3 * P, 3 * P + 1, 3 * P // 4 - 1):
            for tier in (1, 2):
                for doubled in (False, True):
                    assert band_edges(ref, tier, prev, doubled) == band_at(ref, tier, prev, doubled), (ref, prev)


# -- account-wide rules -------------------------------------------------------------------------------


def test_plain_order_passes_and_reserves():
    gate = make()
    assert one(gate) == R.NONE
    assert gate.reserved(A) == {"buy_notional": 10_000 * P, "opening_notional": 10_000 * P, "shares": {IBM: (100, 0)}}


def test_kill_switch_global_and_per_account_and_what_still_passes():
    gate = make()
    live = order(qty=10)
    assert check(gate, live) == [R.NONE]
    gate.kill(A)
    assert one(gate) == R.KILL_SWITCH
    cancel = {"kind": CommandKind.CANCEL, "order_id": live["order_id"], "account": A, "ts": T}
    smaller = {"kind": CommandKind.MODIFY, "order_id": live["order_id"], "account": A, "qty": 5, "ts": T,
               "price": UNDEF_PRICE}
    bigger = dict(smaller, qty=20)
    assert check(gate, cancel, smaller, bigger) == [R.NONE, R.NONE, R.KILL_SWITCH]
    gate.release(A)
    assert one(gate) == R.NONE
    gate.kill()
    gate.suspend(A)
    assert one(gate) == R.KILL_SWITCH  # the kill switch comes first
    gate.release()
    assert one(gate) == R.USER_SUSPENDED
    gate.suspend(A, False)
    assert one(gate) == R.NONE


def test_unknown_account_symbol_and_invalid_orders():
    gate = make()
    assert one(gate, account=2) == R.UNKNOWN_ACCOUNT  # in the portfolio, not registered
    assert one(gate, account=7) == R.UNKNOWN_ACCOUNT  # outside it
    assert one(gate, iid=0) == R.UNKNOWN_SYMBOL
    assert one(gate, iid=99) == R.UNKNOWN_SYMBOL
    assert one(gate, qty=0) == R.BAD_QTY
    assert one(gate, price=0) == R.BAD_PRICE
    assert one(gate, price=UNDEF_PRICE) == R.BAD_PRICE  # a LIMIT order with no price
    assert one(gate, typ=STOP, price=UNDEF_PRICE) == R.BAD_PRICE  # a stop with no stop price
    assert one(gate, side=0) == R.INVALID_ORDER
    assert one(gate, typ=9) == R.INVALID_ORDER
    assert one(gate, tif=0) == R.INVALID_ORDER
    assert one(gate, oid=0) == R.INVALID_ORDER
    assert one(gate, oid=2**63) == R.INVALID_ORDER
    gate.set_reference([NOREF], [0])
    gate.portfolio.set_marks([NOREF], [UNDEF_PRICE])
    assert check(gate, market(iid=NOREF)) == [R.NO_REFERENCE_PRICE]  # nothing to value a market order at
    assert one(gate, qty=1) == R.NONE


def test_duplicate_order_id_even_after_a_reject_and_after_the_order_ended():
    gate = make(limits=Limits(max_order_qty=100))
    first = order()
    assert check(gate, first, dict(first)) == [R.NONE, R.DUPLICATE_CLIENT_ORDER_ID]
    big = order(qty=101)
    assert check(gate, big) == [R.SIZE_LIMIT]
    assert check(gate, dict(big, qty=1)) == [R.DUPLICATE_CLIENT_ORDER_ID]
    gate.on_events(event(EventKind.CANCELLED, first, 100))
    assert check(gate, dict(first)) == [R.DUPLICATE_CLIENT_ORDER_ID]


def test_rate_limit_token_bucket_to_the_nanosecond():
    gate = make(limits=Limits(max_orders_per_second=2))
    assert check(gate, order(qty=1), order(qty=1), order(qty=1)) == [R.NONE, R.NONE, R.RATE_EXCEEDED]
    assert one(gate, qty=1, ts=T + 500_000_000 - 1) == R.RATE_EXCEEDED  # 0.999999998 of a token
    assert one(gate, qty=1, ts=T + 500_000_000) == R.NONE
    assert one(gate, qty=1, ts=T) == R.RATE_EXCEEDED  # time going backwards refills nothing
    gate = make(limits=Limits(max_orders_per_second=1, burst=3))
    assert check(gate, *[order(qty=1) for _ in range(4)]) == [R.NONE] * 3 + [R.RATE_EXCEEDED]


# -- market rules -------------------------------------------------------------------------------------


def test_market_hours_edges_and_the_switch():
    gate = make()
    assert one(gate, ts=DAY.open_ns - 1) == R.OUTSIDE_MARKET_HOURS
    assert one(gate, ts=DAY.open_ns) == R.NONE
    assert one(gate, ts=DAY.close_ns - 1) == R.NONE
    assert one(gate, ts=DAY.close_ns) == R.OUTSIDE_MARKET_HOURS
    sat = CAL.day_of_date(dt.date(2024, 3, 9))
    assert one(gate, ts=sat.open_ns + 60 * MIN) == R.OUTSIDE_MARKET_HOURS
    holiday = dt.date(2024, 3, 12)
    gate = RiskGate(Portfolio(2, 2), SessionCalendar(holidays=frozenset({holiday})))
    gate.portfolio.deposit(A, 10**6 * P)
    gate.add_instrument(IBM, "IBM", 1, 100 * P)
    gate.add_account(A, "a", False)
    assert one(gate, ts=CAL.day_of_date(holiday).open_ns + MIN) == R.OUTSIDE_MARKET_HOURS
    gate = make(config=GateConfig(check_market_hours=False))
    assert one(gate, ts=DAY.open_ns - 1, price=200 * P) == R.NONE  # no hours, and no band outside them


def test_mwcb_levels_halt_as_the_rule_says():
    gate = make()
    t0 = DAY.open_ns + 30 * MIN  # 10:00
    gate.on_status(status_rows((StatusKind.MWCB_LEVELS, DAY.open_ns - MIN,
                                {"price_1": 4000 * P, "price_2": 3700 * P, "price_3": 3400 * P})))
    assert gate.mwcb_levels == (4000 * P, 3700 * P, 3400 * P)
    gate.on_status(breach(1, t0))
    assert one(gate, ts=t0 - 1) == R.NONE
    assert one(gate, ts=t0) == R.MWCB_HALT
    assert one(gate, ts=t0 + 15 * MIN - 1) == R.MWCB_HALT
    assert one(gate, ts=t0 + 15 * MIN) == R.NONE
    gate.on_status(breach(1, t0 + 20 * MIN))  # level 1 halts once a day
    assert one(gate, ts=t0 + 20 * MIN) == R.NONE
    gate.on_status(breach(2, DAY.mwcb_cutoff_ns))  # at 15:25 level 2 no longer halts
    assert one(gate, ts=DAY.mwcb_cutoff_ns) == R.NONE
    gate = make()
    gate.on_status(breach(2, DAY.mwcb_cutoff_ns - 1))
    assert one(gate, ts=DAY.mwcb_cutoff_ns) == R.MWCB_HALT
    gate.on_status(breach(3, DAY.close_ns - 5 * MIN))  # level 3: the rest of the day
    assert one(gate, ts=DAY.close_ns - 1) == R.MWCB_HALT
    tuesday = CAL.day_of_date(dt.date(2024, 3, 12))
    assert one(gate, ts=tuesday.open_ns + MIN) == R.NONE


def test_trading_action_halts_and_resumes_one_symbol():
    gate = make()

    def action(state):
        gate.on_status(status_rows((StatusKind.TRADING_ACTION, T, {"instrument_id": IBM, "state": state})))

    action(TradingState.HALTED)
    assert one(gate) == R.HALTED
    assert one(gate, iid=XYZ, price=20 * P) == R.NONE
    action(TradingState.UNCHANGED)
    assert one(gate) == R.HALTED
    action(TradingState.TRADING)
    assert one(gate) == R.NONE
    for state in (TradingState.PAUSED, TradingState.QUOTE_ONLY):
        action(state)
        assert one(gate) == R.HALTED


def test_luld_band_edges_single_and_doubled():
    gate = make(cash=10**7)
    assert one(gate, price=105 * P) == R.NONE
    assert one(gate, price=105 * P + 1) == R.PRICE_BAND
    assert one(gate, price=95 * P) == R.NONE
    assert one(gate, price=95 * P - 1) == R.PRICE_BAND
    assert one(gate, price=110 * P, ts=DAY.open_ns) == R.NONE
    assert one(gate, price=110 * P + 1, ts=DAY.open_ns) == R.PRICE_BAND
    assert one(gate, price=110 * P, ts=DAY.open_doubled_end_ns - 1) == R.NONE
    assert one(gate, price=110 * P, ts=DAY.open_doubled_end_ns) == R.PRICE_BAND
    assert one(gate, price=110 * P, ts=DAY.close_doubled_start_ns - 1) == R.PRICE_BAND
    assert one(gate, price=110 * P, ts=DAY.close_doubled_start_ns) == R.NONE
    # XYZ is Tier 2 above $3.00: 10%, doubled at the open only
    assert one(gate, iid=XYZ, price=24 * P, ts=DAY.open_ns) == R.NONE
    assert one(gate, iid=XYZ, price=22 * P + 1, ts=DAY.close_doubled_start_ns) == R.PRICE_BAND
    assert one(gate, iid=XYZ, price=22 * P, ts=DAY.close_doubled_start_ns) == R.NONE
    gate.set_reference([IBM], [200 * P])  # a new reference moves the band
    assert one(gate, price=210 * P) == R.NONE and one(gate, price=190 * P - 1) == R.PRICE_BAND
    # stop-limit limits are not band-checked (they are priced for where the market may go)
    assert one(gate, typ=STOP_LIMIT, price=300 * P, stop=250 * P) == R.NONE


def test_order_size_and_notional():
    gate = make(limits=Limits(max_order_qty=100, max_order_notional=10_000 * P))
    assert one(gate, qty=100) == R.NONE
    assert one(gate, qty=101) == R.SIZE_LIMIT  # size is checked before notional
    assert one(gate, qty=100, price=100 * P + 1) == R.NOTIONAL_LIMIT
    # market orders are valued at the upper band edge of the reference ($105 at 10:30)
    assert check(gate, market(qty=95)) == [R.NONE]
    assert check(gate, market(qty=96)) == [R.NOTIONAL_LIMIT]
    # ... at the mark where there is no reference
    assert check(gate, market(iid=NOREF, qty=100)) == [R.NONE]  # 100 x $50
    gate.portfolio.set_marks([NOREF], [100 * P + 1])
    assert check(gate, market(iid=NOREF, qty=100)) == [R.NOTIONAL_LIMIT]
    # a notional beyond int64 ($9.2 billion) is refused even with no limit
    assert one(make(), qty=4_000_000_000, price=105 * P) == R.NOTIONAL_LIMIT


# -- position, exposure, margin -------------------------------------------------------------------------


def test_position_limit_counts_reserved_orders_on_each_side():
    gate = make(margin=True, limits=Limits(max_position_qty=300))
    hold(gate, IBM, 100, 100 * P)
    assert check(gate, order(qty=200), order(qty=1)) == [R.NONE, R.POSITION_LIMIT]
    # sells: 100 closes the long (reducing), then 300 more is a short of 300, one more is too many
    assert check(gate, order(SELL, 100), order(SHORT, 300), order(SHORT, 1)) == [R.NONE, R.NONE, R.POSITION_LIMIT]
    assert gate.reserved(A)["shares"] == {IBM: (200, 400)}


def test_symbol_and_gross_exposure_at_their_limits():
    gate = make(limits=Limits(max_symbol_exposure_bp=5000))  # 50% of $100,000 equity
    assert one(gate, qty=500) == R.NONE
    gate = make(limits=Limits(max_symbol_exposure_bp=5000))
    assert one(gate, qty=500, price=100 * P + 1) == R.SYMBOL_EXPOSURE_LIMIT
    gate = make(limits=Limits(max_gross_exposure_bp=7000))  # 70%: $70,000 with $20,000 of XYZ held
    hold(gate, XYZ, 1000, 20 * P)
    assert one(gate, qty=500) == R.NONE
    gate = make(limits=Limits(max_gross_exposure_bp=7000))
    hold(gate, XYZ, 1000, 20 * P)
    assert one(gate, qty=500, price=100 * P + 1) == R.GROSS_EXPOSURE_LIMIT
    assert one(gate, iid=XYZ, side=SELL, qty=1000, price=20 * P) == R.NONE  # reducing always passes


def test_cash_account_buying_power_and_shorts():
    gate = make(cash=10_000)
    assert one(gate, qty=100) == R.NONE
    gate = make(cash=10_000)
    assert one(gate, qty=100, price=100 * P + 1) == R.BUYING_POWER
    assert one(gate, side=SHORT, qty=1) == R.SHORT_NOT_ALLOWED
    assert one(gate, side=SELL, qty=1) == R.SHORT_NOT_ALLOWED  # a sell from flat is a short sale
    hold(gate, XYZ, 100, 20 * P)
    assert check(gate, order(SELL, 100, 20 * P, XYZ), order(SELL, 1, 20 * P, XYZ)) == [R.NONE, R.SHORT_NOT_ALLOWED]


def test_reservations_stop_a_batch_from_overspending():
    gate = make(cash=10_000)
    batch = [order(qty=30) for _ in range(4)]  # $3,000 each
    assert check(gate, *batch) == [R.NONE, R.NONE, R.NONE, R.BUYING_POWER]
    gate.on_events(event(EventKind.CANCELLED, batch[0], 30))
    assert gate.reserved(A)["buy_notional"] == 6_000 * P
    assert check(gate, order(qty=30)) == [R.NONE]
    # market buys reserve at the band edge ($105): $1,000 left buys 9, not 10
    assert check(gate, market(qty=10), market(qty=9)) == [R.BUYING_POWER, R.NONE]
    assert gate.reserved(A)["buy_notional"] == (6_000 + 3_000 + 945) * P


def test_margin_minimum_equity_at_2000_dollars():
    gate = make(cash=2_000, margin=True)
    assert one(gate, qty=40) == R.NONE  # $4,000 on $2,000 equity: Reg T 50% exactly
    gate = make(cash=2_000, margin=True)
    gate.portfolio.deposit(A, -1)  # $1,999.999999999: no credit
    assert one(gate, qty=40) == R.MIN_EQUITY
    assert one(gate, qty=19) == R.NONE  # cash covers it
    assert one(gate, side=SHORT, qty=1) == R.MIN_EQUITY


def test_reg_t_initial_margin_at_the_limit():
    gate = make(cash=10_000, margin=True)
    assert one(gate, qty=200) == R.NONE  # $20,000 long on $10,000: 50%
    gate = make(cash=10_000, margin=True)
    assert one(gate, qty=200, price=100 * P + 1) == R.BUYING_POWER
    gate = make(cash=10_000, margin=True)
    # $10,000 long and $10,000 short reserved on $10,000: the next share is over 50%
    assert check(gate, order(qty=100), order(SHORT, 500, 20 * P, XYZ), order(qty=1)) == [
        R.NONE, R.NONE, R.BUYING_POWER]


def test_maintenance_of_a_short_under_5_dollars_binds_before_reg_t():
    gate = make(cash=10_000, margin=True)
    assert one(gate, iid=LOW, side=SHORT, qty=2500, price=4 * P) == R.NONE  # 100% of $10,000
    gate = make(cash=10_000, margin=True)
    assert one(gate, iid=LOW, side=SHORT, qty=2501, price=4 * P) == R.BUYING_POWER


def test_cash_account_buys_with_settled_cash_only():
    gate = make(cash=1_000)
    hold(gate, XYZ, 100, 20 * P)  # yesterday's; $2,000 spent from $3,000
    gate.portfolio.deposit(A, 2_000 * P)
    sale = order(SELL, 100, 20 * P, XYZ)
    assert check(gate, sale) == [R.NONE]
    fill(gate, sale)
    assert gate.portfolio.unsettled[A] == 2_000 * P
    assert gate.portfolio.account(A)["buying_power"] == 1_000 * P
    assert one(gate, qty=10) == R.NONE  # $1,000 settled
    assert one(gate, qty=1) == R.BUYING_POWER
    tuesday = CAL.day_of_date(dt.date(2024, 3, 12)).open_ns + 60 * MIN
    assert one(gate, qty=20, ts=tuesday) == R.NONE  # settled overnight: $2,000 more
    assert gate.portfolio.unsettled[A] == 0
    gate = make(cash=1_000, config=GateConfig(cash_settlement=False))
    hold(gate, XYZ, 100, 20 * P)
    gate.portfolio.deposit(A, 2_000 * P)
    fill(gate, order(SELL, 100, 20 * P, XYZ))
    assert one(gate, qty=30) == R.NONE


# -- events, modifies, the matcher --------------------------------------------------------------------


def test_fills_move_the_portfolio_and_release_the_order():
    gate = make(cash=10_000)
    o = order(qty=50)
    assert check(gate, o) == [R.NONE]
    gate.on_events(event(EventKind.ACK, o, 50, 50))
    fill(gate, o, qty=20, leaves=30, price=99 * P)
    pf = gate.portfolio
    assert pf.position[A, IBM] == 20 and pf.cash[A] == (10_000 - 1_980) * P
    assert gate.reserved(A) == {"buy_notional": 3_000 * P, "opening_notional": 3_000 * P, "shares": {IBM: (30, 0)}}
    fill(gate, o, qty=30, leaves=0)
    assert gate.reserved(A) == {"buy_notional": 0, "opening_notional": 0, "shares": {}}
    assert pf.position[A, IBM] == 50


def test_rejects_release_only_what_the_matcher_does_not_hold():
    gate = make(cash=10_000)
    o = order(qty=50)
    check(gate, o)
    gate.on_events(event(EventKind.ACK, o, 50, 50))
    gate.on_events(event(EventKind.REJECT, o, reason=R.BUYING_POWER))  # a refused modify: order still live
    assert gate.reserved(A)["shares"] == {IBM: (50, 0)}
    gate.on_events(event(EventKind.REJECT, o, reason=R.UNKNOWN_ORDER))  # the matcher does not know it
    assert gate.reserved(A)["shares"] == {}
    p = order(qty=10)
    check(gate, p)
    gate.on_events(event(EventKind.REJECT, p, reason=R.BAD_PRICE))  # never acknowledged
    assert gate.reserved(A)["shares"] == {}
    q = order(qty=10, tif=TimeInForce.DAY)
    check(gate, q)
    gate.on_events(event(EventKind.EXPIRED, q, 10, reason=R.SESSION_END))
    assert gate.reserved(A)["buy_notional"] == 0
    d = order(qty=10)  # a duplicate client order id answers another command: the order keeps its reservation
    check(gate, d)
    gate.on_events(event(EventKind.REJECT, d, reason=R.DUPLICATE_CLIENT_ORDER_ID))  # still pending
    gate.on_events(event(EventKind.ACK, d, 10, 10))
    gate.on_events(event(EventKind.REJECT, d, reason=R.DUPLICATE_CLIENT_ORDER_ID))
    gate.on_events(event(EventKind.REJECT, d, reason=R.DUPLICATE_ORDER_ID))  # live: a duplicate changes nothing
    assert gate.reserved(A)["shares"] == {IBM: (10, 0)}
    gate.on_events(event(EventKind.CANCELLED, d, 10))
    e = order(qty=10)  # the gate passed it but the matcher refused its id: never acknowledged, released
    check(gate, e)
    gate.on_events(event(EventKind.REJECT, e, reason=R.DUPLICATE_ORDER_ID))
    assert gate.reserved(A)["shares"] == {}
    other = dict(order(qty=10), account=2)  # events of another account's order id change nothing
    check(gate, dict(other, account=A, order_id=other["order_id"]))
    gate.on_events(event(EventKind.CANCELLED, other, 10))
    assert gate.reserved(A)["shares"] == {IBM: (10, 0)}


def test_modify_is_checked_in_place_of_the_old_order():
    gate = make(cash=10_000)
    o = order(qty=60)
    assert check(gate, o) == [R.NONE]

    def modify(qty=0, price=UNDEF_PRICE):
        return {"kind": CommandKind.MODIFY, "order_id": o["order_id"], "account": A, "qty": qty, "price": price,
                "ts": T}

    assert check(gate, modify(100)) == [R.NONE]  # $10,000 in place of $6,000
    assert check(gate, modify(101)) == [R.BUYING_POWER]
    assert gate.reserved(A)["buy_notional"] == 10_000 * P  # the refused modify left the order as it was
    assert check(gate, modify(price=101 * P)) == [R.BUYING_POWER]
    assert check(gate, modify(price=106 * P, qty=10)) == [R.PRICE_BAND]
    assert check(gate, modify(price=99 * P, qty=50)) == [R.NONE]  # less: passes
    assert gate.reserved(A)["buy_notional"] == 4_950 * P
    gate.on_events(event(EventKind.MODIFIED, o, 50, 50, price=99 * P))
    assert gate.reserved(A)["buy_notional"] == 4_950 * P
    assert check(gate, {"kind": CommandKind.MODIFY, "order_id": 10**9, "account": A, "qty": 5, "ts": T,
                        "price": UNDEF_PRICE}) == [R.NONE]  # unknown to the gate: the matcher's to refuse
    assert check(gate, dict(modify(price=0))) == [R.BAD_PRICE]


def _matcher_open_shares(me, n_acct, n_inst):
    live = me.op[me.op[:, O_STATE] != FREE]
    out = np.zeros((n_acct, n_inst, 2), dtype=np.int64)
    for row in live:
        out[row[O_ACCOUNT], row[O_INST], 0 if row[O_SIDE] == BUY else 1] += row[O_LEAVES]
    return out


def test_reservations_follow_the_matchers_open_orders():
    rng = np.random.default_rng(63)
    n_acct, n_inst = 4, 3
    pf = Portfolio(n_acct, n_inst)
    gate = RiskGate(pf, CAL)
    me = MatchingEngine(instruments=n_inst)
    for i in range(n_inst):
        gate.add_instrument(i, f"S{i}", 1, 100 * P)
    for a in range(n_acct):
        pf.deposit(a, 200_000 * P)
        gate.add_account(a, f"acct{a}", margin=a % 2 == 0, limits=Limits(max_position_qty=2_000))
    pf.set_marks(np.arange(n_inst), np.full(n_inst, 100 * P))
    sent, passed, ts = [], 0, T
    for batch_no in range(300):
        rows = []
        for _ in range(20):
            ts += int(rng.integers(1, 10**8))
            u = rng.random()
            if u < 0.6 or not sent:
                typ = [LIMIT, LIMIT, LIMIT, MARKET, STOP, STOP_LIMIT][rng.integers(6)]
                price = int(rng.integers(97, 104)) * P
                o = order(int(rng.integers(1, 4)), int(rng.integers(1, 300)), UNDEF_PRICE if typ in (MARKET, STOP)
                          else price, int(rng.integers(n_inst)), ts, typ,
                          TimeInForce.IOC if typ == MARKET else TimeInForce.GTC, int(rng.integers(n_acct)),
                          stop=price if typ in (STOP, STOP_LIMIT) else UNDEF_PRICE)
                sent.append(o)
            else:
                target = sent[int(rng.integers(len(sent)))]
                o = {"kind": CommandKind.CANCEL if u < 0.75 else CommandKind.MODIFY, "order_id": target["order_id"],
                     "account": target["account"], "ts": ts, "qty": int(rng.integers(0, 300)),
                     "price": int(rng.integers(97, 104)) * P if rng.random() < 0.5 else UNDEF_PRICE}
            rows.append(o)
        if batch_no % 50 == 49:
            rows.append({"kind": CommandKind.TRIGGER, "instrument_id": int(rng.integers(n_inst)),
                         "price": int(rng.integers(95, 106)) * P, "ts": ts})
        cmds = commands(*rows)
        reasons = gate.check(cmds)
        passed += int((reasons == 0).sum())
        gate.on_events(me.submit(cmds[reasons == 0]))
        res = gate.cell[:, :, :2]
        assert (res == _matcher_open_shares(me, n_acct, n_inst)).all(), batch_no
        assert (pf.position.sum(axis=0) == 0).all()
    assert passed > 3_000
    for i in range(n_inst):
        gate.on_events(me.submit(commands({"kind": CommandKind.SESSION_END, "instrument_id": i, "ts": ts})))
    live = me.op[me.op[:, O_STATE] != FREE]
    for row in live:  # GTC orders stay; cancel them
        gate.on_events(me.submit(commands({"kind": CommandKind.CANCEL, "order_id": int(row[O_ID]),
                                           "account": int(row[O_ACCOUNT]), "ts": ts})))
    assert me.orders == 0
    assert not gate.cell[:, :, :2].any() and not gate.acct[:, [AC_RES_BUY, AC_RES_OPENING]].any()


def test_fills_applied_to_the_portfolio_directly_are_noticed():
    gate = make(margin=True, limits=Limits(max_position_qty=100))
    assert one(gate, qty=100, iid=XYZ, price=20 * P) == R.NONE
    hold(gate, XYZ, 1, 20 * P)
    assert one(gate, qty=1, iid=XYZ, price=20 * P) == R.POSITION_LIMIT


def test_a_batch_grows_the_id_table_and_spans_many_days():
    gate = make(cash=10**8, config=GateConfig(check_market_hours=False))
    rows = [order(qty=1, ts=T + k * 86_400 * 10**9 // 700) for k in range(14_000)]  # 20 days
    assert (gate.check(commands(*rows)) == 0).all()
    assert gate.reserved(A)["shares"] == {IBM: (14_000, 0)}


def test_bad_input_is_a_one_line_error():
    gate = make()
    with pytest.raises(ValueError, match="check takes trading.orders.COMMAND rows"):
        gate.check(np.zeros(3))
    with pytest.raises(ValueError, match="on_events takes trading.orders.ORDER_EVENT rows"):
        gate.on_events(commands(order()))
    bad = event(EventKind.FILL, order(), 1)
    bad["instrument_id"] = 50
    with pytest.raises(ValueError, match="fill row 0: account 1 or instrument 50 outside the portfolio"):
        gate.on_events(bad)
    with pytest.raises(ValueError, match="account id 9 outside the portfolio"):
        gate.add_account(9, "z", False)
    with pytest.raises(ValueError, match="LULD tier must be 1 or 2"):
        gate.add_instrument(0, "Q", 3)
    with pytest.raises(ValueError, match="already account 1"):
        gate.add_account(2, "a", False)
    with pytest.raises(ValueError, match="has no compiled form"):
        RiskGate(Portfolio(1, 1), pdt_policy=type("Custom", (pdt.DayTradingPolicy,), {})())


def test_state_bytes_are_deterministic_and_follow_the_state():
    def run(extra):
        gate = make(limits=Limits(max_orders_per_second=5))
        o = order(oid=7)
        gate.check(commands(o, order(oid=8, qty=5), *extra))
        fill(gate, o, 40, leaves=60)
        return gate.state_bytes()

    assert run([]) == run([])
    assert run([]) != run([order(oid=9, qty=1)])
    gate = make()
    before = gate.state_bytes()
    gate.portfolio.set_marks([IBM], [120 * P])
    gate.check(commands({"kind": CommandKind.CANCEL, "order_id": 1, "account": A, "ts": T}))
    assert gate.state_bytes() == before  # marks are not the gate's state


# -- day trading policies ---------------------------------------------------------------------------


def _day_trades(gate, n, ts=T):
    """n + 1 alternating fills of 10 IBM at $100: n day trades."""
    for k in range(n + 1):
        fill(gate, order(BUY if k % 2 == 0 else SELL, 10, ts=ts), ts=ts)


def test_legacy_fourth_day_trade_needs_25000_dollars():
    for cash, expect in ((25_000, R.NONE), (25_000 - 1e-9, R.PDT_RESTRICTION)):
        gate = make(cash=0, margin=True, policy=pdt.LegacyPdtPolicy())
        gate.portfolio.deposit(A, round(cash * P))
        _day_trades(gate, 3)
        assert gate.day_trades(A, DAY.date) == (3, 4)
        assert one(gate, side=SHORT, qty=10) == R.NONE  # the same direction as the last fill: no day trade
        assert one(gate, qty=10) == expect  # the 4th day trade in 5 days: a pattern day trader
    tuesday = CAL.day_of_date(dt.date(2024, 3, 12)).open_ns + 60 * MIN
    assert one(gate, qty=10, ts=tuesday) == R.NONE  # a new day: no day trade yet


def test_legacy_day_trading_buying_power_of_a_pattern_day_trader():
    gate = make(cash=30_000, margin=True, policy=pdt.LegacyPdtPolicy())
    gate.designate_pdt(A)
    gate.set_prior_close(A, 30_000 * P, 17_500 * P)  # DTBP = 4 x $12,500
    assert check(gate, order(qty=500), order(qty=1)) == [R.NONE, R.PDT_RESTRICTION]
    gate = make(cash=30_000, margin=True, policy=pdt.LegacyPdtPolicy())
    gate.designate_pdt(A)
    gate.set_prior_close(A, 30_000 * P, 17_500 * P)
    assert one(gate, qty=500, price=100 * P + 1) == R.PDT_RESTRICTION
    o = order(qty=500)
    check(gate, o)
    fill(gate, o)  # filled: $50,000 opened today
    assert one(gate, qty=1) == R.PDT_RESTRICTION
    assert one(gate, side=SELL, qty=1) == R.NONE  # reducing
    gate.designate_pdt(A, False)
    assert one(gate, qty=1) == R.NONE


def test_intraday_margin_blocks_deficits_at_the_boundary():
    gate = make(cash=10_000, margin=True, policy=pdt.IntradayMarginPolicy())
    assert one(gate, iid=LOW, side=SHORT, qty=2500, price=4 * P) == R.NONE  # maintenance = equity
    gate = make(cash=10_000, margin=True, policy=pdt.IntradayMarginPolicy())
    assert one(gate, iid=LOW, side=SHORT, qty=2501, price=4 * P) == R.INTRADAY_MARGIN_DEFICIT
    gate = make(cash=10_000, margin=True, policy=pdt.IntradayMarginPolicy(house_buffer_bp=1000))
    assert one(gate, iid=LOW, side=SHORT, qty=2272, price=4 * P) == R.NONE  # 110% of $9,088
    gate = make(cash=10_000, margin=True, policy=pdt.IntradayMarginPolicy(house_buffer_bp=1000))
    assert one(gate, iid=LOW, side=SHORT, qty=2273, price=4 * P) == R.INTRADAY_MARGIN_DEFICIT
    policy = pdt.IntradayMarginPolicy()
    gate = make(cash=10_000, margin=True, policy=policy)
    hold(gate, XYZ, 10, 20 * P)
    policy.restricted_until["a"] = DAY.date
    assert one(gate, qty=1) == R.PDT_RESTRICTION
    assert one(gate, iid=XYZ, side=SELL, qty=10, price=20 * P) == R.NONE  # closing passes
    policy.restricted_until.clear()
    assert one(gate, qty=1) == R.NONE


def test_scheduled_policy_switches_on_its_date():
    policy = pdt.ScheduledPolicy()
    gate = make(cash=10_000, margin=True, policy=policy)
    policy.intraday.restricted_until["a"] = dt.date(2026, 12, 31)
    wed = CAL.day_of_date(dt.date(2026, 6, 3)).open_ns + 60 * MIN
    thu = CAL.day_of_date(dt.date(2026, 6, 4)).open_ns + 60 * MIN
    assert one(gate, qty=1, ts=wed) == R.NONE  # legacy rule still
    assert one(gate, qty=1, ts=thu) == R.PDT_RESTRICTION


# -- differential against trading.risk.RiskChecker ------------------------------------------------------

_SAME = {RejectReason.PRICE_OUTSIDE_BAND: R.PRICE_BAND, RejectReason.SIZE_ABOVE_LIMIT: R.SIZE_LIMIT,
         RejectReason.NOTIONAL_ABOVE_LIMIT: R.NOTIONAL_LIMIT, RejectReason.INSUFFICIENT_BUYING_POWER: R.BUYING_POWER}


def _as_gate_reason(reason):
    if reason is None:
        return {R.NONE}
    if reason == RejectReason.INVALID_ORDER:  # the gate names the matcher's codes, and the missing price
        return {R.INVALID_ORDER, R.BAD_QTY, R.BAD_PRICE, R.NO_REFERENCE_PRICE}
    return {_SAME[reason] if reason in _SAME else R[reason.name]}


@pytest.mark.parametrize("policy_name, first_day", [("legacy", dt.date(2024, 3, 11)),
                                                    ("scheduled", dt.date(2026, 6, 1))])
def test_differential_against_risk_checker(policy_name, first_day):
    rng = np.random.default_rng(64 if policy_name == "legacy" else 65)
    instruments = [(1, LuldTier.TIER_1, 100 * P), (2, LuldTier.TIER_2, 20 * P), (3, LuldTier.TIER_2, 2 * P),
                   (4, LuldTier.TIER_1, 0)]  # 4: no reference (no band), market orders valued at the mark
    marks = {1: 100 * P, 2: 20 * P, 3: 2 * P, 4: 40 * P}
    accounts = [("m0", True, 60_000), ("m1", True, 30_000), ("c0", False, 20_000), ("m2", True, 3_000)]
    names = {name: k for k, (name, _, _) in enumerate(accounts)}
    checker = RiskChecker(CAL, policy=pdt.make_policy(policy_name), config=RiskConfig())
    gate_policy = pdt.make_policy(policy_name)
    pf = Portfolio(len(accounts) + 1, 5)
    gate = RiskGate(pf, CAL, gate_policy, GateConfig(cash_settlement=False))
    for iid, tier, prev in instruments:
        checker.add_instrument(Instrument(iid, f"S{iid}", tier, prev_close=prev, ref_price=prev, mark=marks[iid]))
        gate.add_instrument(iid, f"S{iid}", tier, prev_close=prev)
    pf.set_marks(list(marks), list(marks.values()))
    for name, margin, cash in accounts:
        limits = Limits(max_order_qty=int(rng.choice([400, 10**6])),
                        max_order_notional=int(rng.choice([15_000, 10**9])) * P,
                        max_position_qty=int(rng.choice([700, 10**6])),
                        max_symbol_exposure_bp=int(rng.choice([6000, 10**6])),
                        max_gross_exposure_bp=int(rng.choice([15000, 10**6])),
                        max_orders_per_second=1 if name == "m0" else 2, burst=1 if name == "m0" else 3)
        pce, pcm = cash * P, cash * P // 5
        checker.add_account(Account(name, cash * P, margin, limits=limits, prior_close_equity=pce,
                                    prior_close_maintenance=pcm))
        pf.deposit(names[name], cash * P)
        gate.add_account(names[name], name, margin, limits)
        gate.set_prior_close(names[name], pce, pcm)
    checker.ledgers["m1"].designated = True
    gate.designate_pdt(names["m1"])
    for policy in (checker.policy, gate_policy):  # the intraday standard's restriction, where it applies
        intraday = policy.intraday if isinstance(policy, pdt.ScheduledPolicy) else policy
        if isinstance(intraday, pdt.IntradayMarginPolicy):
            intraday.restricted_until["m2"] = first_day + dt.timedelta(days=4)

    coids = {name: [] for name in names}
    order_ids = {}
    outcomes = {}
    n_checked = 0
    for day_no in range(5):
        day = CAL.day_of_date(first_day + dt.timedelta(days=day_no))
        times = np.sort(rng.integers(day.open_ns - 20 * MIN, day.close_ns + 20 * MIN, 700))
        times[1:][rng.random(699) < 0.08] = 0  # bursts at one instant: rate limits
        times = np.maximum.accumulate(times)
        for ts in (int(t) for t in times):
            u = rng.random()
            if u < 0.003:
                name = str(rng.choice(list(names)))
                checker.kill(name)
                gate.kill(names[name])
            elif u < 0.03:
                for name in list(checker.killed):
                    checker.release(name)
                    gate.release(names[name])
            elif u < 0.031:
                checker.kill()
                gate.kill()
            elif u < 0.06:
                checker.release()
                gate.release()
            elif u < 0.065:
                rows = status_rows((StatusKind.TRADING_ACTION, ts, {
                    "instrument_id": int(rng.integers(1, 5)),
                    "state": int(rng.choice([TradingState.HALTED, TradingState.TRADING, TradingState.TRADING,
                                             TradingState.TRADING, TradingState.PAUSED]))}))
                checker.on_status(rows)
                gate.on_status(rows)
            elif u < 0.066:
                rows = breach(int(rng.integers(1, 4)), ts)
                if rows["code"][0] != b"3" or rng.random() < 0.1:
                    checker.on_status(rows)
                    gate.on_status(rows)
            elif u < 0.12:
                iid = int(rng.integers(1, 5))
                marks[iid] = max(P // 100, marks[iid] + int(rng.integers(-3, 4)) * marks[iid] // 100)
                checker.instruments[iid].mark = marks[iid]
                pf.set_marks([iid], [marks[iid]])
                if iid != 4 and rng.random() < 0.5:
                    checker.instruments[iid].ref_price = marks[iid]
                    gate.set_reference([iid], [marks[iid]])
            name = str(rng.choice(list(names) + ["zz"], p=[0.24] * 4 + [0.04]))
            iid = int(rng.choice([1, 2, 3, 4, 0], p=[0.3, 0.25, 0.2, 0.2, 0.05]))
            side = OrderSide(int(rng.integers(1, 4)))
            qty = int(rng.integers(0, 600)) if rng.random() < 0.98 else 0
            if iid == 4 and rng.random() < 0.5:
                price = int(UNDEF_PRICE)
            else:
                ref = checker.instruments[iid].ref_price if iid in checker.instruments else 100 * P
                price = max(0, (ref or marks[4]) * int(rng.integers(90, 111)) // 100 // (P // 100) * (P // 100))
            if name != "zz" and coids[name] and rng.random() < 0.03:
                coid = str(rng.choice(coids[name]))
            else:
                coid = f"{name}-{n_checked}"
                coids.setdefault(name, []).append(coid)
            oid = order_ids.setdefault((name, coid), len(order_ids) + 1)
            expect = checker.check(RiskOrder(name, coid, iid, side, qty, price), ts)
            o = {"kind": CommandKind.NEW, "order_id": oid, "account": names.get(name, len(accounts)),
                 "instrument_id": iid, "side": side, "order_type": MARKET if price == UNDEF_PRICE else LIMIT,
                 "tif": TimeInForce.DAY, "qty": qty, "price": price, "ts": ts}
            got = R(gate.check(commands(o))[0])
            assert got in _as_gate_reason(expect), (n_checked, name, iid, side, qty, price, expect, got)
            outcomes[got] = outcomes.get(got, 0) + 1
            n_checked += 1
            if got != R.NONE:
                continue
            # fill it (all or part, at its price, market orders at the mark) in both, then cancel the rest
            filled = qty if rng.random() < 0.7 else int(rng.integers(1, qty + 1))
            at = marks[iid] if price == UNDEF_PRICE else price
            checker.record_fill(name, iid, side, filled, at, ts)
            acct = checker.accounts[name]
            signed = filled if side == BUY else -filled
            acct.positions[iid] = acct.positions.get(iid, 0) + signed
            acct.cash -= signed * at
            gate.on_events(np.concatenate([event(EventKind.ACK, o, qty, qty, ts=ts),
                                           event(EventKind.FILL, o, filled, qty - filled, at, ts=ts),
                                           event(EventKind.CANCELLED, o, qty - filled, ts=ts)]))
        for name, a in names.items():  # the portfolio and the checker's accounts agree
            assert pf.cash[a] == checker.accounts[name].cash
            assert all(pf.position[a, i] == q for i, q in checker.accounts[name].positions.items())
    assert n_checked == 3500
    assert not gate.cell[:, :, :2].any()  # every order ended: nothing reserved
    # the run exercised most rules (counts by reason)
    seen = {r for r, n in outcomes.items() if n >= 3}
    assert {R.NONE, R.KILL_SWITCH, R.UNKNOWN_ACCOUNT, R.RATE_EXCEEDED, R.UNKNOWN_SYMBOL, R.OUTSIDE_MARKET_HOURS,
            R.HALTED, R.PRICE_BAND, R.BUYING_POWER, R.DUPLICATE_CLIENT_ORDER_ID, R.SHORT_NOT_ALLOWED} <= seen, outcomes

    assert outcomes[R.NONE] > 500, outcomes
