"""The SQL behind the asset checks: each query finds offending days, stocks or rows.

SQLAlchemy Core only, so every query runs on SQLite and PostgreSQL. Queries take an optional
[start, end] date scope (None = the whole table) and return plain values or small frames;
deciding pass / fail and writing metadata is the checks' job (`stocksync_dagster.checks`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core import price_limits
from stocksync_dagster.core.codes import board_of, is_valid_code
from stocksync_dagster.core.warehouse.failures import OPEN_STATUSES
from stocksync_dagster.core.warehouse.schema import (
    adj_factor,
    daily_bar,
    stock_basic,
    suspension,
    sync_failure,
    trade_calendar,
)

# A limit price is round(pre_close x (1 ± limit), 2): allow one tick (0.01 CNY) for rounding.
PRICE_TICK = 0.01
# pct_chg is rounded by the source (2 to 6 decimals): tolerance in percentage points.
PCT_CHG_TOLERANCE = 0.05
# Relative change of adj_factor below this is rounding, not an ex-right event.
FACTOR_TOLERANCE = 1e-6
# How far back the factor check looks for a stock's previous bar (suspensions up to this long).
FACTOR_LOOKBACK = dt.timedelta(days=90)

OHLC_HARD_RULES = (
    "price <= 0",
    "high below open/close/low",
    "low above open/close",
    "volume < 0",
    "amount < 0",
)
OHLC_SOFT_RULES = ("pct_chg inconsistent with close/pre_close", "move beyond the price limit")


def _to_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value)[:10])


def _in_scope(
    column: sa.ColumnElement, start: dt.date | None, end: dt.date | None
) -> sa.ColumnElement:
    conditions = []
    if start is not None:
        conditions.append(column >= start)
    if end is not None:
        conditions.append(column <= end)
    return sa.and_(sa.true(), *conditions)


def row_count(connection: sa.Connection, table: sa.Table) -> int:
    return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# ----- days --------------------------------------------------------------------------------
def date_bounds(
    connection: sa.Connection, table: sa.Table
) -> tuple[dt.date | None, dt.date | None]:
    """First and last trade_date with rows in a market table."""
    first, last = connection.execute(
        sa.select(sa.func.min(table.c.trade_date), sa.func.max(table.c.trade_date))
    ).one()
    return (_to_date(first) if first else None, _to_date(last) if last else None)


def open_days(
    connection: sa.Connection, start: dt.date | None, end: dt.date | None
) -> list[dt.date]:
    """Open days of `trade_calendar` in [start, end], ascending."""
    c = trade_calendar.c
    rows = connection.execute(
        sa.select(c.cal_date)
        .where(c.is_open, _in_scope(c.cal_date, start, end))
        .order_by(c.cal_date)
    )
    return [_to_date(day) for (day,) in rows]


def missing_days(
    connection: sa.Connection, table: sa.Table, start: dt.date, end: dt.date
) -> list[dt.date]:
    """Open days in [start, end] of `trade_calendar` on which `table` has no row at all."""
    c = trade_calendar.c
    has_rows = sa.exists().where(table.c.trade_date == c.cal_date)
    rows = connection.execute(
        sa.select(c.cal_date)
        .where(c.is_open, c.cal_date.between(start, end), ~has_rows)
        .order_by(c.cal_date)
    )
    return [_to_date(day) for (day,) in rows]


# ----- completeness ------------------------------------------------------------------------
def _listed_on(day: sa.ColumnElement) -> sa.ColumnElement:
    s = stock_basic.c
    return sa.and_(s.list_date <= day, sa.or_(s.delist_date.is_(None), s.delist_date > day))


def completeness(
    connection: sa.Connection, start: dt.date | None, end: dt.date | None
) -> pd.DataFrame:
    """Per open day: the expected universe (listed per `stock_basic` minus `suspension`) vs bars.

    Columns `trade_date, listed, suspended, expected, present, missing, share` where
    `expected = listed - suspended`, `present` counts expected stocks with a bar, `missing` the
    expected ones without, `share = present / expected` (1.0 when nothing is expected).
    """
    c, s, b, p = trade_calendar.c, stock_basic.c, daily_bar.c, suspension.c
    no_bar = b.code.is_(None)
    suspended = sa.and_(no_bar, p.code.is_not(None))
    query = (
        sa.select(
            c.cal_date.label("trade_date"),
            sa.func.count(s.code).label("listed"),
            sa.func.sum(sa.case((suspended, 1), else_=0)).label("suspended"),
            sa.func.count(b.code).label("present"),
            sa.func.sum(sa.case((sa.and_(no_bar, p.code.is_(None)), 1), else_=0)).label("missing"),
        )
        .select_from(
            trade_calendar.join(stock_basic, _listed_on(c.cal_date))
            .outerjoin(daily_bar, sa.and_(b.code == s.code, b.trade_date == c.cal_date))
            .outerjoin(suspension, sa.and_(p.code == s.code, p.trade_date == c.cal_date))
        )
        .where(c.is_open, _in_scope(c.cal_date, start, end))
        .group_by(c.cal_date)
        .order_by(c.cal_date)
    )
    columns = ["trade_date", "listed", "suspended", "present", "missing"]
    frame = pd.DataFrame(connection.execute(query).all(), columns=columns)
    for column in columns[1:]:
        frame[column] = frame[column].fillna(0).astype(int)
    frame["trade_date"] = frame["trade_date"].map(_to_date)
    frame.insert(3, "expected", frame["listed"] - frame["suspended"])
    expected = frame["expected"].where(frame["expected"] > 0)
    frame["share"] = (frame["present"] / expected).fillna(1.0)
    return frame


def missing_codes(connection: sa.Connection, day: dt.date) -> list[str]:
    """Codes expected on `day` (listed per `stock_basic`, not in `suspension`) without a bar."""
    s, b, p = stock_basic.c, daily_bar.c, suspension.c
    has_bar = sa.exists().where(b.code == s.code, b.trade_date == day)
    is_suspended = sa.exists().where(p.code == s.code, p.trade_date == day)
    rows = connection.execute(
        sa.select(s.code)
        .where(_listed_on(sa.literal(day, sa.Date)), ~has_bar, ~is_suspended)
        .order_by(s.code)
    )
    return [code for (code,) in rows]


# ----- sync failures -----------------------------------------------------------------------
def open_failures(connection: sa.Connection, asset: str) -> pd.DataFrame:
    """`sync_failure` rows of `asset` not resolved: pending, retrying or abandoned."""
    f = sync_failure.c
    rows = connection.execute(
        sa.select(f.trade_date, f.code, f.status, f.retry_count, f.error_class)
        .where(f.asset == asset, f.status.in_([*OPEN_STATUSES, "abandoned"]))
        .order_by(f.trade_date, f.code)
    )
    frame = pd.DataFrame(rows.all(), columns=["trade_date", "code", "status", "retries", "error"])
    frame["trade_date"] = frame["trade_date"].map(_to_date)
    return frame


# ----- OHLC sanity -------------------------------------------------------------------------
def ohlc_violations(
    connection: sa.Connection, start: dt.date | None, end: dt.date | None
) -> pd.DataFrame:
    """Bars breaking a sanity rule (the first one that applies).

    The price limit is the one in force on the bar's day for the stock's board and status
    (`price_limits`); the first days after the listing date are exempt. SQL selects every
    move beyond the narrowest limit; the rule of the day decides. Columns `trade_date, code,
    rule, open, high, low, close, pre_close, volume, pct_chg, limit`.
    """
    b, s = daily_bar.c, stock_basic.c
    narrowest = min(rule.pct for rule in price_limits.LIMIT_RULES)
    move = sa.func.abs(b.close - b.pre_close)
    rules = [
        (
            "price <= 0",
            sa.or_(b.open <= 0, b.high <= 0, b.low <= 0, b.close <= 0, b.pre_close <= 0),
        ),
        ("high below open/close/low", sa.or_(b.high < b.open, b.high < b.close, b.high < b.low)),
        ("low above open/close", sa.or_(b.low > b.open, b.low > b.close)),
        ("volume < 0", b.volume < 0),
        ("amount < 0", b.amount < 0),
        (
            "pct_chg inconsistent with close/pre_close",
            sa.and_(
                b.pre_close > 0,
                sa.func.abs(b.pct_chg - (b.close / b.pre_close - 1) * 100) > PCT_CHG_TOLERANCE,
            ),
        ),
        (
            "move beyond the price limit",
            sa.and_(b.pre_close > 0, move > b.pre_close * narrowest / 100 + PRICE_TICK),
        ),
    ]
    query = (
        sa.select(
            b.trade_date,
            b.code,
            sa.case(*[(cond, name) for name, cond in rules]).label("rule"),
            b.open,
            b.high,
            b.low,
            b.close,
            b.pre_close,
            b.volume,
            b.pct_chg,
            s.board,
            s.is_st,
            s.list_date,
        )
        .select_from(daily_bar.outerjoin(stock_basic, stock_basic.c.code == b.code))
        .where(_in_scope(b.trade_date, start, end), sa.or_(*[cond for _, cond in rules]))
        .order_by(b.trade_date, b.code)
    )
    columns = [
        "trade_date",
        "code",
        "rule",
        "open",
        "high",
        "low",
        "close",
        "pre_close",
        "volume",
        "pct_chg",
        "board",
        "is_st",
        "list_date",
    ]
    frame = pd.DataFrame(connection.execute(query).all(), columns=columns)
    frame["trade_date"] = frame["trade_date"].map(_to_date)
    frame["limit"] = [
        price_limits.limit_pct(board, bool(is_st), day) if board is not None else None
        for board, is_st, day in zip(
            frame["board"], frame["is_st"], frame["trade_date"], strict=True
        )
    ]
    if len(frame):
        frame = frame[_breaks_its_limit(frame)]
    return frame.drop(columns=["board", "is_st", "list_date"]).reset_index(drop=True)


def _breaks_its_limit(frame: pd.DataFrame) -> pd.Series:
    """False for limit candidates within the day's limit, or on an IPO day without a limit."""

    def keep(row: pd.Series) -> bool:
        if row["rule"] != "move beyond the price limit":
            return True
        if row["limit"] is None or pd.isna(row["limit"]):
            return False  # an unknown board has no limit to break
        listed = _to_date(row["list_date"]) if row["list_date"] is not None else None
        if price_limits.within_ipo_window(row["board"], listed, row["trade_date"]):
            return False
        return abs(row["close"] - row["pre_close"]) > row["pre_close"] * row["limit"] / 100 + (
            PRICE_TICK
        )

    return frame.apply(keep, axis=1).astype(bool)


