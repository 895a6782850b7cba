"""pcap and pcapng reading: a capture in, a table of UDP/IPv4 payloads out.

Rules this module keeps:

- The result is always one uint8 buffer plus a ``PACKET_DTYPE`` table whose ``offset``/``length`` point
  at UDP payloads inside that buffer; no bytes are copied and no Python object is made per packet for
  classic pcap (two compiled kernels: index the records, then decode link/IP/UDP headers).
- Timestamps are int64 ns since the epoch (microsecond pcaps are multiplied by 1000).
- Payload length is the UDP length minus 8, never the captured length (Ethernet pads short frames).
  A payload cut short by the snap length is kept with the bytes that exist and counted
  (``udp_truncated``) so a framer can keep the whole messages before the cut.
- Anything skipped is counted by name: ``not_ipv4``, ``not_udp``, ``ip_fragment``, ``bad_ip_header``,
  ``bad_udp_length``, ``unsupported_link_type``; a last record cut short is ``truncated_record`` and
  everything before it is kept; a pcapng block cut short or that dpkt cannot read counts the same.
- pcapng is the rare path: dpkt parses the blocks in Python, the packets are copied into one buffer and
  the same header kernel decodes them.
"""
from __future__ import annotations

import enum
import io
import struct
from dataclasses import dataclass, field

import dpkt
import dpkt.pcapng
import numba as nb
import numpy as np

PACKET_DTYPE = np.dtype(
    [
        ("ts_recv", "<i8"),  # ns since the Unix epoch, from the capture record
        ("offset", "<i8"),  # byte offset of the UDP payload in the capture buffer
        ("length", "<u4"),  # UDP payload length (UDP length - 8, cut to the captured bytes if short)
        ("src_ip", "<u4"),  # IPv4 address as a host-order integer (10.0.0.1 -> 0x0A000001)
        ("dst_ip", "<u4"),
        ("src_port", "<u2"),
        ("dst_port", "<u2"),
    ]
)

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_BOM_LE = struct.pack("<I", 0x1A2B3C4D)  # pcapng byte-order magic as a little-endian file stores it
_PCAP_HEADER_LEN = 24
_PCAP_RECORD_HEADER_LEN = 16

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_LINUX_SLL2 = 276

_ETHERTYPE_IPV4 = 0x0800
_IPPROTO_UDP = 17


class PcapCounter(enum.IntEnum):
    """Slots of the decode kernels' counter array; names are the anomaly keys, lower-cased."""

    TRUNCATED_RECORD = 0
    NOT_IPV4 = 1
    NOT_UDP = 2
    IP_FRAGMENT = 3
    BAD_IP_HEADER = 4
    BAD_UDP_LENGTH = 5
    UDP_TRUNCATED = 6
    UNSUPPORTED_LINK_TYPE = 7


_N_COUNTERS = len(PcapCounter)


class PcapFormatError(ValueError):
    """The bytes are not a pcap or pcapng file this module can read."""


@dataclass
class PacketTable:
    """UDP payloads of a capture: ``packets`` rows point into ``buf``."""

    buf: np.ndarray
    packets: np.ndarray
    anomalies: dict[str, int] = field(default_factory=dict)
    link_types: tuple[int, ...] = ()
    records: int = 0  # capture records read (every packet, UDP or not)


def pcap_magic(head: bytes) -> tuple[bool, bool] | None:
    """Return (swapped, nanosecond) for a classic pcap header, None if ``head`` is not one."""
    if len(head) < 4:
        return None
    le = struct.unpack("<I", head[:4])[0]
    be = struct.unpack(">I", head[:4])[0]
    for value, swapped in ((le, False), (be, True)):
        if value == PCAP_MAGIC_US:
            return swapped, False
        if value == PCAP_MAGIC_NS:
            return swapped, True
    return None


def is_pcapng(head: bytes) -> bool:
    return head[:4] == PCAPNG_MAGIC


def _counters_to_dict(counters: np.ndarray) -> dict[str, int]:
    return {c.name.lower(): int(counters[c]) for c in PcapCounter if counters[c]}


# ---------------------------------------------------------------------------------------------------
# kernels


@nb.njit(cache=True, inline="always")
def _u16be(buf: np.ndarray, i: int) -> int:
    return (np.int64(buf[i]) << 8) | np.int64(buf[i + 1])


