"""Sinks in processes of their own (``ProcessSinkRunner``): every row arrives in order, the feed never
waits, failures and dead processes are restarted and counted, stopping drains within its deadline.

The sink here is ``DirectorySink``: a real sink that writes each batch it gets into a directory (one
``.npz`` per write), so the test reads back exactly what crossed into the child process. Files in the
directory steer it from the test (fail the next writes, sleep in writes), since it runs elsewhere.
The Redis, PostgreSQL and WebSocket sinks go through the same runner in
tests/feedhandler/test_replay_sinks.py, against the real servers.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from orderbook.records import BBO
from parsers.schema import TRADE
from publish.batch import MarketBatch
from publish.process_runner import ProcessSinkRunner

REPO = Path(__file__).resolve().parents[2]


class DirectorySink:
    """Writes every batch to ``<root>/w<n>.npz``; ``<root>/fail`` holds how many writes to fail next,
    ``<root>/sleep`` how long each write sleeps first, ``<root>/spin`` how long it computes first."""

    name = "dir"

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.counters = {"writes": 0, "rows": 0}
        self.opened = False

    def open(self) -> None:
        with open(self.root / "opens", "a") as f:
            f.write(f"{os.getpid()}\n")
        self.opened = True

    def write(self, batch: MarketBatch) -> None:
        sleep = self.root / "sleep"
        if sleep.exists():
            time.sleep(float(sleep.read_text()))
        spin = self.root / "spin"
        if spin.exists():
            end = time.process_time() + float(spin.read_text())
            while time.process_time() < end:
                pass
        fail = self.root / "fail"
        if fail.exists() and int(fail.read_text()) > 0:
            fail.write_text(str(int(fail.read_text()) - 1))
            raise ConnectionError("the directory went away")
        n = self.counters["writes"]
        np.savez(self.root / f"w{os.getpid()}_{n:06d}.npz", bbo=batch.bbo, trades=batch.trades,
                 meta=np.array(json.dumps({"venue": batch.venue, "final": batch.final,
                                           "symbols": {str(k): v for k, v in batch.symbols.items()}})))
        self.counters["writes"] = n + 1
        self.counters["rows"] += batch.rows

    def close(self) -> None:
        self.opened = False


def written(root: Path) -> list[dict]:
    """What the sink wrote, in order (by time of writing, then name)."""
    files = sorted(root.glob("w*.npz"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    out = []
    for path in files:
        with np.load(path) as z:
            out.append({"bbo": z["bbo"], "trades": z["trades"], **json.loads(str(z["meta"]))})
    return out


def quotes(first: int, n: int, instruments: int = 3) -> list[MarketBatch]:
    """``n`` one-row batches; BBO sequence numbers ``first``, ``first + 1``, ... over a few instruments."""
    out = []
    for seq in range(first, first + n):
        bbo = BBO.empty(1)
        bbo["sequence"], bbo["instrument_id"], bbo["bid_px"] = seq, 1 + seq % instruments, seq * 1000
        out.append(MarketBatch("nasdaq", SYMBOLS, bbo=bbo))
    return out


SYMBOLS = {1: "AAPL", 2: "MSFT", 3: "TSLA"}


def wait_for(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def runner_for(root: Path, **kw) -> ProcessSinkRunner:
    runner = ProcessSinkRunner(DirectorySink, {"root": str(root)}, backoff_s=0.01, max_backoff_s=0.05, **kw)
    assert runner.sink.wait_open(30), runner.last_error
    return runner


def sequences(writes: list[dict]) -> list[int]:
    return [int(s) for w in writes for s in w["bbo"]["sequence"]]


def test_every_row_arrives_in_order_and_the_counts_add_up(tmp_path):
    runner = runner_for(tmp_path, max_batches=512)  # room for the whole burst: nothing conflates
    assert runner.sink.name == "dir"
    batches = quotes(1, 300)
    trades = TRADE.empty(2)
    trades["match_id"] = [7, 8]
    batches.append(MarketBatch("nasdaq", {**SYMBOLS, 4: "IBM"}, trades=trades, final=True))
    for b in batches:
        runner.offer(b)
    report = runner.stop(20)
    assert report["offered"] == report["written"] == 301
    assert 1 <= report["writes"] <= 301  # what piled up went in merged writes
    assert "dropped_batches" not in report and "failures" not in report
    assert report["dir_rows"] == 302 and report["dir_writes"] == report["writes"]
    assert report["handoff_p50_us"] > 0 and report["handoff_max_us"] >= report["handoff_p99_us"]
    writes = written(tmp_path)
    assert sequences(writes) == list(range(1, 301))
    assert [int(m) for w in writes for m in w["trades"]["match_id"]] == [7, 8]
    assert writes[-1]["final"] and writes[-1]["symbols"] == {"1": "AAPL", "2": "MSFT", "3": "TSLA", "4": "IBM"}
    assert runner.queued() == 0 and runner.report() == report


@pytest.mark.parametrize("policy", ["conflate", "drop-oldest"])
def test_the_feed_never_waits_for_a_stuck_sink(tmp_path, policy):
    (tmp_path / "sleep").write_text("1.5")
    runner = runner_for(tmp_path, queue_bytes=1 << 16, max_batches=4, policy=policy)
    big = [MarketBatch("nasdaq", SYMBOLS, bbo=np.repeat(b.bbo, 100)) for b in quotes(1, 60)]  # 7 KB each
    started = time.perf_counter()
    for b in big:
        runner.offer(b)
    offered_in = time.perf_counter() - started
    (tmp_path / "sleep").unlink()
    report = runner.stop(30)
    assert offered_in < 0.5, offered_in  # the queue filled, the sink slept, the feed went on
    assert report["queue_full"] > 0
    assert report["offered"] == 60 == report["written"] + report.get("conflated", 0) + report.get("dropped_batches", 0)
    got = sequences(written(tmp_path))
    assert got[-1] == 60 and got == sorted(got)  # the newest always gets through, in order
    if policy == "conflate":
        assert report["conflated"] > 0 and "dropped_batches" not in report
        last = {}
        for w in written(tmp_path):
            for row in w["bbo"]:
                last[int(row["instrument_id"])] = int(row["sequence"])
        assert last == {1: 60, 2: 58, 3: 59}  # the latest state of every instrument (1 + seq % 3)
    else:
        assert report["dropped_batches"] > 0 and report["dropped_rows"] == 100 * report["dropped_batches"]


def test_a_failing_sink_is_reopened_and_its_batch_written_once(tmp_path):
    runner = runner_for(tmp_path)
    (tmp_path / "fail").write_text("1")
    for b in quotes(1, 5):
        runner.offer(b)
    report = runner.stop(20)
    assert report["failures"] == 1 and report["restarts"] == 1 and report["written"] == 5
    assert "ConnectionError: the directory went away" in runner.last_error
    assert sequences(written(tmp_path)) == [1, 2, 3, 4, 5]
    assert len((tmp_path / "opens").read_text().split()) == 2


def test_a_killed_sink_process_is_restarted_with_the_directory(tmp_path):
    runner = runner_for(tmp_path)
    for b in quotes(1, 10):
        runner.offer(b)
    wait_for(lambda: runner.counts["written"] == 10 and runner.sink.counters.get("rows") == 10, what="the first ten")
    first_pid = runner._proc.pid
    os.kill(first_pid, signal.SIGKILL)
    wait_for(lambda: runner.counts["process_restarts"] == 1 and runner._proc is not None
             and runner._proc.pid != first_pid and runner.sink.wait_open(0), what="a new sink process")
    for b in quotes(11, 5):
        runner.offer(b)
    report = runner.stop(20)
    assert report["process_deaths"] == 1 and report["process_restarts"] == 1
    assert "exited with -9" in runner.last_error
    assert report["written"] == report["offered"] == 15 and report["dir_rows"] == 15  # both lives counted
    writes = written(tmp_path)
    assert sequences(writes) == list(range(1, 16))
    assert writes[-1]["symbols"] == {"1": "AAPL", "2": "MSFT", "3": "TSLA"}  # the new child knew them
    assert len(set((tmp_path / "opens").read_text().split())) == 2


def test_sigint_and_sigterm_do_not_end_the_sink_process(tmp_path):
    runner = runner_for(tmp_path)
    pid = runner._proc.pid
    os.kill(pid, signal.SIGINT)  # what a terminal's ^C sends to the whole process group
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    assert runner._proc.is_alive()
    runner.offer(quotes(1, 1)[0])
    report = runner.stop(10)
    assert report["written"] == 1 and "process_deaths" not in report


def test_stop_ends_a_stuck_sink_at_its_deadline_and_counts_what_was_left(tmp_path):
    runner = runner_for(tmp_path, close_grace_s=1.0)
    (tmp_path / "sleep").write_text("60")
    for b in quotes(1, 3):
        runner.offer(b)
    wait_for(lambda: runner.queued() == 3 and runner.counts["written"] == 0, what="the stuck write")
    started = time.monotonic()
    report = runner.stop(0.5)
    took = time.monotonic() - started
    assert took < 0.5 + 1.0 + 1.0, took
    assert report["offered"] == 3 and report.get("written", 0) == 0
    assert report["dropped_batches"] == 3 and report["dropped_rows"] == 3
    assert "killed" in runner.last_error


def test_the_sink_process_ends_when_the_feed_process_dies(tmp_path):
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from publish.process_runner import ProcessSinkRunner\n"
        "from tests.publish.test_process_runner import DirectorySink\n"
        "if __name__ == '__main__':\n"
        f"    r = ProcessSinkRunner(DirectorySink, {{'root': {str(tmp_path)!r}}})\n"
        "    r.sink.wait_open(30)\n"
        "    print(r._proc.pid, flush=True)\n"
        "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # A zombie (exited, its parent dead, not yet reaped by init) counts as gone too.
        return Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z"

    wait_for(gone, timeout=10, what="the orphaned sink process to end")


def test_bad_sink_arguments_fail_in_the_caller(tmp_path):
    with pytest.raises(TypeError):
        ProcessSinkRunner(DirectorySink, {"root": str(tmp_path), "colour": "blue"})
    with pytest.raises(ValueError, match="overflow policy"):
        ProcessSinkRunner(DirectorySink, {"root": str(tmp_path)}, policy="block")


def thread_niceness(pid: int) -> set[int]:
    """The niceness of every thread of ``pid`` (Linux keeps one per thread)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            out.add(int(f.read().rsplit(")", 1)[1].split()[16]))
    return out


