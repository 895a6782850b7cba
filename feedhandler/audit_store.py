"""The audit trail in PostgreSQL: ``audit_events``, ``orders``, ``fills``, ``positions``, ``accounts``.

``AuditStore`` is the ``audit`` callable of ``trading.engine.Engine``: ``store(commands, events)``
copies the batch onto a bounded queue and returns; everything else happens on two threads of its own,
so the order path never waits for the database.

    store = AuditStore(dsn, symbols={"AAPL": 1}, accounts={"alice": 1}, schema="audit")
    store.open()                        # connect, migrate, start the threads (raises if unreachable)
    engine = Engine(..., audit=store)   # store(commands, events[, client_ids]) per batch
    store.snapshot(ts, accounts, positions)   # the portfolio now and then (latest wins)
    store.flush(); store.close()

Rules this module keeps:
- Off the order path: ``__call__`` copies the rows and puts them on a queue (``max_queue`` batches); a
  full queue drops the batch, counted (``batches_dropped``). The builder thread turns batches into rows
  (``trading.audit.AuditTrail``: compiled, releases the GIL) and hands them to the writer thread; rows
  waiting for the database are bounded too (``max_pending_rows``): beyond it the oldest waiting rows
  are dropped, counted (``rows_dropped``), and the builder never blocks.
- One transaction per write: the audit rows, their fills and the latest state of the orders they
  touched go in together, as binary COPYs (``publish.postgres_sink``), so a crash leaves all or none.
- Idempotent: ``audit_events`` and ``fills`` are keyed by ``seq`` (the audit row number, continued
  from the table's largest at ``open()``) and inserted ``ON CONFLICT DO NOTHING``; ``orders`` is keyed
  by (``ts_order_ns``, ``order_id``), CAT's order key, and upserted only by a newer or equal update;
  ``positions`` and ``accounts`` are replaced by each snapshot. A write the server may or may not have
  committed (the connection died) is simply sent again after reconnecting (``batches_retried``).
- A lost connection is retried with backoff (``retry_s`` doubling up to ``max_retry_s``), forever:
  meanwhile rows wait (and overflow as above). A write the server refuses for its content (not the
  connection) is dropped and counted (``batches_failed``, ``last_error``) rather than retried forever.
- Migration is idempotent (``CREATE ... IF NOT EXISTS``) under an advisory lock. One store (one
  engine) writes a schema: ``seq`` is numbered by it. ``open()`` continues where the tables stand:
  ``seq`` after the largest, and the orders still open read back into the audit trail, so a restarted
  engine's fills of yesterday's GTC orders restate them and update their rows.

Counters: batches_in, batches_dropped (queue full, or their rows overflowed), rows_<table> (written),
writes (transactions), batches_retried, reconnects, rows_dropped (audit rows never written),
client_ids_dropped (not ASCII of at most 32 bytes: stored empty), batches_failed (refused content),
snapshots, pending_rows (built rows waiting for the database).
"""
from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import psycopg
from psycopg import sql

from publish.postgres_sink import (
    PRICE_SQL_TYPE,
    U64_SQL_TYPE,
    Text,
    advisory_lock,
    copy_binary,
    copy_insert,
    copy_into,
    ident_list,
)
from publish.timescale import Col, Table, _symbol_text
from parsers.schema import UNDEF_PRICE
from trading.audit import CAT_EVENT_TYPE, CLIENT_ID_BYTES, ORDER_STATE, AuditKind, AuditTrail, OrderStatus
from trading.orders import Liquidity, OrderSide, OrderType, Reason, TimeInForce

MIGRATION_LOCK = "feedhandler.audit_store.migrate"


def _words(codes: Mapping[int, str]) -> tuple[str, ...]:
    """Text for a u1 code column: index = code ("" for codes without a word)."""
    return tuple(codes.get(i, "") for i in range(256))


def _enum_words(enum_type) -> tuple[str, ...]:
    return _words({int(m): m.name.lower() for m in enum_type})


def _text(name: str, source: str | None = None, words: tuple[str, ...] | None = None) -> Col:
    return Col(name, "text NOT NULL", "text", source or name, words)


def _int(name: str, source: str | None = None) -> Col:
    return Col(name, "bigint NOT NULL", "int8", source or name)


def _money(name: str, source: str | None = None, null: bool = True) -> Col:
    return Col(name, PRICE_SQL_TYPE + ("" if null else " NOT NULL"), "price", source or name)


