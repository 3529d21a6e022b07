"""The gap sensor: missing or failed market partitions become bounded range runs."""

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.defs.market.inflight import AssetPartition, in_flight, unfinished_runs
from stocksync_dagster.defs.market.jobs import (
    TRIGGER_TAG,
    Status,
    market_asset_names,
    market_status,
    market_sync,
    range_tags,
)
from stocksync_dagster.defs.market.partitions import trading_days

GAP_TRIGGER = "gap-sensor"
NEEDS_RUN = (None, dg.AssetPartitionStatus.FAILED)
MAX_RANGES_PER_TICK = 2
MAX_PARTITIONS_PER_RANGE = 60
MAX_RUNS_IN_FLIGHT = 2
COOLDOWN_SECONDS = 900.0


@dataclass(frozen=True)
class GapRange:
    """Consecutive partition keys that the same assets are missing."""

    assets: tuple[str, ...]
    keys: tuple[str, ...]

    @property
    def start(self) -> str:
        return self.keys[0]

    @property
    def end(self) -> str:
        return self.keys[-1]

    def split(self, max_partitions: int) -> list["GapRange"]:
        return [
            GapRange(self.assets, self.keys[i : i + max_partitions])
            for i in range(0, len(self.keys), max_partitions)
        ]


def find_gaps(
    statuses: Mapping[str, Mapping[str, Status]],
    keys: Sequence[str],
    skip: set[AssetPartition] | None = None,
) -> list[GapRange]:
    """Missing or failed partitions, not in `skip`, grouped into ranges (keys ascending)."""
    skip = skip or set()
    ranges: list[GapRange] = []
    assets: tuple[str, ...] = ()
    run: list[str] = []
    for key in keys:
        need = tuple(
            a
            for a, by_key in statuses.items()
            if by_key.get(key) in NEEDS_RUN and (a, key) not in skip
        )
        if need and need == assets:
            run.append(key)
            continue
        if run:
            ranges.append(GapRange(assets, tuple(run)))
        assets, run = need, [key] if need else []
    if run:
        ranges.append(GapRange(assets, tuple(run)))
    return ranges


@dataclass
class GapCursor:
    """Tick number and the ranges requested recently (not requested again until cooled down)."""

    tick: int = 0
    recent: list[tuple[str, str, str, float]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> "GapCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(data["tick"], [tuple(r) for r in data["recent"]])  # type: ignore[misc]

    def dumps(self) -> str:
        return json.dumps({"tick": self.tick, "recent": self.recent})

    def cooling(
        self, now: float, cooldown_seconds: float, keys: Sequence[str]
    ) -> set[AssetPartition]:
        """Partitions requested less than `cooldown_seconds` ago (older entries are dropped)."""
        self.recent = [r for r in self.recent if now - r[3] < cooldown_seconds]
        return {
            (asset, k)
            for assets, start, end, _ in self.recent
            for asset in assets.split("+")
            for k in keys
            if start <= k <= end
        }


@dg.sensor(
    name="gap_sensor",
    job=market_sync,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def gap_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Fills missing or failed daily_bars / adj_factor partitions up to the last closed day.

    Contiguous gaps become single-run range runs (newest first), at most
    `MAX_RANGES_PER_TICK` per tick, `MAX_PARTITIONS_PER_RANGE` keys each and
    `MAX_RUNS_IN_FLIGHT` at once. Partitions already running, or requested in the last
    `COOLDOWN_SECONDS`, are not requested again.
    """
    last = trading_calendar.last_settled_trading_day().isoformat()
    keys = [k for k in trading_days.get_partition_keys() if k <= last]
    statuses = market_status(context.instance, trading_days, keys)
    cursor = GapCursor.parse(context.cursor)
    now = time.time()
    busy = in_flight(context.instance, keys) | cursor.cooling(now, COOLDOWN_SECONDS, keys)
    gaps = find_gaps(statuses, keys)
    todo = find_gaps(statuses, keys, busy)
    missing = sum(len(g.keys) * len(g.assets) for g in gaps)
    running = len(unfinished_runs(context.instance, {TRIGGER_TAG: GAP_TRIGGER}))
    budget = max(0, min(MAX_RANGES_PER_TICK, MAX_RUNS_IN_FLIGHT - running))
    chunks = [c for g in reversed(todo) for c in reversed(g.split(MAX_PARTITIONS_PER_RANGE))]
    chunks = chunks[:budget]
    cursor.tick += 1
    requests = []
    for chunk in chunks:
        assets = "+".join(chunk.assets)
        cursor.recent.append((assets, chunk.start, chunk.end, now))
        requests.append(
            dg.RunRequest(
                run_key=f"gap:{cursor.tick}:{assets}:{chunk.start}:{chunk.end}",
                asset_selection=[dg.AssetKey(a) for a in chunk.assets],
                tags={**range_tags(chunk.start, chunk.end), TRIGGER_TAG: GAP_TRIGGER},
            )
        )
        context.log.info(f"requesting {assets} {chunk.start}..{chunk.end} ({len(chunk.keys)})")
    scope = f"{', '.join(market_asset_names())} {keys[0] if keys else '-'}..{last}"
    if requests:
        skip = None
    elif not gaps:
        skip = f"no missing or failed partitions in {scope}"
    elif budget == 0:
        skip = f"{missing} partitions to fill; waiting for {running} gap run(s) to finish"
    else:
        skip = f"{missing} partitions to fill, all running or requested recently"
    return dg.SensorResult(run_requests=requests, skip_reason=skip, cursor=cursor.dumps())
