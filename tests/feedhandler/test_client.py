"""The client SDK: typed objects, snapshot first, over the real WebSocket server and over a real Redis
(the test writes the hash and publishes the channel messages itself, in the publisher's shapes)."""
from __future__ import annotations

import asyncio
import contextlib
import json
from decimal import Decimal

import pytest

from feedhandler.client import Depth, Disconnected, Gap, Level, Quote, ServerError, Status, Trade, decode, subscribe
from orderbook.records import BBO, L2, BookFlag
from parsers.schema import PRICE_SCALE, TRADE, UNDEF_PRICE
from publish.batch import MarketBatch

SYMBOLS = {1: "AAPL", 2: "MSFT"}


def quote_batch(iid: int, bid: float | None, ask: float, bid_sz: int = 100, ask_sz: int = 200) -> MarketBatch:
    rows = BBO.empty(1)
    rows["instrument_id"] = iid
    rows["bid_px"] = UNDEF_PRICE if bid is None else round(bid * PRICE_SCALE)
    rows["ask_px"] = round(ask * PRICE_SCALE)
    rows["bid_sz"], rows["ask_sz"] = bid_sz, ask_sz
    rows["ts_event"], rows["ts_recv"] = 1_700_000_000_000_000_000, 1_700_000_000_000_000_500
    return MarketBatch("nasdaq", SYMBOLS, bbo=rows)


def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def take(stream, n: int) -> list:
    return [await anext(stream) for _ in range(n)]


# -- decoding ------------------------------------------------------------------------------------------


def test_decode_every_message_type():
    assert decode({"type": "bbo", "symbol": "AAPL", "seq": 7, "bid_px": "187.25", "bid_sz": 100, "ask_px": None,
                   "ask_sz": 0, "ts_event": 5, "ts_recv": 6, "snapshot": True}) == Quote(
        "AAPL", 7, Decimal("187.25"), 100, None, 0, 5, 6, snapshot=True)
    depth = decode({"type": "l2", "symbol": "AAPL", "seq": 3, "bids": [["187.25", 100, 2]], "asks": [["187.3", 5, 1]],
                    "ts_event": 5, "ts_recv": 6})
    assert depth == Depth("AAPL", 3, (Level(Decimal("187.25"), 100, 2),), (Level(Decimal("187.3"), 5, 1),), 5, 6)
    assert depth.bids[0].price == Decimal("187.25") and not depth.snapshot
    assert decode({"type": "trade", "symbol": "AAPL", "seq": 1, "px": "187.26", "sz": 300, "match_id": 9,
                   "side": "A", "printable": True, "ts_event": 5, "ts_recv": 6}) == Trade(
        "AAPL", 1, Decimal("187.26"), 300, "A", 9, True, 5, 6)
    assert decode({"type": "status", "symbol": "AAPL", "kind": "trading_action", "state": "halted", "code": "H",
                   "reason": "LUDP", "ts_event": 5, "seq": 2}) == Status("AAPL", 2, "trading_action", "halted", "H",
                                                                         "LUDP", 5)
    assert decode({"type": "gap", "channel": "bbo", "symbol": "AAPL", "dropped": 4}) == Gap("bbo", "AAPL", 4)
    assert decode({"type": "pong"}) is None
    with pytest.raises(ServerError, match="invalid token"):
        decode({"type": "error", "message": "invalid token"})
    q = decode({"type": "bbo", "symbol": "X", "seq": 1, "bid_px": "10.01", "bid_sz": 1, "ask_px": "10.04",
                "ask_sz": 1, "ts_event": 0, "ts_recv": 0})
    assert (q.mid, q.spread) == (Decimal("10.025"), Decimal("0.03"))


def test_subscribe_rejects_bad_arguments():
    async def first(**kw):
        return await anext(subscribe(**kw))

    with pytest.raises(ValueError, match="channels"):
        run(first(symbols=["AAPL"], channels=["quotes"]))
    with pytest.raises(ValueError, match="url"):
        run(first(symbols=["AAPL"], url="http://127.0.0.1:1"))


# -- over WebSocket -------------------------------------------------------------------------------------


