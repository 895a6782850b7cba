"""The WebSocket sink: the protocol core (``publish.ws_protocol.Hub``) from messages in and out, without
sockets; then the real server (``publish.websocket_server``) on a free loopback port with real
``websockets`` clients."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from orderbook.records import BBO, L2, BookFlag
from parsers.schema import PRICE_SCALE, STATUS, TRADE, UNDEF_PRICE, StatusKind, TradingState
from publish.batch import MarketBatch
from publish.runner import SinkRunner
from publish.websocket_server import WebSocketServer
from publish.ws_protocol import CLOSE_POLICY_VIOLATION, CLOSE_TRY_AGAIN_LATER, Hub

SYMBOLS = {1: "AAPL", 2: "MSFT", 3: "TSLA"}
T0 = 1_700_000_000_000_000_000


def px(units: float) -> int:
    return round(units * PRICE_SCALE)


def bbo_rows(*quotes: tuple) -> "np.ndarray":
    """Rows from (instrument, bid, bid_sz, ask, ask_sz[, sequence]) tuples (prices in dollars, None: no price)."""
    rows = BBO.empty(len(quotes))
    for i, q in enumerate(quotes):
        iid, bid, bid_sz, ask, ask_sz = q[:5]
        rows[i]["instrument_id"] = iid
        rows[i]["bid_px"] = UNDEF_PRICE if bid is None else px(bid)
        rows[i]["ask_px"] = UNDEF_PRICE if ask is None else px(ask)
        rows[i]["bid_sz"], rows[i]["ask_sz"] = bid_sz, ask_sz
        rows[i]["sequence"] = q[5] if len(q) > 5 else 100 + i
        rows[i]["ts_event"] = T0 + i
        rows[i]["ts_recv"] = T0 + 1000 + i
    return rows


def l2_rows(*levels: tuple) -> "np.ndarray":
    """Rows from (instrument, sequence, side 'B'/'A'/'N', price, size, count[, snapshot]) tuples."""
    rows = L2.empty(len(levels))
    for i, lv in enumerate(levels):
        iid, seq, side, price, size, count = lv[:6]
        rows[i]["instrument_id"], rows[i]["sequence"] = iid, seq
        rows[i]["side"] = ord(side)
        rows[i]["price"] = UNDEF_PRICE if price is None else px(price)
        rows[i]["size"], rows[i]["count"] = size, count
        rows[i]["flags"] = int(BookFlag.SNAPSHOT) if len(lv) > 6 and lv[6] else 0
        rows[i]["ts_event"] = T0 + seq
        rows[i]["ts_recv"] = T0 + 1000 + seq
    return rows


def trade_rows(*trades: tuple) -> "np.ndarray":
    """Rows from (instrument, price, size, match_id) tuples."""
    rows = TRADE.empty(len(trades))
    for i, (iid, price, size, match) in enumerate(trades):
        rows[i]["instrument_id"], rows[i]["price"], rows[i]["size"], rows[i]["match_id"] = iid, px(price), size, match
        rows[i]["side"], rows[i]["printable"], rows[i]["sequence"] = ord("B"), 1, 500 + i
        rows[i]["ts_event"], rows[i]["ts_recv"] = T0 + i, T0 + 1000 + i
    return rows


def batch(**kw) -> MarketBatch:
    return MarketBatch("nasdaq", SYMBOLS, **kw)


def quote(iid: int, bid: float, ask: float = None, bid_sz: int = 100, ask_sz: int = 200) -> MarketBatch:
    return batch(bbo=bbo_rows((iid, bid, bid_sz, bid + 0.01 if ask is None else ask, ask_sz)))


def sub(channels, symbols) -> str:
    return json.dumps({"op": "subscribe", "channels": channels, "symbols": symbols})


def take(hub: Hub, cid: int, limit: int = 10_000) -> list[dict]:
    return [json.loads(t) for t in hub.data_to_send(cid, limit)]


# -- the protocol core, no sockets ------------------------------------------------------------------


def test_subscribe_answers_ack_then_snapshot_then_updates_with_per_symbol_seq():
    hub = Hub()
    hub.apply(quote(1, 187.25), now=0.0)
    hub.apply(quote(1, 187.26), now=0.0)
    cid = hub.connect(0.0)
    hub.receive(cid, sub(["bbo"], ["AAPL"]), 0.0)
    assert take(hub, cid) == [
        {"type": "subscribed", "channels": ["bbo"], "symbols": ["AAPL"]},
        {"type": "bbo", "symbol": "AAPL", "seq": 2, "bid_px": "187.26", "bid_sz": 100, "ask_px": "187.27",
         "ask_sz": 200, "ts_event": T0, "ts_recv": T0 + 1000, "snapshot": True},
    ]
    woken = hub.apply(batch(bbo=bbo_rows((1, 187.3, 5, None, 0), (2, 410.0, 1, 410.5, 2), (1, 187.31, 7, 187.5, 9))),
                      now=1.0)
    assert woken == {cid}
    updates = take(hub, cid)
    assert [(m["symbol"], m["seq"], m["bid_px"], m["ask_px"], m["snapshot"]) for m in updates] == [
        ("AAPL", 3, "187.3", None, False), ("AAPL", 4, "187.31", "187.5", False)]
    assert take(hub, cid) == []


def test_subscribe_before_any_data_gets_no_snapshot_and_first_update_is_seq_1():
    hub = Hub()
    cid = hub.connect(0.0)
    hub.receive(cid, sub(["bbo", "trades"], ["TSLA"]), 0.0)
    assert take(hub, cid) == [{"type": "subscribed", "channels": ["bbo", "trades"], "symbols": ["TSLA"]}]
    hub.apply(batch(bbo=bbo_rows((3, 250.0, 1, 250.5, 2)), trades=trade_rows((3, 250.25, 300, 77))), now=0.0)
    bbo, trade = take(hub, cid)
    assert (bbo["type"], bbo["seq"], bbo["snapshot"]) == ("bbo", 1, False)
    assert trade == {"type": "trade", "symbol": "TSLA", "seq": 1, "px": "250.25", "sz": 300, "match_id": 77,
                     "side": "B", "printable": True, "ts_event": T0, "ts_recv": T0 + 1000}


def test_wildcard_gets_every_symbol_snapshot_and_new_symbols():
    hub = Hub()
    hub.apply(batch(bbo=bbo_rows((1, 10.0, 1, 11.0, 1), (2, 20.0, 1, 21.0, 1))), now=0.0)
    cid = hub.connect(0.0)
    hub.receive(cid, sub(["bbo"], "*"), 0.0)
    ack, *snaps = take(hub, cid)
    assert ack == {"type": "subscribed", "channels": ["bbo"], "symbols": "*"}
    assert sorted((m["symbol"], m["bid_px"], m["snapshot"]) for m in snaps) == [("AAPL", "10", True),
                                                                                ("MSFT", "20", True)]
    hub.apply(quote(3, 250.0), now=0.0)
    assert [(m["symbol"], m["seq"]) for m in take(hub, cid)] == [("TSLA", 1)]


def test_unsubscribe_stops_updates_and_purges_what_is_queued():
    hub = Hub()
    cid = hub.connect(0.0)
    hub.receive(cid, sub(["bbo"], ["AAPL", "MSFT"]), 0.0)
    take(hub, cid)
    hub.apply(batch(bbo=bbo_rows((1, 10.0, 1, 11.0, 1), (2, 20.0, 1, 21.0, 1))), now=0.0)
    hub.receive(cid, json.dumps({"op": "unsubscribe", "channels": ["bbo"], "symbols": ["AAPL"]}), 0.0)
    assert [(m["type"], m.get("symbol")) for m in take(hub, cid)] == [("bbo", "MSFT"), ("unsubscribed", None)]
    hub.apply(batch(bbo=bbo_rows((1, 10.5, 1, 11.0, 1), (2, 20.5, 1, 21.0, 1))), now=0.0)
    assert [(m["symbol"], m["bid_px"]) for m in take(hub, cid)] == [("MSFT", "20.5")]
    hub.receive(cid, json.dumps({"op": "unsubscribe", "channels": ["bbo"], "symbols": "*"}), 0.0)
    take(hub, cid)
    assert hub.apply(quote(2, 21.0), now=0.0) == set()


def test_ping_and_errors():
    hub = Hub()
    cid = hub.connect(0.0)
    for text in ('{"op": "ping"}', "not json", "[1]", '{"op": "dance"}', sub(["quotes"], ["AAPL"]), sub(["bbo"], []),
                 sub(["bbo"], "AAPL")):
        hub.receive(cid, text, 0.0)
    out = take(hub, cid)
    assert out[0] == {"type": "pong"}
    assert [m["type"] for m in out[1:]] == ["error"] * 6
    assert out[1]["message"] == "not JSON"
    assert "unknown op 'dance'" in out[3]["message"]
    assert out[4]["message"].startswith("channels:")
    assert out[5]["message"].startswith("symbols:")
    assert hub.closing(cid) is None  # errors in requests do not close


def test_auth_by_op_by_url_and_refusals():
    hub = Hub(token="s3cret", auth_timeout_s=5.0)
    good = hub.connect(0.0)
    hub.receive(good, json.dumps({"op": "auth", "token": "s3cret"}), 0.0)
    hub.receive(good, '{"op": "ping"}', 0.0)
    assert take(hub, good) == [{"type": "authenticated"}, {"type": "pong"}]

    by_url = hub.connect(0.0, url_token="s3cret")
    hub.receive(by_url, '{"op": "ping"}', 0.0)
    assert take(hub, by_url) == [{"type": "pong"}]

    wrong = hub.connect(0.0)
    hub.receive(wrong, json.dumps({"op": "auth", "token": "guess"}), 0.0)
    assert take(hub, wrong) == [{"type": "error", "message": "invalid token"}]
    assert hub.closing(wrong) == (CLOSE_POLICY_VIOLATION, "invalid token", True)

    wrong_url = hub.connect(0.0, url_token="guess")
    assert hub.closing(wrong_url)[0] == CLOSE_POLICY_VIOLATION

    skipped = hub.connect(0.0)
    hub.receive(skipped, sub(["bbo"], ["AAPL"]), 0.0)
    assert take(hub, skipped)[0]["message"].startswith("auth required")
    assert hub.closing(skipped)[0] == CLOSE_POLICY_VIOLATION

    silent = hub.connect(10.0)
    assert hub.tick(14.9) == []
    assert hub.tick(15.1) == [silent]
    assert hub.closing(silent) == (CLOSE_POLICY_VIOLATION, "auth timeout", True)
    assert hub.counters["refused_auth"] == 4


def test_connection_and_subscription_limits():
    hub = Hub(max_clients=2, max_subscriptions=3)
    a, b, c = hub.connect(0.0), hub.connect(0.0), hub.connect(0.0)
    assert hub.closing(a) is None and hub.closing(b) is None
    assert hub.closing(c) == (CLOSE_TRY_AGAIN_LATER, "too many connections (max 2)", True)
    assert take(hub, c) == [{"type": "error", "message": "too many connections (max 2)"}]
    hub.disconnect(c)
    hub.disconnect(b)
    assert hub.closing(hub.connect(0.0)) is None  # room again

    hub.receive(a, sub(["bbo", "l2"], ["AAPL", "MSFT"]), 0.0)  # 4 pairs > 3
    assert take(hub, a) == [{"type": "error", "message": "subscription limit: at most 3 (channel, symbol) pairs"}]
    hub.receive(a, sub(["bbo", "l2", "trades"], "*"), 0.0)  # "*" counts one per channel
    assert take(hub, a)[0]["type"] == "subscribed"


def test_l2_rebuilds_complete_top_n_from_deltas_and_snapshots():
    hub = Hub(depth=2)
    cid = hub.connect(0.0)
    hub.receive(cid, sub(["l2"], ["AAPL"]), 0.0)
    take(hub, cid)
    # update 1: two bids, one ask; update 2: a better bid pushes 9.98 out of the top 2 (no row for it)
    hub.apply(batch(l2=l2_rows((1, 1, "B", 9.99, 100, 1), (1, 1, "B", 9.98, 200, 2), (1, 1, "A", 10.01, 300, 3),
                               (1, 2, "B", 10.00, 50, 1))), now=0.0)
    (m,) = take(hub, cid)  # one l2 message per symbol per batch: the state after its last update
    assert (m["seq"], m["bids"], m["asks"], m["ts_event"]) == (1, [["10", 50, 1], ["9.99", 100, 1]],
                                                               [["10.01", 300, 3]], T0 + 2)
    # update 3: the best bid leaves; 9.98 comes into view again (the engine sends it, with its size now)
    hub.apply(batch(l2=l2_rows((1, 3, "B", 10.00, 0, 0), (1, 3, "B", 9.98, 150, 1))), now=0.0)
    assert take(hub, cid)[0]["bids"] == [["9.99", 100, 1], ["9.98", 150, 1]]
    # a conflated snapshot replaces every level; then an empty book (one NONE row)
    hub.apply(batch(l2=l2_rows((1, 4, "B", 9.5, 1, 1, True), (1, 4, "A", 9.6, 2, 1, True))), now=0.0)
    m = take(hub, cid)[0]
    assert (m["seq"], m["bids"], m["asks"]) == (3, [["9.5", 1, 1]], [["9.6", 2, 1]])
    hub.apply(batch(l2=l2_rows((1, 5, "N", None, 0, 0, True))), now=0.0)
    assert take(hub, cid)[0]["bids"] == [] and hub.l2("AAPL")["asks"] == []
    # a late subscriber gets the current top N as a snapshot with the same seq
    late = hub.connect(0.0)
    hub.receive(late, sub(["l2"], ["AAPL"]), 0.0)
    assert take(hub, late)[1] == {"type": "l2", "symbol": "AAPL", "seq": 4, "bids": [], "asks": [],
                                  "ts_event": T0 + 5, "ts_recv": T0 + 1005, "snapshot": True}


def test_status_per_symbol_and_market_wide():
    hub = Hub()
    cid = hub.connect(0.0)
    hub.receive(cid, sub(["status"], ["MSFT"]), 0.0)
    take(hub, cid)
    rows = STATUS.empty(3)
    rows["instrument_id"] = [2, 1, 0]
    rows["kind"] = [StatusKind.TRADING_ACTION, StatusKind.TRADING_ACTION, StatusKind.MWCB_BREACH]
    rows["state"] = [TradingState.HALTED, TradingState.HALTED, TradingState.UNCHANGED]
    rows["code"] = [b"H", b"H", b"1"]
    rows["reason"] = [b"LUDP", b"T1", b""]
    hub.apply(batch(status=rows), now=0.0)
    assert take(hub, cid) == [
        {"type": "status", "symbol": "MSFT", "kind": "trading_action", "state": "halted", "code": "H",
         "reason": "LUDP", "ts_event": 0, "seq": 1},
        {"type": "status", "symbol": "", "kind": "mwcb_breach", "state": "unchanged", "code": "1", "reason": "",
         "ts_event": 0, "seq": 1},
    ]


def test_unknown_instruments_are_counted_not_sent():
    hub = Hub()
    cid = hub.connect(0.0)
    hub.receive(cid, sub(["bbo"], "*"), 0.0)
    take(hub, cid)
    hub.apply(batch(bbo=bbo_rows((99, 1.0, 1, 2.0, 1), (1, 1.0, 1, 2.0, 1))), now=0.0)
    assert [m["symbol"] for m in take(hub, cid)] == ["AAPL"]
    assert hub.counters["unknown_instrument"] == 1


def test_full_queue_conflates_state_and_tells_the_gap_before_the_latest():
    hub = Hub(max_queue=4)
    cid = hub.connect(0.0)
    hub.receive(cid, sub(["bbo"], ["AAPL", "MSFT"]), 0.0)
    take(hub, cid)
    for i in range(10):  # 20 updates, nothing read
        hub.apply(batch(bbo=bbo_rows((1, 100 + i, 1, 200, 1), (2, 300 + i, 1, 400, 1))), now=1.0 + i)
    assert hub.pending(cid) == (4, 2)  # the queue is full; AAPL and MSFT wait, conflated, beside it
    out = take(hub, cid)
    # the four that fit first, then per symbol: the gap, then the latest state
    assert [(m["type"], m["symbol"], m.get("seq"), m.get("dropped")) for m in out] == [
        ("bbo", "AAPL", 1, None), ("bbo", "MSFT", 1, None), ("bbo", "AAPL", 2, None), ("bbo", "MSFT", 2, None),
        ("gap", "AAPL", None, 7), ("bbo", "AAPL", 10, None), ("gap", "MSFT", None, 7), ("bbo", "MSFT", 10, None)]
    assert out[5]["bid_px"] == "109" and out[7]["bid_px"] == "309"
    assert out[4] == {"type": "gap", "channel": "bbo", "symbol": "AAPL", "dropped": 7}  # seq 3..9: 10 - 2 - 1
    assert hub.counters["gaps"] == 2 and hub.counters["dropped"] == 14
    hub.apply(quote(1, 111.0), now=20.0)  # back to normal: no gap
    assert [(m["type"], m["seq"]) for m in take(hub, cid)] == [("bbo", 11)]


def test_full_queue_drops_oldest_trades_and_the_gap_rides_on_the_next_trade():
    hub = Hub(max_queue=3)
    cid = hub.connect(0.0)
    hub.receive(cid, sub(["trades"], ["AAPL"]), 0.0)
    take(hub, cid)
    hub.apply(batch(trades=trade_rows(*[(1, 10.0 + i, 100, 1000 + i) for i in range(8)])), now=0.0)
    out = take(hub, cid)
    assert [(m["type"], m.get("match_id"), m.get("dropped")) for m in out] == [
        ("gap", None, 5), ("trade", 1005, None), ("trade", 1006, None), ("trade", 1007, None)]
    assert [m["seq"] for m in out[1:]] == [6, 7, 8]


def test_a_client_stuck_past_the_limit_is_closed_without_flush_and_a_reading_one_is_not():
    hub = Hub(max_queue=2, stuck_s=5.0)
    stuck, reader = hub.connect(0.0), hub.connect(0.0)
    for cid in (stuck, reader):
        hub.receive(cid, sub(["bbo"], ["AAPL"]), 0.0)
        take(hub, cid)
    for i in range(40):
        now = i * 0.25  # 10 s of updates
        hub.apply(quote(1, 100 + i), now=now)
        if i % 4 == 0:
            assert take(hub, reader, limit=1)  # slow, but it reads
        assert hub.tick(now) == ([stuck] if now == 5.75 else [])  # full since 0.5 s (the third update)
    assert hub.closing(stuck) == (CLOSE_TRY_AGAIN_LATER, "too slow: queue full for over 5 s", False)
    assert hub.closing(reader) is None
    assert hub.counters["disconnects_slow"] == 1


# -- the real server on a loopback port --------------------------------------------------------------





def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def recv_json(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def test_server_port_0_snapshot_then_updates_with_increasing_seq(ws_server):
    srv = ws_server()
    assert srv.port > 0
    srv.write(quote(1, 187.25))

    async def go():
        async with connect(f"ws://127.0.0.1:{srv.port}") as ws:
            await ws.send(sub(["bbo"], ["AAPL"]))
            assert (await recv_json(ws))["type"] == "subscribed"
            snap = await recv_json(ws)
            assert (snap["snapshot"], snap["seq"], snap["bid_px"]) == (True, 1, "187.25")
            for i in range(1, 6):
                srv.write(quote(1, 187.25 + i))
            updates = [await recv_json(ws) for _ in range(5)]
            assert [(u["seq"], u["bid_px"], u["snapshot"]) for u in updates] == [
                (2, "188.25", False), (3, "189.25", False), (4, "190.25", False), (5, "191.25", False),
                (6, "192.25", False)]
            assert srv.counters["clients"] == 1

    run(go())
    assert srv.counters["messages_sent"] == 7


def test_server_wildcard_unsubscribe_and_ping(ws_server):
    srv = ws_server()
    srv.write(batch(bbo=bbo_rows((1, 10.0, 1, 11.0, 1), (2, 20.0, 1, 21.0, 1))))

    async def go():
        async with connect(f"ws://127.0.0.1:{srv.port}") as ws:
            await ws.send(sub(["bbo"], "*"))
            assert (await recv_json(ws))["symbols"] == "*"
            snaps = [await recv_json(ws) for _ in range(2)]
            assert sorted(m["symbol"] for m in snaps) == ["AAPL", "MSFT"]
            srv.write(quote(3, 250.0))
            assert (await recv_json(ws))["symbol"] == "TSLA"
            await ws.send(json.dumps({"op": "unsubscribe", "channels": ["bbo"], "symbols": "*"}))
            assert (await recv_json(ws))["type"] == "unsubscribed"
            srv.write(quote(1, 12.0))
            await ws.send('{"op": "ping"}')
            assert await recv_json(ws) == {"type": "pong"}  # and no bbo in between

    run(go())


def test_server_auth(ws_server):
    srv = ws_server(token="s3cret")
    srv.write(quote(1, 10.0))

    async def go():
        async with connect(f"ws://127.0.0.1:{srv.port}/?token=wrong") as ws:
            assert await recv_json(ws) == {"type": "error", "message": "invalid token"}
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert ws.close_code == CLOSE_POLICY_VIOLATION
        async with connect(f"ws://127.0.0.1:{srv.port}") as ws:
            await ws.send(sub(["bbo"], ["AAPL"]))
            assert (await recv_json(ws))["message"].startswith("auth required")
            with pytest.raises(ConnectionClosed):
                await recv_json(ws)
            assert ws.close_code == CLOSE_POLICY_VIOLATION
        async with connect(f"ws://127.0.0.1:{srv.port}/?token=s3cret") as ws:
            await ws.send(sub(["bbo"], ["AAPL"]))
            assert (await recv_json(ws))["type"] == "subscribed"
            assert (await recv_json(ws))["snapshot"] is True
        async with connect(f"ws://127.0.0.1:{srv.port}") as ws:
            await ws.send(json.dumps({"op": "auth", "token": "s3cret"}))
            assert await recv_json(ws) == {"type": "authenticated"}

    run(go())
    assert srv.counters["refused_auth"] == 2


def test_server_refuses_connections_beyond_max_clients(ws_server):
    srv = ws_server(max_clients=2)

    async def go():
        async with connect(f"ws://127.0.0.1:{srv.port}"), connect(f"ws://127.0.0.1:{srv.port}"):
            async with connect(f"ws://127.0.0.1:{srv.port}") as third:
                assert await recv_json(third) == {"type": "error", "message": "too many connections (max 2)"}
                with pytest.raises(ConnectionClosed):
                    await recv_json(third)
                assert third.close_code == CLOSE_TRY_AGAIN_LATER
            assert srv.counters["clients"] == 2
        await wait_for(lambda: srv.counters["clients"] == 0)

    run(go())
    assert srv.counters["refused_limit"] == 1


def _small_buffer_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def _depth_batch(i: int) -> MarketBatch:
    """One update of 10 bid and 10 ask levels for each of the 3 symbols: ~3 l2 messages of ~400 bytes."""
    levels = []
    for iid in SYMBOLS:
        for d in range(10):
            levels.append((iid, i + 1, "B", 100 + iid + i - d * 0.01, 100 + d, 1))
            levels.append((iid, i + 1, "A", 101 + iid + i + d * 0.01, 100 + d, 1))
    rows = l2_rows(*levels)
    rows["flags"] = int(BookFlag.SNAPSHOT)
    return batch(l2=rows)


def test_server_slow_client_gets_conflated_state_and_gap_and_write_never_waits(ws_server):
    srv = ws_server(max_queue=16, stuck_s=60.0)

    async def go():
        sock = _small_buffer_socket(srv.port)
        async with connect(f"ws://127.0.0.1:{srv.port}", sock=sock, max_queue=1) as ws:
            await ws.send(sub(["l2"], "*"))
            assert (await recv_json(ws))["type"] == "subscribed"
            # Stop reading. Feed until the server's queue for this client overflows and parks updates.
            i = 0
            while srv.counters["dropped"] < 100:
                srv.write(_depth_batch(i))
                i += 1
                await asyncio.sleep(0.001)
                assert i < 20_000, "the client's queue never overflowed"
            # Now time write() while the client is stuck: a list append under a lock, no waiting on it.
            timings = []
            for _ in range(500):
                b = _depth_batch(i)
                t = time.perf_counter()
                srv.write(b)
                timings.append(time.perf_counter() - t)
                i += 1
                await asyncio.sleep(0.001)
            timings.sort()
            assert timings[len(timings) // 2] < 100e-6, timings[len(timings) // 2]
            # (the slowest few can wait for the GIL, held by the server's loop thread: up to a switch interval)
            assert timings[-5] < 0.005, timings[-5:]
            total = i
            await wait_for(lambda: srv.counters["batches"] + srv.counters["batches_conflated"] >= total, timeout=20)
            assert list(srv.client_queues().values()) == [(16, 3)]  # (queued, parked): full, one per symbol
            # Read everything now: stale messages, then per symbol a gap and the latest state. Every
            # update not delivered is counted: seq goes up by exactly 1, or by dropped + 1 after a gap.
            last_seq = {}
            pending_gap = {}
            latest = {}
            while True:
                try:
                    m = await recv_json(ws, timeout=1.0)
                except asyncio.TimeoutError:
                    break
                symbol = m["symbol"]
                if m["type"] == "gap":
                    assert m["channel"] == "l2" and m["dropped"] > 0
                    pending_gap[symbol] = m["dropped"]
                    continue
                if symbol in last_seq:
                    assert m["seq"] == last_seq[symbol] + pending_gap.pop(symbol, 0) + 1
                last_seq[symbol] = m["seq"]
                latest[symbol] = m
            applied = srv.counters["batches"]
            for symbol, iid in (("AAPL", 1), ("MSFT", 2), ("TSLA", 3)):
                assert latest[symbol]["seq"] == applied  # one l2 message per symbol per applied batch
                assert latest[symbol]["bids"][0] == [str(100 + iid + total - 1), 100, 1]  # the last batch's book
                assert latest[symbol]["asks"][9] == [str(101 + iid + total - 1) + ".09", 109, 1]
            assert not pending_gap

    run(go(), timeout=60)
    assert srv.counters["gaps"] >= 3
    assert srv.counters["disconnects_slow"] == 0


def test_server_disconnects_a_client_stuck_past_the_limit(ws_server):
    srv = ws_server(max_queue=8, stuck_s=0.5, close_timeout=0.5)

    async def go():
        sock = _small_buffer_socket(srv.port)
        async with connect(f"ws://127.0.0.1:{srv.port}", sock=sock, max_queue=1) as ws:
            await ws.send(sub(["l2"], "*"))
            assert (await recv_json(ws))["type"] == "subscribed"
            i = 0
            while srv.counters["disconnects_slow"] == 0:
                srv.write(_depth_batch(i))
                i += 1
                await asyncio.sleep(0.001)
                assert i < 20_000, "never disconnected"
            await wait_for(lambda: srv.counters["clients"] == 0)
            with pytest.raises(ConnectionClosed):
                while True:
                    await recv_json(ws)

    run(go(), timeout=60)
    assert srv.counters["disconnects_slow"] == 1


def test_server_behind_a_sink_runner_and_close_stops_listening(ws_server):
    srv = WebSocketServer("127.0.0.1", 0)
    runner = SinkRunner(srv)

    async def go():
        await wait_for(lambda: srv.port != 0)
        async with connect(f"ws://127.0.0.1:{srv.port}") as ws:
            await ws.send(sub(["trades"], ["MSFT"]))
            await recv_json(ws)
            runner.offer(batch(trades=trade_rows((2, 410.5, 10, 9))))
            m = await recv_json(ws)
            assert (m["type"], m["px"], m["sz"], m["seq"]) == ("trade", "410.5", 10, 1)

    run(go())
    report = runner.stop(2.0)
    assert report["written"] == 1 and report["websocket_messages_sent"] == 2
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
