"""Sinks in processes of their own: the feed only copies a batch's arrays into shared memory.

``ProcessSinkRunner`` has ``SinkRunner``'s interface (``offer``, ``queued``, ``stop``, ``report``,
``counts``, ``last_error``, ``sink``), so the replay, the live handler and the CLI drive either. The
sink itself (``RedisPublisher``, ``WebSocketServer``, ``TimescaleSink``, or any picklable factory of a
sink) is built and run in a child process started with ``spawn``: its JSON encoding, event loop and
client library never hold the feed's interpreter lock.

Rules this module keeps:
- ``offer(batch)`` never blocks and never raises: it copies the arrays into a ``ShmQueue``
  (``publish.batch_wire``) and writes an eventfd only when the child sleeps. When the queue is full,
  the batch waits in a short list in the feed process under the overflow policy (``conflate``: the
  two oldest waiting batches merge, ``publish.batch.conflate``; ``drop-oldest``), counted; a helper
  thread moves waiting batches into the queue as the child frees room.
- The child takes everything the queue holds at once and writes it to the sink as one batch (rows
  concatenated, nothing lost: ``publish.batch.concat``, up to ``MERGE_MAX_ROWS``), so a sink that fell
  behind catches up with bigger writes instead of a longer queue. A sink with an event loop of its
  own (``WebSocketServer``: ``attach_reader``/``apply``) is fed on that loop instead: each batch
  applied on its own, as many as wait (up to ``STEP_ROWS`` rows) per loop round before the loop's
  writers run, so no second thread is woken per batch and a burst goes out in one round. Over ``max_batches`` waiting in the child, the
  same policy applies there. A failing sink is closed, counted (``failures``) and reopened with a doubling
  backoff while the child keeps draining the queue; the batch it failed on is retried once after
  the reopen (the same object: ``RedisPublisher`` re-sends the same commands), then dropped and counted.
- A child that dies is restarted (``process_restarts``, with a doubling backoff), given the symbol
  directory as the feed knows it; batches it had taken and not written are counted as dropped.
- ``stop(deadline_s)`` moves what waits into the queue, asks the child to drain by the deadline, and
  waits for it (plus ``close_grace_s`` for the sink's own close); a child still alive then is killed
  and what it had not written is counted as dropped. The child ignores SIGINT and SIGTERM: the
  parent decides when it ends (a terminal's ^C reaches the whole process group), and a child whose
  parent is gone ends by itself.
- Counters: ``offered`` = ``written`` + ``conflated`` + ``dropped_batches`` once everything drained.
  ``writes`` counts sink writes (one per merged run of batches), ``queue_full`` offers that found no
  room, ``handoff_p50_us``/``p99``/``max`` the time from ``offer`` to the sink's write returning.
  The sink's own counters come back through the queue's status blob (at most every
  ``STATUS_EVERY_S``), prefixed with the sink's name, as ``SinkRunner.report`` gives them.
- The child warms the sink's compiled code up and freezes the garbage collector's view of everything
  it loaded before it takes the first batch; the feed warms up the queue's code when the runner is made.
"""
from __future__ import annotations

import collections
import gc
import json
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable

import numpy as np

from publish.batch import MarketBatch, Merging, concat, merge, settled
from publish.batch_wire import KIND_BATCH, BatchReader, BatchWriter
from publish.batch_wire import warm_up as warm_up_wire
from publish.runner import POLICIES
from publish.shm_queue import ShmQueue

STOP_GRACE_S = 8.0  # after the drain deadline: the sink's close (WebSocketServer waits close_timeout + 5 s)
STATUS_EVERY_S = 0.05  # the child republishes its sink's counters at most this often while busy
MERGE_MAX_ROWS = 1 << 20  # rows of one merged write; what is left waits for the next write
# The sink process measures its CPU share over windows this long: short to take its ``nice`` (a feed
# that outruns its sinks competes with them for the cores from the first batch), long to give it back
# (no flapping).
RAISE_WINDOW_S = 0.05
LOWER_WINDOW_S = 0.5
BUSY_SHARE = 0.5  # CPU share of one core above which it takes its ``nice``, and the feed keeps its core
IDLE_SHARE = 0.2  # below this again: back to the feed's niceness (where the OS lets a process lower it)
STEP_ROWS = 4096  # a sink on its own loop applies batches up to this many rows per loop round
MONITOR_S = 0.05
# A directory: each sink process writes the time of every hop of every write there when it ends
# (``HopTrace``; bench/latency.py reads them). Unset: nothing recorded.
TRACE_ENV = "FEEDHANDLER_SINK_TRACE"