# ----- adjustment factors ------------------------------------------------------------------
def bars_without_factor(
    connection: sa.Connection, start: dt.date | None, end: dt.date | None
) -> pd.DataFrame:
    """Bars with no `adj_factor` row for the same code and day (`trade_date, code`)."""
    b, a = daily_bar.c, adj_factor.c
    has_factor = sa.exists().where(a.code == b.code, a.trade_date == b.trade_date)
    rows = connection.execute(
        sa.select(b.trade_date, b.code)
        .where(_in_scope(b.trade_date, start, end), ~has_factor)
        .order_by(b.trade_date, b.code)
    )
    return _frame(rows, ["trade_date", "code"])


def nonpositive_factors(
    connection: sa.Connection, start: dt.date | None, end: dt.date | None
) -> pd.DataFrame:
    """Factors that are <= 0 (`trade_date, code, adj_factor`)."""
    a = adj_factor.c
    rows = connection.execute(
        sa.select(a.trade_date, a.code, a.adj_factor)
        .where(_in_scope(a.trade_date, start, end), a.adj_factor <= 0)
        .order_by(a.trade_date, a.code)
    )
    return _frame(rows, ["trade_date", "code", "adj_factor"])


def factor_mismatches(
    connection: sa.Connection, start: dt.date | None, end: dt.date | None
) -> pd.DataFrame:
    """Days where a factor change and an ex-right (pre_close != previous close) disagree.

    Compares each bar with the stock's previous bar (suspensions skipped, up to
    FACTOR_LOOKBACK back). Columns `trade_date, code, problem, prev_close, pre_close,
    prev_factor, adj_factor`.
    """
    b, a = daily_bar.c, adj_factor.c
    lookback_start = start - FACTOR_LOOKBACK if start is not None else None
    seq = (
        sa.select(
            b.trade_date,
            b.code,
            b.pre_close,
            a.adj_factor,
            sa.func.lag(b.close)
            .over(partition_by=b.code, order_by=b.trade_date)
            .label("prev_close"),
            sa.func.lag(a.adj_factor)
            .over(partition_by=b.code, order_by=b.trade_date)
            .label("prev_factor"),
        )
        .select_from(
            daily_bar.join(adj_factor, sa.and_(a.code == b.code, a.trade_date == b.trade_date))
        )
        .where(_in_scope(b.trade_date, lookback_start, end))
        .subquery("seq")
    )
    q = seq.c
    factor_moved = sa.func.abs(q.adj_factor - q.prev_factor) > q.prev_factor * FACTOR_TOLERANCE
    ex_right = sa.func.abs(q.pre_close - q.prev_close) >= PRICE_TICK / 2
    problem = sa.case(
        (sa.and_(factor_moved, ~ex_right), "factor changed but pre_close = previous close"),
        else_="ex-right day (pre_close != previous close) but factor unchanged",
    )
    rows = connection.execute(
        sa.select(
            q.trade_date, q.code, problem, q.prev_close, q.pre_close, q.prev_factor, q.adj_factor
        )
        .where(
            _in_scope(q.trade_date, start, end),
            q.prev_factor.is_not(None),
            q.pre_close.is_not(None),
            sa.or_(sa.and_(factor_moved, ~ex_right), sa.and_(~factor_moved, ex_right)),
        )
        .order_by(q.trade_date, q.code)
    )
    return _frame(
        rows,
        ["trade_date", "code", "problem", "prev_close", "pre_close", "prev_factor", "adj_factor"],
    )


