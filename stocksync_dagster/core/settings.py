"""Settings from environment variables, validated into one object with clear errors.

Every variable is optional; see the README's Configuration table. A bad value raises
`ConfigError` naming the variable, never a traceback from inside a library.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.trading_calendar import CALENDAR_FIRST_DAY, parse_day

SOURCES = ("baostock", "tushare", "demo")
DEFAULT_SOURCE = "baostock"
# A fixed, recent first partition: a fresh install syncs about two years, not two decades.
DEFAULT_START_DATE = dt.date(2025, 1, 2)
STATE_DIR = Path(".stocksync")
DEFAULT_DATABASE_URL = f"sqlite:///{STATE_DIR / 'warehouse.db'}"
DEFAULT_UI_URL = "http://127.0.0.1:3000"
# Alert payload formats; a URL may name one as a prefix (`dingtalk+https://...`), see alerts.py.
WEBHOOK_FORMATS = ("json", "dingtalk", "wecom", "slack")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    database_url_from_env: bool = False
    source: str = DEFAULT_SOURCE
    """The primary source (the first of STOCKSYNC_SOURCE)."""
    fallback_source: str | None = None
    """The second of STOCKSYNC_SOURCE, which fills what the primary could not fetch."""
    start_date: dt.date = DEFAULT_START_DATE
    # Checked here so every command rejects a bad value at once; kept as text, which the source
    # resource's field takes (and turns into an address once, when its pool opens).
    baostock_server: str | None = None
    tushare_tokens: tuple[str, ...] = ()  # to scrub and to check; runs read dg.EnvVar
    tushare_api_url: str | None = None
    alert_webhooks: tuple[str, ...] = field(default_factory=tuple)
    ui_url: str = DEFAULT_UI_URL
    alert_emails: tuple[str, ...] = field(default_factory=tuple)
    alert_digest_at: dt.time | None = None  # None: one message per event, at once
    nightly_at: dt.time = dt.time(18, 30)
    retry_at: dt.time = dt.time(22, 0)
    catchup_at: dt.time = dt.time(8, 0)
    catchup_days: int = 10
    lookback_days: int = 5
    source_retries: int = 3
    source_retry_delay_seconds: float = 30.0

    @property
    def sources(self) -> tuple[str, ...]:
        """The configured sources in order: the primary, then the fallback if any."""
        return (self.source, self.fallback_source) if self.fallback_source else (self.source,)

    @property
    def uses_tushare(self) -> bool:
        return "tushare" in self.sources

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        database_url = get("STOCKSYNC_DATABASE_URL")
        sources = parse_sources(get("STOCKSYNC_SOURCE") or DEFAULT_SOURCE)
        start = get("STOCKSYNC_START_DATE")
        server = get("BAOSTOCK_SERVER")
        tokens = get("TUSHARE_TOKEN")
        api_url = get("TUSHARE_API_URL")
        webhooks = get("STOCKSYNC_ALERT_WEBHOOKS")
        ui_url = get("STOCKSYNC_UI_URL")
        email = get("STOCKSYNC_ALERT_EMAIL")
        digest_at = get("STOCKSYNC_ALERT_DIGEST_AT")
        nightly_at = get("STOCKSYNC_NIGHTLY_AT")
        retry_at = get("STOCKSYNC_RETRY_AT")
        catchup_at = get("STOCKSYNC_CATCHUP_AT")
        catchup_days = get("STOCKSYNC_CATCHUP_DAYS")
        lookback = get("STOCKSYNC_LOOKBACK_DAYS")
        retries = get("STOCKSYNC_SOURCE_RETRIES")
        retry_delay = get("STOCKSYNC_SOURCE_RETRY_DELAY_SECONDS")
        return cls(
            database_url=validate_database_url(database_url)
            if database_url
            else DEFAULT_DATABASE_URL,
            database_url_from_env=database_url is not None,
            source=sources[0],
            fallback_source=sources[1] if len(sources) > 1 else None,
            start_date=validate_start_date(start) if start else DEFAULT_START_DATE,
            baostock_server=validate_host_port(server, "BAOSTOCK_SERVER") if server else None,
            tushare_tokens=parse_tokens(tokens) if tokens else (),
            tushare_api_url=validate_http_url(api_url, "TUSHARE_API_URL") if api_url else None,
            alert_webhooks=tuple(
                validate_webhook_url(u.strip()) for u in (webhooks or "").split(",") if u.strip()
            ),
            ui_url=validate_ui_url(ui_url) if ui_url else DEFAULT_UI_URL,
            alert_emails=(validate_smtp_url(email),) if email else (),
            alert_digest_at=(
                parse_time(digest_at, "STOCKSYNC_ALERT_DIGEST_AT") if digest_at else None
            ),
            nightly_at=parse_nightly_time(nightly_at) if nightly_at else dt.time(18, 30),
            retry_at=(
                parse_evening_time(retry_at, "STOCKSYNC_RETRY_AT") if retry_at else dt.time(22, 0)
            ),
            catchup_at=(
                parse_time(catchup_at, "STOCKSYNC_CATCHUP_AT") if catchup_at else dt.time(8, 0)
            ),
            catchup_days=parse_catchup_days(catchup_days) if catchup_days else 10,
            lookback_days=parse_lookback_days(lookback) if lookback else 5,
            source_retries=parse_retries(retries) if retries else 3,
            source_retry_delay_seconds=(
                parse_seconds(retry_delay, "STOCKSYNC_SOURCE_RETRY_DELAY_SECONDS")
                if retry_delay
                else 30.0
            ),
        )


def parse_sources(text: str) -> tuple[str, ...]:
    """`baostock`, or an ordered pair `baostock,tushare`: the primary, then its fallback."""
    names = tuple(n.strip().lower() for n in text.split(","))
    if len(names) > 2:
        raise ConfigError(
            "STOCKSYNC_SOURCE",
            f"{len(names)} sources given",
            "one source, or two: the primary and its fallback, e.g. baostock,tushare",
        )
    for name in names:
        if not name:
            raise ConfigError("STOCKSYNC_SOURCE", "an empty source name", "e.g. baostock,tushare")
        validate_source(name)
    if len(names) == 2:
        if names[0] == names[1]:
            raise ConfigError(
                "STOCKSYNC_SOURCE", f"{names[0]} is given twice", "e.g. baostock,tushare"
            )
        if "demo" in names:
            raise ConfigError(
                "STOCKSYNC_SOURCE",
                "demo cannot be combined with a real source (synthetic rows in a real history)",
                "use demo alone, or baostock,tushare",
            )
    return names


def validate_source(source: str) -> str:
    if source not in SOURCES:
        raise ConfigError(
            "STOCKSYNC_SOURCE", f"unknown source {source!r}", f"use one of {', '.join(SOURCES)}"
        )
    return source


def validate_start_date(text: str) -> dt.date:
    try:
        day = parse_day(text)
    except ValueError as exc:
        raise ConfigError("STOCKSYNC_START_DATE", str(exc), "e.g. 2025-01-02") from None
    today = dt.date.today()
    if day > today:
        raise ConfigError("STOCKSYNC_START_DATE", f"{day} is in the future")
    if day < CALENDAR_FIRST_DAY:
        raise ConfigError(
            "STOCKSYNC_START_DATE",
            f"{day} is before {CALENDAR_FIRST_DAY}, the calendar's first day",
        )
    return day


def validate_database_url(url: str) -> str:
    """Check the URL's shape (not reachability: `stocksync doctor` does that)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            "STOCKSYNC_DATABASE_URL",
            "not a SQLAlchemy URL",
            "e.g. postgresql+psycopg://user:password@host:5432/db or sqlite:///path/warehouse.db",
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            "STOCKSYNC_DATABASE_URL",
            f"unsupported database {backend!r}",
            "use postgresql+psycopg://... or sqlite:///...",
        )
    if backend == "postgresql" and parsed.get_driver_name() not in ("psycopg", "psycopg2"):
        raise ConfigError(
            "STOCKSYNC_DATABASE_URL",
            f"unsupported PostgreSQL driver {parsed.get_driver_name()!r}",
            "use postgresql+psycopg:// (or postgresql+psycopg2://)",
        )
    return url


