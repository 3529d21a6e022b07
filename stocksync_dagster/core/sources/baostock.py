"""The `baostock` source: range fetches per stock through a pool of logged-in worker processes.

Calls per stock for a range [start, end] (each may span pages, and retries add calls):

- bars: 1 `query_history_k_data_plus` (unadjusted, the whole range at once).
- factors: 1 `query_adjust_factor` (ex-right rows up to `end`) + 1 `query_history_k_data_plus`
  with only `date,code,tradestatus` to learn the stock's traded days; the second call is skipped
  when this source already fetched the stock's bars for a covering range.
- per range fetch, once: `query_stock_basic` for the universe (cached for the source's life).

A range sync chunks baostock by stock batches (`chunk_axis == "stocks"`): each batch's bars,
then its factors, so the traded days are reused; `end_chunk` frees them, so the cache never
holds more than one batch.

Rows the service sends that do not parse go to `FetchResult.rejected`; stocks that still fail
after the retries go to `FetchResult.failures`. See `baostock_worker` for the watchdog.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from stocksync_dagster.core import universe as market_universe
from stocksync_dagster.core.codes import board_of, from_baostock, to_baostock
from stocksync_dagster.core.errors import SourceError
from stocksync_dagster.core.sources.baostock_worker import Call, Outcome, Task, WorkerPool
from stocksync_dagster.core.sources.base import (
    ADJ_FACTOR_COLUMNS,
    BAR_COLUMNS,
    CALENDAR_COLUMNS,
    STOCK_BASIC_COLUMNS,
    SUSPENSION_COLUMNS,
    ChunkAxis,
    FetchFailure,
    FetchResult,
    MarketSource,
    RejectedRow,
)
from stocksync_dagster.core.sources.progress import Progress

logger = logging.getLogger(__name__)

BAR_FIELDS = "date,code,open,high,low,close,preclose,volume,amount,pctChg,tradestatus,isST"
# normalised column <- baostock field
_NUMERIC = {
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "pre_close": "preclose",
    "volume": "volume",
    "amount": "amount",
    "pct_chg": "pctChg",
}
DAYS_FIELDS = "date,code,tradestatus"
FACTOR_HISTORY_START = "1990-01-01"  # factors are cumulative: read every ex-right day up to end
STOCK_TYPE = "1"  # query_stock_basic type: 1 stock, 2 index, 3 other, 4 convertible, 5 ETF
# Parsed rows are turned into a DataFrame every this many rows: tuples of Python floats cost
# ~5x the memory of the frame's columns, and a year of the whole market is over a million rows.
COMPACT_ROWS = 50_000
WHAT_TO_DO = "The stock is recorded as a sync failure; the repair sensor or a rerun fetches it"


class _Reject(ValueError):
    """A row that does not parse; the message is the reason."""


def _number(text: str, field: str) -> float:
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise _Reject(f"{field} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise _Reject(f"{field} is not finite: {text!r}")
    return value


@functools.lru_cache(maxsize=8192)  # a year has ~250 distinct dates: share one object per day
def _day(text: str, field: str = "date") -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise _Reject(f"{field} is not a YYYY-MM-DD date: {text!r}") from None


@dataclass
class _Parsed:
    rows: list[tuple]
    traded_days: list[dt.date]
    suspended_days: list[dt.date]
    st_days: list[dt.date]
    """Days (traded or suspended) the reply's `isST` says the stock was ST."""


