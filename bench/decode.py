"""Decode benchmark: our ITCH 5.0 decoder against itchcpp, itchfeed and meatpy on the same file.

    python bench/decode.py                      # 5M-message session, table
    python bench/decode.py --json               # one JSON object instead of the table
    python bench/decode.py --messages 200000 --peer-messages 50000 --repeat 1   # quick look

What happens, in one run:
1. A Nasdaq TotalView-ITCH 5.0 session of ``--messages`` messages is generated as a BinaryFILE (each
   message prefixed by its 2-byte big-endian length) with no DLCR ``O`` messages (meatpy 0.5 cannot
   read them), or reused from ``bench/data/`` (git-ignored). ``--source project`` uses the project's
   generator, ``--source sample`` the small struct-based writer in this file, ``auto`` (default) the
   project's when it exists.
2. A reference walk of the file (this file, numba) counts messages by type and sums the shares and
   prices of Add Orders. That is the ground truth every decoder is checked against.
3. Our decoder runs in this process: once on a small prefix to load numba's cache / compile (not
   timed), then ``--repeat`` timed runs on the full file and on the peer prefix; the fastest counts.
4. Each peer runs in its own fresh interpreter (``bench/peers.py``), ``--repeat`` timed runs, then
   an untimed census of what it decoded. The pure-Python peers (itchfeed, meatpy) get the first
   ``--peer-messages`` messages (default 500k: they need minutes for 5M); itchcpp gets the full file.
   Ratios compare messages/s of ours and the peer on the same input.

Timing is wall clock (``time.perf_counter``) from opening the file to the last decoded message, file
read included (the file is in the page cache after generation: this measures decoding, not the disk).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / "data"
PEERS_PY = HERE / "peers.py"
PEER_ORDER = ("itchcpp", "itchfeed", "meatpy")
PREFIX_PEERS = ("itchfeed", "meatpy")  # pure Python: measured on the prefix
TARGETS = {"itchcpp": 5.0, "itchfeed": 30.0}  # the project's goal: ours/peer messages/s at least this
ITCH_TYPES = "SRHYLVWKJhAFECXDUPQBINO"  # the 23 ITCH 5.0 message types, in specification order
WARMUP_MESSAGES = 20_000

if str(ROOT) not in sys.path:  # running as ``python bench/decode.py`` from anywhere
    sys.path.insert(0, str(ROOT))

from _report import emit, machine  # noqa: E402  (bench/ is on sys.path when run as a script)


# ===================================================================== our decoder
STAGES = ("decode", "normalize")
SESSION_DATE = (2024, 3, 15)  # the venue clock needs a date (the generator's default); any weekday will do


def run_ours(path, stage: str = "decode") -> tuple[int, float]:
    """Decode the BinaryFILE at ``path`` with the project's code; return (messages, seconds).

    Timed from reading the file to the last decoded column, file read included.

    ``decode``: ``captures.reader.open_capture(path).iter_batches()`` (read, then frame 64k messages at
    a time), and ``parsers.itch50.decode_batch`` on each batch: every field of every message into
    typed numpy columns per message type, the same work the peers do into Python objects.
    ``normalize``: ``feedhandler.replay.replay(path, None, books=False)``, i.e. ``feedhandler stats FILE``
    in process: open and frame the capture, then normalize it into the common schema batch by batch
    (epoch timestamps, 1e-9 prices, order-reference enrichment), writing nothing, building no books.
    """
    fn = _STAGE_FUNCTIONS[stage]
    t0 = time.perf_counter()
    n, _ = fn(path)
    return n, time.perf_counter() - t0


def _ours_decode(path) -> tuple[int, dict]:
    from captures.reader import open_capture
    from parsers import itch50

    decoded: dict[str, list] = {}
    n = 0
    for buf, frames in open_capture(path).iter_batches():  # 64k-message batches, file order
        batch, _skipped = itch50.decode_batch(buf, frames)
        for code, rows in batch.items():
            decoded.setdefault(code.decode(), []).append(rows)
            n += len(rows)
    return n, decoded


def _ours_normalize(path) -> tuple[int, object]:
    import datetime as dt

    from feedhandler.replay import replay

    summary = replay(path, None, date=dt.date(*SESSION_DATE), books=False)
    return summary.messages, summary


_STAGE_FUNCTIONS = {"decode": _ours_decode, "normalize": _ours_normalize}


def census_ours(path, stage: str) -> dict:
    """What our decoder produced, in the form ``reference_census`` gives (untimed)."""
    n, result = _STAGE_FUNCTIONS[stage](path)
    if stage == "decode":
        by_type = {t: sum(len(a) for a in parts) for t, parts in result.items()}
        adds = [a for t in ("A", "F") for a in result.get(t, [])]
        shares = sum(int(a["shares"].sum(dtype=np.int64)) for a in adds)
        price = sum(int(a["price"].sum(dtype=np.int64)) for a in adds)
        return {"messages": n, "by_type": dict(sorted(by_type.items())), "add_shares": shares,
                "add_price": price, "error": None}
    bad = {k: v for k, v in result.anomalies.items()
           if k.startswith("unknown_type") or k in ("truncated_message", "longer_than_spec", "empty_message")}
    return {"messages": n, "by_type": dict(sorted(result.by_type.items())), "add_shares": None, "add_price": None,
            "error": f"anomalies {bad}" if bad else None}


# ===================================================================== reference walk (ground truth)
@nb.njit(cache=True)
def _census_walk(buf, limit, counts):
    """Walk up to ``limit`` messages: count by type byte into ``counts``; sum A/F shares and price.

    Returns (messages, end byte offset, add shares sum, add price sum, trailing garbage bytes).
    """
    pos = 0
    n = 0
    size = buf.shape[0]
    shares = np.int64(0)
    price = np.int64(0)
    while pos + 2 <= size and n < limit:
        length = (np.int64(buf[pos]) << 8) | np.int64(buf[pos + 1])
        if length == 0 or pos + 2 + length > size:
            break
        t = buf[pos + 2]
        counts[t] += 1
        if (t == 65 or t == 70) and length >= 36:  # 'A', 'F': shares at +20, price at +32
            m = pos + 2
            shares += (np.int64(buf[m + 20]) << 24) | (np.int64(buf[m + 21]) << 16) | (np.int64(buf[m + 22]) << 8) | np.int64(buf[m + 23])
            price += (np.int64(buf[m + 32]) << 24) | (np.int64(buf[m + 33]) << 16) | (np.int64(buf[m + 34]) << 8) | np.int64(buf[m + 35])
        n += 1
        pos += 2 + length
    rest = size - pos if n < limit else 0
    return n, pos, shares, price, rest


def reference_census(path, limit: int | None = None) -> dict:
    buf = np.fromfile(path, dtype=np.uint8)
    counts = np.zeros(256, dtype=np.int64)
    n, end, shares, price, rest = _census_walk(buf, np.int64(limit or 2**62), counts)
    by_type = {chr(c): int(counts[c]) for c in range(256) if counts[c]}
    return {
        "messages": int(n),
        "end_offset": int(end),
        "by_type": dict(sorted(by_type.items())),
        "add_shares": int(shares),
        "add_price": int(price),
        "trailing_bytes": int(rest),
    }


# ===================================================================== input files
def _data_name(args, source: str) -> str:
    dlcr = "dlcr" if args.dlcr else "nodlcr"
    return f"itch50_{source}_m{args.messages}_s{args.symbols}_seed{args.seed}_{dlcr}.bin"


def obtain_session(args) -> tuple[Path, str]:
    """Return (path, how it was made), generating into ``bench/data`` unless it is cached."""
    DATA.mkdir(parents=True, exist_ok=True)
    if args.input:
        path = Path(args.input)
        if not path.exists():
            raise SystemExit(f"--input {path}: no such file")
        return path, f"given file {path}"
    sources = ["project", "sample"] if args.source == "auto" else [args.source]
    errors = []
    for source in sources:
        path = DATA / _data_name(args, source)
        if path.exists() and not args.regenerate:
            return path, f"{source} (cached {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})"
        tmp = path.with_suffix(".tmp")
        try:
            t0 = time.perf_counter()
            how = (generate_project if source == "project" else write_sample)(tmp, args)
            os.replace(tmp, path)
            _log(args, f"generated {path.name} with {how} in {time.perf_counter() - t0:.1f} s")
            return path, how
        except _Unavailable as e:
            errors.append(f"{source}: {e}")
            tmp.unlink(missing_ok=True)
    raise SystemExit("no session: " + "; ".join(errors))


class _Unavailable(Exception):
    """The project's generator is not there (yet)."""


