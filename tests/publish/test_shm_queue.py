"""The shared-memory queue between the feed and a sink process: records, wrap-around, a full ring,
waking a sleeping consumer in another process, the status blob."""
from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pytest

from publish.shm_queue import BLOB_MAX, KIND_WRAP, MIN_CAPACITY, QueueFull, ShmQueue


def pair(capacity: int = MIN_CAPACITY) -> tuple[ShmQueue, ShmQueue]:
    producer = ShmQueue.create(capacity)
    consumer = ShmQueue.attach(*(os.dup(h.fd) for h in producer.handles()))
    return producer, consumer


def record(n: int, fill: int) -> tuple[np.ndarray, ...]:
    return (np.full(n, fill, dtype=np.uint8), np.arange(3, dtype=np.int64).view(np.uint8))


def test_records_come_out_in_order_with_their_bytes_padded_to_8():
    producer, consumer = pair()
    assert producer.write(record(5, 7), kind=2) and producer.write(record(0, 0), kind=3)
    assert producer.records_unread() == 2
    got = consumer.take()
    assert [k for k, _ in got] == [2, 3]
    body = got[0][1]
    assert len(body) == 8 + 24 and list(body[:5]) == [7] * 5 and list(body[5:8]) == [0, 0, 0]
    assert list(body[8:].view(np.int64)) == [0, 1, 2]
    consumer.release()
    assert producer.records_unread() == 0 and producer.unread_bytes() == 0
    assert consumer.take() == []


def test_a_record_that_would_cross_the_end_starts_again_at_zero():
    producer, consumer = pair()
    cap = producer.capacity
    size = (cap // 5 + 1000) & ~7  # four fit, the fifth would cross the end
    for k in range(4):
        assert producer.write((np.full(size - 8, k, dtype=np.uint8),), kind=2)
    consumer.take()
    consumer.release()
    assert producer.write((np.full(size - 8, 9, dtype=np.uint8),), kind=2)
    # The filler took the tail: the record sits at offset 0, and the consumer skips the filler.
    assert producer.data[4 * size:4 * size + 8].view(np.uint32)[1] == KIND_WRAP
    ((kind, body),) = consumer.take()
    assert kind == 2 and len(body) == size - 8 and body[0] == 9 and body.ctypes.data == consumer.data.ctypes.data + 8
    consumer.release()


def test_a_full_ring_refuses_without_writing_and_a_huge_record_is_an_error():
    producer, consumer = pair()
    part = (np.zeros(producer.max_record - 8, dtype=np.uint8),)
    written = 0
    while producer.write(part, kind=2):
        written += 1
    assert written == 4 and producer.records_unread() == 4
    consumer.take()
    consumer.release()
    assert producer.write(part, kind=2)
    with pytest.raises(QueueFull):
        producer.write((np.zeros(producer.max_record, dtype=np.uint8),), kind=2)


def test_bad_capacity_is_refused():
    for capacity in (4096, MIN_CAPACITY + 1):
        with pytest.raises(ValueError, match="capacity"):
            ShmQueue.create(capacity)


def _sleepy_consumer(mem_fd, wake_fd, out) -> None:
    queue = ShmQueue.attach(mem_fd, wake_fd)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = queue.take()
        if got:
            out.put((time.monotonic_ns(), bytes(got[0][1][:8])))
            queue.release()
            return
        queue.wait(5.0)  # far longer than the test allows: only a wake-up ends it in time


def test_a_sleeping_consumer_in_another_process_wakes_at_once():
    producer = ShmQueue.create(MIN_CAPACITY)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_sleepy_consumer, args=(*producer.handles(), out))
    proc.start()
    try:
        deadline = time.monotonic() + 20
        while not producer.hdr[33]:  # the consumer announced it sleeps
            assert time.monotonic() < deadline, "the consumer never went to sleep"
            time.sleep(0.001)
        sent = time.monotonic_ns()
        assert producer.write((np.frombuffer(b"wake-up!", dtype=np.uint8).copy(),), kind=2)
        woke, data = out.get(timeout=10)
        assert data == b"wake-up!"
        assert producer.wakes == 1
        assert woke - sent < 1_000_000_000  # well under the 5 s wait it was in
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0


def test_a_busy_consumer_costs_the_producer_no_wake_up():
    producer, consumer = pair()
    for _ in range(100):
        producer.write(record(16, 1), kind=2)
    assert producer.wakes == 0  # nobody slept
    assert len(consumer.take()) == 100


def test_status_blob_and_counters_reach_the_other_side():
    producer, consumer = pair()
    assert producer.get_status() == b""
    consumer.put_status(b'{"opened": true}')
    assert producer.get_status() == b'{"opened": true}'
    consumer.put_status(b"x" * (BLOB_MAX + 100))
    assert len(producer.get_status()) == BLOB_MAX
    consumer.counters()[3] += 5
    assert int(producer.counters()[3]) == 5


def test_stop_request_is_seen_by_the_consumer():
    producer, consumer = pair()
    assert consumer.stop_deadline_ns() == 0
    producer.request_stop(123)
    assert consumer.stop_deadline_ns() == 123
