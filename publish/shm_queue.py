"""A single-producer single-consumer ring of variable-length records in shared memory, with a wake-up fd.

The feed process writes records (a ``MarketBatch``'s arrays, see ``publish.batch_wire``); one sink
process reads them. ``ShmQueue.create`` makes an anonymous memory file (memfd) and an eventfd; a
child process gets both through ``ShmQueue.handles()`` (picklable: multiprocessing passes the fds)
and ``ShmQueue.attach``. Nothing is left in /dev/shm when the processes end, however they end.

Rules this module keeps:
- The producer owns ``write_pos``, the consumer ``read_pos`` and ``sleeping``, each on a cache line
  of its own. Positions count bytes for ever (u64); a record starts at ``pos % capacity``, 8-aligned.
- Publication order: the producer copies a record, then (release) stores ``write_pos``; the consumer
  loads ``write_pos`` (acquire), reads, then (release) stores ``read_pos``. The fences are LLVM
  fences in numba helpers, so this holds on weakly ordered CPUs too.
- A record never wraps: one that would not fit before the end is preceded by a ``KIND_WRAP`` filler
  to the end. A record may take at most ``max_record`` bytes (a quarter of the ring): callers split
  bigger payloads.
- The producer never waits: ``write`` returns False when the ring is full and the caller decides.
- Waking: before blocking, the consumer sets ``sleeping`` and looks once more (a full fence between
  the store and the load); the producer stores ``write_pos``, fences, and writes the eventfd only if
  ``sleeping`` is set. One of the two always sees the other, so a record never waits for a timeout,
  and a busy consumer costs the producer no system call.
- A small status blob (JSON bytes, written by the consumer under a sequence lock) carries the
  consumer's counters and settings back to the producer's process.
"""
from __future__ import annotations

import mmap
import os
import select
import time

import numba as nb
import numpy as np

from multiprocessing import reduction
from parsers.fences import acquire_fence, full_fence, release_fence

QUEUE_MAGIC = int.from_bytes(b"FHSINKQ1", "little")
HEADER_SIZE = 8192
RECORD_HEADER = 8  # u32 size (whole record, multiple of 8), u32 kind
KIND_WRAP = 1  # filler to the end of the data area
MIN_CAPACITY = 1 << 16

# u64 word indexes of the header. Line 0: set once. Producer line (128), consumer line (256),
# consumer counters (512..1023, ``COUNTERS`` words), status blob (1024..): u64 seqlock, u64 length, bytes.
_W_MAGIC, _W_CAPACITY = 0, 1
_W_WRITE, _W_RECORDS, _W_STOP = 16, 17, 18
_W_READ, _W_SLEEPING, _W_TAKEN, _W_CONSUMER_PID = 32, 33, 34, 35
COUNTER_BASE, COUNTERS = 64, 64
_W_BLOB_SEQ, _W_BLOB_LEN = 128, 129
BLOB_OFFSET = 130 * 8
BLOB_MAX = HEADER_SIZE - BLOB_OFFSET


@nb.njit(cache=True, nogil=True)
def _load_acquire(hdr, word):
    """hdr[word], then an acquire fence (what the other side wrote before storing it is visible)."""
    value = hdr[word]
    acquire_fence()
    return value


@nb.njit(cache=True, nogil=True)
def _store_release(hdr, word, value):
    """A release fence (everything written so far), then hdr[word] = value."""
    release_fence()
    hdr[word] = value


@nb.njit(cache=True, nogil=True)
def _publish(hdr, write_pos, records):
    """Producer: publish up to ``write_pos``; returns True when the consumer must be woken."""
    release_fence()
    hdr[_W_RECORDS] = records
    hdr[_W_WRITE] = write_pos
    full_fence()  # the store above before the load below (Dekker with ``_prepare_sleep``)
    return hdr[_W_SLEEPING] != 0


@nb.njit(cache=True, nogil=True)
def _write_record(hdr, data, w, records, kind, parts, max_record):
    """Producer: copy ``parts`` (a tuple of uint8 arrays, each padded to 8) as one record at ``w``.

    Returns (new write position, or -1 when the ring has no room, -2 when the record is bigger than
    ``max_record``: nothing written either way; wake the consumer).
    """
    cap = data.shape[0]
    size = RECORD_HEADER
    for part in parts:
        size += (part.shape[0] + 7) & ~7
    if size > max_record:
        return -2, False
    off = w % cap
    filler = cap - off if off + size > cap else 0
    r = hdr[_W_READ]
    acquire_fence()  # what the consumer released is done being read
    if cap - (w - r) < filler + size:
        return -1, False
    if filler:
        head = data[off:off + 8].view(np.uint32)
        head[0] = filler
        head[1] = KIND_WRAP
        w += filler
        off = 0
    head = data[off:off + 8].view(np.uint32)
    head[0] = size
    head[1] = kind
    pos = off + RECORD_HEADER
    for part in parts:
        n = part.shape[0]
        data[pos:pos + n] = part
        pos += (n + 7) & ~7
    w += size
    release_fence()  # the record before the position that publishes it
    hdr[_W_RECORDS] = records
    hdr[_W_WRITE] = w
    full_fence()  # the store above before the load below (Dekker with ``_prepare_sleep``)
    return w, hdr[_W_SLEEPING] != 0


