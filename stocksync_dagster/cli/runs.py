"""Runs launched by the CLI: the definitions' named jobs, on the persistent Dagster instance.

With a Dagster daemon running (`stocksync ui`, `dagster dev`, `dagster-daemon run`) a run is
submitted through the instance's run queue by the public `dagster job launch` command, so pools
and tag concurrency limits apply and the run carries the code-location origin that the UI needs
to re-execute it. Without a daemon nothing would ever dequeue it, so the same named job runs
in-process on the same instance. Either way the CLI follows the run's events to the end.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import dagster as dg

from stocksync_dagster.cli.instance import workspace_file
from stocksync_dagster.core.errors import StocksyncError

# A daemon heartbeats every 30 s or so; older than this, it is gone.
DAEMON_HEARTBEAT_TOLERANCE_SECONDS = 90
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
POLL_SECONDS = 0.5

Echo = Callable[[str], None]

_STEP_EVENTS = {
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
    dg.DagsterEventType.ASSET_MATERIALIZATION,
    dg.DagsterEventType.ASSET_CHECK_EVALUATION,
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.RUN_FAILURE,
}


@dataclass(frozen=True)
class CheckOutcome:
    """One evaluated asset check of a run."""

    name: str
    passed: bool
    severity: str


@dataclass
class RunOutcome:
    """What a finished run did: its status, steps, materializations and check results."""

    run_id: str
    job_name: str
    status: dg.DagsterRunStatus
    steps_succeeded: int = 0
    steps_failed: int = 0
    materializations: int = 0
    checks: list[CheckOutcome] = field(default_factory=list)
    first_failure: str = ""

    @property
    def success(self) -> bool:
        return self.status == dg.DagsterRunStatus.SUCCESS


def daemon_is_running(instance: dg.DagsterInstance, now: float | None = None) -> bool:
    """True when the instance's run-queue daemon has sent a recent heartbeat."""
    heartbeat = instance.get_daemon_heartbeats().get(QUEUE_DAEMON)
    if heartbeat is None:
        return False
    return (now or time.time()) - heartbeat.timestamp < DAEMON_HEARTBEAT_TOLERANCE_SECONDS


def console_config(log_level: str = "WARNING") -> dict[str, object]:
    """Run config that keeps an in-process run's console quiet (events still go to the log)."""
    return {"loggers": {"console": {"config": {"log_level": log_level}}}}


def launch_command(
    job_name: str,
    run_id: str,
    tags: Mapping[str, str],
    run_config: Mapping[str, object],
    op_selection: Sequence[str] | None = None,
) -> list[str]:
    """The `dagster job launch` command line that queues `job_name` on the instance."""
    command = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "launch",
        "-w",
        str(workspace_file()),
        "-j",
        job_name,
        "--run-id",
        run_id,
        "--tags",
        json.dumps(dict(tags)),
        "--config-json",
        json.dumps(dict(run_config)),
    ]
    if op_selection:
        command += ["-o", ",".join(op_selection)]
    return command


def run_job(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    echo: Echo,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping[str, object] | None = None,
    assets: Sequence[str] | None = None,
    log_level: str = "WARNING",
) -> RunOutcome:
    """Run the named job (optionally only `assets` and their checks) and follow it to the end.

    `log_level` is the console level of an in-process run (INFO shows the sources' progress).
    """
    tags = dict(tags or {})
    run_config = dict(run_config or {})
    ops = _op_selection(defs, assets) if assets else None
    daemon = daemon_is_running(instance)
    if daemon and ops != []:
        run_id = _submit(job_name, tags, run_config, ops, echo)
    else:
        if not daemon:
            echo(f"{job_name}: no Dagster daemon is running: running in this process")
        else:  # `dagster job launch` selects steps, and one step computes both market assets
            echo(f"{job_name}: only {', '.join(assets or ())}: running in this process")
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance,
            tags=tags,
            run_config={**console_config(log_level), **run_config},
            asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
            raise_on_error=False,
        )
        run_id = result.run_id
    return follow_run(instance, run_id, echo)


