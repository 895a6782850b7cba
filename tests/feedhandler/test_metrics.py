"""Latency histogram, Prometheus text, the HTTP endpoint and the status file, with known values."""
from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedhandler.metrics import (
    N_BUCKETS,
    SUB_COUNT,
    LatencyHistogram,
    MetricsError,
    MetricsServer,
    _bucket,
    bucket_upper_ns,
    fetch_status,
    format_status,
    read_status_file,
    render_prometheus,
)

SNAPSHOT = {
    "venue": "nasdaq", "source": "socket", "pid": 4242, "state": "running", "started_ns": 1_700_000_000_000_000_000,
    "now_ns": 1_700_000_012_500_000_000,
    "lines": {
        "A": {"address": "239.1.1.1:26400", "packets": 1000, "messages": 2900, "duplicates": 50, "gaps": 3,
              "gap_messages": 7, "heartbeats": 1, "bad_packets": 0, "kernel_drops": 2, "silent": False},
        "B": {"address": "239.1.1.2:26400", "packets": 990, "messages": 95, "duplicates": 2880, "gaps": 4,
              "gap_messages": 9, "heartbeats": 1, "bad_packets": 1, "kernel_drops": 0, "silent": True},
    },
    "recovery": {"packets": 2, "messages": 5, "duplicates": 0, "heartbeats": 0, "bad_packets": 0, "requests": 2,
                 "requested_messages": 5, "holes": 2, "server": "10.0.0.5:26500"},
    "feed": {"messages": 3000, "recovered": 5, "given_up": 1, "given_up_messages": 3, "held": 0, "held_peak": 17,
             "sessions": ["LIVE1"]},
    "books": {"instruments": 40, "resting_orders": 1234, "stale_instruments": 2, "stale_symbols": ["AAPL", 'Q"X']},
    "latency": {"count": 3000, "sum_ns": 60_000_000, "max_ns": 250_000, "negative": 0, "p50_ns": 15_000,
                "p99_ns": 48_000, "p999_ns": 120_000},
    "sinks": {"redis": {"offered": 100, "written": 98, "dropped_batches": 1, "conflated": 1, "queued": 0}},
    "sources": [{"kind": "socket", "lines": "A", "packets": 1000}],
    "anomalies": {"unknown_order_ref": 3},
    "events": [],
}

# One sample line of the text exposition format: name{labels} value
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? -?[0-9.e+-]+$')


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        assert SAMPLE.match(line), line
        key, value = line.rsplit(" ", 1)
        out[key] = float(value)
    return out


# -- histogram ---------------------------------------------------------------------------------------


def test_buckets_are_exact_below_64_and_contiguous_above():
    assert [_bucket(v) for v in range(SUB_COUNT + 1)] == list(range(SUB_COUNT + 1))
    values = np.unique(np.concatenate([np.arange(0, 5000), (1.07 ** np.arange(400)).astype(np.int64)]))
    buckets = np.array([_bucket(int(v)) for v in values])
    assert (np.diff(buckets) >= 0).all() and (np.diff(buckets[:5000]) == 1).sum() > 0
    for k in range(6, 40):  # no bucket skipped at a power of two
        assert _bucket(1 << k) == _bucket((1 << k) - 1) + 1
    assert _bucket(1 << 45) == N_BUCKETS - 1  # beyond the range: the last bucket


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=(1 << 40) - 1))
def test_a_value_lies_in_its_bucket_within_one_64th(v):
    b = _bucket(v)
    upper = int(bucket_upper_ns(b))
    lower = int(bucket_upper_ns(b - 1)) + 1 if b else 0
    assert lower <= v <= upper
    assert upper - lower <= max(0, v) / SUB_COUNT + 1


def test_quantiles_of_known_latencies():
    h = LatencyHistogram()
    now = 10_000_000
    h.record(now - np.arange(1, 1001, dtype=np.int64) * 1000, now)  # 1 us .. 1000 us, one each
    assert h.count == 1000
    s = h.summary()
    for key, true in (("p50_ns", 500_000), ("p99_ns", 990_000), ("p999_ns", 999_000)):
        assert true <= s[key] <= true * (1 + 1 / SUB_COUNT), (key, s[key])
    assert s["max_ns"] == 1_000_000 and s["sum_ns"] == 1000 * 1001 // 2 * 1000 and s["negative"] == 0
    h.record(np.array([now + 5], np.int64), now)  # a receive time after now: clock skew, counted as 0
    assert h.summary()["negative"] == 1 and h.count == 1001
    h.reset()
    assert h.summary() == {"count": 0, "sum_ns": 0, "max_ns": 0, "negative": 0, "p50_ns": 0, "p99_ns": 0,
                           "p999_ns": 0}


def test_quantile_never_exceeds_the_largest_sample():
    h = LatencyHistogram()
    h.record(np.array([0, 0, 0, 100_001], np.int64), 100_001)  # latencies 100001, 100001, 100001, 0
    assert h.quantile(0.999) == 100_001 and h.quantile(0.25) == 0


# -- Prometheus text -------------------------------------------------------------------------------


