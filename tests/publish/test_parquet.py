"""Parquet output: schema derivation and round trips through pyarrow, value by value."""
from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parsers.schema import TRADE
from publish.parquet import DEFAULT_COMPRESSION, BackgroundWriters, ParquetWriter, arrow_schema, to_record_batch

QUOTE = np.dtype(
    [
        ("ts_event", "<i8"),
        ("price", "<i8"),
        ("size", "<u8"),
        ("instrument_id", "<u4"),
        ("venue", "<u2"),
        ("side", "u1"),
        ("_reserved", "V1"),
        ("symbol", "S8"),
    ]
)


def make_quotes(n: int, start: int = 0) -> np.ndarray:
    q = np.zeros(n, dtype=QUOTE)
    i = np.arange(start, start + n, dtype=np.int64)
    q["ts_event"] = 1_700_000_000_000_000_000 + i
    q["price"] = -5 + i * 1_000_000_007
    q["size"] = np.uint64(2**64 - 1) - i.astype(np.uint64)
    q["instrument_id"] = i % 5
    q["venue"] = 3
    q["side"] = np.where(i % 2 == 0, ord("B"), ord("A"))
    q["_reserved"] = np.void(b"\xee")
    q["symbol"] = np.array([b"AAPL", b"MSFT    ", b"BRK B", b"", b"Z\x00\x00"])[i % 5]
    return q


def test_schema_maps_every_numpy_type_and_drops_padding():
    dtype = np.dtype(
        [
            ("b", "?"), ("i1", "i1"), ("i2", "<i2"), ("i4", "<i4"), ("i8", "<i8"),
            ("u1", "u1"), ("u2", "<u2"), ("u4", "<u4"), ("u8", "<u8"),
            ("f4", "<f4"), ("f8", "<f8"), ("_pad", "V3"), ("s", "S4"), ("big", ">i4"),
        ]
    )
    schema = arrow_schema(dtype, {"record": "test", "version": 2})
    assert schema.names == ["b", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f4", "f8", "s", "big"]
    assert schema.types == [
        pa.bool_(), pa.int8(), pa.int16(), pa.int32(), pa.int64(),
        pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
        pa.float32(), pa.float64(), pa.string(), pa.int32(),
    ]
    assert schema.metadata == {b"record": b"test", b"version": b"2"}


def test_schema_without_metadata_has_none():
    assert arrow_schema(QUOTE).metadata is None


def test_unmappable_field_types_are_refused():
    with pytest.raises(TypeError):
        arrow_schema(np.dtype([("when", "M8[ns]")]))
    with pytest.raises(TypeError):
        arrow_schema(np.dtype([("blob", "V4")]))  # public void field: not padding
    with pytest.raises(TypeError):
        arrow_schema(np.dtype("<i8"))


def test_project_trade_schema():
    schema = arrow_schema(TRADE.dtype)
    assert "_reserved" not in schema.names
    assert schema.field("cross_type").type == pa.string()
    assert schema.field("price").type == pa.int64()
    assert schema.names == [c.name for c in TRADE.public_columns]


def test_round_trip_several_batches(tmp_path):
    path = tmp_path / "quotes.parquet"
    batches = [make_quotes(7, 0), make_quotes(0, 7), make_quotes(13, 7), make_quotes(1, 20)]
    with ParquetWriter(path, QUOTE, {"record": "quotes"}) as writer:
        for batch in batches:
            writer.write(batch)
    expected = np.concatenate(batches)

    table = pq.read_table(path)
    assert table.schema == arrow_schema(QUOTE, {"record": "quotes"})
    assert table.num_rows == 21
    for name in ("ts_event", "price", "size", "instrument_id", "venue", "side"):
        got = table.column(name).to_numpy()
        assert got.dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got, expected[name], err_msg=name)
    assert table.column("symbol").to_pylist()[:5] == ["AAPL", "MSFT", "BRK B", "", "Z"]
    assert table.column("size").to_pylist()[0] == 2**64 - 1
    assert table.column("price").to_pylist()[:2] == [-5, 1_000_000_002]


