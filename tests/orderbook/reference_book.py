"""A plain-Python multi-instrument order book over normalized events: the reference the engine must match.

``ReferenceBooks`` is written to be obviously right, not fast: dicts of orders and of price levels,
the best price found with ``max``/``min`` on every look. ``orderbook.engine.BookEngine`` is tested
against it event by event (``bbo_changes``) and at the end (``l2``, ``l3``, ``integrity``).

Rules this book keeps (the engine keeps the same ones):
- Orders are keyed by ``order_id`` alone, across instruments (ITCH references are unique for the day).
  An order holds its instrument, side, price, remaining size and priority: the ``sequence`` of the event
  that added or replaced it (ties, which a venue never sends, go by arrival).
- ADD rests the order. An ADD whose id is already resting counts ``duplicate_add``; the old order leaves
  the book and the new one takes its place (at the back of its level).
- CANCEL and EXECUTE take ``size`` shares off the order at the order's own resting price; an EXECUTE's
  event price (an ITCH C's execution price) is never used for the book. Reaching zero removes the
  order; taking more than remains counts ``size_below_zero`` and removes it.
- DELETE removes the order whatever the event's size says.
- REPLACE removes ``prev_order_id`` and rests ``order_id`` at the event's price and size on the old
  order's side, with a new priority (it goes to the back of its level even at an unchanged price).
  An unknown ``prev_order_id`` counts ``unknown_order``; the new order still rests if the event
  carries a BID/ASK side, and is dropped without another count if not (``ItchNormalizer`` sets NONE).
  A new id that is already resting (other than ``prev_order_id``) counts ``duplicate_add`` and
  replaces that order.
- TRADE and CROSS leave the book alone. CLEAR empties the event's instrument.
- An id that is not resting counts ``unknown_order`` (CANCEL, EXECUTE, DELETE, REPLACE's prev).
- An ADD/REPLACE with a side other than BID/ASK counts ``bad_side``; with size 0, ``zero_size``; neither
  rests an order. An action outside ``schema.Action`` counts ``unknown_action``.
- An event naming an order of another instrument acts on the order's instrument (both are "touched")
  and counts ``instrument_mismatch`` on the event's instrument.
- After every event other than TRADE and CROSS, every instrument it touched (always the event's
  ``instrument_id``, even when the event changed nothing) counts ``crossed`` if its best bid is above its
  best ask and ``locked`` if equal: these count book events after which the book was crossed, not
  crossings.
Problems are counted per instrument (the event's ``instrument_id``, or the order's for crossed/locked),
never raised.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from parsers.schema import EVENT, UNDEF_PRICE, Action, Side

UNDEF = int(UNDEF_PRICE)
BID = int(Side.BID)
ASK = int(Side.ASK)
EMPTY_BBO = (UNDEF, 0, 0, UNDEF, 0, 0)
_NAMES = EVENT.dtype.names


@dataclass
class RestingOrder:
    """One resting order."""

    order_id: int
    instrument: int
    side: int
    price: int
    size: int
    priority: int  # sequence of the event that rested it
    arrival: int  # tie-break for equal priorities


class ReferenceBooks:
    """L3 books of every instrument, from normalized events (``parsers.schema.EVENT`` rows)."""

    def __init__(self) -> None:
        self.orders: dict[int, RestingOrder] = {}
        # (instrument, side) -> price -> [total size, order count]
        self.levels: dict[tuple[int, int], dict[int, list[int]]] = defaultdict(dict)
        self.problems: dict[int, Counter] = defaultdict(Counter)
        self._arrivals = 0
        self._last_bbo: dict[int, tuple] = {}

    # -- applying events ---------------------------------------------------------------------------

    def apply(self, event) -> list[tuple[int, tuple]]:
        """Apply one event (a ``schema.EVENT`` row, or a dict of its fields).

        Returns (instrument, bbo) for each instrument whose BBO tuple changed, event instrument first.
        """
        ev = _as_dict(event)
        inst = int(ev["instrument_id"])
        touched = [inst]
        action = int(ev["action"])
        if action in (Action.TRADE, Action.CROSS):
            return []  # they leave the book alone: nothing to check or report
        if action == Action.ADD:
            self._add(ev, inst, int(ev["order_id"]), int(ev["side"]), touched)
        elif action in (Action.CANCEL, Action.EXECUTE):
            order = self._find(int(ev["order_id"]), inst, touched)
            if order is not None:
                self._reduce(order, int(ev["size"]), inst)
        elif action == Action.DELETE:
            order = self._find(int(ev["order_id"]), inst, touched)
            if order is not None:
                self._remove(order)
        elif action == Action.REPLACE:
            old = self._find(int(ev["prev_order_id"]), inst, touched)
            side = int(ev["side"])
            if old is not None:
                side = old.side
                self._remove(old)
            if old is not None or side in (BID, ASK):
                self._add(ev, inst, int(ev["order_id"]), side, touched)
        elif action == Action.CLEAR:
            for order in [o for o in self.orders.values() if o.instrument == inst]:
                self._remove(order)
        else:
            self.problems[inst]["unknown_action"] += 1
        changes = []
        for t in touched:
            bbo = self.bbo(t)
            if bbo[0] != UNDEF and bbo[3] != UNDEF:
                if bbo[0] > bbo[3]:
                    self.problems[t]["crossed"] += 1
                elif bbo[0] == bbo[3]:
                    self.problems[t]["locked"] += 1
            if bbo != self._last_bbo.get(t, EMPTY_BBO):
                changes.append((t, bbo))
            self._last_bbo[t] = bbo
        return changes

    def apply_all(self, events: Iterable) -> None:
        """Apply events in order (a ``schema.EVENT`` array, or an iterable of rows/dicts)."""
        for ev in _rows(events):
            self.apply(ev)

    def bbo_changes(self, events: Iterable) -> list[tuple[int, int, tuple]]:
        """Apply events; return (sequence, instrument, bbo) for every event that changed a BBO, in order."""
        out = []
        for ev in _rows(events):
            for inst, bbo in self.apply(ev):
                out.append((int(ev["sequence"]), inst, bbo))
        return out

    # -- reading the books -------------------------------------------------------------------------

    def bbo(self, inst: int) -> tuple[int, int, int, int, int, int]:
        """(bid_px, bid_sz, bid_ct, ask_px, ask_sz, ask_ct); ``UNDEF_PRICE`` and zeros for an empty side."""
        bids = self.levels.get((inst, BID)) or {}
        asks = self.levels.get((inst, ASK)) or {}
        out = []
        for levels, best in ((bids, max), (asks, min)):
            if levels:
                px = best(levels)
                out += [px, levels[px][0], levels[px][1]]
            else:
                out += [UNDEF, 0, 0]
        return tuple(out)

    def l2(self, inst: int, depth: int | None = None) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """(bids, asks): lists of (price, total size, order count), best first, at most ``depth`` each."""
        bids = self.levels.get((inst, BID)) or {}
        asks = self.levels.get((inst, ASK)) or {}
        b = [(p, bids[p][0], bids[p][1]) for p in sorted(bids, reverse=True)]
        a = [(p, asks[p][0], asks[p][1]) for p in sorted(asks)]
        return (b, a) if depth is None else (b[:depth], a[:depth])

    def l3(self, inst: int) -> dict[int, list[tuple[int, list[int]]]]:
        """Side (``Side.BID``/``Side.ASK``) -> [(price, [order ids in time priority])], best price first."""
        out: dict[int, list[tuple[int, list[int]]]] = {}
        for side, reverse in ((BID, True), (ASK, False)):
            by_price: dict[int, list[RestingOrder]] = defaultdict(list)
            for o in self.orders.values():
                if o.instrument == inst and o.side == side:
                    by_price[o.price].append(o)
            out[Side(side)] = [
                (p, [o.order_id for o in sorted(by_price[p], key=lambda o: (o.priority, o.arrival))])
                for p in sorted(by_price, reverse=reverse)
            ]
        return out

    def order(self, order_id: int) -> RestingOrder | None:
        """The resting order with this id, or None."""
        return self.orders.get(order_id)

    def instruments(self) -> list[int]:
        """Instruments that have resting orders, ascending."""
        return sorted({o.instrument for o in self.orders.values()})

    def integrity(self) -> dict[int, dict[str, int]]:
        """{instrument: {problem: count}}, only instruments and problems with a nonzero count."""
        return {inst: dict(sorted(c.items())) for inst, c in sorted(self.problems.items()) if sum(c.values())}

    # -- internals ---------------------------------------------------------------------------------

    def _find(self, order_id: int, inst: int, touched: list[int]) -> RestingOrder | None:
        order = self.orders.get(order_id)
        if order is None:
            self.problems[inst]["unknown_order"] += 1
            return None
        if order.instrument != inst:
            self.problems[inst]["instrument_mismatch"] += 1
            if order.instrument not in touched:
                touched.append(order.instrument)
        return order

    def _add(self, ev: dict, inst: int, order_id: int, side: int, touched: list[int]) -> None:
        size = int(ev["size"])
        if side not in (BID, ASK):
            self.problems[inst]["bad_side"] += 1
            return
        if size == 0:
            self.problems[inst]["zero_size"] += 1
            return
        old = self.orders.get(order_id)
        if old is not None:
            self.problems[inst]["duplicate_add"] += 1
            if old.instrument not in touched:
                touched.append(old.instrument)
            self._remove(old)
        self._arrivals += 1
        order = RestingOrder(order_id, inst, side, int(ev["price"]), size, int(ev["sequence"]), self._arrivals)
        self.orders[order_id] = order
        level = self.levels[(inst, side)].setdefault(order.price, [0, 0])
        level[0] += size
        level[1] += 1

    def _reduce(self, order: RestingOrder, size: int, inst: int) -> None:
        if size > order.size:
            self.problems[inst]["size_below_zero"] += 1
            self._remove(order)
        elif size == order.size:
            self._remove(order)
        else:
            order.size -= size
            self.levels[(order.instrument, order.side)][order.price][0] -= size

    def _remove(self, order: RestingOrder) -> None:
        del self.orders[order.order_id]
        levels = self.levels[(order.instrument, order.side)]
        level = levels[order.price]
        level[0] -= order.size
        level[1] -= 1
        if level[1] == 0:
            assert level[0] == 0, f"level {order.price} empty of orders but holds {level[0]} shares"
            del levels[order.price]


def _as_dict(event) -> dict:
    if isinstance(event, dict):
        return event
    return dict(zip(_NAMES, event.tolist() if hasattr(event, "tolist") else event))


def _rows(events: Iterable):
    """Dicts of field values, from a ``schema.EVENT`` array (fast path) or any iterable of rows."""
    if isinstance(events, np.ndarray):
        names = events.dtype.names
        for values in events.tolist():
            yield dict(zip(names, values))
    else:
        for ev in events:
            yield _as_dict(ev)
