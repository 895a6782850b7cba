"""Positions, cash and P&L of every account, updated fill by fill in a compiled kernel.

State is a handful of numpy arrays, direct-indexed by account id ``a`` and instrument id ``i``:

- ``cash[a]``: int64, 1e-9 dollars; buys take ``qty x price``, sells (short sales too) bring it in, so
  a short position's proceeds sit in cash.
- ``position[a, i]``: signed shares (short < 0); ``cost[a, i]``: signed cost basis of that open position
  (1e-9 dollars, negative for a short: what selling it brought in).
- ``realized[a]``: P&L realized by fills that reduced positions; ``mark[i]``: the price positions are
  valued at (mid or last, set by the engine), ``UNDEF_PRICE`` while unknown.
- ``margin[a]``: a margin account (the risk gate's ``add_account`` sets it); ``unsettled[a]``: sale
  proceeds of a cash account not settled yet (T+1; the risk gate keeps it, as it knows the dates).
- ``holders[i]``: accounts with an open position in instrument ``i`` (kept by ``apply_fill``; the
  engine reads marks for instruments someone holds).

Rules this module keeps:
- average-cost accounting: a fill that adds to a position (or opens one) adds ``qty x price`` to its
  cost; one that reduces it realizes ``qty x price`` minus the average cost of the shares closed; one
  that flips it realizes the closed part and opens the rest at the fill price. The cost of the closed
  shares is rounded down in magnitude and what it leaves stays in ``cost``, so
  ``realized + position x mark - cost`` is exactly the change of ``cash + position x mark``.
- integer money, no floats; fees are not modelled.
- valuation: ``position x mark``; an instrument with no mark is valued at its cost (unrealized 0).
- margin figures follow docs/risk.md (Reg T 50% initial, FINRA 4210 maintenance 25% long, 30% short
  with its per-share floors, $2,000 minimum equity for credit); the numbers live in ``trading.risk``.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from parsers.schema import UNDEF_PRICE
from trading.orders import EventKind, OrderSide
from trading.risk import BP_SCALE, MARGIN_MIN_EQUITY, REG_T_INITIAL_BP, maintenance_long, maintenance_short

_FILL = np.uint8(EventKind.FILL)
_BUY = np.uint8(OrderSide.BUY)


@nb.njit(cache=True, nogil=True, _nrt=False, inline="always")
def apply_fill(cash, position, cost, realized, holders, a, i, signed, price):
    """Apply one fill of ``signed`` shares (buy > 0, sell < 0) at ``price`` to account ``a``, instrument ``i``.

    Average cost (module docstring). Shared with ``trading.risk_kernel``, which applies fills itself.
    """
    pos = position[a, i]
    c = cost[a, i]
    cash[a] -= signed * price
    if pos == 0 and signed != 0:
        holders[i] += 1
    elif pos + signed == 0 and pos != 0:
        holders[i] -= 1
    if pos == 0 or (pos > 0) == (signed > 0):  # opens or adds
        position[a, i] = pos + signed
        cost[a, i] = c + signed * price
        return
    mag = abs(pos)
    q = abs(signed)
    closed = min(q, mag)
    # average cost of the closed shares, c * closed / |pos| rounded down in magnitude, without overflow
    cm = abs(c)
    cc = (cm // mag) * closed + (cm % mag) * closed // mag
    if c < 0:
        cc = -cc
    realized[a] += (closed if pos > 0 else -closed) * price - cc
    position[a, i] = pos + signed
    if q > mag:  # flipped: the rest opens at the fill price
        cost[a, i] = (signed // q) * (q - mag) * price
    else:
        cost[a, i] = c - cc


@nb.njit(cache=True, nogil=True, _nrt=False)
def apply_fill_rows(events, cash, position, cost, realized, holders):
    """Apply the FILL rows of ``events`` (``trading.orders.ORDER_EVENT``) in order; returns how many."""
    n = 0
    for k in range(events.shape[0]):
        e = events[k]
        if e.kind != _FILL:
            continue
        q = np.int64(e.qty)
        apply_fill(cash, position, cost, realized, holders, np.int64(e.account), np.int64(e.instrument_id),
                   q if e.side == _BUY else -q, e.price)
        n += 1
    return n


@nb.njit(cache=True, nogil=True, _nrt=False)
def _set_marks(mark, ids, prices):
    for k in range(ids.shape[0]):  # in order: a later price for the same instrument wins
        mark[ids[k]] = prices[k]


def check_fill_rows(events: np.ndarray, accounts: int, instruments: int) -> np.ndarray:
    """The FILL rows' mask, after checking their accounts and instruments are in range (ValueError)."""
    fills = events["kind"] == _FILL
    bad = fills & ((events["account"] >= accounts) | (events["instrument_id"] >= instruments))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"fill row {k}: account {int(events['account'][k])} or instrument "
                         f"{int(events['instrument_id'][k])} outside the portfolio ({accounts} x {instruments})")
    return fills


