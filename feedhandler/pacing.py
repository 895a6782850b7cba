"""``--speed``: release a replay's batches as the capture's clock says, scaled (``max``: no waiting)."""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from parsers.itch50_normalize import Normalized

SLICE_NS = 1_000_000  # a paced replay moves in steps of at most 1 ms of capture time


def parse_speed(text: str) -> float | None:
    """``max`` -> None (as fast as possible); ``1`` real time; ``N`` N times faster."""
    if text.strip().lower() == "max":
        return None
    value = float(text)
    if value <= 0:
        raise ValueError(f"speed must be positive or 'max': {text!r}")
    return value


class Pacer:
    """Sleeps until the wall clock reaches a capture time, scaled by ``speed``."""

    def __init__(self, speed: float, clock=time.monotonic_ns, sleep=time.sleep) -> None:
        self.speed = speed
        self._clock = clock
        self._sleep = sleep
        self._origin: tuple[int, int] | None = None  # (capture ns, wall ns) of the first release

    def due(self, capture_ns: int) -> float:
        """The wall time (the clock's ns) at which ``capture_ns`` is released; 0 before the first release."""
        if self._origin is None:
            return 0.0
        return self._origin[1] + (capture_ns - self._origin[0]) / self.speed

    def wait_until(self, capture_ns: int) -> None:
        if self._origin is None:
            self._origin = (capture_ns, self._clock())
            return
        ahead = self.due(capture_ns) - self._clock()
        if ahead > 0:
            self._sleep(ahead / 1e9)

    def pieces(self, batch: Normalized, slice_ns: int = SLICE_NS) -> Iterator[tuple[int, Normalized]]:
        """``time_slices(batch, slice_ns)``, except that the pieces already due when the next one is
        asked for come joined, as one piece with the first one's time.

        A replay that fell behind its clock (a burst: many milliseconds of capture in one of wall time
        at a high ``speed``) then catches up in bigger steps, as a live handler takes every packet
        waiting in its socket at once, instead of paying a piece's fixed costs (the book call, one
        batch per sink, a wake-up of each sink process) per millisecond of capture. Nothing is released
        before its time: only pieces whose time has come are joined.
        """
        if not len(batch.events):
            yield 0, batch
            return
        times, cuts = _slice_cuts(batch, slice_ns)
        k, n = 0, len(times)
        while k < n:
            m = k + 1
            if self._origin is not None and m < n:
                now = self._clock()
                while m < n and self.due(int(times[m])) <= now:
                    m += 1
            yield int(times[k]), _piece(batch, cuts, k, m)
            k = m


def time_slices(batch: Normalized, slice_ns: int = SLICE_NS) -> Iterator[tuple[int, Normalized]]:
    """Cut a batch into consecutive pieces of at most ``slice_ns`` of capture time.

    Yields (capture time of the piece's first message, piece); a batch without book events comes
    whole with time 0 (nothing to pace by). Pieces are cut on sequence numbers, so every record kind
    is split at the same message; the capture time is the receive time (the pcap's) or, for files
    without one, the venue time.
    """
    if not len(batch.events):
        yield 0, batch
        return
    times, cuts = _slice_cuts(batch, slice_ns)
    for k in range(len(times)):
        yield int(times[k]), _piece(batch, cuts, k, k + 1)


def _slice_cuts(batch: Normalized, slice_ns: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(capture time of each piece's first message, where each piece starts in every record kind)."""
    events = batch.events
    stamp = np.where(events["ts_recv"] > 0, events["ts_recv"], events["ts_event"])
    bucket = (stamp - stamp[0]) // slice_ns
    starts = np.concatenate(([0], np.flatnonzero(np.diff(bucket)) + 1))
    bounds = events["sequence"][starts[1:]]  # the first sequence of every piece after the first
    # Where each piece starts in every record kind: one vectorised search per kind per batch.
    cuts = {}
    for name, rows in batch.records().items():
        seq = np.ascontiguousarray(rows["sequence"])
        cuts[name] = np.concatenate(([0], np.searchsorted(seq, bounds, side="left"), [len(rows)]))
    return stamp[starts], cuts


def _piece(batch: Normalized, cuts: dict[str, np.ndarray], first: int, end: int) -> Normalized:
    """Pieces ``first`` to ``end - 1`` of ``batch`` as one."""
    return Normalized(**{name: rows[cuts[name][first]:cuts[name][end]] for name, rows in batch.records().items()},
                      messages=0)
