"""Capture writers: venue messages in, a MoldUDP64 pcap or a Nasdaq BinaryFILE out.

Rules this module keeps:

- Messages come as one uint8 buffer plus offsets/lengths (or a FRAME_DTYPE array); nothing is made
  per message in Python. Compiled kernels lay out whole chunks of records in one preallocated buffer,
  which is written with one call per chunk (memory stays bounded for any number of messages).
- Packing: consecutive messages share a MoldUDP64 packet while it stays within ``max_payload`` and their
  ``ts_recv`` lie within ``window_ns`` of the packet's first; the record time is the latest ``ts_recv``
  in the packet (a message is never received before it was sent).
- Frames are Ethernet II / IPv4 (header checksum set, DF, no options) / UDP (checksum set unless
  disabled); a multicast destination gets its 01:00:5e MAC.
- The writers read what the readers read: ``captures.reader`` must give back the same messages,
  sequences and timestamps.
"""
from __future__ import annotations

import gzip as gzip_module
import ipaddress
import os
import struct
from dataclasses import dataclass

import numba as nb
import numpy as np

from captures.pcap import PCAP_MAGIC_NS, PCAP_MAGIC_US, LINKTYPE_ETHERNET
from parsers.frames import FRAME_DTYPE
from parsers.moldudp64 import (
    MOLD_END_OF_SESSION_COUNT,
    MOLD_HEADER_LEN,
    pack_messages,
    plan_packets,
    session_bytes,
)

_RECORD_HEADER_LEN = 16
_ETH_LEN = 14
_IP_LEN = 20
_UDP_LEN = 8
_FRAME_OVERHEAD = _ETH_LEN + _IP_LEN + _UDP_LEN  # link + network + transport bytes before the payload
_MAX_UDP_PAYLOAD = 65535 - _IP_LEN - _UDP_LEN
_CHUNK_PACKETS = 1 << 16


@dataclass
class WriteSummary:
    packets: int  # pcap records (MoldUDP64 packets) written, or messages for BinaryFILE
    messages: int
    bytes: int  # file size


@nb.njit(cache=True, nogil=True)
def _write_frame_headers(
    out: np.ndarray,
    rec_pos: np.ndarray,
    payload_len: np.ndarray,
    ts: np.ndarray,
    ts_div: int,
    ip_id0: int,
    eth_header: np.ndarray,
    src_ip: int,
    dst_ip: int,
    src_port: int,
    dst_port: int,
    ttl: int,
    udp_checksum: bool,
) -> None:
    """Write pcap record, Ethernet, IPv4 and UDP headers in front of already written payloads.

    Args:
        out: uint8 chunk buffer; payload p sits at ``rec_pos[p] + 16 + 42``.
        rec_pos: int64 per packet, where its pcap record starts in ``out``.
        payload_len: int64 per packet, UDP payload bytes.
        ts: int64 per packet, ns since the epoch.
        ts_div: 1 for a nanosecond pcap, 1000 for microseconds.
        ip_id0: IPv4 identification of the first packet (incremented per packet, mod 2**16).
        eth_header: uint8[14], destination MAC, source MAC, ethertype.
        src_ip, dst_ip: host-order IPv4 addresses; src_port, dst_port: UDP ports; ttl: IPv4 TTL.
        udp_checksum: compute the UDP checksum (else leave 0, "none", as IPv4 allows).

    Returns:
        None; ``out`` is written in place.
    """
    for p in range(rec_pos.shape[0]):
        r = rec_pos[p]
        plen = payload_len[p]
        frame_len = _FRAME_OVERHEAD + plen
        t = ts[p]
        sec = t // 1_000_000_000
        frac = (t - sec * 1_000_000_000) // ts_div
        for k in range(4):
            out[r + k] = np.uint8((sec >> (8 * k)) & 0xFF)
            out[r + 4 + k] = np.uint8((frac >> (8 * k)) & 0xFF)
            out[r + 8 + k] = np.uint8((frame_len >> (8 * k)) & 0xFF)
            out[r + 12 + k] = np.uint8((frame_len >> (8 * k)) & 0xFF)
        e = r + _RECORD_HEADER_LEN
        for k in range(_ETH_LEN):
            out[e + k] = eth_header[k]
        ip = e + _ETH_LEN
        total = _IP_LEN + _UDP_LEN + plen
        ident = (ip_id0 + p) & 0xFFFF
        out[ip + 0] = 0x45
        out[ip + 1] = 0
        out[ip + 2] = np.uint8(total >> 8)
        out[ip + 3] = np.uint8(total & 0xFF)
        out[ip + 4] = np.uint8(ident >> 8)
        out[ip + 5] = np.uint8(ident & 0xFF)
        out[ip + 6] = 0x40  # DF
        out[ip + 7] = 0
        out[ip + 8] = np.uint8(ttl)
        out[ip + 9] = 17
        out[ip + 10] = 0
        out[ip + 11] = 0
        for k in range(4):
            out[ip + 12 + k] = np.uint8((src_ip >> (24 - 8 * k)) & 0xFF)
            out[ip + 16 + k] = np.uint8((dst_ip >> (24 - 8 * k)) & 0xFF)
        s = 0
        for k in range(0, _IP_LEN, 2):
            s += (np.int64(out[ip + k]) << 8) | np.int64(out[ip + k + 1])
        while s > 0xFFFF:
            s = (s & 0xFFFF) + (s >> 16)
        c = 0xFFFF - s
        out[ip + 10] = np.uint8(c >> 8)
        out[ip + 11] = np.uint8(c & 0xFF)
        u = ip + _IP_LEN
        ulen = _UDP_LEN + plen
        out[u + 0] = np.uint8(src_port >> 8)
        out[u + 1] = np.uint8(src_port & 0xFF)
        out[u + 2] = np.uint8(dst_port >> 8)
        out[u + 3] = np.uint8(dst_port & 0xFF)
        out[u + 4] = np.uint8(ulen >> 8)
        out[u + 5] = np.uint8(ulen & 0xFF)
        out[u + 6] = 0
        out[u + 7] = 0
        if udp_checksum:
            s = (src_ip >> 16) + (src_ip & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF) + 17 + ulen
            end = u + ulen
            k = u
            while k + 1 < end:
                s += (np.int64(out[k]) << 8) | np.int64(out[k + 1])
                k += 2
            if k < end:
                s += np.int64(out[k]) << 8
            while s > 0xFFFF:
                s = (s & 0xFFFF) + (s >> 16)
            c = 0xFFFF - s
            if c == 0:
                c = 0xFFFF
            out[u + 6] = np.uint8(c >> 8)
            out[u + 7] = np.uint8(c & 0xFF)


