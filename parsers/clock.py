"""Venue clocks: turn a venue's "nanoseconds since local midnight" into Unix epoch nanoseconds.

The session date comes from the caller (``--date``) or from the capture's receive timestamps, read in
the venue's time zone. Daylight saving is honoured, including a day on which the offset changes.
"""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np

NANOS_PER_SECOND = 1_000_000_000
NANOS_PER_DAY = 86_400 * NANOS_PER_SECOND


class VenueClock:
    """Converts ns since local midnight of one session date in one time zone to epoch ns."""

    def __init__(self, date: dt.date, tz: str = "America/New_York") -> None:
        self.date = date
        self.tz = ZoneInfo(tz)
        midnight = dt.datetime.combine(date, dt.time(0), tzinfo=self.tz)
        self._midnight_naive_ns = _epoch_ns(dt.datetime.combine(date, dt.time(0), tzinfo=dt.timezone.utc))
        # UTC offset (ns) in force from each local wall-clock instant onwards; at most one change a day.
        self._offset_at_midnight = _offset_ns(midnight)
        self._change_local_ns, self._offset_after = _offset_change(date, self.tz)

    def to_epoch(self, ns_since_midnight: np.ndarray) -> np.ndarray:
        """Epoch ns (int64) for an array of ns since local midnight."""
        local = np.asarray(ns_since_midnight).astype(np.int64)
        offset = np.where(local >= self._change_local_ns, self._offset_after, self._offset_at_midnight)
        return self._midnight_naive_ns + local - offset

    def kernel_params(self) -> tuple[int, int, int, int]:
        """(naive midnight epoch ns, local ns of the offset change, offset before, offset after) for kernels."""
        return self._midnight_naive_ns, self._change_local_ns, self._offset_at_midnight, self._offset_after

    def local_ns(self, epoch_ns: int) -> int:
        """ns since local midnight of an epoch time (inverse of ``to_epoch`` for one value)."""
        t = dt.datetime.fromtimestamp(epoch_ns // NANOS_PER_SECOND, tz=self.tz)
        return (epoch_ns - _epoch_ns(dt.datetime.combine(t.date(), dt.time(0), tzinfo=self.tz))) + (
            t.date() - self.date
        ).days * NANOS_PER_DAY


def session_date(epoch_ns: int, tz: str = "America/New_York") -> dt.date:
    """The local calendar date of an epoch time in a time zone."""
    return dt.datetime.fromtimestamp(epoch_ns / NANOS_PER_SECOND, tz=ZoneInfo(tz)).date()


def _epoch_ns(t: dt.datetime) -> int:
    return int(t.timestamp()) * NANOS_PER_SECOND


def _offset_ns(t: dt.datetime) -> int:
    return int(t.utcoffset().total_seconds()) * NANOS_PER_SECOND


def _offset_change(date: dt.date, tz: ZoneInfo) -> tuple[int, int]:
    """(local ns since midnight at which the UTC offset changes, the offset after); never if none."""
    start = dt.datetime.combine(date, dt.time(0), tzinfo=dt.timezone.utc)
    # Walk the day's UTC hours (plus margin) looking for a different offset, then bisect to the second.
    lo = start - dt.timedelta(hours=14)
    hi = start + dt.timedelta(hours=38)
    base = _offset_ns(dt.datetime.combine(date, dt.time(0), tzinfo=tz))
    t = lo
    while t < hi:
        nxt = t + dt.timedelta(hours=1)
        if _offset_ns(nxt.astimezone(tz)) != _offset_ns(t.astimezone(tz)):
            a, b = t, nxt
            while (b - a) > dt.timedelta(seconds=1):
                mid = a + (b - a) / 2
                if _offset_ns(mid.astimezone(tz)) == _offset_ns(a.astimezone(tz)):
                    a = mid
                else:
                    b = mid
            after = _offset_ns(b.astimezone(tz))
            local_change = _epoch_ns(b) + _offset_ns(a.astimezone(tz)) - _epoch_ns(start)
            if 0 <= local_change < NANOS_PER_DAY and after != base:
                return local_change, after
        t = nxt
    return np.iinfo(np.int64).max, base
