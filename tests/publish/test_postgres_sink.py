"""The binary COPY layer against the real PostgreSQL: every kind round-trips exactly; staged inserts."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import psycopg
import pytest
from psycopg import sql

from parsers.schema import UNDEF_PRICE
from publish.postgres_sink import (
    COPY_HEADER,
    COPY_TRAILER,
    PRICE_SQL_TYPE,
    U64_SQL_TYPE,
    PgColumn,
    Text,
    copy_binary,
    copy_insert,
    copy_into,
    copy_rows,
    copy_stream,
    ns_to_pg_us,
)

COLUMNS = [
    PgColumn("k", "integer", "int4"),
    PgColumn("ts", "timestamptz", "timestamptz"),
    PgColumn("ns", "bigint", "int8"),
    PgColumn("price", PRICE_SQL_TYPE, "price"),
    PgColumn("id", U64_SQL_TYPE, "u64"),
    PgColumn("name", "text", "text"),
    PgColumn("small", "smallint", "int2"),
    PgColumn("flag", "boolean", "bool"),
]
I64 = np.iinfo(np.int64)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def table(pg_conn: psycopg.Connection, unique_name: str):
    pg_conn.execute("SET timezone = 'UTC'")
    pg_conn.execute(sql.SQL("CREATE TABLE {} ({}, UNIQUE (k))").format(sql.Identifier(unique_name), sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in COLUMNS)))
    yield sql.Identifier(unique_name)
    pg_conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(unique_name)))


def rows_of(k, ts, price, ident, names, codes):
    n = len(k)
    return [np.asarray(k, np.int32), np.asarray(ts, np.int64), np.asarray(ts, np.int64), np.asarray(price, np.int64),
            np.asarray(ident, np.uint64), Text(np.asarray(codes), names), np.arange(n, dtype=np.int16) - 1,
            np.arange(n, dtype=np.uint8) % 2]


def fetch(conn: psycopg.Connection, table) -> list[tuple]:
    return conn.execute(sql.SQL("SELECT * FROM {} ORDER BY k").format(table)).fetchall()


def test_every_kind_round_trips_exactly(pg_conn: psycopg.Connection, table):
    ts = [0, 1_710_000_000_123_456_789, -1, -1_001, I64.max, 1]
    price = [1, -1, UNDEF_PRICE, I64.min + 1, 9_223_372_036_854_775_806, 187_250_000_000]
    ident = [0, 2**64 - 1, 12_345, 10**19, 2**63, 1]
    names = ["", "AAPL", "é\tx\\n\nÿ", "BRK B"]
    codes = [0, 1, 2, 3, 1, 2]
    data = copy_binary(COLUMNS, rows_of(range(6), ts, price, ident, names, codes))
    with pg_conn.cursor() as cur:
        copy_into(cur, table, COLUMNS, data)
    got = fetch(pg_conn, table)
    for k, row in enumerate(got):
        assert row[0] == k
        assert row[1] == EPOCH + dt.timedelta(microseconds=ts[k] // 1000)  # floor to the µs
        assert row[2] == ts[k]
        expected_price = None if price[k] == UNDEF_PRICE else Decimal(price[k]).scaleb(-9)
        assert row[3] == expected_price
        assert row[4] == ident[k]
        assert row[5] == names[codes[k]]
        assert row[6] == k - 1
        assert row[7] is bool(k % 2)
    assert got[1][3] == Decimal("-0.000000001")
    assert got[3][3] == Decimal("-9223372036.854775807")
    assert str(got[5][3]) == "187.250000000"  # the column's scale, not the sent digits


def test_ns_to_pg_us_floors():
    assert ns_to_pg_us(np.array([946_684_800_000_000_000, 946_684_800_000_000_999, -1])).tolist() == [
        0, 0, -946_684_800_000_001]


def test_rows_are_grouped_by_layout_not_lost(pg_conn: psycopg.Connection, table):
    rng = np.random.default_rng(7)
    n = 5_000
    names = ["", "A", "BB", "CCC", "DDDD", "ZVZZT", "LONGSYMBOL12345"]
    price = rng.integers(-10**12, 10**12, n)
    price[rng.random(n) < 0.3] = UNDEF_PRICE
    ident = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    codes = rng.integers(0, len(names), n)
    ts = rng.integers(-10**18, 10**18, n)
    data = copy_binary(COLUMNS, rows_of(range(n), ts, price, ident, names, codes))
    with pg_conn.cursor() as cur:
        copy_into(cur, table, COLUMNS, data)
    got = fetch(pg_conn, table)
    assert [r[2] for r in got] == ts.tolist()
    assert [r[3] for r in got] == [None if p == UNDEF_PRICE else Decimal(int(p)).scaleb(-9) for p in price]
    assert [r[4] for r in got] == ident.tolist()
    assert [r[5] for r in got] == [names[c] for c in codes]


def test_a_streamed_copy_in_parts_equals_one_copy(pg_conn: psycopg.Connection, table):
    rng = np.random.default_rng(8)
    n = 3_000
    names = ["", "A", "BRK B"]
    price = rng.integers(-10**12, 10**12, n)
    price[::7] = UNDEF_PRICE
    args = (range(n), rng.integers(-10**18, 10**18, n), price, rng.integers(0, 2**62, n).astype(np.uint64), names,
            rng.integers(0, 3, n))
    whole = rows_of(*args)
    cuts = [0, 1, 1, 999, 2_500, n]  # an empty part too
    parts = (copy_rows(COLUMNS, _slice(whole, a, b)) for a, b in zip(cuts, cuts[1:]))
    with pg_conn.cursor() as cur:
        copy_stream(cur, table, COLUMNS, parts)
    got = fetch(pg_conn, table)
    with pg_conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(table))
        copy_into(cur, table, COLUMNS, copy_binary(COLUMNS, whole))
    assert got == fetch(pg_conn, table) and len(got) == n
    assert copy_binary(COLUMNS, whole) == COPY_HEADER + copy_rows(COLUMNS, whole) + COPY_TRAILER


def _slice(values, a: int, b: int) -> list:
    return [Text(v.codes[a:b], v.words) if isinstance(v, Text) else v[a:b] for v in values]


def test_staged_insert_skips_rows_already_there(pg_conn: psycopg.Connection, table):
    def payload(keys):
        n = len(keys)
        return copy_binary(COLUMNS, rows_of(keys, [5] * n, [1] * n, [2] * n, ["x"], [0] * n))

    with pg_conn.transaction(), pg_conn.cursor() as cur:
        assert copy_insert(cur, table, COLUMNS, payload([1, 2, 3])) == 3
    with pg_conn.transaction(), pg_conn.cursor() as cur:
        assert copy_insert(cur, table, COLUMNS, payload([2, 3, 4, 4])) == 1  # duplicates inside one batch too
    assert [r[0] for r in fetch(pg_conn, table)] == [1, 2, 3, 4]


def test_text_from_numpy_bytes_and_constants():
    t = Text.of(np.array([b"O", b"", b"O", b"C\x00"], dtype="S2"))
    assert [t.words[c] for c in t.codes] == ["O", "", "O", "C"]
    c = Text.constant("nasdaq", 3)
    assert [c.words[i] for i in c.codes] == ["nasdaq"] * 3


def test_bad_input_is_refused_before_sending():
    cols = [PgColumn("name", "text", "text")]
    with pytest.raises(ValueError, match="NUL"):
        copy_binary(cols, [Text(np.array([0]), ["a\x00b"])])
    with pytest.raises(TypeError):
        copy_binary(cols, [np.array([1])])
    with pytest.raises(ValueError, match="rows"):
        copy_binary([PgColumn("a", "int", "int4"), PgColumn("b", "int", "int4")], [np.zeros(2), np.zeros(3)])
    with pytest.raises(ValueError, match="kind"):
        PgColumn("a", "int", "float")


def test_empty_payload_is_a_valid_copy(pg_conn: psycopg.Connection, table):
    data = copy_binary(COLUMNS, rows_of([], [], [], [], [], []))
    with pg_conn.cursor() as cur:
        copy_into(cur, table, COLUMNS, data)
    assert fetch(pg_conn, table) == []
