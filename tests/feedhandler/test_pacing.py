import numpy as np

from feedhandler.pacing import Pacer, parse_speed, time_slices
from parsers import schema
from parsers.itch50_normalize import Normalized


def test_parse_speed():
    assert parse_speed("max") is None and parse_speed("1") == 1.0 and parse_speed("10") == 10.0


class FakeClock:
    def __init__(self):
        self.now = 0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += int(seconds * 1e9)


def test_pacer_waits_for_the_scaled_capture_clock():
    c = FakeClock()
    p = Pacer(2.0, clock=c.clock, sleep=c.sleep)
    p.wait_until(1_000_000_000)  # origin
    p.wait_until(3_000_000_000)  # 2 s of capture at 2x: 1 s of wall
    c.now += 5_000_000_000  # we fell behind: no sleep
    p.wait_until(4_000_000_000)
    assert c.slept == [1.0]


def batch_of(ts_list):
    ev = schema.EVENT.empty(len(ts_list))
    ev["ts_recv"] = ts_list
    ev["sequence"] = np.arange(1, len(ts_list) + 1)
    tr = schema.TRADE.empty(2)
    tr["sequence"] = [2, 4]
    empty = {r.name: r.empty(0) for r in schema.RECORDS}
    empty.update(events=ev, trades=tr)
    return Normalized(**empty)


def test_time_slices_cut_every_record_at_the_same_message():
    ms = 1_000_000
    pieces = list(time_slices(batch_of([0, 10, 2 * ms, 2 * ms + 5, 5 * ms]), ms))
    assert [t for t, _ in pieces] == [0, 2 * ms, 5 * ms]
    assert [p.events["sequence"].tolist() for _, p in pieces] == [[1, 2], [3, 4], [5]]
    assert [p.trades["sequence"].tolist() for _, p in pieces] == [[2], [4], []]


def test_a_batch_without_book_events_has_no_time_to_wait_for():
    batch = batch_of([])
    pieces = list(time_slices(batch, 1_000_000))
    assert len(pieces) == 1 and pieces[0][0] == 0 and pieces[0][1] is batch
