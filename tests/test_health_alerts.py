"""Alerts on health: failed checks, stale data, abandoned failures; dedup, digest, channels."""

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import socket
from collections.abc import Iterator
from email import message_from_bytes
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.alerts import Alert, dingtalk_signed_url, send_alert
from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.settings import Settings, current_settings
from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.defs.health import health_alerts
from stocksync_dagster.defs.health.health_alerts import health_alert_sensor
from stocksync_dagster.resources import WarehouseResource
from tests.fakes.webhook_receiver import Receiver, running_receiver
from tests.orchestration import DownSourceResource, build_defs, materialize_range

TOKEN = "tok-SECRET-123456"
DING_SECRET = "SECdingtalk0123456789"
CHECK = dg.AssetCheckKey(dg.AssetKey("daily_bars"), "ohlc_sanity")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def hook(server: Receiver, path: str = "/hook/abc") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> Iterator[pytest.MonkeyPatch]:
    """Alerts to the receiver; a token in the environment that must never reach a payload."""
    monkeypatch.setenv("STOCKSYNC_ALERT_WEBHOOKS", hook(receiver))
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    current_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    current_settings.cache_clear()


def at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=trading_calendar.SHANGHAI)


def tick(
    url: str, instance: dg.DagsterInstance, cursor: str | None, now: dt.datetime, monkeypatch
) -> dg.SensorResult:
    monkeypatch.setattr(trading_calendar, "shanghai_now", lambda: now)
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"warehouse": WarehouseResource(url=url)},
        definitions=build_defs(url),
    )
    result = health_alert_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _filler(column: sa.Column) -> object:
    if isinstance(column.type, sa.Date):
        return None
    if isinstance(column.type, sa.Boolean):
        return False
    if isinstance(column.type, (sa.Integer, sa.Float, sa.Numeric)):
        return 1
    return "demo"


def seed_bars(url: str, days: list[dt.date]) -> None:
    """One bar and factor per day (every required column filled)."""
    with Warehouse(url).begin() as connection:
        for table in (schema.daily_bar, schema.adj_factor):
            base = {
                c.name: _filler(c)
                for c in table.columns
                if not c.nullable and c.server_default is None
            }
            connection.execute(
                sa.insert(table),
                [{**base, "code": "600000.SH", "trade_date": d} for d in days],
            )


def abandon(url: str, day: dt.date, code: str, when: dt.datetime) -> None:
    with Warehouse(url).begin() as connection:
        connection.execute(
            sa.insert(schema.sync_failure),
            [
                {
                    "asset": "daily_bars",
                    "trade_date": day,
                    "code": code,
                    "error_class": "SourceError",
                    "error": f"tushare daily: HTTP 500 for token {TOKEN}",
                    "retry_count": 5,
                    "status": "abandoned",
                    "first_attempt_at": when,
                    "last_attempt_at": when,
                }
            ],
        )


def bodies(receiver: Receiver) -> list[dict]:
    return [body for _, body in receiver.received]


def assert_no_secret(receiver: Receiver) -> None:
    text = json.dumps(receiver.received)
    assert TOKEN not in text and DING_SECRET not in text


def settled(n: int) -> list[dt.date]:
    """The last n trading days settled a day ago: `at(days[-1], 21)` is then in the past, as
    the digest's failed-run filter (real run timestamps vs the sensor's clock) needs."""
    yesterday = trading_calendar.shanghai_now() - dt.timedelta(days=1)
    last = trading_calendar.last_settled_trading_day(yesterday)
    return trading_calendar.trading_days(last - dt.timedelta(days=3 * n + 10), last)[-n:]


