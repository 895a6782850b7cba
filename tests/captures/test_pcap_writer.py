"""Writers: what they write, the readers (and dpkt) read back."""
from __future__ import annotations

import struct

import dpkt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captures.pcap_writer import write_binaryfile, write_moldudp64_pcap
from captures.reader import open_capture
from parsers.frames import FRAME_DTYPE, FrameFlag
from parsers.moldudp64 import encode_packet

T0 = 1_700_000_000_123_456_789


def _messages(bodies: list[bytes]):
    buf = np.frombuffer(b"".join(bodies), dtype=np.uint8)
    lengths = np.array([len(b) for b in bodies], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return buf, offsets, lengths


def _read_back(path):
    cap = open_capture(path)
    buf, frames = cap.frames()
    bodies = [buf[o : o + n].tobytes() for o, n in zip(frames["offset"], frames["length"])]
    return cap, frames, bodies


def test_round_trip_messages_sequences_timestamps(tmp_path):
    bodies = [bytes([65 + i % 26]) * (5 + i % 40) for i in range(500)]
    buf, offsets, lengths = _messages(bodies)
    ts = T0 + (np.arange(500) // 7) * 10_000  # seven messages per instant, 10 us apart
    p = tmp_path / "rt.pcap"
    summary = write_moldudp64_pcap(p, buf, offsets, lengths, ts, session=b"SESS000001", start_sequence=1000)
    cap, frames, got = _read_back(p)
    assert got == bodies
    assert frames["sequence"].tolist() == list(range(1000, 1500))
    assert frames["ts_recv"].tolist() == ts.tolist()
    assert cap.kind == "pcap"
    stats = cap.stats
    assert stats.sessions == ["SESS000001"] and stats.gaps == [] and stats.anomalies == {}
    assert stats.packets == summary.packets == 500 // 7 + 1
    assert (stats.first_ts_recv, stats.last_ts_recv) == (int(ts[0]), int(ts[-1]))
    assert summary.bytes == p.stat().st_size


def test_dpkt_parses_and_checksums_verify(tmp_path):
    bodies = [b"Aodd", b"Beven!", b"C"]
    buf, offsets, lengths = _messages(bodies)
    p = tmp_path / "ck.pcap"
    write_moldudp64_pcap(p, buf, offsets, lengths, np.array([T0, T0, T0 + 5000], np.int64), nanosecond=True)
    with open(p, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        records = list(reader)
    assert len(records) == 2
    payloads = []
    for _, frame in records:
        eth = dpkt.ethernet.Ethernet(frame)
        assert eth.dst == bytes.fromhex("01005e010101")  # 239.1.1.1
        ip = eth.data
        assert isinstance(ip, dpkt.ip.IP) and ip.p == dpkt.ip.IP_PROTO_UDP
        assert dpkt.in_cksum(bytes(frame[14:34])) == 0  # IPv4 header checksum verifies
        udp_bytes = frame[34:]
        pseudo = ip.src + ip.dst + struct.pack(">BBH", 0, 17, len(udp_bytes))
        assert dpkt.in_cksum(pseudo + udp_bytes) == 0  # UDP checksum verifies
        assert (ip.data.sport, ip.data.dport) == (26400, 26400)
        payloads.append(bytes(ip.data.data))
    assert payloads == [encode_packet(b"FEEDHNDLR1", 1, bodies[:2]), encode_packet(b"FEEDHNDLR1", 3, bodies[2:])]


def test_microsecond_output_window_and_end_of_session(tmp_path):
    bodies = [b"A1", b"A2", b"A3", b"A4"]
    buf, offsets, lengths = _messages(bodies)
    ts = np.array([T0, T0 + 400, T0 + 900, T0 + 5000], np.int64)
    frames = np.zeros(4, FRAME_DTYPE)
    frames["offset"], frames["length"], frames["ts_recv"] = offsets, lengths, ts
    p = tmp_path / "us.pcap"
    summary = write_moldudp64_pcap(p, buf, frames, nanosecond=False, end_of_session=True, window_ns=1000)
    assert summary.packets == 3  # [A1 A2 A3] within 1 us, [A4], end of session
    with open(p, "rb") as f:
        assert f.read(4) == struct.pack("<I", 0xA1B2C3D4)
    cap, got_frames, got = _read_back(p)
    assert got == bodies
    # a packet carries the time of its latest message, cut to microseconds
    assert got_frames["ts_recv"].tolist() == [(T0 + 900) // 1000 * 1000] * 3 + [(T0 + 5000) // 1000 * 1000]
    assert got_frames["flags"].tolist() == [0, 0, int(FrameFlag.LAST_IN_PACKET), int(FrameFlag.LAST_IN_PACKET)]
    assert cap.stats.end_of_session == 1 and cap.stats.gaps == []


def test_max_payload_is_respected(tmp_path):
    bodies = [bytes([66]) * 100] * 50
    buf, offsets, lengths = _messages(bodies)
    p = tmp_path / "mp.pcap"
    write_moldudp64_pcap(p, buf, offsets, lengths, np.zeros(50, np.int64), max_payload=500)
    cap, frames, got = _read_back(p)
    table = cap.packet_table()
    assert table.packets["length"].max() <= 500
    assert table.packets["length"].tolist()[:2] == [20 + 4 * 102, 20 + 4 * 102]
    assert got == bodies


def test_writer_rejects_bad_input(tmp_path):
    buf, offsets, lengths = _messages([b"abc"])
    with pytest.raises(ValueError):
        write_moldudp64_pcap(tmp_path / "x.pcap", buf, offsets, lengths + 1)
    with pytest.raises(TypeError):
        write_moldudp64_pcap(tmp_path / "x.pcap", buf, offsets)
    with pytest.raises(ValueError):
        write_moldudp64_pcap(tmp_path / "x.pcap", buf, offsets, lengths, max_payload=10)


@pytest.mark.parametrize("compress", [False, True])
def test_binaryfile_round_trip(tmp_path, compress):
    bodies = [b"Sxyz", b"A" * 36, b"D" * 19]
    buf, offsets, lengths = _messages(bodies)
    p = tmp_path / "day.bin"
    write_binaryfile(p, buf, offsets, lengths, gzip=compress)
    raw = p.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == compress
    cap, frames, got = _read_back(p)
    assert cap.kind == "binaryfile" and cap.compressed == compress
    assert got == bodies
    assert frames["sequence"].tolist() == [1, 2, 3]
    if not compress:
        assert raw == b"".join(len(b).to_bytes(2, "big") + b for b in bodies)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.binary(min_size=1, max_size=80), st.integers(0, 3000)), min_size=1, max_size=120),
    st.integers(min_value=22 + 80, max_value=1500),
)
def test_round_trip_property(tmp_path_factory, items, max_payload):
    bodies = [b for b, _ in items]
    # equal times within a group, so the packet time equals each message's time
    ts = T0 + np.cumsum([d for _, d in items]).astype(np.int64) // 1001 * 1_000_000
    buf, offsets, lengths = _messages(bodies)
    p = tmp_path_factory.mktemp("prop") / "p.pcap"
    write_moldudp64_pcap(p, buf, offsets, lengths, ts, max_payload=max_payload, start_sequence=7)
    cap, frames, got = _read_back(p)
    assert got == bodies
    assert frames["sequence"].tolist() == list(range(7, 7 + len(bodies)))
    assert frames["ts_recv"].tolist() == ts.tolist()
    assert cap.stats.anomalies == {} and cap.stats.gaps == []
