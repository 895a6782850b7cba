"""The synthetic ITCH 5.0 day: determinism, content, and the book rules, checked from the bytes.

The invariants are checked by ``Replay``, a deliberately plain Python order book fed with the messages
decoded by ``parsers.itch50.decode_type``: dicts of orders and of price levels holding FIFO lists of
references, nothing shared with the generator's kernel.
"""
from __future__ import annotations

import datetime as dt
import struct
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from captures.generator import GeneratedSession, generate
from captures.reader import open_capture
from parsers import itch50

N_MESSAGES = 30_000
N_SYMBOLS = 60
SEED = 20240315
NS_HOUR = 3_600_000_000_000
ALL_TYPES = set(itch50.TYPE_CODES.decode())
ORDER_TYPES = set("AFECXDUP")


@pytest.fixture(scope="module")
def session() -> GeneratedSession:
    return generate(N_MESSAGES, N_SYMBOLS, SEED)


@pytest.fixture(scope="module")
def messages(session) -> list[tuple[str, dict]]:
    return decode_all(session)


def decode_all(sess: GeneratedSession) -> list[tuple[str, dict]]:
    """Every message as (type letter, {field: value}), in order, decoded type by type from the bytes."""
    types = sess.buf[sess.offsets]  # the type byte of each message, read from the buffer
    out: list = [None] * len(sess)
    for code in np.unique(types):
        idx = np.flatnonzero(types == code)
        letter = bytes([code])
        rows = itch50.decode_type(sess.buf, sess.offsets[idx], letter)
        names = rows.dtype.names
        for i, row in zip(idx.tolist(), rows.tolist()):
            out[i] = (letter.decode(), dict(zip(names, row)))
    return out


