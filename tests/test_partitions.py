"""Trading-day partitions: no weekend, holiday or future key; day D appears at D 18:00 Shanghai."""

import datetime as dt

import pytest

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.defs.market.partitions import trading_day_partitions

SH = trading_calendar.SHANGHAI
PARTITIONS = trading_day_partitions(dt.date(2025, 9, 1))


def keys_at(year: int, month: int, day: int, hour: int, minute: int = 0) -> list[str]:
    return PARTITIONS.get_partition_keys(
        current_time=dt.datetime(year, month, day, hour, minute, tzinfo=SH)
    )


def test_no_weekends_or_holidays() -> None:
    keys = keys_at(2026, 11, 20, 20)
    days = [dt.date.fromisoformat(k) for k in keys]
    assert all(d.weekday() < 5 for d in days)
    # National Day 2025 (Oct 1-8) and 2026 (Oct 1-7), Spring Festival 2026, New Year 2026.
    for holiday in [
        "2025-10-01",
        "2025-10-08",
        "2026-01-01",
        "2026-02-17",
        "2026-10-01",
        "2026-10-07",
    ]:
        assert holiday not in keys
    assert days == trading_calendar.trading_days(dt.date(2025, 9, 1), dt.date(2026, 11, 20))


def test_friday_key_is_available_friday_evening_not_before() -> None:
    assert keys_at(2026, 11, 20, 17, 59)[-1] == "2026-11-19"
    assert keys_at(2026, 11, 20, 18, 1)[-1] == "2026-11-20"
    assert keys_at(2026, 11, 22, 12)[-1] == "2026-11-20"  # Sunday: still Friday


def test_no_future_key_during_a_holiday() -> None:
    for day in range(1, 8):
        assert keys_at(2026, 10, day, 20)[-1] == "2026-09-30"
    assert keys_at(2026, 10, 8, 18, 1)[-1] == "2026-10-08"


@pytest.mark.parametrize("hour", [0, 9, 17])
def test_today_is_never_a_key_before_the_close(hour: int) -> None:
    assert "2026-11-23" not in keys_at(2026, 11, 23, hour)


def test_excluded_days_are_not_partitions() -> None:
    assert PARTITIONS.has_partition_key("2026-11-20")
    assert not PARTITIONS.has_partition_key("2026-11-21")  # Saturday
    assert not PARTITIONS.has_partition_key("2026-10-01")  # holiday
