"""The audit trail: CAT-style rows built from the order path's commands and events, no I/O.

``AuditTrail.build(commands, events, client_ids=None)`` takes one batch of ``trading.orders.COMMAND``
rows and the ``ORDER_EVENT`` rows the engine answered with, and returns

- ``AUDIT_EVENT`` rows: one per order request (NEW, CANCEL, MODIFY: the request as received) and one
  per event (ack, reject, fill, cancelled, modified, expired, triggered), each restating the order's
  terms the way a CAT event does (order key = the NEW's time and the order id; symbol, side, type,
  time in force, price, size, client order id);
- ``ORDER_STATE`` rows: the state after the batch of every order the batch changed, one row per order
  (what the ``orders`` table upserts).

It runs off the order path (``feedhandler.audit_store``'s writer thread) in one compiled, nogil call.

Rules this module keeps:
- The terms events do not carry (type, time in force, stop price, client order id, the NEW's ts) are
  kept per order in an open-addressing table keyed by order id (``parsers.hashtable``), from its NEW
  command until the order is done (filled, cancelled, expired; a refused NEW leaves with its REJECT).
  An event of an order the table does not hold (an ACK whose NEW was never seen) still gets its row,
  with those terms 0 / UNDEF_PRICE / empty. ``restore`` puts open orders back after a restart.
- A batch's commands are taken before its events (the engine answers a batch after reading all of
  it), so a NEW is known before its ACK or REJECT whatever order the engine emits them in. ``seq``
  numbers rows in that order, continuously across batches; ``next_seq`` lets a store continue it.
- A NEW with the id of an order still held is not remembered (the matcher rejects it as a duplicate;
  its REJECT then leaves the held order alone). TRIGGER and SESSION_END commands are market data and
  housekeeping: not audited; the events they cause are.
- Text stays out of the kernel: the client order id is 32 bytes (``CLIENT_ID_BYTES``), moved through
  the kernel as four int64 words; symbols and account names are resolved by the store.
"""
from __future__ import annotations

import enum

import numba as nb
import numpy as np

from parsers import hashtable
from parsers.hashtable import EMPTY
from parsers.schema import UNDEF_PRICE, Record, _c, _pad, _price
from trading.orders import CommandKind, EventKind, OrderType

CLIENT_ID_BYTES = 32  # longer client order ids are refused by ``client_id_words``
_CID_WORDS = CLIENT_ID_BYTES // 8


class AuditKind(enum.IntEnum):
    """What an audit row records: a request as received (1..3) or an event of the order (``EventKind`` + 3)."""

    NEW_ORDER = 1
    CANCEL_REQUEST = 2
    MODIFY_REQUEST = 3
    ACK = 4
    REJECT = 5
    FILL = 6
    CANCELLED = 7
    MODIFIED = 8
    EXPIRED = 9
    TRIGGERED = 10


EVENT_KIND_OFFSET = AuditKind.ACK - EventKind.ACK  # AuditKind = EventKind + 3

# The nearest CAT Industry Member event type (CAT Reporting Technical Specifications 4.0.0) of each
# kind; acks, rejects and triggers are internal to the appliance and have none.
CAT_EVENT_TYPE = {
    AuditKind.NEW_ORDER: "MENO",
    AuditKind.CANCEL_REQUEST: "MEOCR",
    AuditKind.MODIFY_REQUEST: "MEOMR",
    AuditKind.FILL: "MEOT",
    AuditKind.CANCELLED: "MEOC",
    AuditKind.MODIFIED: "MEOM",
    AuditKind.EXPIRED: "MEOC",  # an implicit cancel (time in force ran out)
}


class OrderStatus(enum.IntEnum):
    OPEN = 1  # accepted and working (resting, or partly filled)
    HELD = 2  # a stop accepted and waiting for its trigger
    FILLED = 3
    CANCELLED = 4  # by the user, or an IOC/FOK/market remainder (``reason`` says which)
    EXPIRED = 5  # a DAY order at the session's end
    REJECTED = 6  # the NEW was refused (``reason``)


