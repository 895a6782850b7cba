"""A/B arbitration and recovery with crafted MoldUDP64 packet streams, checked message by message."""
import numpy as np
import pytest

from feedhandler.arbitration import (
    LINE_A,
    LINE_B,
    LINE_RECOVERY,
    Arbiter,
    GapGivenUp,
    GiveUpReason,
    Line,
    LineResumed,
    LineSilent,
)
from feedhandler.sources.base import PacketBatch
from parsers.frames import FRAME_DTYPE, FrameFlag
from parsers.moldudp64 import MOLD_END_OF_SESSION_COUNT, MOLD_HEARTBEAT_COUNT, encode_packet

MS = 1_000_000
SESSION = b"TEST1"
WIRE_SESSION = b"TEST1     "
MSGS = [b"m%05d" % i + bytes([i % 251]) * (i % 7) for i in range(0, 2001)]  # MSGS[seq], various lengths


def packet(seq: int, n: int = 3, session: bytes = SESSION) -> bytes:
    return encode_packet(session, seq, MSGS[seq : seq + n])


def batch(packets: list[bytes], ts: int | list[int] = 0) -> PacketBatch:
    data = np.frombuffer(b"".join(packets), np.uint8) if packets else np.zeros(0, np.uint8)
    length = np.array([len(p) for p in packets], np.int32)
    offset = np.zeros(len(packets), np.int64)
    np.cumsum(length[:-1], out=offset[1:])
    n = len(packets)
    stamps = np.full(n, ts, np.int64) if np.isscalar(ts) else np.array(ts, np.int64)
    return PacketBatch(data, offset, length, stamps, np.full(n, 0xEF010101, np.uint32), np.full(n, 26400, np.uint16))


class Run:
    """Feeds an arbiter and keeps what it delivered (copies: the views are reused)."""

    def __init__(self, **kwargs) -> None:
        self.requests: list[tuple[bytes, int, int]] = []
        kwargs.setdefault("expect_from", 1)
        self.arbiter = Arbiter(request=lambda s, f, c: self.requests.append((s, f, c)), **kwargs)
        self.seqs: list[int] = []
        self.bytes: list[bytes] = []
        self.flags: list[int] = []
        self.ts: list[int] = []

    def _keep(self, out) -> np.ndarray:
        buf, frames = out
        assert frames.dtype == FRAME_DTYPE
        for f in frames:
            self.seqs.append(int(f["sequence"]))
            self.bytes.append(buf[f["offset"] : f["offset"] + f["length"]].tobytes())
            self.flags.append(int(f["flags"]))
            self.ts.append(int(f["ts_recv"]))
        return frames

    def feed(self, packets, line, now, ts=None):
        return self._keep(self.arbiter.feed(batch(packets, now if ts is None else ts), line, now=now))

    def poll(self, now):
        return self._keep(self.arbiter.poll(now))

    def assert_delivered(self, first: int, last: int) -> None:
        assert self.seqs == list(range(first, last + 1))
        assert self.bytes == MSGS[first : last + 1]


def stream(first: int, last_packet: int, n: int = 3) -> list[int]:
    return list(range(first, last_packet + 1, n))


def test_clean_lines_deliver_each_message_once_and_count_duplicates_per_line():
    run = Run()
    seqs = stream(1, 298)  # packets of 3: 1..300
    for k in range(0, len(seqs), 10):
        run.feed([packet(s) for s in seqs[k : k + 10]], LINE_A, now=k)
        run.feed([packet(s) for s in seqs[k : k + 10]], LINE_B, now=k + 1)
    run.assert_delivered(1, 300)
    st = run.arbiter.stats()
    assert st["lines"]["A"] | {} == {"packets": 100, "messages": 300, "duplicates": 0, "heartbeats": 0,
                                     "bad_packets": 0, "gaps": 0, "gap_messages": 0, "silent": False}
    assert st["lines"]["B"]["messages"] == 0 and st["lines"]["B"]["duplicates"] == 300
    assert st["requests"] == 0 and st["held_peak"] == 0 and st["delivered"] == 300
    # LAST_IN_PACKET on every third message, no RECOVERED
    assert run.flags == [FrameFlag.LAST_IN_PACKET if s % 3 == 0 else 0 for s in range(1, 301)]


