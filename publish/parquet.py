"""Parquet output: numpy structured arrays in, one Parquet file per record kind out.

Rules this module keeps:
- The Arrow schema is derived from the numpy dtype, never written by hand: one column per dtype
  field, in dtype order, except fields whose names start with ``_`` (explicit padding).
- Fixed-width byte fields (``S<n>``, e.g. symbols) become Arrow ``string`` with trailing spaces and
  NULs stripped; every other field keeps its numeric type (int64 ns stays int64, prices stay int64 in
  units of 1e-9: the units live in the file's metadata, not in converted values).
- Conversion is column by column on numpy buffers; no Python object is made per row.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numba as nb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_ROW_GROUP_ROWS = 256 * 1024
DEFAULT_COMPRESSION = "snappy"  # the codec every Parquet reader has, and the fastest to write here

_NUMPY_TO_ARROW: dict[str, pa.DataType] = {
    "b1": pa.bool_(),
    "i1": pa.int8(),
    "i2": pa.int16(),
    "i4": pa.int32(),
    "i8": pa.int64(),
    "u1": pa.uint8(),
    "u2": pa.uint16(),
    "u4": pa.uint32(),
    "u8": pa.uint64(),
    "f2": pa.float16(),
    "f4": pa.float32(),
    "f8": pa.float64(),
}


def public_fields(dtype: np.dtype) -> list[str]:
    """Names of the fields of ``dtype`` that are data (not ``_`` padding), in layout order."""
    if dtype.names is None:
        raise TypeError(f"expected a structured dtype, got {dtype}")
    return [name for name in dtype.names if not name.startswith("_")]


def arrow_type(field_dtype: np.dtype) -> pa.DataType:
    """The Arrow type for one numpy field type (see the module rules)."""
    if field_dtype.subdtype is not None or field_dtype.names is not None:
        raise TypeError(f"nested or sub-array field type {field_dtype} has no Arrow mapping here")
    if field_dtype.kind == "S":
        return pa.string()
    key = f"{field_dtype.kind}{field_dtype.itemsize}"
    try:
        return _NUMPY_TO_ARROW[key]
    except KeyError:
        raise TypeError(f"numpy type {field_dtype} has no Arrow mapping") from None


def _metadata_bytes(metadata: Mapping[str, Any]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in metadata.items():
        if isinstance(value, bytes):
            raw = value
        elif isinstance(value, str):
            raw = value.encode()
        else:  # numbers, lists, dicts: stored as compact JSON
            raw = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
        out[str(key).encode()] = raw
    return out


def arrow_schema(dtype: np.dtype, metadata: Mapping[str, Any] | None = None) -> pa.Schema:
    """Return the Arrow schema for records of ``dtype``.

    Args:
        dtype: a numpy structured dtype; fields starting with ``_`` are padding and left out.
        metadata: schema-level key/value metadata; str and bytes values are stored as they are,
            other values as compact JSON.
    """
    dtype = np.dtype(dtype)
    fields = [pa.field(name, arrow_type(dtype.fields[name][0]), nullable=False) for name in public_fields(dtype)]
    return pa.schema(fields, metadata=_metadata_bytes(metadata) if metadata else None)


def _strings_from_fixed_bytes(column: np.ndarray) -> pa.Array:
    """``S<n>`` column -> Arrow string array, trailing NULs and spaces stripped, built from buffers."""
    n = len(column)
    width = column.dtype.itemsize
    chars = np.ascontiguousarray(column).view(np.uint8).reshape(n, width)
    keep = (chars != 0) & (chars != 0x20)
    if n and width:
        # Length of each value = 1 + index of its last kept byte (0 if none).
        last_from_end = np.argmax(keep[:, ::-1], axis=1)
        lengths = np.where(keep.any(axis=1), width - last_from_end, 0).astype(np.int32)
    else:
        lengths = np.zeros(n, dtype=np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = chars[np.arange(width) < lengths[:, None]]  # row-major: values stay in order
    array = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data)))
    array.validate(full=True)  # raises on bytes that are not UTF-8
    return array


def _arrow_column(column: np.ndarray, type_: pa.DataType) -> pa.Array:
    if column.dtype.kind == "S":
        return _strings_from_fixed_bytes(column)
    values = np.ascontiguousarray(column)
    if not values.dtype.isnative:
        values = values.astype(values.dtype.newbyteorder("="))
    return pa.array(values, type=type_)


def to_record_batch(records: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
    """Convert a structured array to an Arrow record batch with ``schema`` (from ``arrow_schema``)."""
    split = _split_numeric(records, [field.name for field in schema])
    columns = [split[field.name] if field.name in split else _arrow_column(records[field.name], field.type)
               for field in schema]
    columns = [c if isinstance(c, pa.Array) else pa.array(c, type=field.type) for c, field in zip(columns, schema)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _split_numeric(records: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The numeric columns of a contiguous structured array, split in one pass over its rows.

    Picking each column out with numpy reads every row once per column; ``_split_columns`` reads each
    row once and writes every column (a quarter of the Parquet writer's time went to the picking).
    Columns it cannot take (strings, unaligned or foreign-order fields) are left to ``_arrow_column``.
    """
    dtype = records.dtype
    if len(records) == 0 or not records.flags.c_contiguous or records.ctypes.data % 8:
        return {}
    taken = []
    for name in names:
        field, offset = dtype.fields[name][:2]
        size = field.itemsize
        if (field.kind in "iufb" and field.isnative and size in (1, 2, 4, 8) and offset % size == 0
                and dtype.itemsize % size == 0):
            taken.append((name, field, offset, size))
    if not taken:
        return {}
    n = len(records)
    starts = np.cumsum([0] + [-(-n * size // 8) * 8 for _, _, _, size in taken])  # each column 8-aligned
    out = np.empty(int(starts[-1]), dtype=np.uint8)
    raw = records.view(np.uint8)
    _split_columns(raw, _words(raw, np.uint16), _words(raw, np.uint32), _words(raw, np.uint64), n, dtype.itemsize,
                   np.array([t[2] for t in taken], dtype=np.int64), np.array([t[3] for t in taken], dtype=np.int64),
                   starts[:-1].astype(np.int64), out, out.view(np.uint16), out.view(np.uint32), out.view(np.uint64))
    return {name: out[starts[k]:starts[k] + n * size].view(field)
            for k, (name, field, _, size) in enumerate(taken)}


def _words(raw: np.ndarray, word) -> np.ndarray:
    """``raw`` as words of ``word``, a tail shorter than one word left off (no field of that size then)."""
    size = np.dtype(word).itemsize
    return raw[: len(raw) // size * size].view(word)


@nb.njit(cache=True, nogil=True)
def _split_columns(raw8, raw16, raw32, raw64, n, itemsize, offsets, sizes, starts, out8, out16, out32, out64):
    """Row by row, each field (byte ``offsets``, ``sizes``) to its column at byte ``starts`` of ``out``."""
    for i in range(n):
        row = i * itemsize
        for k in range(offsets.shape[0]):
            size = sizes[k]
            src = row + offsets[k]
            if size == 8:
                out64[(starts[k] >> 3) + i] = raw64[src >> 3]
            elif size == 4:
                out32[(starts[k] >> 2) + i] = raw32[src >> 2]
            elif size == 2:
                out16[(starts[k] >> 1) + i] = raw16[src >> 1]
            else:
                out8[starts[k] + i] = raw8[src]


def column_encodings(schema: pa.Schema) -> dict[str, str]:
    """The Parquet encoding of each integer column: delta (text keeps its dictionary, the rest plain).

    Chosen for writing time, measured on a replay's events, L2 and BBO rows: delta encoding packs the
    small differences of times, sequence numbers, sizes, ids, sides and levels into few bits, which
    also leaves the codec little to do (zstd writes them in 0.75 of the time of plain encoding, files
    0.8 of the size). Byte-stream split was faster still for prices and order ids (zstd 0.65 of the
    time) but readers before 2024-2026 cannot read it for integers (DuckDB 1.2 refuses the file);
    delta encoding is Parquet 2.0 and every current reader reads it.
    """
    return {field.name: "DELTA_BINARY_PACKED" for field in schema if pa.types.is_integer(field.type)}


class ParquetWriter:
    """Append numpy structured-array batches of one dtype to one Parquet file.

    Batches are buffered until ``row_group_rows`` rows are pending, so many small batches (one per
    packet) still make few, large row groups. Call ``close()`` (or use ``with``) to finish the file;
    a writer that received no rows leaves a valid empty file carrying the schema.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        dtype: np.dtype,
        metadata: Mapping[str, Any] | None = None,
        *,
        compression: str = DEFAULT_COMPRESSION,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    ) -> None:
        if row_group_rows <= 0:
            raise ValueError("row_group_rows must be positive")
        self.path = os.fspath(path)
        self.dtype = np.dtype(dtype)
        self.schema = arrow_schema(self.dtype, metadata)
        self.row_group_rows = row_group_rows
        self.rows_written = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        # Dictionary encoding only for text: on ids, prices and times it costs time and saves nothing.
        text = [f.name for f in self.schema if pa.types.is_string(f.type)]
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self.path, self.schema, compression=compression, use_dictionary=text or False,
            column_encoding=column_encodings(self.schema) or None)

    def write(self, records: np.ndarray) -> None:
        """Append ``records`` (a 1-d array of this writer's dtype)."""
        if self._writer is None:
            raise ValueError(f"ParquetWriter for {self.path} is closed")
        if records.dtype != self.dtype:
            raise TypeError(f"batch dtype {records.dtype} differs from the writer's {self.dtype}")
        if records.ndim != 1:
            raise ValueError("expected a 1-d structured array")
        if len(records) == 0:
            return
        self._pending.append(to_record_batch(records, self.schema))
        self._pending_rows += len(records)
        if self._pending_rows >= self.row_group_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write whole row groups of pending rows; with ``final``, the remainder too."""
        if not self._pending or self._writer is None:
            return
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        rows = table.num_rows if final else table.num_rows - table.num_rows % self.row_group_rows
        if rows:
            self._writer.write_table(table.slice(0, rows), row_group_size=self.row_group_rows)
            self.rows_written += rows
        rest = table.slice(rows)
        self._pending = rest.to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        """Write what is pending and finish the file. Closing twice is harmless."""
        if self._writer is None:
            return
        try:
            self._flush(final=True)
        finally:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> ParquetWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BackgroundWriters:
    """Parquet writers fed from bounded queues by ``threads`` threads of their own.

    Arrow converts, encodes and compresses mostly without the GIL, so the files get written on the
    other cores while the caller decodes and builds books. Each file belongs to one thread (its
    batches stay in order): the thread that had been handed the fewest rows when the file got its
    first batch, which spreads the big outputs (events, L2, BBO) over the threads. The queues are
    bounded: when the disk falls behind, ``write`` waits (files are the record of a replay: nothing is
    dropped). Arrays handed over must not change. A file whose writer fails takes no more rows, the
    others are still written; the first failure is raised at the caller's next ``write`` or ``close``.
    """

    def __init__(self, writers: Mapping[str, ParquetWriter], max_batches: int = 16, threads: int = 2) -> None:
        import queue
        import threading

        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.writers = dict(writers)
        self._queues = [queue.Queue(max_batches) for _ in range(threads)]
        self._rows_handed = [0] * threads
        self._thread_of: dict[str, int] = {}
        self._failed: dict[str, BaseException] = {}
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._run, args=(q,), name=f"parquet-writer-{k}", daemon=True)
                         for k, q in enumerate(self._queues)]
        for thread in self._threads:
            thread.start()

    def write(self, name: str, records: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        if len(records):
            k = self._thread_of.get(name)
            if k is None:
                k = self._thread_of[name] = self._rows_handed.index(min(self._rows_handed))
            self._rows_handed[k] += len(records)
            self._queues[k].put((name, records))

    def _run(self, queue) -> None:
        while True:
            item = queue.get()
            if item is None:
                return
            name, records = item
            if name not in self._failed:  # a file that failed takes no more rows; the others go on
                try:
                    self.writers[name].write(records)
                except BaseException as exc:  # reported to the caller at its next write or close
                    self._failed[name] = exc
                    self._error = self._error or exc

    def close(self) -> None:
        """Write everything queued, finish every file; raise what a writer thread hit, if anything."""
        for queue in self._queues:
            queue.put(None)
        for thread in self._threads:
            thread.join()
        for w in self.writers.values():
            try:
                w.close()
            except BaseException as exc:
                self._error = self._error or exc
        if self._error is not None:
            raise self._error
