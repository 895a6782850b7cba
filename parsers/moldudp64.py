"""MoldUDP64 downstream framing: UDP payloads in, one frame per venue message out.

Rules this module keeps:

- A packet is ``session`` (10 ASCII bytes), ``sequence`` (u64 BE, of its first message), ``count``
  (u16 BE; 0 = heartbeat, 0xFFFF = end of session), then ``count`` blocks of u16 BE length + bytes.
- Frames point into the caller's buffer (``offset`` = the message's first byte); no message is copied
  and no Python object is made per message: one compiled kernel walks all packets of a batch.
- Sequence state lives in a ``MoldSessionTracker`` so a capture can be fed in chunks: session names map
  to small stable indices, each session has a next expected sequence. A packet starting above it is a
  gap (recorded); messages below it were already delivered and are dropped, so frames never repeat a
  sequence. A message whose length overruns its packet ends that packet (``mold_overrun``) and the
  expected sequence advances only past what was delivered, so the lost tail shows up as a gap.
- No I/O, no clock: timestamps arrive with the packets.

The encoder side (``encode_packet``, ``plan_packets``, ``pack_messages``) lays out the same bytes for
the capture writer and for tests.
"""
from __future__ import annotations

import enum
import struct

import numba as nb
import numpy as np

from parsers.frames import FRAME_DTYPE, FrameFlag

MOLD_HEADER_LEN = 20  # session(10) + sequence(8) + count(2)
MOLD_SESSION_LEN = 10
MOLD_HEARTBEAT_COUNT = 0
MOLD_END_OF_SESSION_COUNT = 0xFFFF

_LAST_IN_PACKET = np.uint16(FrameFlag.LAST_IN_PACKET)
_BAD_TS_RECV = np.uint16(FrameFlag.BAD_TS_RECV)


class MoldCounter(enum.IntEnum):
    """Slots of the kernel's counter array (accumulated by ``MoldSessionTracker``)."""

    MOLD_PACKETS = 0  # packets with a full header (heartbeats and end of session included)
    MOLD_MESSAGES = 1  # messages delivered as frames
    MOLD_HEARTBEATS = 2
    MOLD_END_OF_SESSION = 3
    MOLD_DUPLICATES = 4  # packets wholly below the expected sequence (all their messages dropped)
    MOLD_DUPLICATE_MESSAGES = 5  # messages dropped as already delivered (whole or partial overlap)
    MOLD_SHORT_PACKET = 6  # anomaly: payload shorter than the 20-byte header
    MOLD_OVERRUN = 7  # anomaly: a message length ran past the end of its packet


_N_COUNTERS = len(MoldCounter)


# ---------------------------------------------------------------------------------------------------
# kernels


@nb.njit(cache=True, inline="always")
def _u16be(buf: np.ndarray, i: int) -> int:
    return (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])


@nb.njit(cache=True, inline="always")
def _u64be(buf: np.ndarray, i: int) -> np.uint64:
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(buf[i + k])
    return v


@nb.njit(cache=True, nogil=True)
def _mold_capacity(buf: np.ndarray, pkt_offset: np.ndarray, pkt_length: np.ndarray) -> int:
    """Upper bound on the messages a batch of packets can yield.

    Args:
        buf: uint8 buffer holding the payloads.
        pkt_offset: int64 payload offsets into ``buf``.
        pkt_length: payload lengths.

    Returns:
        sum over packets of min(declared count, bytes available / 2).
    """
    total = 0
    for p in range(pkt_offset.shape[0]):
        off = pkt_offset[p]
        n = np.int64(pkt_length[p])
        if n < MOLD_HEADER_LEN or off < 0 or off + n > buf.shape[0]:
            continue
        count = _u16be(buf, off + 18)
        if count == MOLD_END_OF_SESSION_COUNT:
            continue
        fit = (n - MOLD_HEADER_LEN) // 2
        total += count if count < fit else fit
    return total


