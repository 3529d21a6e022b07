"""Secrets never leak: a Tushare token, a database password and a webhook secret.

Runs with all three configured the way definitions.py configures them (`EnvVar`s), one run that
fails on a day whose server error echoes the token, one whose database is unreachable, and the
failure-alert sensor on both. Then every event of the runs (messages, metadata, errors with
their causes and stack), the stored runs (config and tags), every Python log record, the
console, the warehouse's failure tables and every alert payload are searched: none contains a
secret.
"""

import datetime as dt
import json
import logging
import socket
from collections.abc import Iterator

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core.settings import current_settings
from stocksync_dagster.core.sources.demo_market import DemoMarket
from stocksync_dagster.core.warehouse import Warehouse
from stocksync_dagster.defs.health import alerts
from stocksync_dagster.defs.market.assets import market_data
from stocksync_dagster.resources import TushareSourceResource, WarehouseResource
from tests.conftest import _truncate
from tests.fakes.tushare_server import FakeTushareServer
from tests.fakes.webhook_receiver import Handler, Receiver

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(120)]

TOKEN = "tok-SECRET-5d8e1f2a9b"
PASSWORD = "pw-SECRET-9c2b7e"
HOOK_PATH = "wh-SECRET-3a7f0d"
HOOK_QUERY = "wh-SECRET-QUERY-81be"
SECRETS = (TOKEN, PASSWORD, HOOK_PATH, HOOK_QUERY, "SECRET")
START, END = dt.date(2025, 8, 4), dt.date(2025, 8, 8)
BAD_DAY = dt.date(2025, 8, 6)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    import threading

    server = Receiver(("127.0.0.1", 0), Handler)
    server.received, server.answer = [], {"errcode": 0}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_password(url: str, port: int | None = None) -> str:
    parsed = sa.make_url(url).set(password=PASSWORD)
    if port is not None:
        parsed = parsed.set(port=port)
    return parsed.render_as_string(hide_password=False)


def run(instance: dg.DagsterInstance, api_url: str) -> dg.ExecuteInProcessResult:
    """A range run with resources built as definitions.py builds them: secrets as EnvVars."""
    return dg.materialize(
        [market_data],
        instance=instance,
        resources={
            "source": TushareSourceResource(
                tokens=dg.EnvVar("TUSHARE_TOKEN"),
                api_url=api_url,
                max_attempts=2,
                backoff_seconds=0.01,
                call_timeout_seconds=5,
            ),
            "warehouse": WarehouseResource(url=dg.EnvVar("STOCKSYNC_DATABASE_URL")),
        },
        tags={
            "dagster/asset_partition_range_start": START.isoformat(),
            "dagster/asset_partition_range_end": END.isoformat(),
        },
        raise_on_error=False,
    )


def alert(instance: dg.DagsterInstance, run_id: str, webhook: str) -> None:
    """Evaluate the project's failure-alert sensor on a failed run."""
    sensor = alerts.failure_alert_sensor
    dagster_run = instance.get_run_by_id(run_id)
    event = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0]
    context = dg.build_run_status_sensor_context(
        sensor_name="failure_alert_sensor",
        dagster_event=event.dagster_event,  # type: ignore[arg-type]
        dagster_instance=instance,
        dagster_run=dagster_run,  # type: ignore[arg-type]
    ).for_run_failure()
    sensor(context)


def test_no_secret_in_logs_events_metadata_errors_tables_or_alerts(
    postgres_server_url: str,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _truncate(Warehouse(postgres_server_url))
    database_url = with_password(postgres_server_url)
    webhook = (
        f"http://127.0.0.1:{receiver.server_address[1]}/hook/{HOOK_PATH}?access_token={HOOK_QUERY}"
    )
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", database_url)
    monkeypatch.setenv("STOCKSYNC_ALERT_WEBHOOKS", webhook)
    monkeypatch.setenv("STOCKSYNC_UI_URL", "http://ui.example:3000")
    # The alert sensor reads the settings when it is evaluated: drop the cached ones.
    current_settings.cache_clear()
    # INFO: what the project logs (python_logs.python_log_level). At DEBUG, urllib3 itself logs
    # every request line, webhook path and query included (see docs/reliability.md).
    caplog.set_level(logging.INFO)
    market = DemoMarket(30, seed=5, origin=dt.date(2025, 1, 2))
    python_logs = {"managed_python_loggers": ["stocksync_dagster"], "python_log_level": "DEBUG"}
    with (
        FakeTushareServer(market, valid_tokens=[TOKEN], as_of=END) as server,
        dg.instance_for_test(overrides={"python_logs": python_logs}) as instance,
    ):
        server.inject("error", api="daily", trade_date=BAD_DAY, times=None)  # echoes the token
        source_failed = run(instance, server.url)
        monkeypatch.setenv(
            "STOCKSYNC_DATABASE_URL", with_password(postgres_server_url, closed_port())
        )
        database_down = run(instance, server.url)
        assert not source_failed.success and not database_down.success
        for result in (source_failed, database_down):
            alert(instance, result.run_id, webhook)

        haystack = {"console": "".join(capsys.readouterr()), "python logs": caplog.text}
        for result in (source_failed, database_down):
            run_record = instance.get_run_by_id(result.run_id)
            haystack[f"run {result.run_id}"] = dg.serialize_value(run_record)
            for i, entry in enumerate(instance.all_logs(result.run_id)):
                haystack[f"run {result.run_id} event {i}"] = dg.serialize_value(entry)
    with Warehouse(postgres_server_url).connect() as connection:
        for table in ("sync_failure", "sync_rejected_row"):
            haystack[table] = pd.read_sql(sa.text(f"SELECT * FROM {table}"), connection).to_json()
    for i, (_, body) in enumerate(receiver.received):
        haystack[f"alert {i}"] = json.dumps(body, ensure_ascii=False)

    # The secrets were really in play: the server echoed the token, the run used the password.
    assert "token" in haystack["sync_failure"] and len(receiver.received) == 2
    assert "Connection refused" in json.dumps([b for _, b in receiver.received])
    assert any("STEP_FAILURE" in text for text in haystack.values())
    leaks = {
        (where, secret) for where, text in haystack.items() for secret in SECRETS if secret in text
    }
    assert not leaks, sorted(leaks)[:10]
