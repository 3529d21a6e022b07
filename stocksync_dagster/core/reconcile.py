"""Cross-source reconciliation: stored rows compared with what a second source says.

A run samples (code, day) pairs from the days it covers, always including that day's limit-up /
limit-down stocks and its ex-right stocks (factor changed since the previous trading day),
where sources disagree most often; the rest is a deterministic random sample seeded by the
days, so a rerun checks the same pairs. Only rows that did not come from the second source
are sampled (a row the fallback filled has no independent second opinion).

- bars: open, high, low, close, volume, amount, relative tolerance `rel_tol` (both sources are
  normalised to CNY and shares first);
- factors: the ratio between the factor of the day and of the previous trading day, since
  sources scale cumulative factors differently (only the jumps must agree).

Disagreements are stored in `source_disagreement`, one row per (code, day, field): the latest
comparison of each pair wins, and a pair that now agrees loses its row.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import sqlalchemy as sa

from stocksync_dagster.core.price_limits import limit_pct, within_ipo_window
from stocksync_dagster.core.sources.base import FetchResult, MarketSource
from stocksync_dagster.core.warehouse import schema

BAR_FIELDS = ("open", "high", "low", "close", "volume", "amount")
FACTOR_FIELDS = ("adj_factor_ratio", "adj_factor")
DEFAULT_SAMPLE_SIZE = 50
DEFAULT_MAX_DAYS = 5
DEFAULT_REL_TOL = 1e-6
# Within one fen of the limit price counts as at it: sources round pre_close x (1 + limit)
# differently (half up, half even, binary floats), and over-sampling a pair costs little.
_LIMIT_TICK = 0.01 + 1e-9


@dataclass(frozen=True)
class Disagreement:
    """One value the warehouse and the other source disagree on (None: the row is absent)."""

    code: str
    trade_date: dt.date
    field: str
    primary_value: float | None
    other_value: float | None
    primary_source: str
    other_source: str


@dataclass
class Sample:
    """The (code, day) pairs a run compares, per day, and why they were chosen."""

    pairs: dict[dt.date, list[str]] = field(default_factory=dict)
    notable: set[tuple[str, dt.date]] = field(default_factory=set)
    """Limit-up/down and ex-right pairs (always sampled)."""
    previous_day: dict[dt.date, dt.date] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(codes) for codes in self.pairs.values())


@dataclass
class Comparison:
    """What one comparison (bars or factors) found."""

    other_source: str
    compared: set[tuple[str, dt.date]] = field(default_factory=set)
    disagreements: list[Disagreement] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    """Pairs the other source could not serve (its failures): `code day: reason`."""


def choose_days(days: Sequence[dt.date], max_days: int, seed: str) -> list[dt.date]:
    """At most `max_days` of `days`: all of them, or the last plus a seeded random rest."""
    ordered = sorted(set(days))
    if len(ordered) <= max_days:
        return ordered
    rest = random.Random(f"days:{seed}").sample(ordered[:-1], max_days - 1)
    return sorted([*rest, ordered[-1]])


def sample_pairs(
    connection: sa.Connection,
    days: Sequence[dt.date],
    size: int,
    other_source: str,
    seed: str,
) -> Sample:
    """Sample (code, day) pairs of `days`: the notable ones, then random ones up to `size`."""
    sample = Sample()
    rng = random.Random(f"pairs:{seed}")
    per_day = math.ceil(size / len(days)) if days else 0
    for day in sorted(days):
        bars = _stored_bars(connection, day)
        bars = bars[bars["source"].fillna("") != other_source]
        if bars.empty:
            continue
        previous = _previous_day(connection, day)
        if previous is not None:
            sample.previous_day[day] = previous
        notable = sorted(_limit_hits(bars, day) | _ex_right(connection, day, previous))
        notable = [c for c in notable if c in set(bars["code"])]
        rest = sorted(set(bars["code"]) - set(notable))
        extra = rng.sample(rest, min(len(rest), max(per_day - len(notable), 0)))
        sample.pairs[day] = sorted([*notable, *extra])
        sample.notable |= {(c, day) for c in notable}
    return sample


def compare_bars(
    connection: sa.Connection, other: MarketSource, sample: Sample, rel_tol: float
) -> Comparison:
    """The sampled stored bars against the other source's, field by field."""
    found = Comparison(other.label)
    for day, codes in sample.pairs.items():
        stored = _stored_bars(connection, day, codes).set_index("code")
        reply = other.daily_bars(day, day, codes)
        theirs = _by_code(reply.frame, day)
        failed = _failed(reply, day)
        for code in codes:
            if code not in stored.index:
                continue
            mine = stored.loc[code]
            if code not in theirs.index:
                if (why := _why(failed, code)) is not None:
                    found.unchecked.append(f"{code} {day}: {why}")
                    continue
                found.compared.add((code, day))
                found.disagreements.append(
                    _disagreement(
                        code, day, "bar", mine["close"], None, mine["source"], other.label
                    )
                )
                continue
            found.compared.add((code, day))
            for name in BAR_FIELDS:
                a, b = float(mine[name]), float(theirs.loc[code, name])
                if not _close(a, b, rel_tol):
                    found.disagreements.append(
                        _disagreement(code, day, name, a, b, mine["source"], other.label)
                    )
    return found