@nb.njit(cache=True, nogil=True)
def _mold_frame_kernel(
    buf: np.ndarray,
    pkt_offset: np.ndarray,
    pkt_length: np.ndarray,
    pkt_ts: np.ndarray,
    pkt_session: np.ndarray,
    expected: np.ndarray,
    seen: np.ndarray,
    last_ts: np.ndarray,
    frames: np.ndarray,
    gap_session: np.ndarray,
    gap_first: np.ndarray,
    gap_count: np.ndarray,
    counters: np.ndarray,
) -> tuple:
    """Walk MoldUDP64 packets and write one frame per newly delivered message.

    Args:
        buf: uint8 buffer holding the payloads.
        pkt_offset: int64 payload offsets into ``buf``, one per packet, in arrival order.
        pkt_length: payload lengths (UDP length minus 8).
        pkt_ts: int64 receive time of each packet, ns since the epoch.
        pkt_session: uint16 session index of each packet (meaningless for packets under 20 bytes).
        expected: uint64 per session index, next expected sequence (updated in place).
        seen: bool per session index, whether ``expected`` is known yet (updated in place).
        last_ts: int64[1], receive time of the previous packet (updated in place), for BAD_TS_RECV.
        frames: FRAME_DTYPE output, at least ``_mold_capacity`` rows.
        gap_session, gap_first, gap_count: outputs with one row per packet at most.
        counters: int64[len(MoldCounter)], incremented in place.

    Returns:
        (number of frames written, number of gaps written).
    """
    nf = 0
    ng = 0
    for p in range(pkt_offset.shape[0]):
        off = pkt_offset[p]
        n = np.int64(pkt_length[p])
        if off < 0 or n < MOLD_HEADER_LEN or off + n > buf.shape[0]:
            counters[MoldCounter.MOLD_SHORT_PACKET] += 1
            continue
        counters[MoldCounter.MOLD_PACKETS] += 1
        ts = pkt_ts[p]
        flags = np.uint16(0)
        if ts < last_ts[0]:
            flags = _BAD_TS_RECV
        last_ts[0] = ts
        s = pkt_session[p]
        seq = _u64be(buf, off + 10)
        count = _u16be(buf, off + 18)
        if not seen[s]:
            seen[s] = True
            expected[s] = seq
        if seq > expected[s]:
            gap_session[ng] = s
            gap_first[ng] = expected[s]
            gap_count[ng] = seq - expected[s]
            ng += 1
            expected[s] = seq
        if count == MOLD_HEARTBEAT_COUNT:
            counters[MoldCounter.MOLD_HEARTBEATS] += 1
            continue
        if count == MOLD_END_OF_SESSION_COUNT:
            counters[MoldCounter.MOLD_END_OF_SESSION] += 1
            continue
        if seq + np.uint64(count) <= expected[s]:
            counters[MoldCounter.MOLD_DUPLICATES] += 1
            counters[MoldCounter.MOLD_DUPLICATE_MESSAGES] += count
            continue
        pos = off + MOLD_HEADER_LEN
        end = off + n
        first_frame = nf
        walked = 0
        for i in range(count):
            if pos + 2 > end:
                counters[MoldCounter.MOLD_OVERRUN] += 1
                break
            mlen = _u16be(buf, pos)
            if pos + 2 + mlen > end:
                counters[MoldCounter.MOLD_OVERRUN] += 1
                break
            mseq = seq + np.uint64(i)
            if mseq >= expected[s]:
                frames[nf].offset = pos + 2
                frames[nf].ts_recv = ts
                frames[nf].sequence = mseq
                frames[nf].length = mlen
                frames[nf].session = s
                frames[nf].flags = flags
                nf += 1
            else:
                counters[MoldCounter.MOLD_DUPLICATE_MESSAGES] += 1
            walked += 1
            pos += 2 + mlen
        if nf > first_frame:
            frames[nf - 1].flags = flags | _LAST_IN_PACKET
        counters[MoldCounter.MOLD_MESSAGES] += nf - first_frame
        after = seq + np.uint64(walked)
        if after > expected[s]:
            expected[s] = after
    return nf, ng


@nb.njit(cache=True, nogil=True)
def plan_packets(
    lengths: np.ndarray, ts_recv: np.ndarray, max_payload: int, window_ns: int
) -> tuple:
    """Group consecutive messages into MoldUDP64 packets.

    A packet takes messages while its payload (20-byte header + 2 + length per message) stays within
    ``max_payload`` and each message's ``ts_recv`` is within ``window_ns`` of the packet's first one.
    A message too large for any packet travels alone.

    Args:
        lengths: message lengths (any integer dtype).
        ts_recv: int64 per message, ns since the epoch.
        max_payload: largest UDP payload to produce.
        window_ns: largest |ts difference| between messages sharing a packet.

    Returns:
        (first_message int64[n_packets], message_count int64[n_packets], payload_len int64[n_packets],
         packet_ts int64[n_packets]: the latest ts_recv of the packet's messages).
    """
    n = lengths.shape[0]
    first = np.empty(n, np.int64)
    count = np.empty(n, np.int64)
    size = np.empty(n, np.int64)
    pts = np.empty(n, np.int64)
    npk = -1
    t0 = np.int64(0)
    for i in range(n):
        need = 2 + np.int64(lengths[i])
        t = ts_recv[i]
        if (
            npk < 0
            or size[npk] + need > max_payload
            or abs(t - t0) > window_ns
            or count[npk] >= MOLD_END_OF_SESSION_COUNT - 1
        ):
            npk += 1
            first[npk] = i
            count[npk] = 0
            size[npk] = MOLD_HEADER_LEN
            pts[npk] = t
            t0 = t
        count[npk] += 1
        size[npk] += need
        if t > pts[npk]:
            pts[npk] = t
    npk += 1
    return first[:npk], count[:npk], size[:npk], pts[:npk]


