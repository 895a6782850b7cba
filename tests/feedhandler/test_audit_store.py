"""The audit store against the real PostgreSQL: migration, exact read-back of every table, order state
upserts, idempotent re-sends, reconnect after the server kills the connection, bounded waiting rows
while the database is blocked, snapshots, and bad input that is counted rather than fatal.

Each test has its own schema (``unique_name``), dropped afterwards."""
from __future__ import annotations

import time
from decimal import Decimal

import numpy as np
import psycopg
import pytest

from feedhandler.audit_store import TABLES, AuditStore
from tests.trading import command_rows
from trading.matching import MatchingEngine
from trading.orders import ORDER_EVENT, OrderSide, OrderType, TimeInForce, commands

SYMBOLS = {"AAPL": 1, "MSFT": 2}
ACCOUNTS = {"alice": 1, "bob": 2}
BUY, SELL = OrderSide.BUY, OrderSide.SELL


def new(*args, account=1, **fields):  # alice's unless said (command_rows' default account is 7)
    return command_rows.new(*args, account=account, **fields)


def cancel(oid, account=1, ts=0):
    return command_rows.cancel(oid, account=account, ts=ts)


@pytest.fixture
def stores(pg_dsn: str, pg_conn: psycopg.Connection, unique_name: str):
    """``stores(**kw)`` opens an ``AuditStore`` on this test's schema; all closed, schema dropped at the end."""
    made = []

    def make(**kw) -> AuditStore:
        kw = {"symbols": SYMBOLS, "accounts": ACCOUNTS, "schema": unique_name, **kw}
        store = AuditStore(pg_dsn, **kw)
        store.open()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close(timeout=5)
    pg_conn.execute(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE')


def submit(store: AuditStore, matcher: MatchingEngine, *rows, client_ids=None):
    cmds = commands(*rows)
    events = matcher.submit(cmds)
    store(cmds, events, client_ids)
    return events


def q(conn: psycopg.Connection, query: str, *args) -> list[tuple]:
    return conn.execute(query, args).fetchall()


def test_migration_creates_the_tables_and_twice_is_harmless(stores, pg_conn, unique_name):
    stores()
    catalog = ("SELECT c.relname, pg_get_constraintdef(k.oid) FROM pg_class c JOIN pg_namespace n "
               "ON n.oid = c.relnamespace JOIN pg_constraint k ON k.conrelid = c.oid WHERE n.nspname = %s "
               "ORDER BY 1")
    before = q(pg_conn, catalog, unique_name)
    assert before == [("accounts", "PRIMARY KEY (account_id)"), ("audit_events", "PRIMARY KEY (seq)"),
                      ("fills", "PRIMARY KEY (seq)"), ("orders", "PRIMARY KEY (ts_order_ns, order_id)"),
                      ("positions", "PRIMARY KEY (account_id, instrument_id)")]
    indexes = q(pg_conn, "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND indexname LIKE '%%_idx' "
                         "ORDER BY 1", unique_name)
    assert ("audit_events_order_id_ts_order_ns_idx",) in indexes and ("orders_client_order_id_idx",) in indexes
    stores()
    assert q(pg_conn, catalog, unique_name) == before
    assert {t.name for t in TABLES} == {r[0] for r in before}


def test_audit_rows_fills_and_orders_read_back_exactly(stores, pg_conn, unique_name):
    store = stores()
    m = MatchingEngine()
    t0 = 1_700_000_000_123_456_789
    submit(store, m, new(1, BUY, 100, 18725, ts=t0), new(2, SELL, 40, 18720, account=2, tif=TimeInForce.GTC, ts=t0 + 1),
           new(3, SELL, 10, typ=OrderType.STOP, stop=18000, inst=2, account=2, ts=t0 + 2), cancel(1, ts=t0 + 3),
           new(4, BUY, 0, 100, ts=t0 + 4), client_ids=["a-1", "b-2", "b-3", "", "a-4"])
    assert store.flush(10)
    rows = q(pg_conn, f'SELECT seq, ts_ns, ts_order_ns, event, cat_event, order_id, client_order_id, account_id, '
                      f'account, instrument_id, symbol, side, order_type, tif, price, stop_price, qty, leaves, '
                      f'counterparty_id, liquidity, reason FROM "{unique_name}".audit_events ORDER BY seq')
    d = Decimal
    assert rows == [
        (1, t0, t0, "new_order", "MENO", 1, "a-1", 1, "alice", 1, "AAPL", "buy", "limit", "DAY", d("187.25"), None,
         100, 0, 0, "", ""),
        (2, t0 + 1, t0 + 1, "new_order", "MENO", 2, "b-2", 2, "bob", 1, "AAPL", "sell", "limit", "GTC", d("187.20"),
         None, 40, 0, 0, "", ""),
        (3, t0 + 2, t0 + 2, "new_order", "MENO", 3, "b-3", 2, "bob", 2, "MSFT", "sell", "stop", "DAY", None,
         d("180.00"), 10, 0, 0, "", ""),
        (4, t0 + 3, t0, "cancel_request", "MEOCR", 1, "a-1", 1, "alice", 1, "AAPL", "buy", "limit", "DAY", None,
         None, 0, 0, 0, "", ""),
        (5, t0 + 4, t0 + 4, "new_order", "MENO", 4, "a-4", 1, "alice", 1, "AAPL", "buy", "limit", "DAY", d("1.00"),
         None, 0, 0, 0, "", ""),
        (6, t0, t0, "ack", "", 1, "a-1", 1, "alice", 1, "AAPL", "buy", "limit", "DAY", d("187.25"), None, 100, 100, 0,
         "", ""),
        (7, t0 + 1, t0 + 1, "ack", "", 2, "b-2", 2, "bob", 1, "AAPL", "sell", "limit", "GTC", d("187.20"), None, 40,
         40, 0, "", ""),
        (8, t0 + 1, t0 + 1, "fill", "MEOT", 2, "b-2", 2, "bob", 1, "AAPL", "sell", "limit", "GTC", d("187.25"), None,
         40, 0, 1, "taker", ""),
        (9, t0 + 1, t0, "fill", "MEOT", 1, "a-1", 1, "alice", 1, "AAPL", "buy", "limit", "DAY", d("187.25"), None, 40,
         60, 2, "maker", ""),
        (10, t0 + 2, t0 + 2, "ack", "", 3, "b-3", 2, "bob", 2, "MSFT", "sell", "stop", "DAY", None, d("180.00"), 10,
         10, 0, "", ""),
        (11, t0 + 3, t0, "cancelled", "MEOC", 1, "a-1", 1, "alice", 1, "AAPL", "buy", "limit", "DAY", d("187.25"), None,
         60, 0, 0, "", "user_cancel"),
        (12, t0 + 4, t0 + 4, "reject", "", 4, "a-4", 1, "alice", 1, "AAPL", "buy", "limit", "DAY", d("1.00"), None, 0,
         0, 0, "", "bad_qty"),
    ]
    # timestamptz is the ns time truncated to the microsecond
    assert q(pg_conn, f'SELECT (extract(epoch FROM ts) * 1e6)::bigint FROM "{unique_name}".audit_events '
                      f'WHERE seq = 1') == [(t0 // 1000,)]
    fills = q(pg_conn, f'SELECT seq, ts_ns, order_id, client_order_id, account, symbol, side, price, qty, leaves, '
                       f'counterparty_id, liquidity FROM "{unique_name}".fills ORDER BY seq')
    assert fills == [(8, t0 + 1, 2, "b-2", "bob", "AAPL", "sell", d("187.25"), 40, 0, 1, "taker"),
                     (9, t0 + 1, 1, "a-1", "alice", "AAPL", "buy", d("187.25"), 40, 60, 2, "maker")]
    orders = q(pg_conn, f'SELECT order_id, ts_order_ns, client_order_id, account, symbol, side, order_type, tif, '
                        f'price, stop_price, qty, filled, leaves, status, reason, ts_updated_ns '
                        f'FROM "{unique_name}".orders ORDER BY order_id')
    assert orders == [
        (1, t0, "a-1", "alice", "AAPL", "buy", "limit", "DAY", d("187.25"), None, 100, 40, 0, "cancelled",
         "user_cancel", t0 + 3),
        (2, t0 + 1, "b-2", "bob", "AAPL", "sell", "limit", "GTC", d("187.20"), None, 40, 40, 0, "filled", "", t0 + 1),
        (3, t0 + 2, "b-3", "bob", "MSFT", "sell", "stop", "DAY", None, d("180.00"), 10, 0, 10, "held", "", t0 + 2),
        (4, t0 + 4, "a-4", "alice", "AAPL", "buy", "limit", "DAY", d("1.00"), None, 0, 0, 0, "rejected", "bad_qty",
         t0 + 4),
    ]
    assert store.counters["rows_audit_events"] == 12 and store.counters["rows_fills"] == 2
    assert store.counters["rows_orders"] == 4 and store.counters["batches_in"] == 1


def test_order_state_is_upserted_batch_after_batch(stores, pg_conn, unique_name):
    store = stores()
    m = MatchingEngine()
    submit(store, m, new(1, BUY, 100, 100, ts=1), client_ids=["x"])
    assert store.flush(10)
    status = f'SELECT status, filled, leaves, ts_updated_ns, updated_at FROM "{unique_name}".orders WHERE order_id = 1'
    first = q(pg_conn, status)
    assert [r[:4] for r in first] == [("open", 0, 100, 1)]
    submit(store, m, new(2, SELL, 30, 100, account=2, ts=2))
    submit(store, m, new(3, SELL, 70, 99, account=2, ts=3))
    assert store.flush(10)
    last = q(pg_conn, status)
    assert [r[:4] for r in last] == [("filled", 100, 0, 3)] and last[0][4] >= first[0][4]
    assert q(pg_conn, f'SELECT count(*) FROM "{unique_name}".orders') == [(3,)]


def test_rows_sent_again_are_not_duplicated_and_seq_continues(stores, pg_conn, unique_name):
    m = MatchingEngine()
    cmds = commands(new(1, BUY, 10, 100, ts=5), new(2, SELL, 10, 100, account=2, ts=6))
    events = m.submit(cmds)
    first = stores(accounts=["carol", "alice", "bob"])  # names in the engine's order: ids 0, 1, 2
    first(cmds, events, ["p", "q"])
    assert first.flush(10)
    first.close()
    again = stores()  # a new process on the same schema continues the numbering
    assert again.trail.next_seq == 7
    again.trail.next_seq = 1  # as if it re-sent the same rows (a write whose commit was not confirmed)
    again(cmds, events, ["p", "q"])
    assert again.flush(10)
    assert again.counters["rows_audit_events"] == 0 and again.counters["rows_fills"] == 0
    assert q(pg_conn, f'SELECT count(*) FROM "{unique_name}".audit_events') == [(6,)]
    assert q(pg_conn, f'SELECT count(*) FROM "{unique_name}".fills') == [(2,)]
    assert q(pg_conn, f'SELECT order_id, status, account FROM "{unique_name}".orders ORDER BY 1') == [
        (1, "filled", "alice"), (2, "filled", "bob")]


def test_a_restarted_store_reads_open_orders_back(stores, pg_conn, unique_name):
    m = MatchingEngine()
    first = stores()
    submit(first, m, new(1, BUY, 100, 18725, tif=TimeInForce.GTC, ts=10),
           new(2, SELL, 10, typ=OrderType.STOP_LIMIT, stop=18000, price=17990, account=2, ts=11),
           new(3, SELL, 5, 18800, account=2, ts=12), cancel(3, account=2, ts=13),
           client_ids=["gtc-1", "stop-2", "gone-3", None])
    assert first.flush(10)
    first.close()
    again = stores()  # a new process: the open orders come back from the orders table
    assert again.counters["orders_restored"] == 2 and again.trail.orders_held == 2
    submit(again, m, new(4, SELL, 30, 18700, account=2, ts=20))
    assert again.flush(10)
    assert q(pg_conn, f'SELECT order_id, client_order_id, order_type, tif, status, filled, leaves, ts_updated_ns '
                      f'FROM "{unique_name}".orders ORDER BY 1') == [
        (1, "gtc-1", "limit", "GTC", "open", 30, 70, 20), (2, "stop-2", "stop_limit", "DAY", "held", 0, 10, 11),
        (3, "gone-3", "limit", "DAY", "cancelled", 0, 0, 13), (4, "", "limit", "DAY", "filled", 30, 0, 20)]
    maker = q(pg_conn, f'SELECT ts_order_ns, client_order_id, liquidity FROM "{unique_name}".fills WHERE order_id = 1')
    assert maker == [(10, "gtc-1", "maker")]
    assert q(pg_conn, f'SELECT tif FROM "{unique_name}".audit_events WHERE order_id = 1 AND event = %s', "fill") == [
        ("GTC",)]


def test_reconnects_after_the_server_kills_the_connection(stores, pg_conn, unique_name):
    store = stores(retry_s=0.01)
    m = MatchingEngine()
    submit(store, m, new(1, BUY, 10, 100, ts=1))
    assert store.flush(10)
    pid = store.backend_pid
    assert q(pg_conn, "SELECT pg_terminate_backend(%s)", pid) == [(True,)]
    for i in range(2, 12):
        submit(store, m, new(i, SELL, 1, 100, account=2, ts=i))
    assert store.flush(20)
    assert store.counters["reconnects"] >= 1 and store.counters["batches_retried"] >= 1
    assert store.backend_pid != pid and store.last_error is not None
    assert q(pg_conn, f'SELECT count(*), max(seq) FROM "{unique_name}".audit_events') == [(2 + 10 * 4, 42)]
    assert q(pg_conn, f'SELECT filled, leaves, status FROM "{unique_name}".orders WHERE order_id = 1') == [
        (10, 0, "filled")]


def test_a_blocked_database_never_blocks_the_caller_and_overflow_is_counted(stores, pg_dsn, pg_conn, unique_name):
    store = stores(max_pending_rows=200, write_rows=50)
    m = MatchingEngine()
    with psycopg.connect(pg_dsn) as blocker:  # holds the table locked until the transaction ends
        blocker.execute(f'LOCK TABLE "{unique_name}".audit_events IN ACCESS EXCLUSIVE MODE')
        started = time.perf_counter()
        for i in range(1, 1001):  # 1000 batches of 2 audit rows while nothing can be written
            submit(store, m, new(i, BUY, 1, 100, ts=i))
        elapsed = time.perf_counter() - started
        deadline = time.monotonic() + 10
        while store.counters["rows_dropped"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        blocker.rollback()
    assert elapsed < 5  # the caller only enqueued: 1000 writes behind a lock would never have finished
    assert store.flush(20)
    c = store.counters
    assert c["rows_dropped"] > 0 and c["batches_dropped"] > 0 and c["pending_rows"] == 0
    written = q(pg_conn, f'SELECT count(*) FROM "{unique_name}".audit_events')[0][0]
    assert written == c["rows_audit_events"] and written + c["rows_dropped"] == 2000  # written or counted
    assert 0 < written < 2000  # what was in flight or waiting last was written, older rows were dropped


def test_snapshots_replace_accounts_and_positions(stores, pg_conn, unique_name):
    store = stores()
    acct = {"cash": 1_000 * 10**9, "long_value": 500 * 10**9, "short_value": 0, "equity": 1_500 * 10**9,
            "realized": -2_500_000_000, "unrealized": 12_340_000_000, "maintenance": 125 * 10**9,
            "initial": 250 * 10**9, "buying_power": 2_500 * 10**9, "margin_excess": 1_375 * 10**9}
    positions = [
        {"account": 1, "instrument_id": 1, "position": 100, "cost": 488 * 10**9, "avg_price": 4_880_000_000,
         "mark": 5 * 10**9, "market_value": 500 * 10**9, "unrealized": 12 * 10**9},
        {"account": 1, "instrument_id": 2, "position": -10, "cost": -100 * 10**9, "avg_price": 10 * 10**9,
         "mark": None, "market_value": -100 * 10**9, "unrealized": 0},
    ]
    store.snapshot(1_000, {1: acct, 2: {**acct, "cash": 0}}, positions)
    assert store.flush(10)
    d = Decimal
    assert q(pg_conn, f'SELECT account_id, account, cash, equity, realized, unrealized, buying_power, margin_excess, '
                      f'ts_ns FROM "{unique_name}".accounts ORDER BY 1') == [
        (1, "alice", d("1000"), d("1500"), d("-2.5"), d("12.34"), d("2500"), d("1375"), 1_000),
        (2, "bob", d("0"), d("1500"), d("-2.5"), d("12.34"), d("2500"), d("1375"), 1_000)]
    pos = f'SELECT account, symbol, position, cost, avg_price, mark, market_value, unrealized, ts_ns ' \
          f'FROM "{unique_name}".positions ORDER BY symbol'
    assert q(pg_conn, pos) == [("alice", "AAPL", 100, d("488"), d("4.88"), d("5"), d("500"), d("12"), 1_000),
                               ("alice", "MSFT", -10, d("-100"), d("10"), None, d("-100"), d("0"), 1_000)]
    store.snapshot(2_000, {1: {**acct, "cash": 7}}, positions[1:])  # AAPL went flat
    assert store.flush(10)
    assert [r[:3] for r in q(pg_conn, pos)] == [("alice", "MSFT", -10)]
    assert q(pg_conn, f'SELECT account_id, cash, ts_ns FROM "{unique_name}".accounts ORDER BY 1') == [
        (1, d("7E-9"), 2_000), (2, d("0"), 1_000)]
    store.snapshot(3_000, {}, [])
    assert store.flush(10)
    assert q(pg_conn, pos) == []
    assert store.counters["snapshots"] == 3


def test_bad_input_is_counted_not_fatal(stores, pg_conn, unique_name):
    store = stores()
    m = MatchingEngine()
    store(np.zeros(3, dtype=np.int64), np.zeros(2, dtype=np.float64))  # not COMMAND / ORDER_EVENT rows
    submit(store, m, new(1, BUY, 10, 100, ts=1), new(2, BUY, 10, 100, ts=1), client_ids=["x" * 40, "ok"])
    submit(store, m, new(3, BUY, 10, 100, ts=2), new(4, BUY, 10, 100, ts=2), client_ids=[None, "café"])
    assert store.flush(10)
    assert store.counters["batches_failed"] == 1 and store.counters["client_ids_dropped"] == 2
    assert store.last_error is not None and "32 bytes" in store.last_error
    assert q(pg_conn, f'SELECT order_id, client_order_id FROM "{unique_name}".orders ORDER BY 1') == [
        (1, ""), (2, "ok"), (3, ""), (4, "")]


def test_batches_before_open_or_after_close_are_dropped_and_counted(pg_dsn, stores):
    idle = AuditStore(pg_dsn, symbols=SYMBOLS, accounts=ACCOUNTS)
    idle(commands(new(1, BUY, 1, 1)), ORDER_EVENT.empty(0))
    assert idle.counters["batches_dropped"] == 1 and idle.flush(1)
    store = stores()
    store.close()
    store(commands(new(1, BUY, 1, 1)), ORDER_EVENT.empty(0))
    assert store.counters["batches_dropped"] == 1


def test_prices_at_the_edges_of_numeric(stores, pg_conn, unique_name):
    store = stores()
    events = ORDER_EVENT.empty(2)
    events["kind"] = 1  # ACK
    events["order_id"] = [2**63 - 1, 5]
    events["price"] = [2**63 - 2, -1]
    events["qty"] = events["leaves"] = [1, 2]
    events["ts"] = [1, 2]
    store(commands(), events)
    assert store.flush(10)
    assert q(pg_conn, f'SELECT order_id, price FROM "{unique_name}".orders ORDER BY 1') == [
        (5, Decimal("-1E-9")), (2**63 - 1, Decimal("9223372036.854775806"))]
    assert q(pg_conn, f'SELECT stop_price FROM "{unique_name}".orders') == [(None,), (None,)]  # UNDEF_PRICE
