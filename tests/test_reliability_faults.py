"""Source faults at random: a long range run and a 50-run soak end with the exact market.

About 10% of the calls to the fake servers fail at random (dropped connection, hang, half a
reply then FIN, server error, HTTP 500, rate-limit refusal). After the run, every row in the
warehouse equals the market and every missing one is an open `sync_failure` row; the project's
repair sensor and gap automation (evaluated here as the daemon would, their requests run as
they would be launched) then heal it to the exact market, with no failure left open.
"""

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.warehouse.schema import WHOLE_DAY
from stocksync_dagster.definitions import defs as project_defs
from stocksync_dagster.defs.market.jobs import range_tags as key_range_tags
from stocksync_dagster.defs.market.partitions import trading_days
from stocksync_dagster.resources import (
    BaostockSourceResource,
    TushareSourceResource,
    WarehouseResource,
)
from tests.fakes import baostock_server, tushare_server
from tests.fakes.baostock_server import FakeBaostockServer
from tests.fakes.tushare_server import FakeTushareServer
from tests.orchestration import build_defs
from tests.support import closing_warehouse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ORIGIN = dt.date(2025, 1, 2)
AS_OF = dt.date(2025, 7, 31)
TOKENS = ("tok-faults-a1b2c3d4e5", "tok-faults-f6a7b8c9d0")
FAULT_RATE = 0.10
MAX_ATTEMPTS = 2  # per call, inside the source
STEP_RETRIES = 2  # per step, Dagster's RetryPolicy (STOCKSYNC_SOURCE_RETRIES in conftest.py)
ASSETS = [a for a in project_defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
NOW = dt.datetime.now(dt.UTC)
TABLES = {"daily_bars": "daily_bar", "adj_factor": "adj_factor"}


@dataclass
class RandomBaostockFault(baostock_server.Fault):
    """Each data call fails with this kind with probability `rate`."""

    rate: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    hits: int = 0

    def matches(self, method: str, code: str | None, page: int) -> bool:
        if method in ("login", "logout") or not super().matches(method, code, page):
            return False
        hit = self.rng.random() < self.rate
        self.hits += hit
        return hit


@dataclass
class RandomTushareFault(tushare_server.Fault):
    rate: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    hits: int = 0

    def matches(self, api: str, params: Any) -> bool:
        hit = super().matches(api, params) and self.rng.random() < self.rate
        self.hits += hit
        return hit


class FlakyTushareServer(FakeTushareServer):
    """Also refuses a share of calls for rate, with the real message."""

    rate_limited_share = 0.0
    rate_limited_hits = 0
    rng = random.Random(0)

    def _admit(self, token: str, api: str, params: Any) -> tuple[str, str | None]:
        with self._lock:
            refuse = self.rng.random() < self.rate_limited_share
            self.rate_limited_hits += refuse
        if refuse:
            return "rate_limited", None
        return super()._admit(token, api, params)


def add_random_faults(server: FakeBaostockServer | FlakyTushareServer, seed: int) -> None:
    """~FAULT_RATE of the calls fail, spread over the fault kinds each protocol has."""
    rng = random.Random(seed)
    with server._lock:
        server._faults.clear()
        if isinstance(server, FakeBaostockServer):
            kinds = {"drop": 0.035, "error": 0.035, "hang": 0.015, "fin": 0.015}
            for kind, rate in kinds.items():
                server._faults.append(RandomBaostockFault(kind, times=None, rate=rate, rng=rng))
        else:
            server.rng, server.rate_limited_share, server.rate_limited_hits = rng, 0.02, 0
            kinds = {"drop": 0.025, "http500": 0.03, "hang": 0.01, "error": 0.015}
            for kind, rate in kinds.items():
                server._faults.append(RandomTushareFault(kind, times=None, rate=rate, rng=rng))


@pytest.fixture(scope="module")
def market() -> DemoMarket:
    return DemoMarket(40, seed=7, origin=ORIGIN)


@pytest.fixture(scope="module")
def bao(market: DemoMarket) -> Iterator[FakeBaostockServer]:
    with FakeBaostockServer(market, as_of=AS_OF, hang_seconds=5) as server:
        yield server


@pytest.fixture(scope="module")
def tus(market: DemoMarket) -> Iterator[FlakyTushareServer]:
    with FlakyTushareServer(market, valid_tokens=TOKENS, as_of=AS_OF, hang_seconds=5) as server:
        yield server


def fault_count(server: FakeBaostockServer | FlakyTushareServer) -> int:
    """Calls that really failed at random so far."""
    with server._lock:
        hits = sum(getattr(f, "hits", 0) for f in server._faults)
    return hits + getattr(server, "rate_limited_hits", 0)


def source_for(server: FakeBaostockServer | FlakyTushareServer) -> dg.ConfigurableResource:
    if isinstance(server, FakeBaostockServer):
        return BaostockSourceResource(
            server=server.address,
            workers=3,
            call_timeout_seconds=1.0,
            max_attempts=MAX_ATTEMPTS,
            backoff_seconds=0.05,
        )
    return TushareSourceResource(
        tokens=",".join(TOKENS),
        api_url=server.url,
        call_timeout_seconds=1.0,
        max_attempts=MAX_ATTEMPTS,
        backoff_seconds=0.05,
        rate_limit_pause_seconds=0.1,  # a short pause after a rate-limit refusal (test speed)
    )


def run(
    instance: dg.DagsterInstance,
    source: dg.ConfigurableResource,
    url: str,
    tags: dict[str, str],
    selection: Any = None,
    run_config: Any = None,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ASSETS,
        instance=instance,
        selection=selection,
        tags=tags,
        run_config=run_config or {},
        resources={"source": source, "warehouse": WarehouseResource(url=url)},
        raise_on_error=False,
    )


def range_tags(start: dt.date, end: dt.date) -> dict[str, str]:
    return key_range_tags(start.isoformat(), end.isoformat())


def stored(url: str, table: str) -> pd.DataFrame:
    with closing_warehouse(url) as connection:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {table}"), connection)
    frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame


def open_failures(url: str) -> pd.DataFrame:
    with closing_warehouse(url) as connection:
        frame = pd.read_sql(
            sa.text("SELECT * FROM sync_failure WHERE status IN ('pending', 'retrying')"),
            connection,
        )
    frame["trade_date"] = pd.to_datetime(frame["trade_date"]).dt.date
    return frame


def expected(market: DemoMarket, asset: str, start: dt.date, end: dt.date) -> pd.DataFrame:
    return market.bars(start, end) if asset == "daily_bars" else market.adj_factors(start, end)


def gaps(url: str, market: DemoMarket, start: dt.date, end: dt.date) -> dict[str, pd.DataFrame]:
    """Per asset, the market rows missing from the warehouse; asserts stored rows are right."""
    missing = {}
    for asset, table in TABLES.items():
        want = expected(market, asset, start, end)
        have = stored(url, table)
        assert not have.duplicated(["code", "trade_date"]).any()
        merged = want.merge(have, on=["code", "trade_date"], how="left", suffixes=("", "_db"))
        value_columns = [c for c in want.columns if c not in ("code", "trade_date")]
        present = merged[f"{value_columns[0]}_db"].notna()
        for column in value_columns:  # every stored row is the market's row
            pd.testing.assert_series_equal(
                merged.loc[present, f"{column}_db"].astype(float).reset_index(drop=True),
                merged.loc[present, column].astype(float).reset_index(drop=True),
                check_names=False,
            )
        assert len(have) == int(present.sum()), f"{table} has rows the market does not"
        missing[asset] = merged.loc[~present, ["code", "trade_date"]]
    return missing


def assert_gaps_are_recorded(url: str, missing: dict[str, pd.DataFrame]) -> None:
    recorded = open_failures(url)
    for asset, rows in missing.items():
        mine = recorded[recorded["asset"] == asset]
        stocks = set(zip(mine["code"], mine["trade_date"], strict=True))
        days = set(mine.loc[mine["code"] == WHOLE_DAY, "trade_date"])
        unrecorded = [
            (c, d)
            for c, d in zip(rows["code"], rows["trade_date"], strict=True)
            if (c, d) not in stocks and d not in days
        ]
        assert not unrecorded, f"{asset}: missing without a sync_failure row: {unrecorded[:5]}"


def gap_run_requests(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    start: dt.date,
    end: dt.date,
    at: dt.datetime,
    cursor: Any,
) -> tuple[list[dg.RunRequest], Any]:
    """What gap automation requests inside [start, end], as single-run range requests.

    The daemon would launch one backfill whose single-run policy makes each contiguous range
    of keys one run; history outside the window is not this test's subject.
    """
    result = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, evaluation_time=at, cursor=cursor
    )
    keys = [
        k for k in trading_days.get_partition_keys() if start.isoformat() <= k <= end.isoformat()
    ]
    requests = []
    for asset in TABLES:
        wanted = result.get_requested_partitions(dg.AssetKey(asset))
        ranges: list[list[str]] = []
        for i, key in enumerate(keys):
            if key not in wanted:
                continue
            if ranges and keys[i - 1] == ranges[-1][-1]:
                ranges[-1].append(key)
            else:
                ranges.append([key])
        requests += [
            dg.RunRequest(asset_selection=[dg.AssetKey(asset)], tags=key_range_tags(r[0], r[-1]))
            for r in ranges
        ]
    return requests, result.cursor


