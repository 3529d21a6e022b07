"""A loopback server speaking the Tushare Pro HTTP JSON protocol, serving a `DemoMarket`.

The REAL `tushare` client talks to it: POST `{"api_name", "token", "params", "fields"}` ->
`{"code": 0, "msg": "", "data": {"fields": [...], "items": [[...]]}}`. Units are Tushare's:
`vol` in lots of 100 shares, `amount` in thousands of CNY.

Behaviour tests can switch on: per-call latency, a per-token per-API rate limit (with the real
refusal text), a row cap, valid tokens, tokens without permission, and one-off or persistent
faults (`inject`): HTTP 500, hang (no reply), dropped connection, malformed rows, an error
message echoing the token, a short reply (every other row dropped, below the row cap).
Wrong data, for cross-source checks: `serve_wrong` (one value of one stock's day),
`shift_factors` (a factor jump the market did not have), `drop_codes` (stocks silently left
out of `daily` and `adj_factor`), and `factor_scale` (every factor times a constant: the real
services scale their cumulative factors differently).

    with FakeTushareServer(DemoMarket(50)) as server:
        source = TushareSource(["t1"], api_url=server.url)

CLI (manual runs, benchmarks):
    python -m tests.fakes.tushare_server --port 8765 --stocks 300 --latency-ms 50 --rate-limit 500
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd

from stocksync_dagster.core.sources.demo_market import DEFAULT_ORIGIN, DemoMarket

RATE_LIMIT_MESSAGE = "抱歉，您每分钟最多访问该接口{n}次，权限的具体详情访问：https://tushare.pro/document/1?doc_id=108。"
NO_PERMISSION_MESSAGE = (
    "抱歉，您没有接口访问权限，权限的具体详情访问：https://tushare.pro/document/1?doc_id=108。"
)
BAD_TOKEN_MESSAGE = "您的token不对，请确认。"
FAULT_KINDS = ("http500", "hang", "drop", "malformed", "error", "short")
_DAILY_FIELDS = [
    "ts_code",
    "trade_date",
    "open",
    "high",
    "low",
    "close",
    "pre_close",
    "change",
    "pct_chg",
    "vol",
    "amount",
]
_EXCHANGE_NAMES = {"SH": "SSE", "SZ": "SZSE", "BJ": "BSE"}
_MARKET_NAMES = {"main": "主板", "chinext": "创业板", "star": "科创板", "bse": "北交所"}


@dataclass
class Fault:
    """A fault for calls matching `api` / `trade_date` (None = any); `times` None = forever."""

    kind: str
    api: str | None = None
    trade_date: str | None = None
    times: int | None = 1

    def matches(self, api: str, params: Mapping[str, Any]) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.api is not None and self.api != api:
            return False
        return self.trade_date is None or params.get("trade_date") == self.trade_date


@dataclass(frozen=True)
class CallRecord:
    token: str
    api: str
    params: dict[str, Any]
    outcome: str  # ok, truncated, rate_limited, bad_token, no_permission or a fault kind
    rows: int = 0


def _ymd(day: dt.date | None) -> str | None:
    return day.strftime("%Y%m%d") if day is not None else None


def _day(text: str) -> dt.date:
    return dt.datetime.strptime(text, "%Y%m%d").date()


class FakeTushareServer:
    """Tushare Pro on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(
        self,
        market: DemoMarket,
        *,
        latency_ms: float = 0.0,
        rate_limit: int | None = None,
        rate_window_seconds: float = 60.0,
        row_cap: int | None = 6000,
        valid_tokens: Iterable[str] | None = None,
        no_permission: Mapping[str, Iterable[str] | None] | None = None,
        as_of: dt.date | None = None,
        hang_seconds: float = 30.0,
        port: int = 0,
        factor_scale: float = 1.0,
    ) -> None:
        self.market = market
        self.factor_scale = factor_scale
        self.wrong: dict[tuple[str, dt.date, str], float] = {}  # (code, day, field) -> value
        self.factor_shifts: dict[str, tuple[dt.date, float]] = {}  # code -> (since, ratio)
        self.dropped_codes: set[str] = set()
        self.latency_ms = latency_ms
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.row_cap = row_cap
        self.valid_tokens = set(valid_tokens) if valid_tokens is not None else None
        # token -> APIs it may not call (None = every API)
        self.no_permission = {
            t: (set(apis) if apis is not None else None)
            for t, apis in (no_permission or {}).items()
        }
        self.as_of = as_of or dt.date.today()
        self.hang_seconds = hang_seconds
        self.calls: list[CallRecord] = []
        self._faults: list[Fault] = []
        self._windows: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()
        self._market_lock = threading.Lock()
        self._release = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ----- lifecycle ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for `TushareSource(api_url=...)` / `TUSHARE_API_URL`."""
        return f"http://127.0.0.1:{self.port}/dataapi"

    def start(self) -> FakeTushareServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hung requests, stop serving and close the socket."""
        self._release.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI)."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> FakeTushareServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- test controls --------------------------------------------------------------------
    def inject(
        self,
        kind: str,
        api: str | None = None,
        trade_date: dt.date | None = None,
        times: int | None = 1,
    ) -> Fault:
        """Make the next `times` matching calls fail with `kind` (one of FAULT_KINDS)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; use one of {FAULT_KINDS}")
        fault = Fault(kind, api, _ymd(trade_date), times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.remove(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self.wrong.clear()
            self.factor_shifts.clear()
            self.dropped_codes.clear()

    def serve_wrong(self, code: str, day: dt.date, field: str, value: float) -> None:
        """Serve `value` (in the warehouse's units: CNY, shares) as `code`'s `field` on `day`."""
        with self._lock:
            self.wrong[(code, day, field)] = value

    def shift_factors(self, code: str, since: dt.date, ratio: float) -> None:
        """Multiply `code`'s factors from `since` on by `ratio`: a jump on `since` only."""
        with self._lock:
            self.factor_shifts[code] = (since, ratio)

    def drop_codes(self, codes: Iterable[str]) -> None:
        """Leave these stocks out of every `daily` and `adj_factor` reply, silently."""
        with self._lock:
            self.dropped_codes |= set(codes)

    def outcomes(self, api: str | None = None) -> list[str]:
        with self._lock:
            return [c.outcome for c in self.calls if api is None or c.api == api]

    # ----- request handling -----------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server._handle(self, json.loads(body or b"{}"))

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests and benchmarks read `calls`, not stderr

        return Handler

    def _handle(self, request: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        api = str(body.get("api_name", ""))
        token = str(body.get("token", ""))
        params = dict(body.get("params") or {})
        params.pop("ts_type_name", None)  # the client sends its own base URL along
        fields = [f for f in str(body.get("fields") or "").split(",") if f]
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        outcome, fault = self._admit(token, api, params)

        def record(result: str, rows: int = 0) -> None:
            with self._lock:
                self.calls.append(CallRecord(token, api, params, result, rows))

        if fault == "hang":
            record("hang")
            self._release.wait(self.hang_seconds)
            request.close_connection = True
            return
        if fault == "drop":
            record("drop")
            request.close_connection = True
            return  # no status line: the client sees the connection close
        if fault == "http500":
            record("http500")
            self._send(request, 500, {"code": 500, "msg": "Internal Server Error"})
            return
        if outcome != "ok" or fault == "error":
            messages = {
                "bad_token": (40101, BAD_TOKEN_MESSAGE),
                "no_permission": (40203, NO_PERMISSION_MESSAGE),
                "rate_limited": (40203, RATE_LIMIT_MESSAGE.format(n=self.rate_limit)),
            }
            code, msg = messages.get(outcome, (50101, f"服务内部错误 (token {token})"))
            record(outcome if outcome != "ok" else "error")
            self._send(request, 200, {"code": code, "msg": msg, "data": None})
            return
        try:
            columns, items = self._data(api, params)
        except (KeyError, ValueError) as exc:
            record("bad_request")
            self._send(request, 200, {"code": 40001, "msg": f"参数错误: {exc}", "data": None})
            return
        if fields:
            index = [columns.index(f) for f in fields if f in columns]
            columns = [columns[i] for i in index]
            items = [[row[i] for i in index] for row in items]
        truncated = self.row_cap is not None and len(items) > self.row_cap
        items = items[: self.row_cap] if self.row_cap is not None else items
        if fault == "malformed":
            items = _malform(columns, items)
        if fault == "short":  # a partial day below the cap, as sources publish when they lag
            items = items[::2]
        record(fault or ("truncated" if truncated else "ok"), len(items))
        data = {"fields": columns, "items": items, "has_more": truncated}
        self._send(request, 200, {"request_id": "fake", "code": 0, "msg": "", "data": data})

    def _admit(self, token: str, api: str, params: Mapping[str, Any]) -> tuple[str, str | None]:
        """(`ok` or why the call is refused, the fault to apply if any)."""
        with self._lock:
            if self.valid_tokens is not None and token not in self.valid_tokens:
                return "bad_token", None
            if token in self.no_permission:
                denied = self.no_permission[token]
                if denied is None or api in denied:
                    return "no_permission", None
            if self.rate_limit is not None:
                now = time.monotonic()
                window = self._windows.setdefault((token, api), deque())
                while window and window[0] <= now - self.rate_window_seconds:
                    window.popleft()
                if len(window) >= self.rate_limit:
                    return "rate_limited", None
                window.append(now)
            for fault in self._faults:
                if fault.matches(api, params):
                    if fault.times is not None:
                        fault.times -= 1
                    return "ok", fault.kind
        return "ok", None

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    # ----- the market in Tushare's shape ------------------------------------------------------
    def _data(self, api: str, params: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
        if api in ("daily", "adj_factor"):
            return self._bars(api, params)
        if api == "trade_cal":
            return self._trade_cal(params)
        if api == "stock_basic":
            return self._stock_basic(params)
        if api == "suspend_d":
            return self._suspend_d(params)
        if api == "namechange":
            return self._namechange(params)
        raise ValueError(f"unknown api_name {api!r}")

    def _range(self, params: Mapping[str, Any]) -> tuple[dt.date, dt.date]:
        if params.get("trade_date"):
            day = _day(params["trade_date"])
            return day, day
        return _day(params["start_date"]), _day(params["end_date"])

    def _bars(self, api: str, params: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
        start, end = self._range(params)
        start = max(start, self.market.origin)
        codes = [c for c in str(params.get("ts_code") or "").split(",") if c] or None
        if start > end:
            frame = pd.DataFrame(columns=["code", "trade_date"])
        else:
            with self._market_lock:
                frame = (self.market.bars if api == "daily" else self.market.adj_factors)(
                    start, end, codes
                )
        frame = self._spoil(api, frame)
        dates = [_ymd(d) for d in frame["trade_date"]]
        codes_out = list(frame["code"])
        if api == "adj_factor":
            values = frame["adj_factor"].tolist() if len(frame) else []
            return ["ts_code", "trade_date", "adj_factor"], [
                list(row) for row in zip(codes_out, dates, values, strict=True)
            ]
        if not len(frame):
            return _DAILY_FIELDS, []
        columns = {
            name: frame[name].tolist()
            for name in ("open", "high", "low", "close", "pre_close", "pct_chg")
        }
        change = (frame["close"] - frame["pre_close"]).round(2).tolist()
        vol = (frame["volume"] / 100).tolist()
        amount = (frame["amount"] / 1000).tolist()
        items = [
            [code, date, o, h, lo, c, pc, ch, pct, v, a]
            for code, date, o, h, lo, c, pc, ch, pct, v, a in zip(
                codes_out,
                dates,
                columns["open"],
                columns["high"],
                columns["low"],
                columns["close"],
                columns["pre_close"],
                change,
                columns["pct_chg"],
                vol,
                amount,
                strict=True,
            )
        ]
        return _DAILY_FIELDS, items

    def _spoil(self, api: str, frame: pd.DataFrame) -> pd.DataFrame:
        """The market as this server misreports it (see `serve_wrong` and the others)."""
        with self._lock:
            wrong, shifts, dropped = dict(self.wrong), dict(self.factor_shifts), self.dropped_codes
            dropped = set(dropped)
        if not len(frame):
            return frame
        frame = frame[~frame["code"].isin(dropped)].copy() if dropped else frame.copy()
        if api == "adj_factor":
            frame["adj_factor"] = frame["adj_factor"] * self.factor_scale
            for code, (since, ratio) in shifts.items():
                hit = (frame["code"] == code) & (frame["trade_date"] >= since)
                frame.loc[hit, "adj_factor"] = frame.loc[hit, "adj_factor"] * ratio
            return frame
        for (code, day, field), value in wrong.items():
            hit = (frame["code"] == code) & (frame["trade_date"] == day)
            frame.loc[hit, field] = value
        return frame

    def _suspend_d(self, params: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
        start, end = self._range(params)
        start = max(start, self.market.origin)
        columns = ["ts_code", "trade_date", "suspend_timing", "suspend_type"]
        if start > end or params.get("suspend_type", "S") != "S":
            return columns, []
        with self._market_lock:
            frame = self.market.suspensions(start, end)
        return columns, [
            [c, _ymd(d), None, "S"] for c, d in zip(frame["code"], frame["trade_date"], strict=True)
        ]

    def _namechange(self, params: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
        """Name history filtered by announcement date (`start_date`/`end_date`), paged with
        `limit`/`offset` like the real API."""
        columns = ["ts_code", "name", "start_date", "end_date", "ann_date", "change_reason"]
        until = _day(params["end_date"]) if params.get("end_date") else self.as_of
        with self._market_lock:
            frame = self.market.name_history(until)
        if params.get("start_date"):
            frame = frame[frame["start_date"] >= _day(params["start_date"])]
        if params.get("ts_code"):
            frame = frame[frame["code"] == params["ts_code"]]
        items = [
            [c, n, _ymd(s), _ymd(e), _ymd(s), "ST" if n.startswith("ST") else "更名"]
            for c, n, s, e in zip(
                frame["code"], frame["name"], frame["start_date"], frame["end_date"], strict=True
            )
        ]
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 10_000)
        return columns, items[offset : offset + limit]

    def _trade_cal(self, params: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
        start, end = _day(params["start_date"]), _day(params["end_date"])
        frame = self.market.calendar(start, end)
        items, previous = [], None
        for day, is_open in zip(frame["cal_date"], frame["is_open"], strict=True):
            items.append([params.get("exchange") or "SSE", _ymd(day), int(is_open), previous])
            if is_open:
                previous = _ymd(day)
        items.reverse()  # the real service answers newest first
        return ["exchange", "cal_date", "is_open", "pretrade_date"], items

    def _stock_basic(self, params: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
        with self._market_lock:
            frame = self.market.stock_basic(self.as_of)
        status = {"listed": "L", "delisted": "D"}
        wanted_status = params.get("list_status") or "L"
        wanted_exchange = params.get("exchange") or None
        items = []
        for row in frame.itertuples(index=False):
            exchange = _EXCHANGE_NAMES[row.exchange]
            if status[row.status] != wanted_status or wanted_exchange not in (None, exchange):
                continue
            items.append(
                [
                    row.code,
                    row.code[:6],
                    row.name,
                    _MARKET_NAMES[row.board],
                    exchange,
                    status[row.status],
                    _ymd(row.list_date),
                    _ymd(row.delist_date),
                ]
            )
        fields = ["ts_code", "symbol", "name", "market", "exchange", "list_status", "list_date"]
        return [*fields, "delist_date"], items


def _malform(columns: list[str], items: list[list[Any]]) -> list[list[Any]]:
    """Spoil the first three rows: a non-number, an unknown code format, a wrong trade date."""
    items = [list(row) for row in items]
    spoilers = [
        ("open" if "open" in columns else columns[-1], "abc"),
        ("ts_code", "BAD.CODE"),
        ("trade_date", "19990101"),
    ]
    for row, (column, value) in zip(items, spoilers, strict=False):
        if column in columns:
            row[columns.index(column)] = value
    return items


def main(argv: list[str] | None = None) -> None:
    """Serve a demo market until interrupted (for manual runs and benchmarks)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--stocks", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--origin", type=dt.date.fromisoformat, default=DEFAULT_ORIGIN)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rate-limit", type=int, default=None, help="calls/min per token per API")
    parser.add_argument("--row-cap", type=int, default=6000)
    parser.add_argument(
        "--tokens", default=None, help="comma-separated valid tokens (default: any)"
    )
    args = parser.parse_args(argv)
    market = DemoMarket(args.stocks, seed=args.seed, origin=args.origin)
    server = FakeTushareServer(
        market,
        latency_ms=args.latency_ms,
        rate_limit=args.rate_limit,
        row_cap=args.row_cap,
        valid_tokens=args.tokens.split(",") if args.tokens else None,
        port=args.port,
    )
    print(f"fake Tushare Pro serving {args.stocks} stocks at {server.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
