"""Child process for the SIGKILL test: append and acknowledge records as fast as possible.

    python wal_child.py DIR POLICY MODE GROUP

Opens (and so recovers) the log at DIR, prints ``ready <last seq>``, then forever appends GROUP
records and makes them durable (MODE ``commit``: ``commit()``; MODE ``flusher``: a background
flusher and ``wait_durable``), and only then prints each acknowledged sequence number, one a line,
flushed. Record ``seq`` always carries ``payload_for(seq)`` so the test can check every byte.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trading.wal import KeyValueState, WalWriter  # noqa: E402


def payload_for(seq: int) -> bytes:
    """The record logged at ``seq``: a key-value set (every 13th one a delete), 1..300 bytes of value."""
    key = (seq * 2654435761) % 997
    if seq % 13 == 0:
        return KeyValueState.encode(key, b"")
    digest = hashlib.blake2b(seq.to_bytes(8, "little"), digest_size=64).digest()
    size = (seq * 7) % 300 + 1
    return KeyValueState.encode(key, (digest * (size // 64 + 1))[:size])


def main() -> None:
    directory, policy, mode, group = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    wal = WalWriter(directory, fsync=policy, segment_bytes=256 << 10,
                    max_delay=0.0005 if mode == "flusher" else None, max_batch=group)
    out = sys.stdout
    seq = wal.last_seq
    out.write(f"ready {seq}\n")
    out.flush()
    while True:
        first = seq + 1
        for _ in range(group):
            seq = wal.append(payload_for(seq + 1))
        if mode == "commit":
            wal.commit()
        elif not wal.wait_durable(seq, timeout=10.0):
            raise SystemExit(f"seq {seq} not durable after 10 s")
        out.write("".join(f"{s}\n" for s in range(first, seq + 1)))  # acknowledged only now
        out.flush()


if __name__ == "__main__":
    main()
