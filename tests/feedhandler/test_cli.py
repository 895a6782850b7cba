"""The command line end to end, from capture files on disk: outputs, agreement, and bad input."""
import gzip
import json
import struct
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from captures.pcap_writer import write_binaryfile, write_moldudp64_pcap
from feedhandler.cli import main
from parsers import itch50, schema

T0 = 34_200 * 1_000_000_000
TS_RECV_0 = 1_710_509_400_000_000_000  # 2024-03-15 09:30 EDT


def session_messages() -> list[bytes]:
    msgs = [itch50.encode(b"S", timestamp=T0 - 10, event_code=b"Q")]
    for locate, sym in ((1, b"AAA"), (2, b"BBB")):
        msgs.append(itch50.encode(b"R", stock_locate=locate, timestamp=T0 - 5, stock=sym, round_lot_size=100))
    for i in range(1, 41):
        locate = 1 + i % 2
        msgs.append(itch50.encode(b"A", stock_locate=locate, timestamp=T0 + i, order_ref=i, side=b"B" if i % 4 else b"S",
                                  shares=100, stock=b"AAA" if locate == 1 else b"BBB", price=10_0000 + (i % 4) * 100))
    for i in range(1, 11):
        msgs.append(itch50.encode(b"E", stock_locate=1 + i % 2, timestamp=T0 + 100 + i, order_ref=i,
                                  executed_shares=40, match_number=i))
    msgs.append(itch50.encode(b"H", stock_locate=1, timestamp=T0 + 200, stock=b"AAA", trading_state=b"H"))
    msgs.append(itch50.encode(b"I", stock_locate=2, timestamp=T0 + 300, stock=b"BBB", imbalance_direction=b"S"))
    return msgs


