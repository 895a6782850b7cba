"""Real Nasdaq captures (../shared/data/real) decoded to their exact field values.

Expected values were read off the packet bytes against the ITCH 5.0 specification.
"""
import datetime as dt

import numpy as np
import pytest

from captures.reader import open_capture
from parsers.clock import VenueClock
from parsers.itch50_normalize import ItchNormalizer
from parsers.schema import UNDEF_PRICE, Action, Flag, Side, StatusKind, TradingState

MIDNIGHT_2023_08_22_EDT = 1_692_676_800_000_000_000  # 2023-08-22 00:00 America/New_York in epoch ns


def decode(path):
    capture = open_capture(path)
    buf, frames = capture.frames()
    normalizer = ItchNormalizer(VenueClock(dt.date(2023, 8, 22)))
    return capture, normalizer.normalize(buf, frames), normalizer


def test_add_order(real_data):
    capture, out, n = decode(real_data / "nasdaq-itch50" / "AddOrderNoMpidAttributionMessage.pcap")
    assert capture.stats.sessions == ["000010059B"]
    (e,) = out.events
    assert e["action"] == Action.ADD and e["side"] == Side.BID
    assert e["order_id"] == 23_508_286
    assert e["size"] == 1600
    assert e["price"] == 87_390_000_000  # $87.39
    assert e["instrument_id"] == 5528
    assert e["ts_event"] == MIDNIGHT_2023_08_22_EDT + 34_199_999_894_278
    assert e["ts_recv"] == 1_692_711_000_000_059_094
    assert e["sequence"] == 14_757_721
    assert e["flags"] & Flag.LAST
    assert n.by_type == {"A": 1}


def test_order_delete_of_an_unseen_order_is_an_anomaly(real_data):
    _, out, n = decode(real_data / "nasdaq-itch50" / "OrderDeleteMessage.pcap")
    (e,) = out.events
    assert e["action"] == Action.DELETE and e["order_id"] == 0x1668BD6 and e["instrument_id"] == 3517
    assert e["ts_event"] == MIDNIGHT_2023_08_22_EDT + 34_199_999_896_280
    assert e["flags"] & Flag.UNKNOWN_REF and e["price"] == UNDEF_PRICE
    assert n.anomaly_counts()["unknown_order_ref"] == 1


def test_order_executed(real_data):
    _, out, _ = decode(real_data / "nasdaq-itch50" / "OrderExecutedMessage.pcap")
    (e,) = out.events
    assert e["action"] == Action.EXECUTE
    assert e["order_id"] == 0x166929A and e["size"] == 25 and e["match_id"] == 0x3E63B
    assert e["instrument_id"] == 2345 and e["tracking"] == 2
    assert e["ts_event"] == MIDNIGHT_2023_08_22_EDT + 34_199_999_934_561
    (t,) = out.trades
    assert t["match_id"] == 0x3E63B and t["size"] == 25 and t["printable"] == 1


def test_order_replace(real_data):
    _, out, _ = decode(real_data / "nasdaq-itch50" / "OrderReplaceMessage.pcap")
    (e,) = out.events
    assert e["action"] == Action.REPLACE
    assert e["prev_order_id"] == 0xE6897F and e["order_id"] == 0x145F2C7
    assert e["size"] == 100 and e["price"] == 0x1036C8 * 100_000  # $106.2600
    assert e["instrument_id"] == 7603


def test_noii(real_data):
    _, out, _ = decode(real_data / "nasdaq-itch50" / "NetOrderImbalanceIndicatorMessage.pcap")
    (i,) = out.imbalance
    assert i["instrument_id"] == 6462
    assert i["paired_size"] == 1 and i["imbalance_size"] == 0
    assert i["direction"] == b"N"
    assert i["far_price"] == i["near_price"] == i["ref_price"] == 0x71610 * 100_000  # $46.4400
    assert i["cross_type"] == b"O" and i["price_variation"] == b"L"


def test_stock_trading_action(real_data):
    _, out, _ = decode(real_data / "nasdaq-itch50" / "StockTradingActionMessage.pcap")
    (s,) = out.status
    assert s["kind"] == StatusKind.TRADING_ACTION and s["state"] == TradingState.TRADING
    assert s["code"] == b"T" and s["instrument_id"] == 464
    assert s["ts_event"] == MIDNIGHT_2023_08_22_EDT + 34_763_322_465_824


def test_market_participant_position_is_decoded_and_counted(real_data):
    capture, out, n = decode(real_data / "nasdaq-itch50" / "MarketParticipantPositionMessage.pcap")
    buf, frames = capture.frames()
    from parsers import itch50

    (row,) = itch50.decode_type(buf, frames["offset"], b"L")
    assert row["mpid"] == b"MAXM" and row["stock"] == b"FGMC    "
    assert (row["primary_market_maker"], row["market_maker_mode"], row["participant_state"]) == (b"Y", b"N", b"A")
    assert n.by_type == {"L": 1}


def test_multiple_packets_counts_and_gap(real_data):
    capture, out, n = decode(real_data / "nasdaq-itch50" / "Multiple.Packets.pcap")
    stats = capture.stats
    assert stats.packets == 2 and stats.messages == 39
    assert n.by_type == {"A": 36, "F": 2, "D": 1}
    assert stats.gaps == [{"session": "000010059B", "first_missing": 14_764_497, "count": 19_009_117 - 14_764_497}]
    assert out.events["sequence"].tolist() == [14_764_496] + list(range(19_009_117, 19_009_117 + 38))
    first_add = out.events[1]
    assert first_add["order_id"] == 0x792F9F and first_add["side"] == Side.BID
    assert first_add["size"] == 1 and first_add["price"] == 0xC4950 * 100_000 and first_add["instrument_id"] == 6514
    assert (out.events["flags"] & Flag.LAST).nonzero()[0].tolist() == [0, 38]
    attributed = out.events[(out.events["flags"] & Flag.ATTRIBUTED) != 0]
    assert len(attributed) == 2 and np.all(attributed["action"] == Action.ADD)


@pytest.mark.parametrize(
    "name, type_, locate, ts, fields",
    [
        ("AddOrderNoMpidAttributionMessage.pcap", Action.ADD, 524, 34_199_999_357_223,
         dict(order_id=0x17ABA5, side=Side.BID, size=300, price=0x3B40C * 100_000)),
        ("OrderDeleteMessage.pcap", Action.DELETE, 4135, 34_199_999_524_563, dict(order_id=0x2C493A)),
        ("OrderReplaceMessage.pcap", Action.REPLACE, 2908, 34_199_999_665_635,
         dict(prev_order_id=0x2782EE, order_id=0x3608FE, size=100, price=0x85FC0 * 100_000)),
    ],
)
def test_nasdaq_bx(real_data, name, type_, locate, ts, fields):
    capture, out, _ = decode(real_data / "nasdaq-bx-itch50" / name)
    assert capture.stats.sessions == ["000010059D"]
    (e,) = out.events
    assert e["action"] == type_ and e["instrument_id"] == locate
    assert e["ts_event"] == MIDNIGHT_2023_08_22_EDT + ts
    for k, v in fields.items():
        assert e[k] == v, k