def compare_factors(
    connection: sa.Connection, other: MarketSource, sample: Sample, rel_tol: float
) -> Comparison:
    """The sampled pairs' factor jumps (day over previous trading day) against the other's."""
    found = Comparison(other.label)
    for day, codes in sample.pairs.items():
        previous = sample.previous_day.get(day)
        if previous is None:  # the first stored day: no jump to compare
            continue
        stored = _stored_factors(connection, previous, day, codes)
        reply = other.adj_factors(previous, day, codes)
        theirs = reply.frame
        failed = _failed(reply, day, previous)
        for code in codes:
            mine = stored.get((code, day)), stored.get((code, previous))
            if mine[0] is None or mine[1] is None:
                continue  # not a factor pair the warehouse has (new listing, missing factor)
            row = mine[0]
            values = theirs[theirs["code"] == code].set_index("trade_date")["adj_factor"]
            if day not in values.index or previous not in values.index:
                if (why := _why(failed, code)) is not None:
                    found.unchecked.append(f"{code} {day}: {why}")
                    continue
                found.compared.add((code, day))
                found.disagreements.append(
                    _disagreement(code, day, "adj_factor", row[0], None, row[1], other.label)
                )
                continue
            found.compared.add((code, day))
            ours = row[0] / mine[1][0]
            their_ratio = float(values[day]) / float(values[previous])
            if not _close(ours, their_ratio, rel_tol):
                found.disagreements.append(
                    _disagreement(
                        code, day, "adj_factor_ratio", ours, their_ratio, row[1], other.label
                    )
                )
    return found


def store_disagreements(
    connection: sa.Connection,
    found: Comparison,
    fields: Sequence[str],
    run_id: str | None,
    now: dt.datetime,
) -> int:
    """Replace the `fields` rows of the compared pairs with what this comparison found."""
    table = schema.source_disagreement
    for day in sorted({d for _, d in found.compared}):
        codes = sorted(c for c, d in found.compared if d == day)
        connection.execute(
            sa.delete(table).where(
                table.c.trade_date == day, table.c.code.in_(codes), table.c.field.in_(fields)
            )
        )
    rows = [
        {
            "code": d.code,
            "trade_date": d.trade_date,
            "field": d.field,
            "primary_value": d.primary_value,
            "other_value": d.other_value,
            "primary_source": d.primary_source,
            "other_source": d.other_source,
            "detected_at": now,
            "run_id": run_id,
        }
        for d in found.disagreements
    ]
    if rows:
        connection.execute(sa.insert(table), rows)
    return len(rows)


def disagreement_frame(found: Sequence[Disagreement]) -> pd.DataFrame:
    """Disagreements as a table (for metadata)."""
    columns = [
        "code",
        "trade_date",
        "field",
        "primary_value",
        "other_value",
        "primary_source",
        "other_source",
    ]
    return pd.DataFrame([[getattr(d, c) for c in columns] for d in found], columns=columns)