def test_strided_and_big_endian_input(tmp_path):
    dtype = np.dtype([("a", ">i8"), ("s", "S3"), ("b", ">u2")])
    records = np.zeros(6, dtype=dtype)
    records["a"] = [1, -2, 3, -4, 5, -6]
    records["b"] = [1, 2, 3, 4, 65535, 6]
    records["s"] = [b"ab", b"c  ", b"d", b"e", b"f", b"ghi"]
    path = tmp_path / "strided.parquet"
    with ParquetWriter(path, dtype) as writer:
        writer.write(records[::2])  # a strided view, not a copy
    table = pq.read_table(path)
    assert table.to_pydict() == {"a": [1, 3, 5], "s": ["ab", "d", "f"], "b": [1, 3, 65535]}


def test_no_rows_gives_an_empty_file_with_the_schema(tmp_path):
    path = tmp_path / "empty.parquet"
    writer = ParquetWriter(path, QUOTE, {"record": "quotes"})
    writer.write(make_quotes(0))
    writer.close()
    writer.close()  # harmless
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.schema == arrow_schema(QUOTE, {"record": "quotes"})


def test_small_batches_make_full_row_groups(tmp_path):
    path = tmp_path / "groups.parquet"
    with ParquetWriter(path, QUOTE, row_group_rows=100) as writer:
        for k in range(10):
            writer.write(make_quotes(35, start=35 * k))
        assert writer.rows_written == 300  # whole groups go out as soon as they are complete
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [100, 100, 100, 50]
    assert meta.row_group(0).column(0).compression == DEFAULT_COMPRESSION.upper()
    np.testing.assert_array_equal(pq.read_table(path).column("ts_event").to_numpy(), make_quotes(350)["ts_event"])


def test_wrong_dtype_and_closed_writer_are_refused(tmp_path):
    writer = ParquetWriter(tmp_path / "x.parquet", QUOTE)
    with pytest.raises(TypeError):
        writer.write(np.zeros(1, dtype=[("ts_event", "<i8")]))
    writer.close()
    with pytest.raises(ValueError):
        writer.write(make_quotes(1))


def test_bytes_that_are_not_utf8_are_refused():
    records = make_quotes(2)
    records["symbol"][1] = b"\xff\xfe"
    with pytest.raises(pa.ArrowInvalid):
        to_record_batch(records, arrow_schema(QUOTE))


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=6).map(lambda b: bytes(c % 128 for c in b)), max_size=40))
def test_fixed_bytes_become_strings_without_trailing_spaces_or_nuls(values: list[bytes]):
    dtype = np.dtype([("s", "S6")])
    records = np.zeros(len(values), dtype=dtype)
    for k, v in enumerate(values):
        records["s"][k] = v
    raw = np.ascontiguousarray(records).view(np.uint8).reshape(len(values), 6)
    expected = [bytes(row).rstrip(b" \x00").decode() for row in raw]
    batch = to_record_batch(records, arrow_schema(dtype))
    assert batch.column(0).to_pylist() == expected


def test_numeric_columns_split_in_one_pass_equal_picking_each_column():
    """``to_record_batch`` splits aligned numeric fields in one compiled pass over the rows; every
    column equals numpy's own pick, for the pipeline's records, a strided view (picked the plain way)
    and a packed dtype whose fields are not aligned (left to the plain way)."""
    from orderbook.records import BBO, L2
    from parsers import schema

    rng = np.random.default_rng(3)
    packed = np.dtype({"names": ["a", "b", "c"], "formats": ["u1", "<i8", "<u2"], "offsets": [0, 1, 9],
                       "itemsize": 11})
    small = np.dtype([("a", "<u2"), ("b", "<u2"), ("c", "u1"), ("d", "u1")])  # 6-byte rows: no 4- or 8-byte words
    for dtype in (schema.EVENT.dtype, schema.TRADE.dtype, BBO.dtype, L2.dtype, packed, small):
        records = np.frombuffer(rng.integers(0, 256, 999 * dtype.itemsize, dtype=np.uint8).tobytes(), dtype=dtype)
        if "cross_type" in dtype.names:
            records = records.copy()
            records["cross_type"] = b"O"
        for rows in (records, records[1:], records[::3]):
            batch = to_record_batch(rows, arrow_schema(dtype))
            for k, name in enumerate(batch.schema.names):
                if rows.dtype[name].kind == "S":
                    continue
                assert batch.column(k).to_numpy().tobytes() == np.ascontiguousarray(rows[name]).tobytes(), name


