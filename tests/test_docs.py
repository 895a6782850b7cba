"""The reference docs stay in step with the declarations they are generated from (`make docs`)."""
from pathlib import Path

from orderbook.records import BBO, L2, ohlcv_record
from parsers import itch50, schema

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_schema_doc_lists_every_record_and_column():
    text = (DOCS / "schema.md").read_text()
    for record in (*schema.RECORDS, BBO, L2, ohlcv_record("1m")):
        assert f"## `{record.name}` ({record.dtype.itemsize} bytes)" in text, record.name
        for column in record.public_columns:
            assert f"| `{column.name}` | `" in text, (record.name, column.name)


def test_itch_doc_lists_every_message_with_its_size():
    text = (DOCS / "itch50.md").read_text()
    for msg in itch50.MESSAGE_TABLE:
        assert f"| `{msg.code.decode()}` | {msg.name} | {msg.size} |" in text
