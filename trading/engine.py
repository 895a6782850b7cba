"""``trading.Engine``: the order path, from strategies' orders to acknowledgements, fills and positions.

    engine = Engine({"AAPL": 1}, {"alice": AccountConfig(cash=100_000 * PRICE_SCALE)}, books=book_engine,
                    wal_dir="state/wal")
    engine.order(ts, "alice", "c-1", "AAPL", "buy", "limit", 100, price="189.50")   # [{"event": "ack", ...}]
    out = book_engine.apply(events)                  # the feed, as always; then:
    engine.on_feed(ts, events, trades, status)       # fills through the queue, stop triggers, halts

``submit(commands) -> events`` is the batch path (``trading.orders.COMMAND`` in, ``ORDER_EVENT`` out):

1. sync: instruments the batch names whose feed book changed since their last sync (or whose mirror
   orders traded with each other), or whose mirrored window must reach further for these orders, are
   read from ``books`` (``trading.market``: what changed since the last read);
2. write-ahead log: what was read (``MARKET_INPUT`` rows) and the commands, one record, committed (one
   group commit per batch) before anything is acknowledged;
3. the market rows become the market account's commands and run through the matcher;
4. risk: ``RiskGate.check`` (one compiled call); refused commands become REJECT events;
5. matching: the passed commands, one ``MatchingEngine.submit``: users' orders cross each other and the
   mirrored feed liquidity in one price-time queue;
6. settle: the market account's events dropped, consumed feed liquidity remembered (``MarketMirror``);
   fills to the portfolio and reservations released (``RiskGate.on_events``);
7. audit hand-off (the ``audit`` callable only enqueues), events out: REJECTs of step 4 first, then the
   matcher's events in command order.

``on_feed`` / ``feed`` log what they read of the feed (what changed in the levels of the watched
instruments the batch touched, i.e. those with a live user order or consumed liquidity, their
executions and prints, marks that moved, status rows) and apply it the same way (``trading.market``'s
PRE and POST steps). ``end_session`` / ``session_end`` expire DAY orders. The dict forms (``order``,
``cancel``, ``modify``, ``on_feed``, ``end_session``) name symbols and sides as the user sent them.

Rules this module keeps:
- the log holds inputs only: users' commands (with their client order ids), everything read from the
  feed, session ends and kill switches. Every state change follows from a record by the same code live
  and on replay, so ``Engine.recover`` reaches the same ``state_hash()``. When to sync is decided live
  only (from ``books``), and a restarted engine re-reads every instrument at its next use.
- nothing is acknowledged before its record is durable under the fsync policy (``trading.wal``). A
  write-ahead log error leaves the engine unusable: recover from the log.
- no Python object per order on the batch path: numpy and the compiled kernels of ``trading.matching``,
  ``trading.market`` and ``trading.risk_kernel``; the string API builds one-row batches.
"""
from __future__ import annotations

import enum
import hashlib
import inspect
import struct
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numba as nb
import numpy as np

from parsers.schema import PRICE_SCALE, STATUS, TRADE, UNDEF_PRICE
from trading.luld import LuldTier, SessionCalendar
from trading.market import (MARKET_ACCOUNT, MARKET_ID_BASE, MARKET_INPUT, S_EXECS, MarketInputKind, MarketMirror,
                            SyncMode)
from trading.matching import MatchingEngine
from trading.orders import (COMMAND, NO_INSTRUMENT, ORDER_EVENT, CommandKind, EventKind, Liquidity, OrderSide,
                            OrderType, Reason, TimeInForce)
from trading.portfolio import Portfolio
from trading.risk import Limits, RiskConfig
from trading.risk_kernel import RiskGate
from trading.wal import WalError, WalReader, WalWriter

API_ID_BASE = 1 << 48  # order ids the string API hands out (batch callers keep theirs below, or name them)
UNKNOWN_INSTRUMENT = NO_INSTRUMENT  # what an unknown symbol becomes: the risk gate refuses it


@dataclass(frozen=True)
class AccountConfig:
    """An account at start: ``cash`` in 1e-9 dollars, margin or cash account, limits, suspended."""

    cash: int
    margin: bool = False
    limits: Limits = field(default_factory=Limits)
    suspended: bool = False


class RecordKind(enum.IntEnum):
    """What a write-ahead log record of the engine holds (``_HEADER``, then its sections)."""

    SUBMIT = 1  # market rows read before the commands, the commands, their client order ids
    FEED = 2  # market rows of a feed batch (or marks), status rows
    SESSION_END = 3  # value: ts
    KILL = 4  # value: account id, -1 for every account
    RELEASE = 5  # value: account id, -1 for every account


