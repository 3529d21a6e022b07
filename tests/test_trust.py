"""Data you can trust: every day against its expected universe, and healed from the data.

The expected universe of a day is what `stock_basic` lists that day minus what the source says
was suspended. Lost rows (a short Tushare reply, a stock baostock leaves out, rows deleted from
the warehouse long after the partition was materialized) end in `sync_failure` and are healed
by the repair sensor's next tick to exactly the market.
"""

import datetime as dt
import logging
import time
from collections.abc import Iterator, Sequence

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.checks.completeness import evaluate_completeness
from stocksync_dagster.checks.scope import Scope
from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.sources.base import FetchResult
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.sync import DAILY_BARS, sync_market_range, sync_reference_table
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.defs.market.repair import repair_sensor
from stocksync_dagster.resources import (
    BaostockSourceResource,
    DemoSourceResource,
    TushareSourceResource,
    WarehouseResource,
)
from tests.fakes.baostock_server import FakeBaostockServer
from tests.fakes.tushare_server import FakeTushareServer
from tests.orchestration import DEMO_STOCKS, build_defs, materialize_range, recent_trading_days
from tests.support import materializations

log = logging.getLogger(__name__)

ORIGIN = dt.date(2025, 1, 2)
START, END = dt.date(2025, 3, 3), dt.date(2025, 3, 21)
HALF_DAY = dt.date(2025, 3, 12)
AS_OF = dt.date(2025, 4, 30)
TOKEN = "tok-trust-7c1e55aa0b13"
ERROR = dg.AssetCheckSeverity.ERROR


@pytest.fixture(scope="module")
def market() -> DemoMarket:
    return DemoMarket(60, seed=11, origin=ORIGIN)


def ordered(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    frame = frame[list(columns)] if columns else frame
    frame = frame.sort_values(["trade_date", "code"]).reset_index(drop=True)
    if "volume" in frame:
        frame["volume"] = frame["volume"].astype("int64")
    return frame


def read(url: str, table: str) -> pd.DataFrame:
    with Warehouse(url).connect() as connection:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {table} ORDER BY trade_date, code"), connection)
    frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame


def load_reference(url: str, market: DemoMarket, as_of: dt.date) -> Warehouse:
    warehouse = Warehouse(url)
    warehouse.ensure_schema()
    calendar = market.calendar(dt.date(as_of.year - 1, 1, 1), dt.date(as_of.year, 12, 31))
    sync_reference_table(schema.trade_calendar, calendar, warehouse)
    sync_reference_table(schema.stock_basic, market.stock_basic(as_of), warehouse)
    return warehouse


def materialize_bars(
    source: dg.ConfigurableResource,
    url: str,
    instance: dg.DagsterInstance,
    tags: dict[str, str],
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [market_data],
        selection=["daily_bars"],
        resources={"source": source, "warehouse": WarehouseResource(url=url)},
        instance=instance,
        tags=tags,
        run_config=run_config or {},
        raise_on_error=False,
    )


def tags_for(start: dt.date, end: dt.date) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": start.isoformat(),
        "dagster/asset_partition_range_end": end.isoformat(),
    }


