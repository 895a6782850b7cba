"""MoldUDP64 re-requests over UDP: the server that answers them from a capture, and the client.

Rules this module keeps:

- The server answers each valid request with one downstream packet (the spec's answer: as many of the
  requested messages as fit in ``max_payload`` bytes, from ``captures.rerequest``), unicast to the
  address the request came from. A malformed request, one for an unknown session or for messages the
  capture does not hold is counted and left unanswered. It runs on its own thread and counts
  requests; ``close()`` stops it.
- The client sends 20-byte request packets from its own UDP socket and reads the answers from that
  same socket as ``PacketBatch``es with kernel receive timestamps (a ``PacketSource``: the live loop
  polls it with the lines and feeds what it reads to the arbiter as ``LINE_RECOVERY``). Calling the
  client (``client(session, first, count)``) is the arbiter's ``request`` callable. It never asks for
  more than ``max_request_messages`` at once: a larger count is cut (the arbiter asks for the rest).
- Errors setting either up (bad address, port in use) raise ``RerequestError`` with one line.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time

from captures.reader import Capture, CaptureError, open_capture
from captures.rerequest import (
    DEFAULT_MAX_PAYLOAD,
    MAX_REQUEST_COUNT,
    MessageIndex,
    RerequestError,
    decode_request,
    encode_request,
)
from feedhandler.sources.base import MAX_UDP_PAYLOAD, READ_TIMEOUT_S, BatchBuffers, PacketBatch, wait_readable

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_CONTROL_LEN = socket.CMSG_SPACE(_TIMESPEC.size)

__all__ = ["RerequestClient", "RerequestError", "RerequestServer"]


def _bind_udp(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RerequestError(f"{what}: cannot bind UDP {host}:{port} ({reason})") from None
    return sock


class RerequestServer:
    """Answers MoldUDP64 re-requests for a capture on UDP ``host:port`` (port 0: any free port).

    Args:
        capture: a capture path, a ``Capture`` or a ``MessageIndex`` of one.
        host, port: where to listen.
        max_payload: largest answer payload, bytes.
        max_count: requests asking for more are answered as if they asked for this many.

    Use as a context manager, or ``start()`` / ``close()``. ``address`` is the bound (host, port).
    """

    def __init__(self, capture, host: str = "127.0.0.1", port: int = 0, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 max_count: int = MAX_REQUEST_COUNT) -> None:
        if isinstance(capture, MessageIndex):
            self.index = capture
        else:
            try:
                cap = capture if isinstance(capture, Capture) else open_capture(capture)
                self.index = MessageIndex.from_capture(cap)
            except CaptureError as exc:
                raise RerequestError(str(exc)) from None
        self.max_payload = int(max_payload)
        self.max_count = int(max_count)
        self._sock = _bind_udp(host, port, "re-request server")
        self.address: tuple[str, int] = self._sock.getsockname()
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts = dict(requests=0, answered=0, unanswered=0, bad_requests=0, messages_sent=0, bytes_sent=0)

    def start(self) -> "RerequestServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=f"rerequest-{self.address[1]}", daemon=True)
            self._thread.start()
        return self

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self._stop_r in ready:
                return
            try:
                payload, peer = self._sock.recvfrom(MAX_UDP_PAYLOAD)
            except OSError:
                return
            self._answer(payload, peer)

    def _answer(self, payload: bytes, peer) -> None:
        try:
            request = decode_request(payload)
        except RerequestError:
            self._count(bad_requests=1)
            return
        if request.count > self.max_count:
            request = type(request)(request.session, request.sequence, self.max_count)
        packet = self.index.answer(request, self.max_payload)
        if packet is None:
            self._count(requests=1, unanswered=1)
            return
        (count,) = struct.unpack_from(">H", packet, 18)
        try:
            self._sock.sendto(packet, peer)
        except OSError:
            self._count(requests=1, unanswered=1)
            return
        self._count(requests=1, answered=1, messages_sent=count, bytes_sent=len(packet))

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                self._counts[key] += value

    def stats(self) -> dict:
        """requests (well formed), answered, unanswered, bad_requests, messages_sent, bytes_sent."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
            if self._thread is not None:
                self._thread.join(5)
            os.close(self._stop_w)
            os.close(self._stop_r)
            self._stop_w = self._stop_r = -1
            self._sock.close()

    def __enter__(self) -> "RerequestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RerequestServer({self.address[0]}:{self.address[1]}, {self.index.messages} messages)"