def heal(
    instance: dg.DagsterInstance,
    source: dg.ConfigurableResource,
    url: str,
    market: DemoMarket,
    start: dt.date,
    end: dt.date,
    rounds: int = 8,
) -> int:
    """Evaluate the repair sensor and gap automation, run what they request, until healed."""
    defs = build_defs(url, source)  # type: ignore[arg-type]
    repair = defs.resolve_sensor_def("repair_sensor")
    cursor = None
    for done in range(rounds):
        missing = gaps(url, market, start, end)
        if all(m.empty for m in missing.values()) and open_failures(url).empty:
            return done
        assert_gaps_are_recorded(url, missing)
        context = dg.build_sensor_context(
            instance=instance, resources={"warehouse": WarehouseResource(url=url)}
        )
        requests = list(repair.evaluate_tick(context).run_requests)
        # An hour apart: what failed in the last round is requested again.
        gap, cursor = gap_run_requests(
            defs, instance, start, end, NOW + dt.timedelta(hours=done), cursor
        )
        requests += gap
        assert requests, "gaps remain but nothing asked for a run"
        for request in requests:
            run(instance, source, url, request.tags, request.asset_selection, request.run_config)
    raise AssertionError(f"not healed after {rounds} rounds of repairs")


@pytest.mark.parametrize(
    ("source_name", "warehouse_url"),
    [("baostock", "sqlite"), pytest.param("tushare", "postgres", marks=pytest.mark.postgres)],
    indirect=["warehouse_url"],
)
def test_long_range_run_with_random_faults_ends_exact_or_recorded_then_healed(
    source_name: str,
    warehouse_url: str,
    market: DemoMarket,
    bao: FakeBaostockServer,
    tus: FlakyTushareServer,
) -> None:
    start, end = dt.date(2025, 3, 3), dt.date(2025, 5, 30)  # 60 trading days
    server = bao if source_name == "baostock" else tus
    add_random_faults(server, seed=len(source_name))
    # Beyond the random faults, one stock (baostock) or one day (tushare) fails every attempt
    # of this run, so the recorded-then-repaired path is always taken.
    if isinstance(server, FakeBaostockServer):
        victim = sorted(market.bars(start, start)["code"])[3]
        server.inject("drop", call="query_history_k_data_plus", code=victim, times=MAX_ATTEMPTS)
    else:
        # Every call for that day fails during the first run, however many the source makes
        # (retries, the short-day re-fetch); the fault is lifted before the repairs.
        victim_day = server.inject("http500", api="daily", trade_date=dt.date(2025, 4, 15))
        victim_day.times = None
    source = source_for(server)
    try:
        with dg.DagsterInstance.ephemeral() as instance:
            # the victim (1 stock of 33, 3%) and a random fault that exhausted a stock's
            # attempts may fail and be recorded: below this share the step does not retry,
            # which would fetch them before the repair path is taken
            tolerant = {"config": {"max_failed_share": 0.1}}
            config = {"ops": {"market_data": tolerant}}
            run(instance, source, warehouse_url, range_tags(start, end), run_config=config)
            if not isinstance(server, FakeBaostockServer):
                server.remove_fault(victim_day)
            missing = gaps(warehouse_url, market, start, end)
            assert any(len(m) for m in missing.values())
            assert_gaps_are_recorded(warehouse_url, missing)
            assert heal(instance, source, warehouse_url, market, start, end) >= 1
    finally:
        faults = fault_count(server)
        server.clear_faults()
        tus.rate_limited_share = 0.0
    assert faults > 0  # the faults really happened


def test_soak_fifty_partition_runs_with_random_faults_end_with_the_exact_market(
    sqlite_url: str, market: DemoMarket, tus: FlakyTushareServer
) -> None:
    days = trading_calendar.trading_days(dt.date(2025, 4, 1), dt.date(2025, 7, 31))[:50]
    assert len(days) == 50
    add_random_faults(tus, seed=50)
    source = source_for(tus)
    calls_before = len(tus.calls)
    try:
        with dg.DagsterInstance.ephemeral() as instance:
            for day in days:
                run(instance, source, sqlite_url, range_tags(day, day))  # may fail: healed below
            heal(instance, source, sqlite_url, market, days[0], days[-1])
    finally:
        calls, faults = len(tus.calls) - calls_before, fault_count(tus)
        tus.clear_faults()
        tus.rate_limited_share = 0.0
    assert faults >= 0.05 * calls, (faults, calls)  # ~10% of the calls failed
    assert not any(m.size for m in gaps(sqlite_url, market, days[0], days[-1]).values())
    assert open_failures(sqlite_url).empty
