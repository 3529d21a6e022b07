"""Asset checks: each passes on a clean demo load and fails, naming days and codes, on damage.

Every test runs on SQLite and on the real PostgreSQL (`warehouse_url`).
"""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from stocksync_dagster.checks.calendar_gaps import evaluate_missing_days
from stocksync_dagster.checks.completeness import evaluate_completeness
from stocksync_dagster.checks.factors import evaluate_factor_consistency, evaluate_factor_coverage
from stocksync_dagster.checks.failures import evaluate_open_failures
from stocksync_dagster.checks.freshness import evaluate_freshness, expected_day
from stocksync_dagster.checks.sanity import evaluate_ohlc_sanity
from stocksync_dagster.checks.scope import ALL_HISTORY, Scope
from stocksync_dagster.checks.stock_basic import (
    evaluate_bars_within_listing,
    evaluate_stock_basic_integrity,
)
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.sources.demo_market import MarketEvent
from stocksync_dagster.core.sync import (
    ADJ_FACTOR,
    DAILY_BARS,
    sync_market_range,
    sync_reference_table,
)
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.defs.market.jobs import range_tags
from tests.conftest import DEMO_END, DEMO_START
from tests.orchestration import build_defs, recent_trading_days

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
DAY = dt.date(2025, 8, 12)
RUN = Scope(DEMO_START, DEMO_END)
CALENDAR_START = dt.date(2025, 6, 2)
KEYS = [d.isoformat() for d in trading_calendar.trading_days(DEMO_START, DEMO_END)]
bar, factor = schema.daily_bar.c, schema.adj_factor.c


@pytest.fixture
def loaded(warehouse: Warehouse) -> Warehouse:
    """The demo market's DEMO_START..DEMO_END written through the project's own sync."""
    source = DemoSource(as_of=DEMO_END)
    sync_reference_table(
        schema.trade_calendar,
        source.trade_calendar(CALENDAR_START, dt.date(2025, 12, 31)),
        warehouse,
    )
    sync_reference_table(schema.stock_basic, source.stock_basic(), warehouse)
    sync_market_range(DAILY_BARS, source, warehouse, DEMO_START, DEMO_END)
    sync_market_range(ADJ_FACTOR, source, warehouse, DEMO_START, DEMO_END)
    return warehouse


def run(warehouse: Warehouse, *statements: sa.Executable) -> None:
    with warehouse.begin() as connection:
        for statement in statements:
            connection.execute(statement)


def codes_on(warehouse: Warehouse, day: dt.date) -> list[str]:
    with warehouse.connect() as connection:
        rows = connection.execute(
            sa.select(bar.code).where(bar.trade_date == day).order_by(bar.code)
        )
        return [code for (code,) in rows]


def event(kind: str) -> MarketEvent:
    """The first event of `kind` after DEMO_START (so the stock has an earlier day loaded)."""
    events = DemoSource().market.events(DEMO_START, DEMO_END)
    return next(e for e in events if e.kind == kind and e.day > DEMO_START)


def meta(result: dg.AssetCheckResult, key: str) -> object:
    return result.metadata[key].value


def shanghai(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=trading_calendar.SHANGHAI)


def test_every_check_passes_on_a_clean_demo_load(loaded: Warehouse) -> None:
    results = {
        "missing_days": evaluate_missing_days(loaded, schema.daily_bar, DEMO_START, KEYS),
        "missing_factor_days": evaluate_missing_days(loaded, schema.adj_factor, DEMO_START, KEYS),
        "completeness": evaluate_completeness(loaded, RUN),
        "completeness_all": evaluate_completeness(loaded, ALL_HISTORY),
        "failures": evaluate_open_failures(loaded, "daily_bars"),
        "sanity": evaluate_ohlc_sanity(loaded, RUN),
        "coverage": evaluate_factor_coverage(loaded, ALL_HISTORY),
        "consistency": evaluate_factor_consistency(loaded, RUN),
        "master": evaluate_stock_basic_integrity(loaded),
        "listing": evaluate_bars_within_listing(loaded),
        "fresh": evaluate_freshness(loaded, schema.daily_bar, shanghai(DEMO_END, 21)),
    }
    assert {name: r.description for name, r in results.items() if not r.passed} == {}
    assert meta(results["missing_days"], "open_days_checked") == 20
    assert meta(results["completeness"], "days_checked") == 20


