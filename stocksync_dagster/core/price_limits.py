"""Daily price limits as the exchanges set them, by board, risk-warning status and date.

One table (`LIMIT_RULES`): each rule holds from its effective date until the next rule of the
same board and status. Sources (exchange rules and notices):

- Main board 10%: SSE/SZSE price-limit rule in force since 1996-12-16 (涨跌幅限制 10%).
- Main-board risk-warning (ST / *ST) stocks 5% from the special-treatment regime of 1998; raised
  to 10% by the SSE and SZSE notices "关于调整主板风险警示股票价格涨跌幅限制比例及有关事项的
  通知" (consultation draft published 2025-06-27, reported by Xinhua and China News Service),
  effective 2025-07-07 per the final notice. The draft's date is confirmed by those reports; the
  effective date is not (check it against the exchanges' notice and change this one row if
  needed).
- ChiNext 10% (ST 5%) until the registration reform; 20% for every ChiNext stock, ST included,
  from the first trading day under the reformed rules, 2020-08-24 (深交所《创业板交易特别规定》).
- STAR Market 20% from its first trading day, 2019-07-22 (上交所《科创板股票交易特别规定》).
- Beijing Stock Exchange 30% from its opening, 2021-11-15 (北交所《交易规则（试行）》).

No limit after an IPO (counted in trading days from the LISTING date): STAR and reformed ChiNext
5 days; main board 5 days since the main-board registration reform (first listings 2023-04-10),
before that only the first day had a different (44%) limit; BSE the first day.

`is_st` is the stock's status today (`stock_basic`): a stock whose ST status changed inside the
checked range is judged by today's status.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from stocksync_dagster.core import trading_calendar

BOARDS = ("main", "chinext", "star", "bse")


@dataclass(frozen=True)
class LimitRule:
    board: str
    is_st: bool
    since: dt.date
    pct: float


LIMIT_RULES: tuple[LimitRule, ...] = (
    LimitRule("main", False, dt.date(1996, 12, 16), 10.0),
    LimitRule("main", True, dt.date(1998, 4, 22), 5.0),
    LimitRule("main", True, dt.date(2025, 7, 7), 10.0),
    LimitRule("chinext", False, dt.date(2009, 10, 30), 10.0),
    LimitRule("chinext", True, dt.date(2009, 10, 30), 5.0),
    LimitRule("chinext", False, dt.date(2020, 8, 24), 20.0),
    LimitRule("chinext", True, dt.date(2020, 8, 24), 20.0),
    LimitRule("star", False, dt.date(2019, 7, 22), 20.0),
    LimitRule("star", True, dt.date(2019, 7, 22), 20.0),
    LimitRule("bse", False, dt.date(2021, 11, 15), 30.0),
    LimitRule("bse", True, dt.date(2021, 11, 15), 30.0),
)

# (board, listed on or after, trading days without the regular limit from the listing day)
IPO_FREE_DAYS: tuple[tuple[str, dt.date, int], ...] = (
    ("main", dt.date(1990, 1, 1), 1),
    ("main", dt.date(2023, 4, 10), 5),
    ("chinext", dt.date(2009, 10, 30), 1),
    ("chinext", dt.date(2020, 8, 24), 5),
    ("star", dt.date(2019, 7, 22), 5),
    ("bse", dt.date(2021, 11, 15), 1),
)


def limit_pct(board: str, is_st: bool, day: dt.date) -> float | None:
    """The daily limit in percent on `day`; None for an unknown board or a day before any rule."""
    found = None
    for rule in LIMIT_RULES:
        applies = rule.board == board and rule.is_st == is_st and rule.since <= day
        if applies and (found is None or rule.since > found.since):
            found = rule
    return found.pct if found is not None else None


def ipo_free_days(board: str, list_date: dt.date) -> int:
    """Trading days from the listing day on which the regular limit does not apply."""
    days = 0
    since = None
    for rule_board, rule_since, free in IPO_FREE_DAYS:
        if (
            rule_board == board
            and rule_since <= list_date
            and (since is None or rule_since > since)
        ):
            since, days = rule_since, free
    return days


def within_ipo_window(board: str, list_date: dt.date | None, day: dt.date) -> bool:
    """True if `day` is one of the first `ipo_free_days` trading days counted from `list_date`."""
    if list_date is None or day < list_date:
        return False
    free = ipo_free_days(board, list_date)
    if free == 0 or (day - list_date).days > 31:  # 5 trading days never span a month
        return False
    return len(trading_calendar.trading_days(list_date, day)) <= free
