"""A loopback TCP server speaking the baostock 0.9.4 wire protocol, serving a `DemoMarket`.

The REAL `baostock` client talks to it (patch `baostock.common.contants.BAOSTOCK_SERVER_IP` /
`BAOSTOCK_SERVER_PORT`). Framing, from the client source: a request is
`"00.9.40" \\x01 <type> \\x01 <10-digit length> <body fields joined by \\x01> \\x01 <crc32> \\n`;
a reply is the same header, the body (zlib-compressed for k-data), and `<![CDATA[]]>\\n`.
Pages hold 2,000 rows; the client asks for page 2 only after a full page.

Like the real service: suspended days come back as `tradestatus` "0" rows; `query_stock_basic`
includes indices (type 2) and an ETF (type 5); `query_adjust_factor` lists ex-right days only
(a stock whose factor is above 1 at the market's origin gets one earlier ex-right row).

Faults (`inject`, per call and/or code, one-off or persistent): `drop` (connection reset, no
reply), `hang` (no reply, connection kept open), `fin` (half a reply then FIN: the client spins at
100% CPU), `page2_error` (error on page 2+), `login_fail`, `malformed` (bad rows), `error`.
Lost data without an error: `omit` (one stock's day), `omit_day` (every stock's day);
`fail_codes`: stocks whose every call errs.

    with FakeBaostockServer(DemoMarket(50), as_of=dt.date(2024, 3, 29)) as server:
        source = BaostockSource(server=("127.0.0.1", server.port))

CLI (manual runs, benchmarks):
    python -m tests.fakes.baostock_server --port 10030 --stocks 500 --latency-ms 50
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import json
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.codes import to_baostock
from stocksync_dagster.core.sources.demo_market import DemoMarket

VERSION = "00.9.40"
SEP = "\x01"
END = b"<![CDATA[]]>\n"
PAGE_ERROR = ("10002007", "网络接收错误。")
FAULT_KINDS = ("drop", "hang", "fin", "page2_error", "login_fail", "malformed", "error")
# request type -> (reply type, method)
_TYPES = {
    "00": ("01", "login"),
    "02": ("03", "logout"),
    "95": ("96", "query_history_k_data_plus"),
    "15": ("16", "query_adjust_factor"),
    "33": ("34", "query_trade_dates"),
    "35": ("36", "query_all_stock"),
    "45": ("46", "query_stock_basic"),
}
_COMPRESSED = {"96"}
_NON_STOCKS = [  # code, name, ipoDate, type
    ("sh.000001", "上证综合指数", "1991-07-15", "2"),
    ("sz.399001", "深证成份指数", "1994-07-20", "2"),
    ("sh.510300", "沪深300ETF", "2012-05-28", "5"),
]
_K_FIELDS = {
    "date",
    "code",
    "open",
    "high",
    "low",
    "close",
    "preclose",
    "volume",
    "amount",
    "pctChg",
    "tradestatus",
    "isST",
    "adjustflag",
}
_FACTOR_FIELDS = "code,dividOperateDate,foreAdjustFactor,backAdjustFactor,adjustFactor"


@dataclass
class Fault:
    """A fault for requests matching `call` / `code` (None = any); `times` None = forever."""

    kind: str
    call: str | None = None
    code: str | None = None  # baostock form, sh.600000
    times: int | None = 1

    def matches(self, method: str, code: str | None, page: int) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.kind == "page2_error" and page < 2:
            return False
        if (self.kind == "login_fail") != (method == "login"):
            return False
        return (self.call in (None, method)) and (self.code in (None, code))


class _Handled(Exception):
    """The fault already dealt with the connection."""


def _fmt(values: pd.Series, spec: str) -> list[str]:
    return ["" if pd.isna(v) else format(v, spec) for v in values]


class FakeBaostockServer:
    """Threaded loopback baostock server; one connection per client session."""

    def __init__(
        self,
        market: DemoMarket,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_ms: float = 0.0,
        as_of: dt.date | None = None,
        hang_seconds: float = 60.0,
    ) -> None:
        self.market = market
        self.as_of = as_of or dt.date.today()
        self.latency = latency_ms / 1000.0
        self.hang_seconds = hang_seconds
        self.requests: Counter[str] = Counter()  # method -> requests (pages count)
        self.stock_requests: Counter[tuple[str, str]] = Counter()  # (method, sh.600000) -> requests
        self.logins = 0
        self._faults: list[Fault] = []
        self.omitted: set[tuple[str, str]] = set()  # (sh.600000, YYYY-MM-DD) rows left out
        self.omitted_days: set[str] = set()  # YYYY-MM-DD: every stock's row left out
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._build_tables()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve_connection(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            request_queue_size = 256

        self._server = Server((host, port), Handler)
        self._thread: threading.Thread | None = None

    # ----- lifecycle ------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        """`host:port`, the form of `BAOSTOCK_SERVER`."""
        return f"{self._server.server_address[0]}:{self.port}"

    def start(self) -> FakeBaostockServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeBaostockServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(
        self, kind: str, *, call: str | None = None, code: str | None = None, times: int | None = 1
    ) -> None:
        """Fault the next `times` matching requests (None: all); `code`: 600000.SH or sh.600000."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        if code is not None and "." in code and not code[:2].isalpha():
            code = to_baostock(code)
        with self._lock:
            self._faults.append(Fault(kind, call, code, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self.omitted.clear()
            self.omitted_days.clear()

    def omit(self, code: str, day: dt.date) -> None:
        """Leave out one stock's row of one day, silently (no error code): a lost row."""
        with self._lock:
            self.omitted.add((to_baostock(code), day.isoformat()))

    def omit_day(self, day: dt.date) -> None:
        """Leave out every stock's row of `day`, silently: a whole day lost."""
        with self._lock:
            self.omitted_days.add(day.isoformat())

    def fail_codes(self, codes: list[str]) -> None:
        """Every call for these stocks (bars and factors) fails with an error code, always."""
        for code in codes:
            self.inject("error", code=code, times=None)

    # ----- the market as baostock tables ----------------------------------------------------
    def _build_tables(self) -> None:
        market, origin, as_of = self.market, self.market.origin, self.as_of
        bars = market.bars(origin, as_of)
        bars["tradestatus"] = "1"
        suspended = [(e.code, e.day) for e in market.events(origin, as_of) if e.kind == "suspended"]
        gaps = pd.DataFrame(suspended, columns=["code", "trade_date"])
        gaps["tradestatus"] = "0"
        gaps["volume"], gaps["amount"], gaps["pct_chg"] = 0.0, 0.0, 0.0
        table = pd.concat([bars, gaps], ignore_index=True)
        table = table.sort_values(["code", "trade_date"], kind="stable").reset_index(drop=True)
        # a suspended day shows the last close (or the next day's pre-close) as every price
        last = table.groupby("code")["close"].ffill()
        last = last.fillna(table.groupby("code")["pre_close"].bfill())
        off = table["tradestatus"] == "0"
        for column in ("open", "high", "low", "close", "pre_close"):
            table.loc[off, column] = last[off]
        all_codes = market.stocks["code"].to_numpy()
        st_on = {d: set(all_codes[market.is_st_on(d)]) for d in set(table["trade_date"])}
        columns = {
            "date": [d.isoformat() for d in table["trade_date"]],
            "code": [to_baostock(c) for c in table["code"]],
            "open": _fmt(table["open"], ".4f"),
            "high": _fmt(table["high"], ".4f"),
            "low": _fmt(table["low"], ".4f"),
            "close": _fmt(table["close"], ".4f"),
            "preclose": _fmt(table["pre_close"], ".4f"),
            "volume": _fmt(table["volume"], ".0f"),
            "amount": _fmt(table["amount"], ".4f"),
            "pctChg": _fmt(table["pct_chg"], ".6f"),
            "tradestatus": list(table["tradestatus"]),
            "isST": [
                "1" if c in st_on[d] else "0"
                for c, d in zip(table["code"], table["trade_date"], strict=True)
            ],
            "adjustflag": ["3"] * len(table),
        }
        self._k: dict[str, dict[str, list[str]]] = {}
        for code, index in table.groupby("code").indices.items():
            self._k[to_baostock(code)] = {k: [v[i] for i in index] for k, v in columns.items()}
        self._factors: dict[str, list[list[str]]] = {}
        factors = market.adj_factors(origin, as_of).sort_values(["code", "trade_date"])
        for code, group in factors.groupby("code"):
            days, values = list(group["trade_date"]), list(group["adj_factor"])
            rows = []
            if values[0] != 1.0:
                rows.append((trading_calendar.previous_trading_day(days[0]), values[0]))
            rows += [
                (d, v)
                for i, (d, v) in enumerate(zip(days, values, strict=True))
                if i and v != values[i - 1]
            ]
            bao = to_baostock(str(code))
            self._factors[bao] = [
                [bao, d.isoformat(), f"{v / values[-1]:.6f}", f"{v:.6f}", f"{v:.6f}"]
                for d, v in rows
            ]
        basic = market.stock_basic(as_of)
        self._basic = [
            [
                to_baostock(r.code),
                r.name,
                r.list_date.isoformat(),
                r.delist_date.isoformat() if r.delist_date else "",
                "1",
                "1" if r.status == "listed" else "0",
            ]
            for r in basic.itertuples()
        ] + [[c, n, ipo, "", t, "1"] for c, n, ipo, t in _NON_STOCKS]

    # ----- protocol -------------------------------------------------------------------------
    def _serve_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)
        conn.settimeout(0.2)
        buffer, user = b"", None
        try:
            while not self._stop.is_set():
                if b"\n" not in buffer:
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        return
                    buffer += chunk
                    continue
                line, buffer = buffer.split(b"\n", 1)
                user = self._serve_request(conn, line.decode("utf-8"), user)
        except (_Handled, OSError):
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                conn.close()

    def _serve_request(self, conn: socket.socket, text: str, user: str | None) -> str | None:
        head, rest = text[:21], text[21:]
        body, _, crc = rest.rpartition(SEP)
        parts = head.split(SEP)
        if len(parts) != 3 or parts[0] != VERSION or parts[1] not in _TYPES:
            conn.sendall(self._reply("04", ["10004020", "错误的消息类型"]))
            return user
        if not crc.isdigit() or zlib.crc32((head + body).encode("utf-8")) != int(crc):
            conn.sendall(self._reply("04", ["10004019", "消息格式不正确"]))
            return user
        reply_type, method = _TYPES[parts[1]]
        fields = body.split(SEP)
        code = fields[4] if method in ("query_history_k_data_plus", "query_adjust_factor") else None
        page = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 1
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.requests[method] += 1
            if code is not None:
                self.stock_requests[method, code] += 1
            fault = next((f for f in self._faults if f.matches(method, code, page)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
        if method == "login":
            if fault is not None:
                conn.sendall(self._reply(reply_type, ["10001011", "黑名单用户"]))
                return None
            with self._lock:
                self.logins += 1
            conn.sendall(self._reply(reply_type, ["0", "success", "login", fields[1]]))
            return fields[1]
        if method == "logout":
            conn.sendall(self._reply(reply_type, ["0", "success", "logout", fields[1]]))
            return None
        if user is None or fields[1] != user:
            conn.sendall(self._reply("04", ["10001001", "用户未登陆"]))
            return user
        reply = self._answer(reply_type, method, fields, fault)
        self._deliver(conn, reply, fault)
        return user

    def _deliver(self, conn: socket.socket, reply: bytes, fault: Fault | None) -> None:
        kind = fault.kind if fault is not None else None
        if kind == "drop":  # RST: the client's recv raises
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            raise _Handled
        if kind == "hang":
            self._stop.wait(self.hang_seconds)
            raise _Handled
        if kind == "fin":  # half a reply, then FIN: the client's recv loop spins forever
            conn.sendall(reply[: len(reply) // 2])
            conn.shutdown(socket.SHUT_WR)
            self._stop.wait(self.hang_seconds)
            raise _Handled
        conn.sendall(reply)

    @staticmethod
    def _reply(reply_type: str, body_fields: list[str]) -> bytes:
        body = SEP.join(body_fields)
        if reply_type in _COMPRESSED:
            head = f"{VERSION}{SEP}{reply_type}{SEP}"
            crc = zlib.crc32(body.encode("utf-8"))
            payload = zlib.compress(f"{body}{SEP}{crc}\n".encode())
            return f"{head}{len(payload):010d}".encode() + payload + END
        payload = body.encode("utf-8")
        head = f"{VERSION}{SEP}{reply_type}{SEP}{len(payload):010d}"
        crc = zlib.crc32(head.encode() + payload)
        return head.encode() + payload + f"{SEP}{crc}".encode() + END

    def _answer(self, reply_type: str, method: str, f: list[str], fault: Fault | None) -> bytes:
        if fault is not None and fault.kind in ("error", "page2_error"):
            return self._reply(
                "04",
                list(PAGE_ERROR if fault.kind == "page2_error" else ("10005001", "系统级别错误")),
            )
        page, per_page = int(f[2]), int(f[3])
        if method == "query_history_k_data_plus":
            code, names, start, end, frequency, adjust = f[4], f[5], f[6], f[7], f[8], f[9]
            wanted = [n.strip() for n in names.split(",")]
            if unknown := [n for n in wanted if n not in _K_FIELDS]:
                return self._reply("04", ["10004012", f"无效的指标: {unknown}"])
            if frequency != "d" or adjust != "3":
                return self._reply("04", ["10004006", "fake serves daily unadjusted bars only"])
            rows = self._k_rows(code, wanted, start, end)
            if fault is not None and fault.kind == "malformed":
                rows = _malform(rows, wanted, end)
            tail = [code, names, start, end, frequency, adjust]
        elif method == "query_adjust_factor":
            code, start, end = f[4], f[5], f[6]
            rows = [r for r in self._factors.get(code, []) if start <= r[1] <= end]
            tail = [code, start, end, _FACTOR_FIELDS]
        elif method == "query_trade_dates":
            cal = self.market.calendar(dt.date.fromisoformat(f[4]), dt.date.fromisoformat(f[5]))
            rows = [
                [d.isoformat(), "1" if o else "0"]
                for d, o in zip(cal["cal_date"], cal["is_open"], strict=True)
            ]
            tail = [f[4], f[5], "calendar_date,is_trading_day"]
        elif method == "query_all_stock":
            day = f[4]
            rows = [
                [r[0], "1", r[1]] for r in self._basic if r[2] <= day and (not r[3] or day < r[3])
            ]
            tail = [day, "code,tradeStatus,code_name"]
        else:  # query_stock_basic
            rows = [list(r) for r in self._basic]
            tail = [
                f[4] if len(f) > 4 else "",
                f[5] if len(f) > 5 else "",
                "code,code_name,ipoDate,outDate,type,status",
            ]
        chunk = rows[(page - 1) * per_page : page * per_page]
        data = json.dumps({"record": chunk}, ensure_ascii=False, separators=(",", ":"))
        head = ["0", "success", method, f[1], str(page), str(per_page), data]
        return self._reply(reply_type, head + tail)

    def _k_rows(self, code: str, wanted: list[str], start: str, end: str) -> list[list[str]]:
        table = self._k.get(code)
        if table is None:
            return []
        lo = bisect.bisect_left(table["date"], start)
        hi = bisect.bisect_right(table["date"], end)
        columns = [table[n] for n in wanted]
        with self._lock:
            omitted = {day for bao, day in self.omitted if bao == code} | self.omitted_days
        return [
            [column[i] for column in columns]
            for i in range(lo, hi)
            if table["date"][i] not in omitted
        ]


def _malform(rows: list[list[str]], wanted: list[str], end: str) -> list[list[str]]:
    """First row: a non-numeric price (or a bad date); plus a bad code and a date past `end`."""
    if not rows:
        return rows
    rows = [list(r) for r in rows]
    numeric = [i for i, n in enumerate(wanted) if n not in ("date", "code", "tradestatus")]
    if numeric:
        rows[0][numeric[0]] = "--"
    elif "date" in wanted:
        rows[0][wanted.index("date")] = "2024-02-30"
    extra = []
    if "code" in wanted:
        bad = list(rows[-1])
        bad[wanted.index("code")] = "xx.12345"
        extra.append(bad)
    if "date" in wanted:
        late = list(rows[-1])
        later = dt.date.fromisoformat(end) + dt.timedelta(days=40)
        late[wanted.index("date")] = later.isoformat()
        extra.append(late)
    return rows + extra


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10030)
    parser.add_argument("--stocks", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--origin", type=dt.date.fromisoformat, default=dt.date(2025, 1, 2))
    parser.add_argument("--as-of", type=dt.date.fromisoformat, default=None)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    market = DemoMarket(args.stocks, seed=args.seed, origin=args.origin)
    server = FakeBaostockServer(
        market, host=args.host, port=args.port, latency_ms=args.latency_ms, as_of=args.as_of
    )
    print(
        f"fake baostock server on {server.address}: {args.stocks} stocks from {args.origin}, "
        f"{args.latency_ms:g} ms per call; BAOSTOCK_SERVER={server.address}",
        flush=True,
    )
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