# ----- security master ---------------------------------------------------------------------
def stock_basic_problems(connection: sa.Connection) -> pd.DataFrame:
    """Rows of `stock_basic` that break an integrity rule (`code, problem`).

    Rules: unique codes (after upper-casing and trimming), `600000.SH` form, exchange equal to
    the code's suffix, board equal to `codes.board_of`, list_date <= delist_date.
    """
    s = stock_basic.c
    frame = pd.DataFrame(
        connection.execute(
            sa.select(s.code, s.exchange, s.board, s.list_date, s.delist_date)
        ).all(),
        columns=["code", "exchange", "board", "list_date", "delist_date"],
    )
    problems: list[tuple[str, str]] = []
    normalised = frame["code"].str.strip().str.upper()
    for code in frame.loc[normalised.duplicated(keep=False), "code"]:
        problems.append((code, "duplicate code"))
    for row in frame.itertuples(index=False):
        if not is_valid_code(row.code):
            problems.append((row.code, "code not in 600000.SH form"))
            continue
        if row.exchange != row.code[-2:]:
            problems.append((row.code, f"exchange {row.exchange} does not match the code"))
        if row.board != board_of(row.code):
            problems.append((row.code, f"board {row.board} should be {board_of(row.code)}"))
        if (
            row.list_date is not None
            and row.delist_date is not None
            and (_to_date(row.list_date) > _to_date(row.delist_date))
        ):
            problems.append(
                (row.code, f"list_date {row.list_date} after delist_date {row.delist_date}")
            )
    return pd.DataFrame(problems, columns=["code", "problem"])


