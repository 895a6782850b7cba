"""The live handler's counters for people and Prometheus: latency histogram, /metrics, /status.

Rules this module keeps:

- The live loop owns every counter; it hands this module a plain snapshot dict now and then
  (``MetricsServer.publish``), and the HTTP thread only renders the latest one. Nothing here reads
  the pipeline's arrays from another thread.
- ``/metrics`` is the Prometheus text exposition format (0.0.4): counters end in ``_total``, times are
  seconds, every line family has its HELP and TYPE. ``/status`` is the snapshot as JSON, the same
  dict ``feedhandler status`` prints and ``status_file`` holds.
- The server listens on loopback by default (a status page is not for the network); a port that
  cannot be bound is a ``MetricsError`` with one line.
- ``LatencyHistogram.record`` is a numba kernel over a batch's receive times: no Python per message.

The snapshot (``feedhandler.live.LiveHandler.snapshot``) has: venue, source, pid, state, started_ns,
now_ns, lines {A, B: packets, messages, duplicates, gaps, gap_messages, heartbeats, bad_packets,
kernel_drops, silent, address}, recovery {packets, messages, duplicates, requests,
requested_messages, holes}, feed {messages, recovered, given_up, given_up_messages, held, held_peak,
sessions}, books {instruments, resting_orders, stale_instruments, stale_symbols}, latency {count,
sum_ns, max_ns, negative, p50_ns, p99_ns, p999_ns}, sinks {name: runner counts + queued}, sources
[...], anomalies {name: count}, events [...].
"""
from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numba as nb
import numpy as np

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

# Log-linear buckets: values below 2**SUB_BITS ns exactly, above that 2**SUB_BITS buckets per power of
# two (relative error below 1/64), up to 2**MAX_EXP ns (~18 minutes; larger values land in the last).
SUB_BITS = 6
SUB_COUNT = 1 << SUB_BITS
MAX_EXP = 40
N_BUCKETS = (MAX_EXP - SUB_BITS + 1) * SUB_COUNT
QUANTILES = ((0.5, "p50_ns"), (0.99, "p99_ns"), (0.999, "p999_ns"))

# Slots of the histogram's scalar array.
L_COUNT, L_SUM, L_MAX, L_NEGATIVE = range(4)


class MetricsError(Exception):
    """The metrics server cannot start, or a status URL cannot be read; one line."""


@nb.njit(cache=True, inline="always")
def _bucket(v):
    if v < SUB_COUNT:
        return v
    e = np.int64(63)
    while (v >> e) == 0:
        e -= 1
    shift = e - SUB_BITS
    b = (shift + 1) * SUB_COUNT + ((v >> shift) - SUB_COUNT)
    return min(b, N_BUCKETS - 1)


@nb.njit(cache=True, nogil=True)
def _record(counts, scal, ts_recv, now):
    """Add ``now - ts_recv[i]`` (ns) of every row; negative spans (clock skew) count as 0."""
    for i in range(ts_recv.shape[0]):
        v = now - ts_recv[i]
        if v < 0:
            scal[L_NEGATIVE] += 1
            v = 0
        counts[_bucket(v)] += 1
        scal[L_COUNT] += 1
        scal[L_SUM] += v
        if v > scal[L_MAX]:
            scal[L_MAX] = v