def _submit(
    job_name: str,
    tags: Mapping[str, str],
    run_config: Mapping[str, object],
    ops: Sequence[str] | None,
    echo: Echo,
) -> str:
    run_id = str(uuid.uuid4())
    command = launch_command(job_name, run_id, tags, run_config, ops)
    launched = subprocess.run(
        command, capture_output=True, text=True, check=False, env=dict(os.environ)
    )
    if launched.returncode != 0:
        reason = launch_error(launched.stderr) or f"exit code {launched.returncode}"
        raise StocksyncError(f"could not queue {job_name} on the Dagster instance: {reason}")
    echo(f"{job_name}: queued as run {run_id} (the daemon starts it when pools and limits allow)")
    return run_id


_EXCEPTION_PREFIX = re.compile(r"^(?:[\w.]+(?:Error|Exception|Violation)): ")


def launch_error(stderr: str) -> str:
    """The exception message in `dagster job launch`'s stderr (plus its first config error)."""
    lines = stderr.splitlines()
    found = [i for i, line in enumerate(lines) if _EXCEPTION_PREFIX.match(line)]
    if not found:
        return ""
    message = lines[found[-1]]
    while _EXCEPTION_PREFIX.match(message):
        message = _EXCEPTION_PREFIX.sub("", message, count=1)
    detail = next(
        (x.strip() for x in lines[found[-1] + 1 :] if x.strip().startswith("Error 1:")), ""
    )
    return f"{message}: {detail}" if detail else message


def _op_selection(defs: dg.Definitions, assets: Sequence[str]) -> list[str]:
    """The ops computing `assets` plus the check ops that only target them; [] when an op
    also computes assets that are not asked for (an op selection would run them too)."""
    keys = {dg.AssetKey(a) for a in assets}
    computing = [defs.resolve_assets_def(key) for key in keys]
    if any(not set(op.keys) <= keys for op in computing):
        return []
    ops = [op.node_def.name for op in computing]
    for checks in defs.asset_checks or []:
        if isinstance(checks, dg.AssetChecksDefinition) and all(
            check.asset_key in keys for check in checks.check_keys
        ):
            ops.append(checks.node_def.name)
    return sorted(set(ops))


