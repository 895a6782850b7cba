"""Write-ahead log: append-only, checksummed, group-committed records; recovery by replay.

Rules this module keeps:
- A record is acknowledged only after ``commit()`` (or ``wait_durable(seq)``) has returned for it;
  what "durable" means is the writer's ``FsyncPolicy``. Nothing else in this module acknowledges.
- Sequence numbers start at 1 and increase by exactly 1 per record, across segments and restarts.
- Replay never skips: every intact record comes out in order; a torn tail (damage at the end of
  the last segment with no valid record after it) is reported and cut off when a writer reopens the
  log; any other damage raises ``WalCorruptionError`` naming the segment and byte offset.
- No thread is started and no clock is read unless a background flusher is asked for (its timing
  decides when a group commits, never what the log holds).

On disk (all integers little-endian). A directory of segment files named ``<first seq:020d>.wal``:

    segment header, 24 bytes:  magic b"FHWAL001" | first_seq u64 | crc u32 | reserved u32 (0)
                               (crc: CRC32 of the first 16 bytes)
    record, 16 + n bytes:      crc u32 | n u32 | seq u64 | payload (n bytes)
                               (crc: CRC32 of bytes 4 .. 16+n, i.e. length, seq and payload)

CRC32 is the IEEE polynomial of ``zlib.crc32`` (zlib's C code; not CRC32C, which the standard
library lacks). Covering the length and the sequence number means a damaged length or a record left
over from elsewhere fails the check instead of steering the reader.
"""
from __future__ import annotations

import enum
import fcntl
import hashlib
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

WAL_MAGIC = b"FHWAL001"
WAL_SEGMENT_SUFFIX = ".wal"
WAL_LOCK_NAME = "LOCK"
WAL_FIRST_SEQ = 1
WAL_MAX_PAYLOAD = (1 << 32) - 1
WAL_DEFAULT_SEGMENT_BYTES = 64 << 20

_SEG_HEADER = struct.Struct("<8sQII")  # magic, first_seq, crc, reserved
_REC_HEADER = struct.Struct("<IIQ")  # crc, length, seq
_LEN_SEQ = struct.Struct("<IQ")  # the checksummed part of a record header
SEG_HEADER_SIZE = _SEG_HEADER.size  # 24
REC_HEADER_SIZE = _REC_HEADER.size  # 16

# fdatasync flushes the data and the file size (all a reader needs); fsync where it is missing.
_fdatasync = getattr(os, "fdatasync", os.fsync)


class FsyncPolicy(enum.Enum):
    """When the writer forces records to stable storage.

    ALWAYS: every record is its own commit: ``append`` writes and fdatasyncs before it returns.
    BATCH:  one fdatasync per group commit (each ``commit()`` call, or each flusher round) covers
            every record appended before it.
    NEVER:  ``commit()`` hands the bytes to the OS (``write``) and does not fsync: acknowledged
            records survive the process being killed, not the machine losing power.
    """

    ALWAYS = "always"
    BATCH = "batch"
    NEVER = "never"


class WalError(Exception):
    """The log cannot be written (an I/O or fsync error poisons the writer) or opened."""


class WalCorruptionError(WalError):
    """Damage that is not a torn tail: intact records may follow it, so nothing is cut.

    Attributes:
        segment: path of the damaged segment file.
        offset: byte offset in that file of the first record (or header) that failed.
        expected_seq: the sequence number the reader was looking for there.
        reason: what failed (``checksum``, ``length``, ``sequence``, ``header``, ...).
    """

    def __init__(self, segment: Path, offset: int, expected_seq: int, reason: str) -> None:
        self.segment = Path(segment)
        self.offset = offset
        self.expected_seq = expected_seq
        self.reason = reason
        super().__init__(
            f"write-ahead log corrupt in {self.segment} at byte {offset} (expected seq {expected_seq}): "
            f"{reason}; intact records follow, so nothing was cut. Inspect or restore the segment."
        )


@dataclass(frozen=True)
class TornTail:
    """Damage at the very end of the log: a record the writer never finished (or a flipped bit
    in the last one). Everything from ``offset`` to the end of ``segment`` is ``nbytes`` long and
    holds no valid record; a writer cuts it off on reopen."""

    segment: Path
    offset: int
    nbytes: int
    expected_seq: int
    reason: str


