"""6. Memory: peak RSS of the process tree against the range's length, chunked and not.

`sync_market` of bars + factors (what a range run of both assets does) from the fake baostock
server at low latency, over the last 1, 2 and 4 years of the same stocks, each case in a fresh
process, RSS sampled over the process tree (parent + worker processes; the server excluded).
"after": the default chunking; "before": one chunk for the whole range (`chunk_rows` huge),
which is how a range was synced before chunking. The slope is bytes of peak RSS per row
fetched (bars + factors) between the shortest and the longest range: ~0 when flat. Then the
chunked sync alone over `memory_long_years` (10): the length of a whole history.
"""

from __future__ import annotations

import datetime as dt

from benchmarks.common import Outcome, Row, Target, in_fresh_process
from benchmarks.history import baostock_server, core_sync
from benchmarks.sizes import Size

ONE_CHUNK = 10**12
WORKERS = 4
TARGET_SLOPE = 50.0  # bytes per row: flat, well below the unchunked slope
TARGET_GB = 1.5  # 5,000 stocks x 10 years; shown here at reduced stocks


def _years_before(end: dt.date, years: int) -> dt.date:
    return dt.date(end.year - years + 1, 1, 2)


def _slope(rows: list[Row]) -> float:
    first, last = rows[0], rows[-1]
    if not (last.rows and first.rows) or last.rows == first.rows:
        return 0.0
    return ((last.rss_mb or 0) - (first.rss_mb or 0)) * 1e6 / (last.rows - first.rows)


def _case(
    size: Size, address: str, pid: int, url: str, label: str, years: int, chunk_rows: int | None
) -> Row:
    """One sync of the last `years` years in a fresh process, as a row of the curve."""
    start = _years_before(size.end, years)
    got = in_fresh_process(core_sync, address, pid, url, start, size.end, WORKERS, chunk_rows)
    return Row(
        "memory",
        f"{label}: {years} year(s), {size.memory_stocks} stocks",
        got["seconds"],
        calls=int(got["calls"]),
        rows=int(got["bar_rows"] + got["factor_rows"]),
        stocks=int(got["stocks"]),
        rss_mb=got["rss_mb"],
        note=f"{int(got['chunks'])} chunk(s); peak RSS of the process tree",
        extra={"years": years, "chunks": int(got["chunks"])},
    )


def run(size: Size, url: str) -> Outcome:
    longest = max(size.memory_years)
    origin = _years_before(size.end, max(longest, size.memory_long_years))
    out = Outcome(
        params={
            "stocks": size.memory_stocks,
            "years": list(size.memory_years),
            "long_years": size.memory_long_years,
            "latency_ms": size.memory_latency_ms,
            "workers": WORKERS,
            "chunk_rows": size.memory_chunk_rows or "default",
        }
    )
    curves: dict[str, list[Row]] = {"before": [], "after": []}
    with baostock_server(
        size, size.memory_stocks, origin=origin, latency_ms=size.memory_latency_ms
    ) as (address, pid):
        for label, chunk_rows in (("after", size.memory_chunk_rows), ("before", ONE_CHUNK)):
            for years in size.memory_years:
                curves[label].append(_case(size, address, pid, url, label, years, chunk_rows))
        long = _case(
            size, address, pid, url, "after", size.memory_long_years, size.memory_chunk_rows
        )
    slopes = {label: _slope(rows) for label, rows in curves.items()}
    for label, rows in curves.items():
        for row in rows:
            row.extra["slope_bytes_per_row"] = round(slopes[label], 1)
        rows[-1].note += f"; slope {slopes[label]:.0f} B/row over {rows[0].extra['years']}"
        rows[-1].note += f"-{rows[-1].extra['years']} years"
        out.rows += rows
    whole = _slope([curves["after"][0], long])  # chunked, shortest range to a whole history
    long.extra["slope_bytes_per_row"] = round(whole, 1)
    long.note += f"; slope {whole:.0f} B/row over "
    long.note += f"{curves['after'][0].extra['years']}-{size.memory_long_years} years"
    out.rows.append(long)
    peak = max(r.rss_mb or 0 for r in [*curves["after"], long])
    out.targets += [
        Target(
            "memory",
            f"peak RSS flat in the range's length (chunked, {curves['after'][0].extra['years']}"
            f"-{size.memory_long_years} years): slope <= {TARGET_SLOPE:.0f} B/row (unchunked, "
            f"{curves['before'][0].extra['years']}-{longest} years: "
            f"{slopes['before']:.0f} B/row)",
            f"{whole:.0f} B/row ({slopes['after']:.0f} B/row over "
            f"{curves['after'][0].extra['years']}-{longest} years)",
            whole <= TARGET_SLOPE,
        ),
        Target(
            "memory",
            f"peak RSS of the process tree <= {TARGET_GB:g} GB (chunked, at "
            f"{size.memory_stocks} stocks, up to {size.memory_long_years} years)",
            f"{peak:.0f} MB",
            peak <= TARGET_GB * 1000,
        ),
    ]
    return out
