"""MoldUDP64 re-requests, the pure part: request packets, and answers built from a capture's messages.

Rules this module keeps:

- A request packet is exactly 20 bytes: session (10 ASCII bytes, space padded), sequence (u64 BE, the
  first message wanted), count (u16 BE, how many). Anything else is a ``RerequestError`` (one line).
- The answer to a request is a standard MoldUDP64 downstream packet holding the requested messages from
  ``sequence`` on, as many as fit in ``max_payload`` bytes (the spec's "a standard Downstream Packet":
  one per request; a client asks again from where the answer ended). Messages the capture does not hold
  (before its first, after its last, or inside a gap of the capture itself) end the answer; a request
  whose first message is not held gets no answer (None).
- ``MessageIndex`` holds one sorted sequence column per session and the message offsets into one
  buffer: a lookup is a binary search plus a vectorised cut, no Python object per message.
- No I/O: the UDP server lives in ``feedhandler/rerequest.py``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from captures.binaryfile import BINARYFILE_SESSION
from parsers.moldudp64 import MOLD_END_OF_SESSION_COUNT, MOLD_HEADER_LEN, pack_messages, session_bytes

REQUEST_LEN = 20  # session(10) + sequence(8) + count(2)
MAX_REQUEST_COUNT = MOLD_END_OF_SESSION_COUNT - 1  # 0xFFFF means end of session in downstream packets
DEFAULT_MAX_PAYLOAD = 1400  # UDP payload of an answer: fits a 1500-byte Ethernet MTU with room to spare
BINARYFILE_MOLD_SESSION = "FEEDHNDLR1"  # the session name a BinaryFILE gets when sent as MoldUDP64

_REQUEST = struct.Struct(">10sQH")


class RerequestError(ValueError):
    """A malformed request packet or request; the message is one line."""


@dataclass(frozen=True)
class Rerequest:
    """One MoldUDP64 request: ``count`` messages of ``session`` from ``sequence`` on."""

    session: bytes  # 10 bytes as on the wire
    sequence: int
    count: int

    def encode(self) -> bytes:
        return encode_request(self.session, self.sequence, self.count)


def encode_request(session: bytes | str, sequence: int, count: int) -> bytes:
    """The 20-byte request packet for ``count`` messages of ``session`` from ``sequence`` on."""
    if not 0 <= sequence < 1 << 64:
        raise RerequestError(f"sequence out of range (u64): {sequence}")
    if not 1 <= count <= MAX_REQUEST_COUNT:
        raise RerequestError(f"count must be within 1..{MAX_REQUEST_COUNT}: {count}")
    try:
        name = session_bytes(session)
    except (ValueError, UnicodeEncodeError) as exc:
        raise RerequestError(str(exc)) from None
    return _REQUEST.pack(name, sequence, count)


def decode_request(payload: bytes | memoryview) -> Rerequest:
    """Read a request packet; ``RerequestError`` when it is not 20 bytes or asks for no message."""
    if len(payload) != REQUEST_LEN:
        raise RerequestError(f"request packet must be {REQUEST_LEN} bytes, got {len(payload)}")
    session, sequence, count = _REQUEST.unpack(bytes(payload))
    if count == 0:
        raise RerequestError("request for 0 messages")
    return Rerequest(session, sequence, count)


class MessageIndex:
    """A capture's messages by (session, sequence), answering re-requests.

    Args:
        buf: uint8 buffer holding the messages.
        frames: FRAME_DTYPE rows (``offset``, ``length``, ``sequence``, ``session`` index into
            ``sessions``), in any order.
        sessions: session names, index i = frames' session i (str as the framer names them, or bytes).
    """

    def __init__(self, buf: np.ndarray, frames: np.ndarray, sessions: list[str | bytes]) -> None:
        self.buf = buf
        self._by_session: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for i, name in enumerate(sessions):
            rows = frames[frames["session"] == i]
            order = np.argsort(rows["sequence"], kind="stable")
            rows = rows[order]
            seq = rows["sequence"].astype(np.uint64)
            keep = np.ones(seq.shape[0], np.bool_)  # a capture with duplicates keeps each sequence once
            keep[1:] = seq[1:] != seq[:-1]
            self._by_session[session_bytes(name)] = (
                seq[keep], rows["offset"][keep].astype(np.int64), rows["length"][keep].astype(np.int64)
            )
        self.messages = sum(len(v[0]) for v in self._by_session.values())

    @classmethod
    def from_capture(cls, capture, binaryfile_session: str = BINARYFILE_MOLD_SESSION) -> "MessageIndex":
        """Index a ``captures.reader.Capture`` (a BinaryFILE's messages go under ``binaryfile_session``)."""
        buf, frames = capture.frames()
        sessions = list(capture.stats.sessions)
        if sessions == [BINARYFILE_SESSION]:
            sessions = [binaryfile_session]
        return cls(buf, frames, sessions)

    @property
    def sessions(self) -> list[bytes]:
        return list(self._by_session)

    def span(self, session: bytes | str) -> tuple[int, int] | None:
        """(first, last) sequence held for ``session``, None if it is unknown or empty."""
        entry = self._by_session.get(session_bytes(session))
        if entry is None or not len(entry[0]):
            return None
        return int(entry[0][0]), int(entry[0][-1])

    def lookup(self, session: bytes | str, sequence: int, count: int,
               max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, lengths) of the messages an answer carries: consecutive sequences from ``sequence``,
        at most ``count``, while the packet stays within ``max_payload`` (at least one message)."""
        entry = self._by_session.get(session_bytes(session))
        empty = np.zeros(0, np.int64)
        if entry is None or count < 1 or sequence < 0:
            return empty, empty
        seqs, offsets, lengths = entry
        i = int(np.searchsorted(seqs, np.uint64(sequence)))
        j = min(i + count, seqs.shape[0])
        if i >= j or int(seqs[i]) != sequence:
            return empty, empty
        run = seqs[i:j] - np.uint64(sequence) == np.arange(j - i, dtype=np.uint64)
        if not run.all():  # the capture itself has a gap: stop before it
            j = i + int(np.argmin(run))
        size = MOLD_HEADER_LEN + np.cumsum(lengths[i:j] + 2)
        fit = max(1, int(np.searchsorted(size, max_payload, side="right")))
        return offsets[i : i + fit], lengths[i : i + fit]

    def answer(self, request: Rerequest, max_payload: int = DEFAULT_MAX_PAYLOAD) -> bytes | None:
        """The downstream packet answering ``request``, or None when its first message is not held."""
        offsets, lengths = self.lookup(request.session, request.sequence, request.count, max_payload)
        if not len(offsets):
            return None
        out = np.empty(MOLD_HEADER_LEN + int(lengths.sum()) + 2 * len(lengths), np.uint8)
        pack_messages(
            out, np.zeros(1, np.int64), self.buf, offsets, lengths,
            np.zeros(1, np.int64), np.array([len(offsets)], np.int64),
            np.frombuffer(session_bytes(request.session), np.uint8),
            np.array([request.sequence], np.uint64),
        )
        return out.tobytes()
