"""Placing the feed loop: ``[live] cpu`` and ``realtime`` (feedhandler.live.place_thread), and their checks."""
from __future__ import annotations

import os
import threading

import pytest

from feedhandler.live import LiveError, place_thread
from feedhandler.live_config import live_config
from feedhandler.sinks import ConfigError

LINE = {"group": "239.1.1.1:26400", "metrics": "off"}


def _on_a_thread(fn):
    """Run ``fn`` on a thread of its own (placement is per thread) and return what it returned."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_settings_are_read_and_checked():
    cfg = live_config({"live": {"cpu": 0, "realtime": 20}}, LINE)
    assert (cfg.cpu, cfg.realtime) == (0, 20)
    assert (live_config({}, LINE).cpu, live_config({}, LINE).realtime) == (None, 0)
    with pytest.raises(ConfigError, match="cpu must be one of this machine's CPUs"):
        live_config({}, {**LINE, "cpu": os.cpu_count()})
    with pytest.raises(ConfigError, match="SCHED_FIFO priority, 1..99"):
        live_config({}, {**LINE, "realtime": 100})


def test_the_calling_thread_is_pinned_and_made_realtime():
    def placed():
        place_thread(0, 7)
        return os.sched_getaffinity(0), os.sched_getscheduler(0), os.sched_getparam(0).sched_priority

    if os.geteuid() != 0:
        pytest.fail("this test sets SCHED_FIFO: run it as root (CI does)")
    cpus, policy, priority = _on_a_thread(placed)
    assert cpus == {0}
    assert (policy, priority) == (os.SCHED_FIFO, 7)
    # only that thread: this one keeps its scheduler
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_nothing_asked_nothing_changed():
    before = os.sched_getaffinity(0)
    assert _on_a_thread(lambda: (place_thread(None, 0), os.sched_getaffinity(0))[1]) == before


def test_a_refusal_is_one_line():
    def refused():
        place_thread(10_000, 0)  # a CPU this machine does not have

    with pytest.raises(LiveError, match=r"cannot place the feed loop \(CPU 10000\): Invalid argument"):
        _on_a_thread(refused)
