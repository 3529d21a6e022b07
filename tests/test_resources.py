"""Source resources: the resource is the source, its hooks own the pools, its fields validate.

`stocksync doctor` opens the same resources a run does, so `dg.EnvVar("TUSHARE_TOKEN")` is
resolved: checked against the loopback Tushare server through the REAL tushare client.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pydantic
import pytest

from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.sources.baostock import BaostockSource
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.sources.tushare import TushareSource
from stocksync_dagster.core.sources.tushare_pool import mask_token
from stocksync_dagster.defs.resources import source_resource
from stocksync_dagster.resources import (
    BaostockSourceResource,
    DemoSourceResource,
    SourceNotOpenError,
    TushareSourceResource,
)
from tests.fakes.baostock_server import FakeBaostockServer
from tests.fakes.tushare_server import FakeTushareServer
from tests.test_cli import STOCKSYNC, run

pytestmark = pytest.mark.timeout(120)

GOOD = "tok-good-5f3c9a1e77d2aa"
BAD = "tok-bad-0b4e6d2c9a18bb"
AS_OF = dt.date.today()


@pytest.fixture(scope="module")
def market() -> DemoMarket:
    return DemoMarket(20, seed=3, origin=AS_OF - dt.timedelta(days=60))


@pytest.fixture(scope="module")
def tushare(market: DemoMarket) -> Iterator[FakeTushareServer]:
    with FakeTushareServer(market, valid_tokens=[GOOD], as_of=AS_OF) as server:
        yield server


def doctor(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return run([*STOCKSYNC, "doctor"], cwd, timeout=90, **env)


def test_doctor_passes_with_a_good_tushare_token(
    tmp_path: Path, tushare: FakeTushareServer
) -> None:
    result = doctor(
        tmp_path, STOCKSYNC_SOURCE="tushare", TUSHARE_TOKEN=GOOD, TUSHARE_API_URL=tushare.url
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "ok    tushare: tushare: reachable, 1 usable token(s)" in result.stdout
    assert GOOD not in result.stdout + result.stderr
    assert not list(tmp_path.iterdir()), "doctor is read-only: it creates no files"


def test_doctor_fails_with_a_bad_tushare_token_naming_it_masked(
    tmp_path: Path, tushare: FakeTushareServer
) -> None:
    result = doctor(
        tmp_path, STOCKSYNC_SOURCE="tushare", TUSHARE_TOKEN=BAD, TUSHARE_API_URL=tushare.url
    )
    assert result.returncode == 1
    line = next(x for x in result.stdout.splitlines() if x.startswith("  FAIL  tushare"))
    assert mask_token(BAD) in line and "invalid" in line
    assert BAD not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_doctor_names_a_bad_source_setting(tmp_path: Path) -> None:
    result = doctor(tmp_path, STOCKSYNC_SOURCE="baostock", BAOSTOCK_SERVER="no-port-here")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: BAOSTOCK_SERVER: 'no-port-here' is not host:port (e.g. 127.0.0.1:10030)"
    )


def test_a_source_resource_is_the_source_only_while_open() -> None:
    resource = DemoSourceResource(stocks=10)
    with pytest.raises(SourceNotOpenError, match="not open"):
        resource.stock_basic()
    with dg.build_resources({"source": resource}) as resources:
        assert len(resources.source.stock_basic()) == 10
        assert resources.source.check_connection().startswith("demo: offline synthetic market")
        opened = resources.source
    with pytest.raises(SourceNotOpenError):
        opened.trade_calendar(AS_OF, AS_OF)


def test_baostock_worker_pool_lives_from_setup_to_teardown(market: DemoMarket) -> None:
    with FakeBaostockServer(market, as_of=AS_OF) as server:
        resource = BaostockSourceResource(server=server.address, workers=2, backoff_seconds=0.05)
        with dg.build_resources({"source": resource}) as resources:
            engine = resources.source.source
            assert isinstance(engine, BaostockSource)
            resources.source.trade_calendar(AS_OF - dt.timedelta(days=7), AS_OF)
            pids = engine.worker_pids
            assert pids, "a call starts the logged-in workers"
        assert engine.worker_pids == []
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def test_tushare_token_pool_is_built_in_setup_from_the_resolved_env_var(
    tushare: FakeTushareServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_TUSHARE_TOKENS", f"{GOOD}, {GOOD}")
    resource = TushareSourceResource(tokens=dg.EnvVar("TEST_TUSHARE_TOKENS"), api_url=tushare.url)
    with dg.build_resources({"source": resource}) as resources:
        engine = resources.source.source
        assert isinstance(engine, TushareSource)
        assert len(engine.pool.entries) == 2
        assert "2 usable token(s)" in resources.source.check_connection()
    with pytest.raises(SourceNotOpenError):
        resources.source.stock_basic()


def test_an_empty_token_pool_fails_setup_naming_the_variable_not_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_TUSHARE_TOKENS", " , ")
    resource = TushareSourceResource(tokens=dg.EnvVar("TEST_TUSHARE_TOKENS"))
    with pytest.raises(Exception) as info, dg.build_resources({"source": resource}):
        pass
    assert "TUSHARE_TOKEN: no token given" in str(info.value.__cause__ or info.value)


@pytest.mark.parametrize(
    ("build", "field", "message"),
    [
        (lambda: BaostockSourceResource(server="localhost"), "server", "BAOSTOCK_SERVER"),
        (lambda: BaostockSourceResource(server="h:99999"), "server", "is not host:port"),
        (lambda: BaostockSourceResource(workers=0), "workers", "greater than or equal to 1"),
        (lambda: BaostockSourceResource(call_timeout_seconds=0), "call_timeout_seconds", "0"),
        (lambda: TushareSourceResource(tokens="t", api_url="ftp://x"), "api_url", "http(s)"),
        (lambda: TushareSourceResource(tokens="t", max_attempts=0), "max_attempts", "1"),
        (lambda: DemoSourceResource(stocks=9), "stocks", "greater than or equal to 10"),
    ],
)
def test_invalid_fields_fail_when_the_resource_is_built_naming_the_setting(
    build, field: str, message: str
) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        build()
    (error,) = info.value.errors()
    assert error["loc"] == (field,)
    assert message in error["msg"]


def test_sources_are_chosen_once_from_the_settings() -> None:
    assert isinstance(source_resource(Settings(source="demo")), DemoSourceResource)
    baostock = source_resource(Settings(source="baostock", baostock_server="127.0.0.1:10030"))
    assert isinstance(baostock, BaostockSourceResource)
    assert baostock.server == "127.0.0.1:10030"
    tushare = source_resource(Settings(source="tushare"))
    assert isinstance(tushare, TushareSourceResource)
    # the secret stays an environment variable reference until a run resolves it
    assert tushare.tokens == "TUSHARE_TOKEN"
