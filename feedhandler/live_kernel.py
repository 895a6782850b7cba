"""The live hot path in one compiled call per packet batch: arbitration -> ITCH book decode -> order
enrichment -> book update -> latency stamp.

Rules this module keeps:

- It adds no logic of its own to the pipeline: ``live_step`` calls the same numba kernels, in the same
  order and on the same state arrays, as ``Arbiter.feed`` -> ``ItchNormalizer.normalize`` ->
  ``BookEngine.apply`` do (``arbitration._arbitrate``, ``itch50_book.decode_book_events``,
  ``order_refs.enrich_events``, ``orderbook.kernel.apply_events``), so the books are those of a
  replay. What it saves is the Python around them: ~35 us of calls, views and dataclasses per
  16-message packet become one dispatch of ~50 arguments (~3 us).
- The fast path takes a batch whose released messages are all whole ITCH book messages (A F E C X D
  U P Q of their specified size): nearly every live batch. Anything else (a directory or status
  message, an unknown type, a message of an unexpected length) stops the kernel after arbitration,
  before it touched the normalizer's state, and the batch goes the ordinary way
  (``ItchNormalizer.normalize`` + ``BookEngine.apply``) from the arbiter's outputs.
- The kernel never allocates arrays that outlive it and never grows anything: when a table is full
  it returns which one and where it stopped (``NEED_*``); Python grows it (the owners' own methods)
  and calls again from that stage and index.
- Time: the latency stamp is taken inside the kernel (``clock_gettime(CLOCK_REALTIME)``, the clock
  SO_TIMESTAMPNS uses) right after the last book update of the batch, and every delivered message
  is recorded in the handler's ``LatencyHistogram`` in the same call.
- Counters the normalizer keeps as Python objects (anomaly Counter, the ts_event span) are gathered
  in a small array here and folded into the normalizer by ``FusedPath.sync()`` (at every snapshot
  and before any batch goes the ordinary way), so its reports read the same as after a replay.
"""
from __future__ import annotations

import numba as nb
import numpy as np
from numba import types

from feedhandler import arbitration as arb
from feedhandler.metrics import _record
from orderbook import kernel as bk
from parsers import itch50, itch50_book, schema
from parsers.order_refs import OrderRefTable, enrich_events
from parsers.schema import Action
from parsers.trades import trades_from_events

# Stages of ``live_step`` (a call resumes at ``stage`` from index ``start``).
STAGE_ARBITRATE = 0  # start: packet index
STAGE_DECODE = 1
STAGE_ENRICH = 2  # start: event index
STAGE_BOOK = 3  # start: event index

# Return codes (with the stage and index to resume at).
FUSED_DONE = 0
FUSED_NEED_SESSION = 1  # arbitration met an unknown session at packet ``index``: register it, resume
FUSED_FALLBACK = 2  # a message the fast path does not take: normalize the arbiter's outputs the ordinary way
FUSED_NEED_REFS = 3  # the order-reference table is at its load limit: grow it, resume enrichment
FUSED_NEED_BOOK = 4  # the book kernel asked for room (``out[O_BOOK_CODE]``: orderbook.kernel NEED_*)

# Slots of ``out`` (int64), written by every call.
O_STAGE, O_INDEX, O_BOOK_CODE, O_FRAMES, O_STAMP = range(5)
OUT_SLOTS = 5

# Slots of ``acc`` (int64): counts the normalizer keeps in Python, gathered until ``sync()``.
A_BAD_TS, A_UNKNOWN_INSTRUMENT, A_SPAN_LO, A_SPAN_HI, A_BBO_ROWS, A_L2_ROWS, A_TRADES = range(7)
ACC_SLOTS = 7
_NO_SPAN_LO = np.iinfo(np.int64).max
_NO_SPAN_HI = np.iinfo(np.int64).min

_EXECUTE = np.uint8(Action.EXECUTE)
_TRADE = np.uint8(Action.TRADE)
_CROSS = np.uint8(Action.CROSS)

_clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.voidptr))
_CLOCK_REALTIME = 0


@nb.njit(cache=True, nogil=True)
def wall_ns(ts):
    """CLOCK_REALTIME in ns (``ts``: int64[2] scratch for the timespec)."""
    _clock_gettime(_CLOCK_REALTIME, ts.ctypes.data)
    return ts[0] * 1_000_000_000 + ts[1]


@nb.njit(cache=True, nogil=True)
def _all_book(buf, frames, n, size_by_code, book_lut):
    """Whether every one of the first ``n`` frames is a whole book message of exactly its specified size."""
    for i in range(n):
        t = buf[frames[i].offset]
        spec = size_by_code[t]
        if spec == 0 or book_lut[t] == 0 or np.int64(frames[i].length) != spec:
            return False
    return True


@nb.njit(cache=True, nogil=True)
def live_step(stage, start, discard_rows,
              # arbitration (Arbiter state and outputs)
              data, offset, length, ts_recv, line, now, names, ss, lc, held, arenas, scal, out_buf, frames,
              arb_events,
              # decode (ItchNormalizer state)
              size_by_code, book_lut, book_offset, book_width, type_counts, known_locate,
              midnight, change_local, offset_before, offset_after, venue, selected, events, wide_size, cross_type,
              # enrichment (columns of ``events``, the OrderRefTable)
              c_action, c_order_id, c_prev, c_price, c_size, c_side, c_instrument, c_flags, keys, tprice, tsize, tside, tinstrument, ref_count, ref_limit, ref_anomalies,
              # books (BookEngine state)
              depth, conflate_ns, od, lv, bkr, st, dirty, emitted, emitted_n, bbo_out, l2_out, bscal,
              # latency histogram, scratch and results
              lat_counts, lat_scal, clock_ts, acc, out):
    """Run one batch from ``stage``/``start`` to the latency stamp, or stop where Python must act.

    Args:
        stage, start: where to resume (``STAGE_*``; a packet index for arbitration, else an event index).
        discard_rows: 1 when no sink reads BBO/L2 rows: they are counted in ``acc`` and the output
            buffers rewound before the book stage (they would otherwise fill up).
        data .. arb_events: ``arbitration._arbitrate``'s arguments (the batch of ``line``, the Arbiter's
            state, its output buffers with cursors in ``scal``).
        size_by_code, book_lut, book_offset, book_width: ``itch50.SIZE_BY_CODE``, ``itch50_book.BOOK_ACTION``,
            ``BOOK_OFFSET``, ``BOOK_WIDTH``; type_counts, known_locate: the normalizer's arrays.
        midnight .. offset_after: ``VenueClock.kernel_params()``; venue: venue id.
        selected: int64 0..k (k >= frames), the identity selection for ``decode_book_events``.
        events, wide_size, cross_type: decode outputs, at least as long as ``frames``.
        c_action .. c_flags: views of ``events``' columns (numba sees in-kernel field views of this
            packed record as unaligned); keys .. ref_anomalies: the ``OrderRefTable`` arrays, its load
            limit, the enrichment counters.
        depth .. bscal: ``orderbook.kernel.apply_events``' state arguments.
        lat_counts, lat_scal: the ``LatencyHistogram`` arrays; clock_ts: int64[2] scratch.
        acc: int64[ACC_SLOTS], see ``A_*``; out: int64[OUT_SLOTS], see ``O_*``.

    Returns:
        a ``FUSED_*`` code; ``out`` says where to resume and, when done, how many frames were
        delivered and the stamp.
    """
    if stage == STAGE_ARBITRATE:
        code, p = arb._arbitrate(data, offset, length, ts_recv, start, line, now, names, ss, lc, held, arenas, scal,
                                 out_buf, frames, arb_events)
        if code != arb.DONE:
            out[O_STAGE] = STAGE_ARBITRATE
            out[O_INDEX] = p
            return FUSED_NEED_SESSION
        stage = STAGE_DECODE
        start = 0
    n = scal[arb.S_OUT_FRAMES]
    out[O_FRAMES] = n
    if n == 0:
        out[O_STAGE] = STAGE_BOOK
        out[O_INDEX] = 0
        return FUSED_DONE
    ev = events[:n]
    if stage == STAGE_DECODE:
        if not _all_book(out_buf, frames, n, size_by_code, book_lut):
            out[O_STAGE] = STAGE_DECODE
            out[O_INDEX] = 0
            return FUSED_FALLBACK
        for i in range(n):
            type_counts[out_buf[frames[i].offset]] += 1
        counts = np.empty(4, np.int64)
        counts[0] = 0
        counts[1] = 0
        counts[2] = _NO_SPAN_LO
        counts[3] = _NO_SPAN_HI
        itch50_book.decode_book_events(out_buf, frames, selected[:n], book_offset, book_width, book_lut, known_locate,
                                       midnight, change_local, offset_before, offset_after, venue, ev,
                                       wide_size[:n], cross_type[:n], counts)
        acc[A_BAD_TS] += counts[0]
        acc[A_UNKNOWN_INSTRUMENT] += counts[1]
        if counts[2] <= counts[3]:
            acc[A_SPAN_LO] = min(acc[A_SPAN_LO], counts[2])
            acc[A_SPAN_HI] = max(acc[A_SPAN_HI], counts[3])
        stage = STAGE_ENRICH
        start = 0
    if stage == STAGE_ENRICH:
        i = enrich_events(start, ref_limit, c_action[:n], c_order_id[:n], c_prev[:n], c_price[:n], c_size[:n],
                          c_side[:n], c_instrument[:n], c_flags[:n], keys, tprice, tsize, tside, tinstrument,
                          ref_count, ref_anomalies)
        if i < n:
            out[O_STAGE] = STAGE_ENRICH
            out[O_INDEX] = i
            return FUSED_NEED_REFS
        stage = STAGE_BOOK
        start = 0
        if discard_rows:
            acc[A_BBO_ROWS] += bscal[bk.S_BBO_ROWS]
            acc[A_L2_ROWS] += bscal[bk.S_L2_ROWS]
            bscal[bk.S_BBO_ROWS] = 0
            bscal[bk.S_L2_ROWS] = 0
    code, i = bk.apply_events(start, ev, venue, depth, conflate_ns, od, lv, bkr, st, dirty, emitted, emitted_n,
                              bbo_out, l2_out, bscal)
    if code != bk.DONE:
        out[O_STAGE] = STAGE_BOOK
        out[O_INDEX] = i
        out[O_BOOK_CODE] = code
        return FUSED_NEED_BOOK
    stamp = wall_ns(clock_ts)
    _record(lat_counts, lat_scal, frames.ts_recv[:n], stamp)
    out[O_STAGE] = STAGE_BOOK
    out[O_INDEX] = n
    out[O_STAMP] = stamp
    trades = 0  # what parsers.trades counts as a trade row (for the counters when no sink builds them)
    for i in range(n):
        a = c_action[i]
        if (a == _EXECUTE or a == _TRADE or a == _CROSS) and wide_size[i] > 0:
            trades += 1
    acc[A_TRADES] += trades
    return FUSED_DONE