class Portfolio:
    """Cash, positions, cost and realized P&L of ``accounts`` accounts in ``instruments`` instruments.

    Account and instrument ids index the arrays directly (0 <= id < the sizes given here).
    """

    def __init__(self, accounts: int, instruments: int) -> None:
        if accounts <= 0 or instruments <= 0:
            raise ValueError(f"a portfolio needs at least one account and one instrument: {accounts} x {instruments}")
        self.accounts = int(accounts)
        self.instruments = int(instruments)
        self.cash = np.zeros(self.accounts, dtype=np.int64)
        self.position = np.zeros((self.accounts, self.instruments), dtype=np.int64)
        self.cost = np.zeros((self.accounts, self.instruments), dtype=np.int64)
        self.realized = np.zeros(self.accounts, dtype=np.int64)
        self.mark = np.full(self.instruments, UNDEF_PRICE, dtype=np.int64)
        self.margin = np.zeros(self.accounts, dtype=np.bool_)
        self.unsettled = np.zeros(self.accounts, dtype=np.int64)
        self.holders = np.zeros(self.instruments, dtype=np.int64)  # accounts with an open position, by instrument
        self.fills_applied = np.zeros(1, dtype=np.int64)  # lets the risk gate notice fills it did not see
        self.marks_set = np.zeros(1, dtype=np.int64)  # counts set_marks calls: the risk gate revalues on change

    # -- updates ----------------------------------------------------------------------------------

    def deposit(self, account: int, amount: int) -> None:
        """Add ``amount`` (1e-9 dollars; negative: a withdrawal) to the account's cash."""
        self._account_index(account)
        self.cash[account] += int(amount)

    def apply_fills(self, events: np.ndarray) -> int:
        """Apply the FILL rows of ``ORDER_EVENT`` rows in order (BUY adds, SELL / SELL_SHORT subtract).

        Returns the number of fills. Rows of other kinds are ignored; a fill outside the portfolio's
        accounts or instruments is a ValueError, raised before anything is applied.
        """
        check_fill_rows(events, self.accounts, self.instruments)
        n = apply_fill_rows(events, self.cash, self.position, self.cost, self.realized, self.holders)
        self.fills_applied[0] += n
        return int(n)

    def set_marks(self, instrument_ids, prices) -> None:
        """Valuation prices (1e-9 units; ``UNDEF_PRICE``: unknown); a later entry for an id wins."""
        ids = np.asarray(instrument_ids, dtype=np.int64).ravel()
        px = np.asarray(prices, dtype=np.int64).ravel()
        if ids.shape != px.shape:
            raise ValueError(f"set_marks: {len(ids)} instrument ids but {len(px)} prices")
        if len(ids) and (ids.min() < 0 or ids.max() >= self.instruments):
            raise ValueError(f"set_marks: instrument ids must be in 0..{self.instruments - 1}")
        self.set_marks_checked(ids, px)

    def set_marks_checked(self, ids: np.ndarray, prices: np.ndarray) -> None:
        """``set_marks`` of int64 arrays already known to be in range (the engine's MARK rows)."""
        _set_marks(self.mark, ids, prices)
        self.marks_set[0] += 1

    # -- views ------------------------------------------------------------------------------------

    def _account_index(self, a: int) -> int:
        if not 0 <= int(a) < self.accounts:
            raise ValueError(f"account {a} outside the portfolio (0..{self.accounts - 1})")
        return int(a)

    def _price(self, i: int, q: int, c: int) -> int:
        """Valuation price of ``q`` shares of instrument ``i``: the mark, else the average cost."""
        m = int(self.mark[i])
        if m != UNDEF_PRICE:
            return m
        return abs(c) // abs(q)

    def _value(self, i: int, q: int, c: int) -> int:
        m = int(self.mark[i])
        return q * m if m != UNDEF_PRICE else c

    def account(self, a: int) -> dict:
        """Figures of account ``a`` at the marks, integers in 1e-9 dollars.

        ``maintenance`` is FINRA 4210(c) on the positions, ``initial`` Reg T 50% of gross market value,
        ``margin_excess`` = equity - maintenance (negative: a maintenance call). ``buying_power``: for a
        margin account with at least $2,000 equity, the market value it may add, long,
        ``min(2 x (equity - initial), 4 x (equity - maintenance))``; otherwise (cash account, or no
        credit) its settled cash, ``cash - unsettled``.
        """
        a = self._account_index(a)
        long_value = short_value = maintenance = unrealized = 0
        for i in np.flatnonzero(self.position[a]):
            q, c = int(self.position[a, i]), int(self.cost[a, i])
            v = self._value(int(i), q, c)
            unrealized += v - c
            if q > 0:
                long_value += v
                maintenance += maintenance_long(v)
            else:
                short_value += -v
                maintenance += maintenance_short(-q, self._price(int(i), q, c))
        cash = int(self.cash[a])
        equity = cash + long_value - short_value
        initial = (long_value + short_value) * REG_T_INITIAL_BP // BP_SCALE
        if self.margin[a] and equity >= MARGIN_MIN_EQUITY:
            buying_power = max(0, min(2 * (equity - initial), 4 * (equity - maintenance)))
        else:
            buying_power = max(0, cash - int(self.unsettled[a]))
        return {"cash": cash, "long_value": long_value, "short_value": short_value, "equity": equity,
                "realized": int(self.realized[a]), "unrealized": unrealized, "maintenance": maintenance,
                "initial": initial, "buying_power": buying_power, "margin_excess": equity - maintenance}

    def positions(self) -> list[dict]:
        """Every open position: account, instrument_id, position, cost, avg_price, mark (None: unknown),
        market_value and unrealized (1e-9 units), by account then instrument."""
        out = []
        for a, i in zip(*np.nonzero(self.position)):
            q, c, m = int(self.position[a, i]), int(self.cost[a, i]), int(self.mark[i])
            v = self._value(int(i), q, c)
            out.append({"account": int(a), "instrument_id": int(i), "position": q, "cost": c,
                        "avg_price": abs(c) // abs(q), "mark": None if m == UNDEF_PRICE else m,
                        "market_value": v, "unrealized": v - c})
        return out

    def state_bytes(self) -> bytes:
        """What the accounts own (cash, positions, cost, realized, unsettled), for state hashes.

        Marks are market data, not account state, and are left out.
        """
        head = np.array([self.accounts, self.instruments], dtype=np.int64)
        return b"".join(x.tobytes() for x in (head, self.cash, self.position, self.cost, self.realized,
                                                 self.unsettled))
