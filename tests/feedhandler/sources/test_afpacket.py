"""AfPacketSource across a real veth pair (namespace a sends, b receives), against SocketSource; the
frame parser from literal bytes; the classic filter's limits; refusals as one line."""
from __future__ import annotations

import os
import select
import socket
import time

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from feedhandler.sources import SourceError, ipv4_to_int, open_source
from feedhandler.sources.afpacket import AfPacketSource, locate_udp_payload, udp_filter_program
from feedhandler.sources.socket_source import SocketSource
from tests.feedhandler.netns import (
    ADDR_A,
    ADDR_B,
    mold_payloads,
    multicast_sender,
    netns_pair,  # noqa: F401  (fixture)
    send_payloads,
    wait_for_receive_timestamps,
)
from tests.feedhandler.sources.mold_check import assert_frames_back

GROUP = "239.77.2.1"
PORT = 26400


def drain(source, expected: int, timeout: float = 5.0, max_packets: int = 1024):
    """Read until ``expected`` packets came (or ``timeout``): payload copies, ts, group, port."""
    payloads, ts, groups, ports = [], [np.zeros(0, np.int64)], [np.zeros(0, np.uint32)], [np.zeros(0, np.uint16)]
    deadline = time.monotonic() + timeout
    while len(payloads) < expected and time.monotonic() < deadline:
        batch = source.read(max_packets, timeout=0.05)
        payloads += batch.payloads()
        ts.append(batch.ts_recv.copy())
        groups.append(batch.group.copy())
        ports.append(batch.port.copy())
    return payloads, np.concatenate(ts), np.concatenate(groups), np.concatenate(ports)


def settle(source, seconds: float = 0.05) -> None:
    """Let the kernel retire the block being filled (its timer is 1 ms by default)."""
    time.sleep(seconds)


# --- the same packets as the socket layer -----------------------------------------------------------

def test_same_packets_and_kernel_times_as_socket_source(netns_pair):
    pair = netns_pair
    packets, messages = mold_payloads(messages=6000, seed=21, max_payload=900)
    with pair.entered("b"):
        ring = AfPacketSource(pair.veths["b"], [(GROUP, PORT)])
        sock = SocketSource(GROUP, PORT, iface=pair.veths["b"])
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    wait_for_receive_timestamps()
    with ring, sock, sender:
        t_before = time.time_ns()
        send_payloads(sender, packets, GROUP, PORT)
        t_after = time.time_ns()
        got, ts, groups, ports = drain(ring, len(packets))
        ref, ref_ts, _, _ = drain(sock, len(packets))
        stats = ring.stats()

    assert len(packets) > 100 and got == packets and ref == packets
    assert (groups == ipv4_to_int(GROUP)).all() and (ports == PORT).all()
    # both read the skb's one receive time: the tap and the socket see the same instant
    assert np.abs(ts - ref_ts).max() < 1_000_000
    assert ts[0] >= t_before and ts[-1] <= t_after + 50_000_000 and (np.diff(ts) >= 0).all()
    assert stats["packets"] == len(packets) == stats["kernel_packets"]
    assert stats["bytes"] == sum(map(len, packets))
    assert stats["kernel_drops"] == 0 and stats["not_udp"] == 0 and stats["truncated"] == 0
    # and the payloads frame back into the generated ITCH messages without a gap
    assert_frames_back(got, ts, messages)


def test_kernel_filter_keeps_only_the_feed(netns_pair):
    pair = netns_pair
    feed = [b"feed %04d" % i for i in range(200)]
    with pair.entered("b"):
        ring = AfPacketSource(pair.veths["b"], [(GROUP, PORT)])
        tcp_listener = socket.create_server((ADDR_B, PORT))
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
        unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with ring, sender, unicast, tcp, tcp_listener:
        for i, payload in enumerate(feed):
            sender.sendto(payload, (GROUP, PORT))
            sender.sendto(b"other port", (GROUP, PORT + 1))
            sender.sendto(b"other group", ("239.77.2.2", PORT))
            unicast.sendto(b"unicast", (ADDR_B, PORT))
            if i == 100:
                tcp.connect((ADDR_B, PORT))  # TCP to the feed's port, with its handshake
                tcp.sendall(b"tcp")
        sender.sendto(b"F" * 4000, (GROUP, PORT))  # fragmented: dropped (no reassembly before the ring)
        got, _, _, _ = drain(ring, len(feed))
        settle(ring)
        assert len(ring.read(timeout=0)) == 0
        stats = ring.stats()
    assert got == feed
    # the filter ran in the kernel: the ring was offered the feed frames only
    assert stats["kernel_packets"] == len(feed) and stats["not_udp"] == 0


