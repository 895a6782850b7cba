"""SocketSource across a real veth pair: namespace a sends MoldUDP64 multicast, namespace b receives."""
from __future__ import annotations

import time

import numpy as np
import pytest

from feedhandler.sources import SourceError, ipv4_to_int, open_source
from feedhandler.sources.socket_source import SocketSource
from parsers.moldudp64 import MoldSessionTracker
from tests.feedhandler.netns import (
    ADDR_A,
    ADDR_A_ALT,
    mold_payloads,
    multicast_sender,
    netns_pair,  # noqa: F401  (fixture)
    send_payloads,
    wait_for_receive_timestamps,
)

GROUP = "239.77.1.1"
PORT = 26400


def _drain(source, expected: int, timeout: float = 5.0) -> tuple[list[bytes], np.ndarray, np.ndarray, np.ndarray]:
    """Read until ``expected`` packets came (or ``timeout``); copies of payloads, ts, group, port."""
    payloads, ts, groups, ports = [], [], [], []
    deadline = time.monotonic() + timeout
    while len(payloads) < expected and time.monotonic() < deadline:
        batch = source.read(1024, timeout=0.05)
        payloads += batch.payloads()
        ts.append(batch.ts_recv.copy())
        groups.append(batch.group.copy())
        ports.append(batch.port.copy())
    return payloads, np.concatenate(ts), np.concatenate(groups), np.concatenate(ports)


@pytest.mark.parametrize("use_recvmmsg", [True, False], ids=["recvmmsg", "recvmsg_into"])
def test_receives_exactly_the_sent_mold_packets_with_kernel_timestamps(netns_pair, use_recvmmsg):
    pair = netns_pair
    packets, messages = mold_payloads(messages=6000, seed=11, max_payload=600)
    with pair.entered("b"):
        source = SocketSource(GROUP, PORT, iface=pair.veths["b"], use_recvmmsg=use_recvmmsg)
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    wait_for_receive_timestamps()
    with source, sender:
        t_before = time.time_ns()
        send_payloads(sender, packets, GROUP, PORT)
        t_after = time.time_ns()
        got, ts, groups, ports = _drain(source, len(packets))
        stats = source.stats()

    assert got == packets
    assert (groups == ipv4_to_int(GROUP)).all() and (ports == PORT).all()
    # kernel receive times: inside the send window, in arrival order
    assert ts[0] >= t_before and ts[-1] <= t_after + 50_000_000
    assert (np.diff(ts) >= 0).all()
    assert stats["packets"] == len(packets) and stats["bytes"] == sum(map(len, packets))
    assert stats["kernel_drops"] == 0 and stats["no_kernel_ts"] == 0 and stats["truncated"] == 0
    assert stats["mode"] == ("recvmmsg" if use_recvmmsg else "recvmsg_into")
    # and they frame back into the same ITCH messages, in sequence, without gaps
    data = np.frombuffer(b"".join(got), np.uint8)
    lengths = np.array([len(p) for p in got], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tracker = MoldSessionTracker()
    frames = tracker.frame_packets(data, offsets, lengths, ts)
    assert tracker.gaps == [] and tracker.messages == len(messages)
    assert [data[o:o + n].tobytes() for o, n in zip(frames["offset"], frames["length"])] == messages


def test_one_read_takes_everything_waiting_in_one_syscall(netns_pair):
    pair = netns_pair
    packets = [b"P%05d" % i + bytes(40) for i in range(700)]
    with pair.entered("b"):
        source = SocketSource(GROUP, PORT, iface=pair.veths["b"], max_packets=1024)
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with source, sender:
        send_payloads(sender, packets, GROUP, PORT)
        time.sleep(0.05)
        batch = source.read(1024, timeout=0)
        assert batch.payloads() == packets
        assert source.stats()["reads"] == 1
        # the batch is a view of fixed slots: offsets step by the snap length, data spans them
        assert (np.diff(batch.offset) == 2048).all() and batch.length.dtype == np.int32
        assert len(source.read(1024, timeout=0)) == 0


@pytest.mark.parametrize("by", ["name", "address"])
def test_source_specific_join_filters_by_sender(netns_pair, by):
    pair = netns_pair
    iface = pair.veths["b"] if by == "name" else pair.addr_b
    from_main = [b"main %d" % i for i in range(50)]
    from_alt = [b"alt %d" % i for i in range(50)]
    with pair.entered("b"):
        ssm = SocketSource(GROUP, PORT, iface=iface, source=ADDR_A_ALT)
        any_source = SocketSource(GROUP, PORT, iface=iface)
    with pair.entered("a"):
        main, alt = multicast_sender(ADDR_A), multicast_sender(ADDR_A_ALT)
    with ssm, any_source, main, alt:
        for a, b in zip(from_main, from_alt):
            main.sendto(a, (GROUP, PORT))
            alt.sendto(b, (GROUP, PORT))
        got_ssm = _drain(ssm, len(from_alt))[0]
        got_any = _drain(any_source, 2 * len(from_alt))[0]
        time.sleep(0.05)
        assert len(ssm.read(1024, timeout=0)) == 0
    assert got_ssm == from_alt
    assert got_any == [p for pair_ in zip(from_main, from_alt) for p in pair_]


def test_other_groups_on_the_same_port_stay_out(netns_pair):
    pair = netns_pair
    with pair.entered("b"):
        one = SocketSource(GROUP, PORT, iface=pair.veths["b"])
        two = SocketSource("239.77.1.2", PORT, iface=pair.veths["b"])
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with one, two, sender:
        sender.sendto(b"to one", (GROUP, PORT))
        sender.sendto(b"to two", ("239.77.1.2", PORT))
        first, _, g1, _ = _drain(one, 1)
        second, _, g2, _ = _drain(two, 1)
        time.sleep(0.05)
        assert len(one.read(timeout=0)) == 0 and len(two.read(timeout=0)) == 0
    assert first == [b"to one"] and second == [b"to two"]
    assert g2.tolist() == [ipv4_to_int("239.77.1.2")]


def test_kernel_drops_are_counted_when_the_buffer_overflows(netns_pair):
    pair = netns_pair
    packets = [b"D%05d" % i + bytes(1000) for i in range(400)]
    with pair.entered("b"):
        source = SocketSource(GROUP, PORT, iface=pair.veths["b"], rcvbuf=64 * 1024)
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with source, sender:
        assert source.stats()["rcvbuf_granted"] == 64 * 1024
        send_payloads(sender, packets, GROUP, PORT, burst=0)  # nobody reads meanwhile
        time.sleep(0.05)
        got = _drain(source, len(packets), timeout=0.5)[0]
        # the drop counter arrives on the next datagram after the drops
        sender.sendto(b"after", (GROUP, PORT))
        got += _drain(source, 1)[0]
        stats = source.stats()
    assert 0 < len(got) - 1 < len(packets)
    assert stats["kernel_drops"] == len(packets) - (len(got) - 1)
    assert got[:-1] == packets[:len(got) - 1]  # what survived is the head, in order


def test_receive_buffer_clamp_is_reported(netns_pair):
    with netns_pair.entered("b"):  # beyond what even SO_RCVBUFFORCE grants
        source = SocketSource(GROUP, PORT, iface=netns_pair.veths["b"], rcvbuf=2**31 - 1)
    with source:
        stats = source.stats()
    assert stats["rcvbuf_requested"] == 2**31 - 1
    assert stats["rcvbuf_clamped"] and 0 < stats["rcvbuf_granted"] < 2**31 - 1


def _without_cap_net_admin(group: str, port: int, iface: str) -> tuple[dict, int]:
    """In a child: drop CAP_NET_ADMIN (as an unprivileged handler runs), then open a source."""
    import ctypes

    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} sets
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.capget(header, data) == 0
    cap_net_admin = 1 << 12
    data[0] &= ~cap_net_admin
    data[1] &= ~cap_net_admin
    assert libc.capset(header, data) == 0, ctypes.get_errno()
    with SocketSource(group, port, iface=iface) as source:
        stats = source.stats()
    with open("/proc/sys/net/core/rmem_max") as f:
        return stats, int(f.read())