@nb.njit(cache=True, nogil=True)
def pack_messages(
    out: np.ndarray,
    payload_pos: np.ndarray,
    msg_buf: np.ndarray,
    msg_offset: np.ndarray,
    msg_length: np.ndarray,
    first: np.ndarray,
    count: np.ndarray,
    session: np.ndarray,
    sequence: np.ndarray,
) -> None:
    """Lay out MoldUDP64 payloads into a preallocated buffer.

    Args:
        out: uint8 output buffer.
        payload_pos: int64 per packet, where its payload starts in ``out``.
        msg_buf: uint8 buffer holding the messages.
        msg_offset, msg_length: per message, where it sits in ``msg_buf``.
        first, count: per packet, its first message index and message count (0 = heartbeat,
            0xFFFF = end of session; both carry no message).
        session: uint8[10] session name, space padded.
        sequence: uint64 per packet, the sequence number to put in its header.

    Returns:
        None; ``out`` is written in place.
    """
    for p in range(first.shape[0]):
        pos = payload_pos[p]
        for k in range(MOLD_SESSION_LEN):
            out[pos + k] = session[k]
        sq = sequence[p]
        for k in range(8):
            out[pos + 17 - k] = np.uint8(sq & np.uint64(0xFF))
            sq = sq >> np.uint64(8)
        c = count[p]
        out[pos + 18] = np.uint8((c >> 8) & 0xFF)
        out[pos + 19] = np.uint8(c & 0xFF)
        pos += MOLD_HEADER_LEN
        if c == MOLD_END_OF_SESSION_COUNT:
            continue
        for i in range(first[p], first[p] + c):
            ml = np.int64(msg_length[i])
            out[pos] = np.uint8((ml >> 8) & 0xFF)
            out[pos + 1] = np.uint8(ml & 0xFF)
            src = np.int64(msg_offset[i])
            for k in range(ml):
                out[pos + 2 + k] = msg_buf[src + k]
            pos += 2 + ml


# ---------------------------------------------------------------------------------------------------
# Python side


def session_bytes(session: bytes | str) -> bytes:
    """Return a session name as the 10 bytes MoldUDP64 carries (ASCII, right padded with spaces)."""
    raw = session.encode("ascii") if isinstance(session, str) else bytes(session)
    if len(raw) > MOLD_SESSION_LEN:
        raise ValueError(f"MoldUDP64 session name longer than 10 bytes: {raw!r}")
    return raw.ljust(MOLD_SESSION_LEN, b" ")


def encode_packet(session: bytes, sequence: int, messages: list[bytes], count: int | None = None) -> bytes:
    """Return one MoldUDP64 downstream packet.

    ``count`` overrides the header's message count: pass ``MOLD_HEARTBEAT_COUNT`` or
    ``MOLD_END_OF_SESSION_COUNT`` (with no messages), or a wrong count to build malformed packets in tests.
    """
    header = session_bytes(session) + struct.pack(">QH", sequence, len(messages) if count is None else count)
    return header + b"".join(struct.pack(">H", len(m)) + bytes(m) for m in messages)


