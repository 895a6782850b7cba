"""The live pipeline: packet sources per line -> Arbiter (+ re-request client) -> ITCH normalizer ->
BookEngine -> the sink runners replay uses, with counters, stale flags and a clean shutdown.

Rules this module keeps:

- One ``LiveHandler`` runs one feed partition (a venue's line A and optional line B) on one thread:
  the loop reads every source without waiting, feeds what came to the ``Arbiter`` tagged with its
  line, and hands the messages the arbiter releases, in sequence, to the same ``ItchNormalizer`` and
  ``BookEngine`` a replay uses, so a live run and a replay of the same capture build the same books.
  Only when nothing came does it wait (``poll`` on the sources, at most a 1 ms tick so the arbiter's
  timers run), or, with ``busy_poll``, it spins.
- Per packet batch the work is compiled kernels over numpy arrays (sources, arbiter, normalizer,
  book kernels, the latency histogram); nothing in the loop is per message in Python.
- Latency is measured per message from its packet's kernel receive timestamp to the moment the book
  engine has applied its batch (``time.time_ns()``: CLOCK_REALTIME, the clock SO_TIMESTAMPNS uses).
- Publishing is off the hot path: each batch's BBO, L2, trades and status go to every
  ``SinkRunner`` as one ``MarketBatch`` (a queue append that never blocks), after the latency stamp.
- A hole given up by the arbiter flags every instrument of the feed stale (``stale_since``): the
  lost messages could have touched any book, and ITCH has no snapshot to rebuild from, so a stale
  book stays stale until the handler restarts. It is logged, counted and listed in the status.
- Counters leave the loop only as snapshot dicts (``snapshot()``), every ``stats_interval``, to the
  metrics endpoint (``feedhandler.metrics``); no other thread touches the pipeline's state.
- ``run(stop)`` returns when ``stop`` is set (SIGINT/SIGTERM in the CLI); ``close(drain_s)`` then
  drains the sinks within the deadline and releases the sources.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from feedhandler.arbitration import (
    LINE_A,
    LINE_B,
    LINE_RECOVERY,
    Arbiter,
    GapGivenUp,
    LineResumed,
    LineSilent,
)
from feedhandler.live_config import LiveConfig
from feedhandler.live_kernel import FusedPath
from feedhandler.metrics import LatencyHistogram, MetricsServer
from feedhandler.sources.base import PacketBatch, SourceError, ipv4_to_int
from orderbook.engine import BookEngine
from parsers.clock import VenueClock, session_date
from parsers.itch50_normalize import ItchNormalizer
from parsers.order_refs import OrderRefTable
from parsers.schema import STATUS
from parsers.venues import VENUES_BY_NAME
from publish.batch import MarketBatch
from publish.runner import SinkRunner

log = logging.getLogger(__name__)

TICK_S = 0.001  # longest wait for packets: the arbiter's timers (2 ms re-request delay) run this often
IDLE_TICK_S = 0.0002  # busy polling: the timers run this often while nothing comes (not on every spin)
BOOK_OUT_ROWS = 1024  # BookEngine output rows: of 256..65536, 1024 costs least for 16- and 8000-message batches alike
MAX_EVENTS_KEPT = 50  # latest arbiter events kept for the status page
CLONE_NEWNET = 0x40000000
LINE_LABELS = {LINE_A: "A", LINE_B: "B"}
_NO_STATUS = STATUS.empty(0)  # a fused batch carries no status messages (shared: a zero-length array never changes)


class LiveError(Exception):
    """The live handler cannot start (a source, the re-request client, the metrics port); one line."""


@dataclass
class FeedSource:
    """An opened packet source and the lines it carries.

    Attributes:
        source: the PacketSource.
        kind: socket, afpacket, afxdp or shm.
        lines: line numbers (LINE_A, LINE_B) it carries; one line means no split by destination.
        groups, ports: per entry of ``lines``, the (group as an int, port) that picks it out.
    """

    source: object
    kind: str
    lines: tuple[int, ...]
    groups: tuple[int, ...]
    ports: tuple[int, ...]

    @property
    def label(self) -> str:
        return "+".join(LINE_LABELS[ln] for ln in self.lines)


# ---------------------------------------------------------------------------------------------------
# opening sources


@contextlib.contextmanager
def in_netns(name: str | None):
    """Run the block with the calling thread in network namespace ``name`` (``ip netns``), then back.

    Sockets keep the namespace they were made in: sources opened here read the feed interface of
    that namespace while sinks and the metrics endpoint stay in the handler's own.
    """
    if not name:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)

    def enter(fd: int) -> None:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise LiveError(f"cannot enter network namespace {name}: {os.strerror(ctypes.get_errno())}")

    try:
        target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    except OSError as exc:
        raise LiveError(f"no network namespace {name!r} ({exc.strerror})") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(target)
        try:
            yield
        finally:
            enter(home)
    finally:
        os.close(target)
        os.close(home)


def open_feed_sources(cfg: LiveConfig) -> list[FeedSource]:
    """Open the packet sources of ``cfg``'s lines (in ``cfg.netns`` when set); LiveError if one fails."""
    opened: list[FeedSource] = []
    numbered = [(LINE_A if ln.name == "A" else LINE_B, ln) for ln in cfg.lines]
    try:
        with in_netns(cfg.netns):
            if cfg.source == "socket":
                from feedhandler.sources.socket_source import SocketSource

                for number, ln in numbered:
                    src = SocketSource(ln.group, ln.port, iface=cfg.line_iface(ln), source=ln.source_address,
                                       rcvbuf=cfg.rcvbuf, max_packets=cfg.read_batch)
                    opened.append(FeedSource(src, "socket", (number,), (ipv4_to_int(ln.group),), (ln.port,)))
            else:
                for key, members in _grouped(cfg, numbered).items():
                    pairs = [(ln.group, ln.port) for _, ln in members]
                    if cfg.source == "afpacket":
                        from feedhandler.sources.afpacket import AfPacketSource

                        src = AfPacketSource(key, pairs, max_packets=cfg.read_batch)
                    elif cfg.source == "afxdp":
                        from feedhandler.sources.afxdp import AfXdpSource

                        src = AfXdpSource(key, cfg.xdp_queue, pairs, mode=cfg.xdp_mode, max_packets=cfg.read_batch)
                    else:
                        from feedhandler.sources.shm_ring import ShmSource

                        src = ShmSource(key, max_packets=cfg.read_batch)
                    opened.append(FeedSource(src, cfg.source, tuple(n for n, _ in members),
                                             tuple(ipv4_to_int(ln.group) for _, ln in members),
                                             tuple(ln.port for _, ln in members)))
    except SourceError as exc:
        for feed in opened:
            feed.source.close()
        raise LiveError(str(exc)) from None
    return opened


