"""An obviously-right matcher in plain Python (dicts and lists), for differential tests of the kernel.

Same rules as ``trading.matching`` (its module docstring), written for reading, not for speed: a book
side is a dict price -> list of live orders (oldest first), the best price found by ``max``/``min``
every time; held stops are a list in acceptance order. Events are tuples in ``EVENT_FIELDS`` order.
"""
from __future__ import annotations

from dataclasses import dataclass

from parsers.schema import UNDEF_PRICE
from trading.orders import (NO_INSTRUMENT, CommandKind, EventKind, Liquidity, OrderSide, OrderType, Reason,
                            TimeInForce)

UNDEF = int(UNDEF_PRICE)
EVENT_FIELDS = ("ts", "order_id", "counterparty_id", "price", "qty", "leaves", "account", "instrument_id", "kind",
                "side", "liquidity", "reason")


@dataclass
class Order:
    order_id: int
    account: int
    instrument: int
    side: int
    order_type: int
    tif: int
    price: int  # UNDEF for market and stop orders
    stop: int  # UNDEF unless a stop
    leaves: int


class ReferenceMatcher:
    def __init__(self, max_instruments: int = 1 << 20) -> None:
        self.max_instruments = max_instruments
        self.live: dict[int, Order] = {}  # every live order: resting or held
        self.bids: dict[int, dict[int, list[Order]]] = {}  # instrument -> price -> queue
        self.asks: dict[int, dict[int, list[Order]]] = {}
        self.stops: dict[int, list[Order]] = {}  # instrument -> held stops, oldest first
        self.events: list[tuple] = []

    # -- helpers ----------------------------------------------------------------------------------

    def _emit(self, ts, kind, o: Order, price, qty, leaves, reason=Reason.NONE, cp=0, liq=Liquidity.NONE):
        self.events.append((ts, o.order_id, cp, price, qty, leaves, o.account, o.instrument, int(kind), o.side,
                            int(liq), int(reason)))

    def _side_book(self, o: Order, own: bool) -> dict[int, list[Order]]:
        is_buy = o.side == OrderSide.BUY
        books = self.bids if is_buy == own else self.asks
        return books.setdefault(o.instrument, {})

    @staticmethod
    def _crosses(o: Order, price: int) -> bool:
        if o.price == UNDEF:
            return True
        return price <= o.price if o.side == OrderSide.BUY else price >= o.price

    def _best(self, o: Order, book: dict) -> int | None:
        """Best opposite price for taker ``o`` (lowest ask for a buy, highest bid for a sell)."""
        if not book:
            return None
        return min(book) if o.side == OrderSide.BUY else max(book)

    # -- matching ---------------------------------------------------------------------------------

    def _take(self, o: Order, ts: int, span: list) -> None:
        opp = self._side_book(o, own=False)
        if o.tif == TimeInForce.FOK:
            available = sum(sum(m.leaves for m in q) for p, q in opp.items() if self._crosses(o, p))
            if available < o.leaves:
                self._emit(ts, EventKind.CANCELLED, o, o.price, o.leaves, 0, Reason.FOK_UNFILLED)
                del self.live[o.order_id]
                return
        while o.leaves > 0:
            price = self._best(o, opp)
            if price is None or not self._crosses(o, price):
                break
            queue = opp[price]
            while o.leaves > 0 and queue:
                m = queue[0]
                f = min(o.leaves, m.leaves)
                o.leaves -= f
                m.leaves -= f
                self._emit(ts, EventKind.FILL, o, price, f, o.leaves, cp=m.order_id, liq=Liquidity.TAKER)
                self._emit(ts, EventKind.FILL, m, price, f, m.leaves, cp=o.order_id, liq=Liquidity.MAKER)
                if m.leaves == 0:
                    queue.pop(0)
                    del self.live[m.order_id]
            span.append(price)
            if not queue:
                del opp[price]
        if o.leaves == 0:
            del self.live[o.order_id]
        elif o.price == UNDEF:
            self._emit(ts, EventKind.CANCELLED, o, o.price, o.leaves, 0, Reason.NO_LIQUIDITY)
            del self.live[o.order_id]
        elif o.tif in (TimeInForce.IOC, TimeInForce.FOK):
            self._emit(ts, EventKind.CANCELLED, o, o.price, o.leaves, 0, Reason.IOC_REMAINDER)
            del self.live[o.order_id]
        else:
            self._side_book(o, own=True).setdefault(o.price, []).append(o)

    def _run_stops(self, inst: int, ts: int, span: list) -> None:
        held = self.stops.get(inst, [])
        while held and span:
            lo, hi = min(span), max(span)
            fired = [s for s in held if (hi >= s.stop if s.side == OrderSide.BUY else lo <= s.stop)]
            if not fired:
                return
            s = fired[0]
            held.remove(s)
            self._emit(ts, EventKind.TRIGGERED, s, s.stop, s.leaves, s.leaves)
            self._take(s, ts, span)

    def _reject(self, c: dict, reason: Reason) -> None:
        self.events.append((c["ts"], c["order_id"], 0, c["price"], c["qty"], 0, c["account"], c["instrument_id"],
                            int(EventKind.REJECT), c["side"], int(Liquidity.NONE), int(reason)))

    def _reject_amend(self, c: dict, reason: Reason, o: Order | None) -> None:
        """A refused CANCEL or MODIFY tells the order's instrument and side, if it is live and the account's."""
        self.events.append((c["ts"], c["order_id"], 0, c["price"], c["qty"], 0, c["account"],
                            o.instrument if o is not None else NO_INSTRUMENT, int(EventKind.REJECT),
                            o.side if o is not None else 0, int(Liquidity.NONE), int(reason)))

    def _resting_queue(self, o: Order) -> list[Order]:
        return self._side_book(o, own=True)[o.price]

    def _leave_book(self, o: Order) -> None:
        book = self._side_book(o, own=True)
        book[o.price].remove(o)
        if not book[o.price]:
            del book[o.price]

    def _is_held(self, o: Order) -> bool:
        return any(s is o for s in self.stops.get(o.instrument, []))

    # -- commands ---------------------------------------------------------------------------------

    def submit(self, commands) -> list[tuple]:
        """Run COMMAND rows (a numpy array or dicts); return the events as tuples."""
        self.events = []
        for row in commands:
            c = {name: int(row[name]) for name in ("ts", "order_id", "price", "stop_price", "qty", "account",
                                                   "instrument_id", "kind", "side", "order_type", "tif")}
            self._command(c)
        return self.events

    def _command(self, c: dict) -> None:
        kind, ts, oid = c["kind"], c["ts"], c["order_id"]
        span: list[int] = []
        if kind in (CommandKind.NEW, CommandKind.TRIGGER, CommandKind.SESSION_END, CommandKind.SWEEP):
            if c["instrument_id"] >= self.max_instruments:
                return self._reject(c, Reason.UNKNOWN_SYMBOL)
        if kind == CommandKind.NEW:
            valid = (0 < oid < 2**63 and c["side"] in set(OrderSide) and c["order_type"] in set(OrderType)
                     and c["tif"] in set(TimeInForce))
            if not valid:
                return self._reject(c, Reason.INVALID_ORDER)
            if c["qty"] == 0:
                return self._reject(c, Reason.BAD_QTY)
            typ = c["order_type"]
            has_limit = typ in (OrderType.LIMIT, OrderType.STOP_LIMIT)
            has_stop = typ in (OrderType.STOP, OrderType.STOP_LIMIT)
            if has_limit and not 0 < c["price"] < UNDEF:
                return self._reject(c, Reason.BAD_PRICE)
            if has_stop and not 0 < c["stop_price"] < UNDEF:
                return self._reject(c, Reason.BAD_PRICE)
            if oid in self.live:
                return self._reject(c, Reason.DUPLICATE_ORDER_ID)
            o = Order(oid, c["account"], c["instrument_id"], c["side"], typ, c["tif"],
                      c["price"] if has_limit else UNDEF, c["stop_price"] if has_stop else UNDEF, c["qty"])
            self.live[oid] = o
            self._emit(ts, EventKind.ACK, o, o.price, o.leaves, o.leaves)
            if has_stop:
                self.stops.setdefault(o.instrument, []).append(o)
                return
            self._take(o, ts, span)
            self._run_stops(o.instrument, ts, span)
        elif kind == CommandKind.CANCEL:
            o = self.live.get(oid)
            if o is None or o.account != c["account"]:
                return self._reject_amend(c, Reason.UNKNOWN_ORDER, None)
            if self._is_held(o):
                self.stops[o.instrument].remove(o)
            else:
                self._leave_book(o)
            self._emit(ts, EventKind.CANCELLED, o, o.price, o.leaves, 0, Reason.USER_CANCEL)
            del self.live[oid]
        elif kind == CommandKind.MODIFY:
            o = self.live.get(oid)
            if o is None or o.account != c["account"]:
                return self._reject_amend(c, Reason.UNKNOWN_ORDER, None)
            if c["price"] != UNDEF and c["price"] <= 0:
                return self._reject_amend(c, Reason.BAD_PRICE, o)
            new_price = o.price if c["price"] == UNDEF or o.order_type == OrderType.STOP else c["price"]
            new_qty = c["qty"] or o.leaves
            if self._is_held(o):
                if c["stop_price"] != UNDEF:
                    if c["stop_price"] <= 0:
                        return self._reject_amend(c, Reason.BAD_PRICE, o)
                    o.stop = c["stop_price"]
                o.price, o.leaves = new_price, new_qty
                self._emit(ts, EventKind.MODIFIED, o, new_price, new_qty, new_qty)
                return
            if new_price == o.price and new_qty <= o.leaves:  # keeps its place in the queue
                o.leaves = new_qty
                self._emit(ts, EventKind.MODIFIED, o, new_price, new_qty, new_qty)
                return
            self._leave_book(o)
            o.price, o.leaves = new_price, new_qty
            self._emit(ts, EventKind.MODIFIED, o, new_price, new_qty, new_qty)
            self._take(o, ts, span)
            self._run_stops(o.instrument, ts, span)
        elif kind == CommandKind.TRIGGER:
            if not 0 < c["price"] < UNDEF:
                return self._reject(c, Reason.BAD_PRICE)
            self._run_stops(c["instrument_id"], ts, [c["price"]])
        elif kind == CommandKind.SWEEP:
            if not 0 < c["price"] < UNDEF:
                return self._reject(c, Reason.BAD_PRICE)
            inst, price = c["instrument_id"], c["price"]
            for books, through in ((self.bids, lambda p: p > price), (self.asks, lambda p: p < price)):
                book = books.get(inst, {})
                for p in sorted((p for p in book if through(p)), reverse=books is self.bids):
                    for o in [o for o in book[p] if o.account != c["account"]]:
                        self._emit(ts, EventKind.FILL, o, p, o.leaves, 0, liq=Liquidity.MAKER)
                        self._leave_book(o)
                        del self.live[o.order_id]
            self._run_stops(inst, ts, [price])
        elif kind == CommandKind.SESSION_END:
            inst = c["instrument_id"]
            for books, best_first in ((self.bids, True), (self.asks, False)):
                book = books.get(inst, {})
                for price in sorted(book, reverse=best_first):
                    for o in list(book[price]):
                        if o.tif == TimeInForce.DAY:
                            self._emit(ts, EventKind.EXPIRED, o, o.price, o.leaves, 0, Reason.SESSION_END)
                            self._leave_book(o)
                            del self.live[o.order_id]
            for o in list(self.stops.get(inst, [])):
                if o.tif == TimeInForce.DAY:
                    self._emit(ts, EventKind.EXPIRED, o, o.price, o.leaves, 0, Reason.SESSION_END)
                    self.stops[inst].remove(o)
                    del self.live[o.order_id]
        else:
            self._reject(c, Reason.INVALID_ORDER)

    # -- state ------------------------------------------------------------------------------------

    def book(self, inst: int) -> tuple[list, list, list]:
        """(bids, asks, stops) in ``trading.matching.BookSnapshot``'s shapes."""
        def side(books, best_first):
            book = books.get(inst, {})
            return [(p, [(o.order_id, o.leaves, o.account) for o in book[p]])
                    for p in sorted(book, reverse=best_first)]

        stops = [(o.order_id, o.side, o.order_type, o.tif, o.stop, o.price, o.leaves) for o in self.stops.get(inst, [])]
        return side(self.bids, True), side(self.asks, False), stops
