"""Message frames: where each venue message sits in a byte buffer.

Framing layers (MoldUDP64 over pcap, Nasdaq BinaryFILE, live sockets) all produce the same thing:
one contiguous ``uint8`` buffer and a ``FRAME_DTYPE`` array with one row per venue message. Decoders
read only these two, so a replay and a live socket drive the same decoder.
"""
from __future__ import annotations

import enum

import numpy as np


class FrameFlag(enum.IntFlag):
    """Bits of ``FRAME_DTYPE.flags``; they are copied into the normalized records' ``flags``."""

    LAST_IN_PACKET = 0x0001  # the last message of its packet (or of its file chunk)
    RECOVERED = 0x0002  # delivered by gap recovery (re-request / snapshot), not the live line
    BAD_TS_RECV = 0x0004  # the capture's receive timestamp went backwards


FRAME_DTYPE = np.dtype(
    [
        ("offset", "<i8"),  # byte offset of the message (its type byte) in the buffer
        ("ts_recv", "<i8"),  # ns since the Unix epoch: pcap record time, kernel time live; 0 if unknown
        ("sequence", "<u8"),  # venue sequence number of the message (MoldUDP64: packet seq + index)
        ("length", "<u4"),  # message length in bytes, as the framing layer declared it
        ("session", "<u2"),  # index into the framer's list of session names
        ("flags", "<u2"),  # FrameFlag bits
    ]
)


def empty_frames(n: int = 0) -> np.ndarray:
    """Return an uninitialised frame array of ``n`` rows."""
    return np.empty(n, dtype=FRAME_DTYPE)


def frames_of(messages: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Messages back to back as one batch: (buffer, frames), sequence from 1, no receive time, session 0,
    no flags. For tools and tests that hold messages rather than a capture."""
    buf = np.frombuffer(b"".join(messages), dtype=np.uint8)
    frames = empty_frames(len(messages))
    lengths = [len(m) for m in messages]
    frames["offset"] = np.cumsum([0] + lengths)[:-1]
    frames["length"] = lengths
    frames["sequence"] = np.arange(1, len(messages) + 1)
    frames["ts_recv"] = 0
    frames["session"] = 0
    frames["flags"] = 0
    return buf, frames