def generate_project(out: Path, args) -> str:
    """Write a session with the project's generator: its Python API if present, else its CLI."""
    try:
        from captures.generator import generate
    except ImportError:
        generate = None
    if generate is not None:
        session = generate(messages=args.messages, symbols=args.symbols, seed=args.seed, dlcr=args.dlcr)
        session.write(out, "itch")
        return "captures.generator.generate(...).write(path, 'itch')"
    try:
        importlib.import_module("feedhandler.cli")
    except ImportError as e:
        raise _Unavailable(f"neither captures.generator.generate nor feedhandler.cli ({e})") from None
    cmd = [sys.executable, "-m", "feedhandler.cli", "generate", str(out), "--messages", str(args.messages),
           "--symbols", str(args.symbols), "--seed", str(args.seed), "--format", "itch"]
    if not args.dlcr:
        cmd.append("--no-dlcr")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise _Unavailable(f"{' '.join(cmd[2:])} failed: {proc.stderr.strip()[-500:]}")
    return "feedhandler generate --format itch"


# The bench's own writer: every ITCH 5.0 type, laid out from the specification, plausible values.
# Body layouts after the 11-byte header (type, stock locate, tracking number, 6-byte timestamp).
_LAYOUT = {
    "S": "c", "R": "8sccIcc2scccccIc", "H": "8scc4s", "Y": "8sc", "L": "4s8sccc", "V": "QQQ", "W": "c",
    "K": "8sIcI", "J": "8sIIII", "h": "8scc", "A": "QcI8sI", "F": "QcI8sI4s", "E": "QIQ", "C": "QIQcI",
    "X": "QI", "D": "Q", "U": "QQII", "P": "QcI8sIQ", "Q": "Q8sIQc", "B": "Q", "I": "QQc8sIIIcc",
    "N": "8sc", "O": "8scIIIQII",
}
_MIX = {  # share of the message stream after the directory, roughly a real day's mix
    "A": 0.40, "D": 0.24, "U": 0.10, "X": 0.05, "E": 0.06, "F": 0.03, "C": 0.005, "P": 0.02,
    "I": 0.08, "H": 0.002, "Y": 0.002, "L": 0.002, "N": 0.002, "Q": 0.0005, "B": 0.0002,
    "K": 0.0002, "J": 0.0002, "h": 0.0002, "V": 0.0001, "W": 0.0001, "O": 0.0002,
}