@dataclass(frozen=True)
class RecoveryReport:
    """What a full pass over the log found.

    Attributes:
        records: intact records.
        first_seq, last_seq: sequence numbers of the first and last intact record (last_seq is
            first_seq - 1 when there are none).
        segments: segment files, in order.
        torn_tail: the damaged tail, or None when the log ends cleanly.
    """

    records: int
    first_seq: int
    last_seq: int
    segments: tuple[Path, ...]
    torn_tail: TornTail | None


def segment_name(first_seq: int) -> str:
    """File name of the segment whose first record is ``first_seq``."""
    return f"{first_seq:020d}{WAL_SEGMENT_SUFFIX}"


def list_segments(directory: str | os.PathLike) -> list[Path]:
    """Segment files of a log directory in sequence order (names sort as numbers: fixed width)."""
    root = Path(directory)
    return sorted(p for p in root.iterdir() if p.name.endswith(WAL_SEGMENT_SUFFIX) and p.name[:-4].isdigit())


def _segment_header(first_seq: int) -> bytes:
    head = struct.pack("<8sQ", WAL_MAGIC, first_seq)
    return _SEG_HEADER.pack(WAL_MAGIC, first_seq, zlib.crc32(head), 0)


def _record_crc(length: int, seq: int, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(_LEN_SEQ.pack(length, seq)))


def _valid_record_after(data: bytes, start: int, min_seq: int) -> int | None:
    """Offset of the first valid record header at or after ``start`` whose seq is >= ``min_seq``.

    Candidates are found with numpy (a u64 read at every byte offset, filtered to a plausible seq
    range) so only a handful of CRCs are computed even for a large damaged region.
    """
    n = len(data)
    if n - start < REC_HEADER_SIZE:
        return None
    limit = min_seq + (n - start) // REC_HEADER_SIZE + 1
    arr = np.frombuffer(data, dtype=np.uint8)
    found: list[np.ndarray] = []
    for phase in range(8):
        first = start + 8 + phase  # the seq field sits 8 bytes into a header
        usable = (n - first) // 8
        if usable <= 0:
            continue
        seqs = arr[first:first + usable * 8].view("<u8")
        hits = np.flatnonzero((seqs >= min_seq) & (seqs < limit))
        found.append(first - 8 + hits * 8)
    if not found:
        return None
    for off in np.sort(np.concatenate(found)):
        off = int(off)
        if off + REC_HEADER_SIZE > n:
            continue
        crc, length, seq = _REC_HEADER.unpack_from(data, off)
        end = off + REC_HEADER_SIZE + length
        if end <= n and _record_crc(length, seq, memoryview(data)[off + REC_HEADER_SIZE:end]) == crc:
            return off
    return None


