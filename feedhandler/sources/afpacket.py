"""AF_PACKET with a TPACKET_V3 memory-mapped ring: the feed's UDP payloads without the socket layer.

Rules this module keeps:

- One packet socket per interface sees every frame the interface receives; a classic BPF filter
  (assembled here) runs in the kernel and keeps only unfragmented IPv4 UDP to the feed's
  (group, port) pairs, so the ring holds nothing else. Outgoing frames are ignored.
- The ring is TPACKET_V3: blocks of variable-size frames, handed to us when a block is full or its
  retire timer fires (``block_timeout_ms``). That is the price of V3's throughput: a quiet feed waits
  up to the timer for its packets. Each frame carries the kernel's receive time (tp_sec, tp_nsec).
- A numba kernel walks a block's frames (Ethernet, any 802.1Q/802.1ad tags still in the frame, IPv4,
  UDP) and copies the payloads into the batch arrays; Python reads and flips block ownership. The
  kernel opens with an acquire fence and closes with a release fence (real LLVM fences), so the
  frames are read after their block's status and before the block is handed back, on weakly
  ordered CPUs too. A block goes back to the kernel once every frame in it has been copied out.
- A packet socket does not join groups: UDP sockets join them on the interface (IGMP reports, NIC
  multicast filter) and is otherwise never read. The IP stack still gets its own copy of each frame.
- Kernel drops (ring full) come from PACKET_STATISTICS, which resets on every read; ``stats()`` keeps
  the sums.
"""
from __future__ import annotations

import errno
import gc
import mmap
import socket
import struct
from typing import Iterable

import numba as nb
import numpy as np

from feedhandler.sources import _bpf
from feedhandler.sources.base import (
    READ_TIMEOUT_S,
    BatchBuffers,
    PacketBatch,
    SourceError,
    empty_batch,
    int_to_ipv4,
    ipv4_to_int,
    parse_group_port,
    wait_readable,
)
from parsers.fences import acquire_fence, release_fence

# linux/if_packet.h, linux/if_ether.h
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TPACKET3_HDRLEN = 48  # tpacket3_hdr (the frame header before each packet in a block)

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1
BLOCK_STATUS = 8
BLOCK_NUM_PKTS = 12
BLOCK_FIRST_PKT = 16

# The ring's geometry: a block is handed over when full OR when its timer fires, so a slow feed uses
# one block per timer period. Many small blocks keep both cases safe: 512 x 64 KiB rides out a
# 0.5 s reader stall on a quiet feed (one block per ms) and ~150 ms at 1M packets/s (~200 bytes each
# with headers, ~320 to a block).
DEFAULT_BLOCK_SIZE = 64 << 10  # bytes per block (page multiple)
DEFAULT_BLOCK_COUNT = 512  # 32 MiB of ring
DEFAULT_BLOCK_TIMEOUT_MS = 1  # a partly filled block is handed over after this long
DEFAULT_BATCH = 4096  # rows of the batch arrays (the most one read() returns)
FRAME_SIZE = 2048  # only for the ring request's arithmetic: V3 frames are variable-size
SNAP_ACCEPT = 0x40000  # the filter's "keep the whole packet"

# Slots of the walk kernel's counter array.
C_PACKETS, C_BYTES, C_NOT_UDP, C_TRUNCATED, C_BLOCKS = range(5)


# --- configuration ----------------------------------------------------------------------------------

def normalize_groups_ports(groups_ports: Iterable, who: str) -> list[tuple[int, int]]:
    """(group, port) pairs as host-order integers, from ("239.1.1.1", 26400), (0xEF010101, 26400) or
    "239.1.1.1:26400"; SourceError names the bad entry."""
    pairs: list[tuple[int, int]] = []
    for entry in groups_ports:
        if isinstance(entry, str):
            entry = parse_group_port(entry)
        try:
            group, port = entry
        except (TypeError, ValueError):
            raise SourceError(f"{who}: expected (group, port) pairs, got {entry!r}") from None
        group_int = int(group) if isinstance(group, (int, np.integer)) else ipv4_to_int(str(group))
        if not 0 <= group_int <= 0xFFFFFFFF:
            raise SourceError(f"{who}: not an IPv4 address: {group!r}")
        if not isinstance(port, (int, np.integer)) or not 0 < int(port) < 65536:
            raise SourceError(f"{who}: UDP port out of range: {port!r}")
        if (group_int, int(port)) not in pairs:
            pairs.append((group_int, int(port)))
    if not pairs:
        raise SourceError(f"{who}: no (group, port) to receive")
    return pairs


