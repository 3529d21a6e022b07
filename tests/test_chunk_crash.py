"""kill -9 of a chunked range sync inside a chunk's transaction: whole chunks only, then a
rerun heals to the exact market.

`tests/fakes/chunk_crash.py` syncs bars + factors of the demo market in chunks (date windows or
stock batches) and stops inside the transaction of the third chunk, after its bars are written
and before its factors are. The warehouse then holds the first two chunks exactly as the
market is, and everything else exactly as the earlier sync left it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core import sync
from stocksync_dagster.core.sources.base import ChunkAxis
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.core.warehouse.upsert import upsert_frame
from tests.fakes.chunk_crash import END, START, AxisDemo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]
CHUNK_ROWS = 300
COMMITTED = 2
BOTH = [sync.DAILY_BARS, sync.ADJ_FACTOR]


def _table(url: str, table: sa.Table) -> pd.DataFrame:
    warehouse = Warehouse(url)
    try:
        with warehouse.connect() as connection:
            frame = pd.read_sql(sa.select(table), connection)
    finally:
        warehouse.dispose()
    frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame.sort_values(["code", "trade_date"]).reset_index(drop=True)


def _rows(frame: pd.DataFrame, chunk: sync.Chunk) -> pd.DataFrame:
    inside = frame["trade_date"].isin(chunk.days)
    if chunk.codes is not None:
        inside &= frame["code"].isin(chunk.codes)
    columns = [c for c in frame.columns if c != "source"]
    return frame.loc[inside, columns].reset_index(drop=True)


def _old(frame: pd.DataFrame) -> pd.DataFrame:
    """What an earlier sync left: every value different."""
    old = frame.copy()
    for column in ("open", "high", "low", "close", "pre_close", "amount", "adj_factor"):
        if column in old:
            old[column] = old[column] * 1.05
    return old


def _wait_for(path: Path, process: subprocess.Popen[str]) -> int:
    deadline = time.monotonic() + 90
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the sync ended before the crash point: {process.stderr.read()}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            raise AssertionError("the sync never reached the crash point")
        time.sleep(0.05)
    return int(path.read_text())


@pytest.mark.parametrize("axis", ["days", "stocks"])
def test_kill_9_inside_a_chunk_leaves_whole_chunks_and_the_rerun_heals(
    tmp_path: Path, axis: ChunkAxis
) -> None:
    market_url = f"sqlite:///{tmp_path / 'market.db'}"
    url = f"sqlite:///{tmp_path / 'crashed.db'}"
    with AxisDemo(axis) as source:
        sync.sync_market(BOTH, source, Warehouse(market_url), START, END, max_failed_share=1.0)
        plan = sync.plan_chunks(
            axis,
            sync.open_days_between(source, START, END),
            None,
            source.stock_basic(),
            CHUNK_ROWS,
        )
    assert len(plan) > COMMITTED + 1
    market = {t.name: _table(market_url, t) for t in (schema.daily_bar, schema.adj_factor)}
    warehouse = Warehouse(url)
    with warehouse.begin() as connection:
        for table in (schema.daily_bar, schema.adj_factor):
            upsert_frame(connection, table, _old(market[table.name]))
    warehouse.dispose()

    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.chunk_crash", url, axis, str(CHUNK_ROWS),
         str(COMMITTED), str(ready)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        pid = _wait_for(ready, process)
        os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL

    for table in (schema.daily_bar, schema.adj_factor):
        stored, new = _table(url, table), market[table.name]
        assert len(stored) == len(new)
        for chunk in plan:
            kept = _rows(stored, chunk)
            wanted = _rows(new if chunk.index < COMMITTED else _old(new), chunk)
            pd.testing.assert_frame_equal(kept, wanted, check_dtype=False)

    with AxisDemo(axis) as source:
        sync.sync_market(
            BOTH, source, Warehouse(url), START, END, max_failed_share=1.0, chunk_rows=CHUNK_ROWS
        )
    for table in (schema.daily_bar, schema.adj_factor):
        healed = _table(url, table).drop(columns=["source"], errors="ignore")
        exact = market[table.name].drop(columns=["source"], errors="ignore")
        pd.testing.assert_frame_equal(healed, exact, check_dtype=False)
