"""Matching benchmark: the internal crossing kernel's orders/s, and order-to-ack latency in process.

    python bench/matching.py                 # 2M commands, table
    python bench/matching.py --json          # one JSON object instead of the table
    python bench/matching.py --commands 500000 --repeat 1

What happens, in one run:
1. A fixed stream of ``--commands`` commands over ``--instruments`` instruments is made with a seeded
   numpy generator (untimed): 60% LIMIT (DAY/GTC, priced around a drifting mid, some crossing), 20%
   CANCEL and 10% MODIFY of earlier limit orders (some already filled or cancelled: those are
   rejected, as in life), 10% MARKET.
2. Throughput, the matching kernel alone: one untimed run on the first 20,000 commands (loads numba's
   cache or compiles), then ``--repeat`` timed runs, each a fresh ``MatchingEngine`` fed the stream in
   batches of ``--batch`` commands through ``submit`` (array growth and event hand-out included).
   Best run reported. Peer: ``tests/trading/reference_matching.py``, the plain-Python matcher the
   kernel is tested against, on the first ``--peer-commands`` commands, in the same process.
3. Latency: a fresh engine takes the first half of the stream in one batch (untimed), then each of
   the next ``--latency-commands`` commands is submitted alone: ``submit`` of a one-row batch, timed
   with ``perf_counter_ns`` from the call to its return with the events (ACK first) in hand.
   Percentiles of those single-command submits; the kernel alone: no risk checks, no log.
4. The full order path, ``trading.engine.Engine.submit``: risk checks (``RiskGate``, one compiled call
   per batch), the write-ahead log (one record and one group commit per submit), matching, settling,
   portfolio and reservations (``RiskGate.on_events``). The same stream, its times moved into regular
   trading hours (2024-03-15 from 10:30 EDT), over ``--instruments`` symbols marked at $100 and 17
   margin accounts with room for everything (so risk checks every rule and refuses nothing); no feed
   books (users trade with each other). For each fsync policy in ``--fsync``: throughput on the first
   ``--engine-commands`` commands in batches of ``--engine-batch`` (one untimed warm-up run first,
   best of ``--repeat``), then latency as in step 3 with a fresh engine and log: ``--latency-commands``
   single-command submits with fsync ``never``, ``--fsync-latency-commands`` with ``batch`` (each one
   an fdatasync). The log lives in ``--wal-root`` (a temporary directory by default); its file system
   is printed. Peer: the kernel alone on the same commands (step 2), as a ratio.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (ROOT, ROOT / "tests" / "trading"):  # running as ``python bench/matching.py`` from anywhere
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from _report import emit, machine  # noqa: E402

from parsers.schema import UNDEF_PRICE  # noqa: E402
from trading.matching import MatchingEngine  # noqa: E402
from trading.orders import COMMAND, CommandKind, EventKind, OrderSide, OrderType, TimeInForce  # noqa: E402

TICK = 10_000_000  # one cent in 1e-9 units
TARGET_ORDERS_PER_S = 1_000_000
TARGET_ENGINE_ORDERS_PER_S = 300_000
TARGET_P99_US = 50.0
SESSION_NS = 1_710_513_000_000_000_000  # 2024-03-15 10:30 EDT


def make_stream(n: int, instruments: int, seed: int = 6) -> np.ndarray:
    """The fixed command mix (module docstring, step 1)."""
    rng = np.random.default_rng(seed)
    out = COMMAND.empty(n)
    out["ts"] = 1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 1_000
    out["price"] = UNDEF_PRICE
    out["stop_price"] = UNDEF_PRICE
    u = rng.random(n)
    kind = np.where(u < 0.6, 0, np.where(u < 0.8, 1, np.where(u < 0.9, 2, 3)))  # limit, cancel, modify, market
    inst = rng.integers(0, instruments, n).astype(np.uint32)
    # Mids drift per instrument: a random walk of each instrument's own steps.
    steps = rng.integers(-1, 2, n)
    mid = np.empty(n, dtype=np.int64)
    for k in range(instruments):
        idx = np.flatnonzero(inst == k)
        mid[idx] = 10_000 + np.cumsum(steps[idx])
    side = np.where(rng.random(n) < 0.5, OrderSide.BUY, OrderSide.SELL).astype(np.uint8)
    sign = np.where(side == OrderSide.BUY, 1, -1)
    price = (mid - sign * rng.integers(-2, 20, n)) * TICK
    qty = rng.choice(np.array([1, 10, 50, 100, 100, 200, 500], dtype=np.uint32), n)
    oid = np.arange(1, n + 1, dtype=np.uint64)

    new = (kind == 0) | (kind == 3)
    out["order_id"] = oid
    out["kind"] = np.where(new, CommandKind.NEW, np.where(kind == 1, CommandKind.CANCEL, CommandKind.MODIFY))
    out["account"] = 1 + (oid % 16).astype(np.uint32)
    out["instrument_id"] = inst
    out["side"] = side
    out["qty"] = qty
    out["order_type"] = np.where(kind == 3, OrderType.MARKET, OrderType.LIMIT)
    out["tif"] = np.where(kind == 3, TimeInForce.IOC, np.where(rng.random(n) < 0.5, TimeInForce.DAY, TimeInForce.GTC))
    out["price"] = np.where(kind == 0, price, UNDEF_PRICE)
    # Cancels and modifies name a limit order among the last few thousand limit orders.
    limits = np.flatnonzero(kind == 0)
    targets = np.flatnonzero((kind == 1) | (kind == 2))
    before = np.searchsorted(limits, targets)  # limit orders issued before each target command
    ok = before > 0
    pick = before - 1 - (rng.integers(0, 4000, targets.size) % np.maximum(before, 1))
    chosen = limits[np.clip(pick, 0, None)]
    out["order_id"][targets[ok]] = oid[chosen[ok]]
    out["account"][targets] = 1 + (out["order_id"][targets] % 16).astype(np.uint32)
    out["instrument_id"][targets] = inst[chosen]
    # Modifies: half re-price by a few ticks (losing priority), half change size (mostly down).
    mods = targets[kind[targets] == 2]
    reprice = rng.random(mods.size) < 0.5
    mod_src = chosen[kind[targets] == 2]
    out["price"][mods[reprice]] = price[mod_src[reprice]] + rng.integers(-3, 4, reprice.sum()) * TICK
    out["qty"][mods] = np.where(reprice, 0, np.maximum(1, qty[mod_src] // rng.integers(1, 4, mods.size)))
    return out


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def run_ours(stream: np.ndarray, batch: int) -> tuple[float, MatchingEngine, np.ndarray]:
    """Seconds to match the stream in batches with a fresh engine; the engine; event counts by kind."""
    engine = MatchingEngine()
    kinds = np.zeros(len(EventKind) + 1, dtype=np.int64)
    t0 = time.perf_counter()
    for start in range(0, len(stream), batch):
        events = engine.submit(stream[start:start + batch])
        kinds += np.bincount(events["kind"], minlength=len(kinds))
    return time.perf_counter() - t0, engine, kinds


def run_reference(stream: np.ndarray) -> float:
    from reference_matching import ReferenceMatcher

    ref = ReferenceMatcher()
    t0 = time.perf_counter()
    for start in range(0, len(stream), 1000):
        ref.submit(stream[start:start + 1000])
    return time.perf_counter() - t0


def run_latency(stream: np.ndarray, count: int) -> dict:
    engine = MatchingEngine()
    half = len(stream) // 2
    engine.submit(stream[:half])
    rows = [stream[i:i + 1] for i in range(half, min(len(stream), half + count))]
    ns = np.empty(len(rows), dtype=np.int64)
    clock = time.perf_counter_ns
    for j, row in enumerate(rows):
        t0 = clock()
        events = engine.submit(row)
        ns[j] = clock() - t0
        assert events["kind"][0] in (EventKind.ACK, EventKind.REJECT, EventKind.CANCELLED, EventKind.MODIFIED)
    us = ns / 1_000
    return {"what": "submit() of a one-command batch, call to return, events in hand", "commands": len(rows),
            "p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "p99_9_us": float(np.percentile(us, 99.9)), "max_us": float(us.max()),
            "target_p99_us": TARGET_P99_US, "resting_orders": engine.orders}


# -- the full order path ------------------------------------------------------------------------


def engine_stream(stream: np.ndarray) -> np.ndarray:
    """The stream with its times in regular trading hours (the risk gate checks market hours)."""
    out = stream.copy()
    out["ts"] = SESSION_NS + np.arange(len(out), dtype=np.int64) * 1_000
    return out


def make_engine(instruments: int, wal_dir: Path, fsync: str):
    from parsers.schema import PRICE_SCALE
    from trading.engine import AccountConfig, Engine

    symbols = {f"S{i}": i for i in range(instruments)}
    accounts = {f"a{i}": AccountConfig(cash=10**8 * PRICE_SCALE, margin=True) for i in range(17)}
    engine = Engine(symbols, accounts, wal_dir=wal_dir, fsync=fsync)
    engine.mark(SESSION_NS - 1, {s: "100" for s in symbols})  # the LULD reference and the valuation price
    return engine


def run_engine(stream: np.ndarray, instruments: int, batch: int, fsync: str, root: Path) -> dict:
    """Seconds for a fresh engine (and log) to take the stream in batches; events and rejects by kind."""
    wal_dir = Path(tempfile.mkdtemp(dir=root))
    engine = make_engine(instruments, wal_dir, fsync)
    kinds = np.zeros(len(EventKind) + 1, dtype=np.int64)
    reasons = np.zeros(256, dtype=np.int64)
    t0 = time.perf_counter()
    for start in range(0, len(stream), batch):
        events = engine.submit(stream[start:start + batch])
        kinds += np.bincount(events["kind"], minlength=len(kinds))
        rejected = events["reason"][events["kind"] == EventKind.REJECT]
        reasons += np.bincount(rejected, minlength=256)
    seconds = time.perf_counter() - t0
    wal_bytes = sum(f.stat().st_size for f in wal_dir.iterdir() if f.suffix == ".wal")
    engine.close()
    shutil.rmtree(wal_dir)
    return {"seconds": seconds, "kinds": kinds, "reasons": reasons, "wal_bytes": wal_bytes}


def run_engine_latency(stream: np.ndarray, instruments: int, count: int, fsync: str, root: Path) -> dict:
    wal_dir = Path(tempfile.mkdtemp(dir=root))
    engine = make_engine(instruments, wal_dir, fsync)
    half = len(stream) // 2
    engine.submit(stream[:half])
    rows = [stream[i:i + 1] for i in range(half, min(len(stream), half + count))]
    ns = np.empty(len(rows), dtype=np.int64)
    clock = time.perf_counter_ns
    for j, row in enumerate(rows):
        t0 = clock()
        events = engine.submit(row)
        ns[j] = clock() - t0
        assert events["kind"][0] in (EventKind.ACK, EventKind.REJECT, EventKind.CANCELLED, EventKind.MODIFIED)
    live = engine.matcher.orders
    engine.close()
    shutil.rmtree(wal_dir)
    us = ns / 1_000
    return {"what": f"Engine.submit() of a one-command batch, fsync {fsync}: risk, log record + commit, "
                    "matching, portfolio; call to return", "commands": len(rows),
            "p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)),
            "p99_9_us": float(np.percentile(us, 99.9)), "max_us": float(us.max()),
            "target_p99_us": TARGET_P99_US if fsync == "never" else None, "live_orders": live}


def file_system(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, timeout=10).stdout
        fields = out.splitlines()[1].split()
        return f"{fields[1]} on {fields[0]}"
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def engine_section(stream: np.ndarray, args, kernel_prefix_s: float) -> dict:
    from trading.orders import Reason

    root = Path(args.wal_root) if args.wal_root else Path(tempfile.mkdtemp(prefix="bench-wal-"))
    root.mkdir(parents=True, exist_ok=True)
    n = min(args.engine_commands, len(stream))
    estream = engine_stream(stream[:n])
    run_engine(estream[:20_000], args.instruments, args.engine_batch, "never", root)  # warm-up: numba caches
    kernel_s = min(run_ours(stream[:n], args.engine_batch)[0] for _ in range(args.repeat))
    out = {"commands": n, "batch": args.engine_batch, "wal_root": str(root), "file_system": file_system(root),
           "kernel_seconds": kernel_s, "kernel_orders_per_s": _rate(n, kernel_s), "policies": {}}
    for fsync in args.fsync:
        best = min((run_engine(estream, args.instruments, args.engine_batch, fsync, root)
                    for _ in range(args.repeat)), key=lambda r: r["seconds"])
        count = args.latency_commands if fsync == "never" else args.fsync_latency_commands
        rate = _rate(n, best["seconds"])
        out["policies"][fsync] = {
            "seconds": best["seconds"], "orders_per_s": rate, "ratio_to_kernel": best["seconds"] / kernel_s,
            "events": int(best["kinds"].sum()), "wal_bytes": best["wal_bytes"],
            "events_by_kind": {k.name: int(best["kinds"][k]) for k in EventKind},
            "rejects_by_reason": {Reason(r).name: int(c) for r, c in enumerate(best["reasons"]) if c},
            "target_orders_per_s": TARGET_ENGINE_ORDERS_PER_S, "meets_target": rate >= TARGET_ENGINE_ORDERS_PER_S,
            "latency": run_engine_latency(estream, args.instruments, count, fsync, root)}
    if not args.wal_root:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", type=int, default=2_000_000)
    ap.add_argument("--instruments", type=int, default=100)
    ap.add_argument("--batch", type=int, default=65_536, help="commands per submit() in the throughput run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer-commands", type=int, default=100_000)
    ap.add_argument("--latency-commands", type=int, default=100_000)
    ap.add_argument("--engine-commands", type=int, default=1_000_000, help="commands for the full order path")
    ap.add_argument("--engine-batch", type=int, default=4096, help="commands per Engine.submit (one group commit)")
    ap.add_argument("--fsync", nargs="+", default=["never", "batch"], choices=["never", "batch", "always"])
    ap.add_argument("--fsync-latency-commands", type=int, default=5_000,
                    help="single-command submits timed under fsync batch/always (each one an fdatasync)")
    ap.add_argument("--wal-root", default=None, help="directory for the write-ahead logs (default: a temp dir)")
    ap.add_argument("--no-engine", action="store_true", help="skip the full order path (step 4)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    stream = make_stream(args.commands, args.instruments)
    MatchingEngine().submit(stream[:20_000])  # numba: load the cache or compile
    best = None
    for _ in range(args.repeat):
        seconds, engine, kinds = run_ours(stream, args.batch)
        if best is None or seconds < best[0]:
            best = (seconds, engine, kinds)
    seconds, engine, kinds = best
    peer_n = min(args.peer_commands, len(stream))
    peer_s = run_reference(stream[:peer_n])
    prefix_s = min(run_ours(stream[:peer_n], args.batch)[0] for _ in range(args.repeat))
    ours_rate = _rate(len(stream), seconds)
    peer_rate = _rate(peer_n, peer_s)
    report = {
        "machine": machine(),
        "stream": {"commands": len(stream), "instruments": args.instruments, "batch": args.batch,
                   "mix": {"limit": 0.6, "cancel": 0.2, "modify": 0.1, "market": 0.1}},
        "ours": {"seconds": seconds, "orders_per_s": ours_rate, "events": int(kinds.sum()),
                 "events_per_s": _rate(int(kinds.sum()), seconds),
                 "events_by_kind": {k.name: int(kinds[k]) for k in EventKind},
                 "live_orders_at_end": engine.orders, "target_orders_per_s": TARGET_ORDERS_PER_S,
                 "meets_target": ours_rate >= TARGET_ORDERS_PER_S},
        "peer": {"name": "reference_matching", "commands": peer_n, "seconds": peer_s, "orders_per_s": peer_rate,
                 "ours_seconds": prefix_s, "ours_orders_per_s": _rate(peer_n, prefix_s),
                 "ratio_ours_over_peer": peer_s / prefix_s},
        "latency": run_latency(stream, args.latency_commands),
    }
    if not args.no_engine:
        report["engine"] = engine_section(stream, args, prefix_s)
    return emit(report, args.json, print_table)


def print_table(r: dict) -> None:
    m, s, o, p, lat = r["machine"], r["stream"], r["ours"], r["peer"], r["latency"]
    print(f"matching: {s['commands']:,} commands over {s['instruments']} instruments "
          f"(60% limit, 20% cancel, 10% modify, 10% market), batches of {s['batch']:,}")
    print(f"machine: {m['cpu']}, {m['cores']} cores, python {m['python']}, load {m['load_avg_1m']:.2f}")
    print()
    print(f"{'':30} {'commands':>10} {'seconds':>8} {'orders/s':>12} {'ours/peer':>9}")
    print(f"{'ours (kernel via submit)':30} {s['commands']:>10,} {o['seconds']:>8.3f} {o['orders_per_s']:>12,.0f}")
    print(f"{'ours, prefix':30} {p['commands']:>10,} {p['ours_seconds']:>8.3f} {p['ours_orders_per_s']:>12,.0f} "
          f"{p['ratio_ours_over_peer']:>8.0f}x")
    print(f"{'peer: ' + p['name'] + ', prefix':30} {p['commands']:>10,} {p['seconds']:>8.3f} "
          f"{p['orders_per_s']:>12,.0f}")
    print("(peer: tests/trading/reference_matching.py, the plain-Python matcher the kernel is tested against)")
    print(f"target >= {o['target_orders_per_s']:,} orders/s: {'met' if o['meets_target'] else 'NOT met'}; "
          f"{o['events']:,} events ({o['events_per_s']:,.0f}/s): "
          + ", ".join(f"{k.lower()} {v:,}" for k, v in o["events_by_kind"].items() if v))
    print()
    print(f"order-to-ack latency ({lat['what']}; {lat['commands']:,} commands, "
          f"{lat['resting_orders']:,} live orders)")
    print(f"  p50 {lat['p50_us']:.1f} us   p99 {lat['p99_us']:.1f} us   p99.9 {lat['p99_9_us']:.1f} us   "
          f"max {lat['max_us']:.1f} us   (target p99 <= {lat['target_p99_us']:.0f} us: "
          f"{'met' if lat['p99_us'] <= lat['target_p99_us'] else 'NOT met'})")
    if "engine" in r:
        print_engine(r["engine"])


def print_engine(e: dict) -> None:
    print()
    print(f"full order path, Engine.submit: risk (RiskGate) + write-ahead log (one record and group commit per "
          f"submit) + matching + portfolio")
    print(f"{e['commands']:,} commands (the stream's first, same mix) in batches of {e['batch']:,}; "
          f"log in {e['wal_root']} ({e['file_system']})")
    print(f"{'':30} {'seconds':>8} {'orders/s':>12} {'vs kernel':>9} {'log MB':>8}")
    print(f"{'peer: kernel alone (submit)':30} {e['kernel_seconds']:>8.3f} {e['kernel_orders_per_s']:>12,.0f}")
    for fsync, p in e["policies"].items():
        print(f"{'engine, fsync ' + fsync:30} {p['seconds']:>8.3f} {p['orders_per_s']:>12,.0f} "
              f"{p['ratio_to_kernel']:>8.1f}x {p['wal_bytes'] / 1e6:>8.1f}")
    for fsync, p in e["policies"].items():
        print(f"fsync {fsync}: target >= {p['target_orders_per_s']:,} orders/s: "
              f"{'met' if p['meets_target'] else 'NOT met'}; rejects: "
              + (", ".join(f"{k.lower()} {v:,}" for k, v in p["rejects_by_reason"].items()) or "none"))
    for fsync, p in e["policies"].items():
        lat = p["latency"]
        target = lat["target_p99_us"]
        verdict = "" if target is None else (f"   (target p99 <= {target:.0f} us: "
                                             f"{'met' if lat['p99_us'] <= target else 'NOT met'})")
        print(f"order-to-ack, fsync {fsync} ({lat['commands']:,} single-command submits, "
              f"{lat['live_orders']:,} live orders): p50 {lat['p50_us']:.1f} us   p99 {lat['p99_us']:.1f} us   "
              f"p99.9 {lat['p99_9_us']:.1f} us   max {lat['max_us']:.1f} us{verdict}")


if __name__ == "__main__":
    sys.exit(main())
