"""Client SDK for strategy processes: market data as typed objects, over WebSocket or Redis.

    async for update in subscribe(["AAPL"], channels=["bbo"], url="ws://127.0.0.1:8765"):
        if isinstance(update, Quote):
            ...

What a subscriber gets (docs/websocket.md has the wire protocol):
- ``Quote`` (bbo), ``Depth`` (l2: the complete top N, best first), ``Trade``, ``Status``: frozen
  dataclasses, prices as ``Decimal`` (None for an empty side), times as int nanoseconds since the epoch.
- Per symbol, the snapshot first (``snapshot=True``: the state when the subscription started), then
  updates. ``seq`` only ever increases per (channel, symbol). Over WebSocket it counts that channel's
  updates of the symbol, so it goes up by exactly one unless a ``Gap`` came first.
- ``Gap(channel, symbol, dropped)`` is yielded in the stream where updates were lost: the server
  conflated or dropped ``dropped`` of them for a slow reader (the state that follows is current), or
  ``dropped=None`` after a reconnect (``reconnect=True``), when a fresh snapshot follows.
- Over Redis (``url="redis://..."``): snapshots come from ``md:{venue}:{symbol}:bbo:last`` (hash) and
  ``md:{venue}:{symbol}:l2:last`` (string), read after subscribing to ``md:{venue}:{symbol}:bbo|l2|trades``
  (status: ``md:{venue}:status``); channel messages already contained in a snapshot (``seq`` <= the
  snapshot's) are skipped. There ``seq`` is the venue's sequence number: increasing, not contiguous.
  Redis pub/sub does not say when it loses messages; a connection lost and re-established yields
  ``Gap(dropped=None)``.
- Errors the server reports (bad token, limits) raise ``ServerError``; they are not retried. A
  connection that cannot be made or is lost raises ``Disconnected`` (a ``ConnectionError``) unless
  ``reconnect=True``.
"""
from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import NamedTuple, Union

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake

CHANNELS = ("bbo", "l2", "trades", "status")
WILDCARD = "*"


class ServerError(Exception):
    """The server answered with an ``error`` message (and usually closed the connection)."""


class Disconnected(ConnectionError):
    """The connection could not be made or was lost (``reconnect=False``); ``__cause__`` says how."""


def _px(value) -> Decimal | None:
    return None if value is None or value == "" else Decimal(str(value))


@dataclass(frozen=True, slots=True)
class Quote:
    """Best bid and offer of a symbol."""

    symbol: str
    seq: int
    bid_px: Decimal | None
    bid_sz: int
    ask_px: Decimal | None
    ask_sz: int
    ts_event: int  # venue time, ns since the epoch
    ts_recv: int  # feed handler receive time, ns since the epoch
    snapshot: bool = False

    @property
    def mid(self) -> Decimal | None:
        if self.bid_px is None or self.ask_px is None:
            return None
        return (self.bid_px + self.ask_px) / 2

    @property
    def spread(self) -> Decimal | None:
        if self.bid_px is None or self.ask_px is None:
            return None
        return self.ask_px - self.bid_px


class Level(NamedTuple):
    price: Decimal
    size: int
    orders: int


@dataclass(frozen=True, slots=True)
class Depth:
    """The complete top N of both sides of a symbol, best level first."""

    symbol: str
    seq: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    ts_event: int
    ts_recv: int
    snapshot: bool = False


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    seq: int
    price: Decimal | None
    size: int
    side: str  # side of the resting order: "B", "A" or "N" (the aggressor took the other side)
    match_id: int
    printable: bool
    ts_event: int
    ts_recv: int


@dataclass(frozen=True, slots=True)
class Status:
    """Trading status (halt, LULD, ...); symbol "" for market-wide rows."""

    symbol: str
    seq: int
    kind: str
    state: str
    code: str
    reason: str
    ts_event: int


@dataclass(frozen=True, slots=True)
class Gap:
    """Updates of (channel, symbol) were lost: ``dropped`` of them, or an unknown number (None).

    ``symbol`` is None when the whole connection was lost (a reconnect): snapshots follow.
    """

    channel: str | None
    symbol: str | None
    dropped: int | None


Update = Union[Quote, Depth, Trade, Status, Gap]


