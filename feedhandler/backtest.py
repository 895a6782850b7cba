"""``feedhandler backtest``: a strategy's orders against a capture, through the real order path.

    run = backtest("captures/nasdaq-sample.pcap", "examples/orders.jsonl", "out/bt",
                   accounts="examples/accounts.toml", mark="mid")
    run.summary["total"]["net_pnl"]     # and out/bt/fills.jsonl, rejects.jsonl, events.jsonl, positions.json

The capture is decoded batch by batch (``feedhandler.replay.DecodedCapture``), every batch applied to a
``BookEngine`` and handed to ``trading.engine.Engine.feed``; the orders of ORDERS.jsonl go in between,
through ``Engine.submit`` (the batch path: risk, write-ahead log, matching, portfolio). docs/orders.md
describes the files.

Rules this module keeps:
- an order stamped T sees the book after every feed message stamped at or before T and before none
  stamped after it (``feedhandler book --at T`` shows that book): feed batches are cut at order
  timestamps, using the same rule as ``book --at`` (the first message stamped after T starts the rest).
  Orders are applied in time order, in file order at equal times; all the orders before the next feed
  message go in one ``submit`` call (cut only where one call would name an order id twice).
- the feed stays batches (numpy slices of the decoded arrays: no Python object per feed message), the
  orders are numpy ``COMMAND`` rows; Python touches each order line when reading the file and each
  event when writing the results, nowhere in between.
- the file's grammar is checked before anything runs (a bad line is one error naming its number);
  what a venue would refuse (unknown account or symbol, zero quantity, bad price, risk limits, a cancel
  of an order that is gone) becomes a counted reject with its reason, as it would live.
- the engine starts at the first order, with the symbols of the orders the stock directory has listed
  by then (a symbol listed later is unknown: ``unknown_symbol``, as at a venue that does not list it
  yet); status rows that came before it (halts, circuit breakers) are handed to it at its start.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
import tomllib
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path

import numpy as np

from feedhandler.replay import DecodedCapture
from orderbook.engine import BookEngine
from parsers.schema import EVENT, PRICE_SCALE, TRADE, UNDEF_PRICE, StatusKind
from parsers.venues import VENUES_BY_NAME
from trading import pdt
from trading.engine import UNKNOWN_INSTRUMENT, AccountConfig, Engine, format_price, parse_price
from trading.luld import LuldTier, SessionCalendar, tier_from_code
from trading.orders import COMMAND, ORDER_EVENT, CommandKind, EventKind, Liquidity, OrderSide, OrderType, Reason, \
    TimeInForce
from trading.risk import Limits, NO_LIMIT
from trading.risk_kernel import GateConfig
from trading.wal import WalError

DEFAULT_CASH = 1_000_000 * PRICE_SCALE  # an account the orders name when there is no ACCOUNTS.toml
# The engine needs a symbol; when the directory lists none of the orders' symbols at its start, this
# one stands in (ITCH locate 0 names no instrument), so every order is refused as unknown_symbol.
PLACEHOLDER_SYMBOL = ("-", 0)

_SIDES = {"buy": OrderSide.BUY, "sell": OrderSide.SELL, "sell_short": OrderSide.SELL_SHORT}
_TYPES = {"market": OrderType.MARKET, "limit": OrderType.LIMIT, "stop": OrderType.STOP,
          "stop_limit": OrderType.STOP_LIMIT}
_TIFS = {"DAY": TimeInForce.DAY, "GTC": TimeInForce.GTC, "IOC": TimeInForce.IOC, "FOK": TimeInForce.FOK}
_ACTIONS = {"new": CommandKind.NEW, "cancel": CommandKind.CANCEL, "modify": CommandKind.MODIFY}
_ORDER_KEYS = {"ts", "action", "account", "client_order_id", "symbol", "side", "type", "qty", "price", "stop_price",
               "tif"}
_CANCEL_KEYS = {"ts", "action", "account", "client_order_id"}
_MODIFY_KEYS = _CANCEL_KEYS | {"price", "qty"}
_NEEDS_PRICE = (OrderType.LIMIT, OrderType.STOP_LIMIT)
_NEEDS_STOP = (OrderType.STOP, OrderType.STOP_LIMIT)

_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})$")
_EVENT_NAMES = {int(k): k.name.lower() for k in EventKind}
_SIDE_NAMES = {int(v): k for k, v in _SIDES.items()}
_TYPE_NAMES = {int(v): k for k, v in _TYPES.items()}
_TIF_NAMES = {int(v): k for k, v in _TIFS.items()}
_ACTION_NAMES = {int(v): k for k, v in _ACTIONS.items()}
_LIQUIDITY_NAMES = {int(Liquidity.MAKER): "maker", int(Liquidity.TAKER): "taker"}
_REASON_NAMES = {int(r): r.name.lower() for r in Reason}
_EVENT_DT, _COMMAND_DT = ORDER_EVENT.dtype, COMMAND.dtype
_U4_MAX = 2**32 - 1


class BacktestError(Exception):
    """Bad input (a line of ORDERS.jsonl, ACCOUNTS.toml, the output directory): one line for the user."""


# -- ORDERS.jsonl ------------------------------------------------------------------------------------


@dataclass
class OrderFile:
    """The lines of ORDERS.jsonl as columns, in time order (file order at equal times).

    ``account`` and ``symbol`` index ``account_names`` / ``symbols``; prices are 1e-9 dollars
    (UNDEF_PRICE: none given); ``qty`` 0 stands for a quantity no venue accepts (refused as bad_qty).
    """

    path: str
    line: np.ndarray  # int64: line number in the file (1-based)
    ts: np.ndarray  # int64 epoch ns
    action: np.ndarray  # uint8 CommandKind
    account: np.ndarray  # int64 index into account_names
    symbol: np.ndarray  # int64 index into symbols (-1: none, cancels and modifies)
    side: np.ndarray  # uint8 OrderSide (0: none)
    order_type: np.ndarray  # uint8 OrderType
    tif: np.ndarray  # uint8 TimeInForce
    qty: np.ndarray  # uint32
    price: np.ndarray  # int64
    stop_price: np.ndarray  # int64
    client_order_id: list[str]
    account_names: list[str]
    symbols: list[str]

    def __len__(self) -> int:
        return len(self.ts)


def parse_ts(value) -> int:
    """Epoch ns from an integer (or a string of digits) or ISO 8601 text with an offset; ValueError if neither."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a time before 1970: {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a time (epoch ns or ISO 8601 with an offset): {value!r}")
    text = value.strip()
    if text.isdigit():
        return int(text)
    m = _ISO.match(text)
    if not m:
        raise ValueError(f"not a time (epoch ns or ISO 8601 with an offset, e.g. 2024-03-15T10:30:00.5-04:00): "
                         f"{value!r}")
    day, clock, frac, offset = m.groups()
    offset = "+00:00" if offset == "Z" else offset
    try:
        t = dt.datetime.fromisoformat(f"{day}T{clock}{offset}")
    except ValueError:
        raise ValueError(f"not a valid date and time: {value!r}") from None
    return (int(t.timestamp()) * 1_000_000_000) + int((frac or "").ljust(9, "0"))