def test_drops_on_a_only_are_filled_by_b_without_a_request():
    run = Run()
    seqs = stream(1, 298)
    lost_a = {4, 31, 34, 37, 100, 298}
    for s in seqs:
        if s not in lost_a:
            run.feed([packet(s)], LINE_A, now=s * 10)
        run.feed([packet(s)], LINE_B, now=s * 10 + 5)
    run.assert_delivered(1, 300)
    st = run.arbiter.stats()
    assert run.requests == [] and st["holes"] == 0
    # 4 | 31, 34, 37 | 100; the lost tail (298) is seen by no later packet of A
    assert st["lines"]["A"]["gaps"] == 3 and st["lines"]["A"]["gap_messages"] == 15
    assert st["lines"]["B"]["messages"] == 18 and st["lines"]["A"]["messages"] == 282
    assert st["lines"]["A"]["duplicates"] == 0 and st["lines"]["B"]["duplicates"] == 282


def test_drops_on_b_only_a_leads_and_b_lags():
    run = Run()
    seqs = stream(1, 148)
    lost_b = set(seqs[5:20])
    for k, s in enumerate(seqs):
        run.feed([packet(s)], LINE_A, now=k * 10)
    for k, s in enumerate(seqs):  # B arrives late, all of it after A: pure duplicates
        if s not in lost_b:
            run.feed([packet(s)], LINE_B, now=2000 + k)
    run.assert_delivered(1, 150)
    st = run.arbiter.stats()
    assert st["lines"]["B"]["messages"] == 0 and st["lines"]["B"]["duplicates"] == 150 - 45
    assert st["lines"]["B"]["gaps"] == 1 and st["lines"]["B"]["gap_messages"] == 45
    assert run.requests == [] and st["held_peak"] == 0


def test_a_gap_on_both_lines_is_rerequested_then_recovered_in_order():
    run = Run()
    run.feed([packet(1), packet(4)], LINE_A, now=100)
    run.feed([packet(1), packet(4)], LINE_B, now=101)
    # 7 and 10 lost on both lines
    frames = run.feed([packet(13), packet(16)], LINE_A, now=200)
    assert len(frames) == 0 and run.requests == []  # B has not gone past 7 yet: wait for it
    run.feed([packet(13)], LINE_B, now=210)
    assert run.requests == [(WIRE_SESSION, 7, 6)]  # both lines lost 7..12: ask
    assert run.arbiter.stats()["held"] == 6
    # the answer carries what fits: 7..9 first
    run.feed([packet(7)], LINE_RECOVERY, now=300)
    assert run.seqs[-1] == 9 and run.requests[-1] == (WIRE_SESSION, 10, 3)  # the rest asked at once
    run.feed([packet(10)], LINE_RECOVERY, now=350)
    run.feed([packet(16), packet(19)], LINE_B, now=400)
    run.assert_delivered(1, 21)
    recovered = FrameFlag.RECOVERED
    assert [f & recovered for f in run.flags[6:12]] == [recovered] * 6
    assert all(f & recovered == 0 for f in run.flags[:6] + run.flags[12:])
    assert run.ts[12:18] == [200] * 6  # held messages keep their receive time
    st = run.arbiter.stats()
    assert st["recovered"] == 6 and st["lines"]["recovery"]["messages"] == 6
    assert st["holes"] == 1 and st["requests"] == 2 and st["requested_messages"] == 9
    assert st["held"] == 0 and st["held_peak"] == 6 and st["given_up"] == 0


def test_request_delay_asks_when_the_other_line_lags():
    run = Run(request_delay_ns=5 * MS)
    run.feed([packet(1), packet(7)], LINE_A, now=0)
    run.poll(4 * MS)
    assert run.requests == []
    run.poll(5 * MS)
    assert run.requests == [(WIRE_SESSION, 4, 3)]


def test_single_line_asks_at_once_and_retries_an_unanswered_request():
    run = Run(lines=1, retry_ns=10 * MS)
    run.feed([packet(1), packet(7)], LINE_A, now=0)
    assert run.requests == [(WIRE_SESSION, 4, 3)]
    run.poll(9 * MS)
    assert len(run.requests) == 1
    run.poll(10 * MS)
    assert run.requests[-1] == (WIRE_SESSION, 4, 3)
    run.feed([packet(4)], LINE_RECOVERY, now=11 * MS)
    run.assert_delivered(1, 9)
    with pytest.raises(ValueError, match="no line 1"):
        run.arbiter.feed(batch([packet(10)]), LINE_B)


