"""`feedhandler backtest`: known answers on a capture written from ITCH bytes (sweeps at the feed's prices,
consumed liquidity, the queue behind displayed size, the book an order sees at its timestamp, stops on
prints, halts, every reject reason the file can cause, cancels, expiries, fees, P&L that conserves
value), the book at T against `feedhandler book --at` on a generated day, bad input as one line, the
write-ahead log, and the CLI on captures/nasdaq-sample.pcap with the examples."""
from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from captures.generator import generate
from captures.pcap_writer import write_moldudp64_pcap
from feedhandler.backtest import BacktestError, backtest, parse_ts, read_accounts, read_orders, recover_engine
from feedhandler.cli import main
from parsers import itch50

ROOT = Path(__file__).resolve().parents[2]
MIDNIGHT = 1_710_475_200_000_000_000  # 2024-03-15 00:00 EDT in epoch ns
T0 = 10 * 3600 * 10**9  # 10:00:00, ns since midnight
MS = 1_000_000


def at(ms: float) -> int:
    """Epoch ns of 10:00:00 + ``ms`` milliseconds on the session date."""
    return MIDNIGHT + T0 + int(ms * MS)


class Itch:
    """ITCH 5.0 messages in time order, written as a MoldUDP64 pcap."""

    def __init__(self) -> None:
        self.msgs: list[tuple[int, bytes]] = []
        self.match = 0

    def put(self, code: bytes, ms: float, **fields) -> None:
        ts = T0 + int(ms * MS) if ms >= 0 else int(-ms)  # negative: ns since midnight given directly
        self.msgs.append((ts, itch50.encode(code, timestamp=ts, **fields)))

    def directory(self, locate: int, stock: bytes, tier: bytes = b"1") -> None:
        self.put(b"R", -3 * 3600 * 10**9, stock_locate=locate, stock=stock, round_lot_size=100, luld_tier=tier)

    def add(self, ms, ref, side, shares, cents, locate=1, stock=b"AAA") -> None:
        self.put(b"A", ms, stock_locate=locate, order_ref=ref, side=side, shares=shares, stock=stock,
                 price=cents * 100)

    def execute(self, ms, ref, shares, locate=1) -> None:
        self.match += 1
        self.put(b"E", ms, stock_locate=locate, order_ref=ref, executed_shares=shares, match_number=self.match)

    def trade(self, ms, cents, shares, locate=1, stock=b"AAA") -> None:
        self.match += 1
        self.put(b"P", ms, stock_locate=locate, side=b"B", shares=shares, stock=stock, price=cents * 100,
                 match_number=self.match)

    def halt(self, ms, state: bytes, locate=2, stock=b"BBB") -> None:
        self.put(b"H", ms, stock_locate=locate, stock=stock, trading_state=state, reason=b"T1  ")

    def write(self, path) -> Path:
        buf = np.frombuffer(b"".join(m for _, m in self.msgs), dtype=np.uint8)
        lengths = np.array([len(m) for _, m in self.msgs], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        ts_recv = np.array([MIDNIGHT + t + 1_000 for t, _ in self.msgs], dtype=np.int64)
        write_moldudp64_pcap(path, buf, offsets, lengths, ts_recv)
        return Path(path)


def order(ms, account, coid, side, typ, qty, symbol="AAA", **extra) -> dict:
    return {"ts": at(ms), "account": account, "client_order_id": coid, "symbol": symbol, "side": side, "type": typ,
            "qty": qty, **extra}


def cancel(ms, account, coid) -> dict:
    return {"ts": at(ms), "action": "cancel", "account": account, "client_order_id": coid}


ACCOUNTS = """
[accounts.alice]
cash = 100000
margin = true

[accounts.bob]
cash = "100000.00"
margin = true
taker_fee_per_share = "0.003"
maker_fee_per_share = "-0.002"

[accounts.carol]
cash = 50000

[accounts.dave]
cash = 100000
[accounts.erin]
cash = 100000
[accounts.frank]
cash = 100000
[accounts.frank.limits]
max_order_qty = 1000
"""


def scenario_capture(path) -> Path:
    f = Itch()
    f.directory(1, b"AAA", b"1")
    f.directory(2, b"BBB", b"2")
    f.add(1, 1, b"S", 300, 1005)
    f.add(1, 2, b"S", 200, 1006)
    f.add(1, 3, b"S", 500, 1008)
    f.add(1, 4, b"B", 400, 1000)
    f.add(1, 5, b"B", 100, 999)
    f.add(1, 20, b"B", 100, 2000, locate=2, stock=b"BBB")
    f.add(1, 21, b"S", 100, 2010, locate=2, stock=b"BBB")
    f.add(3, 6, b"S", 100, 1005)  # shown after alice took the level: only these 100 are new
    f.execute(6, 4, 300)  # the 400 ahead of carol's bid trade away ...
    f.execute(7, 4, 100)
    f.add(8, 7, b"B", 200, 1000)  # ... a bid joins behind her ...
    f.execute(9, 7, 150)  # ... and the next execution at 10.00 is hers
    f.add(10, 8, b"S", 100, 1004)  # stamped exactly when frank's order is
    f.trade(12, 1009, 100)  # a print under dave's stop
    f.trade(13, 1010, 100)  # a print at it: the stop triggers
    f.halt(16, b"H")
    f.halt(18, b"T")
    f.add(30, 9, b"B", 100, 990)  # the last message
    return f.write(path)


SCENARIO = [
    order(2, "alice", "a1", "buy", "market", 400),
    order(4, "bob", "b1", "buy", "limit", 500, price="10.06", tif="IOC"),
    order(5, "carol", "c1", "buy", "limit", 100, price="10.00"),
    order(10 - 1e-6, "erin", "e1", "buy", "limit", 100, price="10.04", tif="IOC"),  # 1 ns before ref 8
    order(10, "frank", "f1", "buy", "limit", 100, price="10.04", tif="IOC"),
    order(11, "dave", "d1", "buy", "stop", 100, stop_price="10.10"),
    order(14, "erin", "e2", "buy", "limit", 100, price="9.98"),
    cancel(15, "erin", "e2"),
    order(17, "bob", "b2", "buy", "limit", 100, symbol="BBB", price="20.10"),  # halted
    order(19, "bob", "b3", "buy", "limit", 100, symbol="BBB", price="20.10"),  # resumed
    order(20, "alice", "r1", "buy", "limit", 100, symbol="ZZZ", price="1.00"),
    order(20, "alice", "r2", "buy", "limit", 0, price="10.00"),
    order(20, "alice", "r3", "buy", "limit", 100, price="0"),
    order(20, "erin", "r4", "sell_short", "market", 100),
    order(20, "mallory", "r5", "buy", "market", 100),
    order(20, "alice", "a1", "buy", "market", 100),
    order(20, "alice", "r6", "buy", "limit", 100, price="12.00"),
    order(20, "frank", "r7", "buy", "limit", 1001, price="10.00"),
    cancel(20, "alice", "nope"),
    cancel(20, "mallory", "r5"),
    {**order(0, "alice", "r8", "buy", "market", 100), "ts": "2024-03-15T08:00:00-04:00"},
    order(21, "alice", "a2", "sell", "market", 100),
    order(22, "carol", "c2", "buy", "limit", 100, price="9.90"),  # DAY: expires
    order(23, "bob", "b4", "sell", "limit", 100, price="10.50", tif="GTC"),  # GTC: stays open
]


def write_lines(path, lines) -> Path:
    path = Path(path)
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def jsonl(path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("backtest")
    capture = scenario_capture(root / "day.pcap")
    orders = write_lines(root / "orders.jsonl", SCENARIO)
    accounts = root / "accounts.toml"
    accounts.write_text(ACCOUNTS)
    result = backtest(capture, orders, root / "out", accounts=accounts, wal_dir=root / "wal")
    return root, result


def brief(fills):
    return [(f["client_order_id"], f["price"], f["qty"], f["leaves"], f["liquidity"]) for f in fills]


def test_fills_are_at_the_feeds_prices_queue_and_consumed_liquidity_respected(scenario):
    root, _ = scenario
    fills = jsonl(root / "out" / "fills.jsonl")
    assert brief(fills) == [
        ("a1", "10.05", 300, 100, "taker"), ("a1", "10.06", 100, 0, "taker"),  # the asks at 10:00:00.002
        ("b1", "10.05", 100, 400, "taker"), ("b1", "10.06", 100, 300, "taker"),  # only what alice left
        ("c1", "10.00", 100, 0, "maker"),  # after the 400 ahead of her traded, at the next execution
        ("f1", "10.04", 100, 0, "taker"),  # sees the ask stamped at its own ts
        ("d1", "10.08", 100, 0, "taker"),  # stop triggered by the 10.10 print; 10.05/10.06 used up
        ("b3", "20.10", 100, 0, "taker"),
        ("a2", "10.00", 50, 50, "taker"), ("a2", "9.99", 50, 0, "taker"),  # 50 left at 10.00 after carol
    ]
    by_coid = {f["client_order_id"]: f for f in fills}
    assert by_coid["c1"]["ts"] == at(9)  # not at 6 or 7 ms: 400 shares were ahead
    assert by_coid["d1"]["ts"] == at(13)  # the print at 10.09 (12 ms) did not trigger it
    assert by_coid["a1"]["symbol"] == "AAA" and by_coid["a1"]["side"] == "buy" and by_coid["a1"]["account"] == "alice"
    assert by_coid["b1"]["fee"] == "0.30" and by_coid["a1"]["fee"] == "0.00"  # bob's taker fee, 0.003/share


def test_events_cover_acks_cancels_triggers_and_expiries(scenario):
    root, result = scenario
    events = jsonl(root / "out" / "events.jsonl")
    kinds = {}
    for e in events:
        kinds.setdefault(e["client_order_id"], []).append(e["event"])
    assert kinds["e1"] == ["ack", "cancelled"]  # 1 ns before the ask at 10.04: nothing to take
    assert kinds["b1"] == ["ack", "fill", "fill", "cancelled"]
    assert kinds["d1"] == ["ack", "triggered", "fill"]
    assert kinds["e2"] == ["ack", "cancelled"]
    assert kinds["c2"] == ["ack", "expired"]
    assert kinds["b4"] == ["ack"]  # GTC: open at the end
    reasons = {e["client_order_id"]: e["reason"] for e in events if e["event"] in ("cancelled", "expired")}
    assert reasons == {"e1": "ioc_remainder", "b1": "ioc_remainder", "e2": "user_cancel", "c2": "session_end"}
    cancelled = [e for e in events if e["client_order_id"] == "e2" and e["event"] == "cancelled"][0]
    assert cancelled["ts"] == at(15) and cancelled["qty"] == 100
    s = result.summary
    assert s["open_orders"] == 1 and s["counts"]["expired"] == 1 and s["counts"]["fill"] == 10


def test_rejects_carry_reasons_and_line_numbers(scenario):
    root, result = scenario
    rejects = jsonl(root / "out" / "rejects.jsonl")
    got = {(r["client_order_id"], r["action"]): r["reason"] for r in rejects}
    assert got == {
        ("b2", "new"): "halted", ("r1", "new"): "unknown_symbol", ("r2", "new"): "bad_qty",
        ("r3", "new"): "bad_price", ("r4", "new"): "short_not_allowed", ("r5", "new"): "unknown_account",
        ("a1", "new"): "duplicate_client_order_id", ("r6", "new"): "price_band", ("r7", "new"): "size_limit",
        ("nope", "cancel"): "unknown_order", ("r5", "cancel"): "unknown_account",
        ("r8", "new"): "outside_market_hours"}
    lines = {(r["client_order_id"], r["action"]): r["line"] for r in rejects}
    file_line = {(o["client_order_id"], o.get("action", "new")): i + 1 for i, o in enumerate(SCENARIO)}
    for key in (("b2", "new"), ("a1", "new"), ("r5", "cancel")):
        assert lines[key] == file_line[key]
    dup = [r for r in rejects if r["client_order_id"] == "a1"][0]
    assert dup["ts"] == at(20) and dup["qty"] == 100 and dup["type"] == "market" and dup["account"] == "alice"
    assert result.summary["rejects_by_reason"]["halted"] == 1 and result.summary["counts"]["reject"] == 12


def test_positions_and_pnl_follow_from_the_fills(scenario):
    root, result = scenario
    fills = jsonl(root / "out" / "fills.jsonl")
    positions = json.loads((root / "out" / "positions.json").read_text())
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    start = {"alice": 100_000, "bob": 100_000, "carol": 50_000, "dave": 100_000, "erin": 100_000, "frank": 100_000}
    flow = {a: Decimal(0) for a in start}
    shares: dict[tuple[str, str], int] = {}
    fees = {a: Decimal(0) for a in start}
    for f in fills:
        signed = f["qty"] if f["side"] == "buy" else -f["qty"]
        flow[f["account"]] -= signed * Decimal(f["price"])
        shares[(f["account"], f["symbol"])] = shares.get((f["account"], f["symbol"]), 0) + signed
        fees[f["account"]] += Decimal(f["fee"])
    held = {(p["account"], p["symbol"]): p["position"] for p in positions}
    assert held == {k: v for k, v in shares.items() if v}
    assert held == {("alice", "AAA"): 300, ("bob", "AAA"): 200, ("bob", "BBB"): 100, ("carol", "AAA"): 100,
                    ("dave", "AAA"): 100, ("frank", "AAA"): 100}
    marks = {p["symbol"]: Decimal(p["mark"]) for p in positions}
    assert marks == {"AAA": Decimal("10.02"), "BBB": Decimal("20.05")}  # mids of the feed's books at the end
    for name, a in summary["accounts"].items():
        value = sum(Decimal(q) * marks[s] for (acct, s), q in shares.items() if acct == name)
        cash = start[name] + flow[name]
        assert Decimal(a["cash"]) == cash, name  # cash moves by exactly the fills
        assert Decimal(a["equity"]) == cash + value, name
        # cash + positions conserve value: what was gained is realized + unrealized (fees aside)
        assert Decimal(a["realized"]) + Decimal(a["unrealized"]) == cash + value - start[name], name
        assert Decimal(a["fees"]) == fees[name]
        assert Decimal(a["net_pnl"]) == Decimal(a["realized"]) + Decimal(a["unrealized"]) - fees[name]
    # alice bought 300 @ 10.05 + 100 @ 10.06 (average 10.0525) and sold 50 @ 10.00 + 50 @ 9.99
    assert Decimal(summary["accounts"]["alice"]["realized"]) == Decimal("-5.75")
    assert Decimal(summary["accounts"]["bob"]["fees"]) == Decimal("0.90")  # 300 taker shares x 0.003
    total = summary["total"]
    for k in ("cash", "realized", "unrealized", "fees", "net_pnl"):
        assert Decimal(total[k]) == sum(Decimal(a[k]) for a in summary["accounts"].values())


def test_mark_last_values_positions_at_the_last_print(scenario, tmp_path):
    root, _ = scenario
    result = backtest(root / "day.pcap", root / "orders.jsonl", tmp_path / "out", accounts=root / "accounts.toml",
                      mark="last")
    positions = json.loads((tmp_path / "out" / "positions.json").read_text())
    assert {p["symbol"]: p["mark"] for p in positions} == {"AAA": "10.10", "BBB": "20.05"}  # BBB: no print, the mid
    assert result.summary["mark"] == "last"


def test_the_write_ahead_log_recovers_the_same_state(scenario):
    root, result = scenario
    engine = recover_engine(root / "out" / "summary.json", root / "orders.jsonl", root / "wal",
                            accounts=root / "accounts.toml")
    assert engine.state_hash() == result.summary["engine"]["state_hash"]
    assert engine.portfolio.position.sum() == 900


def test_orders_at_equal_times_go_in_file_order(tmp_path):
    f = Itch()
    f.directory(1, b"AAA")
    f.add(1, 1, b"S", 100, 1005)
    f.add(1, 2, b"B", 100, 1000)  # a two-sided book: market orders need a mid to be valued at
    f.add(5, 3, b"B", 100, 999)
    capture = f.write(tmp_path / "day.pcap")
    orders = write_lines(tmp_path / "o.jsonl", [
        order(2, "bob", "second", "buy", "market", 100),
        order(2, "alice", "first", "buy", "market", 100),
        order(1, "carol", "earliest", "buy", "limit", 100, price="10.00"),  # earlier ts: goes first though last
    ])
    result = backtest(capture, orders, tmp_path / "out")
    assert result.summary["engine"]["submits"] == 1  # no feed message between them: one batch
    fills = jsonl(tmp_path / "out" / "fills.jsonl")
    assert [(f["client_order_id"], f["price"], f["qty"]) for f in fills] == [("second", "10.05", 100)]
    events = jsonl(tmp_path / "out" / "events.jsonl")
    assert [e["client_order_id"] for e in events if e["event"] == "ack"] == ["earliest", "second", "first"]
    assert [e for e in events if e["client_order_id"] == "first"][-1]["reason"] == "no_liquidity"


def test_orders_before_the_stock_directory_find_no_symbol(tmp_path):
    f = Itch()
    f.directory(1, b"AAA")  # at 03:00
    f.add(1, 1, b"S", 100, 1005)
    capture = f.write(tmp_path / "day.pcap")
    early = {**order(0, "a", "early", "buy", "limit", 100, price="10.05"), "ts": "2024-03-15T02:00:00-04:00"}
    orders = write_lines(tmp_path / "o.jsonl", [early, order(2, "a", "later", "buy", "limit", 100, price="10.05")])
    accounts = tmp_path / "a.toml"
    accounts.write_text("[risk]\nmarket_hours = false\n[accounts.a]\ncash = 10000\n")
    result = backtest(capture, orders, tmp_path / "out", accounts=accounts)
    # the engine starts at the first order, knowing the symbols listed by then: none
    assert [r["reason"] for r in jsonl(tmp_path / "out" / "rejects.jsonl")] == ["unknown_symbol"] * 2
    assert result.summary["engine"]["symbols"] == {"-": 0}


# -- the book an order sees, against `feedhandler book --at` --------------------------------------------


@pytest.fixture(scope="module")
def generated_day(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    path = root / "day.pcap"
    generate(messages=30_000, symbols=12, seed=11).write(path, "pcap")
    return path


def book_at(capsys, capture, symbol, ts):
    iso = np.datetime_as_string(np.datetime64(ts, "ns"), unit="ns") + "Z"
    assert main(["book", str(capture), "--symbol", symbol, "--at", iso, "--depth", "3", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_an_order_at_t_sweeps_exactly_the_book_at_t(generated_day, tmp_path, capsys):
    from feedhandler.replay import DecodedCapture

    source = DecodedCapture(generated_day)
    events = np.concatenate([b.events for b in source.batches()])
    names = source.normalizer.symbols
    counts = np.bincount(events["instrument_id"])
    busiest = [int(i) for i in np.argsort(counts)[::-1][:3]]
    cases = []
    for n, inst in enumerate(busiest):
        mine = events[events["instrument_id"] == inst]
        open_ = mine[mine["ts_event"] > at(-1800_000 + 120_000)]  # after 9:32
        ts = int(open_["ts_event"][len(open_) // 3 * (n + 1) // 2])  # a time one of its messages carries
        side = "buy" if n % 2 == 0 else "sell"
        book = book_at(capsys, generated_day, names[inst], ts)
        levels = book["asks"] if side == "buy" else book["bids"]
        assert len(levels) == 3
        cases.append((names[inst], ts, side, levels))
    lines = [order(0, f"acct{n}", f"o{n}", side, "limit", sum(lv[1] for lv in levels), symbol=sym,
                   price=str(levels[-1][0]), tif="IOC") | {"ts": ts}
             for n, (sym, ts, side, levels) in enumerate(cases)]
    orders = write_lines(tmp_path / "o.jsonl", lines)
    accounts = tmp_path / "a.toml"
    accounts.write_text("[risk]\nluld = false\n" + "".join(f"[accounts.acct{n}]\ncash = 100000000\nmargin = true\n"
                                                          for n in range(len(cases))))
    backtest(generated_day, orders, tmp_path / "out", accounts=accounts)
    fills = jsonl(tmp_path / "out" / "fills.jsonl")
    for n, (sym, ts, side, levels) in enumerate(cases):
        mine = [(Decimal(f["price"]), f["qty"]) for f in fills if f["client_order_id"] == f"o{n}"]
        assert mine == [(Decimal(str(p)), size) for p, size, _ in levels], (sym, side)


# -- bad input ----------------------------------------------------------------------------------------


BAD_LINES = [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"ts": 1, "account": "a", "client_order_id": "x", "symbol": "AAA", "side": "buy", "type": "market"}',
     "missing qty"),
    ('{"ts": "10:30", "account": "a", "client_order_id": "x", "symbol": "AAA", "side": "buy", "type": "market", '
     '"qty": 1}', "ts:"),
    ('{"ts": "2024-03-15T10:30:00", "account": "a", "client_order_id": "x", "symbol": "AAA", "side": "buy", '
     '"type": "market", "qty": 1}', "offset"),
    ('{"ts": 1, "account": "a", "client_order_id": "x", "symbol": "AAA", "side": "long", "type": "market", '
     '"qty": 1}', "side must be one of"),
    ('{"ts": 1, "account": "a", "client_order_id": "x", "symbol": "AAA", "side": "buy", "type": "limit", '
     '"qty": 1.5, "price": 1}', "qty must be a whole number"),
    ('{"ts": 1, "account": "a", "client_order_id": "x", "symbol": "AAA", "side": "buy", "type": "limit", '
     '"qty": 1, "price": "abc"}', "price"),
    ('{"ts": 1, "account": "a", "client_order_id": "x", "symbol": "AAA", "side": "buy", "type": "market", '
     '"qty": 1, "price": "10"}', "a market order has no price"),
    ('{"ts": 1, "account": "a", "client_order_id": "x", "symbol": "AAA", "side": "buy", "type": "market", '
     '"qty": 1, "stop": "10"}', "unknown field for an order: stop"),
    ('{"ts": 1, "action": "delete", "account": "a", "client_order_id": "x"}', "action must be one of"),
    ('{"ts": 1, "action": "modify", "account": "a", "client_order_id": "x"}', "needs price, qty or both"),
    ('{"ts": 1, "action": "cancel", "account": "a", "client_order_id": "x", "qty": 5}', "unknown field for a cancel"),
    ('{"ts": 1, "account": "", "client_order_id": "x", "symbol": "AAA", "side": "buy", "type": "market", "qty": 1}',
     "account must be a non-empty string"),
]


@pytest.mark.parametrize("text, words", BAD_LINES)
def test_a_bad_order_line_is_one_line_naming_its_number(tmp_path, capsys, text, words):
    good = json.dumps(order(1, "a", "ok", "buy", "market", 1))
    orders = write_lines(tmp_path / "o.jsonl", [good, "", text])
    with pytest.raises(BacktestError) as err:
        read_orders(orders)
    assert f"o.jsonl line 3: " in str(err.value) and words in str(err.value)
    code = main(["backtest", str(ROOT / "captures" / "nasdaq-sample.pcap"), "--orders", str(orders),
                 "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert captured.err.strip().splitlines() == [f"feedhandler: error: {err.value}"]


@pytest.mark.parametrize("text, words", [
    ("[accounts.a]\nmargin = true\n", "cash is required"),
    ("[accounts.a]\ncash = 'lots'\n", "not an amount in dollars"),
    ("[accounts.a]\ncash = 1\nleverage = 4\n", "unknown key leverage"),
    ("[accounts.a]\ncash = 1\n[accounts.a.limits]\nmax_qty = 4\n", "unknown limit"),
    ("[accounts.a]\ncash = 1\nmargin = 'yes'\n", "must be true or false"),
    ("[risk]\nday_trading = 'sometimes'\n[accounts.a]\ncash = 1\n", "unknown day trading policy"),
    ("[accounts.a\ncash = 1\n", "not TOML"),
    ("[risk]\nluld = false\n", "no [accounts.NAME] table"),
])
def test_a_bad_accounts_file_is_one_line(tmp_path, text, words):
    path = tmp_path / "a.toml"
    path.write_text(text)
    with pytest.raises(BacktestError) as err:
        read_accounts(path, ["a"])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_accounts_file_values(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("[risk]\nmarket_hours = false\nday_trading = 'legacy'\n"
                    "[accounts.a]\ncash = '2500.50'\nmargin = true\nsuspended = true\ntaker_fee_per_share = 0.003\n"
                    "[accounts.a.limits]\nmax_order_qty = 500\nmax_order_notional = 10000\n")
    cfg = read_accounts(path, [])
    a = cfg.accounts["a"]
    assert a.cash == 2_500_500_000_000 and a.margin and a.suspended
    assert a.limits.max_order_qty == 500 and a.limits.max_order_notional == 10_000 * 10**9
    assert cfg.taker_fee["a"] == 3_000_000 and cfg.maker_fee["a"] == 0
    assert not cfg.market_hours and cfg.luld and cfg.day_trading == "legacy"
    default = read_accounts(None, ["x", "y"])
    assert list(default.accounts) == ["x", "y"]
    assert default.accounts["x"].cash == 10**15 and not default.accounts["x"].margin


def test_times_in_both_forms():
    assert parse_ts(at(0)) == at(0) == parse_ts(str(at(0)))
    assert parse_ts("2024-03-15T10:00:00-04:00") == at(0)
    assert parse_ts("2024-03-15T14:00:00.000000001Z") == at(0) + 1
    assert parse_ts("2024-03-15T10:00:00.5-0400") == at(500)
    for bad in ("2024-03-15T10:00:00", True, -1, 1.5, "2024-02-30T10:00:00Z"):
        with pytest.raises(ValueError):
            parse_ts(bad)


def test_the_wal_directory_must_be_empty_and_other_setup_errors(tmp_path, capsys):
    sample = str(ROOT / "captures" / "nasdaq-sample.pcap")
    orders = write_lines(tmp_path / "o.jsonl", [order(1, "a", "x", "buy", "market", 1)])
    (tmp_path / "wal").mkdir()
    (tmp_path / "wal" / "junk").write_text("x")
    for argv, words in (
            ([sample, "--orders", str(orders), "--out", str(tmp_path / "o1"), "--wal", str(tmp_path / "wal")],
             "is not empty"),
            ([sample, "--orders", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o2")], "no orders file"),
            ([sample, "--orders", str(orders), "--accounts", str(tmp_path / "none.toml"),
              "--out", str(tmp_path / "o3")], "no accounts file"),
            ([str(tmp_path / "none.pcap"), "--orders", str(orders), "--out", str(tmp_path / "o4")], "none.pcap")):
        assert main(["backtest", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


# -- the CLI on the sample capture with the examples ------------------------------------------------------


def test_cli_on_the_sample_with_the_examples(tmp_path, capsys):
    out = tmp_path / "bt"
    argv = ["backtest", str(ROOT / "captures" / "nasdaq-sample.pcap"),
            "--orders", str(ROOT / "examples" / "orders.jsonl"), "--accounts", str(ROOT / "examples" / "accounts.toml"),
            "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "net P&L" in text and "total" in text and f"under {out}/" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["messages"] == 16_000 and summary["date"] == "2024-03-15"
    assert summary["counts"]["fill"] > 0 and summary["counts"]["reject"] >= 1 and summary["counts"]["cancelled"] >= 1
    fills = jsonl(out / "fills.jsonl")
    assert all(f["liquidity"] in ("maker", "taker") and Decimal(f["price"]) > 0 for f in fills)
    rejects = jsonl(out / "rejects.jsonl")
    assert rejects and all(r["reason"] for r in rejects)
    assert any(e["event"] == "cancelled" and e["reason"] == "user_cancel" for e in jsonl(out / "events.jsonl"))
    assert main(argv[:-1] + [str(tmp_path / "bt2"), "--json", "--mark", "last"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["counts"] == summary["counts"] and again["mark"] == "last"
    assert jsonl(tmp_path / "bt2" / "fills.jsonl") == fills  # the mark changes valuation, never fills


def test_the_readme_five_line_backtest_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Backtest"):]
    code = section[section.index("```python\n") + 10:section.index("```\n", section.index("```python\n") + 10)]
    assert len(code.strip().splitlines()) == 5
    (tmp_path / "captures").symlink_to(ROOT / "captures")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert "alice" in capsys.readouterr().out
    fills = jsonl(tmp_path / "out" / "backtest" / "fills.jsonl")
    assert {f["client_order_id"] for f in fills} == {f"crs-{h}" for h in range(10, 16)}
    assert all(f["liquidity"] == "taker" for f in fills)


def test_small_feed_batches_give_the_same_answers(scenario, tmp_path, monkeypatch):
    """Orders whose time falls at a batch's end wait for the next batch (it may hold messages stamped at
    or before them): cut into batches of 3 messages, the scenario trades exactly the same."""
    import feedhandler.replay

    root, result = scenario
    monkeypatch.setattr(feedhandler.replay, "BATCH_MESSAGES", 3)
    assert sum(1 for _ in feedhandler.replay.DecodedCapture(root / "day.pcap").batches()) == 8
    small = backtest(root / "day.pcap", root / "orders.jsonl", tmp_path / "out", accounts=root / "accounts.toml")
    assert jsonl(tmp_path / "out" / "events.jsonl") == jsonl(root / "out" / "events.jsonl")
    assert small.summary["accounts"] == result.summary["accounts"]
