"""Random, mostly valid streams of normalized book events (``schema.EVENT`` arrays) for book tests.

A stream is built from a list of *ops*: ``(kind, instrument index, side bit, a, b)`` with ``a`` and
``b`` plain integers that pick an order, a price offset, a size. ``build_events`` interprets the ops
against its own record of live orders, so whatever the ops are, the events mostly make sense: cancels
and executions name live orders and take less than remains, replaces name a live order, and so on.
Two sources feed it the same way:

- ``event_streams(...)``: a hypothesis strategy (ops drawn by hypothesis, so failures shrink to a few
  events);
- ``random_events(seed, n, instruments)``: ops drawn from ``numpy.random.RandomState(seed)``, for large
  differential tests.

What the streams hold: adds (round and odd lots), partial cancels, partial and full executions,
executions whose event price differs from the resting price (ITCH C), deletes, replaces with a new price
and size, non-book trades, auction crosses, clears, an occasional aggressive add that locks or crosses
the book, and with ``invalid=True`` occasional invalid events: unknown ids (cancel, delete, execute,
replace), oversize cancels and executions, duplicate adds. Bids rest below a fixed mid per instrument
and asks above it (a CLEAR draws a new mid), so books are uncrossed unless an aggressive add says so.

Events look like ``ItchNormalizer`` output: ``sequence`` rises by one from ``first_sequence``,
``ts_event`` rises strictly, ``ts_recv`` a few microseconds later; deletes carry the remaining size,
cancels/executions/deletes the order's side and price (an execution may carry another price); events
naming unknown ids carry ``UNDEF_PRICE``, side NONE and ``Flag.UNKNOWN_REF``; duplicate adds
``Flag.DUPLICATE_REF``.
"""
from __future__ import annotations

import enum
from typing import Sequence

import numpy as np
from hypothesis import strategies as st

from parsers.schema import EVENT, PRICE_SCALE, UNDEF_PRICE, Action, Flag, Side

TICK = PRICE_SCALE // 100  # one cent in price units
T0 = 1_710_509_400_000_000_000  # 2024-03-15 09:30 EDT, epoch ns
MAX_LIVE = 48  # live orders per instrument before adds turn into deletes


class Op(enum.IntEnum):
    """What one op asks for (``build_events`` falls back to ADD when there is no order to act on)."""

    ADD = 0
    CANCEL = 1  # partial cancel
    EXECUTE = 2  # partial execution at the resting price
    EXECUTE_ALL = 3  # the whole remaining size
    EXECUTE_AT = 4  # an execution whose event price is not the resting price (ITCH C)
    DELETE = 5
    REPLACE = 6  # new id, new price (maybe the same) and size, same side
    TRADE = 7  # non-book trade
    CROSS = 8
    CLEAR = 9
    AGGRESSIVE_ADD = 10  # an add at or through the mid: may lock or cross the book
    UNKNOWN_ID = 11  # invalid: cancel/delete/execute/replace of an id never used
    OVERSIZE = 12  # invalid: cancel/execute more than remains
    DUPLICATE_ADD = 13  # invalid: an add reusing a live id


# Relative weights: mostly adds, deletes, replaces; a little of everything else.
VALID_WEIGHTS = {
    Op.ADD: 36, Op.CANCEL: 8, Op.EXECUTE: 6, Op.EXECUTE_ALL: 5, Op.EXECUTE_AT: 3, Op.DELETE: 20,
    Op.REPLACE: 14, Op.TRADE: 4, Op.CROSS: 1, Op.CLEAR: 0.3, Op.AGGRESSIVE_ADD: 0.2,
}
INVALID_WEIGHTS = {Op.UNKNOWN_ID: 0.7, Op.OVERSIZE: 0.7, Op.DUPLICATE_ADD: 0.6}
_UNKNOWN_ID_BASE = 1 << 48  # ids from here up are never added


def _weights(invalid: bool) -> dict[Op, float]:
    return {**VALID_WEIGHTS, **(INVALID_WEIGHTS if invalid else {})}