def test_without_privilege_the_plain_receive_buffer_is_used_and_its_clamp_reported(netns_pair):
    stats, rmem_max = netns_pair.run("b", _without_cap_net_admin, GROUP, PORT, netns_pair.veths["b"])
    assert not stats["rcvbuf_forced"]
    assert stats["rcvbuf_granted"] == min(stats["rcvbuf_requested"], rmem_max)
    assert stats["rcvbuf_clamped"] == (rmem_max < stats["rcvbuf_requested"])


def test_long_datagrams_are_cut_to_the_snap_length_and_counted(netns_pair):
    pair = netns_pair
    with pair.entered("b"):
        source = SocketSource(GROUP, PORT, iface=pair.veths["b"], snaplen=64)
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    with source, sender:
        sender.sendto(bytes(range(200)), (GROUP, PORT))
        sender.sendto(b"short", (GROUP, PORT))
        got = _drain(source, 2)[0]
        assert source.stats()["truncated"] == 1
    assert got == [bytes(range(64)), b"short"]


def test_read_times_out_with_an_empty_batch(netns_pair):
    with netns_pair.entered("b"):
        source = SocketSource(GROUP, PORT, iface=netns_pair.veths["b"])
    with source:
        t0 = time.monotonic()
        batch = source.read(16, timeout=0.2)
        assert len(batch) == 0 and 0.15 < time.monotonic() - t0 < 1.0
        assert len(source.read(16, timeout=0)) == 0


def test_open_source_builds_a_socket_source(netns_pair):
    with netns_pair.entered("b"):
        source = open_source("socket", GROUP, PORT, iface=netns_pair.veths["b"])
    with source:
        assert isinstance(source, SocketSource) and source.fileno() > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"group": "10.1.1.1", "port": PORT}, "10.1.1.1 is not a multicast address"),
    ({"group": "239.1.1", "port": PORT}, "not an IPv4 address: '239.1.1'"),
    ({"group": GROUP, "port": 0}, "UDP port out of range: 0"),
    ({"group": GROUP, "port": PORT, "iface": "nosuchif0"}, "no network interface named 'nosuchif0'"),
    ({"group": GROUP, "port": PORT, "iface": "nosuchif0", "source": ADDR_A},
     "interface 'nosuchif0' has no IPv4 address"),
])
def test_bad_arguments_fail_with_one_line(netns_pair, kwargs, message):
    with pytest.raises(SourceError) as err, netns_pair.entered("b"):
        SocketSource(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_closed_source_says_so(netns_pair):
    with netns_pair.entered("b"):
        source = SocketSource(GROUP, PORT)
    source.close()
    source.close()
    with pytest.raises(SourceError, match="closed"):
        source.read()
