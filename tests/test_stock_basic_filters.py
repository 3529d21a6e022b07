"""`stock_basic` run config: `exchanges` and `list_statuses` refresh only those rows."""

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from stocksync_dagster.core.warehouse import Warehouse, schema
from stocksync_dagster.defs.reference.assets import StockBasicConfig, stock_basic
from stocksync_dagster.resources import DemoSourceResource, WarehouseResource

SOURCE = DemoSourceResource(stocks=60)


def run(url: str, **config: list[str]) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [stock_basic],
        resources={"source": SOURCE, "warehouse": WarehouseResource(url=url)},
        run_config=dg.RunConfig(ops={"stock_basic": StockBasicConfig(**config)}),
    )


def stored(url: str) -> pd.DataFrame:
    with Warehouse(url).connect() as connection:
        return pd.read_sql(sa.select(schema.stock_basic), connection).set_index("code")


def test_filtered_runs_upsert_only_their_rows_and_keep_the_others(sqlite_url: str) -> None:
    assert run(sqlite_url).success
    everything = stored(sqlite_url)
    assert set(everything["exchange"]) == {"SH", "SZ", "BJ"}
    with Warehouse(sqlite_url).begin() as connection:  # mark every row as stale
        connection.execute(sa.update(schema.stock_basic).values(name="stale"))

    result = run(sqlite_url, exchanges=["sh", "BJ"])
    assert result.success
    after = stored(sqlite_url)
    assert len(after) == len(everything)  # nothing deleted
    refreshed = after["name"] != "stale"
    assert set(after[refreshed]["exchange"]) == {"SH", "BJ"}
    assert (after[~refreshed]["exchange"] == "SZ").all()
    [event] = result.asset_materializations_for_node("stock_basic")
    assert event.metadata["filter"].value == "exchanges=SH,BJ list_statuses=all"
    assert event.metadata["stocks"].value == int((everything["exchange"] != "SZ").sum())

    assert run(sqlite_url, exchanges=["SZ"], list_statuses=["D"]).success
    final = stored(sqlite_url)
    sz_delisted = (final["exchange"] == "SZ") & (final["status"] == "delisted")
    assert sz_delisted.any()
    assert (final.loc[sz_delisted, "name"] != "stale").all()
    assert (final.loc[(final["exchange"] == "SZ") & ~sz_delisted, "name"] == "stale").all()


@pytest.mark.parametrize(
    ("config", "message"),
    [({"exchanges": ["HK"]}, "unknown exchange HK"), ({"list_statuses": ["X"]}, "L, D or P")],
)
def test_unknown_filter_values_are_refused(config: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        StockBasicConfig(**config)