# Child counter words (ShmQueue.counters()).
C_TAKEN, C_WRITTEN, C_WRITES, C_CONFLATED, C_DROPPED_BATCHES, C_DROPPED_ROWS, C_FAILURES, C_RESTARTS, \
    C_OPENED, C_TAKEN_ROWS, C_WRITTEN_ROWS, C_CONFLATED_ROWS, C_NICED = range(13)
_CHILD_COUNTS = {"written": C_WRITTEN, "writes": C_WRITES, "conflated": C_CONFLATED,
                 "dropped_batches": C_DROPPED_BATCHES, "dropped_rows": C_DROPPED_ROWS, "failures": C_FAILURES,
                 "restarts": C_RESTARTS, "niced": C_NICED}


class SinkHandle:
    """The feed process's view of a sink running in a child: its name, counters and where it serves."""

    def __init__(self, runner: ProcessSinkRunner, name: str, attrs: dict) -> None:
        self._runner = runner
        self.name = name
        self._attrs = attrs  # what the parent knows before the child tells (host, port as configured)

    @property
    def counters(self) -> dict:
        return self._runner._sink_counters()

    def wait_open(self, timeout: float = 30.0) -> bool:
        """True once the child opened the sink (a WebSocket server listens: ``port`` is the bound one)."""
        deadline = time.monotonic() + timeout
        while not self._runner._status().get("opened"):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def __getattr__(self, name: str):
        attrs = self._runner._status().get("attrs") or self._attrs
        if name in attrs:
            return attrs[name]
        raise AttributeError(f"{self.name} sink in a child process has no attribute {name!r}")


