"""AfXdpSource across a real veth pair (generic XDP on namespace b's end), against SocketSource; the
XDP program's redirect/pass split seen from the stack; detach on close; refusals as one line; the
BPF assemblers and loader.

This machine lets root load BPF and open AF_XDP sockets, so every test here runs the real path."""
from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import time

import numpy as np
import pytest

from feedhandler.sources import SourceError, ipv4_to_int, open_source
from feedhandler.sources import _bpf
from feedhandler.sources.afxdp import AfXdpSource, redirect_program
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
from tests.feedhandler.sources.test_afpacket import drain, raw_sender, tagged_frame

GROUP = "239.77.2.1"  # the same as test_afpacket's, whose crafted frames are reused
PORT = 26400


def xdp_of(pair) -> str:
    """What `ip link show` says about side b's XDP attachment ('' when none)."""
    out = pair.ip("b", "link", "show", pair.veths["b"])
    return " ".join(line.strip() for line in out.splitlines() if "xdp" in line)


# --- the same packets as the socket layer -----------------------------------------------------------

@pytest.mark.parametrize("mode", ["generic", "native"])  # veth has a driver-mode XDP too (copy mode)
def test_same_packets_as_socket_source_with_kernel_side_times(netns_pair, mode):
    pair = netns_pair
    packets, messages = mold_payloads(messages=6000, seed=31, max_payload=900)
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    # the socket layer first: once the program redirects the feed, the stack no longer sees it
    with pair.entered("b"):
        sock = SocketSource(GROUP, PORT, iface=pair.veths["b"])
    wait_for_receive_timestamps()
    with sock:
        send_payloads(sender, packets, GROUP, PORT)
        ref, ref_ts, ref_groups, ref_ports = drain(sock, len(packets))
    with pair.entered("b"):
        xsk = AfXdpSource(pair.veths["b"], 0, [(GROUP, PORT)], mode=mode)
    with xsk, sender:
        assert ("xdpgeneric" if mode == "generic" else "xdp ") in xdp_of(pair)
        t_before = time.time_ns()
        send_payloads(sender, packets, GROUP, PORT)
        t_after = time.time_ns()
        got, ts, groups, ports = drain(xsk, len(packets))
        stats = xsk.stats()

    assert len(packets) > 100 and ref == packets and got == ref
    assert groups.tolist() == ref_groups.tolist() and ports.tolist() == ref_ports.tolist()
    assert (groups == ipv4_to_int(GROUP)).all() and (ports == PORT).all()
    # the program's CLOCK_TAI stamp, as UTC: inside the send window, in arrival order, never a read time
    assert ts[0] >= t_before and ts[-1] <= t_after + 50_000_000 and (np.diff(ts) >= 0).all()
    assert stats["no_kernel_ts"] == 0
    assert stats["packets"] == len(packets) and stats["bytes"] == sum(map(len, packets))
    assert stats["kernel_drops"] == 0 and stats["other_queue"] == 0 and stats["not_udp"] == 0
    assert stats["mode"] == mode and stats["zero_copy"] is False
    assert_frames_back(got, ts, messages)


def test_feed_is_redirected_everything_else_reaches_the_stack(netns_pair):
    pair = netns_pair
    feed = [b"feed %04d" % i for i in range(200)]
    with pair.entered("b"):
        xsk = AfXdpSource(pair.veths["b"], 0, [(GROUP, PORT), ("239.77.2.2", PORT + 5)])
        feed_sock = SocketSource(GROUP, PORT, iface=pair.veths["b"], snaplen=8192)
        other_port = SocketSource(GROUP, PORT + 1, iface=pair.veths["b"])
        other_group = SocketSource("239.77.2.2", PORT, iface=pair.veths["b"])
        unicast_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        unicast_rx.bind((ADDR_B, PORT))
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
        unicast = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with xsk, feed_sock, other_port, other_group, unicast_rx, sender, unicast:
        for payload in feed:
            sender.sendto(payload, (GROUP, PORT))
            sender.sendto(b"port+1 " + payload, (GROUP, PORT + 1))
            sender.sendto(b"group2 " + payload, ("239.77.2.2", PORT))
            unicast.sendto(b"unicast " + payload, (ADDR_B, PORT))
        sender.sendto(b"F" * 4000, (GROUP, PORT))  # fragments pass: the stack reassembles them
        got = drain(xsk, len(feed))[0]
        assert got == feed
        assert drain(other_port, len(feed))[0] == [b"port+1 " + p for p in feed]
        assert drain(other_group, len(feed))[0] == [b"group2 " + p for p in feed]
        unicast_rx.settimeout(2)
        assert [unicast_rx.recv(2048) for _ in feed] == [b"unicast " + p for p in feed]
        # the feed's own socket saw nothing but the fragmented datagram the program let through
        assert drain(feed_sock, 1)[0] == [b"F" * 4000]
        time.sleep(0.05)
        assert len(xsk.read(timeout=0)) == 0 and len(feed_sock.read(timeout=0)) == 0
        assert xsk.stats()["packets"] == len(feed)