def test_requests_respect_the_per_request_message_limit():
    run = Run(lines=1, max_request_messages=4)
    run.feed([packet(1), packet(31)], LINE_A, now=0)
    assert run.requests == [(WIRE_SESSION, 4, 4)]
    run.feed([packet(4, 4)], LINE_RECOVERY, now=1)  # answered in full: ask the next 4
    assert run.requests[-1] == (WIRE_SESSION, 8, 4)
    with pytest.raises(ValueError, match="max_request_messages"):
        Arbiter(max_request_messages=0xFFFF)


def test_a_hole_not_filled_in_time_is_given_up_and_delivery_resumes():
    run = Run(give_up_ns=100 * MS, retry_ns=1000 * MS)
    run.feed([packet(1), packet(10), packet(13)], LINE_A, now=0)
    run.feed([packet(1), packet(10), packet(13)], LINE_B, now=1)
    assert run.requests == [(WIRE_SESSION, 4, 6)]
    run.poll(99 * MS)
    assert run.seqs == [1, 2, 3] and run.arbiter.take_events() == []
    frames = run.poll(100 * MS)
    assert [int(s) for s in frames["sequence"]] == list(range(10, 16))
    events = run.arbiter.take_events()
    assert events == [GapGivenUp("TEST1", 4, 9, 100 * MS, GiveUpReason.GIVE_UP_TIMEOUT)]
    assert events[0].messages == 6 and events[0].stale_instruments == "all"
    st = run.arbiter.stats()
    assert st["given_up"] == 1 and st["given_up_messages"] == 6 and st["held"] == 0
    # a late answer for the given-up hole is a duplicate, never delivered out of order
    run.feed([packet(4)], LINE_RECOVERY, now=101 * MS)
    run.feed([packet(16)], LINE_A, now=102 * MS)
    assert run.seqs == [1, 2, 3] + list(range(10, 19))
    assert run.arbiter.stats()["lines"]["recovery"]["duplicates"] == 3


def test_give_up_without_a_request_client():
    arbiter = Arbiter(expect_from=1, give_up_ns=10)
    arbiter.feed(batch([packet(1), packet(7)]), LINE_A, now=0)
    buf, frames = arbiter.poll(10)
    assert list(frames["sequence"]) == [7, 8, 9]
    assert arbiter.take_events()[0].first == 4


def test_two_holes_are_asked_and_given_up_one_after_the_other():
    run = Run(lines=1, give_up_ns=50, retry_ns=10**9)
    run.feed([packet(1), packet(7), packet(13)], LINE_A, now=0)
    assert run.requests == [(WIRE_SESSION, 4, 3)]  # only the first hole: up to the next held message
    run.feed([packet(4)], LINE_RECOVERY, now=10)
    assert run.requests[-1] == (WIRE_SESSION, 10, 3)
    run.poll(59)
    assert run.seqs[-1] == 9
    run.poll(60)  # the second hole appeared (became current) at 10
    assert run.seqs[-1] == 15 and run.arbiter.take_events()[0].first == 10


def test_duplicates_across_lines_and_within_a_line():
    run = Run()
    run.feed([packet(1), packet(1), packet(4)], LINE_A, now=0)
    run.feed([packet(4), packet(1)], LINE_B, now=1)
    run.feed([packet(2, 4)], LINE_B, now=2)  # overlaps 2..5: all delivered already
    run.feed([packet(5, 4)], LINE_A, now=3)  # 5,6 delivered, 7,8 new
    run.assert_delivered(1, 8)
    st = run.arbiter.stats()
    assert st["lines"]["A"]["duplicates"] == 3 + 2 and st["lines"]["B"]["duplicates"] == 6 + 4


def test_out_of_order_packets_on_one_line_are_reordered():
    run = Run()
    order = [1, 7, 4, 13, 10, 16]
    for k, s in enumerate(order):
        run.feed([packet(s)], LINE_A, now=k)
    run.assert_delivered(1, 18)
    st = run.arbiter.stats()
    assert run.requests == [] or all(r[1] > 0 for r in run.requests)
    assert st["held_peak"] == 3 and st["held"] == 0 and st["given_up"] == 0
    # held duplicates: the same early packet on both lines is held once
    run2 = Run()
    run2.feed([packet(1), packet(7)], LINE_A, now=0)
    run2.feed([packet(7)], LINE_B, now=1)
    assert run2.arbiter.stats()["held"] == 3 and run2.arbiter.stats()["lines"]["B"]["duplicates"] == 3
    run2.feed([packet(4)], LINE_B, now=2)
    run2.assert_delivered(1, 9)


