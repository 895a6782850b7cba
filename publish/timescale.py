"""TimescaleDB / PostgreSQL sink: trades, quotes, bars, status and the symbol directory in SQL tables.

Rules this module keeps:
- One set of tables and columns in both modes, so dashboards run unchanged:
  ``trades``, ``bbo``, ``status``, ``instruments`` tables and ``ohlcv_1s`` .. ``ohlcv_1d``.
  Each row has ``ts`` (timestamptz, ts_event truncated to the µs) and ``ts_event_ns`` (the exact ns).
- Two modes, chosen at ``open()``. **timescale** (the extension is installed, or can be): hypertables
  on ``ts`` (1-day chunks), compression after ``compress_after``, and the ``ohlcv_*`` names are views
  over continuous aggregates of ``trades`` (the pipeline's bars are not written). **plain**: tables
  range-partitioned by UTC day on ``ts`` (a day's partition is created when a batch first needs it)
  and ``ohlcv_*`` tables filled from ``MarketBatch.ohlcv``. A schema keeps the mode it was created in.
- Idempotent: every table has a natural unique key (including ``ts``, as partitioning requires);
  events are inserted ``ON CONFLICT DO NOTHING``, bars and instruments upserted (a later bar of the
  same start replaces an earlier one). Re-ingesting a capture adds no rows.
- Fast: each array goes in as one binary COPY built column-wise (``publish.postgres_sink``), streamed
  in parts of ``COPY_PART_ROWS`` rows so the server inserts and maintains the unique key while the
  next part is encoded. The COPY goes straight into the table inside a savepoint; only if that hits
  the unique key (a re-ingest) is the batch re-sent through a temp table and ``INSERT ... ON CONFLICT``.
- ``open()`` migrates under a session advisory lock, so processes starting together are safe, and
  running it again changes nothing.
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from parsers.schema import StatusKind, TradingState
from publish.batch import MarketBatch
from publish.postgres_sink import (
    PRICE_SQL_TYPE,
    U64_SQL_TYPE,
    PgColumn,
    Text,
    copy_binary,
    copy_insert,
    copy_rows,
    copy_stream,
    ident_list,
)

NS_PER_DAY = 86_400_000_000_000
# Bar tables and their time_bucket widths (the pipeline's other intervals, e.g. 5m, are not stored).
BAR_INTERVALS = {"1s": "1 second", "1m": "1 minute", "1h": "1 hour", "1d": "1 day"}
MIGRATION_LOCK = "feedhandler.timescale.migrate"
COPY_PART_ROWS = 8192  # rows encoded per part of a streamed COPY


def _code_words(enum_type: type | None = None) -> list[str]:
    """Words for a u1 code column: the enum member's name, else the ASCII letter ("" for 0)."""
    names = {int(m): m.name for m in enum_type} if enum_type else {}
    return [names.get(i, chr(i) if 32 < i < 127 else ("" if i == 0 else str(i))) for i in range(256)]


@dataclass(frozen=True)
class Col:
    """A table column and where its values come from in the record array.

    ``source``: a record field name; ``@ts`` (ts_event), ``@venue`` (the batch's venue name) or
    ``@symbol`` (the instrument's symbol). ``words``: a u1 code column stored as text.
    """

    name: str
    sql_type: str
    kind: str
    source: str
    words: tuple[str, ...] | None = None

    @property
    def pg(self) -> PgColumn:
        return PgColumn(self.name, self.sql_type, self.kind)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Col, ...]
    # Unique key, ``ts`` included (partitions need it). Time first: rows arrive in time order, so the
    # index grows at its right edge, which halves the cost of keeping it (an (instrument, ts) key
    # scatters inserts over every instrument's range).
    key: tuple[str, ...]
    upsert: tuple[str, ...] = ()  # columns replaced on conflict (empty: DO NOTHING)
    partitioned: bool = True  # by ts (plain mode) / hypertable (timescale mode)
    indexes: tuple[tuple[str, ...], ...] = ()  # per-instrument query indexes, made with query_indexes=True


def _head(with_recv: bool = True) -> tuple[Col, ...]:
    cols = [
        Col("ts", "timestamptz NOT NULL", "timestamptz", "@ts"),
        Col("ts_event_ns", "bigint NOT NULL", "int8", "ts_event"),
    ]
    if with_recv:
        cols.append(Col("ts_recv_ns", "bigint NOT NULL", "int8", "ts_recv"))
    return (*cols,
            Col("venue", 'text COLLATE "C" NOT NULL', "text", "@venue"),
            Col("symbol", "text NOT NULL", "text", "@symbol"),
            Col("instrument_id", "bigint NOT NULL", "int8", "instrument_id"))


