"""``feedhandler live`` settings: the ``[live]`` section of feedhandler.toml, overridden by flags.

One live process runs one feed partition (DESIGN.md, "Scale"): one venue, its line A and optional
line B, one packet source kind, and the ``[sinks.*]`` of ``feedhandler.sinks``. The file layout is
documented in examples/feedhandler.toml; in short:

    [live]
    venue = "nasdaq"
    source = "socket"               # socket | afpacket | afxdp | shm
    iface = "eth1"                  # where the lines arrive
    rerequest = "10.0.0.5:26500"    # the venue's MoldUDP64 re-request server (optional)
    metrics = "127.0.0.1:9108"      # Prometheus /metrics and JSON /status (port 0: any free port)

    [live.lines.A]
    group = "239.1.1.1:26400"
    [live.lines.B]
    group = "239.1.1.2:26400"

Rules this module keeps: parsing only (no socket is opened here); every problem is a ``ConfigError``
with one line naming the setting; durations are strings like "2ms" (``feedhandler.times``); the
result is a frozen ``LiveConfig`` the pipeline reads and never changes.
"""
from __future__ import annotations

import os

import datetime as dt
from dataclasses import dataclass, field, replace

from feedhandler.sinks import ConfigError
from feedhandler.sources.base import SourceError, ipv4_to_int, parse_group_port
from feedhandler.times import parse_duration
from parsers.venues import VENUES_BY_NAME

SOURCE_KINDS = ("socket", "afpacket", "afxdp", "shm")
LINE_NAMES = ("A", "B")
DEFAULT_METRICS_HOST = "127.0.0.1"
DEFAULT_METRICS_PORT = 9108
MS = 1_000_000

# [live] keys -> (default, kind); kinds: "duration" (ns), "int", "float", "str", "bool".
_SCALARS = {
    "venue": ("nasdaq", "str"),
    "source": ("socket", "str"),
    "iface": (None, "str"),
    "rerequest": (None, "str"),
    "rerequest_bind": ("0.0.0.0", "str"),
    "date": (None, "str"),
    "depth": (10, "int"),
    "conflate": (0, "duration"),
    "metrics": (f"{DEFAULT_METRICS_HOST}:{DEFAULT_METRICS_PORT}", "str"),
    "status_file": (None, "str"),
    "drain": (5 * 1000 * MS, "duration"),
    "expect_from": (None, "int"),
    "give_up": (1000 * MS, "duration"),
    "request_delay": (2 * MS, "duration"),
    "retry": (50 * MS, "duration"),
    "silent": (1000 * MS, "duration"),
    "max_request_messages": (1000, "int"),
    "hold_messages": (1 << 16, "int"),
    "hold_bytes": (16 << 20, "int"),
    "rcvbuf": (64 << 20, "int"),
    "read_batch": (1024, "int"),
    "busy_poll": (False, "bool"),
    "fused": (True, "bool"),
    "profile": (False, "bool"),
    "idle_wait": (50 * MS, "duration"),
    "xdp_queue": (0, "int"),
    "xdp_mode": ("generic", "str"),
    "stats_interval": (250 * MS, "duration"),
    "netns": (None, "str"),
    "cpu": (None, "int"),
    "realtime": (0, "int"),
}
_LINE_KEYS = {"group", "iface", "source_address", "path"}


@dataclass(frozen=True)
class LineConfig:
    """One redundant line of the feed.

    Attributes:
        name: "A" or "B".
        group, port: the multicast group and UDP port.
        iface: interface to receive it on (None: the feed's ``iface``).
        source_address: sender address for a source-specific join (socket source), None: any source.
        path: the shared-memory ring carrying it (shm source); both lines may share one ring.
    """

    name: str
    group: str
    port: int
    iface: str | None = None
    source_address: str | None = None
    path: str | None = None

    @property
    def address(self) -> str:
        return f"{self.group}:{self.port}"


