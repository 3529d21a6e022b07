"""The `tushare` source: Tushare Pro through the real `tushare` client, over a token pool.

Range fetches go by trade date: one `daily(trade_date=...)` (or `adj_factor`) call returns the
whole market for a day, so a year costs ~250 calls per API whatever the number of stocks. Days run
in a thread pool; each call takes a token from the pool (per-token, per-API rate limits).

`codes` (repairs) filters the whole-market reply rather than calling per stock: only a
whole-market reply lets an empty answer be told apart from an HTTP error (the client turns HTTP
errors into empty frames), and a repair covers few days, so it costs the same number of calls.

A reply as long as the row cap is truncated: the day is fetched again per exchange with explicit
`ts_code` lists (halved again if still at the cap). A day that still fails after `max_attempts`
becomes a `FetchFailure(code=None)`; the other days carry on.

ST status per day (`FetchResult.st`) comes from `namechange`: the periods a stock carried an ST
name, as announced up to the range's end (paged with `limit`/`offset`, fetched once per source and
end day). If `namechange` cannot be fetched the bars still sync, with ST not reported.

A `daily` reply short of the expected universe (listed that day minus `suspend_d`'s suspensions)
by more than `short_reply_tolerance` is a failed call too: it is retried; the best reply is
kept after `max_attempts`, and the sync records the stocks still absent in `sync_failure`.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import requests

from stocksync_dagster.core.codes import exchange_of
from stocksync_dagster.core.errors import SourceError, SourceUnavailableError
from stocksync_dagster.core.sources import tushare_normalize as norm
from stocksync_dagster.core.sources.base import (
    ADJ_FACTOR_COLUMNS,
    BAR_COLUMNS,
    SUSPENSION_COLUMNS,
    FetchFailure,
    FetchResult,
    MarketSource,
    RejectedRow,
    empty_frame,
)
from stocksync_dagster.core.sources.progress import Progress
from stocksync_dagster.core.sources.tushare_pool import TOKEN_HELP, TokenPool, rate_limit_count

logger = logging.getLogger(__name__)

DEFAULT_ROW_CAP = 6000
_MAX_BACKOFF_SECONDS = 60.0
_EXCHANGES = {"SH": "SSE", "SZ": "SZSE", "BJ": "BSE"}
SUSPEND_FIELDS = ("ts_code", "trade_date", "suspend_type")
DEFAULT_SHORT_REPLY_TOLERANCE = 0.001  # share of the expected stocks a day reply may lack
DayNormalizer = Callable[[pd.DataFrame, dt.date], tuple[pd.DataFrame, list[RejectedRow]]]


class _CallFailedError(Exception):
    """A call still failed after its retries (message already free of tokens)."""

    def __init__(self, error_class: str, message: str, attempts: int) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.attempts = attempts


@dataclass
class _DayResult:
    frame: pd.DataFrame | None = None
    rejected: list[RejectedRow] = field(default_factory=list)
    failure: FetchFailure | None = None
    calls: int = 0
    suspended: list[str] = field(default_factory=list)


class TushareSource(MarketSource):
    """Tushare Pro over a pool of tokens, each rate-limited per API.

    `tokens`: one or more Tushare tokens (never logged; named as `token #N (ab…yz)`).
    `api_url`: base URL instead of the library's own. `calls_per_minute`: per token and API.
    `max_attempts` / `backoff_seconds`: retries of a failing call (exponential, with jitter).
    `call_timeout_seconds`: the HTTP timeout, which bounds a hung call.
    `row_cap`: replies this long are truncated and get split. `workers`: concurrent calls
    (default 4 per token). `rate_limit_pause_seconds`: first pause of a token the server
    refused for rate (doubles per refusal). `rate_window_seconds`: the limiter's window (tests).
    `short_reply_tolerance`: share of the expected stocks a `daily` reply may lack before it is
    retried as a failed call.
    """

    name = "tushare"

    def __init__(
        self,
        tokens: Sequence[str],
        api_url: str | None = None,
        calls_per_minute: int = 500,
        max_attempts: int = 5,
        backoff_seconds: float = 1.0,
        call_timeout_seconds: float = 30.0,
        *,
        row_cap: int = DEFAULT_ROW_CAP,
        workers: int | None = None,
        rate_limit_pause_seconds: float = 5.0,
        rate_window_seconds: float = 60.0,
        short_reply_tolerance: float = DEFAULT_SHORT_REPLY_TOLERANCE,
    ) -> None:
        import tushare  # slow import (~0.5 s): only when the source is used

        if any(not t or not t.strip() for t in tokens):
            raise SourceUnavailableError(
                "tushare", "token pool", "an empty token was given", what_to_do=TOKEN_HELP
            )
        if max_attempts < 1 or row_cap < 2:
            raise ValueError("max_attempts must be >= 1 and row_cap >= 2")
        self.api_url = api_url.rstrip("/") if api_url else None
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.call_timeout_seconds = call_timeout_seconds
        self.row_cap = row_cap
        self.short_reply_tolerance = short_reply_tolerance
        self.workers = workers or min(32, 4 * len(tokens))

        def make_client(token: str) -> Any:
            client = tushare.pro_api(token, timeout=call_timeout_seconds)
            if self.api_url:
                client._DataApi__http_url = self.api_url
            return client

        self.pool = TokenPool(
            tokens,
            make_client,
            calls_per_minute=calls_per_minute,
            window_seconds=rate_window_seconds,
            rate_limit_pause_seconds=rate_limit_pause_seconds,
        )
        self._lock = threading.Lock()
        self._basic_lock = threading.Lock()
        self._calendars: dict[tuple[dt.date, dt.date], pd.DataFrame] = {}
        self._stock_basic: pd.DataFrame | None = None
        self._st_periods: dict[dt.date, pd.DataFrame] = {}
        self.namechange_page = row_cap
        """Rows asked for per `namechange` page (`limit`)."""

    # ----- MarketSource -------------------------------------------------------------------
    def trade_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        """SSE calendar for [start, end]; raises SourceError if it cannot be fetched whole."""
        return self._calendar(start, end, _DayResult()).copy()

    def _calendar(self, start: dt.date, end: dt.date, counter: _DayResult) -> pd.DataFrame:
        """The calendar, fetched once per source and range (daily_bars and adj_factors share it)."""
        with self._lock:
            cached = self._calendars.get((start, end))
        if cached is not None:
            return cached
        try:
            frame = norm.calendar_frame(self._calendar_raw(start, end, counter), start, end)
        except (_CallFailedError, norm.MalformedReplyError) as exc:
            raise SourceError(
                "tushare", "trade_cal", f"{start}..{end}: {exc}", what_to_do="retry later"
            ) from None
        with self._lock:
            self._calendars[(start, end)] = frame
        return frame

    def stock_basic(self) -> pd.DataFrame:
        """Listed (L), paused (P) and delisted (D) stocks; `P` maps to status `listed`."""
        return self._basic(_DayResult()).copy()

    def _basic(self, counter: _DayResult) -> pd.DataFrame:
        """The master, fetched once per source (truncated days need it to split)."""
        with self._basic_lock:
            if self._stock_basic is None:
                self._stock_basic = self._fetch_stock_basic(counter)
            return self._stock_basic

    def _fetch_stock_basic(self, counter: _DayResult) -> pd.DataFrame:
        parts = []
        try:
            for status in ("L", "D", "P"):
                # an empty L list can only be an HTTP error; D and P may really be empty
                parts.append(self._stock_basic_raw(status, status == "L", counter))
            frame, skipped = norm.stock_basic_frame(pd.concat(parts, ignore_index=True))
        except (_CallFailedError, norm.MalformedReplyError) as exc:
            raise SourceError(
                "tushare", "stock_basic", str(exc), what_to_do="retry later"
            ) from None
        if skipped:
            logger.warning(
                "tushare stock_basic: skipped %d unparseable code(s): %s",
                len(skipped),
                skipped[:10],
            )
        return frame

    def daily_bars(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        """Unadjusted bars, one `daily(trade_date=...)` call per open day; ST from `namechange`."""
        result = self._fetch_range(
            "daily", norm.BAR_FIELDS, norm.bars_frame, BAR_COLUMNS, start, end, codes
        )
        counter = _DayResult()
        try:
            periods = self._st_intervals(end, counter)
        except (_CallFailedError, norm.MalformedReplyError) as exc:
            logger.warning(
                "tushare namechange: %s; ST status of %s..%s not reported", exc, start, end
            )
        else:
            listed = pd.concat(
                [result.frame[["code", "trade_date"]], result.suspensions], ignore_index=True
            )
            result.st = norm.st_pairs(periods, listed)
        result.calls += counter.calls
        return result

    def _st_intervals(self, end: dt.date, counter: _DayResult) -> pd.DataFrame:
        """ST periods announced up to `end`, every page of `namechange` (cached per end)."""
        with self._lock:
            cached = self._st_periods.get(end)
        if cached is not None:
            return cached
        pages = []
        offset = 0
        while True:
            page = self._call(
                "namechange",
                norm.NAMECHANGE_FIELDS,
                counter,
                f"namechange to {end} (offset {offset})",
                expect_rows=offset == 0,
                end_date=norm.ymd(end),
                limit=str(self.namechange_page),
                offset=str(offset),
            )
            pages.append(page)
            if len(page) < self.namechange_page:
                break
            offset += len(page)
        periods = norm.st_intervals(pd.concat(pages, ignore_index=True))
        with self._lock:
            self._st_periods[end] = periods
        return periods

    def adj_factors(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        """Cumulative factors, one `adj_factor(trade_date=...)` call per open day."""
        return self._fetch_range(
            "adj_factor",
            norm.ADJ_FACTOR_FIELDS,
            norm.adj_factor_frame,
            ADJ_FACTOR_COLUMNS,
            start,
            end,
            codes,
        )

    def check_connection(self) -> str:
        super().check_connection()
        return (
            f"tushare: reachable, {self.pool.usable_count('trade_cal')} usable token(s) in the pool"
        )

    # ----- range fetch ----------------------------------------------------------------------
    def _fetch_range(
        self,
        api: str,
        fields: tuple[str, ...],
        normalize: DayNormalizer,
        columns: list[str],
        start: dt.date,
        end: dt.date,
        codes: Sequence[str] | None,
    ) -> FetchResult:
        counter = _DayResult()
        calendar = self._calendar(start, end, counter)
        days = list(calendar.loc[calendar["is_open"], "cal_date"])
        executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=f"tushare-{api}")
        progress = Progress(logger, f"tushare {api} {start}..{end}", len(days), unit="days")
        try:
            futures = [
                executor.submit(self._fetch_day, api, fields, normalize, day) for day in days
            ]
            for future in futures:
                future.add_done_callback(lambda _: progress.advance())
            results = [future.result() for future in futures]
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        frames = [r.frame for r in results if r.frame is not None and len(r.frame)]
        frame = pd.concat(frames, ignore_index=True) if frames else empty_frame(columns)
        rejected = [row for r in results for row in r.rejected]
        if codes is not None:
            wanted = set(codes)
            frame = frame[frame["code"].isin(wanted)]
            rejected = [row for row in rejected if row.code in wanted]
        frame = frame.sort_values(["trade_date", "code"], kind="stable").reset_index(drop=True)
        suspensions = pd.DataFrame.from_records(
            [(code, day) for day, r in zip(days, results, strict=True) for code in r.suspended],
            columns=SUSPENSION_COLUMNS,
        )
        if codes is not None:
            suspensions = suspensions[suspensions["code"].isin(set(codes))]
        failures = [r.failure for r in results if r.failure is not None]
        for failure in failures:
            logger.warning("tushare %s %s: %s", api, failure.start, failure.message)
        if rejected:
            logger.warning("tushare %s: rejected %d malformed row(s)", api, len(rejected))
        return FetchResult(
            frame=frame[columns],
            failures=failures,
            rejected=rejected,
            calls=sum(r.calls for r in results) + counter.calls,
            suspensions=suspensions.reset_index(drop=True) if api == "daily" else None,
        )

    def _fetch_day(
        self, api: str, fields: tuple[str, ...], normalize: DayNormalizer, day: dt.date
    ) -> _DayResult:
        result = _DayResult()
        try:
            if api == "daily":
                raw = self._full_day_raw(api, fields, day, result)
            else:
                raw = self._day_raw(api, fields, day, result)
            result.frame, result.rejected = normalize(raw, day)
        except _CallFailedError as exc:
            result.failure = FetchFailure(None, day, day, exc.error_class, str(exc), exc.attempts)
        except norm.MalformedReplyError as exc:
            result.failure = FetchFailure(None, day, day, "MalformedReply", str(exc), 1)
        return result

    def _full_day_raw(
        self, api: str, fields: tuple[str, ...], day: dt.date, result: _DayResult
    ) -> pd.DataFrame:
        """A `daily` day checked against the expected universe; a short reply is retried.

        Sets `result.suspended`: stocks `suspend_d` lists that have no bar (an intraday halt
        still has a bar, so it is not a suspension here).
        """
        suspended = self._suspended_codes(day, result)
        expected = self._listed_codes(day, result) - suspended
        raw = self._day_raw(api, fields, day, result)
        attempts = 1
        while True:
            absent = expected - set(raw["ts_code"].dropna().astype(str)) if len(raw) else expected
            short = len(absent) > self.short_reply_tolerance * len(expected)
            if not short or attempts >= self.max_attempts:
                break
            delay = self._backoff(attempts)
            logger.warning(
                "tushare %s %s: short reply, %d of %d expected stocks absent; retry in %.2f s",
                api,
                day,
                len(absent),
                len(expected),
                delay,
            )
            time.sleep(delay)
            again = self._day_raw(api, fields, day, result)
            attempts += 1
            if len(again) > len(raw):
                raw = again
        if short:
            logger.warning(
                "tushare %s %s: still %d of %d expected stocks absent after %d attempts; they "
                "are recorded as sync failures",
                api,
                day,
                len(absent),
                len(expected),
                attempts,
            )
        traded = set(raw["ts_code"].dropna().astype(str)) if len(raw) else set()
        result.suspended = sorted(suspended - traded)
        return raw

    def _suspended_codes(self, day: dt.date, result: _DayResult) -> set[str]:
        raw = self._call(
            "suspend_d",
            SUSPEND_FIELDS,
            result,
            f"suspend_d {day}",
            expect_rows=False,
            trade_date=norm.ymd(day),
            suspend_type="S",
        )
        if len(raw) >= self.row_cap:
            raise _CallFailedError("Truncated", f"suspend_d {day}: reply at the row cap", 1)
        if not len(raw):
            return set()
        return {c.strip().upper() for c in raw["ts_code"].dropna().astype(str)}

    def _day_raw(
        self, api: str, fields: tuple[str, ...], day: dt.date, result: _DayResult
    ) -> pd.DataFrame:
        """The whole market's rows for a day; a reply at the row cap is split by exchange."""
        raw = self._call(api, fields, result, f"{api} {day}", trade_date=norm.ymd(day))
        if len(raw) < self.row_cap:
            return raw
        logger.info(
            "tushare %s %s: %d rows = the row cap; splitting by exchange", api, day, len(raw)
        )
        wanted = set(raw["ts_code"].dropna().astype(str)) | self._listed_codes(day, result)
        groups: dict[str, list[str]] = {}
        for code in sorted(wanted):
            groups.setdefault(_exchange_or_other(code), []).append(code)
        parts = []
        for exchange, group in sorted(groups.items()):
            parts += self._codes_raw(api, fields, day, group, result, exchange)
        return pd.concat(parts, ignore_index=True)

    def _codes_raw(
        self,
        api: str,
        fields: tuple[str, ...],
        day: dt.date,
        codes: list[str],
        result: _DayResult,
        label: str,
    ) -> list[pd.DataFrame]:
        """Rows of `codes` on `day`, in chunks small enough to stay under the row cap."""
        if len(codes) >= self.row_cap:
            half = len(codes) // 2
            return self._codes_raw(api, fields, day, codes[:half], result, label) + self._codes_raw(
                api, fields, day, codes[half:], result, label
            )
        what = f"{api} {day} ({label}, {len(codes)} codes)"
        raw = self._call(
            api, fields, result, what, trade_date=norm.ymd(day), ts_code=",".join(codes)
        )
        if len(raw) < self.row_cap:
            return [raw]
        if len(codes) == 1:
            raise _CallFailedError("Truncated", f"{what}: reply still at the row cap", 1)
        return self._codes_raw(
            api, fields, day, codes[: len(codes) // 2], result, label
        ) + self._codes_raw(api, fields, day, codes[len(codes) // 2 :], result, label)

    def _listed_codes(self, day: dt.date, counter: _DayResult) -> set[str]:
        basic = self._basic(counter)
        listed = (basic["list_date"].map(lambda d: d is None or d <= day)) & (
            basic["delist_date"].map(lambda d: d is None or d > day)
        )
        return set(basic.loc[listed, "code"])

    def _calendar_raw(self, start: dt.date, end: dt.date, counter: _DayResult) -> pd.DataFrame:
        what = f"trade_cal {start}..{end}"
        raw = self._call(
            "trade_cal",
            norm.CALENDAR_FIELDS,
            counter,
            what,
            exchange="SSE",
            start_date=norm.ymd(start),
            end_date=norm.ymd(end),
        )
        if len(raw) < self.row_cap:
            return raw
        if start == end:
            raise _CallFailedError("Truncated", f"{what}: reply at the row cap", 1)
        middle = start + (end - start) / 2
        return pd.concat(
            [
                self._calendar_raw(start, middle, counter),
                self._calendar_raw(middle + dt.timedelta(days=1), end, counter),
            ],
            ignore_index=True,
        )

    def _stock_basic_raw(self, status: str, expect_rows: bool, counter: _DayResult) -> pd.DataFrame:
        fields = norm.STOCK_BASIC_FIELDS
        raw = self._call(
            "stock_basic",
            fields,
            counter,
            f"stock_basic {status}",
            expect_rows=expect_rows,
            list_status=status,
        )
        if len(raw) < self.row_cap:
            return raw
        parts = []
        for exchange in _EXCHANGES.values():
            what = f"stock_basic {status} {exchange}"
            part = self._call(
                "stock_basic",
                fields,
                counter,
                what,
                expect_rows=False,
                list_status=status,
                exchange=exchange,
            )
            if len(part) >= self.row_cap:
                raise _CallFailedError("Truncated", f"{what}: reply at the row cap", 1)
            parts.append(part)
        return pd.concat(parts, ignore_index=True)

    # ----- one call, with retries -------------------------------------------------------------
    def _call(
        self,
        api: str,
        fields: tuple[str, ...],
        result: _DayResult,
        what: str,
        expect_rows: bool = True,
        **params: str,
    ) -> pd.DataFrame:
        """One Tushare call, retried with backoff; token problems move it to another token.

        `expect_rows`: an empty reply is an HTTP error in disguise (the client returns an empty
        frame for any status >= 400), so it is retried like one.
        """
        attempts = refusals = 0
        while True:
            entry = self.pool.acquire(api)
            result.calls += 1
            try:
                frame = entry.client.query(api, fields=",".join(fields), **params)
            except requests.Timeout:
                error = ("Timeout", f"no reply within {self.call_timeout_seconds:g} s")
            except requests.RequestException as exc:
                error = (type(exc).__name__, self.pool.scrub(str(exc)))
            except Exception as exc:  # the client raises a bare Exception(msg) for code != 0
                message = str(exc)
                if rate_limit_count(message) is not None:
                    refusals += 1
                    pause = self.pool.rate_limited(entry, api, message)
                    logger.info(
                        "tushare %s: %s rate-limited, paused %.1f s", what, entry.label, pause
                    )
                    if refusals <= 10 * self.max_attempts:
                        continue
                    error = ("RateLimited", f"still rate-limited after {refusals} refusals")
                elif "token不对" in message:
                    self.pool.remove(entry, "the server says this token is invalid (您的token不对)")
                    continue
                elif "没有接口访问权限" in message:
                    self.pool.deny(entry, api, f"no permission for {api} (您没有接口访问权限)")
                    continue
                else:
                    error = ("TushareError", self.pool.scrub(f"{type(exc).__name__}: {message}"))
            else:
                if len(frame) or not expect_rows:
                    self.pool.succeeded(entry, api)
                    return frame
                error = ("EmptyReply", "empty reply (the client returns one for HTTP errors)")
            attempts += 1
            if attempts >= self.max_attempts or error[0] == "RateLimited":
                raise _CallFailedError(
                    error[0], f"{what}: {error[1]} (after {attempts} attempt(s))", attempts
                )
            delay = self._backoff(attempts)
            logger.info("tushare %s: %s: %s; retry in %.2f s", what, error[0], error[1], delay)
            time.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter (0.5x-1.5x), capped."""
        delay = self.backoff_seconds * 2 ** (attempt - 1)
        return min(delay, _MAX_BACKOFF_SECONDS) * random.uniform(0.5, 1.5)


def _exchange_or_other(code: str) -> str:
    try:
        return exchange_of(code)
    except ValueError:
        return "other"