def _price(name: str, source: str | None = None) -> Col:
    return Col(name, PRICE_SQL_TYPE, "price", source or name)


def _u64(name: str) -> Col:
    return Col(name, f"{U64_SQL_TYPE} NOT NULL", "u64", name)


def _int(name: str, sql_type: str = "bigint", kind: str = "int8") -> Col:
    return Col(name, f"{sql_type} NOT NULL", kind, name)


TRADES = Table(
    "trades",
    (*_head(), _price("price"), _int("size"), _u64("order_id"), _u64("match_id"), _u64("sequence"),
     Col("action", "text NOT NULL", "text", "action", tuple(_code_words())),
     Col("side", "text NOT NULL", "text", "side", tuple(_code_words())),
     Col("printable", "boolean NOT NULL", "bool", "printable"),
     Col("cross_type", "text NOT NULL", "text", "cross_type"),
     _int("flags", "integer", "int4")),
    key=("ts", "ts_event_ns", "instrument_id", "match_id", "venue"),
    indexes=(("venue", "instrument_id", "ts"),),
)
BBO_TABLE = Table(
    "bbo",
    (*_head(), _u64("sequence"), _price("bid_px"), _price("ask_px"), _int("bid_sz"), _int("ask_sz"),
     _int("bid_ct"), _int("ask_ct"), _int("flags", "integer", "int4")),
    key=("ts", "sequence", "instrument_id", "venue"),
    indexes=(("venue", "instrument_id", "ts"),),
)
STATUS_TABLE = Table(
    "status",
    (*_head(), _u64("sequence"),
     Col("kind", "text NOT NULL", "text", "kind", tuple(_code_words(StatusKind))),
     Col("state", "text NOT NULL", "text", "state", tuple(_code_words(TradingState))),
     Col("code", "text NOT NULL", "text", "code"), Col("reason", "text NOT NULL", "text", "reason"),
     _price("price_1"), _price("price_2"), _price("price_3"), _int("detail"), _int("flags", "integer", "int4")),
    key=("ts", "sequence", "venue"),
)
BAR_COLUMNS = (*_head(with_recv=False), _price("open"), _price("high"), _price("low"), _price("close"),
               _price("vwap"), _int("volume"), _int("trades"))
BAR_TABLES = {
    interval: Table(f"ohlcv_{interval}", BAR_COLUMNS, key=("ts", "instrument_id", "venue"),
                    upsert=tuple(c.name for c in BAR_COLUMNS if c.name not in ("venue", "instrument_id", "ts")))
    for interval in BAR_INTERVALS
}
INSTRUMENTS = Table(
    "instruments",
    (Col("venue", 'text COLLATE "C" NOT NULL', "text", "@venue"),
     _int("instrument_id"),
     Col("symbol", "text NOT NULL", "text", "symbol")),
    key=("venue", "instrument_id"),
    upsert=("symbol",),
    partitioned=False,
)
EVENT_TABLES = (TRADES, BBO_TABLE, STATUS_TABLE)
# A generated column, not sent: when the directory last changed the instrument's symbol.
_INSTRUMENTS_EXTRA = "updated_at timestamptz NOT NULL DEFAULT now()"


def _symbol_text(ids: np.ndarray, symbols: Mapping[int, str]) -> Text:
    unique, codes = np.unique(ids, return_inverse=True)
    return Text(codes.reshape(-1), [symbols.get(int(i), "") for i in unique.tolist()])


def table_values(table: Table, rows: np.ndarray, venue: str, symbols: Mapping[int, str]) -> list:
    """The COPY values of ``table``'s columns for record array ``rows`` (see ``Col``)."""
    n = len(rows)
    out: list = []
    for col in table.columns:
        if col.source == "@ts":
            out.append(rows["ts_event"])
        elif col.source == "@venue":
            out.append(Text.constant(venue, n))
        elif col.source == "@symbol":
            out.append(_symbol_text(rows["instrument_id"], symbols))
        elif col.words is not None:
            out.append(Text(rows[col.source], col.words))
        elif col.kind == "text":
            out.append(Text.of(rows[col.source]))
        elif col.kind == "int8" and rows.dtype[col.source] == np.uint64:
            values = rows[col.source]
            if n and values.max() > np.iinfo(np.int64).max:
                raise ValueError(f"{table.name}.{col.name}: a value exceeds bigint")
            out.append(values.astype(np.int64))
        else:
            out.append(rows[col.source])
    return out