AUDIT_EVENT = Record(
    "audit_events",
    "One audited request or event of an order, restating the order's terms (CAT style).",
    (
        _c("seq", "<u8", "count", "row number in the audit trail, continuous across batches"),
        _c("ts", "<i8", "unix_nanos", "when it happened: the request's arrival (events: their command's ts)"),
        _c("ts_order", "<i8", "unix_nanos", "the order's NEW ts (CAT orderKeyDate); 0 if unknown"),
        _c("order_id", "<u8", "id", "the order (with ts_order: the order key)"),
        _c("counterparty_id", "<u8", "id", "FILL: the other order of the trade (0: the market)"),
        _price("price", "the request's price; events: the event's price (FILL: the trade price)"),
        _price("stop_price", "the order's stop price (requests: as requested)"),
        _c("client_order_id", f"S{CLIENT_ID_BYTES}", "ascii", "the client's id of the order (empty: not given)"),
        _c("qty", "<u4", "shares", "request: order qty (MODIFY: the new open qty, 0 keeps it); FILL: filled; "
                                   "CANCELLED/EXPIRED: shares that were open"),
        _c("leaves", "<u4", "shares", "events: shares open after the event; requests: 0"),
        _c("account", "<u4", "id", "the order's account"),
        _c("instrument_id", "<u4", "id", "the order's instrument"),
        _c("event", "u1", "AuditKind", "what the row records"),
        _c("side", "u1", "OrderSide", "the order's side"),
        _c("order_type", "u1", "OrderType", "the order's type (0: unknown)"),
        _c("tif", "u1", "TimeInForce", "the order's time in force (0: unknown)"),
        _c("liquidity", "u1", "Liquidity", "FILL: maker or taker"),
        _c("reason", "u1", "Reason", "REJECT/CANCELLED/EXPIRED: why"),
        _pad(2),
    ),
)

ORDER_STATE = Record(
    "orders",
    "An order's state after a batch: terms, filled and open quantity, status.",
    (
        _c("ts_order", "<i8", "unix_nanos", "the order's NEW ts (CAT orderKeyDate; with order_id, the key)"),
        _c("ts_updated", "<i8", "unix_nanos", "ts of the last event applied"),
        _c("order_id", "<u8", "id", "the order"),
        _price("price", "limit price now (after modifies)"),
        _price("stop_price", "stop price now"),
        _c("client_order_id", f"S{CLIENT_ID_BYTES}", "ascii", "the client's id of the order"),
        _c("qty", "<u4", "shares", "order quantity (a modify makes it filled + the new open quantity)"),
        _c("filled", "<u4", "shares", "filled so far"),
        _c("leaves", "<u4", "shares", "open now"),
        _c("account", "<u4", "id", "the order's account"),
        _c("instrument_id", "<u4", "id", "the order's instrument"),
        _c("side", "u1", "OrderSide", "the order's side"),
        _c("order_type", "u1", "OrderType", "the order's type (0: unknown)"),
        _c("tif", "u1", "TimeInForce", "time in force (0: unknown)"),
        _c("status", "u1", "OrderStatus", "where the order is"),
        _c("reason", "u1", "Reason", "the last reject/cancel/expiry reason (0: none)"),
        _pad(7),
    ),
)

RECORDS = (AUDIT_EVENT, ORDER_STATE)

# State table columns (``parsers.hashtable`` layout: column 0 is the key, the order id).
K_ID, K_TS_ORDER, K_TYPE, K_TIF, K_STOP, K_NEW_STOP, K_PENDING, K_ACCOUNT, K_INST, K_SIDE = range(10)
K_PRICE, K_QTY, K_FILLED, K_LEAVES, K_STATUS, K_REASON, K_STAMP, K_OUT, K_CID = range(10, 19)
K_COLUMNS = K_CID + _CID_WORDS
# Scalars: orders held, batch stamp, next seq.
S_HELD, S_STAMP, S_SEQ = range(3)

