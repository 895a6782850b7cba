"""open_capture: detection by content, errors, stats, and the real Nasdaq capture."""
from __future__ import annotations

import collections
import gzip

import numpy as np
import pytest

from captures.pcap_writer import write_binaryfile, write_moldudp64_pcap
from captures.reader import CaptureError, CaptureStats, open_capture
from parsers.frames import FrameFlag
from parsers.moldudp64 import encode_packet

T0 = 1_700_000_000_000_000_000


def _bodies(buf, frames) -> list[bytes]:
    return [buf[o : o + n].tobytes() for o, n in zip(frames["offset"], frames["length"])]


def _put(directory, name: str, data: bytes):
    path = directory / name
    path.write_bytes(data)
    return path


def _write_pcap(path, bodies: list[bytes], **kw) -> None:
    buf = np.frombuffer(b"".join(bodies), dtype=np.uint8)
    lengths = np.array([len(b) for b in bodies], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ts = kw.pop("ts", np.full(len(bodies), T0, np.int64))
    write_moldudp64_pcap(path, buf, offsets, lengths, ts, **kw)


@pytest.mark.parametrize(
    "make,kind",
    [
        (lambda: b"\xd4\xc3\xb2\xa1" + bytes(20), "pcap"),
        (lambda: b"\xa1\xb2\xc3\xd4" + bytes(20), "pcap"),
        (lambda: b"\x4d\x3c\xb2\xa1" + bytes(20), "pcap"),
        (lambda: b"\xa1\xb2\x3c\x4d" + bytes(20), "pcap"),
        (lambda: b"\x00\x05Sabcd\x00\x03Axy", "binaryfile"),
    ],
)
def test_kind_from_content_whatever_the_name(tmp_path, make, kind):
    p = tmp_path / "capture.txt"
    p.write_bytes(make())
    assert open_capture(p).kind == kind
    g = tmp_path / "inside.pcap"
    g.write_bytes(gzip.compress(make()))
    cap = open_capture(g)
    assert (cap.kind, cap.compressed) == (kind, True)


def test_gzip_pcap_reads_like_plain(tmp_path):
    plain = tmp_path / "a.bin"
    _write_pcap(plain, [b"Sone", b"Atwo"])
    gz = tmp_path / "a.binaryfile"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    for p in (plain, gz):
        cap = open_capture(p)
        buf, frames = cap.frames()
        assert cap.kind == "pcap"
        assert _bodies(buf, frames) == [b"Sone", b"Atwo"]


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: d / "missing.pcap", "no such capture file: {p}"),
        (lambda d: d, "is a directory, not a capture file: {p}"),
        (lambda d: _put(d, "empty", b""), "empty capture file: {p}"),
        (
            lambda d: _put(d, "rand", np.random.default_rng(5).bytes(5000)),
            "not a pcap, pcapng or Nasdaq BinaryFILE capture: {p}",
        ),
        (
            lambda d: _put(d, "rgz", gzip.compress(b"hello world, not a capture")),
            "not a pcap, pcapng or Nasdaq BinaryFILE capture: {p}",
        ),
        (lambda d: _put(d, "badgz", b"\x1f\x8b\x08\x00garbage"), "corrupt gzip"),
        (lambda d: _put(d, "short", b"\xd4\xc3\xb2\xa1\x02\x00"), "pcap global header cut short"),
    ],
)
def test_errors_are_one_line_capture_errors(tmp_path, setup, message):
    p = setup(tmp_path)
    with pytest.raises(CaptureError) as info:
        open_capture(p)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(message.format(p=p).split("{")[0])
    assert str(p) in text


def test_pcapng_with_unreadable_header_fails_on_read(tmp_path):
    p = tmp_path / "bad.pcapng"
    p.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\x00" * 4)
    cap = open_capture(p)
    assert cap.kind == "pcapng"
    with pytest.raises(CaptureError, match="pcapng"):
        cap.frames()


def test_stats_and_udp_port_filter(tmp_path):
    p = tmp_path / "two.pcap"
    _write_pcap(p, [b"Sa", b"Ab", b"Dc"], ts=np.array([T0, T0 + 10**6, T0 + 2 * 10**6], np.int64), dst_port=26477)
    # a second file on another port, concatenated records: write, then append its records
    q = tmp_path / "other.pcap"
    _write_pcap(q, [b"Xother"], ts=np.array([T0 + 3 * 10**6], np.int64), dst_port=9999, session=b"OTHER")
    p.write_bytes(p.read_bytes() + q.read_bytes()[24:])
    cap = open_capture(p)
    buf, frames = cap.frames()
    assert _bodies(buf, frames) == [b"Sa", b"Ab", b"Dc", b"Xother"]
    assert cap.stats.sessions == ["FEEDHNDLR1", "OTHER"]
    only = open_capture(p, udp_port=26477)
    buf, frames = only.frames()
    assert _bodies(buf, frames) == [b"Sa", b"Ab", b"Dc"]
    assert only.stats == CaptureStats(
        packets=3, messages=3, sessions=["FEEDHNDLR1"], gaps=[], anomalies={}, heartbeats=0, end_of_session=0,
        duplicates=0, duplicate_messages=0, first_ts_recv=T0, last_ts_recv=T0 + 2 * 10**6,
    )