def _qty(value, line_error) -> int:
    """Shares: an integer (or a string of one); out of 1..2**32-1 gives 0, which the engine refuses as bad_qty."""
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise line_error(f"qty must be a whole number of shares, not {value!r}")
    return value if 0 < value <= _U4_MAX else 0


def _price(value, name, line_error) -> int:
    """Dollars (a JSON number or a decimal string) as 1e-9 units; a value <= 0 stays (refused as bad_price)."""
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise line_error(f"{name} must be a price in dollars (a number or a decimal string), not {value!r}")
    try:
        units = parse_price(value)
    except ValueError as exc:
        raise line_error(f"{name}: {exc}") from None
    if units >= UNDEF_PRICE or units < -(2**63):
        raise line_error(f"{name} out of range: {value!r}")
    return units


def _choice(obj, key, table, line_error, upper=False) -> int:
    value = obj[key]
    if not isinstance(value, str) or (value.upper() if upper else value.lower()) not in table:
        raise line_error(f"{key} must be one of {', '.join(table)}, not {value!r}")
    return int(table[value.upper() if upper else value.lower()])


def read_orders(path: str | Path) -> OrderFile:
    """Read and check ORDERS.jsonl; BacktestError (one line, with the line number) for a bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BacktestError(f"no orders file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BacktestError(f"cannot read orders file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    cols: dict[str, list] = {k: [] for k in ("line", "ts", "action", "account", "symbol", "side", "order_type", "tif",
                                             "qty", "price", "stop_price")}
    coids: list[str] = []
    accounts: dict[str, int] = {}
    symbols: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue

        def line_error(what: str, number=number) -> BacktestError:
            return BacktestError(f"{path} line {number}: {what}")

        try:
            obj = json.loads(raw, parse_float=Decimal)
        except json.JSONDecodeError as exc:
            raise line_error(f"not JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise line_error("not a JSON object")
        action = obj.get("action", "new")
        if not isinstance(action, str) or action not in _ACTIONS:
            raise line_error(f"action must be one of {', '.join(_ACTIONS)}, not {action!r}")
        kind = _ACTIONS[action]
        allowed = {CommandKind.NEW: _ORDER_KEYS, CommandKind.CANCEL: _CANCEL_KEYS,
                   CommandKind.MODIFY: _MODIFY_KEYS}[kind]
        unknown = sorted(set(obj) - allowed)
        if unknown:
            what = "an order" if kind == CommandKind.NEW else f"a {action}"
            raise line_error(f"unknown field{'s' if len(unknown) > 1 else ''} for {what}: {', '.join(unknown)}")
        required = ["ts", "account", "client_order_id"]
        if kind == CommandKind.NEW:
            required += ["symbol", "side", "type", "qty"]
        missing = [k for k in required if k not in obj]
        if missing:
            raise line_error(f"missing {', '.join(missing)}")
        try:
            ts = parse_ts(obj["ts"])
        except ValueError as exc:
            raise line_error(f"ts: {exc}") from None
        for key in ("account", "client_order_id") + (("symbol",) if kind == CommandKind.NEW else ()):
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
                raise line_error(f"{key} must be a non-empty string, not {value!r}")
        side = order_type = tif = 0
        qty = 0
        price = stop_price = int(UNDEF_PRICE)
        symbol = -1
        if kind == CommandKind.NEW:
            side = _choice(obj, "side", _SIDES, line_error)
            order_type = _choice(obj, "type", _TYPES, line_error)
            tif = _choice(obj, "tif", _TIFS, line_error, upper=True) if "tif" in obj else int(TimeInForce.DAY)
            qty = _qty(obj["qty"], line_error)
            if "price" in obj:
                if order_type not in _NEEDS_PRICE:
                    raise line_error(f"a {_TYPE_NAMES[order_type]} order has no price (limit and stop_limit do)")
                price = _price(obj["price"], "price", line_error)
            if "stop_price" in obj:
                if order_type not in _NEEDS_STOP:
                    raise line_error(f"a {_TYPE_NAMES[order_type]} order has no stop_price (stop and stop_limit do)")
                stop_price = _price(obj["stop_price"], "stop_price", line_error)
            symbol = symbols.setdefault(str(obj["symbol"]), len(symbols))
        elif kind == CommandKind.MODIFY:
            if "price" not in obj and "qty" not in obj:
                raise line_error("a modify needs price, qty or both")
            if "price" in obj:
                price = _price(obj["price"], "price", line_error)
            if "qty" in obj:
                qty = _qty(obj["qty"], line_error)
                if qty == 0:
                    raise line_error(f"a modify's qty must be 1..{_U4_MAX} (the new open quantity), not {obj['qty']!r}")
        for name, value in (("line", number), ("ts", ts), ("action", int(kind)),
                            ("account", accounts.setdefault(str(obj["account"]), len(accounts))), ("symbol", symbol),
                            ("side", side), ("order_type", order_type), ("tif", tif), ("qty", qty), ("price", price),
                            ("stop_price", stop_price)):
            cols[name].append(value)
        coids.append(str(obj["client_order_id"]))
    dtypes = {"line": np.int64, "ts": np.int64, "action": np.uint8, "account": np.int64, "symbol": np.int64,
              "side": np.uint8, "order_type": np.uint8, "tif": np.uint8, "qty": np.uint32, "price": np.int64,
              "stop_price": np.int64}
    arrays = {k: np.array(v, dtype=dtypes[k]) for k, v in cols.items()}
    order = np.argsort(arrays["ts"], kind="stable")  # time order, file order at equal times
    arrays = {k: v[order] for k, v in arrays.items()}
    return OrderFile(path=str(path), client_order_id=[coids[i] for i in order.tolist()],
                     account_names=list(accounts), symbols=list(symbols), **arrays)


# -- ACCOUNTS.toml -----------------------------------------------------------------------------------


@dataclass
class AccountsFile:
    """Accounts (name -> ``AccountConfig``), fees per share by account, and the risk switches."""

    accounts: dict[str, AccountConfig]
    taker_fee: dict[str, int] = field(default_factory=dict)  # 1e-9 $ per share
    maker_fee: dict[str, int] = field(default_factory=dict)  # negative: a rebate
    market_hours: bool = True
    luld: bool = True
    cash_settlement: bool = True
    day_trading: str = "none"

    def risk_config(self) -> GateConfig:
        return GateConfig(check_market_hours=self.market_hours, check_luld=self.luld,
                          cash_settlement=self.cash_settlement)


_ACCOUNT_KEYS = {"cash", "margin", "suspended", "limits", "taker_fee_per_share", "maker_fee_per_share"}
_RISK_KEYS = {"market_hours": "market_hours", "luld": "luld", "cash_settlement": "cash_settlement",
              "day_trading": "day_trading"}
_LIMIT_KEYS = {f.name for f in fields(Limits)}
_DOLLAR_LIMITS = {"max_order_notional"}


def _dollars(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BacktestError(f"{where}: not an amount in dollars: {value!r}")
    try:
        return parse_price(str(value) if isinstance(value, float) else value)
    except ValueError:
        raise BacktestError(f"{where}: not an amount in dollars: {value!r}") from None


def _flag(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise BacktestError(f"{where}: must be true or false, not {value!r}")
    return value


def read_accounts(path: str | Path | None, names: list[str]) -> AccountsFile:
    """ACCOUNTS.toml (see docs/orders.md); without a file, every account in ``names`` with $1,000,000 cash."""
    if path is None:
        return AccountsFile({name: AccountConfig(cash=DEFAULT_CASH) for name in names} or
                            {"default": AccountConfig(cash=DEFAULT_CASH)})
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BacktestError(f"no accounts file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BacktestError(f"cannot read accounts file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BacktestError(f"{path}: not TOML: {exc}") from None
    unknown = sorted(set(doc) - {"accounts", "risk"})
    if unknown:
        raise BacktestError(f"{path}: unknown table {', '.join(unknown)} (accounts, risk)")
    table = doc.get("accounts")
    if not isinstance(table, dict) or not table:
        raise BacktestError(f"{path}: no [accounts.NAME] table")
    out = AccountsFile({})
    risk = doc.get("risk", {})
    if not isinstance(risk, dict):
        raise BacktestError(f"{path}: risk must be a table")
    for key, value in risk.items():
        where = f"{path}: risk.{key}"
        if key not in _RISK_KEYS:
            raise BacktestError(f"{where}: unknown setting (one of {', '.join(_RISK_KEYS)})")
        if key == "day_trading":
            try:
                pdt.make_policy(str(value))
            except (ValueError, TypeError) as exc:
                raise BacktestError(f"{where}: {exc}") from None
            out.day_trading = str(value)
        else:
            setattr(out, _RISK_KEYS[key], _flag(value, where))
    for name, spec in table.items():
        where = f"{path}: accounts.{name}"
        if not isinstance(spec, dict):
            raise BacktestError(f"{where}: must be a table ([accounts.{name}])")
        unknown = sorted(set(spec) - _ACCOUNT_KEYS)
        if unknown:
            raise BacktestError(f"{where}: unknown key {', '.join(unknown)} "
                                f"(one of {', '.join(sorted(_ACCOUNT_KEYS))})")
        if "cash" not in spec:
            raise BacktestError(f"{where}: cash is required (dollars)")
        cash = _dollars(spec["cash"], f"{where}.cash")
        if cash < 0:
            raise BacktestError(f"{where}.cash: must not be negative")
        limits = spec.get("limits", {})
        if not isinstance(limits, dict):
            raise BacktestError(f"{where}.limits: must be a table")
        values = {}
        for key, value in limits.items():
            if key not in _LIMIT_KEYS:
                raise BacktestError(f"{where}.limits.{key}: unknown limit (one of {', '.join(sorted(_LIMIT_KEYS))})")
            if key in _DOLLAR_LIMITS:
                values[key] = _dollars(value, f"{where}.limits.{key}")
            elif isinstance(value, bool) or not isinstance(value, int):
                raise BacktestError(f"{where}.limits.{key}: must be an integer, not {value!r}")
            else:
                values[key] = value
            if values[key] < 0:
                raise BacktestError(f"{where}.limits.{key}: must not be negative")
            values[key] = min(values[key], NO_LIMIT)
        out.accounts[str(name)] = AccountConfig(
            cash=cash, margin=_flag(spec.get("margin", False), f"{where}.margin"), limits=Limits(**values),
            suspended=_flag(spec.get("suspended", False), f"{where}.suspended"))
        out.taker_fee[str(name)] = _dollars(spec.get("taker_fee_per_share", 0), f"{where}.taker_fee_per_share")
        out.maker_fee[str(name)] = _dollars(spec.get("maker_fee_per_share", 0), f"{where}.maker_fee_per_share")
    return out


# -- the run -----------------------------------------------------------------------------------------


@dataclass
class BacktestResult:
    """What a backtest wrote: the summary (as summary.json) and the paths."""

    summary: dict
    out: Path

    def as_json(self) -> dict:
        return self.summary

    def as_text(self) -> str:
        s = self.summary
        c = s["counts"]
        lines = [f"backtest {s['capture']} ({s['date']}): {s['messages']:,} messages, {s['orders']:,} order lines "
                 f"-> {c['fill']:,} fills, {c['reject']:,} rejects, {c['cancelled']:,} cancelled, "
                 f"{c['expired']:,} expired; marks at {s['mark']}"]
        head = f"  {'account':<14}{'cash':>16}{'realized':>14}{'unrealized':>14}{'fees':>11}{'net P&L':>14}{'fills':>8}"
        lines.append(head)
        rows = [(name, a) for name, a in s["accounts"].items()] + [("total", s["total"])]
        for name, a in rows:
            lines.append(f"  {name:<14}{_money(a['cash']):>16}{_money(a['realized']):>14}{_money(a['unrealized']):>14}"
                         f"{_money(a['fees']):>11}{_money(a['net_pnl']):>14}{a['fills']:>8,}")
        if s["rejects_by_reason"]:
            lines.append("  rejects      " + ", ".join(f"{k} {v:,}" for k, v in s["rejects_by_reason"].items()))
        lines.append("  wrote        fills.jsonl, rejects.jsonl, events.jsonl, positions.json, summary.json "
                     f"under {s['out']}/")
        lines.append(f"  time         {s['seconds']:.3f} s   {s['msgs_per_s']:,.0f} messages/s")
        return "\n".join(lines)


def _money(text: str) -> str:
    """A decimal string of dollars, rounded to cents with thousands separators, for the table."""
    return f"{Decimal(text):,.2f}"


class _Run:
    """One backtest: the capture's batches cut at order times, orders injected, events collected."""

    def __init__(self, source: DecodedCapture, orders: OrderFile, accounts: AccountsFile, mark: str,
                 wal_dir: str | Path | None) -> None:
        self.source = source
        self.orders = orders
        self.cfg = accounts
        self.mark = mark
        self.wal_dir = wal_dir
        # BBO and L2 rows unused (the engine reads the levels): books only, no rows made
        self.books = BookEngine(depth=1, venue=source.venue.id, outputs=False)
        self.engine: Engine | None = None
        self.directory: list[tuple[int, str, int, int]] = []
        self.tiers: dict[str, int] = {}
        self.early_status: list[np.ndarray] = []
        self.last_ts = 0
        self.submits = 0  # Engine.submit calls (one per run of orders with no feed message between them)
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []  # (ORDER_EVENT rows, order line index per row)
        self._assign_ids()

    # -- order ids and accounts ----------------------------------------------------------------------

    def _assign_ids(self) -> None:
        """An order id per line: a NEW takes a fresh id (a reused client order id: the earlier order's, so
        the engine refuses it as a duplicate); a cancel or modify the id of its order, or a fresh one the
        engine does not know (unknown_order)."""
        o = self.orders
        n_acct = len(self.cfg.accounts)
        index = {name: a for a, name in enumerate(self.cfg.accounts)}
        # accounts the file names but ACCOUNTS.toml does not: an id no account has (unknown_account)
        self.account_id = np.array([index.get(name, n_acct) for name in o.account_names] or [0], dtype=np.int64)
        ids = np.zeros(len(o), dtype=np.uint64)
        origin = [0]  # order id -> line index of the order it names (id 0 unused)
        seen: dict[tuple[int, str], int] = {}
        acct = o.account.tolist()
        for j, (kind, a, coid) in enumerate(zip(o.action.tolist(), acct, o.client_order_id)):
            oid = seen.get((a, coid))
            if oid is None:
                oid = len(origin)
                origin.append(j)
                if kind == CommandKind.NEW:
                    seen[(a, coid)] = oid
            ids[j] = oid
        self.order_id = ids
        self.origin_of_id = np.array(origin, dtype=np.int64)
        # the symbol of each line: its own, or (cancels, modifies) that of the order it names, -1 if none
        own = o.symbol
        named = self.origin_of_id[ids.astype(np.int64)] if len(o) else np.zeros(0, dtype=np.int64)
        self.line_symbol = np.where(own >= 0, own, o.symbol[named])
        self.line_side = np.where(o.side > 0, o.side, o.side[named])
        self.known_account = self.account_id[o.account] < n_acct if len(o) else np.zeros(0, dtype=bool)
        # lines the engine takes (a cancel or modify of an unknown account it never sees, as Engine.cancel)
        self.engine_reaches = (self.known_account | (o.action == CommandKind.NEW)).tolist()

    # -- the engine ----------------------------------------------------------------------------------

    def _learn(self, definitions: np.ndarray) -> None:
        """The stock directory entries of the orders' symbols: (ts_event, symbol, instrument id, LULD tier)."""
        if not len(definitions) or self.engine is not None:
            return
        names = np.char.strip(np.char.decode(definitions["symbol"], "ascii", "replace"))
        wanted = np.flatnonzero(np.isin(names, self.orders.symbols))
        for k in wanted.tolist():
            tier = tier_from_code(definitions["luld_tier"][k])
            self.directory.append((int(definitions["ts_event"][k]), str(names[k]),
                                   int(definitions["instrument_id"][k]), int(tier or LuldTier.TIER_2)))

    def _start_engine(self, ts: int) -> Engine:
        """The engine, started at ``ts`` with the orders' symbols the directory listed by then."""
        if self.engine is not None:
            return self.engine
        listed = {sym: (inst, tier) for t, sym, inst, tier in self.directory if t <= ts}
        symbols = {s: listed[s][0] for s in self.orders.symbols if s in listed} or dict([PLACEHOLDER_SYMBOL])
        self.symbols = symbols
        self.instrument_of = np.array([symbols.get(s, UNKNOWN_INSTRUMENT) for s in self.orders.symbols] or [0],
                                      dtype=np.int64)
        self.tiers = {s: listed[s][1] if s in listed else int(LuldTier.TIER_2) for s in symbols}
        try:
            self.engine = Engine(symbols, self.cfg.accounts, books=self.books, wal_dir=self.wal_dir,
                                 **_engine_options(self.cfg, self.source.venue.tz, self.mark, self.tiers))
        except (WalError, OSError) as exc:
            raise BacktestError(f"write-ahead log {self.wal_dir}: {exc}") from None
        self.commands = self._command_rows()
        if self.early_status:
            status = np.concatenate(self.early_status)
            self._collect(self.engine.feed(int(status["ts_event"].max()), EVENT.empty(0), TRADE.empty(0), status))
            self.early_status = []
        return self.engine

    def _collect(self, events: np.ndarray, origin: np.ndarray | None = None, line: int = -1) -> None:
        """Keep ``events`` (the engine hands out arrays it never writes again) for ``events()``: their order
        lines are ``origin``, or those of their order ids (``line`` >= 0: a reject answers that line)."""
        if len(events):
            self.parts.append((events, origin, line))

    # -- the feed --------------------------------------------------------------------------------------

    def _feed(self, events: np.ndarray, trades: np.ndarray, status: np.ndarray, ts: int) -> None:
        if len(events):
            self.books.apply(events)
        self.last_ts = max(self.last_ts, ts)
        if self.engine is not None:
            if len(events) or len(trades) or len(status):
                self._collect(self.engine.feed(ts, events, trades, status))
        elif len(status):
            keep = np.isin(status["kind"], (StatusKind.TRADING_ACTION, StatusKind.MWCB_LEVELS, StatusKind.MWCB_BREACH))
            if keep.any():
                self.early_status.append(status[keep].copy())

    def run(self) -> None:
        o = self.orders
        n = len(o)
        k = 0  # next order line (in time order)
        for batch in self.source.batches():
            self._learn(batch.definitions)
            arrays = (batch.events, batch.trades, batch.status)
            lens = [len(a) for a in arrays]
            # running maxima: the first message stamped after T is where they pass T (as ``book --at``)
            stamps = [np.maximum.accumulate(a["ts_event"]) if len(a) else a["ts_event"] for a in arrays]
            at = [0, 0, 0]
            while True:
                if k < n:
                    t = o.ts[k]
                    cut = [int(np.searchsorted(s, t, side="right")) for s in stamps]
                else:
                    cut = lens
                ts = max([int(s[c - 1]) for s, c, a0 in zip(stamps, cut, at) if c > a0] or [self.last_ts])
                self._feed(*(a[a0:c] for a, a0, c in zip(arrays, at, cut)), ts)
                at = cut
                if at == lens:
                    break  # orders at T wait: the next batch may still hold messages stamped at or before T
                nxt = min(int(s[c]) for s, c, m in zip(stamps, at, lens) if c < m)
                end = int(np.searchsorted(o.ts, nxt, side="left"))  # every order before the next message
                self._inject(k, end)
                k = end
        self._inject(k, n)
        engine = self._start_engine(self.last_ts)
        end_ts = max(self.last_ts, int(o.ts[-1]) if n else 0)
        self._session_end(engine, end_ts)

    # -- orders ----------------------------------------------------------------------------------------

    def _inject(self, k0: int, k1: int) -> None:
        if k1 <= k0:
            return
        engine = self.engine if self.engine is not None else self._start_engine(int(self.orders.ts[k0]))
        if k1 - k0 == 1 and self.engine_reaches[k0]:  # one line: the usual case
            self.submits += 1
            self._collect(engine.submit(self.commands[k0:k1], self.names[k0:k1]), None, k0)
            return
        o = self.orders
        sel = np.arange(k0, k1)
        early = ~self.known_account[sel] & (o.action[sel] != CommandKind.NEW)
        if early.any():  # a cancel or modify of an unknown account never reaches the engine (as Engine.cancel)
            self._early_rejects(sel[early])
            sel = sel[~early]
        ids = self.order_id[sel]
        start = 0
        for stop in _unique_runs(ids):  # one submit per run of distinct order ids
            self._submit(engine, sel[start:stop])
            start = stop

    def _command_rows(self) -> np.ndarray:
        """Every line as a ``COMMAND`` row (instrument ids are the engine's), built once."""
        o = self.orders
        cmds = np.zeros(len(o), dtype=_COMMAND_DT)
        cmds["ts"] = o.ts
        cmds["order_id"] = self.order_id
        cmds["price"] = o.price
        cmds["stop_price"] = o.stop_price
        cmds["qty"] = o.qty
        cmds["account"] = self.account_id[o.account] if len(o) else 0
        cmds["instrument_id"] = np.where(o.symbol >= 0, self.instrument_of[np.maximum(o.symbol, 0)], 0)
        cmds["kind"] = o.action
        cmds["side"] = o.side
        cmds["order_type"] = o.order_type
        cmds["tif"] = o.tif
        self.names = [coid if kind == CommandKind.NEW else None
                      for coid, kind in zip(o.client_order_id, o.action.tolist())]
        return cmds

    def _submit(self, engine: Engine, sel: np.ndarray) -> None:
        if len(sel) and sel[-1] - sel[0] == len(sel) - 1:  # consecutive lines (the rule): views
            k0, k1 = int(sel[0]), int(sel[-1]) + 1
            cmds, names = self.commands[k0:k1], self.names[k0:k1]
        else:
            cmds, names = self.commands[sel], [self.names[j] for j in sel.tolist()]
        events = engine.submit(cmds, names)
        self.submits += 1
        if not len(events):
            return
        if len(sel) == 1:
            self._collect(events, None, int(sel[0]))
            return
        origin = self.origin_of_id[events["order_id"].astype(np.int64)]
        rejects = events["kind"] == EventKind.REJECT
        if rejects.any():  # a reject answers the command of this call with its order id (ids are distinct here)
            by_id = np.argsort(cmds["order_id"])
            pos = np.searchsorted(cmds["order_id"], events["order_id"][rejects], sorter=by_id)
            origin[rejects] = sel[by_id[pos]]
            # the engine answers its refusals first; the outputs keep time order (then the engine's)
            order = np.argsort(events["ts"], kind="stable")
            events, origin = events[order], origin[order]
        self._collect(events, origin)

    def _early_rejects(self, sel: np.ndarray) -> None:
        o = self.orders
        rows = np.zeros(len(sel), dtype=_EVENT_DT)
        rows["ts"] = o.ts[sel]
        rows["order_id"] = self.order_id[sel]
        rows["price"] = o.price[sel]
        rows["qty"] = o.qty[sel]
        rows["account"] = self.account_id[o.account[sel]]
        rows["instrument_id"] = UNKNOWN_INSTRUMENT
        rows["kind"] = EventKind.REJECT
        rows["reason"] = Reason.UNKNOWN_ACCOUNT
        self._collect(rows, sel)

    def _session_end(self, engine: Engine, ts: int) -> None:
        """DAY orders expire."""
        self._collect(engine.session_end(ts))

    # -- results -----------------------------------------------------------------------------------------

    def events(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, dtype=_EVENT_DT), np.zeros(0, dtype=np.int64)
        # joined as bytes: np.concatenate of tens of thousands of small structured arrays is ~20x slower
        rows = np.frombuffer(bytearray(b"".join(p[0].tobytes() for p in self.parts)), dtype=_EVENT_DT)
        origin = self.origin_of_id[rows["order_id"].astype(np.int64)]
        sizes = np.array([len(p[0]) for p in self.parts], dtype=np.int64)
        line = np.repeat(np.array([p[2] for p in self.parts], dtype=np.int64), sizes)
        answered = (line >= 0) & (rows["kind"] == EventKind.REJECT)  # a one-line submit's reject: that line
        origin[answered] = line[answered]
        ends = np.cumsum(sizes)
        for (_, given, _), end, n in zip(self.parts, ends.tolist(), sizes.tolist()):
            if given is not None:
                origin[end - n:end] = given
        return rows, origin


