"""A seeded synthetic Nasdaq TotalView-ITCH 5.0 trading day: ``generate(messages, symbols, seed)``.

The day is shaped like a real one: system events at their hours, the stock directory and the other
start-of-day messages for every symbol, then order flow skewed across symbols (Zipf-like activity) and
across the day (busy open and close), opening and closing crosses announced by NOII messages, a few
halts with LULD collars and halt crosses, an IPO released during the day (with DLCR price discovery
messages unless ``dlcr=False``), an operational halt, RPII, Reg SHO changes and broken trades.

Rules this module keeps:
- Deterministic: a seed gives the same bytes, on any machine (the kernel's random stream is splitmix64,
  not a library generator whose algorithm could change).
- Exactly ``messages`` messages; every one of its specified size; the last is the end-of-messages
  system event.
- The book rules of ``captures.generator_kernel`` hold (live refs, never crossed or locked, executions
  at the best price in time priority, nothing executes while halted).
- Wire bytes come only from ``parsers.itch50.encode_columns``: the message table is the encoder.

Pipeline: Python lays out the start-of-day directory and the schedule of timed events, the compiled
kernel simulates the books and writes one intent row per message, then each message type is encoded
in one vectorised call and scattered into the output buffer at its offsets.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from captures import generator_kernel as gk
from parsers import itch50
from parsers.clock import VenueClock

DEFAULT_DATE = dt.date(2024, 3, 15)
SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE


def _at(hours: int, minutes: int = 0, seconds: float = 0.0) -> int:
    """ns since midnight of a wall-clock time."""
    return hours * HOUR + minutes * MINUTE + int(round(seconds * SECOND))


# Times of the day (ns since midnight, Eastern).
T_START_MESSAGES = _at(3, 5)
T_START_SYSTEM = _at(4)
T_START_MARKET = _at(9, 30)
T_END_MARKET = _at(16)
T_END_SYSTEM = _at(20)
T_END_MESSAGES = _at(20, 5)
T_OPEN_NOII = (_at(9, 25), _at(9, 29, 59.9))
T_CLOSE_NOII = (_at(15, 50), _at(15, 59, 59.9))
T_IPO_QUOTE = _at(11)
T_IPO_CROSS = _at(11, 15)

# Share of the order flow in pre-market, market hours and post-market.
PHASE_SHARE = (0.05, 0.90, 0.05)
# Order flow windows [start, end) of the three phases.
PHASE_WINDOW = (
    (T_START_SYSTEM + 1_000_000, T_START_MARKET - 1),
    (T_START_MARKET + 50_000_000, T_END_MARKET - 1),
    (T_END_MARKET + 50_000_000, T_END_SYSTEM - 1),
)

MIN_FLOW_PER_SYMBOL = 10  # order-flow messages per symbol at least

# Four-letter market participant ids for F attributions and L positions (aux2 of F/L indexes this).
MPIDS = np.array(
    [b"GSCO", b"MSCO", b"UBSS", b"NITE", b"VIRT", b"CDRG", b"JPMS", b"SBSH",
     b"MLCO", b"CITD", b"JANE", b"HRTF", b"TMBR", b"XTXM", b"GTSM", b"SUSQ"],
    dtype="S4",
)
assert len(MPIDS) == gk.N_MPIDS
# Trading action reason codes (aux2 of H indexes this).
REASONS = np.array([b"    ", b"LUDP", b"T1  ", b"IPO1", b"IPOQ"], dtype="S4")
REASON_NONE, REASON_LULD, REASON_NEWS, REASON_IPO_NOT_RELEASED, REASON_IPO_QUOTE = range(5)

# Relative weights of the non-add actions (ACT_* order of the kernel): delete, replace, cancel,
# execute, execute with price, non-book trade. Tuned so a session looks like a Nasdaq day
# (adds and deletes dominate, then replaces, executions, cancels).
ACTION_WEIGHTS = np.array([0.62, 0.17, 0.05, 0.09, 0.004, 0.022])
FPARAMS = np.zeros(gk.N_FPARAMS)
FPARAMS[gk.P_ADD] = 0.42
FPARAMS[gk.P_ADD_SLOPE] = 0.3
FPARAMS[gk.P_MPID] = 0.03
FPARAMS[gk.P_FULL_EXEC] = 0.6
FPARAMS[gk.P_ODD_LOT] = 0.08
FPARAMS[gk.P_NON_PRINTABLE] = 0.15
FPARAMS[gk.P_CROSS_EXEC] = 0.5


def _intents(n: int) -> np.ndarray:
    """``n`` zeroed intent rows (see ``generator_kernel.INTENT_DTYPE``)."""
    return np.zeros(n, gk.INTENT_DTYPE)


@dataclass(frozen=True)
class GeneratedSession:
    """One generated ITCH 5.0 day: messages back to back (no length prefixes) and their columns.

    ``ts_event`` is the venue time of each message as epoch ns; ``ts_recv`` adds a seeded network
    latency of a few microseconds (never decreasing): what a pcap writer uses as record time.
    """

    buf: np.ndarray  # uint8, every message's bytes, in order
    offsets: np.ndarray  # int64 start of each message in buf
    lengths: np.ndarray  # uint32 size of each message (its specified size)
    types: np.ndarray  # uint8 ITCH type letter of each message
    ts_event: np.ndarray  # int64 epoch ns (venue time)
    ts_recv: np.ndarray  # int64 epoch ns (ts_event + latency)
    symbols: np.ndarray  # S8 space-padded symbol of each locate (index = locate - 1)
    date: dt.date
    seed: int
    stats: dict = field(default_factory=dict, compare=False)  # order refs / match numbers used

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def message(self, i: int) -> bytes:
        """The bytes of message ``i``."""
        start = int(self.offsets[i])
        return self.buf[start : start + int(self.lengths[i])].tobytes()

    def type_counts(self) -> dict[str, int]:
        """Number of messages of each type letter."""
        counts = np.bincount(self.types, minlength=256)
        return {chr(c): int(counts[c]) for c in np.flatnonzero(counts)}

    def frames(self) -> np.ndarray:
        """The messages as one batch of ``parsers.frames.FRAME_DTYPE`` rows over ``buf`` (sequence from 1,
        receive times ``ts_recv``, session 0, no flags): what a normalizer takes, without a capture."""
        from parsers.frames import empty_frames

        frames = empty_frames(len(self))
        frames["offset"] = self.offsets
        frames["length"] = self.lengths
        frames["ts_recv"] = self.ts_recv
        frames["sequence"] = np.arange(1, len(self) + 1)
        frames["session"] = 0
        frames["flags"] = 0
        return frames

    def binaryfile_bytes(self) -> np.ndarray:
        """The session as a Nasdaq BinaryFILE image: each message after its 2-byte big-endian length."""
        n = len(self)
        out = np.empty(self.buf.size + 2 * n, np.uint8)
        prefix = self.offsets + 2 * np.arange(n, dtype=np.int64)
        out[prefix] = (self.lengths >> 8).astype(np.uint8)
        out[prefix + 1] = (self.lengths & 0xFF).astype(np.uint8)
        body = np.ones(out.size, np.bool_)
        body[prefix] = False
        body[prefix + 1] = False
        out[body] = self.buf
        return out

    def write(self, path: str | os.PathLike, fmt: str = "pcap", **options):
        """Write the session as a MoldUDP64 pcap (``fmt="pcap"``) or a BinaryFILE (``fmt="itch"``).

        ``options`` go to ``captures.pcap_writer.write_moldudp64_pcap`` / ``write_binaryfile``
        (e.g. ``session``, ``dst_ip``, ``gzip``). Returns the writer's summary.
        """
        from captures import pcap_writer  # imported on use: generating needs no writer

        if fmt == "pcap":
            return pcap_writer.write_moldudp64_pcap(path, self.buf, self.offsets, self.lengths, self.ts_recv, **options)
        if fmt == "itch":
            return pcap_writer.write_binaryfile(path, self.buf, self.offsets, self.lengths, **options)
        raise ValueError(f"unknown format {fmt!r}: 'pcap' or 'itch'")


# ------------------------------------------------------------------------------------------ symbols
def _symbols(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unique 1-4 letter symbols, alphabetical (Nasdaq assigns locates alphabetically)."""
    letters = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)
    seen: set[bytes] = set()
    while len(seen) < n:
        k = 2 * (n - len(seen)) + 16
        length = rng.choice(4, size=k, p=(0.01, 0.07, 0.32, 0.60)) + 1
        chars = letters[rng.integers(0, 26, size=(k, 4))]
        for row, m in zip(chars, length):
            seen.add(row[:m].tobytes())
            if len(seen) == n:
                break
    return np.array(sorted(seen), dtype="S8")


