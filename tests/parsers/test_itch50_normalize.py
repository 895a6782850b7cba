"""ITCH 5.0 normalization from literal messages: known answers, and anomalies counted, never raised."""
import datetime as dt

import numpy as np

from parsers import itch50
from parsers.clock import NANOS_PER_DAY, VenueClock
from parsers.frames import FrameFlag, empty_frames
from parsers.itch50_normalize import ItchNormalizer
from parsers.schema import UNDEF_PRICE, Flag, Side, StatusKind, TradingState

T0 = 34_200 * 1_000_000_000  # 09:30 ET in ns since midnight
MIDNIGHT = 1_710_475_200_000_000_000  # 2024-03-15 00:00 EDT


def frames_for(messages: list[bytes], lengths: list[int] | None = None):
    buf = np.frombuffer(b"".join(messages), dtype=np.uint8)
    fr = empty_frames(len(messages))
    fr["offset"] = np.cumsum([0] + [len(m) for m in messages])[:-1]
    fr["length"] = lengths or [len(m) for m in messages]
    fr["ts_recv"] = MIDNIGHT + T0 + 1000
    fr["sequence"] = np.arange(1, len(messages) + 1)
    fr["session"] = 0
    fr["flags"] = 0
    fr["flags"][-1] = FrameFlag.LAST_IN_PACKET
    return buf, fr


def normalize(messages, lengths=None):
    n = ItchNormalizer(VenueClock(dt.date(2024, 3, 15)))
    return n.normalize(*frames_for(messages, lengths)), n


DIRECTORY = itch50.encode(b"R", stock_locate=7, timestamp=1_000, stock=b"ZVZZT", market_category=b"Q",
                          round_lot_size=100, authenticity=b"P", luld_tier=b"1")


def test_book_messages_become_enriched_events_and_trades():
    out, n = normalize([
        DIRECTORY,
        itch50.encode(b"A", stock_locate=7, timestamp=T0, order_ref=1, side=b"S", shares=300, stock=b"ZVZZT", price=101_0000),
        itch50.encode(b"F", stock_locate=7, timestamp=T0 + 1, order_ref=2, side=b"B", shares=200, stock=b"ZVZZT",
                      price=100_0000, attribution=b"GSCO"),
        itch50.encode(b"E", stock_locate=7, timestamp=T0 + 2, order_ref=1, executed_shares=100, match_number=11),
        itch50.encode(b"C", stock_locate=7, timestamp=T0 + 3, order_ref=1, executed_shares=50, match_number=12,
                      printable=b"N", execution_price=101_0500),
        itch50.encode(b"X", stock_locate=7, timestamp=T0 + 4, order_ref=2, cancelled_shares=20),
        itch50.encode(b"U", stock_locate=7, timestamp=T0 + 5, original_ref=2, new_ref=3, shares=500, price=99_0000),
        itch50.encode(b"D", stock_locate=7, timestamp=T0 + 6, order_ref=1),
        itch50.encode(b"P", stock_locate=7, timestamp=T0 + 7, order_ref=0, side=b"B", shares=10, stock=b"ZVZZT",
                      price=100_5000, match_number=13),
        itch50.encode(b"Q", stock_locate=7, timestamp=T0 + 8, shares=7_000_000_000, stock=b"ZVZZT",
                      cross_price=100_2500, match_number=14, cross_type=b"C"),
        itch50.encode(b"Q", stock_locate=7, timestamp=T0 + 9, shares=0, stock=b"ZVZZT", cross_price=0,
                      match_number=15, cross_type=b"O"),
    ])
    ev = out.events
    assert [chr(a) for a in ev["action"]] == list("AAEECRDTXX")
    assert ev["price"].tolist() == [101e9, 100e9, 101e9, 101.05e9, 100e9, 99e9, 101e9, 100.5e9, 100.25e9, 0]
    assert [chr(s) for s in ev["side"]] == list("ABAABBABNN")
    assert ev["size"].tolist() == [300, 200, 100, 50, 20, 500, 150, 10, 2**32 - 1, 0]
    assert ev["prev_order_id"][5] == 2 and ev["order_id"][5] == 3
    assert ev["flags"][1] & Flag.ATTRIBUTED and ev["flags"][3] & Flag.NON_PRINTABLE
    assert ev["ts_event"].tolist() == [MIDNIGHT + T0 + i for i in range(10)]
    assert ev["sequence"].tolist() == list(range(2, 12))
    assert np.all(ev["instrument_id"] == 7)
    tr = out.trades
    assert tr["match_id"].tolist() == [11, 12, 13, 14]
    assert tr["printable"].tolist() == [1, 0, 1, 1]
    assert tr["size"].tolist() == [100, 50, 10, 7_000_000_000]  # the cross keeps its 8-byte size
    assert tr["cross_type"].tolist() == [b"", b"", b"", b"C"]
    assert [chr(a) for a in tr["action"]] == list("EETX")
    (d,) = out.definitions
    assert d["symbol"] == b"ZVZZT" and d["round_lot"] == 100 and d["ts_event"] == MIDNIGHT + 1000
    assert n.symbols == {7: "ZVZZT"}
    assert len(n.orders) == 1 and n.orders.lookup(3) == (99_000_000_000, 500, Side.BID, 7)
    assert n.anomaly_counts() == {}


