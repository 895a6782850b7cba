"""A/B line arbitration and MoldUDP64 gap recovery: packets from two lines in, each message once, in order.

``Arbiter.feed(batch, line, now)`` takes a ``PacketBatch`` received on line A (0), line B (1) or from
the re-request client (``LINE_RECOVERY``, 2) and returns ``(buf, frames)``: FRAME_DTYPE rows (the
decoder's input) of every message that became deliverable, in sequence order per session, each
sequence exactly once. ``poll(now)`` runs the timers when no packet came.

Rules this module keeps:

- The first copy of a sequence wins, whichever line brought it; later copies are dropped and counted
  as duplicates of the line that brought them.
- A message ahead of the next expected sequence is held (copied into a bounded hold: a ring of
  ``hold_messages`` slots per session indexed by sequence, and ``hold_bytes`` of message bytes) until
  the hole before it is filled, by the other line or by a re-request; then held messages are released
  in order. A hole is re-requested (through the ``request(session, first, count)`` callable, at most
  ``max_request_messages`` per request) once every live line has gone past it (lost on both lines) or
  ``request_delay_ns`` after it appeared (a lagging or silent line); a partial answer is followed by a
  request for the rest, a lost one is retried after ``retry_ns``.
- A hole not filled within ``give_up_ns`` is given up: counted, reported (``GapGivenUp`` with its
  first and last sequence) and skipped, and delivery resumes. The messages lost could touch any
  instrument of the session, so the report asks the caller to flag every instrument of that session
  (its feed partition) stale. A hold that fills up gives up its oldest hole early, the same way.
- A line that brings nothing for ``silent_ns`` while another line delivers is reported (``LineSilent``)
  and stops counting as live for "lost on both lines"; ``LineResumed`` when it brings packets again.
- Compiled where it matters: one numba kernel walks every packet and message of a batch (headers,
  sequence numbers, message offsets, the hold and its release) over flat int64 state arrays and
  preallocated outputs; Python runs only per batch and per hole. No I/O and no clock: time comes in as
  ``now`` (ns since the epoch; by default the batch's latest kernel receive time).

Frames point into the arbiter's own output buffer (the message bytes are copied there, so a batch's
buffer can be reused at once); ``buf`` and ``frames`` are views valid until the next ``feed``/``poll``.
Frame ``session`` indexes ``Arbiter.sessions``; ``ts_recv`` is the receive time of the packet that
brought the message; flags: LAST_IN_PACKET on the last message of a packet, RECOVERED on messages
from re-requests.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import numba as nb
import numpy as np

from feedhandler.sources.base import PacketBatch
from parsers.frames import FRAME_DTYPE, FrameFlag
from parsers.moldudp64 import MOLD_END_OF_SESSION_COUNT, MOLD_HEADER_LEN, MOLD_SESSION_LEN

MS = 1_000_000


class Line(enum.IntEnum):
    """Where a batch came from."""

    LINE_A = 0
    LINE_B = 1
    LINE_RECOVERY = 2  # answers of the re-request server


LINE_A, LINE_B, LINE_RECOVERY = Line.LINE_A, Line.LINE_B, Line.LINE_RECOVERY
N_LINES = len(Line)
LINE_NAMES = ("A", "B", "recovery")


class GiveUpReason(enum.IntEnum):
    GIVE_UP_TIMEOUT = 0  # not filled within give_up_ns
    GIVE_UP_HOLD_FULL = 1  # the hold had no room for later messages


# Return codes of ``_arbitrate`` (with the index of the next packet to walk).
DONE = 0
NEED_SESSION = 1  # packet's session is not in ``names``: register it, call again from that packet

# Columns of ``lc`` [line, LC_COLUMNS]: per-line counters.
LC_PACKETS = 0  # packets with a whole header
LC_MESSAGES = 1  # messages this line delivered first
LC_DUPLICATES = 2  # messages dropped: already delivered or held
LC_GAPS = 3  # jumps in this line's own sequence (packets it lost)
LC_GAP_MESSAGES = 4  # messages in those jumps
LC_HEARTBEATS = 5  # heartbeats and end-of-session packets
LC_BAD_PACKETS = 6  # shorter than a header, or a message running past the packet's end
LC_LAST_TS = 7  # receive time of the line's last packet, -1 before the first
LC_COLUMNS = 8

# Columns of ``ss`` [session, SS_COLUMNS]: sequence state per session.
SS_EXPECTED = 0  # next sequence to deliver
SS_HIGH = 1  # every sequence below this is known to exist (delivered, held or missing)
SS_HELD = 2  # messages in the hold
SS_HOLE_SINCE = 3  # time the current hole (at SS_EXPECTED) appeared; -1 when nothing is missing
SS_HOLE_AT = 4  # SS_EXPECTED when SS_HOLE_SINCE was set
SS_REQ_END = 5  # end (exclusive) of the last request
SS_REQ_TS = 6  # time of the last request; -1: none for the current hole
SS_ANSWERED = 7  # a recovery packet of this session came since the last request
SS_STARTED = 8  # the session's first packet came
SS_LINE_HIGH = 9  # 3 columns: per line, the sequence after the last message it carried (0: none yet)
SS_COLUMNS = SS_LINE_HIGH + N_LINES

# Columns of ``held`` [session * window + sequence % window, H_COLUMNS].
H_SEQ = 0  # sequence held in the slot, -1 when free
H_OFFSET = 1  # where its bytes sit in the active arena
H_META = 2  # length | flags << 32 | line << 48
H_TS = 3  # receive time of the packet that brought it
H_COLUMNS = 4

# Slots of ``scal``.
S_WINDOW = 0  # hold slots per session (a power of two)
S_SESSIONS = 1  # sessions registered
S_START_SEQ = 2  # first sequence expected of a new session, -1: its first packet's
S_ARENA = 3  # active arena (0 or 1)
S_ARENA_USED = 4  # bytes handed out in the active arena
S_HELD_TOTAL = 5
S_HELD_PEAK = 6
S_GIVEN_UP = 7  # holes given up
S_GIVEN_UP_MESSAGES = 8
S_HOLD_FULL = 9  # give-ups forced by a full hold
S_BLOCKED = 10  # sessions with a hole after the last call
S_OUT_FRAMES = 11  # output cursors of the current call
S_OUT_BYTES = 12
S_OUT_EVENTS = 13
S_COMPACTIONS = 14
S_COLUMNS = 15

# Columns of ``events`` rows written by the kernel (give-ups).
EV_SESSION = 0
EV_FIRST = 1
EV_END = 2  # exclusive
EV_TS = 3
EV_REASON = 4
EV_COLUMNS = 5

_LAST = np.int64(FrameFlag.LAST_IN_PACKET)
_RECOVERED = np.int64(FrameFlag.RECOVERED)
_LOW32 = np.int64(0xFFFFFFFF)


# ---------------------------------------------------------------------------------------------------
# kernels


@nb.njit(cache=True, inline="always")
def _u16be(buf, i):
    return (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])


@nb.njit(cache=True, inline="always")
def _u64be(buf, i):
    v = np.int64(0)
    for k in range(8):
        v = (v << 8) | np.int64(buf[i + k])
    return v


@nb.njit(cache=True)
def _emit(src, off, mlen, ts, seq, s, flags, out_buf, frames, scal):
    """Copy one message to the output and write its frame."""
    nf = scal[S_OUT_FRAMES]
    ob = scal[S_OUT_BYTES]
    out_buf[ob : ob + mlen] = src[off : off + mlen]
    frames[nf].offset = ob
    frames[nf].ts_recv = ts
    frames[nf].sequence = seq
    frames[nf].length = mlen
    frames[nf].session = s
    frames[nf].flags = flags
    scal[S_OUT_FRAMES] = nf + 1
    scal[S_OUT_BYTES] = ob + mlen


@nb.njit(cache=True)
def _release(s, ss, lc, held, arenas, scal, out_buf, frames):
    """Deliver held messages of session ``s`` while the next expected one is in the hold."""
    w = scal[S_WINDOW]
    arena = arenas[scal[S_ARENA]]
    base = s * w
    while ss[s, SS_HELD] > 0:
        e = ss[s, SS_EXPECTED]
        r = base + (e & (w - 1))
        if held[r, H_SEQ] != e:
            break
        meta = held[r, H_META]
        line = meta >> 48
        _emit(arena, held[r, H_OFFSET], meta & _LOW32, held[r, H_TS], e, s, (meta >> 32) & 0xFFFF,
              out_buf, frames, scal)
        held[r, H_SEQ] = -1
        ss[s, SS_HELD] -= 1
        scal[S_HELD_TOTAL] -= 1
        lc[line, LC_MESSAGES] += 1
        ss[s, SS_EXPECTED] = e + 1
    if scal[S_HELD_TOTAL] == 0:
        scal[S_ARENA_USED] = 0


@nb.njit(cache=True)
def _hole_end(s, ss, held, scal):
    """First sequence after the hole at SS_EXPECTED: the next held message, else SS_HIGH."""
    e = ss[s, SS_EXPECTED]
    high = ss[s, SS_HIGH]
    if ss[s, SS_HELD] == 0:
        return high
    w = scal[S_WINDOW]
    base = s * w
    stop = min(high, e + w)
    for q in range(e + 1, stop):
        if held[base + (q & (w - 1)), H_SEQ] == q:
            return q
    return high


@nb.njit(cache=True)
def _note_hole(s, now, ss):
    """Keep the hole timer: started when a hole appears, restarted when delivery moves past one."""
    if ss[s, SS_HIGH] > ss[s, SS_EXPECTED]:
        if ss[s, SS_HOLE_SINCE] < 0 or ss[s, SS_HOLE_AT] != ss[s, SS_EXPECTED]:
            ss[s, SS_HOLE_SINCE] = now
            ss[s, SS_HOLE_AT] = ss[s, SS_EXPECTED]
    else:
        ss[s, SS_HOLE_SINCE] = -1
        ss[s, SS_REQ_TS] = -1
        ss[s, SS_REQ_END] = 0
        ss[s, SS_ANSWERED] = 0


@nb.njit(cache=True)
def _give_up(s, now, reason, limit, ss, lc, held, arenas, scal, out_buf, frames, events):
    """Skip the hole at SS_EXPECTED (up to the next held message, at most ``limit``), report it and
    release what follows. Returns the number of messages given up."""
    e = ss[s, SS_EXPECTED]
    end = min(_hole_end(s, ss, held, scal), limit)
    if end <= e:
        return 0
    ne = scal[S_OUT_EVENTS]
    if ne < events.shape[0]:
        events[ne, EV_SESSION] = s
        events[ne, EV_FIRST] = e
        events[ne, EV_END] = end
        events[ne, EV_TS] = now
        events[ne, EV_REASON] = reason
        scal[S_OUT_EVENTS] = ne + 1
    scal[S_GIVEN_UP] += 1
    scal[S_GIVEN_UP_MESSAGES] += end - e
    if reason == 1:
        scal[S_HOLD_FULL] += 1
    ss[s, SS_EXPECTED] = end
    ss[s, SS_REQ_TS] = -1
    ss[s, SS_REQ_END] = 0
    _release(s, ss, lc, held, arenas, scal, out_buf, frames)
    _note_hole(s, now, ss)
    return end - e


@nb.njit(cache=True)
def _compact(ss, held, arenas, scal):
    """Copy the held messages of every session into the spare arena and make it the active one."""
    src = arenas[scal[S_ARENA]]
    dst_i = 1 - scal[S_ARENA]
    dst = arenas[dst_i]
    w = scal[S_WINDOW]
    pos = 0
    for s in range(scal[S_SESSIONS]):
        if ss[s, SS_HELD] == 0:
            continue
        for r in range(s * w, (s + 1) * w):
            if held[r, H_SEQ] >= 0:
                off = held[r, H_OFFSET]
                n = held[r, H_META] & _LOW32
                dst[pos : pos + n] = src[off : off + n]
                held[r, H_OFFSET] = pos
                pos += n
    scal[S_ARENA] = dst_i
    scal[S_ARENA_USED] = pos
    scal[S_COMPACTIONS] += 1


@nb.njit(cache=True)
def _walk_message(buf, pos, mlen, seq, ts, flags, s, line, now, ss, lc, held, arenas, scal, out_buf, frames,
                  events):
    """Deliver, hold or drop one message of a packet."""
    e = ss[s, SS_EXPECTED]
    if seq < e:
        lc[line, LC_DUPLICATES] += 1
        return
    w = scal[S_WINDOW]
    while seq - ss[s, SS_EXPECTED] >= w:  # beyond the hold's window: the oldest hole has to go
        _give_up(s, now, 1, seq, ss, lc, held, arenas, scal, out_buf, frames, events)
    if seq > ss[s, SS_EXPECTED]:
        r = s * w + (seq & (w - 1))
        if held[r, H_SEQ] == seq:
            lc[line, LC_DUPLICATES] += 1
            return
        cap = arenas.shape[1]
        while seq > ss[s, SS_EXPECTED] and scal[S_ARENA_USED] + mlen > cap:
            if scal[S_HELD_TOTAL] == 0:
                scal[S_ARENA_USED] = 0
                if mlen > cap:  # larger than the whole hold: cannot wait for its hole
                    _give_up(s, now, 1, seq, ss, lc, held, arenas, scal, out_buf, frames, events)
                continue
            used = scal[S_ARENA_USED]
            _compact(ss, held, arenas, scal)
            if scal[S_ARENA_USED] + mlen > cap or scal[S_ARENA_USED] == used:
                _give_up(s, now, 1, seq, ss, lc, held, arenas, scal, out_buf, frames, events)
        if seq > ss[s, SS_EXPECTED]:
            if held[r, H_SEQ] == seq:  # a give-up released up to here and the slot was refilled: no
                lc[line, LC_DUPLICATES] += 1
                return
            arena = arenas[scal[S_ARENA]]
            at = scal[S_ARENA_USED]
            arena[at : at + mlen] = buf[pos : pos + mlen]
            held[r, H_SEQ] = seq
            held[r, H_OFFSET] = at
            held[r, H_META] = mlen | (flags << 32) | (np.int64(line) << 48)
            held[r, H_TS] = ts
            scal[S_ARENA_USED] = at + mlen
            ss[s, SS_HELD] += 1
            scal[S_HELD_TOTAL] += 1
            if scal[S_HELD_TOTAL] > scal[S_HELD_PEAK]:
                scal[S_HELD_PEAK] = scal[S_HELD_TOTAL]
            return
    if seq < ss[s, SS_EXPECTED]:  # a give-up for room skipped past it: it was delivered from the hold
        lc[line, LC_DUPLICATES] += 1
        return
    _emit(buf, pos, mlen, ts, seq, s, flags, out_buf, frames, scal)
    lc[line, LC_MESSAGES] += 1
    ss[s, SS_EXPECTED] = seq + 1
    if ss[s, SS_HELD] > 0:
        _release(s, ss, lc, held, arenas, scal, out_buf, frames)


@nb.njit(cache=True, nogil=True)
def _arbitrate(data, offset, length, ts_recv, start, line, now, names, ss, lc, held, arenas, scal, out_buf,
               frames, events):
    """Walk MoldUDP64 packets of one line from packet ``start`` on.

    Args:
        data: uint8 payloads; offset int64 / length int32 / ts_recv int64 per packet.
        start: index of the first packet to walk (a NEED_SESSION call resumes there).
        line: Line of every packet of the batch.
        now: ns since the epoch, for hole timers and give-ups.
        names: uint8 [session capacity, 10], names of the registered sessions.
        ss, lc, held, arenas, scal: the arbiter's state (see the column constants).
        out_buf, frames, events: outputs, written from ``scal[S_OUT_*]`` on; sized by the caller for
            every message of the batch plus everything held.

    Returns:
        (DONE, number of packets) or (NEED_SESSION, index of the packet with an unknown session).
    """
    n = data.shape[0]
    recovery = line == 2
    flag_line = _RECOVERED if recovery else np.int64(0)
    s = 0
    for p in range(start, offset.shape[0]):
        off = offset[p]
        plen = np.int64(length[p])
        ts = ts_recv[p]
        if off < 0 or plen < MOLD_HEADER_LEN or off + plen > n:
            lc[line, LC_BAD_PACKETS] += 1
            continue
        # which session: the previous packet's, usually
        same = s < scal[S_SESSIONS]
        if same:
            for k in range(MOLD_SESSION_LEN):
                if names[s, k] != data[off + k]:
                    same = False
                    break
        if not same:
            s = -1
            for c in range(scal[S_SESSIONS]):
                hit = True
                for k in range(MOLD_SESSION_LEN):
                    if names[c, k] != data[off + k]:
                        hit = False
                        break
                if hit:
                    s = c
                    break
            if s < 0:
                return NEED_SESSION, p
        lc[line, LC_PACKETS] += 1
        lc[line, LC_LAST_TS] = ts
        seq = _u64be(data, off + 10)
        count = _u16be(data, off + 18)
        carried = 0 if count == MOLD_END_OF_SESSION_COUNT else count
        if ss[s, SS_STARTED] == 0:
            ss[s, SS_STARTED] = 1
            first = scal[S_START_SEQ] if scal[S_START_SEQ] >= 0 else seq
            ss[s, SS_EXPECTED] = first
            ss[s, SS_HIGH] = first
        end = seq + carried
        lh = SS_LINE_HIGH + line
        if not recovery and ss[s, lh] > 0 and seq > ss[s, lh]:
            lc[line, LC_GAPS] += 1
            lc[line, LC_GAP_MESSAGES] += seq - ss[s, lh]
        if end > ss[s, lh]:
            ss[s, lh] = end
        if end > ss[s, SS_HIGH]:
            ss[s, SS_HIGH] = end
        if recovery:
            ss[s, SS_ANSWERED] = 1
        if carried == 0:
            lc[line, LC_HEARTBEATS] += 1
            _note_hole(s, now, ss)
            continue
        if end <= ss[s, SS_EXPECTED]:  # a copy of messages already delivered: nothing to walk
            lc[line, LC_DUPLICATES] += carried
            continue
        pos = off + MOLD_HEADER_LEN
        stop = off + plen
        # the common case runs inline (no call): the message is the next expected and nothing is held
        nf = scal[S_OUT_FRAMES]
        ob = scal[S_OUT_BYTES]
        expected = ss[s, SS_EXPECTED]
        delivered = 0
        duplicates = 0
        for i in range(carried):
            if pos + 2 > stop:
                lc[line, LC_BAD_PACKETS] += 1
                break
            mlen = _u16be(data, pos)
            if pos + 2 + mlen > stop:
                lc[line, LC_BAD_PACKETS] += 1
                break
            mseq = seq + i
            flags = flag_line | (_LAST if i == carried - 1 else np.int64(0))
            if mseq < expected:
                duplicates += 1
            elif mseq == expected and ss[s, SS_HELD] == 0:
                out_buf[ob : ob + mlen] = data[pos + 2 : pos + 2 + mlen]
                frames[nf].offset = ob
                frames[nf].ts_recv = ts
                frames[nf].sequence = mseq
                frames[nf].length = mlen
                frames[nf].session = s
                frames[nf].flags = flags
                nf += 1
                ob += mlen
                expected += 1
                delivered += 1
            else:
                scal[S_OUT_FRAMES] = nf
                scal[S_OUT_BYTES] = ob
                ss[s, SS_EXPECTED] = expected
                _walk_message(data, pos + 2, mlen, mseq, ts, flags, s, line, now, ss, lc, held, arenas, scal,
                              out_buf, frames, events)
                nf = scal[S_OUT_FRAMES]
                ob = scal[S_OUT_BYTES]
                expected = ss[s, SS_EXPECTED]
            pos += 2 + mlen
        scal[S_OUT_FRAMES] = nf
        scal[S_OUT_BYTES] = ob
        ss[s, SS_EXPECTED] = expected
        lc[line, LC_MESSAGES] += delivered
        lc[line, LC_DUPLICATES] += duplicates
        if ss[s, SS_HIGH] > expected or ss[s, SS_HOLE_SINCE] >= 0:
            _note_hole(s, now, ss)
    blocked = 0
    for c in range(scal[S_SESSIONS]):
        if ss[c, SS_HIGH] > ss[c, SS_EXPECTED]:
            blocked += 1
    scal[S_BLOCKED] = blocked
    return DONE, offset.shape[0]


@nb.njit(cache=True, nogil=True)
def _give_up_hole(s, now, ss, lc, held, arenas, scal, out_buf, frames, events):
    """Timer path of ``_give_up``: skip the hole of session ``s`` (timed out)."""
    given = _give_up(s, now, 0, ss[s, SS_HIGH], ss, lc, held, arenas, scal, out_buf, frames, events)
    blocked = 0
    for c in range(scal[S_SESSIONS]):
        if ss[c, SS_HIGH] > ss[c, SS_EXPECTED]:
            blocked += 1
    scal[S_BLOCKED] = blocked
    return given


@nb.njit(cache=True, nogil=True)
def _hole_end_of(s, ss, held, scal):
    return _hole_end(s, ss, held, scal)


# ---------------------------------------------------------------------------------------------------
# Python side


@dataclass(frozen=True)
class GapGivenUp:
    """A hole no line and no re-request filled in time: messages ``first``..``last`` are lost.

    Every instrument of ``session`` (the feed partition) must be flagged stale: the lost messages could
    have touched any of them.
    """

    session: str
    first: int
    last: int
    at_ns: int
    reason: GiveUpReason

    @property
    def messages(self) -> int:
        return self.last - self.first + 1

    stale_instruments = "all"  # of the session: lost messages could touch any instrument


@dataclass(frozen=True)
class LineSilent:
    """``line`` brought no packet since ``last_ns`` while another line delivered."""

    line: Line
    last_ns: int
    at_ns: int


@dataclass(frozen=True)
class LineResumed:
    line: Line
    at_ns: int
    silent_ns: int  # time between the line's last packet before the silence and its first after


Request = Callable[[bytes, int, int], object]


class Arbiter:
    """Arbitrates MoldUDP64 lines A and B (and re-request answers) into one gap-free message stream.

    Args:
        request: ``request(session, first, count)`` sends a MoldUDP64 re-request (``session`` is the
            10 bytes of the wire); None: holes are only waited for and given up.
        lines: live lines, 1 (A only) or 2 (A and B).
        expect_from: first sequence of each session (1 when joining a session from its start);
            None: the first packet seen starts the session.
        silent_ns: a line with no packet this long, while another delivers, is reported silent.
        request_delay_ns: re-request a hole this long after it appeared even if a live line has not
            gone past it yet.
        retry_ns: re-request again when a request got no answer this long.
        give_up_ns: give a hole up this long after it appeared (or after the last progress on it).
        max_request_messages: messages per re-request (the server's limit; at most 65534).
        hold_messages: hold slots per session (rounded up to a power of two): how far ahead of a hole
            messages are kept.
        hold_bytes: bytes of held messages at most (across sessions).
    """

    def __init__(self, request: Request | None = None, *, lines: int = 2, expect_from: int | None = None,
                 silent_ns: int = 1000 * MS, request_delay_ns: int = 2 * MS, retry_ns: int = 50 * MS,
                 give_up_ns: int = 1000 * MS, max_request_messages: int = 1000,
                 hold_messages: int = 1 << 16, hold_bytes: int = 16 << 20) -> None:
        if lines not in (1, 2):
            raise ValueError("lines must be 1 or 2")
        if not 1 <= max_request_messages <= MOLD_END_OF_SESSION_COUNT - 1:
            raise ValueError(f"max_request_messages must be within 1..{MOLD_END_OF_SESSION_COUNT - 1}")
        if hold_messages < 1 or hold_bytes < 1:
            raise ValueError("hold_messages and hold_bytes must be positive")
        self.request = request
        self.lines = lines
        self.silent_ns = int(silent_ns)
        self.request_delay_ns = int(request_delay_ns)
        self.retry_ns = int(retry_ns)
        self.give_up_ns = int(give_up_ns)
        self.max_request_messages = int(max_request_messages)
        window = 1 << max(0, int(hold_messages - 1).bit_length())
        self.sessions: list[str] = []
        self._session_names: list[bytes] = []
        self._names = np.zeros((1, MOLD_SESSION_LEN), np.uint8)
        self._ss = self._new_session_rows(1)
        self._lc = np.zeros((N_LINES, LC_COLUMNS), np.int64)
        self._lc[:, LC_LAST_TS] = -1
        self._held = np.full((window, H_COLUMNS), -1, np.int64)
        self._arenas = np.zeros((2, int(hold_bytes)), np.uint8)
        self._scal = np.zeros(S_COLUMNS, np.int64)
        self._scal[S_WINDOW] = window
        self._scal[S_START_SEQ] = -1 if expect_from is None else int(expect_from)
        self._out_buf = np.zeros(1 << 16, np.uint8)
        self._frames = np.zeros(1 << 12, FRAME_DTYPE)
        self._events = np.zeros((1 << 12, EV_COLUMNS), np.int64)
        self._silent = [False] * N_LINES
        self._silent_from = [0] * N_LINES  # last packet time of a silent line (or the first time seen)
        self._first_ts: int | None = None
        self._next_silence_check = 0
        self.requests = 0
        self.requested_messages = 0
        self.holes = 0  # holes re-requested (lost on every live line, or waited for too long)
        self.events: list = []  # GapGivenUp / LineSilent / LineResumed, oldest first; see take_events()

    @staticmethod
    def _new_session_rows(n: int) -> np.ndarray:
        rows = np.zeros((n, SS_COLUMNS), np.int64)
        rows[:, SS_HOLE_SINCE] = -1
        rows[:, SS_REQ_TS] = -1
        return rows

    # ------------------------------------------------------------------------------------- feeding
    def feed(self, batch: PacketBatch, line: int, now: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Arbitrate one batch of ``line``; return (buf, frames) of the messages now deliverable.

        ``now`` defaults to the batch's latest receive time; pass the wall clock when the batch may be
        old. The views are valid until the next ``feed``/``poll``.
        """
        if not 0 <= line < N_LINES or (line == LINE_B and self.lines == 1):
            raise ValueError(f"no line {line} on this arbiter")
        n = len(batch.offset)
        if now is None:  # the last packet's receive time (a batch is in arrival order)
            now = int(batch.ts_recv[n - 1]) if n else (self._first_ts or 0)
        if n and self._first_ts is None:
            self._first_ts = now
        payload = int(batch.length[0]) if n == 1 else int(batch.length.sum()) if n else 0
        self._reset_outputs(payload // 2 + 1, payload)
        offset = batch.offset if batch.offset.dtype == np.int64 else batch.offset.astype(np.int64)
        start = 0
        while start < n:
            code, start = _arbitrate(batch.data, offset, batch.length, batch.ts_recv, start, int(line), now,
                                     self._names, self._ss, self._lc, self._held, self._arenas, self._scal,
                                     self._out_buf, self._frames, self._events)
            if code == NEED_SESSION:
                at = int(offset[start])
                self._add_session(batch.data[at : at + MOLD_SESSION_LEN].tobytes())
        self._tick(now)
        return self._outputs()

    def poll(self, now: int) -> tuple[np.ndarray, np.ndarray]:
        """Run the timers (re-requests, retries, give-ups, silent lines) with no new packet."""
        self._reset_outputs(0, 0)
        self._tick(now)
        return self._outputs()

    def take_events(self) -> list:
        """The events reported since the last call (GapGivenUp, LineSilent, LineResumed)."""
        out, self.events = self.events, []
        return out

    # ------------------------------------------------------------------------------------- counters
    def stats(self) -> dict:
        """Counters: per line, and for the whole feed (recovered = messages the re-requests brought)."""
        lines = {}
        for line in range(N_LINES if self.lines == 2 else 1):
            lines[LINE_NAMES[line]] = self._line_stats(line)
        lines["recovery"] = self._line_stats(LINE_RECOVERY)
        scal = self._scal
        return {
            "lines": lines,
            "delivered": int(self._lc[:, LC_MESSAGES].sum()),
            "recovered": int(self._lc[LINE_RECOVERY, LC_MESSAGES]),
            "holes": self.holes,
            "requests": self.requests,
            "requested_messages": self.requested_messages,
            "given_up": int(scal[S_GIVEN_UP]),
            "given_up_messages": int(scal[S_GIVEN_UP_MESSAGES]),
            "given_up_hold_full": int(scal[S_HOLD_FULL]),
            "held": int(scal[S_HELD_TOTAL]),
            "held_peak": int(scal[S_HELD_PEAK]),
            "sessions": list(self.sessions),
        }

    def _line_stats(self, line: int) -> dict:
        row = self._lc[line]
        out = {"packets": int(row[LC_PACKETS]), "messages": int(row[LC_MESSAGES]),
               "duplicates": int(row[LC_DUPLICATES]), "heartbeats": int(row[LC_HEARTBEATS]),
               "bad_packets": int(row[LC_BAD_PACKETS])}
        if line != LINE_RECOVERY:
            out.update(gaps=int(row[LC_GAPS]), gap_messages=int(row[LC_GAP_MESSAGES]), silent=self._silent[line])
        return out

    def next_expected(self, session: str) -> int | None:
        """Next sequence to deliver on ``session``, None before its first packet."""
        if session not in self.sessions:
            return None
        return int(self._ss[self.sessions.index(session), SS_EXPECTED])

    # ------------------------------------------------------------------------------------- internals
    def _add_session(self, name: bytes) -> None:
        i = len(self.sessions)
        if i >= 0xFFFF:
            raise ValueError("more than 65535 MoldUDP64 sessions")
        if i >= self._names.shape[0]:
            grow = 2 * self._names.shape[0]
            window = int(self._scal[S_WINDOW])
            self._names = np.concatenate([self._names, np.zeros((grow - i, MOLD_SESSION_LEN), np.uint8)])
            self._ss = np.concatenate([self._ss, self._new_session_rows(grow - i)])
            self._held = np.concatenate([self._held, np.full(((grow - i) * window, H_COLUMNS), -1, np.int64)])
        self._names[i] = np.frombuffer(name, np.uint8)
        self._session_names.append(name)
        self.sessions.append(name.decode("ascii", errors="replace").rstrip(" "))
        self._scal[S_SESSIONS] = i + 1

    def _reset_outputs(self, messages: int, payload_bytes: int) -> None:
        scal = self._scal
        held, used = scal[S_HELD_TOTAL], scal[S_ARENA_USED]
        frames = messages + int(held) if held else messages
        size = payload_bytes + int(used) if used else payload_bytes
        if frames > self._frames.shape[0]:
            self._frames = np.zeros(max(frames, 2 * self._frames.shape[0]), FRAME_DTYPE)
        if frames + len(self.sessions) + 1 > self._events.shape[0]:
            self._events = np.zeros((max(frames + len(self.sessions) + 1, 2 * self._events.shape[0]), EV_COLUMNS),
                                    np.int64)
        if size > self._out_buf.shape[0]:
            self._out_buf = np.zeros(max(size, 2 * self._out_buf.shape[0]), np.uint8)
        scal[S_OUT_FRAMES] = 0
        scal[S_OUT_BYTES] = 0
        scal[S_OUT_EVENTS] = 0

    def _outputs(self) -> tuple[np.ndarray, np.ndarray]:
        scal = self._scal
        for row in self._events[: scal[S_OUT_EVENTS]] if scal[S_OUT_EVENTS] else ():
            s = int(row[EV_SESSION])
            self.events.append(GapGivenUp(self.sessions[s], int(row[EV_FIRST]), int(row[EV_END]) - 1,
                                          int(row[EV_TS]), GiveUpReason(int(row[EV_REASON]))))
        scal[S_OUT_EVENTS] = 0
        return self._out_buf[: scal[S_OUT_BYTES]], self._frames[: scal[S_OUT_FRAMES]]

    def _tick(self, now: int) -> None:
        """Per-hole decisions: re-request, retry, give up; silent lines."""
        self._check_silence(now)
        if not self._scal[S_BLOCKED]:
            return
        ss = self._ss
        n = len(self.sessions)
        for s in np.flatnonzero(ss[:n, SS_HIGH] > ss[:n, SS_EXPECTED]):
            s = int(s)
            while ss[s, SS_HIGH] > ss[s, SS_EXPECTED] and now - ss[s, SS_HOLE_SINCE] >= self.give_up_ns:
                _give_up_hole(s, now, ss, self._lc, self._held, self._arenas, self._scal, self._out_buf,
                              self._frames, self._events)
            if ss[s, SS_HIGH] > ss[s, SS_EXPECTED] and self.request is not None:
                self._maybe_request(s, now)

    def _maybe_request(self, s: int, now: int) -> None:
        ss = self._ss
        e = int(ss[s, SS_EXPECTED])
        req_ts = int(ss[s, SS_REQ_TS])
        if req_ts < 0 or e >= ss[s, SS_REQ_END]:
            live = [ln for ln in range(self.lines) if not self._silent[ln]]
            lost_everywhere = all(ss[s, SS_LINE_HIGH + ln] > e for ln in live)
            due = lost_everywhere or now - ss[s, SS_HOLE_SINCE] >= self.request_delay_ns
            if not due:
                return
            if req_ts < 0:
                self.holes += 1
        elif not (ss[s, SS_ANSWERED] or now - req_ts >= self.retry_ns):
            return
        end = int(_hole_end_of(s, ss, self._held, self._scal))
        count = min(end - e, self.max_request_messages)
        ss[s, SS_REQ_TS] = now
        ss[s, SS_REQ_END] = e + count
        ss[s, SS_ANSWERED] = 0
        self.requests += 1
        self.requested_messages += count
        self.request(self._session_names[s], e, count)

    def _check_silence(self, now: int) -> None:
        if self.lines < 2 or self._first_ts is None or now < self._next_silence_check:
            return
        self._next_silence_check = now + self.silent_ns // 16  # often enough; not on every batch
        last = self._lc[: self.lines, LC_LAST_TS]
        for line in range(self.lines):
            seen = int(last[line]) if last[line] >= 0 else self._first_ts
            quiet = now - seen > self.silent_ns
            if not self._silent[line] and quiet:
                others = any(last[o] >= 0 and now - int(last[o]) <= self.silent_ns
                             for o in range(self.lines) if o != line)
                if others:
                    self._silent[line] = True
                    self._silent_from[line] = seen
                    self.events.append(LineSilent(Line(line), int(last[line]), now))
            elif self._silent[line] and not quiet:
                self._silent[line] = False
                self.events.append(LineResumed(Line(line), now, seen - self._silent_from[line]))
