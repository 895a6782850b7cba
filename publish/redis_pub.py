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
- A sink for ``publish.runner.SinkRunner`` or ``publish.process_runner.ProcessSinkRunner``: ``write``
  raises on any Redis error and the runner reopens with backoff and retries the batch once.
- One buffer of raw RESP per batch (``publish.resp``), sent on one connection, replies read back in
  bulk: no MULTI, no Python object per command. ``write`` does not wait for its replies: it sends,
  then reads those of earlier batches that have arrived (``RespConnection.send``/``collect``), so the
  sink goes on to the next batch while Redis works on this one. An error reply is raised by the next
  ``write`` (before it sends) or by ``close``, which reads every reply owed; a connection lost is
  raised at once (the batch just sent goes again with the runner's retry).
  Buffers sent and not yet answered in full are kept; after a reconnect they are sent again before
  the next batch, as a blocking write's retry would re-send its batch (at least once, never lost). JSON messages are written by the
  compiled writers of ``publish.json_rows`` (the same bytes as ``publish.encoding``'s); msgpack ones
  come from ``publish.encoding.Encoder``. A batch's commands are built once: a retry of the same
  batch re-sends the same bytes, so the top-N state is never applied twice.
- Every BBO row, L2 update, trade and status row is published; per symbol only the batch's last BBO
  and top N are written to ``:last`` keys. A batch the runner conflated simply has fewer rows.
- Rows of an instrument without a symbol yet (a capture joined mid-session) are not published on
  symbol channels (counted ``no_symbol_rows``); their trades still go to the stream, symbol "".
- The connection never retries underneath: a half-sent buffer retried by a library would publish twice.
"""
from __future__ import annotations

import collections

import numba as nb
import numpy as np
import redis
from redis.connection import parse_url

from publish.batch import MarketBatch
from publish.encoding import Encoder, TopBooks, symbols_for
from publish.json_rows import L2Books, Messages, SymbolCache, bbo_messages, sample_batch_arrays, trade_messages
from publish.redis_sink import DEFAULT_MAXLEN, TRADE_STREAM_FIELD, trades_key
from publish.resp import (
    RespBuffer,
    RespConnection,
    RespError,
    bbo_hash_kernel,
    bulk,
    command_head,
    keyed_kernel,
    scan_replies,
)

_PUBLISH = command_head("PUBLISH", 2)
_SET = command_head("SET", 2)
_XADD = command_head("XADD", 7)
_NOTHING = np.zeros(0, dtype=np.uint8)
_NO_SYMBOLS = np.zeros((1, 1), dtype=np.uint8), np.zeros(1, dtype=np.int64)


def _last_per_instrument(instrument_ids: np.ndarray) -> np.ndarray:
    """Indices of the last row of each instrument, in row order."""
    ids = np.asarray(instrument_ids)
    if len(ids) <= 1:
        return np.arange(len(ids), dtype=np.int64)
    return _last_rows(np.ascontiguousarray(ids, dtype=np.int64))


@nb.njit(cache=True)
def _last_rows(ids):
    """``_last_per_instrument`` compiled (np.unique costs ~10 us on the few rows of a paced batch)."""
    n = len(ids)
    order = np.argsort(ids, kind="mergesort")  # stable: equal ids keep row order
    keep = np.zeros(n, dtype=np.bool_)
    for k in range(n):
        if k == n - 1 or ids[order[k + 1]] != ids[order[k]]:
            keep[order[k]] = True
    return np.flatnonzero(keep)


def _rows(values: np.ndarray, last: np.ndarray) -> np.ndarray:
    """``values[last]`` (``last`` from ``_last_per_instrument``: ascending), without a copy when it is every row."""
    return values if len(last) == len(values) else values[last]


def _text(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()


class _Payloads:
    """Messages as one byte buffer with each one's start and end (what the RESP kernels read)."""

    def __init__(self, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        self.buf, self.starts, self.ends = buf, starts, ends

    @classmethod
    def of_messages(cls, m: Messages) -> _Payloads:
        off = m.offsets[:m.count + 1]
        return cls(m.buf, off[:-1], off[1:])

    @classmethod
    def of_list(cls, payloads: list) -> _Payloads:
        data = [p.encode() if isinstance(p, str) else p for p in payloads]
        ends = np.cumsum([len(d) for d in data], dtype=np.int64)
        buf = np.frombuffer(b"".join(data), dtype=np.uint8) if data else _NOTHING
        return cls(buf, ends - np.array([len(d) for d in data], dtype=np.int64), ends)

    def take(self, which: np.ndarray) -> _Payloads:
        """The payloads at ``which`` (ascending row indexes): itself when that is every one."""
        if len(which) == len(self.starts):
            return self
        return _Payloads(self.buf, self.starts[which], self.ends[which])

    def __len__(self) -> int:
        return len(self.starts)


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
        if venue_depth < 1:
            raise ValueError("venue_depth must be at least 1")
        parse_url(url)  # a bad URL fails here, as one line
        self.url = url
        self.venue_depth = venue_depth
        self.encoder = Encoder(encoding)
        self.stream_maxlen = stream_maxlen
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.books: dict[str, L2Books | TopBooks] = {}  # venue -> top-N state, kept across reconnects
        self.counters: dict[str, int] = {"published": 0, "stream_entries": 0, "batches": 0, "reconnects": 0,
                                         "no_symbol_rows": 0}
        self.client: RespConnection | None = None
        self._opens = 0
        self._pending: tuple[MarketBatch, bytes, int, int, int] | None = None
        self._unanswered: collections.deque[tuple[bytes, int]] = collections.deque()  # (buffer, commands) sent
        self._answered = 0  # replies read of the oldest unanswered buffer
        self._resend = False  # reconnected: send the unanswered buffers again first
        self._error_reply: RespError | None = None  # read after a send; the next write or flush raises it
        self._symbols = SymbolCache()
        self._resp = RespBuffer()
        self._messages = {"bbo": Messages(), "l2": Messages(), "trades": Messages()}
        self._keys: dict[str, dict[str, np.ndarray]] = {}
        self._xadd_mid = np.concatenate([bulk("MAXLEN"), bulk("~"), bulk(str(stream_maxlen)), bulk("*"),
                                         bulk(TRADE_STREAM_FIELD)])

    # -- sink protocol ------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Run every compiled writer once (numba loads or compiles them: tens of ms the first batch
        would otherwise wait); a sink process calls it before it opens."""
        spare = RedisPublisher(self.url, self.venue_depth, self.encoder.encoding, self.stream_maxlen)
        for rows in (1, 3):  # one row and several: both array layouts numba distinguishes
            spare.encode(MarketBatch("warm-up", {1: "WARM"}, **sample_batch_arrays(rows)))
        scan_replies(np.frombuffer(b":1\r\n", dtype=np.uint8), 0, 4, 1)

    def open(self) -> None:
        """Connect (AUTH, SELECT, PING); raises if Redis does not answer."""
        self.close()
        client = RespConnection(self.url, socket_timeout=self.socket_timeout, connect_timeout=self.connect_timeout)
        client.connect()
        self.client = client
        self._resend = bool(self._unanswered)
        self._opens += 1
        if self._opens > 1:
            self.counters["reconnects"] += 1

    def write(self, batch: MarketBatch) -> None:
        """Send the batch as one buffer; raises on connection errors and on error replies (to this
        write's commands only once a later ``write`` or ``close`` reads them)."""
        if self.client is None:
            raise ConnectionError("RedisPublisher is not open")
        if self._pending is None or self._pending[0] is not batch:
            self._pending = (batch, *self.encode(batch))
        _, data, commands, published, stream_entries = self._pending
        client = self.client
        if self._resend:
            self._answered = 0
            for old, n in self._unanswered:
                client.send(old, n)
            self._resend = False
        self._raise_error_reply()  # read after the last send: raised before this batch goes
        if commands:
            client.send(data, commands)
            self._unanswered.append((data, commands))
        # Then the replies of earlier batches that have come: reading them does not delay this send.
        try:
            self._collect(client, wait=False)
        except RespError as exc:  # an earlier batch's error reply: this batch went; the next write raises
            self._error_reply = exc
        except redis.ConnectionError:
            # This batch goes again with the runner's retry, not also with the unanswered ones.
            if commands and self._unanswered and self._unanswered[-1][0] is data:
                self._unanswered.pop()
            raise
        self._pending = None
        self.counters["published"] += published
        self.counters["stream_entries"] += stream_entries
        self.counters["batches"] += 1

    def flush(self) -> None:
        """Wait for every reply owed (raises as ``write`` does): what was written is then in Redis."""
        self._raise_error_reply()
        client = self.client
        if client is not None and client.sock is not None and not self._resend:
            self._collect(client, wait=True)

    def close(self) -> None:
        """Read the replies still owed (``flush``, raising if errors were among them), then disconnect."""
        try:
            self.flush()
        finally:
            client, self.client = self.client, None
            if client is not None:
                client.close()

    def _raise_error_reply(self) -> None:
        error, self._error_reply = self._error_reply, None
        if error is not None:
            raise error

    def _collect(self, client: RespConnection, wait: bool) -> None:
        """Read the replies that have come (all, with ``wait``); forget the buffers answered in full.
        If the connection goes meanwhile, the others are sent again after the reconnect."""
        before = client.answered
        try:
            client.collect(wait)
        finally:
            self._forget_answered(client.answered - before)

    def _forget_answered(self, replies: int) -> None:
        self._answered += replies
        unanswered = self._unanswered
        while unanswered and self._answered >= unanswered[0][1]:
            self._answered -= unanswered.popleft()[1]

    # -- commands -----------------------------------------------------------------------------------

    def encode(self, batch: MarketBatch) -> tuple[bytes, int, int, int]:
        """The RESP bytes of one batch, applying its L2 rows to the top-N state.

        Returns:
            (bytes, commands in them, messages published, stream entries added).
        """
        venue, symbols = batch.venue, batch.symbols
        keys = self._venue_keys(venue)
        resp = self._resp
        resp.clear()
        symtab = self._symbols.get(symbols)
        as_json = self.encoder.encoding == "json"
        published = 0

        if len(batch.status):
            payloads = _Payloads.of_list(self.encoder.status(batch.status, symbols))
            published += self._commands(_PUBLISH, keys["status"], _NOTHING, _NOTHING, None, payloads, symtab)

        stream_entries = 0
        if len(batch.trades):
            trades = batch.trades
            if as_json:
                payloads = _Payloads.of_messages(trade_messages(trades, symtab, into=self._messages["trades"]))
            else:
                payloads = _Payloads.of_list(self.encoder.trades(trades, symbols_for(trades["instrument_id"], symbols)))
            self._commands(_XADD, keys["stream"], _NOTHING, self._xadd_mid, None, payloads, symtab)
            stream_entries = len(payloads)
            published += self._commands(_PUBLISH, keys["prefix"], keys[":trades"], _NOTHING,
                                        symtab.indexes(trades["instrument_id"]), payloads, symtab)

        if len(batch.l2):
            books = self.books.get(venue)
            if books is None:
                books = self.books[venue] = L2Books(self.venue_depth) if as_json else TopBooks(self.venue_depth)
            if as_json:
                m, last_rows, _, syms = books.apply(batch.l2, symtab, into=self._messages["l2"])
                payloads = _Payloads.of_messages(m)
            else:
                texts, last_rows = self.encoder.l2(books, batch.l2, symbols_for(batch.l2["instrument_id"], symbols))
                payloads = _Payloads.of_list(texts)
                syms = symtab.indexes(batch.l2["instrument_id"][last_rows])
            published += self._commands(_PUBLISH, keys["prefix"], keys[":l2"], _NOTHING, syms, payloads, symtab)
            last = _last_per_instrument(batch.l2["instrument_id"][last_rows])
            self._commands(_SET, keys["prefix"], keys[":l2:last"], _NOTHING, _rows(syms, last), payloads.take(last), symtab,
                           count_skipped=False)

        if len(batch.bbo):
            bbo = batch.bbo
            syms = symtab.indexes(bbo["instrument_id"])
            if as_json:
                payloads = _Payloads.of_messages(bbo_messages(bbo, symtab, into=self._messages["bbo"]))
            else:
                payloads = _Payloads.of_list(self.encoder.bbo(bbo, symbols_for(bbo["instrument_id"], symbols)))
            published += self._commands(_PUBLISH, keys["prefix"], keys[":bbo"], _NOTHING, syms, payloads, symtab)
            last = _last_per_instrument(bbo["instrument_id"])
            resp.run(bbo_hash_kernel, bbo, last, _rows(syms, last), symtab.sym_raw, symtab.sym_raw_len, keys["prefix"],
                     keys[":bbo:last"])
        return resp.data(), resp.commands, published, stream_entries

    def _commands(self, head: np.ndarray, key_prefix: np.ndarray, key_suffix: np.ndarray, mid: np.ndarray,
                  syms: np.ndarray | None, payloads: _Payloads, symtab, count_skipped: bool = True) -> int:
        """One command per payload (keys with the payload's symbol when ``syms`` is given); returns how many."""
        resp = self._resp
        before, skipped = resp.commands, resp.skipped
        sym_raw, sym_raw_len = (symtab.sym_raw, symtab.sym_raw_len) if syms is not None else _NO_SYMBOLS
        resp.run(keyed_kernel, head, key_prefix, key_suffix, mid, syms is not None,
                 syms if syms is not None else np.zeros(0, dtype=np.int64), sym_raw, sym_raw_len, payloads.buf,
                 np.ascontiguousarray(payloads.starts), np.ascontiguousarray(payloads.ends))
        if count_skipped:
            self.counters["no_symbol_rows"] += resp.skipped - skipped
        return resp.commands - before

    def _venue_keys(self, venue: str) -> dict[str, np.ndarray]:
        keys = self._keys.get(venue)
        if keys is None:
            prefix = f"md:{venue}:"
            keys = self._keys[venue] = {
                "prefix": _text(prefix), "status": _text(f"{prefix}status"), "stream": _text(trades_key(venue)),
                **{suffix: _text(suffix) for suffix in (":trades", ":l2", ":bbo", ":l2:last", ":bbo:last")}}
        return keys

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
