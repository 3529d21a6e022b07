"""The run-failure sensor that posts alerts to STOCKSYNC_ALERT_WEBHOOKS."""

import re
from collections.abc import Sequence
from typing import Protocol

import dagster as dg

from stocksync_dagster.core.alerts import Alert, first_line, send_alert
from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.defs.market.jobs import PARTITION_TAG, RANGE_END_TAG, RANGE_START_TAG

_RETRY_WRAPPERS = {"RetryRequestedFromPolicy", "RetryRequested"}
_MODULE_PATH = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=\w+:)")  # package.module.Error: -> Error:


class ErrorInfo(Protocol):
    """What alerts read of a step's error (Dagster's serializable error info)."""

    @property
    def cls_name(self) -> str | None: ...
    @property
    def message(self) -> str: ...
    @property
    def cause(self) -> "ErrorInfo | None": ...


def run_partitions_text(tags: dict[str, str]) -> str:
    """`D`, `START..END` or `- (unpartitioned)` for a run's tags."""
    if PARTITION_TAG in tags:
        return tags[PARTITION_TAG]
    if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
        return f"{tags[RANGE_START_TAG]}..{tags[RANGE_END_TAG]}"
    return "- (unpartitioned)"


def step_failure_text(step_failures: Sequence[dg.DagsterEvent]) -> str | None:
    """The first step error that is not a Dagster wrapper, module path dropped; None if none."""
    error_event = next(
        (e for e in step_failures if e.step_failure_data and e.step_failure_data.error), None
    )
    if error_event is None or error_event.step_failure_data.error is None:
        return None
    error: ErrorInfo = error_event.step_failure_data.error
    # Dagster wraps user errors: report the first error that is not a Dagster wrapper (our
    # own errors say what to do; their library causes do not).
    while error.cause is not None and _is_dagster_wrapper(error):
        error = error.cause
    return _MODULE_PATH.sub("", error.message)


def run_assets(
    run: dg.DagsterRun,
    step_failures: Sequence[dg.DagsterEvent],
    instance: dg.DagsterInstance | None = None,
) -> tuple[str, ...]:
    """The run's selected assets, else the assets the failed steps planned (one step can
    compute several, e.g. `market_data`), else the steps that failed."""
    if run.asset_selection:
        return tuple(sorted(k.to_user_string() for k in run.asset_selection))
    steps = {e.step_key for e in step_failures if e.step_key}
    if instance is not None:
        planned = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=10_000
        ).records
        assets = {
            r.event_log_entry.dagster_event.asset_key.to_user_string()
            for r in planned
            if r.event_log_entry.step_key in steps
            and r.event_log_entry.dagster_event is not None
            and r.event_log_entry.dagster_event.asset_key is not None
        }
        if assets:
            return tuple(sorted(assets))
    return tuple(sorted(steps))


def alert_for(context: dg.RunFailureSensorContext, ui_url: str, secrets: Sequence[str]) -> Alert:
    """What the webhooks are told about the failed run (never config, never URLs with secrets)."""
    run = context.dagster_run
    step_failures = context.get_step_failure_events()
    message = step_failure_text(step_failures) or context.failure_event.message or "run failed"
    return Alert(
        job=run.job_name,
        run_id=run.run_id,
        assets=run_assets(run, step_failures, context.instance),
        partitions=run_partitions_text(dict(run.tags)),
        error=first_line(message, secrets),
        run_url=f"{ui_url.rstrip('/')}/runs/{run.run_id}",
    )


def _is_dagster_wrapper(error: ErrorInfo) -> bool:
    """Dagster's own wrappers ("Error occurred while executing...", "Exceeded max_retries")."""
    name = error.cls_name
    return name is None or name.startswith("Dagster") or name in _RETRY_WRAPPERS


WEBHOOK_TIMEOUT_SECONDS = 10.0


@dg.run_failure_sensor(
    name="failure_alert_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Posts every failed run of this code location (asset, partitions, first line "
    "of the error, link to the run) to STOCKSYNC_ALERT_WEBHOOKS (generic JSON, DingTalk incl. "
    "signed robots, WeCom or Slack) and STOCKSYNC_ALERT_EMAIL. Does nothing when no channel is "
    "configured; with STOCKSYNC_ALERT_DIGEST_AT the daily digest of health_alert_sensor "
    "reports failed runs instead.",
)
def failure_alert_sensor(context: dg.RunFailureSensorContext) -> None:
    """Posts every failed run (asset, partitions, error, link) to the alert channels."""
    settings = current_settings()  # at evaluation time: the daemon's environment
    channels = len(settings.alert_webhooks) + len(settings.alert_emails)
    if not channels:
        context.log.info("no STOCKSYNC_ALERT_WEBHOOKS / STOCKSYNC_ALERT_EMAIL; not alerting")
        return
    if settings.alert_digest_at is not None:
        context.log.info("STOCKSYNC_ALERT_DIGEST_AT is set: this run goes into the daily digest")
        return
    alert = alert_for(context, settings.ui_url, settings.tushare_tokens)
    delivered = send_alert(
        alert, settings.alert_webhooks, WEBHOOK_TIMEOUT_SECONDS, settings.alert_emails
    )
    context.log.info(f"alert for run {alert.run_id} delivered to {delivered}/{channels}")
