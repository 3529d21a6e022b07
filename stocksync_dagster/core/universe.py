"""The expected universe of a day: stocks listed that day minus the suspended ones.

A stock in the expected universe without a bar is lost data (a sync failure), never silence; a
suspended stock without a bar is what the market did (a `suspension` row).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import pandas as pd

from stocksync_dagster.core.codes import is_valid_code
from stocksync_dagster.core.errors import ConfigError


def listed_on(basic: pd.DataFrame, day: dt.date) -> set[str]:
    """Codes of `stock_basic` listed on `day`: list_date <= day < delist_date."""
    if basic.empty:
        return set()
    listed = basic["list_date"].map(lambda d: d is not None and not pd.isna(d) and d <= day)
    alive = basic["delist_date"].map(lambda d: d is None or pd.isna(d) or d > day)
    return set(basic.loc[listed & alive, "code"])


def alive_between(basic: pd.DataFrame, start: dt.date, end: dt.date) -> list[str]:
    """Sorted codes listed at some point of [start, end]: list_date <= end, delisted >= start."""
    if basic.empty:
        return []
    listed = basic["list_date"].map(lambda d: d is not None and not pd.isna(d) and d <= end)
    alive = basic["delist_date"].map(lambda d: d is None or pd.isna(d) or d >= start)
    return sorted(basic.loc[listed & alive, "code"])


def pairs(frame: pd.DataFrame | None) -> set[tuple[str, dt.date]]:
    """(code, trade_date) of a frame with those columns."""
    if frame is None or frame.empty:
        return set()
    return set(zip(frame["code"], frame["trade_date"], strict=True))


def expected_absent(
    basic: pd.DataFrame,
    days: Iterable[dt.date],
    present: set[tuple[str, dt.date]],
    suspended: set[tuple[str, dt.date]],
    codes: Sequence[str] | None = None,
) -> dict[dt.date, list[str]]:
    """Per day, the codes listed and not suspended that have no row in `present` (sorted).

    Only `codes` (when given) are looked at, so a stock batch of a chunked sync costs its own
    size, not the market's.
    """
    if basic.empty:
        return {}
    if codes is not None:
        basic = basic[basic["code"].isin(set(codes))]
    spans = [
        (code, listed, None if delisted is None or pd.isna(delisted) else delisted)
        for code, listed, delisted in zip(
            basic["code"], basic["list_date"], basic["delist_date"], strict=True
        )
        if listed is not None and not pd.isna(listed)
    ]
    absent: dict[dt.date, list[str]] = {}
    for day in days:
        lost = sorted(
            code
            for code, listed, delisted in spans
            if listed <= day
            and (delisted is None or delisted > day)
            and (code, day) not in present
            and (code, day) not in suspended
        )
        if lost:
            absent[day] = lost
    return absent


def check_codes(codes: Sequence[str], basic: pd.DataFrame) -> None:
    """Raise ConfigError naming every code that is malformed or unknown to `stock_basic`."""
    malformed = [c for c in codes if not is_valid_code(c)]
    known = set(basic["code"]) if not basic.empty else set()
    unknown = [c for c in codes if is_valid_code(c) and c not in known]
    if malformed or unknown:
        problems = []
        if malformed:
            problems.append(f"not in 600000.SH form: {', '.join(malformed)}")
        if unknown:
            problems.append(f"not in stock_basic: {', '.join(unknown)}")
        raise ConfigError("codes", "; ".join(problems), "fix the run config's codes list")
