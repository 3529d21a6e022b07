"""2. Tushare: a year of `daily` and `adj_factor` through the loopback HTTP fake, rate-limited.

A year is ~244 calls per API: at 500 calls/min/token it fits inside one window, so the limit
would never bind. The fake therefore enforces the same RATE on a shorter window (default
50 calls per 6 s per token per API = 500/min) so the year spans several windows, and the
client is configured with the same limit. The bound is the fastest any client could finish
under a sliding-window limit: (ceil(calls / (tokens x cap)) - 1) windows per API. With 3
tokens at 500/min the year waits for one window only, so the fixed tail after it (the last
calls, at this machine's speed) weighs heavily; the same 3 tokens at a lower permission level
(20 calls per 6 s = 200/min) wait four windows, as 1 token does at 500/min. Each API has its
own limit, so the bound of `daily` is that of its busiest API (`daily` itself; its per-day
`suspend_d` calls run beside it under their own limit), from the calls counted per API.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import Any

from benchmarks.common import Outcome, Row, Target, free_port, server_process
from benchmarks.sizes import Size
from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.sources.tushare import TushareSource

TARGET_SHARE = 0.90
MIN_WINDOWS_BINDING = 2  # the target holds where the limit binds: two windows waited or more


class _RefusalCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.refusals = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "rate-limited" in record.getMessage():
            self.refusals += 1


class _CountingSource(TushareSource):
    """The project's source, counting the calls it makes per API: each API has its own limit,
    so `daily` (with its `suspend_d` calls, limited apart) is bound by its busiest API."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls_by_api: Counter[str] = Counter()

    def _call(self, api: str, *args: Any, **kwargs: Any) -> Any:
        self.calls_by_api[api] += 1
        return super()._call(api, *args, **kwargs)


def bound_seconds(calls: int, tokens: int, cap: int, window: float) -> float:
    """Least time for `calls` under `cap` calls per `window` per token (bursts allowed)."""
    return max(math.ceil(calls / (tokens * cap)) - 1, 0) * window


def _fetch(url: str, size: Size, tokens: int, cap: int) -> list[Row]:
    source = _CountingSource(
        [f"bench-token-{i}" for i in range(tokens)],
        api_url=url,
        calls_per_minute=cap,
        rate_window_seconds=size.tushare_window,
    )
    per_minute = cap * 60 / size.tushare_window
    rows = []
    source.trade_calendar(size.start, size.end)  # cached; its own API and limit
    for api, fetch in (("daily", source.daily_bars), ("adj_factor", source.adj_factors)):
        source.calls_by_api.clear()
        began = time.perf_counter()
        result = fetch(size.start, size.end)
        seconds = time.perf_counter() - began
        if result.failures:
            raise RuntimeError(f"tushare {api}: {result.failures[0].message}")
        by_api = dict(source.calls_by_api)
        bound = max(
            bound_seconds(calls, tokens, cap, size.tushare_window) for calls in by_api.values()
        )
        rows.append(
            Row(
                "tushare",
                f"{api}, {tokens} token(s), {per_minute:.0f} calls/min/token",
                seconds,
                calls=result.calls,
                rows=len(result.frame),
                stocks=int(result.frame["code"].nunique()),
                note=f"bound {bound:.1f} s = {bound / seconds:.0%} of the rate-limit bound "
                f"(calls per API: {', '.join(f'{k} {v}' for k, v in sorted(by_api.items()))})",
                extra={
                    "calls_by_api": by_api,
                    "bound_seconds": bound,
                    "share_of_bound": bound / seconds,
                    "windows_waited": round(bound / size.tushare_window),
                },
            )
        )
    return rows


def run(size: Size) -> Outcome:
    days = trading_calendar.trading_days(size.start, size.end)
    per_minute = size.tushare_cap * 60 / size.tushare_window
    out = Outcome(
        params={
            "stocks": size.tushare_stocks,
            "days": len(days),
            "cap_per_window": size.tushare_cap,
            "low_cap_per_window": size.tushare_low_cap,
            "window_seconds": size.tushare_window,
            "calls_per_minute_per_token": per_minute,
            "latency_ms": size.latency_ms,
        }
    )
    # the permission level of the size's cap with every token count, then a lower level with
    # the most tokens, so that the limit binds for several windows there too
    most = (max(size.tushare_tokens),)
    cases = [(size.tushare_cap, size.tushare_tokens), (size.tushare_low_cap, most)]
    counter = _RefusalCounter()
    logging.getLogger("stocksync_dagster.core.sources.tushare").addHandler(counter)
    try:
        for cap, token_counts in cases:
            port = free_port()
            args = [
                "--port", str(port),
                "--stocks", str(size.tushare_stocks),
                "--origin", size.start.isoformat(),
                "--as-of", size.end.isoformat(),
                "--latency-ms", f"{size.latency_ms:g}",
                "--rate-limit", str(cap),
                "--window", f"{size.tushare_window:g}",
            ]  # fmt: skip
            with server_process("benchmarks.serve_tushare", args, "fake tushare at"):
                url = f"http://127.0.0.1:{port}/dataapi"
                for tokens in token_counts:
                    out.rows += _fetch(url, size, tokens, cap)
    finally:
        logging.getLogger("stocksync_dagster.core.sources.tushare").removeHandler(counter)
    for row in out.rows:
        row.extra["rate_limit_refusals_total"] = counter.refusals
    for row in out.rows:
        share = row.extra["share_of_bound"]
        if row.extra["windows_waited"] < MIN_WINDOWS_BINDING:
            # one window waited: the limit hardly binds, the fixed tail after it dominates
            row.note += "; the limit binds for one window only (no target)"
            continue
        out.targets.append(
            Target(
                "tushare",
                f"{row.case}: >= {TARGET_SHARE:.0%} of the rate-limit bound "
                f"({row.extra['windows_waited']} window(s) waited)",
                f"{share:.0%}",
                share >= TARGET_SHARE,
            )
        )
    return out
