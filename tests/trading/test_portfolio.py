"""Portfolio: average-cost accounting by known answers, margin figures, and accounting invariants over
thousands of random trades (both sides of each) and over the matching kernel's own fills."""
import numpy as np
import pytest

from parsers.schema import PRICE_SCALE as P
from parsers.schema import UNDEF_PRICE
from trading.matching import MatchingEngine
from trading.orders import ORDER_EVENT, CommandKind, EventKind, OrderSide, OrderType, TimeInForce, commands
from trading.portfolio import Portfolio

BUY, SELL, SHORT = OrderSide.BUY, OrderSide.SELL, OrderSide.SELL_SHORT


def fills(*rows):
    """FILL rows from (account, instrument, side, qty, price) tuples."""
    out = ORDER_EVENT.empty(len(rows))
    for k, (a, i, side, qty, price) in enumerate(rows):
        out[k]["kind"] = EventKind.FILL
        out[k]["account"] = a
        out[k]["instrument_id"] = i
        out[k]["side"] = side
        out[k]["qty"] = qty
        out[k]["price"] = price
    return out


def test_buys_average_and_a_sale_realizes_against_the_average():
    pf = Portfolio(2, 3)
    pf.deposit(0, 10_000 * P)
    pf.apply_fills(fills((0, 1, BUY, 100, 10 * P), (0, 1, BUY, 100, 12 * P)))
    assert pf.position[0, 1] == 200 and pf.cost[0, 1] == 2_200 * P
    assert pf.cash[0] == 7_800 * P
    pf.apply_fills(fills((0, 1, SELL, 150, 13 * P)))
    assert pf.realized[0] == 300 * P  # 150 x (13 - 11)
    assert pf.position[0, 1] == 50 and pf.cost[0, 1] == 550 * P  # the average stays 11
    assert pf.cash[0] == 9_750 * P


def test_a_flip_realizes_the_closed_part_and_opens_the_rest_at_the_fill_price():
    pf = Portfolio(1, 1)
    pf.apply_fills(fills((0, 0, BUY, 50, 11 * P), (0, 0, SELL, 150, 14 * P)))
    assert pf.realized[0] == 150 * P  # 50 x (14 - 11)
    assert pf.position[0, 0] == -100 and pf.cost[0, 0] == -1_400 * P
    assert pf.cash[0] == (-550 + 2_100) * P
    pf.apply_fills(fills((0, 0, BUY, 40, 12 * P)))  # covering 40 of the short at 12: 40 x (14 - 12)
    assert pf.realized[0] == 230 * P and pf.cost[0, 0] == -840 * P and pf.position[0, 0] == -60
    pf.apply_fills(fills((0, 0, BUY, 160, 10 * P)))  # flips back long: 60 x (14 - 10) realized
    assert pf.realized[0] == 470 * P and pf.position[0, 0] == 100 and pf.cost[0, 0] == 1_000 * P


def test_short_sale_proceeds_go_to_cash_and_closing_to_flat_leaves_no_cost():
    pf = Portfolio(1, 1)
    pf.apply_fills(fills((0, 0, SHORT, 3, 10 * P)))
    assert pf.cash[0] == 30 * P and pf.position[0, 0] == -3 and pf.cost[0, 0] == -30 * P
    pf.apply_fills(fills((0, 0, BUY, 1, 7 * P), (0, 0, BUY, 2, 7 * P)))
    assert pf.position[0, 0] == 0 and pf.cost[0, 0] == 0 and pf.realized[0] == 9 * P and pf.cash[0] == 9 * P


def test_rounding_of_the_closed_cost_stays_in_the_position():
    pf = Portfolio(1, 1)
    pf.apply_fills(fills((0, 0, BUY, 1, 1), (0, 0, BUY, 2, 1), (0, 0, BUY, 1, 2)))  # 4 shares cost 5
    pf.apply_fills(fills((0, 0, SELL, 1, 3)))  # closed cost floor(5 / 4) = 1
    assert pf.realized[0] == 2 and pf.cost[0, 0] == 4
    pf.apply_fills(fills((0, 0, SELL, 3, 3)))
    assert pf.realized[0] == 2 + 9 - 4 and pf.cost[0, 0] == 0


def test_other_rows_are_ignored_and_out_of_range_fills_are_refused_before_anything_changes():
    pf = Portfolio(2, 2)
    rows = fills((0, 0, BUY, 10, P), (1, 5, BUY, 10, P))
    rows[0]["kind"] = EventKind.ACK
    with pytest.raises(ValueError, match="fill row 1: account 1 or instrument 5 outside"):
        pf.apply_fills(rows)
    rows[1]["instrument_id"] = 1
    assert pf.apply_fills(rows) == 1
    assert pf.position[0, 0] == 0 and pf.position[1, 1] == 10 and pf.fills_applied[0] == 1


def test_account_figures_at_marks_reg_t_and_maintenance():
    pf = Portfolio(1, 3)
    pf.margin[0] = True
    pf.deposit(0, 50_000 * P)
    pf.apply_fills(fills((0, 0, BUY, 1_000, 40 * P), (0, 1, SHORT, 1_000, 20 * P), (0, 2, SHORT, 100, 4 * P)))
    pf.set_marks([0, 1, 2], [50 * P, 25 * P, 3 * P])
    acct = pf.account(0)
    cash = (50_000 - 40_000 + 20_000 + 400) * P
    assert acct["cash"] == cash
    assert acct["long_value"] == 50_000 * P and acct["short_value"] == 25_300 * P
    assert acct["equity"] == cash + 50_000 * P - 25_300 * P
    assert acct["unrealized"] == 10_000 * P - 5_000 * P + 100 * P
    # 25% of 50,000; short at $25: max(30% of 25,000, $5 x 1,000); short at $3 (< $5): max($2.50 x 100, 100%)
    assert acct["maintenance"] == (12_500 + 7_500 + 300) * P
    assert acct["initial"] == (50_000 + 25_300) * P // 2
    e = acct["equity"]
    assert acct["buying_power"] == min(2 * (e - acct["initial"]), 4 * (e - acct["maintenance"]))
    assert acct["margin_excess"] == e - acct["maintenance"]