class Replay:
    """A plain order book replay that asserts the generator's rules after every message."""

    def __init__(self) -> None:
        self.orders: dict[int, list] = {}  # ref -> [locate, side, price, shares]
        self.levels: dict[tuple[int, bytes], dict[int, list[int]]] = defaultdict(dict)  # price -> FIFO refs
        self.halted: set[int] = set()  # H state H or Q
        self.op_halted: set[int] = set()  # h action H
        self.not_released: set[int] = set()  # IPO before it is released for quotation
        self.last_ts = -1
        self.last_ref = 0
        self.last_match = 0
        self.matches: dict[int, int] = {}  # match number -> locate
        self.broken: set[int] = set()
        self.executions = 0

    # book primitives
    def best(self, locate: int, side: bytes):
        prices = self.levels[(locate, side)]
        if not prices:
            return None
        return max(prices) if side == b"B" else min(prices)

    def add(self, locate, ref, side, price, shares):
        assert ref > self.last_ref, f"order ref {ref} not above {self.last_ref}"
        assert ref not in self.orders
        assert shares > 0 and price > 0 and price % 100 == 0, (shares, price)
        assert locate not in self.not_released, "order for an IPO not yet released"
        self.last_ref = ref
        self.orders[ref] = [locate, side, price, shares]
        self.levels[(locate, side)].setdefault(price, []).append(ref)

    def remove_shares(self, ref, shares):
        assert ref in self.orders, f"unknown order ref {ref}"
        order = self.orders[ref]
        assert 0 < shares <= order[3], f"ref {ref}: {shares} shares of {order[3]}"
        order[3] -= shares
        if order[3] == 0:
            self.delete(ref)

    def delete(self, ref):
        assert ref in self.orders, f"unknown order ref {ref}"
        locate, side, price, _ = self.orders.pop(ref)
        level = self.levels[(locate, side)]
        level[price].remove(ref)
        if not level[price]:
            del level[price]

    def execute(self, ref, shares):
        assert ref in self.orders, f"execution of unknown ref {ref}"
        locate, side, price, _ = self.orders[ref]
        assert not self.trading_stopped(locate), f"execution while halted, locate {locate}"
        assert price == self.best(locate, side), "execution away from the best price"
        assert self.levels[(locate, side)][price][0] == ref, "execution out of time priority"
        self.executions += 1
        self.remove_shares(ref, shares)
        return locate

    def trading_stopped(self, locate) -> bool:
        return locate in self.halted or locate in self.op_halted or locate in self.not_released

    def new_match(self, match, locate):
        assert match > self.last_match, f"match number {match} not above {self.last_match}"
        self.last_match = match
        self.matches[match] = locate

    def check_book(self, locate):
        bid, ask = self.best(locate, b"B"), self.best(locate, b"S")
        assert bid is None or ask is None or bid < ask, f"locate {locate} crossed or locked: {bid} >= {ask}"

    # one message
    def apply(self, code: str, m: dict) -> None:
        assert m["timestamp"] >= self.last_ts, "timestamp went backwards"
        self.last_ts = m["timestamp"]
        loc = m["stock_locate"]
        if code in "AF":
            self.add(loc, m["order_ref"], m["side"], m["price"], m["shares"])
        elif code == "E":
            assert self.execute(m["order_ref"], m["executed_shares"]) == loc
            self.new_match(m["match_number"], loc)
        elif code == "C":
            price = self.orders[m["order_ref"]][2] if m["order_ref"] in self.orders else None
            assert self.execute(m["order_ref"], m["executed_shares"]) == loc
            assert m["execution_price"] == price
            self.new_match(m["match_number"], loc)
        elif code == "X":
            assert self.orders[m["order_ref"]][3] > m["cancelled_shares"], "X cancelled a whole order"
            self.remove_shares(m["order_ref"], m["cancelled_shares"])
        elif code == "D":
            assert self.orders[m["order_ref"]][0] == loc
            self.delete(m["order_ref"])
        elif code == "U":
            old = m["original_ref"]
            assert old in self.orders, f"replace of unknown ref {old}"
            locate, side, _, _ = self.orders[old]
            assert locate == loc
            self.delete(old)
            self.add(loc, m["new_ref"], side, m["price"], m["shares"])
        elif code == "P":
            assert not self.trading_stopped(loc), "non-book trade while halted"
            assert m["price"] % 100 == 0
            bid, ask = self.best(loc, b"B"), self.best(loc, b"S")
            assert (bid is None or m["price"] >= bid) and (ask is None or m["price"] <= ask)
            self.new_match(m["match_number"], loc)
        elif code == "Q":
            if m["cross_type"] == b"H":
                assert loc in self.halted, "halt cross of a trading symbol"
            else:
                assert not self.trading_stopped(loc)
            assert m["cross_price"] > 0 and m["cross_price"] % 100 == 0
            self.new_match(m["match_number"], loc)
        elif code == "B":
            assert m["match_number"] in self.matches, "broken trade of an unknown match"
            assert m["match_number"] not in self.broken, "trade broken twice"
            assert self.matches[m["match_number"]] == loc
            self.broken.add(m["match_number"])
        elif code == "H":
            if m["trading_state"] in (b"H", b"Q"):
                self.halted.add(loc)
            else:
                self.halted.discard(loc)
            if m["reason"] == b"IPO1":
                self.not_released.add(loc)
            elif m["trading_state"] == b"Q":
                self.not_released.discard(loc)
        elif code == "h":
            if m["halt_action"] == b"H":
                self.op_halted.add(loc)
            else:
                self.op_halted.discard(loc)
        if code in "AFECXDU":
            self.check_book(loc)


def replay(msgs) -> Replay:
    r = Replay()
    for code, m in msgs:
        r.apply(code, m)
    return r


# ------------------------------------------------------------------------------------- the tests
def test_exact_count_and_framing(session):
    assert len(session) == N_MESSAGES
    sizes = itch50.SIZE_BY_CODE[session.buf[session.offsets]]
    np.testing.assert_array_equal(session.lengths, sizes)
    np.testing.assert_array_equal(session.types, session.buf[session.offsets])
    np.testing.assert_array_equal(session.offsets[1:], session.offsets[:-1] + sizes[:-1])
    assert session.offsets[0] == 0 and session.buf.size == sizes.sum()


