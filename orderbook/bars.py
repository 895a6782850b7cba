"""OHLCV bars of printed trades, with broken trades taken back out.

Rules this module keeps (``docs/ohlcv.md`` says the same at more length):
- a trade counts if ``printable == 1``, ``size > 0``, its venue is the builder's, and no broken trade
  names its ``match_id``. A trade whose price is ``UNDEF_PRICE`` (an execution of an order we never saw)
  counts in ``volume`` and ``trades`` but sets none of open/high/low/close/vwap.
- a bar is (instrument, interval start). ``1s``..``1h`` start on multiples of the interval since the
  Unix epoch (UTC); ``1d`` starts at the first instant of the venue's local calendar day (``tz``).
  ``ts_event`` of a bar is its start. Bars with no counted trade do not exist.
- within a bar, open and close follow arrival (sequence) order, not ``ts_event``; a trade whose time goes
  backwards still lands in the bar its ``ts_event`` names.
- breaks are applied exactly: the builder keeps every printed trade (ts, instrument, price, size,
  match_id: 36 bytes a trade) and computes bars from the survivors whenever they are asked for, so a
  break removes its trade's volume, count, notional and price extremes from every interval, and a
  break that arrives before its trade still removes it.
- vwap is sum(price * size) / sum(size) over the priced trades, summed in 128-bit integers and rounded
  to the nearest 1e-9 unit (halves away from zero): exact, no float.
- no Python object per trade: kernels are numba, glue is vectorised numpy. One builder per session
  (venue, date): match numbers repeat across days.
"""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numba as nb
import numpy as np

from orderbook.records import ohlcv_record
from parsers.clock import NANOS_PER_DAY, NANOS_PER_SECOND
from parsers.schema import UNDEF_PRICE

INTERVALS: dict[str, int] = {
    "1s": NANOS_PER_SECOND,
    "1m": 60 * NANOS_PER_SECOND,
    "5m": 300 * NANOS_PER_SECOND,
    "1h": 3_600 * NANOS_PER_SECOND,
    "1d": 86_400 * NANOS_PER_SECOND,  # nominal: the bar runs from local midnight to the next (23-25 h)
}
"""Interval name -> length in ns. ``1d`` is aligned to the venue's local day, the others to the epoch."""

_DAY = "1d"
_SPAN_DAYS = 400  # up to this many days between the first and last trade, list every local day
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S63 = np.uint64(63)
_U0 = np.uint64(0)
_U1 = np.uint64(1)


class _Column:
    """A 1-D array that grows by doubling; ``view()`` is the filled part."""

    def __init__(self, dtype: str) -> None:
        self._a = np.empty(1024, dtype=dtype)
        self._n = 0

    def append(self, values: np.ndarray) -> None:
        need = self._n + len(values)
        if need > len(self._a):
            grown = np.empty(max(need, 2 * len(self._a)), dtype=self._a.dtype)
            grown[: self._n] = self._a[: self._n]
            self._a = grown
        self._a[self._n : need] = values
        self._n = need

    def view(self) -> np.ndarray:
        return self._a[: self._n]


