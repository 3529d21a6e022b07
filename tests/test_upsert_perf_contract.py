"""What makes writes cheap, as observable behaviour: reruns touch no tuple, rows land in key order.

Speed itself is measured by `benchmarks/writes.py`; these tests pin the mechanisms it relies on.
"""

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core.sources.demo import DemoSource
from stocksync_dagster.core.warehouse import UpsertStats, Warehouse, schema, upsert
from stocksync_dagster.core.warehouse.upsert import upsert_frame
from tests.conftest import DEMO_END, DEMO_START, _truncate
from tests.test_warehouse import expected, read_table


@pytest.fixture
def pg_warehouse(postgres_server_url: str) -> Iterator[Warehouse]:
    warehouse = Warehouse(postgres_server_url)
    warehouse.ensure_schema()
    _truncate(warehouse)
    yield warehouse
    warehouse.dispose()


def bars() -> pd.DataFrame:
    return DemoSource().market.bars(DEMO_START, DEMO_END).assign(source="demo")


def write(warehouse: Warehouse, table: sa.Table, frame: pd.DataFrame) -> UpsertStats:
    with warehouse.begin() as connection:
        return upsert_frame(connection, table, frame)


def tuples(warehouse: Warehouse) -> pd.DataFrame:
    """Each row's physical version: a rewritten or merely locked row changes here."""
    with warehouse.connect() as connection:
        return pd.read_sql(
            sa.text(
                "SELECT code, trade_date, ctid::text AS ctid, xmin::text AS xmin, "
                "xmax::text AS xmax FROM daily_bar ORDER BY code, trade_date"
            ),
            connection,
        )


@pytest.mark.postgres
def test_identical_rerun_on_postgres_touches_no_tuple(pg_warehouse: Warehouse) -> None:
    frame = bars()
    assert write(pg_warehouse, schema.daily_bar, frame) == UpsertStats(len(frame), 0, 0)
    before = tuples(pg_warehouse)
    assert write(pg_warehouse, schema.daily_bar, frame) == UpsertStats(0, 0, len(frame))
    # not rewritten (ctid, xmin) and not even row-locked (xmax), as ON CONFLICT ... WHERE would
    pd.testing.assert_frame_equal(tuples(pg_warehouse), before)


@pytest.mark.postgres
def test_changed_rerun_on_postgres_rewrites_only_changed_rows(pg_warehouse: Warehouse) -> None:
    frame = bars()
    last_day = frame["trade_date"].max()
    # the last day is written later, so the rerun below has new keys inside a stored range
    write(pg_warehouse, schema.daily_bar, frame[frame["trade_date"] != last_day])
    before = tuples(pg_warehouse).set_index(["code", "trade_date"])
    rerun = frame.copy()
    changed = rerun.index[rerun["trade_date"] != last_day][[0, 7, 40]]
    rerun.loc[changed, "close"] += 0.01
    rerun.loc[changed[-1], "pre_close"] = np.nan  # a value becoming NULL is a change too
    new = int((rerun["trade_date"] == last_day).sum())

    stats = write(pg_warehouse, schema.daily_bar, rerun)

    assert stats == UpsertStats(new, 3, len(frame) - new - 3)
    after = tuples(pg_warehouse).set_index(["code", "trade_date"])
    changed_keys = set(
        zip(rerun.loc[changed, "code"], rerun.loc[changed, "trade_date"], strict=True)
    )
    moved = after.loc[before.index].ne(before).any(axis=1)
    assert set(moved[moved].index) == changed_keys
    pd.testing.assert_frame_equal(
        read_table(pg_warehouse, schema.daily_bar), expected(rerun), check_dtype=False
    )


def test_mixed_write_counts_new_changed_and_identical_rows(warehouse: Warehouse) -> None:
    frame = bars()
    first_days = frame["trade_date"] < dt.date(2025, 8, 20)
    stored = frame[first_days].copy()
    stored.loc[stored.index[:5], "pre_close"] = np.nan  # NULL stays NULL: identical
    write(warehouse, schema.daily_bar, stored)
    rerun = frame.copy()
    rerun.loc[stored.index[:5], "pre_close"] = np.nan
    rerun.loc[stored.index[5:9], "volume"] += 100
    rerun.loc[stored.index[9], "pre_close"] = np.nan  # value -> NULL
    rerun.loc[stored.index[0], "pre_close"] = 9.99  # NULL -> value

    stats = write(warehouse, schema.daily_bar, rerun.sample(frac=1, random_state=3))

    new = int((~first_days).sum())
    assert stats == UpsertStats(new, 6, len(stored) - 6)
    pd.testing.assert_frame_equal(
        read_table(warehouse, schema.daily_bar), expected(rerun), check_dtype=False
    )
    assert write(warehouse, schema.daily_bar, rerun) == UpsertStats(0, 0, len(rerun))


