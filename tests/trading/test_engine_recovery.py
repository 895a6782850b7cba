"""Durability of trading.Engine: a child process runs an engine with a write-ahead log on a random feed
with random users, reporting every acknowledged order only after its ack; it is SIGKILLed mid-run.
``Engine.recover`` on its log must give the state hash an uninterrupted engine reaches on the same
inputs, and hold every order the child acknowledged.

    python tests/trading/test_engine_recovery.py child WAL_DIR FSYNC SEED    # the child (prints ack lines)
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from orderbook.engine import BookEngine  # noqa: E402
from parsers.schema import PRICE_SCALE  # noqa: E402
from parsers.trades import trades_from_events  # noqa: E402
from tests.orderbook.event_streams import T0 as STREAM_T0, random_events  # noqa: E402
from trading.engine import AccountConfig, Engine  # noqa: E402
from trading.wal import WalCorruptionError, WalError, WalReader, list_segments  # noqa: E402

SYMBOLS = {"A": 1, "B": 2, "C": 3}
ACCOUNTS = {f"u{i}": AccountConfig(cash=10**9 * PRICE_SCALE, margin=True) for i in range(4)}
CENT = PRICE_SCALE // 100
SESSION = 1_710_513_000_000_000_000  # 2024-03-15 10:30 EDT


def drive(engine: Engine, books: BookEngine, seed: int, events: int = 200_000):
    """The input stream: feed batches of 40 events, each followed by 0..3 user commands drawn from a
    seeded generator against the books as they stand (so two runs see the same inputs). Yields, after
    every call into the engine, ("ack", (account, client order id)) for an acknowledged order, else
    ("other", None)."""
    stream = random_events(seed, events, instruments=[1, 2, 3])
    stream["ts_event"] = stream["ts_event"] - STREAM_T0 + SESSION
    rng = np.random.default_rng(seed)
    live: list[tuple[str, str]] = []
    n = 0
    for start in range(0, len(stream), 40):
        batch = stream[start:start + 40]
        books.apply(batch)
        ts = int(batch["ts_event"][-1])
        engine.on_feed(ts, batch, trades_from_events(batch, batch["size"].astype(np.uint64),
                                                     np.zeros(len(batch), np.uint8)))
        yield "other", None
        for _ in range(int(rng.integers(0, 4))):
            u = rng.random()
            ts += 1
            if u < 0.75 or not live:
                inst = int(rng.integers(1, 4))
                bids, asks = books.l2(inst, 1)
                if not bids or not asks:
                    continue
                side = "buy" if rng.random() < 0.5 else "sell"
                ref = bids[0][0] if side == "buy" else asks[0][0]
                price = (ref + int(rng.integers(-3, 5)) * CENT * (1 if side == "sell" else -1)) / PRICE_SCALE
                stop = (asks[0][0] + 2 * CENT if side == "buy" else bids[0][0] - 2 * CENT) / PRICE_SCALE
                typ = str(rng.choice(["limit", "limit", "limit", "market", "stop"]))
                account, coid = f"u{rng.integers(4)}", f"o{n}"
                n += 1
                res = engine.order(ts, account, coid, "ABC"[inst - 1], side, typ, int(rng.choice([10, 100, 300])),
                                   price=round(price, 2) if typ == "limit" else None,
                                   stop_price=round(stop, 2) if typ == "stop" else None,
                                   tif=str(rng.choice(["DAY", "GTC", "IOC"])))
                if res[0]["event"] == "ack":
                    live.append((account, coid))
                    yield "ack", (account, coid)
                    continue
            elif u < 0.9:
                account, coid = live[int(rng.integers(len(live)))]
                engine.cancel(ts, account, coid)
            else:
                account, coid = live[int(rng.integers(len(live)))]
                engine.modify(ts, account, coid, qty=int(rng.choice([5, 50, 500])))
            yield "other", None


def child(wal_dir: str, fsync: str, seed: int) -> None:
    books = BookEngine()
    engine = Engine(SYMBOLS, ACCOUNTS, books=books, wal_dir=wal_dir, fsync=fsync)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    while True:  # until killed: the stream again on a fresh book would repeat ids, so just idle at its end
        for what, key in drive(engine, books, seed):
            if what == "ack":
                out.write(f"{key[0]} {key[1]}\n")  # only after order() returned: the ack was given
                out.flush()
        time.sleep(3600)


def reference(seed: int, records: int, wal_dir: Path) -> Engine:
    """An engine that was never interrupted, stopped once it has logged ``records`` records."""
    books = BookEngine()
    engine = Engine(SYMBOLS, ACCOUNTS, books=books, wal_dir=wal_dir, fsync="never")
    if records:
        for _ in drive(engine, books, seed):
            if engine._wal.last_seq >= records:
                break
    assert engine._wal.last_seq == records
    return engine


def run_child_and_kill(wal_dir: Path, fsync: str, seed: int, acks_wanted: int) -> list[tuple[str, str]]:
    proc = subprocess.Popen([sys.executable, __file__, "child", str(wal_dir), fsync, str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    lines: list[str] = []
    buf = b""
    deadline = time.monotonic() + 120
    try:
        while len(lines) < acks_wanted + 1 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                *done, buf = buf.split(b"\n")
                lines += [d.decode() for d in done]
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    rest = proc.stdout.read()  # acks written before the kill
    lines += [d.decode() for d in (buf + rest).split(b"\n") if d]
    proc.stdout.close()
    proc.stderr.close()
    assert lines[0] == "ready" and len(lines) > acks_wanted
    return [tuple(line.split()) for line in lines[1:]]


@pytest.mark.parametrize("fsync, seed", [("batch", 21), ("never", 22)])
def test_sigkill_mid_run_recovers_the_same_state_and_every_acked_order(tmp_path, fsync, seed):
    wal_dir = tmp_path / "wal"
    acked = run_child_and_kill(wal_dir, fsync, seed, acks_wanted=300)
    records = WalReader(wal_dir).scan().last_seq
    recovered = Engine.recover(SYMBOLS, ACCOUNTS, wal_dir=wal_dir, fsync=fsync)
    assert recovered.records == records > 300
    ref = reference(seed, records, tmp_path / "ref")
    assert recovered.state_hash() == ref.state_hash()
    assert recovered.positions() == ref.positions()
    missing = [key for key in acked if recovered.order_state(*key) is None]
    assert not missing, f"{len(missing)} acknowledged orders lost, e.g. {missing[:3]}"
    # The two logs hold the same inputs, record for record.
    ours = [p for _, p in WalReader(wal_dir).replay()]
    theirs = [p for _, p in WalReader(tmp_path / "ref").replay()]
    assert ours == theirs
    recovered.close()
    ref.close()


def test_recovered_engine_logs_on_and_recovers_again(tmp_path):
    books = BookEngine()
    engine = Engine(SYMBOLS, ACCOUNTS, books=books, wal_dir=tmp_path, fsync="never")
    steps = drive(engine, books, seed=5, events=4000)
    for _ in range(60):
        next(steps)
    engine.close()
    again = Engine.recover(SYMBOLS, ACCOUNTS, wal_dir=tmp_path, books=books, fsync="never")
    assert again.state_hash() == engine.state_hash()
    bid = books.l2(1, 1)[0][0][0]
    ev = again.order(SESSION + 10**12, "u1", "after", "A", "buy", "limit", 10, price=bid / PRICE_SCALE)
    assert ev[0]["event"] == "ack", ev
    again.kill("u2")
    again.end_session(SESSION + 2 * 10**12)
    want = again.state_hash()
    again.close()
    third = Engine.recover(SYMBOLS, ACCOUNTS, wal_dir=tmp_path, fsync="never")
    assert third.state_hash() == want and third.order_state("u1", "after")["live"] is False  # a DAY order expired
    assert third.order(SESSION + 3 * 10**12, "u2", "k", "A", "buy", "limit", 1, price=bid / PRICE_SCALE)[0][
        "reason"] == "kill_switch"
    third.close()


def test_resting_orders_meet_the_feed_after_a_restart(tmp_path):
    from parsers.schema import EVENT, Action, Side

    def batch(*rows):
        ev = EVENT.empty(len(rows))
        for i, (oid, action, side, cents, size) in enumerate(rows):
            ev[i]["sequence"], ev[i]["ts_event"], ev[i]["instrument_id"] = i + 1, SESSION + i, 1
            ev[i]["order_id"], ev[i]["action"], ev[i]["side"] = oid, action, side
            ev[i]["price"], ev[i]["size"] = cents * CENT, size
        return ev

    def feed(engine, books, ev):
        books.apply(ev)
        return engine.on_feed(SESSION + 10**6, ev, trades_from_events(ev, ev["size"].astype(np.uint64),
                                                                       np.zeros(len(ev), np.uint8)))

    books = BookEngine()
    engine = Engine(SYMBOLS, ACCOUNTS, books=books, wal_dir=tmp_path, fsync="never")
    feed(engine, books, batch((1, Action.ADD, Side.BID, 1000, 300), (2, Action.ADD, Side.ASK, 1001, 300)))
    assert engine.order(SESSION + 10**7, "u1", "b", "A", "buy", "limit", 100, price="10.00")[0]["event"] == "ack"
    engine.close()
    again = Engine.recover(SYMBOLS, ACCOUNTS, wal_dir=tmp_path, books=books, fsync="never")
    out = feed(again, books, batch((1, Action.EXECUTE, Side.BID, 1000, 300), (3, Action.ADD, Side.BID, 1000, 50),
                                   (3, Action.EXECUTE, Side.BID, 1000, 40)))
    assert [(e["event"], e["client_order_id"], e["qty"], e["liquidity"]) for e in out] == [("fill", "b", 40, "maker")]
    again.close()


def test_a_torn_tail_is_cut_and_damage_inside_the_log_is_refused(tmp_path):
    books = BookEngine()
    engine = Engine(SYMBOLS, ACCOUNTS, books=books, wal_dir=tmp_path, fsync="never")
    steps = drive(engine, books, seed=6, events=4000)
    for _ in range(40):
        next(steps)
    want, n = engine.state_hash(), engine.records
    engine.close()
    segment = list_segments(tmp_path)[-1]
    whole = segment.read_bytes()
    segment.write_bytes(whole + b"\x07" * 21)  # a record the writer never finished
    again = Engine.recover(SYMBOLS, ACCOUNTS, wal_dir=tmp_path, fsync="never")
    assert again.state_hash() == want and again.records == n and again.recovery.torn_tail is not None
    again.close()
    assert segment.read_bytes() == whole
    damaged = bytearray(whole)
    damaged[200] ^= 0xFF  # inside an early record, intact records after it
    segment.write_bytes(bytes(damaged))
    with pytest.raises(WalCorruptionError):
        Engine.recover(SYMBOLS, ACCOUNTS, wal_dir=tmp_path, fsync="never")


def test_a_new_engine_refuses_a_directory_that_holds_a_log(tmp_path):
    engine = Engine(SYMBOLS, ACCOUNTS, wal_dir=tmp_path)
    engine.kill()  # one record
    engine.close()
    with pytest.raises(WalError, match="Engine.recover"):
        Engine(SYMBOLS, ACCOUNTS, wal_dir=tmp_path)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "child":
    child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
