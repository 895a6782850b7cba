"""One entry point for capture files: ``open_capture(path)`` -> ``Capture`` -> (buffer, frames).

Rules this module keeps:

- The format is told from the bytes, never the file name: classic pcap (4 magics), pcapng, gzip (then
  the same test on what is inside) and Nasdaq BinaryFILE (plausible length prefixes, each followed by
  an ITCH message type letter).
- Every UDP payload of a pcap/pcapng is read as MoldUDP64 (optionally only one destination port).
- Problems a user can fix (missing file, directory, empty or unknown file) raise ``CaptureError`` with a
  one-line message; problems inside a capture are counted in ``stats.anomalies`` and reading goes on.
- Framing runs batch by batch through one ``MoldSessionTracker`` (``iter_batches``); ``frames()`` is the
  single batch covering the whole file. The file itself is held in memory whole; reading it in chunks
  later only changes where ``iter_batches`` gets its packet tables, not the tracker or the callers.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from captures.binaryfile import (
    BINARYFILE_SESSION,
    GZIP_MAGIC,
    BinaryFileCounter,
    anomaly_counts,
    iter_binaryfile_batches,
    looks_like_binaryfile,
)
from captures.pcap import PacketTable, PcapFormatError, is_pcapng, parse_pcap_buffer, parse_pcapng_bytes, pcap_magic
from parsers.frames import FRAME_DTYPE
from parsers.moldudp64 import MoldSessionTracker

ITCH_TYPE_LETTERS = b"SRHYLVWKJhAFECXDUPQBINO"
_HEAD_LEN = 4096

CAPTURE_PCAP = "pcap"
CAPTURE_PCAPNG = "pcapng"
CAPTURE_BINARYFILE = "binaryfile"


class CaptureError(Exception):
    """A capture file that cannot be read at all; the message is one line naming the path."""


@dataclass
class CaptureStats:
    """What framing a capture found. Counts are of MoldUDP64 packets (0 for BinaryFILE)."""

    packets: int = 0
    messages: int = 0
    sessions: list[str] = field(default_factory=list)
    gaps: list[dict] = field(default_factory=list)
    anomalies: dict[str, int] = field(default_factory=dict)  # only nonzero entries
    heartbeats: int = 0
    end_of_session: int = 0
    duplicates: int = 0  # packets wholly below the expected sequence
    duplicate_messages: int = 0  # messages dropped as already delivered (duplicates and overlaps)
    first_ts_recv: int | None = None  # ns since the epoch, of the first packet framed
    last_ts_recv: int | None = None  # of the last packet framed


def _kind_of(head: bytes) -> str | None:
    if pcap_magic(head) is not None:
        return CAPTURE_PCAP
    if is_pcapng(head):
        return CAPTURE_PCAPNG
    if looks_like_binaryfile(head, ITCH_TYPE_LETTERS):
        return CAPTURE_BINARYFILE
    return None


class Capture:
    """A capture file whose format is known; read it with ``frames()`` or ``iter_batches()``."""

    def __init__(self, path: Path, kind: str, data: bytes | None, udp_port: int | None) -> None:
        self.path = path
        self.kind = kind
        self.udp_port = udp_port
        self.compressed = data is not None
        self._data = data  # decompressed bytes of a gzip capture, None for a plain file
        self._stats: CaptureStats | None = None
        self._whole: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        gz = "+gzip" if self.compressed else ""
        return f"Capture({str(self.path)!r}, kind={self.kind}{gz})"

    def _buffer(self) -> np.ndarray:
        if self._data is not None:
            return np.frombuffer(self._data, dtype=np.uint8)
        return np.fromfile(self.path, dtype=np.uint8)

    def packet_table(self) -> PacketTable:
        """The UDP payloads of a pcap/pcapng capture (after the ``udp_port`` filter)."""
        try:
            if self.kind == CAPTURE_PCAP:
                table = parse_pcap_buffer(self._buffer())
            elif self.kind == CAPTURE_PCAPNG:
                table = parse_pcapng_bytes(self._data if self._data is not None else self.path.read_bytes())
            else:
                raise CaptureError(f"a BinaryFILE has no packets: {self.path}")
        except PcapFormatError as exc:
            raise CaptureError(f"{exc}: {self.path}") from None
        if self.udp_port is not None:
            table.packets = table.packets[table.packets["dst_port"] == self.udp_port]
        return table

    def iter_batches(self, max_packets: int = 1 << 16) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (buf, frames) batch by batch; frames of all batches point into the same ``buf``.

        Sequence tracking carries over between batches; ``stats`` is complete once the iterator ends.
        A BinaryFILE comes in batches of ``max_packets`` messages.
        """
        if max_packets < 1:
            raise ValueError("max_packets must be >= 1")
        stats = CaptureStats()
        if self.kind == CAPTURE_BINARYFILE:
            buf = self._buffer()
            counters = np.zeros(len(BinaryFileCounter), np.int64)
            stats.sessions = [BINARYFILE_SESSION]
            for frames in iter_binaryfile_batches(buf, max_packets, counters):  # a message is its own "packet"
                stats.messages += len(frames)
                yield buf, frames
            stats.anomalies = anomaly_counts(counters)
            self._stats = stats
            return
        table = self.packet_table()
        packets = table.packets
        tracker = MoldSessionTracker()
        for start in range(0, max(packets.shape[0], 1), max_packets):
            part = packets[start : start + max_packets]
            frames = tracker.frame_packets(table.buf, part["offset"], part["length"], part["ts_recv"])
            yield table.buf, frames
        stats.packets = tracker.packets
        stats.messages = tracker.messages
        stats.sessions = list(tracker.sessions)
        stats.gaps = list(tracker.gaps)
        stats.anomalies = {**table.anomalies, **tracker.anomalies}
        stats.heartbeats = tracker.heartbeats
        stats.end_of_session = tracker.end_of_session
        stats.duplicates = tracker.duplicates
        stats.duplicate_messages = tracker.duplicate_messages
        if packets.shape[0]:
            stats.first_ts_recv = int(packets["ts_recv"][0])
            stats.last_ts_recv = int(packets["ts_recv"][-1])
        self._stats = stats

    def frames(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (buf uint8, frames FRAME_DTYPE) for the whole file; computed once, then kept."""
        if self._whole is None:
            buf = np.zeros(0, np.uint8)
            parts = []
            for buf, frames in self.iter_batches(max_packets=1 << 62):
                parts.append(frames)
            if len(parts) == 1:
                frames = parts[0]
            else:
                frames = np.concatenate(parts) if parts else np.empty(0, FRAME_DTYPE)
            self._whole = (buf, frames)
        return self._whole

    @property
    def stats(self) -> CaptureStats:
        """Framing statistics of the whole file (reads the file if ``frames()`` was not called)."""
        if self._stats is None:
            self.frames()
        return self._stats


def open_capture(path: str | os.PathLike, udp_port: int | None = None) -> Capture:
    """Detect a capture's format from its bytes and return a ``Capture`` (nothing framed yet).

    Raises ``CaptureError`` for a missing path, a directory, an empty or unreadable file, a corrupt
    gzip, or bytes that are not a pcap, pcapng or Nasdaq BinaryFILE capture.
    """
    p = Path(path)
    if not p.exists():
        raise CaptureError(f"no such capture file: {p}")
    if p.is_dir():
        raise CaptureError(f"is a directory, not a capture file: {p}")
    try:
        with open(p, "rb") as f:
            head = f.read(_HEAD_LEN)
    except OSError as exc:
        raise CaptureError(f"cannot read capture file ({exc.strerror}): {p}") from None
    if not head:
        raise CaptureError(f"empty capture file: {p}")
    data = None
    if head[:2] == GZIP_MAGIC:
        try:
            with gzip.open(p, "rb") as f:
                data = f.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise CaptureError(f"corrupt gzip ({' '.join(str(exc).split())}): {p}") from None
        if not data:
            raise CaptureError(f"empty capture file (gzip of nothing): {p}")
        head = data[:_HEAD_LEN]
    kind = _kind_of(head)
    if kind is None:
        raise CaptureError(f"not a pcap, pcapng or Nasdaq BinaryFILE capture: {p}")
    if kind == CAPTURE_PCAP and len(head) < 24:
        raise CaptureError(f"pcap global header cut short ({len(head)} of 24 bytes): {p}")
    return Capture(p, kind, data, udp_port)
