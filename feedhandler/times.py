"""Times and durations typed by users: ``--at`` and ``--conflate``."""
from __future__ import annotations

import datetime as dt
import re

import numpy as np

from parsers.clock import NANOS_PER_SECOND, VenueClock

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": NANOS_PER_SECOND, "m": 60 * NANOS_PER_SECOND,
            "h": 3600 * NANOS_PER_SECOND}
_LOCAL_TIME = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?$")
_ISO_FRACTION = re.compile(r"^(.*T\d{2}:\d{2}:\d{2})\.(\d{1,9})(.*)$")


def parse_duration(text: str) -> int:
    """Nanoseconds of ``0``, ``500us``, ``1ms``, ``100ms``, ``1s`` ... (a bare number is ns)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration (like 0, 500us, 1ms, 100ms, 1s): {text!r}")
    value, unit = m.groups()
    ns = float(value) * _UNIT_NS[unit or "ns"]
    if ns != int(ns):
        raise ValueError(f"duration finer than a nanosecond: {text!r}")
    return int(ns)


def parse_at(text: str, clock: VenueClock) -> int:
    """Epoch ns of ``HH:MM:SS[.fffffffff]`` (venue local time on the session date) or ISO 8601.

    An ISO time without an offset is read in the venue's time zone; fractions keep all 9 digits.
    """
    m = _LOCAL_TIME.match(text.strip())
    if m:
        h, mi, s, frac = m.groups()
        if int(h) > 23 or int(mi) > 59 or int(s) > 59:
            raise ValueError(f"not a time of day: {text!r}")
        ns = ((int(h) * 60 + int(mi)) * 60 + int(s)) * NANOS_PER_SECOND + int((frac or "").ljust(9, "0") or 0)
        return int(clock.to_epoch(np.array([ns]))[0])
    iso = text.strip().replace("Z", "+00:00")
    extra_ns = 0
    fm = _ISO_FRACTION.match(iso)
    if fm:
        head, frac, tail = fm.groups()
        extra_ns = int(frac.ljust(9, "0"))
        iso = head + tail
    try:
        t = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(f"not a time (HH:MM:SS[.fffffffff] or ISO 8601): {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=clock.tz)
    return int(t.timestamp()) * NANOS_PER_SECOND + extra_ns
