"""The WebSocket market-data protocol without I/O: latest state, subscriptions, per-client queues.

Shaped like websockets' own ``protocol.py``: the driver (``publish.websocket_server``) feeds it what
happened, with the time as an argument, and asks what to send. No socket, no clock, no threads.

    hub = Hub(depth=10)
    cid = hub.connect(now, url_token=None)   # a new connection (may already be refused: see closing())
    hub.receive(cid, text, now)              # a text frame from the client
    woken = hub.apply(batch, now)            # a MarketBatch: the clients that have something new
    hub.data_to_send(cid, limit)             # JSON texts to send, oldest first; this is the client's "read"
    hub.closing(cid)                         # (code, reason, flush) once the client is to be closed
    hub.tick(now)                            # clients newly closed by a timer (stuck, auth timeout)
    hub.disconnect(cid)                      # the connection is gone

Rules this module keeps (docs/websocket.md is the user-facing version):
- Messages have ``publish.encoding``'s shapes (the ones Redis carries), with two changes: ``seq`` is
  this hub's counter (below), not the venue's sequence number, and bbo/l2 carry ``snapshot``.
- State per symbol: the last BBO, and the complete top ``depth`` of both sides rebuilt from L2 rows
  (unconflated rows are deltas upserted by price, the N best kept after each update; a SNAPSHOT-flagged
  update replaces the symbol's levels). An ``l2`` message always carries the complete top N.
- ``seq`` counts the updates of one symbol on one channel: 1, 2, 3, ... A snapshot carries the seq of
  the last update it includes; a client that received every update sees seq go up by exactly 1.
- One message per BBO row, trade row and status row; one ``l2`` message per symbol per batch (the
  state after the batch's last update of that symbol).
- Each client has a bounded queue (``max_queue`` messages, control replies aside). When it is full,
  bbo/l2 conflate (latest state wins per channel and symbol, parked outside the queue until there is
  room) and trades/status drop oldest; either way the client then gets ``{"type": "gap", "channel",
  "symbol", "dropped": n}`` before the next message of that channel and symbol, n counting the updates
  it will never see (so seq jumps by n + 1).
- A client whose queue overflowed and that has taken nothing for ``stuck_s`` seconds is closed with
  1013 (try again later), without flushing. Refused auth and protocol misuse close with 1008, too many
  connections with 1013, both after the error message is sent.
- Order entry (only with an ``order_handler``): a client that authenticated with one of ``users``'
  tokens acts as that user. ``order``, ``cancel`` and ``modify`` requests go to
  ``order_handler(user, request)``, which returns ``(user, message)`` pairs (acks, rejects, fills...)
  or raises ValueError with a one-line reason (answered as an error). Those messages reach every
  connection of that user and no one else, as control replies: never conflated or dropped. This
  module knows nothing of orders: the handler (``feedhandler.order_gateway``) does.

    hub.deliver(pairs)                       # order messages from elsewhere (fills from the feed): woken
    hub.pop_woken()                          # other clients a receive() gave something to (order fills)
"""
from __future__ import annotations

import collections
import hmac
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from publish.encoding import dumps, status_dicts
from publish.json_rows import (
    TAIL_UPDATE,
    L2Books,
    Messages,
    SymbolCache,
    SymbolTable,
    bbo_messages,
    trade_messages,
)

CHANNELS = ("bbo", "l2", "trades", "status")
STATE_CHANNELS = frozenset({"bbo", "l2"})  # latest state wins; the others are events
WILDCARD = "*"

CLOSE_POLICY_VIOLATION = 1008  # auth refused or missing, malformed use of the protocol
CLOSE_TRY_AGAIN_LATER = 1013  # too many connections; a client too slow to keep up

Key = tuple[str, str]  # (channel, symbol)
_UPDATE_END, _SNAPSHOT_END = '"snapshot":false}', '"snapshot":true}'  # how an update / a snapshot ends


# -- one client -----------------------------------------------------------------------------------