def _padded(symbols: np.ndarray) -> np.ndarray:
    return np.char.ljust(symbols, 8)


# --------------------------------------------------------------------------------- activity profile
def _warp(window: tuple[int, int], profile, knots: int = 257) -> np.ndarray:
    """Times (ns) at ``knots`` equally spaced quantiles of an activity profile over ``window``."""
    tau = np.linspace(0.0, 1.0, 4097)
    density = profile(tau)
    cdf = np.concatenate(([0.0], np.cumsum((density[1:] + density[:-1]) / 2)))
    cdf /= cdf[-1]
    q = np.interp(np.linspace(0.0, 1.0, knots), cdf, tau)
    return window[0] + q * (window[1] - window[0])


PROFILES = (
    lambda t: 0.15 + np.exp(-(1.0 - t) / 0.08),  # pre-market: builds up into the open
    lambda t: 1.0 + 4.0 * np.exp(-t / 0.03) + 3.0 * np.exp(-(1.0 - t) / 0.02),  # U-shaped day
    lambda t: 0.1 + np.exp(-t / 0.05),  # post-market: fades after the close
)


# ------------------------------------------------------------------------------------ the schedule
class _Schedule:
    """Timed messages (halts, crosses after halts, NOII, IPO, ...) collected before the simulation."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, int, int, int]] = []

    def add(self, ts: int, kind: bytes, locate: int = 0, aux1: bytes | int = 0, aux2: bytes | int = 0, ref2: int = 0):
        a1 = aux1[0] if isinstance(aux1, bytes) else aux1
        a2 = aux2[0] if isinstance(aux2, bytes) else aux2
        self.rows.append((int(ts), kind[0], int(locate), int(a1), int(a2), int(ref2)))

    def columns(self) -> np.ndarray:
        cols = _intents(len(self.rows))
        if self.rows:
            arr = np.array(self.rows, dtype=np.int64)
            order = np.argsort(arr[:, 0], kind="stable")
            arr = arr[order]
            cols["ts"] = arr[:, 0]
            cols["kind"] = arr[:, 1]
            cols["locate"] = arr[:, 2]
            cols["aux1"] = arr[:, 3]
            cols["aux2"] = arr[:, 4]
            cols["ref2"] = arr[:, 5].astype(np.uint64)
        return cols


def _spread_times(rng: np.random.Generator, lo: int, hi: int, n: int) -> np.ndarray:
    return np.sort(rng.integers(lo, hi, size=n))


# ------------------------------------------------------------------------------------------ generate
@dataclass(frozen=True)
class _Day:
    """What Python decides before the simulation: symbols, their roles and attributes."""

    symbols: np.ndarray
    weight: np.ndarray
    fair0: np.ndarray
    ipo: int  # symbol index of the IPO released during the day
    halted: np.ndarray  # symbol indices with a regulatory halt
    op_halted: int
    category: np.ndarray
    luld_tier: np.ndarray
    etp: np.ndarray
    reg_sho: np.ndarray  # start-of-day Reg SHO action code per symbol
    mwcb_levels: tuple[int, int, int]  # price8


def generate(
    messages: int,
    symbols: int,
    seed: int,
    date: dt.date = DEFAULT_DATE,
    dlcr: bool = True,
    *,
    max_orders: int = 128,
    zipf_exponent: float = 1.1,
    mwcb_breach: bool = False,
) -> GeneratedSession:
    """Generate a synthetic ITCH 5.0 day of exactly ``messages`` messages over ``symbols`` securities.

    Args:
        messages: number of messages. The fixed messages (directory, NOII, crosses, halts...) take
            about 7 per symbol, and at least ``MIN_FLOW_PER_SYMBOL`` per symbol must be left for
            order flow; a ValueError says how many are needed.
        symbols: number of securities (locates 1..symbols), 4..65535.
        seed: any int; the same arguments give the same bytes.
        date: the session date (for ``ts_event``; the ITCH timestamps are ns since Eastern midnight).
        dlcr: send DLCR price discovery (O) messages for the IPO. False gives a day without any O.
        max_orders: live orders one symbol's book can hold (the simulation's memory is
            ``symbols * max_orders`` orders); the flow keeps books near half of it.
        zipf_exponent: skew of activity across symbols (the k-th busiest gets ~1/k**exponent).
        mwcb_breach: send one market-wide circuit breaker level 1 breach (W). It is a status message
            only: trading does not stop market-wide.

    Returns:
        the session; ``GeneratedSession.write(path, fmt)`` writes it as pcap or BinaryFILE.
    """
    if not 4 <= symbols <= 65535:
        raise ValueError(f"symbols must be within 4..65535, got {symbols}")
    if max_orders < 4:
        raise ValueError("max_orders must be at least 4")
    rng = np.random.default_rng(seed)
    kernel_seed = np.uint64(rng.integers(0, 2**63, dtype=np.int64))
    day = _plan_day(rng, symbols, zipf_exponent)
    noii_rounds = int(np.clip(messages // (symbols * 200), 1, 10))

    admin = _directory(rng, day)
    sched = _schedule(rng, day, messages, noii_rounds, dlcr, mwcb_breach)
    sched_ts = sched["ts"]
    sched_phase_end = np.searchsorted(sched_ts, [T_START_MARKET, T_END_MARKET, T_END_MESSAGES]).astype(np.int64)
    n_sched = np.diff(np.concatenate(([0], sched_phase_end)))
    n_admin = admin["kind"].shape[0]
    # Rows each phase must hold besides order flow: its system event, its crosses, its schedule.
    mandatory = np.array([1, 1 + symbols, 1 + symbols]) + n_sched
    flow = messages - n_admin - int(mandatory.sum()) - 2
    if flow < MIN_FLOW_PER_SYMBOL * symbols:
        raise ValueError(
            f"{messages} messages are too few for {symbols} symbols: the day's fixed messages take "
            f"{messages - flow}; ask for at least {messages - flow + MIN_FLOW_PER_SYMBOL * symbols}"
        )
    flow_per_phase = np.floor(np.array(PHASE_SHARE) * flow).astype(np.int64)
    flow_per_phase[1] += flow - flow_per_phase.sum()
    phase_target = n_admin + np.cumsum(mandatory + flow_per_phase)

    cols = _intents(messages)
    cols[:n_admin] = admin
    expected = day.weight * flow
    # Wider spreads for dearer stocks: about 1 cent at $5, 10 cents at $500.
    half_spread = (day.fair0 * rng.uniform(0.5, 1.5, symbols) / 10_000).astype(np.int64)
    # The fair value moves by about half the half spread; aiming at a 2% daily range, but never so
    # often that the book cannot follow (then the spread collapses onto stale quotes): a small
    # session has quieter prices rather than a broken book.
    step_ticks = np.maximum(1, half_spread // 2)
    moves = (0.02 * day.fair0 / (1.6 * step_ticks)) ** 2
    move_prob = np.clip(moves / np.maximum(expected, 1.0), 0.0, 0.1)
    depth = 1.0 + day.fair0 / 5000.0
    warp = np.stack([_warp(w, p) for w, p in zip(PHASE_WINDOW, PROFILES)])
    cum_weight = np.cumsum(day.weight)
    cum_weight /= cum_weight[-1]
    sym = np.zeros((symbols, gk.N_SY), np.int64)
    sym[:, gk.SY_FAIR] = sym[:, gk.SY_FAIR0] = day.fair0
    sym[:, gk.SY_MOVE_STEP] = step_ticks
    sym[:, gk.SY_HALF_SPREAD] = half_spread
    sym[day.ipo, gk.SY_STATE] = gk.STATE_NOT_RELEASED | gk.STATE_HALTED
    symf = np.zeros((symbols, gk.N_SF))
    symf[:, gk.SF_MOVE_PROB] = move_prob
    symf[:, gk.SF_DEPTH] = depth
    symf[:, gk.SF_CUM_WEIGHT] = cum_weight

    written, used, refs, matches = gk.simulate(
        cols,
        n_admin,
        int(admin["ts"][-1]),
        kernel_seed,
        np.array([T_START_SYSTEM, T_START_MARKET, T_END_MARKET, T_END_SYSTEM, T_END_MESSAGES], np.int64),
        np.array(PHASE_WINDOW, np.int64),
        phase_target.astype(np.int64),
        warp,
        np.searchsorted(cum_weight, np.arange(4 * symbols) / (4 * symbols), side="right").astype(np.int64),
        sym,
        symf,
        sched,
        sched_phase_end,
        max_orders,
        ACTION_WEIGHTS,
        FPARAMS,
    )
    if written != messages or used != sched_ts.shape[0]:  # the kernel's budget arithmetic is broken
        raise AssertionError(f"generated {written} messages instead of {messages}, {used} scheduled of {sched_ts.shape[0]}")
    buf, offsets, lengths = _encode(cols, day)
    ts_event = VenueClock(date).to_epoch(cols["ts"])
    latency = 2_000 + rng.exponential(3_000.0, size=messages).astype(np.int64)
    ts_recv = np.maximum.accumulate(ts_event + latency)
    return GeneratedSession(
        buf=buf,
        offsets=offsets,
        lengths=lengths,
        types=np.ascontiguousarray(cols["kind"]),
        ts_event=ts_event,
        ts_recv=ts_recv,
        symbols=day.symbols,
        date=date,
        seed=seed,
        stats={"order_refs": int(refs), "match_number": int(matches)},
    )


def _plan_day(rng: np.random.Generator, n: int, zipf_exponent: float) -> _Day:
    syms = _padded(_symbols(rng, n))
    rank = rng.permutation(n)
    weight = 1.0 / (rank + 1.0) ** zipf_exponent
    weight /= weight.sum()
    # Price levels log-uniform in $5..$500, in ticks of $0.01.
    fair0 = np.round(np.exp(rng.uniform(np.log(500), np.log(50_000), n))).astype(np.int64)
    roles = rng.permutation(n)
    n_halts = int(np.clip(n // 100, 1, 20))
    return _Day(
        symbols=syms,
        weight=weight,
        fair0=fair0,
        ipo=int(roles[0]),
        op_halted=int(roles[1]),
        halted=np.sort(roles[2 : 2 + n_halts]),
        category=rng.choice(np.array([b"Q", b"G", b"S", b"N", b"P", b"Z"], "S1"), n, p=(0.35, 0.15, 0.15, 0.2, 0.1, 0.05)),
        luld_tier=np.where(rank < max(1, n // 5), b"1", b"2").astype("S1"),
        etp=(rng.random(n) < 0.1),
        reg_sho=rng.choice(np.array([b"0", b"1", b"2"], "S1"), n, p=(0.95, 0.03, 0.02)),
        mwcb_levels=_mwcb_levels(rng),
    )


def _mwcb_levels(rng: np.random.Generator) -> tuple[int, int, int]:
    """Level 1/2/3 (7%, 13%, 20% declines) of a prior S&P 500 close near 5,100, in price8."""
    close = int(rng.integers(505_000, 515_000)) * 1_000_000  # cents -> price8
    return tuple(int(close * (100 - d) // 100 // 1_000_000 * 1_000_000) for d in (7, 13, 20))


def _directory(rng: np.random.Generator, day: _Day) -> np.ndarray:
    """The messages before the start of system hours: S O, R, H, Y per symbol, some L, V."""
    n = day.symbols.shape[0]
    top = np.argsort(-day.weight)[: min(n, 20)]
    l_loc = np.repeat(top, rng.integers(1, 4, size=top.shape[0]))
    n_rows = 1 + 3 * n + l_loc.shape[0] + 1
    cols = _intents(n_rows)
    loc = np.arange(1, n + 1)
    kind = np.concatenate(([ord("S")], np.full(n, ord("R")), np.full(n, ord("H")), np.full(n, ord("Y")),
                           np.full(l_loc.shape[0], ord("L")), [ord("V")]))
    cols["kind"] = kind
    cols["locate"] = np.concatenate(([0], loc, loc, loc, l_loc + 1, [0]))
    state = np.full(n, ord("T"))
    state[day.ipo] = ord("H")
    reason = np.full(n, REASON_NONE)
    reason[day.ipo] = REASON_IPO_NOT_RELEASED
    # L: aux1 primary market maker (the first listed), aux2 the MPID index.
    first = np.concatenate(([True], l_loc[1:] != l_loc[:-1]))
    l_mpid = rng.integers(0, len(MPIDS), size=l_loc.shape[0])
    cols["aux1"] = np.concatenate(([ord("O")], np.zeros(n), state, day.reg_sho.view(np.uint8),
                                      np.where(first, ord("Y"), ord("N")), [0]))
    cols["aux2"] = np.concatenate(([0], np.zeros(n), reason, np.zeros(n), l_mpid, [0]))
    cols["ts"] = T_START_MESSAGES + int(rng.integers(0, 5_000_000)) + np.concatenate(
        ([0], np.cumsum(rng.integers(300, 3_000, size=n_rows - 1)))
    )
    return cols


def _schedule(rng, day: _Day, messages: int, noii_rounds: int, dlcr: bool, mwcb_breach: bool) -> np.ndarray:
    """The timed messages of the day, sorted by time (the kernel fills in their book-dependent numbers)."""
    sch = _Schedule()
    n = day.symbols.shape[0]
    ipo = day.ipo + 1
    trading = np.array([s for s in range(n) if s != day.ipo]) + 1
    # IPO: quoting period announced pre-market, released for quotation, NOII and DLCR price
    # discovery, the IPO (halt) cross, then trading.
    sch.add(_at(8) + int(rng.integers(0, SECOND)), b"K", ipo, b"A", ref2=T_IPO_QUOTE // SECOND)
    sch.add(T_IPO_QUOTE, b"H", ipo, b"Q", REASON_IPO_QUOTE)
    for t in _spread_times(rng, T_IPO_QUOTE + 5 * MINUTE, T_IPO_CROSS - SECOND, 3):
        sch.add(t, b"I", ipo, aux2=b"H")
    if dlcr:
        times = _spread_times(rng, T_IPO_QUOTE + 6 * MINUTE, T_IPO_CROSS - SECOND, 3)
        for j, t in enumerate(times):
            sch.add(t, b"O", ipo, b"Y" if j == len(times) - 1 else b"N")
    sch.add(T_IPO_CROSS, b"Q", ipo, b"H")
    sch.add(T_IPO_CROSS + 100_000, b"H", ipo, b"T", REASON_NONE)
    # Opening and closing NOII for every trading symbol.
    for (lo, hi), cross in ((T_OPEN_NOII, b"O"), (T_CLOSE_NOII, b"C")):
        for loc in np.repeat(trading, noii_rounds):
            sch.add(int(rng.integers(lo, hi)), b"I", int(loc), aux2=cross)
    # Regulatory halts of a few symbols: an LULD pause (5 minutes, with its auction collar) or a news halt (30 minutes).
    for j, s in enumerate(day.halted):
        loc = int(s) + 1
        t0 = int(rng.integers(_at(10), _at(15)))
        luld = rng.random() < 0.7 or j == 0  # at least one LULD pause, so every day has a J
        t1 = t0 + (5 if luld else 30) * MINUTE
        sch.add(t0, b"H", loc, b"H", REASON_LULD if luld else REASON_NEWS)
        if luld:
            sch.add(t0 + 1_000_000, b"J", loc, ref2=0)
        sch.add(t1 - 3 * SECOND, b"I", loc, aux2=b"H")
        sch.add(t1, b"Q", loc, b"H")
        sch.add(t1 + 100_000, b"H", loc, b"T", REASON_NONE)
    # An operational halt on Nasdaq for one symbol.
    t0 = int(rng.integers(_at(10), _at(15)))
    sch.add(t0, b"h", day.op_halted + 1, b"Q", b"H")
    sch.add(t0 + 2 * MINUTE, b"h", day.op_halted + 1, b"Q", b"T")
    # Retail price improvement interest on a few symbols, then withdrawn.
    for loc in rng.choice(trading, size=min(5, trading.shape[0]), replace=False):
        t0 = int(rng.integers(_at(9, 45), _at(15)))
        sch.add(t0, b"N", int(loc), rng.choice([b"B", b"S", b"A"]))
        sch.add(t0 + 10 * MINUTE, b"N", int(loc), b"N")
    # A short sale price test triggered intraday.
    sch.add(int(rng.integers(_at(11, 30), _at(14))), b"Y", int(rng.choice(trading)), b"1")
    # Broken trades, late enough that there is something to break.
    for t in _spread_times(rng, _at(10, 30), _at(15, 55), int(np.clip(messages // 100_000, 2, 20))):
        sch.add(int(t), b"B")
    if mwcb_breach:
        sch.add(_at(13), b"W", 0, b"1")
    return sch.columns()


# ------------------------------------------------------------------------------------------ encoding
@nb.njit(cache=True, nogil=True)
def _scatter_rows(buf, offsets, rows):
    """Copy row ``i`` of ``rows`` (n, size) to ``buf[offsets[i]:offsets[i] + size]``."""
    size = rows.shape[1]
    for i in range(rows.shape[0]):
        o = offsets[i]
        buf[o : o + size] = rows[i]


class _Rows:
    """The intent columns of the messages of one type (gathered on first use)."""

    def __init__(self, cols: np.ndarray, idx: np.ndarray, day: _Day) -> None:
        self._cols = cols
        self._idx = idx
        self._cache: dict[str, np.ndarray] = {}
        self.day = day

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._cache:
            self._cache[name] = self._cols[name][self._idx]
        return self._cache[name]

    def char(self, name: str) -> np.ndarray:
        """A u1 code column as one-byte strings."""
        return getattr(self, name).view("S1")

    @property
    def stock(self) -> np.ndarray:
        return self.day.symbols[self.locate.astype(np.int64) - 1]

    @property
    def symbol_index(self) -> np.ndarray:
        return self.locate.astype(np.int64) - 1


def _directory_fields(r: _Rows) -> dict:
    s = r.symbol_index
    d = r.day
    etp = d.etp[s]
    return {
        "stock": r.stock,
        "market_category": d.category[s],
        "financial_status": b"N",
        "round_lot_size": np.uint32(100),
        "round_lots_only": b"N",
        "issue_classification": np.where(etp, b"Q", b"C").astype("S1"),
        "issue_subtype": np.where(etp, b"I ", b"Z ").astype("S2"),
        "authenticity": b"P",
        "short_sale_threshold": b"N",
        "ipo_flag": np.where(s == d.ipo, b"Y", b"N").astype("S1"),
        "luld_tier": d.luld_tier[s],
        "etp_flag": np.where(etp, b"Y", b"N").astype("S1"),
        "etp_leverage": np.where(etp, 1, 0).astype(np.uint32),
        "inverse": b"N",
    }


def _dlcr_fields(r: _Rows) -> dict:
    near = r.price.astype(np.int64)
    band = np.maximum(near // 10, 1)
    return {
        "stock": r.stock,
        "open_eligibility": r.char("aux1"),
        "min_allowable_price": r.price2,
        "max_allowable_price": r.price3,
        "near_execution_price": r.price,
        "near_execution_time": r.ref2,
        "lower_price_collar": np.maximum(near - band, 1).astype(np.uint32),
        "upper_price_collar": (near + band).astype(np.uint32),
    }


# One builder per message type: intent rows -> field columns for ``itch50.encode_columns``. The
# header (locate, tracking number, timestamp) is added for every type.
FIELD_BUILDERS = {
    b"S": lambda r: {"event_code": r.char("aux1")},
    b"R": _directory_fields,
    b"H": lambda r: {"stock": r.stock, "trading_state": r.char("aux1"), "reason": REASONS[r.aux2]},
    b"Y": lambda r: {"stock": r.stock, "reg_sho_action": r.char("aux1")},
    b"L": lambda r: {
        "mpid": MPIDS[r.aux2], "stock": r.stock, "primary_market_maker": r.char("aux1"),
        "market_maker_mode": b"N", "participant_state": b"A",
    },
    b"V": lambda r: dict(zip(("level_1", "level_2", "level_3"), (np.uint64(v) for v in r.day.mwcb_levels))),
    b"W": lambda r: {"breached_level": r.char("aux1")},
    b"K": lambda r: {
        "stock": r.stock, "release_time": r.ref2.astype(np.uint32), "release_qualifier": r.char("aux1"),
        "ipo_price": r.price,
    },
    b"J": lambda r: {
        "stock": r.stock, "ref_price": r.price, "upper_price": r.price2, "lower_price": r.price3,
        "extension": r.ref2.astype(np.uint32),
    },
    b"h": lambda r: {"stock": r.stock, "market_code": r.char("aux1"), "halt_action": r.char("aux2")},
    b"A": lambda r: {"order_ref": r.ref, "side": r.char("aux1"), "shares": r.shares, "stock": r.stock, "price": r.price},
    b"F": lambda r: {
        "order_ref": r.ref, "side": r.char("aux1"), "shares": r.shares, "stock": r.stock, "price": r.price,
        "attribution": MPIDS[r.aux2],
    },
    b"E": lambda r: {"order_ref": r.ref, "executed_shares": r.shares, "match_number": r.ref2},
    b"C": lambda r: {
        "order_ref": r.ref, "executed_shares": r.shares, "match_number": r.ref2, "printable": r.char("aux1"),
        "execution_price": r.price,
    },
    b"X": lambda r: {"order_ref": r.ref, "cancelled_shares": r.shares},
    b"D": lambda r: {"order_ref": r.ref},
    b"U": lambda r: {"original_ref": r.ref, "new_ref": r.ref2, "shares": r.shares, "price": r.price},
    b"P": lambda r: {
        "order_ref": r.ref, "side": r.char("aux1"), "shares": r.shares, "stock": r.stock, "price": r.price,
        "match_number": r.ref2,
    },
    b"Q": lambda r: {
        "shares": r.shares.astype(np.uint64), "stock": r.stock, "cross_price": r.price, "match_number": r.ref2,
        "cross_type": r.char("aux1"),
    },
    b"B": lambda r: {"match_number": r.ref2},
    b"I": lambda r: {
        "paired_shares": r.shares.astype(np.uint64), "imbalance_shares": r.ref2, "imbalance_direction": r.char("aux1"),
        "stock": r.stock, "far_price": r.price2, "near_price": r.price3, "current_ref_price": r.price,
        "cross_type": r.char("aux2"), "price_variation": b"L",
    },
    b"N": lambda r: {"stock": r.stock, "interest_flag": r.char("aux1")},
    b"O": _dlcr_fields,
}
assert set(FIELD_BUILDERS) == set(itch50.MESSAGES)


def _encode(cols: np.ndarray, day: _Day) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wire bytes of every intent row: (buf, offsets int64, lengths uint32)."""
    kind = cols["kind"]
    lengths = itch50.SIZE_BY_CODE[kind]
    if (lengths == 0).any():
        raise AssertionError("the kernel wrote a row with no ITCH type")
    offsets = np.zeros(kind.shape[0], np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    buf = np.empty(int(lengths.sum()), np.uint8)
    order = np.argsort(kind, kind="stable")
    bounds = np.searchsorted(kind[order], np.arange(257))
    for code in range(256):
        lo, hi = bounds[code], bounds[code + 1]
        if lo == hi:
            continue
        idx = order[lo:hi]
        r = _Rows(cols, idx, day)
        letter = bytes([code])
        fields = FIELD_BUILDERS[letter](r)
        loc = r.locate
        fields["stock_locate"] = loc
        fields["tracking_number"] = np.where(loc == 0, 0, 1 + loc % 8).astype(np.uint16)
        fields["timestamp"] = r.ts.astype(np.uint64)
        rows = itch50.encode_columns(letter, fields, n=idx.shape[0])
        _scatter_rows(buf, offsets[idx], rows)
    return buf, offsets, lengths.astype(np.uint32)