class WalReader:
    """Reads a log directory. ``replay()`` yields ``(seq, payload)``; ``scan()`` only checks.

    After a complete pass ``report`` holds the ``RecoveryReport`` (torn tail included). Damage that
    is not a torn tail raises ``WalCorruptionError`` after every intact record before it was yielded.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.report: RecoveryReport | None = None

    def replay(self) -> Iterator[tuple[int, bytes]]:
        """Every intact record in sequence order, as ``(seq, payload bytes)``."""
        return self._walk(keep_payloads=True)

    def scan(self) -> RecoveryReport:
        """Check every record without handing payloads out; returns (and keeps) the report."""
        for _ in self._walk(keep_payloads=False):
            pass
        assert self.report is not None
        return self.report

    def _walk(self, keep_payloads: bool) -> Iterator[tuple[int, bytes]]:
        self.report = None
        segments = list_segments(self.directory) if self.directory.exists() else []
        expected = int(segments[0].name[:-4]) if segments else WAL_FIRST_SEQ
        first_seq = expected
        records = 0
        torn: TornTail | None = None
        for index, path in enumerate(segments):
            last_segment = index == len(segments) - 1
            data = path.read_bytes()
            named_first = int(path.name[:-4])

            def damaged(offset: int, reason: str) -> TornTail:
                # A torn tail only at the end of the last segment with nothing valid behind it.
                if last_segment and _valid_record_after(data, offset + 1, expected) is None:
                    return TornTail(path, offset, len(data) - offset, expected, reason)
                raise WalCorruptionError(path, offset, expected, reason)

            if named_first != expected:
                raise WalCorruptionError(path, 0, expected, f"segment starts at seq {named_first}: records missing")
            if len(data) < SEG_HEADER_SIZE:
                torn = damaged(0, "segment header truncated")
                break
            magic, head_first, head_crc, _ = _SEG_HEADER.unpack_from(data, 0)
            if magic != WAL_MAGIC or head_first != named_first or zlib.crc32(data[:16]) != head_crc:
                torn = damaged(0, "segment header")
                break
            off = SEG_HEADER_SIZE
            end_of_data = len(data)
            view = memoryview(data)
            while off < end_of_data:
                if end_of_data - off < REC_HEADER_SIZE:
                    torn = damaged(off, "record header truncated")
                    break
                crc, length, seq = _REC_HEADER.unpack_from(data, off)
                body = off + REC_HEADER_SIZE
                if body + length > end_of_data:
                    torn = damaged(off, f"length {length} runs past the end of the segment")
                    break
                if _record_crc(length, seq, view[body:body + length]) != crc:
                    torn = damaged(off, "checksum")
                    break
                if seq != expected:
                    torn = damaged(off, f"sequence {seq}")
                    break
                if keep_payloads:
                    yield seq, data[body:body + length]
                records += 1
                expected += 1
                off = body + length
            if torn is not None:
                break
        self.report = RecoveryReport(records, first_seq, expected - 1, tuple(segments), torn)


def rows_payload(rows: np.ndarray) -> memoryview:
    """The bytes of a batch of (structured) numpy rows, without copying or a Python object per row."""
    flat = np.ascontiguousarray(rows).reshape(-1)
    return memoryview(flat.view(np.uint8))


def rows_from_payload(payload, dtype: np.dtype) -> np.ndarray:
    """The rows ``append_rows`` logged, as a read-only array over ``payload`` (no copy)."""
    dtype = np.dtype(dtype)
    if len(payload) % dtype.itemsize:
        raise ValueError(f"payload of {len(payload)} bytes is not a whole number of {dtype.itemsize}-byte rows")
    return np.frombuffer(payload, dtype=dtype)


class _Chunk:
    """Records waiting for a commit; ``new_segment`` is the first seq of a segment to open first."""

    __slots__ = ("new_segment", "buf")

    def __init__(self, new_segment: int | None) -> None:
        self.new_segment = new_segment
        self.buf = bytearray()


class WalWriter:
    """Appends records to a log directory, committing them in groups.

    Opening recovers: the log is scanned, a torn tail is cut off (reported in ``recovery``), and
    sequence numbers continue after the last intact record. Damage elsewhere raises
    ``WalCorruptionError`` and the log is left as it is. One writer per directory (a ``LOCK`` file
    held with flock).

    Use: ``seq = append(payload)`` for each record, then ``commit()``; acknowledge the records once
    ``commit()`` returns. With ``max_delay`` set, a background thread commits when the oldest
    uncommitted record is ``max_delay`` seconds old or ``max_batch`` records wait; callers then
    ``wait_durable(seq)`` before acknowledging. After any write or fsync error the writer refuses
    all further work: the state of the file is unknown, reopen to recover.

    Args:
        directory: the log directory (created if missing).
        fsync: an ``FsyncPolicy`` (or its value string).
        segment_bytes: a new segment starts when a record would take the current one past this size
            (a larger record gets a segment of its own).
        max_delay: seconds; starts the background flusher (None: commits are the caller's).
        max_batch: records that make the flusher commit at once.
    """

    def __init__(self, directory: str | os.PathLike, fsync: FsyncPolicy | str = FsyncPolicy.BATCH,
                 segment_bytes: int = WAL_DEFAULT_SEGMENT_BYTES, max_delay: float | None = None,
                 max_batch: int = 64) -> None:
        self.directory = Path(directory)
        self.policy = FsyncPolicy(fsync)
        if segment_bytes < SEG_HEADER_SIZE + REC_HEADER_SIZE:
            raise ValueError(f"segment_bytes {segment_bytes} is too small")
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.segment_bytes = segment_bytes
        self.max_delay = max_delay
        self.max_batch = max_batch
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / WAL_LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise WalError(f"{self.directory} is open in another writer") from None
        try:
            self.recovery = self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._lock = threading.Lock()  # pending records and sequence numbers
        self._wake = threading.Condition(self._lock)  # flusher: records are waiting
        self._commit_lock = threading.Lock()  # one commit writes at a time, in order
        self._durable = threading.Condition(threading.Lock())
        self._durable_seq = self.recovery.last_seq
        self._next_seq = self.recovery.last_seq + 1
        self._pending: list[_Chunk] = [_Chunk(None if self._fd is not None else self._next_seq)]
        self._pending_records = 0
        self._failed: BaseException | None = None
        self._closing = False
        self._flusher: threading.Thread | None = None
        if max_delay is not None and self.policy is not FsyncPolicy.ALWAYS:
            self._flusher = threading.Thread(target=self._flush_loop, name=f"wal-flusher:{self.directory.name}",
                                             daemon=True)
            self._flusher.start()

    # -- recovery -----------------------------------------------------------------------------

    def _recover(self) -> RecoveryReport:
        report = WalReader(self.directory).scan()
        tail = report.torn_tail
        if tail is not None:
            if tail.offset < SEG_HEADER_SIZE:
                tail.segment.unlink()
            else:
                with open(tail.segment, "r+b") as f:
                    f.truncate(tail.offset)
                    if self.policy is not FsyncPolicy.NEVER:
                        os.fsync(f.fileno())
            if self.policy is not FsyncPolicy.NEVER:
                self._sync_directory()
        segments = list_segments(self.directory)
        self._fd: int | None = None
        self._segment_fill = 0
        if segments:
            last = segments[-1]
            self._fd = os.open(last, os.O_WRONLY | os.O_APPEND)
            self._segment_fill = os.fstat(self._fd).st_size
        return report

    def _sync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- appending ----------------------------------------------------------------------------

    def append(self, payload) -> int:
        """Queue one record (any bytes-like payload); returns its sequence number.

        Not yet durable: acknowledge it only after ``commit()`` or ``wait_durable(seq)``
        (under ``FsyncPolicy.ALWAYS`` it is durable when this returns).
        """
        length = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
        if length > WAL_MAX_PAYLOAD:
            raise ValueError(f"payload of {length} bytes exceeds the {WAL_MAX_PAYLOAD}-byte record limit")
        size = REC_HEADER_SIZE + length
        with self._lock:
            if self._failed is not None or self._closing:
                self._raise_unusable()
            seq = self._next_seq
            self._next_seq = seq + 1
            chunk = self._pending[-1]
            if chunk.new_segment is not None and not chunk.buf:
                self._segment_fill = SEG_HEADER_SIZE
            elif self._segment_fill + size > self.segment_bytes and self._segment_fill > SEG_HEADER_SIZE:
                chunk = _Chunk(seq)
                self._pending.append(chunk)
                self._segment_fill = SEG_HEADER_SIZE
            buf = chunk.buf
            buf += _REC_HEADER.pack(_record_crc(length, seq, payload), length, seq)
            buf += payload
            self._segment_fill += size
            self._pending_records += 1
            if self._flusher is not None and self._pending_records in (1, self.max_batch):
                self._wake.notify()
        if self.policy is FsyncPolicy.ALWAYS:
            self.commit()
        return seq

    def append_rows(self, rows: np.ndarray) -> int:
        """Log a batch of numpy (structured) rows as one record; read back with ``rows_from_payload``.

        The batch is the unit of atomicity and of acknowledgement: one sequence number covers it.
        """
        return self.append(rows_payload(rows))

    # -- committing ---------------------------------------------------------------------------

    def commit(self) -> int:
        """Write every record appended so far and make it durable under the fsync policy.

        Returns the last durable sequence number; every record up to it may be acknowledged.
        """
        with self._commit_lock:
            with self._lock:
                if self._failed is not None:
                    self._raise_unusable()
                chunks = self._pending
                last = self._next_seq - 1
                if self._pending_records == 0:
                    return self._durable_seq
                self._pending = [_Chunk(None)]
                self._pending_records = 0
            try:
                for chunk in chunks:
                    if chunk.new_segment is not None:
                        self._start_segment(chunk.new_segment)
                    self._write_all(chunk.buf)
                if self.policy is not FsyncPolicy.NEVER:
                    _fdatasync(self._fd)
            except BaseException as exc:
                with self._lock:
                    self._failed = exc
                with self._durable:
                    self._durable.notify_all()
                raise WalError(f"write-ahead log {self.directory}: commit failed; reopen to recover") from exc
            with self._durable:
                self._durable_seq = last
                self._durable.notify_all()
            return last

    def wait_durable(self, seq: int, timeout: float | None = None) -> bool:
        """Block until record ``seq`` is durable; True once it is, False on timeout.

        Without a background flusher this commits itself.
        """
        if self._durable_seq >= seq:
            return True
        if self._flusher is None:
            self.commit()
            return self._durable_seq >= seq
        with self._durable:
            ok = self._durable.wait_for(lambda: self._durable_seq >= seq or self._failed is not None, timeout)
        if self._failed is not None and self._durable_seq < seq:
            self._raise_unusable()
        return ok

    @property
    def durable_seq(self) -> int:
        """Last sequence number made durable (0 when none)."""
        return self._durable_seq

    @property
    def last_seq(self) -> int:
        """Last sequence number handed out by ``append`` (durable or not)."""
        return self._next_seq - 1

    def _start_segment(self, first_seq: int) -> None:
        if self._fd is not None:
            if self.policy is not FsyncPolicy.NEVER:
                _fdatasync(self._fd)
            os.close(self._fd)
            self._fd = None
        path = self.directory / segment_name(first_seq)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._write_all(_segment_header(first_seq))
        if self.policy is not FsyncPolicy.NEVER:
            self._sync_directory()  # the new file's name must survive a crash too

    def _write_all(self, data) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _raise_unusable(self):
        if self._failed is not None:
            raise WalError(f"write-ahead log {self.directory} failed earlier ({self._failed!r}); reopen to recover")
        raise WalError(f"write-ahead log {self.directory} is closed")

    # -- background flusher -------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                while self._pending_records == 0 and not self._closing:
                    self._wake.wait()
                if self._pending_records == 0 and self._closing:
                    return
                deadline = time.monotonic() + self.max_delay
                while self._pending_records < self.max_batch and not self._closing:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
            try:
                self.commit()
            except WalError:
                return  # waiters see _failed

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is pending, stop the flusher and release the directory."""
        if self._lock_fd < 0:
            return
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        if self._flusher is not None:
            self._flusher.join()
        try:
            if self._failed is None:
                self.commit()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> WalWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- state machines: what replaying a log must reproduce ---------------------------------------


class StateMachine(Protocol):
    """A state built only from log records: equal records in equal order give an equal hash."""

    def apply(self, seq: int, payload: bytes) -> None: ...

    def state_hash(self) -> str: ...


class RecordChainState:
    """The state is the chain of every record applied: blake2b(previous hash, seq, length, payload).

    Any missing, extra, reordered or altered record changes the hash.
    """

    def __init__(self) -> None:
        self._hash = bytes(32)
        self.last_seq = 0

    def apply(self, seq: int, payload: bytes) -> None:
        h = hashlib.blake2b(self._hash, digest_size=32)
        h.update(_LEN_SEQ.pack(len(payload), seq))
        h.update(payload)
        self._hash = h.digest()
        self.last_seq = seq

    def state_hash(self) -> str:
        return self._hash.hex()


class KeyValueState:
    """A key-value table: each payload is ``key u32 | value bytes``; an empty value deletes the key.

    ``state_hash`` is blake2b over a canonical form: the last applied seq, then every key in
    ascending order with its value length and value. Tests and the engine's early days use it as
    the state "recovery must reproduce".
    """

    _KEY = struct.Struct("<I")
    _ITEM = struct.Struct("<II")

    def __init__(self) -> None:
        self.table: dict[int, bytes] = {}
        self.last_seq = 0

    @classmethod
    def encode(cls, key: int, value: bytes) -> bytes:
        return cls._KEY.pack(key) + value

    def apply(self, seq: int, payload: bytes) -> None:
        (key,) = self._KEY.unpack_from(payload, 0)
        value = bytes(payload[4:])
        if value:
            self.table[key] = value
        else:
            self.table.pop(key, None)
        self.last_seq = seq

    def state_hash(self) -> str:
        h = hashlib.blake2b(digest_size=32)
        h.update(struct.pack("<QQ", self.last_seq, len(self.table)))
        for key in sorted(self.table):
            value = self.table[key]
            h.update(self._ITEM.pack(key, len(value)))
            h.update(value)
        return h.hexdigest()


def replay_into(directory: str | os.PathLike, state: StateMachine) -> RecoveryReport:
    """Apply every intact record of the log at ``directory`` to ``state``; returns the report."""
    reader = WalReader(directory)
    for seq, payload in reader.replay():
        state.apply(seq, payload)
    assert reader.report is not None
    return reader.report