@nb.njit(cache=True, nogil=True)
def _lay_out_binaryfile(out: np.ndarray, msg_buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> None:
    """Write each message as a 2-byte big-endian length and its bytes, back to back.

    Args:
        out: uint8 output, sum(lengths) + 2 * len(lengths) bytes.
        msg_buf: uint8 buffer holding the messages.
        offsets, lengths: per message, where it sits in ``msg_buf``.

    Returns:
        None; ``out`` is written in place.
    """
    pos = 0
    for i in range(offsets.shape[0]):
        ml = np.int64(lengths[i])
        out[pos] = np.uint8(ml >> 8)
        out[pos + 1] = np.uint8(ml & 0xFF)
        src = np.int64(offsets[i])
        for k in range(ml):
            out[pos + 2 + k] = msg_buf[src + k]
        pos += 2 + ml


def _message_columns(frames_or_offsets, lengths, ts_recv):
    """(offsets int64, lengths int64, ts_recv int64) from a FRAME_DTYPE array or separate columns."""
    arr = np.asarray(frames_or_offsets)
    if arr.dtype == FRAME_DTYPE:
        offsets = arr["offset"]
        lengths = arr["length"] if lengths is None else lengths
        ts_recv = arr["ts_recv"] if ts_recv is None else ts_recv
    else:
        offsets = arr
        if lengths is None:
            raise TypeError("lengths are required when offsets are given (or pass a FRAME_DTYPE array)")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    ts_recv = np.zeros(offsets.shape[0], np.int64) if ts_recv is None else np.ascontiguousarray(ts_recv, dtype=np.int64)
    if not offsets.shape == lengths.shape == ts_recv.shape or offsets.ndim != 1:
        raise ValueError("offsets, lengths and ts_recv must be 1-d and of one length")
    return offsets, lengths, ts_recv


def _check_bounds(messages_buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> None:
    if messages_buf.dtype != np.uint8 or messages_buf.ndim != 1:
        raise TypeError("messages_buf must be a 1-d uint8 array")
    if offsets.size and (
        offsets.min() < 0 or lengths.min() < 0 or lengths.max() > 0xFFFF or (offsets + lengths).max() > messages_buf.size
    ):
        raise ValueError("a message lies outside messages_buf or is longer than 65535 bytes")


def _mac_bytes(mac: str | bytes) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", "")) if isinstance(mac, str) else bytes(mac)
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def _default_dst_mac(dst_ip: int) -> bytes:
    if ipaddress.IPv4Address(dst_ip).is_multicast:
        low = dst_ip & 0x7FFFFF
        return bytes([0x01, 0x00, 0x5E, low >> 16, (low >> 8) & 0xFF, low & 0xFF])
    return b"\x02\x00\x00\x00\x00\x02"


def write_moldudp64_pcap(
    path: str | os.PathLike,
    messages_buf: np.ndarray,
    frames_or_offsets: np.ndarray,
    lengths: np.ndarray | None = None,
    ts_recv: np.ndarray | None = None,
    *,
    session: bytes | str = b"FEEDHNDLR1",
    start_sequence: int = 1,
    max_payload: int = 1400,
    window_ns: int = 1000,
    src_ip: str = "10.0.0.1",
    dst_ip: str = "239.1.1.1",
    src_port: int = 26400,
    dst_port: int = 26400,
    src_mac: str | bytes = "02:00:00:00:00:01",
    dst_mac: str | bytes | None = None,
    ttl: int = 32,
    nanosecond: bool = True,
    udp_checksum: bool = True,
    end_of_session: bool = False,
) -> WriteSummary:
    """Write messages as a MoldUDP64-over-UDP/IPv4/Ethernet classic pcap.

    ``frames_or_offsets`` is either a FRAME_DTYPE array (offsets, lengths and ts_recv taken from it
    unless given) or int offsets into ``messages_buf`` with ``lengths`` (and ``ts_recv``, int64 ns per
    message, 0 when omitted). Message ``i`` gets sequence ``start_sequence + i``. ``end_of_session``
    appends a MoldUDP64 end-of-session packet. Returns what was written.
    """
    offsets, lens, ts = _message_columns(frames_or_offsets, lengths, ts_recv)
    _check_bounds(messages_buf, offsets, lens)
    if not MOLD_HEADER_LEN + 2 <= max_payload <= _MAX_UDP_PAYLOAD:
        raise ValueError(f"max_payload must be within {MOLD_HEADER_LEN + 2}..{_MAX_UDP_PAYLOAD}")
    if lens.size and lens.max() + MOLD_HEADER_LEN + 2 > _MAX_UDP_PAYLOAD:
        raise ValueError("a message does not fit in a UDP datagram")
    first, count, size, pkt_ts = plan_packets(lens, ts, max_payload, window_ns)
    sequence = np.uint64(start_sequence) + first.astype(np.uint64)
    if end_of_session:
        first = np.append(first, offsets.shape[0])
        count = np.append(count, MOLD_END_OF_SESSION_COUNT)
        size = np.append(size, MOLD_HEADER_LEN)
        pkt_ts = np.append(pkt_ts, ts[-1] if ts.size else 0)
        sequence = np.append(sequence, np.uint64(start_sequence + offsets.shape[0]))
    sess = np.frombuffer(session_bytes(session), dtype=np.uint8)
    src = int(ipaddress.IPv4Address(src_ip))
    dst = int(ipaddress.IPv4Address(dst_ip))
    eth = np.frombuffer(
        (_mac_bytes(dst_mac) if dst_mac is not None else _default_dst_mac(dst)) + _mac_bytes(src_mac) + b"\x08\x00",
        dtype=np.uint8,
    )
    header = struct.pack("<IHHiIII", PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)
    written = 24
    with open(path, "wb") as f:
        f.write(header)
        for c0 in range(0, first.shape[0], _CHUNK_PACKETS):
            c1 = min(c0 + _CHUNK_PACKETS, first.shape[0])
            rec_len = size[c0:c1] + (_RECORD_HEADER_LEN + _FRAME_OVERHEAD)
            rec_pos = np.zeros(c1 - c0, np.int64)
            np.cumsum(rec_len[:-1], out=rec_pos[1:])
            out = np.empty(int(rec_len.sum()), np.uint8)
            pack_messages(
                out, rec_pos + (_RECORD_HEADER_LEN + _FRAME_OVERHEAD), messages_buf, offsets, lens,
                first[c0:c1], count[c0:c1], sess, sequence[c0:c1],
            )
            _write_frame_headers(
                out, rec_pos, size[c0:c1], pkt_ts[c0:c1], 1 if nanosecond else 1000, c0,
                eth, src, dst, src_port, dst_port, ttl, udp_checksum,
            )
            out.tofile(f)
            written += out.size
    return WriteSummary(packets=int(first.shape[0]), messages=int(offsets.shape[0]), bytes=written)


def write_binaryfile(
    path: str | os.PathLike,
    messages_buf: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray | None = None,
    gzip: bool = False,
) -> WriteSummary:
    """Write messages as a Nasdaq BinaryFILE (2-byte big-endian length before each), gzipped if asked.

    ``offsets`` may be a FRAME_DTYPE array, then ``lengths`` comes from it.
    """
    offs, lens, _ = _message_columns(offsets, lengths, None)
    _check_bounds(messages_buf, offs, lens)
    if lens.size and lens.min() == 0:
        raise ValueError("BinaryFILE cannot hold an empty message")
    out = np.empty(int(lens.sum()) + 2 * lens.shape[0], np.uint8)
    _lay_out_binaryfile(out, messages_buf, offs, lens)
    if gzip:
        with gzip_module.open(path, "wb", compresslevel=6) as f:
            f.write(memoryview(out))
    else:
        out.tofile(path)
    return WriteSummary(packets=int(offs.shape[0]), messages=int(offs.shape[0]), bytes=os.path.getsize(path))