def _u64(name: str) -> Col:
    return Col(name, f"{U64_SQL_TYPE} NOT NULL", "u64", name)


_SIDE = _text("side", words=_enum_words(OrderSide))
_ORDER_TYPE = _text("order_type", words=_enum_words(OrderType))
_TIF = _text("tif", words=_words({int(m): m.name for m in TimeInForce}))
_LIQUIDITY = _text("liquidity", words=_words({int(m): m.name.lower() for m in Liquidity if m}))
_REASON = _text("reason", words=_words({int(m): m.name.lower() for m in Reason if m}))
_ACCOUNT = (_int("account_id", "account"), _text("account", "@account"))
_INSTRUMENT = (_int("instrument_id"), _text("symbol", "@symbol"))

AUDIT_EVENTS = Table(
    "audit_events",
    (_int("seq"), Col("ts", "timestamptz NOT NULL", "timestamptz", "ts"), _int("ts_ns", "ts"),
     _int("ts_order_ns", "ts_order"),
     _text("event", words=_enum_words(AuditKind)),
     _text("cat_event", "event", _words({int(k): v for k, v in CAT_EVENT_TYPE.items()})),
     _u64("order_id"), _text("client_order_id"), *_ACCOUNT, *_INSTRUMENT, _SIDE, _ORDER_TYPE, _TIF,
     _money("price"), _money("stop_price"), _int("qty"), _int("leaves"), _u64("counterparty_id"), _LIQUIDITY,
     _REASON),
    key=("seq",),
    partitioned=False,
    indexes=(("order_id", "ts_order_ns"), ("account_id", "ts")),
)
FILLS = Table(
    "fills",
    (_int("seq"), Col("ts", "timestamptz NOT NULL", "timestamptz", "ts"), _int("ts_ns", "ts"),
     _int("ts_order_ns", "ts_order"), _u64("order_id"), _text("client_order_id"), *_ACCOUNT, *_INSTRUMENT,
     _SIDE, _money("price", null=False), _int("qty"), _int("leaves"), _u64("counterparty_id"), _LIQUIDITY),
    key=("seq",),
    partitioned=False,
    indexes=(("account_id", "ts"),),
)
ORDERS = Table(
    "orders",
    (Col("ts_order", "timestamptz NOT NULL", "timestamptz", "ts_order"), _int("ts_order_ns", "ts_order"),
     _u64("order_id"), _text("client_order_id"), *_ACCOUNT, *_INSTRUMENT, _SIDE, _ORDER_TYPE, _TIF,
     _money("price"), _money("stop_price"), _int("qty"), _int("filled"), _int("leaves"),
     _text("status", words=_enum_words(OrderStatus)), _REASON, _int("ts_updated_ns", "ts_updated")),
    key=("ts_order_ns", "order_id"),
    upsert=("price", "stop_price", "qty", "filled", "leaves", "status", "reason", "ts_updated_ns"),
    partitioned=False,
    indexes=(("account_id", "ts_order"), ("client_order_id",)),
)
_SNAPSHOT_ACCOUNT = np.dtype([("account", "<i8"), ("ts", "<i8"), ("cash", "<i8"), ("long_value", "<i8"),
                              ("short_value", "<i8"), ("equity", "<i8"), ("realized", "<i8"), ("unrealized", "<i8"),
                              ("maintenance", "<i8"), ("initial", "<i8"), ("buying_power", "<i8"),
                              ("margin_excess", "<i8")])
_SNAPSHOT_POSITION = np.dtype([("account", "<i8"), ("instrument_id", "<i8"), ("ts", "<i8"), ("position", "<i8"),
                               ("cost", "<i8"), ("avg_price", "<i8"), ("mark", "<i8"), ("market_value", "<i8"),
                               ("unrealized", "<i8")])
ACCOUNTS = Table(
    "accounts",
    (*_ACCOUNT, *(_money(n, null=False) for n in _SNAPSHOT_ACCOUNT.names[2:]), _int("ts_ns", "ts")),
    key=("account_id",),
    upsert=(*_SNAPSHOT_ACCOUNT.names[2:], "ts_ns", "account"),
    partitioned=False,
)
POSITIONS = Table(
    "positions",
    (*_ACCOUNT, *_INSTRUMENT, _int("position"), _money("cost", null=False), _money("avg_price", null=False),
     _money("mark"), _money("market_value", null=False), _money("unrealized", null=False), _int("ts_ns", "ts")),
    key=("account_id", "instrument_id"),
    upsert=("position", "cost", "avg_price", "mark", "market_value", "unrealized", "ts_ns", "symbol", "account"),
    partitioned=False,
)
TABLES = (AUDIT_EVENTS, FILLS, ORDERS, ACCOUNTS, POSITIONS)
_UPDATED_AT = "updated_at timestamptz NOT NULL DEFAULT now()"  # orders, accounts, positions: when last written
_FILL_EVENT = np.uint8(AuditKind.FILL)
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)