_CONTROL, _STATE, _EVENT = 0, 1, 2


@dataclass
class _Parked:
    """Overflow of one (channel, symbol): updates not delivered, and the latest state to deliver."""

    dropped: int = 0
    latest: str | None = None  # state channels: the newest message, sent once there is room


@dataclass
class _Client:
    id: int
    connected_at: float
    authed: bool
    subs: set[Key] = field(default_factory=set)
    wild: set[str] = field(default_factory=set)  # channels subscribed for every symbol
    queue: collections.deque = field(default_factory=collections.deque)  # [kind, key, text, gap dropped]
    parked: dict[Key, _Parked] = field(default_factory=dict)  # insertion order = flush order
    data_len: int = 0  # queued messages that count against max_queue (control replies do not)
    stuck_since: float | None = None
    close: tuple[int, str, bool] | None = None  # code, reason, flush queued messages first
    user: str | None = None  # set by a user token: order entry acts for this user


class Hub:
    """Latest market state and every client's subscriptions and outgoing queue (see the module rules).

    Args:
        depth: N of the top-N depth kept per symbol (at most the book engine's depth).
        token: when set, a client must present it (``?token=`` in the URL or an ``auth`` op first).
        max_clients: connections beyond this are refused with an error and close 1013.
        max_subscriptions: (channel, symbol) pairs per client, ``*`` counting one per channel.
        max_queue: outgoing data messages queued per client before conflation starts.
        stuck_s: a client whose queue overflowed and that took nothing this long is closed (1013).
        auth_timeout_s: a client that has not authenticated this long after connecting is closed (1008).
        users: token -> user name, for order entry (a user token also authenticates for market data).
        order_handler: ``handler(user, request) -> [(user, message), ...]`` for order/cancel/modify.
    """

    def __init__(self, depth: int = 10, token: str | None = None, max_clients: int = 256,
                 max_subscriptions: int = 10_000, max_queue: int = 4096, stuck_s: float = 5.0,
                 auth_timeout_s: float = 10.0, users: Mapping[str, str] | None = None,
                 order_handler: Callable[[str, dict], list[tuple[str, dict]]] | None = None) -> None:
        if depth < 1 or max_clients < 1 or max_subscriptions < 1 or max_queue < 2:
            raise ValueError("depth, max_clients, max_subscriptions must be >= 1 and max_queue >= 2")
        self.depth = depth
        self.token = token
        self.max_clients = max_clients
        self.max_subscriptions = max_subscriptions
        self.max_queue = max_queue
        self.stuck_s = stuck_s
        self.auth_timeout_s = auth_timeout_s
        # queued, gaps, dropped, disconnects_slow, refused_auth, refused_limit, unknown_instrument
        self.counters: collections.Counter[str] = collections.Counter()
        self._clients: dict[int, _Client] = {}
        self._next_id = 1
        self._seq: dict[Key, int] = {}
        # symbol -> the last bbo / l2 update as sent (text ending in ``"snapshot":false}``)
        self._bbo: dict[str, str] = {}
        self._l2: dict[str, str] = {}  # the complete top N
        self._top_books: dict[str, L2Books] = {}  # per venue: L2 rows -> top N
        self._symtab = SymbolCache()
        self._messages = Messages()
        self._subscribers: dict[Key, set[int]] = {}
        self._wild: dict[str, set[int]] = {ch: set() for ch in CHANNELS}
        self.users = dict(users or {})
        self.order_handler = order_handler
        self._user_clients: dict[str, set[int]] = {}  # user -> connections acting for them
        self._woken: set[int] = set()  # clients given order messages by another client's request

    # -- connections ------------------------------------------------------------------------------

    def connect(self, now: float, url_token: str | None = None) -> int:
        """Register a connection; returns its id. It may be refused at once: check ``closing(cid)``."""
        cid = self._next_id
        self._next_id += 1
        client = _Client(cid, now, authed=self.token is None)
        self._clients[cid] = client
        if self.live_clients() > self.max_clients:
            self.counters["refused_limit"] += 1
            self._refuse(client, CLOSE_TRY_AGAIN_LATER, f"too many connections (max {self.max_clients})")
        elif url_token is not None and (self.token is not None or self.users):
            user = self._user_for(url_token)
            if user is not None:
                self._set_user(client, user)
            elif self.token is not None and hmac.compare_digest(url_token.encode(), self.token.encode()):
                client.authed = True
            else:
                self.counters["refused_auth"] += 1
                self._refuse(client, CLOSE_POLICY_VIOLATION, "invalid token")
        return cid

    def live_clients(self) -> int:
        """Connections not refused or being closed."""
        return sum(1 for c in self._clients.values() if c.close is None)

    def disconnect(self, cid: int) -> None:
        """Forget a connection that is gone."""
        client = self._clients.pop(cid, None)
        if client is None:
            return
        for key in client.subs:
            self._subscribers[key].discard(cid)
            if not self._subscribers[key]:
                del self._subscribers[key]
        for channel in client.wild:
            self._wild[channel].discard(cid)
        if client.user is not None:
            self._user_clients[client.user].discard(cid)
            if not self._user_clients[client.user]:
                del self._user_clients[client.user]
        self._woken.discard(cid)

    def closing(self, cid: int) -> tuple[int, str, bool] | None:
        """``(code, reason, flush)`` once the connection is to be closed (flush: send what is queued first)."""
        client = self._clients.get(cid)
        return None if client is None else client.close

    def tick(self, now: float) -> list[int]:
        """Apply the timers; returns the clients newly to be closed."""
        closed = []
        for client in self._clients.values():
            if client.close is not None:
                continue
            if client.stuck_since is not None and now - client.stuck_since > self.stuck_s:
                self.counters["disconnects_slow"] += 1
                client.close = (CLOSE_TRY_AGAIN_LATER, f"too slow: queue full for over {self.stuck_s:g} s", False)
                closed.append(client.id)
            elif not client.authed and now - client.connected_at > self.auth_timeout_s:
                self.counters["refused_auth"] += 1
                self._refuse(client, CLOSE_POLICY_VIOLATION, "auth timeout")
                closed.append(client.id)
        return closed

    # -- from the client --------------------------------------------------------------------------

    def receive(self, cid: int, text: str | bytes, now: float) -> None:
        """Handle one message from the client; replies are queued (``data_to_send``)."""
        client = self._clients.get(cid)
        if client is None or client.close is not None:
            return
        try:
            request = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return self._error(client, "not JSON")
        if not isinstance(request, dict):
            return self._error(client, "a request is a JSON object with an 'op'")
        op = request.get("op")
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            ops = "auth, subscribe, unsubscribe, ping" + (", order, cancel, modify" if self.order_handler else "")
            return self._error(client, f"unknown op {op!r} ({ops})")
        if not client.authed and op != "auth":
            self.counters["refused_auth"] += 1
            return self._refuse(client, CLOSE_POLICY_VIOLATION,
                                'auth required: send {"op": "auth", "token": ...} first')
        handler(self, client, request, now)

    def _op_auth(self, client: _Client, request: dict, now: float) -> None:
        token = request.get("token")
        user = self._user_for(token)
        if user is not None:
            if client.user not in (None, user):
                return self._error(client, f"already authenticated as user {client.user!r}")
            self._set_user(client, user)
            self._control(client, {"type": "authenticated", "user": user})
        elif (self.token is None or client.authed) and not self.users:
            self._control(client, {"type": "authenticated"})
        elif (self.token is not None and isinstance(token, str)
              and hmac.compare_digest(token.encode(), self.token.encode())):
            client.authed = True
            self._control(client, {"type": "authenticated"})
        else:
            self.counters["refused_auth"] += 1
            self._refuse(client, CLOSE_POLICY_VIOLATION, "invalid token")

    def _user_for(self, token: object) -> str | None:
        """The user whose token this is (every token compared, in constant time), or None."""
        if not isinstance(token, str) or not self.users:
            return None
        found = None
        for candidate, user in self.users.items():
            if hmac.compare_digest(token.encode(), candidate.encode()):
                found = user
        return found

    def _set_user(self, client: _Client, user: str) -> None:
        client.authed = True
        client.user = user
        self._user_clients.setdefault(user, set()).add(client.id)

    # -- order entry ------------------------------------------------------------------------------

    def _op_order_entry(self, client: _Client, request: dict, now: float) -> None:
        op = request["op"]
        if self.order_handler is None:
            return self._order_error(client, request, "order entry is not enabled on this server")
        if client.user is None:
            return self._order_error(client, request,
                                     'order entry needs a user token: send {"op": "auth", "token": ...} first')
        self.counters["order_requests"] += 1
        try:
            replies = self.order_handler(client.user, request)
        except ValueError as exc:
            return self._order_error(client, request, f"{op}: {exc}")
        except Exception as exc:  # a bug behind the handler: the client gets a line, the server lives
            self.counters["order_errors"] += 1
            return self._order_error(client, request, f"{op}: internal error ({type(exc).__name__})")
        self._woken |= self.deliver(replies)
        self._woken.discard(client.id)

    def _order_error(self, client: _Client, request: dict, text: str) -> None:
        message = {"type": "error", "message": text, "op": request["op"]}
        cid = request.get("client_order_id")
        if isinstance(cid, str):
            message["client_order_id"] = cid
        self._control(client, message)

    def deliver(self, replies) -> set[int]:
        """Queue each ``(user, message)`` to every live connection of that user; returns the clients woken."""
        woken: set[int] = set()
        for user, message in replies:
            cids = self._user_clients.get(user)
            if not cids:
                self.counters["order_messages_unseen"] += 1  # the user is not connected
                continue
            for cid in cids:
                client = self._clients[cid]
                if client.close is None:
                    self._control(client, message)  # a client that never reads is closed, not grown
                    woken.add(cid)
        return woken

    def pop_woken(self) -> set[int]:
        """Clients other than the sender that the last requests gave order messages to."""
        woken, self._woken = self._woken, set()
        return woken

    def _op_ping(self, client: _Client, request: dict, now: float) -> None:
        self._control(client, {"type": "pong"})

    def _op_subscribe(self, client: _Client, request: dict, now: float) -> None:
        parsed = self._parse_selection(client, request)
        if parsed is None:
            return
        channels, symbols = parsed
        if symbols == WILDCARD:
            new_wild = set(channels) - client.wild
            new_subs: set[Key] = set()
        else:
            new_wild = set()
            new_subs = {(ch, s) for ch in channels for s in symbols if ch not in client.wild} - client.subs
        if len(client.subs) + len(client.wild) + len(new_subs) + len(new_wild) > self.max_subscriptions:
            return self._error(client, f"subscription limit: at most {self.max_subscriptions} (channel, symbol) pairs")
        for channel in new_wild:
            client.wild.add(channel)
            self._wild[channel].add(client.id)
            for key in [k for k in client.subs if k[0] == channel]:  # the wildcard covers them now
                self._drop_sub(client, key)
        for key in new_subs:
            client.subs.add(key)
            self._subscribers.setdefault(key, set()).add(client.id)
        self._control(client, {"type": "subscribed", "channels": list(channels),
                               "symbols": symbols if symbols == WILDCARD else list(symbols)})
        # A snapshot of every requested (channel, symbol) with state, already-subscribed ones too.
        for channel in channels:
            if channel not in STATE_CHANNELS:
                continue
            names = (self._bbo if channel == "bbo" else self._l2) if symbols == WILDCARD else symbols
            for symbol in list(names):
                text = self._snapshot_text(channel, symbol)
                if text is not None:
                    self._push(client, _STATE, (channel, symbol), text, now)

    def _op_unsubscribe(self, client: _Client, request: dict, now: float) -> None:
        parsed = self._parse_selection(client, request)
        if parsed is None:
            return
        channels, symbols = parsed
        gone: set[Key] = set()
        for channel in channels:
            if symbols == WILDCARD:
                if channel in client.wild:
                    client.wild.discard(channel)
                    self._wild[channel].discard(client.id)
                    gone.add((channel, WILDCARD))
                keys = [k for k in client.subs if k[0] == channel]
            else:
                keys = [(channel, s) for s in symbols if (channel, s) in client.subs]
            for key in keys:
                self._drop_sub(client, key)
                gone.add(key)
        self._purge(client, gone)
        self._control(client, {"type": "unsubscribed", "channels": list(channels),
                               "symbols": symbols if symbols == WILDCARD else list(symbols)})

    def _parse_selection(self, client: _Client, request: dict) -> tuple[tuple[str, ...], str | tuple[str, ...]] | None:
        channels = request.get("channels", ["bbo"])
        symbols = request.get("symbols")
        if (not isinstance(channels, list) or not channels
                or any(not isinstance(c, str) or c not in CHANNELS for c in channels)):
            self._error(client, f"channels: a non-empty list of {', '.join(CHANNELS)}")
            return None
        if symbols == WILDCARD or symbols == [WILDCARD]:
            return tuple(dict.fromkeys(channels)), WILDCARD
        if (not isinstance(symbols, list) or not symbols
                or any(not isinstance(s, str) or not s or s == WILDCARD for s in symbols)):
            self._error(client, "symbols: a non-empty list of symbols, or \"*\"")
            return None
        return tuple(dict.fromkeys(channels)), tuple(dict.fromkeys(symbols))

    def _drop_sub(self, client: _Client, key: Key) -> None:
        client.subs.discard(key)
        subscribers = self._subscribers.get(key)
        if subscribers is not None:
            subscribers.discard(client.id)
            if not subscribers:
                del self._subscribers[key]

    def _purge(self, client: _Client, gone: set[Key]) -> None:
        """Remove queued and parked messages of keys no longer subscribed (``(channel, "*")``: all of it)."""
        wild_gone = {ch for ch, s in gone if s == WILDCARD}

        def is_gone(key: Key) -> bool:
            return key in gone or (key[0] in wild_gone and not self._subscribed(client, key))

        kept = collections.deque(entry for entry in client.queue if entry[0] == _CONTROL or not is_gone(entry[1]))
        client.data_len -= len(client.queue) - len(kept)
        client.queue = kept
        for key in [k for k in client.parked if is_gone(k)]:
            del client.parked[key]

    @staticmethod
    def _subscribed(client: _Client, key: Key) -> bool:
        return key[0] in client.wild or key in client.subs

    # -- from the feed ----------------------------------------------------------------------------

    def apply(self, batch, now: float) -> set[int]:
        """Apply a ``MarketBatch``: update the state, queue updates to subscribers; returns the clients woken.

        Within a batch, messages go out channel by channel (bbo, l2, trades, status), rows in order.
        Messages are written by ``publish.json_rows``' compiled writers (one Python str each).
        """
        woken: set[int] = set()
        symbols: Mapping[int, str] = batch.symbols
        if len(batch.bbo):
            self._apply_rows("bbo", batch.bbo, self._symtab.get(symbols), now, woken)
        if len(batch.l2):
            self._apply_l2(batch, self._symtab.get(symbols), now, woken)
        if len(batch.trades):
            self._apply_rows("trades", batch.trades, self._symtab.get(symbols), now, woken)
        if len(batch.status):
            instruments = batch.status["instrument_id"].tolist()
            for iid, message in zip(instruments, status_dicts(batch.status, symbols)):
                if iid == 0:  # market-wide: to every client with any status subscription
                    self._market_status(message, now, woken)
                elif self._stamp("status", message):
                    self._fan_out(("status", message["symbol"]), message, now, woken)
        return woken

    def _known(self, sym: np.ndarray, symtab: SymbolTable) -> tuple[np.ndarray, int]:
        """(which rows' instrument has a non-empty symbol, how many do); the others are counted."""
        known, n = _known_rows(sym, symtab.sym_raw_len)
        self.counters["unknown_instrument"] += len(sym) - n
        return known, n

    def _next_seqs(self, channel: str, sym: np.ndarray, names: list[str]) -> np.ndarray:
        """This hub's seq for each row (``sym``: symbol indexes), counting on per (channel, symbol)."""
        seq = self._seq
        if len(sym) == 1:
            key = (channel, names[sym[0]])
            seq[key] = value = seq.get(key, 0) + 1
            return np.array([value], dtype=np.uint64)
        unique, inverse, counts = np.unique(sym, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        keys = [(channel, names[u]) for u in unique.tolist()]
        base = np.array([seq.get(k, 0) for k in keys], dtype=np.int64)
        order = np.argsort(inverse, kind="stable")
        rank = np.empty(len(sym), dtype=np.int64)
        rank[order] = np.arange(len(sym)) - np.repeat(np.cumsum(counts) - counts, counts)
        for k, b, c in zip(keys, base.tolist(), counts.tolist()):
            seq[k] = b + c
        return (base[inverse] + rank + 1).astype(np.uint64)

    def _apply_rows(self, channel: str, rows: np.ndarray, symtab: SymbolTable, now: float, woken: set[int]) -> None:
        """bbo or trade rows: one message per row, stamped with the hub's seq."""
        sym = symtab.indexes(rows["instrument_id"])
        known, n_known = self._known(sym, symtab)
        if n_known < len(sym):
            rows, sym = rows[known], sym[known]
            if not len(rows):
                return
        names = symtab.names
        seqs = self._next_seqs(channel, sym, names)
        if channel == "bbo":
            texts = bbo_messages(rows, symtab, seqs, tail=TAIL_UPDATE, into=self._messages).texts()
            state, kind = self._bbo, _STATE
        else:
            texts = trade_messages(rows, symtab, seqs, into=self._messages).texts()
            state, kind = None, _EVENT
        wild = self._wild[channel]
        subscribers = self._subscribers
        for s, text in zip(sym.tolist(), texts):
            symbol = names[s]
            if state is not None:
                state[symbol] = text
            if wild or (channel, symbol) in subscribers:
                self._fan_out_text((channel, symbol), text, kind, now, woken)

    def _apply_l2(self, batch, symtab: SymbolTable, now: float, woken: set[int]) -> None:
        """L2 rows: the top N of each symbol after the batch's last update of it, one message per symbol."""
        books = self._top_books.get(batch.venue)
        if books is None:
            books = self._top_books[batch.venue] = L2Books(self.depth)
        _, upd_row, upd_slot, upd_sym = books.apply(batch.l2, symtab, write=False)
        known, n_known = self._known(upd_sym, symtab)
        if not n_known:
            return
        rows, slots, sym = upd_row, upd_slot, upd_sym
        if n_known < len(sym):
            rows, slots, sym = rows[known], slots[known], sym[known]
        # The last update of each symbol, in the order the symbols first appear in the batch.
        if len(sym) > 1 and (sym != sym[0]).any():
            _, first = np.unique(sym, return_index=True)
            _, last_from_end = np.unique(sym[::-1], return_index=True)
            last = len(sym) - 1 - last_from_end
            pick = last[np.argsort(first, kind="stable")]
            rows, slots, sym = rows[pick], slots[pick], sym[pick]
        elif len(sym) > 1:  # one symbol: its last update
            rows, slots, sym = rows[-1:], slots[-1:], sym[-1:]
        names = symtab.names
        seqs = self._next_seqs("l2", sym, names)
        l2 = batch.l2
        texts = books.state_messages(slots, sym, seqs, l2["ts_event"][rows], l2["ts_recv"][rows], symtab,
                                     tail=TAIL_UPDATE, into=self._messages).texts()
        wild = self._wild["l2"]
        for s, text in zip(sym.tolist(), texts):
            symbol = names[s]
            self._l2[symbol] = text
            if wild or ("l2", symbol) in self._subscribers:
                self._fan_out_text(("l2", symbol), text, _STATE, now, woken)

    def _stamp(self, channel: str, message: dict) -> bool:
        """Give ``message`` its per-(channel, symbol) ``seq``; False (counted) if its instrument has no symbol."""
        symbol = message["symbol"]
        if not symbol:
            self.counters["unknown_instrument"] += 1
            return False
        key = (channel, symbol)
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        message["seq"] = seq
        return True

    def _market_status(self, message: dict, now: float, woken: set[int]) -> None:
        key = ("status", "")
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        message["seq"] = seq
        text = dumps(message)
        for client in self._clients.values():
            if client.close is None and ("status" in client.wild or any(k[0] == "status" for k in client.subs)):
                self._push(client, _EVENT, key, text, now)
                woken.add(client.id)

    def _fan_out(self, key: Key, message: dict, now: float, woken: set[int]) -> None:
        if not self._wild[key[0]] and key not in self._subscribers:
            return
        self._fan_out_text(key, dumps(message), _EVENT, now, woken)

    def _fan_out_text(self, key: Key, text: str, kind: int, now: float, woken: set[int]) -> None:
        wild = self._wild[key[0]]
        explicit = self._subscribers.get(key, ())
        for cid in (*wild, *(c for c in explicit if c not in wild)):
            client = self._clients[cid]
            if client.close is None:
                self._push(client, kind, key, text, now)
                woken.add(cid)

    # -- state ------------------------------------------------------------------------------------

    def _snapshot_text(self, channel: str, symbol: str) -> str | None:
        last = (self._bbo if channel == "bbo" else self._l2 if channel == "l2" else {}).get(symbol)
        return None if last is None else last[:-len(_UPDATE_END)] + _SNAPSHOT_END

    def _snapshot(self, channel: str, symbol: str) -> dict | None:
        text = self._snapshot_text(channel, symbol)
        return None if text is None else json.loads(text)

    def bbo(self, symbol: str) -> dict | None:
        """The last bbo message of ``symbol`` as a snapshot, or None."""
        return self._snapshot("bbo", symbol)

    def l2(self, symbol: str) -> dict | None:
        """The current complete top-N l2 message of ``symbol`` as a snapshot, or None."""
        return self._snapshot("l2", symbol)

    def symbols(self) -> list[str]:
        """Symbols with any state (bbo or l2)."""
        return sorted(set(self._bbo) | set(self._l2))

    # -- to the client ----------------------------------------------------------------------------

    def data_to_send(self, cid: int, limit: int = 256) -> list[str]:
        """Up to ``limit`` queued messages for ``cid`` (plus their gap notices), oldest first, as JSON texts.

        Taking them is the client's progress: call it only when the connection can take more (a send
        that blocks means a slow reader, and the queue will fill and conflate behind it).
        """
        client = self._clients.get(cid)
        if client is None:
            return []
        out: list[str] = []
        queue = client.queue
        while len(out) < limit:
            if not queue:
                self._flush_parked(client)
                if not queue:
                    break
            kind, key, text, dropped = queue.popleft()
            if kind != _CONTROL:
                client.data_len -= 1
            if dropped:
                out.append(self._gap_text(key, dropped))
            out.append(text)
        if out:
            client.stuck_since = None
        self._flush_parked(client)
        return out

    def pending(self, cid: int) -> tuple[int, int]:
        """(messages queued, (channel, symbol) pairs parked by overflow) of a client."""
        client = self._clients[cid]
        return len(client.queue), len(client.parked)

    def _gap_text(self, key: Key, dropped: int) -> str:
        self.counters["gaps"] += 1
        return dumps({"type": "gap", "channel": key[0], "symbol": key[1], "dropped": dropped})

    def _control(self, client: _Client, message: dict) -> None:
        # Replies to the client's own requests: never dropped, not counted against max_queue, but a
        # client that keeps asking without reading is closed.
        client.queue.append([_CONTROL, None, dumps(message), 0])
        if client.close is None and len(client.queue) - client.data_len > self.max_queue:
            client.close = (CLOSE_POLICY_VIOLATION, "too many requests without reading the replies", False)

    def _error(self, client: _Client, text: str) -> None:
        self._control(client, {"type": "error", "message": text})

    def _refuse(self, client: _Client, code: int, reason: str) -> None:
        self._error(client, reason)
        client.close = (code, reason, True)

    def _push(self, client: _Client, kind: int, key: Key, text: str, now: float) -> None:
        """Queue a data message, or conflate / drop it when the queue is full (module rules)."""
        self.counters["queued"] += 1
        if client.parked:
            self._flush_parked(client)
        parked = client.parked.get(key)
        if kind == _STATE and parked is not None:  # still waiting for room: the newer state wins
            if parked.latest is not None:
                parked.dropped += 1
                self.counters["dropped"] += 1
            parked.latest = text
            return
        if client.data_len >= self.max_queue:
            if client.stuck_since is None:
                client.stuck_since = now
            if kind == _STATE:
                client.parked[key] = _Parked(latest=text)
                return
            if not self._evict_oldest_event(client):  # only state and replies queued: this one goes
                self._park_drop(client, key, 1)
                return
            parked = client.parked.get(key)
        dropped = 0
        if parked is not None:  # an event key with drops not yet told: the notice rides on this message
            dropped = parked.dropped
            del client.parked[key]
        client.queue.append([kind, key, text, dropped])
        client.data_len += 1

    def _park_drop(self, client: _Client, key: Key, n: int) -> None:
        parked = client.parked.get(key)
        if parked is None:
            parked = client.parked[key] = _Parked()
        parked.dropped += n
        self.counters["dropped"] += 1

    def _evict_oldest_event(self, client: _Client) -> bool:
        """Drop the oldest queued trade/status message; its gap notice moves to the next one of its key."""
        queue = client.queue
        for i, entry in enumerate(queue):
            if entry[0] == _EVENT:
                key, dropped = entry[1], entry[3] + 1
                del queue[i]
                client.data_len -= 1
                for later in itertools.islice(queue, i, None):
                    if later[1] == key and later[0] == _EVENT:
                        later[3] += dropped
                        self.counters["dropped"] += 1
                        break
                else:
                    self._park_drop(client, key, dropped)
                return True
        return False

    def _flush_parked(self, client: _Client) -> None:
        """Move parked overflow into the queue, oldest first, while there is room: the latest state
        (with its gap notice), or a gap notice alone for trades/status."""
        while client.parked and client.data_len < self.max_queue:
            key, parked = next(iter(client.parked.items()))
            del client.parked[key]
            if parked.latest is not None:
                client.queue.append([_STATE, key, parked.latest, parked.dropped])
            else:
                client.queue.append([_STATE, key, self._gap_text(key, parked.dropped), 0])
            client.data_len += 1


_OPS = {
    "auth": Hub._op_auth,
    "ping": Hub._op_ping,
    "subscribe": Hub._op_subscribe,
    "unsubscribe": Hub._op_unsubscribe,
    "order": Hub._op_order_entry,
    "cancel": Hub._op_order_entry,
    "modify": Hub._op_order_entry,
}


@nb.njit(cache=True)
def _known_rows(sym, sym_raw_len):
    """``Hub._known`` compiled: five numpy calls cost ~5 us on a paced batch's one or two rows."""
    known = np.zeros(len(sym), dtype=np.bool_)
    n = 0
    for k in range(len(sym)):
        if sym[k] >= 0 and sym_raw_len[sym[k]] > 0:
            known[k] = True
            n += 1
    return known, n
