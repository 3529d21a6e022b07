"""Failure alerts: payload per webhook format on a loopback receiver, dead webhooks, the sensor."""

import json
import logging
import socket
from collections.abc import Iterator

import dagster as dg
import pytest

from stocksync_dagster.core.alerts import Alert, send_alert, webhook_format
from stocksync_dagster.core.settings import Settings, current_settings
from stocksync_dagster.defs.health.alerts import failure_alert_sensor
from tests.fakes.webhook_receiver import Receiver, running_receiver
from tests.orchestration import DownSourceResource, build_defs, materialize_range

ALERT = Alert(
    job="market_sync",
    run_id="abc123",
    assets=("daily_bars",),
    partitions="2026-11-19..2026-11-20",
    error="TooManyFailuresError: daily_bars 2026-11-19..2026-11-20: 30 of 300 stocks failed",
    run_url="http://127.0.0.1:3000/runs/abc123",
)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def base(server: Receiver) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_format_is_chosen_by_prefix_then_host() -> None:
    assert webhook_format("https://oapi.dingtalk.com/robot/send?access_token=t") == (
        "dingtalk",
        "https://oapi.dingtalk.com/robot/send?access_token=t",
    )
    assert webhook_format("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k")[0] == "wecom"
    assert webhook_format("https://hooks.slack.com/services/T/B/x")[0] == "slack"
    assert webhook_format("https://alerts.example/hook")[0] == "json"
    assert webhook_format("slack+http://127.0.0.1:9/x") == ("slack", "http://127.0.0.1:9/x")


def test_each_format_reaches_the_receiver(receiver: Receiver) -> None:
    url = base(receiver)
    urls = [
        f"{url}/generic",
        f"dingtalk+{url}/ding?access_token=SECRET",
        f"wecom+{url}/wecom?key=SECRET",
        f"slack+{url}/slack/SECRET",
    ]
    assert send_alert(ALERT, urls, timeout=5) == 4
    got = dict((path.split("/")[1].split("?")[0], body) for path, body in receiver.received)
    assert got["generic"]["event"] == "run_failure"
    assert got["generic"]["assets"] == ["daily_bars"]
    assert got["generic"]["partitions"] == "2026-11-19..2026-11-20"
    assert got["generic"]["run_url"] == "http://127.0.0.1:3000/runs/abc123"
    assert got["generic"]["error"].startswith("TooManyFailuresError")
    ding = got["ding"]
    assert ding["msgtype"] == "markdown" and ding["markdown"]["title"].endswith("daily_bars")
    assert "[Open the run](http://127.0.0.1:3000/runs/abc123)" in ding["markdown"]["text"]
    assert "partitions: 2026-11-19..2026-11-20" in got["wecom"]["markdown"]["content"]
    assert "<http://127.0.0.1:3000/runs/abc123|Open the run>" in got["slack"]["text"]
    assert "SECRET" not in json.dumps(got)


def test_dead_or_refusing_webhooks_are_logged_not_raised(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stocksync_dagster.core.alerts")
    dead = f"http://127.0.0.1:{closed_port()}/hook?token=SECRET"
    receiver.answer = {"errcode": 310000, "errmsg": "keywords not in content"}
    refusing = f"dingtalk+{base(receiver)}/robot?access_token=SECRET"
    good = f"{base(receiver)}/ok"
    assert send_alert(ALERT, [dead, refusing, good], timeout=2) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "http://127.0.0.1" in warnings[0] and "ConnectionError" in warnings[0]
    assert "errcode 310000" in warnings[1]
    assert "SECRET" not in caplog.text


@pytest.fixture
def alert_env(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The sensor's settings, as the daemon's environment would give them."""
    with monkeypatch.context() as env:
        env.setenv("STOCKSYNC_ALERT_WEBHOOKS", base(receiver) + "/hook")
        env.setenv("STOCKSYNC_UI_URL", "http://ui.example:3000")
        env.setenv("TUSHARE_TOKEN", "SECRET123")
        current_settings.cache_clear()
        yield
    current_settings.cache_clear()


def failure_context(
    instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult
) -> dg.RunFailureSensorContext:
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    event = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0]
    return dg.build_run_status_sensor_context(
        sensor_name="failure_alert_sensor",
        dagster_event=event.dagster_event,  # type: ignore[arg-type]
        dagster_instance=instance,
        dagster_run=run,
    ).for_run_failure()


def test_failure_sensor_posts_asset_partitions_error_and_run_link(
    receiver: Receiver, alert_env: None, sqlite_url: str
) -> None:
    defs = build_defs(sqlite_url)
    with dg.instance_for_test() as instance:
        result = materialize_range(
            defs, instance, "2026-11-19", "2026-11-20", ("daily_bars",), DownSourceResource()
        )
        assert not result.success
        failure_alert_sensor(failure_context(instance, result))
    [(path, body)] = receiver.received
    assert path == "/hook"
    assert body["assets"] == ["daily_bars"]
    assert body["partitions"] == "2026-11-19..2026-11-20"
    assert body["error"] == "Failure: source unreachable at https://api.example/***"
    assert body["run_url"] == f"http://ui.example:3000/runs/{result.run_id}"
    assert "SECRET123" not in json.dumps(body)


def test_webhook_settings_accept_format_prefixes_and_reject_unknown_ones() -> None:
    env = {
        "STOCKSYNC_ALERT_WEBHOOKS": "dingtalk+https://oapi.dingtalk.com/robot/send?access_token=x",
        "STOCKSYNC_UI_URL": "http://dagster.internal:3000/",
    }
    settings = Settings.from_env(env)
    assert settings.alert_webhooks == (env["STOCKSYNC_ALERT_WEBHOOKS"],)
    assert settings.ui_url == "http://dagster.internal:3000"
    from stocksync_dagster.core.errors import ConfigError

    with pytest.raises(ConfigError, match="STOCKSYNC_ALERT_WEBHOOKS"):
        Settings.from_env({"STOCKSYNC_ALERT_WEBHOOKS": "teams+https://x.example/hook"})
    with pytest.raises(ConfigError, match="STOCKSYNC_NIGHTLY_AT"):
        Settings.from_env({"STOCKSYNC_NIGHTLY_AT": "17:00"})
