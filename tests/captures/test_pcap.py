"""pcap/pcapng packet tables from captures crafted with scapy and dpkt."""
from __future__ import annotations

import io
import struct

import dpkt
import dpkt.pcapng
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw
from scapy.utils import RawPcapWriter

from captures.pcap import (
    PACKET_DTYPE,
    PcapFormatError,
    parse_pcap_buffer,
    parse_pcapng_bytes,
    read_pcap,
    read_pcapng,
)

T0 = 1_692_711_000  # 2023-08-22 13:30:00 UTC


def test_packet_dtype_layout_is_pinned():
    assert PACKET_DTYPE.itemsize == 32
    assert [(n, PACKET_DTYPE.fields[n][1]) for n in PACKET_DTYPE.names] == [
        ("ts_recv", 0), ("offset", 8), ("length", 16), ("src_ip", 20), ("dst_ip", 24), ("src_port", 28), ("dst_port", 30)
    ]


def _udp(payload: bytes, sport: int = 1234, dport: int = 26477, src="10.1.2.3", dst="233.54.12.111"):
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)


def _pcap(frames: list, stamps: list[tuple[int, int]], *, nano: bool, endian: str = "<", linktype: int = 1,
          cut: dict[int, int] | None = None) -> bytes:
    """Write frames with scapy; ``stamps`` are (sec, usec-or-nsec); ``cut`` maps index -> captured length."""
    f = io.BytesIO()
    w = RawPcapWriter(f, linktype=linktype, nano=nano, endianness=endian, sync=True)
    w._write_header(None)
    for i, (frame, (sec, frac)) in enumerate(zip(frames, stamps)):
        raw = bytes(frame)
        if cut and i in cut:
            w.write_packet(raw[: cut[i]], sec=sec, usec=frac, wirelen=len(raw))
        else:
            w.write_packet(raw, sec=sec, usec=frac)
    return f.getvalue()


def _table(data: bytes):
    return parse_pcap_buffer(np.frombuffer(data, dtype=np.uint8))


def _payloads(table) -> list[bytes]:
    return [table.buf[o : o + n].tobytes() for o, n in zip(table.packets["offset"], table.packets["length"])]


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_ethernet_vlan_none_single_double(nano, endian):
    frames = [
        Ether() / _udp(b"plain"),
        Ether() / Dot1Q(vlan=141) / _udp(b"one tag", sport=49653),
        Ether() / Dot1AD(vlan=7) / Dot1Q(vlan=141) / _udp(b"two tags", dport=26400),
    ]
    stamps = [(T0, 7), (T0 + 1, 999_999_999 if nano else 999_999), (T0 + 38, 0)]
    t = _table(_pcap(frames, stamps, nano=nano, endian=endian))
    scale = 1 if nano else 1000
    assert t.packets["ts_recv"].tolist() == [
        T0 * 10**9 + 7 * scale, (T0 + 1) * 10**9 + (999_999_999 if nano else 999_999_000), (T0 + 38) * 10**9
    ]
    assert _payloads(t) == [b"plain", b"one tag", b"two tags"]
    assert t.packets["src_port"].tolist() == [1234, 49653, 1234]
    assert t.packets["dst_port"].tolist() == [26477, 26477, 26400]
    assert t.packets["src_ip"].tolist() == [0x0A010203] * 3
    assert t.packets["dst_ip"].tolist() == [0xE9360C6F] * 3
    # the payload offset points past 14 (+4 per tag) + 20 + 8 bytes of headers and a 16-byte record header
    assert int(t.packets["offset"][0]) == 24 + 16 + 42
    assert t.anomalies == {}
    assert t.records == 3


def test_skipped_packets_are_counted_by_reason():
    frames = [
        Ether() / IP(dst="1.2.3.4") / TCP() / Raw(b"tcp"),
        Ether() / IPv6() / UDP() / Raw(b"v6"),
        Ether(type=0x0806) / Raw(b"\x00" * 28),  # ARP
        Ether() / IP(flags="MF", frag=0) / UDP() / Raw(b"first fragment"),
        Ether() / IP(frag=10, proto=17) / Raw(b"later fragment"),
        Ether() / _udp(b"kept"),
    ]
    t = _table(_pcap(frames, [(T0, i) for i in range(len(frames))], nano=True))
    assert _payloads(t) == [b"kept"]
    assert t.anomalies == {"not_udp": 1, "not_ipv4": 2, "ip_fragment": 2}


def test_ip_options_ethernet_padding_and_snaplen_cut():
    with_options = Ether() / IP(options=b"\x94\x04\x00\x00") / UDP(dport=5) / Raw(b"after options")
    padded = bytes(Ether() / _udp(b"x")) + b"\x00" * 20  # bytes past the UDP length: Ethernet padding
    full = Ether() / _udp(b"0123456789abcdef")
    t = _table(_pcap([with_options, padded, full], [(T0, 0)] * 3, nano=False, cut={2: 14 + 28 + 10}))
    assert _payloads(t) == [b"after options", b"x", b"0123456789"]
    assert int(t.packets["dst_port"][0]) == 5
    assert t.anomalies == {"udp_truncated": 1}


@pytest.mark.parametrize("cut_bytes", [1, 8, 16, 17, 30])
def test_truncated_last_record_keeps_earlier_packets(cut_bytes):
    frames = [Ether() / _udp(b"first"), Ether() / _udp(b"second"), Ether() / _udp(b"third")]
    data = _pcap(frames, [(T0, 1), (T0, 2), (T0, 3)], nano=True)
    t = _table(data[:-cut_bytes])
    assert _payloads(t) == [b"first", b"second"]
    assert t.anomalies == {"truncated_record": 1}