def parse_bars(
    fields: list[str],
    rows: list[list[str]],
    code: str,
    start: dt.date,
    end: dt.date,
    rejected: list[RejectedRow],
) -> _Parsed:
    """Rows of `query_history_k_data_plus` for `code` -> normalised tuples in BAR_COLUMNS order.

    Suspended rows (tradestatus "0") become `suspended_days`, not bars; unparseable rows go to
    `rejected`. Rows with `isST` "1" (when asked for) are also in `st_days`.
    """
    position = {name: i for i, name in enumerate(fields)}
    missing = [f for f in ("date", "code", "tradestatus") if f not in position]
    if missing:
        raise _Reject(f"reply lacks fields {missing}")
    wanted = [(column, position.get(field)) for column, field in _NUMERIC.items()]
    bao_code = to_baostock(code)
    parsed, days, suspended, st_days, seen = [], [], [], [], set()
    st_at = position.get("isST")
    for row in rows:
        try:
            if len(row) != len(fields):
                raise _Reject(f"{len(row)} values for {len(fields)} fields")
            row_code = row[position["code"]]
            if row_code != bao_code:
                normalised = from_baostock(row_code) if _is_bao(row_code) else None
                raise _Reject(
                    f"code {row_code!r} in the reply for {bao_code}"
                    if normalised
                    else f"unknown code format {row_code!r}"
                )
            day = _day(row[position["date"]])
            if not start <= day <= end:
                raise _Reject(f"date {day} outside the requested {start}..{end}")
            status = row[position["tradestatus"]]
            if status not in ("0", "1"):
                raise _Reject(f"tradestatus is {status!r}, not 0 or 1")
            if day in seen:
                raise _Reject(f"second row for {day}")
            st_flag = row[st_at] if st_at is not None else ""
            if st_flag not in ("0", "1", ""):
                raise _Reject(f"isST is {st_flag!r}, not 0 or 1")
            try:  # fast path: every value a finite number
                values = tuple(float(row[i]) if i is not None else math.nan for _, i in wanted)
                if not all(map(math.isfinite, values)):
                    raise ValueError
            except ValueError:
                values = tuple(
                    _number(row[i], column) if i is not None else math.nan for column, i in wanted
                )
        except _Reject as exc:
            rejected.append(_rejected_row(code, row, fields, str(exc)))
            continue
        seen.add(day)
        if st_flag == "1":
            st_days.append(day)
        if status == "0":
            suspended.append(day)  # suspended: no bar, a suspension
            continue
        days.append(day)
        parsed.append((code, day, *values))
    return _Parsed(parsed, days, suspended, st_days)


def parse_factors(
    fields: list[str], rows: list[list[str]], code: str, rejected: list[RejectedRow]
) -> list[tuple[dt.date, float]]:
    """Ex-right rows of `query_adjust_factor` -> sorted (day, cumulative backAdjustFactor)."""
    position = {name: i for i, name in enumerate(fields)}
    if "dividOperateDate" not in position or "backAdjustFactor" not in position:
        raise _Reject("reply lacks dividOperateDate/backAdjustFactor")
    found: dict[dt.date, float] = {}
    for row in rows:
        try:
            if len(row) != len(fields):
                raise _Reject(f"{len(row)} values for {len(fields)} fields")
            day = _day(row[position["dividOperateDate"]], "dividOperateDate")
            factor = _number(row[position["backAdjustFactor"]], "backAdjustFactor")
            if not factor > 0:
                raise _Reject(f"backAdjustFactor is not positive: {factor}")
            if day in found:
                raise _Reject(f"second ex-right row for {day}")
        except _Reject as exc:
            rejected.append(_rejected_row(code, row, fields, str(exc)))
            continue
        found[day] = factor
    return sorted(found.items())


def expand_factors(
    code: str, ex_rights: list[tuple[dt.date, float]], traded_days: Sequence[dt.date]
) -> list[tuple[str, dt.date, float]]:
    """The cumulative factor on each traded day: the last ex-right factor on or before it (1.0
    before the first)."""
    ex_days = [day for day, _ in ex_rights]
    out = []
    for day in traded_days:
        i = bisect.bisect_right(ex_days, day)
        out.append((code, day, ex_rights[i - 1][1] if i else 1.0))
    return out


def _is_bao(text: str) -> bool:
    try:
        from_baostock(text)
    except ValueError:
        return False
    return True


