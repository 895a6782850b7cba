"""``MarketBatch`` <-> records of a ``publish.shm_queue.ShmQueue``: raw numpy bytes, no Python object per row.

A record's body: eight int64 words (flags, the feed's hand-off time, rows of bbo, l2, trades, status,
bytes of extras, 0), then each array's raw bytes (every record dtype is a multiple of 8 bytes) and the
extras: a pickled dict, present only when something in it changed (``venue``, the ``symbols`` that are
new or changed since the last record, ``ohlcv`` bars at the end of a replay).

Rules this module keeps:
- The symbol directory crosses once: ``BatchWriter`` sends each instrument's symbol when it first
  appears or changes; ``BatchReader`` keeps the whole directory and hands every batch the same dict
  (replaced, never mutated, when it grows: sinks compare it by identity to see that it changed).
- A batch too big for one record (``ShmQueue.max_record``) goes as several parts, every array cut at
  the same fractions; all parts but the last carry ``FLAG_MORE`` and the reader joins them into one
  batch again, so an update's L2 rows are never split between two batches.
- Reading copies the rows out, so the queue's space can be released at once.
- A sink that declares ``consumes`` (the MarketBatch arrays it reads) gets the others empty: the feed
  does not copy rows nobody will look at (``TimescaleSink`` stores no L2 rows).
"""
from __future__ import annotations

import pickle
import time
from dataclasses import replace

import numpy as np

from orderbook.records import BBO, L2
from parsers.schema import STATUS, TRADE
from publish.batch import MarketBatch, concat
from publish.shm_queue import ShmQueue

KIND_BATCH = 2
FLAG_MORE = 1  # more parts of the same batch follow
FLAG_FINAL = 2  # batch.final
_HEAD_WORDS = 8
_HEAD_BYTES = 8 * _HEAD_WORDS
# (field, dtype) in record order.
ARRAYS = (("bbo", BBO.dtype), ("l2", L2.dtype), ("trades", TRADE.dtype), ("status", STATUS.dtype))