def test_cash_account_buying_power_is_settled_cash_and_unknown_marks_value_at_cost():
    pf = Portfolio(1, 2)
    pf.deposit(0, 1_000 * P)
    pf.apply_fills(fills((0, 0, BUY, 10, 30 * P)))
    pf.unsettled[0] = 100 * P
    acct = pf.account(0)
    assert acct["buying_power"] == 600 * P  # cash 700, 100 of it unsettled
    assert acct["long_value"] == 300 * P and acct["unrealized"] == 0 and acct["equity"] == 1_000 * P
    pf.margin[0] = True  # a margin account under $2,000 equity gets no credit either
    assert pf.account(0)["buying_power"] == 600 * P
    pos = pf.positions()
    assert pos == [{"account": 0, "instrument_id": 0, "position": 10, "cost": 300 * P, "avg_price": 30 * P,
                    "mark": None, "market_value": 300 * P, "unrealized": 0}]


def test_set_marks_checks_its_input_and_the_last_price_of_an_id_wins():
    pf = Portfolio(1, 2)
    pf.set_marks(np.array([1, 1]), np.array([5, 7]))
    assert pf.mark[1] == 7 and pf.mark[0] == UNDEF_PRICE
    with pytest.raises(ValueError, match="instrument ids must be in 0..1"):
        pf.set_marks([2], [1])
    with pytest.raises(ValueError, match="2 instrument ids but 1 prices"):
        pf.set_marks([0, 1], [1])
    with pytest.raises(ValueError, match="account 3 outside"):
        pf.account(3)


def test_state_bytes_follow_account_state_not_marks():
    a, b = Portfolio(2, 2), Portfolio(2, 2)
    for pf in (a, b):
        pf.apply_fills(fills((0, 1, BUY, 5, 3 * P), (1, 1, SELL, 5, 3 * P)))
    b.set_marks([1], [9 * P])
    assert a.state_bytes() == b.state_bytes()
    b.apply_fills(fills((0, 1, SELL, 1, 3 * P)))
    assert a.state_bytes() != b.state_bytes()


def _check_invariants(pf: Portfolio, cash0: np.ndarray, marks: np.ndarray) -> None:
    # both sides of every trade are in the portfolio: positions net to zero and cash is conserved
    assert (pf.position.sum(axis=0) == 0).all()
    assert pf.cash.sum() == cash0.sum()
    for mark in marks:  # any common mark: cash + positions x mark, summed over accounts, is conserved
        assert int(pf.cash.sum()) + int((pf.position * mark).sum()) == int(cash0.sum())
    # per account: realized + unrealized equals the change of cash + positions at the marks
    pf.set_marks(np.arange(len(marks)), marks)
    for a in range(pf.accounts):
        acct = pf.account(a)
        assert acct["realized"] + acct["unrealized"] == acct["equity"] - int(cash0[a])


def test_accounting_invariants_over_thousands_of_random_trades():
    rng = np.random.default_rng(61)
    n_acct, n_inst, n = 7, 5, 5_000
    pf = Portfolio(n_acct, n_inst)
    cash0 = rng.integers(0, 10**6, n_acct) * P
    for a in range(n_acct):
        pf.deposit(a, int(cash0[a]))
    rows = []
    for _ in range(n):
        buyer, seller = rng.choice(n_acct, 2, replace=False)
        i = int(rng.integers(n_inst))
        qty = int(rng.integers(1, 1_000))
        price = int(rng.integers(1, 500 * 10**4)) * (P // 10**4)  # $0.0001 .. $500, sub-penny included
        rows += [(int(buyer), i, BUY, qty, price), (int(seller), i, SHORT if rng.random() < 0.3 else SELL, qty, price)]
    ev = fills(*rows)
    for start in range(0, len(ev), 998):  # batches of whole trades (both sides), checked after each
        pf.apply_fills(ev[start:start + 998])
        marks = rng.integers(1, 500, n_inst) * P
        _check_invariants(pf, cash0, marks)
    assert pf.fills_applied[0] == 2 * n


def test_invariants_over_the_matching_kernels_fills():
    rng = np.random.default_rng(62)
    n_acct, n_inst = 5, 3
    me = MatchingEngine(instruments=n_inst)
    pf = Portfolio(n_acct, n_inst)
    cash0 = np.full(n_acct, 10**6 * P, dtype=np.int64)
    pf.cash[:] = cash0
    rows = []
    for k in range(20_000):
        side = int(rng.integers(1, 4))
        market = rng.random() < 0.1
        rows.append({"kind": CommandKind.NEW, "order_id": k + 1, "account": int(rng.integers(n_acct)),
                     "instrument_id": int(rng.integers(n_inst)), "side": side,
                     "order_type": OrderType.MARKET if market else OrderType.LIMIT, "tif": TimeInForce.DAY,
                     "qty": int(rng.integers(1, 500)),
                     "price": UNDEF_PRICE if market else int(rng.integers(95, 106)) * P, "ts": k})
    events = me.submit(commands(*rows))
    n_fills = int((events["kind"] == EventKind.FILL).sum())
    assert n_fills > 5_000  # the stream trades a lot
    assert pf.apply_fills(events) == n_fills
    _check_invariants(pf, cash0, rng.integers(90, 110, n_inst) * P)
