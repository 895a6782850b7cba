"""Order entry over the real WebSocket server with the real engine: real ``websockets`` clients on a free
loopback port. Two users with their tokens each see only their own acks and fills; a bad token is
refused; bad requests get one error line and the connection lives on; the feed's fills and the
session's expiries reach their owners unasked; with an audit store, it all lands in PostgreSQL."""
from __future__ import annotations

import asyncio
import json

import psycopg
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from feedhandler.audit_store import AuditStore
from feedhandler.order_gateway import OrderGateway
from orderbook.engine import BookEngine
from parsers.schema import EVENT, PRICE_SCALE, TRADE, Action, Side
from trading.engine import AccountConfig, Engine

T0 = 1_709_650_800_000_000_000  # 2024-03-05 10:00 New York: the market is open
SYMBOLS = {"AAPL": 1, "MSFT": 2}
USERS = {"tok-alice": "alice", "tok-bob": "bob"}


def accounts() -> dict[str, AccountConfig]:
    return {"alice": AccountConfig(cash=1_000_000 * PRICE_SCALE),
            "bob": AccountConfig(cash=1_000_000 * PRICE_SCALE, margin=True),
            "carol": AccountConfig(cash=1_000 * PRICE_SCALE)}


class Clock:
    """The gateway's clock: T0, T0 + 1, ... (one tick per request)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        self.now += 1
        return self.now


@pytest.fixture(scope="module", autouse=True)
def compiled():
    """Compile the engine's kernels once, before any test times a reply (numba's first call compiles)."""
    engine = Engine(SYMBOLS, accounts(), books=BookEngine())
    engine.order(T0, "alice", "warm", "AAPL", "buy", "limit", 1, price="1")
    engine.order(T0, "bob", "warm", "AAPL", "sell_short", "limit", 1, price="1")
    engine.modify(T0, "alice", "warm", qty=2)
    engine.cancel(T0, "alice", "warm")
    engine.end_session(T0)


@pytest.fixture
def gateway(tmp_path):
    """An engine (write-ahead log in tmp_path, the feed's books) behind a gateway serving on a free port."""
    books = BookEngine()
    engine = Engine(SYMBOLS, accounts(), books=books, wal_dir=tmp_path / "wal")
    gw = OrderGateway(engine, USERS, clock=Clock())
    gw.serve("127.0.0.1", 0)
    gw.books = books
    yield gw
    gw.close()
    engine.close()


def run(coro, timeout: float = 20.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def url(gw: OrderGateway, token: str | None = None) -> str:
    return f"ws://127.0.0.1:{gw.server.port}/" + (f"?token={token}" if token else "")


async def send(ws, **request) -> None:
    await ws.send(json.dumps(request))


async def recv(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def login(gw: OrderGateway, token: str):
    ws = await connect(url(gw))
    await send(ws, op="auth", token=token)
    assert await recv(ws) == {"type": "authenticated", "user": USERS[token]}
    return ws


async def nothing_more(ws, wait: float = 0.3) -> None:
    """Nothing arrives within ``wait`` (a ping round trip proves the connection is alive and drained)."""
    await send(ws, op="ping")
    assert await recv(ws, wait + 5) == {"type": "pong"}


def event(kind, cid, side, price, qty, leaves, account, symbol="AAPL", liquidity=None, reason=None, ts=None):
    out = {"type": kind, "account": account, "client_order_id": cid, "symbol": symbol, "side": side,
           "price": price, "qty": qty, "leaves": leaves, "liquidity": liquidity, "reason": reason}
    if ts is not None:
        out["ts"] = ts
    return out


def without_ts(message: dict) -> dict:
    assert isinstance(message.pop("ts"), int)
    return message


def test_each_user_sees_only_their_own_acks_and_fills(gateway):
    async def go():
        alice = await login(gateway, "tok-alice")
        bob = await connect(url(gateway, "tok-bob"))  # the token in the URL works too
        await send(alice, op="order", client_order_id="a-1", symbol="AAPL", side="buy", type="limit", qty=100,
                   price="187.25")
        assert await recv(alice) == event("ack", "a-1", "buy", "187.25", 100, 100, "alice", ts=T0 + 1)
        await send(bob, op="order", client_order_id="b-1", symbol="AAPL", side="sell_short", type="limit", qty=40,
                   price=187.2, tif="ioc")
        assert [without_ts(await recv(bob)) for _ in range(2)] == [
            event("ack", "b-1", "sell_short", "187.20", 40, 40, "bob"),
            event("fill", "b-1", "sell_short", "187.25", 40, 0, "bob", liquidity="taker")]
        # alice's fill reaches her unasked, and names only her order
        assert without_ts(await recv(alice)) == event("fill", "a-1", "buy", "187.25", 40, 60, "alice",
                                                      liquidity="maker")
        await send(alice, op="modify", client_order_id="a-1", qty=50)
        assert without_ts(await recv(alice)) == event("modified", "a-1", "buy", "187.25", 50, 50, "alice")
        # bob cannot touch alice's order: her client order id means nothing in his account
        await send(bob, op="cancel", client_order_id="a-1")
        rejected = without_ts(await recv(bob))
        assert rejected["type"] == "reject" and rejected["reason"] == "unknown_order"
        assert rejected["account"] == "bob" and rejected["client_order_id"] == "a-1"
        await send(alice, op="cancel", client_order_id="a-1")
        assert without_ts(await recv(alice)) == event("cancelled", "a-1", "buy", "187.25", 50, 0, "alice",
                                                      reason="user_cancel")
        # the engine's own verdicts are rejects, not errors
        await send(alice, op="order", client_order_id="a-2", symbol="MSFT", side="sell", type="limit", qty=5,
                   price="400")
        assert without_ts(await recv(alice)) == event("reject", "a-2", "sell", "400.00", 5, 0, "alice",
                                                      symbol="MSFT", reason="short_not_allowed")
        await nothing_more(alice)
        await nothing_more(bob)
        await alice.close()
        await bob.close()

    run(go())
    counters = gateway.server.hub.counters  # the hub's own (the server copies them now and then)
    assert counters["order_requests"] == 6 and counters["order_errors"] == 0
    assert gateway.engine.portfolio.position[0, 1] == 40 and gateway.engine.portfolio.position[1, 1] == -40


def test_a_second_connection_of_a_user_gets_the_users_messages(gateway):
    async def go():
        first = await login(gateway, "tok-alice")
        second = await connect(url(gateway, "tok-alice"))
        bob = await login(gateway, "tok-bob")
        await send(first, op="order", client_order_id="x", symbol="AAPL", side="buy", type="limit", qty=10,
                   price="10")
        ack = await recv(first)
        assert await recv(second) == ack and ack["type"] == "ack"
        await nothing_more(bob)
        for ws in (first, second, bob):
            await ws.close()

    run(go())


def test_a_bad_token_is_refused(gateway):
    async def go():
        ws = await connect(url(gateway))
        await send(ws, op="auth", token="tok-mallory")
        assert await recv(ws) == {"type": "error", "message": "invalid token"}
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd.code == 1008
        ws = await connect(url(gateway, "tok-wrong"))
        assert await recv(ws) == {"type": "error", "message": "invalid token"}
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        # without a user token, market data is open but order entry is not
        ws = await connect(url(gateway))
        await send(ws, op="order", client_order_id="z", symbol="AAPL", side="buy", type="limit", qty=1, price="1")
        assert await recv(ws) == {"type": "error", "op": "order", "client_order_id": "z", "message":
                                  'order entry needs a user token: send {"op": "auth", "token": ...} first'}
        await send(ws, op="subscribe", channels=["bbo"], symbols=["AAPL"])
        assert (await recv(ws))["type"] == "subscribed"
        # a user cannot become another on the same connection
        alice = await login(gateway, "tok-alice")
        await send(alice, op="auth", token="tok-bob")
        assert await recv(alice) == {"type": "error", "message": "already authenticated as user 'alice'"}
        await nothing_more(alice)
        await ws.close()
        await alice.close()

    run(go())
    assert gateway.server.hub.counters["refused_auth"] == 2
    assert gateway.engine.matcher.orders == 0


BAD_REQUESTS = [
    ("not json", "not JSON", None),
    ('["order"]', "a request is a JSON object with an 'op'", None),
    ({"op": "order", "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 1, "price": "1"},
     "order: client_order_id: a non-empty string is required", None),
    ({"op": "order", "client_order_id": "c1", "symbol": "AAPL", "side": "up", "type": "limit", "qty": 1,
      "price": "1"}, "order: side: 'up', expected one of buy, sell, sell_short", "c1"),
    ({"op": "order", "client_order_id": "c2", "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 1.5,
      "price": "1"}, "order: qty: a positive whole number of shares is required", "c2"),
    ({"op": "order", "client_order_id": "c3", "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 0,
      "price": "1"}, "order: qty: a positive whole number of shares is required", "c3"),
    ({"op": "order", "client_order_id": "c4", "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 1},
     "order: price: required for a limit order", "c4"),
    ({"op": "order", "client_order_id": "c5", "symbol": "AAPL", "side": "buy", "type": "market", "qty": 1,
      "price": "1"}, "order: price: not allowed for a market order", "c5"),
    ({"op": "order", "client_order_id": "c6", "symbol": "AAPL", "side": "buy", "type": "stop", "qty": 1},
     "order: stop_price: required for a stop order", "c6"),
    ({"op": "order", "client_order_id": "c7", "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 1,
      "price": "1.0000000001"}, "order: price: '1.0000000001' must be positive, below 9e9, with at most 9 decimals",
     "c7"),
    ({"op": "order", "client_order_id": "c8", "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 1,
      "price": "abc"}, "order: price: 'abc' is not a number", "c8"),
    ({"op": "order", "client_order_id": "c9", "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 1,
      "price": "1", "quantity": 5}, "order: unknown field 'quantity' (fields: account, client_order_id, price, qty, "
                                    "side, stop_price, symbol, tif, type)", "c9"),
    ({"op": "order", "client_order_id": "c10", "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 1,
      "price": "1", "account": "bob"}, "order: account: orders act for the authenticated user ('alice')", "c10"),
    ({"op": "order", "client_order_id": "c11", "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 1,
      "price": "1", "tif": "forever"}, "order: tif: 'forever', expected one of DAY, GTC, IOC, FOK", "c11"),
    ({"op": "order", "client_order_id": "x" * 33, "symbol": "AAPL", "side": "buy", "type": "limit", "qty": 1,
      "price": "1"}, "order: client_order_id: printable ASCII, at most 32 characters", "x" * 33),
    ({"op": "modify", "client_order_id": "c12"}, "modify: modify: give a new price, a new qty, or both", "c12"),
    ({"op": "cancel", "client_order_id": 7}, "cancel: client_order_id: a non-empty string is required", None),
    ({"op": "order", "client_order_id": "c13", "symbol": None, "side": "buy", "type": "limit", "qty": 1,
      "price": "1"}, "order: symbol: a symbol (a non-empty string) is required", "c13"),
]


@pytest.mark.parametrize("request_, message, cid", BAD_REQUESTS)
def test_a_bad_request_gets_one_error_line_and_the_connection_lives_on(gateway, request_, message, cid):
    async def go():
        alice = await login(gateway, "tok-alice")
        await alice.send(request_ if isinstance(request_, str) else json.dumps(request_))
        error = await recv(alice)
        expected = {"type": "error", "message": message}
        if isinstance(request_, dict):
            expected["op"] = request_["op"]
        if cid is not None:
            expected["client_order_id"] = cid
        assert error == expected
        await nothing_more(alice)
        # and the next good order goes through
        await send(alice, op="order", client_order_id="good", symbol="AAPL", side="buy", type="limit", qty=1,
                   price="1")
        assert (await recv(alice))["type"] == "ack"
        await alice.close()

    run(go())
    assert gateway.server.hub.counters["order_errors"] == 0


def test_a_failure_behind_the_handler_is_one_line_not_a_crash(gateway):
    engine, gateway.engine = gateway.engine, None  # a bug: every request now raises AttributeError

    async def go():
        alice = await login(gateway, "tok-alice")
        await send(alice, op="order", client_order_id="c", symbol="AAPL", side="buy", type="limit", qty=1, price="1")
        assert await recv(alice) == {"type": "error", "op": "order", "client_order_id": "c",
                                     "message": "order: internal error (AttributeError)"}
        await nothing_more(alice)
        gateway.engine = engine
        await send(alice, op="order", client_order_id="c", symbol="AAPL", side="buy", type="limit", qty=1, price="1")
        assert (await recv(alice))["type"] == "ack"
        await alice.close()

    run(go())
    assert gateway.server.hub.counters["order_errors"] == 1


def feed_events(*rows) -> "np.ndarray":
    out = EVENT.empty(len(rows))
    for i, (action, side, price, size, oid) in enumerate(rows):
        r = out[i]
        r["action"], r["side"], r["size"], r["order_id"] = action, side, size, oid
        r["price"] = round(price * PRICE_SCALE)
        r["instrument_id"], r["ts_event"], r["sequence"] = 1, T0 + i, i + 1
    return out


def test_fills_from_the_feed_and_expiries_reach_their_owners_unasked(gateway):
    book = feed_events((Action.ADD, Side.BID, 187.20, 200, 11), (Action.ADD, Side.ASK, 187.30, 100, 12))
    gateway.books.apply(book)
    assert gateway.on_feed(T0, book, None, None) == []

    async def go():
        alice = await login(gateway, "tok-alice")
        bob = await login(gateway, "tok-bob")
        await send(alice, op="order", client_order_id="m", symbol="AAPL", side="buy", type="market", qty=50)
        assert [without_ts(await recv(alice)) for _ in range(2)] == [
            event("ack", "m", "buy", None, 50, 50, "alice"),
            event("fill", "m", "buy", "187.30", 50, 0, "alice", liquidity="taker")]
        for cid, price in (("rest", "187.20"), ("day", "180")):
            await send(alice, op="order", client_order_id=cid, symbol="AAPL", side="buy", type="limit", qty=100,
                       price=price)
            assert (await recv(alice))["type"] == "ack"
        # a print through alice's bid: the engine fills her resting order; the gateway pushes it
        trade = TRADE.empty(1)
        trade["price"], trade["size"], trade["instrument_id"] = round(187.10 * PRICE_SCALE), 300, 1
        trade["action"], trade["side"], trade["printable"], trade["ts_event"] = Action.TRADE, Side.BID, 1, T0 + 50
        await asyncio.to_thread(gateway.on_feed, T0 + 50, EVENT.empty(0), trade, None)
        assert await recv(alice) == event("fill", "rest", "buy", "187.20", 100, 0, "alice", liquidity="maker",
                                          ts=T0 + 50)
        await asyncio.to_thread(gateway.end_session, T0 + 60)
        assert await recv(alice) == event("expired", "day", "buy", "180.00", 100, 0, "alice", reason="session_end",
                                          ts=T0 + 60)
        await nothing_more(bob)
        await nothing_more(alice)
        await alice.close()
        await bob.close()

    run(go())


def test_orders_land_in_the_audit_trail_and_the_portfolio_in_postgres(tmp_path, pg_dsn, pg_conn, unique_name):
    store = AuditStore(pg_dsn, symbols=SYMBOLS, accounts=list(accounts()), schema=unique_name)
    store.open()
    engine = Engine(SYMBOLS, accounts(), wal_dir=tmp_path / "wal", audit=store)
    gw = OrderGateway(engine, USERS, audit=store, snapshot_s=0.05, clock=Clock())
    gw.serve("127.0.0.1", 0)
    try:
        async def go():
            alice = await login(gw, "tok-alice")
            bob = await login(gw, "tok-bob")
            await send(alice, op="order", client_order_id="a-1", symbol="AAPL", side="buy", type="limit", qty=100,
                       price="187.25")
            await recv(alice)
            await send(bob, op="order", client_order_id="b-1", symbol="AAPL", side="sell_short", type="limit",
                       qty=40, price="187.25")
            await recv(bob)
            await recv(bob)
            await recv(alice)
            await alice.close()
            await bob.close()

        run(go())
        gw.close()
        assert store.flush(10)
        q = lambda sql: pg_conn.execute(sql).fetchall()  # noqa: E731
        assert q(f'SELECT event, client_order_id, account, symbol, side, qty, leaves, liquidity '
                 f'FROM "{unique_name}".audit_events ORDER BY seq') == [
            ("new_order", "a-1", "alice", "AAPL", "buy", 100, 0, ""),
            ("ack", "a-1", "alice", "AAPL", "buy", 100, 100, ""),
            ("new_order", "b-1", "bob", "AAPL", "sell_short", 40, 0, ""),
            ("ack", "b-1", "bob", "AAPL", "sell_short", 40, 40, ""),
            ("fill", "b-1", "bob", "AAPL", "sell_short", 40, 0, "taker"),
            ("fill", "a-1", "alice", "AAPL", "buy", 40, 60, "maker")]
        assert q(f'SELECT ts_ns FROM "{unique_name}".audit_events ORDER BY seq') == [
            (T0 + 1,), (T0 + 1,), (T0 + 2,), (T0 + 2,), (T0 + 2,), (T0 + 2,)]
        assert q(f'SELECT client_order_id, status, filled, leaves FROM "{unique_name}".orders ORDER BY 1') == [
            ("a-1", "open", 40, 60), ("b-1", "filled", 40, 0)]
        assert q(f'SELECT account, symbol, position, avg_price FROM "{unique_name}".positions ORDER BY 1') == [
            ("alice", "AAPL", 40, 187.25), ("bob", "AAPL", -40, 187.25)]
        cash = dict(q(f'SELECT account, cash FROM "{unique_name}".accounts'))
        assert cash == {"alice": 1_000_000 - 40 * 187.25, "bob": 1_000_000 + 40 * 187.25, "carol": 1_000}
        assert store.counters["snapshots"] >= 1 and store.counters["rows_dropped"] == 0
    finally:
        gw.close()
        engine.close()
        store.close()
        pg_conn.execute(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE')


def test_users_must_be_accounts_of_the_engine():
    engine = Engine(SYMBOLS, accounts())
    with pytest.raises(ValueError, match="users name accounts the engine does not have: dave"):
        OrderGateway(engine, {"tok-dave": "dave"})