def test_deterministic_for_a_seed(session):
    again = generate(N_MESSAGES, N_SYMBOLS, SEED)
    assert again.buf.tobytes() == session.buf.tobytes()
    np.testing.assert_array_equal(again.ts_recv, session.ts_recv)
    other = generate(N_MESSAGES, N_SYMBOLS, SEED + 1)
    assert other.buf.tobytes() != session.buf.tobytes()


def test_every_type_present(session):
    assert set(session.type_counts()) == ALL_TYPES - {"W"}
    breach = generate(N_MESSAGES, N_SYMBOLS, SEED, mwcb_breach=True)
    assert set(breach.type_counts()) == ALL_TYPES


def test_no_dlcr_messages_when_dlcr_false():
    plain = generate(N_MESSAGES, N_SYMBOLS, SEED, dlcr=False)
    assert set(plain.type_counts()) == ALL_TYPES - {"W", "O"}
    assert len(plain) == N_MESSAGES
    replay(decode_all(plain))


def test_book_replay_keeps_every_rule(messages):
    r = replay(messages)
    assert r.executions > 500
    assert r.broken


def test_system_events_at_their_hours(messages):
    events = [(m["event_code"], m["timestamp"]) for code, m in messages if code == "S"]
    assert [e for e, _ in events] == [b"O", b"S", b"Q", b"M", b"E", b"C"]
    times = dict(events)
    assert 3 * NS_HOUR <= times[b"O"] < 4 * NS_HOUR
    assert times[b"S"] == 4 * NS_HOUR
    assert times[b"Q"] == 9.5 * NS_HOUR
    assert times[b"M"] == 16 * NS_HOUR
    assert times[b"E"] == 20 * NS_HOUR
    assert messages[-1][0] == "S" and messages[-1][1]["event_code"] == b"C"


def test_directory_first_and_realistic(session, messages):
    start_of_system = next(i for i, (c, m) in enumerate(messages) if c == "S" and m["event_code"] == b"S")
    directory = [m for c, m in messages[:start_of_system] if c == "R"]
    assert [m["stock_locate"] for m in directory] == list(range(1, N_SYMBOLS + 1))
    assert not any(c == "R" for c, _ in messages[start_of_system:])
    symbols = [m["stock"].rstrip() for m in directory]
    assert len(set(symbols)) == N_SYMBOLS and symbols == sorted(symbols)
    assert all(1 <= len(s) <= 4 and s.isalpha() and s.isupper() for s in symbols)
    assert [s.ljust(8) for s in symbols] == session.symbols.tolist()
    assert all(m["round_lot_size"] == 100 and m["authenticity"] == b"P" for m in directory)
    assert {m["luld_tier"] for m in directory} <= {b"1", b"2"}
    before = {c for c, _ in messages[:start_of_system]}
    assert before == {"S", "R", "H", "Y", "L", "V"}
    assert sum(m["ipo_flag"] == b"Y" for m in directory) == 1


def test_stock_field_matches_locate(session, messages):
    for code, m in messages:
        if "stock" in m and m["stock_locate"]:
            assert m["stock"] == session.symbols[m["stock_locate"] - 1]


def test_crosses_follow_their_noii(messages):
    first_q = {}
    for i, (code, m) in enumerate(messages):
        if code == "Q":
            first_q.setdefault((m["stock_locate"], m["cross_type"]), i)
    opens = {loc for loc, kind in first_q if kind == b"O"}
    closes = {loc for loc, kind in first_q if kind == b"C"}
    assert len(opens) == N_SYMBOLS - 1  # the IPO opens later, in its own cross
    assert len(closes) == N_SYMBOLS
    for i, (code, m) in enumerate(messages):
        if code == "I":
            key = (m["stock_locate"], m["cross_type"])
            assert key in first_q and i < first_q[key], "NOII after its cross"
    for code, m in messages:
        if code == "Q" and m["cross_type"] == b"O":
            assert 9.5 * NS_HOUR <= m["timestamp"] < 9.51 * NS_HOUR
        if code == "Q" and m["cross_type"] == b"C":
            assert 16 * NS_HOUR <= m["timestamp"] < 16.01 * NS_HOUR