@nb.njit(cache=True, inline="always")
def _u32be(buf: np.ndarray, i: int) -> int:
    return (
        (np.int64(buf[i]) << 24) | (np.int64(buf[i + 1]) << 16) | (np.int64(buf[i + 2]) << 8) | np.int64(buf[i + 3])
    )


@nb.njit(cache=True, inline="always")
def _u32(buf: np.ndarray, i: int, swapped: bool) -> int:
    if swapped:
        return _u32be(buf, i)
    return (
        (np.int64(buf[i + 3]) << 24) | (np.int64(buf[i + 2]) << 16) | (np.int64(buf[i + 1]) << 8) | np.int64(buf[i])
    )


@nb.njit(cache=True, nogil=True)
def _count_pcap_records(buf: np.ndarray, swapped: bool) -> tuple:
    """Count whole records of a classic pcap buffer.

    Args:
        buf: uint8 file contents, global header included.
        swapped: the file's byte order is big-endian.

    Returns:
        (number of whole records, True if the last record is cut short).
    """
    n = buf.shape[0]
    pos = _PCAP_HEADER_LEN
    count = 0
    while pos < n:
        if pos + _PCAP_RECORD_HEADER_LEN > n:
            return count, True
        incl = _u32(buf, pos + 8, swapped)
        if pos + _PCAP_RECORD_HEADER_LEN + incl > n:
            return count, True
        pos += _PCAP_RECORD_HEADER_LEN + incl
        count += 1
    return count, False


@nb.njit(cache=True, nogil=True)
def _index_pcap_records(buf: np.ndarray, swapped: bool, ts_scale: int, data_off: np.ndarray, caplen: np.ndarray, ts: np.ndarray) -> None:
    """Fill where each record's data starts, its captured length and its time in ns.

    Args:
        buf: uint8 file contents, global header included.
        swapped: the file's byte order is big-endian.
        ts_scale: ns per unit of the record's fraction field (1000 for microsecond pcaps, 1 for ns).
        data_off, caplen, ts: int64 outputs, sized by ``_count_pcap_records``.

    Returns:
        None; outputs written in place.
    """
    pos = _PCAP_HEADER_LEN
    for r in range(data_off.shape[0]):
        sec = _u32(buf, pos, swapped)
        frac = _u32(buf, pos + 4, swapped)
        incl = _u32(buf, pos + 8, swapped)
        ts[r] = sec * 1_000_000_000 + frac * ts_scale
        data_off[r] = pos + _PCAP_RECORD_HEADER_LEN
        caplen[r] = incl
        pos += _PCAP_RECORD_HEADER_LEN + incl


@nb.njit(cache=True, nogil=True)
def _decode_udp_records(
    buf: np.ndarray,
    data_off: np.ndarray,
    caplen: np.ndarray,
    ts: np.ndarray,
    link_type: np.ndarray,
    out: np.ndarray,
    counters: np.ndarray,
) -> int:
    """Decode link, IPv4 and UDP headers of captured records; keep the UDP/IPv4 payloads.

    Args:
        buf: uint8 buffer holding the records' data.
        data_off, caplen, ts: int64 per record: where its link-layer frame starts, its captured length,
            its receive time in ns.
        link_type: int64 per record, the pcap LINKTYPE_* of its frame.
        out: PACKET_DTYPE output with at least one row per record.
        counters: int64[len(PcapCounter)], incremented in place.

    Returns:
        number of rows written to ``out``.
    """
    k = 0
    for r in range(data_off.shape[0]):
        start = data_off[r]
        end = start + caplen[r]
        lt = link_type[r]
        # link layer -> IPv4 header position
        if lt == LINKTYPE_ETHERNET:
            pos = start + 12
            if pos + 2 > end:
                counters[PcapCounter.NOT_IPV4] += 1
                continue
            etype = _u16be(buf, pos)
            while etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:
                pos += 4
                if pos + 2 > end:
                    etype = -1
                    break
                etype = _u16be(buf, pos)
            if etype != _ETHERTYPE_IPV4:
                counters[PcapCounter.NOT_IPV4] += 1
                continue
            ip = pos + 2
        elif lt == LINKTYPE_LINUX_SLL:
            if start + 16 > end or _u16be(buf, start + 14) != _ETHERTYPE_IPV4:
                counters[PcapCounter.NOT_IPV4] += 1
                continue
            ip = start + 16
        elif lt == LINKTYPE_LINUX_SLL2:
            if start + 20 > end or _u16be(buf, start) != _ETHERTYPE_IPV4:
                counters[PcapCounter.NOT_IPV4] += 1
                continue
            ip = start + 20
        elif lt == LINKTYPE_RAW or lt == LINKTYPE_IPV4:
            ip = start
        else:
            counters[PcapCounter.UNSUPPORTED_LINK_TYPE] += 1
            continue
        # IPv4
        if ip + 20 > end or (buf[ip] >> 4) != 4:
            counters[PcapCounter.NOT_IPV4] += 1
            continue
        ihl = np.int64(buf[ip] & 0x0F) * 4
        if ihl < 20 or ip + ihl > end:
            counters[PcapCounter.BAD_IP_HEADER] += 1
            continue
        if buf[ip + 9] != _IPPROTO_UDP:
            counters[PcapCounter.NOT_UDP] += 1
            continue
        frag = _u16be(buf, ip + 6)
        if (frag & 0x2000) != 0 or (frag & 0x1FFF) != 0:  # more fragments, or not the first fragment
            counters[PcapCounter.IP_FRAGMENT] += 1
            continue
        # UDP
        udp = ip + ihl
        if udp + 8 > end:
            counters[PcapCounter.UDP_TRUNCATED] += 1
            continue
        ulen = _u16be(buf, udp + 4)
        if ulen < 8:
            counters[PcapCounter.BAD_UDP_LENGTH] += 1
            continue
        plen = ulen - 8
        if udp + 8 + plen > end:
            counters[PcapCounter.UDP_TRUNCATED] += 1
            plen = end - udp - 8
        out[k].ts_recv = ts[r]
        out[k].offset = udp + 8
        out[k].length = plen
        out[k].src_ip = _u32be(buf, ip + 12)
        out[k].dst_ip = _u32be(buf, ip + 16)
        out[k].src_port = _u16be(buf, udp)
        out[k].dst_port = _u16be(buf, udp + 2)
        k += 1
    return k


