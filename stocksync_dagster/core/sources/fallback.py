"""A primary source backed by a fallback that fills what the primary could not fetch.

`STOCKSYNC_SOURCE=baostock,tushare`: every fetch goes to the primary first; then the fallback
is asked for exactly what is missing, and its rows are merged in:

- stocks that failed after the primary's own retries (FetchFailure with a code),
- whole days that failed (FetchFailure without a code), and
- for a fetch limited to `codes` (the sync's per-stock re-fetch of days short of the expected
  universe, and repairs): the (code, day) pairs listed and not suspended that the primary left
  out silently.

Every row carries `source`: the label of the source it came from. Suspensions are the union of
both replies. What the fallback could not fill either stays a FetchFailure whose message names
both sources, so it lands in `sync_failure` as with one source. The calendar and the security
master come from the primary, or from the fallback when the primary is down.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence

import pandas as pd

from stocksync_dagster.core import universe
from stocksync_dagster.core.errors import StocksyncError
from stocksync_dagster.core.sources.base import (
    ChunkAxis,
    FetchFailure,
    FetchResult,
    MarketSource,
    with_source,
)

log = logging.getLogger(__name__)

Fetch = Callable[[MarketSource, dt.date, dt.date, Sequence[str] | None], FetchResult]


class FallbackSource(MarketSource):
    """`primary`, with `fallback` filling the stocks and days the primary could not fetch."""

    name = "fallback"

    def __init__(self, primary: MarketSource, fallback: MarketSource) -> None:
        if primary.label == fallback.label:
            raise ValueError(f"primary and fallback are both {primary.label}")
        self.primary = primary
        self.fallback = fallback
        self._basic: pd.DataFrame | None = None

    @property
    def label(self) -> str:
        """`primary+fallback`, e.g. `baostock+tushare` (rows carry the single source's label)."""
        return f"{self.primary.label}+{self.fallback.label}"

    @property
    def sources(self) -> tuple[MarketSource, MarketSource]:
        return self.primary, self.fallback

    @property
    def chunk_axis(self) -> ChunkAxis:
        """The primary's: it serves almost every row (baostock by stocks, Tushare by days)."""
        return self.primary.chunk_axis

    def end_chunk(self) -> None:
        for source in self.sources:
            source.end_chunk()

    # ----- reference data: the primary's, the fallback's when the primary is down -----------
    def trade_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        return self._either(lambda s: s.trade_calendar(start, end), "trade_calendar")

    def stock_basic(self) -> pd.DataFrame:
        self._basic = self._either(lambda s: s.stock_basic(), "stock_basic")
        return self._basic

    def _either(self, call: Callable[[MarketSource], pd.DataFrame], what: str) -> pd.DataFrame:
        try:
            return call(self.primary)
        except StocksyncError as exc:
            log.warning(
                "%s %s failed (%s); asking %s", self.primary.label, what, exc, self.fallback.label
            )
            return call(self.fallback)

    # ----- market data ------------------------------------------------------------------------
    def daily_bars(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        return self._fetch(lambda s, a, b, c: s.daily_bars(a, b, c), start, end, codes)

    def adj_factors(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        return self._fetch(
            lambda s, a, b, c: s.adj_factors(a, b, c), start, end, codes, rescale=True
        )

    def _fetch(
        self,
        fetch: Fetch,
        start: dt.date,
        end: dt.date,
        codes: Sequence[str] | None,
        rescale: bool = False,
    ) -> FetchResult:
        """The primary's reply, completed from the fallback; `rescale`: cumulative factors,
        which a filled day gets on the primary's scale (see `_day_from_fallback`)."""
        result = with_source(fetch(self.primary, start, end, codes), self.primary.label)
        failed_days = sorted(
            {day for f in result.failures if f.code is None for day in _days(f, start, end)}
            | set(self._empty_days(result, start, end))
        )
        stocks = sorted(
            result.failed_codes
            | set(self._silently_absent(result, start, end, codes) if codes is not None else [])
        )
        if not failed_days and not stocks:
            return result
        log.warning(
            "%s could not fetch %d stock(s) and %d whole day(s) of %s..%s; asking %s",
            self.primary.label,
            len(stocks),
            len(failed_days),
            start,
            end,
            self.fallback.label,
        )
        by_stock = (
            with_source(fetch(self.fallback, start, end, stocks), self.fallback.label)
            if stocks
            else None
        )
        by_day = {
            day: self._day_from_fallback(fetch, result, day, failed_days, codes, rescale)
            for day in failed_days
        }
        remaining: list[FetchFailure] = []
        for day in failed_days:  # empty days the primary did not report as failures
            if not any(f.code is None and f.start <= day <= f.end for f in result.failures):
                remaining += _left_over(
                    _empty_day_failure(day), by_day[day], day, day, self._labels
                )
        for failure in result.failures:
            if failure.code is None:
                for day in _days(failure, start, end):
                    remaining += _left_over(failure, by_day[day], day, day, self._labels)
            elif by_stock is not None:
                remaining += _left_over(failure, by_stock, failure.start, failure.end, self._labels)
        for other in [*([by_stock] if by_stock else []), *by_day.values()]:
            _merge_rows(result, other)
        result.failures = remaining
        return result

    def _day_from_fallback(
        self,
        fetch: Fetch,
        result: FetchResult,
        day: dt.date,
        failed_days: Sequence[dt.date],
        codes: Sequence[str] | None,
        rescale: bool,
    ) -> FetchResult:
        """The fallback's reply for `day`. Factors: the fallback is also asked for the nearest
        day the primary served, and each stock's factors are multiplied by primary / fallback
        on that day, so a filled day continues the primary's scale (sources scale cumulative
        factors differently). A stock the primary did not serve that day keeps the fallback's."""
        served = sorted(set(result.frame["trade_date"])) if len(result.frame) else []
        anchors = [d for d in served if d not in failed_days]
        anchor = min(anchors, key=lambda d: (abs((d - day).days), d > day)) if anchors else None
        if not rescale or anchor is None:
            return with_source(fetch(self.fallback, day, day, codes), self.fallback.label)
        reply = fetch(self.fallback, min(anchor, day), max(anchor, day), codes)
        frame = reply.frame
        ours = _factors_on(result.frame, anchor)
        theirs = _factors_on(frame, anchor)
        scale = (ours / theirs).dropna()
        frame = frame[frame["trade_date"] != anchor].copy()
        factor = frame["code"].map(scale).fillna(1.0)
        frame["adj_factor"] = frame["adj_factor"].astype(float) * factor
        reply.frame = frame.reset_index(drop=True)
        return with_source(reply, self.fallback.label)

    @property
    def _labels(self) -> tuple[str, str]:
        return self.primary.label, self.fallback.label

    def _empty_days(self, result: FetchResult, start: dt.date, end: dt.date) -> list[dt.date]:
        """Open days without a single row (or suspension): a whole day lost without an error.
        Also for a fetch of some codes (a range sync fetches baostock in stock batches): a
        day the fallback also has nothing for is then not a failure (see `_left_over`)."""
        seen = set(result.frame["trade_date"]) if len(result.frame) else set()
        if result.suspensions is not None and len(result.suspensions):
            seen |= set(result.suspensions["trade_date"])
        return [d for d in self._open_days(start, end) if d not in seen]

    def _open_days(self, start: dt.date, end: dt.date) -> list[dt.date]:
        calendar = self.trade_calendar(start, end)
        return [d for d, o in zip(calendar["cal_date"], calendar["is_open"], strict=True) if o]

    def _silently_absent(
        self, result: FetchResult, start: dt.date, end: dt.date, codes: Sequence[str]
    ) -> list[str]:
        """Requested stocks with an expected (listed, not suspended) day the reply lacks."""
        if result.suspensions is None:  # factors: sources publish them late and partially
            return []
        basic = self._basic if self._basic is not None else self.stock_basic()
        days = self._open_days(start, end)
        present = universe.pairs(result.frame) | {
            (r.code, r.trade_date) for r in result.rejected if r.trade_date is not None
        }
        failed = set(result.failed_codes)
        absent = universe.expected_absent(
            basic, days, present, universe.pairs(result.suspensions), codes
        )
        return sorted({c for day_codes in absent.values() for c in day_codes} - failed)

    def check_connection(self) -> str:
        lines = []
        for role, source in (("primary", self.primary), ("fallback", self.fallback)):
            lines.append(f"{role} {source.check_connection()}")
        return "; ".join(lines)

    def close(self) -> None:
        for source in (self.primary, self.fallback):
            source.close()


def _factors_on(frame: pd.DataFrame, day: dt.date) -> pd.Series:
    """code -> factor on `day` (the first row of a code that appears twice)."""
    rows = frame[frame["trade_date"] == day].drop_duplicates("code")
    return rows.set_index("code")["adj_factor"].astype(float)


def _empty_day_failure(day: dt.date) -> FetchFailure:
    return FetchFailure(None, day, day, "EmptyDay", f"no rows at all for the open day {day}")


def _days(failure: FetchFailure, start: dt.date, end: dt.date) -> list[dt.date]:
    """The calendar days of a failure, within [start, end]."""
    first, last = max(failure.start, start), min(failure.end, end)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def _merge_rows(result: FetchResult, other: FetchResult) -> None:
    """Add `other`'s rows for the pairs `result` lacks; suspensions: the union."""
    have = universe.pairs(result.frame)
    frame = other.frame
    if len(frame):
        added = frame[
            [(c, d) not in have for c, d in zip(frame["code"], frame["trade_date"], strict=True)]
        ]
        if len(added):
            result.frame = pd.concat([result.frame, added], ignore_index=True)
    result.rejected += [r for r in other.rejected if (r.code, r.trade_date) not in have]
    result.calls += other.calls
    if other.suspensions is None:
        return
    parts = [s for s in (result.suspensions, other.suspensions) if s is not None and len(s)]
    if not parts:
        return
    union = pd.concat(parts, ignore_index=True).drop_duplicates(["code", "trade_date"])
    filled = universe.pairs(result.frame)  # a pair with a bar was not suspended after all
    keep = [(c, d) not in filled for c, d in zip(union["code"], union["trade_date"], strict=True)]
    result.suspensions = union[keep].reset_index(drop=True)


def _left_over(
    failure: FetchFailure,
    other: FetchResult,
    start: dt.date,
    end: dt.date,
    labels: tuple[str, str],
) -> list[FetchFailure]:
    """What of the primary's `failure` (over [start, end]) the fallback's reply did not fill.

    A stock is filled when the fallback returned a row or a suspension for it and no failure;
    a day when the fallback's fetch of it did not fail. What is left names both sources.
    """
    primary, fallback = labels
    overlapping = [
        f
        for f in other.failures
        if (f.code is None or failure.code is None or f.code == failure.code)
        and f.start <= end
        and start <= f.end
    ]
    if overlapping:
        return [
            FetchFailure(
                failure.code or f.code,
                max(start, f.start),
                min(end, f.end),
                failure.error_class,
                f"{primary}: {failure.message}; {fallback}: {f.message}",
                failure.attempts + f.attempts,
            )
            for f in overlapping
        ]
    if failure.code is None:
        return []
    answered = set(other.frame["code"]) if len(other.frame) else set()
    if other.suspensions is not None and len(other.suspensions):
        answered |= set(other.suspensions["code"])
    if failure.code in answered:
        return []
    return [
        FetchFailure(
            failure.code,
            start,
            end,
            failure.error_class,
            f"{primary}: {failure.message}; {fallback}: no rows for {failure.code} in "
            f"{start}..{end}",
            failure.attempts + 1,
        )
    ]
