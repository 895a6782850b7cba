"""Command dicts for tests (``trading.orders.commands`` turns them into COMMAND rows); prices in cents."""
from __future__ import annotations

from trading.orders import CommandKind, OrderType, TimeInForce

P = 10_000_000  # one cent in 1e-9 units


def new(oid, side, qty, price=None, typ=OrderType.LIMIT, tif=TimeInForce.DAY, stop=None, inst=1, account=7, ts=0):
    row = dict(kind=CommandKind.NEW, order_id=oid, side=side, qty=qty, order_type=typ, tif=tif, instrument_id=inst,
               account=account, ts=ts)
    if price is not None:
        row["price"] = price * P
    if stop is not None:
        row["stop_price"] = stop * P
    return row


def cancel(oid, account=7, ts=0):
    return dict(kind=CommandKind.CANCEL, order_id=oid, account=account, ts=ts)


def modify(oid, price=None, qty=0, stop=None, account=7, ts=0):
    row = dict(kind=CommandKind.MODIFY, order_id=oid, qty=qty, account=account, ts=ts)
    if price is not None:
        row["price"] = price * P
    if stop is not None:
        row["stop_price"] = stop * P
    return row
