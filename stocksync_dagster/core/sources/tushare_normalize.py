"""Tushare replies -> the normalised frames of `sources.base`.

Tushare `daily` gives `vol` in lots of 100 shares and `amount` in thousands of CNY; both are
converted (and rounded, so no float noise from the unit change reaches the warehouse). Rows that
do not parse are returned as `RejectedRow`s with a reason instead of failing the day.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pandas as pd

from stocksync_dagster.core.codes import board_of, exchange_of, from_tushare
from stocksync_dagster.core.sources.base import (
    ADJ_FACTOR_COLUMNS,
    BAR_COLUMNS,
    CALENDAR_COLUMNS,
    STOCK_BASIC_COLUMNS,
    RejectedRow,
)

BAR_FIELDS = (
    "ts_code",
    "trade_date",
    "open",
    "high",
    "low",
    "close",
    "pre_close",
    "pct_chg",
    "vol",
    "amount",
)
ADJ_FACTOR_FIELDS = ("ts_code", "trade_date", "adj_factor")
CALENDAR_FIELDS = ("cal_date", "is_open")
STOCK_BASIC_FIELDS = ("ts_code", "name", "list_date", "delist_date", "list_status")
NAMECHANGE_FIELDS = ("ts_code", "name", "start_date", "end_date", "ann_date")
# ST-flavoured names: ST, *ST, and the pre-reform SST / S*ST
_ST_NAME = re.compile(r"^S?\*?ST")
# list_status P (listing paused) is still listed: the stock has not left the exchange.
_STATUS = {"L": "listed", "P": "listed", "D": "delisted"}


class MalformedReplyError(ValueError):
    """A reply that cannot be read at all (e.g. a column is missing)."""


def ymd(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def parse_ymd(value: object) -> dt.date | None:
    """`20250102` -> date; None for empty values; ValueError for anything else."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    return dt.datetime.strptime(str(value), "%Y%m%d").date()


def _code_or_none(value: object) -> str | None:
    try:
        return from_tushare(str(value)) if isinstance(value, str) else None
    except ValueError:
        return None


def _require(raw: pd.DataFrame, fields: tuple[str, ...], api: str) -> None:
    missing = [f for f in fields if f not in raw.columns]
    if missing:
        raise MalformedReplyError(f"{api} reply lacks column(s) {', '.join(missing)}")


def _validated(
    raw: pd.DataFrame,
    day: dt.date,
    numeric: tuple[str, ...],
    api: str,
    nullable: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, pd.Series, list[RejectedRow]]:
    """Rows of one day's reply that parse; numbers as float; the rest as rejected rows.

    A missing value (null) is accepted in `nullable` columns and becomes NaN (SQL NULL).
    """
    _require(raw, ("ts_code", "trade_date", *numeric), api)
    raw = raw.reset_index(drop=True)
    codes = raw["ts_code"].map(_code_or_none)
    reasons = pd.Series("", index=raw.index, dtype=object)
    reasons[codes.isna()] = [f"unknown code format {v!r}" for v in raw["ts_code"][codes.isna()]]
    wrong_day = raw["trade_date"].astype(str) != ymd(day)
    for i in raw.index[wrong_day & (reasons == "")]:
        reasons[i] = f"trade_date {raw.at[i, 'trade_date']!r} is not the requested day {ymd(day)}"
    numbers = {}
    for column in numeric:
        values = pd.to_numeric(raw[column], errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy()) & (reasons == "").to_numpy()
        if column in nullable:
            bad &= raw[column].notna().to_numpy()
        for i in raw.index[bad]:
            value = raw.at[i, column]
            reasons[i] = (
                f"missing {column}" if pd.isna(value) else f"non-numeric {column}: {value!r}"
            )
        numbers[column] = values
    duplicate = codes.duplicated() & codes.notna() & (reasons == "")
    reasons[duplicate] = "duplicate row for this code and day"
    rejected = [
        RejectedRow(
            code=str(raw.at[i, "ts_code"]),
            trade_date=day,
            reason=reasons[i],
            raw=json.dumps(raw.loc[i].to_dict(), ensure_ascii=False, default=str),
        )
        for i in raw.index[reasons != ""]
    ]
    keep = (reasons == "").to_numpy()
    return pd.DataFrame(numbers)[keep].reset_index(drop=True), codes[keep], rejected


def bars_frame(raw: pd.DataFrame, day: dt.date) -> tuple[pd.DataFrame, list[RejectedRow]]:
    """One day of `daily` -> BAR_COLUMNS (volume in shares, amount in CNY)."""
    numeric = BAR_FIELDS[2:]
    # pre_close / pct_chg / amount may legitimately be missing; prices and volume may not
    nullable = ("pre_close", "pct_chg", "amount")
    numbers, codes, rejected = _validated(raw, day, numeric, "daily", nullable)
    frame = pd.DataFrame(
        {
            "code": codes.to_numpy(dtype=object),
            "trade_date": np.full(len(codes), day, dtype=object),
            "open": numbers["open"],
            "high": numbers["high"],
            "low": numbers["low"],
            "close": numbers["close"],
            "pre_close": numbers["pre_close"],
            "volume": (numbers["vol"] * 100).round(0),
            "amount": (numbers["amount"] * 1000).round(2),
            "pct_chg": numbers["pct_chg"],
        }
    )
    return frame[BAR_COLUMNS], rejected