# ---------------------------------------------------------------------------------------------------
# classic pcap


def parse_pcap_buffer(buf: np.ndarray) -> PacketTable:
    """Return the UDP/IPv4 payloads of a classic pcap held in ``buf`` (uint8, whole file).

    Raises ``PcapFormatError`` when the global header is missing or has an unknown magic.
    """
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise TypeError("parse_pcap_buffer wants a 1-d uint8 array")
    head = buf[:_PCAP_HEADER_LEN].tobytes()
    magic = pcap_magic(head)
    if magic is None:
        raise PcapFormatError("not a pcap file (bad magic)")
    if len(head) < _PCAP_HEADER_LEN:
        raise PcapFormatError("pcap global header cut short")
    swapped, nanosecond = magic
    link_type = struct.unpack(">I" if swapped else "<I", head[20:24])[0] & 0xFFFF  # upper bits: FCS info
    n, truncated = _count_pcap_records(buf, swapped)
    data_off = np.empty(n, np.int64)
    caplen = np.empty(n, np.int64)
    ts = np.empty(n, np.int64)
    _index_pcap_records(buf, swapped, 1 if nanosecond else 1000, data_off, caplen, ts)
    counters = np.zeros(_N_COUNTERS, np.int64)
    counters[PcapCounter.TRUNCATED_RECORD] = int(truncated)
    out = np.empty(n, PACKET_DTYPE)
    k = _decode_udp_records(buf, data_off, caplen, ts, np.full(n, link_type, np.int64), out, counters)
    return PacketTable(buf, out[:k], _counters_to_dict(counters), (link_type,), n)


