"""Exceptions users see: each names what is wrong and what to do."""

from __future__ import annotations

from collections.abc import Mapping


class StocksyncError(Exception):
    """Base class of the project's own errors."""


class ConfigError(StocksyncError):
    """A setting (environment variable or run config) is invalid.

    The message names the setting, so the CLI can print it as one line.
    """

    def __init__(self, setting: str, problem: str, hint: str = "") -> None:
        self.setting = setting
        message = f"{setting}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class SourceError(StocksyncError):
    """A data source failed in a way that retrying the same call may fix.

    Messages name the source, the call and the stock or day; never a token.
    """

    def __init__(self, source: str, call: str, detail: str, *, what_to_do: str = "") -> None:
        self.source = source
        self.call = call
        self.detail = detail
        message = f"{source} {call}: {detail}"
        if what_to_do:
            message += f". {what_to_do}"
        super().__init__(message)


class SourceUnavailableError(SourceError):
    """A source cannot be used at all (bad credentials, not reachable, not implemented)."""


class TooManyFailuresError(StocksyncError):
    """A partition lost more stocks than the configured share: the step fails so Dagster retries."""

    reports: Mapping[str, object] = {}
    """What the sync wrote before raising (`sync_market`: its SyncReports by asset)."""
