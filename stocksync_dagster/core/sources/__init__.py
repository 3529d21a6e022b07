"""Market data sources: one interface (`base.MarketSource`), three implementations.

The package itself imports nothing: a baostock worker process (`baostock_worker`) is started as
`python -m` its module and should not pay for pandas or the other sources on every start.
"""