class BatchWriter:
    """Producer side: ``put(batch)`` -> records written (0: no room now, nothing written)."""

    def __init__(self, queue: ShmQueue, symbols: dict[int, str] | None = None,
                 consumes: frozenset[str] = frozenset(name for name, _ in ARRAYS)) -> None:
        self.queue = queue
        self.consumes = consumes  # arrays the reader's sink uses; the others cross as empty
        self._venue: str | None = None
        self._symbols_obj: object = None
        self._sent: dict[int, str] = dict(symbols or {})  # what the reader knows
        self._room = queue.max_record - 256
        self._head = np.zeros(_HEAD_WORDS, dtype=np.int64)
        self._head_bytes = self._head.view(np.uint8)

    def put(self, batch: MarketBatch) -> int:
        extras = self._extras(batch)
        if len(self.consumes) < len(ARRAYS):
            batch = replace(batch, **{name: _EMPTY[name] for name, _ in ARRAYS if name not in self.consumes})
        bbo, l2, trades, status = (_u8(batch.bbo), _u8(batch.l2), _u8(batch.trades), _u8(batch.status))
        raw = len(bbo) + len(l2) + len(trades) + len(status) + len(extras)
        if raw <= self._room:  # the usual case: one record
            head = self._head
            head[0] = FLAG_FINAL if batch.final else 0
            head[1] = time.monotonic_ns()
            head[2], head[3], head[4], head[5], head[6] = (len(batch.bbo), len(batch.l2), len(batch.trades),
                                                           len(batch.status), len(extras))
            if not self.queue.write((self._head_bytes, bbo, l2, trades, status, extras), KIND_BATCH):
                return 0
            self._commit()
            return 1
        return self._put_parts(batch, extras, raw)

    def _put_parts(self, batch: MarketBatch, extras: np.ndarray, raw: int) -> int:
        arrays = [np.ascontiguousarray(getattr(batch, name)) for name, _ in ARRAYS]
        parts = max(1, -(-raw // self._room))
        if not self._room_for(raw + parts * 256 + self.queue.max_record):  # (one filler where it wraps)
            return 0  # all parts or none: a half-written batch would reach the sink split
        for k in range(parts):
            cut = [a[len(a) * k // parts:len(a) * (k + 1) // parts] for a in arrays]
            last = k == parts - 1
            flags = (0 if last else FLAG_MORE) | (FLAG_FINAL if batch.final and last else 0)
            extra = extras if last else _NO_BYTES
            head = np.array([flags, time.monotonic_ns(), *(len(c) for c in cut), len(extra), 0], dtype=np.int64)
            if not self.queue.write((head.view(np.uint8), *(_u8(c) for c in cut), extra), KIND_BATCH):
                raise RuntimeError("sink queue filled while writing a split batch")  # the room was checked
        self._commit()
        return parts

    def restarted(self) -> tuple[str, dict[int, str]]:
        """A new reader: the venue and directory to start it with (then only what is new is sent)."""
        self._symbols_obj = None
        return self._venue or "", dict(self._sent)

    def _room_for(self, nbytes: int) -> bool:
        return self.queue.capacity - self.queue.unread_bytes() >= nbytes

    def _extras(self, batch: MarketBatch) -> bytes:
        extras: dict = {}
        self._pending = None
        if batch.venue != self._venue:
            extras["venue"] = batch.venue
        if batch.symbols is not self._symbols_obj:
            sent = self._sent
            new = {i: s for i, s in batch.symbols.items() if sent.get(i) != s}
            if new:
                extras["symbols"] = new
            self._pending = (batch.venue, batch.symbols, new)
        elif batch.venue != self._venue:
            self._pending = (batch.venue, self._symbols_obj, {})
        if batch.ohlcv:
            extras["ohlcv"] = batch.ohlcv
        if not extras:
            return _NO_BYTES
        return np.frombuffer(bytearray(pickle.dumps(extras, protocol=pickle.HIGHEST_PROTOCOL)), dtype=np.uint8)

    def _commit(self) -> None:
        if self._pending is not None:
            venue, obj, new = self._pending
            self._venue, self._symbols_obj = venue, obj
            self._sent.update(new)
            self._pending = None


class BatchReader:
    """Consumer side: turns records into ``MarketBatch`` objects (joining split batches)."""

    def __init__(self, venue: str = "", symbols: dict[int, str] | None = None) -> None:
        self.venue = venue
        self.symbols: dict[int, str] = dict(symbols or {})
        self._parts: list[MarketBatch] = []
        self.last_handed_ns = 0  # when the feed handed the newest batch read (CLOCK_MONOTONIC)

    def read(self, body: np.ndarray) -> MarketBatch | None:
        """One record's body -> a batch, or None while parts of a split batch are still to come."""
        head = body[:_HEAD_BYTES].view(np.int64)
        flags, handed, extra_len = int(head[0]), int(head[1]), int(head[6])
        pos = _HEAD_BYTES
        arrays = {}
        for k, (name, dtype) in enumerate(ARRAYS):
            n = int(head[2 + k])
            nbytes = n * dtype.itemsize
            if pos + nbytes > len(body):
                raise ValueError("corrupt batch record (arrays overrun the record)")
            # Copied as bytes: numpy copies records with padding field by field (~5 us an array).
            arrays[name] = np.frombuffer(bytearray(body[pos:pos + nbytes]), dtype=dtype) if n else _EMPTY[name]
            pos += nbytes
        ohlcv = {}
        if extra_len:
            extras = pickle.loads(body[pos:pos + extra_len].tobytes())
            self.venue = extras.get("venue", self.venue)
            if "symbols" in extras:
                self.symbols = {**self.symbols, **extras["symbols"]}
            ohlcv = extras.get("ohlcv", {})
        self.last_handed_ns = handed
        part = MarketBatch(venue=self.venue, symbols=self.symbols, ohlcv=ohlcv, final=bool(flags & FLAG_FINAL),
                           **arrays)
        if flags & FLAG_MORE:
            self._parts.append(part)
            return None
        if self._parts:
            part = concat([*self._parts, part])
            self._parts = []
        return part


_NO_BYTES = np.zeros(0, dtype=np.uint8)


def warm_up() -> None:
    """One batch through a scratch queue: the first read pays for imports and numpy's first calls."""
    from publish.json_rows import sample_batch_arrays
    from publish.shm_queue import MIN_CAPACITY

    queue = ShmQueue.create(MIN_CAPACITY)
    try:
        BatchWriter(queue).put(MarketBatch("warm-up", {1: "WARM"}, ohlcv={}, **sample_batch_arrays()))
        consumer = ShmQueue(queue.mem_fd, queue.wake_fd, producer=False)
        for _, body in consumer.take():
            BatchReader().read(body)
        consumer.release()
        consumer.hdr = consumer.data = None
    finally:
        queue.close()


def _u8(rows: np.ndarray) -> np.ndarray:
    """The rows' bytes, without a copy when they are contiguous already (``frombuffer``: a ``view`` of
    records runs numpy's Python-level safety check, ~1 us a call on the feed's path)."""
    if not rows.flags.c_contiguous:
        rows = np.ascontiguousarray(rows)
    return np.frombuffer(rows, dtype=np.uint8) if len(rows) else _NO_BYTES
_EMPTY = {"bbo": BBO.empty(0), "l2": L2.empty(0), "trades": TRADE.empty(0), "status": STATUS.empty(0)}
