"""MeatPy's ITCH 5.0 book and ``ReferenceBooks`` (fed by ``ItchNormalizer``) agree on a generated day.

Both read the same BinaryFILE; for a few symbols (the busiest, the next, a middling and a quiet one) the
L2 books are compared level by level, price, size and order count, at the end of the day and at a cut
in the middle of it. See ``meatpy_book`` for MeatPy's quirks and why the generated day avoids them.
"""
from __future__ import annotations

import struct
from collections import Counter

import numpy as np
import pytest

from captures.generator import generate
from captures.pcap_writer import write_binaryfile
from tests.orderbook.meatpy_book import meatpy_books, meatpy_l2, reference_books
from parsers.schema import Action


N_MESSAGES = 40_000
N_SYMBOLS = 40
SEED = 424242


@pytest.fixture(scope="module")
def session():
    return generate(N_MESSAGES, N_SYMBOLS, SEED, dlcr=False)


@pytest.fixture(scope="module", params=["end", "midday"])
def day_file(request, session, tmp_path_factory):
    path = tmp_path_factory.mktemp("meatpy") / f"{request.param}.itch"
    n = len(session) if request.param == "end" else int(len(session) * 0.55)
    write_binaryfile(path, session.buf, session.offsets[:n], session.lengths[:n])
    return path


def _chosen_symbols(events, symbol_of) -> list[str]:
    """The busiest, second busiest, a middling and the quietest symbol with any order."""
    adds = events["instrument_id"][events["action"] == Action.ADD]
    ranked = [inst for inst, _ in Counter(adds.tolist()).most_common()]
    picks = [ranked[0], ranked[1], ranked[len(ranked) // 2], ranked[-1]]
    return [symbol_of[i] for i in dict.fromkeys(picks)]


def test_meatpy_and_the_reference_agree_level_by_level(session, day_file):
    assert "O" not in session.type_counts()
    ref, locate_of, events = reference_books(day_file)
    symbol_of = {i: s for s, i in locate_of.items()}
    symbols = _chosen_symbols(events, symbol_of)
    mp = meatpy_books(day_file, symbols)
    busiest = locate_of[symbols[0]]
    bids, asks = ref.l2(busiest)
    assert len(bids) >= 5 and len(asks) >= 5, "the busiest book should be deep enough to mean something"
    for sym in symbols:
        inst = locate_of[sym]
        assert mp[sym].problems == Counter(), sym
        assert ref.integrity().get(inst, {}) == {}, sym
        assert mp[sym].bids == ref.l2(inst)[0], f"{sym} bids"
        assert mp[sym].asks == ref.l2(inst)[1], f"{sym} asks"
    # What the books went through: every book action, executions with price included.
    sent = Counter(np.asarray(events["action"]).tolist())
    assert all(sent[a] > 0 for a in (Action.ADD, Action.CANCEL, Action.DELETE, Action.EXECUTE, Action.REPLACE))
    assert session.type_counts()["C"] > 0


def test_meatpy_l2_depth_and_units(day_file):
    ref, locate_of, events = reference_books(day_file)
    busiest = Counter(events["instrument_id"][events["action"] == Action.ADD].tolist()).most_common(1)[0][0]
    sym = {i: s for s, i in locate_of.items()}[busiest]
    bids, asks = meatpy_l2(day_file, sym, depth=3)
    assert (bids, asks) == ref.l2(busiest, 3)
    assert len(bids) == 3 and bids[0][0] > bids[1][0] > bids[2][0] and asks[0][0] < asks[1][0]
    assert bids[0][0] < asks[0][0]
    assert all(p % 100_000 == 0 for p, _, _ in bids + asks)  # 4-decimal wire prices in 1e-9 units
    assert meatpy_l2(day_file, "NOSUCH") == ([], [])


def test_meatpy_cannot_read_a_day_with_dlcr_messages(tmp_path):
    # The quirk that makes the comparison use dlcr=False: MeatPy 0.5 unpacks O as 51 bytes, not 48.
    path = tmp_path / "dlcr.itch"
    generate(20_000, 20, SEED, dlcr=True).write(path, "itch")
    with pytest.raises(struct.error):
        meatpy_books(path, ["AAAA"])
