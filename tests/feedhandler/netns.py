"""Two network namespaces joined by a veth pair, for tests that send real multicast between "hosts".

    side "a" (sender)                                   side "b" (receiver)
    netns fhns-<pid>-<tok>-a                            netns fhns-<pid>-<tok>-b
      lo up (127.0.0.1)                                   lo up (127.0.0.1)
      fhv<tok>a  10.77.0.1/24, 10.77.0.3/24  <-- veth -->  fhv<tok>b  10.77.0.2/24
      route 224.0.0.0/4 dev fhv<tok>a                     route 224.0.0.0/4 dev fhv<tok>b

Rules this module keeps:

- Names are unique per pair (pid + random token), so parallel runs never collide; the addresses are
  the same in every pair because each pair is its own isolated network.
- ``close()`` always runs (pytest fixture finalizer, ``with`` block, and atexit as a last resort) and
  deletes both namespaces (the veth pair goes with them); namespaces left by a killed run are reaped
  on the next ``create()`` (their pid no longer lives).
- Code runs inside a namespace three ways: ``entered(side)`` switches the CALLING THREAD for a block
  (a socket keeps the namespace it was created in, so a source opened there can be read afterwards
  from anywhere); ``run``/``start`` call a Python callable in a forked child that joined the namespace
  (setns(2)) and hand back its return value or its error; ``exec`` runs a command through
  ``ip netns exec``.
- Needs root (CI runs as root): a missing privilege fails loudly, it never skips.

Traffic helpers for the source tests live here too: ``mold_payloads`` (real MoldUDP64 packets of a
generated ITCH day) and ``multicast_sender`` / ``send_payloads``.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import re
import secrets
import socket
import subprocess
import time
import traceback
from typing import Any, Callable

import pytest

NETNS_DIR = "/var/run/netns"
PREFIX = "fhns"
SUBNET_PREFIX_LEN = 24
ADDR_A = "10.77.0.1"
ADDR_A_ALT = "10.77.0.3"  # a second sender address on side a, for source-specific multicast tests
ADDR_B = "10.77.0.2"
MULTICAST_NET = "224.0.0.0/4"
CLONE_NEWNET = 0x40000000  # os.setns / os.CLONE_NEWNET exist only from Python 3.12: libc's setns(2)

_STALE_NAME = re.compile(rf"^{PREFIX}-(\d+)-[0-9a-f]+-[ab]$")
_FORK = multiprocessing.get_context("fork")


class NetnsError(RuntimeError):
    """A namespace command or a callable run inside a namespace failed; the message says which."""


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_namespaces() -> list[str]:
    """Delete namespaces this module made in runs whose process is gone; return their names."""
    reaped = []
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _STALE_NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
            reaped.append(name)
    return reaped


_LIBC = ctypes.CDLL(None, use_errno=True)


def _setns_fd(fd: int) -> None:
    if _LIBC.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns(CLONE_NEWNET) failed: {os.strerror(err)} (run as root)")


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


def _child_main(conn, ns_path: str, fn: Callable, args: tuple, kwargs: dict) -> None:
    try:
        _setns(ns_path)
        result = fn(*args, **kwargs)
        conn.send(("ok", result))
    except BaseException as exc:  # the parent re-raises it with the child's traceback
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        conn.close()


class NetnsProcess:
    """A callable running in a forked child inside a namespace; ``result()`` waits for its return."""

    def __init__(self, ns_name: str, fn: Callable, args: tuple, kwargs: dict) -> None:
        self.ns_name = ns_name
        self._recv, send = _FORK.Pipe(duplex=False)
        self._proc = _FORK.Process(target=_child_main, args=(send, f"{NETNS_DIR}/{ns_name}", fn, args, kwargs),
                                   daemon=True)
        self._proc.start()
        send.close()
        self._done = False
        self._value: Any = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def result(self, timeout: float = 60.0) -> Any:
        """The callable's return value; its exception re-raised as NetnsError; TimeoutError if slow."""
        if not self._done:
            if not self._recv.poll(timeout):
                self.kill()
                raise TimeoutError(f"callable in netns {self.ns_name} did not finish within {timeout}s")
            try:
                message = self._recv.recv()
            except EOFError:
                self._proc.join(5)
                raise NetnsError(f"child in netns {self.ns_name} died (exit code {self._proc.exitcode})") from None
            self._proc.join(5)
            self._done = True
            if message[0] == "error":
                raise NetnsError(f"in netns {self.ns_name}: {message[1]}\n--- child traceback ---\n{message[2]}")
            self._value = message[1]
        return self._value

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(5)
        self._recv.close()