def test_ws_quotes_snapshot_first_then_updates(ws_server):
    srv = ws_server()
    srv.write(quote_batch(1, 187.25, 187.27))

    async def go():
        async with contextlib.aclosing(subscribe(["AAPL"], channels=["bbo"], url=f"ws://127.0.0.1:{srv.port}")) as s:
            (snap,) = await take(s, 1)
            assert snap == Quote("AAPL", 1, Decimal("187.25"), 100, Decimal("187.27"), 200,
                                 1_700_000_000_000_000_000, 1_700_000_000_000_000_500, snapshot=True)
            srv.write(quote_batch(2, 410.0, 410.1))  # not subscribed
            srv.write(quote_batch(1, None, 187.28, ask_sz=50))
            srv.write(quote_batch(1, 187.26, 187.28))
            updates = await take(s, 2)
            assert [(u.seq, u.bid_px, u.ask_px, u.ask_sz, u.snapshot) for u in updates] == [
                (2, None, Decimal("187.28"), 50, False), (3, Decimal("187.26"), Decimal("187.28"), 200, False)]
            assert all(isinstance(u, Quote) for u in updates)

    run(go())


def test_ws_depth_and_trades_and_token(ws_server):
    srv = ws_server(token="s3cret", depth=5)
    l2 = L2.empty(2)
    l2["instrument_id"], l2["sequence"], l2["flags"] = 2, 9, int(BookFlag.SNAPSHOT)
    l2["side"] = [ord("B"), ord("A")]
    l2["price"] = [409_990_000_000, 410_010_000_000]
    l2["size"], l2["count"] = [300, 100], [3, 1]
    srv.write(MarketBatch("nasdaq", SYMBOLS, l2=l2))

    async def go():
        url = f"ws://127.0.0.1:{srv.port}"
        async with contextlib.aclosing(subscribe(["MSFT"], channels=["l2", "trades"], url=url, token="s3cret")) as s:
            (depth,) = await take(s, 1)
            assert depth == Depth("MSFT", 1, (Level(Decimal("409.99"), 300, 3),), (Level(Decimal("410.01"), 100, 1),),
                                  0, 0, snapshot=True)
            trades = TRADE.empty(1)
            trades["instrument_id"], trades["price"], trades["size"], trades["match_id"] = 2, 410_000_000_000, 25, 4
            trades["side"], trades["printable"] = ord("A"), 1
            srv.write(MarketBatch("nasdaq", SYMBOLS, trades=trades))
            (trade,) = await take(s, 1)
            assert trade == Trade("MSFT", 1, Decimal("410"), 25, "A", 4, True, 0, 0)
        with pytest.raises(ServerError, match="invalid token"):
            await anext(subscribe(["MSFT"], url=url, token="guess"))

    run(go())


def test_ws_reconnect_yields_a_gap_then_a_fresh_snapshot(ws_server):
    srv = ws_server()
    srv.write(quote_batch(1, 10.0, 10.5))

    async def go():
        url = f"ws://127.0.0.1:{srv.port}"
        async with contextlib.aclosing(subscribe(["AAPL"], url=url, reconnect=True)) as s:
            (snap,) = await take(s, 1)
            assert snap.snapshot and snap.bid_px == Decimal("10")
            # restart the server on the same port: connections close with 1001 (going away)
            await asyncio.to_thread(srv.close)
            srv._requested_port = srv.port
            await asyncio.to_thread(srv.open)
            srv.write(quote_batch(1, 11.0, 11.5))
            gap, fresh = await take(s, 2)
            assert gap == Gap(None, None, None)
            assert fresh == Quote("AAPL", 1, Decimal("11"), 100, Decimal("11.5"), 200, 1_700_000_000_000_000_000,
                                  1_700_000_000_000_000_500, snapshot=True)

    run(go())


def test_ws_without_reconnect_raises_when_the_server_goes_away(ws_server):
    srv = ws_server()
    srv.write(quote_batch(1, 10.0, 10.5))

    async def go():
        s = subscribe(["AAPL"], url=f"ws://127.0.0.1:{srv.port}")
        await anext(s)
        await asyncio.to_thread(srv.close)
        with pytest.raises(Disconnected, match="1001"):
            await anext(s)
        with pytest.raises(Disconnected):  # nobody listening
            await anext(subscribe(["AAPL"], url=f"ws://127.0.0.1:{srv.port}"))

    run(go())


# -- over Redis -----------------------------------------------------------------------------------------


def _bbo_json(symbol: str, seq: int, bid: str, ask: str) -> str:
    return json.dumps({"type": "bbo", "symbol": symbol, "seq": seq, "bid_px": bid, "bid_sz": 100, "ask_px": ask,
                       "ask_sz": 200, "ts_event": 1000 + seq, "ts_recv": 2000 + seq}, separators=(",", ":"))


async def _until_subscribed(redis_client, channel: str, n: int = 1, pattern: bool = False) -> None:
    for _ in range(500):
        if pattern:
            count = redis_client.execute_command("PUBSUB", "NUMPAT")
        else:
            count = dict(redis_client.pubsub_numsub(channel)).get(channel.encode(), 0)
        if count >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nobody subscribed to {channel}")


