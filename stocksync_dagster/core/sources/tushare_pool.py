"""A pool of Tushare tokens, each with its own per-API rate limiter.

Tushare limits calls per token, per API and per minute, so a pool of N tokens allows N times the
calls. A token is never shown in full: logs and errors name it by position and masked form.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stocksync_dagster.core.errors import SourceUnavailableError

logger = logging.getLogger(__name__)

_WINDOW_MARGIN = 0.02
_RATE_LIMIT_COUNT = re.compile(r"最多访问该接口(\d+)次")
TOKEN_HELP = (
    "Set TUSHARE_TOKEN to one or more valid tokens (comma-separated) whose permission level "
    "covers this API; see https://tushare.pro/user/token"
)


def mask_token(token: str) -> str:
    """`ab…yz` for long tokens; nothing at all for short ones (too little left to hide)."""
    return f"{token[:2]}…{token[-2:]}" if len(token) >= 12 else "…"


def rate_limit_count(message: str) -> int | None:
    """N from the reply "抱歉，您每分钟最多访问该接口N次…"; None if not a rate-limit reply."""
    match = _RATE_LIMIT_COUNT.search(message)
    return int(match.group(1)) if match else None


@dataclass(eq=False)
class PooledToken:
    """One token: its client, its per-API call windows and why it left the pool (if it did)."""

    position: int
    token: str
    client: Any
    label: str = ""
    removed: str | None = None
    denied: dict[str, str] = field(default_factory=dict)
    calls: dict[str, deque[float]] = field(default_factory=dict)
    caps: dict[str, int] = field(default_factory=dict)
    paused_until: dict[str, float] = field(default_factory=dict)
    strikes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.label = f"token #{self.position} ({mask_token(self.token)})"

    def usable(self, api: str) -> bool:
        return self.removed is None and api not in self.denied

    def _window(self, api: str, now: float, window: float) -> deque[float]:
        calls = self.calls.setdefault(api, deque())
        while calls and calls[0] <= now - window:
            calls.popleft()
        return calls

    def ready_at(self, api: str, cap: int, now: float, window: float) -> float:
        calls = self._window(api, now, window)
        cap = min(cap, self.caps.get(api, cap))
        free_at = now if len(calls) < cap else calls[len(calls) - cap] + window
        return max(free_at, self.paused_until.get(api, 0.0))


class TokenPool:
    """Hands out tokens for an API so that no token exceeds `calls_per_minute` on that API.

    Calls are recorded in a sliding window of `window_seconds` per (token, API): a burst up to
    the cap goes out at once, after that calls wait for the window to free up. Among ready tokens
    the least used one is chosen, so calls spread across the pool.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        make_client: Callable[[str], Any],
        calls_per_minute: int = 500,
        window_seconds: float = 60.0,
        rate_limit_pause_seconds: float = 5.0,
    ) -> None:
        if not tokens:
            raise SourceUnavailableError(
                "tushare", "token pool", "no token given", what_to_do=TOKEN_HELP
            )
        if calls_per_minute < 1:
            raise ValueError("calls_per_minute must be at least 1")
        self.entries = [PooledToken(i, t, make_client(t)) for i, t in enumerate(tokens, start=1)]
        self.calls_per_minute = calls_per_minute
        # a slot frees a little after the window: the server may count a call from its arrival,
        # later than we do, and a refusal costs a pause
        self.window_seconds = window_seconds * (1 + _WINDOW_MARGIN)
        self.rate_limit_pause_seconds = rate_limit_pause_seconds
        self._cond = threading.Condition()

    def scrub(self, text: str) -> str:
        """`text` with every token of the pool replaced by its masked label."""
        for entry in self.entries:
            if entry.token:
                text = text.replace(entry.token, entry.label)
        return text

    def acquire(self, api: str) -> PooledToken:
        """Block until a token may call `api` now; record the call. Raises if none is usable."""
        with self._cond:
            while True:
                usable = [e for e in self.entries if e.usable(api)]
                if not usable:
                    raise self._exhausted(api)
                now = time.monotonic()
                ready = {
                    e: e.ready_at(api, self.calls_per_minute, now, self.window_seconds)
                    for e in usable
                }
                earliest = min(ready.values())
                if earliest <= now:
                    choice = min(
                        (e for e in usable if ready[e] <= now),
                        key=lambda e: len(e.calls.get(api, ())),
                    )
                    choice.calls.setdefault(api, deque()).append(now)
                    return choice
                self._cond.wait(timeout=earliest - now)

    def succeeded(self, entry: PooledToken, api: str) -> None:
        with self._cond:
            entry.strikes.pop(api, None)

    def rate_limited(self, entry: PooledToken, api: str, message: str) -> float:
        """The server refused a call for rate: lower this token's cap and pause it on `api`.

        The pause doubles with each consecutive refusal (up to one window), so a token shared
        with another program backs off instead of hammering. Returns the pause in seconds.
        """
        with self._cond:
            count = rate_limit_count(message)
            if count is not None and count < entry.caps.get(api, self.calls_per_minute):
                entry.caps[api] = max(count, 1)
                logger.warning(
                    "tushare: %s may call %s only %d times a minute; pacing it to that",
                    entry.label,
                    api,
                    count,
                )
            strikes = entry.strikes.get(api, 0) + 1
            entry.strikes[api] = strikes
            pause = min(self.rate_limit_pause_seconds * 2 ** (strikes - 1), self.window_seconds)
            entry.paused_until[api] = time.monotonic() + pause
            self._cond.notify_all()
            return pause

    def remove(self, entry: PooledToken, reason: str) -> None:
        """Take a token out of the pool for every API (e.g. the server says it is invalid)."""
        with self._cond:
            if entry.removed is None:
                entry.removed = reason
                left = sum(e.removed is None for e in self.entries)
                logger.warning(
                    "tushare: %s removed from the pool: %s; %d token(s) left",
                    entry.label,
                    reason,
                    left,
                )
            self._cond.notify_all()

    def deny(self, entry: PooledToken, api: str, reason: str) -> None:
        """Stop using a token for one API (no permission); it still serves the others."""
        with self._cond:
            if api not in entry.denied:
                entry.denied[api] = reason
                left = sum(e.usable(api) for e in self.entries)
                logger.warning(
                    "tushare: %s removed from the pool for %s: %s; %d token(s) left for %s",
                    entry.label,
                    api,
                    reason,
                    left,
                    api,
                )
            self._cond.notify_all()

    def usable_count(self, api: str) -> int:
        with self._cond:
            return sum(e.usable(api) for e in self.entries)

    def _exhausted(self, api: str) -> SourceUnavailableError:
        reasons = "; ".join(
            f"{e.label}: {e.removed or e.denied.get(api, '')}" for e in self.entries
        )
        return SourceUnavailableError(
            "tushare",
            api,
            f"no usable token left in the pool ({reasons})",
            what_to_do=TOKEN_HELP,
        )