def _engine_options(cfg: AccountsFile, tz: str, mark: str, tiers: dict[str, int]) -> dict:
    """The engine's settings besides symbols, accounts and books (a recovery needs the same ones).

    fsync "never": the log of a backtest is for replaying its state (``recover_engine``), not for
    surviving a power cut, and an fdatasync per feed batch would cost more than the backtest."""
    return {"fsync": "never", "mark": mark, "calendar": SessionCalendar(tz=tz),
            "pdt_policy": pdt.make_policy(cfg.day_trading), "risk_config": cfg.risk_config(), "tiers": tiers}


def recover_engine(summary: str | Path, orders: str | Path, wal_dir: str | Path,
                   accounts: str | Path | None = None) -> Engine:
    """The engine of a finished ``backtest --wal`` rebuilt from its log alone (no capture): the same
    ``state_hash()`` as summary.json's ``engine.state_hash``. Takes the run's summary.json, orders and
    accounts files (the engine's configuration is not logged)."""
    s = json.loads(Path(summary).read_text())
    cfg = read_accounts(accounts, read_orders(orders).account_names)
    venue = VENUES_BY_NAME[s["venue"]]
    return Engine.recover(s["engine"]["symbols"], cfg.accounts, wal_dir=wal_dir,
                          **_engine_options(cfg, venue.tz, s["mark"], s["engine"]["tiers"]))


