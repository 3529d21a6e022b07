"""Checks in real runs of the project's jobs: one step per asset, blocking, skipped when the
asset failed, and every job's default Launchpad config valid."""

import asyncio
import json
import re
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.loader import LoadingContextForTest
from dagster._core.snap.snap_to_yaml import default_values_from_type_snap
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionResolvedStatus

from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.defs.market.jobs import range_tags
from stocksync_dagster.resources import DemoSourceResource
from tests.orchestration import DEMO_STOCKS, DownSourceResource, build_defs, recent_trading_days

MARKET_CHECK_STEPS = {"daily_bars_checks", "adj_factor_checks", "second_source_checks"}
JOBS = ("nightly_sync", "market_sync", "reference_sync", "asset_health_checks")


def steps_started(result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]


def run_job(defs: dg.Definitions, name: str, days: list, **kwargs) -> dg.ExecuteInProcessResult:
    tags = range_tags(days[0].isoformat(), days[-1].isoformat()) if days else {}
    return defs.resolve_job_def(name).execute_in_process(
        instance=kwargs.pop("instance"), tags=tags, raise_on_error=False, **kwargs
    )


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def test_range_run_evaluates_each_assets_checks_in_one_step(
    sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    defs = build_defs(sqlite_url)
    assert run_job(defs, "reference_sync", [], instance=instance).success
    days = recent_trading_days(3)
    result = run_job(defs, "market_sync", days, instance=instance)
    assert result.success
    steps = steps_started(result)
    assert sorted(steps) == [
        "adj_factor_checks",
        "daily_bars_checks",
        "market_data",
        "second_source_checks",  # both assets' cross-source checks: one sample, one step
    ]
    evaluations = result.get_asset_check_evaluations()
    by_asset = {
        asset: sorted(e.check_name for e in evaluations if e.asset_key.to_user_string() == asset)
        for asset in ("daily_bars", "adj_factor")
    }
    assert by_asset == {
        "daily_bars": [
            "agrees_with_second_source",
            "bars_within_listing_dates",
            "complete_per_day",
            "fresh",
            "no_missing_trading_days",
            "no_old_history_revised",
            "no_open_sync_failures",
            "ohlc_sanity",
        ],
        "adj_factor": [
            "agrees_with_second_source",
            "factor_consistency",
            "factor_coverage",
            "fresh",
            "no_missing_trading_days",
            "no_old_history_revised",
            "no_open_sync_failures",
        ],
    }
    assert {e.check_name for e in evaluations if not e.passed} == set()
    # The checks scanned the run's days, not all history.
    scopes = {e.metadata["scope"].value for e in evaluations if "scope" in e.metadata}
    assert f"{days[0]}..{days[-1]}" in scopes


def test_one_selected_check_evaluates_only_that_check(
    sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    defs = build_defs(sqlite_url)
    run_job(defs, "reference_sync", [], instance=instance)
    key = dg.AssetCheckKey(dg.AssetKey("daily_bars"), "no_open_sync_failures")
    result = dg.materialize(
        [*(defs.assets or []), *(defs.asset_checks or [])],
        selection=dg.AssetSelection.checks(key),
        instance=instance,
        resources=defs.resources,
    )
    assert [(e.asset_check_key, e.passed) for e in result.get_asset_check_evaluations()] == [
        (key, True)
    ]


def test_failing_blocking_check_fails_its_step_after_evaluating_all_checks(
    sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    defs = build_defs(sqlite_url)
    run_job(defs, "reference_sync", [], instance=instance)
    days = recent_trading_days(2)
    assert run_job(defs, "market_sync", days, instance=instance).success
    bar = schema.daily_bar.c
    warehouse = Warehouse(sqlite_url)
    with warehouse.begin() as connection:
        code = connection.execute(
            sa.select(bar.code).where(bar.trade_date == days[-1]).limit(1)
        ).scalar_one()
        connection.execute(
            sa.update(schema.daily_bar)
            .where(bar.code == code, bar.trade_date == days[-1])
            .values(close=bar.high * 10)
        )
    warehouse.dispose()
    result = run_job(defs, "asset_health_checks", [], instance=instance)
    assert not result.success
    failed = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failed] == ["daily_bars_checks"]
    assert "DagsterAssetCheckFailedError" in str(failed[0].step_failure_data.error.cls_name)
    evaluations = {
        e.asset_check_key.to_user_string(): e for e in result.get_asset_check_evaluations()
    }
    sanity = evaluations["daily_bars:ohlc_sanity"]
    assert not sanity.passed and sanity.metadata["code_list"].value == code
    # The other checks of the step were still evaluated; the checks downstream of daily_bars
    # (adj_factor's factor checks read daily_bar) were blocked.
    # (the cross-source check is its own step, reading only the warehouse and the sources)
    own_step = [k for k in evaluations if k.startswith("daily_bars:") and "second_source" not in k]
    assert len(own_step) == 7
    assert "adj_factor_checks" not in steps_started(result)


class BrokenMasterSource(DemoSource):
    """The demo market with one malformed code in its security master."""

    def stock_basic(self) -> pd.DataFrame:
        frame = super().stock_basic()
        broken = frame.iloc[[0]].assign(code="60000.SH")
        return pd.concat([frame, broken], ignore_index=True)


class BrokenMasterResource(DemoSourceResource):
    def make_source(self) -> DemoSource:
        return BrokenMasterSource(n_stocks=self.stocks, seed=self.seed)


def test_failing_stock_basic_integrity_blocks_the_market_assets(
    sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    defs = build_defs(sqlite_url, BrokenMasterResource(stocks=DEMO_STOCKS))
    day = recent_trading_days(1)[0].isoformat()
    result = defs.resolve_job_def("nightly_sync").execute_in_process(
        instance=instance, partition_key=day, raise_on_error=False
    )
    assert not result.success
    failed = [e.step_key for e in result.all_events if e.is_step_failure]
    assert failed == ["stock_basic_stock_basic_integrity"]
    assert "market_data" not in steps_started(result)
    assert not instance.get_materialized_partitions(dg.AssetKey("daily_bars"))


def _latest_statuses(
    instance: dg.DagsterInstance, defs: dg.Definitions
) -> dict[str, AssetCheckExecutionResolvedStatus]:
    keys = [
        k
        for k in defs.resolve_asset_graph().asset_check_keys
        if k.asset_key.to_user_string() in ("daily_bars", "adj_factor")
    ]
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    # The status the UI shows: GraphQL's AssetCheckExecution.status calls resolve_status.
    context = LoadingContextForTest(instance)
    return {
        key.to_user_string(): asyncio.run(record.resolve_status(context))
        for key, record in records.items()
    }


def test_failed_asset_step_never_records_a_failed_check(
    sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    defs = build_defs(sqlite_url, DownSourceResource())
    run_job(build_defs(sqlite_url), "reference_sync", [], instance=instance)
    result = run_job(defs, "market_sync", recent_trading_days(2), instance=instance)
    assert not result.success
    assert result.get_asset_check_evaluations() == []
    assert not MARKET_CHECK_STEPS & set(steps_started(result))
    statuses = _latest_statuses(instance, defs)
    assert len(statuses) == 15
    assert AssetCheckExecutionResolvedStatus.FAILED not in statuses.values()


@pytest.mark.xfail(
    strict=True,
    reason="Dagster 1.13 resolves a check planned in a FAILED run as EXECUTION_FAILED "
    "(AssetCheckExecutionRecord.resolve_status); see docs/checks.md",
)
def test_failed_asset_step_leaves_checks_not_executed(
    sqlite_url: str, instance: dg.DagsterInstance
) -> None:
    defs = build_defs(sqlite_url, DownSourceResource())
    run_job(defs, "market_sync", recent_trading_days(2), instance=instance)
    statuses = _latest_statuses(instance, defs)
    assert len(statuses) == 15
    assert AssetCheckExecutionResolvedStatus.EXECUTION_FAILED not in statuses.values()


# --- default Launchpad config -------------------------------------------------------------

_YAML12_NON_STRING = re.compile(
    r"^(~|null|Null|NULL|true|True|TRUE|false|False|FALSE|[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.nan|\.NaN|\.NAN)$"
)


def scaffold_yaml(value: object, indent: int = 0) -> str:
    """YAML as the Launchpad's scaffold writes it (YAML 1.2: a string is quoted only where 1.2
    would read it as another type), so a default that YAML 1.1 reads differently shows up."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for key, item in value.items():
            text = scaffold_yaml(item, indent + 1)
            nested = isinstance(item, dict | list) and item
            lines.append(f"{pad}{key}:" + (f"\n{text}" if nested else f" {text}"))
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        return "\n".join(f"{pad}- {scaffold_yaml(item, indent + 1).strip()}" for item in value)
    if isinstance(value, str):
        return json.dumps(value) if _YAML12_NON_STRING.match(value) or not value else value
    return json.dumps(value)


def launchpad_default_config(job: dg.JobDefinition) -> dict:
    """The job's default run config, scaffolded to YAML and read back as the webserver does."""
    snapshot = job.get_job_snapshot()
    schema_snapshot = snapshot.config_schema_snapshot
    root = schema_snapshot.get_config_snap(snapshot.mode_def_snaps[0].root_config_key)
    defaults = default_values_from_type_snap(root, schema_snapshot)
    return yaml.safe_load(scaffold_yaml(defaults)) or {}


def test_the_scaffold_reproduces_the_yaml_trap() -> None:
    assert yaml.safe_load(scaffold_yaml({"deadline": "20:00"})) == {"deadline": 1200}
    assert yaml.safe_load(scaffold_yaml({"a": "true", "b": "x"})) == {"a": "true", "b": "x"}


@pytest.mark.parametrize("job_name", [*JOBS, "__ASSET_JOB"])
def test_every_jobs_default_launchpad_config_validates(job_name: str, sqlite_url: str) -> None:
    defs = build_defs(sqlite_url)
    job = (
        defs.resolve_implicit_global_asset_job_def()
        if job_name == "__ASSET_JOB"
        else defs.resolve_job_def(job_name)
    )
    config = launchpad_default_config(job)
    assert dg.validate_run_config(job, config)
    if job_name in ("market_sync", "asset_health_checks", "__ASSET_JOB"):
        checks = config["ops"]["daily_bars_checks"]["config"]
        assert checks == {
            "deadline_hour": 20,
            "deadline_minute": 0,
            "full_history": False,
            "min_share": 0.99,
        }