def test_redis_quotes_snapshot_from_the_hash_then_channel_updates(redis_url, redis_client, unique_name):
    venue = unique_name
    redis_client.hset(f"md:{venue}:AAPL:bbo:last", mapping={"bid_px": "187.25", "bid_sz": 100, "ask_px": "187.27",
                                                            "ask_sz": 200, "ts_event": 1005, "ts_recv": 2005,
                                                            "seq": 5})
    channel = f"md:{venue}:AAPL:bbo"

    async def go():
        async with contextlib.aclosing(subscribe(["AAPL"], channels=["bbo"], url=redis_url, venue=venue)) as s:
            (snap,) = await take(s, 1)
            assert snap == Quote("AAPL", 5, Decimal("187.25"), 100, Decimal("187.27"), 200, 1005, 2005, snapshot=True)
            await _until_subscribed(redis_client, channel)
            redis_client.publish(channel, _bbo_json("AAPL", 4, "187.2", "187.3"))  # older than the snapshot
            redis_client.publish(channel, _bbo_json("AAPL", 5, "187.25", "187.27"))  # in the snapshot
            redis_client.publish(channel, _bbo_json("AAPL", 6, "187.26", "187.27"))
            redis_client.publish(channel, json.dumps({"type": "bbo", "symbol": "AAPL", "seq": 7, "bid_px": None,
                                                      "bid_sz": 0, "ask_px": "187.27", "ask_sz": 200,
                                                      "ts_event": 1007, "ts_recv": 2007}))
            updates = await take(s, 2)
            assert updates == [Quote("AAPL", 6, Decimal("187.26"), 100, Decimal("187.27"), 200, 1006, 2006),
                               Quote("AAPL", 7, None, 0, Decimal("187.27"), 200, 1007, 2007)]

    try:
        run(go())
    finally:
        redis_client.delete(f"md:{venue}:AAPL:bbo:last")


def test_redis_wildcard_depth_trades_and_status(redis_url, redis_client, unique_name):
    venue = unique_name
    l2_last = {"type": "l2", "symbol": "MSFT", "seq": 10, "bids": [["409.99", 300, 3]], "asks": [["410.01", 100, 1]],
               "ts_event": 1, "ts_recv": 2}
    redis_client.set(f"md:{venue}:MSFT:l2:last", json.dumps(l2_last))
    redis_client.hset(f"md:{venue}:AAPL:bbo:last", mapping={"bid_px": "", "bid_sz": 0, "ask_px": "187.27",
                                                            "ask_sz": 200, "ts_event": 1, "ts_recv": 2, "seq": 3})

    async def go():
        channels = ["bbo", "l2", "trades", "status"]
        async with contextlib.aclosing(subscribe("*", channels=channels, url=redis_url, venue=venue)) as s:
            first = await take(s, 2)
            assert first == [Quote("AAPL", 3, None, 0, Decimal("187.27"), 200, 1, 2, snapshot=True),
                             Depth("MSFT", 10, (Level(Decimal("409.99"), 300, 3),),
                                   (Level(Decimal("410.01"), 100, 1),), 1, 2, snapshot=True)]
            await _until_subscribed(redis_client, f"md:{venue}:status")
            await _until_subscribed(redis_client, "", n=3, pattern=True)
            redis_client.publish(f"md:{venue}:TSLA:trades", json.dumps(
                {"type": "trade", "symbol": "TSLA", "seq": 11, "px": "250.5", "sz": 10, "match_id": 1, "side": "B",
                 "printable": True, "ts_event": 3, "ts_recv": 4}))
            redis_client.publish(f"md:{venue}:status", json.dumps(
                {"type": "status", "symbol": "TSLA", "kind": "trading_action", "state": "halted", "code": "H",
                 "reason": "LUDP", "ts_event": 5}))
            redis_client.publish(f"md:{venue}:MSFT:l2", json.dumps({**l2_last, "seq": 12, "bids": []}))
            trade, status, depth = await take(s, 3)
            assert trade == Trade("TSLA", 11, Decimal("250.5"), 10, "B", 1, True, 3, 4)
            assert status == Status("TSLA", 0, "trading_action", "halted", "H", "LUDP", 5)
            assert depth.seq == 12 and depth.bids == () and not depth.snapshot

    try:
        run(go())
    finally:
        redis_client.delete(f"md:{venue}:MSFT:l2:last", f"md:{venue}:AAPL:bbo:last")