def bars_outside_listing(connection: sa.Connection) -> pd.DataFrame:
    """Per code: bars before its list_date, after its delist_date, or with no stock_basic row.

    Columns `code, problem, bars, first_day, last_day` (the offending bars only). One GROUP BY
    over the whole history, then a detail query for the offending codes only.
    """
    b, s = daily_bar.c, stock_basic.c
    spans = (
        sa.select(
            b.code,
            sa.func.min(b.trade_date).label("first"),
            sa.func.max(b.trade_date).label("last"),
        )
        .group_by(b.code)
        .subquery("spans")
    )
    offenders = connection.execute(
        sa.select(spans.c.code, s.code.is_(None), s.list_date, s.delist_date)
        .select_from(spans.outerjoin(stock_basic, s.code == spans.c.code))
        .where(
            sa.or_(
                s.code.is_(None),
                spans.c.first < s.list_date,
                sa.and_(s.delist_date.is_not(None), spans.c.last > s.delist_date),
            )
        )
        .order_by(spans.c.code)
    ).all()
    rows: list[tuple[str, str, sa.ColumnElement]] = []
    for code, unknown, list_date, delist_date in offenders:
        if unknown:
            rows.append((code, "not in stock_basic", sa.true()))
            continue
        if list_date is not None:
            rows.append((code, f"before list_date {_to_date(list_date)}", b.trade_date < list_date))
        if delist_date is not None:
            rows.append(
                (code, f"after delist_date {_to_date(delist_date)}", b.trade_date > delist_date)
            )
    result = []
    for code, problem, condition in rows:
        count, first, last = connection.execute(
            sa.select(sa.func.count(), sa.func.min(b.trade_date), sa.func.max(b.trade_date)).where(
                b.code == code, condition
            )
        ).one()
        if count:
            result.append((code, problem, count, _to_date(first), _to_date(last)))
    return pd.DataFrame(result, columns=["code", "problem", "bars", "first_day", "last_day"])


# ----- freshness ---------------------------------------------------------------------------
def latest_day(connection: sa.Connection, table: sa.Table) -> dt.date | None:
    """The latest trade_date with rows in a market table."""
    return date_bounds(connection, table)[1]


def _frame(rows: sa.CursorResult, columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows.all(), columns=list(columns))
    if "trade_date" in frame:
        frame["trade_date"] = frame["trade_date"].map(_to_date)
    return frame
