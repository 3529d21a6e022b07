"""Bad input: malformed rows, hostile strings, oversized replies and bad configuration.

Bad rows are refused with a reason the user finds in `sync_rejected_row` and in the
materialization's metadata, the good rows of the day are written, memory stays bounded, and
no value from a source is ever spliced into SQL text. Every bad setting stops the real
`stocksync` CLI with one line naming the variable and no traceback.
"""

import datetime as dt
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core.sources.base import FetchResult, MarketSource
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.sync import DAILY_BARS, sync_market_range
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.resources import MarketSourceResource, WarehouseResource
from tests.support import closing_warehouse, materializations

DAY = dt.date(2025, 8, 5)
HOSTILE = "600000.SH'); DROP TABLE daily_bar;--"
MARKET = DemoMarket(30, seed=3, origin=dt.date(2025, 1, 2))
TAGS = {
    "dagster/asset_partition_range_start": DAY.isoformat(),
    "dagster/asset_partition_range_end": DAY.isoformat(),
}


def good_rows() -> pd.DataFrame:
    return MARKET.bars(DAY, DAY).astype(object)


def malformed_rows() -> tuple[pd.DataFrame, dict[str, str]]:
    """One bad row per kind (code -> the reason it must be refused with)."""
    base = good_rows().iloc[0].to_dict()

    def row(code: str, **changes: object) -> dict[str, object]:
        return {**base, "code": code, **changes}

    rows = {
        "000101.SZ": (row("000101.SZ", open=""), "open is missing or not a number"),
        "000102.SZ": (row("000102.SZ", high=float("nan")), "high is missing or not a number"),
        "000103.SZ": (row("000103.SZ", close="abc"), "close is missing or not a number"),
        "000104.SZ": (row("000104.SZ", low=-1.0), "low <= 0"),
        "000105.SZ": (row("000105.SZ", high=1.0, low=2.0), "high below open, close or low"),
        "000106.SZ": (row("000106.SZ", volume=-5), "volume < 0"),
        "60000.SH": (row("60000.SH"), "code is not in 600000.SH form"),
        "sh.600000": (row("sh.600000"), "code is not in 600000.SH form"),
        "": (row(""), "code is not in 600000.SH form"),
        HOSTILE: (row(HOSTILE), "code is not in 600000.SH form"),
        "000107.SZ": (
            row("000107.SZ", trade_date=DAY + dt.timedelta(days=40)),
            f"trade_date outside {DAY}..{DAY}",
        ),
    }
    duplicate = {**base}  # the same (code, day) twice: the second is refused
    frame = pd.DataFrame([*(r for r, _ in rows.values()), duplicate])
    reasons = {code: reason for code, (_, reason) in rows.items()}
    return frame, reasons