@dataclass(frozen=True)
class LiveConfig:
    """Everything ``feedhandler live`` needs; times in ns (see ``_SCALARS`` for the defaults)."""

    lines: tuple[LineConfig, ...]
    venue: str = "nasdaq"
    source: str = "socket"
    iface: str | None = None
    rerequest: tuple[str, int] | None = None
    rerequest_bind: str = "0.0.0.0"
    date: dt.date | None = None
    depth: int = 10
    conflate: int = 0
    metrics: tuple[str, int] | None = (DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT)
    status_file: str | None = None
    drain: int = 5 * 1000 * MS
    expect_from: int | None = None
    give_up: int = 1000 * MS
    request_delay: int = 2 * MS
    retry: int = 50 * MS
    silent: int = 1000 * MS
    max_request_messages: int = 1000
    hold_messages: int = 1 << 16
    hold_bytes: int = 16 << 20
    rcvbuf: int = 64 << 20
    read_batch: int = 1024
    busy_poll: bool = False
    fused: bool = True  # arbitration -> decode -> books in one compiled call per batch (feedhandler.live_kernel)
    profile: bool = False  # also measure receive -> read per packet (status "read_latency"; costs ~2 us a batch)
    idle_wait: int = 50 * MS
    xdp_queue: int = 0
    xdp_mode: str = "generic"
    stats_interval: int = 250 * MS
    netns: str | None = None
    cpu: int | None = None  # run the feed loop on this CPU only (sched_setaffinity); None: anywhere
    realtime: int = 0  # SCHED_FIFO priority of the feed loop (1..99; 0: the ordinary scheduler)
    sinks: dict = field(default_factory=dict)

    def line(self, name: str) -> LineConfig | None:
        return next((ln for ln in self.lines if ln.name == name), None)

    def line_iface(self, line: LineConfig) -> str | None:
        return line.iface or self.iface