def test_linux_cooked_and_raw_ip_link_types():
    sll = _pcap([CookedLinux(proto=0x0800) / _udp(b"cooked")], [(T0, 5)], nano=True, linktype=113)
    assert _payloads(_table(sll)) == [b"cooked"]
    for linktype in (101, 228):
        raw = _pcap([_udp(b"raw ip")], [(T0, 5)], nano=True, linktype=linktype)
        t = _table(raw)
        assert _payloads(t) == [b"raw ip"] and t.link_types == (linktype,)
    other = _pcap([Raw(b"\x00" * 40)], [(T0, 5)], nano=True, linktype=147)
    assert _table(other).anomalies == {"unsupported_link_type": 1}


def test_empty_pcap_and_bad_magic(tmp_path):
    header_only = _pcap([], [], nano=True)
    t = _table(header_only)
    assert t.packets.shape == (0,) and t.anomalies == {}
    with pytest.raises(PcapFormatError):
        _table(b"\x00" * 40)
    p = tmp_path / "x.pcap"
    p.write_bytes(_pcap([Ether() / _udp(b"file")], [(T0, 1)], nano=False))
    assert _payloads(read_pcap(p)) == [b"file"]


# ---------------------------------------------------------------------------------------------------
# pcapng


def _pcapng(frames: list[bytes], ticks: list[int], tsresol: int | None = None) -> bytes:
    f = io.BytesIO()
    opts = []
    if tsresol is not None:
        opts = [dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL, data=bytes([tsresol])),
                dpkt.pcapng.PcapngOptionLE(code=dpkt.pcapng.PCAPNG_OPT_ENDOFOPT)]
    idb = dpkt.pcapng.InterfaceDescriptionBlockLE(snaplen=65535, opts=opts) if opts else None
    w = dpkt.pcapng.Writer(f, snaplen=65535, idb=idb)
    for frame, tick in zip(frames, ticks):
        epb = dpkt.pcapng.EnhancedPacketBlockLE(pkt_data=frame, ts_high=tick >> 32, ts_low=tick & 0xFFFFFFFF)
        w.writepkt(epb)
    return f.getvalue()


def test_pcapng_microsecond_default_and_nanosecond_resolution(tmp_path):
    frames = [bytes(Ether() / Dot1Q(vlan=3) / _udp(b"ng one")), bytes(Ether() / _udp(b"ng two", sport=9))]
    us = T0 * 10**6 + 123_456
    t = parse_pcapng_bytes(_pcapng(frames, [us, us + 1]))
    assert _payloads(t) == [b"ng one", b"ng two"]
    assert t.packets["ts_recv"].tolist() == [us * 1000, (us + 1) * 1000]
    assert t.packets["src_port"].tolist() == [1234, 9]
    ns = T0 * 10**9 + 123_456_789
    p = tmp_path / "ns.pcapng"
    p.write_bytes(_pcapng(frames, [ns, ns + 1], tsresol=9))
    assert read_pcapng(p).packets["ts_recv"].tolist() == [ns, ns + 1]


def test_pcapng_truncated_block_keeps_earlier_packets():
    frames = [bytes(Ether() / _udp(b"kept %d" % i)) for i in range(3)]
    data = _pcapng(frames, [1, 2, 3])
    for cut in (1, 20, 40):
        t = parse_pcapng_bytes(data[:-cut])
        assert _payloads(t) == [b"kept 0", b"kept 1"]
        assert t.anomalies == {"truncated_record": 1}
    with pytest.raises(PcapFormatError):
        parse_pcapng_bytes(data[:10])


def test_real_iex_pcapng_truncated(real_data):
    t = read_pcapng(real_data / "iex-tops" / "hist-2018-01-03-head-truncated.pcapng")
    assert t.anomalies == {"truncated_record": 1}
    assert t.packets["dst_port"].tolist() == [10377, 10377]
    assert t.packets["length"].tolist() == [40, 1469]
    assert t.packets["ts_recv"].tolist() == [1514983023518791000, 1514983024499887000]


def test_real_nasdaq_pcap_vlan_nanosecond(real_data):
    t = read_pcap(real_data / "nasdaq-itch50" / "Multiple.Packets.pcap")
    assert t.anomalies == {}
    assert t.packets["dst_port"].tolist() == [26477, 26477]
    assert t.packets["length"].tolist() == [41, 1472]
    assert t.packets["ts_recv"].tolist() == [1692711000007661955, 1692711038952561782]
    assert [t.buf[o : o + 10].tobytes() for o in t.packets["offset"]] == [b"000010059B"] * 2
    assert struct.unpack(">Q", t.buf[t.packets["offset"][0] + 10 :][:8].tobytes())[0] == 14764496


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_bytes_never_point_outside_the_buffer(data):
    frames = [Ether() / Dot1Q(vlan=1) / _udp(b"abcdefgh" * 3), Ether() / _udp(b"12345"), Ether() / _udp(b"z" * 40)]
    raw = bytearray(_pcap(frames, [(T0, 1), (T0, 2), (T0, 3)], nano=True))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(24, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(24, len(raw)))]
    t = _table(bytes(raw))
    ends = t.packets["offset"].astype(np.int64) + t.packets["length"]
    assert (t.packets["offset"] >= 0).all() and (ends <= len(raw)).all()
