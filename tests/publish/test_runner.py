"""The sink runner: bounded queue, overflow policies, restarts, draining. Uses a recording sink."""
import threading
import time

import numpy as np

from orderbook.records import BBO
from publish.batch import MarketBatch, Merging, conflate, merge, settled
from publish.runner import SinkRunner


class RecordingSink:
    """Keeps what it is given; can be told to block or to fail."""

    name = "recording"

    def __init__(self, fail_times: int = 0, gate: threading.Event | None = None) -> None:
        self.counters = {}
        self.batches = []
        self.opens = 0
        self.fail_times = fail_times
        self.gate = gate

    def open(self):
        self.opens += 1

    def write(self, batch):
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("server went away")
        self.batches.append(batch)

    def close(self):
        pass


def bbo_batch(*rows):
    bbo = BBO.empty(len(rows))
    for i, (inst, px) in enumerate(rows):
        bbo[i]["instrument_id"] = inst
        bbo[i]["bid_px"] = px
        bbo[i]["sequence"] = px
    return MarketBatch("nasdaq", {}, bbo=bbo)


def test_conflate_keeps_the_latest_bbo_per_instrument_in_order():
    merged = conflate(bbo_batch((1, 10), (2, 20)), bbo_batch((1, 11), (3, 30)))
    assert [(int(r["instrument_id"]), int(r["bid_px"])) for r in merged.bbo] == [(2, 20), (1, 11), (3, 30)]


def test_a_merged_queue_entry_conflates_once_to_what_pairwise_conflation_gives():
    """A full queue merges entries without copying rows (``merge``); taking the entry (``settled``)
    gives exactly the batch that conflating pair by pair would have."""
    rng = np.random.default_rng(7)
    batches = [bbo_batch(*((int(i), int(p)) for i, p in zip(rng.integers(1, 6, 4), rng.integers(1, 99, 4))))
               for _ in range(50)]
    entry = batches[0]
    pairwise = batches[0]
    for b in batches[1:]:
        entry = merge(entry, b)
        pairwise = conflate(pairwise, b)
    assert isinstance(entry, Merging) and len(entry.parts) == 50 and entry.rows == 200
    assert merge(merge(batches[0], batches[1]), merge(batches[2], batches[3])).parts == batches[:4]
    got = settled(entry)
    assert got.bbo.tobytes() == pairwise.bbo.tobytes() and len(got.bbo) == 5
    assert settled(batches[3]) is batches[3]


def test_full_queue_drops_oldest_and_counts_it_without_blocking():
    gate = threading.Event()
    sink = RecordingSink(gate=gate)
    runner = SinkRunner(sink, max_batches=2, policy="drop-oldest")
    started = time.perf_counter()
    for px in range(10):
        runner.offer(bbo_batch((1, px)))
    assert time.perf_counter() - started < 0.5  # the feed never waits
    gate.set()
    counts = runner.stop(2.0)
    assert counts["offered"] == 10
    assert counts["dropped_batches"] + counts["written"] == 10 and counts["dropped_batches"] >= 7
    assert int(sink.batches[-1].bbo["bid_px"][-1]) == 9  # the newest always survives


def test_full_queue_conflates_when_asked():
    gate = threading.Event()
    sink = RecordingSink(gate=gate)
    runner = SinkRunner(sink, max_batches=2, policy="conflate")
    for px in range(10):
        runner.offer(bbo_batch((1, px), (2, 100 + px)))
    gate.set()
    counts = runner.stop(2.0)
    assert counts.get("dropped_batches", 0) == 0 and counts["conflated"] >= 6
    last = {int(r["instrument_id"]): int(r["bid_px"]) for b in sink.batches for r in b.bbo}
    assert last == {1: 9, 2: 109}


def test_failing_sink_is_reopened_and_the_batch_retried():
    sink = RecordingSink(fail_times=1)
    runner = SinkRunner(sink, backoff_s=0.01)
    runner.offer(bbo_batch((1, 5)))
    counts = runner.stop(2.0)
    assert counts["failures"] == 1 and counts["restarts"] == 1 and counts["written"] == 1
    assert len(sink.batches) == 1 and sink.opens == 2
    assert "server went away" in runner.last_error


def test_stop_gives_up_at_the_deadline_and_counts_the_rest():
    gate = threading.Event()
    runner = SinkRunner(RecordingSink(gate=gate), max_batches=100)
    for px in range(5):
        runner.offer(bbo_batch((1, px)))
    started = time.perf_counter()
    counts = runner.stop(0.2)
    assert time.perf_counter() - started < 8
    gate.set()
    assert counts["dropped_batches"] >= 3
