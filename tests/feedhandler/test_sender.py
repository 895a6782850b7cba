"""``feedhandler send``: the packets it sends, pacing, induced drops, the CLI verb, and an end to end run
(sender in one network namespace, plain receiving sockets + arbiter + re-request recovery in the other)."""
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from captures.generator import generate
from captures.pcap_writer import write_binaryfile, write_moldudp64_pcap
from captures.reader import open_capture
from captures.rerequest import BINARYFILE_MOLD_SESSION, encode_request
from feedhandler.arbitration import LINE_A, LINE_B, LINE_RECOVERY, Arbiter
from feedhandler.cli import main
from feedhandler.rerequest import RerequestClient, RerequestServer
from feedhandler.sender import SendError, Sender, capture_packets, send_capture
from feedhandler.sources.base import PacketBatch
from parsers.moldudp64 import MOLD_END_OF_SESSION_COUNT, MoldSessionTracker
from tests.feedhandler.netns import ADDR_A, ADDR_B, netns_pair  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    session = generate(messages=4000, symbols=20, seed=9)
    folder = tmp_path_factory.mktemp("send")
    session.write(folder / "day.pcap", session="SENDTEST")
    session.write(folder / "day.itch", fmt="itch")
    return session, folder / "day.pcap", folder / "day.itch"


def _group() -> tuple[str, int]:
    """A multicast group and port no other test run uses at the same time."""
    a, b = secrets.randbelow(250) + 1, secrets.randbelow(250) + 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"239.255.{a}.{b}", port


def _receiver(group: str, port: int, iface_addr: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((group, port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface_addr)))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket, into: list[bytes]) -> int:
    n = 0
    while True:
        try:
            into.append(sock.recv(65535))
        except BlockingIOError:
            return n
        n += 1


def _collect(socks: list[socket.socket], done: threading.Event, quiet_s: float = 0.5) -> list[list[bytes]]:
    got: list[list[bytes]] = [[] for _ in socks]
    last = time.monotonic()
    while not done.is_set() or time.monotonic() - last < quiet_s:
        ready, _, _ = select.select(socks, [], [], 0.05)
        for sock in ready:
            if _drain(sock, got[socks.index(sock)]):
                last = time.monotonic()
    return got


def _payloads(packets) -> list[bytes]:
    return [packets.buf[o : o + n].tobytes() for o, n in zip(packets.offset.tolist(), packets.length.tolist())]


def test_a_pcap_is_sent_as_captured(day):
    _, pcap, _ = day
    capture = open_capture(pcap)
    packets = capture_packets(capture)
    table = capture.packet_table()
    assert len(packets) == len(table.packets) and packets.messages == 4000
    assert _payloads(packets)[5] == table.buf[table.packets["offset"][5] :][: table.packets["length"][5]].tobytes()
    assert np.array_equal(packets.ts, table.packets["ts_recv"])


def test_a_binaryfile_is_packed_into_moldudp64_with_an_end_of_session(day):
    session, _, itch = day
    packets = capture_packets(open_capture(itch))
    assert packets.messages == 4000 and int(packets.length.max()) <= 1400
    tracker = MoldSessionTracker()
    frames = tracker.frame_packets(packets.buf, packets.offset, packets.length, packets.ts)
    assert tracker.sessions == [BINARYFILE_MOLD_SESSION] and tracker.end_of_session == 1
    assert list(frames["sequence"]) == list(range(1, 4001))
    got = [packets.buf[f["offset"] : f["offset"] + f["length"]].tobytes() for f in frames]
    assert got == [session.message(i) for i in range(4000)]
    last = _payloads(packets)[-1]
    assert struct.unpack(">QH", last[10:20]) == (4001, MOLD_END_OF_SESSION_COUNT)
    # paced by the ITCH timestamps (ns since midnight), never backwards
    midnight = int(np.datetime64(session.date.isoformat(), "ns").astype(np.int64))
    assert packets.ts[0] >= session.ts_event[0] - midnight - 5 * 3600 * 10**9 and (np.diff(packets.ts) >= 0).all()


