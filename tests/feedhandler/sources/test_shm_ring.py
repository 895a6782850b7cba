"""The shared-memory ring: layout as documented, order, wrap-around, overruns, a concurrent writer
process, the C writer printed in docs/shm-ring.md, and socket batches passed through unchanged."""
from __future__ import annotations

import multiprocessing
import os
import re
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from feedhandler.sources import BatchBuffers, SourceError, ipv4_to_int, open_source
from feedhandler.sources import shm_ring
from feedhandler.sources.shm_ring import ShmSource, ShmWriter
from feedhandler.sources.socket_source import SocketSource
from tests.feedhandler.netns import ADDR_A, mold_payloads, multicast_sender, netns_pair  # noqa: F401
from tests.feedhandler.netns import send_payloads

DOC = Path(__file__).resolve().parents[3] / "docs" / "shm-ring.md"
GROUP, PORT = "239.77.2.1", 26401


@pytest.fixture
def ring_path(unique_name):
    path = f"/dev/shm/fh-{unique_name}.ring"
    yield path
    if os.path.exists(path):
        os.unlink(path)


def _read_all(source: ShmSource, expected: int, timeout: float = 5.0) -> list[tuple]:
    rows = []
    deadline = time.monotonic() + timeout
    while len(rows) < expected and time.monotonic() < deadline:
        batch = source.read(1024, timeout=0.05)
        rows += [(batch.payload(i), int(batch.ts_recv[i]), int(batch.group[i]), int(batch.port[i]))
                 for i in range(len(batch))]
    return rows


def test_layout_is_the_documented_one(ring_path):
    with ShmWriter(ring_path, slot_count=8, slot_size=128) as writer:
        writer.write(b"hello ring", ts_recv=1_700_000_000_123_456_789, group=0xEF010101, port=26400)
    raw = Path(ring_path).read_bytes()
    assert len(raw) == 4096 + 8 * 128
    assert raw[0:8] == b"FHSHMRNG"
    assert struct.unpack_from("<IIIII", raw, 8) == (1, 4096, 128, 8, 32)
    assert abs(struct.unpack_from("<q", raw, 32)[0] - time.time_ns()) < 60e9
    assert struct.unpack_from("<I", raw, 40)[0] == os.getpid()
    write_index, overruns, upstream, state = struct.unpack_from("<QQQQ", raw, 128)
    assert (write_index, overruns, upstream, state) == (1, 0, 0, 2)  # closed by the with block
    assert struct.unpack_from("<Q", raw, 256)[0] == 0
    length, group, ts, port, flags = struct.unpack_from("<IIqHH", raw, 4096)
    assert (length, group, ts, port, flags) == (10, 0xEF010101, 1_700_000_000_123_456_789, 26400, 0)
    assert raw[4096 + 32:4096 + 42] == b"hello ring"
    # the doc's tables say the same offsets as the module
    text = DOC.read_text()
    for offset, name in [(shm_ring.OFF_WRITE_INDEX, "write_index"), (shm_ring.OFF_OVERRUNS, "overruns"),
                         (shm_ring.OFF_UPSTREAM_DROPS, "upstream_drops"), (shm_ring.OFF_WRITER_STATE, "writer_state"),
                         (shm_ring.OFF_READ_INDEX, "read_index"), (shm_ring.OFF_SLOT_COUNT, "slot_count")]:
        assert f"| {offset} | u" in text and f"`{name}`" in text


def test_packets_come_out_in_order_with_their_fields(ring_path):
    rng = np.random.default_rng(3)
    sent = [(rng.bytes(int(n)), 1_700_000_000_000_000_000 + i, 0xEF000000 + i % 7, 26400 + i % 3)
            for i, n in enumerate(rng.integers(0, 2016, 500))]
    with ShmWriter(ring_path, slot_count=1024) as writer, ShmSource(ring_path) as source:
        assert all(writer.write(*row) for row in sent)
        assert _read_all(source, len(sent)) == sent
        stats = source.stats()
    assert stats["packets"] == 500 and stats["bytes"] == sum(len(r[0]) for r in sent)
    assert stats["kernel_drops"] == 0 and stats["truncated"] == 0 and stats["backlog"] == 0


def test_wraps_around_many_times(ring_path):
    # 8 slots: the 3 of the batch still held plus the 3 new ones fit
    with ShmWriter(ring_path, slot_count=8, slot_size=64) as writer, ShmSource(ring_path, max_packets=3) as source:
        got = []
        for i in range(0, 3000, 3):
            for k in range(i, i + 3):
                assert writer.write(struct.pack("<I", k), ts_recv=k)
            batch = source.read(3, timeout=0)
            got += [struct.unpack("<I", p)[0] for p in batch.payloads()]
            assert batch.ts_recv.tolist() == list(range(i, i + 3))
    assert got == list(range(3000))