def decode(message: dict) -> Update | None:
    """A typed object from one decoded JSON message; None for control replies (subscribed, pong, ...)."""
    kind = message.get("type")
    if kind == "bbo":
        return Quote(message["symbol"], int(message["seq"]), _px(message.get("bid_px")),
                     int(message.get("bid_sz") or 0),
                     _px(message.get("ask_px")), int(message.get("ask_sz") or 0), int(message.get("ts_event") or 0),
                     int(message.get("ts_recv") or 0), bool(message.get("snapshot", False)))
    if kind == "l2":
        return Depth(message["symbol"], int(message["seq"]),
                     tuple(Level(Decimal(str(p)), int(s), int(c)) for p, s, c in message["bids"]),
                     tuple(Level(Decimal(str(p)), int(s), int(c)) for p, s, c in message["asks"]),
                     int(message.get("ts_event") or 0), int(message.get("ts_recv") or 0),
                     bool(message.get("snapshot", False)))
    if kind == "trade":
        return Trade(message["symbol"], int(message["seq"]), _px(message.get("px")), int(message.get("sz") or 0),
                     message.get("side", "N"), int(message.get("match_id") or 0), bool(message.get("printable", True)),
                     int(message.get("ts_event") or 0), int(message.get("ts_recv") or 0))
    if kind == "status":
        return Status(message.get("symbol", ""), int(message.get("seq") or 0), message.get("kind", ""),
                      message.get("state", ""), message.get("code", ""), message.get("reason", ""),
                      int(message.get("ts_event") or 0))
    if kind == "gap":
        return Gap(message.get("channel"), message.get("symbol"), message.get("dropped"))
    if kind == "error":
        raise ServerError(message.get("message", "error"))
    return None


async def subscribe(symbols: Iterable[str] | str, channels: Iterable[str] = ("bbo",), url: str = "ws://127.0.0.1:8765",
                    *, token: str | None = None, venue: str = "nasdaq", reconnect: bool = False,
                    max_backoff_s: float = 5.0) -> AsyncIterator[Update]:
    """Yield market data for ``symbols`` (a list, or ``"*"`` for every symbol) on ``channels``.

    Args:
        symbols: symbols to follow, or ``"*"``.
        channels: any of ``bbo``, ``l2``, ``trades``, ``status``.
        url: ``ws://host:port`` (or ``wss://``) for the feed handler's WebSocket server, or
            ``redis://host:port/db`` (``rediss://``, ``unix://``) for its Redis publisher.
        token: the WebSocket server's token, when it requires one (sent as an ``auth`` op).
        venue: the venue name in Redis key names (``md:{venue}:...``); unused over WebSocket.
        reconnect: on a lost connection, yield ``Gap(None, None, None)``, reconnect with backoff, and
            resubscribe (fresh snapshots follow). Off: ``Disconnected`` is raised.
        max_backoff_s: the longest wait between reconnect attempts.
    """
    symbols = WILDCARD if symbols == WILDCARD or list(symbols) == [WILDCARD] else list(dict.fromkeys(symbols))
    channels = list(dict.fromkeys(channels))
    bad = [c for c in channels if c not in CHANNELS]
    if bad or not channels:
        raise ValueError(f"channels must be among {CHANNELS}, not {bad or channels}")
    if not symbols:
        raise ValueError("no symbols")
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("ws", "wss"):
        session_type = _WebSocketSession
    elif scheme in ("redis", "rediss", "unix"):
        session_type = _RedisSession
    else:
        raise ValueError(f"url must be ws://, wss://, redis://, rediss:// or unix://, not {url!r}")
    backoff = 0.1
    while True:
        session = session_type(url, symbols, channels, token, venue)
        try:
            await session.open()
            while (update := await session.next()) is not None:
                backoff = 0.1
                yield update
            return
        except (OSError, asyncio.TimeoutError, ConnectionClosed, InvalidHandshake, RedisConnectionError) as exc:
            if not reconnect:
                raise Disconnected(f"{url}: {type(exc).__name__}: {exc}") from exc
        finally:
            await session.close()
        yield Gap(None, None, None)
        await asyncio.sleep(backoff)
        backoff = min(2 * backoff, max_backoff_s)


# -- over WebSocket -------------------------------------------------------------------------------


