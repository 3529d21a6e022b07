"""Source resources: one per implementation, chosen by `STOCKSYNC_SOURCE` when definitions load.

Assets depend on `MarketSourceResource` and call `open()`; they never branch on the source.
"""

from __future__ import annotations

import abc

import dagster as dg

from stocksync_dagster.core.settings import Settings
from stocksync_dagster.core.sources.base import MarketSource


class MarketSourceResource(dg.ConfigurableResource, abc.ABC):
    """Opens a `MarketSource` for one step; close it when done (`with resource.open() as src`)."""

    @abc.abstractmethod
    def open(self) -> MarketSource: ...


class DemoSourceResource(MarketSourceResource):
    """Deterministic offline market (no network)."""

    stocks: int = 300
    seed: int = 42

    def open(self) -> MarketSource:
        from stocksync_dagster.core.sources.demo import DemoSource

        return DemoSource(n_stocks=self.stocks, seed=self.seed)


class BaostockSourceResource(MarketSourceResource):
    """baostock: one login per worker process, bounded parallelism (floods get blacklisted)."""

    server: str | None = None  # host:port; None = the library's own server
    workers: int = 4
    call_timeout_seconds: float = 60.0
    max_attempts: int = 4
    backoff_seconds: float = 1.0

    def open(self) -> MarketSource:
        from stocksync_dagster.core.sources.baostock import BaostockSource

        return BaostockSource(
            server=self.server,
            workers=self.workers,
            call_timeout_seconds=self.call_timeout_seconds,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
        )


class TushareSourceResource(MarketSourceResource):
    """Tushare Pro: whole-market calls per trade date over a rate-limited token pool."""

    tokens: str  # one token or a comma-separated pool; pass dg.EnvVar("TUSHARE_TOKEN")
    api_url: str | None = None
    calls_per_minute: int = 500
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    call_timeout_seconds: float = 30.0

    def open(self) -> MarketSource:
        from stocksync_dagster.core.settings import parse_tokens
        from stocksync_dagster.core.sources.tushare import TushareSource

        return TushareSource(
            tokens=parse_tokens(self.tokens),
            api_url=self.api_url,
            calls_per_minute=self.calls_per_minute,
            max_attempts=self.max_attempts,
            backoff_seconds=self.backoff_seconds,
            call_timeout_seconds=self.call_timeout_seconds,
        )


def build_source_resource(settings: Settings) -> MarketSourceResource:
    """The resource for `STOCKSYNC_SOURCE`; secrets stay `EnvVar`s so the UI never shows them."""
    if settings.source == "demo":
        return DemoSourceResource()
    if settings.source == "tushare":
        return TushareSourceResource(
            tokens=dg.EnvVar("TUSHARE_TOKEN"), api_url=settings.tushare_api_url
        )
    server = (
        f"{settings.baostock_server[0]}:{settings.baostock_server[1]}"
        if settings.baostock_server
        else None
    )
    return BaostockSourceResource(server=server)
