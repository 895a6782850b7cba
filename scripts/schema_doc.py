"""Write docs/schema.md and docs/itch50.md from the declarations, with example rows from a capture.

Usage: .venv/bin/python scripts/schema_doc.py [CAPTURE]   (default captures/nasdaq-sample.pcap; `make docs`)
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captures.reader import open_capture  # noqa: E402
from parsers import itch50, schema  # noqa: E402
from parsers.clock import VenueClock, session_date  # noqa: E402
from parsers.itch50_normalize import ItchNormalizer  # noqa: E402
from orderbook.bars import BarBuilder  # noqa: E402
from orderbook.engine import BookEngine  # noqa: E402
from orderbook.records import BBO, L2, ohlcv_record  # noqa: E402

INTRO = """# The common schema

Every venue decodes into these records (`parsers/schema.py` declares each once; the numpy dtypes, the
Arrow/Parquet schemas and this page come from that declaration). `feedhandler replay` writes one
Parquet file per record, named `<record>.parquet` (snappy by default, `--compression`). Integer
columns are delta encoded, text dictionary encoded (`publish.parquet.column_encodings`): Parquet 2.0
encodings that pyarrow, DuckDB, Polars and Spark read.

Units, everywhere: `unix_nanos` is int64 nanoseconds since the Unix epoch, UTC; `price_1e-9` is an
int64 price in units of 1e-9 of the currency (divide by 1e9 for dollars), with
`UNDEF_PRICE` = 9223372036854775807 (2^63 - 1) for "no price"; sizes are unsigned share counts.
`Action`, `Side`, `Flag`, `StatusKind` and `TradingState` are enums in `parsers/schema.py`; the
`venue code` columns keep the venue's own one-letter codes. Columns named `_reserved` are padding
and are not written to Parquet.

Enums: Action: {actions}. Side: {sides}. Flag bits: {flags}.
StatusKind: {kinds}. TradingState: {states}.

The book engine adds `bbo`, `l2` and the OHLCV bars (`ohlcv_1s`, `ohlcv_1m`, `ohlcv_5m`, `ohlcv_1h`,
`ohlcv_1d`; one record shape, shown once as `ohlcv_1m`); their `flags` add `BookFlag` bits (CROSSED =
0x0400, LOCKED = 0x0800, SNAPSHOT = 0x1000, INTEGRITY = 0x2000, STALE = 0x4000).

The example rows below are the first row of each record in `{capture}` (regenerate with `make docs`).
"""


def _value(column: schema.Column, v) -> str:
    if isinstance(v, bytes):
        return repr(v.decode("ascii", "replace"))
    if column.unit == "price_1e-9" and int(v) == schema.UNDEF_PRICE:
        return "UNDEF_PRICE"
    if column.unit == "Action":
        return f"{int(v)} ({schema.Action(int(v)).name})"
    if column.unit == "Side":
        return f"{int(v)} ({schema.Side(int(v)).name})"
    if column.unit == "StatusKind" and int(v):
        return f"{int(v)} ({schema.StatusKind(int(v)).name})"
    if column.unit == "TradingState":
        return f"{int(v)} ({schema.TradingState(int(v)).name})"
    if column.unit == "Flag":
        from orderbook.records import BookFlag

        names = [f.name for f in (*schema.Flag, *BookFlag) if int(v) & f]
        return f"{int(v)} ({'|'.join(names) or '-'})"
    return str(v)


def schema_page(capture: Path) -> str:
    cap = open_capture(capture)
    buf, frames = cap.frames()
    stamped = frames["ts_recv"][frames["ts_recv"] > 0]
    normalizer = ItchNormalizer(VenueClock(session_date(int(stamped[0]))))
    normalized = normalizer.normalize(buf, frames)
    batch = normalized.records()
    engine = BookEngine()
    book = engine.apply(normalized.events)
    batch["bbo"], batch["l2"] = book.bbo, book.l2
    bars = BarBuilder(venue=1)
    bars.add_trades(normalized.trades)
    bars.add_broken(normalized.broken_trades)
    batch["ohlcv_1m"] = bars.finish()["1m"]
    enum_list = lambda e: ", ".join(f"{m.name} = {int(m)}" for m in e)  # noqa: E731
    lines = [INTRO.format(actions=", ".join(f"{m.name} = {int(m)} ('{chr(m)}')" for m in schema.Action),
                          sides=", ".join(f"{m.name} = {int(m)} ('{chr(m)}')" for m in schema.Side),
                          flags=", ".join(f"{m.name} = 0x{int(m):04x}" for m in schema.Flag),
                          kinds=enum_list(schema.StatusKind), states=enum_list(schema.TradingState),
                          capture=capture.relative_to(ROOT) if capture.is_relative_to(ROOT) else capture)]
    for record in (*schema.RECORDS, BBO, L2, ohlcv_record("1m")):
        rows = batch[record.name]
        example = rows[0] if len(rows) else None
        lines.append(f"## `{record.name}` ({record.dtype.itemsize} bytes)\n\n{record.doc}\n")
        lines.append("| column | type | unit | meaning | example |\n|---|---|---|---|---|")
        for c in record.public_columns:
            ex = _value(c, example[c.name]) if example is not None else ""
            lines.append(f"| `{c.name}` | `{np.dtype(c.dtype).name}` | {c.unit} | {c.doc} | {ex} |")
        lines.append("")
    return "\n".join(lines)


def itch_page() -> str:
    lines = ["# Nasdaq TotalView-ITCH 5.0: the message table\n",
             "Generated from `parsers/itch50.py` (`make docs`). Every message starts with the header "
             "(type, stock locate, tracking number, 6-byte timestamp: ns since midnight, venue local time). "
             "Integers are big-endian; `price4` has 4 implied decimals, `price8` 8.\n",
             "| type | name | size | body fields |", "|---|---|---|---|"]
    for m in itch50.MESSAGE_TABLE:
        body = ", ".join(f"`{f.name}` {f.kind}" for f in m.body)
        lines.append(f"| `{m.code.decode()}` | {m.name} | {m.size} | {body} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    capture = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "captures" / "nasdaq-sample.pcap"
    (ROOT / "docs" / "schema.md").write_text(schema_page(capture.resolve()))
    (ROOT / "docs" / "itch50.md").write_text(itch_page())
    print("wrote docs/schema.md and docs/itch50.md")


if __name__ == "__main__":
    main()