class FusedPath:
    """Drives ``live_step`` for a ``LiveHandler``'s arbiter, normalizer, book engine and latency histogram.

    ``feed(batch, line)`` returns ``(fast, rest)``: ``fast`` messages went the fast path (books updated,
    latency recorded); ``rest`` is None or ``(buf, frames)``, arbiter outputs still to be decoded and
    applied the ordinary way (a batch with other messages, or messages a give-up released after the
    fast part).
    ``rows()`` hands out what the book kernel wrote for the sinks (with ``keep_rows``); ``events`` /
    ``wide_size`` / ``cross_type`` hold the last fast batch's decoded rows (for trades).
    """

    def __init__(self, arbiter, normalizer, engine, latency, keep_rows: bool) -> None:
        self.arbiter = arbiter
        self.normalizer = normalizer
        self.engine = engine
        self.latency = latency
        self.keep_rows = keep_rows
        self._discard = 0 if keep_rows else 1
        table = normalizer.orders
        if not isinstance(table, OrderRefTable):
            raise TypeError("the fused path enriches through an OrderRefTable; this normalizer has another order index")
        # the enrichment counters: the table's own (newer parsers) or the normalizer's
        anomalies = getattr(table, "anomalies", None)
        self._ref_anomalies = anomalies if anomalies is not None else normalizer._ref_anomalies
        self._clock = tuple(int(x) for x in normalizer.clock.kernel_params())
        self._venue = int(normalizer.venue)
        self._clock_ts = np.zeros(2, np.int64)
        self.acc = np.zeros(ACC_SLOTS, np.int64)
        self.acc[A_SPAN_LO] = _NO_SPAN_LO
        self.acc[A_SPAN_HI] = _NO_SPAN_HI
        self.out = np.zeros(OUT_SLOTS, np.int64)
        self._grow_rows(1 << 12)
        self.batches = 0  # batches taken by the fast path
        self.fallbacks = 0  # batches normalized the ordinary way

    def _grow_rows(self, n: int) -> None:
        self.events = schema.EVENT.empty(n)
        self.wide_size = np.zeros(n, np.uint64)
        self.cross_type = np.zeros(n, np.uint8)
        self._selected = np.arange(n, dtype=np.int64)
        self._columns = tuple(self.events[name] for name in ("action", "order_id", "prev_order_id", "price", "size",
                                                              "side", "instrument_id", "flags"))

    def feed(self, batch, line: int, now: int | None = None):
        """Arbitrate ``batch`` of ``line`` and, on the fast path, decode, enrich, apply and stamp it."""
        a = self.arbiter
        n = len(batch.offset)
        if n == 0:
            return None
        if now is None:
            now = int(batch.ts_recv[n - 1])
        if a._first_ts is None:
            a._first_ts = now
        payload = int(batch.length[0]) if n == 1 else int(batch.length.sum())
        a._reset_outputs(payload // 2 + 1, payload)
        if len(self.events) < len(a._frames):
            self._grow_rows(len(a._frames))
        offset = batch.offset if batch.offset.dtype == np.int64 else batch.offset.astype(np.int64)
        stage, start = STAGE_ARBITRATE, 0
        norm, eng, lat, table, out = self.normalizer, self.engine, self.latency, self.normalizer.orders, self.out
        midnight, change_local, before, after = self._clock
        fallback = False
        while True:
            code = live_step(
                stage, start, self._discard,
                batch.data, offset, batch.length, batch.ts_recv, int(line), now, a._names, a._ss, a._lc, a._held,
                a._arenas, a._scal, a._out_buf, a._frames, a._events,
                itch50.SIZE_BY_CODE, itch50_book.BOOK_ACTION, itch50_book.BOOK_OFFSET, itch50_book.BOOK_WIDTH,
                norm._type_counts, norm._known_locate, midnight, change_local, before, after, self._venue,
                self._selected, self.events, self.wide_size, self.cross_type, *self._columns,
                table.keys, table.price, table.size, table.side, table.instrument, table.count, table.limit,
                self._ref_anomalies,
                eng.depth, eng._kernel_conflate, eng.od, eng.lv, eng.bk, eng.st, eng.dirty, eng.emitted,
                eng.emitted_n, eng._bbo, eng._l2, eng.scalars,
                lat.counts, lat.scal, self._clock_ts, self.acc, out)
            if code == FUSED_DONE:
                break
            stage, start = int(out[O_STAGE]), int(out[O_INDEX])
            if code == FUSED_NEED_SESSION:
                at = int(offset[start])
                a._add_session(batch.data[at: at + arb.MOLD_SESSION_LEN].tobytes())
            elif code == FUSED_NEED_REFS:
                table.grow()
            elif code == FUSED_NEED_BOOK:
                self._book_room(int(out[O_BOOK_CODE]), start)
            else:  # FUSED_FALLBACK
                fallback = True
                break
        done = 0 if fallback else int(out[O_FRAMES])
        if fallback:
            self.fallbacks += 1
        elif done:
            self.batches += 1
        a._tick(now)  # timers, exactly as Arbiter.feed runs them: a give-up may release more frames
        buf, frames = a._outputs()
        return done, ((buf, frames[done:]) if len(frames) > done else None)

    def _book_room(self, code: int, index: int) -> None:
        """What ``BookEngine.apply`` does for each of the kernel's requests."""
        eng = self.engine
        if code == bk.NEED_ORDERS:
            eng._grow_orders()
        elif code == bk.NEED_POOL:
            eng._grow_pool()
        elif code == bk.NEED_BOOKS:
            eng._grow_books(int(self.events["instrument_id"][index]))
        elif code == bk.NEED_OUTPUT:
            eng._make_room()
        else:
            raise RuntimeError(f"book kernel returned an unknown code {code}")

    def rows(self):
        """The BBO and L2 rows the book kernel wrote since the last call (``BookEngine`` output), and the
        last fast batch's trades (``schema.TRADE`` rows, as ``ItchNormalizer.normalize`` makes them)."""
        n = int(self.out[O_FRAMES])
        self.acc[A_TRADES] = 0  # counted from the rows by the caller
        return self.engine._collect(), trades_from_events(self.events[:n], self.wide_size[:n], self.cross_type[:n])

    def last_events(self) -> int:
        """Frames (= event rows) of the last fast batch."""
        return int(self.out[O_FRAMES])

    def take_row_counts(self) -> tuple[int, int, int]:
        """BBO rows, L2 rows and trades of the fast batches since the last call, when no sink takes
        the rows (they are dropped here; ``rows()`` is the call that keeps them)."""
        eng = self.engine
        acc = self.acc
        n_bbo = int(acc[A_BBO_ROWS] + eng.scalars[bk.S_BBO_ROWS])
        n_l2 = int(acc[A_L2_ROWS] + eng.scalars[bk.S_L2_ROWS])
        n_trades = int(acc[A_TRADES])
        acc[A_BBO_ROWS] = 0
        acc[A_L2_ROWS] = 0
        acc[A_TRADES] = 0
        eng.scalars[bk.S_BBO_ROWS] = 0
        eng.scalars[bk.S_L2_ROWS] = 0
        if eng._bbo_parts or eng._l2_parts:  # a batch large enough to take the buffers' rows out
            rows = eng._collect()
            n_bbo += len(rows.bbo)
            n_l2 += len(rows.l2)
        return n_bbo, n_l2, n_trades

    def sync(self) -> None:
        """Fold the counters gathered by the fast path into the normalizer (its anomaly Counter and span)."""
        acc, norm = self.acc, self.normalizer
        if acc[A_BAD_TS]:
            norm.anomalies["bad_timestamp"] += int(acc[A_BAD_TS])
            acc[A_BAD_TS] = 0
        if acc[A_UNKNOWN_INSTRUMENT]:
            norm.anomalies["unknown_instrument"] += int(acc[A_UNKNOWN_INSTRUMENT])
            acc[A_UNKNOWN_INSTRUMENT] = 0
        if acc[A_SPAN_LO] <= acc[A_SPAN_HI]:
            norm._note_span(int(acc[A_SPAN_LO]), int(acc[A_SPAN_HI]))
            acc[A_SPAN_LO] = _NO_SPAN_LO
            acc[A_SPAN_HI] = _NO_SPAN_HI
