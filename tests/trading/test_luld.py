"""LULD bands at the parameter boundaries, the rounding, and the doubling switch instants."""
import datetime as dt

import numpy as np
import pytest

from parsers.schema import PRICE_SCALE as P
from trading.luld import LuldTier, SessionCalendar, band, band_at, bands, is_doubled, tier_from_code

T1, T2 = LuldTier.TIER_1, LuldTier.TIER_2
CAL = SessionCalendar()
MON = CAL.day_of_date(dt.date(2024, 3, 11))  # the Monday after the DST change (EDT, UTC-4)
WINTER = CAL.day_of_date(dt.date(2024, 1, 8))  # EST, UTC-5
NS = 1_000_000_000


def cents(c):
    return c * P // 100


@pytest.mark.parametrize("prev, tier, lower, upper", [
    (cents(10000), T1, cents(9500), cents(10500)),  # 5%
    (cents(10000), T2, cents(9000), cents(11000)),  # 10%
    (cents(200), T1, cents(160), cents(240)),  # 20%
    (cents(200), T2, cents(160), cents(240)),  # 20%
])
def test_parameters_by_previous_close(prev, tier, lower, upper):
    assert band_at(prev, tier) == (lower, upper)


def test_three_dollar_boundary_is_above_not_at():
    # Appendix A: 5%/10% for "more than $3.00", 20% for $0.75 "up to and including $3.00"
    assert band_at(cents(301), T1) == (cents(286), cents(316))  # 5% = 0.1505: 2.8595 / 3.1605
    assert band_at(cents(300), T1) == (cents(240), cents(360))
    assert band_at(cents(300), T2) == (cents(240), cents(360))
    assert band_at(cents(301), T2) == (cents(271), cents(331))