def test_a_full_ring_drops_the_newest_and_counts_them(ring_path):
    with ShmWriter(ring_path, slot_count=8, slot_size=64) as writer, ShmSource(ring_path) as source:
        accepted = [writer.write(b"p%02d" % i) for i in range(20)]
        assert accepted == [True] * 8 + [False] * 12
        waiting = BatchBuffers(2, 16).batch(2)
        t0 = time.monotonic()
        assert writer.write_batch(waiting, wait=0.05) == 0 and time.monotonic() - t0 >= 0.05  # not counted
        assert source.read(100, timeout=0).payloads() == [b"p%02d" % i for i in range(8)]
        # the batch just read still holds its slots; the next read gives them back
        assert writer.write(b"late") is False
        assert len(source.read(100, timeout=0)) == 0
        assert writer.write(b"after")
        assert source.read(100, timeout=0).payloads() == [b"after"]
        writer.add_upstream_drops(5)
        stats = source.stats()
    assert stats["overruns"] == 13 and stats["upstream_drops"] == 5 and stats["kernel_drops"] == 18


def test_long_packets_are_cut_and_counted(ring_path):
    with ShmWriter(ring_path, slot_count=4, slot_size=64) as writer, ShmSource(ring_path) as source:
        writer.write(bytes(range(100)))
        batch = source.read(timeout=0)
        assert batch.payloads() == [bytes(range(32))] and source.stats()["truncated"] == 1


def _write_numbered(path: str, total: int, chunk: int, wait: float, ready, go) -> None:
    """Writer process: creates the ring, then writes packets carrying 0..total-1 as fast as it can."""
    writer = ShmWriter(path, slot_count=1024, slot_size=64)
    ready.set()
    go.wait(10)
    numbers = np.arange(total, dtype=np.uint64)
    offsets = np.arange(total, dtype=np.int64) * 8
    lengths = np.full(total, 8, np.int32)
    for start in range(0, total, chunk):
        end = min(start + chunk, total)
        batch = shm_ring.PacketBatch(numbers.view(np.uint8), offsets[start:end], lengths[start:end],
                                     numbers[start:end].astype(np.int64), np.zeros(end - start, np.uint32),
                                     np.zeros(end - start, np.uint16))
        writer.write_batch(batch, wait=wait)
    writer.close()


@pytest.mark.parametrize("wait", [0.0, 30.0], ids=["dropping", "waiting"])
def test_a_concurrent_writer_process_loses_nothing_it_does_not_count(ring_path, wait):
    total = 300_000
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_write_numbered, args=(ring_path, total, 256, wait, ready, go))
    child.start()
    assert ready.wait(10)
    with ShmSource(ring_path) as source:
        source.read(timeout=0)  # compiled and reading before the writer starts
        go.set()
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = source.read(1024, timeout=0.5)
            if len(batch):
                seen.append(np.frombuffer(b"".join(batch.payloads()), np.uint64).copy())
                assert (batch.ts_recv == seen[-1].astype(np.int64)).all()
            elif source.stats()["writer_closed"] and source.stats()["backlog"] == 0:
                break
            elif not child.is_alive() and not source.stats()["writer_closed"]:
                pytest.fail(f"writer process died (exit code {child.exitcode})")
        child.join(10)
        assert child.exitcode == 0
        stats = source.stats()
    got = np.concatenate(seen)
    assert (np.diff(got.astype(np.int64)) > 0).all()  # in order, never repeated
    assert len(got) + stats["overruns"] == total and stats["packets"] == len(got)
    if wait:
        assert len(got) == total and (got == np.arange(total)).all()


C_DRIVER = r"""
#include <stdlib.h>
int main(int argc, char **argv) {
    struct fh_ring ring;
    if (argc != 4 || fh_ring_create(&ring, argv[1], (uint32_t)atoi(argv[2]), 64) != 0) { perror("create"); return 1; }
    int n = atoi(argv[3]);
    char payload[100];
    for (int i = 0; i < n; i++) {
        int len = snprintf(payload, sizeof payload, "c-packet %d", i);
        if (i == 1) { memset(payload, 'x', 100); len = 100; }
        fh_ring_write(&ring, payload, (uint32_t)len, 1700000000000000000LL + i, 0xEF010101u + (uint32_t)i, (uint16_t)(26400 + i));
    }
    fh_ring_close(&ring);
    return 0;
}
"""


