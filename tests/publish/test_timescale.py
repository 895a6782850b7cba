"""TimescaleSink against the real PostgreSQL: migration, exact values, idempotency, partitions, bars.

Each test has its own schema (``unique_name``), dropped afterwards. On a server without the
timescaledb extension (the usual test server) the sink runs in plain mode, which these tests cover
fully; ``test_timescale_mode_matches_the_server`` checks the mode choice either way.
"""
from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import numpy as np
import psycopg
import pytest

from orderbook.bars import BarBuilder
from orderbook.records import BBO, ohlcv_record
from parsers.schema import STATUS, TRADE, UNDEF_PRICE, Action, Side, StatusKind, TradingState
from publish.batch import MarketBatch
from publish.runner import SinkRunner
from publish.timescale import BAR_INTERVALS, COPY_PART_ROWS, TimescaleSink

SYMBOLS = {1: "AAPL", 2: "MSFT", 3: "BRK B"}
DAY1 = 1_710_460_800_000_000_000  # 2024-03-15 00:00 UTC
NS_DAY = 86_400_000_000_000
U64_MAX = 2**64 - 1
UTC = dt.timezone.utc


def make_trades(n: int, start: int = 0, t0: int = DAY1 + 13 * 3_600_000_000_000) -> np.ndarray:
    """Trades number start .. start + n - 1 (the same number is always the same trade)."""
    t = TRADE.empty(n)
    i = np.arange(start, start + n, dtype=np.int64)
    t["ts_event"] = t0 + i * 1_000_001  # ns that a µs timestamp cannot hold
    t["ts_recv"] = t["ts_event"] + 250
    t["price"] = 187_250_000_000 + i
    t["size"] = 100 + i
    t["order_id"] = 9_000 + i
    t["match_id"] = 50_000 + i
    t["sequence"] = 1_000 + i
    t["instrument_id"] = 1 + i % 3
    t["venue"] = 1
    t["action"] = Action.EXECUTE
    t["side"] = Side.BID
    t["printable"] = 1
    return t


def make_bbo(n: int, t0: int = DAY1 + 13 * 3_600_000_000_000) -> np.ndarray:
    b = BBO.empty(n)
    i = np.arange(n, dtype=np.int64)
    b["ts_event"] = t0 + i * 999
    b["ts_recv"] = b["ts_event"] + 1
    b["sequence"] = 10 + i
    b["bid_px"] = 100_000_000_000 + i
    b["ask_px"] = 100_010_000_000 + i
    b["bid_sz"] = 300
    b["ask_sz"] = 400 + i
    b["bid_ct"] = 2
    b["ask_ct"] = 3
    b["instrument_id"] = 1 + i % 2
    b["venue"] = 1
    return b


def make_status() -> np.ndarray:
    s = STATUS.empty(2)
    s["ts_event"] = [DAY1 + 1, DAY1 + 2]
    s["sequence"] = [7, 8]
    s["instrument_id"] = [1, 0]
    s["kind"] = [StatusKind.TRADING_ACTION, StatusKind.MWCB_LEVELS]
    s["state"] = [TradingState.HALTED, TradingState.UNCHANGED]
    s["code"] = [b"H", b""]
    s["reason"] = [b"T1", b""]
    s["price_1"] = [UNDEF_PRICE, 4_000_123_456_789]
    s["price_2"] = [UNDEF_PRICE, 3_700_000_000_000]
    s["price_3"] = [UNDEF_PRICE, 3_300_000_000_000]
    return s


@pytest.fixture
def sink(pg_dsn: str, pg_conn: psycopg.Connection, unique_name: str):
    s = TimescaleSink(pg_dsn, schema=unique_name)
    s.open()
    yield s
    s.close()
    pg_conn.execute(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE')


def q(conn: psycopg.Connection, query: str, *args) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(query, args)
        return cur.fetchall()


def count(conn: psycopg.Connection, schema: str, table: str) -> int:
    return conn.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]


