"""PostgreSQL sink for trades: the walking skeleton's real-server path (psycopg 3, COPY).

Rules this module keeps:
- The table's columns come from the trades dtype (fields starting with ``_`` are padding and left
  out), plus ``venue_name`` and ``symbol`` text columns; so the table follows the schema when it
  changes. ``migrate()`` is idempotent (CREATE TABLE IF NOT EXISTS, under an advisory lock).
- Values stay exact: u64 columns are ``numeric(20,0)`` (PostgreSQL has no unsigned bigint), prices
  are ``numeric(19,9)`` from the int64 1e-9 fixed point, UNDEF_PRICE becomes NULL. No floats.
- Re-ingesting the same trades adds no rows: a unique key over the trade's identity (venue,
  instrument, ts_event, sequence, match_id: whichever the dtype has) and ``INSERT ... ON CONFLICT DO
  NOTHING`` from a temp table filled by one COPY.
- The COPY text is formatted column by column with numpy (exact integer and price text, escapes);
  only the final tab/newline join runs over Python strings.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from parsers.schema import UNDEF_PRICE
from publish.redis_sink import prices_to_str, symbols_for

DEFAULT_TABLE = "trades"
# The identity of a trade, in key order; only the fields the dtype has are used.
TRADE_KEY_FIELDS = ("venue_name", "venue", "instrument_id", "ts_event", "sequence", "match_id")

_INT_TYPES = {
    ("i", 1): "smallint",
    ("i", 2): "smallint",
    ("i", 4): "integer",
    ("i", 8): "bigint",
    ("u", 1): "smallint",
    ("u", 2): "integer",
    ("u", 4): "bigint",
    ("u", 8): "numeric(20,0)",
}
PRICE_SQL_TYPE = "numeric(19,9)"  # int64 / 1e9: at most 10 integer digits and 9 decimals
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class PgColumn:
    """One table column: its name, SQL type and where its values come from."""

    name: str
    sql_type: str
    source: str  # "field", "price", "text" (a dtype field) or "venue_name", "symbol" (added)


def _default_trade_dtype() -> np.dtype:
    from parsers.schema import TRADE

    return TRADE.dtype


def table_columns(dtype: np.dtype, price_fields: Iterable[str] | None = None) -> list[PgColumn]:
    """The table's columns for trades of ``dtype``: venue_name, symbol, then the dtype's fields.

    Args:
        dtype: the trades structured dtype.
        price_fields: fields holding int64 1e-9 prices; default: int64 fields with "price" in the name.
    """
    names = dtype.names or ()
    if price_fields is None:
        prices = {n for n in names if "price" in n and dtype.fields[n][0] == np.dtype("<i8")}
    else:
        prices = set(price_fields)
    columns: list[PgColumn] = []
    for extra in ("venue_name", "symbol"):
        if extra not in names:
            columns.append(PgColumn(extra, "text NOT NULL", extra))
    for name in names:
        if name.startswith("_"):
            continue
        if not _IDENT.match(name):
            raise ValueError(f"field name {name!r} is not a plain SQL identifier")
        ft = dtype.fields[name][0]
        if name in prices:
            columns.append(PgColumn(name, PRICE_SQL_TYPE, "price"))
        elif ft.kind in "iu" and (ft.kind, ft.itemsize) in _INT_TYPES:
            columns.append(PgColumn(name, _INT_TYPES[(ft.kind, ft.itemsize)] + " NOT NULL", "field"))
        elif ft.kind == "b":
            columns.append(PgColumn(name, "boolean NOT NULL", "field"))
        elif ft.kind == "f":
            columns.append(PgColumn(name, ("real" if ft.itemsize <= 4 else "double precision") + " NOT NULL", "field"))
        elif ft.kind in "SU":
            columns.append(PgColumn(name, "text NOT NULL", "text"))
        else:
            raise TypeError(f"field {name!r} of type {ft} has no PostgreSQL mapping")
    return columns


def _copy_escape(text: np.ndarray) -> np.ndarray:
    """Escape a unicode array for COPY's text format."""
    for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r")):
        text = np.char.replace(text, raw, escaped)
    return text