class RerequestClient:
    """Sends MoldUDP64 re-requests to ``host:port`` and reads the answers (a ``PacketSource``).

    Args:
        host, port: the re-request server.
        bind_host: local address to send from (answers come back to it).
        max_request_messages: most messages one request asks for.
        max_packets: most answers one ``read()`` returns.
    """

    def __init__(self, host: str, port: int, bind_host: str = "0.0.0.0",
                 max_request_messages: int = MAX_REQUEST_COUNT, max_packets: int = 256) -> None:
        try:
            self.server = (socket.gethostbyname(host), int(port))
        except (OSError, ValueError):
            raise RerequestError(f"re-request server: cannot resolve {host!r}") from None
        if not 0 < self.server[1] < 65536:
            raise RerequestError(f"re-request server: port out of range: {port}")
        if not 1 <= max_request_messages <= MAX_REQUEST_COUNT:
            raise RerequestError(f"max_request_messages must be within 1..{MAX_REQUEST_COUNT}")
        self.max_request_messages = int(max_request_messages)
        self._sock = _bind_udp(bind_host, 0, "re-request client")
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.setblocking(False)
        self._buffers = BatchBuffers(max_packets, 1 << 20)  # answers are MTU-sized; room for any datagram kept
        self._port = self._sock.getsockname()[1]
        self._counts = dict(requests=0, requested_messages=0, packets=0, bytes=0, kernel_drops=0, no_kernel_ts=0,
                            send_errors=0)

    def request(self, session: bytes | str, sequence: int, count: int) -> int:
        """Ask for ``count`` messages (cut to ``max_request_messages``) of ``session`` from ``sequence``;
        return the count asked. A send the kernel refuses is counted, not raised (the arbiter retries)."""
        count = min(int(count), self.max_request_messages)
        packet = encode_request(session, sequence, count)
        try:
            self._sock.sendto(packet, self.server)
        except OSError:
            self._counts["send_errors"] += 1
            return 0
        self._counts["requests"] += 1
        self._counts["requested_messages"] += count
        return count

    __call__ = request

    def read(self, max_packets: int = 256, timeout: float | None = READ_TIMEOUT_S) -> PacketBatch:
        """Answers received so far (waiting up to ``timeout`` for the first), as a batch of views."""
        buffers = self._buffers
        limit = min(max_packets, buffers.max_packets)
        if timeout != 0 and not wait_readable(self._sock.fileno(), timeout):
            return buffers.batch(0, 0)
        data = memoryview(buffers.data)
        n = 0
        pos = 0
        while n < limit and pos + MAX_UDP_PAYLOAD <= len(data):
            try:
                got, ancdata, _, _ = self._sock.recvmsg_into([data[pos : pos + MAX_UDP_PAYLOAD]], _CONTROL_LEN)
            except (BlockingIOError, InterruptedError):
                break
            ts = -1
            for level, kind, raw in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(raw)
                    ts = sec * 1_000_000_000 + nsec
            if ts < 0:
                self._counts["no_kernel_ts"] += 1
                ts = time.time_ns()
            buffers.offset[n] = pos
            buffers.length[n] = got
            buffers.ts_recv[n] = ts
            buffers.group[n] = 0  # unicast answers: no group
            buffers.port[n] = self._port
            self._counts["packets"] += 1
            self._counts["bytes"] += got
            pos += got
            n += 1
        return buffers.batch(n, pos)

    def fileno(self) -> int:
        return self._sock.fileno()

    def stats(self) -> dict:
        """requests, requested_messages, packets (answers), bytes, kernel_drops (0: not measured),
        no_kernel_ts, send_errors."""
        return dict(self._counts)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "RerequestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RerequestClient(to {self.server[0]}:{self.server[1]})"