def interface_index(iface: str, who: str) -> int:
    """The interface's index in the calling thread's network namespace."""
    try:
        return socket.if_nametoindex(iface)
    except (OSError, ValueError):
        raise SourceError(f"{who}: no network interface named {iface!r}") from None


def join_groups(ifindex: int, pairs: list[tuple[int, int]], who: str) -> list[socket.socket]:
    """UDP sockets that joined every multicast group of ``pairs`` on ``ifindex`` (never read: they
    make the kernel send IGMP reports and open the NIC's multicast filter for the groups). A socket
    holds at most net.ipv4.igmp_max_memberships groups (20 by default): the next one takes over."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)]
    try:
        for group in sorted({g for g, _ in pairs if g >> 28 == 0xE}):
            mreqn = struct.pack("!I", group) + socket.inet_aton("0.0.0.0") + struct.pack("=i", ifindex)
            try:
                socks[-1].setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP))
                socks[-1].setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise SourceError(f"{who}: multicast join of {int_to_ipv4(group)} failed: {exc.strerror}") from None
    return socks


def unmap(mapping: mmap.mmap | None) -> None:
    """Unmap now if no array views the mapping any more; else when the last view goes.

    numba's first compile of a kernel can leave a reference cycle holding an argument array, so an
    ``mmap.close()`` may find a view still exported: a garbage collection frees it."""
    if mapping is None:
        return
    try:
        mapping.close()
    except BufferError:
        gc.collect()
        try:
            mapping.close()
        except BufferError:
            pass  # the mmap object unmaps itself when the last view is freed


def kernel_refusal(who: str, what: str, exc: OSError, needs: str = "") -> SourceError:
    """SourceError('AF_XDP: kernel refused to load the XDP program: Operation not permitted (needs ...)')."""
    reason = exc.strerror or str(exc)
    privilege = exc.errno in (errno.EPERM, errno.EACCES) and not isinstance(exc, _bpf.VerifierError)
    hint = f" (needs {needs})" if needs and privilege else ""
    return SourceError(f"{who}: kernel refused to {what}: {reason}{hint}")


# --- the classic BPF filter -------------------------------------------------------------------------

def udp_filter_program(pairs: list[tuple[int, int]]) -> bytes:
    """Classic BPF: keep unfragmented IPv4 UDP whose (destination address, destination port) is one
    of ``pairs``; drop everything else. Loads are relative to the network header (SKF_NET_OFF), so
    VLAN tags, stripped by the kernel or not, never shift the offsets."""
    net = _bpf.SKF_NET_OFF
    asm = _bpf.ClassicAssembler()
    asm.load(_bpf.CB_H, _bpf.CB_ABS, _bpf.SKF_AD_OFF + _bpf.SKF_AD_PROTOCOL)
    asm.jump(_bpf.CB_JEQ, ETH_P_IP, None, "drop")
    asm.load(_bpf.CB_B, _bpf.CB_ABS, net + 9)  # protocol
    asm.jump(_bpf.CB_JEQ, socket.IPPROTO_UDP, None, "drop")
    asm.load(_bpf.CB_H, _bpf.CB_ABS, net + 6)  # flags + fragment offset
    asm.jump(_bpf.CB_JSET, 0x3FFF, "drop", None)  # more fragments, or not the first
    asm.goto("groups")
    asm.label("drop")  # here, within reach of the 8-bit jumps above
    asm.ret(0)
    asm.label("groups")
    asm.load_x_ip_header_length(net)
    asm.load(_bpf.CB_W, _bpf.CB_ABS, net + 16)  # destination address
    by_group: dict[int, list[int]] = {}
    for group, port in pairs:
        by_group.setdefault(group, []).append(port)
    for i, group in enumerate(by_group):  # a chain of compares, each with a long jump to its ports
        asm.jump(_bpf.CB_JEQ, group, None, f"next{i}")
        asm.goto(f"group{i}")
        asm.label(f"next{i}")
    asm.ret(0)
    for i, ports in enumerate(by_group.values()):
        asm.label(f"group{i}")
        asm.load(_bpf.CB_H, _bpf.CB_IND, net + 2)  # destination port, at X + 2 past the IP header
        for port in ports:
            asm.jump(_bpf.CB_JEQ, port, f"accept{i}", None)
        asm.ret(0)
        asm.label(f"accept{i}")
        asm.ret(SNAP_ACCEPT)
    try:
        return asm.assemble()
    except ValueError as exc:
        raise SourceError(f"AF_PACKET: too many groups/ports for one classic BPF filter ({exc})") from None


# --- kernel helpers (shared with the AF_XDP source) -------------------------------------------------

@nb.njit(cache=True, inline="always")
def _be16(buf, i):
    return (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])


@nb.njit(cache=True, inline="always")
def _le32(buf, i):
    return (np.int64(buf[i]) | (np.int64(buf[i + 1]) << 8) | (np.int64(buf[i + 2]) << 16)
            | (np.int64(buf[i + 3]) << 24))


@nb.njit(cache=True)
def locate_udp_payload(buf, start, end):
    """Where the UDP payload of the Ethernet frame ``buf[start:end]`` lies.

    Args:
        buf: uint8 array holding the frame.
        start, end: the frame's first byte and one past its last captured byte.

    Returns:
        (payload start, payload length, destination IPv4, destination port, truncated): payload start
        is -1 when the frame is not an unfragmented IPv4 UDP datagram with sane headers; the length is
        the UDP length minus 8, cut to the captured bytes (then truncated is 1).
    """
    pos = start + 12
    if pos + 2 > end:
        return -1, 0, 0, 0, 0
    etype = _be16(buf, pos)
    while etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:  # VLAN tags left in the frame
        pos += 4
        if pos + 2 > end:
            return -1, 0, 0, 0, 0
        etype = _be16(buf, pos)
    ip = pos + 2
    if etype != ETH_P_IP or ip + 20 > end or (buf[ip] >> 4) != 4:
        return -1, 0, 0, 0, 0
    ihl = np.int64(buf[ip] & 0x0F) * 4
    if ihl < 20 or ip + ihl + 8 > end or buf[ip + 9] != 17 or (_be16(buf, ip + 6) & 0x3FFF) != 0:
        return -1, 0, 0, 0, 0
    udp = ip + ihl
    ulen = _be16(buf, udp + 4)
    if ulen < 8:
        return -1, 0, 0, 0, 0
    plen = ulen - 8
    truncated = 0
    if udp + 8 + plen > end:
        plen = end - udp - 8
        truncated = 1
    dst = (_be16(buf, ip + 16) << 16) | _be16(buf, ip + 18)
    return udp + 8, plen, dst, _be16(buf, udp + 2), truncated


@nb.njit(cache=True, nogil=True)
def _walk_block(ring, pkt, pkts_left, data, offset, length, ts_recv, group, port, n, used, n_max,
                counters):
    """Copy the UDP payloads of a block's frames into the batch arrays, from frame ``pkt`` on.

    Args:
        ring: the whole mapped ring, uint8.
        pkt: ring offset of the next frame's tpacket3_hdr.
        pkts_left: frames of the block not yet copied out.
        data, offset, length, ts_recv, group, port: the batch arrays; rows from ``n``, bytes from
            ``used``.
        n_max: stop when ``n`` reaches it.
        counters: int64 [C_*] accumulated.

    Returns:
        (n, used, pkt, pkts_left) after the walk; pkts_left > 0 when the batch filled up (rows or
        payload bytes) and the next read must resume at ``pkt``.
    """
    acquire_fence()  # the caller saw TP_STATUS_USER: the frames behind it are complete
    while pkts_left > 0 and n < n_max:
        next_off = _le32(ring, pkt)
        snaplen = _le32(ring, pkt + 12)
        mac = np.int64(ring[pkt + 24]) | (np.int64(ring[pkt + 25]) << 8)
        frame = pkt + mac
        start, plen, dst, dport, truncated = locate_udp_payload(ring, frame, frame + snaplen)
        if start < 0:
            counters[C_NOT_UDP] += 1
        else:
            if used + plen > data.shape[0]:
                break  # no room for this payload: it leads the next batch
            data[used:used + plen] = ring[start:start + plen]
            offset[n] = used
            length[n] = plen
            ts_recv[n] = _le32(ring, pkt + 4) * 1_000_000_000 + _le32(ring, pkt + 8)
            group[n] = dst
            port[n] = dport
            counters[C_PACKETS] += 1
            counters[C_BYTES] += plen
            counters[C_TRUNCATED] += truncated
            n += 1
            used += plen
        pkts_left -= 1
        pkt += next_off
    release_fence()  # done reading before the caller hands the block back
    return n, used, pkt, pkts_left


# --- the source -------------------------------------------------------------------------------------

class AfPacketSource:
    """The feed's UDP payloads from a TPACKET_V3 ring on ``iface`` (see the module docstring).

    Args:
        iface: interface name (in the calling thread's network namespace).
        groups_ports: the feed's (group, port) pairs: ("239.1.1.1", 26400), (0xEF010101, 26400) or
            "239.1.1.1:26400". Unicast destinations work too (no join for them).
        block_size, block_count: the ring's geometry (block_size a multiple of the page size).
        block_timeout_ms: how long the kernel keeps a partly filled block before handing it over.
        max_packets: rows of the batch arrays (the most one read() returns).
        join: join the multicast groups on ``iface`` (IGMP); off when something else already does.
    """

    WHO = "AF_PACKET"

    def __init__(self, iface: str, groups_ports: Iterable, block_size: int = DEFAULT_BLOCK_SIZE,
                 block_count: int = DEFAULT_BLOCK_COUNT, block_timeout_ms: int = DEFAULT_BLOCK_TIMEOUT_MS,
                 max_packets: int = DEFAULT_BATCH, join: bool = True) -> None:
        who = self.WHO
        self.iface = iface
        self.pairs = normalize_groups_ports(groups_ports, who)
        if block_size < mmap.PAGESIZE or block_size % mmap.PAGESIZE or block_count < 1:
            raise SourceError(f"{who}: block_size must be a multiple of {mmap.PAGESIZE} and block_count >= 1")
        if max_packets < 1 or not 0 < block_timeout_ms < 65536:
            raise SourceError(f"{who}: max_packets must be positive and block_timeout_ms in 1..65535")
        self._block_size, self._block_count = int(block_size), int(block_count)
        self._sock: socket.socket | None = None
        self._join_socks: list[socket.socket] = []
        self._ring: mmap.mmap | None = None
        self._bytes = self._words = None
        self._counters = np.zeros(5, dtype=np.int64)
        self._kernel_packets = self._kernel_drops = self._freeze_q = 0
        ifindex = interface_index(iface, who)
        try:
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: deaf until bind
        except OSError as exc:
            raise kernel_refusal(who, "open a packet socket", exc, "CAP_NET_RAW") from None
        try:
            self._set_up(ifindex, block_timeout_ms, join)
        except BaseException:
            self.close()
            raise
        self._fd = self._sock.fileno()
        self._buffers = BatchBuffers(max_packets, max(max_packets * FRAME_SIZE, 1 << 17))
        self._block = 0  # the next block to read
        self._pkt = 0  # ring offset of the next frame in it, when ``_pkts_left`` > 0
        self._pkts_left = 0
        self._reads = 0

    def _set_up(self, ifindex: int, block_timeout_ms: int, join: bool) -> None:
        who, sock = self.WHO, self._sock
        try:
            _bpf.attach_classic_filter(sock, udp_filter_program(self.pairs))
        except OSError as exc:
            raise kernel_refusal(who, "attach the socket filter", exc) from None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # kernels before 4.20: our own outgoing frames would also need the filter to pass
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frames = self._block_size // FRAME_SIZE * self._block_count
            req3 = struct.pack("=7I", self._block_size, self._block_count, FRAME_SIZE, frames,
                               block_timeout_ms, 0, 0)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req3)
        except OSError as exc:
            raise kernel_refusal(who, f"set up a {self._block_count} x {self._block_size} byte TPACKET_V3 ring",
                                 exc) from None
        try:
            self._ring = mmap.mmap(sock.fileno(), self._block_size * self._block_count, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise kernel_refusal(who, "map the ring", exc) from None
        self._bytes = np.frombuffer(self._ring, dtype=np.uint8)
        self._words = np.frombuffer(self._ring, dtype=np.uint32)
        if join:
            self._join_socks = join_groups(ifindex, self.pairs, who)
        try:
            sock.bind((self.iface, ETH_P_ALL))
        except OSError as exc:
            raise kernel_refusal(who, f"bind to {self.iface}", exc) from None

    # --- PacketSource -------------------------------------------------------------------------------

    def _status_word(self, block: int) -> int:
        return (block * self._block_size + BLOCK_STATUS) // 4

    def _block_ready(self) -> bool:
        return self._pkts_left > 0 or bool(self._words[self._status_word(self._block)] & TP_STATUS_USER)

    def read(self, max_packets: int = DEFAULT_BATCH, timeout: float | None = READ_TIMEOUT_S) -> PacketBatch:
        """Up to ``max_packets`` payloads from the blocks the kernel handed over; waits at most
        ``timeout`` seconds for the first block (None: for ever, 0: not at all)."""
        if self._sock is None:
            raise SourceError(f"{self.WHO} source on {self.iface} is closed")
        self._reads += 1
        n_max = min(int(max_packets), self._buffers.max_packets)
        if n_max < 1:
            return empty_batch()
        if not self._block_ready():
            if timeout == 0 or not wait_readable(self._fd, timeout) or not self._block_ready():
                return empty_batch()
        b, words = self._buffers, self._words
        n = used = 0
        while n < n_max:
            if self._pkts_left == 0:
                base = self._block * self._block_size
                if not words[(base + BLOCK_STATUS) // 4] & TP_STATUS_USER:
                    break
                self._pkts_left = int(words[(base + BLOCK_NUM_PKTS) // 4])
                self._pkt = base + int(words[(base + BLOCK_FIRST_PKT) // 4])
                self._counters[C_BLOCKS] += 1
            if self._pkts_left > 0:
                n, used, self._pkt, self._pkts_left = _walk_block(
                    self._bytes, self._pkt, self._pkts_left, b.data, b.offset, b.length, b.ts_recv,
                    b.group, b.port, n, used, n_max, self._counters)
            if self._pkts_left > 0:
                break  # the batch is full; this block is finished by the next read
            words[self._status_word(self._block)] = TP_STATUS_KERNEL  # every frame copied out: give it back
            self._block = (self._block + 1) % self._block_count
        return b.batch(n, used)

    def fileno(self) -> int:
        return self._fd

    def _poll_kernel_stats(self) -> None:
        if self._sock is None:
            return
        # struct tpacket_stats_v3: tp_packets (passed the filter, drops included), tp_drops, tp_freeze_q_cnt
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, freeze = struct.unpack("=3I", raw.ljust(12, b"\0"))  # 8 bytes before the ring is V3
        self._kernel_packets += packets
        self._kernel_drops += drops
        self._freeze_q += freeze

    def stats(self) -> dict:
        self._poll_kernel_stats()
        c = self._counters
        return {
            "packets": int(c[C_PACKETS]),
            "bytes": int(c[C_BYTES]),
            "kernel_drops": self._kernel_drops,
            "kernel_packets": self._kernel_packets,  # frames the filter passed, dropped ones included
            "freeze_q": self._freeze_q,  # times the kernel found the ring full
            "not_udp": int(c[C_NOT_UDP]),  # frames the filter passed that the parser refused
            "truncated": int(c[C_TRUNCATED]),
            "no_kernel_ts": 0,  # every ring frame carries the kernel's time
            "blocks": int(c[C_BLOCKS]),
            "reads": self._reads,
            "ring_bytes": self._block_size * self._block_count,
        }

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._poll_kernel_stats()
            except OSError:
                pass
        self._bytes = self._words = None
        unmap(self._ring)
        self._ring = None
        for sock in [self._sock, *self._join_socks]:
            if sock is not None:
                sock.close()
        self._sock = None
        self._join_socks = []

    def __enter__(self) -> AfPacketSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        feeds = ", ".join(f"{int_to_ipv4(g)}:{p}" for g, p in self.pairs)
        return f"AfPacketSource({self.iface}: {feeds})"