def test_failed_check_alerts_once_with_days_codes_and_link(
    sqlite_url: str, env: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    days = settled(3)
    seed_bars(sqlite_url, days)  # fresh: only the check fails
    now = at(days[-1], 21)
    with dg.instance_for_test() as instance:
        first = tick(sqlite_url, instance, None, now, env)
        assert receiver.received == []  # nothing wrong yet
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(
                asset_key=CHECK.asset_key,
                check_name=CHECK.name,
                passed=False,
                severity=dg.AssetCheckSeverity.ERROR,
                description=f"2 rows with low > high (source said token {TOKEN})",
                metadata={"day_list": days[0].isoformat(), "code_list": "600000.SH, 000001.SZ"},
            )
        )
        instance.report_runless_asset_event(  # WARN: no alert
            dg.AssetCheckEvaluation(
                asset_key=CHECK.asset_key,
                check_name="complete_per_day",
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
            )
        )
        second = tick(sqlite_url, instance, first.cursor, now, env)
        third = tick(sqlite_url, instance, second.cursor, now, env)
    assert third.cursor == second.cursor
    [body] = bodies(receiver)
    assert body["event"] == "check_failure"
    assert body["title"] == "stocksync check failed: daily_bars:ohlc_sanity"
    assert body["days"] == days[0].isoformat()
    assert body["codes"] == "600000.SH, 000001.SZ"
    assert body["run_url"].endswith("/assets/daily_bars?view=checks")
    assert_no_secret(receiver)


