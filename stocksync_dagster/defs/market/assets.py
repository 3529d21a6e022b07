"""Market assets partitioned by trading day: unadjusted daily bars and adjustment factors.

Both are outputs of one step (`market_data`, a multi-asset that can be subset): selected
together, a range is fetched from one source session (the factors reuse what the bars
fetched); selected alone, only that asset is fetched and materialized.
"""

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import sqlalchemy as sa

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.codes import is_valid_code
from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.sync import (
    ADJ_FACTOR,
    DAILY_BARS,
    DEFAULT_MAX_FAILED_SHARE,
    ChunkProgress,
    MarketDataset,
    SyncReport,
    sync_market,
)
from stocksync_dagster.defs.market.automation import GAP_FILL
from stocksync_dagster.defs.market.partitions import keys_to_dates, trading_days
from stocksync_dagster.defs.metadata import range_metadata, table_metadata
from stocksync_dagster.defs.policies import (
    MARKET_BACKFILL_POLICY,
    SOURCE_OP_TAGS,
    SOURCE_POOL,
    source_retry_policy,
)
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


def _selected(context: dg.AssetExecutionContext) -> list[MarketDataset]:
    """The datasets of the selected assets, bars before factors (the factors reuse the session)."""
    keys = context.selected_asset_keys
    return [d for d in MARKET_DATASETS if dg.AssetKey(d.asset) in keys]


def _record(
    context: dg.AssetExecutionContext, report: SyncReport, days: list[dt.date], table: sa.Table
) -> dg.MaterializeResult:
    """One materialization per partition: its own day's figures, then the run's (run_*).

    A run of more than MAX_DETAILED_PARTITIONS partitions (a backfill) puts the preview table
    and the run's figures on its last partition only (`range_metadata`)."""
    context.log.info(
        f"{report.asset}: {report.rows_fetched} rows for {len(report.open_days)} open days in "
        f"{report.fetch_seconds:.1f}s fetch + {report.write_seconds:.1f}s write "
        f"({report.chunks} chunks, {report.seconds:.1f}s in all); "
        f"{report.stats.inserted} new, {report.stats.updated} changed "
        f"({report.stats.revised} revised values kept), "
        f"{len(report.failed_codes)} stocks failed, {len(report.rejected)} rows rejected"
    )
    key = dg.AssetKey(report.asset)
    for partition, metadata in range_metadata(report, days, table).items():
        context.add_asset_metadata(metadata, asset_key=key, partition_key=partition)
    return dg.MaterializeResult(asset_key=key)


def _log_chunk(context: dg.AssetExecutionContext, progress: ChunkProgress) -> None:
    """Progress of a long range run: one line per committed chunk, with rate and ETA."""
    if progress.chunks > 1:
        context.log.info(
            f"chunk {progress.chunk}/{progress.chunks} committed ({progress.first_day}.."
            f"{progress.last_day}): {progress.rows_total:,} rows so far, "
            f"{progress.rows_per_second:,.0f} rows/s, ETA {progress.eta_seconds:.0f}s"
        )


def _spec(dataset: MarketDataset, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        dataset.asset,
        description=description,
        group_name=MARKET_GROUP,
        kinds={"sql"},
        deps=["trade_calendar", "stock_basic"],
        automation_condition=GAP_FILL,
        metadata=table_metadata(dataset.table),
        skippable=True,
    )


MARKET_OP = "market_data"
"""The one step computing `daily_bars` and `adj_factor` (run config: `ops: {market_data: ...}`)."""

MARKET_DATASETS = (DAILY_BARS, ADJ_FACTOR)


@dg.multi_asset(
    name=MARKET_OP,
    specs=[
        _spec(
            DAILY_BARS,
            "Unadjusted daily OHLCV of every stock that traded that day (table `daily_bar`).\n\n"
            "Prices in CNY, volume in shares, amount in CNY, pct_chg in percent. Suspended "
            "stocks have no row. A range (backfill) run fetches the whole range at once, "
            "together with `adj_factor` from the same source session when both are selected.",
        ),
        _spec(
            ADJ_FACTOR,
            "Cumulative adjustment factor per stock and traded day (table `adj_factor`).\n\n"
            "hfq price = raw x adj_factor; qfq = raw x adj_factor / the latest factor (views "
            "`daily_bar_hfq` and `daily_bar_qfq`). Fetched with `daily_bars` from the same "
            "source session when both are selected.",
        ),
    ],
    can_subset=True,
    partitions_def=trading_days,
    backfill_policy=MARKET_BACKFILL_POLICY,
    pool=SOURCE_POOL,
    op_tags=SOURCE_OP_TAGS,
    retry_policy=source_retry_policy(),
)
def market_data(
    context: dg.AssetExecutionContext,
    config: MarketSyncConfig,
    source: MarketSourceResource,
    warehouse: WarehouseResource,
) -> Iterator[dg.MaterializeResult]:
    """daily_bars and adj_factor (or the one selected) over the run's partitions, one session."""
    try:
        config.check()
    except ConfigError as exc:  # a retry cannot fix the run's own config
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    datasets = _selected(context)
    days = keys_to_dates(context.partition_keys)
    start, end = days[0], days[-1]
    for _ in range(config.lookback_days):
        start = trading_calendar.previous_trading_day(start)
    scope = f"{len(config.codes)} stocks" if config.codes else "the whole market"
    names = " + ".join(d.asset for d in datasets)
    context.log.info(f"{names}: fetching {start}..{end} ({len(days)} partitions) for {scope}")
    try:
        reports = sync_market(
            datasets,
            source,
            warehouse.get(),
            start,
            end,
            config.codes,
            config.max_failed_share,
            config.max_retries,
            run_id=context.run.run_id,
            on_chunk=lambda progress: _log_chunk(context, progress),
        )
    except ConfigError as exc:  # a retry cannot fix the run's own config
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    for dataset in datasets:
        yield _record(context, reports[dataset.asset], days, dataset.table)


MARKET_ASSETS = (market_data,)
MARKET_ASSET_KEYS = tuple(dg.AssetKey(d.asset) for d in MARKET_DATASETS)
"""`daily_bars`, `adj_factor`: the public asset keys, in fetch order."""