class _WebSocketSession:
    def __init__(self, url: str, symbols, channels: list[str], token: str | None, venue: str) -> None:
        self.url, self.symbols, self.channels, self.token = url, symbols, channels, token
        self.ws = None

    async def open(self) -> None:
        self.ws = await connect(self.url, max_queue=1024, compression=None)
        if self.token is not None:
            await self.ws.send(json.dumps({"op": "auth", "token": self.token}))
        await self.ws.send(json.dumps({"op": "subscribe", "channels": self.channels, "symbols": self.symbols}))

    async def next(self) -> Update | None:
        """The next update; None once the server closed normally (1000)."""
        while True:
            try:
                raw = await self.ws.recv()
            except ConnectionClosedOK:
                if self.ws.close_code == 1000:
                    return None
                raise
            update = decode(json.loads(raw))
            if update is not None:
                return update

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


# -- over Redis -----------------------------------------------------------------------------------


class _RedisSession:
    def __init__(self, url: str, symbols, channels: list[str], token: str | None, venue: str) -> None:
        self.url, self.symbols, self.channels, self.venue = url, symbols, channels, venue
        self.prefix = f"md:{venue}:"
        self.client = None
        self.pubsub = None
        self.ready: collections.deque[Update] = collections.deque()  # snapshots, yielded first
        self.seen: dict[tuple[str, str], int] = {}  # (channel, symbol) -> seq of its snapshot
        self.status_symbols = None if symbols == WILDCARD else set(symbols)

    async def open(self) -> None:
        prefix, symbols = self.prefix, self.symbols
        self.client = aioredis.from_url(self.url)
        self.pubsub = self.client.pubsub()
        names, patterns = [], []
        for channel in self.channels:
            if channel == "status":
                names.append(f"{prefix}status")
            elif symbols == WILDCARD:
                patterns.append(f"{prefix}*:{channel}")
            else:
                names.extend(f"{prefix}{s}:{channel}" for s in symbols)
        if names:
            await self.pubsub.subscribe(*names)
        if patterns:
            await self.pubsub.psubscribe(*patterns)
        # Snapshots after subscribing: an update published in between is either in the snapshot
        # (seq <= the snapshot's: skipped in next()) or after it.
        for channel in ("bbo", "l2"):
            if channel not in self.channels:
                continue
            if symbols == WILDCARD:
                keys = sorted([k.decode() async for k in self.client.scan_iter(match=f"{prefix}*:{channel}:last",
                                                                               count=1000)])
            else:
                keys = [f"{prefix}{s}:{channel}:last" for s in symbols]
            for key in keys:
                symbol = key[len(prefix):-len(f":{channel}:last")]
                update = await self._snapshot(channel, key, symbol)
                if update is not None:
                    self.seen[(channel, symbol)] = update.seq
                    self.ready.append(update)

    async def _snapshot(self, channel: str, key: str, symbol: str) -> Update | None:
        if channel == "bbo":
            fields = await self.client.hgetall(key)
            if not fields:
                return None
            f = {k.decode(): v.decode() for k, v in fields.items()}
            return Quote(symbol, int(f.get("seq") or 0), _px(f.get("bid_px")), int(f.get("bid_sz") or 0),
                         _px(f.get("ask_px")), int(f.get("ask_sz") or 0), int(f.get("ts_event") or 0),
                         int(f.get("ts_recv") or 0), snapshot=True)
        raw = await self.client.get(key)
        if raw is None:
            return None
        return decode({**json.loads(raw), "snapshot": True})

    async def next(self) -> Update | None:
        if self.ready:
            return self.ready.popleft()
        while True:
            item = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if item is None or item["type"] not in ("message", "pmessage"):
                continue
            update = decode(json.loads(item["data"]))
            if update is None:
                continue
            if isinstance(update, Status):
                if self.status_symbols is None or not update.symbol or update.symbol in self.status_symbols:
                    return update
                continue
            channel = "bbo" if isinstance(update, Quote) else "l2" if isinstance(update, Depth) else "trades"
            last = self.seen.get((channel, update.symbol))
            if last is not None:
                if update.seq <= last:
                    continue  # already in the snapshot
                del self.seen[(channel, update.symbol)]
            return update

    async def close(self) -> None:
        if self.pubsub is not None:
            await self.pubsub.aclose()
        if self.client is not None:
            await self.client.aclose()