def _rejected_row(code: str, row: list[str], fields: list[str], reason: str) -> RejectedRow:
    day = None
    if "date" in fields and len(row) > fields.index("date"):
        try:
            day = dt.date.fromisoformat(row[fields.index("date")])
        except (TypeError, ValueError):
            day = None
    return RejectedRow(code=code, trade_date=day, reason=reason, raw=",".join(map(str, row)))


def _frame(rows: list[tuple], columns: list[str], parts: list[pd.DataFrame]) -> pd.DataFrame:
    """`parts` (compacted earlier) and `rows` as one frame sorted by trade_date, code.

    Takes ownership: `rows` and `parts` are emptied as soon as they are copied, so a year of
    the market is held at most twice (while concatenating, then while sorting).
    """
    if rows or not parts:
        parts.append(pd.DataFrame.from_records(rows, columns=columns))
        rows.clear()
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    parts.clear()
    if frame.empty:
        frame = frame.astype({c: "float64" for c in columns if c not in ("code", "trade_date")})
    return frame.sort_values(["trade_date", "code"], kind="stable", ignore_index=True)


class BaostockSource(MarketSource):
    """baostock through `workers` logged-in processes, each call under a watchdog."""

    name = "baostock"

    def __init__(
        self,
        server: tuple[str, int] | None = None,
        workers: int = 4,
        call_timeout_seconds: float = 60.0,
        max_attempts: int = 4,
        backoff_seconds: float = 1.0,
    ) -> None:
        """`server` is (host, port), None for the library's own; the values are validated by
        `BaostockSourceResource`, which is how the project configures this source."""
        self._pool = WorkerPool(
            server=server,
            size=workers,
            call_timeout=call_timeout_seconds,
            max_attempts=max_attempts,
            backoff=backoff_seconds,
            source_name=self.name,
        )
        self._basic: pd.DataFrame | None = None
        # code -> (start, end, traded days) from the last successful bar fetch
        self._traded: dict[str, tuple[dt.date, dt.date, list[dt.date]]] = {}

    # ----- single calls -----------------------------------------------------------------------
    def _one(self, function: str, **kwargs: str) -> tuple[list[str], list[list[str]]]:
        outcomes: list[Outcome] = []
        self._pool.run([Task(function, (Call(function, kwargs),))], outcomes.append)
        outcome = outcomes[0]
        if not outcome.ok:
            raise SourceError(
                self.name,
                function,
                f"{kwargs or 'no arguments'} failed after {outcome.attempts} attempts: "
                f"{outcome.error_class}: {outcome.detail}",
                what_to_do=f"Check that {self._pool.server_label} is reachable, then retry",
            )
        assert outcome.results is not None
        return outcome.results[0]

    def _positions(self, function: str, fields: list[str], needed: Sequence[str]) -> dict[str, int]:
        missing = [name for name in needed if name not in fields]
        if missing:
            raise SourceError(
                self.name,
                function,
                f"reply lacks fields {missing} (got {fields})",
                what_to_do="Check that BAOSTOCK_SERVER points at a baostock server",
            )
        return {name: i for i, name in enumerate(fields)}

    def trade_calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        fields, rows = self._one(
            "query_trade_dates", start_date=start.isoformat(), end_date=end.isoformat()
        )
        pos = self._positions("query_trade_dates", fields, ("calendar_date", "is_trading_day"))
        day_i, open_i = pos["calendar_date"], pos["is_trading_day"]
        try:
            cal = {_day(r[day_i]): r[open_i] == "1" for r in rows if len(r) == len(fields)}
        except _Reject as exc:
            raise SourceError(self.name, "query_trade_dates", str(exc)) from None
        days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        missing = [d for d in days if d not in cal]
        if missing:
            raise SourceError(
                self.name,
                "query_trade_dates",
                f"{start}..{end} came back without {len(missing)} days (first {missing[0]})",
                what_to_do="Retry; the reply was incomplete",
            )
        return pd.DataFrame({"cal_date": days, "is_open": [cal[d] for d in days]})[CALENDAR_COLUMNS]

    def stock_basic(self) -> pd.DataFrame:
        """Stocks only (type 1); indices, ETFs and bonds are excluded."""
        if self._basic is not None:
            return self._basic.copy()
        fields, rows = self._one("query_stock_basic")
        needed = ("code", "code_name", "ipoDate", "outDate", "type", "status")
        pos = self._positions("query_stock_basic", fields, needed)
        records = []
        for row in rows:
            if len(row) != len(fields) or row[pos["type"]] != STOCK_TYPE:
                continue
            try:
                code = from_baostock(row[pos["code"]])
                listed = _day(row[pos["ipoDate"]], "ipoDate")
                out = row[pos["outDate"]]
                delisted = _day(out, "outDate") if out else None
            except (ValueError, _Reject) as exc:
                logger.warning("baostock query_stock_basic: skipping row %s: %s", row, exc)
                continue
            name = row[pos["code_name"]]
            records.append(
                (
                    code,
                    name,
                    code[-2:],
                    board_of(code),
                    listed,
                    delisted,
                    "listed" if row[pos["status"]] == "1" else "delisted",
                    "ST" in name.upper(),
                )
            )
        self._basic = pd.DataFrame.from_records(records, columns=STOCK_BASIC_COLUMNS)
        return self._basic.copy()

    def _universe(self, start: dt.date, end: dt.date, codes: Sequence[str] | None) -> list[str]:
        if codes is not None:
            for code in codes:
                to_baostock(code)  # ValueError on a code that is not normalised
            return sorted(set(codes))
        return market_universe.alive_between(self.stock_basic(), start, end)

    # ----- range fetches ----------------------------------------------------------------------
    def _failure(self, outcome: Outcome, start: dt.date, end: dt.date) -> FetchFailure:
        message = str(
            SourceError(
                self.name,
                outcome.function,
                f"{outcome.key} {start}..{end}: {outcome.detail} "
                f"(after {outcome.attempts} attempts)",
                what_to_do=WHAT_TO_DO,
            )
        )
        return FetchFailure(outcome.key, start, end, outcome.error_class, message, outcome.attempts)

    def _bars_call(self, code: str, start: dt.date, end: dt.date, fields: str) -> Call:
        return Call(
            "query_history_k_data_plus",
            {
                "code": to_baostock(code),
                "fields": fields,
                "start_date": start.isoformat(),
                "end_date": end.isoformat(),
                "frequency": "d",
                "adjustflag": "3",
            },
        )

    def _fetch(
        self,
        what: str,
        tasks: list[Task],
        start: dt.date,
        end: dt.date,
        columns: list[str],
        parse: Callable[[Outcome, list[RejectedRow]], list[tuple]],
    ) -> FetchResult:
        """Run one task per stock; parse each outcome as it arrives (overlapping the network)."""
        calls_before = self._pool.calls
        rows: list[tuple] = []
        parts: list[pd.DataFrame] = []
        result = FetchResult(frame=pd.DataFrame())
        progress = Progress(logger, f"baostock {what} {start}..{end}", len(tasks))

        def on_outcome(outcome: Outcome) -> None:
            progress.advance()
            if outcome.ok:
                try:
                    rows.extend(parse(outcome, result.rejected))
                    if len(rows) >= COMPACT_ROWS:
                        parts.append(pd.DataFrame.from_records(rows, columns=columns))
                        rows.clear()
                    return
                except _Reject as exc:
                    outcome.error_class, outcome.detail = "BadReply", str(exc)
            result.failures.append(self._failure(outcome, start, end))

        self._pool.run(tasks, on_outcome)
        result.frame = _frame(rows, columns, parts)
        result.calls = self._pool.calls - calls_before
        logger.info(
            "baostock %s %s..%s: %d stocks, %d rows, %d calls, %d failed, %d rows rejected",
            what,
            start,
            end,
            len(tasks),
            len(result.frame),
            result.calls,
            len(result.failures),
            len(result.rejected),
        )
        return result

    def daily_bars(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        universe = self._universe(start, end, codes)
        tasks = [Task(c, (self._bars_call(c, start, end, BAR_FIELDS),)) for c in universe]
        suspensions: list[tuple[str, dt.date]] = []
        st: list[tuple[str, dt.date]] = []

        def parse(outcome: Outcome, rejected: list[RejectedRow]) -> list[tuple]:
            fields, raw = outcome.results[0]  # type: ignore[index]
            parsed = parse_bars(fields, raw, outcome.key, start, end, rejected)
            self._remember_days(outcome.key, start, end, parsed.traded_days)
            suspensions.extend((outcome.key, day) for day in parsed.suspended_days)
            st.extend((outcome.key, day) for day in parsed.st_days)
            return parsed.rows

        result = self._fetch("bars", tasks, start, end, BAR_COLUMNS, parse)
        result.suspensions = pd.DataFrame.from_records(suspensions, columns=SUSPENSION_COLUMNS)
        result.st = pd.DataFrame.from_records(st, columns=SUSPENSION_COLUMNS)
        return result

    def _remember_days(self, code: str, start: dt.date, end: dt.date, days: list[dt.date]) -> None:
        """Cache `code`'s traded days; a narrower re-fetch inside the cached range updates it."""
        cached = self._traded.get(code)
        if cached is not None and cached[0] <= start and end <= cached[1]:
            kept = [d for d in cached[2] if not start <= d <= end]
            self._traded[code] = (cached[0], cached[1], sorted([*kept, *days]))
        else:
            self._traded[code] = (start, end, days)

    @property
    def chunk_axis(self) -> ChunkAxis:
        """Stock batches: one call per stock covers the whole range, whatever its length."""
        return "stocks"

    def end_chunk(self) -> None:
        """Forget the batch's traded days (kept for its factor fetch)."""
        self._traded.clear()

    def _cached_days(self, code: str, start: dt.date, end: dt.date) -> list[dt.date] | None:
        cached = self._traded.get(code)
        if cached is None or not (cached[0] <= start and end <= cached[1]):
            return None
        return [d for d in cached[2] if start <= d <= end]

    def adj_factors(
        self, start: dt.date, end: dt.date, codes: Sequence[str] | None = None
    ) -> FetchResult:
        universe = self._universe(start, end, codes)
        factor_kwargs = {"start_date": FACTOR_HISTORY_START, "end_date": end.isoformat()}
        tasks = []
        for code in universe:
            calls = [Call("query_adjust_factor", {"code": to_baostock(code), **factor_kwargs})]
            if self._cached_days(code, start, end) is None:
                calls.append(self._bars_call(code, start, end, DAYS_FIELDS))
            tasks.append(Task(code, tuple(calls)))

        def parse(outcome: Outcome, rejected: list[RejectedRow]) -> list[tuple]:
            results = outcome.results or []
            ex_rights = parse_factors(*results[0], outcome.key, rejected)
            days = self._cached_days(outcome.key, start, end)
            if days is None:
                fields, raw = results[1]
                days = parse_bars(fields, raw, outcome.key, start, end, []).traded_days
            return expand_factors(outcome.key, ex_rights, days)

        return self._fetch("factors", tasks, start, end, ADJ_FACTOR_COLUMNS, parse)

    # ----- lifecycle --------------------------------------------------------------------------
    def check_connection(self) -> str:
        today = dt.date.today()
        self.trade_calendar(today - dt.timedelta(days=7), today)
        return f"baostock: reachable at {self._pool.server_label} ({self._pool.size} workers)"

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the logged-in worker processes running now (started on first call)."""
        return self._pool.live_pids()

    def close(self) -> None:
        self._pool.close()