def _grouped(cfg: LiveConfig, numbered) -> dict:
    """Lines per shared source: per interface (AF_PACKET, AF_XDP) or per ring file (shm)."""
    out: dict[str, list] = {}
    for number, ln in numbered:
        key = ln.path if cfg.source == "shm" else cfg.line_iface(ln)
        if not key:
            what = "a ring path (path / --shm-path)" if cfg.source == "shm" else "an interface (iface / --iface)"
            raise LiveError(f"line {ln.name}: the {cfg.source} source needs {what}")
        out.setdefault(key, []).append((number, ln))
    return out


def open_rerequest_client(cfg: LiveConfig):
    """The MoldUDP64 re-request client of ``cfg`` (None without a server), in ``cfg.netns``."""
    if cfg.rerequest is None:
        return None
    from captures.rerequest import RerequestError
    from feedhandler.rerequest import RerequestClient

    try:
        with in_netns(cfg.netns):
            return RerequestClient(*cfg.rerequest, bind_host=cfg.rerequest_bind,
                                   max_request_messages=cfg.max_request_messages)
    except RerequestError as exc:
        raise LiveError(str(exc)) from None


def warm_up(venue: str = "nasdaq", depth: int = 10) -> float:
    """Run every kernel of the loop once on a small generated day so the first live packet does not
    pay for loading numba's cache (hundreds of ms). Returns the seconds it took."""
    from captures.generator import generate
    from parsers.moldudp64 import encode_packet

    started = time.perf_counter()
    day = generate(messages=400, symbols=4, seed=1)
    packets = [encode_packet(b"WARMUP    ", 1 + i, [day.message(j) for j in range(i, min(i + 8, len(day)))])
               for i in range(0, len(day), 8)]
    data = np.frombuffer(b"".join(packets), np.uint8)
    length = np.array([len(p) for p in packets], np.int32)
    offset = np.zeros(len(packets), np.int64)
    np.cumsum(length[:-1], out=offset[1:])
    ts = np.full(len(packets), time.time_ns(), np.int64)
    batch = PacketBatch(data, offset, length, ts, np.zeros(len(packets), np.uint32), np.zeros(len(packets), np.uint16))
    v = VENUES_BY_NAME[venue]
    arbiter = Arbiter(lines=2, expect_from=1)
    normalizer = ItchNormalizer(clock=VenueClock(day.date, v.tz), venue=v.id)
    engine = BookEngine(depth=depth, venue=v.id, out_rows=BOOK_OUT_ROWS)
    latency = LatencyHistogram()
    mask = batch.group == 0
    for part in (PacketBatch(data, offset[mask], length[mask], ts[mask], batch.group[mask], batch.port[mask]), batch):
        buf, frames = arbiter.feed(part, LINE_A)
        engine.apply(normalizer.normalize(buf, frames).events)
        latency.record(frames["ts_recv"], time.time_ns())
    arbiter.feed(batch, LINE_B)
    arbiter.poll(time.time_ns())
    engine.finish()
    # the fused path's kernel (one compiled call per batch), on books of its own
    fused = FusedPath(Arbiter(lines=2, expect_from=1), ItchNormalizer(clock=VenueClock(day.date, v.tz), venue=v.id),
                      BookEngine(depth=depth, venue=v.id, out_rows=BOOK_OUT_ROWS), LatencyHistogram(), keep_rows=True)
    writable = PacketBatch(data.copy(), offset, length, ts, batch.group, batch.port)
    for part, line in ((writable, LINE_A), (batch, LINE_B)):  # sources hand out both kinds of buffer
        fused.feed(part, line)
        fused.rows()
    fused.take_row_counts()
    fused.sync()
    return time.perf_counter() - started


