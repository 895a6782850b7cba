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

    def wait_until(self, capture_ns: int) -> None:
        if self._origin is None:
            self._origin = (capture_ns, self._clock())
            return
        due = self._origin[1] + (capture_ns - self._origin[0]) / self.speed
        ahead = due - self._clock()
        if ahead > 0:
            self._sleep(ahead / 1e9)


def time_slices(batch: Normalized, slice_ns: int = SLICE_NS) -> Iterator[tuple[int, Normalized]]:
    """Cut a batch into consecutive pieces of at most ``slice_ns`` of capture time.

    Yields (capture time of the piece's first message, piece); a batch without book events comes
    whole with time 0 (nothing to pace by). Pieces are cut on sequence numbers, so every record kind
    is split at the same message; the capture time is the receive time (the pcap's) or, for files
    without one, the venue time.
    """
    events = batch.events
    if not len(events):
        yield 0, batch
        return
    stamp = np.where(events["ts_recv"] > 0, events["ts_recv"], events["ts_event"])
    bucket = (stamp - stamp[0]) // slice_ns
    starts = np.concatenate(([0], np.flatnonzero(np.diff(bucket)) + 1))
    bounds = events["sequence"][starts[1:]]  # the first sequence of every piece after the first
    # Where each piece starts in every record kind: one vectorised search per kind per batch.
    cuts = {}
    for name, rows in batch.records().items():
        seq = np.ascontiguousarray(rows["sequence"])
        cuts[name] = np.concatenate(([0], np.searchsorted(seq, bounds, side="left"), [len(rows)]))
    for k, start in enumerate(starts):
        piece = {name: rows[cuts[name][k] : cuts[name][k + 1]] for name, rows in batch.records().items()}
        yield int(stamp[start]), Normalized(**piece, messages=0)