# kind, value, then the counts of: market rows, commands, status rows, bytes of client order ids
_HEADER = struct.Struct("<B7xqIIII")
_NAME = struct.Struct("<IH")  # command index, length of the utf-8 client order id that follows

_SIDES = {"buy": OrderSide.BUY, "sell": OrderSide.SELL, "sell_short": OrderSide.SELL_SHORT}
_TYPES = {"market": OrderType.MARKET, "limit": OrderType.LIMIT, "stop": OrderType.STOP,
          "stop_limit": OrderType.STOP_LIMIT}
_TIFS = {"DAY": TimeInForce.DAY, "GTC": TimeInForce.GTC, "IOC": TimeInForce.IOC, "FOK": TimeInForce.FOK}
_SIDE_NAMES = {int(v): k for k, v in _SIDES.items()}
_EVENT_NAMES = {int(k): k.name.lower() for k in EventKind}
_LIQUIDITY_NAMES = {int(Liquidity.MAKER): "maker", int(Liquidity.TAKER): "taker"}
_REASON_NAMES = {int(r): r.name.lower() for r in Reason}
# ``Record.dtype`` builds a dtype on each access: the hot path compares against these.
_COMMAND_DT, _EVENT_DT, _INPUT_DT, _STATUS_DT = COMMAND.dtype, ORDER_EVENT.dtype, MARKET_INPUT.dtype, STATUS.dtype
_NO_ROWS = MARKET_INPUT.empty(0)
_NO_EVENTS = ORDER_EVENT.empty(0)
_NO_COMMANDS = COMMAND.empty(0)
_NO_TRADES = TRADE.empty(0)
_NO_STATUS = STATUS.empty(0)
for _empty in (_NO_ROWS, _NO_EVENTS, _NO_COMMANDS, _NO_TRADES, _NO_STATUS):
    _empty.flags.writeable = False


def parse_price(value) -> int:
    """Dollars (str, Decimal, int or float) as int64 1e-9 units; ValueError if not a price."""
    try:
        d = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
        units = d * PRICE_SCALE
    except (InvalidOperation, ValueError):
        raise ValueError(f"not a price: {value!r}") from None
    if not units.is_finite() or units != units.to_integral_value():
        raise ValueError(f"not a price in 1e-9 dollars: {value!r}")
    return int(units)


def format_price(units: int) -> str | None:
    """1e-9 units as a decimal string with at least two decimals ("189.5" -> "189.50"); None for no price."""
    if units == UNDEF_PRICE:
        return None
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(int(units)), PRICE_SCALE)
    digits = f"{frac:09d}".rstrip("0")
    return f"{sign}{whole}.{digits:0<2}"


