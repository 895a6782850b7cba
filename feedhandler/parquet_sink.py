"""``ParquetSink``: what the live handler publishes (BBO, L2, trades, status) to Parquet, as a sink.

Replay writes Parquet from its own loop (``feedhandler.replay``); a live feed has no end to wait
for, so here Parquet is one more ``SinkRunner`` sink, on its own thread behind the bounded queue.

Rules this module keeps:

- One file per record kind and opening: ``{dir}/{kind}-{part:04d}.parquet``, ``part`` counting opens
  from the first free number, so a sink the runner reopens after a failure (or a restarted handler)
  never overwrites what an earlier opening wrote.
- Files are finished on ``close()`` (the runner closes on stop and after a failure); rows are
  grouped into large row groups by ``publish.parquet.ParquetWriter``.
- The dtypes are the records' own (``orderbook.records.BBO``/``L2``, ``parsers.schema.TRADE``/
  ``STATUS``): the files read back like replay's.
"""
from __future__ import annotations

import os
from pathlib import Path

from orderbook.records import BBO, L2
from parsers.schema import STATUS, TRADE
from publish.batch import MarketBatch

KINDS = {"bbo": BBO, "l2": L2, "trades": TRADE, "status": STATUS}


class ParquetSink:
    """Writes each ``MarketBatch``'s rows under ``dir`` (see the module rules).

    Args:
        dir: output directory (created).
        venue: written into each file's metadata.
    """

    name = "parquet"

    def __init__(self, dir: str, venue: str = "") -> None:
        self.dir = Path(dir)
        self.venue = venue
        self.counters: dict[str, int] = {"rows": 0, "files": 0}
        self._writers: dict = {}
        self._part = 0

    def open(self) -> None:
        from publish.parquet import ParquetWriter

        self.close()
        self.dir.mkdir(parents=True, exist_ok=True)
        while any((self.dir / f"{kind}-{self._part:04d}.parquet").exists() for kind in KINDS):
            self._part += 1
        meta = {"venue": self.venue, "schema": "feedhandler/1", "source": "live", "part": self._part}
        self._writers = {kind: ParquetWriter(self.dir / f"{kind}-{self._part:04d}.parquet", rec.dtype,
                                             {**meta, "record": rec.name})
                         for kind, rec in KINDS.items()}
        self.counters["files"] += len(self._writers)
        self._part += 1

    def write(self, batch: MarketBatch) -> None:
        if not self._writers:
            raise OSError(f"parquet sink under {self.dir} is not open")
        for kind in KINDS:
            rows = getattr(batch, kind)
            if len(rows):
                self._writers[kind].write(rows)
                self.counters["rows"] += len(rows)

    def close(self) -> None:
        writers, self._writers = self._writers, {}
        errors = []
        for writer in writers.values():
            try:
                writer.close()
            except Exception as exc:  # finish the other files anyway
                errors.append(exc)
        if errors:
            raise errors[0]


def parquet_runner(conf: dict, venue: str):
    """A started ``SinkRunner`` around a ``ParquetSink`` from a ``[sinks.parquet]`` table."""
    from publish.runner import SinkRunner

    conf = dict(conf)
    policy = conf.pop("policy", "drop-oldest")  # merging batches would lose rows of the files
    max_batches = int(conf.pop("queue_batches", 256))
    if "dir" not in conf:
        raise KeyError("[sinks.parquet] needs dir")
    sink = ParquetSink(os.fspath(conf.pop("dir")), venue=venue)
    if conf:
        raise KeyError(f"[sinks.parquet]: unknown setting {sorted(conf)[0]!r}")
    return SinkRunner(sink, max_batches=max_batches, policy=policy)
