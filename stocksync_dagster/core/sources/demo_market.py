"""A deterministic synthetic A-share market: the `demo` source, and what the fake servers serve.

Everything is a pure function of (seed, number of stocks, origin): a day's values never depend
on which range is asked for. It has what real data has: suspensions, IPOs, delistings, ST stocks
(some always ST, some going in and out of ST: `is_st_on`), ex-dividend days with factor jumps,
limit-up/down days and the real holiday trading_calendar.
Moves follow the price limits in force at `origin` (`price_limits`); they stay within any later,
wider limit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from stocksync_dagster.core import trading_calendar
from stocksync_dagster.core.codes import board_of
from stocksync_dagster.core.price_limits import limit_pct

DEFAULT_ORIGIN = dt.date(2023, 1, 3)
# (exchange, code prefixes, share of the market)
_BOARD_MIX = [
    ("SH", ("600", "601", "603", "605"), 0.32),
    ("SH", ("688",), 0.10),
    ("SZ", ("000", "001", "002", "003"), 0.30),
    ("SZ", ("300", "301"), 0.20),
    ("BJ", ("430", "830", "870"), 0.08),
]
_PRICE_FIELDS = ("open", "high", "low", "close", "pre_close")


@dataclass(frozen=True)
class MarketEvent:
    code: str
    day: dt.date
    kind: str  # ipo, delist, ex_dividend, limit_up, limit_down, suspended


class DemoMarket:
    """The synthetic market from `origin` up to `end` (extended on demand)."""

    def __init__(
        self, n_stocks: int = 300, seed: int = 42, origin: dt.date = DEFAULT_ORIGIN
    ) -> None:
        if n_stocks < 10:
            raise ValueError("the demo market needs at least 10 stocks")
        self.n_stocks = n_stocks
        self.seed = seed
        self.origin = origin
        self._days: list[dt.date] = []
        self._panel: dict[str, np.ndarray] = {}

    # ----- the security master -------------------------------------------------------------
    @cached_property
    def stocks(self) -> pd.DataFrame:
        """Every stock that ever exists in this market, with list and delist dates."""
        rng = np.random.default_rng([self.seed, 1])
        n = self.n_stocks
        counts = np.floor(np.array([share for *_, share in _BOARD_MIX]) * n).astype(int)
        counts[0] += n - counts.sum()
        codes: list[str] = []
        for (exchange, prefixes, _), count in zip(_BOARD_MIX, counts, strict=True):
            numbers = rng.choice(1000 * len(prefixes), size=count, replace=False)
            codes += [
                f"{prefixes[num // 1000]}{num % 1000:03d}.{exchange}" for num in sorted(numbers)
            ]
        horizon_days = trading_calendar.trading_days(
            self.origin, self.origin + dt.timedelta(days=4 * 365)
        )
        ipo = rng.random(n) < 0.2
        list_dates = [
            horizon_days[rng.integers(1, len(horizon_days))]
            if is_ipo
            else dt.date(1995, 1, 3) + dt.timedelta(days=int(rng.integers(0, 9000)))
            for is_ipo in ipo
        ]
        delist = (~ipo) & (rng.random(n) < 0.04)
        delist_dates = [
            horizon_days[rng.integers(20, len(horizon_days))] if is_delisted else None
            for is_delisted in delist
        ]
        is_st = (~ipo) & (rng.random(n) < 0.04)
        names = [("ST" if st else "") + f"示例{i:04d}" for i, st in enumerate(is_st)]
        frame = pd.DataFrame(
            {
                "code": codes,
                "name": names,
                "exchange": [c[-2:] for c in codes],
                "board": [board_of(c) for c in codes],
                "list_date": list_dates,
                "delist_date": delist_dates,
                "status": ["delisted" if d is not None else "listed" for d in delist_dates],
                "is_st": is_st,
            }
        )
        return frame

    @cached_property
    def _st_cycles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(cycling, period, duration, phase) per stock: ~5% of the stocks listed before the
        origin and never delisted go in and out of ST, `duration` of every `period` days."""
        rng = np.random.default_rng([self.seed, 5])
        stocks = self.stocks
        n = len(stocks)
        candidate = (
            ~stocks["is_st"].to_numpy(dtype=bool)
            & (stocks["list_date"] < self.origin).to_numpy(dtype=bool)
            & stocks["delist_date"].isna().to_numpy()
        )
        cycling = candidate & (rng.random(n) < 0.05)
        if not cycling.any() and candidate.any():
            cycling[np.argmax(candidate)] = True
        period = rng.integers(60, 140, n)
        duration = rng.integers(15, 45, n)
        phase = rng.integers(0, 365, n)
        return cycling, period, duration, phase

    @property
    def st_capped(self) -> np.ndarray:
        """Stocks whose moves stay within the ST limit: always ST, or going in and out of it."""
        return self.stocks["is_st"].to_numpy(dtype=bool) | self._st_cycles[0]

    def is_st_on(self, day: dt.date) -> np.ndarray:
        """Per stock (master order): was it ST (or *ST) on `day`."""
        cycling, period, duration, phase = self._st_cycles
        in_episode = (day.toordinal() + phase) % period < duration
        return self.stocks["is_st"].to_numpy(dtype=bool) | (cycling & in_episode)

    def st_pairs(
        self, start: dt.date, end: dt.date, codes: list[str] | None = None
    ) -> pd.DataFrame:
        """(code, trade_date) of listed stocks that were ST on an open day of [start, end]."""
        days, _, columns = self._slice(start, end, codes)
        codes_all = self.stocks["code"].to_numpy()
        list_ord = np.array([d.toordinal() for d in self.stocks["list_date"]])
        delist_ord = np.array(
            [d.toordinal() if d is not None else 10**9 for d in self.stocks["delist_date"]]
        )
        found_codes: list[np.ndarray] = []
        found_days: list[dt.date] = []
        for day in days:
            ordinal = day.toordinal()
            mask = self.is_st_on(day) & columns & (list_ord <= ordinal) & (ordinal < delist_ord)
            found_codes.append(codes_all[mask])
            found_days += [day] * int(mask.sum())
        return pd.DataFrame(
            {
                "code": np.concatenate(found_codes) if found_codes else np.array([], object),
                "trade_date": np.array(found_days, dtype=object),
            }
        )

    def name_history(self, until: dt.date) -> pd.DataFrame:
        """Every name each stock listed by `until` carried: `code`, `name`, `start_date`,
        `end_date` (None = still current); a stock going into ST takes an `ST` name."""
        cycling, period, duration, phase = self._st_cycles
        last = until.toordinal()
        rows: list[tuple[str, str, dt.date, dt.date | None]] = []

        def add(code: str, name: str, first: int, end: int) -> None:
            if first <= last:
                rows.append(
                    (
                        code,
                        name,
                        dt.date.fromordinal(first),
                        None if end >= last else dt.date.fromordinal(end),
                    )
                )

        for i, stock in enumerate(self.stocks.itertuples(index=False)):
            listed = stock.list_date.toordinal()
            if listed > last:
                continue
            if not cycling[i]:
                add(stock.code, stock.name, listed, 10**9)
                continue
            p, d = int(period[i]), int(duration[i])
            start = self.origin.toordinal() - p
            start += (-(start + int(phase[i]))) % p  # first episode start from there
            add(stock.code, stock.name, listed, start - 1)
            for begin in range(start, last + 1, p):
                add(stock.code, "ST" + stock.name, begin, begin + d - 1)
                add(stock.code, stock.name, begin + d, begin + p - 1)
        return pd.DataFrame(rows, columns=["code", "name", "start_date", "end_date"])

    def stock_basic(self, as_of: dt.date) -> pd.DataFrame:
        """The master as known on `as_of`: later IPOs absent, later delistings not yet done,
        the ST flag (and the name's ST prefix) as on `as_of`."""
        stocks = self.stocks.copy()
        now_st = self.is_st_on(as_of) & self._st_cycles[0]  # cycling stocks ST on as_of
        stocks.loc[now_st, "name"] = "ST" + stocks.loc[now_st, "name"]
        stocks["is_st"] = stocks["is_st"].to_numpy(dtype=bool) | now_st
        frame = stocks[stocks["list_date"] <= as_of].copy()
        not_yet = frame["delist_date"].map(lambda d: d is None or d > as_of)
        frame.loc[not_yet, "delist_date"] = None
        frame["status"] = np.where(not_yet, "listed", "delisted")
        return frame.reset_index(drop=True)

    # ----- the daily panel -----------------------------------------------------------------
    def _extend(self, end: dt.date) -> None:
        if self._days and self._days[-1] >= end:
            return
        start = self._days[-1] + dt.timedelta(days=1) if self._days else self.origin
        new_days = trading_calendar.trading_days(start, end)
        if not new_days:
            return
        stocks = self.stocks
        n = self.n_stocks
        limits = np.array(
            [
                (limit_pct(b, bool(st), self.origin) or 10.0) / 100
                for b, st in zip(stocks["board"], self.st_capped, strict=True)
            ]
        )
        list_ord = np.array([d.toordinal() for d in stocks["list_date"]])
        delist_ord = np.array(
            [d.toordinal() if d is not None else 10**9 for d in stocks["delist_date"]]
        )
        ex_offset = np.random.default_rng([self.seed, 2]).integers(0, 120, n)
        bonus = np.random.default_rng([self.seed, 3]).random(n) < 0.15
        if self._days:
            last_close = self._panel["_last_close"].copy()
            factor = self._panel["_factor"].copy()
            traded_days = self._panel["_traded_days"].copy()
            last_ex_year = self._panel["_last_ex_year"].copy()
        else:
            base = np.random.default_rng([self.seed, 4])
            last_close = np.round(np.exp(base.normal(2.6, 0.7, n)), 2)
            factor = np.round(1 + base.random(n) * 4, 6)
            factor[list_ord >= self.origin.toordinal()] = 1.0
            traded_days = np.where(list_ord < self.origin.toordinal(), 1000, 0)
            last_ex_year = np.zeros(n, dtype=int)
        rows: dict[str, list[np.ndarray]] = {
            k: [] for k in (*_PRICE_FIELDS, "volume", "amount", "pct_chg", "adj_factor", "traded")
        }
        for day in new_days:
            rng = np.random.default_rng([self.seed, 100, day.toordinal()])
            z = rng.standard_normal((6, n))
            u = rng.random((4, n))
            ordinal = day.toordinal()
            listed = (list_ord <= ordinal) & (ordinal < delist_ord)
            suspended = listed & (traded_days > 0) & (u[0] < 0.01)
            traded = listed & ~suspended
            first_day = traded & (traded_days == 0)
            # ex-dividend: once a year, on the first trading day past June 1 + offset
            ex_start = dt.date(day.year, 6, 1).toordinal() + ex_offset
            ex_day = (
                traded
                & ~first_day
                & (ordinal >= ex_start)
                & (last_ex_year < day.year)
                & (traded_days > 20)
            )
            dividend = np.where(ex_day, last_close * (0.005 + 0.025 * u[1]), 0.0)
            ratio = np.where(ex_day & bonus, 1.3, 1.0)
            pre_close = np.where(ex_day, np.round((last_close - dividend) / ratio, 2), last_close)
            pre_close = np.maximum(pre_close, 0.01)
            factor = np.where(ex_day, np.round(factor * last_close / pre_close, 6), factor)
            last_ex_year = np.where(ex_day, day.year, last_ex_year)
            ret = 0.0003 + 0.022 * z[0]
            ret = np.where(u[2] < 0.006, limits, ret)
            ret = np.where(u[2] > 0.996, -limits, ret)
            up_price = np.round(pre_close * (1 + limits), 2)
            down_price = np.round(pre_close * (1 - limits), 2)
            close = np.clip(np.round(pre_close * (1 + ret), 2), down_price, up_price)
            ipo_pop = np.where(stocks["board"].to_numpy() == "main", 0.44, 0.3 + 1.2 * u[3])
            close = np.where(first_day, np.round(pre_close * (1 + ipo_pop), 2), close)
            lo_lim = np.where(first_day, pre_close * 0.5, down_price)
            hi_lim = np.where(first_day, close * 1.2, up_price)
            open_ = np.clip(np.round(pre_close * (1 + 0.006 * z[1]), 2), lo_lim, hi_lim)
            open_ = np.where(first_day, np.round((pre_close + close) / 2, 2), open_)
            high = np.clip(
                np.round(np.maximum(open_, close) * (1 + np.abs(0.008 * z[2])), 2), None, hi_lim
            )
            high = np.maximum(high, np.maximum(open_, close))
            low = np.clip(
                np.round(np.minimum(open_, close) * (1 - np.abs(0.008 * z[3])), 2), lo_lim, None
            )
            low = np.minimum(low, np.minimum(open_, close))
            volume = np.round(np.exp(13.5 + 0.5 * z[4]) / 100) * 100
            amount = np.round(volume * (open_ + high + low + close) / 4)
            pct_chg = np.round((close / pre_close - 1) * 100, 4)
            for name, values in (
                ("open", open_),
                ("high", high),
                ("low", low),
                ("close", close),
                ("pre_close", pre_close),
                ("volume", volume),
                ("amount", amount),
                ("pct_chg", pct_chg),
                ("adj_factor", factor),
                ("traded", traded),
            ):
                rows[name].append(values)
            last_close = np.where(traded, close, last_close)
            traded_days = traded_days + traded
        new_panel = {k: np.vstack(v) for k, v in rows.items()}
        if self._panel:
            for key, values in new_panel.items():
                self._panel[key] = np.vstack([self._panel[key], values])
        else:
            self._panel = dict(new_panel)
        self._panel["_last_close"] = last_close
        self._panel["_factor"] = factor
        self._panel["_traded_days"] = traded_days
        self._panel["_last_ex_year"] = last_ex_year
        self._days.extend(new_days)

    def _slice(
        self, start: dt.date, end: dt.date, codes: list[str] | None
    ) -> tuple[list[dt.date], slice, np.ndarray]:
        if start < self.origin:
            raise ValueError(f"the demo market starts on {self.origin}; asked for {start}")
        self._extend(end)
        lo = np.searchsorted(
            np.array([d.toordinal() for d in self._days]), start.toordinal(), "left"
        )
        hi = np.searchsorted(
            np.array([d.toordinal() for d in self._days]), end.toordinal(), "right"
        )
        columns = np.ones(self.n_stocks, dtype=bool)
        if codes is not None:
            columns = self.stocks["code"].isin(list(codes)).to_numpy()
        return self._days[lo:hi], slice(lo, hi), columns

    def bars(self, start: dt.date, end: dt.date, codes: list[str] | None = None) -> pd.DataFrame:
        """Normalised unadjusted bars (see `sources.base`), by trade_date then in master order."""
        days, rows, columns = self._slice(start, end, codes)
        return self._frame(
            days,
            rows,
            columns,
            ("open", "high", "low", "close", "pre_close", "volume", "amount", "pct_chg"),
        )

    def adj_factors(
        self, start: dt.date, end: dt.date, codes: list[str] | None = None
    ) -> pd.DataFrame:
        """Cumulative adjustment factors on every traded day."""
        days, rows, columns = self._slice(start, end, codes)
        return self._frame(days, rows, columns, ("adj_factor",))

    def suspensions(
        self, start: dt.date, end: dt.date, codes: list[str] | None = None
    ) -> pd.DataFrame:
        """(code, trade_date) of listed stocks that did not trade: the market's suspensions."""
        days, rows, columns = self._slice(start, end, codes)
        if not days:
            return pd.DataFrame({"code": pd.Series(dtype=object), "trade_date": []})
        ordinals = np.array([d.toordinal() for d in days])[:, None]
        list_ord = np.array([d.toordinal() for d in self.stocks["list_date"]])[columns]
        delist_ord = np.array(
            [d.toordinal() if d is not None else 10**9 for d in self.stocks["delist_date"]]
        )[columns]
        listed = (list_ord[None, :] <= ordinals) & (ordinals < delist_ord[None, :])
        day_index, stock_index = np.nonzero(listed & ~self._panel["traded"][rows][:, columns])
        return pd.DataFrame(
            {
                "code": self.stocks["code"].to_numpy()[columns][stock_index],
                "trade_date": np.array(days, dtype=object)[day_index],
            }
        )

    def _frame(
        self, days: list[dt.date], rows: slice, columns: np.ndarray, fields: tuple[str, ...]
    ) -> pd.DataFrame:
        traded = (
            self._panel["traded"][rows][:, columns] if days else np.zeros((0, columns.sum()), bool)
        )
        day_index, stock_index = np.nonzero(traded)
        codes = self.stocks["code"].to_numpy()[columns]
        data: dict[str, object] = {
            "code": codes[stock_index],
            "trade_date": np.array(days, dtype=object)[day_index]
            if days
            else np.array([], dtype=object),
        }
        for name in fields:
            values = self._panel[name][rows][:, columns] if days else np.zeros((0, columns.sum()))
            data[name] = values[day_index, stock_index]
        return pd.DataFrame(data)

    def calendar(self, start: dt.date, end: dt.date) -> pd.DataFrame:
        days = pd.date_range(start, end, freq="D").date
        return pd.DataFrame(
            {"cal_date": days, "is_open": [trading_calendar.is_trading_day(d) for d in days]}
        )

    def events(self, start: dt.date, end: dt.date) -> list[MarketEvent]:
        """IPO, delisting, ex-dividend, limit and suspension days in [start, end] (tests, docs)."""
        days, rows, _ = self._slice(start, end, None)
        codes = self.stocks["code"].to_numpy()
        found: list[MarketEvent] = []
        for code, listed, delisted in zip(
            codes, self.stocks["list_date"], self.stocks["delist_date"], strict=True
        ):
            if start <= listed <= end:
                found.append(MarketEvent(code, listed, "ipo"))
            if delisted is not None and start <= delisted <= end:
                found.append(MarketEvent(code, delisted, "delist"))
        factor = self._panel["adj_factor"][rows]
        previous = self._panel["adj_factor"][max(rows.start - 1, 0) : rows.stop - 1]
        if rows.start == 0 and len(days):
            previous = np.vstack([factor[:1], factor[:-1]])
        traded = self._panel["traded"][rows]
        pct = self._panel["pct_chg"][rows]
        # a limit move is judged by the rule of that day: ST's limit only while the stock is ST
        # (a stock going in and out of ST moves within ST's limit, but only hits it while ST)
        st_limits, plain_limits = (
            np.array([limit_pct(b, st, self.origin) or 10.0 for b in self.stocks["board"]])
            for st in (True, False)
        )
        list_ord = np.array([d.toordinal() for d in self.stocks["list_date"]])
        delist_ord = np.array(
            [d.toordinal() if d is not None else 10**9 for d in self.stocks["delist_date"]]
        )
        for i, day in enumerate(days):
            for j in np.nonzero(traded[i] & (factor[i] != previous[i]))[0]:
                found.append(MarketEvent(codes[j], day, "ex_dividend"))
            limits = np.where(self.is_st_on(day), st_limits, plain_limits)
            at_limit = (
                traded[i] & (np.abs(np.abs(pct[i]) - limits) < 0.3) & (list_ord < day.toordinal())
            )
            for j in np.nonzero(at_limit)[0]:
                found.append(
                    MarketEvent(codes[j], day, "limit_up" if pct[i, j] > 0 else "limit_down")
                )
            listed = (list_ord <= day.toordinal()) & (day.toordinal() < delist_ord)
            for j in np.nonzero(listed & ~traded[i])[0]:
                found.append(MarketEvent(codes[j], day, "suspended"))
        return found
