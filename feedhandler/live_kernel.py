"""The live hot path in one compiled call per packet batch: arbitration -> ITCH book decode -> order
enrichment -> book update -> latency stamp.

Rules this module keeps:

- It adds no logic of its own to the pipeline: ``live_step`` calls the same numba kernels, in the same
  order and on the same state arrays, as ``Arbiter.feed`` -> ``ItchNormalizer.normalize`` ->
  ``BookEngine.apply`` do (``arbitration._arbitrate``, ``itch50_book.decode_book_rows``,
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
from numba.core import cgutils
from numba.extending import intrinsic

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
FUSED_NEED_ROOM = 5  # the arbiter's outputs may be too small for the batch (``out[O_INDEX]``: its payload bytes)

# Slots of ``out`` (int64), written by every call.
O_STAGE, O_INDEX, O_BOOK_CODE, O_FRAMES, O_STAMP, O_BOOK, O_REST, O_NOW = range(8)
OUT_SLOTS = 8

# Slots of ``acc`` (int64): counts the normalizer keeps in Python, gathered until ``sync()``.
A_BAD_TS, A_UNKNOWN_INSTRUMENT, A_SPAN_LO, A_SPAN_HI, A_BBO_ROWS, A_L2_ROWS, A_TRADES = range(7)
ACC_SLOTS = 7
_NO_SPAN_LO = np.iinfo(np.int64).max
_NO_SPAN_HI = np.iinfo(np.int64).min

_EXECUTE = np.uint8(Action.EXECUTE)
_TRADE = np.uint8(Action.TRADE)
_CROSS = np.uint8(Action.CROSS)

_DIRECTORY = np.uint8(ord("R"))
_INT64 = np.dtype(np.int64)
_SIZE_BY_CODE = itch50.SIZE_BY_CODE
_BOOK_ACTION = itch50_book.BOOK_ACTION

_clock_gettime = types.ExternalFunction("clock_gettime", types.int32(types.int32, types.voidptr))
_CLOCK_REALTIME = 0


@nb.njit(cache=True, nogil=True)
def wall_ns(ts):
    """CLOCK_REALTIME in ns (``ts``: int64[2] scratch for the timespec)."""
    _clock_gettime(_CLOCK_REALTIME, ts.ctypes.data)
    return ts[0] * 1_000_000_000 + ts[1]


@nb.njit(cache=True, nogil=True)
def _split(buf, frames, n, size_by_code, book_lut, book, rest):
    """Book frames into ``book``, the others into ``rest`` (indexes, in order); (-1, -1) when a frame is
    one the fast path does not take: an unknown type, a length other than specified, or a directory
    message (it changes how the batch's book messages decode)."""
    n_book = 0
    n_rest = 0
    for i in range(n):
        t = buf[frames[i].offset]
        spec = size_by_code[t]
        if spec == 0 or np.int64(frames[i].length) != spec or t == _DIRECTORY:
            return -1, -1
        if book_lut[t] != 0:
            book[n_book] = i
            n_book += 1
        else:
            rest[n_rest] = i
            n_rest += 1
    return n_book, n_rest


@nb.njit(cache=True, nogil=True)
def _step(stage, start, discard_rows,
              # arbitration (Arbiter state and outputs)
              data, offset, length, ts_recv, line, now, names, ss, lc, held, arenas, scal, out_buf, frames,
              arb_events,
              # decode (ItchNormalizer state)
              type_counts, known_locate,
              midnight, change_local, offset_before, offset_after, venue, selected, rest, events, wide_size, cross_type,
              # enrichment (columns of ``events``, the OrderRefTable)
              c_action, c_order_id, c_prev, c_price, c_size, c_side, c_instrument, c_flags, keys, tprice, tsize, tside, tinstrument, ref_count, ref_limit, ref_anomalies,
              # books (BookEngine state)
              depth, conflate_ns, od, lv, bkr, st, dirty, emitted, emitted_n, bbo_out, l2_out, bscal,
              # latency histogram, scratch and results
              lat_counts, lat_scal, clock_ts, acc, out):
    """Run one batch from ``stage``/``start`` to the latency stamp, or stop where Python must act
    (``live_step`` calls it with the state arrays rebuilt from their addresses).

    Args:
        stage, start: where to resume (``STAGE_*``; a packet index for arbitration, else an event index).
        discard_rows: 1 when no sink reads BBO/L2 rows: they are counted in ``acc`` and the output
            buffers rewound before the book stage (they would otherwise fill up).
        data .. arb_events: ``arbitration._arbitrate``'s arguments (the batch of ``line``, the Arbiter's
            state, its output buffers with cursors in ``scal``).
        type_counts, known_locate: the normalizer's arrays (the message tables, ``itch50.SIZE_BY_CODE`` and
            ``itch50_book``'s, are constants compiled in).
        midnight .. offset_after: ``VenueClock.kernel_params()``; venue: venue id.
        selected, rest: int64 scratch, as long as ``frames``: indexes of the book frames (decoded here)
            and of the others (``out[O_REST]`` of them, left to the caller's normalizer).
        events, wide_size, cross_type: decode outputs (one row per book frame), as long as ``frames``.
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
        if start == 0:  # a new batch
            if now < 0:  # the last packet's receive time, as Arbiter.feed takes it
                now = ts_recv[ts_recv.shape[0] - 1]
            out[O_NOW] = now
            # room for every message of the batch plus everything held, as Arbiter._reset_outputs sizes it
            payload = np.int64(0)
            for i in range(length.shape[0]):
                payload += length[i]
            messages = payload // 2 + 1 + scal[arb.S_HELD_TOTAL]
            if (messages > frames.shape[0] or messages > events.shape[0]
                    or payload + scal[arb.S_ARENA_USED] > out_buf.shape[0]
                    or messages + scal[arb.S_SESSIONS] + 1 > arb_events.shape[0]):
                out[O_STAGE] = STAGE_ARBITRATE
                out[O_INDEX] = payload
                return FUSED_NEED_ROOM
            scal[arb.S_OUT_FRAMES] = 0  # the output cursors from the start
            scal[arb.S_OUT_BYTES] = 0
            scal[arb.S_OUT_EVENTS] = 0
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
        out[O_BOOK] = 0
        out[O_REST] = 0
        return FUSED_DONE
    if stage == STAGE_DECODE:
        n_book, n_rest = _split(out_buf, frames, n, _SIZE_BY_CODE, _BOOK_ACTION, selected, rest)
        if n_book < 0:
            out[O_STAGE] = STAGE_DECODE
            out[O_INDEX] = 0
            return FUSED_FALLBACK
        out[O_BOOK] = n_book
        out[O_REST] = n_rest
        for j in range(n_book):
            type_counts[out_buf[frames[selected[j]].offset]] += 1
        counts = np.empty(4, np.int64)
        counts[0] = 0
        counts[1] = 0
        counts[2] = _NO_SPAN_LO
        counts[3] = _NO_SPAN_HI
        itch50_book.decode_book_rows(out_buf, frames, selected[:n_book], _BOOK_ACTION,
                                       known_locate, midnight, change_local, offset_before, offset_after, venue,
                                       events[:n_book], wide_size[:n_book], cross_type[:n_book], counts)
        acc[A_BAD_TS] += counts[0]
        acc[A_UNKNOWN_INSTRUMENT] += counts[1]
        if counts[2] <= counts[3]:
            acc[A_SPAN_LO] = min(acc[A_SPAN_LO], counts[2])
            acc[A_SPAN_HI] = max(acc[A_SPAN_HI], counts[3])
        stage = STAGE_ENRICH
        start = 0
    m = out[O_BOOK]
    if stage == STAGE_ENRICH:
        i = enrich_events(start, ref_limit, c_action[:m], c_order_id[:m], c_prev[:m], c_price[:m], c_size[:m],
                          c_side[:m], c_instrument[:m], c_flags[:m], keys, tprice, tsize, tside, tinstrument,
                          ref_count, ref_anomalies)
        if i < m:
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
    code, i = bk.apply_events(start, events[:m], venue, depth, conflate_ns, od, lv, bkr, st, dirty, emitted,
                              emitted_n, bbo_out, l2_out, bscal)
    if code != bk.DONE:
        out[O_STAGE] = STAGE_BOOK
        out[O_INDEX] = i
        out[O_BOOK_CODE] = code
        return FUSED_NEED_BOOK
    stamp = wall_ns(clock_ts)
    _record(lat_counts, lat_scal, frames.ts_recv[:n], stamp)  # every message released, as the ordinary path
    out[O_STAMP] = stamp
    trades = 0  # what parsers.trades counts as a trade row (for the counters when no sink builds them)
    for j in range(m):
        a = c_action[j]
        if (a == _EXECUTE or a == _TRADE or a == _CROSS) and wide_size[j] > 0:
            trades += 1
    acc[A_TRADES] += trades
    return FUSED_DONE


# Places of the state arrays in the address table ``live_step`` gets (``FusedPath.refresh`` fills it).
(P_NAMES, P_SS, P_LC, P_HELD, P_ARENAS, P_SCAL, P_OUT_BUF, P_ARB_EVENTS, P_TYPE_COUNTS, P_KNOWN_LOCATE, P_SELECTED,
 P_REST, P_WIDE_SIZE, P_CROSS_TYPE, P_KEYS, P_TPRICE, P_TSIZE, P_TSIDE, P_TINSTRUMENT, P_REF_COUNT, P_REF_ANOMALIES,
 P_OD, P_LV, P_BK, P_ST, P_DIRTY, P_EMITTED, P_EMITTED_N, P_BSCAL, P_LAT_COUNTS, P_LAT_SCAL, P_CLOCK_TS, P_ACC,
 P_OUT) = range(34)
N_POINTERS = 34
# Slots of the integer settings ``live_step`` gets.
(I_DISCARD, I_MIDNIGHT, I_CHANGE_LOCAL, I_OFFSET_BEFORE, I_OFFSET_AFTER, I_VENUE, I_REF_LIMIT, I_DEPTH,
 I_CONFLATE) = range(9)
N_INTS = 9
# dtype and dimensions of each place, checked when the table is filled
_PLACES = {
    P_NAMES: (np.uint8, 2), P_SS: (np.int64, 2), P_LC: (np.int64, 2), P_HELD: (np.int64, 2), P_ARENAS: (np.uint8, 2),
    P_SCAL: (np.int64, 1), P_OUT_BUF: (np.uint8, 1), P_ARB_EVENTS: (np.int64, 2), P_TYPE_COUNTS: (np.int64, 1),
    P_KNOWN_LOCATE: (np.bool_, 1), P_SELECTED: (np.int64, 1), P_REST: (np.int64, 1), P_WIDE_SIZE: (np.uint64, 1),
    P_CROSS_TYPE: (np.uint8, 1), P_KEYS: (np.uint64, 1), P_TPRICE: (np.int64, 1), P_TSIZE: (np.uint32, 1),
    P_TSIDE: (np.uint8, 1), P_TINSTRUMENT: (np.uint32, 1), P_REF_COUNT: (np.int64, 1), P_REF_ANOMALIES: (np.int64, 1),
    P_OD: (np.int64, 2), P_LV: (np.int64, 2), P_BK: (np.int64, 2), P_ST: (np.int64, 2), P_DIRTY: (np.int64, 1),
    P_EMITTED: (np.int64, 3), P_EMITTED_N: (np.int64, 1), P_BSCAL: (np.int64, 1), P_LAT_COUNTS: (np.int64, 1),
    P_LAT_SCAL: (np.int64, 1), P_CLOCK_TS: (np.int64, 1), P_ACC: (np.int64, 1), P_OUT: (np.int64, 1),
}


@intrinsic
def _address(typingctx, addr):
    """An int64 address as a void pointer (for ``numba.carray``)."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(types.int64), codegen


@nb.njit(cache=True, inline="always")
def _a1(ptrs, dims, k, dtype):
    return nb.carray(_address(ptrs[k]), dims[k, 0], dtype)


@nb.njit(cache=True, inline="always")
def _a2(ptrs, dims, k, dtype):
    return nb.carray(_address(ptrs[k]), (dims[k, 0], dims[k, 1]), dtype)


@nb.njit(cache=True, nogil=True)
def live_step(stage, start, data, offset, length, ts_recv, line, now, frames, events,
              c_action, c_order_id, c_prev, c_price, c_size, c_side, c_instrument, c_flags, bbo_out, l2_out,
              ptrs, dims, ints):
    """``_step`` with the ~50 state arrays passed as one table of addresses and shapes (``ptrs``,
    ``dims``: rows ``P_*``) and the integer settings as one array (``ints``: ``I_*``).

    Unboxing an array argument costs ~70 ns in the dispatcher; rebuilding its view from an address
    costs nothing. The caller keeps every array alive and refills the table whenever one is replaced
    (``FusedPath.refresh``). Record arrays and the strided event columns stay ordinary arguments.
    """
    emitted = nb.carray(_address(ptrs[P_EMITTED]), (dims[P_EMITTED, 0], dims[P_EMITTED, 1], dims[P_EMITTED, 2]),
                        np.int64)
    return _step(stage, start, ints[I_DISCARD],
                 data, offset, length, ts_recv, line, now,
                 _a2(ptrs, dims, P_NAMES, np.uint8), _a2(ptrs, dims, P_SS, np.int64), _a2(ptrs, dims, P_LC, np.int64),
                 _a2(ptrs, dims, P_HELD, np.int64), _a2(ptrs, dims, P_ARENAS, np.uint8),
                 _a1(ptrs, dims, P_SCAL, np.int64), _a1(ptrs, dims, P_OUT_BUF, np.uint8), frames,
                 _a2(ptrs, dims, P_ARB_EVENTS, np.int64),
                 _a1(ptrs, dims, P_TYPE_COUNTS, np.int64), _a1(ptrs, dims, P_KNOWN_LOCATE, np.bool_),
                 ints[I_MIDNIGHT], ints[I_CHANGE_LOCAL], ints[I_OFFSET_BEFORE], ints[I_OFFSET_AFTER], ints[I_VENUE],
                 _a1(ptrs, dims, P_SELECTED, np.int64), _a1(ptrs, dims, P_REST, np.int64), events,
                 _a1(ptrs, dims, P_WIDE_SIZE, np.uint64), _a1(ptrs, dims, P_CROSS_TYPE, np.uint8),
                 c_action, c_order_id, c_prev, c_price, c_size, c_side, c_instrument, c_flags,
                 _a1(ptrs, dims, P_KEYS, np.uint64), _a1(ptrs, dims, P_TPRICE, np.int64),
                 _a1(ptrs, dims, P_TSIZE, np.uint32), _a1(ptrs, dims, P_TSIDE, np.uint8),
                 _a1(ptrs, dims, P_TINSTRUMENT, np.uint32), _a1(ptrs, dims, P_REF_COUNT, np.int64), ints[I_REF_LIMIT],
                 _a1(ptrs, dims, P_REF_ANOMALIES, np.int64),
                 ints[I_DEPTH], ints[I_CONFLATE], _a2(ptrs, dims, P_OD, np.int64), _a2(ptrs, dims, P_LV, np.int64),
                 _a2(ptrs, dims, P_BK, np.int64), _a2(ptrs, dims, P_ST, np.int64), _a1(ptrs, dims, P_DIRTY, np.int64),
                 emitted, _a1(ptrs, dims, P_EMITTED_N, np.int64), bbo_out, l2_out, _a1(ptrs, dims, P_BSCAL, np.int64),
                 _a1(ptrs, dims, P_LAT_COUNTS, np.int64), _a1(ptrs, dims, P_LAT_SCAL, np.int64),
                 _a1(ptrs, dims, P_CLOCK_TS, np.int64), _a1(ptrs, dims, P_ACC, np.int64), _a1(ptrs, dims, P_OUT, np.int64))


class FusedPath:
    """Drives ``live_step`` for a ``LiveHandler``'s arbiter, normalizer, book engine and latency histogram.

    ``feed(batch, line)`` returns ``(fast, after, rest)``: ``fast`` messages went the fast path (books
    updated, latency recorded); ``after`` is None or ``(buf, frames)``, the batch's messages that are
    not book messages (trading status, imbalance, ...; they touch no book), for the caller's
    normalizer once the books are stamped; ``rest`` is None or ``(buf, frames)``, arbiter outputs
    still to go the ordinary way (a batch the fast path does not take, or messages a give-up
    released after the fast part). ``rows()`` hands out the book kernel's rows and the trades for
    sinks (with ``keep_rows``); ``take_row_counts()`` counts and drops them (without).

    The ~70 kernel arguments are kept in a list and only the batch's are set per call: any array the
    arbiter, normalizer, engine or order table may have replaced (by growing) is re-read by
    ``refresh()``, which the path calls itself after it grew something and the caller must call
    after it used any of them the ordinary way (``Arbiter.feed``, ``normalize``, ``BookEngine.apply``
    or ``finish``).
    """

    def __init__(self, arbiter, normalizer, engine, latency, keep_rows: bool) -> None:
        table = normalizer.orders
        if not isinstance(table, OrderRefTable):
            raise TypeError("the fused path enriches through an OrderRefTable; this normalizer has another order index")
        self.arbiter = arbiter
        self.normalizer = normalizer
        self.engine = engine
        self.latency = latency
        self.keep_rows = keep_rows
        # the enrichment counters: the table's own (newer parsers) or the normalizer's
        anomalies = getattr(table, "anomalies", None)
        self._ref_anomalies = anomalies if anomalies is not None else normalizer._ref_anomalies
        self._clock = tuple(int(x) for x in normalizer.clock.kernel_params())
        self._clock_ts = np.zeros(2, np.int64)
        self.acc = np.zeros(ACC_SLOTS, np.int64)
        self.acc[A_SPAN_LO] = _NO_SPAN_LO
        self.acc[A_SPAN_HI] = _NO_SPAN_HI
        self.out = np.zeros(OUT_SLOTS, np.int64)
        self._grow_rows(1 << 12)
        self.batches = 0  # batches taken by the fast path
        self.fallbacks = 0  # batches that went the ordinary way
        self._args: list = []
        self.refresh()

    def _grow_rows(self, n: int) -> None:
        self.events = schema.EVENT.empty(n)
        self.wide_size = np.zeros(n, np.uint64)
        self.cross_type = np.zeros(n, np.uint8)
        self._selected = np.zeros(n, np.int64)
        self._rest = np.zeros(n, np.int64)
        self._columns = tuple(self.events[name] for name in ("action", "order_id", "prev_order_id", "price", "size",
                                                              "side", "instrument_id", "flags"))

    def refresh(self) -> None:
        """Re-read every state array (after anything may have replaced one by growing it)."""
        a, norm, eng, table = self.arbiter, self.normalizer, self.engine, self.normalizer.orders
        midnight, change_local, before, after = self._clock
        placed = {
            P_NAMES: a._names, P_SS: a._ss, P_LC: a._lc, P_HELD: a._held, P_ARENAS: a._arenas, P_SCAL: a._scal,
            P_OUT_BUF: a._out_buf, P_ARB_EVENTS: a._events, P_TYPE_COUNTS: norm._type_counts,
            P_KNOWN_LOCATE: norm._known_locate, P_SELECTED: self._selected, P_REST: self._rest,
            P_WIDE_SIZE: self.wide_size, P_CROSS_TYPE: self.cross_type, P_KEYS: table.keys, P_TPRICE: table.price,
            P_TSIZE: table.size, P_TSIDE: table.side, P_TINSTRUMENT: table.instrument, P_REF_COUNT: table.count,
            P_REF_ANOMALIES: self._ref_anomalies, P_OD: eng.od, P_LV: eng.lv, P_BK: eng.bk, P_ST: eng.st,
            P_DIRTY: eng.dirty, P_EMITTED: eng.emitted, P_EMITTED_N: eng.emitted_n, P_BSCAL: eng.scalars,
            P_LAT_COUNTS: self.latency.counts, P_LAT_SCAL: self.latency.scal, P_CLOCK_TS: self._clock_ts,
            P_ACC: self.acc, P_OUT: self.out,
        }
        ptrs = np.zeros(N_POINTERS, np.int64)
        dims = np.zeros((N_POINTERS, 3), np.int64)
        for k, arr in placed.items():
            dtype, ndim = _PLACES[k]
            if arr.dtype != dtype or arr.ndim != ndim or not arr.flags.c_contiguous or not arr.flags.writeable:
                raise TypeError(f"fused path: state array {k} is {arr.dtype} {arr.shape}, not a writable C-ordered "
                                f"{np.dtype(dtype)} array of {ndim} dimensions")
            ptrs[k] = arr.ctypes.data
            dims[k, :ndim] = arr.shape
        ints = np.zeros(N_INTS, np.int64)
        ints[I_DISCARD] = 0 if self.keep_rows else 1
        ints[I_MIDNIGHT], ints[I_CHANGE_LOCAL], ints[I_OFFSET_BEFORE], ints[I_OFFSET_AFTER] = midnight, change_local, before, after
        ints[I_VENUE] = int(norm.venue)
        ints[I_REF_LIMIT] = table.limit
        ints[I_DEPTH] = eng.depth
        ints[I_CONFLATE] = eng._kernel_conflate
        self._placed = placed  # keeps every array of the table alive
        self._args = [STAGE_ARBITRATE, 0, None, None, None, None, 0, 0,  # the batch: data, offset, length, ts_recv; line, now
                      a._frames, self.events, *self._columns, eng._bbo, eng._l2, ptrs, dims, ints]
        self._i_rows = len(self._args) - 5  # where the book output buffers go
        self._watched = (a._frames, a._out_buf, a._events)

    def feed(self, batch, line: int, now: int | None = None):
        """Arbitrate ``batch`` of ``line`` and, on the fast path, decode, enrich, apply and stamp it."""
        a = self.arbiter
        n = len(batch.offset)
        if n == 0:
            return 0, None, None
        ts_recv = batch.ts_recv
        length = batch.length
        watched = self._watched
        if a._frames is not watched[0] or a._out_buf is not watched[1] or a._events is not watched[2]:
            self.refresh()  # the arbiter grew them on the ordinary path
        offset = batch.offset if batch.offset.dtype is _INT64 else batch.offset.astype(np.int64)
        args, out = self._args, self.out
        args[0] = STAGE_ARBITRATE
        args[1] = 0
        args[2] = batch.data
        args[3] = offset
        args[4] = length
        args[5] = ts_recv
        args[6] = int(line)
        args[7] = -1 if now is None else now
        fallback = False
        while True:
            code = live_step(*args)
            if code == FUSED_DONE:
                break
            args[0], args[1] = stage, start = int(out[O_STAGE]), int(out[O_INDEX])
            if code == FUSED_NEED_ROOM:  # Arbiter._reset_outputs grows the outputs for this payload
                a._reset_outputs(start // 2 + 1, start)
                if len(self.events) < len(a._frames):
                    self._grow_rows(len(a._frames))
                args[1] = start = 0
            elif code == FUSED_NEED_SESSION:
                at = int(offset[start])
                a._add_session(batch.data[at: at + arb.MOLD_SESSION_LEN].tobytes())
            elif code == FUSED_NEED_REFS:
                self.normalizer.orders.grow()
            elif code == FUSED_NEED_BOOK:
                self._book_room(int(out[O_BOOK_CODE]), start)
            else:  # FUSED_FALLBACK
                fallback = True
                break
            self.refresh()
            args = self._args
            args[0], args[1] = stage, start
            # a resumed call keeps the time the batch's first call took (out[O_NOW])
            args[2], args[3], args[4], args[5], args[6], args[7] = batch.data, offset, length, ts_recv, int(line), int(out[O_NOW])
        args[2] = args[3] = args[4] = args[5] = None  # hold no views of the source's buffers
        now = int(out[O_NOW])
        if a._first_ts is None:
            a._first_ts = now
        scal = a._scal
        if fallback:
            self.fallbacks += 1
            done = 0
        else:
            done = int(out[O_FRAMES])
            if done:
                self.batches += 1
        # the timers, exactly as Arbiter.feed runs them: a give-up may release more frames (_tick returns
        # at once unless a silence check is due or a hole is open)
        if scal[arb.S_BLOCKED] or now >= a._next_silence_check:
            a._tick(now)
        if scal[arb.S_OUT_FRAMES] == done and scal[arb.S_OUT_EVENTS] == 0:
            after = None
            if done and out[O_REST]:
                frames = a._frames[:done]
                after = (a._out_buf[: scal[arb.S_OUT_BYTES]], frames[self._rest[: out[O_REST]]])
            return done, after, None
        buf, frames = a._outputs()
        after = (buf, frames[self._rest[: out[O_REST]]]) if done and out[O_REST] else None
        return done, after, ((buf, frames[done:]) if len(frames) > done else None)

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
        m = int(self.out[O_BOOK])
        self.acc[A_TRADES] = 0  # counted from the rows by the caller
        book = self.engine._collect()
        i = self._i_rows  # _collect may have handed the buffers out and made new ones
        self._args[i], self._args[i + 1] = self.engine._bbo, self.engine._l2
        return book, trades_from_events(self.events[:m], self.wide_size[:m], self.cross_type[:m])

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
            self.refresh()
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
