"""Write-ahead log: round trips, rotation, fsync policies, torn tails, corruption, SIGKILL recovery."""
from __future__ import annotations

import importlib.util
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading import wal
from trading.wal import (
    REC_HEADER_SIZE,
    SEG_HEADER_SIZE,
    FsyncPolicy,
    KeyValueState,
    RecordChainState,
    WalCorruptionError,
    WalError,
    WalReader,
    WalWriter,
    list_segments,
    replay_into,
    rows_from_payload,
    segment_name,
)

CHILD = Path(__file__).with_name("wal_child.py")
_spec = importlib.util.spec_from_file_location("wal_child", CHILD)
wal_child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wal_child)
payload_for = wal_child.payload_for


def replay_all(directory) -> tuple[list[tuple[int, bytes]], wal.RecoveryReport]:
    reader = WalReader(directory)
    records = list(reader.replay())
    return records, reader.report


def write_log(directory, payloads, policy="never", **kw) -> None:
    with WalWriter(directory, fsync=policy, **kw) as w:
        for p in payloads:
            w.append(p)
        w.commit()


# -- format ------------------------------------------------------------------------------------


def test_record_bytes_on_disk(tmp_path):
    write_log(tmp_path, [b"abc"])
    data = (tmp_path / segment_name(1)).read_bytes()
    assert data[:8] == b"FHWAL001"
    assert struct.unpack_from("<QI", data, 8) == (1, zlib.crc32(data[:16]))
    assert SEG_HEADER_SIZE == 24 and REC_HEADER_SIZE == 16
    crc, length, seq = struct.unpack_from("<IIQ", data, SEG_HEADER_SIZE)
    assert (length, seq) == (3, 1)
    assert data[SEG_HEADER_SIZE + 16:] == b"abc"
    assert crc == zlib.crc32(data[SEG_HEADER_SIZE + 4:])  # CRC32 over length, seq and payload
    assert len(data) == SEG_HEADER_SIZE + 16 + 3


def test_empty_log(tmp_path):
    records, report = replay_all(tmp_path)
    assert records == [] and report.last_seq == 0 and report.torn_tail is None
    with WalWriter(tmp_path) as w:
        assert w.commit() == 0
        assert w.append(b"") == 1
        assert w.commit() == 1
    assert replay_all(tmp_path)[0] == [(1, b"")]


# -- round trips -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), max_size=60),
    cuts=st.sets(st.integers(0, 60)),
    segment_bytes=st.sampled_from([64, 512, 4096, 1 << 20]),
    reopen=st.booleans(),
)
def test_round_trip(sizes, cuts, segment_bytes, reopen):
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    with tempfile.TemporaryDirectory() as d:
        w = WalWriter(d, fsync="never", segment_bytes=segment_bytes)
        for i, p in enumerate(payloads):
            if i in cuts:
                w.commit()
                if reopen:
                    w.close()
                    w = WalWriter(d, fsync="never", segment_bytes=segment_bytes)
                    assert w.recovery.torn_tail is None and w.recovery.last_seq == i
            assert w.append(p) == i + 1
        w.close()
        records, report = replay_all(d)
        assert records == [(i + 1, p) for i, p in enumerate(payloads)]
        assert report.torn_tail is None and report.records == len(payloads)
        for seg in list_segments(d):
            size = seg.stat().st_size
            # A segment exceeds the limit only when it holds a single over-sized record.
            if size > segment_bytes:
                n_records = sum(1 for _ in _records_in(seg))
                assert n_records == 1


def _records_in(segment: Path):
    data = segment.read_bytes()
    off = SEG_HEADER_SIZE
    while off < len(data):
        _, length, seq = struct.unpack_from("<IIQ", data, off)
        yield seq
        off += REC_HEADER_SIZE + length


