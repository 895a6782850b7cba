"""`feedhandler book` against MeatPy's book and the reference book, and replay's book outputs."""
import json
from collections import Counter
from decimal import Decimal

import numpy as np
import pyarrow.parquet as pq
import pytest

from captures.generator import generate
from feedhandler.book import price_decimal
from feedhandler.cli import main
from orderbook.records import BBO, L2
from tests.orderbook.meatpy_book import meatpy_books, reference_books
from tests.orderbook.reference_book import ReferenceBooks


@pytest.fixture(scope="module")
def session_file(tmp_path_factory):
    """A generated day without DLCR `O` messages (meatpy 0.5 misreads them), as BinaryFILE and pcap."""
    session = generate(messages=40_000, symbols=25, seed=5, dlcr=False)
    root = tmp_path_factory.mktemp("book")
    itch, pcap = root / "day.itch", root / "day.pcap"
    session.write(itch, "itch")
    session.write(pcap, "pcap")
    return session, itch, pcap


def book_json(capsys, *argv):
    assert main(["book", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def as_levels(levels):
    return [(int(Decimal(str(p)) * 1_000_000_000), s, c) for p, s, c in levels]


def busiest_symbols(path, n):
    books, symbols, events = reference_books(path)
    per_inst = Counter(events["instrument_id"].tolist())
    by_id = {v: k for k, v in symbols.items()}
    return [by_id[i] for i, _ in per_inst.most_common(n) if i in by_id]


def test_book_agrees_with_meatpy_level_by_level(session_file, capsys):
    _, itch, pcap = session_file
    symbols = busiest_symbols(itch, 4)
    theirs = meatpy_books(itch, symbols)
    for symbol in symbols:
        for capture in (itch, pcap):  # same book from either framing
            got = book_json(capsys, capture, "--symbol", symbol, "--depth", 10, "--date", "2024-03-15")
            assert got["symbol"] == symbol
            assert as_levels(got["bids"]) == theirs[symbol].bids[:10], symbol
            assert as_levels(got["asks"]) == theirs[symbol].asks[:10], symbol
        assert not theirs[symbol].problems


def test_book_at_a_time_includes_every_message_stamped_at_or_before_it(session_file, capsys):
    _, itch, _ = session_file
    books, symbols, events = reference_books(itch)
    symbol = busiest_symbols(itch, 1)[0]
    inst = symbols[symbol]
    mine = events[events["instrument_id"] == inst]
    cut = int(mine["ts_event"][len(mine) // 2])  # a time some of its messages carry
    ref = ReferenceBooks()
    ref.apply_all(events[events["ts_event"] <= cut])
    iso = np.datetime_as_string(np.datetime64(cut, "ns"), unit="ns") + "Z"
    got = book_json(capsys, itch, "--symbol", symbol, "--at", iso, "--depth", 5, "--date", "2024-03-15")
    bids, asks = ref.l2(inst, 5)
    assert as_levels(got["bids"]) == bids and as_levels(got["asks"]) == asks
    assert got["ts_event"] == cut


def test_book_unknown_symbol_is_one_line(session_file, capsys):
    _, itch, _ = session_file
    assert main(["book", str(itch), "--symbol", "NOPE", "--date", "2024-03-15"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "NOPE" in err


def test_price_decimal_is_exact():
    assert str(price_decimal(27_370_000_000)) == "27.37"
    assert str(price_decimal(100_000_000_000)) == "100"
    assert str(price_decimal(1)) == "1E-9" or str(price_decimal(1)) == "0.000000001"


def test_replay_writes_books_and_bars(session_file, tmp_path, capsys):
    session, _, pcap = session_file
    assert main(["replay", str(pcap), "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("messages", "seconds", "msgs_per_s", "integrity"):
        assert key in summary
    assert summary["integrity"] == {} and summary["messages"] == len(session)
    bbo = pq.read_table(tmp_path / "bbo.parquet")
    assert bbo.column_names == [c.name for c in BBO.public_columns]
    assert bbo.num_rows == summary["rows"]["bbo"] > 0
    l2 = pq.read_table(tmp_path / "l2.parquet")
    assert l2.column_names == [c.name for c in L2.public_columns] and l2.num_rows == summary["rows"]["l2"]
    for interval in ("1s", "1m", "5m", "1h", "1d"):
        bars = pq.read_table(tmp_path / f"ohlcv_{interval}.parquet").to_pydict()
        assert len(bars["ts_event"]) == summary["rows"][f"ohlcv_{interval}"] > 0
    day = pq.read_table(tmp_path / "ohlcv_1d.parquet").to_pydict()
    trades = pq.read_table(tmp_path / "trades.parquet").to_pydict()
    printed = sum(s for s, p in zip(trades["size"], trades["printable"]) if p)
    broken = set(pq.read_table(tmp_path / "broken_trades.parquet").to_pydict()["match_id"])
    broken_size = sum(s for s, p, m in zip(trades["size"], trades["printable"], trades["match_id"]) if p and m in broken)
    assert sum(day["volume"]) == printed - broken_size
    # The final BBO row of each instrument is its book at the end.
    last = {}
    for row in bbo.to_pylist():
        last[row["instrument_id"]] = row
    books, _, _ = reference_books(pcap)
    for inst, row in last.items():
        assert (row["bid_px"], row["bid_sz"], row["ask_px"], row["ask_sz"]) == tuple(
            books.bbo(inst)[i] for i in (0, 1, 3, 4))


def test_null_sink_writes_nothing_and_conflation_writes_fewer_rows(session_file, tmp_path, capsys):
    _, _, pcap = session_file
    out = tmp_path / "none"
    assert main(["replay", str(pcap), "--out", str(out), "--sink", "null", "--json"]) == 0
    null = json.loads(capsys.readouterr().out)
    assert not out.exists() and null["rows"]["bbo"] > 0
    assert main(["replay", str(pcap), "--out", str(tmp_path / "c"), "--conflate", "1s", "--json"]) == 0
    conflated = json.loads(capsys.readouterr().out)
    assert conflated["rows"]["bbo"] <= null["rows"]["bbo"]
    assert conflated["rows"]["l2"] <= null["rows"]["l2"]
