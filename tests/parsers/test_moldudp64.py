"""MoldUDP64 framing, sequence tracking and encoding, checked on literal bytes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.frames import FRAME_DTYPE, FrameFlag
from parsers.moldudp64 import (
    MOLD_END_OF_SESSION_COUNT,
    MOLD_HEARTBEAT_COUNT,
    MoldSessionTracker,
    encode_packet,
    pack_messages,
    plan_packets,
    session_bytes,
)

LAST = int(FrameFlag.LAST_IN_PACKET)
BAD_TS = int(FrameFlag.BAD_TS_RECV)


def _batch(packets: list[bytes], ts: list[int] | None = None):
    """Concatenate payloads into one buffer; return (buf, offsets, lengths, ts)."""
    buf = np.frombuffer(b"".join(packets), dtype=np.uint8)
    lengths = np.array([len(p) for p in packets], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ts_arr = np.array(ts if ts is not None else [1000 * (i + 1) for i in range(len(packets))], dtype=np.int64)
    return buf, offsets, lengths, ts_arr


def _rows(frames: np.ndarray) -> list[tuple]:
    return [tuple(int(v) for v in row) for row in frames.tolist()]


def _bodies(buf: np.ndarray, frames: np.ndarray) -> list[bytes]:
    return [buf[o : o + n].tobytes() for o, n in zip(frames["offset"], frames["length"])]


def test_encode_packet_literal_bytes():
    pkt = encode_packet(b"SESSION001", 0x0102030405060708, [b"AB", b"C"])
    assert pkt == (
        b"SESSION001" + bytes.fromhex("0102030405060708") + b"\x00\x02" + b"\x00\x02AB" + b"\x00\x01C"
    )
    assert encode_packet(b"S", 9, [], count=MOLD_HEARTBEAT_COUNT) == b"S         " + (9).to_bytes(8, "big") + b"\x00\x00"
    assert encode_packet(b"S", 9, [], count=MOLD_END_OF_SESSION_COUNT)[-2:] == b"\xff\xff"
    with pytest.raises(ValueError):
        session_bytes(b"ELEVENCHARS")


def test_one_packet_several_messages_exact_rows():
    buf, off, ln, ts = _batch([encode_packet(b"SESSION001", 100, [b"Aaaa", b"Bb", b"Cccccc"])], [777])
    tr = MoldSessionTracker()
    frames = tr.frame_packets(buf, off, ln, ts)
    assert frames.dtype == FRAME_DTYPE
    # (offset, ts_recv, sequence, length, session, flags): bodies start after the 20-byte header + 2
    assert _rows(frames) == [(22, 777, 100, 4, 0, 0), (28, 777, 101, 2, 0, 0), (32, 777, 102, 6, 0, LAST)]
    assert _bodies(buf, frames) == [b"Aaaa", b"Bb", b"Cccccc"]
    assert tr.sessions == ["SESSION001"]
    assert (tr.packets, tr.messages, tr.gaps, tr.anomalies) == (1, 3, [], {})
    assert tr.next_expected("SESSION001") == 103


def test_heartbeat_end_of_session_gap_duplicate_overlap():
    s = b"SESSION001"
    packets = [
        encode_packet(s, 1, [b"m1", b"m2"]),  # seq 1-2
        encode_packet(s, 3, [], count=MOLD_HEARTBEAT_COUNT),  # heartbeat at the expected seq: nothing
        encode_packet(s, 6, [b"m6"]),  # gap 3..5
        encode_packet(s, 1, [b"m1", b"m2"]),  # wholly below: duplicate, dropped
        encode_packet(s, 5, [b"m5", b"m6", b"m7", b"m8"]),  # partial overlap: keeps 7, 8
        encode_packet(s, 12, [], count=MOLD_HEARTBEAT_COUNT),  # heartbeat above expected 9: gap 9..11
        encode_packet(s, 12, [], count=MOLD_END_OF_SESSION_COUNT),
    ]
    buf, off, ln, ts = _batch(packets)
    tr = MoldSessionTracker()
    frames = tr.frame_packets(buf, off, ln, ts)
    assert _bodies(buf, frames) == [b"m1", b"m2", b"m6", b"m7", b"m8"]
    assert frames["sequence"].tolist() == [1, 2, 6, 7, 8]
    assert frames["ts_recv"].tolist() == [1000, 1000, 3000, 5000, 5000]
    assert frames["flags"].tolist() == [0, LAST, LAST, 0, LAST]
    assert tr.gaps == [
        {"session": "SESSION001", "first_missing": 3, "count": 3},
        {"session": "SESSION001", "first_missing": 9, "count": 3},
    ]
    assert (tr.packets, tr.messages, tr.heartbeats, tr.end_of_session) == (7, 5, 2, 1)
    assert (tr.duplicates, tr.duplicate_messages) == (1, 4)  # 2 of the duplicate packet, m5 and m6 of the overlap
    assert tr.next_expected("SESSION001") == 12
    assert tr.anomalies == {}


def test_overrun_keeps_messages_before_it_and_reports_the_rest_as_gap():
    s = b"SESSION001"
    bad = encode_packet(s, 1, [b"one", b"two", b"three"])[:-2]  # last message cut by 2 bytes
    lying_count = encode_packet(s, 4, [b"four"], count=2)  # declares 2, carries 1: no room for a length
    buf, off, ln, ts = _batch([bad, lying_count, encode_packet(s, 6, [b"six"])])
    tr = MoldSessionTracker()
    frames = tr.frame_packets(buf, off, ln, ts)
    assert _bodies(buf, frames) == [b"one", b"two", b"four", b"six"]
    assert frames["sequence"].tolist() == [1, 2, 4, 6]
    assert frames["flags"].tolist() == [0, LAST, LAST, LAST]
    assert tr.anomalies == {"mold_overrun": 2}
    # message 3 and 5 were never delivered: they surface as gaps for recovery
    assert tr.gaps == [
        {"session": "SESSION001", "first_missing": 3, "count": 1},
        {"session": "SESSION001", "first_missing": 5, "count": 1},
    ]


def test_short_packet_is_an_anomaly_and_skipped():
    buf, off, ln, ts = _batch([b"x" * 19, encode_packet(b"S", 1, [b"ok"]), b""])
    tr = MoldSessionTracker()
    frames = tr.frame_packets(buf, off, ln, ts)
    assert _bodies(buf, frames) == [b"ok"]
    assert tr.anomalies == {"mold_short_packet": 2}
    assert tr.packets == 1
    assert tr.sessions == ["S"]


def test_sessions_get_stable_indices_and_own_sequences_across_batches():
    tr = MoldSessionTracker()
    buf, off, ln, ts = _batch([encode_packet(b"BBB", 10, [b"b10"]), encode_packet(b"AAA", 1, [b"a1"])])
    f1 = tr.frame_packets(buf, off, ln, ts)
    assert tr.sessions == ["BBB", "AAA"]
    assert f1["session"].tolist() == [0, 1]
    buf, off, ln, ts = _batch(
        [encode_packet(b"CCC", 5, [b"c5"]), encode_packet(b"AAA", 2, [b"a2"]), encode_packet(b"BBB", 12, [b"b12"])]
    )
    f2 = tr.frame_packets(buf, off, ln, ts)
    assert tr.sessions == ["BBB", "AAA", "CCC"]
    assert f2["session"].tolist() == [2, 1, 0]
    assert f2["sequence"].tolist() == [5, 2, 12]
    assert tr.gaps == [{"session": "BBB", "first_missing": 11, "count": 1}]


def test_receive_time_going_backwards_is_flagged():
    buf, off, ln, ts = _batch([encode_packet(b"S", 1, [b"a"]), encode_packet(b"S", 2, [b"b", b"c"])], [2000, 1000])
    frames = MoldSessionTracker().frame_packets(buf, off, ln, ts)
    assert frames["flags"].tolist() == [LAST, BAD_TS, BAD_TS | LAST]


def test_plan_and_pack_match_encode_packet():
    messages = [b"A" * 10, b"B" * 30, b"C" * 5, b"D" * 7, b"E" * 40]
    buf = np.frombuffer(b"".join(messages), dtype=np.uint8)
    lengths = np.array([len(m) for m in messages], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ts = np.array([0, 0, 500, 3000, 3000], dtype=np.int64)
    # 20 + 12 + 32 = 64 fits in 70; C joins (within 1 us) only if room: 64 + 7 > 70 -> new packet
    first, count, size, pts = plan_packets(lengths, ts, 70, 1000)
    assert first.tolist() == [0, 2, 3, 4]
    assert count.tolist() == [2, 1, 1, 1]
    assert size.tolist() == [64, 27, 29, 62]
    assert pts.tolist() == [0, 500, 3000, 3000]
    seq = np.array([7, 9, 10, 11], dtype=np.uint64)
    pos = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    out = np.zeros(int(size.sum()), np.uint8)
    pack_messages(out, pos, buf, offsets, lengths, first, count, np.frombuffer(session_bytes(b"S"), np.uint8), seq)
    expected = (
        encode_packet(b"S", 7, messages[0:2])
        + encode_packet(b"S", 9, messages[2:3])
        + encode_packet(b"S", 10, messages[3:4])
        + encode_packet(b"S", 11, messages[4:5])
    )
    assert out.tobytes() == expected


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=60), min_size=1, max_size=80),
    st.integers(min_value=1, max_value=2**40),
    st.integers(min_value=1, max_value=7),
)
def test_round_trip_and_chunking_do_not_change_frames(messages, start, per_packet):
    packets = [
        encode_packet(b"PROP", start + i, messages[i : i + per_packet]) for i in range(0, len(messages), per_packet)
    ]
    buf, off, ln, ts = _batch(packets)
    whole = MoldSessionTracker().frame_packets(buf, off, ln, ts)
    assert _bodies(buf, whole) == messages
    assert whole["sequence"].tolist() == list(range(start, start + len(messages)))
    tr = MoldSessionTracker()
    parts = [tr.frame_packets(buf, off[i : i + 2], ln[i : i + 2], ts[i : i + 2]) for i in range(0, len(packets), 2)]
    assert np.array_equal(np.concatenate(parts), whole)
    assert tr.gaps == [] and tr.messages == len(messages)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=20))
def test_arbitrary_payloads_never_point_outside_their_packet(payloads):
    packets = [b"RANDOMSESS" + p if i % 2 else p for i, p in enumerate(payloads)]
    buf, off, ln, ts = _batch(packets)
    tr = MoldSessionTracker()
    frames = tr.frame_packets(buf, off, ln, ts)
    starts = frames["offset"].astype(np.int64)
    owner = np.searchsorted(off, starts, side="right") - 1
    assert (starts + frames["length"] <= off[owner] + ln[owner]).all()
    assert len(np.unique(frames["sequence"][frames["session"] == 0])) == int((frames["session"] == 0).sum())
