"""Alerts on the warehouse's health, not only on failed runs: failed checks, stale data, abandoned
failures. One message per event (the sensor's cursor remembers what was sent), or one daily
digest when STOCKSYNC_ALERT_DIGEST_AT is set.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import dagster as dg
import pandas as pd

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.alerts import Alert, digest, first_line, send_alert
from stocksync_dagster.core.settings import Settings, current_settings
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.core.warehouse.failures import abandoned_since
from stocksync_dagster.core.warehouse.queries import latest_trade_date
from stocksync_dagster.defs.health.alerts import (
    WEBHOOK_TIMEOUT_SECONDS,
    run_assets,
    run_partitions_text,
    step_failure_text,
)
from stocksync_dagster.resources import WarehouseResource

# The latest trading day must be in the warehouse by this time (Asia/Shanghai): the time of the
# health-check schedule, 1.5 h after the nightly sync starts.
FRESHNESS_DEADLINE = dt.time(20, 0)
FRESH_TABLES = (schema.daily_bar, schema.adj_factor)
MAX_PENDING = 200  # digest mode: events kept for the next digest (the count is always right)
MAX_LISTED = 10
_HISTORY = 20  # check evaluations read per check and tick


@dataclass
class AlertCursor:
    """What the sensor already reported, kept as its cursor (JSON)."""

    check_id: int | None = None  # newest check evaluation seen (event storage id)
    abandoned_after: str | None = None  # newest abandoned row's last_attempt_at already sent
    stale_day: str | None = None  # the trading day a freshness alert was sent for
    runs_after: float | None = None  # digest mode: newest failed run (update time) collected
    pending: list[dict] = field(default_factory=list)  # digest mode: events not sent yet
    pending_total: int = 0
    digest_day: str | None = None  # the day the last digest went out

    @classmethod
    def parse(cls, text: str | None) -> AlertCursor:
        return cls(**json.loads(text)) if text else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _capped(values: Sequence[object]) -> str:
    items = [str(v) for v in values]
    more = f" … and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def _metadata_text(metadata: dict, suffix: str) -> str:
    """The first metadata value whose key ends with `suffix` (the checks' `day_list` etc.)."""
    for key, value in metadata.items():
        if key.endswith(suffix):
            return str(getattr(value, "value", value))
    return ""


def check_alerts(
    instance: dg.DagsterInstance,
    check_keys: Sequence[dg.AssetCheckKey],
    cursor: AlertCursor,
    settings: Settings,
) -> list[Alert]:
    """Check evaluations that failed at ERROR severity since the cursor (oldest first).

    On the first tick (no cursor) only each check's latest evaluation counts.
    """
    storage = instance.event_log_storage
    found = []
    newest = cursor.check_id or 0
    for key in check_keys:
        records = storage.get_asset_check_execution_history(key, limit=_HISTORY)
        if cursor.check_id is None:
            records = records[:1]
        for record in records:
            newest = max(newest, record.id)
            evaluation = record.evaluation
            if (cursor.check_id is not None and record.id <= cursor.check_id) or evaluation is None:
                continue
            if evaluation.passed or evaluation.severity != dg.AssetCheckSeverity.ERROR:
                continue
            found.append((record.id, key, record.run_id, evaluation))
    cursor.check_id = newest
    alerts = []
    for _, key, run_id, evaluation in sorted(found, key=lambda f: f[0]):
        asset = key.asset_key.to_user_string()
        metadata = dict(evaluation.metadata or {})
        alerts.append(
            Alert(
                job="",
                run_id=run_id,
                assets=(asset,),
                partitions="",
                error=first_line(evaluation.description or "check failed", settings.tushare_tokens),
                run_url=f"{settings.ui_url}/runs/{run_id}"
                if run_id
                else f"{settings.ui_url}/assets/{asset}?view=checks",
                event="check_failure",
                days=_metadata_text(metadata, "day_list"),
                codes=_metadata_text(metadata, "code_list"),
                subject=f"{asset}:{key.name}",
            )
        )
    return alerts


def expected_day(now: dt.datetime) -> dt.date:
    """The latest trading day whose freshness deadline has passed at `now`."""
    settle = dt.timedelta(hours=trading_calendar.CLOSE_SETTLED_HOUR)
    deadline = dt.timedelta(hours=FRESHNESS_DEADLINE.hour, minutes=FRESHNESS_DEADLINE.minute)
    return trading_calendar.last_settled_trading_day(now - (deadline - settle))


def freshness_alert(
    warehouse: Warehouse, now: dt.datetime, cursor: AlertCursor, settings: Settings
) -> Alert | None:
    """An alert when the latest trading day is missing after its deadline (once per day)."""
    day = expected_day(now)
    if day < settings.start_date or cursor.stale_day == day.isoformat():
        return None
    with warehouse.connect() as connection:
        latest = {t.name: latest_trade_date(connection, t) for t in FRESH_TABLES}
    stale = {name: last for name, last in latest.items() if last is None or last < day}
    if not stale:
        return None
    lasts = [d for d in stale.values() if d is not None]
    first = min(lasts) + dt.timedelta(days=1) if lasts else settings.start_date
    missing = trading_calendar.trading_days(first, day) or [day]
    cursor.stale_day = day.isoformat()
    newest = ", ".join(f"{name} {last or 'empty'}" for name, last in sorted(stale.items()))
    return Alert(
        job="",
        run_id="",
        assets=tuple(sorted("daily_bars" if n == "daily_bar" else n for n in stale)),
        partitions="",
        error=f"{day} is not in the warehouse at the {FRESHNESS_DEADLINE:%H:%M} deadline "
        f"(newest day: {newest}); was the nightly sync or the daemon down?",
        run_url=f"{settings.ui_url}/runs",
        event="freshness",
        days=_capped([d.isoformat() for d in missing]),
        subject=f"{day} missing",
    )


def abandoned_alert(warehouse: Warehouse, cursor: AlertCursor, settings: Settings) -> Alert | None:
    """One alert for the rows abandoned since the cursor."""
    after = pd.Timestamp(cursor.abandoned_after).to_pydatetime() if cursor.abandoned_after else None
    with warehouse.connect() as connection:
        rows = abandoned_since(connection, after)
    if rows.empty:
        return None
    cursor.abandoned_after = pd.Timestamp(rows["last_attempt_at"].max()).isoformat()
    days = sorted({str(d) for d in rows["trade_date"]})
    codes = sorted(set(rows["code"]) - {schema.WHOLE_DAY})
    return Alert(
        job="",
        run_id="",
        assets=tuple(sorted(set(rows["asset"]))),
        partitions="",
        error=f"{len(rows)} sync_failure row(s) gave up after their retries: "
        f"{first_line(str(rows['error'].iloc[-1]), settings.tushare_tokens)}; "
        "`stocksync failures retry --status abandoned` re-queues them",
        run_url=f"{settings.ui_url}/assets/daily_bars?view=checks",
        event="abandoned",
        days=_capped(days),
        codes=_capped(codes) if codes else "whole days",
        subject=f"{len(rows)} row(s)",
    )


def failed_run_alerts(
    instance: dg.DagsterInstance, cursor: AlertCursor, settings: Settings
) -> list[Alert]:
    """Digest mode: failed runs since the cursor (the run-failure sensor stays silent then)."""
    after = cursor.runs_after
    if after is None:
        cursor.runs_after = trading_calendar.shanghai_now().timestamp()
        return []
    filters = dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.FAILURE],
        updated_after=dt.datetime.fromtimestamp(after, tz=dt.UTC),
    )
    records = sorted(instance.get_run_records(filters=filters), key=lambda r: r.update_timestamp)
    alerts = []
    for record in records:
        run = record.dagster_run
        cursor.runs_after = max(cursor.runs_after or 0, record.update_timestamp.timestamp())
        entries = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        failures = [e.dagster_event for e in entries if e.dagster_event is not None]
        message = step_failure_text(failures) or "run failed (see the run's logs)"
        alerts.append(
            Alert(
                job=run.job_name,
                run_id=run.run_id,
                assets=run_assets(run, failures, instance),
                partitions=run_partitions_text(dict(run.tags)),
                error=first_line(message, settings.tushare_tokens),
                run_url=f"{settings.ui_url}/runs/{run.run_id}",
            )
        )
    return alerts