def test_halts_pause_then_resume(messages):
    actions = defaultdict(list)
    for code, m in messages:
        if code == "H":
            actions[m["stock_locate"]].append(m["trading_state"])
    halted = [states for states in actions.values() if len(states) > 1]
    assert halted, "no symbol was halted"
    for states in halted:
        assert states[-1] == b"T" and states[0] in (b"H", b"T")
        assert any(s in (b"H", b"Q") for s in states)


def test_order_flow_mostly_in_market_hours(messages):
    ts = np.array([m["timestamp"] for c, m in messages if c in "AF"])
    assert ((ts >= 9.5 * NS_HOUR) & (ts < 16 * NS_HOUR)).mean() > 0.8
    assert (ts < 9.5 * NS_HOUR).any() and (ts >= 16 * NS_HOUR).any()


def test_activity_skewed_across_symbols(session):
    types = session.types
    locates = session.buf[session.offsets + 1].astype(np.int64) << 8 | session.buf[session.offsets + 2]
    flow = np.isin(types, np.frombuffer(b"AFECXDUP", np.uint8))
    per_symbol = np.sort(np.bincount(locates[flow], minlength=N_SYMBOLS + 1)[1:])[::-1]
    top = per_symbol[: N_SYMBOLS // 10].sum() / per_symbol.sum()
    assert top > 0.4, f"top 10% of symbols carry only {top:.0%}"


def test_prices_on_the_tick_grid_and_in_range(messages):
    for code, m in messages:
        for name in ("price", "execution_price", "cross_price"):
            if name in m and code != "K":
                assert m[name] % 100 == 0 and 100 <= m[name] <= 2_000 * 10_000, (code, m)


def test_timestamps_epoch_and_receive_latency(session, messages):
    since_midnight = np.array([m["timestamp"] for _, m in messages], dtype=np.int64)
    midnight_et = int(dt.datetime(2024, 3, 15, 4, 0, tzinfo=dt.timezone.utc).timestamp()) * 10**9  # EDT = UTC-4
    np.testing.assert_array_equal(session.ts_event, midnight_et + since_midnight)
    lag = session.ts_recv - session.ts_event
    assert (lag >= 2_000).all() and (lag < 1_000_000).all()
    assert (np.diff(session.ts_recv) >= 0).all()


def test_add_bytes_by_struct(session, messages):
    """One add decoded by hand with struct, against the spec layout."""
    i = next(i for i, (c, _) in enumerate(messages) if c == "A")
    raw = session.message(i)
    code, loc, track, ts_hi, ts_lo, ref, side, shares, stock, price = struct.unpack(">cHHHIQcI8sI", raw)
    m = messages[i][1]
    assert (code, loc, ref, side, shares, stock, price) == (
        b"A", m["stock_locate"], m["order_ref"], m["side"], m["shares"], m["stock"], m["price"]
    )
    assert ts_hi << 32 | ts_lo == m["timestamp"]
    assert side in (b"B", b"S") and len(raw) == 36


@pytest.mark.parametrize("fmt", ["itch", "pcap"])
def test_write_reads_back(session, tmp_path, fmt):
    path = tmp_path / f"day.{fmt}"
    session.write(path, fmt=fmt)
    buf, frames = open_capture(path).frames()
    assert frames.shape[0] == len(session)
    got = np.concatenate([buf[o : o + n] for o, n in zip(frames["offset"], frames["length"])])
    assert got.tobytes() == session.buf.tobytes()
    if fmt == "pcap":
        assert (frames["ts_recv"] >= session.ts_recv).all()
    else:
        assert path.read_bytes() == session.binaryfile_bytes().tobytes()


def test_too_few_messages_is_an_error():
    with pytest.raises(ValueError, match="too few"):
        generate(500, 100, 1)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**64 - 1),
    symbols=st.integers(4, 40),
    dlcr=st.booleans(),
    max_orders=st.sampled_from([4, 16, 128]),
)
def test_rules_hold_for_any_seed(seed, symbols, dlcr, max_orders):
    sess = generate(12_000, symbols, seed, dlcr=dlcr, max_orders=max_orders)
    assert len(sess) == 12_000
    counts = sess.type_counts()
    assert ("O" in counts) == dlcr
    replay(decode_all(sess))
