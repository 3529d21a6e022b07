"""Every benchmark runs at the tiny size and produces well-formed results (no timing asserts).

Also pins down that the fast numpy COPY path writes exactly what the row-by-row path writes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from benchmarks import run as bench_run
from benchmarks.common import Row, tree_rss
from benchmarks.sizes import TINY
from benchmarks.tushare import bound_seconds
from stocksync_dagster.core.sources.progress import Progress
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.core.warehouse import upsert as upsert_module
from stocksync_dagster.core.warehouse.upsert import upsert_frame

pytestmark = pytest.mark.slow


def _check_report(report: dict, names: list[str]) -> None:
    assert set(report["benchmarks"]) == set(names)
    assert report["machine"]["cpus"] >= 1
    for name in names:
        rows = report["benchmarks"][name]["rows"]
        assert rows, f"{name} produced no rows"
        for row in rows:
            assert row["bench"] == name
            assert row["case"]
            assert math.isfinite(row["seconds"]) and row["seconds"] >= 0
            for key in ("rows", "calls", "stocks"):
                assert row[key] is None or row[key] >= 0
        for target in report["benchmarks"][name]["targets"]:
            assert target["goal"] and target["measured"] and isinstance(target["met"], bool)


@pytest.mark.parametrize(
    ("names", "needs_postgres"),
    [
        (["history"], False),
        (["memory"], False),
        (["tushare"], False),
        (["writes"], True),
        (["dagster"], False),
        (["scaling"], False),
    ],
)
def test_benchmark_runs_at_tiny_size(
    names: list[str], needs_postgres: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    args = ["--size", "tiny", "--only", ",".join(names), "--out", str(tmp_path)]
    if needs_postgres:
        request.getfixturevalue("postgres_server_url")  # skips (or fails in CI) without a server
    else:
        args += ["--pg-url", "none"]
    report = bench_run.main(args)
    _check_report(report, names)
    written = json.loads((tmp_path / "tiny.json").read_text())
    assert written["benchmarks"].keys() == report["benchmarks"].keys()
    assert "| benchmark | case |" in report["table"]
    if "history" in names:
        cases = [r["case"] for r in report["benchmarks"]["history"]["rows"]]
        assert any("old way" in c for c in cases) and any("daily_bars" in c for c in cases)
        old = report["benchmarks"]["history"]["rows"][0]
        assert old["extrapolated"] and old["calls"] == TINY.stocks * 17


def test_unknown_benchmark_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown benchmark"):
        bench_run.main(["--size", "tiny", "--only", "nope", "--out", str(tmp_path)])


def test_table_marks_extrapolated_rows() -> None:
    text = bench_run.table([Row("writes", "to_sql", 2.0, rows=10, extrapolated=True)], [])
    assert "2.0 (extrapolated)" in text and "| 5 |" in text


def test_rate_limit_bound() -> None:
    assert bound_seconds(244, 1, 50, 6.0) == 4 * 6.0
    assert bound_seconds(244, 3, 50, 6.0) == 6.0
    assert bound_seconds(10, 1, 50, 6.0) == 0.0


def test_tree_rss_counts_this_process() -> None:
    import os

    assert tree_rss(os.getpid(), exclude=set()) > 10_000_000


def test_progress_logs_count_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("stocksync_dagster.test_progress")
    progress = Progress(logger, "fetch", total=100, every=25)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for _ in range(100):
            progress.advance()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3  # at 25, 50, 75; the caller reports the end itself
    assert lines[0].startswith("fetch: 25/100 stocks (25%),") and "ETA" in lines[0]


# ----- the numpy binary COPY path writes what the row-by-row path writes ---------------------
def _bars() -> pd.DataFrame:
    day = dt.date(2025, 1, 2)
    return pd.DataFrame(
        {
            "code": ["600000.SH", "000001.SZ", "430047.BJ"],
            "trade_date": [day, day, dt.date(2025, 1, 3)],
            "open": [10.0, 11.5, 1e-4],
            "high": [10.5, 12.0, 2.0],
            "low": [9.5, 11.0, 1e-4],
            "close": [10.2, 11.9, 1.5],
            "pre_close": [10.0, 11.0, 1.4],
            "volume": pd.array([100, 2**40, 0], dtype="int64"),
            "amount": [1020.0, 1.5e12, 0.0],
            "pct_chg": [2.0, -0.25, 7.1428],
        }
    )


def _read(url: str) -> pd.DataFrame:
    with Warehouse(url).connect() as connection:
        return pd.read_sql(sa.text("SELECT * FROM daily_bar ORDER BY code, trade_date"), connection)


@pytest.mark.postgres
def test_numpy_copy_writes_the_same_rows_as_write_row(
    postgres_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import _truncate

    warehouse = Warehouse(postgres_server_url)
    _truncate(warehouse)
    with warehouse.begin() as connection:
        assert upsert_frame(connection, schema.daily_bar, _bars()).inserted == 3
    fast = _read(postgres_server_url)
    _truncate(warehouse)
    monkeypatch.setattr(upsert_module, "_binary_blocks", lambda *args: None)
    with warehouse.begin() as connection:
        upsert_frame(connection, schema.daily_bar, _bars())
    pd.testing.assert_frame_equal(fast, _read(postgres_server_url))
    assert fast["volume"].tolist() == [2**40, 0, 100]  # ordered by code
    _truncate(warehouse)


def test_numpy_copy_falls_back_for_nulls_and_uneven_text() -> None:
    frame = _bars()
    columns = list(frame.columns)
    assert upsert_module._binary_blocks(frame, schema.daily_bar, columns) is not None
    with_null = frame.assign(pre_close=[1.0, None, 2.0])
    assert upsert_module._binary_blocks(with_null, schema.daily_bar, columns) is None
    uneven = frame.assign(code=["600000.SH", "1.SZ", "430047.BJ"])
    assert upsert_module._binary_blocks(uneven, schema.daily_bar, columns) is None
