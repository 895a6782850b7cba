"""Replay a capture: frame, decode and normalize it batch by batch, and write the records.

This is the pipeline of the walking skeleton: capture file -> frames -> ITCH 5.0 normalizer ->
Parquet files (one per record kind). ``stats`` runs the same pipeline without writing, so the two
always agree on counts.
"""
from __future__ import annotations

import datetime as dt
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from captures.reader import CAPTURE_BINARYFILE, CaptureError, open_capture
from parsers import schema
from parsers.clock import VenueClock, session_date
from parsers.itch50_normalize import ItchNormalizer
from parsers.venues import VENUES_BY_NAME, Venue

BATCH_MESSAGES = 1 << 20  # messages normalized per batch: bounds memory, keeps numpy calls large
_PROGRESS_MIN_MESSAGES = 2_000_000


@dataclass
class ReplaySummary:
    """What a replay found; ``as_json()`` is what ``--json`` prints."""

    capture: str
    format: str
    venue: str
    date: str
    messages: int = 0
    packets: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    sessions: list[str] = field(default_factory=list)
    gaps: list[dict] = field(default_factory=list)
    instruments: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    anomalies: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    out: str | None = None
    seconds: float = 0.0
    msgs_per_s: float = 0.0

    def as_json(self) -> dict:
        return asdict(self)


class ReplayError(Exception):
    """A replay that cannot start (bad capture, no session date); one line for the user."""


def replay(
    path: str | Path,
    out_dir: str | Path | None,
    date: dt.date | None = None,
    venue: str = "nasdaq",
    udp_port: int | None = None,
    progress: bool = False,
) -> ReplaySummary:
    """Decode a whole capture; write ``<record>.parquet`` files under ``out_dir`` unless it is None."""
    started = time.perf_counter()
    try:
        capture = open_capture(path, udp_port=udp_port)
    except CaptureError as exc:
        raise ReplayError(str(exc)) from None
    venue_info = VENUES_BY_NAME[venue]
    summary = ReplaySummary(capture=str(path), format=capture.kind, venue=venue, date="")
    normalizer: ItchNormalizer | None = None
    writers = None
    instruments = _InstrumentSet()
    done = 0
    try:
        for buf, frames in capture.iter_batches(max_packets=BATCH_MESSAGES // 8):
            for start in range(0, len(frames), BATCH_MESSAGES):
                part = frames[start : start + BATCH_MESSAGES]
                if normalizer is None:
                    normalizer = _normalizer(capture, path, part, date, venue_info)
                    summary.date = normalizer.clock.date.isoformat()
                    if out_dir is not None:
                        writers = _open_writers(Path(out_dir), summary)
                batch = normalizer.normalize(buf, part)
                for name, rows in batch.records().items():
                    summary.rows[name] = summary.rows.get(name, 0) + len(rows)
                    if "instrument_id" in rows.dtype.names and len(rows):
                        instruments.note(rows["instrument_id"])
                    if writers is not None:
                        writers[name].write(rows)
                done += len(part)
                if progress:
                    _show_progress(done, started)
    finally:
        if writers is not None:
            for w in writers.values():
                w.close()
    if normalizer is None:  # nothing framed: a valid, empty replay (no timestamps to convert)
        normalizer = ItchNormalizer(clock=VenueClock(date or dt.date(1970, 1, 1), venue_info.tz), venue=venue_info.id)
        summary.date = normalizer.clock.date.isoformat()
        if out_dir is not None:
            for w in _open_writers(Path(out_dir), summary).values():
                w.close()
    if progress:
        sys.stderr.write("\r\033[K")
    stats = capture.stats
    summary.messages = stats.messages
    summary.packets = stats.packets
    summary.by_type = dict(sorted(normalizer.by_type.items()))
    summary.sessions = stats.sessions
    summary.gaps = stats.gaps
    instruments.note(np.fromiter(normalizer.symbols, dtype=np.uint32, count=len(normalizer.symbols)))
    summary.instruments = len(instruments)
    summary.first_ts = normalizer.first_ts_event
    summary.last_ts = normalizer.last_ts_event
    summary.anomalies = dict(sorted({**stats.anomalies, **normalizer.anomaly_counts()}.items()))
    if stats.duplicate_messages:
        summary.anomalies["duplicate_messages"] = stats.duplicate_messages
    summary.out = None if out_dir is None else str(out_dir)
    summary.seconds = round(time.perf_counter() - started, 6)
    summary.msgs_per_s = round(summary.messages / summary.seconds, 1) if summary.seconds > 0 else 0.0
    return summary


class _InstrumentSet:
    """Distinct nonzero instrument ids seen: a bitmap for the small ids every ITCH venue uses."""

    SMALL = 1 << 16

    def __init__(self) -> None:
        self._small = np.zeros(self.SMALL, dtype=bool)
        self._large: set[int] = set()

    def note(self, ids: np.ndarray) -> None:
        small = ids < self.SMALL
        self._small[ids[small]] = True
        if not small.all():
            self._large.update(np.unique(ids[~small]).tolist())

    def __len__(self) -> int:
        return int(self._small[1:].sum()) + len(self._large)


def _normalizer(capture, path, frames, date: dt.date | None, venue: Venue) -> ItchNormalizer:
    if date is None:
        date = _date_from_capture(capture, path, frames, venue)
    return ItchNormalizer(clock=VenueClock(date, venue.tz), venue=venue.id)


def _date_from_capture(capture, path, frames, venue: Venue) -> dt.date:
    """The session date: first receive timestamp in the venue's time zone, or the file name."""
    if frames is not None and len(frames):
        stamped = frames["ts_recv"][frames["ts_recv"] > 0]
        if len(stamped):
            return session_date(int(stamped[0]), venue.tz)
    if capture.kind == CAPTURE_BINARYFILE:
        found = _date_from_name(Path(path).name)
        if found is not None:
            return found
    raise ReplayError(f"cannot tell the session date of {path} (no timestamps in it): pass --date YYYY-MM-DD")


def _date_from_name(name: str) -> dt.date | None:
    """Nasdaq names day files ``MMDDYYYY.NASDAQ_ITCH50``; also accept YYYYMMDD and YYYY-MM-DD."""
    for pattern, order in ((r"(\d{4})-(\d{2})-(\d{2})", "ymd"), (r"(?<!\d)(\d{2})(\d{2})(\d{4})(?!\d)", "mdy"),
                           (r"(?<!\d)(\d{4})(\d{2})(\d{2})(?!\d)", "ymd")):
        m = re.search(pattern, name)
        if m:
            a, b, c = (int(x) for x in m.groups())
            try:
                return dt.date(a, b, c) if order == "ymd" else dt.date(c, a, b)
            except ValueError:
                continue
    return None


def _open_writers(out_dir: Path, summary: ReplaySummary):
    from publish.parquet import ParquetWriter  # the pipeline's sink; parsers never import publish

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReplayError(f"cannot create output directory {out_dir}: {exc.strerror}") from None
    meta = {"venue": summary.venue, "date": summary.date, "capture": summary.capture, "schema": "feedhandler/1"}
    return {r.name: ParquetWriter(out_dir / f"{r.name}.parquet", r.dtype, {**meta, "record": r.name})
            for r in schema.RECORDS}


def _show_progress(done: int, started: float) -> None:
    elapsed = max(time.perf_counter() - started, 1e-9)
    sys.stderr.write(f"\r\033[Kreplay: {done / 1e6:,.1f}M messages, {done / elapsed / 1e6:,.2f}M msg/s")
    sys.stderr.flush()


def wants_progress(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()