def test_prometheus_text_has_every_family_typed_and_the_snapshot_values():
    text = render_prometheus(SNAPSHOT)
    assert text.endswith("\n")
    samples = _samples(text)
    helps = re.findall(r"^# HELP (\S+) ", text, re.M)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert helps == list(types) and len(set(helps)) == len(helps)
    for key in samples:  # every sample belongs to a declared family
        name = key.split("{")[0]
        assert name in types or name.removesuffix("_sum") in types or name.removesuffix("_count") in types, key
    assert all(t in ("counter", "gauge", "summary") for t in types.values())
    assert all(n.endswith("_total") for n, t in types.items() if t == "counter")
    v = 'venue="nasdaq"'
    assert samples[f'feedhandler_line_packets_total{{{v},line="A"}}'] == 1000
    assert samples[f'feedhandler_line_packets_total{{{v},line="recovery"}}'] == 2
    assert samples[f'feedhandler_line_duplicates_total{{{v},line="B"}}'] == 2880
    assert samples[f'feedhandler_line_gaps_total{{{v},line="B"}}'] == 4
    assert samples[f'feedhandler_line_kernel_drops_total{{{v},line="A"}}'] == 2
    assert samples[f'feedhandler_line_silent{{{v},line="B"}}'] == 1
    assert samples[f'feedhandler_line_silent{{{v},line="A"}}'] == 0
    assert samples[f'feedhandler_recovered_messages_total{{{v}}}'] == 5
    assert samples[f'feedhandler_gaps_given_up_total{{{v}}}'] == 1
    assert samples[f'feedhandler_stale_instruments{{{v}}}'] == 2
    assert samples[f'feedhandler_receive_to_book_seconds{{{v},quantile="0.99"}}'] == pytest.approx(48e-6)
    assert samples[f'feedhandler_receive_to_book_seconds_count{{{v}}}'] == 3000
    assert samples[f'feedhandler_receive_to_book_seconds_sum{{{v}}}'] == pytest.approx(0.06)
    assert samples[f'feedhandler_sink_batches_total{{{v},sink="redis",outcome="dropped_batches"}}'] == 1
    assert samples[f'feedhandler_anomalies_total{{{v},kind="unknown_order_ref"}}'] == 3
    assert samples[f'feedhandler_start_time_seconds{{{v}}}'] == pytest.approx(1.7e9)


def test_label_values_are_escaped():
    snap = {**SNAPSHOT, "venue": 'a"b\\c\nd'}
    text = render_prometheus(snap)
    assert 'venue="a\\"b\\\\c\\nd"' in text
    _samples(text)  # still one valid sample per line


def test_an_empty_snapshot_renders_the_info_line_only():
    samples = _samples(render_prometheus({}))
    assert list(samples) == ['feedhandler_info{venue="",source="",state=""}', 'feedhandler_start_time_seconds{venue=""}']


# -- endpoint, status file, status text ------------------------------------------------------------


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.headers["Content-Type"], resp.read()


def test_server_serves_the_latest_snapshot(tmp_path):
    status_file = tmp_path / "status.json"
    with MetricsServer("127.0.0.1", 0, status_file=str(status_file)) as server:
        assert server.address[0] == "127.0.0.1" and server.address[1] > 0
        kind, body = _get(server.url + "/metrics")
        assert kind == "text/plain; version=0.0.4; charset=utf-8" and body.startswith(b"# HELP feedhandler_info")
        assert fetch_status(server.url) == {}
        server.publish(SNAPSHOT)
        kind, body = _get(server.url + "/metrics")
        assert _samples(body.decode()) == _samples(render_prometheus(SNAPSHOT))
        kind, body = _get(server.url + "/status")
        assert kind == "application/json" and json.loads(body) == SNAPSHOT
        assert fetch_status(server.url + "/status") == SNAPSHOT == fetch_status(server.url + "/")
        assert read_status_file(str(status_file)) == SNAPSHOT
        newer = {**SNAPSHOT, "state": "draining"}
        server.publish(newer)
        assert fetch_status(server.url)["state"] == "draining" and read_status_file(str(status_file)) == newer
        assert 'state="draining"' in _get(server.url + "/metrics")[1].decode()
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(server.url + "/nothing")
        assert err.value.code == 404
        with pytest.raises(MetricsError, match="HTTP 404"):
            fetch_status(server.url + "/nothing/status.json/x")
    with pytest.raises(MetricsError, match="no feedhandler answers"):
        fetch_status(server.url)


def test_bad_addresses_are_one_line_errors(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MetricsError, match=f"cannot listen on 127.0.0.1:{port} .*in use"):
            MetricsServer("127.0.0.1", port)
    with pytest.raises(MetricsError, match="cannot listen on 127.0.0.1:70000"):
        MetricsServer("127.0.0.1", 70000)
    with pytest.raises(MetricsError, match="not an http URL"):
        fetch_status("127.0.0.1:9108")
    with pytest.raises(MetricsError, match="cannot write status file"):
        MetricsServer("127.0.0.1", 0, status_file=str(tmp_path / "no" / "dir.json")).publish(SNAPSHOT)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MetricsError, match="cannot read status file"):
        read_status_file(str(tmp_path / "bad.json"))


def test_status_text_shows_the_counters():
    text = format_status(SNAPSHOT)
    lines = text.splitlines()
    assert lines[0] == "nasdaq live (socket), pid 4242, running, up 12.5 s"
    row_a = next(ln for ln in lines if ln.strip().startswith("A "))
    assert row_a.split() == ["A", "239.1.1.1:26400", "1,000", "2,900", "50", "3", "7", "2", "no"]
    row_b = next(ln for ln in lines if ln.strip().startswith("B "))
    assert row_b.split()[-1] == "yes"
    assert any(ln.split()[:2] == ["recovery", "10.0.0.5:26500"] for ln in lines)
    assert "3,000 messages in sequence, 5 recovered (2 holes, 2 re-requests), 1 gaps given up (3 messages)" in text
    assert "2 stale (AAPL, Q\"X)" in text
    assert "p50 15.0 us, p99 48.0 us, p99.9 120.0 us, max 250.0 us (3,000 messages)" in text
    assert "sink redis: offered 100, written 98, dropped 1, conflated 1, failures 0, queued 0" in text
    assert format_status({}) == "the handler has published no counters yet"
