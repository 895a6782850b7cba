"""A single-producer single-consumer packet ring in a file under /dev/shm: the kernel-bypass hook.

An external process (DPDK, ef_vi, or ``ShmWriter`` in tests and the sender) receives packets and
writes their UDP payloads into fixed-size slots; ``ShmSource`` hands them to the handler as
``PacketBatch`` views of the mapped slots, without copying payloads. docs/shm-ring.md is the layout
a C writer follows; the constants below are that layout.

Rules this module keeps:

- The producer owns ``write_index`` and the counters on its cache line, the consumer owns
  ``read_index`` on another: each side writes only its own line, so neither takes the other's line
  away on every packet. Indexes count slots for ever (u64, never wrap); slot = index & (count - 1).
- Publication order: the producer fills a slot, then (release) stores ``write_index``; the consumer
  loads ``write_index`` (acquire), reads the slots, then (release) stores ``read_index``. The fences
  are real LLVM fences in the numba kernels, so this holds on weakly ordered CPUs too.
- The producer never waits: a packet that finds the ring full is dropped and counted in ``overruns``
  (newest dropped, so what the consumer gets stays in order with a visible gap).
- The consumer returns the slots of one ``read()`` at the start of the next (the batch's views point
  into them), so a batch stays valid until the next read, as every source promises.
- A new ring is built under a temporary name and renamed into place, so a consumer never maps a
  half-made file nor one a new writer is truncating.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import time

import numba as nb
import numpy as np

from feedhandler.sources.base import READ_TIMEOUT_S, PacketBatch, SourceError, empty_batch
from parsers.fences import acquire_fence, release_fence

RING_MAGIC = int.from_bytes(b"FHSHMRNG", "little")  # bytes "FHSHMRNG" at offset 0
RING_VERSION = 1
HEADER_SIZE = 4096  # one page: slots start page-aligned
SLOT_HEADER_SIZE = 32  # slot: length, group, ts_recv, port, flags, reserved; payload from byte 32
SLOT_ALIGN = 64
DEFAULT_SLOT_COUNT = 65536
DEFAULT_SLOT_SIZE = 2048

# Header byte offsets (docs/shm-ring.md). Line 0 is written once at creation; the producer's line and
# the consumer's line sit 128 bytes apart (adjacent-line prefetch pairs 64-byte lines).
OFF_MAGIC = 0  # u64
OFF_VERSION = 8  # u32
OFF_HEADER_SIZE = 12  # u32
OFF_SLOT_SIZE = 16  # u32
OFF_SLOT_COUNT = 20  # u32, a power of two
OFF_SLOT_HEADER_SIZE = 24  # u32
OFF_CREATED_NS = 32  # i64
OFF_WRITER_PID = 40  # u32
OFF_WRITE_INDEX = 128  # u64, producer: slots published
OFF_OVERRUNS = 136  # u64, producer: packets dropped because the ring was full
OFF_UPSTREAM_DROPS = 144  # u64, producer: packets its own receive path lost (e.g. DPDK imissed)
OFF_WRITER_STATE = 152  # u64, producer: 1 = writing, 2 = closed (no more packets)
OFF_READ_INDEX = 256  # u64, consumer: slots released
OFF_READER_PID = 264  # u32, consumer (informational)

# Slot byte offsets.
SLOT_OFF_LENGTH = 0  # u32 payload bytes stored
SLOT_OFF_GROUP = 4  # u32 destination IPv4 as an integer (239.1.1.1 = 0xEF010101), little-endian
SLOT_OFF_TS_RECV = 8  # i64 ns since the epoch, UTC
SLOT_OFF_PORT = 16  # u16 destination UDP port
SLOT_OFF_FLAGS = 18  # u16 SLOT_FLAG_*
SLOT_FLAG_TRUNCATED = 1  # the packet was longer than the slot; ``length`` bytes were kept

WRITER_OPEN = 1
WRITER_CLOSED = 2

# u64 word indexes into the header.
_W_WRITE, _W_OVERRUNS, _W_UPSTREAM, _W_STATE, _W_READ = (o // 8 for o in (
    OFF_WRITE_INDEX, OFF_OVERRUNS, OFF_UPSTREAM_DROPS, OFF_WRITER_STATE, OFF_READ_INDEX))

# Consumer counters.
C_PACKETS, C_BYTES, C_TRUNCATED = range(3)

SPIN_S = 0.0002  # read() polls flat out this long before it starts sleeping between polls
SLEEP_S = 0.00005


@nb.njit(cache=True, nogil=True)
def _ring_write(hdr, slots, slot_size, count, data, offset, length, ts_recv, group, port, start, stop_when_full):
    """Copy packets from ``start`` on into free slots and publish them.

    Args:
        hdr: the header as uint64 words.
        slots: the slot region as uint8.
        slot_size, count: slot geometry (count a power of two).
        data, offset, length, ts_recv, group, port: the packets (PacketBatch columns).
        start: first packet to write.
        stop_when_full: stop at the first packet that finds the ring full (the caller waits and
            calls again from there); otherwise drop each such packet and count it in ``overruns``.

    Returns:
        packets written.
    """
    w = hdr[_W_WRITE]
    r = hdr[_W_READ]
    acquire_fence()  # slots the consumer released are done being read
    mask = np.uint64(count - 1)
    room = slot_size - SLOT_HEADER_SIZE
    s32 = slots.view(np.uint32)
    s64 = slots.view(np.int64)
    s16 = slots.view(np.uint16)
    written = 0
    for i in range(start, offset.shape[0]):
        if w - r >= np.uint64(count):
            r = hdr[_W_READ]
            acquire_fence()
            if w - r >= np.uint64(count):
                if stop_when_full:
                    break
                hdr[_W_OVERRUNS] += np.uint64(1)
                continue
        base = np.int64(w & mask) * slot_size
        n = np.int64(length[i])
        flags = 0
        if n > room:
            n = room
            flags = SLOT_FLAG_TRUNCATED
        src = np.int64(offset[i])
        dst = base + SLOT_HEADER_SIZE
        slots[dst:dst + n] = data[src:src + n]
        s32[(base + SLOT_OFF_LENGTH) // 4] = np.uint32(n)
        s32[(base + SLOT_OFF_GROUP) // 4] = np.uint32(group[i])
        s64[(base + SLOT_OFF_TS_RECV) // 8] = np.int64(ts_recv[i])
        s16[(base + SLOT_OFF_PORT) // 2] = np.uint16(port[i])
        s16[(base + SLOT_OFF_FLAGS) // 2] = np.uint16(flags)
        w += np.uint64(1)
        written += 1
    release_fence()  # slot contents before the index that publishes them
    hdr[_W_WRITE] = w
    return written


@nb.njit(cache=True, nogil=True)
def _ring_read(hdr, slots, slot_size, count, release_to, max_packets, offset, length, ts_recv, group,
               port, counters):
    """Release the previous batch's slots, then take up to ``max_packets`` published ones.

    Args:
        hdr, slots, slot_size, count: as in ``_ring_write``.
        release_to: read index to store (the end of the previous batch).
        max_packets: most rows to fill.
        offset, length, ts_recv, group, port: output rows (offset points into ``slots``).
        counters: int64 [C_*] accumulated.

    Returns:
        rows filled; the caller releases ``release_to + rows`` on its next call.
    """
    release_fence()  # the previous batch was read before its slots go back
    hdr[_W_READ] = release_to
    w = hdr[_W_WRITE]
    acquire_fence()  # slot contents after the index that published them
    r = release_to
    n = min(np.int64(w - r), np.int64(max_packets))
    if n < 0:  # a write index behind ours: a broken writer; take nothing rather than garbage
        n = 0
    mask = np.uint64(count - 1)
    s32 = slots.view(np.uint32)
    s64 = slots.view(np.int64)
    s16 = slots.view(np.uint16)
    room = slot_size - SLOT_HEADER_SIZE
    for k in range(n):
        base = np.int64((r + np.uint64(k)) & mask) * slot_size
        got = np.int64(s32[(base + SLOT_OFF_LENGTH) // 4])
        if got > room:  # a writer bug must not send the consumer past its slot
            got = room
        offset[k] = base + SLOT_HEADER_SIZE
        length[k] = got
        group[k] = s32[(base + SLOT_OFF_GROUP) // 4]
        ts_recv[k] = s64[(base + SLOT_OFF_TS_RECV) // 8]
        port[k] = s16[(base + SLOT_OFF_PORT) // 2]
        if s16[(base + SLOT_OFF_FLAGS) // 2] & SLOT_FLAG_TRUNCATED:
            counters[C_TRUNCATED] += 1
        counters[C_BYTES] += got
    counters[C_PACKETS] += n
    return n


def ring_file_size(slot_count: int, slot_size: int) -> int:
    return HEADER_SIZE + slot_count * slot_size


def _check_geometry(slot_count: int, slot_size: int) -> None:
    if slot_count < 2 or slot_count & (slot_count - 1) or slot_count > 1 << 24:
        raise SourceError(f"ring slot count must be a power of two from 2 to 2**24, got {slot_count}")
    if slot_size < SLOT_ALIGN or slot_size % SLOT_ALIGN or slot_size > 1 << 20:
        raise SourceError(f"ring slot size must be a multiple of {SLOT_ALIGN} from 64 to 1 MiB, got {slot_size}")


class _Mapping:
    """The mapped ring file and numpy views of its header and slots."""

    def __init__(self, fd: int, size: int) -> None:
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        whole = np.frombuffer(self.mm, dtype=np.uint8)
        self.hdr = whole[:HEADER_SIZE].view(np.uint64)
        self.hdr32 = whole[:HEADER_SIZE].view(np.uint32)
        self.slots = whole[HEADER_SIZE:]

    def close(self) -> None:
        self.hdr = self.hdr32 = self.slots = None
        try:
            self.mm.close()
        except BufferError:  # a caller still holds a batch view; the mapping goes when that does
            pass


class ShmWriter:
    """Creates a ring at ``path`` (replacing any old one) and writes packets into it.

    Args:
        path: file to create, normally under /dev/shm.
        slot_count: slots in the ring (power of two).
        slot_size: bytes per slot, a multiple of 64 (payloads up to ``slot_size - 32`` bytes).
    """

    def __init__(self, path: str | os.PathLike, slot_count: int = DEFAULT_SLOT_COUNT,
                 slot_size: int = DEFAULT_SLOT_SIZE) -> None:
        _check_geometry(int(slot_count), int(slot_size))
        self.path = os.fspath(path)
        self.slot_count, self.slot_size = int(slot_count), int(slot_size)
        size = ring_file_size(self.slot_count, self.slot_size)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o660)
        except OSError as exc:
            raise SourceError(f"cannot create ring file {tmp}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, size)
            self._map = _Mapping(fd, size)
            h32 = self._map.hdr32
            h32[OFF_VERSION // 4] = RING_VERSION
            h32[OFF_HEADER_SIZE // 4] = HEADER_SIZE
            h32[OFF_SLOT_SIZE // 4] = self.slot_size
            h32[OFF_SLOT_COUNT // 4] = self.slot_count
            h32[OFF_SLOT_HEADER_SIZE // 4] = SLOT_HEADER_SIZE
            self._map.hdr[OFF_CREATED_NS // 8] = time.time_ns()
            h32[OFF_WRITER_PID // 4] = os.getpid()
            self._map.hdr[_W_STATE] = WRITER_OPEN
            self._map.hdr[OFF_MAGIC // 8] = RING_MAGIC  # last: the ring is complete
            os.rename(tmp, self.path)
        except OSError as exc:
            if getattr(self, "_map", None) is not None:
                self._map.close()
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise SourceError(f"cannot set up ring file {self.path}: {exc.strerror}") from None
        os.close(fd)
        self._one = _OnePacket()

    def write_batch(self, batch: PacketBatch, wait: float = 0.0) -> int:
        """Write a batch's packets; returns how many went in.

        ``wait`` = 0 behaves as a bypass receiver must: never wait, drop what finds the ring full and
        count it in ``overruns``. ``wait`` > 0 (a replay that must lose nothing) waits up to that many
        seconds in all for the reader to free slots, and counts nothing.
        """
        if self._map.hdr is None:
            raise SourceError(f"ring writer {self.path} is closed")
        args = (self._map.hdr, self._map.slots, self.slot_size, self.slot_count, batch.data, batch.offset,
                batch.length, batch.ts_recv, batch.group, batch.port)
        if wait <= 0:
            return _ring_write(*args, 0, False)
        done, n, deadline = 0, len(batch), time.monotonic() + wait
        while True:
            done += _ring_write(*args, done, True)
            if done >= n or time.monotonic() >= deadline:
                return done
            time.sleep(SLEEP_S)

    def write(self, payload: bytes, ts_recv: int | None = None, group: int = 0, port: int = 0) -> bool:
        """Write one packet (a convenience for tests and tools); False if the ring was full."""
        return self.write_batch(self._one.set(payload, time.time_ns() if ts_recv is None else ts_recv,
                                              group, port)) == 1

    def add_upstream_drops(self, n: int) -> None:
        """Report packets lost before this writer saw them (e.g. the NIC's missed count)."""
        self._map.hdr[_W_UPSTREAM] += np.uint64(n)

    def stats(self) -> dict:
        hdr = self._map.hdr
        return {"written": int(hdr[_W_WRITE]), "released": int(hdr[_W_READ]), "overruns": int(hdr[_W_OVERRUNS]),
                "upstream_drops": int(hdr[_W_UPSTREAM])}

    def close(self, unlink: bool = False) -> None:
        """Mark the ring closed (the consumer sees no more packets will come); ``unlink`` removes it,
        also when the ring was closed before (a writer closed at its end, unlinked in a ``finally``)."""
        if self._map.hdr is not None:
            self._map.hdr[_W_STATE] = WRITER_CLOSED
            self._map.close()
        if unlink:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def __enter__(self) -> ShmWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _OnePacket:
    """A reusable one-row batch for ``ShmWriter.write``."""

    def __init__(self) -> None:
        self.offset = np.zeros(1, np.int64)
        self.length = np.zeros(1, np.int32)
        self.ts_recv = np.zeros(1, np.int64)
        self.group = np.zeros(1, np.uint32)
        self.port = np.zeros(1, np.uint16)

    def set(self, payload: bytes, ts_recv: int, group: int, port: int) -> PacketBatch:
        self.length[0], self.ts_recv[0], self.group[0], self.port[0] = len(payload), ts_recv, group, port
        return PacketBatch(np.frombuffer(payload, np.uint8), self.offset, self.length, self.ts_recv,
                           self.group, self.port)


class ShmSource:
    """Reads the ring at ``path`` as a PacketSource (the writer must have created it).

    Args:
        path: the ring file.
        max_packets: most packets one read() returns.
    """

    def __init__(self, path: str | os.PathLike, max_packets: int = 1024) -> None:
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            raise SourceError(f"no shared-memory ring at {self.path} (start its writer first)") from None
        except OSError as exc:
            raise SourceError(f"cannot open ring {self.path}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise SourceError(f"{self.path} is not a packet ring ({size} bytes, shorter than its header)")
            self._map = _Mapping(fd, size)
            self._validate(size)
        except BaseException:
            os.close(fd)
            if getattr(self, "_map", None) is not None:
                self._map.close()
            raise
        self._fd = fd
        self._map.hdr32[OFF_READER_PID // 4] = os.getpid()
        self._pending_end = self._map.hdr[_W_READ]  # resume where the last consumer stopped
        self.max_packets = int(max_packets)
        self._offset = np.zeros(self.max_packets, np.int64)
        self._length = np.zeros(self.max_packets, np.int32)
        self._ts_recv = np.zeros(self.max_packets, np.int64)
        self._group = np.zeros(self.max_packets, np.uint32)
        self._port = np.zeros(self.max_packets, np.uint16)
        self._counters = np.zeros(3, np.int64)

    def _validate(self, size: int) -> None:
        hdr, h32 = self._map.hdr, self._map.hdr32
        if int(hdr[OFF_MAGIC // 8]) != RING_MAGIC:
            raise SourceError(f"{self.path} is not a packet ring, or its writer has not finished setting it up "
                              f"(magic {int(hdr[0]):#018x})")
        version = int(h32[OFF_VERSION // 4])
        if version != RING_VERSION:
            raise SourceError(f"ring {self.path} has layout version {version}; this reader knows {RING_VERSION}")
        if int(h32[OFF_HEADER_SIZE // 4]) != HEADER_SIZE or int(h32[OFF_SLOT_HEADER_SIZE // 4]) != SLOT_HEADER_SIZE:
            raise SourceError(f"ring {self.path} has header/slot header sizes {int(h32[OFF_HEADER_SIZE // 4])}/"
                              f"{int(h32[OFF_SLOT_HEADER_SIZE // 4])}, expected {HEADER_SIZE}/{SLOT_HEADER_SIZE}")
        self.slot_size = int(h32[OFF_SLOT_SIZE // 4])
        self.slot_count = int(h32[OFF_SLOT_COUNT // 4])
        _check_geometry(self.slot_count, self.slot_size)
        if size != ring_file_size(self.slot_count, self.slot_size):
            raise SourceError(f"ring {self.path} is {size} bytes; its header says "
                              f"{ring_file_size(self.slot_count, self.slot_size)}")

    def _take(self, n_max: int) -> int:
        n = _ring_read(self._map.hdr, self._map.slots, self.slot_size, self.slot_count, self._pending_end, n_max,
                       self._offset, self._length, self._ts_recv, self._group, self._port, self._counters)
        self._pending_end += np.uint64(n)
        return n

    def read(self, max_packets: int = 1024, timeout: float | None = READ_TIMEOUT_S) -> PacketBatch:
        """Up to ``max_packets`` packets (views into the ring, valid until the next read).

        With nothing waiting it polls the write index, flat out for ``SPIN_S`` and then with short
        sleeps, until ``timeout`` (a ring has no descriptor that wakes a poll).
        """
        if self._map.hdr is None:
            raise SourceError(f"ring source {self.path} is closed")
        n_max = min(int(max_packets), self.max_packets)
        n = self._take(n_max)
        if n == 0 and timeout != 0:
            hdr, start = self._map.hdr, time.monotonic()
            while hdr[_W_WRITE] == self._pending_end:
                waited = time.monotonic() - start
                if (timeout is not None and waited >= timeout) or hdr[_W_STATE] == WRITER_CLOSED:
                    break
                if waited > SPIN_S:
                    time.sleep(SLEEP_S)
            n = self._take(n_max)
        if n == 0:
            return empty_batch()
        return PacketBatch(self._map.slots, self._offset[:n], self._length[:n], self._ts_recv[:n],
                           self._group[:n], self._port[:n])

    def fileno(self) -> int:
        """The ring file's descriptor. A regular file always polls readable: use read(timeout=...)."""
        return self._fd

    def stats(self) -> dict:
        hdr, c = self._map.hdr, self._counters
        overruns = int(hdr[_W_OVERRUNS]) if hdr is not None else 0
        upstream = int(hdr[_W_UPSTREAM]) if hdr is not None else 0
        return {
            "packets": int(c[C_PACKETS]),
            "bytes": int(c[C_BYTES]),
            "kernel_drops": overruns + upstream,  # lost before this source saw them
            "overruns": overruns,
            "upstream_drops": upstream,
            "truncated": int(c[C_TRUNCATED]),
            "backlog": int(hdr[_W_WRITE] - self._pending_end) if hdr is not None else 0,
            "writer_closed": hdr is not None and int(hdr[_W_STATE]) == WRITER_CLOSED,
        }

    def close(self) -> None:
        """Release every slot read so far and unmap."""
        if self._map.hdr is not None:
            self._map.hdr[_W_READ] = self._pending_end
            self._map.close()
            os.close(self._fd)

    def __enter__(self) -> ShmSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
