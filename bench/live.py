"""Live benchmark: `feedhandler send` and `feedhandler live` on this machine, per packet source and rate.

    python bench/live.py                  # 100k, 500k and 1M messages/s, 5 s each, every source that works here
    python bench/live.py --quick          # 1 s each
    python bench/live.py --json
    python bench/live.py --sources socket --rates 100000 --seconds 10 --busy-poll
    python bench/live.py --sources socket --rates 100000 --rt --pin same   # the placement that meets 50 us p99
    python bench/live.py --sources socket --rates 100000 --ordinary --profile

Placement: ``--pin apart`` puts the handler on CPU 1 and the sender on CPU 0, ``--pin same`` both on
CPU 1 (the packets' softirq then wakes the handler on its own CPU, as a NIC interrupt steered to the
handler's core would; the two then share one core, so the sender tops out near 300k msg/s); ``--rt``
runs both in SCHED_FIFO (the handler through ``[live] cpu`` / ``realtime``), except a handler that
spins (shm, ``--busy-poll``). ``--ordinary`` turns the handler's fused path off (``[live] fused``);
``--profile`` also prints, per row, the receive -> read returned latency.

What happens, per (source, rate):
1. The first ``rate * seconds`` messages of a generated ITCH day (``captures.generator``, 500 symbols)
   are packed into MoldUDP64 packets of about ``--per-packet`` messages (default 16) with send times
   evenly spaced for ``rate`` messages/s (the generator's own capture times spread a day over 16 hours).
2. Two network namespaces joined by a veth pair (``tests/feedhandler/netns.py``). In namespace b, a
   forked child runs ``feedhandler.live.LiveHandler`` (the ``feedhandler live`` pipeline, no sinks) on
   lines A and B (239.1.1.1 / 239.1.1.2:26400) with the source under test: ``socket`` (a multicast
   socket per line), ``afpacket`` (one TPACKET_V3 ring on the veth), ``afxdp`` (an XDP socket on the
   veth, generic mode). Once its kernels are warm it says so, and a forked child in namespace a runs
   ``feedhandler.sender.Sender`` (what ``feedhandler send --speed 1`` runs) on both lines, no drops.
   For ``shm`` a forked writer paces the same packets, both lines, into a ``ShmWriter`` ring with its
   write time as receive time (the kernel-bypass hook: no network involved).
3. The handler stops once the sender is done and its counters stay still for 0.5 s. Latency counts
   messages from the first counter snapshot after the first quarter second of traffic (the sustained
   part: the pipeline's first calls and the catch-up behind them are left out; loss counts everything).

Printed per row: what the sender actually sent (packets per line, messages/s achieved), packets the
HANDLER lost per line (sent minus received; the kernel's drop counter says where), messages lost after
A/B arbitration (gaps given up), and the latency from each message's kernel receive timestamp to its
book being updated, p50 / p99 / p99.9 / max. Targets: no handler loss at 500k msg/s with the socket
source; p99 <= 50 us at 100k msg/s; the ratio columns divide the measure by the target.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _report import emit, machine  # noqa: E402

GROUP_A, GROUP_B, PORT = "239.1.1.1", "239.1.1.2", 26400
SOURCES = ("socket", "afpacket", "afxdp", "shm")
RATES = (100_000, 500_000, 1_000_000)
TARGET_P99_NS = 50_000  # at 100k msg/s
TARGET_LOSS_RATE = 500_000  # no handler loss at this rate, socket source
SETTLE_S = 0.5
WARM_S = 0.25  # latency leaves out the first quarter second of traffic (the pipeline's first calls)
SESSION = "BENCHLIVE"
RT_HANDLER, RT_SENDER = 20, 10  # SCHED_FIFO priorities with --rt


# ===================================================================== input
def make_packets(day, messages: int, rate: int, per_packet: int):
    """The first ``messages`` messages of ``day`` as MoldUDP64 packets paced for ``rate`` msg/s."""
    from feedhandler.sender import CapturePackets
    from parsers.moldudp64 import pack_messages, plan_packets, session_bytes

    n = min(messages, len(day))
    lengths = day.lengths[:n].astype(np.int64)
    offsets = day.offsets[:n].astype(np.int64)
    spacing = 1e9 / rate
    ts = (np.arange(n) * spacing).astype(np.int64)
    first, count, size, pkt_ts = plan_packets(lengths, ts, 1400, int(spacing * (per_packet - 0.5)))
    pos = np.zeros(len(first), np.int64)
    np.cumsum(size[:-1], out=pos[1:])
    out = np.empty(int(size.sum()), np.uint8)
    pack_messages(out, pos, day.buf, offsets, lengths, first.astype(np.int64), count.astype(np.int64),
                  np.frombuffer(session_bytes(SESSION), np.uint8), (first + 1).astype(np.uint64))
    return CapturePackets(out, pos, size.astype(np.int64), pkt_ts.astype(np.int64), n)


# ===================================================================== the two sides (forked children)
def _pin(cpu: int | None, rt: int = 0) -> None:
    """Run this process on ``cpu`` only (None: wherever the scheduler likes), and with ``rt`` > 0 in the
    SCHED_FIFO class at that priority (a waking handler then preempts any ordinary process at once)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if rt > 0:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt))