def deliver(
    alerts: list[Alert],
    cursor: AlertCursor,
    now: dt.datetime,
    settings: Settings,
    log: logging.Logger | dg.DagsterLogManager | None = None,
) -> list[Alert]:
    """Send at once, or in digest mode queue them and send one digest per day; returns sent."""
    if settings.alert_digest_at is None:
        outbox = alerts
    else:
        cursor.pending_total += len(alerts)
        cursor.pending = (cursor.pending + [asdict(a) for a in alerts])[-MAX_PENDING:]
        # The digest moment most recently passed: today's STOCKSYNC_ALERT_DIGEST_AT, or
        # yesterday's before it. The first tick only starts the clock.
        moment = now.date() - dt.timedelta(days=int(now.time() < settings.alert_digest_at))
        if cursor.digest_day is None:
            cursor.digest_day = moment.isoformat()
        due = cursor.digest_day < moment.isoformat()
        outbox = []
        if due and cursor.pending_total:
            queued = [Alert(**{**a, "assets": tuple(a["assets"])}) for a in cursor.pending]
            summary = digest(queued, moment.isoformat(), f"{settings.ui_url}/runs")
            if cursor.pending_total > len(queued):
                total = f"{cursor.pending_total} event(s), the last {len(queued)} listed"
                summary = dataclasses.replace(summary, error=total)
            outbox = [summary]
        if due:
            cursor.digest_day = moment.isoformat()
            cursor.pending, cursor.pending_total = [], 0
    for alert in outbox:
        delivered = send_alert(
            alert, settings.alert_webhooks, WEBHOOK_TIMEOUT_SECONDS, settings.alert_emails
        )
        if log is not None:
            channels = len(settings.alert_webhooks) + len(settings.alert_emails)
            log.info(f"{alert.title}: delivered to {delivered}/{channels}")
    return outbox