def write_sample(out: Path, args) -> str:
    """Write a BinaryFILE of ``args.messages`` messages covering all ITCH types (``O`` if --dlcr)."""
    rng = random.Random(args.seed)
    structs = {t: struct.Struct(">HcHHHI" + f) for t, f in _LAYOUT.items()}  # length prefix first
    symbols = [f"SYM{i:04d}".encode() for i in range(args.symbols)]
    mix = {t: w for t, w in _MIX.items() if args.dlcr or t != "O"}
    kinds, weights = list(mix), list(mix.values())
    ts = 4 * 3600 * 10**9
    live: list[int] = []
    next_ref = 1
    match = 1
    parts = []

    def put(t, locate, *body):
        nonlocal ts
        ts += rng.randrange(1, 20_000)
        parts.append(structs[t].pack(structs[t].size - 2, t.encode(), locate, 0, ts >> 32, ts & 0xFFFFFFFF, *body))

    put("S", 0, b"O")
    for i, s in enumerate(symbols, 1):
        put("R", i, s, b"Q", b"N", 100, b"N", b"C", b"Z ", b"P", b"N", b"N", b"1", b"N", 0, b"N")
    remaining = args.messages - 2 - len(symbols)
    while remaining > 0:
        block = rng.choices(kinds, weights, k=min(remaining, 65536))
        remaining -= len(block)
        for t in block:
            loc = rng.randrange(1, len(symbols) + 1)
            sym = symbols[loc - 1]
            px = rng.randrange(10_000, 5_000_000)
            if t in "AF" or not live:
                if t not in "AF":
                    t = "A"
                ref, next_ref = next_ref, next_ref + 1
                live.append(ref)
                body = (ref, rng.choice(b"BS").to_bytes(1, "big"), rng.randrange(1, 5000), sym, px)
                put(t, loc, *(body + ((b"MPID",) if t == "F" else ())))
            elif t in "DXECU":
                k = rng.randrange(len(live))
                ref = live[k]
                if t == "D":
                    live[k] = live[-1]
                    live.pop()
                    put(t, loc, ref)
                elif t == "X":
                    put(t, loc, ref, rng.randrange(1, 100))
                elif t == "E":
                    put(t, loc, ref, rng.randrange(1, 100), match)
                    match += 1
                elif t == "C":
                    put(t, loc, ref, rng.randrange(1, 100), match, b"Y", px)
                    match += 1
                else:
                    live[k] = next_ref
                    put(t, loc, ref, next_ref, rng.randrange(1, 5000), px)
                    next_ref += 1
            elif t == "P":
                put(t, loc, 0, b"B", rng.randrange(1, 500), sym, px, match)
                match += 1
            elif t == "Q":
                put(t, loc, rng.randrange(1, 10**6), sym, px, match, b"O")
                match += 1
            elif t == "B":
                put(t, loc, rng.randrange(1, match))
            elif t == "I":
                put(t, loc, 1000, 200, b"B", sym, px, px, px, b"O", b" ")
            elif t == "H":
                put(t, loc, sym, b"T", b" ", b"    ")
            elif t == "Y":
                put(t, loc, sym, b"0")
            elif t == "L":
                put(t, loc, b"MPID", sym, b"Y", b"N", b"A")
            elif t == "N":
                put(t, loc, sym, b"B")
            elif t == "K":
                put(t, loc, sym, 34200, b"A", px)
            elif t == "J":
                put(t, loc, sym, px, px + 100, px - 100, 1)
            elif t == "h":
                put(t, loc, sym, b"Q", b"H")
            elif t == "V":
                put(t, 0, 10**8 * 4000, 10**8 * 3800, 10**8 * 3500)
            elif t == "W":
                put(t, 0, b"1")
            elif t == "O":
                put(t, loc, sym, b"Y", px // 2, px * 2, px, ts, px - 100, px + 100)
    put("S", 0, b"C")  # end of messages (itchfeed and itchcpp stop after it)
    with open(out, "wb") as f:
        f.write(b"".join(parts))
    return "bench sample writer (bench/decode.py write_sample)"


def write_prefix(path: Path, messages: int, end_offset: int) -> Path:
    """The first ``messages`` messages of ``path`` as their own file (cached next to it)."""
    out = DATA / f"{path.stem}.first{messages}{path.suffix}"
    if not out.exists() or out.stat().st_size != end_offset:
        with open(path, "rb") as f:
            data = f.read(end_offset)
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    return out


# ===================================================================== running
def time_ours(path: Path, stage: str, repeat: int) -> dict:
    runs = [run_ours(path, stage) for _ in range(repeat)]
    return {"messages": runs[0][0], "seconds": min(s for _, s in runs), "all_seconds": [s for _, s in runs]}


def run_peer(peer: str, path: Path, repeat: int, check: bool) -> dict:
    cmd = [sys.executable, str(PEERS_PY), peer, str(path), "--repeat", str(repeat)]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"peer": peer, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(census: dict, reference: dict) -> str:
    """'ok' when a peer's census equals the reference's, else what differs."""
    if census.get("error"):
        return census["error"]
    diffs = []
    for key in ("messages", "add_shares", "add_price"):
        if census[key] is not None and census[key] != reference[key]:
            diffs.append(f"{key} {census[key]} != {reference[key]}")
    for t in sorted(set(census["by_type"]) | set(reference["by_type"])):
        a, b = census["by_type"].get(t, 0), reference["by_type"].get(t, 0)
        if a != b:
            diffs.append(f"{t}: {a} != {b}")
    return "ok" if not diffs else "; ".join(diffs[:8])


def _log(args, msg: str) -> None:
    if not args.json:
        print(msg, file=sys.stderr, flush=True)


def _rate(r: dict) -> float | None:
    if "seconds" in r and r.get("messages"):
        return r["messages"] / r["seconds"]
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=5_000_000, help="messages in the session (default 5M)")
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--peer-messages", type=int, default=500_000,
                    help="messages the pure-Python peers (itchfeed, meatpy) decode: a prefix of the session; 0 = all")
    ap.add_argument("--peers", default=",".join(PEER_ORDER), help="comma-separated subset of " + ",".join(PEER_ORDER))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per decoder; the fastest counts (default 3)")
    ap.add_argument("--source", choices=("auto", "project", "sample"), default="auto",
                    help="who writes the session: the project's generator, the bench's own writer, or auto")
    ap.add_argument("--dlcr", action="store_true", help="include DLCR O messages (meatpy will fail on them)")
    ap.add_argument("--input", help="use this BinaryFILE instead of a generated one")
    ap.add_argument("--regenerate", action="store_true", help="rewrite the cached session")
    ap.add_argument("--no-ours", action="store_true", help="peers only (our decoder not measured)")
    ap.add_argument("--no-check", action="store_true", help="skip the untimed per-type census of each peer")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEER_ORDER:
            ap.error(f"unknown peer {p!r}")

    path, how = obtain_session(args)
    ref_full = reference_census(path)
    if ref_full["trailing_bytes"]:
        raise SystemExit(f"{path}: {ref_full['trailing_bytes']} bytes after the last whole message")
    n_full = ref_full["messages"]
    prefix_n = min(args.peer_messages or n_full, n_full)
    if prefix_n < n_full:
        ref_prefix = reference_census(path, prefix_n)
        prefix_path = write_prefix(path, prefix_n, ref_prefix["end_offset"])
    else:
        ref_prefix, prefix_path = ref_full, path
    inputs = {"full": (path, ref_full), "prefix": (prefix_path, ref_prefix)}
    _log(args, f"session: {path.name}, {n_full:,} messages, {path.stat().st_size / 2**20:.1f} MiB, by {how}")

    results: list[dict] = []
    ours: dict = {}  # (stage, input) -> result
    our_version = _our_version()  # once: others may commit while the bench runs
    if not args.no_ours:
        warm_n = min(WARMUP_MESSAGES, n_full)
        warm = write_prefix(path, warm_n, reference_census(path, warm_n)["end_offset"])
        for stage in STAGES:
            try:
                t0 = time.perf_counter()
                run_ours(warm, stage)  # loads numba's cache, or compiles: not timed
                warm_s = time.perf_counter() - t0
                for name in ("full", "prefix") if prefix_n < n_full else ("full",):
                    p, ref = inputs[name]
                    _log(args, f"ours {stage} on {name} ({ref['messages']:,} messages) ...")
                    r = time_ours(p, stage, args.repeat)
                    r.update(decoder=f"ours/{stage}", version=our_version, input=name, warmup_seconds=warm_s)
                    if not args.no_check:
                        r["check"] = census_ours(p, stage)
                        r["verified"] = compare(r["check"], ref)
                    ours[stage, name] = r
                    results.append(r)
            except Exception as e:  # report and still run the peers
                results.append({"decoder": f"ours/{stage}", "input": "full", "error": f"{type(e).__name__}: {e}"})

    for peer in peers:
        name = "prefix" if peer in PREFIX_PEERS and prefix_n < n_full else "full"
        p, ref = inputs[name]
        _log(args, f"{peer} on {name} ({ref['messages']:,} messages) ...")
        r = run_peer(peer, p, args.repeat, check=not args.no_check)
        r.update(decoder=peer, input=name)
        if "check" in r:
            r["verified"] = compare(r["check"], ref)
        for stage in STAGES:
            mine = ours.get((stage, name))
            if mine and _rate(mine) and _rate(r):
                ratio = _rate(mine) / _rate(r)
                r[f"{stage}_over_peer"] = ratio
                if peer in TARGETS:
                    r["target"] = TARGETS[peer]
                    r[f"{stage}_meets_target"] = ratio >= TARGETS[peer]
        results.append(r)

    for r in results:
        r["messages_per_second"] = _rate(r)
    report = {
        "benchmark": "decode",
        "session": {"path": str(path), "generated_by": how, "messages": n_full, "bytes": path.stat().st_size,
                    "by_type": ref_full["by_type"], "dlcr": args.dlcr, "symbols": args.symbols, "seed": args.seed},
        "prefix_messages": prefix_n,
        "repeat": args.repeat,
        "machine": machine(),
        "results": results,
    }
    return emit(report, args.json, print_table)


