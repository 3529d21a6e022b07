"""`stocksync export`: files that round-trip to the warehouse's rows, qfq as of a day, bounded
chunks, clear errors. On SQLite and on the real PostgreSQL (`warehouse_url`)."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from stocksync_dagster.core import export as export_module
from stocksync_dagster.core.errors import ConfigError
from stocksync_dagster.core.export import ExportRequest, export_bars, parse_codes, periods
from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.sync import ADJ_FACTOR, DAILY_BARS, sync_market_range
from stocksync_dagster.core.warehouse import Warehouse, schema
from tests.test_cli import STOCKSYNC, run

# Across a year end (two files per year split) and through the summer ex-dividend season.
START, END = dt.date(2025, 11, 24), dt.date(2026, 1, 16)
EX_START, EX_END = dt.date(2025, 6, 2), dt.date(2025, 8, 29)
STOCKS = 30
PRICES = ["open", "high", "low", "close", "pre_close"]


def load(warehouse: Warehouse, start: dt.date, end: dt.date) -> DemoSource:
    source = DemoSource(n_stocks=STOCKS, as_of=end)
    sync_market_range(DAILY_BARS, source, warehouse, start, end)
    sync_market_range(ADJ_FACTOR, source, warehouse, start, end)
    return source


def table_rows(warehouse: Warehouse, query: sa.Select | str) -> pd.DataFrame:
    with warehouse.connect() as connection:
        if isinstance(query, str):
            result = connection.exec_driver_sql(query)
        else:
            result = connection.execute(query)
        frame = pd.DataFrame(result.all(), columns=list(result.keys()))
    return normalised(frame)


def normalised(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["trade_date"] = [pd.Timestamp(d).date() for d in frame["trade_date"]]
    frame["volume"] = frame["volume"].astype("int64")
    return frame.sort_values(["trade_date", "code"]).reset_index(drop=True)


def read_parquet(paths: list[Path]) -> pd.DataFrame:
    return normalised(pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True))


def test_parquet_export_round_trips_to_the_same_rows(warehouse: Warehouse, tmp_path: Path) -> None:
    source = load(warehouse, START, END)
    with warehouse.connect() as connection:
        report = export_bars(connection, ExportRequest(START, END, tmp_path, fmt="parquet"))
    assert [f.path.name for f in report.files] == [
        "daily_bar_none_2025.parquet",
        "daily_bar_none_2026.parquet",
    ]
    exported = read_parquet([f.path for f in report.files])
    stored = table_rows(warehouse, sa.select(schema.daily_bar))
    pd.testing.assert_frame_equal(exported, stored)
    market = normalised(source.market.bars(START, END))
    pd.testing.assert_frame_equal(exported[market.columns], market, check_dtype=False)
    assert report.rows == len(stored) > 0
    # each file holds only its year; units travel with the file
    first = pq.read_table(report.files[0].path)
    assert {d.year for d in first.column("trade_date").to_pylist()} == {2025}
    assert first.schema.field("volume").metadata[b"unit"] == b"shares"
    assert first.schema.field("amount").metadata[b"unit"] == b"CNY"
    assert first.schema.field("close").metadata[b"unit"] == b"CNY"
    assert json.loads(first.schema.metadata[b"stocksync"])["units"]["pct_chg"].startswith("percent")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sum(f["rows"] for f in manifest["files"]) == report.rows
    assert not list(tmp_path.glob("*.partial"))


def test_csv_export_by_month_of_some_codes_equals_the_table(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    load(warehouse, START, END)
    with warehouse.connect() as connection:
        codes = sorted(connection.execute(sa.select(schema.daily_bar.c.code).distinct()).scalars())[
            :3
        ]
        report = export_bars(
            connection,
            ExportRequest(START, END, tmp_path, fmt="csv", codes=tuple(codes), split="month"),
        )
    assert [f.period for f in report.files] == ["2025-11", "2025-12", "2026-01"]
    exported = normalised(
        pd.concat(
            [pd.read_csv(f.path, dtype={"code": str}) for f in report.files], ignore_index=True
        )
    )
    bar = schema.daily_bar
    stored = table_rows(warehouse, sa.select(bar).where(bar.c.code.in_(codes)))
    pd.testing.assert_frame_equal(exported, stored, check_exact=False, rtol=1e-12)


def test_adjusted_exports_equal_the_views(warehouse: Warehouse, tmp_path: Path) -> None:
    load(warehouse, EX_START, EX_END)
    for adjust in ("qfq", "hfq"):
        with warehouse.connect() as connection:
            report = export_bars(
                connection,
                ExportRequest(EX_START, EX_END, tmp_path / adjust, fmt="parquet", adjust=adjust),
            )
        exported = read_parquet([f.path for f in report.files])
        view = table_rows(warehouse, f"SELECT * FROM daily_bar_{adjust}")
        assert "source" in exported.columns  # which source served each row travels along
        shared = [c for c in exported.columns if c in view.columns]
        pd.testing.assert_frame_equal(exported[shared], view[shared], rtol=1e-12)


def _ex_dividend(source: DemoSource) -> tuple[str, dt.date]:
    """A stock with exactly one factor change in EX_START..EX_END, and that day."""
    factors = source.market.adj_factors(EX_START, EX_END)
    for code, group in factors.groupby("code"):
        changes = group["trade_date"][group["adj_factor"].diff().fillna(0) != 0]
        if len(changes) == 1 and group["trade_date"].iloc[0] < changes.iloc[0]:
            return str(code), changes.iloc[0]
    raise AssertionError("no ex-dividend day in the window")


def test_qfq_as_of_the_day_before_an_ex_dividend_day_differs_by_the_factor_ratio(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    source = load(warehouse, EX_START, EX_END)
    code, ex_day = _ex_dividend(source)
    factors = source.market.adj_factors(EX_START, EX_END, [code]).set_index("trade_date")
    before = max(d for d in factors.index if d < ex_day)  # the last day seen before the event
    f_before, f_latest = factors.loc[before, "adj_factor"], factors["adj_factor"].iloc[-1]
    assert f_latest != f_before

    def qfq(as_of: dt.date | None) -> pd.DataFrame:
        out = tmp_path / str(as_of)
        request = ExportRequest(
            EX_START, EX_END, out, adjust="qfq", as_of=as_of, codes=(code,), fmt="parquet"
        )
        with warehouse.connect() as connection:
            return read_parquet([f.path for f in export_bars(connection, request).files])

    as_of, latest = qfq(before), qfq(None)
    assert as_of["trade_date"].max() == before  # nothing after the as-of day
    assert latest["trade_date"].max() > ex_day
    seen = latest[latest["trade_date"] <= before].reset_index(drop=True)
    assert len(as_of) == len(seen) > 0
    for column in PRICES:
        ratio = as_of[column] / seen[column]
        assert ratio.to_numpy() == pytest.approx(f_latest / f_before, rel=1e-12)
    # qfq as of a day is the raw price on that day (factor / factor = 1)
    raw = source.market.bars(before, before, [code]).iloc[0]
    assert as_of.iloc[-1]["close"] == pytest.approx(raw["close"], rel=1e-12)
    # as of a day after the event: the latest factor, the same as the view
    pd.testing.assert_frame_equal(qfq(EX_END), latest)
    if warehouse.dialect == "postgresql":  # the SQL function gives the same rows
        function = table_rows(
            warehouse,
            f"SELECT * FROM daily_bar_qfq_as_of('{before}') WHERE code = '{code}' "
            f"AND trade_date >= '{EX_START}'",
        )
        pd.testing.assert_frame_equal(function, as_of[function.columns], rtol=1e-12)


def test_export_reads_and_writes_in_bounded_chunks(
    warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(warehouse, START, END)
    fetched: list[int] = []
    stream = export_module.stream_rows

    def counting(connection: sa.Connection, query: sa.Select, chunk_rows: int):  # type: ignore[no-untyped-def]
        for chunk in stream(connection, query, chunk_rows):
            fetched.append(len(chunk))
            yield chunk

    monkeypatch.setattr(export_module, "stream_rows", counting)
    with warehouse.connect() as connection:
        report = export_bars(connection, ExportRequest(START, END, tmp_path, chunk_rows=50))
    assert max(fetched) == 50 and sum(fetched) == report.rows
    for exported in report.files:
        metadata = pq.ParquetFile(exported.path).metadata
        assert metadata.num_row_groups == math.ceil(exported.rows / 50) == exported.chunks
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        assert max(sizes) <= 50


def test_request_errors_name_the_option(tmp_path: Path) -> None:
    day = dt.date(2025, 8, 1)
    cases = [
        (ExportRequest(day, day - dt.timedelta(days=1), tmp_path), "--start"),
        (ExportRequest(day, day, tmp_path, codes=("600000.SH", "60000.SH")), "--codes"),
        (ExportRequest(day, day, tmp_path, codes=()), "--codes"),
        (ExportRequest(day, day, tmp_path, as_of=day - dt.timedelta(days=1)), "--as-of"),
        (ExportRequest(day, day, tmp_path, adjust="forward"), "--adjust"),
        (ExportRequest(day, day, tmp_path / "manifest.json", fmt="csv"), None),
    ]
    (tmp_path / "manifest.json").write_text("{}")
    cases[-1] = (cases[-1][0], "--out")
    for request, option in cases:
        with pytest.raises(ConfigError, match=option):
            request.check()
    assert parse_codes(" 600000.SH,000001.SZ,600000.SH ") == ("600000.SH", "000001.SZ")
    assert parse_codes(None) is None
    assert [p[0] for p in periods(dt.date(2025, 11, 30), dt.date(2026, 2, 1), "month")] == [
        "2025-11",
        "2025-12",
        "2026-01",
        "2026-02",
    ]


def test_parquet_without_pyarrow_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    with pytest.raises(ConfigError, match=r"stocksync-dagster\[export\]"):
        export_module._require_pyarrow()


@pytest.mark.slow
def test_cli_export_and_its_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    warehouse = Warehouse(url)
    load(warehouse, START, END)
    warehouse.dispose()
    out = tmp_path / "out"
    args = ["export", "--start", str(START), "--end", str(END), "--format", "csv"]
    done = run(
        [*STOCKSYNC, *args, "--out", str(out), "--adjust", "hfq"],
        tmp_path,
        **{"STOCKSYNC_DATABASE_URL": url},
    )
    assert done.returncode == 0, done.stderr
    assert "daily_bar_hfq_2025.csv" in done.stdout and "manifest.json" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "daily_bar_hfq_2025.csv",
        "daily_bar_hfq_2026.csv",
        "manifest.json",
    ]
    bad = run(
        [*STOCKSYNC, *args, "--out", str(out), "--codes", "600000.SH,600000"],
        tmp_path,
        STOCKSYNC_DATABASE_URL=url,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: --codes: not in 600000.SH form: 600000"]
    missing = tmp_path / "nowhere" / "warehouse.db"
    gone = run(
        [*STOCKSYNC, *args, "--out", str(tmp_path / "out2")],
        tmp_path,
        STOCKSYNC_DATABASE_URL=f"sqlite:///{missing}",
    )
    assert gone.returncode == 1 and gone.stderr.startswith("error: STOCKSYNC_DATABASE_URL")
    assert not missing.parent.exists() and not (tmp_path / "out2").exists()


@pytest.mark.slow
def test_memory_benchmark_measures_small_and_large_exports() -> None:
    """The benchmark runs (tiny size) and reports every case; no timing or memory assertion."""
    from benchmarks import export_memory

    found = export_memory.main(["--size", "tiny"])
    assert found is not None and len(found) == 9
    (small, large), days = export_memory.SIZES["tiny"]
    for m in found:
        assert m.peak_rss_mb > 0 and m.seconds >= 0
        assert m.rows == (small if m.case.startswith("small") else large) * days
        assert m.files == (0 if "pandas" in m.case else 1)
