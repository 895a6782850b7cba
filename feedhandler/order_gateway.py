"""Order entry over WebSocket: a ``trading.engine.Engine`` behind ``publish.websocket_server``.

    store = AuditStore(dsn, symbols=symbols, accounts=list(accounts))   # feedhandler.audit_store
    engine = Engine(symbols, accounts, audit=store, wal_dir="state/wal")
    gateway = OrderGateway(engine, users={"tok-alice": "alice", "tok-bob": "bob"}, audit=store)
    server = gateway.serve("127.0.0.1", 8765)          # a WebSocketServer with order entry on
    server.write(batch)                                # market data as before (a sink)
    gateway.on_feed(ts, events, trades, status)        # the feed's batch: fills of resting orders, stops
    gateway.end_session(ts)
    gateway.close()

Rules this module keeps (docs/websocket.md has the wire format):
- A user is an engine account; its token names it (``users``: token -> account name). A request acts
  for the connection's user only, and every event the engine answers goes to the connections of the
  event's account: a fill reaches both owners of a crossing trade, each seeing only their own order.
- Requests are checked field by field before the engine sees them; anything wrong is one line
  (ValueError), which the server sends back as an error. The engine's own verdicts (risk, matching)
  are ``reject`` events, not errors.
- The engine is not thread-safe: every call into it holds one lock (requests run on the server's
  loop thread, feed batches on the pipeline's).
- A request's ``ts`` is the gateway's clock when the request arrived (``clock``, int ns since the
  epoch; a replay passes the capture's clock).
- With an ``audit`` store, the portfolio (accounts and positions) is snapshotted into it every
  ``snapshot_s`` seconds after a fill or a feed batch changed it, and once more at ``close()``; the
  engine hands the store its commands and events itself.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation

from publish.websocket_server import WebSocketServer

SIDES = ("buy", "sell", "sell_short")
TYPES = ("market", "limit", "stop", "stop_limit")
TIFS = ("DAY", "GTC", "IOC", "FOK")
CLIENT_ID_MAX = 32  # bytes: what the audit trail keeps (trading.audit.CLIENT_ID_BYTES)
_FIELDS = {
    "order": {"op", "client_order_id", "symbol", "side", "type", "qty", "price", "stop_price", "tif", "account"},
    "cancel": {"op", "client_order_id", "account"},
    "modify": {"op", "client_order_id", "price", "qty", "account"},
}


class OrderGateway:
    """Turns order-entry requests into engine calls and engine events into messages (module rules).

    Args:
        engine: a ``trading.engine.Engine``.
        users: token -> account name (each an account of the engine).
        audit: the ``feedhandler.audit_store.AuditStore`` the engine writes to, for portfolio snapshots.
        snapshot_s: seconds between snapshots (only when something changed).
        clock: int ns since the epoch, read once per request.
    """

    def __init__(self, engine, users: Mapping[str, str], *, audit=None, snapshot_s: float = 1.0,
                 clock: Callable[[], int] = time.time_ns) -> None:
        unknown = sorted(set(users.values()) - set(engine.account_ids))
        if unknown:
            raise ValueError(f"users name accounts the engine does not have: {', '.join(unknown)}")
        self.engine = engine
        self.users = dict(users)
        self.clock = clock
        self.lock = threading.Lock()
        self.server: WebSocketServer | None = None
        self.audit = audit
        self.snapshot_s = snapshot_s
        self._changed = False
        self._stop = threading.Event()
        self._snapshots: threading.Thread | None = None
        if audit is not None:
            self._snapshots = threading.Thread(target=self._snapshot_loop, name="gateway-snapshots", daemon=True)
            self._snapshots.start()

    # -- the server side ----------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 8765, **server_args) -> WebSocketServer:
        """Open a ``WebSocketServer`` with order entry for ``users``; returns it (a market-data sink too)."""
        server = WebSocketServer(host, port, users=self.users, order_handler=self.handle, **server_args)
        server.open()
        self.server = server
        return server

    def handle(self, user: str, request: dict) -> list[tuple[str, dict]]:
        """One order/cancel/modify request of ``user``: the (account, message) pairs to send.

        Raises ValueError (one line) for a request that cannot go to the engine.
        """
        op = request.get("op")
        allowed = _FIELDS.get(op)
        if allowed is None:
            raise ValueError(f"not an order-entry op: {op!r}")
        unknown = sorted(set(request) - allowed)
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(allowed - {'op'}))})")
        if "account" in request and request["account"] != user:
            raise ValueError(f"account: orders act for the authenticated user ({user!r})")
        client_order_id = _client_order_id(request)
        if op == "order":
            args = dict(symbol=_choice_or_text(request, "symbol"), side=_choice(request, "side", SIDES),
                        type=_choice(request, "type", TYPES), qty=_qty(request, "qty", required=True),
                        price=_price(request, "price"), stop_price=_price(request, "stop_price"),
                        tif=_choice(request, "tif", TIFS, default="DAY", upper=True))
            needs_price = args["type"] in ("limit", "stop_limit")
            needs_stop = args["type"] in ("stop", "stop_limit")
            if needs_price != (args["price"] is not None):
                raise ValueError(f"price: {'required' if needs_price else 'not allowed'} for a {args['type']} order")
            if needs_stop != (args["stop_price"] is not None):
                raise ValueError(f"stop_price: {'required' if needs_stop else 'not allowed'} for a "
                                 f"{args['type']} order")
            with self.lock:
                events = self.engine.order(self.clock(), user, client_order_id, **args)
        elif op == "cancel":
            with self.lock:
                events = self.engine.cancel(self.clock(), user, client_order_id)
        else:
            price, qty = _price(request, "price"), _qty(request, "qty", required=False)
            if price is None and qty is None:
                raise ValueError("modify: give a new price, a new qty, or both")
            with self.lock:
                events = self.engine.modify(self.clock(), user, client_order_id, price=price, qty=qty)
        if any(e["event"] == "fill" for e in events):
            self._changed = True
        return route(events)

    # -- the feed side ------------------------------------------------------------------------------

    def on_feed(self, ts: int, events, trades, status) -> list[dict]:
        """Run a feed batch through the engine; its order events go to their owners. Returns them."""
        with self.lock:
            out = self.engine.on_feed(ts, events, trades, status)
        self._changed = True  # fills, or at least new marks
        self._push(out)
        return out

    def end_session(self, ts: int) -> list[dict]:
        """End the session (DAY orders expire); the expiries go to their owners. Returns them."""
        with self.lock:
            out = self.engine.end_session(ts)
        self._push(out)
        return out

    def _push(self, events: list[dict]) -> None:
        if self.server is not None and events:
            self.server.push(route(events))

    # -- portfolio snapshots ------------------------------------------------------------------------

    def snapshot(self) -> None:
        """Hand the audit store the portfolio now: every account's figures and every open position."""
        if self.audit is None:
            return
        with self.lock:
            self._changed = False
            portfolio = self.engine.portfolio
            accounts = {a: portfolio.account(a) for a in self.engine.account_ids.values()}
            positions = portfolio.positions()
            ts = self.clock()
        self.audit.snapshot(ts, accounts, positions)

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.snapshot_s):
            if self._changed:
                self.snapshot()

    def close(self) -> None:
        """Close the server and take a last snapshot (the engine and the store stay the caller's)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._snapshots is not None:
            self._stop.set()
            self._snapshots.join()
            self._snapshots = None
            self.snapshot()


def route(events: list[dict]) -> list[tuple[str, dict]]:
    """Engine event dicts -> (account, message): ``{"type": event, ...the event's fields}``."""
    out = []
    for event in events:
        message = {"type": event["event"]}
        message.update((k, v) for k, v in event.items() if k != "event")
        out.append((event["account"], message))
    return out


# -- field checks (each raises ValueError with the field's name) -------------------------------------


def _client_order_id(request: dict) -> str:
    value = request.get("client_order_id")
    if not isinstance(value, str) or not value:
        raise ValueError("client_order_id: a non-empty string is required")
    if not value.isascii() or not value.isprintable() or len(value) > CLIENT_ID_MAX:
        raise ValueError(f"client_order_id: printable ASCII, at most {CLIENT_ID_MAX} characters")
    return value


def _choice(request: dict, name: str, choices: tuple[str, ...], default: str | None = None,
            upper: bool = False) -> str:
    value = request.get(name, default)
    if isinstance(value, str) and upper:
        value = value.upper()
    if value not in choices:
        shown = "missing" if name not in request else repr(request[name])
        raise ValueError(f"{name}: {shown}, expected one of {', '.join(choices)}")
    return value


def _choice_or_text(request: dict, name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value or not value.isprintable() or len(value) > 16:
        raise ValueError(f"{name}: a symbol (a non-empty string) is required")
    return value


def _qty(request: dict, name: str, required: bool) -> int | None:
    value = request.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**32:
        raise ValueError(f"{name}: a positive whole number of shares is required")
    return value


def _price(request: dict, name: str) -> Decimal | None:
    """A price as a decimal string ("187.25") or a JSON number; None when absent or null."""
    value = request.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{name}: a decimal string such as \"187.25\"")
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{name}: {value!r} is not a number") from None
    if not price.is_finite() or price <= 0 or price.as_tuple().exponent < -9 or price >= 9_000_000_000:
        raise ValueError(f"{name}: {value!r} must be positive, below 9e9, with at most 9 decimals")
    return price