def parse_host_port(text: str, setting: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(setting, f"{text!r} is not host:port", "e.g. 127.0.0.1:10030")
    return host, int(port)


def validate_host_port(text: str, setting: str) -> str:
    """`text` if it is `host:port`, else a ConfigError naming `setting`."""
    parse_host_port(text, setting)
    return text


def parse_tokens(text: str) -> tuple[str, ...]:
    tokens = tuple(t.strip() for t in text.split(",") if t.strip())
    if not tokens:
        raise ConfigError("TUSHARE_TOKEN", "no token given", "one token or a comma-separated pool")
    return tokens


def validate_http_url(url: str, setting: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(setting, "not an http(s) URL", f"got {redact_url(url)!r}")
    return url


def validate_webhook_url(url: str) -> str:
    """An http(s) URL, optionally prefixed with its payload format: `dingtalk+https://...`."""
    scheme = url.partition("://")[0]
    fmt, plus, _ = scheme.rpartition("+")
    if plus and fmt not in WEBHOOK_FORMATS:
        raise ConfigError(
            "STOCKSYNC_ALERT_WEBHOOKS",
            f"unknown webhook format {fmt!r}",
            f"prefix a URL with one of {', '.join(WEBHOOK_FORMATS)}, e.g. dingtalk+https://...",
        )
    validate_http_url(url[len(fmt) + 1 :] if plus else url, "STOCKSYNC_ALERT_WEBHOOKS")
    return url


def validate_ui_url(url: str) -> str:
    """The Dagster UI's base URL, for run links in alerts."""
    return validate_http_url(url, "STOCKSYNC_UI_URL").rstrip("/")


def parse_time(text: str, setting: str) -> dt.time:
    """`HH:MM` (24 h, Asia/Shanghai) -> time."""
    try:
        return dt.datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise ConfigError(setting, f"{text!r} is not a time", "HH:MM, e.g. 18:30") from None


def parse_nightly_time(text: str) -> dt.time:
    """The nightly sync time: not before 18:00, when the day's partition appears."""
    return parse_evening_time(text, "STOCKSYNC_NIGHTLY_AT")


def parse_evening_time(text: str, setting: str) -> dt.time:
    """A same-day evening time: not before 18:00, when the day's partition appears."""
    at = parse_time(text, setting)
    if at.hour < 18:
        raise ConfigError(
            setting,
            f"{text} is before 18:00",
            "the day's data (and partition) settles at 18:00 Asia/Shanghai",
        )
    return at


def parse_catchup_days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 60:
        raise ConfigError("STOCKSYNC_CATCHUP_DAYS", f"{text!r} is not 1..60", "e.g. 10")
    return int(text)


def validate_smtp_url(url: str) -> str:
    """`smtp://user:password@host:port?to=a@x,b@y` (or `smtps://`): host and recipients."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ConfigError(
            "STOCKSYNC_ALERT_EMAIL", "not a URL", "smtp://user:pass@host:587?to=a@x"
        ) from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError(
            "STOCKSYNC_ALERT_EMAIL",
            f"{redact_url(url)!r} is not an smtp:// or smtps:// URL with a host",
            "e.g. smtp://user:password@smtp.example.com:587?to=a@example.com,b@example.com",
        )
    recipients = [r for q, v in parse_qsl(parts.query) if q == "to" for r in v.split(",") if r]
    if not recipients or not all("@" in r for r in recipients):
        raise ConfigError(
            "STOCKSYNC_ALERT_EMAIL",
            "no recipients: add ?to=a@example.com[,b@example.com]",
            f"got {redact_url(url)!r}",
        )
    return url


def parse_lookback_days(text: str) -> int:
    if not text.isdigit() or int(text) > 60:
        raise ConfigError("STOCKSYNC_LOOKBACK_DAYS", f"{text!r} is not 0..60", "e.g. 5")
    return int(text)


def parse_retries(text: str) -> int:
    if not text.isdigit() or int(text) > 20:
        raise ConfigError("STOCKSYNC_SOURCE_RETRIES", f"{text!r} is not 0..20", "e.g. 3")
    return int(text)


def parse_seconds(text: str, setting: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(setting, f"{text!r} is not a number of seconds", "e.g. 30") from None
    if not 0 <= seconds <= 3600:
        raise ConfigError(setting, f"{text} is not 0..3600 seconds", "e.g. 30")
    return seconds


def redact_url(url: str) -> str:
    """Show only scheme, user and host of a URL: passwords, paths and queries may hold secrets.

    Webhook URLs carry their secret in the path (Slack) or the query (DingTalk, WeCom).
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.hostname or ""
    if port:
        netloc += f":{port}"
    if parts.username:
        netloc = (
            f"{parts.username}:***@{netloc}" if parts.password else f"{parts.username}@{netloc}"
        )
    shown = f"{parts.scheme}://{netloc}" if parts.scheme else netloc
    return shown + ("/***" if parts.path.strip("/") or parts.query else "")


def redact_database_url(url: str) -> str:
    """A database URL with its password masked (SQLAlchemy's own rendering)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return redact_url(url)


@functools.cache
def current_settings() -> Settings:
    """The settings of this process's environment, read and validated once.

    Module-level Dagster objects (partitions, schedules, sensors) are built from it when the
    definitions load; tests that change the environment call `current_settings.cache_clear()`.
    """
    return Settings.from_env()