def repair_tick(url: str, instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    context = dg.build_sensor_context(
        instance=instance, resources={"warehouse": WarehouseResource(url=url)}
    )
    data = repair_sensor.evaluate_tick(context)
    return list(data.run_requests or [])


def run_requests(
    requests: Sequence[dg.RunRequest],
    source: dg.ConfigurableResource,
    url: str,
    instance: dg.DagsterInstance,
) -> None:
    for request in requests:
        selection = [k.to_user_string() for k in request.asset_selection or []]
        result = dg.materialize(
            [market_data],
            selection=selection,
            resources={"source": source, "warehouse": WarehouseResource(url=url)},
            instance=instance,
            tags=request.tags,
            run_config=request.run_config,
            raise_on_error=False,
        )
        assert result.success, request.tags


def request_scope(request: dg.RunRequest) -> tuple[str, str, tuple[str, ...] | None]:
    config = (request.run_config or {}).get("ops", {}).get("market_data", {}).get("config", {})
    codes = config.get("codes")
    return (
        request.tags["dagster/asset_partition_range_start"],
        request.tags["dagster/asset_partition_range_end"],
        tuple(codes) if codes else None,
    )


def open_failures(url: str) -> pd.DataFrame:
    frame = read(url, "sync_failure")
    return frame[frame["status"] != "resolved"]


# ----- suspensions -------------------------------------------------------------------------


def seed_reference(url: str, days: list[dt.date]) -> tuple[DemoSource, Warehouse]:
    """The demo market's calendar over `days` and its security master, in the warehouse."""
    demo = DemoSource(n_stocks=DEMO_STOCKS)
    warehouse = Warehouse(url)
    warehouse.ensure_schema()
    sync_reference_table(schema.trade_calendar, demo.trade_calendar(days[0], days[-1]), warehouse)
    sync_reference_table(schema.stock_basic, demo.stock_basic(), warehouse)
    return demo, warehouse


def test_suspensions_equal_the_market_and_are_never_missing(
    warehouse_url: str, market: DemoMarket
) -> None:
    warehouse = load_reference(warehouse_url, market, AS_OF)
    source = DemoSource(n_stocks=60, seed=11)
    source.market = market
    report = sync_market_range(DAILY_BARS, source, warehouse, START, END)
    truth = ordered(market.suspensions(START, END))
    assert len(truth) > 5, "the window must hold suspensions for this test to mean anything"
    stored = ordered(read(warehouse_url, "suspension"), ["code", "trade_date"])
    pd.testing.assert_frame_equal(stored, truth, check_dtype=False)
    assert set(read(warehouse_url, "suspension")["source"]) == {"demo"}
    assert report.failures == [] and sum(report.suspended.values()) == len(truth)
    check = evaluate_completeness(warehouse, Scope(START, END))
    assert check.passed, check.description
    assert check.metadata["suspended"].value == len(truth)
    assert check.metadata["missing"].value == 0
    assert read(warehouse_url, "sync_failure").empty
    # re-running leaves exactly the same suspensions (replaced, not appended)
    sync_market_range(DAILY_BARS, source, warehouse, START, END)
    assert len(read(warehouse_url, "suspension")) == len(truth)


# ----- a Tushare reply short of the market -------------------------------------------------
@pytest.fixture
def tushare_server(market: DemoMarket) -> Iterator[FakeTushareServer]:
    with FakeTushareServer(market, valid_tokens=[TOKEN], as_of=AS_OF) as server:
        yield server


def tushare(server: FakeTushareServer) -> TushareSourceResource:
    return TushareSourceResource(
        tokens=TOKEN, api_url=server.url, max_attempts=2, backoff_seconds=0.01
    )


def test_tushare_half_market_day_is_recorded_never_complete_then_healed(
    sqlite_url: str, market: DemoMarket, tushare_server: FakeTushareServer
) -> None:
    warehouse = load_reference(sqlite_url, market, AS_OF)
    tushare_server.inject("short", api="daily", trade_date=HALF_DAY, times=None)
    with dg.instance_for_test() as instance:
        result = materialize_bars(
            tushare(tushare_server), sqlite_url, instance, tags_for(START, END)
        )
        assert not result.success  # half a day is never a success
        truth = ordered(market.bars(START, END))
        stored = read(sqlite_url, "daily_bar")
        lost = set(truth.query("trade_date == @HALF_DAY")["code"]) - set(
            stored.query("trade_date == @HALF_DAY")["code"]
        )
        assert len(lost) >= 20, "the server served about half the day"
        recorded = open_failures(sqlite_url)
        assert set(recorded["trade_date"]) == {HALF_DAY}
        assert set(recorded["code"]) == lost
        assert set(recorded["status"]) <= {"pending", "retrying"}
        other_days = stored.query("trade_date != @HALF_DAY")
        pd.testing.assert_frame_equal(
            ordered(other_days)[truth.columns],
            truth.query("trade_date != @HALF_DAY").reset_index(drop=True),
            check_dtype=False,
        )
        check = evaluate_completeness(warehouse, Scope(START, END))
        assert not check.passed and check.severity == ERROR
        assert str(HALF_DAY) in str(check.metadata["failing_day_list"].value)
        assert sorted(lost)[0] in str(check.metadata["missing_codes"].value)
        calls = [c for c in tushare_server.calls if c.api == "daily"]
        short_calls = [c for c in calls if c.outcome == "short"]
        assert len(short_calls) >= 2, "a short reply is retried like a failed call"

        tushare_server.clear_faults()
        requests = repair_tick(sqlite_url, instance)
        assert [request_scope(r) for r in requests] == [
            (HALF_DAY.isoformat(), HALF_DAY.isoformat(), tuple(sorted(lost)))
        ]
        run_requests(requests, tushare(tushare_server), sqlite_url, instance)
    pd.testing.assert_frame_equal(
        ordered(read(sqlite_url, "daily_bar"))[truth.columns], truth, check_dtype=False
    )
    assert open_failures(sqlite_url).empty
    assert evaluate_completeness(warehouse, Scope(START, END)).passed


# ----- baostock leaves a listed, not suspended stock out ------------------------------------
def test_baostock_omitting_a_traded_stock_records_it_then_heals(
    sqlite_url: str, market: DemoMarket
) -> None:
    load_reference(sqlite_url, market, AS_OF)
    day = dt.date(2025, 3, 13)
    victim = sorted(market.bars(day, day)["code"])[7]
    with FakeBaostockServer(market, as_of=AS_OF) as server, dg.instance_for_test() as instance:
        source = BaostockSourceResource(
            server=server.address, workers=2, max_attempts=2, backoff_seconds=0.01
        )
        server.omit(victim, day)
        tolerant = {"ops": {"market_data": {"config": {"max_failed_share": 0.05}}}}
        result = materialize_bars(source, sqlite_url, instance, tags_for(START, END), tolerant)
        assert result.success  # 1 of 60 stocks on one day: within 5%, and recorded
        recorded = open_failures(sqlite_url)
        assert list(zip(recorded["code"], recorded["trade_date"], strict=True)) == [(victim, day)]
        assert recorded["error_class"].tolist() == ["MissingFromSource"]
        materialization = next(
            e for e in materializations(result, "daily_bars") if e.partition == day.isoformat()
        )
        assert materialization.metadata["failed_stocks"].value == 1

        server.clear_faults()
        requests = repair_tick(sqlite_url, instance)
        assert [request_scope(r) for r in requests] == [
            (day.isoformat(), day.isoformat(), (victim,))
        ]
        run_requests(requests, source, sqlite_url, instance)
    truth = ordered(market.bars(START, END))
    pd.testing.assert_frame_equal(
        ordered(read(sqlite_url, "daily_bar"))[truth.columns], truth, check_dtype=False
    )
    assert open_failures(sqlite_url).empty


# ----- rows deleted long after the partition was materialized ------------------------------
def test_deleted_day_and_half_day_outside_the_lookback_heal_in_one_tick(sqlite_url: str) -> None:
    days = recent_trading_days(12)
    whole, half = days[1], days[3]  # both older than the nightly 5-day look-back
    defs = build_defs(sqlite_url)
    demo, warehouse = seed_reference(sqlite_url, days)
    with dg.instance_for_test() as instance:
        loaded = materialize_range(
            defs, instance, days[0].isoformat(), days[-1].isoformat(), ("daily_bars",)
        )
        assert loaded.success
        truth = ordered(demo.daily_bars(days[0], days[-1]).frame)
        bar = schema.daily_bar.c
        half_codes = sorted(truth.query("trade_date == @half")["code"])[::2]
        began = time.monotonic()
        with warehouse.begin() as connection:
            connection.execute(sa.delete(schema.daily_bar).where(bar.trade_date == whole))
            connection.execute(
                sa.delete(schema.daily_bar).where(bar.trade_date == half, bar.code.in_(half_codes))
            )
        check = evaluate_completeness(warehouse, Scope(days[0], days[-1]))
        assert not check.passed and check.severity == ERROR
        # Dagster still counts both partitions as materialized: partition status cannot see it
        assert {whole.isoformat(), half.isoformat()} <= instance.get_materialized_partitions(
            dg.AssetKey("daily_bars")
        )

        requests = repair_tick(sqlite_url, instance)
        assert sorted(request_scope(r) for r in requests) == sorted(
            [
                (whole.isoformat(), whole.isoformat(), None),
                (half.isoformat(), half.isoformat(), tuple(half_codes)),
            ]
        )
        assert all(r.asset_selection == [dg.AssetKey("daily_bars")] for r in requests)
        run_requests(requests, DemoSourceResource(stocks=DEMO_STOCKS), sqlite_url, instance)
        healed_in = time.monotonic() - began
        log.info("deleted day + half day healed in %.2f s (one tick + two repair runs)", healed_in)
        stored = ordered(read(sqlite_url, "daily_bar"))[truth.columns]
        pd.testing.assert_frame_equal(stored, truth, check_dtype=False)
        assert open_failures(sqlite_url).empty
        assert evaluate_completeness(warehouse, Scope(days[0], days[-1])).passed
        assert repair_tick(sqlite_url, instance) == []  # nothing left: no loop


def test_a_day_that_keeps_failing_ends_abandoned_not_retried_forever(sqlite_url: str) -> None:
    days = recent_trading_days(6)
    defs = build_defs(sqlite_url)
    demo, warehouse = seed_reference(sqlite_url, days)
    day = days[1]
    victim = sorted(demo.daily_bars(day, day).frame["code"])[0]
    with dg.instance_for_test() as instance:
        assert materialize_range(
            defs, instance, days[0].isoformat(), days[-1].isoformat(), ("daily_bars",)
        ).success
        with warehouse.begin() as connection:
            connection.execute(
                sa.delete(schema.daily_bar).where(
                    schema.daily_bar.c.trade_date == day, schema.daily_bar.c.code == victim
                )
            )
        source = LosingResource(stocks=DEMO_STOCKS, victim=victim, day=day.isoformat())
        ticks = 0
        while requests := repair_tick(sqlite_url, instance):
            ticks += 1
            assert ticks <= 10, "the repair loop must be bounded"
            for request in requests:
                materialize_bars(source, sqlite_url, instance, request.tags, request.run_config)
    failures = read(sqlite_url, "sync_failure")
    assert failures["status"].tolist() == ["abandoned"] and failures["code"].tolist() == [victim]


def test_a_day_the_source_now_calls_closed_ends_abandoned(sqlite_url: str) -> None:
    """Rows deleted for a day the source later says was closed: each repair "succeeds" with no
    bar, the audit finds it missing again; the re-opened row keeps counting, so it ends."""
    days = recent_trading_days(6)
    defs = build_defs(sqlite_url)
    _, warehouse = seed_reference(sqlite_url, days)
    day = days[2]
    with dg.instance_for_test() as instance:
        assert materialize_range(
            defs, instance, days[0].isoformat(), days[-1].isoformat(), ("daily_bars",)
        ).success
        with warehouse.begin() as connection:
            connection.execute(
                sa.delete(schema.daily_bar).where(schema.daily_bar.c.trade_date == day)
            )
        source = ClosedDayResource(stocks=DEMO_STOCKS, day=day.isoformat())
        ticks = 0
        while requests := repair_tick(sqlite_url, instance):
            ticks += 1
            assert ticks <= 10, "the repair loop must be bounded"
            for request in requests:
                materialize_bars(source, sqlite_url, instance, request.tags, request.run_config)
    failures = read(sqlite_url, "sync_failure")
    assert failures["code"].tolist() == ["*"] and failures["status"].tolist() == ["abandoned"]


class _ClosedDay(DemoSource):
    def __init__(self, day: dt.date, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.day = day

    def trade_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        frame = super().trade_calendar(start, end)
        frame.loc[frame["cal_date"] == self.day, "is_open"] = False
        return frame


class ClosedDayResource(DemoSourceResource):
    day: str

    def make_source(self) -> DemoSource:
        return _ClosedDay(dt.date.fromisoformat(self.day), n_stocks=self.stocks, seed=self.seed)


class _Losing(DemoSource):
    """The demo market, minus one stock on one day (and never saying it was suspended)."""

    def __init__(self, victim: str, day: dt.date, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.victim, self.day = victim, day

    def daily_bars(self, start, end, codes=None) -> FetchResult:  # type: ignore[no-untyped-def]
        result = super().daily_bars(start, end, codes)
        frame = result.frame
        result.frame = frame[~((frame["code"] == self.victim) & (frame["trade_date"] == self.day))]
        return result


class LosingResource(DemoSourceResource):
    victim: str
    day: str

    def make_source(self) -> DemoSource:
        return _Losing(
            self.victim, dt.date.fromisoformat(self.day), n_stocks=self.stocks, seed=self.seed
        )


# ----- run config --------------------------------------------------------------------------
class _Counting(DemoSource):
    fetches = 0

    def daily_bars(self, start, end, codes=None) -> FetchResult:  # type: ignore[no-untyped-def]
        type(self).fetches += 1
        return super().daily_bars(start, end, codes)


def test_unknown_code_is_named_before_any_fetch(sqlite_url: str) -> None:
    warehouse = Warehouse(sqlite_url)
    source = _Counting(n_stocks=DEMO_STOCKS)
    known = sorted(source.stock_basic()["code"])[0]
    unknown = next(
        f"{n:06d}.SH"
        for n in range(600000, 601000)
        if f"{n:06d}.SH" not in set(source.stock_basic()["code"])
    )
    with pytest.raises(ConfigError, match=f"codes: not in stock_basic: {unknown}"):
        sync_market_range(DAILY_BARS, source, warehouse, START, END, codes=[known, unknown])
    assert _Counting.fetches == 0


def test_a_codes_typo_and_a_negative_share_are_refused_in_one_line(sqlite_url: str) -> None:
    def failure_of(config: dict) -> str:
        with dg.instance_for_test() as instance:
            try:
                result = materialize_bars(
                    DemoSourceResource(stocks=DEMO_STOCKS),
                    sqlite_url,
                    instance,
                    tags_for(START, START),
                    {"ops": {"market_data": {"config": config}}},
                )
            except dg.DagsterInvalidConfigError as exc:  # refused before the run starts
                return str(exc)
        assert not result.success
        error = result.get_step_failure_events()[0].step_failure_data.error
        assert error is not None
        return error.message

    typo = failure_of({"codes": ["600000.SH", "NOTACODE"]})
    assert "NOTACODE" in typo and "600000.SH form" in typo
    negative = failure_of({"max_failed_share": -1})
    assert negative.strip().endswith("max_failed_share: -1.0 is not in [0, 1]")
    assert "max_failed_share" in failure_of({"max_failed_share": 1.5})
    assert read(sqlite_url, "daily_bar").empty


# ----- price limits by date ----------------------------------------------------------------
def _bar(code: str, day: dt.date, pct: float) -> dict[str, object]:
    pre = 10.0
    close = round(pre * (1 + pct / 100), 2)
    return {
        "code": code,
        "trade_date": day,
        "open": pre,
        "high": max(pre, close),
        "low": min(pre, close),
        "close": close,
        "pre_close": pre,
        "volume": 1000,
        "amount": 10000.0,
        "pct_chg": round((close / pre - 1) * 100, 4),
    }


def _stock(code: str, listed: dt.date, is_st: bool = False) -> dict[str, object]:
    return {
        "code": code,
        "name": ("ST" if is_st else "") + code,
        "exchange": code[-2:],
        "board": "main",
        "list_date": listed,
        "delist_date": None,
        "status": "listed",
        "is_st": is_st,
    }


def test_price_limits_follow_the_rule_in_force_and_the_listing_date(warehouse_url: str) -> None:
    from stocksync_dagster.checks.sanity import evaluate_ohlc_sanity

    warehouse = Warehouse(warehouse_url)
    warehouse.ensure_schema()
    before, after = dt.date(2025, 7, 4), dt.date(2025, 7, 7)  # the ST limit: 5% -> 10%
    first = dt.date(2025, 7, 1)  # the first loaded day
    days = pd.date_range(dt.date(2025, 6, 30), dt.date(2025, 7, 11)).date
    calendar = pd.DataFrame({"cal_date": days, "is_open": [d.weekday() < 5 for d in days]})
    stocks = [
        _stock("600001.SH", dt.date(2010, 1, 4), is_st=True),  # ST for years
        _stock("600002.SH", dt.date(2020, 3, 2)),  # listed before the loaded range
        _stock("600003.SH", first),  # IPO on the first loaded day
    ]
    bars = [
        _bar("600001.SH", before, 7.0),  # ST +7% under the 5% rule: flagged
        _bar("600001.SH", after, 7.0),  # ST +7% under the 10% rule: fine
        _bar("600002.SH", first, 15.0),  # not an IPO day: flagged
        _bar("600003.SH", dt.date(2025, 7, 3), 30.0),  # 3rd day after listing: no limit
        _bar("600003.SH", dt.date(2025, 7, 8), 15.0),  # 6th trading day: limited, flagged
    ]
    sync_reference_table(schema.trade_calendar, calendar, warehouse)
    sync_reference_table(schema.stock_basic, pd.DataFrame(stocks), warehouse)
    with warehouse.begin() as connection:
        connection.execute(sa.insert(schema.daily_bar), bars)
    result = evaluate_ohlc_sanity(warehouse, Scope(first, dt.date(2025, 7, 11)))
    flagged = result.metadata["bars"].value
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["bad_bars"].value == 3, flagged
    for code, day in [
        ("600001.SH", before),
        ("600002.SH", first),
        ("600003.SH", dt.date(2025, 7, 8)),
    ]:
        assert code in flagged and str(day) in flagged
    assert str(after) not in flagged and "2025-07-03" not in flagged


# ----- a calendar that does not end --------------------------------------------------------
CLOSURE_2027 = dt.date(2027, 2, 8)  # a weekday closure published for 2027 (test data)


def test_a_2027_closure_in_trade_calendar_is_excluded_from_partitions(sqlite_url: str) -> None:
    from stocksync_dagster.core import trading_calendar
    from stocksync_dagster.core.warehouse.published_calendar import published_closed_weekdays
    from stocksync_dagster.defs.market.partitions import trading_day_partitions

    assert trading_calendar.calendar_last_known_day() < CLOSURE_2027, "past the package"
    warehouse = Warehouse(sqlite_url)
    warehouse.ensure_schema()
    days = pd.date_range(dt.date(2027, 2, 1), dt.date(2027, 2, 12)).date
    published = pd.DataFrame(
        {"cal_date": days, "is_open": [d.weekday() < 5 and d != CLOSURE_2027 for d in days]}
    )
    sync_reference_table(schema.trade_calendar, published, warehouse)

    closures = published_closed_weekdays(sqlite_url, dt.date(2026, 12, 1))
    assert closures == [CLOSURE_2027]
    at = dt.datetime(2027, 2, 20, 20, tzinfo=trading_calendar.SHANGHAI)
    with_source = trading_day_partitions(dt.date(2027, 1, 25), closures)
    without = trading_day_partitions(dt.date(2027, 1, 25))
    assert CLOSURE_2027.isoformat() in without.get_partition_keys(current_time=at)
    keys = with_source.get_partition_keys(current_time=at)
    assert CLOSURE_2027.isoformat() not in keys
    assert {"2027-02-05", "2027-02-09"} <= set(keys)


def test_loading_the_calendar_never_creates_a_warehouse(tmp_path) -> None:
    from stocksync_dagster.core.warehouse.published_calendar import published_closed_weekdays

    missing = tmp_path / "nowhere" / "warehouse.db"
    assert published_closed_weekdays(f"sqlite:///{missing}", dt.date(2025, 1, 1)) == []
    assert not missing.exists() and not missing.parent.exists()


def test_the_check_reports_days_the_source_and_the_package_disagree_on(sqlite_url: str) -> None:
    from stocksync_dagster.checks.calendar_agreement import evaluate_calendar_agreement
    from stocksync_dagster.core import trading_calendar

    warehouse = Warehouse(sqlite_url)
    warehouse.ensure_schema()
    days = pd.date_range(dt.date(2026, 9, 28), dt.date(2026, 10, 9)).date
    truth = [trading_calendar.package_says_open(d) for d in days]
    frame = pd.DataFrame({"cal_date": days, "is_open": truth})
    sync_reference_table(schema.trade_calendar, frame, warehouse)
    assert evaluate_calendar_agreement(warehouse, days[0]).passed

    national_day = dt.date(2026, 10, 1)  # closed per exchange_calendars; the source says open
    frame.loc[frame["cal_date"] == national_day, "is_open"] = True
    later = pd.DataFrame({"cal_date": [CLOSURE_2027], "is_open": [False]})
    sync_reference_table(schema.trade_calendar, pd.concat([frame, later]), warehouse)
    check = evaluate_calendar_agreement(warehouse, days[0])
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert str(national_day) in str(check.metadata["disagreements"].value)
    assert str(CLOSURE_2027) in check.metadata["closures_not_loaded"].value
    previous = trading_calendar.published_closures()
    try:
        trading_calendar.use_published_closures([CLOSURE_2027])
        assert not trading_calendar.is_trading_day(CLOSURE_2027)
        loaded = evaluate_calendar_agreement(warehouse, days[0])
        assert (
            "closures_not_loaded" not in loaded.metadata
            or not loaded.metadata["closures_not_loaded"].value
        )
    finally:
        trading_calendar.use_published_closures(previous)


def test_a_warehouse_at_0001_upgrades_to_the_suspension_table(tmp_path) -> None:
    from alembic import command
    from alembic.config import Config

    from stocksync_dagster.core.warehouse import engine as warehouse_engine

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.create_engine(url)
    with old.begin() as connection:
        later = (  # added by 0002, 0003 and 0004
            "suspension",
            "source_disagreement",
            "daily_status",
            "daily_bar_revision",
            "adj_factor_revision",
        )
        tables = [t for t in schema.metadata.sorted_tables if t.name not in later]
        schema.metadata.create_all(connection, tables=tables)
        for table in ("daily_bar", "adj_factor"):  # `source` is added by 0003
            connection.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN source")
        config = Config()
        config.set_main_option("script_location", str(warehouse_engine._MIGRATIONS))
        config.attributes["connection"] = connection
        command.stamp(config, "0001")
    old.dispose()
    assert "suspension" not in sa.inspect(sa.create_engine(url)).get_table_names()
    warehouse = Warehouse(url)
    warehouse.ensure_schema()
    assert warehouse.schema_version() == "0004_history"
    columns = {c["name"] for c in sa.inspect(warehouse.engine).get_columns("suspension")}
    assert columns == {"code", "trade_date", "source"}