@nb.njit(cache=True, nogil=True)
def _prepare_sleep(hdr, read_pos):
    """Consumer: announce it is about to block; returns True if records arrived meanwhile (do not block)."""
    hdr[_W_SLEEPING] = 1
    full_fence()
    if hdr[_W_WRITE] != read_pos:
        hdr[_W_SLEEPING] = 0
        return True
    return False


class _PassFd:
    """An fd that a spawned child receives as its own duplicate (as multiprocessing passes a Connection)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        return (_rebuild_fd, (reduction.DupFd(self.fd),))


def _rebuild_fd(dup) -> int:
    return dup.detach()


class QueueFull(Exception):
    """A record larger than ``max_record``: the caller must split it."""


class ShmQueue:
    """One side of the ring (``create`` in the producer, ``attach`` in the consumer); see the module rules.

    Args (``create``):
        capacity: data bytes, a multiple of 4096 from 64 KiB; the ring holds up to this much unread.
    """

    def __init__(self, mem_fd: int, wake_fd: int, producer: bool) -> None:
        self.mem_fd = mem_fd
        self.wake_fd = wake_fd
        self.producer = producer
        size = os.fstat(mem_fd).st_size
        self._mm = mmap.mmap(mem_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        whole = np.frombuffer(self._mm, dtype=np.uint8)
        self.hdr = whole[:HEADER_SIZE].view(np.uint64)
        if int(self.hdr[_W_MAGIC]) != QUEUE_MAGIC:
            raise ValueError("not a sink queue (bad magic)")
        self.capacity = int(self.hdr[_W_CAPACITY])
        self.data = whole[HEADER_SIZE:HEADER_SIZE + self.capacity]
        self.max_record = self.capacity // 4
        self._w = int(self.hdr[_W_WRITE])
        self._records = int(self.hdr[_W_RECORDS])
        self._r = int(self.hdr[_W_READ])
        self._pending_r = self._r
        self._pending_n = 0
        self.wakes = 0  # producer: eventfd writes

    # -- making and passing -------------------------------------------------------------------------

    @classmethod
    def create(cls, capacity: int = 64 << 20) -> ShmQueue:
        if capacity < MIN_CAPACITY or capacity % 4096:
            raise ValueError(f"queue capacity must be a multiple of 4096 from {MIN_CAPACITY}, got {capacity}")
        mem_fd = os.memfd_create("feedhandler-sink-queue", os.MFD_CLOEXEC)
        os.ftruncate(mem_fd, HEADER_SIZE + capacity)
        hdr = np.frombuffer(mmap.mmap(mem_fd, HEADER_SIZE, mmap.MAP_SHARED), dtype=np.uint64)
        hdr[_W_CAPACITY] = capacity
        hdr[_W_MAGIC] = QUEUE_MAGIC
        del hdr
        wake_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        queue = cls(mem_fd, wake_fd, producer=True)
        queue.data[:] = 0  # every page faulted in now, not on the feed's first pass through the ring
        return queue

    def handles(self) -> tuple[_PassFd, _PassFd]:
        """What a spawned child passes to ``attach`` (pickled as duplicated fds)."""
        return _PassFd(self.mem_fd), _PassFd(self.wake_fd)

    @classmethod
    def attach(cls, mem_fd: int, wake_fd: int) -> ShmQueue:
        """The consumer side, from the fds ``handles()`` gave the child."""
        queue = cls(mem_fd, wake_fd, producer=False)
        queue.hdr[_W_CONSUMER_PID] = os.getpid()
        return queue

    def close(self) -> None:
        self.hdr = self.data = None
        try:
            self._mm.close()
        except BufferError:  # a caller still holds a view; the mapping goes with it
            pass
        for fd in (self.mem_fd, self.wake_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- producer -----------------------------------------------------------------------------------

    def write(self, parts: tuple, kind: int) -> bool:
        """Copy ``parts`` (a tuple of uint8 arrays, each padded to 8 bytes) as one record of ``kind``.

        Returns False, writing nothing, when the ring has no room now. Raises QueueFull if the record
        could never fit (``max_record``).
        """
        w, wake = _write_record(self.hdr, self.data, np.uint64(self._w), np.uint64(self._records + 1), kind, parts,
                                self.max_record)
        if w < 0:
            if w == -2:
                raise QueueFull(f"record exceeds {self.max_record} bytes")
            return False
        self._w = int(w)
        self._records += 1
        if wake:
            self.wake()
        return True

    def wake(self) -> None:
        """Write the eventfd (a full eventfd, ~2^64 wakes unread, cannot happen; EAGAIN is ignored)."""
        self.wakes += 1
        try:
            os.eventfd_write(self.wake_fd, 1)
        except BlockingIOError:
            pass

    def unread_bytes(self) -> int:
        return self._w - int(self.hdr[_W_READ])

    def records_unread(self) -> int:
        """Records written and not yet taken by the consumer."""
        return self._records - int(self.hdr[_W_TAKEN])

    def request_stop(self, deadline_ns: int) -> None:
        """Tell the consumer to drain and end by ``deadline_ns`` (CLOCK_MONOTONIC, shared by processes)."""
        _store_release(self.hdr, _W_STOP, np.uint64(max(1, deadline_ns)))
        self.wake()

    # -- consumer -----------------------------------------------------------------------------------

    def stop_deadline_ns(self) -> int:
        """0 while running; else the monotonic ns by which to have drained."""
        return int(self.hdr[_W_STOP])

    def take(self, max_records: int = 1 << 30) -> list[tuple[int, np.ndarray]]:
        """Up to ``max_records`` published records as ``(kind, body view)``; ``release()`` them when done."""
        w = int(_load_acquire(self.hdr, _W_WRITE))
        cap, r, data = self.capacity, self._r, self.data
        out = []
        while r < w and len(out) < max_records:
            off = r % cap
            size, kind = (int(x) for x in data[off:off + 8].view(np.uint32))
            if size < RECORD_HEADER or size % 8 or off + size > cap or r + size > w:
                raise ValueError(f"corrupt sink queue record at {r} (size {size})")
            if kind != KIND_WRAP:
                out.append((kind, data[off + RECORD_HEADER:off + size]))
            r += size
        self._pending_r = r
        self._pending_n = len(out)
        return out

    def release(self) -> None:
        """Give back what the last ``take()`` returned (its views become invalid)."""
        self._r = self._pending_r
        self.hdr[_W_TAKEN] += np.uint64(self._pending_n)
        _store_release(self.hdr, _W_READ, np.uint64(self._r))
        self._pending_n = 0

    def wait(self, timeout_s: float) -> None:
        """Block until the producer writes something (or wakes us), at most ``timeout_s``."""
        if _prepare_sleep(self.hdr, np.uint64(self._r)):
            return
        try:
            select.select([self.wake_fd], [], [], timeout_s)
            try:
                os.eventfd_read(self.wake_fd)
            except BlockingIOError:
                pass
        finally:
            self.hdr[_W_SLEEPING] = 0

    def always_wake(self) -> None:
        """Consumer: have every record written wake the eventfd (a consumer that waits on it in an event
        loop never announces its sleeps)."""
        self.hdr[_W_SLEEPING] = 1

    def has_data(self) -> bool:
        return int(_load_acquire(self.hdr, _W_WRITE)) != self._r

    # -- counters and status (consumer writes, producer reads) --------------------------------------

    def counters(self) -> np.ndarray:
        """The consumer's u64 counter words (``COUNTERS`` of them), as a live view."""
        return self.hdr[COUNTER_BASE:COUNTER_BASE + COUNTERS]

    def put_status(self, blob: bytes) -> None:
        """Consumer: replace the status blob (at most ``BLOB_MAX`` bytes; longer is cut)."""
        blob = blob[:BLOB_MAX]
        hdr = self.hdr
        seq = int(hdr[_W_BLOB_SEQ])
        _store_release(hdr, _W_BLOB_SEQ, np.uint64(seq + 1))  # odd: being written
        raw = hdr.view(np.uint8)
        raw[BLOB_OFFSET:BLOB_OFFSET + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        hdr[_W_BLOB_LEN] = len(blob)
        _store_release(hdr, _W_BLOB_SEQ, np.uint64(seq + 2))

    def get_status(self) -> bytes:
        """Producer: the last complete status blob (b"" before the first)."""
        hdr = self.hdr
        raw = hdr.view(np.uint8)
        for _ in range(1000):
            seq = int(_load_acquire(hdr, _W_BLOB_SEQ))
            if seq & 1:
                time.sleep(0)
                continue
            n = min(int(hdr[_W_BLOB_LEN]), BLOB_MAX)
            blob = raw[BLOB_OFFSET:BLOB_OFFSET + n].tobytes()
            _load_acquire(hdr, _W_BLOB_LEN)  # the fence: the copy above before the second look below
            if int(hdr[_W_BLOB_SEQ]) == seq:
                return blob
        return b""