class _Builder:
    """Turns ops into events while keeping a record of live orders (id -> [inst, side, price, size])."""

    def __init__(self, instruments: Sequence[int], first_sequence: int, t0: int, venue: int) -> None:
        self.instruments = [int(i) for i in instruments]
        self.live: dict[int, dict[int, list[int]]] = {i: {} for i in self.instruments}
        self.mid = {i: (1000 + 997 * k) % 40_000 + 500 for k, i in enumerate(self.instruments)}  # ticks
        self.rows: list[tuple] = []
        self.seq = first_sequence
        self.ts = t0
        self.venue = venue
        self.next_id = 1
        self.next_match = 1
        self.unknown = 0

    def emit(self, inst, action, side=Side.NONE, price=UNDEF_PRICE, size=0, order_id=0, prev=0,
             match=False, flags=0, a=0) -> None:
        self.ts += 1 + (a % 997) * 1000
        match_id = 0
        if match:
            match_id = self.next_match
            self.next_match += 1
        self.rows.append((self.ts, self.ts + 3_000 + a % 5_000, int(price), order_id, prev, match_id, self.seq,
                          size, inst, self.venue, 0, flags, int(action), int(side)))
        self.seq += 1

    def pick(self, inst: int, a: int) -> tuple[int, list[int]] | None:
        live = self.live[inst]
        if not live:
            return None
        oid = list(live)[a % len(live)]
        return oid, live[oid]

    def rest_price(self, inst: int, side: int, a: int) -> int:
        off = 1 + a % 8
        return (self.mid[inst] - off if side == Side.BID else self.mid[inst] + off) * TICK

    @staticmethod
    def lot(b: int) -> int:
        return 1 + b % 99 if b % 7 == 0 else 100 * (1 + b % 10)

    def add(self, inst, side, price, size, a, oid=None, flags=0) -> None:
        if oid is None:
            oid = self.next_id
            self.next_id += 1
        self.live[inst][oid] = [inst, side, price, size]
        self.emit(inst, Action.ADD, side, price, size, oid, flags=flags, a=a)

    def take(self, inst, oid, order, action, size, price=None, a=0) -> None:
        """Cancel/execute ``size`` of a live order (more than remains is the caller's choice)."""
        _, side, rest_px, remaining = order
        self.emit(inst, action, side, rest_px if price is None else price, size, oid,
                  match=action == Action.EXECUTE, a=a)
        if size >= remaining:
            del self.live[inst][oid]
        else:
            order[3] = remaining - size

    def op(self, kind: int, inst_ix: int, side_bit: int, a: int, b: int) -> None:
        inst = self.instruments[inst_ix % len(self.instruments)]
        side = Side.BID if side_bit % 2 == 0 else Side.ASK
        kind = Op(kind)
        picked = self.pick(inst, a)
        if kind == Op.ADD and len(self.live[inst]) >= MAX_LIVE:
            kind = Op.DELETE
        needs_order = (Op.CANCEL, Op.EXECUTE, Op.EXECUTE_ALL, Op.EXECUTE_AT, Op.DELETE, Op.REPLACE,
                       Op.OVERSIZE, Op.DUPLICATE_ADD)
        if picked is None and kind in needs_order:
            kind = Op.ADD
        if kind == Op.ADD:
            self.add(inst, side, self.rest_price(inst, side, a), self.lot(b), a)
        elif kind == Op.AGGRESSIVE_ADD:
            off = a % 3  # at the mid, or one or two ticks through it
            px = (self.mid[inst] + off if side == Side.BID else self.mid[inst] - off) * TICK
            self.add(inst, side, px, self.lot(b), a)
        elif kind in (Op.CANCEL, Op.EXECUTE):
            oid, order = picked
            if order[3] < 2:
                kind_action = Action.CANCEL if kind == Op.CANCEL else Action.EXECUTE
                self.take(inst, oid, order, kind_action, order[3], a=a)  # a 1-share order goes whole
            else:
                self.take(inst, oid, order, Action.CANCEL if kind == Op.CANCEL else Action.EXECUTE,
                          1 + b % (order[3] - 1), a=a)
        elif kind == Op.EXECUTE_ALL:
            oid, order = picked
            self.take(inst, oid, order, Action.EXECUTE, order[3], a=a)
        elif kind == Op.EXECUTE_AT:
            oid, order = picked
            away = (1 + b % 3) * TICK * (1 if b % 2 else -1)
            self.take(inst, oid, order, Action.EXECUTE, 1 + b % order[3], price=order[2] + away, a=a)
        elif kind == Op.DELETE:
            oid, order = picked
            self.emit(inst, Action.DELETE, order[1], order[2], order[3], oid, a=a)
            del self.live[inst][oid]
        elif kind == Op.REPLACE:
            oid, order = picked
            del self.live[inst][oid]
            new = self.next_id
            self.next_id += 1
            px = order[2] if b % 4 == 0 else self.rest_price(inst, order[1], b)
            size = self.lot(a + b)
            self.live[inst][new] = [inst, order[1], px, size]
            self.emit(inst, Action.REPLACE, order[1], px, size, new, prev=oid, a=a)
        elif kind == Op.TRADE:
            px = (self.mid[inst] + (a % 3) - 1) * TICK
            self.emit(inst, Action.TRADE, side, px, self.lot(b), 0, match=True, a=a)
        elif kind == Op.CROSS:
            self.emit(inst, Action.CROSS, Side.NONE, self.mid[inst] * TICK, 100 * (1 + b % 50), match=True, a=a)
        elif kind == Op.CLEAR:
            self.emit(inst, Action.CLEAR, a=a)
            self.live[inst].clear()
            self.mid[inst] = 500 + (self.mid[inst] * 31 + b) % 40_000
        elif kind == Op.UNKNOWN_ID:
            self.unknown += 1
            ghost = _UNKNOWN_ID_BASE + self.unknown
            what = b % 4
            flags = int(Flag.UNKNOWN_REF)
            if what == 0:
                self.emit(inst, Action.CANCEL, size=self.lot(a), order_id=ghost, flags=flags, a=a)
            elif what == 1:
                self.emit(inst, Action.DELETE, order_id=ghost, flags=flags, a=a)
            elif what == 2:
                self.emit(inst, Action.EXECUTE, size=self.lot(a), order_id=ghost, match=True, flags=flags, a=a)
            else:
                new = self.next_id
                self.next_id += 1
                self.emit(inst, Action.REPLACE, Side.NONE, self.rest_price(inst, side, a), self.lot(a), new,
                          prev=ghost, flags=flags, a=a)
        elif kind == Op.OVERSIZE:
            oid, order = picked
            action = Action.CANCEL if b % 2 else Action.EXECUTE
            self.take(inst, oid, order, action, order[3] + 1 + b % 100, a=a)
        elif kind == Op.DUPLICATE_ADD:
            oid, _ = picked
            del self.live[inst][oid]
            self.add(inst, side, self.rest_price(inst, side, b), self.lot(a), a, oid=oid,
                     flags=int(Flag.DUPLICATE_REF))

    def events(self) -> np.ndarray:
        return np.array(self.rows, dtype=EVENT.dtype)