def bucket_upper_ns(b: np.ndarray) -> np.ndarray:
    """Largest value (ns) that falls in bucket ``b``."""
    b = np.asarray(b, np.int64)
    low = b < SUB_COUNT
    shift = np.maximum(b // SUB_COUNT - 1, 0)
    sub = b % SUB_COUNT + SUB_COUNT
    upper = ((sub + 1) << shift) - 1
    return np.where(low, b, upper)


class LatencyHistogram:
    """Counts of latencies (ns) in log-linear buckets; quantiles within 1/64 of the true value."""

    def __init__(self) -> None:
        self.counts = np.zeros(N_BUCKETS, np.int64)
        self.scal = np.zeros(4, np.int64)

    def record(self, ts_recv: np.ndarray, now_ns: int) -> None:
        """One sample per row: ``now_ns - ts_recv``."""
        _record(self.counts, self.scal, ts_recv, np.int64(now_ns))

    @property
    def count(self) -> int:
        return int(self.scal[L_COUNT])

    def quantile(self, q: float) -> int:
        """The smallest bucket bound (ns) with at least ``q`` of the samples at or below it; 0 if empty."""
        n = self.count
        if n == 0:
            return 0
        rank = max(1, int(np.ceil(q * n)))
        b = int(np.searchsorted(np.cumsum(self.counts), rank))
        return int(min(bucket_upper_ns(b), self.scal[L_MAX]))

    def summary(self) -> dict:
        out = {"count": self.count, "sum_ns": int(self.scal[L_SUM]), "max_ns": int(self.scal[L_MAX]),
               "negative": int(self.scal[L_NEGATIVE])}
        for q, name in QUANTILES:
            out[name] = self.quantile(q)
        return out

    def reset(self) -> None:
        self.counts[:] = 0
        self.scal[:] = 0


# ---------------------------------------------------------------------------------------------------
# Prometheus text


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Families:
    """Metric families in the order first declared, each with HELP, TYPE and its samples."""

    def __init__(self) -> None:
        self._order: list[str] = []
        self._meta: dict[str, tuple[str, str]] = {}
        self._samples: dict[str, list[str]] = {}

    def add(self, name: str, metric_type: str, help_text: str, value, /, suffix: str = "", **labels) -> None:
        if name not in self._meta:
            self._order.append(name)
            self._meta[name] = (metric_type, help_text)
            self._samples[name] = []
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        number = float(value)
        shown = str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)
        self._samples[name].append(f"{name}{suffix}{{{text}}} {shown}" if text else f"{name}{suffix} {shown}")

    def text(self) -> str:
        out = []
        for name in self._order:
            kind, help_text = self._meta[name]
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(self._samples[name])
        return "\n".join(out) + "\n"


_LINE_COUNTERS = (
    ("packets", "feedhandler_line_packets_total", "MoldUDP64 packets received on the line"),
    ("messages", "feedhandler_line_messages_total", "messages this line delivered first"),
    ("duplicates", "feedhandler_line_duplicates_total", "messages dropped as copies already delivered or held"),
    ("gaps", "feedhandler_line_gaps_total", "jumps in the line's own sequence (packets it lost)"),
    ("gap_messages", "feedhandler_line_gap_messages_total", "messages missing in those jumps"),
    ("kernel_drops", "feedhandler_line_kernel_drops_total", "packets the kernel or ring dropped before the handler read them"),
    ("heartbeats", "feedhandler_line_heartbeats_total", "heartbeat and end-of-session packets"),
    ("bad_packets", "feedhandler_line_bad_packets_total", "packets too short or with a message past their end"),
)


