"""``RedisPublisher``: market data to Redis pub/sub, latest-state keys and the trades stream.

Names (docs/redis.md has the message shapes and how clients use them):

| what | Redis type | name |
|---|---|---|
| BBO updates | channel | ``md:{venue}:{symbol}:bbo`` |
| complete top-N depth after each update | channel | ``md:{venue}:{symbol}:l2`` |
| trades | channel | ``md:{venue}:{symbol}:trades`` |
| status (halts, LULD, MWCB, ...) | channel | ``md:{venue}:status`` |
| latest BBO | hash | ``md:{venue}:{symbol}:bbo:last`` (bid_px, bid_sz, ask_px, ask_sz, ts_event, ts_recv, seq) |
| latest top N | string | ``md:{venue}:{symbol}:l2:last`` (the last ``l2`` message, encoded) |
| every trade | stream | ``md:{venue}:trades`` (``publish.redis_sink``) |

Rules this module keeps:
- A sink for ``publish.runner.SinkRunner``: it runs on the runner's thread, behind its bounded queue;
  ``write`` raises on any Redis error and the runner reopens with backoff and retries the batch once.
- One pipeline (no MULTI) per batch: one round trip. The commands of a batch are built once: a retry
  of the same batch re-sends them, so the top-N state is never applied twice.
- Every BBO row, L2 update, trade and status row is published; per symbol only the batch's last BBO
  and top N are written to ``:last`` keys. A batch the runner conflated simply has fewer rows.
- Rows of an instrument without a symbol yet (a capture joined mid-session) are not published on
  symbol channels (counted ``no_symbol_rows``); their trades still go to the stream, symbol "".
- Redis-py's own retries are off: a half-sent pipeline retried underneath would publish twice.
"""
from __future__ import annotations

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from publish.batch import MarketBatch
from publish.encoding import Encoder, TopBooks, bbo_hash_fields, symbols_for
from publish.redis_sink import DEFAULT_MAXLEN, trades_key, xadd_commands


def _last_per_instrument(instrument_ids: np.ndarray) -> np.ndarray:
    """Indices of the last row of each instrument, in row order."""
    ids = np.asarray(instrument_ids)
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first_from_end = np.unique(ids[::-1], return_index=True)
    return np.sort(len(ids) - 1 - first_from_end)


