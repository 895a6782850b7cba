"""Replay a capture: frame, decode, normalize and build books batch by batch, and write the records.

The pipeline: capture file -> frames -> ITCH 5.0 normalizer -> book engine (BBO, L2) and OHLCV bars ->
Parquet files (one per record kind). ``stats`` runs the decoding part without books or writing, and
``book`` stops at a time and reads one instrument's book; all three share ``DecodedCapture``, so they
agree on counts.
"""
from __future__ import annotations

import datetime as dt
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence
import threading

import numba as nb
import numpy as np

from captures.reader import CAPTURE_BINARYFILE, CaptureError, open_capture
from parsers import schema
from parsers.clock import VenueClock, session_date
from parsers.itch50_normalize import ItchNormalizer, Normalized
from parsers.venues import VENUES_BY_NAME, Venue
from orderbook.bars import INTERVALS, BarBuilder
from orderbook.engine import BookEngine
from orderbook.records import BBO, L2, ohlcv_record
from feedhandler.pacing import Pacer
from publish.batch import MarketBatch
from publish.runner import SinkRunner

BATCH_MESSAGES = 1 << 16  # messages per batch: large enough for numpy, small enough that buffers come back from the heap instead of fresh zeroed pages (measured: 1<<16 decodes 1.4x faster than 1<<20)
OUTPUT_RECORDS = (*schema.RECORDS, BBO, L2, *(ohlcv_record(i) for i in INTERVALS))
# A paced replay applies one packet's worth of events at a time: the book engine takes fresh output
# buffers after every piece, and 64k-row ones would cost more than the piece (0.4 ms each).
PACED_OUT_ROWS = 1024


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
    integrity: dict[str, int] = field(default_factory=dict)
    resting_orders: int = 0
    interrupted: bool = False
    sinks: dict[str, dict[str, int]] = field(default_factory=dict)
    out: str | None = None
    seconds: float = 0.0
    msgs_per_s: float = 0.0

    def as_json(self) -> dict:
        return asdict(self)


# Parquet codecs of the replay's files (pyarrow's names). snappy (the default, as pyarrow's and
# Spark's) writes the day's rows fastest; zstd makes files about 0.9 of the size and takes about 1.4x
# as long to write them, which holds a replay under 3M msg/s on two cores; lz4 lies between.
COMPRESSIONS = ("snappy", "zstd", "lz4", "none")
DEFAULT_COMPRESSION = "snappy"  # publish.parquet.DEFAULT_COMPRESSION (a test keeps them equal)


class ReplayError(Exception):
    """A replay that cannot start (bad capture, no session date); one line for the user."""


class DecodedCapture:
    """A capture decoded batch by batch into the common schema (``batches()``), and its counts.

    With ``books`` (a ``BookEngine``), the engine is the normalizer's order index: each batch is applied
    to the books as it is decoded, and its book rows come in ``batch.book``.
    """

    def __init__(self, path: str | Path, date: dt.date | None = None, venue: str = "nasdaq",
                 udp_port: int | None = None, books: BookEngine | None = None) -> None:
        try:
            self.capture = open_capture(path, udp_port=udp_port)
        except CaptureError as exc:
            raise ReplayError(str(exc)) from None
        self.path = str(path)
        self.venue = VENUES_BY_NAME[venue]
        self.date = date
        self.books = books
        self.normalizer: ItchNormalizer | None = None
        self.instruments = _InstrumentSet()
        self.messages_done = 0

    def batches(self) -> Iterator[Normalized]:
        """Normalized batches in sequence order; the normalizer exists once the first batch came."""
        for buf, frames in self.capture.iter_batches(max_packets=BATCH_MESSAGES):
            for start in range(0, len(frames), BATCH_MESSAGES):
                part = frames[start : start + BATCH_MESSAGES]
                if self.normalizer is None:
                    day = self.date or _date_from_capture(self.capture, self.path, part, self.venue)
                    self.normalizer = self._normalizer(day)
                batch = self.normalizer.normalize(buf, part)
                for rows in batch.records().values():
                    if "instrument_id" in rows.dtype.names and len(rows):
                        self.instruments.note(rows["instrument_id"])
                self.messages_done += len(part)
                yield batch
        if self.normalizer is None:  # nothing framed: a valid, empty replay (no timestamps to convert)
            day = self.date or dt.date(1970, 1, 1)
            self.normalizer = self._normalizer(day)

    def _normalizer(self, day: dt.date) -> ItchNormalizer:
        index = {} if self.books is None else {"orders": self.books}
        return ItchNormalizer(clock=VenueClock(day, self.venue.tz), venue=self.venue.id, **index)

    def summary(self) -> ReplaySummary:
        """Counts of everything decoded so far (call after ``batches()`` ran)."""
        n = self.normalizer
        stats = self.capture.stats
        out = ReplaySummary(capture=self.path, format=self.capture.kind, venue=self.venue.name,
                            date=n.clock.date.isoformat())
        out.messages = stats.messages
        out.packets = stats.packets
        out.by_type = dict(sorted(n.by_type.items()))
        out.sessions = stats.sessions
        out.gaps = stats.gaps
        self.instruments.note(np.fromiter(n.symbols, dtype=np.uint32, count=len(n.symbols)))
        out.instruments = len(self.instruments)
        out.first_ts = n.first_ts_event
        out.last_ts = n.last_ts_event
        out.anomalies = dict(sorted({**stats.anomalies, **n.anomaly_counts()}.items()))
        if stats.duplicate_messages:
            out.anomalies["duplicate_messages"] = stats.duplicate_messages
        return out


