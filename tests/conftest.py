"""Shared fixtures.

Server fixtures connect to the REAL Redis and PostgreSQL named by FEEDHANDLER_REDIS_URL and
FEEDHANDLER_PG_DSN (defaults below; `make test` exports the same and starts both servers through
scripts/services.sh). Nothing is mocked and nothing is skipped: a server that cannot be reached
fails the test with a message saying which server and how to start it. Tests keep to their own
keys and tables (``unique_name``) so several runs can share one server.

``real_data`` is the directory of real captures (FEEDHANDLER_REAL_DATA); its tests skip when unset.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/feedhandler_test"

_REDIS_HOWTO = (
    "`make test` starts it (scripts/services.sh); by hand: "
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no"
)
_PG_HOWTO = (
    "`make test` starts it and creates the database (scripts/services.sh); by hand: "
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start && "
    "psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE feedhandler_test'"
)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis that answers PING, or the test fails saying how to start one."""
    import redis

    url = os.environ.get("FEEDHANDLER_REDIS_URL", DEFAULT_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    problem = None
    try:
        client.ping()
    except redis.RedisError as exc:
        problem = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    if problem:
        pytest.fail(f"Redis at {url} is unreachable ({problem}). {_REDIS_HOWTO}", pytrace=False)
    return url


@pytest.fixture
def redis_client(redis_url: str):
    """A redis-py client (bytes responses) on the test database."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """DSN of a PostgreSQL that accepts a connection, or the test fails saying how to start one."""
    import psycopg

    dsn = os.environ.get("FEEDHANDLER_PG_DSN", DEFAULT_PG_DSN)
    problem = None
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        problem = f"{type(exc).__name__}: {str(exc).strip()}"
    if problem:
        pytest.fail(f"PostgreSQL at {dsn} is unreachable ({problem}). {_PG_HOWTO}", pytrace=False)
    return dsn


@pytest.fixture
def pg_conn(pg_dsn: str):
    """An autocommit psycopg connection to the test database."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def unique_name() -> str:
    """A fresh lowercase identifier for this test's keys and tables: t_<12 hex digits>."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def real_data():
    """Directory of the real exchange captures (env FEEDHANDLER_REAL_DATA); skips when unset."""
    from pathlib import Path

    root = os.environ.get("FEEDHANDLER_REAL_DATA")
    if not root:
        pytest.skip("FEEDHANDLER_REAL_DATA is unset: set it to the real-captures directory (CI: ../shared/data/real)")
    if not Path(root).is_dir():
        pytest.fail(f"FEEDHANDLER_REAL_DATA={root} is not a directory of real captures", pytrace=False)
    return Path(root)


class PrivateRedis:
    """Our own redis-server on a free loopback port, no persistence, to kill and restart mid-test
    (the shared server never stops). ``start()``, ``kill()``, ``client(**redis_kwargs)``, ``url``."""

    def __init__(self, workdir) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH: install it (apt-get install redis-server); "
                        "these tests start their own on a free port", pytrace=False)
        self.binary = binary
        self.workdir = workdir
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        code = self.proc.poll()
                        self.kill()
                        pytest.fail(f"redis-server on port {self.port} did not start (exit {code})", pytrace=False)
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self, **kwargs):
        import redis

        return redis.Redis(port=self.port, **kwargs)


@pytest.fixture
def private_redis(tmp_path):
    """A ``PrivateRedis``, started; killed at the end."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def ws_server():
    """``ws_server(**kw)`` opens a real ``WebSocketServer`` on a free loopback port; all are closed at the end."""
    from publish.websocket_server import WebSocketServer

    servers = []

    def start(**kw) -> WebSocketServer:
        srv = WebSocketServer("127.0.0.1", 0, **kw)
        srv.open()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()