def _column_text(column: PgColumn, trades: np.ndarray, venue: str, symbols: Mapping[int, str]) -> np.ndarray:
    n = len(trades)
    if column.source == "venue_name":
        return np.full(n, _copy_escape(np.array([venue]))[0])
    if column.source == "symbol":
        return _copy_escape(symbols_for(trades["instrument_id"], symbols))
    values = trades[column.name]
    if column.source == "price":
        return np.where(values == UNDEF_PRICE, "\\N", prices_to_str(values))
    if column.source == "text":
        if values.dtype.kind == "S":
            values = np.char.decode(values, "utf-8")
        return _copy_escape(np.char.rstrip(values, " \x00"))
    if values.dtype.kind == "b":
        return np.where(values, "t", "f")
    return values.astype(np.str_)  # integers exactly; floats as numpy's shortest round-trip text


def copy_text(columns: list[PgColumn], trades: np.ndarray, venue: str, symbols: Mapping[int, str]) -> bytes:
    """COPY text-format data (tab separated, ``\\N`` for NULL) for ``trades``."""
    if len(trades) == 0:
        return b""
    texts = [_column_text(column, trades, venue, symbols).tolist() for column in columns]
    # str.join over zipped columns: growing numpy string arrays would copy every line once per column.
    return ("\n".join(map("\t".join, zip(*texts, strict=True))) + "\n").encode()


class PostgresSink:
    """Write trades to one PostgreSQL table (see the module rules).

    Args:
        dsn: a libpq connection string or URL.
        dtype: the trades dtype; default ``parsers.schema.TRADE.dtype``.
        table: table name (a plain identifier); tests use their own.
        price_fields: see ``table_columns``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        dtype: np.dtype | None = None,
        table: str = DEFAULT_TABLE,
        price_fields: Iterable[str] | None = None,
        connect_timeout: int = 10,
    ) -> None:
        if not _IDENT.match(table):
            raise ValueError(f"table name {table!r} is not a plain SQL identifier")
        self.dtype = np.dtype(dtype) if dtype is not None else _default_trade_dtype()
        self.table = table
        self.columns = table_columns(self.dtype, price_fields)
        names = {c.name for c in self.columns}
        self.key_fields = [f for f in TRADE_KEY_FIELDS if f in names]
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout)

    def _ident_list(self, names: Iterable[str]) -> sql.Composable:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)

    def migrate(self) -> None:
        """Create the table and its unique key if missing. Safe to call any number of times."""
        column_defs = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in self.columns
        )
        create = sql.SQL("CREATE TABLE IF NOT EXISTS {table} ({columns}, CONSTRAINT {key} UNIQUE ({key_columns}))").format(
            table=sql.Identifier(self.table),
            columns=column_defs,
            key=sql.Identifier(f"{self.table}_trade_key"),
            key_columns=self._ident_list(self.key_fields),
        )
        with self.conn.transaction(), self.conn.cursor() as cur:
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the catalog: serialise.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"feedhandler.migrate.{self.table}",))
            cur.execute(create)

    def write_trades(self, venue: str, symbols: Mapping[int, str], trades: np.ndarray) -> int:
        """Insert ``trades`` (rows already present are skipped); returns the number of new rows.

        Args:
            venue: venue name, stored in ``venue_name``.
            symbols: instrument_id -> symbol, stored in ``symbol``.
            trades: structured array of this sink's dtype.
        """
        if trades.dtype != self.dtype:
            raise TypeError(f"trades dtype {trades.dtype} differs from the sink's {self.dtype}")
        if len(trades) == 0:
            return 0
        names = [c.name for c in self.columns]
        staging = sql.Identifier(f"_load_{self.table}")
        data = copy_text(self.columns, trades, venue, symbols)
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE TEMP TABLE {staging} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                    staging=staging, table=sql.Identifier(self.table)
                )
            )
            with cur.copy(sql.SQL("COPY {staging} ({cols}) FROM STDIN").format(staging=staging, cols=self._ident_list(names))) as copy:
                view = memoryview(data)
                for start in range(0, len(view), 1 << 20):
                    copy.write(view[start : start + (1 << 20)])
            cur.execute(
                sql.SQL("INSERT INTO {table} ({cols}) SELECT {cols} FROM {staging} ON CONFLICT DO NOTHING").format(
                    table=sql.Identifier(self.table), cols=self._ident_list(names), staging=staging
                )
            )
            return cur.rowcount

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PostgresSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
