"""``Pacer.pieces``: a paced replay that fell behind its clock joins the pieces already due, and only those."""
from feedhandler.pacing import Pacer, time_slices
from tests.feedhandler.test_pacing import FakeClock, batch_of

MS = 1_000_000


def test_pieces_due_when_asked_for_come_joined_and_the_others_alone():
    c = FakeClock()
    p = Pacer(1.0, clock=c.clock, sleep=c.sleep)
    got = []
    for capture_ns, piece in p.pieces(batch_of([0, 10, 2 * MS, 2 * MS + 5, 5 * MS, 9 * MS]), MS):
        p.wait_until(capture_ns)
        got.append((capture_ns, piece.events["sequence"].tolist(), piece.trades["sequence"].tolist()))
        if capture_ns == 0:
            c.now = 6 * MS  # the first piece took 6 ms: the ones at 2 and 5 ms are due, the one at 9 is not
    assert got == [(0, [1, 2], [2]), (2 * MS, [3, 4, 5], [4]), (9 * MS, [6], [])]
    assert c.slept == [0.003]  # only the piece at 9 ms waited


def test_on_time_pieces_are_the_time_slices():
    c = FakeClock()
    p = Pacer(2.0, clock=c.clock, sleep=c.sleep)
    batch = batch_of([0, 10, 2 * MS, 2 * MS + 5, 5 * MS])
    got = []
    for capture_ns, piece in p.pieces(batch, MS):
        p.wait_until(capture_ns)
        got.append((capture_ns, piece.events["sequence"].tolist(), piece.trades["sequence"].tolist()))
    want = [(t, s.events["sequence"].tolist(), s.trades["sequence"].tolist()) for t, s in time_slices(batch, MS)]
    assert got == want and c.slept == [0.001, 0.0015]


def test_a_batch_without_book_events_comes_whole():
    batch = batch_of([])
    pieces = list(Pacer(1.0).pieces(batch, MS))
    assert len(pieces) == 1 and pieces[0][0] == 0 and pieces[0][1] is batch