def test_several_groups_and_ports_one_filter(netns_pair):
    pair = netns_pair
    # 300 decoy groups ahead of the real ones: the filter's long jumps are exercised on real traffic
    decoys = [(f"239.78.{i // 250}.{i % 250 + 1}", PORT) for i in range(300)]
    wanted = [("239.77.2.1", 26400), ("239.77.2.1", 26401), ("239.77.2.2", 26400)]
    with pair.entered("b"):
        ring = AfPacketSource(pair.veths["b"], decoys + wanted + ["239.77.2.3:26402"])
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    sent = []
    with ring, sender:
        for i in range(50):
            for group, port in wanted + [("239.77.2.3", 26402), ("239.77.2.2", 26401), ("239.77.2.3", 26400)]:
                payload = b"%s:%d #%d" % (group.encode(), port, i)
                sender.sendto(payload, (group, port))
                sent.append((payload, group, port))
        expected = [s for s in sent if (s[1], s[2]) in wanted + [("239.77.2.3", 26402)]]
        got, _, groups, ports = drain(ring, len(expected))
    assert got == [s[0] for s in expected]
    assert groups.tolist() == [ipv4_to_int(s[1]) for s in expected]
    assert ports.tolist() == [s[2] for s in expected]


def raw_sender(pair) -> socket.socket:
    """A packet socket on side a's veth that puts crafted frames on the wire as they are (this
    kernel has no 802.1Q module, so tagged frames are made, not routed through a VLAN device)."""
    with pair.entered("a"):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        sock.bind((pair.veths["a"], 0))
    return sock


def tagged_frame(payload: bytes, group: str = GROUP, port: int = PORT) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="01:00:5e:4d:02:01") / Dot1Q(vlan=7)
                 / IP(src=ADDR_A, dst=group, ttl=1) / UDP(sport=5000, dport=port) / payload)


def test_vlan_tagged_feed_arrives(netns_pair):
    pair = netns_pair
    feed = [b"tagged %d" % i for i in range(100)]
    frames = [f for payload in feed for f in (tagged_frame(payload), tagged_frame(b"not the feed", port=PORT + 1))]
    with pair.entered("b"):
        ring = AfPacketSource(pair.veths["b"], [(GROUP, PORT)])
    with ring, raw_sender(pair) as wire:
        for frame in frames:
            wire.send(frame)
        got, _, groups, ports = drain(ring, len(feed))
    assert got == feed and (groups == ipv4_to_int(GROUP)).all() and (ports == PORT).all()


def test_small_batches_resume_inside_a_block(netns_pair):
    pair = netns_pair
    feed = [b"small %04d" % i + bytes(i % 50) for i in range(500)]
    with pair.entered("b"):
        ring = AfPacketSource(pair.veths["b"], [(GROUP, PORT)])
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with ring, sender:
        send_payloads(sender, feed, GROUP, PORT, burst=0)
        settle(ring)
        sizes = []
        got = []
        while True:
            batch = ring.read(7, timeout=0)
            if len(batch) == 0:
                break
            sizes.append(len(batch))
            got += batch.payloads()
            # payloads back to back in the batch buffer
            assert batch.offset[0] == 0 and (batch.offset[1:] == np.cumsum(batch.length)[:-1]).all()
        stats = ring.stats()
    assert got == feed
    assert max(sizes) == 7 and len(sizes) > stats["blocks"]  # blocks finished across reads


def test_ring_overflow_counts_kernel_drops(netns_pair):
    pair = netns_pair
    feed = [b"drop %04d" % i + bytes(300) for i in range(2000)]
    with pair.entered("b"):
        ring = AfPacketSource(pair.veths["b"], [(GROUP, PORT)], block_size=4096, block_count=2)
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with ring, sender:
        send_payloads(sender, feed, GROUP, PORT, burst=0)  # nobody reads: two small blocks fill up
        settle(ring)
        got, _, _, _ = drain(ring, len(feed), timeout=0.5)
        stats = ring.stats()
    assert 0 < len(got) < 100 and stats["packets"] == len(got)
    assert got == feed[:len(got)]  # the first ones fit; the rest were dropped, not reordered
    assert stats["kernel_drops"] == len(feed) - len(got) and stats["kernel_packets"] == len(feed)
    assert stats["freeze_q"] >= 1


def test_fileno_polls_readable_and_open_source_builds_it(netns_pair):
    pair = netns_pair
    with pair.entered("b"):
        ring = open_source("afpacket", pair.veths["b"], [f"{GROUP}:{PORT}"])
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with ring, sender:
        assert isinstance(ring, AfPacketSource)
        assert select.select([ring.fileno()], [], [], 0)[0] == []
        assert len(ring.read(timeout=0)) == 0
        t0 = time.monotonic()
        assert len(ring.read(timeout=0.05)) == 0 and time.monotonic() - t0 >= 0.04
        sender.sendto(b"wake", (GROUP, PORT))
        assert select.select([ring.fileno()], [], [], 2.0)[0] == [ring.fileno()]
        assert ring.read(timeout=0).payloads() == [b"wake"]
    ring.close()  # twice is fine
    with pytest.raises(SourceError, match="closed"):
        ring.read()


