"""The re-request server and client over real UDP on loopback."""
import socket
import struct
import time

import numpy as np
import pytest

from captures.generator import generate
from captures.reader import open_capture
from captures.rerequest import MessageIndex, RerequestError, encode_request
from feedhandler.arbitration import LINE_A, LINE_RECOVERY, Arbiter
from feedhandler.rerequest import RerequestClient, RerequestServer
from feedhandler.sources.base import PacketBatch, PacketSource
from parsers.moldudp64 import MOLD_HEARTBEAT_COUNT, encode_packet


@pytest.fixture(scope="module")
def session_pcap(tmp_path_factory):
    session = generate(messages=5000, symbols=30, seed=11)
    path = tmp_path_factory.mktemp("rr") / "day.pcap"
    session.write(path, session="RRTEST")
    return session, path


def _read_all(client: RerequestClient, want: int, timeout: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += client.read(timeout=0.2).payloads()
    return got


def _settled(server: RerequestServer, answered: int) -> dict:
    """The server's counters once it has counted ``answered`` answers (it counts after sending)."""
    deadline = time.monotonic() + 5
    while server.stats()["answered"] < answered and time.monotonic() < deadline:
        time.sleep(0.005)
    return server.stats()


def _messages(packet: bytes) -> tuple[int, list[bytes]]:
    _, seq, count = struct.unpack(">10sQH", packet[:20])
    pos, out = 20, []
    for _ in range(count):
        (n,) = struct.unpack(">H", packet[pos : pos + 2])
        out.append(packet[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return seq, out


def test_server_answers_requests_with_the_capture_bytes(session_pcap):
    session, path = session_pcap
    with RerequestServer(path) as server, RerequestClient(*server.address) as client:
        assert isinstance(client, PacketSource)
        assert client.request("RRTEST", 1000, 5) == 5
        assert client("RRTEST", 4990, 100) == 100  # the arbiter's callable form
        answers = _read_all(client, 2)
        assert len(answers) == 2
        by_seq = dict(_messages(a) for a in answers)
        assert by_seq[1000] == [session.message(999 + k) for k in range(5)]
        assert by_seq[4990] == [session.message(4989 + k) for k in range(11)]  # to the capture's end
        st = _settled(server, 2)
        assert st == {"requests": 2, "answered": 2, "unanswered": 0, "bad_requests": 0, "messages_sent": 16,
                      "bytes_sent": sum(len(a) for a in answers)}
        assert client.stats()["requests"] == 2 and client.stats()["packets"] == 2


def test_answers_carry_kernel_receive_timestamps(session_pcap):
    _, path = session_pcap
    with RerequestServer(path) as server, RerequestClient(*server.address) as client:
        before = time.time_ns()
        client.request(b"RRTEST", 1, 3)
        batch = client.read(timeout=5)
        after = time.time_ns()
        assert len(batch) == 1 and before <= int(batch.ts_recv[0]) <= after
        assert client.stats()["no_kernel_ts"] == 0
        assert int(batch.port[0]) == client._sock.getsockname()[1]


def test_an_answer_is_one_mtu_bounded_packet(session_pcap):
    _, path = session_pcap
    with RerequestServer(path, max_payload=600) as server, RerequestClient(*server.address) as client:
        client.request("RRTEST", 1, 1000)
        answers = _read_all(client, 1)
        assert len(answers) == 1 and len(answers[0]) <= 600
        seq, msgs = _messages(answers[0])
        assert seq == 1 and 5 < len(msgs) < 1000
        assert _settled(server, 1)["messages_sent"] == len(msgs)


def test_bad_and_unanswerable_requests_are_counted(session_pcap):
    _, path = session_pcap
    with RerequestServer(path) as server, RerequestClient(*server.address) as client:
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.sendto(b"too short", server.address)
        raw.sendto(b"RRTEST    " + bytes(10), server.address)  # count 0
        raw.close()
        client.request("RRTEST", 6000, 2)  # beyond the capture
        client.request("OTHER", 1, 2)  # unknown session
        client.request("RRTEST", 10, 1)  # a good one, answered after the others
        assert len(_read_all(client, 1)) == 1
        assert client.read(timeout=0.2).payloads() == []
        st = _settled(server, 1)
        assert (st["bad_requests"], st["requests"], st["unanswered"], st["answered"]) == (2, 3, 2, 1)


def test_server_caps_the_count_and_client_cuts_requests(session_pcap):
    _, path = session_pcap
    with RerequestServer(path, max_count=3) as server, RerequestClient(*server.address, max_request_messages=2) as c:
        assert c.request("RRTEST", 1, 10) == 2
        seq, msgs = _messages(_read_all(c, 1)[0])
        assert (seq, len(msgs)) == (1, 2)
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.settimeout(5)
        raw.sendto(encode_request("RRTEST", 100, 50), server.address)
        seq, msgs = _messages(raw.recvfrom(65535)[0])
        raw.close()
        assert (seq, len(msgs)) == (100, 3)


def test_setup_errors_are_one_line(tmp_path, session_pcap):
    with pytest.raises(RerequestError, match="no such capture file"):
        RerequestServer(tmp_path / "missing.pcap")
    _, path = session_pcap
    index = MessageIndex.from_capture(open_capture(path))
    with RerequestServer(index) as server:
        with pytest.raises(RerequestError, match=r"cannot bind UDP 127.0.0.1:\d+ \(Address already in use\)"):
            RerequestServer(index, port=server.address[1])
    with pytest.raises(RerequestError, match="cannot resolve"):
        RerequestClient("no.such.host.invalid", 1)
    with pytest.raises(RerequestError, match="port out of range"):
        RerequestClient("127.0.0.1", 70000)


def test_arbiter_recovers_a_gap_through_the_server(session_pcap):
    """Line A loses packets; the arbiter asks the server, reads the answers, delivers everything."""
    session, path = session_pcap
    capture = open_capture(path)
    table = capture.packet_table()
    packets = table.packets
    lost = np.zeros(len(packets), bool)
    lost[[3, 4, 50, 51, 52, len(packets) - 2]] = True
    keep = packets[~lost]
    batch = PacketBatch(table.buf, keep["offset"].astype(np.int64), keep["length"].astype(np.int32),
                        keep["ts_recv"].astype(np.int64), keep["dst_ip"], keep["dst_port"])
    with RerequestServer(capture) as server, RerequestClient(*server.address, max_request_messages=500) as client:
        arbiter = Arbiter(request=client, lines=1, expect_from=1)
        seqs, msgs = [], []

        def keep_out(out):
            buf, frames = out
            for f in frames:
                seqs.append(int(f["sequence"]))
                msgs.append(buf[f["offset"] : f["offset"] + f["length"]].tobytes())

        now = time.time_ns()
        keep_out(arbiter.feed(batch, LINE_A, now=now))
        deadline = time.monotonic() + 10
        while arbiter.stats()["held"] or arbiter.next_expected("RRTEST") <= len(session):
            assert time.monotonic() < deadline, arbiter.stats()
            answers = client.read(timeout=0.05)
            now = time.time_ns()
            keep_out(arbiter.feed(answers, LINE_RECOVERY, now=now) if len(answers) else arbiter.poll(now))
            if arbiter.next_expected("RRTEST") <= len(session) and not arbiter.stats()["held"]:
                # the lost tail shows only in a later packet: the heartbeat a venue sends after its last
                hb = np.frombuffer(encode_packet(b"RRTEST", len(session) + 1, [], count=MOLD_HEARTBEAT_COUNT), np.uint8)
                keep_out(arbiter.feed(PacketBatch(hb, np.zeros(1, np.int64), np.array([20], np.int32),
                                                  np.array([now], np.int64), np.zeros(1, np.uint32),
                                                  np.zeros(1, np.uint16)), LINE_A, now=now))
        assert seqs == list(range(1, len(session) + 1))
        assert msgs == [session.message(i) for i in range(len(session))]
        st = arbiter.stats()
        assert st["recovered"] > 0 and st["given_up"] == 0
        assert _settled(server, st["requests"])["answered"] == st["requests"] == client.stats()["requests"]