def test_columns_are_encoded_by_kind_and_read_back_exactly(tmp_path):
    path = tmp_path / "quotes.parquet"
    quotes = make_quotes(3000)
    with ParquetWriter(path, QUOTE) as writer:
        writer.write(quotes)
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(k).path_in_schema: group.column(k).encodings for k in range(group.num_columns)}
    for name in ("ts_event", "price", "size", "instrument_id", "venue", "side"):
        assert "DELTA_BINARY_PACKED" in encodings[name], name
        assert "BYTE_STREAM_SPLIT" not in encodings[name], name  # readers before 2024-2026 cannot read it
    assert "RLE_DICTIONARY" in encodings["symbol"]
    table = pq.read_table(path)
    for name in ("ts_event", "price", "size", "instrument_id", "venue", "side"):
        assert table.column(name).to_numpy().tolist() == quotes[name].tolist(), name


def test_every_numeric_type_is_written_and_read_back(tmp_path):
    kinds = ["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]
    dtype = np.dtype([(f"c_{kind}", kind) for kind in kinds])
    rows = np.zeros(1000, dtype=dtype)
    for name in dtype.names:
        rows[name] = (np.arange(1000) % 120 - (0 if "_u" in name else 60)).astype(dtype[name])
    with ParquetWriter(tmp_path / "all.parquet", dtype) as writer:
        writer.write(rows)
    table = pq.read_table(tmp_path / "all.parquet")
    for name in dtype.names:
        assert table.column(name).to_numpy().tolist() == rows[name].tolist(), name


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_background_writers_keep_each_files_batches_in_order_over_threads(tmp_path, threads):
    names = ["a", "b", "c", "d"]
    writers = {name: ParquetWriter(tmp_path / f"{name}.parquet", QUOTE, row_group_rows=500) for name in names}
    background = BackgroundWriters(writers, max_batches=2, threads=threads)
    start = dict.fromkeys(names, 0)
    for k in range(40):
        name = names[k % len(names)] if k % 3 else "a"
        n = 1 + (k * 37) % 300
        background.write(name, make_quotes(n, start[name]))
        start[name] += n
    background.close()
    for name in names:
        ts = pq.read_table(tmp_path / f"{name}.parquet").column("ts_event").to_numpy()
        assert ts.tolist() == make_quotes(start[name])["ts_event"].tolist()


class _HeldWriter(ParquetWriter):
    """A file writer whose writes wait until ``release`` is set (the failure comes when the test says)."""

    def __init__(self, *args, release: threading.Event, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = release

    def write(self, records: np.ndarray) -> None:
        self.release.wait(10)
        super().write(records)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_failing_file_is_reported_and_the_other_files_are_still_written(tmp_path, threads):
    release = threading.Event()
    good = ParquetWriter(tmp_path / "good.parquet", QUOTE)
    bad = _HeldWriter(tmp_path / "bad.parquet", QUOTE, release=release)
    background = BackgroundWriters({"good": good, "bad": bad}, threads=threads)
    background.write("bad", np.zeros(3, dtype=TRADE))  # another dtype: the writer thread refuses it
    background.write("good", make_quotes(10))  # one thread: queued behind the failing batch
    release.set()
    with pytest.raises(TypeError, match="differs"):
        background.close()
    assert pq.read_table(tmp_path / "good.parquet").num_rows == 10