# --- refusals -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("iface, pairs, kwargs, message", [
    ("nope0", [(GROUP, PORT)], {}, "AF_PACKET: no network interface named 'nope0'"),
    ("lo", [("239.1.1", PORT)], {}, "not an IPv4 address: '239.1.1'"),
    ("lo", [(GROUP, 0)], {}, "AF_PACKET: UDP port out of range: 0"),
    ("lo", ["239.1.1.1"], {}, "expected GROUP:PORT"),
    ("lo", [], {}, "AF_PACKET: no (group, port) to receive"),
    ("lo", [(GROUP, PORT)], {"block_size": 5000}, "AF_PACKET: block_size must be a multiple of"),
])
def test_bad_arguments_one_line(iface, pairs, kwargs, message):
    with pytest.raises(SourceError) as err:
        AfPacketSource(iface, pairs, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_too_many_pairs_for_one_filter():
    pairs = [(0xEF000000 + i, PORT) for i in range(2100)]
    with pytest.raises(SourceError, match=r"^AF_PACKET: too many groups/ports for one classic BPF filter"):
        udp_filter_program(pairs)
    assert len(udp_filter_program(pairs[:600])) // 8 <= 4096  # ~680 single-port groups fit


def _open_as_nobody(iface: str) -> str:
    os.setgid(65534)
    os.setuid(65534)  # drops every capability
    try:
        AfPacketSource(iface, [(GROUP, PORT)])
    except SourceError as exc:
        return str(exc)
    return "opened"


def test_without_cap_net_raw_the_reason_is_clear(netns_pair):
    message = netns_pair.run("b", _open_as_nobody, netns_pair.veths["b"])
    assert message == ("AF_PACKET: kernel refused to open a packet socket: Operation not permitted "
                       "(needs CAP_NET_RAW)")


# --- the frame parser, from bytes ---------------------------------------------------------------------

def _locate(frame) -> tuple:
    raw = np.frombuffer(bytes(frame), np.uint8)
    buf = np.concatenate([np.full(5, 0xEE, np.uint8), raw, np.full(3, 0xEE, np.uint8)])  # not at 0
    start, plen, dst, port, truncated = locate_udp_payload(buf, 5, 5 + len(raw))
    payload = buf[start:start + plen].tobytes() if start >= 0 else None
    return payload, dst, port, truncated


ETH = Ether(src="02:00:00:00:00:01", dst="01:00:5e:4d:02:01")
UDP_PKT = IP(src="10.77.0.1", dst=GROUP) / UDP(sport=5000, dport=PORT) / b"payload!"


@pytest.mark.parametrize("frame", [
    ETH / UDP_PKT,
    ETH / Dot1Q(vlan=7) / UDP_PKT,
    ETH / Dot1AD(vlan=100) / Dot1Q(vlan=7) / UDP_PKT,
    ETH / IP(src="10.77.0.1", dst=GROUP, options=[IPOption_Router_Alert()]) / UDP(sport=1, dport=PORT)
    / b"payload!",
], ids=["plain", "802.1q", "q-in-q", "ip-options"])
def test_parser_finds_the_payload(frame):
    assert _locate(frame) == (b"payload!", ipv4_to_int(GROUP), PORT, 0)


def test_parser_uses_the_udp_length_not_the_padded_frame():
    frame = bytes(ETH / IP(src="10.77.0.1", dst=GROUP) / UDP(sport=1, dport=PORT) / b"x") + bytes(17)  # pad to 60
    assert _locate(frame) == (b"x", ipv4_to_int(GROUP), PORT, 0)


def test_parser_cuts_a_truncated_payload_and_says_so():
    frame = bytes(ETH / UDP_PKT)[:-3]
    assert _locate(frame) == (b"paylo", ipv4_to_int(GROUP), PORT, 1)


@pytest.mark.parametrize("frame", [
    ETH / IP(src="10.77.0.1", dst=GROUP, flags="MF") / UDP(sport=1, dport=PORT) / b"first fragment",
    ETH / IP(src="10.77.0.1", dst=GROUP, frag=100) / b"later fragment",
    ETH / IP(src="10.77.0.1", dst=GROUP) / TCP(sport=1, dport=PORT) / b"tcp",
    ETH / IPv6(dst="ff02::1") / UDP(sport=1, dport=PORT) / b"v6",
    ETH / IP(src="10.77.0.1", dst=GROUP) / UDP(sport=1, dport=PORT, len=7) / b"bad length",
    bytes(ETH / UDP_PKT)[:13],
    bytes(ETH / UDP_PKT)[:14 + 20 + 7],
    ETH / Dot1Q(vlan=7),
], ids=["more-fragments", "later-fragment", "tcp", "ipv6", "udp-len-7", "short-ethernet", "short-udp",
        "vlan-only"])
def test_parser_refuses_what_is_not_a_whole_udp_header(frame):
    assert _locate(frame)[0] is None
