"""Multicast UDP through the kernel's socket layer, read in batches: one recvmmsg(2) per batch.

Rules this module keeps:

- One socket per (group, port), bound to the GROUP address with IP_MULTICAST_ALL off, so it gets that
  group's datagrams only (Linux otherwise hands a socket every joined group on its port).
- The join is any-source (IP_ADD_MEMBERSHIP with ip_mreqn, by interface index) or, with ``source``,
  source-specific (IP_ADD_SOURCE_MEMBERSHIP, by interface address).
- The receive buffer is asked for with SO_RCVBUFFORCE (root may pass net.core.rmem_max) and else
  SO_RCVBUF; what the kernel granted is in ``stats()`` and logged when smaller than asked for.
- Every datagram carries two control messages: SO_TIMESTAMPNS (the kernel's receive time, ns) and
  SO_RXQ_OVFL (the socket's cumulative count of datagrams dropped because the buffer was full).
- recvmmsg is called from a numba kernel (the C library's, by name) on message headers, iovecs and
  control buffers laid out ONCE in numpy arrays, and the same call walks the results (lengths,
  timestamps, drop counter) into the batch arrays: one compiled call per read, no Python object per
  datagram. Where libc has no recvmmsg, recvmsg_into runs per datagram
  (correct, slower; ``stats()["mode"]`` says which).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import time

import numba as nb
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from feedhandler.sources.base import (
    DEFAULT_SNAP,
    READ_TIMEOUT_S,
    BatchBuffers,
    PacketBatch,
    SourceError,
    empty_batch,
    ipv4_to_int,
    wait_readable,
)

log = logging.getLogger(__name__)

DEFAULT_RCVBUF = 64 << 20  # bytes asked for: ~40k full-size datagrams, >50 ms at 1M msg/s
DEFAULT_BATCH = 1024  # message headers laid out (the most one read() returns)

# Linux socket option numbers Python's socket module lacks (asm-generic/socket.h, linux/in.h).
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35  # = SCM_TIMESTAMPNS (the 64-bit-time layout on 64-bit hosts)
SO_RXQ_OVFL = 40
IP_MULTICAST_ALL = 49
IP_ADD_SOURCE_MEMBERSHIP = getattr(socket, "IP_ADD_SOURCE_MEMBERSHIP", 39)
SIOCGIFADDR = 0x8915
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20
MSG_CTRUNC = 0x08

# struct mmsghdr on 64-bit Linux: struct msghdr (56 bytes) + unsigned msg_len, padded to 64.
MMSGHDR_DTYPE = np.dtype([
    ("name", "<u8"), ("namelen", "<u4"), ("_pad0", "<u4"),
    ("iov", "<u8"), ("iovlen", "<u8"),
    ("control", "<u8"), ("controllen", "<u8"),
    ("flags", "<i4"), ("_pad1", "<u4"),
    ("len", "<u4"), ("_pad2", "<u4"),
])
IOVEC_DTYPE = np.dtype([("base", "<u8"), ("len", "<u8")])
# Room for both control messages: CMSG_SPACE(16) for the timespec + CMSG_SPACE(4) for the counter.
CONTROL_STRIDE = 64

# Slots of the kernel's counter array.
C_PACKETS, C_BYTES, C_TRUNCATED, C_NO_TS, C_DROPS = range(5)


def _load_recvmmsg():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_RECVMMSG = _load_recvmmsg()


@nb.njit(cache=True, nogil=True)
def _collect_batch(n, mm_len, mm_flags, mm_controllen, ctl64, ctl32, ctl_stride, slot, now_ns,
                   offset, length, ts_recv, counters):
    """Turn ``n`` received message headers into batch rows and rearm the headers for the next call.

    Args:
        n: messages recvmmsg filled.
        mm_len, mm_flags, mm_controllen: the mmsghdr fields (strided views).
        ctl64, ctl32: the control buffers viewed as int64 / int32 (each message owns ``ctl_stride``
            bytes; cmsg headers are 8-byte aligned).
        ctl_stride: control bytes per message.
        slot: payload bytes per message (payload i starts at i * slot).
        now_ns: stand-in receive time for a datagram without a kernel timestamp.
        offset, length, ts_recv: output rows.
        counters: int64 [C_*] accumulated.
    """
    for i in range(n):
        got = np.int64(mm_len[i])
        if (mm_flags[i] & MSG_TRUNC) != 0 or got > slot:
            counters[C_TRUNCATED] += 1
            got = min(got, slot)
        offset[i] = i * slot
        length[i] = got
        counters[C_PACKETS] += 1
        counters[C_BYTES] += got
        ts = np.int64(-1)
        base = i * ctl_stride
        clen = np.int64(mm_controllen[i])
        pos = np.int64(0)
        while pos + 16 <= clen:  # walk the cmsghdrs: len (size_t), level (int), type (int), data
            cmsg_len = ctl64[(base + pos) // 8]
            if cmsg_len < 16 or pos + cmsg_len > clen:
                break
            level = ctl32[(base + pos) // 4 + 2]
            kind = ctl32[(base + pos) // 4 + 3]
            if level == 1 and kind == SO_TIMESTAMPNS and cmsg_len >= 32:
                ts = ctl64[(base + pos) // 8 + 2] * 1_000_000_000 + ctl64[(base + pos) // 8 + 3]
            elif level == 1 and kind == SO_RXQ_OVFL and cmsg_len >= 20:
                drops = np.int64(ctl32[(base + pos) // 4 + 4]) & 0xFFFFFFFF
                if drops > counters[C_DROPS]:
                    counters[C_DROPS] = drops
            pos += (cmsg_len + 7) & ~7
        if ts < 0:
            counters[C_NO_TS] += 1
            ts = now_ns
        ts_recv[i] = ts
        mm_controllen[i] = ctl_stride  # the kernel shrank it to what it wrote
        mm_flags[i] = 0


_recvmmsg_c = types.ExternalFunction("recvmmsg", types.int32(types.int32, types.voidptr, types.uint32, types.int32,
                                                             types.voidptr))
_errno_location = types.ExternalFunction("__errno_location", types.voidptr())
_clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.voidptr))


@intrinsic
def _address(typingctx, addr):
    """An int64 address as a void pointer."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(types.int64), codegen