def test_status_messages():
    out, _ = normalize([
        DIRECTORY,
        itch50.encode(b"H", stock_locate=7, timestamp=T0, stock=b"ZVZZT", trading_state=b"H", reason=b"LUDP"),
        itch50.encode(b"V", timestamp=T0 + 1, level_1=4_000_00000000, level_2=3_800_00000000, level_3=3_500_00000000),
        itch50.encode(b"W", timestamp=T0 + 2, breached_level=b"1"),
        itch50.encode(b"J", stock_locate=7, timestamp=T0 + 3, stock=b"ZVZZT", ref_price=10_0000, upper_price=10_5000,
                      lower_price=9_5000, extension=2),
        itch50.encode(b"h", stock_locate=7, timestamp=T0 + 4, stock=b"ZVZZT", market_code=b"Q", halt_action=b"H"),
        itch50.encode(b"Y", stock_locate=7, timestamp=T0 + 5, stock=b"ZVZZT", reg_sho_action=b"1"),
        itch50.encode(b"K", stock_locate=7, timestamp=T0 + 6, stock=b"ZVZZT", release_time=36_000,
                      release_qualifier=b"A", ipo_price=21_0000),
    ])
    st = out.status
    assert st["kind"].tolist() == [StatusKind.TRADING_ACTION, StatusKind.MWCB_LEVELS, StatusKind.MWCB_BREACH,
                                   StatusKind.LULD_COLLAR, StatusKind.OPERATIONAL_HALT, StatusKind.REG_SHO,
                                   StatusKind.IPO_QUOTING]
    assert st["state"].tolist() == [TradingState.HALTED, 0, 0, 0, TradingState.HALTED, 0, 0]
    assert st["reason"][0] == b"LUDP" and st["reason"][4] == b"Q" and st["code"][4] == b"H"
    assert (st["price_1"][1], st["price_2"][1], st["price_3"][1]) == (4000e9, 3800e9, 3500e9)
    assert st["code"][2] == b"1" and st["instrument_id"][1] == 0
    assert (st["price_1"][3], st["price_2"][3], st["price_3"][3], st["detail"][3]) == (10e9, 10.5e9, 9.5e9, 2)
    assert st["price_1"][0] == UNDEF_PRICE
    assert (st["code"][6], st["price_1"][6], st["detail"][6]) == (b"A", 21e9, 36_000)


def test_other_records():
    out, _ = normalize([
        DIRECTORY,
        itch50.encode(b"S", timestamp=T0, event_code=b"Q"),
        itch50.encode(b"I", stock_locate=7, timestamp=T0, paired_shares=5, imbalance_shares=6,
                      imbalance_direction=b"B", stock=b"ZVZZT", far_price=1, near_price=2, current_ref_price=3,
                      cross_type=b"C", price_variation=b"A"),
        itch50.encode(b"N", stock_locate=7, timestamp=T0, stock=b"ZVZZT", interest_flag=b"A"),
        itch50.encode(b"B", stock_locate=7, timestamp=T0, match_number=99),
        itch50.encode(b"O", stock_locate=7, timestamp=T0, stock=b"ZVZZT", open_eligibility=b"Y",
                      min_allowable_price=1, max_allowable_price=2, near_execution_price=3, near_execution_time=4,
                      lower_price_collar=5, upper_price_collar=6),
    ])
    assert out.system_events["code"].tolist() == [b"Q"]
    (i,) = out.imbalance
    assert (i["paired_size"], i["imbalance_size"], i["direction"], i["near_price"]) == (5, 6, b"B", 200_000)
    assert out.retail_interest["interest"].tolist() == [b"A"]
    assert out.broken_trades["match_id"].tolist() == [99]
    (p,) = out.price_discovery
    assert (p["min_price"], p["upper_collar"], p["near_time"], p["open_eligible"]) == (100_000, 600_000, 4, b"Y")


def test_bad_messages_are_counted_and_the_rest_kept():
    add = itch50.encode(b"A", stock_locate=7, timestamp=T0, order_ref=1, side=b"B", shares=1, stock=b"ZVZZT", price=1)
    out, n = normalize(
        [DIRECTORY, b"z" + bytes(20), add[:20], add + b"\x00\x00", add, itch50.encode(b"D", stock_locate=9, order_ref=5,
                                                                                       timestamp=NANOS_PER_DAY + 1)],
        lengths=None,
    )
    assert n.anomaly_counts() == {
        "unknown_type_z": 1, "truncated_message": 1, "longer_than_spec": 1, "duplicate_order_ref": 1,
        "unknown_order_ref": 1, "unknown_instrument": 1, "bad_timestamp": 1,
    }
    assert len(out.events) == 3  # the longer add, the duplicate add, the delete
    assert out.events["flags"][-1] & Flag.BAD_TS_EVENT
    assert n.by_type == {"R": 1, "A": 2, "D": 1}


def test_state_carries_across_batches():
    n = ItchNormalizer(VenueClock(dt.date(2024, 3, 15)))
    add = itch50.encode(b"A", stock_locate=7, timestamp=T0, order_ref=1, side=b"B", shares=100, stock=b"ZVZZT",
                        price=50_0000)
    n.normalize(*frames_for([DIRECTORY, add]))
    out = n.normalize(*frames_for([itch50.encode(b"E", stock_locate=7, timestamp=T0, order_ref=1,
                                                 executed_shares=100, match_number=1)]))
    assert out.trades["price"].tolist() == [50e9] and n.anomaly_counts() == {}