def test_rows_are_stored_in_primary_key_order(warehouse: Warehouse) -> None:
    """A date-major (or shuffled) frame is sorted by (code, trade_date) before it is written."""
    frame = bars().sample(frac=1, random_state=1)
    write(warehouse, schema.daily_bar, frame)
    physical = "rowid" if warehouse.dialect == "sqlite" else "ctid"
    with warehouse.connect() as connection:
        stored = pd.read_sql(
            sa.text(f"SELECT code, trade_date FROM daily_bar ORDER BY {physical}"), connection
        )
    stored["trade_date"] = pd.to_datetime(stored["trade_date"]).dt.date
    by_key = frame[["code", "trade_date"]].sort_values(["code", "trade_date"])
    assert stored.values.tolist() == by_key.values.tolist()


def test_rows_with_nulls_and_text_rerun_as_unchanged(warehouse: Warehouse) -> None:
    """stock_basic: NULL dates, varying-length text, booleans (the row-by-row COPY path)."""
    frame = DemoSource(as_of=DEMO_END).stock_basic()
    assert frame["delist_date"].isna().any() and frame["delist_date"].notna().any()
    assert write(warehouse, schema.stock_basic, frame) == UpsertStats(len(frame), 0, 0)
    assert write(warehouse, schema.stock_basic, frame) == UpsertStats(0, 0, len(frame))
    renamed = frame.copy()
    renamed.loc[renamed.index[2], "name"] = "改名股份"
    renamed.loc[renamed.index[3], "is_st"] = not bool(renamed.loc[renamed.index[3], "is_st"])
    assert write(warehouse, schema.stock_basic, renamed) == UpsertStats(0, 2, len(frame) - 2)
    stored = read_table(warehouse, schema.stock_basic).set_index("code")
    assert stored.loc[renamed.iloc[2]["code"], "name"] == "改名股份"
    assert stored["delist_date"].isna().sum() == renamed["delist_date"].isna().sum()