def test_numpy_rows_in_batches(tmp_path):
    dtype = np.dtype([("ts", "<i8"), ("order_id", "<u8"), ("price", "<i8"), ("qty", "<u4"), ("side", "u1")])
    rng = np.random.default_rng(3)
    batches = []
    for n in (1, 1000, 0, 37):
        rows = np.zeros(n, dtype)
        rows["ts"] = rng.integers(0, 1 << 62, n)
        rows["order_id"] = rng.integers(0, 1 << 63, n, dtype=np.uint64)
        rows["price"] = rng.integers(-(10 ** 12), 10 ** 12, n)
        rows["qty"] = rng.integers(0, 1 << 31, n)
        rows["side"] = rng.integers(0, 2, n)
        batches.append(rows)
    with WalWriter(tmp_path) as w:
        seqs = [w.append_rows(b) for b in batches]
        w.append_rows(batches[1][::3])  # a strided view is logged contiguously
        w.commit()
    assert seqs == [1, 2, 3, 4]
    records, _ = replay_all(tmp_path)
    for (seq, payload), rows in zip(records, [*batches, batches[1][::3]]):
        got = rows_from_payload(payload, dtype)
        assert len(payload) == rows.size * dtype.itemsize
        np.testing.assert_array_equal(got, rows)
    with pytest.raises(ValueError, match="whole number"):
        rows_from_payload(b"x" * 7, dtype)


# -- rotation ----------------------------------------------------------------------------------


def test_rotation_names_segments_by_first_seq_and_continues_after_reopen(tmp_path):
    payload = b"p" * 100  # 116 bytes a record
    write_log(tmp_path, [payload] * 10, segment_bytes=SEG_HEADER_SIZE + 3 * 116)
    assert [p.name for p in list_segments(tmp_path)] == [segment_name(s) for s in (1, 4, 7, 10)]
    for seg in list_segments(tmp_path)[:-1]:
        assert seg.stat().st_size == SEG_HEADER_SIZE + 3 * 116
    # Reopened, the writer fills the last segment before starting the next.
    write_log(tmp_path, [payload] * 3, segment_bytes=SEG_HEADER_SIZE + 3 * 116)
    assert [p.name for p in list_segments(tmp_path)] == [segment_name(s) for s in (1, 4, 7, 10, 13)]
    # A record larger than a segment gets one of its own.
    write_log(tmp_path, [b"x" * 1000, b"y"], segment_bytes=SEG_HEADER_SIZE + 3 * 116)
    assert [p.name for p in list_segments(tmp_path)][-2:] == [segment_name(14), segment_name(15)]
    records, report = replay_all(tmp_path)
    assert [s for s, _ in records] == list(range(1, 16))
    assert records[13][1] == b"x" * 1000 and records[14][1] == b"y"
    assert len(report.segments) == 7


def test_missing_segment_is_corruption(tmp_path):
    write_log(tmp_path, [b"a" * 50] * 9, segment_bytes=SEG_HEADER_SIZE + 3 * 66)
    (tmp_path / segment_name(4)).unlink()
    reader = WalReader(tmp_path)
    seen = []
    with pytest.raises(WalCorruptionError) as info:
        for seq, _ in reader.replay():
            seen.append(seq)
    assert seen == [1, 2, 3]
    assert info.value.segment.name == segment_name(7) and info.value.offset == 0 and info.value.expected_seq == 4


# -- fsync policies ----------------------------------------------------------------------------


@pytest.fixture
def fdatasync_calls(monkeypatch):
    calls = []
    real = wal._fdatasync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(wal, "_fdatasync", counting)
    return calls


@pytest.mark.parametrize("policy, per_group", [("always", 64), ("batch", 1), ("never", 0)])
def test_fsync_policy(tmp_path, fdatasync_calls, policy, per_group):
    with WalWriter(tmp_path, fsync=policy) as w:
        for group in range(3):
            for _ in range(64):
                seq = w.append(b"r" * 32)
            if policy == "always":
                assert w.durable_seq == seq  # durable when append returns
            else:
                assert w.durable_seq == group * 64  # nothing of this group yet
            assert w.commit() == seq == (group + 1) * 64
            assert w.durable_seq == seq
            assert len(fdatasync_calls) == (group + 1) * per_group
        assert w.commit() == 192
        assert len(fdatasync_calls) == 3 * per_group  # an empty commit syncs nothing
    assert len(replay_all(tmp_path)[0]) == 192