def run_handler(overrides: dict, expected: int, ready, done, warm_messages: int = 0) -> dict:
    """Namespace b: the live pipeline until the sender is done and the counters stand still. Latency
    counts from the first snapshot after ``warm_messages`` were delivered (the sustained part)."""
    from feedhandler.live import LiveError, LiveHandler
    from feedhandler.live_config import live_config

    try:
        handler = LiveHandler(live_config({}, overrides))
    except LiveError as exc:
        ready.set()
        return {"error": str(exc)}
    ready.set()
    still = {"key": None, "since": None, "warm": warm_messages == 0}

    def finished(snap: dict) -> bool:
        if not still["warm"] and snap["feed"]["messages"] >= warm_messages:
            handler.latency.reset()
            if handler.read_latency is not None:
                handler.read_latency.reset()
            still["warm"] = True
        if not done.is_set():
            return False
        key = (snap["feed"]["messages"], *(row["packets"] for row in snap["lines"].values()))
        if snap["feed"]["messages"] + snap["feed"]["given_up_messages"] >= expected and not snap["feed"]["held"]:
            if key == still["key"]:
                return True  # complete and nothing more came for one snapshot
        now = time.monotonic()
        if key != still["key"]:
            still.update(key=key, since=now)
        return now - still["since"] >= SETTLE_S

    try:
        handler.run(until=finished)
    except LiveError as exc:
        handler.close(0.5)
        return {"error": str(exc)}
    final = handler.close(1.0)
    final["warm_up_s"] = round(handler.warm_up_s, 3)
    return final


def run_sender(packets, iface: str, cpu: int | None = None, rt: int = 0) -> dict:
    """Namespace a: ``feedhandler send --speed 1`` on both lines."""
    from feedhandler.sender import Sender

    _pin(cpu, rt)
    summary = Sender(packets, [(GROUP_A, PORT), (GROUP_B, PORT)], speed=1.0, iface=iface).run()
    return {"seconds": summary.seconds, "lines": {k: {"sent": c.sent, "errors": c.send_errors}
                                                  for k, c in summary.lines.items()}}


def run_shm_writer(packets, path: str, created, go, cpu: int | None = None, rt: int = 0) -> dict:
    """The kernel-bypass hook's producer: creates the ring (the handler maps it once ``created`` is
    set), then at ``go`` writes the packets with the same pacing, both lines, stamped at write."""
    from feedhandler.sources.base import PacketBatch, ipv4_to_int
    from feedhandler.sources.shm_ring import ShmWriter

    _pin(cpu, rt)
    writer = ShmWriter(path, slot_count=1 << 17)
    created.set()
    go.wait(300)
    n = len(packets)
    due = packets.ts - packets.ts[0]
    length = packets.length.astype(np.int32)
    groups = {"A": ipv4_to_int(GROUP_A), "B": ipv4_to_int(GROUP_B)}
    sent = {"A": 0, "B": 0}
    start = time.monotonic_ns()
    i = 0
    while i < n:
        elapsed = time.monotonic_ns() - start
        j = int(np.searchsorted(due, elapsed, side="right"))
        if j <= i:
            time.sleep(min((due[i] - elapsed) / 1e9, 0.001))
            continue
        j = min(j, i + 4096)
        k = j - i
        now = np.full(k, time.time_ns(), np.int64)
        for line in "AB":
            batch = PacketBatch(packets.buf, packets.offset[i:j], length[i:j], now, np.full(k, groups[line], np.uint32),
                                np.full(k, PORT, np.uint16))
            sent[line] += writer.write_batch(batch)
        i = j
    seconds = (time.monotonic_ns() - start) / 1e9
    writer.close()
    return {"seconds": seconds, "lines": {line: {"sent": sent[line], "errors": 0} for line in "AB"}}


