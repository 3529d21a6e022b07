"""The source interface and the normalised frames every source returns.

Normalised frames (the same whatever the source):

- calendar: `cal_date` (datetime.date), `is_open` (bool)
- stock_basic: `code` (`600000.SH`), `name`, `exchange` (SH/SZ/BJ), `board`
  (main/chinext/star/bse), `list_date`, `delist_date` (date or None), `status`
  (`listed`/`delisted`), `is_st` (bool)
- bars: `code`, `trade_date` (date), `open`, `high`, `low`, `close`, `pre_close` (CNY,
  unadjusted), `volume` (shares), `amount` (CNY), `pct_chg` (percent, 1.5 = +1.5%).
  Suspended stocks have no row.
- suspensions: `code`, `trade_date`: listed stocks the source says did not trade that day
  (baostock `tradestatus == "0"`, Tushare `suspend_d`); absent by design, never "missing".
- st: `code`, `trade_date`: stocks that were ST (or *ST) that day, as the source said then
  (baostock `isST`, Tushare `namechange`); with the bars, feeds `daily_status`.
- adj_factor: `code`, `trade_date`, `adj_factor` (cumulative, hfq price = raw x factor)

Bars and factors may also carry `source` (the label of the source a row came from); the sync
fills it with the source's label where it is absent (`with_source`).

Fetches take date ranges: a range run makes one fetch for the whole range.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pandas as pd

CALENDAR_COLUMNS = ["cal_date", "is_open"]
STOCK_BASIC_COLUMNS = [
    "code",
    "name",
    "exchange",
    "board",
    "list_date",
    "delist_date",
    "status",
    "is_st",
]
BAR_COLUMNS = [
    "code",
    "trade_date",
    "open",
    "high",
    "low",
    "close",
    "pre_close",
    "volume",
    "amount",
    "pct_chg",
]
ADJ_FACTOR_COLUMNS = ["code", "trade_date", "adj_factor"]
SUSPENSION_COLUMNS = ["code", "trade_date"]
SOURCE_COLUMN = "source"
"""Bars and factors written to the warehouse carry the label of the source each row came from."""

ChunkAxis = Literal["stocks", "days"]
"""How a long range is cut into chunks without extra calls: by stock batches (sources that
fetch per stock over the whole range) or by date windows (sources that fetch per day)."""


@dataclass(frozen=True)
class FetchFailure:
    """One stock (or one day, when `code` is None) that could not be fetched after retries."""

    code: str | None
    start: dt.date
    end: dt.date
    error_class: str
    message: str
    attempts: int = 1


@dataclass(frozen=True)
class RejectedRow:
    """A row the source returned that failed validation; written to `sync_rejected_row`."""

    code: str
    trade_date: dt.date | None
    reason: str
    raw: str


@dataclass
class FetchResult:
    """Normalised rows plus what could not be fetched. Failures never hide inside `frame`."""

    frame: pd.DataFrame
    failures: list[FetchFailure] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    calls: int = 0
    suspensions: pd.DataFrame | None = None
    """(code, trade_date) the source says were suspended in the range; None = not reported
    (factor fetches). Bar fetches of every source report them."""
    st: pd.DataFrame | None = None
    """(code, trade_date) the source says were ST (or *ST) that day, traded or suspended;
    None = not reported. Only these pairs are ST in `daily_status`."""

    @property
    def failed_codes(self) -> set[str]:
        return {f.code for f in self.failures if f.code is not None}


class MarketSource(abc.ABC):
    """A place that serves A-share market data. Implementations: baostock, tushare, demo."""

    name: ClassVar[str] = "source"

    @abc.abstractmethod
    def trade_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        """Every calendar day in [start, end] with `is_open`."""

    @abc.abstractmethod
    def stock_basic(self) -> pd.DataFrame:
        """The security master (stocks only, no indices), listed and delisted."""

    @abc.abstractmethod
    def daily_bars(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        """Unadjusted daily bars for [start, end]; `codes` limits the fetch (repairs)."""

    @abc.abstractmethod
    def adj_factors(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        """Cumulative adjustment factors, one per stock per traded day in [start, end]."""

    @property
    def chunk_axis(self) -> ChunkAxis:
        """The axis a range sync chunks along at no extra calls (see `ChunkAxis`)."""
        return "days"

    def end_chunk(self) -> None:  # noqa: B027 - optional hook
        """Free what the source cached for the chunk just fetched (a range sync calls it)."""

    @property
    def label(self) -> str:
        """The source's name as stored in the `source` columns (`baostock`, `tushare`, `demo`)."""
        return self.name

    def check_connection(self) -> str:
        """Reach the source once; return a one-line description, raise SourceError if down."""
        today = dt.date.today()
        self.trade_calendar(today - dt.timedelta(days=7), today)
        return f"{self.name}: reachable"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, processes and sockets."""

    def __enter__(self) -> MarketSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def with_source(result: FetchResult, label: str) -> FetchResult:
    """`result` with its rows (and suspensions) labelled `source = label` where unlabelled."""
    frame = result.frame
    if SOURCE_COLUMN not in frame.columns:
        frame = frame.assign(**{SOURCE_COLUMN: label})
    elif frame[SOURCE_COLUMN].isna().any():
        frame = frame.assign(**{SOURCE_COLUMN: frame[SOURCE_COLUMN].fillna(label)})
    result.frame = frame
    suspensions = result.suspensions
    if suspensions is not None and SOURCE_COLUMN not in suspensions.columns:
        result.suspensions = suspensions.assign(**{SOURCE_COLUMN: label})
    return result


def empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=object) for column in columns})