def render_prometheus(snap: dict) -> str:
    """The snapshot as Prometheus text exposition (see the module docstring for its shape)."""
    f = _Families()
    venue = snap.get("venue", "")
    f.add("feedhandler_info", "gauge", "the running feed: venue and packet source", 1, venue=venue,
          source=snap.get("source", ""), state=snap.get("state", ""))
    f.add("feedhandler_start_time_seconds", "gauge", "when the handler started (Unix time)",
          snap.get("started_ns", 0) / 1e9, venue=venue)
    lines = dict(snap.get("lines", {}))
    recovery = snap.get("recovery", {})
    for key, name, help_text in _LINE_COUNTERS:
        for line, row in lines.items():
            if key in row:
                f.add(name, "counter", help_text, row[key], venue=venue, line=line)
        if key in recovery:
            f.add(name, "counter", help_text, recovery[key], venue=venue, line="recovery")
    for line, row in lines.items():
        f.add("feedhandler_line_silent", "gauge", "1 while the line is reported silent", int(bool(row.get("silent"))),
              venue=venue, line=line)
    feed = snap.get("feed", {})
    for key, name, kind, help_text in (
            ("messages", "feedhandler_messages_total", "counter", "messages delivered in sequence to the decoder"),
            ("recovered", "feedhandler_recovered_messages_total", "counter", "messages the re-requests brought"),
            ("given_up", "feedhandler_gaps_given_up_total", "counter", "holes given up (books flagged stale)"),
            ("given_up_messages", "feedhandler_given_up_messages_total", "counter", "messages lost in given-up holes"),
            ("held", "feedhandler_held_messages", "gauge", "messages held behind a hole now"),
            ("held_peak", "feedhandler_held_messages_peak", "gauge", "most messages ever held at once")):
        if key in feed:
            f.add(name, kind, help_text, feed[key], venue=venue)
    for key, name, help_text in (("holes", "feedhandler_holes_total", "holes re-requested"),
                                 ("requests", "feedhandler_rerequests_total", "re-request packets sent"),
                                 ("requested_messages", "feedhandler_rerequested_messages_total",
                                  "messages asked for in re-requests")):
        if key in recovery:
            f.add(name, "counter", help_text, recovery[key], venue=venue)
    books = snap.get("books", {})
    for key, name, help_text in (("instruments", "feedhandler_instruments", "instruments in the stock directory"),
                                 ("resting_orders", "feedhandler_resting_orders", "orders resting in every book"),
                                 ("stale_instruments", "feedhandler_stale_instruments",
                                  "instruments whose book missed messages (a given-up gap)")):
        if key in books:
            f.add(name, "gauge", help_text, books[key], venue=venue)
    lat = snap.get("latency", {})
    if lat:
        name, help_text = "feedhandler_receive_to_book_seconds", "kernel receive timestamp to book updated, per message"
        for q, key in QUANTILES:
            f.add(name, "summary", help_text, lat.get(key, 0) / 1e9, venue=venue, quantile=repr(q))
        f.add(name, "summary", help_text, lat.get("sum_ns", 0) / 1e9, suffix="_sum", venue=venue)
        f.add(name, "summary", help_text, lat.get("count", 0), suffix="_count", venue=venue)
        f.add("feedhandler_receive_to_book_max_seconds", "gauge", "largest latency seen",
              lat.get("max_ns", 0) / 1e9, venue=venue)
    for sink, counts in snap.get("sinks", {}).items():
        for outcome in ("offered", "written", "dropped_batches", "conflated", "failures"):
            f.add("feedhandler_sink_batches_total", "counter", "batches per sink by outcome", counts.get(outcome, 0),
                  venue=venue, sink=sink, outcome=outcome)
        f.add("feedhandler_sink_queued_batches", "gauge", "batches waiting in the sink's queue",
              counts.get("queued", 0), venue=venue, sink=sink)
    for kind, count in snap.get("anomalies", {}).items():
        f.add("feedhandler_anomalies_total", "counter", "decoder anomalies by kind", count, venue=venue, kind=kind)
    return f.text()


# ---------------------------------------------------------------------------------------------------
# the endpoint


