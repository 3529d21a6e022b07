"""Alerts posted to webhooks (generic JSON, DingTalk, WeCom, Slack) and sent by e-mail (SMTP).

The format of each URL in STOCKSYNC_ALERT_WEBHOOKS is its explicit prefix
(`json+`, `dingtalk+`, `wecom+`, `slack+`, e.g. `dingtalk+https://...`), else its host:
oapi.dingtalk.com -> DingTalk, qyapi.weixin.qq.com -> WeCom, hooks.slack.com -> Slack,
anything else -> generic JSON. A DingTalk URL with `secret=SEC...` in its query is a signed
robot (加签): the secret is taken out and `timestamp` + `sign` (HMAC-SHA256) are added per post.
STOCKSYNC_ALERT_EMAIL is `smtp://user:password@host:587?to=a@x,b@y[&from=...]` (STARTTLS
whenever the server offers it, required before a password is sent) or `smtps://` (TLS from
the start). Webhook URLs and SMTP URLs carry secrets: logs show them redacted only.

Plain `requests` and the standard library's `smtplib` / `hmac`, not a notification library:
each protocol is a few lines here, and the payloads, URL syntax and redaction stay ours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import smtplib
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlencode, urlsplit, urlunsplit

import requests

from stocksync_dagster.core.settings import WEBHOOK_FORMATS, redact_url

log = logging.getLogger(__name__)

HOST_FORMATS = {
    "oapi.dingtalk.com": "dingtalk",
    "qyapi.weixin.qq.com": "wecom",
    "hooks.slack.com": "slack",
}
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


EVENT_TITLES = {
    "run_failure": "stocksync run failed",
    "check_failure": "stocksync check failed",
    "freshness": "stocksync data not fresh",
    "abandoned": "stocksync failures abandoned",
    "digest": "stocksync daily digest",
}


@dataclass(frozen=True)
class Alert:
    """One event (a failed run or check, stale data, abandoned failures), as channels see it.

    `run_url` is the link: the run, or the asset's checks page. `days` / `codes` name what
    is affected (capped lists as text); `error` is the one-line reason, secrets masked.
    """

    job: str
    run_id: str
    assets: tuple[str, ...]
    partitions: str
    error: str
    run_url: str
    event: str = "run_failure"
    days: str = ""
    codes: str = ""
    subject: str = ""  # what failed, e.g. the check name; default: the assets
    details: tuple[str, ...] = ()  # a digest's one line per event

    @property
    def title(self) -> str:
        prefix = EVENT_TITLES.get(self.event, "stocksync alert")
        return f"{prefix}: {self.subject or ', '.join(self.assets) or self.job}"

    def lines(self) -> list[str]:
        lines = [f"assets: {', '.join(self.assets) or '-'}"]
        if self.event == "run_failure" or self.partitions:
            lines.append(f"partitions: {self.partitions or '-'}")
        if self.days:
            lines.append(f"days: {self.days}")
        if self.codes:
            lines.append(f"codes: {self.codes}")
        if self.job:
            lines.append(f"job: {self.job}")
        lines.append(f"error: {self.error}")
        return lines + list(self.details)


def digest(alerts: Sequence[Alert], day: str, link: str) -> Alert:
    """One message for a day's events: their titles and days, newest last."""
    details = tuple(
        f"- {a.title}" + (f" ({a.days})" if a.days else "") + f": {a.run_url}" for a in alerts
    )
    return Alert(
        job="",
        run_id="",
        assets=tuple(sorted({asset for a in alerts for asset in a.assets})),
        partitions="",
        error=f"{len(alerts)} event(s) since the last digest",
        run_url=link,
        event="digest",
        subject=day,
        details=details,
    )


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
    label = "Open the run" if alert.run_id else "Open in Dagster"
    link = f"[{label}]({alert.run_url})"
    if fmt == "dingtalk":
        body = "\n\n".join([f"### {alert.title}", *(f"- {ln}" for ln in alert.lines()), link])
        return {"msgtype": "markdown", "markdown": {"title": alert.title, "text": body}}
    if fmt == "wecom":
        body = "\n".join([f"**{alert.title}**", *(f"> {ln}" for ln in alert.lines()), link])
        return {"msgtype": "markdown", "markdown": {"content": body}}
    if fmt == "slack":
        return {"text": f"*{alert.title}*\n{text}\n<{alert.run_url}|{label}>"}
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(alert).items()}
    return {**fields, "title": alert.title, "text": text}


def dingtalk_signed_url(url: str, now_ms: int | None = None) -> str:
    """A DingTalk URL whose query holds `secret=...`: the secret replaced by timestamp + sign.

    sign = base64(HMAC-SHA256(secret, f"{timestamp}\\n{secret}")), URL-encoded (DingTalk's 加签).
    A URL without a secret is returned as it is.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret = next((v for k, v in query if k == "secret"), None)
    if not secret:
        return url
    timestamp = str(now_ms if now_ms is not None else int(time.time() * 1000))
    digest_bytes = hmac.new(
        secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256
    ).digest()
    sign = base64.b64encode(digest_bytes).decode()
    kept = urlencode([(k, v) for k, v in query if k != "secret"])
    signed = f"{kept}&timestamp={timestamp}&sign={quote_plus(sign)}".lstrip("&")
    return urlunsplit(parts._replace(query=signed))


def email_message(alert: Alert, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """The alert as a plain-text e-mail."""
    message = EmailMessage()
    message["Subject"] = alert.title
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message.set_content("\n".join([*alert.lines(), "", alert.run_url]))
    return message


def send_email(alert: Alert, url: str, timeout: float = 10.0) -> None:
    """Send the alert over SMTP as `url` says (see the module docstring); raises on failure."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    recipients = [r.strip() for r in params.get("to", "").split(",") if r.strip()]
    host = parts.hostname or "localhost"
    user, password = parts.username, parts.password
    sender = params.get("from") or (user if user and "@" in user else f"stocksync@{host}")
    tls = ssl.create_default_context()
    if parts.scheme == "smtps":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            host, parts.port or 465, timeout=timeout, context=tls
        )
    else:
        client = smtplib.SMTP(host, parts.port or 587, timeout=timeout)
    with client:
        client.ehlo()
        secure = parts.scheme == "smtps"
        if not secure and client.has_extn("starttls"):
            client.starttls(context=tls)
            client.ehlo()
            secure = True
        if user:
            if not secure:
                raise RuntimeError(
                    f"{host} offers no STARTTLS: refusing to send the password in clear "
                    "(use smtps:// or a server with STARTTLS)"
                )
            client.login(user, password or "")
        client.send_message(email_message(alert, sender, recipients))


def send_alert(
    alert: Alert, urls: Sequence[str], timeout: float = 10.0, emails: Sequence[str] = ()
) -> int:
    """POST the alert to every webhook and e-mail it; returns how many accepted. Never raises."""
    delivered = 0
    for url in emails:
        shown = redact_url(url)
        try:
            send_email(alert, url, timeout)
        except Exception as exc:  # a dead mail server must never break the sensor
            log.warning(f"alert e-mail via {shown} failed: {type(exc).__name__}: {_safe(exc, url)}")
            continue
        log.info(f"alert e-mailed via {shown}")
        delivered += 1
    for url in urls:
        fmt, target = webhook_format(url)
        shown = redact_url(target)
        if fmt == "dingtalk":
            target = dingtalk_signed_url(target)
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
    for secret in (path_query, parts.path, parts.query, parts.password or ""):
        if len(secret) > 1:
            text = text.replace(secret, "/***")
    for _, value in parse_qsl(parts.query):
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text[:300]