class RedisPublisher:
    """Publish each ``MarketBatch`` to Redis (see the module rules and docs/redis.md).

    Args:
        url: redis-py URL, e.g. ``redis://127.0.0.1:6379/0``.
        venue_depth: N of the top-N ``l2`` messages; must be the book engine's depth.
        encoding: ``json`` (compact text) or ``msgpack`` (needs the msgpack package).
        stream_maxlen: approximate cap of each venue's trades stream.
        socket_timeout: seconds a command may take before ``write`` raises.
        connect_timeout: seconds a connect may take before ``open`` raises.
    """

    name = "redis"

    def __init__(self, url: str, venue_depth: int = 10, encoding: str = "json",
                 stream_maxlen: int = DEFAULT_MAXLEN, *, socket_timeout: float = 5.0,
                 connect_timeout: float = 2.0) -> None:
        if stream_maxlen <= 0:
            raise ValueError("stream_maxlen must be positive")
        self.url = url
        self.venue_depth = venue_depth
        self.encoder = Encoder(encoding)
        self.stream_maxlen = stream_maxlen
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.books: dict[str, TopBooks] = {}  # venue -> top-N state, kept across reconnects
        self.counters: dict[str, int] = {"published": 0, "stream_entries": 0, "batches": 0, "reconnects": 0,
                                         "no_symbol_rows": 0}
        self.client: redis.Redis | None = None
        self._opens = 0
        self._pending: tuple[MarketBatch, list[tuple], int, int] | None = None

    # -- sink protocol ------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and PING; raises if Redis does not answer."""
        self.close()
        client = redis.Redis.from_url(self.url, socket_timeout=self.socket_timeout,
                                      socket_connect_timeout=self.connect_timeout, retry=Retry(NoBackoff(), 0))
        try:
            client.ping()
        except Exception:
            client.close()
            raise
        self.client = client
        self._opens += 1
        if self._opens > 1:
            self.counters["reconnects"] += 1

    def write(self, batch: MarketBatch) -> None:
        """Send the batch in one pipeline; raises on connection and server errors."""
        if self.client is None:
            raise redis.ConnectionError("RedisPublisher is not open")
        if self._pending is None or self._pending[0] is not batch:
            self._pending = (batch, *self.commands(batch))
        _, commands, published, stream_entries = self._pending
        if commands:
            pipe = self.client.pipeline(transaction=False)
            for args in commands:
                pipe.execute_command(*args)
            pipe.execute()
        self._pending = None
        self.counters["published"] += published
        self.counters["stream_entries"] += stream_entries
        self.counters["batches"] += 1

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()

    # -- commands -----------------------------------------------------------------------------------

    def commands(self, batch: MarketBatch) -> tuple[list[tuple], int, int]:
        """The Redis commands of one batch, applying its L2 rows to the top-N state.

        Returns:
            (commands, messages published, stream entries added).
        """
        venue, symbols, enc = batch.venue, batch.symbols, self.encoder
        out: list[tuple] = []
        published = 0
        prefix = f"md:{venue}:"

        if len(batch.status):
            payloads = enc.status(batch.status, symbols)
            channel = f"{prefix}status"
            out.extend(("PUBLISH", channel, p) for p in payloads)
            published += len(payloads)

        stream_entries = 0
        if len(batch.trades):
            syms = symbols_for(batch.trades["instrument_id"], symbols)
            payloads = enc.trades(batch.trades, syms)
            out.extend(xadd_commands(trades_key(venue), payloads, self.stream_maxlen))
            stream_entries = len(payloads)
            published += self._publish_by_symbol(out, prefix, ":trades", syms, payloads)

        if len(batch.l2):
            books = self.books.get(venue)
            if books is None:
                books = self.books[venue] = TopBooks(self.venue_depth)
            syms = symbols_for(batch.l2["instrument_id"], symbols)
            payloads, last_rows = enc.l2(books, batch.l2, syms)
            update_syms = syms[last_rows]
            published += self._publish_by_symbol(out, prefix, ":l2", update_syms, payloads)
            for k in _last_per_instrument(batch.l2["instrument_id"][last_rows]).tolist():
                if update_syms[k]:
                    out.append(("SET", f"{prefix}{update_syms[k]}:l2:last", payloads[k]))

        if len(batch.bbo):
            syms = symbols_for(batch.bbo["instrument_id"], symbols)
            payloads = enc.bbo(batch.bbo, syms)
            published += self._publish_by_symbol(out, prefix, ":bbo", syms, payloads)
            last = _last_per_instrument(batch.bbo["instrument_id"])
            for k, fields in zip(last.tolist(), bbo_hash_fields(batch.bbo[last])):
                if syms[k]:
                    out.append(("HSET", f"{prefix}{syms[k]}:bbo:last", *(x for kv in fields.items() for x in kv)))
        return out, published, stream_entries

    def _publish_by_symbol(self, out: list[tuple], prefix: str, suffix: str, syms: np.ndarray,
                           payloads: list) -> int:
        """PUBLISH each payload on ``{prefix}{symbol}{suffix}``; rows without a symbol are counted, not sent."""
        channels = np.char.add(np.char.add(prefix, syms), suffix).tolist()
        known = (syms != "").tolist()
        sent = 0
        for channel, payload, ok in zip(channels, payloads, known):
            if ok:
                out.append(("PUBLISH", channel, payload))
                sent += 1
        self.counters["no_symbol_rows"] += len(payloads) - sent
        return sent

    # -- helpers for tests and tools ----------------------------------------------------------------

    @staticmethod
    def channel(venue: str, symbol: str, kind: str) -> str:
        """``md:{venue}:{symbol}:{kind}`` for kind ``bbo``, ``l2`` or ``trades``."""
        return f"md:{venue}:{symbol}:{kind}"

    @staticmethod
    def status_channel(venue: str) -> str:
        return f"md:{venue}:status"

    @staticmethod
    def last_key(venue: str, symbol: str, kind: str) -> str:
        """``md:{venue}:{symbol}:bbo:last`` (hash) or ``md:{venue}:{symbol}:l2:last`` (string)."""
        return f"md:{venue}:{symbol}:{kind}:last"