def build_events(ops, instruments: Sequence[int] = (1, 2, 3), first_sequence: int = 1, t0: int = T0,
                 venue: int = 1) -> np.ndarray:
    """A ``schema.EVENT`` array from ops ``(kind, instrument index, side bit, a, b)`` (see ``Op``)."""
    builder = _Builder(instruments, first_sequence, t0, venue)
    for kind, inst_ix, side_bit, a, b in ops:
        builder.op(int(kind), int(inst_ix), int(side_bit), int(a), int(b))
    return builder.events()


def ops_strategy(n_instruments: int = 3, min_size: int = 0, max_size: int = 200, invalid: bool = True):
    """Hypothesis strategy for a list of ops (kinds weighted roughly as ``random_events`` weights them)."""
    kinds = []
    for kind, w in _weights(invalid).items():
        kinds += [int(kind)] * max(1, round(w))
    op = st.tuples(st.sampled_from(kinds), st.integers(0, n_instruments - 1), st.integers(0, 1),
                   st.integers(0, 1 << 16), st.integers(0, 1 << 16))
    return st.lists(op, min_size=min_size, max_size=max_size)


def event_streams(instruments: Sequence[int] = (1, 2, 3), min_events: int = 0, max_events: int = 200,
                  invalid: bool = True):
    """Hypothesis strategy for a ``schema.EVENT`` array over ``instruments`` (one event per op)."""
    instruments = tuple(instruments)
    return ops_strategy(len(instruments), min_events, max_events, invalid).map(
        lambda ops: build_events(ops, instruments))


def random_events(seed: int, n: int, instruments: int | Sequence[int] = 4, invalid: bool = True) -> np.ndarray:
    """``n`` events over ``instruments`` (a count: ids 1..k; or the ids), from ``RandomState(seed)``."""
    if isinstance(instruments, (int, np.integer)):
        instruments = range(1, int(instruments) + 1)
    instruments = list(instruments)
    rng = np.random.RandomState(seed)
    weights = _weights(invalid)
    kinds = np.array([int(k) for k in weights])
    p = np.array(list(weights.values()), dtype=float)
    # Activity skewed across instruments, like a real feed: the first is the busiest.
    activity = 1.0 / np.arange(1, len(instruments) + 1)
    ops = zip(rng.choice(kinds, size=n, p=p / p.sum()).tolist(),
              rng.choice(len(instruments), size=n, p=activity / activity.sum()).tolist(),
              rng.randint(0, 2, size=n).tolist(), rng.randint(0, 1 << 16, size=n).tolist(),
              rng.randint(0, 1 << 16, size=n).tolist())
    return build_events(ops, instruments)