@pytest.mark.parametrize("batched", [True, False], ids=["sendmmsg", "sendto"])
def test_two_lines_on_loopback_with_independent_seeded_drops(day, batched):
    _, pcap, _ = day
    packets = capture_packets(open_capture(pcap))
    lines = [_group(), _group()]
    socks = [_receiver(g, p) for g, p in lines]
    sender = Sender(packets, lines, speed=None, drop_rate=0.05, seed=7, iface="lo", batched=batched)
    done = threading.Event()
    result = {}

    def send():
        result["summary"] = sender.run()
        done.set()

    thread = threading.Thread(target=send)
    thread.start()
    got = _collect(socks, done)
    thread.join()
    for sock in socks:
        sock.close()
    payloads = _payloads(packets)
    summary = result["summary"]
    for line, name in enumerate("AB"):
        kept = [p for p, drop in zip(payloads, sender.drops[line]) if not drop]
        assert got[line] == kept
        assert summary.lines[name].sent == len(kept) and summary.lines[name].dropped == int(sender.drops[line].sum())
    assert 0.03 < sender.drops[0].mean() < 0.07 and 0.03 < sender.drops[1].mean() < 0.07
    assert not np.array_equal(sender.drops[0], sender.drops[1])  # independent per line
    again = Sender(packets, lines, speed=None, drop_rate=0.05, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(again.drops, sender.drops))  # a seed gives the same losses


def test_pacing_follows_the_capture_clock_scaled(tmp_path):
    msgs = [b"A" + bytes(10), b"B" + bytes(10), b"C" + bytes(10)]
    buf = np.frombuffer(b"".join(msgs), np.uint8)
    path = tmp_path / "slow.pcap"
    ts = np.array([0, 150_000_000, 300_000_000], np.int64) + 1_700_000_000 * 10**9
    write_moldudp64_pcap(path, buf, np.array([0, 11, 22]), np.array([11, 11, 11]), ts, window_ns=0)
    group, port = _group()
    with _receiver(group, port) as sock:
        started = time.monotonic()
        summary = send_capture(path, f"{group}:{port}", speed="1", iface="lo")
        real = time.monotonic() - started
        fast = send_capture(path, f"{group}:{port}", speed="10", iface="lo")
        sock.setblocking(True)
        sock.settimeout(2)
        got = [sock.recv(2048)[22:] for _ in range(6)]
    assert 0.29 <= summary.seconds < 0.6 and real >= 0.29
    assert 0.029 <= fast.seconds < 0.2
    assert got == msgs + msgs and summary.packets == 3 and summary.lines["A"].sent == 3


