"""The warehouse schema: the single definition of every table and view users query."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
SOURCE_COMMENT = "baostock, tushare or demo: where the row came from (NULL: written before 0003)"

trade_calendar = sa.Table(
    "trade_calendar",
    metadata,
    sa.Column("cal_date", sa.Date, primary_key=True),
    sa.Column("is_open", sa.Boolean, nullable=False),
    comment="SSE/SZSE calendar: one row per calendar day",
)

stock_basic = sa.Table(
    "stock_basic",
    metadata,
    sa.Column("code", sa.String(12), primary_key=True, comment="600000.SH / 000001.SZ / 430047.BJ"),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("exchange", sa.String(2), nullable=False, comment="SH, SZ or BJ"),
    sa.Column("board", sa.String(8), nullable=False, comment="main, chinext, star or bse"),
    sa.Column("list_date", sa.Date, nullable=True),
    sa.Column("delist_date", sa.Date, nullable=True),
    sa.Column("status", sa.String(10), nullable=False, comment="listed or delisted"),
    sa.Column("is_st", sa.Boolean, nullable=False, server_default=sa.false()),
    comment="Security master: every stock, listed and delisted",
)

daily_bar = sa.Table(
    "daily_bar",
    metadata,
    sa.Column("code", sa.String(12), primary_key=True),
    sa.Column("trade_date", sa.Date, primary_key=True),
    sa.Column("open", sa.Double, nullable=False),
    sa.Column("high", sa.Double, nullable=False),
    sa.Column("low", sa.Double, nullable=False),
    sa.Column("close", sa.Double, nullable=False),
    sa.Column("pre_close", sa.Double, nullable=True),
    sa.Column("volume", sa.BigInteger, nullable=False, comment="shares"),
    sa.Column("amount", sa.Double, nullable=False, comment="CNY"),
    sa.Column("pct_chg", sa.Double, nullable=True, comment="percent: 1.5 means +1.5%"),
    sa.Column("source", sa.String(16), nullable=True, comment=SOURCE_COMMENT),
    sa.Index("ix_daily_bar_trade_date", "trade_date"),
    comment="Unadjusted daily bars in CNY and shares; suspended days have no row",
)

adj_factor = sa.Table(
    "adj_factor",
    metadata,
    sa.Column("code", sa.String(12), primary_key=True),
    sa.Column("trade_date", sa.Date, primary_key=True),
    sa.Column("adj_factor", sa.Double, nullable=False),
    sa.Column("source", sa.String(16), nullable=True, comment=SOURCE_COMMENT),
    sa.Index("ix_adj_factor_trade_date", "trade_date"),
    comment="Cumulative adjustment factor: hfq price = raw x adj_factor",
)

suspension = sa.Table(
    "suspension",
    metadata,
    sa.Column("code", sa.String(12), primary_key=True),
    sa.Column("trade_date", sa.Date, primary_key=True),
    sa.Column("source", sa.String(16), nullable=False, comment="baostock, tushare or demo"),
    sa.Index("ix_suspension_trade_date", "trade_date"),
    comment="Listed stocks the source says were suspended that day: no daily_bar row by design",
)

TRADE_STATUSES = ("trading", "suspended")

daily_status = sa.Table(
    "daily_status",
    metadata,
    sa.Column("code", sa.String(12), primary_key=True),
    sa.Column("trade_date", sa.Date, primary_key=True),
    sa.Column(
        "is_st", sa.Boolean, nullable=True, comment="ST or *ST that day; NULL = not reported"
    ),
    sa.Column("trade_status", sa.String(10), nullable=False, comment="trading or suspended"),
    sa.Column("source", sa.String(16), nullable=False, comment="baostock, tushare or demo"),
    sa.CheckConstraint(
        "trade_status IN ({})".format(", ".join(f"'{s}'" for s in TRADE_STATUSES)),
        name="ck_daily_status_trade_status",
    ),
    sa.Index("ix_daily_status_trade_date", "trade_date"),
    comment="Point-in-time status of every listed stock on every synced open day",
)

FAILURE_STATUSES = ("pending", "retrying", "resolved", "abandoned")
WHOLE_DAY = "*"  # sync_failure.code when a whole day (not one stock) could not be fetched

sync_failure = sa.Table(
    "sync_failure",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("asset", sa.String(32), nullable=False),
    sa.Column("trade_date", sa.Date, nullable=False),
    sa.Column("code", sa.String(12), nullable=False, comment="'*' = the whole day"),
    sa.Column("error_class", sa.String(64), nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(10), nullable=False),
    sa.Column("first_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("asset", "trade_date", "code", name="uq_sync_failure_key"),
    sa.CheckConstraint(
        "status IN ({})".format(", ".join(f"'{s}'" for s in FAILURE_STATUSES)),
        name="ck_sync_failure_status",
    ),
    sa.Index("ix_sync_failure_status", "status"),
    comment="One row per (asset, trade_date, code) that could not be fetched",
)

sync_rejected_row = sa.Table(
    "sync_rejected_row",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("asset", sa.String(32), nullable=False),
    sa.Column("trade_date", sa.Date, nullable=True),
    sa.Column("code", sa.String(64), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_sync_rejected_row_day", "asset", "trade_date"),
    comment="Rows a source returned that failed validation, with the reason",
)


# The value columns a revision compares and keeps (never bookkeeping such as `source`).
REVISED_COLUMNS = {
    "daily_bar": ("open", "high", "low", "close", "pre_close", "volume", "amount", "pct_chg"),
    "adj_factor": ("adj_factor",),
}


def _revision_table(target: sa.Table) -> sa.Table:
    values = []
    for name in REVISED_COLUMNS[target.name]:
        column = target.c[name]
        values += [
            sa.Column(f"old_{name}", column.type, nullable=True, comment=column.comment),
            sa.Column(f"new_{name}", column.type, nullable=True, comment=column.comment),
        ]
    return sa.Table(
        f"{target.name}_revision",
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("code", sa.String(12), nullable=False),
        sa.Column("trade_date", sa.Date, nullable=False),
        *values,
        sa.Column("revised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True, comment="the Dagster run that wrote it"),
        sa.Index(f"ix_{target.name}_revision_day", "trade_date", "code"),
        sa.Index(f"ix_{target.name}_revision_run", "run_id"),
        comment=f"Previous values of `{target.name}` rows a re-fetch changed",
    )


daily_bar_revision = _revision_table(daily_bar)
adj_factor_revision = _revision_table(adj_factor)
REVISION_TABLES = {"daily_bar": daily_bar_revision, "adj_factor": adj_factor_revision}


source_disagreement = sa.Table(
    "source_disagreement",
    metadata,
    sa.Column("code", sa.String(12), primary_key=True),
    sa.Column("trade_date", sa.Date, primary_key=True),
    sa.Column(
        "field",
        sa.String(24),
        primary_key=True,
        comment="open/high/low/close/volume/amount, adj_factor_ratio, or bar/adj_factor (absent)",
    ),
    sa.Column("primary_value", sa.Double, nullable=True, comment="the warehouse's value"),
    sa.Column("other_value", sa.Double, nullable=True, comment="the other source's value"),
    sa.Column("primary_source", sa.String(16), nullable=False, comment="source of the stored row"),
    sa.Column("other_source", sa.String(16), nullable=False),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True, comment="Dagster run of the check"),
    sa.Index("ix_source_disagreement_trade_date", "trade_date"),
    comment="Stored values the second source disagrees with (the latest check of each pair)",
)

MARKET_TABLES = {"daily_bars": daily_bar, "adj_factor": adj_factor}


_BARS_WITH_FACTORS = (
    "FROM daily_bar b JOIN adj_factor a ON a.code = b.code AND a.trade_date = b.trade_date"
)
_LATEST_FACTOR = (
    " JOIN adj_factor l ON l.code = b.code"
    " AND l.trade_date = (SELECT max(m.trade_date) FROM adj_factor m WHERE m.code = b.code)"
)


def _adjusted_view(factor_expr: str, extra_join: str = "") -> str:
    prices = ", ".join(
        f"b.{col} * {factor_expr} AS {col}" for col in ("open", "high", "low", "close", "pre_close")
    )
    return (
        f"SELECT b.code, b.trade_date, {prices}, b.volume, b.amount, b.pct_chg, a.adj_factor "
        f"{_BARS_WITH_FACTORS}{extra_join}"
    )


# hfq = raw x factor; qfq = raw x factor / the stock's latest factor.
VIEWS = {
    "daily_bar_hfq": _adjusted_view("a.adj_factor"),
    "daily_bar_qfq": _adjusted_view("a.adj_factor / l.adj_factor", _LATEST_FACTOR),
}


# qfq as seen on `as_of` (PostgreSQL only; SQLite has no table functions and `stocksync
# export --as-of` computes the same there): days <= as_of, raw x factor / the factor on as_of
# (the latest on or before it).
QFQ_AS_OF_FUNCTION = """
CREATE OR REPLACE FUNCTION daily_bar_qfq_as_of(as_of date)
RETURNS TABLE (code varchar, trade_date date, open float8, high float8, low float8,
               close float8, pre_close float8, volume int8, amount float8, pct_chg float8,
               adj_factor float8)
LANGUAGE sql STABLE AS $$
  SELECT b.code::varchar, b.trade_date, {prices}, b.volume, b.amount, b.pct_chg, a.adj_factor
  FROM daily_bar b
  JOIN adj_factor a ON a.code = b.code AND a.trade_date = b.trade_date
  JOIN LATERAL (
    SELECT m.adj_factor FROM adj_factor m
    WHERE m.code = b.code AND m.trade_date <= as_of
    ORDER BY m.trade_date DESC LIMIT 1
  ) r ON true
  WHERE b.trade_date <= as_of
$$
""".replace(
    "{prices}",
    ", ".join(
        f"b.{c} * a.adj_factor / r.adj_factor"
        for c in ("open", "high", "low", "close", "pre_close")
    ),
)


def create_views(connection: sa.Connection) -> None:
    for name, body in VIEWS.items():
        connection.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
        connection.exec_driver_sql(f"CREATE VIEW {name} AS {body}")
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(QFQ_AS_OF_FUNCTION)