def test_a_sink_process_takes_its_nice_only_while_busy(tmp_path):
    """At the feed's niceness while it keeps up; ``nice`` more (every thread) once it takes over half a
    core; back where the OS lets it lower its niceness again, else it stays nicer."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    runner = runner_for(tmp_path, nice=7)
    try:
        for batch in quotes(1, 20):  # an easy pace: stays at the feed's niceness
            runner.offer(batch)
            time.sleep(0.05)
        wait_for(lambda: runner.counts["written"] == 20, what="the first twenty")
        assert thread_niceness(runner.pid) == {base} and runner.counts["niced"] == 0
        (tmp_path / "spin").write_text("0.02")  # each write computes 20 ms: a busy sink
        deadline = time.monotonic() + 20
        seq = 21
        while runner.counts["niced"] == 0 and time.monotonic() < deadline:
            runner.offer(quotes(seq, 1)[0])
            seq += 1
            time.sleep(0.01)
        assert runner.counts["niced"] == 1, runner.counts
        assert thread_niceness(runner.pid) == {base + 7}
        (tmp_path / "spin").unlink()
        may_lower = os.geteuid() == 0  # CAP_SYS_NICE (or an RLIMIT_NICE above the base, not set here)
        if may_lower:
            wait_for(lambda: thread_niceness(runner.pid) == {base}, what="the niceness back to the feed's")
        else:
            time.sleep(1.5)
            assert thread_niceness(runner.pid) == {base + 7}
    finally:
        report = runner.stop(10)
    assert report["offered"] == report["written"] + report.get("conflated", 0), report


def test_behind_a_full_speed_feed_a_sink_process_is_nicer_from_the_start(tmp_path):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    runner = runner_for(tmp_path, nice=7, nice_from_start=True)
    try:
        assert thread_niceness(runner.pid) == {base + 7}  # before any batch
        for batch in quotes(1, 20):  # an easy pace does not bring it back
            runner.offer(batch)
            time.sleep(0.05)
        wait_for(lambda: runner.counts["written"] == 20, what="the twenty batches")
        assert thread_niceness(runner.pid) == {base + 7} and runner.counts["niced"] == 1
    finally:
        runner.stop(10)
