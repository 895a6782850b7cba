"""Helper for the TimescaleSink ingest bench: the same trades COPYed into a bare table, as the peer.

``bare_copy_rows_per_s`` sends the rows the sink would send (same columns, same binary COPY encoder)
into an unkeyed, unpartitioned table: what a plain COPY costs without idempotency or partitions.
"""
from __future__ import annotations

import time

import numpy as np
import psycopg
from psycopg import sql

from publish.postgres_sink import copy_binary, copy_into
from publish.timescale import TRADES, table_values


def bare_copy_rows_per_s(dsn: str, schema: str, trades: np.ndarray, venue: str, symbols: dict[int, str],
                         repeats: int = 3) -> float:
    """Best rows/s over ``repeats`` of: encode ``trades`` and COPY them into a fresh bare table."""
    columns = [c.pg for c in TRADES.columns]
    table = sql.Identifier(schema, "bare_trades")
    best = 0.0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        for _ in range(repeats):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in columns)))
            started = time.perf_counter()
            data = copy_binary(columns, table_values(TRADES, trades, venue, symbols))
            with conn.transaction(), conn.cursor() as cur:
                copy_into(cur, table, columns, data)
            best = max(best, len(trades) / (time.perf_counter() - started))
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
    return best