def test_wait_durable_commits_without_a_flusher(tmp_path):
    with WalWriter(tmp_path, fsync="batch") as w:
        seq = w.append(b"x")
        assert w.durable_seq == 0
        assert w.wait_durable(seq) is True
        assert w.durable_seq == seq


@pytest.mark.parametrize("policy", ["batch", "never"])
def test_background_flusher_max_delay(tmp_path, fdatasync_calls, policy):
    with WalWriter(tmp_path, fsync=policy, max_delay=0.002, max_batch=1000) as w:
        seqs = [w.append(b"%d" % i) for i in range(100)]
        assert w.wait_durable(seqs[-1], timeout=5.0)
        assert w.durable_seq == 100
    if policy == "batch":
        assert 1 <= len(fdatasync_calls) <= 100
    else:
        assert fdatasync_calls == []
    assert [s for s, _ in replay_all(tmp_path)[0]] == list(range(1, 101))


def test_background_flusher_max_batch_commits_before_the_delay(tmp_path):
    with WalWriter(tmp_path, fsync="batch", max_delay=30.0, max_batch=16) as w:
        t0 = time.monotonic()
        for i in range(16):
            seq = w.append(b"y")
        assert w.wait_durable(seq, timeout=5.0)
        assert time.monotonic() - t0 < 5.0
        w.append(b"z")
        assert not w.wait_durable(17, timeout=0.05)  # one record waits for the (long) delay
    assert len(replay_all(tmp_path)[0]) == 17  # close() committed it


def test_concurrent_appenders_with_flusher(tmp_path):
    with WalWriter(tmp_path, fsync="batch", max_delay=0.001, max_batch=32) as w:
        acked: list[int] = []
        lock = threading.Lock()

        def worker(tag: int) -> None:
            for i in range(200):
                seq = w.append(bytes([tag]) * (i % 17))
                assert w.wait_durable(seq, timeout=10.0)
                with lock:
                    acked.append(seq)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(acked) == list(range(1, 801))
    records, _ = replay_all(tmp_path)
    assert [s for s, _ in records] == list(range(1, 801))


def test_one_writer_per_directory(tmp_path):
    with WalWriter(tmp_path):
        with pytest.raises(WalError, match="another writer"):
            WalWriter(tmp_path)
    WalWriter(tmp_path).close()


def test_closed_writer_refuses_appends(tmp_path):
    w = WalWriter(tmp_path)
    w.close()
    with pytest.raises(WalError, match="closed"):
        w.append(b"x")


def test_failed_fsync_poisons_the_writer(tmp_path, monkeypatch):
    w = WalWriter(tmp_path, fsync="batch")
    w.append(b"a")
    w.commit()

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal, "_fdatasync", broken)
    w.append(b"b")
    with pytest.raises(WalError, match="commit failed"):
        w.commit()
    assert w.durable_seq == 1
    with pytest.raises(WalError, match="failed earlier"):
        w.append(b"c")
    w.close()


# -- torn tails --------------------------------------------------------------------------------


def test_torn_tail_at_every_byte_of_the_last_record(tmp_path):
    payloads = [payload_for(s) for s in range(1, 6)] + [b"last record payload, 40 bytes long......"]
    src = tmp_path / "src"
    write_log(src, payloads)
    full = (src / segment_name(1)).read_bytes()
    start = len(full) - (REC_HEADER_SIZE + 40)
    for cut in range(start, len(full)):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / segment_name(1)).write_bytes(full[:cut])
        records, report = replay_all(d)
        assert records == [(i + 1, p) for i, p in enumerate(payloads[:5])]
        tail = report.torn_tail
        if cut == start:
            assert tail is None
        else:
            assert (tail.segment.name, tail.offset, tail.nbytes, tail.expected_seq) == (
                segment_name(1), start, cut - start, 6), cut
            reason = "record header truncated" if cut - start < REC_HEADER_SIZE else "runs past the end"
            assert reason in tail.reason
        with WalWriter(d, fsync="batch") as w:
            assert w.recovery.torn_tail == tail and w.recovery.last_seq == 5
            assert (d / segment_name(1)).stat().st_size == start  # cut off
            assert w.append(b"after") == 6
        records, report = replay_all(d)
        assert records[-1] == (6, b"after") and report.torn_tail is None and len(records) == 6