def test_the_c_writer_in_the_doc_writes_what_the_reader_reads(ring_path, tmp_path):
    code = re.search(r"```c\n(.*?)```", DOC.read_text(), re.S).group(1)
    source_file = tmp_path / "writer.c"
    source_file.write_text(code + C_DRIVER)
    binary = tmp_path / "writer"
    subprocess.run(["gcc", "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Werror", "-o", str(binary), str(source_file)],
                   check=True, capture_output=True, text=True)
    subprocess.run([str(binary), ring_path, "16", "20"], check=True, timeout=30)
    with ShmSource(ring_path) as source:
        rows = _read_all(source, 16)
        stats = source.stats()
    expected = [(b"c-packet %d" % i if i != 1 else b"x" * 32, 1_700_000_000_000_000_000 + i, 0xEF010101 + i, 26400 + i)
                for i in range(16)]
    assert rows == expected
    assert stats["overruns"] == 4 and stats["truncated"] == 1 and stats["writer_closed"]


def test_socket_batches_pass_through_the_ring_unchanged(netns_pair, ring_path):
    pair = netns_pair
    packets, _ = mold_payloads(messages=4000, seed=21, max_payload=500)
    with pair.entered("b"):
        sock_source = SocketSource(GROUP, PORT, iface=pair.veths["b"])
    with pair.entered("a"):
        sender = multicast_sender(ADDR_A)
    received = []
    with sock_source, sender, ShmWriter(ring_path) as writer, open_source("shm", ring_path) as ring_source:
        send_payloads(sender, packets, GROUP, PORT)
        through_ring = []
        deadline = time.monotonic() + 5
        while len(through_ring) < len(packets) and time.monotonic() < deadline:
            batch = sock_source.read(256, timeout=0.05)
            received += [(batch.payload(i), int(batch.ts_recv[i]), int(batch.group[i]), int(batch.port[i]))
                         for i in range(len(batch))]
            assert writer.write_batch(batch) == len(batch)
            through_ring += _read_all(ring_source, len(batch), timeout=1)
    assert [r[0] for r in received] == packets
    assert through_ring == received
    assert {r[2] for r in through_ring} == {ipv4_to_int(GROUP)}


def test_a_new_reader_resumes_where_the_last_one_stopped(ring_path):
    with ShmWriter(ring_path, slot_count=16, slot_size=64) as writer:
        for i in range(6):
            writer.write(b"%d" % i)
        with ShmSource(ring_path) as first:
            assert first.read(4, timeout=0).payloads() == [b"0", b"1", b"2", b"3"]
        with ShmSource(ring_path) as second:
            assert second.read(10, timeout=0).payloads() == [b"4", b"5"]


def test_read_returns_at_once_when_the_writer_has_closed(ring_path):
    writer = ShmWriter(ring_path, slot_count=4, slot_size=64)
    with ShmSource(ring_path) as source:
        t0 = time.monotonic()
        assert len(source.read(timeout=0.1)) == 0 and time.monotonic() - t0 >= 0.1
        writer.close()
        t0 = time.monotonic()
        assert len(source.read(timeout=5)) == 0 and time.monotonic() - t0 < 1
        assert source.stats()["writer_closed"]


def test_a_closed_writer_still_unlinks_its_ring(ring_path):
    """``close()`` at the writer's end, then ``close(unlink=True)`` in a ``finally``: the file goes."""
    writer = ShmWriter(ring_path, slot_count=4, slot_size=64)
    writer.close()
    assert os.path.exists(ring_path)
    writer.close(unlink=True)
    assert not os.path.exists(ring_path)


def test_bad_rings_fail_with_one_line(ring_path):
    def message(fn) -> str:
        with pytest.raises(SourceError) as err:
            fn()
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "no shared-memory ring at" in message(lambda: ShmSource(ring_path))
    Path(ring_path).write_bytes(b"not a ring")
    assert "shorter than its header" in message(lambda: ShmSource(ring_path))
    Path(ring_path).write_bytes(bytes(4096 + 64 * 4))
    assert "not a packet ring, or its writer has not finished" in message(lambda: ShmSource(ring_path))
    ShmWriter(ring_path, slot_count=4, slot_size=64).close()
    raw = bytearray(Path(ring_path).read_bytes())
    Path(ring_path).write_bytes(bytes(raw[:-1]))
    assert "its header says" in message(lambda: ShmSource(ring_path))
    raw[8] = 9
    Path(ring_path).write_bytes(bytes(raw))
    assert "layout version 9" in message(lambda: ShmSource(ring_path))
    assert "power of two" in message(lambda: ShmWriter(ring_path, slot_count=12))
    assert "multiple of 64" in message(lambda: ShmWriter(ring_path, slot_size=100))
    assert "cannot create ring file" in message(lambda: ShmWriter("/nonexistent-dir/ring"))
