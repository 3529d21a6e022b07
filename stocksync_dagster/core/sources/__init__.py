"""Market data sources: one interface (`MarketSource`), three implementations."""

from stocksync_dagster.core.sources.base import (
    ADJ_FACTOR_COLUMNS,
    BAR_COLUMNS,
    CALENDAR_COLUMNS,
    STOCK_BASIC_COLUMNS,
    FetchFailure,
    FetchResult,
    MarketSource,
)

__all__ = [
    "ADJ_FACTOR_COLUMNS",
    "BAR_COLUMNS",
    "CALENDAR_COLUMNS",
    "STOCK_BASIC_COLUMNS",
    "FetchFailure",
    "FetchResult",
    "MarketSource",
]