def follow_run(
    instance: dg.DagsterInstance, run_id: str, echo: Echo, timeout: float | None = None
) -> RunOutcome:
    """Print the run's step events as they arrive; return its outcome once it has finished."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise StocksyncError(f"run {run_id} is not in the Dagster instance's run storage")
    outcome = RunOutcome(run_id=run_id, job_name=run.job_name, status=run.status)
    cursor: str | None = None
    began = time.monotonic()
    announced_queue = False
    while True:
        connection = instance.get_records_for_run(run_id, cursor=cursor, of_type=_STEP_EVENTS)
        for record in connection.records:
            _report(record.event_log_entry, outcome, echo)
        cursor = connection.cursor
        if connection.has_more:
            continue
        run = instance.get_run_by_id(run_id)
        assert run is not None
        if run.is_finished:
            outcome.status = run.status
            return outcome
        if run.status == dg.DagsterRunStatus.QUEUED:
            if not daemon_is_running(instance):
                raise StocksyncError(
                    f"run {run_id} is queued but the Dagster daemon stopped; it starts when a "
                    "daemon runs again (`stocksync ui`), or cancel it in the UI"
                )
            if not announced_queue:
                echo("  waiting in the run queue")
                announced_queue = True
        if timeout is not None and time.monotonic() - began > timeout:
            raise StocksyncError(f"run {run_id} did not finish in {timeout:.0f}s")
        time.sleep(POLL_SECONDS)


def _report(entry: dg.EventLogEntry, outcome: RunOutcome, echo: Echo) -> None:
    event = entry.dagster_event
    if event is None:
        return
    step = event.step_key or ""
    kind = event.event_type
    if kind == dg.DagsterEventType.RUN_START:
        echo("  run started")
    elif kind == dg.DagsterEventType.STEP_SUCCESS:
        outcome.steps_succeeded += 1
        echo(f"  ok    step {step}")
    elif kind == dg.DagsterEventType.STEP_UP_FOR_RETRY:
        echo(f"  retry step {step} (failed; Dagster retries it)")
    elif kind == dg.DagsterEventType.STEP_FAILURE:
        outcome.steps_failed += 1
        error = event.step_failure_data.error
        message = error.message.strip().splitlines()[0] if error and error.message else ""
        outcome.first_failure = outcome.first_failure or f"{step}: {message}"
        echo(f"  FAIL  step {step}: {message}")
    elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
        outcome.materializations += 1
    elif kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
        evaluation = event.event_specific_data
        if not isinstance(evaluation, dg.AssetCheckEvaluation):
            return
        name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
        outcome.checks.append(CheckOutcome(name, evaluation.passed, evaluation.severity.value))
    elif kind == dg.DagsterEventType.RUN_FAILURE and not outcome.first_failure:
        outcome.first_failure = (event.message or "the run failed").strip().splitlines()[0]


def print_checks(outcomes: Sequence[RunOutcome], echo: Echo) -> tuple[int, int]:
    """One line per evaluated check; returns (passed, evaluated)."""
    checks = sorted((c for o in outcomes for c in o.checks), key=lambda c: c.name)
    for check in checks:
        mark = "PASS" if check.passed else f"FAIL ({check.severity})"
        echo(f"  [{mark}] {check.name}")
    return sum(c.passed for c in checks), len(checks)


def require_success(outcome: RunOutcome) -> None:
    """Raise one readable line when the run did not succeed."""
    if not outcome.success:
        reason = outcome.first_failure or f"status {outcome.status.value}"
        raise StocksyncError(
            f"run {outcome.run_id} of {outcome.job_name} failed: {reason} "
            "(its logs are on the run's page in the Dagster UI)"
        )


# Ad-hoc in-process materializations (`dg.materialize`, an ephemeral job) used by the benchmarks
# and the check tests to drive a range without a named job. The CLI commands use `run_job`.
MARKET_ASSETS = ("daily_bars", "adj_factor")
REFERENCE_ASSETS = ("trade_calendar", "stock_basic")


def materialize_range(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    start: dt.date,
    end: dt.date,
    assets: Sequence[str] = MARKET_ASSETS,
    resources: dict[str, object] | None = None,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
) -> dg.ExecuteInProcessResult:
    """One single-run backfill of `assets` over the partition keys in [start, end]."""
    from stocksync_dagster.defs.market.jobs import range_tags

    tags = {**(tags or {}), **range_tags(start.isoformat(), end.isoformat())}
    return _materialize(defs, instance, assets, resources, tags, log_level)


def materialize_unpartitioned(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    assets: Sequence[str] = REFERENCE_ASSETS,
    resources: dict[str, object] | None = None,
    tags: dict[str, str] | None = None,
    log_level: str = "INFO",
) -> dg.ExecuteInProcessResult:
    """One run of the unpartitioned `assets`."""
    return _materialize(defs, instance, assets, resources, tags or {}, log_level)


def _materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    assets: Sequence[str],
    resources: dict[str, object] | None,
    tags: dict[str, str],
    log_level: str,
) -> dg.ExecuteInProcessResult:
    """Materialize `assets` and their checks in one in-process run on `instance`."""
    return dg.materialize(
        _all_assets_and_checks(defs),
        selection=_selection(assets, defs),
        instance=instance,
        resources=resources or defs.resources,
        tags=tags,
        run_config=_console(log_level),
        raise_on_error=False,
    )


def _console(log_level: str) -> dict:
    return {"loggers": {"console": {"config": {"log_level": log_level}}}}


def _all_assets_and_checks(defs: dg.Definitions) -> list:
    return [*(defs.assets or []), *(defs.asset_checks or [])]


def _selection(assets: Sequence[str], defs: dg.Definitions) -> dg.AssetSelection:
    """The assets plus the checks that target them."""
    keys = [dg.AssetKey(a) for a in assets]
    return dg.AssetSelection.assets(*keys) | dg.AssetSelection.checks_for_assets(*keys)


def first_failure(result: dg.ExecuteInProcessResult) -> str:
    """The first line of the first step failure, for a one-line CLI error."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            return event.step_failure_data.error.message.strip().splitlines()[0]
    return "the run failed (see the run's logs in the Dagster UI)"
