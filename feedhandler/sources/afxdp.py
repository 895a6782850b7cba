"""AF_XDP: the feed's UDP packets redirected by an XDP program into our memory, past the IP stack.

Rules this module keeps:

- One source = one AF_XDP socket bound to one (interface, queue), its UMEM (packet memory we own),
  fill and RX rings mapped into the process, and an XDP program attached to the interface through a
  BPF link. The link detaches the program when closed, also when the process dies, so a crashed
  handler never leaves the interface redirecting its feed to nowhere.
- The program (assembled in Python below) redirects unfragmented IPv4 UDP whose (destination
  address, port) is in the feed map to the socket of the queue it arrived on, and passes everything
  else to the stack untouched. A feed packet on a queue with no socket also goes to the stack, and is
  counted (``stats()["other_queue"]``): steer the feed to the bound queue (or use one queue).
- Receive time: there is no kernel timestamp on an XDP descriptor, so the program reads CLOCK_TAI
  (bpf_ktime_get_tai_ns) when it redirects the packet and writes it into the packet's metadata, the
  8 bytes in front of the payload that AF_XDP copies with it; we convert TAI to UTC with the offset
  measured at open. That is the same instant the stack would have stamped (both run at receive, in the
  same softirq). A packet without it (metadata refused) gets the read time, counted in
  ``no_kernel_ts``.
- Generic (SKB) mode and copy mode by default: works on any interface, veth included; ``mode=
  "native"`` asks for driver mode (and zero-copy where the driver has it).
- A numba kernel walks the RX descriptors, copies the payloads into the batch arrays and puts each
  frame straight back on the fill ring; Python reads the RX producer before it and publishes the
  fill producer and RX consumer after it. The kernel opens with an acquire fence and closes with a
  release fence, which gives the ordering the rings' protocol asks for on any CPU.
- Any refusal by the kernel is a ``SourceError`` with one line saying which step and why.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import struct
import time
from typing import Iterable

import numba as nb
import numpy as np

from feedhandler.sources import _bpf
from feedhandler.sources._bpf import (
    ADD,
    AND,
    JEQ,
    JGT,
    JLT,
    JNE,
    LSH,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R10,
    SIZE_B,
    SIZE_DW,
    SIZE_H,
    SIZE_W,
)
from feedhandler.sources.afpacket import (
    interface_index,
    join_groups,
    kernel_refusal,
    locate_udp_payload,
    normalize_groups_ports,
    unmap,
)
from feedhandler.sources.base import (
    READ_TIMEOUT_S,
    BatchBuffers,
    PacketBatch,
    SourceError,
    empty_batch,
    int_to_ipv4,
    wait_readable,
)
from parsers.fences import acquire_fence, release_fence

WHO = "AF_XDP"

# linux/if_xdp.h
AF_XDP = 44
SOL_XDP = 283
XDP_MMAP_OFFSETS = 1
XDP_RX_RING = 2
XDP_UMEM_REG = 4
XDP_UMEM_FILL_RING = 5
XDP_UMEM_COMPLETION_RING = 6
XDP_STATISTICS = 7
XDP_OPTIONS = 8
XDP_OPTIONS_ZEROCOPY = 1
XDP_COPY = 1 << 1
XDP_PGOFF_RX_RING = 0
XDP_UMEM_PGOFF_FILL_RING = 0x100000000
XDP_DESC_SIZE = 16  # struct xdp_desc: addr u64, len u32, options u32

# XDP actions and the helpers the program calls (enum bpf_func_id)
XDP_PASS = 2
XDP_REDIRECT = 4
HELPER_MAP_LOOKUP_ELEM = 1
HELPER_REDIRECT_MAP = 51
HELPER_XDP_ADJUST_META = 54
HELPER_KTIME_GET_TAI_NS = 208

# struct xdp_md
XDP_MD_DATA, XDP_MD_DATA_END, XDP_MD_DATA_META, XDP_MD_RX_QUEUE = 0, 4, 8, 16

META_TS_BYTES = 8  # the receive time the program writes in front of the packet
DEFAULT_FRAMES = 16384  # UMEM frames (= fill and RX ring entries): 32 MiB, 16k packets of slack
DEFAULT_FRAME_SIZE = 2048  # a feed packet fits in an MTU; the kernel's 256-byte headroom comes off it
DEFAULT_BATCH = 4096
COMPLETION_RING = 64  # required by bind even though we never transmit

# Slots of the receive kernel's counter array.
C_PACKETS, C_BYTES, C_NOT_UDP, C_TRUNCATED, C_NO_TS = range(5)


# --- the XDP program --------------------------------------------------------------------------------

def feed_key(group: int, port: int) -> bytes:
    """The feed map's key as the program builds it on its stack: the destination address and port in
    network byte order, then two zero bytes."""
    return struct.pack("!IH", group, port) + b"\0\0"


def redirect_program(feeds_fd: int, xsks_fd: int, counters_fd: int) -> bytes:
    """eBPF for XDP: feed packets (key found in ``feeds_fd``) get the CLOCK_TAI time written in their
    metadata and go to the AF_XDP socket of their RX queue (``xsks_fd``); anything else passes."""
    a = _bpf.EbpfAssembler()
    a.mov_reg(R6, R1)  # ctx, kept across helper calls
    a.load(SIZE_W, R2, R6, XDP_MD_DATA)
    a.load(SIZE_W, R3, R6, XDP_MD_DATA_END)
    # Ethernet, at most one VLAN tag left in the frame
    a.mov_reg(R4, R2)
    a.alu_imm(ADD, R4, 14)
    a.jump_reg(JGT, R4, R3, "pass")
    a.load(SIZE_H, R5, R2, 12)  # EtherType as loaded little-endian from network order
    a.mov_imm(R4, 14)
    a.jump_imm(JEQ, R5, 0x0081, "vlan")  # 0x8100
    a.jump_imm(JEQ, R5, 0xA888, "vlan")  # 0x88a8
    a.goto("ethertype")
    a.label("vlan")
    a.mov_reg(R4, R2)
    a.alu_imm(ADD, R4, 18)
    a.jump_reg(JGT, R4, R3, "pass")
    a.load(SIZE_H, R5, R2, 16)
    a.mov_imm(R4, 18)
    a.label("ethertype")
    a.jump_imm(JNE, R5, 0x0008, "pass")  # IPv4
    a.alu_reg(ADD, R2, R4)  # r2 = IP header
    a.mov_reg(R4, R2)
    a.alu_imm(ADD, R4, 20)
    a.jump_reg(JGT, R4, R3, "pass")
    a.load(SIZE_B, R5, R2, 0)  # version, header length
    a.mov_reg(R4, R5)
    a.alu_imm(AND, R4, 0xF0)
    a.jump_imm(JNE, R4, 0x40, "pass")
    a.alu_imm(AND, R5, 0x0F)
    a.alu_imm(LSH, R5, 2)
    a.jump_imm(JLT, R5, 20, "pass")
    a.load(SIZE_B, R4, R2, 9)
    a.jump_imm(JNE, R4, socket.IPPROTO_UDP, "pass")
    a.load(SIZE_H, R4, R2, 6)
    a.alu_imm(AND, R4, 0xFF3F)  # 0x3fff in network order: more fragments, or not the first
    a.jump_imm(JNE, R4, 0, "pass")
    a.load(SIZE_W, R4, R2, 16)  # destination address -> key bytes 0..3
    a.store_reg(SIZE_W, R10, -8, R4)
    a.alu_reg(ADD, R2, R5)  # r2 = UDP header
    a.mov_reg(R4, R2)
    a.alu_imm(ADD, R4, 8)
    a.jump_reg(JGT, R4, R3, "pass")
    a.load(SIZE_H, R4, R2, 2)  # destination port -> key bytes 4..5
    a.store_reg(SIZE_H, R10, -4, R4)
    a.store_imm(SIZE_H, R10, -2, 0)
    a.ld_map_fd(R1, feeds_fd)
    a.mov_reg(R2, R10)
    a.alu_imm(ADD, R2, -8)
    a.call(HELPER_MAP_LOOKUP_ELEM)
    a.jump_imm(JEQ, R0, 0, "pass")
    # a feed packet: its receive time goes in front of it, in the metadata AF_XDP copies along
    a.call(HELPER_KTIME_GET_TAI_NS)
    a.mov_reg(R7, R0)
    a.mov_reg(R1, R6)
    a.mov_imm(R2, -META_TS_BYTES)
    a.call(HELPER_XDP_ADJUST_META)
    a.jump_imm(JNE, R0, 0, "redirect")
    a.load(SIZE_W, R2, R6, XDP_MD_DATA_META)
    a.load(SIZE_W, R3, R6, XDP_MD_DATA)
    a.mov_reg(R4, R2)
    a.alu_imm(ADD, R4, META_TS_BYTES)
    a.jump_reg(JGT, R4, R3, "redirect")
    a.store_reg(SIZE_DW, R2, 0, R7)
    a.label("redirect")
    a.load(SIZE_W, R2, R6, XDP_MD_RX_QUEUE)
    a.ld_map_fd(R1, xsks_fd)
    a.mov_imm(R3, XDP_PASS)  # no socket on this queue: the stack gets the packet
    a.call(HELPER_REDIRECT_MAP)
    a.jump_imm(JEQ, R0, XDP_REDIRECT, "done")
    a.store_imm(SIZE_W, R10, -12, 0)  # count it in counters[0]
    a.ld_map_fd(R1, counters_fd)
    a.mov_reg(R2, R10)
    a.alu_imm(ADD, R2, -12)
    a.call(HELPER_MAP_LOOKUP_ELEM)
    a.jump_imm(JEQ, R0, 0, "pass")
    a.load(SIZE_DW, R1, R0, 0)
    a.alu_imm(ADD, R1, 1)
    a.store_reg(SIZE_DW, R0, 0, R1)
    a.label("pass")
    a.mov_imm(R0, XDP_PASS)
    a.label("done")
    a.exit()
    return a.assemble()


# --- the receive kernel -----------------------------------------------------------------------------

@nb.njit(cache=True, nogil=True)
def _receive(umem, umem64, rx_desc, rx_mask, rx_cons, k, fill, fill_mask, fill_prod, frame_mask, tai_offset,
             now_ns, data, offset, length, ts_recv, group, port, counters):
    """Copy the payloads of ``k`` RX descriptors into the batch arrays and refill their frames.

    Args:
        umem, umem64: the packet memory, as uint8 and as uint64.
        rx_desc: the RX ring's descriptors as uint64 pairs (addr; len | options << 32).
        rx_mask, rx_cons: ring size - 1 and our consumer index (free-running u32).
        k: descriptors available.
        fill, fill_mask, fill_prod: the fill ring's entries, size - 1, our producer index.
        frame_mask: frame size - 1 (a descriptor's frame is its address with these bits cleared).
        tai_offset: CLOCK_TAI - CLOCK_REALTIME, ns.
        now_ns: receive time for a packet whose metadata holds none.
        data, offset, length, ts_recv, group, port: the batch arrays.
        counters: int64 [C_*] accumulated.

    Returns:
        (descriptors consumed, rows written, payload bytes written); fewer than ``k`` consumed when the
        payload buffer is full (the rest lead the next read).
    """
    acquire_fence()  # the caller read the RX producer: the descriptors and packets behind it are complete
    n = 0
    used = 0
    consumed = 0
    while consumed < k:
        d = (rx_cons + consumed) & rx_mask
        addr = np.int64(rx_desc[2 * d])
        size = np.int64(rx_desc[2 * d + 1] & np.uint64(0xFFFFFFFF))
        frame = addr & ~np.int64(frame_mask)
        start, plen, dst, dport, truncated = locate_udp_payload(umem, addr, addr + size)
        if start < 0:
            counters[C_NOT_UDP] += 1
        else:
            if used + plen > data.shape[0]:
                break
            data[used:used + plen] = umem[start:start + plen]
            offset[n] = used
            length[n] = plen
            ts = np.int64(0)
            meta = addr - META_TS_BYTES
            if meta >= frame and meta % 8 == 0:  # the kernel puts data 8-aligned (256 bytes in)
                ts = np.int64(umem64[meta >> 3])
                umem64[meta >> 3] = 0  # a frame whose next packet carries no time must read 0
            if ts == 0:
                counters[C_NO_TS] += 1
                ts_recv[n] = now_ns
            else:
                ts_recv[n] = ts - tai_offset
            group[n] = dst
            port[n] = dport
            counters[C_PACKETS] += 1
            counters[C_BYTES] += plen
            counters[C_TRUNCATED] += truncated
            n += 1
            used += plen
        fill[(fill_prod + consumed) & fill_mask] = frame
        consumed += 1
    release_fence()  # fill entries written and frames read before the caller publishes the indices
    return consumed, n, used


# --- the source -------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _tai_offset_ns() -> int:
    """CLOCK_TAI - CLOCK_REALTIME: a whole number of seconds (0 until someone sets the kernel's TAI
    offset, 37 s on a host that chrony or ptp4l keeps)."""
    diff = time.clock_gettime_ns(time.CLOCK_TAI) - time.clock_gettime_ns(time.CLOCK_REALTIME)
    return round(diff / 1e9) * 1_000_000_000


def _ring_offsets(raw: bytes) -> dict[str, tuple[int, int, int]]:
    """struct xdp_mmap_offsets -> {ring: (producer, consumer, desc)} byte offsets in its mapping."""
    values = struct.unpack_from("=16Q", raw)
    return {name: values[i * 4:i * 4 + 3] for i, name in enumerate(("rx", "tx", "fill", "completion"))}


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class AfXdpSource:
    """The feed's UDP payloads through AF_XDP on (``iface``, ``queue``) (see the module docstring).

    Args:
        iface: interface name (in the calling thread's network namespace).
        queue: RX queue to bind (0 on a veth or a single-queue NIC).
        groups_ports: the feed's (group, port) pairs: ("239.1.1.1", 26400), (0xEF010101, 26400) or
            "239.1.1.1:26400".
        frames: UMEM frames, also the fill and RX ring sizes (a power of two).
        frame_size: bytes per frame (2048 or 4096).
        mode: "generic" (SKB mode, copy; any interface) or "native" (driver mode; zero-copy where the
            driver supports it).
        max_packets: rows of the batch arrays (the most one read() returns).
        join: join the multicast groups on ``iface`` (IGMP); off when something else already does.
    """

    def __init__(self, iface: str, queue: int, groups_ports: Iterable, frames: int = DEFAULT_FRAMES,
                 frame_size: int = DEFAULT_FRAME_SIZE, mode: str = "generic", max_packets: int = DEFAULT_BATCH,
                 join: bool = True) -> None:
        self.iface, self.queue, self.mode = iface, int(queue), mode
        self.pairs = normalize_groups_ports(groups_ports, WHO)
        if mode not in ("generic", "native"):
            raise SourceError(f"{WHO}: mode must be 'generic' or 'native', got {mode!r}")
        if not _power_of_two(frames) or frame_size not in (2048, 4096) or self.queue < 0 or max_packets < 1:
            raise SourceError(f"{WHO}: frames must be a power of two, frame_size 2048 or 4096, queue >= 0 "
                              "and max_packets positive")
        self._frames, self._frame_size = int(frames), int(frame_size)
        self._fds: list[int] = []  # maps and program, closed last
        self._link_fd = self._feeds_fd = self._xsks_fd = self._counters_fd = self._prog_fd = -1
        self._sock: socket.socket | None = None
        self._join_socks: list[socket.socket] = []
        self._maps: list[mmap.mmap] = []
        self._umem = self._rx_map = self._fill_map = None
        self._views: dict[str, np.ndarray] = {}
        self._counters = np.zeros(5, dtype=np.int64)
        self._xdp_stats = (0,) * 6
        self._reads = 0
        ifindex = interface_index(iface, WHO)
        try:
            self._sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        except OSError as exc:
            if exc.errno in (errno.EAFNOSUPPORT, errno.EINVAL):
                raise SourceError(f"{WHO}: this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS): "
                                  f"{exc.strerror}") from None
            raise kernel_refusal(WHO, "create an AF_XDP socket", exc, "CAP_NET_RAW") from None
        try:
            self._set_up(ifindex, join)
        except BaseException:
            self.close()
            raise
        self._fd = self._sock.fileno()
        self._buffers = BatchBuffers(max_packets, max_packets * self._frame_size)
        self._tai_offset = _tai_offset_ns()

    # --- setup --------------------------------------------------------------------------------------

    def _set_up(self, ifindex: int, join: bool) -> None:
        sock, frames = self._sock, self._frames
        try:
            self._umem = mmap.mmap(-1, frames * self._frame_size, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise kernel_refusal(WHO, f"allocate {frames * self._frame_size} bytes of UMEM", exc) from None
        umem = np.frombuffer(self._umem, dtype=np.uint8)
        self._views["umem"] = umem
        self._views["umem64"] = umem.view(np.uint64)
        try:
            sock.setsockopt(SOL_XDP, XDP_UMEM_REG, struct.pack("=QQIIII", umem.ctypes.data, len(umem),
                                                              self._frame_size, 0, 0, 0))
        except OSError as exc:
            raise kernel_refusal(WHO, "register the UMEM", exc,
                                 "CAP_IPC_LOCK or a larger RLIMIT_MEMLOCK") from None
        try:
            sock.setsockopt(SOL_XDP, XDP_UMEM_FILL_RING, frames)
            sock.setsockopt(SOL_XDP, XDP_UMEM_COMPLETION_RING, COMPLETION_RING)
            sock.setsockopt(SOL_XDP, XDP_RX_RING, frames)
            offsets = _ring_offsets(sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, 128))
            self._rx_map = self._map_ring(offsets["rx"], frames * XDP_DESC_SIZE, XDP_PGOFF_RX_RING)
            self._fill_map = self._map_ring(offsets["fill"], frames * 8, XDP_UMEM_PGOFF_FILL_RING)
        except OSError as exc:
            raise kernel_refusal(WHO, f"set up {frames}-entry fill and RX rings", exc) from None
        self._views["rx_prod"], self._views["rx_cons"], self._views["rx_desc"] = self._ring_views(
            self._rx_map, offsets["rx"], frames * 2)
        self._views["fill_prod"], self._views["fill_cons"], self._views["fill"] = self._ring_views(
            self._fill_map, offsets["fill"], frames)
        self._load_program()
        self._bind(ifindex)
        try:
            _bpf.map_update(self._xsks_fd, struct.pack("=I", self.queue), struct.pack("=I", sock.fileno()))
        except OSError as exc:
            raise kernel_refusal(WHO, f"put the socket in the XSKMAP at queue {self.queue}", exc) from None
        # every frame starts on the fill ring, before the program can send anything our way
        fill = self._views["fill"]
        fill[:] = np.arange(frames, dtype=np.uint64) * np.uint64(self._frame_size)
        self._views["fill_prod"][0] = frames
        self._rx_cons_idx = int(self._views["rx_cons"][0])
        self._fill_prod_idx = frames
        self._attach(ifindex)
        if join:
            self._join_socks = join_groups(ifindex, self.pairs, WHO)

    def _map_ring(self, offsets: tuple[int, int, int], desc_bytes: int, pgoff: int) -> mmap.mmap:
        ring = mmap.mmap(self._sock.fileno(), offsets[2] + desc_bytes, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                         mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
        self._maps.append(ring)
        return ring

    @staticmethod
    def _ring_views(ring: mmap.mmap, offsets: tuple[int, int, int], desc_words: int):
        producer = np.frombuffer(ring, dtype=np.uint32, count=1, offset=offsets[0])
        consumer = np.frombuffer(ring, dtype=np.uint32, count=1, offset=offsets[1])
        desc = np.frombuffer(ring, dtype=np.uint64, count=desc_words, offset=offsets[2])
        return producer, consumer, desc

    def _new_map(self, map_type: int, key_size: int, value_size: int, entries: int, name: str) -> int:
        try:
            fd = _bpf.map_create(map_type, key_size, value_size, entries, name)
        except OSError as exc:
            raise kernel_refusal(WHO, f"create the BPF map {name}", exc, "CAP_BPF") from None
        self._fds.append(fd)
        return fd

    def _load_program(self) -> None:
        self._feeds_fd = self._new_map(_bpf.BPF_MAP_TYPE_HASH, 8, 4, len(self.pairs), "fh_feeds")
        self._xsks_fd = self._new_map(_bpf.BPF_MAP_TYPE_XSKMAP, 4, 4, self.queue + 1, "fh_xsks")
        self._counters_fd = self._new_map(_bpf.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 1, "fh_counters")
        for group, port in self.pairs:
            _bpf.map_update(self._feeds_fd, feed_key(group, port), struct.pack("=I", 1))
        try:
            self._prog_fd = _bpf.prog_load(_bpf.BPF_PROG_TYPE_XDP,
                                           redirect_program(self._feeds_fd, self._xsks_fd, self._counters_fd),
                                           "fh_feed_xsk")
        except OSError as exc:
            raise kernel_refusal(WHO, "load the XDP program", exc, "CAP_BPF and CAP_NET_ADMIN") from None
        self._fds.append(self._prog_fd)

    def _bind(self, ifindex: int) -> None:
        flags = XDP_COPY if self.mode == "generic" else 0
        addr = ctypes.create_string_buffer(struct.pack("=HHIII", AF_XDP, flags, ifindex, self.queue, 0), 16)
        if _libc.bind(self._sock.fileno(), addr, 16) != 0:
            err = ctypes.get_errno()
            exc = OSError(err, os.strerror(err))
            if err == errno.EBUSY:
                raise SourceError(f"{WHO}: kernel refused to bind to {self.iface} queue {self.queue}: another "
                                  "AF_XDP socket is bound to that queue")
            if err == errno.EINVAL:
                raise SourceError(f"{WHO}: kernel refused to bind to {self.iface} queue {self.queue}: "
                                  f"{exc.strerror} (does the queue exist? `ethtool -l {self.iface}`)")
            raise kernel_refusal(WHO, f"bind to {self.iface} queue {self.queue}", exc, "CAP_NET_RAW") from None

    def _attach(self, ifindex: int) -> None:
        flags = _bpf.XDP_FLAGS_SKB_MODE if self.mode == "generic" else _bpf.XDP_FLAGS_DRV_MODE
        try:
            self._link_fd = _bpf.link_create_xdp(self._prog_fd, ifindex, flags)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.EEXIST):
                raise SourceError(f"{WHO}: kernel refused to attach the XDP program to {self.iface}: another "
                                  "XDP program is attached there (`ip link show` names it)") from None
            raise kernel_refusal(WHO, f"attach the XDP program to {self.iface} ({self.mode} mode)", exc,
                                 "CAP_NET_ADMIN") from None

    # --- PacketSource -------------------------------------------------------------------------------

    def _available(self) -> int:
        return (int(self._views["rx_prod"][0]) - self._rx_cons_idx) & 0xFFFFFFFF

    def read(self, max_packets: int = DEFAULT_BATCH, timeout: float | None = READ_TIMEOUT_S) -> PacketBatch:
        """Up to ``max_packets`` payloads already in the RX ring, else the first to come within
        ``timeout`` seconds (None: wait for ever, 0: do not wait)."""
        if self._sock is None:
            raise SourceError(f"{WHO} source on {self.iface} queue {self.queue} is closed")
        self._reads += 1
        n_max = min(int(max_packets), self._buffers.max_packets)
        if n_max < 1:
            return empty_batch()
        avail = self._available()
        if avail == 0:
            if timeout == 0 or not wait_readable(self._fd, timeout):
                return empty_batch()
            avail = self._available()
            if avail == 0:
                return empty_batch()
        v, b = self._views, self._buffers
        consumed, n, used = _receive(
            v["umem"], v["umem64"], v["rx_desc"], self._frames - 1, self._rx_cons_idx, min(avail, n_max),
            v["fill"], self._frames - 1, self._fill_prod_idx, self._frame_size - 1, self._tai_offset, time.time_ns(),
            b.data, b.offset, b.length, b.ts_recv, b.group, b.port, self._counters)
        # publish: frames back to the kernel first, then the RX slots they came from
        self._fill_prod_idx = (self._fill_prod_idx + consumed) & 0xFFFFFFFF
        v["fill_prod"][0] = self._fill_prod_idx
        self._rx_cons_idx = (self._rx_cons_idx + consumed) & 0xFFFFFFFF
        v["rx_cons"][0] = self._rx_cons_idx
        return b.batch(n, used)

    def fileno(self) -> int:
        return self._fd

    def _poll_kernel_stats(self) -> None:
        if self._sock is None:
            return
        raw = self._sock.getsockopt(SOL_XDP, XDP_STATISTICS, 48)
        self._xdp_stats = struct.unpack_from(f"={len(raw) // 8}Q", raw) + (0,) * (6 - len(raw) // 8)

    def _other_queue(self) -> int:
        if self._sock is None or self._counters_fd < 0:
            return self._other_queue_last
        cpus = _bpf.possible_cpus()
        raw = _bpf.map_lookup(self._counters_fd, struct.pack("=I", 0), 8 * cpus)
        self._other_queue_last = sum(struct.unpack(f"={cpus}Q", raw))
        return self._other_queue_last

    _other_queue_last = 0

    def _zero_copy(self) -> bool:
        try:
            return bool(struct.unpack("=I", self._sock.getsockopt(SOL_XDP, XDP_OPTIONS, 4))[0]
                        & XDP_OPTIONS_ZEROCOPY)
        except (OSError, AttributeError):
            return False

    def stats(self) -> dict:
        self._poll_kernel_stats()
        rx_dropped, rx_invalid, _, rx_ring_full, fill_empty, _ = self._xdp_stats
        c = self._counters
        return {
            "packets": int(c[C_PACKETS]),
            "bytes": int(c[C_BYTES]),
            "kernel_drops": rx_dropped + rx_ring_full,  # no free frame, or the RX ring full
            "rx_ring_full": rx_ring_full,
            "fill_ring_empty": fill_empty,
            "rx_invalid_descs": rx_invalid,
            "other_queue": self._other_queue(),  # feed packets on a queue without our socket (to the stack)
            "not_udp": int(c[C_NOT_UDP]),
            "truncated": int(c[C_TRUNCATED]),
            "no_kernel_ts": int(c[C_NO_TS]),
            "reads": self._reads,
            "mode": self.mode,
            "zero_copy": self._zero_copy() if self._sock is not None else False,
        }

    def close(self) -> None:
        """Detach the program, close the socket, free maps, program, rings and UMEM (idempotent)."""
        if self._sock is not None:
            try:
                self._poll_kernel_stats()
                self._other_queue()
            except OSError:
                pass
        if self._link_fd >= 0:
            os.close(self._link_fd)  # detaches the program: the feed goes back to the stack
            self._link_fd = self._feeds_fd = self._xsks_fd = self._counters_fd = self._prog_fd = -1
        if self._sock is not None:
            self._sock.close()  # also takes the socket out of the XSKMAP and releases the UMEM
            self._sock = None
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._views.clear()
        for ring in self._maps:
            unmap(ring)
        self._maps.clear()
        unmap(self._umem)
        self._umem = self._rx_map = self._fill_map = None
        for sock in self._join_socks:
            sock.close()
        self._join_socks = []

    def __enter__(self) -> AfXdpSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        feeds = ", ".join(f"{int_to_ipv4(g)}:{p}" for g, p in self.pairs)
        return f"AfXdpSource({self.iface} queue {self.queue}, {self.mode}: {feeds})"