class MoldSessionTracker:
    """Frames MoldUDP64 packets batch after batch, keeping session indices and sequences across batches.

    Call ``frame_packets`` once per batch of packets (in arrival order); read the counters, ``gaps`` and
    ``sessions`` afterwards. Session index ``i`` in the frames is ``sessions[i]``.
    """

    def __init__(self) -> None:
        self.sessions: list[str] = []
        self._session_index: dict[bytes, int] = {}
        self._expected = np.zeros(4, np.uint64)
        self._seen = np.zeros(4, np.bool_)
        self._last_ts = np.full(1, np.iinfo(np.int64).min, np.int64)
        self.counters = np.zeros(_N_COUNTERS, np.int64)
        self.gaps: list[dict] = []

    # counters by name ---------------------------------------------------------------------------
    packets = property(lambda self: int(self.counters[MoldCounter.MOLD_PACKETS]))
    messages = property(lambda self: int(self.counters[MoldCounter.MOLD_MESSAGES]))
    heartbeats = property(lambda self: int(self.counters[MoldCounter.MOLD_HEARTBEATS]))
    end_of_session = property(lambda self: int(self.counters[MoldCounter.MOLD_END_OF_SESSION]))
    duplicates = property(lambda self: int(self.counters[MoldCounter.MOLD_DUPLICATES]))
    duplicate_messages = property(lambda self: int(self.counters[MoldCounter.MOLD_DUPLICATE_MESSAGES]))

    @property
    def anomalies(self) -> dict[str, int]:
        """Nonzero anomaly counts by name (``mold_short_packet``, ``mold_overrun``)."""
        found = {
            "mold_short_packet": int(self.counters[MoldCounter.MOLD_SHORT_PACKET]),
            "mold_overrun": int(self.counters[MoldCounter.MOLD_OVERRUN]),
        }
        return {k: v for k, v in found.items() if v}

    def next_expected(self, session: str) -> int | None:
        """Next sequence expected on ``session``, or None before its first packet."""
        i = self.sessions.index(session) if session in self.sessions else -1
        return int(self._expected[i]) if i >= 0 and self._seen[i] else None

    def _session_indices(self, buf: np.ndarray, offset: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Map each packet's 10 session bytes to a stable index (vectorised; a dict lookup per name)."""
        ok = (length >= MOLD_HEADER_LEN) & (offset >= 0) & (offset + length <= buf.shape[0])
        idx = np.zeros(offset.shape[0], np.uint16)
        if not ok.any():
            return idx
        starts = offset[ok].astype(np.int64)
        raw = buf[starts[:, None] + np.arange(MOLD_SESSION_LEN)]
        if (raw == raw[0]).all():  # the usual case: one session, no sort needed
            names = raw[:1].view(f"V{MOLD_SESSION_LEN}").ravel()
            first, inverse = np.zeros(1, np.intp), np.zeros(starts.shape[0], np.intp)
        else:
            keys = raw.view(f"V{MOLD_SESSION_LEN}").ravel()
            names, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        table = np.empty(names.shape[0], np.uint16)
        for j in np.argsort(first, kind="stable"):  # new sessions numbered in order of appearance
            key = names[j].tobytes()
            if key not in self._session_index:
                if len(self.sessions) >= 0xFFFF:
                    raise ValueError("more than 65535 MoldUDP64 sessions")
                self._session_index[key] = len(self.sessions)
                self.sessions.append(key.decode("ascii", errors="replace").rstrip(" "))
            table[j] = self._session_index[key]
        idx[ok] = table[inverse.ravel()]
        if len(self.sessions) > self._expected.shape[0]:
            grow = max(len(self.sessions), 2 * self._expected.shape[0])
            self._expected = np.concatenate([self._expected, np.zeros(grow - self._expected.shape[0], np.uint64)])
            self._seen = np.concatenate([self._seen, np.zeros(grow - self._seen.shape[0], np.bool_)])
        return idx

    def frame_packets(
        self, buf: np.ndarray, offset: np.ndarray, length: np.ndarray, ts_recv: np.ndarray
    ) -> np.ndarray:
        """Return the FRAME_DTYPE rows of the new messages in one batch of packets.

        ``offset``/``length``/``ts_recv`` describe each UDP payload inside ``buf`` in arrival order (the
        columns of a packet table). Frames' offsets point into ``buf``.
        """
        offset = np.ascontiguousarray(offset, dtype=np.int64)
        length = np.ascontiguousarray(length, dtype=np.int64)
        ts_recv = np.ascontiguousarray(ts_recv, dtype=np.int64)
        sess = self._session_indices(buf, offset, length)
        frames = np.empty(_mold_capacity(buf, offset, length), FRAME_DTYPE)
        npk = offset.shape[0]
        gap_session = np.empty(npk, np.uint16)
        gap_first = np.empty(npk, np.uint64)
        gap_count = np.empty(npk, np.uint64)
        nf, ng = _mold_frame_kernel(
            buf, offset, length, ts_recv, sess, self._expected, self._seen, self._last_ts,
            frames, gap_session, gap_first, gap_count, self.counters,
        )
        for g in range(ng):
            self.gaps.append(
                {"session": self.sessions[gap_session[g]], "first_missing": int(gap_first[g]), "count": int(gap_count[g])}
            )
        return frames[:nf]