def test_vlan_tagged_feed_is_redirected(netns_pair):
    pair = netns_pair
    feed = [b"tagged %d" % i for i in range(100)]
    frames = [f for payload in feed for f in (tagged_frame(payload), tagged_frame(b"not the feed", port=PORT + 1))]
    with pair.entered("b"):
        xsk = AfXdpSource(pair.veths["b"], 0, [(GROUP, PORT)])
    with xsk, raw_sender(pair) as wire:
        for frame in frames:
            wire.send(frame)
        got, _, groups, ports = drain(xsk, len(feed))
    assert got == feed and (groups == ipv4_to_int(GROUP)).all() and (ports == PORT).all()


def test_close_detaches_the_program_and_the_stack_gets_the_feed_back(netns_pair):
    pair = netns_pair
    assert xdp_of(pair) == ""
    with pair.entered("b"):
        xsk = AfXdpSource(pair.veths["b"], 0, [(GROUP, PORT)])
        feed_sock = SocketSource(GROUP, PORT, iface=pair.veths["b"])
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with feed_sock, sender:
        attached = xdp_of(pair)
        assert "xdpgeneric" in attached and "fh_feed_xsk" in attached
        sender.sendto(b"while open", (GROUP, PORT))
        assert drain(xsk, 1)[0] == [b"while open"]
        xsk.close()
        xsk.close()  # twice is fine
        assert xdp_of(pair) == ""
        sender.sendto(b"after close", (GROUP, PORT))
        assert drain(feed_sock, 1)[0] == [b"after close"]
    with pytest.raises(SourceError, match="closed"):
        xsk.read()


def test_small_batches_and_fileno(netns_pair):
    pair = netns_pair
    feed = [b"small %04d" % i + bytes(i % 50) for i in range(500)]
    with pair.entered("b"):
        xsk = open_source("afxdp", pair.veths["b"], 0, [f"{GROUP}:{PORT}"])
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with xsk, sender:
        assert isinstance(xsk, AfXdpSource)
        assert select.select([xsk.fileno()], [], [], 0)[0] == []
        send_payloads(sender, feed, GROUP, PORT, burst=0)
        assert select.select([xsk.fileno()], [], [], 2.0)[0] == [xsk.fileno()]
        time.sleep(0.05)
        got, sizes = [], []
        while True:
            batch = xsk.read(7, timeout=0)
            if len(batch) == 0:
                break
            sizes.append(len(batch))
            got += batch.payloads()
            assert batch.offset[0] == 0 and (batch.offset[1:] == np.cumsum(batch.length)[:-1]).all()
    assert got == feed and max(sizes) == 7


def test_a_full_ring_counts_kernel_drops(netns_pair):
    pair = netns_pair
    feed = [b"drop %04d" % i + bytes(300) for i in range(2000)]
    with pair.entered("b"):
        xsk = AfXdpSource(pair.veths["b"], 0, [(GROUP, PORT)], frames=64)
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with xsk, sender:
        send_payloads(sender, feed, GROUP, PORT, burst=0)  # nobody reads: 64 frames fill up
        time.sleep(0.05)
        got = drain(xsk, len(feed), timeout=0.5)[0]
        stats = xsk.stats()
        # the frames went back to the kernel: the next packets arrive again
        sender.sendto(b"after the flood", (GROUP, PORT))
        assert drain(xsk, 1)[0] == [b"after the flood"]
    assert len(got) == 64 and got == feed[:64]
    assert stats["kernel_drops"] == len(feed) - 64 and stats["packets"] == 64