def test_iter_batches_equals_whole_file(tmp_path):
    p = tmp_path / "many.pcap"
    _write_pcap(p, [b"M%03d" % i for i in range(300)], ts=T0 + np.arange(300, dtype=np.int64) * 10**6)
    whole_buf, whole = open_capture(p).frames()
    cap = open_capture(p)
    parts = [frames for _, frames in cap.iter_batches(max_packets=7)]
    assert len(parts) == 300 // 7 + 1
    assert np.array_equal(np.concatenate(parts), whole)
    assert cap.stats.messages == 300 and cap.stats.gaps == []


def test_anomalies_of_both_layers_are_merged(tmp_path):
    p = tmp_path / "anom.pcap"
    _write_pcap(p, [b"Sfine", b"Ano"])
    raw = p.read_bytes()
    p.write_bytes(raw[:-3])  # cut the last record short
    cap = open_capture(p)
    cap.frames()
    assert cap.stats.anomalies == {"truncated_record": 1}


def test_binaryfile_stats(tmp_path):
    p = tmp_path / "day"
    bodies = [b"Sx", b"Ayy", b"Dz", b"Ez", b""]  # detection looks at the first 4 messages
    data = b"".join(len(b).to_bytes(2, "big") + b for b in bodies) + b"\x00\x09Dshort"
    p.write_bytes(data)
    cap = open_capture(p)
    buf, frames = cap.frames()
    assert cap.kind == "binaryfile"
    assert _bodies(buf, frames) == [b"Sx", b"Ayy", b"Dz", b"Ez"]
    assert cap.stats.anomalies == {"empty_message": 1, "truncated_message": 1}
    assert cap.stats.messages == 4 and cap.stats.packets == 0 and cap.stats.first_ts_recv is None


def test_real_nasdaq_multiple_packets(real_data):
    cap = open_capture(real_data / "nasdaq-itch50" / "Multiple.Packets.pcap")
    buf, frames = cap.frames()
    assert cap.kind == "pcap"
    assert frames.shape == (39,)
    assert frames["sequence"].tolist() == [14764496] + list(range(19009117, 19009117 + 38))
    assert collections.Counter(chr(buf[o]) for o in frames["offset"]) == {"A": 36, "F": 2, "D": 1}
    assert frames["flags"].tolist() == [int(FrameFlag.LAST_IN_PACKET)] + [0] * 37 + [int(FrameFlag.LAST_IN_PACKET)]
    assert frames["ts_recv"].tolist() == [1692711000007661955] + [1692711038952561782] * 38
    stats = cap.stats
    assert stats.packets == 2 and stats.messages == 39
    assert stats.sessions == ["000010059B"]
    assert stats.gaps == [{"session": "000010059B", "first_missing": 14764497, "count": 19009117 - 14764497}]
    assert stats.anomalies == {}
    assert open_capture(real_data / "nasdaq-itch50" / "Multiple.Packets.pcap", udp_port=1).frames()[1].shape == (0,)


def test_real_nasdaq_single_message_files(real_data):
    expected = {
        "AddOrderNoMpidAttributionMessage.pcap": "A",
        "MarketParticipantPositionMessage.pcap": "L",
        "NetOrderImbalanceIndicatorMessage.pcap": "I",
        "OrderDeleteMessage.pcap": "D",
        "OrderExecutedMessage.pcap": "E",
        "OrderReplaceMessage.pcap": "U",
        "StockTradingActionMessage.pcap": "H",
    }
    for name, letter in expected.items():
        cap = open_capture(real_data / "nasdaq-itch50" / name)
        buf, frames = cap.frames()
        assert [chr(buf[o]) for o in frames["offset"]] == [letter], name
        assert cap.stats.sessions == ["000010059B"] and cap.stats.anomalies == {}


def test_encode_packet_in_a_pcap_reads_back_exactly(tmp_path):
    # the writer lays out exactly what encode_packet builds (checked in test_pcap_writer); here a
    # heartbeat-only capture has packets but no frames
    p = tmp_path / "hb.pcap"
    write_moldudp64_pcap(p, np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), end_of_session=True)
    cap = open_capture(p)
    assert cap.frames()[1].shape == (0,)
    assert cap.stats.end_of_session == 1 and cap.stats.packets == 1
    assert len(encode_packet(b"X", 1, [], count=0)) == 20