def test_missing_floats_stored_as_null_across_chunks(
    warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing float (NaN or pd.NA) is stored as NULL and compares equal on a rerun, over
    several chunks and multi-row statements; a change in the first chunk still counts all."""
    monkeypatch.setattr(upsert, "CHUNK_ROWS", 50)
    monkeypatch.setattr(upsert, "_SQLITE_CHUNK_ROWS", 50)  # 32-row statements, 18-row tails
    frame = bars()
    frame["pre_close"] = frame["pre_close"].astype("Float64")
    frame.loc[frame.index[::7], "pre_close"] = pd.NA
    frame.loc[frame.index[::5], "pct_chg"] = np.nan
    assert len(frame) > 3 * 50
    assert write(warehouse, schema.daily_bar, frame) == UpsertStats(len(frame), 0, 0)
    with warehouse.connect() as connection:
        nulls = connection.execute(
            sa.text("SELECT count(*) - count(pre_close), count(*) - count(pct_chg) FROM daily_bar")
        ).one()
    assert tuple(nulls) == (frame["pre_close"].isna().sum(), frame["pct_chg"].isna().sum())
    assert write(warehouse, schema.daily_bar, frame) == UpsertStats(0, 0, len(frame))
    changed = frame.copy()
    by_key = changed.sort_values(["code", "trade_date"]).index
    changed.loc[by_key[0], "pre_close"] = (
        pd.NA if pd.notna(changed.loc[by_key[0], "pre_close"]) else 1.5
    )
    changed.loc[by_key[-1], "volume"] += 1
    assert write(warehouse, schema.daily_bar, changed) == UpsertStats(0, 2, len(frame) - 2)
    pd.testing.assert_frame_equal(
        read_table(warehouse, schema.daily_bar),
        expected(changed.astype({"pre_close": "float64"})),
        check_dtype=False,
    )


def test_one_text_value_in_every_row_is_written_and_compared_exactly(
    warehouse: Warehouse,
) -> None:
    """A text column with one value in every row (SQLite: a literal of the statement, quotes
    and all) is stored as is, reruns as unchanged and a new value updates every row."""
    frame = bars().assign(source="o'k \"?:a %s --")  # varchar(16)
    assert write(warehouse, schema.daily_bar, frame) == UpsertStats(len(frame), 0, 0)
    assert write(warehouse, schema.daily_bar, frame) == UpsertStats(0, 0, len(frame))
    renamed = frame.assign(source="demo'")
    assert write(warehouse, schema.daily_bar, renamed) == UpsertStats(0, len(frame), 0)
    mixed = renamed.copy()
    mixed.loc[mixed.index[0], "source"] = None
    assert write(warehouse, schema.daily_bar, mixed) == UpsertStats(0, 1, len(frame) - 1)
    stored = read_table(warehouse, schema.daily_bar)["source"]
    by_key = mixed.sort_values(["code", "trade_date"])["source"]
    assert stored.tolist() == by_key.tolist()


def test_stock_batches_of_one_range_are_written_whole_and_exactly(warehouse: Warehouse) -> None:
    """A history load in stock batches: each batch's key range (its codes x its days) holds no
    stored row, so it is loaded straight; batches whose code ranges interleave, overlap or
    repeat stored rows still end as one write of everything would."""
    frame = bars()
    codes = sorted(frame["code"].unique())
    first, second = codes[: len(codes) // 2], codes[len(codes) // 2 :]
    assert write(warehouse, schema.daily_bar, frame[frame["code"].isin(first)]) == UpsertStats(
        int(frame["code"].isin(first).sum()), 0, 0
    )
    assert write(warehouse, schema.daily_bar, frame[frame["code"].isin(second)]) == UpsertStats(
        int(frame["code"].isin(second).sum()), 0, 0
    )
    # a batch whose code range spans stored stocks but whose own keys are new
    later = frame.assign(trade_date=frame["trade_date"] + dt.timedelta(days=400))
    odd = later[later["code"].isin(codes[::2])]
    assert write(warehouse, schema.daily_bar, odd) == UpsertStats(len(odd), 0, 0)
    even = later[later["code"].isin(codes[1::2])].copy()
    stored_row = frame.iloc[[3]].copy()
    stored_row["volume"] += 1  # one stored key, changed, inside an otherwise new batch
    stats = write(warehouse, schema.daily_bar, pd.concat([even, stored_row]))
    assert stats == UpsertStats(len(even), 1, 0)
    everything = pd.concat([frame.drop(index=stored_row.index), stored_row, later])
    pd.testing.assert_frame_equal(
        read_table(warehouse, schema.daily_bar), expected(everything), check_dtype=False
    )


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of rows of each COPY into a staging table (the rows compared row by row)."""
    copied: list[int] = []
    copy = upsert._pg_copy

    def counting(connection, target, table, columns, rows) -> None:  # type: ignore[no-untyped-def]
        if target != table.name:
            copied.append(len(rows))
        copy(connection, target, table, columns, rows)

    monkeypatch.setattr(upsert, "_pg_copy", counting)
    return copied


@pytest.mark.postgres
def test_rerun_on_postgres_stages_only_the_stocks_whose_stored_rows_differ(
    pg_warehouse: Warehouse, staged: list[int]
) -> None:
    frame = bars().astype({"volume": "int64"})  # as validated: the binary layout is fixed
    frame.loc[frame.index[::5], "pct_chg"] = np.nan  # NULLs in a nullable number
    write(pg_warehouse, schema.daily_bar, frame)
    assert staged == []  # an empty range: straight into the table

    assert write(pg_warehouse, schema.daily_bar, frame) == UpsertStats(0, 0, len(frame))
    assert staged == []  # identical: the stocks' digests match, nothing staged

    codes = sorted(frame["code"].unique())
    rerun = frame.copy()
    first = rerun.index[rerun["code"] == codes[0]][3]
    rerun.loc[first, "close"] += 0.01  # a changed value
    second = rerun.index[(rerun["code"] == codes[1]) & rerun["pct_chg"].notna()][0]
    rerun.loc[second, "pct_chg"] = np.nan  # a value becoming NULL
    third = rerun.index[(rerun["code"] == codes[2]) & rerun["pct_chg"].isna()][0]
    rerun.loc[third, "pct_chg"] = 0.0  # NULL becoming a value
    fourth = rerun.index[rerun["code"] == codes[3]][0]
    rerun.loc[fourth, "amount"] += 1.0
    fifth = rerun.index[rerun["code"] == codes[4]][-1]
    rerun = rerun.drop(index=fifth)  # a stored day the rerun does not have
    staged.clear()

    stats = write(pg_warehouse, schema.daily_bar, rerun)

    per_stock = rerun.groupby("code").size()
    assert staged == [int(per_stock[list(codes[:5])].sum())]  # those five stocks only
    assert stats == UpsertStats(0, 4, len(rerun) - 4)
    kept = pd.concat([rerun, frame.loc[[fifth]]])  # the dropped day stays stored
    pd.testing.assert_frame_equal(
        read_table(pg_warehouse, schema.daily_bar), expected(kept), check_dtype=False
    )


@pytest.mark.postgres
def test_a_negative_zero_is_staged_and_found_unchanged(
    pg_warehouse: Warehouse, staged: list[int]
) -> None:
    """Bytes differ where values do not (-0.0 = 0.0): the stock is compared row by row."""
    frame = bars().astype({"volume": "int64"})
    code = frame["code"].iloc[0]
    frame.loc[frame.index[0], "pct_chg"] = 0.0
    write(pg_warehouse, schema.daily_bar, frame)
    rerun = frame.copy()
    rerun.loc[rerun.index[0], "pct_chg"] = -0.0

    assert write(pg_warehouse, schema.daily_bar, rerun) == UpsertStats(0, 0, len(frame))
    assert staged == [int((frame["code"] == code).sum())]
