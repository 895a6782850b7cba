"""Raw RESP: the commands a batch becomes, byte for byte; replies scanned whole, byte by byte and with
errors; a connection to the real Redis (db from the URL, error replies, a refused connect)."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import redis

from orderbook.records import BBO
from parsers.schema import TRADE, UNDEF_PRICE, Side
from publish.batch import MarketBatch
from publish.redis_pub import RedisPublisher
from publish.resp import BAD_REPLY, DONE, RespConnection, RespError, pack, scan_replies

T0 = 1_700_000_000_000_000_000


def test_a_batch_becomes_exactly_these_commands():
    trade = TRADE.empty(1)
    trade["instrument_id"], trade["sequence"], trade["price"], trade["size"] = 1, 5, 187_250_000_000, 100
    trade["match_id"], trade["side"], trade["printable"] = 9, Side.BID, 1
    trade["ts_event"], trade["ts_recv"] = T0, T0 + 1
    bbo = BBO.empty(2)
    bbo["instrument_id"], bbo["sequence"] = [1, 7], [6, 8]  # instrument 7 has no symbol
    bbo["bid_px"], bbo["bid_sz"], bbo["ask_px"], bbo["ask_sz"] = 187_250_000_000, 100, UNDEF_PRICE, 0
    bbo["ts_event"], bbo["ts_recv"] = T0, T0 + 1
    pub = RedisPublisher("redis://127.0.0.1:1/0", stream_maxlen=1000)
    data, commands, published, stream_entries = pub.encode(
        MarketBatch("nasdaq", {1: "AAPL"}, bbo=bbo, trades=trade))
    trade_msg = ('{"type":"trade","symbol":"AAPL","seq":5,"px":"187.25","sz":100,"match_id":9,"side":"B",'
                 f'"printable":true,"ts_event":{T0},"ts_recv":{T0 + 1}}}')
    bbo_msg = ('{"type":"bbo","symbol":"AAPL","seq":6,"bid_px":"187.25","bid_sz":100,"ask_px":null,"ask_sz":0,'
               f'"ts_event":{T0},"ts_recv":{T0 + 1}}}')
    assert data == b"".join([
        pack("XADD", "md:nasdaq:trades", "MAXLEN", "~", 1000, "*", "data", trade_msg),
        pack("PUBLISH", "md:nasdaq:AAPL:trades", trade_msg),
        pack("PUBLISH", "md:nasdaq:AAPL:bbo", bbo_msg),
        pack("HSET", "md:nasdaq:AAPL:bbo:last", "bid_px", "187.25", "bid_sz", 100, "ask_px", "", "ask_sz", 0,
             "ts_event", T0, "ts_recv", T0 + 1, "seq", 6),
    ])
    assert (commands, published, stream_entries) == (4, 2, 1)
    assert pub.counters["no_symbol_rows"] == 1


REPLIES = b"".join([b":1\r\n", b"+OK\r\n", b"$15\r\n1700000000000-0\r\n", b"-ERR wrong type\r\n", b"$-1\r\n",
                    b"*2\r\n:1\r\n$3\r\nabc\r\n", b":42\r\n"])


def scan(data: bytes, want: int = 100):
    buf = np.frombuffer(data, dtype=np.uint8)
    return scan_replies(buf, 0, len(buf), want)


def test_replies_are_counted_whole_and_the_first_error_found():
    code, n, used, errors, first = scan(REPLIES)
    assert (code, n, used, errors) == (DONE, 7, len(REPLIES), 1)
    assert REPLIES[first:].startswith(b"-ERR wrong type")
    assert scan(REPLIES, want=2)[1:3] == (2, 9)  # no more than asked for


def test_replies_arriving_byte_by_byte_are_counted_once_complete():
    ends = []
    for k in range(1, len(REPLIES) + 1):
        code, n, used, _, _ = scan(REPLIES[:k])
        assert code == DONE and REPLIES[:used].count(b"\r\n") >= n
        ends.append(n)
    assert ends == sorted(ends) and ends[-1] == 7
    assert ends[len(b":1\r") - 1] == 0 and ends[len(b":1\r\n") - 1] == 1
    assert scan(b"$15\r\n1700000000000-")[1] == 0  # a bulk string without its end is not a reply yet


def test_garbage_is_not_a_reply():
    assert scan(b":1\r\n?what\r\n")[:2] == (BAD_REPLY, 1)


def test_connection_selects_the_db_of_the_url_and_reports_error_replies(redis_url, redis_client, unique_name):
    conn = RespConnection(redis_url)
    conn.connect()
    try:
        conn.execute(pack("SET", unique_name, "v1") + pack("RPUSH", f"{unique_name}:l", "a", "b"), 2)
        assert redis_client.get(unique_name) == b"v1" and redis_client.lrange(f"{unique_name}:l", 0, -1) == [b"a", b"b"]
        with pytest.raises(RespError, match="WRONGTYPE") as err:
            conn.execute(pack("INCR", f"{unique_name}:l") + pack("INCR", unique_name)
                         + pack("INCR", "x:y:z" + unique_name), 3)
        assert err.value.count == 2 and isinstance(err.value, redis.ResponseError)
        conn.execute(pack("SET", unique_name, "v2"), 1)  # every reply was read: the connection goes on
        assert redis_client.get(unique_name) == b"v2"
    finally:
        conn.close()
        redis_client.delete(unique_name, f"{unique_name}:l", "x:y:z" + unique_name)


def test_a_refused_connection_is_a_one_line_redis_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once it is closed
    conn = RespConnection(f"redis://127.0.0.1:{port}/0", connect_timeout=1.0)
    with pytest.raises(redis.ConnectionError, match=f"127.0.0.1:{port}") as err:
        conn.connect()
    assert "\n" not in str(err.value)
    with pytest.raises(redis.ConnectionError, match="not connected"):
        conn.execute(pack("PING"), 1)