def test_seventy_five_cent_boundary():
    assert band_at(cents(76), T1) == (P * 6080 // 10_000, P * 9120 // 10_000)  # 20% = 0.152
    assert band_at(cents(75), T1) == (cents(60), cents(90))  # 20% = 0.15
    assert band_at(cents(74), T1) == (cents(59), cents(89))  # lesser of $0.15 or 75% (0.555): 0.15
    assert band_at(cents(76), T1, prev_close=cents(74)) == (cents(61), cents(91))  # prev close decides


def test_low_price_cap_switches_at_twenty_cents():
    # 75% of $0.20 is $0.15: both sides of the cap
    assert band_at(cents(20), T2) == (cents(5), cents(35))
    assert band_at(cents(19), T2) == (P * 19 // 100 - P * 1425 // 10_000, P * 19 // 100 + P * 1425 // 10_000)
    assert band_at(cents(40), T2) == (cents(25), cents(55))  # capped at $0.15


def test_previous_close_selects_parameter_reference_centres_band():
    # yesterday closed at $2.50 (20%), today's reference is $4.00: 20% around $4.00
    assert band_at(4 * P, T1, prev_close=cents(250)) == (cents(320), cents(480))


def test_rounding_half_up_to_the_penny():
    # $10.10 x 5% = $0.505: upper 10.605 -> 10.61, lower 9.595 -> 9.60
    assert band_at(cents(1010), T1) == (cents(960), cents(1061))
    # one nano-dollar off the tie on either side
    lo, up = band_at(cents(1010) - 20, T1)  # width shrinks by 1 nano-dollar: 10.604999979 -> 10.60
    assert up == cents(1060)


def test_subpenny_tick_under_one_dollar():
    lo, up = band_at(cents(90) + P // 10_000 * 3, T1)  # $0.9003, 20% -> 0.72024 / 1.08036
    assert (lo, up) == (P * 7202 // 10_000, P * 10804 // 10_000)


def test_lower_band_never_negative_when_doubled():
    assert band_at(cents(10), T1, doubled=True) == (0, cents(25))


def test_ref_must_be_positive():
    with pytest.raises(ValueError):
        band_at(0, T1)


@pytest.mark.parametrize("day", [MON, WINTER])
def test_opening_doubling_switches_at_nine_forty_five(day):
    ref = 100 * P
    assert band(ref, T1, day.open_ns - 1, calendar=CAL) == (95 * P, 105 * P)  # 9:29:59.999999999
    assert band(ref, T1, day.open_ns, calendar=CAL) == (90 * P, 110 * P)  # 9:30:00
    assert band(ref, T1, day.open_doubled_end_ns - 1, calendar=CAL) == (90 * P, 110 * P)  # 9:44:59.999999999
    assert band(ref, T1, day.open_doubled_end_ns, calendar=CAL) == (95 * P, 105 * P)  # 9:45:00
    assert band(ref, T2, day.open_ns + NS, calendar=CAL) == (80 * P, 120 * P)


@pytest.mark.parametrize("day", [MON, WINTER])
def test_closing_doubling_switches_at_fifteen_thirty_five(day):
    ref = 100 * P
    assert band(ref, T1, day.close_doubled_start_ns - 1, calendar=CAL) == (95 * P, 105 * P)
    assert band(ref, T1, day.close_doubled_start_ns, calendar=CAL) == (90 * P, 110 * P)
    assert band(ref, T1, day.close_ns - 1, calendar=CAL) == (90 * P, 110 * P)
    assert band(ref, T1, day.close_ns, calendar=CAL) == (95 * P, 105 * P)  # 16:00: over
    # Tier 2 above $3.00 is not doubled at the close; at or below $3.00 it is
    assert band(ref, T2, day.close_doubled_start_ns, calendar=CAL) == (90 * P, 110 * P)
    assert band(cents(300), T2, day.close_doubled_start_ns, calendar=CAL) == (cents(180), cents(420))
    assert band(cents(300), T2, day.close_doubled_start_ns - 1, calendar=CAL) == (cents(240), cents(360))


def test_switch_instants_are_eastern_wall_clock():
    # 9:45 ET on 2024-03-11 is 13:45 UTC; on 2024-01-08 it is 14:45 UTC
    assert MON.open_doubled_end_ns == int(dt.datetime(2024, 3, 11, 13, 45, tzinfo=dt.timezone.utc).timestamp()) * NS
    assert WINTER.close_doubled_start_ns == int(dt.datetime(2024, 1, 8, 20, 35, tzinfo=dt.timezone.utc).timestamp()) * NS


def test_early_close_doubles_last_twenty_five_minutes():
    cal = SessionCalendar(early_closes={dt.date(2024, 11, 29): dt.time(13, 0)})
    day = cal.day_of_date(dt.date(2024, 11, 29))
    assert is_doubled(T1, 100 * P, day.close_doubled_start_ns, day)  # 12:35
    assert not is_doubled(T1, 100 * P, day.close_doubled_start_ns - 1, day)


def test_weekend_is_never_doubled():
    sat = CAL.day_of_date(dt.date(2024, 3, 9))
    assert not sat.is_trading_day
    assert not is_doubled(T1, 100 * P, sat.open_ns, sat)


def test_vectorised_matches_scalar():
    rng = np.random.default_rng(7)
    n = 4000
    ref = rng.integers(P // 100, 500 * P, n, dtype=np.int64)
    ref[:200] = rng.integers(1, 100, 200) * (P // 100) + rng.integers(0, 10, 200) * 5 * (P // 1000)  # ties
    prev = np.where(rng.random(n) < 0.5, ref, rng.integers(P // 100, 10 * P, n, dtype=np.int64))
    tier = rng.integers(1, 3, n)
    instants = np.array([MON.open_ns - 1, MON.open_ns, MON.open_doubled_end_ns, MON.close_doubled_start_ns,
                         MON.close_ns - 1, MON.close_ns, WINTER.open_ns])
    ts = rng.choice(instants, n)
    lo, up = bands(ref, tier, ts, prev, calendar=CAL)
    for i in range(n):
        assert (lo[i], up[i]) == band(int(ref[i]), int(tier[i]), int(ts[i]), prev_close=int(prev[i]), calendar=CAL), i


def test_tier_codes():
    assert tier_from_code(b"1") == T1 and tier_from_code(b"2") == T2 and tier_from_code(b" ") is None
