import datetime as dt

import pytest

from feedhandler.times import parse_at, parse_duration
from parsers.clock import VenueClock

OPEN_2024_03_15 = 1_710_509_400_000_000_000  # 09:30 EDT


@pytest.mark.parametrize("text, ns", [("0", 0), ("500us", 500_000), ("1ms", 1_000_000), ("100ms", 100_000_000),
                                      ("1s", 1_000_000_000), ("2.5ms", 2_500_000), ("250", 250)])
def test_durations(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "fast", "1 parsec", "-1ms", "0.5ns"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_local_times_and_iso():
    clock = VenueClock(dt.date(2024, 3, 15))
    assert parse_at("09:30:00", clock) == OPEN_2024_03_15
    assert parse_at("09:30:00.000000123", clock) == OPEN_2024_03_15 + 123
    assert parse_at("2024-03-15T13:30:00.5Z", clock) == OPEN_2024_03_15 + 500_000_000
    assert parse_at("2024-03-15T09:30:00.000000007-04:00", clock) == OPEN_2024_03_15 + 7
    assert parse_at("2024-03-15T09:30:00", clock) == OPEN_2024_03_15  # no offset: venue time
    with pytest.raises(ValueError):
        parse_at("25:00:00", clock)
    with pytest.raises(ValueError):
        parse_at("yesterday", clock)