class FrameSource(MarketSource):
    """A source that serves whatever frame it is given, for any request."""

    name = "frame"

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def trade_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        return MARKET.calendar(start, end)

    def stock_basic(self) -> pd.DataFrame:
        return MARKET.stock_basic(DAY)

    def daily_bars(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        return FetchResult(frame=self.frame.copy(), calls=1)

    def adj_factors(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        return FetchResult(frame=MARKET.adj_factors(start, end), calls=1)


class ListedFrameSource(FrameSource):
    """Its frame's stocks are the whole market, listed long ago."""

    def stock_basic(self) -> pd.DataFrame:
        codes = sorted(set(self.frame["code"]))
        return pd.DataFrame({"code": codes, "list_date": dt.date(2000, 1, 4), "delist_date": None})


class MalformedSourceResource(MarketSourceResource):
    def make_source(self) -> MarketSource:
        frame, _ = malformed_rows()
        return FrameSource(pd.concat([good_rows(), frame], ignore_index=True))


def read(url: str, sql: str) -> pd.DataFrame:
    with closing_warehouse(url) as connection:
        return pd.read_sql(sa.text(sql), connection)


def materialize_bars_capturing_sql(
    url: str, run_config: dict | None = None
) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    """Materialize `daily_bars` from the malformed source; also return every SQL text sent."""
    statements: list[str] = []
    engine = WarehouseResource(url=url).get().engine
    listener = lambda _c, _cur, statement, *_a: statements.append(statement)  # noqa: E731
    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        result = dg.materialize(
            [market_data],
            selection=["daily_bars"],
            tags=TAGS,
            raise_on_error=False,
            run_config=run_config,
            resources={
                "source": MalformedSourceResource(),
                "warehouse": WarehouseResource(url=url),
            },
        )
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    return result, statements


def test_malformed_rows_are_rejected_with_findable_reasons_and_good_rows_written(
    warehouse_url: str,
) -> None:
    result, statements = materialize_bars_capturing_sql(warehouse_url)
    assert result.success
    _, reasons = malformed_rows()
    metadata = materializations(result, "daily_bars")[0].metadata
    assert metadata["rejected_rows"].value == len(reasons) + 1
    shown = {record.data["reason"] for record in metadata["rejected_reasons"].value.records}
    assert set(reasons.values()) <= shown

    stored = read(warehouse_url, "SELECT code FROM daily_bar ORDER BY code")
    assert list(stored["code"]) == sorted(good_rows()["code"])  # every good row, nothing else
    rejected = read(warehouse_url, "SELECT code, reason, raw FROM sync_rejected_row")
    found = dict(zip(rejected["code"], rejected["reason"], strict=False))
    for code, reason in reasons.items():
        assert found.get(code) == reason, code
    assert "duplicate (code, trade_date) row" in set(rejected["reason"])
    assert HOSTILE in set(rejected["code"])  # stored verbatim, as a bound parameter
    assert statements and not any("DROP TABLE daily_bar" in s for s in statements)
    assert all(HOSTILE not in s for s in statements)


def test_hostile_codes_in_run_config_are_refused_and_never_reach_sql(warehouse_url: str) -> None:
    codes = {"ops": {"market_data": {"config": {"codes": [HOSTILE, "x' OR '1'='1"]}}}}
    result, statements = materialize_bars_capturing_sql(warehouse_url, codes)
    assert not result.success  # refused before any fetch: not codes in 600000.SH form
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "not in 600000.SH form" in str(failure)
    assert all(HOSTILE not in s and "'1'='1" not in s for s in statements)
    assert read(warehouse_url, "SELECT count(*) AS n FROM daily_bar")["n"][0] >= 0  # table intact


def test_a_reply_ten_times_too_large_keeps_the_day_and_bounded_memory(sqlite_url: str) -> None:
    """1,000 stocks x 10 days for a one-day request: 9 of 10 rows refused, memory bounded."""
    days = [DAY + dt.timedelta(days=i) for i in range(-4, 6)]
    n = 1000
    rng = np.random.default_rng(1)
    close = rng.uniform(5, 50, n * len(days))
    huge = pd.DataFrame(
        {
            "code": [f"{600000 + i:06d}.SH" for i in range(n)] * len(days),
            "trade_date": np.repeat(days, n),
            "open": close,
            "high": close * 1.02,
            "low": close * 0.98,
            "close": close,
            "pre_close": close,
            "volume": rng.integers(1, 10**7, n * len(days)),
            "amount": close * 1000,
            "pct_chg": 0.0,
        }
    )
    source = ListedFrameSource(huge)
    warehouse = Warehouse(sqlite_url)
    warehouse.ensure_schema()
    tracemalloc.start()
    try:
        report = sync_market_range(DAILY_BARS, source, warehouse, DAY, DAY)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.rows_fetched == n and report.stats.inserted == n
    assert len(report.rejected) == 9 * n
    assert peak < 60 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    rejected = read(
        sqlite_url, "SELECT reason, count(*) AS n FROM sync_rejected_row GROUP BY reason"
    )
    assert rejected.to_dict("records") == [
        {"reason": f"trade_date outside {DAY}..{DAY}", "n": 9 * n}
    ]


# ----- bad configuration through the real CLI ---------------------------------------------------
UNREACHABLE = "postgresql+psycopg://u:cfg-secret-pw@127.0.0.1:1/nowhere"
BAD_SETTINGS = [
    ("STOCKSYNC_DATABASE_URL", "not a url", "status", 2),
    ("STOCKSYNC_DATABASE_URL", "mysql://u:cfg-secret-pw@h/db", "status", 2),
    ("STOCKSYNC_DATABASE_URL", "postgresql+pg8000://u:cfg-secret-pw@h/db", "status", 2),
    ("STOCKSYNC_DATABASE_URL", UNREACHABLE, "status", 1),
    ("STOCKSYNC_DATABASE_URL", UNREACHABLE, "backfill", 1),
    ("STOCKSYNC_SOURCE", "yahoo", "status", 2),
    ("STOCKSYNC_START_DATE", "2024/01/01", "status", 2),
    ("STOCKSYNC_START_DATE", "2024-02-30", "status", 2),
    ("STOCKSYNC_START_DATE", "2999-01-01", "status", 2),
    ("BAOSTOCK_SERVER", "localhost", "status", 2),
    ("BAOSTOCK_SERVER", "localhost:99999", "status", 2),
    ("TUSHARE_TOKEN", " , ", "status", 2),
    ("TUSHARE_TOKEN", "", "backfill", 2),  # with STOCKSYNC_SOURCE=tushare: required
    ("TUSHARE_API_URL", "ftp://api.example/x", "status", 2),
    ("STOCKSYNC_ALERT_WEBHOOKS", "hooks.example/cfg-secret-path", "status", 2),
    ("STOCKSYNC_ALERT_WEBHOOKS", "teams+https://x.example/cfg-secret-path", "status", 2),
    (
        "STOCKSYNC_ALERT_WEBHOOKS",
        "https://ok.example/a,ftp://x.example/cfg-secret-path",
        "status",
        2,
    ),
    ("STOCKSYNC_UI_URL", "localhost:3000", "status", 2),
    ("STOCKSYNC_NIGHTLY_AT", "25:00", "status", 2),
    ("STOCKSYNC_NIGHTLY_AT", "17:00", "status", 2),
    ("STOCKSYNC_CATCHUP_AT", "8am", "status", 2),
    ("STOCKSYNC_LOOKBACK_DAYS", "999", "status", 2),
    ("STOCKSYNC_EXECUTOR", "k8s", "backfill", 2),
]


def _stocksync(variable: str, value: str, command: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STOCKSYNC_", "TUSHARE", "BAOSTOCK", "DAGSTER_HOME"))
    }
    environment.update(STOCKSYNC_SOURCE="demo", DAGSTER_HOME=str(cwd))
    if variable == "TUSHARE_TOKEN" and command == "backfill":
        environment["STOCKSYNC_SOURCE"] = "tushare"
    environment[variable] = value
    args = ["backfill", "2025-08-04", "2025-08-05"] if command == "backfill" else [command]
    stocksync = str(Path(sys.executable).with_name("stocksync"))
    return subprocess.run(
        [stocksync, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_every_bad_setting_is_one_line_naming_it_without_a_traceback(tmp_path: Path) -> None:
    folders = []
    for i in range(len(BAD_SETTINGS)):
        folders.append(tmp_path / str(i))
        folders[-1].mkdir()
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(
                lambda case: _stocksync(*case[0][:3], case[1]),
                zip(BAD_SETTINGS, folders, strict=True),
            )
        )
    problems = []
    for (variable, value, command, code), done in zip(BAD_SETTINGS, results, strict=True):
        errors = [ln for ln in done.stderr.splitlines() if ln.strip()]
        line = errors[-1] if errors else ""
        if (
            done.returncode != code
            or not line.startswith(f"error: {variable}: ")
            or len([ln for ln in errors if ln.startswith("error:")]) != 1
            or "Traceback" in done.stderr + done.stdout
            or "cfg-secret" in done.stderr + done.stdout
        ):
            problems.append((variable, value, command, done.returncode, done.stderr[-600:]))
    assert not problems, problems
