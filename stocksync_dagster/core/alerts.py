"""Failure alerts posted to webhooks: generic JSON, DingTalk, WeCom or Slack.

The format of each URL in STOCKSYNC_ALERT_WEBHOOKS is its explicit prefix
(`json+`, `dingtalk+`, `wecom+`, `slack+`, e.g. `dingtalk+https://...`), else its host:
oapi.dingtalk.com -> DingTalk, qyapi.weixin.qq.com -> WeCom, hooks.slack.com -> Slack,
anything else -> generic JSON. Webhook URLs carry secrets: logs show them redacted only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from stocksync_dagster.core.settings import WEBHOOK_FORMATS, redact_url

log = logging.getLogger(__name__)

HOST_FORMATS = {
    "oapi.dingtalk.com": "dingtalk",
    "qyapi.weixin.qq.com": "wecom",
    "hooks.slack.com": "slack",
}
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


@dataclass(frozen=True)
class Alert:
    """One failed run, as the webhooks see it."""

    job: str
    run_id: str
    assets: tuple[str, ...]
    partitions: str
    error: str
    run_url: str

    @property
    def title(self) -> str:
        return f"stocksync run failed: {', '.join(self.assets) or self.job}"

    def lines(self) -> list[str]:
        return [
            f"assets: {', '.join(self.assets) or '-'}",
            f"partitions: {self.partitions}",
            f"job: {self.job}",
            f"error: {self.error}",
        ]


def first_line(text: str, secrets: Iterable[str] = ()) -> str:
    """The first non-empty line, at most 300 characters, URLs redacted, secrets masked."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "(no message)")[:300]
    line = _URL.sub(lambda m: redact_url(m.group(0)), line)
    for secret in secrets:
        if secret and len(secret) >= 4:
            line = line.replace(secret, "***")
    return line


def webhook_format(url: str) -> tuple[str, str]:
    """(format, URL to post to): an explicit `fmt+` prefix wins, else the host decides."""
    scheme = url.partition("://")[0]
    fmt, plus, _ = scheme.rpartition("+")
    if plus and fmt in WEBHOOK_FORMATS:
        return fmt, url[len(fmt) + 1 :]
    return HOST_FORMATS.get(urlsplit(url).hostname or "", "json"), url


def payload(alert: Alert, fmt: str) -> dict[str, Any]:
    """The request body for one format."""
    text = "\n".join(alert.lines())
    link = f"[Open the run]({alert.run_url})"
    if fmt == "dingtalk":
        body = "\n\n".join([f"### {alert.title}", *(f"- {ln}" for ln in alert.lines()), link])
        return {"msgtype": "markdown", "markdown": {"title": alert.title, "text": body}}
    if fmt == "wecom":
        body = "\n".join([f"**{alert.title}**", *(f"> {ln}" for ln in alert.lines()), link])
        return {"msgtype": "markdown", "markdown": {"content": body}}
    if fmt == "slack":
        return {"text": f"*{alert.title}*\n{text}\n<{alert.run_url}|Open the run>"}
    return {"event": "run_failure", "title": alert.title, **asdict(alert), "text": text}


def send_alert(alert: Alert, urls: Sequence[str], timeout: float = 10.0) -> int:
    """POST the alert to every URL; returns how many accepted it. Never raises."""
    delivered = 0
    for url in urls:
        fmt, target = webhook_format(url)
        shown = redact_url(target)
        try:
            response = requests.post(target, json=payload(alert, fmt), timeout=timeout)
            response.raise_for_status()
            if fmt in ("dingtalk", "wecom") and _api_error(response):
                raise RuntimeError(f"{fmt} answered {_api_error(response)}")
        except Exception as exc:  # a dead webhook must never break the sensor
            reason = f"{type(exc).__name__}: {_safe(exc, target)}"
            log.warning(f"alert to {shown} ({fmt}) failed: {reason}")
            continue
        log.info(f"alert sent to {shown} ({fmt})")
        delivered += 1
    return delivered


def _api_error(response: requests.Response) -> str | None:
    """DingTalk and WeCom answer HTTP 200 with a non-zero errcode on failure."""
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("errcode") not in (None, 0):
        return f"errcode {body.get('errcode')}: {body.get('errmsg', '')}"
    return None


def _safe(exc: Exception, url: str) -> str:
    """The error text without the webhook's secret parts (requests quotes its path and query)."""
    parts = urlsplit(url)
    text = _URL.sub(lambda m: redact_url(m.group(0)), str(exc))
    path_query = parts.path + (f"?{parts.query}" if parts.query else "")
    for secret in (path_query, parts.path, parts.query):
        if len(secret) > 1:
            text = text.replace(secret, "/***")
    return text[:300]