# ----- warehouse reads ----------------------------------------------------------------------
def _stored_bars(
    connection: sa.Connection, day: dt.date, codes: Sequence[str] | None = None
) -> pd.DataFrame:
    bar, basic, status = schema.daily_bar, schema.stock_basic, schema.daily_status
    query = (
        sa.select(
            bar.c.code,
            *[bar.c[n] for n in BAR_FIELDS],
            bar.c.pre_close,
            bar.c.source,
            basic.c.board,
            # ST as it was that day (point-in-time); today's flag where the day has no status
            sa.func.coalesce(status.c.is_st, basic.c.is_st).label("is_st"),
            basic.c.list_date,
        )
        .select_from(
            bar.outerjoin(basic, basic.c.code == bar.c.code).outerjoin(
                status, sa.and_(status.c.code == bar.c.code, status.c.trade_date == day)
            )
        )
        .where(bar.c.trade_date == day)
        .order_by(bar.c.code)
    )
    if codes is not None:
        query = query.where(bar.c.code.in_(list(codes)))
    rows = connection.execute(query).all()
    columns = ["code", *BAR_FIELDS, "pre_close", "source", "board", "is_st", "list_date"]
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def _stored_factors(
    connection: sa.Connection, previous: dt.date, day: dt.date, codes: Sequence[str]
) -> dict[tuple[str, dt.date], tuple[float, str | None]]:
    factor = schema.adj_factor
    rows = connection.execute(
        sa.select(factor.c.code, factor.c.trade_date, factor.c.adj_factor, factor.c.source).where(
            factor.c.trade_date.in_([previous, day]), factor.c.code.in_(list(codes))
        )
    )
    return {(code, _as_date(d)): (float(value), source) for code, d, value, source in rows}


def _previous_day(connection: sa.Connection, day: dt.date) -> dt.date | None:
    bar = schema.daily_bar
    found = connection.execute(
        sa.select(sa.func.max(bar.c.trade_date)).where(bar.c.trade_date < day)
    ).scalar_one()
    return _as_date(found) if found is not None else None


def _limit_hits(bars: pd.DataFrame, day: dt.date) -> set[str]:
    """Stocks that closed at their limit-up or limit-down price on `day`."""
    hits = set()
    for row in bars.itertuples(index=False):
        if row.board is None or row.pre_close is None or pd.isna(row.pre_close):
            continue
        list_date = _as_date(row.list_date) if row.list_date is not None else None
        if within_ipo_window(str(row.board), list_date, day):
            continue
        pct = limit_pct(str(row.board), bool(row.is_st), day)
        if pct is None:
            continue
        up = round(row.pre_close * (1 + pct / 100), 2)
        down = round(row.pre_close * (1 - pct / 100), 2)
        if row.close >= up - _LIMIT_TICK or row.close <= down + _LIMIT_TICK:
            hits.add(str(row.code))
    return hits


def _ex_right(connection: sa.Connection, day: dt.date, previous: dt.date | None) -> set[str]:
    """Stocks whose stored factor on `day` differs from the previous trading day's."""
    if previous is None:
        return set()
    factor = schema.adj_factor
    before = factor.alias("before")
    rows = connection.execute(
        sa.select(factor.c.code)
        .select_from(
            factor.join(
                before, sa.and_(before.c.code == factor.c.code, before.c.trade_date == previous)
            )
        )
        .where(factor.c.trade_date == day, factor.c.adj_factor != before.c.adj_factor)
    )
    return {code for (code,) in rows}


# ----- helpers ------------------------------------------------------------------------------
def _by_code(frame: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    if frame.empty:
        return frame.set_index("code") if "code" in frame else frame
    return frame[frame["trade_date"] == day].drop_duplicates("code").set_index("code")


def _failed(result: FetchResult, *days: dt.date) -> dict[str, str]:
    """code -> why the other source could not serve it on `days`; `*` = every code."""
    failed: dict[str, str] = {}
    for failure in result.failures:
        if any(failure.start <= day <= failure.end for day in days):
            failed[failure.code or "*"] = failure.message
    return failed


def _why(failed: dict[str, str], code: str) -> str | None:
    return failed.get(code) or failed.get("*")


def _close(a: float, b: float, rel_tol: float) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0) or (a == 0 and b == 0)


def _disagreement(
    code: str,
    day: dt.date,
    name: str,
    primary: float | None,
    other: float | None,
    primary_source: object,
    other_source: str,
) -> Disagreement:
    known = primary_source is not None and not pd.isna(primary_source)
    return Disagreement(
        code,
        day,
        name,
        None if primary is None else float(primary),
        None if other is None else float(other),
        str(primary_source) if known else "unknown",
        other_source,
    )


def _as_date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])