@nb.njit(cache=True, nogil=True)
def _recv_batch(fd, mm_addr, n_max, mm_len, mm_flags, mm_controllen, ctl64, ctl32, ctl_stride, slot, offset, length,
                ts_recv, counters, scratch):
    """recvmmsg(2) without waiting, then ``_collect_batch``, in one compiled call (no ctypes round trip).

    Returns:
        datagrams read (0: none waiting), or minus errno.
    """
    got = _recvmmsg_c(np.int32(fd), _address(mm_addr), np.uint32(n_max), np.int32(MSG_DONTWAIT), _address(0))
    if got < 0:
        err = nb.carray(_errno_location(), 1, np.int32)[0]
        return -np.int64(err)
    if got > 0:
        _clock_gettime(0, scratch.ctypes.data)  # stand-in receive time (CLOCK_REALTIME) for a datagram without one
        now_ns = scratch[0] * 1_000_000_000 + scratch[1]
        _collect_batch(got, mm_len, mm_flags, mm_controllen, ctl64, ctl32, ctl_stride, slot, now_ns, offset, length,
                       ts_recv, counters)
    return np.int64(got)


def _interface_index(iface: str) -> int:
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        raise SourceError(f"no network interface named {iface!r}") from None


def _interface_address(sock: socket.socket, iface: str) -> bytes:
    """The IPv4 address of interface ``iface`` (4 bytes, network order)."""
    try:
        req = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", iface.encode()[:15]))
    except OSError as exc:
        raise SourceError(f"interface {iface!r} has no IPv4 address for a source-specific join "
                          f"({exc.strerror})") from None
    return req[20:24]