def read_pcap(path) -> PacketTable:
    """Read a classic pcap file (microsecond or nanosecond, either byte order) into a PacketTable."""
    return parse_pcap_buffer(np.fromfile(path, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------------
# pcapng (dpkt)


def _ticks_to_ns(ticks: int, tsresol: int, tsoffset_s: int) -> int:
    """Exact ns from a pcapng timestamp (integers only: floats lose ns at today's epoch)."""
    if tsresol & 0x80:
        ns = (ticks * 1_000_000_000) >> (tsresol & 0x7F)
    else:
        exp = tsresol & 0x7F
        ns = ticks * 10 ** (9 - exp) if exp <= 9 else ticks // 10 ** (exp - 9)
    return ns + tsoffset_s * 1_000_000_000


def _interface(idb) -> tuple[int, int, int]:
    """(link type, if_tsresol, if_tsoffset seconds) of an interface description block."""
    tsresol, tsoffset = 6, 0
    for opt in idb.opts:
        if opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and len(opt.data) >= 1:
            tsresol = opt.data[0]
        elif opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET and len(opt.data) >= 8:
            tsoffset = struct.unpack("<q" if isinstance(idb, dpkt.pcapng.InterfaceDescriptionBlockLE) else ">q", opt.data[:8])[0]
    return idb.linktype, tsresol, tsoffset


def parse_pcapng_bytes(data: bytes) -> PacketTable:
    """Return the UDP/IPv4 payloads of a pcapng file held in ``data``.

    dpkt reads the section header and blocks; packet data is copied into one buffer and decoded by the
    same kernel as classic pcap. A block cut short or unreadable ends the walk (``truncated_record``).
    Raises ``PcapFormatError`` when dpkt rejects the section header.
    """
    f = io.BytesIO(data)
    try:
        reader = dpkt.pcapng.Reader(f)
    except (ValueError, dpkt.UnpackError, dpkt.NeedData, struct.error) as exc:
        raise PcapFormatError(f"not a readable pcapng file: {exc}") from None
    le = data[8:12] == _BOM_LE  # byte order of the section header dpkt just read
    interfaces = [_interface(reader.idb)]
    chunks: list[bytes] = []
    lengths: list[int] = []
    stamps: list[int] = []
    links: list[int] = []
    truncated = 0
    EPB, PB, IDB = dpkt.pcapng.PCAPNG_BT_EPB, dpkt.pcapng.PCAPNG_BT_PB, dpkt.pcapng.PCAPNG_BT_IDB
    while True:
        head = f.read(8)
        if not head:
            break
        if len(head) < 8:
            truncated = 1
            break
        blk_type, blk_len = struct.unpack("<II" if le else ">II", head)
        if blk_type == dpkt.pcapng.PCAPNG_BT_SHB:
            # a new section may change byte order and restarts interface numbering
            le = f.read(4) == _BOM_LE
            blk_len = struct.unpack("<I" if le else ">I", head[4:8])[0]
            if blk_len < 12 or len(f.read(blk_len - 12)) < blk_len - 12:
                truncated = 1
                break
            interfaces = []
            continue
        if blk_len < 12:
            truncated = 1
            break
        body = f.read(blk_len - 8)
        if len(body) < blk_len - 8:
            truncated = 1
            break
        block = head + body
        try:
            if blk_type == IDB:
                cls = dpkt.pcapng.InterfaceDescriptionBlockLE if le else dpkt.pcapng.InterfaceDescriptionBlock
                interfaces.append(_interface(cls(block)))
            elif blk_type in (EPB, PB):
                if blk_type == EPB:
                    cls = dpkt.pcapng.EnhancedPacketBlockLE if le else dpkt.pcapng.EnhancedPacketBlock
                else:
                    cls = dpkt.pcapng.PacketBlockLE if le else dpkt.pcapng.PacketBlock
                pkt = cls(block)
                iface = pkt.iface_id if blk_type == EPB else pkt.if_id
                if iface >= len(interfaces):
                    truncated = 1
                    break
                link, tsresol, tsoffset = interfaces[iface]
                chunks.append(bytes(pkt.pkt_data))
                lengths.append(len(pkt.pkt_data))
                stamps.append(_ticks_to_ns((pkt.ts_high << 32) | pkt.ts_low, tsresol, tsoffset))
                links.append(link)
        except (dpkt.UnpackError, dpkt.NeedData, struct.error, ValueError):
            truncated = 1
            break
    n = len(chunks)
    buf = np.frombuffer(b"".join(chunks), dtype=np.uint8) if n else np.zeros(0, np.uint8)
    caplen = np.array(lengths, dtype=np.int64)
    data_off = np.zeros(n, np.int64)
    if n > 1:
        np.cumsum(caplen[:-1], out=data_off[1:])
    counters = np.zeros(_N_COUNTERS, np.int64)
    out = np.empty(n, PACKET_DTYPE)
    link_arr = np.array(links, dtype=np.int64)
    k = _decode_udp_records(buf, data_off, caplen, np.array(stamps, dtype=np.int64), link_arr, out, counters)
    anomalies = _counters_to_dict(counters)
    if truncated:
        anomalies["truncated_record"] = truncated
    return PacketTable(buf, out[:k], anomalies, tuple(sorted(set(links))), n)


def read_pcapng(path) -> PacketTable:
    """Read a pcapng file into a PacketTable (see ``parse_pcapng_bytes``)."""
    with open(path, "rb") as f:
        return parse_pcapng_bytes(f.read())