class _Work:
    """Rows built from one or more batches, waiting to be written together."""

    __slots__ = ("audit", "orders", "accounts", "positions", "items")

    def __init__(self, audit=None, orders=None, accounts=None, positions=None, items: int = 1) -> None:
        self.audit = audit
        self.orders = orders
        self.accounts = accounts
        self.positions = positions
        self.items = items  # submissions (batches, snapshots) this covers: for flush()

    @property
    def audit_rows(self) -> int:
        return 0 if self.audit is None else len(self.audit)

    @property
    def rows(self) -> int:
        return sum(len(x) for x in (self.audit, self.orders, self.accounts, self.positions) if x is not None)


class AuditStore:
    """The audit trail writer (see the module rules).

    Args:
        dsn: libpq connection string or URL.
        symbols: symbol -> instrument id (the engine's); accounts: account name -> account id, or the
            names in the engine's order (``Engine`` numbers its accounts 0, 1, ... as given).
        schema: the PostgreSQL schema of the tables (created if missing).
        max_queue: batches waiting for the builder before new ones are dropped.
        max_pending_rows: built rows waiting for the database before the oldest are dropped.
        write_rows: rows per write (one transaction) at most, roughly.
        retry_s, max_retry_s: the reconnect backoff.
        connect_timeout: seconds per connection attempt.
        query_indexes: also index audit_events by (order_id, ts_order_ns) and (account_id, ts), fills
            by (account_id, ts) and orders by (account_id, ts_order) and client_order_id.
    """

    def __init__(self, dsn: str, *, symbols: Mapping[str, int], accounts: Mapping[str, int] | Sequence[str],
                 schema: str = "public",
                 max_queue: int = 65_536, max_pending_rows: int = 1 << 21, write_rows: int = 1 << 16,
                 retry_s: float = 0.05, max_retry_s: float = 5.0, connect_timeout: int = 5,
                 query_indexes: bool = True) -> None:
        self.dsn = dsn
        self.schema = schema
        self.symbols = {int(i): s for s, i in symbols.items()}
        if not isinstance(accounts, Mapping):
            accounts = {name: i for i, name in enumerate(accounts)}
        self.account_names = {int(i): a for a, i in accounts.items()}
        self.max_pending_rows = max_pending_rows
        self.write_rows = write_rows
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.connect_timeout = connect_timeout
        self.query_indexes = query_indexes
        self.counters: dict[str, int] = dict.fromkeys(
            ("batches_in", "batches_dropped", "writes", "batches_retried", "reconnects", "rows_dropped",
             "client_ids_dropped",
             "batches_failed", "snapshots", "pending_rows", *(f"rows_{t.name}" for t in TABLES)), 0)
        self.last_error: str | None = None
        self.trail = AuditTrail()
        self._inbox: queue.Queue = queue.Queue(max_queue)
        self._pending: collections.deque[_Work] = collections.deque()
        self._snapshot: _Work | None = None
        self._cond = threading.Condition()
        self._submitted = 0
        self._finished = 0
        self._stop = False
        self._threads: list[threading.Thread] = []
        self.conn: psycopg.Connection | None = None

    # -- the order path's side ----------------------------------------------------------------------

    def __call__(self, commands: np.ndarray, events: np.ndarray, client_ids: Sequence | None = None) -> None:
        """Queue one batch (copies of the rows; the caller may reuse its arrays). Never waits."""
        self._submitted += 1
        self.counters["batches_in"] += 1
        try:
            if self._stop or not self._threads:
                raise queue.Full
            self._inbox.put_nowait((commands.copy(), events.copy(), None if client_ids is None else list(client_ids)))
        except queue.Full:
            self.counters["batches_dropped"] += 1
            self._done(1)

    def snapshot(self, ts: int, accounts: Mapping[int, Mapping], positions: Sequence[Mapping]) -> None:
        """Queue the portfolio's state: ``{account id: Portfolio.account(id)}`` and ``Portfolio.positions()``.

        Replaces the ``accounts`` rows of those accounts and the ``positions`` table (positions not
        listed are gone: flat). A newer snapshot waiting replaces an older one.
        """
        acc = np.zeros(len(accounts), dtype=_SNAPSHOT_ACCOUNT)
        for row, (a, figures) in zip(acc, accounts.items()):
            row["account"] = a
            for name in _SNAPSHOT_ACCOUNT.names[2:]:
                row[name] = figures[name]
        pos = np.zeros(len(positions), dtype=_SNAPSHOT_POSITION)
        for row, p in zip(pos, positions):
            for name in _SNAPSHOT_POSITION.names:
                if name != "ts":
                    row[name] = np.iinfo(np.int64).max if p[name] is None else p[name]
        acc["ts"] = ts
        pos["ts"] = ts
        with self._cond:
            self._submitted += 1
            replaced = self._snapshot
            self._snapshot = _Work(accounts=acc, positions=pos)
            self.counters["snapshots"] += 1
            self._cond.notify_all()
        if replaced is not None:
            self._done(replaced.items)

    # -- life cycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect, migrate, continue ``seq`` from the table and start the threads."""
        if self._threads:
            return
        self.conn = self._connect()
        self.migrate()
        last = self.conn.execute(sql.SQL("SELECT coalesce(max(seq), 0) FROM {}").format(
            self._t(AUDIT_EVENTS.name))).fetchone()[0]
        self.trail.next_seq = int(last) + 1
        self.counters["orders_restored"] = self._restore_open_orders()
        self._stop = False
        self._threads = [threading.Thread(target=self._build_loop, name="audit-build", daemon=True),
                         threading.Thread(target=self._write_loop, name="audit-write", daemon=True)]
        for t in self._threads:
            t.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything submitted so far is written (or dropped); False on timeout."""
        target = self._submitted
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._finished < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is waiting (up to ``timeout``), stop the threads, disconnect."""
        if self._threads:
            self.flush(timeout)
            self._stop = True
            try:
                self._inbox.put(None, timeout=timeout)
            except queue.Full:
                pass
            with self._cond:
                self._cond.notify_all()
            for t in self._threads:
                t.join(timeout)
            self._threads = []
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    @property
    def backend_pid(self) -> int | None:
        """The writer connection's server process (for diagnostics)."""
        conn = self.conn
        return None if conn is None or conn.closed else conn.info.backend_pid

    # -- migration ----------------------------------------------------------------------------------

    def _t(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout)
        conn.execute("SET timezone = 'UTC'")
        return conn

    def migrate(self) -> None:
        """Create the schema, tables and indexes that are missing (idempotent, advisory-locked)."""
        with self.conn.transaction(), self.conn.cursor() as cur:
            advisory_lock(cur, MIGRATION_LOCK)
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            for table in TABLES:
                defs = [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in table.columns]
                if table.upsert:
                    defs.append(sql.SQL(_UPDATED_AT))
                defs.append(sql.SQL("CONSTRAINT {} PRIMARY KEY ({})").format(
                    sql.Identifier(f"{table.name}_pkey"), ident_list(table.key)))
                cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    self._t(table.name), sql.SQL(", ").join(defs)))
                for columns in table.indexes if self.query_indexes else ():
                    cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                        sql.Identifier(f"{table.name}_{'_'.join(columns)}_idx"), self._t(table.name),
                        ident_list(columns)))

    def _restore_open_orders(self) -> int:
        """Read the orders still open (or held) back into the audit trail, so that their later events
        (after a restart) restate their terms and update their ``orders`` rows."""
        columns = ("ts_order_ns", "ts_updated_ns", "order_id", "price", "stop_price", "client_order_id", "qty",
                   "filled", "leaves", "account_id", "instrument_id", "side", "order_type", "tif", "status", "reason")
        rows = self.conn.execute(sql.SQL("SELECT {} FROM {} WHERE status IN ('open', 'held')").format(
            ident_list(columns), self._t(ORDERS.name))).fetchall()
        out = ORDER_STATE.empty(len(rows))
        codes = {col.name: {w: i for i, w in enumerate(col.words) if w} for col in ORDERS.columns if col.words}
        for row, values in zip(out, rows):
            got = dict(zip(columns, values))
            for name in ("qty", "filled", "leaves"):
                row[name] = got[name]
            row["ts_order"], row["ts_updated"] = got["ts_order_ns"], got["ts_updated_ns"]
            row["order_id"] = got["order_id"]
            row["account"], row["instrument_id"] = got["account_id"], got["instrument_id"]
            for name in ("price", "stop_price"):
                row[name] = UNDEF_PRICE if got[name] is None else int(got[name].scaleb(9))
            row["client_order_id"] = got["client_order_id"].encode()
            for name in ("side", "order_type", "tif", "status", "reason"):
                row[name] = codes[name].get(got[name], 0)
        return self.trail.restore(out)

    # -- the builder thread -------------------------------------------------------------------------

    def _build_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < 256:  # what else is waiting goes in the same hand-off
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._inbox.put_nowait(None)  # room: this thread just took from the queue
                    break
                batch.append(more)
            audits, orders = [], []
            for commands, events, client_ids in batch:
                try:
                    audit, state = self.trail.build(commands, events, self._client_ids(client_ids))
                except Exception as exc:  # rows that are not COMMAND/ORDER_EVENT: counted, never fatal
                    self.last_error = f"audit: {type(exc).__name__}: {exc}"
                    self.counters["batches_failed"] += 1
                    continue
                audits.append(audit)
                orders.append(state)
            if not audits:
                self._done(len(batch))
                continue
            work = _Work(audit=np.concatenate(audits), orders=np.concatenate(orders), items=len(batch))
            self._hand_off(work)

    def _client_ids(self, client_ids: list | None) -> list | None:
        """The batch's client order ids, with the ones the audit cannot keep (over 32 bytes or not
        ASCII) made empty and counted (``client_ids_dropped``)."""
        if client_ids is None:
            return None
        out = []
        for c in client_ids:
            if c is None or c == "":
                out.append("")
            elif isinstance(c, str) and c.isascii() and len(c) <= CLIENT_ID_BYTES:
                out.append(c)
            else:
                self.counters["client_ids_dropped"] += 1
                self.last_error = f"audit: client order id {str(c)[:40]!r} is not ASCII of at most 32 bytes"
                out.append("")
        return out

    def _hand_off(self, work: _Work) -> None:
        dropped = 0
        with self._cond:
            self._pending.append(work)
            self.counters["pending_rows"] += work.rows
            while self.counters["pending_rows"] > self.max_pending_rows and len(self._pending) > 1:
                old = self._pending.popleft()
                self.counters["pending_rows"] -= old.rows
                self.counters["rows_dropped"] += old.audit_rows
                self.counters["batches_dropped"] += old.items
                dropped += old.items
            self._cond.notify_all()
        if dropped:
            self._done(dropped)

    def _done(self, items: int) -> None:
        with self._cond:
            self._finished += items
            self._cond.notify_all()

    # -- the writer thread --------------------------------------------------------------------------

    def _take(self) -> _Work | None:
        """The next write: waiting audit rows (up to ``write_rows``), else the snapshot; None to stop."""
        with self._cond:
            while not self._pending and self._snapshot is None:
                if self._stop:
                    return None
                self._cond.wait(0.5)
            if not self._pending:
                work, self._snapshot = self._snapshot, None
                return work
            parts = [self._pending.popleft()]
            rows = parts[0].rows
            while self._pending and rows + self._pending[0].rows <= self.write_rows:
                parts.append(self._pending.popleft())
                rows += parts[-1].rows
            self.counters["pending_rows"] -= rows
        if len(parts) == 1:
            return parts[0]
        return _Work(audit=np.concatenate([p.audit for p in parts]), orders=np.concatenate([p.orders for p in parts]),
                     items=sum(p.items for p in parts))

    def _write_loop(self) -> None:
        backoff = self.retry_s
        while True:
            work = self._take()
            if work is None:
                return
            while True:
                try:
                    if self.conn is None or self.conn.closed:
                        self.conn = self._connect()
                        self.counters["reconnects"] += 1
                    self._write(work)
                    backoff = self.retry_s
                    break
                except _CONNECTION_ERRORS as exc:
                    self.last_error = f"{type(exc).__name__}: {str(exc).strip()}"
                    self.counters["batches_retried"] += work.items
                    if self.conn is not None:
                        try:
                            self.conn.close()
                        except psycopg.Error:
                            pass
                    if self._stop:  # closing: what could not be written is dropped
                        self.counters["rows_dropped"] += work.audit_rows
                        break
                    time.sleep(backoff)
                    backoff = min(2 * backoff, self.max_retry_s)
                except (psycopg.Error, ValueError) as exc:  # the content: retrying would fail again
                    self.last_error = f"{type(exc).__name__}: {str(exc).strip()}"
                    self.counters["batches_failed"] += work.items
                    self.counters["rows_dropped"] += work.audit_rows
                    break
            self._done(work.items)

    def _write(self, work: _Work) -> None:
        """One transaction: audit rows, fills, orders (latest per order), or a snapshot."""
        plan = []
        if work.audit is not None and len(work.audit):
            plan.append((AUDIT_EVENTS, work.audit))
            fills = work.audit[work.audit["event"] == _FILL_EVENT]
            if len(fills):
                plan.append((FILLS, fills))
        if work.orders is not None and len(work.orders):
            plan.append((ORDERS, _latest_per_order(work.orders)))
        if work.accounts is not None and len(work.accounts):
            plan.append((ACCOUNTS, work.accounts))
        payloads = [(table, copy_binary([c.pg for c in table.columns], self._values(table, rows)), len(rows))
                    for table, rows in plan]
        counts = []
        with self.conn.transaction(), self.conn.cursor() as cur:
            for table, data, n in payloads:
                counts.append((table, self._load(cur, table, data, n)))
            if work.positions is not None:
                counts.append((POSITIONS, self._replace_positions(cur, work.positions)))
        for table, n in counts:
            self.counters[f"rows_{table.name}"] += n
        self.counters["writes"] += 1

    def _load(self, cur: psycopg.Cursor, table: Table, data: bytes, n: int) -> int:
        """COPY straight in; on a key conflict (a retried write) redo it through ``copy_insert``."""
        target = self._t(table.name)
        columns = [c.pg for c in table.columns]
        if table.upsert:
            return copy_insert(cur, target, columns, data, _upsert(table))
        try:
            with self.conn.transaction():
                copy_into(cur, target, columns, data)
            return n
        except psycopg.errors.UniqueViolation:
            return copy_insert(cur, target, columns, data)

    def _replace_positions(self, cur: psycopg.Cursor, rows: np.ndarray) -> int:
        """Upsert the snapshot's positions and delete the ones it does not list (gone flat)."""
        n = 0
        if len(rows):
            data = copy_binary([c.pg for c in POSITIONS.columns], self._values(POSITIONS, rows))
            n = copy_insert(cur, self._t(POSITIONS.name), [c.pg for c in POSITIONS.columns], data, _upsert(POSITIONS))
        ts = int(rows["ts"][0]) if len(rows) else None
        if ts is None:
            cur.execute(sql.SQL("DELETE FROM {}").format(self._t(POSITIONS.name)))
        else:
            cur.execute(sql.SQL("DELETE FROM {} WHERE ts_ns < %s").format(self._t(POSITIONS.name)), (ts,))
        return n

    def _values(self, table: Table, rows: np.ndarray) -> list:
        """The COPY values of ``table``'s columns for the record array ``rows``."""
        out: list = []
        for col in table.columns:
            if col.source == "@symbol":
                out.append(_symbol_text(rows["instrument_id"], self.symbols))
            elif col.source == "@account":
                out.append(_symbol_text(rows["account"], self.account_names))
            elif col.words is not None:
                out.append(Text(rows[col.source], col.words))
            elif col.kind == "text":
                out.append(Text.of(rows[col.source]))
            elif col.kind == "int8":
                values = rows[col.source]
                if values.dtype == np.uint64 and len(values) and values.max() > np.iinfo(np.int64).max:
                    raise ValueError(f"{table.name}.{col.name}: a value exceeds bigint")
                out.append(values.astype(np.int64, copy=False))
            else:
                out.append(rows[col.source])
        return out


def _upsert(table: Table) -> sql.Composable:
    """``ON CONFLICT`` for a state table: replace the row unless what is stored is newer."""
    sets = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in table.upsert]
    sets.append(sql.SQL("updated_at = now()"))
    newer = "ts_updated_ns" if "ts_updated_ns" in table.upsert else "ts_ns"
    return sql.SQL("ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE t.{col} <= EXCLUDED.{col}").format(
        key=ident_list(table.key), sets=sql.SQL(", ").join(sets), col=sql.Identifier(newer))


def _latest_per_order(orders: np.ndarray) -> np.ndarray:
    """The last row of each (ts_order, order_id): one upsert may not touch a row twice."""
    if len(orders) < 2:
        return orders
    reverse = orders[::-1]
    _, first = np.unique(np.stack([reverse["ts_order"].view(np.uint64), reverse["order_id"]], axis=1),
                         axis=0, return_index=True)
    return reverse[np.sort(first)][::-1]