def place_thread(cpu: int | None, realtime: int) -> None:
    """Put the calling thread (the feed loop) on ``cpu`` only and, with ``realtime`` > 0, in the
    SCHED_FIFO class at that priority: a packet's wake-up then preempts any ordinary process at once,
    and steering the NIC's interrupts to the same CPU makes the wake-up a local one. LiveError (one
    line) when the kernel refuses (SCHED_FIFO needs root or CAP_SYS_NICE)."""
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if realtime > 0:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(realtime))
    except OSError as exc:
        what = f"CPU {cpu}" if realtime <= 0 else f"CPU {cpu}, SCHED_FIFO priority {realtime}"
        raise LiveError(f"cannot place the feed loop ({what}): {exc.strerror}") from None


def warm_source(feed: FeedSource) -> None:
    """Load the socket source's read kernel from numba's cache now, not on the first packet: that first
    load stalls the loop by tens of ms. It is called on descriptor -1 (EBADF: nothing read, nothing
    lost). Sources have no public warm-up; other kinds pay their (smaller) first-read cost live."""
    if feed.kind != "socket":
        return
    from feedhandler.sources import socket_source as ss

    src = feed.source
    try:
        if src._batched:
            b = src._buffers
            ss._recv_batch(-1, src._mm_addr, 1, src._mm_len, src._mm_flags, src._mm_controllen, src._ctl64,
                           src._ctl32, ss.CONTROL_STRIDE, src._snap, b.offset, b.length, b.ts_recv, src._counters,
                           src._scratch)
    except AttributeError:  # the source changed shape: nothing to warm, nothing broken
        pass