def test_torn_segment_header_is_a_tail(tmp_path):
    write_log(tmp_path / "src", [b"a" * 10] * 4, segment_bytes=SEG_HEADER_SIZE + 2 * 26)
    full = (tmp_path / "src" / segment_name(3)).read_bytes()
    for cut in range(SEG_HEADER_SIZE + 1):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / segment_name(1)).write_bytes((tmp_path / "src" / segment_name(1)).read_bytes())
        (d / segment_name(3)).write_bytes(full[:cut])
        records, report = replay_all(d)
        assert [s for s, _ in records] == [1, 2]
        if cut == SEG_HEADER_SIZE:
            assert report.torn_tail is None  # a whole header and no record yet: a clean, empty segment
        else:
            assert (report.torn_tail.offset, report.torn_tail.nbytes) == (0, cut)
        with WalWriter(d, fsync="batch", segment_bytes=SEG_HEADER_SIZE + 2 * 26) as w:
            if cut < SEG_HEADER_SIZE:
                assert not (d / segment_name(3)).exists()
            assert w.append(b"b") == 3
        assert [s for s, _ in replay_all(d)[0]] == [1, 2, 3]


def test_zero_filled_tail_is_a_tail(tmp_path):
    write_log(tmp_path, [b"z" * 20] * 3)
    seg = tmp_path / segment_name(1)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(bytes(4096))  # e.g. a file extended by the file system but never written
    records, report = replay_all(tmp_path)
    assert len(records) == 3 and report.torn_tail.offset == size and report.torn_tail.nbytes == 4096


# -- corruption --------------------------------------------------------------------------------


def _offsets(segment: Path) -> list[int]:
    data = segment.read_bytes()
    offs, off = [], SEG_HEADER_SIZE
    while off < len(data):
        offs.append(off)
        off += REC_HEADER_SIZE + struct.unpack_from("<I", data, off + 4)[0]
    return offs


def test_every_flipped_bit_in_a_middle_record_is_reported_where_it_is(tmp_path):
    payloads = [b"record %d payload" % i for i in range(1, 8)]
    write_log(tmp_path / "src", payloads)
    full = (tmp_path / "src" / segment_name(1)).read_bytes()
    offs = _offsets(tmp_path / "src" / segment_name(1))
    target = offs[3]  # seq 4 of 7
    d = tmp_path / "log"
    d.mkdir()
    seg = d / segment_name(1)
    for byte in range(target, offs[4]):
        for bit in range(8):
            damaged = bytearray(full)
            damaged[byte] ^= 1 << bit
            seg.write_bytes(damaged)
            reader = WalReader(d)
            seen = []
            with pytest.raises(WalCorruptionError) as info:
                for seq, payload in reader.replay():
                    seen.append((seq, payload))
            assert seen == [(i + 1, p) for i, p in enumerate(payloads[:3])]
            err = info.value
            assert (err.segment, err.offset, err.expected_seq) == (seg, target, 4), (byte, bit)
            with pytest.raises(WalCorruptionError):
                WalWriter(d)
            assert seg.read_bytes() == bytes(damaged)  # nothing cut


def test_flipped_bit_in_the_last_record_is_a_checksum_tail(tmp_path):
    write_log(tmp_path, [b"one", b"two", b"three"])
    seg = tmp_path / segment_name(1)
    last = _offsets(seg)[-1]
    data = bytearray(seg.read_bytes())
    data[-2] ^= 0x10
    seg.write_bytes(data)
    records, report = replay_all(tmp_path)
    assert records == [(1, b"one"), (2, b"two")]
    assert report.torn_tail.offset == last and report.torn_tail.reason == "checksum"
    with WalWriter(tmp_path) as w:
        assert w.recovery.torn_tail.reason == "checksum"
        assert w.append(b"THREE") == 3
    assert replay_all(tmp_path)[0][-1] == (3, b"THREE")