def replay(
    path: str | Path,
    out_dir: str | Path | None,
    date: dt.date | None = None,
    venue: str = "nasdaq",
    udp_port: int | None = None,
    progress: bool = False,
    books: bool = True,
    depth: int = 10,
    conflate_ns: int = 0,
    runners: Sequence[SinkRunner] = (),
    speed: float | None = None,
    stop: threading.Event | None = None,
    compression: str = DEFAULT_COMPRESSION,
) -> ReplaySummary:
    """Decode a whole capture, build every book and bar; write Parquet under ``out_dir`` unless None.

    ``books=False`` decodes only (``stats``); ``out_dir=None`` with books is ``--sink null``.
    ``runners`` get a ``MarketBatch`` per piece (they queue it and never block); ``speed`` paces the
    pieces by the capture's clock (None: as fast as possible); setting ``stop`` ends the replay early,
    with everything decoded so far written (``summary.interrupted``). ``compression``: the Parquet
    codec (``COMPRESSIONS``).
    """
    started = time.perf_counter()
    pacer = Pacer(speed) if speed else None
    engine = (BookEngine(depth=depth, conflate_ns=conflate_ns, venue=VENUES_BY_NAME[venue].id,
                         **({"out_rows": PACED_OUT_ROWS} if pacer else {})) if books else None)
    # Unpaced, the engine indexes the orders as the normalizer decodes (one index, not two); paced, a
    # batch is applied piece by piece at each piece's time, so the normalizer keeps its own index.
    fused = engine is not None and pacer is None
    source = DecodedCapture(path, date, venue, udp_port, books=engine if fused else None)
    bars = BarBuilder(venue=source.venue.id, tz=source.venue.tz) if books else None
    outputs = _Outputs(out_dir, compression)
    publisher = _Publisher(source, runners)
    interrupted = False
    last_piece = None  # paced with conflation: capture time of the last piece applied since a flush
    try:
        for batch in source.batches():
            outputs.open_once(source)
            for capture_ns, piece in (pacer.pieces(batch) if pacer else [(0, batch)]):
                if stop is not None and stop.is_set():
                    interrupted = True
                    break
                if pacer and capture_ns:  # a piece without book events has no time to wait for
                    if last_piece is not None and capture_ns - last_piece >= conflate_ns:
                        # Quiet for a whole window: emit it once the window is over, as a live handler's
                        # idle flush does, instead of holding the updates until the next packet.
                        pacer.wait_until(last_piece + conflate_ns)
                        book = engine.finish()
                        outputs.write("bbo", book.bbo)
                        outputs.write("l2", book.l2)
                        publisher.publish(bbo=book.bbo, l2=book.l2)
                    pacer.wait_until(capture_ns)
                    last_piece = capture_ns if engine is not None and conflate_ns > 0 else None
                if engine is not None:
                    book = piece.book if fused else engine.apply(piece.events)
                    # The sinks first: a paced piece's updates are on their way while the rest is done.
                    publisher.publish(bbo=book.bbo, l2=book.l2, trades=piece.trades, status=piece.status)
                for name, rows in piece.records().items():
                    outputs.write(name, rows)
                if engine is not None:
                    outputs.write("bbo", book.bbo)
                    outputs.write("l2", book.l2)
                    bars.add_trades(piece.trades)
                    bars.add_broken(piece.broken_trades)
            if progress:
                _show_progress(source.messages_done, started)
            if interrupted:
                break
        outputs.open_once(source)
        if engine is not None:
            book = engine.finish()
            outputs.write("bbo", book.bbo)
            outputs.write("l2", book.l2)
            ohlcv = bars.finish()
            for interval, rows in ohlcv.items():
                outputs.write(f"ohlcv_{interval}", rows)
            publisher.publish(bbo=book.bbo, l2=book.l2, ohlcv=ohlcv, final=True)
    finally:
        outputs.close()
    if progress:
        sys.stderr.write("\r\033[K")
    summary = source.summary()
    summary.rows = outputs.rows
    summary.interrupted = interrupted
    if engine is not None:
        summary.integrity = engine.integrity()
        summary.resting_orders = engine.orders
    summary.out = None if out_dir is None else str(out_dir)
    summary.seconds = round(time.perf_counter() - started, 6)
    summary.msgs_per_s = round(summary.messages / summary.seconds, 1) if summary.seconds > 0 else 0.0
    return summary


