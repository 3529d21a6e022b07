"""Configuration: every bad value is one clear error naming the variable, secrets never echoed."""

import datetime as dt

import pytest

from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_SOURCE,
    DEFAULT_START_DATE,
    Settings,
    redact_database_url,
    redact_url,
)


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.source == DEFAULT_SOURCE == "baostock"
    assert settings.start_date == DEFAULT_START_DATE
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert not settings.database_url_from_env


def test_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "STOCKSYNC_SOURCE": "Tushare",
            "STOCKSYNC_START_DATE": "2024-03-01",
            "BAOSTOCK_SERVER": "127.0.0.1:10030",
            "TUSHARE_TOKEN": " a1 , b2 ,",
            "STOCKSYNC_ALERT_WEBHOOKS": "https://example.invalid/hook, http://127.0.0.1:9/x",
            "STOCKSYNC_DATABASE_URL": "postgresql+psycopg://u:pw@db:5432/market",
        }
    )
    assert settings.source == "tushare"
    assert settings.start_date == dt.date(2024, 3, 1)
    assert settings.baostock_server == "127.0.0.1:10030"  # the resource field takes the text
    assert settings.tushare_tokens == ("a1", "b2")
    assert len(settings.alert_webhooks) == 2
    assert settings.database_url_from_env


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("STOCKSYNC_SOURCE", "yahoo", "unknown source"),
        ("STOCKSYNC_START_DATE", "2024-13-01", "not a date"),
        ("STOCKSYNC_START_DATE", "yesterday", "not a date"),
        ("STOCKSYNC_START_DATE", "2999-01-01", "in the future"),
        ("STOCKSYNC_START_DATE", "1990-01-01", "before"),
        ("STOCKSYNC_DATABASE_URL", "not a url", "not a SQLAlchemy URL"),
        ("STOCKSYNC_DATABASE_URL", "mysql://u:secretpw@h/db", "unsupported database"),
        (
            "STOCKSYNC_DATABASE_URL",
            "postgresql+pg8000://u:secretpw@h/db",
            "unsupported PostgreSQL driver",
        ),
        ("BAOSTOCK_SERVER", "localhost", "not host:port"),
        ("BAOSTOCK_SERVER", "localhost:99999", "not host:port"),
        ("TUSHARE_TOKEN", " , ", "no token"),
        ("TUSHARE_API_URL", "ftp://x", "not an http(s) URL"),
        ("STOCKSYNC_ALERT_WEBHOOKS", "hooks.example/secretpath", "not an http(s) URL"),
    ],
)
def test_bad_values_name_the_setting(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({variable: value})
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert expected in message
    assert "secretpw" not in message and "secretpath" not in message
    assert "\n" not in message


def test_redaction_hides_passwords_paths_and_queries() -> None:
    assert (
        redact_database_url("postgresql+psycopg://u:hunter2@db/x")
        == "postgresql+psycopg://u:***@db/x"
    )
    hook = "https://oapi.dingtalk.com/robot/send?access_token=SECRET"
    assert "SECRET" not in redact_url(hook)
    assert (
        redact_url("https://hooks.slack.com/services/T0/B0/SECRET") == "https://hooks.slack.com/***"
    )


def test_source_retries_feed_every_source_assets_retry_policy() -> None:
    """tests/conftest.py: STOCKSYNC_SOURCE_RETRIES=2, STOCKSYNC_SOURCE_RETRY_DELAY_SECONDS=0.1."""
    import dagster as dg

    from stocksync_dagster.defs.market.assets import market_data
    from stocksync_dagster.defs.reference.assets import stock_basic, trade_calendar

    for asset in (market_data, trade_calendar, stock_basic):
        policy = asset.op.retry_policy
        assert policy is not None
        assert (policy.max_retries, policy.delay) == (2, 0.1)
        assert (policy.backoff, policy.jitter) == (dg.Backoff.EXPONENTIAL, dg.Jitter.PLUS_MINUS)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("STOCKSYNC_SOURCE_RETRIES", "21"), ("STOCKSYNC_SOURCE_RETRY_DELAY_SECONDS", "-1")],
)
def test_bad_retry_settings_name_the_setting(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        Settings.from_env({variable: value})