# ---------------------------------------------------------------------------------------------------
# the handler


class LiveHandler:
    """One feed partition, live (see the module rules).

    Args:
        cfg: the settings (``feedhandler.live_config.live_config``).
        sources: already opened sources (tests open them inside a namespace); None: open ``cfg``'s.
        rerequest: a re-request client (or None); ``...`` (the default): open ``cfg``'s.
        runners: started sink runners (``feedhandler.sinks.build_runners``); the handler stops them.
        metrics: a ``MetricsServer`` to publish snapshots to (None: none; the CLI makes one).
        warm: run ``warm_up`` first (before any source opens), so the first packets are not late.
    """

    def __init__(self, cfg: LiveConfig, sources: Sequence[FeedSource] | None = None, rerequest=...,
                 runners: Sequence[SinkRunner] = (), metrics: MetricsServer | None = None, warm: bool = True) -> None:
        self.cfg = cfg
        self.warm_up_s = warm_up(cfg.venue, cfg.depth) if warm else 0.0
        self.venue = VENUES_BY_NAME[cfg.venue]
        self.sources = list(sources) if sources is not None else open_feed_sources(cfg)
        if warm:
            for feed in self.sources:
                warm_source(feed)
        try:
            self.client = open_rerequest_client(cfg) if rerequest is ... else rerequest
        except LiveError:
            self._close_sources()
            raise
        self.arbiter = Arbiter(
            request=self.client, lines=len(cfg.lines), expect_from=cfg.expect_from, silent_ns=cfg.silent,
            request_delay_ns=cfg.request_delay, retry_ns=cfg.retry, give_up_ns=cfg.give_up,
            max_request_messages=cfg.max_request_messages, hold_messages=cfg.hold_messages,
            hold_bytes=cfg.hold_bytes)
        self.engine = BookEngine(depth=cfg.depth, conflate_ns=cfg.conflate, venue=self.venue.id,
                                 out_rows=BOOK_OUT_ROWS)
        self.normalizer: ItchNormalizer | None = None
        self.runners = list(runners)
        self.metrics = metrics
        self.latency = LatencyHistogram()
        # kernel receive time -> the source's read returned, per packet (benchmarks: where the latency goes)
        self.read_latency: LatencyHistogram | None = LatencyHistogram() if cfg.profile else None
        self.stale_since = np.zeros(1 << 16, np.int64)  # per instrument id: when it went stale, 0 = fresh
        self.events: list[dict] = []
        self.counts = {"bbo_rows": 0, "l2_rows": 0, "trades": 0, "status_rows": 0, "batches": 0,
                       "other_packets": 0, "stale_instruments": 0}
        self.state = "starting"
        self.started_ns = time.time_ns()
        self._symbols: dict[int, str] = {}
        self._last_message = time.monotonic()
        self._window_open = False
        self._next_snapshot = 0.0
        self._last_give_up_log = -1e9
        self._give_ups_unlogged = 0
        self._poller = self._make_poller()
        self._last_snapshot: dict = {}
        self._conflating = cfg.conflate > 0
        self._use_fused = cfg.fused
        self._fused: FusedPath | None = None
        gc.collect()  # here, not in the loop: a full collection of this heap takes ~100 ms
        gc.freeze()  # what exists now (modules, kernels, buffers) is never scanned again: shorter GC pauses

    # ------------------------------------------------------------------------------------- running
    def run(self, stop: threading.Event | None = None, duration_s: float | None = None,
            until: Callable[[dict], bool] | None = None) -> dict:
        """Receive until ``stop`` is set, ``duration_s`` passed or ``until(snapshot)`` holds (checked at
        every snapshot); return the last snapshot. Sinks keep running: ``close()`` drains them."""
        stop = stop or threading.Event()
        end = None if duration_s is None else time.monotonic() + duration_s
        place_thread(self.cfg.cpu, self.cfg.realtime)
        self.state = "running"
        interval = self.cfg.stats_interval / 1e9
        single = self.sources[0].source if len(self.sources) == 1 and self.client is None else None
        wait = 0.0 if self.cfg.busy_poll else TICK_S
        # Several sources, each with a descriptor: one poll() per wake-up, then only the ready ones are
        # read (an empty recvmmsg costs as much as a poll).
        by_poll = single is None and not self._spin and wait > 0
        wait_ms = wait * 1000.0
        next_idle = 0.0
        while not stop.is_set():
            if single is not None:  # one source: let it wait for its own packets
                batch = single.read(self.cfg.read_batch, wait)
                got = len(batch.offset) > 0
                if got:
                    self._on_packets(self.sources[0], batch)
            elif by_poll:
                got = False
                for fd, _ in self._poller.poll(wait_ms):
                    got = self._read_fd(fd) or got
            else:
                got = self._read_all()
                if not got and wait:
                    self._wait(wait)
            now = time.monotonic()
            if not got and (wait or now >= next_idle):  # spinning: the timers every IDLE_TICK_S, not every turn
                self._idle()
                next_idle = now + IDLE_TICK_S
            if now >= self._next_snapshot:
                self._next_snapshot = now + interval
                snap = self.publish_snapshot()
                if until is not None and until(snap):
                    break
                if end is not None and now >= end:
                    break
        return self.publish_snapshot()

    def _read_all(self) -> bool:
        got = False
        for feed in self.sources:
            batch = feed.source.read(self.cfg.read_batch, 0)
            if len(batch.offset):
                self._on_packets(feed, batch)
                got = True
        if self.client is not None:
            answers = self.client.read(256, 0)
            if len(answers.offset):
                self._feed(answers, LINE_RECOVERY, time.time_ns())
                got = True
        return got

    def _read_fd(self, fd: int) -> bool:
        """Read the source (or the re-request client) behind descriptor ``fd``; whether anything came."""
        feed = self._by_fd[fd]
        if feed is None:
            answers = self.client.read(256, 0)
            if len(answers.offset):
                self._feed(answers, LINE_RECOVERY, time.time_ns())
                return True
            return False
        batch = feed.source.read(self.cfg.read_batch, 0)
        if len(batch.offset):
            self._on_packets(feed, batch)
            return True
        return False

    def _make_poller(self):
        poller = select.poll()
        self._spin = False
        self._by_fd: dict[int, FeedSource | None] = {}
        for feed in self.sources:
            if feed.kind == "shm":  # a ring file always polls readable: spin on it instead
                self._spin = True
            else:
                poller.register(feed.source.fileno(), select.POLLIN)
                self._by_fd[feed.source.fileno()] = feed
        if self.client is not None:
            poller.register(self.client.fileno(), select.POLLIN)
            self._by_fd[self.client.fileno()] = None
        return poller

    def _wait(self, timeout_s: float) -> None:
        if self._spin:
            time.sleep(0)  # let the ring's writer (maybe on this core) run
        else:
            self._poller.poll(timeout_s * 1000.0)

    def _idle(self) -> None:
        """Nothing came: run the arbiter's timers and flush an open conflation window."""
        self._deliver(*self.arbiter.poll(time.time_ns()))
        if self._window_open and time.monotonic() - self._last_message > self.cfg.conflate / 1e9:
            book = self.engine.finish()
            if self._fused is not None:  # finish may hand the output buffers out
                self._fused.refresh()
            self._window_open = False
            self._publish(book.bbo, book.l2, None, None)

    def _on_packets(self, feed: FeedSource, batch: PacketBatch) -> None:
        if self.read_latency is not None:
            self.read_latency.record(batch.ts_recv, time.time_ns())
        if len(feed.lines) == 1:  # no split (a ring's writer may not even fill in the destination)
            self._feed(batch, feed.lines[0])
            return
        # Line by line, A's packets of the batch before B's: one arbiter call per line, not per run of
        # packets (first copies inside one batch are credited to A; nothing else depends on the order).
        picked = 0
        for line, group, port in zip(feed.lines, feed.groups, feed.ports):
            mask = (batch.group == group) & (batch.port == port)
            n = int(np.count_nonzero(mask))
            picked += n
            if n == len(batch.offset):
                self._feed(batch, line)
            elif n:
                part = PacketBatch(batch.data, batch.offset[mask], batch.length[mask], batch.ts_recv[mask],
                                   batch.group[mask], batch.port[mask])
                self._feed(part, line)
        self.counts["other_packets"] += len(batch.offset) - picked

    def _feed(self, batch: PacketBatch, line: int, now: int | None = None) -> None:
        """One batch of ``line`` through the arbiter to the books: in one compiled call when the fused
        path can take it (``feedhandler.live_kernel``), else the arbiter, normalizer and engine one by one."""
        fused = self._fused
        if fused is None:
            self._deliver(*self.arbiter.feed(batch, line, now))
            return
        fast, after, rest = fused.feed(batch, line, now)
        if fast:
            self.counts["batches"] += 1
            self._last_message = time.monotonic()
            self._window_open = self._conflating
            status = _NO_STATUS
            if after is not None:  # status, imbalance, ...: no book changes, normalized once the books are stamped
                status = self.normalizer.normalize(*after).status
            if self.runners:
                book, trades = fused.rows()
                self._publish(book.bbo, book.l2, trades, status)
            else:
                n_bbo, n_l2, n_trades = fused.take_row_counts()
                c = self.counts
                c["bbo_rows"] += n_bbo
                c["l2_rows"] += n_l2
                c["trades"] += n_trades
                c["status_rows"] += len(status)
        if rest is not None:
            fused.sync()
            self._deliver(*rest)
        elif self.arbiter.events:
            self._on_events(self.arbiter.take_events())

    def _deliver(self, buf: np.ndarray, frames: np.ndarray) -> None:
        """Decode, apply and publish the messages the arbiter released (views valid until its next call)."""
        if len(frames):
            if self.normalizer is None:
                day = self.cfg.date or session_date(int(frames["ts_recv"][0]), self.venue.tz)
                self.normalizer = ItchNormalizer(clock=VenueClock(day, self.venue.tz), venue=self.venue.id)
                if self._use_fused and isinstance(self.normalizer.orders, OrderRefTable):
                    self._fused = FusedPath(self.arbiter, self.normalizer, self.engine, self.latency,
                                            keep_rows=bool(self.runners))
            norm = self.normalizer.normalize(buf, frames)
            book = self.engine.apply(norm.events)
            self.latency.record(frames["ts_recv"], time.time_ns())
            if self._fused is not None:  # the normalizer's and engine's arrays may have grown
                self._fused.refresh()
            self.counts["batches"] += 1
            self._last_message = time.monotonic()
            self._window_open = self.cfg.conflate > 0
            self._publish(book.bbo, book.l2, norm.trades, norm.status)
        if self.arbiter.events:
            self._on_events(self.arbiter.take_events())

    def _publish(self, bbo, l2, trades, status) -> None:
        c = self.counts
        c["bbo_rows"] += len(bbo)
        c["l2_rows"] += len(l2)
        if trades is not None:
            c["trades"] += len(trades)
            c["status_rows"] += len(status)
        if not self.runners:
            return
        known = self.normalizer.symbols if self.normalizer is not None else {}
        if len(known) != len(self._symbols):  # sinks read it on their threads: they get a copy
            self._symbols = dict(known)
        arrays = {"bbo": bbo, "l2": l2}
        if trades is not None:
            arrays.update(trades=trades, status=status)
        batch = MarketBatch(venue=self.venue.name, symbols=self._symbols, **arrays)
        if batch.rows:
            for runner in self.runners:
                runner.offer(batch)

    def _on_events(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, GapGivenUp):
                flagged = self._flag_stale(ev.at_ns)
                self._log_give_up(ev, flagged)
                row = {"kind": "gap_given_up", "session": ev.session, "first": ev.first, "last": ev.last,
                       "at_ns": ev.at_ns, "reason": ev.reason.name, "stale_flagged": flagged}
            elif isinstance(ev, LineSilent):
                log.warning("line %s silent since %d", LINE_LABELS.get(int(ev.line), ev.line), ev.last_ns)
                row = {"kind": "line_silent", "line": LINE_LABELS.get(int(ev.line)), "last_ns": ev.last_ns,
                       "at_ns": ev.at_ns}
            elif isinstance(ev, LineResumed):
                log.warning("line %s resumed after %.3f s", LINE_LABELS.get(int(ev.line), ev.line), ev.silent_ns / 1e9)
                row = {"kind": "line_resumed", "line": LINE_LABELS.get(int(ev.line)), "at_ns": ev.at_ns,
                       "silent_ns": ev.silent_ns}
            else:
                continue
            self.events.append(row)
        del self.events[:-MAX_EVENTS_KEPT]

    def _log_give_up(self, ev: GapGivenUp, flagged: int) -> None:
        """One warning per second at most: a feed falling behind gives holes up by the hundred."""
        now = time.monotonic()
        if now - self._last_give_up_log < 1.0:
            self._give_ups_unlogged += 1
            return
        more = f" (and {self._give_ups_unlogged} more gaps since the last report)" if self._give_ups_unlogged else ""
        log.warning("gap given up on session %s: messages %d..%d (%d) lost; %d instruments flagged stale%s",
                    ev.session, ev.first, ev.last, ev.messages, flagged, more)
        self._last_give_up_log = now
        self._give_ups_unlogged = 0

    def _flag_stale(self, at_ns: int) -> int:
        """Every instrument known so far is stale from ``at_ns`` (one feed partition: all of them)."""
        if self.normalizer is None or not self.normalizer.symbols:
            return 0
        ids = np.fromiter(self.normalizer.symbols, np.int64, len(self.normalizer.symbols))
        ids = ids[ids < len(self.stale_since)]
        fresh = ids[self.stale_since[ids] == 0]
        self.stale_since[fresh] = at_ns
        self.counts["stale_instruments"] = int(np.count_nonzero(self.stale_since))
        return len(fresh)

    # ------------------------------------------------------------------------------------- reading
    def stale_symbols(self) -> list[str]:
        ids = np.flatnonzero(self.stale_since).tolist()
        symbols = self.normalizer.symbols if self.normalizer is not None else {}
        return [symbols.get(i, str(i)) for i in ids]

    def snapshot(self) -> dict:
        """Every counter, as the metrics endpoint and ``feedhandler status`` show them."""
        if self._fused is not None:
            self._fused.sync()
        st = self.arbiter.stats()
        drops = {name: 0 for name in LINE_LABELS.values()}
        sources = []
        for feed in self.sources:
            s = feed.source.stats()
            sources.append({"kind": feed.kind, "lines": feed.label, **_plain(s)})
            for line in feed.lines:  # a source carrying both lines counts its drops on each
                drops[LINE_LABELS[line]] += int(s.get("kernel_drops", 0))
        lines = {}
        for ln in self.cfg.lines:
            row = dict(st["lines"].get(ln.name, {}))
            row["kernel_drops"] = drops[ln.name]
            row["address"] = ln.address
            lines[ln.name] = row
        rec = dict(st["lines"]["recovery"])
        rec.update(requests=st["requests"], requested_messages=st["requested_messages"], holes=st["holes"])
        if self.cfg.rerequest is not None:
            rec["server"] = f"{self.cfg.rerequest[0]}:{self.cfg.rerequest[1]}"
        symbols = self.normalizer.symbols if self.normalizer is not None else {}
        sinks = {}
        for runner in self.runners:
            sinks[runner.sink.name] = {**runner.report(), "queued": runner.queued()}
        return {
            "venue": self.venue.name, "source": self.cfg.source, "pid": os.getpid(), "state": self.state,
            "started_ns": self.started_ns, "now_ns": time.time_ns(),
            "lines": lines, "recovery": rec,
            "feed": {"messages": st["delivered"], "recovered": st["recovered"], "given_up": st["given_up"],
                     "given_up_messages": st["given_up_messages"], "held": st["held"], "held_peak": st["held_peak"],
                     "sessions": st["sessions"]},
            "books": {"instruments": len(symbols), "resting_orders": self.engine.orders,
                      "stale_instruments": self.counts["stale_instruments"], "stale_symbols": self.stale_symbols()[:100],
                      **{k: v for k, v in self.counts.items() if k != "stale_instruments"}},
            "latency": self.latency.summary(),
            **({"read_latency": self.read_latency.summary()} if self.read_latency is not None else {}),
            "sinks": sinks,
            "sources": sources,
            "anomalies": self.normalizer.anomaly_counts() if self.normalizer is not None else {},
            "events": list(self.events),
        }

    def publish_snapshot(self) -> dict:
        snap = self.snapshot()
        self._last_snapshot = snap
        if self.metrics is not None:
            self.metrics.publish(snap)
        return snap

    # ------------------------------------------------------------------------------------- stopping
    def close(self, drain_s: float | None = None) -> dict:
        """Emit the open conflation window, drain the sinks within ``drain_s`` (default: the config's),
        release sources and the client; return the final snapshot (with each sink's drain report)."""
        self.state = "draining"
        if self.metrics is not None:
            self.metrics.publish(self.snapshot())
        if self._window_open:
            book = self.engine.finish()
            self._window_open = False
            self._publish(book.bbo, book.l2, None, None)
        started = time.monotonic()
        deadline = started + (self.cfg.drain / 1e9 if drain_s is None else drain_s)
        reports = {}
        for runner in self.runners:  # one deadline for all: the drain never takes longer than asked
            reports[runner.sink.name] = runner.stop(max(0.0, deadline - time.monotonic()))
        self._close_sources()
        self.state = "stopped"
        snap = self.snapshot()
        for name, report in reports.items():
            snap["sinks"][name] = {**report, "queued": 0}
        snap["drain_s"] = round(time.monotonic() - started, 3)
        if self.metrics is not None:
            self.metrics.publish(snap)
        return snap

    def _close_sources(self) -> None:
        for feed in self.sources:
            with contextlib.suppress(Exception):
                feed.source.close()
        client = getattr(self, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _plain(stats: dict) -> dict:
    """A source's stats with JSON-friendly values only."""
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in stats.items()}