def test_cli_send_answers_rerequests_on_loopback(day, capsys):
    session, pcap, _ = day
    group, port = _group()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        rr_port = probe.getsockname()[1]
    codes = []
    thread = threading.Thread(target=lambda: codes.append(main(
        ["send", str(pcap), "--group", f"{group}:{port}", "--speed", "max", "--iface", "lo",
         "--rerequest-port", str(rr_port), "--linger", "1.5"])))
    thread.start()
    time.sleep(0.5)
    with RerequestClient("127.0.0.1", rr_port) as client:
        client.request("SENDTEST", 100, 2)
        batch = client.read(timeout=3)
        first, second = session.message(99), session.message(100)
        assert batch.payload(0) == (b"SENDTEST  " + struct.pack(">QH", 100, 2) + struct.pack(">H", len(first))
                                    + first + struct.pack(">H", len(second)) + second)
    thread.join()
    assert codes == [0]
    out = capsys.readouterr().out
    assert "4,000 messages" in out and "re-requests  1 answered 1 (2 messages), bad 0" in out
    assert f"line A {group}:{port}  sent " in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--group", "239.1.1.1"], "expected GROUP:PORT"),
        (["--group", "239.1.1.1:26400", "--b-group", "x:1"], "not an IPv4 address"),
        (["--group", "239.1.1.1:26400", "--speed", "fast"], "--speed"),
        (["--group", "239.1.1.1:26400", "--drop-rate", "1"], "--drop-rate must be within [0, 1)"),
        (["--group", "239.1.1.1:26400", "--iface", "nosuch0"], "no network interface named 'nosuch0'"),
        (["--group", "239.1.1.1:26400", "--ttl", "300"], "--ttl must be within 0..255"),
    ],
)
def test_cli_errors_are_one_line(day, capsys, argv, message):
    _, pcap, _ = day
    assert main(["send", str(pcap), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("feedhandler: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("batched", [True, False], ids=["sendmmsg", "sendto"])
def test_a_network_error_stops_the_send_with_one_line(netns_pair, day, batched):
    _, pcap, _ = day
    packets = capture_packets(open_capture(pcap))
    with netns_pair.entered("a"):  # no default route there
        with pytest.raises(SendError, match=r"^sending to 192.0.2.99:9: Network is unreachable$"):
            Sender(packets, [("192.0.2.99", 9)], speed=None, batched=batched).run()


def test_cli_missing_capture_and_port_in_use(tmp_path, day, capsys):
    assert main(["send", str(tmp_path / "none.pcap"), "--group", "239.1.1.1:26400"]) == 2
    assert "no such capture file" in capsys.readouterr().err
    _, pcap, _ = day
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        assert main(["send", str(pcap), "--group", "239.1.1.1:26400", "--rerequest-port", str(taken)]) == 2
    err = capsys.readouterr().err
    assert "cannot bind UDP 127.0.0.1" in err and err.count("\n") == 1
    with pytest.raises(SendError):
        Sender(capture_packets(open_capture(pcap)), [("239.1.1.1", 1)] * 3)


def test_end_to_end_two_lines_one_percent_drops_recovered_exactly(netns_pair, tmp_path):
    """The CLI sends a generated day on A and B with 1% drops each from namespace a; namespace b
    receives on plain sockets, arbitrates, re-requests what both lines lost from a server in a, and
    ends with exactly the capture's message sequence."""
    pair = netns_pair
    session = generate(messages=30_000, symbols=40, seed=21)
    path = tmp_path / "e2e.pcap"
    session.write(path, session="E2E", end_of_session=True)  # a lost tail shows in the end packet
    group_a, group_b, port, rr_port = "239.1.1.1", "239.1.1.2", 26400, 26500
    with pair.entered("a"):
        server = RerequestServer(path, ADDR_A, rr_port).start()
    with pair.entered("b"):
        socks = [_receiver(group_a, port, ADDR_B), _receiver(group_b, port, ADDR_B)]
        client = RerequestClient(ADDR_A, rr_port, bind_host=ADDR_B, max_request_messages=200)
    span_s = (session.ts_recv[-1] - session.ts_recv[0]) / 1e9
    speed = span_s / 3.0  # the whole day in about 3 s
    argv = [sys.executable, "-m", "feedhandler.cli", "send", str(path), "--group", f"{group_a}:{port}",
            "--b-group", f"{group_b}:{port}", "--speed", f"{speed:.3f}", "--drop-rate", "0.01", "--seed", "3",
            "--iface", pair.veths["a"]]
    sent = {}
    thread = threading.Thread(target=lambda: sent.update(proc=pair.exec("a", argv, timeout=120, cwd=REPO)))
    arbiter = Arbiter(request=client, expect_from=1)
    delivered: list[bytes] = []
    seqs: list[int] = []

    def keep(out):
        buf, frames = out
        for f in frames:
            seqs.append(int(f["sequence"]))
            delivered.append(buf[f["offset"] : f["offset"] + f["length"]].tobytes())

    def batch_of(payloads: list[bytes]) -> PacketBatch:
        data = np.frombuffer(b"".join(payloads), np.uint8)
        length = np.array([len(p) for p in payloads], np.int32)
        offset = np.zeros(len(payloads), np.int64)
        np.cumsum(length[:-1], out=offset[1:])
        n = len(payloads)
        return PacketBatch(data, offset, length, np.full(n, time.time_ns(), np.int64), np.zeros(n, np.uint32),
                           np.full(n, port, np.uint16))

    fds = socks + [client]
    try:
        thread.start()
        deadline = time.monotonic() + 120
        while arbiter.next_expected("E2E") != len(session) + 1 or arbiter.stats()["held"]:
            assert time.monotonic() < deadline, arbiter.stats()
            ready, _, _ = select.select(fds, [], [], 0.05)
            now = time.time_ns()
            for line, sock in ((LINE_A, socks[0]), (LINE_B, socks[1])):
                if sock in ready:
                    got: list[bytes] = []
                    _drain(sock, got)
                    keep(arbiter.feed(batch_of(got), line, now=now))
            if client in ready:
                answers = client.read(timeout=0)
                keep(arbiter.feed(answers, LINE_RECOVERY, now=now))
            if not ready:
                keep(arbiter.poll(now))
        thread.join(120)
    finally:
        for sock in socks:
            sock.close()
        client.close()
        server.close()
    assert seqs == list(range(1, len(session) + 1))
    assert delivered == [session.message(i) for i in range(len(session))]
    out = sent["proc"].stdout
    dropped = [int(line.split("dropped ")[1].replace(",", "")) for line in out.splitlines() if "dropped" in line]
    assert len(dropped) == 2 and all(d > 0 for d in dropped), out
    st = arbiter.stats()
    # every induced drop but one at the very end shows as a gap of its line (the kernel may add losses)
    assert st["lines"]["A"]["gap_messages"] >= dropped[0] - 1 and st["lines"]["B"]["gap_messages"] >= dropped[1] - 1
    assert st["given_up"] == 0 and st["recovered"] >= 1 and server.stats()["answered"] >= 1
    assert st["lines"]["A"]["messages"] + st["lines"]["B"]["messages"] + st["recovered"] == len(session)