def test_damage_at_the_end_of_an_earlier_segment_is_corruption(tmp_path):
    write_log(tmp_path, [b"q" * 30] * 6, segment_bytes=SEG_HEADER_SIZE + 3 * 46)
    first = tmp_path / segment_name(1)
    data = first.read_bytes()
    first.write_bytes(data[:-5])  # torn, but a later segment exists: records were lost
    with pytest.raises(WalCorruptionError) as info:
        WalReader(tmp_path).scan()
    assert info.value.segment == first and info.value.offset == SEG_HEADER_SIZE + 2 * 46


# -- state machines ----------------------------------------------------------------------------


def test_key_value_state_hash_is_canonical():
    a, b = KeyValueState(), KeyValueState()
    a.apply(1, KeyValueState.encode(5, b"x"))
    a.apply(2, KeyValueState.encode(9, b"y"))
    b.apply(1, KeyValueState.encode(9, b"y"))
    b.apply(2, KeyValueState.encode(5, b"x"))
    assert a.state_hash() == b.state_hash()  # same table, same last seq
    b.apply(3, KeyValueState.encode(5, b""))
    assert b.table == {9: b"y"} and b.state_hash() != a.state_hash()


def test_record_chain_state_sees_order():
    a, b = RecordChainState(), RecordChainState()
    a.apply(1, b"x")
    a.apply(2, b"y")
    b.apply(1, b"y")
    b.apply(2, b"x")
    assert a.state_hash() != b.state_hash()


def test_replay_into_reproduces_the_state(tmp_path):
    live = KeyValueState()
    with WalWriter(tmp_path, segment_bytes=4096) as w:
        for s in range(1, 500):
            p = payload_for(s)
            assert w.append(p) == s
            live.apply(s, p)
    recovered = KeyValueState()
    report = replay_into(tmp_path, recovered)
    assert report.last_seq == 499 and recovered.state_hash() == live.state_hash()


# -- SIGKILL -----------------------------------------------------------------------------------


def _run_child_and_kill(directory: Path, policy: str, mode: str, min_acks: int) -> tuple[int, list[int]]:
    """Start the child, let it acknowledge at least ``min_acks`` records, SIGKILL it.

    Returns the last seq it found on opening and every seq it acknowledged.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(CHILD), str(directory), policy, mode, "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        first = proc.stdout.readline().split()
        assert first[:1] == [b"ready"], (first, proc.stderr.read())
        start = int(first[1])
        acked: list[int] = []
        deadline = time.monotonic() + 10.0
        while len(acked) < min_acks and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: the child is appending and committing
        proc.wait(timeout=10)
        rest = proc.stdout.read()  # printed before it died: acknowledged too
        acked += [int(x) for x in rest.split(b"\n") if x.strip().isdigit()]
        # A line cut by the kill may be a prefix of a number: keep only complete lines.
        if rest and not rest.endswith(b"\n"):
            acked.pop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= min_acks, f"child acknowledged only {len(acked)} records"
    return start, acked


@pytest.mark.parametrize("policy, mode, min_acks", [
    ("batch", "commit", 3000),
    ("batch", "flusher", 3000),
    ("never", "commit", 20000),
    ("always", "commit", 300),
])
def test_sigkill_loses_no_acknowledged_record(tmp_path, policy, mode, min_acks):
    all_acked: list[int] = []
    for round_ in range(2):  # kill, restart on the same log (recovering it), kill again
        start, acked = _run_child_and_kill(tmp_path, policy, mode, min_acks)
        assert acked == list(range(start + 1, start + 1 + len(acked)))  # in order, none skipped
        all_acked += acked
        records, report = replay_all(tmp_path)
        seqs = [s for s, _ in records]
        assert seqs == list(range(1, len(records) + 1))
        assert report.last_seq >= all_acked[-1]  # every acknowledged record is there ...
        for seq, payload in records:
            assert payload == payload_for(seq), seq  # ... and intact
        recovered = KeyValueState()
        replay_into(tmp_path, recovered)
        expected = KeyValueState()
        for seq in range(1, report.last_seq + 1):
            expected.apply(seq, payload_for(seq))
        assert recovered.state_hash() == expected.state_hash()
    with WalWriter(tmp_path, fsync=policy) as w:
        assert w.recovery.last_seq == report.last_seq
        assert w.append(payload_for(report.last_seq + 1)) == report.last_seq + 1