def _our_version() -> str:
    from importlib.metadata import version

    try:
        v = version("feedhandler")
    except Exception:
        v = "?"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        rev = ""
    return f"{v}+{rev}" if rev else v


def print_table(report: dict) -> None:
    s = report["session"]
    types = s["by_type"]
    missing = [t for t in ITCH_TYPES if t not in types]
    m = report["machine"]
    print(f"ITCH 5.0 decode: {s['messages']:,} messages, {s['bytes'] / 2**20:.1f} MiB BinaryFILE, "
          f"{len(types)} of 23 message types{' (no ' + ''.join(missing) + ')' if missing else ''}; "
          f"session by {s['generated_by']}")
    print(f"fastest of {report['repeat']} runs each; wall clock from reading the file to the last decoded "
          f"message; peers each in a fresh interpreter; Python {m['python']}, {m['cores']} cores, "
          f"1-min load {m['load_avg_1m']:.2f}")
    if report["prefix_messages"] < s["messages"]:
        print(f"itchfeed and meatpy (pure Python) decode the first {report['prefix_messages']:,} messages "
              "(input 'prefix'); each ratio compares messages/s on the same input")
    else:
        print("every decoder decodes the whole session; ratios compare messages/s")
    print()
    head = (f"{'decoder':<16} {'version':<14} {'input':<6} {'messages':>10} {'seconds':>8} {'messages/s':>12} "
            f"{'decode/peer':>11} {'normalize/peer':>14}  {'target':<7} check")
    print(head)
    print("-" * (len(head) + 8))
    for r in report["results"]:
        if "seconds" not in r:
            check = f"; check: {r['verified']}" if "verified" in r else ""
            print(f"{r['decoder']:<16} {r.get('version', ''):<14} {r.get('input', ''):<6} "
                  f"ERROR {r.get('error', '?')[:200]}{check}")
            continue
        cells = []
        for stage in STAGES:
            ratio = r.get(f"{stage}_over_peer")
            mark = ""
            if ratio is not None and "target" in r:
                mark = " ok" if r[f"{stage}_meets_target"] else " MISS"
            cells.append("" if ratio is None else f"{ratio:.1f}x{mark}")
        target = f">={r['target']:.0f}x" if "target" in r else ""
        print(f"{r['decoder']:<16} {r.get('version', ''):<14} {r['input']:<6} {r['messages']:>10,} {r['seconds']:>8.3f} "
              f"{r['messages_per_second']:>12,.0f} {cells[0]:>11} {cells[1]:>14}  {target:<7} "
              f"{r.get('verified', 'not checked')}")
    warm = [r for r in report["results"] if "warmup_seconds" in r]
    if warm:
        print(f"ours: numba's cache loaded (or compiled) on the first {WARMUP_MESSAGES:,} messages before timing: "
              + ", ".join(f"{r['decoder']} {r['warmup_seconds']:.2f} s" for r in warm if r["input"] == "full"))
    print("decode = read + frame + every field of every message into typed numpy columns (the peers' work); "
          "normalize = `feedhandler stats FILE` in process: decode + common schema + order-reference "
          "enrichment, batch by batch")


if __name__ == "__main__":
    sys.exit(main())
