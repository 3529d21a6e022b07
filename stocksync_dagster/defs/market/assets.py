"""Market assets partitioned by trading day: unadjusted daily bars and adjustment factors."""

from typing import Any

import dagster as dg

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.codes import is_valid_code
from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.sync import (
    ADJ_FACTOR,
    DAILY_BARS,
    DEFAULT_MAX_FAILED_SHARE,
    MarketDataset,
    sync_market_range,
)
from stocksync_dagster.core.warehouse import schema
from stocksync_dagster.defs.market.automation import GAP_FILL
from stocksync_dagster.defs.market.partitions import keys_to_dates, trading_days
from stocksync_dagster.defs.metadata import partition_metadata, run_metadata, table_metadata
from stocksync_dagster.defs.policies import SOURCE_OP_TAGS, SOURCE_POOL, source_retry_policy
from stocksync_dagster.resources import MarketSourceResource, WarehouseResource

MARKET_GROUP = "market"


class MarketSyncConfig(dg.Config):
    """Run settings for a market sync (editable in the Launchpad).

    Checked before anything is fetched (`check`): numbers against their ranges, `codes` for
    their form here and against `stock_basic` by the sync; a bad value fails the run at once,
    without retries, in one line naming the setting.
    """

    lookback_days: int = 0
    """Also re-fetch this many trading days before the partition (0-250; late data heals)."""
    codes: list[str] | None = None
    """Only these stocks (repairs of `sync_failure`); empty = the whole market."""
    max_failed_share: float = DEFAULT_MAX_FAILED_SHARE
    """Fail the step (so it is retried) when more than this share (0-1) of stocks could not be
    fetched (0.01: a success needs 99% of the expected stocks; the rest are in sync_failure)."""
    max_retries: int = 5
    """A stock failing this many times in a row is marked `abandoned` in `sync_failure` (1-100)."""

    def check(self) -> None:
        """Raise ConfigError naming the first setting out of range or the malformed codes."""
        for name, low, high in (
            ("lookback_days", 0, 250),
            ("max_failed_share", 0, 1),
            ("max_retries", 1, 100),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(name, f"{value} is not in [{low}, {high}]")
        malformed = [c for c in self.codes or [] if not is_valid_code(c)]
        if malformed:
            raise ConfigError("codes", f"not in 600000.SH form: {', '.join(malformed)}")


def _sync(
    dataset: MarketDataset,
    context: dg.AssetExecutionContext,
    config: MarketSyncConfig,
    source: MarketSourceResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    try:
        config.check()
    except ConfigError as exc:  # a retry cannot fix the run's own config
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    days = keys_to_dates(context.partition_keys)
    start, end = days[0], days[-1]
    for _ in range(config.lookback_days):
        start = trading_calendar.previous_trading_day(start)
    scope = f"{len(config.codes)} stocks" if config.codes else "the whole market"
    context.log.info(
        f"{dataset.asset}: fetching {start}..{end} ({len(days)} partitions) for {scope}"
    )
    try:
        report = sync_market_range(
            dataset,
            source,
            warehouse.get(),
            start,
            end,
            config.codes,
            config.max_failed_share,
            config.max_retries,
            run_id=context.run.run_id,
        )
    except ConfigError as exc:  # a retry cannot fix the run's own config
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    context.log.info(
        f"{dataset.asset}: {len(report.frame)} rows for {len(report.open_days)} open days in "
        f"{report.fetch_seconds:.1f}s fetch + {report.write_seconds:.1f}s write; "
        f"{report.stats.inserted} new, {report.stats.updated} changed "
        f"({report.stats.revised} revised values kept), "
        f"{len(report.failed_codes)} stocks failed, {len(report.rejected)} rows rejected"
    )
    # One materialization per partition: its own day's figures first, then the run's (run_*).
    run = run_metadata(report, days)
    for key, metadata in partition_metadata(report, days, dataset.table).items():
        context.add_asset_metadata({**metadata, **run}, partition_key=key)
    return dg.MaterializeResult()


_COMMON: dict[str, Any] = {
    "group_name": MARKET_GROUP,
    "kinds": {"sql"},
    "partitions_def": trading_days,
    "backfill_policy": dg.BackfillPolicy.single_run(),
    "pool": SOURCE_POOL,
    "op_tags": SOURCE_OP_TAGS,
    "retry_policy": source_retry_policy(),
    "deps": ["trade_calendar", "stock_basic"],
    "automation_condition": GAP_FILL,
}


@dg.asset(**_COMMON, metadata=table_metadata(schema.daily_bar))
def daily_bars(
    context: dg.AssetExecutionContext,
    config: MarketSyncConfig,
    source: MarketSourceResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Unadjusted daily OHLCV of every stock that traded that day (table `daily_bar`).

    Prices in CNY, volume in shares, amount in CNY, pct_chg in percent. Suspended stocks
    have no row. A range (backfill) run fetches the whole range at once.
    """
    return _sync(DAILY_BARS, context, config, source, warehouse)


@dg.asset(**_COMMON, metadata=table_metadata(schema.adj_factor))
def adj_factor(
    context: dg.AssetExecutionContext,
    config: MarketSyncConfig,
    source: MarketSourceResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Cumulative adjustment factor per stock and traded day (table `adj_factor`).

    hfq price = raw x adj_factor; qfq = raw x adj_factor / the latest factor
    (views `daily_bar_hfq` and `daily_bar_qfq`).
    """
    return _sync(ADJ_FACTOR, context, config, source, warehouse)


MARKET_ASSETS = (daily_bars, adj_factor)