_UNDEF = UNDEF_PRICE
_NEW, _CANCEL, _MODIFY = np.uint8(CommandKind.NEW), np.uint8(CommandKind.CANCEL), np.uint8(CommandKind.MODIFY)
_ACK, _REJECT, _FILL = np.uint8(EventKind.ACK), np.uint8(EventKind.REJECT), np.uint8(EventKind.FILL)
_CANCELLED, _MODIFIED = np.uint8(EventKind.CANCELLED), np.uint8(EventKind.MODIFIED)
_EXPIRED, _TRIGGERED = np.uint8(EventKind.EXPIRED), np.uint8(EventKind.TRIGGERED)
_OFFSET = np.uint8(EVENT_KIND_OFFSET)
_STOP, _STOP_LIMIT = np.int64(OrderType.STOP), np.int64(OrderType.STOP_LIMIT)
_OPEN, _HELD, _FILLED = np.int64(OrderStatus.OPEN), np.int64(OrderStatus.HELD), np.int64(OrderStatus.FILLED)
_ST_CANCELLED, _ST_EXPIRED = np.int64(OrderStatus.CANCELLED), np.int64(OrderStatus.EXPIRED)
_REJECTED = np.int64(OrderStatus.REJECTED)


@nb.njit(cache=True, nogil=True, _nrt=False)
def audit_batch(commands, events, cid_in, table, scalars, audit, audit_cid, orders, order_cid):
    """Audit one batch (module rules). Never allocates; the caller sizes everything.

    Args:
        commands, events: COMMAND and ORDER_EVENT rows of one engine batch.
        cid_in: int64 [len(commands), 4]: each command's client order id (NEW rows are read).
        table: the order-terms table, with room for every NEW and ACK of the batch at its load limit.
        scalars: int64 [S_HELD, S_STAMP, S_SEQ].
        audit, audit_cid: output AUDIT_EVENT rows and their client id words, len(commands) + len(events).
        orders, order_cid: output ORDER_STATE rows and their client id words, len(events).
    Returns:
        (audit rows written, order rows written).
    """
    stamp = scalars[S_STAMP] + 1
    scalars[S_STAMP] = stamp
    seq = scalars[S_SEQ]
    n = 0
    for i in range(len(commands)):
        c = commands[i]
        kind = c.kind
        if kind != _NEW and kind != _CANCEL and kind != _MODIFY:
            continue
        oid = np.int64(c.order_id)
        slot = hashtable.find(table, oid)
        a = audit[n]
        a.seq = seq
        a.ts = c.ts
        a.order_id = c.order_id
        a.counterparty_id = 0
        a.price = c.price
        a.stop_price = c.stop_price
        a.qty = c.qty
        a.leaves = 0
        a.account = c.account
        a.liquidity = 0
        a.reason = 0
        if kind == _NEW:
            a.event = 1
            a.ts_order = c.ts
            a.instrument_id = c.instrument_id
            a.side = c.side
            a.order_type = c.order_type
            a.tif = c.tif
            for w in range(_CID_WORDS):
                audit_cid[n, w] = cid_in[i, w]
            if slot < 0:  # not held: remember its terms until its answer comes
                slot = hashtable.slot_for(table, oid)
                table[slot, K_ID] = oid
                table[slot, K_TS_ORDER] = c.ts
                table[slot, K_TYPE] = c.order_type
                table[slot, K_TIF] = c.tif
                table[slot, K_STOP] = c.stop_price
                table[slot, K_NEW_STOP] = _UNDEF
                table[slot, K_PENDING] = 1
                table[slot, K_ACCOUNT] = c.account
                table[slot, K_INST] = c.instrument_id
                table[slot, K_SIDE] = c.side
                table[slot, K_PRICE] = c.price
                table[slot, K_QTY] = c.qty
                table[slot, K_FILLED] = 0
                table[slot, K_LEAVES] = c.qty
                table[slot, K_STATUS] = 0
                table[slot, K_REASON] = 0
                table[slot, K_STAMP] = 0
                table[slot, K_OUT] = -1
                for w in range(_CID_WORDS):
                    table[slot, K_CID + w] = cid_in[i, w]
                scalars[S_HELD] += 1
        else:
            a.event = 2 if kind == _CANCEL else 3
            if slot >= 0:  # restate the order's terms
                a.ts_order = table[slot, K_TS_ORDER]
                a.instrument_id = table[slot, K_INST]
                a.side = table[slot, K_SIDE]
                a.order_type = table[slot, K_TYPE]
                a.tif = table[slot, K_TIF]
                for w in range(_CID_WORDS):
                    audit_cid[n, w] = table[slot, K_CID + w]
                if kind == _MODIFY and c.stop_price != _UNDEF:
                    table[slot, K_NEW_STOP] = c.stop_price  # applied by its MODIFIED, dropped by a REJECT
            else:
                a.ts_order = 0
                a.instrument_id = c.instrument_id
                a.side = c.side
                a.order_type = c.order_type
                a.tif = c.tif
                for w in range(_CID_WORDS):
                    audit_cid[n, w] = 0
        seq += 1
        n += 1

    m = 0
    for j in range(len(events)):
        e = events[j]
        kind = e.kind
        oid = np.int64(e.order_id)
        slot = hashtable.find(table, oid)
        status = np.int64(0)  # the order's new status; 0: no order row for this event
        done = False
        if kind == _ACK:
            if slot < 0:  # its NEW was not seen: keep what the ACK tells
                slot = hashtable.slot_for(table, oid)
                table[slot, K_ID] = oid
                table[slot, K_TS_ORDER] = e.ts
                table[slot, K_TYPE] = 0
                table[slot, K_TIF] = 0
                table[slot, K_STOP] = _UNDEF
                table[slot, K_ACCOUNT] = e.account
                table[slot, K_INST] = e.instrument_id
                table[slot, K_SIDE] = e.side
                table[slot, K_FILLED] = 0
                table[slot, K_REASON] = 0
                table[slot, K_STAMP] = 0
                table[slot, K_OUT] = -1
                for w in range(_CID_WORDS):
                    table[slot, K_CID + w] = 0
                scalars[S_HELD] += 1
            table[slot, K_PENDING] = 0
            table[slot, K_NEW_STOP] = _UNDEF
            table[slot, K_PRICE] = e.price
            table[slot, K_QTY] = e.qty
            table[slot, K_LEAVES] = e.leaves
            typ = table[slot, K_TYPE]
            status = _HELD if typ == _STOP or typ == _STOP_LIMIT else _OPEN
        elif slot >= 0:
            if kind == _REJECT:
                if table[slot, K_PENDING] == 1:  # its NEW was refused
                    status = _REJECTED
                    table[slot, K_LEAVES] = 0
                    table[slot, K_REASON] = e.reason
                    done = True
                else:  # a refused cancel/modify (or a duplicate id): the order is unchanged
                    table[slot, K_NEW_STOP] = _UNDEF
            elif kind == _FILL:
                table[slot, K_FILLED] += e.qty
                table[slot, K_LEAVES] = e.leaves
                done = e.leaves == 0
                status = _FILLED if done else _OPEN
            elif kind == _CANCELLED or kind == _EXPIRED:
                table[slot, K_LEAVES] = 0
                table[slot, K_REASON] = e.reason
                status = _ST_CANCELLED if kind == _CANCELLED else _ST_EXPIRED
                done = True
            elif kind == _MODIFIED:
                table[slot, K_PRICE] = e.price
                table[slot, K_QTY] = table[slot, K_FILLED] + e.leaves
                table[slot, K_LEAVES] = e.leaves
                if table[slot, K_NEW_STOP] != _UNDEF:
                    table[slot, K_STOP] = table[slot, K_NEW_STOP]
                    table[slot, K_NEW_STOP] = _UNDEF
                status = _HELD if table[slot, K_STATUS] == _HELD else _OPEN
            elif kind == _TRIGGERED:
                status = _OPEN

        a = audit[n]
        a.seq = seq
        a.ts = e.ts
        a.order_id = e.order_id
        a.counterparty_id = e.counterparty_id
        a.price = e.price
        a.qty = e.qty
        a.leaves = e.leaves
        a.account = e.account
        a.instrument_id = e.instrument_id
        a.event = kind + _OFFSET
        a.side = e.side
        a.liquidity = e.liquidity
        a.reason = e.reason
        if slot >= 0:
            a.ts_order = table[slot, K_TS_ORDER]
            a.stop_price = table[slot, K_STOP]
            a.order_type = table[slot, K_TYPE]
            a.tif = table[slot, K_TIF]
            for w in range(_CID_WORDS):
                audit_cid[n, w] = table[slot, K_CID + w]
        else:
            a.ts_order = 0
            a.stop_price = _UNDEF
            a.order_type = 0
            a.tif = 0
            for w in range(_CID_WORDS):
                audit_cid[n, w] = 0
        seq += 1
        n += 1

        if status != 0:
            table[slot, K_STATUS] = status
            if table[slot, K_STAMP] == stamp:  # already has a row in this batch: update it
                r = table[slot, K_OUT]
            else:
                r = m
                m += 1
                table[slot, K_STAMP] = stamp
                table[slot, K_OUT] = r
            o = orders[r]
            o.ts_order = table[slot, K_TS_ORDER]
            o.ts_updated = e.ts
            o.order_id = e.order_id
            o.price = table[slot, K_PRICE]
            o.stop_price = table[slot, K_STOP]
            o.filled = table[slot, K_FILLED]
            o.leaves = table[slot, K_LEAVES]
            o.qty = table[slot, K_QTY]
            o.account = table[slot, K_ACCOUNT]
            o.instrument_id = table[slot, K_INST]
            o.side = table[slot, K_SIDE]
            o.order_type = table[slot, K_TYPE]
            o.tif = table[slot, K_TIF]
            o.status = status
            o.reason = table[slot, K_REASON]
            for w in range(_CID_WORDS):
                order_cid[r, w] = table[slot, K_CID + w]
        if done:
            hashtable.remove(table, slot)
            scalars[S_HELD] -= 1
    scalars[S_SEQ] = seq
    return n, m