def test_missing_day_fails_naming_it(loaded: Warehouse) -> None:
    run(loaded, sa.delete(schema.daily_bar).where(bar.trade_date == DAY))
    result = evaluate_missing_days(loaded, schema.daily_bar, DEMO_START, KEYS)
    assert not result.passed and result.severity == ERROR
    assert meta(result, "missing_day_list") == "2025-08-12"
    assert "2025-08-12" in (result.description or "")
    assert "stocksync backfill 2025-08-12 2025-08-12" in str(meta(result, "rerun"))
    assert evaluate_missing_days(loaded, schema.adj_factor, DEMO_START, KEYS).passed


def test_deleted_latest_day_is_missing_because_dagster_materialized_it(loaded: Warehouse) -> None:
    run(loaded, sa.delete(schema.daily_bar).where(bar.trade_date == DEMO_END))
    assert evaluate_missing_days(loaded, schema.daily_bar, DEMO_START, KEYS[:-1]).passed
    result = evaluate_missing_days(loaded, schema.daily_bar, DEMO_START, KEYS)
    assert meta(result, "missing_day_list") == DEMO_END.isoformat()


def test_history_not_backfilled_fails_only_with_full_history(loaded: Warehouse) -> None:
    early = dt.date(2025, 7, 1)
    relaxed = evaluate_missing_days(loaded, schema.daily_bar, early, KEYS)
    assert relaxed.passed and meta(relaxed, "not_backfilled_days") == 24
    strict = evaluate_missing_days(loaded, schema.daily_bar, early, KEYS, full_history=True)
    assert not strict.passed and meta(strict, "missing_days") == 24
    assert str(meta(strict, "missing_day_list")).startswith("2025-07-01, 2025-07-02")


def test_completeness_fails_on_a_day_missing_stocks_and_lists_them(loaded: Warehouse) -> None:
    removed = codes_on(loaded, DAY)[:40]
    run(loaded, sa.delete(schema.daily_bar).where(bar.trade_date == DAY, bar.code.in_(removed)))
    result = evaluate_completeness(loaded, RUN)
    assert not result.passed and result.severity == ERROR
    assert meta(result, "failing_day_list") == "2025-08-12"
    table = str(meta(result, "missing_codes"))
    assert all(code in table for code in removed[:10])
    lenient = evaluate_completeness(loaded, RUN, min_share=0.5)
    assert not lenient.passed and lenient.severity == WARN  # above the threshold, still short
    assert evaluate_completeness(loaded, Scope(DEMO_START, dt.date(2025, 8, 11))).passed


def test_open_failures_warn_while_retrying_and_error_when_abandoned(loaded: Warehouse) -> None:
    now = dt.datetime.now(tz=dt.UTC)

    def failure(code: str, status: str) -> dict[str, object]:
        return {
            "asset": "daily_bars",
            "trade_date": DAY,
            "code": code,
            "error_class": "Timeout",
            "error": "read timed out",
            "retry_count": 2,
            "status": status,
            "first_attempt_at": now,
            "last_attempt_at": now,
        }

    run(loaded, sa.insert(schema.sync_failure).values(failure("600000.SH", "retrying")))
    retrying = evaluate_open_failures(loaded, "daily_bars")
    assert not retrying.passed and retrying.severity == WARN
    assert meta(retrying, "code_list") == "600000.SH" and meta(retrying, "day_list") == "2025-08-12"
    assert evaluate_open_failures(loaded, "adj_factor").passed

    run(loaded, sa.insert(schema.sync_failure).values(failure("000001.SZ", "abandoned")))
    abandoned = evaluate_open_failures(loaded, "daily_bars")
    assert not abandoned.passed and abandoned.severity == ERROR
    assert "2025-08-12 000001.SZ" in (abandoned.description or "")
    assert meta(abandoned, "abandoned_rows") == 1 and meta(abandoned, "retrying_rows") == 1


