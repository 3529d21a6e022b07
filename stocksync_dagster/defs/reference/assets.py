"""Reference assets: the exchange calendar and the security master (unpartitioned snapshots)."""

import datetime as dt
from typing import Any

import dagster as dg
import pandas as pd
import pydantic
import sqlalchemy as sa

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.core.sync import sync_reference_table
from stocksync_dagster.core.warehouse import Warehouse, counts, schema
from stocksync_dagster.defs.metadata import (
    ROW_COUNT,
    frame_table,
    preview,
    table_metadata,
    upsert_metadata,
)
from stocksync_dagster.defs.policies import SOURCE_OP_TAGS, SOURCE_POOL, source_retry_policy
from stocksync_dagster.resources import MarketSourceResource, WarehouseResource

REFERENCE_GROUP = "reference"
_COMMON: dict[str, Any] = {
    "group_name": REFERENCE_GROUP,
    "kinds": {"sql"},
    "pool": SOURCE_POOL,
    "op_tags": SOURCE_OP_TAGS,
    "retry_policy": source_retry_policy(),
}


def _stored_rows(warehouse: Warehouse, table: sa.Table) -> int:
    with warehouse.connect() as connection:
        return counts.row_count(connection, table)


@dg.asset(**_COMMON, metadata=table_metadata(schema.trade_calendar))
def trade_calendar(
    context: dg.AssetExecutionContext,
    source: MarketSourceResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """SSE/SZSE trading calendar (open and closed days) from the first partition to year end.

    Table `trade_calendar(cal_date, is_open)`.
    """
    end = dt.date(trading_calendar.shanghai_now().year, 12, 31)
    frame = source.trade_calendar(current_settings().start_date, end)
    stats = sync_reference_table(schema.trade_calendar, frame, warehouse.get())
    stored = _stored_rows(warehouse.get(), schema.trade_calendar)
    open_days = int(frame["is_open"].sum())
    context.log.info(
        f"calendar {current_settings().start_date}..{end}: {open_days} open days of {len(frame)}"
    )
    return dg.MaterializeResult(
        metadata={
            ROW_COUNT: stored,
            **upsert_metadata(stats),
            "first_day": str(current_settings().start_date),
            "last_day": str(end),
            "open_days": open_days,
            "closed_days": len(frame) - open_days,
        }
    )


EXCHANGES = ("SH", "SZ", "BJ")
# Tushare's list_status letters -> the normalized `status` (P, listing paused, is still listed).
LIST_STATUSES = {"L": "listed", "D": "delisted", "P": "listed"}


class StockBasicConfig(dg.Config):
    """Which stocks a run refreshes; the default (empty lists) is all of them."""

    exchanges: list[str] = pydantic.Field(
        default_factory=list, description="Only these exchanges: SH, SZ, BJ. Empty: all."
    )
    list_statuses: list[str] = pydantic.Field(
        default_factory=list,
        description="Only these list statuses: L (listed), D (delisted), P (paused; stored as "
        "listed, so L and P select the same rows). Empty: all.",
    )

    @pydantic.field_validator("exchanges")
    @classmethod
    def _known_exchanges(cls, value: list[str]) -> list[str]:
        value = [v.strip().upper() for v in value]
        unknown = sorted(set(value) - set(EXCHANGES))
        if unknown:
            raise ValueError(f"unknown exchange {', '.join(unknown)}: use {', '.join(EXCHANGES)}")
        return value

    @pydantic.field_validator("list_statuses")
    @classmethod
    def _known_statuses(cls, value: list[str]) -> list[str]:
        value = [v.strip().upper() for v in value]
        unknown = sorted(set(value) - set(LIST_STATUSES))
        if unknown:
            raise ValueError(f"unknown list status {', '.join(unknown)}: use L, D or P")
        return value

    def select(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of the source's security master this run upserts."""
        keep = pd.Series(True, index=frame.index)
        if self.exchanges:
            keep &= frame["exchange"].isin(self.exchanges)
        if self.list_statuses:
            keep &= frame["status"].isin({LIST_STATUSES[s] for s in self.list_statuses})
        return frame[keep]


@dg.asset(**_COMMON, metadata=table_metadata(schema.stock_basic))
def stock_basic(
    context: dg.AssetExecutionContext,
    config: StockBasicConfig,
    source: MarketSourceResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Security master: code, name, exchange, board, list/delist dates, status, ST flag.

    A current snapshot of every stock the source knows (listed and delisted), refreshed on each
    run; list and delist dates carry the history. Run config `exchanges` (SH/SZ/BJ) and
    `list_statuses` (L/D/P) refresh only those rows; other rows are kept. Table `stock_basic`.
    """
    everything = source.stock_basic()
    frame = config.select(everything)
    if len(frame) < len(everything):
        context.log.info(
            f"stock_basic: {len(frame)} of {len(everything)} stocks selected by "
            f"exchanges={config.exchanges or 'all'} list_statuses={config.list_statuses or 'all'}"
        )
    stats = sync_reference_table(schema.stock_basic, frame, warehouse.get())
    stored = _stored_rows(warehouse.get(), schema.stock_basic)
    context.log.info(f"stock_basic: {len(frame)} stocks")
    by_board = frame.groupby(["exchange", "board", "status"]).size().rename("stocks").reset_index()
    return dg.MaterializeResult(
        metadata={
            ROW_COUNT: stored,
            **upsert_metadata(stats),
            "stocks": len(frame),
            "filter": f"exchanges={','.join(config.exchanges) or 'all'} "
            f"list_statuses={','.join(config.list_statuses) or 'all'}",
            "listed": int((frame["status"] == "listed").sum()),
            "delisted": int((frame["status"] == "delisted").sum()),
            "by_board": frame_table(by_board),
            "preview": preview(frame, schema.stock_basic),
        }
    )