def adj_factor_frame(raw: pd.DataFrame, day: dt.date) -> tuple[pd.DataFrame, list[RejectedRow]]:
    """One day of `adj_factor` -> ADJ_FACTOR_COLUMNS."""
    numbers, codes, rejected = _validated(raw, day, ("adj_factor",), "adj_factor")
    frame = pd.DataFrame(
        {
            "code": codes.to_numpy(dtype=object),
            "trade_date": np.full(len(codes), day, dtype=object),
            "adj_factor": numbers["adj_factor"],
        }
    )
    return frame[ADJ_FACTOR_COLUMNS], rejected


def calendar_frame(raw: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    """`trade_cal` -> CALENDAR_COLUMNS; every day of [start, end] exactly once, or an error."""
    _require(raw, CALENDAR_FIELDS, "trade_cal")
    try:
        days = [parse_ymd(v) for v in raw["cal_date"]]
        is_open = [bool(int(v)) for v in raw["is_open"]]
    except (TypeError, ValueError) as exc:
        raise MalformedReplyError(f"trade_cal reply does not parse: {exc}") from None
    frame = pd.DataFrame({"cal_date": days, "is_open": is_open})
    frame = frame.sort_values("cal_date").drop_duplicates("cal_date").reset_index(drop=True)
    expected = pd.date_range(start, end, freq="D").date
    if len(frame) != len(expected) or list(frame["cal_date"]) != list(expected):
        raise MalformedReplyError(
            f"trade_cal reply covers {len(frame)} of the {len(expected)} days {start}..{end}"
        )
    return frame[CALENDAR_COLUMNS]


def stock_basic_frame(raw: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """`stock_basic` (all statuses) -> STOCK_BASIC_COLUMNS, plus the codes that did not parse."""
    _require(raw, STOCK_BASIC_FIELDS, "stock_basic")
    codes = raw["ts_code"].map(_code_or_none)
    skipped = [str(v) for v in raw["ts_code"][codes.isna()]]
    raw = raw.assign(code=codes)[codes.notna()]
    # a code listed under two statuses: L wins over P over D
    raw = raw.assign(rank=raw["list_status"].map({"L": 0, "P": 1, "D": 2}).fillna(3))
    raw = raw.sort_values(["code", "rank"]).drop_duplicates("code")
    names = raw["name"].fillna("").astype(str)
    frame = pd.DataFrame(
        {
            "code": raw["code"].to_numpy(dtype=object),
            "name": names.to_numpy(dtype=object),
            "exchange": [exchange_of(c) for c in raw["code"]],
            "board": [board_of(c) for c in raw["code"]],
            "list_date": [_date_or_none(v) for v in raw["list_date"]],
            "delist_date": [_date_or_none(v) for v in raw["delist_date"]],
            "status": [_STATUS.get(str(s), "listed") for s in raw["list_status"]],
            "is_st": ["ST" in n.upper() for n in names],
        }
    )
    return frame[STOCK_BASIC_COLUMNS].reset_index(drop=True), skipped


def _date_or_none(value: object) -> dt.date | None:
    try:
        return parse_ymd(value)
    except ValueError:
        return None


def st_intervals(raw: pd.DataFrame) -> pd.DataFrame:
    """`namechange` rows -> the periods (`code`, `start`, `end`; end None = still) a stock
    carried an ST name (ST, *ST, SST, S*ST). Rows that do not parse are skipped."""
    _require(raw, NAMECHANGE_FIELDS[:4], "namechange")
    rows = []
    for code, name, start, end in zip(
        raw["ts_code"], raw["name"], raw["start_date"], raw["end_date"], strict=True
    ):
        normalised = _code_or_none(code)
        if normalised is None or not isinstance(name, str) or not _ST_NAME.match(name.strip()):
            continue
        try:
            first, last = parse_ymd(start), parse_ymd(end)
        except ValueError:
            continue
        if first is not None:
            rows.append((normalised, first, last))
    return pd.DataFrame(rows, columns=["code", "start", "end"])


def st_pairs(intervals: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """The (code, trade_date) of `pairs` that fall inside one of the stock's ST periods."""
    if intervals.empty or pairs.empty:
        return pd.DataFrame({"code": pd.Series(dtype=object), "trade_date": []})
    joined = pairs[["code", "trade_date"]].merge(intervals, on="code")
    ends = joined["end"].map(lambda d: dt.date.max if d is None or pd.isna(d) else d)
    inside = (joined["start"] <= joined["trade_date"]) & (joined["trade_date"] <= ends)
    found = joined.loc[inside, ["code", "trade_date"]].drop_duplicates()
    return found.reset_index(drop=True)
