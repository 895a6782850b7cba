"""The PostgreSQL COPY layer: numpy columns -> binary COPY -> staged, idempotent insert.

``publish.timescale.TimescaleSink`` is the sink the pipeline runs; this module is what it (and a bench
or a test) uses to move numpy columns into PostgreSQL exactly and fast.

Rules this module keeps:
- Values stay exact. Prices (int64, 1e-9 units) go to ``numeric(19,9)`` with ``UNDEF_PRICE`` as NULL;
  u64 identifiers go to ``numeric(20,0)`` (PostgreSQL has no unsigned bigint); timestamps go to
  ``timestamptz`` truncated to the microsecond (PostgreSQL's resolution) and the exact ns to a bigint
  column beside it. No floats, no Decimal.
- The COPY payload is PostgreSQL's binary format, built without a Python object per row: rows are
  grouped by their layout (which values are NULL, how long each text is), each group is one packed
  numpy record array (big-endian fields, numeric digits precomputed column-wise), and the groups'
  bytes are concatenated. Row order in a COPY does not matter to a table, so grouping is free.
- Text comes dictionary-encoded (``Text``: per-row codes into a short list of words), which is what
  market text is (symbols per instrument, one venue, one-letter codes); each word is encoded to
  UTF-8 once.
- ``copy_stream`` sends one COPY in parts as they are encoded (a queued writer thread sends), so the
  server inserts (and keeps its indexes) while the client encodes the rest.
- ``copy_insert`` loads into a temp table and inserts with ``ON CONFLICT``, so re-sending rows adds
  none; ``advisory_lock`` serialises DDL between processes that start together.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from parsers.schema import UNDEF_PRICE

PRICE_SQL_TYPE = "numeric(19,9)"  # int64 / 1e9: at most 10 integer digits and 9 decimals
U64_SQL_TYPE = "numeric(20,0)"

# Column kinds: how a numpy column becomes a binary COPY field.
KINDS = ("int2", "int4", "int8", "bool", "timestamptz", "price", "u64", "text")

_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # signature, flags, no extension
_TRAILER = b"\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC in µs since the Unix epoch
_NUMERIC_NEG = 0x4000
_FIXED = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "bool": "u1", "timestamptz": ">i8"}
# numeric fields as u16 words: ndigits, weight, sign, dscale, then base-10000 digits (leading and
# trailing zero digits are allowed on input: the server strips them).
_PRICE_WORDS = 4 + 6  # weight 2: 3 integer digit groups (up to 9.2e9) and 3 fraction groups (9 decimals)
_U64_WORDS = 4 + 5  # weight 4: up to 1.8e19, no fraction


@dataclass(frozen=True)
class Text:
    """A dictionary-encoded text column: row i holds ``words[codes[i]]``."""

    codes: np.ndarray  # integer array, one per row
    words: Sequence[str]

    @classmethod
    def constant(cls, word: str, n: int) -> Text:
        return cls(np.zeros(n, dtype=np.intp), [word])

    @classmethod
    def of(cls, values: np.ndarray) -> Text:
        """From a numpy bytes (UTF-8, trailing NULs/spaces dropped) or str array."""
        words, codes = np.unique(values, return_inverse=True)
        if words.dtype.kind == "S":
            out = [w.rstrip(b" \x00").decode("utf-8") for w in words.tolist()]
        else:
            out = [w.rstrip(" \x00") for w in words.tolist()]
        return cls(codes.reshape(-1), out)


@dataclass(frozen=True)
class PgColumn:
    """One table column: name, SQL type (with constraints) and COPY kind (see ``KINDS``)."""

    name: str
    sql_type: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: kind {self.kind!r} is not one of {KINDS}")


def ns_to_pg_us(ts_ns: np.ndarray) -> np.ndarray:
    """int64 ns since the Unix epoch -> int64 µs since 2000-01-01 (floor: a timestamp never rounds up)."""
    return np.floor_divide(np.asarray(ts_ns, dtype=np.int64), 1000) - _PG_EPOCH_US


def _digit_groups(mag: np.ndarray, count: int) -> np.ndarray:
    """Base-10000 digits of uint64 ``mag``, most significant first, as an (n, count) uint16 array."""
    out = np.empty((len(mag), count), dtype=np.uint16)
    rest = mag.copy()
    for j in range(count - 1, -1, -1):
        out[:, j] = rest % np.uint64(10_000)
        rest //= np.uint64(10_000)
    return out


def price_words(prices: np.ndarray) -> np.ndarray:
    """Binary ``numeric`` words for int64 1e-9 prices (UNDEF_PRICE rows are garbage: sent as NULL)."""
    p = np.asarray(prices, dtype=np.int64)
    neg = p < 0
    mag = np.where(neg, (-(p + 1)).astype(np.uint64) + np.uint64(1), p.astype(np.uint64))
    whole = mag // np.uint64(1_000_000_000)
    frac = mag % np.uint64(1_000_000_000)
    words = np.empty((len(p), _PRICE_WORDS), dtype=np.uint16)
    words[:, 0] = 6
    words[:, 1] = 2
    words[:, 2] = np.where(neg, _NUMERIC_NEG, 0)
    words[:, 3] = 9
    words[:, 4:7] = _digit_groups(whole, 3)
    # 9 decimals = 4 + 4 + 1 digits: the last group carries the 9th decimal as its thousands digit.
    words[:, 7:10] = _digit_groups(frac * np.uint64(1000), 3)
    return words


def u64_words(values: np.ndarray) -> np.ndarray:
    """Binary ``numeric`` words for uint64 values."""
    v = np.asarray(values).astype(np.uint64)
    words = np.empty((len(v), _U64_WORDS), dtype=np.uint16)
    words[:, 0] = 5
    words[:, 1] = 4
    words[:, 2] = 0
    words[:, 3] = 0
    words[:, 4:] = _digit_groups(v, 5)
    return words


def copy_binary(columns: Sequence[PgColumn], values: Sequence[np.ndarray | Text]) -> bytes:
    """PostgreSQL binary COPY data for the rows given column-wise (see the module rules).

    The whole payload: ``COPY_HEADER + copy_rows(...) + COPY_TRAILER``.
    """
    return _HEADER + copy_rows(columns, values) + _TRAILER


COPY_HEADER, COPY_TRAILER = _HEADER, _TRAILER


def copy_rows(columns: Sequence[PgColumn], values: Sequence[np.ndarray | Text]) -> bytes:
    """The rows of a binary COPY, without header and trailer (a streamed COPY sends several).

    Args:
        columns: the COPY's columns, in order.
        values: one per column: a numpy array for number kinds (ns for ``timestamptz``, int64 1e-9
            for ``price``: UNDEF_PRICE is NULL), ``Text`` for ``text``. All of one length.
    Returns:
        The whole payload (header, rows, trailer); rows come grouped by layout, not in input order.
    """
    if len(columns) != len(values):
        raise ValueError("one value array per column")
    n = len(values[0].codes if isinstance(values[0], Text) else values[0]) if values else 0
    # Per column: payload (a per-row array) and its per-row variant (NULL flag, or text length).
    payloads: list[np.ndarray] = []
    variants: list[np.ndarray | None] = []
    for col, val in zip(columns, values, strict=True):
        if col.kind == "text":
            if not isinstance(val, Text):
                raise TypeError(f"column {col.name!r}: text needs a Text value")
            encoded = [w.encode("utf-8") for w in val.words]
            if any(b"\x00" in w for w in encoded):
                raise ValueError(f"column {col.name!r}: text cannot hold NUL")
            lengths = np.array([len(w) for w in encoded] or [0], dtype=np.int64)
            codes = np.asarray(val.codes).astype(np.intp, copy=False)
            if len(codes) != n:
                raise ValueError(f"column {col.name!r} has {len(codes)} rows, not {n}")
            word_arr = np.array(encoded or [b""], dtype=f"S{max(1, int(lengths.max()))}")
            payloads.append(word_arr[codes])
            variants.append(lengths[codes])
            continue
        arr = np.asarray(val)
        if len(arr) != n:
            raise ValueError(f"column {col.name!r} has {len(arr)} rows, not {n}")
        if col.kind == "price":
            payloads.append(price_words(arr))
            variants.append((arr == UNDEF_PRICE).astype(np.int64))
        elif col.kind == "u64":
            payloads.append(u64_words(arr))
            variants.append(None)
        elif col.kind == "timestamptz":
            payloads.append(ns_to_pg_us(arr))
            variants.append(None)
        else:
            payloads.append(arr)
            variants.append(None)
    if n == 0:
        return b""

    # One layout key per row (mixed radix over the variable columns), then one packed array per layout.
    key = np.zeros(n, dtype=np.int64)
    for var in variants:
        if var is not None:
            key = key * (int(var.max()) + 1) + var
    layouts, group = np.unique(key, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=len(layouts)))])
    chunks = []
    for g in range(len(layouts)):
        rows = order[bounds[g] : bounds[g + 1]]
        first = rows[0]
        if len(layouts) == 1:
            rows = slice(None)  # the usual case: every row alike, no gather needed
        fields: list[tuple] = [("n", ">i2")]
        fills: list[tuple[str, np.ndarray]] = []
        lens: list[tuple[str, int]] = []
        for i, (col, payload, var) in enumerate(zip(columns, payloads, variants, strict=True)):
            fields.append((f"l{i}", ">i4"))
            if col.kind == "text":
                width = int(var[first])
                lens.append((f"l{i}", width))
                if width:
                    fields.append((f"v{i}", f"S{width}"))
                    fills.append((f"v{i}", payload[rows]))
            elif col.kind == "price" and var[first]:
                lens.append((f"l{i}", -1))
            elif col.kind in ("price", "u64"):
                fields.append((f"v{i}", ">u2", (payload.shape[1],)))
                fills.append((f"v{i}", payload[rows]))
                lens.append((f"l{i}", 2 * payload.shape[1]))
            else:
                dt = np.dtype(_FIXED[col.kind])
                fields.append((f"v{i}", dt))
                fills.append((f"v{i}", payload[rows]))
                lens.append((f"l{i}", dt.itemsize))
        out = np.empty(bounds[g + 1] - bounds[g], dtype=np.dtype(fields))
        out["n"] = len(columns)
        for name, size in lens:
            out[name] = size
        for name, data in fills:
            out[name] = data
        chunks.append(out.tobytes())
    return b"".join(chunks)


def ident_list(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def advisory_lock(cur: psycopg.Cursor, name: str) -> None:
    """Hold a transaction-scoped advisory lock on ``name`` (DDL from processes starting together)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))