def _is_ipv4(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return False
    return True


class SocketSource:
    """Receives one multicast group:port on a UDP socket (see the module docstring).

    Args:
        group: multicast IPv4 address, e.g. "239.1.1.1".
        port: UDP port.
        iface: interface to join on, by name ("eth1") or by one of its IPv4 addresses (None: the
            kernel's choice by routing).
        source: sender IPv4 address for a source-specific join (None: any source).
        rcvbuf: socket receive buffer to ask for, bytes.
        max_packets: most datagrams one read() returns (message headers laid out).
        snaplen: bytes kept per datagram; longer ones are cut and counted in ``stats()["truncated"]``.
        use_recvmmsg: None = when libc has it; False forces the recvmsg_into path.
    """

    def __init__(self, group: str, port: int, iface: str | None = None, source: str | None = None,
                 rcvbuf: int = DEFAULT_RCVBUF, max_packets: int = DEFAULT_BATCH,
                 snaplen: int = DEFAULT_SNAP, use_recvmmsg: bool | None = None) -> None:
        group_int = ipv4_to_int(group)
        if group_int >> 28 != 0xE:
            raise SourceError(f"{group} is not a multicast address (224.0.0.0/4)")
        if not 0 < int(port) < 65536:
            raise SourceError(f"UDP port out of range: {port}")
        if source is not None:
            ipv4_to_int(source)
        if max_packets < 1 or snaplen < 1:
            raise SourceError("max_packets and snaplen must be positive")
        self.group, self.port, self.iface, self.source = group, int(port), iface, source
        self._group_int = group_int
        self._snap = int(snaplen)
        self._counters = np.zeros(5, dtype=np.int64)
        self._reads = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            self._setup_socket(rcvbuf)
        except BaseException:
            self._sock.close()
            raise
        self._fd = self._sock.fileno()
        self._buffers = BatchBuffers(max_packets, max_packets * self._snap)
        self._buffers.group[:] = group_int  # the socket is bound to this one group and port
        self._buffers.port[:] = self.port
        if use_recvmmsg is None:
            use_recvmmsg = _RECVMMSG is not None
        elif use_recvmmsg and _RECVMMSG is None:
            raise SourceError("recvmmsg is not available in this C library")
        self._batched = bool(use_recvmmsg)
        if self._batched:
            self._lay_out_headers(max_packets)

    # --- setup --------------------------------------------------------------------------------------

    def _setup_socket(self, rcvbuf: int) -> None:
        sock = self._sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._rcvbuf_requested = int(rcvbuf)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self._rcvbuf_requested)
            self._rcvbuf_forced = True
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf_requested)
            self._rcvbuf_forced = False
        # Linux reports twice the usable size (it counts its bookkeeping); half is what we asked for.
        self._rcvbuf_granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        if self._rcvbuf_granted < self._rcvbuf_requested:
            log.warning("SO_RCVBUF for %s:%d: asked for %d bytes, the kernel granted %d (net.core.rmem_max; "
                        "run as root for SO_RCVBUFFORCE)", self.group, self.port, self._rcvbuf_requested,
                        self._rcvbuf_granted)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        try:
            sock.bind((self.group, self.port))
        except OSError as exc:
            raise SourceError(f"cannot bind {self.group}:{self.port}: {exc.strerror}") from None
        group_bytes = socket.inet_aton(self.group)
        where = f" on {self.iface}" if self.iface else ""
        try:
            by_address = self.iface is not None and _is_ipv4(self.iface)
            any_addr = socket.inet_aton("0.0.0.0")
            if self.source is None:  # ip_mreqn: group, interface address, interface index
                ifindex = _interface_index(self.iface) if self.iface and not by_address else 0
                if_addr = socket.inet_aton(self.iface) if by_address else any_addr
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                                group_bytes + if_addr + struct.pack("=i", ifindex))
            else:  # ip_mreq_source: group, interface address, source address
                if by_address:
                    if_addr = socket.inet_aton(self.iface)
                else:
                    if_addr = _interface_address(sock, self.iface) if self.iface else any_addr
                sock.setsockopt(socket.IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP,
                                group_bytes + if_addr + socket.inet_aton(self.source))
        except OSError as exc:
            kind = f"source-specific join ({self.source})" if self.source else "join"
            raise SourceError(f"multicast {kind} of {self.group}{where} failed: {exc.strerror}") from None

    def _lay_out_headers(self, n: int) -> None:
        """Point each mmsghdr at its iovec (payload slot) and control buffer, once."""
        self._mm = np.zeros(n, dtype=MMSGHDR_DTYPE)
        self._iov = np.zeros(n, dtype=IOVEC_DTYPE)
        self._control = np.zeros(n * CONTROL_STRIDE, dtype=np.uint8)
        data_addr = self._buffers.data.ctypes.data
        self._iov["base"] = data_addr + np.arange(n, dtype=np.uint64) * np.uint64(self._snap)
        self._iov["len"] = self._snap
        self._mm["iov"] = self._iov.ctypes.data + np.arange(n, dtype=np.uint64) * np.uint64(IOVEC_DTYPE.itemsize)
        self._mm["iovlen"] = 1
        self._mm["control"] = (self._control.ctypes.data
                               + np.arange(n, dtype=np.uint64) * np.uint64(CONTROL_STRIDE))
        self._mm["controllen"] = CONTROL_STRIDE
        self._mm_addr = self._mm.ctypes.data
        self._mm_len = self._mm["len"]
        self._mm_flags = self._mm["flags"]
        self._mm_controllen = self._mm["controllen"]
        self._ctl64 = self._control.view(np.int64)
        self._ctl32 = self._control.view(np.int32)
        self._scratch = np.zeros(2, np.int64)

    # --- PacketSource -------------------------------------------------------------------------------

    def read(self, max_packets: int = DEFAULT_BATCH, timeout: float | None = READ_TIMEOUT_S) -> PacketBatch:
        """Up to ``max_packets`` datagrams: those waiting now, else the first to come within ``timeout``."""
        if self._sock is None:
            raise SourceError(f"socket source {self.group}:{self.port} is closed")
        n_max = min(int(max_packets), self._buffers.max_packets)
        if n_max < 1:
            return empty_batch()
        n = self._receive(n_max)
        if n == 0 and timeout != 0:
            if not wait_readable(self._fd, timeout):
                return empty_batch()
            n = self._receive(n_max)
        if n == 0:
            return empty_batch()
        return self._buffers.batch(n, n * self._snap)

    def _receive(self, n_max: int) -> int:
        self._reads += 1
        if self._batched:
            b = self._buffers
            got = _recv_batch(self._fd, self._mm_addr, n_max, self._mm_len, self._mm_flags, self._mm_controllen,
                              self._ctl64, self._ctl32, CONTROL_STRIDE, self._snap, b.offset, b.length, b.ts_recv,
                              self._counters, self._scratch)
            if got < 0:
                err = -got
                if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return 0
                raise SourceError(f"recvmmsg on {self.group}:{self.port} failed: {os.strerror(err)}")
            return got
        return self._receive_one_by_one(n_max)

    def _receive_one_by_one(self, n_max: int) -> int:
        """The recvmsg_into path, for C libraries without recvmmsg."""
        b, snap, c = self._buffers, self._snap, self._counters
        data = memoryview(b.data)
        n = 0
        while n < n_max:
            try:
                got, ancdata, flags, _ = self._sock.recvmsg_into([data[n * snap:(n + 1) * snap]], CONTROL_STRIDE,
                                                                 MSG_DONTWAIT)
            except BlockingIOError:
                break
            ts = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = struct.unpack_from("=qq", payload)
                    ts = sec * 1_000_000_000 + nsec
                elif level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(payload) >= 4:
                    c[C_DROPS] = max(c[C_DROPS], struct.unpack_from("=I", payload)[0])
            if flags & MSG_TRUNC:
                c[C_TRUNCATED] += 1
            if ts < 0:
                c[C_NO_TS] += 1
                ts = time.time_ns()
            b.offset[n], b.length[n], b.ts_recv[n] = n * snap, got, ts
            c[C_PACKETS] += 1
            c[C_BYTES] += got
            n += 1
        return n

    def fileno(self) -> int:
        return self._fd

    def stats(self) -> dict:
        c = self._counters
        return {
            "packets": int(c[C_PACKETS]),
            "bytes": int(c[C_BYTES]),
            "kernel_drops": int(c[C_DROPS]),
            "truncated": int(c[C_TRUNCATED]),
            "no_kernel_ts": int(c[C_NO_TS]),
            "reads": self._reads,
            "mode": "recvmmsg" if self._batched else "recvmsg_into",
            "rcvbuf_requested": self._rcvbuf_requested,
            "rcvbuf_granted": self._rcvbuf_granted,
            "rcvbuf_clamped": self._rcvbuf_granted < self._rcvbuf_requested,
            "rcvbuf_forced": self._rcvbuf_forced,
        }

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SocketSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        src = f" from {self.source}" if self.source else ""
        return f"SocketSource({self.group}:{self.port}{src} on {self.iface or 'default'})"
