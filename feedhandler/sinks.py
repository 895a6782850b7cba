"""Sinks by name, built from ``feedhandler.toml`` and command-line flags, each in a ``SinkRunner``.

``feedhandler.toml`` (all optional; flags override it):

    [replay]
    conflate = "1ms"          # BBO/L2 conflation window
    depth = 10
    speed = "max"             # 1 = the capture's own pace, N = N times faster

    [sinks.redis]
    url = "redis://127.0.0.1:6379/0"
    policy = "conflate"       # or "drop-oldest": what a full queue does
    queue_batches = 64        # batches waiting before the policy applies
    process = true            # run the sink in a process of its own (false: a thread of the feed's)
    queue_mb = 64             # process: the shared-memory queue between the feed and the sink
    nice = 10                 # process: added to the sink process's niceness while it is busy (from the start at full speed)

    [sinks.timescale]
    dsn = "postgresql://postgres@127.0.0.1:5432/marketdata"

    [sinks.websocket]
    listen = "127.0.0.1:8765"
    token = "change-me"       # optional
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from publish.process_runner import ProcessSinkRunner
from publish.runner import SinkRunner

DEFAULT_CONFIG = "feedhandler.toml"
# Sink processes run this much nicer than the feed while they are busy (over half a core, or behind),
# and from the start behind a replay at full speed: when cores are short, the feed keeps its share and
# the sinks take what is left (their queues conflate meanwhile). A sink that keeps up runs at the feed's
# niceness, so its wake-ups, on the path of every update to a client, do not queue behind everything
# else. 0 treats them as equals.
SINK_NICE = 10


class ConfigError(Exception):
    """A config file or sink setting that cannot be used; one line for the user."""


def load_config(path: str | None) -> dict:
    """The parsed TOML file (``path``, or ./feedhandler.toml if it exists), or {}."""
    p = Path(path) if path else Path(DEFAULT_CONFIG)
    if not p.exists():
        if path:
            raise ConfigError(f"no such config file: {p}")
        return {}
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read config {p}: {exc}") from None


def build_runners(settings: dict[str, dict], venue_depth: int = 10,
                  full_speed: bool = False) -> list[SinkRunner | ProcessSinkRunner]:
    """One started runner per configured sink (``redis``, ``timescale``, ``websocket``).

    Each sink runs in a process of its own (``publish.process_runner``) unless ``process = false``:
    then on a thread of the feed's process (``publish.runner``), sharing its interpreter lock.
    ``full_speed``: the feed never waits (a replay without ``--speed``), so the sink processes take
    their ``nice`` from the start instead of once they look busy.
    """
    runners = []
    try:
        for name, conf in settings.items():
            conf = dict(conf)
            policy = conf.pop("policy", "conflate")
            max_batches = int(conf.pop("queue_batches", 64))  # the runner's; sinks keep their own settings
            in_process = _flag(name, conf.pop("process", True))
            queue_mb = float(conf.pop("queue_mb", 64))
            nice = int(conf.pop("nice", SINK_NICE))
            factory, kwargs, attrs = _sink(name, conf, venue_depth)
            if in_process:
                runners.append(ProcessSinkRunner(factory, kwargs, max_batches=max_batches, policy=policy,
                                                 queue_bytes=_queue_bytes(name, queue_mb), nice=nice,
                                                 nice_from_start=full_speed, attrs=attrs))
            else:
                runners.append(SinkRunner(factory(**kwargs), max_batches=max_batches, policy=policy))
    except BaseException:
        for runner in runners:  # the ones already started must not outlive a refused setting
            runner.stop(0)
        raise
    return runners


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"sinks.{name}.process must be true or false")
    return value


def _queue_bytes(name: str, megabytes: float) -> int:
    if not 1 <= megabytes <= 16384:
        raise ConfigError(f"sinks.{name}.queue_mb must be from 1 to 16384")
    return int(megabytes * 2**20) // 4096 * 4096


def _sink(name: str, conf: dict, depth: int) -> tuple[type, dict, dict]:
    """(sink class, its keyword arguments, attributes known before it opens) of a configured sink."""
    if name == "redis":
        from publish.redis_pub import RedisPublisher

        conf.setdefault("venue_depth", depth)
        return RedisPublisher, {"url": conf.pop("url"), **conf}, {}
    if name == "timescale":
        from publish.timescale import TimescaleSink

        return TimescaleSink, {"dsn": conf.pop("dsn"), **conf}, {}
    if name == "websocket":
        from publish.websocket_server import WebSocketServer

        host, _, port = str(conf.pop("listen", "127.0.0.1:8765")).rpartition(":")
        conf.setdefault("depth", depth)
        host = host or "127.0.0.1"
        return WebSocketServer, {"host": host, "port": int(port), **conf}, {"host": host, "port": int(port)}
    raise ConfigError(f"unknown sink {name!r} (redis, timescale, websocket)")