# ===================================================================== one measurement
def measure(pair, source: str, packets, rate: int, busy_poll: bool, fused: bool = True, profile: bool = False,
            pin: str = "", rt: bool = False) -> dict:
    spins = busy_poll or source == "shm"  # the handler never sleeps: it would starve whatever shares its CPU
    handler_cpu, sender_cpu = {"": (None, None), "apart": (1, 0), "same": (1, 0 if spins else 1)}[pin]
    # a spinning SCHED_FIFO loop is throttled by the kernel (sched_rt_runtime_us: 50 ms of every second)
    handler_rt, sender_rt = (0 if spins else RT_HANDLER, RT_SENDER) if rt else (0, 0)
    # the handler places its own loop ([live] cpu / realtime); the sender is placed by _pin
    overrides = {"group": f"{GROUP_A}:{PORT}", "b_group": f"{GROUP_B}:{PORT}", "source": source, "metrics": "off",
                 "expect_from": 1, "iface": pair.veths["b"], "busy_poll": busy_poll, "give_up": "200ms",
                 "fused": fused, "profile": profile, "cpu": handler_cpu, "realtime": handler_rt}
    shm_path = None
    ready, done = pair.event(), pair.event()
    if source == "shm":
        shm_path = f"/dev/shm/fh-bench-live-{os.getpid()}"
        overrides["shm_path"] = shm_path
        created, go = pair.event(), pair.event()
        writer = pair.start("a", run_shm_writer, packets, shm_path, created, go, sender_cpu, sender_rt)
        if not created.wait(60):
            raise SystemExit("the ring writer did not start within 60 s")
    warm = int(rate * WARM_S) if packets.messages > 4 * rate * WARM_S else 0
    handler = pair.start("b", run_handler, overrides, packets.messages, ready, done, warm)
    try:
        if not ready.wait(120):
            raise SystemExit("the handler did not start within 120 s")
        if shm_path:
            go.set()
        else:
            writer = pair.start("a", run_sender, packets, pair.veths["a"], sender_cpu, sender_rt)
        sent = writer.result(timeout=600)
        done.set()
        final = handler.result(timeout=600)
    finally:
        if shm_path:
            for p in (shm_path,):
                if os.path.exists(p):
                    os.unlink(p)
    row = {"source": source, "rate": rate, "busy_poll": busy_poll, "fused": fused, "pinned": pin, "rt": rt,
           "messages": packets.messages,
           "packets": len(packets), "per_packet": round(packets.messages / max(1, len(packets)), 1)}
    if "error" in final:
        row["error"] = final["error"]
        return row
    lines = final["lines"]
    row.update(
        send_seconds=round(sent["seconds"], 3),
        achieved_rate=round(packets.messages / sent["seconds"]) if sent["seconds"] > 0 else 0,
        sent={k: v["sent"] for k, v in sent["lines"].items()},
        send_errors=sum(v["errors"] for v in sent["lines"].values()),
        received={k: lines[k]["packets"] for k in "AB"},
        lost={k: sent["lines"][k]["sent"] - lines[k]["packets"] for k in "AB"},
        kernel_drops={k: lines[k]["kernel_drops"] for k in "AB"},
        delivered=final["feed"]["messages"],
        messages_lost=packets.messages - final["feed"]["messages"],
        given_up=final["feed"]["given_up"],
        latency_ns={k: final["latency"][k] for k in ("p50_ns", "p99_ns", "p999_ns", "max_ns", "count")},
        latency_from_message=warm,
        warm_up_s=final.get("warm_up_s"),
        batches=final["books"].get("batches", 0),
    )
    if "read_latency" in final:
        row["read_latency_ns"] = {k: final["read_latency"][k] for k in ("p50_ns", "p99_ns", "p999_ns", "max_ns", "count")}
    return row


# ===================================================================== report
def targets(rows: list[dict]) -> dict:
    out = {}
    for row in rows:
        if "error" in row:
            continue
        if row["source"] == "socket" and row["rate"] == TARGET_LOSS_RATE:
            lost = sum(row["lost"].values())
            out["socket_loss_at_500k"] = {"target": 0, "measured": lost, "met": lost == 0}
        if row["rate"] == 100_000 and row["latency_ns"]["count"]:
            p99 = row["latency_ns"]["p99_ns"]
            out[f"{row['source']}_p99_at_100k_us"] = {"target": TARGET_P99_NS / 1e3, "measured": round(p99 / 1e3, 1),
                                                      "ratio": round(p99 / TARGET_P99_NS, 2),
                                                      "met": p99 <= TARGET_P99_NS}
    return out


