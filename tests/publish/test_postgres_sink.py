"""PostgresSink against the real PostgreSQL: write, read back, re-ingest without duplicates."""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import psycopg
import pytest

from parsers.schema import TRADE, UNDEF_PRICE
from publish.postgres_sink import PostgresSink, table_columns

# A generic trades layout (not the project schema), so these tests pin the sink, not the schema.
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
        ("cross_type", "S2"),
        ("_pad", "V6"),
    ]
)
SYMBOLS = {1: "AAPL", 2: "MSFT", 3: "BRK B"}
U64_MAX = 2**64 - 1


def make_trades(n: int, start_seq: int = 1) -> np.ndarray:
    """Trades number start_seq .. start_seq + n - 1; the same number always gives the same trade."""
    t = np.zeros(n, dtype=TRADES)
    i = np.arange(start_seq - 1, start_seq - 1 + n, dtype=np.int64)
    t["ts_event"] = 1_700_000_000_000_000_000 + i * 1_000
    t["ts_recv"] = t["ts_event"] + 500
    t["price"] = 187_250_000_000 + i  # 187.25 + i * 1e-9
    t["size"] = 100 + i
    t["order_id"] = 10_000 + i
    t["match_id"] = 50_001 + i
    t["sequence"] = 1 + i
    t["instrument_id"] = 1 + i % 3
    t["venue"] = 7
    t["action"] = ord("E")
    t["side"] = ord("B")
    t["cross_type"] = b"O"
    return t


@pytest.fixture
def sink(pg_dsn: str, pg_conn: psycopg.Connection, unique_name: str):
    with PostgresSink(pg_dsn, dtype=TRADES, table=unique_name) as s:
        s.migrate()
        yield s
    pg_conn.execute(f'DROP TABLE IF EXISTS "{unique_name}"')


def fetch(conn: psycopg.Connection, table: str) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f'SELECT * FROM "{table}" ORDER BY sequence, match_id')
        return cur.fetchall()


def count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def test_columns_follow_the_dtype_without_padding():
    cols = {c.name: c.sql_type for c in table_columns(TRADES)}
    assert list(cols)[:2] == ["venue_name", "symbol"]
    assert "_pad" not in cols
    assert cols["price"] == "numeric(19,9)"
    assert cols["ts_event"] == "bigint NOT NULL"
    assert cols["match_id"] == "numeric(20,0) NOT NULL"
    assert cols["instrument_id"] == "bigint NOT NULL"
    assert cols["venue"] == "integer NOT NULL"
    assert cols["action"] == "smallint NOT NULL"
    assert cols["cross_type"] == "text NOT NULL"


def test_migrate_is_idempotent(sink: PostgresSink, pg_conn: psycopg.Connection):
    sink.migrate()
    sink.migrate()
    rows = pg_conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
        (sink.table,),
    ).fetchall()
    assert [r[0] for r in rows] == [c.name for c in sink.columns]
    key = pg_conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'u'",
        (sink.table,),
    ).fetchall()
    assert key == [("UNIQUE (venue_name, venue, instrument_id, ts_event, sequence, match_id)",)]


def test_written_rows_read_back_exactly(sink: PostgresSink, pg_conn: psycopg.Connection):
    trades = make_trades(5)
    trades["price"][1] = -1  # negative prices exist (spreads): -0.000000001
    trades["price"][2] = UNDEF_PRICE
    trades["price"][3] = np.iinfo(np.int64).min + 1
    trades["match_id"][4] = U64_MAX  # beyond bigint: must stay exact
    trades["cross_type"][4] = b""
    trades["instrument_id"][4] = 99  # no symbol known

    assert sink.write_trades("nasdaq", SYMBOLS, trades) == 5

    rows = fetch(pg_conn, sink.table)
    assert len(rows) == 5
    first = rows[0]
    assert first == {
        "venue_name": "nasdaq",
        "symbol": "AAPL",
        "ts_event": 1_700_000_000_000_000_000,
        "ts_recv": 1_700_000_000_000_000_500,
        "price": Decimal("187.25"),
        "size": 100,
        "order_id": 10_000,
        "match_id": 50_001,
        "sequence": 1,
        "instrument_id": 1,
        "venue": 7,
        "action": ord("E"),
        "side": ord("B"),
        "cross_type": "O",
    }
    assert rows[1]["price"] == Decimal("-0.000000001")
    assert rows[1]["symbol"] == "MSFT"
    assert rows[2]["price"] is None
    assert rows[2]["symbol"] == "BRK B"
    assert rows[3]["price"] == Decimal("-9223372036.854775807")
    assert rows[4]["match_id"] == U64_MAX
    assert rows[4]["cross_type"] == ""
    assert rows[4]["symbol"] == ""
    assert rows[4]["instrument_id"] == 99


