"""Settings from environment variables, validated into one object with clear errors.

Every variable is optional; see the README's Configuration table. A bad value raises
`ConfigError` naming the variable, never a traceback from inside a library.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from stocksync_dagster.calendar import CALENDAR_FIRST_DAY, parse_day
from stocksync_dagster.errors import ConfigError

SOURCES = ("baostock", "tushare", "demo")
DEFAULT_SOURCE = "baostock"
# A fixed, recent first partition: a fresh install syncs about two years, not two decades.
DEFAULT_START_DATE = dt.date(2025, 1, 2)
STATE_DIR = Path(".stocksync")
DEFAULT_DATABASE_URL = f"sqlite:///{STATE_DIR / 'warehouse.db'}"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    database_url_from_env: bool = False
    source: str = DEFAULT_SOURCE
    start_date: dt.date = DEFAULT_START_DATE
    baostock_server: tuple[str, int] | None = None
    tushare_tokens: tuple[str, ...] = ()
    tushare_api_url: str | None = None
    alert_webhooks: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        database_url = get("STOCKSYNC_DATABASE_URL")
        source = (get("STOCKSYNC_SOURCE") or DEFAULT_SOURCE).lower()
        start = get("STOCKSYNC_START_DATE")
        server = get("BAOSTOCK_SERVER")
        tokens = get("TUSHARE_TOKEN")
        api_url = get("TUSHARE_API_URL")
        webhooks = get("STOCKSYNC_ALERT_WEBHOOKS")
        return cls(
            database_url=validate_database_url(database_url) if database_url else DEFAULT_DATABASE_URL,
            database_url_from_env=database_url is not None,
            source=validate_source(source),
            start_date=validate_start_date(start) if start else DEFAULT_START_DATE,
            baostock_server=parse_host_port(server, "BAOSTOCK_SERVER") if server else None,
            tushare_tokens=parse_tokens(tokens) if tokens else (),
            tushare_api_url=validate_http_url(api_url, "TUSHARE_API_URL") if api_url else None,
            alert_webhooks=tuple(
                validate_http_url(u.strip(), "STOCKSYNC_ALERT_WEBHOOKS")
                for u in (webhooks or "").split(",")
                if u.strip()
            ),
        )


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
            "STOCKSYNC_START_DATE", f"{day} is before {CALENDAR_FIRST_DAY}, the calendar's first day"
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
        netloc = f"{parts.username}:***@{netloc}" if parts.password else f"{parts.username}@{netloc}"
    shown = f"{parts.scheme}://{netloc}" if parts.scheme else netloc
    return shown + ("/***" if parts.path.strip("/") or parts.query else "")


def redact_database_url(url: str) -> str:
    """A database URL with its password masked (SQLAlchemy's own rendering)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return redact_url(url)