def catalog(conn: psycopg.Connection, schema: str) -> list[tuple]:
    """Relations, their kinds and constraint definitions in the schema."""
    return conn.execute(
        "SELECT c.relname, c.relkind, coalesce(string_agg(pg_get_constraintdef(k.oid), '; ' ORDER BY k.conname), '') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_constraint k ON k.conrelid = c.oid "
        "WHERE n.nspname = %s GROUP BY 1, 2 ORDER BY 1", (schema,)).fetchall()


def test_migration_twice_is_harmless(sink: TimescaleSink, pg_dsn: str, pg_conn: psycopg.Connection):
    assert sink.mode == "plain"  # this server has no timescaledb
    sink.write(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(10)))
    before = catalog(pg_conn, sink.schema)
    names = {r[0] for r in before}
    assert {"trades", "bbo", "status", "instruments", "ohlcv_1s", "ohlcv_1m", "ohlcv_1h", "ohlcv_1d",
            "trades_p20240315"} <= names
    assert ("trades", "p", "UNIQUE (ts, ts_event_ns, instrument_id, match_id, venue)") in before

    sink.open()  # reconnect + migrate again
    again = TimescaleSink(pg_dsn, schema=sink.schema)
    again.open()
    again.close()
    assert catalog(pg_conn, sink.schema) == before
    assert count(pg_conn, sink.schema, "trades") == 10


def test_concurrent_migrations_do_not_collide(pg_dsn: str, pg_conn: psycopg.Connection, unique_name: str):
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def migrate() -> None:
        s = TimescaleSink(pg_dsn, schema=unique_name)
        try:
            start.wait()
            s.open()
            s.write(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(50)))  # same day partition, same rows
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert count(pg_conn, unique_name, "trades") == 50
    finally:
        pg_conn.execute(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE')


def test_trades_read_back_exactly(sink: TimescaleSink, pg_conn: psycopg.Connection):
    trades = make_trades(5)
    trades["price"][1] = -1
    trades["price"][2] = UNDEF_PRICE
    trades["price"][3] = np.iinfo(np.int64).min + 1
    trades["match_id"][4] = U64_MAX
    trades["order_id"][4] = 2**63
    trades["instrument_id"][4] = 99  # no symbol known yet
    trades["cross_type"][3] = b"O"
    trades["action"][3] = Action.CROSS
    trades["printable"][2] = 0
    trades["flags"][1] = 0x0102
    sink.write(MarketBatch("nasdaq", SYMBOLS, trades=trades))

    rows = q(pg_conn, f'SELECT * FROM "{sink.schema}".trades ORDER BY sequence')
    assert len(rows) == 5
    t0 = int(trades["ts_event"][0])
    assert rows[0] == {
        "ts": dt.datetime.fromtimestamp(t0 // 1000 // 1_000_000, UTC) + dt.timedelta(microseconds=t0 // 1000 % 1_000_000),
        "ts_event_ns": t0,
        "ts_recv_ns": t0 + 250,
        "venue": "nasdaq",
        "symbol": "AAPL",
        "instrument_id": 1,
        "price": Decimal("187.25"),
        "size": 100,
        "order_id": 9_000,
        "match_id": 50_000,
        "sequence": 1_000,
        "action": "E",
        "side": "B",
        "printable": True,
        "cross_type": "",
        "flags": 0,
    }
    assert [r["ts_event_ns"] for r in rows] == trades["ts_event"].tolist()
    assert [r["ts"] for r in rows] == [
        dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=int(v) // 1000) for v in trades["ts_event"]]
    assert rows[1]["price"] == Decimal("-0.000000001")
    assert rows[1]["flags"] == 0x0102
    assert rows[2]["price"] is None
    assert rows[2]["printable"] is False
    assert rows[3]["price"] == Decimal("-9223372036.854775807")
    assert (rows[3]["action"], rows[3]["cross_type"]) == ("X", "O")
    assert rows[4]["match_id"] == U64_MAX
    assert rows[4]["order_id"] == 2**63
    assert (rows[4]["instrument_id"], rows[4]["symbol"]) == (99, "")
    assert sink.counters["rows_trades"] == 5


def test_bbo_and_status_read_back_exactly(sink: TimescaleSink, pg_conn: psycopg.Connection):
    bbo = make_bbo(4)
    bbo["ask_px"][2] = UNDEF_PRICE  # empty ask side
    bbo["ask_sz"][2] = 0
    sink.write(MarketBatch("nasdaq", SYMBOLS, bbo=bbo, status=make_status()))

    rows = q(pg_conn, f'SELECT * FROM "{sink.schema}".bbo ORDER BY sequence')
    assert [(r["sequence"], r["symbol"], r["bid_px"], r["ask_px"], r["bid_sz"], r["ask_sz"], r["ts_event_ns"])
            for r in rows] == [
        (10, "AAPL", Decimal("100"), Decimal("100.01"), 300, 400, int(bbo["ts_event"][0])),
        (11, "MSFT", Decimal("100.000000001"), Decimal("100.010000001"), 300, 401, int(bbo["ts_event"][1])),
        (12, "AAPL", Decimal("100.000000002"), None, 300, 0, int(bbo["ts_event"][2])),
        (13, "MSFT", Decimal("100.000000003"), Decimal("100.010000003"), 300, 403, int(bbo["ts_event"][3])),
    ]
    assert {(r["bid_ct"], r["ask_ct"]) for r in rows} == {(2, 3)}

    status = q(pg_conn, f'SELECT * FROM "{sink.schema}".status ORDER BY sequence')
    assert [(r["sequence"], r["symbol"], r["kind"], r["state"], r["code"], r["reason"], r["price_1"], r["price_3"])
            for r in status] == [
        (7, "AAPL", "TRADING_ACTION", "HALTED", "H", "T1", None, None),
        (8, "", "MWCB_LEVELS", "UNCHANGED", "", "", Decimal("4000.123456789"), Decimal("3300")),
    ]


def test_reingest_adds_no_rows(sink: TimescaleSink, pg_conn: psycopg.Connection):
    builder = BarBuilder(venue=1)
    trades = make_trades(2_000)
    builder.add_trades(trades)
    batch = MarketBatch("nasdaq", SYMBOLS, trades=trades, bbo=make_bbo(500), status=make_status(),
                        ohlcv=builder.finish())
    tables = ("trades", "bbo", "status", "instruments", *(f"ohlcv_{i}" for i in BAR_INTERVALS))
    sink.write(batch)
    first = {t: count(pg_conn, sink.schema, t) for t in tables}
    assert first["trades"] == 2_000 and first["bbo"] == 500 and first["instruments"] == 3

    sink.write(batch)
    other = TimescaleSink(sink.dsn, schema=sink.schema)  # a new process replaying the same capture
    other.open()
    other.write(batch)
    other.close()
    assert {t: count(pg_conn, sink.schema, t) for t in tables} == first
    assert other.counters["duplicates_trades"] == 2_000
    assert other.counters.get("rows_trades", 0) == 0

    # An overlapping batch: only its new half is added.
    sink.write(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(2_000, start=1_000)))
    assert count(pg_conn, sink.schema, "trades") == 3_000
    # The same trades under another venue are other trades.
    sink.write(MarketBatch("nasdaq-psx", SYMBOLS, trades=trades[:10]))
    assert count(pg_conn, sink.schema, "trades") == 3_010


def test_a_batch_of_many_copy_parts_goes_in_whole_and_once(sink: TimescaleSink, pg_conn: psycopg.Connection):
    """More rows than one streamed COPY part: all of them, exactly; again (a re-ingest mid-stream): none."""
    n = 2 * COPY_PART_ROWS + 5
    trades = make_trades(n)
    sink.write(MarketBatch("nasdaq", SYMBOLS, trades=trades))
    got = pg_conn.execute(f'SELECT match_id, ts_event_ns, price FROM "{sink.schema}".trades ORDER BY match_id').fetchall()
    assert [(int(m), t) for m, t, _ in got] == list(zip(trades["match_id"].tolist(), trades["ts_event"].tolist()))
    assert got[-1][2] == Decimal(int(trades["price"][-1])).scaleb(-9)
    # Its first three rows are there already: the stream fails at once, the staged path adds the rest.
    sink.write(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(n, start=n - 3)))
    assert count(pg_conn, sink.schema, "trades") == 2 * n - 3
    assert sink.counters["duplicates_trades"] == 3 and sink.counters["conflict_fallbacks"] == 1


def test_partitions_per_day_and_a_batch_spanning_two_days(sink: TimescaleSink, pg_conn: psycopg.Connection):
    before_midnight = DAY1 + NS_DAY - 5_000_000  # 5 ms before 2024-03-16 00:00 UTC
    trades = make_trades(10, t0=before_midnight)  # 1 ms apart: 5 on the 15th, 5 on the 16th
    sink.write(MarketBatch("nasdaq", SYMBOLS, trades=trades))
    rows = q(pg_conn, f'SELECT tableoid::regclass::text AS part, ts_event_ns FROM "{sink.schema}".trades ORDER BY 2')
    parts = [r["part"].rpartition(".")[2] for r in rows]
    assert parts == ["trades_p20240315"] * 5 + ["trades_p20240316"] * 5
    assert sink.counters["partitions_created"] == 2

    # A later day in a later batch gets its own partition; known days are not created again.
    sink.write(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(3, start=100, t0=DAY1 + 3 * NS_DAY)))
    sink.write(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(3, start=200)))
    bounds = pg_conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1", (f'"{sink.schema}".trades',)).fetchall()
    assert bounds == [
        ("trades_p20240315", "FOR VALUES FROM ('2024-03-15 00:00:00+00') TO ('2024-03-16 00:00:00+00')"),
        ("trades_p20240316", "FOR VALUES FROM ('2024-03-16 00:00:00+00') TO ('2024-03-17 00:00:00+00')"),
        ("trades_p20240318", "FOR VALUES FROM ('2024-03-18 00:00:00+00') TO ('2024-03-19 00:00:00+00')"),
    ]
    assert sink.counters["partitions_created"] == 3
    assert count(pg_conn, sink.schema, "trades") == 16

    # A new sink finds the partitions already there.
    other = TimescaleSink(sink.dsn, schema=sink.schema)
    other.open()
    other.write(MarketBatch("nasdaq", SYMBOLS, trades=trades))
    other.close()
    assert "partitions_created" not in other.counters


def test_bars_go_to_the_ohlcv_tables(sink: TimescaleSink, pg_conn: psycopg.Connection):
    builder = BarBuilder(venue=1)
    trades = make_trades(3_000)  # about 3 s of trades, 3 instruments
    trades["price"][5] = UNDEF_PRICE
    builder.add_trades(trades)
    bars = builder.finish()
    sink.write(MarketBatch("nasdaq", SYMBOLS, ohlcv=bars))

    for interval in BAR_INTERVALS:
        expected = bars[interval]
        rows = q(pg_conn, f'SELECT * FROM "{sink.schema}".ohlcv_{interval} ORDER BY ts, instrument_id')
        assert len(rows) == len(expected) > 0
        for row, bar in zip(rows, expected, strict=True):
            assert row["ts_event_ns"] == bar["ts_event"]
            assert row["ts"] == dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=int(bar["ts_event"]) // 1000)
            assert (row["venue"], row["instrument_id"], row["symbol"]) == ("nasdaq", bar["instrument_id"],
                                                                          SYMBOLS[int(bar["instrument_id"])])
            for name in ("open", "high", "low", "close", "vwap"):
                assert row[name] == Decimal(int(bar[name])) / 1_000_000_000, name
            assert (row["volume"], row["trades"]) == (bar["volume"], bar["trades"])
    daily = q(pg_conn, f'SELECT ts FROM "{sink.schema}".ohlcv_1d')
    assert [r["ts"] for r in daily] == [dt.datetime(2024, 3, 15, 4, tzinfo=UTC)] * 3  # New York midnight (EDT)
    assert sink.counters["bars_skipped"] == len(bars["5m"])  # no 5m table

    # Bars are state: a later bar for the same start replaces the earlier one, no new row.
    later = bars["1m"].copy()
    later["close"] += 1
    later["volume"] += 7
    sink.write(MarketBatch("nasdaq", SYMBOLS, ohlcv={"1m": later}))
    rows = q(pg_conn, f'SELECT close, volume FROM "{sink.schema}".ohlcv_1m ORDER BY ts, instrument_id')
    assert [(r["close"], r["volume"]) for r in rows] == [
        (Decimal(int(c)) / 1_000_000_000, int(v)) for c, v in zip(later["close"], later["volume"], strict=True)]


def test_instruments_directory_upserts_symbols(sink: TimescaleSink, pg_conn: psycopg.Connection):
    sink.write(MarketBatch("nasdaq", dict(SYMBOLS)))
    renamed = {**SYMBOLS, 3: "BRK.B", 4: "ZVZZT"}
    sink.write(MarketBatch("nasdaq", renamed))
    sink.write(MarketBatch("iex", {1: "AAPL"}))
    rows = q(pg_conn, f'SELECT venue, instrument_id, symbol FROM "{sink.schema}".instruments ORDER BY 1, 2')
    assert [tuple(r.values()) for r in rows] == [
        ("iex", 1, "AAPL"), ("nasdaq", 1, "AAPL"), ("nasdaq", 2, "MSFT"), ("nasdaq", 3, "BRK.B"), ("nasdaq", 4, "ZVZZT")]
    assert sink.counters["rows_instruments"] == 3 + 2 + 1  # only new or changed entries are sent


def test_sink_through_the_runner(sink: TimescaleSink, pg_conn: psycopg.Connection):
    sink.close()
    runner = SinkRunner(sink, max_batches=256)
    for k in range(20):
        runner.offer(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(100, start=100 * k), bbo=make_bbo(10)))
    report = runner.stop(deadline_s=30)
    assert report["written"] == 20
    assert "failures" not in report, runner.last_error
    assert count(pg_conn, sink.schema, "trades") == 2_000
    assert count(pg_conn, sink.schema, "bbo") == 10
    assert report["timescale_rows_trades"] == 2_000
    assert report["timescale_batches"] == 20
    assert report["timescale_copy_seconds"] > 0


def test_a_lost_connection_is_recovered_by_the_runner(sink: TimescaleSink, pg_conn: psycopg.Connection):
    sink.close()
    runner = SinkRunner(sink, backoff_s=0.01)
    runner.offer(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(10)))
    while runner.counts["written"] < 1:
        threading.Event().wait(0.01)
    pg_conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s", (sink.conn.info.backend_pid,))
    runner.offer(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(10, start=10)))
    report = runner.stop(deadline_s=30)
    assert report["written"] == 2
    assert report["restarts"] == 1
    assert count(pg_conn, sink.schema, "trades") == 20


def test_query_indexes_on_request(pg_dsn: str, pg_conn: psycopg.Connection, unique_name: str):
    s = TimescaleSink(pg_dsn, schema=unique_name, query_indexes=True)
    try:
        s.open()
        s.write(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(5)))
        indexes = pg_conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'trades' ORDER BY 1",
            (unique_name,)).fetchall()
        assert any("(venue, instrument_id, ts)" in r[0] for r in indexes)
    finally:
        s.close()
        pg_conn.execute(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE')


def test_timescale_mode_matches_the_server(pg_dsn: str, pg_conn: psycopg.Connection, unique_name: str):
    available = pg_conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    s = TimescaleSink(pg_dsn, schema=unique_name, mode="timescale")
    try:
        if available is None:
            with pytest.raises(RuntimeError, match="timescaledb extension is not available"):
                s.open()
        else:
            s.open()
            assert s.mode == "timescale"
            s.write(MarketBatch("nasdaq", SYMBOLS, trades=make_trades(100)))
            views = {r[0] for r in pg_conn.execute(
                "SELECT table_name FROM information_schema.views WHERE table_schema = %s", (unique_name,))}
            assert {f"ohlcv_{i}" for i in BAR_INTERVALS} <= views
    finally:
        s.close()
        pg_conn.execute(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE')


def test_empty_batch_writes_nothing(sink: TimescaleSink, pg_conn: psycopg.Connection):
    sink.write(MarketBatch("nasdaq", {}, ohlcv={"1m": ohlcv_record("1m").empty(0)}))
    assert count(pg_conn, sink.schema, "trades") == 0
    assert sink.counters["batches"] == 1
    assert not any(k.startswith("rows_") for k in sink.counters)