def test_reingest_adds_no_duplicates(sink: PostgresSink, pg_conn: psycopg.Connection):
    trades = make_trades(1_000)
    assert sink.write_trades("nasdaq", SYMBOLS, trades) == 1_000
    assert sink.write_trades("nasdaq", SYMBOLS, trades) == 0
    assert count(pg_conn, sink.table) == 1_000

    # Overlapping batch: the second half is new.
    more = make_trades(1_000, start_seq=501)
    assert sink.write_trades("nasdaq", SYMBOLS, more) == 500
    assert count(pg_conn, sink.table) == 1_500

    # Same trades under another venue name are other trades.
    assert sink.write_trades("nasdaq-psx", SYMBOLS, trades[:10]) == 10
    assert count(pg_conn, sink.table) == 1_510


def test_duplicates_inside_one_batch_are_written_once(sink: PostgresSink, pg_conn: psycopg.Connection):
    trades = make_trades(3)
    doubled = np.concatenate([trades, trades])
    assert sink.write_trades("nasdaq", SYMBOLS, doubled) == 3
    assert [r["sequence"] for r in fetch(pg_conn, sink.table)] == [1, 2, 3]


def test_a_second_sink_on_the_same_table_sees_the_same_key(pg_dsn: str, sink: PostgresSink, pg_conn: psycopg.Connection):
    trades = make_trades(10)
    assert sink.write_trades("nasdaq", SYMBOLS, trades) == 10
    with PostgresSink(pg_dsn, dtype=TRADES, table=sink.table) as other:
        other.migrate()
        assert other.write_trades("nasdaq", SYMBOLS, trades) == 0
    assert count(pg_conn, sink.table) == 10


def test_text_needing_copy_escapes_round_trips(sink: PostgresSink, pg_conn: psycopg.Connection):
    trades = make_trades(2)
    symbols = {1: "A\tB\\C", 2: "new\nline"}
    assert sink.write_trades("ven\\ue", symbols, trades) == 2
    rows = fetch(pg_conn, sink.table)
    assert [r["symbol"] for r in rows] == ["A\tB\\C", "new\nline"]
    assert {r["venue_name"] for r in rows} == {"ven\\ue"}


def test_empty_batch_writes_nothing(sink: PostgresSink, pg_conn: psycopg.Connection):
    assert sink.write_trades("nasdaq", SYMBOLS, make_trades(0)) == 0
    assert count(pg_conn, sink.table) == 0


def test_wrong_dtype_is_refused(sink: PostgresSink):
    with pytest.raises(TypeError):
        sink.write_trades("nasdaq", SYMBOLS, np.zeros(1, dtype=[("price", "<i8")]))


def test_failed_write_leaves_the_table_unchanged(sink: PostgresSink, pg_conn: psycopg.Connection):
    trades = make_trades(3)
    trades["cross_type"][2] = b"\xff"  # not UTF-8: refused before anything is sent
    with pytest.raises(UnicodeDecodeError):
        sink.write_trades("nasdaq", SYMBOLS, trades)
    assert count(pg_conn, sink.table) == 0
    assert sink.write_trades("nasdaq", SYMBOLS, make_trades(3)) == 3


def test_project_trade_schema_is_accepted(pg_dsn: str, pg_conn: psycopg.Connection, unique_name: str):
    """The default dtype is parsers.schema.TRADE: the sink must take it as it is."""
    trades = TRADE.empty(2)
    trades["ts_event"] = [1, 2]
    trades["price"] = [1_000_000_000, UNDEF_PRICE]
    trades["size"] = [10, 20]
    trades["match_id"] = [5, 6]
    trades["sequence"] = [1, 2]
    trades["instrument_id"] = [1, 2]
    trades["cross_type"] = [b"O", b""]
    try:
        with PostgresSink(pg_dsn, table=unique_name) as s:
            s.migrate()
            assert s.write_trades("nasdaq", SYMBOLS, trades) == 2
            assert s.write_trades("nasdaq", SYMBOLS, trades) == 0
        rows = fetch(pg_conn, unique_name)
        assert [(r["symbol"], r["price"], r["size"], r["cross_type"]) for r in rows] == [
            ("AAPL", Decimal("1"), 10, "O"),
            ("MSFT", None, 20, ""),
        ]
        assert not any(name.startswith("_") for name in rows[0])
    finally:
        pg_conn.execute(f'DROP TABLE IF EXISTS "{unique_name}"')
