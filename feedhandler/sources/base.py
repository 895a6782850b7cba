"""What every live packet source hands the session layer: a batch of UDP payloads as numpy arrays.

Rules the sources keep:

- ``read()`` returns one ``PacketBatch`` whose arrays are VIEWS into buffers the source preallocated
  once; they stay valid until the next ``read()`` (copy what must live longer). No Python object is
  made per packet.
- ``ts_recv`` is the kernel's receive timestamp (int64 ns since the epoch, UTC), or the timestamp the
  external writer put in the ring for the shared-memory source; never a user-space clock read after the
  fact unless the kernel gave none (the source counts those in ``stats()["no_kernel_ts"]``).
- ``group`` is the destination IPv4 address as a host-order integer (239.1.1.1 -> 0xEF010101) and
  ``port`` the destination UDP port, so one source may carry several groups.
- Failures to set a source up raise ``SourceError`` with a one-line reason the CLI prints as is.
"""
from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

READ_TIMEOUT_S = 0.1  # default wait of read(): short, so a live loop can notice signals and silent lines
MAX_UDP_PAYLOAD = 65507  # an IPv4 UDP datagram's largest payload
DEFAULT_SNAP = 2048  # bytes kept per packet by sources with fixed slots (a feed packet fits in an MTU)


class SourceError(Exception):
    """A packet source could not be set up or used; ``str(err)`` is one line saying why."""


@dataclass
class PacketBatch:
    """A batch of received UDP payloads (all arrays have one row per packet except ``data``).

    Attributes:
        data: uint8, the payloads back to back (may hold gaps between them: always use ``offset``).
        offset: int64[n], first byte of packet i in ``data``.
        length: int32[n], payload length of packet i in bytes (after truncation to the source's snap
            length, if any: sources count truncated packets in ``stats()["truncated"]``).
        ts_recv: int64[n], receive time, ns since the epoch UTC.
        group: uint32[n], destination IPv4 address as a host-order integer.
        port: uint16[n], destination UDP port.
    """

    data: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    ts_recv: np.ndarray
    group: np.ndarray
    port: np.ndarray

    def __len__(self) -> int:
        return len(self.offset)

    def payload(self, i: int) -> bytes:
        """Packet ``i``'s payload as bytes (a copy; for tests and tools, not the hot path)."""
        start = int(self.offset[i])
        return self.data[start:start + int(self.length[i])].tobytes()

    def payloads(self) -> list[bytes]:
        """All payloads as bytes (copies; for tests and tools, not the hot path)."""
        return [self.payload(i) for i in range(len(self))]

    def copy(self) -> PacketBatch:
        """A batch that owns its arrays (survives the source's next read)."""
        return PacketBatch(self.data.copy(), self.offset.copy(), self.length.copy(), self.ts_recv.copy(),
                           self.group.copy(), self.port.copy())


class BatchBuffers:
    """The preallocated arrays behind a source's batches; ``batch(n, used)`` hands out views of them.

    Args:
        max_packets: rows of the per-packet arrays.
        data_bytes: size of the payload buffer.
    """

    def __init__(self, max_packets: int, data_bytes: int) -> None:
        self.data = np.zeros(data_bytes, dtype=np.uint8)
        self.offset = np.zeros(max_packets, dtype=np.int64)
        self.length = np.zeros(max_packets, dtype=np.int32)
        self.ts_recv = np.zeros(max_packets, dtype=np.int64)
        self.group = np.zeros(max_packets, dtype=np.uint32)
        self.port = np.zeros(max_packets, dtype=np.uint16)
        self._made: dict[tuple, PacketBatch] = {}

    @property
    def max_packets(self) -> int:
        return len(self.offset)

    def batch(self, n: int, used_bytes: int | None = None) -> PacketBatch:
        """Views of the first ``n`` rows (and of ``used_bytes`` of ``data``, all of it when None).

        The views of one (n, used_bytes) are made once and handed out again (a live source reads the
        same few shapes over and over): they are only valid until the next read anyway."""
        key = (n, used_bytes)
        made = self._made.get(key)
        if made is None:
            data = self.data if used_bytes is None else self.data[:used_bytes]
            made = PacketBatch(data, self.offset[:n], self.length[:n], self.ts_recv[:n], self.group[:n],
                               self.port[:n])
            if len(self._made) < MADE_BATCHES:
                self._made[key] = made
        return made


MADE_BATCHES = 4096  # batch views kept per BatchBuffers


def empty_batch() -> PacketBatch:
    """A batch of no packets (what ``read()`` returns on timeout): one shared instance of zero-length arrays."""
    return _EMPTY


@runtime_checkable
class PacketSource(Protocol):
    """A live source of UDP payloads (socket, AF_PACKET, AF_XDP, shared-memory ring).

    ``read(max_packets, timeout)`` waits at most ``timeout`` seconds for the first packet (None: wait
    for ever, 0: do not wait), then returns every packet already available up to ``max_packets``, as a
    ``PacketBatch`` of views valid until the next call; an empty batch means the wait timed out.
    ``fileno()`` is a descriptor that polls readable when packets wait (for event loops).
    ``stats()`` returns cumulative counters: at least ``packets``, ``bytes`` and ``kernel_drops``
    (packets lost before the source saw them), plus source-specific ones.
    ``close()`` releases the socket, ring or mapping; it may be called twice.
    """

    def read(self, max_packets: int = 1024, timeout: float | None = READ_TIMEOUT_S) -> PacketBatch: ...

    def fileno(self) -> int: ...

    def stats(self) -> dict: ...

    def close(self) -> None: ...


def wait_readable(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` polled readable within ``timeout`` seconds (None: wait for ever)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000.0 + 0.999))
    return bool(poller.poll(ms))


def ipv4_to_int(address: str) -> int:
    """'239.1.1.1' -> 0xEF010101 (host-order integer, as ``PacketBatch.group`` holds it)."""
    try:
        return struct.unpack("!I", socket.inet_pton(socket.AF_INET, address))[0]
    except OSError:
        raise SourceError(f"not an IPv4 address: {address!r}") from None


def int_to_ipv4(value: int) -> str:
    """0xEF010101 -> '239.1.1.1'."""
    return socket.inet_ntoa(struct.pack("!I", int(value)))


def parse_group_port(text: str) -> tuple[str, int]:
    """'239.1.1.1:26400' -> ('239.1.1.1', 26400), or SourceError with a one-line reason."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SourceError(f"expected GROUP:PORT (e.g. 239.1.1.1:26400), got {text!r}")
    ipv4_to_int(host)
    return host, int(port)


_EMPTY = BatchBuffers(0, 0).batch(0)
