"""Keep a SQL warehouse of China A-share market data in sync with baostock or Tushare Pro."""

__version__ = "0.1.0"
