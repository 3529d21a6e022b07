"""Retry and concurrency policies shared by every asset that talks to a source."""

from __future__ import annotations

import dagster as dg

from stocksync_dagster.core.settings import current_settings

# Steps that call the source share this pool: `dagster instance concurrency set source N`
# (or `concurrency.pools` in dagster.yaml) bounds how many hit the source at once.
SOURCE_POOL = "market_source"
# With the Celery executor (executors.py) source steps go to this queue: the number of workers
# consuming it bounds the load on the source. Other executors ignore the tag.
SOURCE_OP_TAGS = {"dagster-celery/queue": "source"}

MAX_PARTITIONS_PER_RUN = 250
"""A backfill of the market assets runs as runs of at most this many partitions (about one
trading year): a 10-year history is 10 runs. Large enough that a per-stock source (baostock:
one call per stock per run) makes few calls, small enough that a crash or a failed run costs
at most a year of work and each run's Dagster bookkeeping stays small."""

MARKET_BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN)
"""Backfills (UI, gap automation) of `daily_bars` / `adj_factor`: range runs of at most
MAX_PARTITIONS_PER_RUN partitions; each run fetches its range at once."""


def source_retry_policy() -> dg.RetryPolicy:
    """Exponential backoff with jitter: 30 s, ~60 s, ~120 s by default
    (STOCKSYNC_SOURCE_RETRIES, STOCKSYNC_SOURCE_RETRY_DELAY_SECONDS)."""
    settings = current_settings()
    return dg.RetryPolicy(
        max_retries=settings.source_retries,
        delay=settings.source_retry_delay_seconds,
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )
