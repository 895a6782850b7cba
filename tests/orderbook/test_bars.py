"""OHLCV bars: exact values from hand-made trades, breaks, local-day alignment, and a plain-Python twin."""
from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.bars import INTERVALS, BarBuilder
from orderbook.records import ohlcv_record
from parsers.schema import BROKEN_TRADE, TRADE, UNDEF_PRICE, Action

SEC = 1_000_000_000
MIN = 60 * SEC
HOUR = 3600 * SEC
USD = 1_000_000_000  # one dollar in price units
UNDEF = int(UNDEF_PRICE)
VENUE = 1
FIELDS = ("ts_event", "instrument_id", "open", "high", "low", "close", "vwap", "volume", "trades", "venue")


def utc(*args) -> int:
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()) * SEC


T0 = utc(2024, 3, 15, 13, 30)  # 09:30 New York (EDT)


def trades(*rows, venue: int = VENUE) -> np.ndarray:
    """TRADE rows from (ts, instrument, price, size, match_id[, printable]) tuples."""
    out = TRADE.empty(len(rows))
    for i, row in enumerate(rows):
        ts, instrument, price, size, match_id, *rest = row
        out[i]["ts_event"] = ts
        out[i]["instrument_id"] = instrument
        out[i]["price"] = price
        out[i]["size"] = size
        out[i]["match_id"] = match_id
        out[i]["printable"] = rest[0] if rest else 1
        out[i]["venue"] = venue
        out[i]["action"] = Action.EXECUTE
    return out


def broken(*match_ids: int, venue: int = VENUE) -> np.ndarray:
    out = BROKEN_TRADE.empty(len(match_ids))
    out["match_id"] = match_ids
    out["venue"] = venue
    return out


def as_dicts(bars: np.ndarray) -> list[dict]:
    return [{f: int(row[f]) for f in FIELDS} for row in bars]


def bar(ts, instrument, o, h, lo, c, vwap, volume, n) -> dict:
    return {"ts_event": ts, "instrument_id": instrument, "open": o, "high": h, "low": lo, "close": c,
            "vwap": vwap, "volume": volume, "trades": n, "venue": VENUE}


# -- hand-made values ----------------------------------------------------------------------------


def boundary_trades() -> np.ndarray:
    return trades(
        (T0 + 200_000_000, 7, 10 * USD, 100, 1),
        (T0 + 500_000_000, 3, 50 * USD, 10, 2),
        (T0 + 999_999_999, 7, 10 * USD + USD // 2, 200, 3),  # last ns of the first second
        (T0 + SEC, 7, 9 * USD + 3 * USD // 4, 300, 4),  # first ns of the next
        (T0 + 59 * SEC + 1, 7, 11 * USD, 50, 5),
        (T0 + MIN, 7, 8 * USD, 25, 6),
    )


def test_bars_across_second_and_minute_boundaries():
    b = BarBuilder(VENUE)
    b.add_trades(boundary_trades())
    assert as_dicts(b.bars("1s")) == [
        bar(T0, 3, 50 * USD, 50 * USD, 50 * USD, 50 * USD, 50 * USD, 10, 1),
        # (10 * 100 + 10.5 * 200) / 300 = 10.333... -> 10_333_333_333
        bar(T0, 7, 10 * USD, 10_500_000_000, 10 * USD, 10_500_000_000, 10_333_333_333, 300, 2),
        bar(T0 + SEC, 7, 9_750_000_000, 9_750_000_000, 9_750_000_000, 9_750_000_000, 9_750_000_000, 300, 1),
        bar(T0 + 59 * SEC, 7, 11 * USD, 11 * USD, 11 * USD, 11 * USD, 11 * USD, 50, 1),
        bar(T0 + MIN, 7, 8 * USD, 8 * USD, 8 * USD, 8 * USD, 8 * USD, 25, 1),
    ]
    # (1000 + 2100 + 2925 + 550) / 650 = 10.115384615384... -> 10_115_384_615
    assert as_dicts(b.bars("1m")) == [
        bar(T0, 3, 50 * USD, 50 * USD, 50 * USD, 50 * USD, 50 * USD, 10, 1),
        bar(T0, 7, 10 * USD, 11 * USD, 9_750_000_000, 11 * USD, 10_115_384_615, 650, 4),
        bar(T0 + MIN, 7, 8 * USD, 8 * USD, 8 * USD, 8 * USD, 8 * USD, 25, 1),
    ]
    # One bar per instrument from here; the 1h bar starts at 13:00 UTC.
    # (6575 + 200) / 675 = 10.037037037... -> 10_037_037_037
    for interval, start in (("5m", T0), ("1h", utc(2024, 3, 15, 13))):
        assert as_dicts(b.bars(interval)) == [
            bar(start, 3, 50 * USD, 50 * USD, 50 * USD, 50 * USD, 50 * USD, 10, 1),
            bar(start, 7, 10 * USD, 11 * USD, 8 * USD, 8 * USD, 10_037_037_037, 675, 5),
        ]
    assert as_dicts(b.bars("1d")) == [
        bar(utc(2024, 3, 15, 4), 3, 50 * USD, 50 * USD, 50 * USD, 50 * USD, 50 * USD, 10, 1),
        bar(utc(2024, 3, 15, 4), 7, 10 * USD, 11 * USD, 8 * USD, 8 * USD, 10_037_037_037, 675, 5),
    ]
    assert b.counts() == {"trades": 6, "broken": 0, "unknown_broken_trades": 0, "broken_not_printed": 0,
                          "other_venue": 0}


def test_bars_have_the_record_dtype_and_finish_gives_every_interval():
    b = BarBuilder(VENUE)
    b.add_trades(boundary_trades())
    out = b.finish()
    assert list(out) == list(INTERVALS) == ["1s", "1m", "5m", "1h", "1d"]
    for name, rows in out.items():
        assert rows.dtype == ohlcv_record(name).dtype
        assert as_dicts(rows) == as_dicts(b.bars(name))
        assert (rows["_reserved"] == 0).all()


def test_interval_lengths():
    assert INTERVALS == {"1s": SEC, "1m": MIN, "5m": 5 * MIN, "1h": HOUR, "1d": 24 * HOUR}


def test_vwap_rounds_to_nearest_unit_halves_up():
    b = BarBuilder(VENUE)
    b.add_trades(trades((T0, 1, 1, 1, 1), (T0, 1, 2, 1, 2),  # 1.5 -> 2
                        (T0, 2, 1, 2, 3), (T0, 2, 2, 1, 4),  # 1.333 -> 1
                        (T0, 3, 1, 1, 5), (T0, 3, 2, 2, 6),  # 1.667 -> 2
                        (T0, 4, -1, 1, 7), (T0, 4, -2, 1, 8)))  # -1.5 -> -2 (away from zero)
    assert b.bars("1s")["vwap"].tolist() == [2, 1, 2, -2]


def test_vwap_is_exact_past_64_bits():
    price, size = 9_999 * USD + 123_456_789, 2**40 + 17  # price * size is about 2**83
    rows = ((T0, 1, price, size, 1), (T0, 1, price + 1, size, 2), (T0, 1, price + 3, 3, 3),
            (T0, 2, -price, size, 4), (T0, 2, 5, 1, 5))
    b = BarBuilder(VENUE)
    b.add_trades(trades(*rows))
    got = b.bars("1s")

    def vwap(rs):
        num = sum(r[2] * r[3] for r in rs)
        den = sum(r[3] for r in rs)
        q, rem = divmod(abs(num), den)
        q += 2 * rem >= den
        return q if num >= 0 else -q

    assert got["vwap"].tolist() == [vwap(rows[:3]), vwap(rows[3:])]
    assert got["volume"].tolist() == [2 * size + 3, size + 1]


def test_open_and_close_follow_arrival_order_within_a_bar():
    b = BarBuilder(VENUE)
    # The second trade's time is earlier than the first's; both in the same second.
    b.add_trades(trades((T0 + 900, 1, 5 * USD, 1, 1), (T0 + 100, 1, 6 * USD, 1, 2), (T0 + 500, 1, 4 * USD, 1, 3)))
    [row] = as_dicts(b.bars("1s"))
    assert (row["open"], row["high"], row["low"], row["close"]) == (5 * USD, 6 * USD, 4 * USD, 4 * USD)


def test_time_going_back_across_a_boundary_lands_in_the_earlier_bar():
    b = BarBuilder(VENUE)
    b.add_trades(trades((T0, 1, 5 * USD, 1, 1), (T0 + 2 * SEC, 1, 7 * USD, 1, 2),
                        (T0 + SEC // 2, 1, 6 * USD, 2, 3), (T0 + SEC, 1, 8 * USD, 1, 4)))
    assert [(r["ts_event"], r["open"], r["close"], r["volume"]) for r in as_dicts(b.bars("1s"))] == [
        (T0, 5 * USD, 6 * USD, 3), (T0 + SEC, 8 * USD, 8 * USD, 1), (T0 + 2 * SEC, 7 * USD, 7 * USD, 1)]


def test_non_printable_zero_size_and_other_venue_trades_are_left_out():
    b = BarBuilder(VENUE)
    b.add_trades(trades((T0, 1, 10 * USD, 100, 1),
                        (T0 + 1, 1, 99 * USD, 500, 2, 0),  # ITCH C with printable N
                        (T0 + 2, 1, 1 * USD, 0, 3),  # no shares
                        (T0 + 3, 1, 12 * USD, 100, 4)))
    b.add_trades(trades((T0 + 4, 1, 50 * USD, 7, 5), venue=2))
    assert as_dicts(b.bars("1s")) == [bar(T0, 1, 10 * USD, 12 * USD, 10 * USD, 12 * USD, 11 * USD, 200, 2)]
    assert b.counts()["trades"] == 2
    assert b.counts()["other_venue"] == 1


def test_unpriced_trades_count_in_volume_only():
    b = BarBuilder(VENUE)
    b.add_trades(trades((T0, 1, UNDEF, 40, 1), (T0 + 1, 1, 10 * USD, 10, 2), (T0 + 2, 1, UNDEF, 5, 3),
                        (T0, 2, UNDEF, 9, 4)))
    assert as_dicts(b.bars("1s")) == [
        bar(T0, 1, 10 * USD, 10 * USD, 10 * USD, 10 * USD, 10 * USD, 55, 3),
        bar(T0, 2, UNDEF, UNDEF, UNDEF, UNDEF, UNDEF, 9, 1),
    ]


# -- broken trades ------------------------------------------------------------------------------


def test_a_broken_trade_leaves_every_interval():
    b = BarBuilder(VENUE)
    b.add_trades(boundary_trades())
    b.add_broken(broken(4))  # the 9.75 x 300 trade, alone in its second and the low of its minute
    assert [r["ts_event"] for r in as_dicts(b.bars("1s")) if r["instrument_id"] == 7] == [
        T0, T0 + 59 * SEC, T0 + MIN]  # its 1s bar is gone
    # 1m: (1000 + 2100 + 550) / 350 = 10.428571428571... -> 10_428_571_429
    assert as_dicts(b.bars("1m"))[1] == bar(T0, 7, 10 * USD, 11 * USD, 10 * USD, 11 * USD, 10_428_571_429, 350, 3)
    # 5m, 1h, 1d: (3650 + 200) / 375 = 10.2666... -> 10_266_666_667; low is now the 8.00 trade
    out = b.finish()
    for interval, start in (("5m", T0), ("1h", utc(2024, 3, 15, 13)), ("1d", utc(2024, 3, 15, 4))):
        assert as_dicts(out[interval])[1] == bar(start, 7, 10 * USD, 11 * USD, 8 * USD, 8 * USD, 10_266_666_667, 375, 4)
    assert b.counts() == {"trades": 5, "broken": 1, "unknown_broken_trades": 0, "broken_not_printed": 0,
                          "other_venue": 0}


def test_breaking_the_open_high_low_close_recomputes_them():
    b = BarBuilder(VENUE)
    b.add_trades(trades((T0, 1, 10 * USD, 1, 1), (T0 + 1, 1, 13 * USD, 1, 2), (T0 + 2, 1, 9 * USD, 1, 3),
                        (T0 + 3, 1, 11 * USD, 1, 4), (T0 + 4, 1, 12 * USD, 3, 5), (T0 + 5, 1, 10 * USD, 1, 6)))
    assert as_dicts(b.bars("5m")) == [bar(T0, 1, 10 * USD, 13 * USD, 9 * USD, 10 * USD, 11_125_000_000, 8, 6)]
    b.add_broken(broken(1, 2, 3, 6))  # open, high, low, close
    assert as_dicts(b.bars("5m")) == [bar(T0, 1, 11 * USD, 12 * USD, 11 * USD, 12 * USD, 11_750_000_000, 4, 2)]


def test_a_bar_whose_trades_all_broke_disappears_from_every_interval():
    b = BarBuilder(VENUE)
    b.add_trades(trades((T0, 1, 10 * USD, 5, 1), (T0, 2, 20 * USD, 5, 2)))
    b.add_broken(broken(1))
    for interval, rows in b.finish().items():
        assert rows["instrument_id"].tolist() == [2], interval


def test_break_before_its_trade_unknown_and_not_printed_breaks():
    b = BarBuilder(VENUE)
    b.add_broken(broken(2))  # arrives before its trade
    b.add_trades(trades((T0, 1, 10 * USD, 5, 1), (T0 + 1, 1, 20 * USD, 5, 2), (T0 + 2, 1, 30 * USD, 5, 3, 0)))
    b.add_broken(broken(3, 77))  # 3 never printed; 77 is no trade at all
    b.add_broken(broken(1, venue=2))  # another venue's break
    assert as_dicts(b.bars("1m")) == [bar(T0, 1, 10 * USD, 10 * USD, 10 * USD, 10 * USD, 10 * USD, 5, 1)]
    assert b.counts() == {"trades": 1, "broken": 1, "unknown_broken_trades": 1, "broken_not_printed": 1,
                          "other_venue": 1}


def test_unknown_break_until_its_trade_arrives():
    b = BarBuilder(VENUE)
    b.add_broken(broken(9))
    assert b.counts()["unknown_broken_trades"] == 1
    assert len(b.bars("1s")) == 0
    b.add_trades(trades((T0, 1, 10 * USD, 5, 9)))
    assert b.counts()["unknown_broken_trades"] == 0
    assert b.counts()["broken"] == 1
    assert len(b.bars("1s")) == 0


# -- daily bars on the venue's calendar ----------------------------------------------------------


@pytest.mark.parametrize(
    "ts, midnight",
    [
        (utc(2024, 3, 15, 4), utc(2024, 3, 15, 4)),  # EDT: midnight is 04:00 UTC
        (utc(2024, 3, 15, 3, 59, 59), utc(2024, 3, 14, 4)),  # 23:59:59 on the 14th
        (utc(2024, 3, 15, 20, 1), utc(2024, 3, 15, 4)),  # after the close
        (utc(2024, 11, 4, 5), utc(2024, 11, 4, 5)),  # EST: midnight is 05:00 UTC
        (utc(2024, 11, 4, 4, 30), utc(2024, 11, 3, 4)),  # 23:30 EST on the 3rd, whose midnight was EDT
        (utc(2024, 11, 4, 4, 59, 59) + SEC - 1, utc(2024, 11, 3, 4)),  # last ns of the 25-hour day
        (utc(2024, 3, 11, 3, 59, 59), utc(2024, 3, 10, 5)),  # last second of the 23-hour day
        (utc(2024, 3, 11, 4), utc(2024, 3, 11, 4)),
    ],
)
def test_1d_bar_starts_at_new_york_midnight(ts, midnight):
    b = BarBuilder(VENUE, tz="America/New_York")
    b.add_trades(trades((ts, 1, 10 * USD, 5, 1)))
    [row] = as_dicts(b.bars("1d"))
    assert row["ts_event"] == midnight
    start = dt.datetime.fromtimestamp(midnight // SEC, tz=ZoneInfo("America/New_York"))
    assert (start.hour, start.minute, start.second) == (0, 0, 0)


def test_1d_bars_split_at_local_midnight_while_1h_bars_follow_utc():
    b = BarBuilder(VENUE)
    b.add_trades(trades((utc(2024, 11, 4, 4, 30), 1, 10 * USD, 5, 1), (utc(2024, 11, 4, 5, 30), 1, 12 * USD, 5, 2)))
    assert b.bars("1d")["ts_event"].tolist() == [utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)]
    assert b.bars("1h")["ts_event"].tolist() == [utc(2024, 11, 4, 4), utc(2024, 11, 4, 5)]


def test_1d_bars_follow_the_tz_argument():
    b = BarBuilder(VENUE, tz="Asia/Tokyo")
    b.add_trades(trades((utc(2024, 3, 15, 14, 59), 1, 10 * USD, 5, 1), (utc(2024, 3, 15, 15), 1, 10 * USD, 5, 2)))
    assert b.bars("1d")["ts_event"].tolist() == [utc(2024, 3, 14, 15), utc(2024, 3, 15, 15)]


def test_unknown_interval_and_empty_builder():
    b = BarBuilder(VENUE)
    with pytest.raises(ValueError, match="2m"):
        b.bars("2m")
    assert {k: len(v) for k, v in b.finish().items()} == dict.fromkeys(INTERVALS, 0)
    b.add_trades(TRADE.empty(0))
    b.add_broken(BROKEN_TRADE.empty(0))
    assert b.counts()["trades"] == 0


def test_large_instrument_ids():
    b = BarBuilder(VENUE)
    b.add_trades(trades((T0, 2**32 - 1, 10 * USD, 5, 1), (T0, 5, 11 * USD, 5, 2), (T0 + 1, 2**32 - 1, 12 * USD, 5, 3)))
    assert b.bars("1s")[["instrument_id", "close"]].tolist() == [(5, 11 * USD), (2**32 - 1, 12 * USD)]


# -- against a plain-Python twin -----------------------------------------------------------------


def reference(trade_rows: list[tuple], breaks: list[tuple], tz: str) -> tuple[dict[str, list[dict]], dict]:
    """Bars and counts the obvious way: dicts keyed by (start, instrument), Python ints."""
    zone = ZoneInfo(tz)
    broken_ids = {m for m, v in breaks if v == VENUE}
    counted_ids = {r[4] for r in trade_rows if r[6] == VENUE and r[5] == 1 and r[3] > 0}
    seen_ids = {r[4] for r in trade_rows if r[6] == VENUE}
    out = {}
    for interval, length in INTERVALS.items():
        acc: dict[tuple[int, int], dict] = {}
        for ts, instrument, price, size, match_id, printable, venue in trade_rows:
            if venue != VENUE or printable != 1 or size == 0 or match_id in broken_ids:
                continue
            if interval == "1d":
                local = dt.datetime.fromtimestamp(ts // SEC, tz=zone)
                start = int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()) * SEC
            else:
                start = ts // length * length
            b = acc.setdefault((start, instrument), {"prices": [], "volume": 0, "trades": 0})
            b["volume"] += size
            b["trades"] += 1
            if price != UNDEF:
                b["prices"].append((price, size))
        rows = []
        for (start, instrument), b in sorted(acc.items()):
            ps = b["prices"]
            if ps:
                num, den = sum(p * s for p, s in ps), sum(s for _, s in ps)
                q, rem = divmod(abs(num), den)
                q += 2 * rem >= den
                o, h, lo, c, vwap = ps[0][0], max(p for p, _ in ps), min(p for p, _ in ps), ps[-1][0], q if num >= 0 else -q
            else:
                o = h = lo = c = vwap = UNDEF
            rows.append(bar(start, instrument, o, h, lo, c, vwap, b["volume"], b["trades"]))
        out[interval] = rows
    mine = [m for m, v in breaks if v == VENUE]
    counts = {
        "trades": sum(1 for r in trade_rows if r[6] == VENUE and r[5] == 1 and r[3] > 0 and r[4] not in broken_ids),
        "broken": sum(1 for r in trade_rows if r[6] == VENUE and r[5] == 1 and r[3] > 0 and r[4] in broken_ids),
        "unknown_broken_trades": sum(1 for m in mine if m not in seen_ids),
        "broken_not_printed": sum(1 for m in mine if m in seen_ids and m not in counted_ids),
        "other_venue": sum(1 for r in trade_rows if r[6] != VENUE) + sum(1 for _, v in breaks if v != VENUE),
    }
    return out, counts


BASES = [T0, utc(2024, 3, 10, 4, 59), utc(2024, 11, 3, 23, 30), utc(2024, 11, 4, 4, 59, 50)]
PRICES = st.one_of(st.integers(1, 200).map(lambda k: k * USD // 4), st.integers(-(2**63), 2**63 - 2),
                   st.just(UNDEF), st.integers(-5, 5))
TRADE_ROW = st.tuples(
    st.integers(-2 * HOUR, 30 * HOUR),  # offset from the base: crosses seconds, minutes, hours and days
    st.sampled_from([1, 2, 3, 65_535, 2**32 - 1]),
    PRICES,
    st.one_of(st.integers(0, 1_000), st.integers(0, 2**40)),
    st.integers(1, 40),  # match ids repeat now and then
    st.sampled_from([1, 1, 1, 0]),
    st.sampled_from([VENUE, VENUE, VENUE, 2]),
)


@st.composite
def sessions(draw):
    base = draw(st.sampled_from(BASES))
    offsets = draw(st.lists(TRADE_ROW, max_size=60))
    if draw(st.booleans()):  # mostly in time order, as a feed is
        offsets.sort(key=lambda r: r[0])
    rows = [(base + off, *rest) for off, *rest in offsets]
    breaks = draw(st.lists(st.tuples(st.integers(1, 45), st.sampled_from([VENUE, VENUE, 2])), max_size=8))
    tz = draw(st.sampled_from(["America/New_York", "Europe/London", "Asia/Kolkata"]))
    # Where the trade rows are cut into batches, and after which batch each break arrives.
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=5)))
    when = draw(st.lists(st.integers(0, len(cuts) + 1), min_size=len(breaks), max_size=len(breaks)))
    return rows, breaks, tz, cuts, when


def _trade_array(rows: list[tuple]) -> np.ndarray:
    out = TRADE.empty(len(rows))
    for i, (ts, instrument, price, size, match_id, printable, venue) in enumerate(rows):
        for name, value in (("ts_event", ts), ("instrument_id", instrument), ("price", price), ("size", size),
                            ("match_id", match_id), ("printable", printable), ("venue", venue)):
            out[i][name] = value
    return out


@settings(max_examples=300, deadline=None)
@given(sessions())
def test_matches_plain_python_bars(session):
    rows, breaks, tz, cuts, when = session
    all_trades = _trade_array(rows)
    b = BarBuilder(VENUE, tz=tz)
    bounds = [0, *cuts, len(rows)]
    for k in range(len(bounds)):
        for (m, v), w in zip(breaks, when):
            if w == k:
                b.add_broken(broken(m, venue=v))
        if k + 1 < len(bounds):
            b.add_trades(all_trades[bounds[k] : bounds[k + 1]])
    want_bars, want_counts = reference(rows, breaks, tz)
    got = b.finish()
    for interval in INTERVALS:
        assert as_dicts(got[interval]) == want_bars[interval], interval
    assert b.counts() == want_counts


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 400), min_size=1, max_size=20))
def test_batches_give_the_same_bars_as_one_call(seed, batch_sizes):
    rng = np.random.default_rng(seed)
    n = 2_000
    t = TRADE.empty(n)
    t["ts_event"] = T0 + np.sort(rng.integers(-HOUR, 20 * HOUR, n))
    t["instrument_id"] = rng.integers(1, 30, n)
    t["price"] = rng.integers(1, 4_000, n) * (USD // 100)
    t["size"] = rng.integers(0, 500, n)
    t["match_id"] = rng.permutation(n) + 1
    t["printable"] = rng.random(n) < 0.9
    t["venue"] = VENUE
    breaks = broken(*rng.choice(n + 50, 40, replace=False).tolist())
    whole = BarBuilder(VENUE)
    whole.add_trades(t)
    whole.add_broken(breaks)
    pieces = BarBuilder(VENUE)
    i = k = 0
    while i < n:
        size = batch_sizes[k % len(batch_sizes)]
        pieces.add_trades(t[i : i + size])
        if k == 1:
            pieces.add_broken(breaks[:20])
        i += size
        k += 1
    pieces.add_broken(breaks[20:])
    a, b = whole.finish(), pieces.finish()
    for interval in INTERVALS:
        assert a[interval].tobytes() == b[interval].tobytes()
    assert whole.counts() == pieces.counts()


def test_1d_bars_with_a_stray_timestamp_years_away():
    b = BarBuilder(VENUE)
    b.add_trades(trades((T0, 1, 10 * USD, 5, 1), (utc(2261, 6, 1, 12), 1, 11 * USD, 5, 2), (0, 1, 12 * USD, 5, 3)))
    assert b.bars("1d")["ts_event"].tolist() == [utc(1969, 12, 31, 5), utc(2024, 3, 15, 4), utc(2261, 6, 1, 4)]