def test_corrupt_price_fails_ohlc_sanity(loaded: Warehouse) -> None:
    code = codes_on(loaded, DAY)[7]
    run(
        loaded,
        sa.update(schema.daily_bar)
        .where(bar.code == code, bar.trade_date == DAY)
        .values(close=bar.high * 10),
    )
    result = evaluate_ohlc_sanity(loaded, RUN)
    assert not result.passed and result.severity == ERROR
    assert meta(result, "code_list") == code and meta(result, "day_list") == "2025-08-12"
    assert "high below open/close/low" in (result.description or "")
    assert evaluate_ohlc_sanity(loaded, Scope(DEMO_START, dt.date(2025, 8, 11))).passed


def test_move_beyond_the_board_limit_warns(loaded: Warehouse) -> None:
    with loaded.connect() as connection:
        st_code = (
            connection.execute(
                sa.select(schema.stock_basic.c.code).where(
                    schema.stock_basic.c.is_st.is_(True),
                    schema.stock_basic.c.code.in_(codes_on(loaded, DAY)),
                    schema.stock_basic.c.board == "main",
                )
            )
            .scalars()
            .first()
        )
    assert st_code is not None
    # +12%: beyond the 10% main-board ST limit in force on DAY (since 2025-07-07); OHLC kept.
    up = bar.pre_close * 1.12
    run(
        loaded,
        sa.update(schema.daily_bar)
        .where(bar.code == st_code, bar.trade_date == DAY)
        .values(close=up, high=up * 1.001, pct_chg=12.0),
    )
    result = evaluate_ohlc_sanity(loaded, RUN)
    assert not result.passed and result.severity == WARN
    assert meta(result, "code_list") == st_code
    assert "move beyond the price limit" in (result.description or "")


def test_removed_or_negative_factor_fails_coverage(loaded: Warehouse) -> None:
    first, second = codes_on(loaded, DAY)[3:5]
    run(
        loaded,
        sa.delete(schema.adj_factor).where(factor.code == first, factor.trade_date == DAY),
        sa.update(schema.adj_factor)
        .where(factor.code == second, factor.trade_date == DEMO_END)
        .values(adj_factor=-1.0),
    )
    result = evaluate_factor_coverage(loaded, RUN)
    assert not result.passed and result.severity == ERROR
    assert meta(result, "bars_without_factor") == 1 and meta(result, "factors_not_positive") == 1
    assert meta(result, "code_list") == ", ".join(sorted([first, second]))
    assert meta(result, "day_list") == f"2025-08-12, {DEMO_END}"


def test_factor_jump_without_ex_right_is_an_error(loaded: Warehouse) -> None:
    code = codes_on(loaded, DAY)[11]
    run(
        loaded,
        sa.update(schema.adj_factor)
        .where(factor.code == code, factor.trade_date >= DAY)
        .values(adj_factor=factor.adj_factor * 1.5),
    )
    result = evaluate_factor_consistency(loaded, RUN)
    assert not result.passed and result.severity == ERROR
    assert meta(result, "code_list") == code and meta(result, "day_list") == "2025-08-12"


def test_ex_right_day_whose_factor_lags_warns(loaded: Warehouse) -> None:
    ex = event("ex_dividend")
    with loaded.connect() as connection:
        previous = connection.execute(
            sa.select(factor.adj_factor)
            .where(factor.code == ex.code, factor.trade_date < ex.day)
            .order_by(factor.trade_date.desc())
            .limit(1)
        ).scalar_one()
    run(
        loaded,
        sa.update(schema.adj_factor)
        .where(factor.code == ex.code, factor.trade_date >= ex.day)
        .values(adj_factor=previous),
    )
    result = evaluate_factor_consistency(loaded, RUN)
    assert not result.passed and result.severity == WARN
    assert meta(result, "code_list") == ex.code and meta(result, "day_list") == str(ex.day)


def test_bar_before_list_date_fails(loaded: Warehouse) -> None:
    ipo = event("ipo")
    before = trading_calendar.previous_trading_day(ipo.day)
    run(
        loaded,
        sa.insert(schema.daily_bar).values(
            code=ipo.code,
            trade_date=before,
            open=10.0,
            high=10.0,
            low=10.0,
            close=10.0,
            pre_close=10.0,
            volume=100,
            amount=1000.0,
            pct_chg=0.0,
        ),
    )
    result = evaluate_bars_within_listing(loaded)
    assert not result.passed and result.severity == ERROR
    assert meta(result, "code_list") == ipo.code
    assert f"before list_date {ipo.day}" in (result.description or "")