def copy_into(cur: psycopg.Cursor, table: sql.Composable, columns: Sequence[PgColumn], data: bytes) -> None:
    """One binary COPY of ``data`` (from ``copy_binary``) into ``table``."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, ident_list(c.name for c in columns))
    with cur.copy(stmt) as copy:
        view = memoryview(data)
        for start in range(0, len(view), 1 << 22):
            copy.write(view[start : start + (1 << 22)])


def copy_stream(cur: psycopg.Cursor, table: sql.Composable, columns: Sequence[PgColumn],
                parts: Iterable[bytes]) -> None:
    """One binary COPY fed part by part (``copy_rows`` outputs), header and trailer added.

    ``parts`` may be a generator: a queued writer thread sends each part while the caller makes the
    next, and the server inserts the first rows while the last are still being encoded.
    """
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, ident_list(c.name for c in columns))
    with cur.copy(stmt, writer=QueuedLibpqWriter(cur)) as copy:
        copy.write(_HEADER)
        for part in parts:
            if part:
                copy.write(part)
        copy.write(_TRAILER)


def copy_insert(
    cur: psycopg.Cursor,
    table: sql.Composable,
    columns: Sequence[PgColumn],
    data: bytes,
    conflict: sql.Composable = sql.SQL("ON CONFLICT DO NOTHING"),
    alias: str = "t",
) -> int:
    """COPY ``data`` into a temp table shaped like ``table``, then insert it with ``conflict``.

    Must run inside a transaction (the temp table is dropped at commit). ``conflict`` may name the
    target as ``alias``. Returns the rows inserted (or updated, for an upsert).
    """
    cur.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS _fh_load (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(table)
    )
    copy_into(cur, sql.Identifier("_fh_load"), columns, data)
    names = ident_list(c.name for c in columns)
    cur.execute(
        sql.SQL("INSERT INTO {table} AS {alias} ({cols}) SELECT {cols} FROM _fh_load {conflict}").format(
            table=table, alias=sql.Identifier(alias), cols=names, conflict=conflict
        )
    )
    inserted = cur.rowcount
    cur.execute("DROP TABLE _fh_load")
    return inserted
