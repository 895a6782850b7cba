import datetime as dt

import numpy as np

from parsers.clock import NANOS_PER_SECOND, VenueClock, session_date

HOUR = 3600 * NANOS_PER_SECOND


def utc(*args) -> int:
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()) * NANOS_PER_SECOND


def test_summer_day_is_edt():
    clock = VenueClock(dt.date(2023, 8, 22))
    assert clock.to_epoch(np.array([34_200 * NANOS_PER_SECOND + 7]))[0] == utc(2023, 8, 22, 13, 30) + 7


def test_winter_day_is_est():
    clock = VenueClock(dt.date(2024, 1, 5))
    assert clock.to_epoch(np.array([34_200 * NANOS_PER_SECOND]))[0] == utc(2024, 1, 5, 14, 30)


def test_spring_forward_day_changes_offset_at_two():
    clock = VenueClock(dt.date(2024, 3, 10))
    got = clock.to_epoch(np.array([1 * HOUR, 3 * HOUR, 12 * HOUR]))
    assert got.tolist() == [utc(2024, 3, 10, 6), utc(2024, 3, 10, 7), utc(2024, 3, 10, 16)]


def test_fall_back_day_changes_offset():
    clock = VenueClock(dt.date(2024, 11, 3))
    got = clock.to_epoch(np.array([1 * HOUR, 12 * HOUR]))
    assert got.tolist() == [utc(2024, 11, 3, 5), utc(2024, 11, 3, 17)]


def test_session_date_reads_local_calendar():
    # 02:30 UTC on Aug 23 is still Aug 22 in New York.
    assert session_date(utc(2023, 8, 23, 2, 30)) == dt.date(2023, 8, 22)
    assert session_date(utc(2023, 8, 23, 5, 0)) == dt.date(2023, 8, 23)


def test_local_ns_inverts_to_epoch():
    clock = VenueClock(dt.date(2023, 8, 22))
    t = 34_200 * NANOS_PER_SECOND + 123
    assert clock.local_ns(int(clock.to_epoch(np.array([t]))[0])) == t
