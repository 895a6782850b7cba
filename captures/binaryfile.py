"""Nasdaq BinaryFILE day files: every message prefixed by its 2-byte big-endian length.

Rules this module keeps:

- Plain or gzip (told apart by the gzip magic, never by the file name); gzip is decompressed whole.
- One compiled kernel writes the FRAME_DTYPE rows straight from the buffer: ``offset`` of the message
  (past its prefix), ``length``, ``sequence`` = 1-based index among the delivered messages,
  ``ts_recv`` = 0 (a file has no receive time), session 0, and LAST_IN_PACKET only on the file's last
  message (the whole file is one "packet").
- A zero length prefix is skipped and counted (``empty_message``); a prefix, or a message, that runs past
  the end of the file stops the walk (``truncated_message``) and everything before it is kept.
"""
from __future__ import annotations

import enum
import gzip as gzip_module

import numba as nb
import numpy as np

from parsers.frames import FRAME_DTYPE, FrameFlag

GZIP_MAGIC = b"\x1f\x8b"
BINARYFILE_SESSION = ""  # BinaryFILE carries no session name; frames use session index 0

_LAST_IN_PACKET = np.uint16(FrameFlag.LAST_IN_PACKET)


class BinaryFileCounter(enum.IntEnum):
    TRUNCATED_MESSAGE = 0
    EMPTY_MESSAGE = 1


@nb.njit(cache=True, nogil=True, _nrt=False)
def _frame_batch(buf: np.ndarray, pos: int, first_sequence: int, frames: np.ndarray, counters: np.ndarray):
    """Frame up to ``len(frames)`` messages from byte ``pos``; return (next pos, frames written).

    An empty message is skipped and counted; a length prefix or message running past the end of the
    buffer is counted once and ends the file. The file's last message gets LAST_IN_PACKET. ``next pos``
    is ``len(buf)`` once the file is done.
    """
    n = buf.shape[0]
    k = 0
    while pos < n and k < frames.shape[0]:
        if pos + 2 > n:
            counters[BinaryFileCounter.TRUNCATED_MESSAGE] += 1
            pos = n
            break
        mlen = (np.int64(buf[pos]) << 8) | np.int64(buf[pos + 1])
        if pos + 2 + mlen > n:
            counters[BinaryFileCounter.TRUNCATED_MESSAGE] += 1
            pos = n
            break
        if mlen == 0:
            counters[BinaryFileCounter.EMPTY_MESSAGE] += 1
        else:
            frames[k].offset = pos + 2
            frames[k].ts_recv = 0
            frames[k].sequence = first_sequence + k
            frames[k].length = mlen
            frames[k].session = 0
            frames[k].flags = 0
            k += 1
        pos += 2 + mlen
    if pos >= n and k > 0:
        frames[k - 1].flags = _LAST_IN_PACKET
    return pos, k


def iter_binaryfile_batches(buf: np.ndarray, batch: int = 1 << 16, counters: np.ndarray | None = None):
    """Yield frame arrays of at most ``batch`` messages over a BinaryFILE buffer, in file order.

    Small batches keep memory flat and warm (no whole-file frame table). ``counters`` (int64 per
    ``BinaryFileCounter``) collects the anomalies.
    """
    counters = np.zeros(len(BinaryFileCounter), np.int64) if counters is None else counters
    batch = max(1, min(batch, len(buf) // 3 + 1))  # a message takes at least 3 bytes with its prefix
    pos = 0
    sequence = 1
    while pos < len(buf):
        frames = np.empty(batch, FRAME_DTYPE)
        pos, k = _frame_batch(buf, pos, sequence, frames, counters)
        sequence += k
        if k:
            yield frames[:k]


def anomaly_counts(counters: np.ndarray) -> dict[str, int]:
    return {c.name.lower(): int(counters[c]) for c in BinaryFileCounter if counters[c]}


def load_bytes(path) -> np.ndarray:
    """Return a file's bytes as uint8, gunzipped whole when it starts with the gzip magic."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == GZIP_MAGIC:
        with gzip_module.open(path, "rb") as f:
            return np.frombuffer(f.read(), dtype=np.uint8)
    return np.fromfile(path, dtype=np.uint8)


def frame_binaryfile_buffer(buf: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Return (frames, anomalies) for a whole BinaryFILE held in ``buf`` (uint8, decompressed)."""
    counters = np.zeros(len(BinaryFileCounter), np.int64)
    batches = list(iter_binaryfile_batches(buf, len(buf), counters))
    frames = batches[0] if len(batches) == 1 else np.empty(0, FRAME_DTYPE)
    return frames, anomaly_counts(counters)


def read_binaryfile(path) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Return (buf, frames, anomalies) for a plain or gzipped BinaryFILE."""
    buf = load_bytes(path)
    frames, anomalies = frame_binaryfile_buffer(buf)
    return buf, frames, anomalies


def looks_like_binaryfile(head: bytes, type_letters: bytes, max_length: int = 100, messages: int = 4) -> bool:
    """Heuristic: the first few length prefixes are plausible and each message starts with a type letter.

    ``head`` is the start of the (decompressed) file. Checks up to ``messages`` messages; when ``head``
    ends before that (a short or cut file) the messages checked so far decide, at least one.
    """
    pos = 0
    checked = 0
    while checked < messages:
        if pos + 3 > len(head):
            return checked > 0
        mlen = (head[pos] << 8) | head[pos + 1]
        if not 1 <= mlen <= max_length or head[pos + 2] not in type_letters:
            return False
        pos += 2 + mlen
        checked += 1
    return True
