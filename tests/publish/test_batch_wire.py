"""MarketBatch through the shared-memory queue: arrays byte for byte, the symbol directory sent once,
bars at the end, batches too big for one record split and joined again."""
from __future__ import annotations

import os

import numpy as np

from orderbook.records import BBO, L2, ohlcv_record
from parsers.schema import STATUS, TRADE
from publish.batch import MarketBatch
from publish.batch_wire import BatchReader, BatchWriter
from publish.shm_queue import MIN_CAPACITY, ShmQueue


def pair(capacity: int = 1 << 20):
    producer = ShmQueue.create(capacity)
    consumer = ShmQueue.attach(*(os.dup(h.fd) for h in producer.handles()))
    return BatchWriter(producer), consumer


def random_rows(record, n: int, seed: int) -> np.ndarray:
    """Rows with every byte random (padding included): a copy must keep them all."""
    rng = np.random.default_rng(seed)
    return np.frombuffer(rng.integers(0, 256, n * record.dtype.itemsize, dtype=np.uint8).tobytes(),
                         dtype=record.dtype).copy()


def read_all(consumer: ShmQueue, reader: BatchReader) -> list[MarketBatch]:
    out = []
    for _, body in consumer.take():
        batch = reader.read(body)
        if batch is not None:
            out.append(batch)
    consumer.release()
    return out


def same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_arrays_venue_symbols_bars_and_final_cross_exactly():
    writer, consumer = pair()
    reader = BatchReader()
    symbols = {1: "AAPL", 2: "MSFT"}
    bars = {"1s": random_rows(ohlcv_record("1s"), 3, 9)}
    sent = [MarketBatch("nasdaq", symbols, bbo=random_rows(BBO, 5, 1), l2=random_rows(L2, 7, 2),
                        trades=random_rows(TRADE, 2, 3), status=random_rows(STATUS, 1, 4)),
            MarketBatch("nasdaq", symbols, bbo=random_rows(BBO, 1, 5)),
            MarketBatch("nasdaq", symbols, ohlcv=bars, final=True)]
    assert [writer.put(b) for b in sent] == [1, 1, 1]
    got = read_all(consumer, reader)
    assert len(got) == 3
    for a, b in zip(sent, got):
        for name in ("bbo", "l2", "trades", "status"):
            assert same_bytes(getattr(a, name), getattr(b, name)), name
        assert (b.venue, b.symbols, b.final) == ("nasdaq", symbols, a.final)
    assert same_bytes(got[2].ohlcv["1s"], bars["1s"])
    assert got[0].symbols is got[1].symbols  # one dict while the directory does not change


def test_the_directory_crosses_once_then_only_what_changed():
    writer, consumer = pair()
    reader = BatchReader()
    symbols = {i: f"S{i}" for i in range(1, 2001)}
    writer.put(MarketBatch("nasdaq", symbols, bbo=random_rows(BBO, 1, 1)))
    assert writer.queue.unread_bytes() > 10_000  # 2,000 symbols
    (a,) = read_all(consumer, reader)
    writer.put(MarketBatch("nasdaq", symbols, bbo=random_rows(BBO, 1, 2)))  # same dict: nothing to send
    assert writer.queue.unread_bytes() < 200
    grown = {**symbols, 5000: "NEW"}
    writer.put(MarketBatch("nasdaq", grown, bbo=random_rows(BBO, 1, 3)))
    b, c = read_all(consumer, reader)
    assert a.symbols == symbols and b.symbols is a.symbols and c.symbols == grown and c.symbols is not a.symbols


def test_a_restarted_reader_starts_from_what_the_writer_sent():
    writer, consumer = pair()
    writer.put(MarketBatch("cboe", {7: "IBM"}, bbo=random_rows(BBO, 1, 1)))
    read_all(consumer, BatchReader())
    venue, symbols = writer.restarted()
    assert (venue, symbols) == ("cboe", {7: "IBM"})
    fresh = BatchReader(venue, symbols)
    writer.put(MarketBatch("cboe", {7: "IBM", 8: "HPQ"}, trades=random_rows(TRADE, 1, 2)))
    (batch,) = read_all(consumer, fresh)
    assert (batch.venue, batch.symbols) == ("cboe", {7: "IBM", 8: "HPQ"})


def test_a_batch_bigger_than_a_record_is_split_and_joined_again():
    writer, consumer = pair(1 << 20)  # records of at most 256 KiB
    reader = BatchReader()
    big = MarketBatch("nasdaq", {1: "AAPL"}, bbo=random_rows(BBO, 4000, 1), l2=random_rows(L2, 4000, 2),
                      trades=random_rows(TRADE, 10, 3), final=True)
    records = writer.put(big)
    assert records > 1
    (got,) = read_all(consumer, reader)
    for name in ("bbo", "l2", "trades", "status"):
        assert same_bytes(getattr(big, name), getattr(got, name)), name
    assert got.final


def test_no_room_writes_nothing():
    writer, consumer = pair(MIN_CAPACITY)
    batch = MarketBatch("nasdaq", {}, l2=random_rows(L2, 250, 1))  # 14 KB: four fit
    assert [writer.put(batch) for _ in range(5)] == [1, 1, 1, 1, 0]
    assert len(read_all(consumer, BatchReader())) == 4
    assert writer.put(batch) == 1


def test_arrays_the_sink_does_not_consume_cross_empty():
    producer = ShmQueue.create(1 << 20)
    consumer = ShmQueue.attach(*(os.dup(h.fd) for h in producer.handles()))
    writer = BatchWriter(producer, consumes=frozenset({"bbo", "trades", "status"}))
    sent = MarketBatch("nasdaq", {1: "AAPL"}, bbo=random_rows(BBO, 3, 1), l2=random_rows(L2, 500, 2),
                       trades=random_rows(TRADE, 2, 3))
    writer.put(sent)
    assert producer.unread_bytes() < 1000  # the 28 KB of L2 rows stayed behind
    (got,) = read_all(consumer, BatchReader())
    assert len(got.l2) == 0 and same_bytes(got.bbo, sent.bbo) and same_bytes(got.trades, sent.trades)
