"""The network-namespace fixture itself: layout, running code inside, traffic across, cleanup."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

from tests.feedhandler.netns import (
    ADDR_A,
    ADDR_A_ALT,
    ADDR_B,
    NETNS_DIR,
    NetnsError,
    NetnsPair,
    netns_pair,  # noqa: F401  (fixture)
    reap_stale_namespaces,
)


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _ifindex(name: str) -> int:
    return socket.if_nametoindex(name)


def _recv_one(port: int, ready) -> tuple[bytes, str]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ADDR_B, port))
        sock.settimeout(10)
        ready.set()
        data, (host, _) = sock.recvfrom(2048)
        return data, host


def _raise_in_child() -> None:
    raise ValueError("boom from inside")


def test_layout(netns_pair):
    pair = netns_pair
    assert set(pair.names.values()) <= _namespaces()
    addr_a = pair.ip("a", "-4", "-o", "addr", "show", "dev", pair.veths["a"])
    assert f"{ADDR_A}/24" in addr_a and f"{ADDR_A_ALT}/24" in addr_a
    assert f"{ADDR_B}/24" in pair.ip("b", "-4", "-o", "addr", "show", "dev", pair.veths["b"])
    for side in "ab":
        assert "224.0.0.0/4" in pair.ip(side, "route", "show", "table", "main")
        assert "UP" in pair.ip(side, "-o", "link", "show", "lo")
        assert "state UP" in pair.ip(side, "-o", "link", "show", pair.veths[side])
    # the veth ends exist only inside their namespaces
    with pytest.raises(OSError):
        _ifindex(pair.veths["b"])


def test_run_returns_value_from_inside_and_raises_errors(netns_pair):
    pair = netns_pair
    assert pair.run("b", _ifindex, pair.veths["b"]) > 0
    with pytest.raises(NetnsError, match="ValueError: boom from inside"):
        pair.run("a", _raise_in_child)


def test_entered_switches_the_thread_and_comes_back(netns_pair):
    pair = netns_pair
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with pair.entered("b"):
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(pair.path("b")).st_ino
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ADDR_B, 0))  # the address exists only in b
    assert os.stat("/proc/thread-self/ns/net").st_ino == home
    with pytest.raises(OSError):
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind((ADDR_B, 0))
    sock.close()


def test_udp_crosses_the_veth_from_both_sender_addresses(netns_pair):
    pair = netns_pair
    for src in (ADDR_A, ADDR_A_ALT):
        ready = pair.event()
        receiver = pair.start("b", _recv_one, 40001, ready)
        assert ready.wait(10)
        with pair.entered("a"), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((src, 0))
            sock.sendto(b"hello " + src.encode(), (ADDR_B, 40001))
        assert receiver.result(10) == (b"hello " + src.encode(), src)


def test_exec_runs_a_command_inside(netns_pair):
    out = netns_pair.exec("b", ["ip", "-4", "-o", "addr", "show"]).stdout
    assert ADDR_B in out and ADDR_A not in out
    with pytest.raises(NetnsError, match="exited"):
        netns_pair.exec("b", ["false"])


def test_cleanup_even_when_the_block_fails():
    pair = NetnsPair()
    with pytest.raises(RuntimeError, match="test failure"):
        with pair:
            assert set(pair.names.values()) <= _namespaces()
            raise RuntimeError("test failure")
    assert not set(pair.names.values()) & _namespaces()
    assert not any(os.path.exists(f"{NETNS_DIR}/{name}") for name in pair.names.values())


def test_stale_namespaces_of_dead_runs_are_reaped():
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"fhns-{dead.pid}-abcdef-a"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in reap_stale_namespaces()
        assert name not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
