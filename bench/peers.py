"""Peer ITCH 5.0 decoders, each driven through its fastest documented path.

Every ``run_<peer>(path)`` decodes a Nasdaq BinaryFILE (each message prefixed by a 2-byte big-endian
length) and returns ``(messages, seconds)``: how many messages the peer produced and the wall time from
opening the file to the last message, file read included. Imports happen before the clock starts.

Each peer yields one Python object per message whose constructor unpacks every field, so consuming the
iterator is a full decode. The iterator is drained at C speed (``deque(zip(it, count()), maxlen=0)``)
so no per-message bytecode of ours is charged to the peer.

``types_<peer>(path)`` is the untimed check: it counts the decoded messages by ITCH type letter and sums
a few decoded fields, so the harness can compare each peer with the file's ground truth.

Run as a script, one peer per process (what ``bench/decode.py`` does, so each peer starts from a clean
interpreter and ``itchfeed`` cannot pick up the ``itchcpp`` backend)::

    python bench/peers.py itchfeed FILE [--check]

prints one JSON object.

``books_<peer>(path, symbols)`` (itchcpp's ``BookManager``, meatpy's ``ITCH50MarketProcessor``) build
every order book of a file instead, for ``bench/books.py``; ``python bench/peers.py books PEER FILE
SYMBOLS_JSON`` runs one in its own interpreter and prints one JSON object (timing and final books).
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import sys
import time

PEERS = ("itchcpp", "itchfeed", "meatpy")

# itchfeed swaps in the itchcpp backend at import time when itchcpp is installed; the pure-Python
# peer is only measured if this is set before ``itch`` is first imported.
os.environ["ITCH_NO_CPP"] = "1"


def _drain(iterator) -> int:
    """Consume ``iterator`` without running Python code per item; return how many items it gave."""
    counter = itertools.count()
    collections.deque(zip(iterator, counter), maxlen=0)
    return next(counter)


# ---------------------------------------------------------------- itchfeed (pure Python)
def _itchfeed_parser():
    import itch
    import itch.parser

    if itch.USING_CPP_BACKEND or itch.parser.MessageParser.__module__ != "itch.parser":
        raise RuntimeError("itch was imported with the itchcpp backend; import bench.peers first")
    return itch.parser.MessageParser()


def run_itchfeed(path) -> tuple[int, float]:
    """itchfeed 1.6 (``import itch``), pure Python: ``MessageParser().parse_stream(data)``.

    The whole file is read into one ``bytes`` (timed) and each message is ``struct.unpack``ed into an
    ``itch.messages`` object. ``parse_stream`` over the buffer measured ~5% faster than
    ``parse_file(f, cachesize)`` at 4 KiB to 1 MiB chunks. It stops after the end-of-messages
    system event (``S`` with code ``C``), which it yields.
    """
    parser = _itchfeed_parser()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        data = f.read()
    n = _drain(parser.parse_stream(data))
    return n, time.perf_counter() - t0


def types_itchfeed(path) -> dict:
    with open(path, "rb") as f:
        data = f.read()
    return _census(_itchfeed_parser().parse_stream(data), "message_type", "shares", "price")


# ---------------------------------------------------------------- itchcpp (C++ via pybind11)
def run_itchcpp(path) -> tuple[int, float]:
    """itchcpp 1.6 (C++ core, pybind11): ``itchcpp.parser.MessageParser().parse_file(f)``.

    The C++ parser reads the open file in chunks (default 64 KiB), frames and decodes every field of
    each message into a native message object. Measured against the alternatives on 2M messages:
    ``parse_file`` at the default chunk size was ~10% faster than ``parse_stream`` over the whole
    file read into ``bytes``, than larger chunks, and than ``parse_messages(data, callback)``. Stops
    after the end-of-messages system event, which it yields. (``BookManager.process_stream`` also
    walks a buffer in C++ but builds books and reports no message count: not a decoder peer.)
    """
    from itchcpp.parser import MessageParser

    parser = MessageParser()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        n = _drain(parser.parse_file(f))
    return n, time.perf_counter() - t0


def types_itchcpp(path) -> dict:
    from itchcpp.parser import MessageParser

    with open(path, "rb") as f:
        return _census(MessageParser().parse_file(f), "message_type", "shares", "price")


# ---------------------------------------------------------------- meatpy (pure Python)
def run_meatpy(path) -> tuple[int, float]:
    """meatpy 0.5: ``meatpy.itch50.ITCH50MessageReader().read_file(path)``.

    Its only ITCH 5.0 decoding path: reads 4 KiB chunks and builds one ``ITCH50MarketMessage``
    subclass per message with ``struct.unpack``. (``ITCH50MarketProcessor`` adds book building on
    top; not measured here.) meatpy 0.5 declares the DLCR ``O`` message as 52 bytes instead of 48, so
    a file with ``O`` messages raises ``struct.error`` there: feed it files generated without DLCR.
    """
    from meatpy.itch50 import ITCH50MessageReader

    reader = ITCH50MessageReader()
    t0 = time.perf_counter()
    n = _drain(reader.read_file(path))
    return n, time.perf_counter() - t0


def types_meatpy(path) -> dict:
    from meatpy.itch50 import ITCH50MessageReader

    return _census(ITCH50MessageReader().read_file(path), "type", "shares", "price")


# ---------------------------------------------------------------- shared
def _census(messages, type_attr: str, shares_attr: str, price_attr: str) -> dict:
    """Count messages by type letter; sum shares and price over Add Order (A, F) messages.

    A peer that merely frames messages would get the counts right; the sums show the fields were
    decoded at the right offsets. Stops at the first error and reports it.
    """
    counts: collections.Counter = collections.Counter()
    add_shares = add_price = 0
    error = None
    try:
        for m in messages:
            t = getattr(m, type_attr)
            t = t.decode() if isinstance(t, bytes) else str(t)
            counts[t] += 1
            if t in ("A", "F"):
                add_shares += int(getattr(m, shares_attr))
                add_price += int(getattr(m, price_attr))
    except Exception as e:  # the check reports a peer's failure rather than crash the bench
        error = f"{_ename(e)}: {e} (after {sum(counts.values())} messages)"
    return {
        "messages": sum(counts.values()),
        "by_type": dict(sorted(counts.items())),
        "add_shares": add_shares,
        "add_price": add_price,
        "error": error,
    }


def _ename(e: BaseException) -> str:
    t = type(e)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


# ---------------------------------------------------------------- book builders (bench/books.py)
# Each ``books_<peer>(path, symbols)`` builds the order books of a BinaryFILE with the peer's own book
# engine and returns {"seconds": wall time from opening the file to the last message applied, plus what
# the check needs}. ``symbols`` are the directory's symbols (stripped), known before the clock starts.
def books_itchcpp(path, symbols) -> dict:
    """itchcpp 1.6's native ``itchcpp.book.BookManager``: one C++ pass, every symbol.

    No ``track_symbol`` call: an empty universe makes the manager keep an L3 book (orders by reference,
    FIFO price levels, BBO) for every symbol the stock directory announces. ``process_stream(bytes)``
    frames, decodes and applies every message of the buffer in C++; it is given the whole file read into
    one ``bytes`` (read timed). It produces no output rows (the BBO change callback is not exposed to
    Python) and reports no message count. Check: each symbol's final BBO (``L3Book.bbo()``).
    """
    from itchcpp.book import BookManager

    manager = BookManager()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        data = f.read()
    manager.process_stream(data)
    seconds = time.perf_counter() - t0
    bbo = {}
    for s in symbols:
        book = manager.book_for_symbol(s)
        if book is not None:
            b = book.bbo()
            # prices come back as float dollars: back to the wire's 4-decimal integers
            bbo[s] = [round(b.bid_price * 10_000) if b.has_bid else None, b.bid_shares if b.has_bid else 0,
                      round(b.ask_price * 10_000) if b.has_ask else None, b.ask_shares if b.has_ask else 0]
    return {"seconds": seconds, "books": manager.book_count(), "bbo": bbo}


def books_meatpy(path, symbols, depth: int = 10) -> dict:
    """meatpy 0.5's ``ITCH50MarketProcessor`` fed by ``ITCH50MessageReader().read_file(path)``.

    A processor rebuilds the book of one instrument (its constructor takes the symbol), so every symbol
    gets its own processor, created when its stock directory message (R) arrives, and each message goes
    to the processor of its stock locate (a dict lookup per message, charged to meatpy); messages with
    locate 0 (system events, MWCB) go to every processor, and the system events that came before a
    processor existed are replayed into it. That is cheaper than meatpy's usual one-processor-per-symbol
    pass over the whole file (every message to every processor) and gives the same books: a processor
    ignores other symbols' adds and any reference it did not see added. Exceptions meatpy raises on a
    book inconsistency are caught and counted. Check: the top ``depth`` levels of every book at the end.
    """
    import datetime as dt

    from meatpy.itch50 import ITCH50MarketProcessor, ITCH50MessageReader
    from meatpy.level import VolumeInconsistencyException
    from meatpy.lob import ExecutionPriorityExceptionList

    day = dt.datetime(2024, 3, 15)  # only used to stamp meatpy's snapshots
    reader = ITCH50MessageReader()
    procs: dict = {}
    market_wide: list = []
    problems: collections.Counter = collections.Counter()
    n = 0
    t0 = time.perf_counter()
    for m in reader.read_file(path):
        n += 1
        loc = m.stock_locate
        try:
            if loc:
                p = procs.get(loc)
                if p is None:
                    if m.type != b"R":
                        continue
                    p = procs[loc] = ITCH50MarketProcessor(m.stock, day)
                    for s in market_wide:
                        p.process_message(s)
                p.process_message(m)
            else:
                market_wide.append(m)
                for p in procs.values():
                    p.process_message(m)
        except ExecutionPriorityExceptionList:
            problems["priority_violation"] += 1
        except VolumeInconsistencyException:
            problems["size_below_zero"] += 1
    seconds = time.perf_counter() - t0
    books = {}
    for p in procs.values():
        lob = p.current_lob
        if lob is None:
            continue
        books[p.instrument.decode().rstrip()] = [
            [[int(lv.price), int(lv.volume), len(lv.queue)] for lv in levels[:depth]]
            for levels in (lob.bid_levels, lob.ask_levels)]
    return {"seconds": seconds, "messages": n, "books": len(books), "processors": len(procs),
            "problems": dict(problems), "levels": books}


BOOK_RUNNERS = {"itchcpp": books_itchcpp, "meatpy": books_meatpy}


def book_main(argv) -> int:
    """``python bench/peers.py books PEER FILE SYMBOLS_JSON``: one book builder, one JSON line."""
    import argparse

    ap = argparse.ArgumentParser(description="Build every book of a BinaryFILE with one peer; print JSON.")
    ap.add_argument("peer", choices=tuple(BOOK_RUNNERS))
    ap.add_argument("path")
    ap.add_argument("symbols", help="JSON file: list of the directory's symbols")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs; the fastest is reported (check from the last)")
    args = ap.parse_args(argv)
    with open(args.symbols) as f:
        symbols = json.load(f)
    out: dict = {"peer": args.peer, "version": peer_version(args.peer), "path": args.path}
    try:
        runs = [BOOK_RUNNERS[args.peer](args.path, symbols) for _ in range(args.repeat)]
        out.update(runs[-1])
        out["seconds"] = min(r["seconds"] for r in runs)
        out["all_seconds"] = [r["seconds"] for r in runs]
    except Exception as e:
        out["error"] = f"{_ename(e)}: {e}"
    import resource

    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


RUNNERS = {"itchcpp": run_itchcpp, "itchfeed": run_itchfeed, "meatpy": run_meatpy}
CHECKS = {"itchcpp": types_itchcpp, "itchfeed": types_itchfeed, "meatpy": types_meatpy}


def peer_version(peer: str) -> str:
    from importlib.metadata import version

    return version(peer)


def main(argv=None) -> int:
    import argparse

    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # ``make bench`` runs every bench/*.py bare: this one is decode.py's helper
        print("bench/peers.py runs one peer for bench/decode.py; see --help")
        return 0
    if argv[0] == "books":  # bench/books.py's book builders
        return book_main(argv[1:])
    ap = argparse.ArgumentParser(description="Run one peer decoder on a BinaryFILE; print JSON.")
    ap.add_argument("peer", choices=PEERS)
    ap.add_argument("path")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs; the fastest is reported")
    ap.add_argument("--check", action="store_true", help="also run the untimed type census")
    args = ap.parse_args(argv)

    out: dict = {"peer": args.peer, "version": peer_version(args.peer), "path": args.path}
    try:
        runs = [RUNNERS[args.peer](args.path) for _ in range(args.repeat)]
        out["messages"] = runs[0][0]
        out["seconds"] = min(s for _, s in runs)
        out["all_seconds"] = [s for _, s in runs]
    except Exception as e:
        out["error"] = f"{_ename(e)}: {e}"
    if args.check:
        out["check"] = CHECKS[args.peer](args.path)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
