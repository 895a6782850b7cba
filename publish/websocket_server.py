"""WebSocket sink: serves the ``publish.ws_protocol`` hub with the ``websockets`` library.

Rules this module keeps:
- The hub (all protocol logic) lives on one asyncio loop in the server's own thread; nothing else
  touches it. ``write(batch)`` only appends to a small bounded hand-off list and, when the loop is not
  already due to read it, schedules one ``call_soon_threadsafe``: it never waits for the loop, the
  clients or a lock held by them (the lock guards a list append). When the loop falls more than
  ``max_batches`` behind, each new batch merges into the newest waiting one (``publish.batch.conflate``:
  latest BBO per instrument, every L2 delta, every trade), counted in ``batches_conflated``; the loop
  takes the whole list at once, so a merged batch holds at most what arrived during one loop round.
- Per connection: a reader task feeds the hub; a writer task takes messages from the hub only when the
  previous send has drained (websockets' ``write_limit``), so a client that stops reading stops taking,
  and its hub queue conflates behind it. The loop that applies a batch sends a client's messages itself
  when that client's writer is idle and its socket is not paused (``_send_now``): no writer round
  between a batch and its frames; whatever is more than one round, or waits for a drain, is the writer's. The messages of one writer round go out as frames of one
  buffer, in one socket write (``_Connection``): one segment and one wake-up of the client per round,
  not per message. A stuck client is closed with 1013 and, since it is not
  reading, its TCP connection is aborted after ``close_timeout``.
- ``close()`` closes every connection (1001 going away) and stops the loop; ``open()`` may follow again.
- In a sink process (``publish.process_runner``) batches skip the hand-off: the process's queue is
  read on the loop itself (``attach_reader``) and each batch applied there (``apply``).

Counters: clients (connected now), messages_sent, gaps, disconnects_slow, plus batches, batches_conflated,
dropped (messages conflated or dropped for slow clients), refused_auth, refused_limit, unknown_instrument,
order_requests, order_errors (the handler raised something other than ValueError), order_messages_unseen
(for a user with no connection).

Order entry: with ``users`` (token -> user) and an ``order_handler`` (``feedhandler.order_gateway``
injects it; this package knows nothing of orders), order/cancel/modify requests run the handler on
the server's loop and its messages go to the users they name. ``push(pairs)`` hands such messages
over from any thread (fills caused by the feed).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import urllib.parse

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import OPEN as _OPEN

from publish.batch import MarketBatch, Merging, merge, settled
from publish.ws_protocol import Hub


class WebSocketServer:
    """A sink serving market data to WebSocket clients (protocol: docs/websocket.md).

    Args:
        host, port: where to listen; ``port=0`` picks a free port (read ``.port`` after ``open()``).
        token: when set, clients must authenticate with it (``?token=`` or an ``auth`` op first).
        max_clients: connections served at once; more are refused (error, then close 1013).
        max_queue: outgoing messages queued per client before its bbo/l2 conflate and trades drop.
        depth: N of the top-N depth served (at most the book engine's depth).
        max_subscriptions: (channel, symbol) pairs per client.
        stuck_s: a client whose queue is full and that takes nothing this long is disconnected (1013).
        auth_timeout_s: a client that does not authenticate in time is disconnected (1008).
        max_batches: batches handed to the loop and not yet applied before they conflate.
        send_chunk: messages taken from the hub per writer round.
        send_buffer: kernel send buffer per connection, in bytes (SO_SNDBUF). Bounds what a client that
            stops reading can swallow before its queue backs up (Linux autotunes it to megabytes).
        close_timeout: seconds to wait for a closing handshake before aborting the connection.
        users: token -> user name: connections authenticated with one act for that user (order entry).
        order_handler: ``handler(user, request) -> [(user, message), ...]``, run on the server's loop for
            ``order``, ``cancel`` and ``modify`` requests (ValueError: a one-line error to the sender).
    """

    name = "websocket"

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, token: str | None = None, max_clients: int = 256,
                 max_queue: int = 4096, *, depth: int = 10, max_subscriptions: int = 10_000, stuck_s: float = 5.0,
                 auth_timeout_s: float = 10.0, max_batches: int = 64, send_chunk: int = 256,
                 send_buffer: int = 262_144,
                 close_timeout: float = 2.0, max_message_bytes: int = 65_536, users=None,
                 order_handler=None) -> None:
        if max_batches < 2:
            raise ValueError("max_batches must be >= 2")
        self.host = host
        self.port = int(port)
        self._requested_port = int(port)
        self.token = token
        self._hub_args = dict(depth=depth, token=token, max_clients=max_clients, max_subscriptions=max_subscriptions,
                              max_queue=max_queue, stuck_s=stuck_s, auth_timeout_s=auth_timeout_s, users=users,
                              order_handler=order_handler)
        self.max_batches = max_batches
        self.send_chunk = send_chunk
        self.send_buffer = send_buffer
        self.close_timeout = close_timeout
        self.max_message_bytes = max_message_bytes
        self.counters: dict[str, int] = dict.fromkeys(
            ("clients", "messages_sent", "gaps", "disconnects_slow", "batches", "batches_conflated", "dropped",
             "refused_auth", "refused_limit", "unknown_instrument", "order_requests", "order_errors",
             "order_messages_unseen"), 0)
        self.hub: Hub | None = None
        self._lock = threading.Lock()
        self._handoff: list[MarketBatch | Merging] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._conns: dict[int, tuple[ServerConnection, asyncio.Event, asyncio.Task | None]] = {}
        self._sending: set[int] = set()  # connections whose writer task is sending (or awaiting a drain)

    # -- sink protocol (any thread) -----------------------------------------------------------------

    def warm_up(self) -> None:
        """Run the hub's compiled writers once, on a hub of its own (numba loads or compiles them: the
        first batch would otherwise wait tens of ms); a sink process calls it before it opens."""
        from publish.json_rows import sample_batch_arrays

        hub = Hub(depth=self._hub_args["depth"])
        cid = hub.connect(0.0)
        hub.receive(cid, '{"op":"subscribe","channels":["bbo","l2","trades","status"],"symbols":"*"}', 0.0)
        for rows in (1, 3):  # one row and several: both array layouts numba distinguishes
            hub.apply(MarketBatch("warm-up", {1: "WARM"}, **sample_batch_arrays(rows)), 0.0)
        hub.data_to_send(cid, 100)

    def open(self) -> None:
        """Start serving (returns once listening). Raises OSError when the address cannot be bound."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._ready.clear()
        self._startup_error = None
        self._handoff = []
        self._scheduled = False
        self._thread = threading.Thread(target=self._run, name=f"ws-{self.host}:{self._requested_port}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error

    def write(self, batch: MarketBatch) -> None:
        """Hand a batch to the server's loop; returns at once (never waits for clients)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("WebSocketServer.write before open()")
        with self._lock:
            if len(self._handoff) >= self.max_batches:  # the loop is behind: merge into the newest
                self._handoff[-1] = merge(self._handoff[-1], batch)  # conflated once, when applied
                self.counters["batches_conflated"] += 1
            else:
                self._handoff.append(batch)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._apply_handoff)
        except RuntimeError:  # the loop closed under us: the batch is moot
            pass

    def attach_reader(self, fd: int, on_ready, timeout: float = 5.0) -> None:
        """Run ``on_ready()`` on the server's loop whenever ``fd`` is readable.

        A sink process hands its queue's eventfd here, so batches are taken and applied (``apply``)
        on the loop itself: no hand-off to another thread, no second wake-up per batch.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError("WebSocketServer.attach_reader before open()")
        added = threading.Event()

        def add() -> None:
            loop.add_reader(fd, on_ready)
            added.set()

        loop.call_soon_threadsafe(add)
        if not added.wait(timeout):
            raise RuntimeError("the WebSocket server's loop did not take the reader")

    def call_soon(self, callback) -> None:
        """Run ``callback()`` on the server's loop (from any thread); a no-op once it is closed."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback)

    def apply(self, batch: MarketBatch) -> None:
        """Apply a batch at once and wake the clients it gave something: on the server's loop only."""
        woken = self.hub.apply(batch, time.monotonic())
        self.counters["batches"] += 1
        self._send_now(woken)
        self._sync_counters()

    def push(self, pairs: list[tuple[str, dict]]) -> None:
        """Send ``(user, message)`` pairs to those users' connections (any thread; returns at once)."""
        loop = self._loop
        if loop is None or not pairs:
            return
        try:
            loop.call_soon_threadsafe(self._deliver, pairs)
        except RuntimeError:  # the loop closed under us
            pass

    def _deliver(self, pairs: list[tuple[str, dict]]) -> None:
        self._wake(self.hub.deliver(pairs))
        self._sync_counters()

    def _wake(self, cids) -> None:
        for cid in cids:
            conn = self._conns.get(cid)
            if conn is None:
                continue
            if self.hub.closing(cid) is not None:
                self._closing(cid)
            else:
                conn[1].set()

    def close(self) -> None:
        """Close every connection and stop the loop (waits up to ``close_timeout`` + 5 s)."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(self.close_timeout + 5.0)
        if thread.is_alive():  # still closing: say so rather than pretend it stopped
            self.counters["close_timeouts"] = self.counters.get("close_timeouts", 0) + 1
            return
        self._thread = None

    def client_queues(self, timeout: float = 5.0) -> dict[int, tuple[int, int]]:
        """Per connected client: (messages queued, (channel, symbol) pairs parked by overflow).

        For diagnostics and tests: asks the loop thread and waits for its answer.
        """
        loop = self._loop
        if loop is None:
            return {}

        async def ask() -> dict[int, tuple[int, int]]:
            return {cid: self.hub.pending(cid) for cid in self._conns}

        return asyncio.run_coroutine_threadsafe(ask(), loop).result(timeout)

    # -- the loop thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # a bind error before ready, or a bug: never silent
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                raise
        finally:
            self._loop = None

    async def _main(self) -> None:
        self.hub = Hub(**self._hub_args)
        self._conns = {}
        self._sending = set()
        self._stop = asyncio.Event()
        async with serve(self._handle, self.host, self._requested_port, max_size=self.max_message_bytes,
                         close_timeout=self.close_timeout, compression=None,
                         create_connection=_Connection) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            ticker = asyncio.create_task(self._tick())
            await self._stop.wait()
            ticker.cancel()
            self._apply_handoff(drain=True)
        self._sync_counters()

    def _apply_handoff(self, drain: bool = False) -> None:
        """Apply one waiting batch, then let the writers run before the next (all of them when draining)."""
        with self._lock:
            take = len(self._handoff) if drain else min(1, len(self._handoff))
            batches, self._handoff = self._handoff[:take], self._handoff[take:]
            more = bool(self._handoff)
            self._scheduled = more
        if more:
            self._loop.call_soon(self._apply_handoff)
        hub = self.hub
        now = time.monotonic()
        woken: set[int] = set()
        for batch in batches:
            woken |= hub.apply(settled(batch), now)
        self.counters["batches"] += len(batches)
        self._send_now(woken)
        self._sync_counters()

    def _send_now(self, woken) -> None:
        """On the loop: send what the woken clients have, from here (no writer round in between) when
        their writer is idle and their socket takes it (not paused by ``write_limit``); else, or when
        more is left than one round, their writer does it (and waits for the socket to drain)."""
        hub = self.hub
        for cid in woken:
            conn = self._conns.get(cid)
            if conn is None:
                continue
            ws, wake = conn[0], conn[1]
            if cid in self._sending or ws.paused or ws.protocol.state is not _OPEN or ws.transport.is_closing():
                wake.set()
                continue
            messages = hub.data_to_send(cid, self.send_chunk)
            if messages:
                send_text = ws.protocol.send_text
                for text in messages:
                    send_text(text.encode())
                ws.send_data()
                self.counters["messages_sent"] += len(messages)
            if len(messages) == self.send_chunk or hub.closing(cid) is not None:
                wake.set()

    async def _tick(self) -> None:
        interval = max(0.01, min(0.25, self._hub_args["stuck_s"] / 5))
        while True:
            await asyncio.sleep(interval)
            for cid in self.hub.tick(time.monotonic()):
                self._closing(cid)
            self._sync_counters()

    def _sync_counters(self) -> None:
        hub = self.hub
        counters = self.counters
        counters["clients"] = hub.live_clients()
        for name in ("gaps", "disconnects_slow", "dropped", "refused_auth", "refused_limit", "unknown_instrument",
                     "order_requests", "order_errors", "order_messages_unseen"):
            counters[name] = hub.counters[name]

    def _closing(self, cid: int) -> None:
        """The hub wants ``cid`` closed: wake its writer (flush then close) or close it now (no flush)."""
        conn = self._conns.get(cid)
        close = self.hub.closing(cid)
        if conn is None or close is None:
            return
        ws, wake, writer = conn
        if close[2]:
            wake.set()
            return
        if writer is not None:
            writer.cancel()
        asyncio.create_task(self._close(ws, close[0], close[1]))

    async def _close(self, ws: ServerConnection, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(ws.close(code, reason), self.close_timeout)
        except (asyncio.TimeoutError, ConnectionClosed, OSError):
            pass
        finally:
            ws.transport.abort()  # no-op once closed; ends a stuck TCP connection

    async def _handle(self, ws: ServerConnection) -> None:
        hub = self.hub
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.request.path).query)
        url_token = query.get("token", [None])[0]
        sock = ws.transport.get_extra_info("socket")
        if sock is not None and self.send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        cid = hub.connect(time.monotonic(), url_token)
        wake = asyncio.Event()
        wake.set()
        self._conns[cid] = (ws, wake, None)
        writer = asyncio.create_task(self._writer(ws, cid, wake))
        self._conns[cid] = (ws, wake, writer)
        self._sync_counters()
        try:
            if hub.closing(cid) is None:
                async for message in ws:
                    hub.receive(cid, message, time.monotonic())
                    wake.set()
                    self._wake(hub.pop_woken())
                    if hub.closing(cid) is not None:
                        break
            if hub.closing(cid) is not None:
                self._closing(cid)
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await writer
                await ws.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            self._conns.pop(cid, None)
            hub.disconnect(cid)
            self._sync_counters()

    async def _writer(self, ws: ServerConnection, cid: int, wake: asyncio.Event) -> None:
        hub = self.hub
        try:
            while True:
                await wake.wait()
                wake.clear()
                self._sending.add(cid)  # while it sends (and awaits the drain), _send_now leaves cid to it
                try:
                    while messages := hub.data_to_send(cid, self.send_chunk):
                        async with ws.send_context():  # every frame, then one write (_Connection); raises
                            # ConnectionClosed as send() does once the connection is not open
                            send_text = ws.protocol.send_text
                            for text in messages:
                                send_text(text.encode())
                        self.counters["messages_sent"] += len(messages)
                finally:
                    self._sending.discard(cid)
                close = hub.closing(cid)
                if close is not None and close[2]:
                    await self._close(ws, close[0], close[1])
                    return
        except ConnectionClosed:
            pass


class _Connection(ServerConnection):
    """websockets' server connection, writing the frames queued since its last write as one buffer
    (its own ``send_data`` writes each frame with a system call of its own)."""

    def send_data(self) -> None:
        pending: list[bytes] = []
        for data in self.protocol.data_to_send():
            if data:
                pending.append(data)
                continue
            if pending:  # the frames before the end of the stream, then the end as the library does it
                self.transport.write(b"".join(pending))
                pending = []
            if self.transport.can_write_eof():
                with contextlib.suppress(Exception):
                    self.transport.write_eof()
            else:
                self.transport.close()
        if pending:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))
