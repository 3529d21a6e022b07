"""Loopback baostock and Tushare servers over one synthetic market (a pytest plugin).

For the tests that run the real clients of both sources: the fixtures are module-scoped; the
test module's `TOKEN` is the Tushare server's valid token, its optional `MARKET_STOCKS` the
market's size (60) and `TUSHARE_OPTIONS` extra server options. `no_faults` clears injected
faults around each test (use it with `pytest.mark.usefixtures("no_faults")`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from stocksync_dagster.core.sources.demo_market import DemoMarket
from tests.fakes.baostock_server import FakeBaostockServer
from tests.fakes.tushare_server import FakeTushareServer

ORIGIN = dt.date(2025, 1, 2)
AS_OF = dt.date(2025, 4, 30)


@pytest.fixture(scope="module")
def market(request: pytest.FixtureRequest) -> DemoMarket:
    return DemoMarket(getattr(request.module, "MARKET_STOCKS", 60), seed=11, origin=ORIGIN)


@pytest.fixture(scope="module")
def baostock_server(market: DemoMarket) -> Iterator[FakeBaostockServer]:
    with FakeBaostockServer(market, as_of=AS_OF, hang_seconds=10) as server:
        yield server


@pytest.fixture(scope="module")
def tushare_server(
    request: pytest.FixtureRequest, market: DemoMarket
) -> Iterator[FakeTushareServer]:
    options = getattr(request.module, "TUSHARE_OPTIONS", {})
    with FakeTushareServer(
        market, valid_tokens=[request.module.TOKEN], as_of=AS_OF, hang_seconds=10, **options
    ) as server:
        yield server


@pytest.fixture
def no_faults(
    baostock_server: FakeBaostockServer, tushare_server: FakeTushareServer
) -> Iterator[None]:
    baostock_server.clear_faults()
    tushare_server.clear_faults()
    yield
    baostock_server.clear_faults()
    tushare_server.clear_faults()