@nb.njit(cache=True, nogil=True, _nrt=False)
def restore_orders(orders, cid, table, scalars):
    """Hold the terms of ``orders`` (ORDER_STATE rows, client id words ``cid``) unless already held.

    The table must have room for all of them at its load limit. Returns how many were added.
    """
    added = 0
    for i in range(len(orders)):
        o = orders[i]
        oid = np.int64(o.order_id)
        if hashtable.find(table, oid) >= 0:
            continue
        slot = hashtable.slot_for(table, oid)
        table[slot, K_ID] = oid
        table[slot, K_TS_ORDER] = o.ts_order
        table[slot, K_TYPE] = o.order_type
        table[slot, K_TIF] = o.tif
        table[slot, K_STOP] = o.stop_price
        table[slot, K_NEW_STOP] = _UNDEF
        table[slot, K_PENDING] = 0
        table[slot, K_ACCOUNT] = o.account
        table[slot, K_INST] = o.instrument_id
        table[slot, K_SIDE] = o.side
        table[slot, K_PRICE] = o.price
        table[slot, K_QTY] = o.qty
        table[slot, K_FILLED] = o.filled
        table[slot, K_LEAVES] = o.leaves
        table[slot, K_STATUS] = o.status
        table[slot, K_REASON] = o.reason
        table[slot, K_STAMP] = 0
        table[slot, K_OUT] = -1
        for w in range(_CID_WORDS):
            table[slot, K_CID + w] = cid[i, w]
        scalars[S_HELD] += 1
        added += 1
    return added