class BarBuilder:
    """OHLCV bars of one venue's session, for every interval in ``INTERVALS``.

    Feed it ``add_trades`` (``parsers.schema.TRADE`` rows) and ``add_broken`` (``BROKEN_TRADE`` rows)
    batch by batch in sequence order; ask ``bars(interval)`` or ``finish()`` whenever bars are wanted
    (each call computes them from what has arrived so far; nothing is closed by asking).

    Broken trades: each break names a ``match_id``; every counted trade with that match id is left out
    of every bar, as if it had never printed. A break whose match id no trade of this builder carries
    (yet) is counted as ``unknown_broken_trades`` at the time of asking; if its trade arrives later, it
    is removed then. A break of a trade that did not print (``printable == 0``) changes nothing and is
    counted as ``broken_not_printed``.
    """

    def __init__(self, venue: int, tz: str = "America/New_York") -> None:
        self.venue = venue
        self.tz = ZoneInfo(tz)
        self._ts = _Column("<i8")
        self._instrument = _Column("<u4")
        self._price = _Column("<i8")
        self._size = _Column("<u8")
        self._match = _Column("<u8")
        self._unprinted_match = _Column("<u8")  # match ids of trades that do not count (not printable, size 0)
        self._broken_match = _Column("<u8")
        self._other_venue = 0

    # -- input ------------------------------------------------------------------------------------

    def add_trades(self, trades: np.ndarray) -> None:
        """Keep the printed trades of a batch of ``TRADE`` rows (sequence order)."""
        if not len(trades):
            return
        mine = trades["venue"] == self.venue
        self._other_venue += int(len(trades) - np.count_nonzero(mine))
        counted = mine & (trades["printable"] == 1) & (trades["size"] > 0)
        rows = trades[counted]
        self._ts.append(rows["ts_event"])
        self._instrument.append(rows["instrument_id"])
        self._price.append(rows["price"])
        self._size.append(rows["size"])
        self._match.append(rows["match_id"])
        self._unprinted_match.append(trades["match_id"][mine & ~counted])

    def add_broken(self, broken: np.ndarray) -> None:
        """Note a batch of ``BROKEN_TRADE`` rows; their trades leave every bar."""
        if not len(broken):
            return
        mine = broken["venue"] == self.venue
        self._other_venue += int(len(broken) - np.count_nonzero(mine))
        self._broken_match.append(broken["match_id"][mine])

    # -- output -----------------------------------------------------------------------------------

    def bars(self, interval: str) -> np.ndarray:
        """Bars of one interval (``ohlcv_record(interval)`` rows) sorted by (ts_event, instrument_id)."""
        return self._bars(interval, *self._live())

    def finish(self) -> dict[str, np.ndarray]:
        """Bars of every interval: interval name -> rows, as ``bars``."""
        live = self._live()
        return {name: self._bars(name, *live) for name in INTERVALS}

    def counts(self) -> dict[str, int]:
        """What the bars are made of, as of now.

        ``trades``: printed trades in the bars; ``broken``: printed trades removed by breaks;
        ``unknown_broken_trades``: breaks naming a match id no trade carries; ``broken_not_printed``:
        breaks of trades that never counted; ``other_venue``: rows of another venue, ignored.
        """
        match = self._match.view()
        breaks = self._broken_match.view()
        removed = np.isin(match, breaks)
        known = np.isin(breaks, match)
        not_printed = ~known & np.isin(breaks, self._unprinted_match.view())
        return {
            "trades": int(len(match) - np.count_nonzero(removed)),
            "broken": int(np.count_nonzero(removed)),
            "unknown_broken_trades": int(len(breaks) - np.count_nonzero(known) - np.count_nonzero(not_printed)),
            "broken_not_printed": int(np.count_nonzero(not_printed)),
            "other_venue": self._other_venue,
        }

    # -- computing --------------------------------------------------------------------------------

    def _live(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """The counted trades that no break names, in arrival order, with dense instrument indexes."""
        ts, instrument = self._ts.view(), self._instrument.view()
        price, size = self._price.view(), self._size.view()
        breaks = self._broken_match.view()
        if len(breaks):
            keep = ~np.isin(self._match.view(), breaks)
            ts, instrument, price, size = ts[keep], instrument[keep], price[keep], size[keep]
        dense, n_instruments = _dense_ids(instrument)
        return ts, instrument, price, size, dense, n_instruments

    def _bars(self, interval: str, ts, instrument, price, size, dense, n_instruments) -> np.ndarray:
        if interval not in INTERVALS:
            raise ValueError(f"unknown interval {interval!r}; expected one of {', '.join(INTERVALS)}")
        record = ohlcv_record(interval)
        if not len(ts):
            return record.empty(0)
        # Bar number of each trade: increasing with time, so (bar number, dense id) sorts like the output.
        if interval == _DAY:
            midnights = _midnights_for(ts, self.tz)
            bar_no = np.searchsorted(midnights, ts, side="right") - 1
        else:
            bar_no = ts // INTERVALS[interval]
        slot_of_trade, slot_bar, slot_trade = assign_bars(dense, bar_no, n_instruments)
        n = len(slot_bar)
        rank = np.empty(n, dtype=np.int64)  # output row of each bar
        rank[np.argsort((slot_bar - slot_bar.min()) * n_instruments + dense[slot_trade])] = np.arange(n)
        bar_ts = midnights[slot_bar] if interval == _DAY else slot_bar * INTERVALS[interval]
        rows = record.empty(n)
        reduce_bars(slot_of_trade, price, size, rank, bar_ts, instrument[slot_trade], self.venue, rows)
        return rows


def local_midnights(first_ns: int, last_ns: int, tz: ZoneInfo) -> np.ndarray:
    """Epoch ns of the start of every local calendar day from the one holding ``first_ns`` to the one
    after ``last_ns`` (where midnight falls in a gap, the day starts when the gap ends)."""
    day = dt.datetime.fromtimestamp(first_ns // NANOS_PER_SECOND, tz=tz).date()
    end = dt.datetime.fromtimestamp(last_ns // NANOS_PER_SECOND, tz=tz).date() + dt.timedelta(days=1)
    out = []
    while day <= end:
        out.append(int(dt.datetime.combine(day, dt.time(0), tzinfo=tz).timestamp()) * NANOS_PER_SECOND)
        day += dt.timedelta(days=1)
    return np.array(out, dtype=np.int64)


def _midnights_for(ts: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """Sorted local-day starts that cover every time in ``ts``: all days of the span when it is short,
    else only the days around the UTC days present (a stray timestamp years away costs three days)."""
    first, last = int(ts.min()), int(ts.max())
    if last - first <= _SPAN_DAYS * NANOS_PER_DAY:
        return local_midnights(first, last, tz)
    days = np.unique(ts // NANOS_PER_DAY)
    parts = [local_midnights(int(d - 1) * NANOS_PER_DAY, int(d + 1) * NANOS_PER_DAY, tz) for d in days]
    return np.unique(np.concatenate(parts))


def _dense_ids(instrument: np.ndarray) -> tuple[np.ndarray, int]:
    """0-based dense index of each instrument id (a lookup table when ids are small, else a sort)."""
    if not len(instrument):
        return np.empty(0, dtype=np.int64), 0
    top = int(instrument.max())
    if top < 1 << 22:
        seen = np.zeros(top + 1, dtype=bool)
        seen[instrument] = True
        lut = np.cumsum(seen) - 1
        return lut[instrument], int(lut[-1]) + 1
    uniq, inverse = np.unique(instrument, return_inverse=True)
    return inverse.astype(np.int64), len(uniq)


@nb.njit(cache=True, nogil=True)
def assign_bars(dense, bar_no, n_instruments):
    """Give each trade the index of its bar (instrument, bar number), bars indexed as first seen.

    Each instrument's bars form a linked list headed by its highest-numbered bar, so trades in time
    order hit the head; a trade whose time went back walks the list.

    Args:
        dense: int64 dense instrument index per trade; bar_no: int64 bar number per trade (increasing
        with time); n_instruments: number of distinct dense indexes.

    Returns:
        (int64 bar index per trade, int64 bar number per bar, int64 index of the first trade of each bar).
    """
    n = dense.shape[0]
    slot_of_trade = np.empty(n, dtype=np.int64)
    slot_bar = np.empty(n, dtype=np.int64)
    slot_trade = np.empty(n, dtype=np.int64)
    prev = np.empty(n, dtype=np.int64)
    head = np.full(n_instruments, -1, dtype=np.int64)
    n_slots = 0
    for i in range(n):
        d = dense[i]
        b = bar_no[i]
        h = head[d]
        if h >= 0 and slot_bar[h] == b:
            slot_of_trade[i] = h
            continue
        found = -1
        if h >= 0 and b < slot_bar[h]:
            t = prev[h]
            while t >= 0:
                if slot_bar[t] == b:
                    found = t
                    break
                t = prev[t]
        if found < 0:
            found = n_slots
            n_slots += 1
            slot_bar[found] = b
            slot_trade[found] = i
            if h < 0 or b > slot_bar[h]:
                prev[found] = h
                head[d] = found
            else:  # older than the head: link in behind it
                prev[found] = prev[h]
                prev[h] = found
        slot_of_trade[i] = found
    return slot_of_trade, slot_bar[:n_slots].copy(), slot_trade[:n_slots].copy()


@nb.njit(cache=True, nogil=True)
def reduce_bars(slot_of_trade, price, size, rank, bar_ts, bar_instrument, venue, rows):
    """Fill one OHLCV row per bar, trades taken in arrival order.

    Args:
        slot_of_trade: int64 bar index per trade; price: int64 1e-9 units (UNDEF_PRICE: unknown);
        size: uint64 shares; rank: int64 output row per bar; bar_ts: int64 start per bar;
        bar_instrument: uint32 instrument id per bar; venue: the rows' venue;
        rows: ``ohlcv_record`` rows, one per bar, zeroed (filled here).
    """
    undef = np.int64(UNDEF_PRICE)
    n_slots = rank.shape[0]
    for s in range(n_slots):
        r = rows[rank[s]]
        r.ts_event = bar_ts[s]
        r.instrument_id = bar_instrument[s]
        r.venue = venue
        r.open = undef
        r.high = undef
        r.low = undef
        r.close = undef
        r.vwap = undef
    priced = np.zeros(n_slots, dtype=np.uint64)  # volume of the priced trades: vwap's denominator
    # sum of |price| * size as 128-bit (high, low) words, apart for price >= 0 and price < 0
    pos_h = np.zeros(n_slots, dtype=np.uint64)
    pos_l = np.zeros(n_slots, dtype=np.uint64)
    neg_h = np.zeros(n_slots, dtype=np.uint64)
    neg_l = np.zeros(n_slots, dtype=np.uint64)
    for i in range(slot_of_trade.shape[0]):
        s = slot_of_trade[i]
        r = rows[rank[s]]
        q = size[i]
        r.volume += q
        r.trades += np.uint32(1)
        p = price[i]
        if p == undef:
            continue
        if r.open == undef:
            r.open = p
            r.high = p
            r.low = p
        elif p > r.high:
            r.high = p
        elif p < r.low:
            r.low = p
        r.close = p
        priced[s] += q
        if p >= 0:
            ph, pl = _mul_64(np.uint64(p), q)
            pos_h[s], pos_l[s] = _add_128(pos_h[s], pos_l[s], ph, pl)
        else:
            ph, pl = _mul_64(np.uint64(-(p + 1)) + _U1, q)
            neg_h[s], neg_l[s] = _add_128(neg_h[s], neg_l[s], ph, pl)
    for s in range(n_slots):
        d = priced[s]
        if d == _U0:
            continue
        r = rows[rank[s]]
        if neg_h[s] == _U0 and neg_l[s] == _U0:
            r.vwap = np.int64(_div_round(pos_h[s], pos_l[s], d))
        elif pos_h[s] > neg_h[s] or (pos_h[s] == neg_h[s] and pos_l[s] >= neg_l[s]):
            mh, ml = _sub_128(pos_h[s], pos_l[s], neg_h[s], neg_l[s])
            r.vwap = np.int64(_div_round(mh, ml, d))
        else:
            mh, ml = _sub_128(neg_h[s], neg_l[s], pos_h[s], pos_l[s])
            r.vwap = -np.int64(_div_round(mh, ml, d))


@nb.njit(cache=True, inline="always")
def _mul_64(a, b):
    """Full 128-bit product of two uint64: (high word, low word)."""
    a_lo = a & _M32
    a_hi = a >> _S32
    b_lo = b & _M32
    b_hi = b >> _S32
    p0 = a_lo * b_lo
    p1 = a_lo * b_hi
    p2 = a_hi * b_lo
    mid = (p0 >> _S32) + (p1 & _M32) + (p2 & _M32)  # < 3 * 2**32: no overflow
    low = (p0 & _M32) | (mid << _S32)
    high = a_hi * b_hi + (p1 >> _S32) + (p2 >> _S32) + (mid >> _S32)
    return high, low


@nb.njit(cache=True, inline="always")
def _add_128(ah, al, bh, bl):
    low = al + bl
    carry = _U1 if low < al else _U0
    return ah + bh + carry, low


@nb.njit(cache=True, inline="always")
def _sub_128(ah, al, bh, bl):
    """a - b for a >= b."""
    borrow = _U1 if al < bl else _U0
    return ah - bh - borrow, al - bl


@nb.njit(cache=True, nogil=True)
def _div_round(high, low, d):
    """(high * 2**64 + low) / d rounded to nearest, halves up; needs high < d (the quotient fits 64 bits)."""
    if high == _U0:  # the usual case: one word
        q = low // d
        r = low - q * d
        return q + _U1 if r >= d - r else q
    r = high
    q = _U0
    for k in range(63, -1, -1):
        carry = r >> _S63
        r = (r << _U1) | ((low >> np.uint64(k)) & _U1)
        q = q << _U1
        if carry != _U0 or r >= d:
            r = r - d  # wraps correctly when carry is set: the true remainder is below 2 * d
            q = q | _U1
    if r >= d - r:
        q = q + _U1
    return q
