"""Source resources: each resource IS a market source (`source.daily_bars(...)`).

One class per source, chosen once by `STOCKSYNC_SOURCE` (`defs/resources.py`). Fields are the
settings, validated when the resource is built; `setup_for_execution` builds the engine from
`core/sources/` (worker pool, token pool) for one run or step, `teardown_after_execution` closes it.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Sequence

import dagster as dg
import pandas as pd
from pydantic import Field, PrivateAttr, field_validator

from stocksync_dagster.core.errors import ConfigError, StocksyncError
from stocksync_dagster.core.settings import (
    parse_host_port,
    parse_tokens,
    validate_host_port,
    validate_http_url,
)
from stocksync_dagster.core.sources.base import ChunkAxis, FetchResult, MarketSource


class SourceNotOpenError(StocksyncError):
    """A source resource was called outside a run (its engine is built by setup_for_execution)."""


class MarketSourceResource(dg.ConfigurableResource, MarketSource):
    """A market data source; subclasses say how to build their engine (`make_source`)."""

    _source: MarketSource | None = PrivateAttr(default=None)

    @abc.abstractmethod
    def make_source(self) -> MarketSource:
        """The engine for this configuration (opens pools, not yet connections)."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._source = self.make_source()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()

    def close(self) -> None:
        """Release the engine's sessions and processes (idempotent)."""
        source, self._source = self._source, None
        if source is not None:
            source.close()

    @property
    def source(self) -> MarketSource:
        """The open engine; only inside a run, a step or `dg.build_resources`."""
        if self._source is None:
            raise SourceNotOpenError(
                f"{type(self).__name__} is not open: use it inside a run, or open it with "
                "`with dg.build_resources({'source': resource}) as resources:`"
            )
        return self._source

    @property
    def label(self) -> str:
        """The engine's name (`baostock`, `tushare`, `demo`)."""
        return self.source.label

    def trade_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Every calendar day in [start, end] with `is_open`."""
        return self.source.trade_calendar(start, end)

    def stock_basic(self) -> pd.DataFrame:
        """The security master (stocks only), listed and delisted."""
        return self.source.stock_basic()

    def daily_bars(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        """Unadjusted daily bars for [start, end]; `codes` limits the fetch (repairs)."""
        return self.source.daily_bars(start, end, codes)

    def adj_factors(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        """Cumulative adjustment factors per stock and traded day in [start, end]."""
        return self.source.adj_factors(start, end, codes)

    @property
    def chunk_axis(self) -> ChunkAxis:
        """The engine's chunk axis (`stocks` for baostock, `days` for tushare and demo)."""
        return self.source.chunk_axis

    def end_chunk(self) -> None:
        """Free what the engine cached for the chunk just fetched."""
        self.source.end_chunk()

    def check_connection(self) -> str:
        """Reach the source once; a one-line description, or SourceError if it is down."""
        return self.source.check_connection()

    @property
    def second_source(self) -> MarketSource | None:
        """The other source the reconciliation check compares with; None with one source."""
        return None


class DemoSourceResource(MarketSourceResource):
    """The deterministic offline demo market (no network)."""

    stocks: int = Field(default=300, ge=10, le=10_000, description="Stocks in the market.")
    seed: int = Field(default=42, description="Random seed: the same seed, the same market.")

    def make_source(self) -> MarketSource:
        from stocksync_dagster.core.sources.demo import DemoSource

        return DemoSource(n_stocks=self.stocks, seed=self.seed)


class BaostockSourceResource(MarketSourceResource):
    """baostock: one login per worker process, bounded parallelism (floods get blacklisted)."""

    server: str | None = Field(
        default=None,
        description="host:port of the baostock server (BAOSTOCK_SERVER); None: the library's.",
    )
    workers: int = Field(
        default=4, ge=1, le=32, description="Logged-in worker processes (parallel sessions)."
    )
    call_timeout_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="A call without reply by then is killed."
    )
    max_attempts: int = Field(default=4, ge=1, le=20, description="Attempts per stock and call.")
    backoff_seconds: float = Field(
        default=1.0, ge=0, le=600, description="First pause between attempts (doubles)."
    )

    @field_validator("server")
    @classmethod
    def _host_port(cls, server: str | None) -> str | None:
        if server is not None:
            try:
                validate_host_port(server, "BAOSTOCK_SERVER")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return server

    def make_source(self) -> MarketSource:
        from stocksync_dagster.core.sources.baostock import BaostockSource

        return BaostockSource(
            server=parse_host_port(self.server, "BAOSTOCK_SERVER") if self.server else None,
            workers=self.workers,
            call_timeout_seconds=self.call_timeout_seconds,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )


class TushareSourceResource(MarketSourceResource):
    """Tushare Pro: whole-market calls per trade date over a rate-limited token pool."""

    tokens: str = Field(
        description="One token or a comma-separated pool; pass dg.EnvVar('TUSHARE_TOKEN')."
    )
    api_url: str | None = Field(
        default=None, description="Base URL of the Tushare HTTP API (TUSHARE_API_URL)."
    )
    calls_per_minute: int = Field(
        default=500, ge=1, le=100_000, description="Calls per minute, per token and API."
    )
    max_attempts: int = Field(default=5, ge=1, le=20, description="Attempts per call.")
    backoff_seconds: float = Field(
        default=1.0, ge=0, le=600, description="First pause between attempts (doubles)."
    )
    call_timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="HTTP timeout of one call."
    )
    rate_limit_pause_seconds: float = Field(
        default=5.0, ge=0, le=600, description="First pause of a token refused for rate."
    )

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None:
            try:
                validate_http_url(url, "TUSHARE_API_URL")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return url

    def make_source(self) -> MarketSource:
        from stocksync_dagster.core.sources.tushare import TushareSource

        # Parsed here, not in a validator: the tokens are secret and a validation error would
        # echo them; parse_tokens' message names TUSHARE_TOKEN, never a value.
        return TushareSource(
            tokens=parse_tokens(self.tokens),
            api_url=self.api_url,
            calls_per_minute=self.calls_per_minute,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
            call_timeout_seconds=self.call_timeout_seconds,
            rate_limit_pause_seconds=self.rate_limit_pause_seconds,
        )


class FallbackSourceResource(MarketSourceResource):
    """`primary`, with `fallback` filling the stocks and days it could not fetch.

    Both are source resources of their own, each with its own settings, pool and limits
    (`STOCKSYNC_SOURCE=baostock,tushare`); Dagster sets them up before this one.
    """

    primary: MarketSourceResource
    fallback: MarketSourceResource

    def make_source(self) -> MarketSource:
        from stocksync_dagster.core.sources.fallback import FallbackSource

        return FallbackSource(self.primary.source, self.fallback.source)

    def close(self) -> None:
        """Forget the composite; the nested resources close their own engines."""
        self._source = None

    @property
    def second_source(self) -> MarketSource | None:
        return self.fallback.source