def client_id_words(client_ids, n: int) -> np.ndarray:
    """int64 [n, 4]: client order ids (str or bytes, ASCII, at most ``CLIENT_ID_BYTES``) as words.

    ``None`` (for all, or as an entry) gives zeros: no id. Raises ValueError for an id that is too
    long or not ASCII.
    """
    words = np.zeros((n, _CID_WORDS), dtype=np.int64)
    if client_ids is None:
        return words
    if len(client_ids) != n:
        raise ValueError(f"client_ids has {len(client_ids)} entries for {n} commands")
    if n == 0:
        return words
    ids = np.asarray(client_ids)
    if ids.dtype == object:
        ids = np.asarray(["" if c is None else c for c in client_ids])
    if ids.dtype.kind == "U":
        try:
            ids = np.char.encode(ids, "ascii")
        except UnicodeEncodeError as exc:
            raise ValueError("client order ids must be ASCII") from exc
    elif ids.dtype.kind != "S":
        raise ValueError("client_ids must be strings or bytes")
    if ids.dtype.itemsize > CLIENT_ID_BYTES and (np.char.str_len(ids) > CLIENT_ID_BYTES).any():
        raise ValueError(f"client order ids are at most {CLIENT_ID_BYTES} bytes")
    words.view(f"S{CLIENT_ID_BYTES}")[:, 0] = ids
    return words


