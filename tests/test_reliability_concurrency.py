"""Three processes materialize the same partitions at once: no deadlock, no duplicate, exact rows.

Process A stops for a moment inside its `daily_bar` write transaction and signals; B and C,
already started and waiting, then run the same range together, so they race each other and
queue behind A (SQLite: BEGIN IMMEDIATE + busy timeout; PostgreSQL: a transaction-scoped
advisory lock per table). On SQLite the warehouse file does not exist yet, so the three also
race to create the schema.
"""

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core.sources.demo import shared_market
from tests.support import closing_warehouse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[1]
START, END = dt.date(2025, 8, 4), dt.date(2025, 8, 8)
STOCKS = 200
HOLD_SECONDS = 2.0

WORKER = """
import json, sys, time
from pathlib import Path

url, folder, role = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
import dagster as dg
from stocksync_dagster.core import sync
from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.resources import DemoSourceResource, WarehouseResource

assets = [market_data]
go = folder / "go"
if role == "holder":
    real_upsert = sync.upsert_frame

    def upsert_and_hold(connection, table, frame, **options):
        stats = real_upsert(connection, table, frame, **options)
        if table.name == "daily_bar":
            go.write_text("the holder is inside its write transaction")
            time.sleep(%(hold)s)
        return stats

    sync.upsert_frame = upsert_and_hold
    while len(list(folder.glob("ready-*"))) < 2:
        time.sleep(0.01)
else:
    (folder / f"ready-{role}").write_text("imported")
    while not go.exists():
        time.sleep(0.01)
began = time.monotonic()
result = dg.materialize(
    assets,
    resources={"source": DemoSourceResource(stocks=%(stocks)d),
               "warehouse": WarehouseResource(url=url)},
    tags={"dagster/asset_partition_range_start": "%(start)s",
          "dagster/asset_partition_range_end": "%(end)s"},
    raise_on_error=False,
)
stats = {
    e.materialization.asset_key.to_user_string(): {
        k: e.materialization.metadata[k].value
        for k in ("run_rows_inserted", "run_rows_updated", "run_rows_unchanged")
    }
    for e in result.get_asset_materialization_events()
}
print(json.dumps({"success": result.success, "seconds": time.monotonic() - began, "stats": stats}))
"""


def start(url: str, folder: Path, role: str) -> subprocess.Popen:
    script = WORKER % {"stocks": STOCKS, "start": START, "end": END, "hold": HOLD_SECONDS}
    return subprocess.Popen(
        [sys.executable, "-c", script, url, str(folder), role],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def table(url: str, name: str) -> pd.DataFrame:
    with closing_warehouse(url) as connection:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {name} ORDER BY trade_date, code"), connection)
    frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame


def test_same_partitions_from_three_processes_at_once(warehouse_url: str, tmp_path: Path) -> None:
    holder = start(warehouse_url, tmp_path, "holder")
    racers = [start(warehouse_url, tmp_path, str(i)) for i in range(2)]
    reports = []
    for process in [holder, *racers]:
        out, err = process.communicate(timeout=120)  # a deadlock would end here
        assert process.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["success"] for r in reports), reports
    assert (tmp_path / "go").exists()
    # B and C really waited for A's commit: they ran while A held its transaction.
    assert all(r["seconds"] >= HOLD_SECONDS * 0.5 for r in reports[1:]), reports

    market = shared_market(STOCKS, 42)
    for name, expected in (
        ("daily_bar", market.bars(START, END)),
        ("adj_factor", market.adj_factors(START, END)),
    ):
        stored = table(warehouse_url, name)
        assert not stored.duplicated(["code", "trade_date"]).any()
        expected = expected.sort_values(["trade_date", "code"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(stored[list(expected.columns)], expected, check_dtype=False)
    # Exactly one process inserted the rows; the others found them identical.
    inserted = sorted(r["stats"]["daily_bars"]["run_rows_inserted"] for r in reports)
    assert inserted == [0, 0, len(market.bars(START, END))]
    assert all(r["stats"]["daily_bars"]["run_rows_updated"] == 0 for r in reports)