def write_pcap(path, msgs, **kw):
    buf = np.frombuffer(b"".join(msgs), dtype=np.uint8)
    lengths = np.array([len(m) for m in msgs], dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    ts = TS_RECV_0 + np.arange(len(msgs), dtype=np.int64) * 10_000
    write_moldudp64_pcap(path, buf, offsets, lengths, ts, **kw)


def run_json(capsys, *argv):
    code = main(list(argv) + ["--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def run_error(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("feedhandler: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def test_replay_writes_every_record_and_agrees_with_stats(tmp_path, capsys):
    cap = tmp_path / "s.pcap"
    msgs = session_messages()
    write_pcap(cap, msgs)
    stats = run_json(capsys, "stats", str(cap))
    out = tmp_path / "out"
    summary = run_json(capsys, "replay", str(cap), "--out", str(out))
    for key in ("messages", "packets", "by_type", "sessions", "gaps", "instruments", "first_ts", "last_ts", "anomalies"):
        assert stats[key] == summary[key], key
    assert summary["messages"] == len(msgs)
    assert summary["by_type"] == {"A": 40, "E": 10, "H": 1, "I": 1, "R": 2, "S": 1}
    assert summary["instruments"] == 2 and summary["gaps"] == [] and summary["anomalies"] == {}
    assert summary["date"] == "2024-03-15"
    assert summary["first_ts"] == TS_RECV_0 - 10 and summary["last_ts"] == TS_RECV_0 + 300
    for record in schema.RECORDS:
        table = pq.read_table(out / f"{record.name}.parquet")
        assert table.column_names == [c.name for c in record.public_columns]
        assert table.num_rows == summary["rows"][record.name]
    assert summary["rows"]["events"] == 50 and summary["rows"]["trades"] == 10
    trades = pq.read_table(out / "trades.parquet").to_pydict()
    assert trades["match_id"] == list(range(1, 11))
    assert trades["price"][0] == 10_0100 * 100_000  # order 1's price, filled in from the add
    assert pq.read_table(out / "definitions.parquet").to_pydict()["symbol"] == ["AAA", "BBB"]
    assert pq.read_table(out / "status.parquet").num_rows == 1
    assert pq.read_table(out / "imbalance.parquet").num_rows == 1


def test_binaryfile_needs_a_date_unless_its_name_has_one(tmp_path, capsys):
    msgs = session_messages()
    buf = np.frombuffer(b"".join(msgs), dtype=np.uint8)
    lengths = np.array([len(m) for m in msgs])
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    plain = tmp_path / "day.bin"
    write_binaryfile(plain, buf, offsets, lengths)
    assert "--date" in run_error(capsys, "stats", str(plain))
    got = run_json(capsys, "stats", str(plain), "--date", "2024-03-15")
    assert got["format"] == "binaryfile" and got["messages"] == len(msgs) and got["first_ts"] == TS_RECV_0 - 10
    named = tmp_path / "03152024.NASDAQ_ITCH50.gz"
    write_binaryfile(named, buf, offsets, lengths, gzip=True)
    got = run_json(capsys, "stats", str(named))
    assert got["date"] == "2024-03-15" and got["by_type"]["A"] == 40


def test_missing_directory_and_unknown_format(tmp_path, capsys):
    assert "no such capture file" in run_error(capsys, "replay", str(tmp_path / "nope.pcap"))
    assert "is a directory" in run_error(capsys, "stats", str(tmp_path))
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all\n" * 10)
    assert "not a pcap, pcapng or Nasdaq BinaryFILE" in run_error(capsys, "replay", str(junk))
    assert "not a date" in run_error_usage(capsys, "stats", str(junk), "--date", "15/03/2024")


def run_error_usage(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_truncated_pcap_record_keeps_what_came_before(tmp_path, capsys):
    cap = tmp_path / "t.pcap"
    msgs = session_messages()
    write_pcap(cap, msgs, max_payload=200)
    data = cap.read_bytes()
    cap.write_bytes(data[:-30])  # cut into the last packet's record
    out = tmp_path / "out"
    summary = run_json(capsys, "replay", str(cap), "--out", str(out))
    assert summary["anomalies"].get("truncated_record") == 1
    assert 0 < summary["messages"] < len(msgs)
    assert pq.read_table(out / "events.parquet").num_rows == summary["rows"]["events"] > 0


def test_truncated_last_message_of_a_binaryfile(tmp_path, capsys):
    msgs = session_messages()
    body = b"".join(struct.pack(">H", len(m)) + m for m in msgs)
    path = tmp_path / "cut.itch"
    path.write_bytes(body[:-5])
    summary = run_json(capsys, "replay", str(path), "--date", "2024-03-15", "--out", str(tmp_path / "o"))
    assert summary["anomalies"] == {"truncated_message": 1}
    assert summary["messages"] == len(msgs) - 1


def test_mold_length_overrun_and_unknown_type_are_counted(tmp_path, capsys):
    msgs = session_messages()
    msgs.insert(5, b"~" + bytes(11))  # a type letter ITCH 5.0 does not have
    cap = tmp_path / "bad.pcap"
    write_pcap(cap, msgs, max_payload=1400)
    data = bytearray(cap.read_bytes())
    # Overrun: make the last message's length prefix claim more bytes than its packet holds.
    last = msgs[-1]
    pos = bytes(data).rfind(struct.pack(">H", len(last)) + last)
    data[pos : pos + 2] = struct.pack(">H", 1000)
    cap.write_bytes(bytes(data))
    summary = run_json(capsys, "replay", str(cap), "--out", str(tmp_path / "o"))
    assert summary["anomalies"]["unknown_type_~"] == 1
    assert summary["anomalies"]["mold_overrun"] == 1
    assert summary["by_type"]["A"] == 40  # everything else decoded


def test_console_script_help_has_an_example():
    for verb in ("replay", "stats", "generate"):
        out = subprocess.run([sys.executable, "-m", "feedhandler.cli", verb, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "example: feedhandler " + verb in out.stdout



def test_replay_writes_parquet_with_the_codec_asked_for(tmp_path, capsys):
    """``--compression lz4`` writes every file with that codec; an unknown one is a usage error."""
    from captures.generator import generate

    capture = tmp_path / "day.itch"
    generate(messages=3_000, symbols=5, seed=3).write(capture, "itch")
    out = tmp_path / "out"
    summary = run_json(capsys, "replay", str(capture), "--out", str(out), "--date", "2024-03-15",
                       "--compression", "lz4")
    assert summary["messages"] == 3_000
    codecs = {pq.ParquetFile(f).metadata.row_group(0).column(0).compression
              for f in out.glob("*.parquet") if pq.ParquetFile(f).metadata.num_row_groups}
    assert codecs in ({"LZ4_RAW"}, {"LZ4"}), codecs
    assert "invalid choice: 'brotli'" in run_error_usage(capsys, "replay", str(capture), "--compression", "brotli")


def test_the_replay_and_the_parquet_writer_default_to_the_same_codec():
    """``feedhandler.replay`` keeps its own copy of the default (it imports pyarrow only to write)."""
    from feedhandler.replay import COMPRESSIONS, DEFAULT_COMPRESSION
    from publish import parquet

    assert DEFAULT_COMPRESSION == parquet.DEFAULT_COMPRESSION and DEFAULT_COMPRESSION in COMPRESSIONS
