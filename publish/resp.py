"""Raw RESP for publishing: commands written by numba kernels into one buffer, replies counted the same way.

``publish.redis_pub`` sends a whole batch (thousands of PUBLISH, XADD, SET, HSET) as one buffer on one
connection and reads the replies back in bulk: no Python object per command or per reply, which is
what redis-py's pipeline costs (a few microseconds each).

Rules this module keeps:
- Kernels never allocate: before each command they check that its largest possible size fits and
  otherwise return ``NEED_ROOM`` with the command to start again from (``RespBuffer`` doubles).
- A key is ``key_prefix + symbol + key_suffix`` (``md:nasdaq:`` + ``AAPL`` + ``:bbo``); a message
  whose instrument has no symbol (index -1, or an empty one) is skipped when the key needs one, and
  the caller counts it.
- ``scan_replies`` parses replies without building them: simple strings, errors, integers, bulk
  strings and flat arrays of those (what PUBLISH, XADD, SET and HSET answer). It reports complete
  replies, the bytes they took, and where the first error reply starts; anything else is
  ``BAD_REPLY`` (the connection is then not to be trusted).
- ``RespConnection`` speaks to the server of a redis-py URL (``redis://``, ``rediss://``,
  ``unix://``, with user, password and db): AUTH, SELECT and PING on connect; ``execute`` sends a
  buffer and waits for its replies, raising redis-py's own exceptions, as a redis-py client would:
  ``redis.ConnectionError`` / ``redis.TimeoutError`` for the socket, ``RespError`` (a
  ``redis.ResponseError``: the first error reply, with how many there were) for the server's refusals.
- ``send`` does not wait: the replies are owed, and ``collect`` reads those that have arrived (or
  all of them, ``wait=True``), raising the same way. A publisher that sends a batch and goes on to
  the next one keeps one round trip and one sleep per batch off its path; at most ``MAX_OWED``
  replies are left unread before ``send`` waits for them. Once connected, the socket is blocking with
  kernel timeouts (no poll() before every send and receive: a write is one ``recv(MSG_DONTWAIT)``
  for the replies that came and one ``send``).
"""
from __future__ import annotations

import select
import socket
import ssl
import struct

import numba as nb
import numpy as np
import redis
from redis.connection import parse_url

from parsers.schema import UNDEF_PRICE
from publish.json_rows import DONE, MAX_NUMBER, NEED_ROOM, put, put_int, put_price_text, put_row, put_uint

BAD_REPLY = 2
MAX_OWED = 1 << 16  # replies a connection may leave unread (``send``) before it waits for them
_CRLF = np.frombuffer(b"\r\n", dtype=np.uint8).copy()
_EMPTY_BULK = np.frombuffer(b"$0\r\n\r\n", dtype=np.uint8).copy()


def _b(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8).copy()


def bulk(text: str | bytes) -> np.ndarray:
    """A RESP bulk string, as bytes for a kernel's fixed parts."""
    data = text.encode() if isinstance(text, str) else text
    return np.frombuffer(b"$%d\r\n%s\r\n" % (len(data), data), dtype=np.uint8).copy()


def command_head(name: str, args: int) -> np.ndarray:
    """``*<args + 1>`` and the command name as a bulk string."""
    return np.concatenate([_b(f"*{args + 1}\r\n"), bulk(name)])