def test_bars_of_an_unknown_code_warn(loaded: Warehouse) -> None:
    run(
        loaded,
        sa.delete(schema.stock_basic).where(schema.stock_basic.c.code == codes_on(loaded, DAY)[0]),
    )
    result = evaluate_bars_within_listing(loaded)
    assert not result.passed and result.severity == WARN


def test_broken_security_master_fails_integrity(loaded: Warehouse) -> None:
    def stock(
        code: str, exchange: str, board: str, listed: dt.date, delisted: dt.date | None
    ) -> dict:
        return {
            "code": code,
            "name": "x",
            "exchange": exchange,
            "board": board,
            "list_date": listed,
            "delist_date": delisted,
            "status": "listed",
            "is_st": False,
        }

    run(
        loaded,
        sa.insert(schema.stock_basic).values(
            [
                stock("60000.SH", "SH", "main", DAY, None),
                stock("688999.SH", "SZ", "star", DAY, None),
                stock("300999.SZ", "SZ", "chinext", DAY, DAY - dt.timedelta(days=1)),
            ]
        ),
    )
    result = evaluate_stock_basic_integrity(loaded)
    assert not result.passed and result.severity == ERROR
    assert meta(result, "code_list") == "300999.SZ, 60000.SH, 688999.SH"
    problems = str(meta(result, "problems"))
    assert "not in 600000.SH form" in problems and "exchange SZ" in problems
    assert "after delist_date" in problems


def test_freshness_by_deadline(loaded: Warehouse) -> None:
    assert expected_day(shanghai(DEMO_END, 19), dt.time(20)) == dt.date(2025, 8, 28)
    assert evaluate_freshness(loaded, schema.daily_bar, shanghai(DEMO_END, 23)).passed
    monday = dt.date(2025, 9, 1)
    one_behind = evaluate_freshness(loaded, schema.daily_bar, shanghai(monday, 21))
    assert not one_behind.passed and one_behind.severity == WARN
    assert meta(one_behind, "missing_day_list") == "2025-09-01"
    assert evaluate_freshness(loaded, schema.daily_bar, shanghai(monday, 19)).passed
    late = evaluate_freshness(loaded, schema.adj_factor, shanghai(dt.date(2025, 9, 4), 21))
    assert not late.passed and late.severity == ERROR
    assert meta(late, "trading_days_behind") == 4


def test_checks_run_with_the_assets_and_heal_after_a_rerun(warehouse_url: str) -> None:
    """The Done scenario: demo range green; a deleted day turns the check red; a rerun heals it."""
    days = recent_trading_days(8)
    defs = build_defs(warehouse_url)
    instance = dg.DagsterInstance.ephemeral()
    runs = [
        defs.resolve_job_def("reference_sync").execute_in_process(instance=instance),
        defs.resolve_job_def("market_sync").execute_in_process(
            instance=instance, tags=range_tags(str(days[0]), str(days[-1]))
        ),
    ]
    evaluations = [e for r in runs for e in r.get_asset_check_evaluations()]
    assert {e.check_name for e in evaluations if not e.passed} == set()
    assert len(evaluations) == len(defs.resolve_asset_graph().asset_check_keys) == 17

    hole = days[2]
    run(Warehouse(warehouse_url), sa.delete(schema.daily_bar).where(bar.trade_date == hole))
    check = dg.AssetCheckKey(dg.AssetKey("daily_bars"), "no_missing_trading_days")
    red = dg.materialize(
        [*(defs.assets or []), *(defs.asset_checks or [])],
        selection=dg.AssetSelection.checks(check),
        instance=instance,
        resources=defs.resources,
        raise_on_error=False,
    ).get_asset_check_evaluations()
    assert [(e.passed, e.metadata["missing_day_list"].value) for e in red] == [(False, str(hole))]

    rerun = defs.resolve_job_def("market_sync").execute_in_process(
        instance=instance, partition_key=hole.isoformat()
    )
    green = {
        e.asset_check_key.to_user_string(): e.passed for e in rerun.get_asset_check_evaluations()
    }
    assert green["daily_bars:no_missing_trading_days"] and all(green.values())
