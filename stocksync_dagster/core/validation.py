"""Row validation: bad rows are rejected with a reason, the good rows of the day are kept."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from stocksync_dagster.core.codes import CODE_PATTERN
from stocksync_dagster.core.sources.base import RejectedRow

PRICE_COLUMNS = ["open", "high", "low", "close"]


def validate_bars(
    frame: pd.DataFrame, start: dt.date, end: dt.date
) -> tuple[pd.DataFrame, list[RejectedRow]]:
    """Split normalised bars into good rows and rejected rows (first failing reason per row)."""
    numeric = {
        c: pd.to_numeric(frame[c], errors="coerce") for c in [*PRICE_COLUMNS, "volume", "amount"]
    }
    rules = [
        *_common_rules(frame, start, end),
        *[(f"{c} is missing or not a number", ~np.isfinite(numeric[c])) for c in numeric],
        *[(f"{c} <= 0", numeric[c] <= 0) for c in PRICE_COLUMNS],
        ("volume < 0", numeric["volume"] < 0),
        ("amount < 0", numeric["amount"] < 0),
        (
            "high below open, close or low",
            numeric["high"]
            < np.maximum.reduce([numeric["open"], numeric["close"], numeric["low"]]),
        ),
        ("low above open or close", numeric["low"] > np.minimum(numeric["open"], numeric["close"])),
    ]
    good, rejected = _apply(frame, rules)
    good = good.astype({c: "float64" for c in [*PRICE_COLUMNS, "pre_close", "amount", "pct_chg"]})
    good["volume"] = good["volume"].astype("float64").round().astype("int64")
    return good, rejected


def validate_factors(
    frame: pd.DataFrame, start: dt.date, end: dt.date
) -> tuple[pd.DataFrame, list[RejectedRow]]:
    """Split normalised adjustment factors into good rows and rejected rows."""
    factor = pd.to_numeric(frame["adj_factor"], errors="coerce")
    rules = [
        *_common_rules(frame, start, end),
        ("adj_factor is missing or not a number", ~np.isfinite(factor)),
        ("adj_factor <= 0", factor <= 0),
    ]
    good, rejected = _apply(frame, rules)
    return good.astype({"adj_factor": "float64"}), rejected


def _common_rules(frame: pd.DataFrame, start: dt.date, end: dt.date) -> list[tuple[str, pd.Series]]:
    bad_code = _per_distinct(frame["code"], lambda c: CODE_PATTERN.match(str(c)) is None)
    outside = _per_distinct(
        frame["trade_date"], lambda d: not (isinstance(d, dt.date) and start <= d <= end)
    )
    return [
        ("code is not in 600000.SH form", bad_code),
        (f"trade_date outside {start}..{end}", outside),
        ("duplicate (code, trade_date) row", frame.duplicated(subset=["code", "trade_date"])),
    ]


def _per_distinct(values: pd.Series, test: Callable[[object], bool]) -> pd.Series:
    """`values.map(test)`, evaluated once per distinct value (a year has ~250 dates, ~5k codes)."""
    try:
        positions, distinct = pd.factorize(values, use_na_sentinel=False)
    except TypeError:  # unhashable values
        return values.map(test).astype(bool)
    verdicts = np.fromiter((test(v) for v in distinct), dtype=bool, count=len(distinct))
    return pd.Series(verdicts[positions], index=values.index)


def _apply(
    frame: pd.DataFrame, rules: list[tuple[str, pd.Series]]
) -> tuple[pd.DataFrame, list[RejectedRow]]:
    reason = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    for text, mask in rules:
        mask = pd.Series(mask, index=frame.index).fillna(True).astype(bool)
        reason = reason.where(reason.notna() | ~mask, text)
    bad = reason.notna()
    rejected = [
        RejectedRow(
            code=str(row["code"])[:64],
            trade_date=row["trade_date"] if isinstance(row["trade_date"], dt.date) else None,
            reason=why,
            raw=json.dumps(row.to_dict(), default=str, ensure_ascii=False)[:2000],
        )
        for (_, row), why in zip(frame[bad].iterrows(), reason[bad], strict=True)
    ]
    return frame[~bad].reset_index(drop=True), rejected
