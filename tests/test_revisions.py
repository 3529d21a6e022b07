"""Revision history: a re-fetch that changes a stored row keeps its old and new values.

On SQLite and on the real PostgreSQL (`warehouse_url`), through the project's own sync.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import ClassVar

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.checks.revisions import evaluate_old_revisions, old_revisions
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.sources.base import FetchResult, MarketSource
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.sync import ADJ_FACTOR, DAILY_BARS, sync_market_range
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.defs.market.jobs import range_tags
from stocksync_dagster.resources import DemoSourceResource
from tests.orchestration import build_defs, recent_trading_days

START, END = dt.date(2025, 8, 4), dt.date(2025, 8, 15)
DAY = dt.date(2025, 8, 12)
VALUES = schema.REVISED_COLUMNS["daily_bar"]


class RevisingSource(DemoSource):
    """The demo market, except the `close` of the pairs in `changed` and the factor of those in
    `changed_factors`: a source that corrected or late-published those rows."""

    def __init__(
        self,
        changed: Sequence[tuple[str, dt.date]] = (),
        changed_factors: Sequence[tuple[str, dt.date]] = (),
    ) -> None:
        super().__init__(n_stocks=30, as_of=END)
        self.changed = set(changed)
        self.changed_factors = set(changed_factors)

    @staticmethod
    def _mask(frame: pd.DataFrame, pairs: set[tuple[str, dt.date]]) -> pd.Series:
        hit = [(c, d) in pairs for c, d in zip(frame["code"], frame["trade_date"], strict=True)]
        return pd.Series(hit, index=frame.index, dtype=bool)

    def daily_bars(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        result = super().daily_bars(start, end, codes)
        hit = self._mask(result.frame, self.changed)
        frame = result.frame
        # still a valid bar: the close moves to the low (or the high when it was the low)
        frame.loc[hit, "close"] = frame.loc[hit, "low"].where(
            frame.loc[hit, "close"] != frame.loc[hit, "low"], frame.loc[hit, "high"]
        )
        return result

    def adj_factors(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        result = super().adj_factors(start, end, codes)
        hit = self._mask(result.frame, self.changed_factors)
        result.frame.loc[hit, "adj_factor"] = result.frame.loc[hit, "adj_factor"] * 1.5
        return result


def _victim() -> str:
    bars = DemoSource(n_stocks=30, as_of=END).market.bars(DAY, DAY)
    return str(sorted(bars["code"])[0])


def _revisions(warehouse: Warehouse, table: sa.Table) -> pd.DataFrame:
    with warehouse.connect() as connection:
        return pd.DataFrame(connection.execute(sa.select(table)).mappings().all())


def test_a_changed_close_leaves_one_revision_row_with_old_and_new_values(
    warehouse: Warehouse,
) -> None:
    code = _victim()
    first = sync_market_range(DAILY_BARS, RevisingSource(), warehouse, START, END, run_id="run-1")
    assert first.stats.revised == 0
    with warehouse.connect() as connection:
        bar = schema.daily_bar.c
        before = connection.execute(
            sa.select(schema.daily_bar).where(bar.code == code, bar.trade_date == DAY)
        ).one()
    source = RevisingSource(changed=[(code, DAY)])
    second = sync_market_range(DAILY_BARS, source, warehouse, START, END, run_id="run-2")
    assert (second.stats.updated, second.stats.revised) == (1, 1)
    assert second.revisions == {DAY: 1}

    rows = _revisions(warehouse, schema.daily_bar_revision)
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row["code"], pd.Timestamp(row["trade_date"]).date(), row["run_id"]) == (
        code,
        DAY,
        "run-2",
    )
    assert row["old_close"] == before.close
    assert row["new_close"] != before.close
    assert row["new_close"] in (before.low, before.high)
    for column in VALUES:
        if column != "close":
            assert row[f"old_{column}"] == row[f"new_{column}"] == getattr(before, column)
    assert pd.notna(row["revised_at"])
    with warehouse.connect() as connection:
        stored = connection.execute(
            sa.select(bar.close).where(bar.code == code, bar.trade_date == DAY)
        ).scalar_one()
    assert stored == row["new_close"]

    # the same corrected data again changes nothing: no second revision
    third = sync_market_range(DAILY_BARS, source, warehouse, START, END, run_id="run-3")
    assert (third.stats.updated, third.stats.revised) == (0, 0)
    assert len(_revisions(warehouse, schema.daily_bar_revision)) == 1


def test_a_changed_factor_is_kept_in_adj_factor_revision(warehouse: Warehouse) -> None:
    code = _victim()
    sync_market_range(ADJ_FACTOR, RevisingSource(), warehouse, START, END, run_id="a")
    report = sync_market_range(
        ADJ_FACTOR, RevisingSource(changed_factors=[(code, DAY)]), warehouse, START, END, run_id="b"
    )
    assert report.stats.revised == 1
    rows = _revisions(warehouse, schema.adj_factor_revision)
    assert len(rows) == 1
    assert rows.iloc[0]["new_adj_factor"] == pytest.approx(rows.iloc[0]["old_adj_factor"] * 1.5)
    assert rows.iloc[0]["run_id"] == "b"


def test_new_rows_are_not_revisions(warehouse: Warehouse) -> None:
    sync_market_range(DAILY_BARS, RevisingSource(), warehouse, START, DAY, run_id="a")
    report = sync_market_range(DAILY_BARS, RevisingSource(), warehouse, START, END, run_id="b")
    assert report.stats.inserted > 0 and report.stats.revised == 0
    assert _revisions(warehouse, schema.daily_bar_revision).empty


def test_old_revisions_are_those_beyond_the_lookback() -> None:
    revised_on = dt.date(2025, 8, 29)
    days = trading_calendar.trading_days(dt.date(2025, 8, 1), revised_on)
    frame = pd.DataFrame(
        {
            "trade_date": [days[-1], days[-6], days[-7]],  # 0, 5 and 6 trading days before
            "revised_on": [revised_on] * 3,
            "revisions": [1, 2, 3],
            "codes": [["600000.SH"]] * 3,
        }
    )
    old = old_revisions(frame, lookback_days=5)
    assert list(old["trade_date"]) == [days[-7]]
    assert list(old["age"]) == [6]


def test_check_warns_when_the_source_rewrites_old_history(warehouse: Warehouse) -> None:
    code = _victim()
    sync_market_range(DAILY_BARS, RevisingSource(), warehouse, START, END, run_id="a")
    sync_market_range(
        DAILY_BARS, RevisingSource(changed=[(code, DAY)]), warehouse, START, END, run_id="b"
    )
    # revised today: DAY (2025) is far beyond a 5-day look-back
    flagged = evaluate_old_revisions(warehouse, schema.daily_bar, 5, "b")
    assert not flagged.passed and flagged.severity == dg.AssetCheckSeverity.WARN
    assert flagged.metadata["day_list"].value == DAY.isoformat()
    assert flagged.metadata["old_revisions"].value == 1
    assert evaluate_old_revisions(warehouse, schema.daily_bar, 5, "a").passed
    # a look-back long enough to cover the day: a late correction, not a rewrite
    age = len(trading_calendar.trading_days(DAY, dt.date.today()))
    assert evaluate_old_revisions(warehouse, schema.daily_bar, age, None).passed


class RevisingResource(DemoSourceResource):
    """The demo source resource with the pairs in `CHANGED` revised (set by the test)."""

    CHANGED: ClassVar[list[tuple[str, dt.date]]] = []

    def make_source(self) -> MarketSource:
        source = RevisingSource(changed=self.CHANGED)
        source.as_of = None
        return source


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


@pytest.mark.slow
def test_revisions_in_metadata_and_the_check_of_a_dagster_run(
    sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    days = recent_trading_days(8)
    old_day = days[0]
    code = str(sorted(RevisingSource().market.bars(old_day, old_day)["code"])[0])
    defs = build_defs(sqlite_url, source=RevisingResource(stocks=30))
    RevisingResource.CHANGED = []
    tags = range_tags(old_day.isoformat(), days[-1].isoformat())

    def market_sync() -> dg.ExecuteInProcessResult:
        return defs.resolve_job_def("market_sync").execute_in_process(
            instance=instance, tags=tags, raise_on_error=False
        )

    reference = defs.resolve_job_def("reference_sync").execute_in_process(instance=instance)
    assert reference.success
    assert market_sync().success
    RevisingResource.CHANGED = [(code, old_day)]
    try:
        again = market_sync()
    finally:
        RevisingResource.CHANGED = []
    assert again.success
    events = {
        e.partition: e.metadata
        for e in again.asset_materializations_for_node("market_data")
        if e.asset_key == dg.AssetKey("daily_bars")
    }
    assert events[old_day.isoformat()]["revised_rows"].value == 1
    assert events[days[-1].isoformat()]["revised_rows"].value == 0
    assert events[days[-1].isoformat()]["run_rows_revised"].value == 1
    checks = {
        e.asset_key.to_user_string(): e
        for e in again.get_asset_check_evaluations()
        if e.check_name == "no_old_history_revised"
    }
    assert checks["adj_factor"].passed  # no factor changed
    # the old day was revised today: 7 trading days back, beyond the default look-back of 5
    assert not checks["daily_bars"].passed
    assert checks["daily_bars"].severity == dg.AssetCheckSeverity.WARN
    assert checks["daily_bars"].metadata["day_list"].value == old_day.isoformat()


def test_revisions_are_kept_only_for_the_upsert_that_changes_values(warehouse: Warehouse) -> None:
    """On SQLite the old values are kept by a trigger that lives for one write: identical rows
    and a change of `source` alone keep nothing, and later writes by other means keep nothing."""
    from stocksync_dagster.core.warehouse.upsert import upsert_frame

    bars = DemoSource(n_stocks=10, as_of=END).market.bars(START, END).assign(source="demo")
    with warehouse.begin() as connection:
        upsert_frame(connection, schema.daily_bar, bars)
    rerun = bars.assign(source="other")  # bookkeeping only: not a revision
    rerun.loc[rerun.index[:3], "close"] += 0.01
    with warehouse.begin() as connection:
        stats = upsert_frame(connection, schema.daily_bar, rerun, run_id="r1")
    assert (stats.updated, stats.revised) == (len(bars), 3)
    kept = _revisions(warehouse, schema.daily_bar_revision)
    assert len(kept) == 3 and set(kept["run_id"]) == {"r1"}
    assert (kept["new_close"] - kept["old_close"]).round(4).eq(0.01).all()
    with warehouse.begin() as connection:  # not through upsert_frame: no revision kept
        connection.execute(schema.daily_bar.update().values(close=schema.daily_bar.c.close + 1))
    assert len(_revisions(warehouse, schema.daily_bar_revision)) == 3