class _Publisher:
    """Hands each piece's book outputs to every sink runner as one ``MarketBatch``."""

    def __init__(self, source: DecodedCapture, runners: Sequence[SinkRunner]) -> None:
        self.source = source
        self.runners = list(runners)
        self._symbols: dict[int, str] = {}

    def publish(self, **arrays) -> None:
        if not self.runners:
            return
        known = self.source.normalizer.symbols
        if len(known) != len(self._symbols):  # sinks read it on their threads: hand out a copy
            self._symbols = dict(known)
        batch = MarketBatch(venue=self.source.venue.name, symbols=self._symbols, **arrays)
        if batch.rows or batch.final:
            for runner in self.runners:
                runner.offer(batch)


class _Outputs:
    """One Parquet writer per record kind under ``out_dir`` (none for the null sink), and row counts."""

    def __init__(self, out_dir: str | Path | None, compression: str = DEFAULT_COMPRESSION) -> None:
        if compression not in COMPRESSIONS:
            raise ReplayError(f"unknown Parquet compression {compression!r}: one of {', '.join(COMPRESSIONS)}")
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.compression = compression
        self.rows: dict[str, int] = {}
        self._writers: dict | None = None

    def open_once(self, source: DecodedCapture) -> None:
        if self._writers is not None or self.out_dir is None:
            return
        from publish.parquet import BackgroundWriters, ParquetWriter  # the pipeline's embedded sink

        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReplayError(f"cannot create output directory {self.out_dir}: {exc.strerror}") from None
        meta = {"venue": source.venue.name, "date": source.normalizer.clock.date.isoformat(),
                "capture": source.path, "schema": "feedhandler/1"}
        self._writers = BackgroundWriters(
            {r.name: ParquetWriter(self.out_dir / f"{r.name}.parquet", r.dtype, {**meta, "record": r.name},
                                   compression=self.compression)
             for r in OUTPUT_RECORDS})

    def write(self, name: str, rows: np.ndarray) -> None:
        self.rows[name] = self.rows.get(name, 0) + len(rows)
        if self._writers is not None:
            self._writers.write(name, rows)

    def close(self) -> None:
        if self._writers is not None:
            self._writers.close()


class _InstrumentSet:
    """Distinct nonzero instrument ids seen: a bitmap for the small ids every ITCH venue uses."""

    SMALL = 1 << 16

    def __init__(self) -> None:
        self._small = np.zeros(self.SMALL, dtype=bool)
        self._large: set[int] = set()

    def note(self, ids: np.ndarray) -> None:
        if _mark_small(ids, self._small):  # one compiled pass; the rare large ids in numpy
            large = ids[ids >= self.SMALL]
            self._large.update(np.unique(large).tolist())

    def __len__(self) -> int:
        return int(self._small[1:].sum()) + len(self._large)


@nb.njit(cache=True, nogil=True, _nrt=False)
def _mark_small(ids, bitmap):
    """Mark the ids below ``len(bitmap)``; True if there were others."""
    n = bitmap.shape[0]
    large = False
    for i in range(ids.shape[0]):
        v = ids[i]
        if v < n:
            bitmap[v] = True
        else:
            large = True
    return large


def _date_from_capture(capture, path: str, frames: np.ndarray, venue: Venue | None = None) -> dt.date:
    """The session date: first receive timestamp in the venue's time zone, or the file name."""
    tz = venue.tz if venue is not None else "America/New_York"
    stamped = frames["ts_recv"][frames["ts_recv"] > 0]
    if len(stamped):
        return session_date(int(stamped[0]), tz)
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


def _show_progress(done: int, started: float) -> None:
    elapsed = max(time.perf_counter() - started, 1e-9)
    sys.stderr.write(f"\r\033[Kreplay: {done / 1e6:,.1f}M messages, {done / elapsed / 1e6:,.2f}M msg/s")
    sys.stderr.flush()


def wants_progress(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()