class NetnsPair:
    """Namespaces ``a`` and ``b`` joined by a veth pair (see the module docstring for the layout)."""

    addr_a = ADDR_A
    addr_a_alt = ADDR_A_ALT
    addr_b = ADDR_B

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.names = {side: f"{PREFIX}-{os.getpid()}-{token}-{side}" for side in "ab"}
        self.veths = {side: f"fhv{token}{side}" for side in "ab"}  # <= 15 chars (IFNAMSIZ)
        self._children: list[NetnsProcess] = []
        self._created: list[str] = []

    # --- life cycle ---------------------------------------------------------------------------------

    def create(self) -> NetnsPair:
        reap_stale_namespaces()
        atexit.register(self.close)
        try:
            for side in "ab":
                _ip("netns", "add", self.names[side])
                self._created.append(self.names[side])
            _ip("link", "add", self.veths["a"], "netns", self.names["a"], "type", "veth",
                "peer", "name", self.veths["b"], "netns", self.names["b"])
            addresses = {"a": [self.addr_a, self.addr_a_alt], "b": [self.addr_b]}
            for side in "ab":
                ns, dev = self.names[side], self.veths[side]
                _ip("-n", ns, "link", "set", "lo", "up")
                for addr in addresses[side]:
                    _ip("-n", ns, "addr", "add", f"{addr}/{SUBNET_PREFIX_LEN}", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "route", "add", MULTICAST_NET, "dev", dev)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop children, delete both namespaces (idempotent; never raises)."""
        for child in self._children:
            with contextlib.suppress(Exception):
                child.kill()
        self._children.clear()
        for name in self._created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self._created.clear()
        atexit.unregister(self.close)

    def __enter__(self) -> NetnsPair:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- running things inside ----------------------------------------------------------------------

    def path(self, side: str) -> str:
        return f"{NETNS_DIR}/{self.names[side]}"

    def ip(self, side: str, *args: str) -> str:
        """Run ``ip -n <namespace> ARGS`` and return its output."""
        return _ip("-n", self.names[side], *args)

    def exec(self, side: str, argv: list[str], timeout: float = 60.0, check: bool = True,
             **kwargs) -> subprocess.CompletedProcess:
        """Run a command inside namespace ``side`` (``ip netns exec``); capture its output as text."""
        proc = subprocess.run(["ip", "netns", "exec", self.names[side], *argv], capture_output=True,
                              text=True, timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise NetnsError(f"`{' '.join(argv)}` in netns {self.names[side]} exited {proc.returncode}: "
                             f"{proc.stderr.strip()}")
        return proc

    @contextlib.contextmanager
    def entered(self, side: str):
        """Switch the calling thread into namespace ``side`` for the block, then back."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(self.path(side))
            try:
                yield self
            finally:
                _setns_fd(home)
        finally:
            os.close(home)

    def start(self, side: str, fn: Callable, *args, **kwargs) -> NetnsProcess:
        """Call ``fn(*args, **kwargs)`` in a forked child inside namespace ``side``; don't wait."""
        child = NetnsProcess(self.names[side], fn, args, kwargs)
        self._children.append(child)
        return child

    def run(self, side: str, fn: Callable, *args, timeout: float = 60.0, **kwargs) -> Any:
        """Call ``fn`` in a child inside namespace ``side`` and return what it returned."""
        return self.start(side, fn, *args, **kwargs).result(timeout)

    @staticmethod
    def event():
        """An Event shared with children started later (e.g. a receiver saying it has joined)."""
        return _FORK.Event()


@pytest.fixture
def netns_pair():
    """A fresh ``NetnsPair`` per test, deleted afterwards whatever happened."""
    pair = NetnsPair()
    try:
        yield pair.create()
    finally:
        pair.close()


# --- traffic --------------------------------------------------------------------------------------

MOLD_SESSION = "NETNS00001"


def mold_payloads(messages: int = 2000, seed: int = 5, max_payload: int = 1400,
                  first_sequence: int = 1) -> tuple[list[bytes], list[bytes]]:
    """MoldUDP64 packets carrying a generated ITCH 5.0 day: (packets, the ITCH messages in order)."""
    from captures.generator import generate
    from parsers.moldudp64 import encode_packet, plan_packets

    day = generate(messages, symbols=8, seed=seed)
    first, count, _, _ = plan_packets(day.lengths, day.ts_recv, max_payload, 1 << 62)
    msgs = [day.message(i) for i in range(len(day))]
    packets = [encode_packet(MOLD_SESSION.encode(), first_sequence + int(f), msgs[f:f + c])
               for f, c in zip(first.tolist(), count.tolist())]
    return packets, msgs


def multicast_sender(source_addr: str, ttl: int = 1) -> socket.socket:
    """A UDP socket that sends multicast out of the interface holding ``source_addr`` (create it in
    the sending namespace)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source_addr, 0))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(source_addr))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    return sock


def wait_for_receive_timestamps() -> None:
    """Linux turns receive timestamps on from a work item after the first socket asks for them; a
    packet that arrives before it has run (a busy machine) carries the time it is read instead. Tests
    that check kernel receive times open their sources, then wait for this before sending."""
    time.sleep(0.3)


def send_payloads(sock: socket.socket, payloads, group: str, port: int, burst: int = 256,
                  pause_s: float = 0.0005) -> None:
    """Send each payload as one datagram, pausing briefly every ``burst`` so no queue on the way
    (veth backlog, receive buffer) overflows in a test that expects every packet."""
    for i, payload in enumerate(payloads):
        sock.sendto(payload, (group, port))
        if burst and (i + 1) % burst == 0:
            time.sleep(pause_s)