class MetricsServer:
    """Serves ``/metrics`` (Prometheus) and ``/status`` (JSON) of the latest published snapshot.

    Args:
        host, port: where to listen (port 0: any free port; ``address`` says which).
        status_file: also write each published snapshot there as JSON (atomically), when set.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, status_file: str | None = None) -> None:
        self._snapshot: dict = {}
        self._text: str | None = None
        self._lock = threading.Lock()
        self.status_file = status_file
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, kind = server.metrics_text().encode(), PROMETHEUS_CONTENT_TYPE
                elif path in ("/status", "/status.json"):
                    body, kind = json.dumps(server.snapshot(), separators=(",", ":")).encode(), JSON_CONTENT_TYPE
                elif path == "/":
                    body, kind = b"feedhandler live: /metrics (Prometheus), /status (JSON)\n", "text/plain"
                else:
                    self.send_error(404, "only /metrics and /status")
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # no access log on stderr
                pass

        try:
            self._httpd = ThreadingHTTPServer((host, int(port)), Handler)
        except (OSError, OverflowError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise MetricsError(f"metrics endpoint: cannot listen on {host}:{port} ({reason})") from None
        self._httpd.daemon_threads = True
        self.address: tuple[str, int] = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def publish(self, snapshot: dict) -> None:
        """Make ``snapshot`` the one served (and write the status file)."""
        with self._lock:
            self._snapshot = snapshot
            self._text = None
        if self.status_file:
            write_status_file(self.status_file, snapshot)

    def snapshot(self) -> dict:
        with self._lock:
            return self._snapshot

    def metrics_text(self) -> str:
        with self._lock:
            if self._text is None:
                self._text = render_prometheus(self._snapshot)
            return self._text

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_status_file(path: str, snapshot: dict) -> None:
    """Write the snapshot as JSON, atomically (a reader never sees half a file)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as out:
            json.dump(snapshot, out, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as exc:
        raise MetricsError(f"cannot write status file {path}: {exc.strerror}") from None


def fetch_status(url: str, timeout: float = 5.0) -> dict:
    """The snapshot a running handler serves at ``url`` (its base, or the /status URL itself)."""
    target = url.rstrip("/")
    if not target.startswith(("http://", "https://")):
        raise MetricsError(f"not an http URL: {url!r}")
    if not target.endswith(("/status", "/status.json")):
        target += "/status"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise MetricsError(f"{target}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
        raise MetricsError(f"no feedhandler answers at {target} ({reason}): is `feedhandler live` running "
                           "with that metrics port?") from None
    except (OSError, ValueError) as exc:
        raise MetricsError(f"{target}: {exc}") from None


def read_status_file(path: str) -> dict:
    try:
        with open(path) as src:
            return json.load(src)
    except FileNotFoundError:
        raise MetricsError(f"no status file {path}") from None
    except (OSError, ValueError) as exc:
        raise MetricsError(f"cannot read status file {path}: {exc}") from None


def format_status(snap: dict) -> str:
    """The snapshot as a short table for people (``feedhandler status``)."""
    if not snap:
        return "the handler has published no counters yet"
    up = (snap.get("now_ns", 0) - snap.get("started_ns", 0)) / 1e9
    out = [f"{snap.get('venue', '?')} live ({snap.get('source', '?')}), pid {snap.get('pid', '?')}, "
           f"{snap.get('state', '?')}, up {up:,.1f} s"]
    head = f"  {'line':<9}{'address':<22}{'packets':>12}{'messages':>12}{'duplicates':>12}{'gaps':>8}" \
           f"{'gap msgs':>10}{'kernel drops':>14}  silent"
    out.append(head)
    for name, row in snap.get("lines", {}).items():
        out.append(f"  {name:<9}{row.get('address', ''):<22}{row.get('packets', 0):>12,}{row.get('messages', 0):>12,}"
                   f"{row.get('duplicates', 0):>12,}{row.get('gaps', 0):>8,}{row.get('gap_messages', 0):>10,}"
                   f"{row.get('kernel_drops', 0):>14,}  {'yes' if row.get('silent') else 'no'}")
    rec = snap.get("recovery", {})
    if rec:
        out.append(f"  {'recovery':<9}{rec.get('server', '-'):<22}{rec.get('packets', 0):>12,}"
                   f"{rec.get('messages', 0):>12,}{rec.get('duplicates', 0):>12,}")
    feed = snap.get("feed", {})
    out.append(f"  feed: {feed.get('messages', 0):,} messages in sequence, {feed.get('recovered', 0):,} recovered "
               f"({rec.get('holes', 0):,} holes, {rec.get('requests', 0):,} re-requests), "
               f"{feed.get('given_up', 0):,} gaps given up ({feed.get('given_up_messages', 0):,} messages), "
               f"{feed.get('held', 0):,} held")
    books = snap.get("books", {})
    stale = books.get("stale_instruments", 0)
    names = ", ".join(books.get("stale_symbols", [])[:10])
    out.append(f"  books: {books.get('instruments', 0):,} instruments, {books.get('resting_orders', 0):,} resting "
               f"orders, {stale:,} stale" + (f" ({names}{', ...' if stale > 10 else ''})" if stale else ""))
    lat = snap.get("latency", {})
    if lat.get("count"):
        out.append(f"  latency receive->book: p50 {lat['p50_ns'] / 1e3:,.1f} us, p99 {lat['p99_ns'] / 1e3:,.1f} us, "
                   f"p99.9 {lat['p999_ns'] / 1e3:,.1f} us, max {lat['max_ns'] / 1e3:,.1f} us "
                   f"({lat['count']:,} messages)")
    for sink, c in snap.get("sinks", {}).items():
        out.append(f"  sink {sink}: offered {c.get('offered', 0):,}, written {c.get('written', 0):,}, "
                   f"dropped {c.get('dropped_batches', 0):,}, conflated {c.get('conflated', 0):,}, "
                   f"failures {c.get('failures', 0):,}, queued {c.get('queued', 0):,}")
    anomalies = snap.get("anomalies", {})
    if anomalies:
        out.append("  anomalies: " + ", ".join(f"{k} {v:,}" for k, v in anomalies.items()))
    return "\n".join(out)