# --- refusals -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("iface, queue, pairs, kwargs, message", [
    ("nope0", 0, [(GROUP, PORT)], {}, "AF_XDP: no network interface named 'nope0'"),
    ("lo", 0, [(GROUP, 70000)], {}, "AF_XDP: UDP port out of range: 70000"),
    ("lo", 0, [], {}, "AF_XDP: no (group, port) to receive"),
    ("lo", 0, [(GROUP, PORT)], {"frames": 1000}, "AF_XDP: frames must be a power of two"),
    ("lo", 0, [(GROUP, PORT)], {"mode": "offload"}, "AF_XDP: mode must be 'generic' or 'native'"),
])
def test_bad_arguments_one_line(iface, queue, pairs, kwargs, message):
    with pytest.raises(SourceError) as err:
        AfXdpSource(iface, queue, pairs, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_queue_the_interface_lacks_is_named(netns_pair):
    with netns_pair.entered("b"), pytest.raises(SourceError) as err:
        AfXdpSource(netns_pair.veths["b"], 3, [(GROUP, PORT)])
    iface = netns_pair.veths["b"]
    assert str(err.value) == (f"AF_XDP: kernel refused to bind to {iface} queue 3: Invalid argument "
                              f"(does the queue exist? `ethtool -l {iface}`)")
    assert xdp_of(netns_pair) == ""  # nothing left behind


def test_a_second_source_on_the_same_queue_is_refused(netns_pair):
    with netns_pair.entered("b"):
        first = AfXdpSource(netns_pair.veths["b"], 0, [(GROUP, PORT)])
        with first, pytest.raises(SourceError) as err:
            AfXdpSource(netns_pair.veths["b"], 0, [(GROUP, PORT + 1)])
        assert str(err.value) == (f"AF_XDP: kernel refused to bind to {netns_pair.veths['b']} queue 0: "
                                  "another AF_XDP socket is bound to that queue")


def test_another_xdp_program_on_the_interface_is_named(netns_pair):
    pass_all = struct.pack("<BBhi", 0xB7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = XDP_PASS; exit
    with netns_pair.entered("b"):
        prog = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, pass_all, "other_prog")
        link = _bpf.link_create_xdp(prog, socket.if_nametoindex(netns_pair.veths["b"]), _bpf.XDP_FLAGS_SKB_MODE)
        try:
            with pytest.raises(SourceError) as err:
                AfXdpSource(netns_pair.veths["b"], 0, [(GROUP, PORT)])
            assert "other_prog" in xdp_of(netns_pair)  # theirs stays
        finally:
            os.close(link)
            os.close(prog)
    assert str(err.value) == (f"AF_XDP: kernel refused to attach the XDP program to {netns_pair.veths['b']}: "
                              "another XDP program is attached there (`ip link show` names it)")


CAP_NET_ADMIN, CAP_NET_RAW, CAP_IPC_LOCK = 12, 13, 14


def _open_with_capabilities(iface: str, caps: tuple[int, ...], setuid_nobody: bool) -> str:
    if setuid_nobody:
        os.setgid(65534)
        os.setuid(65534)  # drops every capability
    else:  # stay root but keep only ``caps`` (capset, _LINUX_CAPABILITY_VERSION_3)
        mask = sum(1 << c for c in caps)
        header = struct.pack("=Ii", 0x20080522, 0)
        data = struct.pack("=6I", mask & 0xFFFFFFFF, mask & 0xFFFFFFFF, 0, mask >> 32, mask >> 32, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.capset(header, data) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")
    try:
        AfXdpSource(iface, 0, [(GROUP, PORT)], frames=256)
    except SourceError as exc:
        return str(exc)
    return "opened"


def test_without_privileges_the_reason_is_clear(netns_pair):
    iface = netns_pair.veths["b"]
    assert netns_pair.run("b", _open_with_capabilities, iface, (), True) == (
        "AF_XDP: kernel refused to create an AF_XDP socket: Operation not permitted (needs CAP_NET_RAW)")
    # allowed a socket but not BPF: the first BPF step names what is missing
    assert netns_pair.run("b", _open_with_capabilities, iface, (CAP_NET_RAW, CAP_NET_ADMIN, CAP_IPC_LOCK),
                          False) == (
        "AF_XDP: kernel refused to create the BPF map fh_feeds: Operation not permitted (needs CAP_BPF)")
    assert xdp_of(netns_pair) == ""


# --- the BPF pieces -------------------------------------------------------------------------------------

def test_verifier_rejection_is_its_last_log_line():
    a = _bpf.EbpfAssembler()
    a.load(_bpf.SIZE_W, _bpf.R2, _bpf.R1, 0)  # data
    a.load(_bpf.SIZE_H, _bpf.R0, _bpf.R2, 12)  # read without checking data_end
    a.exit()
    with pytest.raises(OSError) as err:
        _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, a.assemble(), "unchecked")
    text = str(err.value)
    assert text.endswith("verifier: R2 offset is outside of the packet") and "\n" not in text
    assert isinstance(err.value, _bpf.VerifierError)


def test_the_redirect_program_passes_the_verifier_and_names_its_maps():
    fds = [_bpf.map_create(_bpf.BPF_MAP_TYPE_HASH, 8, 4, 4, "t_feeds"),
           _bpf.map_create(_bpf.BPF_MAP_TYPE_XSKMAP, 4, 4, 1, "t_xsks"),
           _bpf.map_create(_bpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1, "t_counters")]
    try:
        code = redirect_program(*fds)
        # each map fd appears once as a pseudo-map 64-bit immediate load (the counter map's too)
        loads = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]
        assert sorted(imm for op, regs, _, imm in loads if op == 0x18 and regs >> 4 == 1) == sorted(fds)
        prog = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP, code, "t_redirect")
        os.close(prog)
        # the per-CPU counter starts at zero on every CPU
        cpus = _bpf.possible_cpus()
        assert _bpf.map_lookup(fds[2], struct.pack("=I", 0), 8 * cpus) == bytes(8 * cpus)
    finally:
        for fd in fds:
            os.close(fd)


def test_assemblers_refuse_what_does_not_fit():
    a = _bpf.EbpfAssembler()
    a.goto("nowhere")
    with pytest.raises(ValueError, match="undefined label 'nowhere'"):
        a.assemble()
    c = _bpf.ClassicAssembler()
    c.jump(_bpf.CB_JEQ, 1, "far", None)
    for _ in range(300):
        c.ret(0)
    c.label("far")
    c.ret(1)
    with pytest.raises(ValueError, match=r"spans 300 instructions \(classic BPF allows 0\.\.255\)"):
        c.assemble()
    assert _bpf.possible_cpus() >= os.cpu_count()
