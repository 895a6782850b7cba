"""The trades stream part against the real Redis (entries, order, cap, resuming); exact price text."""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from publish import encoding, redis_sink
from publish.redis_sink import (TRADE_STREAM_FIELD, price_to_str, prices_to_str, read_trades, trades_key,
                                 xadd_commands)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


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


def test_price_text_is_shared_with_encoding():
    # publish.postgres_sink (and older callers) import these from here.
    assert redis_sink.price_to_str is encoding.price_to_str
    assert redis_sink.prices_to_str is encoding.prices_to_str
    assert redis_sink.symbols_for is encoding.symbols_for


# --- the stream ----------------------------------------------------------------------------------


@pytest.fixture
def venue(redis_client: redis.Redis, unique_name: str):
    """A venue name of this test alone; its stream is deleted afterwards."""
    yield unique_name
    redis_client.delete(trades_key(unique_name))


def add(client: redis.Redis, venue: str, payloads: list, maxlen: int = 1_000) -> None:
    pipe = client.pipeline(transaction=False)
    for args in xadd_commands(trades_key(venue), payloads, maxlen):
        pipe.execute_command(*args)
    pipe.execute()


def test_xadd_command_shape():
    assert trades_key("nasdaq") == "md:nasdaq:trades"
    assert xadd_commands("md:v:trades", ['{"a":1}', b"\x81"], 500) == [
        ("XADD", "md:v:trades", "MAXLEN", "~", 500, "*", "data", '{"a":1}'),
        ("XADD", "md:v:trades", "MAXLEN", "~", 500, "*", "data", b"\x81"),
    ]
    with pytest.raises(ValueError):
        xadd_commands("k", [], 0)


def test_entries_read_back_in_order_with_one_field(redis_client: redis.Redis, venue: str):
    payloads = [f'{{"seq":{i}}}' for i in range(50)]
    add(redis_client, venue, payloads)
    entries = redis_client.xrange(trades_key(venue))
    assert all(list(fields) == [TRADE_STREAM_FIELD.encode()] for _, fields in entries)
    got = read_trades(redis_client, venue)
    assert [d.decode() for _, d in got] == payloads
    assert [i for i, _ in got] == [i for i, _ in entries]


def test_a_consumer_resumes_after_the_last_id_it_handled(redis_client: redis.Redis, venue: str):
    add(redis_client, venue, [b"a", b"b", b"c"])
    (id_a, _), (id_b, _), _ = read_trades(redis_client, venue)
    assert [d for _, d in read_trades(redis_client, venue, id_a)] == [b"b", b"c"]
    assert [d for _, d in read_trades(redis_client, venue, id_b.decode(), count=5)] == [b"c"]
    assert [d for _, d in read_trades(redis_client, venue, id_a, count=1)] == [b"b"]
    add(redis_client, venue, [b"d"])
    assert [d for _, d in read_trades(redis_client, venue, id_b)] == [b"c", b"d"]


def test_stream_is_capped_near_maxlen(redis_client: redis.Redis, venue: str):
    node_entries = int(redis_client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    add(redis_client, venue, [str(i) for i in range(3_000)], maxlen=100)
    length = redis_client.xlen(trades_key(venue))
    assert 100 <= length <= 100 + node_entries
    assert [int(d) for _, d in read_trades(redis_client, venue)] == list(range(3_000 - length, 3_000))


def test_no_entries_no_stream(redis_client: redis.Redis, venue: str):
    add(redis_client, venue, [])
    assert redis_client.exists(trades_key(venue)) == 0
    assert read_trades(redis_client, venue) == []