@dg.sensor(
    name="health_alert_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every minute: alerts STOCKSYNC_ALERT_WEBHOOKS / STOCKSYNC_ALERT_EMAIL when an "
    "asset check fails at ERROR severity, when the latest trading day is not in the warehouse "
    f"by {FRESHNESS_DEADLINE:%H:%M} Asia/Shanghai (also when no run happened at all), or when "
    "sync_failure rows become abandoned. One message per event (deduplicated across ticks); "
    "with STOCKSYNC_ALERT_DIGEST_AT, one digest a day instead (failed runs included).",
)
def health_alert_sensor(
    context: dg.SensorEvaluationContext, warehouse: WarehouseResource
) -> dg.SensorResult:
    """Alerts on failed checks, stale data and abandoned failures; one message per event."""
    settings = current_settings()
    cursor = AlertCursor.parse(context.cursor)
    now = trading_calendar.shanghai_now()
    store = warehouse.get()
    repository = context.repository_def
    check_keys = list(repository.asset_graph.asset_check_keys) if repository else []
    alerts = check_alerts(context.instance, check_keys, cursor, settings)
    for found in (
        freshness_alert(store, now, cursor, settings),
        abandoned_alert(store, cursor, settings),
    ):
        if found is not None:
            alerts.append(found)
    if settings.alert_digest_at is not None:
        alerts += failed_run_alerts(context.instance, cursor, settings)
    if not settings.alert_webhooks and not settings.alert_emails:
        sent: list[Alert] = []
        note = f"{len(alerts)} event(s); no STOCKSYNC_ALERT_WEBHOOKS / _EMAIL configured"
    else:
        sent = deliver(alerts, cursor, now, settings, context.log)
        note = f"{len(alerts)} new event(s), {len(sent)} message(s) sent"
    return dg.SensorResult(cursor=cursor.dump(), skip_reason=None if sent else note)