def _unique_runs(ids: np.ndarray) -> list[int]:
    """Ends of the shortest cover of ``ids`` by consecutive runs that name no id twice."""
    if len(np.unique(ids)) == len(ids):
        return [len(ids)]
    ends, seen = [], set()
    for i, oid in enumerate(ids.tolist()):
        if oid in seen:
            ends.append(i)
            seen = set()
        seen.add(oid)
    ends.append(len(ids))
    return ends


def backtest(capture: str | Path, orders: str | Path, out: str | Path, accounts: str | Path | None = None,
             date: dt.date | None = None, mark: str = "mid", wal_dir: str | Path | None = None, venue: str = "nasdaq",
             udp_port: int | None = None) -> BacktestResult:
    """Run ORDERS.jsonl against ``capture`` and write the results under ``out`` (see the module docstring)."""
    started = time.perf_counter()
    if mark not in ("mid", "last"):
        raise BacktestError(f"--mark must be mid or last, not {mark!r}")
    order_file = read_orders(orders)
    accounts_file = read_accounts(accounts, order_file.account_names)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BacktestError(f"cannot create output directory {out}: {exc.strerror}") from None
    if wal_dir is not None and Path(wal_dir).exists() and any(Path(wal_dir).iterdir()):
        raise BacktestError(f"--wal {wal_dir} is not empty: a backtest starts a new log")
    source = DecodedCapture(capture, date, venue, udp_port)
    run = _Run(source, order_file, accounts_file, mark, wal_dir)
    try:
        run.run()
    finally:
        if run.engine is not None:
            run.engine.close()
    events, origin = run.events()
    seconds = time.perf_counter() - started
    summary = _write_outputs(run, events, origin, out, seconds)
    return BacktestResult(summary, out)