def print_table(report: dict) -> None:
    m = report["machine"]
    prm = report["params"]
    how = ", ".join(k for k, on in (("busy poll", prm["busy_poll"]), (f"pinned {prm['pin']}", prm["pin"]), ("SCHED_FIFO", prm["rt"]),
                                    ("ordinary path", not prm["fused"])) if on) or "defaults"
    print(f"live bench: python {m['python']}, {m['cores']} cores, load {m['load_avg_1m']:.2f}; "
          f"{prm['seconds']} s per row, ~{prm['per_packet']} messages/packet, lines A+B; {how}")
    head = (f"{'source':<9}{'rate/s':>9}{'achieved':>10}{'msg/pkt':>8}{'sent A':>9}{'lost A':>8}{'lost B':>8}"
            f"{'kdrop':>7}{'msgs lost':>10}{'p50 us':>9}{'p99 us':>9}{'p99.9 us':>10}{'max us':>10}")
    print(head)
    for row in report["rows"]:
        if "error" in row:
            print(f"{row['source']:<9}{row['rate']:>9,}  unavailable here: {row['error']}")
            continue
        lat = row["latency_ns"]
        print(f"{row['source']:<9}{row['rate']:>9,}{row['achieved_rate']:>10,}{row['per_packet']:>8}"
              f"{row['sent']['A']:>9,}{row['lost']['A']:>8,}{row['lost']['B']:>8,}"
              f"{sum(row['kernel_drops'].values()):>7,}{row['messages_lost']:>10,}{lat['p50_ns'] / 1e3:>9.1f}"
              f"{lat['p99_ns'] / 1e3:>9.1f}{lat['p999_ns'] / 1e3:>10.1f}{lat['max_ns'] / 1e3:>10.1f}")
        if "read_latency_ns" in row:
            rd = row["read_latency_ns"]
            print(f"{'':<9}{'receive -> read returned, per packet:':>62}{rd['p50_ns'] / 1e3:>9.1f}"
                  f"{rd['p99_ns'] / 1e3:>9.1f}{rd['p999_ns'] / 1e3:>10.1f}{rd['max_ns'] / 1e3:>10.1f}")
    print("targets:")
    for name, t in report["targets"].items():
        ratio = f", ratio {t['ratio']}" if "ratio" in t else ""
        print(f"  {name}: target {t['target']}, measured {t['measured']}{ratio} -> {'ok' if t['met'] else 'MISS'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 s per row")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--seconds", type=float, default=5.0, help="sending time per row (default 5)")
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="messages/s, comma separated")
    ap.add_argument("--sources", default=",".join(SOURCES), help="packet sources, comma separated")
    ap.add_argument("--per-packet", type=int, default=16, help="messages per MoldUDP64 packet (default 16)")
    ap.add_argument("--busy-poll", action="store_true", help="the handler spins instead of sleeping in poll")
    ap.add_argument("--pin", choices=("apart", "same"), default="",
                    help="sched_setaffinity: apart = handler on CPU 1, sender on CPU 0; same = both on CPU 1 (the "
                         "packets' softirq then wakes the handler on its own CPU, as a NIC interrupt steered "
                         "to the handler's core would)")
    ap.add_argument("--rt", action="store_true",
                    help=f"handler and sender in SCHED_FIFO (priorities {RT_HANDLER} / {RT_SENDER}): other load "
                         "on the machine no longer delays them (not for a handler that spins, --busy-poll or shm: "
                         "the kernel throttles it, and it would starve its CPU; that one stays in the ordinary "
                         "class and its sender goes to the other CPU)")
    ap.add_argument("--ordinary", action="store_true",
                    help="the handler without its fused path (arbiter, normalizer, engine called one by one)")
    ap.add_argument("--profile", action="store_true",
                    help="also measure receive -> read returned per packet (printed under each row)")
    args = ap.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    rates = [int(r) for r in args.rates.split(",")]
    sources = [s for s in args.sources.split(",") if s]
    for s in sources:
        if s not in SOURCES:
            raise SystemExit(f"unknown source {s!r} ({', '.join(SOURCES)})")
    from captures.generator import generate
    from tests.feedhandler.netns import NetnsPair

    day = generate(messages=int(max(rates) * seconds), symbols=500, seed=1, dlcr=False)
    rows = []
    with NetnsPair() as pair:
        for rate in rates:
            packets = make_packets(day, int(rate * seconds), rate, args.per_packet)
            for source in sources:
                if not args.json:
                    print(f"... {source} at {rate:,} msg/s", file=sys.stderr, flush=True)
                rows.append(measure(pair, source, packets, rate, args.busy_poll, not args.ordinary, args.profile,
                                    args.pin, args.rt))
    report = {"bench": "live", "machine": machine(),
              "params": {"seconds": seconds, "rates": rates, "sources": sources, "per_packet": args.per_packet,
                         "busy_poll": args.busy_poll, "pin": args.pin, "rt": args.rt, "fused": not args.ordinary,
                         "profile": args.profile},
              "rows": rows}
    report["targets"] = targets(rows)
    return emit(report, args.json, print_table)


if __name__ == "__main__":
    threading.current_thread().name = "bench-live"
    sys.exit(main())
