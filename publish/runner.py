"""Sinks off the hot path: each behind a bounded queue, on its own thread, restarted when it fails.

Rules this module keeps:
- ``SinkRunner.offer(batch)`` never blocks and never raises: when the queue is full the overflow policy
  decides (``drop-oldest``: the oldest queued batch goes, its rows counted as dropped; ``conflate``: the
  two oldest queued batches merge, latest BBO per instrument winning, see ``publish.batch.conflate``).
- A sink that raises is closed, counted (``failures``), and reopened after a backoff that doubles up to
  a cap; the batch it failed on is retried once after reopening, then dropped and counted. The feed
  never learns of it beyond the counters.
- ``stop(deadline)`` drains what is queued until the deadline, then gives up and counts the rest.

A sink is any object with ``name``, ``open()``, ``write(batch)``, ``close()`` and a ``counters`` dict.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Protocol

from publish.batch import MarketBatch, Merging, merge, settled

POLICIES = ("drop-oldest", "conflate")


class Sink(Protocol):
    name: str
    counters: dict[str, int]

    def open(self) -> None: ...

    def write(self, batch: MarketBatch) -> None: ...

    def close(self) -> None: ...


class SinkRunner:
    """One sink, one thread, one bounded queue of ``MarketBatch``."""

    def __init__(self, sink: Sink, max_batches: int = 64, policy: str = "conflate",
                 backoff_s: float = 0.05, max_backoff_s: float = 2.0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"overflow policy must be one of {POLICIES}")
        self.sink = sink
        self.max_batches = max_batches
        self.policy = policy
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.counts = collections.Counter()  # offered, written, dropped_batches, dropped_rows, conflated, failures, restarts
        self.last_error: str | None = None
        self._queue: collections.deque[MarketBatch | Merging] = collections.deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._abandon_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)
        self._thread.start()

    # -- feed side ----------------------------------------------------------------------------------

    def offer(self, batch: MarketBatch) -> None:
        """Queue a batch; never blocks (the overflow policy makes room)."""
        with self._cv:
            self.counts["offered"] += 1
            if len(self._queue) >= self.max_batches:
                if self.policy == "conflate" and len(self._queue) >= 2:
                    first = self._queue.popleft()
                    second = self._queue.popleft()
                    self._queue.appendleft(merge(first, second))
                    self.counts["conflated"] += 1
                else:
                    dropped = self._queue.popleft()
                    self.counts["dropped_batches"] += 1
                    self.counts["dropped_rows"] += dropped.rows
            self._queue.append(batch)
            self._cv.notify()

    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    def stop(self, deadline_s: float = 5.0) -> dict[str, int]:
        """Drain until ``deadline_s`` from now, then give up on what is left; return the counts."""
        with self._cv:
            self._stopping = True
            self._abandon_at = time.monotonic() + deadline_s
            self._cv.notify()
        self._thread.join(max(deadline_s, 0) + 1.0)
        with self._cv:
            for batch in self._queue:
                self.counts["dropped_batches"] += 1
                self.counts["dropped_rows"] += batch.rows
            self._queue.clear()
        return self.report()

    def report(self) -> dict[str, int]:
        out = {k: v for k, v in self.counts.items() if v}
        out.update({f"{self.sink.name}_{k}": v for k, v in getattr(self.sink, "counters", {}).items() if v})
        return out

    # -- sink side ----------------------------------------------------------------------------------

    def _next(self) -> MarketBatch | None:
        with self._cv:
            while not self._queue and not self._stopping:
                self._cv.wait(0.1)
            if self._queue and not (self._abandon_at is not None and time.monotonic() > self._abandon_at):
                entry = self._queue.popleft()
            else:
                return None
        return settled(entry)  # outside the lock: the feed never waits for a merge

    def _run(self) -> None:
        opened = self._open()
        while True:
            batch = self._next()
            if batch is None:
                break
            for attempt in (1, 2):
                if not opened:
                    opened = self._open()
                    if not opened:
                        if self._give_up():
                            break
                        continue
                try:
                    self.sink.write(batch)
                    self.counts["written"] += 1
                    break
                except Exception as exc:  # a sink must never take the pipeline down
                    self._failed(exc)
                    opened = False
                    if attempt == 2:
                        self.counts["dropped_batches"] += 1
                        self.counts["dropped_rows"] += batch.rows
        try:
            self.sink.close()
        except Exception as exc:
            self._failed(exc)

    def _open(self) -> bool:
        delay = self.backoff_s
        while True:
            try:
                self.sink.open()
                if self.counts["failures"]:
                    self.counts["restarts"] += 1
                return True
            except Exception as exc:
                self._failed(exc)
                if self._give_up():
                    return False
                time.sleep(delay)
                delay = min(2 * delay, self.max_backoff_s)

    def _give_up(self) -> bool:
        with self._cv:
            return self._abandon_at is not None and time.monotonic() > self._abandon_at

    def _failed(self, exc: Exception) -> None:
        self.counts["failures"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        try:
            self.sink.close()
        except Exception:
            pass
