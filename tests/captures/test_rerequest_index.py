"""captures/rerequest.py: MoldUDP64 request packets and answers built from a capture, checked from bytes.

(Not test_rerequest.py: tests/feedhandler/test_rerequest.py has that basename and the test folders are
not packages, so pytest cannot collect two modules of one name.)
"""
import struct

import numpy as np
import pytest

from captures.generator import generate
from captures.pcap_writer import write_binaryfile, write_moldudp64_pcap
from captures.reader import open_capture
from captures.rerequest import (
    BINARYFILE_MOLD_SESSION,
    REQUEST_LEN,
    MessageIndex,
    Rerequest,
    RerequestError,
    decode_request,
    encode_request,
)
from parsers.moldudp64 import MoldSessionTracker


def _messages(n: int, size: int = 10) -> list[bytes]:
    return [bytes([65 + i % 26]) + i.to_bytes(4, "big") + b"x" * (size - 5) for i in range(n)]


def _buffer(msgs: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    buf = np.frombuffer(b"".join(msgs), np.uint8)
    lengths = np.array([len(m) for m in msgs], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return buf, offsets, lengths


def _unpack(packet: bytes) -> tuple[bytes, int, list[bytes]]:
    session, seq, count = struct.unpack(">10sQH", packet[:20])
    pos, out = 20, []
    for _ in range(count):
        (n,) = struct.unpack(">H", packet[pos : pos + 2])
        out.append(packet[pos + 2 : pos + 2 + n])
        pos += 2 + n
    assert pos == len(packet)
    return session, seq, out


def test_request_packet_bytes():
    raw = encode_request("ABC", 0x0102030405060708, 0x0A0B)
    assert raw == b"ABC       " + bytes([1, 2, 3, 4, 5, 6, 7, 8]) + bytes([0x0A, 0x0B])
    assert len(raw) == REQUEST_LEN
    assert decode_request(raw) == Rerequest(b"ABC       ", 0x0102030405060708, 0x0A0B)
    assert Rerequest(b"ABC       ", 5, 3).encode() == encode_request(b"ABC", 5, 3)


@pytest.mark.parametrize(
    "raw, reason",
    [(b"", "must be 20 bytes, got 0"), (b"x" * 21, "got 21"), (b"SESSION123" + bytes(10), "0 messages")],
)
def test_bad_request_packets_are_one_line_errors(raw, reason):
    with pytest.raises(RerequestError, match=reason) as err:
        decode_request(raw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "session, seq, count, reason",
    [("S", 1, 0, "count must be within"), ("S", 1, 0xFFFF, "count must be within"), ("S", -1, 1, "u64"),
     ("ELEVENCHARS", 1, 1, "longer than 10")],
)
def test_bad_requests_cannot_be_encoded(session, seq, count, reason):
    with pytest.raises(RerequestError, match=reason):
        encode_request(session, seq, count)


def test_answer_carries_the_requested_messages_from_bytes():
    msgs = _messages(20)
    buf, offsets, lengths = _buffer(msgs)
    frames = np.zeros(20, dtype=[("offset", "<i8"), ("length", "<u4"), ("sequence", "<u8"), ("session", "<u2")])
    frames["offset"], frames["length"] = offsets, lengths
    frames["sequence"] = np.arange(100, 120)
    index = MessageIndex(buf, frames, ["SESS"])
    assert index.span("SESS") == (100, 119) and index.messages == 20
    session, seq, got = _unpack(index.answer(Rerequest(b"SESS      ", 103, 4)))
    assert (session, seq, got) == (b"SESS      ", 103, msgs[3:7])
    # the count is cut by the end of what the capture holds
    _, seq, got = _unpack(index.answer(Rerequest(b"SESS      ", 118, 50)))
    assert (seq, got) == (118, msgs[18:20])
    # nothing held there: no answer
    assert index.answer(Rerequest(b"SESS      ", 99, 5)) is None
    assert index.answer(Rerequest(b"SESS      ", 120, 1)) is None
    assert index.answer(Rerequest(b"OTHER     ", 100, 1)) is None


def test_answer_is_mtu_bounded_and_stops_at_a_capture_gap():
    msgs = _messages(200, size=30)
    buf, offsets, lengths = _buffer(msgs)
    frames = np.zeros(200, dtype=[("offset", "<i8"), ("length", "<u4"), ("sequence", "<u8"), ("session", "<u2")])
    frames["offset"], frames["length"] = offsets, lengths
    seqs = np.arange(1, 201, dtype=np.uint64)
    seqs[150:] += 10  # the capture lost 151..160
    frames["sequence"] = seqs
    index = MessageIndex(buf, frames, ["S"])
    packet = index.answer(Rerequest(b"S         ", 1, 200), max_payload=1400)
    _, seq, got = _unpack(packet)
    assert len(packet) <= 1400 and len(got) == (1400 - 20) // 32 and got == msgs[: len(got)]
    _, seq, got = _unpack(index.answer(Rerequest(b"S         ", 140, 100), max_payload=60000))
    assert (seq, got) == (140, msgs[139:150])
    _, seq, got = _unpack(index.answer(Rerequest(b"S         ", 161, 3)))
    assert (seq, got) == (161, msgs[150:153])
    assert index.answer(Rerequest(b"S         ", 155, 3)) is None


def test_index_of_a_pcap_answers_with_the_captured_bytes(tmp_path):
    session = generate(messages=3000, symbols=20, seed=3)
    path = tmp_path / "s.pcap"
    session.write(path, session="DAY1", start_sequence=7)
    index = MessageIndex.from_capture(open_capture(path))
    assert index.sessions == [b"DAY1      "] and index.span("DAY1") == (7, 3006)
    _, seq, got = _unpack(index.answer(Rerequest(b"DAY1      ", 7 + 1234, 5)))
    assert seq == 1241 and got == [session.message(1234 + k) for k in range(5)]
    # an answer is a downstream packet the framer reads like any other
    tracker = MoldSessionTracker()
    raw = np.frombuffer(index.answer(Rerequest(b"DAY1      ", 2000, 1000)), np.uint8)
    frames = tracker.frame_packets(raw, np.zeros(1, np.int64), np.array([raw.size]), np.zeros(1, np.int64))
    assert frames["sequence"][0] == 2000 and len(frames) > 10
    assert raw[frames["offset"][0] : frames["offset"][0] + frames["length"][0]].tobytes() == session.message(1993)


def test_index_of_a_binaryfile_uses_the_default_session(tmp_path):
    msgs = _messages(50)
    buf, offsets, lengths = _buffer(msgs)
    path = tmp_path / "day.itch"
    write_binaryfile(path, buf, offsets, lengths)
    index = MessageIndex.from_capture(open_capture(path))
    assert index.span(BINARYFILE_MOLD_SESSION) == (1, 50)
    _, seq, got = _unpack(index.answer(Rerequest(BINARYFILE_MOLD_SESSION.encode(), 10, 3)))
    assert (seq, got) == (10, msgs[9:12])


def test_index_keeps_one_copy_of_a_repeated_sequence():
    msgs = _messages(10)
    buf, offsets, lengths = _buffer(msgs)
    frames = np.zeros(20, dtype=[("offset", "<i8"), ("length", "<u4"), ("sequence", "<u8"), ("session", "<u2")])
    frames["offset"], frames["length"] = np.tile(offsets, 2), np.tile(lengths, 2)
    frames["sequence"] = np.tile(np.arange(1, 11), 2)  # the same messages twice (an A+B capture)
    index = MessageIndex(buf, frames[::-1].copy(), ["D"])
    assert index.messages == 10
    _, _, got = _unpack(index.answer(Rerequest(b"D         ", 1, 10)))
    assert got == msgs