def test_freshness_missed_alerts_without_any_run_and_once_per_day(
    sqlite_url: str, env: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    days = settled(4)
    seed_bars(sqlite_url, days[:2])  # the last two trading days never arrived
    with dg.instance_for_test() as instance:
        before = tick(sqlite_url, instance, None, at(days[-1], 19, 30), env)
        assert [b["days"] for b in bodies(receiver)] == [days[2].isoformat()]  # yesterday's
        receiver.received.clear()
        late = tick(sqlite_url, instance, before.cursor, at(days[-1], 20, 1), env)
        again = tick(sqlite_url, instance, late.cursor, at(days[-1], 23), env)
        assert again.cursor == late.cursor
        assert instance.get_runs() == []  # no run happened at all
    [body] = bodies(receiver)
    assert body["event"] == "freshness"
    assert body["days"] == f"{days[2]}, {days[3]}"
    assert f"{days[3]} is not in the warehouse" in body["error"]


def test_abandoned_failures_alert_once_naming_day_code_and_command(
    warehouse_url: str, env: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    days = settled(3)
    seed_bars(warehouse_url, days)
    now = at(days[-1], 21)
    abandon(warehouse_url, days[1], "600519.SH", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    with dg.instance_for_test() as instance:
        first = tick(warehouse_url, instance, None, now, env)
        second = tick(warehouse_url, instance, first.cursor, now, env)
        abandon(warehouse_url, days[2], "000001.SZ", dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
        tick(warehouse_url, instance, second.cursor, now, env)
    assert [(b["event"], b["days"], b["codes"]) for b in bodies(receiver)] == [
        ("abandoned", days[1].isoformat(), "600519.SH"),
        ("abandoned", days[2].isoformat(), "000001.SZ"),
    ]
    assert "stocksync failures retry --status abandoned" in bodies(receiver)[0]["error"]
    assert_no_secret(receiver)


def test_digest_sends_one_message_a_day_for_all_events(
    sqlite_url: str, env: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    env.setenv("STOCKSYNC_ALERT_DIGEST_AT", "08:30")
    current_settings.cache_clear()
    days = settled(4)
    seed_bars(sqlite_url, days[:3])
    abandon(sqlite_url, days[1], "600519.SH", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    evening = at(days[-1], 21)
    morning = evening + dt.timedelta(hours=12)
    with dg.instance_for_test() as instance:
        first = tick(sqlite_url, instance, None, evening, env)
        assert receiver.received == []  # queued for the digest
        defs = build_defs(sqlite_url)
        key = days[-1].isoformat()
        failed = materialize_range(defs, instance, key, key, source=DownSourceResource())
        assert not failed.success
        second = tick(sqlite_url, instance, first.cursor, morning, env)
        tick(sqlite_url, instance, second.cursor, morning + dt.timedelta(minutes=5), env)
    [body] = bodies(receiver)
    assert body["event"] == "digest"
    assert "3 event(s)" in body["error"]
    assert "stocksync data not fresh" in body["text"]
    assert "stocksync failures abandoned" in body["text"]
    assert (
        f"stocksync run failed: adj_factor, daily_bars: http://127.0.0.1:3000/runs/{failed.run_id}"
        in body["text"]
    )
    assert_no_secret(receiver)


def test_dingtalk_signed_robot_carries_a_correct_sign(receiver: Receiver) -> None:
    url = f"dingtalk+{hook(receiver, '/robot/send')}?access_token=abc&secret={DING_SECRET}"
    alert = Alert("market_sync", "r1", ("daily_bars",), "2026-11-20", "boom", "http://ui/runs/r1")
    assert send_alert(alert, [url]) == 1
    [(path, body)] = receiver.received
    query = parse_qs(urlsplit(path).query)
    assert query["access_token"] == ["abc"] and "secret" not in query
    timestamp, sign = query["timestamp"][0], query["sign"][0]
    expected = hmac.new(
        DING_SECRET.encode(), f"{timestamp}\n{DING_SECRET}".encode(), hashlib.sha256
    ).digest()
    assert sign == base64.b64encode(expected).decode()
    assert body["msgtype"] == "markdown"
    assert_no_secret(receiver)
    # the documented example of DingTalk's algorithm, byte for byte
    signed = dingtalk_signed_url("https://x/robot/send?access_token=t&secret=s", now_ms=1)
    own = base64.b64encode(hmac.new(b"s", b"1\ns", hashlib.sha256).digest()).decode()
    assert parse_qs(urlsplit(signed).query)["sign"] == [own]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Inbox]]:
    inbox = Inbox()
    with socket.socket() as probe:  # aiosmtpd's start() cannot take port 0
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield controller, inbox
    controller.stop()


def test_smtp_email_reaches_a_local_server(smtp: tuple[Controller, Inbox]) -> None:
    controller, inbox = smtp
    url = f"smtp://127.0.0.1:{controller.port}?to=a@example.com,b@example.com&from=ops@example.com"
    settings = Settings.from_env({"STOCKSYNC_ALERT_EMAIL": url})
    alert = Alert("market_sync", "r1", ("daily_bars",), "2026-11-20", "boom", "http://ui/runs/r1")
    assert send_alert(alert, (), emails=settings.alert_emails) == 1
    [(sender, recipients, content)] = inbox.messages
    message = message_from_bytes(content)
    assert sender == "ops@example.com"
    assert recipients == ["a@example.com", "b@example.com"]
    assert message["Subject"] == "stocksync run failed: daily_bars"
    assert "partitions: 2026-11-20" in message.get_payload()


def test_smtp_password_is_never_sent_in_clear_nor_logged(
    smtp: tuple[Controller, Inbox], caplog: pytest.LogCaptureFixture
) -> None:
    controller, inbox = smtp
    url = f"smtp://ops:PASSWORD99@127.0.0.1:{controller.port}?to=a@example.com"
    alert = Alert("market_sync", "r1", ("daily_bars",), "-", "boom", "http://ui/runs/r1")
    with caplog.at_level(logging.INFO):
        assert send_alert(alert, (), emails=[url]) == 0  # no STARTTLS offered: refused
    assert inbox.messages == []
    assert "STARTTLS" in caplog.text and "PASSWORD99" not in caplog.text


@pytest.mark.parametrize(
    "url",
    ["smtp://host:587", "http://host?to=a@x", "smtp://host:587?to=nobody", "smtp://:25?to=a@x"],
)
def test_bad_email_settings_name_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match="STOCKSYNC_ALERT_EMAIL"):
        Settings.from_env({"STOCKSYNC_ALERT_EMAIL": url})


def test_sensor_is_quiet_without_channels(sqlite_url: str, monkeypatch) -> None:
    current_settings.cache_clear()
    abandon(sqlite_url, settled(1)[0], "600519.SH", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    with dg.instance_for_test() as instance:
        result = tick(sqlite_url, instance, None, at(settled(1)[0], 21), monkeypatch)
    assert result.skip_reason is not None
    assert "no STOCKSYNC_ALERT_WEBHOOKS" in (result.skip_reason.skip_message or "")
    assert dt.time(20, 0) == health_alerts.FRESHNESS_DEADLINE