def test_a_silent_line_is_reported_and_its_return_too():
    run = Run(silent_ns=100 * MS)
    run.feed([packet(1)], LINE_A, now=0)
    run.feed([packet(1)], LINE_B, now=0)
    run.feed([packet(4)], LINE_A, now=50 * MS)
    run.feed([packet(7)], LINE_A, now=120 * MS)
    assert run.arbiter.take_events() == [LineSilent(Line.LINE_B, 0, 120 * MS)]
    assert run.arbiter.stats()["lines"]["B"]["silent"] is True
    # while B is silent, a hole A goes past is asked at once (no waiting for B)
    run.feed([packet(13)], LINE_A, now=130 * MS)
    assert run.requests == [(WIRE_SESSION, 10, 3)]
    run.feed([packet(16)], LINE_B, now=140 * MS)
    assert run.arbiter.take_events() == [LineResumed(Line.LINE_B, 140 * MS, 140 * MS)]
    run.feed([packet(10)], LINE_RECOVERY, now=141 * MS)
    run.assert_delivered(1, 18)
    # both quiet: nobody is reported (the feed is idle, not a line)
    run.poll(10_000 * MS)
    assert run.arbiter.take_events() == []


def test_a_line_that_never_delivers_is_reported():
    run = Run(silent_ns=10)
    run.feed([packet(1)], LINE_A, now=0)
    run.feed([packet(4)], LINE_A, now=11)
    assert run.arbiter.take_events() == [LineSilent(Line.LINE_B, -1, 11)]


def test_heartbeats_reveal_a_lost_tail_and_end_of_session_too():
    run = Run(lines=1)
    run.feed([packet(1)], LINE_A, now=0)
    run.feed([encode_packet(SESSION, 4, [], count=MOLD_HEARTBEAT_COUNT)], LINE_A, now=1)
    assert run.requests == []
    run.feed([encode_packet(SESSION, 7, [], count=MOLD_HEARTBEAT_COUNT)], LINE_A, now=2)
    assert run.requests == [(WIRE_SESSION, 4, 3)]
    run.feed([encode_packet(SESSION, 10, [], count=MOLD_END_OF_SESSION_COUNT)], LINE_A, now=3)
    run.feed([packet(4, 6)], LINE_RECOVERY, now=4)
    run.assert_delivered(1, 9)
    assert run.arbiter.stats()["lines"]["A"]["heartbeats"] == 3  # end of session counts with them


def test_hold_full_gives_the_oldest_hole_up_early():
    run = Run(lines=1, hold_messages=8, give_up_ns=10**12)
    run.feed([packet(1)], LINE_A, now=0)
    run.feed([packet(7)], LINE_A, now=1)  # held in the window 4..11
    assert run.arbiter.stats()["held"] == 3
    run.feed([packet(10)], LINE_A, now=2)  # 12 is beyond it: hole 4..6 goes
    assert run.arbiter.take_events() == [GapGivenUp("TEST1", 4, 6, 2, GiveUpReason.GIVE_UP_HOLD_FULL)]
    assert run.seqs == [1, 2, 3] + list(range(7, 13))
    # the byte bound: messages of at most 12 bytes, 40 bytes of hold
    run = Run(lines=1, hold_bytes=40, give_up_ns=10**12)
    run.feed([packet(1)], LINE_A, now=0)
    run.feed([packet(7, 6)], LINE_A, now=1)
    st = run.arbiter.stats()
    assert st["given_up_hold_full"] >= 1 and st["held"] * 7 <= 40
    run.feed([packet(4, 3)], LINE_RECOVERY, now=2)
    assert sorted(set(run.seqs)) == run.seqs  # never out of order, never twice
    assert run.seqs[-1] == 12


