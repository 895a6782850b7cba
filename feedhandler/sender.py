"""``feedhandler send``: a capture's MoldUDP64 packets to multicast, paced, on one or two lines.

Rules this module keeps:

- The packets are the capture's own: every UDP payload of a pcap/pcapng as captured, in file order; a
  BinaryFILE is packed into MoldUDP64 packets first (session ``BINARYFILE_MOLD_SESSION``, sequences
  from 1, up to ``max_payload`` bytes, messages within ``window_ns`` of each other share a packet)
  and ends with an end-of-session packet, as a MoldUDP64 server would send it.
- Pacing follows the capture's clock: packet i leaves ``(ts[i] - ts[0]) / speed`` after the first
  (``speed`` None: as fast as the socket takes them). A BinaryFILE has no receive times: its ITCH
  timestamps (ns since midnight) pace it. Packets due together leave in one burst, and the sender
  sleeps only until the next one is due.
- Line B gets every packet too, from its own socket: each burst goes to A, then to B, in one sendmmsg
  call per line (sendto per datagram where libc has no sendmmsg). Induced drops are drawn per line,
  independently, from one seeded generator, so a seed gives the same losses every run.
- With ``rerequest_port`` a ``RerequestServer`` answers MoldUDP64 re-requests for the capture on
  127.0.0.1 while sending (and ``linger`` seconds after).
- Problems the user can fix raise ``SendError`` with one line.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from captures.reader import CAPTURE_BINARYFILE, Capture, CaptureError, open_capture
from captures.rerequest import BINARYFILE_MOLD_SESSION, DEFAULT_MAX_PAYLOAD, MessageIndex, RerequestError
from feedhandler.pacing import parse_speed
from feedhandler.rerequest import RerequestServer
from feedhandler.sources.base import SourceError, parse_group_port
from feedhandler.sources.socket_source import IOVEC_DTYPE, MMSGHDR_DTYPE
from parsers.moldudp64 import MOLD_END_OF_SESSION_COUNT, MOLD_HEADER_LEN, pack_messages, plan_packets, session_bytes

ITCH_TIMESTAMP_OFFSET = 5  # ITCH 5.0: type(1) locate(2) tracking(2), then a 6-byte timestamp
_BURST_CHECK = 4096  # packets sent between looks at the stop flag when nothing has to wait
_MAX_SLEEP_S = 0.05  # sleep in short steps so a stop is noticed
_SENDMMSG_MAX = 1024  # datagrams per sendmmsg call (the kernel's UIO_MAXIOV)
_TRANSIENT = (errno.ENOBUFS, errno.EAGAIN)  # a full queue: count the datagram as not sent and go on


def _load_sendmmsg():
    try:
        fn = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SENDMMSG = _load_sendmmsg()


class SendError(Exception):
    """A send that cannot start or go on (bad capture, group, interface); one line."""


@dataclass
class CapturePackets:
    """MoldUDP64 payloads back to back: packet i is ``buf[offset[i]:offset[i] + length[i]]``."""

    buf: np.ndarray  # uint8
    offset: np.ndarray  # int64
    length: np.ndarray  # int64
    ts: np.ndarray  # int64 ns: receive time in the capture (pcap) or ITCH time since midnight (BinaryFILE)
    messages: int

    def __len__(self) -> int:
        return int(self.offset.shape[0])


def capture_packets(capture: Capture, max_payload: int = DEFAULT_MAX_PAYLOAD,
                    window_ns: int = 1000) -> CapturePackets:
    """The MoldUDP64 packets ``capture`` is sent as (see the module rules)."""
    if capture.kind != CAPTURE_BINARYFILE:
        table = capture.packet_table()
        rows = table.packets
        return CapturePackets(table.buf, rows["offset"].astype(np.int64), rows["length"].astype(np.int64),
                              rows["ts_recv"].astype(np.int64), capture.stats.messages)
    buf, frames = capture.frames()
    offsets = frames["offset"].astype(np.int64)
    lengths = frames["length"].astype(np.int64)
    ts = _itch_timestamps(buf, offsets, lengths)
    first, count, size, pkt_ts = plan_packets(lengths, ts, max_payload, window_ns)
    # the end-of-session packet: no message, the next sequence
    first = np.append(first, len(frames)).astype(np.int64)
    count = np.append(count, MOLD_END_OF_SESSION_COUNT).astype(np.int64)
    size = np.append(size, MOLD_HEADER_LEN).astype(np.int64)
    pkt_ts = np.append(pkt_ts, pkt_ts[-1] if len(pkt_ts) else 0).astype(np.int64)
    pos = np.zeros(len(first), np.int64)
    np.cumsum(size[:-1], out=pos[1:])
    out = np.empty(int(size.sum()), np.uint8)
    sequence = (first + 1).astype(np.uint64)
    pack_messages(out, pos, buf, offsets, lengths, first, count,
                  np.frombuffer(session_bytes(BINARYFILE_MOLD_SESSION), np.uint8), sequence)
    return CapturePackets(out, pos, size, pkt_ts, len(frames))


def _itch_timestamps(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """ITCH 5.0 message timestamps (ns since midnight, 6 bytes big endian), 0 for a message too short."""
    ts = np.zeros(offsets.shape[0], np.int64)
    ok = lengths >= ITCH_TIMESTAMP_OFFSET + 6
    at = offsets[ok] + ITCH_TIMESTAMP_OFFSET
    for k in range(6):
        ts[ok] = (ts[ok] << 8) | buf[at + k].astype(np.int64)
    return np.maximum.accumulate(ts) if ts.size else ts  # never backwards: pacing waits only forward


@dataclass
class LineCounts:
    group: str
    port: int
    sent: int = 0
    dropped: int = 0  # induced drops
    send_errors: int = 0  # datagrams the kernel refused (ENOBUFS, ...)


@dataclass
class SendSummary:
    capture: str
    packets: int
    messages: int
    lines: dict[str, LineCounts] = field(default_factory=dict)
    seconds: float = 0.0
    rerequests: dict | None = None  # the re-request server's counters, when it ran
    interrupted: bool = False

    def as_text(self) -> str:
        rate = self.packets / self.seconds if self.seconds > 0 else 0.0
        out = [f"{self.capture}: {self.packets:,} packets, {self.messages:,} messages in {self.seconds:.3f} s "
               f"({rate:,.0f} packets/s)"]
        for name, c in self.lines.items():
            errors = f", {c.send_errors:,} send errors" if c.send_errors else ""
            out.append(f"  line {name} {c.group}:{c.port}  sent {c.sent:,}  dropped {c.dropped:,}{errors}")
        if self.rerequests is not None:
            r = self.rerequests
            out.append(f"  re-requests  {r['requests']:,} answered {r['answered']:,} "
                       f"({r['messages_sent']:,} messages), bad {r['bad_requests']:,}")
        if self.interrupted:
            out.append("  interrupted")
        return "\n".join(out)


def _sender_socket(iface: str | None, ttl: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)  # receivers on this host hear it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        if iface is not None:
            try:
                index = socket.if_nametoindex(iface)
            except OSError:
                raise SendError(f"no network interface named {iface!r}") from None
            mreqn = struct.pack("4s4si", bytes(4), bytes(4), index)  # struct ip_mreqn: by interface index
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    except BaseException:
        sock.close()
        raise
    return sock


class Sender:
    """Sends ``packets`` to one or two (group, port) lines; ``run()`` does it and returns a summary.

    Args:
        packets: what to send (``capture_packets``).
        lines: [(group, port)] for A, optionally B.
        speed: None (max), 1 (the capture's pace) or N times faster.
        drop_rate: probability of dropping each packet, per line, independently.
        seed: seed of the drops.
        iface: send out of this interface (None: as routing says).
        ttl: multicast TTL.
        batched: one sendmmsg call per burst (up to 1024 datagrams) where libc has it; False (or no
            sendmmsg): one sendto per datagram.
    """

    def __init__(self, packets: CapturePackets, lines: list[tuple[str, int]], speed: float | None = 1.0,
                 drop_rate: float = 0.0, seed: int = 1, iface: str | None = None, ttl: int = 1,
                 batched: bool = True) -> None:
        if not 1 <= len(lines) <= 2:
            raise SendError("one or two lines (A, B)")
        if not 0.0 <= drop_rate < 1.0:
            raise SendError(f"--drop-rate must be within [0, 1): {drop_rate}")
        if not 0 <= ttl <= 255:
            raise SendError(f"--ttl must be within 0..255: {ttl}")
        if speed is not None and speed <= 0:
            raise SendError(f"speed must be positive: {speed}")
        self.packets = packets
        self.lines = lines
        self.speed = speed
        rng = np.random.default_rng(seed)
        self.drops = [rng.random(len(packets)) < drop_rate for _ in lines]  # drawn per line: independent
        self.iface = iface
        self.ttl = ttl
        self.batched = batched and _SENDMMSG is not None

    def run(self, stop: threading.Event | None = None, name: str = "") -> SendSummary:
        """Send every packet (or until ``stop`` is set or Ctrl-C); return what was sent and dropped."""
        pk = self.packets
        summary = SendSummary(name, len(pk), pk.messages,
                              {n: LineCounts(g, p) for n, (g, p) in zip("AB", self.lines)})
        socks: list[socket.socket] = []
        try:
            for _ in self.lines:
                socks.append(_sender_socket(self.iface, self.ttl))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        writers = [_LineWriter(sock, dest, pk, ~drops, count, self.batched)
                   for sock, dest, drops, count in zip(socks, self.lines, self.drops, summary.lines.values())]
        n = len(pk)
        due = np.zeros(n, np.float64)
        if self.speed is not None and n:
            due = np.maximum.accumulate(pk.ts - pk.ts[0]) / self.speed  # a clock step back waits for nothing
        started = time.monotonic_ns()
        i = 0
        try:
            while i < n:
                if stop is not None and stop.is_set():
                    summary.interrupted = True
                    break
                if self.speed is None:
                    j = min(n, i + _BURST_CHECK)
                else:
                    elapsed = time.monotonic_ns() - started
                    j = int(np.searchsorted(due, elapsed, side="right"))
                    if j <= i:
                        time.sleep(min((due[i] - elapsed) / 1e9, _MAX_SLEEP_S))
                        continue
                    j = min(j, i + _BURST_CHECK)
                for writer in writers:  # the burst on A, then the same burst on B
                    writer.send(i, j)
                i = j
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            for sock in socks:
                sock.close()
        summary.seconds = (time.monotonic_ns() - started) / 1e9
        return summary


class _LineWriter:
    """Sends packets [i, j) of a capture, those this line keeps, to one group, counting into ``counts``.

    The sendmmsg path fills preallocated ``mmsghdr``/``iovec`` arrays pointing straight into the
    capture buffer (no copy, no Python object per datagram) and sends a burst per call.
    """

    def __init__(self, sock: socket.socket, dest: tuple[str, int], packets: CapturePackets, keep: np.ndarray,
                 counts: "LineCounts", batched: bool) -> None:
        self.sock = sock
        self.dest = dest
        self.packets = packets
        self.keep = keep
        self.counts = counts
        self.batched = batched
        if batched:
            self._addr = ctypes.create_string_buffer(
                struct.pack("<H", socket.AF_INET) + struct.pack(">H", dest[1]) + socket.inet_aton(dest[0]) + bytes(8))
            self._hdr = np.zeros(_SENDMMSG_MAX, MMSGHDR_DTYPE)
            self._iov = np.zeros(_SENDMMSG_MAX, IOVEC_DTYPE)
            self._hdr["name"] = ctypes.addressof(self._addr)
            self._hdr["namelen"] = 16
            self._hdr["iov"] = self._iov.ctypes.data + IOVEC_DTYPE.itemsize * np.arange(_SENDMMSG_MAX, dtype=np.uint64)
            self._hdr["iovlen"] = 1
            self._base = packets.buf.ctypes.data
        else:
            self._view = memoryview(packets.buf)

    def send(self, i: int, j: int) -> None:
        wanted = np.flatnonzero(self.keep[i:j]) + i
        self.counts.dropped += (j - i) - len(wanted)
        if self.batched:
            for k in range(0, len(wanted), _SENDMMSG_MAX):
                self._send_many(wanted[k : k + _SENDMMSG_MAX])
            return
        offsets = self.packets.offset[wanted].tolist()
        ends = (self.packets.offset[wanted] + self.packets.length[wanted]).tolist()
        for start, end in zip(offsets, ends):
            try:
                self.sock.sendto(self._view[start:end], self.dest)
                self.counts.sent += 1
            except OSError as exc:
                self.counts.send_errors += 1
                if exc.errno not in _TRANSIENT:
                    raise SendError(f"sending to {self.dest[0]}:{self.dest[1]}: {exc.strerror}") from None

    def _send_many(self, idx: np.ndarray) -> None:
        n = len(idx)
        self._iov["base"][:n] = self._base + self.packets.offset[idx].astype(np.uint64)
        self._iov["len"][:n] = self.packets.length[idx]
        done = 0
        fd = self.sock.fileno()
        while done < n:
            sent = _SENDMMSG(fd, self._hdr.ctypes.data + done * MMSGHDR_DTYPE.itemsize, n - done, 0)
            if sent < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                self.counts.send_errors += 1  # the first datagram was refused (ENOBUFS, ...): skip it
                done += 1
                if err not in _TRANSIENT:
                    raise SendError(f"sending to {self.dest[0]}:{self.dest[1]}: {os.strerror(err)}")
                continue
            self.counts.sent += sent
            done += sent


def send_capture(path, group: str, b_group: str | None = None, speed: str = "1", drop_rate: float = 0.0,
                 seed: int = 1, iface: str | None = None, ttl: int = 1, rerequest_port: int | None = None,
                 linger: float = 0.0, stop: threading.Event | None = None) -> SendSummary:
    """``feedhandler send`` as a function: group strings are "GROUP:PORT", speed "1", "N" or "max"."""
    try:
        lines = [parse_group_port(group)] + ([parse_group_port(b_group)] if b_group else [])
    except SourceError as exc:
        raise SendError(str(exc)) from None
    try:
        pace = parse_speed(speed)
    except ValueError as exc:
        raise SendError(f"--speed: {exc}") from None
    try:
        capture = open_capture(path)
        packets = capture_packets(capture)
    except CaptureError as exc:
        raise SendError(str(exc)) from None
    sender = Sender(packets, lines, speed=pace, drop_rate=drop_rate, seed=seed, iface=iface, ttl=ttl)
    server = None
    if rerequest_port is not None:
        try:
            server = RerequestServer(MessageIndex.from_capture(capture), "127.0.0.1", rerequest_port).start()
        except RerequestError as exc:
            raise SendError(str(exc)) from None
    try:
        summary = sender.run(stop, name=str(path))
        if server is not None and linger > 0 and not summary.interrupted:
            try:
                if stop is not None:
                    stop.wait(linger)
                else:
                    time.sleep(linger)
            except KeyboardInterrupt:
                summary.interrupted = True
    finally:
        if server is not None:
            server.close()
    if server is not None:
        summary.rerequests = server.stats()
    return summary


def send_from_args(args) -> SendSummary:
    """The CLI verb: SIGTERM stops the send like Ctrl-C (the summary says it was interrupted)."""
    stop = threading.Event()
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        return send_capture(args.capture, args.group, args.b_group, args.speed, args.drop_rate, args.seed,
                            args.iface, args.ttl, args.rerequest_port, args.linger, stop)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
