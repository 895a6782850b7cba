"""Sinks by name, built from ``feedhandler.toml`` and command-line flags, each in a ``SinkRunner``.

``feedhandler.toml`` (all optional; flags override it):

    [replay]
    conflate = "1ms"          # BBO/L2 conflation window
    depth = 10
    speed = "max"             # 1 = the capture's own pace, N = N times faster

    [sinks.redis]
    url = "redis://127.0.0.1:6379/0"
    policy = "conflate"       # or "drop-oldest": what a full queue does
    queue_batches = 64        # batches the runner's queue holds

    [sinks.timescale]
    dsn = "postgresql://postgres@127.0.0.1:5432/marketdata"

    [sinks.websocket]
    listen = "127.0.0.1:8765"
    token = "change-me"       # optional
"""
from __future__ import annotations

import tomllib
from pathlib import Path

from publish.runner import SinkRunner

DEFAULT_CONFIG = "feedhandler.toml"


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


def build_runners(settings: dict[str, dict], venue_depth: int = 10) -> list[SinkRunner]:
    """One started ``SinkRunner`` per configured sink (``redis``, ``timescale``, ``websocket``)."""
    runners = []
    for name, conf in settings.items():
        conf = dict(conf)
        policy = conf.pop("policy", "conflate")
        max_batches = int(conf.pop("queue_batches", 64))  # the runner's queue; sinks keep their own settings
        runners.append(SinkRunner(_sink(name, conf, venue_depth), max_batches=max_batches, policy=policy))
    return runners


def _sink(name: str, conf: dict, depth: int):
    if name == "redis":
        from publish.redis_pub import RedisPublisher

        conf.setdefault("venue_depth", depth)
        return RedisPublisher(conf["url"], **{k: v for k, v in conf.items() if k != "url"})
    if name == "timescale":
        from publish.timescale import TimescaleSink

        return TimescaleSink(conf["dsn"], **{k: v for k, v in conf.items() if k != "dsn"})
    if name == "websocket":
        from publish.websocket_server import WebSocketServer

        host, _, port = str(conf.get("listen", "127.0.0.1:8765")).rpartition(":")
        conf.setdefault("depth", depth)
        return WebSocketServer(host or "127.0.0.1", int(port), **{k: v for k, v in conf.items() if k != "listen"})
    raise ConfigError(f"unknown sink {name!r} (redis, timescale, websocket)")
