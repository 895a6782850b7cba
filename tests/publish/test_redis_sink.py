"""RedisSink against the real Redis: entries read back with their values; exact price text."""
from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from parsers.schema import UNDEF_PRICE
from publish.redis_sink import TRADE_STREAM_FIELD, RedisSink, price_to_str, prices_to_str

TRADES = np.dtype(
    [
        ("ts_event", "<i8"),
        ("ts_recv", "<i8"),
        ("price", "<i8"),
        ("size", "<u8"),
        ("order_id", "<u8"),
        ("match_id", "<u8"),
        ("sequence", "<u8"),
        ("instrument_id", "<u4"),
        ("venue", "<u2"),
        ("action", "u1"),
        ("side", "u1"),
    ]
)
SYMBOLS = {1: "AAPL", 2: "MSFT", 3: 'Q"X'}
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def make_trades(n: int) -> np.ndarray:
    t = np.zeros(n, dtype=TRADES)
    i = np.arange(n, dtype=np.int64)
    t["ts_event"] = 1_700_000_000_123_456_789 + i
    t["price"] = 187_250_000_000 + i * 10_000_000  # 187.25, 187.26, ...
    t["size"] = 100 + i
    t["match_id"] = np.uint64(2**63) + i.astype(np.uint64)  # above int64: JSON carries it as a string, exactly
    t["sequence"] = 1 + i
    t["instrument_id"] = 1 + i % 2
    return t


@pytest.fixture
def venue(redis_client: redis.Redis, unique_name: str):
    """A venue name of this test alone; its stream is deleted afterwards."""
    yield unique_name
    redis_client.delete(RedisSink.trades_key(unique_name))


def read_stream(client: redis.Redis, venue: str) -> list[dict]:
    entries = client.xrange(RedisSink.trades_key(venue))
    for _id, fields in entries:
        assert list(fields) == [TRADE_STREAM_FIELD.encode()]
    return [json.loads(fields[TRADE_STREAM_FIELD.encode()]) for _id, fields in entries]


# --- price text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "text"),
    [
        (0, "0"),
        (1, "0.000000001"),
        (-1, "-0.000000001"),
        (1_000_000_000, "1"),
        (1_500_000_000, "1.5"),
        (187_250_000_000, "187.25"),
        (-42_000_000_000, "-42"),
        (100_010_000_000, "100.01"),
        (2**63 - 1, "9223372036.854775807"),
        (-(2**63), "-9223372036.854775808"),
    ],
)
def test_price_to_str_literals(price: int, text: str):
    assert price_to_str(price) == text
    assert price_to_str(np.int64(price)) == text
    assert prices_to_str(np.array([price], dtype=np.int64)).tolist() == [text]


@given(st.lists(INT64, max_size=50))
def test_price_text_is_exact(prices: list[int]):
    texts = prices_to_str(np.array(prices, dtype=np.int64)).tolist()
    for price, text in zip(prices, texts, strict=True):
        assert text == price_to_str(price)
        assert Decimal(text) == Decimal(price).scaleb(-9)  # scaleb is exact
        assert "e" not in text.lower() and not (("." in text) and text.endswith("0"))


# --- the stream ----------------------------------------------------------------------------------


def test_trades_read_back_with_their_values(redis_url: str, redis_client: redis.Redis, venue: str):
    trades = make_trades(4)
    trades["price"][3] = UNDEF_PRICE
    trades["instrument_id"][2] = 3
    with RedisSink(redis_url) as sink:
        assert sink.write_trades(venue, SYMBOLS, trades) == 4

    got = read_stream(redis_client, venue)
    assert got[0] == {
        "symbol": "AAPL",
        "instrument_id": 1,
        "price": "187.25",
        "size": 100,
        "ts_event": "1700000000123456789",
        "match_id": "9223372036854775808",
    }
    assert got[1]["symbol"] == "MSFT"
    assert got[1]["price"] == "187.26"
    assert got[2]["symbol"] == 'Q"X'  # JSON-escaped on the way in
    assert got[3]["price"] is None
    assert [g["size"] for g in got] == [100, 101, 102, 103]


def test_payload_is_compact_json(redis_url: str, redis_client: redis.Redis, venue: str):
    with RedisSink(redis_url) as sink:
        sink.write_trades(venue, SYMBOLS, make_trades(1))
    (_id, fields), = redis_client.xrange(RedisSink.trades_key(venue))
    raw = fields[TRADE_STREAM_FIELD.encode()]
    assert raw == (
        b'{"symbol":"AAPL","instrument_id":1,"price":"187.25","size":100,'
        b'"ts_event":"1700000000123456789","match_id":"9223372036854775808"}'
    )


def test_chunks_keep_order(redis_url: str, redis_client: redis.Redis, venue: str):
    trades = make_trades(50)
    with RedisSink(redis_url, chunk=7) as sink:
        assert sink.write_trades(venue, SYMBOLS, trades) == 50
    got = read_stream(redis_client, venue)
    assert [int(g["match_id"]) for g in got] == trades["match_id"].tolist()


def test_unknown_instrument_gets_empty_symbol(redis_url: str, redis_client: redis.Redis, venue: str):
    trades = make_trades(1)
    trades["instrument_id"] = 77
    with RedisSink(redis_url) as sink:
        sink.write_trades(venue, SYMBOLS, trades)
    assert read_stream(redis_client, venue)[0]["symbol"] == ""
    assert read_stream(redis_client, venue)[0]["instrument_id"] == 77


def test_stream_is_capped_near_maxlen(redis_url: str, redis_client: redis.Redis, venue: str):
    node_entries = int(redis_client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    with RedisSink(redis_url, maxlen=100) as sink:
        sink.write_trades(venue, SYMBOLS, make_trades(3_000))
    length = redis_client.xlen(RedisSink.trades_key(venue))
    assert 100 <= length <= 100 + node_entries
    # The newest entries are the ones kept.
    last = read_stream(redis_client, venue)[-1]
    assert int(last["match_id"]) == 2**63 + 2_999


def test_empty_batch_adds_nothing(redis_url: str, redis_client: redis.Redis, venue: str):
    with RedisSink(redis_url) as sink:
        assert sink.write_trades(venue, SYMBOLS, make_trades(0)) == 0
    assert redis_client.exists(RedisSink.trades_key(venue)) == 0


def test_trades_without_required_fields_are_refused(redis_url: str, venue: str):
    with RedisSink(redis_url) as sink, pytest.raises(TypeError, match="instrument_id"):
        sink.write_trades(venue, SYMBOLS, np.zeros(1, dtype=[("ts_event", "<i8"), ("price", "<i8"), ("size", "<u8")]))
