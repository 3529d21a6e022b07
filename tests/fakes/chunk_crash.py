"""A chunked range sync that stops inside the transaction of one chunk (kill -9 tests).

    python -m tests.fakes.chunk_crash URL AXIS CHUNK_ROWS COMMITTED READY

Syncs daily_bars + adj_factor of the demo market (chunked along AXIS, `days` or `stocks`)
into URL; once COMMITTED chunks have committed, the next chunk writes its bars, then (inside
its open transaction) writes this process's pid to READY and waits to be killed.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

from stocksync_dagster.core import sync
from stocksync_dagster.core.sources.base import ChunkAxis
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.warehouse import Warehouse

START, END = dt.date(2025, 3, 3), dt.date(2025, 4, 30)
AS_OF = dt.date(2025, 5, 30)
STOCKS = 40


class AxisDemo(DemoSource):
    """The demo market, chunked along the given axis."""

    def __init__(self, axis: ChunkAxis) -> None:
        super().__init__(n_stocks=STOCKS, seed=5, as_of=AS_OF)
        self.axis = axis

    @property
    def chunk_axis(self) -> ChunkAxis:
        return self.axis


def main() -> None:
    url, axis, chunk_rows, committed, ready = sys.argv[1:6]
    done = []
    upsert = sync.upsert_frame

    def upsert_then_wait(connection, table, frame, **options):  # type: ignore[no-untyped-def]
        stats = upsert(connection, table, frame, **options)
        if len(done) == int(committed) and table.name == "adj_factor":
            partial = Path(f"{ready}.tmp")
            partial.write_text(str(os.getpid()))
            partial.rename(ready)
            time.sleep(600)
        return stats

    sync.upsert_frame = upsert_then_wait  # type: ignore[assignment]
    sync.sync_market(
        [sync.DAILY_BARS, sync.ADJ_FACTOR],
        AxisDemo(axis),  # type: ignore[arg-type]
        Warehouse(url),
        START,
        END,
        max_failed_share=1.0,
        chunk_rows=int(chunk_rows),
        on_chunk=done.append,
    )


if __name__ == "__main__":
    main()