# ---------------------------------------------------------------------------------------------------
# the CLI verb


def run_live(cfg: LiveConfig, stop: threading.Event, duration_s: float | None = None,
             on_ready: Callable[[LiveHandler], None] | None = None) -> dict:
    """``feedhandler live``: open everything, run until ``stop``, drain, and return the final snapshot."""
    from feedhandler.metrics import MetricsError
    from feedhandler.sinks import ConfigError, build_runners

    metrics = None
    if cfg.metrics is not None or cfg.status_file:
        try:
            host, port = cfg.metrics if cfg.metrics is not None else ("127.0.0.1", 0)
            metrics = MetricsServer(host, port, status_file=cfg.status_file)
        except MetricsError as exc:
            raise LiveError(str(exc)) from None
    handler = None
    runners: list[SinkRunner] = []
    try:
        try:
            others = {name: conf for name, conf in cfg.sinks.items() if name != "parquet"}
            runners = build_runners(others, venue_depth=cfg.depth)
            if "parquet" in cfg.sinks:
                from feedhandler.parquet_sink import parquet_runner

                runners.append(parquet_runner(cfg.sinks["parquet"], cfg.venue))
        except (ConfigError, KeyError, ValueError, TypeError) as exc:
            for runner in runners:
                runner.stop(0.5)
            raise LiveError(f"sink settings: {exc}") from None
        handler = LiveHandler(cfg, runners=runners, metrics=metrics)
        if on_ready is not None:
            on_ready(handler)
        handler.run(stop, duration_s=duration_s)
        return handler.close()
    finally:
        if handler is None:
            for runner in runners:
                runner.stop(0.5)
        elif handler.state != "stopped":
            handler.close(0.5)
        if metrics is not None:
            metrics.close()
