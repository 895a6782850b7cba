"""Nasdaq BinaryFILE framing from literal bytes."""
from __future__ import annotations

import gzip

import numpy as np

from captures.binaryfile import frame_binaryfile_buffer, looks_like_binaryfile, read_binaryfile
from captures.reader import ITCH_TYPE_LETTERS
from parsers.frames import FrameFlag

LAST = int(FrameFlag.LAST_IN_PACKET)


def _file(*messages: bytes) -> bytes:
    return b"".join(len(m).to_bytes(2, "big") + m for m in messages)


def _frame(data: bytes):
    buf = np.frombuffer(data, dtype=np.uint8)
    frames, anomalies = frame_binaryfile_buffer(buf)
    bodies = [buf[o : o + n].tobytes() for o, n in zip(frames["offset"], frames["length"])]
    return frames, anomalies, bodies


def test_exact_rows_and_last_flag_only_on_final_message():
    frames, anomalies, bodies = _frame(_file(b"Sabc", b"A12", b"Ffffff"))
    # (offset, ts_recv, sequence, length, session, flags)
    assert [tuple(r) for r in frames.tolist()] == [(2, 0, 1, 4, 0, 0), (8, 0, 2, 3, 0, 0), (13, 0, 3, 6, 0, LAST)]
    assert bodies == [b"Sabc", b"A12", b"Ffffff"]
    assert anomalies == {}


def test_empty_message_skipped_and_counted():
    frames, anomalies, bodies = _frame(_file(b"Sx", b"", b"Dy"))
    assert bodies == [b"Sx", b"Dy"]
    assert frames["sequence"].tolist() == [1, 2]
    assert frames["flags"].tolist() == [0, LAST]
    assert anomalies == {"empty_message": 1}


def test_truncated_message_keeps_everything_before():
    whole = _file(b"Sx", b"Dyy", b"Azzzz")
    for cut in (1, 4, 6):  # inside the last body, inside/after its length prefix
        frames, anomalies, bodies = _frame(whole[:-cut])
        assert bodies == [b"Sx", b"Dyy"]
        assert anomalies == {"truncated_message": 1}
        assert frames["flags"].tolist() == [0, LAST]
    frames, anomalies, bodies = _frame(b"")
    assert frames.shape == (0,) and anomalies == {}


def test_gzip_detected_by_magic_not_name(tmp_path):
    data = _file(b"Sx", b"Ayy")
    p = tmp_path / "plain.name"
    p.write_bytes(gzip.compress(data))
    buf, frames, anomalies = read_binaryfile(p)
    assert buf.tobytes() == data
    assert frames["offset"].tolist() == [2, 6]
    q = tmp_path / "looks.gz"
    q.write_bytes(data)
    assert read_binaryfile(q)[0].tobytes() == data


def test_looks_like_binaryfile():
    assert looks_like_binaryfile(_file(b"Sabc", b"Axx", b"Dy", b"Fz", b"Ez"), ITCH_TYPE_LETTERS)
    assert looks_like_binaryfile(_file(b"Sabc"), ITCH_TYPE_LETTERS)  # a file of one message
    assert not looks_like_binaryfile(_file(b"Zabc"), ITCH_TYPE_LETTERS)  # not a type letter
    assert not looks_like_binaryfile(_file(b"S" * 200), ITCH_TYPE_LETTERS)  # implausible length
    assert not looks_like_binaryfile(_file(b"Sabc") + b"\x00\x03\x7fxx", ITCH_TYPE_LETTERS)  # 2nd does not line up
    assert not looks_like_binaryfile(b"\x00", ITCH_TYPE_LETTERS)
