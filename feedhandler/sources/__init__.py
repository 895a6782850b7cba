"""Live packet sources: multicast socket, AF_PACKET ring, AF_XDP, shared-memory ring (see base.py).

``open_source(kind, **kwargs)`` builds one by name for the CLI and config; each kind's module is
imported only when asked for, so a machine without (say) BPF support still runs the socket source.
"""
from __future__ import annotations

from feedhandler.sources.base import (
    READ_TIMEOUT_S,
    BatchBuffers,
    PacketBatch,
    PacketSource,
    SourceError,
    empty_batch,
    int_to_ipv4,
    ipv4_to_int,
    parse_group_port,
)


def _socket_source():
    from feedhandler.sources.socket_source import SocketSource
    return SocketSource


def _shm_source():
    from feedhandler.sources.shm_ring import ShmSource
    return ShmSource


def _afpacket_source():
    from feedhandler.sources.afpacket import AfPacketSource
    return AfPacketSource


def _afxdp_source():
    from feedhandler.sources.afxdp import AfXdpSource
    return AfXdpSource


SOURCE_KINDS = {
    "socket": _socket_source,  # SocketSource(group, port, iface=None, source=None, rcvbuf=...)
    "shm": _shm_source,  # ShmSource(path)
    "afpacket": _afpacket_source,  # AfPacketSource(iface, groups_ports)
    "afxdp": _afxdp_source,  # AfXdpSource(iface, queue, groups_ports)
}


def open_source(kind: str, *args, **kwargs) -> PacketSource:
    """Open a packet source of ``kind`` (a key of ``SOURCE_KINDS``) with that class's arguments."""
    loader = SOURCE_KINDS.get(kind)
    if loader is None:
        raise SourceError(f"unknown packet source {kind!r} (expected one of {', '.join(SOURCE_KINDS)})")
    return loader()(*args, **kwargs)


__all__ = [
    "READ_TIMEOUT_S", "BatchBuffers", "PacketBatch", "PacketSource", "SourceError", "SOURCE_KINDS",
    "empty_batch", "int_to_ipv4", "ipv4_to_int", "open_source", "parse_group_port",
]