class ProcessSinkRunner:
    """One sink in one child process, fed through one shared-memory queue (see the module rules).

    Args:
        factory: makes the sink in the child (a class, or any picklable callable); ``factory(**kwargs)``.
        kwargs: its arguments (picklable). The parent builds one sink too, at once, to check them and
            to learn the sink's name; it is never opened.
        max_batches: batches waiting, in the parent when the queue is full and in the child, before
            the overflow policy applies.
        policy: ``conflate`` or ``drop-oldest``.
        queue_bytes: the shared-memory queue's size.
        nice: added to the child's scheduling niceness while it is busy (``_Niceness``: over half a core,
            or behind), so the feed keeps its core when they compete; a child that keeps up runs at the
            feed's niceness, and a wake-up of it is not queued behind every other process of the machine.
        nice_from_start: take ``nice`` at once and keep it: for a feed that never waits (a replay at
            full speed), where every sink is behind from its first batch and no wake-up is on a
            latency path.
        backoff_s, max_backoff_s: sink reopens and process restarts wait this long, doubling to the cap.
        attrs: names the handle answers before the child reports (e.g. ``host``, ``port``).
        close_grace_s: ``stop`` waits this long past its deadline for the sink's own close.
    """

    def __init__(self, factory: Callable, kwargs: dict | None = None, *, max_batches: int = 64,
                 policy: str = "conflate", queue_bytes: int = 64 << 20, nice: int = 0,
                 nice_from_start: bool = False, backoff_s: float = 0.05,
                 max_backoff_s: float = 2.0, attrs: dict | None = None, close_grace_s: float = STOP_GRACE_S) -> None:
        if policy not in POLICIES:
            raise ValueError(f"overflow policy must be one of {POLICIES}")
        if max_batches < 2:
            raise ValueError("max_batches must be at least 2")
        self.factory = factory
        self.kwargs = dict(kwargs or {})
        probe = factory(**self.kwargs)  # bad arguments fail here, in the caller, as one line
        self.sink = SinkHandle(self, probe.name, dict(attrs or {}))
        consumes = frozenset(getattr(probe, "consumes", ("bbo", "l2", "trades", "status")))
        del probe
        self.max_batches = max_batches
        self.policy = policy
        self.nice = int(nice)
        self.nice_from_start = bool(nice_from_start)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.close_grace_s = close_grace_s
        self._own_error: str | None = None  # the parent's: a child that died or was killed
        self._counts = collections.Counter()  # parent side: offered, conflated, dropped_*, process_*
        warm_up_wire()  # the feed's first offer must not wait for numba to load the queue's kernels
        self._queue = ShmQueue.create(queue_bytes)
        self._writer = BatchWriter(self._queue, consumes=consumes)
        self._rows_in_queue: collections.deque[tuple[int, int]] = collections.deque()  # (record number, rows)
        self._records = 0
        self._pending: collections.deque[MarketBatch | Merging] = collections.deque()
        self._lock = threading.Lock()  # one producer at a time: the feed's offer or the helper's flush
        self._carried: collections.Counter = collections.Counter()  # sink counters of children that died
        self._status_cache: tuple[float, dict] = (0.0, {})
        self._final: collections.Counter | None = None
        self._child_error: str | None = None  # the last error a child reported before it ended
        self._sink_final: dict | None = None
        self._stopping = threading.Event()
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._next_start = 0.0
        self._restart_delay = backoff_s
        self._start_child()
        self._monitor = threading.Thread(target=self._watch, name=f"sink-{self.sink.name}-watch", daemon=True)
        self._monitor.start()

    # -- feed side ----------------------------------------------------------------------------------

    def offer(self, batch: MarketBatch) -> None:
        """Copy the batch into the queue; never blocks (when it is full, the overflow policy decides)."""
        if self._final is not None:
            return  # stopped: the queue is gone
        with self._lock:
            self._counts["offered"] += 1
            if self._pending:
                self._flush_pending()
            if self._pending or not self._put(batch):
                self._wait_in_parent(batch)

    @property
    def pid(self) -> int | None:
        """The sink process's pid (None while none runs)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def queued(self) -> int:
        """Batches offered and not yet written, dropped or merged (in the parent, the queue, the child)."""
        if self._final is not None:
            return 0
        counts = self.counts
        return max(0, counts["offered"] - counts["written"] - counts["conflated"] - counts["dropped_batches"])

    @property
    def counts(self) -> collections.Counter:
        """``SinkRunner.counts``: offered, written, conflated, dropped_batches, dropped_rows, failures, ..."""
        if self._final is not None:
            return collections.Counter(self._final)
        out = collections.Counter(self._counts)
        for name, value in self._child_counts().items():
            out[name] += value
        return out

    @property
    def last_error(self) -> str | None:
        """The sink's last error (as the child reported it), or the parent's about the child."""
        if (self._own_error or "").endswith("killed"):
            return self._own_error
        return self._status().get("last_error") or self._child_error or self._own_error

    def report(self) -> dict:
        out = {k: v for k, v in self.counts.items() if v}
        out.update({f"{self.sink.name}_{k}": v for k, v in self._sink_counters().items() if v})
        out.update({f"handoff_{k}": v for k, v in self.latency().items() if k != "count"})
        return out

    def latency(self) -> dict:
        """From the feed's offer to the sink's write returning, per batch (this child's life): count,
        p50_us, p99_us, max_us."""
        if self._sink_final is not None:
            return dict(self._latency_final)
        return dict(self._status().get("latency") or {})

    def stop(self, deadline_s: float = 5.0) -> dict:
        """Drain until ``deadline_s`` from now (the child writes what it holds), then end it; the counts."""
        if self._final is not None:
            return self.report()
        deadline = time.monotonic() + max(deadline_s, 0.0)
        while True:
            with self._lock:
                self._flush_pending()
                left = len(self._pending)
            if not left or time.monotonic() >= deadline or not self._alive():
                break
            time.sleep(0.002)
        self._stopping.set()
        self._monitor.join(2.0)
        with self._lock:
            for batch in self._pending:
                self._count_dropped(batch.rows)
            self._pending.clear()
        proc = self._proc
        if proc is not None and proc.is_alive():
            self._queue.request_stop(int(deadline * 1e9) if deadline_s > 0 else time.monotonic_ns())
            proc.join(max(0.0, deadline - time.monotonic()) + self.close_grace_s)
            if proc.is_alive():
                self._own_error = f"sink process {proc.pid} did not end in time: killed"
                proc.kill()
                proc.join(5.0)
        self._reap()
        self._count_unread()
        sink_counters = self._sink_counters()
        self._latency_final = self.latency()
        final = self.counts
        self._final = final  # from here on the counts are frozen: the queue goes
        self._sink_final = sink_counters
        self._queue.close()
        return self.report()

    # -- the queue ----------------------------------------------------------------------------------

    def _put(self, batch: MarketBatch) -> bool:
        records = self._writer.put(batch)
        if not records:
            self._counts["queue_full"] += 1
            return False
        self._records += records
        rows = self._rows_in_queue
        rows.append((self._records, batch.rows))
        taken = self._records - self._queue.records_unread()
        while rows and rows[0][0] <= taken:  # only what the child has not taken yet is kept
            rows.popleft()
        return True

    def _wait_in_parent(self, batch: MarketBatch) -> None:
        pending = self._pending
        pending.append(batch)
        if len(pending) > self.max_batches:
            if self.policy == "conflate":
                first = pending.popleft()
                pending[0] = merge(first, pending[0])
                self._counts["conflated"] += 1
            else:
                self._count_dropped(pending.popleft().rows)

    def _flush_pending(self) -> None:
        pending = self._pending
        while pending:
            if isinstance(pending[0], Merging):
                pending[0] = settled(pending[0])  # once: a put that finds no room keeps the merged batch
            if not self._put(pending[0]):
                break
            pending.popleft()

    def _count_dropped(self, rows: int) -> None:
        self._counts["dropped_batches"] += 1
        self._counts["dropped_rows"] += rows

    # -- the child ----------------------------------------------------------------------------------

    def _start_child(self) -> None:
        mem, wake = self._queue.handles()
        venue, symbols = self._writer.restarted()
        proc = self._ctx.Process(
            target=child_main, name=f"feedhandler-sink-{self.sink.name}", daemon=True,
            args=(self.factory, self.kwargs, mem, wake, venue, symbols, self.policy,
                  self.max_batches, self.nice, self.nice_from_start, self.backoff_s, self.max_backoff_s,
                  os.getpid()))
        proc.start()
        self._proc = proc

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _watch(self) -> None:
        """Helper thread: move waiting batches into the queue as room appears; restart a dead child."""
        while not self._stopping.wait(MONITOR_S):
            if self._pending:
                with self._lock:
                    self._flush_pending()
            if self._alive():
                continue
            now = time.monotonic()
            if self._proc is not None:
                self._reap()
                self._next_start = now + self._restart_delay
                self._restart_delay = min(2 * self._restart_delay, self.max_backoff_s)
            if now >= self._next_start and not self._stopping.is_set():
                self._counts["process_restarts"] += 1
                self._start_child()

    def _reap(self) -> None:
        """Account for a child that ended: keep its sink counters, note how it ended."""
        proc = self._proc
        if proc is None or proc.is_alive():
            return
        proc.join()
        status = self._status(fresh=True)
        self._child_error = status.get("last_error") or self._child_error
        if proc.exitcode != 0 and not (self._own_error or "").endswith("killed"):
            self._counts["process_deaths"] += 1
            self._own_error = status.get("last_error") or f"sink process exited with {proc.exitcode}"
        self._count_lost()
        self._proc = None
        if not self._stopping.is_set():  # the next child starts with a clean blob; keep what this one counted
            self._carried.update(status.get("counters", {}))
            self._status_cache = (0.0, {})
            self._queue.put_status(b"")

    def _count_lost(self) -> None:
        """Batches a dead child had taken and not written or dropped: lost with it, counted dropped."""
        c = self._queue.counters()
        lost = int(c[C_TAKEN]) - int(c[C_WRITTEN]) - int(c[C_CONFLATED]) - int(c[C_DROPPED_BATCHES])
        if lost > 0:
            lost_rows = (int(c[C_TAKEN_ROWS]) - int(c[C_WRITTEN_ROWS]) - int(c[C_CONFLATED_ROWS])
                         - int(c[C_DROPPED_ROWS]))
            # The parent owns the words while no child runs: book the loss as the child's drops.
            c[C_DROPPED_BATCHES] += np.uint64(lost)
            c[C_DROPPED_ROWS] += np.uint64(max(0, lost_rows))

    def _count_unread(self) -> None:
        """At the end: records the child never took are dropped (with their rows, known per batch)."""
        unread = self._queue.records_unread()
        first_unread = self._records - unread
        batches = rows = 0
        for end, n in self._rows_in_queue:
            if end > first_unread:
                batches += 1
                rows += n
        self._rows_in_queue.clear()
        if batches:
            self._count_dropped(rows)
            self._counts["dropped_batches"] += batches - 1

    def _child_counts(self) -> dict[str, int]:
        if self._queue.hdr is None:
            return {}
        c = self._queue.counters()
        return {name: int(c[word]) for name, word in _CHILD_COUNTS.items()}

    def _status(self, fresh: bool = False) -> dict:
        when, cached = self._status_cache
        now = time.monotonic()
        if fresh or now - when > 0.01:
            if self._queue.hdr is None:
                return cached
            blob = self._queue.get_status()
            cached = json.loads(blob) if blob else {}
            self._status_cache = (now, cached)
        return cached

    def _sink_counters(self) -> dict:
        if self._sink_final is not None:
            return dict(self._sink_final)
        out = collections.Counter(self._carried)
        out.update(self._status().get("counters", {}))
        return dict(out)


class LatencyHistogram:
    """Hand-off to written, per batch: log-spaced buckets (4 per octave of ns), quantiles to ~19%."""

    PER_OCTAVE = 4

    def __init__(self) -> None:
        self.counts = np.zeros(64 * self.PER_OCTAVE, dtype=np.int64)
        self.max_ns = 0

    def add(self, ns: int) -> None:
        ns = max(int(ns), 1)
        self.counts[min(int(math.log2(ns) * self.PER_OCTAVE), len(self.counts) - 1)] += 1
        self.max_ns = max(self.max_ns, ns)

    def quantile(self, q: float) -> float:
        """The upper edge (ns) of the bucket holding quantile ``q``."""
        total = int(self.counts.sum())
        if not total:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self.counts), q * total, side="left"))
        return min(2 ** ((k + 1) / self.PER_OCTAVE), float(self.max_ns))

    def summary(self) -> dict:
        n = int(self.counts.sum())
        if not n:
            return {}
        return {"count": n, "p50_us": round(self.quantile(0.5) / 1e3, 1), "p99_us": round(self.quantile(0.99) / 1e3, 1),
                "max_us": round(self.max_ns / 1e3, 1)}


class HopTrace:
    """Per sink write, when each hop ended (CLOCK_MONOTONIC ns): the feed's offer of the oldest batch
    in it, this process taking that batch from the queue, the write starting and returning; and how
    many batches it held. Kept in memory (fixed size: the oldest rows are overwritten) and saved as
    ``{dir}/{sink}-{pid}.npy`` when the process ends. For measuring (``TRACE_ENV``), not for production.
    """

    COLUMNS = ("handed", "taken", "start", "done", "batches")

    def __init__(self, path: str, rows: int = 1 << 18) -> None:
        self.path = path
        self.rows = np.zeros((rows, len(self.COLUMNS)), dtype=np.int64)
        self.n = 0

    @classmethod
    def from_env(cls, name: str) -> HopTrace | None:
        where = os.environ.get(TRACE_ENV)
        return cls(os.path.join(where, f"{name}-{os.getpid()}.npy")) if where else None

    def add(self, handed: int, taken: int, start: int, done: int, batches: int) -> None:
        self.rows[self.n % len(self.rows)] = (handed, taken, start, done, batches)
        self.n += 1

    def save(self) -> None:
        n = min(self.n, len(self.rows))
        np.save(self.path, self.rows[:n] if self.n <= len(self.rows) else np.roll(self.rows, -(self.n % n), axis=0))


# ---------------------------------------------------------------------------------------------------
# the child process


def child_main(factory, kwargs, mem_fd, wake_fd, venue, symbols, policy, max_batches, nice, nice_from_start,
               backoff_s, max_backoff_s, parent_pid) -> None:
    """The sink process: read batches from the queue, write them to the sink, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent drains us; ^C reaches the whole group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    queue = ShmQueue.attach(mem_fd, wake_fd)
    sink = factory(**kwargs)
    warm_up = getattr(sink, "warm_up", None)
    if warm_up is not None:
        warm_up()  # compiled code loaded before the first batch, not while it waits
    warm_up_wire()
    gc.collect()
    gc.freeze()  # what exists now (modules, the sink) is never scanned again: shorter collections
    loop = _ChildLoop(sink, queue, BatchReader(venue, symbols), policy, max_batches, backoff_s, max_backoff_s,
                      parent_pid, _Niceness(nice, queue.counters(), from_start=nice_from_start))
    try:
        if hasattr(loop.sink, "attach_reader"):
            loop.run_on_sink_loop()
        else:
            loop.run()
    except BaseException as exc:
        loop.error(exc)
        loop.publish_status(force=True)
        raise
    queue.close()


class _Niceness:
    """The sink process's niceness: the feed's while it keeps up, ``nice`` more while it is busy.

    A sink process is mostly idle behind a paced or live feed; its wake-ups are then on the path of
    every update to a client, and at +10 each one waits behind whatever else runs (other processes,
    the clients themselves). Only a sink that takes over ``BUSY_SHARE`` of a core over a window, or
    finds work waiting at two checks in a row (a replay at full speed), competes with the feed for
    the cores: it takes ``nice`` then, for every
    thread (Linux keeps a niceness per thread), counted in ``niced``. Below ``IDLE_SHARE`` it goes back,
    where the OS lets a process lower its niceness (CAP_SYS_NICE or RLIMIT_NICE); else it stays.
    ``from_start`` (behind a replay at full speed): ``nice`` at once, kept to the end.
    """

    def __init__(self, nice: int, counters: np.ndarray, from_start: bool = False) -> None:
        self.nice = int(nice)
        self.counters = counters
        self.base = os.getpriority(os.PRIO_PROCESS, 0)
        self.raised = False
        self.can_lower = not from_start  # from the start: kept to the end
        if from_start and self.nice > 0 and self._set(self.base + self.nice):
            self.raised = True
            self.counters[C_NICED] += np.uint64(1)
        self._at = time.monotonic()
        self._busy = self.busy_s()
        self._behind_run = 0  # checks in a row that found work waiting
        self._behind_seen = False  # work waiting at a check of the current window

    @staticmethod
    def busy_s() -> float:
        """CPU seconds of every thread of this process. (Not the time waiting to run as well: on a
        machine busy with other work, a sink that keeps up would look busy and be pushed further back.)"""
        return time.process_time()

    def check(self, now: float, behind: bool = False) -> None:
        """``behind``: work is waiting (queued batches, a write to retry).

        Work waiting at two checks in a row counts as busy whatever the CPU share: where more
        processes want the cores than there are, a sink behind a full-speed feed gets under half a
        core and would never look busy by its share (three sinks and a database took two thirds of
        the feed's cores so). Back to the feed's niceness only after a whole window with a low share
        and nothing waiting at any check (a nicer sink gets less CPU: its share alone says nothing).
        """
        if self.nice <= 0:
            return
        self._behind_run = self._behind_run + 1 if behind else 0
        self._behind_seen = self._behind_seen or behind
        if now - self._at < (LOWER_WINDOW_S if self.raised else RAISE_WINDOW_S):
            return
        busy = self.busy_s()
        share = (busy - self._busy) / (now - self._at)
        behind_seen, self._behind_seen = self._behind_seen, behind
        self._at, self._busy = now, busy
        if not self.raised and (share > BUSY_SHARE or self._behind_run >= 2):
            if self._set(self.base + self.nice):
                self.raised = True
                self.counters[C_NICED] += np.uint64(1)
        elif self.raised and self.can_lower and share < IDLE_SHARE and not behind_seen:
            if self._set(self.base):
                self.raised = False
            else:
                self.can_lower = False

    @staticmethod
    def _set(value: int) -> bool:
        """Every thread of this process to niceness ``value``; False if the OS refuses."""
        try:
            for tid in os.listdir("/proc/self/task"):
                os.setpriority(os.PRIO_PROCESS, int(tid), value)
        except PermissionError:
            return False
        except OSError:  # no /proc: this thread at least
            try:
                os.setpriority(os.PRIO_PROCESS, 0, value)
            except PermissionError:
                return False
        return True


class _ChildLoop:
    def __init__(self, sink, queue: ShmQueue, reader: BatchReader, policy: str, max_batches: int, backoff_s: float,
                 max_backoff_s: float, parent_pid: int, niceness: _Niceness | None = None) -> None:
        self.sink = sink
        self.niceness = niceness
        self.queue = queue
        self.reader = reader
        self.policy = policy
        self.max_batches = max_batches
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.parent_pid = parent_pid
        self.c = queue.counters()
        self.backlog: collections.deque[MarketBatch | Merging] = collections.deque()
        self.handed: collections.deque[int] = collections.deque()  # when the feed offered each (monotonic ns)
        self.taken: collections.deque[int] = collections.deque()  # when this process took each from the queue
        self.trace = HopTrace.from_env(sink.name)
        self.retry: tuple[MarketBatch, list[int]] | None = None  # a batch whose write failed, and its hand-offs
        self.latency = LatencyHistogram()
        self.opened = False
        self.ever_opened = False
        self.next_open = 0.0
        self.delay = backoff_s
        self.last_error: str | None = None
        self.on_loop = False  # batches are applied on the sink's own loop (run_on_sink_loop)
        self._stepping = False
        self._status_at = 0.0
        self._dirty = False  # counters changed since the last status

    def run(self) -> None:
        queue = self.queue
        while True:
            self._intake()
            stop = queue.stop_deadline_ns()
            if stop and time.monotonic_ns() > stop:
                break  # out of time: what is left is counted by _abandon
            if not self.opened:
                self._try_open()
            busy = self.retry is not None or bool(self.backlog)
            if busy and self.opened:
                self._write_some()
                self.publish_status()
                continue
            if stop and not busy and not queue.has_data():
                break  # drained
            self.publish_status()
            # Idle: wake up in time to publish counters that changed (at most every STATUS_EVERY_S).
            timeout = 0.2 if self.opened else max(0.0, min(self.next_open - time.monotonic(), 0.2))
            if self._dirty:
                timeout = min(timeout, max(0.0, self._status_at + STATUS_EVERY_S - time.monotonic()))
            queue.wait(timeout)
            if os.getppid() != self.parent_pid:
                break  # the feed is gone: nobody to publish for
        self._abandon()
        try:
            self.sink.close()
        except Exception as exc:
            self.error(exc)
        self.publish_status(force=True)

    def run_on_sink_loop(self) -> None:
        """A sink with an event loop of its own (``WebSocketServer``): batches are read and applied on
        that loop (``attach_reader``, ``apply``), as many as wait (up to ``STEP_ROWS`` rows) per loop
        round, then its clients are served; this thread only opens the sink, watches for the stop request, and closes it."""
        queue = self.queue
        self.on_loop = True
        while not self._try_open():
            self._intake()  # keep the queue moving (the policy applies) while the sink cannot open
            if queue.stop_deadline_ns() or os.getppid() != self.parent_pid:
                self._abandon()
                self.publish_status(force=True)
                return
            queue.wait(max(0.0, min(self.next_open - time.monotonic(), 0.2)))
        queue.always_wake()
        self.sink.attach_reader(queue.wake_fd, self._on_ready)
        self.sink.call_soon(self._on_ready)  # whatever came before the reader
        while True:
            time.sleep(0.05)
            stop = queue.stop_deadline_ns()
            if stop:
                while time.monotonic_ns() < stop and (queue.has_data() or self.backlog or self._stepping):
                    self.sink.call_soon(self._on_ready)
                    time.sleep(0.002)
                break
            if os.getppid() != self.parent_pid:
                break
            self.sink.call_soon(self.publish_status)
        try:
            self.sink.close()  # its loop ends: nothing touches the backlog any more
        except Exception as exc:
            self.error(exc)
        self._abandon()
        self.publish_status(force=True)

    def _on_ready(self) -> None:
        """On the sink's loop: take what the queue holds, apply one batch; the next one on a later round."""
        try:
            os.eventfd_read(self.queue.wake_fd)
        except BlockingIOError:
            pass
        self._intake()
        if self.backlog and not self._stepping:
            self._step()

    def _step(self) -> None:
        self._stepping = False
        rows = 0
        while self.backlog and rows < STEP_ROWS:  # what waits, up to STEP_ROWS rows, then the writers run
            handed = [self.handed.popleft()]
            batch = self._take()
            rows += batch.rows
            self._write(batch, handed, attempt=2, taken=self.taken.popleft())  # on the loop: no retry
        self.publish_status()
        if self.backlog:
            self._stepping = True
            self.sink.call_soon(self._step)

    # -- intake -------------------------------------------------------------------------------------

    def _intake(self) -> None:
        records = self.queue.take()
        if not records:
            return
        backlog, handed, taken, c = self.backlog, self.handed, self.taken, self.c
        now = time.monotonic_ns()
        for kind, body in records:
            if kind != KIND_BATCH:
                continue
            batch = self.reader.read(body)
            if batch is None:
                continue
            c[C_TAKEN] += 1
            c[C_TAKEN_ROWS] += batch.rows
            backlog.append(batch)
            handed.append(self.reader.last_handed_ns)
            taken.append(now)
            if len(backlog) > self.max_batches:
                if self.policy == "conflate":
                    first = backlog.popleft()
                    backlog[0] = merge(first, backlog[0])  # conflated once, when taken (_take)
                    handed[0] = handed.popleft()  # the merged batch waited since the older one came
                    taken[0] = taken.popleft()
                    c[C_CONFLATED] += 1
                else:
                    handed.popleft()
                    taken.popleft()
                    dropped = backlog.popleft()
                    c[C_DROPPED_BATCHES] += 1
                    c[C_DROPPED_ROWS] += dropped.rows
        self.queue.release()

    # -- writing ------------------------------------------------------------------------------------

    def _write_some(self) -> None:
        if self.retry is not None:
            batch, handed = self.retry
            self.retry = None
            self._write(batch, handed, attempt=2)
            return
        take, handed, rows = [], [], 0
        backlog = self.backlog
        taken = self.taken[0] if self.taken else 0
        while backlog and (not take or rows + backlog[0].rows <= MERGE_MAX_ROWS):
            batch = self._take()
            handed.append(self.handed.popleft())
            self.taken.popleft()
            rows += batch.rows
            take.append(batch)
        self._write(concat(take), handed, attempt=1, taken=taken)

    def _take(self) -> MarketBatch:
        """The oldest backlog entry as one batch (a merged entry is conflated now, and counted)."""
        entry = self.backlog.popleft()
        if not isinstance(entry, Merging):
            return entry
        batch = settled(entry)
        self.c[C_CONFLATED_ROWS] += entry.rows - batch.rows
        return batch

    def _write(self, batch: MarketBatch, handed: list[int], attempt: int, taken: int = 0) -> None:
        c = self.c
        start = time.monotonic_ns()
        try:
            if self.on_loop:
                self.sink.apply(batch)
            else:
                self.sink.write(batch)
        except Exception as exc:  # a sink must never take the pipeline down
            self._failed(exc)
            if attempt == 1:
                self.retry = (batch, handed)
            else:
                c[C_DROPPED_BATCHES] += len(handed)
                c[C_DROPPED_ROWS] += batch.rows
            return
        done = time.monotonic_ns()
        for t in handed:
            self.latency.add(done - t)
        if self.trace is not None:
            self.trace.add(handed[0], taken, start, done, len(handed))
        self._dirty = True
        c[C_WRITES] += 1
        c[C_WRITTEN] += len(handed)
        c[C_WRITTEN_ROWS] += batch.rows

    def _try_open(self) -> bool:
        if time.monotonic() < self.next_open:
            return False
        try:
            self.sink.open()
        except Exception as exc:
            self._failed(exc)
            self.next_open = time.monotonic() + self.delay
            self.delay = min(2 * self.delay, self.max_backoff_s)
            return False
        if self.ever_opened:
            self.c[C_RESTARTS] += 1
        self.ever_opened = self.opened = True
        self.delay = self.backoff_s
        self.c[C_OPENED] = 1
        self.publish_status(force=True)  # the parent may be waiting for the port
        return True

    def _failed(self, exc: BaseException) -> None:
        self._dirty = True
        self.c[C_FAILURES] += 1
        self.error(exc)
        if self.on_loop:
            return  # the batch is counted dropped; closing from the sink's own loop would wait for itself
        self.opened = False
        try:
            self.sink.close()
        except Exception:
            pass

    def _abandon(self) -> None:
        """Out of time or out of parent: count what was not written."""
        c = self.c
        pending = list(self.backlog)
        if self.retry is not None:
            c[C_DROPPED_BATCHES] += len(self.retry[1])
            c[C_DROPPED_ROWS] += self.retry[0].rows
            self.retry = None
        for batch in pending:
            c[C_DROPPED_BATCHES] += 1
            c[C_DROPPED_ROWS] += batch.rows
        self.backlog.clear()
        self.handed.clear()
        self.taken.clear()
        if self.trace is not None:
            self.trace.save()

    # -- status -------------------------------------------------------------------------------------

    def error(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"

    def publish_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._status_at < STATUS_EVERY_S:
            return
        if self.niceness is not None:
            self.niceness.check(now, self.retry is not None or bool(self.backlog) or self.queue.has_data())
        self._status_at = now
        self._dirty = False
        sink = self.sink
        attrs = {k: getattr(sink, k) for k in ("host", "port", "url", "dsn", "schema") if hasattr(sink, k)}
        status = {"pid": os.getpid(), "opened": self.ever_opened, "last_error": self.last_error,
                  "counters": {k: v for k, v in list(getattr(sink, "counters", {}).items())
                               if isinstance(v, (int, float, np.integer, np.floating))},
                  "attrs": attrs, "latency": self.latency.summary()}
        self.queue.put_status(json.dumps(status, default=float).encode())