class Engine:
    """The embedded matching and risk core; see the module docstring.

    Args:
        symbols: symbol -> instrument id (the feed's ids; ``books`` is indexed by them).
        accounts: account name -> ``AccountConfig``; accounts get ids 0, 1, ... in this order.
        books: the feed's ``orderbook.engine.BookEngine`` (None: users trade only with each other).
        wal_dir: the write-ahead log's directory (None: no log, no durability); it must hold no log
            yet (``Engine.recover`` continues one).
        fsync: "always", "batch" (one fdatasync per group commit) or "never" (``trading.wal``).
        mark: "mid" or "last": the price positions are valued at and risk's reference.
        audit: a callable ``audit(commands, events[, client_ids])`` given each batch's user commands
            and events; it must only enqueue.
        calendar, pdt_policy, risk_config: for the risk gate (``trading.risk_kernel``).
        depth: feed levels mirrored at least per side (``trading.market``).
        tiers, prev_close: LULD tier (default 2) and previous close (1e-9 $) by symbol.
    """

    def __init__(self, symbols: dict[str, int], accounts: dict[str, AccountConfig], *, books=None, wal_dir=None,
                 fsync: str = "batch", mark: str = "mid", audit=None, calendar: SessionCalendar | None = None,
                 pdt_policy=None, risk_config: RiskConfig | None = None, depth: int = 10,
                 tiers: dict[str, int] | None = None, prev_close: dict[str, int] | None = None) -> None:
        if not symbols:
            raise ValueError("the engine needs at least one symbol")
        if not accounts:
            raise ValueError("the engine needs at least one account")
        ids = [int(i) for i in symbols.values()]
        if min(ids) < 0 or max(ids) >= UNKNOWN_INSTRUMENT or len(set(ids)) != len(ids):
            raise ValueError("instrument ids must be distinct and in 0..2**32-2")
        self.symbols = {str(s): int(i) for s, i in symbols.items()}
        self._symbol_of = {i: s for s, i in self.symbols.items()}
        self.account_ids = {str(name): a for a, name in enumerate(accounts)}
        self._account_names = list(self.account_ids)
        n_inst = max(ids) + 1
        self.books = books
        self.fsync = fsync
        self.audit = audit
        self._audit_ids = audit is not None and _takes_three(audit)
        self.known = np.zeros(n_inst, dtype=np.uint8)
        self.known[ids] = 1
        self.matcher = MatchingEngine(instruments=n_inst, max_instruments=n_inst)
        self.mirror = MarketMirror(n_inst, depth=depth, mark=mark)
        self.portfolio = Portfolio(len(accounts), n_inst)
        self.risk = RiskGate(self.portfolio, calendar, pdt_policy, risk_config)
        tiers = tiers or {}
        prev_close = prev_close or {}
        for s, i in self.symbols.items():
            self.risk.add_instrument(i, s, int(tiers.get(s, LuldTier.TIER_2)), int(prev_close.get(s, 0)))
        for name, cfg in accounts.items():
            if not -(2**63) <= int(cfg.cash) < 2**63:
                raise ValueError(f"account {name!r}: cash {cfg.cash} does not fit int64 1e-9 dollars")
            a = self.account_ids[str(name)]
            self.portfolio.deposit(a, int(cfg.cash))
            self.risk.add_account(a, str(name), bool(cfg.margin), cfg.limits, bool(cfg.suspended))
        self._bad = np.zeros(64, dtype=np.uint8)  # _reasons' output
        self._mark_ids = np.zeros(64, dtype=np.int64)  # collect_marks' output
        self._mark_px = np.zeros(64, dtype=np.int64)
        self._ids: dict[tuple[int, str], int] = {}  # (account, client order id) -> order id
        self._names: dict[int, tuple[int, str]] = {}  # order id -> (account, client order id)
        self._terms: dict[int, tuple[int, int]] = {}  # order id -> (instrument id, side) of a named order
        self._sent_symbol: dict[int, str] = {}  # order id -> the symbol text of an order whose symbol is unknown
        self._next_api_id = API_ID_BASE
        self.records = 0  # records applied (live and replayed)
        self._wal: WalWriter | None = None
        self.recovery = None
        if wal_dir is not None:
            self._open_log(wal_dir, fresh=True)

    # -- the write-ahead log ----------------------------------------------------------------------

    def _open_log(self, wal_dir, fresh: bool) -> None:
        wal = WalWriter(Path(wal_dir), fsync=self.fsync)
        if fresh and wal.last_seq > 0:
            wal.close()
            raise WalError(f"{wal_dir} holds a log of {wal.last_seq} records: use Engine.recover to continue it")
        self._wal = wal

    def _log(self, kind: RecordKind, value: int = 0, rows=None, commands=None, status=None, names=b"") -> None:
        """Append one record and commit it (one group commit); returns once it is durable."""
        if self._wal is None:
            return
        parts = [_HEADER.pack(kind, value, _len(rows), _len(commands), _len(status), len(names))]
        for arr in (rows, commands, status):
            if arr is not None and len(arr):
                parts.append(arr.tobytes())  # C order, whatever the view's strides
        parts.append(names)
        self._wal.append(b"".join(parts))
        self._wal.commit()

    @classmethod
    def recover(cls, symbols: dict[str, int], accounts: dict[str, AccountConfig], *, wal_dir, **kwargs) -> Engine:
        """A fresh engine with the log at ``wal_dir`` replayed into it, then logging on to it.

        Takes the constructor's arguments (they are configuration, not logged). A torn tail (a record
        the crashed writer never finished: never acknowledged) is cut; other damage raises
        ``trading.wal.WalCorruptionError``. ``recovery`` holds the log's ``RecoveryReport``.
        """
        engine = cls(symbols, accounts, **kwargs)
        reader = WalReader(Path(wal_dir))
        audit, engine.audit = engine.audit, None  # what was handed to the audit before stays handed
        for _, payload in reader.replay():
            engine._apply_record(payload)
        engine.audit = audit
        engine.recovery = reader.report
        engine.mirror.reactivate(engine.matcher)  # resting orders keep meeting the feed
        engine._open_log(wal_dir, fresh=False)
        return engine

    def _apply_record(self, payload: bytes) -> np.ndarray:
        kind, value, n_rows, n_cmds, n_status, n_names = _HEADER.unpack_from(payload, 0)
        at = _HEADER.size
        rows, at = _section(payload, at, _INPUT_DT, n_rows)
        commands, at = _section(payload, at, _COMMAND_DT, n_cmds)
        status, at = _section(payload, at, _STATUS_DT, n_status)
        names = bytes(payload[at:at + n_names])
        kind = RecordKind(kind)
        if kind == RecordKind.SUBMIT:
            return self._apply_submit(rows, commands, _read_names(names))
        if kind == RecordKind.FEED:
            return self._apply_feed(rows, status)
        if kind == RecordKind.SESSION_END:
            return self._apply_session_end(value)
        return self._apply_switch(kind, value)

    # -- applying records (live and replay) ---------------------------------------------------------

    def _match(self, commands: np.ndarray, market: np.ndarray | None = None) -> np.ndarray:
        """Users' events of ``commands`` through the matcher (``market``: the market commands among them)."""
        if not len(commands):
            return _NO_EVENTS
        if not self.mirror.ever_used:
            return self.matcher.submit(commands)  # no market order ever existed: nothing to drop or remember
        events = self.matcher.submit(commands, copy=False)  # settle copies what users get
        return self.mirror.settle(events, commands if market is None else market)

    def _sync(self, rows: np.ndarray, mode: SyncMode) -> np.ndarray:
        market = self.mirror.commands(rows, mode, self.matcher)
        return self._match(market, market)

    def _apply_marks(self, rows: np.ndarray) -> None:
        if len(rows) > len(self._mark_ids):
            self._mark_ids = np.zeros(len(rows), dtype=np.int64)
            self._mark_px = np.zeros(len(rows), dtype=np.int64)
        n = collect_marks(rows, self.known, self._mark_ids, self._mark_px)
        if n:
            ids, px = self._mark_ids[:n], self._mark_px[:n]
            self.portfolio.set_marks_checked(ids, px)
            self.risk.set_references_checked(ids, px)

    def _apply_submit(self, rows: np.ndarray, commands: np.ndarray, names: list[tuple[int, str]]) -> np.ndarray:
        self.records += 1
        if names:
            accounts, ids, insts, sides = commands["account"], commands["order_id"], commands["instrument_id"], \
                commands["side"]
            for index, coid in names:
                self._register(int(accounts[index]), coid, int(ids[index]), int(insts[index]), int(sides[index]))
        parts = []
        if len(rows):
            synced = self._sync(rows, SyncMode.POST)
            self._apply_marks(rows)
            if len(synced):
                self.risk.on_events(synced)
                parts.append(synced)
        reasons = self._reasons(commands)
        if np.count_nonzero(reasons):
            parts.append(_rejects(commands[reasons != 0], reasons[reasons != 0]))
            passed = commands[reasons == 0]
        else:
            passed = commands
        events = self._match(passed)
        if len(events):
            self.risk.on_events(events)
            parts.append(events)
        return _joined(parts)

    def _reasons(self, commands: np.ndarray) -> np.ndarray:
        """A Reason per user command: the engine's own refusals, then the risk gate's (one call). A view
        of a buffer the next call overwrites."""
        if len(commands) > len(self._bad):
            self._bad = np.zeros(max(len(commands), 2 * len(self._bad)), dtype=np.uint8)
        bad = self._bad[:len(commands)]
        if not refuse_commands(commands, bad):
            return self.risk.check(commands, out=bad)
        ok = bad == 0
        if ok.any():
            bad[ok] = self.risk.check(commands[ok])
        return bad

    def _apply_feed(self, rows: np.ndarray, status: np.ndarray, executions: bool | None = None) -> np.ndarray:
        self.records += 1
        if len(status):
            self.risk.on_status(status)
        if not len(rows):
            return _NO_EVENTS
        if executions is None:
            executions = bool((rows["kind"] == MarketInputKind.EXEC).any())
        pre = self._sync(rows, SyncMode.PRE) if executions else _NO_EVENTS
        post = self._sync(rows, SyncMode.POST)
        self._apply_marks(rows)
        events = _joined([pre, post]) if len(pre) else post
        if len(events):
            self.risk.on_events(events)
        return events

    def _apply_session_end(self, ts: int) -> np.ndarray:
        self.records += 1
        ids = np.flatnonzero(self.known)
        cmds = _commands(len(ids))
        cmds["ts"] = ts
        cmds["kind"] = CommandKind.SESSION_END
        cmds["instrument_id"] = ids
        cmds["price"] = UNDEF_PRICE
        cmds["stop_price"] = UNDEF_PRICE
        events = self._match(cmds)
        if len(events):
            self.risk.on_events(events)
        self.risk.close_day()
        return events

    def _apply_switch(self, kind: RecordKind, account: int) -> np.ndarray:
        self.records += 1
        target = None if account < 0 else account
        (self.risk.kill if kind == RecordKind.KILL else self.risk.release)(target)
        return _NO_EVENTS

    # -- the batch path ---------------------------------------------------------------------------

    def submit(self, commands: np.ndarray, client_ids=None) -> np.ndarray:
        """Run a batch of users' ``COMMAND`` rows (NEW, CANCEL, MODIFY); return the ``ORDER_EVENT`` rows.

        Order ids must be below ``trading.market.MARKET_ID_BASE``. ``client_ids`` (optional, one per
        command, str or None) names NEW orders for the string API, the log and the audit.
        """
        if commands.dtype != _COMMAND_DT:
            raise ValueError(f"submit takes trading.orders.COMMAND rows, not {commands.dtype}")
        pairs = _NO_NAMES
        names = b""
        if client_ids is not None:
            if len(client_ids) != len(commands):
                raise ValueError(f"client_ids has {len(client_ids)} entries for {len(commands)} commands")
            kinds = commands["kind"].tolist()
            pairs = [(i, str(c)) for i, (c, k) in enumerate(zip(client_ids, kinds)) if c is not None and k == _NEW]
            names = _write_names(pairs)
        rows = self._read_for(commands)
        self._log(RecordKind.SUBMIT, 0, rows, commands, None, names)
        events = self._apply_submit(rows, commands, pairs)
        self._hand_off(commands, events, client_ids)
        return events

    def _read_for(self, commands: np.ndarray) -> np.ndarray:
        """MARKET_INPUT rows of the instruments ``commands`` need synced first (live only)."""
        if self.books is None or not len(commands):
            return _NO_ROWS
        insts, reach, need = self.mirror.plan(commands, self.known, self.matcher)
        if not len(insts):
            return _NO_ROWS
        return self.mirror.read(int(commands["ts"][0]), insts, self.books, self.matcher, reach, need)

    def _hand_off(self, commands: np.ndarray, events: np.ndarray, client_ids=None) -> None:
        if self.audit is None:
            return
        if self._audit_ids:
            self.audit(commands, events, client_ids)
        else:
            self.audit(commands, events)

    # -- the feed side ----------------------------------------------------------------------------

    def on_feed(self, ts: int, events: np.ndarray, trades: np.ndarray | None = None,
                status: np.ndarray | None = None) -> list[dict]:
        """A feed batch that ``books`` has just applied: its ``schema.EVENT`` rows, ``TRADE`` rows and
        ``STATUS`` rows. Resting orders fill through their queue, stops trigger on prints, halts apply.

        Returns the users' events it caused, as ``order`` does.
        """
        return self._dicts(self.feed(ts, events, trades, status))

    def feed(self, ts: int, events: np.ndarray, trades: np.ndarray | None = None,
             status: np.ndarray | None = None) -> np.ndarray:
        """``on_feed`` returning ``ORDER_EVENT`` rows."""
        if self.books is None:
            raise ValueError("on_feed needs the engine's books (Engine(books=BookEngine(...)))")
        trades = _NO_TRADES if trades is None else trades
        status = _NO_STATUS if status is None else status
        rows = self.mirror.feed_rows(ts, events, trades, self.books, self.matcher, self.portfolio.holders)
        if not len(rows) and not len(status):
            return _NO_EVENTS
        self._log(RecordKind.FEED, 0, rows, None, status)
        out = self._apply_feed(rows, status, int(self.mirror.scalars[S_EXECS]) > 0)
        self._hand_off(_NO_COMMANDS, out)
        return out

    def mark(self, ts: int, prices: dict[str, object]) -> None:
        """Set marks (and risk's reference prices) by symbol, e.g. when there is no feed; logged."""
        rows = MARKET_INPUT.empty(len(prices))
        for j, (symbol, price) in enumerate(prices.items()):
            if symbol not in self.symbols:
                raise ValueError(f"unknown symbol {symbol!r}")
            rows[j] = (ts, parse_price(price), 0, self.symbols[symbol], MarketInputKind.MARK, 0, (0, 0))
        self._log(RecordKind.FEED, 0, rows, None, None)
        self._apply_feed(rows, _NO_STATUS)
        self.mirror.forget_mark(rows["instrument_id"])  # the feed's next read writes its own mark again

    def end_session(self, ts: int) -> list[dict]:
        """DAY orders expire (GTC stay); today's equity becomes the prior close for day trading rules.

        Returns the events as ``order`` does (``session_end``: as ``ORDER_EVENT`` rows)."""
        return self._dicts(self.session_end(ts))

    def session_end(self, ts: int) -> np.ndarray:
        """``end_session`` returning ``ORDER_EVENT`` rows (the EXPIRED events, in instrument order)."""
        self._log(RecordKind.SESSION_END, int(ts))
        events = self._apply_session_end(int(ts))
        self._hand_off(_NO_COMMANDS, events)
        return events

    def kill(self, account: str | None = None) -> None:
        """Kill switch for one account (by name), or for all with None: new orders are refused."""
        a = -1 if account is None else self._account_id(account)
        self._log(RecordKind.KILL, a)
        self._apply_switch(RecordKind.KILL, a)

    def release(self, account: str | None = None) -> None:
        a = -1 if account is None else self._account_id(account)
        self._log(RecordKind.RELEASE, a)
        self._apply_switch(RecordKind.RELEASE, a)

    # -- the string API ---------------------------------------------------------------------------

    def order(self, ts: int, account: str, client_order_id: str, symbol: str, side: str, type: str, qty,
              price=None, stop_price=None, tif: str = "DAY") -> list[dict]:
        """A new order; returns the events it caused (its ack or reject first, then any fills).

        ``side``: buy, sell, sell_short; ``type``: market, limit, stop, stop_limit; ``tif``: DAY, GTC,
        IOC, FOK; prices in dollars (str, Decimal, int or float). Bad fields come back as a reject
        (invalid_order, bad_qty, bad_price, unknown_symbol, unknown_account), never as an exception.
        """
        a = self.account_ids.get(account)
        coid = str(client_order_id)
        if a is None:
            return [_early_reject(ts, account, coid, symbol, side, price, qty, Reason.UNKNOWN_ACCOUNT)]
        row = _commands(1)
        r = row[0]
        r["ts"] = int(ts)
        r["kind"] = CommandKind.NEW
        r["account"] = a
        r["instrument_id"] = self.symbols.get(symbol, UNKNOWN_INSTRUMENT)
        r["side"] = _SIDES.get(str(side).lower(), 0)
        r["order_type"] = _TYPES.get(str(type).lower(), 0)
        r["tif"] = _TIFS.get(str(tif).upper(), 0)
        r["qty"] = _qty(qty)
        r["price"] = _price_or_bad(price)
        r["stop_price"] = _price_or_bad(stop_price)
        known = (a, coid) in self._ids
        r["order_id"] = self._ids[(a, coid)] if known else self._next_api_id
        if r["instrument_id"] == UNKNOWN_INSTRUMENT and not known:
            self._sent_symbol[int(r["order_id"])] = str(symbol)  # what its events show as the symbol
        events = self.submit(row, None if known else [coid])
        return self._dicts(events)

    def cancel(self, ts: int, account: str, client_order_id: str) -> list[dict]:
        """Cancel an order by its client order id; an id never seen comes back as an unknown_order reject."""
        return self._amend(ts, account, str(client_order_id), CommandKind.CANCEL, None, None)

    def modify(self, ts: int, account: str, client_order_id: str, price=None, qty=None) -> list[dict]:
        """New price and/or open quantity (a price change or size increase loses time priority)."""
        return self._amend(ts, account, str(client_order_id), CommandKind.MODIFY, price, qty)

    def _amend(self, ts, account, coid, kind, price, qty) -> list[dict]:
        a = self.account_ids.get(account)
        oid = self._ids.get((a, coid)) if a is not None else None
        if oid is None:
            reason = Reason.UNKNOWN_ACCOUNT if a is None else Reason.UNKNOWN_ORDER
            return [_early_reject(ts, account, coid, None, None, price, qty, reason)]
        row = _commands(1)
        row["ts"] = int(ts)
        row["kind"] = kind
        row["order_id"] = oid
        row["account"] = a
        row["instrument_id"], row["side"] = self._terms.get(oid, (UNKNOWN_INSTRUMENT, 0))  # unused by the matcher
        row["price"] = UNDEF_PRICE if price is None else _price_or_bad(price)
        row["stop_price"] = UNDEF_PRICE
        row["qty"] = 0 if qty is None else _qty(qty)
        if kind == CommandKind.MODIFY and qty is not None and row["qty"][0] == 0:
            return [_early_reject(ts, account, coid, None, None, price, qty, Reason.BAD_QTY)]
        return self._dicts(self.submit(row))

    def _register(self, account: int, coid: str, order_id: int, instrument: int, side: int) -> None:
        self._ids[(account, coid)] = order_id
        self._names[order_id] = (account, coid)
        self._terms[order_id] = (instrument, side)
        if order_id >= self._next_api_id:
            self._next_api_id = order_id + 1

    def _account_id(self, name: str) -> int:
        a = self.account_ids.get(name)
        if a is None:
            raise ValueError(f"unknown account {name!r}")
        return a

    def _dicts(self, events: np.ndarray) -> list[dict]:
        out = []
        names = self._account_names
        for e in events.tolist():
            ts, oid, _, price, qty, leaves, account, inst, kind, side, liq, reason, _ = e
            named = self._names.get(oid)
            symbol = self._symbol_of.get(inst)
            if symbol is None or not side:  # e.g. a refused cancel names no instrument: the order's terms
                terms = self._terms.get(oid)
                if terms is not None:
                    symbol = symbol or self._symbol_of.get(terms[0])
                    side = side or terms[1]
                symbol = symbol or self._sent_symbol.get(oid) or (None if inst == NO_INSTRUMENT else str(inst))
            out.append({
                "event": _EVENT_NAMES.get(kind, str(kind)), "ts": ts,
                "account": names[account] if account < len(names) else str(account),
                "client_order_id": named[1] if named else str(oid),
                "symbol": symbol, "side": _SIDE_NAMES.get(side),
                "price": format_price(price), "qty": qty, "leaves": leaves,
                "liquidity": _LIQUIDITY_NAMES.get(liq), "reason": _REASON_NAMES[reason] if reason else None})
        return out

    # -- views ------------------------------------------------------------------------------------

    def order_state(self, account: str, client_order_id: str) -> dict | None:
        """A known order: its id and, while live, the matcher's view of it (``live``: False once done)."""
        a = self.account_ids.get(account)
        oid = self._ids.get((a, str(client_order_id)))
        if oid is None:
            return None
        live = self.matcher.order(oid)
        state = {"order_id": oid, "live": live is not None}
        if live is not None:
            state.update(leaves=live["leaves"], price=format_price(live["price"]), held=live["held"])
        return state

    def positions(self) -> list[dict]:
        """Open positions: account, symbol, position, cost, avg_price, mark, market_value, unrealized
        (money and prices as decimal strings)."""
        out = []
        for p in self.portfolio.positions():
            out.append({"account": self._account_names[p["account"]], "symbol": self._symbol_of[p["instrument_id"]],
                        "position": p["position"], "cost": format_price(p["cost"]),
                        "avg_price": format_price(p["avg_price"]),
                        "mark": None if p["mark"] is None else format_price(p["mark"]),
                        "market_value": format_price(p["market_value"]), "unrealized": format_price(p["unrealized"])})
        return out

    def account(self, name: str) -> dict:
        """The account's figures at the marks (cash, equity, P&L, margin, buying power) as decimal strings."""
        figures = self.portfolio.account(self._account_id(name))
        return {k: format_price(v) for k, v in figures.items()}

    def state_hash(self) -> str:
        """blake2b of everything the log rebuilds: books, consumed liquidity, portfolio, risk, order names."""
        h = hashlib.blake2b(digest_size=32)
        for part in (self.matcher.state_bytes(), self.mirror.state_bytes(), self.portfolio.state_bytes(),
                     self.risk.state_bytes()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        for oid in sorted(self._names):
            a, coid = self._names[oid]
            h.update(struct.pack("<QI", oid, a) + coid.encode() + b"\0")
        return h.hexdigest()

    def close(self) -> None:
        """Commit and close the write-ahead log."""
        if self._wal is not None:
            self._wal.close()
            self._wal = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- helpers ------------------------------------------------------------------------------------


_NEW = int(CommandKind.NEW)
_NO_NAMES: list = []
_R_INVALID = np.uint8(Reason.INVALID_ORDER)
_K_NEW, _K_MODIFY = np.uint8(CommandKind.NEW), np.uint8(CommandKind.MODIFY)
_USER_ID_END = np.uint64(MARKET_ID_BASE)


_K_MARK = np.uint8(MarketInputKind.MARK)


@nb.njit(cache=True, nogil=True, _nrt=False)
def collect_marks(rows, known, ids, prices):
    """The MARK rows of instruments the engine trades, in order, into ``ids`` / ``prices`` (room for
    ``len(rows)``); returns how many."""
    n = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        inst = np.int64(r.instrument_id)
        if r.kind == _K_MARK and inst < known.shape[0] and known[inst] == 1:
            ids[n] = inst
            prices[n] = r.price
            n += 1
    return n


@nb.njit(cache=True, nogil=True, _nrt=False)
def refuse_commands(commands, out):
    """INVALID_ORDER into ``out`` for what users may not send: kinds other than NEW, CANCEL, MODIFY
    (1..3), and order ids of the market account, 0 for the others; returns how many were refused."""
    n = 0
    for i in range(commands.shape[0]):
        c = commands[i]
        if c.kind < _K_NEW or c.kind > _K_MODIFY or c.order_id >= _USER_ID_END:
            out[i] = _R_INVALID
            n += 1
        else:
            out[i] = 0
    return n


def _takes_three(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


def _commands(n: int) -> np.ndarray:
    """``COMMAND.empty`` with prices set to UNDEF_PRICE, from the cached dtype."""
    out = np.zeros(n, dtype=_COMMAND_DT)
    out["price"] = UNDEF_PRICE
    out["stop_price"] = UNDEF_PRICE
    return out


def _len(arr) -> int:
    return 0 if arr is None else len(arr)


def _section(payload, at: int, dtype: np.dtype, n: int) -> tuple[np.ndarray, int]:
    size = n * dtype.itemsize
    arr = np.frombuffer(payload, dtype=dtype, count=n, offset=at).copy() if n else np.zeros(0, dtype=dtype)
    return arr, at + size


def _write_names(pairs) -> bytes:
    out = bytearray()
    for index, coid in pairs:
        data = str(coid).encode()
        if len(data) > 0xFFFF:
            raise ValueError("client order id longer than 65535 bytes")
        out += _NAME.pack(index, len(data)) + data
    return bytes(out)


def _read_names(blob: bytes) -> list[tuple[int, str]]:
    out = []
    at = 0
    while at < len(blob):
        index, n = _NAME.unpack_from(blob, at)
        at += _NAME.size
        out.append((index, blob[at:at + n].decode()))
        at += n
    return out


def _qty(value) -> int:
    """Shares as u32; 0 (refused as bad_qty) for anything else."""
    try:
        q = int(value) if not isinstance(value, float) or value.is_integer() else -1
    except (TypeError, ValueError):
        return 0
    return q if 0 < q < 2**32 else 0


def _price_or_bad(value) -> int:
    if value is None:
        return int(UNDEF_PRICE)
    try:
        return parse_price(value)
    except ValueError:
        return -1  # refused as bad_price


def _rejects(commands: np.ndarray, reasons: np.ndarray) -> np.ndarray:
    """REJECT events for refused commands (as the matcher writes its own)."""
    out = np.zeros(len(commands), dtype=_EVENT_DT)
    for name in ("ts", "order_id", "price", "qty", "account", "instrument_id", "side"):
        out[name] = commands[name]
    out["kind"] = EventKind.REJECT
    out["reason"] = reasons
    return out


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    if not parts:
        return _NO_EVENTS
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _early_reject(ts, account, coid, symbol, side, price, qty, reason: Reason) -> dict:
    """A reject decided before anything was logged (no account, or no order to amend)."""
    try:
        shown = format_price(parse_price(price)) if price is not None else None
    except ValueError:
        shown = None
    return {"event": "reject", "ts": int(ts), "account": account, "client_order_id": coid, "symbol": symbol,
            "side": side, "price": shown, "qty": _qty(qty) if qty is not None else 0, "leaves": 0,
            "liquidity": None, "reason": reason.name.lower()}


__all__ = ["AccountConfig", "Engine", "RecordKind", "format_price", "parse_price", "MARKET_ACCOUNT"]