def live_config(file_config: dict, overrides: dict | None = None) -> LiveConfig:
    """A checked ``LiveConfig`` from a parsed feedhandler.toml (``load_config``) and flag overrides.

    ``overrides`` keys: any ``[live]`` key, plus ``group`` / ``b_group`` ("G:P" of lines A / B),
    ``shm_path`` (the ring of every line), ``metrics_port`` (the endpoint's port, on the configured
    host) and ``redis`` / ``timescale`` / ``ws`` / ``out`` (sink addresses, ``out`` the Parquet
    directory); None values are ignored.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    section = file_config.get("live", {})
    if not isinstance(section, dict):
        raise ConfigError("[live] must be a table")
    unknown = set(section) - set(_SCALARS) - {"lines"}
    if unknown:
        raise ConfigError(f"[live]: unknown setting {sorted(unknown)[0]!r}")
    values = {}
    for key, (default, kind) in _SCALARS.items():
        raw = overrides.get(key, section.get(key, default))
        values[key] = _typed(key, raw, kind, default)
    values["metrics_port"] = overrides.get("metrics_port")
    lines = _lines(section.get("lines", {}), overrides)
    cfg = LiveConfig(lines=lines, **_checked(values))
    sinks = {name: dict(conf) for name, conf in file_config.get("sinks", {}).items()}
    for name, key, flag in (("redis", "url", "redis"), ("timescale", "dsn", "timescale"), ("websocket", "listen", "ws"),
                            ("parquet", "dir", "out")):
        if flag in overrides:
            sinks.setdefault(name, {})[key] = overrides[flag]
    return replace(cfg, sinks=sinks)


def _typed(key: str, raw, kind: str, default):
    if raw is None or (raw == default and kind != "duration"):
        return raw
    try:
        if kind == "duration":
            if isinstance(raw, bool) or (isinstance(raw, (int, float)) and raw is not default and raw != 0):
                raise ConfigError(f"[live] {key}: write durations as strings with a unit, like \"2ms\": {raw!r}")
            return raw if isinstance(raw, int) else parse_duration(str(raw))
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(str(raw).replace("_", ""))
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return str(raw)
    except ValueError:
        raise ConfigError(f"[live] {key}: not a valid {kind}: {raw!r}") from None


def _checked(v: dict) -> dict:
    """Cross-field checks and conversions of the scalar settings."""
    if v["venue"] not in VENUES_BY_NAME:
        raise ConfigError(f"[live] venue: unknown venue {v['venue']!r} ({', '.join(sorted(VENUES_BY_NAME))})")
    if v["source"] not in SOURCE_KINDS:
        raise ConfigError(f"[live] source: {v['source']!r} is not one of {', '.join(SOURCE_KINDS)}")
    if v["source"] in ("afpacket", "afxdp") and not v["iface"]:
        raise ConfigError(f"[live] source {v['source']} needs an interface (iface / --iface)")
    if v["rerequest"] is not None:
        v["rerequest"] = _host_port("rerequest", v["rerequest"])
    if v["date"] is not None:
        try:
            v["date"] = dt.date.fromisoformat(str(v["date"]))
        except ValueError:
            raise ConfigError(f"[live] date: not a date (YYYY-MM-DD): {v['date']!r}") from None
    if not 1 <= v["depth"] <= 255:
        raise ConfigError(f"[live] depth must be within 1..255: {v['depth']}")
    metrics = v["metrics"]
    if metrics is None or str(metrics).lower() in ("", "off", "none"):
        v["metrics"] = None
    elif str(metrics).isdigit():  # a bare port: loopback
        v["metrics"] = (DEFAULT_METRICS_HOST, _port("metrics", metrics, allow_zero=True))
    else:
        v["metrics"] = _host_port("metrics", metrics, allow_zero=True)
    port = v.pop("metrics_port")
    if port is not None:  # --metrics-port: the configured host (loopback by default), this port
        host = v["metrics"][0] if v["metrics"] is not None else DEFAULT_METRICS_HOST
        v["metrics"] = (host, _port("metrics port", port, allow_zero=True))
    for key in ("max_request_messages", "hold_messages", "hold_bytes", "rcvbuf", "read_batch"):
        if v[key] < 1:
            raise ConfigError(f"[live] {key} must be positive: {v[key]}")
    if not 1 <= v["max_request_messages"] <= 65534:
        raise ConfigError(f"[live] max_request_messages must be within 1..65534: {v['max_request_messages']}")
    for key in ("give_up", "request_delay", "retry", "silent", "idle_wait", "stats_interval"):
        if v[key] <= 0:
            raise ConfigError(f"[live] {key} must be a positive duration")
    if v["expect_from"] is not None and v["expect_from"] < 1:
        raise ConfigError(f"[live] expect_from must be at least 1: {v['expect_from']}")
    if v["cpu"] is not None and not 0 <= v["cpu"] < (os.cpu_count() or 1):
        raise ConfigError(f"[live] cpu must be one of this machine's CPUs, 0..{(os.cpu_count() or 1) - 1}: {v['cpu']}")
    if not 0 <= v["realtime"] <= 99:
        raise ConfigError(f"[live] realtime is a SCHED_FIFO priority, 1..99 (0: off): {v['realtime']}")
    if v["xdp_mode"] not in ("generic", "native"):
        raise ConfigError(f"[live] xdp_mode must be generic or native: {v['xdp_mode']!r}")
    return v


def _lines(section: dict, overrides: dict) -> tuple[LineConfig, ...]:
    if not isinstance(section, dict):
        raise ConfigError("[live.lines] must hold tables [live.lines.A] and [live.lines.B]")
    extra = set(section) - set(LINE_NAMES)
    if extra:
        raise ConfigError(f"[live.lines]: lines are named A and B, not {sorted(extra)[0]!r}")
    out = []
    for name, flag in (("A", "group"), ("B", "b_group")):
        conf = dict(section.get(name, {}))
        unknown = set(conf) - _LINE_KEYS
        if unknown:
            raise ConfigError(f"[live.lines.{name}]: unknown setting {sorted(unknown)[0]!r}")
        if flag in overrides:
            conf["group"] = overrides[flag]
        if "shm_path" in overrides and "group" in conf:
            conf["path"] = overrides["shm_path"]
        if "group" not in conf:
            if name == "A":
                raise ConfigError("no line A: give --group GROUP:PORT or [live.lines.A] group")
            if conf:
                raise ConfigError("[live.lines.B] has settings but no group")
            continue
        try:
            group, port = parse_group_port(str(conf["group"]))
            if ipv4_to_int(group) >> 28 != 0xE:
                raise SourceError(f"{group} is not a multicast address (224.0.0.0/4)")
            if conf.get("source_address") is not None:
                ipv4_to_int(str(conf["source_address"]))
        except SourceError as exc:
            raise ConfigError(f"line {name}: {exc}") from None
        out.append(LineConfig(name, group, port, conf.get("iface"), conf.get("source_address"), conf.get("path")))
    if len(out) == 2 and (out[0].group, out[0].port) == (out[1].group, out[1].port):
        raise ConfigError(f"lines A and B are the same group {out[0].address}: give B its own")
    return tuple(out)


def _port(key: str, text, allow_zero: bool = False) -> int:
    try:
        port = int(str(text))
    except ValueError:
        raise ConfigError(f"[live] {key}: not a port: {text!r}") from None
    if not (0 if allow_zero else 1) <= port < 65536:
        raise ConfigError(f"[live] {key}: port out of range: {port}")
    return port


def _host_port(key: str, text, allow_zero: bool = False) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host:
        raise ConfigError(f"[live] {key}: expected HOST:PORT, got {text!r}")
    return host, _port(key, port, allow_zero)