def test_several_sessions_are_independent():
    run = Run(lines=1)
    run.feed([packet(1, session=b"S1"), packet(1, session=b"S2"), packet(7, session=b"S1")], LINE_A, now=0)
    assert run.arbiter.sessions == ["S1", "S2"]
    assert run.requests == [(b"S1        ", 4, 3)]
    frames = run.feed([packet(4, session=b"S1"), packet(4, session=b"S2")], LINE_RECOVERY, now=1)
    assert list(frames["session"]) == [0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert list(frames["sequence"]) == [4, 5, 6, 7, 8, 9, 4, 5, 6]
    assert run.arbiter.next_expected("S1") == 10 and run.arbiter.next_expected("S2") == 7


def test_bad_packets_are_counted_and_skipped():
    run = Run(lines=1)
    good = packet(1)
    cut = packet(4)[:-2]  # last message runs past the end
    run.feed([b"short", good, cut], LINE_A, now=0)
    assert run.seqs == [1, 2, 3, 4, 5]
    assert run.arbiter.stats()["lines"]["A"]["bad_packets"] == 2
    assert run.requests == [(WIRE_SESSION, 6, 1)]


def test_first_packet_starts_the_session_without_expect_from():
    arbiter = Arbiter()
    buf, frames = arbiter.feed(batch([packet(500)], ts=7), LINE_A)
    assert list(frames["sequence"]) == [500, 501, 502] and list(frames["ts_recv"]) == [7, 7, 7]


def test_a_long_random_stream_with_drops_on_both_lines_is_delivered_exactly():
    rng = np.random.default_rng(5)
    sizes = rng.integers(1, 6, 600)
    firsts = np.concatenate([[1], 1 + np.cumsum(sizes)[:-1]])
    keep = firsts + sizes - 1 <= 2000
    firsts, sizes = firsts[keep], sizes[keep]
    last = int(firsts[-1] + sizes[-1] - 1)
    pk = [packet(int(f), int(n)) for f, n in zip(firsts, sizes)]
    lost_a = rng.random(len(pk)) < 0.1
    lost_b = rng.random(len(pk)) < 0.1
    server = {int(f): (int(f), int(n)) for f, n in zip(firsts, sizes)}

    run = Run(max_request_messages=7)
    t = 0
    for i in range(0, len(pk), 8):
        for line, lost in ((LINE_A, lost_a), (LINE_B, lost_b)):
            part = [pk[j] for j in range(i, min(i + 8, len(pk))) if not lost[j]]
            t += 1000
            run.feed(part, line, now=t)
        while run.requests:  # a server that answers each request with the packet holding its first message
            _, first, count = run.requests.pop(0)
            start = max(f for f in server if f <= first)
            run.feed([packet(first, min(count, start + server[start][1] - first))], LINE_RECOVERY, now=t)
    run.assert_delivered(1, last)
    st = run.arbiter.stats()
    both = int((lost_a & lost_b).sum())
    assert both > 0 and st["holes"] >= 1 and st["recovered"] >= both and st["given_up"] == 0
    assert st["lines"]["A"]["messages"] + st["lines"]["B"]["messages"] + st["recovered"] == last


def test_output_feeds_the_itch_normalizer_like_a_clean_capture(tmp_path):
    """Frames from the arbiter (A losing packets, B filling them) decode to the same records as the capture."""
    from captures.generator import generate
    from captures.reader import open_capture
    from parsers.clock import VenueClock
    from parsers.itch50_normalize import ItchNormalizer

    day = generate(messages=5000, symbols=20, seed=4)
    path = tmp_path / "day.pcap"
    day.write(path, session="DAY")
    capture = open_capture(path)
    table = capture.packet_table()
    rows = table.packets
    lost_a = np.random.default_rng(2).random(len(rows)) < 0.05

    def line_batch(keep):
        part = rows[keep]
        return PacketBatch(table.buf, part["offset"].astype(np.int64), part["length"].astype(np.int32),
                           part["ts_recv"].astype(np.int64), part["dst_ip"], part["dst_port"])

    arbiter = Arbiter(expect_from=1)
    clock = VenueClock(day.date, "America/New_York")
    live, clean = ItchNormalizer(clock=clock), ItchNormalizer(clock=clock)
    got = [live.normalize(*arbiter.feed(line_batch(~lost_a), LINE_A)),
           live.normalize(*arbiter.feed(line_batch(np.ones(len(rows), bool)), LINE_B))]
    want = clean.normalize(*capture.frames())
    assert arbiter.stats()["lines"]["B"]["messages"] > 0 and arbiter.stats()["delivered"] == 5000
    for name, rows_want in want.records().items():
        rows_got = np.concatenate([g.records()[name] for g in got])
        assert len(rows_got) == len(rows_want), name
        for column in rows_want.dtype.names:
            assert np.array_equal(rows_got[column], rows_want[column]), (name, column)