# -- outputs -------------------------------------------------------------------------------------------


def _fees(run: _Run, events: np.ndarray) -> np.ndarray:
    """Fee per event (1e-9 $): fills at the account's taker or maker rate per share, 0 otherwise."""
    names = list(run.cfg.accounts)
    taker = np.array([run.cfg.taker_fee.get(n, 0) for n in names] + [0], dtype=np.int64)
    maker = np.array([run.cfg.maker_fee.get(n, 0) for n in names] + [0], dtype=np.int64)
    a = np.minimum(events["account"].astype(np.int64), len(names))
    rate = np.where(events["liquidity"] == Liquidity.MAKER, maker[a], taker[a])
    return np.where(events["kind"] == EventKind.FILL, rate * events["qty"].astype(np.int64), 0)


def _write_outputs(run: _Run, events: np.ndarray, origin: np.ndarray, out: Path, seconds: float) -> dict:
    fees = _fees(run, events)
    counts = {name: int(np.count_nonzero(events["kind"] == k)) for k, name in _EVENT_NAMES.items()}
    try:
        with open(out / "events.jsonl", "w") as ev_f, open(out / "fills.jsonl", "w") as fill_f, \
                open(out / "rejects.jsonl", "w") as rej_f:
            for e, j, fee in zip(events.tolist(), origin.tolist(), fees.tolist()):
                line = _event_line(run, e, j)
                if line["event"] == "fill":
                    line["fee"] = format_price(fee)
                    fill_f.write(json.dumps({k: line[k] for k in _FILL_FIELDS}) + "\n")
                elif line["event"] == "reject":
                    rej_f.write(json.dumps(_reject_line(run, line, j)) + "\n")
                ev_f.write(json.dumps(line) + "\n")
        positions = run.engine.positions()
        summary = _summary(run, events, origin, fees, counts, positions, out, seconds)
        (out / "positions.json").write_text(json.dumps(positions, indent=1) + "\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    except OSError as exc:
        raise BacktestError(f"cannot write under {out}: {exc.strerror}") from None
    return summary


_FILL_FIELDS = ("ts", "account", "client_order_id", "symbol", "side", "price", "qty", "leaves", "liquidity", "fee")


def _event_line(run: _Run, e: tuple, j: int) -> dict:
    """An events.jsonl line: an ORDER_EVENT row (as a tuple) named through order line ``j``."""
    o = run.orders
    ts, _, _, price, qty, leaves, _, _, kind, side, liq, reason, _ = e
    s = int(run.line_symbol[j])
    return {"event": _EVENT_NAMES[kind], "ts": ts, "account": o.account_names[o.account[j]],
            "client_order_id": o.client_order_id[j], "symbol": o.symbols[s] if s >= 0 else None,
            "side": _SIDE_NAMES.get(side or int(run.line_side[j])), "price": format_price(price), "qty": qty,
            "leaves": leaves, "liquidity": _LIQUIDITY_NAMES.get(liq),
            "reason": _REASON_NAMES[reason] if reason else None}


def _reject_line(run: _Run, line: dict, j: int) -> dict:
    """A rejects.jsonl line: the refused line as the file gave it, and why."""
    o = run.orders
    return {"ts": line["ts"], "line": int(o.line[j]), "action": _ACTION_NAMES[int(o.action[j])],
            "account": line["account"], "client_order_id": line["client_order_id"], "symbol": line["symbol"],
            "side": line["side"], "type": _TYPE_NAMES.get(int(o.order_type[j])), "qty": int(o.qty[j]),
            "price": format_price(int(o.price[j])), "stop_price": format_price(int(o.stop_price[j])),
            "reason": line["reason"]}


def _summary(run: _Run, events, origin, fees, counts, positions, out, seconds) -> dict:
    engine = run.engine
    o = run.orders
    names = list(run.cfg.accounts)
    fills = events["kind"] == EventKind.FILL
    acct = events["account"].astype(np.int64)
    qty = events["qty"].astype(np.int64)
    buys = fills & (events["side"] == OrderSide.BUY)
    per = {}
    total = {k: 0 for k in ("cash_start", "cash", "equity", "realized", "unrealized", "fees", "net_pnl")}
    total.update(fills=0, shares_bought=0, shares_sold=0, orders=0, rejects=0)
    line_acct = run.account_id[o.account] if len(o) else np.zeros(0, dtype=np.int64)
    rejected_lines = origin[events["kind"] == EventKind.REJECT]
    for a, name in enumerate(names):
        fig = engine.portfolio.account(a)
        mine = acct == a
        fee = int(fees[mine].sum())
        row = {"cash_start": int(run.cfg.accounts[name].cash), "cash": fig["cash"], "equity": fig["equity"],
               "realized": fig["realized"], "unrealized": fig["unrealized"], "fees": fee,
               "net_pnl": fig["realized"] + fig["unrealized"] - fee,
               "fills": int(np.count_nonzero(fills & mine)), "shares_bought": int(qty[buys & mine].sum()),
               "shares_sold": int(qty[fills & ~buys & mine].sum()),
               "orders": int(np.count_nonzero((line_acct == a) & (o.action == CommandKind.NEW))),
               "rejects": int(np.count_nonzero(line_acct[rejected_lines] == a))}
        for k in total:
            total[k] += row[k]
        per[name] = row
    money = ("cash_start", "cash", "equity", "realized", "unrealized", "fees", "net_pnl")
    for row in list(per.values()) + [total]:
        for k in money:
            row[k] = format_price(row[k])
    reasons = events["reason"][events["kind"] == EventKind.REJECT]
    by_reason = {_REASON_NAMES[int(r)]: int(c) for r, c in zip(*np.unique(reasons, return_counts=True))}
    messages = run.source.capture.stats.messages
    return {
        "capture": run.source.path, "date": run.source.normalizer.clock.date.isoformat(),
        "venue": run.source.venue.name,
        "orders_file": o.path, "mark": run.mark, "messages": messages, "orders": len(o),
        "commands": {name: int(np.count_nonzero(o.action == k)) for k, name in _ACTION_NAMES.items()},
        "counts": counts, "rejects_by_reason": by_reason, "open_orders": _open_orders(run),
        "accounts": per, "total": total, "positions": len(positions),
        "engine": {"symbols": run.symbols, "tiers": run.tiers, "submits": run.submits,
                   "state_hash": engine.state_hash(), "wal": None if run.wal_dir is None else str(run.wal_dir)},
        "out": str(out), "seconds": round(seconds, 6),
        "msgs_per_s": round(messages / seconds, 1) if seconds > 0 else 0.0,
    }


def _open_orders(run: _Run) -> int:
    """Orders still open at the end (GTC orders, held stops): the matcher still holds them."""
    ids = np.unique(run.order_id[run.orders.action == CommandKind.NEW]).tolist()
    return sum(run.engine.matcher.order(oid) is not None for oid in ids)
