"""The Redis trades stream: ``md:{venue}:trades``, for consumers that must not miss a trade.

Rules this module keeps:
- One stream per venue, capped with ``XADD ... MAXLEN ~ maxlen`` so it never grows without bound
  (``~`` lets Redis trim whole nodes: cheap, approximately maxlen entries, the newest kept).
- Each entry has one field, ``data``: the ``trade`` message of ``publish.encoding``, the same bytes
  the ``md:{venue}:{symbol}:trades`` channel and a WebSocket client get.
- This module builds commands and reads entries; ``publish.redis_pub.RedisPublisher`` sends the
  commands in its one pipeline per batch, off the hot path.

``price_to_str``, ``prices_to_str`` and ``symbols_for`` live in ``publish.encoding`` and are
re-exported here for the modules that import them from this one.
"""
from __future__ import annotations

import redis

from publish.encoding import price_to_str, prices_to_str, symbols_for

__all__ = ["DEFAULT_MAXLEN", "TRADE_STREAM_FIELD", "price_to_str", "prices_to_str", "read_trades",
           "symbols_for", "trades_key", "xadd_commands"]

TRADE_STREAM_FIELD = "data"
DEFAULT_MAXLEN = 1_000_000


def trades_key(venue: str) -> str:
    """The stream that holds ``venue``'s trades."""
    return f"md:{venue}:trades"


def xadd_commands(key: str, payloads: list[str | bytes], maxlen: int) -> list[tuple]:
    """``XADD key MAXLEN ~ maxlen * data payload`` per payload, for ``Pipeline.execute_command``."""
    if maxlen <= 0:
        raise ValueError("maxlen must be positive")
    head = ("XADD", key, "MAXLEN", "~", maxlen, "*", TRADE_STREAM_FIELD)
    return [(*head, payload) for payload in payloads]


def read_trades(client: redis.Redis, venue: str, after: str | bytes = "0-0",
                count: int | None = None) -> list[tuple[bytes, bytes]]:
    """Entries of ``md:{venue}:trades`` strictly after stream id ``after``: ``(id, data)``, oldest first.

    A consumer that keeps the last id it handled resumes with ``read_trades(client, venue, last_id)``;
    when ``after`` is older than the stream's first entry (trimmed by MAXLEN), the first entry returned
    is not the one after it: compare with ``XINFO STREAM``'s first-entry to detect the loss.
    """
    start = after if isinstance(after, str) else after.decode()
    entries = client.xrange(trades_key(venue), min=f"({start}", count=count)
    field = TRADE_STREAM_FIELD.encode()
    return [(entry_id, fields[field]) for entry_id, fields in entries]