class AuditTrail:
    """Builds the audit rows of batch after batch, keeping the terms of every order still open.

    Args:
        capacity: orders held before the table first grows (it doubles as needed).
        next_seq: the ``seq`` of the next row (a store continues its table's numbering).
    """

    def __init__(self, capacity: int = 1 << 12, next_seq: int = 1) -> None:
        self.table = hashtable.new_table(_slots_for(capacity), K_COLUMNS)
        self.scalars = np.zeros(3, dtype=np.int64)
        self.scalars[S_SEQ] = next_seq

    @property
    def next_seq(self) -> int:
        return int(self.scalars[S_SEQ])

    @next_seq.setter
    def next_seq(self, value: int) -> None:
        self.scalars[S_SEQ] = value

    @property
    def orders_held(self) -> int:
        """Orders whose terms are kept (open, or a NEW not answered yet)."""
        return int(self.scalars[S_HELD])

    def build(self, commands: np.ndarray, events: np.ndarray, client_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """The AUDIT_EVENT and ORDER_STATE rows of one batch (fresh arrays; see the module rules).

        ``client_ids``: one per command (str or bytes; read for NEW rows), or None.
        """
        cid_in = client_id_words(client_ids, len(commands))
        self._make_room(len(commands) + len(events))
        audit = AUDIT_EVENT.empty(len(commands) + len(events))
        audit_cid = np.zeros((len(audit), _CID_WORDS), dtype=np.int64)
        orders = ORDER_STATE.empty(len(events))
        order_cid = np.zeros((len(orders), _CID_WORDS), dtype=np.int64)
        n, m = audit_batch(commands, events, cid_in, self.table, self.scalars, audit, audit_cid, orders, order_cid)
        audit, orders = audit[:n], orders[:m]
        audit["client_order_id"] = audit_cid[:n].view(f"S{CLIENT_ID_BYTES}")[:, 0]
        orders["client_order_id"] = order_cid[:m].view(f"S{CLIENT_ID_BYTES}")[:, 0]
        return audit, orders

    def restore(self, orders: np.ndarray) -> int:
        """Hold the terms of open orders again, from ORDER_STATE rows (a restarted store reads them back
        from its ``orders`` table), so their later events restate them. Returns how many were added."""
        self._make_room(len(orders))
        cid = np.ascontiguousarray(orders["client_order_id"]).view(np.int64).reshape(len(orders), _CID_WORDS)
        return int(restore_orders(orders, cid, self.table, self.scalars))

    def _make_room(self, inserts: int) -> None:
        """Grow the table so ``inserts`` more orders keep it at most half full."""
        slots = _slots_for(self.orders_held + inserts)
        if slots > len(self.table):
            bigger = hashtable.new_table(slots, K_COLUMNS)
            hashtable.rehash(self.table, bigger)
            self.table = bigger


def _slots_for(orders: int) -> int:
    return max(64, 1 << (2 * max(1, orders) - 1).bit_length())