class TimescaleSink:
    """The TimescaleDB / PostgreSQL sink (see the module rules); a ``publish.runner`` sink.

    Args:
        dsn: libpq connection string or URL.
        venue_tz: the venues' time zone: where continuous aggregates start a 1d bar (plain mode
            stores the pipeline's 1d bars, which ``orderbook.bars`` already starts at local midnight).
        schema: the PostgreSQL schema holding the tables (created if missing).
        mode: ``auto`` (timescale when the extension is there or can be created, else plain),
            ``plain`` or ``timescale``.
        compress_after: timescale mode: chunks older than this are compressed.
        query_indexes: also index trades and bbo on (venue, instrument_id, ts) for per-symbol queries
            (last price of a quiet symbol); costs ingest speed (docs/timescale.md).
    """

    name = "timescale"
    consumes = ("bbo", "trades", "status")  # MarketBatch arrays it stores (and ohlcv); L2 rows are not kept

    def __init__(self, dsn: str, venue_tz: str = "America/New_York", *, schema: str = "public",
                 mode: str = "auto", compress_after: str = "7 days", query_indexes: bool = False,
                 connect_timeout: int = 10) -> None:
        if mode not in ("auto", "plain", "timescale"):
            raise ValueError("mode must be auto, plain or timescale")
        self.dsn = dsn
        self.venue_tz = venue_tz
        self.schema = schema
        self.requested_mode = mode
        self.mode: str | None = None  # set by open()
        self.compress_after = compress_after
        self.query_indexes = query_indexes
        self.connect_timeout = connect_timeout
        self.conn: psycopg.Connection | None = None
        self.counters: dict[str, float] = {}
        self._days: dict[str, set[int]] = {}  # table -> UTC day numbers whose partition exists
        self._symbols_sent: dict[tuple[str, int], str] = {}
        self._symbols_seen: object = None  # the batch.symbols dict last looked at
        self._pending_symbols: dict[tuple[str, int], str] = {}

    # -- sink protocol ------------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        self._symbols_seen = None
        self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout)
        self.conn.execute("SET timezone = 'UTC'")
        self.migrate()

    def write(self, batch: MarketBatch) -> None:
        if self.conn is None:
            raise RuntimeError("TimescaleSink.write before open()")
        arrays = [(TRADES, batch.trades), (BBO_TABLE, batch.bbo), (STATUS_TABLE, batch.status)]
        for interval, bars in batch.ohlcv.items():
            if not len(bars):
                continue
            if interval not in BAR_TABLES:
                self._count("bars_skipped", len(bars))  # no table for this interval
            elif self.mode == "timescale":
                self._count("bars_skipped", len(bars))  # continuous aggregates compute them
            else:
                arrays.append((BAR_TABLES[interval], bars))
        instruments = self._instrument_rows(batch)
        started = time.perf_counter()
        if instruments is not None:
            self._load(INSTRUMENTS, copy_binary([c.pg for c in INSTRUMENTS.columns], instruments), len(instruments[1]))
        for table, rows in arrays:
            if not len(rows):
                continue
            if self.mode == "plain" and table.partitioned:
                self._ensure_days(table, rows["ts_event"])
            if table.upsert:
                data = copy_binary([c.pg for c in table.columns], table_values(table, rows, batch.venue, batch.symbols))
                self._load(table, data, len(rows))
            else:
                self._load_events(table, rows, batch.venue, batch.symbols)
        self._count("copy_seconds", time.perf_counter() - started)
        self._count("batches", 1)
        if instruments is not None:
            self._symbols_sent.update(self._pending_symbols)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    # -- migration ----------------------------------------------------------------------------------

    def _t(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def migrate(self) -> None:
        """Create what is missing (schema, tables, keys; timescale: hypertables, policies, aggregates)."""
        conn = self.conn
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (MIGRATION_LOCK,))
        try:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            self.mode = self._choose_mode()
            tables = [*EVENT_TABLES, INSTRUMENTS] + ([] if self.mode == "timescale" else list(BAR_TABLES.values()))
            for table in tables:
                conn.execute(self._create_sql(table, partitioned=self.mode == "plain" and table.partitioned))
                for columns in table.indexes if self.query_indexes else ():
                    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                        sql.Identifier(f"{table.name}_{'_'.join(columns)}_idx"), self._t(table.name),
                        ident_list(columns)))
            if self.mode == "timescale":
                self._migrate_timescale()
            else:
                self._days = {t.name: self._existing_days(t) for t in tables if t.partitioned}
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (MIGRATION_LOCK,))

    def _choose_mode(self) -> str:
        kind = self.conn.execute(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = 'trades'", (self.schema,)).fetchone()
        if kind is not None:  # a schema keeps the mode it was created in
            existing = "plain" if kind[0] == "p" else "timescale"
            if self.requested_mode not in ("auto", existing):
                raise RuntimeError(f"schema {self.schema!r} was created in {existing} mode")
            return existing
        if self.requested_mode == "plain":
            return "plain"
        available = self.conn.execute(
            "SELECT installed_version FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
        if available is not None and available[0] is None:
            try:
                self.conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                available = ("created",)
            except psycopg.Error:
                available = None  # not preloaded, or no privilege
        if available is None:
            if self.requested_mode == "timescale":
                raise RuntimeError("the timescaledb extension is not available on this server")
            return "plain"
        return "timescale"

    def _create_sql(self, table: Table, partitioned: bool) -> sql.Composable:
        defs = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in table.columns]
        if table is INSTRUMENTS:
            defs.append(sql.SQL(_INSTRUMENTS_EXTRA))
        defs.append(sql.SQL("CONSTRAINT {} UNIQUE ({})").format(
            sql.Identifier(f"{table.name}_key"), ident_list(table.key)))
        return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}){}").format(
            self._t(table.name), sql.SQL(", ").join(defs),
            sql.SQL(" PARTITION BY RANGE (ts)") if partitioned else sql.SQL(""))

    def _migrate_timescale(self) -> None:
        """Hypertables, compression and the OHLCV continuous aggregates (TimescaleDB 2.x)."""
        conn = self.conn
        for table in EVENT_TABLES:
            name = f"{self.schema}.{table.name}"
            conn.execute("SELECT create_hypertable(%s::regclass, 'ts', chunk_time_interval => interval '1 day', "
                         "if_not_exists => true)", (name,))
            enabled = conn.execute(
                "SELECT compression_enabled FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = %s AND hypertable_name = %s", (self.schema, table.name)).fetchone()
            if not (enabled and enabled[0]):
                conn.execute(sql.SQL("ALTER TABLE {} SET (timescaledb.compress, "
                                     "timescaledb.compress_segmentby = 'venue, instrument_id', "
                                     "timescaledb.compress_orderby = 'ts')").format(self._t(table.name)))
            conn.execute("SELECT add_compression_policy(%s::regclass, %s::interval, if_not_exists => true)",
                         (name, self.compress_after))
        for interval, width in BAR_INTERVALS.items():
            agg = self._t(f"_ohlcv_{interval}_agg")
            bucket = sql.SQL("time_bucket({}::interval, ts)").format(sql.Literal(width))
            if interval == "1d":  # the venue's local day, as orderbook.bars makes it
                bucket = sql.SQL("time_bucket({}::interval, ts, {})").format(sql.Literal(width), sql.Literal(self.venue_tz))
            # Printed trades only; open/close in sequence (arrival) order; trades without a price count
            # in volume, not in prices. Broken trades are not known here (see docs/timescale.md).
            conn.execute(sql.SQL(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {agg} WITH (timescaledb.continuous) AS "
                "SELECT {bucket} AS ts, venue, instrument_id, last(symbol, sequence) AS symbol, "
                "first(price, sequence) FILTER (WHERE price IS NOT NULL) AS open, max(price) AS high, "
                "min(price) AS low, last(price, sequence) FILTER (WHERE price IS NOT NULL) AS close, "
                "sum(price * size) AS pv, sum(size) FILTER (WHERE price IS NOT NULL) AS priced_volume, "
                "sum(size) AS volume, count(*) AS trades "
                "FROM {trades} WHERE printable AND size > 0 GROUP BY 1, venue, instrument_id WITH NO DATA"
            ).format(agg=agg, bucket=bucket, trades=self._t("trades")))
            conn.execute(sql.SQL(
                "CREATE OR REPLACE VIEW {view} AS SELECT ts, "
                "((extract(epoch FROM ts) * 1000000)::bigint * 1000) AS ts_event_ns, venue, symbol, instrument_id, "
                "open, high, low, close, round(pv / nullif(priced_volume, 0), 9)::{price} AS vwap, "
                "volume::bigint AS volume, trades::bigint AS trades FROM {agg}"
            ).format(view=self._t(f"ohlcv_{interval}"), agg=agg, price=sql.SQL(PRICE_SQL_TYPE)))
            conn.execute("SELECT add_continuous_aggregate_policy(%s::regclass, start_offset => interval '3 days', "
                         "end_offset => %s::interval, schedule_interval => %s::interval, if_not_exists => true)",
                         (f"{self.schema}._ohlcv_{interval}_agg", width, "1 minute" if interval != "1d" else "1 hour"))

    # -- partitions (plain mode) --------------------------------------------------------------------

    def _existing_days(self, table: Table) -> set[int]:
        rows = self.conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass", (f'"{self.schema}"."{table.name}"',)).fetchall()
        days = set()
        for (relname,) in rows:
            stamp = relname.rpartition("_p")[2]
            if stamp.isdigit() and len(stamp) == 8:
                days.add((dt.date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:])) - dt.date(1970, 1, 1)).days)
        return days

    def _ensure_days(self, table: Table, ts_event: np.ndarray) -> None:
        """Create the UTC-day partitions ``ts_event`` needs that this sink has not seen yet."""
        known = self._days.setdefault(table.name, set())
        needed = [int(d) for d in np.unique(np.floor_divide(ts_event, NS_PER_DAY)) if int(d) not in known]
        if not needed:
            return
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{MIGRATION_LOCK}.{self.schema}.{table.name}",))
            for day in needed:
                start = dt.date(1970, 1, 1) + dt.timedelta(days=day)
                cur.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {part} PARTITION OF {parent} FOR VALUES FROM ({lo}) TO ({hi})"
                ).format(part=self._t(f"{table.name}_p{start:%Y%m%d}"), parent=self._t(table.name),
                         lo=sql.Literal(f"{start.isoformat()} 00:00:00+00"),
                         hi=sql.Literal(f"{(start + dt.timedelta(days=1)).isoformat()} 00:00:00+00")))
        known.update(needed)
        self._count("partitions_created", len(needed))

    # -- loading ------------------------------------------------------------------------------------

    def _conflict(self, table: Table) -> sql.Composable:
        if not table.upsert:
            return sql.SQL("ON CONFLICT DO NOTHING")
        sets = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in table.upsert]
        if table is INSTRUMENTS:
            sets.append(sql.SQL("updated_at = now()"))
        old = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in table.upsert)
        new = sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in table.upsert)
        return sql.SQL("ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE ({old}) IS DISTINCT FROM ({new})").format(
            key=ident_list(table.key), sets=sql.SQL(", ").join(sets), old=old, new=new)

    def _load(self, table: Table, data: bytes, n: int) -> None:
        """Bars and instruments: always staged and upserted (``copy_insert``, ``ON CONFLICT DO UPDATE``)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            inserted = copy_insert(cur, self._t(table.name), [c.pg for c in table.columns], data, self._conflict(table))
        self._count(f"rows_{table.name}", inserted)

    def _load_events(self, table: Table, rows: np.ndarray, venue: str, symbols: Mapping[int, str]) -> None:
        """Event rows: one COPY streamed part by part into the table; on a key conflict, the staged insert."""
        target = self._t(table.name)
        columns = [c.pg for c in table.columns]
        n = len(rows)

        def parts():
            for start in range(0, n, COPY_PART_ROWS):
                yield copy_rows(columns, table_values(table, rows[start:start + COPY_PART_ROWS], venue, symbols))

        with self.conn.transaction(), self.conn.cursor() as cur:
            try:
                with self.conn.transaction():
                    copy_stream(cur, target, columns, parts())
                inserted = n
            except psycopg.errors.UniqueViolation:
                self._count("conflict_fallbacks", 1)
                data = copy_binary(columns, table_values(table, rows, venue, symbols))
                inserted = copy_insert(cur, target, columns, data, self._conflict(table))
        self._count(f"rows_{table.name}", inserted)
        if n > inserted:
            self._count(f"duplicates_{table.name}", n - inserted)

    def _instrument_rows(self, batch: MarketBatch) -> list | None:
        """The instruments rows to upsert: symbols new or changed since this sink last sent them."""
        if batch.symbols is self._symbols_seen:
            return None
        self._symbols_seen = batch.symbols
        sent = self._symbols_sent
        pending = {(batch.venue, i): s for i, s in batch.symbols.items() if sent.get((batch.venue, i)) != s}
        self._pending_symbols = pending
        if not pending:
            return None
        ids = np.fromiter((i for _, i in pending), dtype=np.int64, count=len(pending))
        return [Text.constant(batch.venue, len(ids)), ids, Text(np.arange(len(ids)), list(pending.values()))]

    def _count(self, key: str, amount: float) -> None:
        self.counters[key] = self.counters.get(key, 0) + amount