def pack(*args: str | bytes | int) -> bytes:
    """One command as RESP bytes (for the few commands sent outside kernels: AUTH, SELECT, PING)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        data = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


# -- kernels: commands ----------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True, inline="always")
def _num_len(v):
    v = np.uint64(v)
    n = 1
    while v >= np.uint64(10):
        v //= np.uint64(10)
        n += 1
    return n


@nb.njit(cache=True, nogil=True)
def _put_bulk_len(out, pos, n):
    out[pos] = 36  # '$'
    pos = put_uint(out, pos + 1, np.uint64(n))
    return put(out, pos, _CRLF)


@nb.njit(cache=True, nogil=True)
def keyed_kernel(start, head, key_prefix, key_suffix, mid, use_symbol, syms, sym_raw, sym_raw_len, payload, pstart,
                 pend, out, pos, counts):
    """Per message k from ``start``: ``head``, the key, ``mid``, then payload k as a bulk string.

    Args:
        use_symbol: the key holds the message's symbol (``syms[k]``); messages without one are skipped.
        payload, pstart, pend: message bytes; message k is ``payload[pstart[k]:pend[k]]``.
        counts: [commands written, messages skipped], accumulated.

    Returns:
        (code, next message, end position).
    """
    total = pstart.shape[0]
    fixed = head.shape[0] + key_prefix.shape[0] + key_suffix.shape[0] + sym_raw.shape[1] + mid.shape[0] + 48
    for k in range(start, total):
        size = pend[k] - pstart[k]
        if pos + fixed + size > out.shape[0]:
            return NEED_ROOM, k, pos
        s = syms[k] if use_symbol else -1
        if use_symbol and (s < 0 or sym_raw_len[s] == 0):
            counts[1] += 1
            continue
        pos = put(out, pos, head)
        key_len = key_prefix.shape[0] + key_suffix.shape[0] + (sym_raw_len[s] if use_symbol else 0)
        pos = _put_bulk_len(out, pos, key_len)
        pos = put(out, pos, key_prefix)
        if use_symbol:
            pos = put_row(out, pos, sym_raw, s, sym_raw_len[s])
        pos = put(out, pos, key_suffix)
        pos = put(out, pos, _CRLF)
        pos = put(out, pos, mid)
        pos = _put_bulk_len(out, pos, size)
        first = pstart[k]
        for j in range(size):
            out[pos + j] = payload[first + j]
        pos = put(out, pos + size, _CRLF)
        counts[0] += 1
    return DONE, total, pos


_HSET_HEAD = command_head("HSET", 15)
_F_BID_PX, _F_BID_SZ, _F_ASK_PX, _F_ASK_SZ, _F_TS_EVENT, _F_TS_RECV, _F_SEQ = (bulk(f) for f in (
    "bid_px", "bid_sz", "ask_px", "ask_sz", "ts_event", "ts_recv", "seq"))
_UNDEF = np.int64(UNDEF_PRICE)


@nb.njit(cache=True, nogil=True)
def _put_bulk_uint(out, pos, value, scratch):
    end = put_uint(scratch, 0, value)
    pos = _put_bulk_len(out, pos, end)
    for j in range(end):
        out[pos + j] = scratch[j]
    return put(out, pos + end, _CRLF)


@nb.njit(cache=True, nogil=True)
def _put_bulk_int(out, pos, value, scratch):
    end = put_int(scratch, 0, value)
    pos = _put_bulk_len(out, pos, end)
    for j in range(end):
        out[pos + j] = scratch[j]
    return put(out, pos + end, _CRLF)


@nb.njit(cache=True, nogil=True)
def _put_bulk_price(out, pos, price, scratch):
    if price == _UNDEF:
        return put(out, pos, _EMPTY_BULK)
    end = put_price_text(scratch, 0, price)
    pos = _put_bulk_len(out, pos, end)
    for j in range(end):
        out[pos + j] = scratch[j]
    return put(out, pos + end, _CRLF)


@nb.njit(cache=True, nogil=True)
def bbo_hash_kernel(start, rows, which, syms, sym_raw, sym_raw_len, key_prefix, key_suffix, out, pos, counts):
    """``HSET <key_prefix><symbol><key_suffix>`` with the seven bbo:last fields, for rows ``which[start:]``.

    Values as Redis keeps them: prices as exact decimals ("" for none), the rest as decimal integers.
    """
    scratch = np.empty(32, dtype=np.uint8)
    fixed = 200 + key_prefix.shape[0] + key_suffix.shape[0] + sym_raw.shape[1] + 7 * (MAX_NUMBER + 8)
    for k in range(start, which.shape[0]):
        if pos + fixed > out.shape[0]:
            return NEED_ROOM, k, pos
        s = syms[k]
        if s < 0 or sym_raw_len[s] == 0:
            continue
        r = rows[which[k]]
        pos = put(out, pos, _HSET_HEAD)
        pos = _put_bulk_len(out, pos, key_prefix.shape[0] + sym_raw_len[s] + key_suffix.shape[0])
        pos = put(out, pos, key_prefix)
        pos = put_row(out, pos, sym_raw, s, sym_raw_len[s])
        pos = put(out, pos, key_suffix)
        pos = put(out, pos, _CRLF)
        pos = put(out, pos, _F_BID_PX)
        pos = _put_bulk_price(out, pos, r.bid_px, scratch)
        pos = put(out, pos, _F_BID_SZ)
        pos = _put_bulk_uint(out, pos, r.bid_sz, scratch)
        pos = put(out, pos, _F_ASK_PX)
        pos = _put_bulk_price(out, pos, r.ask_px, scratch)
        pos = put(out, pos, _F_ASK_SZ)
        pos = _put_bulk_uint(out, pos, r.ask_sz, scratch)
        pos = put(out, pos, _F_TS_EVENT)
        pos = _put_bulk_int(out, pos, r.ts_event, scratch)
        pos = put(out, pos, _F_TS_RECV)
        pos = _put_bulk_int(out, pos, r.ts_recv, scratch)
        pos = put(out, pos, _F_SEQ)
        pos = _put_bulk_uint(out, pos, r.sequence, scratch)
        counts[0] += 1
    return DONE, which.shape[0], pos


class RespBuffer:
    """A reusable command buffer: kernels append to it; ``data()`` is what to send."""

    def __init__(self, nbytes: int = 1 << 16) -> None:
        self.buf = np.empty(nbytes, dtype=np.uint8)
        self.pos = 0
        self.counts = np.zeros(2, dtype=np.int64)  # commands, skipped (no symbol)

    def clear(self) -> None:
        self.pos = 0
        self.counts[:] = 0

    def run(self, kernel, *args) -> None:
        """Call ``kernel(start, *args, out, pos, counts)`` until it is done, growing the buffer."""
        start = 0
        while True:
            code, start, self.pos = kernel(start, *args, self.buf, self.pos, self.counts)
            if code == DONE:
                return
            bigger = np.empty(2 * len(self.buf), dtype=np.uint8)
            bigger[:self.pos] = self.buf[:self.pos]
            self.buf = bigger

    @property
    def commands(self) -> int:
        return int(self.counts[0])

    @property
    def skipped(self) -> int:
        return int(self.counts[1])

    def data(self) -> bytes:
        return self.buf[:self.pos].tobytes()


# -- kernel: replies ------------------------------------------------------------------------------


@nb.njit(cache=True, nogil=True)
def _line_end(buf, i, end):
    """Index of the '\\r' of the CRLF ending the line at ``i``, or -1 if incomplete."""
    while i + 1 < end:
        if buf[i] == 13 and buf[i + 1] == 10:
            return i
        i += 1
    return -1


@nb.njit(cache=True, nogil=True)
def _parse_int(buf, a, b):
    neg = buf[a] == 45
    v = 0
    for i in range(a + 1 if neg else a, b):
        v = v * 10 + (buf[i] - 48)
    return -v if neg else v


@nb.njit(cache=True, nogil=True)
def _scalar(buf, i, end):
    """End of the scalar reply at ``i`` (simple, error, integer, bulk), -1 if incomplete, -2 if not a scalar."""
    t = buf[i]
    e = _line_end(buf, i + 1, end)
    if e < 0:
        return -1
    if t == 43 or t == 45 or t == 58:  # + - :
        return e + 2
    if t == 36:  # $
        n = _parse_int(buf, i + 1, e)
        if n < 0:
            return e + 2
        if e + 2 + n + 2 > end:
            return -1
        return e + 2 + n + 2
    return -2


@nb.njit(cache=True, nogil=True)
def scan_replies(buf, start, end, want):
    """Count complete replies in ``buf[start:end]``, at most ``want``.

    Returns:
        (code, replies, position after the last complete one, errors, start of the first error or -1).
    """
    i = start
    n = 0
    errors = 0
    first_error = -1
    while n < want and i < end:
        t = buf[i]
        if t == 42:  # '*': a flat array of scalars
            e = _line_end(buf, i + 1, end)
            if e < 0:
                break
            items = _parse_int(buf, i + 1, e)
            j = e + 2
            ok = True
            for _ in range(max(items, 0)):
                if j >= end:
                    ok = False
                    break
                k = _scalar(buf, j, end)
                if k == -2:
                    return BAD_REPLY, n, i, errors, first_error
                if k < 0:
                    ok = False
                    break
                j = k
            if not ok:
                break
            i = j
        else:
            k = _scalar(buf, i, end)
            if k == -2:
                return BAD_REPLY, n, i, errors, first_error
            if k < 0:
                break
            if t == 45:
                if first_error < 0:
                    first_error = i
                errors += 1
            i = k
        n += 1
    return DONE, n, i, errors, first_error


# -- the connection -------------------------------------------------------------------------------


class RespError(redis.ResponseError):
    """Error replies from the server (the first one's text; how many in ``count``)."""

    def __init__(self, text: str, count: int) -> None:
        super().__init__(f"{text} ({count} error replies)" if count > 1 else text)
        self.count = count


class RespConnection:
    """One connection to the Redis of a redis-py URL (see the module rules)."""

    def __init__(self, url: str, socket_timeout: float = 5.0, connect_timeout: float = 2.0) -> None:
        self.url = url
        self.options = parse_url(url)
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.sock: socket.socket | None = None
        self._rbuf = np.empty(1 << 16, dtype=np.uint8)
        self._rlen = 0
        self.owed = 0  # replies to commands sent and not read yet
        self._dontwait = False  # the socket is blocking with kernel timeouts (``_kernel_timeouts``)
        self.answered = 0  # replies read, ever (``collect``): a caller tells what a collect read by it

    def connect(self) -> None:
        try:
            self._connect()
        except socket.timeout as exc:
            raise redis.TimeoutError(f"Redis {self._where()}: connect timed out") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Redis {self._where()}: {exc.strerror or exc}") from exc

    def _where(self) -> str:
        o = self.options
        return o["path"] if "path" in o else f"{o.get('host', 'localhost')}:{o.get('port', 6379)}"

    def _connect(self) -> None:
        o = self.options
        if "path" in o:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(o["path"])
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection((o.get("host", "localhost"), int(o.get("port", 6379))),
                                            timeout=self.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.url.startswith("rediss://"):
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=o.get("host"))
        sock.settimeout(self.socket_timeout)
        self.sock = sock
        self._rlen = 0
        self.owed = 0
        try:
            hello = []
            if o.get("password"):
                hello.append(pack("AUTH", *([o["username"]] if o.get("username") else []), o["password"]))
            if int(o.get("db", 0) or 0):
                hello.append(pack("SELECT", int(o["db"])))
            hello.append(pack("PING"))
            self.execute(b"".join(hello), len(hello))
            self._kernel_timeouts(sock)
        except BaseException:
            self.close()
            raise

    def _kernel_timeouts(self, sock: socket.socket) -> None:
        """A blocking socket whose reads and writes the kernel times out (SO_RCVTIMEO, SO_SNDTIMEO):
        Python then makes one system call per send or receive, not a poll() before each, and a read
        that must not wait is one ``recv(MSG_DONTWAIT)``. (TLS sockets keep Python's timeout.)"""
        self._dontwait = False
        if isinstance(sock, ssl.SSLSocket):
            return
        seconds = int(self.socket_timeout)
        micros = int(round((self.socket_timeout - seconds) * 1e6))
        timeval = struct.pack("ll", seconds, micros)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        sock.settimeout(None)
        self._dontwait = True

    def execute(self, data: bytes | memoryview, replies: int) -> None:
        """Send ``data`` (``replies`` commands) and read their replies; raises on the first error reply
        (of those, or of replies ``send`` left owed, which are read first)."""
        self.send(data, replies)
        self.collect(wait=True)

    def send(self, data: bytes | memoryview, replies: int) -> None:
        """Send ``data`` (``replies`` commands); their replies are owed until ``collect`` reads them.

        Waits for the owed replies first when more than ``MAX_OWED`` are (raising as ``collect``)."""
        if self.sock is None:
            raise redis.ConnectionError("not connected to Redis")
        if self.owed > MAX_OWED:
            self.collect(wait=True)
        self._io(self.sock.sendall, data)
        self.owed += replies

    def collect(self, wait: bool = False) -> None:
        """Read the owed replies that have arrived (all of them, up to ``socket_timeout`` each read,
        with ``wait``); raises ``RespError`` if error replies were among them."""
        if not self.owed:
            if not wait and self.sock is not None:
                self._io(self._check_quiet)
            return
        if self.sock is None:
            raise redis.ConnectionError("not connected to Redis")
        _, errors, first = self._io(self._read, self.owed, wait)
        if errors:
            raise RespError(first, errors)
        if not wait and not self.owed:
            self._io(self._check_quiet)

    def _check_quiet(self) -> None:
        """Nothing owed: anything to read now is the server closing the connection (or a reply to
        nothing, as bad): raise rather than send into a dead connection."""
        n = self._recv_now()
        if n is not None:
            if n == 0:
                raise redis.ConnectionError(f"Redis {self._where()} closed the connection")
            raise redis.ConnectionError(f"Redis {self._where()}: a reply to no command")

    def _io(self, fn, *args):
        """``fn(*args)``, its socket errors as redis-py's (the connection is closed then)."""
        try:
            return fn(*args)
        except (socket.timeout, BlockingIOError) as exc:  # BlockingIOError: SO_RCVTIMEO / SO_SNDTIMEO
            self.close()
            raise redis.TimeoutError(f"Redis {self._where()}: no reply in {self.socket_timeout:g} s") from exc
        except OSError as exc:
            self.close()
            raise redis.ConnectionError(f"Redis {self._where()}: {exc.strerror or exc}") from exc
        except redis.ConnectionError:
            self.close()
            raise

    def _recv_now(self) -> int | None:
        """Read what has arrived without waiting: bytes read (0: the server closed), None if nothing."""
        if self._rlen == len(self._rbuf):
            bigger = np.empty(2 * len(self._rbuf), dtype=np.uint8)
            bigger[:self._rlen] = self._rbuf[:self._rlen]
            self._rbuf = bigger
        if self._dontwait:
            try:
                return self.sock.recv_into(memoryview(self._rbuf)[self._rlen:], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
        if not self._arrived():
            return None
        return self.sock.recv_into(memoryview(self._rbuf)[self._rlen:])

    def _arrived(self) -> bool:
        """Bytes to read now (a TLS socket may hold decrypted ones the kernel no longer has)."""
        pending = getattr(self.sock, "pending", None)
        return bool(pending and pending()) or bool(select.select([self.sock], [], [], 0)[0])

    def _read(self, want: int, wait: bool = True) -> tuple[int, int, str]:
        """(replies read, of which errors, the first error's text); stops early when ``wait`` is False
        and nothing more has arrived."""
        got = errors = 0
        first_error = ""
        while got < want:
            if wait:
                if self._rlen == len(self._rbuf):
                    bigger = np.empty(2 * len(self._rbuf), dtype=np.uint8)
                    bigger[:self._rlen] = self._rbuf[:self._rlen]
                    self._rbuf = bigger
                n = self.sock.recv_into(memoryview(self._rbuf)[self._rlen:])
            else:
                n = self._recv_now()
                if n is None:
                    break
            if n == 0:
                raise redis.ConnectionError(f"Redis {self._where()} closed the connection")
            self._rlen += n
            code, done, used, errs, at = scan_replies(self._rbuf, 0, self._rlen, want - got)
            if code != DONE:
                raise redis.ConnectionError(f"Redis {self._where()}: a reply that is not RESP")
            if errs and not first_error:
                stop = bytes(self._rbuf[at:used]).split(b"\r\n", 1)[0]
                first_error = stop[1:].decode(errors="replace")
            got += done
            self.owed -= done
            self.answered += done  # counted as read, even if the connection fails a moment later
            errors += errs
            rest = self._rlen - used
            if rest:
                self._rbuf[:rest] = self._rbuf[used:self._rlen].copy()
            self._rlen = rest
        return got, errors, first_error

    def close(self) -> None:
        self.owed = 0
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
